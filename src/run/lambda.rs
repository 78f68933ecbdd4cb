//! The AWS Lambda entry: the same router as the server, run under `lambda_http` for Function
//! URL events (payload v2.0; base64-encoded bodies are decoded by `lambda_http`).
//!
//! INIT does the expensive work once: configuration, ONNX Runtime and the preloaded models,
//! so the first invocation pays no model load. Other models load lazily and stay for the life
//! of the instance (within the cache budget).

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use lambda_http::request::RequestContext;
use tracing::Instrument;

use super::app::build_app;
use crate::config::Settings;
use crate::http::ClientAddr;

/// Runs the function until the Lambda runtime stops it.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    settings.refuse_exposed_demo_keys(true)?;
    let app = build_app(settings)?;
    app.warm_up().await?;
    tracing::info!(init_ms = started.elapsed().as_secs_f64() * 1e3, "INIT done: models preloaded");
    let router = app.router.layer(middleware::from_fn(lambda_request));
    lambda_http::run(router).await.map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
}

/// Translates what Lambda knows of an invocation for the router: the Function URL's source IP
/// as the [`ClientAddr`], and the Lambda request id on every log line of the invocation.
async fn lambda_request(mut req: Request, next: Next) -> Response {
    let source = match req.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(context)) => {
            context.http.source_ip.as_deref().and_then(|ip| ip.parse().ok())
        }
        #[allow(unreachable_patterns)]
        _ => None,
    };
    if let Some(ip) = source {
        req.extensions_mut().insert(ClientAddr(ip));
    }
    let id = req.extensions().get::<lambda_http::Context>().map(|c| c.request_id.clone()).unwrap_or_default();
    next.run(req).instrument(tracing::info_span!("invocation", aws_request_id = %id)).await
}
