//! Per-step latency from the sagas' timelines (`GET /admin/sagas/{id}`).
//!
//! A step's latency is the time from the timeline entry whose transition sent the step's command (the
//! transition is stored with its outbox, then the command published) to the entry that applied the
//! matching reply (same command, step and attempt): command stored, published, consumed and handled by the
//! participant, reply published, consumed and applied. Both times are the orchestrator's clock. A
//! compensation is reported as `<step>.compensation`, as in the `saga_step_duration_seconds` metric.

use std::collections::HashMap;
use std::time::Duration;

use orchestrator::model::{EntryKind, LogEntry};
use proto_events::commands::CommandKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Api;
use crate::latency::Summary;

/// The latency of one step over the sampled sagas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLatency {
    /// The step's name, such as `reserve_stock` or `reserve_stock.compensation`.
    pub step: String,
    /// Its latency.
    pub latency: Summary,
}

/// Per-step latencies of a point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Sagas whose timeline was read.
    pub sampled_sagas: usize,
    /// Sagas whose timeline could not be read (each read has a time limit).
    pub unreadable: usize,
    /// The first read error, if any.
    pub first_error: Option<String>,
    /// Per step, in the definition's order, compensations after the steps.
    pub steps: Vec<StepLatency>,
}

/// The report's name of each command: the step it does, or `<step>.compensation`.
#[derive(Debug, Clone)]
pub struct StepNames {
    names: Vec<(CommandKind, String)>,
}

impl Default for StepNames {
    /// The names of the order saga (`order_fulfilment`).
    fn default() -> Self {
        let definition = saga_defs::order_fulfilment(Duration::from_secs(10));
        let mut names: Vec<(CommandKind, String)> =
            definition.steps.iter().map(|s| (s.command, s.name.to_owned())).collect();
        for step in &definition.steps {
            if let Some(compensation) = step.compensation {
                names.push((compensation, format!("{}.compensation", step.name)));
            }
        }
        Self { names }
    }
}

impl StepNames {
    fn name(&self, kind: CommandKind) -> Option<&str> {
        self.names.iter().find(|(k, _)| *k == kind).map(|(_, n)| n.as_str())
    }

    fn position(&self, name: &str) -> usize {
        self.names.iter().position(|(_, n)| n == name).unwrap_or(usize::MAX)
    }
}

/// The command-to-reply latencies in one saga's timeline, as (step name, latency).
pub fn step_latencies(timeline: &[LogEntry], names: &StepNames) -> Vec<(String, Duration)> {
    let mut sent: HashMap<(CommandKind, u16, u32), chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut latencies = Vec::new();
    for entry in timeline {
        if entry.kind != EntryKind::Ignored
            && let Some(received) = &entry.received
            && let Some(kind) = CommandKind::from_reply_type(&received.message_type)
            && let Some(at) = sent.remove(&(kind, received.step, received.attempt))
            && let Some(name) = names.name(kind)
        {
            latencies.push((name.to_owned(), (entry.at - at).to_std().unwrap_or_default()));
        }
        for message in &entry.sent {
            if let Some(kind) = CommandKind::from_message_type(&message.message_type) {
                sent.entry((kind, message.step, message.attempt)).or_insert(entry.at);
            }
        }
    }
    latencies
}

/// Reads the timelines of `saga_ids` (one at a time, so as not to add load) and summarises per step.
pub async fn sample(api: &Api, operator_token: &str, saga_ids: &[Uuid]) -> StepReport {
    let names = StepNames::default();
    let mut report = StepReport::default();
    let mut per_step: HashMap<String, Vec<Duration>> = HashMap::new();
    for id in saga_ids {
        match api.timeline(operator_token, *id).await {
            Ok(timeline) => {
                report.sampled_sagas += 1;
                for (name, latency) in step_latencies(&timeline, &names) {
                    per_step.entry(name).or_default().push(latency);
                }
            }
            Err(e) => {
                report.unreadable += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let mut steps: Vec<StepLatency> = per_step
        .into_iter()
        .filter_map(|(step, samples)| Summary::of(&samples).map(|latency| StepLatency { step, latency }))
        .collect();
    steps.sort_by_key(|s| names.position(&s.step));
    report.steps = steps;
    report
}

/// Up to `max` of `ids`, spread evenly over them (every k-th).
pub fn spread<T: Copy>(ids: &[T], max: usize) -> Vec<T> {
    if ids.len() <= max {
        return ids.to_vec();
    }
    if max == 0 {
        return Vec::new();
    }
    (0..max).map(|i| ids[i * ids.len() / max]).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeDelta, Utc};
    use orchestrator::model::{Received, Sent};

    use super::*;

    fn entry(
        seq: u64,
        at: DateTime<Utc>,
        kind: EntryKind,
        received: Option<(&str, u16, u32)>,
        sent: &[(&str, u16, u32)],
    ) -> LogEntry {
        LogEntry {
            saga_id: Uuid::nil(),
            seq,
            at,
            kind,
            from: "RUNNING".into(),
            to: "RUNNING".into(),
            step: None,
            attempt: None,
            received: received.map(|(message_type, step, attempt)| Received {
                message_id: Uuid::nil(),
                message_type: message_type.into(),
                topic: "saga.reply".into(),
                partition: 0,
                offset: 0,
                step,
                attempt,
                outcome: None,
            }),
            sent: sent
                .iter()
                .map(|(message_type, step, attempt)| Sent {
                    message_id: Uuid::nil(),
                    message_type: (*message_type).into(),
                    topic: "saga.cmd".into(),
                    step: *step,
                    attempt: *attempt,
                    partition: None,
                    offset: None,
                })
                .collect(),
            note: None,
        }
    }

    #[test]
    fn each_command_is_paired_with_its_reply() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let ms = |n| t0 + TimeDelta::milliseconds(n);
        let timeline = vec![
            entry(1, ms(0), EntryKind::Created, None, &[]),
            entry(2, ms(5), EntryKind::Transition, Some(("saga.start", 0, 1)), &[("inventory.reserve", 0, 1)]),
            entry(
                3,
                ms(25),
                EntryKind::Transition,
                Some(("inventory.reserve.reply", 0, 1)),
                &[("payment.charge", 1, 1)],
            ),
            // A stale duplicate reply is ignored and pairs with nothing.
            entry(4, ms(30), EntryKind::Ignored, Some(("inventory.reserve.reply", 0, 1)), &[]),
            // The first charge times out; attempt 2 is answered.
            entry(5, ms(100), EntryKind::Transition, None, &[("payment.charge", 1, 2)]),
            entry(
                6,
                ms(140),
                EntryKind::Transition,
                Some(("payment.charge.reply", 1, 2)),
                &[("inventory.release", 0, 1)],
            ),
            entry(7, ms(150), EntryKind::Transition, Some(("inventory.release.reply", 0, 1)), &[]),
        ];
        let latencies = step_latencies(&timeline, &StepNames::default());
        let named: Vec<(&str, u128)> = latencies.iter().map(|(n, d)| (n.as_str(), d.as_millis())).collect();
        assert_eq!(named, vec![("reserve_stock", 20), ("charge_payment", 40), ("reserve_stock.compensation", 10)]);
    }

    #[test]
    fn spreading_keeps_the_first_and_stays_within_the_limit() {
        let ids: Vec<u32> = (0..1000).collect();
        let picked = spread(&ids, 200);
        assert_eq!(picked.len(), 200);
        assert_eq!((picked[0], picked[1], picked[199]), (0, 5, 995));
        assert_eq!(spread(&ids[..3], 200), vec![0, 1, 2]);
        assert!(spread(&ids, 0).is_empty());
    }

    #[test]
    fn steps_follow_the_definition() {
        let names = StepNames::default();
        assert_eq!(names.name(CommandKind::ShippingCreate), Some("create_shipment"));
        assert_eq!(names.name(CommandKind::PaymentRefund), Some("charge_payment.compensation"));
        assert!(names.position("reserve_stock") < names.position("create_shipment"));
        assert!(names.position("create_shipment") < names.position("reserve_stock.compensation"));
    }
}
