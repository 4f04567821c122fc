//! `BatchNormalization` over one axis (the features by default), as Keras 3.15.1 computes it
//! with the TensorFlow backend.
//!
//! - Inference (and training of a frozen layer): `inv = rsqrt(moving_variance + ε)·γ`,
//!   `y = x·inv + (β − moving_mean·inv)` (`tf.nn.batch_normalization`).
//! - Training: the same with the batch's mean and (biased) variance over every other axis
//!   (`tf.nn.moments`); under a mask, Keras' masked moments `Σ m·x / (Σ m + 1e-7)` and
//!   `Σ m·(x − mean)² / (Σ m + 1e-7)`, the mask `(batch, steps)` spread over the features. The
//!   moving statistics then become `moving·momentum + batch·(1 − momentum)`
//!   ([`BatchNorm::update_moving`], which training calls once per call of the layer).
//!
//! The mask passes through. `renorm` is refused with an error naming it.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{get_bool, get_f64, get_str};
use crate::layers::regularizer::Regularizer;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// Configuration of a Keras `BatchNormalization` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// The normalized axis (default −1, the last).
    pub axis: isize,
    /// Momentum of the moving statistics (default 0.99).
    pub momentum: f64,
    /// Added to the variance (default 1e-3).
    pub epsilon: f64,
    /// Add the learned offset `β` (default true).
    pub center: bool,
    /// Multiply by the learned scale `γ` (default true).
    pub scale: bool,
    /// `β` initializer (default zeros).
    pub beta_initializer: Initializer,
    /// `γ` initializer (default ones).
    pub gamma_initializer: Initializer,
    /// Moving mean initializer (default zeros).
    pub moving_mean_initializer: Initializer,
    /// Moving variance initializer (default ones).
    pub moving_variance_initializer: Initializer,
    /// `β` penalty.
    pub beta_regularizer: Option<Regularizer>,
    /// `γ` penalty.
    pub gamma_regularizer: Option<Regularizer>,
    /// `β` constraint.
    pub beta_constraint: Option<Constraint>,
    /// `γ` constraint.
    pub gamma_constraint: Option<Constraint>,
    /// Keras' `synchronized` flag (statistics across devices; one device here, so the same).
    pub synchronized: bool,
    /// Layer name.
    pub name: String,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            axis: -1,
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            beta_initializer: Initializer::zeros(),
            gamma_initializer: Initializer::Ones,
            moving_mean_initializer: Initializer::zeros(),
            moving_variance_initializer: Initializer::Ones,
            beta_regularizer: None,
            gamma_regularizer: None,
            beta_constraint: None,
            gamma_constraint: None,
            synchronized: false,
            name: "batch_normalization".into(),
        }
    }
}

impl BatchNormConfig {
    /// Reads a Keras `BatchNormalization` config.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let mut n = BatchNormConfig::default();
        let axis_err = |v: &Value| {
            ConfigError::invalid(
                "BatchNormalization.axis",
                v,
                "an integer or a list of one integer",
            )
        };
        n.axis = match c.get("axis") {
            None | Some(Value::Null) => -1,
            Some(Value::Array(a)) if a.len() == 1 => {
                a[0].as_i64().ok_or_else(|| axis_err(&a[0]))?
            }
            Some(Value::Array(a)) => {
                return Err(ConfigError::unsupported(
                    "BatchNormalization axis",
                    format!("{a:?}: grucell normalizes over one axis"),
                ))
            }
            Some(v) => v.as_i64().ok_or_else(|| axis_err(v))?,
        }
        .clamp(-9, 9) as isize;
        n.momentum = get_f64(c, "momentum", 0.99)?;
        n.epsilon = get_f64(c, "epsilon", 1e-3)?;
        for (key, v) in [("momentum", n.momentum), ("epsilon", n.epsilon)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::invalid(
                    format!("BatchNormalization.{key}"),
                    v,
                    "a finite number ≥ 0",
                ));
            }
        }
        n.center = get_bool(c, "center", true)?;
        n.scale = get_bool(c, "scale", true)?;
        n.synchronized = get_bool(c, "synchronized", false)?;
        if get_bool(c, "renorm", false)? {
            return Err(ConfigError::unsupported(
                "BatchNormalization option",
                "renorm = true (batch renormalization)",
            ));
        }
        // TF-Keras 2's ghost batches and custom adjustments change what training computes.
        for key in ["virtual_batch_size", "adjustment"] {
            if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
                return Err(ConfigError::unsupported(
                    "BatchNormalization option",
                    format!("{key} = {v}"),
                ));
            }
        }
        for (key, slot) in [
            ("beta_initializer", &mut n.beta_initializer),
            ("gamma_initializer", &mut n.gamma_initializer),
            ("moving_mean_initializer", &mut n.moving_mean_initializer),
            (
                "moving_variance_initializer",
                &mut n.moving_variance_initializer,
            ),
        ] {
            if let Some(v) = c.get(key) {
                *slot = Initializer::from_keras(v)?;
            }
        }
        n.beta_regularizer = c
            .get("beta_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        n.gamma_regularizer = c
            .get("gamma_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        n.beta_constraint = c
            .get("beta_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        n.gamma_constraint = c
            .get("gamma_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        if let Some(name) = get_str(c, "name")? {
            n.name = name.into();
        }
        Ok(n)
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("axis".into(), json!(self.axis));
        m.insert("momentum".into(), json!(self.momentum));
        m.insert("epsilon".into(), json!(self.epsilon));
        m.insert("center".into(), json!(self.center));
        m.insert("scale".into(), json!(self.scale));
        m.insert("beta_initializer".into(), self.beta_initializer.to_keras());
        m.insert(
            "gamma_initializer".into(),
            self.gamma_initializer.to_keras(),
        );
        m.insert(
            "moving_mean_initializer".into(),
            self.moving_mean_initializer.to_keras(),
        );
        m.insert(
            "moving_variance_initializer".into(),
            self.moving_variance_initializer.to_keras(),
        );
        m.insert(
            "beta_regularizer".into(),
            opt(self.beta_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "gamma_regularizer".into(),
            opt(self.gamma_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "beta_constraint".into(),
            opt(self.beta_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert(
            "gamma_constraint".into(),
            opt(self.gamma_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert("synchronized".into(), json!(self.synchronized));
        m.insert("renorm".into(), json!(false));
        m.insert("renorm_clipping".into(), Value::Null);
        m.insert("renorm_momentum".into(), json!(0.99));
        m
    }

    /// Builds the layer with fresh weights for `features` values along the axis.
    pub fn build<T: Float>(&self, features: usize, seed: u64) -> Result<BatchNorm<T>, Error> {
        let gamma = if self.scale {
            Some(self.gamma_initializer.init(&[features], seed)?)
        } else {
            None
        };
        let beta = if self.center {
            Some(
                self.beta_initializer
                    .init(&[features], seed.wrapping_add(1))?,
            )
        } else {
            None
        };
        let mean = self
            .moving_mean_initializer
            .init(&[features], seed.wrapping_add(2))?;
        let var = self
            .moving_variance_initializer
            .init(&[features], seed.wrapping_add(3))?;
        BatchNorm::from_weights(self.clone(), gamma, beta, mean, var)
    }
}

/// A `BatchNormalization` layer with its weights, in Keras' order: `γ` (with `scale`), `β` (with
/// `center`), the moving mean and the moving variance (the last two not trainable), each
/// `(features,)`.
///
/// ```
/// use grucell::layers::batch_norm::BatchNormConfig;
/// use grucell::Tensor;
/// let bn = BatchNormConfig::default().build::<f64>(2, 0)?; // γ 1, β 0, moving mean 0, variance 1
/// let x = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 6.0])?;
/// // Inference: the moving statistics, (x − 0)/√(1 + ε).
/// assert!((bn.call(&x)?.data()[3] - 6.0 / 1.001f64.sqrt()).abs() < 1e-12);
/// // Training: the batch's own, per feature (mean 2 and 4, variance 1 and 4).
/// let (y, _) = bn.call_train(&x, None)?;
/// assert!((y.data()[0] + 1.0 / 1.001f64.sqrt()).abs() < 1e-12);
/// assert!((y.data()[3] - 2.0 / 4.001f64.sqrt()).abs() < 1e-12);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchNorm<T = f32> {
    config: BatchNormConfig,
    gamma: Option<Tensor<T>>,
    beta: Option<Tensor<T>>,
    moving_mean: Tensor<T>,
    moving_variance: Tensor<T>,
}

/// The batch statistics of a training call, per feature.
#[derive(Clone, Debug)]
pub struct BatchStats<T> {
    /// Batch mean.
    pub mean: Vec<T>,
    /// Batch (biased) variance.
    pub variance: Vec<T>,
    /// What the sums were divided by (`N`, or `Σ m + 1e-7` under a mask).
    denom: Vec<T>,
}

/// Gradients of a training call of `BatchNormalization`.
pub struct BatchNormGrads<T> {
    /// d loss / d γ.
    pub gamma: Option<Vec<T>>,
    /// d loss / d β.
    pub beta: Option<Vec<T>>,
    /// d loss / d x.
    pub x: Tensor<T>,
}

/// An input seen as `outer × features × inner` around the axis.
#[derive(Clone, Copy)]
struct Layout {
    features: usize,
    inner: usize,
}

impl Layout {
    /// The feature of flat element `e`.
    fn feature(&self, e: usize) -> usize {
        (e / self.inner) % self.features
    }
}

impl<T: Float> BatchNorm<T> {
    /// Wraps weights; fails when they disagree with the config or with each other.
    pub fn from_weights(
        config: BatchNormConfig,
        gamma: Option<Tensor<T>>,
        beta: Option<Tensor<T>>,
        moving_mean: Tensor<T>,
        moving_variance: Tensor<T>,
    ) -> Result<Self, Error> {
        let f = moving_mean.len();
        let bad = |what: &str, got: &[usize], want: String| -> Error {
            ShapeError::mismatch(format!("{}.{what}", config.name), got, want).into()
        };
        if moving_mean.rank() != 1 || !(1..=MAX_UNITS * 16).contains(&f) {
            return Err(bad(
                "moving_mean",
                moving_mean.shape(),
                "(features,)".into(),
            ));
        }
        if moving_variance.shape() != [f] {
            return Err(bad(
                "moving_variance",
                moving_variance.shape(),
                format!("({f},)"),
            ));
        }
        for (what, w, wanted) in [
            ("gamma", &gamma, config.scale),
            ("beta", &beta, config.center),
        ] {
            match (w, wanted) {
                (Some(w), true) if w.shape() == [f] => {}
                (None, false) => {}
                (w, _) => {
                    return Err(bad(
                        what,
                        w.as_ref().map_or(&[][..], |w| w.shape()),
                        if wanted {
                            format!("({f},)")
                        } else {
                            format!("no {what}")
                        },
                    ))
                }
            }
        }
        Ok(BatchNorm {
            config,
            gamma,
            beta,
            moving_mean,
            moving_variance,
        })
    }

    /// The config.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// Every weight in Keras' order: `γ`, `β` (where present), moving mean, moving variance.
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        self.gamma
            .iter()
            .chain(self.beta.iter())
            .chain([&self.moving_mean, &self.moving_variance])
            .collect()
    }

    /// Mutable weights in Keras order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        self.gamma
            .iter_mut()
            .chain(self.beta.iter_mut())
            .chain([&mut self.moving_mean, &mut self.moving_variance])
            .collect()
    }

    /// How many of [`BatchNorm::weights`] training may update (`γ` and `β`; the moving
    /// statistics come first in no optimizer).
    pub fn trainable_weight_count(&self) -> usize {
        usize::from(self.gamma.is_some()) + usize::from(self.beta.is_some())
    }

    /// The regularizers and constraints of [`BatchNorm::weights`], in the same order (none for
    /// the moving statistics).
    pub(crate) fn weight_rules(&self) -> Vec<(Option<Regularizer>, Option<Constraint>)> {
        let c = &self.config;
        let mut v = Vec::new();
        if self.gamma.is_some() {
            v.push((c.gamma_regularizer.clone(), c.gamma_constraint.clone()));
        }
        if self.beta.is_some() {
            v.push((c.beta_regularizer.clone(), c.beta_constraint.clone()));
        }
        v.extend([(None, None), (None, None)]);
        v
    }

    /// Parameter count (the moving statistics included, as Keras counts them).
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// The moving mean.
    pub fn moving_mean(&self) -> &Tensor<T> {
        &self.moving_mean
    }

    /// The moving variance.
    pub fn moving_variance(&self) -> &Tensor<T> {
        &self.moving_variance
    }

    /// Checks `x` against the axis and the weights.
    fn layout(&self, x: &Tensor<T>) -> Result<Layout, Error> {
        let rank = x.rank() as isize;
        let a = if self.config.axis < 0 {
            self.config.axis + rank
        } else {
            self.config.axis
        };
        let f = self.moving_mean.len();
        if a < 1 || a >= rank || x.shape()[a as usize] != f {
            return Err(ShapeError::mismatch(
                format!("{} input", self.config.name),
                x.shape(),
                format!(
                    "{f} values along axis {} (not the batch axis)",
                    self.config.axis
                ),
            )
            .into());
        }
        let a = a as usize;
        Ok(Layout {
            features: f,
            inner: x.shape()[a + 1..].iter().product(),
        })
    }

    /// `x·inv + (β − mean·inv)` with `inv = rsqrt(variance + ε)·γ`, per feature.
    fn normalize(
        &self,
        x: &Tensor<T>,
        l: Layout,
        mean: &[T],
        var: &[T],
    ) -> Result<Tensor<T>, Error> {
        let eps = T::of(self.config.epsilon);
        let inv: Vec<T> = (0..l.features)
            .map(|c| {
                let r = T::one() / (var[c] + eps).sqrt();
                self.gamma.as_ref().map_or(r, |g| r * g.data()[c])
            })
            .collect();
        let shift: Vec<T> = (0..l.features)
            .map(|c| {
                let s = -mean[c] * inv[c];
                self.beta.as_ref().map_or(s, |b| b.data()[c] + s)
            })
            .collect();
        let y = x
            .data()
            .iter()
            .enumerate()
            .map(|(e, &v)| {
                let c = l.feature(e);
                v * inv[c] + shift[c]
            })
            .collect();
        Ok(Tensor::new(x.shape().to_vec(), y)?)
    }

    /// The layer at inference (the moving statistics).
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let l = self.layout(x)?;
        self.normalize(x, l, self.moving_mean.data(), self.moving_variance.data())
    }

    /// The mask flag of each element (`None`: all count), checked against `x`.
    fn element_weights(
        &self,
        x: &Tensor<T>,
        mask: Option<&Mask>,
    ) -> Result<Option<Vec<bool>>, Error> {
        let Some(m) = mask else { return Ok(None) };
        if x.rank() != 3 || m.batch != x.shape()[0] || m.time != x.shape()[1] {
            return Err(ShapeError::mismatch(
                format!("mask of {}", self.config.name),
                &[m.batch, m.time][..],
                format!("the first two axes of its input {:?}", x.shape()),
            )
            .into());
        }
        let last = x.shape()[2].max(1);
        Ok(Some((0..x.len()).map(|e| m.data[e / last]).collect()))
    }

    /// The layer in training: normalized with the batch's statistics (under `mask`, Keras'
    /// masked moments), which it also returns for [`BatchNorm::update_moving`] and
    /// [`BatchNorm::backward`].
    pub fn call_train(
        &self,
        x: &Tensor<T>,
        mask: Option<&Mask>,
    ) -> Result<(Tensor<T>, BatchStats<T>), Error> {
        let l = self.layout(x)?;
        let w = self.element_weights(x, mask)?;
        let f = l.features;
        let mut sum = vec![T::zero(); f];
        let mut count = vec![T::zero(); f];
        for (e, &v) in x.data().iter().enumerate() {
            if w.as_ref().is_none_or(|w| w[e]) {
                let c = l.feature(e);
                sum[c] += v;
                count[c] += T::one();
            }
        }
        // tf.nn.moments divides by N; Keras' masked moments by Σm + backend.epsilon().
        let denom: Vec<T> = count
            .iter()
            .map(|&n| if w.is_some() { n + T::of(1e-7) } else { n })
            .collect();
        let mean: Vec<T> = sum.iter().zip(&denom).map(|(s, d)| *s / *d).collect();
        let mut sq = vec![T::zero(); f];
        for (e, &v) in x.data().iter().enumerate() {
            if w.as_ref().is_none_or(|w| w[e]) {
                let c = l.feature(e);
                sq[c] += (v - mean[c]) * (v - mean[c]);
            }
        }
        let variance: Vec<T> = sq.iter().zip(&denom).map(|(s, d)| *s / *d).collect();
        let y = self.normalize(x, l, &mean, &variance)?;
        Ok((
            y,
            BatchStats {
                mean,
                variance,
                denom,
            },
        ))
    }

    /// Keras' update of the moving statistics after a training call:
    /// `moving·momentum + batch·(1 − momentum)`.
    pub fn update_moving(&mut self, s: &BatchStats<T>) {
        let m = T::of(self.config.momentum);
        let k = T::of(1.0 - self.config.momentum);
        for (v, b) in self.moving_mean.data_mut().iter_mut().zip(&s.mean) {
            *v = *v * m + *b * k;
        }
        for (v, b) in self.moving_variance.data_mut().iter_mut().zip(&s.variance) {
            *v = *v * m + *b * k;
        }
    }

    /// Gradients of a training call given the output's gradient `dy` (`stats` from
    /// [`BatchNorm::call_train`] on the same `x` and `mask`; `None` for a call that used the
    /// moving statistics, a frozen layer's).
    pub fn backward(
        &self,
        x: &Tensor<T>,
        mask: Option<&Mask>,
        stats: Option<&BatchStats<T>>,
        dy: &Tensor<T>,
    ) -> Result<BatchNormGrads<T>, Error> {
        let l = self.layout(x)?;
        if dy.shape() != x.shape() {
            return Err(ShapeError::mismatch(
                format!("output gradient of {}", self.config.name),
                dy.shape(),
                format!("{:?}", x.shape()),
            )
            .into());
        }
        let f = l.features;
        let (mean, var) = match stats {
            Some(s) => (&s.mean[..], &s.variance[..]),
            None => (self.moving_mean.data(), self.moving_variance.data()),
        };
        let eps = T::of(self.config.epsilon);
        let r: Vec<T> = var.iter().map(|v| T::one() / (*v + eps).sqrt()).collect();
        let g: Vec<T> = (0..f)
            .map(|c| self.gamma.as_ref().map_or(T::one(), |g| g.data()[c]))
            .collect();
        let mut dgamma = vec![T::zero(); f];
        let mut dbeta = vec![T::zero(); f];
        for (e, (&v, &d)) in x.data().iter().zip(dy.data()).enumerate() {
            let c = l.feature(e);
            dgamma[c] += d * (v - mean[c]) * r[c];
            dbeta[c] += d;
        }
        let mut dx: Vec<T> = dy
            .data()
            .iter()
            .enumerate()
            .map(|(e, &d)| {
                let c = l.feature(e);
                d * g[c] * r[c]
            })
            .collect();
        if let Some(s) = stats {
            let w = self.element_weights(x, mask)?;
            // d loss / d variance and / d mean (the mean's own path into the variance only
            // under a mask: tf.nn.moments stops that gradient, Keras' masked moments do not).
            let half = T::of(0.5);
            let dvar: Vec<T> = (0..f)
                .map(|c| -half * dgamma[c] * g[c] * r[c] * r[c])
                .collect();
            let mut dmean: Vec<T> = (0..f).map(|c| -dbeta[c] * g[c] * r[c]).collect();
            if let Some(w) = &w {
                let mut dev = vec![T::zero(); f];
                for (e, &v) in x.data().iter().enumerate() {
                    if w[e] {
                        let c = l.feature(e);
                        dev[c] += v - mean[c];
                    }
                }
                for c in 0..f {
                    dmean[c] -= T::of(2.0) * dvar[c] * dev[c] / s.denom[c];
                }
            }
            for (e, (dxe, &v)) in dx.iter_mut().zip(x.data()).enumerate() {
                if w.as_ref().is_none_or(|w| w[e]) {
                    let c = l.feature(e);
                    *dxe += (dmean[c] + T::of(2.0) * dvar[c] * (v - mean[c])) / s.denom[c];
                }
            }
        }
        Ok(BatchNormGrads {
            gamma: self.gamma.as_ref().map(|_| dgamma),
            beta: self.beta.as_ref().map(|_| dbeta),
            x: Tensor::new(x.shape().to_vec(), dx)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bn(axis: isize, center: bool, scale: bool) -> BatchNorm<f64> {
        let cfg = BatchNormConfig {
            axis,
            center,
            scale,
            epsilon: 0.01,
            ..Default::default()
        };
        let gamma = scale.then(|| Tensor::new(vec![3], vec![0.5, -1.5, 2.0]).unwrap());
        let beta = center.then(|| Tensor::new(vec![3], vec![0.1, 0.0, -0.3]).unwrap());
        let mm = Tensor::new(vec![3], vec![0.2, -0.1, 0.4]).unwrap();
        let mv = Tensor::new(vec![3], vec![1.5, 0.7, 2.0]).unwrap();
        BatchNorm::from_weights(cfg, gamma, beta, mm, mv).unwrap()
    }

    /// Gradients of `Σ y·w` against central differences: both axes, with and without `γ`/`β`,
    /// with and without a mask, and in inference mode.
    #[test]
    fn gradients_match_finite_differences() {
        let n = 2 * 3 * 3;
        let x = Tensor::new(
            vec![2, 3, 3],
            (0..n).map(|i| ((i * 7) % 11) as f64 / 4.0 - 1.2).collect(),
        )
        .unwrap();
        let w = Tensor::new(
            vec![2, 3, 3],
            (0..n).map(|i| ((i * 5) % 9) as f64 / 3.0 - 1.0).collect(),
        )
        .unwrap();
        let mask = Mask::new(2, 3, vec![true, false, true, true, true, false]).unwrap();
        for axis in [-1, 1] {
            for (center, scale) in [(true, true), (false, true), (true, false)] {
                for m in [None, Some(&mask)] {
                    for train in [true, false] {
                        let l = bn(axis, center, scale);
                        let loss = |l: &BatchNorm<f64>, x: &Tensor<f64>| -> f64 {
                            let y = if train {
                                l.call_train(x, m).unwrap().0
                            } else {
                                l.call(x).unwrap()
                            };
                            y.data().iter().zip(w.data()).map(|(a, b)| a * b).sum()
                        };
                        let stats = train.then(|| l.call_train(&x, m).unwrap().1);
                        let g = l.backward(&x, m, stats.as_ref(), &w).unwrap();
                        for i in 0..n {
                            let (mut a, mut b) = (x.clone(), x.clone());
                            a.data_mut()[i] += 1e-6;
                            b.data_mut()[i] -= 1e-6;
                            let fd = (loss(&l, &a) - loss(&l, &b)) / 2e-6;
                            assert!(
                                (fd - g.x.data()[i]).abs() < 1e-6,
                                "axis {axis} train {train} mask {} x[{i}]: {fd} vs {}",
                                m.is_some(),
                                g.x.data()[i]
                            );
                        }
                        if let Some(dg) = &g.gamma {
                            for (i, want) in dg.iter().enumerate() {
                                let (mut a, mut b) = (l.clone(), l.clone());
                                a.weights_mut()[0].data_mut()[i] += 1e-6;
                                b.weights_mut()[0].data_mut()[i] -= 1e-6;
                                let fd = (loss(&a, &x) - loss(&b, &x)) / 2e-6;
                                assert!((fd - want).abs() < 1e-6, "gamma[{i}]");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn moving_statistics_follow_keras_update() {
        let mut l = bn(-1, true, true);
        let x = Tensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 3.0, 2.0, 1.0]).unwrap();
        let (_, s) = l.call_train(&x, None).unwrap();
        assert_eq!(s.mean, vec![2.0, 2.0, 2.0]);
        assert_eq!(s.variance, vec![1.0, 0.0, 1.0]);
        l.update_moving(&s);
        let want = [
            0.2 * 0.99 + 2.0 * (1.0 - 0.99),
            -0.1 * 0.99 + 2.0 * (1.0 - 0.99),
        ];
        assert!((l.moving_mean().data()[0] - want[0]).abs() < 1e-15);
        assert!((l.moving_mean().data()[1] - want[1]).abs() < 1e-15);
        assert!((l.moving_variance().data()[1] - 0.7 * 0.99).abs() < 1e-15);
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        let cfg = |v: Value| serde_json::from_value::<Map<String, Value>>(v).unwrap();
        assert!(BatchNormConfig::from_keras(&cfg(json!({"renorm": true}))).is_err());
        assert!(BatchNormConfig::from_keras(&cfg(json!({"virtual_batch_size": 2}))).is_err());
        assert!(BatchNormConfig::from_keras(&cfg(json!({"axis": [1, 2]}))).is_err());
        assert!(BatchNormConfig::from_keras(&cfg(json!({"momentum": -1.0}))).is_err());
        let l = bn(-1, true, true);
        assert!(l
            .call(&Tensor::new(vec![2, 4], vec![0.0; 8]).unwrap())
            .is_err());
        // Axis 0 is the batch.
        assert!(bn(0, true, true)
            .call(&Tensor::new(vec![3, 3], vec![0.0; 9]).unwrap())
            .is_err());
        let m = Tensor::new(vec![3], vec![0.0f64; 3]).unwrap();
        let v = Tensor::new(vec![2], vec![1.0f64; 2]).unwrap();
        assert!(BatchNorm::from_weights(BatchNormConfig::default(), None, None, m, v).is_err());
    }
}
