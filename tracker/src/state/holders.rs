//! [`HolderSet`]: the slots of the online peers that hold one entry's
//! record, in the fewest bytes per entry.
//!
//! There is one set per entry, so its size is a per-record cost of the
//! tracker. A cluster with up to 64 online peers (slots are reused, so the
//! slots in use stay below the number online) keeps the set as a 64-bit
//! map inside the entry: 16 bytes and no allocation, whether one peer or
//! all of them hold the record. Past slot 63, two more forms fit in those
//! 16 bytes:
//! - a set of every slot from 0 up but at most [`EXCEPT`] (every online
//!   peer of a big cluster holds the record, the usual state once it has
//!   synced, but for a few that have not yet or whose slots were just
//!   freed): that count and those few;
//! - at most [`FEW`] slots, whichever they are (a new file in a big
//!   cluster, held by its author and the first few peers that fetched it):
//!   the slots themselves.
//!
//! Any other set moves to the heap, as a sorted list of slots (2 bytes per
//! holder) or a bitmap over the slots (1 bit per online peer), whichever
//! is smaller. Every change picks again, so a set whose slots all fall
//! below 64, that fills up to a prefix or that shrinks to a few goes back
//! inside: one peer leaving a 1,000-peer cluster does not turn every
//! entry's set into a 125-byte bitmap.
//!
//! Not here: what a slot is, or who gets one (`state`'s `Slots`).

/// The slots holding one record; iterated in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HolderSet {
    /// Slots 0..64, bit `s` for slot `s`.
    Small(u64),
    /// The slots `0..n` but the ones in `except` (at most [`EXCEPT`],
    /// ascending, [`UNUSED`] after them), for an `n` above 64.
    Prefix { n: u16, except: [u16; EXCEPT] },
    /// One to [`FEW`] slots, ascending, [`UNUSED`] after them; the last
    /// is 64 or more.
    Few([u16; FEW]),
    /// Some slot is 64 or more.
    Wide(Box<Wide>),
}

/// The heap forms of a [`HolderSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wide {
    /// Sorted slots, no duplicates.
    List(Box<[u16]>),
    /// Bit `s % 64` of word `s / 64` for slot `s`; the last word is not 0.
    Map(Box<[u64]>),
}

/// Slots a prefix set may lack: as many as fit beside its count in the
/// 15 bytes after the enum's tag (the set stays 16 bytes; tested).
const EXCEPT: usize = 6;

/// Slots a [`HolderSet::Few`] holds: as many as fit in those 15 bytes.
const FEW: usize = 7;

/// An unused place of `HolderSet::Prefix::except` (no slot is `u16::MAX`).
const UNUSED: u16 = u16::MAX;

/// The used places of `slots` (`Prefix::except` or `Few`): those before
/// the first [`UNUSED`].
fn used(slots: &[u16]) -> &[u16] {
    &slots[..slots.iter().position(|s| *s == UNUSED).unwrap_or(slots.len())]
}

impl Default for HolderSet {
    fn default() -> Self {
        HolderSet::Small(0)
    }
}

impl HolderSet {
    /// The set holding `slot` only, or nothing.
    pub fn of(slot: Option<u16>) -> Self {
        let mut set = HolderSet::default();
        if let Some(slot) = slot {
            set.insert(slot);
        }
        set
    }

    /// How many slots.
    pub fn len(&self) -> usize {
        match self {
            HolderSet::Small(bits) => bits.count_ones() as usize,
            HolderSet::Prefix { n, except } => usize::from(*n) - used(except).len(),
            HolderSet::Few(slots) => used(slots).len(),
            HolderSet::Wide(wide) => match &**wide {
                Wide::List(list) => list.len(),
                Wide::Map(words) => words.iter().map(|w| w.count_ones() as usize).sum(),
            },
        }
    }

    /// True when no slot is in it.
    pub fn is_empty(&self) -> bool {
        matches!(self, HolderSet::Small(0))
    }

    /// True when `slot` is in it.
    pub fn contains(&self, slot: u16) -> bool {
        match self {
            HolderSet::Small(bits) => slot < 64 && bits & (1 << slot) != 0,
            HolderSet::Prefix { n, except } => slot < *n && !except.contains(&slot),
            HolderSet::Few(slots) => used(slots).contains(&slot),
            HolderSet::Wide(wide) => match &**wide {
                Wide::List(list) => list.binary_search(&slot).is_ok(),
                Wide::Map(words) => words.get(usize::from(slot / 64)).is_some_and(|w| w & (1 << (slot % 64)) != 0),
            },
        }
    }

    /// The slots, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        let (list, words): (&[u16], &[u64]) = match self {
            HolderSet::Small(bits) => (&[], std::slice::from_ref(bits)),
            HolderSet::Prefix { .. } => (&[], &[]),
            HolderSet::Few(slots) => (used(slots), &[]),
            HolderSet::Wide(wide) => match &**wide {
                Wide::List(list) => (list, &[]),
                Wide::Map(words) => (&[], words),
            },
        };
        let mapped = words.iter().enumerate().flat_map(|(i, &word)| {
            // At most 1,024 words (65,536 slots / 64): the base fits.
            let base = u16::try_from(i * 64).unwrap_or(u16::MAX);
            bits_of(word).map(move |bit| base + bit)
        });
        let (n, except) = match self {
            HolderSet::Prefix { n, except } => (*n, *except),
            _ => (0, [UNUSED; EXCEPT]),
        };
        let prefix = (0..n).filter(move |s| !except.contains(s));
        prefix.chain(list.iter().copied()).chain(mapped)
    }

    /// Adds `slot`; false if it was in already.
    pub fn insert(&mut self, slot: u16) -> bool {
        if self.contains(slot) {
            return false;
        }
        if let HolderSet::Small(bits) = self
            && slot < 64
        {
            *bits |= 1 << slot;
            return true;
        }
        if let HolderSet::Prefix { n, except } = self {
            if slot == *n {
                *n += 1;
                return true;
            }
            if let Some(at) = except.iter().position(|s| *s == slot) {
                except.copy_within(at + 1.., at);
                except[EXCEPT - 1] = UNUSED;
                return true;
            }
        }
        // A bitmap that covers the slot stays the smaller form with one
        // more holder: set the bit in place (every peer of a big cluster
        // announcing what it holds lands here).
        if let HolderSet::Wide(wide) = self
            && let Wide::Map(words) = &mut **wide
            && let Some(word) = words.get_mut(usize::from(slot / 64))
        {
            *word |= 1 << (slot % 64);
            if let Some(prefix) = as_prefix(words) {
                *self = prefix;
            }
            return true;
        }
        let mut slots: Vec<u16> = self.iter().collect();
        let at = slots.partition_point(|s| *s < slot);
        slots.insert(at, slot);
        *self = HolderSet::from_sorted(&slots);
        true
    }

    /// Keeps the slots for which `keep` is true; true if any went.
    pub fn retain(&mut self, mut keep: impl FnMut(u16) -> bool) -> bool {
        if let HolderSet::Small(bits) = self {
            let before = *bits;
            for bit in bits_of(before) {
                if !keep(bit) {
                    *bits &= !(1 << bit);
                }
            }
            return *bits != before;
        }
        let before: Vec<u16> = self.iter().collect();
        let after: Vec<u16> = before.iter().copied().filter(|s| keep(*s)).collect();
        if after.len() == before.len() {
            return false;
        }
        *self = HolderSet::from_sorted(&after);
        true
    }

    /// The smallest form of the sorted, distinct `slots`.
    fn from_sorted(slots: &[u16]) -> Self {
        let Some(&max) = slots.last() else {
            return HolderSet::default();
        };
        if max < 64 {
            return HolderSet::Small(slots.iter().fold(0, |bits, s| bits | 1 << s));
        }
        // Sorted and distinct: 0..=max but `max + 1 - len` slots.
        if usize::from(max) + 1 - slots.len() <= EXCEPT {
            let mut except = [UNUSED; EXCEPT];
            let mut missing = 0;
            let mut expected = 0;
            for &s in slots {
                while expected < s {
                    except[missing] = expected;
                    missing += 1;
                    expected += 1;
                }
                expected = s + 1;
            }
            return HolderSet::Prefix { n: max + 1, except };
        }
        if slots.len() <= FEW {
            let mut few = [UNUSED; FEW];
            few[..slots.len()].copy_from_slice(slots);
            return HolderSet::Few(few);
        }
        let words = usize::from(max / 64) + 1;
        if slots.len() * 2 <= words * 8 {
            return HolderSet::Wide(Box::new(Wide::List(slots.into())));
        }
        let mut map = vec![0u64; words];
        for s in slots {
            map[usize::from(s / 64)] |= 1 << (s % 64);
        }
        HolderSet::Wide(Box::new(Wide::Map(map.into())))
    }
}

/// The prefix form of `words` (a bitmap whose last word is not 0) when
/// it lacks at most [`EXCEPT`] slots below its highest.
fn as_prefix(words: &[u64]) -> Option<HolderSet> {
    let &last = words.last()?;
    let n = (words.len() - 1) * 64 + (64 - last.leading_zeros() as usize);
    let held: usize = words.iter().map(|w| w.count_ones() as usize).sum();
    if n - held > EXCEPT {
        return None;
    }
    let mut except = [UNUSED; EXCEPT];
    let mut missing = 0;
    for (i, &word) in words.iter().enumerate() {
        // The bits above the highest slot are not missing.
        let valid = if i + 1 == words.len() { u64::MAX >> last.leading_zeros() } else { u64::MAX };
        for bit in bits_of(!word & valid) {
            except[missing] = u16::try_from(i * 64).ok()? + bit;
            missing += 1;
        }
    }
    Some(HolderSet::Prefix { n: u16::try_from(n).ok()?, except })
}

/// The set bits of `word`, ascending.
fn bits_of(mut word: u64) -> impl Iterator<Item = u16> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let bit = word.trailing_zeros();
        word &= word - 1;
        u16::try_from(bit).ok()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The set and a `BTreeSet` model agree on everything.
    fn check(set: &HolderSet, model: &BTreeSet<u16>) {
        assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
        assert_eq!(set.len(), model.len());
        assert_eq!(set.is_empty(), model.is_empty());
        for s in [0, 1, 63, 64, 65, 127, 128, 999, 1000, u16::MAX - 1] {
            assert_eq!(set.contains(s), model.contains(&s), "slot {s}");
        }
        assert_eq!(
            set,
            &HolderSet::from_sorted(&model.iter().copied().collect::<Vec<_>>()),
            "not in its smallest form"
        );
    }

    #[test]
    fn a_small_cluster_stays_inside_the_entry() {
        assert_eq!(std::mem::size_of::<HolderSet>(), 16);
        let mut set = HolderSet::default();
        for s in 0..64 {
            assert!(set.insert(s));
        }
        assert!(!set.insert(5), "in already");
        assert!(matches!(set, HolderSet::Small(u64::MAX)));
        assert_eq!(set.len(), 64);
        assert!(set.retain(|s| s % 2 == 0));
        assert_eq!(set.iter().collect::<Vec<_>>(), (0..64).step_by(2).collect::<Vec<_>>());
        assert!(!set.retain(|_| true), "nothing went");
    }

    #[test]
    fn a_few_holders_of_a_big_cluster_stay_inside_the_entry() {
        // A new file in a 1,000-peer cluster: its author, then the first
        // peers that fetched it, in any slots.
        let mut set = HolderSet::default();
        let mut model = BTreeSet::new();
        for s in [700, 3, 999, 64, 500, 65, 1] {
            assert!(set.insert(s));
            model.insert(s);
            check(&set, &model);
            assert!(matches!(set, HolderSet::Few(_)), "{set:?}");
        }
        assert!(set.insert(200), "an eighth holder");
        assert!(matches!(&set, HolderSet::Wide(w) if matches!(**w, Wide::List(_))), "{set:?}");
        assert!(set.retain(|s| s != 64));
        assert!(matches!(set, HolderSet::Few(_)), "back inside with seven: {set:?}");
        assert_eq!(set.iter().collect::<Vec<_>>(), [1, 3, 65, 200, 500, 700, 999]);
        assert!(set.retain(|s| s < 64));
        assert_eq!(set, HolderSet::Small(1 << 1 | 1 << 3));
    }

    #[test]
    fn a_wide_set_takes_the_smaller_of_a_list_and_a_map() {
        let few: Vec<u16> = (0..8).map(|i| i * 120 + 3).collect();
        let few = HolderSet::from_sorted(&few);
        assert!(matches!(&few, HolderSet::Wide(w) if matches!(**w, Wide::List(_))), "{few:?}");
        let many: Vec<u16> = (0..1000).filter(|s| s % 3 != 0).collect();
        let many = HolderSet::from_sorted(&many);
        assert!(matches!(&many, HolderSet::Wide(w) if matches!(&**w, Wide::Map(m) if m.len() == 16)), "{many:?}");
        let mut back = HolderSet::from_sorted(&[3, 700]);
        assert!(back.retain(|s| s < 64));
        assert_eq!(back, HolderSet::Small(1 << 3), "back inside once every slot is below 64");
    }

    #[test]
    fn every_online_peer_of_a_big_cluster_holding_it_is_a_count_inside_the_entry() {
        // Slots announced in any order: the set ends as 0..1000, whatever
        // form it passed through.
        let mut set = HolderSet::default();
        let mut model = BTreeSet::new();
        for s in (0..1000u16).rev().step_by(2).chain((0..1000u16).step_by(2)) {
            set.insert(s);
            model.insert(s);
            check(&set, &model);
        }
        assert_eq!(set, HolderSet::Prefix { n: 1000, except: [UNUSED; EXCEPT] });
        assert!(set.insert(1000), "the next slot extends it");
        assert_eq!(set.len(), 1001);
        // Peers leaving: up to six gaps stay inside the entry.
        let gaps = [500, 7, 900, 64, 1, 650];
        for (i, gone) in gaps.into_iter().enumerate() {
            assert!(set.retain(|s| s != gone), "peer in slot {gone} gone");
            assert!(matches!(set, HolderSet::Prefix { .. }), "{set:?}");
            assert_eq!(set.len(), 1000 - i);
            assert!(!set.contains(gone));
        }
        assert_eq!(set, HolderSet::Prefix { n: 1001, except: [1, 7, 64, 500, 650, 900] });
        assert!(set.retain(|s| s != 3), "a seventh gap");
        assert!(matches!(&set, HolderSet::Wide(w) if matches!(**w, Wide::Map(_))), "{set:?}");
        for back in [3, 500, 7, 900, 64, 1, 650] {
            assert!(set.insert(back), "a peer in the freed slot {back} announced it");
        }
        assert_eq!(set, HolderSet::Prefix { n: 1001, except: [UNUSED; EXCEPT] });
        assert!(set.retain(|s| s < 30));
        assert_eq!(set, HolderSet::Small((1 << 30) - 1));
    }

    #[test]
    fn every_operation_agrees_with_a_plain_set() {
        // A fixed pseudo-random walk over inserts and removals that crosses
        // every form (small, list, map) both ways.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut set = HolderSet::default();
        let mut model = BTreeSet::new();
        for step in 0..20_000 {
            let roll = next();
            let range = match (step / 2_000) % 3 {
                0 => 64,
                1 => 200,
                _ => 1_200,
            };
            let slot = u16::try_from(roll % range).unwrap();
            if roll % 5 < 3 {
                assert_eq!(set.insert(slot), model.insert(slot), "insert {slot}");
            } else {
                let cut = u16::try_from(next() % range).unwrap();
                let went = set.retain(|s| s != slot && s < cut.max(32));
                let before = model.len();
                model.retain(|s| *s != slot && *s < cut.max(32));
                assert_eq!(went, model.len() != before, "retain");
            }
            check(&set, &model);
        }
    }
}
