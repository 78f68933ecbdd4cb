//! Tenants: who a key belongs to, which models that tenant may use and under what names, and
//! its limits. The registry is swapped whole on configuration reload; a tenant whose limits did
//! not change keeps its rate-limiter state across the swap. A tenant's `max_inputs` is capped
//! by the running server's `max_inputs`, which, like all of `[server]`, changes on restart only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Limits, Settings, parse_key_hash, private_model_id};
use crate::limits::{Gcra, LimitState, Refusal};

/// A request refused by its tenant's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Over requests per second or tokens per minute; waiting `retry_after` seconds helps.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64, limit: Bucket },
    /// More tokens than a whole minute's budget: waiting never helps.
    #[error("{0}")]
    OverBudget(String),
}

impl LimitError {
    /// The limit that refused.
    pub fn limit(&self) -> Bucket {
        match self {
            LimitError::RateLimited { limit, .. } => *limit,
            LimitError::OverBudget(_) => Bucket::Tokens,
        }
    }
}

/// The tenant's two buckets after a request, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    pub requests: Option<LimitState>,
    pub tokens: Option<LimitState>,
}

/// A tenant as requests see it.
pub struct Tenant {
    pub id: String,
    /// Name the tenant uses → cache model id.
    models: BTreeMap<String, String>,
    default_model: String,
    limits: Limits,
    limiter: Arc<Limiter>,
}

/// A tenant's rate limits: requests per second with a burst, tokens per minute (a minute's
/// worth may be spent at once). The buckets are the process's own: the limits with the local
/// store, the fallback with a shared one. `shared` remembers the shared store's last word.
struct Limiter {
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
    last: Option<(Instant, LimitHeaders)>,
}

impl Limiter {
    fn new(limits: &Limits) -> Self {
        Self {
            requests: Gcra::new(limits.requests_per_second, Duration::from_secs(1), limits.burst),
            tokens: Gcra::new(limits.tokens_per_minute, Duration::from_secs(60), limits.tokens_per_minute),
            shared: Mutex::default(),
        }
    }
}

/// A shared store's decision on one request, as the time the buckets owe (their theoretical
/// arrival time less now) after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedVerdict {
    pub refused: Option<Bucket>,
    /// With `refused`: how long until the request would fit; `None`: it never fits.
    pub wait: Option<Duration>,
    pub requests_debt: Duration,
    pub tokens_debt: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Requests,
    Tokens,
}

/// A bucket's parameters, as a shared store needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketParams {
    pub interval: Duration,
    pub limit: u64,
}

impl Tenant {
    /// The model a request names (or the tenant's default), as `(name, cache id)`. A model the
    /// tenant may not use is "not found", exactly like one that does not exist.
    /// `Err` carries the name asked for.
    pub fn resolve<'a>(&'a self, requested: Option<&'a str>) -> Result<(&'a str, &'a str), &'a str> {
        let name = requested.unwrap_or(&self.default_model);
        self.models.get_key_value(name).map(|(name, id)| (name.as_str(), id.as_str())).ok_or(name)
    }

    /// The models this tenant may use: `(name, cache id)`.
    pub fn models(&self) -> impl Iterator<Item = (&str, &str)> {
        self.models.iter().map(|(name, id)| (name.as_str(), id.as_str()))
    }

    pub fn max_inputs(&self) -> usize {
        self.limits.max_inputs
    }

    /// The request and token buckets' parameters.
    pub fn bucket_params(&self) -> (BucketParams, BucketParams) {
        let params = |g: &Gcra| BucketParams { interval: g.interval(), limit: g.limit() };
        (params(&self.limiter.requests), params(&self.limiter.tokens))
    }

    /// Refuses a request that cannot be admitted whatever its size, before it costs a model
    /// load or tokenizing: the request bucket is empty (here, or in the shared store as last
    /// heard, when `shared`). Takes nothing.
    pub fn refuse_early(&self, shared: bool, headers: &mut LimitHeaders) -> Result<(), LimitError> {
        if shared {
            let memo = self.limiter.shared.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let Some(until) = memo.refused_until.filter(|&t| t > now) else { return Ok(()) };
            *headers = aged(memo.last, now).unwrap_or_default();
            return Err(self.refusal(Bucket::Requests, Some(until - now), 0));
        }
        match self.limiter.requests.would_refuse(1) {
            None => Ok(()),
            Some(refusal) => {
                headers.requests = Some(self.limiter.requests.peek());
                Err(self.refused_by(Bucket::Requests, refusal, 0))
            }
        }
    }

    /// Admits a request of `tokens` by this process's own buckets, taking one request and
    /// `tokens` from them, or nothing if either refuses; either way records both buckets' state.
    pub fn admit_locally(&self, tokens: usize, headers: &mut LimitHeaders) -> Result<(), LimitError> {
        let (result, requests, token_state) =
            Gcra::take_both(&self.limiter.requests, 1, &self.limiter.tokens, tokens as u64);
        *headers = LimitHeaders { requests: Some(requests), tokens: Some(token_state) };
        result.map_err(|(is_requests, refusal)| {
            let bucket = if is_requests { Bucket::Requests } else { Bucket::Tokens };
            self.refused_by(bucket, refusal, tokens)
        })
    }

    /// Applies a shared store's decision on a request of `tokens`: records both buckets' state
    /// (and remembers it), and refuses as the store did.
    pub fn admit_shared(
        &self,
        verdict: SharedVerdict,
        tokens: usize,
        headers: &mut LimitHeaders,
    ) -> Result<(), LimitError> {
        *headers = LimitHeaders {
            requests: Some(self.limiter.requests.state_for_debt(verdict.requests_debt)),
            tokens: Some(self.limiter.tokens.state_for_debt(verdict.tokens_debt)),
        };
        let now = Instant::now();
        let mut memo = self.limiter.shared.lock().unwrap_or_else(|e| e.into_inner());
        memo.last = Some((now, *headers));
        let Some(bucket) = verdict.refused else { return Ok(()) };
        if let (Bucket::Requests, Some(wait)) = (bucket, verdict.wait) {
            memo.refused_until = Some(now + wait);
        }
        Err(self.refusal(bucket, verdict.wait, tokens))
    }

    /// Fills in the buckets a request did not reach, without taking from them: this process's
    /// buckets, or the shared store's state as last heard (aged since).
    pub fn peek_limits(&self, shared: bool, headers: &mut LimitHeaders) {
        if shared {
            let memo = self.limiter.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = aged(memo.last, Instant::now()) {
                headers.requests = headers.requests.or(last.requests);
                headers.tokens = headers.tokens.or(last.tokens);
            }
            return;
        }
        headers.requests.get_or_insert_with(|| self.limiter.requests.peek());
        headers.tokens.get_or_insert_with(|| self.limiter.tokens.peek());
    }

    fn refused_by(&self, bucket: Bucket, refusal: Refusal, tokens: usize) -> LimitError {
        match refusal {
            Refusal::RetryAfter(wait, _) => self.refusal(bucket, Some(wait), tokens),
            Refusal::Never(_) => self.refusal(bucket, None, tokens),
        }
    }

    /// The error for a refusal by `bucket`: retry after `wait`, or never (`None`).
    fn refusal(&self, bucket: Bucket, wait: Option<Duration>, tokens: usize) -> LimitError {
        let l = &self.limits;
        let message = match bucket {
            Bucket::Requests => format!(
                "Rate limit reached for tenant {}: {} requests per second (burst {}).",
                self.id, l.requests_per_second, l.burst
            ),
            Bucket::Tokens => format!(
                "Token rate limit reached for tenant {}: {} tokens per minute; this request has {tokens}.",
                self.id, l.tokens_per_minute
            ),
        };
        match wait {
            Some(wait) => LimitError::RateLimited { message, retry_after: retry_after(wait), limit: bucket },
            None => LimitError::OverBudget(message),
        }
    }
}

/// A remembered state as it stands now: resets shortened by the time since, and what refilled
/// meanwhile added back.
fn aged(last: Option<(Instant, LimitHeaders)>, now: Instant) -> Option<LimitHeaders> {
    let (at, headers) = last?;
    let elapsed = now.saturating_duration_since(at);
    let age = |s: Option<LimitState>| {
        s.map(|s| {
            let reset = s.reset.saturating_sub(elapsed);
            let owed = s.limit - s.remaining;
            // Units owed refill evenly over the reset time.
            let refilled = if s.reset.is_zero() {
                owed
            } else {
                (owed as f64 * (1.0 - reset.as_secs_f64() / s.reset.as_secs_f64())) as u64
            };
            LimitState { limit: s.limit, remaining: (s.remaining + refilled).min(s.limit), reset }
        })
    };
    Some(LimitHeaders { requests: age(headers.requests), tokens: age(headers.tokens) })
}

fn retry_after(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Key hash → tenant, swapped whole on reload.
pub struct TenantRegistry {
    current: ArcSwap<Registry>,
    /// The running server's `max_inputs`: no tenant's may exceed it.
    max_inputs: usize,
}

#[derive(Default)]
struct Registry {
    keys: Vec<([u8; 32], Arc<Tenant>)>,
    tenants: BTreeMap<String, Arc<Tenant>>,
}

impl TenantRegistry {
    pub fn new(settings: &Settings) -> Self {
        let max_inputs = settings.server.max_inputs;
        Self {
            current: ArcSwap::from_pointee(Registry::build(settings, max_inputs, &Registry::default())),
            max_inputs,
        }
    }

    /// Replaces every tenant with those of `settings` (its `[server]` section is not read).
    pub fn replace(&self, settings: &Settings) {
        let next = Registry::build(settings, self.max_inputs, &self.current.load());
        self.current.store(Arc::new(next));
    }

    /// The tenant owning `key`. Every stored hash is compared, in constant time, whatever
    /// matches, so timing says nothing about which keys exist.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let hash = hash_key_bytes(key);
        let registry = self.current.load();
        let mut found = None;
        for (stored, tenant) in &registry.keys {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(Arc::clone(tenant));
            }
        }
        found
    }
}

impl Registry {
    fn build(settings: &Settings, max_inputs: usize, previous: &Registry) -> Self {
        let mut out = Registry::default();
        for (id, config) in &settings.tenants {
            let mut models: BTreeMap<String, String> =
                config.models.iter().map(|m| (m.clone(), m.clone())).collect();
            for name in config.private_models.keys() {
                models.insert(name.clone(), private_model_id(id, name));
            }
            let mut limits = config.limits;
            limits.max_inputs = limits.max_inputs.min(max_inputs);
            let limiter = match previous.tenants.get(id) {
                Some(old) if old.limits == limits => Arc::clone(&old.limiter),
                _ => Arc::new(Limiter::new(&limits)),
            };
            let tenant = Arc::new(Tenant {
                id: id.clone(),
                models,
                default_model: config.default_model.clone().unwrap_or_else(|| settings.default_model.clone()),
                limits,
                limiter,
            });
            for key in &config.keys {
                if let Some(hash) = parse_key_hash(key) {
                    out.keys.push((hash, Arc::clone(&tenant)));
                }
            }
            out.tenants.insert(id.clone(), tenant);
        }
        out
    }
}

/// The hash to put in config for `key`, as `embedserve hash-key` prints it.
pub fn hash_key(key: &str) -> String {
    hex::encode(hash_key_bytes(key))
}

/// SHA-256 of `key`, as config stores keys.
pub fn hash_key_bytes(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
