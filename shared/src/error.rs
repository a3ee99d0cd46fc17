//! The error policy of DartSync, written down once.
//!
//! Every library module has its own `thiserror` enum whose variants carry
//! context (path, peer, offset). No `String` errors cross a module boundary.
//! The binary alone uses `anyhow`.
//!
//! What an error ends:
//! - **Connection-fatal**: anything from [`crate::codec`] or
//!   [`crate::channel`] (oversized or malformed frame, failed handshake,
//!   decryption failure, unknown variant, invalid path in a message). The
//!   connection it came from is dropped with one logged reason; no state
//!   changes because of it, nothing on disk is touched.
//! - **Holder-fatal** (downloader): a holder that answers with a chunk whose
//!   hash does not match, or a chunk list that does not match the record, is
//!   dropped for that download; its pending chunks go back to the queue.
//! - **Retryable**: I/O timeouts, refused connections, `Busy`: retried with
//!   backoff or on another holder. [`Retry`] lets callers decide without
//!   matching strings.
//! - **Fatal to the process**: only start-up problems (unreadable key file,
//!   unwritable state directory, port in use), reported by the binary with
//!   the whole error chain.

/// Whether trying the same operation again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A later attempt (or another holder) may succeed: timeouts, refused
    /// connections, a busy holder.
    Temporary,
    /// The same input will fail the same way: malformed data, wrong key,
    /// hash mismatch.
    Permanent,
}
