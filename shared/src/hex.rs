//! Hexadecimal text for hashes and keys: the one encoder and decoder of the
//! workspace, built on `data_encoding`.
//!
//! [`encode`] always writes lowercase. Readers come in two strictnesses:
//! - [`decode`] and [`decode32`] accept either case, for text a person may
//!   have typed or edited (key files);
//! - [`decode32_lower`] accepts only the canonical lowercase form that
//!   [`encode`] writes, for names DartSync generates and must map back one
//!   to one (`ContentHash::from_hex`, temp file names), so one value never
//!   has two spellings.
//!
//! No reader skips whitespace or separators: callers trim what they read.
//! Nothing here allocates more than the output of one call.

use std::fmt;

use data_encoding::{Encoding, HEXLOWER, HEXLOWER_PERMISSIVE};

/// `bytes` as lowercase hex, two digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    HEXLOWER.encode(bytes)
}

/// Writes `bytes` as lowercase hex into `out` without an intermediate
/// `String` (for `Display` impls).
pub(crate) fn write(bytes: &[u8], out: &mut impl fmt::Write) -> fmt::Result {
    HEXLOWER.encode_write(bytes, out)
}

/// Decodes hex digits of either case; `None` for an odd length or any
/// other character.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    HEXLOWER_PERMISSIVE.decode(text.as_bytes()).ok()
}

/// Decodes exactly 64 hex digits of either case into 32 bytes.
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    decode_array(&HEXLOWER_PERMISSIVE, text)
}

/// Decodes exactly 64 **lowercase** hex digits into 32 bytes: the inverse
/// of [`encode`] and nothing more.
pub fn decode32_lower(text: &str) -> Option<[u8; 32]> {
    decode_array(&HEXLOWER, text)
}

fn decode_array<const N: usize>(encoding: &Encoding, text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    match encoding.decode_mut(text.as_bytes(), &mut out) {
        Ok(n) if n == N => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_lowercase_and_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = encode(&bytes);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 4..], "feff");
        assert_eq!(decode(&text).as_deref(), Some(&bytes[..]));
        assert_eq!(decode(&text.to_uppercase()).as_deref(), Some(&bytes[..]));
        let mut written = String::new();
        write(&bytes, &mut written).unwrap();
        assert_eq!(written, text);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decode32_table() {
        let lower = "ab".repeat(32);
        let upper = lower.to_uppercase();
        let mixed = format!("Ab{}", "ab".repeat(31));
        type Case<'a> = (&'a str, Option<[u8; 32]>, Option<[u8; 32]>);
        let cases: [Case; 8] = [
            // (input, decode32, decode32_lower)
            (&lower, Some([0xab; 32]), Some([0xab; 32])),
            (&upper, Some([0xab; 32]), None),
            (&mixed, Some([0xab; 32]), None),
            (&lower[..62], None, None),
            ("", None, None),
            (&format!("{lower}00"), None, None),
            (&format!(" {}", &lower[1..]), None, None),
            (&format!("{}g", &lower[..63]), None, None),
        ];
        for (input, permissive, strict) in cases {
            assert_eq!(decode32(input), permissive, "decode32({input:?})");
            assert_eq!(decode32_lower(input), strict, "decode32_lower({input:?})");
        }
        // Multi-byte characters never slice a char boundary or panic.
        assert_eq!(decode32(&"é".repeat(32)), None);
        assert_eq!(decode("abc"), None, "odd length");
    }
}
