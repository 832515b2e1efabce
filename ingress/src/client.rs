//! The blocking client library for the binary protocol: single calls and pipelined batches,
//! with several node addresses for failover.
//!
//! Every command a client sends is safe to send twice: mutating commands carry a request key
//! (a retry returns the original outcome) and queries change nothing. So when a connection
//! breaks mid-batch, the client reconnects — to the next address if the current node is gone —
//! and resends whatever was not answered. `busy` and `rate_limited` refusals are returned to
//! the caller, who decides how long to back off.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringfence_core::{Command, Outcome};

use crate::wire::{self, ErrorFrame, Kind, NodeInfo, Response, WireError};

/// Frames written before the client stops to read answers, so a large batch never fills
/// both directions of the socket at once.
const WINDOW: usize = 1_024;

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

    /// Presents `token` as the admin token now and after every reconnect.
    pub fn authenticate(&mut self, token: &str) -> Result<(), ClientError> {
        self.admin_token = Some(token.to_owned());
        self.send_auth()
    }

    /// Sets how long a call waits for its answers (default ten seconds).
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
    /// or the server's refusal (busy, rate limited, unauthorized).
    pub fn pipeline(
        &mut self,
        commands: &[Command],
    ) -> Result<Vec<Result<Outcome, ErrorFrame>>, ClientError> {
        let mut answers: Vec<Option<Result<Outcome, ErrorFrame>>> = vec![None; commands.len()];
        let mut attempts = 0;
        loop {
            match self.try_pipeline(commands, &mut answers) {
                Ok(()) => break,
                Err(Failure::Io(error)) => {
                    attempts += 1;
                    if attempts > self.addrs.len() {
                        return Err(ClientError::Unreachable {
                            addrs: self.addr_list(),
                            last: error,
                        });
                    }
                    self.stream = None;
                    self.current = (self.current + 1) % self.addrs.len();
                    self.reconnect()?;
                }
                Err(Failure::Client(error)) => {
                    self.stream = None;
                    return Err(error);
                }
            }
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
                        self.send_auth()?;
                    }
                    return Ok(());
                }
                Err(error) => last = error,
            }
        }
        Err(self.unreachable(last))
    }

    fn unreachable(&self, last: io::Error) -> ClientError {
        ClientError::Unreachable { addrs: self.addr_list(), last }
    }

    fn send_auth(&mut self) -> Result<(), ClientError> {
        let token = self.admin_token.clone().unwrap_or_default();
        let correlation = self.correlation();
        self.output.clear();
        wire::encode_auth(&mut self.output, correlation, token.as_bytes());
        match self.exchange_one(correlation)? {
            Response::AuthOk => Ok(()),
            Response::Error(error) => Err(ClientError::Refused(error)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    fn simple_request(&mut self, kind: Kind) -> Result<Response, ClientError> {
        let correlation = self.correlation();
        self.output.clear();
        wire::encode_empty(&mut self.output, kind, correlation);
        match self.exchange_one(correlation)? {
            Response::Error(error) => Err(ClientError::Refused(error)),
            other => Ok(other),
        }
    }

    fn exchange_one(&mut self, correlation: u64) -> Result<Response, ClientError> {
        let result = self.write_output().and_then(|()| self.read_response());
        match result {
            Ok((got, response)) if got == correlation => Ok(response),
            Ok((got, _)) => {
                Err(ClientError::Unexpected(format!("answer to {got}, not {correlation}")))
            }
            Err(Failure::Io(error)) => Err(self.unreachable(error)),
            Err(Failure::Client(error)) => Err(error),
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
            let mut left = window.len();
            while left > 0 {
                let (correlation, response) = self.read_response()?;
                let Some(offset) =
                    correlation.checked_sub(base).filter(|o| *o < window.len() as u64)
                else {
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

    fn read_response(&mut self) -> Result<(u64, Response), Failure> {
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
