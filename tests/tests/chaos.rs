//! The chaos suite: the real binaries on the real Kafka broker and database, each scenario under a load of
//! its own ([`ORDERS`] orders over scarce stock, with declined cards and unserved countries; 600 orders in
//! all), with faults injected while the orders flow:
//!
//! 1. SIGKILL and restart of each participant and of the orchestrator in turn, twice over;
//! 2. a restart of the Kafka broker;
//! 3. a restart of the database;
//! 4. a participant stopped (SIGSTOP) for longer than the step timeout, then resumed: its replies arrive late
//!    and are fenced;
//! 5. two orchestrator instances, one killed mid-run: the survivor takes over its partitions;
//! 6. an orchestrator instance cut off from Kafka for longer than its consumer session timeout (a network
//!    namespace whose veth goes down; see that test for why).
//!
//! After each, the same invariants ([`tests::chaos::check_invariants`]), checked through the participants'
//! own databases and the orchestrator's API, and a summary line on stderr. Scenarios 2 and 3 restart the
//! shared broker and database, so `make test` runs this file alone, after the other tests, one test at a
//! time; the tests also take a lock of their own so that they never overlap. Every wait has a deadline;
//! every loop is bounded in count and time. Sleeps are only deliberate fault durations, stated as such.

use std::path::Path;
use std::time::{Duration, Instant};

use tests::chaos::{HOST_IP, Mix, NS_IP, Netns, Outcomes, Placed, Placer, assignments, check_invariants};
use tests::events::EventWatch;
use tests::stack::{Options, Stack};

/// Orders per scenario.
const ORDERS: usize = 100;
/// One order placed every this long (so that a scenario's load lasts about 12 s, and faults hit sagas at
/// every stage).
const PACE: Duration = Duration::from_millis(120);
/// A short consumer session for every service, so that the group evicts a dead or cut-off member quickly.
const SESSION_TIMEOUT_MS: u64 = 4000;
/// How long a scenario waits for a milestone of its load.
const MILESTONE: Duration = Duration::from_secs(90);
/// How long the sagas of a scenario may take to finish once every order is accepted.
const FINISH: Duration = Duration::from_secs(240);

/// The scenarios never overlap, whatever `--test-threads` says: two of them restart shared infrastructure.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(orchestrator_env: Vec<(&'static str, String)>, held_back: Vec<&'static str>) -> Options {
    let session = format!("session.timeout.ms={SESSION_TIMEOUT_MS},heartbeat.interval.ms=500");
    Options { orchestrator_env, held_back, extra_env: vec![("KAFKA_PROPERTIES", session)] }
}

fn mix(seed: u64) -> Mix {
    Mix { orders: ORDERS, skus: 20, units_per_sku: 12, seed }
}

/// A scenario under way: its stack, its load and the faults injected so far.
struct Scenario {
    name: &'static str,
    started: Instant,
    mix: Mix,
    stack: Stack,
    events: EventWatch,
    faults: Vec<String>,
}

impl Scenario {
    async fn start(name: &'static str, seed: u64, options: Options) -> Self {
        let started = Instant::now();
        let stack = Stack::start(name, options).await;
        Self::with(name, seed, stack, started).await
    }

    async fn with(name: &'static str, seed: u64, stack: Stack, started: Instant) -> Self {
        let mix = mix(seed);
        mix.stock(&stack).await;
        let events = EventWatch::start(&stack.kafka);
        Self { name, started, mix, stack, events, faults: Vec::new() }
    }

    /// Starts the load on the orchestrators at `apis`.
    fn load(&self, apis: Vec<String>) -> Placer {
        Placer::start(self.stack.http.clone(), apis, self.mix.bodies(), PACE)
    }

    /// Waits for every order to be accepted and every saga to finish.
    async fn settle(&self, placer: Placer) -> Vec<Placed> {
        let placed: Vec<Placed> = placer.finish(MILESTONE * 2).await;
        let ids: Vec<_> = placed.iter().map(|p| p.id).collect();
        self.events.wait_terminal(&ids, FINISH).await;
        placed
    }

    /// Asserts that the stack's services are running, but for those in `gone` (none may die by itself).
    fn assert_alive(&mut self, gone: &[&str]) {
        for name in ["orchestrator", "inventory", "payment", "shipping"].into_iter().filter(|n| !gone.contains(n)) {
            let service = self.stack.service_mut(name);
            assert!(service.running(), "{name} died by itself; see {}", service.log().display());
        }
    }

    /// Checks the invariants through the orchestrator at `api`, prints the summary and drops the stack's
    /// databases.
    async fn finish(self, placed: &[Placed], api: &str) -> Outcomes {
        let initial = self.mix.initial_stock();
        let outcomes = check_invariants(self.name, &self.stack, api, placed, &initial).await;
        let summary = tests::chaos::summary(self.name, placed.len(), outcomes, &self.faults, self.started.elapsed());
        eprintln!("{summary}");
        self.stack.cleanup().await;
        outcomes
    }
}

/// The participants, in the order they are killed.
const PARTICIPANTS: [&str; 3] = ["inventory", "payment", "shipping"];

/// (1) Each participant and the orchestrator in turn is killed with SIGKILL while orders flow, and started
/// again at once (it is down for as long as its start takes, and its consumer group waits for the dead
/// member's session to expire); twice over, eight faults in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_killed_and_restarted_repeatedly_while_orders_flow() {
    let _serial = SERIAL.lock().await;
    let mut run = Scenario::start("chaos-kill", 1, options(Vec::new(), Vec::new())).await;
    let placer = run.load(vec![run.stack.orchestrator.url("")]);
    let victims: Vec<&str> = PARTICIPANTS.iter().copied().chain(["orchestrator"]).collect();
    let total = 2 * victims.len();
    for (k, name) in (1..).zip(victims.iter().cycle().take(total)) {
        placer.wait_accepted(ORDERS * k / (total + 1), MILESTONE).await;
        let http = run.stack.http.clone();
        let service = run.stack.service_mut(name);
        service.kill();
        service.start(&http).await;
        run.faults.push(format!("SIGKILL+restart {name}"));
    }
    let placed = run.settle(placer).await;
    run.assert_alive(&[]);
    let api = run.stack.orchestrator.url("");
    run.finish(&placed, &api).await;
}

/// Runs `command` (program and arguments) to completion within `timeout`; returns how long it took.
async fn run_ops(command: &[String], timeout: Duration) -> Duration {
    let started = Instant::now();
    let status = tokio::time::timeout(timeout, tokio::process::Command::new(&command[0]).args(&command[1..]).status())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed with {status}");
    started.elapsed()
}

fn ops_script(script: &str, verb: &str) -> Vec<String> {
    vec![tests::repo_dir().join(script).display().to_string(), verb.to_owned()]
}

/// (2) The Kafka broker is restarted (`ops/kafka/kafka.sh restart`: SIGTERM, then a fresh start) a third of
/// the way into the load: publications and consumers stall, producers retry, groups rejoin. Skipped (NOT RUN)
/// when the broker is not the one that script runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_broker_restarts_while_orders_flow() {
    let _serial = SERIAL.lock().await;
    let status = std::process::Command::new(&ops_script("ops/kafka/kafka.sh", "status")[0]).arg("status").output();
    if !status.is_ok_and(|s| s.status.success()) {
        eprintln!("NOT RUN: chaos-kafka needs the broker that ops/kafka/kafka.sh runs (it restarts it)");
        return;
    }
    let mut run = Scenario::start("chaos-kafka", 2, options(Vec::new(), Vec::new())).await;
    let placer = run.load(vec![run.stack.orchestrator.url("")]);
    placer.wait_accepted(ORDERS / 3, MILESTONE).await;
    let took = run_ops(&ops_script("ops/kafka/kafka.sh", "restart"), Duration::from_secs(240)).await;
    run.faults.push(format!("Kafka broker restart ({:.1} s down)", took.as_secs_f64()));
    let placed = run.settle(placer).await;
    run.assert_alive(&[]);
    let api = run.stack.orchestrator.url("");
    run.finish(&placed, &api).await;
}

/// (3) The database is restarted (`ops/mongo/mongo.sh restart`) a third of the way into the load: every
/// service's writes fail for a while and are retried. With an external database (`MONGODB_URI`), the test
/// runs `DB_RESTART_CMD` if set, and is skipped (NOT RUN) otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarts_while_orders_flow() {
    let _serial = SERIAL.lock().await;
    let restart = if std::env::var("MONGODB_URI").is_ok_and(|v| !v.is_empty()) {
        let Ok(command) = std::env::var("DB_RESTART_CMD") else {
            eprintln!("NOT RUN: chaos-db: MONGODB_URI names an external database and DB_RESTART_CMD is not set");
            return;
        };
        command.split_whitespace().map(str::to_owned).collect()
    } else {
        ops_script("ops/mongo/mongo.sh", "restart")
    };
    let mut run = Scenario::start("chaos-db", 3, options(Vec::new(), Vec::new())).await;
    let placer = run.load(vec![run.stack.orchestrator.url("")]);
    placer.wait_accepted(ORDERS / 3, MILESTONE).await;
    let took = run_ops(&restart, Duration::from_secs(180)).await;
    run.faults.push(format!("database restart ({:.1} s down)", took.as_secs_f64()));
    let placed = run.settle(placer).await;
    run.assert_alive(&[]);
    let api = run.stack.orchestrator.url("");
    run.finish(&placed, &api).await;
}

/// The step timeout of scenario 4.
const SHORT_STEP_TIMEOUT_MS: u64 = 2000;
/// How long the payment service stays stopped in scenario 4: longer than three attempts of a step with its
/// back-off (2 s + 0.2 s + 2 s + 0.4 s + 2 s), so that sagas time out, retry, give up and compensate while
/// their charges wait, unread, in Kafka; and longer than the consumer session, so the group evicts it.
const PAUSE: Duration = Duration::from_secs(8);

/// (4) The payment service is stopped (SIGSTOP) for [`PAUSE`], longer than its step timeout: the charges of
/// the sagas in flight time out, are retried and given up (the charge is then refunded); once resumed
/// (SIGCONT), it works through the queued charges and refunds, and its late replies are fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_paused_past_its_step_timeout_answers_late_and_is_fenced() {
    let _serial = SERIAL.lock().await;
    let timeout = vec![("SAGA_STEP_TIMEOUT_MS", SHORT_STEP_TIMEOUT_MS.to_string())];
    let mut run = Scenario::start("chaos-pause", 4, options(timeout, Vec::new())).await;
    let placer = run.load(vec![run.stack.orchestrator.url("")]);
    placer.wait_accepted(ORDERS / 3, MILESTONE).await;
    run.stack.payment.pause();
    // The fault itself: the process stays stopped this long.
    tokio::time::sleep(PAUSE).await;
    run.stack.payment.resume();
    run.faults.push(format!("SIGSTOP payment for {} s (step timeout {SHORT_STEP_TIMEOUT_MS} ms)", PAUSE.as_secs()));
    let placed = run.settle(placer).await;
    run.assert_alive(&[]);
    let api = run.stack.orchestrator.url("");
    let outcomes = run.finish(&placed, &api).await;
    assert!(outcomes.fenced > 0, "the late replies of the stopped payment service were fenced: {outcomes}");
}

/// Waits until the orchestrator logging to `log` has been assigned partitions more than `before` times.
async fn wait_assigned(log: &Path, before: usize, timeout: Duration) {
    let what = format!("a partition assignment in {}", log.display());
    tests::eventually(&what, timeout, || async { (assignments(log) > before).then_some(()) }).await;
}

/// (5) Two orchestrator instances split the partitions of `saga.reply`; a third of the way into the load,
/// the first is killed with SIGKILL and not restarted. Once its consumer session expires, the group gives
/// its partitions to the survivor, which recovers their sagas (pending outboxes, deadlines) and finishes
/// them. Orders go to either instance, whichever answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surviving_orchestrator_takes_over_the_partitions_of_a_killed_one() {
    let _serial = SERIAL.lock().await;
    let mut run = Scenario::start("chaos-handover", 5, options(Vec::new(), Vec::new())).await;
    let mut second = run.stack.start_second_orchestrator().await;
    // Both instances own partitions before the load starts: the second was given some.
    wait_assigned(second.log(), 0, MILESTONE).await;
    let placer = run.load(vec![run.stack.orchestrator.url(""), second.url("")]);
    placer.wait_accepted(ORDERS / 3, MILESTONE).await;
    let before = assignments(second.log());
    run.stack.orchestrator.kill();
    let killed = Instant::now();
    wait_assigned(second.log(), before, MILESTONE).await;
    let handover = killed.elapsed().as_secs_f64();
    run.faults
        .push(format!("SIGKILL orchestrator #1 of 2, not restarted (partitions handed over after {handover:.1} s)"));
    let placed = run.settle(placer).await;
    run.assert_alive(&["orchestrator"]);
    assert!(second.running(), "the surviving orchestrator died; see {}", second.log().display());
    run.finish(&placed, &second.url("")).await;
}

/// How long the orchestrator stays cut off in scenario 6: three consumer sessions.
const CUT: Duration = Duration::from_secs(12);

/// (6) Two orchestrator instances; the first runs in a network namespace of its own, joined to the host by
/// a veth pair, and a third of the way into the load the pair goes down for [`CUT`], three times the
/// consumer session timeout. The group evicts the cut-off member and gives its partitions to the other
/// instance; the cut-off one keeps running, and when the link comes back it finds it lost its partitions,
/// rejoins and gets some back. Meanwhile whatever it had in hand must not corrupt a saga (writes are fenced
/// by the saga's version; its publications are idempotent or fenced).
///
/// Why a network namespace rather than SIGSTOP: a stopped process also stops heartbeating, so the group
/// evicts it just the same, but it freezes the whole process: nothing runs while it is out, and it resumes
/// as if no time had passed. A partition leaves the process running, which is what happens in production and
/// what can go wrong: its timers keep firing, its publications stall and time out, it keeps working on the
/// messages it had fetched, and librdkafka notices by itself that the session expired and revokes the
/// partitions (a "lost" assignment) while the process still holds messages. Only the network can produce
/// that. Only Kafka (and the instance's HTTP port) cross the pair; the database is reached through a Unix
/// socket, so the cut-off instance keeps writing to it: exactly "cut off from Kafka", the case where a stale
/// owner can still touch sagas, which the version fence must stop.
/// Needs root and `ip netns` (iproute2); where they are unavailable the test says NOT RUN for the namespace
/// and stops the process (SIGSTOP) for the same time instead, which still covers the eviction and handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_cut_off_from_kafka_past_its_session_timeout_hands_over_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut stack = Stack::start("chaos-partition", options(Vec::new(), vec!["orchestrator"])).await;
    let netns = match isolate(&mut stack) {
        Ok(netns) => Some(netns),
        Err(reason) => {
            eprintln!("NOT RUN (network namespace): {reason}; pausing the orchestrator (SIGSTOP) instead");
            None
        }
    };
    let http = stack.http.clone();
    stack.orchestrator.start(&http).await;
    let mut run = Scenario::with("chaos-partition", 6, stack, started).await;
    let mut second = run.stack.start_second_orchestrator().await;
    wait_assigned(second.log(), 0, MILESTONE).await;
    let placer = run.load(vec![run.stack.orchestrator.url(""), second.url("")]);
    placer.wait_accepted(ORDERS / 3, MILESTONE).await;
    let before = assignments(second.log());
    let cut_at = Instant::now();
    match &netns {
        Some(netns) => netns.cut(),
        None => run.stack.orchestrator.pause(),
    }
    wait_assigned(second.log(), before, CUT + Duration::from_secs(20)).await;
    let handover = cut_at.elapsed().as_secs_f64();
    // The fault itself: the link stays down (or the process stopped) for CUT in all.
    tokio::time::sleep(CUT.saturating_sub(cut_at.elapsed())).await;
    match &netns {
        Some(netns) => netns.heal(),
        None => run.stack.orchestrator.resume(),
    }
    let how = if netns.is_some() { "veth down" } else { "SIGSTOP" };
    let secs = cut_at.elapsed().as_secs_f64();
    run.faults.push(format!("orchestrator #1 of 2 cut off ({how}) for {secs:.1} s, handed over after {handover:.1} s"));
    let placed = run.settle(placer).await;
    run.assert_alive(&[]);
    assert!(second.running(), "the second orchestrator died; see {}", second.log().display());
    run.finish(&placed, &second.url("")).await;
    drop(netns);
}

/// Prepares the stack's (not yet started) orchestrator to run in a network namespace of its own, where
/// forwarders give it Kafka (through the veth pair, so the cut separates them), the database (through a
/// Unix socket, so it keeps it) and, on the host, its HTTP port (through the pair). Errors say why a
/// namespace cannot be used here.
fn isolate(stack: &mut Stack) -> Result<Netns, String> {
    if std::env::var("MONGODB_URI").is_ok_and(|v| !v.is_empty()) {
        return Err("MONGODB_URI names an external database, which the namespace cannot reach".to_owned());
    }
    let kafka = tests::chaos::loopback_port(&stack.kafka.bootstrap_servers)
        .ok_or_else(|| format!("Kafka at {} is not one loopback address", stack.kafka.bootstrap_servers))?;
    let uri = platform::mongo::MongoSettings::from_env("MONGODB_DATABASE", "unused").uri;
    let endpoint = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap_or_default().to_owned();
    let mongo = tests::chaos::loopback_port(&endpoint).ok_or_else(|| format!("the database at {uri} is not local"))?;
    let mut netns = Netns::create()?;
    let database = netns.unix_socket("db");
    let forwarder = Path::new(env!("CARGO_BIN_EXE_tcp-forward"));
    let port = stack.orchestrator.reserve_port();
    let host_side = [
        format!("{HOST_IP}:{kafka}=127.0.0.1:{kafka}"),
        format!("{database}=127.0.0.1:{mongo}"),
        format!("127.0.0.1:{port}={NS_IP}:{port}"),
    ];
    netns.forward(forwarder, false, &host_side)?;
    let inside = [format!("127.0.0.1:{kafka}={HOST_IP}:{kafka}"), format!("127.0.0.1:{mongo}={database}")];
    netns.forward(forwarder, true, &inside)?;
    stack.orchestrator.run_under(netns.exec_prefix());
    stack.orchestrator.set_env("HTTP_ADDR", format!("{NS_IP}:{port}"));
    Ok(netns)
}
