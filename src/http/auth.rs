//! The API key → tenant extractor. Keys come as `Authorization: Bearer <key>` or
//! `x-api-key: <key>`; a missing or unknown key is 401. Keys are never logged: only the tenant
//! id they resolve to is recorded on the request's span.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::app::AppState;
use crate::tenants::Tenant;

/// The tenant a request's key belongs to.
pub struct Authed(pub Arc<Tenant>);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let key = bearer_or_api_key(&parts.headers);
        let tenant =
            key.map(str::trim).and_then(|k| state.tenants.authenticate(k)).ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("tenant", tenant.id.as_str());
        Ok(Authed(tenant))
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, else `x-api-key`.
pub fn bearer_or_api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}
