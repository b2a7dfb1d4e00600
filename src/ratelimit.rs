//! Token buckets per key (agent, or agent + tool) in a `DashMap`. Exact per process; with
//! `state.backend: redis` the buckets live in Redis and these serve as an exact local
//! pre-check (see `crate::state::State::take`).

use std::time::Instant;

use dashmap::DashMap;

/// A bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets beyond which idle (full) ones are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: DashMap<String, Bucket>,
}

impl RateLimiter {
    /// Take one token from `key`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Result<(), u64> {
        if self.buckets.len() > SWEEP_AT {
            self.sweep(rate, now);
        }
        let mut b = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / rate.per_second;
        Err(wait.ceil().max(1.0) as u64)
    }

    /// Give back a token taken by `check` (the shared bucket refused or failed).
    pub fn refund(&self, key: &str, rate: Rate) {
        if let Some(mut b) = self.buckets.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(rate.burst);
        }
    }

    /// Forget buckets that would be full again (idle keys).
    fn sweep(&self, rate: Rate, now: Instant) {
        self.buckets.retain(|_, b| {
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate.per_second;
            b.tokens + refill < rate.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Rate, RateLimiter};

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("a", rate, t0), Ok(()));
        }
        assert_eq!(l.check("a", rate, t0), Err(1));
        // other keys have their own bucket
        assert_eq!(l.check("b", rate, t0), Ok(()));
        // half a second later one token is back
        assert_eq!(l.check("a", rate, t0 + Duration::from_millis(500)), Ok(()));
        assert!(l.check("a", rate, t0 + Duration::from_millis(500)).is_err());
    }
}
