//! The snapshot image's byte layout, and the per-entry encodings that the state digests hash.
//!
//! An image is a fixed header, then every table as a `u32` entry count followed by that many
//! fixed-size entries. All integers are little-endian; nothing depends on how the engine's
//! structs sit in memory, so a new field in a struct is a new [`IMAGE_FORMAT_VERSION`], never a
//! silent change. Fixed-size entries let a reader check a table's count against the bytes left
//! before it allocates, and let the digests hash each entry as one short byte string.
//!
//! ```text
//! header (56 bytes)
//!   0  image format version  u16  IMAGE_FORMAT_VERSION
//!   2  encoding version      u16  codec::ENCODING_VERSION of the stored outcomes
//!   4  shard                 u16  ─┐
//!   6  id generator started  u8    │ engine scalars: what the state digest hashes
//!   7  zero                  u8    │
//!   8  id generator ms       u64   │ last millisecond the id generator used
//!  16  id generator counter  u64   │ counter within it (at most 4095)
//!  24  now                   u64   │ logical time, ms
//!  32  last sequence         u64   │
//!  40  running hash          u64   │
//!  48  keys head             u64  ─┘ absolute position of the first remembered request key
//!
//! tables, in this order, each `count u32 | count × entry`:
//!   SKUs        79  id u64 | stock u64 | available u64 | reserved u64 | sold u64
//!                   | price_cents u64 | per_user_limit u32 | open u8
//!                   | payment_timeout_ms u64 | sale_start fixopt u64 | sale_end fixopt u64
//!   orders      71  id u64 | user u64 | sku slot u32 | qty u32 | amount_cents u64 | state u8
//!                   | created_at u64 | expires_at u64 | coupon slot fixopt u32
//!                   | payment_ref fixopt [16]
//!   finished     4  order slot u32                 (queue order, oldest first)
//!   deadlines   20  expires_at u64 | order u64 | order slot u32
//!   holdings    20  user u64 | sku u64 | units u32
//!   batches     52  id u64 | quantity u32 | remaining u32 | per_user_limit u32
//!                   | discount_cents u64 | min_amount_cents u64 | valid_from u64
//!                   | valid_until u64
//!   coupons     29  id u64 | batch slot u32 | user u64 | state u8 | order u64
//!   claims      20  user u64 | batch u64 | count u32
//!   request    121  user u64 (0: the command names none) | key [16] | expires_at u64 |
//!   keys            fingerprint u64 | outcome length u8 | outcome [80]: canonical outcome,
//!                   zero padded (queue order). A key is scoped to the user its command names.
//!
//! fixopt T  = presence u8 (0 or 1) | T, all zero when absent (fixed size, one encoding)
//! state u8  = order state as in codec (00 reserved .. 06 refunded)
//! coupon    = 00 available, 01 locked, 02 used, 03 expired; order is the locking or using
//!   state     order's id, zero for available and expired
//! ```
//!
//! Slot numbers are positions in the SKU, order, batch and coupon tables. Holdings, claims and
//! deadlines are written in whatever order the engine holds them; restoring does not depend on
//! it, and [`EngineImage::canonicalize`] sorts them. Decoding refuses any byte that is not
//! canonical (flags, tags, padding, lengths, counts, trailing bytes) and never panics; the
//! cross-table checks run when the image is restored ([`Engine::from_image`]).
//!
//! A snapshot's writer and loader never hold an image's bytes whole. [`EngineImage::encode_pieces`]
//! hands them over a bounded piece at a time (a table at a time, as many whole entries as fit),
//! exactly the bytes [`EngineImage::encode_into`] appends; [`EngineImage::decode_pieces`] takes
//! them back the same way, with [`EngineImage::decode`]'s checks and errors. It is given the
//! image's length, which a snapshot's header records, so it still checks each table's count
//! against the bytes left before it allocates; and a configuration, whose capacities bound each
//! table too, so a decoded image never takes more than [`EngineImage::memory_max`]. Neither
//! does I/O: the caller's closures hand the pieces to a file and take them from one.
//!
//! [`Engine::from_image`]: super::Engine::from_image

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::{Batch, Coupon, Deadline, EngineImage, Order, RememberedKey, Sku};
use crate::codec::{
    self, DecodeError, ENCODING_VERSION, OUTCOME_LEN_MAX, Reader, Sink, Writer, coupon_state_parts,
    order_state_byte, read_coupon_state, read_order_state,
};
use crate::config::EngineConfig;
use crate::snowflake::{COUNTER_BITS, Snowflake};
use crate::types::{
    BatchId, CouponId, OrderId, PaymentRef, RequestKey, Sequence, SkuId, Timestamp, UserId,
};

/// Version of the image layout described in the module documentation.
pub const IMAGE_FORMAT_VERSION: u16 = 2;

const VERSION_OFFSET: usize = 0;
const ENCODING_OFFSET: usize = VERSION_OFFSET + 2;
const SHARD_OFFSET: usize = ENCODING_OFFSET + 2;
const STARTED_OFFSET: usize = SHARD_OFFSET + 2;
const ZERO_OFFSET: usize = STARTED_OFFSET + 1;
const MILLIS_OFFSET: usize = ZERO_OFFSET + 1;
const COUNTER_OFFSET: usize = MILLIS_OFFSET + 8;
const NOW_OFFSET: usize = COUNTER_OFFSET + 8;
const LAST_SEQUENCE_OFFSET: usize = NOW_OFFSET + 8;
const RUNNING_HASH_OFFSET: usize = LAST_SEQUENCE_OFFSET + 8;
const KEYS_HEAD_OFFSET: usize = RUNNING_HASH_OFFSET + 8;
/// Bytes before the first table.
pub(super) const HEADER_LEN: usize = KEYS_HEAD_OFFSET + 8;

const _: () = assert!(HEADER_LEN == 56);
// The 8-byte scalars sit at multiples of 8, so the header reads well in a hex dump.
const _: () = assert!(MILLIS_OFFSET % 8 == 0);
const _: () = assert!(KEYS_HEAD_OFFSET % 8 == 0);
// The state digest hashes header bytes 4..56, as the image module documents.
const _: () = assert!(HEADER_LEN - SHARD_OFFSET == 52);

/// Presence byte and room of a fixed-size option.
const fn fixopt(len: usize) -> usize {
    1 + len
}

const SKU_ENTRY_LEN: usize = 6 * 8 + 4 + 1 + 8 + 2 * fixopt(8);
const ORDER_ENTRY_LEN: usize = 8 + 8 + 4 + 4 + 8 + 1 + 8 + 8 + fixopt(4) + fixopt(16);
const FINISHED_ENTRY_LEN: usize = 4;
const DEADLINE_ENTRY_LEN: usize = 8 + 8 + 4;
const HOLDING_ENTRY_LEN: usize = 8 + 8 + 4;
const BATCH_ENTRY_LEN: usize = 8 + 3 * 4 + 4 * 8;
const COUPON_ENTRY_LEN: usize = 8 + 4 + 8 + 1 + 8;
const CLAIM_ENTRY_LEN: usize = 8 + 8 + 4;
const KEY_ENTRY_LEN: usize = 8 + 16 + 8 + 8 + 1 + OUTCOME_LEN_MAX;
/// The longest entry: a stack buffer this long holds any entry's bytes.
const ENTRY_LEN_MAX: usize = KEY_ENTRY_LEN;
/// The shortest piece an image is streamed in: the header, or any one entry, fits in it.
const PIECE_LEN_MIN: usize = if HEADER_LEN > ENTRY_LEN_MAX { HEADER_LEN } else { ENTRY_LEN_MAX };

// Entry sizes as the byte diagram documents them.
const _: () = assert!(SKU_ENTRY_LEN == 79);
const _: () = assert!(ORDER_ENTRY_LEN == 71);
const _: () = assert!(FINISHED_ENTRY_LEN == 4);
const _: () = assert!(DEADLINE_ENTRY_LEN == 20);
const _: () = assert!(HOLDING_ENTRY_LEN == 20);
const _: () = assert!(BATCH_ENTRY_LEN == 52);
const _: () = assert!(COUPON_ENTRY_LEN == 29);
const _: () = assert!(CLAIM_ENTRY_LEN == 20);
const _: () = assert!(KEY_ENTRY_LEN == 121);
// `entry_bytes` writes any entry into a buffer of `ENTRY_LEN_MAX` bytes.
const _: () = assert!(ENTRY_LEN_MAX >= SKU_ENTRY_LEN);
const _: () = assert!(ENTRY_LEN_MAX >= ORDER_ENTRY_LEN);
const _: () = assert!(ENTRY_LEN_MAX >= BATCH_ENTRY_LEN);
// A piece holds the image header, or any one entry; a table's count is shorter than both.
const _: () = assert!(PIECE_LEN_MIN >= HEADER_LEN && PIECE_LEN_MIN >= ENTRY_LEN_MAX);

/// A snapshot image that cannot be decoded. Every variant names what is wrong and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageDecodeError {
    /// Fewer bytes than the header.
    #[error(
        "snapshot image is {len} bytes, shorter than its {HEADER_LEN}-byte header: it was cut \
         short; restore from an older snapshot and replay the journal"
    )]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// Written by a newer build.
    #[error(
        "snapshot image format version {found} is newer than this build, which reads version \
         {supported}: run a build that reads it, or restore from an older snapshot and replay"
    )]
    FutureVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// A version no build ever wrote.
    #[error(
        "snapshot image format version {found} was never written (this build reads version \
         {supported}): the image is damaged; restore from an older snapshot and replay"
    )]
    UnknownVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// An image of an older version this build no longer restores.
    #[error(
        "snapshot image format version {found} was written by an older build and is not \
         restored by this one (version {supported}: request keys are scoped to their user): \
         recover by replaying the journal without this snapshot"
    )]
    RetiredVersion {
        /// Version in the image.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// Stored outcomes in a canonical encoding this build does not read.
    #[error(
        "snapshot image stores outcomes in canonical encoding version {found}, but this build \
         reads version {supported}: run a build that reads it, or restore from an older \
         snapshot and replay"
    )]
    UnsupportedEncoding {
        /// Encoding version in the image.
        found: u16,
        /// Encoding version this build reads.
        supported: u16,
    },
    /// An id generator state that no generator can reach.
    #[error(
        "snapshot image's id generator state (shard {shard}, millisecond {millis}, counter \
         {counter}, started {started}) is impossible: the image is damaged"
    )]
    BadIdGenerator {
        /// Shard.
        shard: u16,
        /// Last millisecond used.
        millis: u64,
        /// Counter within it.
        counter: u64,
        /// Whether an id was issued.
        started: bool,
    },
    /// A table's count needs more bytes than are left.
    #[error(
        "snapshot image's {table} table at offset {offset} counts {count} entries, more than \
         the {remaining} bytes after it hold: the image is damaged or cut short"
    )]
    TableTooLong {
        /// The table.
        table: &'static str,
        /// Entries claimed.
        count: usize,
        /// Offset of the count.
        offset: usize,
        /// Bytes left after the count.
        remaining: usize,
    },
    /// A table's count is more than the configuration allows it: the image could not be
    /// restored under it, so it is not read further ([`EngineImage::decode_pieces`]).
    #[error(
        "snapshot image's {table} table at offset {offset} counts {count} entries, more than \
         the {max} the configuration allows: restore it under the capacities it was taken \
         with, or from an older snapshot and replay"
    )]
    OverCapacity {
        /// The table.
        table: &'static str,
        /// Entries claimed.
        count: usize,
        /// Offset of the count.
        offset: usize,
        /// Entries the configuration allows.
        max: usize,
    },
    /// A field is not canonical.
    #[error("snapshot image is damaged: {0}; restore from an older snapshot and replay")]
    Bytes(#[from] DecodeError),
}

/// An entry of one of the image's tables, with its fixed-size encoding.
pub(super) trait Entry: Sized {
    /// The table's name in errors.
    const TABLE: &'static str;
    /// Bytes of one entry.
    const LEN: usize;
    /// Writes exactly [`Entry::LEN`] bytes.
    fn write(&self, w: &mut Writer<'_>);
    /// Reads exactly [`Entry::LEN`] bytes.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// XXH3-64 of one entry's bytes: what the order-independent digests sum.
pub(super) fn entry_hash<E: Entry>(entry: &E) -> u64 {
    let mut bytes = [0_u8; ENTRY_LEN_MAX];
    xxh3_64(entry_bytes(entry, &mut bytes))
}

/// Wrapping sum of the entry hashes: the same for the same entries in any order.
pub(super) fn sum_of<E: Entry>(entries: impl Iterator<Item = E>) -> u64 {
    entries.fold(0_u64, |sum, entry| sum.wrapping_add(entry_hash(&entry)))
}

/// XXH3-64 of the entries' bytes concatenated: for queues, whose order decides the future.
pub(super) fn ordered_hash<E: Entry>(entries: impl Iterator<Item = E>) -> u64 {
    let mut hasher = Xxh3Default::new();
    let mut bytes = [0_u8; ENTRY_LEN_MAX];
    entries.for_each(|entry| hasher.update(entry_bytes(&entry, &mut bytes)));
    hasher.digest()
}

fn entry_bytes<'b, E: Entry>(entry: &E, bytes: &'b mut [u8; ENTRY_LEN_MAX]) -> &'b [u8] {
    let mut writer = Writer::new(&mut bytes[..E::LEN]);
    entry.write(&mut writer);
    assert_eq!(writer.len(), E::LEN);
    &bytes[..E::LEN]
}

/// The engine scalars of the header: shard, id generator, clock, sequence, hash, keys head.
pub(super) struct Scalars {
    pub shard: u16,
    pub ids: Snowflake,
    pub now: Timestamp,
    pub last_sequence: Sequence,
    pub running_hash: u64,
    pub keys_head: u64,
}

impl Scalars {
    /// The header bytes, versions included.
    pub(super) fn header(&self) -> [u8; HEADER_LEN] {
        assert_eq!(self.ids.shard(), self.shard, "the id generator belongs to the shard");
        let (millis, counter, started) = self.ids.state();
        // What `Snowflake::from_state` accepts when the header is read back.
        assert!(counter < 1 << COUNTER_BITS, "an id counter past its 12 bits");
        assert!(started || (millis, counter) == (0, 0), "an idle id generator that moved");
        let mut header = [0_u8; HEADER_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            header[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(VERSION_OFFSET, &IMAGE_FORMAT_VERSION.to_le_bytes());
        put(ENCODING_OFFSET, &ENCODING_VERSION.to_le_bytes());
        put(SHARD_OFFSET, &self.shard.to_le_bytes());
        put(STARTED_OFFSET, &[u8::from(started), 0]);
        put(MILLIS_OFFSET, &millis.to_le_bytes());
        put(COUNTER_OFFSET, &counter.to_le_bytes());
        put(NOW_OFFSET, &self.now.0.to_le_bytes());
        put(LAST_SEQUENCE_OFFSET, &self.last_sequence.0.to_le_bytes());
        put(RUNNING_HASH_OFFSET, &self.running_hash.to_le_bytes());
        put(KEYS_HEAD_OFFSET, &self.keys_head.to_le_bytes());
        debug_assert!(Scalars::decode(&header).is_ok(), "a header that does not read back");
        header
    }

    /// The header bytes that are engine state, not format: what the state digest hashes.
    pub(super) fn state_bytes(&self) -> [u8; HEADER_LEN - SHARD_OFFSET] {
        let header = self.header();
        let mut bytes = [0_u8; HEADER_LEN - SHARD_OFFSET];
        bytes.copy_from_slice(&header[SHARD_OFFSET..]);
        bytes
    }

    fn decode(header: &[u8; HEADER_LEN]) -> Result<Scalars, ImageDecodeError> {
        let u16_at = |offset: usize| u16::from_le_bytes([header[offset], header[offset + 1]]);
        let u64_at = |offset: usize| {
            let mut bytes = [0_u8; 8];
            bytes.copy_from_slice(&header[offset..offset + 8]);
            u64::from_le_bytes(bytes)
        };
        let (found, supported) = (u16_at(VERSION_OFFSET), IMAGE_FORMAT_VERSION);
        if found > supported {
            return Err(ImageDecodeError::FutureVersion { found, supported });
        }
        if found == 1 {
            // Version 1 remembered request keys without the user they belong to.
            return Err(ImageDecodeError::RetiredVersion { found, supported });
        }
        if found != supported {
            return Err(ImageDecodeError::UnknownVersion { found, supported });
        }
        let (found, supported) = (u16_at(ENCODING_OFFSET), ENCODING_VERSION);
        if found != supported {
            return Err(ImageDecodeError::UnsupportedEncoding { found, supported });
        }
        let started = match header[STARTED_OFFSET] {
            0 => false,
            1 => true,
            byte => {
                let field = "id generator started";
                Err(DecodeError::BadFlag { field, byte, offset: STARTED_OFFSET })?
            }
        };
        if header[ZERO_OFFSET] != 0 {
            Err(DecodeError::BadPadding { field: "header", offset: ZERO_OFFSET })?;
        }
        let (shard, millis, counter) =
            (u16_at(SHARD_OFFSET), u64_at(MILLIS_OFFSET), u64_at(COUNTER_OFFSET));
        let ids = Snowflake::from_state(shard, millis, counter, started)
            .ok_or(ImageDecodeError::BadIdGenerator { shard, millis, counter, started })?;
        assert_eq!(ids.shard(), shard, "the id generator read for another shard");
        Ok(Scalars {
            shard,
            ids,
            now: Timestamp(u64_at(NOW_OFFSET)),
            last_sequence: Sequence(u64_at(LAST_SEQUENCE_OFFSET)),
            running_hash: u64_at(RUNNING_HASH_OFFSET),
            keys_head: u64_at(KEYS_HEAD_OFFSET),
        })
    }
}

impl EngineImage {
    pub(super) fn scalars(&self) -> Scalars {
        Scalars {
            shard: self.shard,
            ids: self.ids,
            now: self.now,
            last_sequence: self.last_sequence,
            running_hash: self.running_hash,
            keys_head: self.keys_head,
        }
    }

    /// Bytes [`EngineImage::encode_into`] appends.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        encoded_len_of(self.table_lens())
    }

    /// The most bytes [`EngineImage::encode_into`] appends for an image of an engine under
    /// `config`: every table as full as restoring allows.
    #[must_use]
    pub fn encoded_len_max(config: &EngineConfig) -> u64 {
        let len = encoded_len_of(EngineImage::table_lens_max(config));
        // Every table has room for an entry, so the fullest image holds one of each.
        assert!(len > HEADER_LEN + 9 * 4, "a full image of empty tables");
        len as u64
    }

    /// The shortest `piece_len` [`EngineImage::encode_pieces`] and
    /// [`EngineImage::decode_pieces`] take: the header, or any one entry, fits in it.
    pub const PIECE_LEN_MIN: usize = PIECE_LEN_MIN;

    /// Appends the image in the layout of the module documentation (version
    /// [`IMAGE_FORMAT_VERSION`]) to `out`, growing it at most once. The same bytes as
    /// [`EngineImage::encode_pieces`] hands over, all in one buffer.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len();
        out.reserve(len);
        out.extend_from_slice(&self.scalars().header());
        put_table(out, &self.skus);
        put_table(out, &self.orders);
        put_table(out, &self.finished);
        put_table(out, &self.deadlines);
        put_table(out, &self.holdings);
        put_table(out, &self.batches);
        put_table(out, &self.coupons);
        put_table(out, &self.claims);
        put_table(out, &self.keys);
        assert_eq!(out.len() - start, len);
        debug_assert_eq!(
            EngineImage::decode(&out[start..]).as_ref(),
            Ok(self),
            "an image that does not decode to itself"
        );
    }

    /// Hands `put` the bytes [`EngineImage::encode_into`] appends, front to back, in pieces of
    /// at most `piece_len` bytes assembled in `buffer`: a table at a time, as many whole
    /// entries at a time as fit. `buffer` is cleared and grows to `piece_len` at most once, so
    /// the caller holds the image and one piece, never the whole encoding (a snapshot's writer
    /// streams its file this way). Stops at the first error `put` returns.
    pub fn encode_pieces<E>(
        &self,
        buffer: &mut Vec<u8>,
        piece_len: usize,
        put: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        assert!(piece_len >= PIECE_LEN_MIN, "a piece of {piece_len} bytes holds no entry");
        buffer.clear();
        buffer.reserve_exact(piece_len);
        let room = buffer.capacity();
        let mut pieces = Pieces { buffer, piece_len, put, handed: 0 };
        pieces.append(&self.scalars().header())?;
        pieces.table(&self.skus)?;
        pieces.table(&self.orders)?;
        pieces.table(&self.finished)?;
        pieces.table(&self.deadlines)?;
        pieces.table(&self.holdings)?;
        pieces.table(&self.batches)?;
        pieces.table(&self.coupons)?;
        pieces.table(&self.claims)?;
        pieces.table(&self.keys)?;
        pieces.hand_over()?;
        // Every byte handed over, through a buffer that never outgrew one piece.
        assert_eq!(pieces.handed, self.encoded_len(), "pieces of another length than the image");
        assert_eq!(pieces.buffer.capacity(), room, "the piece buffer grew");
        Ok(())
    }

    /// Decodes an image of `len` bytes that `take` hands over front to back, a piece of at
    /// most `piece_len` bytes at a time through `buffer` (scratch, grown to `piece_len` at
    /// most once; `take` fills each slice it is given entirely, or fails). The checks and
    /// errors are [`EngineImage::decode`]'s on the same bytes: `len` tells how many bytes
    /// follow each table's count, so a count is refused before anything is allocated, as
    /// there. Each table is also bounded by `config`'s capacity for it
    /// ([`ImageDecodeError::OverCapacity`]), so the image decoded never takes more than
    /// [`EngineImage::memory_max`] of `config`. Reads no byte past `len`, and none after the
    /// first problem. Never panics on bad bytes. The outer result is `take`'s failure; the
    /// inner one is the image, or why its bytes are not one.
    pub fn decode_pieces<E>(
        len: usize,
        config: &EngineConfig,
        buffer: &mut Vec<u8>,
        piece_len: usize,
        take: &mut dyn FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<Result<EngineImage, ImageDecodeError>, E> {
        assert!(piece_len >= PIECE_LEN_MIN, "a piece of {piece_len} bytes holds no entry");
        // Scratch: grown to a piece once, and read over, never zeroed again.
        if buffer.len() < piece_len {
            buffer.resize(piece_len, 0);
        }
        let room = buffer.capacity();
        let lens_max = EngineImage::table_lens_max(config);
        let mut feed = Feed { take, buffer, piece_len, len, offset: 0 };
        let decoded = feed.image(&lens_max);
        // Never past the image's end, through a buffer that never outgrew one piece.
        assert!(feed.offset <= len, "read {} bytes of a {len}-byte image", feed.offset);
        assert_eq!(feed.buffer.capacity(), room, "the piece buffer grew");
        match decoded {
            Ok(image) => {
                // Every byte was read, and each table's count covered its entries exactly.
                assert_eq!(image.encoded_len(), len, "decoding consumed a different length");
                Ok(Ok(image))
            }
            Err(Halt::Image(error)) => Ok(Err(error)),
            Err(Halt::Source(error)) => Err(error),
        }
    }

    /// Decodes an image written by [`EngineImage::encode_into`], validating every byte.
    /// Never panics; allocates no more than the bytes given justify. Whether the tables agree
    /// with each other and with a configuration is checked by [`super::Engine::from_image`].
    pub fn decode(bytes: &[u8]) -> Result<EngineImage, ImageDecodeError> {
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ImageDecodeError::TooShort { len: bytes.len() });
        };
        let scalars = Scalars::decode(header)?;
        let mut r = Reader::with_base(body, HEADER_LEN);
        let image = EngineImage {
            shard: scalars.shard,
            now: scalars.now,
            last_sequence: scalars.last_sequence,
            running_hash: scalars.running_hash,
            ids: scalars.ids,
            keys_head: scalars.keys_head,
            skus: read_table(&mut r)?,
            orders: read_table(&mut r)?,
            finished: read_table(&mut r)?,
            deadlines: read_table(&mut r)?,
            holdings: read_table(&mut r)?,
            batches: read_table(&mut r)?,
            coupons: read_table(&mut r)?,
            claims: read_table(&mut r)?,
            keys: read_table(&mut r)?,
        };
        r.finish("snapshot image")?;
        // Every byte was read, and each table's count covered its entries exactly.
        assert_eq!(image.encoded_len(), bytes.len(), "decoding consumed a different length");
        Ok(image)
    }
}

fn put_table<E: Entry>(out: &mut Vec<u8>, entries: &[E]) {
    let count = u32::try_from(entries.len()).expect("tables hold fewer than 2^32 entries");
    out.extend_from_slice(&count.to_le_bytes());
    append_entries(out, entries);
}

/// Appends `entries`' fixed-size encodings to `out`.
fn append_entries<E: Entry>(out: &mut Vec<u8>, entries: &[E]) {
    let start = out.len();
    out.resize(start + entries.len() * E::LEN, 0);
    let mut writer = Writer::new(&mut out[start..]);
    for entry in entries {
        entry.write(&mut writer);
    }
    assert_eq!(writer.len(), entries.len() * E::LEN);
    assert_eq!(out.len() - start, entries.len() * E::LEN, "entries of another length");
}

/// An image's bytes assembled into pieces of at most `piece_len` bytes, each handed to `put`
/// as the next would not fit beside it ([`EngineImage::encode_pieces`]).
struct Pieces<'a, E> {
    buffer: &'a mut Vec<u8>,
    piece_len: usize,
    put: &'a mut dyn FnMut(&[u8]) -> Result<(), E>,
    /// Bytes handed to `put` so far.
    handed: usize,
}

impl<E> Pieces<'_, E> {
    /// Hands over the piece so far if `len` more bytes would not fit beside it.
    fn make_room(&mut self, len: usize) -> Result<(), E> {
        assert!(len <= self.piece_len, "{len} bytes never fit a {}-byte piece", self.piece_len);
        if self.buffer.len() + len > self.piece_len {
            self.hand_over()?;
        }
        assert!(self.buffer.len() + len <= self.piece_len, "no room made for {len} bytes");
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.make_room(bytes.len())?;
        self.buffer.extend_from_slice(bytes);
        assert!(self.buffer.len() <= self.piece_len, "a piece past its length");
        Ok(())
    }

    /// A table: its count, then its entries, as many to a piece as fit.
    fn table<T: Entry>(&mut self, entries: &[T]) -> Result<(), E> {
        let count = u32::try_from(entries.len()).expect("tables hold fewer than 2^32 entries");
        self.append(&count.to_le_bytes())?;
        // At least one entry fits a piece: `encode_pieces` took no shorter one.
        let per_piece = self.piece_len / T::LEN;
        assert!(per_piece >= 1, "a piece too short for a {} entry", T::TABLE);
        for chunk in entries.chunks(per_piece) {
            self.make_room(chunk.len() * T::LEN)?;
            append_entries(self.buffer, chunk);
        }
        Ok(())
    }

    /// Hands the piece so far to `put`, and starts the next.
    fn hand_over(&mut self) -> Result<(), E> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        assert!(self.buffer.len() <= self.piece_len, "a piece past its length");
        (self.put)(self.buffer)?;
        self.handed += self.buffer.len();
        self.buffer.clear();
        Ok(())
    }
}

/// Why [`EngineImage::decode_pieces`] stopped: its source failed, or the bytes are no image.
enum Halt<E> {
    Source(E),
    Image(ImageDecodeError),
}

impl<E> From<ImageDecodeError> for Halt<E> {
    fn from(error: ImageDecodeError) -> Halt<E> {
        Halt::Image(error)
    }
}

impl<E> From<DecodeError> for Halt<E> {
    fn from(error: DecodeError) -> Halt<E> {
        Halt::Image(ImageDecodeError::Bytes(error))
    }
}

/// An image's bytes taken from a source a piece at a time ([`EngineImage::decode_pieces`]):
/// the reading side of [`Pieces`], checking what [`EngineImage::decode`] checks.
struct Feed<'a, E> {
    take: &'a mut dyn FnMut(&mut [u8]) -> Result<(), E>,
    buffer: &'a mut Vec<u8>,
    piece_len: usize,
    /// The image's length.
    len: usize,
    /// Offset in the image of the next byte to take.
    offset: usize,
}

impl<E> Feed<'_, E> {
    /// The next `n` bytes of the image, taken into the buffer.
    fn next(&mut self, n: usize) -> Result<&[u8], Halt<E>> {
        assert!(n <= self.piece_len, "{n} bytes taken into a {}-byte piece", self.piece_len);
        assert!(n <= self.len - self.offset, "{n} bytes taken past the image's end");
        let piece = &mut self.buffer[..n];
        (self.take)(piece).map_err(Halt::Source)?;
        self.offset += n;
        Ok(piece)
    }

    fn image(&mut self, lens_max: &[usize; 9]) -> Result<EngineImage, Halt<E>> {
        if self.len < HEADER_LEN {
            return Err(ImageDecodeError::TooShort { len: self.len }.into());
        }
        let mut header = [0_u8; HEADER_LEN];
        header.copy_from_slice(self.next(HEADER_LEN)?);
        let scalars = Scalars::decode(&header)?;
        let image = EngineImage {
            shard: scalars.shard,
            now: scalars.now,
            last_sequence: scalars.last_sequence,
            running_hash: scalars.running_hash,
            ids: scalars.ids,
            keys_head: scalars.keys_head,
            skus: self.table(lens_max[0])?,
            orders: self.table(lens_max[1])?,
            finished: self.table(lens_max[2])?,
            deadlines: self.table(lens_max[3])?,
            holdings: self.table(lens_max[4])?,
            batches: self.table(lens_max[5])?,
            coupons: self.table(lens_max[6])?,
            claims: self.table(lens_max[7])?,
            keys: self.table(lens_max[8])?,
        };
        if self.offset < self.len {
            let (offset, count) = (self.offset, self.len - self.offset);
            Err(DecodeError::TrailingBytes { what: "snapshot image", offset, count })?;
        }
        // Each table was bounded by the capacity its position in `lens_max` gives.
        assert!(image.table_lens().iter().zip(lens_max).all(|(len, max)| len <= max));
        Ok(image)
    }

    /// One table: its count, checked against the bytes left and the capacity `max` before
    /// anything is allocated, then its entries a piece at a time.
    fn table<T: Entry>(&mut self, max: usize) -> Result<Vec<T>, Halt<E>> {
        let offset = self.offset;
        if self.len - offset < 4 {
            return Err(DecodeError::Truncated { field: T::TABLE, offset }.into());
        }
        let count = u32::from_le_bytes(self.next(4)?.try_into().expect("four bytes")) as usize;
        let remaining = self.len - self.offset;
        if count > remaining / T::LEN {
            let table = T::TABLE;
            return Err(ImageDecodeError::TableTooLong { table, count, offset, remaining }.into());
        }
        if count > max {
            return Err(
                ImageDecodeError::OverCapacity { table: T::TABLE, count, offset, max }.into()
            );
        }
        let mut entries = Vec::with_capacity(count);
        let per_piece = self.piece_len / T::LEN;
        while entries.len() < count {
            let n = per_piece.min(count - entries.len());
            let base = self.offset;
            let mut r = Reader::with_base(self.next(n * T::LEN)?, base);
            for _ in 0..n {
                entries.push(T::read(&mut r)?);
            }
            assert_eq!(r.remaining(), 0, "a piece of entries not read to its end");
        }
        assert_eq!(self.offset - offset, 4 + count * T::LEN, "a table read past its entries");
        Ok(entries)
    }
}

fn read_table<E: Entry>(r: &mut Reader<'_>) -> Result<Vec<E>, ImageDecodeError> {
    let offset = r.offset();
    let count = r.u32(E::TABLE)? as usize;
    let remaining = r.remaining();
    // Checked before allocating, so a damaged count cannot ask for more memory than the image.
    if count > remaining / E::LEN {
        return Err(ImageDecodeError::TableTooLong { table: E::TABLE, count, offset, remaining });
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let start = r.offset();
        entries.push(E::read(r)?);
        assert_eq!(r.offset() - start, E::LEN);
    }
    assert_eq!(r.offset() - offset, 4 + count * E::LEN, "a table read past its entries");
    Ok(entries)
}

/// A fixed-size option: presence byte, then the value's bytes, all zero when absent.
fn put_fixopt<const N: usize>(w: &mut Writer<'_>, value: Option<[u8; N]>) {
    let start = w.len();
    w.flag(value.is_some());
    w.bytes(&value.unwrap_or([0; N]));
    assert_eq!(w.len() - start, fixopt(N), "a fixed option is its presence byte and room");
}

fn read_fixopt<const N: usize>(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Option<[u8; N]>, DecodeError> {
    let start = r.offset();
    let present = r.flag(field)?;
    let offset = r.offset();
    let bytes = r.array::<N>(field)?;
    if !present && bytes != [0; N] {
        let at = bytes.iter().position(|&b| b != 0).unwrap_or(0);
        return Err(DecodeError::BadPadding { field, offset: offset + at });
    }
    assert_eq!(r.offset() - start, fixopt(N), "a fixed option read at another length");
    Ok(present.then_some(bytes))
}

fn read_fixopt_u64(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u64>, DecodeError> {
    Ok(read_fixopt::<8>(r, field)?.map(u64::from_le_bytes))
}

impl Entry for Sku {
    const TABLE: &'static str = "SKU";
    const LEN: usize = SKU_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        for value in [self.id.0, self.stock, self.available, self.reserved, self.sold] {
            w.u64(value);
        }
        w.u64(self.price_cents);
        w.u32(self.per_user_limit);
        w.flag(self.open);
        w.u64(self.payment_timeout_ms);
        put_fixopt(w, self.sale_start.map(|t| t.0.to_le_bytes()));
        put_fixopt(w, self.sale_end.map(|t| t.0.to_le_bytes()));
        assert_eq!(w.len() - start, Self::LEN, "a SKU entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Sku, DecodeError> {
        let start = r.offset();
        let sku = Sku {
            id: SkuId(r.u64("SKU id")?),
            stock: r.u64("stock")?,
            available: r.u64("available")?,
            reserved: r.u64("reserved")?,
            sold: r.u64("sold")?,
            price_cents: r.u64("price_cents")?,
            per_user_limit: r.u32("per_user_limit")?,
            open: r.flag("open")?,
            payment_timeout_ms: r.u64("payment_timeout_ms")?,
            sale_start: read_fixopt_u64(r, "sale_start")?.map(Timestamp),
            sale_end: read_fixopt_u64(r, "sale_end")?.map(Timestamp),
        };
        assert_eq!(r.offset() - start, Self::LEN, "a SKU entry read at another length");
        Ok(sku)
    }
}

impl Entry for Order {
    const TABLE: &'static str = "order";
    const LEN: usize = ORDER_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u64(self.user.0);
        w.u32(self.sku_slot);
        w.u32(self.qty);
        w.u64(self.amount_cents);
        w.u8(order_state_byte(self.state));
        w.u64(self.created_at.0);
        w.u64(self.expires_at.0);
        put_fixopt(w, self.coupon_slot.map(u32::to_le_bytes));
        put_fixopt(w, self.payment_ref.map(|reference| reference.0));
        assert_eq!(w.len() - start, Self::LEN, "an order entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Order, DecodeError> {
        let start = r.offset();
        let order = Order {
            id: OrderId(r.u64("order id")?),
            user: UserId(r.u64("user")?),
            sku_slot: r.u32("SKU slot")?,
            qty: r.u32("qty")?,
            amount_cents: r.u64("amount_cents")?,
            state: read_order_state(r)?,
            created_at: Timestamp(r.u64("created_at")?),
            expires_at: Timestamp(r.u64("expires_at")?),
            coupon_slot: read_fixopt::<4>(r, "coupon slot")?.map(u32::from_le_bytes),
            payment_ref: read_fixopt::<16>(r, "payment_ref")?.map(PaymentRef),
        };
        assert_eq!(r.offset() - start, Self::LEN, "an order entry read at another length");
        Ok(order)
    }
}

impl Entry for u32 {
    const TABLE: &'static str = "finished-order";
    const LEN: usize = FINISHED_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u32(*self);
        assert_eq!(w.len() - start, Self::LEN, "a finished entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
        let start = r.offset();
        let slot = r.u32("finished order slot")?;
        assert_eq!(r.offset() - start, Self::LEN, "a finished entry read at another length");
        Ok(slot)
    }
}

impl Entry for Deadline {
    const TABLE: &'static str = "deadline";
    const LEN: usize = DEADLINE_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (expires_at, order, slot) = *self;
        w.u64(expires_at.0);
        w.u64(order.0);
        w.u32(slot);
        assert_eq!(w.len() - start, Self::LEN, "a deadline entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Deadline, DecodeError> {
        let start = r.offset();
        let expires_at = Timestamp(r.u64("deadline")?);
        let deadline =
            (expires_at, OrderId(r.u64("deadline order")?), r.u32("deadline order slot")?);
        assert_eq!(r.offset() - start, Self::LEN, "a deadline entry read at another length");
        Ok(deadline)
    }
}

/// A holdings entry: units a user holds of a SKU with a per-user limit.
pub(super) type Holding = (UserId, SkuId, u32);

impl Entry for Holding {
    const TABLE: &'static str = "holding";
    const LEN: usize = HOLDING_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (user, sku, units) = *self;
        w.u64(user.0);
        w.u64(sku.0);
        w.u32(units);
        assert_eq!(w.len() - start, Self::LEN, "a holding entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Holding, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("holding user")?);
        let holding = (user, SkuId(r.u64("holding SKU")?), r.u32("holding units")?);
        assert_eq!(r.offset() - start, Self::LEN, "a holding entry read at another length");
        Ok(holding)
    }
}

impl Entry for Batch {
    const TABLE: &'static str = "coupon batch";
    const LEN: usize = BATCH_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u32(self.quantity);
        w.u32(self.remaining);
        w.u32(self.per_user_limit);
        w.u64(self.discount_cents);
        w.u64(self.min_amount_cents);
        w.u64(self.valid_from.0);
        w.u64(self.valid_until.0);
        assert_eq!(w.len() - start, Self::LEN, "a batch entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Batch, DecodeError> {
        let start = r.offset();
        let batch = Batch {
            id: BatchId(r.u64("batch id")?),
            quantity: r.u32("quantity")?,
            remaining: r.u32("remaining")?,
            per_user_limit: r.u32("per_user_limit")?,
            discount_cents: r.u64("discount_cents")?,
            min_amount_cents: r.u64("min_amount_cents")?,
            valid_from: Timestamp(r.u64("valid_from")?),
            valid_until: Timestamp(r.u64("valid_until")?),
        };
        assert_eq!(r.offset() - start, Self::LEN, "a batch entry read at another length");
        Ok(batch)
    }
}

impl Entry for Coupon {
    const TABLE: &'static str = "coupon";
    const LEN: usize = COUPON_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.id.0);
        w.u32(self.batch_slot);
        w.u64(self.user.0);
        let (tag, order) = coupon_state_parts(self.state);
        w.u8(tag);
        w.u64(order.map_or(0, |order| order.0));
        assert_eq!(w.len() - start, Self::LEN, "a coupon entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Coupon, DecodeError> {
        let start = r.offset();
        let id = CouponId(r.u64("coupon id")?);
        let batch_slot = r.u32("batch slot")?;
        let user = UserId(r.u64("coupon user")?);
        let state = read_coupon_state(r, |r| Ok(OrderId(r.u64("coupon order")?)))?;
        if coupon_state_parts(state).1.is_none() {
            // Available and expired coupons name no order; their order field is room.
            let offset = r.offset();
            if r.u64("coupon order")? != 0 {
                return Err(DecodeError::BadPadding { field: "coupon order", offset });
            }
        }
        assert_eq!(r.offset() - start, Self::LEN, "a coupon entry read at another length");
        Ok(Coupon { id, batch_slot, user, state })
    }
}

/// A claims entry: coupons a user claimed from a batch.
pub(super) type Claim = (UserId, BatchId, u32);

impl Entry for Claim {
    const TABLE: &'static str = "coupon claim";
    const LEN: usize = CLAIM_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        let (user, batch, count) = *self;
        w.u64(user.0);
        w.u64(batch.0);
        w.u32(count);
        assert_eq!(w.len() - start, Self::LEN, "a claim entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<Claim, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("claim user")?);
        let claim = (user, BatchId(r.u64("claim batch")?), r.u32("claim count")?);
        assert_eq!(r.offset() - start, Self::LEN, "a claim entry read at another length");
        Ok(claim)
    }
}

impl Entry for RememberedKey {
    const TABLE: &'static str = "request-key";
    const LEN: usize = KEY_ENTRY_LEN;

    fn write(&self, w: &mut Writer<'_>) {
        let start = w.len();
        w.u64(self.user.0);
        w.bytes16(&self.key.0);
        w.u64(self.expires_at.0);
        w.u64(self.fingerprint);
        let mut outcome = [0_u8; OUTCOME_LEN_MAX];
        let len = codec::encode_outcome(&self.outcome, &mut outcome);
        // The pair of the reader's length check: an outcome is at least its tag.
        assert!(len >= 1, "an empty stored outcome");
        debug_assert_eq!(codec::decode_outcome_at(&outcome[..len], 0), Ok(self.outcome));
        w.u8(u8::try_from(len).expect("OUTCOME_LEN_MAX fits a byte"));
        w.bytes(&outcome);
        assert_eq!(w.len() - start, Self::LEN, "a request-key entry of another length");
    }

    fn read(r: &mut Reader<'_>) -> Result<RememberedKey, DecodeError> {
        let start = r.offset();
        let user = UserId(r.u64("request key user")?);
        let key = RequestKey(r.array("request key")?);
        let expires_at = Timestamp(r.u64("request key expiry")?);
        let fingerprint = r.u64("request fingerprint")?;
        let len_offset = r.offset();
        let len = usize::from(r.u8("stored outcome length")?);
        if len == 0 || len > OUTCOME_LEN_MAX {
            let field = "stored outcome length";
            return Err(DecodeError::BadLength { field, len, offset: len_offset });
        }
        let base = r.offset();
        let room = r.take(OUTCOME_LEN_MAX, "stored outcome")?;
        let outcome = codec::decode_outcome_at(&room[..len], base)?;
        if let Some(at) = room[len..].iter().position(|&b| b != 0) {
            let offset = base + len + at;
            return Err(DecodeError::BadPadding { field: "stored outcome", offset });
        }
        assert_eq!(r.offset() - start, Self::LEN, "a request-key entry read at another length");
        Ok(RememberedKey { user, key, expires_at, fingerprint, outcome })
    }
}

/// Bytes of an encoded image whose tables hold `lens` entries, in the image's table order.
fn encoded_len_of(lens: [usize; 9]) -> usize {
    let entry_lens = [
        Sku::LEN,
        Order::LEN,
        u32::LEN,
        Deadline::LEN,
        Holding::LEN,
        Batch::LEN,
        Coupon::LEN,
        Claim::LEN,
        RememberedKey::LEN,
    ];
    assert!(entry_lens.iter().all(|&len| len > 0), "an entry encoded in no bytes");
    let tables: usize = lens.iter().zip(entry_lens).map(|(&len, entry)| len * entry).sum();
    HEADER_LEN + lens.len() * 4 + tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Action, Command, CreateCouponBatch, CreateSku, Reserve, Sequenced};
    use crate::engine::Engine;
    use crate::outcome::Outcome;

    /// An engine with entries in every table: two SKUs (one limited per user, so holdings), a
    /// coupon batch with claims, orders reserved (some with coupons), paid, shipped, cancelled
    /// and expired (finished orders, deadlines), and the request keys of them all; `users`
    /// buyers, and a quarter as many again who reserve late.
    fn populated(users: u64) -> Engine {
        let mut engine = Engine::new(EngineConfig::small());
        let mut sequence = Sequence(0);
        let mut now = Timestamp(1_700_000_000_000);
        let mut run = |engine: &mut Engine, command: Command, after_ms: u64| {
            sequence = sequence.next();
            now = now.plus_ms(after_ms);
            engine.apply(&Sequenced { sequence, timestamp: now, command })
        };
        let key = |n: u64| RequestKey((u128::from(n) << 8 | 0x5A).to_le_bytes());
        let client = |n: u64, action: Action| Command::Client { key: key(n), action };
        for (sku, per_user_limit) in [(1, 0), (2, 3)] {
            let spec = CreateSku {
                sku: SkuId(sku),
                stock: 1_000,
                price_cents: 1_500,
                per_user_limit,
                payment_timeout_ms: 60_000,
                sale_start: None,
                sale_end: None,
            };
            run(&mut engine, client(sku, Action::CreateSku(spec)), 1);
        }
        let batch = CreateCouponBatch {
            batch: BatchId(9),
            quantity: 50,
            per_user_limit: 0,
            discount_cents: 300,
            min_amount_cents: 1_000,
            valid_from: Timestamp(0),
            valid_until: Timestamp(u64::MAX / 2),
        };
        run(&mut engine, client(3, Action::CreateCouponBatch(batch)), 1);
        for user in 1..=users {
            let n = 1_000 * user;
            let claim = Action::ClaimCoupon { user: UserId(user), batch: BatchId(9) };
            let coupon = match run(&mut engine, client(n, claim), 1) {
                Outcome::CouponClaimed { coupon, .. } if user % 3 == 0 => Some(coupon),
                _ => None,
            };
            let reserve = Reserve { user: UserId(user), sku: SkuId(1 + user % 2), qty: 1, coupon };
            let Outcome::Reserved { order, amount_cents, .. } =
                run(&mut engine, client(n + 1, Action::Reserve(reserve)), 1)
            else {
                panic!("user {user} could not reserve");
            };
            let payment_ref = PaymentRef([user as u8; 16]);
            let follow_up = match user % 4 {
                0 => Action::Pay { order, payment_ref, amount_cents },
                1 => Action::Cancel { order, user: UserId(user) },
                _ => continue,
            };
            run(&mut engine, client(n + 2, follow_up), 1);
            if user % 8 == 0 {
                run(&mut engine, client(n + 3, Action::Ship { order }), 1);
            }
        }
        // Half the reservations left unpaid expire; the later ones stay reserved.
        run(&mut engine, Command::Tick, 40_000);
        for user in users + 1..=users + users / 4 {
            let reserve = Reserve { user: UserId(user), sku: SkuId(2), qty: 2, coupon: None };
            run(&mut engine, client(1_000 * user, Action::Reserve(reserve)), 1);
        }
        run(&mut engine, Command::Tick, 30_000);
        engine
    }

    /// Decodes `bytes` as an image of `bytes.len()` bytes taken `piece_len` bytes at most at a
    /// time; the source never runs dry, since no byte past the length is asked for.
    fn decode_in_pieces(
        bytes: &[u8],
        piece_len: usize,
        config: &EngineConfig,
    ) -> Result<EngineImage, ImageDecodeError> {
        let mut rest = bytes;
        let mut take = |into: &mut [u8]| -> Result<(), ()> {
            let (head, tail) = rest.split_at_checked(into.len()).ok_or(())?;
            into.copy_from_slice(head);
            rest = tail;
            Ok(())
        };
        let mut buffer = Vec::new();
        EngineImage::decode_pieces(bytes.len(), config, &mut buffer, piece_len, &mut take)
            .expect("the source holds every byte asked for")
    }

    fn encode_in_pieces(image: &EngineImage, piece_len: usize) -> (Vec<u8>, usize) {
        let (mut bytes, mut pieces, mut buffer) = (Vec::new(), 0, Vec::new());
        let mut put = |piece: &[u8]| -> Result<(), ()> {
            assert!(!piece.is_empty() && piece.len() <= piece_len, "a piece of {}", piece.len());
            bytes.extend_from_slice(piece);
            pieces += 1;
            Ok(())
        };
        image.encode_pieces(&mut buffer, piece_len, &mut put).expect("nothing fails");
        (bytes, pieces)
    }

    #[test]
    fn pieces_of_every_length_are_the_bytes_encode_into_writes() {
        // Goal: a populated engine's image streamed in pieces of any length, the shortest
        // included, is byte for byte the one buffer `encode_into` fills, and decodes back to
        // the image, piece by piece, under the engine's configuration.
        let engine = populated(120);
        let image = engine.to_image_unsorted();
        // The generator bites: every table holds entries.
        assert!(image.table_lens().iter().all(|&len| len > 0), "{:?}", image.table_lens());
        let mut whole = Vec::new();
        image.encode_into(&mut whole);
        assert!(whole.len() > 20 * PIECE_LEN_MIN, "an image too short to cut: {}", whole.len());
        for piece_len in [PIECE_LEN_MIN, PIECE_LEN_MIN + 1, 1_000, 4_096, whole.len() + 1] {
            let (bytes, pieces) = encode_in_pieces(&image, piece_len);
            assert!(bytes == whole, "pieces of {piece_len} bytes differ from encode_into's");
            assert!(pieces >= whole.len().div_ceil(piece_len), "{pieces} pieces of {piece_len}");
            let decoded = decode_in_pieces(&bytes, piece_len, engine.config()).expect("decodes");
            assert_eq!(decoded, image, "pieces of {piece_len} decode to another image");
        }
        let restored = Engine::from_image(EngineConfig::small(), &image).expect("restores");
        assert_eq!(restored.state_digest(), engine.state_digest());
    }

    #[test]
    fn decoding_in_pieces_refuses_what_decode_refuses_with_the_same_error() {
        // Goal: every cut and every flipped byte of a real image gets the same answer from
        // the piecewise decoder (the cut's length given as the image's) as from `decode`:
        // the same image, or the same error at the same offset; pieces short enough that
        // entries straddle none of them and tables span many.
        let engine = populated(24);
        let mut bytes = Vec::new();
        engine.to_image_unsorted().encode_into(&mut bytes);
        assert!(engine.to_image().table_lens().iter().all(|&len| len > 0), "an empty table");
        let config = engine.config();
        // Room for any count a flip can leave within the image's bytes, so that no count is
        // refused for the configuration's sake, which `decode` knows nothing of.
        let roomy = EngineConfig {
            skus_max: 1 << 20,
            orders_max: 1 << 20,
            coupons_max: 1 << 20,
            batches_max: 1 << 20,
            holdings_max: 1 << 20,
            request_keys_max: 1 << 20,
            ..EngineConfig::small()
        };
        assert!(bytes.len() < 1 << 20, "counts a flip makes may pass the roomy capacities");
        for cut in 0..bytes.len() {
            let piecewise = decode_in_pieces(&bytes[..cut], PIECE_LEN_MIN, config);
            assert_eq!(piecewise, EngineImage::decode(&bytes[..cut]), "cut at {cut}");
            assert!(piecewise.is_err(), "an image cut at {cut} decoded");
        }
        let (mut refused, mut decoded) = (0, 0);
        for at in 0..bytes.len() {
            for mask in [0x01_u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= mask;
                let piecewise = decode_in_pieces(&damaged, 500, &roomy);
                assert_eq!(piecewise, EngineImage::decode(&damaged), "flip {mask:#x} at {at}");
                if piecewise.is_ok() { decoded += 1 } else { refused += 1 }
            }
        }
        assert!(refused > 0 && decoded > 0, "{refused} refused, {decoded} decoded");
    }

    #[test]
    fn a_count_past_the_configured_capacity_is_refused_before_it_is_read() {
        // Goal: a table that holds more entries than the configuration allows (here an image
        // of the small configuration decoded under one with room for fewer orders) is refused
        // at its count, with what the configuration allows, and the source is asked for
        // nothing after it.
        let engine = populated(24);
        let image = engine.to_image_unsorted();
        let mut bytes = Vec::new();
        image.encode_into(&mut bytes);
        let orders = image.orders.len();
        let tight = EngineConfig { orders_max: orders as u32 - 1, ..EngineConfig::small() };
        let count_at = HEADER_LEN + 4 + image.skus.len() * SKU_ENTRY_LEN;
        let refused = decode_in_pieces(&bytes, 4_096, &tight);
        assert_eq!(
            refused,
            Err(ImageDecodeError::OverCapacity {
                table: "order",
                count: orders,
                offset: count_at,
                max: orders - 1
            })
        );
        let mut taken = 0;
        let mut take = |into: &mut [u8]| -> Result<(), ()> {
            into.copy_from_slice(&bytes[taken..taken + into.len()]);
            taken += into.len();
            Ok(())
        };
        let mut buffer = Vec::new();
        let result = EngineImage::decode_pieces(bytes.len(), &tight, &mut buffer, 4_096, &mut take);
        assert!(matches!(result, Ok(Err(ImageDecodeError::OverCapacity { .. }))));
        assert_eq!(taken, count_at + 4, "bytes taken past the refused count");
        let fits = decode_in_pieces(&bytes, 4_096, &EngineConfig::small()).expect("decodes");
        assert_eq!(fits, image);
    }

    #[test]
    fn a_failing_source_or_sink_stops_the_stream_with_its_error() {
        // Goal: the closures' own errors (a file that cannot be written or read) come back as
        // they were, and nothing is handed over or taken after them.
        let image = populated(24).to_image_unsorted();
        let (mut handed, mut buffer) = (0, Vec::new());
        let mut put = |_: &[u8]| -> Result<(), &'static str> {
            handed += 1;
            if handed == 3 { Err("disk full") } else { Ok(()) }
        };
        assert_eq!(image.encode_pieces(&mut buffer, 1_000, &mut put), Err("disk full"));
        assert_eq!(handed, 3, "pieces handed over after the failure");
        let mut bytes = Vec::new();
        image.encode_into(&mut bytes);
        let (mut at, mut takes) = (0, 0);
        let mut take = |into: &mut [u8]| -> Result<(), &'static str> {
            takes += 1;
            if takes == 3 {
                return Err("read failed");
            }
            into.copy_from_slice(&bytes[at..at + into.len()]);
            at += into.len();
            Ok(())
        };
        let (len, config) = (image.encoded_len(), EngineConfig::small());
        let failed = EngineImage::decode_pieces(len, &config, &mut buffer, 1_000, &mut take);
        assert_eq!(failed, Err("read failed"));
        assert_eq!(takes, 3, "bytes taken after the failure");
    }
}
