//! The embedding cache on the fake backend, whose run log shows what the model computed: a
//! repeated input is not run again and gets the same vector, only in its tenant's scope (or
//! among tenants that share), output options apply to cached vectors, and hits are not billed.

use serde_json::{Value, json};

use crate::fake::{FAILING_CHAR, FakeLoader};
use crate::helpers::*;

fn cached_settings(share: bool) -> embedserve::Settings {
    let mut settings = default_settings();
    settings.cache.embeddings_max_bytes = 1 << 20;
    for tenant in settings.tenants.values_mut() {
        tenant.share_embedding_cache = share;
    }
    settings
}

/// Texts the fake ran since the log held `since` runs.
fn ran_since(fake: &FakeLoader, since: usize) -> Vec<String> {
    fake.runs()[since..].concat()
}

async fn embed_as(app: &FastApp, key: &str, body: Value) -> Value {
    let r = app.post("/v1/embed", Some(key), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn a_repeated_input_is_not_run_again_gets_the_same_vector_and_is_not_billed() {
    let app = &FastApp::start(cached_settings(false), FakeLoader::new()).await;
    let fake = &app.fake;
    let first = embed_as(app, ACME_KEY, json!({ "input": ["alpha", "beta"] })).await;
    let billed = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(first["usage"].get("cached_tokens").is_none(), "no cached_tokens when none: {first}");

    let before = fake.runs().len();
    let again = embed_as(app, ACME_KEY, json!({ "input": ["beta", "alpha"] })).await;
    assert!(ran_since(fake, before).is_empty(), "nothing ran: {:?}", ran_since(fake, before));
    assert_eq!(again["embeddings"][0], first["embeddings"][1]);
    assert_eq!(again["embeddings"][1], first["embeddings"][0]);
    assert_eq!(again["usage"], json!({ "prompt_tokens": 0, "total_tokens": 0, "cached_tokens": billed }));

    let before = fake.runs().len();
    let mixed = embed_as(app, ACME_KEY, json!({ "input": ["gamma", "alpha"] })).await;
    assert_eq!(ran_since(fake, before), vec!["gamma".to_owned()], "only the new input ran");
    assert_eq!(mixed["embeddings"][1], first["embeddings"][0]);
    let fresh = FastApp::default().await;
    assert_eq!(
        mixed["embeddings"][0],
        embed_as(&fresh, ACME_KEY, json!({ "input": "gamma" })).await["embeddings"][0]
    );

    // Output options apply to cached vectors as to computed ones.
    let shaped = json!({ "input": "alpha", "dimensions": 2, "normalize": false, "embedding_types": ["float", "int8"] });
    assert_eq!(
        embed_as(app, ACME_KEY, shaped.clone()).await["embeddings"],
        embed_as(&fresh, ACME_KEY, shaped).await["embeddings"]
    );

    let metrics = app.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "embedserve_embedding_cache_lookups_total{model=\"minilm-l6-int8\",result=\"hit\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "embedserve_embedding_cache_lookups_total{model=\"minilm-l6-int8\",result=\"miss\"}"
        ),
        3.0
    );
    assert!(metric_value(&metrics, "embedserve_embedding_cache_bytes") > 0.0);
}

#[tokio::test]
async fn tenants_do_not_share_cached_vectors_unless_both_opt_in() {
    let private = &FastApp::start(cached_settings(false), FakeLoader::new()).await;
    embed_as(private, ACME_KEY, json!({ "input": "secret" })).await;
    let before = private.fake.runs().len();
    let other = embed_as(private, GLOBEX_KEY, json!({ "input": "secret" })).await;
    assert_eq!(ran_since(&private.fake, before), vec!["secret".to_owned()], "globex's own run");
    assert!(other["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let shared = &FastApp::start(cached_settings(true), FakeLoader::new()).await;
    embed_as(shared, ACME_KEY, json!({ "input": "common" })).await;
    let before = shared.fake.runs().len();
    embed_as(shared, GLOBEX_KEY, json!({ "input": "common" })).await;
    assert!(ran_since(&shared.fake, before).is_empty(), "tenants that share reuse each other's vectors");
}

#[tokio::test]
async fn a_failing_input_beside_cached_ones_is_named_by_its_index_in_the_request() {
    let app = &FastApp::start(cached_settings(false), FakeLoader::new()).await;
    embed_as(app, ACME_KEY, json!({ "input": ["one", "two"] })).await;
    let bad = format!("bad {FAILING_CHAR}");
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": ["one", "three", bad, "two"] })).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "model_error");
    let message = assert_error_shape(&r.body);
    assert!(message.contains("input 2 of `input`"), "names input 2 of the request: {message}");
}
