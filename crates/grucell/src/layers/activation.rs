//! Keras 3 activations by name, with their derivatives.
//!
//! Every element-wise activation of `keras.activations` is here, with Keras 3's definitions
//! (notably `hard_sigmoid(x) = relu6(x + 3) / 6`, not TF-Keras 2's `0.2x + 0.5`), plus the row-wise
//! `softmax`, `log_softmax` and `sparsemax` (over the last axis, as Keras does), which Dense
//! layers often use. `glu` (halves the last axis) and `threshold` (needs arguments) are rejected
//! with an error that names them.
//!
//! `sparsemax` is Keras 3's TensorFlow-backend formula, which is not the paper's: its threshold
//! is `τ = (Σ_{j ≤ k} c_j − 1) / k`, the sum of the first `k` cumulative sums of the sorted row
//! rather than the `k`-th one, so a row's outputs need not sum to 1 (Keras gives `[0.25, 0.25]`
//! for `[0.5, 0.5]`). grucell computes what Keras computes, and its gradient is the one
//! TensorFlow derives from those operations; see [`Activation::Sparsemax`].

use crate::error::ConfigError;
use crate::float::Float;

/// An activation function, named as Keras names it.
///
/// ```
/// use grucell::Activation;
/// let a = Activation::from_name("hard_sigmoid")?;
/// assert!((a.apply(-1.0f32) - 1.0 / 3.0).abs() < 1e-7);
/// assert_eq!(Activation::from_name("swish")?, Activation::Silu);
/// assert!(Activation::from_name("Tanh").is_err()); // Keras names are exact
/// # Ok::<(), grucell::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `tanh x`
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `relu6(x + 3) / 6` (Keras 3)
    HardSigmoid,
    /// `clip(0.2 x + 0.5, 0, 1)`: what `hard_sigmoid` meant in Keras 2 and TF-Keras 2 (the
    /// default recurrent activation of Keras ≤ 2.2's GRU). A file those wrote that says
    /// `hard_sigmoid` loads as this; [`Activation::from_name`] never returns it, and Keras 3
    /// has no activation equal to it, so a model holding it cannot be saved as a Keras 3 file.
    HardSigmoidKeras2,
    /// `max(x, 0)`
    Relu,
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `x` if `x > 0` else `0.2 x`
    LeakyRelu,
    /// `x` if `x > 0` else `e^x − 1`
    Elu,
    /// `1.0507 · (x if x > 0 else 1.6733 (e^x − 1))`
    Selu,
    /// `max(x, 0) + expm1(min(x, 0))` (alpha 1)
    Celu,
    /// `log(1 + e^x)`
    Softplus,
    /// `x / (1 + |x|)`
    Softsign,
    /// `x · sigmoid(x)` (alias `swish`)
    Silu,
    /// `x · Φ(x)` (exact, erf form; Keras' default `approximate=False`)
    Gelu,
    /// `clip(x, −1, 1)`
    HardTanh,
    /// `x · hard_sigmoid(x)` (alias `hard_swish`)
    HardSilu,
    /// `e^x`
    Exponential,
    /// `x · tanh(softplus(x))`
    Mish,
    /// `−softplus(−x)`
    LogSigmoid,
    /// `x − tanh x`
    TanhShrink,
    /// `x` if `|x| > 0.5` else 0
    HardShrink,
    /// `x ∓ 0.5` outside `[−0.5, 0.5]`, else 0
    SoftShrink,
    /// 0 for `x ≤ −1`, `(x + 1)² / 4` for `x < 1`, else `x`
    SparsePlus,
    /// 0 for `x ≤ −1`, 1 for `x ≥ 1`, else `(x + 1) / 2`
    SparseSigmoid,
    /// `(x + sqrt(x² + 4)) / 2`
    Squareplus,
    /// `x` (Keras `linear` / `None`)
    Linear,
    /// Softmax over the last axis (row-wise).
    Softmax,
    /// Log-softmax over the last axis (row-wise).
    LogSoftmax,
    /// Sparsemax over the last axis (row-wise), as Keras 3's TensorFlow backend computes it:
    /// the row sorted in descending order (`s`), its cumulative sums `c`, the support
    /// `s_j − (c_j − 1) / j > 0` with `k` members, `τ = (Σ_{support} c_j − 1) / k` and
    /// `y = max(x − τ, 0)`. A row with no support (huge or non-finite values) has `τ = −∞`. Ties
    /// sort lower index first, and a row holding NaN sorts as TensorFlow's `top_k` sorts it
    /// (insertion order) up to 16 values; a longer row holding NaN is NaN throughout.
    Sparsemax,
}

const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

const NAMES: &[(&str, Activation)] = &[
    ("tanh", Activation::Tanh),
    ("sigmoid", Activation::Sigmoid),
    ("hard_sigmoid", Activation::HardSigmoid),
    ("relu", Activation::Relu),
    ("relu6", Activation::Relu6),
    ("leaky_relu", Activation::LeakyRelu),
    ("elu", Activation::Elu),
    ("selu", Activation::Selu),
    ("celu", Activation::Celu),
    ("softplus", Activation::Softplus),
    ("softsign", Activation::Softsign),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
    ("gelu", Activation::Gelu),
    ("hard_tanh", Activation::HardTanh),
    ("hard_silu", Activation::HardSilu),
    ("hard_swish", Activation::HardSilu),
    ("exponential", Activation::Exponential),
    ("mish", Activation::Mish),
    ("log_sigmoid", Activation::LogSigmoid),
    ("tanh_shrink", Activation::TanhShrink),
    ("hard_shrink", Activation::HardShrink),
    ("soft_shrink", Activation::SoftShrink),
    ("sparse_plus", Activation::SparsePlus),
    ("sparse_sigmoid", Activation::SparseSigmoid),
    ("squareplus", Activation::Squareplus),
    ("linear", Activation::Linear),
    ("softmax", Activation::Softmax),
    ("log_softmax", Activation::LogSoftmax),
    ("sparsemax", Activation::Sparsemax),
];

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    // Stable for both signs: never evaluates exp of a large positive number.
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

#[inline]
fn softplus<T: Float>(x: T) -> T {
    // log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
    x.max(T::zero()) + (-x.abs()).exp().ln_1p()
}

#[inline]
fn erf<T: Float>(x: T) -> T {
    T::of(libm::erf(x.f64()))
}

/// `max(x, lo)` that keeps a NaN `x`, as TensorFlow's `relu`, `relu6`, `hard_sigmoid`,
/// `hard_tanh` and `celu` do (`f32::max` would return `lo`).
#[inline]
fn max_nan<T: Float>(x: T, lo: T) -> T {
    if x < lo {
        lo
    } else {
        x
    }
}

/// `min(x, hi)` that keeps a NaN `x`.
#[inline]
fn min_nan<T: Float>(x: T, hi: T) -> T {
    if x > hi {
        hi
    } else {
        x
    }
}

/// `x` clipped to `[lo, hi]`, NaN kept.
#[inline]
fn clip<T: Float>(x: T, lo: T, hi: T) -> T {
    min_nan(max_nan(x, lo), hi)
}

/// Longest row holding a NaN that [`SparsemaxRow::of`] sorts as TensorFlow does: `top_k`
/// sorts a whole row with `std::sort` and a comparator that treats NaN as equal to everything,
/// which libstdc++ runs as an insertion sort up to 16 elements. Longer rows are partitioned
/// first, in an order that depends on that comparator's inconsistency (undefined behaviour in
/// C++), which no emulation can follow.
const SPARSEMAX_NAN_SORT_MAX: usize = 16;

/// What Keras' TensorFlow-backend `sparsemax` computes from one row before its output: the
/// row's descending sort order, its support and the threshold `τ`.
struct SparsemaxRow<T> {
    /// Indices of the row in sorted order (descending, ties lower index first).
    order: Vec<usize>,
    /// `s_j − (c_j − 1) / j > 0` per sorted position `j` (1-based in the formula).
    support: Vec<bool>,
    /// How many positions are in the support, as a float (Keras casts and sums the flags).
    k: T,
    /// `(Σ_{support} c_j − 1) / k`.
    tau: T,
}

impl<T: Float> SparsemaxRow<T> {
    /// `None` for a row longer than [`SPARSEMAX_NAN_SORT_MAX`] that holds a NaN.
    fn of(x: &[T]) -> Option<Self> {
        let order = Self::sort_order(x)?;
        let (mut c, mut sum, mut k) = (T::zero(), T::zero(), T::zero());
        let support: Vec<bool> = order
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let s = x[i];
                c += s;
                let kept = s - (c - T::one()) / T::of((j + 1) as f64) > T::zero();
                if kept {
                    sum += c;
                    k += T::one();
                }
                kept
            })
            .collect();
        let tau = (sum - T::one()) / k;
        Some(SparsemaxRow {
            order,
            support,
            k,
            tau,
        })
    }

    /// The order `tf.sort(direction="DESCENDING")` gives (it calls `top_k` on the whole row).
    fn sort_order(x: &[T]) -> Option<Vec<usize>> {
        let mut order: Vec<usize> = (0..x.len()).collect();
        if !x.iter().any(|v| v.is_nan()) {
            // A strict weak order without NaN: any stable sort gives TensorFlow's order.
            order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap_or(std::cmp::Ordering::Equal));
            return Some(order);
        }
        if x.len() > SPARSEMAX_NAN_SORT_MAX {
            return None;
        }
        // TensorFlow's comparator: larger value first; equal or unordered (NaN), lower index.
        let before = |a: usize, b: usize| {
            if x[b] < x[a] {
                true
            } else if x[b] > x[a] {
                false
            } else {
                a < b
            }
        };
        // libstdc++'s `__insertion_sort`: an element that goes before the first moves to the
        // front; any other moves left while it goes before its left neighbour.
        for i in 1..order.len() {
            let v = order[i];
            if before(v, order[0]) {
                order.copy_within(0..i, 1);
                order[0] = v;
            } else {
                let mut j = i;
                while j > 0 && before(v, order[j - 1]) {
                    order[j] = order[j - 1];
                    j -= 1;
                }
                order[j] = v;
            }
        }
        Some(order)
    }

    /// `dx = J(x)ᵀ dy` as TensorFlow's gradients of Keras' operations give it: `dy` passes
    /// where `x − τ ≥ 0` (`tf.maximum` passes ties to its first argument), their sum `G`
    /// reaches `τ` negated, each support position's cumulative sum gets `−G / k`, and the sorted
    /// value at position `l` the sum of those from `l` on (a reversed cumulative sum), which goes
    /// back to its index.
    fn backward(&self, x: &[T], dy: &[T], dx: &mut [T]) {
        let mut g = T::zero();
        for ((d, &xi), &gi) in dx.iter_mut().zip(x).zip(dy) {
            *d = if xi - self.tau >= T::zero() {
                gi
            } else {
                T::zero()
            };
            g += *d;
        }
        let dc = -g / self.k;
        let mut ds = T::zero();
        for (&i, &kept) in self.order.iter().zip(&self.support).rev() {
            if kept {
                ds += dc;
            }
            dx[i] += ds;
        }
    }
}

impl Activation {
    /// Looks up a Keras activation name (exact, lower case, as Keras' dictionary). `None` in a
    /// Keras config means `linear`; pass `"linear"`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        if let Some((_, a)) = NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(*a);
        }
        match name {
            "glu" | "threshold" => Err(ConfigError::unsupported(
                "activation",
                format!("`{name}` is not supported by grucell (it is not element-wise or needs arguments)"),
            )),
            _ => Err(ConfigError::UnknownName {
                kind: "activation",
                name: name.to_string(),
                known: NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The canonical Keras name (`swish` → `silu`, as Keras serializes it).
    pub fn name(self) -> &'static str {
        if self == Activation::HardSigmoidKeras2 {
            return "hard_sigmoid";
        }
        NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("linear")
    }

    /// Every supported activation, once each.
    pub fn all() -> impl Iterator<Item = Activation> {
        NAMES
            .iter()
            .filter(|(n, _)| *n != "swish" && *n != "hard_swish")
            .map(|(_, a)| *a)
    }

    /// True for activations that act on each element alone (all but softmax, log_softmax and
    /// sparsemax).
    pub fn is_elementwise(self) -> bool {
        !matches!(
            self,
            Activation::Softmax | Activation::LogSoftmax | Activation::Sparsemax
        )
    }

    /// True when the derivative cannot be computed from the output alone, so training must keep
    /// the pre-activation.
    pub fn grad_needs_input(self) -> bool {
        use Activation::*;
        matches!(
            self,
            Silu | Gelu
                | HardSilu
                | Mish
                | TanhShrink
                | HardShrink
                | SoftShrink
                | SparsePlus
                | Squareplus
                | Softsign
                | Celu
                | LogSigmoid
                | Sparsemax
        )
    }

    /// Applies an element-wise activation to one value. Row-wise activations (softmax,
    /// log_softmax, sparsemax) applied to a single value see a row of length one.
    #[inline]
    pub fn apply<T: Float>(self, x: T) -> T {
        use Activation::*;
        let zero = T::zero();
        let one = T::one();
        match self {
            Tanh => x.tanh(),
            Sigmoid => sigmoid(x),
            HardSigmoid => clip(x + T::of(3.0), zero, T::of(6.0)) / T::of(6.0),
            // TF-Keras 2: multiply, add, clip_by_value (two roundings, no fused multiply-add).
            HardSigmoidKeras2 => clip(x * T::of(0.2) + T::of(0.5), zero, one),
            Relu => max_nan(x, zero),
            Relu6 => clip(x, zero, T::of(6.0)),
            LeakyRelu => {
                if x > zero {
                    x
                } else {
                    T::of(0.2) * x
                }
            }
            Elu => {
                if x > zero {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Selu => {
                if x > zero {
                    T::of(SELU_SCALE) * x
                } else {
                    T::of(SELU_SCALE * SELU_ALPHA) * x.exp_m1()
                }
            }
            Celu => max_nan(x, zero) + min_nan(x, zero).exp_m1(),
            Softplus => softplus(x),
            Softsign => x / (one + x.abs()),
            Silu => x * sigmoid(x),
            Gelu => T::of(0.5) * x * (one + erf(x / T::of(std::f64::consts::SQRT_2))),
            HardTanh => clip(x, -one, one),
            HardSilu => x * HardSigmoid.apply(x),
            Exponential => x.exp(),
            Mish => x * softplus(x).tanh(),
            LogSigmoid => -softplus(-x),
            TanhShrink => x - x.tanh(),
            HardShrink => {
                if x.abs() > T::of(0.5) {
                    x
                } else {
                    zero
                }
            }
            SoftShrink => {
                let t = T::of(0.5);
                if x > t {
                    x - t
                } else if x < -t {
                    x + t
                } else {
                    zero
                }
            }
            SparsePlus => {
                if x <= -one {
                    zero
                } else if x < one {
                    T::of(0.25) * (x + one) * (x + one)
                } else {
                    x
                }
            }
            SparseSigmoid => {
                if x <= -one {
                    zero
                } else if x >= one {
                    one
                } else {
                    T::of(0.5) * (x + one)
                }
            }
            Squareplus => (x + (x * x + T::of(4.0)).sqrt()) / T::of(2.0),
            Linear => x,
            Softmax => one,
            LogSoftmax => zero,
            Sparsemax => {
                let mut row = [x];
                self.apply_row(&mut row);
                row[0]
            }
        }
    }

    /// Derivative `f'(x)` of an element-wise activation, given the input `x` and the output
    /// `y = f(x)`. Where the derivative jumps, the value TensorFlow's gradient gives is used.
    #[inline]
    pub fn derivative<T: Float>(self, x: T, y: T) -> T {
        use Activation::*;
        let zero = T::zero();
        let one = T::one();
        match self {
            Tanh => one - y * y,
            Sigmoid => y * (one - y),
            HardSigmoid => {
                if x > T::of(-3.0) && x < T::of(3.0) {
                    T::of(1.0 / 6.0)
                } else {
                    zero
                }
            }
            HardSigmoidKeras2 => {
                // TensorFlow's clip_by_value passes the gradient on its bounds too.
                let v = x * T::of(0.2) + T::of(0.5);
                if v >= zero && v <= one {
                    T::of(0.2)
                } else {
                    zero
                }
            }
            Relu => {
                if x > zero {
                    one
                } else {
                    zero
                }
            }
            Relu6 => {
                if x > zero && x < T::of(6.0) {
                    one
                } else {
                    zero
                }
            }
            LeakyRelu => {
                if x > zero {
                    one
                } else {
                    T::of(0.2)
                }
            }
            Elu => {
                if x > zero {
                    one
                } else {
                    y + one
                }
            }
            Selu => {
                if x >= zero {
                    // TF SeluGrad: the scale branch at x = 0
                    T::of(SELU_SCALE)
                } else {
                    y + T::of(SELU_SCALE * SELU_ALPHA)
                }
            }
            Celu => {
                if x > zero {
                    one
                } else if x == zero {
                    // TF differentiates max(x,0) + expm1(min(x,0)): at the tie both branches pass 1.
                    T::of(2.0)
                } else {
                    x.exp()
                }
            }
            Softplus => sigmoid(x),
            Softsign => {
                let d = one + x.abs();
                one / (d * d)
            }
            Silu => {
                let s = sigmoid(x);
                s + x * s * (one - s)
            }
            Gelu => {
                let cdf = T::of(0.5) * (one + erf(x / T::of(std::f64::consts::SQRT_2)));
                let pdf =
                    (-(x * x) / T::of(2.0)).exp() / T::of((2.0 * std::f64::consts::PI).sqrt());
                cdf + x * pdf
            }
            HardTanh => {
                if x >= -one && x <= one {
                    one
                } else {
                    zero
                }
            }
            HardSilu => {
                let hs = HardSigmoid.apply(x);
                hs + x * HardSigmoid.derivative(x, hs)
            }
            Exponential => y,
            Mish => {
                let sp = softplus(x);
                let t = sp.tanh();
                t + x * (one - t * t) * sigmoid(x)
            }
            LogSigmoid => sigmoid(-x),
            TanhShrink => {
                let t = x.tanh();
                t * t
            }
            HardShrink => {
                if x.abs() > T::of(0.5) {
                    one
                } else {
                    zero
                }
            }
            SoftShrink => {
                if x.abs() > T::of(0.5) {
                    one
                } else {
                    zero
                }
            }
            SparsePlus => {
                if x <= -one {
                    zero
                } else if x < one {
                    T::of(0.5) * (x + one)
                } else {
                    one
                }
            }
            SparseSigmoid => {
                if x > -one && x < one {
                    T::of(0.5)
                } else {
                    zero
                }
            }
            Squareplus => T::of(0.5) * (one + x / (x * x + T::of(4.0)).sqrt()),
            Linear => one,
            // Row-wise: a row of length one has a constant output.
            Softmax | LogSoftmax | Sparsemax => zero,
        }
    }

    /// Applies the activation in place to one row (the last axis). Element-wise activations
    /// treat the row element by element.
    pub fn apply_row<T: Float>(self, row: &mut [T]) {
        match self {
            Activation::Softmax | Activation::LogSoftmax => {
                // As TensorFlow: a row holding +inf (inf − inf) or NaN is NaN throughout.
                let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                let mut s = T::zero();
                for v in row.iter() {
                    s += (*v - m).exp();
                }
                if self == Activation::Softmax {
                    for v in row.iter_mut() {
                        *v = (*v - m).exp() / s;
                    }
                } else {
                    let ls = s.ln();
                    for v in row.iter_mut() {
                        *v = *v - m - ls;
                    }
                }
            }
            Activation::Sparsemax => match SparsemaxRow::of(row) {
                Some(s) => {
                    for v in row.iter_mut() {
                        *v = max_nan(*v - s.tau, T::zero());
                    }
                }
                None => row.fill(T::nan()),
            },
            _ => {
                for v in row.iter_mut() {
                    *v = self.apply(*v);
                }
            }
        }
    }

    /// Backward through one row: given the input row `x`, the output row `y` and the upstream
    /// gradient `dy`, writes `dx` (`dx = J(x)ᵀ dy`).
    pub fn backward_row<T: Float>(self, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
        match self {
            Activation::Softmax => {
                let dot: T = y.iter().zip(dy).map(|(&a, &b)| a * b).sum();
                for ((d, &yi), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *d = yi * (g - dot);
                }
            }
            Activation::LogSoftmax => {
                let s: T = dy.iter().copied().sum();
                for ((d, &yi), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *d = g - yi.exp() * s;
                }
            }
            Activation::Sparsemax => match SparsemaxRow::of(x) {
                Some(s) => s.backward(x, dy, dx),
                None => dx.fill(T::nan()),
            },
            _ => {
                for (((d, &xi), &yi), &g) in dx.iter_mut().zip(x).zip(y).zip(dy) {
                    *d = g * self.derivative(xi, yi);
                }
            }
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Activation {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Activation::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Activation::all() {
            assert_eq!(Activation::from_name(a.name()).unwrap(), a);
        }
        assert!(matches!(
            Activation::from_name("nope"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert!(matches!(
            Activation::from_name("glu"),
            Err(ConfigError::Unsupported { .. })
        ));
    }

    #[test]
    fn derivatives_match_central_differences() {
        for a in Activation::all().filter(|a| a.is_elementwise()) {
            for i in -80..=80 {
                let x = i as f64 * 0.0625 + 0.013; // avoid the kinks exactly
                let h = 1e-6;
                let num = (a.apply(x + h) - a.apply(x - h)) / (2.0 * h);
                let ana = a.derivative(x, a.apply(x));
                assert!(
                    (num - ana).abs() < 1e-5 * (1.0 + num.abs()),
                    "{a} at {x}: numeric {num} analytic {ana}"
                );
            }
        }
    }

    #[test]
    fn rowwise_backward_matches_central_differences() {
        let rows = [[0.3f64, -1.2, 2.0, 0.1], [-0.5, -0.4, -0.45, -3.0]];
        for (a, x) in Activation::all()
            .filter(|a| !a.is_elementwise())
            .flat_map(|a| rows.map(|x| (a, x)))
        {
            let dy = [0.5f64, -0.25, 1.0, 0.75];
            let mut y = x;
            a.apply_row(&mut y);
            let mut dx = [0.0; 4];
            a.backward_row(&x, &y, &dy, &mut dx);
            for k in 0..4 {
                let h = 1e-6;
                let (mut p, mut m) = (x, x);
                p[k] += h;
                m[k] -= h;
                a.apply_row(&mut p);
                a.apply_row(&mut m);
                let num: f64 = (0..4).map(|j| dy[j] * (p[j] - m[j]) / (2.0 * h)).sum();
                assert!((num - dx[k]).abs() < 1e-6, "{a} component {k}");
            }
        }
    }

    /// Keras' sparsemax (TensorFlow backend): `[-0.5, -0.4, -0.45, -3]` has a support of 3 and
    /// `τ = ((-0.4) + (-0.85) + (-1.35) - 1) / 3 = -1.2`; `[0.5, 0.5]` gives `[0.25, 0.25]`, not
    /// the paper's `[0.5, 0.5]`.
    #[test]
    fn sparsemax_is_keras_formula() {
        let mut y = [-0.5f64, -0.4, -0.45, -3.0];
        Activation::Sparsemax.apply_row(&mut y);
        for (v, want) in y.iter().zip([0.7, 0.8, 0.75, 0.0]) {
            assert!((v - want).abs() < 1e-12, "{y:?}");
        }
        let mut y = [0.5f32, 0.5];
        Activation::Sparsemax.apply_row(&mut y);
        assert_eq!(y, [0.25, 0.25]);
        assert_eq!(Activation::Sparsemax.apply(3.0f32), 1.0);
    }

    /// Up to 16 values a row holding NaN sorts as TensorFlow's `top_k` sorts it; a longer one is
    /// NaN throughout, values and gradient, and nothing panics on any mix of non-finite values.
    #[test]
    fn sparsemax_nan_rows() {
        let mut y = [1.0f32, f32::NAN, 0.0];
        Activation::Sparsemax.apply_row(&mut y);
        assert!(y[0] == 1.0 && y[1].is_nan() && y[2] == 0.0, "{y:?}");
        let mut long: Vec<f32> = (0..17).map(|i| i as f32 * 0.1).collect();
        long[5] = f32::NAN;
        let x = long.clone();
        Activation::Sparsemax.apply_row(&mut long);
        assert!(long.iter().all(|v| v.is_nan()));
        let mut dx = vec![0.0f32; 17];
        Activation::Sparsemax.backward_row(&x, &long, &[1.0; 17], &mut dx);
        assert!(dx.iter().all(|v| v.is_nan()));
        let odd = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e38,
            -1e38,
        ];
        for n in 1..=odd.len() {
            for start in 0..odd.len() {
                let x: Vec<f32> = (0..n).map(|i| odd[(start + i * 3) % odd.len()]).collect();
                let mut y = x.clone();
                Activation::Sparsemax.apply_row(&mut y);
                let mut dx = vec![0.0f32; n];
                Activation::Sparsemax.backward_row(&x, &y, &vec![1.0; n], &mut dx);
            }
        }
    }

    #[test]
    fn extremes_are_finite() {
        for a in Activation::all().filter(|a| *a != Activation::Exponential) {
            for x in [-1e30f32, -88.0, -20.0, 20.0, 88.0, 1e30] {
                let y = a.apply(x);
                assert!(!y.is_nan(), "{a}({x}) = NaN");
                assert!(!a.derivative(x, y).is_nan(), "{a}'({x}) = NaN");
            }
        }
    }
}
