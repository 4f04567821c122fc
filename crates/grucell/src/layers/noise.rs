//! The regularization layers that are the identity at inference and perturb their input in
//! training: `SpatialDropout1D` (drops whole channels of a sequence), `GaussianNoise` (adds
//! `N(0, stddev²)`), `GaussianDropout` (multiplies by `N(1, rate / (1 − rate))`) and
//! `AlphaDropout` (sets dropped values to SELU's negative saturation, then an affine map that
//! keeps the mean and variance), as Keras 3.15.1 defines them. All four pass the mask on.
//!
//! Their training noise is drawn from grucell's own generator: like `Dropout`'s, it has Keras'
//! distribution and structure but not TensorFlow's random numbers.

use rand::rngs::StdRng;
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::{get_f64, get_u64};

/// A noise layer and its parameters.
///
/// ```
/// use grucell::layers::noise::Noise;
/// use rand::SeedableRng;
/// let spatial = Noise::SpatialDropout1D { rate: 0.5, seed: None };
/// // Training: one factor per (sample, channel), 0 or 1 / (1 − rate), the same at every step.
/// let (f, e) = spatial.perturbation::<f32>(&[2, 3, 4], &mut rand::rngs::StdRng::seed_from_u64(1))?;
/// let f = f.expect("multiplicative");
/// assert!(e.is_none());
/// for b in 0..2 {
///     for t in 1..3 {
///         assert_eq!(f[(b * 3 + t) * 4..][..4], f[b * 12..][..4]);
///     }
/// }
/// assert!(f.iter().all(|&v| v == 0.0 || v == 2.0));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    /// `SpatialDropout1D(rate)`: on `(batch, steps, channels)`, each sample's channel is kept
    /// (scaled by `1 / (1 − rate)`) or zeroed at every step.
    SpatialDropout1D {
        /// Drop rate.
        rate: f64,
        /// Seed of the mask.
        seed: Option<u64>,
    },
    /// `GaussianNoise(stddev)`: adds zero-mean normal noise.
    GaussianNoise {
        /// Standard deviation.
        stddev: f64,
        /// Seed of the noise.
        seed: Option<u64>,
    },
    /// `GaussianDropout(rate)`: multiplies by normal noise of mean 1 and standard deviation
    /// `√(rate / (1 − rate))`.
    GaussianDropout {
        /// Drop rate.
        rate: f64,
        /// Seed of the noise.
        seed: Option<u64>,
    },
    /// `AlphaDropout(rate)`: a dropped value becomes `α' = −1.7581` (SELU's negative
    /// saturation), then every value `a·x + b` with `a = ((1 − rate)(1 + rate·α'²))^(−1/2)`,
    /// `b = −a·α'·rate`.
    AlphaDropout {
        /// Drop rate.
        rate: f64,
        /// Seed of the mask.
        seed: Option<u64>,
    },
}

/// SELU's `−scale·alpha`, the value `AlphaDropout` gives a dropped input.
const ALPHA_P: f64 = -1.673_263_242_354_377_3 * 1.050_700_987_355_480_5;

impl Noise {
    /// Reads the config of a Keras noise layer of class `class`; `None` for other classes.
    pub fn from_keras(class: &str, cfg: &Map<String, Value>) -> Result<Option<Self>, ConfigError> {
        let seed = get_u64(cfg, "seed")?;
        let in_unit = |key: &str| -> Result<f64, ConfigError> {
            let v = get_f64(cfg, key, 0.0)?;
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::invalid(
                    format!("{class}.{key}"),
                    v,
                    "a number from 0 to 1",
                ))
            }
        };
        Ok(Some(match class {
            "SpatialDropout1D" => Noise::SpatialDropout1D {
                rate: in_unit("rate")?,
                seed,
            },
            "GaussianNoise" => Noise::GaussianNoise {
                stddev: in_unit("stddev")?,
                seed,
            },
            "GaussianDropout" => Noise::GaussianDropout {
                rate: in_unit("rate")?,
                seed,
            },
            "AlphaDropout" => {
                if let Some(shape) = cfg.get("noise_shape").filter(|v| !v.is_null()) {
                    return Err(ConfigError::unsupported(
                        "AlphaDropout.noise_shape",
                        format!("{shape} (grucell draws one value per input value)"),
                    ));
                }
                Noise::AlphaDropout {
                    rate: in_unit("rate")?,
                    seed,
                }
            }
            _ => return Ok(None),
        }))
    }

    /// Keras' class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Noise::SpatialDropout1D { .. } => "SpatialDropout1D",
            Noise::GaussianNoise { .. } => "GaussianNoise",
            Noise::GaussianDropout { .. } => "GaussianDropout",
            Noise::AlphaDropout { .. } => "AlphaDropout",
        }
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        let (key, v, seed) = match *self {
            Noise::SpatialDropout1D { rate, seed } => ("rate", rate, seed),
            Noise::GaussianNoise { stddev, seed } => ("stddev", stddev, seed),
            Noise::GaussianDropout { rate, seed } => ("rate", rate, seed),
            Noise::AlphaDropout { rate, seed } => ("rate", rate, seed),
        };
        cfg.insert(key.into(), json!(v));
        cfg.insert("seed".into(), json!(seed));
        if let Noise::AlphaDropout { .. } = self {
            cfg.insert("noise_shape".into(), Value::Null);
        }
    }

    /// Whether training changes the input at all (a rate or deviation of 0, or a rate of 1
    /// that `Dropout` also leaves alone, do not).
    fn active(&self) -> bool {
        match *self {
            Noise::SpatialDropout1D { rate, .. }
            | Noise::GaussianDropout { rate, .. }
            | Noise::AlphaDropout { rate, .. } => rate > 0.0 && rate < 1.0,
            Noise::GaussianNoise { stddev, .. } => stddev > 0.0,
        }
    }

    /// The training-mode perturbation `y = x ⊙ f + e` for an input of `shape`: the factors `f`
    /// (`SpatialDropout1D`, `GaussianDropout`, `AlphaDropout`) and the added `e`
    /// (`GaussianNoise`, `AlphaDropout`), each `None` where the layer has none (both when it
    /// does nothing).
    #[allow(clippy::type_complexity)]
    pub fn perturbation<T: Float>(
        &self,
        shape: &[usize],
        rng: &mut StdRng,
    ) -> Result<(Option<Vec<T>>, Option<Vec<T>>), Error> {
        if !self.active() {
            return Ok((None, None));
        }
        let n: usize = shape.iter().product();
        Ok(match *self {
            Noise::SpatialDropout1D { rate, .. } => {
                let [b, t, c] = shape else {
                    return Err(ShapeError::mismatch(
                        "input of SpatialDropout1D",
                        shape,
                        "(batch, steps, channels)",
                    )
                    .into());
                };
                let mut f = vec![T::zero(); n];
                for bi in 0..*b {
                    let keep: Vec<T> = keep_factors(*c, rate, rng);
                    for ti in 0..*t {
                        f[(bi * t + ti) * c..][..*c].copy_from_slice(&keep);
                    }
                }
                (Some(f), None)
            }
            Noise::GaussianDropout { rate, .. } => {
                let sd = (rate / (1.0 - rate)).sqrt();
                (
                    Some((0..n).map(|_| T::of(1.0 + sd * normal(rng))).collect()),
                    None,
                )
            }
            Noise::GaussianNoise { stddev, .. } => (
                None,
                Some((0..n).map(|_| T::of(stddev * normal(rng))).collect()),
            ),
            Noise::AlphaDropout { rate, .. } => {
                let a = ((1.0 - rate) * (1.0 + rate * ALPHA_P * ALPHA_P)).powf(-0.5);
                let b = -a * ALPHA_P * rate;
                let kept: Vec<bool> = keep_mask(n, rate, rng).collect();
                let f = kept
                    .iter()
                    .map(|&k| T::of(if k { a } else { 0.0 }))
                    .collect();
                let e = kept
                    .iter()
                    .map(|&k| T::of(if k { b } else { a * ALPHA_P + b }))
                    .collect();
                (Some(f), Some(e))
            }
        })
    }
}

/// Whether each of `n` values is kept by a dropout of `rate`: one uniform draw with 53 random
/// bits each, in order, kept when it is `≥ rate` (Keras' `greater_equal(uniform, rate)`).
fn keep_mask(n: usize, rate: f64, rng: &mut StdRng) -> impl Iterator<Item = bool> + '_ {
    (0..n).map(move |_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= rate)
}

/// `n` dropout factors of `rate`, Keras' `1 / (1 − rate)` for a kept value and 0 for a dropped
/// one, from [`keep_mask`] (the masks of `Dropout`, `SpatialDropout1D` and the attention layers'
/// weights).
pub(crate) fn keep_factors<T: Float>(n: usize, rate: f64, rng: &mut StdRng) -> Vec<T> {
    let scale = T::of(1.0 / (1.0 - rate));
    keep_mask(n, rate, rng)
        .map(|k| if k { scale } else { T::zero() })
        .collect()
}

/// A standard normal draw.
fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn noise_has_keras_statistics() {
        let mut rng = StdRng::seed_from_u64(7);
        let shape = [64, 50, 20];
        let n = 64 * 50 * 20;
        let gd = Noise::GaussianDropout {
            rate: 0.2,
            seed: None,
        };
        let f = gd.perturbation::<f64>(&shape, &mut rng).unwrap().0.unwrap();
        let mean = f.iter().sum::<f64>() / n as f64;
        let var = f.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (mean - 1.0).abs() < 0.01 && (var - 0.25).abs() < 0.01,
            "{mean} {var}"
        );
        let gn = Noise::GaussianNoise {
            stddev: 0.3,
            seed: None,
        };
        let (f, e) = gn.perturbation::<f64>(&shape, &mut rng).unwrap();
        assert!(f.is_none());
        let e = e.unwrap();
        let var = e.iter().map(|v| v * v).sum::<f64>() / n as f64;
        assert!((var - 0.09).abs() < 0.003, "{var}");
        let sd = Noise::SpatialDropout1D {
            rate: 0.25,
            seed: None,
        };
        let f = sd.perturbation::<f64>(&shape, &mut rng).unwrap().0.unwrap();
        let kept = f.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.75).abs() < 0.03, "{kept}");
        assert!(f
            .iter()
            .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-12));
        assert!(sd.perturbation::<f64>(&[2, 3], &mut rng).is_err());
        let off = Noise::SpatialDropout1D {
            rate: 0.0,
            seed: None,
        };
        assert_eq!(
            off.perturbation::<f64>(&shape, &mut rng).unwrap(),
            (None, None)
        );
        // AlphaDropout keeps zero mean and unit variance of a standard normal input.
        let ad = Noise::AlphaDropout {
            rate: 0.2,
            seed: None,
        };
        let (f, e) = ad.perturbation::<f64>(&shape, &mut rng).unwrap();
        let (f, e) = (f.unwrap(), e.unwrap());
        let y: Vec<f64> = (0..n).map(|i| normal(&mut rng) * f[i] + e[i]).collect();
        let mean = y.iter().sum::<f64>() / n as f64;
        let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        let dropped = f.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.2).abs() < 0.01, "{dropped}");
    }

    #[test]
    fn configs_round_trip_and_bad_values_are_errors() {
        let cfg = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        let n = Noise::from_keras("GaussianDropout", &cfg(r#"{"rate": 0.3, "seed": 4}"#))
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            Noise::GaussianDropout {
                rate: 0.3,
                seed: Some(4)
            }
        );
        let mut m = Map::new();
        n.write_keras(&mut m);
        assert_eq!(Value::Object(m), json!({"rate": 0.3, "seed": 4}));
        let e = Noise::from_keras("GaussianNoise", &cfg(r#"{"stddev": 2.0}"#)).unwrap_err();
        assert!(e.to_string().contains("GaussianNoise.stddev"), "{e}");
        assert!(Noise::from_keras("Dense", &cfg("{}")).unwrap().is_none());
        let a = Noise::from_keras(
            "AlphaDropout",
            &cfg(r#"{"rate": 0.1, "seed": null, "noise_shape": null}"#),
        )
        .unwrap()
        .unwrap();
        let mut m = Map::new();
        a.write_keras(&mut m);
        assert_eq!(
            Value::Object(m),
            json!({"rate": 0.1, "seed": null, "noise_shape": null})
        );
        let e = Noise::from_keras(
            "AlphaDropout",
            &cfg(r#"{"rate": 0.1, "noise_shape": [1, 1]}"#),
        )
        .unwrap_err();
        assert!(e.to_string().contains("AlphaDropout.noise_shape"), "{e}");
    }
}
