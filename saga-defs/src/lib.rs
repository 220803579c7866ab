//! Saga definitions as data (steps, participants, commands, compensations, retry policies, timeouts),
//! their static validation, the order-fulfilment saga, and the pure saga core that turns a stored saga
//! state and an incoming event into a new state and the actions to perform. No I/O, no async runtime:
//! the orchestrator does the I/O around [`machine::apply`], and a simulator can drive it with a manual clock.
//!
//! - [`definition`]: [`Definition`], its steps and [`Definition::validate`]; [`order_fulfilment`].
//! - [`machine`]: [`SagaState`], [`SagaEvent`], [`Action`] and [`apply`], built on a statig state machine.

pub mod definition;
pub mod machine;

pub use crate::definition::{Definition, RetryPolicy, StepDef, StepKind, order_fulfilment};
pub use crate::machine::{Action, Deadline, Fenced, OperatorAction, Phase, Resolution, SagaEvent, SagaState, apply};
