//! The HTTP adapter: the router (one file per route under `routes/`), the layers every request
//! passes through (`layers`, `guard`, `observe`), authentication (`auth`), the JSON extractor
//! (`extract`) and the one error shape and status table (`error`). Handlers only translate
//! between the wire and the core (`crate::core`); nothing here knows which door (server or
//! Lambda) a request came through: each puts the client's address on it as a [`ClientAddr`].

pub(crate) mod auth;
pub(crate) mod error;
mod extract;
mod guard;
mod layers;
mod observe;
mod routes;
mod state;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use error::ApiError;
pub use layers::with_layers;
pub use state::ApiState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's address, as the door the request came through knows it: the TCP peer on the
/// server, the Function URL's source IP on Lambda. Behind a proxy it is the proxy's (forwarding
/// headers are not trusted). The auth throttle counts failures by it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Every public route with every layer, for the server's listener or `lambda_http::run`.
/// `/metrics` is among them only when `server.metrics_key` is set, and then needs that key.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut routes = Router::new()
        .route("/v1/embed", post(routes::embed::embed))
        .route("/v1/embeddings", post(routes::openai::embeddings))
        .route("/v1/tokenize", post(routes::tokenize::tokenize))
        .route("/v1/rerank", post(routes::rerank::rerank))
        .route("/v2/rerank", post(routes::rerank::rerank))
        .route("/rerank", post(routes::tei::rerank))
        .route("/embed_sparse", post(routes::tei::embed_sparse))
        .route("/v2/embed", post(routes::cohere::embed))
        .route("/embed", post(routes::tei::embed))
        .route("/", post(routes::tei::embed))
        .route("/tokenize", post(routes::tei::tokenize))
        .route("/decode", post(routes::tei::decode))
        .route("/info", get(routes::tei::info))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/usage", get(routes::usage::usage))
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/openapi.json", get(openapi));
    if state.server.metrics_key.is_some() {
        routes = routes.route("/metrics", get(routes::health::protected_metrics));
    }
    with_layers(routes, state)
}

/// The private metrics listener's router: `/metrics` for Prometheus, and nothing else.
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    let routes = Router::new().route("/metrics", get(routes::health::metrics));
    with_layers(routes, state)
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
