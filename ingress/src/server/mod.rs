//! The mio server: one event-loop thread serving the binary protocol and the HTTP API.
//!
//! One thread is the right shape for small machines: it decodes requests, publishes commands
//! to the node without ever blocking, and writes outcomes back when the node completes them.
//! Every resource a client can consume is bounded: connections (`connections_max` per listener,
//! `connections_per_address_max` per source address, idle ones and ones holding part of a
//! request giving way to new ones at the limit), commands in flight overall (`in_flight_max`,
//! then `busy`), per source address (`address_in_flight_max`, reading pauses) and per
//! connection (reading pauses), request rate per connection and per source address (token
//! buckets, then `rate_limited`), failed authentications per source address (then
//! `auth_rate_limited`, unchecked), request size (frame, head, body limits), outbound bytes (a
//! client that does not read is disconnected when its buffer fills; when all clients together
//! hold more than `outbound_total_max`, the biggest holders are cut), time (idle connections
//! and requests that arrive too slowly are closed), and the event loop's own time (at most
//! `TURN_REQUESTS_MAX` requests from one connection per turn of the loop). Bad input costs the
//! sender its connection at worst, never anyone else's service.
//!
//! The per-address budget on commands in flight pauses reading rather than refusing: the
//! callers are a few storefront and payment services, each behind one address and carrying
//! many buyers, so a burst beyond the budget should wait in TCP's buffers, in order, rather
//! than come back to buyers as errors; and a paused connection costs the event loop nothing,
//! where refusing would still mean reading, decoding and answering every request of a flood.

mod admin;
mod auth;
mod conn;
mod refusal;
mod serve;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use ringfence_core::{Command, Outcome, Rejection};
use serde::Deserialize;

use crate::admission::{AddressLimit, AddressLimits, AddressTable, LogLimiter};
use crate::backend::{Backend, Refusal};
use crate::http::api::KeyMint;
use crate::http::host::AllowedHosts;
use crate::metrics::{Metrics, Protocol};
use crate::roles::{self, Caller, Role};
use admin::AdminCalls;
use auth::Auth;
use conn::{Conn, Flight};

const BINARY_LISTENER: Token = Token(usize::MAX - 1);
const HTTP_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
/// How often timeouts are checked; also the longest the loop sleeps.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// The longest a connection the server closed gracefully waits for its client to close too,
/// discarding what it sends ([`conn::Conn::begin_linger`]); then it is closed outright.
const LINGER_MAX: Duration = Duration::from_secs(2);
/// The shortest wait for a node run on the event loop's thread whose deadline is due.
const STEP_AGAIN_MIN: Duration = Duration::from_millis(1);

/// A listener is busy, and its idle connections get `idle_timeout_busy_ms`, once more than
/// `BUSY_NUMERATOR / BUSY_DENOMINATOR` of its `connections_max` are open.
const BUSY_NUMERATOR: usize = 3;
const BUSY_DENOMINATOR: usize = 4;
const _: () = assert!(BUSY_NUMERATOR < BUSY_DENOMINATOR);

/// Requests served from one connection per turn of the event loop. A connection with more
/// waiting is served again next turn (the loop then polls without sleeping), so one client
/// pipelining thousands of requests delays the others by at most this many of its own.
pub const TURN_REQUESTS_MAX: u32 = 256;
const _: () = assert!(TURN_REQUESTS_MAX > 0);

/// The per-address table holds this many addresses per connection that can be open: half of
/// it is enough for every open connection to come from its own address, the rest remembers
/// addresses recently gone (their rate budgets, their commands still in flight).
const ADDRESS_SLOTS_PER_CONNECTION: usize = 2;

/// Settings of the network front. Every field has a default; TOML files may set any of them.
///
/// # Memory
///
/// What the network front can hold is bounded by these settings (kernel socket buffers apart).
/// Per connection: its receive buffer, at most `header_max + body_max + 24 KiB` for HTTP
/// (48 KiB by default) and 16 KiB for the binary protocol (frames are at most 1 KiB), plus the
/// 16 KiB of output capacity a connection keeps once its output is written. Output waiting
/// for clients: at most `outbound_max` and one response per connection (reading pauses past
/// it), and at most `outbound_total_max` for all connections together, enforced after each
/// connection is served and at the end of each turn of the event loop by cutting the biggest
/// holders; so it is passed by at most one `outbound_max` plus the answers completed in one
/// turn. Vectors may have up to twice their length allocated. With the defaults: 2,048 HTTP
/// connections × 64 KiB = 128 MiB, 2,048 binary connections × 32 KiB = 64 MiB, 256 MiB of
/// output (512 MiB allocated at worst), and under 8 MiB of tables (65,536 flights; the
/// per-address budgets, 8,192 addresses of about 140 bytes with their index; the
/// failed-authentication table): about 0.45 GiB of buffered bytes and under 0.75 GiB
/// allocated, whatever the clients do. The node's ring and engine tables come on top
/// (`NodeConfig`, `EngineConfig`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Binary protocol listener; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// HTTP listener; `None` disables it.
    pub http: Option<SocketAddr>,
    /// Connections open at once on each listener (binary and HTTP each have this many). At the
    /// limit, the connection idle longest (owed nothing, with at most part of a request read,
    /// quiet for `idle_reclaim_after_ms`) is closed to admit the new one; without one, the new
    /// one is refused (`too_many_connections`).
    pub connections_max: usize,
    /// Connections one source address may have open, both listeners together (IPv6 addresses
    /// count per /64 prefix, as for failed authentications). One more is closed at accept.
    pub connections_per_address_max: usize,
    /// An idle connection (or one holding part of a request) gives way to a new one at the limit
    /// only once it has been quiet this long, so a flood of connections cannot churn clients
    /// between two requests or while a request arrives.
    pub idle_reclaim_after_ms: u64,
    /// Commands submitted and not yet answered, all connections together; beyond it: `busy`.
    pub in_flight_max: usize,
    /// Commands in flight per connection; beyond it the connection's reading pauses.
    pub connection_in_flight_max: usize,
    /// Commands in flight per source address, all its connections on both listeners together
    /// (IPv6: per /64); at it, reading from every connection of the address pauses until
    /// answers come back (TCP backpressure: nothing is refused, nothing is lost). A command
    /// counts until it is answered, even if its connection closed. Never more than half of
    /// `in_flight_max` is allowed, whatever this says, so one address can never take every
    /// slot and leave the others `busy`. Raise it when several services share one address
    /// (behind NAT, say).
    pub address_in_flight_max: usize,
    /// Bytes queued for one client; reading its requests pauses beyond it, and a client that
    /// lets more pile up unread is disconnected.
    pub outbound_max: usize,
    /// Bytes queued for all clients together. When more are held at the end of a turn of the
    /// event loop, connections are cut, the one holding the most first, until the total is
    /// within the budget (`ringfence_outbound_budget_disconnects_total`).
    pub outbound_total_max: usize,
    /// Requests per second per connection (token bucket); 0 means unlimited. Counted are the
    /// requests submitted to the node, queries included; what the event loop answers itself
    /// (`/health`, `/ready`, `/metrics`, `/v1/node`, the OpenAPI document, `PING`, `NODE`) is
    /// bounded by the per-turn budget instead.
    pub rate_per_sec: u32,
    /// Requests a connection may send at once after being quiet.
    pub rate_burst: u32,
    /// Requests per second per source address, all its connections together (token bucket;
    /// beyond it: `rate_limited`, HTTP 429); 0 means unlimited, the default: the callers are a
    /// few storefront and payment services, each behind one address and carrying many buyers,
    /// whose rate is the sale's, not one client's. For a front open to many small clients.
    pub address_rate_per_sec: u32,
    /// Requests a source address may send at once after being quiet.
    pub address_rate_burst: u32,
    /// Largest HTTP request head.
    pub header_max: usize,
    /// Largest HTTP request body.
    pub body_max: usize,
    /// A connection with nothing in flight and no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// The idle timeout instead while a listener is busy: more than three quarters of its
    /// `connections_max` open.
    pub idle_timeout_busy_ms: u64,
    /// A request must arrive whole within this long of its first byte, and a response being
    /// written must be taken within it. A half-sent request that runs out is answered 408
    /// (`timeout` on the binary port) and the connection closed; behind requests still owed
    /// answers it is dropped instead, and the connection closes once they are written (the
    /// binary `timeout` after them). A binary fatal error waits this long at most for the
    /// answers owed before it; then it is sent without them and the connection closed.
    pub request_timeout_ms: u64,
    /// Retry hint sent with `busy` and capacity refusals on the binary port.
    pub busy_retry_ms: u32,
    /// Bad-input warnings printed per second at most.
    pub warnings_per_sec: u32,
    /// How long a shutdown waits for commands in flight to be answered before closing. A binary
    /// fatal error still waiting for answers then is sent without them, as far as the socket
    /// takes it at once.
    pub drain_timeout_ms: u64,
    /// The admin bearer token; without one, admin calls are refused.
    pub admin_token: Option<String>,
    /// Wrong admin tokens (either port) one address may present at once. After them, its
    /// authentications are refused without being checked (HTTP 429 `auth_rate_limited`, binary
    /// `rate_limited`) until the budget refills. IPv6 addresses count per /64 prefix.
    pub auth_failures_burst: u32,
    /// One more wrong token is allowed per address every this many milliseconds.
    pub auth_failure_refill_ms: u64,
    /// Addresses whose failures are remembered; when full, the one seen least recently is
    /// forgotten.
    pub auth_addresses_max: usize,
    /// Where client commands are open (no role token): the DNS names, besides IP literals and
    /// `localhost`, that an HTTP request may carry in `Host` (`*`: any). Others are refused
    /// with 403 `host_not_allowed`, so a page in an operator's browser cannot read a loopback
    /// node by having its own name resolve to 127.0.0.1 (DNS rebinding). List the name a
    /// proxy or a service uses to reach the node.
    pub allowed_hosts: Vec<String>,
    /// Tokens of the other roles (`orders`, `payments`, `read`; `admin` adds admin tokens).
    /// With any non-admin one, roles are enforced: every call needs a token whose role allows
    /// it ([`crate::roles`]). All tokens must differ. `serve` sets them from `[auth]`.
    #[serde(skip)]
    pub role_tokens: Vec<(Role, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7001))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7080))),
            connections_max: 2_048,
            connections_per_address_max: 256,
            idle_reclaim_after_ms: 1_000,
            in_flight_max: 65_536,
            connection_in_flight_max: 4_096,
            address_in_flight_max: 4_096,
            outbound_max: 4 << 20,
            outbound_total_max: 256 << 20,
            rate_per_sec: 0,
            rate_burst: 1_000,
            address_rate_per_sec: 0,
            address_rate_burst: 1_000,
            header_max: 8 * 1024,
            body_max: 16 * 1024,
            idle_timeout_ms: 300_000,
            idle_timeout_busy_ms: 10_000,
            request_timeout_ms: 10_000,
            busy_retry_ms: 10,
            warnings_per_sec: 10,
            drain_timeout_ms: 5_000,
            admin_token: None,
            auth_failures_burst: 10,
            auth_failure_refill_ms: 6_000,
            auth_addresses_max: 4_096,
            allowed_hosts: Vec::new(),
            role_tokens: Vec::new(),
        }
    }
}

/// A [`ServerConfig`] the server cannot serve with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerConfigError {
    /// A limit of zero would refuse or cut every client.
    #[error("[server] {0} = 0 would refuse or cut off every client: it must be at least 1")]
    Zero(&'static str),
    /// Both listeners were given one address: the second could never bind.
    #[error("[server] listen and http are both {0}: give each listener its own port")]
    SameAddress(SocketAddr),
    /// An entry of `allowed_hosts` is not a host name.
    #[error("[server] allowed_hosts: {0}")]
    AllowedHost(String),
}

impl ServerConfig {
    /// `allowed_hosts`, checked.
    pub fn hosts(&self) -> Result<AllowedHosts, ServerConfigError> {
        AllowedHosts::new(self.allowed_hosts.iter().map(String::as_str))
            .map_err(ServerConfigError::AllowedHost)
    }

    /// Checks the limits and addresses: every budget that a zero would turn into a refusal of
    /// every client is at least 1, and the two listeners do not share an address.
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        let at_least_one = [
            ("connections_max", self.connections_max as u64),
            ("connections_per_address_max", self.connections_per_address_max as u64),
            ("in_flight_max", self.in_flight_max as u64),
            ("connection_in_flight_max", self.connection_in_flight_max as u64),
            ("address_in_flight_max", self.address_in_flight_max as u64),
            ("outbound_max", self.outbound_max as u64),
            ("outbound_total_max", self.outbound_total_max as u64),
            ("header_max", self.header_max as u64),
            ("body_max", self.body_max as u64),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("idle_timeout_busy_ms", self.idle_timeout_busy_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("auth_addresses_max", self.auth_addresses_max as u64),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ServerConfigError::Zero(name));
        }
        // A rate with no burst would admit nothing.
        if self.rate_per_sec > 0 && self.rate_burst == 0 {
            return Err(ServerConfigError::Zero("rate_burst"));
        }
        if self.address_rate_per_sec > 0 && self.address_rate_burst == 0 {
            return Err(ServerConfigError::Zero("address_rate_burst"));
        }
        self.hosts()?;
        match (self.listen, self.http) {
            (Some(listen), Some(http)) if listen == http && listen.port() != 0 => {
                Err(ServerConfigError::SameAddress(listen))
            }
            _ => Ok(()),
        }
    }

    /// Listens on ephemeral loopback ports; for tests and benchmarks.
    #[must_use]
    pub fn loopback() -> ServerConfig {
        ServerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ServerConfig::default()
        }
    }

    /// Commands one source address may have in flight: `address_in_flight_max`, but never
    /// more than half of `in_flight_max` (and at least one).
    #[must_use]
    pub fn address_in_flight_limit(&self) -> usize {
        self.address_in_flight_max.min(self.in_flight_max / 2).max(1)
    }

    /// The budgets of each source address.
    #[must_use]
    pub fn address_limits(&self) -> AddressLimits {
        let clamp = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        AddressLimits {
            connections_max: clamp(self.connections_per_address_max),
            in_flight_max: clamp(self.address_in_flight_limit()),
            rate_per_sec: self.address_rate_per_sec,
            rate_burst: self.address_rate_burst,
        }
    }
}

/// A running server: its addresses and the means to stop it.
pub struct ServerHandle {
    binary_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    stopper: Stopper,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Asks a server to stop; cheap to clone and usable from any thread (e.g. a signal handler
/// thread).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the server to stop: it stops accepting and reading, answers what is in flight
    /// (for at most `drain_timeout_ms`), closes its connections and returns.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

impl ServerHandle {
    /// Where the binary protocol listens.
    #[must_use]
    pub fn binary_addr(&self) -> Option<SocketAddr> {
        self.binary_addr
    }

    /// Where HTTP listens.
    #[must_use]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A handle that stops the server.
    #[must_use]
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits for the server thread to end (after [`Stopper::stop`]).
    pub fn join(mut self) -> io::Result<()> {
        self.join_thread()
    }

    /// Stops the server and waits for it.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stopper.stop();
        self.join_thread()
    }

    fn join_thread(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the ingress thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopper.stop();
            let _ = self.join_thread();
        }
    }
}

/// Binds the listeners, builds the backend with the loop's waker, and runs the event loop on a
/// thread named `ringfence-ingress`.
pub fn start<B: Backend>(
    config: ServerConfig,
    make_backend: impl FnOnce(Arc<Waker>) -> io::Result<B>,
) -> io::Result<ServerHandle> {
    config.validate().map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut binary = config.listen.map(TcpListener::bind).transpose()?;
    let mut http = config.http.map(TcpListener::bind).transpose()?;
    let binary_addr = binary.as_ref().map(TcpListener::local_addr).transpose()?;
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    if let Some(listener) = binary.as_mut() {
        poll.registry().register(listener, BINARY_LISTENER, Interest::READABLE)?;
    }
    if let Some(listener) = http.as_mut() {
        poll.registry().register(listener, HTTP_LISTENER, Interest::READABLE)?;
    }
    let backend = make_backend(Arc::clone(&waker))?;
    let flag = Arc::new(AtomicBool::new(false));
    let stopper = Stopper { flag: Arc::clone(&flag), waker: Arc::clone(&waker) };
    let server = Server::new(config, poll, backend, binary, http, (waker, flag));
    let thread =
        std::thread::Builder::new().name("ringfence-ingress".into()).spawn(move || server.run())?;
    Ok(ServerHandle { binary_addr, http_addr, stopper, thread: Some(thread) })
}

/// Commands that need a token even where client commands are open (only an admin token
/// configured): catalogue changes, fulfilment, refunds, snapshots. The table is
/// [`roles::command_need`].
#[must_use]
pub fn needs_admin(command: &Command) -> bool {
    !Caller::Open.allows(roles::command_need(command))
}

struct Server<B: Backend> {
    poll: Poll,
    config: ServerConfig,
    backend: B,
    binary: Option<TcpListener>,
    http: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    /// Connections open per listener, indexed by [`protocol_index`].
    open_per_listener: [usize; 2],
    /// Each source address's connections, commands in flight and rate budget.
    addresses: AddressTable,
    /// Connections (slot, id) whose reading paused because their address had no room, oldest
    /// first: resumed in that order as answers make room.
    address_waiting: VecDeque<(usize, u64)>,
    /// Connections that used up their turn's requests with more to read: served next turn.
    yielded: Vec<usize>,
    /// Turns of the event loop so far; a connection's request budget is per turn.
    turn: u64,
    /// Sum of every connection's `counted_bytes`: output held for all clients.
    outbound_total: usize,
    next_conn_id: u64,
    flights: Vec<Option<Flight>>,
    free_flights: Vec<usize>,
    /// Connections with output to flush at the end of this turn of the loop.
    dirty: Vec<usize>,
    /// Connections whose reading paused and may resume.
    resume: Vec<usize>,
    metrics: Metrics,
    log: LogLimiter,
    auth: Auth,
    /// `Host` names answered where client commands are open.
    hosts: AllowedHosts,
    mint: KeyMint,
    /// The request id and epoch of the promotion this server made, so a retried promotion
    /// with the same `request_id` gets the same answer.
    promoted_by: Option<(ringfence_core::RequestKey, u64)>,
    /// Admin calls carried out off the event loop's thread.
    admin: AdminCalls,
    stop: Arc<AtomicBool>,
    stopping_since: Option<Instant>,
}

impl<B: Backend> Server<B> {
    fn new(
        config: ServerConfig,
        poll: Poll,
        backend: B,
        binary: Option<TcpListener>,
        http: Option<TcpListener>,
        (waker, stop): (Arc<Waker>, Arc<AtomicBool>),
    ) -> Server<B> {
        let nonce = u128::from(crate::backend::now_ms()) << 64
            | u128::from(std::process::id()) << 32
            | u128::from(Instant::now().elapsed().subsec_nanos());
        // Two listeners: at most twice `connections_max` connections are open.
        let connections = config.connections_max.saturating_mul(2);
        let address_slots = connections.saturating_mul(ADDRESS_SLOTS_PER_CONNECTION);
        let addresses = AddressTable::new(config.address_limits(), address_slots);
        Server {
            poll,
            log: LogLimiter::new(config.warnings_per_sec),
            auth: Auth::new(&config),
            // Checked by `validate` before a server is made; a bad list answers IP literals
            // and `localhost` only.
            hosts: config.hosts().unwrap_or_default(),
            config,
            backend,
            binary,
            http,
            conns: Vec::new(),
            free_conns: Vec::new(),
            open_per_listener: [0; 2],
            addresses,
            address_waiting: VecDeque::with_capacity(connections),
            yielded: Vec::with_capacity(connections),
            turn: 0,
            outbound_total: 0,
            next_conn_id: 1,
            flights: Vec::new(),
            free_flights: Vec::new(),
            dirty: Vec::new(),
            resume: Vec::new(),
            metrics: Metrics::default(),
            mint: KeyMint::new(nonce ^ nonce_entropy()),
            promoted_by: None,
            admin: AdminCalls::new(waker),
            stop,
            stopping_since: None,
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        // A node run on this thread: how soon it must be stepped again without new input.
        let mut step_in = self.backend.step();
        loop {
            // A connection that used up its turn has input waiting and no event to come for it.
            let timeout = if self.yielded.is_empty() {
                // A payment deadline due now waits a millisecond, not a spin: its tick may have
                // been held back (a full ring), and the next step retries it.
                step_in.map_or(SWEEP_INTERVAL, |due| due.clamp(STEP_AGAIN_MIN, SWEEP_INTERVAL))
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
            let now = Instant::now();
            self.turn += 1;
            let yielded_before = self.yielded.len();
            for event in events.iter() {
                match event.token() {
                    BINARY_LISTENER => self.accept(Protocol::Binary, now),
                    HTTP_LISTENER => self.accept(Protocol::Http, now),
                    WAKER => {}
                    Token(index) => {
                        let hang_up = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || hang_up;
                        self.on_event(index, readable, event.is_writable(), hang_up, now);
                    }
                }
            }
            self.serve_yielded(yielded_before, now);
            step_in = self.backend.step();
            self.drain_completions();
            self.drain_admin_answers();
            self.release_address_waiters();
            self.resume_paused(now);
            self.flush_dirty(now);
            if now.duration_since(last_sweep) >= SWEEP_INTERVAL {
                last_sweep = now;
                self.sweep(now);
            }
            if self.stop.load(Ordering::Acquire) && self.stopping_since.is_none() {
                self.begin_stop(now);
            }
            if let Some(since) = self.stopping_since {
                let drained =
                    self.metrics.in_flight == 0 && self.admin.waiting() == 0 && self.all_flushed();
                let drain_timeout = Duration::from_millis(self.config.drain_timeout_ms);
                if drained || now.duration_since(since) >= drain_timeout {
                    break;
                }
            }
        }
        let now = Instant::now();
        for index in 0..self.conns.len() {
            // A fatal error held for answers the drain did not bring goes out without them, as
            // far as the socket takes it now.
            if let Some(conn) = self.conns[index].as_mut()
                && conn.release_held_fatal(now)
            {
                conn.flush(now);
            }
            self.close(index);
        }
        self.backend.close();
        Ok(())
    }

    fn begin_stop(&mut self, now: Instant) {
        self.stopping_since = Some(now);
        if let Some(mut listener) = self.binary.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        if let Some(mut listener) = self.http.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn all_flushed(&self) -> bool {
        self.conns.iter().flatten().all(|conn| conn.out_pending() == 0)
    }

    fn accept(&mut self, protocol: Protocol, now: Instant) {
        loop {
            let listener = match protocol {
                Protocol::Binary => self.binary.as_ref(),
                Protocol::Http => self.http.as_ref(),
            };
            let Some(listener) = listener else { return };
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of file descriptors and the like: try again on the next event.
                    self.log.warn(now, format_args!("accept failed: {error}"));
                    return;
                }
            };
            // A connection that lingers owes its client nothing more: it gives way first.
            if !self.addresses.may_open(peer.ip()) {
                if let Some(lingering) = self.oldest_lingering(None, Some(peer.ip())) {
                    self.close(lingering);
                }
            }
            if !self.addresses.may_open(peer.ip()) {
                self.metrics.address_limited_connections += 1;
                let key = crate::admission::address_key(peer.ip());
                self.log.warn(now, format_args!("closing a connection: {key} has too many open"));
                conn::refuse(stream, protocol, "too many connections from this address");
                continue;
            }
            if self.open_per_listener[protocol_index(protocol)] >= self.config.connections_max {
                if let Some(lingering) = self.oldest_lingering(Some(protocol), None) {
                    self.close(lingering);
                    self.register(stream, protocol, peer.ip(), now);
                    continue;
                }
                let Some(idle) = self.oldest_idle(protocol, now) else {
                    self.metrics.refused_connections += 1;
                    conn::refuse(stream, protocol, "connection limit reached");
                    continue;
                };
                self.metrics.idle_reclaimed += 1;
                // One holding part of a request is told why, as one too slow to finish it is.
                if let Some(conn) = self.conns[idle].as_mut() {
                    conn.write_timeout_notice(
                        "request not completed in time, and the connection limit was reached",
                    );
                    conn.flush(now);
                }
                self.close(idle);
            }
            self.register(stream, protocol, peer.ip(), now);
        }
    }

    /// The connection lingering longest ([`conn::Conn::begin_linger`]) of `protocol`'s listener
    /// and from `address`'s key (IPv6: its /64), where given. A scan, run only at a limit.
    fn oldest_lingering(
        &self,
        protocol: Option<Protocol>,
        address: Option<IpAddr>,
    ) -> Option<usize> {
        let key = address.map(crate::admission::address_key);
        let (index, _) = (self.conns.iter().enumerate())
            .filter_map(|(index, conn)| Some((index, conn.as_ref()?)))
            .filter(|(_, conn)| protocol.is_none_or(|protocol| conn.protocol == protocol))
            .filter(|(_, conn)| {
                key.is_none_or(|key| crate::admission::address_key(conn.peer) == key)
            })
            .filter_map(|(index, conn)| Some((index, conn.lingering_since()?)))
            .min_by_key(|&(_, since)| since)?;
        Some(index)
    }

    /// The connection of `protocol`'s listener that may give way ([`conn::Conn::may_give_way`],
    /// part of a request read or none) and has been quiet longest, if for at least
    /// `idle_reclaim_after_ms`. A scan, run only at the listener's limit: a list kept in
    /// idleness order would cost every request to save this.
    fn oldest_idle(&self, protocol: Protocol, now: Instant) -> Option<usize> {
        let quiet_min = Duration::from_millis(self.config.idle_reclaim_after_ms);
        let (index, conn) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(index, conn)| Some((index, conn.as_ref()?)))
            .filter(|(_, conn)| conn.protocol == protocol && conn.may_give_way())
            .min_by_key(|(_, conn)| conn.last_activity())?;
        let quiet = now.saturating_duration_since(conn.last_activity()) >= quiet_min;
        quiet.then_some(index)
    }

    /// Whether `protocol`'s listener has more than three quarters of its connections open.
    fn listener_busy(&self, protocol: Protocol) -> bool {
        let open = self.open_per_listener[protocol_index(protocol)];
        open * BUSY_DENOMINATOR > self.config.connections_max * BUSY_NUMERATOR
    }

    fn register(
        &mut self,
        mut stream: mio::net::TcpStream,
        protocol: Protocol,
        peer: IpAddr,
        now: Instant,
    ) {
        let index = self.free_conns.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(error) = self.poll.registry().register(&mut stream, Token(index), interest) {
            self.log.warn(now, format_args!("registering a connection failed: {error}"));
            self.free_conns.push(index);
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let address = self.addresses.open(peer, now);
        self.conns[index] = Some(Conn::new(id, stream, protocol, peer, address, &self.config, now));
        self.metrics.accepted(protocol);
        self.metrics.open += 1;
        self.metrics.addresses_tracked = self.addresses.tracked() as u64;
        self.metrics.addresses_evicted = self.addresses.evictions();
        self.open_per_listener[protocol_index(protocol)] += 1;
        assert!(self.open_per_listener[protocol_index(protocol)] <= self.config.connections_max);
    }

    /// Closes finished connection `index`: gracefully where its client may still be sending
    /// (it lingers, [`conn::Conn::begin_linger`]), at once otherwise or while the server stops.
    fn finish(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        if self.stopping_since.is_some() || !conn.begin_linger(now) {
            self.close(index);
            return;
        }
        // Everything it held was handed to the kernel.
        self.account(index);
        assert_eq!(self.conns[index].as_ref().map(|conn| conn.counted_bytes), Some(0));
    }

    fn close(&mut self, index: usize) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(conn.stream_mut());
        self.free_conns.push(index);
        self.metrics.open -= 1;
        self.open_per_listener[protocol_index(conn.protocol)] -= 1;
        self.addresses.close(conn.address);
        assert!(self.outbound_total >= conn.counted_bytes);
        self.outbound_total -= conn.counted_bytes;
        self.metrics.outbound_buffered_bytes = self.outbound_total as u64;
    }

    /// Brings the outbound total up to date with the output connection `index` holds now.
    fn account(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { return };
        let held = conn.held_bytes();
        assert!(self.outbound_total >= conn.counted_bytes);
        self.outbound_total = self.outbound_total - conn.counted_bytes + held;
        conn.counted_bytes = held;
        self.metrics.outbound_buffered_bytes = self.outbound_total as u64;
    }

    /// Cuts connections, the one holding the most output first, until all together hold at
    /// most `outbound_total_max`. Cutting the biggest holders frees the budget with the fewest
    /// victims, and the biggest are the clients reading least; refusing new output instead
    /// would stall well-behaved clients behind them.
    fn shed_outbound(&mut self, now: Instant) {
        debug_assert_eq!(
            self.outbound_total,
            self.conns.iter().flatten().map(|conn| conn.counted_bytes).sum::<usize>()
        );
        let mut holders: Vec<(usize, usize)> = (self.conns.iter().enumerate())
            .filter_map(|(index, conn)| Some((conn.as_ref()?.counted_bytes, index)))
            .filter(|&(held, _)| held > 0)
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (_, index) in holders {
            if self.outbound_total <= self.config.outbound_total_max {
                break;
            }
            self.metrics.outbound_budget_disconnects += 1;
            self.log.warn(now, format_args!("closing a connection: outbound_total_max reached"));
            self.close(index);
        }
        assert!(self.outbound_total <= self.config.outbound_total_max);
    }

    fn on_event(
        &mut self,
        index: usize,
        readable: bool,
        writable: bool,
        hang_up: bool,
        now: Instant,
    ) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else { return };
        if conn.lingering_since().is_some() {
            let done = readable && conn.discard_input();
            self.conns[index] = Some(conn);
            if done {
                self.close(index);
            }
            return;
        }
        if writable {
            conn.flush(now);
        }
        if readable && self.stopping_since.is_none() {
            self.read_and_serve(&mut conn, index, now, hang_up);
        }
        self.put_back(conn, index, now);
    }

    /// Returns a taken connection to its slot, or closes it if it is finished.
    fn put_back(&mut self, conn: Conn, index: usize, now: Instant) {
        let finished = conn.lingering_since().is_none() && conn.is_finished();
        let dirty = conn.out_pending() > 0;
        self.conns[index] = Some(conn);
        self.account(index);
        if finished {
            self.finish(index, now);
        } else if dirty {
            self.dirty.push(index);
        }
        if self.outbound_total > self.config.outbound_total_max {
            // Checked after every connection served, so one turn of the loop cannot pass the
            // budget by more than one connection's `outbound_max`.
            self.shed_outbound(Instant::now());
        }
    }

    /// Serves again, on this turn's budget, the first `carried` connections listed as having
    /// used up an earlier turn with requests left; those that use this one up too (listed
    /// after them) wait for the next turn.
    fn serve_yielded(&mut self, carried: usize, now: Instant) {
        for position in 0..carried {
            let index = self.yielded[position];
            let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else { continue };
            if conn.yielded {
                conn.yielded = false;
                if self.stopping_since.is_none() {
                    // No event will come for input already waiting in the socket.
                    self.read_and_serve(&mut conn, index, now, true);
                }
            }
            self.put_back(conn, index, now);
        }
        self.yielded.drain(..carried);
    }

    /// Queues for resuming, oldest first, the connections waiting for their address's
    /// in-flight budget where answers made room; the others keep their turn in the queue.
    /// Every waiter of an address with room is resumed: the first takes the room and the rest
    /// pause again at the back, so an address's connections take turns.
    fn release_address_waiters(&mut self) {
        for _ in 0..self.address_waiting.len() {
            let Some((index, id)) = self.address_waiting.pop_front() else { break };
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { continue };
            if conn.id != id || !conn.waits_for_address {
                continue;
            }
            if self.addresses.has_room(conn.address) {
                conn.waits_for_address = false;
                self.resume.push(index);
            } else {
                self.address_waiting.push_back((index, id));
            }
        }
    }

    /// Pauses reading from `conn`, whose address has its in-flight budget in use, until
    /// answers make room; counted, and logged once in a while per address.
    fn pause_for_address(&mut self, conn: &mut Conn, index: usize, now: Instant) {
        conn.read_paused = true;
        self.metrics.address_limited[AddressLimit::InFlight.index()] += 1;
        if !conn.waits_for_address {
            conn.waits_for_address = true;
            self.address_waiting.push_back((index, conn.id));
        }
        if self.addresses.report_due(conn.address, AddressLimit::InFlight, now) {
            let key = self.addresses.key(conn.address);
            let limit = self.addresses.limits().in_flight_max;
            self.log.warn(
                now,
                format_args!(
                    "pausing reading from {key}: its connections have address_in_flight_max \
                     ({limit}) commands in flight"
                ),
            );
        }
    }

    fn resume_paused(&mut self, now: Instant) {
        let mut resume = std::mem::take(&mut self.resume);
        for index in resume.drain(..) {
            let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else { continue };
            if conn.read_paused && self.stopping_since.is_none() {
                // Input may have waited in the socket since before the pause, with no new
                // event to come for it: read until the socket says it is empty.
                self.read_and_serve(&mut conn, index, now, true);
            }
            self.put_back(conn, index, now);
        }
        self.resume = resume;
    }

    fn flush_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for index in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { continue };
            conn.flush(now);
            if conn.out_pending() > self.config.outbound_max {
                self.metrics.slow_reader_disconnects += 1;
                self.log.warn(now, format_args!("closing a connection that does not read"));
                self.close(index);
            } else if conn.lingering_since().is_none() && conn.is_finished() {
                self.finish(index, now);
            } else {
                if conn.read_paused && conn.held_bytes() <= self.config.outbound_max {
                    // Reading may have paused for output that has now left.
                    self.resume.push(index);
                }
                self.account(index);
            }
        }
        self.dirty = dirty;
        if self.outbound_total > self.config.outbound_total_max {
            self.shed_outbound(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        // Listeners are edge-triggered: after an accept failed (e.g. out of file descriptors)
        // no new event may come for connections already queued, so try again here.
        self.accept(Protocol::Binary, now);
        self.accept(Protocol::Http, now);
        let idle_timeout = |busy: bool, config: &ServerConfig| {
            Duration::from_millis(if busy {
                config.idle_timeout_busy_ms.min(config.idle_timeout_ms)
            } else {
                config.idle_timeout_ms
            })
        };
        let busy = [self.listener_busy(Protocol::Binary), self.listener_busy(Protocol::Http)];
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else { continue };
            if let Some(since) = conn.lingering_since() {
                if now.duration_since(since) >= LINGER_MAX {
                    self.close(index);
                }
                continue;
            }
            let listener_busy = busy[protocol_index(conn.protocol)];
            let timeout = idle_timeout(listener_busy, &self.config);
            if let Some(reason) = conn.timed_out(now, &self.config, timeout) {
                self.metrics.timeouts += 1;
                let quiet_for = now.saturating_duration_since(conn.last_activity());
                let normal = idle_timeout(false, &self.config);
                if listener_busy && reason.starts_with("idle") && quiet_for < normal {
                    self.metrics.busy_idle_timeouts += 1;
                }
                if conn.finish_before_closing("request not completed in time") {
                    self.log.warn(
                        now,
                        format_args!(
                            "dropping a request: {reason}; the connection closes once the \
                             answers it is owed are written"
                        ),
                    );
                    continue;
                }
                self.log.warn(now, format_args!("closing a connection: {reason}"));
                // A fatal error held for answers that did not come goes out without them.
                conn.release_held_fatal(now);
                conn.write_timeout_notice("request not completed in time");
                conn.flush(now);
                self.close(index);
            }
        }
    }

    fn drain_completions(&mut self) {
        let now = Instant::now();
        while let Some(completion) = self.backend.poll() {
            let slot = usize::try_from(completion.token).ok().and_then(|t| self.flights.get_mut(t));
            let Some(flight) = slot.and_then(Option::take) else {
                self.log
                    .warn(now, format_args!("completion for unknown token {}", completion.token));
                continue;
            };
            self.free_flights.push(completion.token as usize);
            self.metrics.in_flight -= 1;
            self.addresses.answered(flight.address);
            let latency = now.saturating_duration_since(flight.submitted).as_nanos() as u64;
            // A catalogue page asks for every position up to its limit, and those past the
            // catalogue's end answer `unknown_sku`: no caller asked for an unknown SKU there.
            let past_catalogue = matches!(flight.reply, conn::Reply::HttpPage { .. })
                && completion.result == Ok(Outcome::Rejected(Rejection::UnknownSku));
            match &completion.result {
                Ok(_) if past_catalogue => {}
                Ok(outcome) => self.metrics.outcome(outcome, latency),
                Err(Refusal::ReplicationUnavailable) => self.metrics.replication_unavailable += 1,
                Err(Refusal::JournalFailed(_)) => self.metrics.journal_failed += 1,
                Err(_) => {}
            }
            let Some(conn) = self.conns.get_mut(flight.conn).and_then(Option::as_mut) else {
                continue;
            };
            // An answer for a connection since closed is dropped, as is one for a lingering
            // connection, though none can be: it was owed nothing when it began to linger.
            if conn.id != flight.conn_id || conn.lingering_since().is_some() {
                continue;
            }
            conn.complete(&flight, &completion.result, &self.config, now);
            self.dirty.push(flight.conn);
            if conn.read_paused {
                self.resume.push(flight.conn);
            }
        }
    }
}

/// The slot of a listener in per-listener counts.
fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Binary => 0,
        Protocol::Http => 1,
    }
}

fn nonce_entropy() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    // `RandomState` is seeded from the operating system's randomness; only used to make admin
    // request keys of different runs differ, never for anything that must be reproducible.
    let state = RandomState::new();
    u128::from(state.hash_one(1u8)) << 64 | u128::from(state.hash_one(2u8))
}
