//! The device registry: every device the tracker has decided about, with
//! its [`DeviceState`] (admitted, pending, revoked), the name it last gave
//! and when its state last changed. Persisted (`store`, table `devices`),
//! so an approval or a revocation survives a restart.
//!
//! Pure like `state`, which owns one `Registry`. Rules:
//! - A device registering for the first time is admitted under
//!   [`AdmitPolicy::Auto`] and pending under [`AdmitPolicy::Approve`]; a
//!   pending device registering under `Auto` is admitted (the operator
//!   switched the policy off). A revoked device stays revoked whatever the
//!   policy, until `admit`.
//! - At most [`MAX_PENDING`] devices wait at once: a new one beyond that is
//!   refused (the operator admits or revokes some first), so identities
//!   minted by a key holder cannot grow the registry without bound.
//! - Admitted entries go with the known peer (`state` forgets the offline
//!   peer seen longest ago beyond `max_known_peers`); pending and revoked
//!   entries stay until the operator changes them: a revocation is never
//!   forgotten.
//!
//! [`Registry::resolve`] turns what an operator typed (a name, an id, a
//! unique id prefix) into one device, or says why not.

use std::collections::{BTreeSet, HashMap};

use dartsync_shared::PeerId;
use dartsync_shared::config::AdmitPolicy;
use dartsync_shared::device::DeviceState;

/// Most devices pending at once.
pub(crate) const MAX_PENDING: usize = 64;

/// Shortest id prefix accepted for a device.
pub(crate) const MIN_ID_PREFIX: usize = 4;

/// One device's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceEntry {
    /// Admitted, pending or revoked.
    pub state: DeviceState,
    /// The name it last registered with (may be empty).
    pub name: String,
    /// Unix seconds of the last change of `state`.
    pub since: u64,
}

/// Why a device's registration is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArriveError {
    /// [`MAX_PENDING`] devices wait already.
    #[error(
        "{MAX_PENDING} devices already wait for approval; on the tracker machine, admit or revoke some \
         (`dartsync tracker devices`)"
    )]
    TooManyPending,
}

/// Why an operator's device argument does not name one device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResolveError {
    /// Nothing matches.
    #[error("no device is called {0:?} and no device id starts with it (see `dartsync tracker devices`)")]
    Unknown(String),
    /// Several devices match.
    #[error("{query:?} is ambiguous: it matches {}; give the id (or a longer prefix of it)", .matches.join(", "))]
    Ambiguous {
        /// What was typed.
        query: String,
        /// `name (id)` of every match.
        matches: Vec<String>,
    },
}

/// Every device decided about.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: HashMap<PeerId, DeviceEntry>,
    dirty: BTreeSet<PeerId>,
}

impl Registry {
    /// Entries loaded from the database.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (PeerId, DeviceEntry)>) {
        self.entries.extend(entries);
    }

    /// `peer`'s entry.
    pub fn get(&self, peer: PeerId) -> Option<&DeviceEntry> {
        self.entries.get(&peer)
    }

    /// `peer`'s state, if the tracker ever decided about it.
    pub fn state(&self, peer: PeerId) -> Option<DeviceState> {
        self.entries.get(&peer).map(|e| e.state)
    }

    /// Every entry (in no order).
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &DeviceEntry)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// Devices pending now.
    pub fn pending_count(&self) -> usize {
        self.entries.values().filter(|e| e.state == DeviceState::Pending).count()
    }

    /// `peer` registers calling itself `name` (empty: keeps the old name):
    /// its state from now on, under `policy`.
    pub fn arrive(
        &mut self,
        peer: PeerId,
        name: &str,
        policy: AdmitPolicy,
        now_unix: u64,
    ) -> Result<DeviceState, ArriveError> {
        let state = match (self.state(peer), policy) {
            (Some(DeviceState::Revoked), _) => DeviceState::Revoked,
            (Some(DeviceState::Admitted), _) | (_, AdmitPolicy::Auto) => DeviceState::Admitted,
            (Some(DeviceState::Pending), AdmitPolicy::Approve) => DeviceState::Pending,
            (None, AdmitPolicy::Approve) => {
                if self.pending_count() >= MAX_PENDING {
                    return Err(ArriveError::TooManyPending);
                }
                DeviceState::Pending
            }
        };
        self.put(peer, state, name, now_unix);
        Ok(state)
    }

    /// Marks `peer` admitted; returns its state before (`None`: unknown,
    /// nothing changed).
    pub fn admit(&mut self, peer: PeerId, now_unix: u64) -> Option<DeviceState> {
        let before = self.state(peer)?;
        self.put(peer, DeviceState::Admitted, "", now_unix);
        Some(before)
    }

    /// `peer` joined with an invite calling itself `name`: admitted under
    /// either policy, unless it was revoked (then nothing changes and the
    /// answer is `Err`). Returns its state before (`None`: new).
    pub fn invited(&mut self, peer: PeerId, name: &str, now_unix: u64) -> Result<Option<DeviceState>, DeviceState> {
        let before = self.state(peer);
        if before == Some(DeviceState::Revoked) {
            return Err(DeviceState::Revoked);
        }
        self.put(peer, DeviceState::Admitted, name, now_unix);
        Ok(before)
    }

    /// Marks `peer` revoked; returns its state before (`None`: unknown,
    /// nothing changed).
    pub fn revoke(&mut self, peer: PeerId, now_unix: u64) -> Option<DeviceState> {
        let before = self.state(peer)?;
        self.put(peer, DeviceState::Revoked, "", now_unix);
        Some(before)
    }

    /// A known peer was forgotten: its entry goes if it was admitted (a
    /// pending or revoked one stays).
    pub fn forget(&mut self, peer: PeerId) {
        if self.state(peer) == Some(DeviceState::Admitted) {
            self.entries.remove(&peer);
            self.dirty.insert(peer);
        }
    }

    fn put(&mut self, peer: PeerId, state: DeviceState, name: &str, now_unix: u64) {
        let mut changed = false;
        let entry = self.entries.entry(peer).or_insert_with(|| {
            changed = true;
            DeviceEntry { state, name: String::new(), since: now_unix }
        });
        if entry.state != state {
            entry.state = state;
            entry.since = now_unix;
            changed = true;
        }
        if !name.is_empty() && entry.name != name {
            entry.name = name.to_owned();
            changed = true;
        }
        if changed {
            self.dirty.insert(peer);
        }
    }

    /// Entries changed since the last call: `(peer, Some(entry))` to
    /// write, `(peer, None)` to delete.
    pub fn take_dirty(&mut self) -> Vec<(PeerId, Option<DeviceEntry>)> {
        std::mem::take(&mut self.dirty).into_iter().map(|id| (id, self.entries.get(&id).cloned())).collect()
    }

    /// The one device `query` names: an exact id, else an exact name,
    /// else a unique id prefix (at least [`MIN_ID_PREFIX`] characters; ids
    /// compare case-insensitively).
    pub fn resolve(&self, query: &str) -> Result<PeerId, ResolveError> {
        let query = query.trim();
        let lower = query.to_ascii_lowercase();
        if let Some(id) = self.entries.keys().find(|id| id.to_string() == lower) {
            return Ok(*id);
        }
        let by_name: Vec<PeerId> = self.sorted(|_, e| e.name == query);
        if !by_name.is_empty() {
            return self.one(query, by_name);
        }
        if lower.len() >= MIN_ID_PREFIX {
            let by_prefix: Vec<PeerId> = self.sorted(|id, _| id.to_string().starts_with(&lower));
            if !by_prefix.is_empty() {
                return self.one(query, by_prefix);
            }
        }
        Err(ResolveError::Unknown(query.to_owned()))
    }

    fn sorted(&self, keep: impl Fn(PeerId, &DeviceEntry) -> bool) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self.entries.iter().filter(|(id, e)| keep(**id, e)).map(|(id, _)| *id).collect();
        ids.sort();
        ids
    }

    fn one(&self, query: &str, ids: Vec<PeerId>) -> Result<PeerId, ResolveError> {
        match ids[..] {
            [one] => Ok(one),
            _ => Err(ResolveError::Ambiguous {
                query: query.to_owned(),
                matches: ids
                    .iter()
                    .map(|id| {
                        let name = self.entries.get(id).map_or("", |e| e.name.as_str());
                        format!("{name} ({id})")
                    })
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    #[test]
    fn auto_admits_new_devices_and_approve_holds_them() {
        let mut r = Registry::default();
        assert_eq!(r.arrive(id(1), "alice", AdmitPolicy::Auto, 10), Ok(DeviceState::Admitted));
        assert_eq!(r.arrive(id(2), "bob", AdmitPolicy::Approve, 11), Ok(DeviceState::Pending));
        // Still pending on its next visit; an admitted one stays admitted.
        assert_eq!(r.arrive(id(2), "bob", AdmitPolicy::Approve, 12), Ok(DeviceState::Pending));
        assert_eq!(r.arrive(id(1), "alice", AdmitPolicy::Approve, 12), Ok(DeviceState::Admitted));
        // Switching the policy to auto admits a pending device.
        assert_eq!(r.arrive(id(2), "bob", AdmitPolicy::Auto, 13), Ok(DeviceState::Admitted));
        assert_eq!(r.get(id(2)).unwrap().since, 13);
        let dirty = r.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert!(r.take_dirty().is_empty());
    }

    #[test]
    fn admit_and_revoke_change_states_and_revocation_sticks() {
        let mut r = Registry::default();
        assert_eq!(r.admit(id(9), 1), None, "unknown devices are not created");
        assert_eq!(r.revoke(id(9), 1), None);
        r.arrive(id(1), "alice", AdmitPolicy::Approve, 1).unwrap();
        assert_eq!(r.admit(id(1), 2), Some(DeviceState::Pending));
        assert_eq!(r.state(id(1)), Some(DeviceState::Admitted));
        assert_eq!(r.revoke(id(1), 3), Some(DeviceState::Admitted));
        for policy in [AdmitPolicy::Auto, AdmitPolicy::Approve] {
            assert_eq!(r.arrive(id(1), "alice", policy, 4), Ok(DeviceState::Revoked));
        }
        // A forgotten known peer keeps its revocation.
        r.forget(id(1));
        assert_eq!(r.state(id(1)), Some(DeviceState::Revoked));
        assert_eq!(r.admit(id(1), 5), Some(DeviceState::Revoked));
        r.forget(id(1));
        assert_eq!(r.state(id(1)), None);
        assert_eq!(r.take_dirty(), vec![(id(1), None)]);
    }

    #[test]
    fn pending_devices_are_bounded() {
        let mut r = Registry::default();
        for n in 0..MAX_PENDING {
            assert_eq!(r.arrive(id(n as u8), "", AdmitPolicy::Approve, 1), Ok(DeviceState::Pending));
        }
        let over = id(MAX_PENDING as u8);
        assert_eq!(r.arrive(over, "", AdmitPolicy::Approve, 1), Err(ArriveError::TooManyPending));
        assert_eq!(r.state(over), None);
        // Admitting one makes room.
        r.admit(id(0), 2).unwrap();
        assert_eq!(r.arrive(over, "", AdmitPolicy::Approve, 2), Ok(DeviceState::Pending));
    }

    #[test]
    fn names_ids_and_prefixes_resolve_to_one_device() {
        let mut r = Registry::default();
        let (a, b, c) = (PeerId([0x11; 16]), PeerId([0x12; 16]), PeerId([0x80; 16]));
        r.arrive(a, "laptop", AdmitPolicy::Auto, 1).unwrap();
        r.arrive(b, "laptop", AdmitPolicy::Auto, 1).unwrap();
        r.arrive(c, "pi", AdmitPolicy::Auto, 1).unwrap();
        assert_eq!(r.resolve("pi"), Ok(c));
        assert_eq!(r.resolve(&a.to_string()), Ok(a));
        assert_eq!(r.resolve(&a.to_string().to_uppercase()), Ok(a), "ids in either case");
        match r.resolve("laptop") {
            Err(ResolveError::Ambiguous { matches, .. }) => {
                assert_eq!(matches, vec![format!("laptop ({a})"), format!("laptop ({b})")]);
            }
            other => panic!("{other:?}"),
        }
        let err = r.resolve("laptop").unwrap_err().to_string();
        assert!(err.contains(&a.to_string()) && err.contains(&b.to_string()), "{err}");
        // A unique prefix names one device; a shared or too short one does not.
        let a_text = a.to_string();
        let b_text = b.to_string();
        let common = a_text.chars().zip(b_text.chars()).take_while(|(x, y)| x == y).count();
        assert_eq!(r.resolve(&a_text[..(common + 1).max(MIN_ID_PREFIX)]), Ok(a));
        if common >= MIN_ID_PREFIX {
            assert!(matches!(r.resolve(&a_text[..common]), Err(ResolveError::Ambiguous { .. })));
        }
        assert!(matches!(r.resolve(&c.to_string()[..MIN_ID_PREFIX - 1]), Err(ResolveError::Unknown(_))));
        assert!(matches!(r.resolve("nobody"), Err(ResolveError::Unknown(_))));
        // A name wins over an id prefix that happens to spell it.
        r.arrive(PeerId([0x55; 16]), &c.to_string()[..6], AdmitPolicy::Auto, 1).unwrap();
        assert_eq!(r.resolve(&c.to_string()[..6]), Ok(PeerId([0x55; 16])));
    }
}
