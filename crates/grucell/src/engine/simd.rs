//! AVX2 + FMA register tiles for the `f32` recurrent products (x86-64 only).
//!
//! The generic kernels of [`super::packed`] are correct everywhere, but LLVM's SLP vectorizer
//! turns their `[[f32; 16]; R]` accumulators into shuffles and stack spills. These spell the tile
//! out in AVX registers: `R × 16` accumulators (two `__m256` per row), one broadcast of `A` and
//! two loads of `B` per `k`. They are called only after `is_x86_feature_detected!` has seen both
//! AVX2 and FMA. Every raw load is preceded by a bounds check of the whole range it reads, made
//! once per tile; a failed check returns `false` and the caller uses the generic kernel.

use super::packed::{block_depth, store, tile_rows, transpose_edge, NR};
use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_maskload_ps,
    _mm256_permute2f128_ps, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps,
    _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm_prefetch,
    _MM_HINT_T0,
};
use std::ops::Range;

/// Columns per strip of the batch-1 kernel (8 registers).
pub(super) const WIDE: usize = 64;

/// `C[0..m, 0..16] (+)= A[0..m, kr] · B[0..|kr|, 0..16]` for one full-width panel (`B` already
/// offset to row `kr.start`). Returns `false`, having done nothing, if a slice is too short.
///
/// `next`: `None` when `B` stays in the caches; else the packed panel computed after this one
/// (offset to row `kr.start`; empty if there is none). Then, while each block of `k` rows is
/// computed, the lines of the block after it (this panel's, or the first of `next`) are
/// requested ahead, spread over the block's tiles: a recurrent kernel larger than the caches
/// (XL's 12 MiB) is read from memory on every step, and the first tile of each block otherwise
/// waits for its lines instead of overlapping the memory reads with the other tiles' FMAs
/// (B = 16, 1024 units: +5–10 % on a product in most runs, 1–20 % over all, dev VM).
///
/// `bias`: the panel's 16 values, added to each row of `C` as the last block is stored, in the
/// order `gru::add_bias_rows` adds them after a product (the same bits), without a second pass
/// over `C`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) fn panel(
    m: usize,
    a: &[f32],
    lda: usize,
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    next: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> bool {
    let klen = kr.len();
    if m == 0 {
        return true;
    }
    let fits = klen == 0 || b.len() >= (klen - 1) * ldb + NR;
    let bias = match bias {
        Some(bias) => match bias.get(..NR) {
            Some(bias) => Some(bias),
            None => return false,
        },
        None => None,
    };
    if !fits || a.len() < (m - 1) * lda + kr.end || c.len() < (m - 1) * ldc + NR {
        return false;
    }
    // k in blocks of `block_depth` (KC or KC_DEEP), so that a block of the panel (16 or 8 KiB)
    // stays in L1 across the row tiles;
    // blocks after the first add to what the earlier ones wrote.
    let depth = block_depth(klen);
    let mut k0 = kr.start;
    loop {
        let k1 = (k0 + depth).min(kr.end);
        let (kb, bk) = (k0..k1, &b[(k0 - kr.start) * ldb..]);
        let acc = accumulate || k0 > kr.start;
        let last = k1 >= kr.end;
        let bias = if last { bias } else { None };
        let ahead = ahead(b, ldb, kr, k1, depth, next);
        let lines = ahead.len() / NR;
        let mut i = 0;
        while i < m {
            let (a, c) = (&a[i * lda..], &mut c[i * ldc..]);
            // At most 6 rows per tile (12 accumulators hide the FMA latency).
            let rows = tile_rows(m, i, 6);
            // This tile's share of the lines, in proportion to its rows.
            let pf = &ahead[lines * i / m * NR..lines * (i + rows) / m * NR];
            i += match rows {
                1 => tile::<1>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
                2 => tile::<2>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
                3 => tile::<3>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
                4 => tile::<4>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
                5 => tile::<5>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
                _ => tile::<6>(a, lda, &kb, bk, ldb, c, ldc, acc, pf, bias),
            };
        }
        if last {
            return true;
        }
        k0 = k1;
    }
}

/// What a panel kernel requests ahead while it computes the block of `k` rows that ends at `k1`
/// (see [`panel`]): the lines of the next block of `b` (offset to row `kr.start`), or after the
/// last block the first `kc` rows of `next`; one line per row of `k` (`ldb = NR` floats = 64
/// bytes), at most a block's worth. Empty when `next` is `None` or `b` is not packed.
pub(super) fn ahead<'a>(
    b: &'a [f32],
    ldb: usize,
    kr: &Range<usize>,
    k1: usize,
    kc: usize,
    next: Option<&'a [f32]>,
) -> &'a [f32] {
    match next {
        Some(_) if ldb == NR && k1 < kr.end => {
            let n = (kr.end - k1).min(kc) * NR;
            &b[(k1 - kr.start) * NR..][..n]
        }
        Some(next) if ldb == NR => &next[..next.len().min(kc * NR)],
        _ => &[][..],
    }
}

/// One `R × 16` tile; returns `R`. Bounds were checked by [`panel`]. Requests the cache line
/// at every `NR`-th float of `pf`, one per row of `k`, until `pf` is done; adds `bias` (16
/// values) to each row after storing it.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize>(
    a: &[f32],
    lda: usize,
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    pf: &[f32],
    bias: Option<&[f32]>,
) -> usize {
    let klen = kr.len();
    // Local proofs for the unchecked reads below (panics only if `panel` let a bad call through).
    let a = &a[..(R - 1) * lda + kr.end];
    let b = if klen == 0 {
        b
    } else {
        &b[..(klen - 1) * ldb + NR]
    };
    let ap = a.as_ptr();
    let mut lo: [__m256; R] = [_mm256_setzero_ps(); R];
    let mut hi: [__m256; R] = [_mm256_setzero_ps(); R];
    let bp = b.as_ptr();
    let (pfp, pf_lines) = (pf.as_ptr(), pf.len() / NR);
    for kk in 0..klen {
        if kk < pf_lines {
            // In bounds (kk·NR < pf.len()); a prefetch reads nothing into registers and never
            // faults.
            _mm_prefetch::<_MM_HINT_T0>(pfp.wrapping_add(kk * NR).cast::<i8>());
        }
        // SAFETY: kk·ldb + 16 ≤ (klen − 1)·ldb + 16 = b.len() (sliced above).
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_ps(bp.add(kk * ldb)),
                _mm256_loadu_ps(bp.add(kk * ldb + 8)),
            )
        };
        for i in 0..R {
            // SAFETY: i·lda + kr.start + kk < (R − 1)·lda + kr.end = a.len() (sliced above).
            let av = _mm256_set1_ps(unsafe { *ap.add(i * lda + kr.start + kk) });
            lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
        }
    }
    for i in 0..R {
        let mut out = [0f32; NR];
        // SAFETY: `out` holds 16 floats; the two stores write 8 each.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), lo[i]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), hi[i]);
        }
        let row = &mut c[i * ldc..i * ldc + NR];
        store(row, &out, accumulate);
        if let Some(bias) = bias {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += *b;
            }
        }
    }
    R
}

/// Most rows for which [`panel_group`] runs: [`panel`]'s tile of 2 rows has 4 chains of
/// dependent FMAs, too few to hide their latency, and loads both vectors of the panel for 2
/// FMAs each; with three panels at once, 2 rows are 12 chains (in `R` + 2 + 2·`R`·`P` = 16
/// registers). 3 rows took longer in groups than in `panel`'s tile of 3, (3, 100, 32, 256)
/// 1.99 ms: 2.12 in tiles of 2 and 1 rows of three panels, 2.94 in one tile of 3 rows of two
/// panels (17 registers: spilled).
pub(super) const GROUP_MAX_ROWS: usize = 2;

/// `P` (1 to 3) full-width packed panels for `m` ≤ [`GROUP_MAX_ROWS`] rows of `A` (its rows,
/// stride `lda`, indexed by absolute `k`): `C_p (+)= A[0..m, kr] · B_p (+ bias_p)` for each `p`,
/// panel `p` of row stride [`NR`] offset to row `kr.start`, element `(i, j)` of `C_p` at
/// `c[os[p] + i·ldc + j]` (they must not overlap). Each value of `A` is broadcast once for the
/// `P` panels of its tile. k-blocks of `depth`, each element summed exactly as [`panel`] sums
/// it (each block's products in `k` order from zero, added to what the earlier blocks stored,
/// the bias added last), so with `depth = block_depth(|kr|)` every element has the bits of
/// `panel` on its panel alone. While a block runs, the next one (of these panels, or else the
/// first of `next`, the panels computed after these) is requested, one line per `k`. Returns
/// `false`, having done nothing, for more rows or a short slice.
///
/// The AVX2 counterpart of `simd512::panel_group`, for the thinnest products only (batches of
/// 2, which went panel by panel). `grucell bench --isa avx2 --threads 1`, AMD EPYC Zen 4 VM,
/// forward / training ms before → after: (2, 100, 32, 256) 1.84 → 1.26 / 4.68 → 3.70,
/// (2, 100, 64, 128) 0.584 → 0.401 / 1.42 → 1.13, (2, 50, 64, 512) 3.32 → 2.84 / 9.31 → 8.63,
/// (2, 50, 64, 1024) 12.9 → 11.8 / 38.4 → 36.9.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) fn panel_group<const P: usize>(
    m: usize,
    a: &[f32],
    lda: usize,
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
    if m > GROUP_MAX_ROWS
        || klen == 0
        || depth == 0
        || a.len() < (m - 1) * lda + kr.end
        || bs.iter().any(|b| b.len() < klen * NR)
        || os.iter().any(|&o| c.len() < o + cl)
        || bias.is_some_and(|b| b.iter().any(|b| b.len() < NR))
    {
        return false;
    }
    let mut k0 = kr.start;
    loop {
        let k1 = (k0 + depth).min(kr.end);
        let (kb, o) = (k0..k1, (k0 - kr.start) * NR);
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
        while i < m {
            let rows = tile_rows(m, i, GROUP_MAX_ROWS);
            // This tile's share of the lines ahead (line l of panel p is request l·P + p).
            let pf = lines * P * i / m..lines * P * (i + rows) / m;
            let oh: [usize; P] = std::array::from_fn(|p| os[p] + i * ldc);
            let ai = &a[i * lda..];
            match rows {
                1 => tile_group::<1, P>(ai, lda, &kb, bk, c, oh, ldc, acc, bias, ahead, pf),
                _ => tile_group::<2, P>(ai, lda, &kb, bk, c, oh, ldc, acc, bias, ahead, pf),
            }
            i += rows;
        }
        if last {
            return true;
        }
        k0 = k1;
    }
}

/// `R` rows of `A` times `P` panels over the `k` of `kr` (a block), each element's products
/// summed in `k` order from zero and stored as [`tile`] stores them; requests lines `pf` of
/// `ahead` (line `l` of panel `p` is request `l·P + p`), one per `k`. Bounds were checked by
/// [`panel_group`].
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // registers by row and panel
fn tile_group<const R: usize, const P: usize>(
    a: &[f32],
    lda: usize,
    kr: &Range<usize>,
    bs: [&[f32]; P],
    c: &mut [f32],
    os: [usize; P],
    ldc: usize,
    accumulate: bool,
    bias: Option<[&[f32]; P]>,
    ahead: [&[f32]; P],
    pf: Range<usize>,
) {
    let klen = kr.len();
    // Local proofs for the unchecked reads below (panics only if `panel_group` let a bad call
    // through).
    let a = &a[..(R - 1) * lda + kr.end];
    let ap = a.as_ptr();
    let bp: [*const f32; P] = std::array::from_fn(|p| bs[p][..klen * NR].as_ptr());
    let pfp: [*const f32; P] = std::array::from_fn(|p| ahead[p].as_ptr());
    let mut lo: [[__m256; R]; P] = [[_mm256_setzero_ps(); R]; P];
    let mut hi: [[__m256; R]; P] = [[_mm256_setzero_ps(); R]; P];
    for kk in 0..klen {
        if kk < pf.len() {
            let l = pf.start + kk;
            // Within `ahead` (l / P < lines); a prefetch reads nothing into registers and
            // never faults.
            _mm_prefetch::<_MM_HINT_T0>(pfp[l % P].wrapping_add(l / P * NR).cast::<i8>());
        }
        // The rows' broadcasts first, then one panel's two vectors at a time: `R` + 2 + 2·`R`·`P`
        // registers of the 16 (loading all `P` panels' vectors first spilled: (2, 100, 32, 256)
        // 1.96 against 1.25 ms).
        // SAFETY: i·lda + kr.start + kk < (R − 1)·lda + kr.end = a.len() (sliced above).
        let av: [__m256; R] =
            std::array::from_fn(|i| _mm256_set1_ps(unsafe { *ap.add(i * lda + kr.start + kk) }));
        for p in 0..P {
            // SAFETY: kk·NR + 16 ≤ klen·NR = every panel's length (sliced above).
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_ps(bp[p].add(kk * NR)),
                    _mm256_loadu_ps(bp[p].add(kk * NR + 8)),
                )
            };
            for i in 0..R {
                lo[p][i] = _mm256_fmadd_ps(av[i], b0, lo[p][i]);
                hi[p][i] = _mm256_fmadd_ps(av[i], b1, hi[p][i]);
            }
        }
    }
    for p in 0..P {
        for i in 0..R {
            let mut out = [0f32; NR];
            // SAFETY: `out` holds 16 floats; the two stores write 8 each.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), lo[p][i]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), hi[p][i]);
            }
            let row = &mut c[os[p] + i * ldc..os[p] + i * ldc + NR];
            store(row, &out, accumulate);
            if let Some(bias) = bias {
                for (v, b) in row.iter_mut().zip(bias[p]) {
                    *v += *b;
                }
            }
        }
    }
}

/// One row of `A` times a 64-column strip of `B` (offset to row `kr.start` and to the strip's
/// first column): row stride `ldb`, its four 16-column vectors `vs` apart (`16` in place, a
/// panel's length when `B` is packed). Returns `false` if a slice is too short.
#[target_feature(enable = "avx2,fma")]
pub(super) fn strip(
    a: &[f32],
    kr: &Range<usize>,
    b: &[f32],
    ldb: usize,
    vs: usize,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    let klen = kr.len();
    let fits = klen == 0 || b.len() >= (klen - 1) * ldb + 3 * vs + NR;
    if !fits || a.len() < kr.end || c.len() < WIDE {
        return false;
    }
    let a = &a[kr.clone()];
    let mut acc: [__m256; 8] = [_mm256_setzero_ps(); 8];
    let bp = b.as_ptr();
    for (kk, av) in a.iter().enumerate() {
        let av = _mm256_set1_ps(*av);
        for (v, acc) in acc.iter_mut().enumerate() {
            // SAFETY: kk·ldb + (v/2)·vs + 8·(v%2) + 8 ≤ (klen − 1)·ldb + 3·vs + 16 ≤ b.len(),
            // checked above.
            let bv = unsafe { _mm256_loadu_ps(bp.add(kk * ldb + (v / 2) * vs + 8 * (v % 2))) };
            *acc = _mm256_fmadd_ps(av, bv, *acc);
        }
    }
    let mut out = [0f32; WIDE];
    for (v, acc) in acc.iter().enumerate() {
        // SAFETY: `out` holds 64 floats; store v writes out[8v..8v + 8].
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *acc) };
    }
    store(&mut c[..WIDE], &out, accumulate);
    true
}

/// One row of `A` times `w ≤ 16` columns of `B` (offset to row `kr.start` and to the first of
/// those columns, row stride `ldb`): the columns of a segment past its 64-column strips, 16 at
/// a time. Reads only those `w` columns (masked loads), so it serves `B` in place and packed
/// alike: two 8-lane halves, each summed over even and odd `k` apart and then added (before,
/// each column was one chain of dependent FMAs). Returns `false` if a slice is too short.
#[target_feature(enable = "avx2,fma")]
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
    if w == 0 || w > NR || !fits || a.len() < kr.end || c.len() < w {
        return false;
    }
    let a = &a[kr.clone()];
    let bp = b.as_ptr();
    // Lane i of half h is read where 8h + i < w (the sign bit of its mask word set).
    let lane = |i: i32| if i < w as i32 { -1 } else { 0 };
    let masks = [
        _mm256_setr_epi32(
            lane(0),
            lane(1),
            lane(2),
            lane(3),
            lane(4),
            lane(5),
            lane(6),
            lane(7),
        ),
        _mm256_setr_epi32(
            lane(8),
            lane(9),
            lane(10),
            lane(11),
            lane(12),
            lane(13),
            lane(14),
            lane(15),
        ),
    ];
    let mut even = [_mm256_setzero_ps(); 2];
    let mut odd = [_mm256_setzero_ps(); 2];
    let pairs = a.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (p, pair) in pairs.enumerate() {
        let (a0, a1) = (_mm256_set1_ps(pair[0]), _mm256_set1_ps(pair[1]));
        let row = 2 * p * ldb;
        for h in 0..2 {
            // SAFETY: the lanes read end at row + ldb + w ≤ (klen − 1)·ldb + w ≤ b.len()
            // (2p + 1 ≤ klen − 1, checked above); masked-off lanes are not accessed.
            let (b0, b1) = unsafe {
                (
                    _mm256_maskload_ps(bp.add(row + 8 * h), masks[h]),
                    _mm256_maskload_ps(bp.add(row + ldb + 8 * h), masks[h]),
                )
            };
            even[h] = _mm256_fmadd_ps(a0, b0, even[h]);
            odd[h] = _mm256_fmadd_ps(a1, b1, odd[h]);
        }
    }
    if let Some(al) = last {
        let (al, row) = (_mm256_set1_ps(al), (klen - 1) * ldb);
        for h in 0..2 {
            // SAFETY: the lanes read end at (klen − 1)·ldb + w ≤ b.len(), checked above.
            let bv = unsafe { _mm256_maskload_ps(bp.add(row + 8 * h), masks[h]) };
            even[h] = _mm256_fmadd_ps(al, bv, even[h]);
        }
    }
    let mut out = [0f32; NR];
    for h in 0..2 {
        // SAFETY: `out` holds 16 floats; store h writes out[8h..8h + 8].
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), _mm256_add_ps(even[h], odd[h])) };
    }
    store(&mut c[..w], &out[..w], accumulate);
    true
}

/// `dst` (`nc × rows`, row-major) = the transpose of columns `c0..c0 + nc` of `src` (`rows`
/// rows of stride `ld`), by 8 × 8 register transposes (the AVX2 twin of
/// `simd512::transpose_cols`; the edges element by element). Returns `false`, having done
/// nothing, if a slice is too short.
///
/// A twin rather than one driver for both levels: a driver calling the block transposes through
/// a function pointer took 0.84–0.99 ms for L's `Xᵀ` (3200 × 512, 2 threads, AVX2) against
/// 0.51–0.64 for this, and one expanded from a macro (the blocks inlined) spilled its indices to
/// the stack, 1.1–1.3 against 0.7–0.9 ms.
#[target_feature(enable = "avx2,fma")]
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
    while r + 8 <= rows {
        let mut j = 0;
        while j + 8 <= nc {
            // SAFETY: (r + i)·ld + c0 + j + 8 ≤ (rows − 1)·ld + c0 + nc ≤ src.len().
            let mut v: [__m256; 8] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(sp.add((r + i) * ld + c0 + j)) });
            transpose8(&mut v);
            for (jj, v) in v.iter().enumerate() {
                // SAFETY: (j + jj)·rows + r + 8 ≤ (nc − 1)·rows + rows ≤ dst.len().
                unsafe { _mm256_storeu_ps(dp.add((j + jj) * rows + r), *v) };
            }
            j += 8;
        }
        transpose_edge(src, ld, c0, r..r + 8, j..nc, dst, rows);
        r += 8;
    }
    transpose_edge(src, ld, c0, r..rows, 0..nc, dst, rows);
    true
}

/// Transposes the 8 × 8 matrix whose rows are `v` in place (pairs of rows interleaved, then
/// pairs of pairs, then the 128-bit halves swapped across).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(v: &mut [__m256; 8]) {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    v[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
    v[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
    v[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
    v[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
    v[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
    v[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
    v[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
    v[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
}

#[cfg(test)]
mod tests {
    //! These run only where the CPU has AVX2 and FMA (elsewhere they pass without checking
    //! anything and say so).
    use super::*;

    fn avx2() -> bool {
        let yes = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if !yes {
            eprintln!("no AVX2+FMA on this CPU: AVX2 kernels not exercised");
        }
        yes
    }

    /// The tail kernels (AVX2 here, AVX-512 in `simd512`, each where the CPU has it) for every
    /// width up to 16 (the AVX-512 one takes only the last columns of a segment, under 16), with
    /// `B` ending right after the last row's `w` columns (the masked loads read nothing past it):
    /// close to an `f64` sum, one value short refused, the columns past `w` untouched.
    #[test]
    fn strip_tails_match_an_f64_sum() {
        type Tail = dyn Fn(&[f32], &Range<usize>, &[f32], usize, usize, &mut [f32], bool) -> bool;
        let mut kernels: Vec<(&str, usize, Box<Tail>)> = Vec::new();
        if avx2() {
            // SAFETY: AVX2 and FMA are present (checked just above).
            let f = |a: &[f32], kr: &Range<usize>, b: &[f32], ldb, w, c: &mut [f32], acc| unsafe {
                strip_tail(a, kr, b, ldb, w, c, acc)
            };
            kernels.push(("avx2", NR, Box::new(f)));
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present (checked just above).
            let f = |a: &[f32], kr: &Range<usize>, b: &[f32], ldb, w, c: &mut [f32], acc| unsafe {
                super::super::simd512::strip_tail(a, kr, b, ldb, w, c, acc)
            };
            kernels.push(("avx512", NR - 1, Box::new(f)));
        }
        for (name, widest, tail) in &kernels {
            for w in 1..=*widest {
                for &(k0, k1) in &[(0usize, 0usize), (0, 1), (2, 9), (0, 64), (1, 300)] {
                    for &accumulate in &[false, true] {
                        let kr = k0..k1;
                        let ldb = 3 * NR + 5;
                        let a: Vec<f32> = (0..k1 + 2).map(|i| (i as f32 * 0.41).sin()).collect();
                        let len = if kr.is_empty() {
                            w
                        } else {
                            (kr.len() - 1) * ldb + w
                        };
                        let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.07).sin()).collect();
                        let c0: Vec<f32> = (0..NR + 3).map(|i| (i as f32 * 0.19).sin()).collect();
                        let mut c = c0.clone();
                        let at = format!("{name} w {w} k {kr:?} acc {accumulate}");
                        assert!(tail(&a, &kr, &b, ldb, w, &mut c, accumulate), "{at}");
                        for j in 0..w {
                            let mut want = if accumulate { f64::from(c0[j]) } else { 0.0 };
                            for (kk, k) in kr.clone().enumerate() {
                                want += f64::from(a[k]) * f64::from(b[kk * ldb + j]);
                            }
                            assert!(
                                (f64::from(c[j]) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{at} col {j}: {} vs {want}",
                                c[j]
                            );
                        }
                        assert_eq!(c[w..], c0[w..], "{at}");
                        if !kr.is_empty() {
                            let short = tail(&a, &kr, &b[..len - 1], ldb, w, &mut c, accumulate);
                            assert!(!short, "{at}: a short `B` was read");
                        }
                    }
                }
            }
        }
    }

    /// The 8 × 8 register transposes and their edges: `dst` row `j` is column `c0 + j`, bit for
    /// bit; a short `dst` refused.
    #[test]
    fn transpose_cols_transposes() {
        if !avx2() {
            return;
        }
        for &(rows, cols, c0, nc) in &[
            (1, 1, 0, 1),
            (8, 8, 0, 8),
            (16, 16, 0, 16),
            (37, 50, 3, 33),
            (64, 40, 8, 32),
            (5, 70, 20, 17),
        ] {
            let ld = cols + 3;
            let src: Vec<f32> = (0..rows * ld).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut dst = vec![f32::NAN; nc * rows];
            // SAFETY: AVX2 and FMA are present (checked above).
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

    /// The panel kernel's bias, added as the last k-block is stored: the same bits as the kernel
    /// without it followed by `gru::add_bias_rows`, over one and several k-blocks, with and
    /// without accumulating; a bias shorter than a panel refused before anything is written.
    #[test]
    fn panel_bias_is_the_separate_pass_bit_for_bit() {
        if !avx2() {
            return;
        }
        let bias: Vec<f32> = (0..NR).map(|j| (j as f32 * 0.7).cos() * 3.0).collect();
        for &(m, k0, k1) in &[
            (1usize, 0usize, 0usize),
            (5, 0, 7),
            (13, 3, 300),
            (16, 0, 1024),
        ] {
            let (lda, ldc) = (k1 + 3, NR + 5);
            let a: Vec<f32> = (0..m * lda).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..(k1 - k0).max(1) * NR)
                .map(|i| (i as f32 * 0.11).sin())
                .collect();
            let c0: Vec<f32> = (0..m * ldc).map(|i| (i as f32 * 0.23).sin()).collect();
            let kr = k0..k1;
            for accumulate in [false, true] {
                // SAFETY: AVX2 and FMA are present (checked above).
                let run = |c: &mut [f32], bias: Option<&[f32]>| unsafe {
                    panel(m, &a, lda, &kr, &b, NR, c, ldc, accumulate, None, bias)
                };
                let (mut fused, mut apart, mut untouched) = (c0.clone(), c0.clone(), c0.clone());
                assert!(run(&mut fused, Some(&bias)));
                assert!(run(&mut apart, None));
                assert!(!run(&mut untouched, Some(&bias[..NR - 1])));
                assert_eq!(untouched, c0);
                super::super::gru::add_bias_rows(&bias, &mut apart, ldc);
                let at = format!("m {m} k {kr:?} acc {accumulate}");
                for (i, (x, y)) in fused.iter().zip(&apart).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "{at} [{i}]: {x} vs {y}");
                }
            }
        }
    }

    /// The strip reads its four 16-column vectors from a row (`vs = 16`) or from four panels
    /// (`vs` = a panel's stride) with the same sums: the same bits, close to an `f64` sum.
    #[test]
    fn strip_gives_the_same_bits_from_rows_and_from_panels() {
        if !avx2() {
            return;
        }
        for &(k0, k1) in &[(0usize, 0usize), (0, 1), (2, 9), (0, 64), (1, 300)] {
            let kr = k0..k1;
            let a: Vec<f32> = (0..k1 + 2).map(|i| (i as f32 * 0.41).sin()).collect();
            let ld = WIDE + 8;
            let rows: Vec<f32> = (0..k1.max(1) * ld)
                .map(|i| (i as f32 * 0.07).cos())
                .collect();
            // The same 64 columns as four panels of k1 rows, `stride` apart.
            let stride = k1 * NR + NR;
            let mut panels = vec![f32::NAN; 4 * stride.max(NR)];
            for p in 0..4 {
                for k in 0..k1 {
                    for j in 0..NR {
                        panels[p * stride + k * NR + j] = rows[k * ld + p * NR + j];
                    }
                }
            }
            for accumulate in [false, true] {
                let c0: Vec<f32> = (0..WIDE).map(|i| i as f32 * 0.01).collect();
                let (mut c1, mut c2) = (c0.clone(), c0.clone());
                // SAFETY: AVX2 and FMA are present (checked above).
                unsafe {
                    assert!(strip(
                        &a,
                        &kr,
                        &rows[k0 * ld..],
                        ld,
                        NR,
                        &mut c1,
                        accumulate
                    ));
                    let pb = &panels[k0 * NR..];
                    assert!(strip(&a, &kr, pb, NR, stride, &mut c2, accumulate));
                }
                assert_eq!(c1, c2, "k {kr:?} acc {accumulate}");
                for j in 0..WIDE {
                    let mut want = if accumulate { f64::from(c0[j]) } else { 0.0 };
                    for k in kr.clone() {
                        want += f64::from(a[k]) * f64::from(rows[k * ld + j]);
                    }
                    assert!((f64::from(c1[j]) - want).abs() < 1e-4, "k {kr:?} col {j}");
                }
            }
        }
    }

    /// The group kernel of 1–3 panels, for each row count it takes: each panel's elements the
    /// bits of [`panel`] on that panel alone, with and without the bias and accumulating, over
    /// one and several k-blocks, nothing written outside the panels' columns; more rows than
    /// [`GROUP_MAX_ROWS`], or a short slice, refused before anything is written.
    #[test]
    fn panel_group_is_panel_bit_for_bit() {
        if !avx2() {
            return;
        }
        check_group::<1>();
        check_group::<2>();
        check_group::<3>();
    }

    fn check_group<const P: usize>() {
        let sin = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * s).sin()).collect() };
        for m in 1..=GROUP_MAX_ROWS {
            for &(k0, k1) in &[(0usize, 1usize), (0, 7), (3, 300), (0, 512), (5, 600)] {
                let kr = k0..k1;
                let (klen, lda, ldc) = (kr.len(), k1 + 3, NR + 2);
                let depth = block_depth(klen);
                let a = sin(m * lda, 0.37);
                let b = sin((klen + P) * NR, 0.11);
                let bias = sin(P * NR, 0.9);
                let c0 = sin(m * ldc, 0.23);
                // Panel p is `b` from its row p; its C at offset p·span, 3 guard values after it.
                let bs: [&[f32]; P] = std::array::from_fn(|p| &b[p * NR..]);
                let span = m * ldc + 3;
                let os: [usize; P] = std::array::from_fn(|p| p * span);
                let fresh = || -> Vec<f32> {
                    (0..P)
                        .flat_map(|_| c0.iter().copied().chain([0.5; 3]))
                        .collect()
                };
                let next: [&[f32]; P] = std::array::from_fn(|p| &b[p * NR..(p + 2) * NR]);
                let biases: [&[f32]; P] = std::array::from_fn(|p| &bias[p * NR..]);
                for accumulate in [false, true] {
                    for with_bias in [false, true] {
                        let bias = with_bias.then_some(biases);
                        let at = format!("P {P} m {m} k {kr:?} acc {accumulate} bias {with_bias}");
                        let mut got = fresh();
                        // SAFETY: AVX2 and FMA are present (checked by the caller).
                        let group = |c: &mut [f32], m: usize| unsafe {
                            panel_group::<P>(
                                m, &a, lda, &kr, depth, bs, c, os, ldc, accumulate, bias, next,
                            )
                        };
                        assert!(group(&mut got, m), "{at}");
                        for p in 0..P {
                            let mut want = c0.clone();
                            // SAFETY: as above.
                            assert!(unsafe {
                                panel(
                                    m,
                                    &a,
                                    lda,
                                    &kr,
                                    bs[p],
                                    NR,
                                    &mut want,
                                    ldc,
                                    accumulate,
                                    None,
                                    bias.map(|b| b[p]),
                                )
                            });
                            let g = &got[os[p]..os[p] + span];
                            for (i, (x, y)) in g.iter().zip(&want).enumerate() {
                                assert_eq!(x.to_bits(), y.to_bits(), "{at} panel {p} [{i}]");
                            }
                            assert_eq!(g[m * ldc..], [0.5; 3], "{at} panel {p}");
                        }
                        // One value short of the last panel's last row.
                        let short = os[P - 1] + (m - 1) * ldc + NR - 1;
                        let mut untouched = fresh();
                        assert!(!group(&mut untouched[..short], m), "{at}");
                        assert_eq!(untouched, fresh(), "{at}");
                    }
                }
                let rows = GROUP_MAX_ROWS + 1;
                let a = sin(rows * lda, 0.37);
                let mut c = vec![0.5; P * (rows * ldc + 3)];
                let os: [usize; P] = std::array::from_fn(|p| p * (rows * ldc + 3));
                // SAFETY: as above.
                assert!(!unsafe {
                    panel_group::<P>(
                        rows, &a, lda, &kr, depth, bs, &mut c, os, ldc, false, None, next,
                    )
                });
                assert!(c.iter().all(|&v| v == 0.5));
            }
        }
    }
}
