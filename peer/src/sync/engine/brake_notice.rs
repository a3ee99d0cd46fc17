//! What the engine does when the tracker's mass-change brake speaks about
//! this device's own changes: says so when they are held or released, and
//! puts back the cluster's version of every path whose change an operator
//! rejected (the local version goes to the history, as in `revert`).

use dartsync_shared::human::{plural, thousands};
use dartsync_shared::proto::ptp::BrakeNotice;
use dartsync_shared::status::HeldByTracker;

use super::Engine;

/// Seconds since the Unix epoch (0 before 1970).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Engine {
    /// Handles one brake notice from the tracker.
    pub(super) async fn brake_notice(&mut self, notice: BrakeNotice) {
        match notice {
            BrakeNotice::Held { deletes, overwrites, live } => {
                tracing::warn!(
                    "the tracker holds this device's recent changes as a mass change ({} {} and {} {} of {} live \
                     {}): they reach no other device until an operator runs `dartsync tracker approve` on the \
                     tracker machine; `dartsync tracker reject` there gives this folder the cluster's version back",
                    thousands(deletes),
                    plural(deletes, "deletion"),
                    thousands(overwrites),
                    plural(overwrites, "overwrite"),
                    thousands(live),
                    plural(live, "file"),
                );
                self.parts.status.event(format!(
                    "mass change held by the tracker ({} deleted, {} overwritten): waiting for approval there",
                    thousands(deletes),
                    thousands(overwrites)
                ));
                self.parts.status.set_held(Some(HeldByTracker { deletes, overwrites, since: unix_now() }));
            }
            BrakeNotice::Approved { records } => {
                tracing::info!("the tracker approved this device's held mass change ({records} records): published");
                self.parts.status.event("mass change approved on the tracker".to_owned());
                self.parts.status.set_held(None);
            }
            BrakeNotice::Rejected { paths } => {
                self.parts.status.set_held(None);
                let mut put_back = 0u64;
                for path in &paths {
                    let Ok((indexed, modified)) = self.parts.local.local_view(path).await else { continue };
                    let global = self.global.get(path).map(|g| &g.record);
                    let same = match (&indexed, global) {
                        (Some(i), Some(g)) => i.record.version == g.version,
                        (None, None) => true,
                        _ => false,
                    };
                    if same && !modified {
                        continue;
                    }
                    match self.put_back(path).await {
                        Ok(_) => put_back += 1,
                        Err(e) => tracing::warn!("cannot put back the cluster's version of {path}: {e}"),
                    }
                }
                let n = paths.len() as u64;
                tracing::warn!(
                    "the tracker rejected this device's mass change ({} {}): putting back the cluster's version of \
                     {put_back}; local versions are kept in .dartsync/versions",
                    thousands(n),
                    plural(n, "path")
                );
                self.parts.status.event(format!("mass change rejected on the tracker: {put_back} paths put back"));
            }
        }
    }
}
