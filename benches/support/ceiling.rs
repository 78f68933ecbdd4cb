//! The in-process ceiling: a model's backend driven directly, with no HTTP, no queue and no
//! other work, built as the server builds it. Benchmarks and load tests measure the server
//! against it in the same run, since this machine's speed drifts from hour to hour.
//! Shared by `benches/serve.rs` and `load-tests/` (each includes this file as a module).

use std::time::{Duration, Instant};

use embedserve::Settings;
use embedserve::models::engine::ModelLoader;
use embedserve::models::engine::onnx::{OrtLoader, SessionOptions};
use embedserve::models::engine::tokenize::EncodeOptions;

/// Short sentences, like most requests in production: what the benchmarks and load tests send.
pub const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn sentences into vectors of numbers.",
    "A short sentence, like most requests in production.",
    "The train to the airport leaves every fifteen minutes.",
    "She opened the window and let the cool air in.",
    "Search results improve when queries and documents share a space.",
    "Our service answers many tenants from one process.",
    "Rust makes the fast path safe to change.",
];

/// Embeddings/s of `model` for each batch size in `batches`, tokenizing and running `texts`
/// (cycled to fill the batch) for `each` per batch size, after one warm-up run.
pub fn embeddings_per_second(
    settings: &Settings,
    model: &str,
    texts: &[&str],
    batches: &[usize],
    each: Duration,
) -> anyhow::Result<Vec<f64>> {
    let spec = settings.models.get(model).ok_or_else(|| anyhow::anyhow!("no model `{model}` in config"))?;
    let options =
        SessionOptions { intra_threads: settings.intra_threads(), cpu_arena: settings.runtime.cpu_arena };
    let runtime = OrtLoader::new(settings.onnxruntime_path().as_deref(), options)?;
    let (encoder, mut backend) = runtime.load(spec)?;
    let mut rate = |batch: usize| -> anyhow::Result<f64> {
        let inputs: Vec<String> = texts.iter().cycle().take(batch).map(|s| s.to_string()).collect();
        let mut run = || -> anyhow::Result<()> {
            let encoded = encoder.encode(&inputs, &EncodeOptions::truncating())?;
            backend.run(&encoded.iter().collect::<Vec<_>>())?;
            Ok(())
        };
        run()?;
        let started = Instant::now();
        let mut done = 0;
        while started.elapsed() < each {
            run()?;
            done += batch;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };
    batches.iter().map(|&b| rate(b)).collect()
}
