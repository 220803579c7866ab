//! What every service process of the saga system stands on: the injected clock ([`clock`]), configuration
//! read from the environment ([`config`]), Kafka clients, topic set-up, publishing and dead-lettering ([`kafka`]), the document
//! database connection ([`mongo`]), JSON logs and OpenTelemetry traces ([`telemetry`]), the health, readiness and metrics endpoints
//! ([`http`]), the metrics every service exports ([`metrics`]) and graceful shutdown ([`shutdown`]). The services (orchestrator and participants) and the
//! end-to-end tests link it; the pure crates (`proto-events`, `saga-defs`) do not.

pub mod clock;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod mongo;
pub mod shutdown;
pub mod telemetry;
