//! Identities and hashes: [`PublicKey`], [`PeerId`], [`ShortId`], [`ContentHash`].
//!
//! A peer is identified by its x25519 static public key (the key it proves
//! in the Noise handshake). `PeerId` is the first 16 bytes of
//! `blake3(public key)`, shown as lowercase unpadded base32. `ShortId` is the
//! first 8 bytes of the `PeerId` read big-endian: the compact key of version
//! vectors. Raw byte arrays never travel on their own: every id and hash has
//! a newtype here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The lowercase, unpadded RFC 4648 base32 alphabet used for peer ids.
fn base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding().expect("static base32 specification is valid")
}

/// An x25519 static public key, as proven in the Noise handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Builds a key from a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(PublicKey)
    }

    /// The peer id this key stands for.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(self)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.peer_id())
    }
}

/// A peer's identity: the first 16 bytes of blake3 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    /// Derives the id of the peer owning `key`.
    pub fn from_public_key(key: &PublicKey) -> Self {
        let hash = blake3::hash(&key.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        PeerId(id)
    }

    /// The compact id used in version vectors.
    pub fn short(&self) -> ShortId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        ShortId(u64::from_be_bytes(first))
    }

    /// The first 8 base32 characters, for log lines and conflict names.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.fmt_short())
    }
}

/// Error parsing a [`PeerId`] from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid peer id {text:?}: expected 26 base32 characters")]
pub struct ParsePeerIdError {
    /// The text that failed to parse.
    pub text: String,
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerIdError { text: s.to_owned() };
        let bytes = base32().decode(s.as_bytes()).map_err(|_| err())?;
        let id: [u8; 16] = bytes.try_into().map_err(|_| err())?;
        Ok(PeerId(id))
    }
}

/// The compact peer id used as the key of version vectors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShortId(pub u64);

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({:016x})", self.0)
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A blake3 hash: of a file's bytes, of one chunk, or of a chunk list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// The hash of zero bytes (the content of every empty file).
    pub fn empty() -> Self {
        Self::of(&[])
    }

    /// The first 12 hex digits, for log lines and temp file names.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }

    /// The full hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// Parses exactly what [`Self::to_hex`] writes: 64 **lowercase** hex
    /// digits, nothing around them. Uppercase is refused so one hash has
    /// one spelling (temp file names map back to exactly one hash).
    pub fn from_hex(text: &str) -> Option<ContentHash> {
        crate::hex::decode32_lower(text).map(ContentHash)
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(hash: blake3::Hash) -> Self {
        ContentHash(*hash.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(&self.0, f)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.fmt_short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_base32() {
        let id = PublicKey([7u8; 32]).peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert!(text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(text.parse::<PeerId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<PeerId>(), Ok(id));
    }

    #[test]
    fn peer_id_is_first_16_bytes_of_blake3_of_key() {
        let key = PublicKey([1u8; 32]);
        let hash = blake3::hash(&key.0);
        assert_eq!(&key.peer_id().0[..], &hash.as_bytes()[..16]);
        let short = u64::from_be_bytes(hash.as_bytes()[..8].try_into().unwrap());
        assert_eq!(key.peer_id().short(), ShortId(short));
    }

    #[test]
    fn bad_peer_ids_are_rejected() {
        for bad in ["", "abc", "0000000000000000000000000!", &"a".repeat(27)] {
            assert!(bad.parse::<PeerId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn content_hash_displays_hex() {
        let h = ContentHash::empty();
        assert_eq!(h.to_string(), blake3::hash(&[]).to_hex().to_string());
        assert_eq!(h.fmt_short().len(), 12);
        assert_eq!(h.to_hex(), h.to_string());
    }

    #[test]
    fn content_hash_parses_only_its_own_hex() {
        let h = ContentHash::of(b"x");
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        for bad in [
            h.to_hex().to_uppercase(),
            h.to_hex()[..63].to_owned(),
            format!("{}0", h.to_hex()),
            format!(" {}", &h.to_hex()[1..]),
            String::new(),
        ] {
            assert_eq!(ContentHash::from_hex(&bad), None, "{bad:?}");
        }
    }
}
