//! Every message type with its current schema version and the oldest version this build still decodes.
//! The JSON Schema of each current version is committed under `proto-events/schemas/`, and a fixture of
//! every version under `proto-events/fixtures/`; the compatibility tests hold the two to this list.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};

use crate::commands::{CancelShipment, ChargePayment, CreateShipment, RefundPayment, ReleaseStock, ReserveStock};
use crate::envelope::Envelope;
use crate::events::{OperatorCommand, SagaTransitioned, StartSaga, TimerFired};
use crate::replies::Reply;

/// `saga.transitioned`
pub const TRANSITIONED: &str = "saga.transitioned";
/// `saga.start`
pub const START: &str = "saga.start";
/// `saga.timer`
pub const TIMER: &str = "saga.timer";
/// `saga.operator`
pub const OPERATOR: &str = "saga.operator";

/// A message type and the versions of it this build knows.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    /// The message type.
    pub name: &'static str,
    /// The version this build writes.
    pub current: u16,
    /// The oldest version this build still reads.
    pub oldest: u16,
    /// The JSON Schema of the current version's payload.
    pub schema: fn() -> Schema,
}

fn schema<T: JsonSchema>() -> Schema {
    SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<T>()
}

const fn v1(name: &'static str, schema: fn() -> Schema) -> TypeInfo {
    TypeInfo { name, current: 1, oldest: 1, schema }
}

/// Every message type.
pub const TYPES: &[TypeInfo] = &[
    v1("inventory.reserve", schema::<ReserveStock>),
    v1("inventory.release", schema::<ReleaseStock>),
    v1("payment.charge", schema::<ChargePayment>),
    v1("payment.refund", schema::<RefundPayment>),
    v1("shipping.create", schema::<CreateShipment>),
    v1("shipping.cancel", schema::<CancelShipment>),
    v1("inventory.reserve.reply", schema::<Reply>),
    v1("inventory.release.reply", schema::<Reply>),
    v1("payment.charge.reply", schema::<Reply>),
    v1("payment.refund.reply", schema::<Reply>),
    v1("shipping.create.reply", schema::<Reply>),
    v1("shipping.cancel.reply", schema::<Reply>),
    v1(TRANSITIONED, schema::<SagaTransitioned>),
    v1(START, schema::<StartSaga>),
    v1(TIMER, schema::<TimerFired>),
    v1(OPERATOR, schema::<OperatorCommand>),
];

/// The envelope's own schema version (the fields around the payload).
pub const ENVELOPE_VERSION: u16 = 1;

/// The JSON Schema of the envelope.
pub fn envelope_schema() -> Schema {
    schema::<Envelope>()
}

/// The registered type named `name`.
pub fn find(name: &str) -> Option<&'static TypeInfo> {
    TYPES.iter().find(|t| t.name == name)
}

/// The version this build writes for `name`.
pub fn current_version(name: &str) -> Option<u16> {
    find(name).map(|t| t.current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::CommandKind;

    #[test]
    fn every_command_and_reply_type_is_registered_once() {
        for kind in CommandKind::ALL {
            for name in [kind.message_type(), kind.reply_type()] {
                assert_eq!(TYPES.iter().filter(|t| t.name == name).count(), 1, "{name}");
            }
        }
        let mut names: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TYPES.len(), "duplicate registrations");
    }

    #[test]
    fn versions_start_at_1_and_the_oldest_read_is_not_newer_than_the_current() {
        for info in TYPES {
            assert!(
                1 <= info.oldest && info.oldest <= info.current,
                "{}: {}..={}",
                info.name,
                info.oldest,
                info.current
            );
        }
    }
}
