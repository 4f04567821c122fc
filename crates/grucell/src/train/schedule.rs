//! Learning rates: a constant, or one of Keras' built-in learning-rate schedules
//! (`keras.optimizers.schedules`), computed as Keras 3.15.1 computes them.
//!
//! Keras evaluates a schedule at the optimizer's `iterations` *before* the step (0 for the first
//! step), once per step, and uses that rate for the step's weight decay and update. The arithmetic
//! is TensorFlow's in float32: the initial rate becomes a float32 tensor, every other number is
//! cast to float32, the step count is cast from int64 to float32 (rounded to nearest above 2²⁴),
//! and `pow`, `cos`, `log`, `floor`, `ceil` are float32 operations. [`LearningRate::at`] does the
//! same with Rust's `f32` (whose `powf`, `cos` and `ln` call the same C library functions as
//! TensorFlow's scalar kernels), and an `f64` model uses the float32 rate widened, as Keras casts
//! it to the variables' dtype.
//!
//! TF-Keras 2 writes the same six schedules with the same formulas (its default names are
//! `null`); its `LinearCosineDecay` and `NoisyLinearCosineDecay`, and custom schedules, are
//! refused.

use crate::error::ConfigError;
use crate::layers::keras_json::get_bool;
use serde_json::{json, Map, Value};

/// The learning rate of an optimizer: a constant, or a schedule of the step count.
///
/// ```
/// use grucell::train::schedule::{LearningRate, LearningRateSchedule};
///
/// let constant = LearningRate::from(0.01);
/// assert_eq!(constant.at(1000), 0.01f32);
/// // keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
/// let decay = LearningRate::Schedule(LearningRateSchedule::ExponentialDecay {
///     initial_learning_rate: 0.1,
///     decay_steps: 10.0,
///     decay_rate: 0.5,
///     staircase: false,
///     name: None,
/// });
/// assert_eq!(decay.at(0), 0.1f32);
/// assert!((decay.at(10) - 0.05).abs() < 1e-8);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum LearningRate {
    /// A constant rate, used as its float32 value (Keras keeps it in a float32 variable).
    Constant(f64),
    /// A rate that changes with the optimizer's step count.
    Schedule(LearningRateSchedule),
}

impl From<f64> for LearningRate {
    fn from(x: f64) -> Self {
        LearningRate::Constant(x)
    }
}

impl LearningRate {
    /// The float32 rate Keras uses for the step taken when `iterations` steps have been taken.
    pub fn at(&self, iterations: u64) -> f32 {
        match self {
            LearningRate::Constant(x) => *x as f32,
            LearningRate::Schedule(s) => s.at(iterations),
        }
    }

    /// The constant rate, or `None` for a schedule.
    pub fn constant(&self) -> Option<f64> {
        match self {
            LearningRate::Constant(x) => Some(*x),
            LearningRate::Schedule(_) => None,
        }
    }

    /// Reads the `learning_rate` entry of a serialized Keras optimizer: a number, or a
    /// serialized schedule (`{"class_name": "ExponentialDecay", "config": {...}}`). `owner` names
    /// the optimizer in error messages.
    pub fn from_keras(v: &Value, owner: &str) -> Result<Self, ConfigError> {
        match v {
            Value::Object(_) => LearningRateSchedule::from_keras(v, owner).map(Self::Schedule),
            x => x.as_f64().map(Self::Constant).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{owner}.learning_rate"),
                    x,
                    "a number or a serialized learning-rate schedule",
                )
            }),
        }
    }

    /// Serializes as Keras writes it: a constant as its float32 value widened to f64 (Keras reads
    /// it back from its float32 variable: 0.001 → 0.0010000000474974513), a schedule as
    /// [`LearningRateSchedule::to_keras`].
    pub fn to_keras(&self) -> Value {
        match self {
            LearningRate::Constant(x) => json!(f64::from(*x as f32)),
            LearningRate::Schedule(s) => s.to_keras(),
        }
    }

    /// Checks the rate: a constant must be finite and `≥ 0`; a schedule as
    /// [`LearningRateSchedule::validate`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            LearningRate::Constant(x) => {
                if x.is_finite() && *x >= 0.0 {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        "learning_rate",
                        x,
                        "a finite number ≥ 0",
                    ))
                }
            }
            LearningRate::Schedule(s) => s.validate(),
        }
    }
}

/// Keras' built-in learning-rate schedules, with the arguments of their constructors. `name`
/// is kept for saving (`None` writes Keras 3's default name).
#[derive(Clone, Debug, PartialEq)]
pub enum LearningRateSchedule {
    /// `ExponentialDecay`: `lr₀ · rateᵖ`, `p = step / decay_steps` (floored with `staircase`).
    ExponentialDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// `> 0`.
        decay_steps: f64,
        /// The factor per `decay_steps` steps.
        decay_rate: f64,
        /// Decay at whole multiples of `decay_steps` only.
        staircase: bool,
        /// The schedule's name (Keras 3's default `"ExponentialDecay"`).
        name: Option<String>,
    },
    /// `InverseTimeDecay`: `lr₀ / (1 + rate · p)`, `p = step / decay_steps` (floored with
    /// `staircase`).
    InverseTimeDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// `> 0`.
        decay_steps: f64,
        /// The rate of the decay.
        decay_rate: f64,
        /// Decay at whole multiples of `decay_steps` only.
        staircase: bool,
        /// The schedule's name (Keras 3's default `"InverseTimeDecay"`).
        name: Option<String>,
    },
    /// `PiecewiseConstantDecay`: `values[0]` while `step ≤ boundaries[0]`, `values[i + 1]` while
    /// `boundaries[i] < step ≤ boundaries[i + 1]`, `values[n]` after `boundaries[n − 1]`
    /// (Keras 3 adds the values of every interval the step is in, which matters only for
    /// unsorted boundaries; so does grucell).
    PiecewiseConstantDecay {
        /// Step counts, compared as int64 (Keras casts float boundaries to float32, then
        /// truncates them to int64).
        boundaries: Vec<i64>,
        /// One more value than boundaries.
        values: Vec<f64>,
        /// The schedule's name (Keras 3's default `"PiecewiseConstant"`).
        name: Option<String>,
    },
    /// `PolynomialDecay`: `(lr₀ − end) · (1 − s / d)^power + end` with `s = min(step, d)`, or
    /// with `cycle`, `d = decay_steps · max(1, ⌈step / decay_steps⌉)` and `s = step`.
    PolynomialDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// `> 0`.
        decay_steps: f64,
        /// The rate at the end of the decay (Keras' default 0.0001).
        end_learning_rate: f64,
        /// The power of the polynomial (Keras' default 1).
        power: f64,
        /// Restart the decay after each `decay_steps`, with a longer period.
        cycle: bool,
        /// The schedule's name (Keras 3's default `"PolynomialDecay"`).
        name: Option<String>,
    },
    /// `CosineDecay`: an optional linear warm-up from `lr₀` to `warmup_target` over
    /// `warmup_steps`, then `from · ((1 − α) · ½(1 + cos(π · s / decay_steps)) + α)` with
    /// `s = min(step − warmup_steps, decay_steps)` and `from` the warm-up target (or `lr₀`).
    CosineDecay {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// `> 0`.
        decay_steps: f64,
        /// The floor, as a fraction of the rate decayed from (Keras' default 0).
        alpha: f64,
        /// The rate the warm-up reaches (`None`: no warm-up).
        warmup_target: Option<f64>,
        /// The length of the warm-up (Keras' default 0).
        warmup_steps: f64,
        /// The schedule's name (Keras 3's default `"CosineDecay"`).
        name: Option<String>,
    },
    /// `CosineDecayRestarts` (SGDR): cosine decays over periods `first_decay_steps · t_mulⁱ`,
    /// restart `i` starting at `lr₀ · m_mulⁱ`.
    CosineDecayRestarts {
        /// `lr₀`.
        initial_learning_rate: f64,
        /// `> 0`: the length of the first period.
        first_decay_steps: f64,
        /// How much longer each period is (Keras' default 2).
        t_mul: f64,
        /// How much lower each restart starts (Keras' default 1).
        m_mul: f64,
        /// The floor, as a fraction of `lr₀` (Keras' default 0).
        alpha: f64,
        /// The schedule's name (Keras 3's default `"SGDRDecay"`).
        name: Option<String>,
    },
}

/// The schedules grucell reads, as Keras names their classes.
pub const SCHEDULES: &[&str] = &[
    "ExponentialDecay",
    "InverseTimeDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "CosineDecay",
    "CosineDecayRestarts",
];

/// Every number Keras casts to float32.
fn f(x: f64) -> f32 {
    x as f32
}

impl LearningRateSchedule {
    /// The Keras class name (`"ExponentialDecay"`, …).
    pub fn keras_class_name(&self) -> &'static str {
        match self {
            Self::ExponentialDecay { .. } => "ExponentialDecay",
            Self::InverseTimeDecay { .. } => "InverseTimeDecay",
            Self::PiecewiseConstantDecay { .. } => "PiecewiseConstantDecay",
            Self::PolynomialDecay { .. } => "PolynomialDecay",
            Self::CosineDecay { .. } => "CosineDecay",
            Self::CosineDecayRestarts { .. } => "CosineDecayRestarts",
        }
    }

    fn default_name(&self) -> &'static str {
        match self {
            Self::PiecewiseConstantDecay { .. } => "PiecewiseConstant",
            Self::CosineDecayRestarts { .. } => "SGDRDecay",
            other => other.keras_class_name(),
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Self::ExponentialDecay { name, .. }
            | Self::InverseTimeDecay { name, .. }
            | Self::PiecewiseConstantDecay { name, .. }
            | Self::PolynomialDecay { name, .. }
            | Self::CosineDecay { name, .. }
            | Self::CosineDecayRestarts { name, .. } => name.as_deref(),
        }
    }

    /// The float32 rate of the step taken after `iterations` steps, as Keras computes it (module
    /// documentation).
    pub fn at(&self, iterations: u64) -> f32 {
        // TensorFlow's int64 → float32 cast rounds to nearest, as `as` does.
        let step = iterations as f32;
        match *self {
            Self::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
                ..
            } => {
                let mut p = step / f(decay_steps);
                if staircase {
                    p = p.floor();
                }
                f(initial_learning_rate) * f(decay_rate).powf(p)
            }
            Self::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
                ..
            } => {
                let mut p = step / f(decay_steps);
                if staircase {
                    p = p.floor();
                }
                f(initial_learning_rate) / (1.0 + f(decay_rate) * p)
            }
            Self::PiecewiseConstantDecay {
                ref boundaries,
                ref values,
                ..
            } => {
                let step = i64::try_from(iterations).unwrap_or(i64::MAX);
                let (Some(&first), Some(&last), Some(&v0), Some(&vn)) = (
                    boundaries.first(),
                    boundaries.last(),
                    values.first(),
                    values.last(),
                ) else {
                    // Validation refuses this; one value and no boundary is that value.
                    return values.first().map_or(0.0, |&v| f(v));
                };
                let on = |c: bool| if c { 1.0f32 } else { 0.0 };
                let mut r = 0.0f32;
                r += on(step <= first) * f(v0);
                r += on(step > last) * f(vn);
                let inner = values.get(1..values.len().saturating_sub(1)).unwrap_or(&[]);
                for (w, &v) in boundaries.windows(2).zip(inner) {
                    if let [low, high] = *w {
                        r += on(step > low && step <= high) * f(v);
                    }
                }
                r
            }
            Self::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
                ..
            } => {
                let lr0 = f(initial_learning_rate);
                let end = f(end_learning_rate);
                let mut d = f(decay_steps);
                let mut s = step;
                if cycle {
                    let multiplier = if s == 0.0 {
                        1.0
                    } else {
                        (s / f(decay_steps)).ceil()
                    };
                    d *= multiplier;
                } else {
                    s = s.min(d);
                }
                let p = s / d;
                (lr0 - end) * (1.0 - p).powf(f(power)) + end
            }
            Self::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
                ..
            } => {
                let lr0 = f(initial_learning_rate);
                let d = f(decay_steps);
                let decay = |s: f32, from: f32| {
                    let cosine = 0.5 * (1.0 + (std::f32::consts::PI * (s / d)).cos());
                    // `(1 - alpha)` is a Python float, rounded once when it meets the tensor.
                    from * (f(1.0 - alpha) * cosine + f(alpha))
                };
                match warmup_target {
                    None => decay(step.min(d), lr0),
                    Some(target) => {
                        let target = f(target);
                        let w = f(warmup_steps);
                        let s = step.min(d + w);
                        if s < w {
                            (target - lr0) * (s / w) + lr0
                        } else {
                            decay(s - w, target)
                        }
                    }
                }
            }
            Self::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
                ..
            } => {
                let (t_mul, m_mul, alpha) = (f(t_mul), f(m_mul), f(alpha));
                let mut fraction = step / f(first_decay_steps);
                let restart = if t_mul == 1.0 {
                    let i = fraction.floor();
                    fraction -= i;
                    i
                } else {
                    let i = ((1.0 - fraction * (1.0 - t_mul)).ln() / t_mul.ln()).floor();
                    let sum = (1.0 - t_mul.powf(i)) / (1.0 - t_mul);
                    fraction = (fraction - sum) / t_mul.powf(i);
                    i
                };
                let cosine =
                    0.5 * m_mul.powf(restart) * (1.0 + (std::f32::consts::PI * fraction).cos());
                f(initial_learning_rate) * ((1.0 - alpha) * cosine + alpha)
            }
        }
    }

    /// Reads a serialized Keras schedule, as Keras 3 (`{"module": "keras.optimizers.schedules",
    /// "class_name": …, "config": {…}, "registered_name": null}`) and TF-Keras 2 write it.
    /// Missing arguments take Keras' defaults; unknown arguments are invalid (Keras refuses them
    /// too); the result is validated.
    pub fn from_keras(v: &Value, owner: &str) -> Result<Self, ConfigError> {
        let at = format!("{owner}.learning_rate");
        let class = v.get("class_name").and_then(Value::as_str).ok_or_else(|| {
            ConfigError::invalid(&at, v, "a number or a serialized learning-rate schedule")
        })?;
        let empty = Map::new();
        let c = match v.get("config") {
            Some(Value::Object(c)) => c,
            None | Some(Value::Null) => &empty,
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{at}.config"),
                    other,
                    "an object",
                ))
            }
        };
        let known: &[&str] = match class {
            "ExponentialDecay" | "InverseTimeDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "decay_rate",
                "staircase",
            ],
            "PiecewiseConstantDecay" => &["boundaries", "values"],
            "PolynomialDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "end_learning_rate",
                "power",
                "cycle",
            ],
            "CosineDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "alpha",
                "warmup_target",
                "warmup_steps",
            ],
            "CosineDecayRestarts" => &[
                "initial_learning_rate",
                "first_decay_steps",
                "t_mul",
                "m_mul",
                "alpha",
            ],
            other => {
                return Err(ConfigError::unsupported(
                    "learning-rate schedule",
                    format!(
                        "{at} is a `{other}`; grucell computes Keras' {}",
                        SCHEDULES.join(", ")
                    ),
                ))
            }
        };
        for (key, val) in c {
            if key != "name" && !known.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{at}.{key}"),
                    val,
                    format!("no such argument; {class} takes {}, name", known.join(", ")),
                ));
            }
        }
        let name = match c.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{at}.name"),
                    other,
                    "a string or null",
                ))
            }
        };
        let num = |key: &str, default: Option<f64>| -> Result<f64, ConfigError> {
            match (c.get(key), default) {
                (None | Some(Value::Null), Some(d)) => Ok(d),
                (Some(x), _) if x.is_number() => x
                    .as_f64()
                    .ok_or_else(|| ConfigError::invalid(format!("{at}.{key}"), x, "a number")),
                (x, _) => Err(ConfigError::invalid(
                    format!("{at}.{key}"),
                    x.unwrap_or(&Value::Null),
                    "a number",
                )),
            }
        };
        // Keras computes the whole schedule in the initial rate's dtype: an integer there makes
        // it int32 arithmetic (a decay rate of 0.5 becomes 0), which grucell does not imitate.
        let initial = |key: &str| -> Result<f64, ConfigError> {
            match c.get(key) {
                Some(x) if x.is_i64() || x.is_u64() => Err(ConfigError::unsupported(
                    "learning-rate schedule",
                    format!(
                        "{at}.{key} = {x} is an integer (Keras would compute the schedule in int32); write it as a float, {x}.0"
                    ),
                )),
                _ => num(key, None),
            }
        };
        let flag = |key: &str| get_bool(c, key, false);
        let sched = match class {
            "ExponentialDecay" => Self::ExponentialDecay {
                initial_learning_rate: initial("initial_learning_rate")?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase")?,
                name,
            },
            "InverseTimeDecay" => Self::InverseTimeDecay {
                initial_learning_rate: initial("initial_learning_rate")?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase")?,
                name,
            },
            "PiecewiseConstantDecay" => {
                let list = |key: &str| -> Result<&Vec<Value>, ConfigError> {
                    c.get(key).and_then(Value::as_array).ok_or_else(|| {
                        ConfigError::invalid(
                            format!("{at}.{key}"),
                            c.get(key).unwrap_or(&Value::Null),
                            "a list of numbers",
                        )
                    })
                };
                let boundaries = list("boundaries")?
                    .iter()
                    .map(|b| boundary(b, &at))
                    .collect::<Result<_, _>>()?;
                let values = list("values")?
                    .iter()
                    .map(|x| {
                        x.as_f64().ok_or_else(|| {
                            ConfigError::invalid(format!("{at}.values"), x, "numbers")
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Self::PiecewiseConstantDecay {
                    boundaries,
                    values,
                    name,
                }
            }
            "PolynomialDecay" => Self::PolynomialDecay {
                initial_learning_rate: initial("initial_learning_rate")?,
                decay_steps: num("decay_steps", None)?,
                end_learning_rate: num("end_learning_rate", Some(0.0001))?,
                power: num("power", Some(1.0))?,
                cycle: flag("cycle")?,
                name,
            },
            "CosineDecay" => Self::CosineDecay {
                initial_learning_rate: initial("initial_learning_rate")?,
                decay_steps: num("decay_steps", None)?,
                alpha: num("alpha", Some(0.0))?,
                warmup_target: match c.get("warmup_target") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(num("warmup_target", None)?),
                },
                warmup_steps: num("warmup_steps", Some(0.0))?,
                name,
            },
            _ => Self::CosineDecayRestarts {
                initial_learning_rate: initial("initial_learning_rate")?,
                first_decay_steps: num("first_decay_steps", None)?,
                t_mul: num("t_mul", Some(2.0))?,
                m_mul: num("m_mul", Some(1.0))?,
                alpha: num("alpha", Some(0.0))?,
                name,
            },
        };
        sched.validate()?;
        Ok(sched)
    }

    /// Serializes as Keras 3.15.1 does (`keras.optimizers.schedules.serialize`); a schedule
    /// without a name gets Keras 3's default name.
    pub fn to_keras(&self) -> Value {
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.into(), v);
        };
        match self {
            Self::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
                ..
            }
            | Self::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
                ..
            } => {
                put("initial_learning_rate", json!(initial_learning_rate));
                put("decay_steps", whole(*decay_steps));
                put("decay_rate", json!(decay_rate));
                put("staircase", json!(staircase));
            }
            Self::PiecewiseConstantDecay {
                boundaries, values, ..
            } => {
                put("boundaries", json!(boundaries));
                put("values", json!(values));
            }
            Self::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
                ..
            } => {
                put("initial_learning_rate", json!(initial_learning_rate));
                put("decay_steps", whole(*decay_steps));
                put("end_learning_rate", json!(end_learning_rate));
                put("power", json!(power));
                put("cycle", json!(cycle));
            }
            Self::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
                ..
            } => {
                put("initial_learning_rate", json!(initial_learning_rate));
                put("decay_steps", whole(*decay_steps));
                put("alpha", json!(alpha));
                put("warmup_target", json!(warmup_target));
                put("warmup_steps", whole(*warmup_steps));
            }
            Self::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
                ..
            } => {
                put("initial_learning_rate", json!(initial_learning_rate));
                put("first_decay_steps", whole(*first_decay_steps));
                put("t_mul", json!(t_mul));
                put("m_mul", json!(m_mul));
                put("alpha", json!(alpha));
            }
        }
        put("name", json!(self.name().unwrap_or(self.default_name())));
        json!({
            "module": "keras.optimizers.schedules",
            "class_name": self.keras_class_name(),
            "config": Value::Object(c),
            "registered_name": Value::Null,
        })
    }

    /// Checks what Keras checks (`decay_steps > 0`, one more value than boundaries) and that
    /// every number is finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let finite = |arg: &str, x: f64| {
            if x.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::invalid(arg, x, "a finite number"))
            }
        };
        let steps = |arg: &str, x: f64| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::invalid(arg, x, "a finite number > 0"))
            }
        };
        match self {
            Self::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                ..
            }
            | Self::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                ..
            } => {
                finite("initial_learning_rate", *initial_learning_rate)?;
                steps("decay_steps", *decay_steps)?;
                finite("decay_rate", *decay_rate)
            }
            Self::PiecewiseConstantDecay {
                boundaries, values, ..
            } => {
                if boundaries.is_empty() || values.len() != boundaries.len() + 1 {
                    return Err(ConfigError::invalid(
                        "boundaries/values",
                        format!(
                            "{} boundaries and {} values",
                            boundaries.len(),
                            values.len()
                        ),
                        "at least one boundary and one value more than boundaries",
                    ));
                }
                values.iter().try_for_each(|&v| finite("values", v))
            }
            Self::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                ..
            } => {
                finite("initial_learning_rate", *initial_learning_rate)?;
                steps("decay_steps", *decay_steps)?;
                finite("end_learning_rate", *end_learning_rate)?;
                finite("power", *power)
            }
            Self::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
                ..
            } => {
                finite("initial_learning_rate", *initial_learning_rate)?;
                steps("decay_steps", *decay_steps)?;
                finite("alpha", *alpha)?;
                if let Some(t) = warmup_target {
                    finite("warmup_target", *t)?;
                }
                if *warmup_steps >= 0.0 && warmup_steps.is_finite() {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        "warmup_steps",
                        warmup_steps,
                        "a finite number ≥ 0",
                    ))
                }
            }
            Self::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
                ..
            } => {
                finite("initial_learning_rate", *initial_learning_rate)?;
                steps("first_decay_steps", *first_decay_steps)?;
                if !(*t_mul > 0.0 && t_mul.is_finite()) {
                    return Err(ConfigError::invalid("t_mul", t_mul, "a finite number > 0"));
                }
                finite("m_mul", *m_mul)?;
                finite("alpha", *alpha)
            }
        }
    }
}

/// A step count as Keras writes it: a whole number as an integer, anything else as a float.
fn whole(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// A `PiecewiseConstantDecay` boundary as Keras compares it with the int64 step: an integer
/// as is, a float rounded to float32 and truncated towards zero.
fn boundary(b: &Value, at: &str) -> Result<i64, ConfigError> {
    if let Some(i) = b.as_i64() {
        return Ok(i);
    }
    match b.as_f64().map(|x| x as f32) {
        Some(x) if x.is_finite() && x.abs() < 9.2e18 => Ok(x.trunc() as i64),
        _ => Err(ConfigError::invalid(
            format!("{at}.boundaries"),
            b,
            "finite numbers (step counts)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: Value) -> Result<LearningRateSchedule, ConfigError> {
        LearningRateSchedule::from_keras(&s, "Adam")
    }

    #[test]
    fn piecewise_constant_is_keras_intervals() {
        let s = parse(json!({"class_name": "PiecewiseConstantDecay",
            "config": {"boundaries": [2, 4.9], "values": [1.0, 0.5, 0.25]}}))
        .unwrap();
        let got: Vec<f32> = (0..7).map(|i| s.at(i)).collect();
        // 4.9 is truncated to 4, as TensorFlow's float → int64 cast does.
        assert_eq!(got, [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn schedules_round_trip_through_keras_json() {
        for s in [
            json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.9, "staircase": true, "name": "e"}}),
            json!({"class_name": "InverseTimeDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 2.5, "decay_rate": 0.5}}),
            json!({"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [3], "values": [0.1, 0.01]}}),
            json!({"class_name": "PolynomialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 5, "cycle": true, "power": 0.5}}),
            json!({"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.0, "decay_steps": 5, "alpha": 0.1, "warmup_target": 0.1, "warmup_steps": 3}}),
            json!({"class_name": "CosineDecayRestarts", "config": {"initial_learning_rate": 0.1, "first_decay_steps": 4, "t_mul": 1.5, "m_mul": 0.5, "alpha": 0.01, "name": null}}),
        ] {
            let a = parse(s).unwrap();
            let b = parse(a.to_keras()).unwrap();
            let name = |x: &LearningRateSchedule| x.name().map(str::to_string);
            assert_eq!(name(&b), Some(name(&a).unwrap_or(a.default_name().into())));
            for i in 0..40 {
                assert_eq!(a.at(i).to_bits(), b.at(i).to_bits(), "{a:?} at {i}");
                assert!(a.at(i).is_finite());
            }
        }
    }

    #[test]
    fn formulas_at_known_points() {
        let poly = parse(json!({"class_name": "PolynomialDecay", "config": {"initial_learning_rate": 1.0, "decay_steps": 4, "end_learning_rate": 0.0}})).unwrap();
        assert_eq!(
            [poly.at(0), poly.at(2), poly.at(4), poly.at(9)],
            [1.0, 0.5, 0.0, 0.0]
        );
        let cyc = parse(json!({"class_name": "PolynomialDecay", "config": {"initial_learning_rate": 1.0, "decay_steps": 4, "end_learning_rate": 0.0, "cycle": true}})).unwrap();
        // Step 6 is in the second period, of 8 steps.
        assert_eq!([cyc.at(4), cyc.at(6)], [0.0, 0.25]);
        let cos = parse(json!({"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.0, "decay_steps": 4, "warmup_target": 1.0, "warmup_steps": 2}})).unwrap();
        assert_eq!([cos.at(0), cos.at(1), cos.at(2)], [0.0, 0.5, 1.0]);
        assert!(
            (cos.at(4) - 0.5).abs() < 1e-7 && cos.at(6).abs() < 1e-7 && cos.at(100).abs() < 1e-7
        );
        let sgdr = parse(json!({"class_name": "CosineDecayRestarts", "config": {"initial_learning_rate": 1.0, "first_decay_steps": 2, "t_mul": 2.0, "m_mul": 0.5}})).unwrap();
        // Periods [0, 2), [2, 6), [6, 14): restarts at 1, 0.5, 0.25.
        assert_eq!([sgdr.at(0), sgdr.at(2), sgdr.at(6)], [1.0, 0.5, 0.25]);
        assert!((sgdr.at(4) - 0.25).abs() < 1e-7);
        let inv = parse(json!({"class_name": "InverseTimeDecay", "config": {"initial_learning_rate": 1.0, "decay_steps": 2, "decay_rate": 1.0, "staircase": true}})).unwrap();
        assert_eq!([inv.at(1), inv.at(2), inv.at(5)], [1.0, 0.5, 1.0 / 3.0]);
    }

    #[test]
    fn refuses_what_it_does_not_compute() {
        let e = |s: Value| parse(s).unwrap_err().to_string();
        assert!(e(json!({"class_name": "LinearCosineDecay", "config": {}}))
            .contains("LinearCosineDecay"));
        assert!(e(json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 1, "decay_steps": 1, "decay_rate": 0.5}})).contains("int32"));
        assert!(e(json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5}})).contains("decay_steps"));
        assert!(e(json!({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "decay_rate": 0.5}})).contains("decay_steps"));
        assert!(e(json!({"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [1, 2], "values": [0.1, 0.2]}})).contains("boundaries"));
        assert!(e(json!({"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 3, "beta": 1}})).contains("beta"));
        assert!(LearningRate::from_keras(&json!("fast"), "SGD").is_err());
    }
}
