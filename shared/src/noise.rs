//! The Noise protocol parameters, shared by the secure channel and by
//! identity generation.
//!
//! Owned here, below both users, so that [`crate::key`] (which generates
//! x25519 keypairs with these parameters) and [`crate::channel`] (which runs
//! the handshake and needs identities from `key`) do not import each other.
//! This module imports nothing from the crate.

/// The Noise protocol name: XX pattern with the pre-shared key (the cluster
/// key) mixed in before anything else (`psk0`), x25519, ChaCha20-Poly1305,
/// BLAKE2s.
///
/// `psk0` puts the PSK token first in message 1, so every key of the
/// handshake derives from the cluster key: the initiator's first payload,
/// the responder's static key in message 2 and the initiator's in message 3
/// are all encrypted under PSK-dependent keys. A host without the cluster
/// key fails the responder's check of message 1 and never receives
/// message 2, so it learns no identity. (With the earlier `psk3` the PSK
/// was mixed only at the end of message 3; anyone who sent a message 1 got
/// the responder's static key, decryptable with their own ephemeral key.)
pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";

/// Where [`NOISE_PARAMS`] mixes the pre-shared key (the `N` of `pskN`).
pub(crate) const PSK_LOCATION: u8 = 0;

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
