//! The shipping participant: one shipment per saga, to the countries served, cancelled at most once.
//!
//! **Create.** A destination outside `SHIPPING_COUNTRIES` is refused (`country XX is not served`, recorded
//! without the address); else the shipment is recorded (items, country, address) with `shp_<saga id, hex>`
//! as its id and the reply's reference. The record is inserted first, without a read: a duplicate key
//! means the saga has one already (a redelivered create, or a tombstone), which is then read and its saved
//! reply answered. A first create is thus one insert (see [`crate::payment`] for why that matters on
//! FerretDB). **Cancel.** The shipment is read by `_id`; if it is created, it is set to cancelled by
//! an update filtered by `_id` alone (the status is checked in code: see the
//! [database access rule](crate::store#database-access-rule)); with no shipment, a `cancelled` tombstone
//! is recorded so that a late create is refused.
//!
//! The address is personal data: only this service holds it, it is never logged, and the HTTP API does not
//! show it.

pub mod http;
pub mod memory;
pub mod mongo;
pub mod store;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use chrono::{DateTime, Utc};
use mongodb::Database;
use platform::config;
use proto_events::commands::CreateShipment;
use proto_events::{Command, Meta, Participant, Reply};
use uuid::Uuid;

use self::store::{Shipment, ShipmentStatus, ShipmentStore};
use crate::app::Service;
use crate::clock::Clock;
use crate::domain::{self, Domain, Handled, misrouted};
use crate::store::{Error, Inserted};

pub use self::memory::MemoryShipmentStore;
pub use self::mongo::MongoShipmentStore;

/// The shipping service as the binary runs it.
pub type MongoShipping = Shipping<MongoShipmentStore>;

/// The countries served by default: the 27 EU member states, the United Kingdom and the United States.
pub const DEFAULT_COUNTRIES: &str =
    "AT,BE,BG,HR,CY,CZ,DK,EE,FI,FR,DE,GR,HU,IE,IT,LV,LT,LU,MT,NL,PL,PT,RO,SK,SI,ES,SE,GB,US";

/// The reply to a create that comes after the saga's cancel.
pub const CANCELLED_BEFORE_CREATE: &str = "the saga's shipment was cancelled before it was created";

/// The shipping service's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingSettings {
    /// `SHIPPING_COUNTRIES`, comma-separated ISO 3166-1 alpha-2 codes (default [`DEFAULT_COUNTRIES`]).
    pub countries: BTreeSet<String>,
}

impl Default for ShippingSettings {
    fn default() -> Self {
        Self::parse(DEFAULT_COUNTRIES).unwrap_or_else(|_| Self { countries: BTreeSet::new() })
    }
}

impl ShippingSettings {
    /// From the environment.
    pub fn from_env() -> Result<Self, config::Error> {
        let raw = config::string("SHIPPING_COUNTRIES", DEFAULT_COUNTRIES);
        Self::parse(&raw).map_err(|reason| config::Error::Invalid { name: "SHIPPING_COUNTRIES", value: raw, reason })
    }

    /// From a comma-separated list of country codes.
    pub fn parse(list: &str) -> Result<Self, String> {
        let countries: BTreeSet<String> =
            list.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
        if let Some(bad) = countries.iter().find(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(format!("{bad:?} is not an upper-case two-letter country code"));
        }
        if countries.is_empty() {
            return Err("no country is served".to_owned());
        }
        Ok(Self { countries })
    }
}

/// The shipping domain over a [`ShipmentStore`].
#[derive(Debug)]
pub struct Shipping<S> {
    store: S,
    settings: ShippingSettings,
    clock: Arc<dyn Clock>,
}

impl<S: ShipmentStore> Shipping<S> {
    /// Creates the store's indexes.
    pub async fn open(store: S, settings: ShippingSettings, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        store.ensure_indexes().await?;
        Ok(Self { store, settings, clock })
    }

    /// The store (for tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The shipment of `saga_id`, if any.
    pub async fn shipment(&self, saga_id: Uuid) -> Result<Option<Shipment>, Error> {
        self.store.get(saga_id).await
    }

    /// Creates the shipment of saga `saga_id`, once.
    pub async fn create(&self, saga_id: Uuid, create: &CreateShipment) -> Result<Handled, Error> {
        let shipment = self.decide(saga_id, create, self.clock.now());
        match self.store.insert(&shipment).await? {
            Inserted::New => Ok(Handled::applied(shipment.reply)),
            Inserted::Existed => match self.store.get(saga_id).await? {
                Some(recorded) => Ok(Handled::repeated(recorded.reply)),
                None => Err(Error::Corrupt { what: "shipment", reason: "exists and does not".to_owned() }),
            },
        }
    }

    fn decide(&self, saga_id: Uuid, create: &CreateShipment, now: DateTime<Utc>) -> Shipment {
        let country = create.address.country.clone();
        let mut shipment = Shipment {
            saga_id,
            shipment_id: None,
            status: ShipmentStatus::Rejected,
            items: create.items.clone(),
            reply: Reply::business(format!("country {country} is not served")),
            country: Some(country),
            address: None,
            created_at: now,
            updated_at: now,
        };
        if self.settings.countries.contains(&create.address.country) {
            let shipment_id = format!("shp_{}", saga_id.simple());
            shipment.status = ShipmentStatus::Created;
            shipment.reply = Reply::Succeeded { reference: Some(shipment_id.clone()) };
            shipment.shipment_id = Some(shipment_id);
            shipment.address = Some(create.address.clone());
        }
        shipment
    }

    /// Cancels the saga's shipment, once (with none, records a tombstone that refuses a late create).
    pub async fn cancel(&self, saga_id: Uuid) -> Result<Handled, Error> {
        let now = self.clock.now();
        let Some(shipment) = self.store.get(saga_id).await? else {
            if self.store.insert(&tombstone(saga_id, now)).await? == Inserted::Existed {
                return Err(Error::Raced { what: "shipment" });
            }
            return Ok(Handled::applied(Reply::ok()));
        };
        let reply = Reply::Succeeded { reference: shipment.shipment_id.clone() };
        match shipment.status {
            ShipmentStatus::Created => {
                // Checked here rather than in the update's filter: this process is the shipments' single
                // writer and handles one command at a time, so the shipment read above is still created.
                self.store.set_cancelled(saga_id, now).await?;
                Ok(Handled::applied(reply))
            }
            ShipmentStatus::Rejected => Ok(Handled::applied(reply)),
            ShipmentStatus::Cancelled => Ok(Handled::repeated(reply)),
        }
    }
}

fn tombstone(saga_id: Uuid, now: DateTime<Utc>) -> Shipment {
    Shipment {
        saga_id,
        shipment_id: None,
        status: ShipmentStatus::Cancelled,
        items: Vec::new(),
        country: None,
        address: None,
        reply: Reply::business(CANCELLED_BEFORE_CREATE),
        created_at: now,
        updated_at: now,
    }
}

impl<S: ShipmentStore> Domain for Shipping<S> {
    const PARTICIPANT: Participant = Participant::Shipping;

    async fn handle(&self, meta: &Meta, command: &Command) -> Result<Handled, domain::Error> {
        match command {
            Command::ShippingCreate(create) => Ok(self.create(meta.saga_id, create).await?),
            Command::ShippingCancel(_) => Ok(self.cancel(meta.saga_id).await?),
            other => Err(misrouted(Participant::Shipping, other)),
        }
    }
}

impl Service for Shipping<MongoShipmentStore> {
    type Settings = ShippingSettings;
    const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8083";

    fn settings_from_env() -> Result<ShippingSettings, config::Error> {
        ShippingSettings::from_env()
    }

    async fn open(db: &Database, settings: &ShippingSettings, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        Shipping::open(MongoShipmentStore::new(db), settings.clone(), clock).await
    }

    fn routes(service: Arc<Self>) -> Router {
        http::router(service)
    }
}

#[cfg(test)]
mod tests;
