//! The systemd unit shipped in `docs/deploy/ringfence.service`, held to the binary: the
//! commands it runs exist with those arguments, on a configuration written as its install notes
//! say, and the node stops on the unit's signal, within its stop timeout, with a status systemd
//! counts as success.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::free_port;
use common::{TempDir, ringfence, text, try_call};

/// The binary and configuration paths the unit names, which the test replaces with its own.
const BINARY: &str = "/usr/local/bin/ringfence";
const CONFIG: &str = "/etc/ringfence/ringfence.toml";

/// The `[Service]` section's settings (a key given twice keeps its last value).
fn service() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/ringfence.service");
    let unit = std::fs::read_to_string(path).unwrap();
    let mut section = "";
    let mut settings = BTreeMap::new();
    for line in unit.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            let (key, value) = line.split_once('=').expect("key=value");
            settings.insert(key.to_owned(), value.to_owned());
        }
    }
    settings
}

/// A command line of the unit as argv, the unit's paths replaced by the test's.
fn argv(line: &str, config: &Path) -> Vec<String> {
    let binary = env!("CARGO_BIN_EXE_ringfence");
    line.split_whitespace()
        .map(|word| word.replace(BINARY, binary).replace(CONFIG, config.to_str().unwrap()))
        .collect()
}

/// `systemd-analyze verify` on the unit (its binary path this build's): no unknown key, no
/// bad value, an executable command. Where systemd is not installed it says so.
fn analyze(dir: &Path) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/ringfence.service");
    let unit =
        std::fs::read_to_string(path).unwrap().replace(BINARY, env!("CARGO_BIN_EXE_ringfence"));
    let copy = dir.join("ringfence.service");
    std::fs::write(&copy, unit).unwrap();
    let Ok(output) = Command::new("systemd-analyze").arg("verify").arg(&copy).output() else {
        return eprintln!("systemd-analyze is not installed: the unit was not verified");
    };
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_systemd_unit_starts_a_node_and_stops_it_as_systemd_would() {
    // Goal: ExecStartPre accepts the configuration the install notes make (`config example`,
    // then data_dir and the listeners set), ExecStart serves on it, and KillSignal stops the
    // node within TimeoutStopSec with exit status 0, after it answered; a configuration serve
    // would refuse fails ExecStartPre.
    let unit = service();
    for key in ["ExecStartPre", "ExecStart", "KillSignal", "TimeoutStopSec", "StateDirectory"] {
        assert!(unit.contains_key(key), "the unit sets {key}: {unit:?}");
    }
    assert!(unit["ExecStart"].contains(CONFIG) && unit["ExecStartPre"].contains(CONFIG));
    let root = TempDir::new("deploy");
    analyze(root.path());
    let data = root.path().join("state");
    let example = ringfence(&["config", "example"]);
    assert!(example.status.success());
    let (binary, http) = (free_port(), free_port());
    let config = text(&example.stdout)
        .replace("listen = \"127.0.0.1:7001\"", &format!("listen = \"127.0.0.1:{binary}\""))
        .replace("http = \"127.0.0.1:7080\"", &format!("http = \"127.0.0.1:{http}\""));
    let config = format!("data_dir = {:?}\n{config}", data.to_str().unwrap());
    let config_file = root.path().join("ringfence.toml");
    std::fs::write(&config_file, &config).unwrap();

    let pre = argv(&unit["ExecStartPre"], &config_file);
    let checked = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
    assert!(checked.status.success(), "{pre:?}: {}", text(&checked.stderr));

    let start = argv(&unit["ExecStart"], &config_file);
    let mut node = Command::new(&start[0])
        .args(&start[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_call(http, "GET", "/health", "").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "the node did not answer /health within 30 s");
        assert!(node.try_wait().unwrap().is_none(), "the node exited at start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(data.join("admin.token").exists(), "the node keeps its state in the config's data_dir");

    let signal = unit["KillSignal"].strip_prefix("SIG").expect("a signal name").to_owned();
    let stop: u64 = unit["TimeoutStopSec"].parse().expect("seconds");
    let sent = Command::new("kill").args(["-s", &signal, &node.id().to_string()]).status();
    assert!(sent.unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(stop);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("the node did not stop within TimeoutStopSec ({stop} s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // systemd would also take an end by SIGTERM itself as clean; a node that serves stops
    // with 0, having drained and written its final snapshot.
    assert_eq!(status.code(), Some(0), "a drained, clean stop: {status:?}");

    // A setting serve refuses fails the pre-start check, naming it.
    assert!(config.contains("\nring_size = 16384\n"), "the example's ring size");
    std::fs::write(&config_file, config.replace("\nring_size = 16384\n", "\nring_size = 1000\n"))
        .unwrap();
    let refused = Command::new(&pre[0]).args(&pre[1..]).output().unwrap();
    let said = format!("{}{}", text(&refused.stdout), text(&refused.stderr));
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("ring_size"), "{said}");
}
