//! Vectors: equal to an independent reference, unchanged by batching, shaped as asked.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::*;

const MODELS: [&str; 2] = ["minilm-l6-int8", "paraphrase-l3"];

#[tokio::test]
async fn embeddings_equal_the_independent_reference_for_both_models() {
    let server = TestServer::shared();
    let reference = reference();
    for model in MODELS {
        for (name, text) in reference["texts"].as_object().unwrap() {
            let expected = &reference["models"][model][name];
            let (status, body) = server.post("/v1/embed", json!({ "model": model, "input": text })).await;
            assert_eq!(status, 200, "{body}");
            let got = &vectors(&body["embeddings"])[0];
            let want: Vec<f64> =
                expected["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let (cos, diff) = (cosine(got, &want), max_abs_diff(got, &want));
            assert!(cos >= REFERENCE_MIN_COSINE, "{model}/{name}: cosine {cos}");
            assert!(diff <= REFERENCE_MAX_ABS_DIFF, "{model}/{name}: max abs diff {diff}");
            assert_eq!(body["usage"]["prompt_tokens"], expected["tokens"], "{model}/{name}: token count");
            assert_eq!(body["usage"]["total_tokens"], expected["tokens"]);
        }
    }
}

#[tokio::test]
async fn an_input_over_the_token_limit_is_truncated_and_counted() {
    let server = TestServer::shared();
    let long = reference()["texts"]["over_limit"].clone();
    // None before the first truncation; the strict read after it catches a misspelling.
    let before = find_sample(&server.metrics().await, &truncated_sample("acme/paraphrase-l3")).unwrap_or(0.0);
    let (status, body) =
        server.post("/v1/embed", json!({ "model": "paraphrase-l3", "input": [long, "short"] })).await;
    assert_eq!(status, 200, "{body}");
    // 128 for the truncated input, 3 for "[CLS] short [SEP]"
    assert_eq!(body["usage"]["prompt_tokens"], 131);
    assert!(truncated_count(server, "acme/paraphrase-l3").await >= before + 1.0);
}

async fn truncated_count(server: &TestServer, model: &str) -> f64 {
    server.metric(&truncated_sample(model)).await
}

fn truncated_sample(model: &str) -> String {
    format!("embedserve_truncated_inputs_total{{model=\"{model}\"}}")
}

#[tokio::test]
async fn a_text_alone_and_inside_a_batch_of_mixed_lengths_gives_the_same_vector() {
    let server = TestServer::shared();
    let texts: Vec<Value> = reference()["texts"].as_object().unwrap().values().cloned().collect();
    for model in MODELS {
        let batch = server.embed(model, Value::Array(texts.clone())).await;
        for (text, in_batch) in texts.iter().zip(&batch) {
            let alone = &server.embed(model, text.clone()).await[0];
            let cos = cosine(alone, in_batch);
            assert!(cos >= BATCH_MIN_COSINE, "{model}: {text} alone vs in batch: cosine {cos}");
        }
    }
}

#[tokio::test]
async fn concurrent_requests_that_share_a_run_get_their_own_vectors_in_order() {
    let server = TestServer::shared();
    let texts: Vec<String> =
        (0..24).map(|i| format!("request number {i} says {}", "word ".repeat(i * 3))).collect();
    let alone: Vec<Vec<f64>> = {
        let mut out = Vec::new();
        for t in &texts {
            out.push(server.embed("minilm-l6-int8", json!(t)).await.remove(0));
        }
        out
    };
    let together =
        futures::future::join_all(texts.iter().map(|t| server.embed("minilm-l6-int8", json!([t, "tail"]))))
            .await;
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(cosine(a, &b[0]) >= BATCH_MIN_COSINE, "request {i} got another request's vector");
    }
}

#[tokio::test]
async fn dimensions_keeps_the_first_values_then_normalises() {
    let server = TestServer::shared();
    let full = server.embed("minilm-l6-int8", json!("shape me")).await.remove(0);
    let (status, body) = server.post("/v1/embed", json!({ "input": "shape me", "dimensions": 64 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dimensions"], 64);
    let short = &vectors(&body["embeddings"])[0];
    assert_eq!(short.len(), 64);
    assert!((norm(short) - 1.0).abs() < 1e-5);
    let n = norm(&full[..64]);
    let expected: Vec<f64> = full[..64].iter().map(|x| x / n).collect();
    assert!(max_abs_diff(short, &expected) < 1e-5);
}

#[tokio::test]
async fn normalize_false_returns_the_raw_pooled_vector() {
    let server = TestServer::shared();
    let (status, body) = server
        .post("/v1/embed", json!({ "input": "raw vector", "model": "paraphrase-l3", "normalize": false }))
        .await;
    assert_eq!(status, 200, "{body}");
    let raw = &vectors(&body["embeddings"])[0];
    let unit = &server.embed("paraphrase-l3", json!("raw vector")).await[0];
    assert!((norm(raw) - 1.0).abs() > 0.1, "paraphrase-l3's pooled output is not unit length");
    assert!(cosine(raw, unit) >= BATCH_MIN_COSINE);
}

#[tokio::test]
async fn base64_encoding_carries_the_same_little_endian_floats() {
    let server = TestServer::shared();
    let floats = server.embed("minilm-l6-int8", json!(["one", "two"])).await;
    let (status, body) =
        server.post("/v1/embed", json!({ "input": ["one", "two"], "encoding_format": "base64" })).await;
    assert_eq!(status, 200, "{body}");
    for (encoded, want) in body["embeddings"].as_array().unwrap().iter().zip(&floats) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap();
        let got: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        // JSON carries the shortest decimal that reads back as the same f32.
        let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn the_openai_route_returns_the_list_shape_in_input_order() {
    let server = TestServer::shared();
    let (status, body) = server
        .post(
            "/v1/embeddings",
            json!({ "input": ["first", "second"], "model": "minilm-l6-int8", "user": "u1" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm-l6-int8");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let native = server.embed("minilm-l6-int8", json!(["first", "second"])).await;
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let v: Vec<f64> = item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(v, native[i]);
    }
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn with_the_embedding_cache_a_repeated_input_gets_the_same_vector_unbilled() {
    let mut settings = default_settings();
    settings.cache.embeddings_max_bytes = 8 << 20;
    let server = TestServer::start(settings);
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let texts = json!(["The cat sat.", "Ünïcödé 東京", long]);
    let (status, first) = server.post("/v1/embed", json!({ "input": texts })).await;
    assert_eq!(status, 200, "{first}");
    let billed = first["usage"]["prompt_tokens"].clone();
    let (status, again) = server.post("/v1/embed", json!({ "input": texts })).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["embeddings"], first["embeddings"], "the very same vectors");
    assert_eq!(again["usage"], json!({ "prompt_tokens": 0, "total_tokens": 0, "cached_tokens": billed }));
    // OpenAI's route and its options reuse the same vectors.
    let (status, openai) =
        server.post("/v1/embeddings", json!({ "input": "The cat sat.", "dimensions": 64 })).await;
    assert_eq!(status, 200, "{openai}");
    let (_, computed) = TestServer::start(default_settings())
        .post("/v1/embeddings", json!({ "input": "The cat sat.", "dimensions": 64 }))
        .await;
    assert_eq!(openai["data"][0]["embedding"], computed["data"][0]["embedding"]);
    assert_eq!(openai["usage"]["prompt_tokens"], 0);
}
