//! `sagactl`, the operators' command-line tool: lists and shows sagas with their timelines, retries,
//! compensates or resolves one (with a dry run), lists and replays dead letters, and mints development
//! tokens. It talks to the orchestrator's admin API only; every failure is one line on stderr with an exit
//! code scripts can branch on (see [`args::Cli`]'s help).
//!
//! - [`args`]: the command line.
//! - [`client`]: HTTP, and the errors as sentences.
//! - [`render`]: tables and sentences for people; `--output json` prints the server's JSON instead.
//! - [`token`]: durations and development tokens.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use orchestrator::auth::Role as AuthRole;
use serde_json::{Value, json};

use args::{ActionArgs, Cli, Command, DlqCommand, ListArgs, Output, ReplayArgs, TokenArgs};
use client::{Client, Error};
use token::Minter;

mod args;
mod client;
mod render;
mod table;
mod token;

/// How long a token minted for one invocation is valid (`list --all` over many pages included).
const MINTED_TTL: Duration = Duration::from_secs(15 * 60);

/// Parses the command line, runs the command, and says on stderr what went wrong, if anything.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Error> {
    if let Command::Token(args) = &cli.command {
        return mint(cli, args);
    }
    let client = connect(cli)?;
    match &cli.command {
        Command::List(args) => list(&client, args, cli.output).await,
        Command::Show { saga_id } => show(&client, saga_id, cli.output).await,
        Command::Retry(args) => act(&client, "retry", args, None, cli.output).await,
        Command::Compensate(args) => act(&client, "compensate", args, None, cli.output).await,
        Command::Resolve { outcome, action } => {
            act(&client, "resolve", action, Some(outcome.as_str()), cli.output).await
        }
        Command::Dlq(DlqCommand::List { topic, limit }) => {
            dlq_list(&client, topic.as_deref(), *limit, cli.output).await
        }
        Command::Dlq(DlqCommand::Replay(args)) => dlq_replay(&client, args, cli.output).await,
        Command::Token(_) => unreachable!("handled above"),
    }
}

/// Writes to stdout; a closed pipe (`sagactl list | head`) is not an error.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// JSON as the server sent it, indented, with a final newline.
fn emit_json(body: &Value) {
    emit(&format!("{}\n", render::pretty(body)));
}

fn minter(cli: &Cli, secret: Option<String>) -> Minter {
    Minter {
        secret: secret.or_else(|| cli.keys.secret.clone()).filter(|s| !s.is_empty()),
        issuer: cli.keys.issuer.clone(),
        audience: cli.keys.audience.clone(),
    }
}

/// The API client, with the given token or a development operator token minted for this run.
fn connect(cli: &Cli) -> Result<Client, Error> {
    if let Some(token) = cli.token.as_deref().filter(|t| !t.trim().is_empty()) {
        return Client::new(&cli.url, token, cli.timeout, None);
    }
    let minter = minter(cli, None);
    let (token, _) = minter.mint(&cli.operator, &[AuthRole::Operator], MINTED_TTL);
    let client = Client::new(&cli.url, &token, cli.timeout, Some(minter.secret_source()))?;
    eprintln!(
        "sagactl: no --token or SAGACTL_TOKEN; using a development operator token for {:?} signed with {}",
        cli.operator,
        minter.secret_source()
    );
    Ok(client)
}

/// Turns a shape sagactl cannot read into an error.
fn unreadable(message: String) -> Error {
    Error::Failed { status: None, message }
}

async fn list(client: &Client, args: &ListArgs, output: Output) -> Result<(), Error> {
    let mut query = vec![("limit", args.limit.to_string())];
    let optional = [
        ("state", args.state.as_ref().map(|s| s.to_uppercase())),
        ("step", args.step.clone()),
        ("definition", args.definition.clone()),
        ("older_than", args.older_than.clone()),
    ];
    query.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    let mut after = args.after.clone();
    let mut pages = Vec::new();
    loop {
        let mut page_query = query.clone();
        page_query.extend(after.clone().map(|a| ("after", a)));
        let page = client.get(client.url(&["admin", "sagas"], &page_query)).await?.body;
        let next = page.get("next").and_then(Value::as_str).map(str::to_owned);
        pages.push(page);
        if !args.all || next.is_none() {
            break;
        }
        if next == after {
            return Err(unreadable(format!("the server gave the same `next` twice ({after:?}); stopping")));
        }
        after = next;
    }
    if output == Output::Json {
        emit_json(&merge_pages(pages));
        return Ok(());
    }
    let mut sagas = Vec::new();
    let mut next = None;
    for page in &pages {
        let page = render::read_page(page).map_err(unreadable)?;
        sagas.extend(page.sagas);
        next = page.next.map(|n| n.to_string());
    }
    emit(&render::saga_list(&sagas, next.as_deref()));
    Ok(())
}

/// One page as the server sent it; several (`--all`) as one page with every saga and no `next`.
fn merge_pages(mut pages: Vec<Value>) -> Value {
    if pages.len() == 1 {
        return pages.remove(0);
    }
    let sagas: Vec<Value> = pages
        .iter_mut()
        .flat_map(|p| match p.get_mut("sagas").map(Value::take) {
            Some(Value::Array(sagas)) => sagas,
            _ => Vec::new(),
        })
        .collect();
    json!({ "sagas": sagas, "next": null })
}

async fn show(client: &Client, saga_id: &str, output: Output) -> Result<(), Error> {
    let body = client.get(client.url(&["admin", "sagas", saga_id], &[])).await?.body;
    match output {
        Output::Json => emit_json(&body),
        Output::Table => {
            let detail = render::read_detail(&body).map_err(unreadable)?;
            emit(&render::saga_detail(&detail, &render::Steps::builtin()));
        }
    }
    Ok(())
}

/// The saga's current version: its `ETag`, or the `version` in the body.
async fn current_version(client: &Client, saga_id: &str) -> Result<u64, Error> {
    let answer = client.get(client.url(&["admin", "sagas", saga_id], &[])).await?;
    let from_etag = answer.etag.as_deref().and_then(|e| e.trim_start_matches("W/").trim_matches('"').parse().ok());
    from_etag
        .or_else(|| answer.body.get("version").and_then(Value::as_u64))
        .ok_or_else(|| unreadable(format!("the saga {saga_id} came without a version (no ETag, no `version`)")))
}

async fn act(
    client: &Client,
    verb: &str,
    args: &ActionArgs,
    outcome: Option<&str>,
    output: Output,
) -> Result<(), Error> {
    let id = args.saga_id.as_str();
    let version = match args.version {
        Some(version) => version,
        None => current_version(client, id).await?,
    };
    let query = if args.dry_run { vec![("dry_run", "true".to_owned())] } else { Vec::new() };
    let mut body = json!({ "reason": args.reason });
    if let Some(outcome) = outcome {
        body["outcome"] = json!(outcome);
    }
    let url = client.url(&["admin", "sagas", id, verb], &query);
    let answer = client.post(url, &body, Some(version)).await.map_err(|error| match error.refused_with() {
        Some(412) => Error::Refused {
            status: 412,
            message: format!("the saga changed since version {version}; run `sagactl show {id}` and try again"),
        },
        _ if args.dry_run => error,
        _ => error.with_unknown_outcome(&format!("the {verb} may still be applied: check with `sagactl show {id}`")),
    })?;
    match output {
        Output::Json => emit_json(&answer.body),
        Output::Table => {
            let outcome = render::read_outcome(&answer.body).map_err(unreadable)?;
            emit(&render::outcome(verb, id, &outcome));
        }
    }
    Ok(())
}

async fn dlq_list(client: &Client, topic: Option<&str>, limit: Option<u32>, output: Output) -> Result<(), Error> {
    let mut query = Vec::new();
    query.extend(topic.map(|t| ("topic", t.to_owned())));
    query.extend(limit.map(|l| ("limit", l.to_string())));
    let body = client.get(client.url(&["admin", "dlq"], &query)).await?.body;
    match output {
        Output::Json => emit_json(&body),
        Output::Table => emit(&render::dlq_list(&body)),
    }
    Ok(())
}

async fn dlq_replay(client: &Client, args: &ReplayArgs, output: Output) -> Result<(), Error> {
    let mut body = json!({ "topic": args.topic, "reason": args.reason });
    if !args.all {
        let messages: Vec<Value> = args
            .messages
            .iter()
            .map(|(partition, offset)| json!({ "partition": partition, "offset": offset }))
            .collect();
        body["messages"] = Value::Array(messages);
    }
    let answer = client
        .post(client.url(&["admin", "dlq", "replay"], &[]), &body, None)
        .await
        .map_err(|e| e.with_unknown_outcome("some messages may have been replayed: check with `sagactl dlq list`"))?;
    let (report, problem) = render::replay_report(&args.topic, &answer.body);
    match output {
        Output::Json => emit_json(&answer.body),
        Output::Table => emit(&report),
    }
    match problem {
        Some(message) => Err(Error::Failed { status: None, message }),
        None => Ok(()),
    }
}

/// `token`: prints a development token (or, with `--output json`, the token and its claims).
fn mint(cli: &Cli, args: &TokenArgs) -> Result<(), Error> {
    let subject = args.sub.trim();
    if subject.is_empty() || subject.len() > 128 {
        return Err(Error::Usage("--sub must be 1 to 128 characters".into()));
    }
    let mut roles: Vec<AuthRole> = args.role.iter().map(|r| (*r).into()).collect();
    roles.sort();
    roles.dedup();
    let (token, claims) = minter(cli, args.secret.clone()).mint(subject, &roles, args.ttl);
    match cli.output {
        Output::Table => emit(&format!("{token}\n")),
        Output::Json => emit_json(&json!({ "token": token, "claims": claims })),
    }
    Ok(())
}
