//! `GET /v1/orders/{order_id}/events`: the order's status changes as server-sent events.
//!
//! The stream starts with the order's current state (unless the client already has it: `Last-Event-ID`
//! carries the saga version of the last event it received), then sends every later change, each with the
//! saga version as its id, and ends after a terminal status. It never sends personal data. Browsers'
//! `EventSource` cannot set headers, so this route also takes the token as `?access_token=`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::orders::visible_order;
use super::problem::Problem;
use crate::auth::Caller;
use crate::live::StatusChange;
use crate::model::SagaRecord;

/// How often an idle stream sends a comment, so that proxies keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Follow {
    app: AppState,
    order_id: Uuid,
    receiver: tokio::sync::broadcast::Receiver<StatusChange>,
    pending: Option<StatusChange>,
    last_sent: u64,
    done: bool,
}

/// Streams the order's status changes.
pub async fn order_events(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    // Subscribe before reading the current state, so that no change falls in between.
    let receiver = app.live.subscribe();
    let saga = visible_order(&app, &caller, &order_id).await?;
    let last_sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let follow =
        Follow { order_id: saga.id, pending: Some(change_of(&app, &saga)), app, receiver, last_sent, done: false };
    let events = stream::unfold(follow, |mut follow| async move {
        let change = follow.next().await?;
        let event = Event::default()
            .id(change.version.to_string())
            .event("status")
            .json_data(&change)
            .expect("a status change serializes");
        Some((Ok(event), follow))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

impl Follow {
    /// The next change to send, or `None` when the stream is over.
    async fn next(&mut self) -> Option<StatusChange> {
        while !self.done {
            let candidate = match self.pending.take() {
                Some(change) => change,
                None => match self.receiver.recv().await {
                    Ok(change) if change.order_id == self.order_id => change,
                    Ok(_) => continue,
                    // Fell behind: catch up from the store instead of guessing what was missed.
                    Err(RecvError::Lagged(_)) => match self.app.store.get(self.order_id).await {
                        Ok(Some(saga)) => change_of(&self.app, &saga),
                        _ => continue,
                    },
                    Err(RecvError::Closed) => return None,
                },
            };
            if candidate.version <= self.last_sent {
                // The client has it already; if it was the end, there is nothing more to wait for.
                if candidate.status.is_terminal() {
                    return None;
                }
                continue;
            }
            self.last_sent = candidate.version;
            self.done = candidate.status.is_terminal();
            return Some(candidate);
        }
        None
    }
}

/// The saga's current state as a status change.
fn change_of(app: &AppState, saga: &SagaRecord) -> StatusChange {
    let definition = app.definitions.get(&saga.definition, saga.definition_version);
    StatusChange {
        order_id: saga.id,
        status: saga.status(),
        state: saga.state.phase.name().to_owned(),
        step: saga.state.phase.step_attempt().and_then(|(s, _)| definition?.step(s)).map(|s| s.name.to_owned()),
        reason: saga.state.reason.clone(),
        version: saga.version,
        at: saga.updated_at,
    }
}
