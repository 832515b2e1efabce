//! A single-member etcd on loopback ports for the failover tests: its own temporary data
//! directory, timings short enough for a 1 s lease (etcd refuses TTLs below 1.5 election
//! timeouts), killed on drop. Stop and start it again on the same ports and directory to
//! play an outage.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loopback port free right now (bound, then released), never one this test process
/// handed out before: the ports of one test's processes are distinct.
///
/// The port is taken from below the kernel's ephemeral range. Tests stop processes and start
/// them again on the same port; while a process is down, an ephemeral port may be taken as the
/// source port of any outgoing connection on the machine (another test's flood of clients, a
/// standby reconnecting), and the restarted process would fail to bind it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const LOWEST: u16 = 10_000;
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = u32::from(ephemeral_low - LOWEST);
    // Each test process starts at its own place, so two at once seldom probe the same ports.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for step in 0..span {
        let port = LOWEST + ((start + step) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral_low}")
}

/// An etcd process.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    election_timeout_ms: u32,
}

impl Etcd {
    /// Starts etcd with its data under `dir`, and waits (bounded) until it answers: heartbeats
    /// every 50 ms, an election timeout of 500 ms (its shortest lease 1 s).
    pub fn start(dir: &Path) -> Etcd {
        Etcd::start_with_election_timeout(dir, 500)
    }

    /// [`Etcd::start`] with another election timeout: etcd's shortest lease is 1.5 of them,
    /// rounded up to whole seconds.
    pub fn start_with_election_timeout(dir: &Path, election_timeout_ms: u32) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join("etcd"),
            election_timeout_ms,
        };
        etcd.restart();
        etcd
    }

    /// The client URL to pass to `serve --etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "witness", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("witness={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout"])
            .arg(self.election_timeout_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (apt-get install etcd-server; .ci/run installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ready() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether etcd answers `/health` with a leader.
    fn ready(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
