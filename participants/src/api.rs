//! The error type of the domains' HTTP routes: one `IntoResponse` mapping each variant to a status code and
//! an `application/problem+json` body. 4xx explain the problem; 5xx send generic text and log the cause.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain;

/// A request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing is stored under the requested key.
    #[error("{0}")]
    NotFound(String),
    /// The domain (its database) failed.
    #[error(transparent)]
    Domain(#[from] domain::Error),
}

impl From<crate::store::Error> for Error {
    fn from(error: crate::store::Error) -> Self {
        Error::Domain(error.into())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            Error::BadRequest(detail) => (StatusCode::BAD_REQUEST, "bad request", detail.clone()),
            Error::NotFound(detail) => (StatusCode::NOT_FOUND, "not found", detail.clone()),
            Error::Domain(error) => {
                tracing::error!(error = %error, "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service cannot answer now; retry later".to_owned(),
                )
            }
        };
        let body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

/// Parses a saga id from a path segment.
pub fn saga_id(raw: &str) -> Result<uuid::Uuid, Error> {
    raw.parse().map_err(|_| Error::BadRequest(format!("{raw:?} is not a saga id (a UUID)")))
}
