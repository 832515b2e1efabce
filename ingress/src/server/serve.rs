//! Turning a connection's bytes into commands: decode, admit, submit, or answer at once.
//!
//! Admission, in order: the connection's budget of requests this turn of the event loop
//! (then it waits for its next turn), its output and in-flight limits, then its address's
//! in-flight budget (reading pauses), then at submission the connection's and the address's
//! rate budgets (`rate_limited`) and the global in-flight cap (`busy`).

use std::net::IpAddr;
use std::time::Instant;

use ringfence_core::{Command, Query};
use serde_json::json;

use super::auth::{self, Authenticated};
use super::conn::{Conn, Flight, ReadResult, Reply};
use super::refusal::{self, Stage};
use super::{Server, TURN_REQUESTS_MAX};
use crate::admission::AddressLimit;
use crate::backend::{Backend, Refusal};
use crate::http::api::{Call, invalid_argument, route_as};
use crate::http::listing::PageRequest;
use crate::http::views::{NodeJson, PeerJson};
use crate::http::{self, Framed, Limits, Response};
use crate::metrics::Protocol;
use crate::roles::{self, Caller, Need, Role};
use crate::wire::{self, ErrorCode};

/// Why a command was not submitted.
enum Refused {
    /// The connection's token bucket is empty.
    RateLimited { retry_after_ms: u32 },
    /// The source address's token bucket is empty.
    AddressRateLimited { retry_after_ms: u32 },
    /// The in-flight cap or the backend refused it.
    Backend(Refusal),
}

/// A binary request with everything borrowed from the input buffer resolved.
enum Decoded {
    Command(Command),
    Auth(Authenticated),
    Node,
    Ping,
}

impl<B: Backend> Server<B> {
    /// Serves requests already buffered, then reads and serves until the socket is drained or
    /// the connection must stop reading.
    ///
    /// A read that leaves part of the buffer unfilled found the socket empty; bytes that
    /// arrive later raise a new (edge-triggered) readable event, so the loop stops there
    /// instead of paying one more `recv` to hear `WouldBlock`. With `read_to_block` it reads
    /// until `WouldBlock` regardless: after a hang-up or error was reported (the end of the
    /// stream raises no further edge), and when resuming a paused connection.
    ///
    /// At most [`TURN_REQUESTS_MAX`] requests are served per turn of the event loop; a
    /// connection that used them up with more to read is served again next turn.
    pub(super) fn read_and_serve(
        &mut self,
        conn: &mut Conn,
        index: usize,
        now: Instant,
        read_to_block: bool,
    ) {
        if conn.turn != self.turn {
            conn.turn = self.turn;
            conn.turn_left = TURN_REQUESTS_MAX;
        }
        conn.read_paused = false;
        self.serve_input(conn, index, now);
        while conn.can_read() && conn.turn_left > 0 {
            match conn.read_chunk(now) {
                ReadResult::Data { drained } => {
                    self.serve_input(conn, index, now);
                    if drained && !read_to_block {
                        break;
                    }
                }
                ReadResult::WouldBlock => break,
                ReadResult::Closed => conn.read_closed = true,
                ReadResult::Error => conn.dead = true,
            }
        }
        if conn.turn_left == 0 && !conn.yielded && conn.has_requests_left() {
            conn.yielded = true;
            self.yielded.push(index);
        }
        conn.note_partial(now);
    }

    fn serve_input(&mut self, conn: &mut Conn, index: usize, now: Instant) {
        match conn.protocol {
            Protocol::Binary => self.serve_binary(conn, index, now),
            Protocol::Http => self.serve_http(conn, index, now),
        }
    }

    /// Whether `conn` may not be served another request now: its turn is used up, or reading
    /// pauses (and is marked paused) at its own output or in-flight limit or at its address's
    /// in-flight budget.
    fn held_back(&mut self, conn: &mut Conn, index: usize, now: Instant) -> bool {
        if conn.turn_left == 0 || conn.read_paused {
            return true;
        }
        let output_full = conn.held_bytes() > self.config.outbound_max;
        if output_full || conn.backlog() >= self.config.connection_in_flight_max {
            conn.read_paused = true;
        } else if !self.addresses.has_room(conn.address) {
            self.pause_for_address(conn, index, now);
        }
        conn.read_paused
    }

    fn serve_binary(&mut self, conn: &mut Conn, index: usize, now: Instant) {
        // A fatal error stops reading: at once (`closing`) or behind answers (`stop_reading`).
        while !(conn.closing || conn.dead || conn.stop_reading || self.held_back(conn, index, now))
        {
            let (correlation, decoded) =
                match wire::try_frame(&conn.input[conn.input_start..conn.input_end]) {
                    Ok(None) => return,
                    Err(error) => (0, Err(error)),
                    Ok(Some((frame, used))) => {
                        conn.turn_left -= 1;
                        let correlation = frame.correlation;
                        let decoded = match wire::decode_request(&frame) {
                            Ok(wire::Request::Command(command)) => Ok(Decoded::Command(command)),
                            Ok(wire::Request::Auth(token)) => Ok(Decoded::Auth(self.authenticate(
                                conn.peer,
                                Some(token),
                                Protocol::Binary,
                                now,
                            ))),
                            Ok(wire::Request::Node) => Ok(Decoded::Node),
                            Ok(wire::Request::Ping) => Ok(Decoded::Ping),
                            Err(error) => Err(error),
                        };
                        conn.consume(used);
                        (correlation, decoded)
                    }
                };
            match decoded {
                Ok(request) => self.binary_request(conn, index, correlation, request, now),
                Err(error) => {
                    self.metrics.bad_request(Protocol::Binary);
                    self.log.warn(now, format_args!("binary client sent a bad frame: {error}"));
                    conn.send_error(correlation, error.code(), 0, error.to_string());
                }
            }
        }
    }

    fn binary_request(
        &mut self,
        conn: &mut Conn,
        index: usize,
        correlation: u64,
        request: Decoded,
        now: Instant,
    ) {
        self.metrics.request(Protocol::Binary);
        match request {
            Decoded::Ping => {
                conn.send_frame(|out| wire::encode_empty(out, wire::Kind::Pong, correlation))
            }
            Decoded::Node
                if self.binary_refused(conn, index, correlation, roles::call_need(&Call::Node)) => {
            }
            Decoded::Node => {
                let info = self.backend.status().info;
                conn.send_frame(|out| wire::encode_node_info(out, correlation, &info));
            }
            Decoded::Auth(Authenticated::Role(role)) => {
                conn.authed = true;
                self.auth.set_session(index, conn.id, role);
                conn.send_frame(|out| wire::encode_empty(out, wire::Kind::AuthOk, correlation));
            }
            Decoded::Auth(Authenticated::Anonymous | Authenticated::Refused) => {
                let message = "wrong token".to_owned();
                conn.send_error(correlation, ErrorCode::AuthFailed, 0, message);
            }
            Decoded::Auth(Authenticated::Limited { retry_after }) => {
                let message = "too many failed authentications from this address; the token \
                               was not checked: retry after the hint"
                    .to_owned();
                let retry_after_ms = auth::retry_after_ms(retry_after);
                conn.send_fatal_error(correlation, ErrorCode::RateLimited, retry_after_ms, message);
            }
            Decoded::Command(command)
                if self.binary_refused(conn, index, correlation, roles::command_need(&command)) => {
            }
            Decoded::Command(command) => {
                if let Some(field) = out_of_range(&command) {
                    // As on HTTP: refused before it is journaled, naming the field.
                    let message = format!("`{field}` is out of range (see docs/protocol.md)");
                    conn.send_error(correlation, ErrorCode::InvalidArgument, 0, message);
                    return;
                }
                let reply = Reply::Binary { correlation };
                if let Err(refused) = self.admit_and_submit(conn, index, command, reply, now) {
                    let (code, retry_after_ms, message) = match refused {
                        Refused::RateLimited { retry_after_ms } => {
                            (ErrorCode::RateLimited, retry_after_ms, "rate limit exceeded".into())
                        }
                        Refused::AddressRateLimited { retry_after_ms } => {
                            (ErrorCode::RateLimited, retry_after_ms, ADDRESS_RATE_MESSAGE.into())
                        }
                        Refused::Backend(refusal) => {
                            refusal::error_frame(&refusal, Stage::Submit, self.config.busy_retry_ms)
                        }
                    };
                    conn.send_error(correlation, code, retry_after_ms, message);
                }
            }
        }
    }

    /// Whether a request that needs `need` is refused on binary connection `conn`; if so, the
    /// error frame is queued: `unauthorized` before an accepted `AUTH`, `forbidden` naming the
    /// role needed after one whose role does not allow it. Neither closes the connection.
    fn binary_refused(
        &mut self,
        conn: &mut Conn,
        index: usize,
        correlation: u64,
        need: Need,
    ) -> bool {
        // `authed` is set only with a session, so the lookup is skipped for most buyers.
        let session = if conn.authed { self.auth.session(index, conn.id) } else { None };
        let caller = match session {
            Some(role) => Caller::Role(role),
            None => Caller::without_token(self.auth.enforced()),
        };
        if caller.allows(need) {
            return false;
        }
        let needed = need.role().unwrap_or(Role::Admin);
        // As the HTTP API says it: reads take any role's token, the others theirs or admin's.
        let also = if needed == Role::Admin { "" } else { " (or `admin`)" };
        let (code, message) = match caller {
            Caller::Role(has) => (
                ErrorCode::Forbidden,
                format!(
                    "this command needs the `{}` role{also}; this connection's is `{}`",
                    needed.name(),
                    has.name()
                ),
            ),
            _ if needed == Role::Read => (
                ErrorCode::Unauthorized,
                "this command needs a token of any role: send AUTH with one first".to_owned(),
            ),
            _ => (
                ErrorCode::Unauthorized,
                format!(
                    "this command needs the `{}` role{also}: send AUTH with a token first",
                    needed.name()
                ),
            ),
        };
        conn.send_error(correlation, code, 0, message);
        true
    }

    fn serve_http(&mut self, conn: &mut Conn, index: usize, now: Instant) {
        let limits = Limits { header_max: self.config.header_max, body_max: self.config.body_max };
        while !(conn.closing || conn.dead || conn.stop_reading || self.held_back(conn, index, now))
        {
            let (keep_alive, head_only, routed) =
                match http::try_frame(&conn.input[conn.input_start..conn.input_end], limits) {
                    Ok(Framed::Partial) => return,
                    Ok(Framed::ExpectsContinue) => {
                        conn.push_http_continue();
                        return;
                    }
                    Err(error) => {
                        self.metrics.bad_request(Protocol::Http);
                        let (status, code) = error.status_and_code();
                        self.metrics.http_framing_refusal(code);
                        self.log.warn(now, format_args!("HTTP client sent a bad request: {error}"));
                        conn.push_http_ready(
                            &Response::error(status, code, &error.to_string()),
                            false,
                            false,
                        );
                        // Where the next request would start is unknown, so what follows is
                        // never framed: a request smuggled behind this one is dropped unread,
                        // and cannot count as a slow partial request while answers drain.
                        conn.input_start = conn.input_end;
                        conn.stop_reading = true;
                        return;
                    }
                    Ok(Framed::Complete(request, used)) => {
                        conn.turn_left -= 1;
                        let routed = self.route_http(conn.peer, &request, now);
                        let framed = (request.keep_alive, request.method == "HEAD", routed);
                        conn.consume(used);
                        conn.continue_sent = false;
                        framed
                    }
                };
            self.metrics.request(Protocol::Http);
            if !keep_alive {
                // Nothing after a request that closes the connection is served: bytes the
                // client sent behind it are dropped, never timed as a slow request.
                conn.input_start = conn.input_end;
                conn.stop_reading = true;
            }
            let response = match routed {
                Err(response) => {
                    if response.status == 400 {
                        self.metrics.bad_request(Protocol::Http);
                    }
                    response
                }
                Ok(Call::Health) => self.health_response(),
                Ok(Call::Ready) => self.ready_response(),
                Ok(Call::Node) => self.node_response(),
                Ok(Call::Metrics) => self.metrics_response(),
                Ok(Call::OpenApi) => crate::http::api::openapi_response(),
                Ok(Call::Promote { request, force }) => {
                    let reply = (keep_alive, head_only);
                    match self.promote_response((request, force), (conn, index), reply, now) {
                        Some(response) => response,
                        None => continue,
                    }
                }
                Ok(Call::SetReplicationMode(mode)) => {
                    let reply = (keep_alive, head_only);
                    match self.replication_mode_response(mode, (conn, index), reply, now) {
                        Some(response) => response,
                        None => continue,
                    }
                }
                Ok(Call::ListSkus(page)) => {
                    match self.submit_page(conn, index, page, (keep_alive, head_only), now) {
                        Ok(()) => continue,
                        Err(refused) => http_refusal(refused),
                    }
                }
                Ok(Call::Submit(command)) => {
                    let reply = Reply::Http { seq: conn.next_http_seq(), keep_alive };
                    match self.admit_and_submit(conn, index, command, reply, now) {
                        Ok(()) => {
                            conn.push_http_pending(head_only);
                            continue;
                        }
                        Err(refused) => http_refusal(refused),
                    }
                }
            };
            conn.push_http_ready(&response, keep_alive, head_only);
        }
    }

    /// Routes an HTTP request once its bearer token, if any, is judged: the router is handed
    /// the caller's role, so a token is compared once, in constant time against every
    /// configured token, and one from a limited address not at all.
    fn route_http(
        &mut self,
        peer: IpAddr,
        request: &http::Request<'_>,
        now: Instant,
    ) -> Result<Call, Response> {
        let verdict = self.authenticate(peer, request.bearer, Protocol::Http, now);
        if let Authenticated::Limited { retry_after } = verdict {
            return Err(auth::limited_response(retry_after));
        }
        let caller = self.auth.caller(verdict);
        let routed = route_as(request, caller, &mut self.mint);
        // No token where client commands are open: a request under a name the operator did
        // not list may come from a page that had its name resolve to this node.
        let exempt = matches!(routed, Ok(Call::Health | Call::Ready | Call::OpenApi));
        if caller == Caller::Open && !exempt && !self.hosts.allows(request.host) {
            return Err(host_not_allowed(request.host));
        }
        routed
    }

    /// Submits one `SkuAt` query per SKU on the page, each a command of its own for the rate
    /// limits and the global in-flight cap. How many it may submit is settled before the
    /// first: the page's limit cut to the room left in the connection's and the address's
    /// in-flight budgets, so a page never passes either (reading pauses at them, but a page
    /// is many commands read as one request). A page cut short, by its budgets or by a refused
    /// query, carries a cursor to continue from; refused at the first, the request is refused.
    fn submit_page(
        &mut self,
        conn: &mut Conn,
        index: usize,
        page: PageRequest,
        (keep_alive, head_only): (bool, bool),
        now: Instant,
    ) -> Result<(), Refused> {
        let seq = conn.next_http_seq();
        let parts_max = page.limit.min(self.page_room(conn));
        let mut parts = 0u16;
        while parts < parts_max {
            let Some(position) = page.cursor.checked_add(u32::from(parts)) else { break };
            let query = Command::Query(Query::SkuAt(position));
            let reply = Reply::HttpPage { seq, part: parts, keep_alive };
            match self.admit_and_submit(conn, index, query, reply, now) {
                Ok(()) => parts += 1,
                Err(refused) if parts == 0 => return Err(refused),
                Err(_) => break,
            }
        }
        assert!(conn.in_flight <= self.config.connection_in_flight_max);
        conn.push_http_page(page.cursor, parts, head_only);
        Ok(())
    }

    /// Commands a catalogue page on `conn` may submit now: the room left in the connection's
    /// in-flight budget and in its address's. `held_back` paused reading at either, so there
    /// is room for at least one.
    fn page_room(&self, conn: &Conn) -> u16 {
        let connection = self.config.connection_in_flight_max.saturating_sub(conn.in_flight);
        let address = self.addresses.room(conn.address) as usize;
        let room = connection.min(address);
        assert!(room > 0, "reading pauses at the connection's and the address's budgets");
        u16::try_from(room).unwrap_or(u16::MAX)
    }

    fn admit_and_submit(
        &mut self,
        conn: &mut Conn,
        index: usize,
        command: Command,
        reply: Reply,
        now: Instant,
    ) -> Result<(), Refused> {
        if let Err(wait) = conn.bucket.try_take(now) {
            self.metrics.rate_limited += 1;
            return Err(Refused::RateLimited { retry_after_ms: retry_after_ms(wait) });
        }
        if let Err(wait) = self.addresses.try_take(conn.address, now) {
            self.address_rate_limited(conn, now);
            return Err(Refused::AddressRateLimited { retry_after_ms: retry_after_ms(wait) });
        }
        // A page submits no more than `page_room` of its address's budget.
        assert!(self.addresses.has_room(conn.address), "reading pauses at the address budget");
        if self.metrics.in_flight as usize >= self.config.in_flight_max {
            self.metrics.busy += 1;
            return Err(Refused::Backend(Refusal::Busy));
        }
        let token = self.free_flights.pop().unwrap_or_else(|| {
            self.flights.push(None);
            self.flights.len() - 1
        });
        match self.backend.try_submit(command, token as u64) {
            Ok(()) => {
                let address = conn.address;
                let flight =
                    Flight { conn: index, conn_id: conn.id, address, reply, submitted: now };
                self.flights[token] = Some(flight);
                self.addresses.submitted(address);
                conn.in_flight += 1;
                self.metrics.in_flight += 1;
                Ok(())
            }
            Err(refusal) => {
                self.free_flights.push(token);
                match refusal {
                    Refusal::Busy => self.metrics.busy += 1,
                    Refusal::NotPrimary { .. } => self.metrics.not_primary += 1,
                    Refusal::ReplicationUnavailable => self.metrics.replication_unavailable += 1,
                    Refusal::JournalFailed(_) => self.metrics.journal_failed += 1,
                    Refusal::ShuttingDown | Refusal::Failed(_) => {}
                }
                Err(Refused::Backend(refusal))
            }
        }
    }

    /// Counts a request refused at its address's rate budget, and logs it once in a while per
    /// address.
    fn address_rate_limited(&mut self, conn: &Conn, now: Instant) {
        self.metrics.address_limited[AddressLimit::Rate.index()] += 1;
        if self.addresses.report_due(conn.address, AddressLimit::Rate, now) {
            let key = self.addresses.key(conn.address);
            let rate = self.addresses.limits().rate_per_sec;
            self.log.warn(
                now,
                format_args!(
                    "refusing requests from {key}: it sends faster than address_rate_per_sec \
                     ({rate})"
                ),
            );
        }
    }

    /// Liveness: 200 while the node runs (`degraded`, naming the cause, while its journal has
    /// failed: it still answers reads, and `/ready` is 503); 503 naming the failure once a
    /// stage failed and the node stopped, so an orchestrator restarts it.
    fn health_response(&self) -> Response {
        let status = self.backend.status();
        match (status.failure, status.not_ready) {
            (Some(failure), _) => {
                Response::json(503, &json!({ "status": "failed", "reason": failure }))
            }
            (None, Some(why)) if why.code == "journal_failed" => {
                Response::json(200, &json!({ "status": "degraded", "reason": why.message }))
            }
            (None, _) => Response::json(200, &json!({ "status": "ok" })),
        }
    }

    /// Readiness for writes: 200 when a write would be taken now; 503 with the reason when
    /// not (a standby, a lost sync standby, a failed or stopping node). Reads may still be
    /// served by a node that is not ready.
    fn ready_response(&self) -> Response {
        let status = self.backend.status();
        let role = if status.info.primary { "primary" } else { "standby" };
        match status.not_ready {
            None => Response::json(200, &json!({ "ready": true, "role": role })),
            Some(why) => Response::json(
                503,
                &json!({
                    "ready": false,
                    "role": role,
                    "error": why.code,
                    "message": why.message,
                }),
            ),
        }
    }

    fn node_response(&self) -> Response {
        let status = self.backend.status();
        let mut node = NodeJson::from_info(&status.info);
        node.state.as_of_ms = Some(status.state_as_of_ms);
        node.applied_sequence = Some(status.applied_sequence);
        node.journal.status = Some(status.journal);
        node.peer = Some(PeerJson { status: status.peer });
        node.replication = status.replication;
        node.connections_open = Some(self.metrics.open);
        node.in_flight = Some(self.metrics.in_flight);
        Response::body(200, &node)
    }

    fn metrics_response(&self) -> Response {
        let mut text = String::with_capacity(4096);
        self.metrics.write_prometheus(&mut text);
        self.backend.write_metrics(&mut text);
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: text.into_bytes(),
            retry_after_s: None,
            allow: None,
        }
    }
}

/// The message of a refusal at the source address's rate budget, on both ports.
const ADDRESS_RATE_MESSAGE: &str =
    "rate limit of this source address exceeded: retry after the hint";

/// A retry hint in whole milliseconds, at least one.
fn retry_after_ms(wait: std::time::Duration) -> u32 {
    u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX)
}

fn http_refusal(refused: Refused) -> Response {
    let retry_after_s = |retry_after_ms: u32| retry_after_ms.div_ceil(1_000).max(1);
    match refused {
        Refused::RateLimited { retry_after_ms } => {
            Response::error(429, "rate_limited", "rate limit exceeded")
                .retry_after(retry_after_s(retry_after_ms))
        }
        Refused::AddressRateLimited { retry_after_ms } => {
            Response::error(429, "rate_limited", ADDRESS_RATE_MESSAGE)
                .retry_after(retry_after_s(retry_after_ms))
        }
        Refused::Backend(refusal) => refusal::http_response(&refusal, Stage::Submit),
    }
}

/// Longest piece of a refused `Host` quoted back.
const HOST_QUOTED_MAX: usize = 64;

/// 403 `host_not_allowed`, quoting the refused name (cut short).
fn host_not_allowed(host: Option<&[u8]>) -> Response {
    let host = host.unwrap_or_default();
    let shown = String::from_utf8_lossy(&host[..host.len().min(HOST_QUOTED_MAX)]);
    let message = format!(
        "Host `{shown}` is not one this node answers without a token: use its IP address or \
         `localhost`, or list the name in [server] allowed_hosts (serve --http-allowed-host)"
    );
    Response::error(403, "host_not_allowed", &message)
}

/// The field of a client command's argument the engine would refuse as `invalid_argument`.
fn out_of_range(command: &Command) -> Option<&'static str> {
    match command {
        Command::Client { action, .. } => invalid_argument(action),
        _ => None,
    }
}
