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
    /// `MONGODB_URI`, default `mongodb://127.0.0.1:27017` (or the port in `MONGO_PORT`). Never logged: it may carry credentials.
    pub uri: String,
    /// The database this service owns (each service has its own).
    pub database: String,
}

impl MongoSettings {
    /// Settings from the environment; `database` is read from `database_var` with `default_database`.
    pub fn from_env(database_var: &'static str, default_database: &str) -> Self {
        Self {
            // The local database's port, when moved with MONGO_PORT, moves the default too.
            uri: config::string(
                "MONGODB_URI",
                &format!("mongodb://127.0.0.1:{}", config::string("MONGO_PORT", "27017")),
            ),
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

/// Creates the indexes of `models` that `collection` lacks, one at a time, by name.
///
/// Safe to run at every start: an index whose name exists is left alone. (FerretDB 1.24 drops the
/// connection when `createIndexes` names an index that already exists alongside new ones, so this never
/// asks for an existing index.) Every model must have a name.
pub async fn ensure_indexes<T: Send + Sync>(
    collection: &mongodb::Collection<T>,
    models: Vec<mongodb::IndexModel>,
) -> Result<(), mongodb::error::Error> {
    let existing = match collection.list_index_names().await {
        Ok(names) => names,
        // A collection that does not exist yet has no indexes.
        Err(e) if matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 26) => Vec::new(),
        Err(e) => return Err(e),
    };
    for model in models {
        let name = model.options.as_ref().and_then(|o| o.name.clone());
        assert!(name.is_some(), "ensure_indexes needs named indexes");
        if name.as_ref().is_some_and(|n| existing.contains(n)) {
            continue;
        }
        collection.create_index(model).await?;
    }
    Ok(())
}

/// Drops those of the indexes named `names` that `collection` has (a collection that does not exist has
/// none). For indexes a server cannot use: on FerretDB a secondary index is only a cost on every write.
pub async fn drop_indexes<T: Send + Sync>(
    collection: &mongodb::Collection<T>,
    names: &[String],
) -> Result<(), mongodb::error::Error> {
    let existing = match collection.list_index_names().await {
        Ok(existing) => existing,
        Err(e) if matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 26) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.iter().filter(|n| existing.contains(n)) {
        collection.drop_index(name).await?;
    }
    Ok(())
}

/// Which server speaks the MongoDB protocol at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MongoDB: a filter on `_id` plus other fields uses the `_id` index, and a conditional update on one
    /// document is atomic.
    MongoDb,
    /// FerretDB 1.x (SQLite backend): upstream answers only a filter that is exactly `{_id: value}` from the
    /// `_id` index (anything else, `{_id, version}` included, scans the collection); the build
    /// `ops/mongo/mongo.sh` installs also narrows a filter with an `_id` condition besides others by `_id`.
    /// Updates are read-modify-write, not atomic.
    FerretDb,
}

/// Asks the server which it is (`buildInfo` carries `ferretdbVersion` on FerretDB).
pub async fn flavor(client: &Client) -> Result<Flavor, Error> {
    let info = client.database("admin").run_command(doc! { "buildInfo": 1 }).await.map_err(Error::Unreachable)?;
    Ok(if info.contains_key("ferretdbVersion") { Flavor::FerretDb } else { Flavor::MongoDb })
}
