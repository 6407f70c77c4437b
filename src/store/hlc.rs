//! The hybrid logical clock of genosdb-data.md §5.
//!
//! `logical` never resets when `physical` advances: it is a Lamport counter shared
//! across the room. Comparison is physical first, then logical, with no tie-breaker.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Upserts whose physical time lies further than this in the future are capped (§5).
pub const MAX_DRIFT_MS: u64 = 7_200_000;

/// Largest integer a JavaScript number holds exactly; browsers cannot send more.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// One HLC timestamp, `{"physical": ms, "logical": n}` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub physical: u64,
    pub logical: u64,
}

impl Hlc {
    pub const fn new(physical: u64, logical: u64) -> Self {
        Self { physical, logical }
    }

    /// The drift cap of the upsert path: physical is clamped to `now + 2 h`, logical kept.
    pub fn capped(self, now_ms: u64) -> Self {
        let limit = now_ms.saturating_add(MAX_DRIFT_MS);
        if self.physical > limit {
            Self::new(limit, self.logical)
        } else {
            self
        }
    }

    /// Writes the wire form, `{"physical":…,"logical":…}`.
    pub fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{{\"physical\":{},\"logical\":{}}}",
            self.physical, self.logical
        );
    }

    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(48);
        self.write_json(&mut s);
        s
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        self.physical
            .cmp(&other.physical)
            .then(self.logical.cmp(&other.logical))
    }
}

/// The clock a peer keeps: `now()` for local writes, `update()` on every applied remote time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    physical: u64,
    logical: u64,
}

impl Clock {
    pub fn new(wall_ms: u64) -> Self {
        Self {
            physical: wall_ms,
            logical: 0,
        }
    }

    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        self.physical = self.physical.max(wall_ms);
        self.logical += 1;
        Hlc::new(self.physical, self.logical)
    }

    pub fn update(&mut self, remote: Hlc) {
        self.physical = self.physical.max(remote.physical);
        self.logical = self.logical.max(remote.logical).saturating_add(1);
    }

    pub fn peek(&self) -> Hlc {
        Hlc::new(self.physical, self.logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_dominates_logical() {
        assert!(Hlc::new(2, 0) > Hlc::new(1, 999_999));
        assert!(Hlc::new(1, 2) > Hlc::new(1, 1));
        assert_eq!(Hlc::new(1, 1).cmp(&Hlc::new(1, 1)), Ordering::Equal);
    }

    #[test]
    fn missing_timestamps_sort_first() {
        // JS compare(): a null timestamp is older than any real one.
        assert!(None < Some(Hlc::new(0, 0)));
    }

    #[test]
    fn drift_cap_keeps_logical() {
        let now = 1_795_592_353_095;
        let capped = Hlc::new(1_795_628_350_045, 7).capped(now);
        assert_eq!(capped, Hlc::new(now + MAX_DRIFT_MS, 7));
        assert_eq!(Hlc::new(now, 3).capped(now), Hlc::new(now, 3));
    }

    #[test]
    fn clock_logical_never_resets() {
        let mut c = Clock::new(100);
        assert_eq!(c.now(100), Hlc::new(100, 1));
        assert_eq!(c.now(200), Hlc::new(200, 2));
        c.update(Hlc::new(50, 10));
        assert_eq!(c.peek(), Hlc::new(200, 11));
        assert_eq!(c.now(150), Hlc::new(200, 12));
    }

    #[test]
    fn wire_form() {
        assert_eq!(
            Hlc::new(1_795_591_854_021, 1).to_json(),
            r#"{"physical":1795591854021,"logical":1}"#
        );
    }
}
