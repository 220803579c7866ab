//! The clock port: logic never reads the system time directly, so tests and the simulator control time.

pub use platform::clock::{Clock, ManualClock, SystemClock};
