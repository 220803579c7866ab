//! The order saga under process faults, end to end: the orchestrator killed with SIGKILL in the middle of
//! sagas, and a participant that stays down longer than its step's timeout.

use std::time::Duration;

use tests::stack::{Options, Stack};

const FINISH: Duration = Duration::from_secs(90);

/// (f) The orchestrator is killed with SIGKILL while a saga waits for a reply, and restarted: the saga
/// finishes, and no effect is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_survives_the_orchestrator_being_killed_mid_way() {
    let options = Options {
        orchestrator_env: vec![("SAGA_STEP_TIMEOUT_MS", "60000".to_owned())],
        held_back: vec!["payment"],
        ..Options::default()
    };
    let mut stack = Stack::start("kill-orchestrator", options).await;
    stack.set_stock("SKU-1", 10).await;
    let order_id = stack.place(&Stack::order("cust-k", &[("SKU-1", 2)])).await;
    // Stock is reserved and the charge is out; the payment service is not running, so the saga waits.
    stack.wait_state(order_id, "RUNNING", Some("charge_payment"), FINISH).await;

    stack.orchestrator.kill();
    let more = {
        // While the orchestrator is down, new orders cannot be placed; the saga in flight stays stored.
        let url = stack.orchestrator.url("/v1/orders");
        stack.http.post(url).json(&Stack::order("cust-k", &[("SKU-1", 1)])).send().await
    };
    assert!(more.is_err(), "the orchestrator is down");
    let http = stack.http.clone();
    stack.payment.start(&http).await;
    stack.orchestrator.start(&http).await;

    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    let payment = stack.payment(order_id).await.expect("a payment");
    assert_eq!(payment["status"], "captured");
    assert_eq!(stack.stock("SKU-1").await, 8, "reserved once");

    // Kill it again in the middle of a burst of orders: every one of them still finishes.
    let mut orders = Vec::new();
    for i in 0..10 {
        orders.push(stack.place(&Stack::order(&format!("cust-{i}"), &[("SKU-1", 1)])).await);
    }
    stack.orchestrator.kill();
    stack.orchestrator.start(&http).await;
    let mut completed = 0;
    for order_id in orders {
        let order = stack.wait_terminal(order_id, FINISH).await;
        assert!(order["status"] == "COMPLETED" || order["status"] == "CANCELLED", "{order}");
        completed += usize::from(order["status"] == "COMPLETED");
    }
    assert_eq!(completed, 8, "exactly the stock left: 8 units for 10 one-unit orders");
    assert_eq!(stack.stock("SKU-1").await, 0);
    stack.cleanup().await;
}

/// (g) The shipping service is down longer than the step timeout: the orchestrator retries the step with
/// back-off, gives up after the definition's attempts and compensates, newest first: the shipment (whose
/// outcome is unknown) is cancelled once shipping is back, the payment refunded and the stock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_down_past_its_timeout_is_retried_then_compensated() {
    let options = Options {
        orchestrator_env: vec![("SAGA_STEP_TIMEOUT_MS", "1500".to_owned())],
        held_back: vec!["shipping"],
        ..Options::default()
    };
    let mut stack = Stack::start("participant-down", options).await;
    stack.set_stock("SKU-1", 10).await;
    let order_id = stack.place(&Stack::order("cust-g", &[("SKU-1", 3)])).await;

    // Three attempts of create_shipment time out; then its compensation (shipping.cancel) is retried too.
    let order = stack.wait_state(order_id, "COMPENSATION_BACKOFF", Some("create_shipment"), FINISH).await;
    assert!(
        order["reason"].as_str().is_some_and(|r| r.contains("create_shipment gave up after 3 attempts")),
        "{order}"
    );
    let http = stack.http.clone();
    stack.shipping.start(&http).await;

    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    let shipment = stack.shipment(order_id).await.expect("the late create made a shipment, then it was cancelled");
    assert_eq!(shipment["status"], "cancelled", "{shipment}");
    let payment = stack.payment(order_id).await.expect("a payment");
    assert_eq!(payment["status"], "refunded");
    assert_eq!(payment["refunded_cents"], payment["amount_cents"], "refunded once: {payment}");
    assert_eq!(stack.stock("SKU-1").await, 10, "stock restored");
    stack.cleanup().await;
}

/// An operator finds a saga stuck on a participant that is down, looks at the plan of a forced compensation
/// (dry run), then compensates it with the version they saw; stale and missing versions are refused. The
/// saga is cancelled once the participant is back, and nothing is charged in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_compensates_a_saga_stuck_on_a_participant() {
    let options = Options {
        orchestrator_env: vec![("SAGA_STEP_TIMEOUT_MS", "120000".to_owned())],
        held_back: vec!["payment"],
        ..Options::default()
    };
    let mut stack = Stack::start("operator-compensates", options).await;
    stack.set_stock("SKU-1", 10).await;
    let order_id = stack.place(&Stack::order("cust-o", &[("SKU-1", 4)])).await;
    stack.wait_state(order_id, "RUNNING", Some("charge_payment"), FINISH).await;

    let list_url = stack.orchestrator.url("/admin/sagas?state=RUNNING&step=charge_payment");
    let page: serde_json::Value = stack.http.get(list_url).send().await.expect("list").json().await.expect("json");
    let listed = page["sagas"].as_array().expect("sagas");
    assert!(listed.iter().any(|s| s["saga_id"] == order_id.to_string()), "the stuck saga is listed: {page}");

    let saga_url = stack.orchestrator.url(&format!("/admin/sagas/{order_id}"));
    let detail = stack.http.get(&saga_url).send().await.expect("show");
    let etag = detail.headers()["etag"].to_str().expect("etag").to_owned();
    let detail: serde_json::Value = detail.json().await.expect("json");
    assert!(detail["timeline"].as_array().is_some_and(|t| t.len() >= 3), "{detail}");
    let version = detail["version"].as_u64().expect("version");
    assert_eq!(etag, format!("\"{version}\""));

    let compensate = |if_match: Option<String>, dry_run: bool| {
        let mut url = format!("{saga_url}/compensate");
        if dry_run {
            url.push_str("?dry_run=true");
        }
        let mut request = stack.http.post(url).json(&serde_json::json!({ "reason": "payment provider outage" }));
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        request.send()
    };
    assert_eq!(compensate(None, false).await.expect("post").status().as_u16(), 428);
    assert_eq!(compensate(Some(format!("\"{}\"", version - 1)), false).await.expect("post").status().as_u16(), 412);
    let plan: serde_json::Value =
        compensate(Some(etag.clone()), true).await.expect("dry run").json().await.expect("json");
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["to"], "COMPENSATING", "{plan}");
    assert_eq!(
        plan["commands"][0]["command"], "payment.refund",
        "the charge's outcome is unknown: refund first: {plan}"
    );
    let unchanged: serde_json::Value =
        stack.http.get(&saga_url).send().await.expect("show").json().await.expect("json");
    assert_eq!(unchanged["version"], version, "a dry run changes nothing");

    let done = compensate(Some(etag), false).await.expect("compensate");
    assert_eq!(done.status().as_u16(), 200);
    let done: serde_json::Value = done.json().await.expect("json");
    assert_eq!((done["from"].as_str(), done["to"].as_str()), (Some("RUNNING"), Some("COMPENSATING")), "{done}");

    let http = stack.http.clone();
    stack.payment.start(&http).await;
    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert!(order["reason"].as_str().is_some_and(|r| r.contains("payment provider outage")), "{order}");
    let payment = stack.payment(order_id).await.expect("the queued charge ran, then the refund");
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert_eq!(stack.stock("SKU-1").await, 10, "stock released");

    let timeline: serde_json::Value = stack.http.get(&saga_url).send().await.expect("show").json().await.expect("json");
    let by_operator = timeline["timeline"].as_array().expect("timeline").iter().any(|e| {
        e["received"]["message_type"] == "saga.operator"
            && e["received"]["outcome"].as_str().is_some_and(|o| o.contains("e2e-operator"))
    });
    assert!(by_operator, "the action is on the timeline with the operator's name: {timeline}");
    stack.cleanup().await;
}
