//! The saga orchestrator: it accepts orders over HTTP, runs each order's saga with the pure core from
//! `saga-defs`, persists every saga with its outbox and timeline in the document database, sends commands
//! to the participants over Kafka and applies their replies, one writer per saga.
