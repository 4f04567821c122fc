//! `RMSNormalization` over the last axis: `x · rsqrt(mean(x²) + ε) · scale`, as Keras 3.15.1's
//! `ops.rms_normalization` computes it. Keras' layer does not support masking: it drops the mask.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::keras_json::{get_f64, get_str};
use crate::tensor::Tensor;

/// Configuration of a Keras `RMSNormalization` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormConfig {
    /// The normalized axis as the config gives it (`-1`; Keras writes `[-1]` once built).
    pub axis: isize,
    /// Added to the mean square (default 1e-6).
    pub epsilon: f64,
    /// Layer name.
    pub name: String,
}

impl RmsNormConfig {
    /// Reads a Keras `RMSNormalization` config (one axis, which must be the input's last).
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let v = c.get("axis").unwrap_or(&Value::Null);
        let one = |v: &Value| v.as_i64().and_then(|a| isize::try_from(a).ok());
        let axis = match v {
            Value::Null => Some(-1),
            Value::Array(a) if a.len() == 1 => one(&a[0]),
            Value::Array(_) => None,
            _ => one(v),
        }
        .ok_or_else(|| {
            ConfigError::unsupported(
                "RMSNormalization.axis",
                format!("{v} (grucell normalizes over one axis, the last)"),
            )
        })?;
        let epsilon = get_f64(c, "epsilon", 1e-6)?;
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(ConfigError::invalid(
                "RMSNormalization.epsilon",
                epsilon,
                "a finite number ≥ 0",
            ));
        }
        Ok(RmsNormConfig {
            axis,
            epsilon,
            name: get_str(c, "name")?.unwrap_or("rms_normalization").into(),
        })
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("axis".into(), json!([self.axis]));
        m.insert("epsilon".into(), json!(self.epsilon));
        m
    }
}

/// An `RMSNormalization` layer with its `scale`.
///
/// ```
/// use grucell::layers::rms_norm::{RmsNorm, RmsNormConfig};
/// use grucell::Tensor;
/// let cfg = RmsNormConfig::from_keras(&serde_json::Map::new())?;
/// let layer = RmsNorm::from_weights(cfg, Tensor::new(vec![2], vec![1.0f32, 2.0])?)?;
/// let y = layer.call(&Tensor::new(vec![1, 2], vec![3.0f32, 4.0])?)?;
/// // rms = √((9 + 16) / 2)
/// assert!((y.data()[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// assert!((y.data()[1] - 8.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RmsNorm<T = f32> {
    config: RmsNormConfig,
    scale: Tensor<T>,
}

/// Gradients of an `RMSNormalization` call.
pub struct RmsNormGrads<T> {
    /// d loss / d scale.
    pub scale: Vec<T>,
    /// d loss / d x.
    pub x: Tensor<T>,
}

impl<T: Float> RmsNorm<T> {
    /// Wraps `scale` (one value per feature).
    pub fn from_weights(config: RmsNormConfig, scale: Tensor<T>) -> Result<Self, Error> {
        if scale.rank() != 1 || !(1..=MAX_UNITS * 16).contains(&scale.len()) {
            return Err(ShapeError::mismatch(
                format!("{}.scale", config.name),
                scale.shape(),
                "(features,)",
            )
            .into());
        }
        Ok(RmsNorm { config, scale })
    }

    /// The config.
    pub fn config(&self) -> &RmsNormConfig {
        &self.config
    }

    /// `scale`.
    pub fn scale(&self) -> &Tensor<T> {
        &self.scale
    }

    /// Mutable `scale`.
    pub(crate) fn scale_mut(&mut self) -> &mut Tensor<T> {
        &mut self.scale
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.scale.len()
    }

    fn features(&self, x: &Tensor<T>) -> Result<usize, Error> {
        let rank = x.rank() as isize;
        let axis = self.config.axis;
        let resolved = if axis < 0 { axis + rank } else { axis };
        let f = self.scale.len();
        if rank < 2 || resolved != rank - 1 || x.shape()[x.rank() - 1] != f {
            return Err(ShapeError::mismatch(
                format!("{} input", self.config.name),
                x.shape(),
                format!("(batch, …, {f}), normalized over its last axis (axis {axis})"),
            )
            .into());
        }
        Ok(f)
    }

    /// `rsqrt(mean(x²) + ε)` of one row.
    fn rrms(&self, row: &[T]) -> T {
        let n = T::of(row.len() as f64);
        let ms = row.iter().fold(T::zero(), |a, &v| a + v * v) / n;
        T::one() / (ms + T::of(self.config.epsilon)).sqrt()
    }

    /// The layer on `x`.
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let f = self.features(x)?;
        let mut y = x.clone();
        for row in y.data_mut().chunks_exact_mut(f) {
            let r = self.rrms(row);
            for (v, &s) in row.iter_mut().zip(self.scale.data()) {
                *v = (*v * r) * s;
            }
        }
        Ok(y)
    }

    /// Gradients given the input `x` and the output's gradient `dy`.
    pub fn backward(&self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<RmsNormGrads<T>, Error> {
        let f = self.features(x)?;
        if dy.shape() != x.shape() {
            return Err(ShapeError::mismatch(
                format!("{} output gradient", self.config.name),
                dy.shape(),
                format!("{:?}", x.shape()),
            )
            .into());
        }
        let n = T::of(f as f64);
        let mut dscale = vec![T::zero(); f];
        let mut dx = dy.clone();
        for (xr, dr) in x
            .data()
            .chunks_exact(f)
            .zip(dx.data_mut().chunks_exact_mut(f))
        {
            let r = self.rrms(xr);
            // d(x·r) = dy·scale; dr = Σ d(x·r)·x; RsqrtGrad −½·dr·r³; mean: /n; square: 2x.
            let mut dr_sum = T::zero();
            for ((d, &v), (&s, ds)) in dr
                .iter_mut()
                .zip(xr)
                .zip(self.scale.data().iter().zip(dscale.iter_mut()))
            {
                *ds += *d * (v * r);
                *d *= s;
                dr_sum += *d * v;
            }
            let dms = (T::of(-0.5) * (dr_sum * r)) * (r * r) / n;
            for (d, &v) in dr.iter_mut().zip(xr) {
                *d = *d * r + dms * (v * T::of(2.0));
            }
        }
        Ok(RmsNormGrads {
            scale: dscale,
            x: dx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_central_differences() {
        let cfg = RmsNormConfig::from_keras(json!({"epsilon": 0.01}).as_object().unwrap()).unwrap();
        let l = RmsNorm::from_weights(cfg, Tensor::new(vec![3], vec![0.5f64, -1.2, 2.0]).unwrap())
            .unwrap();
        let x = Tensor::new(
            vec![2, 2, 3],
            (0..12).map(|i| ((i * 5 % 7) as f64 - 3.0) * 0.41).collect(),
        )
        .unwrap();
        let w: Vec<f64> = (0..12).map(|i| (i as f64 * 1.3).sin()).collect();
        let f = |l: &RmsNorm<f64>, x: &Tensor<f64>| -> f64 {
            l.call(x)
                .unwrap()
                .data()
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum()
        };
        let g = l
            .backward(&x, &Tensor::new(vec![2, 2, 3], w.clone()).unwrap())
            .unwrap();
        for i in 0..12 {
            let (mut p, mut m) = (x.clone(), x.clone());
            p.data_mut()[i] += 1e-6;
            m.data_mut()[i] -= 1e-6;
            let fd = (f(&l, &p) - f(&l, &m)) / 2e-6;
            assert!(
                (fd - g.x.data()[i]).abs() < 1e-6,
                "x[{i}]: {fd} vs {}",
                g.x.data()[i]
            );
        }
        for k in 0..3 {
            let (mut p, mut m) = (l.clone(), l.clone());
            p.scale_mut().data_mut()[k] += 1e-6;
            m.scale_mut().data_mut()[k] -= 1e-6;
            let fd = (f(&p, &x) - f(&m, &x)) / 2e-6;
            assert!((fd - g.scale[k]).abs() < 1e-6, "scale[{k}]");
        }
    }

    #[test]
    fn configs_round_trip_and_refuse() {
        let c = RmsNormConfig::from_keras(
            json!({"axis": [-1], "epsilon": 1e-5, "name": "r"})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            RmsNormConfig::from_keras(&c.to_keras("float32")).unwrap(),
            c
        );
        for bad in [
            json!({"axis": [1, 2]}),
            json!({"epsilon": -1.0}),
            json!({"axis": "x"}),
        ] {
            let e = RmsNormConfig::from_keras(bad.as_object().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("RMSNormalization."), "{bad}: {e}");
        }
        let l = RmsNorm::from_weights(c, Tensor::new(vec![2], vec![1.0f32, 1.0]).unwrap()).unwrap();
        assert!(l
            .call(&Tensor::new(vec![2, 3], vec![0.0f32; 6]).unwrap())
            .is_err());
        let c1 = RmsNormConfig::from_keras(json!({"axis": 1}).as_object().unwrap()).unwrap();
        let l =
            RmsNorm::from_weights(c1, Tensor::new(vec![2], vec![1.0f32, 1.0]).unwrap()).unwrap();
        assert!(l
            .call(&Tensor::new(vec![1, 2, 2], vec![0.0f32; 4]).unwrap())
            .is_err());
        assert!(l
            .call(&Tensor::new(vec![1, 2], vec![0.0f32; 2]).unwrap())
            .is_ok());
    }
}
