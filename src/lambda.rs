//! The AWS Lambda entry: the same router as the server, run under `lambda_http` for Function
//! URL events (payload v2.0; base64-encoded bodies are decoded by `lambda_http`).
//!
//! INIT does the expensive work once: configuration, ONNX Runtime and the preloaded models,
//! so the first invocation pays no model load. Other models load lazily and stay for the life
//! of the instance (within the cache budget).

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::app::build_app;
use crate::config::Settings;

/// Runs the function until the Lambda runtime stops it.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    settings.refuse_exposed_demo_keys(true)?;
    let app = build_app(settings)?;
    app.warm_up().await?;
    tracing::info!(init_ms = started.elapsed().as_secs_f64() * 1e3, "INIT done: models preloaded");
    let router = app.router.layer(middleware::from_fn(lambda_request_span));
    lambda_http::run(router).await.map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
}

/// Puts the Lambda request id on every log line of the invocation.
async fn lambda_request_span(req: Request, next: Next) -> Response {
    let id = req.extensions().get::<lambda_http::Context>().map(|c| c.request_id.clone()).unwrap_or_default();
    next.run(req).instrument(tracing::info_span!("invocation", aws_request_id = %id)).await
}
