//! Authentication and authorization of the API: bearer JWTs on every route but health, readiness and
//! metrics; customers place and read only their own orders; operators read every order and reach the admin
//! API.

mod common;

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use orchestrator::auth::{DEV_AUDIENCE, DEV_ISSUER, Role, claims, mint_hs256};
use serde_json::Value;

use common::{Answer, Harness, JWT_SECRET, order_json, token};

async fn as_bearer(
    h: &Harness,
    request: axum::http::request::Builder,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut request = request.header(header::CONTENT_TYPE, "application/json");
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    } else {
        // The harness adds an operator token to requests without one; an empty scheme is "no token".
        request = request.header(header::AUTHORIZATION, "Basic none");
    }
    let body = body.map_or_else(HttpBody::empty, |b| HttpBody::from(b.to_string()));
    h.request(request.body(body).expect("a valid request")).await
}

fn order_for(customer: &str) -> Value {
    let mut order = order_json();
    order["customer_id"] = customer.into();
    order
}

#[tokio::test]
async fn without_a_valid_token_the_api_answers_401_with_a_problem() {
    let h = Harness::new();
    let mut stale = claims("cust-42", &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 0);
    stale.exp -= 120; // beyond the 30 s leeway
    let expired = mint_hs256(JWT_SECRET, &stale);
    let wrong_key = mint_hs256(
        "another-secret-of-at-least-32-chars!",
        &claims("cust-42", &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 60),
    );
    let wrong_audience = mint_hs256(JWT_SECRET, &claims("cust-42", &[Role::Customer], DEV_ISSUER, "another-api", 60));
    for bearer in
        [None, Some("garbage"), Some(expired.as_str()), Some(wrong_key.as_str()), Some(wrong_audience.as_str())]
    {
        let answer = as_bearer(&h, Request::post("/v1/orders"), bearer, Some(&order_for("cust-42"))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bearer:?}: {:?}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
        let answer = as_bearer(&h, Request::get("/admin/whoami"), bearer, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    assert!(h.store.all().is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_customer_orders_and_reads_only_for_themselves() {
    let h = Harness::new();
    let ada = token("cust-ada", &[Role::Customer]);
    let bob = token("cust-bob", &[Role::Customer]);

    let refused = as_bearer(&h, Request::post("/v1/orders"), Some(&ada), Some(&order_for("cust-bob"))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert!(h.store.all().is_empty(), "an order for someone else is not created");

    let placed = as_bearer(&h, Request::post("/v1/orders"), Some(&ada), Some(&order_for("cust-ada"))).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{:?}", placed.body);
    let path = placed.location.expect("a Location");

    let own = as_bearer(&h, Request::get(&path), Some(&ada), None).await;
    assert_eq!(own.status, StatusCode::OK);
    let other = as_bearer(&h, Request::get(&path), Some(&bob), None).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "another customer's order looks missing: {:?}", other.body);
    let operator = as_bearer(&h, Request::get(&path), Some(&token("ops-carol", &[Role::Operator])), None).await;
    assert_eq!(operator.status, StatusCode::OK, "operators read every order");
}

#[tokio::test]
async fn the_admin_api_needs_the_operator_role() {
    let h = Harness::new();
    let customer =
        as_bearer(&h, Request::get("/admin/whoami"), Some(&token("cust-ada", &[Role::Customer])), None).await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN);
    assert_eq!(customer.content_type.as_deref(), Some("application/problem+json"));
    let operator =
        as_bearer(&h, Request::get("/admin/whoami"), Some(&token("ops-carol", &[Role::Operator])), None).await;
    assert_eq!(operator.status, StatusCode::OK);
    assert_eq!(operator.body["subject"], "ops-carol");
    let nobody = as_bearer(&h, Request::get("/v1/orders/x"), Some(&token("someone", &[])), None).await;
    assert_eq!(nobody.status, StatusCode::FORBIDDEN, "a token without roles reaches nothing");
}

/// RS256 and ES256: tokens signed with the private key verify with the configured public key, and not with
/// the other algorithm's key or a token signed by another key.
#[test]
fn public_key_tokens_verify_with_the_configured_key_only() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use orchestrator::auth::{Authenticator, KeySettings};

    let key =
        |name: &str| std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("key");
    let cases = [
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(key("rs256-private.pem").as_bytes()).expect("rsa"),
            key("rs256-public.pem"),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(key("es256-private.pem").as_bytes()).expect("ec"),
            key("es256-public.pem"),
        ),
    ];
    let claims = claims("cust-42", &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 60);
    for (algorithm, signing, public) in &cases {
        let token = jsonwebtoken::encode(&Header::new(*algorithm), &claims, signing).expect("sign");
        let verifier = Authenticator::new(
            &KeySettings::PublicKey { algorithm: *algorithm, pem: public.clone() },
            DEV_ISSUER,
            DEV_AUDIENCE,
        )
        .expect("a valid public key");
        assert_eq!(verifier.verify(&token).expect("verifies").subject, "cust-42", "{algorithm:?}");
        let hs256 = mint_hs256(JWT_SECRET, &claims);
        assert!(verifier.verify(&hs256).is_err(), "{algorithm:?} refuses an HS256 token");
    }
    // A token of one algorithm does not verify with the other's key.
    let rsa_token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &cases[0].1).expect("sign");
    let es = Authenticator::new(
        &KeySettings::PublicKey { algorithm: Algorithm::ES256, pem: cases[1].2.clone() },
        DEV_ISSUER,
        DEV_AUDIENCE,
    )
    .expect("key");
    assert!(es.verify(&rsa_token).is_err());
    let garbage = Authenticator::new(
        &KeySettings::PublicKey { algorithm: Algorithm::RS256, pem: "not a key".into() },
        DEV_ISSUER,
        DEV_AUDIENCE,
    );
    assert!(garbage.is_err(), "an invalid key is refused at start-up");
}
