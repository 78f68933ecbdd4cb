//! Settings: one TOML file, then `EMBEDSERVE__SECTION__KEY` environment overrides, validated
//! once at start so that the rest of the service never sees an inconsistent configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
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
    /// The model used when a request names none.
    pub default_model: String,
    pub models: BTreeMap<String, ModelSpec>,
    /// The file these settings came from (for messages and relative paths).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most inputs in one request (413 beyond).
    pub max_inputs: usize,
    /// A request still unanswered after this long gets 504.
    pub request_timeout_ms: u64,
    /// Most inputs ONNX Runtime sees in one run; larger requests run in several.
    pub max_batch_size: usize,
    /// Most padded tokens (longest × count) in one run.
    pub max_batch_tokens: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 2_000_000,
            max_inputs: 256,
            request_timeout_ms: 30_000,
            max_batch_size: 32,
            max_batch_tokens: 16_384,
        }
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` overrides it.
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session; 0 means the CPUs available to the process.
    #[serde(default)]
    pub intra_threads: usize,
}

impl Settings {
    /// Reads `path`, applies environment overrides, resolves relative paths against the
    /// file's folder and validates the result.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!("config file {} not found", path.display());
        }
        let mut settings: Settings = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed("EMBEDSERVE__").split("__"))
            .extract()
            .with_context(|| format!("invalid config {}", path.display()))?;
        settings.source = path.to_path_buf();
        settings.resolve_paths();
        let problems = settings.problems();
        if !problems.is_empty() {
            bail!(
                "invalid config {}:\n  {}",
                path.display(),
                problems.join("\n  ")
            );
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

    pub fn intra_threads(&self) -> usize {
        match self.runtime.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    fn resolve_paths(&mut self) {
        let base = self.source.parent().unwrap_or(Path::new(".")).to_path_buf();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.runtime.onnxruntime.as_mut() {
            resolve(p);
        }
        for spec in self.models.values_mut() {
            resolve(&mut spec.onnx);
            resolve(&mut spec.tokenizer);
        }
    }

    /// Every problem, each as `field: message`, so `check-config` can list them all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.models.contains_key(&self.default_model) {
            out.push(format!(
                "default_model: \"{}\" is not a model in [models]",
                self.default_model
            ));
        }
        for (id, spec) in &self.models {
            out.extend(
                spec.problems()
                    .into_iter()
                    .map(|p| format!("models.{id}.{p}")),
            );
        }
        let s = &self.server;
        for (field, value) in [
            ("max_body_bytes", s.max_body_bytes),
            ("max_inputs", s.max_inputs),
            ("max_batch_size", s.max_batch_size),
            ("max_batch_tokens", s.max_batch_tokens),
            ("request_timeout_ms", s.request_timeout_ms as usize),
        ] {
            if value == 0 {
                out.push(format!("server.{field}: must be at least 1"));
            }
        }
        out
    }
}
