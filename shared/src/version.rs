//! Version vectors: causality between versions of one path, no wall clock.
//!
//! A [`VersionVector`] maps [`ShortId`] -> counter. A peer that changes a
//! path locally sets its own counter to one more than the largest counter in
//! the vector it last knew ([`VersionVector::bump`]), so its new version
//! dominates everything it had seen. Two vectors are compared with
//! [`VersionVector::compare`]; neither dominating means the versions are
//! concurrent (a conflict the tracker resolves). Zero counters are never
//! stored, so equal histories have equal representations.
//!
//! # Counter limit
//! Counters are at most [`MAX_COUNTER`] (2^62). A decoded vector is checked
//! with [`VersionVector::check`] (record validation does it), and
//! [`VersionVector::bump`] returns [`CounterExhausted`] rather than go past
//! the limit: a counter never saturates or wraps silently. Merging never
//! creates a counter that was not in one of its inputs, so merges of valid
//! vectors stay valid.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::ShortId;
use crate::limits::{MAX_COUNTER, MAX_VERSION_ENTRIES};

/// Why a version vector is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// More entries than [`MAX_VERSION_ENTRIES`].
    #[error("version vector has {len} entries, more than {MAX_VERSION_ENTRIES}")]
    TooManyEntries {
        /// The number of entries.
        len: usize,
    },
    /// A zero counter is stored (not canonical: zero means absent).
    #[error("version vector has a zero counter for peer {peer}")]
    ZeroCounter {
        /// The peer whose counter is zero.
        peer: ShortId,
    },
    /// A counter above [`MAX_COUNTER`].
    #[error("version vector counter {counter} of peer {peer} exceeds the limit {MAX_COUNTER} (2^62)")]
    CounterTooLarge {
        /// The peer.
        peer: ShortId,
        /// Its counter.
        counter: u64,
    },
}

/// A bump would take a counter past [`MAX_COUNTER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot record a change by peer {peer}: the vector's largest counter {max} leaves no room below {MAX_COUNTER} (2^62)"
)]
pub struct CounterExhausted {
    /// The peer whose change could not be recorded.
    pub peer: ShortId,
    /// The largest counter of the vector.
    pub max: u64,
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same history.
    Equal,
    /// `self` has seen everything `other` has, and more.
    Dominates,
    /// `other` has seen everything `self` has, and more.
    DominatedBy,
    /// Each has changes the other has not seen: a conflict.
    Concurrent,
}

/// A version vector: per-peer change counters for one path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ShortId, u64>);

impl VersionVector {
    /// The empty vector: a path nobody has changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from `(peer, counter)` pairs, dropping zero counters
    /// and keeping the largest counter of repeated peers.
    pub fn from_entries(entries: impl IntoIterator<Item = (ShortId, u64)>) -> Self {
        let mut vv = Self::new();
        for (peer, counter) in entries {
            vv.raise(peer, counter);
        }
        vv
    }

    /// The counter of `peer` (zero when absent).
    pub fn get(&self, peer: ShortId) -> u64 {
        self.0.get(&peer).copied().unwrap_or(0)
    }

    /// Raises `peer`'s counter to at least `counter`.
    fn raise(&mut self, peer: ShortId, counter: u64) {
        if counter == 0 {
            return;
        }
        let slot = self.0.entry(peer).or_insert(0);
        *slot = (*slot).max(counter);
    }

    /// The largest counter in the vector (zero when empty).
    pub fn max_counter(&self) -> u64 {
        self.0.values().copied().max().unwrap_or(0)
    }

    /// Records a local change by `peer`: its counter becomes one more than
    /// the largest counter in the vector, so the result dominates `self`.
    ///
    /// Fails, leaving `self` unchanged, when that counter would exceed
    /// [`MAX_COUNTER`]: a change that cannot be ordered after `self` must
    /// not be recorded as if it were.
    pub fn bump(&mut self, peer: ShortId) -> Result<(), CounterExhausted> {
        let max = self.max_counter();
        let next = max.checked_add(1).filter(|n| *n <= MAX_COUNTER).ok_or(CounterExhausted { peer, max })?;
        self.0.insert(peer, next);
        Ok(())
    }

    /// The vector after a local change by `peer` (see [`Self::bump`]).
    pub fn bumped(&self, peer: ShortId) -> Result<Self, CounterExhausted> {
        let mut next = self.clone();
        next.bump(peer)?;
        Ok(next)
    }

    /// The least vector that dominates or equals both inputs.
    pub fn merge(&self, other: &Self) -> Self {
        let mut merged = self.clone();
        for (&peer, &counter) in &other.0 {
            merged.raise(peer, counter);
        }
        merged
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        let mut self_ahead = false;
        let mut other_ahead = false;
        for peer in self.0.keys().chain(other.0.keys()) {
            match self.get(*peer).cmp(&other.get(*peer)) {
                Ordering::Greater => self_ahead = true,
                Ordering::Less => other_ahead = true,
                Ordering::Equal => {}
            }
        }
        match (self_ahead, other_ahead) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` has seen strictly more than `other`.
    pub fn dominates(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Dominates
    }

    /// True when neither vector has seen the other's latest change.
    pub fn concurrent_with(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// Number of peers with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty vector.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(peer, counter)` pairs in peer order.
    pub fn iter(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        self.0.iter().map(|(p, c)| (*p, *c))
    }

    /// Checks a decoded vector: canonical form (no zero counters), at most
    /// [`MAX_VERSION_ENTRIES`] entries, every counter at most
    /// [`MAX_COUNTER`]. Decoded vectors must pass this before use. The empty
    /// vector passes (a record additionally needs one entry).
    pub fn check(&self) -> Result<(), VersionError> {
        if self.0.len() > MAX_VERSION_ENTRIES {
            return Err(VersionError::TooManyEntries { len: self.0.len() });
        }
        for (&peer, &counter) in &self.0 {
            if counter == 0 {
                return Err(VersionError::ZeroCounter { peer });
            }
            if counter > MAX_COUNTER {
                return Err(VersionError::CounterTooLarge { peer, counter });
            }
        }
        Ok(())
    }

    /// True when [`Self::check`] passes.
    pub fn is_well_formed(&self) -> bool {
        self.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::vv;
    use proptest::prelude::*;

    #[test]
    fn compare_table() {
        let cases = [
            (vv(&[]), vv(&[]), Causality::Equal),
            (vv(&[(1, 1)]), vv(&[]), Causality::Dominates),
            (vv(&[]), vv(&[(1, 1)]), Causality::DominatedBy),
            (vv(&[(1, 2)]), vv(&[(1, 1)]), Causality::Dominates),
            (vv(&[(1, 1), (2, 1)]), vv(&[(1, 1)]), Causality::Dominates),
            (vv(&[(1, 2)]), vv(&[(2, 1)]), Causality::Concurrent),
            (vv(&[(1, 2), (2, 1)]), vv(&[(1, 1), (2, 2)]), Causality::Concurrent),
            (vv(&[(1, 0)]), vv(&[]), Causality::Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.compare(&b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn bump_dominates_what_was_known() {
        let known = vv(&[(1, 5), (2, 3)]);
        let next = known.bumped(ShortId(2)).unwrap();
        assert_eq!(next.get(ShortId(2)), 6);
        assert!(next.dominates(&known));
        let fresh = VersionVector::new().bumped(ShortId(9)).unwrap();
        assert_eq!(fresh.get(ShortId(9)), 1);
    }

    #[test]
    fn bump_stops_at_the_counter_limit() {
        // One below the limit: the bump reaches it exactly.
        let near = vv(&[(1, MAX_COUNTER - 1)]);
        let at = near.bumped(ShortId(2)).unwrap();
        assert_eq!(at.get(ShortId(2)), MAX_COUNTER);
        assert!(at.check().is_ok());
        // At the limit (or past it, never validated): an error, nothing changed.
        for max in [MAX_COUNTER, MAX_COUNTER + 1, u64::MAX] {
            let mut full = vv(&[(1, max), (2, 7)]);
            let before = full.clone();
            assert_eq!(full.bump(ShortId(2)), Err(CounterExhausted { peer: ShortId(2), max }));
            assert_eq!(full, before);
            assert!(full.bumped(ShortId(3)).is_err());
        }
    }

    #[test]
    fn check_table() {
        let too_many = VersionVector::from_entries((1..=MAX_VERSION_ENTRIES as u64 + 1).map(|p| (ShortId(p), 1)));
        let mut zero = vv(&[(1, 1)]);
        zero.0.insert(ShortId(4), 0);
        let cases = [
            (vv(&[]), Ok(())),
            (vv(&[(1, 1), (2, MAX_COUNTER)]), Ok(())),
            (
                vv(&[(1, MAX_COUNTER + 1)]),
                Err(VersionError::CounterTooLarge { peer: ShortId(1), counter: MAX_COUNTER + 1 }),
            ),
            (vv(&[(3, u64::MAX)]), Err(VersionError::CounterTooLarge { peer: ShortId(3), counter: u64::MAX })),
            (zero, Err(VersionError::ZeroCounter { peer: ShortId(4) })),
            (too_many, Err(VersionError::TooManyEntries { len: MAX_VERSION_ENTRIES + 1 })),
        ];
        for (v, want) in cases {
            assert_eq!(v.check(), want, "{v:?}");
            assert_eq!(v.is_well_formed(), want.is_ok());
        }
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        prop::collection::vec((0u64..6, 0u64..5), 0..6)
            .prop_map(|e| VersionVector::from_entries(e.into_iter().map(|(p, c)| (ShortId(p), c))))
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.merge(&a), a.clone());
            let ab = a.merge(&b);
            prop_assert_eq!(ab.merge(&b), ab.clone());
        }

        #[test]
        fn merge_is_an_upper_bound(a in arb_vv(), b in arb_vv()) {
            let m = a.merge(&b);
            prop_assert!(matches!(m.compare(&a), Causality::Dominates | Causality::Equal));
            prop_assert!(matches!(m.compare(&b), Causality::Dominates | Causality::Equal));
        }

        #[test]
        fn dominance_is_a_partial_order(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            // Reflexive (as equality), antisymmetric, transitive.
            prop_assert_eq!(a.compare(&a), Causality::Equal);
            if a.dominates(&b) {
                prop_assert!(!b.dominates(&a));
                prop_assert_eq!(b.compare(&a), Causality::DominatedBy);
            }
            if a.compare(&b) == Causality::Equal {
                prop_assert_eq!(&a, &b);
            }
            if a.dominates(&b) && b.dominates(&c) {
                prop_assert!(a.dominates(&c));
            }
        }

        #[test]
        fn compare_is_symmetric_for_concurrency(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.concurrent_with(&b), b.concurrent_with(&a));
        }
    }
}
