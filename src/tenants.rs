//! Tenants: who a key belongs to, which models that tenant may use and under what names, and
//! its limits. The registry is swapped whole on configuration reload; a tenant whose limits did
//! not change keeps its rate-limiter state across the swap. A tenant's `max_inputs` is capped
//! by the running server's `max_inputs`, which, like all of `[server]`, changes on restart only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
    RateLimited { message: String, retry_after: u64 },
    /// More tokens than a whole minute's budget: waiting never helps.
    #[error("{0}")]
    OverBudget(String),
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
/// worth may be spent at once).
struct Limiter {
    requests: Gcra,
    tokens: Gcra,
}

impl Limiter {
    fn new(limits: &Limits) -> Self {
        Self {
            requests: Gcra::new(limits.requests_per_second, Duration::from_secs(1), limits.burst),
            tokens: Gcra::new(limits.tokens_per_minute, Duration::from_secs(60), limits.tokens_per_minute),
        }
    }
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

    /// Takes one request from the tenant's request budget, or says when to retry; either way
    /// records the bucket's state in `headers`.
    pub fn check_request(&self, headers: &mut LimitHeaders) -> Result<(), LimitError> {
        let message = || {
            format!(
                "Rate limit reached for tenant {}: {} requests per second (burst {}).",
                self.id, self.limits.requests_per_second, self.limits.burst
            )
        };
        let (result, state) = decide(self.limiter.requests.take(1), message);
        headers.requests = Some(state);
        result
    }

    /// Takes `tokens` from the tenant's tokens-per-minute budget, or says when to retry (or that
    /// a request this large never fits); either way records the bucket's state in `headers`.
    pub fn check_tokens(&self, tokens: usize, headers: &mut LimitHeaders) -> Result<(), LimitError> {
        let message = || {
            format!(
                "Token rate limit reached for tenant {}: {} tokens per minute; this request has {tokens}.",
                self.id, self.limits.tokens_per_minute
            )
        };
        let (result, state) = decide(self.limiter.tokens.take(tokens as u64), message);
        headers.tokens = Some(state);
        result
    }

    /// Fills in the buckets a request did not reach, without taking from them.
    pub fn peek_limits(&self, headers: &mut LimitHeaders) {
        headers.requests.get_or_insert_with(|| self.limiter.requests.peek());
        headers.tokens.get_or_insert_with(|| self.limiter.tokens.peek());
    }
}

fn decide(
    taken: Result<LimitState, Refusal>,
    message: impl Fn() -> String,
) -> (Result<(), LimitError>, LimitState) {
    match taken {
        Ok(state) => (Ok(()), state),
        Err(Refusal::RetryAfter(wait, state)) => {
            (Err(LimitError::RateLimited { message: message(), retry_after: retry_after(wait) }), state)
        }
        Err(Refusal::Never(state)) => (Err(LimitError::OverBudget(message())), state),
    }
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
