//! Live order status over server-sent events, end to end: a customer follows their order from an
//! orchestrator instance that may not own the saga, resumes with `Last-Event-ID`, and the stream ends after
//! the terminal status; and customers see only their own orders.

use std::time::Duration;

use orchestrator::auth::{DEV_AUDIENCE, DEV_ISSUER, DEV_JWT_SECRET, Role, claims, mint_hs256};
use serde_json::Value;
use tests::stack::{Options, Stack};
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);

fn customer_token(customer: &str) -> String {
    mint_hs256(DEV_JWT_SECRET, &claims(customer, &[Role::Customer], DEV_ISSUER, DEV_AUDIENCE, 600))
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: u64,
    data: Value,
}

/// Reads the whole event stream of `order_id` (it ends after the terminal status), with `last_event_id`.
async fn follow(base: &str, order_id: Uuid, token: &str, last_event_id: Option<u64>) -> (u16, Vec<Sse>) {
    let url = format!("{base}/v1/orders/{order_id}/events?access_token={token}");
    let client = reqwest::Client::builder().build().expect("client");
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let mut response = request.send().await.expect("connect");
    let status = response.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.expect("read the stream") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(FINISH, read).await.expect("the stream ends after the terminal status");
    (status, parse(&text))
}

fn parse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(str::trim));
            let id = field("id:")?.parse().ok()?;
            let data = serde_json::from_str(field("data:")?).ok()?;
            Some(Sse { id, data })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_follows_an_order_live_from_any_instance_and_resumes() {
    let stack = Stack::start("live", Options::default()).await;
    let second = stack.start_second_orchestrator().await;
    stack.set_stock("SKU-1", 5).await;

    let ada = customer_token("cust-ada");
    let order_id = stack.place(&Stack::order("cust-ada", &[("SKU-1", 1)])).await;
    // Follow on the second instance: it reads every partition of saga.event, whoever owns the saga.
    let (status, events) = follow(&second.url(""), order_id, &ada, None).await;
    assert_eq!(status, 200);
    let last = events.last().expect("at least the terminal event");
    assert_eq!(last.data["status"], "COMPLETED", "{events:?}");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids (saga versions) increase: {events:?}");
    assert!(events.iter().all(|e| e.data["order_id"] == order_id.to_string()));
    let body = serde_json::to_string(&events.iter().map(|e| &e.data).collect::<Vec<_>>()).expect("json");
    assert!(!body.contains("Ada Lovelace") && !body.contains("ada@example.com"), "no personal data: {body}");

    // Resuming after the terminal event: nothing more, the stream ends at once.
    let (_, again) = follow(&stack.orchestrator.url(""), order_id, &ada, Some(last.id)).await;
    assert!(again.is_empty(), "{again:?}");
    // Resuming from an earlier event: only what came after it.
    let first = events.first().expect("events").id;
    if first < last.id {
        let (_, rest) = follow(&stack.orchestrator.url(""), order_id, &ada, Some(first)).await;
        assert!(rest.iter().all(|e| e.id > first) && !rest.is_empty(), "{rest:?}");
    }

    // Another customer cannot follow it; without a token nobody can.
    let (status, _) = follow(&second.url(""), order_id, &customer_token("cust-bob"), None).await;
    assert_eq!(status, 404);
    let (status, _) = follow(&second.url(""), order_id, "not-a-token", None).await;
    assert_eq!(status, 401);
    drop(second);
    stack.cleanup().await;
}
