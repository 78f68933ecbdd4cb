//! `make bench-lambda`: the deployment zip, unpacked as Lambda unpacks it into /var/task, run
//! against the real emulator (`cargo lambda watch --only-lambda-apis`) at several Lambda memory
//! sizes, each with the CPU share that size buys (1,769 MB = one vCPU) and its memory limit,
//! enforced with cgroups around the function process (as `../shared/bench/lambda_like.sh`
//! does; it needs root). Prints a power-tuning table: INIT, first invocation, cold start, warm
//! function duration (what Lambda bills: the handler's own time from its EMF lines, not the
//! emulator's round trip), peak memory, and the cost per million requests at each size, marking
//! the cheapest size whose warm p99 meets the target.
//!
//! `make bench-lambda-rerank` does the same for the function that also reranks
//! (config/lambda-rerank.toml), each invocation one query with 20 passages on `/v1/rerank`
//! (EMBEDSERVE_BENCH_ZIP and EMBEDSERVE_BENCH_ROUTE=rerank; EMBEDSERVE_BENCH_SIZES="1024" picks
//! the memory sizes).
//!
//! `make bench-lambda CPU=avx2` runs the function as that kind of CPU would
//! (EMBEDSERVE_BENCH_CPU: tests/support/cpumask.c hides the newer vector features from CPUID, so
//! ONNX Runtime picks the kernels such a CPU runs; `avx2` is the AVX2-only EPYC many Lambda hosts
//! are). INIT is printed with its parts: ONNX Runtime's library, the tokenizer, the session.
//!
//! Emulator timings on this machine estimate Lambda; they do not measure it: other CPUs, no
//! Firecracker, and the cgroup quota slices CPU time differently from Lambda's scheduler.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::json;

#[allow(dead_code)] // the rerank workload is shared with benches/rerank.rs and the load tests
mod support {
    pub mod cpu;
    pub mod rerank;
}

const KEY: &str = "acme-dev-key";
const SIZES_MB: [u64; 4] = [512, 1024, 1769, 3008];
const COLD_RUNS: usize = 5;
/// The latency the recommendation must meet: warm function duration p99 (embeddings).
const P99_TARGET_MS: f64 = 50.0;
/// The same for one query with 20 passages (rerank).
const RERANK_P99_TARGET_MS: f64 = 2_000.0;
/// Public x86_64 Lambda prices (us-east-1), first pricing tier.
const PRICE_PER_GB_SECOND: f64 = 0.000_016_666_7;
const PRICE_PER_MILLION_REQUESTS: f64 = 0.20;

/// One memory size's figures.
struct Size {
    mb: u64,
    init_ms: f64,
    first_ms: f64,
    cold_ms: f64,
    warm_p50_ms: f64,
    warm_p99_ms: f64,
    round_trip_p50_ms: f64,
    peak_mib: f64,
    /// Mean billed milliseconds of a warm invocation (each rounded up to 1 ms, as Lambda bills).
    billed_ms: f64,
}

impl Size {
    fn gb(&self) -> f64 {
        self.mb as f64 / 1024.0
    }

    fn per_million_warm(&self) -> f64 {
        1e6 * self.billed_ms / 1e3 * self.gb() * PRICE_PER_GB_SECOND + PRICE_PER_MILLION_REQUESTS
    }

    /// What one cold start adds: INIT is billed for a custom runtime (`provided.al2023`), and
    /// since August 2025 for every on-demand function.
    fn per_cold_start(&self) -> f64 {
        self.init_ms.ceil() / 1e3 * self.gb() * PRICE_PER_GB_SECOND
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let zip = std::env::var_os("EMBEDSERVE_BENCH_ZIP")
        .map_or_else(|| repo.join("target/lambda/embedserve.zip"), PathBuf::from);
    let reranking = std::env::var("EMBEDSERVE_BENCH_ROUTE").is_ok_and(|r| r == "rerank");
    let sizes_mb: Vec<u64> =
        std::env::var("EMBEDSERVE_BENCH_SIZES").ok().filter(|s| !s.trim().is_empty()).map_or_else(
            || SIZES_MB.to_vec(),
            |s| {
                s.split([',', ' '])
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse().expect("sizes in MB"))
                    .collect()
            },
        );
    let (warm_invocations, p99_target) =
        if reranking { (30, RERANK_P99_TARGET_MS) } else { (300, P99_TARGET_MS) };
    let package = unpack(repo, &zip);
    let cpu = std::env::var("EMBEDSERVE_BENCH_CPU").ok().filter(|k| !k.is_empty()).map(|kind| {
        let library = build_cpumask(repo);
        let status = Command::new("true").env("LD_PRELOAD", &library).env("CPUMASK", &kind).status().unwrap();
        assert!(
            status.success(),
            "CPU={kind}: this host cannot hide CPU features (no CPUID faulting: AMD hosts, some VMs); \
                 timings under an emulator would mean nothing, run it on an Intel host"
        );
        Cpu { library, kind }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let python = std::env::var_os("EMBEDSERVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let mut emulator = Command::new(python.parent().unwrap().join("cargo-lambda"))
        .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1"])
        .args(["--invoke-port", &port.to_string()])
        .current_dir(repo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo-lambda (make venv)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let route = if reranking { "rerank" } else { "embed" };
    let url = format!("http://127.0.0.1:{port}/lambda-url/_/v1/{route}");
    let client = reqwest::Client::new();
    let requests = support::rerank::workload(repo, 16);
    let bodies: Vec<serde_json::Value> = if reranking {
        requests.iter().map(|r| r.body("ms-marco-minilm-l12")).collect()
    } else {
        vec![
            json!({ "input": "The first request after a cold start." }),
            json!({ "input": "A warm request." }),
        ]
    };
    let invoke = |i: usize| {
        let (client, url, body) = (client.clone(), url.clone(), bodies[i % bodies.len()].clone());
        async move {
            let t = Instant::now();
            let r = client.post(&url).bearer_auth(KEY).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            t.elapsed().as_secs_f64() * 1e3
        }
    };

    println!("embedserve on the Lambda emulator: the package from {}", zip.display());
    println!("{}", cpu_line(cpu.as_ref()));
    let what = if reranking {
        "rerank invocations (one query, 20 passages of about 60 tokens)"
    } else {
        "one-sentence invocations"
    };
    println!(
        "each size: {COLD_RUNS} cold starts, then {warm_invocations} warm {what}, under a cgroup \
         with size/1769 of a vCPU and the size's memory limit"
    );
    let mut sizes = Vec::new();
    for mb in sizes_mb {
        let cgroup = Cgroup::new(mb);
        let (mut inits, mut firsts, mut colds) = (Vec::new(), Vec::new(), Vec::new());
        let mut parts: [Vec<f64>; 3] = Default::default();
        let mut function: Option<Function> = None;
        for _ in 0..COLD_RUNS {
            if let Some(f) = function.take() {
                f.stop();
            }
            let started = Instant::now();
            let f = Function::spawn(&package, port, mb, &cgroup, cpu.as_ref());
            // The request waits in the emulator until the function asks for its first event.
            rt.block_on(invoke(0));
            colds.push(started.elapsed().as_secs_f64() * 1e3);
            let init = f.init.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            inits.push(init.total_ms);
            for (all, ms) in parts.iter_mut().zip([init.runtime_ms, init.tokenizer_ms, init.session_ms]) {
                all.push(ms);
            }
            firsts.push(f.durations.recv_timeout(Duration::from_secs(5)).unwrap_or(f64::NAN));
            function = Some(f);
        }
        let f = function.take().unwrap();
        let mut round_trips: Vec<f64> = (1..=warm_invocations).map(|i| rt.block_on(invoke(i))).collect();
        let mut warm: Vec<f64> = (0..warm_invocations)
            .map(|_| f.durations.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        let peak_mib = cgroup.peak_bytes() as f64 / 1048576.0;
        f.stop();
        for v in [&mut inits, &mut firsts, &mut colds, &mut warm, &mut round_trips] {
            v.sort_by(f64::total_cmp);
        }
        for v in &mut parts {
            v.sort_by(f64::total_cmp);
        }
        let size = Size {
            mb,
            init_ms: median(&inits),
            first_ms: median(&firsts),
            cold_ms: median(&colds),
            warm_p50_ms: percentile(&warm, 0.5),
            warm_p99_ms: percentile(&warm, 0.99),
            round_trip_p50_ms: percentile(&round_trips, 0.5),
            peak_mib,
            billed_ms: warm.iter().map(|ms| ms.ceil().max(1.0)).sum::<f64>() / warm.len() as f64,
        };
        println!(
            "  {mb} MB: INIT {:.0} ms, first invocation {:.1} ms, cold start {:.0} ms; warm p50 {:.2} ms, p99 {:.2} ms \
             (round trip p50 {:.2} ms); peak {:.0} MiB",
            size.init_ms,
            size.first_ms,
            size.cold_ms,
            size.warm_p50_ms,
            size.warm_p99_ms,
            size.round_trip_p50_ms,
            size.peak_mib
        );
        println!(
            "    INIT's parts (medians): ONNX Runtime library {:.0} ms; then, in parallel, tokenizer {:.0} ms \
             and session {:.0} ms",
            median(&parts[0]),
            median(&parts[1]),
            median(&parts[2])
        );
        sizes.push(size);
    }
    let _ = emulator.kill();
    let _ = emulator.wait();

    let cheapest = sizes
        .iter()
        .filter(|s| s.warm_p99_ms <= p99_target)
        .min_by(|a, b| a.per_million_warm().total_cmp(&b.per_million_warm()))
        .map(|s| s.mb);
    println!();
    println!(
        "| memory | vCPU | INIT ms | first invocation ms | cold start ms | warm p50 / p99 ms | peak MiB (of limit) | \
         $ per million warm | $ per million cold starts (INIT) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &sizes {
        let mark = if Some(s.mb) == cheapest {
            format!(" **cheapest with p99 ≤ {p99_target} ms**")
        } else {
            String::new()
        };
        println!(
            "| {} MB{mark} | {:.2} | {:.0} | {:.1} | {:.0} | {:.2} / {:.2} | {:.0} ({:.0}%) | ${:.3} | ${:.2} |",
            s.mb,
            s.mb as f64 / 1769.0,
            s.init_ms,
            s.first_ms,
            s.cold_ms,
            s.warm_p50_ms,
            s.warm_p99_ms,
            s.peak_mib,
            100.0 * s.peak_mib / s.mb as f64,
            s.per_million_warm(),
            1e6 * s.per_cold_start()
        );
    }
    println!();
    println!(
        "warm cost: mean billed ms (each invocation rounded up to 1 ms) x GB x ${PRICE_PER_GB_SECOND}/GB-s, \
         plus ${PRICE_PER_MILLION_REQUESTS:.2} per million requests; a cold start adds its INIT at the same rate"
    );
    println!(
        "for comparison, our users' Python handler on Lambda: about $12 per million, about 500 ms cold start"
    );
    println!("(emulator timings on this machine estimate Lambda; they do not measure it)");
}

fn median(v: &[f64]) -> f64 {
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Unpacks the zip into target/lambda/package, as Lambda unpacks it into /var/task.
fn unpack(repo: &Path, zip: &Path) -> PathBuf {
    assert!(zip.exists(), "run `make lambda-zip` first");
    let dir = repo.join("target/lambda/package");
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(zip).arg(&dir).status().unwrap();
    assert!(status.success());
    for exe in ["bootstrap", "assets/onnxruntime/libonnxruntime.so.1.31.1"] {
        let _ = Command::new("chmod").arg("755").arg(dir.join(exe)).status();
    }
    dir
}

/// A CPU quota and memory limit around the function: cgroup v1 (`cpu` and `memory`
/// hierarchies) or v2 (one unified hierarchy), whichever the machine mounts.
struct Cgroup {
    /// Where to write the function's pid.
    procs: Vec<PathBuf>,
    peak: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn new(mb: u64) -> Cgroup {
        let root = Path::new("/sys/fs/cgroup");
        let name = format!("embedserve-bench-{mb}");
        let quota = mb * 100_000 / 1769;
        let write = |path: PathBuf, value: String| {
            std::fs::write(&path, &value).unwrap_or_else(|e| {
                panic!(
                    "cannot write {value} to {}: {e} (make bench-lambda needs root and cgroups)",
                    path.display()
                )
            })
        };
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            write(dir.join("cpu.max"), format!("{quota} 100000"));
            write(dir.join("memory.max"), format!("{}", mb << 20));
            Cgroup { procs: vec![dir.join("cgroup.procs")], peak: dir.join("memory.peak"), dirs: vec![dir] }
        } else {
            let (cpu, memory) = (root.join("cpu").join(&name), root.join("memory").join(&name));
            for dir in [&cpu, &memory] {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| {
                    panic!("cannot create {}: {e} (make bench-lambda needs root)", dir.display())
                });
            }
            write(cpu.join("cpu.cfs_period_us"), "100000".into());
            write(cpu.join("cpu.cfs_quota_us"), quota.to_string());
            write(memory.join("memory.limit_in_bytes"), (mb << 20).to_string());
            write(memory.join("memory.max_usage_in_bytes"), "0".into());
            Cgroup {
                procs: vec![cpu.join("cgroup.procs"), memory.join("cgroup.procs")],
                peak: memory.join("memory.max_usage_in_bytes"),
                dirs: vec![cpu, memory],
            }
        }
    }

    fn peak_bytes(&self) -> u64 {
        std::fs::read_to_string(&self.peak).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `bootstrap` started as Lambda starts it, inside `cgroup`.
struct Function {
    child: Child,
    /// INIT's duration and parts, from its log lines.
    init: Receiver<Init>,
    /// Each invocation's duration inside the handler, from its EMF line.
    durations: Receiver<f64>,
}

impl Function {
    fn spawn(package: &Path, port: u16, mb: u64, cgroup: &Cgroup, cpu: Option<&Cpu>) -> Function {
        // The shell joins the cgroup, then becomes the function: its whole life is limited.
        let join: String = cgroup.procs.iter().map(|p| format!("echo $$ > {} && ", p.display())).collect();
        let mut command = Command::new("sh");
        if let Some(cpu) = cpu {
            command.env("LD_PRELOAD", &cpu.library).env("CPUMASK", &cpu.kind);
        }
        let mut child = command
            .args(["-c", &format!("{join}exec ./bootstrap")])
            .current_dir(package)
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", mb.to_string())
            // config/lambda.toml carries the demo tenants; this is a benchmark on loopback.
            .env("EMBEDSERVE__SERVER__ALLOW_DEMO_KEYS", "true")
            .env("LAMBDA_TASK_ROOT", package)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let init = read_init(child.stderr.take().unwrap());
        let durations = read_lines(child.stdout.take().unwrap(), "Latency");
        Function { child, init, durations }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// INIT's figures, from the function's log lines.
#[derive(Default)]
struct Init {
    total_ms: f64,
    /// Loading ONNX Runtime's library and creating its environment.
    runtime_ms: f64,
    /// Parsing the tokenizer and building the session: the two run in parallel.
    tokenizer_ms: f64,
    session_ms: f64,
}

/// INIT's figures from the JSON log lines `from` prints, sent when INIT's own line comes.
fn read_init(from: impl std::io::Read + Send + 'static) -> Receiver<Init> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut init = Init::default();
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            // The function logs flattened JSON (its fields beside the message).
            let fields = v.get("fields").unwrap_or(&v);
            let ms = |key: &str| fields[key].as_f64();
            match fields["message"].as_str() {
                Some("ONNX Runtime loaded") => init.runtime_ms = ms("ms").unwrap_or(f64::NAN),
                Some("sessions built") => {
                    init.tokenizer_ms = ms("tokenizer_ms").unwrap_or(f64::NAN);
                    init.session_ms = ms("session_ms").unwrap_or(f64::NAN);
                }
                _ => {}
            }
            if let Some(total) = ms("init_ms") {
                init.total_ms = total;
                let _ = tx.send(std::mem::take(&mut init));
            }
        }
    });
    rx
}

/// The kind of CPU the function runs as (tests/support/cpumask.c).
struct Cpu {
    library: PathBuf,
    kind: String,
}

/// tests/support/cpumask.c, built into target/lambda.
fn build_cpumask(repo: &Path) -> PathBuf {
    let out = repo.join("target/lambda/libcpumask.so");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC"])
        .arg(repo.join("tests/support/cpumask.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("a C compiler (cc) builds tests/support/cpumask.c");
    assert!(status.success(), "cc failed on tests/support/cpumask.c");
    out
}

/// The CPU the figures are from: its model and int8-relevant flags, and the kind it passes for.
fn cpu_line(cpu: Option<&Cpu>) -> String {
    let host = format!("CPU: {}", support::cpu::describe());
    match cpu {
        Some(cpu) => {
            format!("{host}; the function running as CPUMASK={} (tests/support/cpumask.c)", cpu.kind)
        }
        None => host,
    }
}

/// The numbers under `key` in the JSON lines `from` prints.
fn read_lines(from: impl std::io::Read + Send + 'static, key: &'static str) -> Receiver<f64> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(ms) = v[key].as_f64()
            {
                let _ = tx.send(ms);
            }
        }
    });
    rx
}
