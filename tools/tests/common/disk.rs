//! Small disks for the tests of a disk that fills or fails: a tmpfs mounted for one test.
//! Mounting needs root (CAP_SYS_ADMIN); where the machine forbids it, [`Mount::tmpfs`] says
//! why and [`cannot_mount`] fails the test, unless `RINGFENCE_SKIP_MOUNT` says the machine is
//! known not to mount (`.ci/run` sets it after trying), so that a skip is never silent.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::text;

/// A test that needs a tmpfs on a machine that cannot mount one (`why`): fails, or, where
/// `RINGFENCE_SKIP_MOUNT` is set, says that the test checks nothing and returns.
pub fn cannot_mount(why: &str) {
    assert!(
        std::env::var_os("RINGFENCE_SKIP_MOUNT").is_some(),
        "cannot mount a tmpfs ({why}): run as root (CAP_SYS_ADMIN), or set RINGFENCE_SKIP_MOUNT=1 \
         to skip the tests of a disk that fills or fails on this machine"
    );
    eprintln!("skipped (RINGFENCE_SKIP_MOUNT): this machine cannot mount a tmpfs: {why}");
}

/// A tmpfs mounted for one test, unmounted (lazily: a killed server may still hold files) on
/// drop.
pub struct Mount {
    pub point: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. `512k`) with extra `options` at `point`, or says why not.
    pub fn tmpfs(point: &Path, size: &str, options: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(point).unwrap();
        let options = format!("size={size}{options}");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(point)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!("mount failed: {}", text(&output.stderr).trim()));
        }
        Ok(Mount { point: point.to_owned() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
pub fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xA5_u8; 4096];
    let mut written = 0;
    while file.write_all(&block).is_ok() {
        written += block.len() as u64;
    }
    let _ = file.sync_all();
    written
}
