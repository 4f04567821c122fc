//! AVX-512F register tiles for the `f32` recurrent products (x86-64 only).
//!
//! The same products as [`super::simd`] with 16-lane registers: a [`NR`]-column panel row is one
//! register, so a tile holds up to 16 rows (16 accumulators of the 32 registers; at least 8 are
//! needed to hide the FMA latency at two FMAs per cycle) and the batch-1 strip keeps two sets of
//! four accumulators, for even and odd `k`. A panel's tile sums `k` in the same order as the AVX2
//! tile, so both give the same bits; the strip's two halves change the order (round-off only).
//! They are called only after [`super::isa::active`] has reported AVX-512F. Every raw load is
//! preceded by a bounds check of the whole range it reads, made once per tile; a failed check
//! returns `false` and the caller uses another kernel.

use super::packed::{block_depth, store, tile_rows, transpose_edge, LHS_TILE_ROWS, NR};
use super::simd::WIDE;
use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_unpackhi_pd,
    _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps, _mm_prefetch, _MM_HINT_T0,
    _MM_HINT_T1,
};
use std::ops::Range;

/// Most rows per tile: 16 accumulators leave registers for `B` and the broadcasts.
const MAX_ROWS: usize = LHS_TILE_ROWS;

/// `C[0..m, 0..16] (+)= A[0..m, kr] · B[0..|kr|, 0..16]` for one full-width panel (`B` already
/// offset to row `kr.start`). Returns `false`, having done nothing, if a slice is too short.
///
/// `at`: `A[0..m, kr]` packed (see `packed::Lhs`), read instead of the rows of `a` when given
/// and long enough. `next`: what to request ahead while computing, as in
/// [`super::simd::panel`].
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) fn panel(
    m: usize,
    a: &[f32],
    lda: usize,
    at: Option<&[f32]>,
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    next: Option<&[f32]>,
) -> bool {
    let klen = kr.len();
    if m == 0 {
        return true;
    }
    let fits = klen == 0 || b.len() >= (klen - 1) * ldb + NR;
    if !fits || a.len() < (m - 1) * lda + kr.end || c.len() < (m - 1) * ldc + NR {
        return false;
    }
    let at = at.filter(|t| klen > 0 && t.len() >= m * klen);
    let depth = block_depth(klen);
    let mut k0 = kr.start;
    loop {
        let k1 = (k0 + depth).min(kr.end);
        let (kb, bk) = (k0..k1, &b[(k0 - kr.start) * ldb..]);
        let acc = accumulate || k0 > kr.start;
        let ahead = super::simd::ahead(b, ldb, kr, k1, depth, next);
        let lines = ahead.len() / NR;
        let mut i = 0;
        while i < m {
            let (a, c) = (&a[i * lda..], &mut c[i * ldc..]);
            let rows = tile_rows(m, i, MAX_ROWS);
            let pf = &ahead[lines * i / m * NR..lines * (i + rows) / m * NR];
            macro_rules! tiles {
                ($($r:literal)*) => {
                    match (rows, at) {
                        $(($r, None) => {
                            tile::<$r, false>(a, lda, &kb, bk, ldb, c, ldc, acc, pf)
                        })*
                        (_, None) => {
                            tile::<MAX_ROWS, false>(a, lda, &kb, bk, ldb, c, ldc, acc, pf)
                        }
                        // This tile's block: from row i, k0, stride `rows`.
                        $(($r, Some(t)) => {
                            let t = &t[i * klen + (k0 - kr.start) * $r..];
                            tile::<$r, true>(t, $r, &kb, bk, ldb, c, ldc, acc, pf)
                        })*
                        (_, Some(t)) => {
                            let t = &t[i * klen + (k0 - kr.start) * MAX_ROWS..];
                            tile::<MAX_ROWS, true>(t, MAX_ROWS, &kb, bk, ldb, c, ldc, acc, pf)
                        }
                    }
                };
            }
            i += tiles!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
        if k1 >= kr.end {
            return true;
        }
        k0 = k1;
    }
}

/// One `R × 16` tile over the `k` of `kr`; returns `R`. Bounds were checked by [`panel`].
/// `A` is read from its rows (`a` indexed by absolute `k`, row stride `lda`) or, when `PACKED`,
/// from the tile's packed block (`a` offset to it, the tile's `R` values for the `kk`-th `k` of
/// `kr` at `a[kk·R..][..R]`, `lda = R`): the same sums in the same order, but the packed
/// broadcasts are fixed offsets from one pointer. Requests the cache line at every `NR`-th float
/// of `pf`, one per row of `k`, until `pf` is done.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize, const PACKED: bool>(
    a: &[f32],
    lda: usize,
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    pf: &[f32],
) -> usize {
    let klen = kr.len();
    // Local proofs for the unchecked reads below (panics only if `panel` let a bad call through).
    let a = if PACKED {
        &a[..klen * R]
    } else {
        &a[..(R - 1) * lda + kr.end]
    };
    let b = if klen == 0 {
        b
    } else {
        &b[..(klen - 1) * ldb + NR]
    };
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
    let (pfp, pf_lines) = (pf.as_ptr(), pf.len() / NR);
    for kk in 0..klen {
        if kk < pf_lines {
            // In bounds (kk·NR < pf.len()); a prefetch reads nothing into registers and never
            // faults.
            _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(kk * NR).cast::<i8>());
        }
        // SAFETY: kk·ldb + 16 ≤ (klen − 1)·ldb + 16 = b.len() (sliced above).
        let bv = unsafe { _mm512_loadu_ps(bp.add(kk * ldb)) };
        // Where row i's value for this k is: kk·R + i packed, i·lda + kr.start + kk from rows.
        let (first, step) = if PACKED {
            (kk * R, 1)
        } else {
            (kr.start + kk, lda)
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: packed, kk·R + i < klen·R; from rows, i·lda + kr.start + kk <
            // (R − 1)·lda + kr.end; either is a.len() (sliced above).
            let av = _mm512_set1_ps(unsafe { *ap.add(first + i * step) });
            *acc = _mm512_fmadd_ps(av, bv, *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let mut out = [0f32; NR];
        // SAFETY: `out` holds 16 floats, what one store writes.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), *acc) };
        store(&mut c[i * ldc..i * ldc + NR], &out, accumulate);
    }
    R
}

/// Packs `A[0..m, kr]` (rows of stride `lda`) into `dst[..m·|kr|]` in the layout of
/// `packed::Lhs` (tiles of [`tile_rows`] rows, each k-major), the same values as the portable
/// `Lhs::pack_into` writes: 16 values of `k` of the tile's rows at a time are transposed in
/// registers and stored as 16 contiguous runs of the tile's rows (masked to `R < 16` rows).
/// The element-by-element copy gathers one value from each of 16 rows per 16 stores, at best
/// about one value per cycle, and its rows a multiple of 4 KiB apart share an L1 set.
/// Returns `false`, having done nothing, if a slice is too short.
#[target_feature(enable = "avx512f")]
pub(super) fn pack_lhs(
    a: &[f32],
    lda: usize,
    m: usize,
    kr: &Range<usize>,
    dst: &mut [f32],
) -> bool {
    let klen = kr.len();
    if m == 0 || klen == 0 {
        return true;
    }
    if a.len() < (m - 1) * lda + kr.end || dst.len() < m * klen {
        return false;
    }
    let mut i0 = 0;
    while i0 < m {
        let r = tile_rows(m, i0, LHS_TILE_ROWS);
        let tile = &mut dst[i0 * klen..(i0 + r) * klen];
        // Rows past the tile's `r` repeat its first row (loaded, never stored).
        let rows: [&[f32]; 16] = std::array::from_fn(|i| {
            let at = (i0 + if i < r { i } else { 0 }) * lda + kr.start;
            &a[at..at + klen]
        });
        let mask: u16 = if r >= 16 { u16::MAX } else { (1u16 << r) - 1 };
        let tp = tile.as_mut_ptr();
        let mut k = 0;
        while k + 16 <= klen {
            // SAFETY: k + 16 ≤ klen = every row's length.
            let mut v: [__m512; 16] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(rows[i].as_ptr().add(k)) });
            transpose16(&mut v);
            for (j, v) in v.iter().enumerate() {
                // SAFETY: the mask writes r floats from (k + j)·r, and (k + j + 1)·r ≤ klen·r =
                // tile.len().
                unsafe { _mm512_mask_storeu_ps(tp.add((k + j) * r), mask, *v) };
            }
            k += 16;
        }
        for kk in k..klen {
            for (i, row) in rows[..r].iter().enumerate() {
                tile[kk * r + i] = row[kk];
            }
        }
        i0 += r;
    }
    true
}

/// `dst[j·rows + r] = src[r·ld + c0 + j]` for `r < rows`, `j < nc`: columns `c0..c0 + nc` of
/// `src` (`rows` rows of stride `ld`) written as the rows of `dst` (`nc × rows`, row-major).
/// Blocks of 16 × 16 are transposed in registers (16 loads and 16 stores of whole vectors),
/// the edges copied element by element. Returns `false`, having done nothing, if a slice is
/// too short.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose_cols(
    src: &[f32],
    ld: usize,
    rows: usize,
    c0: usize,
    nc: usize,
    dst: &mut [f32],
) -> bool {
    if rows == 0 || nc == 0 {
        return true;
    }
    if src.len() < (rows - 1) * ld + c0 + nc || dst.len() < nc * rows {
        return false;
    }
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let mut r = 0;
    while r + 16 <= rows {
        let mut j = 0;
        while j + 16 <= nc {
            // SAFETY: (r + i)·ld + c0 + j + 16 ≤ (rows − 1)·ld + c0 + nc ≤ src.len().
            let mut v: [__m512; 16] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(sp.add((r + i) * ld + c0 + j)) });
            transpose16(&mut v);
            for (jj, v) in v.iter().enumerate() {
                // SAFETY: (j + jj)·rows + r + 16 ≤ (nc − 1)·rows + rows ≤ dst.len().
                unsafe { _mm512_storeu_ps(dp.add((j + jj) * rows + r), *v) };
            }
            j += 16;
        }
        transpose_edge(src, ld, c0, r..r + 16, j..nc, dst, rows);
        r += 16;
    }
    transpose_edge(src, ld, c0, r..rows, 0..nc, dst, rows);
    true
}

/// Transposes the 16 × 16 matrix whose rows are `v` in place.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(v: &mut [__m512; 16]) {
    let mut t: [__m512; 16] = [_mm512_setzero_ps(); 16];
    // Interleave pairs of rows (32-bit elements), then pairs of pairs (64-bit), then the
    // 128-bit lanes twice.
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    let (lo, hi) = (
        |a: __m512, b: __m512| {
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        },
        |a: __m512, b: __m512| {
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        },
    );
    for q in 0..4 {
        let b = 4 * q;
        v[b] = lo(t[b], t[b + 2]);
        v[b + 1] = hi(t[b], t[b + 2]);
        v[b + 2] = lo(t[b + 1], t[b + 3]);
        v[b + 3] = hi(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for j in 0..4 {
            t[b + j] = _mm512_shuffle_f32x4::<0x88>(v[b + j], v[b + 4 + j]);
            t[b + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(v[b + j], v[b + 4 + j]);
        }
    }
    for j in 0..8 {
        v[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        v[8 + j] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[8 + j]);
    }
}

/// `P` (1 to 3) full-width packed panels against one packed left operand (see `packed::Lhs`):
/// `C_p (+)= A[0..m, kr] · B_p (+ bias_p)` for each `p`, panel `p` row stride [`NR`] and offset
/// to row `kr.start`, element `(i, j)` of `C_p` at `c[os[p] + i·ldc + j]` (they must not
/// overlap). Each value of `A` is broadcast once for all `P` panels. k-blocks of `depth`: each
/// element is `((C +) (A·B)[block 0] + (A·B)[block 1]) + … + bias`, each block's products
/// summed in `k` order from zero, and the bias added last, in the order `add_bias_rows` adds it
/// after a product. With `depth = block_depth(|kr|)` and no bias every element is exactly what
/// [`panel`] computes for its panel alone. While a block runs, the next one (of these panels, or
/// else the first of `next`, the panels computed after these) is requested into L2, a share in
/// each row tile, and the half tile that reads a block first requests its lines into L1
/// [`NEAR_AHEAD`] values of `k` before it reads them (the other halves find them there).
/// Returns `false`, having done nothing, if a slice is short.
///
/// With `P = 3` a half tile keeps 8 × 3 accumulators, and each `k` costs 8 broadcasts and 3
/// loads for 24 FMAs instead of 8 and 2 for 16 with `P = 2`. Measured on an AVX-512 Xeon
/// (one thread, packed operands, `depth` = 128): 208 × 1024 · 1024 × 3072 (XL's projection, `B`
/// from L3) 145–147 GFLOP/s against 127–129 for pairs; 240 × 512 · 512 × 48 (all in cache)
/// 171 (98 % of the core's peak) against 143.
///
/// The block ahead went into L1 until the near requests were added: where one tile of 16 rows
/// reads each block (a team's step of 16 batch rows), the block ahead and the block being read
/// did not fit L1 together, and a third of the block ahead was never requested. Two threads,
/// alternated in one process: XL forward −2 to −2.5 %, (16, 50, 512, 1024) −3 %, M forward
/// −1 %, L training −1 %; the same with 4 or 12 values ahead, and 1–2 % less with the block
/// ahead still into L1.
///
/// A tile of up to 8 rows runs whole. Every tile used to run in two halves, so a product of 2
/// rows was two passes of one row, 3 chains of dependent FMAs each, each pass loading every
/// panel vector. And kernels of 4 MiB or more (streamed) went panel by panel below 16 rows
/// (`R` chains), as groups of halved tiles had lost there on the Xeon (+3–4 % at 4 and 8
/// rows); they now take groups at any number of rows. Inference (B, T, D, u), one thread,
/// medians of 1.2–2 s in alternation on the AMD EPYC Zen 4 VM, before → after:
/// (2, 100, 32, 256) 1.91 → 1.21 ms, (3, 100, 32, 256) 2.04 → 1.51, (4, 100, 32, 256) 2.29 →
/// 1.93, (6, 100, 32, 256) −3 to −5 %, (8, 100, 32, 256) ±2 %, (2, 100, 64, 128) 0.524 →
/// 0.409, (4, 50, 64, 512) 4.45 → 3.69; streamed, (2, 50, 64, 1024) 14.1 → 11.5–12.4 ms,
/// (2, 50, 64, 768) 7.9–8.2 → 6.1–6.3, (4, 50, 64, 768) −6 to −10 %, 5 to 12 rows −3 to +2 %;
/// two threads (the team's fused steps group too), 4 to 16 rows at 640 to 1024 units ±4 %.
/// Training too (`grucell bench --threads 1`): (2, 100, 32, 256) 4.98 → 3.75 ms,
/// (2, 50, 64, 512) 10.6 → 8.6.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) fn panel_group<const P: usize>(
    m: usize,
    at: &[f32],
    kr: &Range<usize>,
    depth: usize,
    bs: [&[f32]; P],
    c: &mut [f32],
    os: [usize; P],
    ldc: usize,
    accumulate: bool,
    bias: Option<[&[f32]; P]>,
    next: [&[f32]; P],
) -> bool {
    let klen = kr.len();
    if m == 0 {
        return true;
    }
    let cl = (m - 1) * ldc + NR;
    if klen == 0
        || depth == 0
        || at.len() < m * klen
        || bs.iter().any(|b| b.len() < klen * NR)
        || os.iter().any(|&o| c.len() < o + cl)
        || bias.is_some_and(|b| b.iter().any(|b| b.len() < NR))
    {
        return false;
    }
    let tiles = m.div_ceil(MAX_ROWS);
    let mut k0 = kr.start;
    loop {
        let k1 = (k0 + depth).min(kr.end);
        let (kl, o) = (k1 - k0, (k0 - kr.start) * NR);
        let bk: [&[f32]; P] = std::array::from_fn(|p| &bs[p][o..]);
        let acc = accumulate || k0 > kr.start;
        let last = k1 >= kr.end;
        let bias = if last { bias } else { None };
        // The block requested meanwhile, as `P` runs of whole lines (`lines` per panel).
        let ahead: [&[f32]; P] = std::array::from_fn(|p| {
            let b = if last {
                next[p]
            } else {
                &bs[p][(k1 - kr.start) * NR..]
            };
            &b[..b.len().min(depth * NR)]
        });
        let lines = ahead.iter().map(|b| b.len() / NR).min().unwrap_or(0);
        let mut i = 0;
        let mut tile = 0;
        while i < m {
            let rows = tile_rows(m, i, MAX_ROWS);
            let t = &at[i * klen + (k0 - kr.start) * rows..];
            // This tile's share of the lines ahead (line l of panel p is request l·P + p).
            let pf = lines * P * tile / tiles..lines * P * (tile + 1) / tiles;
            // At most 8 rows at a time: 8 × P accumulators, P panel vectors and a broadcast
            // fit the 32 registers for P ≤ 3. A tile of up to 8 rows runs whole (each `k`'s
            // panel vectors loaded once for all its rows), a larger one in two halves.
            let h1 = if rows <= 8 { rows } else { rows.div_ceil(2) };
            let mid = if h1 == rows {
                pf.end
            } else {
                pf.start + pf.len() / 2
            };
            let mut off = 0;
            for (h, pf) in [(h1, pf.start..mid), (rows - h1, mid..pf.end)] {
                let oh: [usize; P] = std::array::from_fn(|p| os[p] + (i + off) * ldc);
                // The first half tile of the block reads it from L2 (or beyond).
                let near = tile == 0 && off == 0;
                macro_rules! halves {
                    ($($r:literal)*) => {
                        match h {
                            0 => {}
                            $($r => tile_group::<$r, P>(
                                t, rows, off, kl, bk, c, oh, ldc, acc, bias, ahead, pf, near,
                            ),)*
                            _ => tile_group::<8, P>(
                                t, rows, off, kl, bk, c, oh, ldc, acc, bias, ahead, pf, near,
                            ),
                        }
                    };
                }
                halves!(1 2 3 4 5 6 7);
                off += h;
            }
            i += rows;
            tile += 1;
        }
        if last {
            return true;
        }
        k0 = k1;
    }
}

/// Values of `k` ahead at which the first half tile of a group kernel's block requests the
/// block's lines into L1 (see [`panel_group`]).
const NEAR_AHEAD: usize = 8;

/// `R` rows (from row `off` of a packed tile of `stride` rows) times `P` panels; requests lines
/// `pf` of `ahead` (line `l` of panel `p` is request `l·P + p`) into L2, one per `k`, and when
/// `near`, the panels' own lines [`NEAR_AHEAD`] values of `k` ahead into L1. Bounds were checked
/// by [`panel_group`].
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // registers by row and panel
fn tile_group<const R: usize, const P: usize>(
    a: &[f32],
    stride: usize,
    off: usize,
    klen: usize,
    bs: [&[f32]; P],
    c: &mut [f32],
    os: [usize; P],
    ldc: usize,
    accumulate: bool,
    bias: Option<[&[f32]; P]>,
    ahead: [&[f32]; P],
    pf: Range<usize>,
    near: bool,
) {
    // Local proofs for the unchecked reads below (panics only if `panel_group` let a bad call
    // through; klen ≥ 1 there).
    let a = &a[..(klen - 1) * stride + off + R];
    let bp: [*const f32; P] = std::array::from_fn(|p| bs[p][..klen * NR].as_ptr());
    let ap = a.as_ptr();
    let pfp: [*const f32; P] = std::array::from_fn(|p| ahead[p].as_ptr());
    let mut s: [[__m512; R]; P] = [[_mm512_setzero_ps(); R]; P];
    for kk in 0..klen {
        if near && kk + NEAR_AHEAD < klen {
            for p in 0..P {
                // Within panel p's block (kk + NEAR_AHEAD < klen); a prefetch reads nothing
                // into registers and never faults.
                _mm_prefetch::<_MM_HINT_T0>(
                    bp[p].wrapping_add((kk + NEAR_AHEAD) * NR).cast::<i8>(),
                );
            }
        }
        if kk < pf.len() {
            let l = pf.start + kk;
            // Within `ahead` (l / P < lines).
            _mm_prefetch::<_MM_HINT_T1>(pfp[l % P].wrapping_add(l / P * NR).cast::<i8>());
        }
        // SAFETY: kk·NR + 16 ≤ klen·NR = every panel's length (sliced above).
        let v: [__m512; P] =
            std::array::from_fn(|p| unsafe { _mm512_loadu_ps(bp[p].add(kk * NR)) });
        // SAFETY: kk·stride + off + R ≤ (klen − 1)·stride + off + R = a.len() (sliced above).
        let ak = unsafe { ap.add(kk * stride + off) };
        for i in 0..R {
            // SAFETY: i < R (see above).
            let av = _mm512_set1_ps(unsafe { *ak.add(i) });
            for p in 0..P {
                s[p][i] = _mm512_fmadd_ps(av, v[p], s[p][i]);
            }
        }
    }
    for p in 0..P {
        let bv = bias.map(|b| {
            // SAFETY: every bias slice holds at least 16 floats (checked by `panel_group`).
            unsafe { _mm512_loadu_ps(b[p].as_ptr()) }
        });
        for i in 0..R {
            let row = &mut c[os[p] + i * ldc..os[p] + i * ldc + NR];
            let mut v = s[p][i];
            if accumulate {
                // SAFETY: `row` holds 16 floats.
                v = _mm512_add_ps(unsafe { _mm512_loadu_ps(row.as_ptr()) }, v);
            }
            if let Some(bv) = bv {
                v = _mm512_add_ps(v, bv);
            }
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr(), v) };
        }
    }
}

/// One row of `A` times the last `w < 16` columns of a segment of `B` (offset to row `kr.start`
/// and to the first of those columns, row stride `ldb`), as [`strip`] sums them (even and odd
/// `k` apart, then added) but reading only those `w` columns (masked loads), so it serves `B`
/// in place and packed alike. Before, such columns were one chain of dependent FMAs each.
/// Returns `false` if a slice is too short.
#[target_feature(enable = "avx512f")]
pub(super) fn strip_tail(
    a: &[f32],
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    w: usize,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    let klen = kr.len();
    let fits = klen == 0 || b.len() >= (klen - 1) * ldb + w;
    if w == 0 || w >= NR || !fits || a.len() < kr.end || c.len() < w {
        return false;
    }
    let a = &a[kr.clone()];
    let bp = b.as_ptr();
    // Lanes w..16 are neither read nor written.
    let mask: __mmask16 = (1u16 << w) - 1;
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let pairs = a.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (p, pair) in pairs.enumerate() {
        let row = 2 * p * ldb;
        // SAFETY: the `w` lanes read end at row + ldb + w ≤ (klen − 1)·ldb + w ≤ b.len()
        // (2p + 1 ≤ klen − 1, checked above); masked-off lanes are not accessed.
        let (b0, b1) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, bp.add(row)),
                _mm512_maskz_loadu_ps(mask, bp.add(row + ldb)),
            )
        };
        even = _mm512_fmadd_ps(_mm512_set1_ps(pair[0]), b0, even);
        odd = _mm512_fmadd_ps(_mm512_set1_ps(pair[1]), b1, odd);
    }
    if let Some(al) = last {
        // SAFETY: the `w` lanes read end at (klen − 1)·ldb + w ≤ b.len(), checked above.
        let bv = unsafe { _mm512_maskz_loadu_ps(mask, bp.add((klen - 1) * ldb)) };
        even = _mm512_fmadd_ps(_mm512_set1_ps(al), bv, even);
    }
    let mut out = [0f32; NR];
    // SAFETY: `out` holds 16 floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(even, odd)) };
    store(&mut c[..w], &out[..w], accumulate);
    true
}

/// One row of `A` times a strip of `V` 16-column vectors of `B` (64, 32 or 16 columns; offset to
/// row `kr.start` and to the strip's first column): row stride `ldb`, its vectors `vs` apart
/// (`16` in place, a panel's length when `B` is packed). Returns `false` if a slice is too
/// short.
#[target_feature(enable = "avx512f")]
pub(super) fn strip<const V: usize>(
    a: &[f32],
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    vs: usize,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    let width = V * NR;
    let klen = kr.len();
    let fits = klen == 0 || b.len() >= (klen - 1) * ldb + (V - 1) * vs + NR;
    if width > WIDE || !fits || a.len() < kr.end || c.len() < width {
        return false;
    }
    let a = &a[kr.clone()];
    let bp = b.as_ptr();
    // Two accumulator sets (even and odd k): four dependent chains alone would wait on the FMA
    // latency.
    let mut even: [__m512; V] = [_mm512_setzero_ps(); V];
    let mut odd: [__m512; V] = [_mm512_setzero_ps(); V];
    let pairs = a.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (p, pair) in pairs.enumerate() {
        let (a0, a1) = (_mm512_set1_ps(pair[0]), _mm512_set1_ps(pair[1]));
        let row = 2 * p * ldb;
        for v in 0..V {
            // SAFETY: row + ldb + v·vs + 16 ≤ (klen − 1)·ldb + (V − 1)·vs + 16 ≤ b.len(),
            // checked above (2p + 1 ≤ klen − 1).
            let (b0, b1) = unsafe {
                (
                    _mm512_loadu_ps(bp.add(row + vs * v)),
                    _mm512_loadu_ps(bp.add(row + ldb + vs * v)),
                )
            };
            even[v] = _mm512_fmadd_ps(a0, b0, even[v]);
            odd[v] = _mm512_fmadd_ps(a1, b1, odd[v]);
        }
    }
    if let Some(al) = last {
        let (al, row) = (_mm512_set1_ps(al), (klen - 1) * ldb);
        for (v, even) in even.iter_mut().enumerate() {
            // SAFETY: row + v·vs + 16 ≤ (klen − 1)·ldb + (V − 1)·vs + 16 ≤ b.len(), checked above.
            let bv = unsafe { _mm512_loadu_ps(bp.add(row + vs * v)) };
            *even = _mm512_fmadd_ps(al, bv, *even);
        }
    }
    let mut out = [0f32; WIDE];
    for v in 0..V {
        // SAFETY: `out` holds 64 ≥ 16·V floats; store v writes out[16v..16v + 16].
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(NR * v), _mm512_add_ps(even[v], odd[v])) };
    }
    store(&mut c[..width], &out[..width], accumulate);
    true
}

/// [`strip`] for three strips at once, one per gate: the same `16·V` columns of the three
/// gate segments of `B` (`bs[g]`, each offset to row `kr.start` and to the strip's first
/// column, row stride `ldb`, vectors `vs` apart), into `c[g·ldc..g·ldc + 16V]`. Each value of
/// `A` is broadcast once for all three, and the `6V` accumulators (12 for a 32-column strip)
/// hide the FMA latency that one gate's `2V` alone cannot. Every column is summed exactly as
/// [`strip`] sums it. Returns `false` if a slice is too short.
#[target_feature(enable = "avx512f")]
pub(super) fn strip_gates<const V: usize>(
    a: &[f32],
    kr: &Range<usize>,
    bs: [&[f32]; 3],
    ldb: usize,
    vs: usize,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    let width = V * NR;
    let klen = kr.len();
    let need = if klen == 0 {
        0
    } else {
        (klen - 1) * ldb + (V - 1) * vs + NR
    };
    if width > WIDE
        || ldc < width
        || bs.iter().any(|b| b.len() < need)
        || a.len() < kr.end
        || c.len() < 2 * ldc + width
    {
        return false;
    }
    let a = &a[kr.clone()];
    let bp = bs.map(|b| b.as_ptr());
    let mut even: [[__m512; V]; 3] = [[_mm512_setzero_ps(); V]; 3];
    let mut odd: [[__m512; V]; 3] = [[_mm512_setzero_ps(); V]; 3];
    let pairs = a.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (p, pair) in pairs.enumerate() {
        let (a0, a1) = (_mm512_set1_ps(pair[0]), _mm512_set1_ps(pair[1]));
        let row = 2 * p * ldb;
        for g in 0..3 {
            for v in 0..V {
                // SAFETY: row + ldb + v·vs + 16 ≤ (klen − 1)·ldb + (V − 1)·vs + 16 ≤ bs[g].len(),
                // checked above (2p + 1 ≤ klen − 1).
                let (b0, b1) = unsafe {
                    (
                        _mm512_loadu_ps(bp[g].add(row + vs * v)),
                        _mm512_loadu_ps(bp[g].add(row + ldb + vs * v)),
                    )
                };
                even[g][v] = _mm512_fmadd_ps(a0, b0, even[g][v]);
                odd[g][v] = _mm512_fmadd_ps(a1, b1, odd[g][v]);
            }
        }
    }
    if let Some(al) = last {
        let (al, row) = (_mm512_set1_ps(al), (klen - 1) * ldb);
        for g in 0..3 {
            for (v, even) in even[g].iter_mut().enumerate() {
                // SAFETY: row + v·vs + 16 ≤ (klen − 1)·ldb + (V − 1)·vs + 16 ≤ bs[g].len(),
                // checked above.
                let bv = unsafe { _mm512_loadu_ps(bp[g].add(row + vs * v)) };
                *even = _mm512_fmadd_ps(al, bv, *even);
            }
        }
    }
    for g in 0..3 {
        for v in 0..V {
            // SAFETY: g·ldc + 16v + 16 ≤ 2·ldc + width ≤ c.len(), checked above.
            unsafe {
                _mm512_storeu_ps(
                    c.as_mut_ptr().add(g * ldc + NR * v),
                    _mm512_add_ps(even[g][v], odd[g][v]),
                )
            };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    //! These run only where the CPU has AVX-512F (elsewhere they pass without checking anything
    //! and say so): each kernel against an `f64` reference and against the AVX2 kernel.
    use super::*;
    use crate::engine::packed::Lhs;

    fn avx512() -> bool {
        let yes = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if !yes {
            eprintln!("no AVX-512F on this CPU: AVX-512 kernels not exercised");
        }
        yes
    }

    fn data(n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * s).sin()).collect()
    }

    /// `C = A[:, kr] · B[kr, cols]` in f64, `B` row-major with stride `ldb`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        a: &[f32],
        lda: usize,
        kr: &Range<usize>,
        b: &[f32],
        ldb: usize,
        cols: usize,
        c0: &[f32],
        ldc: usize,
        accumulate: bool,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * cols];
        for i in 0..m {
            for j in 0..cols {
                let mut s = if accumulate {
                    f64::from(c0[i * ldc + j])
                } else {
                    0.0
                };
                for k in kr.clone() {
                    s += f64::from(a[i * lda + k]) * f64::from(b[(k - kr.start) * ldb + j]);
                }
                out[i * cols + j] = s;
            }
        }
        out
    }

    #[test]
    fn panel_matches_reference_and_the_avx2_tile_bit_for_bit() {
        if !avx512() {
            return;
        }
        // Row counts across every tile size and the even spreads (17 = 9 + 8, 33 = 11·3, 64);
        // k over one and several KC blocks with an offset start.
        for &m in &[1usize, 2, 3, 5, 8, 15, 16, 17, 31, 33, 64] {
            for &(k0, k1) in &[(0usize, 0usize), (0, 7), (3, 300), (0, 512), (5, 600)] {
                for &accumulate in &[false, true] {
                    let kr = k0..k1;
                    let lda = k1 + 3;
                    // Packed panels (row stride NR) for even m, a wider stride for odd m.
                    let ldb = if m % 2 == 0 { NR } else { NR + 4 };
                    let ldc = NR + 2;
                    let a = data(m * lda, 0.37);
                    let b = data(kr.len().max(1) * ldb + NR, 0.11);
                    let c0 = data(m * ldc, 0.23);
                    let mut c = c0.clone();
                    // SAFETY: AVX-512F, AVX2 and FMA are present (checked above).
                    assert!(unsafe {
                        panel(
                            m, &a, lda, None, &kr, &b, ldb, &mut c, ldc, accumulate, None,
                        )
                    });
                    let want = reference(m, &a, lda, &kr, &b, ldb, NR, &c0, ldc, accumulate);
                    let mut c2 = c0.clone();
                    // SAFETY: as above.
                    assert!(unsafe {
                        super::super::simd::panel(
                            m, &a, lda, &kr, &b, ldb, &mut c2, ldc, accumulate, None, None,
                        )
                    });
                    // The left operand packed (`packed::Lhs`): the same bits.
                    let mut at = vec![f32::NAN; m * kr.len()];
                    Lhs::pack_into(&a, lda, m, &kr, &mut at);
                    let mut c3 = c0.clone();
                    // SAFETY: as above.
                    assert!(unsafe {
                        panel(
                            m,
                            &a,
                            lda,
                            Some(&at),
                            &kr,
                            &b,
                            ldb,
                            &mut c3,
                            ldc,
                            accumulate,
                            None,
                        )
                    });
                    assert_eq!(c3, c, "packed A: m {m} k {kr:?} acc {accumulate}");
                    // Two panels at once (the second one `b` read from its row 1), into one
                    // buffer at two offsets: each the bits of its own `panel`.
                    if ldb == NR && !kr.is_empty() {
                        let b1 = &b[NR..];
                        let mut want1 = c0.clone();
                        // SAFETY: as above.
                        assert!(unsafe {
                            panel(
                                m,
                                &a,
                                lda,
                                Some(&at),
                                &kr,
                                b1,
                                ldb,
                                &mut want1,
                                ldc,
                                accumulate,
                                None,
                            )
                        });
                        let o1 = m * ldc + 3;
                        let mut both = [c0.clone(), vec![0.0; 3], c0.clone()].concat();
                        // SAFETY: as above.
                        assert!(unsafe {
                            panel_group::<2>(
                                m,
                                &at,
                                &kr,
                                block_depth(kr.len()),
                                [&b[..], b1],
                                &mut both,
                                [0, o1],
                                ldc,
                                accumulate,
                                None,
                                [&[]; 2],
                            )
                        });
                        assert_eq!(both[..m * ldc], c[..], "pair 0: m {m} k {kr:?}");
                        assert_eq!(both[o1..], want1[..], "pair 1: m {m} k {kr:?}");
                    }
                    for i in 0..m {
                        for j in 0..NR {
                            let (got, avx2) = (c[i * ldc + j], c2[i * ldc + j]);
                            let w = want[i * NR + j];
                            assert!(
                                (f64::from(got) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "m {m} k {kr:?} acc {accumulate} ({i},{j}): {got} vs {w}"
                            );
                            assert_eq!(got.to_bits(), avx2.to_bits(), "m {m} k {kr:?} ({i},{j})");
                        }
                        // Columns past the panel are untouched.
                        assert_eq!(
                            c[i * ldc + NR..(i + 1) * ldc],
                            c0[i * ldc + NR..(i + 1) * ldc]
                        );
                    }
                }
            }
        }
    }

    /// `P` panels through [`panel_group`] against `P` calls of [`panel`]: bit for bit with
    /// their k-blocks ([`block_depth`]) and no bias; with k-blocks of 128 and a bias, against the `f64`
    /// reference. Columns outside the panels stay untouched.
    fn check_group<const P: usize>() {
        for &m in &[1usize, 3, 8, 15, 16, 17, 33, 64] {
            for &(k0, k1) in &[(0usize, 7usize), (3, 300), (0, 512), (5, 600)] {
                for &accumulate in &[false, true] {
                    let kr = k0..k1;
                    let (klen, lda, ldc) = (kr.len(), k1 + 3, NR + 2);
                    let a = data(m * lda, 0.37);
                    let b = data((klen + P) * NR, 0.11);
                    let bias = data(P * NR, 0.9);
                    let c0 = data(m * ldc, 0.23);
                    let mut at = vec![f32::NAN; m * klen];
                    Lhs::pack_into(&a, lda, m, &kr, &mut at);
                    // Panel p is `b` from its row p; its C at offset p·(m·ldc + 3).
                    let bs: [&[f32]; P] = std::array::from_fn(|p| &b[p * NR..]);
                    let span = m * ldc + 3;
                    let os: [usize; P] = std::array::from_fn(|p| p * span);
                    let fresh = || (0..P).flat_map(|_| [c0.clone(), vec![0.5; 3]]).flatten();
                    let mut got: Vec<f32> = fresh().collect();
                    let next: [&[f32]; P] = std::array::from_fn(|p| &b[p * NR..(p + 4) * NR]);
                    // SAFETY: AVX-512F is present (checked by the caller).
                    assert!(unsafe {
                        panel_group::<P>(
                            m,
                            &at,
                            &kr,
                            block_depth(kr.len()),
                            bs,
                            &mut got,
                            os,
                            ldc,
                            accumulate,
                            None,
                            next,
                        )
                    });
                    let mut biased: Vec<f32> = fresh().collect();
                    // SAFETY: as above.
                    assert!(unsafe {
                        panel_group::<P>(
                            m,
                            &at,
                            &kr,
                            128,
                            bs,
                            &mut biased,
                            os,
                            ldc,
                            accumulate,
                            Some(std::array::from_fn(|p| &bias[p * NR..])),
                            [&[]; P],
                        )
                    });
                    for p in 0..P {
                        let mut want = c0.clone();
                        // SAFETY: as above.
                        assert!(unsafe {
                            panel(
                                m,
                                &a,
                                lda,
                                Some(&at),
                                &kr,
                                bs[p],
                                NR,
                                &mut want,
                                ldc,
                                accumulate,
                                None,
                            )
                        });
                        let (g, bg) = (&got[os[p]..os[p] + span], &biased[os[p]..os[p] + span]);
                        assert_eq!(g[..m * ldc], want[..], "P {P} panel {p}: m {m} k {kr:?}");
                        assert!(g[m * ldc..].iter().chain(&bg[m * ldc..]).all(|&v| v == 0.5));
                        let exact = reference(m, &a, lda, &kr, bs[p], NR, NR, &c0, ldc, accumulate);
                        for i in 0..m {
                            for j in 0..NR {
                                let w = exact[i * NR + j] + f64::from(bias[p * NR + j]);
                                let v = f64::from(bg[i * ldc + j]);
                                assert!(
                                    (v - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                    "P {P} panel {p} m {m} k {kr:?} ({i},{j}): {v} vs {w}"
                                );
                            }
                            let outside = i * ldc + NR..(i + 1) * ldc;
                            assert_eq!(bg[outside.clone()], c0[outside]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn panel_group_matches_panel_and_reference() {
        if !avx512() {
            return;
        }
        check_group::<1>();
        check_group::<2>();
        check_group::<3>();
    }

    /// The in-register transpose, on its own: row `i` of the result is column `i`.
    #[test]
    fn transpose_cols_transposes() {
        if !avx512() {
            return;
        }
        for &(rows, cols, c0, nc) in &[
            (1, 1, 0, 1),
            (16, 16, 0, 16),
            (37, 50, 3, 33),
            (64, 40, 8, 32),
            (5, 70, 20, 17),
        ] {
            let ld = cols + 3;
            let src = data(rows * ld, 0.3);
            let mut dst = vec![f32::NAN; nc * rows];
            // SAFETY: AVX-512F checked above.
            assert!(unsafe { transpose_cols(&src, ld, rows, c0, nc, &mut dst) });
            for j in 0..nc {
                for r in 0..rows {
                    assert_eq!(dst[j * rows + r].to_bits(), src[r * ld + c0 + j].to_bits());
                }
            }
            let mut short = vec![0f32; nc * rows - 1];
            // SAFETY: as above.
            assert!(!unsafe { transpose_cols(&src, ld, rows, c0, nc, &mut short) });
        }
    }

    #[test]
    fn transpose16_transposes() {
        if !avx512() {
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512F is present (checked above); every load and store reads or writes 16
        // of the 256 floats.
        unsafe {
            let mut v: [__m512; 16] =
                std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(16 * i)));
            transpose16(&mut v);
            let mut out = vec![0f32; 256];
            for (i, v) in v.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *v);
            }
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(out[16 * i + j], m[16 * j + i]);
                }
            }
        }
    }

    /// A strip of `V` vectors against the `f64` reference; the columns past it untouched.
    fn check_strip<const V: usize>() {
        let width = V * NR;
        for &(k0, k1) in &[(0usize, 0usize), (0, 1), (2, 9), (0, 64), (1, 300)] {
            for &accumulate in &[false, true] {
                let kr = k0..k1;
                let ldb = WIDE + 8;
                let a = data(k1 + 2, 0.41);
                let b = data(kr.len().max(1) * ldb, 0.07);
                let c0 = data(width + 3, 0.19);
                let mut c = c0.clone();
                // SAFETY: AVX-512F is present (checked by the caller).
                assert!(unsafe { strip::<V>(&a, &kr, &b, ldb, NR, &mut c, accumulate) });
                let want = reference(1, &a, 0, &kr, &b, ldb, width, &c0, 0, accumulate);
                for j in 0..width {
                    let w = want[j];
                    assert!(
                        (f64::from(c[j]) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "V {V} k {kr:?} acc {accumulate} col {j}: {} vs {w}",
                        c[j]
                    );
                }
                assert_eq!(c[width..], c0[width..]);
            }
        }
    }

    /// The three-gate strip gives each gate's columns the bits of the one-gate strip, for every
    /// width, odd and even depths, vectors adjacent (in place) or a panel apart (packed).
    fn check_strip_gates<const V: usize>() {
        let width = V * NR;
        for &(k0, k1) in &[(0usize, 0usize), (0, 1), (2, 9), (0, 64), (1, 300)] {
            for &(ldb, vs) in &[(WIDE + 8, NR), (NR, 301 * NR)] {
                let kr = k0..k1;
                let a = data(k1 + 2, 0.41);
                let len = kr.len().max(1) * ldb + 3 * vs + NR;
                let bs: Vec<Vec<f32>> = (0..3).map(|g| data(len, 0.07 + 0.01 * g as f32)).collect();
                let ldc = width + 5;
                let mut c = vec![f32::NAN; 2 * ldc + width];
                let b3 = [&bs[0][..], &bs[1][..], &bs[2][..]];
                // SAFETY: AVX-512F is present (checked by the caller).
                assert!(unsafe { strip_gates::<V>(&a, &kr, b3, ldb, vs, &mut c, ldc) });
                for (g, b) in bs.iter().enumerate() {
                    let mut one = vec![0f32; width];
                    // SAFETY: as above.
                    assert!(unsafe { strip::<V>(&a, &kr, b, ldb, vs, &mut one, false) });
                    let got = &c[g * ldc..g * ldc + width];
                    assert!(
                        got.iter()
                            .zip(&one)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "V {V} k {kr:?} ldb {ldb} gate {g}: {got:?} vs {one:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn strip_gates_match_strip_bit_for_bit() {
        if !avx512() {
            return;
        }
        check_strip_gates::<4>();
        check_strip_gates::<2>();
        check_strip_gates::<1>();
    }

    #[test]
    fn strip_matches_reference() {
        if !avx512() {
            return;
        }
        check_strip::<4>();
        check_strip::<2>();
        check_strip::<1>();
    }

    #[test]
    fn short_slices_are_refused_not_read() {
        if !avx512() {
            return;
        }
        let (a, b) = (vec![1f32; 40], vec![1f32; 10 * NR]);
        let mut c = vec![0f32; 2 * NR];
        let k10 = 0..10;
        // SAFETY: AVX-512F is present (checked above).
        unsafe {
            assert!(!panel(
                3, &a, 20, None, &k10, &b, NR, &mut c, NR, false, None
            )); // a too short
            assert!(!panel(
                2,
                &a,
                20,
                None,
                &(0..11),
                &b,
                NR,
                &mut c,
                NR,
                false,
                None
            )); // b
            assert!(!panel(
                2,
                &a,
                20,
                None,
                &k10,
                &b,
                NR,
                &mut c,
                NR + 1,
                false,
                None
            )); // c
            assert!(!strip::<4>(&a, &k10, &b, NR, NR, &mut c, false)); // b narrower than a strip
            assert!(!strip::<4>(&a, &k10, &b, NR, 2 * NR, &mut c, false)); // vectors past b's end
            assert!(!strip::<2>(&a, &k10, &b, NR, NR, &mut c, false)); // c narrower than 32
        }
        assert!(c.iter().all(|&v| v == 0.0));
    }
}
