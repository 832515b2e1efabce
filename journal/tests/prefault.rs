//! The writer's map of a segment on a real file system: pages are faulted in ahead of the
//! records, a bounded distance, and not by readahead.

mod common;

use common::{config, generate};
use ringfence_core::{Engine, Epoch, Sequence, Timestamp};
use ringfence_journal::recovery::recover;
use ringfence_journal::workload::Workload;
use ringfence_journal::writer::{Durability, WriterOptions};

const PAGE: usize = 4096;

/// Whether each page of `bytes` is in the page cache (`mincore` reports the file's pages,
/// whichever mapping brought them in).
fn resident(bytes: &[u8]) -> Vec<bool> {
    assert_eq!(bytes.as_ptr() as usize % PAGE, 0, "a range that starts off a page");
    let mut vector = vec![0u8; bytes.len().div_ceil(PAGE)];
    // SAFETY: the range is a live, page-aligned mapping; `vector` has a byte per page.
    let rc = unsafe { libc::mincore(bytes.as_ptr() as *mut _, bytes.len(), vector.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vector.iter().map(|&flags| flags & 1 == 1).collect()
}

/// Whether `dir` is on tmpfs (`statfs`'s file system type), decided before anything is
/// written: a segment faulted in whole is the failure this test looks for, not a reason to
/// skip it.
fn on_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: `statfs` is plain data, valid all zero.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a `statfs` the call fills in.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut stat) };
    assert_eq!(rc, 0, "statfs {}: {}", dir.display(), std::io::Error::last_os_error());
    stat.f_type == libc::TMPFS_MAGIC
}

#[test]
fn the_writer_faults_pages_in_a_bounded_distance_ahead_of_its_records() {
    // Goal: after a batch the pages just past the last record are in memory, so the next
    // records take no page fault, and pages far ahead are not (no readahead zero-filling
    // megabytes of the segment at once on the appending thread). On a file system without
    // a page cache of its own (tmpfs preallocates every page) there is nothing to check.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prefault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if on_tmpfs(&dir) {
        eprintln!("{} is on tmpfs, which preallocates every page: nothing to check", dir.display());
        return;
    }
    // In the second segment, created by rotation: recovery reads all of the first one in
    // debug builds (an assertion that its tail is blank).
    let options = WriterOptions {
        segment_len: 6 << 20,
        durability: Durability::None,
        engine_config: config(),
    };
    let mut recovered = recover(&dir, options).unwrap();
    let mut workload = Workload::new(31, Sequence(1), Timestamp(1));
    let mut engine = Engine::new(config());
    let second = dir.join(loop {
        for command in generate(&mut workload, &mut engine, 1_000) {
            recovered.writer.append_command(Epoch(1), &command).unwrap();
            recovered.writer.end_batch().unwrap();
        }
        let mut segments: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".seg"))
            .collect();
        segments.sort();
        if segments.len() == 2 {
            break segments.pop().unwrap();
        }
        assert_eq!(segments.len(), 1, "{segments:?}");
    });
    // Past the first megabyte of the new segment, which the debug build reads on creation.
    for command in generate(&mut workload, &mut engine, 20_000) {
        recovered.writer.append_command(Epoch(1), &command).unwrap();
        recovered.writer.end_batch().unwrap();
    }
    let file = std::fs::File::open(second).unwrap();
    // SAFETY: read-only map of a file this test alone writes, through the writer it holds.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let resident = resident(&map);
    let last = map.iter().rposition(|&byte| byte != 0).expect("records were written");
    let next_page = last / PAGE + 1;
    assert!(last > 1 << 20, "records end before the second megabyte: {last}");
    assert!(resident[..next_page].iter().all(|&page| page), "a written page not in memory");
    let ahead = &resident[next_page..next_page + (64 << 10) / PAGE];
    assert!(ahead.iter().all(|&page| page), "the pages after the last record are not in");
    let far = next_page + (4 << 20) / PAGE;
    assert!(resident[far..].iter().all(|&page| !page), "pages faulted in megabytes ahead");
    drop(map);
    drop(recovered);
    std::fs::remove_dir_all(&dir).unwrap();
}
