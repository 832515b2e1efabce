//! Connections that linger after the server closed them, against the connection limits (they
//! give way to new clients at once), and a binary connection that lingers with commands still
//! in flight (their answers are dropped, not held for a client that cannot get them).

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

/// Starts a gate server, opens a binary connection that has one command in flight and then
/// sends a bad frame: the server answers a fatal error and the connection lingers with the
/// command still in flight; then the command is answered. Returns the server, the gate and
/// the client's socket (still open).
fn lingering_with_a_command_answered_after() -> (ringfence_ingress::ServerHandle, Gate, TcpStream) {
    let config = ServerConfig { drain_timeout_ms: 60_000, ..ServerConfig::loopback() };
    let (server, gate) = Gate::start(config);
    let mut client = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    let mut frame = Vec::new();
    wire::encode_command(&mut frame, 1, &Command::Query(Query::Sku(SkuId(1))));
    client.write_all(&frame).unwrap();
    gate.wait_held(1);
    client.write_all(&[0xff; 64]).unwrap();
    let error = read_error_frame(&mut client);
    assert!(error.fatal, "{error:?}");
    // The connection lingers now (the client reads the end of the stream).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(gate.release_all(), 1);
    std::thread::sleep(Duration::from_millis(200));
    (server, gate, client)
}

#[test]
fn a_lingering_connection_holds_no_output_for_answers_that_came_after_it_closed() {
    // Goal: once a connection has shut its sending side nothing more can reach its client, so
    // an answer that completes afterwards is not buffered for it.
    let (server, _gate, client) = lingering_with_a_command_answered_after();
    let http = server.http_addr().unwrap();
    let held = metric(http, "ringfence_outbound_buffered_bytes");
    assert_eq!(held, 0, "bytes buffered for a connection whose sending side is shut");
    drop(client);
    server.shutdown().unwrap();
}

#[test]
fn a_stop_is_not_held_by_a_lingering_connection_answered_after_it_closed() {
    // Goal: with nothing in flight, a stop drains at once; a lingering connection whose late
    // answer could never be written does not hold it up.
    let (server, _gate, client) = lingering_with_a_command_answered_after();
    let began = Instant::now();
    server.shutdown().unwrap();
    let took = began.elapsed();
    drop(client);
    assert!(took < Duration::from_millis(800), "the stop took {took:?}");
}
