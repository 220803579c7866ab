//! The MongoDB [`StockStore`]. Collections:
//!
//! - `stock_moves`: `{_id, sku, saga_id (string or null), kind (reserve|release|restock), delta (int64),
//!   at (date)}`, append-only.
//! - `reservations`: `{_id: saga id, lines: [{sku, quantity}], status (reserving|reserved|refused|released),
//!   reply, updated_at}`.
//!
//! Only `_id` is indexed, and the hot path filters by `_id` alone (see the
//! [database access rule](crate::store#database-access-rule)); `sku`, `saga_id` and `status` are stored
//! for operators and for the start-up scans. Saga ids are stored as their canonical text, so ids and
//! documents always agree.

use std::collections::BTreeMap;

use bson::DateTime as BsonDateTime;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::{Collection, Database};
use proto_events::{Line, Reply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{MoveKind, Reservation, ReservationStatus, StockMove, StockStore};
use crate::store::{Error, Inserted, by_id, insert_all, insert_once};

const MOVES: &str = "stock_moves";
const RESERVATIONS: &str = "reservations";

/// The inventory's collections in its database.
#[derive(Debug, Clone)]
pub struct MongoStockStore {
    moves: Collection<MoveDoc>,
    reservations: Collection<ReservationDoc>,
}

impl MongoStockStore {
    /// The store in `db`.
    pub fn new(db: &Database) -> Self {
        Self { moves: db.collection(MOVES), reservations: db.collection(RESERVATIONS) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MoveDoc {
    #[serde(rename = "_id")]
    id: String,
    sku: String,
    saga_id: Option<String>,
    kind: MoveKind,
    delta: i64,
    at: BsonDateTime,
}

impl From<&StockMove> for MoveDoc {
    fn from(m: &StockMove) -> Self {
        Self {
            id: m.id.clone(),
            sku: m.sku.clone(),
            saga_id: m.saga_id.map(|s| s.to_string()),
            kind: m.kind,
            delta: m.delta,
            at: BsonDateTime::from_chrono(m.at),
        }
    }
}

impl MoveDoc {
    fn into_move(self) -> Result<StockMove, Error> {
        let saga_id = self.saga_id.as_deref().map(parse_saga).transpose()?;
        Ok(StockMove {
            id: self.id,
            sku: self.sku,
            saga_id,
            kind: self.kind,
            delta: self.delta,
            at: self.at.to_chrono(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LineDoc {
    sku: String,
    quantity: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReservationDoc {
    #[serde(rename = "_id")]
    id: String,
    lines: Vec<LineDoc>,
    status: ReservationStatus,
    reply: Reply,
    updated_at: BsonDateTime,
}

impl From<&Reservation> for ReservationDoc {
    fn from(r: &Reservation) -> Self {
        Self {
            id: r.saga_id.to_string(),
            lines: r.lines.iter().map(|l| LineDoc { sku: l.sku.clone(), quantity: i64::from(l.quantity) }).collect(),
            status: r.status,
            reply: r.reply.clone(),
            updated_at: BsonDateTime::from_chrono(r.updated_at),
        }
    }
}

impl ReservationDoc {
    fn into_reservation(self) -> Result<Reservation, Error> {
        let lines = self
            .lines
            .into_iter()
            .map(|l| {
                let quantity =
                    u32::try_from(l.quantity).map_err(|_| corrupt("reservation", "quantity out of range"))?;
                Ok(Line { sku: l.sku, quantity })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Reservation {
            saga_id: parse_saga(&self.id)?,
            lines,
            status: self.status,
            reply: self.reply,
            updated_at: self.updated_at.to_chrono(),
        })
    }
}

fn parse_saga(raw: &str) -> Result<Uuid, Error> {
    raw.parse().map_err(|_| corrupt("saga id", "not a UUID"))
}

fn corrupt(what: &'static str, reason: &str) -> Error {
    Error::Corrupt { what, reason: reason.to_owned() }
}

/// A `$sum` result as an integer (the server may answer int32, int64 or double).
fn as_i64(value: Option<&Bson>) -> Result<i64, Error> {
    match value {
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Int64(n)) => Ok(*n),
        #[allow(clippy::cast_possible_truncation)]
        Some(Bson::Double(n)) if n.fract() == 0.0 => Ok(*n as i64),
        _ => Err(corrupt("stock sum", "not an integer")),
    }
}

impl StockStore for MongoStockStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        Ok(())
    }

    #[tracing::instrument(name = "db.stock_moves.sum", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "stock_moves", db.operation.name = "aggregate"
    ))]
    async fn available(&self) -> Result<BTreeMap<String, i64>, Error> {
        // Start-up only: a `$group` over the whole ledger.
        let pipeline = [doc! { "$group": { "_id": "$sku", "available": { "$sum": "$delta" } } }];
        let cursor = self.moves.aggregate(pipeline).await.map_err(Error::database("sum stock moves"))?;
        let groups: Vec<Document> = cursor.try_collect().await.map_err(Error::database("sum stock moves"))?;
        groups
            .iter()
            .map(|g| {
                let sku = g.get_str("_id").map_err(|_| corrupt("stock sum", "SKU is not a string"))?;
                Ok((sku.to_owned(), as_i64(g.get("available"))?))
            })
            .collect()
    }

    #[tracing::instrument(name = "db.reservations.in_progress", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "reservations", db.operation.name = "find"
    ))]
    async fn reservations_in_progress(&self) -> Result<Vec<Reservation>, Error> {
        // Start-up only: a filter on `status` scans the collection.
        let filter = doc! { "status": ReservationStatus::Reserving.as_str() };
        let cursor = self.reservations.find(filter).await.map_err(Error::database("find reservations in progress"))?;
        let docs: Vec<ReservationDoc> =
            cursor.try_collect().await.map_err(Error::database("find reservations in progress"))?;
        docs.into_iter().map(ReservationDoc::into_reservation).collect()
    }

    #[tracing::instrument(name = "db.stock_moves.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "stock_moves", db.operation.name = "find"
    ))]
    async fn find_move(&self, id: &str) -> Result<Option<StockMove>, Error> {
        let found = self.moves.find_one(by_id(id)).await.map_err(Error::database("find stock move"))?;
        found.map(MoveDoc::into_move).transpose()
    }

    #[tracing::instrument(name = "db.stock_moves.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "stock_moves", db.operation.name = "insert"
    ))]
    async fn insert_moves(&self, moves: &[StockMove]) -> Result<(), Error> {
        let docs: Vec<MoveDoc> = moves.iter().map(MoveDoc::from).collect();
        insert_all(&self.moves, &docs, "insert stock moves").await
    }

    #[tracing::instrument(name = "db.reservations.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "reservations", db.operation.name = "find"
    ))]
    async fn reservation(&self, saga_id: Uuid) -> Result<Option<Reservation>, Error> {
        let found = self
            .reservations
            .find_one(by_id(&saga_id.to_string()))
            .await
            .map_err(Error::database("find reservation"))?;
        found.map(ReservationDoc::into_reservation).transpose()
    }

    #[tracing::instrument(name = "db.reservations.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "reservations", db.operation.name = "insert"
    ))]
    async fn insert_reservation(&self, reservation: &Reservation) -> Result<Inserted, Error> {
        insert_once(&self.reservations, &ReservationDoc::from(reservation), "insert reservation").await
    }

    #[tracing::instrument(name = "db.reservations.replace", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "reservations", db.operation.name = "replace"
    ))]
    async fn replace_reservation(&self, reservation: &Reservation) -> Result<(), Error> {
        let document = ReservationDoc::from(reservation);
        let result = self
            .reservations
            .replace_one(by_id(&document.id), &document)
            .await
            .map_err(Error::database("replace reservation"))?;
        if result.matched_count == 0 {
            return Err(Error::Raced { what: "reservation" });
        }
        Ok(())
    }
}
