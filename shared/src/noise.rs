//! The Noise protocol parameters, shared by the secure channel and by
//! identity generation, and the choice of cipher for a connection.
//!
//! Owned here, below both users, so that [`crate::key`] (which generates
//! x25519 keypairs with these parameters) and [`crate::channel`] (which runs
//! the handshake and needs identities from `key`) do not import each other.
//! This module imports nothing from the crate.
//!
//! # Two ciphers
//! The handshake is `Noise_XXpsk0_25519_<cipher>_BLAKE2s` with either
//! AES-256-GCM or ChaCha20-Poly1305 (both from `ring`, whose assembly is the
//! fastest available: on this project's x86_64 test machine AES-GCM seals
//! 6.2 GB/s and ChaCha20-Poly1305 1.5 GB/s on one core, against 0.9 GB/s for
//! the pure-Rust ChaCha20-Poly1305 used before). The initiator picks
//! [`Cipher::preferred`]: AES-GCM where the CPU has AES and carry-less
//! multiply instructions (every x86_64 laptop of the last decade, Apple
//! silicon, ARMv8 cores with the crypto extension), else ChaCha20-Poly1305,
//! which is the faster one without them (a Raspberry Pi 4's Cortex-A72 has
//! no AES instructions). The responder accepts both: it tries the initiator's
//! first message under each name (the name is hashed into the handshake, so
//! only the right one authenticates), which costs no extra key exchange.
//! Nodes of an older release, which speak only ChaCha20-Poly1305, still
//! connect to newer ones.

/// The Noise protocol name with ChaCha20-Poly1305: XX pattern with the
/// pre-shared key (the cluster key) mixed in before anything else (`psk0`),
/// x25519, BLAKE2s. Also the parameters of identity generation (only the
/// x25519 part matters there).
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

/// [`NOISE_PARAMS`] with AES-256-GCM: the same handshake, another cipher.
pub const NOISE_PARAMS_AESGCM: &str = "Noise_XXpsk0_25519_AESGCM_BLAKE2s";

/// Where the Noise parameters mix the pre-shared key (the `N` of `pskN`).
pub(crate) const PSK_LOCATION: u8 = 0;

/// The cipher of one connection's Noise protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM: the fastest with hardware AES.
    AesGcm,
    /// ChaCha20-Poly1305: the fastest without it.
    ChaChaPoly,
}

impl Cipher {
    /// Every cipher a responder accepts, in the order it tries them.
    pub const ALL: [Cipher; 2] = [Cipher::AesGcm, Cipher::ChaChaPoly];

    /// The cipher this machine seals fastest with (see the module doc).
    pub fn preferred() -> Cipher {
        if hardware_aes() { Cipher::AesGcm } else { Cipher::ChaChaPoly }
    }

    /// The full Noise protocol name.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Cipher::AesGcm => NOISE_PARAMS_AESGCM,
            Cipher::ChaChaPoly => NOISE_PARAMS,
        }
    }

    /// The protocol name, parsed.
    pub(crate) fn params(self) -> snow::params::NoiseParams {
        self.protocol_name().parse().expect("the static Noise protocol names are valid")
    }
}

/// Whether the CPU has the instructions that make AES-GCM fast.
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// [`NOISE_PARAMS`], parsed (identity generation).
pub(crate) fn params() -> snow::params::NoiseParams {
    Cipher::ChaChaPoly.params()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse() {
        assert_eq!(params().name, NOISE_PARAMS);
        for cipher in Cipher::ALL {
            assert_eq!(cipher.params().name, cipher.protocol_name());
        }
    }

    #[test]
    fn the_responder_accepts_the_preferred_cipher() {
        assert!(Cipher::ALL.contains(&Cipher::preferred()));
    }
}
