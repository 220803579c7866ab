//! The in-memory [`StockStore`]: deterministic (ordered maps, no clock, no randomness), with fault
//! injection, for unit tests and a simulator.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use super::store::{Reservation, StockMove, StockStore};
use crate::store::{Error, Faults, Inserted};

#[derive(Debug, Default)]
struct State {
    moves: BTreeMap<String, StockMove>,
    reservations: BTreeMap<Uuid, Reservation>,
}

/// An in-memory stock ledger.
#[derive(Debug, Default)]
pub struct MemoryStockStore {
    state: Mutex<State>,
    /// Injected faults.
    pub faults: Faults,
}

impl MemoryStockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every move, ordered by id (for assertions).
    pub fn moves(&self) -> Vec<StockMove> {
        self.with(|s| s.moves.values().cloned().collect())
    }
}

impl StockStore for MemoryStockStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        self.faults.read()
    }

    async fn available(&self, skus: Option<&[String]>) -> Result<BTreeMap<String, i64>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| {
            let mut sums = BTreeMap::new();
            for m in s.moves.values().filter(|m| skus.is_none_or(|skus| skus.contains(&m.sku))) {
                *sums.entry(m.sku.clone()).or_insert(0) += m.delta;
            }
            sums
        }))
    }

    async fn insert_move(&self, stock_move: &StockMove) -> Result<Inserted, Error> {
        self.faults.write()?;
        Ok(self.with(|s| {
            if s.moves.contains_key(&stock_move.id) {
                return Inserted::Existed;
            }
            s.moves.insert(stock_move.id.clone(), stock_move.clone());
            Inserted::New
        }))
    }

    async fn saga_moves(&self, saga_id: Uuid) -> Result<Vec<StockMove>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| s.moves.values().filter(|m| m.saga_id == Some(saga_id)).cloned().collect()))
    }

    async fn reservation(&self, saga_id: Uuid) -> Result<Option<Reservation>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| s.reservations.get(&saga_id).cloned()))
    }

    async fn put_reservation(&self, reservation: &Reservation) -> Result<(), Error> {
        self.faults.write()?;
        self.with(|s| s.reservations.insert(reservation.saga_id, reservation.clone()));
        Ok(())
    }
}
