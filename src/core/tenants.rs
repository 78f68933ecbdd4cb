//! Tenants: who an API key belongs to, which models that tenant may use and under what names,
//! and its limits' settings (their buckets live in `core::limits`). The registry is swapped
//! whole on configuration reload; a tenant whose limits did not change keeps its buckets across
//! the swap. A tenant's `max_inputs` is capped by the running server's `max_inputs`, which,
//! like all of `[server]`, changes on restart only.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use super::limits::TenantBuckets;
use crate::config::keys::{hash_key_bytes, parse_key_hash};
use crate::config::{Settings, TenantLimits, private_model_id};

/// A tenant as requests see it.
pub struct Tenant {
    pub id: String,
    /// Name the tenant uses → cache model id.
    models: BTreeMap<String, String>,
    default_model: String,
    limits: TenantLimits,
    pub(crate) buckets: Arc<TenantBuckets>,
    /// Whose cached vectors this tenant's requests may reuse: its own id, or the scope shared
    /// by tenants with `share_embedding_cache` (see `embed::recall`).
    pub(crate) cache_scope: String,
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

    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    pub fn max_inputs(&self) -> usize {
        self.limits.max_inputs
    }
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
            let buckets = match previous.tenants.get(id) {
                Some(old) if old.limits == limits => Arc::clone(&old.buckets),
                _ => Arc::new(TenantBuckets::new(&limits)),
            };
            let tenant = Arc::new(Tenant {
                id: id.clone(),
                models,
                default_model: config.default_model.clone().unwrap_or_else(|| settings.default_model.clone()),
                limits,
                buckets,
                // Tenant ids are TOML keys: none is empty, so the empty scope is the shared one.
                cache_scope: if config.share_embedding_cache { String::new() } else { id.clone() },
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
