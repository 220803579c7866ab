//! The inventory participant: stock per SKU, reserved for a saga all lines or none, and released exactly.
//!
//! **Ledger.** Stock lives in an append-only ledger of moves with deterministic ids (see [`store`]); the
//! available stock of a SKU is the sum of its deltas. No multi-document transaction is needed: the process
//! may be killed between any two writes, and repeating the command repeats only writes of moves that exist
//! already, which the unique `_id` turns into no-ops. Stock is conserved exactly.
//!
//! **Cache.** Decisions ("is there enough stock?") are taken from an in-memory cache of the available stock
//! per SKU, loaded at start-up and kept up to date by the writes this process makes. The inventory is the
//! only writer (the runtime calls it one command at a time, and HTTP restocks take the same lock), so the
//! cache is exact; a SKU whose write failed (outcome unknown) is reloaded from the ledger before it is used
//! again. Consequently seeding while the service runs must go through its HTTP API (`PUT /v1/stock/{sku}`):
//! a separate process writing the ledger would not update this process's cache.
//!
//! For the same reason, run **one inventory instance per database**: the consumer group splits sagas, not
//! SKUs, between instances, and two instances would each decide from their own cache. Scaling out needs
//! SKU-partitioned instances (each owning a disjoint set of SKUs), which this version does not do.
//!
//! **Reserve** (saga `s`, lines `L`): a recorded outcome for `s` is re-sent; reserve moves of `s` without a
//! record mean a reserve was decided and interrupted, so the missing moves are written; otherwise the cache
//! decides: all lines, or `not enough stock for SKU-x` and nothing. **Release**: writes the release move of
//! each reserve move of `s` (exactly what was taken), marks the record released, and when nothing was
//! reserved leaves a `released` tombstone so that a late reserve for `s` is refused.

pub mod http;
pub mod memory;
pub mod mongo;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use mongodb::Database;
use platform::config;
use platform::mongo::MongoSettings;
use proto_events::{Command, Line, Meta, Participant, Reply};
use tokio::sync::Mutex;
use uuid::Uuid;

use self::store::{MoveKind, Reservation, ReservationStatus, StockMove, StockStore};
use crate::app::Service;
use crate::clock::{Clock, SystemClock};
use crate::domain::{self, Domain, Handled, misrouted};
use crate::store::{Error, Inserted};

pub use self::memory::MemoryStockStore;
pub use self::mongo::MongoStockStore;

/// The inventory service as the binary runs it.
pub type MongoInventory = Inventory<MongoStockStore>;

/// The reply to a reserve that comes after the saga's release.
pub const RELEASED_BEFORE_RESERVE: &str = "the saga's stock was released before it was reserved";

/// The largest quantity a SKU may be set to.
pub const MAX_AVAILABLE: i64 = 1_000_000_000;

/// The inventory domain over a [`StockStore`].
#[derive(Debug)]
pub struct Inventory<S> {
    store: S,
    clock: Arc<dyn Clock>,
    cache: Mutex<Cache>,
}

/// Available stock per SKU, as the ledger says, and the SKUs whose value must be reloaded before use.
#[derive(Debug, Default)]
struct Cache {
    available: BTreeMap<String, i64>,
    stale: BTreeSet<String>,
}

impl Cache {
    fn get(&self, sku: &str) -> i64 {
        self.available.get(sku).copied().unwrap_or(0)
    }

    fn add(&mut self, sku: &str, delta: i64) {
        *self.available.entry(sku.to_owned()).or_insert(0) += delta;
    }

    fn mark_stale<'a>(&mut self, skus: impl IntoIterator<Item = &'a str>) {
        self.stale.extend(skus.into_iter().map(str::to_owned));
    }

    /// The first line the cache cannot serve.
    fn short<'a>(&self, lines: &'a [Line]) -> Option<&'a Line> {
        lines.iter().find(|l| self.get(&l.sku) < i64::from(l.quantity))
    }
}

impl<S: StockStore> Inventory<S> {
    /// Creates the store's indexes and loads the cache from the ledger.
    pub async fn open(store: S, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        store.ensure_indexes().await?;
        let available = store.available(None).await?;
        Ok(Self { store, clock, cache: Mutex::new(Cache { available, stale: BTreeSet::new() }) })
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Reserves every line of `lines` for saga `saga_id`, or none.
    pub async fn reserve(&self, saga_id: Uuid, lines: &[Line]) -> Result<Handled, Error> {
        let mut cache = self.cache.lock().await;
        let result = self.reserve_locked(&mut cache, saga_id, lines).await;
        if result.is_err() {
            cache.mark_stale(lines.iter().map(|l| l.sku.as_str()));
        }
        result
    }

    async fn reserve_locked(&self, cache: &mut Cache, saga_id: Uuid, lines: &[Line]) -> Result<Handled, Error> {
        if let Some(recorded) = self.store.reservation(saga_id).await? {
            return Ok(Handled::repeated(recorded.reply));
        }
        let moves = self.store.saga_moves(saga_id).await?;
        if moves.iter().any(|m| m.kind == MoveKind::Release) {
            // A release ran (and was interrupted before recording): this reserve comes too late.
            let reply = Reply::business(RELEASED_BEFORE_RESERVE);
            self.record(saga_id, lines_of(&moves), ReservationStatus::Released, reply.clone()).await?;
            return Ok(Handled::applied(reply));
        }
        let decided = moves.iter().any(|m| m.kind == MoveKind::Reserve);
        self.refresh(cache).await?;
        if !decided && let Some(line) = cache.short(lines) {
            let reply = Reply::business(format!("not enough stock for {}", line.sku));
            self.record(saga_id, lines.to_vec(), ReservationStatus::Refused, reply.clone()).await?;
            return Ok(Handled::applied(reply));
        }
        let now = self.clock.now();
        for line in lines {
            self.insert(cache, &StockMove::reserve(saga_id, &line.sku, i64::from(line.quantity), now)).await?;
        }
        self.record(saga_id, lines.to_vec(), ReservationStatus::Reserved, Reply::ok()).await?;
        Ok(Handled::applied(Reply::ok()))
    }

    /// Gives back exactly what saga `saga_id` reserved (nothing if it reserved nothing), once.
    pub async fn release(&self, saga_id: Uuid) -> Result<Handled, Error> {
        let mut cache = self.cache.lock().await;
        self.release_locked(&mut cache, saga_id).await
    }

    async fn release_locked(&self, cache: &mut Cache, saga_id: Uuid) -> Result<Handled, Error> {
        let recorded = self.store.reservation(saga_id).await?;
        let moves = self.store.saga_moves(saga_id).await?;
        let now = self.clock.now();
        let mut released_now = false;
        for reserve in moves.iter().filter(|m| m.kind == MoveKind::Reserve) {
            released_now |= self.insert(cache, &StockMove::release_of(reserve, now)).await? == Inserted::New;
        }
        let was_released = recorded.as_ref().is_some_and(|r| r.status == ReservationStatus::Released);
        match recorded {
            Some(r) if r.status == ReservationStatus::Released => {}
            Some(r) => self.record(saga_id, r.lines, ReservationStatus::Released, r.reply).await?,
            None => {
                let reply = Reply::business(RELEASED_BEFORE_RESERVE);
                self.record(saga_id, lines_of(&moves), ReservationStatus::Released, reply).await?;
            }
        }
        Ok(if was_released && !released_now { Handled::repeated(Reply::ok()) } else { Handled::applied(Reply::ok()) })
    }

    /// Sets the available stock of `sku` to `target` by appending a restock move of the difference (none
    /// when it is there already). Returns the new available stock.
    pub async fn set_available(&self, sku: &str, target: i64) -> Result<i64, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        let known = cache.available.contains_key(sku);
        let delta = target - cache.get(sku);
        if delta != 0 || !known {
            let id = Uuid::now_v7().to_string();
            self.insert(&mut cache, &StockMove::restock(&id, sku, delta, self.clock.now())).await?;
        }
        Ok(cache.get(sku))
    }

    /// Sets SKU-1 to SKU-`skus` to `units` available each.
    pub async fn seed(&self, skus: u32, units: i64) -> Result<(), Error> {
        for n in 1..=skus {
            self.set_available(&format!("SKU-{n}"), units).await?;
        }
        Ok(())
    }

    /// The available stock of `sku`, or none if the SKU has never been stocked.
    pub async fn available(&self, sku: &str) -> Result<Option<i64>, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        Ok(cache.available.get(sku).copied())
    }

    /// The available stock of every SKU ever stocked.
    pub async fn all_available(&self) -> Result<BTreeMap<String, i64>, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        Ok(cache.available.clone())
    }

    /// Appends `stock_move`, keeping the cache in step; a failed write leaves its SKU stale.
    async fn insert(&self, cache: &mut Cache, stock_move: &StockMove) -> Result<Inserted, Error> {
        match self.store.insert_move(stock_move).await {
            Ok(Inserted::New) => {
                cache.add(&stock_move.sku, stock_move.delta);
                Ok(Inserted::New)
            }
            Ok(Inserted::Existed) => Ok(Inserted::Existed),
            Err(error) => {
                cache.mark_stale([stock_move.sku.as_str()]);
                Err(error)
            }
        }
    }

    /// Reloads the stale SKUs from the ledger.
    async fn refresh(&self, cache: &mut Cache) -> Result<(), Error> {
        if cache.stale.is_empty() {
            return Ok(());
        }
        let skus: Vec<String> = cache.stale.iter().cloned().collect();
        let fresh = self.store.available(Some(&skus)).await?;
        for sku in skus {
            match fresh.get(&sku) {
                Some(available) => cache.available.insert(sku, *available),
                None => cache.available.remove(&sku),
            };
        }
        cache.stale.clear();
        tracing::info!(skus = fresh.len(), "reloaded stale stock from the ledger");
        Ok(())
    }

    async fn record(
        &self,
        saga_id: Uuid,
        lines: Vec<Line>,
        status: ReservationStatus,
        reply: Reply,
    ) -> Result<(), Error> {
        let reservation = Reservation { saga_id, lines, status, reply, updated_at: self.clock.now() };
        self.store.put_reservation(&reservation).await
    }
}

/// The lines a saga's reserve moves took.
fn lines_of(moves: &[StockMove]) -> Vec<Line> {
    moves
        .iter()
        .filter(|m| m.kind == MoveKind::Reserve)
        .map(|m| Line { sku: m.sku.clone(), quantity: u32::try_from(-m.delta).unwrap_or(0) })
        .collect()
}

impl<S: StockStore> Domain for Inventory<S> {
    const PARTICIPANT: Participant = Participant::Inventory;

    async fn handle(&self, meta: &Meta, command: &Command) -> Result<Handled, domain::Error> {
        match command {
            Command::InventoryReserve(reserve) => Ok(self.reserve(meta.saga_id, &reserve.items).await?),
            Command::InventoryRelease(_) => Ok(self.release(meta.saga_id).await?),
            other => Err(misrouted(Participant::Inventory, other)),
        }
    }
}

impl Service for Inventory<MongoStockStore> {
    type Settings = ();
    const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8081";

    fn settings_from_env() -> Result<(), config::Error> {
        Ok(())
    }

    async fn open(db: &Database, (): &(), clock: Arc<dyn Clock>) -> Result<Self, Error> {
        Inventory::open(MongoStockStore::new(db), clock).await
    }

    fn routes(service: Arc<Self>) -> Router {
        http::router(service)
    }
}

/// What `inventory seed` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSettings {
    /// `--skus N` or `SEED_SKUS`, default 20: seeds SKU-1 to SKU-N.
    pub skus: u32,
    /// `--units M` or `SEED_UNITS`, default 1000: available units of each.
    pub units: i64,
}

impl SeedSettings {
    /// From the command-line arguments after `seed`, falling back to the environment.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut settings = Self {
            skus: config::parsed("SEED_SKUS", 20).map_err(|e| e.to_string())?,
            units: config::parsed("SEED_UNITS", 1000).map_err(|e| e.to_string())?,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--skus" => settings.skus = value.parse().map_err(|_| format!("--skus {value:?} is not a count"))?,
                "--units" => settings.units = value.parse().map_err(|_| format!("--units {value:?} is not a count"))?,
                other => {
                    return Err(format!("unknown argument {other:?}; usage: inventory seed [--skus N] [--units M]"));
                }
            }
        }
        if settings.skus == 0 || settings.skus > 100_000 || !(0..=MAX_AVAILABLE).contains(&settings.units) {
            return Err(format!("nothing sensible to seed: {settings:?}"));
        }
        Ok(settings)
    }
}

/// `inventory seed`: writes the seed stock straight into the ledger (through [`Inventory::set_available`],
/// so running it twice changes nothing). Use it while the service is stopped; while it runs, use
/// `PUT /v1/stock/{sku}` instead, so that the service's cache sees the change.
pub async fn seed(args: &[String]) -> anyhow::Result<()> {
    let seed = SeedSettings::parse(args).map_err(anyhow::Error::msg)?;
    let mongo = MongoSettings::from_env("MONGODB_DATABASE", Participant::Inventory.name());
    let client = mongo.client("inventory-seed").await?;
    let inventory =
        Inventory::open(MongoStockStore::new(&client.database(&mongo.database)), Arc::new(SystemClock)).await?;
    inventory.seed(seed.skus, seed.units).await?;
    tracing::info!(skus = seed.skus, units = seed.units, database = %mongo.database, "seeded stock");
    Ok(())
}

/// The `inventory` binary: `inventory` serves; `inventory seed [--skus N] [--units M]` seeds and exits.
pub async fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("seed") => {
            platform::telemetry::init_logging("inventory");
            match seed(&args[1..]).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "seeding failed");
                    ExitCode::FAILURE
                }
            }
        }
        Some(other) => {
            eprintln!("inventory: unknown command {other:?}; usage: inventory [seed [--skus N] [--units M]]");
            ExitCode::from(2)
        }
        None => crate::app::serve::<MongoInventory>().await,
    }
}

#[cfg(test)]
mod tests;
