//! What every service process of the saga system stands on: configuration read from the environment
//! ([`config`]), Kafka client settings and idempotent topic set-up ([`kafka`]), and the document database
//! connection ([`mongo`]). The services (orchestrator and participants) and the end-to-end tests link it;
//! the pure crates (`proto-events`, `saga-defs`) do not.

pub mod config;
pub mod kafka;
pub mod mongo;
