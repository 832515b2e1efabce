//! A stalled tail in `ringfence-perf load` (and the generator it shares with `tcp`, `http`,
//! `redis` and `replication`, `net::drive_up_to`): a fake HTTP node on loopback that never
//! answers chosen requests. Only counts, and waits the fake node imposes, are asserted: no
//! timing of this machine.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TempDir, perf};

const FIRST_USER: u64 = 1_000;

/// A fake ringfence HTTP API on 127.0.0.1: `/v1/skus/{id}` (a million units, open), `/health`,
/// `POST /v1/orders` (201, but never for a request of an even index: with two connections,
/// every request of the first, since later answers on it would wait behind the first, as
/// HTTP/1.1 requires). Stops accepting when dropped.
struct FakeNode {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FakeNode {
    fn start() -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stopping = Arc::clone(&stopping);
                        std::thread::spawn(move || serve(stream, &stopping));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeNode { addr, stop }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One whole request at the start of `input`: (head, body, bytes used).
fn request(input: &[u8]) -> Option<(String, String, usize)> {
    let end = input.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&input[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0usize);
    let body = input.get(end..end + length)?;
    Some((head, String::from_utf8_lossy(body).into_owned(), end + length))
}

fn answer(status: &str, body: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn index_of(body: &str) -> u64 {
    let user = body.split("\"user\":").nth(1).expect("a user field");
    let digits: String = user.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().expect("a user id") - FIRST_USER
}

fn serve(mut stream: TcpStream, stop: &AtomicBool) {
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut input = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut silent = false;
    let started = Instant::now();
    // Bounded: no connection outlives two minutes.
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
        while let Some((head, body, used)) = request(&input) {
            input.drain(..used);
            let reply = if head.starts_with("GET /v1/skus/") {
                let view = r#"{"sku":1,"available":1000000,"reserved":0,"open":true}"#;
                let _ = stream.write_all(&answer("200 OK", view, true));
                let _ = stream.shutdown(Shutdown::Both);
                return;
            } else if head.starts_with("GET /health") {
                answer("200 OK", r#"{"status":"ok"}"#, false)
            } else {
                silent |= index_of(&body) % 2 == 0;
                answer("201 Created", r#"{"order":1}"#, false)
            };
            if !silent && stream.write_all(&reply).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The `Total count` and `Max` (µs) of an `.hgrm` file.
fn hgrm_count_and_max(path: &Path) -> (u64, f64) {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("#[Max")).expect("a #[Max line");
    let max: f64 =
        line.split('=').nth(1).unwrap().split(',').next().unwrap().trim().parse().unwrap();
    let count: u64 = line.split('=').nth(2).unwrap().trim_end_matches(']').trim().parse().unwrap();
    (count, max)
}

/// Runs `load --http` at `rate` for `seconds` against `node`, no warm-up, `--out dir`; returns
/// its stdout.
fn run_load(node: &FakeNode, rate: u64, seconds: f64, connections: u64, dir: &Path) -> String {
    let addr = node.addr.to_string();
    let (rate, seconds) = (rate.to_string(), seconds.to_string());
    let (connections, first_user) = (connections.to_string(), FIRST_USER.to_string());
    let out = dir.to_str().unwrap();
    let output = perf(&[
        "load",
        "--http",
        "--addr",
        &addr,
        "--sku",
        "1",
        "--rate",
        &rate,
        "--duration-s",
        &seconds,
        "--warmup-s",
        "0",
        "--connections",
        &connections,
        "--first-user",
        &first_user,
        "--out",
        out,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn the_hgrm(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hgrm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// The `ops` column of the row in `stdout` (table mode).
fn ops_of(stdout: &str) -> u64 {
    let line = stdout.lines().find(|l| l.starts_with("reserve ")).expect("the row");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn requests_never_answered_are_in_the_latency_distribution_not_dropped() {
    // Goal: open loop from intended send time, no coordinated omission: a stalled tail does
    // not vanish from the figures. 50 requests at 100/s over two connections; the fake node
    // never answers the first connection (25 requests). The generator gives up 10 s after the
    // last send and counts them `lost`; each waited at least that long, so the row's
    // distribution holds all 50 samples and a max of at least 10 s. Takes about 11 s.
    let node = FakeNode::start();
    let dir = TempDir::new("lost");
    let stdout = run_load(&node, 100, 0.5, 2, &dir.0);
    let answered = ops_of(&stdout);
    assert!(stdout.contains("25 requests unanswered"), "{stdout}");
    let (count, max_us) = hgrm_count_and_max(&the_hgrm(&dir.0));
    assert_eq!(
        count,
        answered + 25,
        "the row's histogram holds {count} samples for {answered} answered + 25 unanswered \
         requests (max {max_us} us)\n{stdout}"
    );
    assert!(max_us >= 10e6, "max {max_us} us, yet 25 requests waited >= 10 s\n{stdout}");
}
