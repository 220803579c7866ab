//! Traces and logs end to end: the four services export their spans over OTLP/HTTP (JSON) to a receiver in
//! the test, and one order is one trace, from `POST /v1/orders` through every command and reply (the W3C
//! `traceparent` in Kafka headers, both ways) to its terminal state, with the database calls in it; every
//! service's log lines about the order carry its trace id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tests::otlp::{Collector, Span};
use tests::stack::{Options, SERVICES, Service, Stack};
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);
const EXPORTED: Duration = Duration::from_secs(30);
const PARTICIPANTS: [&str; 3] = ["inventory", "payment", "shipping"];
/// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_the_four_services_and_its_log_lines_carry_it() {
    let collector = Collector::start().await;
    let options = Options {
        extra_env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
        ..Options::default()
    };
    let stack = Stack::start("tracing", options).await;
    stack.set_stock("SKU-T", 10).await;
    let order_id = stack.place(&Stack::order("cust-t", &[("SKU-T", 2)])).await;
    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");

    let trace = Trace::wait(&collector, order_id).await;
    let root = trace.root();
    assert_eq!((root.service.as_str(), root.name.as_str(), root.kind), ("orchestrator", "POST /v1/orders", SERVER));
    trace.assert_every_parent_is_in_the_trace();
    let services: BTreeSet<&str> = trace.spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, SERVICES.into_iter().collect(), "spans from all four services share the trace");

    // Every span about the order, whichever service made it, is in this one trace.
    let id = order_id.to_string();
    for span in collector.spans() {
        if [span.attribute("order_id"), span.attribute("saga_id")].contains(&Some(id.clone())) {
            assert_eq!(
                span.trace_id, trace.id,
                "{} {} is about the order but in another trace",
                span.service, span.name
            );
        }
    }

    // The Kafka hops link across services, both ways.
    for participant in PARTICIPANTS {
        let command = trace.hop("orchestrator", participant);
        assert_eq!(command.kind, CONSUMER, "{command:?}");
        assert_eq!(command.attribute("messaging.system").as_deref(), Some("kafka"), "{command:?}");
        let topic = command.attribute("messaging.destination.name");
        assert!(topic.is_some_and(|t| t.ends_with(&format!("saga.cmd.{participant}"))), "{command:?}");
        assert_eq!(trace.parent(command).map(|p| p.kind), Some(PRODUCER), "the command's parent is the publication");
        let reply = trace.hop(participant, "orchestrator");
        assert!(reply.attribute("messaging.destination.name").is_some_and(|t| t.ends_with("saga.reply")), "{reply:?}");
        assert!(
            reply.attribute("message_type").is_some_and(|t| t.starts_with(participant) && t.ends_with(".reply")),
            "the orchestrator's span for {participant}'s reply: {reply:?}"
        );
    }

    // Database calls are spans of the trace in every service.
    for service in SERVICES {
        let db: Vec<&Span> = trace.spans.iter().filter(|s| s.service == service && s.name.starts_with("db.")).collect();
        assert!(!db.is_empty(), "{service} has no database span in the trace");
        for span in db {
            assert_eq!((span.kind, span.attribute("db.system.name").as_deref()), (CLIENT, Some("mongodb")), "{span:?}");
        }
    }

    // Every service logged about the order with its trace id (and its saga, order and correlation ids).
    for service in [&stack.orchestrator, &stack.inventory, &stack.payment, &stack.shipping] {
        let lines = log_lines(service);
        let line = lines.iter().find(|l| l["trace_id"] == trace.id.as_str()).unwrap_or_else(|| {
            panic!("no log line of {} carries trace id {} ({})", service.name, trace.id, service.log().display())
        });
        assert_eq!((line["saga_id"].as_str(), line["order_id"].as_str()), (Some(id.as_str()), Some(id.as_str())));
        assert!(line["correlation_id"].as_str().is_some_and(|c| Uuid::parse_str(c).is_ok()), "{line}");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "{} logged without {key}: {line}", service.name);
        }
    }

    // A caller's trace is continued: the order's spans join the trace of an incoming `traceparent`.
    let (caller_trace, caller_span) = (Uuid::now_v7().simple().to_string(), &Uuid::now_v7().simple().to_string()[16..]);
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let continued = place_with_traceparent(&stack, &traceparent).await;
    stack.wait_terminal(continued, FINISH).await;
    let continued = Trace::wait_with_root(&collector, continued, Some(caller_span)).await;
    assert_eq!(continued.id, caller_trace);

    // Personal data reaches neither the logs nor the exported spans.
    let pii = ["Ada Lovelace", "ada@example.com", "1 Main St", "tok_visa"];
    stack.assert_logs_free_of(&pii);
    for body in collector.bodies() {
        for needle in pii {
            assert!(!body.contains(needle), "an OTLP export carries {needle:?}");
        }
    }
    stack.cleanup().await;
}

/// The spans of one order's trace.
struct Trace {
    id: String,
    spans: Vec<Span>,
    by_id: BTreeMap<String, Span>,
}

impl Trace {
    /// Waits until the receiver has the order's trace from all four services, with every span's parent
    /// (an exporter sends a span when it ends, so children arrive before their parents).
    async fn wait(collector: &Collector, order_id: Uuid) -> Self {
        Self::wait_with_root(collector, order_id, None).await
    }

    /// [`Trace::wait`]; the request's span has parent `remote_parent` (a caller's span, not exported here).
    async fn wait_with_root(collector: &Collector, order_id: Uuid, remote_parent: Option<&str>) -> Self {
        let deadline = tokio::time::Instant::now() + EXPORTED;
        loop {
            let spans = collector.spans();
            if let Some(trace) = Self::complete(&spans, order_id, remote_parent) {
                return trace;
            }
            if tokio::time::Instant::now() >= deadline {
                let summary: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} {} {} {} <- {:?}", s.trace_id, s.service, s.name, s.span_id, s.parent_span_id))
                    .collect();
                panic!(
                    "the trace of order {order_id} is not complete after {EXPORTED:?}; received:\n{}",
                    summary.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn complete(spans: &[Span], order_id: Uuid, remote_parent: Option<&str>) -> Option<Self> {
        let id = order_id.to_string();
        let request = spans.iter().find(|s| {
            s.service == "orchestrator"
                && s.kind == SERVER
                && s.attribute("order_id").as_deref() == Some(id.as_str())
                && s.parent_span_id.as_deref() == remote_parent
        })?;
        let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == request.trace_id).cloned().collect();
        let by_id: BTreeMap<String, Span> = trace.iter().map(|s| (s.span_id.clone(), s.clone())).collect();
        let all_services = trace.iter().map(|s| s.service.as_str()).collect::<BTreeSet<&str>>().len() == SERVICES.len();
        let linked = trace
            .iter()
            .all(|s| s.span_id == request.span_id || s.parent_span_id.as_ref().is_some_and(|p| by_id.contains_key(p)));
        let trace = Self { id: request.trace_id.clone(), spans: trace, by_id };
        // Each participant's reply handled by the orchestrator (which ends its saga at the last one). Counting
        // the orchestrator's `kafka.process` spans instead would let a redelivered message stand in for a
        // reply whose span is not exported yet.
        let replied = PARTICIPANTS.iter().all(|participant| trace.find_hop(participant, "orchestrator").is_some());
        (all_services && linked && replied).then_some(trace)
    }

    /// The only span without a parent.
    fn root(&self) -> &Span {
        let roots: Vec<&Span> = self.spans.iter().filter(|s| s.parent_span_id.is_none()).collect();
        assert_eq!(roots.len(), 1, "one root span: {roots:?}");
        roots[0]
    }

    fn assert_every_parent_is_in_the_trace(&self) {
        for span in &self.spans {
            if let Some(parent) = &span.parent_span_id {
                assert!(
                    self.by_id.contains_key(parent),
                    "the parent of {} {} is not in the trace",
                    span.service,
                    span.name
                );
            }
        }
    }

    fn parent(&self, span: &Span) -> Option<&Span> {
        span.parent_span_id.as_ref().and_then(|p| self.by_id.get(p))
    }

    /// A `kafka.process` span of `to` whose parent is a span of `from`: a message crossing between them.
    fn hop(&self, from: &str, to: &str) -> &Span {
        self.find_hop(from, to).unwrap_or_else(|| panic!("no message from {from} to {to} is linked in the trace"))
    }

    fn find_hop(&self, from: &str, to: &str) -> Option<&Span> {
        self.spans
            .iter()
            .find(|s| s.service == to && s.name == "kafka.process" && self.parent(s).is_some_and(|p| p.service == from))
    }
}

/// Places an order with a caller's `traceparent` header; returns its id.
async fn place_with_traceparent(stack: &Stack, traceparent: &str) -> Uuid {
    let url = stack.orchestrator.url("/v1/orders");
    let order = Stack::order("cust-u", &[("SKU-T", 1)]);
    let response = stack.http.post(url).header("traceparent", traceparent).json(&order).send().await.expect("POST");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("JSON answer");
    Uuid::parse_str(body["order_id"].as_str().expect("order_id")).expect("a UUID")
}

/// The JSON lines of a service's log.
fn log_lines(service: &Service) -> Vec<Value> {
    let log = std::fs::read_to_string(service.log()).unwrap_or_default();
    log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}
