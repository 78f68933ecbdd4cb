//! `make bench`, the embedding cache: the same workloads against the server with the cache off
//! and on (`[cache] embeddings_max_bytes`), one after the other in one run: inputs embedded per
//! second and the server's CPU per input, with 8 clients sending 8-input requests.
//!
//! - distinct: every input new (what the cache costs when it never hits);
//! - 37% repeated: each input, with probability 0.37, one already sent (the share of repeated
//!   rows in a published corpus);
//! - all repeated: inputs drawn from 2,000 already sent.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::http::{KEY, MODEL, THROUGHPUT_SECONDS, cold_start, cpu_seconds};

#[allow(dead_code)] // each bench uses its own part of the shared support
mod support {
    pub mod ceiling;
    pub mod cpu;
    pub mod http;
}

const CLIENTS: usize = 8;
const INPUTS_PER_REQUEST: usize = 8;
const WARM_SET: usize = 2_000;

/// A deterministic stream of distinct sentences of 8-20 words.
fn sentence(i: usize) -> String {
    const WORDS: [&str; 24] = [
        "river", "ledger", "copper", "quietly", "engine", "harvest", "signal", "window", "orbit", "garden",
        "protocol", "amber", "invoice", "migrate", "lantern", "cluster", "velvet", "summit", "parse",
        "meadow", "kernel", "harbor", "ticket", "frost",
    ];
    let mut x = i as u64 * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407;
    let len = 8 + (i % 13);
    let mut words = vec![format!("Item {i}:")];
    for _ in 0..len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        words.push(WORDS[(x >> 33) as usize % WORDS.len()].to_owned());
    }
    words.join(" ") + "."
}

/// The inputs of a workload: `repeat` of them (a fraction) are earlier ones.
fn workload(n: usize, repeat: f64, first_new: usize) -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut fresh = first_new;
    (0..n)
        .map(|_| {
            if (next() % 10_000) as f64 / 10_000.0 < repeat && fresh > 0 {
                sentence(next() as usize % fresh)
            } else {
                fresh += 1;
                sentence(fresh - 1)
            }
        })
        .collect()
}

/// (inputs/s, server CPU ms per input, cache hit ratio).
fn run(rt: &tokio::runtime::Runtime, config: &Path, warm: bool, inputs: Arc<Vec<String>>) -> (f64, f64, f64) {
    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(config, MODEL));
    let base = format!("http://127.0.0.1:{port}/v1/embed");
    let figures = rt.block_on(async {
        let client = reqwest::Client::new();
        if warm {
            for chunk in (0..WARM_SET).collect::<Vec<_>>().chunks(64) {
                let texts: Vec<String> = chunk.iter().map(|&i| sentence(i)).collect();
                let r = client
                    .post(&base)
                    .bearer_auth(KEY)
                    .json(&json!({ "input": texts }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }
        let hits_before = hits(&client, metrics_port).await;
        let next = Arc::new(AtomicUsize::new(0));
        let (cpu, started) = (cpu_seconds(server.id()), Instant::now());
        let deadline = started + Duration::from_secs(THROUGHPUT_SECONDS);
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, base, inputs, next) =
                    (client.clone(), base.clone(), Arc::clone(&inputs), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut done = 0;
                    while Instant::now() < deadline {
                        let at = next.fetch_add(INPUTS_PER_REQUEST, Ordering::Relaxed)
                            % (inputs.len() - INPUTS_PER_REQUEST);
                        let texts = &inputs[at..at + INPUTS_PER_REQUEST];
                        let r = client
                            .post(&base)
                            .bearer_auth(KEY)
                            .json(&json!({ "input": texts }))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                        done += INPUTS_PER_REQUEST;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_ms = (cpu_seconds(server.id()) - cpu) / total as f64 * 1e3;
        let hit_ratio = (hits(&client, metrics_port).await - hits_before) / total as f64;
        (total as f64 / seconds, cpu_ms, hit_ratio)
    });
    server.kill().ok();
    server.wait().ok();
    figures
}

async fn hits(client: &reqwest::Client, metrics_port: u16) -> f64 {
    let text = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("embedserve_embedding_cache_lookups_total") && l.contains("result=\"hit\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("config/default.toml"))
        .unwrap()
        .replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    assert!(text.contains("embeddings_max_bytes = 0"), "config/default.toml sets embeddings_max_bytes");
    let off = repo.join("target/bench-recall-off.toml");
    let on = repo.join("target/bench-recall-on.toml");
    std::fs::write(&off, &text).unwrap();
    std::fs::write(&on, text.replace("embeddings_max_bytes = 0", "embeddings_max_bytes = 67_108_864"))
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("embedding cache, minilm-l6-int8, {CLIENTS} clients x {INPUTS_PER_REQUEST} inputs per request");
    println!("CPU: {}", support::cpu::describe());
    let n = 400_000;
    for (name, repeat, warm) in
        [("distinct", 0.0, false), ("37% repeated", 0.37, false), ("all repeated", 1.0, true)]
    {
        let inputs = Arc::new(workload(n, repeat, if warm { WARM_SET } else { 0 }));
        let (off_rate, off_cpu, _) = run(&rt, &off, warm, Arc::clone(&inputs));
        let (on_rate, on_cpu, hit_ratio) = run(&rt, &on, warm, inputs);
        println!(
            "  {name:<13} cache off {off_rate:>6.0}/s {off_cpu:>5.2} ms CPU each | cache on {on_rate:>6.0}/s \
             {on_cpu:>5.2} ms CPU each, {:.0}% hits | {:.2}x the throughput, {:.2}x the CPU per input",
            hit_ratio * 100.0,
            on_rate / off_rate,
            on_cpu / off_cpu
        );
    }
}
