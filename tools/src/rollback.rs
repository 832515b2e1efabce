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

/// The directory, inside a data directory (one of the node's own entries there).
pub const ROLLBACK_DIR: &str = ringfence_journal::datadir::ROLLBACK_DIR;

/// A visitor of records, as `scan::read` and `salvage::salvage` take one.
pub type Visitor<'a> = &'a mut dyn FnMut(&Record) -> ControlFlow<()>;

/// Writes every record `fill` visits into a new file of `data_dir`'s [`ROLLBACK_DIR`], named
/// `{kind}-FIRST-LAST-at-MS.jsonl` after the first and last sequences written, and syncs it and
/// the directories that hold it before it returns. `fill` hands each record to the visitor it
/// is given, and fails with what it could not read. The file and how many records it holds;
/// `None`, with no file left, when `fill` visited none. On any failure no file is left
/// either: the caller must not drop records it could not keep. A [`ROLLBACK_DIR`] this call
/// created is removed again when it keeps no file.
///
/// Records kept already are not kept twice: when a file of the same kind and sequences holds
/// the very same lines (a standby that kept its tail, then failed to fetch the snapshot that
/// was to replace it, keeps the same tail at every start), that file is the one returned.
pub fn keep(
    data_dir: &Path,
    kind: &str,
    fill: impl FnOnce(Visitor<'_>) -> Result<(), String>,
) -> Result<Option<(PathBuf, u64)>, String> {
    let dir = data_dir.join(ROLLBACK_DIR);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let existed = dir.exists();
    remove_leftovers(&dir);
    let temp = dir.join(format!(".{kind}-at-{at_ms}.jsonl.tmp"));
    let written = write_lines(&temp, fill);
    let kept = match written {
        Ok(Some((first, last, count))) => {
            // A file this cannot read is not taken for a copy: the records are kept anew.
            // The run that kept it may have stopped before it synced its directories.
            match kept_already(&temp, &format!("{kind}-{first}-{last}-at-")) {
                Ok(Some(file)) => sync_dirs(&file)
                    .map(|()| Some((file, count)))
                    .map_err(|e| format!("keeping the records in {}: {e}", dir.display())),
                _ => {
                    let file = dir.join(format!("{kind}-{first}-{last}-at-{at_ms}.jsonl"));
                    publish(&temp, &file)
                        .map(|()| Some((file, count)))
                        .map_err(|e| format!("keeping the records in {}: {e}", dir.display()))
                }
            }
        }
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    // Renamed into place already, or the same as a file kept before, or nothing to keep, or it
    // failed part way: no temporary file stays, and never a partial one.
    let _ = std::fs::remove_file(&temp);
    if !existed && !matches!(kept, Ok(Some(_))) {
        // Made for a file that was not kept: empty, and gone again (`remove_dir` removes no
        // directory that holds a file).
        let _ = std::fs::remove_dir(&dir);
    }
    kept
}

/// Removes the temporary files of keeps cut short (the process was killed as it wrote): they
/// hold no record kept, and one process at a time holds a data directory, so none is in use.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".jsonl.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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

/// A published file of `temp`'s directory whose name starts with `prefix` and whose bytes are
/// `temp`'s.
fn kept_already(temp: &Path, prefix: &str) -> std::io::Result<Option<PathBuf>> {
    let dir = temp.parent().expect("a file in the rollback directory");
    let len = std::fs::metadata(temp)?.len();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix)
            && name.ends_with(".jsonl")
            && entry.metadata()?.len() == len
            && same_bytes(temp, &entry.path())?
        {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Whether two files of equal length hold the same bytes, read a block at a time.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut block_a, mut block_b) = (vec![0; 64 * 1024], vec![0; 64 * 1024]);
    loop {
        let read = a.read(&mut block_a)?;
        if read == 0 {
            return Ok(true);
        }
        b.read_exact(&mut block_b[..read])?;
        if block_a[..read] != block_b[..read] {
            return Ok(false);
        }
    }
}

/// Renames the synced `temp` to `file`, then syncs the directories that hold it.
fn publish(temp: &Path, file: &Path) -> std::io::Result<()> {
    std::fs::rename(temp, file)?;
    sync_dirs(file)
}

/// Syncs the rollback directory and the data directory that holds it, so `file` survives a
/// power loss once this returns.
fn sync_dirs(file: &Path) -> std::io::Result<()> {
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

    /// Ticks at `sequences` of `epoch`, as a journal hands them to a visitor.
    fn ticks(sequences: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<Record> {
        use ringfence_core::{Command, Epoch, Timestamp};
        let tick = |n| Record {
            sequence: Sequence(n),
            epoch: Epoch(epoch),
            timestamp: Timestamp(1_000 + n),
            command: Command::Tick,
            len: 0,
        };
        sequences.map(tick).collect()
    }

    /// Keeps `records` as `dropped` in `data_dir`: the file, and the records it holds.
    fn keep_all(data_dir: &Path, records: &[Record]) -> (PathBuf, u64) {
        let kept = keep(data_dir, "dropped", |visit| {
            for record in records {
                if visit(record).is_break() {
                    break;
                }
            }
            Ok(())
        });
        kept.unwrap().expect("records to keep")
    }

    #[test]
    fn the_same_records_are_kept_once() {
        // Goal: a tail kept again at a later start (its snapshot fetch failed, say) is the
        // file kept the first time, not a copy of it; the same sequences holding other
        // records, or other sequences, are kept in a file of their own. No temporary file
        // stays, nor one that a keep killed part way left.
        let data_dir =
            std::env::temp_dir().join(format!("ringfence-rollback-once-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        // What a keep killed part way leaves, which the next one clears.
        let dir = data_dir.join(ROLLBACK_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".dropped-at-1.jsonl.tmp"), b"{}\n").unwrap();
        let tail = ticks(5..=9, 3);
        let (first, count) = keep_all(&data_dir, &tail);
        assert_eq!(count, 5);
        // Kept in a later millisecond, as a restart would.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(keep_all(&data_dir, &tail), (first.clone(), 5), "kept again");
        let other_epoch = keep_all(&data_dir, &ticks(5..=9, 4)).0;
        let longer = keep_all(&data_dir, &ticks(5..=10, 3)).0;
        let files = std::fs::read_dir(data_dir.join(ROLLBACK_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect::<std::collections::BTreeSet<_>>();
        std::fs::remove_dir_all(&data_dir).unwrap();
        assert_ne!(other_epoch, first);
        assert_ne!(longer, first);
        assert_eq!(files, [first, other_epoch, longer].into_iter().collect());
    }
}
