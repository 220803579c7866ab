//! The inventory participant: stock per SKU, reserved for a saga all lines or none, and released exactly.
//!
//! **Ledger.** Stock lives in an append-only ledger of moves with deterministic ids (see [`store`]); the
//! available stock of a SKU is the sum of its deltas, less what open reserve intents hold. No
//! multi-document transaction is needed: the process may be killed between any two writes, and repeating
//! the command repeats only writes of documents that exist already, which the unique `_id` turns into
//! no-ops. Stock is conserved exactly.
//!
//! **Reserve** (saga `s`, lines `L`). Only the reservation record (`_id` = `s`) and the moves of `L` (by
//! their deterministic ids) are read, never a query on `saga_id` (see the
//! [database access rule](crate::store#database-access-rule)). A final record (`reserved`, `refused`,
//! `released`) answers with its saved reply. With no record, the cache decides: refused (`not enough
//! stock for SKU-x`, one insert, nothing taken), or reserve, in three steps: (1) insert the record as the
//! intent, status `reserving` with `L`, before any move, (2) insert the reserve moves in one batch, (3)
//! mark the record `reserved`. The decision is taken when the intent is written: a record found
//! `reserving` (the process was interrupted) is completed, writing only the moves a find by `_id` shows
//! missing, unless a release has begun meanwhile (a release move exists), in which case the release is
//! finished and the reserve refused.
//!
//! **Release** has no lines of its own: they come from the record. No record means nothing was ever
//! reserved: a `released` tombstone is inserted so that a late reserve for `s` is refused. Otherwise the
//! release move of every reserve move that exists (all of them once `reserved`; those found by `_id`
//! while `reserving`) is written, then the record is marked `released`. A record already `released` means
//! all of that was done: nothing is repeated.
//!
//! **Cache.** Decisions ("is there enough stock?") are taken from an in-memory cache of the available stock
//! per SKU: at start-up the ledger's sums (the one scan) less the lines of `reserving` intents that have no
//! move yet; afterwards kept up to date by this process's own writes. The cache counts a saga's lines
//! from its intent on, so writing the reserve moves changes nothing in it (no double count) and no other
//! saga can take stock an interrupted reserve will still write. When an operation fails (or is dropped)
//! after it may have written something, the saga is re-read by `_id` (record and moves) before the cache
//! is used again, and the cache moves from what it counted for the saga to what the saga now holds.
//!
//! The inventory is the only writer (the runtime calls it one command at a time, and HTTP restocks take
//! the same lock), so the cache is exact. Consequently seeding while the service runs must go through its
//! HTTP API (`PUT /v1/stock/{sku}`): a separate process writing the ledger would not update this process's
//! cache. For the same reason, run **one inventory instance per database**: the consumer group splits
//! sagas, not SKUs, between instances, and two instances would each decide from their own cache. Scaling
//! out needs SKU-partitioned instances (each owning a disjoint set of SKUs), which this version does not do.

pub mod http;
pub mod memory;
pub mod mongo;
pub mod store;

use std::collections::BTreeMap;
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

/// A change of the available stock per SKU (what a saga holds, or a restock).
type Holding = BTreeMap<String, i64>;

/// Available stock per SKU, and the changes whose writes may or may not have happened.
#[derive(Debug, Default)]
struct Cache {
    available: BTreeMap<String, i64>,
    unsure: Vec<Unsure>,
}

/// An operation that began writing and did not finish (a write failed, or it was dropped): the cache
/// still counts what it counted before, and must be corrected from the database before it is used.
#[derive(Debug, Clone)]
enum Unsure {
    /// A saga's reserve or release; `counted` is what the cache counted for the saga before it.
    Saga { saga_id: Uuid, counted: Holding },
    /// A restock move (counted for nothing before).
    Restock(StockMove),
}

impl Unsure {
    fn counted(&self) -> Holding {
        match self {
            Unsure::Saga { counted, .. } => counted.clone(),
            Unsure::Restock(_) => Holding::new(),
        }
    }
}

impl Cache {
    fn get(&self, sku: &str) -> i64 {
        self.available.get(sku).copied().unwrap_or(0)
    }

    /// Moves the cache from counting `from` to counting `to` (every SKU of `to` becomes known).
    fn shift(&mut self, from: &Holding, to: &Holding) {
        for (sku, delta) in to {
            *self.available.entry(sku.clone()).or_insert(0) += delta - from.get(sku).copied().unwrap_or(0);
        }
        for (sku, delta) in from.iter().filter(|(sku, _)| !to.contains_key(*sku)) {
            *self.available.entry(sku.clone()).or_insert(0) -= delta;
        }
    }

    /// Records that an operation is about to write (so that a failure leaves it to be re-read).
    fn begin(&mut self, unsure: Unsure) {
        self.unsure.push(unsure);
    }

    /// The operation begun last is done (or re-read): the cache now counts `to` for it.
    fn settle(&mut self, to: &Holding) {
        if let Some(unsure) = self.unsure.pop() {
            self.shift(&unsure.counted(), to);
        }
    }

    /// The first line the cache cannot serve.
    fn short<'a>(&self, lines: &'a [Line]) -> Option<&'a Line> {
        lines.iter().find(|l| self.get(&l.sku) < units(l))
    }
}

/// A saga's reservation record with the moves of its lines that exist.
#[derive(Debug)]
struct Observed {
    reservation: Reservation,
    /// Units taken, by SKU, for each reserve move that exists.
    taken: BTreeMap<String, i64>,
    /// Units given back, by SKU, for each release move that exists.
    given: BTreeMap<String, i64>,
}

impl Observed {
    /// A record none of whose moves exists (a new intent, or a refusal).
    fn without_moves(reservation: Reservation) -> Self {
        Self { reservation, taken: BTreeMap::new(), given: BTreeMap::new() }
    }

    /// What the saga holds of the available stock: its moves, plus the holds of its intent.
    fn holding(&self) -> Holding {
        let mut holding = self.holds();
        for (sku, units) in &self.taken {
            *holding.entry(sku.clone()).or_insert(0) -= units;
        }
        for (sku, units) in &self.given {
            *holding.entry(sku.clone()).or_insert(0) += units;
        }
        holding.retain(|_, delta| *delta != 0);
        holding
    }

    /// While `reserving`, the lines whose reserve move is not written yet: the intent holds them.
    fn holds(&self) -> Holding {
        if self.reservation.status != ReservationStatus::Reserving {
            return Holding::new();
        }
        let unmoved = self.reservation.lines.iter().filter(|l| !self.taken.contains_key(&l.sku));
        unmoved.map(|l| (l.sku.clone(), -units(l))).collect()
    }
}

/// The units of `line`.
fn units(line: &Line) -> i64 {
    i64::from(line.quantity)
}

/// What a saga whose every line is reserved (and none released) holds.
fn reserved_holding(lines: &[Line]) -> Holding {
    lines.iter().map(|l| (l.sku.clone(), -units(l))).collect()
}

impl<S: StockStore> Inventory<S> {
    /// Prepares the store and loads the cache: the ledger's sums, less what `reserving` intents hold.
    /// Both are whole-collection reads, done once per start.
    pub async fn open(store: S, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        store.ensure_indexes().await?;
        let cache = Cache { available: store.available().await?, unsure: Vec::new() };
        let inventory = Self { store, clock, cache: Mutex::new(cache) };
        let in_progress = inventory.store.reservations_in_progress().await?;
        let mut cache = inventory.cache.lock().await;
        for intent in in_progress {
            // The ledger has the moves written so far; the intent holds the rest.
            let observed = inventory.observe(intent).await?;
            cache.shift(&Holding::new(), &observed.holds());
        }
        drop(cache);
        Ok(inventory)
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, giving up the inventory (for tests that restart it over the same store).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Reserves every line of `lines` for saga `saga_id`, or none.
    pub async fn reserve(&self, saga_id: Uuid, lines: &[Line]) -> Result<Handled, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        // Every write below is decided from the record read here and filtered by `_id` alone: this process
        // is the inventory's single writer and handles one command at a time (under the cache lock), so
        // the record cannot change in between.
        match self.store.reservation(saga_id).await? {
            None => self.reserve_new(&mut cache, saga_id, lines).await,
            Some(intent) if intent.status == ReservationStatus::Reserving => self.resume(&mut cache, intent).await,
            Some(recorded) => Ok(Handled::repeated(recorded.reply)),
        }
    }

    /// A first reserve: the cache decides; a refusal is one insert, a reservation the intent, the moves
    /// and the mark.
    async fn reserve_new(&self, cache: &mut Cache, saga_id: Uuid, lines: &[Line]) -> Result<Handled, Error> {
        if let Some(line) = cache.short(lines) {
            let reply = Reply::business(format!("not enough stock for {}", line.sku));
            let refused = self.record(saga_id, lines.to_vec(), ReservationStatus::Refused, reply.clone());
            self.insert_record(&refused).await?;
            return Ok(Handled::applied(reply));
        }
        // From here on the saga may hold its lines: if a write fails, the saga is re-read.
        cache.begin(Unsure::Saga { saga_id, counted: Holding::new() });
        let intent = self.record(saga_id, lines.to_vec(), ReservationStatus::Reserving, Reply::ok());
        self.insert_record(&intent).await?;
        // A saga's moves are only written after its record: none exists yet.
        self.complete(cache, Observed::without_moves(intent)).await
    }

    /// A reserve finding the saga's intent: an earlier attempt decided to reserve and was interrupted.
    /// Completes it, unless a release has begun meanwhile (then finishes that and refuses the reserve).
    async fn resume(&self, cache: &mut Cache, intent: Reservation) -> Result<Handled, Error> {
        let saga_id = intent.saga_id;
        let observed = self.observe(intent).await?;
        tracing::info!(saga_id = %saga_id, moves_written = observed.taken.len(), "completing an interrupted reserve");
        cache.begin(Unsure::Saga { saga_id, counted: observed.holding() });
        if !observed.given.is_empty() {
            let reply = Reply::business(RELEASED_BEFORE_RESERVE);
            self.finish_release(cache, observed, reply.clone()).await?;
            return Ok(Handled::applied(reply));
        }
        self.complete(cache, observed).await
    }

    /// Writes the reserve moves the intent lacks (duplicate keys are moves written before), then marks the
    /// record reserved. The cache already counts the lines as held, so it does not change.
    async fn complete(&self, cache: &mut Cache, observed: Observed) -> Result<Handled, Error> {
        let Observed { reservation, taken, .. } = observed;
        let now = self.clock.now();
        let missing: Vec<StockMove> = (reservation.lines.iter())
            .filter(|l| !taken.contains_key(&l.sku))
            .map(|l| StockMove::reserve(reservation.saga_id, &l.sku, units(l), now))
            .collect();
        self.store.insert_moves(&missing).await?;
        let reserved =
            Reservation { status: ReservationStatus::Reserved, reply: Reply::ok(), updated_at: now, ..reservation };
        self.store.replace_reservation(&reserved).await?;
        cache.settle(&reserved_holding(&reserved.lines));
        Ok(Handled::applied(Reply::ok()))
    }

    /// Gives back exactly what saga `saga_id` reserved (nothing if it reserved nothing), once.
    pub async fn release(&self, saga_id: Uuid) -> Result<Handled, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        let Some(recorded) = self.store.reservation(saga_id).await? else {
            // Nothing was ever reserved (every move comes after the record): a tombstone refuses a late reserve.
            let reply = Reply::business(RELEASED_BEFORE_RESERVE);
            self.insert_record(&self.record(saga_id, Vec::new(), ReservationStatus::Released, reply)).await?;
            return Ok(Handled::applied(Reply::ok()));
        };
        // Decided from the status read above, then written by `_id` alone: safe for the single writer (see
        // `reserve`).
        let (observed, reply) = match recorded.status {
            ReservationStatus::Released => return Ok(Handled::repeated(Reply::ok())),
            ReservationStatus::Refused => {
                let reply = recorded.reply.clone();
                (Observed::without_moves(recorded), reply)
            }
            ReservationStatus::Reserved => (self.observe_reserved(recorded).await?, Reply::ok()),
            // An interrupted reserve: give back what it took, and refuse it if it comes again.
            ReservationStatus::Reserving => (self.observe(recorded).await?, Reply::business(RELEASED_BEFORE_RESERVE)),
        };
        cache.begin(Unsure::Saga { saga_id, counted: observed.holding() });
        self.finish_release(&mut cache, observed, reply).await?;
        Ok(Handled::applied(Reply::ok()))
    }

    /// Writes the release move of every reserve move that exists and lacks one, then marks the record
    /// released, keeping `reply` for a later reserve. The saga then holds nothing.
    async fn finish_release(&self, cache: &mut Cache, observed: Observed, reply: Reply) -> Result<(), Error> {
        let Observed { reservation, taken, given } = observed;
        let now = self.clock.now();
        let missing: Vec<StockMove> = (taken.iter())
            .filter(|(sku, _)| !given.contains_key(*sku))
            .map(|(sku, units)| StockMove::release(reservation.saga_id, sku, *units, now))
            .collect();
        self.store.insert_moves(&missing).await?;
        let released = Reservation { status: ReservationStatus::Released, reply, updated_at: now, ..reservation };
        self.store.replace_reservation(&released).await?;
        cache.settle(&Holding::new());
        Ok(())
    }

    /// `reservation` with the moves of its lines that exist, each found by its `_id`.
    async fn observe(&self, reservation: Reservation) -> Result<Observed, Error> {
        let taken = self.find_moves(&reservation, MoveKind::Reserve).await?;
        let given = self.find_moves(&reservation, MoveKind::Release).await?;
        Ok(Observed { reservation, taken, given })
    }

    /// A `reserved` record: every reserve move exists (they are written before the mark), so only the
    /// release moves are looked up.
    async fn observe_reserved(&self, reservation: Reservation) -> Result<Observed, Error> {
        let taken = reservation.lines.iter().map(|l| (l.sku.clone(), units(l))).collect();
        let given = self.find_moves(&reservation, MoveKind::Release).await?;
        Ok(Observed { reservation, taken, given })
    }

    /// The units of each existing move of `kind` of the record's lines, by SKU.
    async fn find_moves(&self, reservation: &Reservation, kind: MoveKind) -> Result<BTreeMap<String, i64>, Error> {
        let mut found = BTreeMap::new();
        for line in &reservation.lines {
            let id = StockMove::id(reservation.saga_id, &line.sku, kind);
            if let Some(stock_move) = self.store.find_move(&id).await? {
                found.insert(stock_move.sku, stock_move.delta.abs());
            }
        }
        Ok(found)
    }

    /// Sets the available stock of `sku` to `target` by appending a restock move of the difference (none
    /// when it is there already). Returns the new available stock.
    pub async fn set_available(&self, sku: &str, target: i64) -> Result<i64, Error> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        let known = cache.available.contains_key(sku);
        let delta = target - cache.get(sku);
        if delta != 0 || !known {
            let id = proto_events::ids::new_v7().to_string();
            let restock = StockMove::restock(&id, sku, delta, self.clock.now());
            cache.begin(Unsure::Restock(restock.clone()));
            self.store.insert_moves(std::slice::from_ref(&restock)).await?;
            cache.settle(&Holding::from([(restock.sku, restock.delta)]));
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

    /// Corrects the cache for every unfinished operation, re-reading what it wrote by `_id`.
    async fn refresh(&self, cache: &mut Cache) -> Result<(), Error> {
        while let Some(unsure) = cache.unsure.last().cloned() {
            let now = self.recount(&unsure).await?;
            cache.settle(&now);
            tracing::info!(?unsure, ?now, "re-read an unfinished operation");
        }
        Ok(())
    }

    /// What an unfinished operation's subject holds now.
    async fn recount(&self, unsure: &Unsure) -> Result<Holding, Error> {
        match unsure {
            Unsure::Saga { saga_id, .. } => match self.store.reservation(*saga_id).await? {
                Some(reservation) => Ok(self.observe(reservation).await?.holding()),
                None => Ok(Holding::new()),
            },
            Unsure::Restock(restock) => match self.store.find_move(&restock.id).await? {
                Some(found) => Ok(Holding::from([(found.sku, found.delta)])),
                None => Ok(Holding::new()),
            },
        }
    }

    /// Inserts the saga's first record (the single writer read none just before).
    async fn insert_record(&self, reservation: &Reservation) -> Result<(), Error> {
        match self.store.insert_reservation(reservation).await? {
            Inserted::New => Ok(()),
            Inserted::Existed => Err(Error::Raced { what: "reservation" }),
        }
    }

    fn record(&self, saga_id: Uuid, lines: Vec<Line>, status: ReservationStatus, reply: Reply) -> Reservation {
        Reservation { saga_id, lines, status, reply, updated_at: self.clock.now() }
    }
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
            let _telemetry = match platform::telemetry::init("inventory") {
                Ok(telemetry) => telemetry,
                Err(error) => {
                    eprintln!("inventory: {error}");
                    return ExitCode::FAILURE;
                }
            };
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
