//! A whole saga system for one test: the real orchestrator and participant binaries, on the real Kafka
//! broker and database, isolated from every other test by a topic prefix, consumer groups and databases of
//! its own. Processes are killed when the stack is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::Database;
use platform::kafka::KafkaSettings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{eventually, repo_dir, unique};

/// The four services.
pub const SERVICES: [&str; 4] = ["orchestrator", "inventory", "payment", "shipping"];

/// The directory of the workspace's debug binaries (`SAGA_BIN_DIR` overrides it).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("SAGA_BIN_DIR").map_or_else(|| repo_dir().join("target/debug"), PathBuf::from)
}

/// A token of the development issuer for `subject` with the operator role (the services run with the
/// built-in development secret).
pub fn operator_token(subject: &str) -> String {
    use orchestrator::auth::{DEV_AUDIENCE, DEV_ISSUER, DEV_JWT_SECRET, Role, claims, mint_hs256};
    mint_hs256(DEV_JWT_SECRET, &claims(subject, &[Role::Operator], DEV_ISSUER, DEV_AUDIENCE, 3600))
}

/// An HTTP client that sends `token` as its bearer token.
pub fn http_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {token}").parse().expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder().timeout(Duration::from_secs(10)).default_headers(headers).build().expect("HTTP client")
}

/// A free TCP port on 127.0.0.1 (bound and released, so another process may take it before the service
/// binds it: only for a port that must be known before the start, see [`Service::reserve_port`]).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One service process.
#[derive(Debug)]
pub struct Service {
    /// The binary's name.
    pub name: &'static str,
    /// Its HTTP port: 0 until the first start, unless reserved ([`Service::reserve_port`]). The first start
    /// binds port 0 and the port comes from the service's log, so no other process can take it in between;
    /// restarts bind the same port again.
    pub port: u16,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
    /// The length of the log when the process was spawned: its own lines follow.
    log_start: u64,
    /// A command the binary runs under, such as `ip netns exec <ns>` (empty: run it directly).
    wrapper: Vec<String>,
}

impl Service {
    fn new(name: &'static str, env: BTreeMap<String, String>, log: PathBuf) -> Self {
        let mut env = env;
        env.insert("HTTP_ADDR".into(), "127.0.0.1:0".into());
        Self { name, port: 0, env, log, child: None, log_start: 0, wrapper: Vec::new() }
    }

    /// Chooses the HTTP port before the first start, for a test that needs it earlier (a small race with
    /// other processes remains: the port is free when chosen, not reserved).
    pub fn reserve_port(&mut self) -> u16 {
        if self.port == 0 {
            self.port = free_port();
            self.env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{}", self.port));
        }
        self.port
    }

    /// Runs the binary under `wrapper` from the next start on (for example `["ip", "netns", "exec", ns]`,
    /// which execs it, so the process id is still the service's).
    pub fn run_under(&mut self, wrapper: Vec<String>) {
        self.wrapper = wrapper;
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: String) {
        self.env.insert(key.to_owned(), value);
    }

    /// Starts the process (its output appended to its log file).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let binary = bin_dir().join(self.name);
        assert!(binary.exists(), "{} is missing: build it first (`cargo build --workspace`)", binary.display());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        self.log_start = log.metadata().expect("the log's length").len();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let child = command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        self.child = Some(child);
    }

    /// Whether the process was started and has not exited (a service that dies by itself is a bug).
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// How the started process ended, if it has.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        assert_ne!(self.port, 0, "{} has no port before its first start", self.name);
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until the process has bound its HTTP port (taking the port from its log) and `/ready` answers
    /// 200. Panics with the end of its log if it exits meanwhile.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) {
        let name = self.name;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut bound = None;
        loop {
            if let Some(status) = self.exit_status() {
                panic!("{name} exited with {status} during start-up:\n{}", self.log_tail(40));
            }
            if bound.is_none() {
                bound = self.bound_port();
                if let Some(port) = bound {
                    assert!(self.port == 0 || self.port == port, "{name} bound {port}, expected {}", self.port);
                    if self.port == 0 {
                        // Restarts bind the same port.
                        self.port = port;
                        self.env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
                    }
                }
            }
            if bound.is_some() && http.get(self.url("/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            let what = if bound.is_some() { "ready" } else { "listening" };
            assert!(tokio::time::Instant::now() < deadline, "{name} not {what} within 60 s:\n{}", self.log_tail(40));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port in this process's "listening" log line, once written.
    fn bound_port(&self) -> Option<u16> {
        let log = std::fs::read(&self.log).ok()?;
        let own = log.get(usize::try_from(self.log_start).ok()?..)?;
        String::from_utf8_lossy(own).lines().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["message"] == platform::http::LISTENING).then_some(())?;
            line["addr"].as_str()?.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        })
    }

    /// The last `lines` lines of the log, with its path, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("(last {lines} lines of {})\n{tail}", self.log.display())
    }

    /// Panics, with the end of its log, if the process was started and has exited by itself.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!("{} exited with {status}:\n{}", self.name, self.log_tail(40));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to 15 s for a graceful exit (SIGKILL after that).
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), "TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while child.try_wait().ok().flatten().is_none() {
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 15 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process stays alive but does nothing.
    pub fn pause(&self) {
        signal(self.pid().expect("running"), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid().expect("running"), "CONT");
    }

    /// Starts the process again and waits until it is ready.
    pub async fn start(&mut self, http: &reqwest::Client) {
        self.spawn();
        self.wait_ready(http).await;
    }

    /// The log file.
    pub fn log(&self) -> &PathBuf {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused process must run again to die; it may be gone already, which is fine here.
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
        self.kill();
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// How to configure a stack.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra environment for the orchestrator (for example `SAGA_STEP_TIMEOUT_MS`).
    pub orchestrator_env: Vec<(&'static str, String)>,
    /// Services not to start at first (they can be started later with [`Service::start`]).
    pub held_back: Vec<&'static str>,
    /// Extra environment for every service (for example `OTEL_EXPORTER_OTLP_ENDPOINT`); the orchestrator's
    /// own `orchestrator_env` wins over it.
    pub extra_env: Vec<(&'static str, String)>,
}

/// The system under test.
#[derive(Debug)]
pub struct Stack {
    /// The stack's unique id (topic prefix, group and database names derive from it).
    pub id: String,
    /// The orchestrator.
    pub orchestrator: Service,
    /// The inventory service.
    pub inventory: Service,
    /// The payment service.
    pub payment: Service,
    /// The shipping service.
    pub shipping: Service,
    /// Kafka settings with the stack's topic prefix.
    pub kafka: KafkaSettings,
    /// An HTTP client.
    pub http: reqwest::Client,
    mongo: mongodb::Client,
}

impl Stack {
    /// Starts the four services for `test` and waits until they are ready.
    pub async fn start(test: &str, options: Options) -> Self {
        let id = unique(test).replace('-', "_");
        let kafka = {
            let mut settings = KafkaSettings::from_env().expect("Kafka settings");
            settings.topic_prefix = format!("e2e.{id}.");
            settings
        };
        let mongo_settings = platform::mongo::MongoSettings::from_env("MONGODB_DATABASE", "unused");
        let logs = repo_dir().join("target/e2e-logs").join(&id);
        std::fs::create_dir_all(&logs).expect("create the log directory");
        let service = |name: &'static str, extra: &[(&'static str, String)]| {
            let mut env = BTreeMap::new();
            env.insert("KAFKA_BOOTSTRAP_SERVERS".to_owned(), kafka.bootstrap_servers.clone());
            env.insert("KAFKA_TOPIC_PREFIX".to_owned(), kafka.topic_prefix.clone());
            env.insert("KAFKA_GROUP_ID".to_owned(), format!("e2e.{id}.{name}"));
            env.insert("MONGODB_URI".to_owned(), mongo_settings.uri.clone());
            env.insert("MONGODB_DATABASE".to_owned(), format!("{id}_{name}"));
            env.insert("LOG_LEVEL".to_owned(), "info,rdkafka=warn,librdkafka=warn".to_owned());
            for (key, value) in options.extra_env.iter().chain(extra) {
                env.insert((*key).to_owned(), value.clone());
            }
            Service::new(name, env, logs.join(format!("{name}.log")))
        };
        let mut stack = Self {
            orchestrator: service("orchestrator", &options.orchestrator_env),
            inventory: service("inventory", &[]),
            payment: service("payment", &[]),
            shipping: service("shipping", &[]),
            http: http_client(&operator_token("e2e-operator")),
            mongo: mongo_settings.client("e2e-tests").await.expect("database client"),
            kafka,
            id,
        };
        for name in SERVICES {
            if options.held_back.contains(&name) {
                // Known before its start: a test may register or call it earlier.
                stack.service_mut(name).reserve_port();
            } else {
                stack.service_mut(name).spawn();
            }
        }
        for name in SERVICES {
            if !options.held_back.contains(&name) {
                let http = stack.http.clone();
                stack.service_mut(name).wait_ready(&http).await;
            }
        }
        stack
    }

    /// The service called `name`.
    pub fn service_mut(&mut self, name: &str) -> &mut Service {
        match name {
            "orchestrator" => &mut self.orchestrator,
            "inventory" => &mut self.inventory,
            "payment" => &mut self.payment,
            "shipping" => &mut self.shipping,
            other => panic!("no service {other}"),
        }
    }

    /// Starts a second orchestrator instance (same group, topics and database, its own port and log) and
    /// waits until it is ready.
    pub async fn start_second_orchestrator(&self) -> Service {
        let mut env = self.orchestrator.env.clone();
        env.remove("HTTP_ADDR");
        let log = self.orchestrator.log.with_file_name("orchestrator-2.log");
        let mut second = Service::new("orchestrator", env, log);
        second.start(&self.http).await;
        second
    }

    /// Asserts that no service's log contains any of `needles` (personal data must never be logged).
    pub fn assert_logs_free_of(&self, needles: &[&str]) {
        for service in [&self.orchestrator, &self.inventory, &self.payment, &self.shipping] {
            let log = std::fs::read_to_string(service.log()).unwrap_or_default();
            assert!(!log.is_empty(), "{} has an empty log: is logging on?", service.name);
            for needle in needles {
                assert!(!log.contains(needle), "{} logged {needle:?} ({})", service.name, service.log().display());
            }
        }
    }

    /// The database of service `name`.
    pub fn database(&self, name: &str) -> Database {
        self.mongo.database(&format!("{}_{name}", self.id))
    }

    /// Panics, with the end of its log, if a started service has exited by itself (a test stops a service
    /// only through [`Service::kill`] or [`Service::terminate`]).
    pub fn assert_running(&mut self) {
        for name in SERVICES {
            self.service_mut(name).assert_running();
        }
    }

    /// Checks that no service exited by itself ([`Stack::assert_running`]), then drops the stack's
    /// databases (call at the end of a passing test; a failing one keeps them).
    pub async fn cleanup(mut self) {
        self.assert_running();
        for name in SERVICES {
            let _ = self.database(name).drop().await;
        }
    }

    /// A valid order body for `customer_id` with `items` as (SKU, quantity).
    pub fn order(customer_id: &str, items: &[(&str, u32)]) -> Value {
        let items: Vec<Value> = items
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity, "unit_price_cents": 1250}))
            .collect();
        json!({
            "customer_id": customer_id,
            "email": "ada@example.com",
            "items": items,
            "currency": "EUR",
            "payment_token": "tok_visa",
            "shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
        })
    }

    /// Places `order`; returns its id.
    pub async fn place(&self, order: &Value) -> Uuid {
        let response =
            self.http.post(self.orchestrator.url("/v1/orders")).json(order).send().await.expect("POST order");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status.as_u16(), 202, "placing an order: {body}");
        Uuid::parse_str(body["order_id"].as_str().expect("order_id")).expect("a UUID")
    }

    /// The order as the API shows it.
    pub async fn get_order(&self, order_id: Uuid) -> Option<Value> {
        let url = self.orchestrator.url(&format!("/v1/orders/{order_id}"));
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until the order has a terminal status and returns it.
    pub async fn wait_terminal(&self, order_id: Uuid, timeout: Duration) -> Value {
        let what = format!("order {order_id} to finish (logs: {})", self.orchestrator.log().display());
        eventually(&what, timeout, || async { self.get_order(order_id).await.filter(|o| o["status"] != "PENDING") })
            .await
    }

    /// Waits until the order's saga is in `state` (and, if given, at step `step`).
    pub async fn wait_state(&self, order_id: Uuid, state: &str, step: Option<&str>, timeout: Duration) -> Value {
        let what = format!("order {order_id} to reach {state} {step:?}");
        eventually(&what, timeout, || async {
            self.get_order(order_id).await.filter(|o| o["state"] == state && step.is_none_or(|s| o["step"] == s))
        })
        .await
    }

    /// Sets the available stock of `sku` through the inventory API.
    pub async fn set_stock(&self, sku: &str, available: i64) {
        let url = self.inventory.url(&format!("/v1/stock/{sku}"));
        let response = self.http.put(url).json(&json!({ "available": available })).send().await.expect("PUT stock");
        assert!(response.status().is_success(), "setting stock of {sku}: {}", response.status());
    }

    /// The available stock of `sku` through the inventory API.
    pub async fn stock(&self, sku: &str) -> i64 {
        let url = self.inventory.url(&format!("/v1/stock/{sku}"));
        let body: Value = self.http.get(url).send().await.expect("GET stock").json().await.expect("JSON");
        body["available"].as_i64().unwrap_or_else(|| panic!("stock of {sku}: {body}"))
    }

    /// The payment record of `order_id`, if any.
    pub async fn payment(&self, order_id: Uuid) -> Option<Value> {
        self.get_json(&self.payment, &format!("/v1/payments/{order_id}")).await
    }

    /// The shipment record of `order_id`, if any.
    pub async fn shipment(&self, order_id: Uuid) -> Option<Value> {
        self.get_json(&self.shipping, &format!("/v1/shipments/{order_id}")).await
    }

    async fn get_json(&self, service: &Service, path: &str) -> Option<Value> {
        let response = self.http.get(service.url(path)).send().await.expect("GET");
        if response.status().as_u16() == 404 {
            return None;
        }
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        Some(response.json().await.expect("JSON"))
    }
}
