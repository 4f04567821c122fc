//! The input projection `XP = X · W + b` of all time steps from a `W` packed once (inference),
//! in small row blocks, instead of the GEMM crate.
//!
//! A general GEMM packs `W` on every call, and with a row split between threads, every thread
//! packs all of it: for XL's projection (400 × 1024 · 1024 × 3072) that is a 12 MiB copy per
//! thread for only 200 rows each. Here `W` was packed into column panels once (by
//! [`super::prepacked::PackedWeights`]); each thread packs its blocks of `X` rows (at most
//! `BLOCK_ROWS` each) into register-tile order (`packed::Lhs`) and runs the panel kernels over every
//! panel: three full panels at a time (one broadcast of `X` feeds 24 accumulators), in k-blocks
//! of `GROUP_KC`, each panel's bias added by the kernel as it stores the last block. A block's
//! packed rows for one k-block (at most 128 × 128 floats, 64 KiB) are read by every group of
//! panels, so they stay close (L1/L2) while `W` streams from L2/L3 once per block, each group's
//! next k-block requested ahead.
//!
//! Measured on an AVX-512 Xeon (2 cores, 2 MiB L2 each), 2 threads, f32, calls alternated in one
//! process. Session 12 (panel pairs, bias added in a second pass): 400 × 1024 · 1024 × 3072
//! 281–292 GFLOP/s against 231–236 for faer on row halves (best of 40, a quiet moment), medians
//! 247–252 against 232–233 in another; XL forward −4 to −5 %. Session 13 (three panels, bias in
//! the kernel, `X` packed by an in-register transpose), best/median of 60: 275/256–262 against
//! 263–269/247–255 for pairs and 233/214 for faer; 400 × 512 · 512 × 1536: 284–285/274–275
//! against 281/267–270 (pairs), 239/230 (faer). The bias pass alone had cost 5–8 %. With more rows
//! faer stays as fast or faster (3200 × 512 · 512 × 1536: 257/248 against 285/274; L forward
//! +2 % with this), because its copy of `W` then serves many rows while each row block here
//! reads all of `W` again; so the engine uses this only for calls of up to [`MAX_ROWS`] rows
//! ([`preferred`]). On that machine's slow spells (the host busy, everything up to ~40 % slower)
//! all of these move by more than the differences between them.
//!
//! ```
//! use grucell::engine::gemm::Operand;
//! use grucell::engine::packed::PackedRhs;
//! use grucell::engine::projection::project;
//!
//! // W: 2 × 6 (2 inputs, three gate segments of 2 units), X: 3 rows.
//! let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
//! let mut packed = PackedRhs::new();
//! packed.pack(Operand::new(&w, 6), 2, 2, 3);
//! let x = [1.0f32, 2.0, 0.0, 1.0, 2.0, 0.0];
//! let bias = [0.0f32, 0.0, 0.0, 0.0, 0.0, 1.0];
//! let mut xp = [0.0f32; 18];
//! project(&packed, 3, &x, 2, &mut xp, 6, Some(&bias), &mut Vec::new(), 1);
//! assert_eq!(&xp[..6], &[2.0, 3.0, 4.0, 5.0, 6.0, 8.0]);
//! assert_eq!(&xp[12..], &[2.0, 4.0, 6.0, 8.0, 10.0, 13.0]);
//! ```

use super::packed::{run_panel, run_panel_group, Lhs, PackedRhs, Rhs, NR};
use super::workspace::grow;
use crate::float::Float;
use rayon::prelude::*;
use std::ops::Range;

/// Most rows of a call for which [`preferred`] chooses [`project`] (see the module docs).
pub const MAX_ROWS: usize = 512;

/// Most rows of `X` per block (see the module docs). Measured on the Xeon of the module docs,
/// best of 30: one thread, 400 × 1024 · 1024 × 3072 and 400 × 512 · 512 × 1536 133–142 GFLOP/s
/// with 128 or 64 rows against 125–137 with the blocks of up to 1 MiB (256 rows here) used
/// before, whose packed rows streamed from L2 for every group of panels (3200 × 512 · 512 ×
/// 1536: 64 rows 133–136, 128 rows 125–126, 256 rows 110–112); two threads in a slow spell of
/// the host, 64 rows lost 5–8 % (`W` read again for every block) while 128 held.
const BLOCK_ROWS: usize = 128;

/// Depth (`k`) of the k-blocks of three panels at once: their 128 × 48 floats (24 KiB) and a row
/// tile's 16 rows of packed `X` (8 KiB) stay in L1 together (256: 2–5 % slower). Also the
/// k-blocks of wide inputs projected inside fused steps (`team::StepInputs::Raw`).
pub(crate) const GROUP_KC: usize = 128;

/// Whether the engine projects wide inputs with [`project`] at all: `f32` on CPUs with the
/// AVX-512 or the AVX2 + FMA kernels. ([`project`] computes the same product on any CPU;
/// elsewhere the GEMM crate was not measured against it.) [`super::prepacked::PackedWeights`]
/// packs wide `W` only here.
///
/// AVX2 (session 17, the AVX-512 Xeon of the module docs with AVX-512 hidden from every
/// library, `tools/hide_avx512.c`; 2 threads, forward medians in one process, against the
/// GEMM crate): (64, 50, 512, 512) −4.5 %, (128, 25, 512, 512) −5 %, (64, 50, 512, 1024) −1 %,
/// (64, 50, 1024, 512) −1 % — the wide inputs projected inside the fused steps
/// (`gru::projects_in_step`); XL (400 rows through [`project`]) ±1 %.
pub fn available<T: Float>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::mem::size_of::<T>() == 4 && super::isa::active() >= super::isa::Isa::Avx2Fma
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a call projecting `rows` rows (all time steps of all batch rows) reads a pre-packed
/// wide `W` with [`project`] rather than the GEMM crate: where [`available`], up to [`MAX_ROWS`]
/// rows. The thread count plays no part, so that results do not depend on it.
pub fn preferred<T: Float>(rows: usize) -> bool {
    available::<T>() && rows <= MAX_ROWS
}

/// `C[r, j] = Σ_k A[r, k] · B[k, j] (+ bias[j])` for the `m` rows of `A` (row stride `lda`, `k`
/// = the packing's depth) and every column of `b` (all its segments, at their own column index
/// in `C`, row stride `ldc`). Rows are split evenly into blocks (at most `BLOCK_ROWS` each, as
/// many per thread), packed into `scratch`; the blocks run on at most `threads` rayon threads.
///
/// Each element is summed block by block in `k` — k-blocks of `GROUP_KC` (128) for full panels
/// on AVX-512 (`f32`), of the panel kernels' own depth for a last, partial panel and on other
/// CPUs (256, or 128 for a depth over 256) — whatever the thread count; the bias is added last,
/// as `add_bias_rows` adds it.
///
/// Kernel code: slices shorter than the dimensions say panic on indexing.
#[allow(clippy::too_many_arguments)]
pub fn project<T: Float>(
    b: &PackedRhs<T>,
    m: usize,
    a: &[T],
    lda: usize,
    c: &mut [T],
    ldc: usize,
    bias: Option<&[T]>,
    scratch: &mut Vec<T>,
    threads: usize,
) {
    let (k, cols) = (b.depth(), b.columns());
    if m == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: the bias alone.
        for row in c.chunks_mut(ldc).take(m) {
            for (j, v) in row[..cols].iter_mut().enumerate() {
                *v = bias.map_or(T::zero(), |bias| bias[j]);
            }
        }
        return;
    }
    let threads = threads.max(1);
    let blocks = threads * m.div_ceil(threads * BLOCK_ROWS);
    let rows = m.div_ceil(blocks);
    grow(scratch, m * k);
    let c = &mut c[..(m - 1) * ldc + cols];
    let job = |(i, (cb, at)): (usize, (&mut [T], &mut [T]))| {
        let r0 = i * rows;
        let m = rows.min(m - r0);
        let kr = 0..k;
        let lhs = Lhs::with_packed(&a[r0 * lda..], lda, m, &kr, at);
        panels(b, m, lhs, &kr, cb, ldc, bias);
    };
    let scratch = &mut scratch[..m * k];
    if threads > 1 && m > rows {
        c.par_chunks_mut(rows * ldc)
            .zip(scratch.par_chunks_mut(rows * k))
            .enumerate()
            .for_each(job);
    } else {
        c.chunks_mut(rows * ldc)
            .zip(scratch.chunks_mut(rows * k))
            .enumerate()
            .for_each(job);
    }
}

/// Every panel of `b` for the `m` rows of `lhs` (packed): up to three full panels together,
/// each panel's columns of the bias added as it is stored or right after it.
fn panels<T: Float>(
    b: &PackedRhs<T>,
    m: usize,
    lhs: Lhs<'_, T>,
    kr: &Range<usize>,
    c: &mut [T],
    ldc: usize,
    bias: Option<&[T]>,
) {
    let rhs = &Rhs::Packed(b);
    let pps = rhs.panels_per_segment();
    let n = pps * b.segments();
    let mut i = 0;
    while i < n {
        // Up to three full panels at once, their bias added by the kernel.
        let full = (i..n.min(i + 3))
            .take_while(|&j| rhs.panel(j / pps, j % pps).1 == NR)
            .count();
        let done = match full {
            3 => group::<T, 3>(rhs, i, n, m, lhs, kr, c, ldc, bias),
            2 => group::<T, 2>(rhs, i, n, m, lhs, kr, c, ldc, bias),
            1 => group::<T, 1>(rhs, i, n, m, lhs, kr, c, ldc, bias),
            _ => false,
        };
        if done {
            i += full;
            continue;
        }
        let (c0, w, b0, ldb) = rhs.panel(i / pps, i % pps);
        let bias = bias.map(|b| &b[c0..c0 + w]);
        run_panel(m, lhs, kr, b0, ldb, w, &mut c[c0..], ldc, false, None, bias);
        i += 1;
    }
}

/// Full panels `i..i + P` of the `n` with the AVX-512 group kernel, if it runs here.
#[allow(clippy::too_many_arguments)]
fn group<T: Float, const P: usize>(
    rhs: &Rhs<'_, T>,
    i: usize,
    n: usize,
    m: usize,
    lhs: Lhs<'_, T>,
    kr: &Range<usize>,
    c: &mut [T],
    ldc: usize,
    bias: Option<&[T]>,
) -> bool {
    let pps = rhs.panels_per_segment();
    let panel = |j: usize| rhs.panel(j / pps, j % pps);
    let ps: [(usize, usize, &[T], usize); P] = std::array::from_fn(|j| panel(i + j));
    let next: [&[T]; P] = std::array::from_fn(|j| {
        let q = i + P + j;
        if q < n {
            panel(q).2
        } else {
            &[]
        }
    });
    let bias = bias.map(|b| std::array::from_fn(|j| &b[ps[j].0..ps[j].0 + NR]));
    run_panel_group::<T, P>(
        m,
        lhs,
        kr,
        GROUP_KC,
        std::array::from_fn(|j| ps[j].2),
        c,
        std::array::from_fn(|j| ps[j].0),
        ldc,
        false,
        bias,
        next,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gemm::Operand;

    fn data(n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64) * s).sin()).collect()
    }

    /// Against an `f64` reference on ragged shapes (segments not a multiple of 16 units, so
    /// partial panels beside groups; rows not a multiple of 16; `k` over several k-blocks; wide
    /// `ldc`), with and without bias, on 1–3 threads; and `f64` itself.
    #[test]
    fn matches_reference() {
        for &(m, k, u, threads) in &[
            (4, 0, 5, 2),
            (1, 3, 2, 1),
            (5, 40, 16, 2),
            (37, 300, 21, 2),
            (70, 520, 40, 3),
            (150, 520, 200, 2),
            (600, 24, 33, 2),
        ] {
            let g = 3 * u;
            let ldc = g + 5;
            let (a64, w64, b64) = (data(m * k, 0.37), data(k * g, 0.11), data(g, 0.9));
            let mut want = vec![0f64; m * g];
            for r in 0..m {
                for j in 0..g {
                    want[r * g + j] =
                        (0..k).map(|i| a64[r * k + i] * w64[i * g + j]).sum::<f64>() + b64[j];
                }
            }
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (a, w, bias) = (f32s(&a64), f32s(&w64), f32s(&b64));
            let mut pk = PackedRhs::new();
            pk.pack(Operand::new(&w, g), k, u, 3);
            for with_bias in [false, true] {
                let mut c = vec![7f32; m * ldc];
                let bias = with_bias.then_some(&bias[..]);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map(|pool| {
                        pool.install(|| {
                            project(&pk, m, &a, k, &mut c, ldc, bias, &mut Vec::new(), threads)
                        })
                    })
                    .ok();
                for r in 0..m {
                    for j in 0..g {
                        let want = want[r * g + j] - if with_bias { 0.0 } else { b64[j] };
                        let got = c[r * ldc + j] as f64;
                        assert!(
                            (got - want).abs()
                                <= 1e-4 * (1.0 + want.abs()) * (k as f64).sqrt().max(1.0),
                            "{m}×{k}·{k}×{g} ({r}, {j}): {got} vs {want}"
                        );
                    }
                    assert!(c[r * ldc + g..(r + 1) * ldc].iter().all(|&v| v == 7.0));
                }
            }
            // f64 runs the same driver with the generic kernels.
            let mut pk64 = PackedRhs::new();
            pk64.pack(Operand::new(&w64, g), k, u, 3);
            let mut c = vec![0f64; m * g];
            project(&pk64, m, &a64, k, &mut c, g, Some(&b64), &mut Vec::new(), 1);
            for (got, want) in c.iter().zip(&want) {
                assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()) * k as f64);
            }
        }
    }

    /// The split between threads changes nothing: every element is summed in the same order.
    #[test]
    fn thread_count_does_not_change_bits() {
        let (m, k, u) = (300, 130, 48);
        let g = 3 * u;
        let a: Vec<f32> = data(m * k, 0.3).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = data(k * g, 0.7).iter().map(|&v| v as f32).collect();
        let mut pk = PackedRhs::new();
        pk.pack(Operand::new(&w, g), k, u, 3);
        let run = |threads: usize| {
            let mut c = vec![0f32; m * g];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| e.to_string());
            match pool {
                Ok(pool) => pool
                    .install(|| project(&pk, m, &a, k, &mut c, g, None, &mut Vec::new(), threads)),
                Err(e) => panic!("thread pool: {e}"),
            }
            c
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
