//! The layers every route gets, and how a handler's outcome becomes a response: its status,
//! the tenant's `x-ratelimit-*` headers, and the labels `observe` counts and logs it by.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::error::ApiError;
use super::observe::RequestLabels;
use super::{ApiState, REQUEST_ID, guard, observe};
use crate::core::embed::Outcome;
use crate::core::limits::LimitSnapshot;
use crate::core::tenants::Tenant;

/// The layers every route gets, outermost first: a request id (the client's only if it is
/// short and plain), a tracing span, the id echoed, then `observe` (metrics and the one log
/// line) around the request deadline and the panic catcher, so a panicking handler is answered
/// 500 in the error shape, counted and logged exactly once; innermost the body limits, declared
/// and read. Unknown routes and methods answer in the error shape too.
pub fn with_layers(routes: Router<Arc<ApiState>>, state: Arc<ApiState>) -> Router {
    let body_limit = state.server.max_body_bytes;
    routes
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
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

/// The response to a core call: `ok` of its value, or its error in the error shape, with the
/// tenant's rate-limit state as OpenAI's headers and the labels `observe` needs.
pub(crate) fn respond<T>(tenant: &Tenant, outcome: Outcome<T>, ok: impl FnOnce(T) -> Response) -> Response {
    let labels = RequestLabels {
        tenant: tenant.id.clone(),
        model: outcome.model.unwrap_or_default(),
        tokens: outcome.tokens,
    };
    let response = outcome.result.map(ok).map_err(ApiError::from);
    finish(labels, outcome.limits, response)
}

/// The response of a route that does not go through the core's limits (models, usage).
pub(crate) fn respond_plain(tenant: &Tenant, result: Result<Response, ApiError>) -> Response {
    let labels = RequestLabels { tenant: tenant.id.clone(), ..RequestLabels::default() };
    finish(labels, LimitSnapshot::default(), result)
}

/// Attaches the labels for `observe` and the tenant's rate-limit state as OpenAI's headers:
/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as seconds, e.g. `0.2s`:
/// until the bucket is full again).
fn finish(labels: RequestLabels, limits: LimitSnapshot, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    for (kind, state) in [("requests", limits.requests), ("tokens", limits.tokens)] {
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
