//! The participant services of the order saga. One runtime that every participant shares (consume a
//! command, validate it, apply its effect idempotently in the participant's own database, reply), and the
//! three domains: inventory, payment and shipping.
//!
//! - [`domain`]: the [`domain::Domain`] trait the runtime drives, and what a domain answers.
//! - [`runtime`]: the Kafka consumer loop: decode, dead-letter poison, apply with retries, reply, store the
//!   offset. One message at a time (see the module's docs for why).
//! - [`app`]: [`app::Application`], which wires a domain to Kafka, its database and its HTTP port, and the
//!   [`app::Service`] trait each domain implements for that.
//! - [`inventory`], [`payment`], [`shipping`]: the domains, each with a store trait and two implementations
//!   (MongoDB, and a deterministic in-memory one for unit tests and simulation), and its HTTP routes.
//! - [`store`], [`metrics`], [`clock`], [`api`]: what the domains share: store errors and MongoDB helpers,
//!   Prometheus metrics, the injected clock, the HTTP error type.
//!
//! **Database access rule** (details in [`store`](store#database-access-rule)): handling a command reads
//! and writes documents by an exact `{_id: value}` filter, or inserts them; nothing else. FerretDB, the
//! database CI runs on, answers only that filter from an index and scans the whole collection for any
//! other (`{_id, status}`, `{saga_id}` even indexed, `$in`, `$match`), which made sagas time out under
//! load. Conditions are checked in code after the read, which is safe because each participant is the
//! single writer of its documents and handles one command at a time ([`runtime`]).
//!
//! The binaries `inventory`, `payment` and `shipping` are thin mains over [`app::serve`].

pub mod api;
pub mod app;
pub mod clock;
pub mod domain;
pub mod inventory;
pub mod metrics;
pub mod payment;
pub mod runtime;
pub mod shipping;
pub mod store;
