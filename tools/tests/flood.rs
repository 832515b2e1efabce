//! A flood from one source address against `ringfence serve` with its default limits: binary
//! connections from 127.0.0.2 pipeline reservations with distinct request ids as fast as they
//! can, while a buyer from 127.0.0.1 reserves over both ports. Every one of the buyer's
//! reservations must be `Reserved` and answered within a generous liveness bound (not a speed
//! target). With a processor thread the server must show that it held the flood to its
//! address's budget, in its metrics and in its log; with the processor on the event loop, the
//! loop answers what it read before it reads again, so the buyer waits at most one loop.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Serve, TempDir, connect_from};
use ringfence_core::{Action, Command, Outcome, RequestKey, Reserve, SkuId, UserId};
use ringfence_ingress::Client;
use ringfence_ingress::wire::{self, ErrorCode, Response};

/// Where the flood comes from: another loopback address, so it has a budget of its own.
const FLOOD_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Flood connections: together they could hold twice the node's default 16,384 commands in
/// flight (4,096 per connection), so without a per-address budget they fill it alone.
const FLOOD_CONNECTIONS: u64 = 8;
/// Reservations one flood connection sends at most, so the flood cannot fill the engine's
/// default tables (1,048,576 orders and request keys) however fast this machine is.
const FLOOD_PER_CONNECTION_MAX: u64 = 100_000;
/// Reservations encoded per write by a flood connection.
const FLOOD_BATCH: u64 = 256;
/// Answers the flood must have had before the buyer starts, so it is in full swing.
const FLOOD_WARM_ANSWERS: u64 = 5_000;
/// The buyer's reservations.
const BUYS: u64 = 50;
/// How long each of the buyer's reservations may take to be answered: a liveness bound, not a
/// speed target. Answers typically take tens of milliseconds here (a debug build behind
/// 4,096 flood commands); on a shared two-core machine under load, stalls of about a second
/// were seen.
const ANSWER_BOUND: Duration = Duration::from_secs(5);
/// How long the start, the flood's warm-up and the log line may take on a busy machine before
/// the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(60);
const BUYER_SKU: u64 = 1;
const FLOOD_SKU: u64 = 2;

/// Flood connections, each with a writer thread pipelining reservations and a reader thread
/// counting the answers.
struct Flood {
    stop: Arc<AtomicBool>,
    streams: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
    /// Outcomes received.
    outcomes: Arc<AtomicU64>,
    /// Error frames received, by code number (`busy`, `rate_limited`, ...).
    refusals: Arc<[AtomicU64; 32]>,
}

impl Flood {
    fn start(target: SocketAddr) -> Flood {
        let mut flood = Flood {
            stop: Arc::new(AtomicBool::new(false)),
            streams: Vec::new(),
            threads: Vec::new(),
            outcomes: Arc::new(AtomicU64::new(0)),
            refusals: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        };
        for connection in 0..FLOOD_CONNECTIONS {
            let stream = connect_from(FLOOD_FROM, target).expect("the flood connects");
            let (writer, reader) = (stream.try_clone().unwrap(), stream.try_clone().unwrap());
            let stop = Arc::clone(&flood.stop);
            flood.threads.push(std::thread::spawn(move || flood_writer(writer, connection, &stop)));
            let (outcomes, refusals) = (Arc::clone(&flood.outcomes), Arc::clone(&flood.refusals));
            flood
                .threads
                .push(std::thread::spawn(move || flood_reader(reader, &outcomes, &refusals)));
            flood.streams.push(stream);
        }
        flood
    }

    /// Answers of any kind received so far.
    fn answers(&self) -> u64 {
        let refused: u64 = self.refusals.iter().map(|count| count.load(Ordering::Relaxed)).sum();
        self.outcomes.load(Ordering::Relaxed) + refused
    }

    fn refused(&self, code: ErrorCode) -> u64 {
        self.refusals[usize::from(code as u16).min(31)].load(Ordering::Relaxed)
    }

    /// Stops the writers and cuts every connection (what the server still holds for them is
    /// not waited for), then joins the threads.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads {
            thread.join().expect("a flood thread ends without panicking");
        }
    }
}

/// A flood reservation: one flood user per connection, each request id distinct.
fn flood_reserve(connection: u64, n: u64) -> Command {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&connection.to_le_bytes());
    key[8..].copy_from_slice(&n.to_le_bytes());
    Command::Client {
        key: RequestKey(key),
        action: Action::Reserve(Reserve {
            user: UserId(1_000_000 + connection),
            sku: SkuId(FLOOD_SKU),
            qty: 1,
            coupon: None,
        }),
    }
}

/// Writes reservations in batches until stopped, the quota is sent or the socket fails; a
/// write blocks while the server does not read, which is how backpressure reaches it.
fn flood_writer(mut stream: TcpStream, connection: u64, stop: &AtomicBool) {
    let mut out = Vec::with_capacity(FLOOD_BATCH as usize * 64);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) && sent < FLOOD_PER_CONNECTION_MAX {
        out.clear();
        for _ in 0..FLOOD_BATCH {
            sent += 1;
            wire::encode_command(&mut out, sent, &flood_reserve(connection, sent));
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Reads answers until the connection ends, counting outcomes and refusals by code.
fn flood_reader(mut stream: TcpStream, outcomes: &AtomicU64, refusals: &[AtomicU64; 32]) {
    let mut input = Vec::with_capacity(128 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        input.extend_from_slice(&chunk[..read]);
        let mut consumed = 0;
        while let Ok(Some((frame, used))) = wire::try_frame(&input[consumed..]) {
            match wire::decode_response(&frame) {
                Ok(Response::Outcome(_)) => {
                    outcomes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Response::Error(error)) => {
                    let code = usize::from(error.code as u16).min(31);
                    refusals[code].fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(_) => {}
            }
            consumed += used;
        }
        input.drain(..consumed);
    }
}

/// One of the buyer's reservations, over the binary port (even `n`) or HTTP (odd `n`): how
/// long it took, or what it got instead of `Reserved`.
fn buy(serve: &Serve, client: &mut Client, n: u64) -> Result<Duration, String> {
    let start = Instant::now();
    let user = n + 1;
    let request_id = format!("buyer-{n}");
    if n % 2 == 0 {
        let command = Command::Client {
            key: ringfence_ingress::keys::request_key(&request_id),
            action: Action::Reserve(Reserve {
                user: UserId(user),
                sku: SkuId(BUYER_SKU),
                qty: 1,
                coupon: None,
            }),
        };
        match client.call(command) {
            Ok(Outcome::Reserved { .. }) => Ok(start.elapsed()),
            other => Err(format!("binary reservation {n}: {other:?}")),
        }
    } else {
        let body =
            format!(r#"{{"request_id":"{request_id}","user":{user},"sku":{BUYER_SKU},"qty":1}}"#);
        match serve.call("POST", "/v1/orders", &body, false) {
            (201, answer) if answer["order_id"].is_string() => Ok(start.elapsed()),
            other => Err(format!("HTTP reservation {n}: {other:?}")),
        }
    }
}

fn create_sku(serve: &Serve, sku: u64, stock: u64) {
    let body = serde_json::json!({
        "sku": sku, "stock": stock, "price_cents": 500, "per_user_limit": 0,
        "payment_timeout_ms": 600_000,
    });
    let (status, answer) = serve.call("POST", "/v1/skus", &body.to_string(), true);
    assert_eq!(status, 201, "{answer}");
}

/// The value of `sample` (name and labels) in a Prometheus text, if present.
fn sample(text: &str, sample: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.split(' ').next() == Some(sample))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_flood_from_one_address_leaves_other_buyers_served() {
    // Goal: with the default limits, eight connections from one address pipelining
    // reservations as fast as they can take no more than that address's budget: a buyer from
    // another address gets every reservation `Reserved` (not `busy`), each answered within
    // the liveness bound, on both ports; the server counts and logs that it held the flood.
    // With a processor thread (`compact`), commands pile up in flight while it works, so the
    // flood meets its address's in-flight budget.
    let (metrics, serve, _dir) = flood_against("compact");
    let limited = sample(&metrics, r#"ringfence_address_limited_total{limit="in_flight"}"#);
    assert!(limited.is_some_and(|count| count > 0), "no address limit counted:\n{metrics}");
    let line = serve.wait_for_log("address_in_flight_max", DEADLINE);
    assert!(line.contains(&FLOOD_FROM.to_string()), "the log names the address: {line}");
}

#[test]
fn a_flood_from_one_address_leaves_other_buyers_served_inline() {
    // Goal: the same with the processor on the event loop's thread (`--topology inline`).
    // There every connection with input gets one turn per loop, and the loop
    // answers what it read before it reads again, so the buyer waits at most one loop: every
    // reservation `Reserved` within the bound.
    let (_, serve, _dir) = flood_against("inline");
    // It ran inline: the node's start line says so (`wait_for_log` fails the test if not).
    serve.wait_for_log("node: inline topology (the event loop runs the processor)", DEADLINE);
}

/// Floods a fresh node run with `topology` and checks what both topologies promise: the buyer
/// got every reservation, each within the bound, while the flood was being served. Returns
/// the node's metrics as they were when the buyer finished, the node, and its directory.
fn flood_against(topology: &str) -> (String, Serve, TempDir) {
    let dir = TempDir::new("flood");
    // The journal's sync policy is not what this test is about: `none` keeps its disk load low.
    let args = ["--durability", "none", "--topology", topology];
    let serve = Serve::start_with(&dir.path().join("data"), &args);
    create_sku(&serve, BUYER_SKU, BUYS);
    create_sku(&serve, FLOOD_SKU, FLOOD_CONNECTIONS * FLOOD_PER_CONNECTION_MAX);
    let mut client = Client::connect(&[serve.binary]).expect("the buyer connects");
    client.set_timeout(DEADLINE);

    let flood = Flood::start(serve.binary);
    let warm_by = Instant::now() + DEADLINE;
    while flood.answers() < FLOOD_WARM_ANSWERS {
        assert!(Instant::now() < warm_by, "the flood got {} answers", flood.answers());
        std::thread::sleep(Duration::from_millis(10));
    }
    let flood_before = flood.answers();
    let outcomes: Vec<Result<Duration, String>> =
        (0..BUYS).map(|n| buy(&serve, &mut client, n)).collect();
    let flood_after = flood.answers();
    let flood_answers = flood_after - flood_before;
    let flood_busy = flood.refused(ErrorCode::Busy);
    let (_, metrics) = serve.get_text("/metrics");
    flood.stop();

    let mut answered: Vec<Duration> = outcomes.iter().flatten().copied().collect();
    answered.sort_unstable();
    let median = answered.get(answered.len() / 2).copied().unwrap_or_default();
    let slowest = answered.last().copied().unwrap_or_default();
    eprintln!(
        "flood: {flood_answers} answers ({flood_busy} busy in all) while the buyer reserved; \
         the buyer's answers took {median:?} (median), {slowest:?} (slowest)"
    );
    // The flood went on for as long as the buyer reserved: it was still being answered, and it
    // had sent more than had been answered.
    assert!(flood_answers > 0, "the flood was not served while the buyer reserved");
    let flood_sent = FLOOD_CONNECTIONS * FLOOD_PER_CONNECTION_MAX;
    assert!(flood_after < flood_sent, "the flood ran dry before the buyer was done");
    let failures: Vec<&String> =
        outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).collect();
    assert!(failures.is_empty(), "the buyer was not served: {failures:#?}");
    assert!(slowest <= ANSWER_BOUND, "an answer took {slowest:?}");
    (metrics, serve, dir)
}
