//! Source tidiness the build enforces: the business-logic processor stays pure (no threads,
//! clocks, files, sockets, processes or randomly seeded maps), so do the replication and
//! coordination protocol's decisions (no clocks, threads, sockets or files), and the modules
//! that change durable state keep their assertion density.
//!
//! Counting is textual and deliberately simple, so the printed figures can be checked by eye:
//! comments and `#[cfg(test)]` modules are left out; a *function* is an `fn name` item; an
//! *assertion* is a call of `assert!`, `assert_eq!`, `assert_ne!` or their `debug_` forms.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Identifiers the engine must not use, with why.
const ENGINE_FORBIDDEN: &[(&str, &str)] = &[
    ("std::thread", "threads"),
    ("thread::spawn", "threads"),
    ("std::sync", "shared-memory synchronisation"),
    ("std::time", "clocks"),
    ("Instant", "clocks"),
    ("SystemTime", "clocks"),
    ("std::fs", "files"),
    ("File::", "files"),
    ("std::net", "sockets"),
    ("TcpStream", "sockets"),
    ("UdpSocket", "sockets"),
    ("std::process", "processes"),
    ("std::env", "the environment"),
    ("std::io", "I/O"),
    ("HashMap", "randomly seeded maps (use FixedMap)"),
    ("HashSet", "randomly seeded maps (use FixedMap)"),
    ("RandomState", "randomly seeded hashing"),
    ("rand::", "randomness"),
    ("rand_chacha", "randomness"),
    ("prng", "randomness (the seeded generator is for tests and simulators)"),
];

/// The replication and coordination protocol's decisions, which the simulator runs on its own
/// clock and network: no clock, thread, socket or file of their own (time comes in as
/// arguments; I/O stays in the shells around them).
const PROTOCOL_PURE: &[&str] = &[
    "replicator/src/session.rs",
    "replicator/src/following.rs",
    "replicator/src/position.rs",
    "replicator/src/policy.rs",
    "replicator/src/coordination/pilot.rs",
];

/// What [`PROTOCOL_PURE`] must not use, with why.
const PROTOCOL_FORBIDDEN: &[(&str, &str)] = &[
    ("Instant", "clocks"),
    ("SystemTime", "clocks"),
    ("thread::", "threads"),
    ("std::net", "sockets"),
    ("TcpStream", "sockets"),
    ("std::fs", "files"),
    ("File::", "files"),
];

/// Modules held to an assertion density, and the minimum average per function.
const DENSITY_MIN: &[(&str, f64)] = &[("core/src/engine", 1.5), ("journal/src", 1.5)];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("core sits in the workspace").into()
}

/// The `.rs` files under `dir`, without test-only files, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("source directory readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|name| name != "tests.rs")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a source file: comments removed, `#[cfg(test)]` modules removed.
fn code(text: &str) -> String {
    let without_comments: Vec<&str> = text
        .lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal is rare enough in this code base to ignore.
            Some(at) => &line[..at],
            None => line,
        })
        .collect();
    let text = without_comments.join("\n");
    let mut kept = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find(['{', ';']) else { break };
        if after.as_bytes()[open] == b';' || !after[..open].contains("mod ") {
            // `#[cfg(test)] mod tests;` or a test-only item that is not a module: drop it.
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (index, byte) in after.bytes().enumerate().skip(open) {
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    kept.push_str(rest);
    kept
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Occurrences of `word` not preceded by an identifier character (so `assert!` does not count
/// inside `debug_assert!`), and followed by what `next` accepts.
fn count_word(code: &str, word: &str, next: impl Fn(Option<u8>) -> bool) -> usize {
    let bytes = code.as_bytes();
    code.match_indices(word)
        .filter(|&(at, _)| {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            !before.is_some_and(is_ident) && next(bytes.get(at + word.len()).copied())
        })
        .count()
}

#[derive(Default)]
struct Density {
    functions: usize,
    assertions: usize,
}

fn density(code: &str) -> Density {
    // `fn name`, not the `fn(u8)` of a function pointer type.
    let functions =
        count_word(code, "fn ", |b| b.is_some_and(|b| b.is_ascii_alphabetic() || b == b'_'));
    let assertions = ["assert!", "assert_eq!", "assert_ne!"]
        .iter()
        .map(|name| {
            count_word(code, name, |_| true) + count_word(code, &format!("debug_{name}"), |_| true)
        })
        .sum();
    Density { functions, assertions }
}

#[test]
fn the_engine_uses_no_threads_clocks_files_sockets_or_seeded_maps() {
    // Goal: the business-logic processor stays pure, so replay, the standby and the simulator
    // reach the same state from the same commands.
    let root = workspace();
    let mut found = Vec::new();
    for file in sources(&root.join("core/src/engine")) {
        let code = code(&fs::read_to_string(&file).expect("source readable"));
        for (name, why) in ENGINE_FORBIDDEN {
            if code.contains(name) {
                found.push(format!("{}: uses `{name}` ({why})", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "the engine must stay pure:\n{}", found.join("\n"));
}

#[test]
fn the_protocol_decisions_read_no_clock_and_touch_no_thread_socket_or_file() {
    // Goal: what the simulator checks is what runs: the protocol's state machines take time
    // as an argument and leave I/O to their shells, so no decision depends on a clock the
    // simulator does not drive.
    let root = workspace();
    let mut found = Vec::new();
    for file in PROTOCOL_PURE {
        let code = code(&fs::read_to_string(root.join(file)).expect("source readable"));
        assert!(code.contains("fn "), "{file} holds no code: moved?");
        for (name, why) in PROTOCOL_FORBIDDEN {
            if code.contains(name) {
                found.push(format!("{file}: uses `{name}` ({why})"));
            }
        }
    }
    assert!(found.is_empty(), "the protocol's decisions must stay pure:\n{}", found.join("\n"));
}

#[test]
fn the_forbidden_list_catches_what_it_names() {
    // Goal: the purity check bites: a line using a clock or a thread is seen, the same words
    // in a comment or a test module are not.
    let dirty = "use std::time::Instant;\nfn f() { std::thread::spawn(|| {}); }\n";
    let clean = "// std::time::Instant is not used\n#[cfg(test)]\nmod tests { use std::fs; }\n";
    let hits = |text: &str| {
        let code = code(text);
        ENGINE_FORBIDDEN.iter().filter(|(name, _)| code.contains(name)).count()
    };
    assert!(hits(dirty) >= 3);
    assert_eq!(hits(clean), 0);
    let protocol_hits = |text: &str| {
        let code = code(text);
        PROTOCOL_FORBIDDEN.iter().filter(|(name, _)| code.contains(name)).count()
    };
    assert_eq!(protocol_hits(dirty), 2, "Instant and thread::");
    assert_eq!(protocol_hits(clean), 0);
    let counted = density("fn a() { assert!(x); debug_assert_eq!(1, 1); }\nfn b(f: fn(u8)) {}");
    assert_eq!((counted.functions, counted.assertions), (2, 2));
}

#[test]
fn assertion_density_of_the_engine_and_the_journal() {
    // Goal: the code that changes durable state asserts its pre- and postconditions: engine and
    // journal average at least 1.5 assertions per function. Prints every file's figures.
    let root = workspace();
    let mut failures = Vec::new();
    for (module, minimum) in DENSITY_MIN {
        let mut per_file = BTreeMap::new();
        let mut total = Density::default();
        for file in sources(&root.join(module)) {
            let counted = density(&code(&fs::read_to_string(&file).expect("source readable")));
            total.functions += counted.functions;
            total.assertions += counted.assertions;
            let name = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
            per_file.insert(name, counted);
        }
        println!("{module}:");
        for (name, counted) in &per_file {
            println!(
                "  {name:<40} {:>4} fn {:>4} asserts {:>5.2}/fn",
                counted.functions,
                counted.assertions,
                counted.assertions as f64 / counted.functions.max(1) as f64
            );
        }
        let average = total.assertions as f64 / total.functions.max(1) as f64;
        println!(
            "  {:<40} {:>4} fn {:>4} asserts {average:>5.2}/fn (minimum {minimum})",
            "total", total.functions, total.assertions
        );
        if average < *minimum {
            failures.push(format!("{module}: {average:.2} assertions per function < {minimum}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
