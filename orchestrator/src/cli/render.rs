//! Readable output: sagas as tables, one saga with its timeline, the outcome of an action, dead letters and
//! a replay report. Saga answers are read with the API's own types; dead-letter answers leniently, field by
//! field, so that sagactl shows what it can of a server a little newer or older than itself.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::api::admin::{ActionOutcome, PlannedCommand, SagaDetail, SagaPage, SagaSummary};
use orchestrator::definitions::Definitions;
use orchestrator::model::{LogEntry, OrderSummary};
use serde_json::Value;

use super::table::{Table, truncate};

/// The widest a reason gets in a list.
const REASON_WIDTH: usize = 60;
/// The widest an error gets in a dead-letter list.
const ERROR_WIDTH: usize = 60;

/// Step names by definition, from the definitions built into this sagactl (the server's own); a step of a
/// definition sagactl does not know is shown by its number.
#[derive(Debug)]
pub struct Steps(Option<Definitions>);

impl Steps {
    /// The built-in definitions (the step timeout plays no part in names).
    pub fn builtin() -> Self {
        Self(Definitions::builtin(Duration::from_secs(10)).ok())
    }

    fn name(&self, definition: &str, version: u32, step: u16) -> String {
        let def = self.0.as_ref().and_then(|all| all.get(definition, version));
        def.and_then(|d| d.step(step)).map_or_else(|| format!("step {step}"), |s| s.name.to_owned())
    }
}

/// `42s`, `15m20s`, `2h05m`, `3d4h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// A page (or every page) of sagas; `next` is the cursor of the page after, if any.
pub fn saga_list(sagas: &[SagaSummary], next: Option<&str>) -> String {
    if sagas.is_empty() {
        return "no sagas match\n".to_owned();
    }
    let mut table = Table::new(&["SAGA ID", "STATE", "STATUS", "STEP", "ATTEMPT", "VERSION", "IN STATE", "REASON"]);
    for s in sagas {
        table.row(vec![
            s.saga_id.to_string(),
            s.state.clone(),
            s.status.clone(),
            or_dash(s.step.as_ref()),
            or_dash(s.attempt),
            s.version.to_string(),
            age(s.seconds_in_state),
            s.reason.as_deref().map_or_else(|| "-".to_owned(), |r| truncate(r, REASON_WIDTH)),
        ]);
    }
    let mut out = table.render();
    let noun = if sagas.len() == 1 { "saga" } else { "sagas" };
    match next {
        Some(cursor) => {
            let _ = writeln!(out, "{} {noun}; more after this page: add --after {cursor}, or --all", sagas.len());
        }
        None => {
            let _ = writeln!(out, "{} {noun}", sagas.len());
        }
    }
    out
}

/// Reads a page of sagas.
pub fn read_page(body: &Value) -> Result<SagaPage, String> {
    serde_json::from_value(body.clone()).map_err(|e| format!("the saga list is not in the expected shape: {e}"))
}

/// One saga: a header, then its timeline.
pub fn saga_detail(detail: &SagaDetail, steps: &Steps) -> String {
    let s = &detail.summary;
    let state = &detail.saga_state;
    let mut rows: Vec<(&str, String)> = vec![
        ("saga", s.saga_id.to_string()),
        ("definition", format!("{} v{}", s.definition, detail.definition_version)),
        ("state", format!("{} for {} (since {} UTC)", s.state, age(s.seconds_in_state), time(s.state_since))),
        ("status", s.status.clone()),
        ("step", step_line(s)),
        ("version", s.version.to_string()),
        ("reason", or_dash(s.reason.as_ref())),
    ];
    if let Some(deadline) = &state.deadline {
        let step = steps.name(&s.definition, detail.definition_version, deadline.step);
        let kind = serde_json::to_value(deadline.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
        let what = kind.unwrap_or_else(|| format!("{:?}", deadline.kind)).replace('_', " ");
        rows.push(("deadline", format!("{what} of {step} attempt {} at {} UTC", deadline.attempt, time(deadline.at))));
    }
    if let Some(parked) = state.parked_at {
        let at = parked.step_attempt().map(|(step, attempt)| {
            format!(" at {} attempt {attempt}", steps.name(&s.definition, detail.definition_version, step))
        });
        rows.push(("parked from", format!("{}{}", parked.name(), at.unwrap_or_default())));
    }
    if let Some(resolution) = &state.resolution {
        rows.push(("resolved as", format!("{resolution:?}").to_lowercase()));
    }
    rows.push(("order", order_line(&detail.order)));
    rows.push(("customer ref", detail.order.customer_ref.clone()));
    rows.push(("partition", format!("saga.reply/{}", detail.partition)));
    rows.push(("correlation", detail.correlation_id.to_string()));
    rows.push(("created", format!("{} UTC", time(detail.created_at))));
    rows.push(("updated", format!("{} UTC", time(s.updated_at))));
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<13}{value}");
    }
    let _ = writeln!(out, "\ntimeline ({} entries)", detail.timeline.len());
    out.push_str(&timeline(detail, steps));
    out
}

fn step_line(s: &SagaSummary) -> String {
    match (&s.step, s.attempt) {
        (Some(step), Some(attempt)) => format!("{step}, attempt {attempt}"),
        (Some(step), None) => step.clone(),
        _ => "-".to_owned(),
    }
}

/// `2 × SKU-1 at 12.50; total 25.00 EUR`, at most three lines named.
fn order_line(order: &OrderSummary) -> String {
    let currency = serde_json::to_value(order.currency).ok().and_then(|v| v.as_str().map(str::to_owned));
    let currency = currency.unwrap_or_default();
    let mut lines: Vec<String> = order
        .items
        .iter()
        .take(3)
        .map(|i| format!("{} × {} at {}", i.quantity, i.sku, money(i.unit_price_cents)))
        .collect();
    if order.items.len() > 3 {
        lines.push(format!("and {} more lines", order.items.len() - 3));
    }
    format!("{}; total {} {currency}", lines.join(", "), money(order.amount_cents))
}

/// Minor units as a decimal amount (every accepted currency has two decimals).
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

fn timeline(detail: &SagaDetail, steps: &Steps) -> String {
    let name = |step: u16| steps.name(&detail.summary.definition, detail.definition_version, step);
    let mut table = Table::new(&["SEQ", "TIME (UTC)", "KIND", "FROM → TO", "STEP/ATTEMPT", "RECEIVED", "SENT", "NOTE"]);
    for entry in &detail.timeline {
        table.row(vec![
            entry.seq.to_string(),
            time(entry.at),
            kind(entry),
            format!("{} → {}", if entry.from.is_empty() { "-" } else { &entry.from }, entry.to),
            match (entry.step, entry.attempt) {
                (Some(step), Some(attempt)) => format!("{}/{attempt}", name(step)),
                (Some(step), None) => name(step),
                _ => "-".to_owned(),
            },
            received(entry),
            sent(entry),
            entry.note.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

fn kind(entry: &LogEntry) -> String {
    serde_json::to_value(entry.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `inventory.reserved saga.reply/3@101 (succeeded)`; a start applied with the order (read from no topic: the
/// API stores a saga already started), `saga.start saga.reply/3 (with the order)`.
fn received(entry: &LogEntry) -> String {
    let Some(r) = &entry.received else { return "-".to_owned() };
    let outcome = r.outcome.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
    if r.offset == orchestrator::consumer::HANDED_OVER {
        return format!("{} {}/{} (with the order){outcome}", r.message_type, r.topic, r.partition);
    }
    format!("{} {}/{}@{}{outcome}", r.message_type, r.topic, r.partition, r.offset)
}

/// `inventory.reserve, saga.transitioned`.
fn sent(entry: &LogEntry) -> String {
    if entry.sent.is_empty() {
        return "-".to_owned();
    }
    entry.sent.iter().map(|s| s.message_type.as_str()).collect::<Vec<_>>().join(", ")
}

/// Reads one saga.
pub fn read_detail(body: &Value) -> Result<SagaDetail, String> {
    serde_json::from_value(body.clone()).map_err(|e| format!("the saga is not in the expected shape: {e}"))
}

/// What an action did, or would do in a dry run.
pub fn outcome(verb: &str, saga_id: &str, outcome: &ActionOutcome) -> String {
    let mut out = String::new();
    if outcome.dry_run {
        let _ = writeln!(
            out,
            "dry run: {verb} would take saga {saga_id} from {} to {} (status {})",
            outcome.from, outcome.to, outcome.status
        );
        commands(&mut out, "it would send", &outcome.commands);
        if let Some(reason) = &outcome.reason {
            let _ = writeln!(out, "reason after: {reason}");
        }
        let _ = writeln!(
            out,
            "nothing was changed; the saga is at version {}; run again without --dry-run to do it",
            outcome.version
        );
    } else {
        let _ = writeln!(
            out,
            "{verb}: saga {saga_id} went from {} to {} (status {}), now at version {}",
            outcome.from, outcome.to, outcome.status, outcome.version
        );
        commands(&mut out, "sent", &outcome.commands);
        if let Some(reason) = &outcome.reason {
            let _ = writeln!(out, "reason: {reason}");
        }
    }
    out
}

fn commands(out: &mut String, lead: &str, commands: &[PlannedCommand]) {
    if commands.is_empty() {
        let _ = writeln!(out, "{lead}: no commands");
    }
    for c in commands {
        let _ = writeln!(out, "{lead}: {} to {} (step {}, attempt {})", c.command, c.topic, c.step, c.attempt);
    }
}

/// Reads an action's outcome.
pub fn read_outcome(body: &Value) -> Result<ActionOutcome, String> {
    serde_json::from_value(body.clone()).map_err(|e| format!("the action's answer is not in the expected shape: {e}"))
}

// ---------------------------------------------------------------------------------------------------------
// Dead letters, read leniently

/// The first of `keys` present in `value` (a dotted key looks into an object: `original.topic`).
fn field<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|key| key.split('.').try_fold(value, |v, k| v.get(k)).filter(|v| !v.is_null()))
}

/// A field as text: strings as they are, numbers and booleans written out.
fn text(value: &Value, keys: &[&str]) -> String {
    match field(value, keys) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
        None => "-".to_owned(),
    }
}

/// Dead letters per topic: `{"topics": {"<topic>": {"count", "messages": [...]}}}`.
pub fn dlq_list(body: &Value) -> String {
    let Some(topics) = body.get("topics").and_then(Value::as_object) else {
        return format!("unexpected answer (no `topics`):\n{}\n", pretty(body));
    };
    if topics.is_empty() {
        return "no dead-letter topics\n".to_owned();
    }
    let mut out = String::new();
    for (i, (topic, listing)) in topics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&dlq_topic(topic, listing));
    }
    out
}

fn dlq_topic(topic: &str, listing: &Value) -> String {
    let messages = listing.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let count = listing.get("count").and_then(Value::as_u64).unwrap_or(messages.len() as u64);
    let shown = if (messages.len() as u64) < count { format!(", {} shown", messages.len()) } else { String::new() };
    let mut out = format!("{topic}: {count} {}{shown}\n", if count == 1 { "message" } else { "messages" });
    if messages.is_empty() {
        return out;
    }
    let mut table = Table::new(&[
        "PARTITION:OFFSET",
        "KEY",
        "TYPE",
        "ORIGINAL",
        "ATTEMPTS",
        "SERVICE",
        "FAILED AT",
        "BYTES",
        "REPLAYED",
        "ERROR",
    ]);
    for m in messages {
        table.row(vec![
            format!("{}:{}", text(m, &["partition", "dlq_partition"]), text(m, &["offset", "dlq_offset"])),
            text(m, &["key", "saga_id"]),
            text(m, &["message_type", "envelope.type", "type"]),
            original(m),
            text(m, &["attempts"]),
            text(m, &["service"]),
            text(m, &["failed_at", "at", "timestamp"]),
            text(m, &["payload_size", "payload_bytes", "size", "bytes"]),
            replayed(m),
            truncate(&text(m, &["error", "reason"]), ERROR_WIDTH),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// `saga.cmd.payment/2@17`.
fn original(m: &Value) -> String {
    let topic = text(m, &["original_topic", "original.topic", "source_topic", "source.topic"]);
    let partition = text(m, &["original_partition", "original.partition", "source_partition", "source.partition"]);
    let offset = text(m, &["original_offset", "original.offset", "source_offset", "source.offset"]);
    if topic == "-" && partition == "-" {
        return "-".to_owned();
    }
    format!("{topic}/{partition}@{offset}")
}

/// `no`, or when and by whom.
fn replayed(m: &Value) -> String {
    match field(m, &["replayed"]) {
        None | Some(Value::Bool(false)) => "no".to_owned(),
        Some(Value::Object(_)) => {
            let r = &m["replayed"];
            format!("{} by {}", text(r, &["at"]), text(r, &["operator", "by"]))
        }
        Some(other) => other.to_string(),
    }
}

/// A replay report (`{"topic", "replayed": [{partition, offset, to}], "skipped": [{partition, offset,
/// replayed}], "failed": [{partition, offset, reason}], "stopped"}`): the counts, then a line per message.
/// Returns the text and, if the replay did not do all it was asked, why.
pub fn replay_report(topic: &str, body: &Value) -> (String, Option<String>) {
    let (replayed, replayed_items) = tally(body, "replayed");
    let (skipped, skipped_items) = tally(body, "skipped");
    let (failed, failed_items) = tally(body, "failed");
    let mut out = format!("{topic}: replayed {replayed}, skipped {skipped}, failed {failed}\n");
    for item in replayed_items {
        let to = field(item, &["to"]).map(|to| format!(" to {}", place(to))).unwrap_or_default();
        let _ = writeln!(out, "replayed {}{to}", position(item));
    }
    for item in skipped_items {
        let why = match field(item, &["replayed"]) {
            Some(earlier) => {
                format!("replayed before, at {} by {}", text(earlier, &["at"]), text(earlier, &["operator"]))
            }
            None => text(item, &["reason", "why"]),
        };
        let _ = writeln!(out, "skipped {}: {why}", position(item));
    }
    for item in failed_items {
        let _ = writeln!(out, "failed {}: {}", position(item), text(item, &["reason", "error", "why"]));
    }
    let stopped = field(body, &["stopped"]).map(|_| text(body, &["stopped"]));
    if let Some(why) = &stopped {
        let _ = writeln!(out, "stopped early: {why}");
    }
    let problem = match (failed, stopped) {
        (_, Some(why)) => Some(format!("the replay stopped early: {why}")),
        (0, None) => None,
        (1, None) => Some("1 message could not be replayed".to_owned()),
        (n, None) => Some(format!("{n} messages could not be replayed")),
    };
    (out, problem)
}

/// `PARTITION:OFFSET` of a report item.
fn position(item: &Value) -> String {
    format!("{}:{}", text(item, &["partition"]), text(item, &["offset"]))
}

/// `topic/partition@offset` of a `{topic, partition, offset}` object.
fn place(value: &Value) -> String {
    format!("{}/{}@{}", text(value, &["topic"]), text(value, &["partition"]), text(value, &["offset"]))
}

/// A report field that is a count or a list of items.
fn tally<'a>(body: &'a Value, key: &str) -> (usize, &'a [Value]) {
    match body.get(key) {
        Some(Value::Array(items)) => (items.len(), items),
        Some(Value::Number(n)) => (n.as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(0), &[]),
        _ => (0, &[]),
    }
}

/// JSON as the server sent it, indented.
pub fn pretty(body: &Value) -> String {
    serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string())
}

#[cfg(test)]
mod tests {
    use orchestrator::dlq;
    use serde_json::json;

    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(42), "42s");
        assert_eq!(age(920), "15m20s");
        assert_eq!(age(7500), "2h05m");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn a_received_message_names_where_it_was_read_and_a_handed_start_says_so() {
        let entry = |offset: i64, outcome: Option<&str>| LogEntry {
            saga_id: uuid::Uuid::nil(),
            seq: 2,
            at: at("2026-11-27T10:11:09.638Z"),
            kind: orchestrator::model::EntryKind::Transition,
            from: "STARTED".into(),
            to: "RUNNING".into(),
            step: Some(0),
            attempt: Some(1),
            received: Some(orchestrator::model::Received {
                message_id: uuid::Uuid::nil(),
                message_type: "saga.start".into(),
                topic: "saga.reply".into(),
                partition: 4,
                offset,
                step: 0,
                attempt: 0,
                outcome: outcome.map(str::to_owned),
            }),
            sent: Vec::new(),
            note: None,
        };
        assert_eq!(received(&entry(52_324, Some("succeeded"))), "saga.start saga.reply/4@52324 (succeeded)");
        assert_eq!(
            received(&entry(orchestrator::consumer::HANDED_OVER, None)),
            "saga.start saga.reply/4 (with the order)"
        );
    }

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(2500), "25.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-1250), "-12.50");
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a valid instant").with_timezone(&Utc)
    }

    fn coordinates(topic: &str, partition: i32, offset: i64) -> dlq::Coordinates {
        dlq::Coordinates { topic: topic.to_owned(), partition, offset }
    }

    fn replay(operator: &str, to: i64) -> dlq::Replay {
        dlq::Replay {
            at: at("2026-01-02T00:00:00Z"),
            operator: operator.to_owned(),
            reason: "fixed".to_owned(),
            to: coordinates("saga.cmd.payment", 3, to),
        }
    }

    /// A dead letter as the server describes it, built with its own types so that a change of shape shows.
    fn dead_letter(offset: i64, replayed: Option<dlq::Replay>) -> dlq::DeadLetter {
        dlq::DeadLetter {
            topic: "saga.cmd.payment.dlq".to_owned(),
            partition: 0,
            offset,
            key: Some("k1".to_owned()),
            message_type: Some("payment.charge".to_owned()),
            message_id: None,
            original_topic: Some("saga.cmd.payment".to_owned()),
            original_partition: Some(3),
            original_offset: Some(17),
            error: Some("invalid message: amount".to_owned()),
            attempts: Some(1),
            service: Some("payment".to_owned()),
            failed_at: Some(at("2026-01-01T00:00:00Z")),
            payload_bytes: 312,
            envelope: None,
            replayed,
        }
    }

    /// The cells of a table line (cells may hold single spaces; columns are two or more apart).
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
    }

    #[test]
    fn dead_letters_show_what_the_server_sends() {
        let listing = dlq::Listing {
            topics: [
                (
                    "saga.cmd.payment.dlq".to_owned(),
                    dlq::TopicListing {
                        count: 3,
                        messages: vec![dead_letter(5, Some(replay("alice", 40))), dead_letter(6, None)],
                    },
                ),
                ("saga.reply.dlq".to_owned(), dlq::TopicListing { count: 0, messages: Vec::new() }),
            ]
            .into_iter()
            .collect(),
        };
        let text = dlq_list(&serde_json::to_value(&listing).expect("JSON"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "saga.cmd.payment.dlq: 3 messages, 2 shown", "{text}");
        let header = ["PARTITION:OFFSET", "KEY", "TYPE", "ORIGINAL", "ATTEMPTS", "SERVICE", "FAILED AT", "BYTES"];
        assert_eq!(cells(lines[1])[..8], header, "{text}");
        assert_eq!(cells(lines[1])[8..], ["REPLAYED", "ERROR"], "{text}");
        assert_eq!(
            cells(lines[2]),
            [
                "0:5",
                "k1",
                "payment.charge",
                "saga.cmd.payment/3@17",
                "1",
                "payment",
                "2026-01-01T00:00:00Z",
                "312",
                "2026-01-02T00:00:00Z by alice",
                "invalid message: amount"
            ],
            "{text}"
        );
        assert!(cells(lines[3]).contains(&"no"), "{text}");
        assert_eq!(lines[5], "saga.reply.dlq: 0 messages", "{text}");
    }

    #[test]
    fn fields_the_server_does_not_send_are_dashes() {
        let sparse = json!({"topics": {"t.dlq": {"count": 1, "messages": [{"partition": 1, "offset": 2,
            "replayed": null}]}}});
        let row = dlq_list(&sparse).lines().nth(2).map(str::to_owned).unwrap_or_default();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["1:2", "-", "-", "-", "-", "-", "-", "-", "no", "-"]);
    }

    #[test]
    fn replay_reports_list_each_message_and_say_what_went_wrong() {
        let report = dlq::ReplayReport {
            topic: "saga.cmd.payment.dlq".to_owned(),
            replayed: vec![dlq::Replayed { partition: 0, offset: 5, to: coordinates("saga.cmd.payment", 3, 41) }],
            skipped: vec![dlq::Skipped { partition: 0, offset: 6, replayed: replay("bob", 40) }],
            failed: Vec::new(),
            stopped: None,
        };
        let (text, problem) = replay_report("saga.cmd.payment.dlq", &serde_json::to_value(&report).expect("JSON"));
        assert_eq!(problem, None);
        assert_eq!(
            text,
            "saga.cmd.payment.dlq: replayed 1, skipped 1, failed 0\n\
             replayed 0:5 to saga.cmd.payment/3@41\n\
             skipped 0:6: replayed before, at 2026-01-02T00:00:00Z by bob\n"
        );

        let failed = dlq::ReplayReport {
            failed: vec![dlq::Failed { partition: 1, offset: 2, reason: "no message at this offset".to_owned() }],
            ..report.clone()
        };
        let (text, problem) = replay_report("t", &serde_json::to_value(&failed).expect("JSON"));
        assert!(text.contains("failed 1:2: no message at this offset"), "{text}");
        assert_eq!(problem.as_deref(), Some("1 message could not be replayed"));

        let stopped = dlq::ReplayReport { stopped: Some("Kafka did not deliver in time".to_owned()), ..report };
        let (text, problem) = replay_report("t", &serde_json::to_value(&stopped).expect("JSON"));
        assert!(text.ends_with("stopped early: Kafka did not deliver in time\n"), "{text}");
        assert_eq!(problem.as_deref(), Some("the replay stopped early: Kafka did not deliver in time"));
    }
}
