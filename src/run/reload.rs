//! Configuration reload without restart: tenants (keys, models, limits) and model specs change
//! on SIGHUP, and when the config file's modification time or size changes (checked every
//! `server.reload_poll_ms`). `[server]`, `[runtime]`, `[cache]` and `[store]` change on restart
//! only; a reload that changes them applies the rest, keeps them, and says so (a warning naming
//! them, and `embedserve_config_reloads_total{outcome="restart_required"}`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::app::AppState;
use crate::config::Settings;

impl AppState {
    /// Re-reads the configuration file and applies tenants and models. An invalid file changes
    /// nothing and returns the reason.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = Settings::load(&self.config_path).map(|settings| {
            let unchanged = [
                ("[server]", settings.server == self.api.server),
                ("[runtime]", settings.runtime == self.runtime),
                ("[cache]", settings.cache == self.cache),
                ("[store]", settings.store == self.store),
            ];
            let kept: Vec<&str> = unchanged.iter().filter(|(_, same)| !same).map(|(name, _)| *name).collect();
            self.api.tenants.replace(&settings);
            self.api.embedder.replace_specs(settings.all_models());
            (settings.tenants.len(), kept)
        });
        let file = self.config_path.display();
        let reloads = &self.api.metrics.config_reloads;
        match &result {
            Ok((tenants, kept)) if kept.is_empty() => {
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %file, tenants, "configuration reloaded");
            }
            Ok((tenants, kept)) => {
                // Loud: an operator who changed the limit store must learn it is not in use yet.
                reloads.with_label_values(&["restart_required"]).inc();
                tracing::warn!(
                    file = %file,
                    tenants,
                    sections = kept.join(", "),
                    "configuration reloaded, except sections that change on restart only: they \
                     differ from the running ones, which are kept until a restart"
                );
            }
            Err(e) => {
                reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "configuration reload rejected; the running configuration stays"
                );
            }
        }
        result.map(|_| ())
    }
}

/// Starts the watchers on the current tokio runtime; they live as long as the runtime.
pub fn spawn_watchers(state: Arc<AppState>) {
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading configuration");
                reload_off_runtime(&state).await;
            }
        });
    }
    let every = state.api.server.reload_poll_ms;
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
                reload_off_runtime(&state).await;
            }
        }
    });
}

/// Reads, parses and applies the file on the blocking pool: requests keep being served
/// meanwhile.
async fn reload_off_runtime(state: &Arc<AppState>) {
    let state = Arc::clone(state);
    let _ = tokio::task::spawn_blocking(move || state.reload()).await;
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
