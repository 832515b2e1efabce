//! The slow-request timeout and connection semantics against pipelining clients: a request is
//! timed from when it, not an earlier one, began to arrive; an answer owed is never overtaken
//! by a notice; a connection that closes serves nothing after the request that closed it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use std::sync::Arc;

use common::gate::Gate;
use common::{Http, start};
use ringfence_core::{Command, Query, SkuId};
use ringfence_ingress::ServerConfig;
use ringfence_ingress::wire::{self, Kind, Response};

/// Reads binary frames from `stream` until `count` arrived or the connection ended / timed out.
fn read_frames(stream: &mut TcpStream, count: usize, timeout: Duration) -> Vec<Response> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while frames.len() < count && Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        let mut at = 0;
        while let Ok(Some((frame, used))) = wire::try_frame(&buffer[at..]) {
            at += used;
            frames.push(wire::decode_response(&frame).expect("a valid response"));
        }
        buffer.drain(..at);
    }
    frames
}

#[test]
fn a_steady_pipeliner_whose_writes_split_frames_is_not_timed_out() {
    // Goal: a request is timed from when it began to arrive. A client whose every write ends
    // inside its next frame completes each within 80 ms, never a slow one, and is never cut
    // off, however long it keeps going past `request_timeout_ms`.
    let config = ServerConfig { request_timeout_ms: 600, ..ServerConfig::loopback() };
    let server = start(config);
    let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    stream.set_nodelay(true).unwrap();
    let frames_total = 25u64;
    let mut bytes = Vec::new();
    for correlation in 1..=frames_total {
        wire::encode_empty(&mut bytes, Kind::Ping, correlation);
    }
    let frame_len = bytes.len() / frames_total as usize; // 16 bytes
    let mut reader = stream.try_clone().unwrap();
    let collector = std::thread::spawn(move || {
        read_frames(&mut reader, frames_total as usize, Duration::from_secs(10))
    });
    // Every 80 ms: the rest of frame N and the first 4 bytes of frame N + 1. Each request
    // completes within 80 ms, far inside the 600 ms request timeout.
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() {
        let end = if first { 4 } else { (sent + frame_len).min(bytes.len()) };
        first = false;
        if stream.write_all(&bytes[sent..end]).is_err() {
            break;
        }
        sent = end;
        std::thread::sleep(Duration::from_millis(80));
    }
    let frames = collector.join().unwrap();
    let pongs = frames.iter().filter(|r| matches!(r, Response::Pong)).count();
    let errors: Vec<_> = frames
        .iter()
        .filter_map(|r| if let Response::Error(e) = r { Some(e.clone()) } else { None })
        .collect();
    assert!(errors.is_empty(), "a client that was never slow got {errors:?} after {pongs} pongs");
    assert_eq!(pongs, frames_total as usize);
    server.shutdown().unwrap();
}

#[test]
fn a_steady_http_pipeliner_whose_writes_split_requests_is_not_timed_out() {
    // Goal: the same on HTTP: every request completes within 80 ms, and none is answered 408
    // however long the pipeline runs past `request_timeout_ms`.
    let config = ServerConfig { request_timeout_ms: 600, ..ServerConfig::loopback() };
    let server = start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    let request = Http::request_bytes("GET", "/health", None, None);
    let total = 25usize;
    let mut bytes = Vec::new();
    for _ in 0..total {
        bytes.extend_from_slice(&request);
    }
    let mut sent = 0;
    let mut first = true;
    let mut statuses = Vec::new();
    while sent < bytes.len() {
        let end = if first { 10 } else { (sent + request.len()).min(bytes.len()) };
        first = false;
        if http.stream().write_all(&bytes[sent..end]).is_err() {
            break;
        }
        sent = end;
        std::thread::sleep(Duration::from_millis(80));
        if sent >= request.len() * (statuses.len() + 1) + 10 || sent == bytes.len() {
            match http.read_response() {
                Some(response) => statuses.push(response.status),
                None => break,
            }
        }
    }
    assert!(
        statuses.iter().all(|&status| status == 200) && statuses.len() == total,
        "statuses: {statuses:?}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_408_never_overtakes_the_answer_owed_to_an_earlier_request() {
    // Goal: a half-sent request that times out behind one still owed its answer is dropped,
    // and the connection closes once that answer is written. HTTP answers in request order:
    // a 408 written first would read as the answer to the request the node holds.
    let config = ServerConfig { request_timeout_ms: 300, ..ServerConfig::loopback() };
    let (server, gate) = Gate::start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    // R1: a query, submitted and held by the node. R2: half a head.
    http.send(&Http::request_bytes("GET", "/v1/skus/1", None, None));
    gate.wait_held(1);
    http.send(b"GET /health HTTP/1.1\r\nHost: loc");
    // The node answers R1 only after the request timeout has cut the connection.
    std::thread::sleep(Duration::from_millis(800));
    gate.release_all();
    let first = http.read_response().expect("the answer owed");
    assert_eq!(first.status, 404, "{:?}", String::from_utf8_lossy(&first.body));
    assert!(http.read_response().is_none(), "the connection closes after the answer owed");
    server.shutdown().unwrap();
}

/// `ringfence_timeouts_total` as `/metrics` reports it, asked on a connection of its own.
fn timeouts(server: &ringfence_ingress::ServerHandle) -> u64 {
    let mut probe = Http::connect(server.http_addr().unwrap());
    let text = String::from_utf8(probe.call("GET", "/metrics", None, None).body).unwrap();
    let line = text.lines().find(|line| line.starts_with("ringfence_timeouts_total ")).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_binary_timeout_never_overtakes_the_answer_owed_to_an_earlier_command() {
    // Goal: the same on the binary port: a half-sent frame that times out behind a command
    // still in flight is dropped, and the fatal `timeout` follows that command's answer, then
    // the connection closes. Without it the answer would be lost with the connection.
    let config = ServerConfig { request_timeout_ms: 1_000, ..ServerConfig::loopback() };
    let (server, gate) = Gate::start(config);
    let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    let mut frame = Vec::new();
    wire::encode_command(&mut frame, 1, &Command::Query(Query::Sku(SkuId(1))));
    stream.write_all(&frame).unwrap();
    gate.wait_held(1);
    let mut ping = Vec::new();
    wire::encode_empty(&mut ping, Kind::Ping, 2);
    stream.write_all(&ping[..ping.len() - 2]).unwrap();
    // The half-sent ping times out while the node holds the command.
    let deadline = Instant::now() + Duration::from_secs(20);
    while timeouts(&server) == 0 {
        assert!(Instant::now() < deadline, "the half-sent frame never timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
    gate.release_all();
    let frames = read_frames(&mut stream, 3, Duration::from_secs(20));
    let [Response::Outcome(_), Response::Error(error)] = frames.as_slice() else {
        panic!("the answer owed, then the timeout: {frames:?}");
    };
    assert_eq!((error.code, error.fatal), (wire::ErrorCode::Timeout, true));
    server.shutdown().unwrap();
}

#[test]
fn hostile_mixed_clients_never_stop_the_event_loop() {
    // Goal: clients doing random legal and illegal things on both ports under tiny budgets
    // (pages, HEAD, `Expect`, bad framing, wrong tokens, cut-off and bit-flipped writes,
    // half-closes, clients that never read), with a node that answers late and refuses some,
    // never stop the event loop: afterwards it still serves, and it stops without a panic.
    use ringfence_core::prng::Prng;
    use ringfence_core::{Query, SkuId};
    let config = ServerConfig {
        connection_in_flight_max: 3,
        address_in_flight_max: 5,
        in_flight_max: 12,
        outbound_max: 8 * 1024,
        outbound_total_max: 64 * 1024,
        request_timeout_ms: 300,
        connections_max: 24,
        connections_per_address_max: 20,
        idle_reclaim_after_ms: 50,
        rate_per_sec: 200,
        rate_burst: 20,
        admin_token: Some(common::TOKEN.into()),
        ..ServerConfig::loopback()
    };
    let (server, gate) = Gate::start(config);
    gate.0.lock().unwrap().mixed = true;
    let (binary, http_addr) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let releaser = {
        let gate = gate.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(3));
                gate.release_all();
            }
        })
    };
    let mut prng = Prng::new(0xa0d1_7001);
    let workers: Vec<_> = (0..12u64)
        .map(|worker| {
            let mut prng = prng.fork();
            std::thread::spawn(move || {
                let http_requests: Vec<Vec<u8>> = vec![
                    Http::request_bytes("GET", "/v1/skus?limit=100", None, None),
                    Http::request_bytes("HEAD", "/v1/skus?limit=7&cursor=4294967290", None, None),
                    Http::request_bytes("GET", "/v1/skus/1", None, None),
                    Http::request_bytes("HEAD", "/v1/orders/5", None, None),
                    Http::request_bytes("GET", "/metrics", None, None),
                    Http::request_bytes("GET", "/openapi.yaml", None, None),
                    Http::request_bytes("GET", "/v1/node", None, Some("wrong")),
                    Http::request_bytes(
                        "POST",
                        "/v1/orders",
                        Some(r#"{"request_id":"a","user":1,"sku":1,"qty":1}"#),
                        None,
                    ),
                    concat!(
                        "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\n",
                        "Expect: 100-continue\r\nContent-Length: 44\r\n\r\n"
                    )
                    .as_bytes()
                    .to_vec(),
                    br#"{"request_id":"b","user":1,"sku":1,"qty":1}"#.to_vec(),
                    concat!(
                        "GET /health HTTP/1.1\r\nHost: localhost\r\n",
                        "Connection: close\r\n\r\n"
                    )
                    .as_bytes()
                    .to_vec(),
                    b"GET /health HTTP/1.0\r\n\r\n".to_vec(),
                    b"GET /v1/skus/1 HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n".to_vec(),
                    b"GET /v1/skus HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
                ];
                let mut frames: Vec<Vec<u8>> = Vec::new();
                for (i, command) in [
                    Command::Query(Query::Sku(SkuId(1))),
                    Command::Query(Query::SkuAt(3)),
                    Command::Snapshot,
                ]
                .iter()
                .enumerate()
                {
                    let mut bytes = Vec::new();
                    wire::encode_command(&mut bytes, i as u64, command);
                    frames.push(bytes);
                }
                let mut ping = Vec::new();
                wire::encode_empty(&mut ping, Kind::Ping, 9);
                frames.push(ping);
                let mut node = Vec::new();
                wire::encode_empty(&mut node, Kind::Node, 10);
                frames.push(node);
                let mut auth = Vec::new();
                wire::encode_auth(&mut auth, 11, common::TOKEN.as_bytes());
                frames.push(auth);
                let mut bad_auth = Vec::new();
                wire::encode_auth(&mut bad_auth, 12, b"nope");
                frames.push(bad_auth);
                for _round in 0..40 {
                    let use_http = (worker + prng.below(2)) % 2 == 0;
                    let addr = if use_http { http_addr } else { binary };
                    let Ok(mut stream) = TcpStream::connect(addr) else { continue };
                    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut bytes = Vec::new();
                    for _ in 0..prng.range_inclusive(1, 40) {
                        let item = if use_http {
                            prng.pick(&http_requests).clone()
                        } else {
                            prng.pick(&frames).clone()
                        };
                        bytes.extend_from_slice(&item);
                    }
                    if prng.chance(1, 4) && !bytes.is_empty() {
                        let cut = prng.below(bytes.len() as u64) as usize;
                        bytes.truncate(cut);
                    }
                    if prng.chance(1, 8) && !bytes.is_empty() {
                        let at = prng.below(bytes.len() as u64) as usize;
                        bytes[at] ^= 1 << prng.below(8);
                    }
                    // Write in random pieces, sometimes reading, sometimes not.
                    let mut sent = 0;
                    while sent < bytes.len() {
                        let end = (sent + prng.range_inclusive(1, 700) as usize).min(bytes.len());
                        if stream.write_all(&bytes[sent..end]).is_err() {
                            break;
                        }
                        sent = end;
                        if prng.chance(1, 5) {
                            std::thread::sleep(Duration::from_millis(prng.below(20)));
                        }
                    }
                    match prng.below(4) {
                        0 => {}
                        1 => {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                        }
                        _ => {
                            let mut sink = [0u8; 4096];
                            for _ in 0..prng.below(10) {
                                if matches!(stream.read(&mut sink), Ok(0)) {
                                    break;
                                }
                            }
                        }
                    }
                    if prng.chance(1, 3) {
                        std::thread::sleep(Duration::from_millis(prng.below(400)));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut http = Http::connect(http_addr);
    assert_eq!(http.call("GET", "/health", None, None).status, 200, "the loop still serves");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    releaser.join().unwrap();
    server.shutdown().expect("the event loop did not panic");
}

#[test]
fn a_close_option_in_a_connection_list_closes_the_connection() {
    // Goal: `Connection` is a list of options (RFC 9110, section 7.6.1): a `close` among
    // others (`Connection: TE, close`, as libwww-perl sends) closes after the response.
    let server = start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    http.send(
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n",
    );
    let response = http.read_response().expect("an answer");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"), "{:?}", response.headers);
    server.shutdown().unwrap();
}

#[test]
fn bytes_ignored_after_connection_close_are_not_timed_as_a_slow_request() {
    // Goal: bytes pipelined behind a request with `Connection: close` are never served, and
    // never timed as a slow request: the request the node holds is answered with its own
    // answer however long the node takes.
    let config = ServerConfig { request_timeout_ms: 300, ..ServerConfig::loopback() };
    let (server, gate) = Gate::start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    let mut bytes =
        b"GET /v1/skus/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend_from_slice(&Http::request_bytes("GET", "/health", None, None));
    http.send(&bytes);
    gate.wait_held(1);
    std::thread::sleep(Duration::from_millis(800));
    gate.release_all();
    let response = http.read_response().expect("an answer");
    assert_eq!(
        response.status,
        404,
        "the submitted request was answered {}: {:?}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    server.shutdown().unwrap();
}
