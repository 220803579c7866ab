//! The dead-letter endpoints (operators only), over [`crate::dlq::DeadLetters`]:
//!
//! - `GET /admin/dlq?topic=saga.cmd.payment.dlq&limit=100`: every dead-letter topic (or the one named) with
//!   how many messages it holds and the first `limit` (1 to 1,000, default 100) of them: error, attempts,
//!   original coordinates, payload size and replay, never the payload.
//! - `POST /admin/dlq/replay` with `{"topic", "messages": [{"partition", "offset"}] (absent: all), "reason"}`:
//!   replays them to their original topic as the caller; those replayed before are skipped. Answers the
//!   report: replayed (with where each landed), skipped, failed (with why), and why it stopped early, if it did.

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::Uri;
use garde::Validate;
use serde::Deserialize;

use super::AppState;
use super::extract::{ValidJson, validate};
use super::problem::{FieldError, Problem};
use crate::auth::Caller;
use crate::dlq::{self, DeadLetters, Listing, ReplayReport, Selection, Which};

/// How many messages of each topic a listing shows unless told.
pub const DEFAULT_LIMIT: usize = 100;

fn known_topic(topic: &str, _: &()) -> garde::Result {
    if dlq::is_dlq_topic(topic) {
        Ok(())
    } else {
        Err(garde::Error::new(format!("unknown dead-letter topic; use one of {}", dlq::topic_names().join(", "))))
    }
}

fn known_topic_if_any(topic: &Option<String>, context: &()) -> garde::Result {
    topic.as_deref().map_or(Ok(()), |t| known_topic(t, context))
}

/// `GET /admin/dlq` query.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this dead-letter topic (without prefix), such as `saga.cmd.payment.dlq`.
    #[garde(custom(known_topic_if_any))]
    pub topic: Option<String>,
    /// At most this many messages per topic, 1 to 1,000 (default [`DEFAULT_LIMIT`]).
    #[garde(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
}

/// A dead letter named by its place in its dead-letter topic.
#[derive(Debug, Clone, Copy, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct MessageRef {
    /// The partition.
    #[garde(range(min = 0, max = 999))]
    pub partition: i32,
    /// The offset.
    #[garde(range(min = 0))]
    pub offset: i64,
}

/// `POST /admin/dlq/replay` body.
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// The dead-letter topic (without prefix).
    #[garde(custom(known_topic))]
    pub topic: String,
    /// Which of its messages (1 to 1,000); absent: all of them.
    #[garde(length(min = 1, max = 1000), dive)]
    pub messages: Option<Vec<MessageRef>>,
    /// Why (recorded with the operator's name).
    #[garde(length(chars, min = 3, max = 500))]
    pub reason: String,
}

/// Lists dead letters per topic.
#[tracing::instrument(skip_all)]
pub async fn list(State(app): State<AppState>, uri: Uri) -> Result<Json<Listing>, Problem> {
    let Query(query) = Query::<ListQuery>::try_from_uri(&uri)
        .map_err(|rejection| Problem::validation(rejection.body_text(), Vec::new()))?;
    validate(&query)?;
    let dead_letters = available(&app)?;
    let listing = dead_letters.list(query.topic.as_deref(), query.limit.unwrap_or(DEFAULT_LIMIT)).await?;
    Ok(Json(listing))
}

/// Replays dead letters to their original topic, as the caller.
#[tracing::instrument(skip_all, fields(operator = %caller.subject))]
pub async fn replay(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    ValidJson(body): ValidJson<ReplayBody>,
) -> Result<Json<ReplayReport>, Problem> {
    let dead_letters = available(&app)?;
    let messages = match &body.messages {
        None => Which::All,
        Some(refs) => Which::Only(refs.iter().map(|m| (m.partition, m.offset)).collect()),
    };
    let selection = Selection { topic: body.topic, messages };
    let report = dead_letters.replay(&selection, &caller.subject, &body.reason).await?;
    tracing::info!(
        topic = report.topic,
        replayed = report.replayed.len(),
        skipped = report.skipped.len(),
        failed = report.failed.len(),
        stopped = report.stopped,
        reason = body.reason,
        "dead letters replayed"
    );
    Ok(Json(report))
}

fn available(app: &AppState) -> Result<&DeadLetters, Problem> {
    app.dead_letters.as_deref().ok_or_else(|| unavailable("dead-letter operations are not set up on this instance"))
}

fn unavailable(detail: &str) -> Problem {
    let mut problem = Problem::unavailable();
    detail.clone_into(&mut problem.detail);
    problem
}

impl From<dlq::Error> for Problem {
    fn from(error: dlq::Error) -> Self {
        match &error {
            dlq::Error::UnknownTopic { .. } => {
                let field = FieldError { field: "topic".into(), message: error.to_string() };
                Problem::validation("unknown dead-letter topic", vec![field])
            }
            dlq::Error::Read { .. } | dlq::Error::Timeout { .. } => {
                tracing::warn!(%error, "cannot read dead letters");
                unavailable("Kafka did not deliver the dead letters in time; retry later")
            }
            dlq::Error::Client(_) | dlq::Error::Database { .. } => {
                tracing::error!(%error, "dead-letter operation failed");
                unavailable("Kafka or the database is unavailable; retry later")
            }
        }
    }
}
