//! Logs and traces of a service process, set up once by [`init`].
//!
//! **Logs**: one JSON object per line on stdout ([`json`]): `timestamp`, `level`, `target`, `message`, the
//! event's fields, and the fields of every span the event happened in (inner spans win), with `span` naming
//! the innermost one. So a line logged while handling a message or an order request carries `saga_id`,
//! `order_id`, `correlation_id` and `trace_id` (the OpenTelemetry trace id in hex), whichever span below
//! the handling span it comes from. The level filter is `LOG_LEVEL` (or `RUST_LOG`), default `info`; spans
//! at `info` and above pass whatever it says, so traces, and the ids they give log lines, do not depend on
//! the log level. Fields and messages never carry personal data (names, emails, addresses, payment tokens).
//!
//! **Traces**: every `tracing` span is an OpenTelemetry span ([`tracing_opentelemetry`]), and the W3C trace
//! context (`traceparent`, `tracestate`) travels in HTTP and Kafka headers (the propagator is set globally).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are exported
//! over OTLP/HTTP by a batch span processor (`OTEL_BSP_SCHEDULE_DELAY` and the other `OTEL_BSP_*` variables
//! tune it), as `http/protobuf` or `http/json` (`OTEL_EXPORTER_OTLP_PROTOCOL`, default `http/protobuf`),
//! with the resource attribute `service.name` = the service. Without an endpoint, spans still get ids (for
//! propagation and the logs' `trace_id`) and go nowhere. A database span (named `db.*`) outside any trace
//! (a background sweep, an API read) is not sampled: it would be a trace of one span.

use std::collections::HashMap;
use std::fmt::Display;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config;

pub mod json;

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The OTLP exporter could not be built (an invalid endpoint, for example).
    #[error("cannot export traces to {endpoint}: {source}")]
    Exporter { endpoint: String, source: opentelemetry_otlp::ExporterBuildError },
}

/// Keeps traces flowing; dropping it flushes the spans not exported yet and shuts the exporter down. Keep it
/// in `main` until the service has stopped.
#[must_use = "dropping the guard shuts tracing down"]
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown()
            && self.exporting
        {
            tracing::warn!(%error, "flushing the last spans failed");
        }
    }
}

/// Installs the JSON log subscriber and the OpenTelemetry layer for `service`. Call once, first thing in
/// `main`, and keep the guard until the end.
pub fn init(service: &'static str) -> Result<Telemetry, Error> {
    let export = export()?;
    let mut provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_sampler(Sampler::ParentBased(Box::new(RootSampler)));
    if let Some(Export { endpoint, protocol }) = &export {
        // The exporter reads the endpoint (and `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`) itself, the batch
        // processor its `OTEL_BSP_*` settings.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(*protocol)
            .build()
            .map_err(|source| Error::Exporter { endpoint: endpoint.clone(), source })?;
        provider = provider.with_span_processor(BatchSpanProcessor::builder(exporter).build());
    }
    let provider = provider.build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let directives = log_directives();
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(json::JsonLines)
        .with_filter(filter(&directives));
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(filter(&directives));
    tracing_subscriber::registry().with(logs).with(traces).init();
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        otlp_endpoint = export.as_ref().map(|e| e.endpoint.as_str()),
        otlp_protocol = export.as_ref().map(|e| protocol_name(e.protocol)),
        "starting"
    );
    Ok(Telemetry { provider, exporting: export.is_some() })
}

/// Where spans are exported: the endpoint (without credentials, for messages) and the protocol.
struct Export {
    endpoint: String,
    protocol: Protocol,
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, and the protocol; none without an
/// endpoint.
fn export() -> Result<Option<Export>, config::Error> {
    let endpoint = config::optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| config::optional("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let Some(endpoint) = endpoint else { return Ok(None) };
    Ok(Some(Export { endpoint: without_credentials(&endpoint), protocol: protocol()? }))
}

/// `url` without a `user:password@` before its host.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (default) or `http/json`; gRPC is not built in.
fn protocol() -> Result<Protocol, config::Error> {
    let name = "OTEL_EXPORTER_OTLP_PROTOCOL";
    match config::optional(name).as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => Err(config::Error::Invalid {
            name,
            value: other.to_owned(),
            reason: "use http/protobuf or http/json (gRPC is not supported)".to_owned(),
        }),
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::HttpJson => "http/json",
        _ => "http/protobuf",
    }
}

/// `LOG_LEVEL`, else `RUST_LOG`, else `info`; `info` if it does not parse (said on stderr).
fn log_directives() -> String {
    let directives =
        config::optional("LOG_LEVEL").or_else(|| config::optional("RUST_LOG")).unwrap_or_else(|| "info".to_owned());
    match EnvFilter::try_new(&directives) {
        Ok(_) => directives,
        Err(e) => {
            eprintln!("LOG_LEVEL={directives:?} is not a valid filter ({e}); using info");
            "info".to_owned()
        }
    }
}

/// Events by the log level's directives; spans at `info` and above always (a span prints nothing by
/// itself, and traces and the logs' ids need them).
fn filter<S>(directives: &str) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let spans = filter_fn(|metadata| metadata.is_span() && *metadata.level() <= tracing::Level::INFO)
        .with_max_level_hint(LevelFilter::INFO);
    EnvFilter::new(directives).or(spans)
}

/// Samples every root span except database calls; children follow their parent (through
/// [`Sampler::ParentBased`]).
#[derive(Debug, Clone)]
struct RootSampler;

impl ShouldSample for RootSampler {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: opentelemetry::trace::TraceId,
        name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let decision = if name.starts_with("db.") { SamplingDecision::Drop } else { SamplingDecision::RecordAndSample };
        SamplingResult { decision, attributes: Vec::new(), trace_state: Default::default() }
    }
}

/// Makes `parent` (extracted from a message's or request's headers; empty for none) the parent of `span`,
/// which must not have been entered yet, and records the trace id in the span's `trace_id` field.
pub fn continue_trace(span: &Span, parent: Context) {
    // Fails only without the OpenTelemetry layer (unit tests) or for a disabled span: nothing to link then.
    let _ = span.set_parent(parent);
    record_trace_id(span);
}

/// Records the OpenTelemetry trace id of `span` in its `trace_id` field (if it has one).
pub fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// Records a saga's ids in `span`'s `saga_id`, `order_id` (the same id: the order's saga has the order's id)
/// and `correlation_id` fields.
pub fn record_saga(span: &Span, saga_id: impl Display, correlation_id: impl Display) {
    span.record("saga_id", tracing::field::display(&saga_id));
    span.record("order_id", tracing::field::display(&saga_id));
    span.record("correlation_id", tracing::field::display(correlation_id));
}

/// The W3C trace context headers (`traceparent`, and `tracestate` when there is one) of `span`.
pub fn trace_headers(span: &Span) -> Vec<(String, String)> {
    let mut headers = Headers::default();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&span.context(), &mut headers));
    headers.0
}

/// The W3C `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent(span: &Span) -> Option<String> {
    trace_headers(span).into_iter().find(|(key, _)| key == proto_events::envelope::headers::TRACEPARENT).map(|(_, v)| v)
}

/// The trace context stored as a W3C `traceparent` (empty for none or an invalid one).
pub fn context_from_traceparent(traceparent: Option<&str>) -> Context {
    let carrier: HashMap<String, String> = traceparent
        .map(|v| (proto_events::envelope::headers::TRACEPARENT.to_owned(), v.to_owned()))
        .into_iter()
        .collect();
    extract(&carrier)
}

/// The trace context in HTTP request headers (empty for none).
pub fn context_from_http(headers: &axum::http::HeaderMap) -> Context {
    extract(&HttpHeaders(headers))
}

/// The trace context in `carrier`, through the global propagator.
pub fn extract(carrier: &dyn Extractor) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}

#[derive(Default)]
struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), value));
    }
}

struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// Runs `f` with the OpenTelemetry layer (and the W3C propagator) installed, as `init` does.
    fn traced(f: impl FnOnce()) {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(RootSampler))).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
    }

    fn parts(traceparent: &str) -> (String, String, String) {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
    }

    #[test]
    fn a_span_continues_the_trace_of_a_consumed_message_and_passes_its_own_span_on() {
        traced(|| {
            let headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(INCOMING) });
            let message =
                OwnedMessage::new(None, None, "saga.reply".into(), Timestamp::NotAvailable, 0, 7, Some(headers));
            let span = crate::kafka::process_span(&message);
            let (trace, parent, flags) = parts(&traceparent(&span).expect("a traceparent"));
            assert_eq!((trace.as_str(), flags.as_str()), ("0af7651916cd43dd8448eb211c80319c", "01"));
            assert_ne!(parent, "b7ad6b7169203331", "the span's own id goes on, not its parent's");

            let child = span.in_scope(|| tracing::info_span!("kafka.publish"));
            let (child_trace, child_span, _) = parts(&traceparent(&child).expect("a traceparent"));
            assert_eq!(child_trace, trace, "a span entered inside stays in the trace");
            assert_ne!(child_span, parent);
        });
    }

    #[test]
    fn a_message_without_a_trace_context_starts_a_new_trace() {
        traced(|| {
            let message = OwnedMessage::new(None, None, "saga.reply".into(), Timestamp::NotAvailable, 0, 7, None);
            let first = traceparent(&crate::kafka::process_span(&message)).expect("a traceparent");
            let second = traceparent(&crate::kafka::process_span(&message)).expect("a traceparent");
            assert_ne!(parts(&first).0, parts(&second).0, "each is a trace of its own");
            assert_eq!(parts(&first).2, "01", "sampled");
        });
    }

    #[test]
    fn the_stored_traceparent_and_http_headers_are_continued() {
        traced(|| {
            let span = tracing::info_span!("saga.timer", trace_id = tracing::field::Empty);
            continue_trace(&span, context_from_traceparent(Some(INCOMING)));
            assert_eq!(parts(&traceparent(&span).expect("a traceparent")).0, "0af7651916cd43dd8448eb211c80319c");

            let mut headers = axum::http::HeaderMap::new();
            headers.insert("traceparent", INCOMING.parse().expect("a header value"));
            let request = tracing::info_span!("orders.place");
            continue_trace(&request, context_from_http(&headers));
            assert_eq!(parts(&traceparent(&request).expect("a traceparent")).0, "0af7651916cd43dd8448eb211c80319c");

            let garbage = tracing::info_span!("orders.place");
            continue_trace(&garbage, context_from_traceparent(Some("not a traceparent")));
            assert!(traceparent(&garbage).is_some(), "an invalid context starts a new trace");
        });
    }

    #[test]
    fn info_spans_pass_a_stricter_log_level_so_traces_do_not_depend_on_it() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test")).with_filter(filter("warn"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!("kafka.process");
            assert!(!span.is_disabled());
            assert!(traceparent(&span).is_some());
            assert!(tracing::debug_span!("detail").is_disabled(), "below info, the level decides");
        });
    }

    #[test]
    fn endpoints_are_shown_without_credentials() {
        assert_eq!(without_credentials("http://user:secret@otel:4318/base"), "http://otel:4318/base");
        assert_eq!(without_credentials("http://otel:4318/a@b"), "http://otel:4318/a@b");
        assert_eq!(without_credentials("http://127.0.0.1:4318"), "http://127.0.0.1:4318");
    }

    #[test]
    fn database_calls_are_sampled_only_inside_a_trace() {
        traced(|| {
            let alone = tracing::info_span!("db.saga.get");
            assert_eq!(parts(&traceparent(&alone).expect("a traceparent")).2, "00", "a lone database call");
            let request = tracing::info_span!("orders.place");
            let inside = request.in_scope(|| tracing::info_span!("db.saga.insert"));
            assert_eq!(parts(&traceparent(&inside).expect("a traceparent")).2, "01", "a call inside a trace");
        });
    }
}
