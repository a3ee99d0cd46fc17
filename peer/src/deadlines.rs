//! [`Deadlines`]: keys waiting for a moment, kept ordered by that moment so
//! the next one is known without scanning (the tracker's expiry does the
//! same with its peer table). Pure: the clock is passed in, so a test needs
//! no waiting. Used for the scanner's re-checks and the engine's parked
//! paths.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Keys with one deadline each (see the module docs).
#[derive(Debug)]
pub(crate) struct Deadlines<K, I> {
    by_time: BTreeSet<(I, K)>,
    by_key: HashMap<K, I>,
}

impl<K, I> Default for Deadlines<K, I> {
    fn default() -> Self {
        Deadlines { by_time: BTreeSet::new(), by_key: HashMap::new() }
    }
}

impl<K: Ord + Hash + Clone, I: Ord + Copy> Deadlines<K, I> {
    /// Sets `key`'s deadline to `at` (replacing an earlier one).
    pub(crate) fn insert(&mut self, key: K, at: I) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    /// Sets `key`'s deadline to `at` unless it already has one.
    pub(crate) fn insert_if_absent(&mut self, key: K, at: I) {
        if !self.by_key.contains_key(&key) {
            self.insert(key, at);
        }
    }

    /// Forgets `key`; returns whether it was waiting.
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        match self.by_key.remove(key) {
            Some(at) => self.by_time.remove(&(at, key.clone())),
            None => false,
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<I> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns every key whose deadline is at or before `now`,
    /// earliest first.
    pub(crate) fn take_due(&mut self, now: I) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first()
            && *at <= now
        {
            let Some((_, key)) = self.by_time.pop_first() else { break };
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_come_out_in_order_and_replacing_moves_a_key() {
        let mut d: Deadlines<&str, u32> = Deadlines::default();
        d.insert("b", 20);
        d.insert("a", 10);
        d.insert("c", 30);
        assert_eq!(d.next(), Some(10));
        d.insert("a", 25);
        d.insert_if_absent("b", 1);
        assert_eq!(d.next(), Some(20));
        assert_eq!(d.take_due(25), ["b", "a"]);
        assert!(d.remove(&"c"));
        assert!(!d.remove(&"c"));
        assert_eq!(d.next(), None);
        assert!(d.take_due(100).is_empty());
    }
}
