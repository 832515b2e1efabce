//! One client connection: its buffers, its place in admission control, its timers.
//!
//! HTTP responses must leave in request order, but commands complete asynchronously, so each
//! HTTP connection keeps a queue of response slots: a slot is filled when its outcome arrives
//! and the filled prefix of the queue is moved to the output buffer. Binary responses carry
//! correlation ids and go out as soon as they are ready, but for a fatal error frame: it is
//! the connection's last, held until every command read before the frame it refuses is
//! answered ([`Conn::release_held_fatal`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use ringfence_core::Outcome;

use super::ServerConfig;
use super::refusal::{self, Stage};
use crate::admission::{AddressSlot, TokenBucket};
use crate::backend::Refusal;
use crate::http::api::render_outcome;
use crate::http::listing::{Page, PageAnswer};
use crate::http::{self, Response};
use crate::metrics::Protocol;
use crate::wire::{self, ErrorCode, ErrorFrame};

/// Bytes asked of the socket per read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Output buffer capacity kept once everything is written: what a burst grew beyond it is
/// returned, so an idle connection never holds more than this for output.
pub(super) const OUT_RETAIN: usize = 16 * 1024;

/// Bytes a closing connection discards per readable event at most: a client that keeps
/// sending after the server closed its side is reset instead.
pub(super) const LINGER_DISCARD_MAX: usize = 256 * 1024;

/// Where a command's outcome goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Reply {
    /// A binary `OUTCOME` frame with this correlation id.
    Binary { correlation: u64 },
    /// The HTTP response slot `seq`.
    Http { seq: u64, keep_alive: bool },
    /// Part `part` of the catalogue page that answers HTTP response slot `seq`.
    HttpPage { seq: u64, part: u16, keep_alive: bool },
}

/// A command submitted to the backend and not yet answered.
#[derive(Debug)]
pub(super) struct Flight {
    /// Slot of the connection that sent it.
    pub conn: usize,
    /// That connection's id, so a reused slot never receives an old answer.
    pub conn_id: u64,
    /// Its source address, whose in-flight budget the command holds until it is answered.
    pub address: AddressSlot,
    pub reply: Reply,
    pub submitted: Instant,
}

/// A fatal error frame held back behind answers still owed, and since when.
#[derive(Debug)]
struct HeldFatal {
    correlation: u64,
    frame: ErrorFrame,
    since: Instant,
}

/// What one read from the socket gave.
pub(super) enum ReadResult {
    /// Bytes arrived; `drained` when they did not fill the space offered, so the socket had
    /// nothing more at that moment.
    Data {
        drained: bool,
    },
    WouldBlock,
    Closed,
    Error,
}

pub(super) struct Conn {
    pub id: u64,
    stream: TcpStream,
    pub protocol: Protocol,
    /// The client's address: whose budget its failed authentications spend.
    pub peer: IpAddr,
    /// Its place in the per-address budgets (in-flight, rate), held while the connection is
    /// open.
    pub address: AddressSlot,
    /// Receive buffer: bytes `input_start..input_end` are read and not yet consumed. Its
    /// length is its allocated, initialised size, so reads need no zeroing; it grows only
    /// while a request larger than one chunk arrives, bounded by the size limits.
    pub input: Vec<u8>,
    pub input_start: usize,
    pub input_end: usize,
    out: Vec<u8>,
    out_start: usize,
    /// Binary connections: the admin token was presented.
    pub authed: bool,
    pub in_flight: usize,
    /// Reading stopped at the per-connection or per-address in-flight limit, or for output the
    /// client has not read; resumes on completions and writes.
    pub read_paused: bool,
    /// In the server's queue of connections waiting for their address's in-flight budget.
    pub waits_for_address: bool,
    /// In the server's list of connections that used up their turn with requests left.
    pub yielded: bool,
    /// The turn of the event loop `turn_left` counts for.
    pub turn: u64,
    /// Requests this connection may still be served in that turn.
    pub turn_left: u32,
    /// The peer closed its sending side.
    pub read_closed: bool,
    /// No more requests are read (HTTP `Connection: close` or a framing error, a binary fatal
    /// error held); the connection closes once everything read is answered.
    pub stop_reading: bool,
    /// A fatal error frame or response was queued: close once it is written.
    pub closing: bool,
    /// A binary fatal error frame waiting for the answers to the commands read before the
    /// frame it refuses: queued, and `closing` set, when the last comes in.
    held_fatal: Option<HeldFatal>,
    /// The socket failed: close now.
    pub dead: bool,
    pub bucket: TokenBucket,
    last_activity: Instant,
    /// When the incomplete request at the end of `input` started arriving.
    partial_since: Option<Instant>,
    /// When output last made progress (or became pending).
    last_write: Instant,
    http_queue: VecDeque<Option<Vec<u8>>>,
    /// Response slots of `HEAD` requests still pending: answered without their bodies.
    head_slots: Vec<u64>,
    /// Bytes of the ready responses in `http_queue`, waiting behind one still pending.
    queued_bytes: usize,
    /// `held_bytes` as last added to the server's outbound total.
    pub counted_bytes: usize,
    http_base: u64,
    /// HTTP: `100 Continue` was queued for the request at the front of `input`.
    pub continue_sent: bool,
    /// Catalogue pages being assembled, by response slot (a few at most: each holds up to
    /// `PAGE_LIMIT_MAX` of the connection's in-flight commands).
    pages: Vec<(u64, Page)>,
    /// Since when the connection is closing gracefully: everything it is owed was handed to
    /// the kernel, its sending side is shut, and what the client still sends is discarded
    /// until it closes its side ([`Conn::begin_linger`]).
    lingering_since: Option<Instant>,
}

impl Conn {
    pub fn new(
        id: u64,
        stream: TcpStream,
        protocol: Protocol,
        peer: IpAddr,
        address: AddressSlot,
        config: &ServerConfig,
        now: Instant,
    ) -> Conn {
        Conn {
            id,
            stream,
            protocol,
            peer,
            address,
            input: vec![0; READ_CHUNK],
            input_start: 0,
            input_end: 0,
            out: Vec::new(),
            out_start: 0,
            authed: false,
            in_flight: 0,
            read_paused: false,
            waits_for_address: false,
            yielded: false,
            turn: 0,
            turn_left: 0,
            read_closed: false,
            stop_reading: false,
            closing: false,
            held_fatal: None,
            dead: false,
            bucket: TokenBucket::new(config.rate_per_sec, config.rate_burst, now),
            last_activity: now,
            partial_since: None,
            last_write: now,
            http_queue: VecDeque::new(),
            head_slots: Vec::new(),
            queued_bytes: 0,
            counted_bytes: 0,
            http_base: 0,
            continue_sent: false,
            pages: Vec::new(),
            lingering_since: None,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes waiting to be written.
    pub fn out_pending(&self) -> usize {
        self.out.len() - self.out_start
    }

    /// Output bytes this connection holds: written to the output buffer and not yet sent, plus
    /// ready HTTP responses queued behind one still pending. What the global outbound budget
    /// counts.
    pub fn held_bytes(&self) -> usize {
        self.out_pending() + self.queued_bytes
    }

    /// Whether the connection may be closed to admit a new client at its listener's limit: it is
    /// owed nothing (nothing in flight, held for output or queued) and no request it sent waits
    /// to be served (reading is not paused, its turn not used up). It may hold part of a
    /// request: closing it then loses the client nothing the server acknowledged, and a client
    /// that sends part of a request and falls silent would otherwise keep its slot from new
    /// clients until `request_timeout_ms`, and take it back at once by reconnecting.
    pub fn may_give_way(&self) -> bool {
        self.in_flight == 0
            && self.held_bytes() == 0
            && self.http_queue.is_empty()
            && !self.read_paused
            && !self.waits_for_address
            && !self.yielded
            && !self.closing
    }

    /// When the client last sent bytes or took output.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Whether the connection should be closed now.
    pub fn is_finished(&self) -> bool {
        if self.dead || (self.closing && self.out_pending() == 0) {
            return true;
        }
        let no_more_input = self.read_closed || self.stop_reading;
        no_more_input
            && self.in_flight == 0
            && self.http_queue.is_empty()
            && self.out_pending() == 0
            && !self.read_paused
            && !self.yielded
    }

    /// Closes gracefully a connection that is finished ([`Conn::is_finished`]) with its peer
    /// still sending: shuts its sending side, so the client sees the end of the stream after
    /// every answer, and discards its input. Closing a socket with unread input instead makes
    /// the kernel reset the connection, and a reset discards what the client has not yet
    /// received. `false` when the connection may close at once: it failed, the peer closed
    /// its side (nothing more can arrive), or it already did during this call.
    pub fn begin_linger(&mut self, now: Instant) -> bool {
        assert!(self.is_finished() && self.lingering_since.is_none(), "a finished connection");
        if self.dead || self.read_closed {
            return false;
        }
        assert_eq!(self.in_flight, 0, "a fatal error frame waits for the answers owed");
        assert_eq!(self.out_pending(), 0, "everything owed was handed to the kernel");
        if self.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return false;
        }
        self.lingering_since = Some(now);
        !self.discard_input()
    }

    /// Since when the connection lingers, if it does.
    pub fn lingering_since(&self) -> Option<Instant> {
        self.lingering_since
    }

    /// Reads and drops what a lingering connection's client sends; `true` once the
    /// connection may close: the client closed its side, the socket failed, or the client
    /// sent more than [`LINGER_DISCARD_MAX`] at once.
    pub fn discard_input(&mut self) -> bool {
        assert!(self.lingering_since.is_some(), "only a closing connection discards input");
        self.input_start = 0;
        self.input_end = 0;
        let mut discarded = 0;
        while discarded <= LINGER_DISCARD_MAX {
            match self.stream.read(&mut self.input) {
                Ok(0) => return true,
                Ok(n) => discarded += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        true
    }

    /// Whether requests may still come from this connection, read or not: what a connection
    /// that used up its turn comes back for.
    pub fn has_requests_left(&self) -> bool {
        let serving = !(self.dead || self.closing || self.stop_reading || self.read_paused);
        serving && (!self.read_closed || self.input_start < self.input_end)
    }

    pub fn can_read(&self) -> bool {
        !(self.dead || self.closing || self.read_closed || self.stop_reading || self.read_paused)
    }

    /// Reads one chunk from the socket into `input`.
    pub fn read_chunk(&mut self, now: Instant) -> ReadResult {
        self.make_room();
        let offered = self.input.len() - self.input_end;
        loop {
            match self.stream.read(&mut self.input[self.input_end..]) {
                Ok(0) => return ReadResult::Closed,
                Ok(n) => {
                    self.input_end += n;
                    self.last_activity = now;
                    return ReadResult::Data { drained: n < offered };
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return ReadResult::WouldBlock;
                }
                Err(_) => return ReadResult::Error,
            }
        }
    }

    /// Ensures at least half a chunk is free after `input_end`: first by moving unconsumed
    /// bytes to the front, then by growing the buffer.
    fn make_room(&mut self) {
        if self.input_start == self.input_end {
            self.input_start = 0;
            self.input_end = 0;
        }
        if self.input.len() - self.input_end >= READ_CHUNK / 2 {
            return;
        }
        self.input.copy_within(self.input_start..self.input_end, 0);
        self.input_end -= self.input_start;
        self.input_start = 0;
        if self.input.len() - self.input_end < READ_CHUNK / 2 {
            self.input.resize(self.input.len() + READ_CHUNK, 0);
        }
    }

    /// Takes the request framed in the first `used` bytes of the input. The slow-client
    /// timeout then times the request after it, from the end of this turn: a client that
    /// keeps pipelining, its writes ending part way into its next request, is never slow.
    pub fn consume(&mut self, used: usize) {
        assert!(used > 0, "a request framed in no bytes");
        assert!(self.input_start + used <= self.input_end, "a request past the input read");
        self.input_start += used;
        self.partial_since = None;
    }

    /// Notes whether an incomplete request waits at the end of `input`, for the slow-client
    /// timeout. Input held back while reading is paused, or until the connection's next turn,
    /// is not the client's slowness, nor is input no longer read (the connection closing).
    pub fn note_partial(&mut self, now: Instant) {
        let held = self.read_paused || self.yielded || self.stop_reading || self.closing;
        let waiting = self.input_start < self.input_end && !held;
        match (waiting, self.partial_since) {
            (true, None) => self.partial_since = Some(now),
            (false, _) => self.partial_since = None,
            (true, Some(_)) => {}
        }
    }

    /// Writes as much output as the socket takes.
    pub fn flush(&mut self, now: Instant) {
        while self.out_start < self.out.len() {
            match self.stream.write(&self.out[self.out_start..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.out_start += n;
                    self.last_write = now;
                    self.last_activity = now;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.out.clear();
        self.out_start = 0;
        if self.out.capacity() > OUT_RETAIN {
            self.out.shrink_to(OUT_RETAIN);
        }
    }

    fn out_buffer(&mut self) -> &mut Vec<u8> {
        self.out_buffer_at(Instant::now())
    }

    /// The output buffer, for output queued at `now`: the slow-reader clock starts when
    /// output becomes pending.
    fn out_buffer_at(&mut self, now: Instant) -> &mut Vec<u8> {
        if self.out_pending() == 0 {
            self.last_write = now;
        }
        &mut self.out
    }

    /// Queues a binary error frame; fatal ones close the connection once written.
    pub fn send_error(
        &mut self,
        correlation: u64,
        code: ErrorCode,
        retry_after_ms: u32,
        message: String,
    ) {
        let fatal = matches!(
            code,
            ErrorCode::MalformedFrame
                | ErrorCode::UnsupportedVersion
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnknownKind
                | ErrorCode::BadBody
                | ErrorCode::AuthFailed
                | ErrorCode::Timeout
        );
        self.send_error_frame(correlation, ErrorFrame { code, fatal, retry_after_ms, message });
    }

    /// Queues a binary error frame that closes the connection once written, whatever its code
    /// (an `AUTH` is answered by `AUTH_OK` or a fatal error).
    pub fn send_fatal_error(
        &mut self,
        correlation: u64,
        code: ErrorCode,
        retry_after_ms: u32,
        message: String,
    ) {
        self.send_error_frame(
            correlation,
            ErrorFrame { code, fatal: true, retry_after_ms, message },
        );
    }

    /// Queues a binary error frame. A fatal one is the connection's last frame: with commands
    /// still in flight it is held until they are answered ([`Conn::release_held_fatal`]), and
    /// nothing more is read meanwhile; what was read past the refused frame is dropped unparsed.
    fn send_error_frame(&mut self, correlation: u64, frame: ErrorFrame) {
        if frame.fatal && self.in_flight > 0 {
            assert!(self.held_fatal.is_none(), "nothing is read after a fatal error");
            assert!(!self.closing, "nothing is in flight once the last frame is queued");
            self.input_start = self.input_end;
            self.stop_reading = true;
            self.partial_since = None;
            self.held_fatal = Some(HeldFatal { correlation, frame, since: Instant::now() });
            return;
        }
        wire::encode_error(self.out_buffer(), correlation, &frame);
        if frame.fatal {
            self.closing = true;
        }
    }

    /// Queues the fatal error frame held for answers owed, if one is: when the last of them
    /// was written, or when the connection gives up on them (they did not come within
    /// `request_timeout_ms`, or the server's drain ended). Nothing is written after it, and
    /// the connection closes once it is written. `true` when a frame was queued.
    pub fn release_held_fatal(&mut self, now: Instant) -> bool {
        let Some(held) = self.held_fatal.take() else { return false };
        assert!(held.frame.fatal, "only a fatal error frame is held");
        assert!(self.stop_reading, "nothing is read while a fatal error frame is held");
        wire::encode_error(self.out_buffer_at(now), held.correlation, &held.frame);
        self.closing = true;
        true
    }

    /// Queues a binary frame built by `encode`.
    pub fn send_frame(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(self.out_buffer());
    }

    /// Requests read and not yet fully answered: commands in flight, and for HTTP also
    /// responses queued behind an earlier one still in flight. Reading pauses at the limit, so
    /// neither can grow without bound.
    pub fn backlog(&self) -> usize {
        self.in_flight.max(self.http_queue.len())
    }

    /// The slot number the next HTTP response will take.
    pub fn next_http_seq(&self) -> u64 {
        self.http_base + self.http_queue.len() as u64
    }

    /// Reserves a slot for a response that will come with a completion; `head_only` for a
    /// `HEAD` request, whose response leaves its body out.
    pub fn push_http_pending(&mut self, head_only: bool) {
        if head_only {
            self.head_slots.push(self.next_http_seq());
        }
        self.http_queue.push_back(None);
    }

    /// Queues a response that is ready now, behind any still pending (`head_only`: for a
    /// `HEAD` request, without its body).
    pub fn push_http_ready(&mut self, response: &Response, keep_alive: bool, head_only: bool) {
        if self.http_queue.is_empty() {
            response.write_for(self.out_buffer(), keep_alive, head_only);
        } else {
            let mut bytes = Vec::with_capacity(128 + response.body.len());
            response.write_for(&mut bytes, keep_alive, head_only);
            self.queued_bytes += bytes.len();
            self.http_queue.push_back(Some(bytes));
        }
    }

    /// Tells a client waiting on `Expect: 100-continue` to send its body: once per request,
    /// behind any response still pending, since responses leave in request order.
    pub fn push_http_continue(&mut self) {
        if self.continue_sent {
            return;
        }
        self.continue_sent = true;
        if self.http_queue.is_empty() {
            self.out_buffer().extend_from_slice(http::CONTINUE);
        } else {
            self.queued_bytes += http::CONTINUE.len();
            self.http_queue.push_back(Some(http::CONTINUE.to_vec()));
        }
    }

    /// Reserves a response slot for a catalogue page whose `parts` queries are submitted.
    pub fn push_http_page(&mut self, cursor: u32, parts: u16, head_only: bool) {
        self.pages.push((self.next_http_seq(), Page::new(cursor, parts)));
        self.push_http_pending(head_only);
    }

    /// Delivers a completed command's outcome, at `now`; after the last one owed, a fatal error
    /// frame held for them.
    pub fn complete(
        &mut self,
        flight: &Flight,
        result: &Result<Outcome, Refusal>,
        config: &ServerConfig,
        now: Instant,
    ) {
        self.in_flight -= 1;
        self.deliver(flight, result, config, now);
        if self.in_flight == 0 {
            self.release_held_fatal(now);
        }
    }

    fn deliver(
        &mut self,
        flight: &Flight,
        result: &Result<Outcome, Refusal>,
        config: &ServerConfig,
        now: Instant,
    ) {
        match (flight.reply, result) {
            (Reply::Binary { correlation }, Ok(outcome)) => {
                wire::encode_outcome(self.out_buffer_at(now), correlation, outcome);
            }
            (Reply::Binary { correlation }, Err(refused)) => {
                let (code, retry_after_ms, message) =
                    refusal::error_frame(refused, Stage::Completion, config.busy_retry_ms);
                // An answer: never fatal, so never held behind the other answers.
                let frame = ErrorFrame { code, fatal: false, retry_after_ms, message };
                wire::encode_error(self.out_buffer_at(now), correlation, &frame);
            }
            (Reply::Http { seq, keep_alive }, result) => {
                let response = match result {
                    Ok(outcome) => render_outcome(outcome),
                    Err(refused) => refusal::http_response(refused, Stage::Completion),
                };
                self.fill_http_slot(seq, &response, keep_alive, now);
            }
            (Reply::HttpPage { seq, part, keep_alive }, result) => {
                let Some(at) = self.pages.iter().position(|(page_seq, _)| *page_seq == seq) else {
                    return;
                };
                if !self.pages[at].1.fill(part, result.clone()) {
                    return;
                }
                let (_, page) = self.pages.swap_remove(at);
                let response = match page.answer() {
                    PageAnswer::Page(response) => response,
                    PageAnswer::Refused(refused) => {
                        refusal::http_response(&refused, Stage::Completion)
                    }
                };
                self.fill_http_slot(seq, &response, keep_alive, now);
            }
        }
    }

    /// Fills HTTP slot `seq` with `response` and writes out the responses ready in order.
    pub fn fill_http_slot(
        &mut self,
        seq: u64,
        response: &Response,
        keep_alive: bool,
        now: Instant,
    ) {
        let Some(index) = seq.checked_sub(self.http_base) else { return };
        let Some(slot) = self.http_queue.get_mut(index as usize) else { return };
        let head_only = match self.head_slots.iter().position(|&head| head == seq) {
            Some(at) => {
                self.head_slots.swap_remove(at);
                true
            }
            None => false,
        };
        let mut bytes = Vec::with_capacity(128 + response.body.len());
        response.write_for(&mut bytes, keep_alive, head_only);
        self.queued_bytes += bytes.len();
        *slot = Some(bytes);
        while let Some(Some(_)) = self.http_queue.front() {
            let bytes = self.http_queue.pop_front().flatten().expect("front is ready");
            self.http_base += 1;
            assert!(self.queued_bytes >= bytes.len());
            self.queued_bytes -= bytes.len();
            self.out_buffer_at(now).extend_from_slice(&bytes);
        }
    }

    /// Why the connection has run out of time, if it has; `idle_timeout` is the listener's
    /// current one (shorter while it is busy).
    pub fn timed_out(
        &self,
        now: Instant,
        config: &ServerConfig,
        idle_timeout: Duration,
    ) -> Option<&'static str> {
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        if self.partial_since.is_some_and(|since| now.duration_since(since) >= request_timeout) {
            return Some("request not completed within request_timeout_ms");
        }
        if self.out_pending() > 0 && now.duration_since(self.last_write) >= request_timeout {
            return Some("client did not read its responses within request_timeout_ms");
        }
        let held_since = self.held_fatal.as_ref().map(|held| held.since);
        if held_since.is_some_and(|since| now.saturating_duration_since(since) >= request_timeout) {
            return Some("answers owed before a fatal error not given within request_timeout_ms");
        }
        // A connection whose reading paused (its address's budget is in use by its other
        // connections, say) waits for the server, not the other way round.
        let idle = self.in_flight == 0
            && self.out_pending() == 0
            && self.http_queue.is_empty()
            && !self.read_paused;
        if idle && now.duration_since(self.last_activity) >= idle_timeout {
            return Some("idle for idle_timeout_ms (idle_timeout_busy_ms while busy)");
        }
        None
    }

    /// For a connection whose half-sent request timed out while earlier requests are still owed
    /// answers: drops that request, reads nothing more, and lets the connection close once
    /// those answers are written (`is_finished`); on the binary port the `timeout` error
    /// saying `why` follows them, as every fatal error does. A response goes to the oldest HTTP
    /// request unanswered, so a 408 sent first would read as one of theirs. `false` where
    /// nothing is owed, or nothing is half-sent: the connection closes now.
    pub fn finish_before_closing(&mut self, why: &str) -> bool {
        let owed = self.in_flight > 0 || !self.http_queue.is_empty();
        let open = !(self.dead || self.closing);
        if !owed || !open || self.partial_since.is_none() {
            return false;
        }
        match self.protocol {
            Protocol::Binary => self.send_error(0, ErrorCode::Timeout, 0, why.to_owned()),
            Protocol::Http => {
                self.input_start = self.input_end;
                self.stop_reading = true;
                self.partial_since = None;
            }
        }
        assert!(!self.can_read(), "nothing more read");
        assert!(!self.is_finished(), "answers owed");
        true
    }

    /// Tells a client with a half-sent request why it is being disconnected: `why`, under the
    /// binary protocol's `timeout` error or HTTP's 408.
    pub fn write_timeout_notice(&mut self, why: &str) {
        if self.partial_since.is_none() {
            return;
        }
        match self.protocol {
            Protocol::Binary => self.send_error(0, ErrorCode::Timeout, 0, why.to_owned()),
            Protocol::Http => {
                let response = Response::error(408, "request_timeout", why);
                response.write(self.out_buffer(), false);
            }
        }
    }
}

/// Best-effort notice to a connection refused at a connection limit, then close.
pub(super) fn refuse(mut stream: TcpStream, protocol: Protocol, message: &str) {
    let mut out = Vec::new();
    match protocol {
        Protocol::Binary => {
            let frame = ErrorFrame {
                code: ErrorCode::Busy,
                fatal: true,
                retry_after_ms: 1_000,
                message: message.into(),
            };
            wire::encode_error(&mut out, 0, &frame);
        }
        Protocol::Http => {
            let response = Response::error(503, "too_many_connections", message);
            response.retry_after(1).write(&mut out, false);
        }
    }
    let _ = stream.write(&out);
}
