//! Keras' `Normalization` preprocessing layer: standardizes its input with a mean and a variance
//! fixed before training, `y = (x − mean) / max(√variance, 1e-7)`, or undoes that with
//! `invert = true`, `y = mean + x · max(√variance, 1e-7)` — the operations, in that order and in
//! the model's dtype, that Keras 3.15.1 runs (`backend.epsilon()` is 1e-7).
//!
//! The statistics come either from the layer's config (`Normalization(mean=…, variance=…)`,
//! no variables) or from its three non-trainable variables `mean`, `variance` and the int64
//! `count` that `adapt()` fills (Keras 3 leaves `count` at 0; TF-Keras 2 counts the samples).
//! They have one value per position of the kept `axis` (the features for the default `-1`, one
//! value for everything with `axis = None`); a config mean of lower rank is aligned with the
//! last kept axes and broadcast, as Keras does. The mask passes through unchanged. Training never
//! changes the statistics; the gradient to the input is `dy / max(√variance, 1e-7)` (or
//! `dy · max(…)` inverted).
//!
//! The batch axis cannot be kept (Keras itself needs a fixed batch size for that).

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::gru_cell::dtype_policy;
use crate::layers::keras_json::{get_bool, get_str};
use crate::tensor::Tensor;

/// Keras' `backend.epsilon()`, the floor of the standard deviation.
const EPSILON: f64 = 1e-7;
/// Most axes a config may keep (or a config mean may have): far above any model's rank.
const MAX_AXES: usize = 8;

/// Configuration of a Keras `Normalization` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizationConfig {
    /// Kept axes as the config gives them (negative from the end); empty for `axis = None`
    /// (one mean and variance for every value).
    pub axis: Vec<isize>,
    /// Undo the normalization instead (`mean + x · std`).
    pub invert: bool,
    /// `mean` and `variance` given in the config (JSON numbers or nested lists), kept as written
    /// to save them back; `None` when the statistics are the layer's variables.
    pub given: Option<(Value, Value)>,
    /// Layer name.
    pub name: String,
}

impl Default for NormalizationConfig {
    fn default() -> Self {
        NormalizationConfig {
            axis: vec![-1],
            invert: false,
            given: None,
            name: "normalization".into(),
        }
    }
}

impl NormalizationConfig {
    /// Reads a Keras `Normalization` config.
    ///
    /// ```
    /// use grucell::layers::preprocessing::NormalizationConfig;
    /// let c = serde_json::json!({"name": "n", "axis": [-1], "invert": false, "mean": [1.0, 2.0], "variance": [4.0, 9.0]});
    /// let cfg = NormalizationConfig::from_keras(c.as_object().unwrap())?;
    /// assert_eq!(cfg.axis, [-1]);
    /// assert!(cfg.given.is_some());
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let axis_err = |v: &Value| {
            ConfigError::invalid(
                "Normalization.axis",
                v,
                format!("null, an integer or a list of at most {MAX_AXES} integers"),
            )
        };
        let axis: Vec<isize> = match c.get("axis") {
            None => vec![-1],
            Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_AXES => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|i| isize::try_from(i).ok())
                        .ok_or_else(|| axis_err(v))
                })
                .collect::<Result<_, _>>()?,
            Some(v) => vec![v
                .as_i64()
                .and_then(|i| isize::try_from(i).ok())
                .ok_or_else(|| axis_err(v))?],
        };
        let mut sorted = axis.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != axis.len() {
            return Err(ConfigError::invalid(
                "Normalization.axis",
                format!("{axis:?}"),
                "distinct axes",
            ));
        }
        let stat = |key: &str| c.get(key).filter(|v| !v.is_null()).cloned();
        let given = match (stat("mean"), stat("variance")) {
            (None, None) => None,
            (Some(m), Some(v)) => {
                // Checked here so that a bad config fails at load, not at the first call.
                let (ms, _) = nested_values(&m, "Normalization.mean")?;
                let (vs, _) = nested_values(&v, "Normalization.variance")?;
                if ms != vs {
                    return Err(ConfigError::invalid(
                        "Normalization.variance",
                        format!("shape {vs:?}"),
                        format!("the shape of `mean`, {ms:?}"),
                    ));
                }
                if ms.len() > axis.len() {
                    return Err(ConfigError::invalid(
                        "Normalization.mean",
                        format!("rank {}", ms.len()),
                        format!("at most the number of axes, {}", axis.len()),
                    ));
                }
                Some((m, v))
            }
            (m, _) => {
                return Err(ConfigError::invalid(
                    "Normalization",
                    format!(
                        "only `{}` given",
                        if m.is_some() { "mean" } else { "variance" }
                    ),
                    "both `mean` and `variance`, or neither",
                ))
            }
        };
        Ok(NormalizationConfig {
            axis,
            invert: get_bool(c, "invert", false)?,
            given,
            name: get_str(c, "name")?.unwrap_or("normalization").into(),
        })
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("axis".into(), json!(self.axis));
        m.insert("invert".into(), json!(self.invert));
        let (mean, variance) = self.given.clone().unwrap_or((Value::Null, Value::Null));
        m.insert("mean".into(), mean);
        m.insert("variance".into(), variance);
        m
    }
}

/// A number or a regular nested list of numbers as `(shape, values)` (row-major).
fn nested_values(v: &Value, arg: &str) -> Result<(Vec<usize>, Vec<f64>), ConfigError> {
    let bad = || ConfigError::invalid(arg, v, "a number or a regular nested list of numbers");
    let mut shape = Vec::new();
    let mut level = v;
    while let Value::Array(a) = level {
        if shape.len() >= MAX_AXES {
            return Err(bad());
        }
        shape.push(a.len());
        level = a.first().ok_or_else(bad)?;
    }
    let mut out = Vec::new();
    fn walk(
        v: &Value,
        shape: &[usize],
        out: &mut Vec<f64>,
        bad: &dyn Fn() -> ConfigError,
    ) -> Result<(), ConfigError> {
        match (v, shape.split_first()) {
            (Value::Array(a), Some((&n, rest))) if a.len() == n => {
                a.iter().try_for_each(|e| walk(e, rest, out, bad))
            }
            (Value::Number(x), None) => {
                out.push(x.as_f64().ok_or_else(bad)?);
                Ok(())
            }
            _ => Err(bad()),
        }
    }
    walk(v, &shape, &mut out, &bad)?;
    Ok((shape, out))
}

/// Where the statistics of a [`Normalization`] come from.
#[derive(Clone, Debug, PartialEq)]
enum Stats {
    /// The config's `mean` and `variance`: no variables.
    Given,
    /// The layer's variables, with the value of its int64 `count` variable.
    Variables { count: i64 },
}

/// A Keras `Normalization` layer with its statistics.
///
/// ```
/// use grucell::layers::preprocessing::Normalization;
/// use grucell::Tensor;
/// // Per-feature statistics of a (batch, steps, 2) input.
/// let n = Normalization::new(vec![-1], false, Tensor::new(vec![2], vec![1.0f32, -1.0])?, Tensor::new(vec![2], vec![4.0, 0.25])?)?;
/// let x = Tensor::new(vec![1, 2, 2], vec![3.0f32, 0.0, 1.0, -1.0])?;
/// assert_eq!(n.call(&x)?.data(), &[1.0, 2.0, 0.0, 0.0]);
/// assert_eq!(n.param_count(), 5); // mean, variance and the count
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization<T = f32> {
    config: NormalizationConfig,
    mean: Tensor<T>,
    variance: Tensor<T>,
    stats: Stats,
}

impl<T: Float> Normalization<T> {
    /// A layer whose statistics are variables (as `adapt()` leaves them), `count` 0 as Keras 3
    /// writes it. `mean` and `variance` have one value per position of the kept axes.
    pub fn new(
        axis: Vec<isize>,
        invert: bool,
        mean: Tensor<T>,
        variance: Tensor<T>,
    ) -> Result<Self, Error> {
        let config = NormalizationConfig {
            axis,
            invert,
            ..NormalizationConfig::default()
        };
        Self::from_weights(config, mean, variance, 0)
    }

    /// The layer of a config that gives `mean` and `variance`.
    pub fn from_config(config: NormalizationConfig) -> Result<Self, Error> {
        let Some((m, v)) = &config.given else {
            return Err(ConfigError::invalid(
                format!("Normalization `{}`", config.name),
                "no mean and variance in the config",
                "both, or the layer's variables",
            )
            .into());
        };
        let (shape, mean) = nested_values(m, "Normalization.mean")?;
        let (_, variance) = nested_values(v, "Normalization.variance")?;
        let mean = Tensor::new(shape.clone(), mean.into_iter().map(T::of).collect())?;
        let variance = Tensor::new(shape, variance.into_iter().map(T::of).collect())?;
        Ok(Normalization {
            config,
            mean,
            variance,
            stats: Stats::Given,
        })
    }

    /// The layer of a config without statistics, with its variables `mean`, `variance` (one
    /// value per position of the kept axes, the same shape) and `count`.
    pub fn from_weights(
        mut config: NormalizationConfig,
        mean: Tensor<T>,
        variance: Tensor<T>,
        count: i64,
    ) -> Result<Self, Error> {
        if mean.shape() != variance.shape() {
            return Err(ShapeError::mismatch(
                "variance",
                variance.shape(),
                format!("the shape of mean, {:?}", mean.shape()),
            )
            .into());
        }
        if mean.rank() != config.axis.len() {
            return Err(ShapeError::mismatch(
                "mean",
                mean.shape(),
                format!("one axis per kept axis {:?}", config.axis),
            )
            .into());
        }
        config.given = None;
        Ok(Normalization {
            config,
            mean,
            variance,
            stats: Stats::Variables { count },
        })
    }

    /// The layer's config.
    pub fn config(&self) -> &NormalizationConfig {
        &self.config
    }

    /// The statistics as variables in Keras' order (`mean`, `variance`; the `count` is
    /// [`Normalization::count`]); empty when the config gives them.
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        match self.stats {
            Stats::Given => Vec::new(),
            Stats::Variables { .. } => vec![&self.mean, &self.variance],
        }
    }

    /// The int64 `count` variable, when the statistics are variables.
    pub fn count(&self) -> Option<i64> {
        match self.stats {
            Stats::Given => None,
            Stats::Variables { count } => Some(count),
        }
    }

    /// Number of parameters as Keras counts them (`mean`, `variance` and the scalar `count`;
    /// none when the config gives the statistics). None of them is trainable.
    pub fn param_count(&self) -> usize {
        match self.stats {
            Stats::Given => 0,
            Stats::Variables { .. } => 2 * self.mean.len() + 1,
        }
    }

    /// The input shape to record in a Keras `build_config` for an input of shape `input`: for
    /// statistics held as variables, the kept axes take the statistics' sizes. Keras builds the
    /// variables from that shape (`mean` of shape `input[kept axes]`), and a layer adapted on
    /// data with a size 1 there (then broadcast) has variables of that size, not the input's.
    pub(crate) fn build_input_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let mut shape = input.to_vec();
        if matches!(self.stats, Stats::Given) {
            return shape;
        }
        let r = input.len() as isize;
        let mut kept: Vec<usize> = self
            .config
            .axis
            .iter()
            .map(|&a| if a < 0 { a + r } else { a })
            .filter_map(|d| usize::try_from(d).ok().filter(|&d| d < input.len()))
            .collect();
        kept.sort_unstable();
        if kept.len() == self.mean.rank() {
            for (d, &m) in kept.iter().zip(self.mean.shape()) {
                shape[*d] = Some(m);
            }
        }
        shape
    }

    /// For each axis of an input of shape `shape`, the stride of the statistics along it (0
    /// where they are broadcast), after checking that the statistics fit the input.
    fn strides(&self, shape: &[usize]) -> Result<Vec<usize>, Error> {
        let rank = shape.len();
        let mut kept = Vec::with_capacity(self.config.axis.len());
        for &a in &self.config.axis {
            let r = rank as isize;
            let d = if a < 0 { a + r } else { a };
            if d <= 0 || d >= r {
                return Err(ConfigError::invalid(
                    format!("Normalization `{}` axis", self.config.name),
                    a,
                    format!("an axis of the rank-{rank} input other than the batch axis"),
                )
                .into());
            }
            kept.push(d as usize);
        }
        kept.sort_unstable();
        let ms = self.mean.shape();
        let mut strides = vec![0; rank];
        let mut stride = 1;
        for (j, &m) in ms.iter().enumerate().rev() {
            // The statistics' axes line up with the last kept axes.
            let d = kept[kept.len() - ms.len() + j];
            if m != shape[d] && m != 1 {
                return Err(ShapeError::mismatch(
                    format!("input of Normalization `{}`", self.config.name),
                    shape,
                    format!(
                        "{m} along axis {d}, the size of the layer's statistics {ms:?} over axes {:?}",
                        self.config.axis
                    ),
                )
                .into());
            }
            if m != 1 {
                strides[d] = stride;
            }
            stride *= m;
        }
        Ok(strides)
    }

    /// `max(√variance, ε)` per value of the statistics.
    fn std(&self) -> Vec<T> {
        let eps = T::of(EPSILON);
        self.variance
            .data()
            .iter()
            .map(|v| v.sqrt().max(eps))
            .collect()
    }

    /// Calls `f(value, statistic index)` for every value of `x`, in order.
    fn each(&self, x: &Tensor<T>, mut f: impl FnMut(usize, usize)) -> Result<(), Error> {
        let shape = x.shape();
        let strides = self.strides(shape)?;
        let mut idx = vec![0usize; shape.len()];
        let mut at = 0usize;
        for i in 0..x.len() {
            f(i, at);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                at += strides[d];
                if idx[d] < shape[d] {
                    break;
                }
                at -= strides[d] * shape[d];
                idx[d] = 0;
            }
        }
        Ok(())
    }

    /// The layer's output: `(x − mean) / max(√variance, ε)`, or `mean + x · max(√variance, ε)`
    /// inverted.
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let std = self.std();
        let mean = self.mean.data();
        let xs = x.data();
        let mut out = vec![T::zero(); x.len()];
        if self.config.invert {
            self.each(x, |i, m| out[i] = mean[m] + xs[i] * std[m])?;
        } else {
            self.each(x, |i, m| out[i] = (xs[i] - mean[m]) / std[m])?;
        }
        Ok(Tensor::new(x.shape().to_vec(), out)?)
    }

    /// The gradient to the input of an output gradient `dy` (the input's shape).
    pub fn backward(&self, dy: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let std = self.std();
        let d = dy.data();
        let mut out = vec![T::zero(); dy.len()];
        if self.config.invert {
            self.each(dy, |i, m| out[i] = d[i] * std[m])?;
        } else {
            self.each(dy, |i, m| out[i] = d[i] / std[m])?;
        }
        Ok(Tensor::new(dy.shape().to_vec(), out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> Result<NormalizationConfig, ConfigError> {
        NormalizationConfig::from_keras(v.as_object().unwrap())
    }

    fn input() -> Tensor<f64> {
        let data = (0..2 * 3 * 4)
            .map(|i| (i as f64 * 0.37).sin() * 3.0)
            .collect();
        Tensor::new(vec![2, 3, 4], data).unwrap()
    }

    #[test]
    fn every_axis_choice_matches_its_definition() {
        let x = input();
        let at = |b: usize, t: usize, f: usize| x.data()[(b * 3 + t) * 4 + f];
        // (axis, statistics shape, the statistic index of (t, f))
        type Pick = fn(usize, usize) -> usize;
        let cases: [(Vec<isize>, Vec<usize>, Pick); 5] = [
            (vec![-1], vec![4], |_, f| f),
            (vec![2], vec![4], |_, f| f),
            (vec![1], vec![3], |t, _| t),
            (vec![1, 2], vec![3, 4], |t, f| t * 4 + f),
            (vec![], vec![], |_, _| 0),
        ];
        for invert in [false, true] {
            for (axis, shape, pick) in &cases {
                let n: usize = shape.iter().product();
                let mean: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 1.0).collect();
                let var: Vec<f64> = (0..n)
                    .map(|i| if i == 1 { 0.0 } else { 0.3 + i as f64 })
                    .collect();
                let layer = Normalization::new(
                    axis.clone(),
                    invert,
                    Tensor::new(shape.clone(), mean.clone()).unwrap(),
                    Tensor::new(shape.clone(), var.clone()).unwrap(),
                )
                .unwrap();
                let y = layer.call(&x).unwrap();
                for b in 0..2 {
                    for t in 0..3 {
                        for f in 0..4 {
                            let m = pick(t, f);
                            let std = var[m].sqrt().max(1e-7);
                            let want = if invert {
                                mean[m] + at(b, t, f) * std
                            } else {
                                (at(b, t, f) - mean[m]) / std
                            };
                            assert_eq!(y.data()[(b * 3 + t) * 4 + f], want, "{axis:?}");
                        }
                    }
                }
                // The gradient is the slope of that affine map.
                let dy = Tensor::new(vec![2, 3, 4], vec![1.0; 24]).unwrap();
                let dx = layer.backward(&dy).unwrap();
                for (i, g) in dx.data().iter().enumerate() {
                    let m = pick((i / 4) % 3, i % 4);
                    let std = var[m].sqrt().max(1e-7);
                    assert_eq!(*g, if invert { std } else { 1.0 / std });
                }
            }
        }
    }

    #[test]
    fn config_statistics_broadcast_as_keras_aligns_them() {
        let x = input();
        // axis (1, 2) with a mean of rank 1: it lines up with the last kept axis (features).
        let c = cfg(
            json!({"axis": [1, 2], "mean": [0.0, 1.0, 2.0, 3.0], "variance": [1.0, 1.0, 4.0, 4.0]}),
        )
        .unwrap();
        let layer = Normalization::<f64>::from_config(c).unwrap();
        let y = layer.call(&x).unwrap();
        for (i, v) in y.data().iter().enumerate() {
            let f = i % 4;
            let std = if f < 2 { 1.0 } else { 2.0 };
            assert_eq!(*v, (x.data()[i] - f as f64) / std);
        }
        // A scalar applies to every value.
        let c = cfg(json!({"axis": null, "mean": 2.0, "variance": 4.0, "invert": true})).unwrap();
        let y = Normalization::<f64>::from_config(c)
            .unwrap()
            .call(&x)
            .unwrap();
        for (a, b) in y.data().iter().zip(x.data()) {
            assert_eq!(*a, 2.0 + b * 2.0);
        }
        // Size-1 statistics broadcast; other sizes must match.
        let c = cfg(json!({"axis": [1, 2], "mean": [[1.0]], "variance": [[1.0]]})).unwrap();
        assert!(Normalization::<f64>::from_config(c)
            .unwrap()
            .call(&x)
            .is_ok());
        let c = cfg(json!({"axis": [-1], "mean": [1.0, 2.0], "variance": [1.0, 1.0]})).unwrap();
        let err = Normalization::<f64>::from_config(c)
            .unwrap()
            .call(&x)
            .unwrap_err();
        assert!(err.to_string().contains("along axis 2"), "{err}");
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        for (bad, says) in [
            (json!({"axis": [-1], "mean": 1.0}), "both"),
            (
                json!({"axis": [-1], "mean": [1.0], "variance": [1.0, 2.0]}),
                "shape of `mean`",
            ),
            (
                json!({"axis": [-1], "mean": [[1.0]], "variance": [[1.0]]}),
                "rank 2",
            ),
            (
                json!({"axis": [-1], "mean": [[1.0], [1.0, 2.0]], "variance": 1}),
                "regular nested list",
            ),
            (
                json!({"axis": [-1], "mean": "a", "variance": "b"}),
                "regular nested list",
            ),
            (json!({"axis": [1, 1]}), "distinct"),
            (json!({"axis": "x"}), "Normalization.axis"),
        ] {
            let err = cfg(bad.clone()).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let deep = (0..20).fold(json!(1.0), |v, _| json!([v]));
        assert!(cfg(json!({"axis": [-1], "mean": deep.clone(), "variance": deep})).is_err());
        // The batch axis, or an axis the input lacks.
        let one = || Tensor::new(vec![1], vec![0.0f64]).unwrap();
        for axis in [0isize, 3, -4] {
            let layer = Normalization::new(vec![axis], false, one(), one()).unwrap();
            let err = layer.call(&input()).unwrap_err().to_string();
            assert!(err.contains("other than the batch axis"), "{axis}: {err}");
        }
        // Variables of the wrong shape.
        let two = Tensor::new(vec![2], vec![0.0f64; 2]).unwrap();
        assert!(Normalization::new(vec![-1], false, one(), two.clone()).is_err());
        assert!(Normalization::new(vec![1, 2], false, two.clone(), two).is_err());
    }

    #[test]
    fn config_round_trips() {
        for c in [
            json!({"name": "n", "axis": [-1], "invert": false, "mean": null, "variance": null}),
            json!({"name": "m", "axis": [], "invert": true, "mean": 2.0, "variance": 4.0}),
            json!({"name": "k", "axis": [1, 2], "invert": false, "mean": [[1.0, 2.0]], "variance": [[1.0, 3.0]]}),
        ] {
            let parsed = cfg(c.clone()).unwrap();
            let mut back = Value::Object(parsed.to_keras("float32"));
            let o = back.as_object_mut().unwrap();
            o.remove("dtype");
            o.remove("trainable");
            assert_eq!(back, c);
        }
    }
}
