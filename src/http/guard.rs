//! Request hygiene before any handler: a client's request id is echoed only when it is short
//! and plain, `Expect: 100-continue` with a declared body over the limit gets 413, not
//! `100 Continue`, and the whole request, body read
//! included, must finish within `request_timeout_ms` + 1 s.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::REQUEST_ID;
use super::error::ApiError;

/// Longest client request id echoed and logged.
pub(super) const MAX_REQUEST_ID: usize = 128;

/// Drops an `x-request-id` that is empty, longer than [`MAX_REQUEST_ID`] or has characters
/// other than ASCII letters, digits and `-_.:/+=`; the next layer then makes a fresh UUID.
pub(super) async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    if req.headers().get(&REQUEST_ID).is_some_and(|v| !is_plain_id(v)) {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

fn is_plain_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

/// 413 before any of the body is read, for a client that waits for `100 Continue` with a
/// declared length over the limit. A client already sending its body gets the 413 from the body
/// limit instead: answering it early would close the connection under its upload, and it would
/// see a broken pipe rather than the answer.
pub(super) async fn refuse_declared_oversize(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Response {
    let waits =
        req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = waits
        .then(|| req.headers().get(header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > state.server.max_body_bytes as u64 => ApiError::TooLarge(format!(
            "The request body is {length} bytes; this server accepts at most {}.",
            state.server.max_body_bytes
        ))
        .into_response(),
        _ => next.run(req).await,
    }
}

/// The outer deadline's margin over `request_timeout_ms`, which bounds (and counts, per model)
/// the embedding itself: this one catches what happens outside it, such as a stalled body.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// 504 for a request not answered within `request_timeout_ms` + 1 s, however far it got: a
/// body that stalls halfway is bounded like slow inference.
pub(super) async fn deadline(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let limit = state.server.request_timeout() + DEADLINE_GRACE;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "The request took longer than {} ms and was abandoned.",
            limit.as_millis()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        let id = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(is_plain_id(&id("abc-123")));
        assert!(is_plain_id(&id("Root=1-67891233-abcdef012345678912345678")));
        assert!(!is_plain_id(&id("")));
        assert!(!is_plain_id(&id(&"a".repeat(MAX_REQUEST_ID + 1))));
        assert!(!is_plain_id(&id("has space")));
        assert!(!is_plain_id(&HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap()));
    }
}
