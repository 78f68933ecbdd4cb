//! `embedding_types` on `/v1/embed`: int8, uint8, binary and ubinary beside float, on the real
//! model, in Cohere's response shape; and the errors around them on both routes.

use serde_json::{Value, json};

use crate::helpers::*;

fn lists(body: &Value, t: &str) -> Vec<Vec<f64>> {
    vectors(&body["embeddings"][t])
}

/// Hamming distance between two packed bit vectors (ubinary bytes).
fn hamming(a: &[f64], b: &[f64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| ((*x as u8) ^ (*y as u8)).count_ones()).sum()
}

#[tokio::test]
async fn int8_and_uint8_round_trip_to_the_float_vector_within_one_step() {
    let server = TestServer::shared();
    let texts = reference()["texts"].as_object().unwrap().values().cloned().collect::<Vec<_>>();
    let (status, body) = server
        .post("/v1/embed", json!({ "input": texts, "embedding_types": ["float", "int8", "uint8"] }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddings"].as_object().unwrap().len(), 3, "{body}");
    let (float, int8, uint8) = (lists(&body, "float"), lists(&body, "int8"), lists(&body, "uint8"));
    assert_eq!(float.len(), texts.len());
    // The float list is what the single-type form answers.
    let plain = server.embed("minilm-l6-int8", Value::Array(texts.clone())).await;
    for (i, f) in float.iter().enumerate() {
        assert!(max_abs_diff(f, &plain[i]) < 1e-6);
        assert_eq!((int8[i].len(), uint8[i].len()), (384, 384));
        for ((x, q), u) in f.iter().zip(&int8[i]).zip(&uint8[i]) {
            assert!((q / 127.0 - x).abs() <= 1.0 / 127.0, "{q} for {x}");
            assert!((-127.0..=127.0).contains(q));
            assert_eq!(*u, q + 128.0);
        }
    }
}

#[tokio::test]
async fn binary_hamming_ranking_agrees_with_cosine_on_clear_pairs() {
    let server = TestServer::shared();
    let queries = [
        "How do I reset my password?",
        "What is the weather like in Paris today?",
        "A simple recipe for chocolate cake",
        "Which football team won the championship?",
    ];
    let docs = [
        "Steps to change the password of your account when you forgot it.",
        "Sunny skies and 24 degrees expected in Paris this afternoon.",
        "Mix flour, sugar, cocoa and eggs, then bake for 30 minutes.",
        "The final ended 2-1 and the home side lifted the trophy.",
    ];
    let embed = |texts: &[&str]| {
        let body = json!({ "input": texts, "embedding_types": ["float", "ubinary", "binary"] });
        async move {
            let (status, body) = server.post("/v1/embed", body).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let (q, d) = (embed(&queries).await, embed(&docs).await);
    let (qf, df, qb, db) =
        (lists(&q, "float"), lists(&d, "float"), lists(&q, "ubinary"), lists(&d, "ubinary"));
    for (signed, unsigned) in lists(&q, "binary").iter().zip(&qb) {
        assert_eq!(signed.len(), 48);
        assert!(signed.iter().zip(unsigned).all(|(s, u)| *s == u - 128.0));
    }
    for i in 0..queries.len() {
        let by_cosine =
            (0..docs.len()).max_by(|&a, &b| cosine(&qf[i], &df[a]).total_cmp(&cosine(&qf[i], &df[b])));
        let by_hamming = (0..docs.len()).min_by_key(|&j| hamming(&qb[i], &db[j]));
        assert_eq!(by_cosine, Some(i), "{}", queries[i]);
        assert_eq!(by_hamming, Some(i), "{}", queries[i]);
    }
}

#[tokio::test]
async fn output_types_follow_dimensions_and_bad_ones_are_refused_on_both_routes() {
    let server = TestServer::shared();
    let (status, body) = server
        .post("/v1/embed", json!({ "input": "hi", "dimensions": 128, "embedding_types": ["ubinary"] }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(lists(&body, "ubinary")[0].len(), 16);
    assert_eq!(body["dimensions"], 128);

    let refused = [
        (json!({ "input": "hi", "embedding_types": ["int4"] }), None),
        (json!({ "input": "hi", "embedding_types": [] }), Some("embedding_types")),
        (json!({ "input": "hi", "embedding_types": "int8" }), None),
        (json!({ "input": "hi", "dimensions": 100, "embedding_types": ["binary"] }), Some("embedding_types")),
        (
            json!({ "input": "hi", "encoding_format": "base64", "embedding_types": ["int8"] }),
            Some("embedding_types"),
        ),
    ];
    for (request, param) in refused {
        let (status, body) = server.post("/v1/embed", request.clone()).await;
        assert_eq!(status, 422, "{request} -> {body}");
        assert_error_shape(&body);
        if let Some(param) = param {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
    let (status, body) = server
        .post("/v1/embed", json!({ "input": "hi", "dimensions": 100, "embedding_types": ["binary"] }))
        .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("multiple of 8"), "{status} {body}");
    // The OpenAI route keeps OpenAI's float and base64 only.
    let (status, body) =
        server.post("/v1/embeddings", json!({ "input": "hi", "embedding_types": ["int8"] })).await;
    assert_eq!(status, 422, "{body}");
}
