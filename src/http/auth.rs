//! The API key → tenant extractor. Keys come as `Authorization: Bearer <key>` (or a bare
//! `Authorization: <key>`) or `x-api-key: <key>`; a missing or unknown key is 401, and past
//! `server.auth_failures_per_minute` failures from one client address, 429. Keys are never
//! logged: only the tenant id they resolve to is recorded on the request's span.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use super::{ApiState, ClientAddr};
use crate::core::tenants::Tenant;

/// The tenant a request's key belongs to.
pub(crate) struct Authed(pub Arc<Tenant>);

impl FromRequestParts<Arc<ApiState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let key = bearer_or_api_key(&parts.headers);
        let Some(tenant) = key.map(str::trim).and_then(|k| state.tenants.authenticate(k)) else {
            return Err(match parts.extensions.get::<ClientAddr>() {
                Some(ClientAddr(ip)) => state.auth_failures.record(*ip),
                None => ApiError::Unauthorized,
            });
        };
        tracing::Span::current().record("tenant", tenant.id.as_str());
        Ok(Authed(tenant))
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, or a bare `Authorization: <key>`
/// (LlamaIndex's TEI clients send their `auth_token` as it is), else `x-api-key`.
pub(crate) fn bearer_or_api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).or((!v.contains(' ')).then_some(v))
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Failed authentications per client address, so keys cannot be guessed at line rate.
pub(crate) struct AuthFailures {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// Addresses remembered before idle ones are forgotten.
const REMEMBERED_ADDRESSES: usize = 10_000;

impl AuthFailures {
    pub(crate) fn per_minute(failures: u32) -> Self {
        let n = NonZeroU32::new(failures.max(1)).expect("at least 1");
        Self { limiter: RateLimiter::keyed(Quota::per_minute(n)) }
    }

    /// Counts a failure from `ip`: 401 while within the allowance, 429 past it.
    fn record(&self, ip: IpAddr) -> ApiError {
        if self.limiter.len() > REMEMBERED_ADDRESSES {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&ip) {
            Ok(()) => ApiError::Unauthorized,
            Err(wait) => {
                let wait = wait.wait_time_from(DefaultClock::default().now());
                ApiError::RateLimited {
                    message: "Too many failed authentications from your address; retry later.".to_owned(),
                    retry_after: wait.as_secs() + 1,
                }
            }
        }
    }
}
