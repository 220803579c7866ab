//! Kafka topic names shared by every service. Every topic is keyed by saga id, so that all messages of one
//! saga stay in order on one partition.

/// Commands for the inventory participant.
pub const CMD_INVENTORY: &str = "saga.cmd.inventory";
/// Commands for the payment participant.
pub const CMD_PAYMENT: &str = "saga.cmd.payment";
/// Commands for the shipping participant.
pub const CMD_SHIPPING: &str = "saga.cmd.shipping";
/// Replies from every participant to the orchestrator, and the orchestrator's own scheduling messages
/// (saga start, timer expiry), so that everything that changes a saga passes through its partition.
pub const REPLY: &str = "saga.reply";
/// Saga lifecycle events (read models, live status, audit).
pub const EVENT: &str = "saga.event";
/// Suffix of the dead-letter twin of a consumed topic.
pub const DLQ_SUFFIX: &str = ".dlq";

/// Topics that a service consumes and that therefore have a dead-letter twin.
pub const CONSUMED: [&str; 5] = [CMD_INVENTORY, CMD_PAYMENT, CMD_SHIPPING, REPLY, EVENT];

/// The dead-letter topic of `topic`.
pub fn dlq(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Every topic of the system: the consumed topics followed by their dead-letter twins.
pub fn all() -> Vec<String> {
    CONSUMED.iter().map(|t| (*t).to_owned()).chain(CONSUMED.iter().map(|t| dlq(t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumed_topic_has_a_dead_letter_twin() {
        let all = all();
        assert_eq!(all.len(), 10);
        for topic in CONSUMED {
            assert!(all.contains(&format!("{topic}.dlq")), "{topic} has no .dlq twin");
        }
    }
}
