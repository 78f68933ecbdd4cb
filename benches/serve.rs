//! `make bench`: figures, not assertions, measured in one run on this machine.
//!
//! - cold start: process spawn to the first 200 on `/v1/embed`, median of 5;
//! - one short sentence over HTTP: p50 and p99;
//! - embeddings/s at 1, 8, 32 and 64 concurrent one-sentence clients, beside an in-process loop
//!   over the same ONNX Runtime session at batch 1 and 32 (the ceiling), and their ratio;
//! - the server's peak resident memory with both default models loaded;
//! - 20 tenants with a private copy of the model each under the 1 GiB cache.
//!
//! All of it for the previous default model (int8 weights stored, fp32 compute) and the
//! int8-compute default, one after the other in the same run, with their ratios.
//!
//! The scenarios under load (many tenants, a noisy neighbour, a spike, mixed lengths) are
//! the load tests' (`make load-test`).
//!
//! The load generator shares the machine's cores with the server, as any one-machine
//! benchmark does; the ratio to the in-process ceiling is the figure to compare.

use std::path::Path;
use std::time::Duration;

use embedserve::Settings;
use support::ceiling::{SENTENCES, embeddings_per_second};
use support::http::{
    Endpoint, KEY, MODEL, THROUGHPUT_SECONDS, cold_start, cpu_seconds, latency, peak_rss_mib, throughput,
};

#[allow(dead_code)] // each bench uses its own part of the shared support
mod support {
    pub mod ceiling;
    pub mod http;
}

/// One model's figures, measured with the same steps.
struct Figures {
    cold_ms: [f64; 3],
    p50_ms: f64,
    p99_ms: f64,
    /// (clients, embeddings/s, server CPU ms per embedding, inputs per run)
    server: Vec<(usize, f64, f64, f64)>,
    ceiling_b1: f64,
    ceiling_b32: f64,
    ceiling_cpu_ms: f64,
    peak_rss_mib: f64,
}

fn measure(rt: &tokio::runtime::Runtime, config: &Path) -> Figures {
    let mut colds: Vec<f64> = (0..5)
        .map(|_| {
            let (ms, mut child, ..) = rt.block_on(cold_start(config));
            child.kill().ok();
            child.wait().ok();
            ms
        })
        .collect();
    colds.sort_by(f64::total_cmp);

    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(config));
    let base = format!("http://127.0.0.1:{port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    // Both default models resident, as `make run` serves them: acme's private paraphrase-l3 too.
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/embed"))
            .bearer_auth(KEY)
            .json(&serde_json::json!({ "model": "paraphrase-l3", "input": SENTENCES[0] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let (p50_ms, p99_ms) = rt.block_on(latency(&Endpoint::embedserve(&base), 500));
    let mut rates = Vec::new();
    for clients in [1, 8, 32, 64] {
        let before = rt.block_on(batch_sizes(&metrics));
        let (cpu, started) = (cpu_seconds(server.id()), std::time::Instant::now());
        let rate = rt.block_on(throughput(&Endpoint::embedserve(&base), clients));
        let cpu_ms = (cpu_seconds(server.id()) - cpu) / (rate * started.elapsed().as_secs_f64()) * 1e3;
        let after = rt.block_on(batch_sizes(&metrics));
        rates.push((clients, rate, cpu_ms, (after.0 - before.0) / (after.1 - before.1)));
    }
    let peak_rss_mib = peak_rss_mib(server.id());
    server.kill().ok();
    server.wait().ok();

    let settings = Settings::load(config).unwrap();
    let each = Duration::from_secs(THROUGHPUT_SECONDS);
    let ceiling = embeddings_per_second(&settings, MODEL, &SENTENCES, &[1], each).unwrap();
    let (cpu, started) = (cpu_seconds(std::process::id()), std::time::Instant::now());
    let b32 = embeddings_per_second(&settings, MODEL, &SENTENCES, &[32], each).unwrap()[0];
    // The loop runs one session at batch 32; its CPU per embedding is the floor to compare with.
    let ceiling_cpu_ms =
        (cpu_seconds(std::process::id()) - cpu) / (b32 * started.elapsed().as_secs_f64()) * 1e3;
    Figures {
        cold_ms: [colds[2], colds[0], colds[4]],
        p50_ms,
        p99_ms,
        server: rates,
        ceiling_b1: ceiling[0],
        ceiling_b32: b32,
        ceiling_cpu_ms,
        peak_rss_mib,
    }
}

fn print(name: &str, f: &Figures) {
    println!("{name}");
    println!(
        "  cold start (spawn -> first 200 on /v1/embed), 5 runs: median {:.0} ms (min {:.0}, max {:.0})",
        f.cold_ms[0], f.cold_ms[1], f.cold_ms[2]
    );
    println!(
        "  one short sentence over HTTP, 500 sequential: p50 {:.2} ms, p99 {:.2} ms",
        f.p50_ms, f.p99_ms
    );
    println!("  throughput, one sentence per request, {THROUGHPUT_SECONDS} s each:");
    for (clients, rate, cpu_ms, per_run) in &f.server {
        println!(
            "    server, {clients:>2} concurrent clients: {rate:>7.1} embeddings/s, server CPU {cpu_ms:.2} ms per embedding \
             ({per_run:.1} inputs per run on average)"
        );
    }
    println!("    in-process session, batch  1: {:>7.1} embeddings/s", f.ceiling_b1);
    println!(
        "    in-process session, batch 32: {:>7.1} embeddings/s, CPU {:.2} ms per embedding (the ceiling)",
        f.ceiling_b32, f.ceiling_cpu_ms
    );
    for (clients, rate, cpu_ms, _) in &f.server {
        println!(
            "    server/ceiling at {clients:>2} clients: {:.0}% of the throughput, {:.0}% of the CPU per embedding",
            100.0 * rate / f.ceiling_b32,
            100.0 * cpu_ms / f.ceiling_cpu_ms
        );
    }
    println!("  server peak resident memory (VmHWM): {:.0} MiB", f.peak_rss_mib);
}

/// 20 tenants, each with a private copy of the model at `onnx`, each embedding once in turn
/// under the default 1 GiB cache: (models resident at the end, evictions, mean measured size of
/// one model in MiB, server peak RSS in MiB).
fn capacity(rt: &tokio::runtime::Runtime, repo: &Path, onnx: &str, level: &str) -> (usize, f64, f64, f64) {
    let mut text = std::fs::read_to_string(repo.join("config/default.toml"))
        .unwrap()
        .replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    for i in 0..20 {
        text.push_str(&format!(
            "\n[tenants.t{i}]\nkeys = [\"{}\"]\nmodels = []\ndefault_model = \"own\"\n\
             limits = {{ requests_per_second = 1000, burst = 1000, tokens_per_minute = 100000000, max_inputs = 64 }}\n\
             [tenants.t{i}.private_models.own]\nonnx = \"{}/{onnx}\"\n\
             tokenizer = \"{}/assets/models/minilm-uncased-tokenizer.json\"\n\
             inputs = [\"input_ids\", \"attention_mask\", \"token_type_ids\"]\noutput = \"last_hidden_state\"\n\
             pooling = \"mean\"\nmax_tokens = 256\ndimensions = 384\ngraph_optimization = \"{level}\"\n",
            embedserve::config::keys::hash_key(&format!("t{i}-key")),
            repo.display(),
            repo.display(),
        ));
    }
    let config = repo.join("target/bench-capacity.toml");
    std::fs::write(&config, text).unwrap();
    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(&config));
    let metrics = rt.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..20 {
            let r = client
                .post(format!("http://127.0.0.1:{port}/v1/embed"))
                .bearer_auth(format!("t{i}-key"))
                .json(&serde_json::json!({ "input": SENTENCES[0] }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "tenant t{i}: {}", r.text().await.unwrap());
        }
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap()
    });
    let rss = peak_rss_mib(server.id());
    server.kill().ok();
    server.wait().ok();
    let samples = |name: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("/own"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect()
    };
    let sizes: Vec<f64> =
        samples("embedserve_model_resident_bytes").into_iter().filter(|b| *b > 0.0).collect();
    let evictions = samples("embedserve_model_evictions_total").iter().sum::<f64>() + 0.0;
    let mean = sizes.iter().sum::<f64>() / sizes.len().max(1) as f64 / 1048576.0;
    (sizes.len(), evictions, mean, rss)
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = repo.join("config/default.toml");
    // The same configuration with the models the defaults used to be: MiniLM with int8 weights
    // stored and fp32 computed (assets/models/minilm-l6-int8-storage), paraphrase-L3 in fp32,
    // under the same names.
    let old = repo.join("target/bench-storage-int8.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    // That graph needs ONNX Runtime's optimisations (they fold its Cast/Mul into fp32 weights).
    let swapped = text
        .replace(
            "/assets/models/minilm-l6-int8/model.onnx",
            "/assets/models/minilm-l6-int8-storage/model.onnx",
        )
        .replace("graph_optimization = \"none\"", "graph_optimization = \"all\"");
    assert_ne!(text, swapped, "config/default.toml no longer serves assets/models/minilm-l6-int8");
    std::fs::write(&old, swapped).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("embedserve benchmark, model {MODEL}, {} CPUs", std::thread::available_parallelism().unwrap());
    println!();
    let before = measure(&rt, &old);
    let after = measure(&rt, &config);
    print("int8 storage, fp32 compute (the previous default: assets/models/minilm-l6-int8-storage)", &before);
    println!();
    print("int8 compute (the default: assets/models/minilm-l6-int8)", &after);
    println!();
    println!("int8 compute / int8 storage, same run:");
    for ((clients, old_rate, old_cpu, _), (_, new_rate, new_cpu, _)) in
        before.server.iter().zip(&after.server)
    {
        println!(
            "  {clients:>2} clients: {:.2}x the throughput, {:.2}x the server CPU per embedding",
            new_rate / old_rate,
            new_cpu / old_cpu
        );
    }
    println!("  ceiling at batch 32: {:.2}x", after.ceiling_b32 / before.ceiling_b32);
    println!("  one sentence p50: {:.2} -> {:.2} ms", before.p50_ms, after.p50_ms);
    println!("  cold start median: {:.0} -> {:.0} ms", before.cold_ms[0], after.cold_ms[0]);
    println!("  peak resident memory: {:.0} -> {:.0} MiB", before.peak_rss_mib, after.peak_rss_mib);
    println!();
    println!("20 tenants with a private copy each, one request per tenant, 1 GiB model cache:");
    for (name, onnx, level) in [
        ("int8 storage", "assets/models/minilm-l6-int8-storage/model.onnx", "all"),
        ("int8 compute", "assets/models/minilm-l6-int8/model.onnx", "none"),
    ] {
        let (resident, evictions, mib, rss) = capacity(&rt, repo, onnx, level);
        println!(
            "  {name}: {resident} of 20 resident at the end, {evictions:.0} evictions, {mib:.0} MiB measured per model, \
             server peak RSS {rss:.0} MiB"
        );
    }
}

/// The server's `embedserve_batch_size` histogram: (sum, count).
async fn batch_sizes(metrics: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (value("embedserve_batch_size_sum"), value("embedserve_batch_size_count"))
}
