//! Data survive a restart of the database process, and a client created before the restart reconnects by
//! itself. This test restarts the shared database, so `make test` runs it alone, after the parallel tests.
//!
//! The restart command is `ops/mongo/mongo.sh restart` (FerretDB started by the repo). Against an external
//! MongoDB (`MONGODB_URI` set), set `DB_RESTART_CMD` to a command that restarts it.

use std::process::Command;
use std::time::Duration;

use mongodb::bson::{Document, doc};

fn restart_command() -> Option<Vec<String>> {
    if let Ok(cmd) = std::env::var("DB_RESTART_CMD") {
        return Some(cmd.split_whitespace().map(str::to_owned).collect());
    }
    if std::env::var("MONGODB_URI").is_ok_and(|v| !v.is_empty()) {
        return None;
    }
    let script = tests::repo_dir().join("ops/mongo/mongo.sh");
    Some(vec![script.display().to_string(), "restart".to_owned()])
}

#[tokio::test]
async fn data_survive_a_restart_of_the_database_process() {
    let Some(restart) = restart_command() else {
        eprintln!("NOT RUN: MONGODB_URI names an external database and DB_RESTART_CMD is not set");
        return;
    };
    let settings = tests::mongo("restart");
    let client = settings.client("it-restart").await.expect("client");
    let db = client.database(&settings.database);
    let sagas = db.collection::<Document>("sagas");
    let saga = doc! { "_id": "saga-r", "version": 7_i64, "state": "RUNNING", "timeline": ["started", "reserved"] };
    sagas.insert_one(saga.clone()).await.expect("insert before restart");

    let status = Command::new(&restart[0]).args(&restart[1..]).status().expect("run the restart command");
    assert!(status.success(), "restart command {restart:?} failed with {status}");

    // The same client reconnects by itself once the server is back.
    let stored = tests::eventually("the document after the restart", Duration::from_secs(60), || async {
        sagas.find_one(doc! { "_id": "saga-r" }).await.ok().flatten()
    })
    .await;
    assert_eq!(stored, saga, "the document survived the restart unchanged");
    db.drop().await.expect("drop test database");
}
