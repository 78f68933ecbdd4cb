//! `make bench`: figures, not assertions, measured in one run on this machine.
//!
//! For each variant of `minilm-l6` (`fp32`, sentence-transformers' exact vectors, and `int8`,
//! the default's graph), pinned, one after the other in the same run:
//! - cold start: process spawn to the first 200 on `/v1/embed`, median of 5;
//! - one short sentence over HTTP: p50 and p99;
//! - embeddings/s at 1, 8, 32 and 64 concurrent one-sentence clients, beside an in-process loop
//!   over the model's sessions set up as the server sets them up (`runtime.sessions_per_model`)
//!   and over one session using every CPU, at batch 32: the faster is the ceiling;
//! - the server's peak resident memory with the model and acme's private paraphrase-l3 loaded;
//! - 20 tenants with a private copy of the model each under the 1 GiB cache.
//!
//! Then which variant `variant = "auto"` serves on this CPU, and why. The CPU is named first:
//! int8's speed depends on it.
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
    Endpoint, KEY, THROUGHPUT_SECONDS, cold_start, cpu_seconds, latency, peak_rss_mib, throughput_and_p99,
};

#[allow(dead_code)] // each bench uses its own part of the shared support
mod support {
    pub mod ceiling;
    pub mod cpu;
    pub mod http;
}

/// The model with variants, as config/default.toml lists it.
const MODEL: &str = "minilm-l6";
/// Its variants: (name, ONNX file, graph optimisation), as config/default.toml lists them.
const VARIANTS: [(&str, &str, &str); 2] = [
    ("fp32", "assets/models/minilm-l6-fp32/model.onnx", "all"),
    ("int8", "assets/models/minilm-l6-int8/model.onnx", "none"),
];

/// One model's figures, measured with the same steps.
struct Figures {
    cold_ms: [f64; 3],
    p50_ms: f64,
    p99_ms: f64,
    /// (clients, embeddings/s, server CPU ms per embedding, inputs per run, p99 ms)
    server: Vec<(usize, f64, f64, f64, f64)>,
    /// In-process at batch 32: (embeddings/s, CPU ms per embedding) with the server's sessions,
    /// then with one session using every CPU.
    served_b32: (f64, f64),
    one_b32: (f64, f64),
    peak_rss_mib: f64,
    sessions: usize,
}

impl Figures {
    /// The faster of the two in-process setups: (embeddings/s, CPU ms per embedding).
    fn ceiling(&self) -> (f64, f64) {
        if self.served_b32.0 >= self.one_b32.0 { self.served_b32 } else { self.one_b32 }
    }
}

fn measure(rt: &tokio::runtime::Runtime, config: &Path) -> Figures {
    let mut colds: Vec<f64> = (0..5)
        .map(|_| {
            let (ms, mut child, ..) = rt.block_on(cold_start(config, MODEL));
            child.kill().ok();
            child.wait().ok();
            ms
        })
        .collect();
    colds.sort_by(f64::total_cmp);

    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(config, MODEL));
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
        let (rate, p99) = rt.block_on(throughput_and_p99(&Endpoint::embedserve(&base), clients));
        let cpu_ms = (cpu_seconds(server.id()) - cpu) / (rate * started.elapsed().as_secs_f64()) * 1e3;
        let after = rt.block_on(batch_sizes(&metrics));
        rates.push((clients, rate, cpu_ms, (after.0 - before.0) / (after.1 - before.1), p99));
    }
    let peak_rss_mib = peak_rss_mib(server.id());
    server.kill().ok();
    server.wait().ok();

    let settings = Settings::load(config).unwrap();
    let each = Duration::from_secs(THROUGHPUT_SECONDS);
    // Each loop's CPU per embedding is the floor to compare the server's with.
    let timed = |rate: &dyn Fn() -> f64| {
        let (cpu, started) = (cpu_seconds(std::process::id()), std::time::Instant::now());
        let rate = rate();
        (rate, (cpu_seconds(std::process::id()) - cpu) / (rate * started.elapsed().as_secs_f64()) * 1e3)
    };
    let sessions = settings.sessions_per_model();
    let served_b32 =
        timed(&|| embeddings_per_second(&settings, MODEL, &SENTENCES, &[32], each, sessions).unwrap()[0]);
    let one_b32 = timed(&|| embeddings_per_second(&settings, MODEL, &SENTENCES, &[32], each, 1).unwrap()[0]);
    Figures {
        cold_ms: [colds[2], colds[0], colds[4]],
        p50_ms,
        p99_ms,
        server: rates,
        served_b32,
        one_b32,
        sessions,
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
    for (clients, rate, cpu_ms, per_run, p99) in &f.server {
        println!(
            "    server, {clients:>2} concurrent clients: {rate:>7.1} embeddings/s, p99 {p99:.1} ms, server CPU {cpu_ms:.2} ms \
             per embedding ({per_run:.1} inputs per run on average)"
        );
    }
    println!(
        "    in-process, {} session(s) as the server runs them, batch 32: {:>7.1} embeddings/s, CPU {:.2} ms per embedding",
        f.sessions, f.served_b32.0, f.served_b32.1
    );
    println!(
        "    in-process, one session on every CPU, batch 32: {:>7.1} embeddings/s, CPU {:.2} ms per embedding",
        f.one_b32.0, f.one_b32.1
    );
    let (ceiling, ceiling_cpu) = f.ceiling();
    for (clients, rate, cpu_ms, ..) in &f.server {
        println!(
            "    server/ceiling ({ceiling:.0}/s) at {clients:>2} clients: {:.0}% of the throughput, {:.0}% of the CPU per embedding",
            100.0 * rate / ceiling,
            100.0 * cpu_ms / ceiling_cpu
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
    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(&config, "minilm-l6-int8"));
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
    let text = std::fs::read_to_string(repo.join("config/default.toml"))
        .unwrap()
        .replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("embedserve benchmark, model {MODEL} per variant, one run");
    println!("CPU: {}", support::cpu::describe());
    println!();

    let mut measured = Vec::new();
    for (variant, ..) in VARIANTS {
        let config = repo.join(format!("target/bench-{MODEL}-{variant}.toml"));
        std::fs::write(&config, pinned(&text, variant)).unwrap();
        let figures = measure(&rt, &config);
        print(&format!("variant {variant} (pinned)"), &figures);
        println!();
        measured.push((variant, figures));
    }
    let [(_, fp32), (_, int8)] = &measured[..] else { unreachable!("two variants") };
    println!("int8 / fp32, same run:");
    for ((clients, fp32_rate, fp32_cpu, ..), (_, int8_rate, int8_cpu, ..)) in
        fp32.server.iter().zip(&int8.server)
    {
        println!(
            "  {clients:>2} clients: {:.2}x the throughput, {:.2}x the server CPU per embedding",
            int8_rate / fp32_rate,
            int8_cpu / fp32_cpu
        );
    }
    println!("  ceiling at batch 32: {:.2}x", int8.ceiling().0 / fp32.ceiling().0);
    println!("  one sentence p50: {:.2} -> {:.2} ms", fp32.p50_ms, int8.p50_ms);
    println!("  cold start median: {:.0} -> {:.0} ms", fp32.cold_ms[0], int8.cold_ms[0]);
    println!("  peak resident memory: {:.0} -> {:.0} MiB", fp32.peak_rss_mib, int8.peak_rss_mib);
    println!();

    let config = repo.join(format!("target/bench-{MODEL}-auto.toml"));
    std::fs::write(&config, pinned(&text, "auto")).unwrap();
    let (ms, chosen, reason) = auto(&rt, &config);
    println!("variant = \"auto\" on this CPU: serves {chosen} ({reason}); spawn -> first 200 {ms:.0} ms");
    println!();

    println!("20 tenants with a private copy each, one request per tenant, 1 GiB model cache:");
    for (variant, onnx, level) in VARIANTS {
        let (resident, evictions, mib, rss) = capacity(&rt, repo, onnx, level);
        println!(
            "  {variant}: {resident} of 20 resident at the end, {evictions:.0} evictions, {mib:.0} MiB measured per model, \
             server peak RSS {rss:.0} MiB"
        );
    }
}

/// config/default.toml (`text`) with MODEL's variant set to `variant`, MODEL preloaded and the
/// demo tenant's default.
fn pinned(text: &str, variant: &str) -> String {
    let swap = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "config/default.toml no longer has {from}");
        text.replacen(from, to, 1)
    };
    let out = swap(text, "variant = \"auto\"", &format!("variant = \"{variant}\""));
    let out = swap(&out, "preload = [\"minilm-l6-int8\"]", &format!("preload = [\"{MODEL}\"]"));
    let acme = out.find("[tenants.acme]").expect("config/default.toml has the demo tenant acme");
    let (before, after) = out.split_at(acme);
    format!(
        "{before}{}",
        swap(after, "default_model = \"minilm-l6-int8\"", &format!("default_model = \"{MODEL}\""))
    )
}

/// What `variant = "auto"` serves here: (ms from spawn to the first 200, variant, reason).
fn auto(rt: &tokio::runtime::Runtime, config: &Path) -> (f64, String, String) {
    let (ms, mut server, port, _) = rt.block_on(cold_start(config, MODEL));
    let models: serde_json::Value = rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v1/models"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    server.kill().ok();
    server.wait().ok();
    let entry = models["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == MODEL))
        .unwrap_or_else(|| panic!("/v1/models lists no {MODEL}: {models}"));
    let field =
        |k: &str| entry[k].as_str().unwrap_or_else(|| panic!("{MODEL} has no {k}: {entry}")).to_owned();
    (ms, field("variant"), field("variant_reason"))
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
