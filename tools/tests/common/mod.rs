//! Helpers shared by the `ringfence` binary's integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};

pub mod disk;
pub mod etcd;
pub mod follower;
pub mod prometheus;
pub mod snapshot_primary;
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ringfence-tools-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the `ringfence` binary with `args`.
pub fn ringfence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence")).args(args).output().expect("run ringfence")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where each intact record of the segment `bytes` ends, from its first on.
pub fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut offset = ringfence_journal::format::SEGMENT_HEADER_LEN;
    while let Some((_, len)) = ringfence_journal::format::check_record(&bytes[offset..]) {
        offset += len;
        ends.push(offset);
    }
    ends
}

/// `ringfence journal dump DIR --json` with `flags`: one JSON line a record (sequence, time,
/// epoch, command), within a minute.
pub fn journal_dump_json(dir: &Path, flags: &[&str]) -> Vec<String> {
    let mut args = vec!["journal", "dump", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(flags);
    let output = ringfence_within(&args, Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).lines().map(str::to_owned).collect()
}

/// Runs the `ringfence` binary with `args`, killing it if it has not exited by `deadline`
/// (a refusal that fails to refuse must not hang the test).
pub fn ringfence_within(args: &[&str], deadline: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(args)
        .env_remove("RINGFENCE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringfence");
    let pid = child.id();
    let (send, receive) = channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(deadline) {
        Ok(output) => output.expect("ringfence output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("ringfence {args:?} did not exit within {deadline:?}");
        }
    }
}

/// A text log line without its timestamp and level (`2026-03-01T12:00:00.000000Z  INFO
/// ringfence: listening` is `ringfence: listening`); other lines as they are.
pub fn log_message(line: &str) -> &str {
    let mut parts = line.splitn(2, ' ');
    let (Some(time), Some(rest)) = (parts.next(), parts.next()) else { return line };
    let rest = rest.trim_start();
    let is_time = time.len() > 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T';
    let level = ["TRACE ", "DEBUG ", "INFO ", "WARN ", "ERROR "]
        .iter()
        .find_map(|level| rest.strip_prefix(level));
    match level {
        Some(message) if is_time => message,
        _ => line,
    }
}

/// A child process whose standard error is read line by line on a thread; killed on drop.
pub struct Logged {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Logged {
    /// Spawns `command` with standard error piped (and standard output discarded).
    pub fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(log_message(&line).to_owned()).is_err() {
                    break;
                }
            }
        });
        Logged { child, lines }
    }

    /// Waits (bounded) for a log line starting with `prefix`: returns the rest of it and the
    /// lines logged before it.
    pub fn wait_for(&self, prefix: &str, within: Duration) -> (String, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no line starting with `{prefix}` within {within:?}: {before:?}")
            };
            if let Some(rest) = line.strip_prefix(prefix) {
                return (rest.to_owned(), before);
            }
            before.push(line);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP address `serve` logs once it listens.
pub const HTTP_LISTENING: &str = "ringfence: HTTP API listening on http://";

/// A `ringfence serve` child on loopback ports chosen by the OS, stopped (SIGKILL) on drop.
pub struct Serve {
    /// The `serve` process and its log lines; killed on drop.
    pub process: Logged,
    pub binary: SocketAddr,
    pub http: SocketAddr,
    pub token: String,
    /// Where standbys connect, when replication is on.
    pub replication: Option<SocketAddr>,
    /// Log lines read while waiting for the addresses.
    early: Vec<String>,
}

impl Serve {
    pub fn start(dir: &Path) -> Serve {
        Serve::start_with(dir, &[])
    }

    /// Starts a node on `dir` with extra arguments, and waits (bounded) until it listens.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Serve {
        let process = Logged::spawn(
            Command::new(env!("CARGO_BIN_EXE_ringfence"))
                .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
                .arg(dir)
                .args(extra)
                .env_remove("RINGFENCE_ADMIN_TOKEN"),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut binary, mut http, mut replication) = (None, None, None);
        let mut early = Vec::new();
        while binary.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match process.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(error) => {
                    let mut process = process;
                    let status = process.child.try_wait();
                    panic!("serve logged no addresses ({error}; exit {status:?}): {early:#?}")
                }
            };
            early.push(line.clone());
            if let Some(addr) = line.strip_prefix("ringfence: replication listening on ") {
                replication = Some(addr.parse().expect("a socket address"));
            }
            if let Some(addr) = line.strip_prefix(HTTP_LISTENING) {
                http = Some(addr.parse().expect("a socket address"));
            }
            if let Some(addr) = line.strip_prefix("ringfence: binary protocol v1 listening on ") {
                binary = Some(addr.parse().expect("a socket address"));
            }
        }
        let (binary, http) = (binary.unwrap(), http.unwrap());
        let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        Serve { process, binary, http, token, replication, early }
    }

    /// Waits (bounded) for a log line containing `text`, and returns it.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> String {
        if let Some(line) = self.early.iter().find(|line| line.contains(text)) {
            return line.clone();
        }
        self.next_log(text, within)
    }

    /// Waits (bounded) for a log line containing `text` among the lines not read yet, and
    /// returns it: unlike [`Serve::wait_for_log`], never one logged at the start, which a node
    /// that restarted itself in place logs again.
    pub fn next_log(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.process.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no new log line containing `{text}` within {within:?}"),
            }
        }
    }

    /// Every log line received so far (for a failing test's message).
    pub fn drain_log(&self) -> Vec<String> {
        let mut lines = self.early.clone();
        lines.extend(self.process.lines.try_iter());
        lines
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
        admin: bool,
    ) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(self.http).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth =
            if admin { format!("Authorization: Bearer {}\r\n", self.token) } else { String::new() };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    /// `GET path` and the raw body (for text endpoints such as `/metrics`).
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.http).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    /// Sends `signal` (`-TERM`, `-KILL`) and waits for the process to exit.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args([signal, &self.process.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.process.child.wait().unwrap()
    }
}

/// Connects to `target` from the address `source` (port chosen by the system): std cannot bind
/// a client socket before connecting, so this goes through `socket2`. All of 127/8 is loopback
/// on Linux, so a test can stand for a second client address with 127.0.0.2.
pub fn connect_from(source: std::net::Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// One HTTP request; `None` when the node cannot be reached, hangs up, or does not answer
/// within 10 s.
pub fn try_call(http: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    call(http, method, path, body, None)
}

/// One HTTP request with an optional bearer token; `None` when the node cannot be reached,
/// hangs up, or does not answer within 10 s.
pub fn call(
    http: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&http, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    Some((status, response.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// The cluster secret the replication tests' nodes and fake primaries share.
pub const CLUSTER_SECRET: &str = "a-cluster-secret-of-32-bytes-ok!";

/// A fake primary's step on `message` from a standby: a primary of cluster `ringfence` in
/// `epoch`, with the default engine, whose journal is `journal`.
pub fn fake_primary_step(
    session: &mut ringfence_replicator::session::PrimarySession,
    message: &ringfence_replicator::message::Message<'_>,
    epoch: u64,
    journal: &mut ringfence_replicator::position::EpochList,
) -> ringfence_replicator::session::PrimaryStep {
    use ringfence_replicator::auth::{ClusterId, ClusterSecret};
    let cluster = ClusterId::new("ringfence").unwrap();
    let secret = ClusterSecret::from_bytes(CLUSTER_SECRET.as_bytes()).unwrap();
    let journal_last = journal.first + journal.epochs.len() as u64 - 1;
    let mut view = ringfence_replicator::session::PrimaryView {
        cluster: &cluster,
        secret: &secret,
        engine: &ringfence_core::EngineConfig::default(),
        epoch: ringfence_core::Epoch(epoch),
        is_primary: true,
        journal,
        journal_last: ringfence_core::Sequence(journal_last),
        standby_tail_acknowledged: false,
    };
    session.on_message(message, &mut view)
}
