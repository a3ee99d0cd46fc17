//! Join: the two messages exchanged inside the encrypted channel that a
//! `dartsync join` opens with the invite code (see [`crate::join`] for the
//! handshake before them).
//!
//! The joining device asks once ([`JoinRequest`]) and the tracker answers
//! once ([`JoinReply`]); then the connection ends. As everywhere, the order
//! of variants is the protocol: only ever append.

use serde::{Deserialize, Serialize};

use super::ProtocolError;
use crate::device::check_device_name;

/// Largest encoded join message (a device name of 64 bytes, a key, a
/// refusal of a few hundred bytes).
pub const MAX_JOIN_FRAME: usize = 1024;

/// Longest refusal text kept.
const MAX_REASON: usize = 512;

/// Joining device -> tracker, the first message in the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The device's name (what `dartsync tracker devices` shows).
    pub name: String,
}

/// Tracker -> joining device, the only answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// Welcome: the cluster key. The tracker's identity is the static key
    /// the channel proved.
    Granted {
        /// The cluster key.
        cluster_key: [u8; 32],
    },
    /// The code was right but the device may not join (revoked, or the
    /// invite was used up by a concurrent join).
    Refused {
        /// Why, for the person at the laptop.
        reason: String,
    },
}

impl std::fmt::Debug for JoinReply {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinReply::Granted { .. } => f.write_str("Granted { .. }"),
            JoinReply::Refused { reason } => f.debug_struct("Refused").field("reason", reason).finish(),
        }
    }
}

impl JoinRequest {
    /// Checks a request received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_device_name(&self.name).map_err(|_| ProtocolError::Invalid("join request: bad device name"))
    }
}

impl JoinReply {
    /// Checks a reply received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            JoinReply::Refused { reason } if reason.len() > MAX_REASON => {
                Err(ProtocolError::Invalid("join reply: refusal text too long"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn variant_bytes_are_pinned() {
        let granted = codec::encode(&JoinReply::Granted { cluster_key: [7; 32] }).unwrap();
        assert_eq!(granted[0], 0);
        assert_eq!(granted.len(), 33);
        let refused = codec::encode(&JoinReply::Refused { reason: "x".into() }).unwrap();
        assert_eq!(&refused[..], &[1, 1, b'x']);
        let request = codec::encode(&JoinRequest { name: "ab".into() }).unwrap();
        assert_eq!(&request[..], &[2, b'a', b'b']);
    }

    #[test]
    fn the_largest_messages_fit_the_frame_bound() {
        let request = JoinRequest { name: "n".repeat(64) };
        request.validate().unwrap();
        assert!(codec::encode(&request).unwrap().len() <= MAX_JOIN_FRAME);
        let reply = JoinReply::Refused { reason: "r".repeat(MAX_REASON) };
        reply.validate().unwrap();
        assert!(codec::encode(&reply).unwrap().len() <= MAX_JOIN_FRAME);
    }

    #[test]
    fn invalid_messages_are_refused() {
        assert!(JoinRequest { name: String::new() }.validate().is_err());
        assert!(JoinRequest { name: "a\u{7}b".into() }.validate().is_err());
        assert!(JoinReply::Refused { reason: "r".repeat(MAX_REASON + 1) }.validate().is_err());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", JoinReply::Granted { cluster_key: [0xab; 32] });
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
    }
}
