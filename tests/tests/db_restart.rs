//! The database goes away and comes back: data survive the restart of its process, a client created before
//! reconnects by itself, and a running service's `/ready` answers 503 while the database is down and 200 again
//! once it is back, without a restart of the service. This test stops the shared database, so `make test` runs
//! it alone, after the parallel tests.
//!
//! With the repo's FerretDB, the test stops and starts it with `ops/mongo/mongo.sh`. Against an external
//! MongoDB (`MONGODB_URI` set), set `DB_RESTART_CMD` to a command that restarts it; the readiness part then needs
//! `DB_STOP_CMD` and `DB_START_CMD` too and is skipped without them.

use std::process::Command;
use std::time::Duration;

use mongodb::bson::{Document, doc};
use tests::stack::{Options, Stack};

/// How to stop, start and restart the database, if the test may.
struct Control {
    stop: Option<Vec<String>>,
    start: Option<Vec<String>>,
    restart: Vec<String>,
}

fn command(var: &str) -> Option<Vec<String>> {
    std::env::var(var).ok().map(|cmd| cmd.split_whitespace().map(str::to_owned).collect())
}

fn control() -> Option<Control> {
    let external = std::env::var("MONGODB_URI").is_ok_and(|v| !v.is_empty());
    if external {
        return Some(Control {
            stop: command("DB_STOP_CMD"),
            start: command("DB_START_CMD"),
            restart: command("DB_RESTART_CMD")?,
        });
    }
    let script = tests::repo_dir().join("ops/mongo/mongo.sh").display().to_string();
    let with = |verb: &str| vec![script.clone(), verb.to_owned()];
    Some(Control { stop: Some(with("stop")), start: Some(with("start")), restart: with("restart") })
}

fn run(command: &[String]) {
    let status = Command::new(&command[0]).args(&command[1..]).status().expect("run the database command");
    assert!(status.success(), "{command:?} failed with {status}");
}

async fn ready(stack: &Stack) -> u16 {
    let response = stack.http.get(stack.payment.url("/ready")).send().await.expect("the payment service answers");
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_goes_away_and_comes_back() {
    let Some(control) = control() else {
        eprintln!("NOT RUN: MONGODB_URI names an external database and DB_RESTART_CMD is not set");
        return;
    };
    let settings = tests::mongo("restart");
    let client = settings.client("it-restart").await.expect("client");
    let db = client.database(&settings.database);
    let sagas = db.collection::<Document>("sagas");
    let saga = doc! { "_id": "saga-r", "version": 7_i64, "state": "RUNNING", "timeline": ["started", "reserved"] };
    sagas.insert_one(saga.clone()).await.expect("insert before restart");

    match (&control.stop, &control.start) {
        (Some(stop), Some(start)) => {
            // Only the payment service: it is enough to watch readiness follow the database.
            let options = Options { held_back: vec!["orchestrator", "inventory", "shipping"], ..Options::default() };
            let stack = Stack::start("db-down", options).await;
            assert_eq!(ready(&stack).await, 200);
            run(stop);
            tests::eventually("/ready to answer 503 while the database is down", Duration::from_secs(30), || async {
                (ready(&stack).await == 503).then_some(())
            })
            .await;
            run(start);
            tests::eventually("/ready to recover by itself", Duration::from_secs(60), || async {
                (ready(&stack).await == 200).then_some(())
            })
            .await;
            stack.cleanup().await;
        }
        _ => {
            eprintln!("readiness part NOT RUN: set DB_STOP_CMD and DB_START_CMD for an external database");
            run(&control.restart);
        }
    }

    // The same client reconnects by itself once the server is back.
    let stored = tests::eventually("the document after the restart", Duration::from_secs(60), || async {
        sagas.find_one(doc! { "_id": "saga-r" }).await.ok().flatten()
    })
    .await;
    assert_eq!(stored, saga, "the document survived the restart unchanged");
    db.drop().await.expect("drop test database");
}
