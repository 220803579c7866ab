//! A JSON body extractor that validates: malformed JSON, a wrong shape and garde rule violations all become
//! 400 `application/problem+json` answers naming the fields.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use garde::Validate;
use serde::de::DeserializeOwned;

use super::problem::{FieldError, Problem};

/// A JSON body, parsed and validated.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate<Context = ()>,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let headers = request.headers().clone();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| Problem::validation(format!("cannot read the body: {e}"), Vec::new()))?;
        json_body(&headers, &bytes).map(Self)
    }
}

/// A JSON request body: checks the content type, parses, validates.
pub fn json_body<T>(headers: &HeaderMap, body: &[u8]) -> Result<T, Problem>
where
    T: DeserializeOwned + Validate<Context = ()>,
{
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    if !is_json {
        return Err(Problem::unsupported_media_type());
    }
    let value = parse::<T>(body)?;
    validate(&value)?;
    Ok(value)
}

/// Checks `value`'s garde rules, naming every field that breaks one.
pub fn validate<T: Validate<Context = ()>>(value: &T) -> Result<(), Problem> {
    value.validate().map_err(|report| {
        let errors: Vec<FieldError> = report
            .iter()
            .map(|(path, error)| FieldError { field: path.to_string(), message: error.message().to_owned() })
            .collect();
        Problem::validation("the request breaks validation rules", errors)
    })
}

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let message = e.inner().to_string();
        let path = e.path().to_string();
        let field = missing_field(&message).map_or_else(
            || if path == "." { String::new() } else { path.clone() },
            |name| if path == "." { name.to_owned() } else { format!("{path}.{name}") },
        );
        let detail =
            if e.inner().is_syntax() || e.inner().is_eof() { "malformed JSON" } else { "unexpected JSON shape" };
        Problem::validation(detail, vec![FieldError { field, message }])
    })?;
    deserializer.end().map_err(|e| {
        Problem::validation("malformed JSON", vec![FieldError { field: String::new(), message: e.to_string() }])
    })?;
    Ok(value)
}

/// The field name in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}
