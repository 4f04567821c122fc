//! The one place that calls the GEMM crate ([`faer`]). Everything else goes through [`gemm`].
//!
//! Used for the large products (the input projection of all steps for inputs wider than 256
//! features, and in training `dW`, `dU`, `dX`) and for short sequences. faer was chosen after measuring faer, `gemm`, `matrixmultiply`
//! and OpenBLAS on the GRU shapes (`docs/gemm-choice.md`, `tools/gemm_compare`): on the large
//! products all four are within noise on one thread and faer is best or within ~17 % on two,
//! pure Rust, with runtime AVX2/AVX-512 dispatch. The per-step recurrent products of long
//! sequences use the crate's own packed kernels instead (`engine::packed`).

use super::workspace::grow;
use crate::float::Float;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A borrowed row-major matrix operand: `rows × cols` elements with row stride `ld`, optionally
/// read transposed.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a, T> {
    /// The storage.
    pub data: &'a [T],
    /// Row stride of the *stored* matrix.
    pub ld: usize,
    /// When true the stored matrix is the transpose of the operand.
    pub transposed: bool,
}

impl<'a, T> Operand<'a, T> {
    /// A plain row-major operand.
    pub fn new(data: &'a [T], ld: usize) -> Self {
        Operand {
            data,
            ld,
            transposed: false,
        }
    }

    /// The same storage, read transposed.
    pub fn t(self) -> Self {
        Operand {
            transposed: !self.transposed,
            ..self
        }
    }

    /// The operand without its first `r` rows (as read: columns of the stored matrix when
    /// transposed).
    pub(crate) fn skip_rows(self, r: usize) -> Self {
        let o = if self.transposed { r } else { r * self.ld };
        Operand {
            data: self.data.get(o..).unwrap_or(&[]),
            ..self
        }
    }
}

/// `C (m × n, row stride ldc) = alpha · A (m × k) · B (k × n) [+ C if accumulate]`.
///
/// `threads` is the most threads faer may use (1 = sequential, on the calling thread); products
/// of fewer than 2²⁰ multiply-adds always run on the calling thread. Shapes are the caller's
/// invariant (checked with `debug_assert!`): this is kernel code, fed only by validated layers.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
    threads: usize,
) {
    gemm_with(
        m,
        n,
        k,
        alpha,
        a,
        b,
        accumulate,
        c,
        ldc,
        threads,
        &mut Vec::new(),
    );
}

/// [`gemm`], with the buffer that a large transposed left operand is copied into (see
/// [`transposes`]) supplied by the caller: kept between calls, it costs no fresh pages (in L
/// training, three 6.5 MB copies per call had cost ~3 % of its time in page faults and clearing).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
    threads: usize,
    scratch: &mut Vec<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(T::zero());
            }
        }
        return;
    }
    // A small product runs on the calling thread: faer's parallel split wakes rayon workers,
    // which cost more than the product (one training step of batch 1, 256 units: its weight
    // gradients and `dx` are 1-deep or 1-row products, 20–40 µs of a ~80 µs step went to
    // waking and yielding threads).
    let threads = if m.saturating_mul(n).saturating_mul(k) < SEQ_MAX_WORK {
        1
    } else {
        threads
    };
    if a.transposed && transposes(m, n) {
        for_transposed_chunks(a.data, k, m, a.ld, scratch, threads, |at, kr| {
            gemm_with(
                m,
                n,
                kr.len(),
                alpha,
                at,
                b.skip_rows(kr.start),
                accumulate || kr.start > 0,
                c,
                ldc,
                threads,
                &mut Vec::new(),
            );
        });
        return;
    }
    if let Some(rows) = row_blocks(m, threads).filter(|_| !a.transposed) {
        // One sequential GEMM per block of rows of `C`, the blocks on rayon's threads.
        c[..span(m, n, ldc)]
            .par_chunks_mut(rows * ldc)
            .enumerate()
            .for_each(|(i, cb)| {
                let r0 = i * rows;
                T::gemm_raw(
                    rows.min(m - r0),
                    n,
                    k,
                    alpha,
                    &a.data[r0 * a.ld..],
                    a.ld,
                    false,
                    b.data,
                    b.ld,
                    b.transposed,
                    accumulate,
                    cb,
                    ldc,
                    1,
                );
            });
        return;
    }
    T::gemm_raw(
        m,
        n,
        k,
        alpha,
        a.data,
        a.ld,
        a.transposed,
        b.data,
        b.ld,
        b.transposed,
        accumulate,
        c,
        ldc,
        threads,
    );
}

/// Rows per block when a product is split by rows of `C` between `threads` threads, each block a
/// sequential faer call, instead of faer's own parallel split (`None`: faer's).
///
/// Measured on an AVX-512 Xeon (2 cores, 2 MiB L2 each), 2 threads, f32: faer's own split ran
/// 400 × 1024 · 1024 × 3072 (XL's projection) at 221–229 GFLOP/s, two row halves at 252–254
/// (one core alone: 141–145); 3200 × 512 · 512 × 1536 at 269–275 against 288–291; in the GRU,
/// calls alternated in one process: XL forward +4–5 %, L forward +2–3 %, XL and L training
/// +2–4 %. On the AVX2 EPYC development VM (512 KiB L2) hand-made halves were slower than faer's
/// split (session 10), so this is limited to AVX-512 machines.
fn row_blocks(m: usize, threads: usize) -> Option<usize> {
    if threads < 2 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::active() == super::isa::Isa::Avx512 && m >= ROW_SPLIT_MIN_ROWS * threads {
        return Some(m.div_ceil(threads).div_ceil(16) * 16);
    }
    let _ = m;
    None
}

/// Work (multiply-adds) below which [`gemm`] runs on the calling thread whatever `threads` says
/// (the threshold of the crate's own panel products, `packed::PAR_MIN_WORK`).
const SEQ_MAX_WORK: usize = super::packed::PAR_MIN_WORK;

/// Fewest rows per thread for [`row_blocks`].
const ROW_SPLIT_MIN_ROWS: usize = 64;

/// Left operands read transposed from this many rows (and columns of `C`) are copied into
/// row-major form before the GEMM (see [`transposes`]).
const TRANSPOSE_MIN_M: usize = 512;

/// Whether [`gemm`] copies a transposed left operand of a product with `m` rows and `n` columns
/// into row-major form first. faer is markedly slower with a transposed left operand of this
/// size (the weight gradients `Xᵀ·dG`, `H_prevᵀ·dG`): measured on the dev VM, 2 threads, f32,
/// medians, the copy included: 512×3200·3200×1536 ~100 → ~133 GFLOP/s, 1024×400·400×3072 ~95 →
/// ~130, 512×3200·3200×1024 ~95 → ~105; at m = 64 or 256 it gained nothing.
pub fn transposes(m: usize, n: usize) -> bool {
    m >= TRANSPOSE_MIN_M && n >= TRANSPOSE_MIN_M
}

/// The transpose of `src` (`rows × cols`, row stride `ld`) written into `scratch` (grown as
/// needed) and returned (`cols × rows`, row-major): the copy [`gemm_with`] reads for a large
/// transposed left operand, also made by callers that share one copy between several products.
pub(crate) fn transposed_copy<'s, T: Float>(
    src: &[T],
    rows: usize,
    cols: usize,
    ld: usize,
    scratch: &'s mut Vec<T>,
    threads: usize,
) -> &'s [T] {
    grow(scratch, rows * cols);
    let dst = &mut scratch[..rows * cols];
    transpose_into(src, rows, cols, ld, dst, threads);
    dst
}

/// Rows of `k` per chunk of [`for_transposed_chunks`]: the copy of a transposed left operand is
/// at most this many of its rows (512 × `m` values), not all of them (`B·T × max(D, u)` for a
/// weight gradient), so training's scratch does not grow with the sequence. Measured on the
/// AVX-512 Xeon (2 threads, `grucell bench`-like L and XL training in one process, chunks
/// alternated call by call): 512 and 1024 rows as fast as one copy of all 3200 (medians within
/// 1 %), 256 rows 2 % slower.
const TRANSPOSE_CHUNK_ROWS: usize = 512;

/// Calls `f` with the transpose of each chunk of rows `kr` of `src` (`rows × cols`, row stride
/// `ld`; chunks of [`TRANSPOSE_CHUNK_ROWS`], in order), `cols × |kr|` row-major in `scratch`: a
/// product `Aᵀ · B` over all rows is the sum of the chunks' `A[kr]ᵀ · B[kr]`.
pub(crate) fn for_transposed_chunks<T: Float>(
    src: &[T],
    rows: usize,
    cols: usize,
    ld: usize,
    scratch: &mut Vec<T>,
    threads: usize,
    mut f: impl FnMut(Operand<'_, T>, std::ops::Range<usize>),
) {
    let chunk = TRANSPOSE_CHUNK_ROWS;
    let mut k0 = 0;
    while k0 < rows {
        let k1 = (k0 + chunk).min(rows);
        let at = transposed_copy(&src[k0 * ld..], k1 - k0, cols, ld, scratch, threads);
        f(Operand::new(at, k1 - k0), k0..k1);
        k0 = k1;
    }
}

/// `dst` (`cols × rows`, row-major) = the transpose of `src` (`rows × cols`, row stride `ld`),
/// in blocks of 32 rows of `dst` (a 128-byte piece of a `src` row goes to 32 sequential write
/// streams), blocks shared out between threads. On AVX-512 (`f32`) a block is transposed 16 × 16
/// in registers (`packed::transpose_cols`): 3200 × 512 on 2 threads 0.78 ms against 1.53 ms
/// element by element (one such copy for `dW`, one for `dU` in each L training step); on AVX2
/// 8 × 8.
fn transpose_into<T: Float>(
    src: &[T],
    rows: usize,
    cols: usize,
    ld: usize,
    dst: &mut [T],
    threads: usize,
) {
    use rayon::prelude::*;
    const TB: usize = 32;
    let dst = &mut dst[..rows * cols];
    let tile = |(bi, block): (usize, &mut [T])| {
        let c0 = bi * TB;
        let nc = block.len() / rows;
        if super::packed::transpose_cols(src, ld, rows, c0, nc, block) {
            return;
        }
        for r in 0..rows {
            let s = &src[r * ld + c0..r * ld + c0 + nc];
            for (j, v) in s.iter().enumerate() {
                block[j * rows + r] = *v;
            }
        }
    };
    if threads > 1 {
        dst.par_chunks_mut(TB * rows).enumerate().for_each(tile);
    } else {
        dst.chunks_mut(TB * rows).enumerate().for_each(tile);
    }
}

fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// faer's parallelism for `threads`, capped at the hardware threads the process has: faer's
/// threads wait for each other at spinning barriers, and more of them than cores spin while the
/// thread they wait for has no core (M training, `--threads 4` on 2 cores: 3× slower).
fn par(threads: usize) -> Par {
    let threads = super::gru::team_size(threads);
    match std::num::NonZeroUsize::new(threads) {
        Some(n) if threads > 1 => Par::Rayon(n),
        _ => Par::Seq,
    }
}

fn sigmoid_f64_slice(v: &mut [f64]) {
    v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
}
fn tanh_f64_slice(v: &mut [f64]) {
    v.iter_mut().for_each(|x| *x = x.tanh());
}
fn same_f32(v: &[f32]) -> Option<&[f32]> {
    Some(v)
}
fn same_f32_mut(v: &mut [f32]) -> Option<&mut [f32]> {
    Some(v)
}
fn not_f32<T>(_: &[T]) -> Option<&[f32]> {
    None
}
fn not_f32_mut<T>(_: &mut [T]) -> Option<&mut [f32]> {
    None
}

macro_rules! impl_float {
    ($t:ty, $name:literal, $sigmoid:path, $tanh:path, $s32:ident, $s32m:ident) => {
        impl Float for $t {
            const DTYPE: &'static str = $name;

            #[inline]
            fn slice_f32(v: &[Self]) -> Option<&[f32]> {
                $s32(v)
            }

            #[inline]
            fn slice_f32_mut(v: &mut [Self]) -> Option<&mut [f32]> {
                $s32m(v)
            }

            #[inline]
            fn sigmoid_inplace(v: &mut [Self]) {
                $sigmoid(v)
            }

            #[inline]
            fn tanh_inplace(v: &mut [Self]) {
                $tanh(v)
            }

            #[inline]
            fn of(x: f64) -> Self {
                x as $t
            }

            #[inline]
            fn f64(self) -> f64 {
                self as f64
            }

            fn gemm_raw(
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: &[Self],
                lda: usize,
                ta: bool,
                b: &[Self],
                ldb: usize,
                tb: bool,
                accumulate: bool,
                c: &mut [Self],
                ldc: usize,
                threads: usize,
            ) {
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                debug_assert!(a.len() >= span(ar, ac, lda));
                debug_assert!(b.len() >= span(br, bc, ldb));
                debug_assert!(c.len() >= span(m, n, ldc));
                let a =
                    MatRef::from_row_major_slice_with_stride(&a[..span(ar, ac, lda)], ar, ac, lda);
                let b =
                    MatRef::from_row_major_slice_with_stride(&b[..span(br, bc, ldb)], br, bc, ldb);
                let a = if ta { a.transpose() } else { a };
                let b = if tb { b.transpose() } else { b };
                let clen = span(m, n, ldc);
                // Not `MatMut::from_row_major_slice_with_stride_mut`: in faer 0.24.4 it builds a
                // column-major view (row stride 1, column stride `row_stride`), which writes the
                // wrong elements. A column-major view of the transpose is the row-major matrix.
                let cm = MatMut::from_column_major_slice_with_stride_mut(&mut c[..clen], n, m, ldc)
                    .transpose_mut();
                let beta = if accumulate {
                    Accum::Add
                } else {
                    Accum::Replace
                };
                matmul(cm, beta, a, b, alpha, par(threads));
            }
        }
    };
}

impl_float!(
    f32,
    "float32",
    crate::engine::math::sigmoid_slice_f32,
    crate::engine::math::tanh_slice_f32,
    same_f32,
    same_f32_mut
);
impl_float!(
    f64,
    "float64",
    sigmoid_f64_slice,
    tanh_f64_slice,
    not_f32,
    not_f32_mut
);

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    /// faer never gets more threads than the machine's hardware threads (its barriers spin), nor
    /// any for one thread.
    #[test]
    fn faer_threads_are_capped_at_the_hardware() {
        let hw = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(matches!(par(1), Par::Seq));
        match par(hw + 7) {
            Par::Rayon(n) => assert_eq!(n.get(), hw),
            Par::Seq => assert_eq!(hw, 1),
        }
    }

    /// Every transposition, with row strides wider than the rows, on one and two threads; the
    /// large case takes the path that copies a transposed left operand first (m, n ≥ 512).
    #[test]
    fn gemm_matches_naive_in_all_transpositions() {
        for (m, n, k) in [(5, 7, 3), (530, 515, 4)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            let want = naive(m, n, k, &a, &b);
            // Stored transposes with 3 padding columns per row.
            let (lat, lbt) = (m + 3, k + 3);
            let mut at = vec![f64::NAN; k * lat];
            let mut bt = vec![f64::NAN; n * lbt];
            for i in 0..m {
                for p in 0..k {
                    at[p * lat + i] = a[i * k + p];
                }
            }
            for p in 0..k {
                for j in 0..n {
                    bt[j * lbt + p] = b[p * n + j];
                }
            }
            for (ta, tb, threads) in [
                (false, false, 1),
                (true, false, 1),
                (false, true, 1),
                (true, true, 1),
                (true, false, 2),
                (true, true, 2),
            ] {
                let ao = if ta {
                    Operand::new(&at[..], lat).t()
                } else {
                    Operand::new(&a[..], k)
                };
                let bo = if tb {
                    Operand::new(&bt[..], lbt).t()
                } else {
                    Operand::new(&b[..], n)
                };
                let mut c = vec![1.0; m * n];
                gemm(m, n, k, 1.0, ao, bo, true, &mut c, n, threads);
                for (x, w) in c.iter().zip(&want) {
                    assert!(
                        (x - 1.0 - w).abs() < 1e-12,
                        "{m}x{n}x{k} ta={ta} tb={tb} threads={threads}: {x} vs {}",
                        w + 1.0
                    );
                }
            }
        }
    }

    /// Products split by rows of `C` between threads (AVX-512 machines, see `row_blocks`):
    /// ragged last blocks, a row stride wider than `n`, `C` longer than the product (the rest
    /// untouched), accumulating or not, on 2 and 3 threads, f32 and f64.
    #[test]
    fn row_split_products_match_naive() {
        fn check<T: Float>(tol: f64) {
            for (m, n, k) in [(150, 37, 19), (401, 70, 130), (128, 16, 1)] {
                let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
                let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
                let want = naive(m, n, k, &a, &b);
                let (a32, b32): (Vec<T>, Vec<T>) = (
                    a.iter().map(|&v| T::of(v)).collect(),
                    b.iter().map(|&v| T::of(v)).collect(),
                );
                let ldc = n + 5;
                for threads in [2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for accumulate in [false, true] {
                        let mut c = vec![T::of(0.5); m * ldc + 7];
                        pool.install(|| {
                            gemm(
                                m,
                                n,
                                k,
                                T::one(),
                                Operand::new(&a32, k),
                                Operand::new(&b32, n),
                                accumulate,
                                &mut c,
                                ldc,
                                threads,
                            )
                        });
                        let base = if accumulate { 0.5 } else { 0.0 };
                        for i in 0..m {
                            for j in 0..n {
                                let (x, w) = (c[i * ldc + j].f64(), want[i * n + j] + base);
                                assert!(
                                    (x - w).abs() < tol,
                                    "{m}x{n}x{k} th={threads} acc={accumulate} ({i},{j}): {x} vs {w}"
                                );
                            }
                            if i + 1 < m {
                                assert!(c[i * ldc + n..(i + 1) * ldc]
                                    .iter()
                                    .all(|v| v.f64() == 0.5));
                            }
                        }
                        assert!(c[(m - 1) * ldc + n..].iter().all(|v| v.f64() == 0.5));
                    }
                }
            }
        }
        check::<f32>(1e-3);
        check::<f64>(1e-10);
    }
}
