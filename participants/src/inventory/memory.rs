//! The in-memory [`StockStore`]: deterministic (ordered maps, no clock, no randomness), with fault
//! injection, for unit tests and a simulator. Every document written counts as one write of the fault
//! budget, so a batch of moves can be cut after any of them, as a crash could cut `insert_many`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use super::store::{Reservation, ReservationStatus, StockMove, StockStore};
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
    scans: AtomicU32,
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

    /// Every reservation record, ordered by saga id (for assertions).
    pub fn reservations(&self) -> Vec<Reservation> {
        self.with(|s| s.reservations.values().cloned().collect())
    }

    /// How many whole-collection reads ([`StockStore::available`], [`StockStore::reservations_in_progress`])
    /// were made: the hot path must make none.
    pub fn scans(&self) -> u32 {
        self.scans.load(Ordering::Relaxed)
    }

    fn scan(&self) -> Result<(), Error> {
        self.faults.read()?;
        self.scans.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl StockStore for MemoryStockStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        self.faults.read()
    }

    async fn available(&self) -> Result<BTreeMap<String, i64>, Error> {
        self.scan()?;
        Ok(self.with(|s| {
            let mut sums = BTreeMap::new();
            for m in s.moves.values() {
                *sums.entry(m.sku.clone()).or_insert(0) += m.delta;
            }
            sums
        }))
    }

    async fn reservations_in_progress(&self) -> Result<Vec<Reservation>, Error> {
        self.scan()?;
        Ok(self
            .with(|s| s.reservations.values().filter(|r| r.status == ReservationStatus::Reserving).cloned().collect()))
    }

    async fn find_move(&self, id: &str) -> Result<Option<StockMove>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| s.moves.get(id).cloned()))
    }

    async fn insert_moves(&self, moves: &[StockMove]) -> Result<(), Error> {
        for stock_move in moves {
            self.faults.write()?;
            self.with(|s| {
                s.moves.entry(stock_move.id.clone()).or_insert_with(|| stock_move.clone());
            });
        }
        Ok(())
    }

    async fn reservation(&self, saga_id: Uuid) -> Result<Option<Reservation>, Error> {
        self.faults.read()?;
        Ok(self.with(|s| s.reservations.get(&saga_id).cloned()))
    }

    async fn insert_reservation(&self, reservation: &Reservation) -> Result<Inserted, Error> {
        self.faults.write()?;
        Ok(self.with(|s| {
            if s.reservations.contains_key(&reservation.saga_id) {
                return Inserted::Existed;
            }
            s.reservations.insert(reservation.saga_id, reservation.clone());
            Inserted::New
        }))
    }

    async fn replace_reservation(&self, reservation: &Reservation) -> Result<(), Error> {
        self.faults.write()?;
        self.with(|s| match s.reservations.get_mut(&reservation.saga_id) {
            Some(existing) => {
                *existing = reservation.clone();
                Ok(())
            }
            None => Err(Error::Raced { what: "reservation" }),
        })
    }
}
