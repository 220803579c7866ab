//! Errors as HTTP answers: `application/problem+json` (RFC 9457). Client errors explain themselves and name
//! the offending fields; server errors say little and are logged with their cause.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, such as `items[0].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A problem answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The invalid fields, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { kind, title, status: status.as_u16(), detail: detail.into(), errors: Vec::new() }
    }

    /// 400: the request is malformed or invalid; `errors` names the fields.
    pub fn validation(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut problem = Self::new(StatusCode::BAD_REQUEST, "/problems/validation", "Invalid request", detail);
        problem.errors = errors;
        problem
    }

    /// 401: no valid credentials.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "/problems/unauthorized", "Unauthorized", detail)
    }

    /// 403: valid credentials without the right to do this.
    pub fn forbidden(detail: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden", detail)
    }

    /// 409: the action does not apply to the resource in its current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "/problems/conflict", "Conflict", detail)
    }

    /// 412: the resource changed since the version the caller saw (`If-Match`).
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "/problems/stale-version", "Precondition failed", detail)
    }

    /// 428: the request must say which version it acts on (`If-Match`).
    pub fn precondition_required(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_REQUIRED, "/problems/if-match-required", "Precondition required", detail)
    }

    /// 504: the action was accepted but its outcome was not seen in time.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "/problems/timeout", "Outcome not seen in time", detail)
    }

    /// 404: no such resource (or not yours to see).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "/problems/not-found", "Not found", detail)
    }

    /// 415: the body is not JSON.
    pub fn unsupported_media_type() -> Self {
        let detail = "send the body as JSON with Content-Type: application/json";
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// 422: an idempotency key was reused for a different request.
    pub fn idempotency_mismatch() -> Self {
        let detail = "this Idempotency-Key was already used with a different request body; use a new key";
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/idempotency-key-reused",
            "Idempotency key reused",
            detail,
        )
    }

    /// 503: a dependency is down; retrying later may work.
    pub fn unavailable() -> Self {
        let detail = "a backing service is unavailable; retry later with the same Idempotency-Key";
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "/problems/unavailable", "Service unavailable", detail)
    }

    /// 500: a bug or an unexpected state; the cause is logged, not shown.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "/problems/internal", "Internal error", "the error was logged")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<crate::store::Error> for Problem {
    fn from(error: crate::store::Error) -> Self {
        if error.is_transient() {
            tracing::warn!(%error, "store unavailable");
            Problem::unavailable()
        } else {
            tracing::error!(%error, "store error");
            Problem::internal()
        }
    }
}
