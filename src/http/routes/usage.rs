//! `GET /v1/usage?start=YYYY-MM-DD&end=YYYY-MM-DD`: the caller's own usage, per UTC day and
//! model, inclusive of both dates (default: the last 30 days to today). Never another
//! tenant's: the tenant comes from the key, not the query.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::core::usage::{Counts, USAGE_RETENTION_DAYS};
use crate::http::ApiState;
use crate::http::auth::Authed;
use crate::http::error::{ApiError, clip};
use crate::http::layers::respond_plain;

/// Days answered when `start` is not given.
const DEFAULT_DAYS: i64 = 30;

pub(crate) async fn usage(
    State(state): State<Arc<ApiState>>,
    Authed(tenant): Authed,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) = query.map_err(|e| invalid(None, format!("Invalid query string: {e}")))?;
        let (start, end) = range(&query, OffsetDateTime::now_utc().date())?;
        let days = state
            .embedder
            .usage_of(&tenant, start, end)
            .await
            .map_err(|e| ApiError::StoreUnavailable(e.to_string()))?;
        let mut total = Counts::default();
        let data: Vec<Value> = days
            .into_iter()
            .map(|((day, model), counts)| {
                total.add(counts);
                json!({
                    "date": day.to_string(),
                    "model": model,
                    "requests": counts.requests,
                    "inputs": counts.inputs,
                    "tokens": counts.tokens,
                })
            })
            .collect();
        let body = json!({
            "object": "usage",
            "tenant": tenant.id,
            "start": start.to_string(),
            "end": end.to_string(),
            "data": data,
            "total": total,
        });
        Ok(Json(body).into_response())
    }
    .await;
    respond_plain(&tenant, result)
}

/// The inclusive range a query asks for: at most [`USAGE_RETENTION_DAYS`] days, `end` not
/// before `start`.
fn range(query: &HashMap<String, String>, today: Date) -> Result<(Date, Date), ApiError> {
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "start" | "end")) {
        return Err(invalid(
            None,
            format!("Unknown query parameter `{}`; use start and end.", clip(unknown)),
        ));
    }
    let date = |name: &'static str| -> Result<Option<Date>, ApiError> {
        let Some(text) = query.get(name) else { return Ok(None) };
        Date::parse(text, format_description!("[year]-[month]-[day]")).map(Some).map_err(|_| {
            invalid(Some(name), format!("`{name}` must be a date as YYYY-MM-DD, got `{}`.", clip(text)))
        })
    };
    let end = date("end")?.unwrap_or(today);
    let start = match date("start")? {
        Some(start) => start,
        // Checked: near the calendar's first day, 29 days back does not exist (no panic).
        None => end.checked_sub(time::Duration::days(DEFAULT_DAYS - 1)).ok_or_else(|| {
            invalid(
                Some("end"),
                format!("`end` ({end}) is too early to count {DEFAULT_DAYS} days back from."),
            )
        })?,
    };
    if end < start {
        return Err(invalid(Some("end"), format!("`end` ({end}) is before `start` ({start}).")));
    }
    let days = (end - start).whole_days() + 1;
    if days > USAGE_RETENTION_DAYS {
        return Err(invalid(
            Some("start"),
            format!("The range has {days} days; at most {USAGE_RETENTION_DAYS} can be asked for at once."),
        ));
    }
    Ok((start, end))
}

fn invalid(param: Option<&'static str>, message: String) -> ApiError {
    ApiError::Invalid { message, param }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ranges_default_to_thirty_days_and_are_checked() {
        let today = date!(2026 - 11 - 28);
        assert_eq!(range(&query(&[]), today).unwrap(), (date!(2026 - 10 - 30), today));
        let one = query(&[("start", "2026-02-01"), ("end", "2026-02-01")]);
        assert_eq!(range(&one, today).unwrap(), (date!(2026 - 02 - 01), date!(2026 - 02 - 01)));
        for bad in [
            query(&[("start", "2026-13-01")]),
            query(&[("start", "yesterday")]),
            query(&[("start", "2026-02-30")]),
            query(&[("start", "2026-03-02"), ("end", "2026-03-01")]),
            query(&[("start", "2025-01-01"), ("end", "2026-02-05")]),
            query(&[("tenant", "globex")]),
            query(&[("end", "-9999-01-01")]),
            query(&[("end", "-9999-01-29")]),
            query(&[("start", "-9999-01-01"), ("end", "9999-12-31")]),
        ] {
            let e = range(&bad, today).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        }
        let limit = query(&[("start", "2025-01-01"), ("end", "2026-02-04")]);
        assert!(range(&limit, today).is_ok(), "400 days exactly");
    }
}
