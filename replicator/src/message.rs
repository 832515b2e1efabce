//! The replication protocol's messages (version 6): frames, their bodies, encoding, and
//! decoding that checks every field and never panics. `docs/replication-protocol.md` is the
//! long version of this comment.
//!
//! A standby connects to the primary and speaks first. All integers are little-endian.
//!
//! ```text
//! frame
//!   0  len             4  bytes of kind + body: 1 ..= FRAME_LEN_MAX
//!   4  kind            1  below
//!   5  body            n  len - 1 bytes; body offsets below count from here
//!
//! 1 Hello (standby -> primary, first on a connection)
//!   0  magic           4  b"RFRP"
//!   4  version         2  PROTOCOL_VERSION (6)
//!   6  cluster len     1  n, 1 ..= 64
//!   7  cluster id      n  [A-Za-z0-9._-]
//!   7+n standby nonce 32
//!  39+n engine        42  the standby's engine settings: journal::format::encode_config's
//!                         block (40) and its continuation (2)
//! 2 Challenge (primary -> standby)
//!   0  primary nonce  32
//!  32  primary proof  32  auth::primary_proof
//! 3 Join (standby -> primary)
//!   0  standby proof  32  auth::standby_proof
//!  32  last sequence   8  the standby journal's last record; 0 if empty
//!  40  last epoch      8  that record's epoch; 0 if empty
//!  48  promised epoch  8  the highest epoch the standby promised; >= last epoch
//! 4 Start (primary -> standby)
//!   0  epoch           8  the primary's current epoch
//!   8  from sequence   8  the first record it will send: 1 ..= primary last + 1
//!  16  primary last    8  its last journaled record when it started
//! 5 Diverged (primary -> standby)
//!   0  epoch           8
//!   8  keep through    8  the standby drops every record after this, then rejoins
//! 6 Records (primary -> standby)
//!   0  first sequence  8  >= 1
//!   8  count           4  >= 1
//!  12  records         n  `count` ringfence_core::record framings back to back, exactly
//!                         filling the body: intact, sequences first, first + 1, ...,
//!                         epochs never going down; n <= RECORDS_BYTES_MAX
//! 7 Heartbeat (primary -> standby; also at once when `answering` changes)
//!   0  epoch           8
//!   8  last sequence   8  the primary's last journaled record
//!  16  sent at ms      8  the primary's clock
//!  24  answering       1  Answering: 0 Alone, 1 AfterStandby, 2 Async
//! 8 Ack (standby -> primary)
//!   0  written         8  highest sequence appended to the standby's journal
//!   8  durable         8  highest durable under its policy; <= written
//!  16  echo ms         8  the last heartbeat's sent at; 0 if none
//!  24  catching up     1  1 while the standby's data directory is catching up, else 0
//! 9 Refuse (either way; the sender then closes the connection)
//!   0  code            1  RefuseCode: 1 BadMessage .. 10 Engine
//!   1  epoch           8  the sender's current epoch
//!   9  text len        2  <= REFUSE_TEXT_LEN_MAX (512)
//!  11  text            n  UTF-8, for the operator
//! 10 FetchSnapshot (standby -> primary, instead of Join)
//!   0  standby proof  32  auth::standby_proof
//!  32  promised epoch  8  the highest epoch the standby promised
//! 11 SnapshotChunk (primary -> standby, repeated; the primary closes after the last)
//!   0  through         8  the snapshot holds every record up to here; >= 1
//!   8  through epoch   8  record `through`'s epoch; 0 if the primary no longer holds it
//!  16  total len       8  the snapshot file's length in bytes; >= 1
//!  24  offset          8  where this chunk's bytes go in the file
//!  32  bytes           n  1 ..= SNAPSHOT_CHUNK_MAX, offset + n <= total len
//! 12 Behind (primary -> standby, instead of Start; the primary then closes)
//!   0  epoch           8  the primary's current epoch
//!   8  last sequence   8  the primary journal's last record; 0 if empty
//!  16  last epoch      8  that record's epoch; 0 if empty; <= epoch
//! ```
//!
//! Decoding checks everything one frame can show: exact lengths, magic and version, the
//! cluster id's characters, known kinds and refusal codes, the records rules above, and the
//! bounds marked `<=` and `>=`; each failure is its own [`MessageError`]. The rules that span
//! messages (epochs never go down, acknowledgements never go backwards, each `Records` follows
//! on from the last, each `SnapshotChunk` from the one before with the same through, through epoch and
//! total)
//! belong to the state machines that use these messages, elsewhere in this crate.

use std::fmt;

use ringfence_core::record::{self, RECORD_ALIGN, RECORD_LEN_MAX, RecordError, record_len};
use ringfence_core::{EngineConfig, Epoch, Sequence};
use ringfence_journal::format::{self, CONFIG_BLOCK_LEN, CONFIG_MORE_LEN};

use crate::auth::{
    CLUSTER_ID_LEN_MAX, ClusterId, ClusterIdError, NONCE_LEN, Nonce, PROOF_LEN, Proof,
};

/// First bytes of a `Hello` body: a ringfence replication peer.
pub const PROTOCOL_MAGIC: [u8; 4] = *b"RFRP";
/// The protocol version this build speaks (and the only one it accepts).
pub const PROTOCOL_VERSION: u16 = 6;

const KIND_LEN: usize = 1;
const FRAME_LEN_OFFSET: usize = 0;
const FRAME_KIND_OFFSET: usize = FRAME_LEN_OFFSET + 4;
const FRAME_BODY_OFFSET: usize = FRAME_KIND_OFFSET + KIND_LEN;
/// Bytes of the length prefix that opens every frame.
pub const FRAME_PREFIX_LEN: usize = FRAME_KIND_OFFSET;

/// Record bytes one `Records` frame carries at most; a sender batches up to this.
pub const RECORDS_BYTES_MAX: usize = 1 << 20;
const RECORDS_FIRST_OFFSET: usize = 0;
const RECORDS_COUNT_OFFSET: usize = RECORDS_FIRST_OFFSET + 8;
const RECORDS_RECORDS_OFFSET: usize = RECORDS_COUNT_OFFSET + 4;
/// Bytes of a `Records` body before its records.
pub const RECORDS_HEADER_LEN: usize = RECORDS_RECORDS_OFFSET;
/// Bytes of a whole `Records` frame before its records (`records_frame_header`).
pub const RECORDS_FRAME_HEADER_LEN: usize = FRAME_BODY_OFFSET + RECORDS_HEADER_LEN;
/// The smallest record: one payload byte, padded.
const RECORD_LEN_MIN: usize = record_len(1);
/// Most records one `Records` frame can hold (all of the smallest kind).
pub const RECORDS_COUNT_MAX: usize = RECORDS_BYTES_MAX / RECORD_LEN_MIN;

/// Largest value of a frame's length field (kind and body): a `Records` frame with a full
/// budget of records.
pub const FRAME_LEN_MAX: usize = KIND_LEN + RECORDS_HEADER_LEN + RECORDS_BYTES_MAX;

const HELLO_MAGIC_OFFSET: usize = 0;
const HELLO_VERSION_OFFSET: usize = HELLO_MAGIC_OFFSET + 4;
const HELLO_CLUSTER_LEN_OFFSET: usize = HELLO_VERSION_OFFSET + 2;
const HELLO_CLUSTER_OFFSET: usize = HELLO_CLUSTER_LEN_OFFSET + 1;
// The standby nonce follows the cluster id, at HELLO_CLUSTER_OFFSET + cluster len, and the
// engine settings follow the nonce.
const HELLO_ENGINE_LEN: usize = CONFIG_BLOCK_LEN + CONFIG_MORE_LEN;
const HELLO_BODY_LEN_MIN: usize = HELLO_CLUSTER_OFFSET + 1 + NONCE_LEN + HELLO_ENGINE_LEN;
const HELLO_BODY_LEN_MAX: usize =
    HELLO_CLUSTER_OFFSET + CLUSTER_ID_LEN_MAX + NONCE_LEN + HELLO_ENGINE_LEN;

const CHALLENGE_NONCE_OFFSET: usize = 0;
const CHALLENGE_PROOF_OFFSET: usize = CHALLENGE_NONCE_OFFSET + NONCE_LEN;
const CHALLENGE_BODY_LEN: usize = CHALLENGE_PROOF_OFFSET + PROOF_LEN;

const JOIN_PROOF_OFFSET: usize = 0;
const JOIN_LAST_SEQUENCE_OFFSET: usize = JOIN_PROOF_OFFSET + PROOF_LEN;
const JOIN_LAST_EPOCH_OFFSET: usize = JOIN_LAST_SEQUENCE_OFFSET + 8;
const JOIN_PROMISED_EPOCH_OFFSET: usize = JOIN_LAST_EPOCH_OFFSET + 8;
const JOIN_BODY_LEN: usize = JOIN_PROMISED_EPOCH_OFFSET + 8;

const START_EPOCH_OFFSET: usize = 0;
const START_FROM_OFFSET: usize = START_EPOCH_OFFSET + 8;
const START_PRIMARY_LAST_OFFSET: usize = START_FROM_OFFSET + 8;
const START_BODY_LEN: usize = START_PRIMARY_LAST_OFFSET + 8;

const DIVERGED_EPOCH_OFFSET: usize = 0;
const DIVERGED_KEEP_THROUGH_OFFSET: usize = DIVERGED_EPOCH_OFFSET + 8;
const DIVERGED_BODY_LEN: usize = DIVERGED_KEEP_THROUGH_OFFSET + 8;

const BEHIND_EPOCH_OFFSET: usize = 0;
const BEHIND_LAST_SEQUENCE_OFFSET: usize = BEHIND_EPOCH_OFFSET + 8;
const BEHIND_LAST_EPOCH_OFFSET: usize = BEHIND_LAST_SEQUENCE_OFFSET + 8;
const BEHIND_BODY_LEN: usize = BEHIND_LAST_EPOCH_OFFSET + 8;

const HEARTBEAT_EPOCH_OFFSET: usize = 0;
const HEARTBEAT_LAST_OFFSET: usize = HEARTBEAT_EPOCH_OFFSET + 8;
const HEARTBEAT_SENT_AT_OFFSET: usize = HEARTBEAT_LAST_OFFSET + 8;
const HEARTBEAT_ANSWERING_OFFSET: usize = HEARTBEAT_SENT_AT_OFFSET + 8;
const HEARTBEAT_BODY_LEN: usize = HEARTBEAT_ANSWERING_OFFSET + 1;

const ACK_WRITTEN_OFFSET: usize = 0;
const ACK_DURABLE_OFFSET: usize = ACK_WRITTEN_OFFSET + 8;
const ACK_ECHO_OFFSET: usize = ACK_DURABLE_OFFSET + 8;
const ACK_CATCHING_UP_OFFSET: usize = ACK_ECHO_OFFSET + 8;
const ACK_BODY_LEN: usize = ACK_CATCHING_UP_OFFSET + 1;

const REFUSE_CODE_OFFSET: usize = 0;
const REFUSE_EPOCH_OFFSET: usize = REFUSE_CODE_OFFSET + 1;
const REFUSE_TEXT_LEN_OFFSET: usize = REFUSE_EPOCH_OFFSET + 8;
const REFUSE_TEXT_OFFSET: usize = REFUSE_TEXT_LEN_OFFSET + 2;
/// Most bytes of a refusal's text.
pub const REFUSE_TEXT_LEN_MAX: usize = 512;

const FETCH_SNAPSHOT_PROOF_OFFSET: usize = 0;
const FETCH_SNAPSHOT_PROMISED_OFFSET: usize = FETCH_SNAPSHOT_PROOF_OFFSET + PROOF_LEN;
const FETCH_SNAPSHOT_BODY_LEN: usize = FETCH_SNAPSHOT_PROMISED_OFFSET + 8;

const CHUNK_THROUGH_OFFSET: usize = 0;
const CHUNK_THROUGH_EPOCH_OFFSET: usize = CHUNK_THROUGH_OFFSET + 8;
const CHUNK_TOTAL_LEN_OFFSET: usize = CHUNK_THROUGH_EPOCH_OFFSET + 8;
// The offset of the chunk's `offset` field.
const CHUNK_OFFSET_OFFSET: usize = CHUNK_TOTAL_LEN_OFFSET + 8;
const CHUNK_BYTES_OFFSET: usize = CHUNK_OFFSET_OFFSET + 8;
/// Bytes of a `SnapshotChunk` body before the chunk's bytes.
pub const SNAPSHOT_CHUNK_HEADER_LEN: usize = CHUNK_BYTES_OFFSET;
/// Bytes of a whole `SnapshotChunk` frame before the chunk's bytes
/// (`snapshot_chunk_frame_header`).
pub const SNAPSHOT_CHUNK_FRAME_HEADER_LEN: usize = FRAME_BODY_OFFSET + SNAPSHOT_CHUNK_HEADER_LEN;
/// Snapshot bytes one `SnapshotChunk` frame carries at most: a little under the records budget,
/// so a chunk frame fits the frame limit the records frame sets and the reader's one buffer.
pub const SNAPSHOT_CHUNK_MAX: usize = RECORDS_BYTES_MAX - 32;

/// The largest len field either side accepts during the handshake, before its peer has proved
/// it holds the secret: the largest message of the handshake, a `Refuse` with the longest text
/// (which either side may send in place of its next message), 524 bytes. The others are
/// smaller: `Hello` with the longest cluster id 146, `Join` 57, `Challenge` 65, `FetchSnapshot`
/// 41, `Start`, `Diverged` and `Behind` 25 at most. A peer that announces more is not a node of
/// this version, and is refused after the 4-byte prefix, not waited for through a megabyte.
pub const HANDSHAKE_FRAME_LEN_MAX: usize = KIND_LEN
    + len_max(&[
        HELLO_BODY_LEN_MAX,
        CHALLENGE_BODY_LEN,
        JOIN_BODY_LEN,
        FETCH_SNAPSHOT_BODY_LEN,
        START_BODY_LEN,
        DIVERGED_BODY_LEN,
        BEHIND_BODY_LEN,
        REFUSE_TEXT_OFFSET + REFUSE_TEXT_LEN_MAX,
    ]);

/// The largest of `lens`.
const fn len_max(lens: &[usize]) -> usize {
    let (mut max, mut at) = (0, 0);
    while at < lens.len() {
        if lens[at] > max {
            max = lens[at];
        }
        at += 1;
    }
    max
}

// The handshake's limit is its refusal's, and far below a records frame's.
const _: () =
    assert!(HANDSHAKE_FRAME_LEN_MAX == KIND_LEN + REFUSE_TEXT_OFFSET + REFUSE_TEXT_LEN_MAX);
const _: () = assert!(HANDSHAKE_FRAME_LEN_MAX == 524);
const _: () = assert!(HANDSHAKE_FRAME_LEN_MAX < FRAME_LEN_MAX);

// The budget: at least 256 KiB of records per frame, whole records only, and every frame's
// length fits the u32 prefix.
const _: () = assert!(RECORDS_BYTES_MAX >= 256 * 1024);
const _: () = assert!(RECORDS_BYTES_MAX % RECORD_ALIGN == 0);
const _: () = assert!(RECORDS_BYTES_MAX >= RECORD_LEN_MAX);
const _: () = assert!(RECORDS_COUNT_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as usize);
// Every other message is far below the records frame's limit.
const _: () = assert!(KIND_LEN + HELLO_BODY_LEN_MAX <= FRAME_LEN_MAX);
const _: () = assert!(KIND_LEN + REFUSE_TEXT_OFFSET + REFUSE_TEXT_LEN_MAX <= FRAME_LEN_MAX);
const _: () = assert!(KIND_LEN + SNAPSHOT_CHUNK_HEADER_LEN + SNAPSHOT_CHUNK_MAX <= FRAME_LEN_MAX);
const _: () = assert!(REFUSE_TEXT_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(CLUSTER_ID_LEN_MAX <= u8::MAX as usize);
// The limits, pinned to `docs/replication-protocol.md`.
const _: () = assert!(FRAME_LEN_MAX == (1 << 20) + 13);
const _: () = assert!(RECORDS_COUNT_MAX == 21_845);
const _: () = assert!(SNAPSHOT_CHUNK_MAX == (1 << 20) - 32);
// The offsets, pinned to the byte diagram: the layout is a format.
const _: () = assert!(FRAME_BODY_OFFSET == 5);
const _: () = assert!(HELLO_CLUSTER_OFFSET == 7 && HELLO_BODY_LEN_MIN == 82);
const _: () = assert!(CHALLENGE_BODY_LEN == 64);
const _: () = assert!(JOIN_LAST_SEQUENCE_OFFSET == 32 && JOIN_BODY_LEN == 56);
const _: () = assert!(START_BODY_LEN == 24);
const _: () = assert!(DIVERGED_BODY_LEN == 16);
const _: () = assert!(BEHIND_BODY_LEN == 24);
const _: () = assert!(RECORDS_HEADER_LEN == 12 && RECORDS_FRAME_HEADER_LEN == 17);
const _: () = assert!(HEARTBEAT_BODY_LEN == 25);
const _: () = assert!(ACK_CATCHING_UP_OFFSET == 24 && ACK_BODY_LEN == 25);
const _: () = assert!(REFUSE_TEXT_LEN_OFFSET == 9 && REFUSE_TEXT_OFFSET == 11);
const _: () = assert!(FETCH_SNAPSHOT_PROMISED_OFFSET == 32 && FETCH_SNAPSHOT_BODY_LEN == 40);
const _: () = assert!(CHUNK_THROUGH_EPOCH_OFFSET == 8);
const _: () = assert!(CHUNK_TOTAL_LEN_OFFSET == 16 && CHUNK_OFFSET_OFFSET == 24);
const _: () = assert!(SNAPSHOT_CHUNK_HEADER_LEN == 32 && SNAPSHOT_CHUNK_FRAME_HEADER_LEN == 37);

/// A message's kind: the frame's fifth byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Hello`].
    Hello = 1,
    /// [`Challenge`].
    Challenge = 2,
    /// [`Join`].
    Join = 3,
    /// [`Start`].
    Start = 4,
    /// [`Diverged`].
    Diverged = 5,
    /// [`Records`].
    Records = 6,
    /// [`Heartbeat`].
    Heartbeat = 7,
    /// [`Ack`].
    Ack = 8,
    /// [`Refuse`].
    Refuse = 9,
    /// [`FetchSnapshot`].
    FetchSnapshot = 10,
    /// [`SnapshotChunk`].
    SnapshotChunk = 11,
    /// [`Behind`].
    Behind = 12,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 12] = [
        Kind::Hello,
        Kind::Challenge,
        Kind::Join,
        Kind::Start,
        Kind::Diverged,
        Kind::Records,
        Kind::Heartbeat,
        Kind::Ack,
        Kind::Refuse,
        Kind::FetchSnapshot,
        Kind::SnapshotChunk,
        Kind::Behind,
    ];

    /// The kind with wire code `code`, if there is one.
    #[must_use]
    pub fn from_u8(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|&kind| kind as u8 == code)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One message of the replication protocol, borrowing the frame it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Standby → primary: the first message on a connection.
    Hello(Hello),
    /// Primary → standby: the primary's nonce and its proof of the secret.
    Challenge(Challenge),
    /// Standby → primary: the standby's proof and where its journal ends.
    Join(Join),
    /// Primary → standby: records from `from_sequence` follow.
    Start(Start),
    /// Primary → standby: the standby's journal departs from the primary's; truncate, rejoin.
    Diverged(Diverged),
    /// Primary → standby: contiguous journal records.
    Records(Records<'a>),
    /// Primary → standby: the primary is alive, and where its journal ends.
    Heartbeat(Heartbeat),
    /// Standby → primary: how far the standby has written and made durable.
    Ack(Ack),
    /// Either way: the sender will not go on, and why; it closes the connection after it.
    Refuse(Refuse<'a>),
    /// Standby → primary, instead of `Join`: the standby's proof, and a request for a snapshot.
    FetchSnapshot(FetchSnapshot),
    /// Primary → standby, after `FetchSnapshot`: the next piece of a snapshot file.
    SnapshotChunk(SnapshotChunk<'a>),
    /// Primary → standby, instead of `Start`: the standby holds records past the primary's
    /// journal that the primary may have acknowledged and lost.
    Behind(Behind),
}

impl Message<'_> {
    /// The message's kind.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Challenge(_) => Kind::Challenge,
            Message::Join(_) => Kind::Join,
            Message::Start(_) => Kind::Start,
            Message::Diverged(_) => Kind::Diverged,
            Message::Records(_) => Kind::Records,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::Ack(_) => Kind::Ack,
            Message::Refuse(_) => Kind::Refuse,
            Message::FetchSnapshot(_) => Kind::FetchSnapshot,
            Message::SnapshotChunk(_) => Kind::SnapshotChunk,
            Message::Behind(_) => Kind::Behind,
        }
    }
}

/// Standby → primary, first on every connection. The magic and version are implied: a decoded
/// `Hello` had [`PROTOCOL_MAGIC`] and [`PROTOCOL_VERSION`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the standby believes it belongs to.
    pub cluster: ClusterId,
    /// The standby's fresh nonce for this connection.
    pub standby_nonce: Nonce,
    /// The standby's engine settings: the primary refuses a standby whose settings differ
    /// from its own (`RefuseCode::Engine`), since the records it streams replay to the same
    /// state and answers only under the same settings.
    pub engine: EngineConfig,
}

/// Primary → standby: the primary's nonce and `auth::primary_proof` over both nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The primary's fresh nonce for this connection.
    pub primary_nonce: Nonce,
    /// The primary's proof that it holds the cluster secret.
    pub primary_proof: Proof,
}

/// Standby → primary: the standby's proof and the end of its journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Join {
    /// The standby's proof that it holds the cluster secret.
    pub standby_proof: Proof,
    /// The standby journal's last record; 0 if the journal is empty.
    pub last_sequence: Sequence,
    /// That record's epoch; 0 if the journal is empty.
    pub last_epoch: Epoch,
    /// The highest epoch the standby has promised; never below `last_epoch`.
    pub promised_epoch: Epoch,
}

/// Primary → standby: the standby is accepted and records follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The primary's current epoch.
    pub epoch: Epoch,
    /// The first record the primary will send: `1..=primary_last + 1`.
    pub from_sequence: Sequence,
    /// The primary's last journaled record when it started this stream.
    pub primary_last: Sequence,
}

/// Primary → standby: the standby's journal departs from the primary's after `keep_through`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diverged {
    /// The primary's current epoch.
    pub epoch: Epoch,
    /// The standby must drop every record after this sequence, then connect again.
    pub keep_through: Sequence,
}

/// Primary → standby, instead of [`Start`] or [`Diverged`]: the standby holds records past
/// this primary's journal, and the primary may have acknowledged them before losing them (it
/// restarted after a standby was in sync, its journal answering before it syncs). It drops
/// nothing and streams nothing: it holds writes, and the standby, if its own record
/// `last_sequence` carries `last_epoch`, holds this primary's whole journal and more, and is
/// the node to promote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behind {
    /// The primary's current epoch: a promotion of the standby goes above it.
    pub epoch: Epoch,
    /// The primary journal's last record; 0 if the journal is empty.
    pub last_sequence: Sequence,
    /// That record's epoch; 0 if the journal is empty; never above `epoch`.
    pub last_epoch: Epoch,
}

/// Primary → standby, when there is nothing else to send, and at once when `answering`
/// changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The primary's current epoch.
    pub epoch: Epoch,
    /// The primary's last journaled record.
    pub last_sequence: Sequence,
    /// The primary's clock when it sent this, in milliseconds; echoed by the next `Ack`.
    pub sent_at_ms: u64,
    /// When the primary's answers leave, as of this heartbeat.
    pub answering: Answering,
}

/// When a primary's answers leave, as it tells its standby: what lets a standby that holds
/// everything the primary journaled count as a copy of everything it acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answering {
    /// `sync` mode, but no standby has caught up yet: answers leave on the primary's journal
    /// alone, so a standby can lack acknowledged records even once it holds all it was told
    /// of.
    Alone = 0,
    /// `sync` mode: every answer waits for this standby's acknowledgement, or is held. A
    /// standby that holds everything the primary journaled holds everything it acknowledged.
    AfterStandby = 1,
    /// `async` mode, the operator's choice: acknowledged records may be missing from any
    /// standby, so holding everything the primary journaled is as caught up as it gets.
    Async = 2,
}

impl Answering {
    /// Every value, in wire order.
    pub const ALL: [Answering; 3] = [Answering::Alone, Answering::AfterStandby, Answering::Async];

    /// The value with wire byte `value`, if there is one.
    #[must_use]
    pub fn from_u8(value: u8) -> Option<Answering> {
        Answering::ALL.into_iter().find(|&known| known as u8 == value)
    }
}

/// Standby → primary: how far the standby has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Highest sequence appended to the standby's journal.
    pub written: Sequence,
    /// Highest sequence durable under the standby's own policy; never above `written`.
    pub durable: Sequence,
    /// `sent_at_ms` of the last heartbeat the standby saw; 0 if none.
    pub echo_ms: u64,
    /// The standby's data directory is catching up: created or truncated, or its machine
    /// restarted while its journal acknowledged before syncing, since it last caught up with
    /// a primary. Until an acknowledgement says it no longer is, the primary does not count
    /// the standby's copy as holding what the pair acknowledges: the directory's marker would
    /// keep it from taking over on the strength of that copy.
    pub catching_up: bool,
}

/// Either way: the sender refuses to go on. It closes the connection after sending this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refuse<'a> {
    /// Why, for the receiving program.
    pub code: RefuseCode,
    /// The sender's current epoch.
    pub epoch: Epoch,
    /// Why, for the operator: at most [`REFUSE_TEXT_LEN_MAX`] bytes of UTF-8.
    pub text: &'a str,
}

impl<'a> Refuse<'a> {
    /// A refusal whose text is `text` cut to [`REFUSE_TEXT_LEN_MAX`] bytes on a character
    /// boundary.
    #[must_use]
    pub fn new(code: RefuseCode, epoch: Epoch, text: &'a str) -> Refuse<'a> {
        let mut end = text.len().min(REFUSE_TEXT_LEN_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Refuse { code, epoch, text: &text[..end] }
    }
}

/// Standby → primary, instead of [`Join`]: the standby's proof, and a request for the primary's
/// newest snapshot (after a `Refuse { NeedsSnapshot }`: the records it lacks were retired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchSnapshot {
    /// The standby's proof that it holds the cluster secret, as in a `Join`.
    pub standby_proof: Proof,
    /// The highest epoch the standby promised, as in a `Join`: a primary leading in a lower
    /// one was superseded, and sends no snapshot.
    pub promised_epoch: Epoch,
}

/// Why a peer refuses: the first byte of a `Refuse` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RefuseCode {
    /// A message was malformed or arrived out of turn.
    BadMessage = 1,
    /// The peer speaks another protocol version.
    Version = 2,
    /// The peer belongs to another cluster.
    Cluster = 3,
    /// The peer's handshake proof did not match.
    Auth = 4,
    /// This node is not the primary.
    NotPrimary = 5,
    /// The peer's epoch is below one this node has seen or promised.
    StaleEpoch = 6,
    /// The primary already has a standby.
    Busy = 7,
    /// Records the standby needs were retired: it fetches a snapshot (`FetchSnapshot`).
    NeedsSnapshot = 8,
    /// This node failed (I/O, a bug); the text says how.
    Internal = 9,
    /// The standby's engine settings differ from the primary's; the text names them.
    Engine = 10,
}

impl RefuseCode {
    /// Every code, in code order.
    pub const ALL: [RefuseCode; 10] = [
        RefuseCode::BadMessage,
        RefuseCode::Version,
        RefuseCode::Cluster,
        RefuseCode::Auth,
        RefuseCode::NotPrimary,
        RefuseCode::StaleEpoch,
        RefuseCode::Busy,
        RefuseCode::NeedsSnapshot,
        RefuseCode::Internal,
        RefuseCode::Engine,
    ];

    /// The code with wire value `code`, if there is one.
    #[must_use]
    pub fn from_u8(code: u8) -> Option<RefuseCode> {
        RefuseCode::ALL.into_iter().find(|&known| known as u8 == code)
    }
}

/// Why bytes are not a message of this protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The length prefix is zero.
    #[error("a frame of length 0: every frame holds at least its kind byte")]
    EmptyFrame,
    /// The length prefix is above [`FRAME_LEN_MAX`].
    #[error(
        "a frame of {len} bytes, above the limit of {FRAME_LEN_MAX}: the peer is not a \
         ringfence replication node of this version, or the stream is out of step"
    )]
    FrameTooLong {
        /// The length prefix.
        len: usize,
    },
    /// The kind byte is not a known kind.
    #[error("unknown message kind {0}: the peer speaks another protocol version")]
    UnknownKind(u8),
    /// A fixed-size body of the wrong size.
    #[error("a {kind} body of {have} bytes; it is always {need}")]
    BodyLength {
        /// The message kind.
        kind: Kind,
        /// Bytes present.
        have: usize,
        /// Bytes the kind has.
        need: usize,
    },
    /// A variable-size body shorter than its fields (or their length fields) need.
    #[error("a {kind} body of {have} bytes is cut short: its fields need {need}")]
    Truncated {
        /// The message kind.
        kind: Kind,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A variable-size body longer than its fields.
    #[error("a {kind} body of {have} bytes where its fields take {need}: bytes trail the message")]
    TrailingBytes {
        /// The message kind.
        kind: Kind,
        /// Bytes present.
        have: usize,
        /// Bytes the fields take.
        need: usize,
    },
    /// A `Hello` without the protocol magic.
    #[error(
        "the hello starts with {found:02x?}, not the replication magic \"RFRP\": the peer is \
         not a ringfence replication node"
    )]
    BadMagic {
        /// The first four body bytes.
        found: [u8; 4],
    },
    /// A `Hello` of another protocol version.
    #[error(
        "the peer speaks replication protocol version {version}; this build speaks \
         {PROTOCOL_VERSION}: run the same ringfence release on the primary and the standby"
    )]
    Version {
        /// The version the peer sent.
        version: u16,
    },
    /// A `Hello` whose cluster id is not a valid id.
    #[error("the hello's cluster id is invalid: {0}")]
    ClusterId(ClusterIdError),
    /// A `Hello` whose engine settings are not settings an engine accepts.
    #[error("the hello's engine settings are invalid")]
    EngineSettings,
    /// A `Records` frame with a count of zero.
    #[error("a records message with no records")]
    RecordsEmpty,
    /// A `Records` frame starting at sequence 0 or running past the last sequence.
    #[error("{count} records from sequence {first} leave the sequence range 1..=2^64-1")]
    RecordsRange {
        /// The first sequence.
        first: Sequence,
        /// The count.
        count: u32,
    },
    /// More record bytes than [`RECORDS_BYTES_MAX`] (only when building, never decoded).
    #[error("{len} bytes of records, above the budget of {RECORDS_BYTES_MAX} per message")]
    RecordsTooLong {
        /// Bytes of records.
        len: usize,
    },
    /// A record that is not intact.
    #[error("record {index} (sequence {sequence}) at byte {offset} of the records: {source}")]
    Record {
        /// Position of the record in the message, from 0.
        index: u32,
        /// Its offset from the start of the records.
        offset: usize,
        /// The sequence it should carry.
        sequence: Sequence,
        /// What is wrong with it.
        source: RecordError,
    },
    /// A record whose header or length runs past the end of the records.
    #[error(
        "record {index} (sequence {sequence}) at byte {offset} runs past the end of the \
         records: it needs {need} bytes, {have} remain"
    )]
    RecordOverrun {
        /// Position of the record in the message, from 0.
        index: u32,
        /// Its offset from the start of the records.
        offset: usize,
        /// The sequence it should carry.
        sequence: Sequence,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The records end before `count` of them.
    #[error("a records message declares {count} records but holds {found}")]
    RecordsMissing {
        /// The declared count.
        count: u32,
        /// Records present.
        found: u32,
    },
    /// An intact record with the wrong sequence: records are missing, repeated or reordered.
    #[error(
        "record {index} at byte {offset} carries sequence {found} where {expected} belongs: \
         records must be contiguous"
    )]
    RecordGap {
        /// Position of the record in the message, from 0.
        index: u32,
        /// Its offset from the start of the records.
        offset: usize,
        /// The sequence it should carry.
        expected: Sequence,
        /// The sequence it carries.
        found: Sequence,
    },
    /// An intact record with a lower epoch than the record before it.
    #[error(
        "record {index} (sequence {sequence}) carries epoch {epoch}, below epoch {previous} of \
         the record before it"
    )]
    RecordEpochWentBack {
        /// Position of the record in the message, from 0.
        index: u32,
        /// Its sequence.
        sequence: Sequence,
        /// Its epoch.
        epoch: Epoch,
        /// The epoch of the record before it.
        previous: Epoch,
    },
    /// Bytes after the last of `count` records.
    #[error("{extra} bytes follow the last of the {count} records of a records message")]
    RecordsTrailing {
        /// The declared count.
        count: u32,
        /// Bytes after the last record.
        extra: usize,
    },
    /// A `Refuse` with an unknown code.
    #[error("unknown refusal code {0}")]
    RefuseCode(u8),
    /// A `Heartbeat` with an unknown `answering` value.
    #[error("unknown answering value {0} in a heartbeat")]
    Answering(u8),
    /// An `Ack` whose `catching up` byte is neither 0 nor 1.
    #[error("a catching-up value of {0} in an acknowledgement (0 or 1)")]
    AckCatchingUp(u8),
    /// A `Refuse` text above [`REFUSE_TEXT_LEN_MAX`].
    #[error("a refusal text of {len} bytes, above the limit of {REFUSE_TEXT_LEN_MAX}")]
    RefuseTextLength {
        /// The text length field.
        len: usize,
    },
    /// A `Refuse` text that is not UTF-8.
    #[error("the refusal text is not UTF-8 (valid up to byte {valid_up_to})")]
    RefuseText {
        /// Bytes that are valid UTF-8.
        valid_up_to: usize,
    },
    /// An `Ack` claiming more durable than written.
    #[error(
        "an acknowledgement with durable sequence {durable} above written sequence {written}: \
         a standby cannot have made durable what it has not written"
    )]
    AckDurableAboveWritten {
        /// The written field.
        written: Sequence,
        /// The durable field.
        durable: Sequence,
    },
    /// A `Start` whose first record is 0 or beyond the one after the primary's last.
    #[error(
        "a start from sequence {from} when the primary's last record is {last}: the first \
         record sent is 1..=last+1"
    )]
    StartOutOfRange {
        /// The from-sequence field.
        from: Sequence,
        /// The primary-last field.
        last: Sequence,
    },
    /// A `Join` whose last record's epoch is above the epoch it promised.
    #[error(
        "a join whose last record has epoch {last}, above the epoch {promised} it promised: a \
         node never holds a record above its promise"
    )]
    JoinEpochAbovePromise {
        /// The last-epoch field.
        last: Epoch,
        /// The promised-epoch field.
        promised: Epoch,
    },
    /// A `Behind` whose last record's epoch is above the primary's current epoch.
    #[error(
        "a behind message whose last record has epoch {last}, above the primary's epoch \
         {epoch}: a primary never holds a record above its epoch"
    )]
    BehindEpochAboveCurrent {
        /// The last-epoch field.
        last: Epoch,
        /// The epoch field.
        epoch: Epoch,
    },
    /// A `SnapshotChunk` for a snapshot through sequence 0.
    #[error(
        "a snapshot chunk of a snapshot through sequence 0: a snapshot holds at least one record"
    )]
    SnapshotThroughZero,
    /// A `SnapshotChunk` of a snapshot file of length 0.
    #[error("a snapshot chunk of a snapshot file of 0 bytes: a snapshot file is never empty")]
    SnapshotTotalZero,
    /// A `SnapshotChunk` with no bytes.
    #[error("a snapshot chunk with no bytes")]
    SnapshotChunkEmpty,
    /// A `SnapshotChunk` with more bytes than [`SNAPSHOT_CHUNK_MAX`].
    #[error("a snapshot chunk of {len} bytes, above the limit of {SNAPSHOT_CHUNK_MAX} per message")]
    SnapshotChunkTooLong {
        /// Bytes of the chunk.
        len: usize,
    },
    /// A `SnapshotChunk` whose bytes run past the end of the snapshot file.
    #[error(
        "a snapshot chunk of {len} bytes at offset {offset} runs past the snapshot file's \
         {total_len} bytes"
    )]
    SnapshotChunkPastTotal {
        /// The offset field.
        offset: u64,
        /// Bytes of the chunk.
        len: usize,
        /// The total-length field.
        total_len: u64,
    },
}

/// Appends one whole frame holding `message` to `out`.
pub fn encode(message: &Message<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_PREFIX_LEN]);
    out.push(message.kind() as u8);
    match message {
        Message::Hello(hello) => encode_hello(hello, out),
        Message::Challenge(challenge) => encode_fixed(challenge, out),
        Message::Join(join) => encode_fixed(join, out),
        Message::Start(start) => encode_fixed(start, out),
        Message::Diverged(diverged) => encode_fixed(diverged, out),
        Message::Behind(behind) => encode_fixed(behind, out),
        Message::Records(records) => {
            let header = records_frame_header(records.first, records.count, records.bytes.len());
            out.extend_from_slice(&header[FRAME_BODY_OFFSET..]);
            out.extend_from_slice(records.bytes);
        }
        Message::Heartbeat(heartbeat) => encode_fixed(heartbeat, out),
        Message::Ack(ack) => encode_fixed(ack, out),
        Message::Refuse(refuse) => encode_refuse(refuse, out),
        Message::FetchSnapshot(fetch) => encode_fixed(fetch, out),
        Message::SnapshotChunk(chunk) => {
            let header = snapshot_chunk_frame_header(
                chunk.through,
                chunk.through_epoch,
                chunk.total_len,
                chunk.offset,
                chunk.bytes.len(),
            );
            out.extend_from_slice(&header[FRAME_BODY_OFFSET..]);
            out.extend_from_slice(chunk.bytes);
        }
    }
    let len = out.len() - start - FRAME_PREFIX_LEN;
    assert!(len <= FRAME_LEN_MAX, "a {} frame of {len} bytes", message.kind());
    put_u32(&mut out[start..], FRAME_LEN_OFFSET, u32::try_from(len).expect("below the max"));
    debug_assert_eq!(decode(&out[start..]), Ok(Some((message.clone(), out.len() - start))));
}

/// The first [`RECORDS_FRAME_HEADER_LEN`] bytes of a `Records` frame whose `count` records,
/// `records_len` bytes of already-framed records, follow it: write these, then the records
/// (straight from the journal), and the frame is whole without copying the records into it.
///
/// The records must be intact and contiguous from `first` with epochs not going down, as
/// [`Records::new`] checks; the receiver refuses the frame otherwise.
#[must_use]
pub fn records_frame_header(
    first: Sequence,
    count: u32,
    records_len: usize,
) -> [u8; RECORDS_FRAME_HEADER_LEN] {
    assert!(count >= 1, "a records message holds at least one record");
    assert!(first.0 >= 1, "sequences start at 1");
    assert!(records_len <= RECORDS_BYTES_MAX, "{records_len} bytes of records, above the max");
    assert!(records_len % RECORD_ALIGN == 0, "records are whole multiples of 16 bytes");
    assert!(records_len / RECORD_LEN_MIN >= count as usize, "{count} records in {records_len}");
    let mut header = [0u8; RECORDS_FRAME_HEADER_LEN];
    let len = KIND_LEN + RECORDS_HEADER_LEN + records_len;
    put_u32(&mut header, FRAME_LEN_OFFSET, u32::try_from(len).expect("below the max"));
    header[FRAME_KIND_OFFSET] = Kind::Records as u8;
    let body = &mut header[FRAME_BODY_OFFSET..];
    put_u64(body, RECORDS_FIRST_OFFSET, first.0);
    put_u32(body, RECORDS_COUNT_OFFSET, count);
    header
}

/// The first [`SNAPSHOT_CHUNK_FRAME_HEADER_LEN`] bytes of a `SnapshotChunk` frame whose
/// `chunk_len` bytes, the snapshot file's from `offset`, follow it: write these, then the bytes
/// (straight from the file), and the frame is whole without copying the bytes into it.
///
/// The chunk must be one the receiver accepts, as [`SnapshotChunk::new`] checks: a sender that
/// would write anything else is wrong, so this panics.
#[must_use]
pub fn snapshot_chunk_frame_header(
    through: Sequence,
    through_epoch: Epoch,
    total_len: u64,
    offset: u64,
    chunk_len: usize,
) -> [u8; SNAPSHOT_CHUNK_FRAME_HEADER_LEN] {
    // What the decoder refuses is never written: the same checks, as assertions.
    if let Err(error) = check_chunk(through, total_len, offset, chunk_len) {
        panic!("writing a snapshot chunk the receiver refuses: {error}");
    }
    let mut header = [0u8; SNAPSHOT_CHUNK_FRAME_HEADER_LEN];
    let len = KIND_LEN + SNAPSHOT_CHUNK_HEADER_LEN + chunk_len;
    assert!(len <= FRAME_LEN_MAX, "a snapshot chunk frame of {len} bytes");
    put_u32(&mut header, FRAME_LEN_OFFSET, u32::try_from(len).expect("below the max"));
    header[FRAME_KIND_OFFSET] = Kind::SnapshotChunk as u8;
    let body = &mut header[FRAME_BODY_OFFSET..];
    put_u64(body, CHUNK_THROUGH_OFFSET, through.0);
    put_u64(body, CHUNK_THROUGH_EPOCH_OFFSET, through_epoch.0);
    put_u64(body, CHUNK_TOTAL_LEN_OFFSET, total_len);
    put_u64(body, CHUNK_OFFSET_OFFSET, offset);
    header
}

/// The length field (kind and body) of the frame that starts `buf`, once its prefix has
/// arrived (`Ok(None)` before). Refuses a length out of range at once, so a reader never waits
/// for, or makes room for, a frame it would refuse.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, MessageError> {
    let Some(prefix) = buf.get(FRAME_LEN_OFFSET..FRAME_LEN_OFFSET + 4) else { return Ok(None) };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Err(MessageError::EmptyFrame);
    }
    if len > FRAME_LEN_MAX {
        return Err(MessageError::FrameTooLong { len });
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf`. `Ok(None)`: `buf` holds no whole frame yet.
/// `Ok(Some((message, consumed)))`: the message and the frame's length in bytes. Never panics.
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, MessageError> {
    let Some(len) = frame_len(buf)? else { return Ok(None) };
    let end = FRAME_PREFIX_LEN + len;
    let Some(frame) = buf.get(..end) else { return Ok(None) };
    let code = frame[FRAME_KIND_OFFSET];
    let kind = Kind::from_u8(code).ok_or(MessageError::UnknownKind(code))?;
    let message = decode_body(kind, &frame[FRAME_BODY_OFFSET..])?;
    assert_eq!(message.kind(), kind);
    Ok(Some((message, end)))
}

fn decode_body(kind: Kind, body: &[u8]) -> Result<Message<'_>, MessageError> {
    Ok(match kind {
        Kind::Hello => Message::Hello(decode_hello(body)?),
        Kind::Challenge => Message::Challenge(decode_fixed(body)?),
        Kind::Join => Message::Join(decode_fixed(body)?),
        Kind::Start => Message::Start(decode_fixed(body)?),
        Kind::Diverged => Message::Diverged(decode_fixed(body)?),
        Kind::Behind => Message::Behind(decode_fixed(body)?),
        Kind::Records => Message::Records(decode_records(body)?),
        Kind::Heartbeat => Message::Heartbeat(decode_fixed(body)?),
        Kind::Ack => Message::Ack(decode_fixed(body)?),
        Kind::Refuse => Message::Refuse(decode_refuse(body)?),
        Kind::FetchSnapshot => Message::FetchSnapshot(decode_fixed(body)?),
        Kind::SnapshotChunk => Message::SnapshotChunk(decode_snapshot_chunk(body)?),
    })
}

fn encode_hello(hello: &Hello, out: &mut Vec<u8>) {
    let cluster = hello.cluster.as_bytes();
    let start = out.len();
    out.extend_from_slice(&PROTOCOL_MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(u8::try_from(cluster.len()).expect("a cluster id is at most 64 bytes"));
    out.extend_from_slice(cluster);
    out.extend_from_slice(&hello.standby_nonce);
    let mut engine = [0u8; HELLO_ENGINE_LEN];
    let (block, more) = engine.split_at_mut(CONFIG_BLOCK_LEN);
    format::encode_config(&hello.engine, block, more);
    out.extend_from_slice(&engine);
    assert_eq!(out.len() - start, HELLO_BODY_LEN_MIN - 1 + cluster.len());
}

fn decode_hello(body: &[u8]) -> Result<Hello, MessageError> {
    let kind = Kind::Hello;
    // Magic and version first, at offsets every version keeps: a peer of another version is
    // told so, not told its hello has the wrong length.
    if body.len() < HELLO_CLUSTER_LEN_OFFSET {
        return Err(MessageError::Truncated { kind, have: body.len(), need: HELLO_BODY_LEN_MIN });
    }
    let magic = get_array::<4>(body, HELLO_MAGIC_OFFSET);
    if magic != PROTOCOL_MAGIC {
        return Err(MessageError::BadMagic { found: magic });
    }
    let version = get_u16(body, HELLO_VERSION_OFFSET);
    if version != PROTOCOL_VERSION {
        return Err(MessageError::Version { version });
    }
    if body.len() <= HELLO_CLUSTER_LEN_OFFSET {
        return Err(MessageError::Truncated { kind, have: body.len(), need: HELLO_BODY_LEN_MIN });
    }
    let cluster_len = usize::from(body[HELLO_CLUSTER_LEN_OFFSET]);
    if !(1..=CLUSTER_ID_LEN_MAX).contains(&cluster_len) {
        return Err(MessageError::ClusterId(ClusterIdError::Length { len: cluster_len }));
    }
    let nonce_offset = HELLO_CLUSTER_OFFSET + cluster_len;
    let engine_offset = nonce_offset + NONCE_LEN;
    check_variable_len(kind, body.len(), engine_offset + HELLO_ENGINE_LEN)?;
    let cluster = ClusterId::from_bytes(&body[HELLO_CLUSTER_OFFSET..nonce_offset])
        .map_err(MessageError::ClusterId)?;
    let (block, more) = body[engine_offset..][..HELLO_ENGINE_LEN].split_at(CONFIG_BLOCK_LEN);
    let engine = format::decode_config(block, more).ok_or(MessageError::EngineSettings)?;
    Ok(Hello { cluster, standby_nonce: get_array(body, nonce_offset), engine })
}

fn encode_refuse(refuse: &Refuse<'_>, out: &mut Vec<u8>) {
    let text = refuse.text.as_bytes();
    assert!(text.len() <= REFUSE_TEXT_LEN_MAX, "a refusal text of {} bytes", text.len());
    let mut fixed = [0u8; REFUSE_TEXT_OFFSET];
    fixed[REFUSE_CODE_OFFSET] = refuse.code as u8;
    put_u64(&mut fixed, REFUSE_EPOCH_OFFSET, refuse.epoch.0);
    let text_len = u16::try_from(text.len()).expect("at most 512");
    fixed[REFUSE_TEXT_LEN_OFFSET..][..2].copy_from_slice(&text_len.to_le_bytes());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(text);
}

fn decode_refuse(body: &[u8]) -> Result<Refuse<'_>, MessageError> {
    let kind = Kind::Refuse;
    if body.len() < REFUSE_TEXT_OFFSET {
        return Err(MessageError::Truncated { kind, have: body.len(), need: REFUSE_TEXT_OFFSET });
    }
    let code = body[REFUSE_CODE_OFFSET];
    let code = RefuseCode::from_u8(code).ok_or(MessageError::RefuseCode(code))?;
    let text_len = usize::from(get_u16(body, REFUSE_TEXT_LEN_OFFSET));
    if text_len > REFUSE_TEXT_LEN_MAX {
        return Err(MessageError::RefuseTextLength { len: text_len });
    }
    check_variable_len(kind, body.len(), REFUSE_TEXT_OFFSET + text_len)?;
    let text = std::str::from_utf8(&body[REFUSE_TEXT_OFFSET..])
        .map_err(|error| MessageError::RefuseText { valid_up_to: error.valid_up_to() })?;
    Ok(Refuse { code, epoch: Epoch(get_u64(body, REFUSE_EPOCH_OFFSET)), text })
}

fn decode_records(body: &[u8]) -> Result<Records<'_>, MessageError> {
    if body.len() < RECORDS_HEADER_LEN {
        let (kind, have) = (Kind::Records, body.len());
        return Err(MessageError::Truncated { kind, have, need: RECORDS_HEADER_LEN });
    }
    let first = Sequence(get_u64(body, RECORDS_FIRST_OFFSET));
    let count = get_u32(body, RECORDS_COUNT_OFFSET);
    Records::new(first, count, &body[RECORDS_RECORDS_OFFSET..])
}

fn decode_snapshot_chunk(body: &[u8]) -> Result<SnapshotChunk<'_>, MessageError> {
    if body.len() < SNAPSHOT_CHUNK_HEADER_LEN {
        let (kind, have) = (Kind::SnapshotChunk, body.len());
        return Err(MessageError::Truncated { kind, have, need: SNAPSHOT_CHUNK_HEADER_LEN });
    }
    let through = Sequence(get_u64(body, CHUNK_THROUGH_OFFSET));
    let through_epoch = Epoch(get_u64(body, CHUNK_THROUGH_EPOCH_OFFSET));
    let total_len = get_u64(body, CHUNK_TOTAL_LEN_OFFSET);
    let offset = get_u64(body, CHUNK_OFFSET_OFFSET);
    SnapshotChunk::new(through, through_epoch, total_len, offset, &body[CHUNK_BYTES_OFFSET..])
}

/// A variable-size body of `have` bytes whose fields take `need`.
fn check_variable_len(kind: Kind, have: usize, need: usize) -> Result<(), MessageError> {
    if have < need {
        return Err(MessageError::Truncated { kind, have, need });
    }
    if have > need {
        return Err(MessageError::TrailingBytes { kind, have, need });
    }
    Ok(())
}

/// `count` intact, contiguous records from `first`, back to back in `bytes`: a `Records`
/// message's body. Only [`Records::new`] makes one, so holding one means the checks passed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Records<'a> {
    first: Sequence,
    count: u32,
    bytes: &'a [u8],
}

impl<'a> Records<'a> {
    /// Checks that `bytes` is exactly `count` records, each intact (`record::check`), with
    /// sequences `first, first + 1, ...` and epochs that never go down.
    pub fn new(first: Sequence, count: u32, bytes: &'a [u8]) -> Result<Records<'a>, MessageError> {
        if count == 0 {
            return Err(MessageError::RecordsEmpty);
        }
        if first.0 == 0 || first.0.checked_add(u64::from(count) - 1).is_none() {
            return Err(MessageError::RecordsRange { first, count });
        }
        if bytes.len() > RECORDS_BYTES_MAX {
            return Err(MessageError::RecordsTooLong { len: bytes.len() });
        }
        check_records(first, count, bytes)?;
        Ok(Records { first, count, bytes })
    }

    /// The first record's sequence.
    #[must_use]
    pub fn first_sequence(&self) -> Sequence {
        self.first
    }

    /// The last record's sequence.
    #[must_use]
    pub fn last_sequence(&self) -> Sequence {
        Sequence(self.first.0 + u64::from(self.count) - 1)
    }

    /// How many records.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// All the records' bytes, back to back.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Each record's bytes, in sequence order.
    #[must_use]
    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter { bytes: self.bytes, remaining: self.count }
    }
}

impl fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("first", &self.first)
            .field("count", &self.count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = &'a [u8];
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> RecordIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &Records<'a> {
    type Item = &'a [u8];
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> RecordIter<'a> {
        self.iter()
    }
}

/// The records of a [`Records`] message, each as its own byte slice (header, payload, padding).
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            assert!(self.bytes.is_empty(), "bytes after the last checked record");
            return None;
        }
        // Checked when the `Records` was made: the header is whole and its length in range.
        let len = record_len(record::read_header(self.bytes).payload_len);
        let (record, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        self.remaining -= 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for RecordIter<'_> {}

/// Walks the records, refusing the first that is damaged, out of place or short.
fn check_records(first: Sequence, count: u32, bytes: &[u8]) -> Result<(), MessageError> {
    let mut offset = 0;
    let mut previous = Epoch(0);
    for index in 0..count {
        if offset == bytes.len() {
            return Err(MessageError::RecordsMissing { count, found: index });
        }
        // Cannot overflow: `Records::new` checked first + count - 1.
        let sequence = Sequence(first.0 + u64::from(index));
        let (header, len) = record::check(&bytes[offset..]).map_err(|source| match source {
            RecordError::Short { have, need } => {
                MessageError::RecordOverrun { index, offset, sequence, need, have }
            }
            source => MessageError::Record { index, offset, sequence, source },
        })?;
        if header.sequence != sequence {
            let found = header.sequence;
            return Err(MessageError::RecordGap { index, offset, expected: sequence, found });
        }
        if header.epoch < previous {
            let epoch = header.epoch;
            return Err(MessageError::RecordEpochWentBack { index, sequence, epoch, previous });
        }
        previous = header.epoch;
        offset += len;
    }
    if offset != bytes.len() {
        return Err(MessageError::RecordsTrailing { count, extra: bytes.len() - offset });
    }
    Ok(())
}

/// One piece of a snapshot file, `bytes` at `offset` of a file of `total_len` bytes holding every
/// record through `through`, whose epoch is `through_epoch` (0 if the primary no longer holds
/// record `through`): a `SnapshotChunk` message's body. Only [`SnapshotChunk::new`] makes
/// one, so holding one means the checks passed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SnapshotChunk<'a> {
    through: Sequence,
    through_epoch: Epoch,
    total_len: u64,
    offset: u64,
    bytes: &'a [u8],
}

impl<'a> SnapshotChunk<'a> {
    /// Checks that `through` and `total_len` are at least 1, and that `bytes` is 1 ..=
    /// [`SNAPSHOT_CHUNK_MAX`] bytes lying within the file: `offset + bytes.len() <= total_len`.
    /// Any `through_epoch` is accepted; 0 means the primary could not tell.
    pub fn new(
        through: Sequence,
        through_epoch: Epoch,
        total_len: u64,
        offset: u64,
        bytes: &'a [u8],
    ) -> Result<SnapshotChunk<'a>, MessageError> {
        check_chunk(through, total_len, offset, bytes.len())?;
        Ok(SnapshotChunk { through, through_epoch, total_len, offset, bytes })
    }

    /// The last record the snapshot holds; the same in every chunk of one transfer.
    #[must_use]
    pub fn through(&self) -> Sequence {
        self.through
    }

    /// Record `through`'s epoch, for the standby's rejoining `Join`; 0 when the primary no
    /// longer holds that record and cannot tell. The same in every chunk of one transfer.
    #[must_use]
    pub fn through_epoch(&self) -> Epoch {
        self.through_epoch
    }

    /// The snapshot file's length in bytes; the same in every chunk of one transfer.
    #[must_use]
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Where this chunk's bytes go in the file: the previous chunk's [`end`](Self::end), or 0.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the next chunk starts: `offset + bytes.len()`, never past `total_len`.
    #[must_use]
    pub fn end(&self) -> u64 {
        // Cannot overflow: `new` checked it against `total_len`.
        self.offset + self.bytes.len() as u64
    }

    /// Whether this chunk completes the file: it ends at `total_len`.
    #[must_use]
    pub fn is_last(&self) -> bool {
        self.end() == self.total_len
    }

    /// The chunk's bytes of the snapshot file.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl fmt::Debug for SnapshotChunk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("through", &self.through)
            .field("through_epoch", &self.through_epoch)
            .field("total_len", &self.total_len)
            .field("offset", &self.offset)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// The checks one chunk can show, shared by the reader ([`SnapshotChunk::new`]) and the writer
/// ([`snapshot_chunk_frame_header`]).
fn check_chunk(
    through: Sequence,
    total_len: u64,
    offset: u64,
    len: usize,
) -> Result<(), MessageError> {
    if through.0 == 0 {
        return Err(MessageError::SnapshotThroughZero);
    }
    if total_len == 0 {
        return Err(MessageError::SnapshotTotalZero);
    }
    if len == 0 {
        return Err(MessageError::SnapshotChunkEmpty);
    }
    if len > SNAPSHOT_CHUNK_MAX {
        return Err(MessageError::SnapshotChunkTooLong { len });
    }
    // An end past u64::MAX is past any total.
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > total_len) {
        return Err(MessageError::SnapshotChunkPastTotal { offset, len, total_len });
    }
    Ok(())
}

/// A message whose body has one size, written and read at its offset constants.
trait FixedBody: Sized {
    const KIND: Kind;
    const LEN: usize;
    /// Writes the fields into `body`, exactly `LEN` bytes.
    fn write(&self, body: &mut [u8]);
    /// Reads and checks the fields of `body`, exactly `LEN` bytes.
    fn read(body: &[u8]) -> Result<Self, MessageError>;
}

fn encode_fixed<T: FixedBody>(message: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + T::LEN, 0);
    message.write(&mut out[start..]);
}

fn decode_fixed<T: FixedBody>(body: &[u8]) -> Result<T, MessageError> {
    if body.len() != T::LEN {
        return Err(MessageError::BodyLength { kind: T::KIND, have: body.len(), need: T::LEN });
    }
    T::read(body)
}

impl FixedBody for Challenge {
    const KIND: Kind = Kind::Challenge;
    const LEN: usize = CHALLENGE_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        body[CHALLENGE_NONCE_OFFSET..][..NONCE_LEN].copy_from_slice(&self.primary_nonce);
        body[CHALLENGE_PROOF_OFFSET..][..PROOF_LEN].copy_from_slice(&self.primary_proof);
    }

    fn read(body: &[u8]) -> Result<Challenge, MessageError> {
        Ok(Challenge {
            primary_nonce: get_array(body, CHALLENGE_NONCE_OFFSET),
            primary_proof: get_array(body, CHALLENGE_PROOF_OFFSET),
        })
    }
}

impl FixedBody for Join {
    const KIND: Kind = Kind::Join;
    const LEN: usize = JOIN_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        // What `read` refuses is never written: a frame written is one that reads back.
        assert!(self.last_epoch <= self.promised_epoch, "a join above its promise");
        body[JOIN_PROOF_OFFSET..][..PROOF_LEN].copy_from_slice(&self.standby_proof);
        put_u64(body, JOIN_LAST_SEQUENCE_OFFSET, self.last_sequence.0);
        put_u64(body, JOIN_LAST_EPOCH_OFFSET, self.last_epoch.0);
        put_u64(body, JOIN_PROMISED_EPOCH_OFFSET, self.promised_epoch.0);
    }

    fn read(body: &[u8]) -> Result<Join, MessageError> {
        let last = Epoch(get_u64(body, JOIN_LAST_EPOCH_OFFSET));
        let promised = Epoch(get_u64(body, JOIN_PROMISED_EPOCH_OFFSET));
        if last > promised {
            return Err(MessageError::JoinEpochAbovePromise { last, promised });
        }
        Ok(Join {
            standby_proof: get_array(body, JOIN_PROOF_OFFSET),
            last_sequence: Sequence(get_u64(body, JOIN_LAST_SEQUENCE_OFFSET)),
            last_epoch: last,
            promised_epoch: promised,
        })
    }
}

impl FixedBody for Start {
    const KIND: Kind = Kind::Start;
    const LEN: usize = START_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        assert!(start_in_range(self.from_sequence, self.primary_last), "a start out of range");
        put_u64(body, START_EPOCH_OFFSET, self.epoch.0);
        put_u64(body, START_FROM_OFFSET, self.from_sequence.0);
        put_u64(body, START_PRIMARY_LAST_OFFSET, self.primary_last.0);
    }

    fn read(body: &[u8]) -> Result<Start, MessageError> {
        let from = Sequence(get_u64(body, START_FROM_OFFSET));
        let last = Sequence(get_u64(body, START_PRIMARY_LAST_OFFSET));
        if !start_in_range(from, last) {
            return Err(MessageError::StartOutOfRange { from, last });
        }
        let epoch = Epoch(get_u64(body, START_EPOCH_OFFSET));
        Ok(Start { epoch, from_sequence: from, primary_last: last })
    }
}

/// Whether `from` is a first record a primary whose last record is `last` can send.
fn start_in_range(from: Sequence, last: Sequence) -> bool {
    from.0 >= 1 && from.0 - 1 <= last.0
}

impl FixedBody for Diverged {
    const KIND: Kind = Kind::Diverged;
    const LEN: usize = DIVERGED_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        put_u64(body, DIVERGED_EPOCH_OFFSET, self.epoch.0);
        put_u64(body, DIVERGED_KEEP_THROUGH_OFFSET, self.keep_through.0);
    }

    fn read(body: &[u8]) -> Result<Diverged, MessageError> {
        Ok(Diverged {
            epoch: Epoch(get_u64(body, DIVERGED_EPOCH_OFFSET)),
            keep_through: Sequence(get_u64(body, DIVERGED_KEEP_THROUGH_OFFSET)),
        })
    }
}

impl FixedBody for Behind {
    const KIND: Kind = Kind::Behind;
    const LEN: usize = BEHIND_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        put_u64(body, BEHIND_EPOCH_OFFSET, self.epoch.0);
        put_u64(body, BEHIND_LAST_SEQUENCE_OFFSET, self.last_sequence.0);
        put_u64(body, BEHIND_LAST_EPOCH_OFFSET, self.last_epoch.0);
    }

    fn read(body: &[u8]) -> Result<Behind, MessageError> {
        let epoch = Epoch(get_u64(body, BEHIND_EPOCH_OFFSET));
        let last_epoch = Epoch(get_u64(body, BEHIND_LAST_EPOCH_OFFSET));
        if last_epoch > epoch {
            return Err(MessageError::BehindEpochAboveCurrent { last: last_epoch, epoch });
        }
        let last_sequence = Sequence(get_u64(body, BEHIND_LAST_SEQUENCE_OFFSET));
        Ok(Behind { epoch, last_sequence, last_epoch })
    }
}

impl FixedBody for Heartbeat {
    const KIND: Kind = Kind::Heartbeat;
    const LEN: usize = HEARTBEAT_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        put_u64(body, HEARTBEAT_EPOCH_OFFSET, self.epoch.0);
        put_u64(body, HEARTBEAT_LAST_OFFSET, self.last_sequence.0);
        put_u64(body, HEARTBEAT_SENT_AT_OFFSET, self.sent_at_ms);
        body[HEARTBEAT_ANSWERING_OFFSET] = self.answering as u8;
    }

    fn read(body: &[u8]) -> Result<Heartbeat, MessageError> {
        let answering = body[HEARTBEAT_ANSWERING_OFFSET];
        Ok(Heartbeat {
            epoch: Epoch(get_u64(body, HEARTBEAT_EPOCH_OFFSET)),
            last_sequence: Sequence(get_u64(body, HEARTBEAT_LAST_OFFSET)),
            sent_at_ms: get_u64(body, HEARTBEAT_SENT_AT_OFFSET),
            answering: Answering::from_u8(answering).ok_or(MessageError::Answering(answering))?,
        })
    }
}

impl FixedBody for Ack {
    const KIND: Kind = Kind::Ack;
    const LEN: usize = ACK_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        assert!(self.durable <= self.written, "an ack with durable above written");
        put_u64(body, ACK_WRITTEN_OFFSET, self.written.0);
        put_u64(body, ACK_DURABLE_OFFSET, self.durable.0);
        put_u64(body, ACK_ECHO_OFFSET, self.echo_ms);
        body[ACK_CATCHING_UP_OFFSET] = u8::from(self.catching_up);
    }

    fn read(body: &[u8]) -> Result<Ack, MessageError> {
        let written = Sequence(get_u64(body, ACK_WRITTEN_OFFSET));
        let durable = Sequence(get_u64(body, ACK_DURABLE_OFFSET));
        if durable > written {
            return Err(MessageError::AckDurableAboveWritten { written, durable });
        }
        let catching_up = match body[ACK_CATCHING_UP_OFFSET] {
            0 => false,
            1 => true,
            other => return Err(MessageError::AckCatchingUp(other)),
        };
        Ok(Ack { written, durable, echo_ms: get_u64(body, ACK_ECHO_OFFSET), catching_up })
    }
}

impl FixedBody for FetchSnapshot {
    const KIND: Kind = Kind::FetchSnapshot;
    const LEN: usize = FETCH_SNAPSHOT_BODY_LEN;

    fn write(&self, body: &mut [u8]) {
        body[FETCH_SNAPSHOT_PROOF_OFFSET..][..PROOF_LEN].copy_from_slice(&self.standby_proof);
        put_u64(body, FETCH_SNAPSHOT_PROMISED_OFFSET, self.promised_epoch.0);
    }

    fn read(body: &[u8]) -> Result<FetchSnapshot, MessageError> {
        Ok(FetchSnapshot {
            standby_proof: get_array(body, FETCH_SNAPSHOT_PROOF_OFFSET),
            promised_epoch: Epoch(get_u64(body, FETCH_SNAPSHOT_PROMISED_OFFSET)),
        })
    }
}

fn put_u32(out: &mut [u8], offset: usize, value: u32) {
    out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], offset: usize, value: u64) {
    out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes[offset..offset + N].try_into().expect("N bytes")
}

fn get_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(get_array(bytes, offset))
}

fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(get_array(bytes, offset))
}

fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(get_array(bytes, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(message, &mut out);
        out
    }

    /// A frame written out by hand: the length prefix, the kind, the body.
    fn frame(kind: u8, body: &[&[u8]]) -> Vec<u8> {
        let body = body.concat();
        let mut out = u32::try_from(1 + body.len()).unwrap().to_le_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    fn le(value: u64) -> [u8; 8] {
        value.to_le_bytes()
    }

    #[test]
    fn the_handshake_messages_are_the_documented_bytes() {
        // Goal: the layouts in the byte diagram are the bytes on the wire, written out here by
        // hand, so a change to the format cannot pass unnoticed.
        let cluster = ClusterId::new("eu-1").unwrap();
        let engine = EngineConfig::small();
        let hello = Message::Hello(Hello { cluster, standby_nonce: [7; 32], engine });
        // Shard 1, no key quota; SKUs 64, orders 1,024, coupons 256, batches 16, holdings
        // 1,024, request keys 4,096, quantity 100; a 60,000 ms window; no live-order quota.
        let settings: &[&[u8]] = &[
            &[1, 0],
            &[0, 0],
            &[64, 0, 0, 0],
            &[0, 4, 0, 0],
            &[0, 1, 0, 0],
            &[16, 0, 0, 0],
            &[0, 4, 0, 0],
            &[0, 16, 0, 0],
            &[100, 0, 0, 0],
            &[0x60, 0xEA, 0, 0, 0, 0, 0, 0],
            &[0, 0],
        ];
        let head: &[&[u8]] = &[b"RFRP", &[6, 0], &[4], b"eu-1", &[7; 32]];
        let expected = frame(1, &[head, settings].concat());
        assert_eq!(encoded(&hello), expected);
        assert_eq!(expected.len(), 4 + 1 + 39 + 4 + 42);

        let challenge =
            Message::Challenge(Challenge { primary_nonce: [1; 32], primary_proof: [2; 32] });
        assert_eq!(encoded(&challenge), frame(2, &[&[1; 32], &[2; 32]]));

        let join = Message::Join(Join {
            standby_proof: [3; 32],
            last_sequence: Sequence(10),
            last_epoch: Epoch(2),
            promised_epoch: Epoch(3),
        });
        assert_eq!(encoded(&join), frame(3, &[&[3; 32], &le(10), &le(2), &le(3)]));

        let start =
            Start { epoch: Epoch(3), from_sequence: Sequence(11), primary_last: Sequence(20) };
        assert_eq!(encoded(&Message::Start(start)), frame(4, &[&le(3), &le(11), &le(20)]));

        let diverged = Diverged { epoch: Epoch(3), keep_through: Sequence(8) };
        assert_eq!(encoded(&Message::Diverged(diverged)), frame(5, &[&le(3), &le(8)]));

        let behind = Behind { epoch: Epoch(4), last_sequence: Sequence(8), last_epoch: Epoch(3) };
        assert_eq!(encoded(&Message::Behind(behind)), frame(12, &[&le(4), &le(8), &le(3)]));
    }

    #[test]
    fn the_stream_messages_are_the_documented_bytes() {
        // Goal: as above for the messages after the handshake, and a records frame is its
        // 17-byte header followed by the records unchanged.
        let heartbeat = Heartbeat {
            epoch: Epoch(3),
            last_sequence: Sequence(20),
            sent_at_ms: 1_000,
            answering: Answering::AfterStandby,
        };
        assert_eq!(
            encoded(&Message::Heartbeat(heartbeat)),
            frame(7, &[&le(3), &le(20), &le(1_000), &[1]])
        );
        for answering in Answering::ALL {
            assert_eq!(Answering::from_u8(answering as u8), Some(answering));
        }
        assert_eq!(Answering::from_u8(3), None);

        let ack =
            Ack { written: Sequence(20), durable: Sequence(19), echo_ms: 1_000, catching_up: true };
        assert_eq!(encoded(&Message::Ack(ack)), frame(8, &[&le(20), &le(19), &le(1_000), &[1]]));
        let caught_up = Ack { catching_up: false, ..ack };
        assert_eq!(
            encoded(&Message::Ack(caught_up)),
            frame(8, &[&le(20), &le(19), &le(1_000), &[0]])
        );

        let refuse = Message::Refuse(Refuse::new(RefuseCode::NeedsSnapshot, Epoch(3), "retired"));
        assert_eq!(encoded(&refuse), frame(9, &[&[8], &le(3), &[7, 0], b"retired"]));

        let mut buf = record::RecordBuf::default();
        let tick = ringfence_core::Sequenced {
            sequence: Sequence(21),
            timestamp: ringfence_core::Timestamp(5),
            command: ringfence_core::Command::Tick,
        };
        let record = buf.encode(Epoch(3), &tick).to_vec();
        let records = Records::new(Sequence(21), 1, &record).unwrap();
        let expected = frame(6, &[&le(21), &1u32.to_le_bytes(), &record]);
        assert_eq!(encoded(&Message::Records(records)), expected);
        assert_eq!(records_frame_header(Sequence(21), 1, record.len()), expected[..17]);
    }

    #[test]
    fn the_snapshot_messages_are_the_documented_bytes() {
        // Goal: as above for the snapshot transfer, and a chunk frame is its 37-byte header
        // followed by the file's bytes unchanged.
        let fetch = FetchSnapshot { standby_proof: [4; 32], promised_epoch: Epoch(9) };
        assert_eq!(encoded(&Message::FetchSnapshot(fetch)), frame(10, &[&[4; 32], &le(9)]));

        let chunk = SnapshotChunk::new(Sequence(100), Epoch(7), 10, 6, b"abcd").unwrap();
        assert_eq!(chunk.through_epoch(), Epoch(7));
        let expected = frame(11, &[&le(100), &le(7), &le(10), &le(6), b"abcd"]);
        assert_eq!(encoded(&Message::SnapshotChunk(chunk)), expected);
        let header = snapshot_chunk_frame_header(Sequence(100), Epoch(7), 10, 6, 4);
        assert_eq!(header, expected[..37]);
        assert_eq!(expected.len(), 4 + 1 + 32 + 4);
    }

    #[test]
    fn a_chunk_is_last_when_it_reaches_the_total() {
        // Goal: `end` is where the next chunk starts, and only the chunk ending at the file's
        // length completes the transfer, whatever its size.
        let first = SnapshotChunk::new(Sequence(9), Epoch(2), 10, 0, b"abcdef").unwrap();
        assert_eq!((first.end(), first.is_last()), (6, false));
        let last = SnapshotChunk::new(Sequence(9), Epoch(2), 10, first.end(), b"ghij").unwrap();
        assert_eq!((last.end(), last.is_last()), (10, true));
        let whole = SnapshotChunk::new(Sequence(9), Epoch(2), 1, 0, b"x").unwrap();
        assert!(whole.is_last(), "a one-byte file in one chunk");
        let tail = SnapshotChunk::new(Sequence(9), Epoch(2), u64::MAX, u64::MAX - 1, b"y").unwrap();
        assert_eq!((tail.end(), tail.is_last()), (u64::MAX, true));
    }

    #[test]
    #[should_panic(expected = "writing a snapshot chunk the receiver refuses")]
    fn a_chunk_header_past_the_total_is_never_written() {
        // Goal: the writer's side of the decoder's check: a sender cannot frame a chunk that
        // runs past the file it belongs to.
        let _ = snapshot_chunk_frame_header(Sequence(1), Epoch(1), 10, 8, 3);
    }

    #[test]
    fn kinds_and_refusal_codes_are_their_wire_values() {
        // Goal: the codes are the documented numbers, and every number names at most one.
        for (code, kind) in (1..).zip(Kind::ALL) {
            assert_eq!(kind as u8, code);
            assert_eq!(Kind::from_u8(code), Some(kind));
        }
        for (value, code) in (1..).zip(RefuseCode::ALL) {
            assert_eq!(code as u8, value);
            assert_eq!(RefuseCode::from_u8(value), Some(code));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(13), None);
        assert_eq!(RefuseCode::from_u8(0), None);
        assert_eq!(RefuseCode::from_u8(11), None);
    }

    #[test]
    fn a_long_refusal_text_is_cut_on_a_character_boundary() {
        // Goal: `Refuse::new` keeps any text sendable: at most 512 bytes, still UTF-8.
        let text = "é".repeat(400);
        let refuse = Refuse::new(RefuseCode::Internal, Epoch(1), &text);
        assert_eq!(refuse.text.len(), 512);
        let text = format!("x{}", "é".repeat(400));
        let refuse = Refuse::new(RefuseCode::Internal, Epoch(1), &text);
        assert_eq!(refuse.text.len(), 511, "the 2-byte character across 512 is dropped");
        let message = Message::Refuse(refuse);
        assert_eq!(decode(&encoded(&message)).unwrap().unwrap().0, message);
    }
}
