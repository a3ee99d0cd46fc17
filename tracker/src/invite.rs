//! Open invites: the codes `dartsync invite` made that no device has used
//! yet.
//!
//! An invite is good for one device, for its validity (10 minutes by
//! default, at most a day), and for [`MAX_FAILURES`] wrong guesses; the
//! next wrong guess burns it. At most [`MAX_OPEN`] are open at once. The
//! table lives in memory only: a restarted tracker has no open invites
//! (nothing secret is ever written to disk).
//!
//! The nameplates of the open invites are handed to the LAN announcement
//! ([`Nameplates`]), so a joining laptop finds the tracker that holds its
//! invite.
//!
//! Not here: the handshake (`dartsync_shared::join`), serving a join
//! connection (`join`).

use std::collections::BTreeMap;
use std::time::Duration;

use dartsync_shared::invite_code::{InviteCode, MAX_NAMEPLATE};
use dartsync_shared::join::MAX_FAILURES;
use parking_lot::Mutex;
use rand::Rng;

use crate::discovery::Nameplates;
use tokio::time::Instant;

/// Invites open at once.
pub(crate) const MAX_OPEN: usize = 16;

/// Validity of an invite when `dartsync invite` does not say.
pub(crate) const DEFAULT_VALIDITY: Duration = Duration::from_secs(10 * 60);

/// The longest validity `dartsync invite --minutes` may ask for.
pub(crate) const MAX_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// Why no invite was made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum InviteError {
    /// Too many are open.
    #[error("{MAX_OPEN} invites are open already; use one, or wait until one expires")]
    TooMany,
    /// The validity asked for is zero or too long.
    #[error("an invite is valid for 1 minute to {} hours", MAX_VALIDITY.as_secs() / 3600)]
    Validity,
}

/// What a wrong guess did to an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guess {
    /// Still open, with this many wrong guesses so far.
    Counted(u8),
    /// That was one too many: the invite is gone.
    Burned,
    /// The invite was not open any more.
    Gone,
}

#[derive(Debug)]
struct Open {
    code: InviteCode,
    expires: Instant,
    failures: u8,
}

/// The open invites, shared by the control socket and the join listener.
#[derive(Debug)]
pub(crate) struct Invites {
    open: Mutex<BTreeMap<u16, Open>>,
    nameplates: Nameplates,
}

impl Invites {
    /// No open invites; their nameplates go to `nameplates`.
    pub fn new(nameplates: Nameplates) -> Invites {
        Invites { open: Mutex::new(BTreeMap::new()), nameplates }
    }

    /// Makes an invite valid for `validity` from `now`.
    pub fn create(&self, validity: Duration, now: Instant) -> Result<(InviteCode, Instant), InviteError> {
        if validity < Duration::from_secs(60) || validity > MAX_VALIDITY {
            return Err(InviteError::Validity);
        }
        let mut open = self.open.lock();
        prune(&mut open, now);
        if open.len() >= MAX_OPEN {
            return Err(InviteError::TooMany);
        }
        let mut rng = rand::rngs::OsRng;
        let nameplate = loop {
            let n = rng.gen_range(1..=MAX_NAMEPLATE);
            if !open.contains_key(&n) {
                break n;
            }
        };
        let code = InviteCode::generate(nameplate);
        let expires = now + validity;
        open.insert(nameplate, Open { code: code.clone(), expires, failures: 0 });
        self.publish(&open);
        Ok((code, expires))
    }

    /// The open invite with `nameplate`, if any.
    pub fn lookup(&self, nameplate: u16, now: Instant) -> Option<InviteCode> {
        let mut open = self.open.lock();
        if prune(&mut open, now) {
            self.publish(&open);
        }
        open.get(&nameplate).map(|o| o.code.clone())
    }

    /// A join with `code` failed after the key exchange.
    pub fn failed(&self, code: &InviteCode) -> Guess {
        let mut open = self.open.lock();
        let Some(entry) = open.get_mut(&code.nameplate()).filter(|o| o.code == *code) else {
            return Guess::Gone;
        };
        entry.failures += 1;
        if entry.failures < MAX_FAILURES {
            return Guess::Counted(entry.failures);
        }
        open.remove(&code.nameplate());
        self.publish(&open);
        Guess::Burned
    }

    /// A device proved `code`: the invite is used up. False if it was not
    /// open any more (another device used it a moment before, or it
    /// expired during the handshake).
    pub fn consume(&self, code: &InviteCode, now: Instant) -> bool {
        let mut open = self.open.lock();
        let hit = open.get(&code.nameplate()).is_some_and(|o| o.code == *code && o.expires > now);
        if hit {
            open.remove(&code.nameplate());
        }
        prune(&mut open, now);
        self.publish(&open);
        hit
    }

    fn publish(&self, open: &BTreeMap<u16, Open>) {
        self.nameplates.set_nameplates(open.keys().copied().collect());
    }
}

/// Drops expired invites; true if any went.
fn prune(open: &mut BTreeMap<u16, Open>, now: Instant) -> bool {
    let before = open.len();
    open.retain(|_, o| o.expires > now);
    open.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MIN: Duration = DEFAULT_VALIDITY;

    #[test]
    fn an_invite_is_found_by_its_nameplate_until_it_expires() {
        let invites = Invites::new(Nameplates::default());
        let now = Instant::now();
        let (code, expires) = invites.create(TEN_MIN, now).unwrap();
        assert_eq!(expires, now + TEN_MIN);
        assert_eq!(invites.lookup(code.nameplate(), now), Some(code.clone()));
        assert_eq!(invites.nameplates.nameplates(), vec![code.nameplate()]);
        assert_eq!(invites.lookup(code.nameplate(), expires), None);
        assert!(invites.nameplates.nameplates().is_empty(), "an expired nameplate is no longer announced");
        assert!(!invites.consume(&code, expires), "an expired invite cannot be used");
    }

    #[test]
    fn an_invite_admits_one_device() {
        let invites = Invites::new(Nameplates::default());
        let now = Instant::now();
        let (code, _) = invites.create(TEN_MIN, now).unwrap();
        assert!(invites.consume(&code, now));
        assert!(!invites.consume(&code, now), "a code is good for one device");
        assert_eq!(invites.lookup(code.nameplate(), now), None);
        assert!(invites.nameplates.nameplates().is_empty());
    }

    #[test]
    fn wrong_guesses_are_counted_and_burn_the_invite() {
        let invites = Invites::new(Nameplates::default());
        let now = Instant::now();
        let (code, _) = invites.create(TEN_MIN, now).unwrap();
        for n in 1..MAX_FAILURES {
            assert_eq!(invites.failed(&code), Guess::Counted(n));
        }
        assert_eq!(invites.failed(&code), Guess::Burned);
        assert_eq!(invites.failed(&code), Guess::Gone);
        assert_eq!(invites.lookup(code.nameplate(), now), None);
        assert!(!invites.consume(&code, now), "a burned code cannot be used, even when right");
    }

    #[test]
    fn at_most_max_open_invites_and_sane_validities() {
        let invites = Invites::new(Nameplates::default());
        let now = Instant::now();
        let mut plates = Vec::new();
        for _ in 0..MAX_OPEN {
            plates.push(invites.create(TEN_MIN, now).unwrap().0.nameplate());
        }
        plates.sort_unstable();
        plates.dedup();
        assert_eq!(plates.len(), MAX_OPEN, "nameplates are distinct");
        assert_eq!(invites.create(TEN_MIN, now), Err(InviteError::TooMany));
        // Expired ones make room.
        assert!(invites.create(TEN_MIN, now + TEN_MIN).is_ok());
        assert_eq!(Invites::new(Nameplates::default()).create(Duration::ZERO, now), Err(InviteError::Validity));
        assert_eq!(Invites::new(Nameplates::default()).create(MAX_VALIDITY * 2, now), Err(InviteError::Validity));
    }
}
