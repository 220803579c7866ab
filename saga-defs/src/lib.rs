//! Saga definitions as data (steps, participants, commands, compensations, retry policies, timeouts),
//! their static validation, the order-fulfilment saga, and the pure saga core that turns a stored saga
//! state and an incoming event into a new state and the actions to perform. No I/O, no async runtime.
