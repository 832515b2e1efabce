//! The data directory defends itself, tried with real processes: a second writer is refused
//! naming the node's pid, the read-only tools tell a record in progress from damage, and a
//! segment deleted or emptied behind the node's back is refused, never silently dropped; a
//! backup of a serving node holds every order answered before it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Serve, TempDir, record_ends, ringfence, ringfence_within, text, try_call};
use ringfence_journal::scan::{self, ReadOnlyDir};

/// Long enough for a node to start and refuse on a loaded machine; only a hang reaches it.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(120);

/// A config whose timer is slow enough that the journal holds still between commands (every
/// tick is journaled), so a test can place bytes after the last record and find them there.
fn quiet_config(dir: &Path) -> String {
    let path = dir.join("quiet.toml");
    std::fs::write(&path, "[node]\ntick_ms = 600000\nsnapshot_every_commands = 1000000\n").unwrap();
    path.display().to_string()
}

fn sell(node: &Serve, buyers: u64) {
    let sku =
        r#"{"sku":1,"stock":50,"price_cents":700,"per_user_limit":1,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    for user in 1..=buyers {
        let body = format!(r#"{{"request_id":"r-{user}","user":{user},"sku":1,"qty":1}}"#);
        assert_eq!(node.call("POST", "/v1/orders", &body, false).0, 201);
    }
}

/// The journal's last segment file and the byte offset where its intact records end.
fn journal_end(dir: &Path) -> (std::path::PathBuf, usize) {
    let mut source = ReadOnlyDir::open(dir).unwrap();
    let layout = scan::scan(&mut source).unwrap();
    let last = layout.segments.last().expect("a segment");
    (dir.join(&last.name), last.end)
}

/// The repaired journal in `data` verifies whole, and a node started on it under `config`
/// serves the three orders `sold_three_then` sold.
fn verifies_and_serves_three(data: &Path, config: &str) {
    let verify = ringfence(&["journal", "verify", data.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    let mut node = Serve::start_with(data, &["--config", config]);
    let (_, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!(view["reserved"], 3, "every acknowledged order is back");
    node.signal("-KILL");
}

/// A copy of the directory `data` at `to` (the other node's journal, for `journal heal`).
fn copy_of(data: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    to.to_owned()
}

/// A `serve` on the quiet config that created a SKU and sold three orders, then got `signal`
/// (a clean stop must succeed): its temporary directory, data directory and config file.
fn sold_three_then(name: &str, signal: &str) -> (TempDir, std::path::PathBuf, String) {
    let dir = TempDir::new(name);
    let data = dir.path().join("data");
    let config = quiet_config(dir.path());
    let mut node = Serve::start_with(&data, &["--config", &config]);
    sell(&node, 3);
    let status = node.signal(signal);
    assert!(signal != "-TERM" || status.success(), "a clean stop exits with success");
    (dir, data, config)
}

/// `serve` on `data`, which must refuse to start.
fn start_refused(data: &str, config: &str) -> std::process::Output {
    let args = ["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"];
    let start = [&args[..], &[data, "--config", config]].concat();
    ringfence_within(&start, REFUSAL_DEADLINE)
}

#[test]
fn after_a_clean_stop_a_zeroed_unit_of_the_last_record_is_refused_not_cleared() {
    // Goal: `serve` stopped by SIGTERM marks where its journal ends. A 16-byte unit of the last
    // record zeroed afterwards — what a write cut off by a crash leaves, so only the marker
    // tells it from one — is damage to an acknowledged order: the next start and `journal
    // verify` refuse it (exit 1), naming the sequence and the repairs, instead of clearing it
    // as a torn write; `journal rebuild` repairs it from the shutdown snapshot, losing nothing.
    let (_dir, data, config) = sold_three_then("clean-stop", "-TERM");
    let marker = data.join(ringfence_journal::datadir::CLEAN_STOP_FILE);
    assert!(marker.exists(), "a clean stop leaves its marker");
    let data_arg = data.to_str().unwrap();
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    // The SKU, then three orders: the last record is the third order.
    assert!(text(&verify.stdout).contains("stopped cleanly at sequence 4"), "{verify:?}");

    let (segment, end) = journal_end(&data);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
    let mut unit = [0u8; 16];
    file.read_exact_at(&mut unit, end as u64 - 32).unwrap();
    assert_ne!(unit, [0; 16], "the unit holds part of the order");
    file.write_all_at(&[0; 16], end as u64 - 32).unwrap();
    let refused = start_refused(data_arg, &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("stopped cleanly") && err.contains("record 4"), "{err}");
    assert!(err.contains(&format!("journal truncate {data_arg} --at-seq 4")), "{err}");
    assert!(err.contains(&format!("journal rebuild {data_arg}")), "{err}");
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stdout));
    let err = text(&verify.stderr);
    assert!(err.contains("no longer ends where it did") && !err.contains("torn tail"), "{err}");
    let replay = ringfence(&["replay", data_arg]);
    assert_eq!(replay.status.code(), Some(1), "{}", text(&replay.stderr));
    assert!(text(&replay.stderr).contains("no longer ends where it did"), "{replay:?}");

    // The clean stop took a snapshot through 4, which covers the damage: the rebuild repairs
    // it without giving up the order.
    let rebuild = ringfence(&["journal", "rebuild", data_arg]);
    let out = text(&rebuild.stdout);
    assert_eq!(rebuild.status.code(), Some(0), "{out}{}", text(&rebuild.stderr));
    assert!(out.contains("through sequence 4") && out.contains("nothing was dropped"), "{out}");
    assert!(out.contains("no record after the snapshot and continues at sequence 5"), "{out}");
    assert!(!marker.exists(), "a rebuild changes the end: the marker goes");
    let superseded = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".superseded"))
        .count();
    assert_eq!(superseded, 1, "the damaged segment is set aside");
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    let out = text(&verify.stdout);
    assert!(out.contains(".seg.superseded was set aside by `journal rebuild`"), "{out}");
    let replay = text(&ringfence(&["replay", data_arg]).stdout);
    assert!(replay.contains("replayed      nothing: the state is the snapshot's"), "{replay}");
    let mut node = Serve::start_with(&data, &["--config", &config]);
    let (_, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!(view["reserved"], 3, "every acknowledged order is back");
    assert!(!marker.exists(), "a running node has no marker");
    node.signal("-KILL");
    assert!(!marker.exists(), "a crash leaves no marker");
}

#[test]
fn after_a_crash_a_bit_flipped_at_rest_in_the_last_record_is_refused_not_cleared() {
    // Goal: `serve` killed leaves no clean-stop marker, yet one bit flipped afterwards in its
    // last record (an acknowledged order) is not read as a write the crash cut off: the next
    // start and `journal verify` refuse it (exit 1) naming the bit, the sequence and the
    // repairs, and the directory is left as it was.
    let (_dir, data, config) = sold_three_then("crash-rot", "-KILL");
    let data_arg = data.to_str().unwrap();
    let (segment, end) = journal_end(&data);
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut last = ringfence_journal::format::SEGMENT_HEADER_LEN;
    while let Some((_, len)) = ringfence_journal::format::check_record(&bytes[last..]) {
        if last + len == end {
            break;
        }
        last += len;
    }
    // The low byte of the last record's sequence field (4: the SKU, then three orders).
    assert_eq!(bytes[last + 8], 4, "the last record is the third order");
    bytes[last + 8] ^= 0x02;
    std::fs::write(&segment, &bytes).unwrap();
    let refused = start_refused(data_arg, &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("journal corrupt") && err.contains("(sequence 4)"), "{err}");
    assert!(err.contains(&format!("byte at offset {}", last + 8)), "{err}");
    assert!(err.contains("at rest") && !err.contains("torn"), "{err}");
    assert!(err.contains(&format!("journal truncate {data_arg} --at-seq 4")), "{err}");
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stdout));
    assert!(text(&verify.stderr).contains("at rest"), "{verify:?}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "refusing changed the segment");
    let lock = data.join(ringfence_journal::lock::LOCK_FILE);
    assert!(lock.exists(), "a refused start removed the lock file of a directory a node ran in");
}

#[test]
fn journal_heal_copies_a_damaged_record_back_from_the_other_journal_dropping_nothing() {
    // Goal: a bit flipped at rest in the first order, with two orders after it. The start
    // refuses, naming `journal heal`; heal from a directory without the record is refused and
    // changes nothing; heal from a copy of the journal (the other node's) puts the record back,
    // verify passes and the node serves all three orders.
    let (dir, data, config) = sold_three_then("heal", "-KILL");
    let peer = copy_of(&data, &dir.path().join("peer"));
    let data_arg = data.to_str().unwrap();
    let (segment, _) = journal_end(&data);
    let mut bytes = std::fs::read(&segment).unwrap();
    let start = ringfence_journal::format::SEGMENT_HEADER_LEN;
    let (first, len) = ringfence_journal::format::check_record(&bytes[start..]).unwrap();
    assert_eq!(first.sequence.0, 1, "the segment starts with the SKU");
    let order = start + len;
    assert_eq!(bytes[order + 8], 2, "the second record is the first order");
    bytes[order + 40] ^= 0x08;
    std::fs::write(&segment, &bytes).unwrap();
    let refused = start_refused(data_arg, &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains(&format!("journal heal {data_arg} --from")), "{err}");

    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let from = ["journal", "heal", data_arg, "--from"];
    let refused = ringfence(&[&from[..], &[elsewhere.to_str().unwrap()]].concat());
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("holds no intact record 2"), "{refused:?}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "a refused heal changed the segment");

    let healed = ringfence(&[&from[..], &[peer.to_str().unwrap()]].concat());
    let out = text(&healed.stdout);
    assert_eq!(healed.status.code(), Some(0), "{out}{}", text(&healed.stderr));
    assert!(out.contains("healed     sequence 2") && out.contains("nothing was dropped"), "{out}");
    verifies_and_serves_three(&data, &config);
}

#[test]
fn journal_heal_puts_back_the_records_a_segment_cut_short_lost_from_the_other_journal() {
    // Goal: a stopped node's segment cut short after two of its four records. The start
    // refuses, naming `journal heal`; `journal rebuild` refuses naming heal and the
    // truncation. After a clean stop, heal from a copy of the journal (the other node's) keeps
    // the two records left and puts back the two lost, up to the clean stop. After a kill,
    // where the records ended is not recorded: heal refuses, naming `--end-at-copy`, and with
    // it puts them back and says what it assumed. Either way the segment is as it was, verify
    // passes and the node serves all three orders.
    for signal in ["-TERM", "-KILL"] {
        let (dir, data, config) = sold_three_then("heal-cut-short", signal);
        let peer = copy_of(&data, &dir.path().join("peer"));
        let data_arg = data.to_str().unwrap();
        let (segment, _) = journal_end(&data);
        let whole = std::fs::read(&segment).unwrap();
        let ends = record_ends(&whole);
        assert_eq!(ends.len(), 4, "the SKU and three orders");
        // 16 bytes into the third record: two are left whole.
        let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(ends[1] as u64 + 16).unwrap();
        let refused = start_refused(data_arg, &config);
        assert_eq!(refused.status.code(), Some(1), "serve started on a segment cut short");
        let err = text(&refused.stderr);
        assert!(err.contains(&format!("journal heal {data_arg} --from")), "{err}");

        let rebuild = ringfence(&["journal", "rebuild", data_arg]);
        assert_eq!(rebuild.status.code(), Some(1), "{}", text(&rebuild.stdout));
        let err = text(&rebuild.stderr);
        assert!(err.contains("cannot rebuild") && err.contains("cut short"), "{err}");
        assert!(err.contains(&format!("journal heal {data_arg} --from")), "{err}");
        assert!(err.contains(&format!("journal truncate {data_arg} --at-seq 3`")), "{err}");

        let mut heal = vec!["journal", "heal", data_arg, "--from", peer.to_str().unwrap()];
        if signal == "-KILL" {
            let refused = ringfence(&heal);
            assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
            let err = text(&refused.stderr);
            assert!(err.contains("holds records 3..=4") && err.contains("--end-at-copy`"), "{err}");
            assert_eq!(std::fs::metadata(&segment).unwrap().len(), ends[1] as u64 + 16);
            heal.push("--end-at-copy");
        }
        let healed = ringfence(&heal);
        let out = text(&healed.stdout);
        assert_eq!(healed.status.code(), Some(0), "{out}{}", text(&healed.stderr));
        assert!(out.contains("healed     sequence 3..=4") && out.contains("cut short"), "{out}");
        let assumed = signal == "-KILL";
        assert_eq!(out.contains("taken to end at sequence 4"), assumed, "{out}");
        let dropped = if assumed {
            "shown to hold was dropped (see the note)"
        } else {
            "; nothing was dropped"
        };
        assert!(out.contains(dropped), "{out}");
        assert_eq!(std::fs::read(&segment).unwrap(), whole, "the segment is not as it was");
        verifies_and_serves_three(&data, &config);
    }
}

#[test]
fn a_refused_start_leaves_no_lock_file_where_there_was_none() {
    // Goal: `serve` refused once it has locked the directory (recovery refusing a directory
    // that holds no journal it can read; a port in use) says why as before, and removes the
    // lock file it made in a directory that had none. The lock file of a directory a node ran
    // in stays (`after_a_crash_a_bit_flipped_at_rest_in_the_last_record_is_refused_not_cleared`).
    // Fails where a refused start leaves the file it made.
    let dir = TempDir::new("refused-start");
    let config = quiet_config(dir.path());
    let lock_file = ringfence_journal::lock::LOCK_FILE;
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::write(wrong.join("00000000000000000001.seg"), vec![0xEE; 100_000]).unwrap();
    let refused = start_refused(wrong.to_str().unwrap(), &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("ringfence serve: error: recovery: "), "{err}");
    assert!(!wrong.join(lock_file).exists(), "a start recovery refused left a lock file");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let fresh = dir.path().join("fresh");
    let fresh_arg = fresh.to_str().unwrap();
    let args = ["serve", "--listen", &port, "--http", "127.0.0.1:0", "--data-dir", fresh_arg];
    let refused = ringfence_within(&[&args[..], &["--config", &config]].concat(), REFUSAL_DEADLINE);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("ringfence serve: error: starting the listeners"), "{err}");
    assert!(!fresh.join(lock_file).exists(), "a start refused its port left a lock file");
    drop(taken);
}

/// The entries of `dir`, sorted, subdirectories with a trailing `/`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() { format!("{name}/") } else { name }
        })
        .collect();
    names.sort();
    names
}

#[test]
fn serve_makes_no_journal_in_a_directory_holding_someone_elses_files() {
    // Goal: `serve` on a directory with no journal that holds a file that is not ringfence's
    // (a mistyped --data-dir) refuses, exit 1, naming the directory, the file and the flag,
    // and leaves the directory as it was: no lock file, token or journal file. An empty
    // directory, a file system's root (`lost+found/`) and one holding the node's config file
    // and a token file it names start; a node's own directory with a
    // file dropped in beside its journal starts too, and warns of it once.
    let dir = TempDir::new("foreign-files");
    let config = quiet_config(dir.path());
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("photos")).unwrap();
    std::fs::write(home.join("notes.txt"), "someone's").unwrap();
    let before = listing(&home);
    let refused = start_refused(home.to_str().unwrap(), &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("ringfence serve: error: recovery: "), "{err}");
    assert!(err.contains(&format!("{} holds no journal", home.display())), "{err}");
    assert!(err.contains("(notes.txt, photos/)") && err.contains("--data-dir"), "{err}");
    assert_eq!(listing(&home), before, "the refused start changed the directory");

    let mount = dir.path().join("mount");
    std::fs::create_dir_all(mount.join("lost+found")).unwrap();
    for data in [dir.path().join("empty"), mount] {
        std::fs::create_dir_all(&data).unwrap();
        let mut node = Serve::start_with(&data, &["--config", &config]);
        assert!(data.join(ringfence_journal::manifest::MANIFEST_FILE).exists(), "{data:?}");
        let log = node.drain_log();
        assert!(log.iter().all(|line| !line.contains("did not put there")), "{log:#?}");
        node.signal("-TERM");
    }

    // The files its configuration names are the node's own, there before its first start.
    let configured = dir.path().join("configured");
    std::fs::create_dir_all(&configured).unwrap();
    let token = configured.join("orders.token");
    std::fs::write(&token, "orders-token-of-at-least-32-characters\n").unwrap();
    let own_config = configured.join("node.toml");
    let settings = std::fs::read_to_string(&config).unwrap();
    let auth = format!("[auth]\norders_token_file = {:?}\n", token.display().to_string());
    std::fs::write(&own_config, format!("{settings}{auth}")).unwrap();
    let mut node = Serve::start_with(&configured, &["--config", own_config.to_str().unwrap()]);
    assert!(configured.join(ringfence_journal::manifest::MANIFEST_FILE).exists());
    let log = node.drain_log();
    assert!(log.iter().all(|line| !line.contains("did not put there")), "{log:#?}");
    node.signal("-TERM");

    let data = dir.path().join("empty");
    std::fs::write(data.join("notes.txt"), "someone's").unwrap();
    let mut node = Serve::start_with(&data, &["--config", &config]);
    sell(&node, 1);
    let warned: Vec<String> =
        node.drain_log().into_iter().filter(|line| line.contains("did not put there")).collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("1 entry that ringfence did not put there (notes.txt)"),
        "{warned:?}"
    );
    node.signal("-TERM");
    assert!(data.join("notes.txt").exists(), "a file beside the journal is left alone");
}

#[test]
fn a_second_writer_on_a_live_directory_is_refused_naming_the_pid() {
    // Goal: while a node runs, a second `serve` and a `journal truncate` on its directory are
    // refused with the node's pid, and the node and its journal are untouched.
    let dir = TempDir::new("second-writer");
    let data = dir.path().join("data");
    let node = Serve::start(&data);
    sell(&node, 3);
    let data_arg = data.to_str().unwrap();
    let pid = format!("pid {}", node.pid());
    let second = ringfence_within(
        &["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", data_arg],
        REFUSAL_DEADLINE,
    );
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    let err = text(&second.stderr);
    assert!(err.contains(&pid) && err.contains("in use"), "{err}");
    assert!(err.contains("ringfence.lock"), "{err}");

    let truncate =
        ringfence_within(&["journal", "truncate", data_arg, "--at-seq", "2"], REFUSAL_DEADLINE);
    assert_eq!(truncate.status.code(), Some(1), "{}", text(&truncate.stdout));
    let err = text(&truncate.stderr);
    assert!(err.contains(&pid) && err.contains("in use"), "{err}");

    let (status, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!((status, view["reserved"].clone()), (200, 3.into()), "the node still serves");
    let verify = ringfence(&["journal", "verify", data_arg, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(value["status"], "ok", "{value}");
    assert!(value["records"].as_u64().unwrap() >= 4, "the journal was not cut: {value}");
}

#[test]
fn read_only_tools_on_a_live_directory_call_the_last_record_in_progress() {
    // Goal: with a node writing, bytes after the last intact record are a record in
    // progress: verify, dump and replay exit 0 and say so, without suggesting truncate. Once
    // the node is gone the same bytes are a torn tail (exit 3), which the next start clears.
    let dir = TempDir::new("live-tools");
    let data = dir.path().join("data");
    let config = quiet_config(dir.path());
    let mut node = Serve::start_with(&data, &["--config", &config]);
    sell(&node, 2);
    let (segment, end) = journal_end(&data);
    // Half a record: what a reader sees while the journaler is between two stores (its
    // header's 32 bytes written, its 32-byte payload not yet).
    let mut half = [0xA5; 32];
    half[4..8].copy_from_slice(&30_u32.to_le_bytes());
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&half, end as u64).unwrap();
    let data_arg = data.to_str().unwrap();
    let in_progress =
        format!("live directory: node pid {} is writing; last record in progress", node.pid());
    // The node makes its next segment ready on a helper thread as it starts.
    let spare = data.join(ringfence_journal::spare::SPARE_NAME);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !spare.exists() {
        assert!(std::time::Instant::now() < deadline, "no spare segment within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let verify = ringfence(&["journal", "verify", data_arg]);
    let out = text(&verify.stdout);
    assert_eq!(verify.status.code(), Some(0), "{out}{}", text(&verify.stderr));
    assert!(out.contains(&in_progress), "{out}");
    assert!(out.contains("next-segment.tmp is the journal's next segment"), "{out}");
    assert!(out.contains("status     ok"), "{out}");
    assert!(!out.contains("truncate") && !text(&verify.stderr).contains("truncate"));
    for args in [vec!["journal", "dump", data_arg], vec!["replay", data_arg]] {
        let out = ringfence(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("last record in progress") && !err.contains("truncate"), "{err}");
    }

    node.signal("-KILL");
    let torn = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(torn.status.code(), Some(3), "{}", text(&torn.stdout));
    assert!(text(&torn.stdout).contains("torn tail"), "{}", text(&torn.stdout));
    let leftover = "next-segment.tmp is a crash's leftover temporary file; a node removes it";
    assert!(text(&torn.stdout).contains(leftover), "{}", text(&torn.stdout));

    let node = Serve::start_with(&data, &["--config", &config]);
    // The start says what it cleared, and that only a crash makes it harmless.
    let cleared = node.wait_for_log("bytes after the last intact record", Duration::from_secs(30));
    assert!(
        cleared.contains("had not stopped cleanly") && cleared.contains("Damage at rest"),
        "{cleared}"
    );
    let (_, view) = node.call("GET", "/v1/skus/1", "", false);
    assert_eq!(view["reserved"], 2, "every acknowledged order is back");
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
}

#[test]
fn a_deleted_or_emptied_last_segment_is_refused_naming_the_file() {
    // Goal: acknowledged orders are never dropped silently: with the last segment deleted or
    // cut to 0 bytes, `serve` refuses to start and `verify` fails, both naming the file and
    // the sequences it held; the explicit `journal truncate` then accepts the loss. The
    // refused start writes no admin token into the directory (one is generated only for a
    // start that goes ahead) and keeps the one that was there.
    for mode in ["deleted", "emptied"] {
        let dir = TempDir::new(mode);
        let data = dir.path().join("data");
        let mut node = Serve::start(&data);
        sell(&node, 4);
        node.signal("-KILL");
        let (segment, _) = journal_end(&data);
        let name = segment.file_name().unwrap().to_str().unwrap().to_owned();
        match mode {
            "deleted" => std::fs::remove_file(&segment).unwrap(),
            _ => std::fs::File::create(&segment).unwrap().set_len(0).unwrap(),
        }
        // A data directory copied without its admin token, or with the one serve wrote.
        let token_file = data.join("admin.token");
        let token = std::fs::read_to_string(&token_file).unwrap();
        if mode == "deleted" {
            std::fs::remove_file(&token_file).unwrap();
        }
        let data_arg = data.to_str().unwrap();
        let serve = ringfence_within(
            &["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", data_arg],
            REFUSAL_DEADLINE,
        );
        assert_eq!(serve.status.code(), Some(1), "{mode}: serve started");
        let err = text(&serve.stderr);
        assert!(err.contains(&name) && err.contains("sequences from 1 on"), "{mode}: {err}");
        let word = if mode == "deleted" { "is missing" } else { "cut short or emptied" };
        assert!(err.contains(word) && err.contains("--at-seq 1"), "{mode}: {err}");
        let left = std::fs::read_to_string(&token_file).ok();
        let expected = (mode == "emptied").then_some(token);
        assert_eq!(left, expected, "{mode}: the refused start changed admin.token");

        let verify = ringfence(&["journal", "verify", data_arg]);
        assert_eq!(verify.status.code(), Some(1), "{mode}: {}", text(&verify.stdout));
        assert!(text(&verify.stderr).contains(&name), "{mode}: {}", text(&verify.stderr));

        let truncate = ringfence(&["journal", "truncate", data_arg, "--at-seq", "1"]);
        assert_eq!(truncate.status.code(), Some(0), "{mode}: {}", text(&truncate.stderr));
        if mode == "deleted" {
            // What went with the file is said lost, though no record after the cut was read.
            let out = text(&truncate.stdout);
            let said = format!(
                "lost      sequences from 1 on (the journal's newest records), with {}",
                segment.display()
            );
            assert!(out.contains(&said), "{out}");
        }
        let verify = ringfence(&["journal", "verify", data_arg]);
        assert_eq!(verify.status.code(), Some(0), "{mode}: {}", text(&verify.stdout));
    }
}

#[test]
fn a_segment_cut_short_is_truncated_at_its_first_lost_sequence_keeping_the_records_left() {
    // Goal: the operator's flow on a stopped node's segment cut short part way through its
    // records: `serve` still refuses, `verify` counts the records left and offers the cut at
    // the first sequence lost, `truncate` past it is refused naming it, and at it keeps every
    // record left, after which the journal verifies whole.
    let (_dir, data, config) = sold_three_then("cut-short", "-TERM");
    let (segment, _) = journal_end(&data);
    let bytes = std::fs::read(&segment).unwrap();
    let ends = record_ends(&bytes);
    assert!(ends.len() >= 4, "{} records", ends.len());
    // 16 bytes into the third record: two are left whole.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(ends[1] as u64 + 16).unwrap();
    let data_arg = data.to_str().unwrap();
    let refused = start_refused(data_arg, &config);
    assert_eq!(refused.status.code(), Some(1), "serve started on a segment cut short");
    let err = text(&refused.stderr);
    assert!(err.contains("2 intact records") && err.contains("--at-seq 3`"), "{err}");

    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stdout));
    let out = text(&verify.stdout);
    assert!(out.contains("2 intact records left in it, lost from 3 on"), "{out}");
    let err = text(&verify.stderr);
    assert!(err.contains("sequence 3 is the first not whole"), "{err}");
    assert!(err.contains("truncate") && err.contains("--at-seq 3`"), "{err}");

    let beyond = ringfence(&["journal", "truncate", data_arg, "--at-seq", "4"]);
    assert_eq!(beyond.status.code(), Some(1));
    assert!(text(&beyond.stderr).contains("truncate at 3 or lower"), "{}", text(&beyond.stderr));
    let truncate = ringfence(&["journal", "truncate", data_arg, "--at-seq", "3"]);
    assert_eq!(truncate.status.code(), Some(0), "{}", text(&truncate.stderr));
    assert!(text(&truncate.stdout).contains("restored"), "{}", text(&truncate.stdout));
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), bytes.len() as u64);
    let verify = ringfence(&["journal", "verify", data_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    assert!(text(&verify.stdout).contains("records    2 (sequences 1..=2)"));
}

#[test]
fn the_tools_refuse_a_directory_that_holds_no_data_and_change_nothing() {
    // Goal: a mistyped path is not a data directory: `verify` does not call it intact (a backup
    // check would pass), the reading tools do not show an empty state, and `truncate` writes no
    // manifest, epoch file or lock into it.
    let dir = TempDir::new("no-data");
    let unrelated = dir.path().join("unrelated");
    std::fs::create_dir(&unrelated).unwrap();
    std::fs::write(unrelated.join("notes.txt"), "not a journal").unwrap();
    let path = unrelated.to_str().unwrap();
    for args in [
        vec!["journal", "verify", path],
        vec!["journal", "stats", path],
        vec!["journal", "dump", path],
        vec!["replay", path],
        vec!["journal", "truncate", path, "--at-seq", "1"],
    ] {
        let out = ringfence(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("holds no ringfence data"), "{args:?}: {stderr}");
    }
    let mut left: Vec<_> = std::fs::read_dir(&unrelated)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt"], "nothing was written into the directory");
}

#[test]
fn a_backup_taken_while_the_node_serves_starts_a_node_with_what_it_copied() {
    // Goal: `journal backup` copies a running node's directory without stopping it, with
    // `rollback/`; a node started on the copy serves exactly the orders made before it, and
    // is marked catching up. The copy is checked (`verify` passes on it), an existing
    // destination is refused, and the node goes on serving throughout.
    let dir = TempDir::new("backup");
    let data = dir.path().join("data");
    let config = quiet_config(dir.path());
    let mut node = Serve::start_with(&data, &["--config", &config]);
    sell(&node, 3);
    std::fs::create_dir_all(data.join("rollback")).unwrap();
    std::fs::write(data.join("rollback").join("truncated-9-9-at-1.jsonl"), "{}\n").unwrap();
    let copy = dir.path().join("copy");
    let (data_arg, copy_arg) = (data.to_str().unwrap(), copy.to_str().unwrap());
    let backup = ringfence(&["journal", "backup", data_arg, copy_arg]);
    let out = text(&backup.stdout);
    assert_eq!(backup.status.code(), Some(0), "{out}{}", text(&backup.stderr));
    // The SKU, then three orders.
    assert!(out.contains("records    4 (sequences 1..=4), in 1 segments"), "{out}");
    assert!(!out.contains("stopped cleanly"), "the node is running: {out}");
    assert!(copy.join("rollback").join("truncated-9-9-at-1.jsonl").is_file(), "rollback/");
    assert!(copy.join(ringfence_journal::datadir::CATCH_UP_FILE).is_file(), "not marked");
    let json_copy = dir.path().join("copy-json");
    let json = ringfence(&["journal", "backup", data_arg, json_copy.to_str().unwrap(), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (value["first_sequence"].as_u64(), value["last_sequence"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(
        (value["left_out"].is_null(), value["stopped_cleanly"].as_bool()),
        (true, Some(false))
    );
    let again = ringfence(&["journal", "backup", data_arg, copy_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("exists: a backup goes to a new directory"), "{again:?}");

    let body = r#"{"request_id":"r-after","user":99,"sku":1,"qty":1}"#;
    assert_eq!(node.call("POST", "/v1/orders", body, false).0, 201, "the node serves on");
    let verify = ringfence(&["journal", "verify", copy_arg]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    assert!(node.signal("-TERM").success());
    let mut restored = Serve::start_with(&copy, &["--config", &config]);
    let (_, view) = restored.call("GET", "/v1/skus/1", "", false);
    assert_eq!(view["reserved"], 3, "the orders made before the copy, and not the one after");
    restored.signal("-TERM");
}

/// `POST /v1/orders` on its own connection: the order id if the node took it.
fn order(http: std::net::SocketAddr, user: u64) -> Option<String> {
    let body = format!(r#"{{"request_id":"load-{user}","user":{user},"sku":1,"qty":1}}"#);
    let (status, answer) = try_call(http, "POST", "/v1/orders", &body)?;
    let answer: serde_json::Value = serde_json::from_str(&answer).ok()?;
    (status == 201).then(|| answer["order_id"].as_str().unwrap().to_owned())
}

#[test]
fn backups_taken_under_load_and_retention_hold_every_order_answered_before_them() {
    // Goal: with orders arriving all the time, small segments and a snapshot every 100
    // commands (one kept, so retention retires segments throughout), each backup succeeds,
    // and a node started on it serves every order that was answered before the backup began.
    let dir = TempDir::new("backup-load");
    let data = dir.path().join("data");
    let config = dir.path().join("load.toml");
    std::fs::write(
        &config,
        "[node]\ntick_ms = 600000\nsegment_bytes = 65536\nsnapshot_every_commands = 100\n\
         snapshots_kept = 1\nsnapshot_writer = \"normal\"\n\
         [engine]\norders_max = 16384\nholdings_max = 16384\nrequest_keys_max = 65536\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut node = Serve::start_with(&data, &["--config", config]);
    let sku = r#"{"sku":1,"stock":100000,"price_cents":700,"payment_timeout_ms":600000}"#;
    assert_eq!(node.call("POST", "/v1/skus", sku, true).0, 201);
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (stop, count) =
        (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicU64::new(0)));
    let (http, stopping, counted) = (node.http, stop.clone(), count.clone());
    let load = std::thread::spawn(move || {
        let mut answered = Vec::new();
        let mut user = 0;
        while !stopping.load(Ordering::Relaxed) && user < 10_000 {
            user += 1;
            if let Some(id) = order(http, user) {
                answered.push((std::time::Instant::now(), id));
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
        answered
    });
    // Orders, not time, pace the test: a loaded machine takes longer to reach each point.
    let answered_at_least = |orders: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while count.load(Ordering::Relaxed) < orders {
            assert!(std::time::Instant::now() < deadline, "fewer than {orders} orders in 120 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let snapshot_written = || {
        std::fs::read_dir(&data).unwrap().any(|entry| {
            entry.unwrap().file_name().to_str().is_some_and(|name| name.ends_with(".snap"))
        })
    };
    let mut copies = Vec::new();
    for round in 0..3 {
        // Past a snapshot (every 100 commands) before the first backup, and more between.
        answered_at_least(300 * (round + 1));
        // The snapshot writer runs beside the load: on a loaded machine it may lag the
        // orders.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !snapshot_written() {
            assert!(std::time::Instant::now() < deadline, "no snapshot written in 120 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let copy = dir.path().join(format!("copy-{round}"));
        let began = std::time::Instant::now();
        let backup =
            ringfence(&["journal", "backup", data.to_str().unwrap(), copy.to_str().unwrap()]);
        assert_eq!(backup.status.code(), Some(0), "{}", text(&backup.stderr));
        let said = text(&backup.stdout);
        assert!(said.contains("snapshots  through"), "the journal reaches a snapshot: {said}");
        copies.push((began, copy));
    }
    // Enough 64 KiB segments for retention to have retired some.
    answered_at_least(2_500);
    stop.store(true, Ordering::Relaxed);
    let answered = load.join().unwrap();
    assert!(node.signal("-TERM").success());
    let stats = text(&ringfence(&["journal", "stats", data.to_str().unwrap()]).stdout);
    assert!(!stats.contains(" 0 segments retired"), "retention ran under the load: {stats}");
    for (began, copy) in copies {
        let before: Vec<_> = answered.iter().filter(|(at, _)| *at < began).collect();
        assert!(!before.is_empty(), "no order answered before the backup");
        let mut restored = Serve::start_with(&copy, &["--config", config]);
        for (_, id) in before {
            let (status, view) = restored.call("GET", &format!("/v1/orders/{id}"), "", false);
            assert_eq!((status, view["state"].as_str()), (200, Some("reserved")), "{id}: {view}");
        }
        restored.signal("-TERM");
    }
}
