//! [`Authors`]: the peers that author entries of the table, each named in
//! an entry by a 4-byte [`AuthorRef`] instead of its 16-byte id, with how
//! many entries it authors (the per-peer quota counts these).
//!
//! A reference is freed when its peer authors nothing any more and is
//! reused by the next new author.
//!
//! Not here: the quota rule (`state`).

use std::collections::HashMap;

use dartsync_shared::PeerId;

/// An author, as an entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AuthorRef(u32);

/// The authors (see the module header).
#[derive(Debug, Default)]
pub(super) struct Authors {
    /// Reference -> the peer and how many entries it authors (0: free).
    refs: Vec<(PeerId, usize)>,
    by_peer: HashMap<PeerId, AuthorRef>,
    /// Free references, reused first.
    free: Vec<u32>,
}

impl Authors {
    /// Counts one more entry authored by `peer`; its reference.
    pub fn add(&mut self, peer: PeerId) -> AuthorRef {
        if let Some(&author) = self.by_peer.get(&peer) {
            self.refs[author.0 as usize].1 += 1;
            return author;
        }
        let author = match self.free.pop() {
            Some(free) => {
                self.refs[free as usize] = (peer, 1);
                AuthorRef(free)
            }
            None => {
                self.refs.push((peer, 1));
                AuthorRef(u32::try_from(self.refs.len() - 1).expect("fewer than 2^32 authors (max_records)"))
            }
        };
        self.by_peer.insert(peer, author);
        author
    }

    /// Counts one entry authored by `author` less (the entry is gone or has
    /// another author now).
    pub fn sub(&mut self, author: AuthorRef) {
        let (peer, count) = &mut self.refs[author.0 as usize];
        *count -= 1;
        if *count == 0 {
            self.by_peer.remove(peer);
            self.free.push(author.0);
        }
    }

    /// The peer `author` stands for.
    pub fn peer(&self, author: AuthorRef) -> PeerId {
        self.refs[author.0 as usize].0
    }

    /// Entries `peer` authors.
    pub fn count(&self, peer: PeerId) -> usize {
        self.by_peer.get(&peer).map_or(0, |author| self.refs[author.0 as usize].1)
    }

    /// Entries per author, for the authors of at least one (tests).
    #[cfg(test)]
    pub fn counts(&self) -> HashMap<PeerId, usize> {
        self.by_peer.iter().map(|(peer, author)| (*peer, self.refs[author.0 as usize].1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_per_author_and_reuses_a_reference_once_its_peer_authors_nothing() {
        let (a, b, c) = (PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16]));
        let mut authors = Authors::default();
        let ra = authors.add(a);
        assert_eq!(authors.add(a), ra);
        let rb = authors.add(b);
        assert_ne!(ra, rb);
        assert_eq!((authors.count(a), authors.count(b), authors.count(c)), (2, 1, 0));
        authors.sub(ra);
        assert_eq!(authors.count(a), 1);
        authors.sub(ra);
        assert_eq!(authors.count(a), 0);
        assert!(!authors.counts().contains_key(&a));
        let rc = authors.add(c);
        assert_eq!(rc, ra, "the freed reference is reused");
        assert_eq!((authors.peer(rc), authors.peer(rb)), (c, b));
    }
}
