//! Hostile traffic through real sockets: garbage, oversized and slow requests, clients that do
//! not read, too many connections, too many requests, a full ring. Each must cost the sender
//! at most its own connection while everyone else keeps being served.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{Http, Stuck, TOKEN, create_sku, start};
use ringfence_core::prng::Prng;
use ringfence_core::{Command, Query, SkuId};
use ringfence_ingress::wire::{self, ErrorCode, Kind, Response};
use ringfence_ingress::{Backend, BackendCompletion, Client, NodeStatus, Refusal, ServerConfig};

/// Reads binary frames until the server closes; returns the error frames received.
fn binary_errors_until_close(stream: &mut TcpStream) -> Vec<wire::ErrorFrame> {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let mut errors = Vec::new();
    let mut at = 0;
    while let Ok(Some((frame, used))) = wire::try_frame(&buffer[at..]) {
        at += used;
        if let Ok(Response::Error(error)) = wire::decode_response(&frame) {
            errors.push(error);
        }
    }
    errors
}

#[test]
fn garbage_flood_on_both_ports_then_still_serving() {
    // Goal: random bytes and corrupted requests on both ports are answered with errors and
    // closed connections; afterwards the server serves correct answers on new connections.
    let config = ServerConfig { request_timeout_ms: 500, ..ServerConfig::loopback() };
    let server = start(config);
    let (binary, http_addr) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    let mut admin = Http::connect(http_addr);
    create_sku(&mut admin, 1, 10, 1, 60_000);
    let mut prng = Prng::new(0x5eed_1234_abcd_0001);
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            // Each thread its own stream: what one sends does not depend on the others.
            let mut prng = prng.fork();
            std::thread::spawn(move || {
                let addr = if i % 2 == 0 { binary } else { http_addr };
                for round in 0..8 {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    let mut bytes = if round % 2 == 0 {
                        Http::request_bytes(
                            "POST",
                            "/v1/orders",
                            Some(r#"{"request_id":"g","user":1,"sku":1,"qty":1}"#),
                            None,
                        )
                    } else {
                        let mut frame = Vec::new();
                        wire::encode_command(&mut frame, 1, &Command::Query(Query::Sku(SkuId(1))));
                        frame
                    };
                    for _ in 0..prng.range_inclusive(1, 4) {
                        let at = prng.below(bytes.len() as u64) as usize;
                        // A mask with a bit set: the byte really changes.
                        bytes[at] ^= (prng.next_u32() as u8) | 1;
                    }
                    let mut garbage = vec![0u8; prng.below(3_000) as usize];
                    prng.fill(&mut garbage);
                    bytes.extend(garbage);
                    let _ = stream.write_all(&bytes);
                    let _ = stream.shutdown(Shutdown::Write);
                    // The server must close the connection; reading to the end proves it.
                    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let mut sink = Vec::new();
                    let closed = match stream.read_to_end(&mut sink) {
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                    };
                    assert!(closed, "server kept a garbage connection open");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // Still serving, correctly, on both ports.
    let body = r#"{"request_id":"after-flood","user":77,"sku":1,"qty":1}"#;
    let mut http = Http::connect(http_addr);
    let response = http.call("POST", "/v1/orders", Some(body), None);
    assert!(response.status == 201 || response.status == 409, "{}", response.status);
    let mut client = Client::connect(&[binary]).unwrap();
    let sku = client.call(Command::Query(Query::Sku(SkuId(1)))).unwrap();
    let ringfence_core::Outcome::Sku(view) = sku else { panic!("{sku:?}") };
    assert_eq!(view.available + view.reserved + view.sold, 10);
    let metrics = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
    assert!(!metrics.contains("ringfence_bad_requests_total{protocol=\"binary\"} 0\n"));
    assert!(!metrics.contains("ringfence_bad_requests_total{protocol=\"http\"} 0\n"));
    server.shutdown().unwrap();
}

#[test]
fn bad_frames_get_an_error_frame_then_close() {
    // Goal: an unknown version, an oversized frame and an HTTP request on the binary port each
    // get one fatal error frame with the right code, then the connection closes.
    let server = start(ServerConfig::loopback());
    let addr = server.binary_addr().unwrap();
    let mut ping = Vec::new();
    wire::encode_empty(&mut ping, Kind::Ping, 1);
    let mut future = ping.clone();
    future[6] = 9;
    let mut huge = ping.clone();
    huge[..4].copy_from_slice(&1_000_000u32.to_le_bytes());
    let cases: [(&[u8], ErrorCode); 3] = [
        (&future, ErrorCode::UnsupportedVersion),
        (&huge, ErrorCode::FrameTooLarge),
        (b"GET /health HTTP/1.1\r\n\r\n", ErrorCode::MalformedFrame),
    ];
    for (bytes, code) in cases {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        let errors = binary_errors_until_close(&mut stream);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, code);
        assert!(errors[0].fatal);
    }
    server.shutdown().unwrap();
}

#[test]
fn oversized_heads_and_bodies_get_431_and_413() {
    // Goal: HTTP size limits answer with their statuses and the JSON error body.
    let config = ServerConfig { header_max: 1024, body_max: 512, ..ServerConfig::loopback() };
    let server = start(config);
    let addr = server.http_addr().unwrap();
    let mut http = Http::connect(addr);
    let head = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(4000));
    http.send(head.as_bytes());
    let response = http.read_response().unwrap();
    assert_eq!(
        (response.status, response.json()["error"].clone()),
        (431, "headers_too_large".into())
    );
    let mut http = Http::connect(addr);
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    let response = http.call("POST", "/v1/orders", Some(&body), None);
    assert_eq!((response.status, response.json()["error"].clone()), (413, "body_too_large".into()));
    assert!(http.closed_by_server());
    server.shutdown().unwrap();
}

#[test]
fn a_request_smuggled_behind_ambiguous_framing_is_never_executed() {
    // Goal: on one keep-alive connection, a request whose body length is ambiguous (repeated
    // or listed Content-Length, a signed one, Transfer-Encoding beside it) followed by a
    // reservation gets exactly one 400 and a closed connection; the reservation, which a
    // framer trusting one of the lengths would have run, never reaches the engine.
    let server = start(ServerConfig::loopback());
    let addr = server.http_addr().unwrap();
    let mut admin = Http::connect(addr);
    create_sku(&mut admin, 1, 10, 10, 60_000);
    let smuggled = Http::request_bytes(
        "POST",
        "/v1/orders",
        Some(r#"{"request_id":"smuggled","user":666,"sku":1,"qty":3}"#),
        None,
    );
    let n = smuggled.len();
    let cases = [
        (format!("Content-Length: 0\r\nContent-Length: {n}"), "duplicate_content_length"),
        (format!("Content-Length: {n}\r\nContent-Length: {n}"), "duplicate_content_length"),
        (format!("Content-Length: 0, {n}"), "duplicate_content_length"),
        ("Content-Length: +0".to_owned(), "invalid_content_length"),
        (
            format!("Transfer-Encoding: chunked\r\nContent-Length: {n}"),
            "transfer_encoding_with_content_length",
        ),
    ];
    for (fields, code) in &cases {
        let mut bytes =
            format!("GET /v1/skus/1 HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n\r\n").into_bytes();
        bytes.extend_from_slice(&smuggled);
        bytes.extend_from_slice(&Http::request_bytes("GET", "/health", None, None));
        let mut http = Http::connect(addr);
        http.send(&bytes);
        let response = http.read_response().expect("one refusal");
        assert_eq!((response.status, response.json()["error"].clone()), (400, (*code).into()));
        assert_eq!(response.header("connection"), Some("close"), "{fields}");
        assert!(http.closed_by_server(), "{fields}: the connection stayed open");
        assert!(http.read_response().is_none(), "{fields}: a second response was sent");
    }
    // The connections are closed only after everything read from them was answered, so a
    // smuggled reservation would be visible by now.
    let sku = admin.call("GET", "/v1/skus/1", None, None).json();
    assert_eq!((sku["available"].clone(), sku["reserved"].clone()), (10.into(), 0.into()));
    let order = Http::request_bytes(
        "POST",
        "/v1/orders",
        Some(r#"{"request_id":"smuggled","user":666,"sku":1,"qty":1}"#),
        None,
    );
    admin.send(&order);
    let fresh = admin.read_response().unwrap();
    assert_eq!(fresh.status, 201, "the smuggled request id was never used: {:?}", fresh.json());
    let metrics = String::from_utf8(admin.call("GET", "/metrics", None, None).body).unwrap();
    for (reason, count) in [
        ("duplicate_content_length", 3),
        ("invalid_content_length", 1),
        ("transfer_encoding_with_content_length", 1),
    ] {
        let line =
            format!("ringfence_http_framing_refusals_total{{reason=\"{reason}\"}} {count}\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    server.shutdown().unwrap();
}

#[test]
fn slow_requests_are_timed_out() {
    // Goal: a half-sent HTTP head gets 408 and a half-sent frame a timeout error frame, each
    // followed by close, once the request timeout passes.
    let config = ServerConfig { request_timeout_ms: 300, ..ServerConfig::loopback() };
    let server = start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    http.send(b"GET /health HTTP/1.1\r\nHost: slo");
    let response = http.read_response().expect("a 408 before close");
    assert_eq!(response.status, 408);
    assert!(http.closed_by_server());
    let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    let mut ping = Vec::new();
    wire::encode_empty(&mut ping, Kind::Ping, 1);
    stream.write_all(&ping[..10]).unwrap();
    let errors = binary_errors_until_close(&mut stream);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::Timeout);
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_does_not_read_is_disconnected_without_slowing_others() {
    // Goal: pipelining requests without reading answers fills the bounded outbound buffer and
    // the connection is closed; a well-behaved client is served throughout.
    let config = ServerConfig { outbound_max: 64 * 1024, ..ServerConfig::loopback() };
    let server = start(config);
    let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut pings = Vec::new();
    for correlation in 0..4_096 {
        wire::encode_empty(&mut pings, Kind::Ping, correlation);
    }
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    let mut disconnected = false;
    for _ in 0..2_000 {
        if stream.write_all(&pings).is_err() {
            disconnected = true;
            break;
        }
        client.ping().expect("the well-behaved client is served");
    }
    assert!(disconnected, "the non-reading client was never disconnected");
    let mut http = Http::connect(server.http_addr().unwrap());
    let metrics = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
    assert!(metrics.contains("ringfence_slow_reader_disconnects_total 1\n"), "{metrics}");
    server.shutdown().unwrap();
}

#[test]
fn connection_limit_refuses_the_extra_connection() {
    // Goal: beyond connections_max a new connection gets 503 and is closed; existing ones work.
    let config = ServerConfig { connections_max: 3, ..ServerConfig::loopback() };
    let server = start(config);
    let addr = server.http_addr().unwrap();
    let mut kept: Vec<Http> = (0..3).map(|_| Http::connect(addr)).collect();
    for http in &mut kept {
        assert_eq!(http.call("GET", "/health", None, None).status, 200);
    }
    let mut extra = Http::connect(addr);
    let response = extra.read_response().expect("a refusal");
    assert_eq!(
        (response.status, response.json()["error"].clone()),
        (503, "too_many_connections".into())
    );
    assert!(extra.closed_by_server());
    assert_eq!(kept[0].call("GET", "/health", None, None).status, 200);
    drop(kept);
    server.shutdown().unwrap();
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    // Goal: a connection over its token bucket gets 429 with Retry-After; others are unaffected.
    let config = ServerConfig { rate_per_sec: 1, rate_burst: 2, ..ServerConfig::loopback() };
    let server = start(config);
    let addr = server.http_addr().unwrap();
    let mut http = Http::connect(addr);
    // Pipelined in one write, so the bucket cannot refill between them.
    http.send(&Http::request_bytes("GET", "/v1/skus/1", None, None).repeat(4));
    let responses: Vec<_> = (0..4).map(|_| http.read_response().unwrap()).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 404, 429, 429]);
    assert_eq!(responses[2].header("retry-after"), Some("1"));
    assert_eq!(responses[2].json()["error"], "rate_limited");
    let mut other = Http::connect(addr);
    assert_eq!(other.call("GET", "/v1/skus/1", None, None).status, 404);
    server.shutdown().unwrap();
}

/// A node whose ring is always full.
struct FullRing;

impl Backend for FullRing {
    fn try_submit(&mut self, _command: Command, _token: u64) -> Result<(), Refusal> {
        Err(Refusal::Busy)
    }
    fn poll(&mut self) -> Option<BackendCompletion> {
        None
    }
    fn status(&self) -> NodeStatus {
        NodeStatus::default()
    }
}

#[test]
fn full_ring_answers_busy_at_once() {
    // Goal: when the node refuses as busy, HTTP answers 503 with Retry-After and the binary
    // port a non-fatal busy error; both connections stay usable.
    let mut config = ServerConfig::loopback();
    config.admin_token = Some(TOKEN.into());
    let server = ringfence_ingress::start(config, |_| Ok(FullRing)).unwrap();
    let mut http = Http::connect(server.http_addr().unwrap());
    let body = r#"{"request_id":"b","user":1,"sku":1,"qty":1}"#;
    let response = http.call("POST", "/v1/orders", Some(body), None);
    assert_eq!((response.status, response.json()["error"].clone()), (503, "busy".into()));
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(http.call("GET", "/health", None, None).status, 200);
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    let answers = client.pipeline(&[Command::Query(Query::Sku(SkuId(1)))]).unwrap();
    let refusal = answers[0].as_ref().unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Busy);
    assert!(!refusal.fatal && refusal.retry_after_ms > 0);
    client.ping().unwrap();
    let metrics = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
    assert!(metrics.contains("ringfence_busy_total 2\n"), "{metrics}");
    server.shutdown().unwrap();
}

#[test]
fn pipelined_requests_behind_an_unanswered_one_are_bounded() {
    // Goal: responses that must wait behind an unanswered command are bounded per connection:
    // the server stops reading that connection (its writes block) instead of buffering without
    // limit, and other connections are still served.
    let config = ServerConfig {
        connection_in_flight_max: 8,
        drain_timeout_ms: 10,
        ..ServerConfig::loopback()
    };
    let server = ringfence_ingress::start(config, |_| Ok(Stuck)).unwrap();
    let addr = server.http_addr().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let body = r#"{"request_id":"s","user":1,"sku":1,"qty":1}"#;
    stream.write_all(&Http::request_bytes("POST", "/v1/orders", Some(body), None)).unwrap();
    let health = Http::request_bytes("GET", "/health", None, None).repeat(10_000);
    let mut blocked = false;
    for _ in 0..10_000 {
        if stream.write_all(&health).is_err() {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the server kept reading 100 million queued requests");
    let mut other = Http::connect(addr);
    assert_eq!(other.call("GET", "/health", None, None).status, 200);
    drop(stream);
    server.shutdown().unwrap();
}

#[test]
fn a_refusal_reaches_the_client_though_it_sent_more_than_was_read() {
    // Goal: a request refused for its framing, followed by much more input than the server
    // reads before answering, still gets its 400: the server drains what is waiting before it
    // closes, so the close is not a reset that would destroy the answer in flight.
    let server = start(ServerConfig::loopback());
    let addr = server.http_addr().unwrap();
    for round in 0..5 {
        let mut http = Http::connect(addr);
        let mut bytes =
            b"GET /v1/skus/1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: +0\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
        let mut writer = http.stream().try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            use std::io::Write as _;
            // The server stops reading: most of this never arrives, and that is the point.
            let _ = writer.write_all(&bytes);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let response = http.read_response().unwrap_or_else(|| panic!("round {round}: no answer"));
        assert_eq!(response.status, 400, "round {round}");
        drop(http);
        sending.join().unwrap();
    }
    server.shutdown().unwrap();
}

#[test]
fn a_binary_argument_out_of_range_is_refused_naming_the_field() {
    // Goal: as on HTTP, a command the engine would refuse as `invalid_argument` is refused
    // before it is journaled with `invalid_argument` (code 20) naming the field, and the
    // connection goes on; a quantity of zero is still the engine's `invalid_qty` outcome.
    use ringfence_core::{Action, CreateSku, Outcome, Rejection, RequestKey, Reserve, UserId};
    use ringfence_ingress::ClientError;
    let server = start(ServerConfig::loopback());
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    client.authenticate(TOKEN).unwrap();
    let journaled = client.node().unwrap().last_sequence;
    let key = RequestKey::from_u128;
    let no_timeout = CreateSku {
        sku: SkuId(4),
        stock: 5,
        price_cents: 100,
        per_user_limit: 0,
        payment_timeout_ms: 0,
        sale_start: None,
        sale_end: None,
    };
    let nobody = Reserve { user: UserId(0), sku: SkuId(4), qty: 1, coupon: None };
    for (action, field) in [
        (Action::CreateSku(no_timeout), "`payment_timeout_ms`"),
        (Action::Reserve(nobody), "`user`"),
    ] {
        match client.call(Command::Client { key: key(7), action }) {
            Err(ClientError::Refused(frame)) => {
                assert_eq!((frame.code, frame.fatal), (ErrorCode::InvalidArgument, false));
                assert!(frame.message.contains(field), "{}", frame.message);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(client.node().unwrap().last_sequence, journaled, "a refused command was journaled");
    let zero = Reserve { qty: 0, ..nobody };
    let outcome = client.call(Command::Client { key: key(8), action: Action::Reserve(zero) });
    assert!(matches!(outcome, Ok(Outcome::Rejected(Rejection::InvalidQty))), "{outcome:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_cursor_at_the_last_catalogue_position_is_answered_not_a_panic() {
    // Goal: `cursor` 4294967295, the last position a SKU can have (and so a valid
    // `next_cursor`), reads that one position and answers a page with no next cursor — there
    // is no position after it — whatever the limit; the server goes on serving.
    let server = start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    create_sku(&mut http, 1, 1, 0, 60_000);
    for path in ["/v1/skus?cursor=4294967295", "/v1/skus?cursor=4294967295&limit=1"] {
        let response = http.call("GET", path, None, None);
        assert_eq!(response.status, 200, "{path}: {}", response.json());
        let page = response.json();
        assert_eq!(page["skus"], serde_json::json!([]), "{path}");
        assert!(page["next_cursor"].is_null(), "{path}: {page}");
    }
    let mut fresh = Http::connect(server.http_addr().unwrap());
    assert_eq!(fresh.call("GET", "/v1/skus?limit=1", None, None).json()["next_cursor"], "1");
    server.shutdown().unwrap();
}
