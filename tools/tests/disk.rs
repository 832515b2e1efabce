//! `ringfence serve` on a disk that fails: a data directory on a small tmpfs the test mounts
//! (full), or mounted read-only. Mounting needs root (CAP_SYS_ADMIN); where the machine
//! forbids it the tests fail, unless told to skip (`common::disk::cannot_mount`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::disk::{Mount, cannot_mount, fill};
use common::{Serve, TempDir, ringfence_within, text};

fn reserve(node: &Serve, user: u64) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"request_id":"disk-{user}","user":{user},"sku":1,"qty":1}}"#);
    node.call("POST", "/v1/orders", &body, false)
}

#[test]
fn a_full_disk_refuses_writes_serves_reads_and_a_restart_recovers() {
    // Goal: when the disk fills under a sale, writes are refused with `journal_failed` naming
    // the cause, every reservation answered before is kept and readable, /ready says why,
    // /health says degraded, a metric and a log line record it; after space is freed, one
    // restart brings every acknowledged order back and takes writes again.
    let temp = TempDir::new("disk-full");
    let disk = match SmallDisk::new(&temp, "1m") {
        Ok(disk) => disk,
        Err(why) => return cannot_mount(&why),
    };
    let mut node = disk.serve();
    let sku = r#"{"sku":1,"stock":100000,"price_cents":700,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let ballast = disk.mount.point.join("ballast");
    assert!(fill(&ballast) > 0, "the tmpfs had room for the ballast");

    // The open segment was allocated in full, so the sale goes on until it must rotate.
    let mut orders = Vec::new();
    let refused = loop {
        let user = orders.len() as u64 + 1;
        assert!(user < 5_000, "a 64 KiB segment never filled: {:?}", node.drain_log());
        match reserve(&node, user) {
            (201, reserved) => orders.push(reserved["order_id"].as_str().unwrap().to_owned()),
            (status, error) => break (status, error),
        }
    };
    let (status, error) = refused;
    eprintln!("{} reservations acknowledged before the disk filled", orders.len());
    assert_eq!((status, error["error"].as_str()), (503, Some("journal_failed")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("No space left"), "{error}");
    assert!(orders.len() > 100, "only {} reservations before the disk filled", orders.len());
    let (status, again) = reserve(&node, 99_999);
    assert_eq!((status, again["error"].as_str()), (503, Some("journal_failed")), "{again}");

    // Reads are answered from memory, and show exactly the acknowledged reservations.
    let (status, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!((status, view["reserved"].as_u64()), (200, Some(orders.len() as u64)), "{view}");
    let (status, first) = node.call("GET", &format!("/v1/orders/{}", orders[0]), "", false);
    assert_eq!((status, first["state"].as_str()), (200, Some("reserved")), "{first}");
    let (status, ready) = node.call("GET", "/ready", "", false);
    assert_eq!((status, ready["error"].as_str()), (503, Some("journal_failed")), "{ready}");
    let (status, health) = node.call("GET", "/health", "", false);
    assert_eq!((status, health["status"].as_str()), (200, Some("degraded")), "{health}");
    let (_, metrics) = node.get_text("/metrics");
    assert!(metrics.contains("\nringfence_journal_failed 1\n"), "{metrics}");
    let refusals = metrics.lines().find(|l| l.starts_with("ringfence_journal_failed_total "));
    assert_ne!(refusals, Some("ringfence_journal_failed_total 0"), "{metrics}");
    assert!(refusals.is_some(), "{metrics}");
    node.wait_for_log("the journal failed at sequence", Duration::from_secs(10));

    // The documented recovery: free space, restart.
    std::fs::remove_file(&ballast).unwrap();
    node.signal("-TERM");
    let node = disk.serve();
    let (_, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!(view["reserved"].as_u64(), Some(orders.len() as u64), "{view}");
    for order in [orders.first(), orders.last()].into_iter().flatten() {
        let (status, kept) = node.call("GET", &format!("/v1/orders/{order}"), "", false);
        assert_eq!((status, kept["state"].as_str()), (200, Some("reserved")), "{kept}");
    }
    assert_eq!(reserve(&node, 99_999).0, 201, "writes are taken again");
    drop(node);
    drop(disk);
}

/// A data directory on a tmpfs of `size`, with journal segments of 64 KiB (a few to such a
/// disk), for `serve` to start on.
struct SmallDisk {
    mount: Mount,
    dir: PathBuf,
    config: PathBuf,
}

impl SmallDisk {
    /// Mounts the tmpfs under `temp` and writes the configuration there, or says why not.
    fn new(temp: &TempDir, size: &str) -> Result<SmallDisk, String> {
        let mount = Mount::tmpfs(&temp.path().join("mnt"), size, "")?;
        let config = temp.path().join("small-segments.toml");
        std::fs::write(&config, "[node]\nsegment_bytes = 65536\n").unwrap();
        Ok(SmallDisk { dir: mount.point.join("data"), mount, config })
    }

    /// Starts `serve` on the directory.
    fn serve(&self) -> Serve {
        Serve::start_with(&self.dir, &["--config", self.config.to_str().unwrap()])
    }
}

/// A gauge's value in Prometheus text, if shown.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    let line = metrics.lines().find(|line| line.split(' ').next() == Some(name))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn a_disk_running_low_is_logged_and_shown_while_writes_still_succeed() {
    // Goal: the node watches its disk: `/metrics` shows the free space, a log line warns when
    // it falls short of the next snapshot and four segments — while the open segment still
    // takes writes — and
    // another says when there is room again. Fails without the helper's periodic look: the
    // ballast arrives after the spare is made, and no segment starts to notice it.
    let temp = TempDir::new("disk-low");
    let disk = match SmallDisk::new(&temp, "2m") {
        Ok(disk) => disk,
        Err(why) => return cannot_mount(&why),
    };
    let node = disk.serve();
    let sku = r#"{"sku":1,"stock":100000,"price_cents":700,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    let free = || gauge(&node.get_text("/metrics").1, "ringfence_data_dir_free_bytes");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while free().is_none_or(|bytes| bytes < 4 * 65_536) {
        assert!(std::time::Instant::now() < deadline, "no free space shown: {:?}", free());
        std::thread::sleep(Duration::from_millis(50));
    }

    let ballast = disk.mount.point.join("ballast");
    assert!(fill(&ballast) > 0, "the tmpfs had room for the ballast");
    let warning = node.wait_for_log("disk is nearly full", Duration::from_secs(10));
    assert!(warning.contains("room for 0 more journal segments"), "{warning}");
    let (_, metrics) = node.get_text("/metrics");
    assert_eq!(gauge(&metrics, "ringfence_data_dir_free_segments"), Some(0), "{metrics}");
    assert_eq!(gauge(&metrics, "ringfence_data_dir_low_space"), Some(1), "{metrics}");
    assert!(gauge(&metrics, "ringfence_data_dir_free_bytes") < Some(65_536), "{metrics}");
    // Warned ahead: the open segment was allocated in full and still takes reservations.
    assert_eq!(reserve(&node, 1).0, 201, "a write refused while the segment had room");

    std::fs::remove_file(&ballast).unwrap();
    node.wait_for_log("has room again", Duration::from_secs(10));
    let (_, metrics) = node.get_text("/metrics");
    assert!(gauge(&metrics, "ringfence_data_dir_free_segments") >= Some(4), "{metrics}");
    assert_eq!(gauge(&metrics, "ringfence_data_dir_low_space"), Some(0), "{metrics}");
    drop(node);
    drop(disk);
}

#[test]
fn a_data_directory_that_cannot_be_written_fails_start_with_the_cause() {
    // Goal: `serve` on a read-only file system, or on one without room for the first journal
    // segment, exits at once with an error naming the cause, instead of starting healthy.
    let temp = TempDir::new("disk-start");
    let cases = [("ro", ",ro", "Read-only file system"), ("small", "", "No space left")];
    for (name, options, cause) in cases {
        let size = if name == "small" { "32k" } else { "1m" };
        let mount = match Mount::tmpfs(&temp.path().join(name), size, options) {
            Ok(mount) => mount,
            Err(why) => return cannot_mount(&why),
        };
        let dir = mount.point.join("data");
        let dir = dir.to_str().unwrap();
        let args = ["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", dir];
        let output = ringfence_within(&args, Duration::from_secs(60));
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{name}: serve started: {stderr}");
        assert!(stderr.contains(cause), "{name}: the error names the cause: {stderr}");
        drop(mount);
    }
}
