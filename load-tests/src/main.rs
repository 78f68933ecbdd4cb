//! embedserve's load tests: six scenarios, run by goose against the repository's release
//! binary on this machine.
//!
//! Each scenario starts its own server with the configuration it needs, drives it with goose,
//! prints throughput, p50/p95/p99 and errors, and leaves goose's HTML report (requests per
//! second and response times over time, with a p50/p95/p99 heatmap) in `load-tests/reports/`.
//! The run's summary, with the machine it ran on, goes to `load-tests/results/summary.md`.
//!
//! `make load-test` runs them all; `make load-test SCENARIOS="ramp spike"` runs some.
//! Latencies are of served (200) requests; 429 and 503 are counted as refusals, anything else
//! as an error. The load generator shares the machine's two cores with the server.

/// The in-process ceiling and the sample sentences, shared with `make bench`.
#[allow(dead_code)] // each user takes its own part of the shared support
#[path = "../../benches/support/ceiling.rs"]
mod ceiling;
/// The rerank workload (one query, 20 passages), shared with `make bench`.
#[path = "../../benches/support/rerank.rs"]
mod rerank;
mod server;
mod workload;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ceiling::SENTENCES;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use rand::Rng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use serde_json::json;

use server::{Repo, Server, UNLIMITED, tenant_table};
use workload::{Embed, Figures, Recorder, Sample, Workload, scenario};

const SCENARIOS: [&str; 6] = ["ramp", "multi-tenant", "noisy-neighbour", "spike", "mixed-lengths", "rerank"];
const MODEL: &str = "minilm-l6-int8";

struct Run {
    repo: Repo,
    binary: PathBuf,
    reports: PathBuf,
    summary: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chosen: Vec<String> = std::env::args().skip(1).collect();
    for name in &chosen {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!("unknown scenario `{name}`; the scenarios are {}", SCENARIOS.join(", "));
        }
    }
    let repo = Repo(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf());
    let binary = std::env::var_os("EMBEDSERVE_BIN")
        .map_or_else(|| repo.0.join("target/release/embedserve"), PathBuf::from);
    let reports = repo.0.join("load-tests/reports");
    std::fs::create_dir_all(&reports)?;
    let mut run = Run { summary: machine(&repo.0), repo, binary, reports };
    println!("{}", run.summary);
    for name in SCENARIOS.iter().filter(|s| chosen.is_empty() || chosen.iter().any(|c| c == *s)) {
        println!("\n=== {name}");
        let section = match *name {
            "ramp" => ramp(&run).await,
            "multi-tenant" => multi_tenant(&run).await,
            "noisy-neighbour" => noisy_neighbour(&run).await,
            "spike" => spike(&run).await,
            "mixed-lengths" => mixed_lengths(&run).await,
            _ => rerank_beside_embeddings(&run).await,
        }
        .with_context(|| format!("scenario {name}"))?;
        println!("{section}");
        run.summary += &section;
    }
    let out = run.repo.0.join("load-tests/results/summary.md");
    std::fs::write(&out, &run.summary)?;
    println!("\nsummary: {}\nreports: {}/*.html", out.display(), run.reports.display());
    Ok(())
}

/// The summary's heading: when, which commit, on what machine.
fn machine(repo: &Path) -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .current_dir(repo)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "# embedserve load tests\n\n- date: {}\n- commit: {}\n- machine: {}, {} CPUs, {} RAM, {}\n- tool: goose 0.19 (load generator on the same machine as the server)\n- model: {MODEL} unless stated; latencies are of served requests\n\n",
        sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        sh("git rev-parse --short HEAD"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("free -h | awk '/Mem:/ {print $2}'"),
        sh("uname -sr"),
    )
}

/// Runs goose with `plan` against `server`; the HTML and Markdown reports are named for `report`.
async fn attack(
    run: &Run,
    server: &Server,
    report: &str,
    plan: &str,
    scenarios: Vec<Scenario>,
) -> anyhow::Result<()> {
    let html = run.reports.join(format!("{report}.html"));
    let md = run.reports.join(format!("{report}.md"));
    let args = [
        "--host",
        &server.base,
        "--test-plan",
        plan,
        "--report-file",
        &html.to_string_lossy(),
        "--report-file",
        &md.to_string_lossy(),
        "--notes",
        &format!("embedserve load test: {report}"),
        "--no-telnet",
        "--no-print-metrics",
        // The load generator shares the server's two cores: it keeps no tables the summary
        // does not use (requests, status codes and the graphs over time stay).
        "--no-transaction-metrics",
        "--no-scenario-metrics",
        "--quiet",
    ];
    let config = GooseConfiguration::parse_args_default(&args)?;
    let mut goose = GooseAttack::initialize_with_config(config)?;
    for s in scenarios {
        goose = goose.register_scenario(s);
    }
    goose.execute().await?;
    Ok(())
}

fn one_sentence(key: &str, model: &str, name: String, i: usize) -> Embed {
    Embed {
        key: key.to_owned(),
        path: "/v1/embed",
        body: json!({ "input": SENTENCES[i % SENTENCES.len()], "model": model }).to_string().into(),
        inputs: 1,
        name,
    }
}

fn table(rows: &[(String, &Figures)]) -> String {
    let mut out = format!("| phase | {} |\n|---|{}\n", Figures::HEADER, "---|".repeat(8));
    for (name, f) in rows {
        let _ = writeln!(out, "| {name} | {} |", f.row());
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn samples_named<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.name == name)
}

/// 1. From 1 to 64 concurrent one-sentence clients, one tenant, beside the in-process ceiling.
async fn ramp(run: &Run) -> anyhow::Result<String> {
    const STEPS: [usize; 5] = [1, 8, 16, 32, 64];
    const HOLD: u64 = 12;
    // The same session as the server's at its best batch size, measured before and after the
    // server's run; the higher figure counts, since this machine's speed drifts.
    let settings = embedserve::Settings::load(&run.repo.0.join("config/default.toml"))?;
    let batches = [1, 8, 32, 64];
    let sessions = settings.sessions_per_model();
    let measure = || {
        ceiling::embeddings_per_second(
            &settings,
            MODEL,
            &SENTENCES,
            &batches,
            Duration::from_secs(4),
            sessions,
        )
    };
    let before = measure()?;

    let config = run.repo.default_config(&[])?;
    let server = Server::start(&run.binary, &run.reports.join("ramp.toml"), &config).await?;
    // Each step: ramp to N users in 1 s, then hold; the first second of a hold is not counted.
    let plan: Vec<String> = STEPS.iter().map(|n| format!("{n},1s;{n},{HOLD}s")).collect();
    let plan = format!("{};0,0s", plan.join(";"));
    let phase = move |elapsed: Duration| {
        let step = (elapsed.as_secs() / (HOLD + 1)) as usize;
        let into = elapsed.as_secs_f64() - (step as u64 * (HOLD + 1)) as f64;
        match STEPS.get(step) {
            Some(n) if into >= 2.0 => format!("{n} clients"),
            _ => "ramping".to_owned(),
        }
    };
    let recorder = Recorder::new();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workload: Arc<dyn Workload> = Arc::new(move |elapsed: Duration| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        one_sentence("acme-dev-key", MODEL, phase(elapsed), i)
    });
    let users = scenario("one sentence", workload, Arc::clone(&recorder), Duration::ZERO)?;
    // The server's inputs per ONNX Runtime run over each hold, read from /metrics as it passes.
    let base = server.metrics_base.clone();
    let batches_per_step = tokio::spawn(async move {
        let started = Instant::now();
        let mut means = Vec::new();
        for step in 0..STEPS.len() as u64 {
            let hold = Duration::from_secs(step * (HOLD + 1) + 2);
            tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
            let before = server::batch_sizes(&base).await;
            tokio::time::sleep(Duration::from_secs(HOLD - 1)).await;
            let after = server::batch_sizes(&base).await;
            means.push((after.0 - before.0) / (after.1 - before.1));
        }
        means
    });
    let (server_cpu, own_cpu, wall) =
        (server.cpu_seconds(), server::cpu_seconds(std::process::id()), Instant::now());
    attack(run, &server, "ramp", &plan, vec![users]).await?;
    let batch_means = batches_per_step.await?;
    let wall = wall.elapsed().as_secs_f64();
    let server_cpu = (server.cpu_seconds() - server_cpu) / wall;
    let own_cpu = (server::cpu_seconds(std::process::id()) - own_cpu) / wall;
    let rss = server.peak_rss_mib();
    drop(server);
    let after = measure()?;
    let ceiling_rates: Vec<f64> = before.iter().zip(&after).map(|(a, b)| a.max(*b)).collect();
    let (best, ceiling) =
        batches.iter().zip(&ceiling_rates).max_by(|a, b| a.1.total_cmp(b.1)).map(|(b, r)| (*b, *r)).unwrap();

    let samples = recorder.samples();
    let counted = (HOLD - 1) as f64;
    let figures: Vec<(String, Figures)> = STEPS
        .iter()
        .map(|n| {
            let name = format!("{n} clients");
            let f = Figures::of(samples_named(&samples, &name), counted);
            (name, f)
        })
        .collect();
    let rows: Vec<(String, &Figures)> = figures.iter().map(|(n, f)| (n.clone(), f)).collect();
    let mut out = format!(
        "## 1. Ramp: 1 to 64 concurrent clients, one sentence each, one tenant\n\n{}\n",
        table(&rows)
    );
    let _ = writeln!(
        out,
        "In-process ceiling (the same session, no HTTP, no queue; the better of a measurement before and one after the server's run), embeddings/s: {}; best: batch {best}, {ceiling:.1}/s.\n",
        batches
            .iter()
            .zip(&ceiling_rates)
            .map(|(b, r)| format!("batch {b} {r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for ((name, f), mean) in figures.iter().zip(&batch_means) {
        let _ = writeln!(
            out,
            "- {name}: {:.0}% of the ceiling, {mean:.1} inputs per ONNX Runtime run on average",
            100.0 * f.embeddings_per_second / ceiling
        );
    }
    let at = |n: usize| &figures[STEPS.iter().position(|s| *s == n).unwrap()].1;
    let (r32, r64) = (at(32).embeddings_per_second / ceiling, at(64).embeddings_per_second / ceiling);
    let _ = writeln!(
        out,
        "\nGoal: at 32 and 64 clients, at least 90% of the ceiling: {:.0}% and {:.0}%, {}.",
        100.0 * r32,
        100.0 * r64,
        verdict(r32 >= 0.9 && r64 >= 0.9)
    );
    let _ = writeln!(
        out,
        "Goal: p99 at 64 clients at most 250 ms: {:.1} ms, {}.",
        at(64).p99_ms,
        verdict(at(64).p99_ms <= 250.0)
    );
    let _ = writeln!(
        out,
        "CPU over the run, in cores of the machine's {}: server {server_cpu:.2}, load generator {own_cpu:.2}. `make bench` prints the same comparison with its own generator.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(out, "Server peak resident memory: {rss:.0} MiB. Report: `reports/ramp.html`.\n");
    Ok(out)
}

/// 2. 100 tenants, Zipf over 3 models, a cache budget that fits 2.
async fn multi_tenant(run: &Run) -> anyhow::Result<String> {
    const TENANTS: usize = 100;
    const USERS: usize = 32;
    const SECONDS: u64 = 40;
    // Zipf (s = 1) over the three models: weights 1, 1/2, 1/3.
    const MODELS: [&str; 3] = ["minilm-l6-int8", "paraphrase-l3", "minilm-l6-int8-cls"];
    // Two of the int8 sessions fit, all three do not: the cache measures each at load (about
    // 35-45 MiB for MiniLM-L6, 25-35 for paraphrase-L3, more when loads overlap under load).
    let budget: u64 = 100 << 20;
    let models = run.repo.models();
    let model = |onnx: &str, inputs: &str, output: &str, pooling: &str, max_tokens: u32| {
        format!(
            "onnx = \"{m}/{onnx}\"\ntokenizer = \"{m}/minilm-uncased-tokenizer.json\"\ninputs = [{inputs}]\noutput = \"{output}\"\npooling = \"{pooling}\"\nmax_tokens = {max_tokens}\ndimensions = 384\ngraph_optimization = \"none\"\n\n",
            m = models.display()
        )
    };
    let bert = "\"input_ids\", \"attention_mask\", \"token_type_ids\"";
    let mut config = format!(
        "default_model = \"minilm-l6-int8\"\n\n[server]\nreload_poll_ms = 0\n\n[runtime]\nonnxruntime = \"{}\"\n\n[cache]\nmax_bytes = {budget}\n\n",
        run.repo.onnxruntime().display()
    );
    config += &format!(
        "[models.minilm-l6-int8]\n{}",
        model("minilm-l6-int8/model.onnx", bert, "last_hidden_state", "mean", 256)
    );
    config += &format!(
        "[models.minilm-l6-int8-cls]\n{}",
        model("minilm-l6-int8/model.onnx", bert, "last_hidden_state", "cls", 256)
    );
    config += &format!(
        "[models.paraphrase-l3]\n{}",
        model("paraphrase-l3-int8/model.onnx", "\"input_ids\", \"attention_mask\"", "461", "none", 128)
    );
    for t in 0..TENANTS {
        config += &tenant_table(&format!("tenant-{t}"), &MODELS, UNLIMITED);
    }
    let server = Server::start(&run.binary, &run.reports.join("multi-tenant.toml"), &config).await?;

    let zipf = WeightedIndex::new([1.0, 0.5, 1.0 / 3.0])?;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workload: Arc<dyn Workload> = Arc::new(move |_: Duration| {
        let mut rng = rand::rng();
        let tenant = rng.random_range(0..TENANTS);
        let model = MODELS[zipf.sample(&mut rng)];
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        one_sentence(&format!("tenant-{tenant}-key"), model, model.to_owned(), i)
    });
    let recorder = Recorder::new();
    let users = scenario("100 tenants", workload, Arc::clone(&recorder), Duration::ZERO)?;
    attack(run, &server, "multi-tenant", &format!("{USERS},2s;{USERS},{SECONDS}s;0,0s"), vec![users]).await?;
    let metrics = server.metrics().await?;
    let rss = server.peak_rss_mib();
    drop(server);

    let samples = recorder.samples();
    let seconds = (SECONDS + 2) as f64;
    let all = Figures::of(&samples, seconds);
    let per_model: Vec<(String, Figures)> =
        MODELS.iter().map(|m| (m.to_string(), Figures::of(samples_named(&samples, m), seconds))).collect();
    let mut rows = vec![("all".to_owned(), &all)];
    rows.extend(per_model.iter().map(|(m, f)| (m.clone(), f)));
    let (hits, misses) = (
        metrics.sum("embedserve_cache_lookups_total", &["result=\"hit\""]),
        metrics.sum("embedserve_cache_lookups_total", &["result=\"miss\""]),
    );
    let mut out = format!(
        "## 2. Many tenants: {TENANTS} tenants, Zipf over 3 models, a budget that fits 2\n\n{USERS} clients for {SECONDS} s; each request picks a tenant at random and a model by Zipf weights 1, 1/2, 1/3; cache budget {} MiB.\n\n{}\n",
        budget >> 20,
        table(&rows)
    );
    let _ = writeln!(
        out,
        "Cache: hit rate {:.1}% ({hits} hits, {misses} misses), {} loads, {} evictions; peak resident memory {rss:.0} MiB. Report: `reports/multi-tenant.html`.\n",
        100.0 * hits / (hits + misses).max(1.0),
        metrics.sum("embedserve_model_loads_total", &["outcome=\"ok\""]),
        metrics.sum("embedserve_model_evictions_total", &[]),
    );
    Ok(out)
}

/// 3. One tenant floods at several times capacity while another sends a steady trickle.
async fn noisy_neighbour(run: &Run) -> anyhow::Result<String> {
    const QUIET_ALONE: u64 = 20;
    const FLOOD: u64 = 30;
    const FLOOD_USERS: usize = 64;
    const FLOOD_INPUTS: usize = 32;
    // A queue of about five seconds of this machine's work; the flood may hold half of it.
    let mut config =
        run.repo.default_config(&[("max_queue_tokens = 200_000", "max_queue_tokens = 40_000")])?;
    config += &tenant_table("flood", &[MODEL], UNLIMITED);
    config += &tenant_table(
        "quiet",
        &[MODEL],
        "requests_per_second = 20, burst = 20, tokens_per_minute = 100000, max_inputs = 16",
    );
    let server = Server::start(&run.binary, &run.reports.join("noisy-neighbour.toml"), &config).await?;

    let quiet_workload = || -> Arc<dyn Workload> {
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Arc::new(move |_: Duration| {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            one_sentence("quiet-key", MODEL, "quiet".to_owned(), i)
        })
    };
    // The quiet tenant: one client, one sentence every 100 ms.
    let trickle = Duration::from_millis(100);
    let alone = Recorder::new();
    let quiet = scenario("quiet", quiet_workload(), Arc::clone(&alone), trickle)?;
    attack(run, &server, "noisy-neighbour-quiet-alone", &format!("1,0s;1,{QUIET_ALONE}s;0,0s"), vec![quiet])
        .await?;

    let both = Recorder::new();
    let flood_input: Vec<String> =
        (0..FLOOD_INPUTS).map(|i| format!("{} (flood {i})", SENTENCES[i % SENTENCES.len()])).collect();
    let flood_body: Arc<str> = json!({ "input": flood_input, "model": MODEL }).to_string().into();
    let flood_workload: Arc<dyn Workload> = Arc::new(move |_: Duration| Embed {
        path: "/v1/embed",
        key: "flood-key".to_owned(),
        body: Arc::clone(&flood_body),
        inputs: FLOOD_INPUTS,
        name: "flood".to_owned(),
    });
    let quiet = scenario("quiet", quiet_workload(), Arc::clone(&both), trickle)?.set_weight(1)?;
    let flood =
        scenario("flood", flood_workload, Arc::clone(&both), Duration::ZERO)?.set_weight(FLOOD_USERS)?;
    let users = FLOOD_USERS + 1;
    attack(run, &server, "noisy-neighbour", &format!("{users},1s;{users},{FLOOD}s;0,0s"), vec![quiet, flood])
        .await?;
    let metrics = server.metrics().await?;
    drop(server);

    let alone = Figures::of(&alone.samples(), QUIET_ALONE as f64);
    let samples = both.samples();
    // The first seconds, while the flood's users start, are left out.
    let steady: Vec<Sample> = samples.into_iter().filter(|s| s.at >= Duration::from_secs(3)).collect();
    let seconds = (FLOOD + 1 - 3) as f64;
    let quiet = Figures::of(samples_named(&steady, "quiet"), seconds);
    let flood = Figures::of(samples_named(&steady, "flood"), seconds);
    let flood_attempts = samples_named(&steady, "flood").count();
    let offered = (flood_attempts * FLOOD_INPUTS) as f64 / seconds;
    let mut out = format!(
        "## 3. Noisy neighbour: a flood beside a steady trickle\n\nThe quiet tenant sends one sentence every 100 ms; the flood tenant runs {FLOOD_USERS} clients sending {FLOOD_INPUTS} sentences each, back to back, waiting out the `Retry-After` of a refusal as the SDKs do. Queue bound 40,000 tokens per model, one tenant may hold 50% of it.\n\n{}\n",
        table(&[
            ("quiet, alone".to_owned(), &alone),
            ("quiet, during the flood".to_owned(), &quiet),
            ("flood".to_owned(), &flood)
        ])
    );
    let _ = writeln!(
        out,
        "The flood offered {offered:.0} embeddings/s (attempts, refused ones included) and was served {:.0}/s: it asked for {:.1}x what it got.",
        flood.embeddings_per_second,
        offered / flood.embeddings_per_second.max(1.0)
    );
    let _ = writeln!(
        out,
        "Refusals: {} tenant-share (429), {} queue-full (503).\n",
        metrics.sum("embedserve_refusals_total", &["reason=\"tenant_queue_share\""]),
        metrics.sum("embedserve_refusals_total", &["reason=\"queue_full\""]),
    );
    let ratio = quiet.p99_ms / alone.p99_ms;
    let _ = writeln!(
        out,
        "Goal: the quiet tenant's p99 within 2x of its p99 alone: {:.1} ms against {:.1} ms, {ratio:.1}x, {}.",
        quiet.p99_ms,
        alone.p99_ms,
        verdict(ratio <= 2.0)
    );
    let _ = writeln!(
        out,
        "Goal: no request of the quiet tenant refused: {} refused, {} errors, {}. Reports: `reports/noisy-neighbour*.html`.\n",
        quiet.refused,
        quiet.errors,
        verdict(quiet.refused == 0 && quiet.errors == 0)
    );
    Ok(out)
}

/// 4. From 0 to 64 clients in one second, then back to one.
async fn spike(run: &Run) -> anyhow::Result<String> {
    let config = run.repo.default_config(&[])?;
    let server = Server::start(&run.binary, &run.reports.join("spike.toml"), &config).await?;
    // 10 s of one client, 64 clients within 1 s held for 20 s, then one client for 10 s.
    let plan = "1,0s;1,10s;64,1s;64,20s;1,0s;1,10s;0,0s";
    let phase = |elapsed: Duration| match elapsed.as_secs_f64() {
        t if t < 10.0 => "before",
        t if t < 31.0 => "spike",
        t if t < 32.0 => "settling",
        _ => "after",
    };
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workload: Arc<dyn Workload> = Arc::new(move |elapsed: Duration| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        one_sentence("acme-dev-key", MODEL, phase(elapsed).to_owned(), i)
    });
    let recorder = Recorder::new();
    let users = scenario("one sentence", workload, Arc::clone(&recorder), Duration::ZERO)?;
    attack(run, &server, "spike", plan, vec![users]).await?;
    drop(server);

    let samples = recorder.samples();
    let before = Figures::of(samples_named(&samples, "before"), 10.0);
    let spike = Figures::of(samples_named(&samples, "spike"), 21.0);
    let after = Figures::of(samples_named(&samples, "after"), 9.0);
    let all = Figures::of(&samples, 41.0);
    let mut out = format!(
        "## 4. Spike: 0 to 64 clients in one second\n\nOne client for 10 s, 64 clients within 1 s held for 20 s, then one client again.\n\n{}\n",
        table(&[("before".to_owned(), &before), ("spike".to_owned(), &spike), ("after".to_owned(), &after)])
    );
    let _ = writeln!(
        out,
        "Goal: no errors other than the documented 429/503 refusals: {} errors, {} refusals, {}.",
        all.errors,
        all.refused,
        verdict(all.errors == 0)
    );
    let recovered = after.errors == 0 && after.refused == 0 && after.p99_ms <= 2.0 * before.p99_ms.max(5.0);
    let _ = writeln!(
        out,
        "Goal: recovers by itself: after the spike p50 {:.1} ms and p99 {:.1} ms against {:.1} ms and {:.1} ms before, {}. Report: `reports/spike.html`.\n",
        after.p50_ms,
        after.p99_ms,
        before.p50_ms,
        before.p99_ms,
        verdict(recovered)
    );
    Ok(out)
}

/// 5. Inputs of 3 to 256 tokens, one per request.
async fn mixed_lengths(run: &Run) -> anyhow::Result<String> {
    const USERS: usize = 32;
    const SECONDS: u64 = 30;
    // One word is one token in this vocabulary; [CLS] and [SEP] make two more.
    const WORDS: [&str; 16] = [
        "time", "people", "water", "light", "house", "world", "music", "river", "table", "window", "garden",
        "city", "paper", "school", "market", "train",
    ];
    let config = run.repo.default_config(&[])?;
    let server = Server::start(&run.binary, &run.reports.join("mixed-lengths.toml"), &config).await?;
    let workload: Arc<dyn Workload> = Arc::new(move |_: Duration| {
        let mut rng = rand::rng();
        let tokens = rng.random_range(3..=256usize);
        let text: Vec<&str> = (0..tokens - 2).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
        let name = match tokens {
            ..=32 => "3-32 tokens",
            33..=128 => "33-128 tokens",
            _ => "129-256 tokens",
        };
        Embed {
            key: "acme-dev-key".to_owned(),
            path: "/v1/embed",
            body: json!({ "input": text.join(" "), "model": MODEL }).to_string().into(),
            inputs: 1,
            name: name.to_owned(),
        }
    });
    let recorder = Recorder::new();
    let users = scenario("mixed lengths", workload, Arc::clone(&recorder), Duration::ZERO)?;
    attack(run, &server, "mixed-lengths", &format!("{USERS},2s;{USERS},{SECONDS}s;0,0s"), vec![users])
        .await?;
    let metrics = server.metrics().await?;
    drop(server);

    let samples = recorder.samples();
    let seconds = (SECONDS + 2) as f64;
    let all = Figures::of(&samples, seconds);
    let buckets: Vec<(String, Figures)> = ["3-32 tokens", "33-128 tokens", "129-256 tokens"]
        .iter()
        .map(|b| (b.to_string(), Figures::of(samples_named(&samples, b), seconds)))
        .collect();
    let mut rows = vec![("all".to_owned(), &all)];
    rows.extend(buckets.iter().map(|(b, f)| (b.clone(), f)));
    let tokens = metrics.sum("embedserve_tokens_total", &[]);
    let runs = metrics.sum("embedserve_batch_tokens_count", &[]);
    let mut out = format!(
        "## 5. Mixed lengths: 3 to 256 tokens\n\n{USERS} clients for {SECONDS} s, one input each, its length uniform over 3 to 256 tokens.\n\n{}\n",
        table(&rows)
    );
    let _ = writeln!(
        out,
        "{:.0} tokens/s served; {:.0} padded tokens per ONNX Runtime run on average. Report: `reports/mixed-lengths.html`.\n",
        tokens / seconds,
        metrics.sum("embedserve_batch_tokens_sum", &[]) / runs.max(1.0)
    );
    Ok(out)
}

/// 6. Rerank (one query, 20 passages) alone, then beside one-sentence embeddings of the tenant.
async fn rerank_beside_embeddings(run: &Run) -> anyhow::Result<String> {
    const RERANKER: &str = "ms-marco-minilm-l12";
    const USERS: usize = 8;
    const HOLD: u64 = 20;
    let requests = rerank::workload(&run.repo.0, 16);
    let bodies: Arc<Vec<Arc<str>>> =
        Arc::new(requests.iter().map(|r| r.body(RERANKER).to_string().into()).collect());
    let config = run.repo.default_config(&[])?;
    let server = Server::start(&run.binary, &run.reports.join("rerank.toml"), &config).await?;
    // The first 2 s of each phase, while users start, are not counted.
    let named =
        |elapsed: Duration, name: String| if elapsed.as_secs() < 2 { "ramping".to_owned() } else { name };
    let reranks = |phase: &'static str| -> Arc<dyn Workload> {
        let (counter, bodies) = (std::sync::atomic::AtomicUsize::new(0), Arc::clone(&bodies));
        Arc::new(move |elapsed: Duration| {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Embed {
                key: "acme-dev-key".to_owned(),
                path: "/v1/rerank",
                body: Arc::clone(&bodies[i % bodies.len()]),
                inputs: rerank::PASSAGES,
                name: named(elapsed, format!("rerank, {phase}")),
            }
        })
    };
    let embeds = |phase: &'static str| -> Arc<dyn Workload> {
        let counter = std::sync::atomic::AtomicUsize::new(0);
        Arc::new(move |elapsed: Duration| {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            one_sentence("acme-dev-key", MODEL, named(elapsed, format!("embed, {phase}")), i)
        })
    };
    let plan = |users: usize| format!("{users},1s;{users},{HOLD}s;0,0s");
    let (alone, together) = (Recorder::new(), Recorder::new());
    let (cpu, wall) = (server.cpu_seconds(), Instant::now());
    let users = scenario("rerank", reranks("alone"), Arc::clone(&alone), Duration::ZERO)?;
    attack(run, &server, "rerank-alone", &plan(USERS), vec![users]).await?;
    let (cpu, wall) = (server.cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
    // Equal weights: goose gives the two scenarios USERS users each.
    let rerank_users = scenario("rerank", reranks("together"), Arc::clone(&together), Duration::ZERO)?;
    let embed_users = scenario("embed", embeds("together"), Arc::clone(&together), Duration::ZERO)?;
    attack(
        run,
        &server,
        "rerank",
        &plan(2 * USERS),
        vec![rerank_users.set_weight(1)?, embed_users.set_weight(1)?],
    )
    .await?;
    let embed_only = Recorder::new();
    let users = scenario("embed", embeds("alone"), Arc::clone(&embed_only), Duration::ZERO)?;
    attack(run, &server, "rerank-embed-alone", &plan(USERS), vec![users]).await?;
    drop(server);

    let settings = embedserve::Settings::load(&run.repo.0.join("config/default.toml"))?;
    let pairs: Vec<(String, Vec<String>)> =
        requests.iter().map(|r| (r.query.clone(), r.passages.clone())).collect();
    let ceiling = ceiling::pairs_per_second(&settings, RERANKER, &pairs, 32, Duration::from_secs(6))?;

    let mut samples = alone.samples();
    samples.extend(together.samples());
    samples.extend(embed_only.samples());
    let counted = (HOLD - 1) as f64;
    let names = ["rerank, alone", "rerank, together", "embed, alone", "embed, together"];
    let figures: Vec<(String, Figures)> =
        names.iter().map(|n| (n.to_string(), Figures::of(samples_named(&samples, n), counted))).collect();
    let rows: Vec<(String, &Figures)> = figures.iter().map(|(n, f)| (n.clone(), f)).collect();
    let all = Figures::of(&samples, 3.0 * HOLD as f64);
    let mut out = format!(
        "## 6. Rerank beside embeddings\n\n{USERS} clients reranking one query with {} passages of about 60 tokens \
         ({RERANKER}) for {HOLD} s; then as many again embedding one sentence ({MODEL}) beside them; then the \
         embedding clients alone. In rerank rows, embeddings/s counts the pairs scored.\n\n{}\n",
        rerank::PASSAGES,
        table(&rows)
    );
    let rerank_alone = &figures[0].1;
    let _ = writeln!(
        out,
        "In-process ceiling (embedserve's engine on the same pairs at batch 32, no HTTP, no queue): {ceiling:.0} pairs/s; reranking alone the server scores {:.0} pairs/s, {:.0}% of it. Server CPU while reranking alone: {:.2} cores, {:.2} ms per pair.",
        rerank_alone.embeddings_per_second,
        100.0 * rerank_alone.embeddings_per_second / ceiling,
        cpu / wall,
        1e3 * cpu / (rerank_alone.embeddings_per_second * wall).max(1.0)
    );
    let _ = writeln!(
        out,
        "Goal: no errors other than the documented refusals: {} errors, {}. Report: `reports/rerank.html`.\n",
        all.errors,
        verdict(all.errors == 0)
    );
    Ok(out)
}
