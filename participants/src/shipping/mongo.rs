//! The MongoDB [`ShipmentStore`]. Collection `shipments`: `{_id: saga id, shipment_id, status
//! (created|cancelled|rejected), items: [{sku, quantity}], country, address (created shipments only),
//! reply, created_at, updated_at}`. Read and written by `_id` only (see the
//! [database access rule](crate::store#database-access-rule)); no secondary index.

use bson::DateTime as BsonDateTime;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::{Collection, Database};
use proto_events::{Address, Line, Reply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{Shipment, ShipmentStatus, ShipmentStore};
use crate::store::{Error, Inserted, by_id, insert_once};

const SHIPMENTS: &str = "shipments";

/// The shipments collection in the service's database.
#[derive(Clone)]
pub struct MongoShipmentStore {
    shipments: Collection<ShipmentDoc>,
    db: Database,
}

impl std::fmt::Debug for MongoShipmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoShipmentStore").field("database", &self.db.name()).finish()
    }
}

impl MongoShipmentStore {
    /// The store in `db`.
    pub fn new(db: &Database) -> Self {
        Self { shipments: db.collection(SHIPMENTS), db: db.clone() }
    }
}

#[derive(Serialize, Deserialize)]
struct LineDoc {
    sku: String,
    quantity: i64,
}

#[derive(Serialize, Deserialize)]
struct ShipmentDoc {
    #[serde(rename = "_id")]
    id: String,
    shipment_id: Option<String>,
    status: ShipmentStatus,
    items: Vec<LineDoc>,
    country: Option<String>,
    address: Option<Address>,
    reply: Reply,
    created_at: BsonDateTime,
    updated_at: BsonDateTime,
}

impl From<&Shipment> for ShipmentDoc {
    fn from(s: &Shipment) -> Self {
        Self {
            id: s.saga_id.to_string(),
            shipment_id: s.shipment_id.clone(),
            status: s.status,
            items: s.items.iter().map(|l| LineDoc { sku: l.sku.clone(), quantity: i64::from(l.quantity) }).collect(),
            country: s.country.clone(),
            address: s.address.clone(),
            reply: s.reply.clone(),
            created_at: BsonDateTime::from_chrono(s.created_at),
            updated_at: BsonDateTime::from_chrono(s.updated_at),
        }
    }
}

fn corrupt(reason: &str) -> Error {
    Error::Corrupt { what: "shipment", reason: reason.to_owned() }
}

impl ShipmentDoc {
    fn into_shipment(self) -> Result<Shipment, Error> {
        let items = self
            .items
            .into_iter()
            .map(|l| Ok(Line { sku: l.sku, quantity: u32::try_from(l.quantity).map_err(|_| corrupt("bad quantity"))? }))
            .collect::<Result<_, Error>>()?;
        Ok(Shipment {
            saga_id: self.id.parse().map_err(|_| corrupt("_id is not a UUID"))?,
            shipment_id: self.shipment_id,
            status: self.status,
            items,
            country: self.country,
            address: self.address,
            reply: self.reply,
            created_at: self.created_at.to_chrono(),
            updated_at: self.updated_at.to_chrono(),
        })
    }
}

impl ShipmentStore for MongoShipmentStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        Ok(())
    }

    #[tracing::instrument(name = "db.shipments.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "shipments", db.operation.name = "find"
    ))]
    async fn get(&self, saga_id: Uuid) -> Result<Option<Shipment>, Error> {
        let found =
            self.shipments.find_one(by_id(&saga_id.to_string())).await.map_err(Error::database("find shipment"))?;
        found.map(ShipmentDoc::into_shipment).transpose()
    }

    #[tracing::instrument(name = "db.shipments.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "shipments", db.operation.name = "insert"
    ))]
    async fn insert(&self, shipment: &Shipment) -> Result<Inserted, Error> {
        insert_once(&self.shipments, &ShipmentDoc::from(shipment), "insert shipment").await
    }

    #[tracing::instrument(name = "db.shipments.cancel", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "shipments", db.operation.name = "update"
    ))]
    async fn set_cancelled(&self, saga_id: Uuid, at: DateTime<Utc>) -> Result<(), Error> {
        let update = doc! { "$set": {
            "status": ShipmentStatus::Cancelled.as_str(),
            "updated_at": BsonDateTime::from_chrono(at),
        } };
        let result = (self.shipments.update_one(by_id(&saga_id.to_string()), update).await)
            .map_err(Error::database("cancel shipment"))?;
        if result.matched_count == 0 {
            return Err(Error::Raced { what: "shipment" });
        }
        Ok(())
    }
}
