//! The session cache: model id → loaded model, in a `dashmap`. A model loads on first use,
//! exactly once however many requests ask for it at the same moment (single-flight through a
//! `OnceCell` per model); a failed load leaves the slot empty so a later request tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dashmap::DashMap;
use ort::environment::Environment;
use tokio::sync::OnceCell;

use super::LoadedModel;
use super::session::Engine;
use super::spec::ModelSpec;
use super::tokenize::TextEncoder;
use super::worker::{self, BatchLimits};
use crate::error::Error;
use crate::metrics::Metrics;

/// How sessions are built and fed; the same for every model.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    pub intra_threads: usize,
    pub limits: BatchLimits,
    /// Jobs a model's queue holds before requests are refused with 503.
    pub queue_capacity: usize,
}

pub struct ModelCache {
    env: Environment,
    specs: BTreeMap<String, Arc<ModelSpec>>,
    slots: DashMap<String, Arc<OnceCell<Arc<LoadedModel>>>>,
    options: CacheOptions,
    metrics: Arc<Metrics>,
}

impl ModelCache {
    pub fn new(
        env: Environment,
        specs: BTreeMap<String, ModelSpec>,
        options: CacheOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let specs = specs
            .into_iter()
            .map(|(id, spec)| (id, Arc::new(spec)))
            .collect();
        Self {
            env,
            specs,
            slots: DashMap::new(),
            options,
            metrics,
        }
    }

    /// Every configured model, loaded or not.
    pub fn specs(&self) -> &BTreeMap<String, Arc<ModelSpec>> {
        &self.specs
    }

    /// The loaded model `id`, loading it first if needed.
    pub async fn get(&self, id: &str) -> Result<Arc<LoadedModel>, Error> {
        let Some(spec) = self.specs.get(id) else {
            return Err(Error::ModelNotFound(id.to_owned()));
        };
        // Clone the cell out so no dashmap guard is held across the await.
        let slot = Arc::clone(self.slots.entry(id.to_owned()).or_default().value());
        if let Some(model) = slot.get() {
            return Ok(Arc::clone(model));
        }
        slot.get_or_try_init(|| self.load(id, Arc::clone(spec)))
            .await
            .map(Arc::clone)
            .map_err(|cause| Error::ModelUnavailable {
                model: id.to_owned(),
                cause: format!("{cause:#}"),
            })
    }

    async fn load(&self, id: &str, spec: Arc<ModelSpec>) -> anyhow::Result<Arc<LoadedModel>> {
        let timer = Instant::now();
        let (env, options, metrics, model) = (
            self.env.clone(),
            self.options,
            Arc::clone(&self.metrics),
            id.to_owned(),
        );
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
            // The tokenizer parses while ONNX Runtime builds the session: cold start pays
            // for the slower of the two, not both.
            let (encoder, engine) = std::thread::scope(|scope| {
                let tokenizer =
                    scope.spawn(|| TextEncoder::from_file(&spec.tokenizer, spec.max_tokens));
                let engine = Engine::load(&env, &spec, options.intra_threads);
                (tokenizer.join().expect("tokenizer thread panicked"), engine)
            });
            let (encoder, engine) = (encoder?, engine?);
            let queue = worker::spawn(
                model.clone(),
                engine,
                options.limits,
                options.queue_capacity,
                metrics,
            )
            .context("cannot start the inference thread")?;
            Ok(LoadedModel {
                id: model,
                spec,
                encoder: Arc::new(encoder),
                queue,
            })
        })
        .await
        .context("model load task failed")?;
        let seconds = timer.elapsed().as_secs_f64();
        match &loaded {
            Ok(_) => {
                self.metrics
                    .model_loads
                    .with_label_values(&[id, "ok"])
                    .inc();
                self.metrics
                    .model_load_seconds
                    .with_label_values(&[id])
                    .observe(seconds);
                tracing::info!(model = id, seconds, "model loaded");
            }
            Err(e) => {
                self.metrics
                    .model_loads
                    .with_label_values(&[id, "error"])
                    .inc();
                tracing::error!(model = id, error = format!("{e:#}"), "model failed to load");
            }
        }
        loaded.map(Arc::new)
    }
}
