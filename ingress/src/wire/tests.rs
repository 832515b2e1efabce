use proptest::prelude::*;
use ringfence_core::{
    Action, Command, OrderState, Outcome, Query, Rejection, RequestKey, Reserve, SkuId, UserId, arb,
};

use super::*;

fn request_of(bytes: &[u8]) -> Result<Option<(Command, usize)>, WireError> {
    match try_frame(bytes)? {
        None => Ok(None),
        Some((frame, used)) => match decode_request(&frame)? {
            Request::Command(command) => Ok(Some((command, used))),
            other => panic!("expected a command, got {other:?}"),
        },
    }
}

fn reserve() -> Command {
    Command::Client {
        key: RequestKey::from_u128(7),
        action: Action::Reserve(Reserve { user: UserId(3), sku: SkuId(1), qty: 1, coupon: None }),
    }
}

#[test]
fn reserve_frame_has_the_documented_layout() {
    // Goal: the byte diagram in the module docs is what goes on the wire.
    let mut out = Vec::new();
    encode_command(&mut out, 0x0102_0304_0506_0708, &reserve());
    let length = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(length + 4, out.len());
    assert_eq!(&out[4..6], b"RF");
    assert_eq!(out[6], VERSION);
    assert_eq!(out[7], Kind::Command as u8);
    assert_eq!(&out[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    // Tag 0x10, 16-byte key, action tag 0x05, user, sku, qty, no coupon.
    assert_eq!(out[16], 0x10);
    assert_eq!(out[33], 0x05);
    assert_eq!(out.len(), 16 + 1 + 16 + 1 + 8 + 8 + 4 + 1);
}

#[test]
fn pipelined_frames_split_one_by_one() {
    // Goal: many frames in one buffer decode in order, and a partial frame waits for more bytes.
    let mut out = Vec::new();
    for correlation in 0..5 {
        encode_command(&mut out, correlation, &Command::Query(Query::Sku(SkuId(correlation))));
    }
    let mut at = 0;
    for correlation in 0..5 {
        let (frame, used) = try_frame(&out[at..]).unwrap().unwrap();
        assert_eq!(frame.correlation, correlation);
        at += used;
    }
    assert_eq!(at, out.len());
    for cut in 0..out.len().min(30) {
        if cut < 25 {
            assert_eq!(request_of(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
    }
}

#[test]
fn foreign_and_oversized_streams_are_refused_from_the_header() {
    // Goal: an HTTP request, a huge length, or a future version is refused before buffering.
    assert_eq!(try_frame(b"GET / HTTP/1.1\r\n"), Err(WireError::Http("GET")));
    let mut frame = Vec::new();
    encode_empty(&mut frame, Kind::Ping, 1);
    let mut bad = frame.clone();
    bad[4] = b'X';
    assert_eq!(try_frame(&bad).unwrap_err(), WireError::BadMagic([b'X', b'F']));
    let mut bad = frame.clone();
    bad[6] = 2;
    assert_eq!(try_frame(&bad).unwrap_err(), WireError::UnsupportedVersion(2));
    assert_eq!(try_frame(&bad).unwrap_err().code(), ErrorCode::UnsupportedVersion);
    let mut bad = frame.clone();
    bad[..4].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(try_frame(&bad).unwrap_err(), WireError::FrameTooShort(5));
    let mut bad = frame;
    bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(try_frame(&bad[..8]), Err(WireError::FrameTooLarge { .. })));
}

#[test]
fn tick_and_trailing_bytes_are_refused() {
    // Goal: clients cannot inject timer ticks, and every value has exactly one encoding.
    let mut out = Vec::new();
    encode_command(&mut out, 1, &Command::Tick);
    assert_eq!(request_of(&out).unwrap_err(), WireError::TickFromClient);
    let mut out = Vec::new();
    encode_frame(&mut out, Kind::Command, 1, |body| {
        let mut bytes = [0; COMMAND_LEN_MAX];
        let len = codec::encode_command(&Command::Query(Query::Sku(SkuId(1))), &mut bytes);
        body.extend_from_slice(&bytes[..len]);
        body.push(0);
    });
    let trailing = DecodeError::TrailingBytes { what: "command", offset: 9, count: 1 };
    assert_eq!(request_of(&out).unwrap_err(), WireError::Body(trailing));
    assert_eq!(WireError::Body(trailing).code(), ErrorCode::BadBody);
}

#[test]
fn error_frames_round_trip_and_cut_long_messages() {
    // Goal: error frames carry code, fatality, retry hint and a bounded UTF-8 message.
    let error = ErrorFrame {
        code: ErrorCode::Busy,
        fatal: false,
        retry_after_ms: 5,
        message: "é".repeat(400),
    };
    let mut out = Vec::new();
    encode_error(&mut out, 9, &error);
    let (frame, _) = try_frame(&out).unwrap().unwrap();
    let Response::Error(decoded) = decode_response(&frame).unwrap() else { panic!() };
    assert_eq!(decoded.code, ErrorCode::Busy);
    assert_eq!(decoded.retry_after_ms, 5);
    assert!(decoded.message.len() <= MESSAGE_LEN_MAX);
    assert!(error.message.starts_with(&decoded.message));
}

#[test]
fn error_codes_keep_their_numbers_and_names() {
    // Goal: every code reads back from its number, names are unique, and the replication
    // codes keep the numbers clients were given (16 not_primary, 17 replication_unavailable),
    // and so do the role refusal (18 forbidden), the failed journal (19 journal_failed) and
    // the argument out of range (20 invalid_argument).
    let codes = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKind,
        ErrorCode::BadBody,
        ErrorCode::Unauthorized,
        ErrorCode::Busy,
        ErrorCode::RateLimited,
        ErrorCode::ShuttingDown,
        ErrorCode::AuthFailed,
        ErrorCode::Timeout,
        ErrorCode::NotPrimary,
        ErrorCode::ReplicationUnavailable,
        ErrorCode::Forbidden,
        ErrorCode::JournalFailed,
        ErrorCode::InvalidArgument,
    ];
    for code in codes {
        assert_eq!(ErrorCode::from_u16(code as u16), code);
    }
    let names: std::collections::BTreeSet<_> = codes.iter().map(|c| c.name()).collect();
    assert_eq!(names.len(), codes.len());
    assert_eq!(ErrorCode::from_u16(16).name(), "not_primary");
    assert_eq!(ErrorCode::from_u16(17).name(), "replication_unavailable");
    assert_eq!(ErrorCode::from_u16(18).name(), "forbidden");
    assert_eq!(ErrorCode::from_u16(19).name(), "journal_failed");
    assert_eq!(ErrorCode::from_u16(20).name(), "invalid_argument");
    assert_eq!(ErrorCode::from_u16(21), ErrorCode::Unknown);
}

#[test]
fn node_info_round_trips() {
    // Goal: NODE_INFO carries every status field.
    let info = NodeInfo {
        primary: true,
        epoch: 3,
        last_sequence: 99,
        running_hash: u64::MAX,
        journal_durable: 98,
    };
    let mut out = Vec::new();
    encode_node_info(&mut out, 4, &info);
    let (frame, _) = try_frame(&out).unwrap().unwrap();
    assert_eq!(decode_response(&frame).unwrap(), Response::NodeInfo(info));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_client_command_round_trips(command in arb::client_command(), correlation: u64) {
        // Goal: the decoder returns exactly what the encoder was given, for every command.
        let mut out = Vec::new();
        encode_command(&mut out, correlation, &command);
        let (frame, used) = try_frame(&out).unwrap().unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(frame.correlation, correlation);
        prop_assert_eq!(decode_request(&frame).unwrap(), Request::Command(command));
    }

    #[test]
    fn every_outcome_round_trips(outcome in arb::outcome(), correlation: u64) {
        // Goal: clients decode exactly the outcome the server encoded.
        let mut out = Vec::new();
        encode_outcome(&mut out, correlation, &outcome);
        let (frame, _) = try_frame(&out).unwrap().unwrap();
        prop_assert_eq!(decode_response(&frame).unwrap(), Response::Outcome(outcome));
    }

    #[test]
    fn random_bytes_never_panic_either_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        // Goal: arbitrary input gives a frame, a wait, or a typed error; never a panic.
        if let Ok(Some((frame, used))) = try_frame(&bytes) {
            prop_assert!(used <= bytes.len());
            let _ = decode_request(&frame);
            let _ = decode_response(&frame);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        command in arb::client_command(),
        outcome in arb::outcome(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        // Goal: valid frames with corrupted, truncated bytes give typed errors, and any frame
        // that still decodes re-encodes to a valid frame (no half-validated values escape).
        let mut out = Vec::new();
        encode_command(&mut out, 1, &command);
        encode_outcome(&mut out, 2, &outcome);
        for (at, byte) in flips {
            let at = at % out.len();
            out[at] ^= byte;
        }
        out.truncate(cut % (out.len() + 1));
        let mut at = 0;
        while let Ok(Some((frame, used))) = try_frame(&out[at..]) {
            at += used;
            if let Ok(Request::Command(decoded)) = decode_request(&frame) {
                let mut again = Vec::new();
                encode_command(&mut again, frame.correlation, &decoded);
                prop_assert!(try_frame(&again).unwrap().is_some());
            }
            if let Ok(Response::Outcome(decoded)) = decode_response(&frame) {
                let mut again = Vec::new();
                encode_outcome(&mut again, frame.correlation, &decoded);
                let (reframe, _) = try_frame(&again).unwrap().unwrap();
                prop_assert_eq!(decode_response(&reframe).unwrap(), Response::Outcome(decoded));
            }
        }
    }
}

#[test]
fn outcome_of_a_known_rejection_keeps_its_code() {
    // Goal: rejections decode to the same variant so clients see the engine's snake_case code.
    let outcome = Outcome::Rejected(Rejection::InvalidState { current: OrderState::Expired });
    let mut out = Vec::new();
    encode_outcome(&mut out, 0, &outcome);
    let (frame, _) = try_frame(&out).unwrap().unwrap();
    let Response::Outcome(decoded) = decode_response(&frame).unwrap() else { panic!() };
    assert_eq!(decoded.rejection().unwrap().code(), "invalid_state");
}

#[test]
fn an_http_stream_is_named_as_http_in_either_direction() {
    // Goal: a binary client pointed at the HTTP port, or an HTTP client at the binary port,
    // is told the peer speaks HTTP, not that a frame is billions of bytes long.
    let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(try_frame(answer), Err(WireError::Http("HTTP/")));
    assert_eq!(try_frame(b"GET /health HTTP/1.1\r\n\r\n"), Err(WireError::Http("GET")));
    assert_eq!(try_frame(b"POST /v1/orders HTTP/1.1\r\n"), Err(WireError::Http("POST")));
    let message = WireError::Http("HTTP/").to_string();
    assert!(message.contains("--listen") && message.contains("--http"), "{message}");
    assert_eq!(WireError::Http("GET").code(), ErrorCode::MalformedFrame);
}

#[test]
fn an_auth_frame_of_the_wrong_length_is_refused_for_any_role() {
    // Goal: an empty or oversized AUTH is refused naming the token and its bounds, not the
    // admin token: the server cannot know which role's token it was meant to be.
    for token in [Vec::new(), vec![b'a'; TOKEN_LEN_MAX + 1]] {
        let mut out = Vec::new();
        encode_auth(&mut out, 3, &token);
        let (frame, _) = try_frame(&out).unwrap().unwrap();
        let error = decode_request(&frame).unwrap_err();
        let said = error.to_string();
        assert!(said.contains("AUTH token (1 to 256 bytes)") && !said.contains("admin"), "{said}");
    }
    let mut out = Vec::new();
    encode_auth(&mut out, 3, &[b'a'; TOKEN_LEN_MAX]);
    let (frame, _) = try_frame(&out).unwrap().unwrap();
    assert!(matches!(decode_request(&frame), Ok(Request::Auth(t)) if t.len() == TOKEN_LEN_MAX));
}
