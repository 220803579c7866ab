//! The `shipping` participant service: consumes its commands from Kafka, applies them in its own database,
//! replies, and serves /health, /ready, /metrics and its API over HTTP (see `participants::shipping`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        eprintln!("usage: shipping (no arguments; configuration comes from the environment)");
        return ExitCode::from(2);
    }
    participants::app::serve::<participants::shipping::MongoShipping>().await
}
