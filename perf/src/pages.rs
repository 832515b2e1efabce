//! Memory for the benchmarks: large allocations kept warm, on 4 KiB or 2 MiB pages.
//!
//! The engine allocates its tables at start (a few hundred megabytes for a million orders) and
//! then touches them at random. Two effects would blur a benchmark that builds a fresh engine
//! per pass: page faults on first touch, and TLB misses on 4 KiB pages. This global allocator
//! serves every allocation of at least 2 MiB from its own `mmap` regions and keeps freed ones
//! in a small cache, so the next engine of the same workload reuses pages already faulted in,
//! as a node does (its engine writes every table at start). Each region keeps the page mode in
//! force when it was mapped: the system's default (no advice; what every benchmark gets unless
//! it asks), 4 KiB pages (`MADV_NOHUGEPAGE`) or transparent huge pages (`MADV_HUGEPAGE`), so one
//! run can measure the engine on both sizes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

const HUGE_PAGE: usize = 2 << 20;
/// Freed large regions kept for reuse.
const CACHED_MAX: usize = 64;

/// Pages for large regions mapped from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageMode {
    /// No advice: the system's transparent-huge-page setting decides.
    SystemDefault = 0,
    /// 4 KiB pages only (`MADV_NOHUGEPAGE`).
    Small = 1,
    /// Transparent huge pages where the kernel can provide them (`MADV_HUGEPAGE`).
    Huge = 2,
}

static PAGE_MODE: AtomicU8 = AtomicU8::new(PageMode::SystemDefault as u8);

/// A large region: (address, length, page mode as `u8`); address zero marks a free record.
type Region = (usize, usize, u8);

/// Large regions: those handed out and those freed and kept. Fixed arrays, so the allocator
/// never allocates for its own bookkeeping.
struct Regions {
    live: [Region; LIVE_MAX],
    cached: [Region; CACHED_MAX],
}

/// Large allocations alive at once that keep their page mode on record.
const LIVE_MAX: usize = 256;

static REGIONS: Mutex<Regions> =
    Mutex::new(Regions { live: [(0, 0, 0); LIVE_MAX], cached: [(0, 0, 0); CACHED_MAX] });

fn regions() -> MutexGuard<'static, Regions> {
    REGIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets the page mode of large regions mapped (or taken from the cache) from now on.
pub fn set_page_mode(mode: PageMode) {
    PAGE_MODE.store(mode as u8, Ordering::Relaxed);
}

/// Unmaps every cached region, so that the next engine starts on fresh pages.
pub fn release_cached() {
    let mut regions = regions();
    for entry in regions.cached.iter_mut().filter(|entry| entry.0 != 0) {
        // SAFETY: a region this allocator mapped and nobody uses any more.
        unsafe { libc::munmap(entry.0 as *mut libc::c_void, entry.1) };
        *entry = (0, 0, 0);
    }
}

/// The system allocator for small allocations; cached `mmap` regions for large ones.
pub struct WarmPages;

fn region_len(layout: Layout) -> Option<usize> {
    (layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE)
        .then(|| layout.size().next_multiple_of(HUGE_PAGE))
}

/// A large region of `len` bytes in the given page mode: a cached one or a new mapping.
fn take_region(len: usize, mode: u8) -> *mut u8 {
    let mut regions = regions();
    let cached = regions.cached.iter_mut().find(|e| e.0 != 0 && e.1 == len && e.2 == mode);
    let address = match cached {
        Some(entry) => std::mem::take(entry).0,
        None => map_region(len, mode) as usize,
    };
    if address != 0 {
        // A full record only loses the page mode: the region is then unmapped when freed.
        if let Some(entry) = regions.live.iter_mut().find(|entry| entry.0 == 0) {
            *entry = (address, len, mode);
        }
    }
    address as *mut u8
}

/// Takes a freed region off the live record and caches it, or unmaps it.
fn give_back(address: usize, len: usize) {
    let mut regions = regions();
    let live = regions.live.iter_mut().find(|entry| entry.0 == address);
    let recorded = live.map(std::mem::take);
    if let Some(mode) = recorded.map(|entry| entry.2)
        && let Some(entry) = regions.cached.iter_mut().find(|entry| entry.0 == 0)
    {
        *entry = (address, len, mode);
        return;
    }
    // SAFETY: the region was mapped by `map_region` with this length and is no longer used.
    unsafe { libc::munmap(address as *mut libc::c_void, len) };
}

/// Maps `len` bytes aligned to 2 MiB, advised onto huge pages, kept off them, or left alone.
fn map_region(len: usize, mode: u8) -> *mut u8 {
    // SAFETY: an anonymous private mapping; the extra 2 MiB is trimmed off below.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let end = start + len + HUGE_PAGE;
    // SAFETY: both trimmed ranges lie inside the mapping just made and outside the region kept.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        if end > aligned + len {
            libc::munmap((aligned + len) as *mut libc::c_void, end - aligned - len);
        }
        if mode == PageMode::Huge as u8 {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        } else if mode == PageMode::Small as u8 {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE);
        }
    }
    aligned as *mut u8
}

// SAFETY: small layouts go to `System` unchanged. Large ones get a region of at least their
// size, aligned to 2 MiB (at least their alignment), used by one allocation at a time: a region
// is either handed out or in the cache, never both, under the cache lock.
unsafe impl GlobalAlloc for WarmPages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(len) = region_len(layout) else {
            // SAFETY: forwarded unchanged.
            return unsafe { System.alloc(layout) };
        };
        take_region(len, PAGE_MODE.load(Ordering::Relaxed))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(len) = region_len(layout) else {
            // SAFETY: allocated by `System` with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        };
        give_back(ptr as usize, len);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align(new_size, layout.align())
            .expect("the caller guarantees a valid new size");
        if region_len(layout).is_none() && region_len(new_layout).is_none() {
            // SAFETY: both small: forwarded unchanged.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh allocation, a copy of the bytes both hold, then the old one freed.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
