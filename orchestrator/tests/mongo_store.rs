//! `MongoStore` against the real document database (`MONGODB_URI`, default `mongodb://127.0.0.1:27017`;
//! `ops/infra.sh status` says whether it runs). Every test works in a database of its own and drops it.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};
use orchestrator::model::{
    EntryKind, LogEntry, OrderLine, OrderPii, OrderSummary, OutboxEntry, Outgoing, Received, SagaRecord, Sent,
};
use orchestrator::store::mongo::MongoStore;
use orchestrator::store::{Claim, Due, Error, SagaStore};
use platform::mongo::{Flavor, MongoSettings};
use proto_events::commands::Currency;
use proto_events::{Address, CommandKind, DeadlineKind, OrderStatus, SagaTransitioned};
use saga_defs::{Deadline, Phase, SagaState};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// An hour from now: a census of the finished sagas moved before it counts all of them.
fn later() -> DateTime<Utc> {
    Utc::now() + TimeDelta::hours(1)
}

/// Counts per state.
fn counts(pairs: &[(&str, u64)]) -> orchestrator::store::StateCounts {
    pairs.iter().map(|(state, n)| ((*state).to_owned(), *n)).collect()
}

/// What `store` wrote down of the finished copies it made, with what the others wrote, over all minutes.
async fn tallied(store: &dyn SagaStore) -> orchestrator::store::StateCounts {
    store.flush_finished_tally().await.expect("write down the finished sagas");
    let mut total = orchestrator::store::StateCounts::new();
    for tally in store.finished_tallies().await.expect("read the tallies") {
        for (state, n) in tally.counts {
            *total.entry(state).or_insert(0) += n;
        }
    }
    total
}

/// A store in a new database named after `test`, prepared.
async fn store(test: &str) -> (Database, MongoStore) {
    let mut settings = MongoSettings::from_env("MONGODB_DATABASE", "unused");
    let suffix = Uuid::now_v7().simple().to_string();
    settings.database = format!("orch_{test}_{}", &suffix[suffix.len() - 12..]);
    let client = settings.client("orchestrator-tests").await.expect("a database client");
    platform::mongo::ping(&client).await.expect("the database answers (check `ops/infra.sh status`)");
    let db = client.database(&settings.database);
    let store = MongoStore::connect(&client, &settings.database).await.expect("detect the server's flavor");
    store.prepare().await.expect("prepare the store");
    (db, store)
}

/// 2026-01-01T00:00:00.123Z. Times stored as BSON dates (`created_at`, `updated_at`, `state_since`) keep
/// milliseconds; the others keep nanoseconds.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_767_225_600_123).expect("a valid instant")
}

fn secs(seconds: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seconds)
}

/// An instant with sub-millisecond digits, `seconds` after [`t0`].
fn precise(seconds: i64) -> DateTime<Utc> {
    secs(seconds) + TimeDelta::nanoseconds(456_789)
}

fn deadline(at: DateTime<Utc>, kind: DeadlineKind, step: u16, attempt: u32) -> Option<Deadline> {
    Some(Deadline { at, kind, step, attempt })
}

fn log_entry(saga_id: Uuid, seq: u64, note: &str) -> LogEntry {
    LogEntry {
        saga_id,
        seq,
        at: precise(i64::try_from(seq).expect("a small seq")),
        kind: EntryKind::Transition,
        from: "RUNNING".into(),
        to: "COMPENSATING".into(),
        step: Some(0),
        attempt: Some(1),
        received: Some(Received {
            message_id: Uuid::now_v7(),
            message_type: "payment.charge.reply".into(),
            topic: "saga.reply".into(),
            partition: 4,
            offset: 9_000_000_001,
            step: 1,
            attempt: 2,
            outcome: Some("failed (Business): card declined".into()),
        }),
        sent: vec![Sent {
            message_id: Uuid::now_v7(),
            message_type: "inventory.release".into(),
            topic: "saga.cmd.inventory".into(),
            step: 0,
            attempt: 1,
            partition: Some(4),
            offset: Some(77),
        }],
        note: Some(note.into()),
    }
}

/// A saga in `partition` and `phase` with a full outbox and an unflushed timeline entry.
fn saga(partition: i32, phase: Phase, deadline: Option<Deadline>) -> SagaRecord {
    let id = Uuid::now_v7();
    let correlation_id = Uuid::now_v7();
    let customer_ref = "0123456789abcdef0123456789abcdef".to_owned();
    let event = SagaTransitioned {
        definition: "order_fulfilment".into(),
        definition_version: 1,
        from: "RUNNING".into(),
        to: phase.name().into(),
        status: phase.status(),
        step_name: Some("charge_payment".into()),
        reason: Some("step charge_payment failed: card declined".into()),
        version: 3,
        customer_ref: customer_ref.clone(),
    };
    let entry = |outgoing, causation_id| OutboxEntry {
        message_id: Uuid::now_v7(),
        causation_id,
        time: precise(2),
        step: 1,
        attempt: 2,
        outgoing,
    };
    SagaRecord {
        id,
        version: 3,
        definition: "order_fulfilment".into(),
        definition_version: 1,
        state: SagaState {
            phase,
            deadline,
            reason: Some("step charge_payment failed: card declined".into()),
            parked_at: (phase == Phase::Failed).then_some(Phase::Compensating { step: 1, attempt: 20 }),
            attempt_floor: 3,
            resolution: None,
        },
        partition,
        correlation_id,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        order: OrderSummary {
            items: vec![
                OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 1250 },
                OrderLine { sku: "SKU-2".into(), quantity: 10_000, unit_price_cents: 0 },
            ],
            amount_cents: 2500,
            currency: Currency::CHF,
            customer_ref,
        },
        created_at: t0(),
        updated_at: secs(2),
        state_since: secs(1),
        outbox: vec![
            entry(Outgoing::Command { command: CommandKind::InventoryRelease }, Some(Uuid::now_v7())),
            entry(Outgoing::Transitioned { event }, Some(Uuid::now_v7())),
            entry(Outgoing::Start, None),
        ],
        pending_log: vec![log_entry(id, 3, "compensating")],
    }
}

/// A saga in `partition` with nothing pending.
fn settled(partition: i32, phase: Phase, deadline: Option<Deadline>) -> SagaRecord {
    let mut saga = saga(partition, phase, deadline);
    saga.outbox.clear();
    saga.pending_log.clear();
    saga
}

async fn get(store: &MongoStore, id: Uuid) -> SagaRecord {
    store.get(id).await.expect("read the saga").expect("the saga exists")
}

fn ids(sagas: &[SagaRecord]) -> BTreeSet<Uuid> {
    sagas.iter().map(|s| s.id).collect()
}

fn pii(line2: Option<&str>) -> OrderPii {
    OrderPii {
        customer_id: "cust-42".into(),
        email: "ada@example.com".into(),
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            line1: "1 Main St".into(),
            line2: line2.map(Into::into),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        payment_token: "tok_visa".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn prepare_is_idempotent_and_creates_the_indexes_the_server_uses() {
    let (db, store) = store("prepare").await;
    let client = db.client().clone();
    let flavor = platform::mongo::flavor(&client).await.expect("the server's flavor");
    let secondary = ["partition_deadline", "partition_pending", "partition_state_created", "status_updated"];
    if flavor == Flavor::FerretDb {
        // As an earlier version left the database: the secondary indexes exist.
        let sagas = db.collection::<Document>("sagas");
        for name in secondary {
            let mut keys = Document::new();
            keys.insert(name, 1);
            let model =
                IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_owned()).build()).build();
            sagas.create_index(model).await.expect("create an index as an earlier version did");
        }
    }
    // What every restart of the orchestrator does against an existing database.
    let again = [store.prepare().await, store.prepare().await];

    let names: BTreeSet<String> =
        db.collection::<Document>("sagas").list_index_names().await.expect("saga indexes").into_iter().collect();
    let log = db.collection::<Document>("saga_log").list_index_names().await.unwrap_or_default();
    db.drop().await.expect("drop the test database");
    for result in again {
        result.expect("preparing a prepared database succeeds");
    }
    for index in secondary {
        // FerretDB answers only `{_id}` filters from an index: a secondary one would cost every write and
        // serve no query, so the store drops it there.
        assert_eq!(names.contains(index), flavor == Flavor::MongoDb, "index {index} on {flavor:?}: {names:?}");
    }
    assert_eq!(log.iter().any(|n| n == "saga_seq"), flavor == Flavor::MongoDb, "{log:?}");
}

#[tokio::test]
async fn a_saga_round_trips_exactly_in_every_phase() {
    let (db, store) = store("round_trip").await;
    let phases = [
        (Phase::Started, None),
        (Phase::Running { step: 1, attempt: 2 }, deadline(precise(10), DeadlineKind::StepTimeout, 1, 2)),
        (Phase::Backoff { step: 2, attempt: 3 }, deadline(precise(11), DeadlineKind::RetryDue, 2, 3)),
        (Phase::Compensating { step: 1, attempt: 1 }, deadline(precise(12), DeadlineKind::StepTimeout, 1, 1)),
        (Phase::CompensationBackoff { step: 0, attempt: 20 }, deadline(precise(13), DeadlineKind::RetryDue, 0, 20)),
        (Phase::Completed, None),
        (Phase::Compensated, None),
        (Phase::Failed, None),
    ];
    let mut sagas: Vec<SagaRecord> = phases.into_iter().map(|(phase, deadline)| saga(3, phase, deadline)).collect();
    let mut bare = settled(5, Phase::Started, None);
    bare.state.reason = None;
    bare.traceparent = None;
    sagas.push(bare);

    for saga in &sagas {
        store.insert(saga).await.expect("insert");
    }
    for saga in &sagas {
        assert_eq!(&get(&store, saga.id).await, saga, "{} round-trips", saga.state.phase.name());
    }
    assert_eq!(store.get(Uuid::now_v7()).await.expect("get"), None);
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn inserting_a_saga_twice_is_refused_and_keeps_the_first() {
    let (db, store) = store("duplicate").await;
    let first = saga(0, Phase::Started, None);
    store.insert(&first).await.expect("insert");
    let mut second = first.clone();
    second.state.phase = Phase::Completed;

    let error = store.insert(&second).await.expect_err("a second insert with the same id");
    assert!(matches!(&error, Error::Duplicate { what: "saga", id } if *id == first.id.to_string()), "{error}");
    assert!(!error.is_transient());
    assert_eq!(get(&store, first.id).await, first);
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn replace_succeeds_only_at_the_expected_version() {
    let (db, detected) = store("replace").await;
    // Both ways of fencing (the filter MongoDB applies atomically, and FerretDB's read-then-write) must
    // refuse a stale version, whichever server this is.
    for flavor in [Flavor::MongoDb, Flavor::FerretDb] {
        replace_fences_stale_versions(&MongoStore::new(&db, flavor)).await;
    }
    replace_fences_stale_versions(&detected).await;
    db.drop().await.expect("drop the test database");
}

async fn replace_fences_stale_versions(store: &MongoStore) {
    let original =
        saga(1, Phase::Running { step: 0, attempt: 1 }, deadline(precise(10), DeadlineKind::StepTimeout, 0, 1));
    store.insert(&original).await.expect("insert");

    let mut next = original.clone();
    next.version = 4;
    next.state = SagaState { phase: Phase::Completed, deadline: None, reason: None, ..SagaState::new() };
    next.updated_at = secs(30);
    next.outbox.truncate(1);
    store.replace(&next, 3).await.expect("replace at the current version");
    assert_eq!(get(store, original.id).await, next);

    let mut stale = original.clone();
    stale.version = 4;
    stale.state.phase = Phase::Failed;
    let error = store.replace(&stale, 3).await.expect_err("version 3 is gone");
    assert!(matches!(error, Error::VersionConflict { saga_id, expected: 3 } if saga_id == original.id), "{error}");
    assert_eq!(get(store, original.id).await, next, "a stale replace changes nothing");

    let unknown = saga(1, Phase::Started, None);
    assert!(matches!(store.replace(&unknown, 3).await, Err(Error::VersionConflict { .. })));
    assert_eq!(store.get(unknown.id).await.expect("get"), None, "replace does not create");
}

#[tokio::test]
async fn clear_pending_empties_the_outbox_only_at_the_given_version() {
    let (db, store) = store("clear_pending").await;
    let saga = saga(2, Phase::Running { step: 1, attempt: 1 }, deadline(precise(10), DeadlineKind::StepTimeout, 1, 1));
    store.insert(&saga).await.expect("insert");

    assert!(!store.clear_pending(saga.id, 2).await.expect("clear at an old version"));
    assert_eq!(get(&store, saga.id).await, saga, "unchanged");
    assert!(get(&store, saga.id).await.has_pending());

    assert!(store.clear_pending(saga.id, 3).await.expect("clear at the current version"));
    let cleared = get(&store, saga.id).await;
    let mut expected = saga.clone();
    expected.outbox.clear();
    expected.pending_log.clear();
    assert_eq!(cleared, expected, "only the outbox and the pending timeline change; the version stays");
    let recoverable = store.recoverable(&[2], 10).await.expect("recoverable");
    assert!(recoverable.iter().all(|s| !s.has_pending()), "still there for its deadline only: {recoverable:?}");
    assert_eq!(ids(&recoverable), BTreeSet::from([saga.id]));
    assert!(!store.clear_pending(Uuid::now_v7(), 1).await.expect("clear an unknown saga"));
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn append_log_skips_entries_already_there_and_the_timeline_is_ordered_by_seq() {
    let (db, store) = store("append_log").await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // The timeline reads the log up to the saga's version.
    for (id, version) in [(a, 5), (b, 1)] {
        let mut saga = settled(0, Phase::Completed, None);
        (saga.id, saga.version) = (id, version);
        store.insert(&saga).await.expect("insert the saga");
    }
    let (one, two) = (log_entry(a, 1, "first"), log_entry(a, 2, "second"));
    store.append_log(&[one.clone(), two.clone()]).await.expect("append");
    // A re-flush after a crash: entry 2 again (with other content, which must not win) and a new entry 3.
    let three = log_entry(a, 3, "third");
    store.append_log(&[log_entry(a, 2, "second again"), three.clone()]).await.expect("append again");
    store.append_log(std::slice::from_ref(&one)).await.expect("append only what is there");
    store.append_log(&[]).await.expect("append nothing");
    // Out of order, and another saga's entry.
    let (five, four) = (log_entry(a, 5, "fifth"), log_entry(a, 4, "fourth"));
    store.append_log(std::slice::from_ref(&five)).await.expect("append 5");
    store.append_log(&[four.clone(), log_entry(b, 1, "other saga")]).await.expect("append 4");

    assert_eq!(store.timeline(a).await.expect("timeline"), [one, two, three, four, five]);
    let other = store.timeline(b).await.expect("timeline");
    assert_eq!(other.iter().map(|e| (e.saga_id, e.seq)).collect::<Vec<_>>(), [(b, 1)]);
    assert!(store.timeline(Uuid::now_v7()).await.expect("timeline").is_empty());
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn recoverable_finds_the_sagas_with_a_deadline_or_unsettled_work_in_the_given_partitions() {
    let (db, store) = store("recoverable").await;
    let running = Phase::Running { step: 0, attempt: 1 };
    let timeout = |seconds| deadline(precise(seconds), DeadlineKind::StepTimeout, 0, 1);
    let waiting = settled(0, running, timeout(1));
    let backoff =
        settled(1, Phase::Backoff { step: 2, attempt: 3 }, deadline(precise(3), DeadlineKind::RetryDue, 2, 3));
    let unsettled = saga(1, Phase::Completed, None);
    let mut log_only = settled(0, Phase::Compensated, None);
    log_only.pending_log.push(log_entry(log_only.id, 4, "unflushed"));
    let elsewhere = saga(2, running, timeout(0));
    let done = settled(1, Phase::Completed, None);
    for saga in [&waiting, &backoff, &unsettled, &log_only, &elsewhere, &done] {
        store.insert(saga).await.expect("insert");
    }

    let found = store.recoverable(&[0, 1], 10).await.expect("recoverable");
    assert_eq!(ids(&found), BTreeSet::from([waiting.id, backoff.id, unsettled.id, log_only.id]));
    assert!(found.contains(&backoff), "whole records: {found:?}");
    let due = Due::of(&waiting).expect("a deadline");
    assert_eq!((due.saga_id, due.partition, due.deadline), (waiting.id, 0, timeout(1).expect("a deadline")));
    assert_eq!(due.traceparent, waiting.traceparent);
    assert_eq!(store.recoverable(&[0, 1], 2).await.expect("recoverable").len(), 2, "at most the limit");
    assert!(store.recoverable(&[3], 10).await.expect("recoverable").is_empty());
    assert!(store.recoverable(&[], 10).await.expect("recoverable").is_empty());

    // Once its deadline is cleared and its work settled, a saga is no longer of interest.
    let mut finished = waiting.clone();
    finished.version += 1;
    finished.state = SagaState { phase: Phase::Completed, deadline: None, reason: None, ..SagaState::new() };
    store.replace(&finished, waiting.version).await.expect("replace");
    store.clear_pending(unsettled.id, unsettled.version).await.expect("clear");
    let found = store.recoverable(&[0, 1], 10).await.expect("recoverable");
    assert_eq!(ids(&found), BTreeSet::from([backoff.id, log_only.id]));
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn unsettled_and_not_started_sagas_are_selected_by_partition_and_state() {
    let (db, store) = store("pending").await;
    let pending_0 = saga(0, Phase::Running { step: 0, attempt: 1 }, None);
    let settled_0 = settled(0, Phase::Running { step: 0, attempt: 1 }, None);
    let pending_1 = saga(1, Phase::Completed, None);
    let pending_3 = saga(3, Phase::Started, None);
    let mut log_only = settled(1, Phase::Compensated, None);
    log_only.pending_log.push(log_entry(log_only.id, 4, "unflushed"));
    let old_start = settled(0, Phase::Started, None);
    let mut new_start = settled(0, Phase::Started, None);
    new_start.created_at = secs(10);
    let mut other_start = settled(5, Phase::Started, None);
    other_start.created_at = secs(-10);
    // Stored started (version 2), its start's messages in its outbox; and one whose start went out (settled).
    let mut born = saga(1, Phase::Running { step: 0, attempt: 1 }, None);
    born.version = 2;
    let mut born_published = settled(1, Phase::Running { step: 0, attempt: 1 }, None);
    born_published.version = 2;
    let all = [&pending_0, &settled_0, &pending_1, &pending_3, &log_only, &old_start, &new_start, &other_start];
    for saga in all.into_iter().chain([&born, &born_published]) {
        store.insert(saga).await.expect("insert");
    }

    let pending = store.recoverable(&[0, 1], 10).await.expect("recoverable");
    assert_eq!(ids(&pending), BTreeSet::from([pending_0.id, pending_1.id, log_only.id, born.id]));
    assert!(pending.contains(&pending_0), "whole records: {pending:?}");
    assert!(store.recoverable(&[2], 10).await.expect("recoverable").is_empty());

    let started = |before, limit| store.not_started(&[0, 1], before, limit);
    assert_eq!(ids(&started(secs(5), 10).await.expect("not started")), BTreeSet::from([old_start.id, born.id]));
    assert!(started(secs(5), 10).await.expect("not started").contains(&born), "whole records");
    assert_eq!(
        ids(&started(secs(11), 10).await.expect("not started")),
        BTreeSet::from([old_start.id, new_start.id, born.id])
    );
    assert_eq!(started(secs(11), 1).await.expect("not started").len(), 1, "at most the limit");
    assert!(started(t0(), 10).await.expect("not started").is_empty(), "created before, strictly");
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn the_census_of_states_and_outbox_backlog_covers_every_saga_in_both_stores() {
    let (db, mongo) = store("gauges").await;
    let memory = orchestrator::store::memory::MemoryStore::new();
    let mut running_old = settled(0, Phase::Running { step: 1, attempt: 2 }, None);
    running_old.state_since = secs(-30);
    let mut running_new = saga(3, Phase::Running { step: 0, attempt: 1 }, None);
    running_new.state_since = secs(20);
    let mut parked = settled(5, Phase::Failed, None);
    parked.state_since = secs(-3600);
    let mut log_only = settled(1, Phase::Completed, None);
    log_only.pending_log.push(log_entry(log_only.id, 4, "unflushed"));
    // Written at secs(2), like the others; this one still within its settling time at the cut-off.
    let mut recent = saga(4, Phase::Running { step: 2, attempt: 1 }, None);
    recent.updated_at = secs(10);
    let sagas = [&running_old, &running_new, &parked, &log_only, &saga(2, Phase::Completed, None), &recent];
    let cut_off = secs(5);
    for store in [&mongo as &dyn SagaStore, &memory] {
        assert_eq!(store.census(cut_off).await.expect("census"), Default::default());
        for saga in sagas {
            store.insert(saga).await.expect("insert");
        }
        let census = store.census(cut_off).await.expect("census");
        let expected = orchestrator::gauges::summarize(sagas.iter().map(|s| (s.state.phase.name(), s.state_since)));
        assert_eq!(census.states, expected, "{store:?}");
        assert_eq!((census.states.count("RUNNING"), census.states.count("COMPLETED")), (3, 2), "{store:?}");
        assert_eq!(census.states.oldest_since("RUNNING"), Some(secs(-30)), "{store:?}");
        assert_eq!(census.backlog, 3, "{store:?}: outbox or timeline pending since before the cut-off");
        assert_eq!(store.census(secs(11)).await.expect("census").backlog, 4, "{store:?}: later, the recent one too");
        store.clear_pending(running_new.id, running_new.version).await.expect("clear");
        assert_eq!(store.census(cut_off).await.expect("census").backlog, 2, "{store:?}");
    }
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn personal_data_is_stored_apart_and_only_once() {
    let (db, store) = store("pii").await;
    let saga = saga(0, Phase::Started, None);
    store.insert(&saga).await.expect("insert the saga");
    let (with_line2, without) = (pii(Some("Flat 3")), pii(None));
    let other = Uuid::now_v7();
    store.insert_pii(saga.id, &with_line2).await.expect("insert the personal data");
    store.insert_pii(other, &without).await.expect("insert other personal data");

    assert_eq!(store.get_pii(saga.id).await.expect("get"), Some(with_line2.clone()));
    assert_eq!(store.get_pii(other).await.expect("get"), Some(without));
    assert_eq!(store.get_pii(Uuid::now_v7()).await.expect("get"), None);
    let error = store.insert_pii(saga.id, &pii(None)).await.expect_err("stored already");
    assert!(matches!(error, Error::Duplicate { what: "order data", .. }), "{error}");
    assert_eq!(store.get_pii(saga.id).await.expect("get"), Some(with_line2), "the first is kept");

    // The retention sweep's read: the data still stored, by when it was stored.
    let stored_before = |at| store.pii_stored_before(at);
    assert_eq!(
        stored_before(later()).await.expect("read").into_iter().collect::<BTreeSet<_>>(),
        [saga.id, other].into()
    );
    assert!(stored_before(Utc::now() - TimeDelta::hours(1)).await.expect("read").is_empty(), "none that old");
    assert!(store.purge_pii(other).await.expect("purge"));
    assert!(!store.purge_pii(other).await.expect("purge again"), "once");
    assert_eq!(stored_before(later()).await.expect("read"), [saga.id], "purged data is not read");

    let raw = db.collection::<Document>("sagas").find_one(doc! { "_id": saga.id.to_string() }).await;
    let raw = raw.expect("read the raw saga").expect("the saga document").to_string();
    for secret in ["cust-42", "ada@example.com", "Ada Lovelace", "1 Main St", "tok_visa"] {
        assert!(!raw.contains(secret), "the saga document contains {secret}: {raw}");
    }
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn an_idempotency_key_is_claimed_once_and_then_names_its_order_and_request() {
    let (db, store) = store("idempotency").await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let key = "0123456789abcdef0123456789abcdef:order-7";

    assert_eq!(store.claim_idempotency_key(key, first, "hash-1").await.expect("claim"), Claim::New);
    let existing = Claim::Existing { order_id: first, request_hash: "hash-1".into() };
    assert_eq!(store.claim_idempotency_key(key, second, "hash-2").await.expect("claim again"), existing);
    assert_eq!(store.claim_idempotency_key(key, first, "hash-1").await.expect("claim again"), existing);
    let other = "fedcba9876543210fedcba9876543210:order-7";
    assert_eq!(store.claim_idempotency_key(other, second, "hash-2").await.expect("claim"), Claim::New);
    db.drop().await.expect("drop the test database");
}

/// The status stored for queries matches the phase (the `status_updated` index serves operator queries).
#[tokio::test]
async fn a_saga_stored_before_trace_contexts_were_kept_reads_without_one() {
    let (db, store) = store("no_trace").await;
    let saga = saga(0, Phase::Running { step: 0, attempt: 1 }, None);
    store.insert(&saga).await.expect("insert");
    let sagas = db.collection::<Document>("sagas");
    let filter = doc! { "_id": saga.id.to_string() };
    let raw = sagas.find_one(filter.clone()).await.expect("read").expect("the document");
    assert_eq!(raw.get_str("traceparent").ok(), saga.traceparent.as_deref(), "stored as the W3C text");
    sagas.update_one(filter, doc! { "$unset": { "traceparent": "" } }).await.expect("remove the field");
    let old = get(&store, saga.id).await;
    db.drop().await.expect("drop the test database");
    assert_eq!(old.traceparent, None);
    assert_eq!(SagaRecord { traceparent: saga.traceparent.clone(), ..old }, saga, "everything else as stored");
}

#[tokio::test]
async fn the_saga_document_carries_its_state_and_status_for_queries() {
    let (db, store) = store("status").await;
    let saga = saga(0, Phase::Compensated, None);
    store.insert(&saga).await.expect("insert");
    let raw = db.collection::<Document>("sagas").find_one(doc! { "_id": saga.id.to_string() }).await;
    let raw = raw.expect("read").expect("the document");
    assert_eq!(raw.get_str("state").expect("state"), "COMPENSATED");
    assert_eq!(raw.get_str("status").expect("status"), OrderStatus::Cancelled.as_str());
    assert!(raw.get_bool("pending").expect("pending"));
    db.drop().await.expect("drop the test database");
}

/// Where a saga is stored: (in `sagas`, in `sagas_finished`), as versions.
async fn placement(db: &Database, id: Uuid) -> (Option<i64>, Option<i64>) {
    let version = |collection: &'static str| {
        let db = db.clone();
        async move {
            let found = db.collection::<Document>(collection).find_one(doc! { "_id": id.to_string() }).await;
            found.expect("read").map(|d| d.get_i64("version").expect("a version"))
        }
    };
    (version("sagas").await, version("sagas_finished").await)
}

#[tokio::test]
async fn a_saga_finished_for_good_leaves_the_live_sagas_once_settled_and_is_still_found_by_id() {
    let (db, mongo) = store("finished").await;
    let memory = orchestrator::store::memory::MemoryStore::new();
    for store in [&mongo as &dyn SagaStore, &memory] {
        let done = saga(2, Phase::Completed, None);
        let parked = saga(2, Phase::Failed, None);
        let running = saga(2, Phase::Running { step: 1, attempt: 1 }, None);
        for saga in [&done, &parked, &running] {
            store.insert(saga).await.expect("insert");
        }
        store.append_log(&done.pending_log).await.expect("append the timeline");
        for saga in [&done, &parked, &running] {
            assert!(!store.clear_pending(saga.id, 2).await.expect("clear at an old version"), "{store:?}");
            assert!(store.clear_pending(saga.id, 3).await.expect("clear"), "{store:?}");
        }

        // The finished saga is found by id, settled, but no scan of live sagas sees it.
        let mut expected = done.clone();
        expected.outbox.clear();
        expected.pending_log.clear();
        assert_eq!(store.get(done.id).await.expect("get"), Some(expected.clone()), "{store:?}");
        let live = store.census(secs(100)).await.expect("census").states;
        assert_eq!((live.count("COMPLETED"), live.count("FAILED"), live.count("RUNNING")), (0, 1, 1), "{store:?}");
        let finished = store.finished_census(later()).await.expect("finished census");
        assert_eq!((finished.count("COMPLETED"), finished.count("FAILED")), (1, 0), "{store:?}");
        assert_eq!(finished.oldest_since("COMPLETED"), Some(done.state_since), "{store:?}");
        assert!(store.recoverable(&[2], 10).await.expect("recoverable").is_empty(), "{store:?}");
        // Operators still find it; its timeline is whole.
        let listed = store.list(&Default::default(), 10).await.expect("list");
        assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), [done.id, parked.id, running.id], "by id");
        assert_eq!(listed[0], expected, "{store:?}");
        let completed = orchestrator::store::SagaFilter { state: Some("COMPLETED".into()), ..Default::default() };
        assert_eq!(ids(&store.list(&completed, 10).await.expect("list")), BTreeSet::from([done.id]));
        assert_eq!(store.timeline(done.id).await.expect("timeline"), done.pending_log, "{store:?}");
        // Settling it again (a duplicate settlement) says it is settled at that version only.
        assert!(store.clear_pending(done.id, 3).await.expect("clear again"), "{store:?}");
        assert!(!store.clear_pending(done.id, 4).await.expect("clear a version it never had"), "{store:?}");
        let newer = saga(2, Phase::Completed, None);
        assert!(matches!(store.insert(&newer).await, Ok(())), "another saga is new");

        // A late duplicate's note: the write brings it back among the live sagas, fenced by version.
        let mut noted = expected.clone();
        noted.version = 4;
        noted.pending_log.push(log_entry(done.id, 4, "duplicate reply ignored"));
        let error = store.replace(&noted, 2).await.expect_err("version 2 is gone");
        assert!(matches!(error, Error::VersionConflict { expected: 2, .. }), "{error}");
        store.replace(&noted, 3).await.expect("write the finished saga");
        assert_eq!(store.get(done.id).await.expect("get"), Some(noted.clone()), "the live copy wins");
        assert!(store.replace(&noted, 3).await.is_err(), "{store:?}: a second writer at version 3 is fenced");
        let recovered = store.recoverable(&[2], 10).await.expect("recoverable");
        assert_eq!(ids(&recovered), BTreeSet::from([done.id, newer.id]), "its note is unsettled work");
        assert!(store.clear_pending(done.id, 4).await.expect("settle the note"));
        let mut settled_note = noted.clone();
        settled_note.pending_log.clear();
        assert_eq!(store.get(done.id).await.expect("get"), Some(settled_note), "{store:?}");
        assert_eq!(store.finished_census(later()).await.expect("finished census").count("COMPLETED"), 1, "{store:?}");
        assert_eq!(tallied(store).await, counts(&[("COMPLETED", 1)]), "{store:?}: counted once, as it first moved");
        assert_eq!(ids(&store.recoverable(&[2], 10).await.expect("recoverable")), BTreeSet::from([newer.id]));
    }
    let (done_live, done_finished) = {
        let listed = mongo.list(&Default::default(), 10).await.expect("list");
        let done = listed.iter().find(|s| s.version == 4).expect("the noted saga");
        placement(&db, done.id).await
    };
    assert_eq!((done_live, done_finished), (None, Some(4)), "moved whole, once");
    assert_eq!(memory.sizes(), (3, 1), "memory: the live parked, running and newer sagas; one finished");
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn a_move_to_the_finished_sagas_stopped_half_way_is_completed_by_the_next_settlement() {
    let (db, store) = store("finished_half_way").await;
    let done = settled(1, Phase::Compensated, None);
    store.insert(&done).await.expect("insert");
    // Stopped after the finished copy was written, before the live one was deleted, one version back.
    let live = db.collection::<Document>("sagas").find_one(doc! { "_id": done.id.to_string() }).await;
    let mut older = live.expect("read").expect("the live saga");
    older.insert("version", 2_i64);
    db.collection::<Document>("sagas_finished").insert_one(&older).await.expect("a stale finished copy");
    assert_eq!(placement(&db, done.id).await, (Some(3), Some(2)));

    assert_eq!(get(&store, done.id).await, done, "reads take the live copy");
    let listed = store.list(&Default::default(), 10).await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&done), "listed once, live");
    assert!(store.clear_pending(done.id, 3).await.expect("settle"));
    assert_eq!(placement(&db, done.id).await, (None, Some(3)), "moved, the newer copy kept");
    assert_eq!(get(&store, done.id).await, done);
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn finished_sagas_move_in_batches_and_one_that_moved_on_stays_live() {
    let (db, mongo) = store("move_finished").await;
    let memory = orchestrator::store::memory::MemoryStore::new();
    for store in [&mongo as &dyn SagaStore, &memory] {
        let (a, b, moved_on) =
            (saga(0, Phase::Completed, None), saga(1, Phase::Compensated, None), saga(2, Phase::Resolved, None));
        for saga in [&a, &b, &moved_on] {
            store.insert(saga).await.expect("insert");
        }
        // Another writer took `moved_on` to version 4 (a late note) before the batch.
        let mut noted = moved_on.clone();
        noted.version = 4;
        store.replace(&noted, 3).await.expect("the later write");

        // Earlier settlements appended the first two entries of `a`; the third is in its document only.
        let (first, second) = (log_entry(a.id, 1, "started"), log_entry(a.id, 2, "running"));
        store.append_log(&[first.clone(), second.clone()]).await.expect("append");

        let before = Utc::now() - TimeDelta::milliseconds(1);
        let moved = store.move_finished(&[a.clone(), b.clone(), moved_on.clone()]).await.expect("move");
        assert_eq!(moved.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([a.id, b.id]), "{store:?}");
        // The finished copy has no outbox and keeps the entries not in the log, where the timeline reads them.
        let cleared = |s: &SagaRecord| {
            let mut s = s.clone();
            s.outbox.clear();
            s
        };
        assert_eq!(store.get(a.id).await.expect("get"), Some(cleared(&a)), "{store:?}");
        let third = a.pending_log[0].clone();
        let timeline = store.timeline(a.id).await.expect("timeline");
        assert_eq!(timeline, [first, second.clone(), third.clone()], "{store:?}: whole, in order");
        assert_eq!(store.log_entry(a.id, 3).await.expect("entry"), Some(third), "{store:?}: from the finished copy");
        assert_eq!(store.log_entry(a.id, 2).await.expect("entry"), Some(second), "{store:?}: from the log");
        assert_eq!(store.log_entry(a.id, 4).await.expect("entry"), None, "{store:?}");
        assert_eq!(store.get(moved_on.id).await.expect("get"), Some(noted.clone()), "{store:?}: the live copy");
        assert_eq!(ids(&store.recoverable(&[0, 1, 2], 10).await.expect("recoverable")), BTreeSet::from([moved_on.id]));
        let finished = store.finished_census(later()).await.expect("finished census");
        assert_eq!((finished.count("COMPLETED"), finished.count("COMPENSATED")), (1, 1), "{store:?}");
        let earlier = store.finished_census(before).await.expect("finished census");
        assert_eq!(earlier.total(), 0, "{store:?}: a census up to before they moved counts none of them");

        // A retried batch (it failed after the copies were written) changes nothing and says the same.
        let again = store.move_finished(&[a.clone(), b.clone()]).await.expect("move again");
        assert_eq!(again.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([a.id, b.id]), "{store:?}");
        // The note, settled, moves the saga at version 4; an old batch of it at 3 never replaces that.
        let moved = store.move_finished(std::slice::from_ref(&noted)).await.expect("move the noted saga");
        assert_eq!(moved, [moved_on.id]);
        assert_eq!(store.move_finished(std::slice::from_ref(&moved_on)).await.expect("stale batch"), [moved_on.id]);
        assert_eq!(store.get(moved_on.id).await.expect("get"), Some(cleared(&noted)), "{store:?}: version 4 kept");
        assert!(store.move_finished(&[]).await.expect("nothing").is_empty());
        let expected = counts(&[("COMPLETED", 1), ("COMPENSATED", 1), ("RESOLVED", 1)]);
        assert_eq!(tallied(store).await, expected, "{store:?}: each counted once, as it first moved");
    }
    assert_eq!(memory.sizes(), (0, 3));
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn a_recorded_census_of_finished_sagas_round_trips_and_the_latest_wins() {
    let (db, store) = store("recorded_census").await;
    assert_eq!(store.recorded_finished_census().await.expect("read"), None);
    let mut states = orchestrator::store::StateSummary::default();
    states.add("COMPLETED", precise(1));
    states.add("RESOLVED", precise(2));
    let first = orchestrator::store::RecordedCensus {
        states: states.clone(),
        at: precise(10),
        took_ms: 280_000,
        cutoff: Some(secs(-60)),
        counted_at: Some(precise(10)),
    };
    store.record_finished_census(&first).await.expect("record");
    assert_eq!(store.recorded_finished_census().await.expect("read"), Some(first.clone()));
    states.add("COMPLETED", precise(0));
    let second = orchestrator::store::RecordedCensus { at: precise(20), cutoff: Some(secs(0)), states, ..first };
    store.record_finished_census(&second).await.expect("record again");
    assert_eq!(store.recorded_finished_census().await.expect("read"), Some(second));

    // As an earlier version recorded it: no cutoff, no time of the count one by one.
    let old = doc! { "_id": "finished", "census": { "states": { "counts": { "COMPLETED": 4_i64 }, "oldest": {} },
    "at": "2026-01-01T00:00:10Z", "took_ms": 5_i64 } };
    db.collection::<Document>("saga_counts").replace_one(doc! { "_id": "finished" }, old).await.expect("write");
    let read = store.recorded_finished_census().await.expect("read").expect("an earlier version's census");
    assert_eq!((read.states.count("COMPLETED"), read.cutoff, read.counted_at), (4, None, None));
    db.drop().await.expect("drop the test database");
}

/// Instances count the finished copies they make and write the counts down where every instance reads them:
/// each copy once, whichever instance made it, and not again when an instance moves it again.
#[tokio::test]
async fn finished_sagas_are_counted_once_by_the_instance_that_moved_them() {
    let (db, first) = store("finished_tallies").await;
    let second = MongoStore::connect(db.client(), db.name()).await.expect("a second instance's store");
    assert!(first.finished_tallies().await.expect("tallies").is_empty());
    assert_eq!(first.flush_finished_tally().await.expect("nothing to write"), None);

    let (a, b, c) =
        (saga(0, Phase::Completed, None), saga(1, Phase::Compensated, None), saga(2, Phase::Completed, None));
    for saga in [&a, &b, &c] {
        first.insert(saga).await.expect("insert");
    }
    let started = Utc::now();
    assert_eq!(first.move_finished(&[a.clone(), b.clone()]).await.expect("move").len(), 2);
    assert!(second.clear_pending(c.id, 3).await.expect("settle and move"));
    // Moved again by the other instance (a retry after a lost answer): no new copy, nothing counted.
    assert_eq!(second.move_finished(std::slice::from_ref(&a)).await.expect("move again"), [a.id]);
    let written = first.flush_finished_tally().await.expect("write down").expect("a minute written");
    assert_eq!(written, orchestrator::store::minute_of(started));
    assert_eq!(first.flush_finished_tally().await.expect("nothing more"), None, "written once");
    assert_eq!(tallied(&first).await, counts(&[("COMPLETED", 1), ("COMPENSATED", 1)]), "the first alone so far");
    assert_eq!(second.flush_finished_tally().await.expect("write down"), Some(written));
    assert_eq!(tallied(&second).await, counts(&[("COMPLETED", 2), ("COMPENSATED", 1)]), "both, summed per minute");
    let tallies = first.finished_tallies().await.expect("tallies");
    assert!(tallies.iter().all(|t| t.minute == written), "{tallies:?}");

    // A copy an earlier version made (no time of making) is counted by every census.
    let old = saga(0, Phase::Resolved, None);
    let copy = doc! {
        "_id": old.id.to_string(), "version": 3_i64, "state": "RESOLVED",
        "state_since": bson::DateTime::from_chrono(old.state_since),
    };
    db.collection::<Document>("sagas_finished").insert_one(copy).await.expect("an earlier version's copy");
    let census = first.finished_census(started - TimeDelta::minutes(1)).await.expect("census");
    assert_eq!((census.count("RESOLVED"), census.total()), (1, 1), "only the copy without a time");

    // Folded tallies are forgotten by minute.
    first.forget_finished_tallies(written).await.expect("forget before");
    assert_eq!(first.finished_tallies().await.expect("tallies").len(), 1, "the minute itself stays");
    first.forget_finished_tallies(written + TimeDelta::minutes(1)).await.expect("forget");
    assert!(first.finished_tallies().await.expect("tallies").is_empty());
    db.drop().await.expect("drop the test database");
}

/// The outbox and the unsettled timeline entries are stored as JSON text (FerretDB decodes one string faster
/// than nested documents); a saga an earlier version stored with arrays of documents reads back the same.
#[tokio::test]
async fn the_outbox_and_pending_timeline_are_stored_as_text_and_read_also_as_arrays() {
    let (db, store) = store("json_text").await;
    let saga = saga(2, Phase::Compensating { step: 1, attempt: 1 }, None);
    store.insert(&saga).await.expect("insert");
    let raw = db.collection::<Document>("sagas");
    let stored = raw.find_one(doc! { "_id": saga.id.to_string() }).await.expect("read").expect("stored");
    let text = |field: &str| stored.get_str(field).unwrap_or_else(|e| panic!("{field} is not text: {e}")).to_owned();
    let outbox: Vec<OutboxEntry> = serde_json::from_str(&text("outbox")).expect("the outbox is JSON");
    let pending: Vec<LogEntry> = serde_json::from_str(&text("pending_log")).expect("the timeline is JSON");
    assert_eq!((outbox, pending), (saga.outbox.clone(), saga.pending_log.clone()));

    // As an earlier version wrote it: arrays of documents.
    let arrays = doc! { "$set": {
        "outbox": bson::serialize_to_bson(&saga.outbox).expect("BSON"),
        "pending_log": bson::serialize_to_bson(&saga.pending_log).expect("BSON"),
    } };
    raw.update_one(doc! { "_id": saga.id.to_string() }, arrays).await.expect("rewrite as arrays");
    assert_eq!(get(&store, saga.id).await, saga);
    let entry = store.log_entry(saga.id, 3).await.expect("read the pending entry");
    assert_eq!(entry, saga.pending_log.first().cloned());

    // The next write stores text again.
    let mut next = saga.clone();
    next.version += 1;
    store.replace(&next, saga.version).await.expect("replace");
    let stored = raw.find_one(doc! { "_id": saga.id.to_string() }).await.expect("read").expect("stored");
    assert!(stored.get_str("pending_log").is_ok(), "{stored}");
    assert_eq!(store.log_entry(saga.id, 3).await.expect("read"), saga.pending_log.first().cloned());
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn listings_keep_the_first_sagas_in_order_when_many_more_match_than_the_limit() {
    let (db, store) = store("first_sorted").await;
    // Ids ascend with creation; written in a scrambled order, a third of them finished and moved, each
    // finished one at a different time.
    let sagas: Vec<SagaRecord> = (0..45)
        .map(|i| {
            let phase = if i % 3 == 0 { Phase::Completed } else { Phase::Running { step: 1, attempt: 1 } };
            let mut saga = settled(i % 6, phase, None);
            saga.updated_at = secs(i64::from((i * 17) % 45));
            saga
        })
        .collect();
    for i in (0..45).map(|i| (i * 29) % 45) {
        store.insert(&sagas[i]).await.expect("insert");
        if sagas[i].state.phase == Phase::Completed {
            assert!(store.clear_pending(sagas[i].id, 3).await.expect("move"), "finished and moved");
        }
    }

    let mut listed = Vec::new();
    let mut filter = orchestrator::store::SagaFilter::default();
    loop {
        let page = store.list(&filter, 7).await.expect("a page");
        assert!(page.len() <= 7, "{} sagas in a page of 7", page.len());
        let Some(last) = page.last() else { break };
        filter.after = Some(last.id);
        listed.extend(page.iter().map(|s| s.id));
    }
    assert_eq!(listed, sagas.iter().map(|s| s.id).collect::<Vec<_>>(), "every saga once, by id");
    db.drop().await.expect("drop the test database");
}
