//! Blocking whole-frame I/O over any `Read`/`Write`, for the socket shell around the protocol:
//! a reader that fills one preallocated buffer a frame at a time and hands out messages
//! borrowing it, and writers that send a message, a batch of journaled records or a piece of a
//! snapshot file.
//!
//! The reader keeps a partial frame across calls: with a read timeout set on the socket, a
//! `WouldBlock` or `TimedOut` error returns to the caller (to send a heartbeat, say) and the
//! next call carries on where the last one stopped. Any other error leaves the connection out
//! of step; close it.
//!
//! A handshake reads otherwise ([`FrameReader::read_handshake_message`]): its peer has not yet
//! proved it holds the secret, so a read timeout, which a byte every so often resets, bounds
//! nothing. Every read waits only for the time left before one deadline, and a frame longer than
//! any message of the handshake ([`HANDSHAKE_FRAME_LEN_MAX`]) is refused after its prefix.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringfence_core::{Epoch, Sequence};

use crate::message::{
    self, FRAME_LEN_MAX, FRAME_PREFIX_LEN, HANDSHAKE_FRAME_LEN_MAX, Message, MessageError,
};

/// Why no message was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The peer closed the connection between two frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection part way through a frame.
    #[error("the peer closed the connection {have} bytes into a frame of {need}")]
    ClosedMidFrame {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes of the whole frame (or of its prefix, while that was incomplete).
        need: usize,
    },
    /// The connection failed (or, for `WouldBlock`/`TimedOut`, its read timeout passed).
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a message of this protocol version.
    #[error("the peer sent a malformed message: {0}")]
    Message(#[from] MessageError),
    /// During the handshake, the peer announced a frame longer than any handshake message.
    #[error(
        "a frame of {len} bytes during the handshake, above its limit of {len_max}: the peer is \
         not a ringfence replication node of this version"
    )]
    HandshakeFrameTooLong {
        /// The length prefix.
        len: usize,
        /// The handshake's limit, [`HANDSHAKE_FRAME_LEN_MAX`].
        len_max: usize,
    },
    /// The handshake's deadline passed before the frame arrived whole.
    #[error(
        "the handshake's time ran out with {have} of {need} bytes of a frame received: the peer \
         is too slow, or is not a ringfence replication node"
    )]
    HandshakeDeadline {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes of the whole frame (or of its prefix, while that was incomplete).
        need: usize,
    },
}

impl WireError {
    /// Whether this is a read timeout, after which reading again resumes the frame.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if is_timeout(e))
    }
}

/// A reader whose reads can be told how long to wait at most: a socket.
pub trait ReadWait: Read {
    /// Makes each following read wait at most `wait` (which is not zero) for a byte.
    fn set_read_wait(&mut self, wait: Duration) -> io::Result<()>;
}

impl ReadWait for TcpStream {
    fn set_read_wait(&mut self, wait: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(wait))
    }
}

/// What bounds the reads of one frame.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The longest len field accepted.
    len_max: usize,
    /// When the frame must have arrived whole; `None`: each read waits as the reader does.
    deadline: Option<Instant>,
}

/// Reads whole frames from `R` into one buffer, allocated once at the largest frame size.
pub struct FrameReader<R> {
    reader: R,
    buf: Box<[u8]>,
    /// Bytes of the current frame read so far.
    filled: usize,
    /// Whether the frame in `buf` was handed out (or refused) and the next read starts afresh.
    consumed: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader of frames from `reader`.
    pub fn new(reader: R) -> FrameReader<R> {
        let buf = vec![0u8; FRAME_PREFIX_LEN + FRAME_LEN_MAX].into_boxed_slice();
        FrameReader { reader, buf, filled: 0, consumed: false }
    }

    /// Reads the next whole frame and decodes it. A length prefix out of range is refused
    /// before any of the body is read.
    pub fn read_message(&mut self) -> Result<Message<'_>, WireError> {
        let bounds = Bounds { len_max: FRAME_LEN_MAX, deadline: None };
        self.read_bounded(bounds, |_, _| unreachable!("no deadline, no wait to set"))
    }

    /// Reads the next whole frame within `bounds`, setting each read's wait with `set_wait`
    /// when there is a deadline.
    fn read_bounded(
        &mut self,
        bounds: Bounds,
        mut set_wait: impl FnMut(&mut R, Duration) -> io::Result<()>,
    ) -> Result<Message<'_>, WireError> {
        assert!(bounds.len_max <= FRAME_LEN_MAX, "the buffer holds FRAME_LEN_MAX at most");
        if self.consumed {
            self.filled = 0;
            self.consumed = false;
        }
        self.fill_to(FRAME_PREFIX_LEN, bounds.deadline, &mut set_wait)?;
        let len =
            message::frame_len(&self.buf[..FRAME_PREFIX_LEN])?.expect("the prefix has arrived");
        if len > bounds.len_max {
            return Err(WireError::HandshakeFrameTooLong { len, len_max: bounds.len_max });
        }
        let frame_len = FRAME_PREFIX_LEN + len;
        self.fill_to(frame_len, bounds.deadline, &mut set_wait)?;
        assert_eq!(self.filled, frame_len, "read past the frame");
        // Refused or not, this frame is done with: the next call reads the one after it.
        self.consumed = true;
        let decoded = message::decode(&self.buf[..frame_len])?;
        let (message, consumed) = decoded.expect("a whole frame is present");
        assert_eq!(consumed, frame_len);
        Ok(message)
    }

    /// Reads until `need` bytes of the frame are in the buffer, keeping what arrived if a
    /// read fails so that the next call resumes. With a `deadline`, each read waits only for
    /// the time left before it (set with `set_wait`), and once it has passed the frame is
    /// given up: a peer sending a byte now and then cannot stretch the wait.
    fn fill_to(
        &mut self,
        need: usize,
        deadline: Option<Instant>,
        set_wait: &mut impl FnMut(&mut R, Duration) -> io::Result<()>,
    ) -> Result<(), WireError> {
        assert!(need <= self.buf.len());
        while self.filled < need {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WireError::HandshakeDeadline { have: self.filled, need });
                }
                set_wait(&mut self.reader, left)?;
            }
            match self.reader.read(&mut self.buf[self.filled..need]) {
                Ok(0) if self.filled == 0 => return Err(WireError::Closed),
                Ok(0) => return Err(WireError::ClosedMidFrame { have: self.filled, need }),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The wait was the time left: the check above ends the frame.
                Err(e) if deadline.is_some() && is_timeout(&e) => {}
                Err(e) => return Err(WireError::Io(e)),
            }
        }
        Ok(())
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The underlying reader, mutably (to set a timeout, say).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// The underlying reader; a partly read frame is lost.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

impl<R: ReadWait> FrameReader<R> {
    /// Reads the next whole frame of a handshake, whose peer has not yet proved it holds the
    /// secret: it must arrive whole by `deadline` (the handshake's, set once when it began),
    /// and its length must be at most [`HANDSHAKE_FRAME_LEN_MAX`]. Each read waits for the time
    /// left, so the reader's wait is changed. A frame given up on leaves the connection out of
    /// step: close it.
    pub fn read_handshake_message(&mut self, deadline: Instant) -> Result<Message<'_>, WireError> {
        let bounds = Bounds { len_max: HANDSHAKE_FRAME_LEN_MAX, deadline: Some(deadline) };
        self.read_bounded(bounds, |reader, left| reader.set_read_wait(left))
    }
}

/// Whether a read failed because its wait ran out (a socket's read timeout).
fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Encodes `message` into `scratch` (cleared first) and writes the whole frame.
pub fn write_message(
    writer: &mut impl Write,
    message: &Message<'_>,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    scratch.clear();
    message::encode(message, scratch);
    writer.write_all(scratch)
}

/// Writes a `Records` frame of `count` already-framed records, `records`, as they are (from a
/// journal segment, say): the header, then the bytes, with no copy. The records must be intact
/// and contiguous from `first` (checked in debug builds); the receiver refuses them otherwise.
pub fn write_records(
    writer: &mut impl Write,
    first: Sequence,
    count: u32,
    records: &[u8],
) -> io::Result<()> {
    debug_assert_eq!(message::Records::new(first, count, records).map(|_| ()), Ok(()));
    let header = message::records_frame_header(first, count, records.len());
    write_all_vectored(writer, &mut [IoSlice::new(&header), IoSlice::new(records)])
}

/// Writes the slices in as few system calls as the writer allows: a frame's header and body
/// leave together, never as a small segment the peer's delayed acknowledgement holds back.
fn write_all_vectored(writer: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a `SnapshotChunk` frame of `bytes`, the snapshot file's bytes from `offset` (read
/// straight from the file, say): the header, then the bytes, with no copy. `through` and
/// `total_len` are at least 1 and, with `through_epoch` (record `through`'s epoch, 0 if the
/// primary no longer holds it), the same for every chunk of a file; `bytes` is 1 ..=
/// `SNAPSHOT_CHUNK_MAX` long and ends at or before `total_len`. It panics otherwise: the
/// receiver would refuse the frame, so the caller is wrong.
pub fn write_snapshot_chunk(
    writer: &mut impl Write,
    through: Sequence,
    through_epoch: Epoch,
    total_len: u64,
    offset: u64,
    bytes: &[u8],
) -> io::Result<()> {
    let header = message::snapshot_chunk_frame_header(
        through,
        through_epoch,
        total_len,
        offset,
        bytes.len(),
    );
    write_all_vectored(writer, &mut [IoSlice::new(&header), IoSlice::new(bytes)])
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::message::{Ack, Answering, Heartbeat, Records, Refuse, RefuseCode, SnapshotChunk};

    fn heartbeat(n: u64) -> Message<'static> {
        let answering = Answering::Alone;
        let beat =
            Heartbeat { epoch: Epoch(2), last_sequence: Sequence(n), sent_at_ms: n, answering };
        Message::Heartbeat(beat)
    }

    fn frames(messages: &[Message<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for message in messages {
            message::encode(message, &mut bytes);
        }
        bytes
    }

    /// Hands out at most one byte per read, and fails every other read with `WouldBlock`.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        calls: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.at == self.bytes.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.bytes[self.at];
            self.at += 1;
            Ok(1)
        }
    }

    #[test]
    fn frames_back_to_back_are_read_one_at_a_time_then_closed() {
        // Goal: the reader returns each message in order and says `Closed` at a clean end.
        let refuse = Message::Refuse(Refuse::new(RefuseCode::Busy, Epoch(3), "a standby is on"));
        let ack =
            Ack { written: Sequence(9), durable: Sequence(8), echo_ms: 5, catching_up: false };
        let ack = Message::Ack(ack);
        let sent = [heartbeat(1), ack, refuse];
        let mut reader = FrameReader::new(Cursor::new(frames(&sent)));
        for expected in &sent {
            assert_eq!(&reader.read_message().unwrap(), expected);
        }
        assert!(matches!(reader.read_message(), Err(WireError::Closed)));
    }

    #[test]
    fn a_read_timeout_mid_frame_resumes_where_it_stopped() {
        // Goal: with a read timeout on the socket, a frame that arrives a byte at a time
        // between timeouts is still read whole and in order; no byte is lost or repeated.
        let sent = [heartbeat(1), heartbeat(2)];
        let trickle = Trickle { bytes: frames(&sent), at: 0, calls: 0 };
        let mut reader = FrameReader::new(trickle);
        let (mut received, mut timeouts) = (Vec::new(), 0);
        while received.len() < sent.len() {
            match reader.read_message() {
                Ok(Message::Heartbeat(heartbeat)) => received.push(Message::Heartbeat(heartbeat)),
                Ok(other) => panic!("{other:?}"),
                Err(error) if error.is_timeout() => timeouts += 1,
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(received, sent);
        // Every byte but the last is followed by a timeout: 2 frames of 30 bytes.
        assert_eq!(timeouts, 2 * 30 - 1);
    }

    #[test]
    fn a_connection_closed_mid_frame_is_not_a_clean_close() {
        // Goal: a torn frame is told apart from a peer that closed between frames.
        let bytes = frames(&[heartbeat(1)]);
        for cut in 1..bytes.len() {
            let mut reader = FrameReader::new(Cursor::new(bytes[..cut].to_vec()));
            assert!(
                matches!(reader.read_message(), Err(WireError::ClosedMidFrame { have, .. })
                    if have == cut),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_too_long_prefix_is_refused_before_the_body_is_read() {
        // Goal: a peer announcing a frame above the limit is refused after 4 bytes: the reader
        // neither waits for nor buffers the body.
        let mut bytes = u32::try_from(FRAME_LEN_MAX + 1).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&[6; 64]);
        let mut reader = FrameReader::new(Cursor::new(bytes));
        assert!(matches!(
            reader.read_message(),
            Err(WireError::Message(MessageError::FrameTooLong { len })) if len == FRAME_LEN_MAX + 1
        ));
        assert_eq!(reader.get_ref().position(), 4);
    }

    impl ReadWait for Cursor<Vec<u8>> {
        fn set_read_wait(&mut self, wait: Duration) -> io::Result<()> {
            assert!(!wait.is_zero());
            Ok(())
        }
    }

    /// A socket whose peer sends one byte every `pace`: each read waits for the next byte, or
    /// gives up with `WouldBlock` when its wait is shorter. Notes every wait it was given.
    struct Drip {
        bytes: Vec<u8>,
        at: usize,
        pace: Duration,
        wait: Duration,
        waits: Vec<Duration>,
    }

    impl Read for Drip {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.wait < self.pace {
                std::thread::sleep(self.wait);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            std::thread::sleep(self.pace);
            buf[0] = self.bytes[self.at];
            self.at += 1;
            Ok(1)
        }
    }

    impl ReadWait for Drip {
        fn set_read_wait(&mut self, wait: Duration) -> io::Result<()> {
            self.wait = wait;
            self.waits.push(wait);
            Ok(())
        }
    }

    #[test]
    fn a_handshake_frame_longer_than_any_handshake_message_is_refused_after_its_prefix() {
        // Goal: before the peer has proved it holds the secret, a prefix announcing the largest
        // frame the protocol allows (0x0010000D) is refused after its 4 bytes; a frame of the
        // handshake's limit, the longest refusal, still reads.
        let far = Instant::now() + Duration::from_secs(3_600);
        let mut bytes = u32::try_from(FRAME_LEN_MAX).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 64]);
        let mut reader = FrameReader::new(Cursor::new(bytes));
        assert!(matches!(
            reader.read_handshake_message(far),
            Err(WireError::HandshakeFrameTooLong { len: FRAME_LEN_MAX, len_max })
                if len_max == HANDSHAKE_FRAME_LEN_MAX
        ));
        assert_eq!(reader.get_ref().position(), 4);
        let text = "t".repeat(message::REFUSE_TEXT_LEN_MAX);
        let refuse = Message::Refuse(Refuse::new(RefuseCode::Engine, Epoch(3), &text));
        let bytes = frames(std::slice::from_ref(&refuse));
        assert_eq!(bytes.len(), FRAME_PREFIX_LEN + HANDSHAKE_FRAME_LEN_MAX);
        let mut reader = FrameReader::new(Cursor::new(bytes));
        assert_eq!(reader.read_handshake_message(far).unwrap(), refuse);
    }

    #[test]
    fn a_handshake_frame_dripping_past_the_deadline_is_given_up() {
        // Goal: a byte now and then does not stretch a handshake's read: each read waits only
        // for the time left before the one deadline, and once it has passed the frame is
        // given up, though every byte came within the 20 ms wait of the last.
        let pace = Duration::from_millis(20);
        let bytes = frames(&[heartbeat(1)]);
        let drip = Drip { bytes, at: 0, pace, wait: Duration::MAX, waits: Vec::new() };
        let mut reader = FrameReader::new(drip);
        let deadline = Instant::now() + Duration::from_millis(100);
        let given_up = reader.read_handshake_message(deadline);
        assert!(
            matches!(given_up, Err(WireError::HandshakeDeadline { have, need: 30 }) if have < 30),
            "{given_up:?}"
        );
        assert!(Instant::now() >= deadline);
        let waits = &reader.get_ref().waits;
        assert!(waits.len() < 30, "read the whole frame");
        assert!(waits.windows(2).all(|pair| pair[1] < pair[0]), "a wait grew: {waits:?}");
        assert!(waits.iter().all(|wait| *wait <= Duration::from_millis(100)));
    }

    #[test]
    fn a_malformed_frame_is_refused_and_the_next_one_still_reads() {
        // Goal: a refused frame is consumed whole; the reader does not get stuck on it.
        let mut bytes = vec![1, 0, 0, 0, 42];
        bytes.extend_from_slice(&frames(&[heartbeat(7)]));
        let mut reader = FrameReader::new(Cursor::new(bytes));
        assert!(matches!(
            reader.read_message(),
            Err(WireError::Message(MessageError::UnknownKind(42)))
        ));
        assert_eq!(reader.read_message().unwrap(), heartbeat(7));
    }

    #[test]
    fn written_records_are_the_encoded_records_frame() {
        // Goal: the no-copy writer sends the same bytes as encoding a `Records` message.
        let mut buf = ringfence_core::record::RecordBuf::default();
        let mut records = Vec::new();
        for sequence in 5..8 {
            let tick = ringfence_core::Sequenced {
                sequence: Sequence(sequence),
                timestamp: ringfence_core::Timestamp(sequence * 10),
                command: ringfence_core::Command::Tick,
            };
            records.extend_from_slice(buf.encode(Epoch(1), &tick));
        }
        let mut written = Vec::new();
        write_records(&mut written, Sequence(5), 3, &records).unwrap();
        let message = Message::Records(Records::new(Sequence(5), 3, &records).unwrap());
        let mut scratch = vec![0xAA; 3];
        let mut expected = Vec::new();
        write_message(&mut expected, &message, &mut scratch).unwrap();
        assert_eq!(written, expected);
        let mut reader = FrameReader::new(Cursor::new(written));
        assert_eq!(reader.read_message().unwrap(), message);
    }

    #[test]
    fn written_snapshot_chunks_are_the_encoded_chunk_frames() {
        // Goal: the no-copy writer sends the same bytes as encoding each `SnapshotChunk`, and a
        // reader gets the file back, chunk after chunk, the last one marked last.
        let file: Vec<u8> = (0..=255u8).cycle().take(1_000).collect();
        let (through, through_epoch, total_len) = (Sequence(42), Epoch(5), file.len() as u64);
        let (mut written, mut expected, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        for (i, piece) in file.chunks(400).enumerate() {
            let offset = i as u64 * 400;
            write_snapshot_chunk(&mut written, through, through_epoch, total_len, offset, piece)
                .unwrap();
            let chunk =
                SnapshotChunk::new(through, through_epoch, total_len, offset, piece).unwrap();
            write_message(&mut expected, &Message::SnapshotChunk(chunk), &mut scratch).unwrap();
        }
        assert_eq!(written, expected);
        let mut reader = FrameReader::new(Cursor::new(written));
        let mut received = Vec::new();
        loop {
            let Message::SnapshotChunk(chunk) = reader.read_message().unwrap() else {
                panic!("not a chunk")
            };
            assert_eq!(chunk.offset(), received.len() as u64);
            assert_eq!((chunk.through(), chunk.through_epoch()), (through, through_epoch));
            received.extend_from_slice(chunk.bytes());
            if chunk.is_last() {
                break;
            }
        }
        assert_eq!(received, file);
        assert!(matches!(reader.read_message(), Err(WireError::Closed)));
    }

    #[test]
    #[should_panic(expected = "writing a snapshot chunk the receiver refuses")]
    fn an_empty_snapshot_chunk_is_never_written() {
        // Goal: a sender that reached the end of the file does not send a zero-byte chunk the
        // standby would refuse; it is stopped before a byte leaves.
        let mut written = Vec::new();
        let _ = write_snapshot_chunk(&mut written, Sequence(1), Epoch(1), 10, 10, &[]);
    }
}
