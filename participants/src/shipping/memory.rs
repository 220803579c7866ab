//! The in-memory [`ShipmentStore`]: deterministic, with fault injection.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{Shipment, ShipmentStatus, ShipmentStore};
use crate::store::{Error, Faults, Inserted};

/// In-memory shipments.
#[derive(Debug, Default)]
pub struct MemoryShipmentStore {
    shipments: Mutex<BTreeMap<Uuid, Shipment>>,
    /// Injected faults.
    pub faults: Faults,
}

impl MemoryShipmentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Uuid, Shipment>) -> T) -> T {
        f(&mut self.shipments.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many shipments are recorded.
    pub fn len(&self) -> usize {
        self.with(|s| s.len())
    }

    /// Whether no shipment is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ShipmentStore for MemoryShipmentStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        self.faults.read()
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Shipment>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| s.get(&saga_id).cloned()))
    }

    async fn insert(&self, shipment: &Shipment) -> Result<Inserted, Error> {
        self.faults.write()?;
        Ok(self.with(|s| {
            if s.contains_key(&shipment.saga_id) {
                return Inserted::Existed;
            }
            s.insert(shipment.saga_id, shipment.clone());
            Inserted::New
        }))
    }

    async fn set_cancelled(&self, saga_id: Uuid, at: DateTime<Utc>) -> Result<(), Error> {
        self.faults.write()?;
        self.with(|s| match s.get_mut(&saga_id) {
            Some(shipment) => {
                shipment.status = ShipmentStatus::Cancelled;
                shipment.updated_at = at;
                Ok(())
            }
            None => Err(Error::Raced { what: "shipment" }),
        })
    }
}
