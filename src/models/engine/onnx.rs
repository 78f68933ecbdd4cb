//! The ONNX Runtime backend: the process-wide environment, one session per model, and one
//! synchronous `run` from padded token ids to pooled vectors. Nothing here is async: callers
//! run it on a dedicated thread (see `worker`).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, bail};
use ndarray::{Array2, Ix2, Ix3};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use super::tokenize::{Encoded, TextEncoder};
use super::{Backend, ModelLoader, int8, pooling};
use crate::models::spec::{GraphOptimization, InputRole, ModelSpec, Pooling};

/// Loads ONNX Runtime from `path` and creates the environment every session shares. ONNX
/// Runtime allows one environment per process, so later calls return the first one.
/// Fails with a one-line message that says how to fix it.
fn init_runtime(path: Option<&Path>) -> anyhow::Result<Environment> {
    static RUNTIME: Mutex<Option<Environment>> = Mutex::new(None);
    let mut runtime = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = runtime.as_ref() {
        return Ok(env.clone());
    }
    const HOW: &str = "run `make assets` (scripts/fetch_assets.py) to fetch it, or point \
                       ORT_DYLIB_PATH or runtime.onnxruntime in the config at libonnxruntime.so.1.31.1";
    let Some(path) = path else {
        bail!("no ONNX Runtime library configured: {HOW}");
    };
    if !path.is_file() {
        bail!("ONNX Runtime library {} not found: {HOW}", path.display());
    }
    let path = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
    let builder =
        ort::init_from(&path).map_err(|e| anyhow::anyhow!("cannot load ONNX Runtime: {e}; {HOW}"))?;
    let env = builder
        .with_name("embedserve")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
    *runtime = Some(env.clone());
    Ok(env)
}

/// ONNX Runtime as the service's [`Runtime`]: every model's session is built the same way.
pub struct OrtLoader {
    env: Environment,
    options: SessionOptions,
}

impl OrtLoader {
    /// Loads the ONNX Runtime library at `library` (see [`init_runtime`]).
    pub fn new(library: Option<&Path>, options: SessionOptions) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        let env = init_runtime(library)?;
        tracing::info!(ms = started.elapsed().as_secs_f64() * 1e3, "ONNX Runtime loaded");
        Ok(Self { env, options })
    }
}

impl ModelLoader for OrtLoader {
    fn load(&self, spec: &ModelSpec) -> anyhow::Result<(TextEncoder, Box<dyn Backend>)> {
        // The tokenizer parses while ONNX Runtime builds the session: a load pays for the
        // slower of the two, not both.
        let started = std::time::Instant::now();
        let since = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
        let ((encoder, tokenizer_ms), (engine, session_ms)) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| (TextEncoder::for_spec(spec), since(started)));
            let engine = (Engine::load(&self.env, spec, &self.options), since(started));
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| (Err(anyhow::anyhow!("the tokenizer thread panicked")), 0.0));
            (tokenizer, engine)
        });
        tracing::info!(onnx = %spec.onnx.display(), tokenizer_ms, session_ms, "session built");
        Ok((encoder?, Box::new(engine?)))
    }

    fn load_session(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Backend>> {
        let started = std::time::Instant::now();
        let engine = Engine::load(&self.env, spec, &self.options)?;
        let session_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(onnx = %spec.onnx.display(), session_ms, "session built");
        Ok(Box::new(engine))
    }

    fn fast_int8(&self) -> Option<bool> {
        Some(int8::u8s8_is_exact(&self.env))
    }
}

/// How every session is built.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub intra_threads: usize,
    /// ONNX Runtime's CPU memory arena (see `runtime.cpu_arena`).
    pub cpu_arena: bool,
    /// Intra-op threads spin between parallel sections (see `runtime.intra_op_spinning`).
    pub spinning: bool,
}

/// One model's session and what it needs to turn token ids into vectors.
struct Engine {
    session: Session,
    feeds: Vec<(String, InputRole)>,
    output: String,
    pooling: Pooling,
    dimensions: usize,
}

impl Engine {
    /// Creates the session and checks the graph against the spec, so a wrong config fails
    /// at load with a message rather than at the first request.
    fn load(env: &Environment, spec: &ModelSpec, options: &SessionOptions) -> anyhow::Result<Self> {
        let cannot = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("cannot load ONNX model {}: {e}", spec.onnx.display())
        };
        let started = std::time::Instant::now();
        let file = std::fs::File::open(&spec.onnx).map_err(|e| cannot(&e))?;
        // Mapped, not read: the int8 plan reads the graph's structure, not its weights, and
        // where nothing is re-encoded ONNX Runtime reads the file itself; a copy is made only
        // for re-encoding. SAFETY: model files are assets nothing writes while a model loads
        // (a reload replaces a file by renaming, which leaves this mapping's file as it was);
        // the mapping is dropped before this load ends.
        let mapped = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| cannot(&e))?;
        let map_ms = started.elapsed().as_secs_f64() * 1e3;
        let int8 = int8::for_this_cpu(env, &mapped).map_err(|e| cannot(&e))?;
        let int8_ms = started.elapsed().as_secs_f64() * 1e3 - map_ms;
        if let Some(encoded) = &int8 {
            let kernels = encoded.kernels.as_str();
            tracing::info!(onnx = %spec.onnx.display(), int8_kernels = kernels, "int8 weights encoded for this CPU");
        }
        // The file itself where nothing was re-encoded: ONNX Runtime resolves external data
        // (model.onnx_data) next to it.
        let model = match int8.as_ref().and_then(|e| e.bytes.as_deref()) {
            Some(bytes) => Model::Bytes(bytes),
            None => Model::File(&spec.onnx),
        };
        let session = build_session(env, spec, options, model).map_err(|e| cannot(&e))?;
        drop(int8);
        drop(mapped);
        let build_ms = started.elapsed().as_secs_f64() * 1e3 - map_ms - int8_ms;
        tracing::debug!(onnx = %spec.onnx.display(), map_ms, int8_ms, build_ms, "session parts");
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<(&str, Option<usize>)> =
            session.outputs().iter().map(|o| (o.name(), o.dtype().tensor_shape().map(|s| s.len()))).collect();
        let plan = spec
            .plan(&inputs, &outputs)
            .map_err(|problem| anyhow::anyhow!("{}: {problem}", spec.onnx.display()))?;
        Ok(Self {
            feeds: plan.feeds,
            output: plan.output,
            pooling: plan.pooling,
            dimensions: spec.dimensions,
            session,
        })
    }
}

impl Backend for Engine {
    /// Pads to the longest input, runs the graph, pools.
    fn run(&mut self, batch: &[&Encoded]) -> anyhow::Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = batch.iter().map(|e| e.len()).collect();
        let width = lengths.iter().copied().max().unwrap_or(0).max(1);
        let mut ids = Array2::<i64>::zeros((batch.len(), width));
        let mut mask = Array2::<i64>::zeros((batch.len(), width));
        let mut types = Array2::<i64>::zeros((batch.len(), width));
        for (row, enc) in batch.iter().enumerate() {
            for (col, (&id, &ty)) in enc.ids.iter().zip(&enc.type_ids).enumerate() {
                ids[[row, col]] = id;
                mask[[row, col]] = 1;
                types[[row, col]] = ty;
            }
        }
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(self.feeds.len());
        for (name, role) in &self.feeds {
            let array = match role {
                InputRole::InputIds => &ids,
                InputRole::AttentionMask => &mask,
                InputRole::TokenTypeIds => &types,
            };
            inputs.push((Cow::Borrowed(name.as_str()), TensorRef::from_array_view(array)?.into()));
        }
        let outputs = self.session.run(inputs)?;
        let output = outputs[self.output.as_str()].try_extract_array::<f32>()?;
        let vectors = match self.pooling {
            Pooling::None => pooling::rows(output.into_dimensionality::<Ix2>()?),
            pooling => pooling::pool_tokens(output.into_dimensionality::<Ix3>()?, &lengths, pooling),
        };
        if let Some(v) = vectors.iter().find(|v| v.len() != self.dimensions) {
            bail!("model output has {} dimensions, config says {}", v.len(), self.dimensions);
        }
        Ok(vectors)
    }
}

enum Model<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

// Builder errors carry the (non-Send) builder; `?` in an `ort::Result` function drops it.
fn build_session(
    env: &Environment,
    spec: &ModelSpec,
    options: &SessionOptions,
    model: Model<'_>,
) -> ort::Result<Session> {
    use ort::session::builder::GraphOptimizationLevel as Level;
    let level = match spec.graph_optimization {
        GraphOptimization::None => Level::Disable,
        GraphOptimization::Basic => Level::Level1,
        GraphOptimization::Extended => Level::Level2,
        GraphOptimization::All => Level::All,
    };
    let mut builder = Session::builder(env)?
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(options.cpu_arena).build()])?
        .with_intra_threads(options.intra_threads)?
        .with_optimization_level(level)?
        .with_intra_op_spinning(options.spinning)?;
    match model {
        Model::File(path) => builder.commit_from_file(path),
        Model::Bytes(bytes) => builder.commit_from_memory(bytes),
    }
}
