//! What can stop a benchmark run. Failures of single orders are not errors of the run: they are counted in
//! the report (see [`crate::load::OrderError`]).

/// A benchmark run that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stack does not answer (or is not ready) where the bench looks for it.
    #[error(
        "the stack is not up: {0}; start it with `make up` (or point the bench at it with --orchestrator/--inventory)"
    )]
    NotReady(String),
    /// An HTTP request failed.
    #[error("{what}: {source}")]
    Http {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// An HTTP request got an answer the bench cannot use.
    #[error("{what}: answered {status}: {body}")]
    Status {
        /// What was being done.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// A Kafka operation failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// Setting up Kafka (settings, topics) failed.
    #[error("{what}: {source}")]
    KafkaSetup {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: platform::kafka::Error,
    },
    /// A database operation failed.
    #[error("{what}: {source}")]
    Database {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: Box<mongodb::error::Error>,
    },
    /// Connecting to the database failed.
    #[error("{what}: {source}")]
    DatabaseSetup {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: platform::mongo::Error,
    },
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Something did not happen within its time limit.
    #[error("{0} did not happen within {1:?}")]
    Timeout(String, std::time::Duration),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// An [`Error::Io`] for `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// An [`Error::Http`] for `what`.
    pub fn http(what: impl Into<String>) -> impl FnOnce(reqwest::Error) -> Self {
        let what = what.into();
        move |source| Self::Http { what, source }
    }

    /// An [`Error::Kafka`] for `what`.
    pub fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let what = what.into();
        move |source| Self::Kafka { what, source: Box::new(source) }
    }

    /// An [`Error::Database`] for `what`.
    pub fn database(what: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> Self {
        let what = what.into();
        move |source| Self::Database { what, source: Box::new(source) }
    }
}

/// The result of a benchmark operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
