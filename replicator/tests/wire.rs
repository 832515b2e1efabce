//! The replication wire format from the outside: every message round-trips, partial frames
//! wait, each kind of malformed frame gets its own error, damaged records and misplaced
//! snapshot chunks are refused, and decoding survives arbitrary bytes.

use proptest::prelude::*;
use ringfence_core::config::CAPACITY_MAX;
use ringfence_core::record::{RECORD_HEADER_LEN, RecordBuf, RecordError};
use ringfence_core::{Command, EngineConfig, Epoch, Sequence, Sequenced, Timestamp};
use ringfence_journal::format;
use ringfence_replicator::auth::ClusterId;
use ringfence_replicator::message::{
    Ack, Answering, Behind, Challenge, Diverged, FRAME_LEN_MAX, FetchSnapshot,
    HANDSHAKE_FRAME_LEN_MAX, Heartbeat, Hello, Join, Kind, Message, MessageError, PROTOCOL_VERSION,
    REFUSE_TEXT_LEN_MAX, Records, Refuse, RefuseCode, SNAPSHOT_CHUNK_MAX, SnapshotChunk, Start,
    decode, encode,
};

fn tick(sequence: u64) -> Sequenced {
    Sequenced {
        sequence: Sequence(sequence),
        timestamp: Timestamp(sequence),
        command: Command::Tick,
    }
}

/// `count` tick records from `first`, all in `epoch`, back to back.
fn ticks(first: u64, count: u64, epoch: u64) -> Vec<u8> {
    let mut buf = RecordBuf::default();
    let mut bytes = Vec::new();
    for sequence in first..first + count {
        bytes.extend_from_slice(buf.encode(Epoch(epoch), &tick(sequence)));
    }
    bytes
}

fn encoded(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, &mut out);
    out
}

/// A frame of `kind` around `body`, with a correct length prefix.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(1 + body.len()).unwrap().to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// A records frame declaring `first` and `count` around `records`, whatever they hold.
fn records_frame(first: u64, count: u32, records: &[u8]) -> Vec<u8> {
    let mut body = first.to_le_bytes().to_vec();
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(records);
    frame(Kind::Records as u8, &body)
}

fn decode_err(bytes: &[u8]) -> MessageError {
    match decode(bytes) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A snapshot chunk frame declaring `through` (with through epoch 3), `total_len` and `offset`
/// around `bytes`, whatever they hold.
fn chunk_frame(through: u64, total_len: u64, offset: u64, bytes: &[u8]) -> Vec<u8> {
    chunk_frame_epoch(through, 3, total_len, offset, bytes)
}

/// As [`chunk_frame`], with the through epoch given.
fn chunk_frame_epoch(
    through: u64,
    through_epoch: u64,
    total_len: u64,
    offset: u64,
    bytes: &[u8],
) -> Vec<u8> {
    let header = [through, through_epoch, total_len, offset].map(u64::to_le_bytes);
    frame(Kind::SnapshotChunk as u8, &[header.concat().as_slice(), bytes].concat())
}

/// One message of every kind (the records borrow `records`).
fn one_of_each(records: &[u8]) -> Vec<Message<'_>> {
    let cluster = ClusterId::new("shop.eu-1_a").unwrap();
    vec![
        Message::Hello(Hello { cluster, standby_nonce: [9; 32], engine: EngineConfig::small() }),
        Message::Challenge(Challenge { primary_nonce: [1; 32], primary_proof: [2; 32] }),
        Message::Join(Join {
            standby_proof: [3; 32],
            last_sequence: Sequence(41),
            last_epoch: Epoch(2),
            promised_epoch: Epoch(4),
        }),
        Message::Start(Start {
            epoch: Epoch(4),
            from_sequence: Sequence(42),
            primary_last: Sequence(44),
        }),
        Message::Diverged(Diverged { epoch: Epoch(4), keep_through: Sequence(39) }),
        Message::Behind(Behind {
            epoch: Epoch(4),
            last_sequence: Sequence(39),
            last_epoch: Epoch(2),
        }),
        Message::Records(Records::new(Sequence(42), 3, records).unwrap()),
        Message::Heartbeat(Heartbeat {
            epoch: Epoch(4),
            last_sequence: Sequence(44),
            sent_at_ms: 1_700_000_000_000,
            answering: Answering::AfterStandby,
        }),
        Message::Ack(Ack {
            written: Sequence(44),
            durable: Sequence(43),
            echo_ms: 17,
            catching_up: true,
        }),
        Message::Refuse(Refuse::new(RefuseCode::StaleEpoch, Epoch(4), "epoch 3 < promised 4")),
        Message::FetchSnapshot(FetchSnapshot { standby_proof: [6; 32], promised_epoch: Epoch(4) }),
        Message::SnapshotChunk(
            SnapshotChunk::new(Sequence(40), Epoch(3), 4_096, 512, b"RFNCSNAP").unwrap(),
        ),
    ]
}

#[test]
fn every_message_round_trips_and_consumes_exactly_its_frame() {
    // Goal: encode then decode gives the same message back, consuming the whole frame and
    // nothing after it, for one message of each kind.
    let records = ticks(42, 3, 4);
    let messages = one_of_each(&records);
    assert_eq!(messages.len(), Kind::ALL.len());
    for message in &messages {
        let mut bytes = encoded(message);
        let len = bytes.len();
        bytes.extend_from_slice(&[0xEE; 7]);
        assert_eq!(decode(&bytes), Ok(Some((message.clone(), len))), "{message:?}");
        assert_eq!(message.kind() as u8, bytes[4]);
    }
}

#[test]
fn every_handshake_message_at_its_largest_fits_the_handshake_limit() {
    // Goal: the limit a peer's frames are held to before it has proved it holds the secret
    // refuses no message of the handshake: each kind at its largest (the longest cluster id,
    // the longest refusal) fits, and the longest refusal exactly.
    let records = ticks(42, 3, 4);
    let longest = ClusterId::new(&"c".repeat(64)).unwrap();
    let text = "t".repeat(REFUSE_TEXT_LEN_MAX);
    let mut handshake: Vec<Message<'_>> = one_of_each(&records)
        .into_iter()
        .filter(|m| {
            !matches!(m.kind(), Kind::Records | Kind::Heartbeat | Kind::Ack | Kind::SnapshotChunk)
        })
        .collect();
    let engine = EngineConfig::small();
    handshake.push(Message::Hello(Hello { cluster: longest, standby_nonce: [9; 32], engine }));
    handshake.push(Message::Refuse(Refuse::new(RefuseCode::Engine, Epoch(4), &text)));
    let lens: Vec<usize> = handshake.iter().map(|m| encoded(m).len() - 4).collect();
    for (message, len) in handshake.iter().zip(&lens) {
        assert!(*len <= HANDSHAKE_FRAME_LEN_MAX, "{:?}: {len} bytes", message.kind());
    }
    assert_eq!(lens.iter().max(), Some(&HANDSHAKE_FRAME_LEN_MAX));
}

#[test]
fn frames_back_to_back_decode_one_after_another() {
    // Goal: a buffer holding several frames yields them in order by advancing `consumed`.
    let records = ticks(42, 3, 4);
    let messages = one_of_each(&records);
    let mut bytes = Vec::new();
    for message in &messages {
        encode(message, &mut bytes);
    }
    let mut at = 0;
    for message in &messages {
        let (decoded, consumed) = decode(&bytes[at..]).unwrap().unwrap();
        assert_eq!(&decoded, message);
        at += consumed;
    }
    assert_eq!(at, bytes.len());
    assert_eq!(decode(&bytes[at..]), Ok(None));
}

#[test]
fn a_frame_split_at_every_byte_waits_for_the_rest() {
    // Goal: any prefix of a frame is "not yet" (`Ok(None)`), never an error, and the whole
    // frame decodes: a reader can feed bytes as they arrive.
    let records = ticks(42, 3, 4);
    for message in &one_of_each(&records) {
        let bytes = encoded(message);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "{:?} cut at {cut}", message.kind());
        }
        assert_eq!(decode(&bytes), Ok(Some((message.clone(), bytes.len()))));
    }
}

#[test]
fn frame_level_damage_is_refused_by_kind() {
    // Goal: a zero length, a length over the limit (refused from the prefix alone, before the
    // body arrives) and kinds outside 1..=12 each get their own error.
    assert_eq!(decode_err(&[0, 0, 0, 0]), MessageError::EmptyFrame);
    let too_long = u32::try_from(FRAME_LEN_MAX + 1).unwrap().to_le_bytes();
    assert_eq!(decode_err(&too_long), MessageError::FrameTooLong { len: FRAME_LEN_MAX + 1 });
    assert_eq!(decode_err(&[0xFF; 4]), MessageError::FrameTooLong { len: u32::MAX as usize });
    // An HTTP request is not a frame: its first four bytes are a huge length.
    assert!(matches!(decode_err(b"GET / HTTP/1.1\r\n"), MessageError::FrameTooLong { .. }));
    for kind in [0, 13, 200, 255] {
        assert_eq!(decode_err(&frame(kind, &[0; 24])), MessageError::UnknownKind(kind));
    }
}

#[test]
fn a_heartbeat_with_an_unknown_answering_value_is_refused() {
    // Goal: the answering byte takes only the values the protocol names.
    let beat = Heartbeat {
        epoch: Epoch(4),
        last_sequence: Sequence(44),
        sent_at_ms: 7,
        answering: Answering::Async,
    };
    let mut bytes = encoded(&Message::Heartbeat(beat));
    let last = bytes.len() - 1;
    assert_eq!(bytes[last], 2, "the answering byte ends the heartbeat");
    bytes[last] = 3;
    assert_eq!(decode_err(&bytes), MessageError::Answering(3));
}

#[test]
fn an_ack_with_a_catching_up_byte_other_than_0_or_1_is_refused() {
    // Goal: the catching-up byte is a flag; any other value is a bad message, not "true".
    let ack = Ack { written: Sequence(9), durable: Sequence(9), echo_ms: 0, catching_up: false };
    let mut bytes = encoded(&Message::Ack(ack));
    let last = bytes.len() - 1;
    assert_eq!(bytes[last], 0, "the catching-up byte ends the ack");
    for (byte, decoded) in [(1, Ok(true)), (2, Err(2)), (0xFF, Err(0xFF))] {
        bytes[last] = byte;
        let got = match decode(&bytes) {
            Ok(Some((Message::Ack(ack), _))) => Ok(ack.catching_up),
            Err(MessageError::AckCatchingUp(value)) => Err(value),
            other => panic!("byte {byte}: {other:?}"),
        };
        assert_eq!(got, decoded, "byte {byte}");
    }
}

#[test]
fn a_fixed_size_body_of_another_size_is_refused() {
    // Goal: every fixed-size kind refuses a body one byte short, one byte long and empty.
    let records = ticks(42, 3, 4);
    let fixed = [
        Kind::Challenge,
        Kind::Join,
        Kind::Start,
        Kind::Diverged,
        Kind::Behind,
        Kind::Heartbeat,
        Kind::Ack,
        Kind::FetchSnapshot,
    ];
    let messages = one_of_each(&records);
    assert_eq!(messages.iter().filter(|m| fixed.contains(&m.kind())).count(), fixed.len());
    for message in messages.iter().filter(|m| fixed.contains(&m.kind())) {
        let kind = message.kind();
        let body = encoded(message)[5..].to_vec();
        let need = body.len();
        for have in [0, need - 1, need + 1] {
            let mut damaged = body.clone();
            damaged.resize(have, 0);
            assert_eq!(
                decode_err(&frame(kind as u8, &damaged)),
                MessageError::BodyLength { kind, have, need },
            );
        }
    }
}

fn hello_body(magic: &[u8], version: u16, cluster_len: u8, cluster: &[u8]) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.extend_from_slice(&version.to_le_bytes());
    body.push(cluster_len);
    body.extend_from_slice(cluster);
    body.extend_from_slice(&[5; 32]);
    let (mut block, mut more) = ([0; format::CONFIG_BLOCK_LEN], [0; format::CONFIG_MORE_LEN]);
    format::encode_config(&EngineConfig::small(), &mut block, &mut more);
    body.extend_from_slice(&block);
    body.extend_from_slice(&more);
    body
}

#[test]
fn a_malformed_hello_is_refused_by_kind() {
    // Goal: wrong magic, another version, a cluster id of bad length or characters, engine
    // settings no engine accepts, and a body cut short or with bytes left over are each told
    // apart.
    use ringfence_replicator::auth::ClusterIdError;
    let hello = |body: Vec<u8>| decode_err(&frame(1, &body));
    let v = PROTOCOL_VERSION;
    assert_eq!(hello(hello_body(b"RFRX", v, 2, b"eu")), MessageError::BadMagic { found: *b"RFRX" });
    // The version before this one.
    let old = v - 1;
    assert_eq!(hello(hello_body(b"RFRP", old, 2, b"eu")), MessageError::Version { version: old });
    assert_eq!(
        hello(hello_body(b"RFRP", v, 0, b"")),
        MessageError::ClusterId(ClusterIdError::Length { len: 0 })
    );
    assert_eq!(
        hello(hello_body(b"RFRP", v, 65, &[b'a'; 65])),
        MessageError::ClusterId(ClusterIdError::Length { len: 65 })
    );
    assert_eq!(
        hello(hello_body(b"RFRP", v, 2, b"e/")),
        MessageError::ClusterId(ClusterIdError::Byte { at: 1, byte: b'/' })
    );
    let kind = Kind::Hello;
    assert_eq!(
        hello(hello_body(b"RFRP", v, 3, b"eu")),
        MessageError::Truncated { kind, have: 83, need: 84 }
    );
    assert_eq!(hello(b"RFR".to_vec()), MessageError::Truncated { kind, have: 3, need: 82 });
    assert_eq!(
        hello(hello_body(b"RFRP", v, 1, b"eu")),
        MessageError::TrailingBytes { kind, have: 83, need: 82 }
    );
    // Shard 1024 (snowflake ids have 10 bits for it), then a table of no entries.
    for (at, bytes) in [(0, [0, 4]), (8, [0, 0])] {
        let mut body = hello_body(b"RFRP", v, 2, b"eu");
        let settings = body.len() - format::CONFIG_BLOCK_LEN - format::CONFIG_MORE_LEN;
        body[settings + at..][..2].copy_from_slice(&bytes);
        assert_eq!(hello(body), MessageError::EngineSettings);
    }
}

fn refuse_body(code: u8, text_len: u16, text: &[u8]) -> Vec<u8> {
    let mut body = vec![code];
    body.extend_from_slice(&9u64.to_le_bytes());
    body.extend_from_slice(&text_len.to_le_bytes());
    body.extend_from_slice(text);
    body
}

#[test]
fn a_malformed_refusal_is_refused_by_kind() {
    // Goal: an unknown code, an oversized or non-UTF-8 text, and a body cut short or with
    // bytes left over are each told apart.
    let refuse = |body: Vec<u8>| decode_err(&frame(9, &body));
    assert_eq!(refuse(refuse_body(0, 0, b"")), MessageError::RefuseCode(0));
    assert_eq!(refuse(refuse_body(11, 0, b"")), MessageError::RefuseCode(11));
    let long = vec![b'x'; REFUSE_TEXT_LEN_MAX + 1];
    assert_eq!(
        refuse(refuse_body(1, 513, &long)),
        MessageError::RefuseTextLength { len: REFUSE_TEXT_LEN_MAX + 1 }
    );
    assert_eq!(refuse(refuse_body(1, 3, b"a\xFFb")), MessageError::RefuseText { valid_up_to: 1 });
    let kind = Kind::Refuse;
    assert_eq!(
        refuse(refuse_body(1, 4, b"abc")),
        MessageError::Truncated { kind, have: 14, need: 15 }
    );
    assert_eq!(refuse(vec![1; 10]), MessageError::Truncated { kind, have: 10, need: 11 });
    assert_eq!(
        refuse(refuse_body(1, 2, b"abc")),
        MessageError::TrailingBytes { kind, have: 14, need: 13 }
    );
    let empty = refuse_body(9, 0, b"");
    let bytes = frame(9, &empty);
    let decoded = decode(&bytes).unwrap().unwrap().0;
    assert_eq!(
        decoded,
        Message::Refuse(Refuse { code: RefuseCode::Internal, epoch: Epoch(9), text: "" })
    );
}

#[test]
fn fields_that_contradict_each_other_are_refused() {
    // Goal: an ack durable beyond written, a start outside 1..=last+1 and a join above its
    // promise are refused by the decoder, each with its own error; the edges are accepted.
    let ack = |written: u64, durable: u64| {
        let body = [&written.to_le_bytes()[..], &durable.to_le_bytes(), &[0; 8], &[0]].concat();
        decode(&frame(8, &body)).map(|m| assert!(m.is_some(), "a whole frame"))
    };
    assert_eq!(
        ack(4, 5),
        Err(MessageError::AckDurableAboveWritten { written: Sequence(4), durable: Sequence(5) })
    );
    assert!(ack(5, 5).is_ok());
    assert!(ack(0, 0).is_ok());

    let start = |from: u64, last: u64| {
        let body = [1u64.to_le_bytes(), from.to_le_bytes(), last.to_le_bytes()].concat();
        decode(&frame(4, &body)).map(|m| assert!(m.is_some(), "a whole frame"))
    };
    let out_of_range = |from, last| {
        Err(MessageError::StartOutOfRange { from: Sequence(from), last: Sequence(last) })
    };
    assert_eq!(start(0, 5), out_of_range(0, 5));
    assert_eq!(start(7, 5), out_of_range(7, 5));
    assert!(start(6, 5).is_ok(), "nothing to send yet: from is last + 1");
    assert!(start(1, 0).is_ok(), "an empty primary");
    assert!(start(u64::MAX, u64::MAX).is_ok());

    let join = |last: u64, promised: u64| {
        let body =
            [&[0u8; 32][..], &7u64.to_le_bytes(), &last.to_le_bytes(), &promised.to_le_bytes()]
                .concat();
        decode(&frame(3, &body)).map(|m| assert!(m.is_some(), "a whole frame"))
    };
    assert_eq!(
        join(4, 3),
        Err(MessageError::JoinEpochAbovePromise { last: Epoch(4), promised: Epoch(3) })
    );
    assert!(join(3, 3).is_ok());

    let behind = |epoch: u64, last_epoch: u64| {
        let body = [epoch.to_le_bytes(), 9u64.to_le_bytes(), last_epoch.to_le_bytes()].concat();
        decode(&frame(12, &body)).map(|m| assert!(m.is_some(), "a whole frame"))
    };
    assert_eq!(
        behind(3, 4),
        Err(MessageError::BehindEpochAboveCurrent { last: Epoch(4), epoch: Epoch(3) })
    );
    assert!(behind(4, 4).is_ok());
    assert!(behind(4, 0).is_ok(), "an empty primary");
}

#[test]
fn a_records_frame_with_a_damaged_record_is_refused() {
    // Goal: a flipped CRC names the record's index, sequence and offset; so does a bad length
    // field.
    let mut records = ticks(10, 3, 1);
    records[48] ^= 0x01; // the second record's CRC
    assert_eq!(
        decode_err(&records_frame(10, 3, &records)),
        MessageError::Record {
            index: 1,
            offset: 48,
            sequence: Sequence(11),
            source: RecordError::Checksum
        }
    );
    let mut records = ticks(10, 3, 1);
    records[96 + 4..96 + 8].copy_from_slice(&0u32.to_le_bytes()); // third record's length
    assert!(matches!(
        decode_err(&records_frame(10, 3, &records)),
        MessageError::Record { index: 2, offset: 96, source: RecordError::Length(0), .. }
    ));
}

#[test]
fn a_records_frame_with_a_gap_or_a_repeat_is_refused() {
    // Goal: intact records that are not first, first + 1, ... are refused, naming where.
    let records = [ticks(10, 2, 1), ticks(13, 1, 1)].concat();
    assert_eq!(
        decode_err(&records_frame(10, 3, &records)),
        MessageError::RecordGap {
            index: 2,
            offset: 96,
            expected: Sequence(12),
            found: Sequence(13)
        }
    );
    let repeated = [ticks(10, 2, 1), ticks(11, 1, 1)].concat();
    assert!(matches!(
        decode_err(&records_frame(10, 3, &repeated)),
        MessageError::RecordGap { index: 2, found: Sequence(11), .. }
    ));
    let records = ticks(10, 3, 1);
    assert!(matches!(
        decode_err(&records_frame(9, 3, &records)),
        MessageError::RecordGap { index: 0, expected: Sequence(9), found: Sequence(10), .. }
    ));
}

#[test]
fn a_records_frame_whose_epochs_go_down_is_refused() {
    // Goal: within one frame a record never carries a lower epoch than the one before it.
    let records = [ticks(10, 1, 3), ticks(11, 1, 3), ticks(12, 1, 2)].concat();
    assert_eq!(
        decode_err(&records_frame(10, 3, &records)),
        MessageError::RecordEpochWentBack {
            index: 2,
            sequence: Sequence(12),
            epoch: Epoch(2),
            previous: Epoch(3)
        }
    );
    let rising = [ticks(10, 1, 2), ticks(11, 1, 3)].concat();
    assert!(decode(&records_frame(10, 2, &rising)).unwrap().is_some());
}

#[test]
fn a_records_frame_that_does_not_fill_its_body_exactly_is_refused() {
    // Goal: a record running past the body, fewer records than declared, bytes after the last
    // record, a zero count, a sequence range past 2^64 and a cut header each get their own
    // error.
    let records = ticks(10, 3, 1);
    assert_eq!(
        decode_err(&records_frame(10, 3, &records[..140])),
        MessageError::RecordOverrun {
            index: 2,
            offset: 96,
            sequence: Sequence(12),
            need: 48,
            have: 44
        }
    );
    assert!(matches!(
        decode_err(&records_frame(10, 3, &records[..100])),
        MessageError::RecordOverrun { index: 2, need: RECORD_HEADER_LEN, have: 4, .. }
    ));
    assert_eq!(
        decode_err(&records_frame(10, 4, &records)),
        MessageError::RecordsMissing { count: 4, found: 3 }
    );
    assert_eq!(
        decode_err(&records_frame(10, 2, &records)),
        MessageError::RecordsTrailing { count: 2, extra: 48 }
    );
    let garbage = [&records[..], &[0u8; 16]].concat();
    assert_eq!(
        decode_err(&records_frame(10, 3, &garbage)),
        MessageError::RecordsTrailing { count: 3, extra: 16 }
    );
    assert_eq!(decode_err(&records_frame(10, 0, &[])), MessageError::RecordsEmpty);
    assert_eq!(
        decode_err(&records_frame(u64::MAX, 2, &records)),
        MessageError::RecordsRange { first: Sequence(u64::MAX), count: 2 }
    );
    assert_eq!(
        decode_err(&records_frame(0, 1, &records)),
        MessageError::RecordsRange { first: Sequence(0), count: 1 }
    );
    assert_eq!(
        decode_err(&frame(6, &[1; 11])),
        MessageError::Truncated { kind: Kind::Records, have: 11, need: 12 }
    );
}

#[test]
fn every_flipped_bit_of_a_records_frame_is_refused() {
    // Goal: no single-bit error anywhere in a records frame (prefix, kind, header or records)
    // is accepted: it is refused, or the frame now looks incomplete.
    let records = [ticks(10, 2, 1), ticks(12, 1, 2)].concat();
    let bytes = encoded(&Message::Records(Records::new(Sequence(10), 3, &records).unwrap()));
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            assert!(
                matches!(decode(&damaged), Err(_) | Ok(None)),
                "flip of bit {bit} at {at} accepted: {:?}",
                decode(&damaged)
            );
        }
    }
}

#[test]
fn records_iterate_as_the_slices_that_were_sent() {
    // Goal: the iterator hands out each record's bytes in order, exactly as framed.
    let parts = [ticks(10, 1, 1), ticks(11, 1, 1), ticks(12, 1, 1)];
    let records = parts.concat();
    let decoded = Records::new(Sequence(10), 3, &records).unwrap();
    assert_eq!(decoded.iter().len(), 3);
    let slices: Vec<&[u8]> = decoded.iter().collect();
    assert_eq!(slices, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    assert_eq!(decoded.last_sequence(), Sequence(12));
    assert_eq!((&decoded).into_iter().count(), 3);
}

#[test]
fn a_snapshot_chunk_cut_inside_its_header_is_refused() {
    // Goal: a chunk body shorter than its four fields is cut short, not read past its end.
    let kind = Kind::SnapshotChunk;
    let whole = chunk_frame(9, 10, 0, b"a");
    assert_eq!(
        decode_err(&frame(11, &whole[5..36])),
        MessageError::Truncated { kind, have: 31, need: 32 }
    );
    assert_eq!(decode_err(&frame(11, &[])), MessageError::Truncated { kind, have: 0, need: 32 });
}

#[test]
fn a_snapshot_chunk_through_sequence_0_is_refused() {
    // Goal: a snapshot holds at least one record, so through 0 is refused, by the decoder and
    // by the constructor alike; through 1 is accepted.
    assert_eq!(decode_err(&chunk_frame(0, 10, 0, b"abc")), MessageError::SnapshotThroughZero);
    assert_eq!(
        SnapshotChunk::new(Sequence(0), Epoch(3), 10, 0, b"abc"),
        Err(MessageError::SnapshotThroughZero)
    );
    assert!(decode(&chunk_frame(1, 10, 0, b"abc")).unwrap().is_some());
}

#[test]
fn a_snapshot_chunk_carries_its_through_epoch_even_0() {
    // Goal: the through epoch sits right after `through` and is read back as sent; 0 (the
    // primary no longer holds record `through`) is a valid value, not a refusal.
    for epoch in [0, 1, u64::MAX] {
        let bytes = chunk_frame_epoch(9, epoch, 10, 0, b"abc");
        assert_eq!(bytes[5 + 8..5 + 16], epoch.to_le_bytes());
        let (message, _) = decode(&bytes).unwrap().unwrap();
        let Message::SnapshotChunk(chunk) = message else { panic!("{message:?}") };
        assert_eq!((chunk.through(), chunk.through_epoch()), (Sequence(9), Epoch(epoch)));
        let made = SnapshotChunk::new(Sequence(9), Epoch(epoch), 10, 0, b"abc").unwrap();
        assert_eq!(encoded(&Message::SnapshotChunk(made)), bytes);
    }
}

#[test]
fn a_snapshot_chunk_of_an_empty_file_is_refused() {
    // Goal: a snapshot file is never empty, so a total length of 0 is refused as such, not as
    // a chunk past the end.
    assert_eq!(decode_err(&chunk_frame(9, 0, 0, b"abc")), MessageError::SnapshotTotalZero);
    assert_eq!(
        SnapshotChunk::new(Sequence(9), Epoch(3), 0, 0, b"abc"),
        Err(MessageError::SnapshotTotalZero)
    );
}

#[test]
fn an_empty_snapshot_chunk_is_refused() {
    // Goal: every chunk moves the transfer on by at least one byte, so a transfer always ends.
    assert_eq!(decode_err(&chunk_frame(9, 10, 0, b"")), MessageError::SnapshotChunkEmpty);
    assert_eq!(decode_err(&chunk_frame(9, 10, 10, b"")), MessageError::SnapshotChunkEmpty);
    assert_eq!(
        SnapshotChunk::new(Sequence(9), Epoch(3), 10, 0, b""),
        Err(MessageError::SnapshotChunkEmpty)
    );
}

#[test]
fn a_snapshot_chunk_above_the_max_is_refused() {
    // Goal: a chunk of SNAPSHOT_CHUNK_MAX bytes fits a frame and round-trips; one byte more is
    // refused, though the frame limit alone would let a few more bytes through.
    let full = vec![0x5A; SNAPSHOT_CHUNK_MAX];
    let total = 3 * SNAPSHOT_CHUNK_MAX as u64;
    let chunk =
        Message::SnapshotChunk(SnapshotChunk::new(Sequence(9), Epoch(3), total, 0, &full).unwrap());
    let bytes = encoded(&chunk);
    assert!(bytes.len() - 4 <= FRAME_LEN_MAX);
    assert_eq!(decode(&bytes), Ok(Some((chunk, bytes.len()))));

    let over = vec![0x5A; SNAPSHOT_CHUNK_MAX + 1];
    assert!(1 + 32 + over.len() <= FRAME_LEN_MAX, "the frame limit alone lets it through");
    let too_long = MessageError::SnapshotChunkTooLong { len: SNAPSHOT_CHUNK_MAX + 1 };
    assert_eq!(decode_err(&chunk_frame(9, total, 0, &over)), too_long);
    assert_eq!(SnapshotChunk::new(Sequence(9), Epoch(3), total, 0, &over), Err(too_long));
}

#[test]
fn a_snapshot_chunk_past_the_total_is_refused() {
    // Goal: a chunk whose bytes run past the file's length, even by one byte or by an offset
    // near 2^64, is refused naming where; a chunk ending exactly at the total is the last.
    let past =
        |offset, len, total_len| MessageError::SnapshotChunkPastTotal { offset, len, total_len };
    assert_eq!(decode_err(&chunk_frame(9, 10, 8, b"abc")), past(8, 3, 10));
    assert_eq!(decode_err(&chunk_frame(9, 10, 10, b"a")), past(10, 1, 10));
    assert_eq!(decode_err(&chunk_frame(9, 10, u64::MAX, b"ab")), past(u64::MAX, 2, 10));
    assert_eq!(decode_err(&chunk_frame(9, u64::MAX, u64::MAX, b"a")), past(u64::MAX, 1, u64::MAX));
    assert_eq!(SnapshotChunk::new(Sequence(9), Epoch(3), 10, 8, b"abc"), Err(past(8, 3, 10)));
    let bytes = chunk_frame(9, 10, 7, b"abc");
    let (last, _) = decode(&bytes).unwrap().unwrap();
    assert!(matches!(last, Message::SnapshotChunk(chunk) if chunk.is_last()));
}

/// A message that owns what its borrowed form points at, for property tests.
#[derive(Clone, Debug)]
enum Owned {
    Plain(Message<'static>),
    Records { first: u64, count: u32, bytes: Vec<u8> },
    Refuse { code: RefuseCode, epoch: u64, text: String },
    Chunk { through: u64, through_epoch: u64, total_len: u64, offset: u64, bytes: Vec<u8> },
}

impl Owned {
    fn message(&self) -> Message<'_> {
        match self {
            Owned::Plain(message) => message.clone(),
            Owned::Records { first, count, bytes } => {
                Message::Records(Records::new(Sequence(*first), *count, bytes).unwrap())
            }
            Owned::Refuse { code, epoch, text } => {
                Message::Refuse(Refuse::new(*code, Epoch(*epoch), text))
            }
            Owned::Chunk { through, through_epoch, total_len, offset, bytes } => {
                let (through, through_epoch) = (Sequence(*through), Epoch(*through_epoch));
                let chunk = SnapshotChunk::new(through, through_epoch, *total_len, *offset, bytes);
                Message::SnapshotChunk(chunk.unwrap())
            }
        }
    }
}

/// Contiguous records from `first` with random commands, timestamps and rising epochs.
fn records() -> impl Strategy<Value = Owned> {
    let step = (0..2u64, any::<u64>(), ringfence_core::arb::command());
    (1..u64::MAX / 2, 1..1_000u64, prop::collection::vec(step, 1..12)).prop_map(
        |(first, mut epoch, steps)| {
            let mut buf = RecordBuf::default();
            let mut bytes = Vec::new();
            for (i, (rise, timestamp, command)) in steps.iter().enumerate() {
                epoch += rise;
                let sequence = Sequence(first + i as u64);
                let sequenced =
                    Sequenced { sequence, timestamp: Timestamp(*timestamp), command: *command };
                bytes.extend_from_slice(buf.encode(Epoch(epoch), &sequenced));
            }
            Owned::Records { first, count: u32::try_from(steps.len()).unwrap(), bytes }
        },
    )
}

/// A chunk anywhere in a file of any length, the chunk's end at most the file's, with any
/// through epoch (0 included: the primary could not tell).
fn snapshot_chunk() -> impl Strategy<Value = Owned> {
    let bytes = prop::collection::vec(any::<u8>(), 1..64);
    let through_epoch = prop_oneof![Just(0), any::<u64>()];
    (1..=u64::MAX, through_epoch, sorted_pair(), bytes).prop_map(
        |(through, through_epoch, (a, b), bytes)| {
            let offset = a.min(u64::MAX - bytes.len() as u64);
            let total_len = b.max(offset + bytes.len() as u64);
            Owned::Chunk { through, through_epoch, total_len, offset, bytes }
        },
    )
}

fn sorted_pair() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn plain() -> impl Strategy<Value = Message<'static>> {
    let engine =
        (0..1024u16, 1..=CAPACITY_MAX, any::<u64>()).prop_map(|(shard, orders, window)| {
            let small = EngineConfig::small();
            EngineConfig { shard, orders_max: orders, request_key_window_ms: window, ..small }
        });
    let hello =
        ("[A-Za-z0-9._-]{1,64}", any::<[u8; 32]>(), engine).prop_map(|(id, nonce, engine)| {
            let cluster = ClusterId::new(&id).unwrap();
            Message::Hello(Hello { cluster, standby_nonce: nonce, engine })
        });
    let challenge = any::<([u8; 32], [u8; 32])>()
        .prop_map(|(n, p)| Message::Challenge(Challenge { primary_nonce: n, primary_proof: p }));
    let join = (any::<[u8; 32]>(), any::<u64>(), sorted_pair()).prop_map(|(p, s, (l, h))| {
        let (last_sequence, last_epoch, promised_epoch) = (Sequence(s), Epoch(l), Epoch(h));
        Message::Join(Join { standby_proof: p, last_sequence, last_epoch, promised_epoch })
    });
    let start = (any::<u64>(), sorted_pair()).prop_map(|(epoch, (a, b))| {
        let (from, last) = (a.max(1), b.max(a.max(1)) - 1);
        let (epoch, from_sequence, primary_last) = (Epoch(epoch), Sequence(from), Sequence(last));
        Message::Start(Start { epoch, from_sequence, primary_last })
    });
    let diverged = any::<(u64, u64)>().prop_map(|(e, k)| {
        Message::Diverged(Diverged { epoch: Epoch(e), keep_through: Sequence(k) })
    });
    let behind = (sorted_pair(), any::<u64>()).prop_map(|((l, e), s)| {
        let (epoch, last_sequence, last_epoch) = (Epoch(e), Sequence(s), Epoch(l));
        Message::Behind(Behind { epoch, last_sequence, last_epoch })
    });
    let heartbeat =
        (any::<(u64, u64, u64)>(), 0..Answering::ALL.len()).prop_map(|((e, l, s), a)| {
            let (epoch, last_sequence, answering) = (Epoch(e), Sequence(l), Answering::ALL[a]);
            Message::Heartbeat(Heartbeat { epoch, last_sequence, sent_at_ms: s, answering })
        });
    let ack = (sorted_pair(), any::<u64>(), any::<bool>()).prop_map(|((d, w), echo_ms, c)| {
        Message::Ack(Ack { written: Sequence(w), durable: Sequence(d), echo_ms, catching_up: c })
    });
    let fetch = any::<([u8; 32], u64)>().prop_map(|(proof, promised)| {
        Message::FetchSnapshot(FetchSnapshot {
            standby_proof: proof,
            promised_epoch: Epoch(promised),
        })
    });
    prop_oneof![hello, challenge, join, start, diverged, behind, heartbeat, ack, fetch]
}

fn message() -> impl Strategy<Value = Owned> {
    let refuse = (prop::sample::select(RefuseCode::ALL.to_vec()), any::<u64>(), ".{0,300}")
        .prop_map(|(code, epoch, text)| Owned::Refuse { code, epoch, text });
    prop_oneof![
        3 => plain().prop_map(Owned::Plain),
        1 => records(),
        1 => refuse,
        1 => snapshot_chunk(),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // Goal: whatever a peer sends, decoding returns; it never panics.
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_of_every_kind_never_panic_the_decoder(
        kind in 0..=12u8,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // Goal: with a correct prefix, so the bytes reach each body's decoder, any body of any
        // kind is decoded or refused, never a panic.
        let _ = decode(&frame(kind, &body));
    }

    #[test]
    fn valid_messages_round_trip(owned in message()) {
        // Goal: every valid message, over the full range of its fields, decodes to itself.
        let message = owned.message();
        let bytes = encoded(&message);
        prop_assert_eq!(decode(&bytes), Ok(Some((message, bytes.len()))));
    }

    #[test]
    fn a_corrupted_byte_of_any_frame_never_decodes_as_the_original(
        owned in message(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        // Goal: changing any one byte of a valid frame never goes unnoticed as the same
        // message: it is refused, incomplete, or a different message.
        let message = owned.message();
        let mut bytes = encoded(&message);
        let len = bytes.len();
        bytes[at.index(len)] ^= xor;
        let decoded = decode(&bytes);
        prop_assert_ne!(decoded, Ok(Some((message, len))));
    }

    #[test]
    fn a_corrupted_byte_of_a_records_frame_is_refused(
        owned in records(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        // Goal: records are protected end to end: any one damaged byte of a records frame is
        // refused or leaves the frame incomplete; it never decodes.
        let message = owned.message();
        let mut bytes = encoded(&message);
        let len = bytes.len();
        bytes[at.index(len)] ^= xor;
        prop_assert!(matches!(decode(&bytes), Err(_) | Ok(None)), "{:?}", decode(&bytes));
    }

    #[test]
    fn a_snapshot_cut_into_chunks_reassembles_exactly(
        file in prop::collection::vec(any::<u8>(), 1..2_000),
        chunk_len in 1..300usize,
    ) {
        // Goal: a file sent as chunks from offset 0 decodes, frame after frame, into chunks
        // that each start where the last ended, only the final one is last, and their bytes
        // are the file.
        let total_len = file.len() as u64;
        let mut bytes = Vec::new();
        for (i, piece) in file.chunks(chunk_len).enumerate() {
            let offset = (i * chunk_len) as u64;
            let chunk = SnapshotChunk::new(Sequence(77), Epoch(3), total_len, offset, piece).unwrap();
            encode(&Message::SnapshotChunk(chunk), &mut bytes);
        }
        let (mut at, mut received) = (0, Vec::new());
        while let Some((message, consumed)) = decode(&bytes[at..]).unwrap() {
            let Message::SnapshotChunk(chunk) = message else { panic!("{message:?}") };
            prop_assert_eq!(chunk.offset(), received.len() as u64);
            let fields = (chunk.through(), chunk.through_epoch(), chunk.total_len());
            prop_assert_eq!(fields, (Sequence(77), Epoch(3), total_len));
            received.extend_from_slice(chunk.bytes());
            prop_assert_eq!(chunk.is_last(), received.len() == file.len());
            at += consumed;
        }
        prop_assert_eq!(at, bytes.len());
        prop_assert_eq!(received, file);
    }
}
