//! The orchestrator service.

use std::process::ExitCode;

use orchestrator::Application;
use orchestrator::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    // Kept to the end: dropping it flushes the last spans.
    let _telemetry = match platform::telemetry::init("orchestrator") {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("orchestrator: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "orchestrator stopped");
            eprintln!("orchestrator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let shutdown = platform::shutdown::on_signal();
    Application::build(settings).await?.run_until_stopped(shutdown).await
}
