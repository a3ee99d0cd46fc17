//! Invite codes: `7-otter-basket-maple`, what `dartsync invite` prints and
//! `dartsync join` reads.
//!
//! A code is a *nameplate* (1..=999) and three words. The nameplate is
//! public: it travels in the clear in the join handshake and in the
//! tracker's LAN announcement, so a joining laptop can find the tracker
//! whose invite it holds and the tracker can find the invite. The three
//! words are the secret (24 random bits, one byte per word from a list of
//! 256): they never cross the wire, they are the password of the
//! password-authenticated key exchange in [`crate::join`]. With at most
//! [`crate::join::MAX_FAILURES`] wrong guesses per code before the tracker
//! burns it, an attacker's chance is a few in sixteen million.
//!
//! Parsing is forgiving about what people type (case, spaces instead of
//! hyphens, surrounding blanks) and strict about everything else; the
//! error says what is wrong.

mod words;

use std::fmt;

use rand::Rng;

use words::WORDS;

/// The largest nameplate.
pub const MAX_NAMEPLATE: u16 = 999;

/// Secret words per code.
pub const WORDS_PER_CODE: usize = 3;

/// Longer input is not a code (a paste gone wrong).
const MAX_CODE_INPUT: usize = 128;

/// A one-time invite code.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode {
    nameplate: u16,
    secret: [u8; WORDS_PER_CODE],
}

/// Why a typed code is not an invite code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not `NUMBER-WORD-WORD-WORD`.
    #[error("{0}: an invite code looks like 7-otter-basket-maple (a number and three words)")]
    Shape(String),
    /// The number is not 1..=999.
    #[error("{0:?} is not an invite number: it must be 1 to {MAX_NAMEPLATE}")]
    Nameplate(String),
    /// A word not in the list.
    #[error("{0:?} is not a word of invite codes (a typo?)")]
    Word(String),
}

impl InviteCode {
    /// A fresh code with the given nameplate and random words.
    pub fn generate(nameplate: u16) -> InviteCode {
        debug_assert!((1..=MAX_NAMEPLATE).contains(&nameplate));
        InviteCode { nameplate, secret: rand::rngs::OsRng.r#gen() }
    }

    /// Reads a code as a person typed it.
    pub fn parse(text: &str) -> Result<InviteCode, CodeError> {
        if text.len() > MAX_CODE_INPUT {
            return Err(CodeError::Shape(format!("{} characters is too long", text.len())));
        }
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(|c: char| c == '-' || c.is_whitespace()).filter(|p| !p.is_empty()).collect();
        if parts.len() != 1 + WORDS_PER_CODE {
            return Err(CodeError::Shape(format!("{:?} has {} parts, not 4", text.trim(), parts.len())));
        }
        let nameplate = match parts[0].parse::<u16>() {
            Ok(n) if (1..=MAX_NAMEPLATE).contains(&n) && !parts[0].starts_with('0') => n,
            _ => return Err(CodeError::Nameplate(parts[0].to_owned())),
        };
        let mut secret = [0u8; WORDS_PER_CODE];
        for (byte, word) in secret.iter_mut().zip(&parts[1..]) {
            *byte = word_value(word).ok_or_else(|| CodeError::Word((*word).to_owned()))?;
        }
        Ok(InviteCode { nameplate, secret })
    }

    /// The public part.
    pub fn nameplate(&self) -> u16 {
        self.nameplate
    }

    /// The canonical text, the password of the key exchange.
    pub fn password(&self) -> String {
        self.to_string()
    }
}

/// The value of `word`, if it is one of the list.
fn word_value(word: &str) -> Option<u8> {
    WORDS.iter().position(|w| *w == word).and_then(|i| u8::try_from(i).ok())
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.nameplate)?;
        for byte in self.secret {
            write!(f, "-{}", WORDS[usize::from(byte)])?;
        }
        Ok(())
    }
}

impl fmt::Debug for InviteCode {
    /// The nameplate only: the words are a secret and stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteCode({}-***)", self.nameplate)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_word_list_is_256_distinct_short_lowercase_words() {
        let set: HashSet<&str> = WORDS.iter().copied().collect();
        assert_eq!(set.len(), 256);
        for w in WORDS {
            assert!((3..=8).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
    }

    #[test]
    fn a_generated_code_round_trips_through_its_text() {
        for n in [1, 7, MAX_NAMEPLATE] {
            let code = InviteCode::generate(n);
            let text = code.to_string();
            assert_eq!(InviteCode::parse(&text).unwrap(), code, "{text}");
            assert_eq!(code.nameplate(), n);
            assert_eq!(code.password(), text);
        }
    }

    #[test]
    fn typing_variations_are_accepted() {
        let code = InviteCode::parse("7-otter-basket-acid").unwrap();
        for typed in ["  7-Otter-BASKET-acid\n", "7 otter basket acid", "7--otter - basket-acid"] {
            assert_eq!(InviteCode::parse(typed).unwrap(), code, "{typed:?}");
        }
    }

    #[test]
    fn malformed_codes_say_what_is_wrong() {
        assert!(matches!(InviteCode::parse(""), Err(CodeError::Shape(_))));
        assert!(matches!(InviteCode::parse("7-otter-basket"), Err(CodeError::Shape(_))));
        assert!(matches!(InviteCode::parse("7-otter-basket-acid-acid"), Err(CodeError::Shape(_))));
        assert_eq!(InviteCode::parse("0-otter-basket-acid"), Err(CodeError::Nameplate("0".into())));
        assert_eq!(InviteCode::parse("1000-otter-basket-acid"), Err(CodeError::Nameplate("1000".into())));
        assert_eq!(InviteCode::parse("07-otter-basket-acid"), Err(CodeError::Nameplate("07".into())));
        assert_eq!(InviteCode::parse("x-otter-basket-acid"), Err(CodeError::Nameplate("x".into())));
        assert_eq!(InviteCode::parse("7-otter-baskit-acid"), Err(CodeError::Word("baskit".into())));
        assert!(matches!(InviteCode::parse(&"7-otter-".repeat(40)), Err(CodeError::Shape(_))));
        let err = InviteCode::parse("7-otter").unwrap_err().to_string();
        assert!(err.contains("7-otter-basket-maple"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_secret_words() {
        let code = InviteCode::parse("7-otter-basket-acid").unwrap();
        let shown = format!("{code:?}");
        assert!(shown.contains('7') && !shown.contains("otter"), "{shown}");
    }
}
