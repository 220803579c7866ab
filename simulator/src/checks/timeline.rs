//! A saga's timeline must be a consistent history: numbered 1, 2, 3 … up to the saga's version (versions
//! strictly increase, one per write), starting with its creation, each entry starting where the previous
//! one ended, ignored messages changing nothing, every transition an edge the definition allows, and the
//! last entry where the saga is.
//!
//! The allowed edges are written out here, independently of the saga core, from the definition (which
//! steps have a compensation, which is the last, which are retriable): the core is what is being checked.
//! The unit tests below walk the real core at random and check that every edge it takes is listed, so the
//! list is never stricter than the machine.

use orchestrator::model::{EntryKind, LogEntry, SagaRecord};
use saga_defs::{Definition, Phase, StepKind};

/// A state on the timeline: its name, and its step and attempt if it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At<'a> {
    /// `RUNNING`, ...
    pub name: &'a str,
    /// The step, if at one.
    pub step: Option<u16>,
    /// The attempt, if at a step.
    pub attempt: Option<u32>,
}

impl<'a> At<'a> {
    fn after(entry: &'a LogEntry) -> Self {
        Self { name: &entry.to, step: entry.step, attempt: entry.attempt }
    }

    /// Where a saga in `phase` is.
    pub fn of(phase: Phase) -> At<'static> {
        let at = phase.step_attempt();
        At { name: phase.name(), step: at.map(|(s, _)| s), attempt: at.map(|(_, a)| a) }
    }

    fn step_attempt(&self) -> (u16, u32) {
        (self.step.unwrap_or(0), self.attempt.unwrap_or(0))
    }
}

/// The newest step at or before `from` that has a compensation: where compensation starts.
fn compensation_from(definition: &Definition, from: Option<u16>) -> Option<u16> {
    let from = from?;
    (0..=from).rev().find(|&i| definition.step(i).is_some_and(|s| s.compensation.is_some()))
}

/// Whether "compensate from `from`" leads to `to`: the first compensation, or COMPENSATED when none.
fn compensates_to(definition: &Definition, from: Option<u16>, to: At<'_>) -> bool {
    match (compensation_from(definition, from), to.name) {
        (Some(step), "COMPENSATING") => to.step_attempt() == (step, 1),
        (None, "COMPENSATED") => true,
        _ => false,
    }
}

/// Whether the definition lets a saga go from `from` to `to` in one transition. `parked` is where a
/// FAILED saga was parked from (operators resume it there).
pub fn allowed(definition: &Definition, from: At<'_>, to: At<'_>, parked: Option<At<'_>>) -> bool {
    let (s, a) = from.step_attempt();
    let (ts, ta) = to.step_attempt();
    let last = definition.len().saturating_sub(1);
    let retriable = definition.step(s).is_some_and(|d| d.kind == StepKind::Retriable);
    match (from.name, to.name) {
        // Started, or an operator's retry; an operator's compensation before the start.
        ("STARTED", "RUNNING") => (ts, ta) == (0, 1),
        ("STARTED", "COMPENSATED") => true,
        // The next step, or the next attempt (a zero back-off, or an operator's retry).
        ("RUNNING", "RUNNING") => (ts, ta) == (s + 1, 1) || (ts, ta) == (s, a + 1),
        ("RUNNING", "BACKOFF") => (ts, ta) == (s, a + 1),
        ("RUNNING", "COMPLETED") => s == last,
        // A business failure undoes the earlier steps; giving up (or an operator) this one too.
        ("RUNNING", "COMPENSATING" | "COMPENSATED") => {
            compensates_to(definition, Some(s), to) || compensates_to(definition, s.checked_sub(1), to)
        }
        ("RUNNING", "FAILED") => retriable,
        // The back-off is over (or an operator retries now), or an operator compensates.
        ("BACKOFF", "RUNNING") => (ts, ta) == (s, a),
        ("BACKOFF", "COMPENSATING" | "COMPENSATED") => compensates_to(definition, Some(s), to),
        ("COMPENSATING", "COMPENSATING") => (ts, ta) == (s, a + 1) || compensates_to(definition, s.checked_sub(1), to),
        ("COMPENSATING", "COMPENSATED") => compensates_to(definition, s.checked_sub(1), to),
        ("COMPENSATING", "COMPENSATION_BACKOFF") => (ts, ta) == (s, a + 1),
        ("COMPENSATING", "FAILED") => true,
        ("COMPENSATION_BACKOFF", "COMPENSATING") => (ts, ta) == (s, a),
        ("FAILED", "RESOLVED") => true,
        ("FAILED", _) => parked.is_some_and(|p| resumes(definition, p, to)),
        _ => false,
    }
}

/// Whether an operator's retry or compensation of a saga parked from `parked` leads to `to`.
fn resumes(definition: &Definition, parked: At<'_>, to: At<'_>) -> bool {
    let (s, a) = parked.step_attempt();
    match (parked.name, to.name) {
        ("RUNNING", "RUNNING") => to.step_attempt() == (s, a + 1),
        ("RUNNING", "COMPENSATING" | "COMPENSATED") => compensates_to(definition, Some(s), to),
        ("COMPENSATING", "COMPENSATING") => to.step_attempt() == (s, a + 1),
        _ => false,
    }
}

/// Checks the saga's timeline; the error says what is wrong, naming the entry.
pub fn consistent(saga: &SagaRecord, timeline: &[LogEntry], definition: &Definition) -> Result<(), String> {
    let numbers: Vec<u64> = timeline.iter().map(|e| e.seq).collect();
    if numbers != (1..=saga.version).collect::<Vec<u64>>() {
        return Err(format!("entries are numbered {numbers:?}, not 1 to the saga's version {}", saga.version));
    }
    let first = &timeline[0];
    if first.kind != EntryKind::Created || first.to != "STARTED" {
        return Err(format!("entry 1 is {:?} to {}, not the creation", first.kind, first.to));
    }
    let mut parked = None;
    for pair in timeline.windows(2) {
        let (before, entry) = (At::after(&pair[0]), &pair[1]);
        let after = At::after(entry);
        if entry.from != before.name {
            return Err(format!(
                "entry {} starts in {}, but entry {} ended in {}",
                entry.seq, entry.from, pair[0].seq, before.name
            ));
        }
        let fits = match entry.kind {
            EntryKind::Ignored => after == before,
            EntryKind::Transition => allowed(definition, before, after, parked),
            EntryKind::Created => false,
        };
        if !fits {
            return Err(format!("entry {}: {:?} {before:?} -> {after:?} is not allowed", entry.seq, entry.kind));
        }
        if after.name == "FAILED" && before.name != "FAILED" {
            parked = Some(before);
        }
    }
    let last = At::after(&timeline[timeline.len() - 1]);
    if last != At::of(saga.state.phase) {
        return Err(format!("the timeline ends in {last:?} but the saga is in {:?}", saga.state.phase));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta};
    use proto_events::{CommandKind, Reply};
    use saga_defs::{Action, OperatorAction, Resolution, SagaEvent, SagaState, apply, order_fulfilment};

    use super::*;
    use crate::rng::Rng;

    /// Every event that could reach a saga in `state` next: replies of each kind to what it waits for and
    /// to other steps, its timer, operators' actions.
    fn events(state: &SagaState, sent: Option<(u16, u32, CommandKind)>) -> Vec<SagaEvent> {
        let mut events = vec![SagaEvent::Start];
        let replies = [Reply::ok(), Reply::business("no"), Reply::transient("later")];
        if let Some((step, attempt, command)) = sent {
            for reply in &replies {
                events.push(SagaEvent::Reply { step, attempt, command, reply: reply.clone() });
            }
        }
        if let Some(deadline) = state.deadline {
            let (step, attempt, kind, due_at) = (deadline.step, deadline.attempt, deadline.kind, deadline.at);
            events.push(SagaEvent::Timer { step, attempt, kind, due_at });
        }
        // Weighted towards what exhausts a step's attempts (a transient failure, a timer), so that the
        // walk also reaches FAILED and what operators do from there.
        let exhausting: Vec<SagaEvent> = events
            .iter()
            .filter(|e| match e {
                SagaEvent::Reply { reply, .. } => reply == &Reply::transient("later"),
                SagaEvent::Timer { .. } => true,
                _ => false,
            })
            .cloned()
            .collect();
        for _ in 0..4 {
            events.extend(exhausting.iter().cloned());
        }
        for action in [
            OperatorAction::Retry,
            OperatorAction::Compensate,
            OperatorAction::Resolve { outcome: Resolution::Cancelled },
        ] {
            events.push(SagaEvent::Operator { action, reason: "simulated".to_owned() });
        }
        events
    }

    #[test]
    fn every_edge_the_saga_core_takes_is_allowed() {
        let definition = order_fulfilment(Duration::from_secs(10));
        let mut rng = Rng::new(2026);
        let mut now = DateTime::UNIX_EPOCH;
        let mut edges = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let mut state = SagaState::new();
            let mut sent = None;
            let mut parked = None;
            for _ in 0..300 {
                let choices = events(&state, sent);
                let event = rng.pick(&choices).expect("there are events").clone();
                now += TimeDelta::seconds(1);
                let (next, actions) = apply(&state, &event, &definition, now);
                if let Some(Action::Send { step, attempt, command }) = actions.first() {
                    sent = Some((*step, *attempt, *command));
                }
                if next.phase != state.phase {
                    let (from, to) = (At::of(state.phase), At::of(next.phase));
                    assert!(allowed(&definition, from, to, parked), "{from:?} -> {to:?} by {event:?}");
                    edges.insert((from.name, to.name));
                    if next.phase == Phase::Failed {
                        parked = Some(from);
                    }
                }
                state = next;
            }
        }
        assert!(edges.len() >= 15, "the walk covers most edges: {edges:?}");
    }

    #[test]
    fn edges_the_definition_does_not_allow_are_refused() {
        let definition = order_fulfilment(Duration::from_secs(10));
        let at = |name, step, attempt| At { name, step: Some(step), attempt: Some(attempt) };
        let plain = |name| At { name, step: None, attempt: None };
        let refused = [
            (at("RUNNING", 0, 1), plain("COMPLETED")),
            (at("RUNNING", 0, 1), at("RUNNING", 2, 1)),
            (at("RUNNING", 1, 1), at("COMPENSATING", 2, 1)),
            (at("RUNNING", 1, 2), at("RUNNING", 1, 2)),
            (at("COMPENSATING", 1, 1), at("COMPENSATING", 2, 1)),
            (at("COMPENSATING", 0, 1), at("RUNNING", 1, 1)),
            (plain("COMPLETED"), at("COMPENSATING", 2, 1)),
            (plain("COMPENSATED"), plain("RESOLVED")),
            (at("RUNNING", 1, 1), plain("FAILED")),
        ];
        for (from, to) in refused {
            assert!(!allowed(&definition, from, to, None), "{from:?} -> {to:?}");
        }
        let parked = Some(at("COMPENSATING", 1, 20));
        assert!(allowed(&definition, plain("FAILED"), at("COMPENSATING", 1, 21), parked));
        assert!(!allowed(&definition, plain("FAILED"), at("RUNNING", 1, 21), parked));
        assert!(!allowed(&definition, plain("FAILED"), at("COMPENSATING", 1, 21), None));
    }
}
