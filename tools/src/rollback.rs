//! `rollback/` in a data directory: where records dropped from the journal are kept for the
//! operator, one `journal dump --json` line each (request keys included, to reconcile with
//! clients). A standby rejoining after a divergence keeps its dropped tail here
//! (`dropped-FROM-TO-at-MS.jsonl`), and `journal truncate` what it cuts off
//! (`truncated-FROM-TO-at-MS.jsonl`). Files stay until the operator deletes them.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ringfence_core::Sequence;
use ringfence_journal::scan::Record;

/// The directory, inside a data directory.
pub const ROLLBACK_DIR: &str = "rollback";

/// A visitor of records, as `scan::read` and `salvage::salvage` take one.
pub type Visitor<'a> = &'a mut dyn FnMut(&Record) -> ControlFlow<()>;

/// Writes every record `fill` visits into a new file of `data_dir`'s [`ROLLBACK_DIR`], named
/// `{kind}-FIRST-LAST-at-MS.jsonl` after the first and last sequences written, and syncs it and
/// the directories that hold it before it returns. `fill` hands each record to the visitor it
/// is given, and fails with what it could not read. The file and how many records it holds;
/// `None`, with no file left, when `fill` visited none. On any failure no file is left
/// either: the caller must not drop records it could not keep.
pub fn keep(
    data_dir: &Path,
    kind: &str,
    fill: impl FnOnce(Visitor<'_>) -> Result<(), String>,
) -> Result<Option<(PathBuf, u64)>, String> {
    let dir = data_dir.join(ROLLBACK_DIR);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let temp = dir.join(format!(".{kind}-at-{at_ms}.jsonl.tmp"));
    let written = write_lines(&temp, fill);
    let kept = match written {
        Ok(Some((first, last, count))) => {
            let file = dir.join(format!("{kind}-{first}-{last}-at-{at_ms}.jsonl"));
            publish(&temp, &file)
                .map(|()| Some((file, count)))
                .map_err(|e| format!("keeping the records in {}: {e}", dir.display()))
        }
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    if !matches!(kept, Ok(Some(_))) {
        // Nothing to keep, or it failed part way: no file, not a partial one.
        let _ = std::fs::remove_file(&temp);
    }
    kept
}

/// The files of `data_dir`'s [`ROLLBACK_DIR`] that hold records, by name: those a rejoin or a
/// truncation kept and the operator has not deleted yet (none if the directory is missing).
pub fn pending(data_dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(data_dir.join(ROLLBACK_DIR)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // A temporary file is one a failed or interrupted keep left: it holds no record kept.
        if name.ends_with(".jsonl") && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Writes the lines to `temp` and syncs it: the first and last sequences and the count, or
/// `None` if there was no record.
fn write_lines(
    temp: &Path,
    fill: impl FnOnce(Visitor<'_>) -> Result<(), String>,
) -> Result<Option<(Sequence, Sequence, u64)>, String> {
    let dir = temp.parent().expect("a file in the rollback directory");
    let io = |e: std::io::Error| format!("writing {}: {e}", temp.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(temp).map_err(io)?);
    let (mut span, mut count, mut failed) = (None, 0, None);
    let mut line = |record: &Record| -> std::io::Result<()> {
        serde_json::to_writer(&mut out, &crate::journal_cmd::DumpLine::of(record))?;
        out.write_all(b"\n")
    };
    fill(&mut |record| match line(record) {
        Ok(()) => {
            count += 1;
            let first = span.map_or(record.sequence, |(first, _)| first);
            span = Some((first, record.sequence));
            ControlFlow::Continue(())
        }
        Err(error) => {
            failed = Some(error);
            ControlFlow::Break(())
        }
    })?;
    if let Some(error) = failed {
        return Err(io(error));
    }
    let Some((first, last)) = span else { return Ok(None) };
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    Ok(Some((first, last, count)))
}

/// Renames the synced `temp` to `file`, then syncs the rollback directory and the data
/// directory that holds it, so the file survives a power loss once this returns.
fn publish(temp: &Path, file: &Path) -> std::io::Result<()> {
    std::fs::rename(temp, file)?;
    let dir = file.parent().expect("a file in the rollback directory");
    ringfence_journal::storage::sync_dir(dir)?;
    ringfence_journal::storage::sync_dir(dir.parent().expect("in the data directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_lists_the_kept_files_only() {
        // Goal: a data directory without `rollback/` has nothing pending; in one, the kept
        // files are listed in order, not the temporary file of a keep cut short nor a stray.
        let data_dir =
            std::env::temp_dir().join(format!("ringfence-rollback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        assert_eq!(pending(&data_dir).unwrap(), Vec::<String>::new());
        let dir = data_dir.join(ROLLBACK_DIR);
        std::fs::create_dir(&dir).unwrap();
        for name in ["truncated-9-12-at-7.jsonl", ".dropped-at-8.jsonl.tmp", "notes.txt"] {
            std::fs::write(dir.join(name), b"{}\n").unwrap();
        }
        std::fs::write(dir.join("dropped-3-4-at-5.jsonl"), b"{}\n").unwrap();
        let listed = pending(&data_dir).unwrap();
        std::fs::remove_dir_all(&data_dir).unwrap();
        assert_eq!(listed, ["dropped-3-4-at-5.jsonl", "truncated-9-12-at-7.jsonl"]);
    }
}
