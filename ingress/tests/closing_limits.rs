//! Connections that linger after the server closed them, against the connection limits (they
//! give way to new clients at once), and a binary connection whose fatal error waits for a
//! command still in flight (it does not linger until that command is answered).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Http;
use common::gate::Gate;
use ringfence_core::{Command, Query, SkuId};
use ringfence_ingress::ServerConfig;
use ringfence_ingress::wire::{self, Response};

/// Reads binary frames until one error frame arrives; returns it.
fn read_error_frame(stream: &mut TcpStream) -> wire::ErrorFrame {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((frame, _))) = wire::try_frame(&buffer) {
            if let Ok(Response::Error(error)) = wire::decode_response(&frame) {
                return error;
            }
            panic!("expected an error frame");
        }
        let n = stream.read(&mut chunk).expect("an error frame");
        assert!(n > 0, "closed before the error frame");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// A gauge or counter from `/metrics`, asked on a connection of its own.
fn metric(http_addr: std::net::SocketAddr, name: &str) -> u64 {
    let mut probe = Http::connect(http_addr);
    let metrics = probe.call("GET", "/metrics", None, None);
    let text = String::from_utf8(metrics.body).unwrap();
    let prefix = format!("{name} ");
    let line = text.lines().find(|line| line.starts_with(&prefix)).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn at_the_connection_limit_a_lingering_http_connection_gives_way_to_a_new_client() {
    // Goal: a connection the server has already finished (answered `Connection: close`, its
    // side shut, only waiting for the client's FIN) does not keep a new client out at the
    // connection limit: it gives way at once.
    let config = ServerConfig { listen: None, connections_max: 1, ..ServerConfig::loopback() };
    let server = common::start(config);
    let addr = server.http_addr().unwrap();
    let mut first = Http::connect(addr);
    first.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(first.read_response().expect("the answer").status, 200);
    let mut rest = Vec::new();
    first.stream().read_to_end(&mut rest).unwrap();
    // The client saw the end of the stream; it has not closed its socket yet.

    let mut next = Http::connect(addr);
    let answer = next.call("GET", "/health", None, None);
    assert_eq!(
        answer.status,
        200,
        "a new client refused while the only slot is held by a finished connection: {}",
        String::from_utf8_lossy(&answer.body)
    );
    drop(first);
    server.shutdown().unwrap();
}

#[test]
fn at_its_address_limit_a_lingering_connection_gives_way_to_one_from_the_same_address() {
    // Goal: a connection that lingers counts against its address's connections no longer than
    // a new one from that address needs its place.
    let config =
        ServerConfig { listen: None, connections_per_address_max: 1, ..ServerConfig::loopback() };
    let server = common::start(config);
    let addr = server.http_addr().unwrap();
    let mut first = Http::connect(addr);
    first.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(first.read_response().expect("the answer").status, 200);
    let mut rest = Vec::new();
    first.stream().read_to_end(&mut rest).unwrap();

    let mut next = Http::connect(addr);
    let answer = next.call("GET", "/health", None, None);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    drop(first);
    server.shutdown().unwrap();
}

#[test]
fn at_the_connection_limit_a_lingering_binary_connection_gives_way_once_quiet() {
    // Goal: a binary connection closed on a fatal error lingers; at the limit it is never
    // idle (`closing`), so it is not reclaimed even once quiet past idle_reclaim_after_ms,
    // whereas an open idle connection would have been.
    let config = ServerConfig {
        http: None,
        connections_max: 1,
        idle_reclaim_after_ms: 200,
        ..ServerConfig::loopback()
    };
    let server = common::start(config);
    let addr = server.binary_addr().unwrap();
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(&[0xff; 64]).unwrap();
    let error = read_error_frame(&mut bad);
    assert!(error.fatal, "{error:?}");
    std::thread::sleep(Duration::from_millis(600));

    let mut next = TcpStream::connect(addr).unwrap();
    let mut ping = Vec::new();
    wire::encode_empty(&mut ping, wire::Kind::Ping, 7);
    next.write_all(&ping).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let response = loop {
        if let Ok(Some((frame, _))) = wire::try_frame(&buffer) {
            break wire::decode_response(&frame).unwrap();
        }
        let n = next.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without an answer");
        buffer.extend_from_slice(&chunk[..n]);
    };
    assert!(
        matches!(response, Response::Pong),
        "a new client refused while the only slot is held by a lingering connection: \
         {response:?}"
    );
    drop(bad);
    server.shutdown().unwrap();
}

/// Starts a gate server and a binary connection that sends, in one write, a command the gate
/// holds, a `PING` and a bad frame; returns once the `PONG` (which overtakes the held command's
/// answer) shows the server read them all. The fatal error for the bad frame waits for the
/// command's answer.
fn a_fatal_error_behind_a_held_command() -> (ringfence_ingress::ServerHandle, Gate, TcpStream) {
    let config = ServerConfig { drain_timeout_ms: 60_000, ..ServerConfig::loopback() };
    let (server, gate) = Gate::start(config);
    let mut client = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    let mut bytes = Vec::new();
    wire::encode_command(&mut bytes, 1, &Command::Query(Query::Sku(SkuId(1))));
    wire::encode_empty(&mut bytes, wire::Kind::Ping, 2);
    bytes.extend_from_slice(&[0xff; 64]);
    client.write_all(&bytes).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pong = [0u8; wire::BODY_OFFSET];
    client.read_exact(&mut pong).unwrap();
    let (frame, _) = wire::try_frame(&pong).unwrap().expect("one whole frame");
    assert_eq!((frame.kind, frame.correlation), (wire::Kind::Pong, 2));
    gate.wait_held(1);
    (server, gate, client)
}

/// Reads until the server ends the stream: the frames received, in order.
fn frames_until_close(stream: &mut TcpStream) -> Vec<(u64, Response)> {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buffer = Vec::new();
    stream.read_to_end(&mut buffer).expect("the stream ends, not reset");
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, used)) = wire::try_frame(&buffer[at..]).unwrap() {
        at += used;
        frames.push((frame.correlation, wire::decode_response(&frame).unwrap()));
    }
    assert_eq!(at, buffer.len(), "nothing but whole frames");
    frames
}

/// Asserts `frames` are the held command's answer, then the fatal error for the bad frame.
fn assert_answer_then_fatal(frames: &[(u64, Response)]) {
    let [(1, Response::Outcome(_)), (0, Response::Error(error))] = frames else {
        panic!("the command's answer, then the fatal error: {frames:?}");
    };
    assert!(error.fatal, "{error:?}");
}

#[test]
fn a_fatal_error_waits_for_the_answer_to_a_command_read_before_it() {
    // Goal: while a command read before a bad frame is unanswered, its connection neither
    // sends the fatal error nor closes; once the command is answered, the answer, the error
    // and the end of the stream follow in that order, and nothing stays buffered for it.
    let (server, gate, mut client) = a_fatal_error_behind_a_held_command();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut early = [0u8; 1];
    let read = client.read(&mut early);
    assert!(read.is_err(), "nothing before the held command's answer: {read:?}");
    assert_eq!(gate.release_all(), 1);
    assert_answer_then_fatal(&frames_until_close(&mut client));
    let http = server.http_addr().unwrap();
    let held = metric(http, "ringfence_outbound_buffered_bytes");
    assert_eq!(held, 0, "bytes buffered for a connection whose sending side is shut");
    drop(client);
    server.shutdown().unwrap();
}

#[test]
fn a_stop_answers_a_connection_whose_fatal_error_waits_then_sends_the_error() {
    // Goal: a server stopping drains a connection whose fatal error waits for an answer like
    // any other: the answer coming during the drain is written, then the error, then the end.
    let (server, gate, mut client) = a_fatal_error_behind_a_held_command();
    let http = server.http_addr().unwrap();
    let stopping = std::thread::spawn(move || server.shutdown());
    // The listeners close when the stop begins.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(http).is_ok() {
        assert!(Instant::now() < deadline, "the stop did not begin");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(gate.release_all(), 1);
    assert_answer_then_fatal(&frames_until_close(&mut client));
    stopping.join().unwrap().unwrap();
}
