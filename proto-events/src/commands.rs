//! Commands from the orchestrator to the participants, one payload type per command.
//! Compensations (`inventory.release`, `payment.refund`, `shipping.cancel`) carry no data: the participant
//! undoes exactly what it did for the saga named in the envelope.

use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::topics;

/// A participant service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Participant {
    /// Stock per SKU.
    Inventory,
    /// Charges and refunds.
    Payment,
    /// Shipments.
    Shipping,
}

impl Participant {
    /// Every participant.
    pub const ALL: [Participant; 3] = [Participant::Inventory, Participant::Payment, Participant::Shipping];

    /// The topic this participant consumes its commands from.
    pub fn command_topic(self) -> &'static str {
        match self {
            Participant::Inventory => topics::CMD_INVENTORY,
            Participant::Payment => topics::CMD_PAYMENT,
            Participant::Shipping => topics::CMD_SHIPPING,
        }
    }

    /// The participant's name, as in service names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Participant::Inventory => "inventory",
            Participant::Payment => "payment",
            Participant::Shipping => "shipping",
        }
    }
}

/// Which command, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Reserve every item of the order, or none.
    InventoryReserve,
    /// Release what the saga reserved.
    InventoryRelease,
    /// Charge the order's amount.
    PaymentCharge,
    /// Refund what the saga was charged.
    PaymentRefund,
    /// Create the order's shipment.
    ShippingCreate,
    /// Cancel the saga's shipment.
    ShippingCancel,
}

impl CommandKind {
    /// Every command kind.
    pub const ALL: [CommandKind; 6] = [
        CommandKind::InventoryReserve,
        CommandKind::InventoryRelease,
        CommandKind::PaymentCharge,
        CommandKind::PaymentRefund,
        CommandKind::ShippingCreate,
        CommandKind::ShippingCancel,
    ];

    /// The message type of the command.
    pub fn message_type(self) -> &'static str {
        match self {
            CommandKind::InventoryReserve => "inventory.reserve",
            CommandKind::InventoryRelease => "inventory.release",
            CommandKind::PaymentCharge => "payment.charge",
            CommandKind::PaymentRefund => "payment.refund",
            CommandKind::ShippingCreate => "shipping.create",
            CommandKind::ShippingCancel => "shipping.cancel",
        }
    }

    /// The message type of the reply to the command.
    pub fn reply_type(self) -> &'static str {
        match self {
            CommandKind::InventoryReserve => "inventory.reserve.reply",
            CommandKind::InventoryRelease => "inventory.release.reply",
            CommandKind::PaymentCharge => "payment.charge.reply",
            CommandKind::PaymentRefund => "payment.refund.reply",
            CommandKind::ShippingCreate => "shipping.create.reply",
            CommandKind::ShippingCancel => "shipping.cancel.reply",
        }
    }

    /// The command kind whose message type is `message_type`.
    pub fn from_message_type(message_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.message_type() == message_type)
    }

    /// The command kind whose reply has message type `reply_type`.
    pub fn from_reply_type(reply_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.reply_type() == reply_type)
    }

    /// The participant that handles the command.
    pub fn participant(self) -> Participant {
        match self {
            CommandKind::InventoryReserve | CommandKind::InventoryRelease => Participant::Inventory,
            CommandKind::PaymentCharge | CommandKind::PaymentRefund => Participant::Payment,
            CommandKind::ShippingCreate | CommandKind::ShippingCancel => Participant::Shipping,
        }
    }
}

/// A command with its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `inventory.reserve`
    InventoryReserve(ReserveStock),
    /// `inventory.release`
    InventoryRelease(ReleaseStock),
    /// `payment.charge`
    PaymentCharge(ChargePayment),
    /// `payment.refund`
    PaymentRefund(RefundPayment),
    /// `shipping.create`
    ShippingCreate(CreateShipment),
    /// `shipping.cancel`
    ShippingCancel(CancelShipment),
}

impl Command {
    /// Which command this is.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::InventoryReserve(_) => CommandKind::InventoryReserve,
            Command::InventoryRelease(_) => CommandKind::InventoryRelease,
            Command::PaymentCharge(_) => CommandKind::PaymentCharge,
            Command::PaymentRefund(_) => CommandKind::PaymentRefund,
            Command::ShippingCreate(_) => CommandKind::ShippingCreate,
            Command::ShippingCancel(_) => CommandKind::ShippingCancel,
        }
    }
}

/// A stock keeping unit: upper-case letters, digits and dashes, 1 to 32 characters.
pub const SKU_PATTERN: &str = r"^[A-Z0-9][A-Z0-9-]{0,31}$";

/// One line of an order: a SKU and how many.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Validate)]
pub struct Line {
    /// The SKU, such as `SKU-1`.
    #[garde(pattern(r"^[A-Z0-9][A-Z0-9-]{0,31}$"))]
    pub sku: String,
    /// Units, 1 to 10,000.
    #[garde(range(min = 1, max = 10_000))]
    pub quantity: u32,
}

/// Validates that no SKU appears on more than one line (the line count is checked by `length`). Not in the
/// JSON Schema, which cannot express it.
fn valid_lines(lines: &[Line], _: &()) -> garde::Result {
    let mut skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    skus.sort_unstable();
    match skus.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(garde::Error::new(format!("SKU {} appears more than once", w[0]))),
        None => Ok(()),
    }
}

/// `inventory.reserve`: reserve every line, or none when any SKU lacks stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct ReserveStock {
    /// The order's lines.
    #[garde(length(min = 1, max = 100), custom(valid_lines), dive)]
    pub items: Vec<Line>,
}

/// `inventory.release`: give back exactly what the saga reserved (nothing, if it reserved nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct ReleaseStock {}

/// A currency the system accepts (ISO 4217).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum Currency {
    EUR,
    USD,
    GBP,
    CHF,
    SEK,
    DKK,
    NOK,
    PLN,
    CZK,
}

/// `payment.charge`: take the order's amount with the customer's payment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct ChargePayment {
    /// Amount in the currency's minor unit, 1 to 10^12.
    #[garde(range(min = 1, max = 1_000_000_000_000_i64))]
    pub amount_cents: i64,
    /// The currency.
    #[garde(skip)]
    pub currency: Currency,
    /// The payment provider's token for the customer's payment method (never a card number).
    #[garde(pattern(r"^[A-Za-z0-9_-]{1,64}$"))]
    pub payment_token: String,
    /// Keyed hash of the customer id: lets the payment service group a customer's payments without
    /// learning who the customer is.
    #[garde(pattern(r"^[0-9a-f]{32}$"))]
    pub customer_ref: String,
}

/// `payment.refund`: refund exactly what the saga was charged, once (nothing, if it was not charged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct RefundPayment {}

/// A postal address. Personal data: it travels only in `shipping.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct Address {
    /// The recipient's name.
    #[garde(length(chars, min = 1, max = 200))]
    pub name: String,
    /// Street and number.
    #[garde(length(chars, min = 1, max = 200))]
    pub line1: String,
    /// More of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, max = 200))]
    pub line2: Option<String>,
    /// City.
    #[garde(length(chars, min = 1, max = 100))]
    pub city: String,
    /// Postal code.
    #[garde(pattern(r"^[A-Za-z0-9 -]{2,12}$"))]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, upper case.
    #[garde(pattern(r"^[A-Z]{2}$"))]
    pub country: String,
}

/// `shipping.create`: create the order's shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct CreateShipment {
    /// What to ship.
    #[garde(length(min = 1, max = 100), custom(valid_lines), dive)]
    pub items: Vec<Line>,
    /// Where to ship it.
    #[garde(dive)]
    pub address: Address,
}

/// `shipping.cancel`: cancel the saga's shipment (and refuse one created later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct CancelShipment {}
