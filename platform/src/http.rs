//! The endpoints every service exposes for operations, open without authentication:
//! `GET /health` (the process is alive), `GET /ready` (its dependencies answer within a timeout; 503
//! otherwise, recovering by itself) and `GET /metrics` (Prometheus text format).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::{BoxFuture, join_all};
use prometheus_client::registry::Registry;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One dependency check: `Ok` when the dependency answered.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The dependency checks behind `/ready`.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    timeout: Duration,
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Readiness").field("service", &self.service).field("checks", &names).finish()
    }
}

impl Readiness {
    /// No checks yet; each check gets `timeout`.
    pub fn new(service: &'static str, timeout: Duration) -> Self {
        Self { service, timeout, checks: Vec::new() }
    }

    /// Adds a check named `name`.
    pub fn with(mut self, name: &'static str, check: Check) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Adds a Kafka metadata request through `producer`'s client.
    pub fn with_kafka(self, producer: FutureProducer) -> Self {
        let timeout = self.timeout;
        self.with(
            "kafka",
            Arc::new(move || {
                let producer = producer.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        )
    }

    /// Adds a database ping.
    pub fn with_mongo(self, client: mongodb::Client) -> Self {
        self.with(
            "database",
            Arc::new(move || {
                let client = client.clone();
                Box::pin(async move { crate::mongo::ping(&client).await.map_err(|e| e.to_string()) })
            }),
        )
    }

    /// Runs every check at once; returns whether all passed and a JSON report.
    pub async fn report(&self) -> (bool, Value) {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, check()).await;
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let result = match outcome {
                Ok(Ok(())) => json!({ "status": "up", "latency_ms": millis }),
                Ok(Err(error)) => json!({ "status": "down", "error": error, "latency_ms": millis }),
                Err(_) => json!({ "status": "down", "error": format!("no answer within {:?}", self.timeout) }),
            };
            (*name, result)
        });
        let results = join_all(runs).await;
        let ready = results.iter().all(|(_, r)| r["status"] == "up");
        let checks: serde_json::Map<String, Value> = results.into_iter().map(|(n, r)| (n.to_owned(), r)).collect();
        let status = if ready { "ready" } else { "not_ready" };
        (ready, json!({ "service": self.service, "status": status, "checks": checks }))
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

/// `/health`, `/ready` and `/metrics`, to merge into a service's router.
pub fn ops_router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(OpsState { readiness, registry })
}

async fn health(State(state): State<OpsState>) -> Response {
    axum::Json(json!({ "service": state.readiness.service, "status": "ok" })).into_response()
}

async fn ready(State(state): State<OpsState>) -> Response {
    let (ready, report) = state.readiness.report().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The message [`bind`] logs, with the bound address in its `addr` field: with port 0 in `HTTP_ADDR`, this
/// line says which port the service got (test harnesses read it).
pub const LISTENING: &str = "listening for HTTP";

/// Binds `addr`, failing with a message that names the address, and logs the address bound ([`LISTENING`]).
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| anyhow::anyhow!("the address bound for {addr}: {e}"))?;
    tracing::info!(addr = %bound, "{LISTENING}");
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish.
///
/// Every connection is set `TCP_NODELAY`: an event stream writes each event as it happens, and with Nagle's
/// algorithm an event waits for the acknowledgement of the previous one, which a client on a kept-alive
/// connection delays (Linux: up to 40 ms). Measured with the benchmark's pooled client at one order in
/// flight: the terminal event of an order came 20 to 40 ms late.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(no_delay);
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Sets `TCP_NODELAY` on an accepted connection (see [`serve`]).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (mut server, _) = accepted.expect("accept");
        let _client = client.expect("connect");
        assert!(!server.nodelay().expect("read TCP_NODELAY"), "Nagle's algorithm is on by default");
        no_delay(&mut server);
        assert!(server.nodelay().expect("read TCP_NODELAY"));
    }
}
