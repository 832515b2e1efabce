//! Automatic failover under load, with real processes: a single-member etcd (the witness) and
//! two `ringfence serve --etcd` nodes on loopback, lease TTL 1 s (`--lease-ttl-s`). A client
//! thread reserves one unit at a time (fresh request id each, retrying the other node when
//! one fails or does not answer within [`CLIENT_TIMEOUT`]); the leader is killed with SIGKILL;
//! the row is the time from the kill to the first write the new primary acknowledged. The
//! killed node is restarted (it rejoins as a standby) before the next round. Then as many
//! rounds pause the leader with SIGSTOP instead, past its lease, and resume it once the other
//! node has acknowledged a write: it must acknowledge nothing more, and rejoins as a standby.
//! At the end every acknowledged request is sent again with its request id to the last
//! primary: an answer that differs is an acknowledged write lost.
//!
//! Baseline row: the same client's write round trip against a healthy primary (the harness's
//! own share of each failover figure). Needs `etcd` (`apt-get install etcd-server`) and the
//! `ringfence` binary next to this one (`cargo build --release -p ringfence-tools`) or given
//! with `--ringfence`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Common;
use crate::report::{Report, Row, latency_histogram};

/// The lease TTL the nodes run with unless told otherwise (etcd runs with a 500 ms election
/// timeout, so it accepts 1 s).
pub const LEASE_TTL_S: u64 = 1;
/// How long the load runs on a healthy pair before each kill.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(300);
/// How long the client waits for an answer before it tries the other node: a paused node's
/// machine accepts the connection and the request, and nothing answers.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);
/// A liveness bound on every wait; a failover slower than this aborts the benchmark.
const WAIT_MAX: Duration = Duration::from_secs(60);
const SECRET: &str = "ringfence-perf-failover-secret-32";

/// A loopback port free now, not handed out before in this run, and below the kernel's
/// ephemeral range: a killed node restarts on its ports while the load generator keeps opening
/// connections, and an ephemeral port could meanwhile become one of their source ports.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = u32::from(ephemeral_low - LOWEST);
    let start = std::process::id().wrapping_mul(7_919) % span;
    let port = (0..span)
        .map(|step| LOWEST + ((start + step) % span) as u16)
        .find(|&port| !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port below the ephemeral range");
    given.push(port);
    port
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(dir: &Path) -> Result<(Process, String), String> {
    let (client, peer) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{client}");
    let peer = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "witness", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("witness={peer}")])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("etcd is not installed or did not start ({e})"))?;
    let process = Process(child);
    let addr: SocketAddr = client.trim_start_matches("http://").parse().unwrap();
    let started = Instant::now();
    while http(addr, "GET", "/health", "").is_none_or(|(_, body)| !body.contains("true")) {
        if started.elapsed() > WAIT_MAX {
            return Err("etcd did not answer /health".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((process, client))
}

/// One `ringfence serve --etcd` node on fixed ports.
struct Node {
    name: &'static str,
    http: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    process: Option<Process>,
}

impl Node {
    fn new(binary: &Path, root: &Path, name: &'static str, (etcd, ttl_s): (&str, u64)) -> Node {
        let secret = root.join("secret");
        fs::write(&secret, SECRET).unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec![binary.to_str().unwrap().to_owned(), "serve".into()];
        for (flag, value) in [
            ("--data-dir", root.join(name).to_str().unwrap().to_owned()),
            ("--listen", format!("127.0.0.1:{}", free_port())),
            ("--http", http.to_string()),
            ("--replication-listen", format!("127.0.0.1:{}", free_port())),
            ("--cluster-secret-file", secret.to_str().unwrap().to_owned()),
            ("--cluster-id", "perf".into()),
            ("--etcd", etcd.into()),
            ("--node-name", name.into()),
            ("--lease-ttl-s", ttl_s.to_string()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        Node { name, http, args, log: root.join(format!("{name}.log")), process: None }
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.args[0])
            .args(&self.args[1..])
            .env_remove("RINGFENCE_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the ringfence binary runs");
        self.process = Some(Process(child));
    }

    fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Sends `signal` to the node's process (the same process after it re-executes itself).
    fn signal(&self, signal: libc::c_int) {
        let child = &self.process.as_ref().expect("the node runs").0;
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) reads no memory of this process; the pid is our own child's, not yet
        // waited for, so it names no other process.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "signal {signal} to {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    fn coordination(&self) -> Option<Value> {
        let (status, body) = http(self.http, "GET", "/v1/node", "")?;
        let node: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        Some(node["replication"]["coordination"].clone())
    }
}

/// One HTTP/1.1 request; `None` when the node cannot be reached or hangs up.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_within(addr, method, path, body, Duration::from_secs(5))
}

/// [`http`], waiting at most `timeout` for each read.
fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    Some((status, response.split("\r\n\r\n").nth(1)?.to_owned()))
}

fn wait(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < WAIT_MAX,
            "ringfence-perf failover: {what} within {WAIT_MAX:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until one node leads with the other recorded as its in-sync standby, and the other
/// follows it (a node just resumed from a pause still says it leads until it learns
/// otherwise); returns the leader's index.
fn settled(nodes: &[Node; 2]) -> usize {
    let mut leader = 0;
    wait("a leader with its standby recorded in sync", || {
        for (i, node) in nodes.iter().enumerate() {
            let (name, other) = (node.name, nodes[1 - i].name);
            let leads = node
                .coordination()
                .is_some_and(|c| c["state"] == "leader" && c["in_sync_standby"] == other);
            let followed = leads
                && nodes[1 - i]
                    .coordination()
                    .is_some_and(|c| c["state"] == "standby" && c["leader"] == name);
            if followed {
                leader = i;
                return true;
            }
        }
        false
    });
    leader
}

fn reservation(request: u64) -> String {
    let user = request % 10_000 + 1;
    format!(r#"{{"request_id":"bench-{request}","user":{user},"sku":1,"qty":1}}"#)
}

/// What the client thread saw: every acknowledged request (id → answer), and the writes
/// acknowledged after the kill by the node that was not killed (when).
#[derive(Default)]
struct Seen {
    acknowledged: BTreeMap<u64, String>,
    latencies_ns: Vec<u64>,
    kill: Option<(usize, Instant)>,
    first_after_kill: Option<Instant>,
}

/// The client: one reservation at a time, fresh request ids from `next`, sent to the node it
/// believes leads, switching to the other on failure.
fn client(addrs: [SocketAddr; 2], seen: &Mutex<Seen>, stop: &AtomicBool, mut next: u64) -> u64 {
    let mut target = 0;
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        match http_within(addrs[target], "POST", "/v1/orders", &reservation(next), CLIENT_TIMEOUT) {
            Some((201, body)) => {
                let mut seen = seen.lock().unwrap();
                seen.acknowledged.insert(next, body);
                let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match seen.kill {
                    None => seen.latencies_ns.push(elapsed),
                    Some((killed, _)) if killed != target && seen.first_after_kill.is_none() => {
                        seen.first_after_kill = Some(Instant::now());
                    }
                    Some(_) => {}
                }
                next += 1;
            }
            _ => {
                target = 1 - target;
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    next
}

fn ringfence_binary(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("this binary's path");
        exe.with_file_name("ringfence")
    })
}

/// What a run does beyond the common options.
pub struct Options {
    /// Kills, and as many pauses [default: 20; 5 with `--quick`].
    pub failovers: Option<u64>,
    /// The `ringfence` binary [default: next to this one].
    pub ringfence: Option<PathBuf>,
    /// The nodes' lease TTL in seconds.
    pub lease_ttl_s: u64,
}

/// Runs the rounds and prints the figures.
pub fn run(common: Common, Options { failovers, ringfence, lease_ttl_s }: Options) {
    let failovers = failovers.unwrap_or(if common.quick { 5 } else { 20 });
    let mut report = Report::new(common.json);
    report.note(&crate::pipeline::machine_load());
    let binary = ringfence_binary(ringfence);
    if !binary.exists() {
        report.note(&format!(
            "failover skipped: no ringfence binary at {} (cargo build --release -p \
             ringfence-tools, or --ringfence PATH)",
            binary.display()
        ));
        return;
    }
    let root = std::env::temp_dir().join(format!("ringfence-perf-failover-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    match start_etcd(&root) {
        Ok((etcd, url)) => {
            rounds(&mut report, (&binary, &root, (&url, lease_ttl_s)), failovers, &etcd);
        }
        Err(error) => report.note(&format!(
            "failover skipped: {error}; install it with `apt-get install -y etcd-server`"
        )),
    }
    let _ = fs::remove_dir_all(&root);
}

fn rounds(
    report: &mut Report,
    (binary, root, witness): (&Path, &Path, (&str, u64)),
    failovers: u64,
    _etcd: &Process,
) {
    let ttl_s = witness.1;
    report.note(&format!(
        "failover: etcd 3.4 (1 member) + 2 `ringfence serve --etcd` processes on loopback, \
         lease TTL {ttl_s} s, sync mode, durability batch; {failovers} SIGKILLs of the \
         leader, then {failovers} SIGSTOPs (resumed once the other node acknowledged a write), \
         under a one-at-a-time HTTP reservation client that tries the other node after {} ms \
         without an answer; binary {}",
        CLIENT_TIMEOUT.as_millis(),
        binary.display()
    ));
    let mut nodes = [Node::new(binary, root, "a", witness), Node::new(binary, root, "b", witness)];
    nodes[0].start();
    wait("a leads", || nodes[0].coordination().is_some_and(|c| c["state"] == "leader"));
    nodes[1].start();
    let leader = settled(&nodes);
    let sku = "{\"sku\":1,\"stock\":100000000,\"price_cents\":900,\"per_user_limit\":0,\
               \"payment_timeout_ms\":3600000}";
    let token = fs::read_to_string(root.join(nodes[leader].name).join("admin.token")).unwrap();
    let created = admin(nodes[leader].http, token.trim(), "/v1/skus", sku);
    assert_eq!(created.map(|(status, _)| status), Some(201), "the SKU is created");

    let addrs = [nodes[0].http, nodes[1].http];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut failover_ns, mut pause_ns) = (Vec::new(), Vec::new());
    let mut next = 0;
    for _ in 0..failovers {
        let (leader, ns) = failover_round(&nodes, addrs, &seen, &mut next, Fault::Kill);
        failover_ns.push(ns);
        nodes[leader].kill();
        nodes[leader].start();
    }
    for _ in 0..failovers {
        let (leader, ns) = failover_round(&nodes, addrs, &seen, &mut next, Fault::Pause);
        pause_ns.push(ns);
        // Resumed past its lease, it finds another leader, acknowledges nothing more and
        // restarts itself as a standby; the next round waits until it is in sync.
        nodes[leader].signal(libc::SIGCONT);
    }
    let leader = settled(&nodes);
    let seen = seen.lock().unwrap();
    let lost = lost(nodes[leader].http, &seen.acknowledged);
    push_rows(report, ttl_s, &failover_ns, &pause_ns, &seen.latencies_ns);
    report.note(&format!(
        "  acknowledged writes: {}; lost after {failovers} kills and {failovers} pauses: {lost} (every one \
         re-sent with its request id to the last primary)",
        seen.acknowledged.len()
    ));
    for (fault, samples) in [("kill", &failover_ns), ("pause", &pause_ns)] {
        let each: Vec<String> = samples.iter().map(|ns| format!("{} ms", ns / 1_000_000)).collect();
        report.note(&format!(
            "  per failover, {fault} to first acknowledged write: {}",
            each.join(", ")
        ));
    }
    for node in &mut nodes {
        node.kill();
    }
}

/// What happens to the leader in a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: the process is gone.
    Kill,
    /// SIGSTOP: the process is frozen, its machine still accepts connections for it.
    Pause,
}

/// One round: load on a settled pair, then `fault` on the leader; returns the leader's index
/// and the time from the fault to the first write the other node acknowledged. The caller
/// restarts or resumes the leader.
fn failover_round(
    nodes: &[Node; 2],
    addrs: [SocketAddr; 2],
    seen: &Arc<Mutex<Seen>>,
    next: &mut u64,
    fault: Fault,
) -> (usize, u64) {
    let leader = settled(nodes);
    seen.lock().unwrap().kill = None;
    seen.lock().unwrap().first_after_kill = None;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (seen, stop, first) = (Arc::clone(seen), Arc::clone(&stop), *next);
        thread::spawn(move || client(addrs, &seen, &stop, first))
    };
    thread::sleep(LOAD_BEFORE_KILL);
    let struck = Instant::now();
    seen.lock().unwrap().kill = Some((leader, struck));
    match fault {
        Fault::Kill => nodes[leader].signal(libc::SIGKILL),
        Fault::Pause => nodes[leader].signal(libc::SIGSTOP),
    }
    wait("the standby acknowledges a write", || seen.lock().unwrap().first_after_kill.is_some());
    stop.store(true, Ordering::Release);
    *next = load.join().expect("the client thread");
    let first = seen.lock().unwrap().first_after_kill.expect("seen above");
    (leader, u64::try_from(first.duration_since(struck).as_nanos()).unwrap_or(u64::MAX))
}

fn admin(addr: SocketAddr, token: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some((response.get(9..12)?.parse().ok()?, response.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// Re-sends every acknowledged request with its id; counts the answers that differ.
fn lost(primary: SocketAddr, acknowledged: &BTreeMap<u64, String>) -> u64 {
    let mut lost = 0;
    for (&request, before) in acknowledged {
        let again = http(primary, "POST", "/v1/orders", &reservation(request));
        if again.as_ref().map(|(status, body)| (*status, body)) != Some((201, before)) {
            eprintln!(
                "ringfence-perf failover: request {request} lost: was {before}, now {again:?}"
            );
            lost += 1;
        }
    }
    lost
}

fn push_rows(
    report: &mut Report,
    ttl_s: u64,
    failover_ns: &[u64],
    pause_ns: &[u64],
    healthy_ns: &[u64],
) {
    for (variant, samples) in [
        ("kill_to_first_ack", failover_ns),
        ("pause_to_first_ack", pause_ns),
        ("healthy_write_baseline", healthy_ns),
    ] {
        let mut histogram = latency_histogram();
        for &ns in samples {
            histogram.saturating_record(ns.max(1));
        }
        let seconds = samples.iter().sum::<u64>() as f64 / 1e9;
        let row = Row::new("failover", variant, samples.len() as u64, seconds, histogram)
            .with("lease_ttl_s", ttl_s)
            .with("ops_per_sec_means", "1 / mean time");
        report.push(row);
    }
}
