//! How the server ends a connection it closes on its own: every answer it wrote reaches the
//! client, even when the client sent bytes the server will never read. Closing a socket with
//! unread input makes the kernel reset the connection, discarding output not yet delivered;
//! the server instead ends its side of the stream and discards input until the client closes
//! (or for a bounded time).

mod common;

use std::io::Read;
use std::thread;
use std::time::Duration;

use common::Http;
use ringfence_ingress::ServerConfig;

/// Bytes of the answers queued before the connection closes: more than loopback moves at once
/// into the client's receive buffer, so part of it is still in the server's kernel when the
/// server is done with the connection.
const ANSWERS_MIN: usize = 2 << 20;

/// Reads until the server ends the stream; what was read, and whether it ended cleanly (not
/// reset).
fn read_to_end(http: &mut Http) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match http.stream().read(&mut chunk) {
            Ok(0) => return (bytes, true),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return (bytes, false),
        }
    }
}

#[test]
fn answers_written_before_a_close_reach_a_client_whose_last_bytes_go_unread() {
    // Goal: a client pipelines requests ending with `Connection: close`, reads slowly, and sends
    // more bytes after the close (a request of its own pipeline the server will not serve).
    // Every answer up to the close arrives whole, then the stream ends without a reset.
    let server = common::start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    let document = Http::request_bytes("GET", "/openapi.yaml", None, None);
    let mut sent = 0;
    let mut requests = Vec::new();
    while sent < ANSWERS_MIN {
        requests.extend_from_slice(&document);
        sent += 40 << 10;
    }
    let count = requests.len() / document.len();
    requests
        .extend_from_slice(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    http.send(&requests);
    // The server serves them all and stops reading; what the client sends now stays unread.
    thread::sleep(Duration::from_millis(500));
    http.send(&Http::request_bytes("GET", "/health", None, None));
    thread::sleep(Duration::from_millis(500));

    let (bytes, clean) = read_to_end(&mut http);
    let answers = bytes.windows(15).filter(|w| *w == b"HTTP/1.1 200 OK").count();
    assert_eq!(answers, count + 1, "every answer before the close arrives ({} bytes)", bytes.len());
    assert!(clean, "the stream ends, not reset");
    // The last answer, the close's, arrived whole.
    let tail = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(120)..]).to_lowercase();
    let last = tail.rsplit("http/1.1 200 ok").next().unwrap();
    assert!(
        last.contains("connection: close") && last.ends_with("{\"status\":\"ok\"}\n"),
        "{tail}"
    );
    server.shutdown().unwrap();
}

/// `ringfence_connections_open` as `/metrics` reports it, asked on a connection of its own.
fn connections_open(server: &ringfence_ingress::ServerHandle) -> u64 {
    let mut probe = Http::connect(server.http_addr().unwrap());
    let metrics = probe.call("GET", "/metrics", None, None);
    let text = String::from_utf8(metrics.body).unwrap();
    let line = text.lines().find(|line| line.starts_with("ringfence_connections_open ")).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_closed_connection_whose_client_stays_ends_its_stream_at_once_and_goes_within_the_linger() {
    // Goal: after the answer to `Connection: close` the client reads the end of the stream at
    // once, though it neither closes nor stops sending; the server discards what it sends and
    // frees the connection within the linger bound, never waiting on the client.
    let server = common::start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    http.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(http.read_response().expect("the answer").status, 200);
    http.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut rest = Vec::new();
    let ended = http.stream().read_to_end(&mut rest);
    assert!(ended.is_ok() && rest.is_empty(), "the stream ends after the answer: {ended:?}");
    // One more open connection is the probe's own.
    assert_eq!(connections_open(&server), 2, "the closing connection still lingers");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(connections_open(&server), 1, "freed within the linger bound");
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_closes_too_frees_its_lingering_connection_at_once() {
    // Goal: a lingering connection is freed as soon as its client closes its side.
    let server = common::start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    http.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(http.read_response().expect("the answer").status, 200);
    http.send(b"unread bytes the server discards");
    drop(http);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while connections_open(&server) > 1 {
        assert!(std::time::Instant::now() < deadline, "not freed at the client's close");
        thread::sleep(Duration::from_millis(10));
    }
    server.shutdown().unwrap();
}
