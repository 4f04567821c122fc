//! Gate passes of one batch row for Keras' default activations (sigmoid gates, tanh
//! candidate) in `f32` inference: one loop per gate with the activations inlined
//! ([`sigmoid_lane`], [`tanh_lane`]) instead of a pass per operation and a slice kernel call
//! per activation.
//!
//! Each value goes through the same operations, in the same order, as in `gru::step_rows`'
//! generic passes (`F` as the slice kernels of the active instruction set), so the results are
//! the same bits: the training forward, which keeps its trace through the generic passes,
//! gives what inference gives (`tests/engine_paths.rs`). The compiler vectorizes each loop
//! inside [`vectorized`]. Batch-1 forward (1, 100, 32, u), one thread's steps, medians in one
//! process: S (u = 64) 0.0719 → 0.0679 ms, and with `reset_after = false` 0.0781 → 0.0754;
//! 32, 48 and 96 units 2–5 % less (2–7 % with `reset_after = false`); split between two
//! threads (`engine::pair`) 128 units 0.162 → 0.154 ms, 256 units 0.474 → 0.455 (fastest
//! deciles). A loop over blocks of 16 units, every gate of a block at once (which `pair` had),
//! was slower than the generic passes: S 0.0757 ms.

use super::isa::{active, Isa};
use super::math::{sigmoid_lane, tanh_lane, vectorized};

/// Runs `pass::<true>` inside [`vectorized`] where the CPU has AVX2 and FMA (as the slice
/// kernels then do), else `pass::<false>`.
macro_rules! dispatch {
    ($pass:ident($($arg:expr),*)) => {
        if active() >= Isa::Avx2Fma {
            vectorized(
                #[inline(always)]
                || $pass::<true>($($arg),*),
            )
        } else {
            $pass::<false>($($arg),*)
        }
    };
}

/// A `reset_after = true` step's gates for `n` units: `z, r = σ(pre + x)` in place, then
/// `ĥ = tanh(x_h + r ⊙ (c + b_rh))` and `h' = z ⊙ h + (1 − z) ⊙ ĥ` into `out`. `pre` holds the
/// products `[z, r, c]` of these units (`c` left with `b_rh` added), `x` their projections
/// `[x_z, x_r, x_h]`, `bias` their `b_rh`, `h` their state; every slice has `n = out.len()`
/// values or more.
pub(crate) fn reset_after(
    pre: [&mut [f32]; 3],
    x: [&[f32]; 3],
    bias: Option<&[f32]>,
    h: &[f32],
    out: &mut [f32],
) {
    #[inline(always)]
    fn pass<const F: bool>(
        [z, r, c]: [&mut [f32]; 3],
        [xz, xr, xh]: [&[f32]; 3],
        bias: Option<&[f32]>,
        h: &[f32],
        out: &mut [f32],
    ) {
        let n = out.len();
        let (z, r, c) = (&mut z[..n], &mut r[..n], &mut c[..n]);
        for (v, xv) in z.iter_mut().zip(xz) {
            *v = sigmoid_lane::<F>(*v + *xv);
        }
        for (v, xv) in r.iter_mut().zip(xr) {
            *v = sigmoid_lane::<F>(*v + *xv);
        }
        // (No bias is not a zero bias: `c + 0` would turn −0 into +0.)
        if let Some(bias) = bias {
            for (cv, bv) in c.iter_mut().zip(bias) {
                *cv += *bv;
            }
        }
        for (((((o, cv), rv), xv), zv), hv) in
            out.iter_mut().zip(&*c).zip(&*r).zip(xh).zip(&*z).zip(h)
        {
            let n = tanh_lane::<F>(*xv + *rv * *cv);
            // Keras: z * h + (1 - z) * hh
            *o = *zv * *hv + (1.0 - *zv) * n;
        }
    }
    dispatch!(pass(pre, x, bias, h, out));
}

/// The first pass of a `reset_after = false` step: `z, r = σ(pre + x)` in place (`zr` holds
/// the products `[z, r]`, `x` the projections `[x_z, x_r]`, each `u = h.len()` long) and
/// `t = r ⊙ h`, the left operand of the candidate's product.
pub(crate) fn reset_before_zr(zr: &mut [f32], x: &[f32], h: &[f32], t: &mut [f32]) {
    #[inline(always)]
    fn pass<const F: bool>(zr: &mut [f32], x: &[f32], h: &[f32], t: &mut [f32]) {
        let u = h.len();
        let (z, r) = zr[..2 * u].split_at_mut(u);
        z_lanes::<F>(z, &x[..u]);
        r_lanes::<F>(r, &x[u..], h, t);
    }
    dispatch!(pass(zr, x, h, t));
}

/// [`reset_before_zr`]'s r half alone: `r = σ(r + x_r)` in place and `t = r ⊙ h`.
pub(crate) fn reset_before_r(r: &mut [f32], xr: &[f32], h: &[f32], t: &mut [f32]) {
    dispatch!(r_lanes(r, xr, h, t));
}

/// [`reset_before_zr`]'s z half alone: `z = σ(z + x_z)` in place.
pub(crate) fn reset_before_z(z: &mut [f32], xz: &[f32]) {
    dispatch!(z_lanes(z, xz));
}

#[inline(always)]
fn z_lanes<const F: bool>(z: &mut [f32], xz: &[f32]) {
    for (v, xv) in z.iter_mut().zip(xz) {
        *v = sigmoid_lane::<F>(*v + *xv);
    }
}

#[inline(always)]
fn r_lanes<const F: bool>(r: &mut [f32], xr: &[f32], h: &[f32], t: &mut [f32]) {
    for (((v, xv), tv), hv) in r.iter_mut().zip(xr).zip(t.iter_mut()).zip(h) {
        let rv = sigmoid_lane::<F>(*v + *xv);
        *v = rv;
        *tv = rv * *hv;
    }
}

/// The second pass of [`reset_before_zr`]'s step: `ĥ = tanh(c + x_h)` (`g` holds `[z, r, c]`,
/// `c` the candidate's product, left with `ĥ`) and `h' = z ⊙ h + (1 − z) ⊙ ĥ` into `out`.
pub(crate) fn reset_before_blend(g: &mut [f32], xh: &[f32], h: &[f32], out: &mut [f32]) {
    #[inline(always)]
    fn pass<const F: bool>(g: &mut [f32], xh: &[f32], h: &[f32], out: &mut [f32]) {
        let u = h.len();
        let (z, rest) = g[..3 * u].split_at_mut(u);
        let c = &mut rest[u..];
        for ((((o, cv), xv), zv), hv) in out.iter_mut().zip(c).zip(xh).zip(&*z).zip(h) {
            let n = tanh_lane::<F>(*cv + *xv);
            *cv = n;
            // Keras: z * h + (1 - z) * hh
            *o = *zv * *hv + (1.0 - *zv) * n;
        }
    }
    dispatch!(pass(g, xh, h, out));
}
