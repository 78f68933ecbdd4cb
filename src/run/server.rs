//! The long-lived server: bind, warm the preloaded models in the background, serve until
//! SIGTERM or Ctrl-C, then drain.
//!
//! Connections are served by hyper directly, HTTP/1.1 (not `axum::serve`), so that every one is
//! bounded:
//! a client must send a whole request head within `header_read_timeout_ms` of connecting or of
//! its last response (slowloris, idle sockets and idle keep-alive connections are closed), at
//! most `max_connections` are open at once (past that the server stops accepting until one
//! closes), and after a shutdown signal requests in flight get `shutdown_timeout_ms` to finish
//! before stalled connections are dropped. A request, body included, must be answered within
//! `request_timeout_ms` + 1 s (504, see `http::guard`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::app::{App, build_app};
use crate::config::Settings;
use crate::http::ClientAddr;

/// Serves `settings` on `bind` (or `server.bind`), and `/metrics` on `metrics_bind` (or
/// `server.metrics_bind`), until a shutdown signal.
pub async fn serve(
    settings: Settings,
    bind: Option<SocketAddr>,
    metrics_bind: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let addr = bind.unwrap_or(settings.server.bind);
    settings.refuse_exposed_demo_keys(!addr.ip().is_loopback())?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot bind {addr}"))?;
    let metrics_addr = metrics_bind.unwrap_or(settings.server.metrics_bind);
    let metrics_listener = TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot bind the metrics listener {metrics_addr} (server.metrics_bind)"))?;
    let app = build_app(settings)?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
    let bounds = ConnectionBounds::of(&app.state.api.server);
    let metrics = crate::http::metrics_router(Arc::clone(&app.state.api));
    tokio::spawn(serve_connections(metrics_listener, metrics, bounds, std::future::pending()));
    tracing::info!(addr = %listener.local_addr()?, "embedserve listening");
    run(listener, app, shutdown_signal()).await
}

/// Serves an already bound listener until `shutdown` completes; tests use this with port 0.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let App { router, state } = app;
    super::reload::spawn_watchers(Arc::clone(&state));
    let warm = App { router: router.clone(), state: Arc::clone(&state) };
    tokio::spawn(async move {
        if let Err(e) = warm.warm_up().await {
            tracing::error!(error = format!("{e:#}"), "preloading failed; /ready stays 503");
        }
    });

    serve_connections(listener, router, ConnectionBounds::of(&state.api.server), shutdown).await;
    // The last requests' usage, before the process goes.
    state.api.embedder.flush_usage_before_exit().await;
    Ok(())
}

/// What bounds each listener's connections (see the module's documentation).
#[derive(Debug, Clone, Copy)]
struct ConnectionBounds {
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
}

impl ConnectionBounds {
    fn of(server: &crate::config::ServerSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            max_connections: server.max_connections,
            shutdown_timeout: Duration::from_millis(server.shutdown_timeout_ms),
        }
    }
}

/// Accepts and serves connections on `listener` until `shutdown`, then drains them.
async fn serve_connections(
    listener: TcpListener,
    router: axum::Router,
    bounds: ConnectionBounds,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // HTTP/1.1 only: detecting HTTP/2 first would wait for a silent client's first bytes with
    // no timeout at all. TLS and HTTP/2 end at the proxy or load balancer in front.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(bounds.header_read_timeout);
    let connections = Arc::new(Semaphore::new(bounds.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    // One log line when the limit is reached and one when it is left, not one per connection:
    // a client holding the server at its limit must not also flood its log.
    let mut saturated = false;
    loop {
        let permit = match Arc::clone(&connections).try_acquire_owned() {
            Ok(permit) => {
                if std::mem::take(&mut saturated) {
                    tracing::info!("below the connection limit again: accepting");
                }
                permit
            }
            Err(_) => {
                if !std::mem::replace(&mut saturated, true) {
                    tracing::warn!(
                        max_connections = bounds.max_connections,
                        "connection limit reached: not accepting until a connection closes"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut req: axum::extract::Request<_>| {
            req.extensions_mut().insert(ClientAddr(peer.ip()));
            req
        });
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutdown signal received; draining");
    if tokio::time::timeout(bounds.shutdown_timeout, graceful.shutdown()).await.is_err() {
        let open = bounds.max_connections - connections.available_permits();
        tracing::warn!(open, "shutdown deadline passed: dropping connections still open");
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
}
