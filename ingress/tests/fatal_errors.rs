//! A fatal `ERROR` on the binary port is the connection's last frame: the answers to every
//! command read before the refused frame come first, then the error, then the end of the
//! stream. A fatal error with nothing owed closes at once, and one whose answers do not come
//! goes out without them within `request_timeout_ms`, or when the server stops. HTTP's answer
//! to a request it cannot frame keeps the same place: after the answers to those before it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Http, Stuck, create_sku, start_node};
use ringfence_core::pipeline::Topology;
use ringfence_core::{Action, Command, Reserve, SkuId, UserId};
use ringfence_ingress::wire::{self, ErrorCode, ErrorFrame, Kind, Response};
use ringfence_ingress::{ServerConfig, keys};

/// Reservations pipelined ahead of the bad frame.
const RESERVES: u64 = 200;

/// `count` reservations, one per user, with correlation ids 1 to `count`.
fn reserve_frames(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for user in 1..=count {
        let command = Command::Client {
            key: keys::request_key(&format!("fatal-{user}")),
            action: Action::Reserve(Reserve {
                user: UserId(user),
                sku: SkuId(1),
                qty: 1,
                coupon: None,
            }),
        };
        wire::encode_command(&mut bytes, user, &command);
    }
    bytes
}

/// Frames the server refuses as fatal, with the code and correlation id of the refusal.
fn bad_frames() -> Vec<(&'static str, Vec<u8>, ErrorCode, u64)> {
    let mut ping = Vec::new();
    wire::encode_empty(&mut ping, Kind::Ping, 9_001);
    let mut bad_magic = ping.clone();
    bad_magic[wire::MAGIC_OFFSET] = b'X';
    let mut unknown_kind = ping.clone();
    unknown_kind[wire::KIND_OFFSET] = 0x7f;
    let mut wrong_token = Vec::new();
    wire::encode_auth(&mut wrong_token, 9_002, b"not-the-token");
    vec![
        ("bad magic", bad_magic, ErrorCode::MalformedFrame, 0),
        ("unknown kind", unknown_kind, ErrorCode::UnknownKind, 0),
        ("wrong token", wrong_token, ErrorCode::AuthFailed, 9_002),
    ]
}

/// Reads until the server ends the stream: the frames received, in order, and whether the
/// stream ended cleanly (not reset, not timed out).
fn frames_until_close(stream: &mut TcpStream) -> (Vec<(u64, Response)>, bool) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let clean = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, used)) = wire::try_frame(&buffer[at..]).expect("frames from the server")
    {
        at += used;
        frames.push((frame.correlation, wire::decode_response(&frame).expect("a response")));
    }
    assert_eq!(at, buffer.len(), "nothing but whole frames");
    (frames, clean)
}

/// The fatal error frame `frames` end with, after asserting everything before it answers one
/// of `RESERVES` reservations, each exactly once.
fn answers_then_fatal(case: &str, frames: &[(u64, Response)]) -> (u64, ErrorFrame) {
    let Some(((correlation, Response::Error(error)), answers)) = frames.split_last() else {
        panic!("{case}: the last frame is not an error: {:?}", frames.last());
    };
    assert!(error.fatal, "{case}: {error:?}");
    let mut correlations: Vec<u64> = answers
        .iter()
        .map(|(correlation, answer)| {
            assert!(matches!(answer, Response::Outcome(_)), "{case}: {answer:?}");
            *correlation
        })
        .collect();
    correlations.sort_unstable();
    let expected: Vec<u64> = (1..=RESERVES).collect();
    assert_eq!(correlations, expected, "{case}: every reservation answered once, before the error");
    (*correlation, error.clone())
}

fn answers_come_before_the_fatal_error(topology: Topology) {
    let server = start_node(ServerConfig::loopback(), topology);
    let mut admin = Http::connect(server.http_addr().unwrap());
    create_sku(&mut admin, 1, 10_000, 0, 600_000);
    for (case, bad, code, bad_correlation) in bad_frames() {
        let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
        let mut bytes = reserve_frames(RESERVES);
        bytes.extend_from_slice(&bad);
        // A ping behind the bad frame is never read, so never answered.
        wire::encode_empty(&mut bytes, Kind::Ping, 9_003);
        stream.write_all(&bytes).unwrap();
        let (frames, clean) = frames_until_close(&mut stream);
        let (correlation, error) = answers_then_fatal(case, &frames);
        assert_eq!((correlation, error.code), (bad_correlation, code), "{case}");
        assert!(clean, "{case}: the stream ends after the error, not reset");
    }
    server.shutdown().unwrap();
}

#[test]
fn a_fatal_error_follows_the_answers_read_before_it_on_the_compact_node() {
    // Goal: reservations pipelined ahead of a bad frame, in one write, are each answered, then
    // the fatal error arrives, then the stream ends: with the processor on its own thread.
    answers_come_before_the_fatal_error(Topology::Compact);
}

#[test]
fn a_fatal_error_follows_the_answers_read_before_it_on_the_inline_node() {
    // Goal: the same with the processor run by the event loop itself (`serve --topology
    // inline`), whose answers come in the same turn the bad frame is read.
    answers_come_before_the_fatal_error(Topology::Stepped);
}

#[test]
fn a_fatal_error_with_nothing_owed_closes_at_once() {
    // Goal: a wrong token or a bad frame as a connection's first request is answered with the
    // fatal error alone and the stream ends; frames behind it are never read.
    let server = start_node(ServerConfig::loopback(), Topology::Compact);
    for (case, bad, code, bad_correlation) in bad_frames() {
        let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
        let mut bytes = bad.clone();
        wire::encode_empty(&mut bytes, Kind::Ping, 9_003);
        stream.write_all(&bytes).unwrap();
        let (frames, clean) = frames_until_close(&mut stream);
        let [(correlation, Response::Error(error))] = frames.as_slice() else {
            panic!("{case}: one error frame, then the end: {frames:?}");
        };
        assert_eq!((*correlation, error.code, error.fatal), (bad_correlation, code, true));
        assert!(clean, "{case}: the stream ends after the error, not reset");
    }
    server.shutdown().unwrap();
}

/// Sends three reservations, a ping, and a bad frame in one write to `addr`; returns the
/// stream once the ping's answer, which overtakes the unanswered reservations, proves the
/// server read them all.
fn reserves_then_bad_magic(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut bytes = reserve_frames(3);
    wire::encode_empty(&mut bytes, Kind::Ping, 50);
    let mut bad = Vec::new();
    wire::encode_empty(&mut bad, Kind::Ping, 51);
    bad[wire::MAGIC_OFFSET] = b'X';
    bytes.extend_from_slice(&bad);
    stream.write_all(&bytes).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut pong = [0u8; wire::BODY_OFFSET];
    stream.read_exact(&mut pong).unwrap();
    let (frame, _) = wire::try_frame(&pong).unwrap().expect("one whole frame");
    assert_eq!((frame.kind, frame.correlation), (Kind::Pong, 50));
    stream
}

#[test]
fn a_fatal_error_whose_answers_never_come_goes_out_without_them_in_time() {
    // Goal: a fatal error held for answers the node never gives is sent without them after
    // `request_timeout_ms`, and the connection closes: it cannot hold its slot forever.
    let config = ServerConfig { request_timeout_ms: 300, ..ServerConfig::loopback() };
    let server = ringfence_ingress::start(config, |_| Ok(Stuck)).unwrap();
    let mut stream = reserves_then_bad_magic(server.binary_addr().unwrap());
    let (frames, _) = frames_until_close(&mut stream);
    let [(0, Response::Error(error))] = frames.as_slice() else {
        panic!("the fatal error alone, then the end: {frames:?}");
    };
    assert_eq!((error.code, error.fatal), (ErrorCode::MalformedFrame, true));
    let mut probe = Http::connect(server.http_addr().unwrap());
    assert_eq!(probe.call("GET", "/health", None, None).status, 200);
    server.shutdown().unwrap();
}

#[test]
fn a_fatal_error_held_at_shutdown_goes_out_when_the_drain_ends() {
    // Goal: a server stopping while a fatal error waits for answers the node never gives
    // sends the error without them when its drain ends, then closes.
    let config = ServerConfig { drain_timeout_ms: 200, ..ServerConfig::loopback() };
    let server = ringfence_ingress::start(config, |_| Ok(Stuck)).unwrap();
    let mut stream = reserves_then_bad_magic(server.binary_addr().unwrap());
    server.shutdown().unwrap();
    let (frames, _) = frames_until_close(&mut stream);
    let [(0, Response::Error(error))] = frames.as_slice() else {
        panic!("the fatal error alone, then the end: {frames:?}");
    };
    assert_eq!((error.code, error.fatal), (ErrorCode::MalformedFrame, true));
}

#[test]
fn an_http_400_follows_the_answers_to_the_requests_before_it() {
    // Goal: reservations pipelined over HTTP ahead of a request that cannot be framed are each
    // answered, in order, then the 400, then the connection closes.
    let server = start_node(ServerConfig::loopback(), Topology::Compact);
    let mut http = Http::connect(server.http_addr().unwrap());
    create_sku(&mut http, 1, 10_000, 0, 600_000);
    let mut bytes = Vec::new();
    for user in 1..=RESERVES {
        // Quantities 1, 2, 3 in turn: each answer's amount names the request it answers.
        let qty = user % 3 + 1;
        let body = format!(r#"{{"request_id":"http-{user}","user":{user},"sku":1,"qty":{qty}}}"#);
        bytes.extend(Http::request_bytes("POST", "/v1/orders", Some(&body), None));
    }
    bytes.extend_from_slice(
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: +0\r\n\r\n",
    );
    http.send(&bytes);
    for user in 1..=RESERVES {
        let response = http.read_response().expect("an answer per reservation");
        assert_eq!(response.status, 201, "reservation {user}: {:?}", response.json());
        let amount_cents = (user % 3 + 1) * 500;
        assert_eq!(response.json()["amount_cents"], amount_cents, "answers in request order");
    }
    assert_eq!(http.read_response().expect("the refusal").status, 400);
    assert!(http.closed_by_server(), "the connection closes after the refusal");
    server.shutdown().unwrap();
}
