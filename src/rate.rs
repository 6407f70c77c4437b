//! Pacing. A token bucket: `per_sec` sustained, `burst` at once, used wherever outside
//! input is rate-bounded (relay clients, relays we listen to, peers' messages and
//! bytes). The retry backoff of everything that reconnects (relays, Postgres). A log
//! limiter.

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

/// Capped exponential backoff: `base`, then doubling up to `max`; `reset` after a
/// success. With jitter each delay is spread ±25 %, so that many daemons restarted
/// together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            next: base,
            jitter: false,
        }
    }

    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay before the next try; the one after it is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter { jitter(d) } else { d }
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// ±25 %.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let unit = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    d.mul_f64(0.75 + unit * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(5));
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [s(1), s(2), s(4), s(5), s(5)]);
        b.reset();
        assert_eq!(b.next_delay(), s(1));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(4)).jittered();
        for _ in 0..100 {
            let j = b.next_delay();
            assert!(j >= Duration::from_secs(3) && j <= Duration::from_secs(5));
        }
    }

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
