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
///
/// Stored as `(peer, counter)` pairs sorted by peer: one writer (most
/// paths) sits inline, more in one boxed slice. A `BTreeMap` took a
/// ~200-byte node per vector, and a peer keeps one vector per path of the
/// folder in memory. The wire form is that of a map (as the `BTreeMap`
/// was): a decoded vector keeps the last counter of a repeated peer.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(Pairs);

/// The pairs of a vector, sorted by peer, each peer once.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
enum Pairs {
    #[default]
    Empty,
    One([(ShortId, u64); 1]),
    Many(Box<[(ShortId, u64)]>),
}

impl Pairs {
    fn as_slice(&self) -> &[(ShortId, u64)] {
        match self {
            Pairs::Empty => &[],
            Pairs::One(one) => one,
            Pairs::Many(many) => many,
        }
    }

    /// From pairs already sorted by peer, each peer once.
    fn from_sorted(pairs: Vec<(ShortId, u64)>) -> Pairs {
        match pairs.as_slice() {
            [] => Pairs::Empty,
            [one] => Pairs::One([*one]),
            _ => Pairs::Many(pairs.into_boxed_slice()),
        }
    }

    /// From pairs in any order; of a repeated peer the last counter stays.
    fn from_unsorted(mut pairs: Vec<(ShortId, u64)>) -> Pairs {
        // A stable sort keeps repeated peers in their order.
        pairs.sort_by_key(|(peer, _)| *peer);
        Pairs::keep_last(pairs)
    }

    /// From pairs sorted by peer, a repeated peer's last pair kept.
    fn keep_last(pairs: Vec<(ShortId, u64)>) -> Pairs {
        let mut out: Vec<(ShortId, u64)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Pairs::from_sorted(out)
    }
}

/// Both vectors' counters, peer by peer in peer order: `(peer, a's, b's)`,
/// zero where a vector lacks the peer (a merge walk over the sorted pairs).
fn aligned<'a>(a: &'a [(ShortId, u64)], b: &'a [(ShortId, u64)]) -> impl Iterator<Item = (ShortId, u64, u64)> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => (x.0, x.1, y.1),
            (Some(x), Some(y)) if x.0 < y.0 => (x.0, x.1, 0),
            (Some(x), None) => (x.0, x.1, 0),
            (_, Some(y)) => (y.0, 0, y.1),
            (None, None) => return None,
        };
        // Past the peer just yielded, in whichever lists hold it.
        i += usize::from(a.get(i).is_some_and(|x| x.0 == next.0));
        j += usize::from(b.get(j).is_some_and(|y| y.0 == next.0));
        Some(next)
    })
}

impl std::fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.as_slice().iter().map(|(p, c)| (p, c))).finish()
    }
}

impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The pairs as a map (the newtype's content).
        struct AsMap<'a>(&'a [(ShortId, u64)]);
        impl Serialize for AsMap<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(p, c)| (p, c)))
            }
        }
        serializer.serialize_newtype_struct("VersionVector", &AsMap(self.0.as_slice()))
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Newtype;
        impl<'de> serde::de::Visitor<'de> for Newtype {
            type Value = VersionVector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a version vector")
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<VersionVector, D::Error> {
                d.deserialize_map(Map)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<VersionVector, A::Error> {
                Map.visit_map(map)
            }
        }
        struct Map;
        impl<'de> serde::de::Visitor<'de> for Map {
            type Value = VersionVector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of peer to counter")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VersionVector, A::Error> {
                // The size hint comes from the wire: never trust it for more
                // than the most a valid vector holds.
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_VERSION_ENTRIES + 1));
                while let Some(pair) = map.next_entry::<ShortId, u64>()? {
                    pairs.push(pair);
                }
                Ok(VersionVector(Pairs::from_unsorted(pairs)))
            }
        }
        deserializer.deserialize_newtype_struct("VersionVector", Newtype)
    }
}

impl VersionVector {
    /// The empty vector: a path nobody has changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from `(peer, counter)` pairs, dropping zero counters
    /// and keeping the largest counter of repeated peers.
    pub fn from_entries(entries: impl IntoIterator<Item = (ShortId, u64)>) -> Self {
        let mut pairs: Vec<(ShortId, u64)> = entries.into_iter().filter(|(_, c)| *c > 0).collect();
        // Of a repeated peer the largest counter goes last, where it is kept.
        pairs.sort_unstable();
        VersionVector(Pairs::keep_last(pairs))
    }

    /// The counter of `peer` (zero when absent).
    pub fn get(&self, peer: ShortId) -> u64 {
        let pairs = self.0.as_slice();
        pairs.binary_search_by_key(&peer, |(p, _)| *p).map_or(0, |i| pairs[i].1)
    }

    /// Sets `peer`'s counter to `counter` (zero is stored too: only a
    /// decoded vector or a test has one, and [`Self::check`] refuses it).
    fn set(&mut self, peer: ShortId, counter: u64) {
        let mut pairs = self.0.as_slice().to_vec();
        match pairs.binary_search_by_key(&peer, |(p, _)| *p) {
            Ok(i) => pairs[i].1 = counter,
            Err(i) => pairs.insert(i, (peer, counter)),
        }
        self.0 = Pairs::from_sorted(pairs);
    }

    /// The largest counter in the vector (zero when empty).
    pub fn max_counter(&self) -> u64 {
        self.iter().map(|(_, c)| c).max().unwrap_or(0)
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
        self.set(peer, next);
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
        let merged = aligned(self.0.as_slice(), other.0.as_slice())
            .map(|(peer, a, b)| (peer, a.max(b)))
            // Zero counters (only in unchecked vectors) stay out of merges.
            .filter(|(_, c)| *c > 0)
            .collect();
        VersionVector(Pairs::from_sorted(merged))
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        let mut self_ahead = false;
        let mut other_ahead = false;
        for (_, a, b) in aligned(self.0.as_slice(), other.0.as_slice()) {
            match a.cmp(&b) {
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
        self.0.as_slice().len()
    }

    /// True for the empty vector.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Pairs::Empty)
    }

    /// The `(peer, counter)` pairs in peer order.
    pub fn iter(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        self.0.as_slice().iter().copied()
    }

    /// Checks a decoded vector: canonical form (no zero counters), at most
    /// [`MAX_VERSION_ENTRIES`] entries, every counter at most
    /// [`MAX_COUNTER`]. Decoded vectors must pass this before use. The empty
    /// vector passes (a record additionally needs one entry).
    pub fn check(&self) -> Result<(), VersionError> {
        if self.len() > MAX_VERSION_ENTRIES {
            return Err(VersionError::TooManyEntries { len: self.len() });
        }
        for (peer, counter) in self.iter() {
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
        zero.set(ShortId(4), 0);
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

    /// The representation before pairs: its encoding is the wire format.
    #[derive(Serialize, Deserialize)]
    struct AsBTreeMap(std::collections::BTreeMap<ShortId, u64>);

    #[test]
    fn encodes_as_the_map_it_replaced() {
        for pairs in [vec![], vec![(7, 1)], vec![(1, 3), (9, 2), (4, 1 << 40)]] {
            let v = vv(&pairs);
            let old = AsBTreeMap(pairs.iter().map(|&(p, c)| (ShortId(p), c)).collect());
            let bytes = crate::codec::encode(&v).unwrap();
            assert_eq!(bytes, crate::codec::encode(&old).unwrap(), "{v:?}");
            assert_eq!(crate::codec::decode::<VersionVector>(&bytes).unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, serde_json::to_string(&old).unwrap());
            assert_eq!(serde_json::from_str::<VersionVector>(&json).unwrap(), v);
        }
    }

    #[test]
    fn a_decoded_repeated_peer_keeps_its_last_counter_and_zeros_are_kept_for_check() {
        // Hand-built map encodings: a repeated key, and a zero counter.
        #[derive(Serialize)]
        struct Raw(#[serde(serialize_with = "as_map")] Vec<(u64, u64)>);
        fn as_map<S: serde::Serializer>(pairs: &[(u64, u64)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(pairs.iter().map(|(p, c)| (ShortId(*p), *c)))
        }
        let bytes = crate::codec::encode(&Raw(vec![(5, 1), (2, 9), (5, 3)])).unwrap();
        let v: VersionVector = crate::codec::decode(&bytes).unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(ShortId(2), 9), (ShortId(5), 3)]);
        let bytes = crate::codec::encode(&Raw(vec![(3, 0), (1, 1)])).unwrap();
        let v: VersionVector = crate::codec::decode(&bytes).unwrap();
        assert_eq!(v.check(), Err(VersionError::ZeroCounter { peer: ShortId(3) }));
    }

    #[test]
    fn one_writer_needs_no_allocation() {
        assert!(std::mem::size_of::<VersionVector>() <= 24);
        assert!(matches!(vv(&[(3, 1)]).0, Pairs::One(_)));
        assert!(matches!(vv(&[]).0, Pairs::Empty));
        assert!(matches!(vv(&[(1, 1), (2, 1)]).0, Pairs::Many(_)));
    }

    /// The reference model: the map the pairs replaced.
    fn model(v: &VersionVector) -> std::collections::BTreeMap<ShortId, u64> {
        v.iter().collect()
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
        fn pairs_behave_as_the_map(a in arb_vv(), b in arb_vv(), peer in 0u64..7) {
            let (ma, mb) = (model(&a), model(&b));
            prop_assert_eq!(a.get(ShortId(peer)), ma.get(&ShortId(peer)).copied().unwrap_or(0));
            let mut merged = ma.clone();
            for (p, c) in &mb {
                let slot = merged.entry(*p).or_insert(0);
                *slot = (*slot).max(*c);
            }
            prop_assert_eq!(model(&a.merge(&b)), merged);
            let ahead = ma.keys().chain(mb.keys()).any(|p| a.get(*p) > b.get(*p));
            let behind = ma.keys().chain(mb.keys()).any(|p| a.get(*p) < b.get(*p));
            let want = match (ahead, behind) {
                (false, false) => Causality::Equal,
                (true, false) => Causality::Dominates,
                (false, true) => Causality::DominatedBy,
                (true, true) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), want);
            let bumped = a.bumped(ShortId(peer)).unwrap();
            prop_assert_eq!(bumped.get(ShortId(peer)), a.max_counter() + 1);
            prop_assert_eq!(bumped.len(), ma.len() + usize::from(!ma.contains_key(&ShortId(peer))));
        }

        #[test]
        fn compare_is_symmetric_for_concurrency(a in arb_vv(), b in arb_vv()) {
            prop_assert_eq!(a.concurrent_with(&b), b.concurrent_with(&a));
        }
    }
}
