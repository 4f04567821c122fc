//! Keras 3 losses with their gradients, computed the way Keras 3.15.1 on TensorFlow 2.21 does.
//!
//! Every loss follows Keras' two stages:
//!
//! 1. a per-sample value `L_r` for each row `r` of the leading axes (the last axis is reduced:
//!    the *mean* over it for the regression losses and binary crossentropy, the crossentropy *sum*
//!    over classes for the categorical ones);
//! 2. the default reduction `"sum_over_batch_size"`: `loss = Σ_r w_r · L_r / R`, where `R` is the
//!    number of rows (all leading axes, e.g. `batch · time` for sequence outputs) and `w_r` the
//!    optional sample weight (1 when absent). The divisor is `R` whether or not there are
//!    weights (Keras' `"mean"` is the same; `"mean_with_sample_weight"` is not supported).
//!
//! Gradients are those TensorFlow's autodiff produces for Keras' graph, including its quirks:
//! crossentropies on probabilities clip with the backend epsilon `ε = 1e-7`, and the clip passes
//! no gradient for values strictly outside `[ε, 1 − ε]` (values exactly on a bound still get one,
//! as `tf.clip_by_value` is `maximum(minimum(x, hi), lo)`); the fused softmax crossentropy kernels
//! return `softmax − labels` whatever the labels sum to. Constants are rounded to `T` where
//! TensorFlow rounds them (e.g. `1 − ε` is the `f32` nearest to `0.9999999`).
//!
//! Note for callers: Keras hands the crossentropies the *logits* when `y_pred` comes straight
//! out of a `softmax`/`sigmoid` activation (`_get_logits`), so `Dense(activation = "softmax")` +
//! `categorical_crossentropy` trains through the `from_logits = true` formula (no clipping).
//! [`Loss::on_activation_output`] says when, and which loss then applies to the activation's
//! input.

use crate::error::{ConfigError, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::keras_json::{get_bool, get_f64};
use crate::layers::pointwise::L2Scale;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Keras' backend epsilon (`keras.config.epsilon()`), the clip margin of the crossentropies.
pub const EPSILON: f64 = 1e-7;

/// A Keras loss with the default reduction (`"sum_over_batch_size"`).
///
/// ```
/// use grucell::train::loss::Loss;
///
/// let loss = Loss::from_name("mse")?;
/// // two samples, two outputs each
/// let y_true = [0.0f32, 1.0, 1.0, 0.0];
/// let y_pred = [0.5f32, 1.0, 1.0, 1.0];
/// let mut grad = [0.0f32; 4];
/// let value = loss.value_and_grad(&y_true, &y_pred, &[2, 2], None, &mut grad)?;
/// assert!((value - 0.3125).abs() < 1e-7); // mean over outputs, then over samples
/// assert_eq!(grad, [0.25, 0.0, 0.0, 0.5]); // 2 · (y_pred − y_true) / 4
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// `L_r = mean_i (t_i − p_i)²` (`"mse"`, `keras.losses.MeanSquaredError`).
    ///
    /// Gradient: `∂/∂p_i = −g · ((t_i − p_i) · 2)` with `g = w_r / R / C`.
    MeanSquaredError,
    /// `L_r = mean_i |t_i − p_i|` (`"mae"`). Gradient `−g · sign(t_i − p_i)`, 0 where equal.
    MeanAbsoluteError,
    /// With `x = p − t`: `L_r = mean_i (½x² if |x| ≤ δ else δ|x| − ½δ²)` (`keras.losses.Huber`).
    ///
    /// Gradient `g · x` inside, `g · δ · sign(x)` outside. Keras' `Huber.get_config` omits
    /// `delta`, so a Keras-saved Huber loss reloads (in Keras and here) with `delta = 1`.
    Huber {
        /// The switch point δ between the quadratic and the linear branch (Keras default 1.0).
        delta: f64,
    },
    /// With `x = p − t`: `L_r = mean_i (x + softplus(−2x) − log 2)` (`keras.losses.LogCosh`).
    ///
    /// `softplus` is TensorFlow's (`z` above `−ln(ε_T) − 2`, `eᶻ` below `ln(ε_T) + 2`,
    /// `log1p(eᶻ)` between, `ε_T` the machine epsilon); `log 2` is the `f32` value even for `f64`
    /// (Keras computes `ops.log(2.0)` in float32). Gradient `g + g/(e^{2x} + 1) · (−2)`.
    LogCosh,
    /// Binary crossentropy, the mean over the last axis (`"bce"`, `"binary_crossentropy"`).
    ///
    /// Labels are first smoothed when `label_smoothing = s ≠ 0`: `t ← t(1 − s) + s/2`.
    /// From probabilities: `o = clip(p, ε, 1 − ε)`, `L_r = mean_i −(t log o + (1 − t) log(1 − o))`,
    /// gradient `−g (t/o − (1 − t)/(1 − o))` where `p` is inside the clip range, else 0.
    /// From logits `z`: `L_r = mean_i (max(z, 0) − z t + log1p(e^{−|z|}))`, gradient
    /// `g (σ(z) − t)` (as TensorFlow's composite op differentiates it).
    BinaryCrossentropy {
        /// `y_pred` holds logits rather than probabilities.
        from_logits: bool,
        /// Smoothing `s` in `[0, 1]` (0 = none).
        label_smoothing: f64,
    },
    /// Categorical crossentropy over the last axis (one-hot `y_true`).
    ///
    /// Labels are smoothed when `s ≠ 0`: `t ← t(1 − s) + s/C`.
    /// From probabilities: `q = p / Σp` (rows are renormalized), `o = clip(q, ε, 1 − ε)`,
    /// `L_r = −Σ_i t_i log o_i`; the gradient goes back through the clip mask and the
    /// normalization: `∂/∂p_j = d_j/S − Σ_i d_i p_i/S²` with `d_i = −g t_i/o_i` (0 where clipped).
    /// From logits: `L_r = Σ_i t_i (logΣe^{z} − z_i)`, gradient `g (softmax(z)_i − t_i)`.
    /// Here `g = w_r / R` (no mean over classes).
    CategoricalCrossentropy {
        /// `y_pred` holds logits rather than probabilities.
        from_logits: bool,
        /// Smoothing `s` in `[0, 1]` (0 = none).
        label_smoothing: f64,
    },
    /// Categorical crossentropy with integer labels (given as floats, one per row).
    ///
    /// From probabilities: `z = log clip(p, ε, 1 − ε)`, then as from logits:
    /// `L_r = logΣe^{z} − z_label`, gradient w.r.t. `z`: `g (softmax(z) − onehot)`, carried back
    /// to `p` as `· 1/clip(p)` where `p` is inside the clip range, else 0.
    SparseCategoricalCrossentropy {
        /// `y_pred` holds logits rather than probabilities.
        from_logits: bool,
    },
    /// `L_r = 100 · mean_i |(t_i − p_i) / max(|t_i|, ε)|` (`"mape"`,
    /// `keras.losses.MeanAbsolutePercentageError`). Gradient `−(g·100/C · sign(x)) / max(|t|, ε)`.
    MeanAbsolutePercentageError,
    /// `L_r = mean_i (log(max(p_i, ε) + 1) − log(max(t_i, ε) + 1))²` (`"msle"`,
    /// `keras.losses.MeanSquaredLogarithmicError`; `ε` is the float32 value even for `f64`, as
    /// Keras converts it). No gradient where `p < ε`.
    MeanSquaredLogarithmicError,
    /// `L_r = mean_i (p_i − t_i · log(p_i + ε))` (`"poisson"`, `keras.losses.Poisson`).
    Poisson,
    /// `L_r = mean_i max(1 − t_i p_i, 0)` (`"hinge"`, `keras.losses.Hinge`). Labels that are all
    /// 0 or 1 in the batch (Keras tests the whole `y_true` tensor) become `2t − 1`. The gradient
    /// `−g·t` passes where `1 − t p ≥ 0` (TensorFlow's `maximum` sends ties to its first input).
    Hinge,
    /// `L_r = mean_i max(1 − t_i p_i, 0)²` (`"squared_hinge"`, `keras.losses.SquaredHinge`), with
    /// [`Loss::Hinge`]'s labels.
    SquaredHinge,
    /// `L_r = max(max_i (1 − t_i) p_i − Σ_i t_i p_i + 1, 0)` (`"categorical_hinge"`,
    /// `keras.losses.CategoricalHinge`), no mean over classes. The gradient of the `max` is
    /// shared equally among tied entries, as TensorFlow's `reduce_max` does.
    CategoricalHinge,
    /// `L_r = Σ_i t̂_i log(t̂_i / p̂_i)` with `t̂ = clip(t, ε, 1)`, `p̂ = clip(p, ε, 1)` (`"kld"`,
    /// `keras.losses.KLDivergence`), no mean over classes; no gradient where the clip cuts `p`.
    KlDivergence,
    /// `L_r = −Σ_i t̂_i p̂_i` with `v̂ = v · min(rsqrt(Σ v²), 1/ε)` (`"cosine_similarity"`,
    /// `keras.losses.CosineSimilarity`, last axis), no mean over the features. A zero row
    /// gives 0, and its gradient is `−g · t̂ / ε` (the `minimum` passes none to the norm).
    CosineSimilarity,
    /// Binary focal crossentropy (`"binary_focal_crossentropy"`,
    /// `keras.losses.BinaryFocalCrossentropy`), the mean over the last axis of
    /// `w · (1 − p_t)^γ · bce(t, y)` with `p_t = t·y + (1 − t)(1 − y)` on the unclipped
    /// probability `y`, `bce` [`Loss::BinaryCrossentropy`]'s element term, and `w = t·α +
    /// (1 − t)(1 − α)` under class balancing (else 1). Labels are smoothed first as in binary
    /// crossentropy. From logits `z`: `y = σ(z)`, and `bce` is computed from `z` (Keras hands the
    /// logits of its own sigmoid to the crossentropy).
    BinaryFocalCrossentropy {
        /// Weigh class 1 by `α` and class 0 by `1 − α`.
        apply_class_balancing: bool,
        /// `α` of the class balancing (Keras default 0.25).
        alpha: f64,
        /// The focusing exponent `γ` (Keras default 2).
        gamma: f64,
        /// `y_pred` holds logits rather than probabilities.
        from_logits: bool,
        /// Smoothing `s` in `[0, 1]` (0 = none).
        label_smoothing: f64,
    },
    /// Categorical focal crossentropy (`"categorical_focal_crossentropy"`,
    /// `keras.losses.CategoricalFocalCrossentropy`): `L_r = Σ_i α (1 − o_i)^γ · (−t_i log o_i)`
    /// with `o = clip(q, ε, 1 − ε)`, `q = y / Σy` (from logits `y = softmax(z)`), labels smoothed
    /// as in categorical crossentropy. Keras computes it without a crossentropy op, so a softmax
    /// output is never read as logits.
    CategoricalFocalCrossentropy {
        /// The class weight `α` (one number; Keras default 0.25).
        alpha: f64,
        /// The focusing exponent `γ` (Keras default 2).
        gamma: f64,
        /// `y_pred` holds logits rather than probabilities.
        from_logits: bool,
        /// Smoothing `s` in `[0, 1]` (0 = none).
        label_smoothing: f64,
    },
    /// Generalized crossentropy with integer labels (`keras.losses.CategoricalGeneralizedCrossEntropy`):
    /// `L_r = (1 − p^q) / q` with `p = y_pred[label]` (no clip). Labels are one per row (shape
    /// `shape[..-1]`), as for [`Loss::SparseCategoricalCrossentropy`].
    CategoricalGeneralizedCrossEntropy {
        /// The noise parameter `q` in `(0, 1)` (Keras default 0.5).
        q: f64,
    },
    /// Keras' `"crossentropy"`/`"ce"` (any case): binary, sparse categorical or categorical
    /// crossentropy, picked from the shapes of the targets and outputs when the loss first meets
    /// them ([`Loss::resolved`]), as Keras' `compile` does.
    Crossentropy,
}

/// Names Keras' `keras.losses.get` knows but grucell does not implement.
const KERAS_UNSUPPORTED: &[&str] = &[
    "Dice",
    "Tversky",
    "Circle",
    "CTC",
    "dice",
    "tversky",
    "circle",
    "ctc",
    "Loss",
    "LossFunctionWrapper",
];

const KNOWN: &str = "mse, MSE, mean_squared_error, MeanSquaredError, mae, MAE, mean_absolute_error, \
MeanAbsoluteError, huber, Huber, log_cosh, LogCosh, bce, BCE, binary_crossentropy, BinaryCrossentropy, \
categorical_crossentropy, CategoricalCrossentropy, sparse_categorical_crossentropy, \
SparseCategoricalCrossentropy, mape, MAPE, mean_absolute_percentage_error, \
MeanAbsolutePercentageError, msle, MSLE, mean_squared_logarithmic_error, MeanSquaredLogarithmicError, \
poisson, Poisson, hinge, Hinge, squared_hinge, SquaredHinge, categorical_hinge, CategoricalHinge, \
kld, KLD, kl_divergence, KLDivergence, cosine_similarity, CosineSimilarity, binary_focal_crossentropy, \
BinaryFocalCrossentropy, categorical_focal_crossentropy, CategoricalFocalCrossentropy, \
CategoricalGeneralizedCrossEntropy";

impl Loss {
    /// Looks up a loss by the names `keras.losses.get` accepts (case-sensitive, as Keras):
    /// the class names (`"MeanSquaredError"`, …, with default arguments), the function names
    /// (`"mean_squared_error"`, `"huber"`, `"log_cosh"`, `"binary_crossentropy"`, …) and the aliases
    /// `"mse"`, `"MSE"`, `"mae"`, `"MAE"`, `"bce"`, `"BCE"`.
    ///
    /// `"crossentropy"` and `"ce"` (any case) are [`Loss::Crossentropy`], which Keras' `compile`
    /// resolves from the data shapes. Other Keras losses give [`ConfigError::Unsupported`].
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        let loss = match name {
            "mse" | "MSE" | "mean_squared_error" | "MeanSquaredError" => Loss::MeanSquaredError,
            "mae" | "MAE" | "mean_absolute_error" | "MeanAbsoluteError" => Loss::MeanAbsoluteError,
            "huber" | "Huber" => Loss::Huber { delta: 1.0 },
            "log_cosh" | "LogCosh" => Loss::LogCosh,
            "bce" | "BCE" | "binary_crossentropy" | "BinaryCrossentropy" => {
                Loss::BinaryCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.0,
                }
            }
            "categorical_crossentropy" | "CategoricalCrossentropy" => {
                Loss::CategoricalCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.0,
                }
            }
            "sparse_categorical_crossentropy" | "SparseCategoricalCrossentropy" => {
                Loss::SparseCategoricalCrossentropy { from_logits: false }
            }
            "mape" | "MAPE" | "mean_absolute_percentage_error" | "MeanAbsolutePercentageError" => {
                Loss::MeanAbsolutePercentageError
            }
            "msle" | "MSLE" | "mean_squared_logarithmic_error" | "MeanSquaredLogarithmicError" => {
                Loss::MeanSquaredLogarithmicError
            }
            "poisson" | "Poisson" => Loss::Poisson,
            "hinge" | "Hinge" => Loss::Hinge,
            "squared_hinge" | "SquaredHinge" => Loss::SquaredHinge,
            "categorical_hinge" | "CategoricalHinge" => Loss::CategoricalHinge,
            "kld" | "KLD" | "kl_divergence" | "KLDivergence" => Loss::KlDivergence,
            "cosine_similarity" | "CosineSimilarity" => Loss::CosineSimilarity,
            "binary_focal_crossentropy" | "BinaryFocalCrossentropy" => {
                Loss::BinaryFocalCrossentropy {
                    apply_class_balancing: false,
                    alpha: 0.25,
                    gamma: 2.0,
                    from_logits: false,
                    label_smoothing: 0.0,
                }
            }
            "categorical_focal_crossentropy" | "CategoricalFocalCrossentropy" => {
                Loss::CategoricalFocalCrossentropy {
                    alpha: 0.25,
                    gamma: 2.0,
                    from_logits: false,
                    label_smoothing: 0.0,
                }
            }
            // Keras' `losses.get` knows only the class, not a function name.
            "CategoricalGeneralizedCrossEntropy" => {
                Loss::CategoricalGeneralizedCrossEntropy { q: 0.5 }
            }
            _ if ["crossentropy", "ce"].contains(&name.to_lowercase().as_str()) => {
                Loss::Crossentropy
            }
            other if KERAS_UNSUPPORTED.contains(&other) => {
                return Err(ConfigError::unsupported(
                    "loss",
                    format!(
                        "Keras loss `{other}` is not implemented by grucell; supported: {KNOWN}"
                    ),
                ))
            }
            other => {
                return Err(ConfigError::UnknownName {
                    kind: "loss",
                    name: other.to_string(),
                    known: KNOWN.to_string(),
                })
            }
        };
        Ok(loss)
    }

    /// Reads a Keras `compile_config` `"loss"` entry: a name (`"mse"`), a serialized function
    /// (`{"class_name": "function", "config": "mean_squared_error", …}`) or a serialized loss object
    /// (`{"class_name": "BinaryCrossentropy", "config": {"from_logits": true, …}}`).
    ///
    /// Accepted config keys: `name`, `dtype` (ignored), `reduction` (`"sum_over_batch_size"`,
    /// `"mean"`, TF-Keras 2's `"auto"` or absent), TF-Keras 2's `fn` (the loss' own function),
    /// `axis` (`-1`), `from_logits`, `label_smoothing`, `delta`, `ignore_class` (`null`), the
    /// focal losses' `alpha`, `gamma`, `apply_class_balancing`, and `q`. Anything else,
    /// lists/dicts of losses and other reductions are errors that name the key.
    pub fn from_keras(v: &Value) -> Result<Self, ConfigError> {
        let obj = match v {
            Value::String(s) => return Loss::from_name(s),
            Value::Object(o) => o,
            Value::Array(_) => {
                return Err(ConfigError::unsupported(
                    "loss",
                    "a list of losses (multi-output models); give a single loss",
                ))
            }
            other => {
                return Err(ConfigError::invalid(
                    "loss",
                    other,
                    "a loss name or a serialized Keras loss object",
                ))
            }
        };
        let class = match obj.get("class_name") {
            Some(Value::String(c)) => c.as_str(),
            _ => {
                return Err(ConfigError::unsupported(
                    "loss",
                    format!(
                    "a dict of losses or an object without `class_name` ({v}); give a single loss"
                ),
                ))
            }
        };
        if class == "function" {
            return match obj.get("config") {
                Some(Value::String(f)) => Loss::from_name(f),
                other => Err(ConfigError::invalid(
                    "loss.config",
                    other.unwrap_or(&Value::Null),
                    "the name of a Keras loss function",
                )),
            };
        }
        let empty = Map::new();
        let config = match obj.get("config") {
            Some(Value::Object(c)) => c,
            None | Some(Value::Null) => &empty,
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{class}.config"),
                    other,
                    "an object",
                ))
            }
        };
        let base = Loss::from_name(class)?;
        let allowed: &[&str] = match base {
            Loss::Huber { .. } => &["delta"],
            Loss::BinaryCrossentropy { .. } | Loss::CategoricalCrossentropy { .. } => {
                &["from_logits", "label_smoothing", "axis"]
            }
            Loss::SparseCategoricalCrossentropy { .. } => &["from_logits", "ignore_class", "axis"],
            Loss::BinaryFocalCrossentropy { .. } => &[
                "from_logits",
                "label_smoothing",
                "axis",
                "apply_class_balancing",
                "alpha",
                "gamma",
            ],
            Loss::CategoricalFocalCrossentropy { .. } => {
                &["from_logits", "label_smoothing", "axis", "alpha", "gamma"]
            }
            // Keras' config omits `axis`; the constructor takes it.
            Loss::CosineSimilarity => &["axis"],
            Loss::CategoricalGeneralizedCrossEntropy { .. } => &["q"],
            // The others take only `name`, `reduction` (and `dtype`).
            _ => &[],
        };
        for (key, val) in config {
            match key.as_str() {
                "name" | "dtype" => {}
                // TF-Keras 2 names the loss function the class wraps.
                "fn" => {
                    let same = val
                        .as_str()
                        .and_then(|f| Loss::from_name(f).ok())
                        .is_some_and(|f| std::mem::discriminant(&f) == std::mem::discriminant(&base));
                    if !same {
                        return Err(ConfigError::invalid(
                            format!("{class}.fn"),
                            val,
                            format!("the name of {class}'s own loss function"),
                        ));
                    }
                }
                // TF-Keras 2 writes "auto", which `fit` resolves to "sum_over_batch_size".
                "reduction" => match val {
                    Value::String(r) if matches!(r.as_str(), "sum_over_batch_size" | "mean" | "auto") => {}
                    other => {
                        return Err(ConfigError::unsupported(
                            "loss reduction",
                            format!("{class}.reduction = {other}; grucell implements \"sum_over_batch_size\""),
                        ))
                    }
                },
                "axis" if allowed.contains(&"axis") => {
                    if !(val.is_null() || val.as_i64() == Some(-1)) {
                        return Err(ConfigError::unsupported(
                            "loss axis",
                            format!("{class}.axis = {val}; only the last axis (-1) is supported"),
                        ));
                    }
                }
                "ignore_class" if allowed.contains(&"ignore_class") => {
                    if !val.is_null() {
                        return Err(ConfigError::unsupported(
                            "loss option",
                            format!("{class}.ignore_class = {val}; only null is supported"),
                        ));
                    }
                }
                k if allowed.contains(&k) => {}
                k => {
                    return Err(ConfigError::invalid(
                        format!("{class}.{k}"),
                        val,
                        format!("no such argument; {class} takes name, reduction{}", {
                            let mut s = String::new();
                            for a in allowed {
                                s.push_str(", ");
                                s.push_str(a);
                            }
                            s
                        }),
                    ))
                }
            }
        }
        let loss = match base {
            Loss::Huber { .. } => Loss::Huber {
                delta: get_f64(config, "delta", 1.0)?,
            },
            Loss::BinaryCrossentropy { .. } => Loss::BinaryCrossentropy {
                from_logits: get_bool(config, "from_logits", false)?,
                label_smoothing: get_f64(config, "label_smoothing", 0.0)?,
            },
            Loss::CategoricalCrossentropy { .. } => Loss::CategoricalCrossentropy {
                from_logits: get_bool(config, "from_logits", false)?,
                label_smoothing: get_f64(config, "label_smoothing", 0.0)?,
            },
            Loss::SparseCategoricalCrossentropy { .. } => Loss::SparseCategoricalCrossentropy {
                from_logits: get_bool(config, "from_logits", false)?,
            },
            Loss::BinaryFocalCrossentropy { .. } => Loss::BinaryFocalCrossentropy {
                apply_class_balancing: get_bool(config, "apply_class_balancing", false)?,
                alpha: get_f64(config, "alpha", 0.25)?,
                gamma: get_f64(config, "gamma", 2.0)?,
                from_logits: get_bool(config, "from_logits", false)?,
                label_smoothing: get_f64(config, "label_smoothing", 0.0)?,
            },
            Loss::CategoricalFocalCrossentropy { .. } => {
                if let Some(a @ Value::Array(_)) = config.get("alpha") {
                    return Err(ConfigError::unsupported(
                        "loss option",
                        format!("{class}.alpha = {a}; grucell takes one α for all classes"),
                    ));
                }
                Loss::CategoricalFocalCrossentropy {
                    alpha: get_f64(config, "alpha", 0.25)?,
                    gamma: get_f64(config, "gamma", 2.0)?,
                    from_logits: get_bool(config, "from_logits", false)?,
                    label_smoothing: get_f64(config, "label_smoothing", 0.0)?,
                }
            }
            Loss::CategoricalGeneralizedCrossEntropy { .. } => {
                Loss::CategoricalGeneralizedCrossEntropy {
                    q: get_f64(config, "q", 0.5)?,
                }
            }
            other => other,
        };
        loss.validate()?;
        Ok(loss)
    }

    /// Serializes as Keras 3.15.1 does (`keras.saving.serialize_keras_object(loss)`), e.g.
    /// `{"module": "keras.losses", "class_name": "BinaryCrossentropy", "config": {"name":
    /// "binary_crossentropy", "reduction": "sum_over_batch_size", "from_logits": true,
    /// "label_smoothing": 0.0, "axis": -1}, "registered_name": null}`. A Huber `delta` other than
    /// 1 is written too (Keras omits it, but reads it).
    pub fn to_keras(&self) -> Value {
        // Keras keeps the alias as the string it was compiled with.
        if *self == Loss::Crossentropy {
            return json!("crossentropy");
        }
        let mut config = Map::new();
        config.insert("name".into(), json!(self.keras_name()));
        config.insert("reduction".into(), json!("sum_over_batch_size"));
        // The crossentropies' common arguments, then each loss' own.
        let common = match *self {
            Loss::BinaryCrossentropy {
                from_logits,
                label_smoothing,
            }
            | Loss::CategoricalCrossentropy {
                from_logits,
                label_smoothing,
            }
            | Loss::BinaryFocalCrossentropy {
                from_logits,
                label_smoothing,
                ..
            }
            | Loss::CategoricalFocalCrossentropy {
                from_logits,
                label_smoothing,
                ..
            } => Some((from_logits, label_smoothing)),
            _ => None,
        };
        if let Some((from_logits, label_smoothing)) = common {
            config.insert("from_logits".into(), json!(from_logits));
            config.insert("label_smoothing".into(), json!(label_smoothing));
            config.insert("axis".into(), json!(-1));
        }
        match *self {
            Loss::Huber { delta } if delta != 1.0 => {
                config.insert("delta".into(), json!(delta));
            }
            Loss::SparseCategoricalCrossentropy { from_logits } => {
                config.insert("from_logits".into(), json!(from_logits));
                config.insert("ignore_class".into(), Value::Null);
            }
            Loss::BinaryFocalCrossentropy {
                apply_class_balancing,
                alpha,
                gamma,
                ..
            } => {
                config.insert("apply_class_balancing".into(), json!(apply_class_balancing));
                config.insert("alpha".into(), json!(alpha));
                config.insert("gamma".into(), json!(gamma));
            }
            Loss::CategoricalFocalCrossentropy { alpha, gamma, .. } => {
                config.insert("alpha".into(), json!(alpha));
                config.insert("gamma".into(), json!(gamma));
            }
            Loss::CategoricalGeneralizedCrossEntropy { q } => {
                config.insert("q".into(), json!(q));
            }
            // The others have no arguments of their own.
            _ => {}
        }
        json!({
            "module": "keras.losses",
            "class_name": self.keras_class_name(),
            "config": Value::Object(config),
            "registered_name": Value::Null,
        })
    }

    /// Keras' class name (`"MeanSquaredError"`, `"Huber"`, `"BinaryCrossentropy"`, …).
    pub fn keras_class_name(&self) -> &'static str {
        match self {
            Loss::MeanSquaredError => "MeanSquaredError",
            Loss::MeanAbsoluteError => "MeanAbsoluteError",
            Loss::Huber { .. } => "Huber",
            Loss::LogCosh => "LogCosh",
            Loss::BinaryCrossentropy { .. } => "BinaryCrossentropy",
            Loss::CategoricalCrossentropy { .. } => "CategoricalCrossentropy",
            Loss::SparseCategoricalCrossentropy { .. } => "SparseCategoricalCrossentropy",
            Loss::MeanAbsolutePercentageError => "MeanAbsolutePercentageError",
            Loss::MeanSquaredLogarithmicError => "MeanSquaredLogarithmicError",
            Loss::Poisson => "Poisson",
            Loss::Hinge => "Hinge",
            Loss::SquaredHinge => "SquaredHinge",
            Loss::CategoricalHinge => "CategoricalHinge",
            Loss::KlDivergence => "KLDivergence",
            Loss::CosineSimilarity => "CosineSimilarity",
            Loss::BinaryFocalCrossentropy { .. } => "BinaryFocalCrossentropy",
            Loss::CategoricalFocalCrossentropy { .. } => "CategoricalFocalCrossentropy",
            Loss::CategoricalGeneralizedCrossEntropy { .. } => "CategoricalGeneralizedCrossEntropy",
            // An alias without a class of its own.
            Loss::Crossentropy => "crossentropy",
        }
    }

    /// The default `name` Keras gives the loss object (`"mean_squared_error"`, `"huber_loss"`, …),
    /// also the key of its value in Keras' training logs.
    pub fn keras_name(&self) -> &'static str {
        match self {
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::MeanAbsoluteError => "mean_absolute_error",
            Loss::Huber { .. } => "huber_loss",
            Loss::LogCosh => "log_cosh",
            Loss::BinaryCrossentropy { .. } => "binary_crossentropy",
            Loss::CategoricalCrossentropy { .. } => "categorical_crossentropy",
            Loss::SparseCategoricalCrossentropy { .. } => "sparse_categorical_crossentropy",
            Loss::MeanAbsolutePercentageError => "mean_absolute_percentage_error",
            Loss::MeanSquaredLogarithmicError => "mean_squared_logarithmic_error",
            Loss::Poisson => "poisson",
            Loss::Hinge => "hinge",
            Loss::SquaredHinge => "squared_hinge",
            Loss::CategoricalHinge => "categorical_hinge",
            Loss::KlDivergence => "kl_divergence",
            Loss::CosineSimilarity => "cosine_similarity",
            Loss::BinaryFocalCrossentropy { .. } => "binary_focal_crossentropy",
            Loss::CategoricalFocalCrossentropy { .. } => "categorical_focal_crossentropy",
            Loss::CategoricalGeneralizedCrossEntropy { .. } => {
                "categorical_generalized_cross_entropy"
            }
            Loss::Crossentropy => "crossentropy",
        }
    }

    /// This loss for targets of shape `y_true` and outputs of shape `y_pred`:
    /// [`Loss::Crossentropy`] becomes binary crossentropy for one output per row, sparse
    /// categorical crossentropy for class indices (targets of lower rank, or a last axis of 1
    /// against several classes), categorical crossentropy otherwise (Keras'
    /// `is_binary_or_sparse_categorical`); other losses are unchanged.
    ///
    /// ```
    /// use grucell::train::loss::Loss;
    /// let ce = Loss::from_name("ce")?;
    /// assert_eq!(ce.resolved(&[8], &[8, 3]), Loss::SparseCategoricalCrossentropy { from_logits: false });
    /// assert_eq!(ce.resolved(&[8, 1], &[8, 1]), Loss::from_name("binary_crossentropy")?);
    /// assert_eq!(ce.resolved(&[8, 3], &[8, 3]), Loss::from_name("categorical_crossentropy")?);
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn resolved(&self, y_true: &[usize], y_pred: &[usize]) -> Loss {
        if *self != Loss::Crossentropy {
            return *self;
        }
        let (t_last, p_last) = (y_true.last().copied(), y_pred.last().copied());
        if p_last == Some(1) {
            Loss::BinaryCrossentropy {
                from_logits: false,
                label_smoothing: 0.0,
            }
        } else if y_true.len() < y_pred.len()
            || (t_last == Some(1) && p_last.is_some_and(|p| p > 1))
        {
            Loss::SparseCategoricalCrossentropy { from_logits: false }
        } else {
            Loss::CategoricalCrossentropy {
                from_logits: false,
                label_smoothing: 0.0,
            }
        }
    }

    /// [`Loss::resolved`] from the lengths of flat targets for outputs of shape `shape`: class
    /// indices when there is one target per row.
    fn resolved_by_len(&self, true_len: usize, shape: &[usize]) -> Loss {
        let c = shape.last().copied().unwrap_or(1);
        let rows = shape[..shape.len().saturating_sub(1)]
            .iter()
            .product::<usize>();
        if c > 1 && true_len == rows {
            self.resolved(&shape[..shape.len() - 1], shape)
        } else {
            self.resolved(shape, shape)
        }
    }

    /// Whether `y_true` holds one integer class index per row (shape `shape[..-1]`) rather than
    /// an array shaped like `y_pred`.
    pub fn sparse_labels(&self) -> bool {
        matches!(
            self,
            Loss::SparseCategoricalCrossentropy { .. }
                | Loss::CategoricalGeneralizedCrossEntropy { .. }
        )
    }

    /// Whether sparse labels may also come with a trailing axis of 1 (`shape[..-1] + [1]`), which
    /// Keras squeezes. Not for [`Loss::CategoricalGeneralizedCrossEntropy`], whose one-hot Keras
    /// broadcasts against every sample instead (grucell refuses that shape).
    pub fn squeezes_label_axis(&self) -> bool {
        matches!(self, Loss::SparseCategoricalCrossentropy { .. })
    }

    /// The same crossentropy reading logits (`from_logits = true`); other losses unchanged.
    ///
    /// See [`Loss::on_activation_output`] for when Keras does this.
    pub fn with_logits(&self) -> Loss {
        match *self {
            Loss::BinaryFocalCrossentropy {
                apply_class_balancing,
                alpha,
                gamma,
                label_smoothing,
                ..
            } => Loss::BinaryFocalCrossentropy {
                apply_class_balancing,
                alpha,
                gamma,
                from_logits: true,
                label_smoothing,
            },
            Loss::BinaryCrossentropy {
                label_smoothing, ..
            } => Loss::BinaryCrossentropy {
                from_logits: true,
                label_smoothing,
            },
            Loss::CategoricalCrossentropy {
                label_smoothing, ..
            } => Loss::CategoricalCrossentropy {
                from_logits: true,
                label_smoothing,
            },
            Loss::SparseCategoricalCrossentropy { .. } => {
                Loss::SparseCategoricalCrossentropy { from_logits: true }
            }
            other => other,
        }
    }

    /// The loss Keras 3 on TensorFlow applies to the *input* `z` of a `sigmoid` or `softmax`
    /// activation when `y_pred` is that activation's output (`Some`), or `None` when it uses
    /// `y_pred` itself.
    ///
    /// Keras' activations attach their input to their output (`_keras_logits`), and the
    /// backend's crossentropy ops then read `z` as logits, with or without `from_logits`, and
    /// even when a categorical crossentropy follows a sigmoid or a binary one a softmax. So
    /// `Dense(activation = "softmax")` + `categorical_crossentropy` trains through the
    /// `from_logits = true` formula (no clipping), and `from_logits = true` after a sigmoid still
    /// reads the sigmoid's input. Binary focal crossentropy on probabilities calls that op too
    /// (its focal factor uses `y_pred`, which after a sigmoid is `σ(z)`); after a softmax that
    /// mix is not implemented ([`ConfigError::Unsupported`]). The caller passes `z` and carries
    /// the gradient back from there.
    ///
    /// ```
    /// use grucell::layers::activation::Activation;
    /// use grucell::train::loss::Loss;
    ///
    /// let bce = Loss::from_name("binary_crossentropy")?;
    /// assert_eq!(bce.on_activation_output(Activation::Sigmoid)?, Some(bce.with_logits()));
    /// assert_eq!(bce.on_activation_output(Activation::Tanh)?, None);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn on_activation_output(
        &self,
        activation: Activation,
    ) -> Result<Option<Loss>, ConfigError> {
        if !matches!(activation, Activation::Sigmoid | Activation::Softmax) {
            return Ok(None);
        }
        Ok(match *self {
            Loss::BinaryCrossentropy { .. }
            | Loss::CategoricalCrossentropy { .. }
            | Loss::SparseCategoricalCrossentropy { .. } => Some(self.with_logits()),
            Loss::BinaryFocalCrossentropy {
                from_logits: false, ..
            } => {
                if activation == Activation::Softmax {
                    return Err(ConfigError::unsupported(
                        "loss",
                        "binary_focal_crossentropy on a softmax output (Keras reads the softmax's \
                         input as sigmoid logits for the crossentropy and the softmax output for \
                         the focal factor)",
                    ));
                }
                Some(self.with_logits())
            }
            _ => None,
        })
    }

    /// Checks the arguments: `delta` finite and ≥ 0, `label_smoothing` in `[0, 1]`, focal `α`
    /// and `γ` finite, `q` in `(0, 1)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Loss::BinaryFocalCrossentropy { alpha, gamma, .. }
            | Loss::CategoricalFocalCrossentropy { alpha, gamma, .. }
                if !(alpha.is_finite() && gamma.is_finite()) =>
            {
                Err(ConfigError::invalid(
                    "alpha, gamma",
                    format!("{alpha}, {gamma}"),
                    "finite numbers",
                ))
            }
            Loss::CategoricalGeneralizedCrossEntropy { q } if !(q > 0.0 && q < 1.0) => Err(
                ConfigError::invalid("q", q, "a number in (0, 1), as Keras requires"),
            ),
            Loss::Huber { delta } if !(delta.is_finite() && delta >= 0.0) => {
                Err(ConfigError::invalid("delta", delta, "a finite number ≥ 0"))
            }
            Loss::BinaryCrossentropy {
                label_smoothing, ..
            }
            | Loss::CategoricalCrossentropy {
                label_smoothing, ..
            }
            | Loss::BinaryFocalCrossentropy {
                label_smoothing, ..
            }
            | Loss::CategoricalFocalCrossentropy {
                label_smoothing, ..
            } if !(0.0..=1.0).contains(&label_smoothing) => Err(ConfigError::invalid(
                "label_smoothing",
                label_smoothing,
                "a number in [0, 1]",
            )),
            _ => Ok(()),
        }
    }

    /// The reduced loss and `∂loss/∂y_pred`, written into `grad` (overwritten, same length as
    /// `y_pred`), exactly as `tf.GradientTape` gives them for the Keras loss.
    ///
    /// `shape` is the shape of `y_pred`, its last axis the features/classes (`C`); the rows are
    /// the product `R` of the other axes. `y_true` has the shape of `y_pred`, except for
    /// [`Loss::SparseCategoricalCrossentropy`] where it holds one class index (an integer-valued
    /// float in `[0, C)`) per row. `sample_weight`, if given, holds one weight per row (shape
    /// `shape[..-1]`; per-sample weights of sequence outputs must be repeated over time by the
    /// caller, as Keras 3 itself does not broadcast them). A Keras output mask `m` is applied as
    /// the weight `m · R / Σm`.
    pub fn value_and_grad<T: Float>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        shape: &[usize],
        sample_weight: Option<&[T]>,
        grad: &mut [T],
    ) -> Result<T, ShapeError> {
        if grad.len() != y_pred.len() {
            return Err(ShapeError::ElementCount {
                arg: "grad".into(),
                shape: shape.to_vec(),
                needed: y_pred.len(),
                got: grad.len(),
            });
        }
        self.compute(y_true, y_pred, shape, sample_weight, Some(grad))
    }

    /// The reduced loss only; see [`Loss::value_and_grad`] for the arguments.
    pub fn value<T: Float>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        shape: &[usize],
        sample_weight: Option<&[T]>,
    ) -> Result<T, ShapeError> {
        self.compute(y_true, y_pred, shape, sample_weight, None)
    }

    /// The unreduced loss: one value `L_r` per row, what Keras' loss function returns before
    /// its reduction (and what a metric wrapping it averages). Arguments as
    /// [`Loss::value_and_grad`], without weights.
    pub(crate) fn row_values<T: Float>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        shape: &[usize],
    ) -> Result<Vec<T>, ShapeError> {
        if *self == Loss::Crossentropy {
            return self
                .resolved_by_len(y_true.len(), shape)
                .row_values(y_true, y_pred, shape);
        }
        let (rows, c, y_true) = self.prepared(y_true, y_pred, shape, None)?;
        let true_width = if self.sparse_labels() { 1 } else { c };
        Ok(y_true
            .chunks(true_width.max(1))
            .zip(y_pred.chunks(c.max(1)))
            .take(rows)
            .map(|(t, p)| self.row(t, p, T::zero(), None))
            .collect())
    }

    /// Checks the shapes (and sparse labels), and gives the rows, the classes and the labels
    /// the loss reads: Keras' `convert_binary_labels_to_hinge` turns a batch of 0/1 labels into
    /// `2t − 1` for the hinge losses.
    fn prepared<'a, T: Float>(
        &self,
        y_true: &'a [T],
        y_pred: &[T],
        shape: &[usize],
        sample_weight: Option<&[T]>,
    ) -> Result<(usize, usize, Cow<'a, [T]>), ShapeError> {
        let (rows, c) = check_shapes(self.sparse_labels(), y_true, y_pred, shape, sample_weight)?;
        if self.sparse_labels() && rows > 0 {
            check_labels(y_true, c)?;
        }
        let y_true = match self {
            Loss::Hinge | Loss::SquaredHinge
                if y_true.iter().all(|&t| t == T::zero() || t == T::one()) =>
            {
                Cow::Owned(y_true.iter().map(|&t| T::of(2.0) * t - T::one()).collect())
            }
            _ => Cow::Borrowed(y_true),
        };
        Ok((rows, c, y_true))
    }

    fn compute<T: Float>(
        &self,
        y_true: &[T],
        y_pred: &[T],
        shape: &[usize],
        sample_weight: Option<&[T]>,
        mut grad: Option<&mut [T]>,
    ) -> Result<T, ShapeError> {
        if *self == Loss::Crossentropy {
            return self.resolved_by_len(y_true.len(), shape).compute(
                y_true,
                y_pred,
                shape,
                sample_weight,
                grad,
            );
        }
        let (rows, c, y_true) = self.prepared(y_true, y_pred, shape, sample_weight)?;
        if rows == 0 {
            return Ok(T::zero());
        }
        let inv_rows = T::one() / T::of(rows as f64);
        let true_width = if self.sparse_labels() { 1 } else { c };
        let mut total = 0.0f64;
        for r in 0..rows {
            let (t, p) = match (
                y_true.get(r * true_width..(r + 1) * true_width),
                y_pred.get(r * c..(r + 1) * c),
            ) {
                (Some(t), Some(p)) => (t, p),
                _ => break, // unreachable: lengths checked above
            };
            let w = sample_weight.and_then(|s| s.get(r).copied());
            // d loss / d L_r: the DivNoNan gradient 1/R, times the weight.
            let g = match w {
                Some(w) => inv_rows * w,
                None => inv_rows,
            };
            let grow = grad
                .as_deref_mut()
                .and_then(|gr| gr.get_mut(r * c..(r + 1) * c));
            let l = self.row(t, p, g, grow);
            total += match w {
                Some(w) => (l * w).f64(),
                None => l.f64(),
            };
        }
        Ok(T::of(total) / T::of(rows as f64))
    }

    /// The per-row loss `L_r`; writes `g · ∂L_r/∂p` into `grad` when given.
    fn row<T: Float>(&self, t: &[T], p: &[T], g: T, mut grad: Option<&mut [T]>) -> T {
        match *self {
            Loss::MeanSquaredError => mean_row(t, p, g, grad, |t, p, ge| {
                let x = t - p;
                (x * x, -(ge * (x * T::of(2.0))))
            }),
            Loss::MeanAbsoluteError => mean_row(t, p, g, grad, |t, p, ge| {
                let x = t - p;
                (x.abs(), -(ge * sign(x)))
            }),
            Loss::Huber { delta } => {
                let d = T::of(delta);
                let half = T::of(0.5);
                let lin = half * (d * d);
                mean_row(t, p, g, grad, |t, p, ge| {
                    let x = p - t;
                    let a = x.abs();
                    if a <= d {
                        (half * (x * x), (half * ge) * (x * T::of(2.0)))
                    } else {
                        (d * a - lin, (d * ge) * sign(x))
                    }
                })
            }
            Loss::MeanAbsolutePercentageError => {
                let eps = T::of(EPSILON);
                let hundred = T::of(100.0);
                // The mean is multiplied by 100, so its gradient is (g·100)/C.
                hundred
                    * mean_row(t, p, g * hundred, grad, |t, p, ge| {
                        let d = t.abs().max(eps);
                        let x = (t - p) / d;
                        (x.abs(), -((ge * sign(x)) / d))
                    })
            }
            Loss::MeanSquaredLogarithmicError => {
                // `ops.convert_to_tensor(backend.epsilon())` is float32, widened for f64.
                let eps = T::of(f64::from(EPSILON as f32));
                mean_row(t, p, g, grad, |t, p, ge| {
                    let u = p.max(eps) + T::one();
                    let x = u.ln() - (t.max(eps) + T::one()).ln();
                    let dp = if p >= eps {
                        (ge * (T::of(2.0) * x)) * (T::one() / u)
                    } else {
                        T::zero()
                    };
                    (x * x, dp)
                })
            }
            Loss::Poisson => {
                let eps = T::of(EPSILON);
                mean_row(t, p, g, grad, |t, p, ge| {
                    let q = p + eps;
                    (p - t * q.ln(), ge + ((-ge) * t) * (T::one() / q))
                })
            }
            Loss::Hinge => mean_row(t, p, g, grad, |t, p, ge| {
                let m = T::one() - t * p;
                let v = m.max(T::zero());
                (v, if m >= T::zero() { (-ge) * t } else { T::zero() })
            }),
            Loss::SquaredHinge => mean_row(t, p, g, grad, |t, p, ge| {
                let m = T::one() - t * p;
                let v = m.max(T::zero());
                let dv = ge * (T::of(2.0) * v);
                (v * v, if m >= T::zero() { (-dv) * t } else { T::zero() })
            }),
            Loss::CategoricalHinge => {
                let mut pos = T::zero();
                let mut neg = T::neg_infinity();
                for (&t, &p) in t.iter().zip(p) {
                    pos += t * p;
                    neg = neg.max((T::one() - t) * p);
                }
                let m = (neg - pos) + T::one();
                if let Some(gr) = grad {
                    let passes = m >= T::zero();
                    let ties = t
                        .iter()
                        .zip(p)
                        .filter(|&(&t, &p)| (T::one() - t) * p == neg)
                        .count();
                    let share = T::one() / T::of(ties.max(1) as f64);
                    for ((d, &t), &p) in gr.iter_mut().zip(t).zip(p) {
                        *d = if passes {
                            let top = if (T::one() - t) * p == neg {
                                share * g
                            } else {
                                T::zero()
                            };
                            top * (T::one() - t) + (-g) * t
                        } else {
                            T::zero()
                        };
                    }
                }
                m.max(T::zero())
            }
            Loss::KlDivergence => {
                let lo = T::of(EPSILON);
                let mut sum = T::zero();
                let mut gr = grad;
                for (i, (&t, &p)) in t.iter().zip(p).enumerate() {
                    let tc = t.min(T::one()).max(lo);
                    let pc = p.min(T::one()).max(lo);
                    let u = tc / pc;
                    sum += tc * u.ln();
                    if let Some(d) = gr.as_deref_mut().and_then(|gr| gr.get_mut(i)) {
                        *d = if clip_passes(p, lo, T::one()) {
                            ((g * tc) * (T::one() / u)) * ((-tc / pc) / pc)
                        } else {
                            T::zero()
                        };
                    }
                }
                sum
            }
            Loss::LogCosh => {
                let log2 = T::of(f64::from(std::f32::consts::LN_2));
                mean_row(t, p, g, grad, |t, p, ge| {
                    let x = p - t;
                    let z = x * T::of(-2.0);
                    let v = (x + tf_softplus(z)) - log2;
                    (v, ge + (ge / ((-z).exp() + T::one())) * T::of(-2.0))
                })
            }
            Loss::BinaryCrossentropy {
                from_logits,
                label_smoothing,
            } => mean_row(t, p, g, grad, |t, x, ge| {
                let t = smooth_binary(t, label_smoothing);
                if from_logits {
                    sigmoid_xent(t, x, ge)
                } else {
                    bce_prob(t, x, ge)
                }
            }),
            Loss::BinaryFocalCrossentropy {
                apply_class_balancing,
                alpha,
                gamma,
                from_logits,
                label_smoothing,
            } => {
                let (gm, a1, a0) = (T::of(gamma), T::of(alpha), T::of(1.0 - alpha));
                let gm1 = gm - T::one();
                mean_row(t, p, g, grad, |t, x, ge| {
                    let t = smooth_binary(t, label_smoothing);
                    let y = if from_logits {
                        Activation::Sigmoid.apply(x)
                    } else {
                        x
                    };
                    let one_t = T::one() - t;
                    let pt = t * y + one_t * (T::one() - y);
                    let m = T::one() - pt;
                    let ff = m.powf(gm);
                    let w = apply_class_balancing.then(|| t * a1 + one_t * a0);
                    // d(focal · bce): `ge·w` (or `ge`) split over the two factors.
                    let u = w.map_or(ge, |w| ge * w);
                    let (bce, dbce) = if from_logits {
                        sigmoid_xent(t, x, u * ff)
                    } else {
                        bce_prob(t, x, u * ff)
                    };
                    let v = w.map_or(ff * bce, |w| w * (ff * bce));
                    // Pow's gradient `d · γ · m^(γ−1)`, then p_t's two products.
                    let dpt = -(((u * bce) * gm) * m.powf(gm1));
                    let dy = dpt * t + -(dpt * one_t);
                    let dx = if from_logits {
                        dbce + dy * (y * (T::one() - y))
                    } else {
                        dbce + dy
                    };
                    (v, dx)
                })
            }
            Loss::CategoricalFocalCrossentropy {
                alpha,
                gamma,
                from_logits,
                label_smoothing,
            } => {
                let smooth = |t: T| smooth_categorical(t, label_smoothing, p.len());
                if from_logits {
                    let mut y = p.to_vec();
                    Activation::Softmax.apply_row(&mut y);
                    let v = focal_probs(t, &y, g, grad.as_deref_mut(), smooth, alpha, gamma);
                    if let Some(gr) = grad {
                        // SoftmaxGrad: (dy − Σ dy·y) · y
                        let mut dot = T::zero();
                        for (&d, &s) in gr.iter().zip(&y) {
                            dot += d * s;
                        }
                        for (d, &s) in gr.iter_mut().zip(&y) {
                            *d = (*d - dot) * s;
                        }
                    }
                    v
                } else {
                    focal_probs(t, p, g, grad, smooth, alpha, gamma)
                }
            }
            Loss::CosineSimilarity => {
                // Keras' `normalize`: v · minimum(rsqrt(Σ v²), 1/ε).
                let (it, ip) = (
                    L2Scale::of(t.iter().copied(), EPSILON).inv,
                    L2Scale::of(p.iter().copied(), EPSILON),
                );
                let mut dot = T::zero();
                for (&a, &b) in t.iter().zip(p) {
                    dot += (a * it) * (b * ip.inv);
                }
                if let Some(gr) = grad {
                    // d p̂_i = −g·t̂_i; p̂ = p·inv gives d p_i = d p̂_i·inv and d inv = Σ d p̂_i·p_i.
                    let mut dinv = T::zero();
                    for ((d, &a), &b) in gr.iter_mut().zip(t).zip(p) {
                        let dph = (-g) * (a * it);
                        *d = dph * ip.inv;
                        dinv += dph * b;
                    }
                    if let Some(c) = ip.square_sum_grad(dinv) {
                        for (d, &b) in gr.iter_mut().zip(p) {
                            *d += c * (b * T::of(2.0));
                        }
                    }
                }
                -dot
            }
            // Resolved before any row is computed (`compute`, `row_values`); a row as wide as
            // its labels is categorical.
            Loss::Crossentropy => Loss::CategoricalCrossentropy {
                from_logits: false,
                label_smoothing: 0.0,
            }
            .row(t, p, g, grad),
            Loss::CategoricalGeneralizedCrossEntropy { q } => {
                let onehot = onehot_of::<T>(t);
                // p = Σ y_pred · onehot, as Keras forms it.
                let pl = p
                    .iter()
                    .enumerate()
                    .fold(T::zero(), |a, (i, &x)| a + x * onehot(i));
                let qt = T::of(q);
                if let Some(gr) = grad {
                    let dp = ((-(g / qt)) * qt) * pl.powf(qt - T::one());
                    for (i, d) in gr.iter_mut().enumerate() {
                        *d = dp * onehot(i);
                    }
                }
                (T::one() - pl.powf(qt)) / qt
            }
            Loss::CategoricalCrossentropy {
                from_logits,
                label_smoothing,
            } => {
                let smooth = |t: T| smooth_categorical(t, label_smoothing, p.len());
                if from_logits {
                    softmax_xent(p, g, grad, |i| {
                        t.get(i).copied().map(smooth).unwrap_or_else(T::zero)
                    })
                } else {
                    cce_probs(t, p, g, grad, smooth)
                }
            }
            Loss::SparseCategoricalCrossentropy { from_logits } => {
                let onehot = onehot_of::<T>(t);
                if from_logits {
                    softmax_xent(p, g, grad, onehot)
                } else {
                    let (lo, hi) = clip_bounds::<T>();
                    let logits: Vec<T> = p.iter().map(|&x| x.min(hi).max(lo).ln()).collect();
                    match grad {
                        None => softmax_xent(&logits, g, None, onehot),
                        Some(gr) => {
                            let v = softmax_xent(&logits, g, Some(&mut *gr), onehot);
                            for (d, &x) in gr.iter_mut().zip(p) {
                                *d = if clip_passes(x, lo, hi) {
                                    *d * (T::one() / x.min(hi).max(lo))
                                } else {
                                    T::zero()
                                };
                            }
                            v
                        }
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keras_name())
    }
}

/// `(ε, 1 − ε)` rounded to `T` as TensorFlow converts Keras' Python floats.
fn clip_bounds<T: Float>() -> (T, T) {
    (T::of(EPSILON), T::of(1.0 - EPSILON))
}

/// Whether `clip_by_value` (`maximum(minimum(x, hi), lo)`) passes a gradient to `x`:
/// `Minimum` sends it to `x` when `x ≤ hi`, `Maximum` when `min(x, hi) ≥ lo`.
fn clip_passes<T: Float>(x: T, lo: T, hi: T) -> bool {
    x <= hi && x.min(hi) >= lo
}

/// TensorFlow's `sign`: −1, 0 or 1 (NaN stays NaN).
fn sign<T: Float>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        x * T::zero()
    }
}

/// TensorFlow's `Softplus` kernel, thresholds included (`softplus_op.h`).
fn tf_softplus<T: Float>(z: T) -> T {
    let threshold = T::epsilon().ln() + T::of(2.0);
    if z > -threshold {
        z
    } else if z < threshold {
        z.exp()
    } else {
        z.exp().ln_1p()
    }
}

/// Binary label smoothing `t(1 − s) + s/2` (none for `s = 0`, as Keras skips it).
fn smooth_binary<T: Float>(t: T, s: f64) -> T {
    if s != 0.0 {
        t * T::of(1.0 - s) + T::of(0.5 * s)
    } else {
        t
    }
}

/// Categorical label smoothing over `classes` classes, `t(1 − s) + s/C` with `s/C` divided in
/// `T` (Keras divides by the class count as a tensor; none for `s = 0`, as Keras skips it).
fn smooth_categorical<T: Float>(t: T, s: f64, classes: usize) -> T {
    if s != 0.0 {
        t * T::of(1.0 - s) + T::of(s) / T::of(classes as f64)
    } else {
        t
    }
}

/// The one-hot row of a sparse label (the integer-valued `t[0]`, checked by the caller).
fn onehot_of<T: Float>(t: &[T]) -> impl Fn(usize) -> T {
    let label = t.first().map(|l| l.f64() as usize).unwrap_or(0);
    move |i| if i == label { T::one() } else { T::zero() }
}

/// TensorFlow's `sigmoid_cross_entropy_with_logits` on one element: `max(z, 0) − z·t +
/// log1p(e^{−|z|})` and its gradient for the upstream `ge`, as TensorFlow differentiates the
/// composite op.
fn sigmoid_xent<T: Float>(t: T, z: T, ge: T) -> (T, T) {
    let pos = z >= T::zero();
    let relu = if pos { z } else { T::zero() };
    let nal = if pos { -z } else { z };
    let e = nal.exp();
    let v = (relu - z * t) + e.ln_1p();
    // log1p and exp gradients, then the two `where` branches
    let s = (ge * (T::one() / (T::one() + e))) * e;
    let dz = (if pos { ge } else { T::zero() }) + (-ge) * t + if pos { -s } else { s };
    (v, dz)
}

/// Binary crossentropy of one probability (Keras' TensorFlow backend): `o = clip(p, ε, 1 − ε)`,
/// `−(t log o + (1 − t) log(1 − o))`, and its gradient for the upstream `ge` (none where the
/// clip cuts `p`).
fn bce_prob<T: Float>(t: T, p: T, ge: T) -> (T, T) {
    let (lo, hi) = clip_bounds::<T>();
    let o = p.min(hi).max(lo);
    let one_t = T::one() - t;
    let one_o = T::one() - o;
    let v = -(t * o.ln() + one_t * one_o.ln());
    let d = -ge;
    let dp = if clip_passes(p, lo, hi) {
        (t * d) * (T::one() / o) - (one_t * d) * (T::one() / one_o)
    } else {
        T::zero()
    };
    (v, dp)
}

/// Keras' categorical focal crossentropy on one row of probabilities `y`: `q = y / Σy`,
/// `o = clip(q, ε, 1 − ε)`, `Σ_i α(1 − o_i)^γ · (−t_i log o_i)`; writes `∂/∂y` for the upstream
/// `g` into `grad` (through the clip mask and the normalization, as [`cce_probs`]).
fn focal_probs<T: Float>(
    t: &[T],
    y: &[T],
    g: T,
    grad: Option<&mut [T]>,
    smooth: impl Fn(T) -> T,
    alpha: f64,
    gamma: f64,
) -> T {
    let (lo, hi) = clip_bounds::<T>();
    let (a, gm) = (T::of(alpha), T::of(gamma));
    let gm1 = gm - T::one();
    let s = y.iter().fold(T::zero(), |acc, &x| acc + x);
    let mut total = T::zero();
    for (&t, &x) in t.iter().zip(y) {
        let o = (x / s).min(hi).max(lo);
        let cce = (-smooth(t)) * o.ln();
        total += ((T::one() - o).powf(gm) * a) * cce;
    }
    if let Some(gr) = grad {
        let mut gy = T::zero();
        for ((&t, &x), dst) in t.iter().zip(y).zip(gr.iter_mut()) {
            let q = x / s;
            let o = q.min(hi).max(lo);
            let m = T::one() - o;
            let cce = (-smooth(t)) * o.ln();
            let wf = m.powf(gm) * a;
            // d(wf · cce): to the modulating factor (times α, Pow's γ·m^(γ−1), Sub's −1) and
            // to the log (times −t, Log's 1/o).
            let dm = (((g * cce) * a) * gm) * m.powf(gm1);
            let dq = if clip_passes(q, lo, hi) {
                -dm + ((g * wf) * (-smooth(t))) * (T::one() / o)
            } else {
                T::zero()
            };
            gy += dq * ((-x / s) / s);
            *dst = dq / s;
        }
        for dst in gr.iter_mut() {
            *dst += gy;
        }
    }
    total
}

/// A loss that is the mean over the row of an element-wise term: `f(t, p, ge)` returns the term
/// and its gradient scaled by `ge = g / C` (TensorFlow's `Mean` gradient).
fn mean_row<T: Float>(
    t: &[T],
    p: &[T],
    g: T,
    grad: Option<&mut [T]>,
    f: impl Fn(T, T, T) -> (T, T),
) -> T {
    let c = T::of(p.len() as f64);
    let ge = g / c;
    let mut sum = T::zero();
    match grad {
        Some(gr) => {
            for ((&t, &p), d) in t.iter().zip(p).zip(gr.iter_mut()) {
                let (v, dv) = f(t, p, ge);
                sum += v;
                *d = dv;
            }
        }
        None => {
            for (&t, &p) in t.iter().zip(p) {
                sum += f(t, p, ge).0;
            }
        }
    }
    sum / c
}

/// TensorFlow's fused (sparse) softmax crossentropy kernel on one row of logits `z`:
/// `L = Σ_i t_i (log Σ e^{z−max} − (z_i − max))`, gradient `g · (e^{z_i−max}/Σ − t_i)`.
fn softmax_xent<T: Float>(z: &[T], g: T, grad: Option<&mut [T]>, label: impl Fn(usize) -> T) -> T {
    let max = z.iter().copied().fold(T::neg_infinity(), T::max);
    let mut sum_exp = T::zero();
    for &x in z {
        sum_exp += (x - max).exp();
    }
    let lse = sum_exp.ln();
    let mut loss = T::zero();
    for (i, &x) in z.iter().enumerate() {
        let t = label(i);
        loss += t * (lse - (x - max));
    }
    if let Some(gr) = grad {
        for (i, (d, &x)) in gr.iter_mut().zip(z).enumerate() {
            *d = g * ((x - max).exp() / sum_exp - label(i));
        }
    }
    loss
}

/// Categorical crossentropy from probabilities (Keras' TF backend): renormalize, clip, `−Σ t log o`.
fn cce_probs<T: Float>(
    t: &[T],
    p: &[T],
    g: T,
    grad: Option<&mut [T]>,
    smooth: impl Fn(T) -> T,
) -> T {
    let (lo, hi) = clip_bounds::<T>();
    let mut s = T::zero();
    for &x in p {
        s += x;
    }
    let mut acc = T::zero();
    for (&t, &x) in t.iter().zip(p) {
        let o = (x / s).min(hi).max(lo);
        acc += smooth(t) * o.ln();
    }
    if let Some(gr) = grad {
        let d = -g;
        // d/dq_i (0 where the clip stops it), then RealDiv's gradients: dq/S to p_i and
        // Σ dq_i·((−p_i/S)/S) to S, which the reduce_sum broadcasts back to every p_j.
        let mut gy = T::zero();
        for ((&t, &x), dst) in t.iter().zip(p).zip(gr.iter_mut()) {
            let q = x / s;
            let dq = if clip_passes(q, lo, hi) {
                (smooth(t) * d) * (T::one() / q.min(hi).max(lo))
            } else {
                T::zero()
            };
            gy += dq * ((-x / s) / s);
            *dst = dq / s;
        }
        for dst in gr.iter_mut() {
            *dst += gy;
        }
    }
    -acc
}

/// Checks the array lengths against `shape`; returns `(rows, classes)`.
fn check_shapes<T: Float>(
    sparse: bool,
    y_true: &[T],
    y_pred: &[T],
    shape: &[usize],
    sample_weight: Option<&[T]>,
) -> Result<(usize, usize), ShapeError> {
    let (c, lead) = match shape.split_last() {
        Some((&c, lead)) => (c, lead),
        None => {
            return Err(ShapeError::mismatch(
                "shape",
                shape,
                "at least one axis (the last holds the features/classes)",
            ))
        }
    };
    let overflow =
        || ShapeError::mismatch("shape", shape, "a shape whose element count fits in usize");
    let rows = lead
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let n = rows.checked_mul(c).ok_or_else(overflow)?;
    if c == 0 && rows > 0 {
        return Err(ShapeError::mismatch(
            "shape",
            shape,
            "a last axis of length ≥ 1",
        ));
    }
    if y_pred.len() != n {
        return Err(ShapeError::ElementCount {
            arg: "y_pred".into(),
            shape: shape.to_vec(),
            needed: n,
            got: y_pred.len(),
        });
    }
    let true_n = if sparse { rows } else { n };
    if y_true.len() != true_n {
        return Err(ShapeError::ElementCount {
            arg: if sparse {
                "y_true (sparse labels, shape[..-1])"
            } else {
                "y_true"
            }
            .into(),
            shape: if sparse {
                lead.to_vec()
            } else {
                shape.to_vec()
            },
            needed: true_n,
            got: y_true.len(),
        });
    }
    if let Some(sw) = sample_weight {
        if sw.len() != rows {
            return Err(ShapeError::ElementCount {
                arg: "sample_weight (one weight per row, shape[..-1])".into(),
                shape: lead.to_vec(),
                needed: rows,
                got: sw.len(),
            });
        }
    }
    Ok((rows, c))
}

/// Sparse labels must be integer class indices in `[0, C)` (TensorFlow rejects others on CPU).
fn check_labels<T: Float>(y_true: &[T], c: usize) -> Result<(), ShapeError> {
    for (i, &l) in y_true.iter().enumerate() {
        let v = l.f64();
        if !(v.is_finite() && v.fract() == 0.0 && v >= 0.0 && v < c as f64) {
            return Err(ShapeError::mismatch(
                format!("y_true[{i}] (sparse label = {v})"),
                &[y_true.len()],
                format!("integer class indices in [0, {c})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num_grad(
        loss: &Loss,
        t: &[f64],
        p: &[f64],
        shape: &[usize],
        sw: Option<&[f64]>,
    ) -> Vec<f64> {
        (0..p.len())
            .map(|i| {
                let h = 1e-6;
                let mut a = p.to_vec();
                let mut b = p.to_vec();
                a[i] += h;
                b[i] -= h;
                (loss.value(t, &a, shape, sw).unwrap() - loss.value(t, &b, shape, sw).unwrap())
                    / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn gradients_match_central_differences() {
        let shape = [2, 3, 4];
        let t_reg: Vec<f64> = (0..24).map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0).collect();
        let p_reg: Vec<f64> = (0..24).map(|i| ((i * 5) % 13) as f64 / 4.0 - 1.5).collect();
        let t_bin: Vec<f64> = (0..24).map(|i| (i % 3 == 0) as u8 as f64).collect();
        let p_prob: Vec<f64> = (0..24)
            .map(|i| 0.05 + 0.9 * ((i * 5) % 13) as f64 / 13.0)
            .collect();
        let t_oh: Vec<f64> = (0..24)
            .map(|i| ((i % 4) == (i / 4) % 4) as u8 as f64)
            .collect();
        let t_sp: Vec<f64> = (0..6).map(|r| (r % 4) as f64).collect();
        let sw: Vec<f64> = (0..6).map(|r| 0.5 + r as f64 * 0.25).collect();
        let cases: Vec<(Loss, &[f64], &[f64])> = vec![
            (Loss::MeanSquaredError, &t_reg, &p_reg),
            (Loss::MeanAbsoluteError, &t_reg, &p_reg),
            (Loss::Huber { delta: 0.7 }, &t_reg, &p_reg),
            (Loss::LogCosh, &t_reg, &p_reg),
            (
                Loss::BinaryCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.1,
                },
                &t_bin,
                &p_prob,
            ),
            (
                Loss::BinaryCrossentropy {
                    from_logits: true,
                    label_smoothing: 0.0,
                },
                &t_bin,
                &p_reg,
            ),
            (
                Loss::CategoricalCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.2,
                },
                &t_oh,
                &p_prob,
            ),
            (
                Loss::CategoricalCrossentropy {
                    from_logits: true,
                    label_smoothing: 0.0,
                },
                &t_oh,
                &p_reg,
            ),
            (
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                &t_sp,
                &p_prob,
            ),
            (
                Loss::SparseCategoricalCrossentropy { from_logits: true },
                &t_sp,
                &p_reg,
            ),
            (Loss::CosineSimilarity, &t_reg, &p_reg),
            (
                Loss::BinaryFocalCrossentropy {
                    apply_class_balancing: true,
                    alpha: 0.3,
                    gamma: 2.0,
                    from_logits: false,
                    label_smoothing: 0.1,
                },
                &t_bin,
                &p_prob,
            ),
            (
                Loss::BinaryFocalCrossentropy {
                    apply_class_balancing: false,
                    alpha: 0.25,
                    gamma: 1.5,
                    from_logits: true,
                    label_smoothing: 0.0,
                },
                &t_bin,
                &p_reg,
            ),
            (
                Loss::CategoricalFocalCrossentropy {
                    alpha: 0.4,
                    gamma: 2.5,
                    from_logits: false,
                    label_smoothing: 0.2,
                },
                &t_oh,
                &p_prob,
            ),
            (
                Loss::CategoricalFocalCrossentropy {
                    alpha: 0.25,
                    gamma: 2.0,
                    from_logits: true,
                    label_smoothing: 0.0,
                },
                &t_oh,
                &p_reg,
            ),
            (
                Loss::CategoricalGeneralizedCrossEntropy { q: 0.7 },
                &t_sp,
                &p_prob,
            ),
        ];
        for (loss, t, p) in cases {
            for w in [None, Some(sw.as_slice())] {
                let mut g = vec![0.0; 24];
                loss.value_and_grad(t, p, &shape, w, &mut g).unwrap();
                let n = num_grad(&loss, t, p, &shape, w);
                for (a, b) in g.iter().zip(&n) {
                    assert!(
                        (a - b).abs() < 1e-6,
                        "{loss:?}: analytic {a} vs numeric {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn shape_errors_name_the_argument() {
        let l = Loss::MeanSquaredError;
        let mut g = [0.0f32; 4];
        let e = l
            .value_and_grad(&[0.0; 4], &[0.0; 3], &[2, 2], None, &mut g[..3])
            .unwrap_err();
        assert!(e.to_string().contains("y_pred"), "{e}");
        let e = l.value(&[0.0f32; 3], &[0.0; 4], &[2, 2], None).unwrap_err();
        assert!(e.to_string().contains("y_true"), "{e}");
        let e = l
            .value(&[0.0f32; 4], &[0.0; 4], &[2, 2], Some(&[1.0; 4]))
            .unwrap_err();
        assert!(e.to_string().contains("sample_weight"), "{e}");
        let e = l.value::<f32>(&[], &[], &[], None).unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
        let s = Loss::SparseCategoricalCrossentropy { from_logits: true };
        let e = s
            .value(&[0.0f32, 3.0], &[0.0; 6], &[2, 3], None)
            .unwrap_err();
        assert!(e.to_string().contains("y_true[1]"), "{e}");
        let e = s
            .value(&[0.5f32, 1.0], &[0.0; 6], &[2, 3], None)
            .unwrap_err();
        assert!(e.to_string().contains("[0, 3)"), "{e}");
        assert_eq!(l.value::<f32>(&[], &[], &[0, 3], None).unwrap(), 0.0);
    }

    #[test]
    fn names_and_keras_round_trip() {
        for n in ["mse", "MSE", "mean_squared_error", "MeanSquaredError"] {
            assert_eq!(Loss::from_name(n).unwrap(), Loss::MeanSquaredError);
        }
        assert_eq!(
            Loss::from_name("BCE").unwrap(),
            Loss::BinaryCrossentropy {
                from_logits: false,
                label_smoothing: 0.0
            }
        );
        assert_eq!(
            Loss::from_name("mape").unwrap(),
            Loss::MeanAbsolutePercentageError
        );
        assert!(matches!(
            Loss::from_name("dice"),
            Err(ConfigError::Unsupported { .. })
        ));
        // Keras' `losses.get` does not know this one's function name either.
        assert!(matches!(
            Loss::from_name("categorical_generalized_cross_entropy"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert_eq!(Loss::from_name("ce").unwrap(), Loss::Crossentropy);
        // Called directly, the alias resolves from the lengths: one label per row of several
        // classes is sparse, a single output binary, full-width labels categorical.
        let ce = Loss::Crossentropy;
        let p = [0.2f64, 0.5, 0.3, 0.6, 0.1, 0.3];
        let explicit = |name: &str, t: &[f64], shape: &[usize]| {
            Loss::from_name(name)
                .unwrap()
                .value(t, &p, shape, None)
                .unwrap()
        };
        for (t, shape, name) in [
            (
                &[1.0, 0.0][..],
                &[2, 3][..],
                "sparse_categorical_crossentropy",
            ),
            (
                &[0.0, 1.0, 0.0, 1.0, 0.0, 0.0][..],
                &[2, 3][..],
                "categorical_crossentropy",
            ),
            (
                &[0.0, 1.0, 1.0, 0.0, 1.0, 0.0][..],
                &[6, 1][..],
                "binary_crossentropy",
            ),
        ] {
            let got = ce.value(t, &p, shape, None).unwrap();
            assert_eq!(got, explicit(name, t, shape), "{name}");
            let rows = ce.row_values(t, &p, shape).unwrap();
            assert_eq!(rows.len(), shape[0], "{name}");
        }
        assert_eq!(Loss::from_name("CrossEntropy").unwrap(), Loss::Crossentropy);
        assert_eq!(
            Loss::from_keras(&Loss::Crossentropy.to_keras()).unwrap(),
            Loss::Crossentropy
        );
        assert!(matches!(
            Loss::from_name("Mse"),
            Err(ConfigError::UnknownName { .. })
        ));
        let all = [
            Loss::MeanSquaredError,
            Loss::MeanAbsoluteError,
            Loss::Huber { delta: 1.0 },
            Loss::Huber { delta: 0.25 },
            Loss::LogCosh,
            Loss::BinaryCrossentropy {
                from_logits: true,
                label_smoothing: 0.1,
            },
            Loss::CategoricalCrossentropy {
                from_logits: false,
                label_smoothing: 0.0,
            },
            Loss::SparseCategoricalCrossentropy { from_logits: true },
            Loss::MeanAbsolutePercentageError,
            Loss::MeanSquaredLogarithmicError,
            Loss::Poisson,
            Loss::Hinge,
            Loss::SquaredHinge,
            Loss::CategoricalHinge,
            Loss::KlDivergence,
            Loss::CosineSimilarity,
            Loss::BinaryFocalCrossentropy {
                apply_class_balancing: true,
                alpha: 0.6,
                gamma: 1.5,
                from_logits: true,
                label_smoothing: 0.2,
            },
            Loss::CategoricalFocalCrossentropy {
                alpha: 0.5,
                gamma: 3.0,
                from_logits: false,
                label_smoothing: 0.1,
            },
            Loss::CategoricalGeneralizedCrossEntropy { q: 0.8 },
        ];
        for l in all {
            assert_eq!(Loss::from_keras(&l.to_keras()).unwrap(), l);
        }
        let f = json!({"module": "builtins", "class_name": "function", "config": "log_cosh", "registered_name": "function"});
        assert_eq!(Loss::from_keras(&f).unwrap(), Loss::LogCosh);
        let bad = json!({"class_name": "BinaryCrossentropy", "config": {"reduction": "sum"}});
        assert!(matches!(
            Loss::from_keras(&bad),
            Err(ConfigError::Unsupported { .. })
        ));
        let bad = json!({"class_name": "MeanSquaredError", "config": {"from_logits": true}});
        assert!(Loss::from_keras(&bad)
            .unwrap_err()
            .to_string()
            .contains("from_logits"));
        let bad = json!({"class_name": "BinaryCrossentropy", "config": {"label_smoothing": 2.0}});
        assert!(Loss::from_keras(&bad).is_err());
        assert!(Loss::from_keras(&json!(["mse", "mae"])).is_err());
        // TF-Keras 2's form: reduction "auto" and the wrapped function's name.
        let tf2 = json!({"class_name": "Huber", "config": {"reduction": "auto", "name": "huber_loss", "delta": 0.5, "fn": "huber"}});
        assert_eq!(Loss::from_keras(&tf2).unwrap(), Loss::Huber { delta: 0.5 });
        let bad = json!({"class_name": "Huber", "config": {"reduction": "auto", "fn": "log_cosh"}});
        assert!(Loss::from_keras(&bad)
            .unwrap_err()
            .to_string()
            .contains("Huber.fn"));
        // Per-class α, a q outside (0, 1) and a binary focal loss on a softmax are refused.
        let bad =
            json!({"class_name": "CategoricalFocalCrossentropy", "config": {"alpha": [0.1, 0.9]}});
        assert!(matches!(
            Loss::from_keras(&bad),
            Err(ConfigError::Unsupported { .. })
        ));
        let bad = json!({"class_name": "CategoricalGeneralizedCrossEntropy", "config": {"q": 1.0}});
        assert!(Loss::from_keras(&bad)
            .unwrap_err()
            .to_string()
            .contains('q'));
        let focal = Loss::from_name("binary_focal_crossentropy").unwrap();
        assert!(matches!(
            focal.on_activation_output(Activation::Softmax),
            Err(ConfigError::Unsupported { .. })
        ));
        assert_eq!(
            focal.on_activation_output(Activation::Sigmoid).unwrap(),
            Some(focal.with_logits())
        );
        // Keras reads a sigmoid's input even when the loss already says from_logits.
        let bce = Loss::BinaryCrossentropy {
            from_logits: true,
            label_smoothing: 0.0,
        };
        assert_eq!(
            bce.on_activation_output(Activation::Sigmoid).unwrap(),
            Some(bce)
        );
        assert_eq!(
            focal
                .with_logits()
                .on_activation_output(Activation::Sigmoid)
                .unwrap(),
            None
        );
        assert_eq!(
            Loss::CosineSimilarity
                .on_activation_output(Activation::Softmax)
                .unwrap(),
            None
        );
    }
}
