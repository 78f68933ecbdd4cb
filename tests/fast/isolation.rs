//! One input the model cannot process fails alone: whatever shared its run gets its vectors,
//! exactly once; a panicking run is caught; a model that is broken rather than its inputs is
//! unloaded and loaded again after a backoff; no queue room is lost on the way.

use std::time::{Duration, Instant};

use crate::fake::{FAILING_CHAR, FakeLoader, PANICKING_CHAR};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

const MODEL: &str = "minilm-l6-int8";

fn has_failing(text: &str) -> bool {
    text.contains(FAILING_CHAR) || text.contains(PANICKING_CHAR)
}

/// Asserts `r` is the documented 500 for inputs the model could not process, naming `named`.
fn assert_model_error(r: &Reply, param: &str, named: &str) {
    assert_eq!(r.status, 500, "{}", r.body);
    let message = assert_error_shape(&r.body);
    assert_eq!(r.body["error"]["code"], "model_error", "{}", r.body);
    assert_eq!(r.body["error"]["param"], param, "{}", r.body);
    assert!(message.contains(&format!("could not process {named} of `{param}`")), "{message}");
    assert!(!message.contains("fake"), "the cause leaked: {message}");
}

#[tokio::test]
async fn a_failing_input_fails_alone_and_every_other_input_gets_its_vector_once() {
    let fake = FakeLoader::with_run_delay(Duration::from_millis(20));
    let app = &FastApp::start(default_settings(), fake.clone()).await;
    let clean: Vec<String> = (0..8).map(|i| format!("clean-{i}")).collect();
    let mut alone = Vec::new();
    for text in &clean {
        alone.push(app.embed(json!({ "input": text })).await.remove(0));
    }
    let failing: Vec<String> = (0..4)
        .map(|i| format!("error-{i}{FAILING_CHAR}"))
        .chain((0..4).map(|i| format!("panic-{i}{PANICKING_CHAR}")))
        .collect();
    let warm = fake.runs().len();

    // Interleaved, so that clean and failing inputs are queued together and share runs.
    let texts: Vec<&String> = clean.iter().zip(&failing).flat_map(|(c, f)| [c, f]).collect();
    let replies =
        join_all(texts.iter().map(|t| app.post("/v1/embed", Some(ACME_KEY), json!({ "input": t })))).await;

    for (text, r) in texts.iter().zip(&replies) {
        if has_failing(text) {
            assert_model_error(r, "input", "input 0");
        } else {
            assert_eq!(r.status, 200, "{text}: {}", r.body);
            let i = clean.iter().position(|c| c == *text).unwrap();
            assert_eq!(vectors(&r.body["embeddings"])[0], alone[i], "{text} got another input's vector");
        }
    }
    let runs = &fake.runs()[warm..];
    let shared = runs.iter().filter(|run| run.iter().any(|t| has_failing(t)) && run.len() > 1).count();
    assert!(shared > 0, "no failing input shared a run, so nothing was isolated: {runs:?}");
    for text in &clean {
        let ok_runs =
            runs.iter().filter(|run| !run.iter().any(|t| has_failing(t)) && run.contains(text)).count();
        assert_eq!(ok_runs, 1, "{text} was in {ok_runs} successful runs, not exactly one");
    }
    let metrics = app.metrics();
    let isolated = metric_value(&metrics, &format!("embedserve_isolated_inputs_total{{model=\"{MODEL}\"}}"));
    assert_eq!(isolated, 8.0, "each failing input isolated once");
    let panics =
        metric_value(&metrics, &format!("embedserve_failed_runs_total{{kind=\"panic\",model=\"{MODEL}\"}}"));
    let errors =
        metric_value(&metrics, &format!("embedserve_failed_runs_total{{kind=\"error\",model=\"{MODEL}\"}}"));
    let failed_runs = runs.iter().filter(|run| run.iter().any(|t| has_failing(t))).count();
    assert_eq!((panics + errors) as usize, failed_runs, "every failed run counted once");
    println!(
        "8 clean + 8 failing requests: {} runs, {failed_runs} failed ({panics} panics), {shared} shared by a failing input",
        runs.len()
    );
    assert_eq!(fake.loads(), 1, "the worker went on: no reload");
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "after" })).await.status, 200);
}

#[tokio::test]
async fn a_request_names_each_input_the_model_could_not_process_on_every_route() {
    let app = FastApp::default().await;
    let body =
        json!({ "input": ["fine", format!("a{FAILING_CHAR}"), "also fine", format!("b{PANICKING_CHAR}")] });
    for route in EMBED_ROUTES {
        let r = app.post(route, Some(ACME_KEY), body.clone()).await;
        assert_model_error(&r, "input", "inputs 1 and 3");
    }
    let sparse = json!({ "model": "splade-tiny", "input": ["fine", format!("a{FAILING_CHAR}")] });
    assert_model_error(&app.post("/v1/embed", Some(ACME_KEY), sparse).await, "input", "input 1");
    let rerank = json!({
        "model": "ms-marco-minilm-l12",
        "query": "q",
        "documents": ["fine", "also fine", format!("c{PANICKING_CHAR}")],
    });
    for route in ["/v1/rerank", "/v2/rerank"] {
        assert_model_error(&app.post(route, Some(ACME_KEY), rerank.clone()).await, "documents", "input 2");
    }
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "still here" })).await.status, 200);
}

#[tokio::test]
async fn failed_and_panicked_requests_give_back_their_queue_room() {
    let mut settings = default_settings();
    // Room for about four of the requests below: a leak of their tokens would fill it at once.
    settings.server.max_queue_tokens = 64;
    settings.server.max_tenant_queue_percent = 100;
    let fake = FakeLoader::new();
    let app = FastApp::start(settings, fake.clone()).await;
    for i in 0..40u32 {
        let failing =
            if i.is_multiple_of(2) { format!("x{PANICKING_CHAR}") } else { format!("x{FAILING_CHAR}") };
        let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": ["clean words", failing] })).await;
        assert_model_error(&r, "input", "input 1");
    }
    let big = "y".repeat(60);
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": big })).await;
    assert_eq!(r.status, 200, "the queue kept tokens of answered requests: {}", r.body);
    assert_eq!(fake.loads(), 1);
}

#[tokio::test]
async fn a_model_that_panics_on_every_run_is_unloaded_and_loaded_again_after_a_backoff() {
    let fake = FakeLoader::with_run_delay(Duration::from_millis(5));
    let app = &FastApp::start(default_settings(), fake.clone()).await;
    let before = app.embed(json!({ "input": "steady" })).await;
    assert_eq!(fake.loads(), 1);

    fake.panic_on_every_run(true);
    let replies =
        join_all((0..4).map(|i| app.post("/v1/embed", Some(ACME_KEY), json!({ "input": format!("t{i}") }))))
            .await;
    for r in &replies {
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "model_unavailable", "{}", r.body);
        assert!(r.headers.contains_key("retry-after"));
    }
    // Within its backoff the model is neither handed out nor loaded again.
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "again" })).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "model_unavailable");
    assert_eq!(fake.loads(), 1, "no load within the backoff");
    let metrics = app.metrics();
    assert_eq!(metric_value(&metrics, &format!("embedserve_model_stops_total{{model=\"{MODEL}\"}}")), 1.0);
    assert_eq!(
        find_sample(&metrics, &format!("embedserve_isolated_inputs_total{{model=\"{MODEL}\"}}")),
        None,
        "no input was blamed for the model's failure"
    );

    fake.panic_on_every_run(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after: Value = loop {
        let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "steady" })).await;
        if r.status == 200 {
            break r.body;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "the model was not loaded again within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vectors(&after["embeddings"]), before);
    assert_eq!(fake.loads(), 2, "loaded again exactly once");
}
