//! A `ringfence replay --export - --follow` process, as a downstream loader runs it.

use std::time::Duration;

/// A `replay --export - --follow --json` process: its lines as they come, its standard error
/// once it exits. Killed if the test ends with it running.
pub struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Follower {
    pub fn start(dir: &std::path::Path) -> Follower {
        Follower::start_with(dir, &[])
    }

    pub fn start_with(dir: &std::path::Path, flags: &[&str]) -> Follower {
        use std::io::{BufRead as _, Read as _};
        use std::process::{Command, Stdio};
        let path = dir.to_str().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["replay", path, "--export", "-", "--follow", "--json"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ringfence");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Follower { child, lines, stderr }
    }

    /// The next `count` lines, each within 30 s.
    pub fn lines(&self, count: usize) -> Vec<serde_json::Value> {
        (0..count)
            .map(|n| {
                let line = self.lines.recv_timeout(Duration::from_secs(30));
                let line = line.unwrap_or_else(|e| panic!("line {n} of {count} not exported: {e}"));
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    }

    /// Waits up to 30 s for the process to exit: its status and standard error.
    pub fn exited(self) -> (std::process::ExitStatus, String) {
        let (status, stderr, _) = self.exited_with_lines();
        (status, stderr)
    }

    /// Waits up to 30 s for the process to exit: its status, standard error, and the lines
    /// it wrote that were not taken yet.
    pub fn exited_with_lines(
        mut self,
    ) -> (std::process::ExitStatus, String, Vec<serde_json::Value>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the follower did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        let rest = self.lines.iter().map(|line| serde_json::from_str(&line).unwrap()).collect();
        (status, stderr.join().unwrap(), rest)
    }

    /// Lines as they come until `done` says enough, or `within` passes.
    pub fn lines_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + within;
        let mut lines = Vec::new();
        while !done(&lines) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(serde_json::from_str(&line).unwrap()),
                Err(_) => break,
            }
        }
        lines
    }

    /// The process's id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM, if the process still runs, and waits for it to exit.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        if self.running() {
            let pid = self.child.id().to_string();
            let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success());
        }
        self.exited()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
