//! saga-bench's smoke configuration against a stack of its own (the real binaries on the real Kafka and
//! database): the report it writes is well-formed. It never asserts a speed: this machine runs other tests
//! at the same time, and a benchmark's figures are for reading, not for passing.

use std::path::PathBuf;
use std::time::Duration;

use bench::api::Endpoints;
use bench::auth::TokenSettings;
use bench::config::{Plan, Target, repo_dir};
use bench::procs::{ProcessSpec, standard_processes};
use bench::report::POINTS_TABLE_HEADER;
use bench::{Config, svg};
use platform::mongo::MongoSettings;
use serde_json::Value;
use tests::stack::{Options, Stack};

/// Kafka and the database as `make infra-up` runs them (found through its pid files, when it does), and the
/// stack's four services by pid.
fn processes(stack: &Stack, state_dir: &std::path::Path) -> Vec<ProcessSpec> {
    let external = std::env::var_os("MONGODB_URI").map(|_| "external database (MONGODB_URI)");
    let mut processes: Vec<ProcessSpec> = standard_processes(state_dir, external)
        .into_iter()
        .filter(|p| p.name == "kafka" || p.name == "database")
        .collect();
    for service in [&stack.orchestrator, &stack.inventory, &stack.payment, &stack.shipping] {
        processes.push(ProcessSpec::pid(service.name, service.pid().expect("the service runs")));
    }
    processes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_run_writes_a_well_formed_report() {
    let mut stack = Stack::start("bench-smoke", Options::default()).await;
    let mongo = MongoSettings { database: format!("{}_bench", stack.id), ..MongoSettings::from_env("UNUSED", "x") };
    let state_dir = std::env::var_os("SAGA_STATE_DIR").map_or_else(|| repo_dir().join(".local"), PathBuf::from);
    let target = Target {
        endpoints: Endpoints { orchestrator: stack.orchestrator.url(""), inventory: stack.inventory.url("") },
        kafka: stack.kafka.clone(),
        mongo: mongo.clone(),
        tokens: TokenSettings::from_env(),
        processes: processes(&stack, &state_dir),
        state_dir,
        repo_dir: repo_dir(),
        orchestrator_database: stack.database("orchestrator").name().to_owned(),
    };
    let config = Config { plan: Plan::smoke(), target, kind: "smoke".into() };
    let report = bench::run(&config, &|_: &str| {}).await.expect("the smoke run");
    // A service that died during the run explains a report without sagas better than the report does.
    stack.assert_running();

    let dir = std::env::temp_dir().join(format!("{}-results", stack.id));
    let written = report.write(&dir).expect("the report is written");
    let read = |path: &PathBuf| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    let json: Value = serde_json::from_str(&read(&written.json)).expect("the JSON report parses");
    assert_eq!(json["schema"], "saga-bench/1");
    for field in ["started_at", "plan", "machine", "versions", "durability", "processes", "floors", "ratios"] {
        assert!(!json[field].is_null(), "the report has {field}: {json:#}");
    }
    assert!(json["durability"]["producer_acks"] == "all", "{:#}", json["durability"]);
    let points = json["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "closed loop at 1 and 4");
    for point in points {
        for field in ["mode", "label", "sagas_per_s", "latency", "outcomes", "errors", "steps", "processes"] {
            assert!(point.get(field).is_some(), "a point has {field}: {point:#}");
        }
        let processes = point["processes"].as_array().expect("processes");
        assert!(processes.iter().any(|p| p["name"] == "orchestrator" && p["status"] == "measured"), "{processes:#?}");
    }
    let completed = |p: &Value| p["outcomes"]["COMPLETED"].as_u64().unwrap_or(0);
    assert!(points.iter().any(|p| completed(p) > 0), "some saga completed: {points:#?}");
    assert!(!json["floors"]["kafka"].is_null(), "the Kafka floor: {:#}", json["floors"]);
    assert!(!json["floors"]["database"].is_null(), "the database floor: {:#}", json["floors"]);

    assert_eq!(json["stored_sagas"], serde_json::json!({ "live": 0, "finished": 0 }), "a new stack stores none");

    let markdown = read(&written.markdown);
    assert!(markdown.contains(POINTS_TABLE_HEADER), "{markdown}");
    assert!(markdown.contains("| closed | C=1 |"), "{markdown}");

    let chart = read(&written.svg);
    assert!(chart.trim_start().starts_with("<svg"), "{chart}");
    assert_eq!(svg::well_formed(&chart), Ok("svg".to_owned()), "{chart}");
    for latest in ["latest.json", "latest.md", "latest.svg"] {
        assert!(dir.join(latest).exists(), "{latest} is written too");
    }

    // The run's sagas, settled, are with the finished ones; the fill copies one of them.
    let client = mongo.client("bench-smoke-fill").await.expect("a database client");
    let orchestrator_db = stack.database("orchestrator").name().to_owned();
    let finished = tests::eventually("the run's sagas to settle", Duration::from_secs(60), || async {
        let stored = bench::stored::stored(&client, &orchestrator_db).await.ok()?;
        (stored.finished > 0).then_some(stored.finished)
    })
    .await;
    let added = bench::stored::fill_finished(&client, &orchestrator_db, finished + 1500, &|_: &str| {})
        .await
        .expect("fill the finished sagas");
    assert_eq!(added, 1500);
    let stored = bench::stored::stored(&client, &orchestrator_db).await.expect("count the stored sagas");
    assert_eq!(stored.finished, finished + 1500, "{stored:?}");
    assert_eq!(bench::stored::fill_finished(&client, &orchestrator_db, 10, &|_: &str| {}).await.ok(), Some(0));

    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(client) = mongo.client("bench-smoke-cleanup").await {
        let _ = client.database(&mongo.database).drop().await;
    }
    stack.cleanup().await;
}
