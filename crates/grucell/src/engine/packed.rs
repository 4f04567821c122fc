//! The per-step recurrent products of the time loop: `C (m × n) = A (m × k) · B (k × n)` with a
//! small `m` (the batch) and a `B` (the recurrent kernel `U` or `Uᵀ`) that stays the same for
//! every step of a sequence.
//!
//! Written here rather than called from the GEMM crate because this *is* the product's inner
//! loop, and its shape is not what general GEMMs are tuned for: a general GEMM repacks `B` on
//! every call (a whole `u × 3u` copy per time step) and pays a dispatch cost that dominates at
//! batch 1. Here `B` is packed **once per sequence** into column panels of [`NR`] columns
//! (`k × NR` contiguous values each, zero-padded), as oneDNN and ONNX Runtime do for their RNN
//! weights, and a register-tiled `MR × NR` micro-kernel streams through the panels. Panels are
//! grouped in *segments* (one per gate) so that a product can use any run of gates.
//! Without packing (batch 1, single steps) the same micro-kernel reads `B` in place.
//!
//! Instruction sets: the kernels are generic Rust that LLVM vectorizes; on x86-64 they are also
//! compiled with AVX2 + FMA enabled, and `f32` full panels use the explicit AVX2 tiles of
//! `engine::simd` or the AVX-512 tiles of `engine::simd512`; those copies are chosen at run time
//! by [`super::isa::active`] (calling a `#[target_feature]` function after the check is this
//! module's only `unsafe`).
//!
//! These are kernel functions: dimensions are the caller's invariant (the layers validate user
//! shapes first), and a slice shorter than the dimensions say panics on indexing.
//!
//! ```
//! use grucell::engine::gemm::Operand;
//! use grucell::engine::packed::{PackedRhs, Rhs};
//!
//! // U: 2 × 6 (k = 2 units, three gate segments of 2 columns), h: 1 × 2.
//! let u = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
//! let mut packed = PackedRhs::new();
//! packed.pack(Operand::new(&u, 6), 2, 2, 3);
//! let h = [1.0f32, 2.0];
//! let mut hu = [0.0f32; 6];
//! Rhs::Packed(&packed).matmul(1, &h, 2, 0..2, 0..3, &mut hu, 6, false, 1, &mut Vec::new());
//! assert_eq!(hu, [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
//! ```
//! With two or more threads and enough work, panels are split between threads; each thread writes
//! its panels into its own contiguous part of a panel-major scratch buffer, which is then copied
//! into `C`, so no two threads ever hold the same memory.

use super::gemm::Operand;
use super::gru::add_bias_rows;
#[cfg(target_arch = "x86_64")]
use super::isa::{active, Isa};
use super::math::madd;
use super::workspace::grow;
use crate::float::Float;
use rayon::prelude::*;
use std::ops::Range;

/// Columns per panel: two AVX vectors of `f32` (four of `f64`).
pub const NR: usize = 16;

/// Size (bytes) from which a packed kernel is taken to be read from memory, not from the caches,
/// on every product (a recurrent kernel on every time step): its panels are then prefetched
/// ahead (see `simd::panel`). Below it, the requests only cost issue slots (3 MiB of `U`:
/// −1 to −5 %, dev VM with a 32 MiB L3 shared between tenants; 12 MiB: +5–10 % in most runs).
pub(crate) const STREAMED_MIN_BYTES: usize = 4 << 20;

/// Work (multiply-adds) below which a product runs on the calling thread only.
pub(crate) const PAR_MIN_WORK: usize = 1 << 20;

/// [`PAR_MIN_WORK`] for the batch-1 products of training ([`Par::Training`]): split in runs of
/// whole strips (the same bits) from 2^18. `grucell bench --threads 2`, AMD EPYC Zen 4 VM,
/// training ms, three alternations, 2^20 → 2^18: (1, 100, 32, 300) 3.15–3.30 → 2.33–2.39,
/// (1, 50, 64, 384) 3.01–3.20 → 2.31–2.45, (1, 50, 64, 512) 5.06–5.32 → 4.34–4.63; 256 units
/// (under 2^18) unchanged; from 2^17, 256 units 1.32–1.36 → 1.16–1.65 (too variable to take).
/// Inference keeps [`PAR_MIN_WORK`]: there a split batch-1 step was slower than one thread's
/// (a 768-unit `reset_after = false` step whose z-and-r product was split, 5.0 against 3.9 ms),
/// and from 128 units its sequences take the pair split (`engine::pair`) instead.
pub(crate) const PAR_MIN_WORK_TRAINING_ONE_ROW: usize = 1 << 18;

/// The left operand `A` of a panel product: its rows (stride `lda`, indexed by absolute `k`) and,
/// where the product made one ([`Lhs::wanted`]), a copy of `A[0..m, kr]` packed for the AVX-512
/// tiles: in row tiles of at most [`LHS_TILE_ROWS`] rows, split as [`tile_rows`] splits them, each
/// tile k-major: element `(i, k)` of the tile of `R` rows from row `i0` at
/// `i0·|kr| + (k − kr.start)·R + (i − i0)`.
///
/// A register tile broadcasts one value of each of its rows per `k`. Read from the rows, that is
/// one address per row, each a stride away (an index register and an add per row per `k`, and on
/// Intel cores an FMA with an indexed memory operand is split into two operations): the AVX-512
/// tile then issues ~50 operations per 16 FMAs and runs at about half the FMA rate. From the
/// packed copy the tile's values for one `k` are adjacent, every broadcast is a fixed offset
/// from one pointer, and the tile reads one sequential stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lhs<'a, T> {
    /// Rows of `A`.
    pub rows: &'a [T],
    /// Row stride of `rows`.
    pub lda: usize,
    /// `A[0..m, kr]` packed as described above, if made.
    pub packed: Option<&'a [T]>,
}

impl<'a, T: Float> Lhs<'a, T> {
    /// Rows only.
    pub(crate) fn rows(rows: &'a [T], lda: usize) -> Self {
        Lhs {
            rows,
            lda,
            packed: None,
        }
    }

    /// The rows and their packed copy, written into `dst` (at least `m·|kr|` long) by
    /// [`Lhs::pack_into`].
    pub(crate) fn with_packed(
        rows: &'a [T],
        lda: usize,
        m: usize,
        kr: &Range<usize>,
        dst: &'a mut [T],
    ) -> Self {
        let len = m * kr.len();
        Lhs::pack_into(rows, lda, m, kr, dst);
        Lhs {
            rows,
            lda,
            packed: Some(&dst[..len]),
        }
    }

    /// Whether a product of `m` rows, depth `k`, over `n_panels` panels that packs `A` on the
    /// thread that runs it should read `A` packed: only the AVX-512 `f32` tiles read it, and
    /// only for kernels of at least [`LHS_PACK_MIN_BYTES`].
    pub(crate) fn wanted(m: usize, k: usize, n_panels: usize) -> bool {
        Self::wanted_from(m, k, n_panels, LHS_PACK_MIN_BYTES)
    }

    /// [`Lhs::wanted`] for a product shared by a team, whose helpers wait while the caller
    /// packs: kernels of at least [`TEAM_LHS_PACK_MIN_BYTES`].
    pub(crate) fn wanted_by_team(m: usize, k: usize, n_panels: usize) -> bool {
        Self::wanted_from(m, k, n_panels, TEAM_LHS_PACK_MIN_BYTES)
    }

    fn wanted_from(m: usize, k: usize, n_panels: usize, min_bytes: usize) -> bool {
        m >= 2 && n_panels.saturating_mul(k).saturating_mul(NR * 4) >= min_bytes && Self::packs()
    }

    /// Whether the kernels read a packed `A` at all: the AVX-512 `f32` tiles.
    pub(crate) fn packs() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::mem::size_of::<T>() == 4 && active() == Isa::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Packs `A[0..m, kr]` (rows of stride `lda`) into `dst[..m·|kr|]` as [`Lhs`] describes.
    pub(crate) fn pack_into(a: &[T], lda: usize, m: usize, kr: &Range<usize>, dst: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        if active() == Isa::Avx512 {
            if let (Some(a32), Some(d32)) = (T::slice_f32(a), T::slice_f32_mut(dst)) {
                // SAFETY: the CPU has AVX-512F (checked by `active`), the function's only
                // requirement.
                if unsafe { super::simd512::pack_lhs(a32, lda, m, kr, d32) } {
                    return;
                }
            }
        }
        Self::pack_portable(a, lda, m, kr, dst);
    }

    /// [`Lhs::pack_into`] element by element (any type, any CPU).
    pub(crate) fn pack_portable(a: &[T], lda: usize, m: usize, kr: &Range<usize>, dst: &mut [T]) {
        let klen = kr.len();
        let mut i0 = 0;
        while i0 < m {
            let r = tile_rows(m, i0, LHS_TILE_ROWS);
            let tile = &mut dst[i0 * klen..(i0 + r) * klen];
            // The tile's rows side by side, written in order (one sequential stream out).
            let mut rows: [&[T]; LHS_TILE_ROWS] = [&[]; LHS_TILE_ROWS];
            for (i, row) in rows[..r].iter_mut().enumerate() {
                *row = &a[(i0 + i) * lda + kr.start..(i0 + i) * lda + kr.end];
            }
            for (k, dk) in tile.chunks_exact_mut(r).enumerate() {
                for (d, row) in dk.iter_mut().zip(&rows[..r]) {
                    *d = row[k];
                }
            }
            i0 += r;
        }
    }
}

/// Kernel size (bytes) from which a product packs its left operand on the thread that runs it
/// (see [`Lhs`]; a sequence split by batch rows, rayon-split products, a step without a team).
/// Measured on an AVX-512 Xeon (2 MiB L2 per core), 2 threads, medians in one process,
/// training (B, T, D, u), against 2 MiB (the threshold before the in-register transpose made
/// packing 5–6× cheaper): M −9 %, (32, 50, 128, 128) −5 %, (16, 50, 64, 256) −4 %, (32, 50, 64,
/// 64) −4 % (48 KiB kernel; −0 % with 64 KiB here), (4, 50, 64, 128) ±0; inference (16, 100, 32,
/// 96) −9 %.
pub(crate) const LHS_PACK_MIN_BYTES: usize = 16 << 10;

/// Kernel size (bytes) from which a team's product packs its left operand: the caller packs it
/// while the helpers wait. Same machine, inference against 2 MiB: M (768 KiB) −4 %, (16, 50, 64,
/// 256) −5 %, (16, 100, 32, 96) −9 %; a 192 KiB kernel (32, 50, 128, 128) lost 4 % when packing
/// from 64 KiB, and was not touched at 256 KiB.
pub(crate) const TEAM_LHS_PACK_MIN_BYTES: usize = 256 << 10;

/// Most rows per register tile of the AVX-512 kernel, and per tile of a packed [`Lhs`].
pub(crate) const LHS_TILE_ROWS: usize = 16;
/// Depth (`k`) of one block of the AVX2 and AVX-512 panel kernels for products of depth up to
/// `KC` (each element is summed block by block, a block's products in `k` order): 256 × 16
/// floats of a panel (16 KiB) stay in L1. Deeper products take blocks of [`KC_DEEP`] (see
/// [`block_depth`]).
pub(crate) const KC: usize = 256;

/// Depth of the k-blocks of products deeper than [`KC`]. A block of three panels (the group
/// kernel) is then 24 KiB instead of 48, so it and the packed rows of two 16-row tiles share
/// L1 where the 48 KiB block was partly evicted by the second tile's rows and re-read from L2.
/// Measured on the AVX-512 Xeon (48 KiB L1), one thread, `h·U` with `U` streamed (3 MiB):
/// 32 × 512 · 512 × 1536 136 → 141 GFLOP/s, 64 rows 145 → 148, 16 × 1024 · 1024 × 3072 ±0;
/// two threads, in one process: L training −2.5 %, L forward −1.5 %, XL forward ±0. Products of
/// depth up to 256 keep one block: M training (depth 768 in its reverse loop) was 2.5 % slower
/// with 128 for every depth, as was anything that split its only block in two.
pub(crate) const KC_DEEP: usize = 128;

/// Depth of the k-blocks of the AVX2 and AVX-512 panel kernels for a product of depth `k`
/// ([`KC`] or [`KC_DEEP`]): a function of the depth alone, so that every path that computes
/// a product (team or not, group or single panels, any thread count) sums it the same way.
pub(crate) fn block_depth(k: usize) -> usize {
    if k <= KC {
        KC
    } else {
        KC_DEEP
    }
}

/// Rows of the register tile that starts at row `i` of `m`: tiles of at most `max` rows, the rows
/// spread evenly over the fewest tiles. A tile of 4 or more rows runs at the FMA units' full
/// rate, a thin one of 1–2 at half of it (too few independent accumulators), so with `max = 6`
/// 32 rows go 6,6,5,5,5,5 rather than 6,6,6,6,6,2. A row's sums do not depend on its tile.
#[inline]
pub(crate) fn tile_rows(m: usize, i: usize, max: usize) -> usize {
    let left = m - i;
    left.div_ceil(left.div_ceil(max))
}

/// `B` packed into column panels, grouped in equal segments of columns.
#[derive(Debug, Clone, Default)]
pub struct PackedRhs<T> {
    /// The panels start at `data[off]`, the first 64-byte boundary of the allocation (see
    /// [`PackedRhs::panels`]).
    data: Vec<T>,
    off: usize,
    k: usize,
    seg: usize,
    segs: usize,
    pps: usize,
    finite: bool,
}

impl<T: Float> PackedRhs<T> {
    /// An empty packing; [`PackedRhs::pack`] fills it (reusing its memory).
    pub fn new() -> Self {
        PackedRhs {
            data: Vec::new(),
            off: 0,
            k: 0,
            seg: 0,
            segs: 0,
            pps: 0,
            finite: true,
        }
    }

    /// Whether every packed value is finite (so that `0 · B = 0` exactly: a product with an
    /// all-zero left operand may then be skipped).
    pub fn is_finite(&self) -> bool {
        self.finite
    }

    /// Depth `k` (rows of `B`).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Segments packed.
    pub fn segments(&self) -> usize {
        self.segs
    }

    /// Columns of `B` (all segments).
    pub fn columns(&self) -> usize {
        self.segs * self.seg
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when nothing is packed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The panels, from a 64-byte boundary: every 16-float row of a panel is one cache line,
    /// so that no 512-bit load of the kernels straddles two. The allocator only promises the
    /// element type's alignment (glibc gives 16 bytes, and large blocks sit 16 bytes past a
    /// page boundary), and a straddling load costs two. (A clone keeps the offset but may lose
    /// the alignment: slower, never wrong.)
    pub(crate) fn panels(&self) -> &[T] {
        &self.data[self.off..]
    }

    /// Packs `B` (`k × segs·seg`, read through `b`) as `segs` segments of `seg` columns.
    pub fn pack(&mut self, b: Operand<'_, T>, k: usize, seg: usize, segs: usize) {
        self.pack_with_threads(b, k, seg, segs, 1);
    }

    /// [`PackedRhs::pack`] with groups of panels shared out as at most `threads` rayon tasks
    /// (from 2^21 elements: a weight matrix of 1024 units is 12 MiB, and packing
    /// it is memory-bound and costs a few ms on one core).
    pub fn pack_with_threads(
        &mut self,
        b: Operand<'_, T>,
        k: usize,
        seg: usize,
        segs: usize,
        threads: usize,
    ) {
        let pps = seg.div_ceil(NR);
        let panel_len = k * NR;
        let stride = panel_stride(k);
        let n_panels = pps * segs;
        // Every element is written below (padding included), so old contents need no clearing.
        // One cache line more than the panels, to start them on a line (`panels`).
        let line = (64 / std::mem::size_of::<T>()).max(1);
        super::pages::resize(&mut self.data, n_panels * stride + line, T::zero());
        self.off = self.data.as_ptr().align_offset(64).min(line - 1);
        self.k = k;
        self.seg = seg;
        self.segs = segs;
        self.pps = pps;
        if panel_len == 0 {
            self.finite = true;
            return;
        }
        // Groups of adjacent panels: a row of `B` is then read as GROUP·NR contiguous values.
        let group = GROUP.min(n_panels).max(1);
        let pack_group = |gi: usize, chunk: &mut [T]| -> bool {
            let mut finite = true;
            let first = gi * group;
            let panels = chunk.len() / stride;
            // First column and width of each panel of the group.
            let mut geo = [(0usize, 0usize); GROUP];
            for (j, p) in (first..first + panels).enumerate() {
                let (s, q) = (p / pps, p % pps);
                geo[j] = (s * seg + q * NR, NR.min(seg - q * NR));
            }
            let geo = &geo[..panels];
            if b.transposed {
                // Element (kk, c) of B is stored at data[c·ld + kk]: a column is contiguous.
                for (j, &(c0, w)) in geo.iter().enumerate() {
                    let dst = &mut chunk[j * stride..j * stride + panel_len];
                    for jj in 0..NR {
                        if jj >= w {
                            dst.chunks_exact_mut(NR).for_each(|row| row[jj] = T::zero());
                            continue;
                        }
                        let src = &b.data[(c0 + jj) * b.ld..(c0 + jj) * b.ld + k];
                        for (row, v) in dst.chunks_exact_mut(NR).zip(src) {
                            row[jj] = *v;
                            finite &= v.is_finite();
                        }
                    }
                }
            } else {
                for kk in 0..k {
                    for (j, &(c0, w)) in geo.iter().enumerate() {
                        let o = j * stride + kk * NR;
                        let row = &mut chunk[o..o + NR];
                        let src = &b.data[kk * b.ld + c0..kk * b.ld + c0 + w];
                        for (d, v) in row[..w].iter_mut().zip(src) {
                            *d = *v;
                            finite &= v.is_finite();
                        }
                        row[w..].fill(T::zero());
                    }
                }
            }
            for j in 0..panels {
                chunk[j * stride + panel_len..(j + 1) * stride].fill(T::zero());
            }
            finite
        };
        // A run of groups per task, at most `threads` tasks. Every group is packed (no
        // short-circuiting `all`), the finiteness flags are and-ed.
        let n_groups = n_panels.div_ceil(group);
        let tasks = if n_panels * panel_len >= PAR_MIN_PACK {
            threads.clamp(1, n_groups)
        } else {
            1
        };
        let per = n_groups.div_ceil(tasks);
        let task = |(ti, chunk): (usize, &mut [T])| -> bool {
            let mut finite = true;
            for (j, gchunk) in chunk.chunks_mut(group * stride).enumerate() {
                finite &= pack_group(ti * per + j, gchunk);
            }
            finite
        };
        let data = &mut self.data[self.off..self.off + n_panels * stride];
        self.finite = if tasks > 1 {
            data.par_chunks_mut(per * group * stride)
                .enumerate()
                .map(task)
                .reduce(|| true, |a, b| a && b)
        } else {
            task((0, data))
        };
    }
}

/// Panels packed together (see [`PackedRhs::pack_with_threads`]).
const GROUP: usize = 8;

/// Distance (elements) between the starts of two packed panels of depth `k`: one cache line more
/// than a panel holds. Panels of a depth that is a multiple of 64 would otherwise start a
/// multiple of 4 KiB apart, so that the same row of adjacent panels, which the batch-1 strips
/// read together, would fall into the same L1 sets (S forward: 0.102 → 0.163 ms without the
/// extra line, 0.092 with it).
pub(crate) fn panel_stride(k: usize) -> usize {
    if k == 0 {
        0
    } else {
        k * NR + NR
    }
}

/// Packed sizes (elements) from which packing is split between threads: below it (512 units
/// and less) the memory-bound copy gains nothing measurable from a second thread.
const PAR_MIN_PACK: usize = 1 << 21;

/// How a recurrent product may use threads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Par<'a, T> {
    /// Up to this many rayon threads (split only when the product is large enough).
    Threads(usize),
    /// [`Par::Threads`] for training's products: batch-1 products split from
    /// [`PAR_MIN_WORK_TRAINING_ONE_ROW`].
    Training(usize),
    /// A team of spinning helpers that lives for the whole sequence.
    Team(&'a super::team::Team<T>),
}

/// The right-hand side of a recurrent product.
#[derive(Debug, Clone, Copy)]
pub enum Rhs<'a, T> {
    /// Packed once per sequence.
    Packed(&'a PackedRhs<T>),
    /// Read in place: row-major `k × segs·seg` with row stride `ld`.
    Plain {
        /// The storage.
        data: &'a [T],
        /// Row stride.
        ld: usize,
        /// Columns per segment.
        seg: usize,
    },
}

impl<T: Float> Rhs<'_, T> {
    /// Columns per segment (a GRU's units, for its kernels' gate segments).
    pub(crate) fn seg(&self) -> usize {
        match self {
            Rhs::Packed(p) => p.seg,
            Rhs::Plain { seg, .. } => *seg,
        }
    }

    /// Panel `q` of segment `s`: its first column, width, data (starting at row 0) and row stride.
    pub(crate) fn panel(&self, s: usize, q: usize) -> (usize, usize, &[T], usize) {
        let seg = self.seg();
        let c0 = s * seg + q * NR;
        let w = NR.min(seg - q * NR);
        match self {
            Rhs::Packed(p) => {
                let (len, stride) = (p.k * NR, panel_stride(p.k));
                let i = s * p.pps + q;
                (c0, w, &p.panels()[i * stride..i * stride + len], NR)
            }
            Rhs::Plain { data, ld, .. } => (c0, w, &data[c0..], *ld),
        }
    }

    /// What a panel's kernel requests ahead while it computes (see `simd::panel`): `None` unless
    /// this kernel is packed and too large to stay in the caches between products
    /// ([`STREAMED_MIN_BYTES`]); then the data of panel `i` of `segs`, the one computed next,
    /// or an empty slice when `i` is not one of `panels` (the kernel then requests only its own
    /// panel's blocks ahead).
    pub(crate) fn upcoming(
        &self,
        segs: &Range<usize>,
        i: usize,
        panels: &Range<usize>,
    ) -> Option<&[T]> {
        let pps = self.panels_per_segment();
        if !panels.contains(&i) || pps == 0 {
            return self.streamed().then_some(&[][..]);
        }
        self.upcoming_at(segs.start + i / pps, i % pps)
    }

    /// What a group of `P` panels requests ahead: [`Rhs::upcoming`] for panels `i..i + P` of
    /// `panels` (those computed after the group), empty where there is nothing to request.
    fn upcoming_group<const P: usize>(
        &self,
        segs: &Range<usize>,
        i: usize,
        panels: &Range<usize>,
    ) -> [&[T]; P] {
        std::array::from_fn(|p| self.upcoming(segs, i + p, panels).unwrap_or(&[]))
    }

    /// Panel `q` of segment `s` as [`Rhs::upcoming`] gives it (empty past the last panel).
    pub(crate) fn upcoming_at(&self, s: usize, q: usize) -> Option<&[T]> {
        match self {
            Rhs::Packed(p) if self.streamed() => Some(if s < p.segs && q < p.pps {
                self.panel(s, q).2
            } else {
                &[]
            }),
            _ => None,
        }
    }

    /// Packed and at least [`STREAMED_MIN_BYTES`].
    pub(crate) fn streamed(&self) -> bool {
        matches!(self, Rhs::Packed(p) if p.data.len() * std::mem::size_of::<T>() >= STREAMED_MIN_BYTES)
    }

    /// `C[:, cols of segs] (+)= A[:, kr] · B[kr, cols of segs]`.
    ///
    /// `A` is `m` rows of stride `lda` indexed by absolute `k`; the columns written are those of
    /// the segments in `segs`, at their own column index in `C` (row stride `ldc`). `scratch` is
    /// only used when the product is split between threads.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        m: usize,
        a: &[T],
        lda: usize,
        kr: Range<usize>,
        segs: Range<usize>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
        threads: usize,
        scratch: &mut Vec<T>,
    ) {
        let min = PAR_MIN_WORK;
        self.matmul_from(
            min, m, a, lda, kr, segs, c, ldc, accumulate, threads, scratch,
        );
    }

    /// [`Rhs::matmul`], split between threads only from `min_work` multiply-adds.
    #[allow(clippy::too_many_arguments)]
    fn matmul_from(
        &self,
        min_work: usize,
        m: usize,
        a: &[T],
        lda: usize,
        kr: Range<usize>,
        segs: Range<usize>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
        threads: usize,
        scratch: &mut Vec<T>,
    ) {
        if m == 0 || segs.is_empty() {
            return;
        }
        let seg = self.seg();
        let pps = seg.div_ceil(NR);
        let n_panels = segs.len() * pps;
        let work = m * segs.len() * seg * kr.len();
        if threads <= 1 || work < min_work || n_panels < 2 {
            match *self {
                Rhs::Plain { data, ld, .. } if m <= 2 => {
                    // Batch 1–2 in place: wide strips, each `B` row read as 256 contiguous bytes.
                    for s in segs {
                        for r in 0..m {
                            run_strip(
                                &a[r * lda..],
                                &kr,
                                Strip::Plain(&data[s * seg..], ld),
                                seg,
                                &mut c[r * ldc + s * seg..],
                                accumulate,
                            );
                        }
                    }
                    return;
                }
                Rhs::Packed(p) if m == 1 => {
                    // Batch 1 packed: the same strips, their four 16-column vectors read from
                    // four adjacent panels (one sequential stream each) and summed exactly as
                    // in place (a register tile of one row would be one chain of dependent
                    // FMAs per panel, 4× slower).
                    // Segments in the other order than the thread's previous batch-1 product
                    // of several segments (see `STRIP_ORDER`).
                    let stride = panel_stride(p.k);
                    let back = segs.len() > 1 && STRIP_ORDER.with(|o| o.replace(!o.get()));
                    for i in 0..segs.len() {
                        let s = if back {
                            segs.end - 1 - i
                        } else {
                            segs.start + i
                        };
                        let d = &p.panels()[s * pps * stride..(s + 1) * pps * stride];
                        run_strip(
                            a,
                            &kr,
                            Strip::Packed(d, stride),
                            seg,
                            &mut c[s * seg..],
                            accumulate,
                        );
                    }
                    return;
                }
                _ => {}
            }
            let lhs = if Lhs::<T>::wanted(m, kr.len(), n_panels) {
                grow(scratch, m * kr.len());
                Lhs::with_packed(a, lda, m, &kr, scratch)
            } else {
                Lhs::rows(a, lda)
            };
            self.panels_into(&kr, &segs, 0..n_panels, m, lhs, c, ldc, accumulate);
            return;
        }
        if m == 1 {
            // Batch 1 split: each segment's columns in runs of whole strips (`strip_granule`),
            // shared out between the threads, each run summed by the strips of one thread's
            // product (`Rhs::row_cols`), so the same bits. (The panel kernels below would take
            // one row per register tile: one chain of dependent FMAs per panel.)
            let granule = strip_granule::<T>();
            let per = seg.div_ceil(granule).div_ceil(threads).max(1) * granule;
            c[segs.start * seg..segs.end * seg]
                .par_chunks_mut(seg)
                .zip(segs.clone())
                .for_each(|(cs, s)| {
                    cs.par_chunks_mut(per).enumerate().for_each(|(j, cc)| {
                        let strip = self.strip(s).skip(j * per);
                        run_strip(a, &kr, strip, cc.len(), cc, accumulate);
                    });
                });
            return;
        }
        // Panel-major scratch: panel i's m × NR tile at i·m·NR; each thread takes a run of panels.
        // Accumulating products start from C's values in the scratch, so that every element is
        // summed in the order of the single-threaded path (see `gather`).
        let tile = m * NR;
        let pack = Lhs::<T>::wanted(m, kr.len(), n_panels);
        grow(
            scratch,
            n_panels * tile + if pack { m * kr.len() } else { 0 },
        );
        let (tiles, at) = scratch.split_at_mut(n_panels * tile);
        let lhs = if pack {
            Lhs::with_packed(a, lda, m, &kr, at)
        } else {
            Lhs::rows(a, lda)
        };
        if accumulate {
            self.gather(&segs, 0..n_panels, m, c, ldc, tiles);
        }
        let per = n_panels.div_ceil(threads);
        tiles
            .par_chunks_mut(per * tile)
            .enumerate()
            .for_each(|(ti, chunk)| {
                let end = (ti * per + chunk.len() / tile).min(n_panels);
                run_panel_range(self, &kr, &segs, ti * per..end, m, lhs, chunk, accumulate);
            });
        self.scatter(&segs, 0..n_panels, m, tiles, c, ldc, false);
    }

    /// `c[..cols.len()] = a[kr] · B[kr, columns cols of segment s]` for one row `a` (batch 1),
    /// every column summed exactly as the batch-1 [`Rhs::matmul`] of a single thread sums it,
    /// whatever `cols` is, provided `cols.start` is a multiple of [`strip_granule`] (`cols.end`
    /// at most the segment's width). The pieces of a step split between threads by units
    /// (`engine::pair`) therefore add up to the single-threaded step, bit for bit.
    pub(crate) fn row_cols(
        &self,
        a: &[T],
        kr: Range<usize>,
        s: usize,
        cols: Range<usize>,
        c: &mut [T],
    ) {
        let strip = self.strip(s).skip(cols.start);
        run_strip(a, &kr, strip, cols.len(), c, false);
    }

    /// [`Rhs::row_cols`] for the three gate segments at once: `c[g·cols.len() + j]` for gate
    /// `g` and column `cols.start + j`, each summed as `row_cols` sums it. With AVX-512 and
    /// `f32`, the three gates' strips run together ([`super::simd512::strip_gates`]).
    pub(crate) fn row_gates(&self, a: &[T], kr: Range<usize>, cols: Range<usize>, c: &mut [T]) {
        let w = cols.len();
        let mut c0 = 0;
        #[cfg(target_arch = "x86_64")]
        if active() == Isa::Avx512 {
            if let (Some(a32), Some(c32)) = (T::slice_f32(a), T::slice_f32_mut(c)) {
                // (Safe `#[target_feature]` functions coerce to `unsafe fn` pointers.)
                let kernels: [(usize, StripGates); 3] = [
                    (WIDE, super::simd512::strip_gates::<4>),
                    (2 * NR, super::simd512::strip_gates::<2>),
                    (NR, super::simd512::strip_gates::<1>),
                ];
                for (width, kernel) in kernels {
                    while c0 + width <= w {
                        let j = cols.start + c0;
                        let (_, ldb, vs) = self.strip(0).at(j);
                        let bs = [0, 1, 2].map(|s| {
                            let (d, _, _) = self.strip(s).at(j);
                            T::slice_f32(d).and_then(|d| d.get(kr.start * ldb..))
                        });
                        let (Some(b0), Some(b1), Some(b2)) = (bs[0], bs[1], bs[2]) else {
                            break;
                        };
                        // SAFETY: the CPU has AVX-512F (checked by `active`), the kernels' only
                        // requirement.
                        let done =
                            unsafe { kernel(a32, &kr, [b0, b1, b2], ldb, vs, &mut c32[c0..], w) };
                        if !done {
                            break;
                        }
                        c0 += width;
                    }
                }
            }
        }
        if c0 < w {
            for (s, cg) in c.chunks_exact_mut(w).take(3).enumerate() {
                self.row_cols(a, kr.clone(), s, cols.start + c0..cols.end, &mut cg[c0..]);
            }
        }
    }

    /// Segment `s` as the batch-1 strips read it.
    fn strip(&self, s: usize) -> Strip<'_, T> {
        match *self {
            Rhs::Plain { data, ld, seg } => Strip::Plain(&data[s * seg..], ld),
            Rhs::Packed(p) => {
                let (pps, stride) = (p.seg.div_ceil(NR), panel_stride(p.k));
                Strip::Packed(
                    &p.panels()[s * pps * stride..(s + 1) * pps * stride],
                    stride,
                )
            }
        }
    }

    /// [`Rhs::matmul`] or the team's product, as `par` says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product(
        &self,
        par: Par<'_, T>,
        m: usize,
        a: &[T],
        lda: usize,
        kr: Range<usize>,
        segs: Range<usize>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
        scratch: &mut Vec<T>,
    ) {
        match par {
            Par::Threads(t) => self.matmul(m, a, lda, kr, segs, c, ldc, accumulate, t, scratch),
            Par::Training(t) => {
                let min = if m == 1 {
                    PAR_MIN_WORK_TRAINING_ONE_ROW
                } else {
                    PAR_MIN_WORK
                };
                self.matmul_from(min, m, a, lda, kr, segs, c, ldc, accumulate, t, scratch)
            }
            Par::Team(team) if m > 0 && !segs.is_empty() => {
                team.matmul(*self, m, a, lda, kr, segs, c, ldc, accumulate)
            }
            Par::Team(_) => {}
        }
    }

    /// Panels per segment.
    pub(crate) fn panels_per_segment(&self) -> usize {
        self.seg().div_ceil(NR)
    }

    /// The panel that panel `i` (full, of width `w` and row stride `ldb`) is computed together
    /// with by [`run_panel_group`]: panel `i + 1` of `panels` (its first column and data) when
    /// both are full packed panels. Streamed kernels ([`STREAMED_MIN_BYTES`]) too, at any number
    /// of rows: see `simd512::panel_group` for the measurements.
    fn pair_with(
        &self,
        segs: &Range<usize>,
        i: usize,
        panels: &Range<usize>,
        w: usize,
        ldb: usize,
    ) -> Option<(usize, &[T])> {
        if w != NR || ldb != NR || i + 1 >= panels.end {
            return None;
        }
        let pps = self.panels_per_segment();
        let (c1, w1, b1, _) = self.panel(segs.start + (i + 1) / pps, (i + 1) % pps);
        (w1 == NR).then_some((c1, b1))
    }

    /// Panel `i` of `panels` (`first`: its column, width, data and row stride) together with
    /// the one or two after it where they pair ([`Rhs::pair_with`]), by [`run_panel_group`] into
    /// `c` (row stride `ldc`) at `offset(g, column)` for the group's `g`-th panel, the panels
    /// after the group requested ahead: how many panels it computed, 0 if none (the caller then
    /// computes panel `i` alone).
    #[allow(clippy::too_many_arguments)]
    fn group_from(
        &self,
        kr: &Range<usize>,
        segs: &Range<usize>,
        panels: &Range<usize>,
        i: usize,
        first: (usize, usize, &[T], usize),
        m: usize,
        a: Lhs<'_, T>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
        offset: impl Fn(usize, usize) -> usize,
    ) -> usize {
        let (c0, w, b, ldb) = first;
        let Some((c1, b1)) = self.pair_with(segs, i, panels, w, ldb) else {
            return 0;
        };
        let depth = block_depth(kr.len());
        let done = match self.pair_with(segs, i + 1, panels, NR, NR) {
            Some((c2, b2)) => {
                let os = [offset(0, c0), offset(1, c1), offset(2, c2)];
                let next = self.upcoming_group::<3>(segs, i + 3, panels);
                run_panel_group::<T, 3>(
                    m,
                    a,
                    kr,
                    depth,
                    [b, b1, b2],
                    c,
                    os,
                    ldc,
                    accumulate,
                    None,
                    next,
                )
                .then_some(3)
            }
            None => {
                let os = [offset(0, c0), offset(1, c1)];
                let next = self.upcoming_group::<2>(segs, i + 2, panels);
                run_panel_group::<T, 2>(
                    m,
                    a,
                    kr,
                    depth,
                    [b, b1],
                    c,
                    os,
                    ldc,
                    accumulate,
                    None,
                    next,
                )
                .then_some(2)
            }
        };
        done.unwrap_or(0)
    }

    /// Computes panels `panels` (indices within `segs`) straight into row-major `C`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn panels_into(
        &self,
        kr: &Range<usize>,
        segs: &Range<usize>,
        panels: Range<usize>,
        m: usize,
        a: Lhs<'_, T>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
    ) {
        let pps = self.panels_per_segment();
        let mut skip = 0;
        for i in panels.clone() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let first = self.panel(segs.start + i / pps, i % pps);
            let (c0, w, b, ldb) = first;
            let done = self.group_from(
                kr,
                segs,
                &panels,
                i,
                first,
                m,
                a,
                c,
                ldc,
                accumulate,
                |_, col| col,
            );
            if done > 0 {
                skip = done - 1;
                continue;
            }
            let next = self.upcoming(segs, i + 1, &panels);
            run_panel(
                m,
                a,
                kr,
                b,
                ldb,
                w,
                &mut c[c0..],
                ldc,
                accumulate,
                next,
                None,
            );
        }
    }

    /// Copies the columns of panels `panels` of row-major `C` into panel-major tiles (the
    /// inverse of [`Rhs::scatter`]; padding columns get zeros). A split product that accumulates
    /// starts each tile from `C` and adds the k-blocks of the kernel to it one by one, exactly as
    /// the single-threaded path does in place: `((C + A·B[k-block 0]) + …)`. Adding a separately
    /// computed tile to `C` would round differently once `k` spans several blocks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gather(
        &self,
        segs: &Range<usize>,
        panels: Range<usize>,
        m: usize,
        c: &[T],
        ldc: usize,
        dst: &mut [T],
    ) {
        let pps = self.panels_per_segment();
        let tile = m * NR;
        for (j, i) in panels.enumerate() {
            let (c0, w, _, _) = self.panel(segs.start + i / pps, i % pps);
            let tile_dst = &mut dst[j * tile..(j + 1) * tile];
            for (r, dr) in tile_dst.chunks_exact_mut(NR).enumerate() {
                dr[..w].copy_from_slice(&c[r * ldc + c0..r * ldc + c0 + w]);
                dr[w..].fill(T::zero());
            }
        }
    }

    /// Adds (or copies) panel-major tiles of panels `panels` into row-major `C`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scatter(
        &self,
        segs: &Range<usize>,
        panels: Range<usize>,
        m: usize,
        src: &[T],
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
    ) {
        let pps = self.panels_per_segment();
        let tile = m * NR;
        for (j, i) in panels.enumerate() {
            let (c0, w, _, _) = self.panel(segs.start + i / pps, i % pps);
            let tile_src = &src[j * tile..(j + 1) * tile];
            for (r, sr) in tile_src.chunks_exact(NR).enumerate() {
                store(&mut c[r * ldc + c0..r * ldc + c0 + w], &sr[..w], accumulate);
            }
        }
    }
}

/// Computes panels `panels` (indices within `segs`) into panel-major `out` (`m × NR` each),
/// adding to what `out` holds when `accumulate` (see [`Rhs::gather`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_panel_range<T: Float>(
    rhs: &Rhs<'_, T>,
    kr: &Range<usize>,
    segs: &Range<usize>,
    panels: Range<usize>,
    m: usize,
    a: Lhs<'_, T>,
    out: &mut [T],
    accumulate: bool,
) {
    let pps = rhs.panels_per_segment();
    let tile = m * NR;
    let mut skip = 0;
    for (j, i) in panels.clone().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let first = rhs.panel(segs.start + i / pps, i % pps);
        let (_, w, b, ldb) = first;
        let at = |g: usize, _| (j + g) * tile;
        let done = rhs.group_from(kr, segs, &panels, i, first, m, a, out, NR, accumulate, at);
        if done > 0 {
            skip = done - 1;
            continue;
        }
        let next = rhs.upcoming(segs, i + 1, &panels);
        run_panel(
            m,
            a,
            kr,
            b,
            ldb,
            w,
            &mut out[j * tile..(j + 1) * tile],
            NR,
            accumulate,
            next,
            None,
        );
    }
}

/// One panel for all `m` rows, with the best kernel the CPU runs; then `bias` (the panel's `w`
/// values, if given) added to each row as `gru::add_bias_rows` adds it (the AVX2 kernel adds
/// it as it stores the last block: the same bits, one pass over `C` less).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn run_panel<T: Float>(
    m: usize,
    lhs: Lhs<'_, T>,
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    next: Option<&[T]>,
    bias: Option<&[T]>,
) {
    let (a, lda) = (lhs.rows, lhs.lda);
    let add_bias = |c: &mut [T]| {
        if let (Some(bias), true) = (bias, m > 0) {
            add_bias_rows(&bias[..w], &mut c[..(m - 1) * ldc + w], ldc);
        }
    };
    #[cfg(target_arch = "x86_64")]
    {
        let isa = active();
        if isa >= Isa::Avx2Fma {
            if let (true, Some(a32), Some(b32), Some(c32)) = (
                w == NR,
                T::slice_f32(a),
                T::slice_f32(b).and_then(|b| b.get(kr.start * ldb..)),
                T::slice_f32_mut(c),
            ) {
                // Offset to row `kr.start`, as `b` is; empty for a `next` that is shorter than
                // that (never, for panels of one packing).
                let next = next
                    .and_then(T::slice_f32)
                    .map(|n| n.get(kr.start * ldb..).unwrap_or(&[]));
                // SAFETY: the CPU has AVX2 and FMA, and AVX-512F where `isa` says so (checked by
                // `active`), the only requirements of these `#[target_feature]` functions.
                let (done, fused) = unsafe {
                    if isa == Isa::Avx512 {
                        let at = lhs.packed.and_then(T::slice_f32);
                        let done = super::simd512::panel(
                            m, a32, lda, at, kr, b32, ldb, c32, ldc, accumulate, next,
                        );
                        (done, false)
                    } else {
                        let bias = bias.and_then(T::slice_f32);
                        let done = super::simd::panel(
                            m, a32, lda, kr, b32, ldb, c32, ldc, accumulate, next, bias,
                        );
                        (done, bias.is_some())
                    }
                };
                if done {
                    if !fused {
                        add_bias(c);
                    }
                    return;
                }
            }
            // SAFETY: the CPU has AVX2 and FMA (checked by `active`).
            unsafe { panel_avx2_fma(m, a, lda, kr, b, ldb, w, c, ldc, accumulate) };
            add_bias(c);
            return;
        }
    }
    panel_kernel::<T, false>(m, a, lda, kr, b, ldb, w, c, ldc, accumulate);
    add_bias(c);
}

/// `P` full panels (`bs`: packed, row stride [`NR`], from row 0) for all `m` rows at once, in
/// k-blocks of `bk` ([`block_depth`] gives the panel kernels' own), into
/// `c` at `offsets` (row stride `ldc`), each panel's 16 values of `bias` added last, when a
/// group kernel can (`f32`; with AVX-512, `A` packed; with AVX2 alone, at most
/// `simd::GROUP_MAX_ROWS` rows): `true` if done, `false` (nothing done) for the caller to
/// compute them otherwise. `next`: the panels computed after these (requested ahead;
/// may be empty).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn run_panel_group<T: Float, const P: usize>(
    m: usize,
    lhs: Lhs<'_, T>,
    kr: &Range<usize>,
    bk: usize,
    bs: [&[T]; P],
    c: &mut [T],
    offsets: [usize; P],
    ldc: usize,
    accumulate: bool,
    bias: Option<[&[T]; P]>,
    next: [&[T]; P],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        fn f32s<T: Float, const P: usize>(v: [&[T]; P], from: usize) -> Option<[&[f32]; P]> {
            let v: [Option<&[f32]>; P] =
                std::array::from_fn(|p| T::slice_f32(v[p]).and_then(|b| b.get(from..)));
            v.iter()
                .all(Option::is_some)
                .then(|| std::array::from_fn(|p| v[p].unwrap_or(&[])))
        }
        let isa = active();
        let kernel = match isa {
            Isa::Avx512 => lhs.packed,
            Isa::Avx2Fma if m <= super::simd::GROUP_MAX_ROWS => Some(lhs.rows),
            _ => None,
        };
        let bias32 = match bias {
            Some(b) => f32s(b, 0).map(Some),
            None => Some(None),
        };
        let next32 = f32s(next, 0).unwrap_or([&[]; P]);
        if let (Some(a), Some(b), Some(bias), Some(c)) = (
            kernel.and_then(T::slice_f32),
            f32s(bs, kr.start * NR),
            bias32,
            T::slice_f32_mut(c),
        ) {
            // SAFETY: the CPU has AVX-512F where `isa` says so, else AVX2 and FMA (checked by
            // `active`), the functions' only requirements.
            return unsafe {
                if isa == Isa::Avx512 {
                    super::simd512::panel_group::<P>(
                        m, a, kr, bk, b, c, offsets, ldc, accumulate, bias, next32,
                    )
                } else {
                    super::simd::panel_group::<P>(
                        m, a, lhs.lda, kr, bk, b, c, offsets, ldc, accumulate, bias, next32,
                    )
                }
            };
        }
    }
    let _ = (m, lhs, kr, bk, bs, c, offsets, ldc, accumulate, bias, next);
    false
}

/// Where a batch-1 product reads the `w` columns of one segment of `B`.
#[derive(Clone, Copy)]
enum Strip<'a, T> {
    /// In place: row-major, row stride `ld`.
    Plain(&'a [T], usize),
    /// The segment's [`NR`]-column panels (`k` rows each, zero-padded), [`panel_stride`] apart.
    Packed(&'a [T], usize),
}

impl<'a, T> Strip<'a, T> {
    /// The strip from column `c0` (a multiple of [`NR`]) on.
    fn skip(self, c0: usize) -> Self {
        match self {
            Strip::Plain(d, ld) => Strip::Plain(&d[c0..], ld),
            Strip::Packed(d, stride) => Strip::Packed(&d[c0 / NR * stride..], stride),
        }
    }

    /// The data from column `c0` (a multiple of [`NR`]), its row stride, and the distance between
    /// its 16-column vectors.
    fn at(self, c0: usize) -> (&'a [T], usize, usize) {
        match self {
            Strip::Plain(d, ld) => (&d[c0..], ld, NR),
            Strip::Packed(d, stride) => (&d[c0 / NR * stride..], NR, stride),
        }
    }
}

/// One row of `A` times `w` columns of `B`, in strips of [`WIDE`] columns (then 32 and 16 on
/// AVX-512): every column is summed in the same order whether `B` is in place or packed.
#[inline]
fn run_strip<T: Float>(
    a: &[T],
    kr: &Range<usize>,
    b: Strip<'_, T>,
    w: usize,
    c: &mut [T],
    accumulate: bool,
) {
    let mut c0 = 0;
    // Strips of 64 columns (AVX2+FMA or AVX-512), then on AVX-512 of 32 and 16 (two accumulators
    // per vector, for even and odd `k`: one chain of dependent FMAs per vector waited on the
    // FMA latency).
    #[cfg(target_arch = "x86_64")]
    {
        let isa = active();
        let widths: &[usize] = match isa {
            Isa::Avx512 => &[WIDE, 2 * NR, NR],
            Isa::Avx2Fma => &[WIDE],
            Isa::Portable => &[],
        };
        if let (false, Some(a32), Some(c32)) =
            (widths.is_empty(), T::slice_f32(a), T::slice_f32_mut(c))
        {
            for &width in widths {
                while c0 + width <= w {
                    let (bs, ldb, vs) = b.at(c0);
                    let (Some(bs), Some(cs)) = (
                        T::slice_f32(bs).and_then(|bs| bs.get(kr.start * ldb..)),
                        c32.get_mut(c0..),
                    ) else {
                        break;
                    };
                    // SAFETY: the CPU has AVX2 and FMA, and AVX-512F where `isa` says so
                    // (checked by `active`); strips narrower than WIDE only with AVX-512F.
                    let done = unsafe {
                        match (isa, width) {
                            (Isa::Avx512, WIDE) => {
                                super::simd512::strip::<4>(a32, kr, bs, ldb, vs, cs, accumulate)
                            }
                            (Isa::Avx512, 32) => {
                                super::simd512::strip::<2>(a32, kr, bs, ldb, vs, cs, accumulate)
                            }
                            (Isa::Avx512, _) => {
                                super::simd512::strip::<1>(a32, kr, bs, ldb, vs, cs, accumulate)
                            }
                            _ => super::simd::strip(a32, kr, bs, ldb, vs, cs, accumulate),
                        }
                    };
                    if !done {
                        break;
                    }
                    c0 += width;
                }
            }
        }
    }
    // The columns left (all of them without SIMD kernels; AVX2 columns past the 64-column
    // strips), 16 at a time.
    while c0 < w {
        let cw = NR.min(w - c0);
        let (bs, ldb, _) = b.at(c0);
        #[cfg(target_arch = "x86_64")]
        if active() >= Isa::Avx2Fma {
            // Up to 16 columns (on AVX-512 only the last ones of a segment that is not a
            // multiple of 16 wide come here), even and odd `k` summed apart.
            if let (Some(a32), Some(bs), Some(cs)) = (
                T::slice_f32(a),
                T::slice_f32(bs).and_then(|bs| bs.get(kr.start * ldb..)),
                T::slice_f32_mut(&mut c[c0..]),
            ) {
                // SAFETY: the CPU has AVX2 and FMA, and AVX-512F where `active` says so.
                let done = unsafe {
                    if active() == Isa::Avx512 {
                        super::simd512::strip_tail(a32, kr, bs, ldb, cw, cs, accumulate)
                    } else {
                        super::simd::strip_tail(a32, kr, bs, ldb, cw, cs, accumulate)
                    }
                };
                if done {
                    c0 += cw;
                    continue;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if active() >= Isa::Avx2Fma {
            // SAFETY: the CPU has AVX2 and FMA (checked by `active`).
            unsafe { strip_avx2_fma(a, kr, bs, ldb, cw, &mut c[c0..], accumulate) };
            c0 += cw;
            continue;
        }
        strip_kernel::<T, false>(a, kr, bs, ldb, cw, &mut c[c0..], accumulate);
        c0 += cw;
    }
}

/// Columns per strip of the batch-1 SIMD kernels.
const WIDE: usize = 64;

/// [`super::simd512::strip_gates`] for one strip width.
#[cfg(target_arch = "x86_64")]
type StripGates =
    unsafe fn(&[f32], &Range<usize>, [&[f32]; 3], usize, usize, &mut [f32], usize) -> bool;

/// The multiple of which a run of columns must start for [`run_strip`] to sum each of its
/// columns as a run from column 0 does ([`Rhs::row_cols`]). The AVX2 64-column strips sum `k`
/// in order while its narrower tails sum even and odd `k` apart, so with AVX2 kernels on `f32`
/// a run must start where a 64-column strip would; every other build (AVX-512's strips of 64,
/// 32 and 16 and its tails alike, the portable and `f64` kernels 16 columns at a time) sums a
/// column the same way in any strip.
pub(crate) fn strip_granule<T: Float>() -> usize {
    #[cfg(target_arch = "x86_64")]
    if active() == Isa::Avx2Fma && T::slice_f32(&[T::zero()]).is_some() {
        return WIDE;
    }
    NR
}

std::thread_local! {
    /// Whether this thread's next batch-1 product on a packed `B` takes its segments last to
    /// first. A recurrent step reads all of `U`, in the same order every step; where `U` is
    /// about the size of L1 (S: 64 units, 48 KiB), least-recently-used replacement then evicts
    /// each line just before it is read again, and every step streams `U` from L2. Taking the
    /// segments in alternate orders starts each step with the lines the last one read last. The
    /// order of the segments (gates) changes no sum. S forward (1, 100, 32, 64), one process:
    /// 0.0856 against 0.0958 ms; 48, 96 and 128 units ±0. Only products of two or more
    /// segments turn the order over: a `reset_after = false` step of fewer than 64 units runs
    /// two products (z and r, then the candidate's one segment), and were both to turn it, z and
    /// r would come in the same order every step (S with `reset_after = false`: 0.0797 against
    /// 0.0831 ms). From 64 units such a step takes its three segments one at a time, in orders
    /// of its own (`gru::reset_before_one`).
    static STRIP_ORDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn strip_avx2_fma<T: Float>(
    a: &[T],
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    accumulate: bool,
) {
    strip_kernel::<T, true>(a, kr, b, ldb, w, c, accumulate);
}

/// One row of `A` times `w ≤ NR` columns of `B` (row stride `ldb`), each column summed over `k`
/// in order.
#[inline(always)]
fn strip_kernel<T: Float, const FMA: bool>(
    a: &[T],
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    accumulate: bool,
) {
    let b = &b[kr.start * ldb..];
    let mut acc = [T::zero(); NR];
    for (kk, av) in a[kr.clone()].iter().enumerate() {
        let bv = &b[kk * ldb..kk * ldb + w];
        for (s, bv) in acc.iter_mut().zip(bv) {
            *s = madd::<T, FMA>(*av, *bv, *s);
        }
    }
    store(&mut c[..w], &acc[..w], accumulate);
}

/// `dst[j·rows + i] = src[i·ld + c0 + j]` for `i` in `rs` and `j` in `cs`, element by element:
/// the edges of [`transpose_cols`]' register-block kernels (AVX-512's 16 × 16 and AVX2's 8 × 8
/// blocks leave the same kinds of edges: columns past the last whole block of each block of rows,
/// and the rows past the last whole block).
pub(super) fn transpose_edge(
    src: &[f32],
    ld: usize,
    c0: usize,
    rs: Range<usize>,
    cs: Range<usize>,
    dst: &mut [f32],
    rows: usize,
) {
    for j in cs {
        for i in rs.clone() {
            dst[j * rows + i] = src[i * ld + c0 + j];
        }
    }
}

/// `dst` (`nc × rows`, row-major) = the transpose of columns `c0..c0 + nc` of `src` (`rows`
/// rows of stride `ld`), by 16 × 16 register transposes on AVX-512 and 8 × 8 ones on AVX2
/// (`f32`); `false`, having done nothing, on other CPUs and types or if a slice is short.
pub(crate) fn transpose_cols<T: Float>(
    src: &[T],
    ld: usize,
    rows: usize,
    c0: usize,
    nc: usize,
    dst: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    let isa = active();
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2Fma {
        if let (Some(s), Some(d)) = (T::slice_f32(src), T::slice_f32_mut(dst)) {
            // SAFETY: the CPU has AVX-512F where `isa` says so, else AVX2 and FMA (checked by
            // `active`), the functions' only requirements.
            return unsafe {
                if isa == Isa::Avx512 {
                    super::simd512::transpose_cols(s, ld, rows, c0, nc, d)
                } else {
                    super::simd::transpose_cols(s, ld, rows, c0, nc, d)
                }
            };
        }
    }
    let _ = (src, ld, rows, c0, nc, dst);
    false
}

/// Asks for the cache line holding `v[0]` to be brought into L1 (nothing on other CPUs, or for
/// an empty slice): for data read soon at addresses the hardware prefetchers cannot guess.
#[inline(always)]
pub(crate) fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.first() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing into registers and never
        // faults (and the address is that of a live element anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(x).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// `c += acc` or `c = acc`: how every kernel writes its results into `C`.
#[inline(always)]
pub(crate) fn store<T: Float>(c: &mut [T], acc: &[T], accumulate: bool) {
    if accumulate {
        c.iter_mut().zip(acc).for_each(|(d, v)| *d += *v);
    } else {
        c.copy_from_slice(acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn panel_avx2_fma<T: Float>(
    m: usize,
    a: &[T],
    lda: usize,
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    panel_kernel::<T, true>(m, a, lda, kr, b, ldb, w, c, ldc, accumulate);
}

/// Rows of `A` per register tile: 4 × 16 `f32` accumulators fill 8 of the 16 AVX registers;
/// `f64` takes half as many rows.
fn mr<T>() -> usize {
    if std::mem::size_of::<T>() > 4 {
        2
    } else {
        4
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn panel_kernel<T: Float, const FMA: bool>(
    m: usize,
    a: &[T],
    lda: usize,
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    let b = &b[kr.start * ldb..];
    let mr = mr::<T>();
    let mut i = 0;
    while i < m {
        let rows = tile_rows(m, i, mr);
        let a = &a[i * lda..];
        let c = &mut c[i * ldc..];
        if w == NR {
            match rows {
                4 => tile::<T, 4, FMA>(a, lda, kr, b, ldb, c, ldc, accumulate),
                3 => tile::<T, 3, FMA>(a, lda, kr, b, ldb, c, ldc, accumulate),
                2 => tile::<T, 2, FMA>(a, lda, kr, b, ldb, c, ldc, accumulate),
                _ => tile::<T, 1, FMA>(a, lda, kr, b, ldb, c, ldc, accumulate),
            }
        } else {
            for r in 0..rows {
                edge_row::<T, FMA>(&a[r * lda..], kr, b, ldb, w, &mut c[r * ldc..], accumulate);
            }
        }
        i += rows;
    }
}

/// `C[0..R, 0..NR] (+)= A[0..R, kr] · B[0..|kr|, 0..NR]` in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Float, const R: usize, const FMA: bool>(
    a: &[T],
    lda: usize,
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    let klen = kr.len();
    let rows: [&[T]; R] = std::array::from_fn(|i| &a[i * lda + kr.start..i * lda + kr.end]);
    let mut acc = [[T::zero(); NR]; R];
    for kk in 0..klen {
        let bv = &b[kk * ldb..kk * ldb + NR];
        for i in 0..R {
            let av = rows[i][kk];
            for j in 0..NR {
                acc[i][j] = madd::<T, FMA>(av, bv[j], acc[i][j]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        store(&mut c[i * ldc..i * ldc + NR], acc, accumulate);
    }
}

/// A panel narrower than [`NR`] (only when `B` is read in place), one row of `A`.
#[inline(always)]
fn edge_row<T: Float, const FMA: bool>(
    a: &[T],
    kr: &Range<usize>,
    b: &[T],
    ldb: usize,
    w: usize,
    c: &mut [T],
    accumulate: bool,
) {
    let mut acc = [T::zero(); NR];
    for (kk, av) in a[kr.clone()].iter().enumerate() {
        let bv = &b[kk * ldb..kk * ldb + w];
        for (s, bv) in acc.iter_mut().zip(bv) {
            *s = madd::<T, FMA>(*av, *bv, *s);
        }
    }
    store(&mut c[..w], &acc[..w], accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gemm::gemm;

    fn ramp(n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64) * s).sin()).collect()
    }

    /// The vectorized packing (AVX-512 `f32`; elsewhere `pack_into` is the portable copy) writes
    /// what the element-by-element copy writes: tiles of every size (ragged `m`), depths with and
    /// without a remainder past multiples of 16, a k-range that starts inside the rows.
    #[test]
    fn packing_matches_the_portable_copy() {
        for &m in &[1usize, 2, 7, 15, 16, 17, 31, 33, 50, 64] {
            for &(k0, k1) in &[
                (0usize, 0usize),
                (0, 5),
                (0, 16),
                (3, 40),
                (1, 65),
                (0, 128),
            ] {
                let kr = k0..k1;
                let lda = k1 + 3;
                let a: Vec<f32> = ramp(m * lda, 0.37).iter().map(|&v| v as f32).collect();
                let len = m * kr.len();
                let (mut got, mut want) = (vec![-1f32; len + 3], vec![-1f32; len + 3]);
                Lhs::pack_into(&a, lda, m, &kr, &mut got);
                Lhs::pack_portable(&a, lda, m, &kr, &mut want);
                assert_eq!(got, want, "m = {m}, k = {kr:?}");
            }
        }
    }

    /// Every path (packed / in place, transposed source, partial k, gate runs, accumulate,
    /// threads, ragged widths and row counts) against the GEMM crate.
    fn check_against_reference<T: Float>(tol: f64) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(m, k, seg) in &[
            (1, 5, 3),
            (2, 70, 130),
            (1, 64, 64),
            (3, 17, 16),
            (5, 33, 40),
            (7, 64, 64),
            (9, 130, 100),
            (32, 256, 256),
            // Packed, 4.4 MiB (f32): larger than the caches are taken to hold, so the kernel
            // prefetches each next block and panel (k in three blocks, the last one short).
            (16, 600, 600),
            // Packed, 2.6 MiB (f32): on AVX-512 the left operand is packed and full panels go
            // in pairs (the last panel of each segment, 10 wide, alone).
            (20, 520, 410),
        ] {
            let segs = 3;
            let n = seg * segs;
            let bmat: Vec<T> = ramp(k * n, 0.37).into_iter().map(T::of).collect();
            let bt: Vec<T> = (0..n * k).map(|i| bmat[(i % k) * n + i / k]).collect();
            let a: Vec<T> = ramp(m * (k + 2), 0.11).into_iter().map(T::of).collect();
            let lda = k + 2;
            for packed in [false, true] {
                for transposed in [false, true] {
                    if transposed && !packed {
                        continue;
                    }
                    let mut pk = PackedRhs::new();
                    let src = if transposed {
                        Operand::new(&bt[..], k).t()
                    } else {
                        Operand::new(&bmat[..], n)
                    };
                    pk.pack(src, k, seg, segs);
                    let streamed =
                        packed && pk.len() * std::mem::size_of::<T>() >= STREAMED_MIN_BYTES;
                    let rhs = if packed {
                        Rhs::Packed(&pk)
                    } else {
                        Rhs::Plain {
                            data: &bmat,
                            ld: n,
                            seg,
                        }
                    };
                    let next = rhs.upcoming(&(0..3), 1, &(0..2));
                    assert_eq!(next.is_some_and(|n| !n.is_empty()), streamed);
                    let past = rhs.upcoming(&(0..3), 2, &(0..2));
                    assert_eq!(past.map(<[T]>::len), streamed.then_some(0));
                    for (kr, sr) in [(0..k, 0..3), (1..k, 1..3), (k / 2..k, 2..3)] {
                        for accumulate in [false, true] {
                            for threads in [1, 3] {
                                let mut c = vec![T::of(0.5); m * n];
                                let mut scratch = Vec::new();
                                pool.install(|| {
                                    rhs.matmul(
                                        m,
                                        &a,
                                        lda,
                                        kr.clone(),
                                        sr.clone(),
                                        &mut c,
                                        n,
                                        accumulate,
                                        threads,
                                        &mut scratch,
                                    )
                                });
                                let mut want = vec![T::of(0.5); m * n];
                                let (c0, c1) = (sr.start * seg, sr.end * seg);
                                gemm(
                                    m,
                                    c1 - c0,
                                    kr.len(),
                                    T::one(),
                                    Operand::new(&a[kr.start..], lda),
                                    Operand::new(&bmat[kr.start * n + c0..], n),
                                    accumulate,
                                    &mut want[c0..],
                                    n,
                                    1,
                                );
                                for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                                    assert!(
                                        (x.f64() - y.f64()).abs() < tol,
                                        "m={m} k={k} seg={seg} packed={packed} t={transposed} \
                                         kr={kr:?} segs={sr:?} acc={accumulate} th={threads} \
                                         at {i}: {x} vs {y}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matches_reference_gemm_f64() {
        check_against_reference::<f64>(1e-12);
    }

    /// `f32` takes the AVX2 + FMA tiles where the CPU has them.
    #[test]
    fn matches_reference_gemm_f32() {
        check_against_reference::<f32>(2e-4);
    }

    /// Packing split between threads writes exactly what one thread writes (both layouts,
    /// ragged last panels), and `is_finite` sees a NaN wherever it is.
    #[test]
    fn threaded_packing_matches_and_checks_finiteness() {
        let (k, seg, segs) = (1000, 700, 3);
        let mut b: Vec<f32> = ramp(k * seg * segs, 0.01)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for transposed in [false, true] {
            // Same shape either way: k × segs·seg (transposed: stored as its transpose).
            fn src(b: &[f32], transposed: bool, k: usize, n: usize) -> Operand<'_, f32> {
                if transposed {
                    Operand::new(b, k).t()
                } else {
                    Operand::new(b, n)
                }
            }
            let n = seg * segs;
            let mut one = PackedRhs::new();
            one.pack(src(&b, transposed, k, n), k, seg, segs);
            assert!(one.len() >= PAR_MIN_PACK && one.is_finite());
            let mut three = PackedRhs::new();
            pool.install(|| three.pack_with_threads(src(&b, transposed, k, n), k, seg, segs, 3));
            let len = seg.div_ceil(NR) * segs * panel_stride(k);
            assert!(
                one.panels()[..len] == three.panels()[..len],
                "transposed={transposed}"
            );
            assert!(three.is_finite());
            b[k * seg * segs - 5] = f32::NAN;
            pool.install(|| three.pack_with_threads(src(&b, transposed, k, n), k, seg, segs, 3));
            assert!(!three.is_finite(), "transposed={transposed}");
            b[k * seg * segs - 5] = 0.5;
        }
    }

    /// Batch 1 gives the same bits from packed panels as from `B` in place: the strips read the
    /// panels' vectors in the same order (full 64-column strips and the narrower rest), whichever
    /// order the segments are taken in.
    fn batch_one_packed_matches_in_place<T: Float>() {
        for &(k, seg) in &[(5, 3), (64, 64), (70, 100), (33, 130), (256, 200)] {
            let n = 3 * seg;
            let b: Vec<T> = ramp(k * n, 0.37).into_iter().map(T::of).collect();
            let a: Vec<T> = ramp(k + 2, 0.11).into_iter().map(T::of).collect();
            let mut pk = PackedRhs::new();
            pk.pack(Operand::new(&b[..], n), k, seg, 3);
            let plain = Rhs::Plain {
                data: &b,
                ld: n,
                seg,
            };
            for (kr, sr) in [(0..k, 0..3), (1..k, 1..3), (k / 2..k, 2..3)] {
                for accumulate in [false, true] {
                    let mut want = vec![T::of(0.5); n];
                    let mut got = want.clone();
                    plain.matmul(
                        1,
                        &a,
                        k,
                        kr.clone(),
                        sr.clone(),
                        &mut want,
                        n,
                        accumulate,
                        1,
                        &mut Vec::new(),
                    );
                    // Twice: consecutive products take the segments in opposite orders
                    // (`STRIP_ORDER`), with the same bits.
                    let first = got.clone();
                    for _ in 0..2 {
                        got.copy_from_slice(&first);
                        Rhs::Packed(&pk).matmul(
                            1,
                            &a,
                            k,
                            kr.clone(),
                            sr.clone(),
                            &mut got,
                            n,
                            accumulate,
                            1,
                            &mut Vec::new(),
                        );
                        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                x.f64().to_bits() == y.f64().to_bits(),
                                "k={k} seg={seg} at {i}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn batch_one_packed_matches_in_place_f32() {
        batch_one_packed_matches_in_place::<f32>();
    }

    #[test]
    fn batch_one_packed_matches_in_place_f64() {
        batch_one_packed_matches_in_place::<f64>();
    }

    #[test]
    fn f32_kernel_is_accurate() {
        let (m, k, seg) = (6, 300, 50);
        let b: Vec<f32> = ramp(k * seg, 0.3).iter().map(|&v| v as f32).collect();
        let a: Vec<f32> = ramp(m * k, 0.7).iter().map(|&v| v as f32).collect();
        let mut pk = PackedRhs::new();
        pk.pack(Operand::new(&b[..], seg), k, seg, 1);
        let mut c = vec![0f32; m * seg];
        Rhs::Packed(&pk).matmul(m, &a, k, 0..k, 0..1, &mut c, seg, false, 1, &mut Vec::new());
        for i in 0..m {
            for j in 0..seg {
                let want: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * seg + j] as f64)
                    .sum();
                assert!((c[i * seg + j] as f64 - want).abs() < 1e-4);
            }
        }
    }
}
