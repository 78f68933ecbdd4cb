//! Configuration reload without restart: tenants (keys, models, limits) and model specs change
//! on SIGHUP, and when the config file's modification time or size changes (checked every
//! `server.reload_poll_ms`). `[server]`, `[runtime]` and `[cache]` change on restart only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::AppState;
use crate::config::Settings;

impl AppState {
    /// Re-reads the configuration file and applies tenants and models. An invalid file changes
    /// nothing and returns the reason.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = Settings::load(&self.config_path).map(|settings| {
            if settings.server != self.server
                || settings.runtime != self.runtime
                || settings.cache != self.cache
            {
                tracing::warn!(
                    "[server], [runtime] and [cache] changes take effect on restart; kept the running ones"
                );
            }
            self.tenants.replace(&settings);
            self.embedder.models.replace_specs(settings.all_models());
            settings.tenants.len()
        });
        match &result {
            Ok(tenants) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %self.config_path.display(), tenants, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
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
