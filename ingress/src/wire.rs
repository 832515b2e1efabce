//! Binary protocol v1: length-prefixed, versioned frames with a client correlation id.
//!
//! Both directions use the same frame. All integers are little-endian.
//!
//! ```text
//!  0          4        6     7      8                 16
//! +----------+--------+-----+------+-----------------+----------------------------+
//! | length   | magic  | ver | kind | correlation id  | body: length - 12 bytes    |
//! | u32      | "RF"   | 1   | u8   | u64             |                            |
//! +----------+--------+-----+------+-----------------+----------------------------+
//! ```
//!
//! `length` counts the bytes after itself, so a frame occupies `4 + length` bytes; it is at
//! least [`HEADER_AFTER_LENGTH`] and at most `FRAME_MAX - 4`. The header is validated as soon as
//! its eight bytes arrive, so an oversized or foreign stream is refused before it is buffered.
//! A client may pipeline any number of frames; responses carry the request's correlation id and
//! may arrive in any order. A malformed frame is answered with an `ERROR` frame marked fatal,
//! and the server closes the connection after writing it.
//!
//! Request kinds (client to server) and their bodies:
//! - `0x01 COMMAND`: an encoded [`Command`] (queries, snapshot, keyed client commands; never
//!   `Tick`). Answered by `OUTCOME` or a non-fatal `ERROR` (busy, rate limited, unauthorized,
//!   forbidden).
//! - `0x02 AUTH`: a token's bytes (1–256): the admin token or a role token. Answered by
//!   `AUTH_OK` (the connection now has the token's role, until another `AUTH` replaces it) or
//!   a fatal `ERROR`.
//! - `0x03 NODE`: empty. Answered by `NODE_INFO`.
//! - `0x04 PING`: empty. Answered by `PONG`.
//!
//! Response kinds: `0x81 OUTCOME` (an encoded [`Outcome`]), `0x82 AUTH_OK`, `0x83 NODE_INFO`,
//! `0x84 PONG`, `0xF0 ERROR`:
//!
//! ```text
//! +------------+-------+-----------------+-------------+-----------------+
//! | code u16   | flags | retry_after_ms  | msg_len u16 | message (UTF-8) |
//! |            | u8    | u32             |             |                 |
//! +------------+-------+-----------------+-------------+-----------------+
//! flags bit 0: fatal (the server closes the connection after this frame)
//! ```
//!
//! Error codes ([`ErrorCode`]; the names are the HTTP API's error codes):
//!
//! ```text
//!  1 malformed_frame      fatal      10 unauthorized          13 shutting_down
//!  2 unsupported_version  fatal      11 busy (retry hint)     14 auth_failed  fatal
//!  3 frame_too_large      fatal      12 rate_limited (hint)   15 timeout      fatal
//!  4 unknown_kind         fatal      16 not_primary: send writes to the primary; the message
//!  5 bad_body             fatal         names it when known ("not primary; primary at ADDR")
//!                                    17 replication_unavailable (hint): writes refused, or a
//!                                       command applied but not acknowledged by the standby
//!                                    18 forbidden: the connection's role does not allow the
//!                                       command; the message names the role needed
//! ```
//!
//! Roles (`ringfence_ingress::roles`): `unauthorized` answers a command or `NODE` that needs
//! a token on a connection without an accepted `AUTH`; `forbidden` one beyond the role of the
//! token it presented. `PING` needs none.
//!
//! `COMMAND` and `OUTCOME` bodies are the canonical encoding of [`ringfence_core::codec`]
//! (tag byte, fixed little-endian fields in declaration order, strict flags, no trailing
//! bytes), the same bytes the journal and replication carry. Protocol version 1 carries
//! canonical encoding version 1; a new encoding is a new protocol version.

use ringfence_core::codec::{
    self, COMMAND_LEN_MAX, DecodeError, ENCODING_VERSION, OUTCOME_LEN_MAX,
};
use ringfence_core::{Command, Outcome};

/// The two magic bytes at offset 4 of every frame.
pub const MAGIC: [u8; 2] = *b"RF";
/// Protocol version carried by every frame.
pub const VERSION: u8 = 1;
/// Offset of the magic bytes.
pub const MAGIC_OFFSET: usize = 4;
/// Offset of the version byte.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC.len();
/// Offset of the kind byte.
pub const KIND_OFFSET: usize = VERSION_OFFSET + 1;
/// Offset of the correlation id.
pub const CORRELATION_OFFSET: usize = KIND_OFFSET + 1;
/// Offset of the body; also the header size.
pub const BODY_OFFSET: usize = CORRELATION_OFFSET + 8;
/// Smallest value of the length field: a frame with an empty body.
pub const HEADER_AFTER_LENGTH: u32 = (BODY_OFFSET - 4) as u32;
/// Largest frame in bytes, length field included. The largest body defined in v1 is well under.
pub const FRAME_MAX: usize = 1024;
/// Longest admin token accepted in an `AUTH` frame.
pub const TOKEN_LEN_MAX: usize = 256;
/// Longest message in an `ERROR` frame.
pub const MESSAGE_LEN_MAX: usize = 512;

const _: () = assert!(BODY_OFFSET == 16);
const _: () = assert!(BODY_OFFSET + 2 + 1 + 4 + 2 + MESSAGE_LEN_MAX <= FRAME_MAX);
const _: () = assert!(BODY_OFFSET + TOKEN_LEN_MAX <= FRAME_MAX);
const _: () = assert!(BODY_OFFSET + COMMAND_LEN_MAX <= FRAME_MAX);
const _: () = assert!(BODY_OFFSET + OUTCOME_LEN_MAX <= FRAME_MAX);
// Protocol version 1 speaks canonical encoding version 1 and nothing else.
const _: () = assert!(VERSION == 1 && ENCODING_VERSION == 1);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client: a command for the engine.
    Command = 0x01,
    /// Client: present the admin token.
    Auth = 0x02,
    /// Client: ask for the node's status.
    Node = 0x03,
    /// Client: liveness check.
    Ping = 0x04,
    /// Server: the engine's outcome.
    Outcome = 0x81,
    /// Server: the admin token was accepted.
    AuthOk = 0x82,
    /// Server: the node's status.
    NodeInfo = 0x83,
    /// Server: answer to `PING`.
    Pong = 0x84,
    /// Server: the request was refused, or the stream is broken (fatal).
    Error = 0xF0,
}

impl Kind {
    fn from_byte(byte: u8) -> Result<Kind, WireError> {
        Ok(match byte {
            0x01 => Kind::Command,
            0x02 => Kind::Auth,
            0x03 => Kind::Node,
            0x04 => Kind::Ping,
            0x81 => Kind::Outcome,
            0x82 => Kind::AuthOk,
            0x83 => Kind::NodeInfo,
            0x84 => Kind::Pong,
            0xF0 => Kind::Error,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

/// Why bytes could not be decoded. Every variant names what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length field is below the header size.
    #[error("frame length {0} is below the 12-byte header: the stream is not protocol v1")]
    FrameTooShort(u32),
    /// The length field exceeds the maximum frame size.
    #[error("frame of {length} bytes exceeds the {max}-byte maximum")]
    FrameTooLarge {
        /// Frame size announced, length field included.
        length: u64,
        /// Largest accepted.
        max: usize,
    },
    /// The magic bytes are wrong: not a ringfence stream.
    #[error("bad magic {0:02x?}: expected \"RF\"; is this an HTTP client on the binary port?")]
    BadMagic([u8; 2]),
    /// The stream starts as HTTP does: a request on the binary port, or an HTTP listener's
    /// answer to a binary client pointed at it.
    #[error(
        "the peer speaks HTTP (the stream starts `{0}`): the binary protocol and HTTP listen \
         on different ports (`serve --listen`, default 127.0.0.1:7001, and `--http`, default \
         127.0.0.1:7080)"
    )]
    Http(&'static str),
    /// A version this server does not speak.
    #[error("unsupported protocol version {0}; this server speaks version 1")]
    UnsupportedVersion(u8),
    /// A kind byte no version-1 frame has.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame kind that is not valid in this direction.
    #[error("frame kind {0:?} is not a request")]
    UnexpectedKind(Kind),
    /// The body ended before a field did.
    #[error("body ends inside {0}")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// A boolean or presence byte other than 0 or 1.
    #[error("byte {byte} where {what} must be 0 or 1")]
    BadFlag {
        /// Which field.
        what: &'static str,
        /// The byte found.
        byte: u8,
    },
    /// A text field that is not UTF-8 or has a bad length.
    #[error("bad {0}: wrong length or not UTF-8")]
    BadText(&'static str),
    /// A `COMMAND` or `OUTCOME` body that is not a canonical command or outcome.
    #[error("bad body: {0}")]
    Body(#[from] DecodeError),
    /// `Tick` is published by the node's timer, never by clients.
    #[error("clients may not send Tick")]
    TickFromClient,
}

impl WireError {
    /// The error code sent in the `ERROR` frame for this decoding failure.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::UnknownKind(_) | WireError::UnexpectedKind(_) => ErrorCode::UnknownKind,
            WireError::FrameTooShort(_) | WireError::BadMagic(_) | WireError::Http(_) => {
                ErrorCode::MalformedFrame
            }
            _ => ErrorCode::BadBody,
        }
    }
}

/// Codes carried by `ERROR` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Framing is broken (length, magic). Fatal.
    MalformedFrame = 1,
    /// Version not spoken. Fatal.
    UnsupportedVersion = 2,
    /// Frame above the maximum. Fatal.
    FrameTooLarge = 3,
    /// Kind not defined or not a request. Fatal.
    UnknownKind = 4,
    /// Body does not decode. Fatal.
    BadBody = 5,
    /// A command that needs a token, on a connection that has not authenticated.
    Unauthorized = 10,
    /// The ring or the in-flight cap is full: retry after the hint.
    Busy = 11,
    /// This connection, or its source address, exceeded its request rate: retry after the
    /// hint (the message says which).
    RateLimited = 12,
    /// The server is shutting down.
    ShuttingDown = 13,
    /// The admin token was wrong. Fatal.
    AuthFailed = 14,
    /// The connection was idle or too slow. Fatal.
    Timeout = 15,
    /// A write sent to a standby or a deposed primary: send it to the primary, which the
    /// message names when this node knows it (`not primary; primary at ADDR`).
    NotPrimary = 16,
    /// Writes are held: sync replication lost its standby (until it is back or replication is
    /// switched to async), the lease could not be renewed, or a switchover or promotion is
    /// under way. As the answer to a command: it was applied on this node but the standby
    /// never acknowledged it; retry with the same request key to learn its outcome.
    ReplicationUnavailable = 17,
    /// The connection's role (from its `AUTH`) does not allow the command; the message names
    /// the role needed. Not fatal: another `AUTH` may give the connection another role.
    Forbidden = 18,
    /// The node's journal cannot make writes durable (a full disk, an I/O error): writes are
    /// refused, reads are served. As the answer to a command: it was not made durable; retry
    /// with the same request key once the node is back. The message names the cause.
    JournalFailed = 19,
    /// A command argument out of range; the message names the field, as the HTTP API's
    /// `invalid_argument` does. The command was not submitted (nothing journaled, the request
    /// key not taken). Not fatal.
    InvalidArgument = 20,
    /// A code this client does not know.
    Unknown = 0xFFFF,
}

impl ErrorCode {
    /// The code for a number received on the wire.
    #[must_use]
    pub fn from_u16(value: u16) -> ErrorCode {
        match value {
            1 => ErrorCode::MalformedFrame,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::UnknownKind,
            5 => ErrorCode::BadBody,
            10 => ErrorCode::Unauthorized,
            11 => ErrorCode::Busy,
            12 => ErrorCode::RateLimited,
            13 => ErrorCode::ShuttingDown,
            14 => ErrorCode::AuthFailed,
            15 => ErrorCode::Timeout,
            16 => ErrorCode::NotPrimary,
            17 => ErrorCode::ReplicationUnavailable,
            18 => ErrorCode::Forbidden,
            19 => ErrorCode::JournalFailed,
            20 => ErrorCode::InvalidArgument,
            _ => ErrorCode::Unknown,
        }
    }

    /// The snake_case name shared with the HTTP API's error codes.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Busy => "busy",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::ReplicationUnavailable => "replication_unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::JournalFailed => "journal_failed",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The body of an `ERROR` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// Whether the server closes the connection after this frame.
    pub fatal: bool,
    /// For `busy` and `rate_limited`: how long to wait before retrying.
    pub retry_after_ms: u32,
    /// Human-readable detail.
    pub message: String,
}

/// A node's status as reported by `NODE_INFO` and `GET /v1/node`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Whether this node accepts writes (primary) or only follows (standby).
    pub primary: bool,
    /// Replication epoch.
    pub epoch: u64,
    /// Last command sequence applied by the BLP.
    pub last_sequence: u64,
    /// The BLP's running state hash at `last_sequence`.
    pub running_hash: u64,
    /// Highest sequence the journal holds durably.
    pub journal_durable: u64,
}

/// A decoded frame header plus its body, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What it carries.
    pub kind: Kind,
    /// The client's correlation id, echoed in the response.
    pub correlation: u64,
    /// The body, not yet decoded.
    pub body: &'a [u8],
}

/// A request from a client, decoded and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// A command for the engine.
    Command(Command),
    /// The admin token.
    Auth(&'a [u8]),
    /// Node status.
    Node,
    /// Liveness.
    Ping,
}

/// A response from the server, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The engine's outcome.
    Outcome(Outcome),
    /// Token accepted.
    AuthOk,
    /// Node status.
    NodeInfo(NodeInfo),
    /// Liveness.
    Pong,
    /// Refusal or broken stream.
    Error(ErrorFrame),
}

/// Splits the next frame off `buffer`. `Ok(None)` means more bytes are needed; on `Ok(Some)`,
/// the second value is the number of bytes the frame occupied. The header is checked as soon
/// as it is complete, before the body has arrived.
pub fn try_frame(buffer: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    if buffer.len() < KIND_OFFSET + 1 {
        return Ok(None);
    }
    // No frame starts so: its first bytes would announce a frame far above `FRAME_MAX`.
    const HTTP_STARTS: [&str; 8] =
        ["HTTP/", "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH "];
    if let Some(start) = HTTP_STARTS.iter().find(|start| buffer.starts_with(start.as_bytes())) {
        return Err(WireError::Http(start.trim_end()));
    }
    let length = u32::from_le_bytes(buffer[..4].try_into().expect("4 bytes"));
    if length < HEADER_AFTER_LENGTH {
        return Err(WireError::FrameTooShort(length));
    }
    let total = u64::from(length) + 4;
    if total > FRAME_MAX as u64 {
        return Err(WireError::FrameTooLarge { length: total, max: FRAME_MAX });
    }
    let magic = [buffer[MAGIC_OFFSET], buffer[MAGIC_OFFSET + 1]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if buffer[VERSION_OFFSET] != VERSION {
        return Err(WireError::UnsupportedVersion(buffer[VERSION_OFFSET]));
    }
    let kind = Kind::from_byte(buffer[KIND_OFFSET])?;
    let total = total as usize;
    if buffer.len() < total {
        return Ok(None);
    }
    let correlation =
        u64::from_le_bytes(buffer[CORRELATION_OFFSET..BODY_OFFSET].try_into().expect("8 bytes"));
    let frame = Frame { kind, correlation, body: &buffer[BODY_OFFSET..total] };
    Ok(Some((frame, total)))
}

/// Decodes a client's frame into a request.
pub fn decode_request<'a>(frame: &Frame<'a>) -> Result<Request<'a>, WireError> {
    match frame.kind {
        Kind::Command => match codec::decode_command(frame.body)? {
            Command::Tick => Err(WireError::TickFromClient),
            command => Ok(Request::Command(command)),
        },
        Kind::Auth => {
            if frame.body.is_empty() || frame.body.len() > TOKEN_LEN_MAX {
                // Any role's token: the server does not know whose it was meant to be.
                return Err(WireError::BadText("AUTH token (1 to 256 bytes)"));
            }
            Ok(Request::Auth(frame.body))
        }
        Kind::Node => Reader::new(frame.body).finish().map(|()| Request::Node),
        Kind::Ping => Reader::new(frame.body).finish().map(|()| Request::Ping),
        other => Err(WireError::UnexpectedKind(other)),
    }
}

/// Decodes a server's frame into a response.
pub fn decode_response(frame: &Frame<'_>) -> Result<Response, WireError> {
    if frame.kind == Kind::Outcome {
        return Ok(Response::Outcome(codec::decode_outcome(frame.body)?));
    }
    let mut reader = Reader::new(frame.body);
    let response = match frame.kind {
        Kind::AuthOk => Response::AuthOk,
        Kind::Pong => Response::Pong,
        Kind::NodeInfo => Response::NodeInfo(NodeInfo {
            primary: reader.flag("primary")?,
            epoch: reader.u64("epoch")?,
            last_sequence: reader.u64("last_sequence")?,
            running_hash: reader.u64("running_hash")?,
            journal_durable: reader.u64("journal_durable")?,
        }),
        Kind::Error => Response::Error(read_error(&mut reader)?),
        other => return Err(WireError::UnexpectedKind(other)),
    };
    reader.finish()?;
    Ok(response)
}

fn read_error(reader: &mut Reader<'_>) -> Result<ErrorFrame, WireError> {
    let code = ErrorCode::from_u16(reader.u16("error code")?);
    let flags = reader.u8("error flags")?;
    if flags > 1 {
        return Err(WireError::BadFlag { what: "error flags", byte: flags });
    }
    let retry_after_ms = reader.u32("retry_after_ms")?;
    let len = usize::from(reader.u16("message length")?);
    if len > MESSAGE_LEN_MAX {
        return Err(WireError::BadText("error message"));
    }
    let bytes = reader.bytes(len, "error message")?;
    let message = std::str::from_utf8(bytes).map_err(|_| WireError::BadText("error message"))?;
    Ok(ErrorFrame { code, fatal: flags == 1, retry_after_ms, message: message.to_owned() })
}

/// Appends one frame to `out`: the header, then whatever `body` writes, then patches the
/// length. Does not allocate when `out` has room.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: Kind,
    correlation: u64,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&correlation.to_le_bytes());
    body(out);
    let length = out.len() - start - 4;
    assert!(length + 4 <= FRAME_MAX, "encoded frame of {} bytes exceeds FRAME_MAX", length + 4);
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
}

/// Appends a `COMMAND` frame: the command's canonical encoding.
pub fn encode_command(out: &mut Vec<u8>, correlation: u64, command: &Command) {
    let mut body = [0_u8; COMMAND_LEN_MAX];
    let len = codec::encode_command(command, &mut body);
    encode_frame(out, Kind::Command, correlation, |out| out.extend_from_slice(&body[..len]));
}

/// Appends an `OUTCOME` frame: the outcome's canonical encoding.
pub fn encode_outcome(out: &mut Vec<u8>, correlation: u64, outcome: &Outcome) {
    let mut body = [0_u8; OUTCOME_LEN_MAX];
    let len = codec::encode_outcome(outcome, &mut body);
    encode_frame(out, Kind::Outcome, correlation, |out| out.extend_from_slice(&body[..len]));
}

/// Appends an `ERROR` frame; the message is cut to [`MESSAGE_LEN_MAX`] at a char boundary.
pub fn encode_error(out: &mut Vec<u8>, correlation: u64, error: &ErrorFrame) {
    let mut end = error.message.len().min(MESSAGE_LEN_MAX);
    while !error.message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &error.message.as_bytes()[..end];
    encode_frame(out, Kind::Error, correlation, |out| {
        out.extend_from_slice(&(error.code as u16).to_le_bytes());
        out.push(u8::from(error.fatal));
        out.extend_from_slice(&error.retry_after_ms.to_le_bytes());
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(message);
    });
}

/// Appends a `NODE_INFO` frame.
pub fn encode_node_info(out: &mut Vec<u8>, correlation: u64, info: &NodeInfo) {
    encode_frame(out, Kind::NodeInfo, correlation, |out| {
        out.push(u8::from(info.primary));
        for value in [info.epoch, info.last_sequence, info.running_hash, info.journal_durable] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    });
}

/// Appends an `AUTH` frame carrying `token`.
pub fn encode_auth(out: &mut Vec<u8>, correlation: u64, token: &[u8]) {
    encode_frame(out, Kind::Auth, correlation, |out| out.extend_from_slice(token));
}

/// Appends a frame with an empty body (`NODE`, `PING`, `AUTH_OK`, `PONG`).
pub fn encode_empty(out: &mut Vec<u8>, kind: Kind, correlation: u64) {
    encode_frame(out, kind, correlation, |_| {});
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(len).ok_or(WireError::Truncated(what))?;
        let slice = self.bytes.get(self.at..end).ok_or(WireError::Truncated(what))?;
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.bytes(N, what)?.try_into().expect("slice of N bytes"))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(WireError::BadFlag { what, byte }),
        }
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            rest => Err(WireError::TrailingBytes(rest)),
        }
    }
}

#[cfg(test)]
mod tests;
