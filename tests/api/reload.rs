//! Configuration reload while serving: add a tenant, rotate a key, reject a broken file (the
//! file watcher), and the same on SIGHUP alone with the watcher off; a changed model spec and
//! what it leaves of a tenant's limits; a changed `[store]` kept loudly; a key two tenants share
//! refused.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{TestTenant, cluster_config, free_port};
use crate::helpers::*;
use crate::spawned::{SpawnedServer, default_config_text};

const NEW_KEY: &str = "newco-key-1";
const ROTATED_KEY: &str = "acme-rotated-key";

async fn status(server: &SpawnedServer, key: &str) -> u16 {
    server.post_as(key, "/v1/embed", json!({ "input": "reload" })).await.0
}

/// Polls until `key` gets `want`, for at most 10 s.
async fn eventually(server: &SpawnedServer, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(server, key).await != want {
        assert!(Instant::now() < deadline, "{key} never got {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tenants_and_keys_reload_without_restart_and_a_broken_file_is_rejected() {
    let original = default_config_text().replace("reload_poll_ms = 2_000", "reload_poll_ms = 100");
    let server = SpawnedServer::start("reload", &original).await;
    assert_eq!(status(&server, ACME_KEY).await, 200);
    assert_eq!(status(&server, NEW_KEY).await, 401);

    // Add a tenant and rotate acme's key, through the file watcher.
    let hash = |k: &str| embedserve::config::keys::hash_key(k);
    let rotated = original.replace(&hash(ACME_KEY), &hash(ROTATED_KEY))
        + &format!("\n[tenants.newco]\nkeys = [\"{}\"]\nmodels = [\"minilm-l6-int8\"]\n", hash(NEW_KEY));
    std::fs::write(&server.config, &rotated).unwrap();
    eventually(&server, NEW_KEY, 200).await;
    assert_eq!(status(&server, ROTATED_KEY).await, 200);
    assert_eq!(status(&server, ACME_KEY).await, 401, "the rotated-out key still works");

    // A broken file changes nothing; the service keeps serving the running configuration.
    std::fs::write(&server.config, rotated.replace("[tenants.newco]", "[tenants.newco")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = "embedserve_config_reloads_total{outcome=\"rejected\"}";
    while find_sample(&server.metrics().await, rejected).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&server, NEW_KEY).await, 200);
    assert_eq!(status(&server, ROTATED_KEY).await, 200);

    assert!(server.metric("embedserve_config_reloads_total{outcome=\"ok\"}").await >= 1.0);
}

#[tokio::test]
async fn sighup_reloads_with_file_polling_off() {
    let original = default_config_text().replace("reload_poll_ms = 2_000", "reload_poll_ms = 0");
    let server = SpawnedServer::start("reload-sighup", &original).await;
    let hash = embedserve::config::keys::hash_key(NEW_KEY);
    let added = format!("{original}\n[tenants.newco]\nkeys = [\"{hash}\"]\nmodels = [\"minilm-l6-int8\"]\n");
    std::fs::write(&server.config, &added).unwrap();
    // Nothing watches the file: without a signal the change is not seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&server, NEW_KEY).await, 401, "the file was read without SIGHUP");
    hang_up(&server);
    eventually(&server, NEW_KEY, 200).await;
    assert_eq!(status(&server, ACME_KEY).await, 200);
    assert_eq!(server.metric("embedserve_config_reloads_total{outcome=\"ok\"}").await, 1.0);
}

fn hang_up(server: &SpawnedServer) {
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

/// Writes `config`, sends SIGHUP and waits (10 s at most) for reloads with `outcome` to reach `n`.
async fn reload_with(server: &SpawnedServer, config: &str, outcome: &str, n: f64) {
    std::fs::write(&server.config, config).unwrap();
    hang_up(server);
    let sample = format!("embedserve_config_reloads_total{{outcome=\"{outcome}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while find_sample(&server.metrics().await, &sample).unwrap_or(0.0) < n {
        assert!(Instant::now() < deadline, "no reload {outcome} after SIGHUP:\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_changed_model_spec_reloads_the_model_and_keeps_the_limit_state_of_unchanged_tenants() {
    // 100 tokens a minute: one request of about 90 leaves the bucket refusing it for a minute.
    let original = cluster_config(None, &[TestTenant::new("metered", 100, 100, 100)])
        .replace("reload_poll_ms = 2_000", "reload_poll_ms = 0");
    let server = SpawnedServer::start("reload-model", &original).await;
    let ninety = json!({ "input": "word ".repeat(88) });
    let (status, reply) = server.post_as("metered-test-key", "/v1/embed", ninety.clone()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage"]["total_tokens"], 90);
    assert_eq!(server.post_as("metered-test-key", "/v1/embed", ninety.clone()).await.0, 429);
    let tokenized = |server: &SpawnedServer| {
        let body = json!({ "input": "word ".repeat(400), "model": "minilm-l6-int8" });
        let url = server.url("/v1/tokenize");
        async move {
            let r = client_with_key(Some(ACME_KEY)).post(url).json(&body).send().await.unwrap();
            r.json::<serde_json::Value>().await.unwrap()["data"][0]["count"].clone()
        }
    };
    assert_eq!(tokenized(&server).await, 256);
    let loads = r#"embedserve_model_loads_total{model="minilm-l6-int8",outcome="ok"}"#;
    let loaded = server.metric(loads).await;

    // The model's spec changes (its token limit): unloaded, and loaded again as now described.
    let spec = "max_tokens = 256\ndimensions = 384\ngraph_optimization";
    assert!(original.contains(spec), "minilm-l6-int8's spec moved");
    let shorter = original.replacen(spec, "max_tokens = 128\ndimensions = 384\ngraph_optimization", 1);
    reload_with(&server, &shorter, "ok", 1.0).await;
    assert_eq!(tokenized(&server).await, 128);
    assert_eq!(server.metric(loads).await, loaded + 1.0);
    assert!(server.log_text().contains("model unloaded: its configuration changed"));
    // The tenant's limits did not change: its spent bucket is kept, not refilled.
    assert_eq!(server.post_as("metered-test-key", "/v1/embed", ninety.clone()).await.0, 429);

    // Its limits change: it starts on a full bucket of the new size.
    let more = shorter.replace("tokens_per_minute = 100,", "tokens_per_minute = 101,");
    assert_ne!(more, shorter);
    reload_with(&server, &more, "ok", 2.0).await;
    assert_eq!(server.post_as("metered-test-key", "/v1/embed", ninety).await.0, 200);
}

#[tokio::test]
async fn a_changed_store_is_kept_until_a_restart_loudly_and_a_key_two_tenants_share_is_refused() {
    let original = default_config_text().replace("reload_poll_ms = 2_000", "reload_poll_ms = 0");
    let server = SpawnedServer::start("reload-store", &original).await;
    let newco = |keys: &[&str]| {
        let hashes: Vec<String> =
            keys.iter().map(|k| format!("\"{}\"", embedserve::config::keys::hash_key(k))).collect();
        format!("\n[tenants.newco]\nkeys = [{}]\nmodels = [\"minilm-l6-int8\"]\n", hashes.join(", "))
    };

    // [store] now names a Redis (that is not there), and a tenant is added: the tenant is
    // applied, the store is not, and the warning and the metric say so.
    let redis =
        format!("\n[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/0\"\n", free_port());
    let changed = format!("{original}{redis}{}", newco(&[NEW_KEY]));
    reload_with(&server, &changed, "restart_required", 1.0).await;
    let log = server.log_text();
    let warning =
        log.lines().find(|l| l.contains("sections that change on restart only")).expect("a warning");
    let line: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert_eq!(
        (line["level"].as_str(), line["sections"].as_str()),
        (Some("WARN"), Some("[store]")),
        "{warning}"
    );
    assert_eq!(server.metric_or_zero(r#"embedserve_config_reloads_total{outcome="ok"}"#).await, 0.0);
    assert_eq!(status(&server, NEW_KEY).await, 200, "the rest of the file was not applied");
    // Still the local store: usage answers from this process (a Redis that is not there would
    // make it 503), and no decision waited on Redis.
    let r = client_with_key(Some(NEW_KEY)).get(server.url("/v1/usage")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["total"]["requests"], 1);
    assert!(!log.contains("Redis"), "{log}");

    // A key two tenants share: refused at load, naming both tenants and never the key...
    let shared = changed.replace(&newco(&[NEW_KEY]), &newco(&[NEW_KEY, ACME_KEY]));
    let path = server.config.with_file_name("shared-key.toml");
    std::fs::write(&path, &shared).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let refusal =
        String::from_utf8_lossy(&check.stderr).into_owned() + &String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{refusal}");
    let names_both = "tenants.newco.keys[1]: the same key is also a key of tenant acme";
    let acme_hash = embedserve::config::keys::hash_key(ACME_KEY);
    assert!(refusal.contains(names_both), "{refusal}");
    assert!(!refusal.contains(ACME_KEY) && !refusal.contains(&acme_hash), "the key is in: {refusal}");
    // ...and at reload, where the running tenants stay.
    reload_with(&server, &shared, "rejected", 1.0).await;
    let log = server.log_text();
    let rejected = log.lines().find(|l| l.contains("reload rejected")).expect("a rejection");
    assert!(rejected.contains(names_both), "{rejected}");
    assert!(!rejected.contains(ACME_KEY) && !rejected.contains(&acme_hash), "the key is in: {rejected}");
    assert_eq!(status(&server, NEW_KEY).await, 200);
    let r = client_with_key(Some(ACME_KEY)).get(server.url("/v1/usage")).send().await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["tenant"], "acme");
}
