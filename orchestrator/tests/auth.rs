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
