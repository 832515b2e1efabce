//! A fault-injecting, in-memory [`Storage`] for crash tests.
//!
//! Every file has a *live* image (what the process wrote, as the page cache would hold it) and
//! a *durable* image (what reached the disk: only ranges passed to [`Segment::sync`]). After
//! the writer is dropped, [`FaultStorage::process_crash`] continues from the live images (a
//! killed process loses nothing it wrote to the map) and [`FaultStorage::power_loss`] continues
//! from the durable images, optionally keeping a random prefix of the unsynced bytes to model a
//! write-back cut off part way (a torn write).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rkyv::util::AlignedVec;

use crate::storage::{Segment, Storage};

type Image = AlignedVec<16>;

#[derive(Default)]
struct Disk {
    durable: BTreeMap<String, Image>,
    /// Live images of segments whose handles were dropped (or never opened since creation).
    live: BTreeMap<String, Image>,
}

/// In-memory storage with a live and a durable image per file. Clones share the same disk.
#[derive(Clone, Default)]
pub struct FaultStorage {
    disk: Arc<Mutex<Disk>>,
}

/// A segment held in memory; its live image returns to the disk when dropped.
pub struct FaultSegment {
    name: String,
    live: Image,
    disk: Arc<Mutex<Disk>>,
}

impl FaultStorage {
    /// An empty disk.
    #[must_use]
    pub fn new() -> FaultStorage {
        FaultStorage::default()
    }

    /// Storage after the process was killed: everything written to the maps survives. Call it
    /// after dropping every handle (the writer).
    #[must_use]
    pub fn process_crash(&self) -> FaultStorage {
        let disk = self.disk.lock().expect("fault disk lock");
        let files = disk.live.clone();
        FaultStorage::from_files(files)
    }

    /// Storage after a power loss: only synced bytes survive, plus, when `torn_seed` is given,
    /// a pseudo-random prefix of each file's unsynced bytes (a write-back cut off part way).
    #[must_use]
    pub fn power_loss(&self, torn_seed: Option<u64>) -> FaultStorage {
        let disk = self.disk.lock().expect("fault disk lock");
        let mut files = disk.durable.clone();
        let mut seed = torn_seed.unwrap_or(0);
        for (name, durable) in &mut files {
            let Some(live) = disk.live.get(name) else { continue };
            assert_eq!(live.len(), durable.len());
            let Some(first) = (0..live.len()).find(|&i| live[i] != durable[i]) else {
                continue;
            };
            if torn_seed.is_some() {
                let last = (0..live.len()).rev().find(|&i| live[i] != durable[i]).expect("differs");
                seed = splitmix(seed);
                let cut = first + (seed % (last - first + 2) as u64) as usize;
                durable.as_mut_slice()[first..cut].copy_from_slice(&live[first..cut]);
            }
        }
        FaultStorage::from_files(files)
    }

    /// Flips one byte of a file in both images (bit rot), for detection tests.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) {
        let mut disk = self.disk.lock().expect("fault disk lock");
        if let Some(image) = disk.live.get_mut(name) {
            image.as_mut_slice()[offset] ^= mask;
        }
        if let Some(image) = disk.durable.get_mut(name) {
            image.as_mut_slice()[offset] ^= mask;
        }
    }

    /// A copy of a file's live image.
    #[must_use]
    pub fn live_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.disk.lock().expect("fault disk lock");
        disk.live.get(name).map(|image| image.to_vec())
    }

    fn from_files(files: BTreeMap<String, Image>) -> FaultStorage {
        let disk = Disk { durable: files.clone(), live: files };
        FaultStorage { disk: Arc::new(Mutex::new(disk)) }
    }
}

impl Segment for FaultSegment {
    fn bytes(&self) -> &[u8] {
        &self.live
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.live
    }

    fn sync(&mut self, range: Range<usize>) -> io::Result<()> {
        assert!(range.end <= self.live.len());
        let mut disk = self.disk.lock().expect("fault disk lock");
        let durable = disk.durable.get_mut(&self.name).ok_or_else(|| gone(&self.name))?;
        durable.as_mut_slice()[range.clone()].copy_from_slice(&self.live[range]);
        Ok(())
    }
}

impl Drop for FaultSegment {
    fn drop(&mut self) {
        let Ok(mut disk) = self.disk.lock() else { return };
        if disk.durable.contains_key(&self.name) {
            disk.live.insert(self.name.clone(), std::mem::take(&mut self.live));
        }
    }
}

impl Storage for FaultStorage {
    type Segment = FaultSegment;

    fn list(&self) -> io::Result<Vec<String>> {
        let disk = self.disk.lock().expect("fault disk lock");
        Ok(disk.durable.keys().cloned().collect())
    }

    fn create(&mut self, name: &str, len: u64) -> io::Result<FaultSegment> {
        let mut disk = self.disk.lock().expect("fault disk lock");
        if disk.durable.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name.to_owned()));
        }
        let mut image = Image::new();
        image.resize(len as usize, 0);
        disk.durable.insert(name.to_owned(), image.clone());
        disk.live.remove(name);
        Ok(FaultSegment { name: name.to_owned(), live: image, disk: Arc::clone(&self.disk) })
    }

    fn open(&mut self, name: &str) -> io::Result<FaultSegment> {
        let mut disk = self.disk.lock().expect("fault disk lock");
        let live = match disk.live.remove(name) {
            Some(live) => live,
            None => disk.durable.get(name).ok_or_else(|| gone(name))?.clone(),
        };
        Ok(FaultSegment { name: name.to_owned(), live, disk: Arc::clone(&self.disk) })
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut disk = self.disk.lock().expect("fault disk lock");
        disk.live.remove(name);
        disk.durable.remove(name).map(|_| ()).ok_or_else(|| gone(name))
    }

    fn describe(&self, name: &str) -> String {
        format!("fault:{name}")
    }
}

fn gone(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no segment {name}"))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
