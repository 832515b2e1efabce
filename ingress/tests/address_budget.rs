//! Per-source-address budgets ahead of the ring, and the event loop's per-turn budget, through
//! real sockets: an address at its in-flight budget is paused (nothing refused, nothing lost)
//! while another address is served; an address over its request rate is refused on both ports
//! alike while another is not; and one connection pipelining far more than a turn's worth is
//! served a turn at a time, in full; a catalogue page, many queries from one request, takes
//! only the room its budgets leave. Clients stand for a second address with 127.0.0.2.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use common::gate::Gate;
use common::{Http, HttpResponse, connect_from, create_sku, start};
use ringfence_core::{Command, Query, SkuId};
use ringfence_ingress::ServerConfig;
use ringfence_ingress::server::TURN_REQUESTS_MAX;
use ringfence_ingress::wire::{self, ErrorCode, ErrorFrame, Response};

const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long a condition may take to come true on a busy machine before the test calls it a
/// hang.
const DEADLINE: Duration = Duration::from_secs(20);

fn query_frames(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for correlation in 1..=count {
        wire::encode_command(&mut bytes, correlation, &Command::Query(Query::Sku(SkuId(1))));
    }
    bytes
}

/// Reads binary responses until `count` arrived (or the connection ended).
fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<Response> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut buffer, mut responses) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 16 * 1024];
    while responses.len() < count {
        let read = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        buffer.extend_from_slice(&chunk[..read]);
        let mut consumed = 0;
        while let Ok(Some((frame, used))) = wire::try_frame(&buffer[consumed..]) {
            responses.push(wire::decode_response(&frame).expect("a response frame"));
            consumed += used;
        }
        buffer.drain(..consumed);
    }
    responses
}

fn errors(responses: &[Response]) -> Vec<&ErrorFrame> {
    let mut errors = Vec::new();
    for response in responses {
        if let Response::Error(error) = response {
            errors.push(error);
        }
    }
    errors
}

/// The value of `sample` (name and labels) in the server's `/metrics`.
fn metric(http_addr: SocketAddr, sample: &str) -> u64 {
    let text = Http::connect(http_addr).call("GET", "/metrics", None, None).body;
    let text = String::from_utf8(text).unwrap();
    let line = text.lines().find(|line| line.split(' ').next() == Some(sample));
    let line = line.unwrap_or_else(|| panic!("no {sample} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn an_address_at_its_in_flight_budget_waits_while_another_is_served() {
    // Goal: two connections of one address pipelining twelve commands get at most
    // `address_in_flight_max` (4) in flight at a time — the rest wait unread, refused never —
    // while another address is admitted beside them; as answers come, the waiting commands
    // are taken in turn until every one is answered with its outcome.
    let config = ServerConfig {
        address_in_flight_max: 4,
        in_flight_max: 64,
        connection_in_flight_max: 64,
        ..ServerConfig::loopback()
    };
    let (server, gate) = Gate::start(config);
    let binary = server.binary_addr().unwrap();
    let mut flooders: Vec<TcpStream> =
        (0..2).map(|_| connect_from(FLOODER, binary).unwrap()).collect();
    for stream in &mut flooders {
        stream.write_all(&query_frames(6)).unwrap();
    }
    assert_eq!(gate.wait_held(4), 4);
    let mut buyer = TcpStream::connect(binary).unwrap();
    buyer.write_all(&query_frames(1)).unwrap();
    assert_eq!(gate.wait_held(5), 5, "the other address is admitted, the flooder is not");
    let limited = r#"ringfence_address_limited_total{limit="in_flight"}"#;
    assert!(metric(server.http_addr().unwrap(), limited) >= 1);

    gate.release_all();
    assert!(matches!(read_responses(&mut buyer, 1)[..], [Response::Outcome(_)]));
    for _ in 0..2 {
        assert_eq!(gate.wait_held(4), 4, "the waiting commands are taken, four at a time");
        gate.release_all();
    }
    let mut answered = 0;
    for stream in &mut flooders {
        let responses = read_responses(stream, 6);
        assert_eq!(responses.len(), 6);
        assert!(errors(&responses).is_empty(), "{responses:?}");
        answered += responses.len();
    }
    assert_eq!((answered, gate.held()), (12, 0));
    assert_eq!(metric(server.http_addr().unwrap(), "ringfence_busy_total"), 0);
    server.shutdown().unwrap();
}

#[test]
fn an_address_over_its_rate_is_refused_on_both_ports_and_another_is_not() {
    // Goal: with `address_rate_per_sec` set, an address's burst is spent by all its
    // connections on both ports together: past it, the binary port answers a non-fatal
    // `rate_limited` with a retry hint, and HTTP a 429 `rate_limited` with `Retry-After`, both
    // naming the address's budget; a client from another address is served meanwhile.
    let config =
        ServerConfig { address_rate_per_sec: 1, address_rate_burst: 2, ..ServerConfig::loopback() };
    let server = start(config);
    let (binary, http) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    let mut flooder = connect_from(FLOODER, binary).unwrap();
    flooder.write_all(&query_frames(3)).unwrap();
    // Binary answers carry correlation ids and leave as they are ready: the refusal, made at
    // once, may come before the two outcomes.
    let responses = read_responses(&mut flooder, 3);
    let outcomes = responses.iter().filter(|r| matches!(r, Response::Outcome(_))).count();
    let refusals = errors(&responses);
    assert_eq!((outcomes, refusals.len()), (2, 1), "{responses:?}");
    let refusal = refusals[0];
    assert_eq!(refusal.code, ErrorCode::RateLimited);
    assert!(!refusal.fatal && refusal.retry_after_ms > 0);
    assert!(refusal.message.contains("source address"), "{}", refusal.message);

    let mut flooder_http = Http::over(connect_from(FLOODER, http).unwrap());
    let response = flooder_http.call("GET", "/v1/skus/1", None, None);
    assert_eq!((response.status, response.json()["error"].clone()), (429, "rate_limited".into()));
    assert!(response.header("retry-after").is_some());
    let message = response.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("source address"), "{message}");

    let mut other = Http::connect(http);
    let response = other.call("GET", "/v1/skus/1", None, None);
    assert_ne!(response.status, 429, "another address has its own budget");
    // The flooder's connections still work: refusals at the rate budget close nothing.
    flooder.write_all(&wire_ping()).unwrap();
    assert!(matches!(read_responses(&mut flooder, 1)[..], [Response::Pong]));
    assert_eq!(metric(http, r#"ringfence_address_limited_total{limit="rate"}"#), 2);
    server.shutdown().unwrap();
}

fn wire_ping() -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode_empty(&mut bytes, wire::Kind::Ping, 99);
    bytes
}

#[test]
fn a_pipelined_burst_is_taken_a_turn_at_a_time_and_served_in_full() {
    // Goal: one connection writing 2,000 commands at once, then closing its sending side, has
    // at most `TURN_REQUESTS_MAX` of them taken between two polls of the backend (once per
    // turn of the event loop, so other connections get their turn in between), and still
    // every command is taken and answered before the connection closes.
    let config = ServerConfig {
        address_in_flight_max: 4_096,
        in_flight_max: 8_192,
        connection_in_flight_max: 4_096,
        ..ServerConfig::loopback()
    };
    let (server, gate) = Gate::start(config);
    let mut stream = TcpStream::connect(server.binary_addr().unwrap()).unwrap();
    stream.write_all(&query_frames(2_000)).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut released = 0;
    while released < 2_000 {
        gate.wait_held(1);
        released += gate.release_all();
    }
    let responses = read_responses(&mut stream, 2_000);
    assert_eq!(responses.len(), 2_000);
    assert!(errors(&responses).is_empty());
    let state = gate.0.lock().unwrap();
    assert_eq!(state.submitted, 2_000);
    assert!(
        state.most_between_polls <= u64::from(TURN_REQUESTS_MAX),
        "{} commands taken in one turn",
        state.most_between_polls
    );
    drop(state);
    server.shutdown().unwrap();
}

/// The SKU ids on a catalogue page and its `next_cursor`; the page must be a 200.
fn page_of(response: &HttpResponse) -> (Vec<u64>, Option<u64>) {
    assert_eq!(response.status, 200, "{}", response.json());
    let page = response.json();
    let id = |sku: &serde_json::Value| sku["sku"].as_str().unwrap().parse::<u64>().unwrap();
    let skus = page["skus"].as_array().unwrap().iter().map(id).collect();
    let next = page["next_cursor"].as_str().map(|next| next.parse().unwrap());
    (skus, next)
}

#[test]
fn a_catalogue_page_wider_than_the_address_budget_is_served_short_and_the_server_lives() {
    // Goal: a page of more SKUs than its address has room for in flight — one page wider than
    // the whole budget, then pipelined pages each read below the budget and wider than what
    // is left of it — is answered 200 with the SKUs the budget had room for and a cursor that
    // continues after them (the documented short page), never with a dead event loop; a new
    // connection is served afterwards and the cursor leads to the rest.
    let config = ServerConfig { address_in_flight_max: 8, ..ServerConfig::loopback() };
    let server = start(config);
    let http = server.http_addr().unwrap();
    let mut admin = Http::connect(http);
    for sku in 1..=12 {
        create_sku(&mut admin, sku, 10, 0, 60_000);
    }
    let mut flooder = Http::over(connect_from(FLOODER, http).unwrap());
    let page = flooder.call("GET", "/v1/skus", None, None);
    assert_eq!(page_of(&page), ((1..=8).collect(), Some(8)), "8 of the default 20");
    flooder.send(&Http::request_bytes("GET", "/v1/skus?limit=5", None, None).repeat(3));
    for n in 0..3 {
        let page = flooder.read_response().unwrap_or_else(|| panic!("page {n}: no answer"));
        let (skus, next) = page_of(&page);
        assert!((1..=5).contains(&skus.len()), "page {n}: {skus:?}");
        assert_eq!(skus, (1..=skus.len() as u64).collect::<Vec<_>>(), "page {n}");
        assert_eq!(next, Some(skus.len() as u64), "page {n}");
    }
    let mut fresh = Http::connect(http);
    assert_eq!(fresh.call("GET", "/health", None, None).status, 200);
    let rest = fresh.call("GET", "/v1/skus?cursor=8", None, None);
    assert_eq!(page_of(&rest), ((9..=12).collect(), None));
    server.shutdown().unwrap();
}

#[test]
fn a_catalogue_page_takes_only_the_room_left_in_its_address_budget() {
    // Goal: two pipelined pages of 5 under an address budget of 8, with nothing answered
    // meanwhile: the first takes 5 queries, the second the 3 left (counted before any is
    // submitted, so the budget is never passed), reading then pauses; released, both pages
    // are answered and nothing more was submitted.
    let config = ServerConfig {
        address_in_flight_max: 8,
        in_flight_max: 64,
        connection_in_flight_max: 64,
        ..ServerConfig::loopback()
    };
    let (server, gate) = Gate::start(config);
    let mut flooder = Http::over(connect_from(FLOODER, server.http_addr().unwrap()).unwrap());
    flooder.send(&Http::request_bytes("GET", "/v1/skus?limit=5", None, None).repeat(2));
    assert_eq!(gate.wait_held(8), 8);
    gate.release_all();
    for n in 0..2 {
        let page = flooder.read_response().unwrap_or_else(|| panic!("page {n}: no answer"));
        assert_eq!(page_of(&page), (vec![], None), "page {n}: every query answered unknown_sku");
    }
    assert_eq!((gate.submitted(), gate.held()), (8, 0));
    server.shutdown().unwrap();
}

#[test]
fn a_catalogue_page_takes_only_the_room_left_in_its_connection_budget() {
    // Goal: a page of 20 on a connection allowed 4 commands in flight submits 4 queries, not
    // 20: the connection's bound holds for a page as for single commands; the next pipelined
    // page waits for the first's answers, then takes 4 in its turn.
    let config = ServerConfig {
        connection_in_flight_max: 4,
        in_flight_max: 64,
        address_in_flight_max: 32,
        ..ServerConfig::loopback()
    };
    let (server, gate) = Gate::start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    http.send(&Http::request_bytes("GET", "/v1/skus?limit=20", None, None).repeat(2));
    for n in 0..2 {
        assert_eq!(gate.wait_held(4), 4, "page {n}");
        gate.release_all();
        let page = http.read_response().unwrap_or_else(|| panic!("page {n}: no answer"));
        assert_eq!(page_of(&page), (vec![], None), "page {n}");
    }
    assert_eq!(gate.submitted(), 8);
    server.shutdown().unwrap();
}
