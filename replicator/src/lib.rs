//! Primary/standby replication and failover.
//!
//! The replication protocol is a state machine fed by messages (records, acknowledgements,
//! heartbeats, epoch changes); sockets live in a thin shell around it so that a primary, a
//! standby and their network can run under a deterministic simulator with injected faults.
