//! A tenant's rate limits as GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp): `limit` units refill evenly over `period`, and up to `limit` may be taken at
//! once. Each decision also says what is left and when the bucket is full again, which is what
//! the `x-ratelimit-*` headers report. The same arithmetic runs wherever the state lives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's state after a decision, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// Units the full bucket holds.
    pub limit: u64,
    /// Units that could be taken now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Why units were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not now: retry after this long.
    RetryAfter(Duration, LimitState),
    /// More units than the bucket holds: never.
    Never(LimitState),
}

/// One bucket: `limit` units, refilled at `limit` per `period` (or `rate` per `period`).
#[derive(Debug)]
pub struct Gcra {
    /// Time one unit takes to refill, in nanoseconds.
    interval: u64,
    limit: u64,
    /// The theoretical arrival time: when the bucket is full again, in ns since `epoch`.
    tat: Mutex<u64>,
    epoch: Instant,
}

impl Gcra {
    /// `rate` units refill per `period`, and at most `burst` are held.
    pub fn new(rate: u32, period: Duration, burst: u32) -> Self {
        let interval = (period.as_nanos() / u128::from(rate.max(1))).max(1) as u64;
        Self { interval, limit: u64::from(burst.max(1)), tat: Mutex::new(0), epoch: Instant::now() }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn state(&self, tat: u64, now: u64) -> LimitState {
        let debt = tat.saturating_sub(now);
        let capacity = self.interval * self.limit;
        LimitState {
            limit: self.limit,
            remaining: capacity.saturating_sub(debt) / self.interval,
            reset: Duration::from_nanos(debt),
        }
    }

    /// Takes `n` units, or says when (or that never) they could be taken.
    pub fn take(&self, n: u64) -> Result<LimitState, Refusal> {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        if n > self.limit {
            return Err(Refusal::Never(self.state(*tat, now)));
        }
        let next = (*tat).max(now) + n * self.interval;
        let capacity = self.interval * self.limit;
        if next - now > capacity {
            let wait = Duration::from_nanos(next - now - capacity);
            return Err(Refusal::RetryAfter(wait, self.state(*tat, now)));
        }
        *tat = next;
        Ok(self.state(next, now))
    }

    /// The state now, taking nothing.
    pub fn peek(&self) -> LimitState {
        let tat = *self.tat.lock().unwrap_or_else(|e| e.into_inner());
        self.state(tat, self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_served_then_refused_with_the_time_to_wait() {
        let bucket = Gcra::new(5, Duration::from_secs(1), 5);
        for left in (0..5).rev() {
            assert_eq!(bucket.take(1).unwrap().remaining, left);
        }
        let Err(Refusal::RetryAfter(wait, state)) = bucket.take(1) else { panic!("the sixth passed") };
        assert!(wait <= Duration::from_millis(200) && wait > Duration::from_millis(150), "{wait:?}");
        assert_eq!(state.remaining, 0);
        assert!(state.reset <= Duration::from_secs(1) && state.reset > Duration::from_millis(900));
        assert_eq!(bucket.peek().limit, 5);
    }

    #[test]
    fn more_than_the_bucket_holds_is_never_allowed_and_takes_nothing() {
        let bucket = Gcra::new(20, Duration::from_secs(60), 20);
        assert!(matches!(bucket.take(21), Err(Refusal::Never(_))));
        assert_eq!(bucket.take(20).unwrap().remaining, 0);
    }

    #[test]
    fn units_refill_evenly() {
        let bucket = Gcra::new(1000, Duration::from_secs(1), 10);
        bucket.take(10).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let state = bucket.peek();
        assert!((4..=6).contains(&state.remaining), "{state:?}");
    }
}
