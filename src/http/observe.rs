//! The middleware that turns each response into metrics and one log line (and, on Lambda, one
//! CloudWatch Embedded Metric Format record), by the [`RequestLabels`] its handler attached.
//! A 5xx logs its cause, which the client never sees.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiState;
use super::error::ErrorCause;

/// What a handler learned of its request, for the metrics and the log line: the `tenant` and
/// `model` labels (the model's cache id), and the tokens processed.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLabels {
    pub(crate) tenant: String,
    pub(crate) model: String,
    pub(crate) tokens: usize,
}

pub(crate) async fn observe(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status();
    let labels = response.extensions().get::<RequestLabels>();
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

/// A CloudWatch Embedded Metric Format record: CloudWatch turns this log line into metrics
/// (Latency, Tokens and Requests by tenant and model, and by route and status). A request with
/// no tenant or model (a missing key, an unknown model) has only route and status: CloudWatch
/// refuses an empty dimension value, which would lose the whole record.
fn emf_line(route: &str, status: u16, tenant: &str, model: &str, tokens: usize, ms: f64) -> String {
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let by_tenant = !tenant.is_empty() && !model.is_empty();
    let dimensions = if by_tenant {
        serde_json::json!([["tenant", "model"], ["route", "status"]])
    } else {
        serde_json::json!([["route", "status"]])
    };
    let mut record = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": "embedserve",
                "Dimensions": dimensions,
                "Metrics": [
                    { "Name": "Latency", "Unit": "Milliseconds" },
                    { "Name": "Tokens", "Unit": "Count" },
                    { "Name": "Requests", "Unit": "Count" }
                ]
            }]
        },
        "route": route,
        "status": status.to_string(),
        "Latency": ms,
        "Tokens": tokens,
        "Requests": 1
    });
    if by_tenant {
        record["tenant"] = tenant.into();
        record["model"] = model.into();
    }
    record.to_string()
}
