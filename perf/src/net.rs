//! Network benchmarks: `tcp` (binary protocol) and `http` against an in-process ringfence
//! server on loopback, and the load generator they share with the Redis comparison.
//!
//! The load generator is one thread driving many pipelined connections with mio. At a fixed
//! offered rate it is open-loop: request *i* is due at `t0 + i / rate`, is sent as soon as the
//! generator gets to it, and its latency is measured from when it was *due*, so a stalled
//! server is charged for every request it delayed (no coordinated omission). The `max` rows
//! keep a fixed window of requests in flight per connection instead, and measure from the
//! actual send: they give throughput.
//!
//! Workload (same for Redis): a hot-SKU flash sale — every request reserves one unit of the
//! same SKU for a new user with a new idempotency key, per-user limit 1, stock large enough
//! that every reservation succeeds (the full path: key check, limit check, stock take, order
//! creation, payment deadline).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ringfence_core::Epoch;
use ringfence_core::pipeline::{EgressDriver, NoReplicator, Node, NodeConfig, Topology};
use ringfence_core::{
    Action, Command, CreateSku, EngineConfig, Outcome, RequestKey, Reserve, SkuId, UserId,
};
use ringfence_ingress::wire::{self, Kind, Response};
use ringfence_ingress::{HashWatch, NodeBackend, ServerConfig, ServerHandle};
use ringfence_journal::recovery::recover;
use ringfence_journal::snapshot::{
    SnapshotPolicy, SnapshotStatsHandle, Snapshotter, WriterPriority,
};
use ringfence_journal::spare::DISK_CHECK_EVERY;
use ringfence_journal::writer::{Durability, WriterOptions};

use crate::floor;
use crate::report::{Report, Row, SETTLED, latency_histogram, record_unanswered};
use crate::{Common, Size};

/// The hot SKU every benchmark reserves from.
pub const HOT_SKU: u64 = 1;
/// Stock large enough that no run sells out.
pub const HOT_STOCK: u32 = 2_000_000_000;

/// A request/response protocol the generator can drive.
pub trait Protocol {
    /// Whether responses carry the request's index (binary correlation ids) rather than
    /// arriving in request order on their connection.
    fn correlated(&self) -> bool;
    /// Appends request number `index`.
    fn encode(&mut self, out: &mut Vec<u8>, index: u64);
    /// Splits one response off `input`: bytes used, the request index if the response carries
    /// it, and whether the request succeeded. `Ok(None)` means more bytes are needed.
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String>;
    /// Readies a new connection (still blocking) before any request: e.g. authenticates it.
    fn handshake(&mut self, _stream: &mut std::net::TcpStream) -> io::Result<()> {
        Ok(())
    }
    /// Whether each request leaves an order that the server keeps for the rest of the plan
    /// (a reservation whose payment window outlasts it): such a plan's rows share the
    /// server's bounded orders ([`Plan::orders_max`]).
    fn holds_an_order(&self) -> bool {
        false
    }
}

/// How long a connection may take to open and, where it authenticates, to be answered.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One decoded response, borrowing the bytes it was read from.
pub struct Decoded<'a> {
    /// Bytes it occupied.
    pub used: usize,
    /// The request index, for correlated protocols.
    pub index: Option<u64>,
    /// Whether the request did what the workload wanted.
    pub ok: bool,
    /// When it did not, the code of the answer, where the protocol names one (`sold_out`,
    /// `busy`, ...).
    pub refusal: Option<&'a str>,
}

/// How one run offers load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Open loop at this many requests per second.
    Rate(u64),
    /// This many requests in flight per connection, replaced as they complete.
    Window(usize),
}

/// What one run measured.
pub struct Measured {
    /// Requests answered.
    pub answered: u64,
    /// Answers that were not successes (rejections, refusals).
    pub failed: u64,
    /// Those answers by code, where the protocol names one.
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// Requests never answered before the drain deadline ([`DRAIN_AFTER_RUN`]): in the
    /// histogram at the time they waited, a lower bound of their latency.
    pub lost: u64,
    /// First send to last answer.
    pub seconds: f64,
    /// Latency in nanoseconds (from intended send time in open loop).
    pub histogram: Histogram<u64>,
    /// How late the generator sent each request after it was due, in nanoseconds (open
    /// loop only): a generator that falls behind charges its own lag to the server.
    pub send_lag: Histogram<u64>,
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    out_start: usize,
    input: Vec<u8>,
    fifo: VecDeque<u64>,
    in_flight: usize,
}

/// Connects `connections` sockets to `addr`, each readied by `protocol`'s handshake.
fn connect_all(
    poll: &Poll,
    addr: SocketAddr,
    connections: usize,
    protocol: &mut dyn Protocol,
) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for index in 0..connections {
        let mut std_stream = std::net::TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
        protocol.handshake(&mut std_stream)?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            out: Vec::with_capacity(64 * 1024),
            out_start: 0,
            input: Vec::with_capacity(64 * 1024),
            fifo: VecDeque::new(),
            in_flight: 0,
        });
    }
    Ok(conns)
}

fn flush(conn: &mut Conn) -> io::Result<()> {
    while conn.out_start < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_start..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.out_start += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.out.clear();
    conn.out_start = 0;
    Ok(())
}

/// Requests a second a window run is given room for up front: above any rate this generator
/// reaches over loopback (7.9M/s for the binary `PING`); a faster run grows its record.
const WINDOW_RATE_MAX: f64 = 10e6;
/// The most send times a run allocates up front (512 MiB), and touches (256 MiB): a long
/// `load` run beyond them grows its record as it goes.
const SEND_RECORD_MAX: u64 = 1 << 26;
const SEND_RECORD_TOUCHED: u64 = 1 << 25;

/// How long a run waits for answers after its duration ends before it gives up on them: each
/// request given up on counts in the distribution at the time it waited, and among the
/// run's `lost`.
pub const DRAIN_AFTER_RUN: Duration = Duration::from_secs(10);

/// The requests an open-loop run at `rate` for `seconds` sends.
fn requests_at(rate: u64, seconds: f64) -> u64 {
    (rate as f64 * seconds) as u64
}

/// Drives `protocol` against `addr` for `duration` with the given load, sending at most
/// `requests_max` requests (a server whose engine holds a bounded number of orders stays
/// within it at any throughput). Request indices start at `first_index` so that successive
/// runs use fresh users and keys.
pub fn drive_up_to(
    addr: SocketAddr,
    protocol: &mut dyn Protocol,
    connections: usize,
    (load, duration, requests_max): (Load, Duration, u64),
    first_index: u64,
) -> io::Result<Measured> {
    let mut poll = Poll::new()?;
    let mut conns = connect_all(&poll, addr, connections, protocol)?;
    let mut events = Events::with_capacity(1024);
    let mut histogram = latency_histogram();
    let mut send_lag = latency_histogram();
    let (mut answered, mut failed, mut sent) = (0u64, 0u64, 0u64);
    let mut refusals = std::collections::BTreeMap::new();
    let total = match load {
        Load::Rate(rate) => requests_at(rate, duration.as_secs_f64()),
        Load::Window(_) => u64::MAX,
    }
    .min(requests_max);
    // Intended (open loop) or actual (window) send time of each request, by index offset.
    // Allocated and its first pages touched before the run, up to SEND_RECORD_MAX and
    // SEND_RECORD_TOUCHED, so that the generator does not stop mid-run to grow it (past 16M
    // entries that copied 128 MiB and more: tens of milliseconds charged to every request in
    // flight) nor, within those bounds, to fault its pages in.
    let expected = match load {
        Load::Rate(_) => total,
        Load::Window(_) => total.min((duration.as_secs_f64() * WINDOW_RATE_MAX) as u64),
    };
    let mut send_ns: Vec<u64> = Vec::with_capacity(expected.min(SEND_RECORD_MAX) as usize);
    let touched = send_ns.spare_capacity_mut().iter_mut().take(SEND_RECORD_TOUCHED as usize);
    for page in touched.step_by(4096 / 8) {
        page.write(0);
    }
    let t0 = Instant::now() + Duration::from_millis(5);
    // Nothing is sent before t0: a request sent earlier would be timed from t0 (its answer as
    // taking no time at all) and counted in a throughput that starts at t0.
    std::thread::sleep(t0.saturating_duration_since(Instant::now()));
    let stop_sending = t0 + duration;
    let drain_deadline = stop_sending + DRAIN_AFTER_RUN;
    let mut last_answer = t0;
    let correlated = protocol.correlated();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let sending = sent < total
            && match load {
                // Open loop: every request falls due by `stop_sending`, and each is sent, late if
                // the generator was held up (its lateness is counted in its latency). Stopping
                // at `stop_sending` instead would drop them: a generator descheduled past a
                // short run's end sent nothing at all.
                Load::Rate(_) => true,
                // A window runs for the duration, and for one window however late it starts.
                Load::Window(_) => now < stop_sending || sent == 0,
            };
        if sending {
            let due = match load {
                Load::Rate(rate) => {
                    let elapsed = now.saturating_duration_since(t0).as_secs_f64();
                    ((elapsed * rate as f64) as u64 + 1).min(total)
                }
                Load::Window(_) => total,
            };
            let mut next_conn = (sent % connections as u64) as usize;
            while sent < due {
                if let Load::Window(window) = load {
                    let Some(free) = (0..connections)
                        .map(|offset| (next_conn + offset) % connections)
                        .find(|&c| conns[c].in_flight < window)
                    else {
                        break;
                    };
                    next_conn = free;
                }
                let conn = &mut conns[next_conn];
                let index = first_index + sent;
                protocol.encode(&mut conn.out, index);
                if !correlated {
                    conn.fifo.push_back(index);
                }
                conn.in_flight += 1;
                let at = match load {
                    Load::Rate(rate) => {
                        let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
                        let lag = now.saturating_duration_since(due).as_nanos() as u64;
                        send_lag.saturating_record(lag.max(1));
                        due
                    }
                    Load::Window(_) => now,
                };
                send_ns.push(at.saturating_duration_since(t0).as_nanos() as u64);
                sent += 1;
                next_conn = (next_conn + 1) % connections;
            }
            for conn in &mut conns {
                flush(conn)?;
            }
        }
        let outstanding: usize = conns.iter().map(|c| c.in_flight).sum();
        if !sending && outstanding == 0 {
            break;
        }
        if now >= drain_deadline {
            break;
        }
        // epoll waits in whole milliseconds, which would send open-loop requests up to a
        // millisecond late; waiting on the epoll descriptor with `ppoll` paces them to the
        // microsecond instead, and still wakes at once when an answer arrives (a plain sleep
        // would see it only at the next send, charging up to a send interval to its latency).
        let timeout = match load {
            Load::Rate(rate) if sending => {
                let next_due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
                let wait = next_due.saturating_duration_since(now);
                if wait < Duration::from_millis(1) {
                    wait_for_events(&poll, wait)?;
                    Duration::ZERO
                } else {
                    Duration::from_millis(1)
                }
            }
            _ => Duration::from_millis(1),
        };
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if event.is_writable() {
                flush(conn)?;
            }
            if !event.is_readable() {
                continue;
            }
            // A short read found the socket empty; later bytes raise a new edge-triggered
            // event. After a hang-up only reading on can see the end of the stream.
            let read_to_block = event.is_read_closed() || event.is_error();
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => return Err(io::Error::other("server closed a benchmark connection")),
                    Ok(n) => {
                        conn.input.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() && !read_to_block {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let now = Instant::now();
            let now_ns = now.saturating_duration_since(t0).as_nanos() as u64;
            let mut at = 0;
            while let Some(decoded) =
                protocol.decode(&conn.input[at..]).map_err(io::Error::other)?
            {
                at += decoded.used;
                let index = match decoded.index {
                    Some(index) => index,
                    None => conn
                        .fifo
                        .pop_front()
                        .ok_or_else(|| io::Error::other("unrequested answer"))?,
                };
                conn.in_flight = conn.in_flight.checked_sub(1).ok_or_else(|| {
                    io::Error::other(format!("answer {index} on a connection with none in flight"))
                })?;
                answered += 1;
                if !decoded.ok {
                    failed += 1;
                }
                if let Some(code) = decoded.refusal {
                    match refusals.get_mut(code) {
                        Some(count) => *count += 1,
                        None => drop(refusals.insert(code.to_owned(), 1)),
                    }
                }
                let offset = index.checked_sub(first_index).map(|o| o as usize);
                let slot = offset
                    .and_then(|o| send_ns.get_mut(o))
                    .ok_or_else(|| io::Error::other("answer for a request never sent"))?;
                let intended = std::mem::replace(slot, SETTLED);
                if intended == SETTLED {
                    return Err(io::Error::other(format!("a second answer for request {index}")));
                }
                histogram.saturating_record(now_ns.saturating_sub(intended).max(1));
                last_answer = now;
            }
            conn.input.drain(..at);
        }
    }
    let lost = sent - answered;
    // Given up on: each in the distribution at the time it waited.
    let gave_up_ns = Instant::now().saturating_duration_since(t0).as_nanos() as u64;
    assert_eq!(record_unanswered(&mut histogram, &send_ns, gave_up_ns), lost);
    let seconds = last_answer.saturating_duration_since(t0).as_secs_f64().max(1e-9);
    hang_up(&poll, conns);
    Ok(Measured { answered, failed, refusals, lost, seconds, histogram, send_lag })
}

/// Hangs up a run's connections and waits, up to [`SETUP_TIMEOUT`], until the node has closed
/// its side of each. A connection the node has not yet closed still counts against its
/// per-address limit: a run, or a read of the SKU, that follows at once would be refused.
fn hang_up(poll: &Poll, conns: Vec<Conn>) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut streams = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let _ = poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        streams.push(std::net::TcpStream::from(conn.stream));
    }
    let mut sink = [0u8; 16 * 1024];
    for mut stream in streams {
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        // Answers to requests given up on may still arrive: they are read and dropped.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let read = stream.set_read_timeout(Some(left)).and_then(|()| stream.read(&mut sink));
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// Waits until `poll` has events ready or `timeout` passes, to the microsecond (the epoll
/// descriptor is readable while its ready list is not empty).
fn wait_for_events(poll: &Poll, timeout: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut descriptor = libc::pollfd { fd: poll.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `descriptor` and `timeout` are valid for the duration of the call, the count is
    // one, and a null signal mask leaves the thread's mask unchanged.
    let status = unsafe { libc::ppoll(&mut descriptor, 1, &timeout, std::ptr::null()) };
    if status < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

/// What the reservations reserve and for whom: one unit of `sku` each, request `index` for
/// user `first_user + index`.
#[derive(Clone, Debug)]
pub struct Target {
    /// The SKU every request reserves from.
    pub sku: u64,
    /// The user of request 0.
    pub first_user: u64,
    /// A token each connection presents first (binary `AUTH`, or an HTTP `Authorization`
    /// header on every request).
    pub token: Option<String>,
}

impl Target {
    /// The benchmarks' own server: [`HOT_SKU`], users from 1, no token.
    #[must_use]
    pub fn hot() -> Target {
        Target { sku: HOT_SKU, first_user: 1, token: None }
    }
}

/// The binary protocol: reservations of one unit each, correlation id = request index.
pub struct BinaryReserve {
    /// Distinguishes this process's keys from earlier runs against the same engine.
    pub nonce: u64,
    /// The SKU, the users and the token.
    pub target: Target,
}

impl BinaryReserve {
    /// Reservations of [`Target::hot`] keyed by `nonce`.
    #[must_use]
    pub fn hot(nonce: u64) -> BinaryReserve {
        BinaryReserve { nonce, target: Target::hot() }
    }
}

/// A reservation command for request `index` of [`Target::hot`]: user `index + 1`, key from
/// nonce and index.
#[must_use]
pub fn reserve_command(nonce: u64, index: u64) -> Command {
    reserve_of(&Target::hot(), nonce, index)
}

/// A reservation command for request `index` of `target`, its key from nonce and index.
#[must_use]
pub fn reserve_of(target: &Target, nonce: u64, index: u64) -> Command {
    Command::Client {
        key: RequestKey::from_u128(u128::from(nonce) << 64 | u128::from(index)),
        action: Action::Reserve(Reserve {
            user: UserId(target.first_user.wrapping_add(index)),
            sku: SkuId(target.sku),
            qty: 1,
            coupon: None,
        }),
    }
}

impl Protocol for BinaryReserve {
    fn correlated(&self) -> bool {
        true
    }

    fn holds_an_order(&self) -> bool {
        true
    }

    fn encode(&mut self, out: &mut Vec<u8>, index: u64) {
        wire::encode_command(out, index, &reserve_of(&self.target, self.nonce, index));
    }

    fn handshake(&mut self, stream: &mut std::net::TcpStream) -> io::Result<()> {
        let Some(token) = &self.target.token else { return Ok(()) };
        let mut frame = Vec::new();
        wire::encode_auth(&mut frame, 0, token.as_bytes());
        stream.write_all(&frame)?;
        // The whole answer within the bound: each read waits only for the time left.
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut input = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer to AUTH in time"));
            }
            stream.set_read_timeout(Some(left))?;
            if let Some((frame, _)) = wire::try_frame(&input).map_err(io::Error::other)? {
                return match wire::decode_response(&frame) {
                    Ok(Response::AuthOk) => Ok(()),
                    Ok(Response::Error(error)) => {
                        let (code, message) = (error.code.name(), error.message);
                        Err(io::Error::other(format!(
                            "the node refused the token: {code}: {message}"
                        )))
                    }
                    other => Err(io::Error::other(format!("answer to AUTH: {other:?}"))),
                };
            }
            match stream.read(&mut chunk)? {
                0 => return Err(io::Error::other("the node closed the connection at AUTH")),
                n => input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String> {
        let Some((frame, used)) = wire::try_frame(input).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (ok, refusal) = match wire::decode_response(&frame) {
            Ok(Response::Outcome(Outcome::Reserved { .. })) => (true, None),
            Ok(Response::Outcome(outcome)) => (false, Some(outcome.name())),
            Ok(Response::Error(error)) => (false, Some(error.code.name())),
            Ok(_) => (false, Some("unexpected_answer")),
            Err(_) => (false, Some("undecodable_answer")),
        };
        Ok(Some(Decoded { used, index: Some(frame.correlation), ok, refusal }))
    }
}

/// Binary `PING`: the network and event-loop floor, no engine involved.
pub struct BinaryPing;

impl Protocol for BinaryPing {
    fn correlated(&self) -> bool {
        true
    }

    fn encode(&mut self, out: &mut Vec<u8>, index: u64) {
        wire::encode_empty(out, Kind::Ping, index);
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String> {
        let Some((frame, used)) = wire::try_frame(input).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let ok = frame.kind == Kind::Pong;
        Ok(Some(Decoded { used, index: Some(frame.correlation), ok, refusal: None }))
    }
}

/// HTTP keep-alive, pipelined: `POST /v1/orders` per request, answered in order.
pub struct HttpReserve {
    /// Distinguishes this process's request ids from earlier runs.
    pub nonce: u64,
    /// The SKU, the users and the token.
    pub target: Target,
}

impl HttpReserve {
    /// Reservations of [`Target::hot`] keyed by `nonce`.
    #[must_use]
    pub fn hot(nonce: u64) -> HttpReserve {
        HttpReserve { nonce, target: Target::hot() }
    }
}

impl Protocol for HttpReserve {
    fn correlated(&self) -> bool {
        false
    }

    fn holds_an_order(&self) -> bool {
        true
    }

    fn encode(&mut self, out: &mut Vec<u8>, index: u64) {
        let Target { sku, first_user, token } = &self.target;
        let body = format!(
            r#"{{"request_id":"b{}-{index}","user":{},"sku":{sku},"qty":1}}"#,
            self.nonce,
            first_user.wrapping_add(index)
        );
        let _ = write!(
            out,
            "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            let _ = write!(out, "Authorization: Bearer {token}\r\n");
        }
        let _ = write!(out, "\r\n{body}");
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String> {
        let Some(answer) = http_answer(input)? else { return Ok(None) };
        let ok = answer.status == 201;
        let refusal = if ok { None } else { Some(error_code(answer.body)) };
        Ok(Some(Decoded { used: answer.len, index: None, ok, refusal }))
    }
}

/// One HTTP answer, read whole.
pub(crate) struct HttpAnswer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Bytes of the input it takes, head and body.
    pub len: usize,
}

/// The whole HTTP answer at the start of `input`, if it has arrived. ringfence always sends
/// `Content-Length`.
pub(crate) fn http_answer(input: &[u8]) -> Result<Option<HttpAnswer<'_>>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input).map_err(|e| format!("not HTTP: {e}"))? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .ok_or("an answer without Content-Length")?;
    let Some(body) = input.get(head..head.saturating_add(length)) else { return Ok(None) };
    Ok(Some(HttpAnswer { status: response.code.unwrap_or_default(), body, len: head + length }))
}

/// The `error` of an HTTP error body (`{"error":"sold_out",...}`), found without parsing the
/// JSON: the generator reads every answer on one thread.
fn error_code(body: &[u8]) -> &str {
    const KEY: &[u8] = b"\"error\":\"";
    let code = body
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| &body[at + KEY.len()..])
        .and_then(|rest| Some(&rest[..rest.iter().position(|&b| b == b'"')?]));
    code.and_then(|code| std::str::from_utf8(code).ok()).unwrap_or("no_error_code")
}

/// Commands between two snapshots of a [`BenchServer`] that takes them: `serve` takes one
/// every 1M by default; half that puts one inside a row of a few seconds, so its latencies span
/// snapshot periods as a long-running node's do.
const SNAPSHOT_EVERY: u64 = 500_000;

/// How long a bench server waits for its snapshot writer's shadow engine before measuring.
const SHADOW_WAIT_MAX: Duration = Duration::from_secs(120);

/// The orders a [`BenchServer`] holds, and as many holdings and request keys.
pub const BENCH_ORDERS_MAX: u32 = 1 << 23;

/// The reservations one plan may send to a [`BenchServer`]: its request keys, less the key of
/// the command that created the SKU.
const BENCH_REQUESTS_MAX: u64 = BENCH_ORDERS_MAX as u64 - 1;

/// An in-process ringfence server for benchmarks: journal in a temporary directory with
/// durability `none` (records written to the map, not synced) unless a row asks for another,
/// admin token "bench", the hot
/// SKU created; snapshots by `serve`'s shadow writer every [`SNAPSHOT_EVERY`] commands if
/// asked for (its replay of the journal is server CPU, which the rows that measure CPU per
/// answer leave out).
pub struct BenchServer {
    /// The running server.
    pub handle: Option<ServerHandle>,
    dir: std::path::PathBuf,
    /// How the node is set up, for the report.
    pub description: String,
    /// The snapshot writer's counters.
    snapshots: SnapshotStatsHandle,
}

impl BenchServer {
    /// Starts the server as `serve` runs on three to five cores (compact topology, egress
    /// polled by the event loop) and creates the hot SKU.
    pub fn start() -> io::Result<BenchServer> {
        BenchServer::start_as(Topology::Compact, None, Durability::None)
    }

    /// Starts the server with `topology` (`Stepped` is `serve`'s `inline`) and `durability`,
    /// taking a snapshot every so many commands with its writer at the given priority if
    /// `snapshotting` is given, and creates the hot SKU.
    pub fn start_as(
        topology: Topology,
        snapshotting: Option<(u64, WriterPriority)>,
        durability: Durability,
    ) -> io::Result<BenchServer> {
        let snapshot_every = snapshotting.map(|(every, _)| every);
        let writer = snapshotting.map_or(WriterPriority::Normal, |(_, priority)| priority);
        let dir = std::env::temp_dir().join(format!("ringfence-perf-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Sized so that a full run's reservations all stay live: no capacity refusals and no
        // mass expiry (which would stall the BLP mid-run) during the measurement.
        let engine_config = EngineConfig {
            orders_max: BENCH_ORDERS_MAX,
            holdings_max: BENCH_ORDERS_MAX,
            request_keys_max: BENCH_ORDERS_MAX,
            request_key_window_ms: 3_600_000,
            ..EngineConfig::default()
        };
        let options = WriterOptions {
            segment_len: 256 << 20,
            durability,
            engine_config: engine_config.clone(),
        };
        let mut recovered = recover(&dir, options).map_err(|e| io::Error::other(e.to_string()))?;
        // As `ringfence serve` runs its journal.
        recovered
            .writer
            .prepare_segments_ahead(DISK_CHECK_EVERY)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let policy = SnapshotPolicy { every_commands: snapshot_every, keep: 1, writer };
        let data_dir = recovered.writer.data_dir().clone();
        let snapshotter = Snapshotter::start(data_dir, policy, engine_config.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let snapshots = snapshotter.stats_handle();
        let node_config = NodeConfig {
            ring_size: 1 << 16,
            engine: engine_config,
            topology: Some(topology),
            egress: EgressDriver::Polled,
            session_pending_max: 1 << 16,
            ..NodeConfig::default()
        };
        let mut description = match topology {
            Topology::Stepped => format!(
                "node inline (serve --topology inline): processor and egress on the ingress \
                 thread, journal durability {durability}"
            ),
            _ => format!(
                "node {} topology, egress polled by the ingress thread, {} wait, BLP pinned to \
                 the last core, journal durability {durability}",
                topology.name(),
                node_config.wait.name()
            ),
        };
        if let Some(every) = snapshot_every {
            description.push_str(&format!(
                ", a snapshot every {}k commands, writer at {writer} priority",
                every / 1_000
            ));
        }
        let config = ServerConfig {
            admin_token: Some("bench".into()),
            in_flight_max: 1 << 16,
            connection_in_flight_max: 1 << 16,
            outbound_max: 64 << 20,
            ..ServerConfig::loopback()
        };
        let (hook, watch) = HashWatch::new(snapshotter, &recovered.engine);
        let node = Node::start_with(
            node_config,
            recovered.engine,
            recovered.next_sequence,
            recovered.writer,
            NoReplicator::default(),
            hook,
        )
        .map_err(io::Error::other)?;
        let handle = ringfence_ingress::start(config, move |waker| {
            NodeBackend::new(node, waker, watch, Epoch(1), "bench".into(), None)
        })?;
        let addr = handle.binary_addr().expect("binary listener");
        let mut client = ringfence_ingress::Client::connect(&[addr]).map_err(io::Error::other)?;
        client.authenticate("bench").map_err(io::Error::other)?;
        let create = Command::Client {
            key: RequestKey::from_u128(u128::MAX),
            action: Action::CreateSku(CreateSku {
                sku: SkuId(HOT_SKU),
                stock: HOT_STOCK,
                price_cents: 100,
                per_user_limit: 1,
                payment_timeout_ms: 3_600_000,
                sale_start: None,
                sale_end: None,
            }),
        };
        client.call(create).map_err(io::Error::other)?;
        // The writer builds its shadow engine when it starts: a measurement that began before
        // would charge that one-off build (an engine's tables written) to the first rows. At
        // idle priority on a machine busy with other work it may not get the CPU: the rows
        // then go on, saying so, rather than the scenario failing.
        let waited = Instant::now();
        while snapshot_every.is_some() && !snapshots.get().shadow_ready {
            if waited.elapsed() > SHADOW_WAIT_MAX {
                description.push_str(&format!(
                    " (the writer's shadow engine was still being built after {} s, on a \
                     machine busy with other work: the first rows include its build)",
                    SHADOW_WAIT_MAX.as_secs()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(BenchServer { handle: Some(handle), dir, description, snapshots })
    }

    /// The snapshot writer's counters so far.
    #[must_use]
    pub fn snapshots(&self) -> ringfence_journal::snapshot::SnapshotStats {
        self.snapshots.get()
    }

    /// The binary protocol address.
    #[must_use]
    pub fn binary_addr(&self) -> SocketAddr {
        self.handle.as_ref().and_then(ServerHandle::binary_addr).expect("binary listener")
    }

    /// The HTTP address.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.handle.as_ref().and_then(ServerHandle::http_addr).expect("HTTP listener")
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Offered rates and durations for a run.
#[derive(Clone)]
pub struct Plan {
    /// Open-loop rates, requests per second.
    pub rates: Vec<u64>,
    /// Seconds per rate.
    pub seconds: f64,
    /// Connections.
    pub connections: usize,
    /// In-flight window per connection for the `max` row.
    pub window: usize,
    /// First request index of the next run, so that every run uses fresh users and keys.
    pub next_index: u64,
    /// Also run at these fractions of the throughput the `max` row measured, right after it,
    /// in this order.
    pub of_max: Vec<f64>,
    /// Where the server driven runs, whose CPU time the rows report.
    pub server: ServerProcess,
    /// The most requests a plan may send, warm-up included, where each holds an order
    /// ([`Protocol::holds_an_order`]): every reservation stays live on its server for the
    /// whole plan, and each such plan runs on a server of its own ([`BENCH_ORDERS_MAX`]).
    pub orders_max: u64,
}

impl Plan {
    /// The plan for `--quick` or a full run, its durations scaled.
    #[must_use]
    pub fn new(size: Size) -> Plan {
        let seconds = size.seconds(1.5, 5.0);
        if size.quick {
            Plan {
                rates: vec![20_000, 50_000],
                seconds,
                connections: 16,
                window: 32,
                next_index: 0,
                of_max: Vec::new(),
                server: ServerProcess::This,
                orders_max: BENCH_REQUESTS_MAX,
            }
        } else {
            Plan {
                rates: vec![20_000, 50_000, 100_000, 200_000],
                seconds,
                connections: 32,
                window: 64,
                next_index: 0,
                of_max: Vec::new(),
                server: ServerProcess::This,
                orders_max: BENCH_REQUESTS_MAX,
            }
        }
    }
}

/// The most a warm-up runs for, and the most requests it sends: enough for the server's and
/// the generator's first passes through their paths; few enough to take little of a bounded
/// engine's tables from the rows ([`Plan::orders_max`]).
const WARM_UP: Duration = Duration::from_millis(500);
const WARM_UP_REQUESTS_MAX: u64 = 20_000;

/// A run before a plan's rows, at the plan's window, not counted: the first row measured
/// would otherwise pay for the server's first moments alone. It sends at most a twentieth of
/// `orders_left`, the orders the plan may take; returns the requests it sent.
fn warm_up(
    report: &Report,
    plan: &mut Plan,
    variant: &str,
    addr: SocketAddr,
    protocol: &mut dyn Protocol,
    orders_left: u64,
) -> io::Result<u64> {
    let requests_max = WARM_UP_REQUESTS_MAX.min(orders_left / 20);
    let bounds = (Load::Window(plan.window), WARM_UP, requests_max);
    let warm = drive_up_to(addr, protocol, plan.connections, bounds, plan.next_index)?;
    let sent = warm.answered + warm.lost;
    plan.next_index += sent + 1;
    report.note(&format!(
        "  {variant}: warm-up, not counted: {sent} requests in {:.2} s",
        warm.seconds
    ));
    Ok(sent)
}

/// How the rows of a plan whose requests each hold one of the server's orders share them
/// ([`Plan::orders_max`]): every fixed rate may send all it offers, and what is left is split
/// between the `max` row and the rows at fractions of its throughput, in proportion. A row
/// that reaches its share stops sending early.
struct OrderShare<'a> {
    plan: &'a Plan,
    /// The rates set as fractions of the `max` row's throughput, once it has run.
    fractions_of_max: &'a [(u64, f64)],
    /// What the `max` row sent, once it has run.
    max_sent: u64,
}

impl OrderShare<'_> {
    /// The most the row at `load` may send, with `left` orders free and the rows `later` to
    /// run after it.
    fn of(&self, left: u64, load: Load, later: &VecDeque<Load>) -> u64 {
        let kept_for_later: u64 = later.iter().map(|&load| self.wants(load)).sum();
        let free = left.saturating_sub(kept_for_later);
        match load {
            // Before the rows at fractions of it exist: their shares are kept too.
            Load::Window(_) => (free as f64 / (1.0 + self.plan.of_max.iter().sum::<f64>())) as u64,
            Load::Rate(_) => free,
        }
    }

    /// What a row after this one is kept: a fixed rate all it offers, a fraction of the `max`
    /// row that fraction of what it sent, at most.
    fn wants(&self, load: Load) -> u64 {
        let Load::Rate(rate) = load else { return 0 };
        let offered = requests_at(rate, self.plan.seconds);
        match self.fractions_of_max.iter().find(|&&(of_max, _)| of_max == rate) {
            Some(&(_, fraction)) => offered.min((fraction * self.max_sent as f64) as u64),
            None => offered,
        }
    }
}

/// Runs one protocol through the plan (a warm-up, then max, then each rate) and pushes the
/// rows.
pub fn run_plan(
    report: &mut Report,
    plan: &mut Plan,
    scenario: &str,
    variant: &str,
    addr: SocketAddr,
    protocol: &mut dyn Protocol,
    context: &[(&str, serde_json::Value)],
) {
    // What the plan may still send, where each request holds one of the server's orders.
    let mut left = protocol.holds_an_order().then_some(plan.orders_max);
    match warm_up(report, plan, variant, addr, protocol, left.unwrap_or(u64::MAX)) {
        Ok(sent) => left = left.map(|left| left.saturating_sub(sent)),
        Err(error) => {
            report.note(&format!("  {variant}: warm-up failed: {error}"));
            return;
        }
    }
    let mut loads = VecDeque::from([Load::Window(plan.window)]);
    loads.extend(plan.rates.iter().map(|&rate| Load::Rate(rate)));
    // Set once the `max` row has run: the rates that are `of_max` of its throughput.
    let mut fractions_of_max: Vec<(u64, f64)> = Vec::new();
    // What the `max` row sent, once it has run: the rows at fractions of it send as much.
    let mut max_sent = 0u64;
    while let Some(load) = loads.pop_front() {
        let duration = Duration::from_secs_f64(plan.seconds);
        let of_max = fractions_of_max.iter().find(|&&(rate, _)| Load::Rate(rate) == load);
        let label = match (load, of_max) {
            (Load::Window(_), _) => format!("{variant} max"),
            (Load::Rate(rate), Some((_, fraction))) => {
                format!("{variant} @{}k/s = {:.0}% of max", rate / 1_000, fraction * 100.0)
            }
            (Load::Rate(rate), None) => format!("{variant} @{}k/s", rate / 1_000),
        };
        let share = OrderShare { plan, fractions_of_max: &fractions_of_max, max_sent };
        let bound = left.map_or(u64::MAX, |left| share.of(left, load, &loads));
        if bound == 0 {
            report.note(&format!(
                "  {label}: not run: none of the server's {} orders is left for it, beside the \
                 rows before it and those kept for the fixed rates after it",
                plan.orders_max
            ));
            continue;
        }
        let cpu = ServerCpu::start(plan.server);
        let bounds = (load, duration, bound);
        let measured = match drive_up_to(addr, protocol, plan.connections, bounds, plan.next_index)
        {
            Ok(measured) => measured,
            Err(error) => {
                report.note(&format!("  {variant}: run failed: {error}"));
                return;
            }
        };
        let server_cpu = cpu.as_ref().and_then(ServerCpu::seconds);
        let sent = measured.answered + measured.lost;
        plan.next_index += sent + 1;
        left = left.map(|left| left.saturating_sub(sent));
        let unbounded = match load {
            Load::Rate(rate) => requests_at(rate, plan.seconds),
            Load::Window(_) => u64::MAX,
        };
        if sent >= bound && bound < unbounded {
            report.note(&format!(
                "  {label}: stopped at {bound} requests, after {:.2} s of {} s: its share of the \
                 {} orders its server holds for the whole plan (every reservation stays live)",
                measured.seconds, plan.seconds, plan.orders_max
            ));
        }
        if let Load::Window(_) = load {
            max_sent = sent;
            let throughput = measured.answered as f64 / measured.seconds;
            for &fraction in plan.of_max.iter().rev() {
                let rate = (throughput * fraction) as u64;
                if rate > 0 {
                    fractions_of_max.push((rate, fraction));
                    loads.push_front(Load::Rate(rate));
                }
            }
        }
        // Per answer and in cores; `None` where the server's CPU clock could not be read.
        let cpu_figures = server_cpu.map(|seconds| {
            (seconds * 1e6 / measured.answered.max(1) as f64, seconds / measured.seconds)
        });
        match cpu_figures {
            Some((per_answer_us, cores)) => report.note(&format!(
                "  {label}: server CPU {per_answer_us:.2} us per answer, {:.0}% of a core",
                cores * 100.0
            )),
            None => report.note(&format!("  {label}: server CPU not measured (no CPU clock)")),
        }
        let rate = match load {
            Load::Rate(rate) => Some(rate),
            Load::Window(_) => None,
        };
        note_run(report, &label, rate, &measured);
        let lag = &measured.send_lag;
        let mut row =
            Row::new(scenario, &label, measured.answered, measured.seconds, measured.histogram)
                .with("connections", plan.connections as u64)
                .with("failed", measured.failed)
                .with("lost", measured.lost);
        if let Some((per_answer_us, cores)) = cpu_figures {
            row =
                row.with("server_cpu_us_per_answer", per_answer_us).with("server_cpu_cores", cores);
        }
        row = match load {
            Load::Window(window) => {
                row.with("window_per_connection", window as u64).with("latency_from", "send")
            }
            Load::Rate(rate) => row
                .with("offered_per_sec", rate)
                .with("latency_from", "intended_send")
                .with("generator_late_p99_us", lag.value_at_quantile(0.99) as f64 / 1e3),
        };
        for (key, value) in context {
            row = row.with(key, value.clone());
        }
        report.push(row);
    }
}

/// What a reader needs beside a run's row to trust it: how late the generator sent (fixed
/// rates), and the answers that were not successes, by code.
pub(crate) fn note_run(report: &Report, label: &str, rate: Option<u64>, measured: &Measured) {
    if rate.is_some() {
        let lag = &measured.send_lag;
        report.note(&format!(
            "  {label}: the generator sent late by p50 {:.1} us, p99 {:.1} us, max {:.1} us \
             (charged to the latencies)",
            lag.value_at_quantile(0.5) as f64 / 1e3,
            lag.value_at_quantile(0.99) as f64 / 1e3,
            lag.max() as f64 / 1e3
        ));
    }
    if measured.failed > 0 || measured.lost > 0 {
        let codes: Vec<String> =
            measured.refusals.iter().map(|(code, n)| format!("{code} {n}")).collect();
        report.note(&format!(
            "  {label}: {} answers were not successes ({}), {} requests unanswered {} s \
             after the run; both are in the latencies, the unanswered at the time they waited",
            measured.failed,
            if codes.is_empty() { "no code".to_owned() } else { codes.join(", ") },
            measured.lost,
            DRAIN_AFTER_RUN.as_secs()
        ));
    }
}

/// Where the server a plan drives runs, for its CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerProcess {
    /// In this process, beside the load generator's thread.
    #[default]
    This,
    /// Another process (a peer such as `redis-server`), by its id.
    Other(u32),
}

/// The CPU time the server's threads use. In this process: the process's, less the calling
/// thread's (the load generator runs on the thread that calls [`drive_up_to`]; the server's threads
/// are the process's only others). In another: that process's.
struct ServerCpu {
    server: libc::clockid_t,
    /// The generator's thread clock at the start, where it shares the server's process.
    generator: Option<f64>,
    start: f64,
}

impl ServerCpu {
    /// `None` where the server's CPU clock cannot be read (a process that has ended).
    fn start(server: ServerProcess) -> Option<ServerCpu> {
        match server {
            ServerProcess::This => Some(ServerCpu {
                server: libc::CLOCK_PROCESS_CPUTIME_ID,
                generator: Some(cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID)),
                start: cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID),
            }),
            ServerProcess::Other(pid) => {
                let pid = libc::pid_t::try_from(pid).ok()?;
                let mut clock: libc::clockid_t = 0;
                // SAFETY: `clock` is a valid, writable clockid_t; the call only writes it.
                if unsafe { libc::clock_getcpuclockid(pid, &raw mut clock) } != 0 {
                    return None;
                }
                let start = try_cpu_seconds(clock)?;
                Some(ServerCpu { server: clock, generator: None, start })
            }
        }
    }

    /// Seconds of CPU the server used since [`ServerCpu::start`].
    fn seconds(&self) -> Option<f64> {
        let server = try_cpu_seconds(self.server)? - self.start;
        let generator =
            self.generator.map_or(0.0, |start| cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - start);
        Some((server - generator).max(0.0))
    }
}

/// The share of a core this process uses while the calling thread sleeps for `seconds`: what
/// its other threads cost with nothing to do, when nothing is offered to them.
pub(crate) fn idle_share_over(seconds: f64) -> f64 {
    let cpu = cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID);
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let used = cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu;
    used / start.elapsed().as_secs_f64()
}

/// The CPU time `clock` (this process's or this thread's CPU clock) has counted, in seconds.
fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    try_cpu_seconds(clock).expect("this process's CPU-time clocks are always available on Linux")
}

/// The CPU time `clock` has counted, in seconds; `None` for another process's clock once that
/// process has ended.
fn try_cpu_seconds(clock: libc::clockid_t) -> Option<f64> {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid, writable timespec; the call only writes it.
    let status = unsafe { libc::clock_gettime(clock, &mut time) };
    (status == 0).then_some(time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9)
}

/// `ringfence-perf -- tcp`: the binary protocol against an in-process server.
pub fn run_tcp(common: Common) {
    let mut report = Report::new(common.json);
    if let Err(error) = bench_tcp(&mut report, &mut Plan::new(Size::of(common))) {
        eprintln!("ringfence-perf tcp: cannot start the server: {error}");
    }
}

/// Measures the PING baseline and the reservation over the binary protocol into `report`;
/// fails only when the server cannot start.
pub fn bench_tcp(report: &mut Report, plan: &mut Plan) -> io::Result<()> {
    let server = BenchServer::start()?;
    report.note(&format!(
        "tcp: loopback, {} connections, one load-generator thread (mio); server: {}",
        plan.connections, server.description
    ));
    let context = [("server", serde_json::Value::from(server.description.clone()))];
    run_plan(
        report,
        plan,
        "loopback_ping",
        "binary_ping_baseline",
        server.binary_addr(),
        &mut BinaryPing,
        &context,
    );
    let mut protocol = BinaryReserve::hot(nonce());
    run_plan(
        report,
        plan,
        "hot_sku_reserve",
        "ringfence_tcp",
        server.binary_addr(),
        &mut protocol,
        &context,
    );
    drop(server);
    // The same reservations with the processor on the event loop's thread.
    let server = BenchServer::start_as(Topology::Stepped, None, Durability::None)?;
    report.note(&format!("tcp (ringfence_tcp_inline): server: {}", server.description));
    let context = [("server", serde_json::Value::from(server.description.clone()))];
    let mut protocol = BinaryReserve::hot(nonce());
    let addr = server.binary_addr();
    let variant = "ringfence_tcp_inline";
    run_plan(report, plan, "hot_sku_reserve", variant, addr, &mut protocol, &context);
    report.ratio("hot_sku_reserve", "ringfence_tcp_inline max", "ringfence_tcp max");
    Ok(())
}

/// `ringfence-perf -- http`: the HTTP API against an in-process server.
pub fn run_http(common: Common) {
    let mut report = Report::new(common.json);
    if let Err(error) = bench_http(&mut report, &mut Plan::new(Size::of(common))) {
        eprintln!("ringfence-perf http: cannot start the server: {error}");
    }
}

/// Measures the reservation over the HTTP API into `report`; fails only when the server
/// cannot start.
pub fn bench_http(report: &mut Report, plan: &mut Plan) -> io::Result<()> {
    // The same load against both small-machine layouts, one server at a time: the processor
    // on a thread of its own (`ringfence_http`, compact: serve's default from three to five
    // cores) and on the event loop (`_inline`, serve's default on two cores or fewer); then
    // `inline` taking snapshots, at its maximum and at 80% of it (`_snapshots`): the load a
    // node is sized for is below its maximum, and its tail there, across snapshot periods, is
    // the one a sale sees. Both layouts run at 80% of their maximum without snapshots too,
    // for the comparison, and `inline` at 50% and 65% as well: where its tail is flat. The
    // snapshot writer runs at `serve`'s default priority (idle) and, for the comparison, at
    // normal priority (`_snapshots_normal`). Every row journals with durability `none`, but
    // `_inline_batch`: `inline` with `serve`'s default, `batch` (a sync per batch).
    let snapshots_plan = Plan { rates: Vec::new(), of_max: vec![0.8], ..plan.clone() };
    let compact_plan = Plan { of_max: vec![0.8], ..plan.clone() };
    let inline_plan = Plan { of_max: vec![0.5, 0.65, 0.8], ..plan.clone() };
    // First, the machine's own floor at the fixed rates: no server, only a thread woken.
    report.note(
        "http (machine_wakeup): no server; a thread blocked on a futex, woken at each fixed \
         rate; latency from the wake-up to it running: the least any answer over loopback \
         pays, once per wake-up in its path",
    );
    for &rate in &plan.rates {
        report.push(floor::wakeup_row("hot_sku_reserve", "machine_wakeup", rate, plan.seconds));
    }
    let none = Durability::None;
    let runs = [
        (Topology::Compact, None, none, "ringfence_http", compact_plan),
        (Topology::Stepped, None, none, "ringfence_http_inline", inline_plan),
        (Topology::Stepped, None, Durability::Batch, "ringfence_http_inline_batch", plan.clone()),
        (
            Topology::Stepped,
            Some((SNAPSHOT_EVERY, WriterPriority::Idle)),
            none,
            "ringfence_http_snapshots",
            snapshots_plan.clone(),
        ),
        (
            Topology::Stepped,
            Some((SNAPSHOT_EVERY, WriterPriority::Normal)),
            none,
            "ringfence_http_snapshots_normal",
            snapshots_plan,
        ),
    ];
    for (topology, snapshots, durability, variant, mut run) in runs {
        run.next_index = plan.next_index;
        let server = BenchServer::start_as(topology, snapshots, durability)?;
        report.note(&format!(
            "http ({variant}): loopback keep-alive, pipelined, {} connections, one \
             load-generator thread (mio); server: {}",
            run.connections, server.description
        ));
        // What the server costs before any client comes: its event loop, node, snapshot
        // writer and journal helper, waiting.
        let idle_seconds = plan.seconds.min(2.0);
        let idle = idle_share_over(idle_seconds);
        report.note(&format!(
            "  {variant}: idle, no client yet: {:.2}% of a core over {idle_seconds:.1} s \
             (process CPU time; goal < 1%)",
            idle * 100.0
        ));
        let context = [("server", serde_json::Value::from(server.description.clone()))];
        let mut protocol = HttpReserve::hot(nonce());
        let addr = server.http_addr();
        run_plan(report, &mut run, "hot_sku_reserve", variant, addr, &mut protocol, &context);
        plan.next_index = run.next_index;
        if snapshots.is_some() {
            let stats = server.snapshots();
            report.note(&format!(
                "  {variant}: {} snapshots handed to the writer, {} written, {} failed; the \
                 shadow engine applied {} journal records; the last snapshot took the writer \
                 {:.0} ms; longest hand-off on the BLP {:.1} us",
                stats.pauses,
                stats.written,
                stats.failed,
                stats.shadow_records,
                stats.writer_ns_last as f64 / 1e6,
                stats.pause_ns_max as f64 / 1e3
            ));
        }
    }
    report.ratio("hot_sku_reserve", "ringfence_http_inline max", "ringfence_http max");
    // `serve`'s default durability against the rows' `none`: every batch synced before its
    // answers leave.
    report.ratio("hot_sku_reserve", "ringfence_http_inline_batch max", "ringfence_http_inline max");
    Ok(())
}

/// A per-process number that keeps request keys of different runs apart.
#[must_use]
pub fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_process_is_charged_its_own_cpu_time_not_the_generators_process() {
        // A peer that spins until killed, another that sleeps: each row must read the CPU of
        // the process that served it (this process's clock would read about zero for both).
        let mut busy =
            std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let mut idle = std::process::Command::new("sleep").arg("2").spawn().unwrap();
        let busy_cpu = ServerCpu::start(ServerProcess::Other(busy.id())).unwrap();
        let idle_cpu = ServerCpu::start(ServerProcess::Other(idle.id())).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let (spun, slept) = (busy_cpu.seconds().unwrap(), idle_cpu.seconds().unwrap());
        // Liveness bounds, not timings: a spinning shell gets some CPU, a sleep next to none.
        assert!(spun > 0.05, "the spinning peer was charged {spun} s");
        assert!(slept < 0.05, "the sleeping peer was charged {slept} s");
        for peer in [&mut busy, &mut idle] {
            peer.kill().unwrap();
            peer.wait().unwrap();
        }
        // A peer that has ended has no clock left to read.
        assert!(
            busy_cpu.seconds().is_none()
                && ServerCpu::start(ServerProcess::Other(busy.id())).is_none()
        );
    }

    #[test]
    fn a_plan_of_reservations_sends_no_more_than_its_server_holds() {
        // Goal: where every reservation stays live for the whole plan, the rows share the
        // server's orders: the `max` row, the rows at fractions of it and the fixed rates all
        // run, and together they send at most what the plan may (here far less than the
        // server could take, so a row that overran would be answered, not refused, and seen).
        let server = BenchServer::start().unwrap();
        let mut plan = Plan {
            rates: vec![1_000],
            seconds: 0.5,
            connections: 4,
            window: 16,
            next_index: 0,
            of_max: vec![0.5, 0.8],
            server: ServerProcess::This,
            orders_max: 3_000,
        };
        let mut report = Report::kept();
        let mut protocol = BinaryReserve::hot(nonce());
        let addr = server.binary_addr();
        run_plan(&mut report, &mut plan, "hot_sku_reserve", "bounded", addr, &mut protocol, &[]);
        let (rows, notes, _) = report.into_parts();
        let labels: Vec<&str> = rows.iter().map(|row| row.variant.as_str()).collect();
        assert_eq!(labels.len(), 4, "max, 50% and 80% of it, 1k/s: {labels:?} {notes:#?}");
        let warm_up = notes
            .iter()
            .find_map(|note| note.strip_prefix("  bounded: warm-up, not counted: "))
            .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .expect("the warm-up's note");
        let sent: u64 = rows
            .iter()
            .map(|row| row.ops + row.context["lost"].as_u64().expect("lost is counted"))
            .sum();
        assert!(warm_up + sent <= 3_000, "{warm_up} + {sent} requests sent: {notes:#?}");
        assert!(rows.iter().all(|row| row.context["failed"] == 0), "{notes:#?}");
        // The `max` row reached its share well within its half second on any machine that
        // answers 10,000 reservations a second, and said so.
        let max = &rows[0];
        assert_eq!(max.variant, "bounded max");
        assert!(notes.iter().any(|note| note.starts_with("  bounded max: stopped at ")));
        // The fixed rate kept all it offers.
        let fixed = rows.iter().find(|row| row.variant == "bounded @1k/s").expect("1k/s row");
        assert_eq!(fixed.ops, 500, "{notes:#?}");
    }

    #[test]
    fn an_http_refusal_is_counted_by_the_code_its_body_names() {
        // Goal: the generator reads a refusal's code from ringfence's error body without a
        // JSON parser, and says when there is none rather than inventing one.
        let mut http = HttpReserve::hot(1);
        let body = r#"{"error":"sold_out","message":"SKU 1 has no units left"}"#;
        let answer = format!(
            "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let decoded = http.decode(answer.as_bytes()).unwrap().expect("a whole answer");
        assert_eq!(
            (decoded.ok, decoded.refusal, decoded.used),
            (false, Some("sold_out"), answer.len())
        );
        assert_eq!(error_code(b"{\"message\":\"no code\"}"), "no_error_code");
        assert_eq!(error_code(b"{\"error\":\"cut"), "no_error_code");
        let created = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
        let decoded = http.decode(created.as_bytes()).unwrap().expect("a whole answer");
        assert_eq!((decoded.ok, decoded.refusal), (true, None));
    }
}
