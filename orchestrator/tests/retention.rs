//! The personal-data retention sweep: it deletes the personal data of orders that finished for good longer
//! ago than the retention period, keeps that of parked and running orders, and is cheap to repeat.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use orchestrator::retention::{Retention, RetentionSettings};
use orchestrator::store::SagaStore;
use prometheus_client::metrics::counter::Counter;
use saga_defs::Phase;
use uuid::Uuid;

use common::Harness;

const KEEP: Duration = Duration::from_secs(3600);

/// Places an order and moves its saga to `phase`, last changed `age` ago.
async fn order_in(h: &Harness, phase: Phase, age: TimeDelta) -> Uuid {
    place_in(h, phase, age, false).await
}

/// The same, with its outbox and timeline settled if `settled`.
async fn place_in(h: &Harness, phase: Phase, age: TimeDelta, settled: bool) -> Uuid {
    let id = h.place().await;
    let mut saga = h.record(id).await;
    let version = saga.version;
    saga.version += 1;
    saga.state.phase = phase;
    saga.updated_at = h.now() - age;
    if settled {
        saga.outbox.clear();
        saga.pending_log.clear();
    }
    h.store.replace(&saga, version).await.expect("replace");
    id
}

#[tokio::test]
async fn personal_data_of_orders_finished_longer_ago_than_the_period_is_deleted_once() {
    let h = Harness::new();
    let now = TimeDelta::zero();
    let old_completed = order_in(&h, Phase::Completed, now).await;
    let old_cancelled = order_in(&h, Phase::Compensated, now).await;
    let old_resolved = order_in(&h, Phase::Resolved, now).await;
    let old_parked = order_in(&h, Phase::Failed, now).await;
    let old_running = order_in(&h, Phase::Running { step: 1, attempt: 1 }, now).await;
    // Placed long ago, finished a few minutes ago (an operator resolved it late).
    let late_resolved = order_in(&h, Phase::Failed, now).await;
    h.clock.advance(TimeDelta::minutes(115));
    let recent = order_in(&h, Phase::Completed, now).await;
    h.clock.advance(TimeDelta::minutes(5));
    let mut resolved = h.record(late_resolved).await;
    let version = resolved.version;
    (resolved.version, resolved.state.phase, resolved.updated_at) = (version + 1, Phase::Resolved, h.now());
    h.store.replace(&resolved, version).await.expect("resolve");

    let purged = Counter::default();
    let store: Arc<dyn SagaStore> = h.store.clone();
    let retention =
        Retention::new(store, h.clock.clone(), RetentionSettings { keep_for: KEEP, interval: KEEP }, purged.clone());
    assert_eq!(retention.sweep().await.expect("sweep"), 3);
    for id in [old_completed, old_cancelled, old_resolved] {
        assert_eq!(h.store.get_pii(id).await.expect("read"), None, "purged {id}");
    }
    for id in [old_parked, old_running, late_resolved, recent] {
        assert!(h.store.get_pii(id).await.expect("read").is_some(), "kept {id}");
    }
    assert_eq!(retention.sweep().await.expect("sweep again"), 0, "nothing twice");

    h.clock.advance(TimeDelta::minutes(61));
    assert_eq!(retention.sweep().await.expect("sweep later"), 2, "the recent and late orders' period ended");
    for id in [recent, late_resolved] {
        assert_eq!(h.store.get_pii(id).await.expect("read"), None, "purged {id}");
    }
    assert_eq!(purged.get(), 5);
}

#[tokio::test]
async fn personal_data_of_an_order_that_was_never_created_is_deleted_after_the_period() {
    let h = Harness::new();
    let orphan = Uuid::now_v7();
    let pii = h.store.get_pii(h.place().await).await.expect("read").expect("an order's personal data");
    h.store.insert_pii(orphan, &pii).await.expect("stored before its saga, which never was");
    let store: Arc<dyn SagaStore> = h.store.clone();
    let retention = Retention::new(
        store,
        h.clock.clone(),
        RetentionSettings { keep_for: KEEP, interval: KEEP },
        Counter::default(),
    );
    assert_eq!(retention.sweep().await.expect("sweep"), 0, "within the period");
    h.clock.advance(TimeDelta::hours(2));
    assert_eq!(retention.sweep().await.expect("sweep"), 1, "the orphan; the placed order is still running");
    assert_eq!(h.store.get_pii(orphan).await.expect("read"), None);
}

#[tokio::test]
async fn finished_sagas_an_earlier_version_left_among_the_live_ones_are_moved_once_unchanged_for_an_hour() {
    let h = Harness::new();
    // Written as an earlier version left them: finished, settled, still live.
    let old = place_in(&h, Phase::Completed, TimeDelta::hours(2), true).await;
    let old_cancelled = place_in(&h, Phase::Compensated, TimeDelta::hours(2), true).await;
    let recent = place_in(&h, Phase::Completed, TimeDelta::minutes(5), true).await;
    let parked = place_in(&h, Phase::Failed, TimeDelta::hours(2), true).await;
    let running = place_in(&h, Phase::Running { step: 1, attempt: 1 }, TimeDelta::hours(2), true).await;
    for id in [old, old_cancelled, recent, parked, running] {
        let saga = h.record(id).await;
        assert!(!saga.has_pending(), "{id} is settled");
    }
    assert_eq!(h.store.sizes(), (5, 0));

    let store: Arc<dyn SagaStore> = h.store.clone();
    let settings = RetentionSettings { keep_for: KEEP, interval: KEEP };
    let retention = Retention::new(store, h.clock.clone(), settings, Counter::default());
    assert_eq!(retention.move_unmoved_finished().await.expect("move"), 2);
    assert_eq!(h.store.sizes(), (3, 2), "the two old finished sagas moved");
    for id in [old, old_cancelled, recent, parked, running] {
        assert_eq!(h.store.get(id).await.expect("get").map(|s| s.id), Some(id), "{id} is still found");
    }
    assert_eq!(retention.move_unmoved_finished().await.expect("move again"), 0, "nothing twice");
    h.clock.advance(TimeDelta::hours(1));
    assert_eq!(retention.move_unmoved_finished().await.expect("move later"), 1, "the recent one's hour passed");
    assert_eq!(h.store.sizes(), (2, 3));
}
