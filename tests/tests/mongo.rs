//! The real document database through the mongodb driver: the operations the saga store and the
//! participants rely on (unique indexes, findOneAndUpdate guarded by a version, `$inc` and `$push`).
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
