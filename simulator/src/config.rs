//! What one seed simulates: how many sagas, the topic layout, the stock, and how often each fault strikes.

/// The shape of one seed's run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Orders placed (each runs one saga).
    pub sagas: usize,
    /// Partitions of `saga.reply` (the orchestrator's unit of ownership).
    pub reply_partitions: i32,
    /// Partitions of each participant's command topic.
    pub command_partitions: i32,
    /// SKUs ordered (`SKU-1` ...); few, so that sagas compete for stock.
    pub skus: usize,
    /// Fault rates.
    pub faults: FaultRates,
    /// Scheduler steps per saga in the fault phase; orders are placed during the first quarter.
    pub fault_steps_per_saga: usize,
    /// Most steps the fault-free phase may take to reach quiescence; a seed that needs more fails.
    pub quiescence_step_limit: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            sagas: 100,
            reply_partitions: 4,
            command_partitions: 2,
            skus: 5,
            faults: FaultRates::default(),
            fault_steps_per_saga: 40,
            quiescence_step_limit: 200_000,
        }
    }
}

impl SimConfig {
    /// The default run with `sagas` orders.
    pub fn with_sagas(sagas: usize) -> Self {
        Self { sagas, ..Self::default() }
    }
}

/// How often each fault strikes, in chances per 10,000 (of a delivery, a step, or a call, as documented).
#[derive(Debug, Clone)]
pub struct FaultRates {
    /// A delivered message is lost (the consumer skips it).
    pub drop: u32,
    /// A delivered message is delivered again later.
    pub duplicate: u32,
    /// A delivered message is held back for up to a minute of virtual time.
    pub delay: u32,
    /// A delivered message is held back until a few later ones of its partition were delivered.
    pub reorder: u32,
    /// Per orchestrator call (handling a message, recovery, a timer scan, an API request): one of its
    /// store or bus operations fails, before or after taking effect, or reports a version conflict.
    pub orchestrator_fault: u32,
    /// After an injected failure, the orchestrator instance dies instead of retrying.
    pub crash_after_fault: u32,
    /// Per step: an orchestrator instance dies (its in-memory state is lost, its stored offsets not
    /// committed are redelivered).
    pub orchestrator_crash: u32,
    /// Per step: the consumer group moves a partition from one orchestrator instance to the other.
    pub rebalance: u32,
    /// Per step: an orchestrator instance stalls past its session timeout; the group gives its partitions
    /// to the other one, and when it wakes it still applies the message it had in hand (a zombie write,
    /// which the version check must fence), before it learns it lost them.
    pub stall: u32,
    /// Per command: one of the participant's store writes fails (the runtime replies `transient`).
    pub participant_fault: u32,
    /// Per command: the participant dies, mid-command or between its effect and its reply or commit.
    pub participant_crash: u32,
    /// Per step: a participant, or its database, goes down for up to ten minutes of virtual time.
    pub participant_outage: u32,
    /// Per step: an operator retries, compensates or resolves a saga, on its current or a stale version.
    pub operator: u32,
    /// Per step: the clock jumps ahead by up to fifteen seconds although messages wait (time-outs and
    /// back-offs fire while replies are on their way). It always does when no message waits.
    pub clock_jump: u32,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            drop: 150,
            duplicate: 300,
            delay: 250,
            reorder: 250,
            orchestrator_fault: 300,
            crash_after_fault: 2_000,
            orchestrator_crash: 10,
            rebalance: 25,
            stall: 15,
            participant_fault: 250,
            participant_crash: 80,
            participant_outage: 5,
            operator: 60,
            clock_jump: 60,
        }
    }
}

impl FaultRates {
    /// No faults at all (operators included); only the clock jumps, so that time-outs still happen.
    pub fn none() -> Self {
        Self {
            drop: 0,
            duplicate: 0,
            delay: 0,
            reorder: 0,
            orchestrator_fault: 0,
            crash_after_fault: 0,
            orchestrator_crash: 0,
            rebalance: 0,
            stall: 0,
            participant_fault: 0,
            participant_crash: 0,
            participant_outage: 0,
            operator: 0,
            clock_jump: 60,
        }
    }
}
