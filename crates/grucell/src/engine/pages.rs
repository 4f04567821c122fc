//! Transparent huge pages for the large buffers the kernels stream.
//!
//! Every step of a 1024-unit layer reads the whole packed recurrent kernel (12 MiB). With 4 KiB
//! pages that is 3 072 pages per step, more than the CPU's second-level TLB holds, so the step
//! keeps walking page tables; with 2 MiB pages it is 6. Linux backs anonymous memory with huge
//! pages by default only where the program asks for them (`madvise(MADV_HUGEPAGE)`; THP mode
//! `madvise`, the default of Debian and Ubuntu), and Rust's allocator never asks. Measured on a
//! 2-core Zen 3 VM (six alternating runs each): the one-thread 16 × 1024 · 1024 × 3072 step product
//! went from 38–51 to 44–70 GFLOP/s (median per run; faster in five of six pairs), and
//! `grucell bench` at 2 threads from XL forward 50.9 to 45.6 ms, XL training 150 to 133 ms and
//! L forward 82.8 to 78.6 ms (medians over the runs).
//!
//! Only buffers of at least [`MIN_BYTES`] are advised, and only the 2 MiB-aligned part inside
//! them, so small buffers never grow to a huge page. Elsewhere than on Linux this does nothing.
//! Written here rather than taken from a crate: the mapping crates (`memmap2`, `region`) advise
//! whole mappings they own, not part of a `Vec`'s allocation.

/// Buffers from this size (bytes) are advised.
pub(crate) const MIN_BYTES: usize = 4 << 20;

/// Resizes `v` to `n` elements filled with `fill` (as `Vec::resize`); when that needs a new
/// allocation of at least [`MIN_BYTES`], asks for huge pages before the new memory is touched.
pub(crate) fn resize<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if n > v.capacity() && n.saturating_mul(size_of::<T>()) >= MIN_BYTES {
        v.reserve_exact(n - v.len());
        advise(v);
    }
    v.resize(n, fill);
}

/// Size and alignment of a huge page on x86-64 and aarch64 (4 KiB base pages).
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
fn advise<T>(v: &mut Vec<T>) {
    let start = v.as_mut_ptr() as usize;
    let end = start + v.capacity() * size_of::<T>();
    let lo = start.next_multiple_of(HUGE);
    let hi = end / HUGE * HUGE;
    if hi > lo {
        // SAFETY: [lo, hi) is page-aligned and lies inside `v`'s allocation (start ≤ lo < hi ≤
        // end), which this process owns for as long as `v` does. MADV_HUGEPAGE changes neither
        // contents nor protection, only how the kernel backs the range; its result is ignored
        // (EINVAL where the kernel has no transparent huge pages: the memory stays as it was).
        unsafe {
            libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise<T>(_v: &mut Vec<T>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_contents_and_fills() {
        let mut v = vec![1.5f32; 10];
        resize(&mut v, MIN_BYTES / 4 + 3, 0.0);
        assert_eq!(v.len(), MIN_BYTES / 4 + 3);
        assert!(v[..10].iter().all(|&x| x == 1.5));
        assert!(v[10..].iter().all(|&x| x == 0.0));
        resize(&mut v, 5, 2.0);
        assert_eq!(v, vec![1.5f32; 5]);
        resize(&mut v, 8, 2.0);
        assert_eq!(&v[5..], &[2.0; 3]);
    }

    /// The kernel records the advice as the `hg` flag of the mapping (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_advised() {
        fn flags_at(addr: usize) -> Option<String> {
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
            let mut inside = false;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ') {
                    if let Some((lo, hi)) = range.split_once('-') {
                        if let (Ok(lo), Ok(hi)) =
                            (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                        {
                            inside = lo <= addr && addr < hi;
                            continue;
                        }
                    }
                }
                if inside && line.starts_with("VmFlags:") {
                    return Some(line.to_string());
                }
            }
            None
        }
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists()
            || std::fs::metadata("/proc/self/smaps").is_err()
        {
            eprintln!("skipped: this kernel has no transparent huge pages or no /proc/self/smaps");
            return;
        }
        let mut v: Vec<f32> = Vec::new();
        resize(&mut v, 3 * MIN_BYTES / 4, 1.0);
        let start = v.as_ptr() as usize;
        let probe = start.next_multiple_of(HUGE) + 4096;
        assert!(probe < start + v.len() * 4);
        let flags = flags_at(probe).expect("mapping of the buffer in /proc/self/smaps");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // A small buffer is left alone.
        let mut small: Vec<f32> = Vec::new();
        resize(&mut small, 1000, 1.0);
        assert_eq!(small.len(), 1000);
    }
}
