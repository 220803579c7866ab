//! Structured logs: one JSON object per line on stdout, with the span fields (saga id, correlation id)
//! of the current span. The level filter comes from `LOG_LEVEL` (or `RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config;

/// Installs the JSON log subscriber for `service`. Call once, first thing in `main`.
pub fn init_logging(service: &'static str) {
    let filter =
        config::optional("LOG_LEVEL").or_else(|| config::optional("RUST_LOG")).unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("LOG_LEVEL={filter:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info")
    });
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true);
    tracing_subscriber::registry().with(filter).with(json).init();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
}
