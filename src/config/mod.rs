//! Settings: one TOML file, then `EMBEDSERVE__SECTION__KEY` environment overrides, validated
//! once at start (`validate`) so that the rest of the service never sees an inconsistent
//! configuration.

pub mod keys;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::Deserialize;

use crate::models::spec::ModelSpec;

/// The environment variable ort and ONNX Runtime users know; it overrides the config file.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    pub runtime: RuntimeSettings,
    /// The catalogue model used when a request names none and its tenant sets no default.
    pub default_model: String,
    /// The shared catalogue: models any tenant may be allowed to use.
    pub models: BTreeMap<String, ModelSpec>,
    #[serde(default)]
    pub cache: CacheSettings,
    /// Where tenants' limits and usage live: this process, or a Redis every replica shares.
    /// (`[limits]` before 2026-12: still read, see [`Settings::load`].)
    #[serde(default)]
    pub store: StoreSettings,
    /// Tenants by id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The file these settings came from (for messages and relative paths).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most inputs in one request (413 beyond).
    pub max_inputs: usize,
    /// Most documents in one rerank request (413 beyond).
    pub max_documents: usize,
    /// A request still unanswered after this long gets 504.
    pub request_timeout_ms: u64,
    /// Most inputs ONNX Runtime sees in one run; larger requests run in several.
    pub max_batch_size: usize,
    /// Most inputs in one run while more than one tenant has sent work to the model within
    /// the last second: shorter runs bound how long one tenant waits behind another's.
    pub shared_batch_size: usize,
    /// Most padded tokens (longest × count) in one run.
    pub max_batch_tokens: usize,
    /// How long a round may wait for the clients of the last round to send again (0: never);
    /// a lone client never waits.
    pub max_batch_wait_ms: u64,
    /// Tokens each tenant's lane gains per turn when batches are formed (the fairness quantum).
    pub fair_quantum_tokens: usize,
    /// Tokens a model's queue holds; requests past it get 503 with `Retry-After` at once.
    pub max_queue_tokens: usize,
    /// The share of a model's queue (percent of `max_queue_tokens`) one tenant may hold;
    /// requests past it get 429 with `Retry-After`, so a flood leaves room for other tenants.
    pub max_tenant_queue_percent: u8,
    /// How often the config file is checked for changes (0: only on SIGHUP).
    pub reload_poll_ms: u64,
    /// One CloudWatch Embedded Metric Format line per request on stdout (for Lambda, where
    /// nothing scrapes `/metrics`).
    pub emit_emf: bool,
    /// A connection that has not sent a whole request head this long after it opened, or
    /// after its last response (an idle keep-alive connection), is closed.
    pub header_read_timeout_ms: u64,
    /// Most open connections; past it the server stops accepting (and logs it) until one closes.
    pub max_connections: usize,
    /// After SIGTERM, requests in flight get this long to finish; connections still open
    /// then (stalled clients) are dropped.
    pub shutdown_timeout_ms: u64,
    /// Where Prometheus scrapes `/metrics`: a listener of its own, loopback by default, never the
    /// public one (`serve --metrics-bind` overrides it).
    pub metrics_bind: SocketAddr,
    /// Also serve `/metrics` on the public listener (and on Lambda), to requests bearing the key
    /// whose SHA-256 this is (`embedserve hash-key`). Unset: not routed there at all.
    pub metrics_key: Option<String>,
    /// Failed authentications one client address may make per minute (also the burst); past
    /// that its unauthenticated requests get 429 instead of 401.
    pub auth_failures_per_minute: u32,
    /// Serve even though a tenant has one of the demo keys published in this repository while
    /// bound to a non-loopback address or running on Lambda. Only for tests and benchmarks.
    pub allow_demo_keys: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 2_000_000,
            max_inputs: 256,
            max_documents: 1_000,
            request_timeout_ms: 30_000,
            max_batch_size: 32,
            shared_batch_size: 8,
            max_batch_tokens: 16_384,
            max_batch_wait_ms: 2,
            fair_quantum_tokens: 512,
            max_queue_tokens: 200_000,
            max_tenant_queue_percent: 50,
            reload_poll_ms: 2_000,
            emit_emf: false,
            header_read_timeout_ms: 10_000,
            max_connections: 1_024,
            shutdown_timeout_ms: 30_000,
            metrics_bind: SocketAddr::from(([127, 0, 0, 1], 9464)),
            metrics_key: None,
            auth_failures_per_minute: 30,
            allow_demo_keys: false,
        }
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// At most this many sessions per model when `sessions_per_model` is 0 (more CPUs go to each
/// session's threads): each session holds its own copy of the weights.
pub const AUTO_SESSIONS_MAX: usize = 4;

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` overrides it.
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session; 0 means the CPUs available to the process
    /// divided among a model's sessions.
    #[serde(default)]
    pub intra_threads: usize,
    /// ONNX Runtime sessions per loaded model, each on its own inference thread taking the next
    /// batch while the others run theirs; 0 means one per CPU available, at most
    /// [`AUTO_SESSIONS_MAX`]. One session uses every thread on each run: a lone request is
    /// answered sooner, but under load its threads wait on each other at every parallel step.
    /// Each session holds its own copy of the weights ONNX Runtime does not share.
    #[serde(default)]
    pub sessions_per_model: usize,
    /// ONNX Runtime's CPU memory arena keeps the peak of every run's memory for the life of the
    /// session (hundreds of MiB after one large batch); off, each model's footprint stays near
    /// its load size, which is what the cache budget counts.
    #[serde(default)]
    pub cpu_arena: bool,
    /// Whether ONNX Runtime's intra-op threads spin between a run's parallel sections instead of
    /// sleeping (ONNX Runtime's own default, and ours). Spinning answers a lone request sooner,
    /// but burns CPU the server's HTTP, tokenizing and other models need under concurrency
    /// (docs/configuration.md has the figures).
    #[serde(default = "spinning_by_default")]
    pub intra_op_spinning: bool,
}

/// The session cache: memory budget, models loaded at start, models never evicted.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Budget for loaded models' resident bytes; 0 means unlimited.
    pub max_bytes: u64,
    /// Model ids loaded at start (`/ready` waits for them); empty means `[default_model]`.
    pub preload: Vec<String>,
    /// Model ids never evicted (they are also preloaded).
    pub pinned: Vec<String>,
    /// Bytes of recent inputs' vectors kept per process, so a repeated input is not computed
    /// again (see `core::embed::recall`); 0 (the default) keeps none. Hits are not billed.
    pub embeddings_max_bytes: u64,
    /// A Redis shared by every replica and Lambda instance for the embedding cache's second
    /// tier: a dedicated instance whose `maxmemory` (with `allkeys-lru`) bounds it. Uses
    /// `store.redis_ca_file`, `store.timeout_ms` and `store.key_prefix`. Needs
    /// `embeddings_max_bytes`.
    pub embeddings_redis_url: Option<String>,
    /// How long a vector stays in the Redis tier.
    pub embeddings_redis_ttl_s: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 0,
            preload: Vec::new(),
            pinned: Vec::new(),
            embeddings_max_bytes: 0,
            embeddings_redis_url: None,
            embeddings_redis_ttl_s: 86_400,
        }
    }
}

/// Where limits and usage are kept (`[store]`); like `[server]`, read at start only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: StoreKind,
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Put the password in
    /// `EMBEDSERVE__STORE__REDIS_URL` (a Secret), not in the file.
    pub redis_url: Option<String>,
    /// PEM root certificate(s) that sign the Redis server's TLS certificate, when not a public CA.
    pub redis_ca_file: Option<PathBuf>,
    /// A store call unanswered this long counts as a failure: this request (and those after it,
    /// until Redis answers a probe) are decided by the process's own limiter.
    pub timeout_ms: u64,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Usage counts are summed in memory and written this often (0: after every request, as on
    /// Lambda, where a frozen instance runs no timers).
    pub usage_flush_ms: u64,
    /// Most (tenant, model, day) counters held unwritten while Redis is unreachable; counts
    /// for further ones are dropped and counted in `embedserve_usage_dropped_total`.
    pub usage_buffer_keys: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process: limits hold per process and usage lives in memory.
    #[default]
    Local,
    /// In Redis, shared by every process pointing at it; this process's limiter is the fallback.
    Redis,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreKind::Local,
            redis_url: None,
            redis_ca_file: None,
            timeout_ms: 50,
            key_prefix: "embedserve".to_owned(),
            usage_flush_ms: 1_000,
            usage_buffer_keys: 100_000,
        }
    }
}

/// One tenant, from a `[tenants.<id>]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// SHA-256 hashes (hex) of the tenant's API keys; `embedserve hash-key` prints one.
    pub keys: Vec<String>,
    /// Catalogue models the tenant may use.
    #[serde(default)]
    pub models: Vec<String>,
    /// Models only this tenant sees, with files of their own.
    #[serde(default)]
    pub private_models: BTreeMap<String, ModelSpec>,
    /// The model used when a request names none; defaults to the top-level `default_model`.
    pub default_model: Option<String>,
    #[serde(default)]
    pub limits: TenantLimits,
    /// Share cached vectors with the other tenants that set this too (off: a tenant's cache
    /// hits are its own texts only; shared, a hit's speed tells a tenant another sent a text).
    #[serde(default)]
    pub share_embedding_cache: bool,
}

/// A tenant's limits (`[tenants.<id>] limits = {...}`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
    pub tokens_per_minute: u32,
    /// Most inputs in one request (never above `server.max_inputs`).
    pub max_inputs: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self { requests_per_second: 50, burst: 100, tokens_per_minute: 1_000_000, max_inputs: 256 }
    }
}

/// The cache id of a tenant's private model: `tenant/name`. Catalogue ids have no `/`.
pub fn private_model_id(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

impl Settings {
    /// Reads `path`, applies environment overrides, resolves relative paths against the
    /// file's folder and validates the result.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!("config file {} not found", path.display());
        }
        let figment =
            Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed("EMBEDSERVE__").split("__"));
        let invalid = || format!("invalid config {}", path.display());
        let mut raw: Dict = figment.extract().with_context(invalid)?;
        // Re-read from the renamed values only when needed: errors then lose the file's name in
        // their location (the context above still says it).
        let mut settings: Settings = if rename_limits_section(&mut raw) {
            Figment::from(Serialized::defaults(raw)).extract().with_context(invalid)?
        } else {
            figment.extract().with_context(invalid)?
        };
        settings.source = path.to_path_buf();
        settings.resolve_paths();
        let mut problems = settings.derive_from_folders();
        problems.extend(settings.problems());
        if !problems.is_empty() {
            let file = path.display();
            let lines: Vec<String> = problems.iter().map(|p| format!("{file}: {p}")).collect();
            bail!("invalid config {file}: {} problem(s)\n  {}", lines.len(), lines.join("\n  "));
        }
        Ok(settings)
    }

    /// The ONNX Runtime library to load: `ORT_DYLIB_PATH`, else `runtime.onnxruntime`.
    pub fn onnxruntime_path(&self) -> Option<PathBuf> {
        std::env::var_os(ORT_DYLIB_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| self.runtime.onnxruntime.clone())
    }

    /// Intra-op threads per session: the configured number, else the CPUs available shared
    /// among a model's sessions.
    pub fn intra_threads(&self) -> usize {
        self.intra_threads_for(self.sessions_per_model())
    }

    /// Intra-op threads per session were a model to have `sessions` sessions.
    pub fn intra_threads_for(&self, sessions: usize) -> usize {
        match self.runtime.intra_threads {
            0 => (available_cpus() / sessions.max(1)).max(1),
            n => n,
        }
    }

    /// Sessions per loaded model: the configured number, else one per CPU available, at most
    /// [`AUTO_SESSIONS_MAX`].
    pub fn sessions_per_model(&self) -> usize {
        match self.runtime.sessions_per_model {
            0 => available_cpus().min(AUTO_SESSIONS_MAX),
            n => n,
        }
    }

    fn resolve_paths(&mut self) {
        let base = self.source.parent().unwrap_or(Path::new(".")).to_path_buf();
        // An empty path is an unset one (a model's files from its `path` folder).
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.runtime.onnxruntime.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.store.redis_ca_file.as_mut() {
            resolve(p);
        }
        let private = self.tenants.values_mut().flat_map(|t| t.private_models.values_mut());
        for spec in self.models.values_mut().chain(private) {
            for path in [&mut spec.onnx, &mut spec.tokenizer] {
                resolve(path);
            }
            for variant in spec.variants.values_mut() {
                resolve(&mut variant.onnx);
            }
            for path in [spec.path.as_mut(), spec.tokenizer_config.as_mut()].into_iter().flatten() {
                resolve(path);
            }
        }
    }

    /// Fills each model's unset settings from its export folder (`path`); problems as
    /// `field: message` with each model's config field.
    fn derive_from_folders(&mut self) -> Vec<String> {
        let catalogue = self.models.iter_mut().map(|(id, spec)| (format!("models.{id}"), spec));
        let private = self.tenants.iter_mut().flat_map(|(tenant, t)| {
            t.private_models.iter_mut().map(move |(name, spec)| (private_model_field(tenant, name), spec))
        });
        catalogue
            .chain(private)
            .flat_map(|(field, spec)| {
                crate::models::spec::folder::derive(spec).into_iter().map(move |p| format!("{field}.{p}"))
            })
            .collect()
    }

    /// Every model table with its config field: `models.<id>`, `tenants.<t>.private_models.<name>`.
    fn model_tables(&self) -> impl Iterator<Item = (String, &ModelSpec)> {
        let catalogue = self.models.iter().map(|(id, spec)| (format!("models.{id}"), spec));
        let private = self.tenants.iter().flat_map(|(tenant, t)| {
            t.private_models.iter().map(move |(name, spec)| (private_model_field(tenant, name), spec))
        });
        catalogue.chain(private)
    }

    /// What each model took from its export folder, as `field.key = value (from file)` lines.
    pub fn derivations(&self) -> Vec<String> {
        self.model_tables()
            .flat_map(|(field, spec)| {
                let hub = spec.hf.as_ref().map(|repo| {
                    let revision = spec.revision.as_deref().unwrap_or_default();
                    format!("{field}: {repo}@{revision} from the Hugging Face Hub, fetched and read when it first loads")
                });
                let derived =
                    spec.derived.iter().map(|d| format!("{field}.{} = {} (from {})", d.field, d.value, d.source));
                hub.into_iter().chain(derived).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every model the cache may load, by id: the catalogue and each tenant's private models.
    pub fn all_models(&self) -> BTreeMap<String, ModelSpec> {
        let private = self.tenants.iter().flat_map(|(tenant, t)| {
            t.private_models.iter().map(move |(name, spec)| (private_model_id(tenant, name), spec.clone()))
        });
        self.models.iter().map(|(id, spec)| (id.clone(), spec.clone())).chain(private).collect()
    }

    /// Tenants holding a published demo key.
    pub fn demo_key_tenants(&self) -> Vec<&str> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.keys.iter().any(|k| keys::is_demo_key(k)))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Refuses to serve the demo keys where others can reach them (`exposed`: a non-loopback
    /// address, or Lambda), unless `server.allow_demo_keys` says so.
    pub fn refuse_exposed_demo_keys(&self, exposed: bool) -> anyhow::Result<()> {
        let tenants = self.demo_key_tenants();
        if exposed && !tenants.is_empty() && !self.server.allow_demo_keys {
            bail!(
                "{}: tenants {tenants:?} use the demo keys published in the README, and this server is \
                 reachable by others; put keys of your own (`embedserve hash-key`), or set \
                 server.allow_demo_keys = true for a test",
                self.source.display()
            );
        }
        Ok(())
    }

    /// Problems with the models' files (each tokenizer and ONNX graph opened and checked, no
    /// session built), as `field: message` with each model's config field.
    pub fn file_problems(&self) -> Vec<String> {
        self.model_tables()
            .flat_map(|(field, spec)| {
                crate::models::spec::inspect::file_problems(spec)
                    .into_iter()
                    .map(move |p| format!("{field}.{p}"))
            })
            .collect()
    }

    /// Models loaded at start: `cache.preload` and `cache.pinned`, or the default model.
    pub fn preload(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.cache.preload.iter().chain(&self.cache.pinned).cloned().collect();
        if ids.is_empty() {
            ids.push(self.default_model.clone());
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The config field of a tenant's private model.
fn private_model_field(tenant: &str, name: &str) -> String {
    format!("tenants.{tenant}.private_models.{name}")
}

/// The `[store]` section was `[limits]`, with `store` where `backend` is now (until 2026-12):
/// a file or environment (`EMBEDSERVE__LIMITS__*`) still using the old names is read as the new
/// ones; where both give a key, `[store]`'s wins.
fn rename_limits_section(raw: &mut Dict) -> bool {
    let Some(Value::Dict(_, old)) = raw.remove("limits") else { return false };
    tracing::warn!(
        "config: the [limits] section is now [store] (and its `store` key `backend`); read as such"
    );
    let store = raw.entry("store".to_owned()).or_insert_with(|| Value::from(Dict::new()));
    if let Value::Dict(_, store) = store {
        for (key, value) in old {
            let key = if key == "store" { "backend".to_owned() } else { key };
            store.entry(key).or_insert(value);
        }
    }
    true
}

fn spinning_by_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_threads_spin_unless_told_not_to() {
        let unset: RuntimeSettings = serde_json::from_str(r#"{ "onnxruntime": null }"#).unwrap();
        assert!(unset.intra_op_spinning);
        let off: RuntimeSettings = serde_json::from_str(r#"{ "intra_op_spinning": false }"#).unwrap();
        assert!(!off.intra_op_spinning);
        assert!(load_with("spin", "").unwrap().runtime.intra_op_spinning);
    }

    /// config/default.toml's text with `extra` appended, loaded from a file of its own.
    fn load_with(name: &str, extra: &str) -> anyhow::Result<Settings> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("config/default.toml")).unwrap();
        let dir = root.join("target/test-tmp").join(format!("config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, format!("{text}\n{extra}\n")).unwrap();
        let loaded = Settings::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    #[test]
    fn the_old_limits_section_is_read_as_the_store_section() {
        let old = load_with(
            "old",
            "[limits]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\ntimeout_ms = 70",
        )
        .unwrap();
        assert_eq!(old.store.backend, StoreKind::Redis);
        assert_eq!(old.store.timeout_ms, 70);
        // Where both name a key, [store] wins; the rest still comes from [limits].
        let both = load_with(
            "both",
            "[store]\ntimeout_ms = 90\n[limits]\ntimeout_ms = 70\nkey_prefix = \"old-prefix\"",
        )
        .unwrap();
        assert_eq!((both.store.timeout_ms, both.store.key_prefix.as_str()), (90, "old-prefix"));
        let e = load_with("bad", "[store]\nbackend = \"memcached\"").unwrap_err();
        assert!(format!("{e:#}").contains("memcached"), "{e:#}");
    }

    #[test]
    fn redis_urls_are_checked_without_echoing_them() {
        let problems = |url: &str| {
            let settings = load_with("url", &format!("[store]\nbackend = \"redis\"\nredis_url = \"{url}\""));
            settings.err().map(|e| format!("{e:#}")).unwrap_or_default()
        };
        assert_eq!(problems("redis://127.0.0.1:6379/0"), "");
        assert_eq!(problems("rediss://user:secret@cache.example.com:6380"), "");
        let e = problems("http://user:secret@host");
        assert!(e.contains("store.redis_url") && !e.contains("secret"), "{e}");
        assert!(problems("redis+unix:///tmp/redis.sock").contains("Unix socket"));
    }
}
