//! Records what the benchmarks were built from — the source's commit and the compiler — for
//! the report's machine block, so that a published report names the build behind it.

use std::process::Command;

fn main() {
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program).args(args).output().ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = run("git", &["rev-parse", "--short=7", "HEAD"]);
    // Changes to tracked files not yet committed: the commit alone does not name the source.
    let changed = run("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    let source = match commit {
        Some(commit) if changed => format!("commit {commit} with uncommitted changes"),
        Some(commit) => format!("commit {commit}"),
        None => "no git checkout".to_owned(),
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let compiler = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown compiler".to_owned());
    println!("cargo:rustc-env=RINGFENCE_PERF_SOURCE={source}");
    println!("cargo:rustc-env=RINGFENCE_PERF_RUSTC={compiler}");
    // Built again when the checkout moves to another commit, its index changes, or a source
    // file of the workspace changes (a directory is scanned for any change).
    if let Some(git_dir) = run("git", &["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
    }
    for member in ["core", "journal", "ingress", "replicator", "perf", "tools"] {
        println!("cargo:rerun-if-changed=../{member}/src");
        println!("cargo:rerun-if-changed=../{member}/Cargo.toml");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
