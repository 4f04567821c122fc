//! Keras 3 weight initializers (`keras.initializers`): names, configs, serialization and sampling.
//!
//! Formulas are Keras 3.15.1's (spec §2.2). Fans of a shape: 2-D `(a, b)` → `fan_in = a`,
//! `fan_out = b` (so a GRU kernel `(input_dim, 3u)` has `fan_out = 3u`); 1-D → both `shape[0]`;
//! ≥ 3-D → receptive field × `shape[-2]` / `shape[-1]` ([`compute_fans`]).
//!
//! **Random streams.** Keras draws with TensorFlow's stateless RNG; those bit streams cannot be
//! reproduced outside TensorFlow. grucell reproduces the *distributions* exactly (same bounds,
//! truncation, variance, orthogonality) from a seeded [`rand::rngs::StdRng`] (ChaCha12): the same
//! seed gives the same values on every platform for a given `rand` major version, different seeds
//! give different values. Samples are drawn in `f64` and rounded to the weight type.

use crate::error::ConfigError;
use crate::float::Float;
use crate::layers::keras_json::{class_and_config, get_f64, get_str};
use crate::tensor::{checked_numel, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde_json::{json, Map, Value};

/// Which fan [`Initializer::VarianceScaling`] divides the scale by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FanMode {
    /// `fan_in` (number of input units).
    FanIn,
    /// `fan_out` (number of output units).
    FanOut,
    /// `(fan_in + fan_out) / 2`.
    FanAvg,
}

impl FanMode {
    /// The Keras spelling (`"fan_in"`, `"fan_out"`, `"fan_avg"`).
    pub fn name(self) -> &'static str {
        match self {
            FanMode::FanIn => "fan_in",
            FanMode::FanOut => "fan_out",
            FanMode::FanAvg => "fan_avg",
        }
    }

    /// Parses the Keras spelling (exact, as Keras checks it).
    pub fn from_name(s: &str) -> Result<Self, ConfigError> {
        match s {
            "fan_in" => Ok(FanMode::FanIn),
            "fan_out" => Ok(FanMode::FanOut),
            "fan_avg" => Ok(FanMode::FanAvg),
            other => Err(ConfigError::invalid(
                "mode",
                format!("{other:?}"),
                "one of \"fan_in\", \"fan_out\", \"fan_avg\"",
            )),
        }
    }
}

/// The distribution [`Initializer::VarianceScaling`] samples from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// `U(−L, L)`, `L = sqrt(3·scale/n)`.
    Uniform,
    /// `N(0, σ²)` truncated (resampled) outside `±2σ`, `σ = sqrt(scale/n) / 0.87962566103423978`.
    TruncatedNormal,
    /// `N(0, σ²)`, `σ = sqrt(scale/n)`.
    UntruncatedNormal,
}

impl Distribution {
    /// The Keras spelling.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::TruncatedNormal => "truncated_normal",
            Distribution::UntruncatedNormal => "untruncated_normal",
        }
    }

    /// Parses as Keras does: case-insensitive, `"normal"` meaning `"truncated_normal"`.
    pub fn from_name(s: &str) -> Result<Self, ConfigError> {
        match s.to_lowercase().as_str() {
            "uniform" => Ok(Distribution::Uniform),
            "truncated_normal" | "normal" => Ok(Distribution::TruncatedNormal),
            "untruncated_normal" => Ok(Distribution::UntruncatedNormal),
            _ => Err(ConfigError::invalid(
                "distribution",
                format!("{s:?}"),
                "one of \"uniform\", \"truncated_normal\" (or \"normal\"), \"untruncated_normal\"",
            )),
        }
    }
}

/// The named [`Initializer::VarianceScaling`] presets, which Keras serializes under their own
/// class names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VsPreset {
    /// `GlorotUniform`: scale 1, fan_avg, uniform (GRU kernel default).
    GlorotUniform,
    /// `GlorotNormal`: scale 1, fan_avg, truncated normal.
    GlorotNormal,
    /// `HeUniform`: scale 2, fan_in, uniform.
    HeUniform,
    /// `HeNormal`: scale 2, fan_in, truncated normal.
    HeNormal,
    /// `LecunUniform`: scale 1, fan_in, uniform.
    LecunUniform,
    /// `LecunNormal`: scale 1, fan_in, truncated normal.
    LecunNormal,
}

impl VsPreset {
    /// The Keras class name (`"GlorotUniform"`, …).
    pub fn class_name(self) -> &'static str {
        match self {
            VsPreset::GlorotUniform => "GlorotUniform",
            VsPreset::GlorotNormal => "GlorotNormal",
            VsPreset::HeUniform => "HeUniform",
            VsPreset::HeNormal => "HeNormal",
            VsPreset::LecunUniform => "LecunUniform",
            VsPreset::LecunNormal => "LecunNormal",
        }
    }

    /// `(scale, mode, distribution)` of the preset.
    pub fn params(self) -> (f64, FanMode, Distribution) {
        use Distribution::{TruncatedNormal as Tn, Uniform as Un};
        match self {
            VsPreset::GlorotUniform => (1.0, FanMode::FanAvg, Un),
            VsPreset::GlorotNormal => (1.0, FanMode::FanAvg, Tn),
            VsPreset::HeUniform => (2.0, FanMode::FanIn, Un),
            VsPreset::HeNormal => (2.0, FanMode::FanIn, Tn),
            VsPreset::LecunUniform => (1.0, FanMode::FanIn, Un),
            VsPreset::LecunNormal => (1.0, FanMode::FanIn, Tn),
        }
    }

    /// The preset as an initializer with the given seed.
    pub fn initializer(self, seed: Option<u64>) -> Initializer {
        let (scale, mode, distribution) = self.params();
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
            seed,
            preset: Some(self),
        }
    }
}

/// A Keras weight initializer.
///
/// ```
/// use grucell::layers::initializer::Initializer;
/// use serde_json::json;
///
/// // GRUCell defaults: glorot_uniform kernel, orthogonal recurrent kernel, zeros bias.
/// let k = Initializer::from_name("glorot_uniform")?;
/// let w = k.init::<f32>(&[8, 12], 42)?;           // (input_dim, 3·units)
/// let limit = (6.0f32 / (8.0 + 12.0)).sqrt();
/// assert!(w.data().iter().all(|v| v.abs() <= limit));
///
/// // Serialized exactly as Keras 3 writes it in a layer config.
/// assert_eq!(k.to_keras(), json!({"module": "keras.initializers", "class_name": "GlorotUniform",
///     "config": {"seed": null, "input_axes": null, "output_axes": null}, "registered_name": null}));
/// assert_eq!(Initializer::from_keras(&k.to_keras())?, k);
/// assert!(Initializer::from_name("constant").is_err()); // needs a value, as in Keras
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Initializer {
    /// All zeros (`Zeros`, aliases `zeros`, `zero`).
    Zeros,
    /// All ones (`Ones`, aliases `ones`, `one`).
    Ones,
    /// Every element `value` (`Constant`; needs a config with `value`).
    Constant {
        /// The value.
        value: f64,
    },
    /// `gain ·` a rectangular identity matrix; 2-D shapes only (`Identity`).
    Identity {
        /// Multiplier.
        gain: f64,
    },
    /// `N(mean, stddev²)` (`RandomNormal`, alias `normal`; Keras default 0, 0.05).
    RandomNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation (≥ 0).
        stddev: f64,
        /// Own seed; wins over the fallback seed given to [`Initializer::init`].
        seed: Option<u64>,
    },
    /// `U(minval, maxval)` (`RandomUniform`, alias `uniform`; Keras default −0.05, 0.05).
    RandomUniform {
        /// Lower bound.
        minval: f64,
        /// Upper bound (≥ `minval`).
        maxval: f64,
        /// Own seed.
        seed: Option<u64>,
    },
    /// `N(mean, stddev²)` resampled outside `mean ± 2·stddev` (`TruncatedNormal`).
    TruncatedNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation of the untruncated normal (≥ 0).
        stddev: f64,
        /// Own seed.
        seed: Option<u64>,
    },
    /// `VarianceScaling` and its presets (glorot / he / lecun, kept in `preset` so that they
    /// serialize back under their own class name).
    VarianceScaling {
        /// Scale (> 0).
        scale: f64,
        /// Which fan to divide by.
        mode: FanMode,
        /// Distribution.
        distribution: Distribution,
        /// Own seed.
        seed: Option<u64>,
        /// The Keras class this came from; `None` for a plain `VarianceScaling`. Ignored when
        /// the other fields do not match the preset.
        preset: Option<VsPreset>,
    },
    /// Orthogonal matrix from the QR decomposition of a normal matrix, times `gain`
    /// (`Orthogonal`; GRU recurrent-kernel default). Rows orthonormal when rows < columns
    /// (the `(u, 3u)` recurrent kernel), else columns.
    Orthogonal {
        /// Multiplier.
        gain: f64,
        /// Own seed.
        seed: Option<u64>,
    },
}

/// The Keras classes, by every name Keras' `initializers.get` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Zeros,
    Ones,
    Constant,
    Identity,
    RandomNormal,
    RandomUniform,
    TruncatedNormal,
    VarianceScaling,
    Preset(VsPreset),
    Orthogonal,
}

const NAMES: &[(&str, Kind)] = &[
    ("Zeros", Kind::Zeros),
    ("zeros", Kind::Zeros),
    ("zero", Kind::Zeros),
    ("Ones", Kind::Ones),
    ("ones", Kind::Ones),
    ("one", Kind::Ones),
    ("Constant", Kind::Constant),
    ("constant", Kind::Constant),
    ("Identity", Kind::Identity),
    ("identity", Kind::Identity),
    ("IdentityInitializer", Kind::Identity),
    ("RandomNormal", Kind::RandomNormal),
    ("random_normal", Kind::RandomNormal),
    ("normal", Kind::RandomNormal),
    ("RandomUniform", Kind::RandomUniform),
    ("random_uniform", Kind::RandomUniform),
    ("uniform", Kind::RandomUniform),
    ("TruncatedNormal", Kind::TruncatedNormal),
    ("truncated_normal", Kind::TruncatedNormal),
    ("VarianceScaling", Kind::VarianceScaling),
    ("variance_scaling", Kind::VarianceScaling),
    ("GlorotUniform", Kind::Preset(VsPreset::GlorotUniform)),
    ("glorot_uniform", Kind::Preset(VsPreset::GlorotUniform)),
    ("GlorotNormal", Kind::Preset(VsPreset::GlorotNormal)),
    ("glorot_normal", Kind::Preset(VsPreset::GlorotNormal)),
    ("HeUniform", Kind::Preset(VsPreset::HeUniform)),
    ("he_uniform", Kind::Preset(VsPreset::HeUniform)),
    ("HeNormal", Kind::Preset(VsPreset::HeNormal)),
    ("he_normal", Kind::Preset(VsPreset::HeNormal)),
    ("LecunUniform", Kind::Preset(VsPreset::LecunUniform)),
    ("lecun_uniform", Kind::Preset(VsPreset::LecunUniform)),
    ("LecunNormal", Kind::Preset(VsPreset::LecunNormal)),
    ("lecun_normal", Kind::Preset(VsPreset::LecunNormal)),
    ("Orthogonal", Kind::Orthogonal),
    ("orthogonal", Kind::Orthogonal),
    ("OrthogonalInitializer", Kind::Orthogonal),
];

/// `stddev` of a unit normal truncated to ±2 (Keras' constant for `truncated_normal`).
#[allow(clippy::excessive_precision)] // Keras' literal, verbatim
const TRUNC_STD: f64 = 0.879_625_661_034_239_78;

fn lookup(name: &str) -> Result<Kind, ConfigError> {
    if let Some((_, k)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Ok(*k);
    }
    match name {
        "STFT" | "stft" | "STFTInitializer" | "Initializer" | "initializer" => {
            Err(ConfigError::unsupported(
                "initializer",
                format!("`{name}` is a Keras initializer grucell does not implement"),
            ))
        }
        _ => Err(ConfigError::UnknownName {
            kind: "initializer",
            name: name.to_string(),
            known: NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Reads Keras' `seed` field: `null`, a non-negative integer, or a serialized `SeedGenerator`
/// (whose integer seed is taken).
fn parse_seed(v: Option<&Value>) -> Result<Option<u64>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(s), _) => Ok(Some(s)),
            (None, Some(neg)) => Err(ConfigError::unsupported(
                "seed",
                format!("negative seed {neg}: grucell seeds are non-negative integers"),
            )),
            _ => Err(ConfigError::invalid("seed", n, "an integer or null")),
        },
        Some(obj @ Value::Object(_)) => match class_and_config(obj)? {
            Some((class, cfg)) if class == "SeedGenerator" => parse_seed(cfg.get("seed")),
            _ => Err(ConfigError::invalid(
                "seed",
                obj,
                "an integer, null or a serialized SeedGenerator",
            )),
        },
        Some(other) => Err(ConfigError::invalid("seed", other, "an integer or null")),
    }
}

/// Fails on config keys the Keras class would reject (`__init__() got an unexpected keyword`).
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

/// `input_axes` / `output_axes` (explicit fan axes) are not supported; `null` is accepted.
fn check_no_axes(cfg: &Map<String, Value>) -> Result<(), ConfigError> {
    for key in ["input_axes", "output_axes"] {
        if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
            return Err(ConfigError::unsupported(
                "initializer option",
                format!("`{key}` = {v} (explicit fan axes) is not supported; only null"),
            ));
        }
    }
    Ok(())
}

fn check_finite(arg: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(ConfigError::invalid(arg, v, "a finite number"))
    }
}

fn seed_json(seed: Option<u64>) -> Value {
    seed.map_or(Value::Null, Value::from)
}

/// `(fan_in, fan_out)` of a weight shape, exactly as Keras' `compute_fans`: `()` → (1, 1);
/// `(n,)` → (n, n); `(a, b)` → (a, b); `(…, a, b)` → receptive field × a, receptive field × b.
pub fn compute_fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [a, b] => (*a, *b),
        [rest @ .., a, b] => {
            let rf = rest.iter().fold(1usize, |acc, &d| acc.saturating_mul(d));
            (a.saturating_mul(rf), b.saturating_mul(rf))
        }
    }
}

impl Initializer {
    /// Keras' `glorot_uniform` (GRU kernel default).
    pub fn glorot_uniform() -> Self {
        VsPreset::GlorotUniform.initializer(None)
    }

    /// Keras' `glorot_normal`.
    pub fn glorot_normal() -> Self {
        VsPreset::GlorotNormal.initializer(None)
    }

    /// Keras' `he_uniform`.
    pub fn he_uniform() -> Self {
        VsPreset::HeUniform.initializer(None)
    }

    /// Keras' `he_normal`.
    pub fn he_normal() -> Self {
        VsPreset::HeNormal.initializer(None)
    }

    /// Keras' `lecun_uniform`.
    pub fn lecun_uniform() -> Self {
        VsPreset::LecunUniform.initializer(None)
    }

    /// Keras' `lecun_normal`.
    pub fn lecun_normal() -> Self {
        VsPreset::LecunNormal.initializer(None)
    }

    /// Keras' `orthogonal` with gain 1 (GRU recurrent-kernel default).
    pub fn orthogonal() -> Self {
        Initializer::Orthogonal {
            gain: 1.0,
            seed: None,
        }
    }

    /// Keras' `zeros` (GRU bias default).
    pub fn zeros() -> Self {
        Initializer::Zeros
    }

    /// Looks up a Keras string identifier: class names (`GlorotUniform`), their snake_case
    /// (`glorot_uniform`) and the aliases `normal`, `uniform`, `zero`, `one`,
    /// `IdentityInitializer`, `OrthogonalInitializer`; Keras defaults for the arguments.
    /// `"constant"` fails, as in Keras (it needs a `value`).
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Self::build(lookup(name)?, name, &Map::new())
    }

    /// Reads a Keras identifier: a string (see [`Initializer::from_name`]) or a serialized object
    /// `{"class_name", "config", …}` as found in `config.json` / legacy `model_config`. Keys
    /// around it (`module`, `registered_name`, `shared_object_id`, …) are ignored; unknown keys
    /// inside `config` are rejected as Keras rejects them.
    pub fn from_keras(v: &Value) -> Result<Self, ConfigError> {
        match class_and_config(v)? {
            None => Err(ConfigError::invalid(
                "initializer",
                "null",
                "an initializer name or a serialized initializer",
            )),
            Some((class, cfg)) => Self::build(lookup(&class)?, &class, &cfg),
        }
    }

    fn build(kind: Kind, class: &str, cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let init = match kind {
            Kind::Zeros => {
                check_keys(class, cfg, &[])?;
                Initializer::Zeros
            }
            Kind::Ones => {
                check_keys(class, cfg, &[])?;
                Initializer::Ones
            }
            Kind::Constant => {
                check_keys(class, cfg, &["value"])?;
                let v = cfg.get("value").ok_or_else(|| {
                    ConfigError::invalid(
                        "value",
                        "missing",
                        "a number (Keras' Constant initializer has no default value here)",
                    )
                })?;
                let value = v
                    .as_f64()
                    .ok_or_else(|| ConfigError::invalid("value", v, "a number"))?;
                Initializer::Constant { value }
            }
            Kind::Identity => {
                check_keys(class, cfg, &["gain"])?;
                Initializer::Identity {
                    gain: get_f64(cfg, "gain", 1.0)?,
                }
            }
            Kind::RandomNormal | Kind::TruncatedNormal => {
                check_keys(class, cfg, &["seed", "mean", "stddev"])?;
                let mean = get_f64(cfg, "mean", 0.0)?;
                let stddev = get_f64(cfg, "stddev", 0.05)?;
                let seed = parse_seed(cfg.get("seed"))?;
                if kind == Kind::RandomNormal {
                    Initializer::RandomNormal { mean, stddev, seed }
                } else {
                    Initializer::TruncatedNormal { mean, stddev, seed }
                }
            }
            Kind::RandomUniform => {
                check_keys(class, cfg, &["seed", "minval", "maxval"])?;
                Initializer::RandomUniform {
                    minval: get_f64(cfg, "minval", -0.05)?,
                    maxval: get_f64(cfg, "maxval", 0.05)?,
                    seed: parse_seed(cfg.get("seed"))?,
                }
            }
            Kind::VarianceScaling => {
                check_keys(
                    class,
                    cfg,
                    &[
                        "seed",
                        "scale",
                        "mode",
                        "distribution",
                        "input_axes",
                        "output_axes",
                    ],
                )?;
                check_no_axes(cfg)?;
                Initializer::VarianceScaling {
                    scale: get_f64(cfg, "scale", 1.0)?,
                    mode: FanMode::from_name(get_str(cfg, "mode")?.unwrap_or("fan_in"))?,
                    distribution: Distribution::from_name(
                        get_str(cfg, "distribution")?.unwrap_or("truncated_normal"),
                    )?,
                    seed: parse_seed(cfg.get("seed"))?,
                    preset: None,
                }
            }
            Kind::Preset(p) => {
                check_keys(class, cfg, &["seed", "input_axes", "output_axes"])?;
                check_no_axes(cfg)?;
                p.initializer(parse_seed(cfg.get("seed"))?)
            }
            Kind::Orthogonal => {
                check_keys(class, cfg, &["seed", "gain"])?;
                Initializer::Orthogonal {
                    gain: get_f64(cfg, "gain", 1.0)?,
                    seed: parse_seed(cfg.get("seed"))?,
                }
            }
        };
        init.validate()?;
        Ok(init)
    }

    /// Checks the arguments: finite numbers, `stddev ≥ 0`, `minval ≤ maxval`, `scale > 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Initializer::Zeros | Initializer::Ones => Ok(()),
            Initializer::Constant { value } => check_finite("value", value),
            Initializer::Identity { gain } | Initializer::Orthogonal { gain, .. } => {
                check_finite("gain", gain)
            }
            Initializer::RandomNormal { mean, stddev, .. }
            | Initializer::TruncatedNormal { mean, stddev, .. } => {
                check_finite("mean", mean)?;
                if stddev.is_finite() && stddev >= 0.0 {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        "stddev",
                        stddev,
                        "a finite number ≥ 0",
                    ))
                }
            }
            Initializer::RandomUniform { minval, maxval, .. } => {
                check_finite("minval", minval)?;
                check_finite("maxval", maxval)?;
                if minval <= maxval {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        "minval",
                        minval,
                        format!("a number ≤ maxval ({maxval})"),
                    ))
                }
            }
            Initializer::VarianceScaling { scale, .. } => {
                if scale.is_finite() && scale > 0.0 {
                    Ok(())
                } else {
                    Err(ConfigError::invalid("scale", scale, "a finite number > 0"))
                }
            }
        }
    }

    /// The preset this initializer is, when its parameters match the preset it claims.
    fn effective_preset(&self) -> Option<VsPreset> {
        match *self {
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                preset: Some(p),
                ..
            } if p.params() == (scale, mode, distribution) => Some(p),
            _ => None,
        }
    }

    /// The Keras class name this serializes as (`"GlorotUniform"`, `"Orthogonal"`, …).
    pub fn class_name(&self) -> &'static str {
        if let Some(p) = self.effective_preset() {
            return p.class_name();
        }
        match self {
            Initializer::Zeros => "Zeros",
            Initializer::Ones => "Ones",
            Initializer::Constant { .. } => "Constant",
            Initializer::Identity { .. } => "Identity",
            Initializer::RandomNormal { .. } => "RandomNormal",
            Initializer::RandomUniform { .. } => "RandomUniform",
            Initializer::TruncatedNormal { .. } => "TruncatedNormal",
            Initializer::VarianceScaling { .. } => "VarianceScaling",
            Initializer::Orthogonal { .. } => "Orthogonal",
        }
    }

    /// The initializer's own seed, if any.
    pub fn seed(&self) -> Option<u64> {
        match *self {
            Initializer::RandomNormal { seed, .. }
            | Initializer::RandomUniform { seed, .. }
            | Initializer::TruncatedNormal { seed, .. }
            | Initializer::VarianceScaling { seed, .. }
            | Initializer::Orthogonal { seed, .. } => seed,
            _ => None,
        }
    }

    /// The same initializer with its own seed replaced (no effect on deterministic ones).
    pub fn with_seed(mut self, new_seed: Option<u64>) -> Self {
        match &mut self {
            Initializer::RandomNormal { seed, .. }
            | Initializer::RandomUniform { seed, .. }
            | Initializer::TruncatedNormal { seed, .. }
            | Initializer::VarianceScaling { seed, .. }
            | Initializer::Orthogonal { seed, .. } => *seed = new_seed,
            _ => {}
        }
        self
    }

    /// Serializes as Keras 3.15.1 does (`keras.initializers.serialize`, the form inside a layer
    /// config): `{"module": "keras.initializers", "class_name", "config", "registered_name": null}`.
    ///
    /// Keras writes `Identity` with an empty config (its `gain` is lost); grucell writes `{}` for
    /// gain 1 and `{"gain": g}` otherwise, which Keras reads back correctly.
    pub fn to_keras(&self) -> Value {
        let config = if self.effective_preset().is_some() {
            json!({"seed": seed_json(self.seed()), "input_axes": null, "output_axes": null})
        } else {
            match *self {
                Initializer::Zeros | Initializer::Ones => json!({}),
                Initializer::Constant { value } => json!({ "value": value }),
                Initializer::Identity { gain: 1.0 } => json!({}),
                Initializer::Identity { gain } => json!({ "gain": gain }),
                Initializer::RandomNormal { mean, stddev, seed }
                | Initializer::TruncatedNormal { mean, stddev, seed } => {
                    json!({"seed": seed_json(seed), "mean": mean, "stddev": stddev})
                }
                Initializer::RandomUniform {
                    minval,
                    maxval,
                    seed,
                } => json!({"seed": seed_json(seed), "minval": minval, "maxval": maxval}),
                Initializer::VarianceScaling {
                    scale,
                    mode,
                    distribution,
                    seed,
                    ..
                } => json!({
                    "seed": seed_json(seed), "scale": scale, "mode": mode.name(),
                    "distribution": distribution.name(), "input_axes": null, "output_axes": null
                }),
                Initializer::Orthogonal { gain, seed } => {
                    json!({"seed": seed_json(seed), "gain": gain})
                }
            }
        };
        json!({
            "module": "keras.initializers",
            "class_name": self.class_name(),
            "config": config,
            "registered_name": null,
        })
    }

    /// Creates a weight of `shape`. Random initializers use their own seed when they have one,
    /// else `fallback_seed` (give each weight of a model its own fallback).
    ///
    /// Errors: invalid arguments, `Identity` on a non-2-D shape, `Orthogonal` on a shape of
    /// rank < 2, a shape whose element count overflows.
    pub fn init<T: Float>(
        &self,
        shape: &[usize],
        fallback_seed: u64,
    ) -> Result<Tensor<T>, ConfigError> {
        self.validate()?;
        let n = checked_numel(shape).ok_or_else(|| {
            ConfigError::invalid(
                "shape",
                format!("{shape:?}"),
                "a shape whose element count fits in usize",
            )
        })?;
        let mut rng = StdRng::seed_from_u64(self.seed().unwrap_or(fallback_seed));
        let data: Vec<f64> = match *self {
            Initializer::Zeros => vec![0.0; n],
            Initializer::Ones => vec![1.0; n],
            Initializer::Constant { value } => vec![value; n],
            Initializer::Identity { gain } => match shape {
                // n = rows·cols, so `cols` is non-zero whenever the closure runs.
                [_, cols] => (0..n)
                    .map(|i| if i / cols == i % cols { gain } else { 0.0 })
                    .collect(),
                _ => {
                    return Err(ConfigError::invalid(
                        "shape",
                        format!("{shape:?}"),
                        "a 2-D shape (the Identity initializer only makes matrices)",
                    ))
                }
            },
            Initializer::RandomNormal { mean, stddev, .. } => {
                (0..n).map(|_| mean + stddev * normal(&mut rng)).collect()
            }
            Initializer::TruncatedNormal { mean, stddev, .. } => (0..n)
                .map(|_| mean + stddev * truncated(&mut rng))
                .collect(),
            Initializer::RandomUniform { minval, maxval, .. } => {
                (0..n).map(|_| uniform(&mut rng, minval, maxval)).collect()
            }
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                ..
            } => {
                let (fan_in, fan_out) = compute_fans(shape);
                let (fi, fo) = (fan_in as f64, fan_out as f64);
                let denom = match mode {
                    FanMode::FanIn => fi,
                    FanMode::FanOut => fo,
                    FanMode::FanAvg => (fi + fo) / 2.0,
                };
                let s = scale / denom.max(1.0);
                match distribution {
                    Distribution::TruncatedNormal => {
                        let sd = s.sqrt() / TRUNC_STD;
                        (0..n).map(|_| sd * truncated(&mut rng)).collect()
                    }
                    Distribution::UntruncatedNormal => {
                        let sd = s.sqrt();
                        (0..n).map(|_| sd * normal(&mut rng)).collect()
                    }
                    Distribution::Uniform => {
                        let l = (3.0 * s).sqrt();
                        (0..n).map(|_| uniform(&mut rng, -l, l)).collect()
                    }
                }
            }
            Initializer::Orthogonal { gain, .. } => orthogonal(shape, n, gain, &mut rng)?,
        };
        let data: Vec<T> = data.into_iter().map(T::of).collect();
        Tensor::new(shape.to_vec(), data)
            .map_err(|e| ConfigError::invalid("shape", format!("{shape:?}"), e.to_string()))
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    rng.sample(StandardNormal)
}

/// A unit normal resampled until it lies in `[-2, 2]` (TensorFlow's truncated normal).
fn truncated(rng: &mut StdRng) -> f64 {
    loop {
        let z: f64 = rng.sample(StandardNormal);
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

/// `minval + (maxval − minval)·u`, `u ~ U[0, 1)`, as TensorFlow computes it.
fn uniform(rng: &mut StdRng, minval: f64, maxval: f64) -> f64 {
    let u: f64 = rng.random();
    minval + (maxval - minval) * u
}

/// Keras' `Orthogonal.__call__`: flatten to `(rows, cols)` with `cols = shape[-1]`, draw a normal
/// `(max, min)` matrix, QR it (faer), multiply the columns of Q by `sign(diag R)`, transpose
/// when `rows < cols`, times `gain`.
fn orthogonal(
    shape: &[usize],
    n: usize,
    gain: f64,
    rng: &mut StdRng,
) -> Result<Vec<f64>, ConfigError> {
    let (cols, lead) = match shape.split_last() {
        Some((c, lead)) if !lead.is_empty() => (*c, lead),
        _ => {
            return Err(ConfigError::invalid(
                "shape",
                format!("{shape:?}"),
                "a shape of rank ≥ 2 (the Orthogonal initializer)",
            ))
        }
    };
    let rows = lead.iter().product::<usize>();
    if n == 0 {
        return Ok(Vec::new());
    }
    let (m, k) = (rows.max(cols), rows.min(cols));
    let a: Vec<f64> = (0..m * k).map(|_| normal(rng)).collect();
    let a = faer::Mat::<f64>::from_fn(m, k, |i, j| a[i * k + j]);
    let qr = a.qr();
    let q = qr.compute_thin_Q();
    let r = qr.thin_R();
    let sign: Vec<f64> = (0..k)
        .map(|j| {
            let d = r[(j, j)];
            if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            }
        })
        .collect();
    let mut out = vec![0.0; n];
    for i in 0..m {
        for (j, s) in sign.iter().enumerate() {
            let v = gain * q[(i, j)] * s;
            // Q is m × k; output is Q (rows ≥ cols) or Qᵀ (rows < cols), row-major.
            let idx = if rows < cols {
                j * cols + i
            } else {
                i * cols + j
            };
            out[idx] = v;
        }
    }
    Ok(out)
}

impl std::fmt::Display for Initializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.class_name())
    }
}

impl std::str::FromStr for Initializer {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Initializer::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (mean, var.sqrt(), min, max)
    }

    fn sample(init: &Initializer, shape: &[usize], seed: u64) -> Vec<f64> {
        init.init::<f64>(shape, seed).unwrap().into_data()
    }

    /// Mean within 5 standard errors of `mean`, std within 2 % of `std`.
    fn check_moments(v: &[f64], mean: f64, std: f64, what: &str) {
        let (m, s, _, _) = stats(v);
        let se = std / (v.len() as f64).sqrt();
        assert!(
            (m - mean).abs() <= 5.0 * se + 1e-12,
            "{what}: mean {m}, want {mean}"
        );
        assert!((s - std).abs() <= 0.02 * std, "{what}: std {s}, want {std}");
    }

    // Variance of a unit normal truncated to ±2: 1 − 2·2·φ(2)/(Φ(2) − Φ(−2)).
    fn truncated_unit_std() -> f64 {
        let phi2 = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mass = libm::erf(2.0 / std::f64::consts::SQRT_2);
        (1.0 - 4.0 * phi2 / mass).sqrt()
    }

    #[test]
    fn fans_like_keras() {
        assert_eq!(compute_fans(&[]), (1, 1));
        assert_eq!(compute_fans(&[12]), (12, 12));
        assert_eq!(compute_fans(&[5, 12]), (5, 12));
        assert_eq!(compute_fans(&[3, 3, 4, 8]), (36, 72));
    }

    #[test]
    fn truncated_constant_is_the_truncated_std() {
        assert!((truncated_unit_std() - TRUNC_STD).abs() < 1e-12);
    }

    #[test]
    fn uniform_family_bounds_and_moments() {
        let shape = [256, 768];
        let cases = [
            (
                Initializer::glorot_uniform(),
                (6.0f64 / (256.0 + 768.0)).sqrt(),
            ),
            (Initializer::he_uniform(), (6.0f64 / 256.0).sqrt()),
            (Initializer::lecun_uniform(), (3.0f64 / 256.0).sqrt()),
            (
                Initializer::VarianceScaling {
                    scale: 2.0,
                    mode: FanMode::FanOut,
                    distribution: Distribution::Uniform,
                    seed: None,
                    preset: None,
                },
                (6.0f64 / 768.0).sqrt(),
            ),
        ];
        for (init, limit) in cases {
            let v = sample(&init, &shape, 7);
            let (_, _, min, max) = stats(&v);
            assert!(
                min >= -limit && max <= limit,
                "{init}: [{min}, {max}] vs ±{limit}"
            );
            assert!(
                min < -0.99 * limit && max > 0.99 * limit,
                "{init} does not fill its range"
            );
            check_moments(&v, 0.0, limit / 3f64.sqrt(), &init.to_string());
        }
        let v = sample(
            &Initializer::RandomUniform {
                minval: -1.0,
                maxval: 2.0,
                seed: None,
            },
            &shape,
            3,
        );
        let (_, _, min, max) = stats(&v);
        assert!(min >= -1.0 && max < 2.0);
        check_moments(&v, 0.5, 3.0 / 12f64.sqrt(), "uniform(-1,2)");
        // f32 draws stay inside the limits too (rounding may reach them, not cross them).
        let l = (6.0f64 / 1024.0).sqrt() as f32;
        let w = Initializer::glorot_uniform()
            .init::<f32>(&shape, 1)
            .unwrap();
        assert!(w.data().iter().all(|x| x.abs() <= l));
    }

    #[test]
    fn normal_family_bounds_and_moments() {
        let shape = [256, 768];
        let t = truncated_unit_std();
        let vs = |scale: f64, n: f64| (scale / n).sqrt();
        let cases = [
            (Initializer::glorot_normal(), vs(1.0, 512.0), true),
            (Initializer::he_normal(), vs(2.0, 256.0), true),
            (Initializer::lecun_normal(), vs(1.0, 256.0), true),
            (
                Initializer::from_name("variance_scaling").unwrap(),
                vs(1.0, 256.0),
                true,
            ),
            (
                Initializer::VarianceScaling {
                    scale: 0.5,
                    mode: FanMode::FanAvg,
                    distribution: Distribution::UntruncatedNormal,
                    seed: None,
                    preset: None,
                },
                vs(0.5, 512.0),
                false,
            ),
        ];
        for (init, target_std, truncated) in cases {
            let v = sample(&init, &shape, 11);
            check_moments(&v, 0.0, target_std, &init.to_string());
            let (_, _, min, max) = stats(&v);
            if truncated {
                let bound = 2.0 * target_std / TRUNC_STD;
                assert!(
                    min >= -bound && max <= bound,
                    "{init}: [{min}, {max}] vs ±{bound}"
                );
                assert!(max > 0.99 * bound);
            } else {
                assert!(max > 3.0 * target_std, "{init} looks truncated");
            }
        }
        let v = sample(&Initializer::from_name("normal").unwrap(), &shape, 5);
        check_moments(&v, 0.0, 0.05, "random_normal");
        let init = Initializer::TruncatedNormal {
            mean: 0.5,
            stddev: 0.1,
            seed: None,
        };
        let v = sample(&init, &shape, 5);
        check_moments(&v, 0.5, 0.1 * t, "truncated_normal(0.5, 0.1)");
        let (_, _, min, max) = stats(&v);
        assert!(min >= 0.3 - 1e-12 && max <= 0.7 + 1e-12);
    }

    fn gram(w: &[f64], rows: usize, cols: usize, by_rows: bool) -> Vec<f64> {
        let k = if by_rows { rows } else { cols };
        let mut g = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                g[a * k + b] = if by_rows {
                    (0..cols).map(|j| w[a * cols + j] * w[b * cols + j]).sum()
                } else {
                    (0..rows).map(|i| w[i * cols + a] * w[i * cols + b]).sum()
                };
            }
        }
        g
    }

    #[test]
    fn orthogonal_rows_or_columns_orthonormal() {
        for (rows, cols, gain) in [(16, 48, 1.0), (48, 16, 1.0), (32, 96, 2.0), (20, 20, 0.5)] {
            let init = Initializer::Orthogonal { gain, seed: None };
            let w = sample(&init, &[rows, cols], 9);
            let by_rows = rows <= cols;
            let g = gram(&w, rows, cols, by_rows);
            let k = rows.min(cols);
            for a in 0..k {
                for b in 0..k {
                    let want = if a == b { gain * gain } else { 0.0 };
                    assert!(
                        (g[a * k + b] - want).abs() < 1e-10,
                        "({rows},{cols}) gain {gain}: G[{a},{b}] = {}",
                        g[a * k + b]
                    );
                }
            }
        }
        // (u, 3u) in f32: R Rᵀ = I to f32 precision; the u×u gate blocks are not orthogonal.
        let u = 32;
        let w = Initializer::orthogonal()
            .init::<f32>(&[u, 3 * u], 4)
            .unwrap();
        let w: Vec<f64> = w.data().iter().map(|&x| x as f64).collect();
        let g = gram(&w, u, 3 * u, true);
        for a in 0..u {
            for b in 0..u {
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((g[a * u + b] - want).abs() < 2e-6);
            }
        }
        let block: Vec<f64> = (0..u)
            .flat_map(|i| w[i * 3 * u..i * 3 * u + u].to_vec())
            .collect();
        let gb = gram(&block, u, u, true);
        let dev = (0..u * u)
            .map(|i| (gb[i] - if i % (u + 1) == 0 { 1.0 } else { 0.0 }).abs())
            .fold(0.0, f64::max);
        assert!(dev > 0.1, "gate block unexpectedly orthogonal ({dev})");
        // rank ≥ 3: flattened to (prod(shape[..-1]), shape[-1]).
        let w = sample(&Initializer::orthogonal(), &[2, 3, 4], 1);
        let g = gram(&w, 6, 4, false);
        for a in 0..4 {
            assert!((g[a * 4 + a] - 1.0).abs() < 1e-10);
        }
        assert!(Initializer::orthogonal().init::<f32>(&[5], 0).is_err());
    }

    #[test]
    fn identity_and_constants() {
        let w = Initializer::Identity { gain: 2.0 }
            .init::<f32>(&[2, 3], 0)
            .unwrap();
        assert_eq!(w.data(), &[2.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        let w = Initializer::from_name("identity")
            .unwrap()
            .init::<f64>(&[3, 2], 0)
            .unwrap();
        assert_eq!(w.data(), &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(Initializer::Identity { gain: 1.0 }
            .init::<f32>(&[4], 0)
            .is_err());
        assert!(Initializer::Identity { gain: 1.0 }
            .init::<f32>(&[2, 2, 2], 0)
            .is_err());
        let w = Initializer::Constant { value: -2.5 }
            .init::<f32>(&[2, 6], 0)
            .unwrap();
        assert!(w.data().iter().all(|&x| x == -2.5));
        assert!(Initializer::Ones
            .init::<f64>(&[3], 0)
            .unwrap()
            .data()
            .iter()
            .all(|&x| x == 1.0));
        assert!(Initializer::Zeros
            .init::<f64>(&[2, 3], 0)
            .unwrap()
            .data()
            .iter()
            .all(|&x| x == 0.0));
        assert_eq!(
            Initializer::glorot_uniform()
                .init::<f32>(&[0, 12], 0)
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            Initializer::orthogonal()
                .init::<f32>(&[0, 12], 0)
                .unwrap()
                .shape(),
            &[0, 12]
        );
    }

    #[test]
    fn seeds_reproducible_and_distinct() {
        for init in [
            Initializer::glorot_uniform(),
            Initializer::orthogonal(),
            Initializer::from_name("truncated_normal").unwrap(),
            Initializer::from_name("normal").unwrap(),
        ] {
            let a = sample(&init, &[8, 24], 1);
            assert_eq!(a, sample(&init, &[8, 24], 1), "{init} not reproducible");
            assert_ne!(a, sample(&init, &[8, 24], 2), "{init} ignores the seed");
            // Own seed wins over the fallback.
            let own = init.clone().with_seed(Some(77));
            assert_eq!(sample(&own, &[8, 24], 1), sample(&own, &[8, 24], 2));
            assert_ne!(sample(&own, &[8, 24], 1), a);
            assert_eq!(own.seed(), Some(77));
        }
    }

    #[test]
    fn validation_names_the_argument() {
        let bad = [
            (
                Initializer::RandomNormal {
                    mean: 0.0,
                    stddev: -1.0,
                    seed: None,
                },
                "stddev",
            ),
            (
                Initializer::TruncatedNormal {
                    mean: f64::NAN,
                    stddev: 1.0,
                    seed: None,
                },
                "mean",
            ),
            (
                Initializer::RandomUniform {
                    minval: 1.0,
                    maxval: 0.0,
                    seed: None,
                },
                "minval",
            ),
            (
                Initializer::Constant {
                    value: f64::INFINITY,
                },
                "value",
            ),
            (
                Initializer::Orthogonal {
                    gain: f64::NAN,
                    seed: None,
                },
                "gain",
            ),
            (
                Initializer::VarianceScaling {
                    scale: 0.0,
                    mode: FanMode::FanIn,
                    distribution: Distribution::Uniform,
                    seed: None,
                    preset: None,
                },
                "scale",
            ),
        ];
        for (init, arg) in bad {
            match init.init::<f32>(&[2, 2], 0) {
                Err(ConfigError::InvalidValue { arg: a, .. }) => assert_eq!(a, arg),
                other => panic!("{init:?}: {other:?}"),
            }
        }
        let e = Initializer::from_keras(&json!({"class_name": "VarianceScaling",
            "config": {"mode": "fan_sum"}}))
        .unwrap_err();
        assert!(e.to_string().contains("fan_sum"), "{e}");
        let e = Initializer::from_keras(&json!({"class_name": "VarianceScaling",
            "config": {"distribution": "cauchy"}}))
        .unwrap_err();
        assert!(e.to_string().contains("cauchy"), "{e}");
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(Initializer::from_name("zero").unwrap(), Initializer::Zeros);
        assert_eq!(Initializer::from_name("one").unwrap(), Initializer::Ones);
        assert_eq!(
            Initializer::from_name("uniform").unwrap(),
            Initializer::RandomUniform {
                minval: -0.05,
                maxval: 0.05,
                seed: None
            }
        );
        assert_eq!(
            Initializer::from_name("GlorotUniform").unwrap(),
            Initializer::glorot_uniform()
        );
        assert_eq!(
            Initializer::from_name("OrthogonalInitializer").unwrap(),
            Initializer::orthogonal()
        );
        assert!(matches!(
            Initializer::from_name("constant"),
            Err(ConfigError::InvalidValue { .. })
        ));
        assert!(matches!(
            Initializer::from_name("Glorot_Uniform"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert!(matches!(
            Initializer::from_name("stft"),
            Err(ConfigError::Unsupported { .. })
        ));
        // A preset whose parameters were changed serializes as VarianceScaling.
        let mut g = Initializer::glorot_uniform();
        if let Initializer::VarianceScaling { scale, .. } = &mut g {
            *scale = 3.0;
        }
        assert_eq!(g.class_name(), "VarianceScaling");
        assert_eq!(
            Initializer::from_keras(&g.to_keras()).unwrap().to_keras(),
            g.to_keras()
        );
    }
}
