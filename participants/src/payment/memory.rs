//! The in-memory [`PaymentStore`]: deterministic, with fault injection.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{Payment, PaymentStatus, PaymentStore};
use crate::store::{Error, Faults, Inserted};

/// In-memory payments.
#[derive(Debug, Default)]
pub struct MemoryPaymentStore {
    payments: Mutex<BTreeMap<Uuid, Payment>>,
    /// Injected faults.
    pub faults: Faults,
}

impl MemoryPaymentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Uuid, Payment>) -> T) -> T {
        f(&mut self.payments.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many payments are recorded.
    pub fn len(&self) -> usize {
        self.with(|p| p.len())
    }

    /// Whether no payment is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PaymentStore for MemoryPaymentStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        self.faults.read()
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Payment>, Error> {
        self.faults.read()?;
        Ok(self.with(|p| p.get(&saga_id).cloned()))
    }

    async fn insert(&self, payment: &Payment) -> Result<Inserted, Error> {
        self.faults.write()?;
        Ok(self.with(|p| {
            if p.contains_key(&payment.saga_id) {
                return Inserted::Existed;
            }
            p.insert(payment.saga_id, payment.clone());
            Inserted::New
        }))
    }

    async fn set_refunded(&self, saga_id: Uuid, refunded_cents: i64, at: DateTime<Utc>) -> Result<(), Error> {
        self.faults.write()?;
        self.with(|p| match p.get_mut(&saga_id) {
            Some(payment) => {
                payment.status = PaymentStatus::Refunded;
                payment.refunded_cents = refunded_cents;
                payment.updated_at = at;
                Ok(())
            }
            None => Err(Error::Raced { what: "payment" }),
        })
    }
}
