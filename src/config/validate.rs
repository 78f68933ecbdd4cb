//! Validation of a whole configuration: every problem at once, each named by its field, so
//! `check-config` and a rejected reload can list them all.

use std::collections::BTreeMap;

use super::keys::parse_key_hash;
use super::{Settings, StoreKind};

impl Settings {
    /// Every problem, each as `field: message`, so `check-config` can list them all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.models.contains_key(&self.default_model) {
            out.push(format!("default_model: \"{}\" is not a model in [models]", self.default_model));
        }
        for (id, spec) in &self.models {
            out.extend(spec.problems().into_iter().map(|p| format!("models.{id}.{p}")));
        }
        out.extend(self.tenant_problems());
        let all = self.all_models();
        for (field, ids) in [("cache.preload", &self.cache.preload), ("cache.pinned", &self.cache.pinned)] {
            for id in ids.iter().filter(|id| !all.contains_key(*id)) {
                out.push(format!(
                    "{field}: \"{id}\" is not a model id (catalogue id or tenant/private-name)"
                ));
            }
        }
        for id in self.models.keys().filter(|id| !valid_id(id)) {
            out.push(format!("models.{id}: ids use only a-z, 0-9, '-' and '_'"));
        }
        let s = &self.server;
        for (field, value) in [
            ("max_body_bytes", s.max_body_bytes),
            ("max_inputs", s.max_inputs),
            ("max_documents", s.max_documents),
            ("max_batch_size", s.max_batch_size),
            ("shared_batch_size", s.shared_batch_size),
            ("max_batch_tokens", s.max_batch_tokens),
            ("fair_quantum_tokens", s.fair_quantum_tokens),
            ("max_queue_tokens", s.max_queue_tokens),
            ("max_tenant_queue_percent", usize::from(s.max_tenant_queue_percent)),
            ("request_timeout_ms", s.request_timeout_ms as usize),
            ("header_read_timeout_ms", s.header_read_timeout_ms as usize),
            ("max_connections", s.max_connections),
            ("auth_failures_per_minute", s.auth_failures_per_minute as usize),
        ] {
            if value == 0 {
                out.push(format!("server.{field}: must be at least 1"));
            }
        }
        if s.metrics_key.as_deref().is_some_and(|k| parse_key_hash(k).is_none()) {
            out.push(
                "server.metrics_key: not a SHA-256 hash (64 hex digits); `embedserve hash-key` prints one"
                    .to_owned(),
            );
        }
        out.extend(self.store_problems());
        if s.max_tenant_queue_percent > 100 {
            out.push("server.max_tenant_queue_percent: must be between 1 and 100".to_owned());
        }
        out
    }

    fn store_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let l = &self.store;
        match (&l.backend, &l.redis_url) {
            (StoreKind::Redis, None) => out.push(
                "store.redis_url: backend = \"redis\" needs redis_url (redis://host:port or rediss://host:port)"
                    .to_owned(),
            ),
            (_, Some(url)) => {
                if let Err(e) = check_redis_url(url) {
                    out.push(format!("store.redis_url: {e}"));
                }
            }
            (StoreKind::Local, None) => {}
        }
        if l.timeout_ms == 0 {
            out.push("store.timeout_ms: must be at least 1".to_owned());
        }
        if l.usage_buffer_keys == 0 {
            out.push("store.usage_buffer_keys: must be at least 1".to_owned());
        }
        if !l.key_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
            || l.key_prefix.is_empty()
        {
            out.push("store.key_prefix: use only a-z, 0-9, '-', '_' and '.'".to_owned());
        }
        if let Some(ca) = l.redis_ca_file.as_deref().filter(|p| !p.is_file()) {
            out.push(format!("store.redis_ca_file: {} is not a file", ca.display()));
        }
        let c = &self.cache;
        if let Some(url) = &c.embeddings_redis_url {
            if let Err(e) = check_redis_url(url) {
                out.push(format!("cache.embeddings_redis_url: {e}"));
            }
            if c.embeddings_max_bytes == 0 {
                out.push(
                    "cache.embeddings_redis_url: needs embeddings_max_bytes (the tier in the process)"
                        .to_owned(),
                );
            }
            if c.embeddings_redis_ttl_s == 0 {
                out.push("cache.embeddings_redis_ttl_s: must be at least 1".to_owned());
            }
        }
        out
    }

    fn tenant_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen_keys: BTreeMap<String, &str> = BTreeMap::new();
        for (id, t) in &self.tenants {
            let at = format!("tenants.{id}");
            if !valid_id(id) {
                out.push(format!("{at}: tenant ids use only a-z, 0-9, '-' and '_'"));
            }
            if t.keys.is_empty() {
                out.push(format!("{at}.keys: a tenant needs at least one key hash"));
            }
            for (i, key) in t.keys.iter().enumerate() {
                match parse_key_hash(key) {
                    None => out.push(format!(
                        "{at}.keys[{i}]: not a SHA-256 hash (64 hex digits); `embedserve hash-key` prints one"
                    )),
                    Some(hash) => {
                        if let Some(other) = seen_keys.insert(hex::encode(hash), id) {
                            out.push(format!("{at}.keys[{i}]: the same key is also a key of tenant {other}"));
                        }
                    }
                }
            }
            for (i, model) in t.models.iter().enumerate() {
                if !self.models.contains_key(model) {
                    out.push(format!("{at}.models[{i}]: \"{model}\" is not in the [models] catalogue"));
                }
            }
            for (name, spec) in &t.private_models {
                if !valid_id(name) {
                    out.push(format!("{at}.private_models.{name}: names use only a-z, 0-9, '-' and '_'"));
                }
                if t.models.contains(name) {
                    out.push(format!(
                        "{at}.private_models.{name}: also listed in models; the name would be ambiguous"
                    ));
                }
                out.extend(spec.problems().into_iter().map(|p| format!("{at}.private_models.{name}.{p}")));
            }
            let default = t.default_model.as_deref().unwrap_or(&self.default_model);
            if !t.models.iter().any(|m| m == default) && !t.private_models.contains_key(default) {
                let field = if t.default_model.is_some() { "default_model" } else { "models" };
                out.push(format!(
                    "{at}.{field}: the default model \"{default}\" is not one of the tenant's models"
                ));
            }
            let l = &t.limits;
            for (field, value) in [
                ("requests_per_second", l.requests_per_second as usize),
                ("burst", l.burst as usize),
                ("tokens_per_minute", l.tokens_per_minute as usize),
                ("max_inputs", l.max_inputs),
            ] {
                if value == 0 {
                    out.push(format!("{at}.limits.{field}: must be at least 1"));
                }
            }
        }
        out
    }
}

/// Checks a `redis_url` without connecting. The message never repeats the URL: it may hold a
/// password.
fn check_redis_url(url: &str) -> Result<(), String> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let info = url.into_connection_info().map_err(|e| {
        format!("not a Redis URL (redis://[user:password@]host:port[/db] or rediss://...): {e}")
    })?;
    if matches!(info.addr(), ConnectionAddr::Unix(_)) {
        return Err("use redis:// or rediss:// (a Unix socket cannot be shared by replicas)".to_owned());
    }
    Ok(())
}

/// Model and tenant ids are table names, and the configuration loader reads a `.` in a table name
/// as nesting: no dots.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c))
}
