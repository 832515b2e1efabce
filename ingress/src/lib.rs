//! Network front of ringfence: the mio event loop, the binary wire protocol, the HTTP/JSON API,
//! admission control, and the blocking client library.
//!
//! This crate turns bytes from untrusted sockets into sequenced commands for the node and routes
//! each outcome back to the connection that asked for it. It never decides business rules.

pub mod admission;
pub mod backend;
pub mod client;
pub mod http;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod roles;
pub mod server;
pub mod wire;

pub use backend::{
    AdminCall, Backend, BackendCompletion, CoordinationStatus, EngineWatch, HashWatch,
    MetricsWriter, NodeBackend, NodeStatus, NotReady, OnNodeStop, Refusal, ReplicationControl,
    ReplicationStatus,
};
pub use client::{Client, ClientError, connect_first, read_to_end_by};
pub use roles::Role;
pub use server::{ServerConfig, ServerConfigError, ServerHandle, Stopper, start};
