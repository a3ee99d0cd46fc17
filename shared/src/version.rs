//! Version vectors: causality between versions of one path, no wall clock.
//!
//! A [`VersionVector`] maps [`ShortId`] -> counter. A peer that changes a
//! path locally sets its own counter to one more than the largest counter in
//! the vector it last knew ([`VersionVector::bump`]), so its new version
//! dominates everything it had seen. Two vectors are compared with
//! [`VersionVector::compare`]; neither dominating means the versions are
//! concurrent (a conflict the tracker resolves). Zero counters are never
//! stored, so equal histories have equal representations.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::ShortId;

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
    pub fn bump(&mut self, peer: ShortId) {
        let next = self.max_counter().saturating_add(1);
        self.0.insert(peer, next);
    }

    /// The vector after a local change by `peer` (see [`Self::bump`]).
    pub fn bumped(&self, peer: ShortId) -> Self {
        let mut next = self.clone();
        next.bump(peer);
        next
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

    /// True when the vector is in canonical form (no zero counters) and
    /// within [`crate::limits::MAX_VERSION_ENTRIES`]. Decoded vectors must be
    /// checked with this before use.
    pub fn is_well_formed(&self) -> bool {
        self.0.len() <= crate::limits::MAX_VERSION_ENTRIES && self.0.values().all(|c| *c > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|(p, c)| (ShortId(*p), *c)))
    }

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
        let next = known.bumped(ShortId(2));
        assert_eq!(next.get(ShortId(2)), 6);
        assert!(next.dominates(&known));
        let fresh = VersionVector::new().bumped(ShortId(9));
        assert_eq!(fresh.get(ShortId(9)), 1);
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
