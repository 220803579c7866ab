//! The stock API on the inventory's HTTP port (JSON):
//!
//! - `PUT /v1/stock/{sku}` with `{"available": N}`: sets the available stock (appends a restock move of
//!   the difference; the same target twice changes nothing) and answers `{"sku", "available"}`.
//! - `GET /v1/stock/{sku}`: `{"sku", "available"}`, 404 for a SKU never stocked.
//! - `GET /v1/stock`: `[{"sku", "available"}, ...]`, ordered by SKU.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use garde::Validate;
use serde::{Deserialize, Serialize};

use super::store::StockStore;
use super::{Inventory, MAX_AVAILABLE};
use crate::api::Error;

/// A SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// The SKU.
    pub sku: String,
    /// Units available.
    pub available: i64,
}

/// The body of `PUT /v1/stock/{sku}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SetStock {
    /// The units that should be available.
    pub available: i64,
}

#[derive(Debug, Validate)]
struct SkuPath<'a> {
    #[garde(pattern(r"^[A-Z0-9][A-Z0-9-]{0,31}$"))]
    sku: &'a str,
}

/// The stock routes over `inventory`.
pub fn router<S: StockStore>(inventory: Arc<Inventory<S>>) -> Router {
    Router::new()
        .route("/v1/stock", get(all::<S>))
        .route("/v1/stock/{sku}", get(one::<S>).put(set::<S>))
        .with_state(inventory)
}

fn valid_sku(sku: &str) -> Result<(), Error> {
    SkuPath { sku }.validate().map_err(|_| {
        Error::BadRequest(format!("{sku:?} is not a SKU (upper-case letters, digits and dashes, 1 to 32)"))
    })
}

async fn all<S: StockStore>(State(inventory): State<Arc<Inventory<S>>>) -> Result<Json<Vec<Stock>>, Error> {
    let stock = inventory.all_available().await?;
    Ok(Json(stock.into_iter().map(|(sku, available)| Stock { sku, available }).collect()))
}

async fn one<S: StockStore>(
    State(inventory): State<Arc<Inventory<S>>>,
    Path(sku): Path<String>,
) -> Result<Json<Stock>, Error> {
    valid_sku(&sku)?;
    match inventory.available(&sku).await? {
        Some(available) => Ok(Json(Stock { sku, available })),
        None => Err(Error::NotFound(format!("SKU {sku} has never been stocked"))),
    }
}

async fn set<S: StockStore>(
    State(inventory): State<Arc<Inventory<S>>>,
    Path(sku): Path<String>,
    Json(body): Json<SetStock>,
) -> Result<Json<Stock>, Error> {
    valid_sku(&sku)?;
    if !(0..=MAX_AVAILABLE).contains(&body.available) {
        return Err(Error::BadRequest(format!("available must be between 0 and {MAX_AVAILABLE}")));
    }
    let available = inventory.set_available(&sku, body.available).await?;
    tracing::info!(sku = %sku, available, "stock set");
    Ok(Json(Stock { sku, available }))
}
