//! Primary/standby replication: the wire protocol, handshake authentication, the decisions a
//! pair makes (where a joining standby's journal agrees, when answers wait for the standby),
//! and the TCP shell that runs them.
//!
//! The protocol's decisions are pure and fed by messages and time — [`position`] (where to
//! stream from, or what a rejoining node must drop), [`policy`] (the acknowledgement policy)
//! and [`following`] (what a following standby does next, and what it acknowledges) — so the
//! simulator can drive them; sockets and threads live in a thin shell ([`primary`],
//! [`standby`], [`control`]).
//!
//! - [`message`]: the frames and messages of protocol version 1, their encoding and checked
//!   decoding; [`stream`]: a blocking frame reader and writers for the socket shell.
//! - [`auth`]: the shared cluster secret, the cluster id, nonces, and the HMAC-SHA256
//!   challenge-response of the handshake.
//! - [`link`]: the state shared with the node's stages, and the replicator stage itself.
//! - [`control`]: one node's replication: role, policy, figures, promotion; `handshakes`: the
//!   primary's handshakes in progress, and which gives way when a connection finds them full.
//! - [`coordination`]: automatic failover with etcd as the witness: the leader key, its
//!   lease, the in-sync record, as a pure pilot behind the `Coordinator` trait.
//!
//! `docs/replication-protocol.md` describes the protocol byte by byte.

pub mod auth;
pub mod config;
pub mod control;
pub mod coordination;
pub mod following;
mod handshakes;
pub mod index;
pub mod link;
pub mod message;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod policy;
pub mod position;
pub mod primary;
pub mod session;
pub mod standby;
pub mod stream;
