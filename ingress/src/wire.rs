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
//!   `Tick`). Answered by `OUTCOME` or a non-fatal `ERROR` (busy, rate limited, unauthorized).
//! - `0x02 AUTH`: the admin token's bytes (1–256). Answered by `AUTH_OK` or a fatal `ERROR`.
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
//! Commands and outcomes are a tag byte followed by fixed fields in declaration order (see
//! the `encode_*` functions). `Option<u64>` is a presence byte (0 or 1) followed by the value
//! only when present; `bool` is one byte, 0 or 1; every other byte value is refused, and so are
//! trailing bytes, so each value has exactly one encoding.

use ringfence_core::{
    Action, BatchId, BatchView, Command, CouponId, CouponState, CouponView, CreateCouponBatch,
    CreateSku, OrderId, OrderState, OrderView, Outcome, PaymentRef, Query, Rejection, RequestKey,
    Reserve, Sequence, SkuId, SkuView, Timestamp, UserId,
};

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
    /// A version this server does not speak.
    #[error("unsupported protocol version {0}; this server speaks version 1")]
    UnsupportedVersion(u8),
    /// A kind byte no version-1 frame has.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame kind that is not valid in this direction.
    #[error("frame kind {0:?} is not a request")]
    UnexpectedKind(Kind),
    /// A tag byte that names no variant.
    #[error("unknown {what} tag 0x{tag:02x}")]
    UnknownTag {
        /// Which enum was being decoded.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
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
            WireError::FrameTooShort(_) | WireError::BadMagic(_) => ErrorCode::MalformedFrame,
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
    /// An admin command on a connection that has not authenticated.
    Unauthorized = 10,
    /// The ring or the in-flight cap is full: retry after the hint.
    Busy = 11,
    /// This connection exceeded its request rate: retry after the hint.
    RateLimited = 12,
    /// The server is shutting down.
    ShuttingDown = 13,
    /// The admin token was wrong. Fatal.
    AuthFailed = 14,
    /// The connection was idle or too slow. Fatal.
    Timeout = 15,
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
        Kind::Command => {
            let mut reader = Reader::new(frame.body);
            let command = read_command(&mut reader)?;
            reader.finish()?;
            Ok(Request::Command(command))
        }
        Kind::Auth => {
            if frame.body.is_empty() || frame.body.len() > TOKEN_LEN_MAX {
                return Err(WireError::BadText("admin token"));
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
    let mut reader = Reader::new(frame.body);
    let response = match frame.kind {
        Kind::Outcome => Response::Outcome(read_outcome(&mut reader)?),
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

/// Appends a `COMMAND` frame.
pub fn encode_command(out: &mut Vec<u8>, correlation: u64, command: &Command) {
    encode_frame(out, Kind::Command, correlation, |out| write_command(out, command));
}

/// Appends an `OUTCOME` frame.
pub fn encode_outcome(out: &mut Vec<u8>, correlation: u64, outcome: &Outcome) {
    encode_frame(out, Kind::Outcome, correlation, |out| write_outcome(out, outcome));
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

    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, WireError> {
        if self.flag(what)? { Ok(Some(self.u64(what)?)) } else { Ok(None) }
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            rest => Err(WireError::TrailingBytes(rest)),
        }
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => {
            out.push(1);
            put_u64(out, value);
        }
        None => out.push(0),
    }
}

fn write_command(out: &mut Vec<u8>, command: &Command) {
    match command {
        Command::Tick => out.push(0x00),
        Command::Query(Query::Sku(sku)) => {
            out.push(0x01);
            put_u64(out, sku.0);
        }
        Command::Query(Query::Order(order)) => {
            out.push(0x02);
            put_u64(out, order.0);
        }
        Command::Query(Query::Coupon(coupon)) => {
            out.push(0x03);
            put_u64(out, coupon.0);
        }
        Command::Query(Query::Batch(batch)) => {
            out.push(0x04);
            put_u64(out, batch.0);
        }
        Command::Snapshot => out.push(0x05),
        Command::Client { key, action } => {
            out.push(0x10);
            out.extend_from_slice(&key.0);
            write_action(out, action);
        }
    }
}

fn write_action(out: &mut Vec<u8>, action: &Action) {
    match *action {
        Action::CreateSku(create) => {
            out.push(0x01);
            put_u64(out, create.sku.0);
            put_u32(out, create.stock);
            put_u64(out, create.price_cents);
            put_u32(out, create.per_user_limit);
            put_u64(out, create.payment_timeout_ms);
            put_opt(out, create.sale_start.map(|t| t.0));
            put_opt(out, create.sale_end.map(|t| t.0));
        }
        Action::Restock { sku, qty } => {
            out.push(0x02);
            put_u64(out, sku.0);
            put_u32(out, qty);
        }
        Action::OpenSale { sku } => {
            out.push(0x03);
            put_u64(out, sku.0);
        }
        Action::CloseSale { sku } => {
            out.push(0x04);
            put_u64(out, sku.0);
        }
        Action::Reserve(reserve) => {
            out.push(0x05);
            put_u64(out, reserve.user.0);
            put_u64(out, reserve.sku.0);
            put_u32(out, reserve.qty);
            put_opt(out, reserve.coupon.map(|c| c.0));
        }
        Action::Pay { order, payment_ref, amount_cents } => {
            out.push(0x06);
            put_u64(out, order.0);
            out.extend_from_slice(&payment_ref.0);
            put_u64(out, amount_cents);
        }
        Action::Cancel { order, user } => write_order_user(out, 0x07, order, user),
        Action::AdminCancel { order } => write_order(out, 0x08, order),
        Action::Ship { order } => write_order(out, 0x09, order),
        Action::Complete { order, user } => write_order_user(out, 0x0A, order, user),
        Action::Refund { order } => write_order(out, 0x0B, order),
        Action::CreateCouponBatch(create) => {
            out.push(0x0C);
            put_u64(out, create.batch.0);
            put_u32(out, create.quantity);
            put_u32(out, create.per_user_limit);
            put_u64(out, create.discount_cents);
            put_u64(out, create.min_amount_cents);
            put_u64(out, create.valid_from.0);
            put_u64(out, create.valid_until.0);
        }
        Action::ClaimCoupon { user, batch } => {
            out.push(0x0D);
            put_u64(out, user.0);
            put_u64(out, batch.0);
        }
    }
}

fn write_order(out: &mut Vec<u8>, tag: u8, order: OrderId) {
    out.push(tag);
    put_u64(out, order.0);
}

fn write_order_user(out: &mut Vec<u8>, tag: u8, order: OrderId, user: UserId) {
    write_order(out, tag, order);
    put_u64(out, user.0);
}

fn read_command(r: &mut Reader<'_>) -> Result<Command, WireError> {
    Ok(match r.u8("command tag")? {
        0x00 => return Err(WireError::TickFromClient),
        0x01 => Command::Query(Query::Sku(SkuId(r.u64("sku")?))),
        0x02 => Command::Query(Query::Order(OrderId(r.u64("order")?))),
        0x03 => Command::Query(Query::Coupon(CouponId(r.u64("coupon")?))),
        0x04 => Command::Query(Query::Batch(BatchId(r.u64("batch")?))),
        0x05 => Command::Snapshot,
        0x10 => {
            let key = RequestKey(r.array("request key")?);
            Command::Client { key, action: read_action(r)? }
        }
        tag => return Err(WireError::UnknownTag { what: "command", tag }),
    })
}

fn read_action(r: &mut Reader<'_>) -> Result<Action, WireError> {
    Ok(match r.u8("action tag")? {
        0x01 => Action::CreateSku(CreateSku {
            sku: SkuId(r.u64("sku")?),
            stock: r.u32("stock")?,
            price_cents: r.u64("price_cents")?,
            per_user_limit: r.u32("per_user_limit")?,
            payment_timeout_ms: r.u64("payment_timeout_ms")?,
            sale_start: r.opt_u64("sale_start")?.map(Timestamp),
            sale_end: r.opt_u64("sale_end")?.map(Timestamp),
        }),
        0x02 => Action::Restock { sku: SkuId(r.u64("sku")?), qty: r.u32("qty")? },
        0x03 => Action::OpenSale { sku: SkuId(r.u64("sku")?) },
        0x04 => Action::CloseSale { sku: SkuId(r.u64("sku")?) },
        0x05 => Action::Reserve(Reserve {
            user: UserId(r.u64("user")?),
            sku: SkuId(r.u64("sku")?),
            qty: r.u32("qty")?,
            coupon: r.opt_u64("coupon")?.map(CouponId),
        }),
        0x06 => Action::Pay {
            order: OrderId(r.u64("order")?),
            payment_ref: PaymentRef(r.array("payment_ref")?),
            amount_cents: r.u64("amount_cents")?,
        },
        0x07 => Action::Cancel { order: OrderId(r.u64("order")?), user: UserId(r.u64("user")?) },
        0x08 => Action::AdminCancel { order: OrderId(r.u64("order")?) },
        0x09 => Action::Ship { order: OrderId(r.u64("order")?) },
        0x0A => Action::Complete { order: OrderId(r.u64("order")?), user: UserId(r.u64("user")?) },
        0x0B => Action::Refund { order: OrderId(r.u64("order")?) },
        0x0C => Action::CreateCouponBatch(CreateCouponBatch {
            batch: BatchId(r.u64("batch")?),
            quantity: r.u32("quantity")?,
            per_user_limit: r.u32("per_user_limit")?,
            discount_cents: r.u64("discount_cents")?,
            min_amount_cents: r.u64("min_amount_cents")?,
            valid_from: Timestamp(r.u64("valid_from")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        }),
        0x0D => {
            Action::ClaimCoupon { user: UserId(r.u64("user")?), batch: BatchId(r.u64("batch")?) }
        }
        tag => return Err(WireError::UnknownTag { what: "action", tag }),
    })
}

fn write_outcome(out: &mut Vec<u8>, outcome: &Outcome) {
    match *outcome {
        Outcome::Ticked { now } => {
            out.push(0x01);
            put_u64(out, now.0);
        }
        Outcome::SkuCreated(view) => write_sku_view(out, 0x02, &view),
        Outcome::Restocked(view) => write_sku_view(out, 0x03, &view),
        Outcome::SaleChanged(view) => write_sku_view(out, 0x04, &view),
        Outcome::Reserved { order, expires_at, amount_cents } => {
            out.push(0x05);
            put_u64(out, order.0);
            put_u64(out, expires_at.0);
            put_u64(out, amount_cents);
        }
        Outcome::Paid { order } => write_order(out, 0x06, order),
        Outcome::Cancelled { order } => write_order(out, 0x07, order),
        Outcome::Shipped { order } => write_order(out, 0x08, order),
        Outcome::Completed { order } => write_order(out, 0x09, order),
        Outcome::Refunded { order } => write_order(out, 0x0A, order),
        Outcome::BatchCreated(view) => write_batch_view(out, 0x0B, &view),
        Outcome::CouponClaimed { coupon, batch, valid_until } => {
            out.push(0x0C);
            put_u64(out, coupon.0);
            put_u64(out, batch.0);
            put_u64(out, valid_until.0);
        }
        Outcome::Sku(view) => write_sku_view(out, 0x0D, &view),
        Outcome::Order(view) => write_order_view(out, &view),
        Outcome::Coupon(view) => write_coupon_view(out, &view),
        Outcome::Batch(view) => write_batch_view(out, 0x10, &view),
        Outcome::SnapshotRequested { last_sequence, running_hash } => {
            out.push(0x11);
            put_u64(out, last_sequence.0);
            put_u64(out, running_hash);
        }
        Outcome::Rejected(rejection) => {
            out.push(0x12);
            write_rejection(out, rejection);
        }
    }
}

fn write_sku_view(out: &mut Vec<u8>, tag: u8, view: &SkuView) {
    out.push(tag);
    for value in [view.sku.0, view.stock, view.available, view.reserved, view.sold] {
        put_u64(out, value);
    }
    put_u64(out, view.price_cents);
    put_u32(out, view.per_user_limit);
    out.push(u8::from(view.open));
    put_u64(out, view.payment_timeout_ms);
    put_opt(out, view.sale_start.map(|t| t.0));
    put_opt(out, view.sale_end.map(|t| t.0));
}

fn write_batch_view(out: &mut Vec<u8>, tag: u8, view: &BatchView) {
    out.push(tag);
    put_u64(out, view.batch.0);
    put_u32(out, view.quantity);
    put_u32(out, view.remaining);
    put_u32(out, view.per_user_limit);
    put_u64(out, view.discount_cents);
    put_u64(out, view.min_amount_cents);
    put_u64(out, view.valid_from.0);
    put_u64(out, view.valid_until.0);
}

fn write_order_view(out: &mut Vec<u8>, view: &OrderView) {
    out.push(0x0E);
    put_u64(out, view.order.0);
    put_u64(out, view.user.0);
    put_u64(out, view.sku.0);
    put_u32(out, view.qty);
    put_u64(out, view.amount_cents);
    out.push(order_state_byte(view.state));
    put_u64(out, view.created_at.0);
    put_u64(out, view.expires_at.0);
    put_opt(out, view.coupon.map(|c| c.0));
    match view.payment_ref {
        Some(reference) => {
            out.push(1);
            out.extend_from_slice(&reference.0);
        }
        None => out.push(0),
    }
}

fn write_coupon_view(out: &mut Vec<u8>, view: &CouponView) {
    out.push(0x0F);
    put_u64(out, view.coupon.0);
    put_u64(out, view.batch.0);
    put_u64(out, view.user.0);
    match view.state {
        CouponState::Available => out.push(0),
        CouponState::Locked(order) => write_order(out, 1, order),
        CouponState::Used(order) => write_order(out, 2, order),
        CouponState::Expired => out.push(3),
    }
    put_u64(out, view.discount_cents);
    put_u64(out, view.valid_until.0);
}

/// Rejections in wire order; a rejection's tag is its index plus one.
const REJECTIONS: [Rejection; 16] = [
    Rejection::SoldOut,
    Rejection::LimitExceeded,
    Rejection::SaleNotOpen,
    Rejection::SaleClosed,
    Rejection::UnknownSku,
    Rejection::UnknownOrder,
    Rejection::UnknownCoupon,
    Rejection::UnknownBatch,
    Rejection::InvalidQty,
    Rejection::CouponInvalid,
    Rejection::CapacityExhausted,
    Rejection::SkuExists,
    Rejection::BatchExists,
    Rejection::InvalidArgument,
    Rejection::PaymentConflict,
    Rejection::NotOwner,
];
const TAG_REQUEST_KEY_REUSED: u8 = 17;
const TAG_INVALID_STATE: u8 = 18;
const TAG_WRONG_AMOUNT: u8 = 19;
/// A rejection added to the engine after this protocol version; decoders refuse it.
const TAG_REJECTION_UNKNOWN: u8 = 0xFF;

fn write_rejection(out: &mut Vec<u8>, rejection: Rejection) {
    match rejection {
        Rejection::RequestKeyReused => out.push(TAG_REQUEST_KEY_REUSED),
        Rejection::InvalidState { current } => {
            out.push(TAG_INVALID_STATE);
            out.push(order_state_byte(current));
        }
        Rejection::WrongAmount { expected_cents } => {
            out.push(TAG_WRONG_AMOUNT);
            put_u64(out, expected_cents);
        }
        other => match REJECTIONS.iter().position(|known| *known == other) {
            Some(index) => out.push(index as u8 + 1),
            None => out.push(TAG_REJECTION_UNKNOWN),
        },
    }
}

const ORDER_STATES: [OrderState; 7] = OrderState::ALL;

fn order_state_byte(state: OrderState) -> u8 {
    ORDER_STATES.iter().position(|known| *known == state).expect("every state is listed") as u8
}

fn read_order_state(r: &mut Reader<'_>) -> Result<OrderState, WireError> {
    let tag = r.u8("order state")?;
    ORDER_STATES
        .get(usize::from(tag))
        .copied()
        .ok_or(WireError::UnknownTag { what: "order state", tag })
}

fn read_outcome(r: &mut Reader<'_>) -> Result<Outcome, WireError> {
    Ok(match r.u8("outcome tag")? {
        0x01 => Outcome::Ticked { now: Timestamp(r.u64("now")?) },
        0x02 => Outcome::SkuCreated(read_sku_view(r)?),
        0x03 => Outcome::Restocked(read_sku_view(r)?),
        0x04 => Outcome::SaleChanged(read_sku_view(r)?),
        0x05 => Outcome::Reserved {
            order: OrderId(r.u64("order")?),
            expires_at: Timestamp(r.u64("expires_at")?),
            amount_cents: r.u64("amount_cents")?,
        },
        0x06 => Outcome::Paid { order: OrderId(r.u64("order")?) },
        0x07 => Outcome::Cancelled { order: OrderId(r.u64("order")?) },
        0x08 => Outcome::Shipped { order: OrderId(r.u64("order")?) },
        0x09 => Outcome::Completed { order: OrderId(r.u64("order")?) },
        0x0A => Outcome::Refunded { order: OrderId(r.u64("order")?) },
        0x0B => Outcome::BatchCreated(read_batch_view(r)?),
        0x0C => Outcome::CouponClaimed {
            coupon: CouponId(r.u64("coupon")?),
            batch: BatchId(r.u64("batch")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        },
        0x0D => Outcome::Sku(read_sku_view(r)?),
        0x0E => Outcome::Order(read_order_view(r)?),
        0x0F => Outcome::Coupon(read_coupon_view(r)?),
        0x10 => Outcome::Batch(read_batch_view(r)?),
        0x11 => Outcome::SnapshotRequested {
            last_sequence: Sequence(r.u64("last_sequence")?),
            running_hash: r.u64("running_hash")?,
        },
        0x12 => Outcome::Rejected(read_rejection(r)?),
        tag => return Err(WireError::UnknownTag { what: "outcome", tag }),
    })
}

fn read_rejection(r: &mut Reader<'_>) -> Result<Rejection, WireError> {
    Ok(match r.u8("rejection tag")? {
        TAG_REQUEST_KEY_REUSED => Rejection::RequestKeyReused,
        TAG_INVALID_STATE => Rejection::InvalidState { current: read_order_state(r)? },
        TAG_WRONG_AMOUNT => Rejection::WrongAmount { expected_cents: r.u64("expected_cents")? },
        tag => match usize::from(tag).checked_sub(1).and_then(|index| REJECTIONS.get(index)) {
            Some(rejection) => *rejection,
            None => return Err(WireError::UnknownTag { what: "rejection", tag }),
        },
    })
}

fn read_sku_view(r: &mut Reader<'_>) -> Result<SkuView, WireError> {
    Ok(SkuView {
        sku: SkuId(r.u64("sku")?),
        stock: r.u64("stock")?,
        available: r.u64("available")?,
        reserved: r.u64("reserved")?,
        sold: r.u64("sold")?,
        price_cents: r.u64("price_cents")?,
        per_user_limit: r.u32("per_user_limit")?,
        open: r.flag("open")?,
        payment_timeout_ms: r.u64("payment_timeout_ms")?,
        sale_start: r.opt_u64("sale_start")?.map(Timestamp),
        sale_end: r.opt_u64("sale_end")?.map(Timestamp),
    })
}

fn read_batch_view(r: &mut Reader<'_>) -> Result<BatchView, WireError> {
    Ok(BatchView {
        batch: BatchId(r.u64("batch")?),
        quantity: r.u32("quantity")?,
        remaining: r.u32("remaining")?,
        per_user_limit: r.u32("per_user_limit")?,
        discount_cents: r.u64("discount_cents")?,
        min_amount_cents: r.u64("min_amount_cents")?,
        valid_from: Timestamp(r.u64("valid_from")?),
        valid_until: Timestamp(r.u64("valid_until")?),
    })
}

fn read_order_view(r: &mut Reader<'_>) -> Result<OrderView, WireError> {
    Ok(OrderView {
        order: OrderId(r.u64("order")?),
        user: UserId(r.u64("user")?),
        sku: SkuId(r.u64("sku")?),
        qty: r.u32("qty")?,
        amount_cents: r.u64("amount_cents")?,
        state: read_order_state(r)?,
        created_at: Timestamp(r.u64("created_at")?),
        expires_at: Timestamp(r.u64("expires_at")?),
        coupon: r.opt_u64("coupon")?.map(CouponId),
        payment_ref: if r.flag("payment_ref")? {
            Some(PaymentRef(r.array("payment_ref")?))
        } else {
            None
        },
    })
}

fn read_coupon_view(r: &mut Reader<'_>) -> Result<CouponView, WireError> {
    Ok(CouponView {
        coupon: CouponId(r.u64("coupon")?),
        batch: BatchId(r.u64("batch")?),
        user: UserId(r.u64("user")?),
        state: match r.u8("coupon state")? {
            0 => CouponState::Available,
            1 => CouponState::Locked(OrderId(r.u64("order")?)),
            2 => CouponState::Used(OrderId(r.u64("order")?)),
            3 => CouponState::Expired,
            tag => return Err(WireError::UnknownTag { what: "coupon state", tag }),
        },
        discount_cents: r.u64("discount_cents")?,
        valid_until: Timestamp(r.u64("valid_until")?),
    })
}

#[cfg(test)]
mod tests;
