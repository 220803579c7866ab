//! The clock, injected so that the domain logic never reads the system time itself.

pub use platform::clock::{Clock, ManualClock, SystemClock};
