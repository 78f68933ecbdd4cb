//! An app over the fake backend, called through `Router::oneshot`.

use std::sync::Arc;

use crate::fake::FakeLoader;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request};
use embedserve::{App, AppState, Settings};
use serde_json::Value;
use tower::ServiceExt;

pub use crate::common::*;

/// One response, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

/// The real router over a fake backend.
pub struct FastApp {
    pub router: Router,
    pub state: Arc<AppState>,
    pub fake: FakeLoader,
}

impl FastApp {
    /// Builds the app and loads its preloaded models, as the server does before `/ready`.
    /// Unless the settings say how many, each model has one session: the batching tests
    /// assert the runs one thread forms (tests/fast/batching.rs has those of several).
    pub async fn start(mut settings: Settings, fake: FakeLoader) -> FastApp {
        if settings.runtime.sessions_per_model == 0 {
            settings.runtime.sessions_per_model = 1;
        }
        let app = embedserve::build_app_with(settings, Arc::new(fake.clone())).expect("the app builds");
        app.warm_up().await.expect("preloading on the fake backend");
        let App { router, state } = app;
        FastApp { router, state, fake }
    }

    pub async fn default() -> FastApp {
        Self::start(default_settings(), FakeLoader::new()).await
    }

    /// Sends a request with `key` as a bearer token (or none) and a raw body.
    pub async fn send(&self, method: Method, path: &str, key: Option<&str>, body: impl Into<Body>) -> Reply {
        let mut request =
            Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = self.router.clone().oneshot(request.body(body.into()).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, key, body.to_string()).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send(Method::GET, path, key, Body::empty()).await
    }

    /// Embeds `input` as acme with the native API and returns the float vectors.
    pub async fn embed(&self, body: Value) -> Vec<Vec<f64>> {
        let r = self.post("/v1/embed", Some(ACME_KEY), body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        vectors(&r.body["embeddings"])
    }

    pub fn metrics(&self) -> String {
        self.state.metrics().render()
    }
}
