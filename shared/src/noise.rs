//! The Noise protocol parameters, shared by the secure channel and by
//! identity generation.
//!
//! Owned here, below both users, so that [`crate::key`] (which generates
//! x25519 keypairs with these parameters) and [`crate::channel`] (which runs
//! the handshake and needs identities from `key`) do not import each other.
//! This module imports nothing from the crate.

/// The Noise protocol name: XX pattern with a pre-shared key in the third
/// message, x25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// [`NOISE_PARAMS`], parsed.
pub(crate) fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("the static Noise protocol name is valid")
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_parse() {
        assert_eq!(super::params().name, super::NOISE_PARAMS);
    }
}
