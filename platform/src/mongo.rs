//! The document database connection. Works against MongoDB and against FerretDB: the code relies on
//! single-document atomic updates, unique indexes and findOneAndUpdate, never on multi-document
//! transactions, change streams or TTL indexes (see the README's "Database compatibility").

use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;

use crate::config;

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The connection string does not parse.
    #[error("MONGODB_URI is not a valid connection string: {0}")]
    Uri(mongodb::error::Error),
    /// The server did not answer a ping in time.
    #[error("the database did not answer a ping: {0}")]
    Unreachable(mongodb::error::Error),
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// `MONGODB_URI`, default `mongodb://127.0.0.1:27017`. Never logged: it may carry credentials.
    pub uri: String,
    /// The database this service owns (each service has its own).
    pub database: String,
}

impl MongoSettings {
    /// Settings from the environment; `database` is read from `database_var` with `default_database`.
    pub fn from_env(database_var: &'static str, default_database: &str) -> Self {
        Self {
            uri: config::string("MONGODB_URI", "mongodb://127.0.0.1:27017"),
            database: config::string(database_var, default_database),
        }
    }

    /// A client with short server-selection and connect timeouts, so that a missing database shows up as
    /// an error within seconds rather than a hang.
    pub async fn client(&self, app_name: &str) -> Result<Client, Error> {
        let mut options = ClientOptions::parse(&self.uri).await.map_err(Error::Uri)?;
        options.app_name = Some(app_name.to_owned());
        options.server_selection_timeout.get_or_insert(Duration::from_secs(5));
        options.connect_timeout.get_or_insert(Duration::from_secs(5));
        Client::with_options(options).map_err(Error::Uri)
    }
}

/// Sends `ping` to the database, to tell whether it answers.
pub async fn ping(client: &Client) -> Result<(), Error> {
    client.database("admin").run_command(doc! { "ping": 1 }).await.map(|_| ()).map_err(Error::Unreachable)
}
