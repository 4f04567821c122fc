//! The weightless layers that map each feature vector of their input on its own and pass its
//! mask on: `ReLU`, `LeakyReLU`, `ELU`, `Softmax`, `Identity`, `Rescaling` and
//! `UnitNormalization`, as Keras 3.15.1 computes them with the TensorFlow backend (and with
//! TensorFlow's gradients, ties included).
//!
//! They differ from the [`Activation`] layer in carrying arguments (a `ReLU`'s `max_value`, a
//! `LeakyReLU`'s slope, …), so they keep their own Keras class when a model is written back.

use serde_json::{json, Map, Value};
use std::borrow::Cow;

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// A `Rescaling` factor or offset: one number, or one per feature (last axis).
#[derive(Clone, Debug, PartialEq)]
pub enum Coef {
    /// One number for every value (Keras writes a float).
    Scalar(f64),
    /// One number per feature (Keras writes a list).
    PerFeature(Vec<f64>),
}

impl Coef {
    fn read(cfg: &Map<String, Value>, key: &str, default: f64) -> Result<Self, ConfigError> {
        let arg = format!("Rescaling.{key}");
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(Coef::Scalar(default)),
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_f64().filter(|f| f.is_finite()))
                .collect::<Option<Vec<f64>>>()
                .map(Coef::PerFeature)
                .ok_or_else(|| {
                    ConfigError::invalid(arg, Value::Array(a.clone()), "finite numbers")
                }),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Coef::Scalar)
                .ok_or_else(|| {
                    ConfigError::invalid(arg, v, "a finite number or a non-empty list of them")
                }),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Coef::Scalar(s) => json!(s),
            Coef::PerFeature(v) => json!(v),
        }
    }

    /// The `n` per-feature values, after checking that a list has 1 or `n` entries.
    fn at<T: Float>(&self, n: usize, key: &str) -> Result<Vec<T>, Error> {
        match self {
            Coef::Scalar(s) => Ok(vec![T::of(*s); n]),
            Coef::PerFeature(v) if v.len() == 1 => Ok(vec![T::of(v[0]); n]),
            Coef::PerFeature(v) if v.len() == n => Ok(v.iter().map(|&s| T::of(s)).collect()),
            Coef::PerFeature(v) => Err(ShapeError::mismatch(
                format!("Rescaling.{key}"),
                &[v.len()],
                format!("1 or {n} values (the input's last axis)"),
            )
            .into()),
        }
    }
}

/// One of the weightless, mask-preserving layers of this module.
///
/// ```
/// use grucell::layers::pointwise::Pointwise;
/// use grucell::Tensor;
/// let x = Tensor::new(vec![1, 4], vec![-2.0f32, 0.5, 3.0, 9.0])?;
/// let relu = Pointwise::Relu { max_value: Some(4.0), negative_slope: 0.5, threshold: 0.0 };
/// assert_eq!(relu.call(&x)?.data(), &[-1.0f32, 0.5, 3.0, 4.0]);
/// let leaky = Pointwise::LeakyRelu { negative_slope: 0.3 };
/// assert!((leaky.call(&x)?.data()[0] + 0.6).abs() < 1e-6);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Pointwise {
    /// `ReLU(max_value, negative_slope, threshold)`: Keras' `activations.relu`.
    Relu {
        /// Upper clip (`None`: none).
        max_value: Option<f64>,
        /// Slope below the threshold.
        negative_slope: f64,
        /// Values at or below it are damped.
        threshold: f64,
    },
    /// `LeakyReLU(negative_slope)` (default 0.3; TF-Keras 2 calls it `alpha`).
    LeakyRelu {
        /// Slope for `x ≤ 0`.
        negative_slope: f64,
    },
    /// `ELU(alpha)`: `x` for `x > 0`, else `alpha · (eˣ − 1)`.
    Elu {
        /// Scale of the negative part.
        alpha: f64,
    },
    /// `Softmax(axis)`: over one axis (`activations.softmax`), or over several as
    /// `exp(x − logsumexp(x))`.
    Softmax {
        /// The axis or axes (default `-1`).
        axis: Axis,
    },
    /// `Identity`.
    Identity,
    /// `Rescaling(scale, offset)`: `x · scale + offset`.
    Rescaling {
        /// Factor.
        scale: Coef,
        /// Added after the factor.
        offset: Coef,
    },
    /// `UnitNormalization(axis)`: `x · min(1/√Σx², 10¹²)`, the sum over the axis or axes.
    UnitNormalization {
        /// The axis or axes (default `-1`).
        axis: Axis,
    },
}

/// `UnitNormalization`'s ε (`ops.normalize(…, epsilon=1e-12)`).
const UNIT_NORM_EPSILON: f64 = 1e-12;

/// TensorFlow's `LeakyRelu` holds its slope in a `float` attribute, so a `float64` model gets
/// the slope rounded to `float32` too.
fn leaky_attr<T: Float>(slope: f64) -> T {
    T::of(f64::from(slope as f32))
}

/// The `axis` argument of `Softmax` and `UnitNormalization`, in the form the config gave it
/// (Keras writes it back so): one axis, or a list of them. Negative values count from the end;
/// the batch axis (0) is refused.
///
/// ```
/// use grucell::layers::pointwise::{Axis, Pointwise};
/// use grucell::Tensor;
/// // Softmax over the time axis of a (batch, time, 1) tensor of scores.
/// let softmax = Pointwise::Softmax { axis: Axis::One(1) };
/// let x = Tensor::new(vec![1, 2, 1], vec![0.0f32, 2.0f32.ln()])?;
/// let y = softmax.call(&x)?;
/// assert!((y.data()[0] - 1.0 / 3.0).abs() < 1e-6 && (y.data()[1] - 2.0 / 3.0).abs() < 1e-6);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Axis {
    /// One axis (an integer in the config).
    One(i64),
    /// A list of axes.
    List(Vec<i64>),
}

impl Default for Axis {
    fn default() -> Self {
        Axis::One(-1)
    }
}

impl Axis {
    /// Reads `class`'s `axis` (absent or `null`: `-1`).
    fn read(cfg: &Map<String, Value>, class: &str) -> Result<Self, ConfigError> {
        let arg = format!("{class}.axis");
        let one = |v: &Value| {
            v.as_i64().filter(|&a| a != 0).ok_or_else(|| {
                ConfigError::invalid(
                    arg.clone(),
                    v,
                    "a non-zero integer (axis 0 is the batch, which grucell does not reduce over)",
                )
            })
        };
        let axis = match cfg.get("axis") {
            None | Some(Value::Null) => Axis::default(),
            Some(Value::Array(a)) if !a.is_empty() => {
                let axes = a.iter().map(one).collect::<Result<Vec<i64>, _>>()?;
                if (1..axes.len()).any(|i| axes[..i].contains(&axes[i])) {
                    return Err(ConfigError::invalid(
                        arg,
                        Value::Array(a.clone()),
                        "distinct axes",
                    ));
                }
                Axis::List(axes)
            }
            Some(v) => Axis::One(one(v)?),
        };
        Ok(axis)
    }

    fn to_json(&self) -> Value {
        match self {
            Axis::One(a) => json!(a),
            Axis::List(a) => json!(a),
        }
    }

    /// The axes as given.
    pub fn values(&self) -> &[i64] {
        match self {
            Axis::One(a) => std::slice::from_ref(a),
            Axis::List(a) => a,
        }
    }

    /// Whether the reduction runs over one axis (Keras' `activations.softmax` path).
    fn single(&self) -> bool {
        self.values().len() == 1
    }

    /// How a reduction over these axes of an input of shape `shape` visits its rows.
    fn groups(&self, shape: &[usize], class: &str) -> Result<Groups, Error> {
        Ok(Groups::new(shape, &self.resolve(shape, class)?))
    }

    /// The axes of an input of shape `shape`, ascending; each must name an axis other than the
    /// batch.
    fn resolve(&self, shape: &[usize], class: &str) -> Result<Vec<usize>, Error> {
        let rank = shape.len();
        let r = rank as i64;
        let mut out = Vec::with_capacity(self.values().len());
        for &a in self.values() {
            let k = if a < 0 { a + r } else { a };
            if k < 1 || k >= r {
                return Err(ShapeError::mismatch(
                    format!("{class} input (axis {a})"),
                    shape,
                    "a shape with that axis beyond the batch axis",
                )
                .into());
            }
            out.push(k as usize);
        }
        out.sort_unstable();
        if out.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::invalid(
                format!("{class}.axis"),
                self.to_json(),
                format!("distinct axes of a rank-{rank} input"),
            )
            .into());
        }
        Ok(out)
    }
}

/// The groups a reduction over some axes runs on, each as a row: the row length, and the order
/// that gathers the input's values row after row (`None` when the axes are the trailing ones, so
/// that rows are already contiguous). TensorFlow moves a non-last softmax axis last in the same
/// way (a transpose), then runs its row kernel.
struct Groups {
    len: usize,
    order: Option<Vec<usize>>,
}

impl Groups {
    fn new(shape: &[usize], axes: &[usize]) -> Self {
        let rank = shape.len();
        let len = axes.iter().map(|&a| shape[a]).product::<usize>().max(1);
        let trailing = axes
            .iter()
            .enumerate()
            .all(|(i, &a)| a == rank - axes.len() + i);
        if trailing {
            return Groups { len, order: None };
        }
        let mut strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        // Kept axes first, then the reduced ones: an odometer over the permuted shape.
        let perm: Vec<usize> = (0..rank)
            .filter(|a| !axes.contains(a))
            .chain(axes.iter().copied())
            .collect();
        let dims: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let steps: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
        let total = shape.iter().product::<usize>();
        let mut order = Vec::with_capacity(total);
        let mut idx = vec![0usize; rank];
        let mut offset = 0usize;
        for _ in 0..total {
            order.push(offset);
            for d in (0..rank).rev() {
                idx[d] += 1;
                offset += steps[d];
                if idx[d] < dims[d] {
                    break;
                }
                offset -= steps[d] * dims[d];
                idx[d] = 0;
            }
        }
        Groups {
            len,
            order: Some(order),
        }
    }

    /// The values, row after row (borrowed when the rows are contiguous already).
    fn gather<'a, T: Copy>(&self, data: &'a [T]) -> Cow<'a, [T]> {
        match &self.order {
            None => Cow::Borrowed(data),
            Some(order) => order.iter().filter_map(|&i| data.get(i).copied()).collect(),
        }
    }

    /// Runs `f(i, row)` on each row `i` of `out`, in place when the rows are contiguous, else on
    /// gathered rows that are then written back to their places.
    fn map_rows<T: Copy>(&self, out: &mut [T], mut f: impl FnMut(usize, &mut [T])) {
        let Some(order) = &self.order else {
            out.chunks_exact_mut(self.len)
                .enumerate()
                .for_each(|(i, row)| f(i, row));
            return;
        };
        let mut rows = self.gather(out).into_owned();
        rows.chunks_exact_mut(self.len)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
        for (&i, &v) in order.iter().zip(&rows) {
            if let Some(o) = out.get_mut(i) {
                *o = v;
            }
        }
    }

    /// Row `i` of gathered values.
    fn row<'a, T>(&self, rows: &'a [T], i: usize) -> &'a [T] {
        rows.get(i * self.len..(i + 1) * self.len).unwrap_or(&[])
    }
}

/// Softmax over several axes as Keras' `Softmax` layer computes it:
/// `exp(x − logsumexp(x))`, TensorFlow's `reduce_logsumexp` being `log(Σ exp(x − m)) + m` with
/// `m` the row's maximum (0 when that is not finite).
fn softmax_via_logsumexp<T: Float>(row: &mut [T]) {
    let m = logsumexp_shift(row);
    let s = row.iter().fold(T::zero(), |a, &v| a + (v - m).exp());
    let lse = s.ln() + m;
    row.iter_mut().for_each(|v| *v = (*v - lse).exp());
}

/// `reduce_logsumexp`'s shift: the maximum, or 0 when it is not finite.
fn logsumexp_shift<T: Float>(row: &[T]) -> T {
    let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    if m.is_finite() {
        m
    } else {
        T::zero()
    }
}

/// The gradient of [`softmax_via_logsumexp`] as TensorFlow differentiates it: through `exp`,
/// `g = dy·y`, then through `logsumexp` (its shift held constant),
/// `dx = g − (Σg)·exp(x − m)/Σexp(x − m)`.
fn softmax_via_logsumexp_grad<T: Float>(x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    let m = logsumexp_shift(x);
    let s = x.iter().fold(T::zero(), |a, &v| a + (v - m).exp());
    let total = y.iter().zip(dy).fold(T::zero(), |a, (&y, &g)| a + g * y);
    for (((d, &xv), &yv), &g) in dx.iter_mut().zip(x).zip(y).zip(dy) {
        *d = g * yv - total * ((xv - m).exp() / s);
    }
}

fn non_negative(
    cfg: &Map<String, Value>,
    class: &str,
    key: &str,
    default: f64,
) -> Result<f64, ConfigError> {
    let v = cfg.get(key).unwrap_or(&Value::Null);
    match v {
        Value::Null => Ok(default),
        _ => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .ok_or_else(|| {
                ConfigError::invalid(format!("{class}.{key}"), v, "a finite number ≥ 0")
            }),
    }
}

impl Pointwise {
    /// Reads the config of Keras class `class` (`ReLU`, `LeakyReLU`, `ELU`, `Softmax`,
    /// `Identity`, `Rescaling`, `UnitNormalization`); `None` for another class.
    pub fn from_keras(class: &str, cfg: &Map<String, Value>) -> Result<Option<Self>, ConfigError> {
        Ok(Some(match class {
            "ReLU" => {
                let max_value = match cfg.get("max_value") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(non_negative(cfg, class, "max_value", 0.0)?),
                };
                Pointwise::Relu {
                    max_value,
                    negative_slope: non_negative(cfg, class, "negative_slope", 0.0)?,
                    threshold: non_negative(cfg, class, "threshold", 0.0)?,
                }
            }
            "LeakyReLU" => {
                // Keras 3 still takes TF-Keras 2's `alpha` for the slope.
                let key = if cfg.contains_key("negative_slope") {
                    "negative_slope"
                } else {
                    "alpha"
                };
                Pointwise::LeakyRelu {
                    negative_slope: non_negative(cfg, class, key, 0.3)?,
                }
            }
            "ELU" => {
                let v = cfg.get("alpha").unwrap_or(&Value::Null);
                let alpha = match v {
                    Value::Null => 1.0,
                    _ => v
                        .as_f64()
                        .filter(|f| f.is_finite())
                        .ok_or_else(|| ConfigError::invalid("ELU.alpha", v, "a finite number"))?,
                };
                Pointwise::Elu { alpha }
            }
            "Softmax" => Pointwise::Softmax {
                axis: Axis::read(cfg, class)?,
            },
            "Identity" => Pointwise::Identity,
            "Rescaling" => Pointwise::Rescaling {
                scale: Coef::read(cfg, "scale", 1.0)?,
                offset: Coef::read(cfg, "offset", 0.0)?,
            },
            "UnitNormalization" => Pointwise::UnitNormalization {
                axis: Axis::read(cfg, class)?,
            },
            _ => return Ok(None),
        }))
    }

    /// The Keras class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Pointwise::Relu { .. } => "ReLU",
            Pointwise::LeakyRelu { .. } => "LeakyReLU",
            Pointwise::Elu { .. } => "ELU",
            Pointwise::Softmax { .. } => "Softmax",
            Pointwise::Identity => "Identity",
            Pointwise::Rescaling { .. } => "Rescaling",
            Pointwise::UnitNormalization { .. } => "UnitNormalization",
        }
    }

    /// Adds the layer's own keys to a Keras config.
    pub fn write_keras(&self, c: &mut Map<String, Value>) {
        match self {
            Pointwise::Relu {
                max_value,
                negative_slope,
                threshold,
            } => {
                c.insert("max_value".into(), json!(max_value));
                c.insert("negative_slope".into(), json!(negative_slope));
                c.insert("threshold".into(), json!(threshold));
            }
            Pointwise::LeakyRelu { negative_slope } => {
                c.insert("negative_slope".into(), json!(negative_slope));
            }
            Pointwise::Elu { alpha } => {
                c.insert("alpha".into(), json!(alpha));
            }
            Pointwise::Softmax { axis } | Pointwise::UnitNormalization { axis } => {
                c.insert("axis".into(), axis.to_json());
            }
            Pointwise::Identity => {}
            Pointwise::Rescaling { scale, offset } => {
                c.insert("scale".into(), scale.to_json());
                c.insert("offset".into(), offset.to_json());
            }
        }
    }

    /// Whether Keras writes a `build_config` for the layer: only `Rescaling` has a `build`.
    pub(crate) fn keras_builds(&self) -> bool {
        matches!(self, Pointwise::Rescaling { .. })
    }

    /// The activation whose input Keras' crossentropies read as logits when this layer makes
    /// a model output: a `Softmax` over one axis, which calls `activations.softmax` (its
    /// output keeps the logits whatever the axis; the loss then takes the softmax of those
    /// logits over its own axis, the last, as Keras does). A `Softmax` over several axes
    /// computes `exp(x − logsumexp(x))`, which carries no logits.
    pub fn logits_activation(&self) -> Option<Activation> {
        match self {
            Pointwise::Softmax { axis } if axis.single() => Some(Activation::Softmax),
            _ => None,
        }
    }

    /// Whether the layer, with its axes counted on the sequence (a wrapped layer's axis
    /// `k ≥ 1` is the sequence's `k + 1`), is the same on each time step as on the sequence, so
    /// that `TimeDistributed` around it is the layer itself: every layer here except a `Softmax`
    /// or `UnitNormalization` with a negative axis other than `-1`, which may count into the
    /// merged batch and time axis.
    pub fn per_step(&self) -> bool {
        match self {
            Pointwise::Softmax { axis } | Pointwise::UnitNormalization { axis } => {
                axis.values().iter().all(|&a| a == -1 || a > 0)
            }
            _ => true,
        }
    }

    /// [`Pointwise::call`] on an input that may carry a mask, which passes through. Keras
    /// refuses a `Softmax` that gets a `(batch, time)` mask with its `(batch, time, features)`
    /// input (the mask does not broadcast), and so does this.
    pub fn call_masked<T: Float>(
        &self,
        x: &Tensor<T>,
        mask: Option<&Mask>,
    ) -> Result<Tensor<T>, Error> {
        if matches!(self, Pointwise::Softmax { .. }) && mask.is_some() {
            return Err(ConfigError::unsupported(
                "Softmax input",
                "a masked tensor (Keras refuses it too: a (batch, time) mask does not broadcast to the (batch, time, features) input)",
            )
            .into());
        }
        self.call(x)
    }

    /// Applies the layer to `x` (any rank; rows along the last axis, or along a `Softmax`'s
    /// or `UnitNormalization`'s axes).
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let n = x.shape().last().copied().unwrap_or(1).max(1);
        let mut y = x.clone();
        match self {
            Pointwise::Relu { .. } | Pointwise::LeakyRelu { .. } | Pointwise::Elu { .. } => {
                y.data_mut().iter_mut().for_each(|v| *v = self.scalar(*v));
            }
            Pointwise::Softmax { axis } => {
                axis.groups(x.shape(), "Softmax")?
                    .map_rows(y.data_mut(), |_, row| {
                        if axis.single() {
                            Activation::Softmax.apply_row(row);
                        } else {
                            softmax_via_logsumexp(row);
                        }
                    });
            }
            Pointwise::Identity => {}
            Pointwise::Rescaling { scale, offset } => {
                let (s, o) = (scale.at::<T>(n, "scale")?, offset.at::<T>(n, "offset")?);
                for row in y.data_mut().chunks_exact_mut(n) {
                    for ((v, &s), &o) in row.iter_mut().zip(&s).zip(&o) {
                        *v = *v * s + o;
                    }
                }
            }
            Pointwise::UnitNormalization { axis } => {
                axis.groups(x.shape(), "UnitNormalization")?
                    .map_rows(y.data_mut(), |_, row| {
                        let inv = L2Scale::of(row.iter().copied(), UNIT_NORM_EPSILON).inv;
                        row.iter_mut().for_each(|v| *v *= inv);
                    });
            }
        }
        Ok(y)
    }

    /// A `ReLU`'s `(max_value, negative_slope, threshold)`, and a `LeakyReLU`'s as the `ReLU` it
    /// equals, `(None, slope, 0)`; `None` for the other layers.
    fn relu_args(&self) -> Option<(Option<f64>, f64, f64)> {
        match *self {
            Pointwise::Relu {
                max_value,
                negative_slope,
                threshold,
            } => Some((max_value, negative_slope, threshold)),
            Pointwise::LeakyRelu { negative_slope } => Some((None, negative_slope, 0.0)),
            _ => None,
        }
    }

    /// The element-wise layers' value at one point, step by step as Keras' `relu` and `elu`
    /// compute it (`ReLU.static_call`: `leaky_relu` when only the slope is set, else the
    /// positive part by `where(x > t, x, 0)`, `relu6` or `relu`, then `clip` to `max_value`,
    /// minus `slope · relu(t − x)`).
    fn scalar<T: Float>(&self, x: T) -> T {
        let zero = T::zero();
        let relu = |v: T| if v > zero { v } else { zero };
        if let Some((max_value, slope, threshold)) = self.relu_args() {
            if slope != 0.0 && max_value.is_none() && threshold == 0.0 {
                return if x > zero {
                    x
                } else {
                    x * leaky_attr::<T>(slope)
                };
            }
            let th = T::of(threshold);
            let relu6 = threshold == 0.0 && max_value == Some(6.0);
            let mut v = if threshold != 0.0 {
                if x > th {
                    x
                } else {
                    zero
                }
            } else if relu6 {
                relu(x).min(T::of(6.0))
            } else {
                relu(x)
            };
            if let Some(m) = max_value.filter(|_| !relu6) {
                v = v.max(zero).min(T::of(m));
            }
            if slope != 0.0 {
                v -= T::of(slope) * relu(-x + th);
            }
            return v;
        }
        match *self {
            Pointwise::Elu { alpha } => {
                let e = if x > zero { x } else { x.exp_m1() };
                if alpha == 1.0 || x > zero {
                    e
                } else {
                    T::of(alpha) * e
                }
            }
            _ => x,
        }
    }

    /// The derivative of [`Pointwise::scalar`] at `x`, as TensorFlow's gradients give it
    /// (`ReluGrad` and `LeakyReluGrad` pass at `x > 0`, `Relu6Grad` inside `(0, 6)`,
    /// `clip_by_value` inside `[0, m]`, ends included; `EluGrad` from the output).
    fn scalar_grad<T: Float>(&self, x: T) -> T {
        let (zero, one) = (T::zero(), T::one());
        let step = |b: bool| if b { one } else { zero };
        if let Some((max_value, slope, threshold)) = self.relu_args() {
            if slope != 0.0 && max_value.is_none() && threshold == 0.0 {
                return if x > zero {
                    one
                } else {
                    leaky_attr::<T>(slope)
                };
            }
            let th = T::of(threshold);
            let relu6 = threshold == 0.0 && max_value == Some(6.0);
            let (mut g, v) = if relu6 {
                (step(x > zero && x < T::of(6.0)), zero)
            } else {
                // `where(x > t, x, 0)` and `relu` (t = 0) alike.
                (step(x > th), if x > th { x } else { zero })
            };
            if max_value.is_some_and(|m| !relu6 && v > T::of(m)) {
                g = zero;
            }
            if slope != 0.0 && -x + th > zero {
                g += T::of(slope);
            }
            return g;
        }
        match *self {
            Pointwise::Elu { alpha } => {
                if x > zero {
                    one
                } else {
                    // EluGrad: dy·(y + 1) for y = eˣ − 1 < 0, then alpha's factor.
                    let e = x.exp_m1();
                    let d = if e < zero { e + one } else { one };
                    if alpha == 1.0 {
                        d
                    } else {
                        T::of(alpha) * d
                    }
                }
            }
            _ => one,
        }
    }

    /// The gradient with respect to the input, given the input `x`, the output `y` and the
    /// output's gradient `dy`.
    pub fn backward<T: Float>(
        &self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        dy: &Tensor<T>,
    ) -> Result<Tensor<T>, Error> {
        if x.shape() != dy.shape() || y.shape() != dy.shape() {
            return Err(ShapeError::mismatch(
                format!("{} output gradient", self.class_name()),
                dy.shape(),
                format!("{:?} (the layer's input and output)", x.shape()),
            )
            .into());
        }
        let n = x.shape().last().copied().unwrap_or(1).max(1);
        let mut dx = dy.clone();
        match self {
            Pointwise::Relu { .. } | Pointwise::LeakyRelu { .. } | Pointwise::Elu { .. } => {
                for (d, &v) in dx.data_mut().iter_mut().zip(x.data()) {
                    *d *= self.scalar_grad(v);
                }
            }
            Pointwise::Softmax { axis } => {
                let g = axis.groups(x.shape(), "Softmax")?;
                let (xs, ys, gs) = (g.gather(x.data()), g.gather(y.data()), g.gather(dy.data()));
                g.map_rows(dx.data_mut(), |i, dr| {
                    let (xr, yr, gr) = (g.row(&xs, i), g.row(&ys, i), g.row(&gs, i));
                    if axis.single() {
                        Activation::Softmax.backward_row(xr, yr, gr, dr);
                    } else {
                        softmax_via_logsumexp_grad(xr, yr, gr, dr);
                    }
                });
            }
            Pointwise::Identity => {}
            Pointwise::Rescaling { scale, .. } => {
                let s = scale.at::<T>(n, "scale")?;
                for row in dx.data_mut().chunks_exact_mut(n) {
                    row.iter_mut().zip(&s).for_each(|(d, &s)| *d *= s);
                }
            }
            Pointwise::UnitNormalization { axis } => {
                let g = axis.groups(x.shape(), "UnitNormalization")?;
                let xs = g.gather(x.data());
                g.map_rows(dx.data_mut(), |i, dr| {
                    let xr = g.row(&xs, i);
                    let scale = L2Scale::of(xr.iter().copied(), UNIT_NORM_EPSILON);
                    let dinv = dr.iter().zip(xr).fold(T::zero(), |a, (&d, &v)| a + d * v);
                    dr.iter_mut().for_each(|d| *d *= scale.inv);
                    if let Some(c) = scale.square_sum_grad(dinv) {
                        for (d, &v) in dr.iter_mut().zip(xr) {
                            *d += c * (v * T::of(2.0));
                        }
                    }
                });
            }
        }
        Ok(dx)
    }
}

/// The scale of Keras' order-2 `ops.normalize(x, epsilon)` of one vector, `x̂ = x·inv` with
/// `inv = min(r, 1/ε)` and `r = 1/√Σx²`, and its gradient. `UnitNormalization` (ε = 10⁻¹²),
/// `Dot(normalize=True)` and the cosine-similarity loss (ε = 10⁻⁷) use it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct L2Scale<T> {
    /// The factor applied, `min(r, 1/ε)`.
    pub(crate) inv: T,
    r: T,
    cap: T,
}

impl<T: Float> L2Scale<T> {
    /// The scale of the vector `values`.
    pub(crate) fn of(values: impl IntoIterator<Item = T>, epsilon: f64) -> Self {
        let cap = T::of(1.0 / epsilon);
        let s = values.into_iter().fold(T::zero(), |a, v| a + v * v);
        let r = T::one() / s.sqrt();
        L2Scale {
            inv: r.min(cap),
            r,
            cap,
        }
    }

    /// Given `d inv = Σ d x̂·x`, the `c` of the gradient's extra term `c·2x`: `minimum` passes
    /// `d inv` on where `rsqrt ≤ 1/ε` (`None` elsewhere), then RsqrtGrad `−½(d inv·r)(r·r)`.
    /// The whole gradient is `dx = d x̂·inv + c·2x`.
    pub(crate) fn square_sum_grad(&self, dinv: T) -> Option<T> {
        (self.r <= self.cap).then(|| (T::of(-0.5) * (dinv * self.r)) * (self.r * self.r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<Pointwise> {
        vec![
            Pointwise::Relu {
                max_value: None,
                negative_slope: 0.0,
                threshold: 0.0,
            },
            Pointwise::Relu {
                max_value: Some(6.0),
                negative_slope: 0.0,
                threshold: 0.0,
            },
            Pointwise::Relu {
                max_value: Some(2.5),
                negative_slope: 0.1,
                threshold: 0.0,
            },
            Pointwise::Relu {
                max_value: None,
                negative_slope: 0.2,
                threshold: 0.0,
            },
            Pointwise::Relu {
                max_value: Some(3.0),
                negative_slope: 0.3,
                threshold: 0.5,
            },
            Pointwise::Relu {
                max_value: None,
                negative_slope: 0.0,
                threshold: 0.7,
            },
            Pointwise::LeakyRelu {
                negative_slope: 0.3,
            },
            Pointwise::LeakyRelu {
                negative_slope: 0.0,
            },
            Pointwise::Elu { alpha: 1.0 },
            Pointwise::Elu { alpha: 0.4 },
            Pointwise::Softmax {
                axis: Axis::default(),
            },
            Pointwise::Identity,
            Pointwise::Rescaling {
                scale: Coef::PerFeature(vec![0.5, -2.0, 3.0]),
                offset: Coef::Scalar(0.25),
            },
            Pointwise::UnitNormalization {
                axis: Axis::default(),
            },
        ]
    }

    /// The layers that reduce over axes, with every kind of axis a rank-3 input allows.
    fn axis_layers() -> Vec<Pointwise> {
        let axes = [
            Axis::One(1),
            Axis::One(-2),
            Axis::List(vec![2]),
            Axis::List(vec![1, 2]),
            Axis::List(vec![-1, 1]),
        ];
        axes.iter()
            .flat_map(|a| {
                [
                    Pointwise::Softmax { axis: a.clone() },
                    Pointwise::UnitNormalization { axis: a.clone() },
                ]
            })
            .collect()
    }

    /// Central differences of `Σ w·layer(x)` against `backward` for every input value.
    fn check_input_gradients(l: &Pointwise, x: &Tensor<f64>, w: &[f64]) {
        let y = l.call(x).unwrap();
        let dy = Tensor::new(x.shape().to_vec(), w.to_vec()).unwrap();
        let dx = l.backward(x, &y, &dy).unwrap();
        for i in 0..x.len() {
            let f = |h: f64| {
                let mut xp = x.clone();
                xp.data_mut()[i] += h;
                let yp = l.call(&xp).unwrap();
                yp.data().iter().zip(w).map(|(a, b)| a * b).sum::<f64>()
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!(
                (fd - dx.data()[i]).abs() < 1e-6,
                "{l:?} at {i}: {fd} vs {}",
                dx.data()[i]
            );
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let x = Tensor::new(vec![2, 3], vec![-1.3f64, 0.37, 2.9, 0.81, -0.22, 7.4]).unwrap();
        // A weighted sum of the output, so that Softmax and UnitNormalization get a gradient.
        let w = [0.3, -1.1, 0.7, 1.9, 0.2, -0.6];
        for l in layers() {
            check_input_gradients(&l, &x, &w);
        }
    }

    #[test]
    fn axis_gradients_match_central_differences() {
        let x: Vec<f64> = (0..24)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.37)
            .collect();
        let x = Tensor::new(vec![2, 3, 4], x).unwrap();
        let w: Vec<f64> = (0..24)
            .map(|i| ((i * 5 % 13) as f64 - 6.0) * 0.21)
            .collect();
        for l in axis_layers() {
            check_input_gradients(&l, &x, &w);
        }
    }

    #[test]
    fn axes_reduce_over_the_right_values() {
        // (1, 2, 3): softmax over the time axis normalizes each feature over the 2 steps.
        let x = Tensor::new(vec![1, 2, 3], vec![0.0f64, 1.0, 2.0, 3.0, 5.0, 2.0]).unwrap();
        let y = Pointwise::Softmax { axis: Axis::One(1) }.call(&x).unwrap();
        for f in 0..3 {
            let (a, b) = (x.data()[f], x.data()[3 + f]);
            let want = a.exp() / (a.exp() + b.exp());
            assert!((y.data()[f] - want).abs() < 1e-15, "{f}");
            assert!((y.data()[f] + y.data()[3 + f] - 1.0).abs() < 1e-15);
        }
        // Over both non-batch axes: the six values sum to one (and [1, 2] is [2, 1]).
        let both = Pointwise::Softmax {
            axis: Axis::List(vec![2, 1]),
        };
        let y = both.call(&x).unwrap();
        assert!((y.data().iter().sum::<f64>() - 1.0).abs() < 1e-15);
        let norm = Pointwise::UnitNormalization {
            axis: Axis::List(vec![1, 2]),
        }
        .call(&x)
        .unwrap();
        assert!((norm.data().iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-15);
        // The batch axis, an axis beyond the rank and one axis named twice are refused.
        for (axis, rank) in [
            (Axis::One(-3), 3),
            (Axis::One(3), 3),
            (Axis::One(2), 2),
            (Axis::List(vec![2, -1]), 3),
        ] {
            let x = Tensor::new(vec![1; rank], vec![1.0f32]).unwrap();
            let e = Pointwise::Softmax { axis: axis.clone() }
                .call(&x)
                .unwrap_err()
                .to_string();
            assert!(e.contains("Softmax"), "{axis:?}: {e}");
        }
    }

    #[test]
    fn keras_values() {
        // keras.layers.ReLU(max_value=3, negative_slope=0.3, threshold=0.5) and friends on
        // [-10, -5, 0, 0.25, 5, 10], printed by Keras 3.15.1 (float32 values as doubles).
        let x = Tensor::new(vec![6], vec![-10.0f32, -5.0, 0.0, 0.25, 5.0, 10.0]).unwrap();
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let relu = Pointwise::Relu {
            max_value: Some(3.0),
            negative_slope: 0.3,
            threshold: 0.5,
        };
        let keras = [
            -3.1500000953674316,
            -1.6500000953674316,
            -0.15000000596046448,
            -0.07500000298023224,
            3.0,
            3.0,
        ];
        assert_eq!(relu.call(&x).unwrap().data(), f32s(&keras).as_slice());
        let th = Pointwise::Relu {
            max_value: None,
            negative_slope: 0.0,
            threshold: 5.0,
        };
        assert_eq!(
            th.call(&x).unwrap().data(),
            &[0.0f32, 0.0, 0.0, 0.0, 0.0, 10.0]
        );
        let keras = [
            -1.9999091625213623,
            -1.9865241050720215,
            0.0,
            0.25,
            5.0,
            10.0,
        ];
        let e = Pointwise::Elu { alpha: 2.0 }.call(&x).unwrap();
        assert_eq!(e.data(), f32s(&keras).as_slice());
        let u = Pointwise::UnitNormalization {
            axis: Axis::default(),
        }
        .call(&Tensor::new(vec![2, 2], vec![3.0f32, 4.0, 0.0, 0.0]).unwrap())
        .unwrap();
        assert_eq!(u.data(), &[0.6f32, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn configs_round_trip_and_refuse() {
        for l in layers().into_iter().chain(axis_layers()) {
            let mut c = Map::new();
            l.write_keras(&mut c);
            assert_eq!(
                Pointwise::from_keras(l.class_name(), &c).unwrap(),
                Some(l.clone())
            );
        }
        let cfg = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            Pointwise::from_keras("LeakyReLU", &cfg(json!({"alpha": 0.1}))).unwrap(),
            Some(Pointwise::LeakyRelu {
                negative_slope: 0.1
            })
        );
        assert_eq!(Pointwise::from_keras("Dense", &Map::new()).unwrap(), None);
        for (class, c) in [
            ("ReLU", json!({"max_value": -1.0})),
            ("ReLU", json!({"negative_slope": -0.1})),
            ("LeakyReLU", json!({"negative_slope": "x"})),
            ("Softmax", json!({"axis": 0})),
            ("Softmax", json!({"axis": "x"})),
            ("UnitNormalization", json!({"axis": [1, 1]})),
            ("UnitNormalization", json!({"axis": [0, 1]})),
            ("Rescaling", json!({"scale": []})),
            ("Rescaling", json!({"offset": [1.0, "a"]})),
        ] {
            let e = Pointwise::from_keras(class, &cfg(c.clone()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(class), "{class} {c}: {e}");
        }
        let r = Pointwise::Rescaling {
            scale: Coef::PerFeature(vec![1.0, 2.0]),
            offset: Coef::Scalar(0.0),
        };
        let x = Tensor::new(vec![1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
        assert!(r
            .call(&x)
            .unwrap_err()
            .to_string()
            .contains("Rescaling.scale"));
    }
}
