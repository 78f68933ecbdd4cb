//! A JSON body extractor whose every failure comes back in the service's error shape: a
//! `Content-Type` other than JSON 415 (none at all is read as JSON), over the body limit 413,
//! not JSON 400, JSON of the wrong shape 422.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub(super) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(kind) = req.headers().get(header::CONTENT_TYPE)
            && !is_json(kind)
        {
            let kind = String::from_utf8_lossy(kind.as_bytes());
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {} is not JSON; send `Content-Type: application/json`.",
                super::error::clip(&kind)
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("The request body is larger than this server accepts.".to_owned())
            } else {
                ApiError::MalformedJson(format!("Could not read the request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// `application/json` or any `+json` type, parameters (`; charset=utf-8`) allowed.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else { return false };
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        classify(e.into_inner(), &path)
    })?;
    de.end().map_err(|e| classify(e, "."))?;
    Ok(value)
}

fn classify(e: serde_json::Error, path: &str) -> ApiError {
    match e.classify() {
        serde_json::error::Category::Data => {
            // serde's messages quote the client's field names and values: cut them.
            let message = if path == "." { e.to_string() } else { format!("{path}: {e}") };
            ApiError::Invalid {
                message: super::error::clip_to(&message, 4 * super::error::MAX_CLIPPED),
                param: None,
            }
        }
        _ => ApiError::MalformedJson(format!(
            "The body is not valid JSON: {}",
            super::error::clip_to(&e.to_string(), 4 * super::error::MAX_CLIPPED)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        n: u32,
    }

    #[test]
    fn syntax_errors_are_malformed_and_type_errors_invalid() {
        assert!(matches!(parse::<Body>(b"{\"n\": "), Err(ApiError::MalformedJson(_))));
        assert!(matches!(parse::<Body>(b"{\"n\": 1} x"), Err(ApiError::MalformedJson(_))));
        let Err(ApiError::Invalid { message, .. }) = parse::<Body>(b"{\"n\": \"x\"}") else {
            panic!("expected 422")
        };
        assert!(message.starts_with("n: invalid type"), "{message}");
        assert!(matches!(parse::<Body>(b"{}"), Err(ApiError::Invalid { .. })));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes at all are a 400 or a 422 (or a body), never a panic, and what is
            /// echoed back stays short.
            #[test]
            fn any_body_is_parsed_or_refused_in_the_error_shape(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                match parse::<Body>(&bytes) {
                    Ok(_) => {}
                    Err(e @ (ApiError::MalformedJson(_) | ApiError::Invalid { .. })) => {
                        prop_assert!(e.to_string().chars().count() < 400, "{}", e);
                    }
                    Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                }
            }
        }
    }
}
