//! Bounds checked while a wire message is decoded, before anything is
//! allocated for it.
//!
//! [`Guarded`] wraps the bincode deserializer of a whole message in
//! [`Guard`], which passes every call through unchanged except that, at any
//! depth:
//! - a string is read as a borrowed slice of the frame, its length checked
//!   against [`MAX_WIRE_STRING`], and only then copied (bincode alone would
//!   allocate the claimed length first);
//! - a byte buffer likewise, against [`MAX_CHUNK_LEN`];
//! - a list's claimed length is checked against [`MAX_WIRE_LIST`] before
//!   its first element is decoded, and so is the count of elements that
//!   arrive;
//! - a map's, against [`MAX_WIRE_MAP`].
//!
//! [`bounded_vec`] and [`bounded_string`] are the per-field bounds the wire
//! types name with `#[serde(deserialize_with)]` (records, entries, holders,
//! chunks, reasons). The guard changes no byte of the encoding: a bounded
//! list is encoded exactly as a `Vec`.
//!
//! Not here: what a message means or whether its values are consistent
//! (each message's `validate`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use crate::limits::{MAX_CHUNK_LEN, MAX_WIRE_LIST, MAX_WIRE_MAP, MAX_WIRE_STRING};

/// Most bytes reserved up front for a bounded list, whatever its claimed
/// length: the rest grows as elements actually arrive.
const PREALLOC_BYTES: usize = 64 * 1024;

/// Decodes a `Vec<T>` of at most `max` elements (`what` names it in the
/// error). A claimed length above `max` fails before any element is
/// decoded or any memory reserved; so does a list that turns out longer
/// than it claimed. Use it as a field's `deserialize_with`.
pub fn bounded_vec<'de, D, T>(deserializer: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedVecVisitor { max, what, element: PhantomData })
}

/// Decodes a `String` of at most `max` bytes (`what` names it in the
/// error), checked on the borrowed bytes before the string is allocated.
pub fn bounded_string<'de, D>(deserializer: D, max: usize, what: &'static str) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(BoundedStringVisitor { max, what })
}

/// The error of a list with more than `max` elements.
fn too_many<E: de::Error>(what: &'static str, len: Option<usize>, max: usize) -> E {
    match len {
        Some(len) => E::custom(format_args!("{what}: {len} entries exceed the limit of {max}")),
        None => E::custom(format_args!("{what}: more than {max} entries")),
    }
}

/// The error of a string or byte buffer longer than `max`.
fn too_long<E: de::Error>(what: &'static str, len: usize, max: usize) -> E {
    E::custom(format_args!("{what} of {len} bytes exceeds the limit of {max} bytes"))
}

struct BoundedVecVisitor<T> {
    max: usize,
    what: &'static str,
    element: PhantomData<fn() -> T>,
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for BoundedVecVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let hint = seq.size_hint();
        if let Some(len) = hint.filter(|len| *len > self.max) {
            return Err(too_many(self.what, Some(len), self.max));
        }
        let cap = hint.unwrap_or(0).min(self.max).min(PREALLOC_BYTES / std::mem::size_of::<T>().max(1));
        let mut out = Vec::with_capacity(cap);
        while out.len() < self.max {
            match seq.next_element()? {
                Some(element) => out.push(element),
                None => return Ok(out),
            }
        }
        reject_more(&mut seq, self.what, self.max)?;
        Ok(out)
    }
}

/// After `max` elements: fails if the list has another one, without
/// decoding it.
fn reject_more<'de, A: SeqAccess<'de>>(seq: &mut A, what: &'static str, max: usize) -> Result<(), A::Error> {
    match seq.next_element_seed(Reject { what, max })? {
        Some(never) => match never {},
        None => Ok(()),
    }
}

/// No value: the type of what [`Reject`] never produces.
enum Never {}

/// A seed that fails on any element it is asked to decode, touching no
/// byte of it: asking for it tells whether an element follows.
struct Reject {
    what: &'static str,
    max: usize,
}

impl<'de> DeserializeSeed<'de> for Reject {
    type Value = Never;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Never, D::Error> {
        Err(too_many(self.what, None, self.max))
    }
}

struct BoundedStringVisitor {
    max: usize,
    what: &'static str,
}

impl<'de> Visitor<'de> for BoundedStringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} of at most {} bytes", self.what, self.max)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        if s.len() > self.max {
            return Err(too_long(self.what, s.len(), self.max));
        }
        Ok(s.to_owned())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        if s.len() > self.max {
            return Err(too_long(self.what, s.len(), self.max));
        }
        Ok(s)
    }
}

/// The seed [`super::decode`] decodes a whole wire message with: `T`,
/// through a [`Guard`].
pub(super) struct Guarded<T>(PhantomData<fn() -> T>);

impl<T> Guarded<T> {
    pub(super) fn new() -> Self {
        Guarded(PhantomData)
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Guarded<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(Guard(deserializer))
    }
}

/// A deserializer that forwards to `D`, bounding strings, byte buffers,
/// lists and maps at every depth (see the module header).
struct Guard<D>(D);

/// A visitor that forwards to `V`, guarding every nested deserializer and
/// bounding the lists, maps and strings it is handed.
struct Wrap<V>(V);

/// A seed that deserializes through a [`Guard`].
struct GuardSeed<S>(S);

/// Forwards `deserialize_*` methods of [`Guard`] to the inner deserializer
/// with the visitor wrapped.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.0.$method($($arg,)* Wrap(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guard<D> {
    type Error = D::Error;

    forward! {
        deserialize_any()
        deserialize_bool()
        deserialize_i8()
        deserialize_i16()
        deserialize_i32()
        deserialize_i64()
        deserialize_i128()
        deserialize_u8()
        deserialize_u16()
        deserialize_u32()
        deserialize_u64()
        deserialize_u128()
        deserialize_f32()
        deserialize_f64()
        deserialize_char()
        deserialize_option()
        deserialize_unit()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_seq()
        deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_map()
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
        deserialize_identifier()
        deserialize_ignored_any()
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_str(Checked { visitor, max: MAX_WIRE_STRING, owned: false, what: "string" })
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        // Borrow the bytes, check the length, copy: never allocate a claimed length.
        self.0.deserialize_str(Checked { visitor, max: MAX_WIRE_STRING, owned: true, what: "string" })
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Checked { visitor, max: MAX_CHUNK_LEN as usize, owned: false, what: "byte string" })
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Checked { visitor, max: MAX_CHUNK_LEN as usize, owned: true, what: "byte string" })
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// A string or byte visitor that checks the length of what it is handed
/// before passing it on, as an owned copy (`owned`) or borrowed.
struct Checked<V> {
    visitor: V,
    max: usize,
    owned: bool,
    what: &'static str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Checked<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        if s.len() > self.max {
            return Err(too_long(self.what, s.len(), self.max));
        }
        if self.owned { self.visitor.visit_str(s) } else { self.visitor.visit_borrowed_str(s) }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        if s.len() > self.max {
            return Err(too_long(self.what, s.len(), self.max));
        }
        self.visitor.visit_str(s)
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        if s.len() > self.max {
            return Err(too_long(self.what, s.len(), self.max));
        }
        self.visitor.visit_string(s)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, b: &'de [u8]) -> Result<V::Value, E> {
        if b.len() > self.max {
            return Err(too_long(self.what, b.len(), self.max));
        }
        if self.owned { self.visitor.visit_bytes(b) } else { self.visitor.visit_borrowed_bytes(b) }
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<V::Value, E> {
        if b.len() > self.max {
            return Err(too_long(self.what, b.len(), self.max));
        }
        self.visitor.visit_bytes(b)
    }

    fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<V::Value, E> {
        if b.len() > self.max {
            return Err(too_long(self.what, b.len(), self.max));
        }
        self.visitor.visit_byte_buf(b)
    }
}

/// Forwards `visit_*` methods of plain values to the wrapped visitor.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.0.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool)
        visit_i8(i8)
        visit_i16(i16)
        visit_i32(i32)
        visit_i64(i64)
        visit_i128(i128)
        visit_u8(u8)
        visit_u16(u16)
        visit_u32(u32)
        visit_u64(u64)
        visit_u128(u128)
        visit_f32(f32)
        visit_f64(f64)
        visit_char(char)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_WIRE_STRING, owned: true, what: "string" }.visit_str(s)
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_WIRE_STRING, owned: false, what: "string" }.visit_borrowed_str(s)
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_WIRE_STRING, owned: true, what: "string" }.visit_string(s)
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_CHUNK_LEN as usize, owned: true, what: "byte string" }.visit_bytes(b)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, b: &'de [u8]) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_CHUNK_LEN as usize, owned: false, what: "byte string" }
            .visit_borrowed_bytes(b)
    }

    fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<V::Value, E> {
        Checked { visitor: self.0, max: MAX_CHUNK_LEN as usize, owned: true, what: "byte string" }.visit_byte_buf(b)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Guard(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Guard(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(GuardSeq { inner: seq, left: MAX_WIRE_LIST, claim_checked: false })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(GuardMap { inner: map, left: MAX_WIRE_MAP, claim_checked: false })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(GuardEnum(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for GuardSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Guard(deserializer))
    }
}

/// A list whose elements go through the guard, at most `left` more.
///
/// The claimed length is checked when the first element is asked for, not
/// when the list starts: a visitor with a tighter bound of its own
/// ([`bounded_vec`]) sees the claim first and names the list in its error.
/// Until then nothing is decoded, and the only allocation a visitor may
/// make from the claim is serde's capped preallocation.
struct GuardSeq<A> {
    inner: A,
    left: usize,
    claim_checked: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for GuardSeq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        if !self.claim_checked {
            self.claim_checked = true;
            if let Some(len) = self.inner.size_hint().filter(|len| *len > MAX_WIRE_LIST) {
                return Err(too_many("list", Some(len), MAX_WIRE_LIST));
            }
        }
        if self.left == 0 {
            reject_more(&mut self.inner, "list", MAX_WIRE_LIST)?;
            return Ok(None);
        }
        self.left -= 1;
        self.inner.next_element_seed(GuardSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A map whose keys and values go through the guard, at most `left` more
/// entries (the claim checked as for [`GuardSeq`]).
struct GuardMap<A> {
    inner: A,
    left: usize,
    claim_checked: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for GuardMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        if !self.claim_checked {
            self.claim_checked = true;
            if let Some(len) = self.inner.size_hint().filter(|len| *len > MAX_WIRE_MAP) {
                return Err(too_many("map", Some(len), MAX_WIRE_MAP));
            }
        }
        if self.left == 0 {
            return match self.inner.next_key_seed(Reject { what: "map", max: MAX_WIRE_MAP })? {
                Some(never) => match never {},
                None => Ok(None),
            };
        }
        self.left -= 1;
        self.inner.next_key_seed(GuardSeed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(GuardSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// An enum whose variant index and content go through the guard.
struct GuardEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for GuardEnum<A> {
    type Error = A::Error;
    type Variant = GuardVariant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(GuardSeed(seed))?;
        Ok((value, GuardVariant(variant)))
    }
}

/// The content of one enum variant, through the guard.
struct GuardVariant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for GuardVariant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(GuardSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecError, decode, encode};
    use serde::{Deserialize, Serialize};

    /// A list bounded at 3, as the wire types bound theirs.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Three {
        #[serde(deserialize_with = "three")]
        items: Vec<u32>,
        #[serde(deserialize_with = "short")]
        name: String,
    }

    fn three<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        bounded_vec(d, 3, "items")
    }

    fn short<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        bounded_string(d, 4, "name")
    }

    fn message(err: CodecError) -> String {
        err.to_string()
    }

    #[test]
    fn exactly_the_bound_decodes_and_one_more_fails() {
        for n in 0..=3u32 {
            let value = Three { items: (0..n).collect(), name: "abcd".into() };
            assert_eq!(decode::<Three>(&encode(&value).unwrap()).unwrap(), value);
        }
        let over = Three { items: vec![1, 2, 3, 4], name: "x".into() };
        let err = message(decode::<Three>(&encode(&over).unwrap()).unwrap_err());
        assert!(err.contains("items: 4 entries exceed the limit of 3"), "{err}");
        let long = Three { items: vec![], name: "abcde".into() };
        let err = message(decode::<Three>(&encode(&long).unwrap()).unwrap_err());
        assert!(err.contains("name of 5 bytes exceeds the limit of 4"), "{err}");
    }

    #[test]
    fn the_encoding_is_a_plain_vec() {
        // Same bytes as an unbounded Vec<u32> and String: the wire format is unchanged.
        #[derive(Serialize)]
        struct Plain {
            items: Vec<u32>,
            name: String,
        }
        let plain = encode(&Plain { items: vec![7, 8], name: "n".into() }).unwrap();
        assert_eq!(plain, encode(&Three { items: vec![7, 8], name: "n".into() }).unwrap());
        assert_eq!(plain, [2, 7, 8, 1, b'n']);
    }

    #[test]
    fn a_huge_claimed_length_fails_before_any_element() {
        // Length 2^62 (varint 0xFD + 8 bytes LE), then nothing: refused on
        // the claim, not by running out of bytes after reserving.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let err = message(decode::<Three>(&bytes).unwrap_err());
        assert!(err.contains("items: 4611686018427387904 entries exceed the limit of 3"), "{err}");
        // A plain list beyond MAX_WIRE_LIST fails the same way.
        let err = message(decode::<Vec<u8>>(&bytes).unwrap_err());
        assert!(err.contains(&format!("exceed the limit of {MAX_WIRE_LIST}")), "{err}");
    }

    #[test]
    fn a_huge_claimed_string_fails_before_it_is_allocated() {
        // A plain String claiming 2^40 bytes with 3 present: bincode alone
        // would allocate the claim; through the guard it is a short read of
        // a borrowed slice, or the length check.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(decode::<String>(&bytes).is_err());
        // A present but too long string: the wire-wide bound.
        let long = "x".repeat(MAX_WIRE_STRING + 1);
        let err = message(decode::<String>(&encode(&long).unwrap()).unwrap_err());
        assert!(err.contains("exceeds the limit"), "{err}");
        let ok = "y".repeat(MAX_WIRE_STRING);
        assert_eq!(decode::<String>(&encode(&ok).unwrap()).unwrap(), ok);
    }

    #[test]
    fn maps_and_nested_lists_are_bounded_at_any_depth() {
        use std::collections::BTreeMap;
        let map: BTreeMap<u32, u32> = (0..=MAX_WIRE_MAP as u32).map(|i| (i, i)).collect();
        let err = message(decode::<BTreeMap<u32, u32>>(&encode(&map).unwrap()).unwrap_err());
        assert!(err.contains("map"), "{err}");
        let inner = vec![0u8; MAX_WIRE_LIST + 1];
        let nested = (1u8, Some(vec![inner]));
        assert!(decode::<(u8, Option<Vec<Vec<u8>>>)>(&encode(&nested).unwrap()).is_err());
        let fine = (1u8, Some(vec![vec![1u8, 2]]));
        assert_eq!(decode::<(u8, Option<Vec<Vec<u8>>>)>(&encode(&fine).unwrap()).unwrap(), fine);
    }
}
