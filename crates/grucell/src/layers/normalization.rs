//! `LayerNormalization` over the last axis (features), as Keras 3.15.1 computes it with the
//! TensorFlow backend in graph mode (`predict`, `fit`): per row, `mean` and `variance`
//! (`tf.nn.moments`), `inv = rsqrt(variance + ε)·γ`, `y = (x·inv − mean·inv) + β`. The mask passes
//! through unchanged.
//!
//! Other axes and the deprecated `rms_scaling` are refused with an error naming them.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{get_bool, get_f64, get_str};
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;

/// Configuration of a Keras `LayerNormalization` layer over the last axis.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormConfig {
    /// The axis as the config gives it (`-1` or `[-1]` by default; Keras writes a list once
    /// built); it must name the input's last axis.
    pub axis: Vec<isize>,
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
    /// `β` penalty.
    pub beta_regularizer: Option<Regularizer>,
    /// `γ` penalty.
    pub gamma_regularizer: Option<Regularizer>,
    /// `β` constraint.
    pub beta_constraint: Option<Constraint>,
    /// `γ` constraint.
    pub gamma_constraint: Option<Constraint>,
    /// Layer name.
    pub name: String,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig {
            axis: vec![-1],
            epsilon: 1e-3,
            center: true,
            scale: true,
            beta_initializer: Initializer::zeros(),
            gamma_initializer: Initializer::Ones,
            beta_regularizer: None,
            gamma_regularizer: None,
            beta_constraint: None,
            gamma_constraint: None,
            name: "layer_normalization".into(),
        }
    }
}

impl LayerNormConfig {
    /// Reads a Keras `LayerNormalization` config.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let mut n = LayerNormConfig::default();
        let axis_err = |v: &Value| {
            ConfigError::invalid(
                "LayerNormalization.axis",
                v,
                "an integer or a list of one integer",
            )
        };
        n.axis = match c.get("axis") {
            None | Some(Value::Null) => vec![-1],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_i64().map(|i| i as isize).ok_or_else(|| axis_err(v)))
                .collect::<Result<_, _>>()?,
            Some(v) => vec![v.as_i64().ok_or_else(|| axis_err(v))? as isize],
        };
        if n.axis.len() != 1 {
            return Err(ConfigError::unsupported(
                "LayerNormalization axis",
                format!("{:?}: grucell normalizes over the last axis only", n.axis),
            ));
        }
        n.epsilon = get_f64(c, "epsilon", 1e-3)?;
        if !(n.epsilon.is_finite() && n.epsilon >= 0.0) {
            return Err(ConfigError::invalid(
                "LayerNormalization.epsilon",
                n.epsilon,
                "a finite number ≥ 0",
            ));
        }
        n.center = get_bool(c, "center", true)?;
        n.scale = get_bool(c, "scale", true)?;
        if get_bool(c, "rms_scaling", false)? {
            return Err(ConfigError::unsupported(
                "LayerNormalization option",
                "rms_scaling = true (deprecated in Keras; use RMSNormalization)",
            ));
        }
        if let Some(v) = c.get("beta_initializer") {
            n.beta_initializer = Initializer::from_keras(v)?;
        }
        if let Some(v) = c.get("gamma_initializer") {
            n.gamma_initializer = Initializer::from_keras(v)?;
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
        m.insert("epsilon".into(), json!(self.epsilon));
        m.insert("center".into(), json!(self.center));
        m.insert("scale".into(), json!(self.scale));
        m.insert("rms_scaling".into(), json!(false));
        m.insert("beta_initializer".into(), self.beta_initializer.to_keras());
        m.insert(
            "gamma_initializer".into(),
            self.gamma_initializer.to_keras(),
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
        m
    }

    /// Builds the layer with fresh weights for `features` features.
    pub fn build<T: Float>(&self, features: usize, seed: u64) -> Result<LayerNorm<T>, Error> {
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
        LayerNorm::from_weights(self.clone(), gamma, beta)
    }
}

/// A `LayerNormalization` layer with its weights `γ` and `β` (each `(features,)`, present when
/// `scale` / `center` is set).
///
/// ```
/// use grucell::layers::normalization::LayerNormConfig;
/// use grucell::Tensor;
/// let ln = LayerNormConfig::default().build::<f32>(4, 0)?; // γ = 1, β = 0
/// let x = Tensor::new(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0])?;
/// let y = ln.call(&x)?;
/// let mean: f32 = y.data().iter().sum::<f32>() / 4.0;
/// let var: f32 = y.data().iter().map(|v| v * v).sum::<f32>() / 4.0;
/// assert!(mean.abs() < 1e-6 && (var - 1.25 / 1.251).abs() < 1e-5);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm<T = f32> {
    config: LayerNormConfig,
    gamma: Option<Tensor<T>>,
    beta: Option<Tensor<T>>,
}

/// Gradients of a `LayerNormalization` call: `γ`, `β` (when present) and the input.
pub struct LayerNormGrads<T> {
    /// d loss / d γ.
    pub gamma: Option<Vec<T>>,
    /// d loss / d β.
    pub beta: Option<Vec<T>>,
    /// d loss / d x.
    pub x: Tensor<T>,
}

impl<T: Float> LayerNorm<T> {
    /// Wraps weights; fails when they disagree with the config or with each other.
    pub fn from_weights(
        config: LayerNormConfig,
        gamma: Option<Tensor<T>>,
        beta: Option<Tensor<T>>,
    ) -> Result<Self, Error> {
        let mut features = None;
        for (what, w, wanted) in [
            ("gamma", &gamma, config.scale),
            ("beta", &beta, config.center),
        ] {
            match (w, wanted) {
                (Some(w), true) if w.rank() == 1 && (1..=MAX_UNITS * 16).contains(&w.len()) => {
                    if features.is_some_and(|f| f != w.len()) {
                        return Err(ShapeError::mismatch(
                            format!("{}.{what}", config.name),
                            w.shape(),
                            format!("({},)", features.unwrap_or(0)),
                        )
                        .into());
                    }
                    features = Some(w.len());
                }
                (None, false) => {}
                (w, _) => {
                    return Err(ShapeError::mismatch(
                        format!("{}.{what}", config.name),
                        w.as_ref().map_or(&[][..], |w| w.shape()),
                        if wanted {
                            "(features,)".to_string()
                        } else {
                            format!("no {what}")
                        },
                    )
                    .into())
                }
            }
        }
        Ok(LayerNorm {
            config,
            gamma,
            beta,
        })
    }

    /// The config.
    pub fn config(&self) -> &LayerNormConfig {
        &self.config
    }

    /// Weights in Keras order (`γ`, then `β`).
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        self.gamma.iter().chain(self.beta.iter()).collect()
    }

    /// Mutable weights in Keras order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        self.gamma.iter_mut().chain(self.beta.iter_mut()).collect()
    }

    /// The regularizers and constraints of [`LayerNorm::weights`], in the same order.
    pub(crate) fn weight_rules(&self) -> Vec<(Option<Regularizer>, Option<Constraint>)> {
        let c = &self.config;
        let mut v = Vec::new();
        if self.gamma.is_some() {
            v.push((c.gamma_regularizer.clone(), c.gamma_constraint.clone()));
        }
        if self.beta.is_some() {
            v.push((c.beta_regularizer.clone(), c.beta_constraint.clone()));
        }
        v
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// The features of `x` (its last axis), checked against the axis and the weights.
    fn features(&self, x: &Tensor<T>) -> Result<usize, Error> {
        let rank = x.rank() as isize;
        let axis = self.config.axis.first().copied().unwrap_or(-1);
        let resolved = if axis < 0 { axis + rank } else { axis };
        if rank == 0 || resolved != rank - 1 {
            return Err(ConfigError::unsupported(
                "LayerNormalization axis",
                format!(
                    "{axis} of a rank-{rank} input: grucell normalizes over the last axis only"
                ),
            )
            .into());
        }
        let f = x.shape()[x.rank() - 1];
        if let Some(w) = self.weights().first() {
            if w.len() != f {
                return Err(ShapeError::mismatch(
                    format!("{} input", self.config.name),
                    x.shape(),
                    format!("(…, {})", w.len()),
                )
                .into());
            }
        }
        Ok(f)
    }

    /// Per row: mean and `1/√(variance + ε)`, as `tf.nn.moments` and `rsqrt` give them.
    fn moments(&self, row: &[T]) -> (T, T) {
        let n = T::of(row.len() as f64);
        let mean = row.iter().copied().sum::<T>() / n;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
        (mean, T::one() / (var + T::of(self.config.epsilon)).sqrt())
    }

    /// The layer on `x` (any rank ≥ 1; normalized over the last axis).
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let f = self.features(x)?;
        let mut y = x.clone();
        for row in y.data_mut().chunks_exact_mut(f.max(1)) {
            let (mean, r) = self.moments(row);
            for (i, v) in row.iter_mut().enumerate() {
                let inv = self.gamma.as_ref().map_or(r, |g| r * g.data()[i]);
                // Keras writes `x·inv + (−mean·inv + β)`; TensorFlow's graph optimizer (in
                // `predict` and `fit`) adds the two products first and β last. The order
                // matters where |mean| ≫ the spread: a constant row gives exactly β.
                let centered = *v * inv + -mean * inv;
                *v = self
                    .beta
                    .as_ref()
                    .map_or(centered, |b| centered + b.data()[i]);
            }
        }
        Ok(y)
    }

    /// Gradients given the output's gradient `dy`: with `x̂ = (x − mean)·r` and `g = dy·γ`,
    /// `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
    pub fn backward(&self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<LayerNormGrads<T>, Error> {
        let f = self.features(x)?;
        if dy.shape() != x.shape() {
            return Err(ShapeError::mismatch(
                format!("output gradient of {}", self.config.name),
                dy.shape(),
                format!("{:?}", x.shape()),
            )
            .into());
        }
        let mut dgamma = vec![T::zero(); f];
        let mut dbeta = vec![T::zero(); f];
        let mut dx = vec![T::zero(); x.len()];
        let n = T::of(f as f64);
        let mut xhat = vec![T::zero(); f];
        let mut g = vec![T::zero(); f];
        for ((row, drow), out) in x
            .data()
            .chunks_exact(f.max(1))
            .zip(dy.data().chunks_exact(f.max(1)))
            .zip(dx.chunks_exact_mut(f.max(1)))
        {
            let (mean, r) = self.moments(row);
            for i in 0..f {
                xhat[i] = (row[i] - mean) * r;
                g[i] = self
                    .gamma
                    .as_ref()
                    .map_or(drow[i], |w| drow[i] * w.data()[i]);
                dgamma[i] += drow[i] * xhat[i];
                dbeta[i] += drow[i];
            }
            let mean_g = g.iter().copied().sum::<T>() / n;
            let mean_gx = g.iter().zip(&xhat).map(|(a, b)| *a * *b).sum::<T>() / n;
            for i in 0..f {
                out[i] = r * (g[i] - mean_g - xhat[i] * mean_gx);
            }
        }
        Ok(LayerNormGrads {
            gamma: self.gamma.as_ref().map(|_| dgamma),
            beta: self.beta.as_ref().map(|_| dbeta),
            x: Tensor::new(x.shape().to_vec(), dx)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln(center: bool, scale: bool) -> LayerNorm<f64> {
        let cfg = LayerNormConfig {
            center,
            scale,
            epsilon: 0.01,
            ..Default::default()
        };
        let gamma = scale.then(|| Tensor::new(vec![3], vec![0.5, -1.5, 2.0]).unwrap());
        let beta = center.then(|| Tensor::new(vec![3], vec![0.1, 0.0, -0.3]).unwrap());
        LayerNorm::from_weights(cfg, gamma, beta).unwrap()
    }

    /// Rows far from zero against their spread, as Keras 3.15.1 `predict` prints them
    /// (`LayerNormalization` with γ = 0.37, β = 0.11): a constant row gives exactly β, where
    /// Keras' eager `x·inv + (−mean·inv + β)` gives 0.
    #[test]
    fn keras_graph_mode_values() {
        let cfg = LayerNormConfig::default();
        let gamma = Some(Tensor::new(vec![3], vec![0.37f32; 3]).unwrap());
        let beta = Some(Tensor::new(vec![3], vec![0.11f32; 3]).unwrap());
        let l = LayerNorm::from_weights(cfg, gamma, beta).unwrap();
        let x = Tensor::new(
            vec![3, 3],
            vec![
                1e5 + 1.0,
                1e5 + 2.5,
                1e5 + 3.0,
                5e5,
                5e5,
                5e5,
                0.3,
                -0.2,
                0.9,
            ],
        )
        .unwrap();
        let keras = [
            -0.3978125f32,
            0.25453126,
            0.47328126,
            0.11,
            0.11,
            0.11,
            0.08264133,
            -0.32773864,
            0.57509726,
        ];
        assert_eq!(l.call(&x).unwrap().data(), &keras);
    }

    /// Gradients of `Σ y·w` against central differences, with and without `γ` / `β`.
    #[test]
    fn gradients_match_finite_differences() {
        let x = Tensor::new(
            vec![2, 2, 3],
            vec![
                0.3, -1.0, 2.0, 0.7, 0.2, -0.5, 1.1, 0.9, 0.4, -0.2, 0.0, 1.5,
            ],
        )
        .unwrap();
        let w = Tensor::new(
            vec![2, 2, 3],
            vec![
                0.5, -1.0, 2.0, 1.5, 0.25, -0.75, 0.3, 0.1, -0.4, 1.0, -2.0, 0.6,
            ],
        )
        .unwrap();
        for (center, scale) in [(true, true), (false, true), (true, false), (false, false)] {
            let l = ln(center, scale);
            let g = l.backward(&x, &w).unwrap();
            let loss = |l: &LayerNorm<f64>, x: &Tensor<f64>| -> f64 {
                l.call(x)
                    .unwrap()
                    .data()
                    .iter()
                    .zip(w.data())
                    .map(|(a, b)| a * b)
                    .sum()
            };
            for i in 0..x.len() {
                let (mut a, mut b) = (x.clone(), x.clone());
                a.data_mut()[i] += 1e-6;
                b.data_mut()[i] -= 1e-6;
                let fd = (loss(&l, &a) - loss(&l, &b)) / 2e-6;
                assert!(
                    (fd - g.x.data()[i]).abs() < 1e-6,
                    "x[{i}]: {fd} vs {}",
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
            if let Some(db) = &g.beta {
                let sums: Vec<f64> = (0..3)
                    .map(|i| w.data().iter().skip(i).step_by(3).sum())
                    .collect();
                assert!(db.iter().zip(&sums).all(|(a, b)| (a - b).abs() < 1e-12));
            }
        }
    }

    #[test]
    fn config_refuses_what_it_cannot_compute() {
        let cfg = |v: Value| serde_json::from_value::<Map<String, Value>>(v).unwrap();
        assert!(LayerNormConfig::from_keras(&cfg(json!({"axis": [1, 2]}))).is_err());
        assert!(LayerNormConfig::from_keras(&cfg(json!({"rms_scaling": true}))).is_err());
        assert!(LayerNormConfig::from_keras(&cfg(json!({"epsilon": -1.0}))).is_err());
        let c = LayerNormConfig::from_keras(&cfg(json!({"axis": [2], "center": false}))).unwrap();
        let l = c.build::<f32>(3, 0).unwrap();
        assert_eq!(l.weights().len(), 1);
        // Axis 2 of a rank-3 input is its last; of a rank-4 input it is not.
        assert!(l
            .call(&Tensor::new(vec![1, 2, 3], vec![0.0; 6]).unwrap())
            .is_ok());
        assert!(l
            .call(&Tensor::new(vec![1, 1, 3, 1], vec![0.0; 3]).unwrap())
            .is_err());
        // Weights that disagree with the config or with each other.
        let g = Tensor::new(vec![3], vec![1.0f32; 3]).unwrap();
        let b = Tensor::new(vec![2], vec![0.0f32; 2]).unwrap();
        assert!(
            LayerNorm::from_weights(LayerNormConfig::default(), Some(g.clone()), Some(b)).is_err()
        );
        assert!(LayerNorm::from_weights(LayerNormConfig::default(), Some(g), None).is_err());
    }
}
