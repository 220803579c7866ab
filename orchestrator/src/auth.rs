//! Authentication and authorization: bearer JWTs on every API route except health, readiness and metrics.
//!
//! Tokens are signed with HS256 and a configured secret, or with RS256 / ES256 and a configured PEM public
//! key. `exp`, `nbf`, `iss` and `aud` are checked; the `roles` claim carries `customer` and/or `operator`.
//! A customer is the subject (`sub`) of their token: they may place orders for themselves and read only
//! their own orders. Operators read every order and use the admin API.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::api::problem::Problem;

/// The built-in HS256 secret, for development only: the service refuses to start with it in production.
pub const DEV_JWT_SECRET: &str = "dev-only-insecure-jwt-secret-do-not-use-in-production";
/// The issuer of development tokens (`JWT_ISSUER` default).
pub const DEV_ISSUER: &str = "saga-dev";
/// The audience of the API (`JWT_AUDIENCE` default).
pub const DEV_AUDIENCE: &str = "saga-api";

/// What a caller may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Places and reads their own orders.
    Customer,
    /// Reads every order; inspects, retries, compensates and resolves sagas; replays dead letters.
    Operator,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject: the customer id of a customer, the operator's name for an operator.
    pub subject: String,
    /// The roles the token grants.
    pub roles: BTreeSet<Role>,
}

impl Caller {
    /// Whether the caller has `role`.
    pub fn is(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The claims this service reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// How tokens are verified.
#[derive(Clone)]
pub enum KeySettings {
    /// HS256 with a shared secret.
    Hs256 { secret: String },
    /// RS256 or ES256 with a PEM public key.
    PublicKey { algorithm: Algorithm, pem: String },
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySettings::Hs256 { .. } => f.write_str("Hs256 { secret: .. }"),
            KeySettings::PublicKey { algorithm, .. } => write!(f, "PublicKey {{ algorithm: {algorithm:?}, .. }}"),
        }
    }
}

/// Why a token cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The PEM key does not parse.
    #[error("JWT_PUBLIC_KEY_FILE does not hold a valid {algorithm:?} public key: {source}")]
    Key { algorithm: Algorithm, source: jsonwebtoken::errors::Error },
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("algorithms", &self.validation.algorithms).finish()
    }
}

impl Authenticator {
    /// An authenticator for tokens from `issuer` for `audience`, verified with `keys`.
    pub fn new(keys: &KeySettings, issuer: &str, audience: &str) -> Result<Self, SetupError> {
        let (key, algorithm) = match keys {
            KeySettings::Hs256 { secret } => (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256),
            KeySettings::PublicKey { algorithm, pem } => {
                let key = match algorithm {
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
                    _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
                }
                .map_err(|source| SetupError::Key { algorithm: *algorithm, source })?;
                (key, *algorithm)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(Self { key, validation })
    }

    /// The caller a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
            ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
            ErrorKind::InvalidAudience => "the token is not for this API (aud)".to_owned(),
            ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
            ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the `{claim}` claim"),
            _ => "the token is malformed".to_owned(),
        })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() || claims.sub.len() > 128 {
            return Err("the token's subject is empty or too long".to_owned());
        }
        Ok(Caller { subject: claims.sub, roles: claims.roles.into_iter().collect() })
    }
}

/// Mints an HS256 token (for development tools and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}

/// Claims for `subject` with `roles`, valid from now for `ttl_seconds`, from the development issuer for the
/// API's audience.
pub fn claims(subject: &str, roles: &[Role], issuer: &str, audience: &str, ttl_seconds: u64) -> Claims {
    let now = jsonwebtoken::get_current_timestamp();
    Claims {
        sub: subject.to_owned(),
        roles: roles.to_vec(),
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        exp: now + ttl_seconds,
        nbf: Some(now.saturating_sub(1)),
        iat: Some(now),
    }
}

/// The bearer token of a request: the `Authorization: Bearer` header, or (for the server-sent events route,
/// since browsers' `EventSource` cannot set headers) the `access_token` query parameter.
fn bearer(request: &Request) -> Option<String> {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(value) = header {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    if request.uri().path().ends_with("/events") {
        return request
            .uri()
            .query()
            .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("access_token=").map(str::to_owned)));
    }
    None
}

fn unauthorized(detail: &str) -> Response {
    let mut response = Problem::unauthorized(detail).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Middleware: authenticates the request and requires one of `roles`; puts the [`Caller`] in the request's
/// extensions. 401 without a valid token, 403 without a required role.
pub async fn require(
    State((authenticator, roles)): State<(Arc<Authenticator>, &'static [Role])>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(&request) else {
        return unauthorized("send a bearer token in the Authorization header");
    };
    let caller = match authenticator.verify(&token) {
        Ok(caller) => caller,
        Err(reason) => return unauthorized(&reason),
    };
    if !roles.iter().any(|r| caller.is(*r)) {
        let needed: Vec<&str> =
            roles.iter().map(|r| if *r == Role::Operator { "operator" } else { "customer" }).collect();
        return Problem::forbidden(&format!("this needs the role {}", needed.join(" or "))).into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(&KeySettings::Hs256 { secret: "s3cret-for-tests".into() }, DEV_ISSUER, DEV_AUDIENCE)
            .expect("HS256 needs no key parsing")
    }

    #[test]
    fn a_valid_token_names_the_caller_and_roles() {
        let token = mint_hs256("s3cret-for-tests", &claims("cust-42", &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 60));
        let caller = authenticator().verify(&token).expect("valid");
        assert_eq!(caller.subject, "cust-42");
        assert!(caller.is(Role::Customer) && !caller.is(Role::Operator));
    }

    #[test]
    fn wrong_secret_issuer_audience_expiry_and_nbf_are_refused() {
        let good = claims("cust-42", &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 60);
        let auth = authenticator();
        let refused = |claims: &Claims, secret: &str| auth.verify(&mint_hs256(secret, claims)).expect_err("refused");
        assert!(refused(&good, "another-secret").contains("signature"));
        assert!(refused(&Claims { iss: "elsewhere".into(), ..good.clone() }, "s3cret-for-tests").contains("issuer"));
        assert!(refused(&Claims { aud: "other-api".into(), ..good.clone() }, "s3cret-for-tests").contains("aud"));
        let expired = Claims { exp: good.exp - 3600, ..good.clone() };
        assert!(refused(&expired, "s3cret-for-tests").contains("expired"));
        let early = Claims { nbf: Some(good.exp + 3600), exp: good.exp + 7200, ..good.clone() };
        assert!(refused(&early, "s3cret-for-tests").contains("not valid yet"));
        assert!(auth.verify("not.a.token").is_err());
    }
}
