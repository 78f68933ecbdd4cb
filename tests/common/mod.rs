//! Helpers both test binaries share (`tests/api` on the real models, `tests/fast` on the fake).

use std::path::Path;

use serde_json::Value;

/// The two embedding routes, which share every rule of input, auth, limits and errors.
pub const EMBED_ROUTES: [&str; 2] = ["/v1/embed", "/v1/embeddings"];

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// config/default.toml: its tenants, keys, limits and model specs.
pub fn default_settings() -> embedserve::Settings {
    embedserve::Settings::load(&repo().join("config/default.toml")).expect("config/default.toml loads")
}

/// The demo tenants' keys from config/default.toml.
pub const ACME_KEY: &str = "acme-dev-key";
pub const GLOBEX_KEY: &str = "globex-dev-key";

/// The value of the sample named exactly `sample` (metric name and labels, labels in the
/// order Prometheus prints them) in Prometheus text. A missing sample fails the test: a
/// misspelt name or label must not read as zero.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    find_sample(text, sample).unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

/// Like [`metric_value`], but 0 for a sample not yet counted. So that a misspelling still
/// fails, another sample of the same metric with the same label names must exist.
pub fn metric_or_zero(text: &str, sample: &str) -> f64 {
    if let Some(v) = find_sample(text, sample) {
        return v;
    }
    let (name, labels) = sample.split_once('{').unwrap_or((sample, ""));
    let keys = |labels: &str| -> Vec<String> {
        labels
            .trim_end_matches('}')
            .split(',')
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k.to_owned())
            .collect()
    };
    let wanted = keys(labels);
    let known = text
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix('{'))
        .any(|rest| keys(rest.split_once('}').map_or(rest, |(l, _)| l)) == wanted);
    assert!(known, "no sample of {name} with labels {wanted:?}: misspelt? in\n{text}");
    0.0
}

/// The sample's value, if it has been counted; for loops that wait for it to appear.
pub fn find_sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
}

/// The float vectors of an `embeddings` array.
pub fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("array of vectors")
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

/// Bodies whose `input` is invalid: each must get 422 naming `input`, on both routes.
pub fn invalid_input_bodies() -> Vec<Value> {
    use serde_json::json;
    vec![
        json!({}),
        json!({ "input": null }),
        json!({ "input": [] }),
        json!({ "input": "" }),
        json!({ "input": ["ok", ""] }),
        json!({ "input": ["ok", " "] }),
        json!({ "input": ["ok", 42] }),
        // Token ids (OpenAI's route takes them) mixed with text.
        json!({ "input": [[1, 2, 3], "x"] }),
        json!({ "input": { "text": "x" } }),
    ]
}

/// Asserts the service's one error shape and returns the message.
pub fn assert_error_shape(body: &Value) -> String {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no error.message in {body}");
    assert!(e["type"].is_string(), "no error.type in {body}");
    assert!(e.get("param").is_some(), "no error.param in {body}");
    assert!(e["code"].is_string(), "no error.code in {body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "extra top-level fields in {body}");
    e["message"].as_str().unwrap().to_owned()
}

#[test]
fn a_missing_metric_fails_and_a_misspelt_one_cannot_read_as_zero() {
    let text = "m_total{model=\"a\",result=\"hit\"} 3\n";
    assert_eq!(metric_value(text, "m_total{model=\"a\",result=\"hit\"}"), 3.0);
    assert_eq!(metric_or_zero(text, "m_total{model=\"b\",result=\"hit\"}"), 0.0);
    assert!(std::panic::catch_unwind(|| metric_value(text, "m_total{model=\"b\",result=\"hit\"}")).is_err());
    assert!(std::panic::catch_unwind(|| metric_or_zero(text, "m_totl{model=\"b\",result=\"hit\"}")).is_err());
    assert!(
        std::panic::catch_unwind(|| metric_or_zero(text, "m_total{modle=\"b\",result=\"hit\"}")).is_err()
    );
}
