//! The int8 quality gate: what the server answers for the default model against the fp32
//! sentence-transformers reference (tests/data/quality, scripts/make_quality_reference.py), and
//! `make quantize` refusing a model that fails the same gate.

use std::path::PathBuf;
use std::process::Command;

use embedserve::models::spec::InputRole;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::spawned::TempDir;

const MIN_COSINE: f64 = 0.99;
const MEAN_COSINE: f64 = 0.996;
const TOP1_AGREEMENT: f64 = 0.98;
const RECALL_POINTS: f64 = 1.0;

struct QualitySet {
    texts: Vec<String>,
    corpus: Vec<String>,
    queries: Vec<String>,
    answers: Vec<usize>,
    /// texts, corpus, queries in that order.
    reference: Vec<Vec<f64>>,
}

fn quality_set() -> QualitySet {
    let dir = repo().join("tests/data/quality");
    let set: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("set.json")).unwrap()).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let queries = set["queries"].as_array().unwrap();
    let bytes = std::fs::read(dir.join("minilm-l6-fp32.f32")).unwrap();
    let floats: Vec<f64> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
    let qs = QualitySet {
        texts: strings(&set["texts"]),
        corpus: strings(&set["corpus"]),
        queries: queries.iter().map(|q| q["text"].as_str().unwrap().to_owned()).collect(),
        answers: queries.iter().map(|q| q["answer"].as_u64().unwrap() as usize).collect(),
        reference: floats.chunks_exact(384).map(<[f64]>::to_vec).collect(),
    };
    assert_eq!(qs.reference.len(), qs.texts.len() + qs.corpus.len() + qs.queries.len());
    assert!(qs.corpus.len() >= 500 && qs.queries.len() >= 100);
    qs
}

/// Corpus indices nearest to each query, best first (the vectors are normalised).
fn rankings(corpus: &[Vec<f64>], queries: &[Vec<f64>]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f64, usize)> =
                corpus.iter().enumerate().map(|(i, c)| (cosine(q, c), i)).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

fn recall_at_10(ranks: &[Vec<usize>], answers: &[usize]) -> f64 {
    let hits = ranks.iter().zip(answers).filter(|(r, a)| r[..10].contains(a)).count();
    hits as f64 / answers.len() as f64
}

#[tokio::test]
async fn the_default_int8_model_passes_the_quality_gate_against_fp32_sentence_transformers() {
    let server = TestServer::shared();
    let qs = quality_set();
    let all: Vec<&String> = qs.texts.iter().chain(&qs.corpus).chain(&qs.queries).collect();
    // Batches of 64 of mixed lengths, as clients send them: the gate covers batched runs.
    let mut served = Vec::new();
    for chunk in all.chunks(64) {
        served.extend(server.embed("minilm-l6-int8", json!(chunk)).await);
    }
    assert_eq!(served.len(), all.len());

    let cosines: Vec<f64> = served.iter().zip(&qs.reference).map(|(a, b)| cosine(a, b)).collect();
    let fixed = &cosines[..qs.texts.len()];
    let min = fixed.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = fixed.iter().sum::<f64>() / fixed.len() as f64;
    let (a, b) = (qs.texts.len(), qs.texts.len() + qs.corpus.len());
    let reference_ranks = rankings(&qs.reference[a..b], &qs.reference[b..]);
    let served_ranks = rankings(&served[a..b], &served[b..]);
    let agreement = reference_ranks.iter().zip(&served_ranks).filter(|(r, s)| r[0] == s[0]).count() as f64
        / qs.queries.len() as f64;
    let (recall_reference, recall) =
        (recall_at_10(&reference_ranks, &qs.answers), recall_at_10(&served_ranks, &qs.answers));
    println!(
        "fixed texts: min cosine {min:.4}, mean {mean:.4}; all {}: min {:.4}; top-1 agreement {:.1}%; \
         recall@10 {:.1}% (fp32 {:.1}%)",
        all.len(),
        cosines.iter().copied().fold(f64::INFINITY, f64::min),
        agreement * 100.0,
        recall * 100.0,
        recall_reference * 100.0
    );
    assert!(min >= MIN_COSINE, "min cosine {min} < {MIN_COSINE}");
    assert!(mean >= MEAN_COSINE, "mean cosine {mean} < {MEAN_COSINE}");
    assert!(agreement >= TOP1_AGREEMENT, "top-1 agreement {agreement} < {TOP1_AGREEMENT}");
    assert!(
        (recall_reference - recall) * 100.0 <= RECALL_POINTS,
        "recall@10 {recall} vs fp32 {recall_reference}"
    );
}

/// The Python that runs scripts/quantize.py (make's models venv).
fn models_python() -> PathBuf {
    let p = std::env::var_os("EMBEDSERVE_MODELS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-models/bin/python"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which creates it", p.display());
    p
}

fn quantize(out: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let assets = repo().join("assets/models");
    let output = Command::new(models_python())
        .arg(repo().join("scripts/quantize.py"))
        .arg(assets.join("paraphrase-l3/model.onnx"))
        .arg(out)
        .arg("--tokenizer")
        .arg(assets.join("minilm-uncased-tokenizer.json"))
        .args(["--output-name", "461", "--pooling", "none", "--max-tokens", "128"])
        .args(extra)
        .output()
        .expect("scripts/quantize.py runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn make_quantize_writes_a_model_that_passes_and_refuses_one_that_fails_unless_forced() {
    let dir = TempDir::new("quantize");
    // A user's fp32 model (paraphrase-L3, pooled inside the graph) with the default recipe.
    let good = dir.0.join("good.onnx");
    let (code, out) = quantize(&good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS") && good.is_file(), "{out}");
    // The written model serves, and close to its fp32 original.
    let mut settings = default_settings();
    let mut spec = settings.models["minilm-l6-int8"].clone();
    spec.onnx = good.clone();
    spec.inputs = vec![InputRole::InputIds, InputRole::AttentionMask];
    spec.output = "461".into();
    spec.pooling = embedserve::models::spec::Pooling::None;
    spec.max_tokens = 128;
    settings.models.insert("mine-int8".into(), spec);
    settings.tenants.get_mut("acme").unwrap().models.push("mine-int8".into());
    let server = TestServer::start(settings);
    let text = reference()["texts"]["sentence"].clone();
    let got = &server.embed("mine-int8", text.clone()).await[0];
    let fp32 = &TestServer::shared().embed("paraphrase-l3", text).await[0];
    assert!(cosine(got, fp32) >= MIN_COSINE, "cosine to fp32 {}", cosine(got, fp32));

    // Per-tensor activations (ONNX Runtime's plain dynamic quantization) fail the gate: refused.
    let bad = dir.0.join("bad.onnx");
    let (code, out) = quantize(&bad, &["--recipe", "per-tensor"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL: min cosine") && out.contains("not written"), "{out}");
    assert!(!bad.exists());
    // --force writes it, and the exit status still says it failed.
    let (code, out) = quantize(&bad, &["--recipe", "per-tensor", "--force"]);
    assert_eq!(code, 1, "{out}");
    assert!(bad.is_file(), "{out}");
}
