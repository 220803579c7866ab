//! The participant services of the order saga. One runtime that every participant shares (consume a
//! command, validate it, apply its effect idempotently in the participant's own database, reply), and the
//! three domains: inventory, payment and shipping.
