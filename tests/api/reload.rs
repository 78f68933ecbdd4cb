//! Configuration reload while serving: add a tenant, rotate a key, reject a broken file (the
//! file watcher), and the same on SIGHUP alone with the watcher off.

use std::time::{Duration, Instant};

use serde_json::json;

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
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    eventually(&server, NEW_KEY, 200).await;
    assert_eq!(status(&server, ACME_KEY).await, 200);
    assert_eq!(server.metric("embedserve_config_reloads_total{outcome=\"ok\"}").await, 1.0);
}
