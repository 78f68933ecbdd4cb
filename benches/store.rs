//! `make bench` (second part): what the shared limit store costs. Two servers on the default
//! configuration, one deciding limits in the process and one in a real Redis on loopback
//! (Debian's redis-server), measured in alternating rounds of one run:
//!
//! - one short sentence over HTTP, sequential: p50 and p99, and the difference;
//! - embeddings/s at 64 concurrent one-sentence clients, and the ratio Redis/local;
//! - server CPU per request (from /proc), and Redis's own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::http::{
    Endpoint, MODEL, THROUGHPUT_SECONDS, cold_start, cpu_seconds, free_port, latency, throughput,
};

#[allow(dead_code)] // the ceiling's loop is `serve`'s; the sentences are shared
mod support {
    pub mod ceiling;
    pub mod cpu;
    pub mod http;
}

const ROUNDS: usize = 3;
const LATENCY_REQUESTS: usize = 400;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = repo.join("target/bench-store");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    println!("CPU: {}", support::cpu::describe());
    let redis_port = free_port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (make test installs it; apt-get install redis-server)");
    std::thread::sleep(Duration::from_millis(300));

    let default = std::fs::read_to_string(repo.join("config/default.toml")).unwrap();
    let default = default.replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    let local_config = dir.join("local.toml");
    std::fs::write(&local_config, &default).unwrap();
    let redis_config = dir.join("redis.toml");
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    std::fs::write(
        &redis_config,
        format!("{default}\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n"),
    )
    .unwrap();

    let (_, mut local, local_port, _) = rt.block_on(cold_start(&local_config, MODEL));
    let (_, mut shared, shared_port, _) = rt.block_on(cold_start(&redis_config, MODEL));
    let servers = [("local", local.id(), local_port), ("redis", shared.id(), shared_port)];
    println!(
        "limit store: local vs Redis on loopback, {ROUNDS} alternating rounds, {} CPUs",
        std::thread::available_parallelism().unwrap()
    );

    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu_per_request = [Vec::new(), Vec::new()];
    let mut redis_cpu = 0.0;
    for _ in 0..ROUNDS {
        for (i, (_, pid, port)) in servers.iter().enumerate() {
            let endpoint = Endpoint::embedserve(&format!("http://127.0.0.1:{port}"));
            let (a, b) = rt.block_on(latency(&endpoint, LATENCY_REQUESTS));
            p50[i].push(a);
            p99[i].push(b);
            let (cpu, redis_before) = (cpu_seconds(*pid), cpu_seconds(redis.id()));
            let started = Instant::now();
            let rate = rt.block_on(throughput(&endpoint, 64));
            let requests = rate * started.elapsed().as_secs_f64();
            cpu_per_request[i].push((cpu_seconds(*pid) - cpu) / requests * 1e3);
            if i == 1 {
                redis_cpu += (cpu_seconds(redis.id()) - redis_before) / requests * 1e3 / ROUNDS as f64;
            }
            rates[i].push(rate);
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, (name, ..)) in servers.iter().enumerate() {
        println!(
            "  {name:>5}: one sentence p50 {:.3} ms, p99 {:.3} ms; 64 clients {:.0} embeddings/s ({THROUGHPUT_SECONDS} s), server CPU {:.3} ms per request",
            median(&p50[i]),
            median(&p99[i]),
            median(&rates[i]),
            median(&cpu_per_request[i]),
        );
    }
    println!(
        "  added by Redis: p50 {:+.3} ms, p99 {:+.3} ms; throughput at 64 clients {:.0}% of local; Redis CPU {:.3} ms per request",
        median(&p50[1]) - median(&p50[0]),
        median(&p99[1]) - median(&p99[0]),
        100.0 * median(&rates[1]) / median(&rates[0]),
        redis_cpu,
    );
    for child in [&mut local, &mut shared, &mut redis] {
        child.kill().ok();
        child.wait().ok();
    }
}
