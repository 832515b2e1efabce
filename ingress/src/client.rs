//! The blocking client library for the binary protocol: single calls and pipelined batches,
//! with several node addresses for failover.
//!
//! Every command a client sends is safe to send twice: mutating commands carry a request key
//! (a retry returns the original outcome) and queries change nothing. So when a connection
//! breaks mid-batch, or a node answers `not_primary` (a standby, or a primary deposed by a
//! failover), the client moves to the next address and resends whatever was not answered,
//! with the same keys: a command the old primary acknowledged, and replicated, gets the same
//! answer from the new one. It keeps moving round the addresses — pausing after each round,
//! longer each time — until every command is answered or the call's timeout has passed.
//! A client given one address has nowhere to move a `not_primary` write and returns the
//! refusal at once (its message names the primary when the node knows it); a broken
//! connection it retries on that address within the timeout. `busy`, `rate_limited` and
//! `replication_unavailable` refusals are returned to the caller, who decides how long to back
//! off.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringfence_core::{Command, Outcome};

use crate::wire::{self, ErrorCode, ErrorFrame, Kind, NodeInfo, Response, WireError};

/// Frames written before the client stops to read answers, so a large batch never fills
/// both directions of the socket at once.
const WINDOW: usize = 1_024;
/// The pause after the first round over every address found no primary; it doubles each
/// round up to [`FAILOVER_PAUSE_MAX`], so a promotion in progress is not hammered.
const FAILOVER_PAUSE_MIN: Duration = Duration::from_millis(10);
/// The longest pause between rounds.
const FAILOVER_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No configured address accepted a connection.
    #[error("no node reachable at {addrs}: {last}")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The last connection error.
        last: io::Error,
    },
    /// The server sent bytes that are not protocol v1.
    #[error("bad response from the server: {0}")]
    Wire(#[from] WireError),
    /// The server refused the request (busy, rate limited, unauthorized, ...).
    #[error("refused: {} ({})", .0.code.name(), .0.message)]
    Refused(ErrorFrame),
    /// The server answered with a frame that does not fit the request.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// A blocking connection to one of several nodes.
pub struct Client {
    addrs: Vec<SocketAddr>,
    current: usize,
    stream: Option<TcpStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    next_correlation: u64,
    admin_token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// Connects to the first address that accepts. Later failures move on to the next.
    pub fn connect(addrs: &[SocketAddr]) -> Result<Client, ClientError> {
        assert!(!addrs.is_empty(), "a client needs at least one node address");
        let mut client = Client {
            addrs: addrs.to_vec(),
            current: 0,
            stream: None,
            input: Vec::with_capacity(64 * 1024),
            output: Vec::with_capacity(64 * 1024),
            next_correlation: 1,
            admin_token: None,
            timeout: Duration::from_secs(10),
        };
        client.reconnect()?;
        Ok(client)
    }

    /// Presents `token` — the admin token or a role token — now and after every reconnect.
    pub fn authenticate(&mut self, token: &str) -> Result<(), ClientError> {
        self.admin_token = Some(token.to_owned());
        match self.send_auth() {
            // The node closed the connection (idle, or to admit a client at its limit): a new
            // one is authenticated as it opens.
            Err(Failure::Io(_)) => self.reconnect(),
            result => result.map_err(|failure| self.client_error(failure)),
        }
    }

    /// Sets how long a call waits for its answers, and how long it keeps moving between
    /// addresses to find the primary (default ten seconds).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The node currently connected to.
    #[must_use]
    pub fn peer(&self) -> SocketAddr {
        self.addrs[self.current]
    }

    /// Sends one command and waits for its outcome.
    pub fn call(&mut self, command: Command) -> Result<Outcome, ClientError> {
        let mut answers = self.pipeline(&[command])?;
        answers.pop().expect("one answer per command").map_err(ClientError::Refused)
    }

    /// Sends all commands pipelined and returns one answer per command, in order: the outcome,
    /// or the server's refusal (busy, rate limited, unauthorized, replication unavailable; and
    /// not primary if no address had a primary before the timeout, or there is only one).
    pub fn pipeline(
        &mut self,
        commands: &[Command],
    ) -> Result<Vec<Result<Outcome, ErrorFrame>>, ClientError> {
        let mut answers: Vec<Option<Result<Outcome, ErrorFrame>>> = vec![None; commands.len()];
        let mut failover = Failover::new(Instant::now() + self.timeout, self.addrs.len());
        let mut attempt = self.try_pipeline(commands, &mut answers);
        loop {
            match attempt {
                Ok(()) if !answers.iter().any(is_not_primary) => break,
                Ok(()) => {
                    if self.addrs.len() == 1 || !failover.may_move() {
                        break;
                    }
                    answers.iter_mut().filter(|a| is_not_primary(a)).for_each(|a| *a = None);
                }
                Err(Failure::Io(error)) => {
                    if !failover.may_move() {
                        self.stream = None;
                        return Err(self.unreachable(error));
                    }
                }
                Err(Failure::Client(error)) => {
                    self.stream = None;
                    return Err(error);
                }
            }
            attempt = self.next_node().and_then(|()| self.try_pipeline(commands, &mut answers));
        }
        Ok(answers.into_iter().map(|answer| answer.expect("every command answered")).collect())
    }

    /// The connected node's status.
    pub fn node(&mut self) -> Result<NodeInfo, ClientError> {
        match self.simple_request(Kind::Node)? {
            Response::NodeInfo(info) => Ok(info),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Round trip to the connected node.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.simple_request(Kind::Ping)? {
            Response::Pong => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    fn addr_list(&self) -> String {
        self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut last = io::Error::other("no address tried");
        for offset in 0..self.addrs.len() {
            let index = (self.current + offset) % self.addrs.len();
            match TcpStream::connect_timeout(&self.addrs[index], self.timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream.set_read_timeout(Some(self.timeout)).map_err(|e| self.unreachable(e))?;
                    self.stream = Some(stream);
                    self.current = index;
                    self.input.clear();
                    if self.admin_token.is_some() {
                        self.send_auth().map_err(|failure| self.client_error(failure))?;
                    }
                    return Ok(());
                }
                Err(error) => last = error,
            }
        }
        Err(self.unreachable(last))
    }

    /// Drops the connection and connects to the next address that accepts.
    fn next_node(&mut self) -> Result<(), Failure> {
        self.stream = None;
        self.current = (self.current + 1) % self.addrs.len();
        match self.reconnect() {
            Ok(()) => Ok(()),
            Err(ClientError::Unreachable { last, .. }) => Err(Failure::Io(last)),
            Err(error) => Err(Failure::Client(error)),
        }
    }

    fn unreachable(&self, last: io::Error) -> ClientError {
        ClientError::Unreachable { addrs: self.addr_list(), last }
    }

    fn send_auth(&mut self) -> Result<(), Failure> {
        let token = self.admin_token.clone().unwrap_or_default();
        let correlation = self.correlation();
        self.output.clear();
        wire::encode_auth(&mut self.output, correlation, token.as_bytes());
        match self.exchange_one(correlation)? {
            Response::AuthOk => Ok(()),
            Response::Error(error) => Err(Failure::Client(ClientError::Refused(error))),
            other => Err(Failure::Client(ClientError::Unexpected(format!("{other:?}")))),
        }
    }

    /// Sends an empty request of `kind` and returns its answer. Where the connection turns out
    /// broken — the node closes idle connections without a word (`idle_timeout_ms`, or to
    /// admit a new client at its connection limit) — it is sent once more on a new one:
    /// `PING` and `NODE` change nothing, so sending one twice is safe.
    fn simple_request(&mut self, kind: Kind) -> Result<Response, ClientError> {
        let response = match self.try_simple_request(kind) {
            Err(Failure::Io(_)) => {
                self.reconnect()?;
                self.try_simple_request(kind)
            }
            result => result,
        };
        match response.map_err(|failure| self.client_error(failure))? {
            Response::Error(error) => Err(ClientError::Refused(error)),
            other => Ok(other),
        }
    }

    fn try_simple_request(&mut self, kind: Kind) -> Result<Response, Failure> {
        let correlation = self.correlation();
        self.output.clear();
        wire::encode_empty(&mut self.output, kind, correlation);
        self.exchange_one(correlation)
    }

    /// Writes the output and reads the answer to `correlation`; an I/O failure is returned as
    /// such, for the caller to reconnect.
    fn exchange_one(&mut self, correlation: u64) -> Result<Response, Failure> {
        let deadline = Instant::now() + self.timeout;
        let (got, response) = self.write_output().and_then(|()| self.read_response(deadline))?;
        match (got, response) {
            (got, response) if got == correlation => Ok(response),
            // A refusal that closes the connection whatever was asked: the node refused it at
            // accept (correlation 0, at its connection limits) before reading the request.
            (_, Response::Error(error)) if error.fatal => {
                Err(Failure::Client(ClientError::Refused(error)))
            }
            (got, _) => Err(Failure::Client(ClientError::Unexpected(format!(
                "answer to {got}, not {correlation}"
            )))),
        }
    }

    /// The error a caller sees for `failure`: an I/O failure says the node is unreachable.
    fn client_error(&self, failure: Failure) -> ClientError {
        match failure {
            Failure::Io(error) => self.unreachable(error),
            Failure::Client(error) => error,
        }
    }

    fn correlation(&mut self) -> u64 {
        self.next_correlation += 1;
        self.next_correlation
    }

    fn try_pipeline(
        &mut self,
        commands: &[Command],
        answers: &mut [Option<Result<Outcome, ErrorFrame>>],
    ) -> Result<(), Failure> {
        let pending: Vec<usize> = (0..commands.len()).filter(|&i| answers[i].is_none()).collect();
        for window in pending.chunks(WINDOW) {
            // Correlation ids of this attempt: base + position in the window.
            let base = self.next_correlation + 1;
            self.next_correlation += window.len() as u64;
            self.output.clear();
            for (offset, &index) in window.iter().enumerate() {
                wire::encode_command(&mut self.output, base + offset as u64, &commands[index]);
            }
            self.write_output()?;
            // The window's answers within the timeout, whatever else the node sends meanwhile.
            let deadline = Instant::now() + self.timeout;
            let mut left = window.len();
            while left > 0 {
                let (correlation, response) = self.read_response(deadline)?;
                let Some(offset) =
                    correlation.checked_sub(base).filter(|o| *o < window.len() as u64)
                else {
                    if let Response::Error(error) = response {
                        if error.fatal {
                            // The node is closing the connection, refused at accept.
                            return Err(Failure::Client(ClientError::Refused(error)));
                        }
                    }
                    continue; // A late answer to an earlier, abandoned attempt.
                };
                let slot = &mut answers[window[offset as usize]];
                if slot.is_some() {
                    continue;
                }
                *slot = Some(match response {
                    Response::Outcome(outcome) => Ok(outcome),
                    Response::Error(error) if !error.fatal => Err(error),
                    Response::Error(error) => {
                        return Err(Failure::Client(ClientError::Refused(error)));
                    }
                    other => {
                        let message = format!("{other:?} in answer to a command");
                        return Err(Failure::Client(ClientError::Unexpected(message)));
                    }
                });
                left -= 1;
            }
        }
        Ok(())
    }

    fn write_output(&mut self) -> Result<(), Failure> {
        let stream =
            self.stream.as_mut().ok_or_else(|| Failure::Io(io::ErrorKind::NotConnected.into()))?;
        stream.write_all(&self.output).map_err(Failure::Io)
    }

    /// The next answer, by `deadline`: each read waits only for the time left, so a node that
    /// trickles bytes, or answers that belong to nothing asked, cannot hold the call past it.
    fn read_response(&mut self, deadline: Instant) -> Result<(u64, Response), Failure> {
        loop {
            if let Some((frame, used)) = wire::try_frame(&self.input).map_err(ClientError::Wire)? {
                let correlation = frame.correlation;
                let response = wire::decode_response(&frame).map_err(ClientError::Wire)?;
                self.input.drain(..used);
                return Ok((correlation, response));
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| Failure::Io(io::ErrorKind::NotConnected.into()))?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Client(ClientError::TimedOut(self.timeout)));
            }
            stream.set_read_timeout(Some(left)).map_err(Failure::Io)?;
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk) {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Failure::Client(ClientError::TimedOut(self.timeout)));
                }
                Err(error) => return Err(Failure::Io(error)),
            }
        }
    }
}

/// Whether an answer says the node was not the primary: the command was not published there
/// and belongs on another node.
fn is_not_primary(answer: &Option<Result<Outcome, ErrorFrame>>) -> bool {
    matches!(answer, Some(Err(error)) if error.code == ErrorCode::NotPrimary)
}

/// One call's budget for moving between nodes: a deadline, and a pause after each round over
/// the addresses that doubles up to [`FAILOVER_PAUSE_MAX`].
struct Failover {
    deadline: Instant,
    addrs: usize,
    moves: usize,
    pause: Duration,
}

impl Failover {
    fn new(deadline: Instant, addrs: usize) -> Failover {
        assert!(addrs > 0, "a client has at least one address");
        Failover { deadline, addrs, moves: 0, pause: FAILOVER_PAUSE_MIN }
    }

    /// Whether the call may move to the next node; at the end of a round over the addresses,
    /// first waits (never past the deadline).
    fn may_move(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        self.moves += 1;
        if self.moves % self.addrs == 0 {
            std::thread::sleep(self.pause.min(self.deadline - now));
            self.pause = (self.pause * 2).min(FAILOVER_PAUSE_MAX);
        }
        true
    }
}

/// Inside a pipeline attempt: an I/O failure (reconnect and resend) or a final error.
enum Failure {
    Io(io::Error),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

/// Connects to the first of the addresses `address` (`host:port`) names that accepts within
/// `timeout`, in the resolver's order, each given an equal share of the time left: a name
/// such as `localhost` may stand for `::1` and `127.0.0.1`, and a node listens on one of them.
/// The stream and the address it reached; the last address's error when none accepts.
pub fn connect_first(address: &str, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    connect_first_of(&address, timeout)
}

/// Reads `stream` to its end, at most `len_max` bytes, by `deadline`: each read waits only for
/// the time left, so a peer that trickles its answer cannot hold the caller. A read whose wait
/// ran out is `TimedOut`.
pub fn read_to_end_by(
    stream: &mut TcpStream,
    deadline: Instant,
    len_max: usize,
) -> io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 8 * 1024];
    while answer.len() < len_max {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let room = (len_max - answer.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // A read's wait ran out: the deadline has passed, said as such.
            Err(error)
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(error) => return Err(error),
        }
    }
    assert!(answer.len() <= len_max, "read past the bound");
    Ok(answer)
}

/// [`connect_first`] over any list of addresses.
fn connect_first_of(
    address: &impl std::net::ToSocketAddrs,
    timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let deadline = Instant::now() + timeout;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for (tried, candidate) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addresses.len() - tried).unwrap_or(u32::MAX);
        match TcpStream::connect_timeout(candidate, share.max(Duration::from_millis(1))) {
            Ok(stream) => {
                // The stream reached the address it was asked for.
                debug_assert_eq!(stream.peer_addr().ok(), Some(*candidate));
                return Ok((stream, *candidate));
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A node at a loopback address that reads what it is sent and answers with `answer`
    /// (called every 20 ms with the bytes to write) until the client hangs up.
    fn hostile_node(answer: fn(u64) -> Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_nonblocking(true).unwrap();
            let mut sink = [0u8; 4096];
            for tick in 0.. {
                let _ = stream.read(&mut sink);
                if stream.write_all(&answer(tick)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        addr
    }

    /// Runs `call` against `addr` with a 300 ms timeout on another thread; what it returned,
    /// if it returned within 20 s.
    fn call_within<T: Send + 'static>(
        addr: SocketAddr,
        call: fn(&mut Client) -> Result<T, ClientError>,
    ) -> Option<Result<T, ClientError>> {
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            let mut client = Client::connect(&[addr]).unwrap();
            client.set_timeout(Duration::from_millis(300));
            let _ = done.send(call(&mut client));
        });
        result.recv_timeout(Duration::from_secs(20)).ok()
    }

    /// The first eight bytes of a PONG frame as long as a frame may be.
    fn head_of_large_pong() -> Vec<u8> {
        [&1_020u32.to_le_bytes()[..], b"RF", &[1, Kind::Pong as u8]].concat()
    }

    #[test]
    fn a_name_reaches_the_address_that_accepts_not_only_its_first() {
        // Goal: a host name is tried address by address: where `localhost` stands for `::1`
        // first and the node listens on 127.0.0.1 only, it is reached all the same (as curl
        // reaches it). Here a name with two addresses, the first refusing.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let spare = TcpListener::bind("127.0.0.1:0").unwrap();
            spare.local_addr().unwrap()
        };
        struct Two(SocketAddr, SocketAddr);
        impl std::net::ToSocketAddrs for Two {
            type Iter = std::vec::IntoIter<SocketAddr>;
            fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
                Ok(vec![self.0, self.1].into_iter())
            }
        }
        let (_, reached) = connect_first_of(&Two(closed, open), Duration::from_secs(5)).unwrap();
        assert_eq!(reached, open);
        let refused = connect_first_of(&Two(closed, closed), Duration::from_secs(5));
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_node_that_trickles_bytes_or_answers_nothing_asked_cannot_hold_a_call() {
        // Goal: the timeout bounds the whole call, not each read: a node sending one byte of a
        // frame every 20 ms (a ping), or well-formed answers to correlations never asked (a
        // pipelined command), makes the call fail as timed out instead of waiting forever.
        // Fails with the timeout set once per connection: neither call returns.
        // The head of a frame of 1 020 bytes after its length, then its body a byte at a time.
        let trickle = hostile_node(|tick| if tick == 0 { head_of_large_pong() } else { vec![0] });
        let pinged = call_within(trickle, Client::ping).expect("the ping returned");
        assert!(matches!(pinged, Err(ClientError::TimedOut(_))), "{pinged:?}");
        let strangers = hostile_node(|tick| {
            let mut frame = Vec::new();
            wire::encode_empty(&mut frame, Kind::Pong, 1_000_000 + tick);
            frame
        });
        let query = |client: &mut Client| {
            client.call(Command::Query(ringfence_core::Query::Sku(ringfence_core::SkuId(1))))
        };
        let called = call_within(strangers, query);
        let called = called.expect("the call returned");
        assert!(matches!(called, Err(ClientError::TimedOut(_))), "{called:?}");
    }

    #[test]
    fn a_connection_refused_at_accept_is_a_refusal_not_an_unexpected_answer() {
        // Goal: a node at its connection limits answers a new connection with one fatal
        // `busy` frame at correlation 0 and closes it (docs/protocol.md). Every call the client
        // makes on it returns that refusal, whose message and retry hint reach the caller.
        // Fails where answers are matched by correlation alone: a ping or an AUTH is "an answer
        // to 0, not 2", and a command retries its one address until the timeout.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let frame = ErrorFrame {
                    code: ErrorCode::Busy,
                    fatal: true,
                    retry_after_ms: 1_000,
                    message: "too many connections from this address".into(),
                };
                let mut out = Vec::new();
                wire::encode_error(&mut out, 0, &frame);
                let _ = stream.write_all(&out);
            }
        });
        fn refused<T>(result: &Option<Result<T, ClientError>>) -> bool {
            matches!(result, Some(Err(ClientError::Refused(error)))
                if error.code == ErrorCode::Busy && error.message.contains("too many connections"))
        }
        let pinged = call_within(addr, Client::ping);
        assert!(refused(&pinged), "{pinged:?}");
        let authenticated = call_within(addr, |client| client.authenticate("token"));
        assert!(refused(&authenticated), "{authenticated:?}");
        let query = |client: &mut Client| {
            client.call(Command::Query(ringfence_core::Query::Sku(ringfence_core::SkuId(1))))
        };
        let called = call_within(addr, query);
        assert!(refused(&called), "{called:?}");
    }
}
