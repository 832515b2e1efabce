//! Primary/standby replication: the wire protocol, handshake authentication, and (to come) the
//! state machines that use them.
//!
//! The replication protocol is a state machine fed by messages (records, acknowledgements,
//! heartbeats, epoch changes); sockets live in a thin shell around it so that a primary, a
//! standby and their network can run under a deterministic simulator with injected faults.
//!
//! - [`message`]: the frames and messages of protocol version 1, their encoding and checked
//!   decoding.
//! - [`stream`]: a blocking frame reader and writers for the socket shell.
//! - [`auth`]: the shared cluster secret, the cluster id, nonces, and the HMAC-SHA256
//!   challenge-response of the handshake.
//!
//! `docs/replication-protocol.md` describes the protocol byte by byte.

pub mod auth;
pub mod message;
pub mod stream;
