//! Keys, isolation between tenants, and each tenant's limits.

use axum::http::Method;
use embedserve::Settings;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::fake::FakeLoader;
use crate::helpers::*;

#[tokio::test]
async fn a_missing_or_unknown_key_is_401_on_every_v1_route() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        for key in [None, Some("not-a-key"), Some("")] {
            let r = app.post(route, key, json!({ "input": "x" })).await;
            assert_eq!(r.status, 401, "{route} with {key:?}");
            assert_error_shape(&r.body);
            assert_eq!(r.body["error"]["type"], "authentication_error");
        }
    }
    assert_eq!(app.get("/v1/models", None).await.status, 401);
}

#[tokio::test]
async fn the_key_may_come_as_x_api_key() {
    let app = FastApp::default().await;
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/embed")
        .header("x-api-key", ACME_KEY)
        .body(axum::body::Body::from(json!({ "input": "x" }).to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.router.clone(), request).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn another_tenants_private_model_is_answered_exactly_like_a_missing_one() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        let denied =
            app.post(route, Some(GLOBEX_KEY), json!({ "input": "x", "model": "paraphrase-l3" })).await;
        let missing =
            app.post(route, Some(GLOBEX_KEY), json!({ "input": "x", "model": "no-such-model" })).await;
        assert_eq!((denied.status, missing.status), (404, 404), "{route}");
        let normalise = |v: &Value, name: &str| v.to_string().replace(name, "MODEL");
        assert_eq!(normalise(&denied.body, "paraphrase-l3"), normalise(&missing.body, "no-such-model"));
    }
    let ids = |r: Reply| -> Vec<String> {
        r.body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(app.get("/v1/models", Some(GLOBEX_KEY)).await), ["minilm-l6-int8"]);
    assert_eq!(
        ids(app.get("/v1/models", Some(ACME_KEY)).await),
        [
            "bge-small-en-v1-5",
            "minilm-l6",
            "minilm-l6-int8",
            "ms-marco-minilm-l12",
            "paraphrase-l3",
            "splade-tiny"
        ]
    );
    let text = app.metrics();
    let sample =
        "embedserve_requests_total{model=\"\",route=\"/v1/models\",status=\"200\",tenant=\"globex\"}";
    assert_eq!(metric_value(&text, sample), 1.0, "/v1/models is counted with its tenant");
}

#[tokio::test]
async fn a_burst_over_a_tenants_limit_gets_429_with_retry_after_and_other_tenants_are_unaffected() {
    let settings = default_settings();
    let limits = settings.tenants["globex"].limits;
    let app = FastApp::start(settings, FakeLoader::new()).await;
    let mut refused_total = 0;
    for route in EMBED_ROUTES {
        // A full bucket: `burst` requests at once, plus what refills while the 12 are decided.
        let started = std::time::Instant::now();
        let globex =
            join_all((0..12).map(|_| app.post(route, Some(GLOBEX_KEY), json!({ "input": "burst" })))).await;
        let refill = (f64::from(limits.requests_per_second) * started.elapsed().as_secs_f64()) as usize;
        let acme =
            join_all((0..12).map(|_| app.post(route, Some(ACME_KEY), json!({ "input": "steady" })))).await;
        let served = globex.iter().filter(|r| r.status == 200).count();
        let burst = limits.burst as usize;
        assert!(
            (burst..=burst + refill).contains(&served),
            "{route}: {served} served, burst {burst} + {refill}"
        );
        let refused: Vec<&Reply> = globex.iter().filter(|r| r.status == 429).collect();
        assert_eq!(refused.len(), 12 - served, "{route}: every other request is refused");
        refused_total += refused.len();
        for r in refused {
            assert_error_shape(&r.body);
            assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{route}: Retry-After {retry}");
        }
        assert!(acme.iter().all(|r| r.status == 200), "{route}: acme was limited by globex's burst");
        // The bucket refills whole after burst / rate seconds.
        tokio::time::sleep(std::time::Duration::from_secs_f64(
            f64::from(limits.burst) / f64::from(limits.requests_per_second) + 0.1,
        ))
        .await;
    }
    let refilled = app.post("/v1/embeddings", Some(GLOBEX_KEY), json!({ "input": "x" })).await;
    assert_eq!(refilled.status, 200, "the bucket refills after the wait");
    let sample = "embedserve_rate_limited_total{limit=\"requests\",tenant=\"globex\"}";
    assert_eq!(metric_value(&app.metrics(), sample), refused_total as f64);
}

#[tokio::test]
async fn a_tenants_token_budget_is_enforced_and_a_request_over_a_whole_minute_is_413() {
    let mut settings = default_settings();
    settings.tenants.get_mut("globex").unwrap().limits.tokens_per_minute = 20;
    let app = FastApp::start(settings, Default::default()).await;
    // The fake tokenizer: "[CLS] a b c [SEP]" is 5 tokens; four fit in 20, the fifth does not.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "abc" })).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // requests/s refills
    let over = app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "x".repeat(40) })).await;
    assert_eq!(over.status, 413, "{}", over.body);
    assert_error_shape(&over.body);
}

#[tokio::test]
async fn a_tenants_max_inputs_is_enforced() {
    let app = FastApp::default().await;
    let inputs = |n: usize| json!({ "input": (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>() });
    assert_eq!(app.post("/v1/embed", Some(GLOBEX_KEY), inputs(64)).await.status, 200);
    let r = app.post("/v1/embed", Some(GLOBEX_KEY), inputs(65)).await;
    assert_eq!(r.status, 413, "globex's max_inputs is 64: {}", r.body);
    assert_eq!(r.body["error"]["param"], "input");
}

#[tokio::test]
async fn a_reload_keeps_the_running_servers_max_inputs_as_every_tenants_cap() {
    let dir = std::env::temp_dir().join(format!("embedserve-fast-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let original = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let with_cap =
        |cap: usize| original.replace("max_inputs = 256               #", &format!("max_inputs = {cap} #"));
    std::fs::write(&path, with_cap(10)).unwrap();
    let app = FastApp::start(Settings::load(&path).unwrap(), Default::default()).await;
    let inputs = |n: usize| json!({ "input": (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>() });
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), inputs(11)).await.status, 413, "capped at 10");

    // [server] changes on restart only, so the cap stays 10 after a reload raising it.
    std::fs::write(&path, with_cap(256)).unwrap();
    app.state.reload().unwrap();
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), inputs(11)).await.status, 413, "still capped at 10");
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), inputs(10)).await.status, 200);
    // Applied, but not all of it: the reload says a restart is required.
    let reloads = |outcome: &str| format!("embedserve_config_reloads_total{{outcome=\"{outcome}\"}}");
    assert_eq!(metric_value(&app.metrics(), &reloads("restart_required")), 1.0);
    assert_eq!(metric_or_zero(&app.metrics(), &reloads("ok")), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn header(r: &Reply, name: &str) -> String {
    r.headers.get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_owned()
}

fn seconds(value: &str) -> f64 {
    value.strip_suffix('s').unwrap_or_else(|| panic!("{value} is not in seconds")).parse().unwrap()
}

#[tokio::test]
async fn every_embedding_response_reports_the_tenants_limits_as_openai_does() {
    let app = FastApp::default().await;
    // globex: 5 requests per second (burst 5), 100,000 tokens per minute.
    let mut tokens_left = 100_000;
    for (i, route) in ["/v1/embed", "/v1/embeddings", "/v1/embed"].iter().enumerate() {
        let r = app.post(route, Some(GLOBEX_KEY), json!({ "input": "abc" })).await;
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "5");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), (4 - i).to_string(), "counts down");
        let reset = seconds(&header(&r, "x-ratelimit-reset-requests"));
        assert!(reset > 0.0 && reset <= 1.0, "{reset}");
        assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "100000");
        let used = r.body["usage"]["total_tokens"].as_i64().unwrap();
        tokens_left -= used;
        // The bucket refills between requests: at least what was not spent, at most full less
        // this request.
        let remaining: i64 = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
        assert!((tokens_left..=100_000 - used).contains(&remaining), "{remaining} vs {tokens_left}");
        assert!(seconds(&header(&r, "x-ratelimit-reset-tokens")) > 0.0);
    }
    // A refused request and a rejected one carry them too.
    let replies = futures::future::join_all(
        (0..4).map(|_| app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "x" }))),
    )
    .await;
    let refused = replies.iter().find(|r| r.status == 429).expect("the burst ran out");
    assert_eq!(header(refused, "x-ratelimit-remaining-requests"), "0");
    let retry: f64 = header(refused, "retry-after").parse().unwrap();
    assert!(seconds(&header(refused, "x-ratelimit-reset-requests")) <= retry + 1.0);
    assert!(refused.headers.contains_key("x-ratelimit-remaining-tokens"));
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let invalid = app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "" })).await;
    assert_eq!(invalid.status, 422);
    assert!(invalid.headers.contains_key("x-ratelimit-remaining-requests"));
}
