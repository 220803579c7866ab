//! The admin API (operators only): list sagas, read one with its whole timeline, and act on one (retry,
//! compensate, resolve), with a dry run that shows the plan and changes nothing.
//!
//! An action never writes the saga here: it travels as `saga.operator` through the saga's partition of
//! `saga.reply`, so the partition owner applies it in order with the replies (one writer per saga). The
//! handler then waits (up to [`OUTCOME_WAIT`]) for the timeline entry of that message, and answers with it.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use garde::Validate;
use proto_events::{Body, Message, Meta, OperatorCommand, OperatorVerb, ResolvedAs, topics};
use saga_defs::{Action, Fenced, OperatorAction, Resolution, SagaEvent, apply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::extract::json_body;
use super::problem::{FieldError, Problem};
use crate::auth::Caller;
use crate::model::{EntryKind, LogEntry, SagaRecord};
use crate::store::SagaFilter;

/// How long an action's handler waits to see the action applied.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(15);

/// The saga states an operator can filter on.
const STATES: [&str; 9] = [
    "STARTED",
    "RUNNING",
    "BACKOFF",
    "COMPENSATING",
    "COMPENSATION_BACKOFF",
    "COMPLETED",
    "COMPENSATED",
    "FAILED",
    "RESOLVED",
];

fn known_state(state: &Option<String>, _: &()) -> garde::Result {
    match state {
        Some(s) if !STATES.contains(&s.as_str()) => {
            Err(garde::Error::new(format!("unknown state; use one of {}", STATES.join(", "))))
        }
        _ => Ok(()),
    }
}

/// `GET /admin/sagas` query.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// In this state.
    #[garde(custom(known_state))]
    pub state: Option<String>,
    /// At this step (name, such as `charge_payment`).
    #[garde(length(min = 1, max = 64))]
    pub step: Option<String>,
    /// Of this definition.
    #[garde(length(min = 1, max = 64))]
    pub definition: Option<String>,
    /// In their state for longer than this: `90s`, `15m`, `2h`, `1d`.
    #[garde(pattern(r"^[0-9]{1,6}[smhd]$"))]
    pub older_than: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[garde(range(min = 1, max = 500))]
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[garde(skip)]
    pub after: Option<Uuid>,
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaSummary {
    /// The saga (and order) id.
    pub saga_id: Uuid,
    /// The definition.
    pub definition: String,
    /// The state.
    pub state: String,
    /// The order status.
    pub status: String,
    /// The step's name, if at one.
    pub step: Option<String>,
    /// The attempt, if at a step.
    pub attempt: Option<u32>,
    /// The version (for `If-Match`).
    pub version: u64,
    /// Why it compensates or is parked.
    pub reason: Option<String>,
    /// Since when it is in its state.
    pub state_since: DateTime<Utc>,
    /// For how many seconds.
    pub seconds_in_state: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET /admin/sagas` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaPage {
    /// The sagas, by id (oldest first).
    pub sagas: Vec<SagaSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

/// `GET /admin/sagas/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: SagaSummary,
    /// The definition's version.
    pub definition_version: u32,
    /// The saga's full state (phase, deadline, parked-at, retry floor, resolution).
    pub saga_state: saga_defs::SagaState,
    /// The order, free of personal data.
    pub order: crate::model::OrderSummary,
    /// The partition of `saga.reply` that owns the saga.
    pub partition: i32,
    /// Shared by the order's messages.
    pub correlation_id: Uuid,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Every change and every ignored message, oldest first.
    pub timeline: Vec<LogEntry>,
}

/// Lists sagas, filtered, a page at a time.
pub async fn list_sagas(
    State(app): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<SagaPage>, Problem> {
    super::extract::validate(&query)?;
    let limit = query.limit.unwrap_or(50);
    let now = app.clock.now();
    let step = match &query.step {
        Some(name) => Some(step_index(&app, name).ok_or_else(|| {
            Problem::validation(
                "no such step",
                vec![FieldError { field: "step".into(), message: format!("unknown step {name}") }],
            )
        })?),
        None => None,
    };
    let filter = SagaFilter {
        state: query.state.clone(),
        step,
        definition: query.definition.clone(),
        since_before: query.older_than.as_deref().map(|d| now - parse_age(d)),
        after: query.after,
    };
    let sagas = app.store.list(&filter, limit + 1).await?;
    let next = (sagas.len() > limit).then(|| sagas[limit - 1].id);
    let sagas = sagas.iter().take(limit).map(|s| summary(&app, s, now)).collect();
    Ok(Json(SagaPage { sagas, next }))
}

fn step_index(app: &AppState, name: &str) -> Option<u16> {
    let definition = app.definitions.latest(super::orders::ORDER_SAGA)?;
    definition.steps.iter().position(|s| s.name == name).and_then(|i| u16::try_from(i).ok())
}

/// `90s`, `15m`, `2h`, `1d` (validated by the pattern).
fn parse_age(text: &str) -> TimeDelta {
    let (number, unit) = text.split_at(text.len() - 1);
    let n: i64 = number.parse().unwrap_or(0);
    match unit {
        "s" => TimeDelta::seconds(n),
        "m" => TimeDelta::minutes(n),
        "h" => TimeDelta::hours(n),
        _ => TimeDelta::days(n),
    }
}

fn summary(app: &AppState, saga: &SagaRecord, now: DateTime<Utc>) -> SagaSummary {
    let at = saga.state.phase.step_attempt();
    let definition = app.definitions.get(&saga.definition, saga.definition_version);
    SagaSummary {
        saga_id: saga.id,
        definition: saga.definition.clone(),
        state: saga.state.phase.name().to_owned(),
        status: saga.status().as_str().to_owned(),
        step: at.and_then(|(s, _)| definition.and_then(|d| d.step(s))).map(|s| s.name.to_owned()),
        attempt: at.map(|(_, a)| a),
        version: saga.version,
        reason: saga.state.reason.clone(),
        state_since: saga.state_since,
        seconds_in_state: (now - saga.state_since).num_seconds(),
        updated_at: saga.updated_at,
    }
}

/// One saga with its whole timeline; `ETag` carries its version, for `If-Match`.
pub async fn get_saga(State(app): State<AppState>, Path(saga_id): Path<String>) -> Result<Response, Problem> {
    let saga = load(&app, &saga_id).await?;
    let timeline = app.store.timeline(saga.id).await?;
    let detail = SagaDetail {
        summary: summary(&app, &saga, app.clock.now()),
        definition_version: saga.definition_version,
        saga_state: saga.state.clone(),
        order: saga.order.clone(),
        partition: saga.partition,
        correlation_id: saga.correlation_id,
        created_at: saga.created_at,
        timeline,
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", saga.version)).expect("a number is a header value");
    Ok(([(header::ETAG, etag)], Json(detail)).into_response())
}

async fn load(app: &AppState, saga_id: &str) -> Result<SagaRecord, Problem> {
    let not_found = || Problem::not_found(format!("no saga {saga_id}"));
    let id = Uuid::parse_str(saga_id).map_err(|_| not_found())?;
    app.store.get(id).await?.ok_or_else(not_found)
}

/// The body of an action.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why (recorded on the timeline with the operator's name).
    #[garde(length(chars, min = 3, max = 500))]
    pub reason: String,
    /// For `resolve`: `completed` or `cancelled`.
    #[garde(skip)]
    pub outcome: Option<ResolvedAs>,
}

/// `?dry_run=true`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ActionQuery {
    /// Show the plan, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A command the action would send or sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCommand {
    /// The step's name.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The command's message type.
    pub command: String,
    /// Its topic.
    pub topic: String,
}

/// The answer to an action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// Whether this was only a plan.
    pub dry_run: bool,
    /// The state before.
    pub from: String,
    /// The state after (planned or reached).
    pub to: String,
    /// The order status after.
    pub status: String,
    /// The commands sent (or that would be).
    pub commands: Vec<PlannedCommand>,
    /// The saga's version after (unchanged for a dry run).
    pub version: u64,
    /// The saga's reason after.
    pub reason: Option<String>,
}

/// `POST /admin/sagas/{id}/{retry|compensate|resolve}`.
pub async fn act(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((saga_id, verb)): Path<(String, String)>,
    Query(query): Query<ActionQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let verb = match verb.as_str() {
        "retry" => OperatorVerb::Retry,
        "compensate" => OperatorVerb::Compensate,
        "resolve" => OperatorVerb::Resolve,
        other => return Err(Problem::not_found(format!("no action {other}; use retry, compensate or resolve"))),
    };
    let body: ActionBody = json_body(&headers, &body)?;
    let action = operator_action(verb, body.outcome)?;
    let saga = load(&app, &saga_id).await?;
    let expected = if_match(&headers)?;
    if expected != saga.version {
        return Err(Problem::precondition_failed(format!(
            "the saga is at version {}, not {expected}: read it again and decide on what is there",
            saga.version
        )));
    }
    let reason = format!("{} (by {})", body.reason, caller.subject);
    let plan = plan(&app, &saga, action, &reason)?;
    if query.dry_run {
        return Ok((StatusCode::OK, Json(plan)).into_response());
    }
    let command = OperatorCommand {
        action: verb,
        outcome: body.outcome,
        reason: body.reason,
        operator: caller.subject.clone(),
        expected_version: saga.version,
    };
    let message_id = publish(&app, &saga, command).await?;
    let outcome = await_outcome(&app, &saga, message_id).await?;
    Ok((StatusCode::OK, Json(outcome)).into_response())
}

fn operator_action(verb: OperatorVerb, outcome: Option<ResolvedAs>) -> Result<OperatorAction, Problem> {
    Ok(match (verb, outcome) {
        (OperatorVerb::Retry, None) => OperatorAction::Retry,
        (OperatorVerb::Compensate, None) => OperatorAction::Compensate,
        (OperatorVerb::Resolve, Some(ResolvedAs::Completed)) => {
            OperatorAction::Resolve { outcome: Resolution::Completed }
        }
        (OperatorVerb::Resolve, Some(ResolvedAs::Cancelled)) => {
            OperatorAction::Resolve { outcome: Resolution::Cancelled }
        }
        (OperatorVerb::Resolve, None) => {
            let error = FieldError { field: "outcome".into(), message: "resolve needs completed or cancelled".into() };
            return Err(Problem::validation("resolve needs an outcome", vec![error]));
        }
        (_, Some(_)) => {
            let error = FieldError { field: "outcome".into(), message: "only resolve takes an outcome".into() };
            return Err(Problem::validation("unexpected outcome", vec![error]));
        }
    })
}

/// The version in `If-Match` (`"7"` or `7`); 428 without one.
fn if_match(headers: &HeaderMap) -> Result<u64, Problem> {
    let value = headers.get(header::IF_MATCH).ok_or_else(|| {
        Problem::precondition_required(
            "send the saga version you acted on in If-Match (the ETag of GET /admin/sagas/{id})",
        )
    })?;
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            let error =
                FieldError { field: "If-Match".into(), message: "must be the saga version, such as \"7\"".into() };
            Problem::validation("invalid If-Match", vec![error])
        })
}

/// What the action would do: the pure core on the current state. 409 if it does not apply.
fn plan(app: &AppState, saga: &SagaRecord, action: OperatorAction, reason: &str) -> Result<ActionOutcome, Problem> {
    let definition = app.definitions.get(&saga.definition, saga.definition_version).ok_or_else(Problem::internal)?;
    let event = SagaEvent::Operator { action, reason: reason.to_owned() };
    let (state, actions) = apply(&saga.state, &event, definition, app.clock.now());
    let mut commands = Vec::new();
    for action in &actions {
        match action {
            Action::Ignore(Fenced::NotAllowed(why)) => return Err(Problem::conflict(why.clone())),
            Action::Ignore(fence) => return Err(Problem::conflict(fence.describe())),
            Action::Send { step, attempt, command } => commands.push(PlannedCommand {
                step: definition.step(*step).map(|s| s.name.to_owned()).unwrap_or_default(),
                attempt: *attempt,
                command: command.message_type().to_owned(),
                topic: command.participant().command_topic().to_owned(),
            }),
        }
    }
    Ok(ActionOutcome {
        dry_run: true,
        from: saga.state.phase.name().to_owned(),
        to: state.phase.name().to_owned(),
        status: state.status().as_str().to_owned(),
        commands,
        version: saga.version,
        reason: state.reason,
    })
}

async fn publish(app: &AppState, saga: &SagaRecord, command: OperatorCommand) -> Result<Uuid, Problem> {
    let (step, attempt) = saga.state.phase.step_attempt().unwrap_or((0, 0));
    let meta = Meta {
        message_id: proto_events::ids::new_v7(),
        saga_id: saga.id,
        step,
        attempt,
        correlation_id: saga.correlation_id,
        causation_id: None,
        time: app.clock.now(),
    };
    let message = Message::new(meta, Body::Operator(command)).map_err(|e| {
        tracing::error!(error = %e, "an operator message does not validate");
        Problem::internal()
    })?;
    app.bus.publish(topics::REPLY, &message).await.map_err(|error| {
        tracing::warn!(%error, "cannot publish an operator action");
        Problem::unavailable()
    })?;
    Ok(message.meta.message_id)
}

/// Waits for the timeline entry of `message_id` and answers with what it says.
async fn await_outcome(app: &AppState, before: &SagaRecord, message_id: Uuid) -> Result<ActionOutcome, Problem> {
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut seq = before.version + 1;
    loop {
        while let Some(entry) = app.store.log_entry(before.id, seq).await? {
            if entry.received.as_ref().is_some_and(|r| r.message_id == message_id) {
                return outcome_of(app, before, &entry).await;
            }
            seq += 1;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Problem::timeout(format!(
                "the action (message {message_id}) is on the saga's partition but was not applied within {OUTCOME_WAIT:?}; \
                 check the saga's timeline"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outcome_of(app: &AppState, before: &SagaRecord, entry: &LogEntry) -> Result<ActionOutcome, Problem> {
    if entry.kind == EntryKind::Ignored {
        let note = entry.note.clone().unwrap_or_default();
        // The saga changed between the check here and the owner applying it, or the action does not apply.
        return Err(if note.starts_with("stale:") {
            Problem::precondition_failed(note)
        } else {
            Problem::conflict(note)
        });
    }
    let after = app.store.get(before.id).await?.ok_or_else(Problem::internal)?;
    let definition = app.definitions.get(&after.definition, after.definition_version);
    let commands = entry
        .sent
        .iter()
        .filter(|s| s.topic.starts_with("saga.cmd."))
        .map(|s| PlannedCommand {
            step: definition.and_then(|d| d.step(s.step)).map(|d| d.name.to_owned()).unwrap_or_default(),
            attempt: s.attempt,
            command: s.message_type.clone(),
            topic: s.topic.clone(),
        })
        .collect();
    Ok(ActionOutcome {
        dry_run: false,
        from: entry.from.clone(),
        to: entry.to.clone(),
        status: after.status().as_str().to_owned(),
        commands,
        version: entry.seq,
        reason: after.state.reason.clone(),
    })
}
