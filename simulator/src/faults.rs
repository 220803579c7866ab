//! Fault injection into the orchestrator's ports: a [`FaultPoint`] is shared by the store and bus adapters
//! of one orchestrator instance (or of the API); the scheduler arms it before a call into the real code
//! ("the n-th store or bus operation from now fails, like this") and disarms it afterwards, learning
//! whether and where it struck. So a fault can hit any operation of a message's handling: the read, the
//! conditional write, a publication of the outbox, the timeline append, the outbox clear.

use std::sync::{Mutex, PoisonError};

/// What an armed fault does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The operation fails without taking effect (the database or broker did not answer).
    FailBefore,
    /// The operation takes effect, then reports a failure (its answer was lost): an ambiguous outcome.
    FailAfter,
    /// A conditional write reports a version conflict without taking effect, as if a concurrent writer
    /// had won (other operations fail as with [`Fault::FailBefore`]).
    ConflictBefore,
    /// A conditional write takes effect, then reports a version conflict, as a retried write whose first
    /// answer was lost does (other operations fail as with [`Fault::FailAfter`]).
    ConflictAfter,
}

impl Fault {
    /// Every fault, for drawing one.
    pub const ALL: [Fault; 4] = [Fault::FailBefore, Fault::FailAfter, Fault::ConflictBefore, Fault::ConflictAfter];

    /// Whether the operation takes effect before the failure is reported.
    pub fn after(self) -> bool {
        matches!(self, Fault::FailAfter | Fault::ConflictAfter)
    }
}

/// Where an armed fault struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The operation, such as `store.replace` or `bus.publish`.
    pub operation: &'static str,
    /// What it did.
    pub fault: Fault,
}

#[derive(Debug, Default)]
struct State {
    /// Operations to let through before the fault strikes, and the fault.
    armed: Option<(u32, Fault)>,
    hit: Option<Hit>,
}

/// A fault armed for one of the next operations of an instance's adapters.
#[derive(Debug, Default)]
pub struct FaultPoint {
    state: Mutex<State>,
}

impl FaultPoint {
    /// Lets `pass` operations through, then makes the next one fail with `fault` (once).
    pub fn arm(&self, pass: u32, fault: Fault) {
        let mut state = self.lock();
        state.armed = Some((pass, fault));
        state.hit = None;
    }

    /// Disarms the fault; says where it struck, if it did.
    pub fn disarm(&self) -> Option<Hit> {
        let mut state = self.lock();
        state.armed = None;
        state.hit.take()
    }

    /// Called by an adapter at the start of each operation: the fault to inject into it, if any.
    pub fn strike(&self, operation: &'static str) -> Option<Fault> {
        let mut state = self.lock();
        match state.armed {
            Some((0, fault)) => {
                state.armed = None;
                state.hit = Some(Hit { operation, fault });
                Some(fault)
            }
            Some((pass, fault)) => {
                state.armed = Some((pass - 1, fault));
                None
            }
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_fault_strikes_the_operation_it_was_armed_for_once() {
        let point = FaultPoint::default();
        assert_eq!(point.strike("a"), None);
        point.arm(2, Fault::FailAfter);
        assert_eq!(point.strike("a"), None);
        assert_eq!(point.strike("b"), None);
        assert_eq!(point.strike("c"), Some(Fault::FailAfter));
        assert_eq!(point.strike("d"), None);
        assert_eq!(point.disarm(), Some(Hit { operation: "c", fault: Fault::FailAfter }));
        point.arm(5, Fault::FailBefore);
        assert_eq!(point.disarm(), None, "disarmed before it struck");
        assert_eq!(point.strike("e"), None);
    }
}
