//! `dartsync join CODE [DIR]`: joins a cluster with an invite code.
//!
//! Refuses at once, before any network traffic, when the key file exists
//! (this machine is in a cluster already). Otherwise runs the join
//! (`dartsync_peer::join`: folder, handshake, tracker pin), then writes the
//! cluster key (mode 0600), and hands the peer settings back to `main`,
//! which starts the peer unless `--no-start`. A failed join writes no key
//! and no pin.

use std::path::PathBuf;

use anyhow::{Context, bail};
use dartsync_shared::config::PeerConfig;
use dartsync_shared::device::default_device_name;
use dartsync_shared::invite_code::InviteCode;
use dartsync_shared::key::ClusterKey;

/// How long `join` looks on the LAN for the tracker that made the code.
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A resolved `dartsync join` command line.
#[derive(Debug)]
pub struct JoinRequest {
    /// The code, already parsed.
    pub code: InviteCode,
    /// The peer to run afterwards (its folder is the one joined).
    pub peer: PeerConfig,
    /// Where the cluster key goes.
    pub key_file: PathBuf,
    /// Start the peer after joining.
    pub start: bool,
}

/// Joins; `Some(config)` is the peer to start now.
pub async fn join(req: &JoinRequest) -> anyhow::Result<Option<PeerConfig>> {
    let folder = &req.peer.folder;
    refuse_existing_key(req)?;
    let addr = match req.peer.tracker_addr.clone() {
        Some(addr) => addr,
        None if !req.peer.discovery => {
            bail!("LAN discovery is off: pass the tracker's address with --tracker-addr HOST[:PORT]")
        }
        None => {
            println!("Looking on the LAN for the tracker with invite {} ...", req.code.nameplate());
            dartsync_peer::join::find_inviting_tracker(&req.code, DISCOVERY_TIMEOUT).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e}: is the tracker running on this LAN, and the invite still open (good for one device, \
                     for the minutes `dartsync invite` printed)? Or pass its address with --tracker-addr HOST[:PORT]"
                )
            })?
        }
    };
    let name = req.peer.name.clone().unwrap_or_else(default_device_name);
    let joined = dartsync_peer::join::join(folder, &addr, &req.code, &name).await?;
    joined
        .key
        .save_new(&req.key_file)
        .with_context(|| format!("joined, but cannot write the cluster key to {}", req.key_file.display()))?;
    println!(
        "Joined the cluster (key fingerprint {}) through the tracker at {addr} (tracker id {}).",
        joined.key.fingerprint(),
        joined.tracker_id()
    );
    println!("The cluster key is in {} (mode 0600); this device is {}.", req.key_file.display(), joined.device);
    if !req.start {
        println!("Start syncing {} with:\n    {}", folder.display(), start_command(req, &addr));
        return Ok(None);
    }
    println!("Syncing {} now (Ctrl-C stops; `dartsync status {}` shows progress).", folder.display(), folder.display());
    let mut peer = req.peer.clone();
    peer.tracker_addr = Some(addr);
    Ok(Some(peer))
}

/// A key file already there means this machine is in a cluster: joining
/// again would have to replace it, which `join` never does.
fn refuse_existing_key(req: &JoinRequest) -> anyhow::Result<()> {
    if !req.key_file.exists() {
        return Ok(());
    }
    let what = match ClusterKey::load(&req.key_file) {
        Ok(key) => format!("a cluster key (fingerprint {})", key.fingerprint()),
        Err(_) => "something that is not a usable cluster key".to_owned(),
    };
    bail!(
        "{} already holds {what}: this machine is in a cluster already. To sync another folder in it, run \
         `dartsync --peer DIR`; to join another cluster, pass --key-file with a new path (nothing was sent \
         to the tracker, the code is still good)",
        req.key_file.display()
    )
}

/// The command that starts the peer later.
fn start_command(req: &JoinRequest, addr: &str) -> String {
    let mut cmd = format!("dartsync --peer {}", shell_quote(&req.peer.folder.display().to_string()));
    // The folder remembers the address; a name the user gave (pi.local) is
    // kept for when the tracker's address changes.
    if req.peer.tracker_addr.is_some() {
        cmd.push_str(&format!(" --tracker-addr {addr}"));
    }
    if req.key_file != dartsync_shared::config::default_key_file() {
        cmd.push_str(&format!(" --key-file {}", shell_quote(&req.key_file.display().to_string())));
    }
    cmd
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-~+=:,@".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/home/me/DartSync"), "/home/me/DartSync");
        assert_eq!(shell_quote("/home/me/My Files"), "'/home/me/My Files'");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
