//! The int8 models on every kind of x86 CPU this host can pass for, every run: the real server
//! under tests/support/cpumask.c, which hides AVX-512, VNNI and AMX from CPUID so ONNX Runtime
//! runs the kernels such a CPU would. On each kind: the int8 kernels embedserve chose (u8 x u8
//! where the u8 x s8 kernel would clip: AVX2 and AVX-512 without VNNI), the quality gate, and
//! the same vectors as on the host itself.

use std::process::Command;

use serde_json::Value;

use crate::helpers::*;
use crate::quality::{Report, embed_all, quality_set};
use crate::spawned::{SpawnedServer, TempDir, default_config_text};

/// int8 vectors of one text on two kinds of CPU: the reference tolerance, and why (helpers.rs).
const INT8_CROSS_CPU_MIN_COSINE: f64 = REFERENCE_MIN_COSINE;
/// fp32 vectors of one text on two kinds of CPU: only rounding differs.
const FP32_CROSS_CPU_MIN_COSINE: f64 = 0.99999;
/// The reranker's logits on two kinds of CPU: it computes in fp32 (its int8 weights dequantized,
/// see scripts/quantize.py dequantize_matmuls), so only rounding differs.
const RERANK_CROSS_CPU_LOGIT: f64 = 1e-3;

struct Kind {
    name: &'static str,
    /// /proc/cpuinfo flags the host needs to pass for this kind.
    needs: &'static [&'static str],
    /// Whether ONNX Runtime's u8 x s8 MatMul is exact on this kind (VNNI).
    u8s8_exact: bool,
}

const AVX512: [&str; 4] = ["avx512f", "avx512bw", "avx512dq", "avx512vl"];

const KINDS: [Kind; 4] = [
    Kind { name: "avx2", needs: &["avx2", "fma"], u8s8_exact: false },
    Kind { name: "avx512", needs: &["avx2", AVX512[0], AVX512[1], AVX512[2], AVX512[3]], u8s8_exact: false },
    Kind { name: "avx-vnni", needs: &["avx2", "avx_vnni"], u8s8_exact: true },
    Kind {
        name: "avx512-vnni",
        needs: &["avx2", AVX512[0], AVX512[1], AVX512[2], AVX512[3], "avx512_vnni"],
        u8s8_exact: true,
    },
];

pub fn host_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    line.split_whitespace().map(str::to_owned).collect()
}

/// The CPU-masking library, built from tests/support/cpumask.c.
pub fn build_cpumask(dir: &TempDir) -> std::path::PathBuf {
    let out = dir.0.join("libcpumask.so");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC"])
        .arg(repo().join("tests/support/cpumask.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("a C compiler (cc) builds tests/support/cpumask.c");
    assert!(status.success(), "cc failed on tests/support/cpumask.c");
    out
}

/// config/default.toml with acme's paraphrase-L3 fp32 original beside its int8 model.
fn config() -> String {
    format!(
        "{}\n[tenants.acme.private_models.paraphrase-l3-fp32]\nonnx = \"{}\"\n\
         tokenizer = \"{}\"\ninputs = [\"input_ids\", \"attention_mask\"]\noutput = \"461\"\n\
         pooling = \"none\"\nnormalize = true\nmax_tokens = 128\ndimensions = 384\n",
        default_config_text(),
        repo().join("assets/models/paraphrase-l3/model.onnx").display(),
        repo().join("assets/models/minilm-uncased-tokenizer.json").display(),
    )
}

/// Each model's vectors for the whole quality set, the reranker's logits for its reference pairs,
/// and the int8 kernels the server logged.
struct Run {
    minilm: Vec<Vec<f64>>,
    paraphrase: Vec<Vec<f64>>,
    paraphrase_fp32: Vec<Vec<f64>>,
    rerank_logits: Vec<f64>,
    kernels: Vec<String>,
}

/// The reranker's logits (TEI's `raw_scores`) for every pair of tests/data/rerank-reference.json,
/// in order.
async fn rerank_logits(base: &str) -> Vec<f64> {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/rerank-reference.json")).unwrap(),
    )
    .unwrap();
    let client = client_with_key(Some(ACME_KEY));
    let mut out = Vec::new();
    for q in reference["queries"].as_array().unwrap() {
        let texts: Vec<&Value> = q["documents"].as_array().unwrap().iter().map(|d| &d["document"]).collect();
        let body = serde_json::json!({ "model": "ms-marco-minilm-l12", "query": q["query"], "texts": texts, "raw_scores": true });
        let reply: Value =
            client.post(format!("{base}/rerank")).json(&body).send().await.unwrap().json().await.unwrap();
        let mut by_index: Vec<(u64, f64)> = reply
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r["score"].as_f64().unwrap()))
            .collect();
        by_index.sort_by_key(|r| r.0);
        out.extend(by_index.into_iter().map(|r| r.1));
    }
    out
}

async fn run(name: &str, env: &[(&str, &str)]) -> Run {
    let server = SpawnedServer::start_with_env(&format!("cpu-kind-{name}"), &config(), env).await;
    let qs = quality_set();
    let base = server.url("");
    let run = Run {
        minilm: embed_all(&base, "minilm-l6-int8", &qs).await,
        paraphrase: embed_all(&base, "paraphrase-l3", &qs).await,
        paraphrase_fp32: embed_all(&base, "paraphrase-l3-fp32", &qs).await,
        rerank_logits: rerank_logits(&base).await,
        kernels: server
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "int8 weights encoded for this CPU")
            .map(|v| v["int8_kernels"].as_str().unwrap().to_owned())
            .collect(),
    };
    assert_eq!(run.kernels.len(), 2, "one int8 line per int8 model used:\n{}", server.log_text());
    run
}

/// Whether this host multiplies int8 exactly on ONNX Runtime's fast kernels (u8 x s8 with VNNI,
/// AVX-VNNI or AMX).
pub fn host_has_fast_int8() -> bool {
    let flags = host_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    has("avx512_vnni") && AVX512.iter().all(|f| has(f)) || has("avx_vnni") || has("amx_int8")
}

pub fn min_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(f64::INFINITY, f64::min)
}

#[tokio::test]
async fn int8_models_agree_and_pass_the_gate_on_every_kind_of_cpu_this_host_can_pass_for() {
    let flags = host_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    assert!(has("avx2"), "these tests need an x86-64 host with AVX2, this is {}", host_cpu());
    let dir = TempDir::new("cpu-kinds");
    let library = build_cpumask(&dir);
    let qs = quality_set();

    let host = run("host", &[]).await;
    let expected = if host_has_fast_int8() { "u8s8" } else { "u8u8" };
    assert!(host.kernels.iter().all(|k| k == expected), "host {}: {:?}", host_cpu(), host.kernels);

    let kinds: Vec<&Kind> = KINDS.iter().filter(|k| k.needs.iter().all(|f| has(f))).collect();
    println!("host {}: passes for {:?}", host_cpu(), kinds.iter().map(|k| k.name).collect::<Vec<_>>());
    assert!(kinds.iter().any(|k| !k.u8s8_exact), "every AVX2 host passes for a CPU without VNNI");
    for kind in kinds {
        let cpu = format!("{} as {}", host_cpu(), kind.name);
        let env = [("LD_PRELOAD", library.to_str().unwrap()), ("CPUMASK", kind.name)];
        let got = run(kind.name, &env).await;
        let expected = if kind.u8s8_exact { "u8s8" } else { "u8u8" };
        assert!(got.kernels.iter().all(|k| k == expected), "{cpu}: int8 kernels {:?}", got.kernels);

        Report::new(&qs, &got.minilm, &qs.minilm_reference).assert_passes("minilm-l6-int8", &cpu);
        Report::new(&qs, &got.paraphrase, &got.paraphrase_fp32).assert_passes("paraphrase-l3", &cpu);
        let agreement = [
            ("minilm-l6-int8", min_cosine(&got.minilm, &host.minilm), INT8_CROSS_CPU_MIN_COSINE),
            ("paraphrase-l3", min_cosine(&got.paraphrase, &host.paraphrase), INT8_CROSS_CPU_MIN_COSINE),
            (
                "paraphrase-l3-fp32",
                min_cosine(&got.paraphrase_fp32, &host.paraphrase_fp32),
                FP32_CROSS_CPU_MIN_COSINE,
            ),
        ];
        for (model, min, floor) in agreement {
            println!("  {model}: min cosine to the host's vectors {min:.7} over {} texts", qs.all().len());
            assert!(min >= floor, "{cpu}: {model}: min cosine to the host's vectors {min} < {floor}");
        }
        let worst =
            got.rerank_logits.iter().zip(&host.rerank_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!(
            "  ms-marco-minilm-l12: largest logit difference to the host's {worst:.5} over {} pairs",
            host.rerank_logits.len()
        );
        assert!(worst <= RERANK_CROSS_CPU_LOGIT, "{cpu}: reranker logits {worst} from the host's");
    }
}
