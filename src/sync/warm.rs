//! Writes the full state ahead of the next catch-up. Writing and compressing it is most of
//! what a fresh peer waits for once its link is up (66–182 ms at 10k nodes, 1.3 s at
//! 100k), and it was paid by the first reader after every change. Once the graph has
//! stood still for a while, it is written here instead, into the same per-version cache
//! the outboxes use, so the next reader is served at once. A reader that comes while it
//! is written waits for it, as it would for another reader's.
//!
//! The wait grows with what a write costs (ten times the last one, at least
//! [`WARM_AFTER`]), so a graph that changes all the time costs at most about a tenth of
//! a core here, and one that never changes costs one write per change.

use super::outbox::full_cache;
use super::shared::{Shared, bump};
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How long the graph must stand still before its full state is written ahead.
pub(super) const WARM_AFTER: Duration = Duration::from_secs(1);

/// How often the store's version is looked at.
const TICK: Duration = Duration::from_millis(250);

/// The decision, apart from the store and the clock.
#[derive(Debug)]
pub(super) struct Warmer {
    /// The store version last seen, and since when it has not changed.
    seen: Option<(u64, Instant)>,
    /// How long the last write ahead took.
    last_build: Duration,
}

impl Warmer {
    pub(super) fn new() -> Self {
        Self {
            seen: None,
            last_build: Duration::ZERO,
        }
    }

    /// Whether to write the full state now: the store is at `version` at `now`, and the
    /// cache holds `cached` (the version it was written at, if any).
    pub(super) fn due(&mut self, version: u64, cached: Option<u64>, now: Instant) -> bool {
        let since = match self.seen {
            Some((v, since)) if v == version => since,
            _ => {
                self.seen = Some((version, now));
                return false;
            }
        };
        cached != Some(version)
            && now.saturating_duration_since(since) >= WARM_AFTER.max(self.last_build * 10)
    }

    pub(super) fn built(&mut self, took: Duration) {
        self.last_build = took;
    }
}

/// Runs until the sync layer is gone (`shared` is only held weakly).
pub(super) async fn run(shared: Weak<Shared>) {
    let mut warmer = Warmer::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.cfg.sm.signer.is_some() {
            // Signed messages are signed afresh for each peer: nothing to cache.
            return;
        }
        // A cache being written right now (by a reader) is left alone.
        let cached = match shared.full_cache.try_lock() {
            Ok(cache) => cache.version(),
            Err(_) => continue,
        };
        let version = shared.store().version();
        if !warmer.due(version, cached, Instant::now()) {
            continue;
        }
        let started = Instant::now();
        if full_cache(&shared).await.is_some() {
            bump(&shared.stats.full_prebuilt, 1);
        }
        let took = started.elapsed();
        warmer.built(took);
        tracing::debug!(
            version,
            took_ms = took.as_millis() as u64,
            "full state written ahead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_the_graph_has_stood_still() {
        let t0 = Instant::now();
        let mut w = Warmer::new();
        assert!(
            !w.due(5, None, t0),
            "first sight of a version starts its wait"
        );
        assert!(!w.due(5, None, t0 + WARM_AFTER / 2));
        assert!(w.due(5, None, t0 + WARM_AFTER));
        // Already cached at this version (written ahead, or by a reader): nothing to do.
        assert!(!w.due(5, Some(5), t0 + WARM_AFTER * 3));
        // A change starts the wait again.
        assert!(!w.due(6, Some(5), t0 + WARM_AFTER * 3));
        assert!(!w.due(6, Some(5), t0 + WARM_AFTER * 3 + WARM_AFTER / 2));
        assert!(w.due(6, Some(5), t0 + WARM_AFTER * 4));
    }

    #[test]
    fn the_wait_grows_with_what_a_write_costs() {
        let t0 = Instant::now();
        let mut w = Warmer::new();
        w.built(Duration::from_millis(300));
        assert!(!w.due(1, None, t0));
        assert!(!w.due(1, None, t0 + Duration::from_millis(2_900)));
        assert!(w.due(1, None, t0 + Duration::from_millis(3_000)));
    }

    #[test]
    fn a_graph_that_keeps_changing_is_never_written_ahead() {
        let t0 = Instant::now();
        let mut w = Warmer::new();
        for i in 0..20u64 {
            let at = t0 + WARM_AFTER / 2 * i as u32;
            assert!(!w.due(i, None, at), "version {i}");
        }
    }
}
