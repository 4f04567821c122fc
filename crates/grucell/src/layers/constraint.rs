//! Keras 3 weight constraints (`keras.constraints`): projection, config (spec §2.4).
//!
//! Keras applies a constraint after each optimizer update (`v.assign(constraint(v))`), never at
//! initialization and never in the forward pass. Norms are L2 norms over `axis` (default 0: per
//! column of an `(in, out)` matrix), kept as a broadcast dimension; ε = 1e-7 (Keras' backend
//! epsilon) is added to the norm in the denominator.

use crate::error::ConfigError;
use crate::float::Float;
use crate::layers::keras_json::{class_and_config, get_f64};
use crate::tensor::checked_numel;
use serde_json::{json, Map, Value};

/// Keras' backend epsilon.
const EPSILON: f64 = 1e-7;

/// The `axis` argument of the norm constraints, as Keras accepts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NormAxis {
    /// One axis (negative counts from the end), e.g. Keras' default `0`.
    Axis(i64),
    /// Several axes, e.g. `[0, 1]`.
    Axes(Vec<i64>),
    /// `null`: one norm over the whole weight.
    All,
}

impl Default for NormAxis {
    fn default() -> Self {
        NormAxis::Axis(0)
    }
}

impl NormAxis {
    fn from_json(v: Option<&Value>) -> Result<Self, ConfigError> {
        let int = |x: &Value| {
            x.as_i64().ok_or_else(|| {
                ConfigError::invalid("axis", x, "an integer, a list of integers or null")
            })
        };
        match v {
            None => Ok(NormAxis::Axis(0)),
            Some(Value::Null) => Ok(NormAxis::All),
            Some(Value::Array(a)) => {
                Ok(NormAxis::Axes(a.iter().map(int).collect::<Result<_, _>>()?))
            }
            Some(x) => Ok(NormAxis::Axis(int(x)?)),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            NormAxis::Axis(a) => json!(a),
            NormAxis::Axes(a) => json!(a),
            NormAxis::All => Value::Null,
        }
    }

    /// For each dimension of `shape`: whether the norm reduces over it. Negative axes count
    /// from the end; out-of-range or repeated axes are errors.
    pub fn reduce_mask(&self, shape: &[usize]) -> Result<Vec<bool>, ConfigError> {
        let rank = shape.len();
        let axes: &[i64] = match self {
            NormAxis::All => return Ok(vec![true; rank]),
            NormAxis::Axis(a) => std::slice::from_ref(a),
            NormAxis::Axes(a) => a,
        };
        let mut mask = vec![false; rank];
        for &a in axes {
            let r = rank as i64;
            let idx = if a < 0 { a + r } else { a };
            let slot = usize::try_from(idx)
                .ok()
                .and_then(|i| mask.get_mut(i))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "axis",
                        a,
                        format!("an axis in [-{rank}, {rank}) for a weight of shape {shape:?}"),
                    )
                })?;
            if *slot {
                return Err(ConfigError::invalid(
                    "axis",
                    format!("{axes:?}"),
                    "axes without repeats",
                ));
            }
            *slot = true;
        }
        Ok(mask)
    }
}

/// A Keras weight constraint.
///
/// ```
/// use grucell::layers::constraint::Constraint;
/// use serde_json::json;
///
/// let c = Constraint::from_keras(&json!("max_norm"))?.expect("not null"); // max_value 2, axis 0
/// // A (2, 2) kernel whose first column has norm 5: scaled to norm 2; the second is left alone.
/// let mut w = [3.0f32, 0.1, 4.0, 0.2];
/// c.apply(&mut w, &[2, 2])?;
/// assert!((w[0] - 1.2).abs() < 1e-6 && (w[2] - 1.6).abs() < 1e-6);
/// assert!((w[1] - 0.1).abs() < 1e-6);
/// assert_eq!(c.to_keras(), json!({"module": "keras.constraints", "class_name": "MaxNorm",
///     "config": {"max_value": 2, "axis": 0}, "registered_name": null}));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// `w · clip(n, 0, max_value) / (ε + n)` (Keras `MaxNorm(max_value=2, axis=0)`).
    MaxNorm {
        /// Largest allowed norm (≥ 0).
        max_value: f64,
        /// Norm axes.
        axis: NormAxis,
    },
    /// `max(w, 0)` (Keras `NonNeg`).
    NonNeg,
    /// `w / (ε + n)` (Keras `UnitNorm(axis=0)`).
    UnitNorm {
        /// Norm axes.
        axis: NormAxis,
    },
    /// `w · (rate·clip(n, min, max) + (1 − rate)·n) / (ε + n)`
    /// (Keras `MinMaxNorm(min_value=0, max_value=1, rate=1, axis=0)`).
    MinMaxNorm {
        /// Smallest allowed norm (≥ 0).
        min_value: f64,
        /// Largest allowed norm (≥ `min_value`).
        max_value: f64,
        /// Strength in [0, 1]: 1 projects exactly, less moves part of the way.
        rate: f64,
        /// Norm axes.
        axis: NormAxis,
    },
}

const NAMES: &[&str] = &[
    "MaxNorm",
    "max_norm",
    "NonNeg",
    "non_neg",
    "UnitNorm",
    "unit_norm",
    "MinMaxNorm",
    "min_max_norm",
];

fn check_keys(class: &str, cfg: &Map<String, Value>, allowed: &[&str]) -> Result<(), ConfigError> {
    match cfg.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ConfigError::invalid(
            format!("{class}.config"),
            format!("unexpected key `{k}`"),
            if allowed.is_empty() {
                "no keys".to_string()
            } else {
                format!("only {}", allowed.join(", "))
            },
        )),
    }
}

fn check_nonneg(arg: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(arg, v, "a non-negative finite number"))
    }
}

/// A JSON number written as Keras writes a Python int when the value is integral (as MaxNorm's
/// default `2`), else as a float.
fn int_or_float(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

impl Constraint {
    /// Looks up a Keras string identifier (`"max_norm"`, `"MaxNorm"`, `"non_neg"`, `"unit_norm"`,
    /// `"min_max_norm"` and class names) with Keras' defaults.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Self::build(name, &Map::new())
    }

    /// Reads a Keras identifier: `null` → `None`, a string or a serialized object
    /// `{"class_name", "config", …}` (extra keys around it are ignored; unknown keys inside
    /// `config` are rejected as Keras rejects them).
    pub fn from_keras(v: &Value) -> Result<Option<Self>, ConfigError> {
        match class_and_config(v)? {
            None => Ok(None),
            Some((class, cfg)) => Self::build(&class, &cfg).map(Some),
        }
    }

    fn build(class: &str, cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let c = match class {
            "MaxNorm" | "max_norm" => {
                check_keys(class, cfg, &["max_value", "axis"])?;
                Constraint::MaxNorm {
                    max_value: get_f64(cfg, "max_value", 2.0)?,
                    axis: NormAxis::from_json(cfg.get("axis"))?,
                }
            }
            "NonNeg" | "non_neg" => {
                check_keys(class, cfg, &[])?;
                Constraint::NonNeg
            }
            "UnitNorm" | "unit_norm" => {
                check_keys(class, cfg, &["axis"])?;
                Constraint::UnitNorm {
                    axis: NormAxis::from_json(cfg.get("axis"))?,
                }
            }
            "MinMaxNorm" | "min_max_norm" => {
                check_keys(class, cfg, &["min_value", "max_value", "rate", "axis"])?;
                Constraint::MinMaxNorm {
                    min_value: get_f64(cfg, "min_value", 0.0)?,
                    max_value: get_f64(cfg, "max_value", 1.0)?,
                    rate: get_f64(cfg, "rate", 1.0)?,
                    axis: NormAxis::from_json(cfg.get("axis"))?,
                }
            }
            "Constraint" | "constraint" => {
                return Err(ConfigError::unsupported(
                    "constraint",
                    format!("`{class}` (the identity base class) is not supported"),
                ))
            }
            _ => {
                return Err(ConfigError::UnknownName {
                    kind: "constraint",
                    name: class.to_string(),
                    known: NAMES.join(", "),
                })
            }
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the arguments: norms finite and ≥ 0, `min_value ≤ max_value`, `rate` in [0, 1].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Constraint::MaxNorm { max_value, .. } => check_nonneg("max_value", max_value),
            Constraint::NonNeg | Constraint::UnitNorm { .. } => Ok(()),
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                ..
            } => {
                check_nonneg("min_value", min_value)?;
                check_nonneg("max_value", max_value)?;
                if min_value > max_value {
                    return Err(ConfigError::invalid(
                        "min_value",
                        min_value,
                        format!("a number ≤ max_value ({max_value})"),
                    ));
                }
                if (0.0..=1.0).contains(&rate) {
                    Ok(())
                } else {
                    Err(ConfigError::invalid("rate", rate, "a number in [0, 1]"))
                }
            }
        }
    }

    /// The Keras class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Constraint::MaxNorm { .. } => "MaxNorm",
            Constraint::NonNeg => "NonNeg",
            Constraint::UnitNorm { .. } => "UnitNorm",
            Constraint::MinMaxNorm { .. } => "MinMaxNorm",
        }
    }

    /// Serializes as Keras 3.15.1 does (`keras.constraints.serialize`):
    /// `{"module": "keras.constraints", "class_name", "config", "registered_name": null}`.
    /// `MaxNorm`'s `max_value` is written as an integer when integral (Keras' default is the
    /// Python int `2`); the other numbers as floats.
    pub fn to_keras(&self) -> Value {
        let config = match self {
            Constraint::MaxNorm { max_value, axis } => {
                json!({"max_value": int_or_float(*max_value), "axis": axis.to_json()})
            }
            Constraint::NonNeg => json!({}),
            Constraint::UnitNorm { axis } => json!({ "axis": axis.to_json() }),
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate,
                axis,
            } => json!({
                "min_value": min_value, "max_value": max_value, "rate": rate, "axis": axis.to_json()
            }),
        };
        json!({
            "module": "keras.constraints",
            "class_name": self.class_name(),
            "config": config,
            "registered_name": null,
        })
    }

    /// Projects `w` (row-major, of `shape`) in place, as Keras' `constraint(w)`. Works for any
    /// rank, e.g. a `(2, 3u)` bias (axis 0 pairs the input and recurrent bias of each unit) or a
    /// `(3u,)` bias (axis 0 / −1: one norm of the whole vector).
    ///
    /// Errors: `w.len()` ≠ the shape's element count, an axis out of range or repeated, invalid
    /// arguments.
    pub fn apply<T: Float>(&self, w: &mut [T], shape: &[usize]) -> Result<(), ConfigError> {
        self.validate()?;
        if checked_numel(shape) != Some(w.len()) {
            return Err(ConfigError::invalid(
                "shape",
                format!("{shape:?}"),
                format!("a shape with {} elements (the weight's length)", w.len()),
            ));
        }
        let axis = match self {
            Constraint::NonNeg => {
                for x in w.iter_mut() {
                    *x = x.max(T::zero());
                }
                return Ok(());
            }
            Constraint::MaxNorm { axis, .. }
            | Constraint::UnitNorm { axis }
            | Constraint::MinMaxNorm { axis, .. } => axis,
        };
        let mask = axis.reduce_mask(shape)?;
        let (group, n_groups) = group_ids(shape, &mask);
        // Sums of squares in f64, norm rounded to T; the rest in T as Keras computes it.
        let mut sq = vec![0.0f64; n_groups];
        for (&x, &gi) in w.iter().zip(&group) {
            if let Some(s) = sq.get_mut(gi) {
                *s += x.f64() * x.f64();
            }
        }
        let eps = T::of(EPSILON);
        let scale: Vec<T> = sq
            .iter()
            .map(|&s| {
                let n = T::of(s.sqrt());
                let desired = match *self {
                    Constraint::MaxNorm { max_value, .. } => n.max(T::zero()).min(T::of(max_value)),
                    Constraint::MinMaxNorm {
                        min_value,
                        max_value,
                        rate,
                        ..
                    } => {
                        T::of(rate) * n.max(T::of(min_value)).min(T::of(max_value))
                            + T::of(1.0 - rate) * n
                    }
                    _ => T::one(),
                };
                desired / (eps + n)
            })
            .collect();
        for (x, &gi) in w.iter_mut().zip(&group) {
            if let Some(&s) = scale.get(gi) {
                *x *= s;
            }
        }
        Ok(())
    }
}

/// For each element (row-major), the index of its norm group: its multi-index with the reduced
/// dimensions dropped, flattened. Returns the ids and the number of groups.
fn group_ids(shape: &[usize], reduce: &[bool]) -> (Vec<usize>, usize) {
    let n = shape.iter().product::<usize>();
    // Stride of each kept dimension in the group index (row-major over kept dims).
    let mut gstride = vec![0usize; shape.len()];
    let mut acc = 1usize;
    for (d, (&len, &red)) in shape.iter().zip(reduce).enumerate().rev() {
        if !red {
            gstride[d] = acc;
            acc *= len;
        }
    }
    let n_groups = acc;
    let mut ids = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut gid = 0usize;
    for _ in 0..n {
        ids.push(gid);
        // Increment the multi-index (odometer), updating the group id incrementally.
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            gid += gstride[d];
            if idx[d] < shape[d] {
                break;
            }
            gid -= gstride[d] * idx[d];
            idx[d] = 0;
        }
    }
    (ids, n_groups)
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.class_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_row_major() {
        assert_eq!(
            group_ids(&[2, 3], &[true, false]),
            (vec![0, 1, 2, 0, 1, 2], 3)
        );
        assert_eq!(
            group_ids(&[2, 3], &[false, true]),
            (vec![0, 0, 0, 1, 1, 1], 2)
        );
        assert_eq!(group_ids(&[2, 3], &[true, true]), (vec![0; 6], 1));
        assert_eq!(group_ids(&[4], &[true]), (vec![0; 4], 1));
        let (ids, g) = group_ids(&[2, 2, 2], &[false, true, false]);
        assert_eq!((ids, g), (vec![0, 1, 0, 1, 2, 3, 2, 3], 4));
    }

    #[test]
    fn axes_resolve_like_numpy() {
        assert_eq!(
            NormAxis::Axis(-1).reduce_mask(&[2, 3]).unwrap(),
            vec![false, true]
        );
        assert_eq!(NormAxis::Axis(0).reduce_mask(&[12]).unwrap(), vec![true]);
        assert!(NormAxis::Axis(1).reduce_mask(&[12]).is_err());
        assert!(NormAxis::Axis(-3).reduce_mask(&[2, 3]).is_err());
        assert!(NormAxis::Axes(vec![0, -2]).reduce_mask(&[2, 3]).is_err());
        assert_eq!(
            NormAxis::All.reduce_mask(&[2, 3]).unwrap(),
            vec![true, true]
        );
    }

    #[test]
    fn projections() {
        // Unit norm per column, zero column stays zero.
        let mut w = [3.0f64, 0.0, 4.0, 0.0];
        Constraint::UnitNorm {
            axis: NormAxis::Axis(0),
        }
        .apply(&mut w, &[2, 2])
        .unwrap();
        assert!((w[0] - 0.6).abs() < 1e-6 && (w[2] - 0.8).abs() < 1e-6 && w[1] == 0.0);
        // MinMaxNorm with rate 0.5 moves half way: norm 5 → (0.5·1 + 0.5·5) = 3.
        let mut w = [3.0f64, 4.0];
        Constraint::MinMaxNorm {
            min_value: 0.0,
            max_value: 1.0,
            rate: 0.5,
            axis: NormAxis::All,
        }
        .apply(&mut w, &[2])
        .unwrap();
        assert!(((w[0] * w[0] + w[1] * w[1]).sqrt() - 3.0).abs() < 1e-6);
        let mut w = [-1.0f32, 2.0];
        Constraint::NonNeg.apply(&mut w, &[2]).unwrap();
        assert_eq!(w, [0.0, 2.0]);
        assert!(Constraint::NonNeg.apply(&mut w, &[3]).is_err());
    }

    #[test]
    fn configs() {
        assert_eq!(
            Constraint::from_name("max_norm").unwrap(),
            Constraint::MaxNorm {
                max_value: 2.0,
                axis: NormAxis::Axis(0)
            }
        );
        assert!(matches!(
            Constraint::from_name("maxnorm"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert!(matches!(
            Constraint::from_name("Constraint"),
            Err(ConfigError::Unsupported { .. })
        ));
        let bad =
            json!({"class_name": "MinMaxNorm", "config": {"min_value": 2.0, "max_value": 1.0}});
        assert!(
            matches!(Constraint::from_keras(&bad), Err(ConfigError::InvalidValue { ref arg, .. }) if arg == "min_value")
        );
        let bad = json!({"class_name": "MaxNorm", "config": {"axis": 0.5}});
        assert!(
            matches!(Constraint::from_keras(&bad), Err(ConfigError::InvalidValue { ref arg, .. }) if arg == "axis")
        );
        let c = Constraint::from_keras(
            &json!({"class_name": "UnitNorm", "config": {"axis": [0, 1]},
            "module": "keras.constraints", "registered_name": null, "shared_object_id": 5}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            Constraint::UnitNorm {
                axis: NormAxis::Axes(vec![0, 1])
            }
        );
        assert_eq!(Constraint::from_keras(&Value::Null).unwrap(), None);
    }
}
