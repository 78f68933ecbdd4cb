//! The session cache: model id → loaded model, in a `dashmap`, shared by every tenant allowed
//! to use the model.
//!
//! - Lazy and single-flight: a model loads on first use, exactly once however many requests
//!   ask at the same moment; the others wait for that load.
//! - Detached: a load runs in a task of its own, which requests join. A request that times out
//!   or whose client goes away leaves the load running, and the next request for the model
//!   joins it rather than starting again. Loads of different models run at the same time, at
//!   most [`CONCURRENT_LOADS`]: a slow Hub download delays no other model's first load.
//! - Budgeted: the building of sessions is serialised (the downloads before it are not), and
//!   each one's resident size is `resident_bytes` from its config if given, else measured as
//!   the growth
//!   of the process's RSS across the load and a one-input warm-up run (at least the ONNX file's
//!   size; the smallest of its measurements). Before a load, least recently used models are evicted until the model is
//!   expected to fit (its last measured size, or twice its file size if never loaded); after,
//!   again if the measurement came out larger.
//! - Idle models go first; when every candidate is busy, the least recently used busy one
//!   leaves the cache all the same: its thread finishes the jobs already queued and its
//!   session is freed when the last request holding it is answered. Pinned models never leave.
//! - A failed load fails only that model's requests, with 503 and `Retry-After`; the next
//!   attempt waits out a backoff that doubles from 1 s up to 60 s.
//! - A model whose thread stopped serving (it failed its warm-up input: see `worker`) leaves
//!   the cache at the next lookup, and loads again after the same backoff (doubling while it
//!   stops again before answering a request). The cache never hands out a dead model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OnceCell, Semaphore};

use super::memory::{self, file_size, resident_set_bytes};
use super::queue::QueuedTokens;
use super::worker::Health;
use super::worker::{self, BatchSizes};
use super::{LoadedModel, Session, TokenizePool};
use crate::metrics::Metrics;
use crate::models::engine::tokenize::EncodeOptions;
use crate::models::engine::{Backend, ModelLoader};
use crate::models::error::ModelError;
use crate::models::spec::hub::{self, HubError};
use crate::models::spec::{AUTO_VARIANT, ModelSpec, Task, folder};

/// How models are fed and budgeted; the same for every model.
#[derive(Debug, Clone)]
pub(crate) struct CacheOptions {
    pub batching: BatchSizes,
    /// Jobs a model's queue holds before requests are refused with 503.
    pub queue_capacity: usize,
    /// Tokens a model's queue holds before requests are refused with 503.
    pub max_queue_tokens: usize,
    /// Percent of `max_queue_tokens` one tenant may hold before its requests get 429.
    pub max_tenant_queue_percent: u8,
    /// Resident bytes for all loaded models together; 0 means unlimited.
    pub max_bytes: u64,
    pub pinned: BTreeSet<String>,
    /// Where every model's tokenizing runs.
    pub tokenizers: TokenizePool,
    /// At most this many ONNX Runtime sessions per model, each with an inference thread of its
    /// own: a model starts with one and gains one while all are busy.
    pub sessions: usize,
}

pub(crate) struct ModelCache {
    runtime: Arc<dyn ModelLoader>,
    specs: RwLock<BTreeMap<String, Arc<ModelSpec>>>,
    /// Hub models' specs once their files are fetched and read (see `models::hub`).
    resolved: DashMap<String, Arc<ModelSpec>>,
    slots: DashMap<String, Arc<Slot>>,
    /// Last measured resident size per model, kept across evictions for the next estimate.
    sizes: DashMap<String, u64>,
    /// Times each model stopped serving in a row without answering a request in between.
    stops: DashMap<String, u32>,
    /// The variant each model with variants serves (or last served), and why: kept across
    /// evictions, so a model reloads as the same variant.
    chosen: DashMap<String, Chosen>,
    options: CacheOptions,
    metrics: Arc<Metrics>,
    /// At most [`CONCURRENT_LOADS`] loads at once (downloads included).
    loads: Semaphore,
    /// One session build at a time: RSS growth is then one model's, and budget decisions do not
    /// race.
    build_lock: tokio::sync::Mutex<()>,
    /// Counts lookups: a slot's `last_used` is the count at its last lookup, so the least
    /// recently used model is the one with the smallest, with no ties.
    uses: AtomicU64,
}

/// The variant a model with variants serves, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub name: String,
    pub reason: String,
}

/// Sentences a timed choice between variants runs (one batch of 32, three times each).
const TIMING_TEXTS: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Quarterly revenue grew by twelve percent, driven by subscriptions in Europe.",
    "Restart the service after changing the configuration file, then check the logs.",
    "A warm bowl of soup and fresh bread make a fine dinner on a cold evening.",
    "The committee postponed its decision until the next meeting in March.",
    "Install the package, run the tests, and open a pull request with the fix.",
    "Heavy rain is expected over the weekend, with strong winds along the coast.",
    "She read the letter twice before folding it carefully into her pocket.",
];

/// A load in its own task, which any number of requests await.
type Load = Shared<BoxFuture<'static, Result<Arc<LoadedModel>, ModelError>>>;

/// Loads of different models running at once (each model's at most once).
pub(crate) const CONCURRENT_LOADS: usize = 4;

#[derive(Default)]
struct Slot {
    /// Set by the load task once the model serves.
    model: OnceCell<Arc<LoadedModel>>,
    /// The load in flight, if any.
    loading: Mutex<Option<Load>>,
    resident: AtomicU64,
    last_used: AtomicU64,
    failure: Mutex<Option<Failure>>,
}

struct Failure {
    retry_at: Instant,
    attempts: u32,
    cause: String,
    /// What the client may be told (a hub file that could not be had).
    detail: Option<String>,
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait before attempt `attempts + 1`: 1 s, doubling, at most 60 s.
fn backoff(attempts: u32) -> Duration {
    (BACKOFF_START * 2u32.saturating_pow(attempts.saturating_sub(1))).min(BACKOFF_MAX)
}

impl ModelCache {
    pub(crate) fn new(
        runtime: Arc<dyn ModelLoader>,
        specs: BTreeMap<String, ModelSpec>,
        options: CacheOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.cache_budget_bytes.set(options.max_bytes as i64);
        Self {
            runtime,
            specs: RwLock::new(specs.into_iter().map(|(id, spec)| (id, Arc::new(spec))).collect()),
            resolved: DashMap::new(),
            slots: DashMap::new(),
            sizes: DashMap::new(),
            stops: DashMap::new(),
            chosen: DashMap::new(),
            options,
            metrics,
            loads: Semaphore::new(CONCURRENT_LOADS),
            build_lock: tokio::sync::Mutex::new(()),
            uses: AtomicU64::new(0),
        }
    }

    /// The spec of model `id`, loaded or not; a hub model's is complete (dimensions, limit,
    /// prompts) only once its files have been fetched (see `ModelSpec::is_complete`).
    pub(crate) fn spec(&self, id: &str) -> Option<Arc<ModelSpec>> {
        if let Some(resolved) = self.resolved.get(id) {
            return Some(Arc::clone(resolved.value()));
        }
        self.specs.read().get(id).cloned()
    }

    /// The loaded model `id`, loading it first if needed (or joining the load in flight).
    pub(crate) async fn get(self: &Arc<Self>, id: &str) -> Result<Arc<LoadedModel>, ModelError> {
        let Some(spec) = self.spec(id) else {
            return Err(ModelError::NotFound(id.to_owned()));
        };
        // Clone the slot out so no dashmap guard is held across an await.
        let slot = Arc::clone(self.slots.entry(id.to_owned()).or_default().value());
        slot.last_used.store(self.uses.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(model) = slot.model.get() {
            if let Some(cause) = model.health.stopped() {
                return Err(self.unload_stopped(id, &slot, model, cause));
            }
            self.metrics.cache_lookups.with_label_values(&[id, "hit"]).inc();
            self.grow_if_busy(id, &slot, model);
            return Ok(Arc::clone(model));
        }
        self.metrics.cache_lookups.with_label_values(&[id, "miss"]).inc();
        self.check_backoff(id, &slot)?;
        let load = {
            let mut loading = slot.loading.lock();
            // The load may have finished between the lookup and the lock.
            if let Some(model) = slot.model.get() {
                return Ok(Arc::clone(model));
            }
            loading.get_or_insert_with(|| self.start_load(id, spec, &slot)).clone()
        };
        load.await
    }

    /// Adds a session to `model` in the background when every one it has holds a backlog, it has
    /// fewer than `runtime.sessions_per_model`, and the budget has room for one more copy of its
    /// weights (its measured size), which the model's resident size then counts. A model used by
    /// one client at a time never grows, so a cache of many rarely used models holds one session
    /// of each.
    fn grow_if_busy(self: &Arc<Self>, id: &str, slot: &Arc<Slot>, model: &Arc<LoadedModel>) {
        if !model.wants_session(self.options.sessions) {
            return;
        }
        let size = self.sizes.get(id).map_or(0, |s| *s);
        let budget = self.options.max_bytes;
        if budget != 0 && self.resident_bytes() + size > budget {
            return;
        }
        if model.growing.swap(true, Ordering::Relaxed) {
            return;
        }
        let (cache, slot, model, id) = (Arc::clone(self), Arc::clone(slot), Arc::clone(model), id.to_owned());
        tokio::task::spawn_blocking(move || {
            match cache.add_session(&model) {
                Ok(sessions) => {
                    // Counted at the model's measured size: the process's growth while requests
                    // run beside the build is theirs as much as the session's.
                    let resident = slot.resident.fetch_add(size, Ordering::Relaxed) + size;
                    // A model evicted meanwhile is no longer reported; its sessions end with it.
                    let cached = cache.slots.get(&id).is_some_and(|s| Arc::ptr_eq(s.value(), &slot));
                    if cached {
                        cache.metrics.model_resident_bytes.with_label_values(&[&id]).set(resident as i64);
                        cache.metrics.model_sessions.with_label_values(&[&id]).set(sessions as i64);
                        cache.metrics.cache_resident_bytes.set(cache.resident_bytes() as i64);
                    }
                    tracing::info!(
                        model = id,
                        sessions,
                        resident_mib = resident >> 20,
                        "session added: every session was busy"
                    );
                    model.growing.store(false, Ordering::Relaxed);
                }
                // `growing` stays set: no more sessions for this load of the model.
                Err(e) => tracing::warn!(model = id, error = format!("{e:#}"), "could not add a session"),
            }
        });
    }

    /// Builds, warms up and starts one more session of `model`: the number it then has.
    /// Blocking.
    fn add_session(&self, model: &LoadedModel) -> anyhow::Result<usize> {
        let mut backend = self.runtime.load_session(&model.spec)?;
        backend.run(&[&model.probe]).context("warm-up run failed")?;
        start_session(model, backend, self.options.queue_capacity, Arc::clone(&self.metrics))
    }

    /// Starts loading `id` in a task of its own: it finishes (and records its outcome) whether
    /// or not anyone still waits for it.
    fn start_load(self: &Arc<Self>, id: &str, spec: Arc<ModelSpec>, slot: &Arc<Slot>) -> Load {
        let (cache, slot, id) = (Arc::clone(self), Arc::clone(slot), id.to_owned());
        let task = tokio::spawn(async move {
            let result = cache.load(&id, spec, &slot).await;
            if let Ok(model) = &result {
                let _ = slot.model.set(Arc::clone(model));
            }
            // Waiters hold the result already; the next request after a failure sees the backoff.
            *slot.loading.lock() = None;
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(ModelError::failed(format!("the load task failed: {e}")))) }
            .boxed()
            .shared()
    }

    /// Resident bytes of the loaded models.
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.slots.iter().filter(|s| s.model.initialized()).map(|s| s.resident.load(Ordering::Relaxed)).sum()
    }

    /// Installs a new set of specs (configuration reload). Models whose spec changed or was
    /// removed leave the cache; requests already holding them finish first.
    pub(crate) fn replace_specs(&self, specs: BTreeMap<String, ModelSpec>) {
        let mut current = self.specs.write();
        let changed: Vec<String> = current
            .iter()
            .filter(|(id, old)| specs.get(*id).is_none_or(|new| new != old.as_ref()))
            .map(|(id, _)| id.clone())
            .collect();
        *current = specs.into_iter().map(|(id, spec)| (id, Arc::new(spec))).collect();
        drop(current);
        for id in changed {
            self.sizes.remove(&id);
            self.chosen.remove(&id);
            self.resolved.remove(&id);
            if self.remove(&id).is_some() {
                tracing::info!(model = id, "model unloaded: its configuration changed or was removed");
            }
        }
    }

    fn check_backoff(&self, id: &str, slot: &Slot) -> Result<(), ModelError> {
        let failure = slot.failure.lock();
        match failure.as_ref() {
            Some(f) if f.retry_at > Instant::now() => Err(ModelError::Unavailable {
                model: id.to_owned(),
                cause: f.cause.clone(),
                detail: f.detail.clone(),
                retry_after: f.retry_at.saturating_duration_since(Instant::now()).as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    async fn load(
        &self,
        id: &str,
        spec: Arc<ModelSpec>,
        slot: &Slot,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        let _bounded = self.loads.acquire().await.map_err(ModelError::failed)?;
        self.check_backoff(id, slot)?;
        let spec = match self.resolve(id, spec).await {
            Ok(spec) => spec,
            Err(e) => return Err(self.failed(id, slot, e)),
        };
        let _one_build_at_a_time = self.build_lock.lock().await;
        let (spec, chosen) = match self.choose_variant(id, spec).await {
            Ok(chosen) => chosen,
            Err(e) => return Err(self.failed(id, slot, e)),
        };
        let estimate = spec
            .resident_bytes
            .or_else(|| self.sizes.get(id).map(|s| *s))
            .unwrap_or_else(|| 2 * file_size(&spec.onnx));
        free(self.make_room(estimate, id)).await;

        let started = Instant::now();
        let rss_before = resident_set_bytes();
        let loaded = self.build(id, Arc::clone(&spec)).await;
        let seconds = started.elapsed().as_secs_f64();
        let m = &self.metrics;
        match loaded {
            Ok(model) => {
                // Under load, other threads' allocations during a load inflate its RSS growth,
                // and a largest-so-far rule ratchets every size up until the cache thrashes
                // (seen in the multi-tenant benchmark). Reuse of freed memory errs the other
                // way, and freed heap goes back to the OS after each eviction, so a model's
                // size is the smallest of its measurements.
                let measured = resident_set_bytes().saturating_sub(rss_before).max(file_size(&spec.onnx));
                let resident = spec
                    .resident_bytes
                    .unwrap_or_else(|| self.sizes.get(id).map_or(measured, |s| measured.min(*s)));
                slot.resident.store(resident, Ordering::Relaxed);
                *slot.failure.lock() = None;
                self.sizes.insert(id.to_owned(), resident);
                m.model_loads.with_label_values(&[id, "ok"]).inc();
                m.model_load_seconds.with_label_values(&[id]).observe(seconds);
                m.model_resident_bytes.with_label_values(&[id]).set(resident as i64);
                m.model_sessions.with_label_values(&[id]).set(model.sessions.read().len() as i64);
                let resident_mib = resident >> 20;
                match &chosen {
                    Some(Chosen { name, reason }) => {
                        m.model_variant.with_label_values(&[id, name]).set(1);
                        tracing::info!(
                            model = id,
                            variant = name,
                            reason,
                            seconds,
                            resident_mib,
                            "model loaded"
                        );
                    }
                    None => tracing::info!(model = id, seconds, resident_mib, "model loaded"),
                }
                free(self.make_room(resident, id)).await;
                m.cache_resident_bytes.set((self.resident_bytes() + resident) as i64);
                Ok(Arc::new(model))
            }
            Err(e) => Err(self.failed(id, slot, e)),
        }
    }

    /// The variant model `id` serves (or last served) and why; `None` for a model without
    /// variants or one not loaded yet.
    pub(crate) fn variant(&self, id: &str) -> Option<Chosen> {
        self.chosen.get(id).map(|c| c.clone())
    }

    /// Which variant of `spec` serves (see `ModelSpec::variant`), as a spec of its own; a spec
    /// without variants as it is. The choice is kept for the model's next loads.
    async fn choose_variant(
        &self,
        id: &str,
        spec: Arc<ModelSpec>,
    ) -> anyhow::Result<(Arc<ModelSpec>, Option<Chosen>)> {
        let Some(policy) = spec.variant_policy() else { return Ok((spec, None)) };
        let chosen = if policy != AUTO_VARIANT {
            Chosen { name: policy.to_owned(), reason: "pinned in the configuration".to_owned() }
        } else if let Some(kept) = self.variant(id) {
            kept
        } else if self.runtime.fast_int8() == Some(true) && spec.variants.contains_key("int8") {
            Chosen {
                name: "int8".to_owned(),
                reason: "this CPU multiplies int8 exactly on its fast kernels (VNNI, AVX-VNNI or AMX)"
                    .to_owned(),
            }
        } else if spec.variants.len() == 1 {
            let name = spec.variants.keys().next().cloned().unwrap_or_default();
            Chosen { name, reason: "the only variant".to_owned() }
        } else {
            let (runtime, timed) = (Arc::clone(&self.runtime), Arc::clone(&spec));
            tokio::task::spawn_blocking(move || time_variants(runtime.as_ref(), &timed))
                .await
                .context("timing the variants failed")??
        };
        let concrete = spec
            .with_variant(&chosen.name)
            .with_context(|| format!("variant {:?} is not one of the model's variants", chosen.name))?;
        if let Some(previous) = self.chosen.insert(id.to_owned(), chosen.clone())
            && previous.name != chosen.name
        {
            self.metrics.model_variant.with_label_values(&[id, &previous.name]).set(0);
        }
        Ok((Arc::new(concrete), Some(chosen)))
    }

    /// Takes a model whose thread stopped out of the cache: a fresh slot replaces its own (once,
    /// however many requests see it), holding a failure whose backoff the next load waits out.
    fn unload_stopped(&self, id: &str, slot: &Arc<Slot>, model: &LoadedModel, cause: &str) -> ModelError {
        let attempts = if model.health.served() { 1 } else { self.stops.get(id).map_or(1, |n| *n + 1) };
        let backoff = backoff(attempts);
        let failure =
            Failure { retry_at: Instant::now() + backoff, attempts, cause: cause.to_owned(), detail: None };
        let replaced = match self.slots.entry(id.to_owned()) {
            Entry::Occupied(mut entry) if Arc::ptr_eq(entry.get(), slot) => {
                entry.insert(Arc::new(Slot { failure: Mutex::new(Some(failure)), ..Slot::default() }));
                true
            }
            _ => false,
        };
        // The entry's shard lock is released here: `resident_bytes` reads every shard.
        if replaced {
            self.stops.insert(id.to_owned(), attempts);
            self.metrics.model_resident_bytes.with_label_values(&[id]).set(0);
            self.metrics.model_sessions.with_label_values(&[id]).set(0);
            self.metrics.cache_resident_bytes.set(self.resident_bytes() as i64);
            tracing::error!(
                model = id,
                error = cause,
                attempts,
                backoff_s = backoff.as_secs(),
                "model unloaded: it stopped serving; it loads again after the backoff"
            );
        }
        ModelError::Unavailable {
            model: id.to_owned(),
            cause: cause.to_owned(),
            detail: None,
            retry_after: backoff.as_secs().max(1),
        }
    }

    /// Records a failed load: the backoff before the next attempt, the metric, the log line.
    fn failed(&self, id: &str, slot: &Slot, e: anyhow::Error) -> ModelError {
        let cause = format!("{e:#}");
        let detail = e.downcast_ref::<HubError>().map(ToString::to_string);
        let mut failure = slot.failure.lock();
        let attempts = failure.as_ref().map_or(1, |f| f.attempts + 1);
        let backoff = backoff(attempts);
        *failure = Some(Failure {
            retry_at: Instant::now() + backoff,
            attempts,
            cause: cause.clone(),
            detail: detail.clone(),
        });
        self.metrics.model_loads.with_label_values(&[id, "error"]).inc();
        tracing::error!(
            model = id,
            error = cause,
            attempts,
            backoff_s = backoff.as_secs(),
            "model failed to load"
        );
        ModelError::Unavailable { model: id.to_owned(), cause, detail, retry_after: backoff.as_secs() }
    }

    /// A hub model's spec, complete: its files fetched into the Hugging Face cache (or found
    /// there) and its snapshot read as an export folder. Any other spec as it is.
    async fn resolve(&self, id: &str, spec: Arc<ModelSpec>) -> anyhow::Result<Arc<ModelSpec>> {
        if spec.hf.is_none() {
            return Ok(spec);
        }
        if let Some(resolved) = self.resolved.get(id) {
            return Ok(Arc::clone(resolved.value()));
        }
        let started = Instant::now();
        let snapshot = hub::fetch(&spec).await?;
        let complete = ModelSpec {
            hf: None,
            revision: None,
            sha256: BTreeMap::new(),
            path: Some(snapshot),
            ..(*spec).clone()
        };
        // Reading the folder's files (the tokenizer's may be tens of MB) is blocking work.
        let (complete, problems) = tokio::task::spawn_blocking(move || {
            let mut complete = complete;
            let mut problems = folder::derive(&mut complete);
            problems.extend(complete.problems());
            (complete, problems)
        })
        .await
        .context("reading the hub model's folder failed")?;
        if !problems.is_empty() {
            anyhow::bail!("{}: {}", spec.hf.as_deref().unwrap_or_default(), problems.join("; "));
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(model = id, repo = spec.hf, seconds, "hub files ready");
        let complete = Arc::new(complete);
        self.resolved.insert(id.to_owned(), Arc::clone(&complete));
        Ok(complete)
    }

    /// Tokenizer, backend, one warm-up run and the inference thread, on the blocking pool.
    async fn build(&self, id: &str, spec: Arc<ModelSpec>) -> anyhow::Result<LoadedModel> {
        let (runtime, options, metrics, id) =
            (Arc::clone(&self.runtime), self.options.clone(), Arc::clone(&self.metrics), id.to_owned());
        tokio::task::spawn_blocking(move || {
            // One session to start with; the cache adds more while every one is busy.
            let (encoder, mut backend) = runtime.load(&spec)?;
            // The first run allocates what every later one reuses; pay it here, not on a request.
            // The threads keep the input to tell a broken model from bad inputs later.
            let warm = encoder.encode(&["warm up".to_owned()], &EncodeOptions::truncating())?;
            backend.run(&warm.iter().collect::<Vec<_>>()).context("warm-up run failed")?;
            let probe = warm.into_iter().next().context("the warm-up input did not tokenize")?;
            let model = LoadedModel {
                id,
                encoder: Arc::new(encoder),
                sessions: RwLock::new(Vec::new()),
                batching: batching_for(&spec, options.batching),
                spec,
                probe,
                growing: AtomicBool::new(false),
                queued: Arc::new(QueuedTokens::new(
                    options.max_queue_tokens,
                    options.max_tenant_queue_percent,
                )),
                health: Arc::new(Health::default()),
                tokenizers: options.tokenizers,
            };
            start_session(&model, backend, options.queue_capacity, metrics)?;
            Ok(model)
        })
        .await
        .context("model load task failed")?
    }

    /// Evicts least recently used idle models until `needed` more bytes fit in the budget, and
    /// returns them for [`free`].
    fn make_room(&self, needed: u64, loading: &str) -> Vec<Arc<LoadedModel>> {
        let mut evicted = Vec::new();
        let budget = self.options.max_bytes;
        if budget == 0 {
            return evicted;
        }
        while self.resident_bytes() + needed > budget {
            // Idle models first, least recently used first. A busy one leaves the cache too,
            // but its memory is freed only when its last request is answered.
            let victim = self
                .slots
                .iter()
                .filter(|s| s.key() != loading && !self.options.pinned.contains(s.key()))
                .filter_map(|s| {
                    let busy = Arc::strong_count(s.model.get()?) > 1;
                    Some(((busy, s.last_used.load(Ordering::Relaxed)), s.key().clone()))
                })
                .min()
                .map(|(_, id)| id);
            let Some(victim) = victim else {
                tracing::warn!(
                    model = loading,
                    resident_mib = self.resident_bytes() >> 20,
                    budget_mib = budget >> 20,
                    "over the cache budget with only pinned models to evict"
                );
                return evicted;
            };
            evicted.extend(self.remove(&victim));
            self.metrics.model_evictions.with_label_values(&[&victim]).inc();
            tracing::info!(model = victim, "model evicted (least recently used)");
        }
        evicted
    }

    /// Takes a model out of the cache. Its memory is freed once no request holds it.
    fn remove(&self, id: &str) -> Option<Arc<LoadedModel>> {
        let model = self.slots.remove(id).and_then(|(_, slot)| slot.model.get().cloned());
        self.metrics.model_resident_bytes.with_label_values(&[id]).set(0);
        self.metrics.model_sessions.with_label_values(&[id]).set(0);
        self.metrics.cache_resident_bytes.set(self.resident_bytes() as i64);
        model
    }
}

/// Loads each variant of `spec` in turn and times one batch of 32 sentences on it (the best of
/// three runs after a warm-up): the fastest serves. Blocking.
fn time_variants(runtime: &dyn ModelLoader, spec: &ModelSpec) -> anyhow::Result<Chosen> {
    let texts: Vec<String> = TIMING_TEXTS.iter().cycle().take(32).map(|t| (*t).to_owned()).collect();
    let mut timings = Vec::new();
    for name in spec.variants.keys() {
        let variant = spec.with_variant(name).context("a listed variant")?;
        let (encoder, mut backend) = runtime.load(&variant).with_context(|| format!("variant {name}"))?;
        let encoded = encoder.encode(&texts, &EncodeOptions::truncating())?;
        let batch: Vec<_> = encoded.iter().collect();
        backend.run(&batch).with_context(|| format!("variant {name}: warm-up run failed"))?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            backend.run(&batch).with_context(|| format!("variant {name}: timed run failed"))?;
            best = best.min(started.elapsed());
        }
        timings.push((best, name.clone()));
    }
    timings.sort();
    let listed: Vec<String> =
        timings.iter().map(|(t, name)| format!("{name} {:.1} ms", t.as_secs_f64() * 1e3)).collect();
    let (_, name) = timings.into_iter().next().context("no variants")?;
    Ok(Chosen { name, reason: format!("timed on this CPU, per run of 32 sentences: {}", listed.join(", ")) })
}

/// Starts an inference thread for `backend` (warmed up) as `model`'s next session: the number
/// of sessions it then has.
fn start_session(
    model: &LoadedModel,
    backend: Box<dyn Backend>,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
) -> anyhow::Result<usize> {
    let mut sessions = model.sessions.write();
    let spawned = worker::spawn(
        model.id.clone(),
        sessions.len(),
        backend,
        model.probe.clone(),
        model.batching,
        queue_capacity,
        Arc::clone(&model.queued),
        Arc::clone(&model.health),
        metrics,
    )
    .context("cannot start the inference thread")?;
    sessions.push(Session { queue: spawned.queue, worker: spawned.handle, outstanding: Arc::default() });
    Ok(sessions.len())
}

/// Shuts down evicted models nobody else holds, waits for their sessions to drop and hands the
/// memory back to the OS, so the next load's RSS growth is its own. Models still in use are
/// freed by their last request instead.
async fn free(models: Vec<Arc<LoadedModel>>) {
    if models.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for model in models {
            if let Ok(model) = Arc::try_unwrap(model) {
                model.shut_down();
            }
        }
        memory::release_free_memory();
    })
    .await;
}

/// Bytes of logits one run of a sparse model may hold: its output is `[batch, seq, vocab]`
/// floats (30,522 per token for a BERT vocabulary), so its runs are bounded in padded tokens by
/// this rather than by `max_batch_tokens` alone.
const SPARSE_LOGITS_BYTES: usize = 256 << 20;

/// The batch sizes for `spec`: the server's, with a sparse model's padded tokens per run cut so
/// that its logits fit in [`SPARSE_LOGITS_BYTES`].
fn batching_for(spec: &ModelSpec, sizes: BatchSizes) -> BatchSizes {
    match spec.task() {
        Task::Sparse => {
            let per_token = 4 * spec.dimensions.max(1);
            BatchSizes {
                max_batch_tokens: sizes.max_batch_tokens.min(SPARSE_LOGITS_BYTES / per_token).max(1),
                ..sizes
            }
        }
        Task::Embed | Task::Rerank => sizes,
    }
}
