//! The `inventory` participant service: consumes its commands from Kafka, applies them in its own database,
//! replies, and serves /health, /ready, /metrics and the stock API over HTTP (see `participants::inventory`).
//! `inventory seed [--skus N] [--units M]` writes demo stock (SKU-1..SKU-N) and exits.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    participants::inventory::main(&args).await
}
