//! `NodeConfig`: everything a node is started with — ring, engine capacities, timer, topology,
//! waiting and pinning — checked once before any thread starts.

use crate::config::{ConfigError, EngineConfig};
use crate::types::Epoch;

/// The smallest ring the multi-producer barrier supports (it tracks slots in 64-bit words).
pub const RING_SIZE_MIN: usize = 64;

/// How the stages around the BLP are laid out on threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Journaler, replicator and BLP each on their own thread, reading the ring in parallel;
    /// egress after all three. For machines with a spare core per stage.
    Parallel,
    /// One processor thread that, per batch, appends to the journal, hands each command to the
    /// replicator, applies it, and flushes both at the end of the batch. Egress is gated exactly
    /// as in `Parallel`. For small machines, where extra spinning threads would share cores.
    Compact,
    /// No threads at all: the same processor and egress as `Compact`, advanced only when the
    /// owner calls [`crate::pipeline::Node::step`], which also publishes due ticks. For tests
    /// and the deterministic simulator, which drive a node from one thread with their own
    /// clock. Egress is always polled.
    Stepped,
}

impl Topology {
    /// The lower-case name used in logs and benchmark output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Topology::Parallel => "parallel",
            Topology::Compact => "compact",
            Topology::Stepped => "stepped",
        }
    }
}

/// What a stage thread does when it finds no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the barrier without ever giving up the core. Lowest latency, but only sound when
    /// every spinning thread has a core of its own: oversubscribed, it collapses.
    BusySpin,
    /// Spin briefly (crossbeam `Backoff`), then yield the core for up to `yield_us` of
    /// idleness, then park until a producer or upstream stage wakes the thread (or
    /// `park_us_max` passes). What tests and small machines use: an idle stage costs nothing,
    /// and under steady traffic it stays awake without holding a core others need.
    SpinThenPark {
        /// How long an idle stage keeps yielding before it parks, in microseconds.
        yield_us: u32,
        /// Longest single park, in microseconds: the bound on a missed wake-up.
        park_us_max: u32,
    },
}

impl WaitStrategy {
    /// The default spin-then-park strategy.
    pub const DEFAULT: WaitStrategy =
        WaitStrategy::SpinThenPark { yield_us: 100, park_us_max: 1_000 };

    /// A short name for logs and benchmark output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            WaitStrategy::BusySpin => "busy_spin",
            WaitStrategy::SpinThenPark { .. } => "spin_then_park",
        }
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::DEFAULT
    }
}

/// Where a node's writes come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Intake {
    /// A primary: client commands are sequenced and stamped here, and the timer publishes
    /// due ticks.
    #[default]
    Sequencer,
    /// A standby: writes arrive as records its primary sequenced and stamped, submitted with
    /// `Session::try_submit_record` and journaled byte for byte; clients may only read, and no
    /// ticks are published here (the primary's arrive as records).
    Replica,
}

impl Intake {
    pub(crate) fn from_u8(value: u8) -> Intake {
        match value {
            0 => Intake::Sequencer,
            1 => Intake::Replica,
            _ => unreachable!("an intake byte is only ever stored from an Intake"),
        }
    }
}

/// Who runs egress: the stage that releases answers once they are safe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressDriver {
    /// A thread of its own, waiting with the node's wait strategy.
    #[default]
    Thread,
    /// Whoever asks: [`crate::pipeline::Node::poll_egress`] (e.g. the ingress event loop) and
    /// every session's `poll`/`wait`. No extra thread; the processor calls the node's egress
    /// waker, if one is set, when answers may be ready.
    Polled,
}

/// Core to pin each stage's thread to; `None` leaves the thread to the scheduler. A pin that
/// fails logs a warning and the stage runs unpinned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    /// The BLP thread (`Parallel`) or the processor thread (`Compact`).
    pub blp: Option<usize>,
    /// The journaler thread (`Parallel` only).
    pub journaler: Option<usize>,
    /// The replicator thread (`Parallel` only).
    pub replicator: Option<usize>,
    /// The egress thread, when egress has one.
    pub egress: Option<usize>,
}

impl Pins {
    /// No thread pinned.
    #[must_use]
    pub fn none() -> Pins {
        Pins::default()
    }

    /// The BLP (or processor) on the machine's last core, everything else unpinned: the BLP
    /// gets a core the ingress threads (which usually start on core 0) do not crowd.
    #[must_use]
    pub fn blp_on_last_core() -> Pins {
        let last = core_affinity::get_core_ids().and_then(|ids| ids.last().map(|id| id.id));
        Pins { blp: last, ..Pins::default() }
    }
}

/// Everything a node is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Slots in the input ring: a power of two, at least [`RING_SIZE_MIN`]. Bounds the commands
    /// in flight; a full ring answers `Busy`.
    pub ring_size: usize,
    /// The BLP's capacities.
    pub engine: EngineConfig,
    /// Replication epoch written with every journal record this node sequences.
    pub epoch: Epoch,
    /// Whether this node sequences client commands or takes records from a primary.
    pub intake: Intake,
    /// How often, in milliseconds, the timer checks whether a payment deadline has come due,
    /// once the earliest is near (until then it sleeps up to 200 ms at a time, woken by an
    /// earlier deadline and by a promotion); zero starts no timer. A `Tick` is published only
    /// when one has (an idle node journals nothing), so deadlines fire at most a period late
    /// without client traffic. (A [`ManualClock`](super::ManualClock) moved on while the
    /// timer sleeps is seen within 200 ms; the simulator and the tests that step a node drive
    /// no timer thread.)
    pub tick_period_ms: u64,
    /// The layout; `None` picks `Parallel` on machines with at least `parallel_cores_min`
    /// cores and `Compact` below.
    pub topology: Option<Topology>,
    /// Cores needed before `Parallel` is picked automatically.
    pub parallel_cores_min: usize,
    /// What idle stage threads do.
    pub wait: WaitStrategy,
    /// Who runs egress.
    pub egress: EgressDriver,
    /// Per-stage core pinning.
    pub pins: Pins,
    /// Sessions (submitters) open at once.
    pub sessions_max: u32,
    /// Commands one session may have in flight or unread; more is refused as `SessionFull`.
    /// Each session's completion queue is allocated at this size.
    pub session_pending_max: u32,
    /// How long `shutdown` waits for the ring to drain before failing what is left.
    pub drain_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            ring_size: 1 << 14,
            engine: EngineConfig::default(),
            epoch: Epoch(1),
            intake: Intake::Sequencer,
            tick_period_ms: 1,
            topology: None,
            parallel_cores_min: 6,
            wait: WaitStrategy::DEFAULT,
            egress: EgressDriver::Thread,
            pins: Pins::blp_on_last_core(),
            sessions_max: 4_096,
            session_pending_max: 1 << 14,
            drain_timeout_ms: 10_000,
        }
    }
}

/// A node configuration that cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// The ring must be a power of two of at least 64 slots.
    #[error(
        "ring_size {0} is not a power of two of at least {RING_SIZE_MIN}: use e.g. 1024 or 16384"
    )]
    RingSize(usize),
    /// A limit that must be at least one is zero.
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    /// The engine's capacities are invalid.
    #[error("engine configuration: {0}")]
    Engine(#[from] ConfigError),
}

impl NodeConfig {
    /// A configuration for tests: small engine, small ring, spin-then-park, nothing pinned.
    #[must_use]
    pub fn for_tests(topology: Topology) -> NodeConfig {
        NodeConfig {
            ring_size: 1 << 10,
            engine: EngineConfig::small(),
            topology: Some(topology),
            pins: Pins::none(),
            sessions_max: 64,
            session_pending_max: 1 << 12,
            ..NodeConfig::default()
        }
    }

    /// Checks every setting; `Node::start` refuses a configuration that fails.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if !self.ring_size.is_power_of_two() || self.ring_size < RING_SIZE_MIN {
            return Err(NodeConfigError::RingSize(self.ring_size));
        }
        let limits = [
            ("sessions_max", u64::from(self.sessions_max)),
            ("session_pending_max", u64::from(self.session_pending_max)),
            ("drain_timeout_ms", self.drain_timeout_ms),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(NodeConfigError::Zero(name));
            }
        }
        self.engine.validate()?;
        Ok(())
    }

    /// The topology this node runs: the configured one, or the automatic choice by core count.
    #[must_use]
    pub fn resolved_topology(&self) -> Topology {
        self.topology.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            if cores >= self.parallel_cores_min { Topology::Parallel } else { Topology::Compact }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_must_be_a_power_of_two_of_at_least_64() {
        // Goal: a ring the barrier cannot index is refused before any thread starts.
        for size in [0, 32, 100, 1000] {
            let config = NodeConfig { ring_size: size, ..NodeConfig::for_tests(Topology::Compact) };
            assert_eq!(config.validate(), Err(NodeConfigError::RingSize(size)));
        }
        let config = NodeConfig { ring_size: 64, ..NodeConfig::for_tests(Topology::Compact) };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn zero_limits_and_bad_engine_capacities_are_refused() {
        // Goal: every limit is checked, including the engine's own.
        let base = NodeConfig::for_tests(Topology::Parallel);
        let config = NodeConfig { session_pending_max: 0, ..base.clone() };
        assert_eq!(config.validate(), Err(NodeConfigError::Zero("session_pending_max")));
        let mut config = base;
        config.engine.orders_max = 0;
        assert!(matches!(config.validate(), Err(NodeConfigError::Engine(_))));
    }

    #[test]
    fn automatic_topology_is_compact_below_the_core_threshold() {
        // Goal: `Compact` is the default on machines with fewer cores than the threshold.
        let config =
            NodeConfig { topology: None, parallel_cores_min: usize::MAX, ..Default::default() };
        assert_eq!(config.resolved_topology(), Topology::Compact);
        let config = NodeConfig { topology: None, parallel_cores_min: 1, ..Default::default() };
        assert_eq!(config.resolved_topology(), Topology::Parallel);
    }
}
