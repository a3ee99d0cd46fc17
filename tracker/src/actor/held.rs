//! The actor's side of the mass-change brake ([`crate::brake`]): every
//! `Announce` is judged before the state sees it; staged batches are
//! published when they settle; `approve` / `reject` from the control
//! socket decide a held change.

use dartsync_shared::human::{plural, thousands};
use dartsync_shared::status::HeldChange;
use dartsync_shared::{FileRecord, PeerId};

use super::{Actor, Verdict, log_outcome, mono_now, unix_now};
use crate::brake::{Decision, HeldSummary, MAX_HELD};
use crate::state::MTIME_ALLOWANCE_SECS;

/// What an operator decided about a held change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrakeAction {
    /// Publish it.
    Approve,
    /// Drop it; the device puts the cluster's version back.
    Reject,
}

impl Actor {
    /// An `Announce` from `peer`: judged by the brake, then published,
    /// kept back, or held.
    pub(super) fn announce(&mut self, peer: PeerId, mut records: Vec<FileRecord>) -> Verdict {
        self.brake.drop_rejected(peer, &mut records);
        let destructive = self.state.destructive(&records);
        let state = &self.state;
        match self.brake.judge(peer, records, destructive, || state.live_count(), mono_now(), unix_now()) {
            Decision::Publish(records) => self.publish(peer, records),
            Decision::Kept => Verdict::Continue,
            Decision::NowHeld(summary) => {
                self.tripped(peer, summary);
                Verdict::Continue
            }
            Decision::TooMany => Verdict::Refuse(format!(
                "more than {} changes of this device are held by the mass-change brake; \
                 decide on the tracker machine with `dartsync tracker approve` or `reject`",
                thousands(MAX_HELD as u64)
            )),
        }
    }

    /// Applies `records` from `peer` to the table.
    pub(super) fn publish(&mut self, peer: PeerId, records: Vec<FileRecord>) -> Verdict {
        if records.is_empty() {
            return Verdict::Continue;
        }
        let announced = self.state.announce(peer, records, unix_now());
        for outcome in &announced.outcomes {
            log_outcome(&self.state, peer, outcome);
        }
        if announced.clamped > 0 && self.clock_warned.insert(peer) {
            tracing::warn!(
                "{} announced modification times more than {MTIME_ALLOWANCE_SECS} s ahead of this tracker's clock \
                 (is its clock wrong?); they count as made now",
                self.state.label(peer)
            );
        }
        // Record changes make others not up to date.
        self.devices_dirty = true;
        // The session logs the refusal when it drops the peer.
        match announced.refused {
            Some(refusal) => Verdict::Refuse(refusal.to_string()),
            None => Verdict::Continue,
        }
    }

    /// Publishes the staged changes that settled under the limits.
    pub(super) fn release_staged(&mut self) {
        for (peer, records) in self.brake.due(mono_now()) {
            tracing::debug!("publishing {} staged changes of {}", records.len(), self.state.label(peer));
            if let Verdict::Refuse(why) = self.publish(peer, records) {
                tracing::warn!("staged changes of {} only partly published: {why}", self.state.label(peer));
            }
        }
    }

    fn tripped(&mut self, peer: PeerId, s: HeldSummary) {
        let name = self.state.display_name(peer);
        tracing::warn!(
            "held a mass change from {}: {} and {} of {} live {} within {} s; none of it reaches the other \
             devices until `dartsync tracker approve {name}` (or `reject {name}`) on this machine",
            self.state.label(peer),
            count(s.deletes, "deletion"),
            count(s.overwrites, "overwrite"),
            thousands(s.live),
            plural(s.live, "file"),
            self.brake_window.as_secs(),
        );
        self.state.note_event(unix_now(), format!("held a mass change from {name}"));
        self.devices_dirty = true;
        self.wake_sessions();
    }

    /// Approves or rejects the held change of `device` (a name or an id
    /// prefix), or of every device with one when `None`.
    pub(super) fn decide(&mut self, action: BrakeAction, device: Option<&str>) -> Result<serde_json::Value, String> {
        let held = self.brake.held();
        if held.is_empty() {
            return Err("no change is held: the mass-change brake has not tripped".to_owned());
        }
        let chosen: Vec<(PeerId, HeldSummary)> = match device {
            None => held,
            Some(wanted) => {
                let matching: Vec<(PeerId, HeldSummary)> = held
                    .iter()
                    .copied()
                    .filter(|(p, _)| self.state.display_name(*p) == wanted || p.to_string().starts_with(wanted))
                    .collect();
                match matching.len() {
                    1 => matching,
                    0 => {
                        let names: Vec<String> = held.iter().map(|(p, _)| self.state.label(*p)).collect();
                        return Err(format!(
                            "no held change from {wanted:?}; held changes come from: {}",
                            names.join(", ")
                        ));
                    }
                    _ => {
                        let ids: Vec<String> = matching.iter().map(|(p, _)| p.to_string()).collect();
                        return Err(format!("{wanted:?} names several devices; give the id: {}", ids.join(", ")));
                    }
                }
            }
        };
        let mut done = Vec::new();
        for (peer, summary) in chosen {
            let (label, name) = (self.state.label(peer), self.state.display_name(peer));
            match action {
                BrakeAction::Approve => {
                    let records = self.brake.approve(peer).unwrap_or_default();
                    tracing::info!("approved the held mass change of {label}: publishing {} records", records.len());
                    self.state.note_event(unix_now(), format!("approved the mass change of {name}"));
                    if let Verdict::Refuse(why) = self.publish(peer, records) {
                        tracing::warn!("the approved change of {label} was only partly published: {why}");
                    }
                }
                BrakeAction::Reject => {
                    let n = self.brake.reject(peer).unwrap_or(0);
                    tracing::info!(
                        "rejected the held mass change of {label}: {n} records dropped; it gets the cluster's version back"
                    );
                    self.state.note_event(unix_now(), format!("rejected the mass change of {name}"));
                }
            }
            done.push(serde_json::json!({
                "device": name,
                "id": peer.to_string(),
                "records": summary.records,
                "deletes": summary.deletes,
                "overwrites": summary.overwrites,
            }));
        }
        self.devices_dirty = true;
        self.wake_sessions();
        let key = match action {
            BrakeAction::Approve => "approved",
            BrakeAction::Reject => "rejected",
        };
        Ok(serde_json::json!({ key: done }))
    }

    /// The held changes, for `status --tracker`.
    pub(super) fn held_changes(&self) -> Vec<HeldChange> {
        self.brake
            .held()
            .into_iter()
            .map(|(peer, s)| HeldChange {
                device: self.state.display_name(peer),
                id: peer.to_string(),
                deletes: s.deletes,
                overwrites: s.overwrites,
                records: s.records as u64,
                since: s.since,
            })
            .collect()
    }

    /// Makes every session look for its next page (brake notices ride on
    /// it).
    fn wake_sessions(&mut self) {
        self.seq_tx.send_modify(|_| {});
    }
}

fn count(n: u64, what: &str) -> String {
    format!("{} {}", thousands(n), plural(n, what))
}
