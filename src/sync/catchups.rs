//! Catch-ups served, each with its time, for `/metrics` and the console's charts.
//!
//! A catch-up's time runs from the moment the sync service took up the peer's `sync`
//! (or, when the peer never sent one, decided to reply anyway) until it was served:
//! - a full state: until the peer's SCTP acknowledged its last byte (the same moment
//!   the `full state delivered` log line gives as `acked_ms`, measured from the sync
//!   rather than from the start of sending);
//! - a delta: until its last part was handed to the link (a delta is not awaited).
//!
//! A full state whose link closed or stalled is not served, and not counted here
//! (`sync_full_stalled` counts the stalls).

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Catch-ups remembered one by one for the console; the counts and the histogram are
/// whole whatever the ring dropped.
pub const RECENT: usize = 1024;

/// One catch-up served.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catchup {
    /// 1, 2, ... in the order they were served.
    pub seq: u64,
    /// Unix ms when it was served.
    pub at: u64,
    pub peer: String,
    /// `full` or `delta`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// From the peer's sync to served, in ms (see the module's doc).
    pub ms: u64,
}

#[derive(Debug)]
pub struct Catchups {
    pub full: AtomicU64,
    pub delta: AtomicU64,
    /// The catch-ups' times, in seconds.
    pub seconds: Histogram,
    recent: Mutex<VecDeque<Catchup>>,
}

impl Default for Catchups {
    fn default() -> Self {
        Self {
            full: AtomicU64::new(0),
            delta: AtomicU64::new(0),
            // 1 ms to 33 s.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            recent: Mutex::new(VecDeque::with_capacity(64)),
        }
    }
}

impl Catchups {
    /// Records one catch-up served to `peer` (`full` or not), `took` after its sync.
    pub(super) fn served(&self, peer: &str, full: bool, took: Duration) {
        self.seconds.observe(took.as_secs_f64());
        // Counted under the ring's lock, so that `read_since` sees counts and ring alike.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let counter = if full { &self.full } else { &self.delta };
        counter.fetch_add(1, Ordering::Relaxed);
        let seq = recent.back().map_or(0, |c| c.seq) + 1;
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Catchup {
            seq,
            at: unix_ms(),
            peer: peer.to_owned(),
            kind: if full { "full" } else { "delta" },
            ms: took.as_millis() as u64,
        });
    }

    /// The last `n` catch-ups served, oldest first.
    pub fn last(&self, n: usize) -> Vec<Catchup> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .skip(recent.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The remembered catch-ups after `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<Catchup> {
        self.read_since(seq).2
    }

    /// Full states and deltas served so far, and the remembered catch-ups after `seq`,
    /// read at one moment: every catch-up counted is in the list unless it is older
    /// than `seq` or the ring dropped it.
    pub fn read_since(&self, seq: u64) -> (u64, u64, Vec<Catchup>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let newer = recent.iter().rev().take_while(|c| c.seq > seq).count();
        (
            self.full.load(Ordering::Relaxed),
            self.delta.load(Ordering::Relaxed),
            recent.iter().skip(recent.len() - newer).cloned().collect(),
        )
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_read_after_a_seq() {
        let c = Catchups::default();
        for i in 0..(RECENT as u64 + 10) {
            c.served("p", i % 2 == 0, Duration::from_millis(i));
        }
        assert_eq!(c.full.load(Ordering::Relaxed), RECENT as u64 / 2 + 5);
        assert_eq!(c.delta.load(Ordering::Relaxed), RECENT as u64 / 2 + 5);
        assert_eq!(c.since(0).len(), RECENT);
        assert_eq!(c.since(0)[0].seq, 11);
        let last = c.since(RECENT as u64 + 8);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].ms, RECENT as u64 + 9);
        assert!(c.since(RECENT as u64 + 10).is_empty());
        let tail = c.last(3);
        assert_eq!(
            tail.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [1032, 1033, 1034]
        );
        assert_eq!(tail[2].kind, "delta");
    }
}
