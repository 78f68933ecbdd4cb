//! The API key → tenant extractor. Keys come as `Authorization: Bearer <key>` (or a bare
//! `Authorization: <key>`) or `x-api-key: <key>`; a missing or unknown key is 401, and past
//! `server.auth_failures_per_minute` failures from one client address, 429. Keys are never
//! logged: only the tenant id they resolve to is recorded on the request's span.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

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

/// Failed authentications per client, so keys cannot be guessed at line rate. A client is an
/// IPv4 address or an IPv6 /64 (the smallest block a host is usually given: a host can pick any
/// address in it). Each client's allowance is a GCRA state in a `moka` cache bounded in
/// entries and forgetting a client once idle for a whole period, by which time its allowance
/// is whole again: forgetting loses nothing then. Past the bound, the least frequently failing
/// clients are forgotten first (TinyLFU). Each failure costs O(1).
pub(crate) struct AuthFailures {
    quota: Quota,
    clients: Cache<IpAddr, Arc<DefaultDirectRateLimiter>>,
}

/// Clients remembered at most: about 16 MB at the bound (measured: tests/api/hardening.rs).
const REMEMBERED_CLIENTS: u64 = 50_000;

impl AuthFailures {
    pub(crate) fn per_minute(failures: u32) -> Self {
        Self::bounded(failures, REMEMBERED_CLIENTS)
    }

    fn bounded(failures: u32, clients: u64) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(failures.max(1)).unwrap_or(NonZeroU32::MIN));
        // A client's allowance is whole again after one burst's worth of replenishing.
        let whole_again = quota.replenish_interval() * quota.burst_size().get();
        let clients = Cache::builder().max_capacity(clients).time_to_idle(whole_again).build();
        Self { quota, clients }
    }

    /// Counts a failure from `ip`: 401 while within the allowance, 429 past it.
    fn record(&self, ip: IpAddr) -> ApiError {
        let limiter = self.clients.get_with(client_of(ip), || Arc::new(RateLimiter::direct(self.quota)));
        match limiter.check() {
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

/// The client an address counts as: an IPv4 address (IPv4-mapped IPv6 included), or the /64
/// of an IPv6 one.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(e: &ApiError) -> bool {
        matches!(e, ApiError::RateLimited { .. })
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_its_neighbour_another() {
        let failures = AuthFailures::per_minute(3);
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0xdead, last));
        for last in 0..3 {
            assert!(!refused(&failures.record(host(last))), "within the allowance");
        }
        assert!(refused(&failures.record(host(999))), "a new address in the same /64 is the same client");
        let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        assert!(!refused(&failures.record(neighbour)), "the next /64 has its own allowance");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            failures.record(v4);
        }
        assert!(refused(&failures.record(mapped)), "IPv4-mapped IPv6 is its IPv4 address");
    }

    #[test]
    fn the_map_stays_bounded_under_many_addresses_and_a_persistent_guesser_stays_refused() {
        let failures = AuthFailures::bounded(5, 1_000);
        let guesser: IpAddr = "10.0.0.1".parse().unwrap();
        for n in 0..50_000u32 {
            failures.record(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + n)));
            if n % 10 == 0 {
                failures.record(guesser);
            }
        }
        failures.clients.run_pending_tasks();
        assert!(failures.clients.entry_count() <= 1_000, "{} clients kept", failures.clients.entry_count());
        assert!(refused(&failures.record(guesser)), "the frequent guesser is still remembered");
    }
}
