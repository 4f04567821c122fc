//! Vectorizable `exp`, `sigmoid` and `tanh` for the fused gate pass.
//!
//! libm's `expf`/`tanhf` are scalar calls: the gate pass spent most of its time in them (and in
//! the branches around them). These are straight-line f32 code (Cody–Waite range reduction, the
//! Cephes minimax polynomials, exponent built from bits, selects instead of branches), which LLVM
//! vectorizes over a gate block. Accuracy against correctly rounded f64 references is tested
//! below in ULPs (exp ≤ 2, sigmoid ≤ 3, tanh ≤ 4 over the whole useful range; plain multiply-adds, not `mul_add`, which without a target FMA becomes a slow software call), far inside Keras'
//! 1e-5 tolerance. `f64` uses std (already fast enough relative to f64 GEMMs, and exact).

#[cfg(target_arch = "x86_64")]
use super::isa::{active, Isa};
use crate::float::Float;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding it rounds to an integer held in the mantissa.
const MAGIC: f32 = 12_582_912.0;

/// `a·b + c`, fused when `F` (only inside functions compiled with the FMA target feature:
/// elsewhere a fused multiply-add is a slow software call). Shared with `engine::packed`.
#[inline(always)]
pub(crate) fn madd<T: Float, const F: bool>(a: T, b: T, c: T) -> T {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Runs `f` inside a function compiled for the widest vector instructions the kernels may use
/// ([`active`]): the element-wise loops of the time steps (gate arithmetic, the blend, the gate
/// gradients) that the compiler inlines into it are then vectorized 16 (AVX-512) or 8 (AVX2)
/// lanes wide instead of the baseline's 4. Element-wise `+`, `−`, `×` give the same bits at any
/// width (no multiply-add is ever contracted), so results do not depend on the level. Only
/// code inlined here benefits: callers pass an `#[inline(always)]` closure (a plain one stayed a
/// call, compiled for the baseline, and nothing changed) holding the loops, and mark the helpers
/// it calls `#[inline(always)]`; kernels it calls keep their own dispatch.
#[inline]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match active() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (`active`), the function's requirement.
        Isa::Avx512 => return unsafe { vectorized_avx512(f) },
        // SAFETY: the CPU has AVX2 and FMA (`active`).
        Isa::Avx2Fma => return unsafe { vectorized_avx2(f) },
        Isa::Portable => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn vectorized_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn vectorized_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `e^x` for f32 (inputs clamped to `[-87, 88]`, where the result stays a normal float).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_impl::<false>(x)
}

#[inline(always)]
fn exp_impl<const F: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = madd::<f32, F>(x, LOG2E, MAGIC);
    let n = k - MAGIC;
    let r = madd::<f32, F>(n, -LN2_LO, madd::<f32, F>(n, -LN2_HI, x));
    let p = madd::<f32, F>(r, 1.987_569_1e-4, 1.398_199_9e-3);
    let p = madd::<f32, F>(p, r, 8.333_452e-3);
    let p = madd::<f32, F>(p, r, 4.166_579_6e-2);
    let p = madd::<f32, F>(p, r, 1.666_666_5e-1);
    let p = madd::<f32, F>(p, r, 0.5);
    let er = madd::<f32, F>(p * r, r, r) + 1.0;
    let ni = (k.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    er * scale
}

/// `1 / (1 + e^-x)` for f32; exactly 0 below `ln(f32::MIN_POSITIVE)` (≈ −87.34), as
/// TensorFlow computes it (`e^x` there is subnormal, and TensorFlow's CPU threads flush
/// subnormals to zero): a saturated gate then has exactly zero slope, as in Keras.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    sigmoid_impl::<false>(x)
}

/// `ln(f32::MIN_POSITIVE)`: below it TensorFlow's sigmoid is 0.
const SIGMOID_ZERO_BELOW: f32 = -87.336_55;

#[inline(always)]
fn sigmoid_impl<const F: bool>(x: f32) -> f32 {
    let y = 1.0 / (1.0 + exp_impl::<F>(-x));
    if x < SIGMOID_ZERO_BELOW {
        0.0
    } else {
        y
    }
}

/// `tanh x` for f32: an odd polynomial near zero, `1 − 2/(e^{2|x|} + 1)` elsewhere.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    tanh_impl::<false>(x)
}

#[inline(always)]
fn tanh_impl<const F: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = madd::<f32, F>(z, -5.704_989e-3, 2.063_909e-2);
    let p = madd::<f32, F>(p, z, -5.373_971_6e-2);
    let p = madd::<f32, F>(p, z, 1.333_144_2e-1);
    let p = madd::<f32, F>(p, z, -3.333_328e-1);
    let small = madd::<f32, F>(p * z, x, x);
    let e = exp_impl::<F>(2.0 * if a > 44.0 { 44.0 } else { a }); // NaN stays NaN (f32::min would drop it)
    let big = 1.0 - 2.0 / (e + 1.0);
    let big = f32::from_bits(big.to_bits() | (x.to_bits() & 0x8000_0000));
    if a < 0.625 {
        small
    } else {
        big
    }
}

/// One lane of [`sigmoid_slice_f32`] on the active instruction set (`F`: with fused
/// multiply-adds, as on AVX2 and AVX-512; without, as the portable build), for element-wise
/// loops that compute several gates in one pass inside [`vectorized`]: the same bits as the
/// slice kernel, without a call per gate.
#[inline(always)]
pub(crate) fn sigmoid_lane<const F: bool>(x: f32) -> f32 {
    sigmoid_impl::<F>(x)
}

/// One lane of [`tanh_slice_f32`], as [`sigmoid_lane`] is one of [`sigmoid_slice_f32`].
#[inline(always)]
pub(crate) fn tanh_lane<const F: bool>(x: f32) -> f32 {
    tanh_impl::<F>(x)
}

/// In-place [`sigmoid_f32`] over a slice: 16 or 8 lanes with fused multiply-adds where the CPU
/// has AVX-512F or AVX2 + FMA (the results then differ from [`sigmoid_f32`] by an ULP or so, and
/// agree bit for bit between the two widths), 4 lanes otherwise.
pub fn sigmoid_slice_f32(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match active() {
        // SAFETY: AVX-512F, AVX2 and FMA are present (`active`), this function's requirement.
        Isa::Avx512 => return unsafe { sigmoid_avx512(v) },
        // SAFETY: AVX2 and FMA are present (`active`), the only requirement of this function.
        Isa::Avx2Fma => return unsafe { sigmoid_avx2_fma(v) },
        Isa::Portable => {}
    }
    v.iter_mut().for_each(|x| *x = sigmoid_impl::<false>(*x));
}

/// In-place [`tanh_f32`] over a slice (AVX-512F or AVX2 + FMA where present, as
/// [`sigmoid_slice_f32`]).
pub fn tanh_slice_f32(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match active() {
        // SAFETY: AVX-512F, AVX2 and FMA are present (`active`), this function's requirement.
        Isa::Avx512 => return unsafe { tanh_avx512(v) },
        // SAFETY: AVX2 and FMA are present (`active`), the only requirement of this function.
        Isa::Avx2Fma => return unsafe { tanh_avx2_fma(v) },
        Isa::Portable => {}
    }
    v.iter_mut().for_each(|x| *x = tanh_impl::<false>(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sigmoid_avx2_fma(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = sigmoid_impl::<true>(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tanh_avx2_fma(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = tanh_impl::<true>(*x));
}

// The same element functions with 512-bit vectors: lane for lane the same operations, so the
// same bits as the AVX2 copies.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sigmoid_avx512(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = sigmoid_impl::<true>(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn tanh_avx512(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = tanh_impl::<true>(*x));
}

/// In-place sigmoid over a slice (`f32`: [`sigmoid_slice_f32`]; `f64`: std).
#[inline]
pub fn sigmoid_slice<T: Float>(v: &mut [T]) {
    T::sigmoid_inplace(v)
}

/// In-place tanh over a slice (`f32`: [`tanh_slice_f32`]; `f64`: std).
#[inline]
pub fn tanh_slice<T: Float>(v: &mut [T]) {
    T::tanh_inplace(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp.max(f32::MIN_POSITIVE as f64)
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_within_2_ulps() {
        let worst = sweep(-87.0, 88.0, 200_000)
            .map(|x| ulps(exp_f32(x), (x as f64).exp()))
            .fold(0.0, f64::max);
        assert!(worst <= 2.0, "exp worst {worst} ulps");
        let worst = sweep(-87.0, 88.0, 200_000)
            .map(|x| ulps(exp_impl::<true>(x), (x as f64).exp()))
            .fold(0.0, f64::max);
        assert!(worst <= 2.0, "fused exp worst {worst} ulps");
    }

    /// The slice functions (8-lane FMA code on AVX2 machines) against f64, over the same ranges.
    #[test]
    fn slice_kernels_within_ulps() {
        let xs: Vec<f32> = sweep(-80.0, 30.0, 200_000).collect();
        let mut v = xs.clone();
        sigmoid_slice_f32(&mut v);
        let worst = v
            .iter()
            .zip(&xs)
            .map(|(y, x)| ulps(*y, 1.0 / (1.0 + (-(*x as f64)).exp())))
            .fold(0.0, f64::max);
        assert!(worst <= 3.0, "sigmoid slice worst {worst} ulps");
        let xs: Vec<f32> = sweep(-12.0, 12.0, 400_000)
            .filter(|x| x.abs() > 1e-30)
            .collect();
        let mut v = xs.clone();
        tanh_slice_f32(&mut v);
        let worst = v
            .iter()
            .zip(&xs)
            .map(|(y, x)| ulps(*y, (*x as f64).tanh()))
            .fold(0.0, f64::max);
        assert!(worst <= 4.0, "tanh slice worst {worst} ulps");
        let mut e = [f32::NAN, 1e30, -1e30, 0.0];
        tanh_slice_f32(&mut e);
        assert!(e[0].is_nan());
        assert_eq!(&e[1..], &[1.0, -1.0, 0.0]);
        let mut e = [f32::NAN, 1e30, -1e30];
        sigmoid_slice_f32(&mut e);
        assert!(e[0].is_nan() && e[1] == 1.0 && e[2] < 1e-37);
    }

    #[test]
    fn sigmoid_saturates_to_exact_zero_and_one_as_tensorflow() {
        let mut v = vec![-1e7f32, -88.0, -87.4, -87.3, 0.0, 17.0, 88.0, 1e7];
        let scalar: Vec<f32> = v.iter().map(|x| sigmoid_f32(*x)).collect();
        sigmoid_slice_f32(&mut v);
        for got in [&v, &scalar] {
            assert_eq!(&got[..3], &[0.0, 0.0, 0.0]);
            assert!(got[3] > 0.0 && got[3] < 1.2e-38 * 1.1);
            assert_eq!(got[4], 0.5);
            assert_eq!(&got[5..], &[1.0, 1.0, 1.0]);
        }
    }

    #[test]
    fn sigmoid_within_3_ulps() {
        let worst = sweep(-80.0, 30.0, 200_000)
            .map(|x| ulps(sigmoid_f32(x), 1.0 / (1.0 + (-(x as f64)).exp())))
            .fold(0.0, f64::max);
        assert!(worst <= 3.0, "sigmoid worst {worst} ulps");
        assert_eq!(sigmoid_f32(1e30), 1.0);
        assert!(sigmoid_f32(-1e30) < 1e-37);
        assert!(sigmoid_f32(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_within_4_ulps() {
        let worst = sweep(-12.0, 12.0, 400_000)
            .filter(|x| x.abs() > 1e-30)
            .map(|x| ulps(tanh_f32(x), (x as f64).tanh()))
            .fold(0.0, f64::max);
        assert!(worst <= 4.0, "tanh worst {worst} ulps");
        assert_eq!(tanh_f32(1e30), 1.0);
        assert_eq!(tanh_f32(-1e30), -1.0);
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// Where the CPU has AVX-512F (elsewhere nothing is checked, and the test says so): the
    /// 16-lane slice functions give the 8-lane ones' bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_slices_match_avx2_bit_for_bit() {
        if crate::engine::isa::detected() < Isa::Avx512 {
            eprintln!("no AVX-512F on this CPU: AVX-512 gate math not exercised");
            return;
        }
        let xs: Vec<f32> = sweep(-90.0, 90.0, 100_003)
            .chain([f32::NAN, 0.0, -0.0, 1e30])
            .collect();
        let (mut a, mut b, mut c, mut d) = (xs.clone(), xs.clone(), xs.clone(), xs.clone());
        // SAFETY: AVX-512F, AVX2 and FMA are present (checked above).
        unsafe {
            sigmoid_avx512(&mut a);
            sigmoid_avx2_fma(&mut b);
            tanh_avx512(&mut c);
            tanh_avx2_fma(&mut d);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(bits(&c), bits(&d));
    }

    #[test]
    fn slices_use_the_same_functions() {
        let mut v: Vec<f32> = (0..100).map(|i| i as f32 * 0.3 - 15.0).collect();
        let w = v.clone();
        tanh_slice(&mut v);
        let mut w2 = w.clone();
        tanh_slice_f32(&mut w2);
        assert_eq!(v, w2);
        for (a, b) in v.iter().zip(&w) {
            assert!((*a - tanh_f32(*b)).abs() <= 2.0 * f32::EPSILON);
        }
        let mut d: Vec<f64> = vec![0.5, -2.0];
        sigmoid_slice(&mut d);
        assert!((d[0] - 1.0 / (1.0 + (-0.5f64).exp())).abs() < 1e-16);
    }
}
