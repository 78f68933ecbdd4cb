//! One bucket of a tenant's rate limits as GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp): `limit` units refill evenly over `period`, and up to `limit` may be taken at
//! once. Each decision also says what is left and when the bucket is full again, which is what
//! the `x-ratelimit-*` headers report. The same arithmetic runs wherever the state lives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket's state after a decision: what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Units the full bucket holds.
    pub limit: u64,
    /// Units that could be taken now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Why units were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not now: retry after this long.
    RetryAfter(Duration, BucketState),
    /// More units than the bucket holds: never.
    Never(BucketState),
}

/// One bucket: `limit` units, refilled at `limit` per `period` (or `rate` per `period`).
#[derive(Debug)]
pub(crate) struct Gcra {
    /// Time one unit takes to refill, in nanoseconds.
    interval: u64,
    limit: u64,
    /// The theoretical arrival time: when the bucket is full again, in ns since `epoch`.
    tat: Mutex<u64>,
    epoch: Instant,
}

impl Gcra {
    /// `rate` units refill per `period`, and at most `burst` are held.
    pub(crate) fn new(rate: u32, period: Duration, burst: u32) -> Self {
        let interval = (period.as_nanos() / u128::from(rate.max(1))).max(1) as u64;
        Self { interval, limit: u64::from(burst.max(1)), tat: Mutex::new(0), epoch: Instant::now() }
    }

    /// Time one unit takes to refill.
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// Units the full bucket holds.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The state of a bucket whose arrival time is `debt` ahead of now, wherever it is kept.
    pub(crate) fn state_for_debt(&self, debt: Duration) -> BucketState {
        self.state(debt.as_nanos() as u64, 0)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn state(&self, tat: u64, now: u64) -> BucketState {
        let debt = tat.saturating_sub(now);
        let capacity = self.interval * self.limit;
        BucketState {
            limit: self.limit,
            remaining: capacity.saturating_sub(debt) / self.interval,
            reset: Duration::from_nanos(debt),
        }
    }

    /// Takes `n` units, or says when (or that never) they could be taken.
    #[cfg(test)]
    fn take(&self, n: u64) -> Result<BucketState, Refusal> {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        let next = self.decide(*tat, now, n)?;
        *tat = next;
        Ok(self.state(next, now))
    }

    /// Takes `a_n` from `a` and `b_n` from `b`, or nothing from either: a request is admitted by
    /// all of its limits at once or refused by the first that says no (`Err(true)` for `a`).
    /// The state of both buckets comes back either way.
    pub(crate) fn take_both(
        a: &Gcra,
        a_n: u64,
        b: &Gcra,
        b_n: u64,
    ) -> (Result<(), (bool, Refusal)>, BucketState, BucketState) {
        // Always `a` before `b`: callers pass the buckets in one order (requests, tokens).
        let mut a_tat = a.tat.lock().unwrap_or_else(|e| e.into_inner());
        let mut b_tat = b.tat.lock().unwrap_or_else(|e| e.into_inner());
        let (a_now, b_now) = (a.now(), b.now());
        match Gcra::decide_both((a, *a_tat, a_now, a_n), (b, *b_tat, b_now, b_n)) {
            Ok((a_next, b_next)) => {
                *a_tat = a_next;
                *b_tat = b_next;
                (Ok(()), a.state(a_next, a_now), b.state(b_next, b_now))
            }
            Err(refusal) => (Err(refusal), a.state(*a_tat, a_now), b.state(*b_tat, b_now)),
        }
    }

    /// [`Gcra::take_both`]'s decision for each bucket at its arrival time `tat` and its `now`
    /// (`(bucket, tat, now, n)`): both new arrival times, or the first refusal (`true` for `a`).
    /// Takes no clock, so the shared store's script can be checked against it at chosen times.
    pub(crate) fn decide_both(
        (a, a_tat, a_now, a_n): (&Gcra, u64, u64, u64),
        (b, b_tat, b_now, b_n): (&Gcra, u64, u64, u64),
    ) -> Result<(u64, u64), (bool, Refusal)> {
        let a_next = a.decide(a_tat, a_now, a_n).map_err(|r| (true, r))?;
        let b_next = b.decide(b_tat, b_now, b_n).map_err(|r| (false, r))?;
        Ok((a_next, b_next))
    }

    /// The new arrival time if `n` units can be taken at `now` from a bucket at `tat`.
    fn decide(&self, tat: u64, now: u64, n: u64) -> Result<u64, Refusal> {
        if n > self.limit {
            return Err(Refusal::Never(self.state(tat, now)));
        }
        let next = tat.max(now) + n * self.interval;
        let capacity = self.interval * self.limit;
        if next - now > capacity {
            let wait = Duration::from_nanos(next - now - capacity);
            return Err(Refusal::RetryAfter(wait, self.state(tat, now)));
        }
        Ok(next)
    }

    /// Would `n` units be refused now? Takes nothing.
    pub(crate) fn would_refuse(&self, n: u64) -> Option<Refusal> {
        let tat = *self.tat.lock().unwrap_or_else(|e| e.into_inner());
        self.decide(tat, self.now(), n).err()
    }

    /// The state now, taking nothing.
    pub(crate) fn peek(&self) -> BucketState {
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
    fn two_buckets_take_all_or_nothing() {
        let requests = Gcra::new(10, Duration::from_secs(1), 10);
        let tokens = Gcra::new(100, Duration::from_secs(60), 100);
        let (ok, r, t) = Gcra::take_both(&requests, 1, &tokens, 60);
        assert!(ok.is_ok());
        assert_eq!((r.remaining, t.remaining), (9, 40));
        // The tokens refuse: the request is not taken either.
        let (refused, r, t) = Gcra::take_both(&requests, 1, &tokens, 60);
        assert!(matches!(refused, Err((false, Refusal::RetryAfter(..)))));
        assert_eq!((r.remaining, t.remaining), (9, 40));
        assert!(matches!(Gcra::take_both(&requests, 1, &tokens, 101).0, Err((false, Refusal::Never(_)))));
        assert_eq!(requests.peek().remaining, 9);
    }

    #[test]
    fn state_for_debt_matches_the_local_state() {
        let bucket = Gcra::new(5, Duration::from_secs(1), 5);
        bucket.take(2).unwrap();
        let here = bucket.peek();
        let there = bucket.state_for_debt(here.reset);
        assert_eq!((there.limit, there.remaining), (5, 3));
    }

    #[test]
    fn units_refill_evenly() {
        // 1 unit per ms: what has come back is the time passed, bounded by clock readings
        // taken around the take and the peek (a busy machine may sleep longer than asked).
        let bucket = Gcra::new(1000, Duration::from_secs(1), 10);
        let started = std::time::Instant::now();
        bucket.take(10).unwrap();
        let taken = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let before = std::time::Instant::now();
        let state = bucket.peek();
        let least = (before - taken).as_millis().min(10) as u64;
        let most = started.elapsed().as_micros().div_ceil(1000).min(10) as u64;
        assert!(least >= 5, "slept at least 5 ms");
        assert!((least..=most).contains(&state.remaining), "{state:?}, {least}..={most} ms passed");
    }
}
