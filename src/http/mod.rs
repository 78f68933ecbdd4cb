//! Delivery: routes, the layers every request passes through, and the middleware that turns
//! each response into metrics and a log line.

mod auth;
mod embed;
mod extract;
mod health;
mod models;
mod openai;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::{Error, ErrorCause};
pub use embed::Labels;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route with every layer, ready for `axum::serve` or `lambda_http::run`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.server.max_body_bytes;
    Router::new()
        .route("/v1/embed", post(embed::embed))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(models::list))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(|_| Error::internal("handler panicked").into_response()))
                .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .with_state(state)
}

fn request_span(req: &Request) -> tracing::Span {
    let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("");
    let (method, path) = (req.method(), req.uri().path());
    tracing::info_span!("request", %method, path, request_id = id, tenant = tracing::field::Empty)
}

/// Records each request in the metrics and logs it; a 5xx logs its cause, which the client
/// never sees.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status();
    let labels = response.extensions().get::<Labels>();
    let (tenant, model) = labels.map_or(("", ""), |l| (l.tenant.as_str(), l.model.as_str()));
    let m = &state.metrics;
    m.requests.with_label_values(&[&route, status.as_str(), tenant, model]).inc();
    m.request_seconds.with_label_values(&[&route]).observe(seconds);
    let (status, ms) = (status.as_u16(), seconds * 1e3);
    if state.server.emit_emf {
        let tokens = labels.map_or(0, |l| l.tokens);
        println!("{}", emf_line(&route, status, tenant, model, tokens, ms));
    }
    match response.extensions().get::<ErrorCause>() {
        Some(ErrorCause(cause)) => tracing::error!(status, tenant, model, ms, cause, "request failed"),
        None => tracing::info!(status, tenant, model, ms, "request"),
    }
    response
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound(format!("{method} {}", uri.path()))
}

async fn method_not_allowed(method: Method) -> Error {
    Error::MethodNotAllowed(method.to_string())
}

/// A CloudWatch Embedded Metric Format record: CloudWatch turns this log line into metrics
/// (Latency, Tokens and Requests by tenant and model, and by route and status).
fn emf_line(route: &str, status: u16, tenant: &str, model: &str, tokens: usize, ms: f64) -> String {
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": "embedserve",
                "Dimensions": [["tenant", "model"], ["route", "status"]],
                "Metrics": [
                    { "Name": "Latency", "Unit": "Milliseconds" },
                    { "Name": "Tokens", "Unit": "Count" },
                    { "Name": "Requests", "Unit": "Count" }
                ]
            }]
        },
        "tenant": tenant,
        "model": model,
        "route": route,
        "status": status.to_string(),
        "Latency": ms,
        "Tokens": tokens,
        "Requests": 1
    })
    .to_string()
}
