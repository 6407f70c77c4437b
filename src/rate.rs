//! A token bucket: `per_sec` sustained, `burst` at once. Used wherever outside input
//! is rate-bounded (relay clients, relays we listen to, peers' messages and bytes).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_n(1.0)
    }

    /// Takes `n` tokens (bytes, say) if there are that many; otherwise takes none.
    pub fn take_n(&mut self, n: f64) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Lets one log line through per `every`, and counts the ones it held back.
#[derive(Debug, Clone)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogEvery {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused() {
        let mut b = TokenBucket::new(0.0, 3.0);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let mut log = LogEvery::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(log.allow(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn takes_many_at_once_or_none() {
        let mut b = TokenBucket::new(0.0, 100.0);
        assert!(b.take_n(60.0));
        assert!(!b.take_n(41.0), "only 40 are left");
        assert!(b.take_n(40.0));
        assert!(!b.take());
    }
}
