//! The stack's public HTTP API as the bench uses it: readiness, stock, placing an order, following its
//! status events, and the admin timeline. Every call has a time limit.

use std::time::{Duration, Instant};

use orchestrator::model::LogEntry;
use proto_events::OrderStatus;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::mix::OrderKind;
use crate::sse;

/// How long to wait for an event stream to end after its terminal event (not part of the latency).
const STREAM_END_WAIT: Duration = Duration::from_secs(1);

/// Where the stack's services listen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    /// The orchestrator's base URL, such as `http://127.0.0.1:8080`.
    pub orchestrator: String,
    /// The inventory service's base URL, such as `http://127.0.0.1:8081`.
    pub inventory: String,
}

impl Endpoints {
    /// `http://127.0.0.1:$ORCHESTRATOR_PORT` (8080) and `http://127.0.0.1:$INVENTORY_PORT` (8081), the ports
    /// `make up` gives the services.
    pub fn from_env() -> Self {
        let port = |name, default| platform::config::string(name, default);
        Self {
            orchestrator: format!("http://127.0.0.1:{}", port("ORCHESTRATOR_PORT", "8080")),
            inventory: format!("http://127.0.0.1:{}", port("INVENTORY_PORT", "8081")),
        }
    }
}

/// Why one order did not reach a terminal status (counted in the report, never fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// The POST did not get an answer (connection refused, reset, time limit).
    PostTransport(String),
    /// The POST was answered with something other than 202.
    PostStatus(u16),
    /// The event stream could not be opened or broke off.
    EventsTransport(String),
    /// The event stream was answered with something other than 200.
    EventsStatus(u16),
    /// The event stream ended without a terminal status.
    StreamEnded,
    /// No terminal status within the order's time limit.
    Timeout,
    /// Open loop only: not sent, because the bench already had its maximum of orders in flight.
    Dropped,
}

impl OrderError {
    /// The error's name in the report.
    pub fn name(&self) -> String {
        match self {
            OrderError::PostTransport(_) => "post_transport".into(),
            OrderError::PostStatus(status) => format!("post_status_{status}"),
            OrderError::EventsTransport(_) => "events_transport".into(),
            OrderError::EventsStatus(status) => format!("events_status_{status}"),
            OrderError::StreamEnded => "stream_ended".into(),
            OrderError::Timeout => "timeout".into(),
            OrderError::Dropped => "dropped".into(),
        }
    }
}

/// A terminal status as received on the order's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// The status.
    pub status: OrderStatus,
    /// When the event was received.
    pub at: Instant,
    /// Whether it was the stream's first event: the order had finished before the stream was open, so the
    /// measured latency includes opening the stream (an upper bound).
    pub on_connect: bool,
}

/// The answer to a placed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The order id.
    pub order_id: Uuid,
    /// When the 202 arrived.
    pub at: Instant,
}

/// The SKUs the bench orders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skus {
    /// Stocked generously before each point; complete and declined orders take one unit of one of them.
    pub in_stock: Vec<String>,
    /// Set to 0 units before each point; out-of-stock orders ask for one unit of it.
    pub empty: String,
}

impl Default for Skus {
    fn default() -> Self {
        Self { in_stock: (1..=8).map(|n| format!("BENCH-{n}")).collect(), empty: "BENCH-EMPTY".into() }
    }
}

impl Skus {
    /// The SKU of the `n`-th order of `kind`.
    pub fn for_order(&self, kind: OrderKind, n: u64) -> &str {
        match kind {
            OrderKind::OutOfStock => &self.empty,
            _ => &self.in_stock[usize::try_from(n % self.in_stock.len() as u64).unwrap_or(0)],
        }
    }
}

/// The order body for `customer_id` ordering one unit of `sku`; `kind` picks the payment token.
pub fn order_body(customer_id: &str, sku: &str, kind: OrderKind) -> Value {
    let payment_token = if kind == OrderKind::Declined { "tok_decline" } else { "tok_visa" };
    json!({
        "customer_id": customer_id,
        "email": "bench@example.com",
        "items": [{"sku": sku, "quantity": 1, "unit_price_cents": 1250}],
        "currency": "EUR",
        "payment_token": payment_token,
        "shipping_address": {"name": "Bench Customer", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    })
}

/// An HTTP client of the stack.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    endpoints: Endpoints,
    request_timeout: Duration,
}

#[derive(Deserialize)]
struct Placed {
    order_id: Uuid,
}

#[derive(Deserialize)]
struct Change {
    status: OrderStatus,
}

#[derive(Deserialize)]
struct Detail {
    timeline: Vec<LogEntry>,
}

impl Api {
    /// A client of `endpoints`; every plain request (not an event stream) must be answered within
    /// `request_timeout`.
    pub fn new(endpoints: Endpoints, request_timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(Error::http("building the HTTP client"))?;
        Ok(Self { http, endpoints, request_timeout })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Checks that the orchestrator and the inventory answer `GET /ready` with 200.
    pub async fn ready(&self) -> Result<()> {
        for base in [&self.endpoints.orchestrator, &self.endpoints.inventory] {
            let url = format!("{base}/ready");
            match self.http.get(&url).timeout(self.request_timeout).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    return Err(Error::NotReady(format!("{url} answered {status}: {}", truncate(&body))));
                }
                Err(e) => return Err(Error::NotReady(format!("{url} does not answer ({e})"))),
            }
        }
        Ok(())
    }

    /// Sets the available stock of `sku` (`PUT /v1/stock/{sku}` on the inventory).
    pub async fn set_stock(&self, token: &str, sku: &str, available: i64) -> Result<()> {
        let url = format!("{}/v1/stock/{sku}", self.endpoints.inventory);
        let what = format!("setting the stock of {sku}");
        let response = (self.http.put(&url).bearer_auth(token).json(&json!({ "available": available })))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(Error::http(what.clone()))?;
        expect_success(response, what).await.map(|_| ())
    }

    /// Places an order (`POST /v1/orders`) as the customer holding `token`.
    pub async fn place(
        &self,
        token: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, OrderError> {
        let url = format!("{}/v1/orders", self.endpoints.orchestrator);
        let mut request = self.http.post(url).bearer_auth(token).json(body).timeout(self.request_timeout);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| OrderError::PostTransport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 202 {
            return Err(OrderError::PostStatus(status));
        }
        let placed: Placed = response.json().await.map_err(|e| OrderError::PostTransport(e.to_string()))?;
        Ok(Accepted { order_id: placed.order_id, at: Instant::now() })
    }

    /// Follows the order's event stream (`GET /v1/orders/{id}/events`) until its terminal status; the caller
    /// bounds the wait (see [`crate::load`]).
    pub async fn follow(&self, token: &str, order_id: Uuid) -> Result<Terminal, OrderError> {
        let url = format!("{}/v1/orders/{order_id}/events", self.endpoints.orchestrator);
        let mut response = (self.http.get(url).bearer_auth(token).header("Accept", "text/event-stream"))
            .send()
            .await
            .map_err(|e| OrderError::EventsTransport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(OrderError::EventsStatus(status));
        }
        let mut parser = sse::Parser::default();
        let mut first = true;
        loop {
            let chunk = response.chunk().await.map_err(|e| OrderError::EventsTransport(e.to_string()))?;
            let Some(chunk) = chunk else { return Err(OrderError::StreamEnded) };
            let at = Instant::now();
            for event in parser.feed(&chunk) {
                let Ok(change) = serde_json::from_str::<Change>(&event.data) else { continue };
                if change.status.is_terminal() {
                    // The server ends the stream right after the terminal event: read that end (briefly), so
                    // that the connection goes back to the pool instead of being dropped mid-body.
                    let _ = tokio::time::timeout(STREAM_END_WAIT, async {
                        while let Ok(Some(_)) = response.chunk().await {}
                    })
                    .await;
                    return Ok(Terminal { status: change.status, at, on_connect: first });
                }
                first = false;
            }
        }
    }

    /// The saga's timeline (`GET /admin/sagas/{id}`, operator token).
    pub async fn timeline(&self, operator_token: &str, saga_id: Uuid) -> Result<Vec<LogEntry>> {
        let url = format!("{}/admin/sagas/{saga_id}", self.endpoints.orchestrator);
        let what = format!("reading the timeline of saga {saga_id}");
        let response = (self.http.get(url).bearer_auth(operator_token).timeout(self.request_timeout))
            .send()
            .await
            .map_err(Error::http(what.clone()))?;
        let response = expect_success(response, what.clone()).await?;
        let detail: Detail = response.json().await.map_err(Error::http(what))?;
        Ok(detail.timeline)
    }
}

async fn expect_success(response: reqwest::Response, what: String) -> Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Err(Error::Status { what, status, body: truncate(&body) })
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_orders_what_makes_it_end_as_meant() {
        let skus = Skus::default();
        let declined = order_body("bench-cust-1", skus.for_order(OrderKind::Declined, 3), OrderKind::Declined);
        assert_eq!(declined["payment_token"], "tok_decline");
        assert_eq!(declined["items"][0]["sku"], "BENCH-4");
        let empty = order_body("bench-cust-1", skus.for_order(OrderKind::OutOfStock, 3), OrderKind::OutOfStock);
        assert_eq!(empty["items"][0]["sku"], "BENCH-EMPTY");
        assert_eq!(empty["payment_token"], "tok_visa");
        let body: orchestrator::api::orders::PlaceOrder =
            serde_json::from_value(order_body("bench-cust-1", "BENCH-1", OrderKind::Complete))
                .expect("the API's shape");
        assert_eq!(body.customer_id, "bench-cust-1");
    }
}
