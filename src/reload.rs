//! Configuration reload without restart: on SIGHUP, and when the config file's modification
//! time or size changes (checked every `server.reload_poll_ms`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::AppState;

/// Starts the watchers on the current tokio runtime; they live as long as the runtime.
pub fn spawn_watchers(state: Arc<AppState>) {
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = state.reload();
            }
        });
    }
    let every = state.server.reload_poll_ms;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut seen = stamp(&state.config_path);
        loop {
            tokio::time::sleep(Duration::from_millis(every)).await;
            let now = stamp(&state.config_path);
            if now != seen {
                seen = now;
                tracing::info!(file = %state.config_path.display(), "configuration file changed: reloading");
                let _ = state.reload();
            }
        }
    });
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
