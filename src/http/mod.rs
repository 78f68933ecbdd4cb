//! Delivery: routes, the layers every request passes through, and the error shape. Handlers
//! only translate between the wire and the core (`crate::embed`).

pub mod auth;
mod embed;
pub mod error;
mod extract;
mod guard;
mod health;
mod models;
mod observe;
mod openai;
mod tokenize;
mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::metrics::Labels;
use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every public route with every layer, for the server's listener or `lambda_http::run`.
/// `/metrics` is among them only when `server.metrics_key` is set, and then needs that key.
pub fn router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new()
        .route("/v1/embed", post(embed::embed))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/v1/models", get(models::list))
        .route("/v1/usage", get(usage::usage))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi));
    if state.server.metrics_key.is_some() {
        routes = routes.route("/metrics", get(health::protected_metrics));
    }
    with_layers(routes, state)
}

/// The private metrics listener's router: `/metrics` for Prometheus, and nothing else.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    let routes = Router::new().route("/metrics", get(health::metrics));
    with_layers(routes, state)
}

/// The layers every route gets, outermost first: a request id (the client's only if it is
/// short and plain), a tracing span, the id echoed, then `observe` (metrics and the one log
/// line) around the request deadline and the panic catcher, so a panicking handler is answered
/// 500 in the error shape, counted and logged exactly once; innermost the body limits, declared
/// and read. Unknown routes and methods answer in the error shape too.
pub fn with_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let body_limit = state.server.max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(guard::sanitize_request_id))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                // `observe` logs every failure once, with its cause; TraceLayer's own
                // `on_failure` would log each 5xx a second time.
                .layer(TraceLayer::new_for_http().make_span_with(request_span).on_failure(()))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn_with_state(Arc::clone(&state), observe::observe))
                .layer(middleware::from_fn_with_state(Arc::clone(&state), guard::deadline))
                .layer(CatchPanicLayer::custom(|_| ApiError::internal("handler panicked").into_response()))
                .layer(middleware::from_fn_with_state(Arc::clone(&state), guard::refuse_declared_oversize))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .with_state(state)
}

fn request_span(req: &Request) -> tracing::Span {
    let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("");
    let (method, path) = (req.method(), req.uri().path());
    tracing::info_span!("request", %method, path, request_id = id, tenant = tracing::field::Empty)
}

/// Attaches the request's labels to its response, success or error, for `observe`, and its
/// tenant's rate-limit state as OpenAI's headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
/// (reset as seconds, e.g. `0.2s`: until the bucket is full again).
fn with_labels(labels: Labels, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    for (kind, state) in [("requests", labels.limits.requests), ("tokens", labels.limits.tokens)] {
        let Some(state) = state else { continue };
        let reset = format!("{:.3}", state.reset.as_secs_f64());
        let reset = format!("{}s", reset.trim_end_matches('0').trim_end_matches('.'));
        for (name, value) in
            [("limit", state.limit.to_string()), ("remaining", state.remaining.to_string()), ("reset", reset)]
        {
            let name =
                HeaderName::try_from(format!("x-ratelimit-{name}-{kind}")).expect("a valid header name");
            headers.insert(name, HeaderValue::try_from(value).expect("digits are a valid header value"));
        }
    }
    response.extensions_mut().insert(labels);
    response
}

/// The OpenAPI document of the public routes (`src/http/openapi.json`); schemathesis checks
/// the service against it in `make test`.
async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound(format!("{method} {}", uri.path()))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
