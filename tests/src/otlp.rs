//! A small OTLP/HTTP trace receiver for tests: it accepts `POST /v1/traces` in the JSON encoding
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) on 127.0.0.1, keeps every span with its service's name, and
//! keeps the raw bodies too (to check that no personal data is exported). Point a service at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` = [`Collector::endpoint`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One span as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// `service.name` of the resource that exported it.
    pub service: String,
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// The span id (16 hex digits).
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// The OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    /// Attributes, with their values as JSON (strings, numbers, booleans).
    pub attributes: BTreeMap<String, Value>,
}

impl Span {
    /// The attribute `key` as text (numbers and booleans as they print).
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    bodies: Vec<String>,
}

/// The receiver; it stops when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
}

impl Collector {
    /// Binds an ephemeral port on 127.0.0.1 and serves until dropped.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local address");
        let received = Arc::new(Mutex::new(Received::default()));
        let router = Router::new().route("/v1/traces", post(traces)).with_state(received.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stopped.cancelled_owned());
            served.await.expect("the OTLP receiver failed");
        });
        Self { addr, received, stop }
    }

    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).spans.clone()
    }

    /// Every request body received so far, as text.
    pub fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).bodies.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn traces(State(received): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    if !json {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
    let spans = parse(&request);
    let mut received = received.lock().unwrap_or_else(PoisonError::into_inner);
    received.spans.extend(spans);
    received.bodies.push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::OK
}

/// The spans of an `ExportTraceServiceRequest` in OTLP/JSON.
pub fn parse(request: &Value) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource_spans in array(&request["resourceSpans"]) {
        let resource = attributes(&resource_spans["resource"]["attributes"]);
        let service = resource.get("service.name").and_then(Value::as_str).unwrap_or_default().to_owned();
        for scope_spans in array(&resource_spans["scopeSpans"]) {
            for span in array(&scope_spans["spans"]) {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                let parent = text("parentSpanId");
                spans.push(Span {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: (!parent.is_empty()).then_some(parent),
                    name: text("name"),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    spans
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// `[{"key": k, "value": {"stringValue": v}}, ...]` as `{k: v}`.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    array(list)
        .iter()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_owned();
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse;

    #[test]
    fn parses_the_otlp_json_encoding() {
        let request = json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "payment"}}]},
            "scopeSpans": [{"scope": {"name": "payment"}, "spans": [
                {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "parentSpanId": "",
                 "name": "kafka.process", "kind": 5,
                 "attributes": [{"key": "offset", "value": {"intValue": "7"}}]},
                {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00f067aa0ba902b7",
                 "parentSpanId": "b7ad6b7169203331", "name": "db.payments.insert", "kind": 3}
            ]}]
        }]});
        let spans = parse(&request);
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].service.as_str(), spans[0].kind), ("payment", 5));
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].attribute("offset").as_deref(), Some("7"));
        assert_eq!(spans[1].parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    }
}
