//! A bounded memory of peers, each with the time it was noted: what the sync service
//! remembers about peers across their links (owed a full state, known to hold the
//! whole graph). Entries expire after `ttl`; past `max` the oldest is forgotten. Both
//! bounds only ever make the service send a full state where a delta would have done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct PeerMemo {
    at: HashMap<String, Instant>,
    ttl: Duration,
    max: usize,
}

impl PeerMemo {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            at: HashMap::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// Notes `peer` at `now`, forgetting expired entries and, when full, the oldest.
    pub fn note(&mut self, peer: &str, now: Instant) {
        let ttl = self.ttl;
        self.at
            .retain(|_, at| now.saturating_duration_since(*at) < ttl);
        if !self.at.contains_key(peer)
            && self.at.len() >= self.max
            && let Some(oldest) = self
                .at
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| p.clone())
        {
            self.at.remove(&oldest);
        }
        self.at.insert(peer.to_owned(), now);
    }

    pub fn forget(&mut self, peer: &str) {
        self.at.remove(peer);
    }

    pub fn holds(&self, peer: &str, now: Instant) -> bool {
        self.at
            .get(peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_oldest_goes_first_when_full() {
        let t0 = Instant::now();
        let mut m = PeerMemo::new(Duration::from_secs(10), 2);
        m.note("a", t0);
        m.note("b", t0 + Duration::from_secs(1));
        m.note("c", t0 + Duration::from_secs(2));
        assert!(!m.holds("a", t0 + Duration::from_secs(2)));
        assert!(m.holds("b", t0 + Duration::from_secs(2)));
        assert!(m.holds("c", t0 + Duration::from_secs(2)));
        assert_eq!(m.len(), 2);
        // Noting a held peer again evicts nobody.
        m.note("c", t0 + Duration::from_secs(3));
        assert!(m.holds("b", t0 + Duration::from_secs(3)));
        assert!(!m.holds("b", t0 + Duration::from_secs(11)));
        m.forget("c");
        assert!(!m.holds("c", t0 + Duration::from_secs(3)));
    }
}
