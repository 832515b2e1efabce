//! `ringfence-perf load`: reservations against a node that is already running — on your own
//! machines, across your network, a pair in sync mode — with the generator of the `tcp` and
//! `http` benchmarks. Each request reserves one unit of the SKU named, for a new user, with a
//! new request key; at a fixed rate the load is open loop and latency is timed from each
//! request's intended send time (no coordinated omission); `max` keeps a window of requests in
//! flight per connection. A warm-up at the first rate runs first and is not counted.
//!
//! The SKU is read before and after the runs: a run that would need more units than it has is
//! refused before it starts (an answer of `sold_out` is not a reservation and would flatter
//! the figures), and a `max` run stops sending at the units left. Before the runs, the
//! connections they need are opened once and each answered: a node closes a connection over
//! its per-address limit at accept, and the load says so then, not as a run cut short.

use std::cmp::Ordering;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use ringfence_core::{Command, Outcome, Query, SkuId};
use ringfence_ingress::Client;
use ringfence_ingress::wire::{self, Kind, Response};

use crate::Common;
use crate::net::{self, BinaryReserve, HttpReserve, Load, Measured, Protocol, Target};
use crate::report::chart::{self, LatencySeries};
use crate::report::hgrm::{NS_PER_US, TICKS_PER_HALF_DISTANCE as TICKS, percentile_distribution};
use crate::report::{Report, Row};

/// Options of `load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    common: Common,
    /// The node's binary-protocol address (`serve --listen`), or its HTTP API's with `--http`;
    /// a host name is resolved.
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// Send `POST /v1/orders` to the HTTP API instead of the binary protocol.
    #[arg(long)]
    http: bool,
    /// The SKU every request reserves one unit of. Create it first with stock for the whole
    /// run and a per-user limit of at least 1 (or none): every request is a new user.
    #[arg(long, value_name = "ID")]
    sku: u64,
    /// Offered load in requests per second, or `max` (a window of requests in flight on each
    /// connection: throughput); repeatable, run in the order given [default: max].
    #[arg(long = "rate", value_name = "RATE", value_parser = crate::pipeline::parse_rate)]
    rates: Vec<Option<u64>>,
    /// Seconds each rate runs.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    duration_s: f64,
    /// Seconds of load at the first rate before the measured runs; not counted.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    warmup_s: f64,
    /// Connections, all driven by one generator thread.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Requests in flight on each connection in a `max` run.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    window: u64,
    /// File holding a token of the `orders` role (or stronger), for a node with tokens
    /// configured [default: RINGFENCE_TOKEN; none on a node that takes orders without one].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The user of the first request; each request is for the next user [default: from the
    /// clock, so that runs do not meet each other's per-user limits].
    #[arg(long, value_name = "ID")]
    first_user: Option<u64>,
    /// Also write each measured run's latency histogram to this directory, as an `.hgrm`
    /// percentile distribution (HdrHistogram's text format, microseconds), and every run on
    /// one latency-by-percentile chart, `latency.svg`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The figures of one SKU the load needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stock {
    available: u64,
    reserved: u64,
    open: bool,
}

/// Runs `load`; its exit status: 0 when every run completed, 1 when one failed, 2 when the
/// load could not start.
pub fn run(args: &LoadArgs) -> i32 {
    match load(args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            eprintln!("ringfence-perf load: error: {error}");
            2
        }
    }
}

/// What the checks before the first request settled.
struct Planned {
    addr: SocketAddr,
    token: Option<String>,
    /// The rates in order; `None` is `max`.
    rates: Vec<Option<u64>>,
    before: Stock,
    /// Units the warm-up and the fixed rates reserve at most.
    counted: u64,
}

fn load(args: &LoadArgs) -> Result<bool, String> {
    let planned = plan(args)?;
    let mut report = Report::new(args.common.json);
    let protocol_name = if args.http { "http" } else { "binary" };
    report.note(&format!(
        "load: {protocol_name} protocol to {}, SKU {}: {} units available; {} connections, \
         one generator thread (mio); latency from intended send time at fixed rates, from \
         send in `max` runs (a window of {} per connection)",
        planned.addr, args.sku, planned.before.available, args.connections, args.window
    ));
    let target = Target {
        sku: args.sku,
        first_user: args.first_user.unwrap_or_else(|| (net::nonce() >> 20) << 20),
        token: planned.token.clone(),
    };
    let nonce = net::nonce();
    let mut protocol: Box<dyn Protocol> = if args.http {
        Box::new(HttpReserve { nonce, target })
    } else {
        Box::new(BinaryReserve { nonce, target })
    };
    let rates = &planned.rates;
    let runs = std::iter::once((rates[0], args.warmup_s, true))
        .filter(|_| args.warmup_s > 0.0)
        .chain(rates.iter().map(|&rate| (rate, args.duration_s, false)));
    // Units left for the `max` runs, which have no count of their own.
    let mut left = planned.before.available - planned.counted;
    let mut next_index = 0;
    // Across every run, the warm-up's too: what the SKU's figures should have moved by.
    let (mut acknowledged, mut unanswered) = (0, 0);
    for (rate, seconds, warmup) in runs {
        let label = rate.map_or_else(|| "max".to_owned(), |rate| format!("@{rate}/s"));
        let most = if rate.is_some() { u64::MAX } else { left };
        if most == 0 {
            report.note(&format!("  {protocol_name} {label}: skipped, no units left for it"));
            continue;
        }
        let load = rate.map_or(Load::Window(args.window as usize), Load::Rate);
        let run = (load, Duration::from_secs_f64(seconds), most);
        let connections = args.connections as usize;
        let measured =
            match net::drive_up_to(planned.addr, protocol.as_mut(), connections, run, next_index) {
                Ok(measured) => measured,
                Err(error) => {
                    eprintln!("ringfence-perf load: the run {label} failed: {error}");
                    return Ok(false);
                }
            };
        next_index += measured.answered + measured.lost + 1;
        acknowledged += measured.answered - measured.failed;
        unanswered += measured.lost;
        if rate.is_none() {
            left = left.saturating_sub(measured.answered + measured.lost);
        }
        let label = format!("{protocol_name} {label}");
        if warmup {
            report.note(&format!(
                "  warm-up {label}: {} answers in {:.1} s, not counted",
                measured.answered, measured.seconds
            ));
            continue;
        }
        net::note_run(&report, &label, rate, &measured);
        report.push(row(&label, rate, connections, args.window, measured));
    }
    if let Some(dir) = &args.out {
        write_files(dir, report.rows(), args.sku)?;
        report.note(&format!("histograms and latency.svg written to {}", dir.display()));
    }
    let after = read_stock(planned.addr, args.http, args.sku, planned.token.as_deref())
        .map_err(|e| format!("reading SKU {} after the run: {e}", args.sku))?;
    report.note(&format!(
        "SKU {}: {} units available, {} reserved (before: {}, {})",
        args.sku,
        after.available,
        after.reserved,
        planned.before.available,
        planned.before.reserved
    ));
    report.note(&reconcile(planned.before, after, acknowledged, unanswered));
    Ok(true)
}

/// Whether the SKU's reserved units moved by the reservations the node acknowledged. Where
/// nothing else acts on the SKU during the runs they are equal; a node that lost an
/// acknowledged reservation would show fewer.
fn reconcile(before: Stock, after: Stock, acknowledged: u64, unanswered: u64) -> String {
    let rose = i128::from(after.reserved) - i128::from(before.reserved);
    let said = format!("{acknowledged} reservations acknowledged in all, the warm-up's included");
    let why = match rose.cmp(&i128::from(acknowledged)) {
        Ordering::Equal => return format!("{said}; the SKU's reserved units rose by as many"),
        Ordering::Greater if unanswered > 0 => format!(
            "other clients reserved, or some of the {unanswered} requests left unanswered were \
             reserved"
        ),
        Ordering::Greater => "other clients reserved".to_owned(),
        Ordering::Less => "reservations were paid, cancelled or expired meanwhile, or the node \
                           lost reservations it acknowledged"
            .to_owned(),
    };
    format!("{said}; the SKU's reserved units moved by {rose}: {why}")
}

/// Resolves the address and the token, reads the SKU and refuses a load it cannot carry: a
/// closed SKU, fixed rates that need more units than it has, or more connections than the
/// node takes.
fn plan(args: &LoadArgs) -> Result<Planned, String> {
    // Durations a run can take: finite, and within what a clock can count.
    let lasts = |seconds: f64| Duration::try_from_secs_f64(seconds).is_ok_and(|d| d < DAY);
    if !(args.duration_s > 0.0 && lasts(args.duration_s) && lasts(args.warmup_s)) {
        return Err(
            "--duration-s must be above 0 and --warmup-s at least 0, each under a day".into()
        );
    }
    // An IP address as it is; of a name's addresses, the first that accepts (`localhost` may
    // be `::1` first).
    let addr = match args.addr.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => ringfence_ingress::connect_first(&args.addr, CONNECT_TIMEOUT)
            .map(|(_, addr)| addr)
            .map_err(|e| format!("--addr {}: {e}", args.addr))?,
    };
    let token = token(args.token_file.as_ref())?;
    let rates = if args.rates.is_empty() { vec![None] } else { args.rates.clone() };
    let before = read_stock(addr, args.http, args.sku, token.as_deref())
        .map_err(|e| format!("reading SKU {} before the run: {e}", args.sku))?;
    if !before.open {
        return Err(format!("SKU {} is closed: open its sale first", args.sku));
    }
    let warmup = rates[0].map_or(0, |rate| (rate as f64 * args.warmup_s) as u64);
    let fixed: u64 =
        rates.iter().flatten().map(|&rate| (rate as f64 * args.duration_s) as u64).sum();
    let counted = warmup + fixed;
    if counted > before.available {
        return Err(format!(
            "SKU {} has {} units available; the fixed rates reserve up to {counted} (warm-up \
             included): restock it or lower the rates or the durations",
            args.sku, before.available
        ));
    }
    check_connections(addr, args.http, args.connections as usize)?;
    Ok(Planned { addr, token, rates, before, counted })
}

/// What the node answered one connection's probe.
enum Probe {
    /// An answer to the probe: the node took the connection.
    Taken,
    /// Closed at accept, with the code and message the node sent first, if any arrived.
    Refused(Option<String>),
}

/// Opens the runs' `connections` at once and has each answered (binary `PING`, HTTP `GET
/// /health`: neither needs a token), then closes them and waits until the node has closed its
/// side too, so that they no longer count against its limits when a run opens its own. A
/// connection the node refused at accept stops the load here, saying which limit.
fn check_connections(addr: SocketAddr, http: bool, connections: usize) -> Result<(), String> {
    let mut probe = Vec::new();
    if http {
        probe.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    } else {
        wire::encode_empty(&mut probe, Kind::Ping, 1);
    }
    let mut streams = Vec::with_capacity(connections);
    for number in 1..=connections {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("opening connection {number} of {connections} to {addr}: {e}"))?;
        // A refused connection may be closed already; what the node told it is read below.
        let _ = stream.write_all(&probe);
        streams.push(stream);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    for (number, stream) in (1..).zip(&mut streams) {
        let probed = probe_answer(stream, http, deadline)
            .map_err(|e| format!("connection {number} of {connections} to {addr}: {e}"))?;
        if let Probe::Refused(said) = probed {
            return Err(refused_at(number, connections, said));
        }
    }
    for stream in &streams {
        let _ = stream.shutdown(Shutdown::Write);
    }
    for stream in &mut streams {
        let _ = ringfence_ingress::read_to_end_by(stream, deadline, ANSWER_LEN_MAX);
    }
    Ok(())
}

/// Reads the answer to a connection's probe by `deadline`. A connection that ends, or is
/// reset, before any answer was refused without a word.
fn probe_answer(stream: &mut TcpStream, http: bool, deadline: Instant) -> Result<Probe, String> {
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let answer = if http { http_probe(&input)? } else { binary_probe(&input)? };
        if let Some(probe) = answer {
            return Ok(probe);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || format!("no answer within {} s", CONNECT_TIMEOUT.as_secs());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Probe::Refused(None)),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(_) => return Ok(Probe::Refused(None)),
        }
    }
}

/// The binary answer in `input`, if whole: a refusal at accept is an error frame (`busy`).
fn binary_probe(input: &[u8]) -> Result<Option<Probe>, String> {
    let Some((frame, _)) = wire::try_frame(input).map_err(|e| format!("not protocol v1: {e}"))?
    else {
        return Ok(None);
    };
    Ok(Some(match wire::decode_response(&frame) {
        Ok(Response::Error(error)) => {
            Probe::Refused(Some(format!("{}: {}", error.code.name(), error.message)))
        }
        _ => Probe::Taken,
    }))
}

/// The HTTP answer in `input`, if whole: a refusal at accept is a 503 `too_many_connections`.
/// Any other answer, a failed node's 503 to `/health` too, took the connection.
fn http_probe(input: &[u8]) -> Result<Option<Probe>, String> {
    let Some(net::HttpAnswer { status, body, .. }) = net::http_answer(input)? else {
        return Ok(None);
    };
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if body["error"] != "too_many_connections" {
        return Ok(Some(Probe::Taken));
    }
    let message = body["message"].as_str().unwrap_or_default();
    Ok(Some(Probe::Refused(Some(format!("{status} too_many_connections: {message}")))))
}

/// Why connection `number` of `connections` was refused, and what to do: the node closes one
/// over its per-address limit at accept, the likely cause when the others were taken.
fn refused_at(number: usize, connections: usize, said: Option<String>) -> String {
    let said =
        said.map_or_else(|| "closed it without a word".to_owned(), |s| format!("said `{s}`"));
    let taken = number - 1;
    let fewer = if taken > 0 {
        format!("lower --connections to {taken} or fewer")
    } else {
        "close other connections from this address".to_owned()
    };
    format!(
        "the node refused connection {number} of {connections} (--connections) at accept: it \
         {said}. A node takes at most `connections_per_address_max` connections from one \
         source address (256 by default), counting every client there: raise it in the \
         node's config file ([server] connections_per_address_max), or {fewer}"
    )
}

/// The row of one measured run, with what a reader needs to trust it: answers that were not
/// reservations, requests never answered, and how late the generator sent.
fn row(label: &str, rate: Option<u64>, connections: usize, window: u64, measured: Measured) -> Row {
    let late = measured.send_lag.value_at_quantile(0.99) as f64 / 1e3;
    let Measured { answered, failed, refusals, lost, seconds, histogram, .. } = measured;
    let refusals: serde_json::Map<String, serde_json::Value> =
        refusals.into_iter().map(|(code, n)| (code, n.into())).collect();
    let row = Row::new("reserve", label, answered, seconds, histogram)
        .with("connections", connections as u64)
        .with("not_reserved", failed)
        .with("not_reserved_by_code", refusals)
        .with("lost", lost);
    match rate {
        Some(rate) => row
            .with("offered_per_sec", rate)
            .with("latency_from", "intended_send")
            .with("generator_late_p99_us", late),
        None => row.with("window_per_connection", window).with("latency_from", "send"),
    }
}

/// One `.hgrm` file per row, named after its variant, and `latency.svg` with every row.
fn write_files(dir: &Path, rows: &[Row], sku: u64) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for row in rows {
        let name: String =
            row.variant.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        write(&format!("{name}.hgrm"), &percentile_distribution(&row.histogram, TICKS, NS_PER_US))?;
    }
    let series: Vec<LatencySeries<'_>> = rows
        .iter()
        .map(|row| LatencySeries { label: row.variant.clone(), histogram: &row.histogram })
        .collect();
    let title = format!("reservations of SKU {sku}: latency by percentile");
    match chart::latency_by_percentile(&title, &series) {
        Ok(Some(svg)) => write("latency.svg", &svg),
        Ok(None) => Ok(()),
        Err(error) => Err(format!("drawing latency.svg: {error}")),
    }
}

/// The token in `file`, or in `RINGFENCE_TOKEN`, or none.
fn token(file: Option<&PathBuf>) -> Result<Option<String>, String> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|e| format!("--token-file {}: {e}", path.display())),
        None => Ok(std::env::var("RINGFENCE_TOKEN").ok().filter(|token| !token.is_empty())),
    }
}

/// The SKU's figures, over the protocol the load uses.
fn read_stock(
    addr: SocketAddr,
    http: bool,
    sku: u64,
    token: Option<&str>,
) -> Result<Stock, String> {
    if http {
        return read_stock_http(addr, sku, token);
    }
    let mut client = Client::connect(&[addr]).map_err(|e| e.to_string())?;
    if let Some(token) = token {
        client.authenticate(token).map_err(|e| e.to_string())?;
    }
    match client.call(Command::Query(Query::Sku(SkuId(sku)))).map_err(|e| e.to_string())? {
        Outcome::Sku(view) => {
            Ok(Stock { available: view.available, reserved: view.reserved, open: view.open })
        }
        other => Err(format!("the node answered `{}`", other.name())),
    }
}

fn read_stock_http(addr: SocketAddr, sku: u64, token: Option<&str>) -> Result<Stock, String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    let request =
        format!("GET /v1/skus/{sku} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let response = match ringfence_ingress::read_to_end_by(&mut stream, deadline, ANSWER_LEN_MAX) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| e.to_string())?,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(format!("no whole answer within {} s", CONNECT_TIMEOUT.as_secs()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let (head, body) = response.split_once("\r\n\r\n").ok_or("a response without a body")?;
    let view: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{head}: {e}"))?;
    let status = head.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("HTTP {status}: {}: {}", view["error"], view["message"]));
    }
    match (view["available"].as_u64(), view["reserved"].as_u64(), view["open"].as_bool()) {
        (Some(available), Some(reserved), Some(open)) => Ok(Stock { available, reserved, open }),
        _ => Err(format!("not a SKU: {body}")),
    }
}

/// How long `load` waits to reach the node, and for each answer while it sets up and checks.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a run or its warm-up may last.
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The most of an answer `load` reads while it sets up and checks: a SKU's view is small.
const ANSWER_LEN_MAX: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_note_says_whether_the_sku_moved_by_what_was_acknowledged() {
        let before = Stock { available: 100, reserved: 10, open: true };
        let after = Stock { available: 60, reserved: 50, open: true };
        assert!(reconcile(before, after, 40, 0).ends_with("rose by as many"));
        // Fewer than acknowledged: payments, cancellations, expiry, or a lost acknowledgement.
        let short = reconcile(before, after, 41, 0);
        assert!(short.contains("moved by 40: reservations were paid"), "{short}");
        assert!(short.ends_with("lost reservations it acknowledged"), "{short}");
        let paid = Stock { available: 60, reserved: 5, open: true };
        assert!(reconcile(before, paid, 40, 3).contains("moved by -5: reservations were paid"));
        // More than acknowledged: other clients, or requests that reserved unanswered.
        let more = reconcile(before, after, 39, 3);
        assert!(more.ends_with("some of the 3 requests left unanswered were reserved"), "{more}");
        assert!(reconcile(before, after, 39, 0).ends_with("moved by 40: other clients reserved"));
    }

    #[test]
    fn an_http_refusal_at_accept_is_told_from_any_other_answer() {
        // Goal: only the node's `too_many_connections` refuses a connection: a failed node's
        // 503 to `/health` took it; a partial answer needs more bytes.
        let answer = |status: &str, body: &str| {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len());
            http_probe(format!("{head}{body}").as_bytes()).unwrap()
        };
        let refusal = r#"{"error":"too_many_connections","message":"too many from here"}"#;
        let Some(Probe::Refused(Some(said))) = answer("503 Service Unavailable", refusal) else {
            panic!("a refusal at accept");
        };
        assert_eq!(said, "503 too_many_connections: too many from here");
        let failed = r#"{"error":"node_failed","message":"the journal failed"}"#;
        assert!(matches!(answer("503 Service Unavailable", failed), Some(Probe::Taken)));
        assert!(matches!(answer("200 OK", r#"{"status":"ok"}"#), Some(Probe::Taken)));
        assert!(http_probe(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{").unwrap().is_none());
        let said = refused_at(1, 8, None);
        assert!(said.contains("closed it without a word"), "{said}");
        assert!(said.ends_with("close other connections from this address"), "{said}");
    }
}
