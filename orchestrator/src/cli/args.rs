//! The command line: global options and the commands, parsed by clap.

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use super::token::{parse_age, parse_duration};

/// What `--help` says about exit codes.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server refused the request (invalid, unauthorized, forbidden, not found, conflict, stale version)
  2  usage error: invalid options or arguments
  3  cannot reach the orchestrator (nothing was done)
  4  the orchestrator failed, or did not answer in time (an action's outcome may be unknown: check with show)

Without --token, sagactl mints a development operator token (HS256) with JWT_SECRET, or the built-in
development secret, and says so on stderr.";

/// The heading of options every command takes.
const GLOBAL: &str = "Global options";

/// sagactl: the operators' tool for the saga orchestrator's admin API.
#[derive(Debug, Parser)]
#[command(name = "sagactl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The orchestrator's base URL.
    #[arg(long, global = true, help_heading = GLOBAL, env = "SAGACTL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Bearer token for the API; without one, a development operator token is minted.
    #[arg(long, global = true, help_heading = GLOBAL, env = "SAGACTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The operator named in a minted token (its subject).
    #[arg(long = "as", global = true, help_heading = GLOBAL, value_name = "NAME", env = "USER", default_value = "operator")]
    pub operator: String,

    /// How to print answers: readable tables, or the server's JSON unchanged (for scripts).
    #[arg(long, short = 'o', global = true, help_heading = GLOBAL, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// How long to wait for each answer.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub keys: Keys,

    #[command(subcommand)]
    pub command: Command,
}

/// How development tokens are minted.
#[derive(Debug, Args)]
pub struct Keys {
    /// HS256 secret for minted tokens [default: the built-in development secret].
    #[arg(long = "jwt-secret", global = true, help_heading = GLOBAL, value_name = "SECRET", env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Issuer of minted tokens.
    #[arg(long = "jwt-issuer", global = true, help_heading = GLOBAL, value_name = "ISSUER", env = "JWT_ISSUER", default_value = orchestrator::auth::DEV_ISSUER)]
    pub issuer: String,

    /// Audience of minted tokens.
    #[arg(long = "jwt-audience", global = true, help_heading = GLOBAL, value_name = "AUDIENCE", env = "JWT_AUDIENCE", default_value = orchestrator::auth::DEV_AUDIENCE)]
    pub audience: String,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable tables and sentences.
    Table,
    /// The server's JSON, pretty-printed.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List sagas, filtered, oldest first.
    List(ListArgs),
    /// Show one saga: its state, order and whole timeline.
    Show {
        /// The saga (order) id.
        saga_id: String,
    },
    /// Send the saga's current step (or compensation) again, with a fresh retry budget.
    Retry(ActionArgs),
    /// Stop the saga and compensate the steps it finished.
    Compensate(ActionArgs),
    /// Record the outcome of a FAILED saga settled by hand.
    Resolve {
        /// What happened to the order.
        #[arg(long, value_enum)]
        outcome: Outcome,
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Dead letters: messages that could not be processed.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print a development JWT (HS256) to stdout.
    Token(TokenArgs),
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in this state (STARTED, RUNNING, BACKOFF, COMPENSATING, COMPENSATION_BACKOFF, COMPLETED,
    /// COMPENSATED, FAILED, RESOLVED).
    #[arg(long)]
    pub state: Option<String>,
    /// Only sagas at this step, such as charge_payment.
    #[arg(long)]
    pub step: Option<String>,
    /// Only sagas of this definition, such as order_fulfilment.
    #[arg(long)]
    pub definition: Option<String>,
    /// Only sagas in their state for longer than this: 90s, 15m, 2h, 1d.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<String>,
    /// Sagas per page (1 to 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: u16,
    /// Start after this saga id (the `next` of a previous page).
    #[arg(long, value_name = "SAGA_ID", conflicts_with = "all")]
    pub after: Option<String>,
    /// Follow every page to the end (with --output json: one page holding every saga, `next` null).
    #[arg(long)]
    pub all: bool,
}

/// What every saga action takes.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The saga (order) id.
    pub saga_id: String,
    /// Why (recorded on the saga's timeline with your name).
    #[arg(long)]
    pub reason: String,
    /// The saga version you decided on (the default: the version read just before acting).
    #[arg(long)]
    pub version: Option<u64>,
    /// Show what would happen; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// How a parked saga was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    /// The order was fulfilled after all.
    Completed,
    /// The order is off.
    Cancelled,
}

impl Outcome {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// `dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, per dead-letter topic.
    List {
        /// Only this dead-letter topic, such as saga.cmd.payment.dlq.
        #[arg(long)]
        topic: Option<String>,
        /// At most this many messages per topic, 1 to 1,000 [default: the server's, 100].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Publish dead letters again to the topic they came from.
    Replay(ReplayArgs),
}

/// `dlq replay`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["messages", "all"])))]
pub struct ReplayArgs {
    /// The dead-letter topic, such as saga.cmd.payment.dlq.
    #[arg(long)]
    pub topic: String,
    /// A message to replay, as PARTITION:OFFSET (repeat for several).
    #[arg(long = "message", value_name = "PARTITION:OFFSET", value_parser = parse_position)]
    pub messages: Vec<(i32, i64)>,
    /// Replay every message of the topic not replayed yet.
    #[arg(long)]
    pub all: bool,
    /// Why (recorded with your name).
    #[arg(long)]
    pub reason: String,
}

/// `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// A role the token grants (repeat for both).
    #[arg(long, value_enum, default_value = "operator")]
    pub role: Vec<Role>,
    /// The subject: the operator's name, or the customer's id.
    #[arg(long)]
    pub sub: String,
    /// How long the token is valid.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// HS256 secret (the same as --jwt-secret) [default: the built-in development secret].
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
}

/// A role, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Reads every order, uses the admin API.
    Operator,
    /// Places and reads their own orders.
    Customer,
}

impl From<Role> for orchestrator::auth::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Operator => orchestrator::auth::Role::Operator,
            Role::Customer => orchestrator::auth::Role::Customer,
        }
    }
}

/// `3:120` → partition 3, offset 120.
fn parse_position(text: &str) -> Result<(i32, i64), String> {
    let invalid = || format!("{text:?} is not PARTITION:OFFSET, such as 0:42");
    let (partition, offset) = text.split_once(':').ok_or_else(invalid)?;
    let partition: i32 = partition.trim().parse().map_err(|_| invalid())?;
    let offset: i64 = offset.trim().parse().map_err(|_| invalid())?;
    if partition < 0 || offset < 0 {
        return Err(invalid());
    }
    Ok((partition, offset))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sagactl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn positions_are_partition_colon_offset() {
        assert_eq!(parse_position("3:120"), Ok((3, 120)));
        for bad in ["3", "3:", ":5", "a:1", "1:b", "-1:3", "1:-3"] {
            assert!(parse_position(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn replay_needs_exactly_one_of_message_and_all() {
        let neither = parse(&["dlq", "replay", "--topic", "t.dlq", "--reason", "fixed"]).expect_err("neither");
        assert_eq!(neither.kind(), ErrorKind::MissingRequiredArgument);
        let both = parse(&["dlq", "replay", "--topic", "t.dlq", "--message", "0:1", "--all", "--reason", "fixed"])
            .expect_err("both");
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        let cli =
            parse(&["dlq", "replay", "--topic", "t.dlq", "--message", "0:1", "--message", "2:7", "--reason", "x"])
                .expect("valid");
        let Command::Dlq(DlqCommand::Replay(replay)) = cli.command else { panic!("a replay") };
        assert_eq!(replay.messages, vec![(0, 1), (2, 7)]);
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let cli = parse(&["list", "--output", "json", "--url", "http://h:1", "--limit", "5"]).expect("valid");
        assert_eq!((cli.output, cli.url.as_str()), (Output::Json, "http://h:1"));
        assert!(parse(&["list", "--limit", "0"]).is_err());
        assert!(parse(&["list", "--older-than", "15 minutes"]).is_err());
        assert!(parse(&["retry", "some-id"]).is_err(), "--reason is required");
    }
}
