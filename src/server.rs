//! The long-lived server: bind, warm the default model in the background, serve until
//! SIGTERM or Ctrl-C, then drain in-flight requests.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{App, build_app};
use crate::config::Settings;

/// Serves `settings` on `bind` (or the configured address) until a shutdown signal.
pub async fn serve(settings: Settings, bind: Option<SocketAddr>) -> anyhow::Result<()> {
    let addr = bind.unwrap_or(settings.server.bind);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot bind {addr}"))?;
    let app = build_app(settings)?;
    tracing::info!(addr = %listener.local_addr()?, "embedserve listening");
    run(listener, app).await
}

/// Serves an already bound listener; tests use this with port 0.
pub async fn run(listener: TcpListener, app: App) -> anyhow::Result<()> {
    let App { router, state } = app;
    crate::reload::spawn_watchers(std::sync::Arc::clone(&state));
    let warm = App { router: router.clone(), state };
    tokio::spawn(async move {
        if let Err(e) = warm.warm_up().await {
            tracing::error!(error = format!("{e:#}"), "preloading failed; /ready stays 503");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.context("server error")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown signal received; draining");
}
