//! The messages on the topics must agree with the timelines (the outbox's promise): every lifecycle event
//! on `saga.event` stands for a transition that was written (same version, same states), and every
//! written transition's event was published; every command on a command topic was sent by a written
//! transition (its message id is on the saga's timeline), and every command a timeline sent was published.

use std::collections::{BTreeMap, BTreeSet};

use orchestrator::model::{EntryKind, LogEntry};
use proto_events::{Body, Message, Participant, topics};
use uuid::Uuid;

use crate::kafka::Kafka;

/// Checks the topics against `timelines`; the error names the saga.
pub fn match_timelines(kafka: &Kafka, timelines: &BTreeMap<Uuid, Vec<LogEntry>>) -> Result<(), (Uuid, String)> {
    events_match(kafka, timelines)?;
    commands_match(kafka, timelines)
}

fn events_match(kafka: &Kafka, timelines: &BTreeMap<Uuid, Vec<LogEntry>>) -> Result<(), (Uuid, String)> {
    let mut published: BTreeSet<(Uuid, u64)> = BTreeSet::new();
    for record in kafka.all(topics::EVENT) {
        let saga_id = record.saga_id;
        let message =
            Message::decode(&record.bytes).map_err(|e| (saga_id, format!("an event does not decode: {e}")))?;
        let Body::Transitioned(event) = message.body else {
            return Err((saga_id, format!("{} on {}", message.body.message_type(), topics::EVENT)));
        };
        let entry = timelines.get(&saga_id).and_then(|t| t.iter().find(|e| e.seq == event.version));
        let written =
            entry.is_some_and(|e| e.kind == EntryKind::Transition && e.from == event.from && e.to == event.to);
        if !written {
            let what = format!("event {} -> {} at version {}", event.from, event.to, event.version);
            return Err((saga_id, format!("{what} was published, but the timeline has {entry:?}")));
        }
        published.insert((saga_id, event.version));
    }
    for (saga_id, timeline) in timelines {
        let transitions = timeline.iter().filter(|e| e.kind == EntryKind::Transition);
        if let Some(missing) = transitions.map(|e| e.seq).find(|seq| !published.contains(&(*saga_id, *seq))) {
            return Err((*saga_id, format!("the event of the transition at version {missing} was never published")));
        }
    }
    Ok(())
}

fn commands_match(kafka: &Kafka, timelines: &BTreeMap<Uuid, Vec<LogEntry>>) -> Result<(), (Uuid, String)> {
    let command_topics: BTreeSet<&str> = Participant::ALL.iter().map(|p| p.command_topic()).collect();
    let mut sent: BTreeMap<Uuid, (Uuid, &str)> = BTreeMap::new();
    for (saga_id, timeline) in timelines {
        for s in timeline.iter().flat_map(|e| &e.sent).filter(|s| command_topics.contains(s.topic.as_str())) {
            sent.insert(s.message_id, (*saga_id, s.message_type.as_str()));
        }
    }
    let mut published = BTreeSet::new();
    for topic in &command_topics {
        for record in kafka.all(topic) {
            if sent.get(&record.message_id).map(|(saga, _)| *saga) != Some(record.saga_id) {
                let detail = format!("command {} on {topic} was sent by no written transition", record.message_id);
                return Err((record.saga_id, detail));
            }
            published.insert(record.message_id);
        }
    }
    match sent.iter().find(|(id, _)| !published.contains(*id)) {
        Some((id, (saga_id, kind))) => {
            Err((*saga_id, format!("{kind} {id} is on the timeline but was never published")))
        }
        None => Ok(()),
    }
}
