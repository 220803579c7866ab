//! The real document database through the mongodb driver: the operations the saga store and the
//! participants rely on (unique indexes, findOneAndUpdate guarded by a version, `$inc` and `$push`, replacements
//! conditional on a version).
//! Each test works in a database of its own and drops it at the end.

use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Database, IndexModel};

async fn database(test: &str) -> (Client, Database) {
    let settings = tests::mongo(test);
    let client = settings.client("it-mongo").await.expect("client");
    platform::mongo::ping(&client).await.expect("the database answers; start it with `make infra-up`");
    let db = client.database(&settings.database);
    (client, db)
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    matches!(&*error.kind, ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 11000)
        || matches!(&*error.kind, ErrorKind::InsertMany(e)
            if e.write_errors.as_ref().is_some_and(|w| w.iter().any(|e| e.code == 11000)))
}

#[tokio::test]
async fn a_unique_index_rejects_a_duplicate() {
    let (_client, db) = database("unique").await;
    let sagas = db.collection::<Document>("saga_log");
    let index = IndexModel::builder()
        .keys(doc! { "saga_id": 1, "seq": 1 })
        .options(IndexOptions::builder().unique(true).name("saga_seq".to_owned()).build())
        .build();
    sagas.create_index(index).await.expect("create unique index");

    sagas.insert_one(doc! { "saga_id": "s-1", "seq": 1, "what": "started" }).await.expect("first insert");
    sagas.insert_one(doc! { "saga_id": "s-1", "seq": 2, "what": "step" }).await.expect("next seq");
    sagas.insert_one(doc! { "saga_id": "s-2", "seq": 1, "what": "started" }).await.expect("other saga");
    let duplicate = sagas.insert_one(doc! { "saga_id": "s-1", "seq": 1, "what": "again" }).await;
    let error = duplicate.expect_err("a duplicate (saga_id, seq) must be refused");
    assert!(is_duplicate_key(&error), "expected a duplicate-key error (11000), got {error}");
    assert_eq!(sagas.count_documents(doc! {}).await.expect("count"), 3, "the duplicate was not stored");
    db.drop().await.expect("drop test database");
}

#[tokio::test]
async fn find_one_and_update_with_a_version_filter_updates_once() {
    let (_client, db) = database("version").await;
    let sagas = db.collection::<Document>("sagas");
    sagas.insert_one(doc! { "_id": "saga-1", "version": 1_i64, "state": "STARTED" }).await.expect("insert");

    let update = doc! { "$set": { "state": "RUNNING" }, "$inc": { "version": 1_i64 } };
    let updated = sagas
        .find_one_and_update(doc! { "_id": "saga-1", "version": 1_i64 }, update.clone())
        .return_document(ReturnDocument::After)
        .await
        .expect("update")
        .expect("the current version matches");
    assert_eq!(updated.get_i64("version").expect("version"), 2);
    assert_eq!(updated.get_str("state").expect("state"), "RUNNING");

    // A writer that still holds version 1 matches nothing and changes nothing.
    let stale = sagas
        .find_one_and_update(doc! { "_id": "saga-1", "version": 1_i64 }, doc! { "$set": { "state": "LOST" } })
        .await
        .expect("stale update runs");
    assert!(stale.is_none(), "a stale version must match nothing, got {stale:?}");
    let stored = sagas.find_one(doc! { "_id": "saga-1" }).await.expect("read").expect("exists");
    assert_eq!(stored.get_str("state").expect("state"), "RUNNING");
    assert_eq!(stored.get_i64("version").expect("version"), 2);
    db.drop().await.expect("drop test database");
}

#[tokio::test]
async fn inc_and_push_update_a_document_in_place() {
    let (_client, db) = database("inc-push").await;
    let stock = db.collection::<Document>("stock");
    stock.insert_one(doc! { "_id": "SKU-1", "available": 10_i64, "reservations": [] }).await.expect("insert");

    for (order, quantity) in [("o-1", 2_i64), ("o-2", 3_i64)] {
        let result = stock
            .update_one(
                doc! { "_id": "SKU-1" },
                doc! { "$inc": { "available": -quantity }, "$push": { "reservations": { "order": order, "quantity": quantity } } },
            )
            .await
            .expect("update");
        assert_eq!(result.modified_count, 1);
    }
    let stored = stock.find_one(doc! { "_id": "SKU-1" }).await.expect("read").expect("exists");
    assert_eq!(stored.get_i64("available").expect("available"), 5);
    let reservations = stored.get_array("reservations").expect("reservations");
    let orders: Vec<&str> =
        reservations.iter().map(|r| r.as_document().expect("doc").get_str("order").expect("order")).collect();
    assert_eq!(orders, ["o-1", "o-2"], "pushed in order");
    db.drop().await.expect("drop test database");
}

/// The filters the hot paths use (`{_id}`, and the versioned writes' `{_id, version}`) are answered from
/// the `_id` index, not by reading the collection. On FerretDB that takes the two patches of the build
/// `ops/mongo/mongo.sh` installs, and `explain` shows them: `filterPushdown` and SQLite's plan searching by
/// the index. On MongoDB, the winning plan is an `_id` lookup (no collection scan).
#[tokio::test]
async fn lookups_by_id_use_the_id_index_also_with_a_version_condition() {
    let (client, db) = database("id-lookups").await;
    let sagas = db.collection::<Document>("sagas");
    let docs: Vec<Document> = (0..50).map(|i| doc! { "_id": format!("saga-{i}"), "version": 3_i64 }).collect();
    sagas.insert_many(docs).await.expect("insert");
    let ferretdb = platform::mongo::flavor(&client).await.expect("flavor") == platform::mongo::Flavor::FerretDb;

    let by_id = doc! { "_id": "saga-7" };
    let versioned = doc! { "_id": "saga-7", "version": 3_i64 };
    let no_id = doc! { "version": 3_i64 };
    for (filter, indexed) in [(by_id, true), (versioned, true), (no_id, false)] {
        let explain = doc! { "explain": { "find": "sagas", "filter": filter.clone() }, "verbosity": "queryPlanner" };
        let plan = db.run_command(explain).await.expect("explain");
        let text = plan.to_string();
        if ferretdb {
            let pushed = plan.get_bool("filterPushdown").unwrap_or(false);
            let searched = text.contains("USING INDEX") && text.contains("SEARCH");
            assert_eq!((pushed, searched), (indexed, indexed), "{filter}: {plan}");
        } else {
            assert_eq!(!text.contains("COLLSCAN"), indexed, "{filter}: {plan}");
        }
    }
    assert!(sagas.find_one(doc! { "_id": "saga-7", "version": 3_i64 }).await.expect("find").is_some());
    assert!(sagas.find_one(doc! { "_id": "saga-7", "version": 4_i64 }).await.expect("find").is_none());
    db.drop().await.expect("drop test database");
}

/// One `update` command with many statements (what a driver's bulk write of replacements sends) completes,
/// and the database answers others meanwhile and after. FerretDB as released keeps every statement's query
/// (and its SQLite connection, of a pool of 100) open until the whole command is done, so at 100 statements
/// the command, and every client with it, waited forever; `ops/mongo/mongo.sh` patches that.
#[tokio::test]
async fn an_update_command_with_hundreds_of_statements_completes() {
    const STATEMENTS: i64 = 250;
    let (_client, db) = database("many-updates").await;
    let sagas = db.collection::<Document>("sagas");
    let docs: Vec<Document> = (0..STATEMENTS).map(|i| doc! { "_id": format!("saga-{i}"), "version": 1_i64 }).collect();
    sagas.insert_many(docs).await.expect("insert");

    let updates: Vec<Document> = (0..STATEMENTS)
        .map(|i| {
            let id = format!("saga-{i}");
            // `$set`, not a replacement: the patched FerretDB replaces in place without holding a query, so
            // only an update that reads the document first exercises the statements' queries.
            doc! { "q": { "_id": &id, "version": 1_i64 }, "u": { "$set": { "version": 2_i64, "n": i } } }
        })
        .collect();
    let command = doc! { "update": "sagas", "updates": updates, "ordered": false };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), db.run_command(command))
        .await
        .expect("the update command answered within 60 s")
        .expect("update");
    let count = |field| answer.get_i32(field).ok().map(i64::from);
    assert_eq!(count("n"), Some(STATEMENTS), "{answer}");
    assert_eq!(count("nModified"), Some(STATEMENTS), "{answer}");

    let count =
        tokio::time::timeout(std::time::Duration::from_secs(30), sagas.count_documents(doc! { "version": 2_i64 }))
            .await
            .expect("the database answers after the command")
            .expect("count");
    assert_eq!(count, u64::try_from(STATEMENTS).unwrap_or_default());
    db.drop().await.expect("drop test database");
}

/// Replaces the document matching `filter` with `replacement`; returns (matched, modified).
async fn replace(sagas: &mongodb::Collection<Document>, filter: Document, replacement: Document) -> (u64, u64) {
    let result = sagas.replace_one(filter.clone(), replacement).await.unwrap_or_else(|e| panic!("{filter}: {e}"));
    (result.matched_count, result.modified_count)
}

/// The saga store writes every transition as a replacement conditional on `{_id, version}`; the FerretDB
/// that `ops/mongo/mongo.sh` builds answers such a replacement with one conditional SQL write and falls back
/// to reading the document whenever that changes nothing. Both paths must give MongoDB's answers, which these
/// are (the test runs unchanged against a real MongoDB through `MONGODB_URI`).
#[tokio::test]
async fn replacements_conditional_on_top_level_fields_follow_the_mongodb_rules() {
    let (_client, db) = database("replace-if").await;
    let sagas = db.collection::<Document>("sagas");
    let oid = mongodb::bson::oid::ObjectId::new();
    let at = mongodb::bson::DateTime::from_millis(5);
    sagas
        .insert_many([
            doc! { "_id": "a", "version": 1_i64, "x": 1 },
            doc! { "_id": "b", "version": 1_i32 },
            doc! { "_id": "c", "version": 1.0_f64 },
            doc! { "_id": "d", "tags": ["x", "y"] },
            doc! { "_id": "e", "at": at, "code": "5" },
            doc! { "_id": "f", "state": "RUNNING" },
            doc! { "_id": oid, "version": 1_i64 },
        ])
        .await
        .expect("insert");
    let stored = |id: &str| {
        let sagas = sagas.clone();
        let id = id.to_owned();
        async move { sagas.find_one(doc! { "_id": id }).await.expect("read").expect("exists") }
    };

    // At the version: replaced, keeping the _id the replacement leaves out.
    assert_eq!(replace(&sagas, doc! { "_id": "a", "version": 1_i64 }, doc! { "version": 2_i64, "x": 2 }).await, (1, 1));
    assert_eq!(stored("a").await, doc! { "_id": "a", "version": 2_i64, "x": 2 });
    // A stale version matches nothing and changes nothing.
    assert_eq!(replace(&sagas, doc! { "_id": "a", "version": 1_i64 }, doc! { "version": 3_i64 }).await, (0, 0));
    // The same document again: matched, not modified.
    let same = doc! { "_id": "a", "version": 2_i64, "x": 2 };
    assert_eq!(replace(&sagas, doc! { "_id": "a", "version": 2_i64 }, same.clone()).await, (1, 0));
    assert_eq!(stored("a").await, same);
    // A condition on a field the document lacks matches nothing.
    assert_eq!(replace(&sagas, doc! { "_id": "a", "missing": 1_i64 }, doc! { "y": 1 }).await, (0, 0));
    // Numbers compare by value across types: a 32-bit and a double stored version match a 64-bit condition.
    assert_eq!(replace(&sagas, doc! { "_id": "b", "version": 1_i64 }, doc! { "version": 2_i64 }).await, (1, 1));
    assert_eq!(replace(&sagas, doc! { "_id": "c", "version": 1_i64 }, doc! { "version": 2_i64 }).await, (1, 1));
    assert_eq!(stored("c").await.get_i64("version").ok(), Some(2));
    // A scalar condition matches an array holding it.
    assert_eq!(replace(&sagas, doc! { "_id": "d", "tags": "x" }, doc! { "tags": ["z"] }).await, (1, 1));
    // A date is not a number, a string of digits is not a number either.
    assert_eq!(replace(&sagas, doc! { "_id": "e", "at": 5_i64 }, doc! { "hit": 1 }).await, (0, 0));
    assert_eq!(replace(&sagas, doc! { "_id": "e", "code": 5_i64 }, doc! { "hit": 1 }).await, (0, 0));
    assert_eq!(stored("e").await, doc! { "_id": "e", "at": at, "code": "5" });
    // String conditions, and an ObjectId _id.
    assert_eq!(replace(&sagas, doc! { "_id": "f", "state": "DONE" }, doc! { "state": "LOST" }).await, (0, 0));
    assert_eq!(replace(&sagas, doc! { "_id": "f", "state": "RUNNING" }, doc! { "state": "DONE" }).await, (1, 1));
    assert_eq!(replace(&sagas, doc! { "_id": oid, "version": 1_i64 }, doc! { "version": 2_i64 }).await, (1, 1));
    let by_oid = sagas.find_one(doc! { "_id": oid }).await.expect("read").expect("exists");
    assert_eq!(by_oid.get_i64("version").ok(), Some(2));

    // A replacement may not change the _id: an error, and the document stays as it was.
    let changed_id =
        sagas.replace_one(doc! { "_id": "a", "version": 2_i64 }, doc! { "_id": "z", "version": 3_i64 }).await;
    let error = changed_id.expect_err("changing the _id is refused");
    assert!(
        matches!(&*error.kind, ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 66),
        "expected ImmutableField (66), got {error}"
    );
    assert_eq!(stored("a").await, same);
    db.drop().await.expect("drop test database");
}

/// Writers of one database at once: inserts, conditional replacements, deletes and a collection with an
/// index created meanwhile. The patched FerretDB runs a database's writes one at a time (a queue instead of
/// SQLite's sleeping busy handler); none may be lost, fail or wait forever.
#[tokio::test]
async fn concurrent_writers_of_one_database_all_finish_and_lose_nothing() {
    const WRITERS: i64 = 12;
    const DOCS: i64 = 20;
    let (_client, db) = database("concurrent-writers").await;
    let sagas = db.collection::<Document>("sagas");
    let writer = |w: i64| {
        let sagas = sagas.clone();
        async move {
            let docs: Vec<Document> =
                (0..DOCS).map(|i| doc! { "_id": format!("w{w}-{i}"), "version": 1_i64, "writer": w }).collect();
            sagas.insert_many(docs).await.expect("insert");
            for i in 0..DOCS {
                let id = format!("w{w}-{i}");
                let replacement = doc! { "_id": &id, "version": 2_i64, "writer": w, "step": i };
                let updated = sagas.replace_one(doc! { "_id": &id, "version": 1_i64 }, replacement).await;
                assert_eq!(updated.expect("replace").modified_count, 1, "{id}");
            }
            let odd: Vec<Document> =
                (0..DOCS).filter(|i| i % 2 == 1).map(|i| doc! { "_id": format!("w{w}-{i}") }).collect();
            let deleted = sagas.delete_many(doc! { "$or": odd }).await.expect("delete");
            assert_eq!(deleted.deleted_count, u64::try_from(DOCS / 2).unwrap_or_default());
        }
    };
    let ddl = async {
        let other = db.collection::<Document>("created_meanwhile");
        other.insert_one(doc! { "_id": "first", "state": "STARTED" }).await.expect("create by insert");
        let index = IndexModel::builder().keys(doc! { "state": 1 }).build();
        other.create_index(index).await.expect("create index");
    };
    let all = async { tokio::join!(futures_util::future::join_all((0..WRITERS).map(writer)), ddl) };
    tokio::time::timeout(std::time::Duration::from_secs(120), all).await.expect("every writer finished within 120 s");

    let left = sagas.count_documents(doc! { "version": 2_i64 }).await.expect("count");
    assert_eq!(left, u64::try_from(WRITERS * DOCS / 2).unwrap_or_default(), "every even document, replaced");
    assert_eq!(sagas.count_documents(doc! { "version": 1_i64 }).await.expect("count"), 0);
    let created = db.collection::<Document>("created_meanwhile").count_documents(doc! {}).await.expect("count");
    assert_eq!(created, 1);
    db.drop().await.expect("drop test database");
}

/// The patched FerretDB's write queue counters for `db` (transactions run, SQLite commits taken), from its
/// debug endpoint (`FERRETDB_DEBUG_PORT`, 8088); `None` on MongoDB.
async fn queued_writes(client: &Client, db: &str) -> Option<(u64, u64)> {
    let flavor = platform::mongo::flavor(client).await.expect("buildInfo");
    if flavor != platform::mongo::Flavor::FerretDb {
        return None;
    }
    let port = std::env::var("FERRETDB_DEBUG_PORT").unwrap_or_else(|_| "8088".to_owned());
    let url = format!("http://127.0.0.1:{port}/debug/metrics");
    let text = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("FerretDB's metrics at {url}: {e}"))
        .text()
        .await
        .expect("metrics text");
    let counter = |name: &str| {
        let prefix = format!("ferretdb_sqldb_{name}{{db=\"{db}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().expect("a number") as u64)
    };
    assert!(
        text.contains("ferretdb_sqldb_queued_writes_total"),
        "FerretDB is not the build ops/mongo/mongo.sh installs (no write queue counters); restart it with `make infra-up`"
    );
    Some((counter("queued_writes_total"), counter("queued_commits_total")))
}

/// An `insert_many` refused for its document at `index` only, as a duplicate.
fn only_a_duplicate_at(error: &mongodb::error::Error, index: usize) -> bool {
    matches!(&*error.kind, ErrorKind::InsertMany(e)
        if e.write_errors.as_ref().is_some_and(|w| w.len() == 1 && w[0].index == index && w[0].code == 11000))
}

/// Writes that reach a database together are committed together by the patched FerretDB (group commit, see
/// ops/mongo/mongo.sh): each must still get its own outcome. Writers race to insert the same ids (one wins
/// each; the others get a duplicate-key error and store nothing), insert batches whose last document is
/// contested (the others stay either way), and replace their own documents at the current version (one
/// match) and again at the old one (none).
#[tokio::test]
async fn writes_committed_together_keep_their_own_outcomes() {
    const WRITERS: i64 = 16;
    const ROUNDS: i64 = 12;
    /// New documents per batch (FerretDB inserts at most 100 per SQL statement).
    const BATCH: usize = 120;
    let (client, db) = database("group-commit").await;
    // The database exists (and with it FerretDB's counters for it) before the counters are read.
    db.collection::<Document>("setup").insert_one(doc! { "_id": "created" }).await.expect("create the database");
    let before = queued_writes(&client, db.name()).await;
    let docs = db.collection::<Document>("docs");
    let writer = |w: i64| {
        let docs = docs.clone();
        async move {
            let mut won = Vec::new();
            for i in 0..ROUNDS {
                let contested = format!("c-{}", (i + w) % ROUNDS);
                match docs.insert_one(doc! { "_id": &contested, "writer": w }).await {
                    Ok(_) => won.push(contested),
                    Err(e) if is_duplicate_key(&e) => {}
                    Err(e) => panic!("insert {contested}: {e}"),
                }
                // More documents than FerretDB inserts per write (100), the last one contested: the batch is
                // several writes, and FerretDB inserts the refused one's documents again one by one.
                let own = format!("own-{w}-{i}");
                let mut batch = vec![doc! { "_id": &own, "writer": w, "version": 1_i64 }];
                batch.extend((1..BATCH).map(|k| doc! { "_id": format!("{own}-{k}"), "writer": w }));
                batch.push(doc! { "_id": format!("b-{i}"), "writer": w });
                match docs.insert_many(batch).await {
                    Ok(_) => won.push(format!("b-{i}")),
                    Err(e) if only_a_duplicate_at(&e, BATCH) => {}
                    Err(e) => panic!("insert {own}.. and b-{i}: only b-{i} may be refused: {e}"),
                }
                let current = doc! { "_id": &own, "writer": w, "version": 2_i64 };
                let replaced =
                    docs.replace_one(doc! { "_id": &own, "version": 1_i64 }, current).await.expect("replace");
                assert_eq!(replaced.matched_count, 1, "{own} at version 1");
                let stale = doc! { "_id": &own, "writer": w, "version": 99_i64 };
                let missed = docs.replace_one(doc! { "_id": &own, "version": 1_i64 }, stale).await.expect("replace");
                assert_eq!(missed.matched_count, 0, "{own} is no longer at version 1");
            }
            (w, won)
        }
    };
    let all = futures_util::future::join_all((0..WRITERS).map(writer));
    let results = tokio::time::timeout(std::time::Duration::from_secs(120), all).await.expect("writers done in 120 s");

    let mut winners = std::collections::BTreeMap::new();
    for (w, won) in results {
        for id in won {
            assert!(winners.insert(id.clone(), w).is_none(), "{id} was inserted by two writers");
        }
    }
    let rounds = usize::try_from(ROUNDS).expect("small");
    assert_eq!(winners.len(), 2 * rounds, "every contested id has exactly one winner: {winners:?}");
    for (id, w) in &winners {
        let stored = docs.find_one(doc! { "_id": id }).await.expect("read").expect("the winner's document");
        assert_eq!(stored.get_i64("writer").expect("writer"), *w, "{id} holds its winner's document");
    }
    let owned = docs.count_documents(doc! { "version": 2_i64 }).await.expect("count");
    assert_eq!(owned, u64::try_from(WRITERS * ROUNDS).expect("small"), "every writer's own documents, replaced once");
    let total = docs.count_documents(doc! {}).await.expect("count");
    let batches = u64::try_from(BATCH).expect("small") * owned;
    assert_eq!(total, batches + u64::try_from(2 * ROUNDS).expect("small"), "nothing else was stored");

    if let (Some((writes_before, commits_before)), Some((writes, commits))) =
        (before, queued_writes(&client, db.name()).await)
    {
        let (writes, commits) = (writes - writes_before, commits - commits_before);
        eprintln!("{writes} writes from {WRITERS} writers at once took {commits} commits");
        assert!(writes >= u64::try_from(WRITERS * ROUNDS * 4).expect("small"), "the queue ran {writes} writes");
        assert!(
            commits < writes,
            "{writes} writes from {WRITERS} writers at once took {commits} commits: none was grouped"
        );
    }
    db.drop().await.expect("drop test database");
}
