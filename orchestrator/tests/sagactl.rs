//! `sagactl`, the real binary, against the orchestrator's API router served on an ephemeral port with
//! in-memory ports: an order placed over HTTP, then listing, showing, a dry run and a real action (applied
//! by the engine, as the partition owner would), in tables and in JSON; refusals (stale version, conflict,
//! unknown saga, invalid filter, bad tokens) with exit code 1; dead-letter commands against a server without
//! Kafka (503, exit code 4); development tokens that verify; an unreachable server (exit code 3), a silent
//! one (exit code 4) and usage errors (exit code 2). How dead-letter answers are rendered is tested beside
//! the code (`src/cli/render.rs`), on the server's own types.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use orchestrator::api::{AppState, api_router};
use orchestrator::auth::{Authenticator, DEV_AUDIENCE, DEV_ISSUER, KeySettings, Role};
use orchestrator::definitions::Definitions;
use orchestrator::store::SagaStore;
use proto_events::topics;
use serde_json::Value;
use uuid::Uuid;

use common::{CUSTOMER, Harness, JWT_SECRET, REPLY_PARTITIONS, STEP_TIMEOUT, order_json, token};

/// What a run of sagactl printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Checks that the run succeeded, and returns its stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "sagactl failed: {self:#?}");
        &self.stdout
    }

    /// Checks that the run failed with `code` and one line on stderr containing `text`, and nothing on stdout.
    fn failed(&self, code: i32, text: &str) {
        assert_eq!(self.code, Some(code), "exit code: {self:#?}");
        let error: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(error.len(), 1, "one error line: {self:#?}");
        assert!(error[0].contains(text), "expected {text:?} in {:?}", error[0]);
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:#?}");
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Runs sagactl with `args` and a clean environment: the test API's secret in `JWT_SECRET`, nothing else.
async fn sagactl(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sagactl"))
            .args(&args)
            .env_remove("SAGACTL_URL")
            .env_remove("SAGACTL_TOKEN")
            .env_remove("JWT_ISSUER")
            .env_remove("JWT_AUDIENCE")
            .env("USER", "ops-test")
            .env("JWT_SECRET", JWT_SECRET)
            .output()
            .expect("run sagactl")
    })
    .await
    .expect("the blocking task");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// The orchestrator's API on an ephemeral port over the harness's store, bus and clock, with a task that
/// applies what the API puts on `saga.reply` (starts, operator actions) through the engine, as the partition
/// owner's consumer would.
struct Served {
    h: Arc<Harness>,
    url: String,
    http: reqwest::Client,
}

impl Served {
    async fn start() -> Self {
        let h = Arc::new(Harness::new());
        let keys = KeySettings::Hs256 { secret: JWT_SECRET.to_owned() };
        let state = AppState {
            store: h.store.clone(),
            bus: h.bus.clone(),
            clock: h.clock.clone(),
            definitions: Arc::new(Definitions::builtin(STEP_TIMEOUT).expect("valid definitions")),
            customer_refs: h.refs.clone(),
            metrics: h.metrics.clone(),
            reply_partitions: REPLY_PARTITIONS,
            authenticator: Arc::new(Authenticator::new(&keys, DEV_ISSUER, DEV_AUDIENCE).expect("HS256")),
            live: Arc::new(orchestrator::live::LiveEvents::default()),
            handoff: None,
            dead_letters: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let url = format!("http://{}", listener.local_addr().expect("a local address"));
        tokio::spawn(async move { axum::serve(listener, api_router(state)).await });
        tokio::spawn(apply_replies(h.clone()));
        Self { h, url, http: reqwest::Client::new() }
    }

    /// Places [`order_json`] as the customer over HTTP and waits until its saga runs its first step.
    async fn place(&self) -> Uuid {
        let response = self
            .http
            .post(format!("{}/v1/orders", self.url))
            .bearer_auth(token(CUSTOMER, &[Role::Customer]))
            .header("Content-Type", "application/json")
            .body(order_json().to_string())
            .send()
            .await
            .expect("POST /v1/orders");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("a JSON answer");
        let id = Uuid::parse_str(body["order_id"].as_str().expect("an order_id")).expect("a UUID");
        self.wait_for_state(id, "RUNNING").await;
        id
    }

    async fn wait_for_state(&self, id: Uuid, state: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let saga = self.h.store.get(id).await.expect("the memory store").expect("the saga");
            // Reached, and flushed: the engine writes a transition first and empties its outbox after.
            if saga.state.phase.name() == state && !saga.has_pending() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga {id} never reached {state}: {saga:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The API's own answer to `GET path`, as an operator.
    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token("ops-alice", &[Role::Operator]))
            .send()
            .await
            .expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("a JSON answer")
    }

    /// sagactl against this server.
    async fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--url", self.url.as_str()];
        all.extend_from_slice(args);
        sagactl(&all).await
    }
}

/// Applies every message published to `saga.reply` through the engine; drops commands and events.
async fn apply_replies(h: Arc<Harness>) {
    loop {
        for (topic, message) in h.bus.take() {
            if topic == topics::REPLY {
                h.handle(&message).await.expect("the engine applies the message");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Against a served API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_print_readable_tables_and_the_servers_json_unchanged() {
    let s = Served::start().await;
    let id = s.place().await;
    let id_text = id.to_string();

    let list = s.run(&["list"]).await;
    let table = list.ok();
    let header = table.lines().next().expect("a header");
    for column in ["SAGA ID", "STATE", "STATUS", "STEP", "ATTEMPT", "VERSION", "IN STATE", "REASON"] {
        assert!(header.contains(column), "{column} in {header:?}");
    }
    let row = table.lines().find(|l| l.starts_with(&id_text)).expect("a row for the saga");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, [id_text.as_str(), "RUNNING", "PENDING", "reserve_stock", "1", "2", "0s", "-"]);
    assert!(table.ends_with("1 saga\n"), "{table}");
    let notices = list.stderr.matches("using a development operator token for \"ops-test\"").count();
    assert_eq!(notices, 1, "the minted token is announced once: {list:#?}");
    assert!(list.stderr.contains("signed with the secret in JWT_SECRET"), "{list:#?}");

    let list_json = s.run(&["list", "--output", "json"]).await.json();
    assert_eq!(list_json, s.get("/admin/sagas?limit=50").await, "the server's JSON, unchanged");
    assert_eq!(list_json["sagas"][0]["saga_id"], id_text.as_str());

    let show = s.run(&["show", &id_text]).await;
    let text = show.ok();
    for expected in [
        format!("saga         {id}"),
        "definition   order_fulfilment v1".to_owned(),
        "state        RUNNING for 0s".to_owned(),
        "step         reserve_stock, attempt 1".to_owned(),
        "version      2".to_owned(),
        "order        2 × SKU-1 at 12.50; total 25.00 EUR".to_owned(),
        "timeline (2 entries)".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    }
    let timeline: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("SEQ")).collect();
    assert_eq!(timeline.len(), 3, "a header and two entries:\n{text}");
    for column in ["SEQ", "TIME (UTC)", "KIND", "FROM → TO", "STEP/ATTEMPT", "RECEIVED", "SENT", "NOTE"] {
        assert!(timeline[0].contains(column), "{column} in {:?}", timeline[0]);
    }
    assert!(timeline[1].starts_with("1 ") && timeline[1].contains("created"), "{}", timeline[1]);
    let started = timeline[2];
    assert!(started.starts_with("2 ") && started.contains("transition"), "{started}");
    assert!(started.contains("STARTED → RUNNING") && started.contains("reserve_stock/1"), "{started}");
    assert!(started.contains("saga.start saga.reply/"), "received message and where from: {started}");
    assert!(started.contains("inventory.reserve"), "sent: {started}");

    let show_json = s.run(&["show", &id_text, "-o", "json"]).await.json();
    assert_eq!(show_json, s.get(&format!("/admin/sagas/{id}")).await, "the server's JSON, unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_plan_and_changes_nothing() {
    let s = Served::start().await;
    let id = s.place().await;
    let id_text = id.to_string();
    let before = s.h.record(id).await;

    let plan = s.run(&["retry", &id_text, "--reason", "the reservation is stuck", "--dry-run"]).await;
    let text = plan.ok();
    assert!(
        text.contains(&format!("dry run: retry would take saga {id} from RUNNING to RUNNING (status PENDING)")),
        "{text}"
    );
    assert!(
        text.contains("it would send: inventory.reserve to saga.cmd.inventory (step reserve_stock, attempt 2)"),
        "{text}"
    );
    assert!(text.contains("nothing was changed; the saga is at version 2"), "{text}");

    let plan = s.run(&["compensate", &id_text, "--reason", "customer called", "--dry-run", "-o", "json"]).await.json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!((plan["from"].as_str(), plan["to"].as_str()), (Some("RUNNING"), Some("COMPENSATING")));
    assert_eq!(plan["commands"][0]["command"], "inventory.release");

    assert_eq!(s.h.record(id).await, before, "a dry run changes nothing");
    assert_eq!(s.h.store.timeline(id).await.expect("the timeline").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_goes_through_the_sagas_partition_and_prints_what_it_did() {
    let s = Served::start().await;
    let id = s.place().await;
    let id_text = id.to_string();

    let done = s.run(&["--as", "ops-bob", "compensate", &id_text, "--reason", "customer called"]).await;
    let text = done.ok();
    assert!(
        text.contains(&format!(
            "compensate: saga {id} went from RUNNING to COMPENSATING (status PENDING), now at version 3"
        )),
        "{text}"
    );
    assert!(text.contains("sent: inventory.release to saga.cmd.inventory (step reserve_stock, attempt 1)"), "{text}");
    assert!(done.stderr.contains("for \"ops-bob\""), "{done:#?}");

    let saga = s.h.record(id).await;
    assert_eq!((saga.state.phase.name(), saga.version), ("COMPENSATING", 3));
    let reason = saga.state.reason.expect("a reason");
    assert!(reason.contains("customer called") && reason.contains("ops-bob"), "{reason}");

    // The version sagactl read first is stale now.
    let stale = s.run(&["retry", &id_text, "--reason", "once more", "--version", "2"]).await;
    stale.failed(1, &format!("the saga changed since version 2; run `sagactl show {id}` and try again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_one_line_with_exit_code_1() {
    let s = Served::start().await;
    let id = s.place().await;
    let id_text = id.to_string();

    let stale = s.run(&["retry", &id_text, "--reason", "the reservation is stuck", "--version", "7"]).await;
    stale.failed(1, &format!("the saga changed since version 7; run `sagactl show {id}` and try again"));

    let conflict = s.run(&["resolve", &id_text, "--outcome", "completed", "--reason", "shipped by hand"]).await;
    conflict.failed(1, "conflict: only a FAILED saga can be resolved; this one is RUNNING");

    let unknown = Uuid::now_v7();
    s.run(&["show", &unknown.to_string()]).await.failed(1, &format!("not found: no saga {unknown}"));

    let invalid = s.run(&["list", "--state", "sleeping"]).await;
    invalid.failed(1, "Invalid request (400): the request breaks validation rules — state: unknown state");

    let short = s.run(&["retry", &id_text, "--reason", "x", "--dry-run"]).await;
    short.failed(1, "reason: ");

    s.run(&["--token", "not.a.token", "list"]).await.failed(1, "the token was refused: the token is malformed");

    let minted = s.run(&["--jwt-secret", "another-secret-of-at-least-32-characters", "list"]).await;
    minted.failed(1, "the token was refused: the token's signature does not verify (sagactl minted it with");

    let customer = token(CUSTOMER, &[Role::Customer]);
    s.run(&["--token", &customer, "list"]).await.failed(1, "forbidden: this needs the role operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_all_follows_every_page() {
    let s = Served::start().await;
    let mut ids = [s.place().await, s.place().await, s.place().await];
    ids.sort();

    let one_page = s.run(&["list", "--limit", "1"]).await;
    let text = one_page.ok();
    assert!(text.contains(&format!("1 saga; more after this page: add --after {}, or --all", ids[0])), "{text}");

    let all = s.run(&["list", "--limit", "1", "--all"]).await;
    let rows: Vec<&str> = all.ok().lines().skip(1).filter(|l| !l.ends_with("sagas")).collect();
    let listed: Vec<String> = rows.iter().map(|r| r.split_whitespace().next().unwrap_or_default().to_owned()).collect();
    assert_eq!(listed, ids.iter().map(Uuid::to_string).collect::<Vec<_>>(), "{all:#?}");
    assert!(all.stdout.ends_with("3 sagas\n"), "{all:#?}");

    let json = s.run(&["list", "--limit", "2", "--all", "-o", "json"]).await.json();
    assert_eq!(json["sagas"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["next"], Value::Null);

    let filtered = s.run(&["list", "--state", "completed"]).await;
    assert_eq!(filtered.ok(), "no sagas match\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_commands_pass_on_what_the_server_says() {
    // The in-memory harness has no Kafka to read dead letters from: the routes answer 503.
    let s = Served::start().await;
    let list = s.run(&["dlq", "list", "--topic", "saga.cmd.payment.dlq", "--limit", "10"]).await;
    list.failed(4, "the orchestrator is unavailable (503): dead-letter operations are not set up on this instance");

    let not_a_dlq = s.run(&["dlq", "replay", "--topic", "saga.cmd.payment", "--all", "--reason", "fixed"]).await;
    not_a_dlq
        .failed(1, "Invalid request (400): the request breaks validation rules — topic: unknown dead-letter topic");

    let replay = ["dlq", "replay", "--topic", "saga.cmd.payment.dlq", "--message", "0:5", "--reason", "fixed"];
    s.run(&replay).await.failed(4, "(503): dead-letter operations are not set up on this instance");
}

// ---------------------------------------------------------------------------------------------------------
// Tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_a_jwt_that_verifies_with_the_same_secret_and_works_against_the_api() {
    let secret = "a-secret-only-this-test-knows-0123456789";
    let run = sagactl(&["token", "--role", "customer", "--sub", "alice", "--ttl", "2h", "--secret", secret]).await;
    let jwt = run.ok().trim_end().to_owned();
    assert_eq!(run.stdout, format!("{jwt}\n"), "only the token on stdout");
    assert!(run.stderr.is_empty(), "{run:#?}");

    let verify = |secret: &str| {
        let keys = KeySettings::Hs256 { secret: secret.to_owned() };
        Authenticator::new(&keys, DEV_ISSUER, DEV_AUDIENCE).expect("HS256").verify(&jwt)
    };
    let caller = verify(secret).expect("verifies with the same secret");
    assert_eq!(caller.subject, "alice");
    assert!(caller.is(Role::Customer) && !caller.is(Role::Operator));
    assert!(verify(JWT_SECRET).is_err(), "not with another secret");

    let json = sagactl(&["token", "--sub", "ops-carol", "--ttl", "90s", "-o", "json"]).await.json();
    assert_eq!(json["claims"]["roles"], serde_json::json!(["operator"]));
    let (exp, iat) = (json["claims"]["exp"].as_u64(), json["claims"]["iat"].as_u64());
    assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(90));
    let operator = json["token"].as_str().expect("a token").to_owned();
    let keys = KeySettings::Hs256 { secret: JWT_SECRET.to_owned() };
    let caller = Authenticator::new(&keys, DEV_ISSUER, DEV_AUDIENCE).expect("HS256").verify(&operator);
    assert_eq!(caller.expect("signed with JWT_SECRET from the environment").subject, "ops-carol");

    let s = Served::start().await;
    let listed = s.run(&["--token", &operator, "list"]).await;
    assert_eq!(listed.ok(), "no sagas match\n");
    assert!(listed.stderr.is_empty(), "no notice with a given token: {listed:#?}");
}

// ---------------------------------------------------------------------------------------------------------
// No server, a silent server, a bad command line

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_orchestrator_exits_with_3_and_says_so() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let run = sagactl(&["--url", &url, "list"]).await;
    run.failed(3, &format!("cannot reach the orchestrator at {url}: connection refused — is it running? (make up)"));
    let run = sagactl(&["--url", &url, "retry", &Uuid::now_v7().to_string(), "--reason", "stuck"]).await;
    assert_eq!(run.code, Some(3), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_in_time_exits_with_4() {
    // Connections are accepted by the kernel but never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let run = sagactl(&["--url", &url, "--timeout", "300ms", "show", &Uuid::now_v7().to_string()]).await;
    run.failed(4, &format!("no answer from the orchestrator at {url} within 300ms"));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_with_2() {
    let neither = sagactl(&["dlq", "replay", "--topic", "saga.cmd.payment.dlq", "--reason", "fixed"]).await;
    assert_eq!(neither.code, Some(2), "{neither:#?}");
    let both = ["dlq", "replay", "--topic", "t.dlq", "--message", "0:5", "--all", "--reason", "fixed"];
    assert_eq!(sagactl(&both).await.code, Some(2));
    assert_eq!(sagactl(&["dlq", "replay", "--topic", "t", "--message", "5", "--reason", "r"]).await.code, Some(2));
    assert_eq!(sagactl(&["resolve", "some-id", "--reason", "r"]).await.code, Some(2), "--outcome is required");
    let https = sagactl(&["--url", "https://orchestrator.example", "list"]).await;
    https.failed(2, "sagactl speaks plain HTTP only");
    let help = sagactl(&["--help"]).await;
    assert!(help.ok().contains("Exit codes:\n  0  success"), "{help:#?}");
}
