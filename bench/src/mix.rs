//! The order mix: which share of orders completes, has its payment declined, or asks for a SKU that is out
//! of stock, and the deterministic sequence of kinds the load follows.
//!
//! The sequence interleaves the kinds smoothly (smooth weighted round robin): with 90/5/5 every window of 20
//! consecutive orders holds 18 completes, one decline and one out-of-stock order, so even a short point sees
//! the configured mix exactly, and two runs issue the same sequence.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an order is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    /// In stock, paid with a valid token, shipped to a served country: ends `COMPLETED`.
    Complete,
    /// Paid with `tok_decline`: the payment is declined, the stock released, the order `CANCELLED`.
    Declined,
    /// Orders a SKU the bench sets to 0 units: the reservation is refused, the order `CANCELLED`.
    OutOfStock,
}

impl OrderKind {
    /// Every kind, in the order of [`Mix`]'s fields.
    pub const ALL: [OrderKind; 3] = [OrderKind::Complete, OrderKind::Declined, OrderKind::OutOfStock];

    /// The name used in the mix syntax and the report.
    pub fn name(self) -> &'static str {
        match self {
            OrderKind::Complete => "complete",
            OrderKind::Declined => "declined",
            OrderKind::OutOfStock => "out_of_stock",
        }
    }

    /// The order status this kind should end in.
    pub fn expected_status(self) -> proto_events::OrderStatus {
        match self {
            OrderKind::Complete => proto_events::OrderStatus::Completed,
            OrderKind::Declined | OrderKind::OutOfStock => proto_events::OrderStatus::Cancelled,
        }
    }
}

/// Relative weights of the order kinds (percentages by convention; any non-negative integers work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// Orders that complete.
    pub complete: u32,
    /// Orders whose payment is declined.
    pub declined: u32,
    /// Orders for a SKU out of stock.
    pub out_of_stock: u32,
}

impl Default for Mix {
    /// 90% complete, 5% declined, 5% out of stock.
    fn default() -> Self {
        Self { complete: 90, declined: 5, out_of_stock: 5 }
    }
}

impl Mix {
    /// The weight of `kind`.
    pub fn weight(&self, kind: OrderKind) -> u32 {
        match kind {
            OrderKind::Complete => self.complete,
            OrderKind::Declined => self.declined,
            OrderKind::OutOfStock => self.out_of_stock,
        }
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        OrderKind::ALL.iter().map(|k| u64::from(self.weight(*k))).sum()
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "complete={},declined={},out_of_stock={}", self.complete, self.declined, self.out_of_stock)
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `complete=90,declined=5,out_of_stock=5`; a kind left out weighs 0 (`out-of-stock` also works).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix { complete: 0, declined: 0, out_of_stock: 0 };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let weight: u32 = value.trim().parse().map_err(|_| format!("{value:?} is not a whole number"))?;
            match key.trim().replace('-', "_").as_str() {
                "complete" => mix.complete = weight,
                "declined" => mix.declined = weight,
                "out_of_stock" => mix.out_of_stock = weight,
                other => return Err(format!("unknown order kind {other:?}; use complete, declined, out_of_stock")),
            }
        }
        if mix.total() == 0 {
            return Err("the mix needs at least one kind with a weight above 0".into());
        }
        if mix.total() > 1_000_000 {
            return Err("the weights add up to more than 1,000,000; use percentages".into());
        }
        Ok(mix)
    }
}

/// The repeating sequence of kinds that realises a [`Mix`]; the `n`-th order is `kind(n)`.
#[derive(Debug, Clone)]
pub struct Schedule {
    cycle: Vec<OrderKind>,
}

impl Schedule {
    /// The sequence for `mix` (weights reduced by their greatest common divisor, then interleaved by smooth
    /// weighted round robin).
    pub fn new(mix: &Mix) -> Self {
        let weights: Vec<u64> = OrderKind::ALL.iter().map(|k| u64::from(mix.weight(*k))).collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<i64> = weights.iter().map(|w| i64::try_from(w / divisor).unwrap_or(i64::MAX)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0_i64; weights.len()];
        let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let (best, _) =
                current.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).expect("three kinds");
            current[best] -= total;
            cycle.push(OrderKind::ALL[best]);
        }
        if cycle.is_empty() {
            cycle.push(OrderKind::Complete);
        }
        Self { cycle }
    }

    /// The kind of the `n`-th order (0-based).
    pub fn kind(&self, n: u64) -> OrderKind {
        let len = self.cycle.len() as u64;
        self.cycle[usize::try_from(n % len).unwrap_or(0)]
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &Schedule, range: std::ops::Range<u64>) -> [usize; 3] {
        let mut counts = [0; 3];
        for n in range {
            counts[OrderKind::ALL.iter().position(|k| *k == schedule.kind(n)).expect("a kind")] += 1;
        }
        counts
    }

    #[test]
    fn the_default_mix_is_exact_in_every_window_of_twenty() {
        let schedule = Schedule::new(&Mix::default());
        assert_eq!(counts(&schedule, 0..1000), [900, 50, 50]);
        for start in [0, 20, 40, 380] {
            assert_eq!(counts(&schedule, start..start + 20), [18, 1, 1], "window at {start}");
        }
    }

    #[test]
    fn failures_are_spread_out_not_bunched() {
        let schedule = Schedule::new(&Mix::default());
        let failures: Vec<u64> = (0..20).filter(|n| schedule.kind(*n) != OrderKind::Complete).collect();
        assert_eq!(failures.len(), 2);
        assert!(failures[1] - failures[0] >= 5, "{failures:?}");
    }

    #[test]
    fn mixes_parse_and_print() {
        let mix: Mix = "complete=80, declined=15,out-of-stock=5".parse().expect("valid");
        assert_eq!(mix, Mix { complete: 80, declined: 15, out_of_stock: 5 });
        assert_eq!(mix.to_string().parse::<Mix>(), Ok(mix));
        let only: Mix = "complete=1".parse().expect("valid");
        assert_eq!(counts(&Schedule::new(&only), 0..10), [10, 0, 0]);
        for bad in ["", "complete=0", "complete", "complete=x", "refunded=5", "complete=-1"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn uneven_weights_keep_their_proportions() {
        let schedule = Schedule::new(&Mix { complete: 1, declined: 2, out_of_stock: 3 });
        assert_eq!(counts(&schedule, 0..600), [100, 200, 300]);
    }

    #[test]
    fn each_kind_expects_its_status() {
        assert_eq!(OrderKind::Complete.expected_status(), proto_events::OrderStatus::Completed);
        assert_eq!(OrderKind::Declined.expected_status(), proto_events::OrderStatus::Cancelled);
        assert_eq!(OrderKind::OutOfStock.expected_status(), proto_events::OrderStatus::Cancelled);
    }
}
