//! Models with variants (config/default.toml's `minilm-l6`: `fp32` and `int8`): `auto` serves
//! int8 where the CPU multiplies it exactly on its fast kernels and otherwise the faster of the
//! two in a timed run (this host as itself, and passing for an AVX2 CPU: tests/support/cpumask.c,
//! or QEMU where the host cannot mask CPUID, see tests/api/cpu_kinds.rs); `/v1/models`, the metric and the load log say which and why; a
//! pinned variant gives that graph's own vectors.

use serde_json::{Value, json};

use crate::cpu_kinds::{host_has_fast_int8, min_cosine, pass_for};
use crate::helpers::*;
use crate::quality::{embed_all, quality_set};
use crate::spawned::{SpawnedServer, TempDir, default_config_text};

/// How long the first request as an AVX2 CPU may take: under QEMU (about 100 times slower) the
/// load's timed run of both variants took up to 124 s on an AMD EPYC.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(420);

/// `minilm-l6`'s entry in acme's `/v1/models`.
async fn listed(server: &SpawnedServer) -> Value {
    let models = server.get_json_as(ACME_KEY, "/v1/models").await;
    models["data"].as_array().unwrap().iter().find(|m| m["id"] == "minilm-l6").unwrap().clone()
}

async fn embed(server: &SpawnedServer, model: &str, texts: &Value) -> Value {
    let (status, body) =
        server.post_as(ACME_KEY, "/v1/embed", json!({ "model": model, "input": texts })).await;
    assert_eq!(status, 200, "{body}");
    body["embeddings"].clone()
}

#[tokio::test]
async fn auto_serves_int8_on_fast_int8_cpus_and_the_faster_variant_elsewhere_and_says_why() {
    let texts =
        json!(["The cat sat.", "Ünïcödé 東京", "A longer sentence about the quarterly report. ".repeat(30)]);
    let host = SpawnedServer::start("variants-host", &default_config_text()).await;
    let before = listed(&host).await;
    assert!(before.get("variant").is_none(), "no variant before it loads: {before}");
    let auto = embed(&host, "minilm-l6", &texts).await;
    let entry = listed(&host).await;
    let (variant, reason) = (entry["variant"].as_str().unwrap(), entry["variant_reason"].as_str().unwrap());
    println!("{}: minilm-l6 serves {variant}: {reason}", host_cpu());
    if host_has_fast_int8() {
        assert_eq!(variant, "int8", "{entry}");
        assert!(reason.contains("fast kernels"), "{reason}");
        assert_eq!(auto, embed(&host, "minilm-l6-int8", &texts).await, "the int8 graph's very vectors");
    } else {
        assert!(
            reason.starts_with("timed on this CPU") && reason.contains("fp32") && reason.contains("int8"),
            "{reason}"
        );
    }
    let sample = format!("embedserve_model_variant{{model=\"minilm-l6\",variant=\"{variant}\"}}");
    assert_eq!(host.metric(&sample).await, 1.0);
    let logged = host.log_text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("model loaded") && l.contains("\"variant\":\"") && l.contains(reason)),
        "the load log line names the variant and why:\n{logged}"
    );
    drop(host);

    // Passing for an AVX2 CPU: no fast int8, so a timed run decides, naming both timings.
    let dir = TempDir::new("variants-cpumask");
    let how = pass_for("avx2", &dir).expect("every AVX2 host passes for an AVX2 CPU");
    let avx2 =
        SpawnedServer::start_under("variants-avx2", &default_config_text(), &how.env(), how.wrapper()).await;
    // The first request loads the model and times both variants: minutes under QEMU.
    let first = client_with_key(Some(ACME_KEY))
        .post(avx2.url("/v1/embed"))
        .json(&json!({ "model": "minilm-l6", "input": "The cat sat." }))
        .timeout(LOAD_TIMEOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let auto = embed(&avx2, "minilm-l6", &texts).await;
    let entry = listed(&avx2).await;
    let (variant, reason) = (entry["variant"].as_str().unwrap(), entry["variant_reason"].as_str().unwrap());
    println!("{} as avx2 ({}): minilm-l6 serves {variant}: {reason}", host_cpu(), how.describe());
    assert!(
        reason.starts_with("timed on this CPU") && reason.contains("fp32 ") && reason.contains("int8 "),
        "{reason}"
    );
    if variant == "int8" {
        assert_eq!(auto, embed(&avx2, "minilm-l6-int8", &texts).await);
    } else {
        assert_eq!(variant, "fp32");
    }
}

#[tokio::test]
async fn a_pinned_fp32_variant_gives_sentence_transformers_vectors() {
    let config = default_config_text().replace("variant = \"auto\"", "variant = \"fp32\"");
    assert_ne!(config, default_config_text(), "config/default.toml sets minilm-l6's variant");
    let server = SpawnedServer::start("variants-fp32", &config).await;
    let qs = quality_set();
    let got = embed_all(&server.url(""), "minilm-l6", &qs).await;
    let min = min_cosine(&got, &qs.minilm_reference);
    println!(
        "minilm-l6 pinned to fp32: min cosine {min:.7} to sentence-transformers over {} texts",
        got.len()
    );
    assert!(min >= 0.99999, "fp32 is sentence-transformers' own model: min cosine {min}");
    let entry = listed(&server).await;
    assert_eq!(
        (entry["variant"].as_str(), entry["variant_reason"].as_str()),
        (Some("fp32"), Some("pinned in the configuration"))
    );
}
