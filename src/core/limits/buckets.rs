//! A tenant's buckets in this process: requests per second with a burst and tokens per minute
//! (a minute's worth may be spent at once), as GCRA. They are the limits with the local store,
//! and the fallback with a shared one; with a shared store they also remember its last word.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::gcra::{BucketState, Gcra, Refusal};
use super::{Bucket, BucketParams, LimitSnapshot, SharedVerdict};
use crate::config::TenantLimits;

/// A tenant's buckets. A registry swap keeps them for a tenant whose limits did not change.
pub(crate) struct TenantBuckets {
    requests: Gcra,
    tokens: Gcra,
    shared: Mutex<SharedMemo>,
}

/// What this process last heard from the shared store about a tenant.
#[derive(Default)]
struct SharedMemo {
    /// The shared request bucket refused until then: no process can be admitted earlier, so
    /// requests before it are refused here without tokenizing or asking the store.
    refused_until: Option<Instant>,
    /// The buckets' state at the last decision, for requests that never reach the limits.
    last: Option<(Instant, LimitSnapshot)>,
}

/// Why a bucket refused: retry after this long, or never (`None`: more than it holds).
pub(crate) type Refused = (Bucket, Option<Duration>);

impl TenantBuckets {
    pub(crate) fn new(limits: &TenantLimits) -> Self {
        Self {
            requests: Gcra::new(limits.requests_per_second, Duration::from_secs(1), limits.burst),
            tokens: Gcra::new(limits.tokens_per_minute, Duration::from_secs(60), limits.tokens_per_minute),
            shared: Mutex::default(),
        }
    }

    /// The request and token buckets' parameters, as a shared store needs them.
    pub(crate) fn params(&self) -> (BucketParams, BucketParams) {
        let params = |g: &Gcra| BucketParams { interval: g.interval(), limit: g.limit() };
        (params(&self.requests), params(&self.tokens))
    }

    /// Refuses a request that cannot be admitted whatever its size: the request bucket is
    /// empty (here, or in the shared store as last heard, when `shared`). Takes nothing.
    pub(crate) fn refuse_early(&self, shared: bool, snapshot: &mut LimitSnapshot) -> Result<(), Refused> {
        if shared {
            let memo = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let Some(until) = memo.refused_until.filter(|&t| t > now) else { return Ok(()) };
            *snapshot = aged(memo.last, now).unwrap_or_default();
            return Err((Bucket::Requests, Some(until - now)));
        }
        match self.requests.would_refuse(1) {
            None => Ok(()),
            Some(refusal) => {
                snapshot.requests = Some(self.requests.peek());
                Err((Bucket::Requests, wait(refusal)))
            }
        }
    }

    /// Takes one request and `tokens` from this process's buckets, or nothing if either
    /// refuses; either way records both buckets' state.
    pub(crate) fn admit(&self, tokens: u64, snapshot: &mut LimitSnapshot) -> Result<(), Refused> {
        let (result, requests, token_state) = Gcra::take_both(&self.requests, 1, &self.tokens, tokens);
        *snapshot = LimitSnapshot { requests: Some(requests), tokens: Some(token_state) };
        result.map_err(|(is_requests, refusal)| {
            (if is_requests { Bucket::Requests } else { Bucket::Tokens }, wait(refusal))
        })
    }

    /// Applies a shared store's decision: records both buckets' state (and remembers it), and
    /// refuses as the store did.
    pub(crate) fn apply_shared(
        &self,
        verdict: SharedVerdict,
        snapshot: &mut LimitSnapshot,
    ) -> Result<(), Refused> {
        *snapshot = LimitSnapshot {
            requests: Some(self.requests.state_for_debt(verdict.requests_debt)),
            tokens: Some(self.tokens.state_for_debt(verdict.tokens_debt)),
        };
        let now = Instant::now();
        let mut memo = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        memo.last = Some((now, *snapshot));
        let Some(bucket) = verdict.refused else { return Ok(()) };
        if let (Bucket::Requests, Some(wait)) = (bucket, verdict.wait) {
            memo.refused_until = Some(now + wait);
        }
        Err((bucket, verdict.wait))
    }

    /// Fills in the buckets a request did not reach, without taking from them: this process's
    /// buckets, or the shared store's state as last heard (aged since).
    pub(crate) fn peek(&self, shared: bool, snapshot: &mut LimitSnapshot) {
        if shared {
            let memo = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = aged(memo.last, Instant::now()) {
                snapshot.requests = snapshot.requests.or(last.requests);
                snapshot.tokens = snapshot.tokens.or(last.tokens);
            }
            return;
        }
        snapshot.requests.get_or_insert_with(|| self.requests.peek());
        snapshot.tokens.get_or_insert_with(|| self.tokens.peek());
    }
}

fn wait(refusal: Refusal) -> Option<Duration> {
    match refusal {
        Refusal::RetryAfter(wait, _) => Some(wait),
        Refusal::Never(_) => None,
    }
}

/// A remembered state as it stands now: resets shortened by the time since, and what refilled
/// meanwhile added back.
fn aged(last: Option<(Instant, LimitSnapshot)>, now: Instant) -> Option<LimitSnapshot> {
    let (at, snapshot) = last?;
    let elapsed = now.saturating_duration_since(at);
    let age = |s: Option<BucketState>| {
        s.map(|s| {
            let reset = s.reset.saturating_sub(elapsed);
            let owed = s.limit - s.remaining;
            // Units owed refill evenly over the reset time.
            let refilled = if s.reset.is_zero() {
                owed
            } else {
                (owed as f64 * (1.0 - reset.as_secs_f64() / s.reset.as_secs_f64())) as u64
            };
            BucketState { limit: s.limit, remaining: (s.remaining + refilled).min(s.limit), reset }
        })
    };
    Some(LimitSnapshot { requests: age(snapshot.requests), tokens: age(snapshot.tokens) })
}
