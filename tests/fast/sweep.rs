//! Property sweep of every route over the fake backend: generated bodies (any JSON, weighted
//! towards the fields the routes read), query strings and paths must get a documented answer
//! in the one error shape: any 4xx, or a 5xx the API documents (500 `model_error` for an input
//! the model cannot process, 503 and 504), never another server error. Deterministic (a fixed
//! seed), bounded in cases; schemathesis sweeps the same routes from the OpenAPI document on
//! the real server (tests/api/schemathesis.rs).

use axum::http::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};

use crate::helpers::*;

const POST_ROUTES: [&str; 13] = [
    "/v1/embed",
    "/v1/embeddings",
    "/v1/tokenize",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/embed_sparse",
    "/v2/embed",
    "/embed",
    "/",
    "/tokenize",
    "/decode",
    "/v1/embed?x=1",
];
const GET_ROUTES: [&str; 6] = ["/v1/models", "/health", "/ready", "/v1/usage", "/info", "/openapi.json"];

/// Field names the routes read, and a few they do not.
const FIELDS: [&str; 30] = [
    "input",
    "inputs",
    "texts",
    "model",
    "query",
    "documents",
    "ids",
    "dimensions",
    "encoding_format",
    "embedding_types",
    "normalize",
    "truncate",
    "truncation_direction",
    "prompt_name",
    "prompt",
    "top_n",
    "return_documents",
    "return_text",
    "max_tokens",
    "max_tokens_per_doc",
    "input_type",
    "output_type",
    "raw_scores",
    "skip_special_tokens",
    "add_special_tokens",
    "user",
    "sparse",
    "images",
    "zzz",
    "",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a cat".to_owned()),
        Just("minilm-l6-int8".to_owned()),
        Just("float".to_owned()),
        Just("base64".to_owned()),
        Just("x".repeat(3_000)),
        Just("\u{0}\u{feff}\u{202e}".to_owned()),
        "\\PC{0,40}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5i64..600).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(&FIELDS[..]), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

/// An object of known fields (what a client means to send, with wrong values), or any JSON.
fn body() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::vec((prop::sample::select(&FIELDS[..]), json()), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => json(),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(&["start", "end", "tenant", "model", "group_by", "", "x"][..]);
    let value = prop_oneof![
        Just("2026-12-01".to_owned()),
        Just("-9999-01-01".to_owned()),
        Just("+275760-09-13".to_owned()),
        Just("2026-02-30".to_owned()),
        Just("yesterday".to_owned()),
        Just("%ZZ".to_owned()),
        "[0-9a-z%&=+-]{0,12}",
    ];
    prop::collection::vec((key, value), 0..4)
        .prop_map(|kv| kv.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))
}

/// The answer is documented: a 2xx, any 4xx, or a documented 5xx; every refusal in the error
/// shape.
fn check(what: &str, r: &Reply) -> Result<(), TestCaseError> {
    let code = r.body["error"]["code"].as_str().unwrap_or_default();
    let documented_5xx = matches!((r.status, code), (500, "model_error") | (503, _) | (504, _));
    prop_assert!(r.status < 500 || documented_5xx, "{what} -> {} {}", r.status, r.body);
    if r.status >= 400 {
        prop_assert!(
            r.body["error"]["message"].is_string() && r.body["error"]["type"].is_string(),
            "{what} -> {} not in the error shape: {}",
            r.status,
            r.body
        );
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

#[test]
fn generated_bodies_on_every_post_route_get_documented_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(FastApp::default());
    let strategy = (prop::sample::select(&POST_ROUTES[..]), body());
    runner(1_500)
        .run(&strategy, |(route, body)| {
            let r = rt.block_on(app.post(route, Some(ACME_KEY), body.clone()));
            check(&format!("POST {route} {body}"), &r)
        })
        .unwrap();
    // The service still serves.
    let r = rt.block_on(app.post("/v1/embed", Some(ACME_KEY), serde_json::json!({ "input": "still here" })));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn generated_raw_bodies_query_strings_and_paths_get_documented_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(FastApp::default());
    let raw = (prop::sample::select(&POST_ROUTES[..]), prop::collection::vec(any::<u8>(), 0..200));
    runner(500)
        .run(&raw, |(route, bytes)| {
            let r = rt.block_on(app.send(Method::POST, route, Some(ACME_KEY), bytes.clone()));
            check(&format!("POST {route} {:?}", String::from_utf8_lossy(&bytes)), &r)
        })
        .unwrap();
    let gets = (prop::sample::select(&GET_ROUTES[..]), query(), any::<bool>());
    runner(500)
        .run(&gets, |(route, query, keyed)| {
            let path = format!("{route}?{query}");
            let r = rt.block_on(app.get(&path, keyed.then_some(ACME_KEY)));
            check(&format!("GET {path}"), &r)
        })
        .unwrap();
    let segment = "[a-zA-Z0-9._~%-]{0,12}";
    let paths =
        (prop::collection::vec(segment, 1..4), prop::sample::select(&["GET", "POST", "PUT", "DELETE"][..]));
    runner(300)
        .run(&paths, |(segments, method)| {
            let path = format!("/{}", segments.join("/"));
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let r = rt.block_on(app.send(method.clone(), &path, Some(ACME_KEY), "{}"));
            check(&format!("{method} {path}"), &r)
        })
        .unwrap();
}
