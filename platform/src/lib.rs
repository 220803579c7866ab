//! What every service process of the saga system stands on: configuration read from the environment
//! ([`config`]), Kafka clients, topic set-up, publishing and dead-lettering ([`kafka`]), the document
//! database connection ([`mongo`]), JSON logs ([`telemetry`]), the health, readiness and metrics endpoints
//! ([`http`]) and graceful shutdown ([`shutdown`]). The services (orchestrator and participants) and the
//! end-to-end tests link it; the pure crates (`proto-events`, `saga-defs`) do not.

pub mod config;
pub mod http;
pub mod kafka;
pub mod mongo;
pub mod shutdown;
pub mod telemetry;
