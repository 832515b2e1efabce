//! `ringfence-perf -- redis`: the usual flash-sale design — one Redis Lua script per
//! reservation — against ringfence over loopback TCP, same workload, same load generator, same
//! run, with ratios.
//!
//! The harness starts `redis-server` on a free loopback port (persistence off: no RDB, no AOF)
//! when it is installed, and skips the Redis rows with a note otherwise. The script does what
//! the seed articles' designs do in one atomic step: idempotency key lookup, per-user limit,
//! stock check and decrement, order id, payment deadline registered, answer remembered under
//! the idempotency key.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringfence_core::pipeline::Topology;
use ringfence_journal::writer::Durability;

use crate::net::{self, BenchServer, BinaryReserve, Decoded, HOT_SKU, HOT_STOCK, Plan, Protocol};
use crate::report::{Ratios, Report};
use crate::{Common, Size};

/// The reservation script. KEYS: stock, idempotency key, holding; ARGV: qty, per-user limit,
/// key TTL seconds, payment deadline (ms).
const SCRIPT: &str = r"
local prior = redis.call('GET', KEYS[2])
if prior then return prior end
local qty = tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if held + qty > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], 'limit_exceeded', 'EX', ARGV[3])
  return 'limit_exceeded'
end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock < qty then
  redis.call('SET', KEYS[2], 'sold_out', 'EX', ARGV[3])
  return 'sold_out'
end
redis.call('DECRBY', KEYS[1], qty)
redis.call('INCRBY', KEYS[3], qty)
local order = redis.call('INCR', 'order_seq')
redis.call('ZADD', 'deadlines', ARGV[4], order)
local answer = 'reserved:' .. order
redis.call('SET', KEYS[2], answer, 'EX', ARGV[3])
return answer
";

/// A `redis-server` child on a loopback port, killed on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start() -> Result<RedisServer, String> {
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server is not installed or did not start ({e})"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = RedisServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(reply) = server.command(&["PING"]) {
                if reply == "PONG" {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One command on a fresh connection; returns the reply as text.
    fn command(&mut self, args: &[&str]) -> io::Result<String> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::new();
        encode_resp(&mut out, args);
        stream.write_all(&out)?;
        let mut input = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            input.extend_from_slice(&chunk[..n]);
            if let Some((used, reply)) = parse_reply(&input).map_err(io::Error::other)? {
                let _ = used;
                return Ok(reply);
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Appends a RESP array of bulk strings.
fn encode_resp(out: &mut Vec<u8>, args: &[&str]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n{arg}\r\n", arg.len());
    }
}

/// Parses one RESP reply (simple string, error, integer or bulk string) as text; errors are
/// returned as `-message`.
fn parse_reply(input: &[u8]) -> Result<Option<(usize, String)>, String> {
    let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = std::str::from_utf8(&input[1..line_end]).map_err(|e| e.to_string())?;
    match input.first() {
        Some(b'+' | b':') => Ok(Some((line_end + 2, line.to_owned()))),
        Some(b'-') => Ok(Some((line_end + 2, format!("-{line}")))),
        Some(b'$') => {
            let len: i64 = line.parse().map_err(|_| format!("bad bulk length {line}"))?;
            if len < 0 {
                return Ok(Some((line_end + 2, String::new())));
            }
            let start = line_end + 2;
            let end = start + len as usize;
            if input.len() < end + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&input[start..end]).into_owned();
            Ok(Some((end + 2, text)))
        }
        other => Err(format!("unexpected RESP reply type {other:?}")),
    }
}

/// The Lua reservation over RESP, pipelined, answered in order.
struct LuaReserve {
    sha: String,
    nonce: u64,
}

impl Protocol for LuaReserve {
    fn correlated(&self) -> bool {
        false
    }

    // The same workload as ringfence's rows: Redis keeps its holds, unbounded, but its rows
    // send what ringfence's may.
    fn holds_an_order(&self) -> bool {
        true
    }

    fn encode(&mut self, out: &mut Vec<u8>, index: u64) {
        let user = index + 1;
        let idem = format!("idem:{}:{index}", self.nonce);
        let hold = format!("hold:{HOT_SKU}:{user}");
        let deadline = (net_now_ms() + 3_600_000).to_string();
        let args =
            ["EVALSHA", &self.sha, "3", "stock:1", &idem, &hold, "1", "1", "3600", &deadline];
        encode_resp(out, &args);
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String> {
        Ok(parse_reply(input)?.map(|(used, reply)| Decoded {
            used,
            index: None,
            ok: reply.starts_with("reserved:"),
            refusal: None,
        }))
    }
}

/// `PING` over RESP: the Redis network floor.
struct RedisPing;

impl Protocol for RedisPing {
    fn correlated(&self) -> bool {
        false
    }

    fn encode(&mut self, out: &mut Vec<u8>, _index: u64) {
        out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    }

    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Option<Decoded<'a>>, String> {
        Ok(parse_reply(input)?.map(|(used, reply)| Decoded {
            used,
            index: None,
            ok: reply == "PONG",
            refusal: None,
        }))
    }
}

fn net_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the Redis rows were not measured.
#[derive(Debug, thiserror::Error)]
pub enum Skipped {
    /// `redis-server` is missing, or did not start or answer.
    #[error("{0}; install it with `apt-get install -y redis-server`")]
    NotStarted(String),
    /// It started but refused the stock or the script.
    #[error("{0}")]
    NotPrepared(String),
}

/// Runs ringfence (binary protocol) and Redis + Lua through the same plan and prints ratios.
pub fn run(common: Common) {
    let mut report = Report::new(common.json);
    let mut plan = Plan::new(Size::of(common));
    header(&report, &plan);
    match bench_redis(&mut report, &mut plan) {
        Ok(()) => {}
        Err(Skipped::NotPrepared(error)) => {
            report.note(&format!("  redis skipped: {error}"));
            return;
        }
        Err(error @ Skipped::NotStarted(_)) => {
            report.note(&format!("  redis rows skipped: {error}"));
        }
    }
    let server = match BenchServer::start() {
        Ok(server) => server,
        Err(error) => {
            report.note(&format!("  ringfence rows skipped: cannot start the server: {error}"));
            return;
        }
    };
    let context = [("server", serde_json::Value::from(server.description.clone()))];
    let mut protocol = BinaryReserve::hot(net::nonce());
    net::run_plan(
        &mut report,
        &mut plan,
        "hot_sku_reserve",
        "ringfence_tcp",
        server.binary_addr(),
        &mut protocol,
        &context,
    );
    drop(server);
    // `serve`'s own topology on a machine of two cores or fewer, at its maximum only.
    match BenchServer::start_as(Topology::Stepped, None, Durability::None) {
        Ok(server) => {
            let context = [("server", serde_json::Value::from(server.description.clone()))];
            let mut protocol = BinaryReserve::hot(net::nonce());
            let addr = server.binary_addr();
            let mut max_only = Plan { rates: Vec::new(), of_max: Vec::new(), ..plan.clone() };
            let variant = "ringfence_tcp_inline";
            net::run_plan(
                &mut report,
                &mut max_only,
                "hot_sku_reserve",
                variant,
                addr,
                &mut protocol,
                &context,
            );
        }
        Err(error) => report.note(&format!("  ringfence_tcp_inline skipped: {error}")),
    }
    compare(&mut report, &plan);
}

/// The peer rows for a report whose `ringfence_tcp` rows are already measured (by
/// [`net::bench_tcp`] in the same run): Redis's rows, then the same comparisons as `run`.
pub fn bench_peer(report: &mut Report, plan: &mut Plan) -> Result<(), Skipped> {
    header(report, plan);
    bench_redis(report, plan)?;
    compare(report, plan);
    Ok(())
}

fn header(report: &Report, plan: &Plan) {
    report.note(&format!(
        "redis: hot-SKU reservation, {} connections, one load-generator thread (mio), loopback",
        plan.connections
    ));
}

/// Starts `redis-server` and measures its PING baseline and the Lua reservation.
fn bench_redis(report: &mut Report, plan: &mut Plan) -> Result<(), Skipped> {
    let mut redis = RedisServer::start().map_err(Skipped::NotStarted)?;
    let sha = prepare(&mut redis).map_err(Skipped::NotPrepared)?;
    let context = [("server", serde_json::Value::from("redis-server, no persistence"))];
    // Its rows report redis-server's own CPU time; the plan goes back to in-process servers.
    plan.server = net::ServerProcess::Other(redis.child.id());
    net::run_plan(
        report,
        plan,
        "loopback_ping",
        "redis_ping_baseline",
        redis.addr,
        &mut RedisPing,
        &context,
    );
    let mut lua = LuaReserve { sha, nonce: net::nonce() };
    net::run_plan(report, plan, "hot_sku_reserve", "redis_lua", redis.addr, &mut lua, &context);
    plan.server = net::ServerProcess::This;
    Ok(())
}

/// Ratios and the latency goal: ringfence over TCP against Redis + Lua, at max and per rate.
fn compare(report: &mut Report, plan: &Plan) {
    report.ratio("hot_sku_reserve", "ringfence_tcp max", "redis_lua max");
    // `serve` runs `inline` on two cores or fewer: the comparison a user of such a machine sees.
    report.ratio("hot_sku_reserve", "ringfence_tcp_inline max", "redis_lua max");
    if let (Some(ours), Some(theirs)) = (
        report.row("hot_sku_reserve", "ringfence_tcp max"),
        report.row("hot_sku_reserve", "redis_lua max"),
    ) {
        let p99 = ours.histogram.value_at_quantile(0.99);
        let median = theirs.histogram.value_at_quantile(0.5);
        if report.is_json() {
            // Table mode prints these as notes; JSON consumers get them as one summary line.
            let summary = serde_json::json!({
                "scenario": "hot_sku_reserve",
                "summary": "ringfence_tcp max vs redis_lua max",
                "throughput_ratio": ours.ops_per_sec() / theirs.ops_per_sec().max(f64::MIN_POSITIVE),
                "ringfence_p99_ns": p99,
                "redis_lua_p50_ns": median,
            });
            println!("{summary}");
        }
        report.note(&format!(
            "  at max load: ringfence p99 {} vs redis_lua p50 {} (goal: p99 below Redis's median)",
            crate::report::format_ns(p99),
            crate::report::format_ns(median)
        ));
        let cpu = |row: &crate::report::Row| {
            row.context.get("server_cpu_us_per_answer").and_then(serde_json::Value::as_f64)
        };
        if let (Some(ours), Some(theirs)) = (cpu(ours), cpu(theirs)) {
            report.note(&format!(
                "  at max load: server CPU per reservation, ringfence {ours:.2} us vs redis_lua \
                 {theirs:.2} us ({:.1}x less)",
                theirs / ours.max(f64::MIN_POSITIVE)
            ));
        }
    }
    for rate in &plan.rates {
        let label = |v: &str| format!("{v} @{}k/s", rate / 1_000);
        let (ours, theirs) = (label("ringfence_tcp"), label("redis_lua"));
        let (Some(ours_row), Some(theirs_row)) =
            (report.row("hot_sku_reserve", &ours), report.row("hot_sku_reserve", &theirs))
        else {
            continue;
        };
        report.note(&format!(
            "  @{}k/s: p99 ringfence {} vs redis_lua {}",
            rate / 1_000,
            crate::report::format_ns(ours_row.histogram.value_at_quantile(0.99)),
            crate::report::format_ns(theirs_row.histogram.value_at_quantile(0.99)),
        ));
        report.relate(("hot_sku_reserve", &ours), ("hot_sku_reserve", &theirs), Ratios::All);
    }
}

/// Loads the script and the stock; returns the script's SHA1.
fn prepare(redis: &mut RedisServer) -> Result<String, String> {
    let stock = HOT_STOCK.to_string();
    let reply = redis.command(&["SET", "stock:1", &stock]).map_err(|e| e.to_string())?;
    if reply != "OK" {
        return Err(format!("SET stock answered {reply}"));
    }
    let sha = redis.command(&["SCRIPT", "LOAD", SCRIPT]).map_err(|e| e.to_string())?;
    if sha.len() != 40 {
        return Err(format!("SCRIPT LOAD answered {sha}"));
    }
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_and_wait_for_more_bytes() {
        // Goal: the RESP reader handles every reply type the benchmark sees, and partial input.
        assert_eq!(parse_reply(b"+PONG\r\n").unwrap(), Some((7, "PONG".into())));
        assert_eq!(parse_reply(b"$10\r\nreserved:1\r\n").unwrap(), Some((17, "reserved:1".into())));
        assert_eq!(parse_reply(b"$10\r\nreserv").unwrap(), None);
        assert_eq!(parse_reply(b"-ERR x\r\n").unwrap(), Some((8, "-ERR x".into())));
        assert!(parse_reply(b"*2\r\n").is_err());
    }
}
