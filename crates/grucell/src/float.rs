//! The scalar types grucell computes in: `f32` (first) and `f64`.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point scalar grucell can compute in. Implemented for `f32` and `f64` only.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + sealed::Sealed
{
    /// Name of the dtype as Keras/numpy spell it (`"float32"`, `"float64"`).
    const DTYPE: &'static str;

    /// Converts from `f64` (rounding for `f32`).
    fn of(x: f64) -> Self;

    /// Converts to `f64` exactly.
    fn f64(self) -> f64;

    /// The slice itself when `Self` is `f32` (lets kernels pick an `f32`-only instruction path).
    #[doc(hidden)]
    fn slice_f32(v: &[Self]) -> Option<&[f32]>;

    /// Mutable form of [`Float::slice_f32`].
    #[doc(hidden)]
    fn slice_f32_mut(v: &mut [Self]) -> Option<&mut [f32]>;

    /// In-place logistic sigmoid (vectorized for `f32`, see `engine::math`).
    #[doc(hidden)]
    fn sigmoid_inplace(v: &mut [Self]);

    /// In-place tanh (vectorized for `f32`, see `engine::math`).
    #[doc(hidden)]
    fn tanh_inplace(v: &mut [Self]);

    /// Row-major GEMM: `C = alpha · op(A) · op(B) + beta · C`, `beta` being 0 or 1.
    ///
    /// `op(A)` is `m × k`, `op(B)` is `k × n`, `C` is `m × n` with row stride `ldc`. When `ta` is
    /// true, `A` is stored as a `k × m` row-major matrix with row stride `lda` (likewise `tb`).
    /// Use [`crate::engine::gemm`] rather than calling this directly.
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
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
    );
}
