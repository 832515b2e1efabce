//! Memory for the engine's tables: each allocated once, when the engine is built, and asked
//! to be backed by transparent huge pages.
//!
//! The index tables are read at random over hundreds of megabytes: on 4 KiB pages nearly every
//! probe also misses the TLB, on 2 MiB pages few do. The kernel grants huge pages to a region
//! advised `MADV_HUGEPAGE` when `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or
//! `madvise`; under `never`, or where huge pages cannot be found, the table lives on small
//! pages and works the same. Advice changes no byte, so outcomes never depend on it.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes of a transparent huge page on x86-64 (and arm64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Whether tables allocated from now on ask for huge pages; on unless turned off.
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Turns the huge-page advice on (the default) or off for tables allocated from now on: a
/// benchmark measuring the engine on small pages turns it off.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, Ordering::Relaxed);
}

/// An empty vector with room for `capacity` entries, its allocation advised onto huge pages
/// where it spans whole ones. The caller writes it before use.
#[must_use]
pub fn table_vec<T>(capacity: usize) -> Vec<T> {
    let mut vec = Vec::with_capacity(capacity);
    if HUGE_PAGES.load(Ordering::Relaxed) {
        advise_huge_pages(vec.spare_capacity_mut());
    }
    vec
}

/// Asks for huge pages over the whole 2 MiB pages inside `region`; smaller regions are left
/// alone. Advice only: a kernel that refuses it (no transparent huge pages) is not an error.
fn advise_huge_pages<T>(region: &mut [MaybeUninit<T>]) {
    let start = region.as_mut_ptr() as usize;
    let end = start + size_of_val(region);
    let (first, last) = (start.next_multiple_of(HUGE_PAGE), end / HUGE_PAGE * HUGE_PAGE);
    if last <= first {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `first..last` lies inside the vector's own allocation, which outlives the call;
    // MADV_HUGEPAGE changes how the range is backed, never its contents.
    unsafe {
        libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE);
    }
}
