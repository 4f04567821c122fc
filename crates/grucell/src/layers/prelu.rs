//! `PReLU`: `max(x, 0) − α · max(−x, 0)` with a learned `α` per input position (all but the batch
//! axis, shared along `shared_axes`), as Keras 3.15.1 computes it. It passes the mask on.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::get_str;
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;

/// Configuration of a Keras `PReLU` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PReluConfig {
    /// `α` initializer (default zeros).
    pub alpha_initializer: Initializer,
    /// `α` penalty.
    pub alpha_regularizer: Option<Regularizer>,
    /// `α` constraint.
    pub alpha_constraint: Option<Constraint>,
    /// Axes (1 = the first after the batch) along which one `α` is shared.
    pub shared_axes: Option<Vec<usize>>,
    /// Layer name.
    pub name: String,
}

impl PReluConfig {
    /// Reads a Keras `PReLU` config.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let axes_err = |v: &Value| {
            ConfigError::invalid(
                "PReLU.shared_axes",
                v,
                "null, a positive integer or a list of them",
            )
        };
        let axis = |v: &Value| {
            v.as_u64()
                .and_then(|a| usize::try_from(a).ok())
                .filter(|a| (1..=8).contains(a))
                .ok_or_else(|| axes_err(v))
        };
        let shared_axes = match c.get("shared_axes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a.iter().map(axis).collect::<Result<Vec<_>, _>>()?),
            Some(v) => Some(vec![axis(v)?]),
        };
        Ok(PReluConfig {
            alpha_initializer: match c.get("alpha_initializer") {
                None | Some(Value::Null) => Initializer::zeros(),
                Some(v) => Initializer::from_keras(v)?,
            },
            alpha_regularizer: c
                .get("alpha_regularizer")
                .map_or(Ok(None), Regularizer::from_keras)?,
            alpha_constraint: c
                .get("alpha_constraint")
                .map_or(Ok(None), Constraint::from_keras)?,
            shared_axes,
            name: get_str(c, "name")?.unwrap_or("p_re_lu").into(),
        })
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert(
            "alpha_initializer".into(),
            self.alpha_initializer.to_keras(),
        );
        m.insert(
            "alpha_regularizer".into(),
            opt(self.alpha_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "alpha_constraint".into(),
            opt(self.alpha_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert("shared_axes".into(), json!(self.shared_axes));
        m
    }
}

/// A `PReLU` layer with its `α`.
///
/// ```
/// use grucell::layers::prelu::{PRelu, PReluConfig};
/// use grucell::Tensor;
/// let cfg = PReluConfig::from_keras(&serde_json::Map::new())?;
/// let alpha = Tensor::new(vec![2], vec![0.5f32, 0.1])?;
/// let layer = PRelu::from_weights(cfg, alpha)?;
/// let x = Tensor::new(vec![2, 2], vec![-2.0f32, -10.0, 3.0, 4.0])?;
/// assert_eq!(layer.call(&x)?.data(), &[-1.0f32, -1.0, 3.0, 4.0]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PRelu<T = f32> {
    config: PReluConfig,
    alpha: Tensor<T>,
}

/// Gradients of a `PReLU` call.
pub struct PReluGrads<T> {
    /// d loss / d α.
    pub alpha: Vec<T>,
    /// d loss / d x.
    pub x: Tensor<T>,
}

impl<T: Float> PRelu<T> {
    /// Wraps `α`; fails when its shape does not fit `shared_axes` (1 along each) or is too
    /// large.
    pub fn from_weights(config: PReluConfig, alpha: Tensor<T>) -> Result<Self, Error> {
        let shared_ok = config
            .shared_axes
            .iter()
            .flatten()
            .all(|&a| a.checked_sub(1).and_then(|i| alpha.shape().get(i)) == Some(&1));
        if alpha.rank() == 0 || alpha.len() > MAX_UNITS * 64 || !shared_ok {
            return Err(ShapeError::mismatch(
                format!("{}.alpha", config.name),
                alpha.shape(),
                format!(
                    "the input's shape without the batch axis, 1 along shared_axes {:?}",
                    config.shared_axes
                ),
            )
            .into());
        }
        Ok(PRelu { config, alpha })
    }

    /// The config.
    pub fn config(&self) -> &PReluConfig {
        &self.config
    }

    /// `α`.
    pub fn alpha(&self) -> &Tensor<T> {
        &self.alpha
    }

    /// Mutable `α`.
    pub(crate) fn alpha_mut(&mut self) -> &mut Tensor<T> {
        &mut self.alpha
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.alpha.len()
    }

    /// For each value of the trailing `α.ndim()` axes of `x` (row-major), the index of its `α`
    /// (broadcast along the shared axes, and along any leading axes as numpy broadcasting does:
    /// `TimeDistributed(PReLU)` has an `α` per feature, applied at every step); fails when `x`
    /// is not `(batch, …, α's shape with any size on shared axes)`.
    fn alpha_index(&self, x: &Tensor<T>) -> Result<Vec<usize>, Error> {
        let a = self.alpha.shape();
        let s = x.shape();
        let lead = s.len().saturating_sub(a.len());
        let fits = lead >= 1
            && a.iter()
                .zip(&s[lead..])
                .all(|(&ad, &xd)| ad == xd || ad == 1);
        if !fits {
            return Err(ShapeError::mismatch(
                format!("{} input", self.config.name),
                s,
                format!("(batch, {a:?}) with any size where α has 1"),
            )
            .into());
        }
        // Strides of α, 0 along broadcast axes.
        let mut strides = vec![0usize; a.len()];
        let mut acc = 1;
        for k in (0..a.len()).rev() {
            strides[k] = if a[k] == 1 { 0 } else { acc };
            acc *= a[k];
        }
        let inner: usize = s[lead..].iter().product();
        let mut idx = Vec::with_capacity(inner);
        let mut pos = vec![0usize; a.len()];
        for _ in 0..inner {
            idx.push(pos.iter().zip(&strides).map(|(p, st)| p * st).sum());
            for k in (0..pos.len()).rev() {
                pos[k] += 1;
                if pos[k] < s[k + lead] {
                    break;
                }
                pos[k] = 0;
            }
        }
        Ok(idx)
    }

    /// The layer on `x`: `relu(x) + (−α)·relu(−x)`.
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let idx = self.alpha_index(x)?;
        let a = self.alpha.data();
        let mut y = x.clone();
        for row in y.data_mut().chunks_exact_mut(idx.len().max(1)) {
            for (v, &k) in row.iter_mut().zip(&idx) {
                if *v <= T::zero() {
                    *v = (-a[k]) * (-*v);
                }
            }
        }
        Ok(y)
    }

    /// Gradients given the input `x` and the output's gradient `dy`: `dx = dy` where `x > 0`,
    /// `α·dy` where `x < 0`; `dα = −Σ dy·relu(−x)` over the batch and the shared axes.
    pub fn backward(&self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<PReluGrads<T>, Error> {
        if x.shape() != dy.shape() {
            return Err(ShapeError::mismatch(
                format!("{} output gradient", self.config.name),
                dy.shape(),
                format!("{:?}", x.shape()),
            )
            .into());
        }
        let idx = self.alpha_index(x)?;
        let a = self.alpha.data();
        let mut dneg = vec![T::zero(); a.len()];
        let mut dx = dy.clone();
        let n = idx.len().max(1);
        for (xr, dr) in x
            .data()
            .chunks_exact(n)
            .zip(dx.data_mut().chunks_exact_mut(n))
        {
            for ((&v, d), &k) in xr.iter().zip(dr.iter_mut()).zip(&idx) {
                let g = *d;
                *d = if v > T::zero() {
                    g
                } else if v < T::zero() {
                    -(g * (-a[k]))
                } else {
                    T::zero()
                };
                if v < T::zero() {
                    dneg[k] += g * (-v);
                }
            }
        }
        Ok(PReluGrads {
            alpha: dneg.into_iter().map(|g| -g).collect(),
            x: dx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_central_differences() {
        let cfg = |shared: Value| {
            PReluConfig::from_keras(json!({ "shared_axes": shared }).as_object().unwrap()).unwrap()
        };
        for (shared, ashape) in [
            (json!(null), vec![3, 2]),
            (json!([1]), vec![1, 2]),
            (json!(2), vec![3, 1]),
            // Inside TimeDistributed: α per feature, or one, over every batch row and step.
            (json!(null), vec![2]),
            (json!([1]), vec![1]),
        ] {
            let n: usize = ashape.iter().product();
            let alpha =
                Tensor::new(ashape, (0..n).map(|i| 0.1 + 0.3 * i as f64).collect()).unwrap();
            let l = PRelu::from_weights(cfg(shared), alpha).unwrap();
            let x = Tensor::new(
                vec![2, 3, 2],
                (0..12)
                    .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.37 + 0.05)
                    .collect(),
            )
            .unwrap();
            let w: Vec<f64> = (0..12).map(|i| (i as f64 * 0.7).cos()).collect();
            let f = |l: &PRelu<f64>, x: &Tensor<f64>| -> f64 {
                l.call(x)
                    .unwrap()
                    .data()
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let g = l
                .backward(&x, &Tensor::new(vec![2, 3, 2], w.clone()).unwrap())
                .unwrap();
            for i in 0..12 {
                let mut xp = x.clone();
                xp.data_mut()[i] += 1e-6;
                let mut xm = x.clone();
                xm.data_mut()[i] -= 1e-6;
                let fd = (f(&l, &xp) - f(&l, &xm)) / 2e-6;
                assert!((fd - g.x.data()[i]).abs() < 1e-6);
            }
            for k in 0..n {
                let mut lp = l.clone();
                lp.alpha_mut().data_mut()[k] += 1e-6;
                let mut lm = l.clone();
                lm.alpha_mut().data_mut()[k] -= 1e-6;
                let fd = (f(&lp, &x) - f(&lm, &x)) / 2e-6;
                assert!(
                    (fd - g.alpha[k]).abs() < 1e-6,
                    "{k}: {fd} vs {}",
                    g.alpha[k]
                );
            }
        }
    }

    #[test]
    fn configs_round_trip_and_refuse() {
        let c = PReluConfig::from_keras(json!({"shared_axes": [1], "alpha_regularizer": {"class_name": "L2", "config": {"l2": 0.1}}}).as_object().unwrap()).unwrap();
        assert_eq!(PReluConfig::from_keras(&c.to_keras("float32")).unwrap(), c);
        for bad in [json!({"shared_axes": [0]}), json!({"shared_axes": "x"})] {
            let e = PReluConfig::from_keras(bad.as_object().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("PReLU.shared_axes"), "{e}");
        }
        let wrong = Tensor::new(vec![3, 2], vec![0.0f32; 6]).unwrap();
        assert!(PRelu::from_weights(c.clone(), wrong).is_err());
        let axis0 = PReluConfig {
            shared_axes: Some(vec![0]),
            ..c.clone()
        };
        let ones = Tensor::new(vec![1, 2], vec![0.0f32; 2]).unwrap();
        assert!(PRelu::from_weights(axis0, ones).is_err());
        let l =
            PRelu::from_weights(c, Tensor::new(vec![1, 2], vec![0.5f32, 0.5]).unwrap()).unwrap();
        assert!(l
            .call(&Tensor::new(vec![2, 3], vec![0.0f32; 6]).unwrap())
            .is_err());
    }
}
