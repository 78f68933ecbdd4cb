//! `make bench-lambda`: the deployment zip, unpacked as Lambda unpacks it into /var/task, run
//! against the real emulator (`cargo lambda watch --only-lambda-apis`). Prints INIT, the first
//! invocation, warm invocations and the cost per million requests at 1024 MB.
//!
//! Emulator timings on this machine estimate Lambda; they do not measure it. Lambda's CPU share
//! at 1024 MB is below one of these cores, and its network and storage differ.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const KEY: &str = "acme-dev-key";
const COLD_RUNS: usize = 5;
const WARM_INVOCATIONS: usize = 300;
/// Public x86_64 Lambda prices.
const PRICE_PER_GB_SECOND: f64 = 0.000_016_666_7;
const PRICE_PER_MILLION_REQUESTS: f64 = 0.20;
const MEMORY_GB: f64 = 1.0;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let package = unpack(repo);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let python = std::env::var_os("EMBEDSERVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let mut emulator = Command::new(python.parent().unwrap().join("cargo-lambda"))
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .current_dir(repo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo-lambda (make venv)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://127.0.0.1:{port}/lambda-url/_/v1/embed");
    let client = reqwest::Client::new();
    let invoke = |text: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t = Instant::now();
            let r = client.post(&url).bearer_auth(KEY).json(&json!({ "input": text })).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            t.elapsed().as_secs_f64() * 1e3
        }
    };

    println!("embedserve on the Lambda emulator: the package from target/lambda/embedserve.zip");
    let (mut inits, mut firsts, mut colds) = (Vec::new(), Vec::new(), Vec::new());
    let mut function = None;
    for _ in 0..COLD_RUNS {
        if let Some(mut f) = function.take() {
            stop(&mut f);
        }
        let started = Instant::now();
        let (child, init_ms) = spawn_function(&package, port);
        // The request waits in the emulator until the function asks for its first event.
        let total = rt.block_on(invoke("The first request after a cold start."));
        let cold = started.elapsed().as_secs_f64() * 1e3;
        let init = init_ms.recv_timeout(Duration::from_secs(5)).unwrap_or(f64::NAN);
        inits.push(init);
        firsts.push(total.min(cold - init));
        colds.push(cold);
        function = Some(child);
    }
    let mut warm: Vec<f64> = (0..WARM_INVOCATIONS).map(|_| rt.block_on(invoke("A warm request."))).collect();
    if let Some(mut f) = function.take() {
        stop(&mut f);
    }
    let _ = emulator.kill();
    let _ = emulator.wait();

    for v in [&mut inits, &mut firsts, &mut colds, &mut warm] {
        v.sort_by(f64::total_cmp);
    }
    let median = |v: &[f64]| v[v.len() / 2];
    let pct = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "  INIT (config, ONNX Runtime, preloaded model), median of {COLD_RUNS}: {:.0} ms",
        median(&inits)
    );
    println!("  first invocation after INIT, median: {:.1} ms", median(&firsts));
    println!("  cold start (process start -> first response), median: {:.0} ms", median(&colds));
    println!(
        "  warm invocations ({WARM_INVOCATIONS}, one sentence): p50 {:.2} ms, p99 {:.2} ms",
        pct(&warm, 0.5),
        pct(&warm, 0.99)
    );
    let billed_ms = pct(&warm, 0.5).ceil();
    let per_million = 1e6 * billed_ms / 1e3 * MEMORY_GB * PRICE_PER_GB_SECOND + PRICE_PER_MILLION_REQUESTS;
    println!(
        "  cost per million warm requests at 1024 MB: ${per_million:.2} ({billed_ms:.0} ms billed each at ${PRICE_PER_GB_SECOND}/GB-s, plus ${PRICE_PER_MILLION_REQUESTS:.2} per million requests)"
    );
    println!(
        "  for comparison, our users' Python handler on Lambda: about $12 per million, about 500 ms cold start"
    );
    println!("  (emulator timings on this machine estimate Lambda; they do not measure it)");
}

/// Unpacks the zip into target/lambda/package, as Lambda unpacks it into /var/task.
fn unpack(repo: &Path) -> PathBuf {
    let zip = repo.join("target/lambda/embedserve.zip");
    assert!(zip.exists(), "run `make lambda-zip` first");
    let dir = repo.join("target/lambda/package");
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&zip).arg(&dir).status().unwrap();
    assert!(status.success());
    for exe in ["bootstrap", "assets/onnxruntime/libonnxruntime.so.1.31.1"] {
        let _ = Command::new("chmod").arg("755").arg(dir.join(exe)).status();
    }
    dir
}

/// Starts `bootstrap` as Lambda does; the receiver gets INIT's duration from its log.
fn spawn_function(package: &Path, port: u16) -> (Child, std::sync::mpsc::Receiver<f64>) {
    let mut child = Command::new(package.join("bootstrap"))
        .current_dir(package)
        .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        // config/lambda.toml carries the demo tenants; this is a benchmark on loopback.
        .env("EMBEDSERVE__SERVER__ALLOW_DEMO_KEYS", "true")
        .env("LAMBDA_TASK_ROOT", package)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(ms) = v["init_ms"].as_f64()
            {
                let _ = tx.send(ms);
            }
        }
    });
    (child, rx)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
