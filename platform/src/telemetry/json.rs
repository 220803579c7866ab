//! The log line format: one JSON object per event, `timestamp`, `level`, `target` and `message` first, then
//! the fields of the spans the event happened in (outermost first, so inner spans win), then the event's
//! own fields (which win over the spans'), and `span`, the name of the innermost span. Span fields whose
//! name starts with `otel.` steer the OpenTelemetry export only and are left out.
//!
//! Tracing's own JSON formatter prints only the current span's fields (or a list of every span), so an
//! event inside a nested span (a database call inside the handling of a message) would lose the saga and
//! trace ids that the outer span carries; this one flattens them all into the line.

use std::fmt;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; pair it with [`tracing_subscriber::fmt::format::JsonFields`], which keeps each
/// span's fields as a JSON object.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = Map::new();
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(formatted) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(span_fields)) = serde_json::from_str::<Value>(&formatted.fields)
                {
                    fields.extend(span_fields.into_iter().filter(|(name, _)| !name.starts_with("otel.")));
                }
                innermost = Some(span.name());
            }
        }
        event.record(&mut Visitor(&mut fields));
        let message = fields.remove("message").unwrap_or_else(|| Value::String(String::new()));
        let mut line = Line(String::with_capacity(256));
        line.push("timestamp", &Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true).into())?;
        line.push("level", &metadata.level().as_str().into())?;
        line.push("target", &metadata.target().into())?;
        line.push("message", &message)?;
        for (name, value) in &fields {
            line.push(name, value)?;
        }
        if let Some(name) = innermost {
            line.push("span", &name.into())?;
        }
        writeln!(writer, "{{{}}}", line.0)
    }
}

/// The members of a JSON object in the order they are pushed.
struct Line(String);

impl Line {
    fn push(&mut self, name: &str, value: &Value) -> fmt::Result {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
        let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
        self.0.push_str(&name);
        self.0.push(':');
        self.0.push_str(&value);
        Ok(())
    }
}

/// Collects an event's fields as JSON values.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt;

    use super::JsonLines;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
            .collect()
    }

    #[test]
    fn lines_carry_the_fields_of_every_enclosing_span_and_inner_ones_win() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let outer =
                tracing::info_span!("kafka.process", saga_id = "s-1", trace_id = tracing::field::Empty, step = 1);
            outer.record("trace_id", "0af7651916cd43dd8448eb211c80319c");
            let _outer = outer.enter();
            let inner = tracing::info_span!("db.saga.get", step = 2, otel.kind = "client");
            let _inner = inner.enter();
            tracing::info!(count = 3_u64, ok = true, "read \"it\"");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["message"], "read \"it\"");
        assert_eq!(line["level"], "INFO");
        assert!(line["target"].as_str().is_some_and(|t| t.starts_with("platform")), "{line}");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert_eq!(line["saga_id"], "s-1");
        assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(line["step"], 2, "the inner span wins");
        assert_eq!(line["count"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["span"], "db.saga.get");
        assert!(line.get("otel.kind").is_none(), "otel.* fields are for the exporter: {line}");
    }

    #[test]
    fn a_line_outside_any_span_has_no_span() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::warn!(error = "boom", "failed");
        });
        let line = &lines(&buffer)[0];
        assert_eq!((line["level"].as_str(), line["error"].as_str()), (Some("WARN"), Some("boom")));
        assert!(line.get("span").is_none(), "{line}");
    }
}
