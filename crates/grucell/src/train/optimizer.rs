//! Keras 3 optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, Nadam, Adamax, Lion, Adadelta) with
//! Keras 3.15.1's exact update rules.
//!
//! One [`Optimizer::step`] is one Keras `optimizer.apply_gradients(...)` (TensorFlow backend), in
//! Keras' order:
//!
//! 0. with `loss_scale_factor s`, the gradients (those of the loss times `s`) are **divided by
//!    `s`** ([`OptimizerConfig::loss_scale_factor`]);
//! 1. **clip** the gradients (at most one of the three options, each only when `> 0`):
//!    * `clipnorm c`, per variable (`tf.clip_by_norm`): `g ← (g · c) / max(‖g‖₂, c)`;
//!    * `global_clipnorm c`, over all variables: `n = √(Σ_vars Σ g²)`,
//!      `g ← g · (c · min(1/n, 1/c) + (n − n))` (NaN for a non-finite norm, as Keras);
//!    * `clipvalue c`: `g ← clip(g, −c, c)`;
//! 2. **decoupled weight decay** (`weight_decay = wd`, the base optimizer's option, which AdamW
//!    makes mandatory): `θ ← θ − (θ · wd) · lr`, before the update;
//! 3. the optimizer's **update** (formulas on each [`OptimizerKind`] variant), with
//!    `t = iterations + 1` in the update of step `iterations` (0-based), at the learning rate of
//!    that step ([`LearningRate`]: a constant or a schedule of `iterations`);
//! 4. with `use_ema`, the **moving average** of the weights ([`Ema`]);
//! 5. `iterations += 1`.
//!
//! With `gradient_accumulation_steps = k` (Keras' option), steps 1–3 happen on every `k`-th
//! step only, with the mean of the accumulated gradients; the other steps only add their
//! gradients to the accumulators (then 4 and 5), and `t` counts updates
//! ([`OptimizerConfig::gradient_accumulation_steps`]).
//!
//! Constraints are the caller's business (Keras applies them right after every step).
//!
//! **Row gradients** ([`RowGrads`], [`Optimizer::step_with_rows`]): TensorFlow gives the gradient
//! of an `Embedding` table as `IndexedSlices`, one row of values per looked-up index (an index
//! that occurs twice gives two rows), and Keras' optimizer ops keep that form where they can.
//! Where a formula squares the gradient, the rows are squared *before* they are summed per
//! index: `Σ gᵢ²` instead of `(Σ gᵢ)²` (Adam's, Nadam's and RMSprop's `v`, Adagrad's and
//! Adadelta's accumulators), Adamax's `|g|` is likewise `Σ |gᵢ|`, and so are the norms of
//! `clipnorm` and `global_clipnorm`; `clipvalue` clips each row before the sum.
//! `global_clipnorm`'s scaling makes the gradient dense again (later squares are `(Σ gᵢ)²`).
//! Measured against Keras 3.15.1 for every optimizer and clip option.
//!
//! Arithmetic is in the variables' type `T`, with every constant rounded to `T` where TensorFlow
//! rounds it (`1 − β₁` is computed in `f64` then rounded, `β₁ᵗ` is `powf` in `T`). Values Keras
//! passes through `ops.cast`/`tf.cast` become float32 first, so even an `f64` optimizer uses
//! `f64(f32(x))` for them, exactly as Keras does for float64 variables: the learning rate (a
//! float32 `floatx` variable), SGD's momentum, Adam's β₁/β₂ inside `βᵗ`, the weight decay and
//! Adagrad's initial accumulator value.

use crate::error::{ConfigError, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::get_bool;
use crate::train::schedule::LearningRate;
use serde_json::{json, Map, Value};

/// The optimizer algorithm and its own hyper-parameters (Keras' defaults in each constructor of
/// [`OptimizerConfig`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `keras.optimizers.SGD` (default `learning_rate` 0.01).
    ///
    /// Without momentum: `θ ← θ − g·lr`. With momentum `μ > 0` (slot `momentum`, zeros):
    /// `m ← m·μ − g·lr`, then `θ ← θ + m`, or with `nesterov`: `θ ← θ + (m·μ − g·lr)` (new `m`).
    Sgd {
        /// μ in `[0, 1]` (default 0).
        momentum: f64,
        /// Nesterov momentum (default false).
        nesterov: bool,
    },
    /// `keras.optimizers.Adam` (default `learning_rate` 0.001).
    ///
    /// Slots `momentum` m and `velocity` v (zeros; plus `velocity_hat` with `amsgrad`):
    /// `α = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)`, `m ← m + (g − m)(1 − β₁)`, `v ← v + (g² − v)(1 − β₂)`,
    /// amsgrad: `v̂ ← max(v̂, v)`, `v ← v̂`; then `θ ← θ − (m·α) / (√v + ε)`.
    Adam {
        /// β₁ (default 0.9).
        beta_1: f64,
        /// β₂ (default 0.999).
        beta_2: f64,
        /// ε (default 1e-7).
        epsilon: f64,
        /// AMSGrad variant (default false).
        amsgrad: bool,
    },
    /// `keras.optimizers.AdamW`: exactly [`OptimizerKind::Adam`] plus the decoupled weight decay
    /// of step 2, which must be set (`OptimizerConfig::weight_decay`, Keras default 0.004).
    AdamW {
        /// β₁ (default 0.9).
        beta_1: f64,
        /// β₂ (default 0.999).
        beta_2: f64,
        /// ε (default 1e-7).
        epsilon: f64,
        /// AMSGrad variant (default false).
        amsgrad: bool,
    },
    /// `keras.optimizers.RMSprop` (default `learning_rate` 0.001).
    ///
    /// Slot `velocity` v (zeros): `v ← ρ·v + (1 − ρ)·g²`; `centered` adds slot `average_gradient`
    /// a: `a ← ρ·a + (1 − ρ)·g`, `den = (v − a²) + ε`, else `den = v + ε`;
    /// `Δ = (lr·g) / √den`; with momentum `μ > 0` (slot `momentum` m): `m ← μ·m + Δ`,
    /// `θ ← θ − m`, else `θ ← θ − Δ`.
    RmsProp {
        /// ρ (default 0.9).
        rho: f64,
        /// μ ≥ 0 (default 0).
        momentum: f64,
        /// ε (default 1e-7).
        epsilon: f64,
        /// Centered variant (default false).
        centered: bool,
    },
    /// `keras.optimizers.Adagrad` (default `learning_rate` 0.001).
    ///
    /// Slot `accumulator` A (initialized to `initial_accumulator_value`): `A ← A + g²`,
    /// `θ ← θ − (lr·g) / √(A + ε)`.
    Adagrad {
        /// Initial value of the accumulators (default 0.1).
        initial_accumulator_value: f64,
        /// ε (default 1e-7).
        epsilon: f64,
    },
    /// `keras.optimizers.Nadam` (default `learning_rate` 0.001): Adam with Nesterov momentum.
    ///
    /// Slots `momentum` m and `velocity` v (zeros) and one scalar, the product `Π` of the `μ`'s
    /// (starts at 1; Keras saves it last, as `nadam/variable`). Each step first sets
    /// `Π ← Π·β₁·(1 − ½·0.96ᵗ)`, then per variable with `μₜ = β₁(1 − ½·0.96ᵗ)`,
    /// `μₜ₊₁ = β₁(1 − ½·0.96ᵗ⁺¹)`: `m ← m + (g − m)(1 − β₁)`, `v ← v + (g² − v)(1 − β₂)`,
    /// `m̂ = μₜ₊₁·m / (1 − Π·μₜ₊₁) + (1 − μₜ)·g / (1 − Π)`, `v̂ = v / (1 − β₂ᵗ)`,
    /// `θ ← θ − m̂·lr / (√v̂ + ε)`.
    Nadam {
        /// β₁ (default 0.9).
        beta_1: f64,
        /// β₂ (default 0.999).
        beta_2: f64,
        /// ε (default 1e-7).
        epsilon: f64,
    },
    /// `keras.optimizers.Adamax` (default `learning_rate` 0.001): Adam with the infinity norm.
    ///
    /// Slots `momentum` m and `norm` u (zeros): `m ← m + (g − m)(1 − β₁)`,
    /// `u ← max(β₂·u, |g|)`, `θ ← θ − lr·m / ((1 − β₁ᵗ)(u + ε))`.
    Adamax {
        /// β₁ (default 0.9).
        beta_1: f64,
        /// β₂ (default 0.999).
        beta_2: f64,
        /// ε (default 1e-7).
        epsilon: f64,
    },
    /// `keras.optimizers.Lion` (default `learning_rate` 0.001).
    ///
    /// Slot `momentum` m (zeros): `θ ← θ − lr·sign(β₁·m + (1 − β₁)·g)`, then
    /// `m ← β₂·m + (1 − β₂)·g`.
    Lion {
        /// β₁ in `(0, 1]` (default 0.9).
        beta_1: f64,
        /// β₂ (default 0.99).
        beta_2: f64,
    },
    /// `keras.optimizers.Adadelta` (default `learning_rate` 0.001).
    ///
    /// Slots `accumulated_grad` A and `accumulated_delta_var` D (zeros):
    /// `A ← ρ·A + (1 − ρ)·g²`, `Δ = −(√(D + ε)·g) / √(A + ε)`, `D ← ρ·D + (1 − ρ)·Δ²`,
    /// `θ ← θ + lr·Δ`.
    Adadelta {
        /// ρ (default 0.95).
        rho: f64,
        /// ε (default 1e-7).
        epsilon: f64,
    },
}

impl OptimizerKind {
    /// Keras' class name (`"SGD"`, `"Adam"`, `"AdamW"`, `"RMSprop"`, `"Adagrad"`, `"Nadam"`,
    /// `"Adamax"`, `"Lion"`, `"Adadelta"`).
    pub fn keras_class_name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "SGD",
            OptimizerKind::Adam { .. } => "Adam",
            OptimizerKind::AdamW { .. } => "AdamW",
            OptimizerKind::RmsProp { .. } => "RMSprop",
            OptimizerKind::Adagrad { .. } => "Adagrad",
            OptimizerKind::Nadam { .. } => "Nadam",
            OptimizerKind::Adamax { .. } => "Adamax",
            OptimizerKind::Lion { .. } => "Lion",
            OptimizerKind::Adadelta { .. } => "Adadelta",
        }
    }

    /// The default Keras object name (`auto_name` of the class): `"sgd"`, `"adam"`, `"adam_w"`,
    /// `"rm_sprop"`, `"adagrad"`, `"nadam"`, `"adamax"`, `"lion"`, `"adadelta"`; it prefixes the
    /// optimizer variables' paths.
    pub fn keras_name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { .. } => "adam",
            OptimizerKind::AdamW { .. } => "adam_w",
            OptimizerKind::RmsProp { .. } => "rm_sprop",
            OptimizerKind::Adagrad { .. } => "adagrad",
            OptimizerKind::Nadam { .. } => "nadam",
            OptimizerKind::Adamax { .. } => "adamax",
            OptimizerKind::Lion { .. } => "lion",
            OptimizerKind::Adadelta { .. } => "adadelta",
        }
    }

    /// Keras' default learning rate for this optimizer (0.01 for SGD, 0.001 otherwise).
    pub fn default_learning_rate(&self) -> f64 {
        match self {
            OptimizerKind::Sgd { .. } => 0.01,
            _ => 0.001,
        }
    }

    /// Names of the per-variable slots, in the order Keras creates them (`build`).
    fn slot_names(&self) -> Vec<&'static str> {
        match *self {
            OptimizerKind::Sgd { momentum, .. } => {
                if momentum != 0.0 {
                    vec!["momentum"]
                } else {
                    vec![]
                }
            }
            OptimizerKind::Adam { amsgrad, .. } | OptimizerKind::AdamW { amsgrad, .. } => {
                if amsgrad {
                    vec!["momentum", "velocity", "velocity_hat"]
                } else {
                    vec!["momentum", "velocity"]
                }
            }
            OptimizerKind::RmsProp {
                momentum, centered, ..
            } => {
                let mut v = vec!["velocity"];
                if momentum > 0.0 {
                    v.push("momentum");
                }
                if centered {
                    v.push("average_gradient");
                }
                v
            }
            OptimizerKind::Adagrad { .. } => vec!["accumulator"],
            OptimizerKind::Nadam { .. } => vec!["momentum", "velocity"],
            OptimizerKind::Adamax { .. } => vec!["momentum", "norm"],
            OptimizerKind::Lion { .. } => vec!["momentum"],
            OptimizerKind::Adadelta { .. } => vec!["accumulated_grad", "accumulated_delta_var"],
        }
    }

    /// The optimizer's own scalar variables after the slots, as (Keras name, initial value):
    /// Nadam's product of momentum factors, which Keras creates unnamed (`nadam/variable`).
    fn scalars(&self) -> &'static [(&'static str, f64)] {
        match self {
            OptimizerKind::Nadam { .. } => &[("variable", 1.0)],
            _ => &[],
        }
    }

    /// Keras' variable order as `(slot, variable)` pairs: slot groups one after the other, except
    /// the first two slots of the optimizers that create them with one `add_optimizer_variables`
    /// call (Adam's momentum/velocity, Nadam's, Adamax's, Adadelta's), interleaved per variable.
    fn keras_order(&self, n_vars: usize) -> Vec<(usize, usize)> {
        let n_slots = self.slot_names().len();
        let mut order = Vec::with_capacity(n_slots * n_vars);
        let interleaved = if matches!(
            self,
            OptimizerKind::Adam { .. }
                | OptimizerKind::AdamW { .. }
                | OptimizerKind::Nadam { .. }
                | OptimizerKind::Adamax { .. }
                | OptimizerKind::Adadelta { .. }
        ) {
            2
        } else {
            1
        };
        let mut s = 0;
        while s < n_slots {
            let group = if s == 0 { interleaved.min(n_slots) } else { 1 };
            for v in 0..n_vars {
                for k in s..s + group {
                    order.push((k, v));
                }
            }
            s += group;
        }
        order
    }
}

/// An optimizer configuration: the algorithm plus Keras' base-optimizer options.
///
/// ```
/// use grucell::train::optimizer::{Optimizer, OptimizerConfig};
///
/// let mut cfg = OptimizerConfig::adam(0.01);
/// cfg.clipnorm = Some(1.0);
/// let mut opt = Optimizer::<f32>::new(cfg, &[3, 2])?;
/// let mut w = vec![0.5f32; 3];
/// let mut b = vec![0.0f32; 2];
/// let mut gw = vec![0.1f32, -0.2, 0.3];
/// let mut gb = vec![1.0f32, 0.0];
/// opt.step(&mut [&mut w, &mut b], &mut [&mut gw, &mut gb])?;
/// assert_eq!(opt.iterations(), 1);
/// // Adam's first step moves every parameter with a non-zero gradient by ≈ lr against its sign
/// assert!((w[0] - 0.49).abs() < 1e-5 && (w[1] - 0.51).abs() < 1e-5 && b[1] == 0.0);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// The algorithm and its hyper-parameters.
    pub kind: OptimizerKind,
    /// The learning rate: a constant (used as its float32 value) or one of Keras' schedules,
    /// evaluated at [`Optimizer::iterations`] before each step.
    pub learning_rate: LearningRate,
    /// Clip each gradient to this L2 norm (disabled when `≤ 0`).
    pub clipnorm: Option<f64>,
    /// Clip every gradient element to `[−clipvalue, clipvalue]` (disabled when `≤ 0`).
    pub clipvalue: Option<f64>,
    /// Clip all gradients together to this global L2 norm (disabled when `≤ 0`).
    pub global_clipnorm: Option<f64>,
    /// Decoupled weight decay `θ ← θ − θ·wd·lr` before each update (any optimizer; AdamW needs it).
    pub weight_decay: Option<f64>,
    /// Keras' `use_ema`: an exponential moving average of the weights (`None`: off, Keras'
    /// default).
    pub ema: Option<Ema>,
    /// Keras' `gradient_accumulation_steps` (`None`: off; else `k ≥ 2`): every step adds its
    /// gradients to accumulators (slot `gradient_accumulator`), and every `k`-th step (when
    /// `(iterations + 1) % k == 0`) applies `(g + acc) / k` instead (clipped, with weight
    /// decay) and clears them. `iterations` counts every step; the update rules' `t` is
    /// `⌊iterations / k⌋ + 1`, a schedule sees `iterations`, and an `Embedding`'s row gradients
    /// are summed per row first (TensorFlow makes `IndexedSlices` dense when it adds them).
    pub gradient_accumulation_steps: Option<u64>,
    /// Keras 3's `loss_scale_factor` (`None`: off; else a finite number > 0): Keras' train step
    /// multiplies the loss by it before differentiating, and [`Optimizer::step`] divides the
    /// gradients by it first, as Keras' `apply_gradients` does. [`Model::fit`] and
    /// [`Model::train_on_batch`] scale the gradients they compute (unscaled) before the step, so
    /// the update equals Keras' exactly for a power of two and to round-off otherwise.
    ///
    /// [`Model::fit`]: crate::layers::model::Model::fit
    /// [`Model::train_on_batch`]: crate::layers::model::Model::train_on_batch
    pub loss_scale_factor: Option<f64>,
}

/// Keras 3's exponential moving average of the weights (`use_ema=True`, `ema_momentum`,
/// `ema_overwrite_frequency`).
///
/// After each step's update (before the caller's constraints, as Keras), every trainable
/// variable's average (slot `average`, zeros at first) becomes `a ← μ·a + (1 − μ)·θ`, with
/// `μ = 0` on the first step (`iterations == 0`), so that it starts at the weights. Every
/// `overwrite_frequency` steps (when `(iterations + 1) % f == 0`) the weights are set to their
/// averages, and so they are at the end of [`Model::fit`](crate::layers::model::Model::fit)
/// ([`Optimizer::finalize_variable_values`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ema {
    /// `μ` in `[0, 1]` (Keras' default 0.99); `T`'s value of it (not float32's in an `f64`
    /// model: Keras multiplies a Python float into the variable's dtype).
    pub momentum: f64,
    /// Overwrite the weights with their averages every this many steps (`None`: only at the end
    /// of `fit`).
    pub overwrite_frequency: Option<u64>,
}

impl Default for Ema {
    /// Keras' defaults: momentum 0.99, no periodic overwrite.
    fn default() -> Self {
        Ema {
            momentum: 0.99,
            overwrite_frequency: None,
        }
    }
}

const KERAS_OPTIMIZERS_UNSUPPORTED: &[&str] = &[
    "optimizer",
    "adafactor",
    "muon",
    "multioptimizer",
    "optimizermap",
    "ftrl",
    "lamb",
    "lossscaleoptimizer",
    "schedulefreeadamw",
];

const BASE_KEYS: &[&str] = &[
    "name",
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "clipvalue",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    // Ignored, as Keras 3 ignores it (with a warning): TF-Keras 2's learning-rate decay.
    "decay",
    // Written by TF-Keras 2.11+ into the optimizer config of legacy `.h5` files; neither changes
    // an update (Keras 3 refuses them and loads such a file uncompiled; grucell reads the rest).
    "jit_compile",
    "is_legacy_optimizer",
];

impl OptimizerConfig {
    fn with_kind(kind: OptimizerKind, learning_rate: f64) -> Self {
        OptimizerConfig {
            kind,
            learning_rate: LearningRate::Constant(learning_rate),
            clipnorm: None,
            clipvalue: None,
            global_clipnorm: None,
            weight_decay: None,
            ema: None,
            gradient_accumulation_steps: None,
            loss_scale_factor: None,
        }
    }

    /// SGD without momentum (Keras default learning rate 0.01).
    pub fn sgd(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            learning_rate,
        )
    }

    /// Adam with β₁ 0.9, β₂ 0.999, ε 1e-7, no AMSGrad (Keras default learning rate 0.001).
    pub fn adam(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                amsgrad: false,
            },
            learning_rate,
        )
    }

    /// AdamW: Adam's defaults plus `weight_decay` 0.004.
    pub fn adamw(learning_rate: f64) -> Self {
        let mut c = Self::with_kind(
            OptimizerKind::AdamW {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                amsgrad: false,
            },
            learning_rate,
        );
        c.weight_decay = Some(0.004);
        c
    }

    /// RMSprop with ρ 0.9, no momentum, ε 1e-7, not centered (Keras default learning rate 0.001).
    pub fn rmsprop(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::RmsProp {
                rho: 0.9,
                momentum: 0.0,
                epsilon: 1e-7,
                centered: false,
            },
            learning_rate,
        )
    }

    /// Adagrad with initial accumulator 0.1 and ε 1e-7 (Keras default learning rate 0.001).
    pub fn adagrad(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Adagrad {
                initial_accumulator_value: 0.1,
                epsilon: 1e-7,
            },
            learning_rate,
        )
    }

    /// Nadam with β₁ 0.9, β₂ 0.999, ε 1e-7 (Keras default learning rate 0.001).
    pub fn nadam(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Nadam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            learning_rate,
        )
    }

    /// Adamax with β₁ 0.9, β₂ 0.999, ε 1e-7 (Keras default learning rate 0.001).
    pub fn adamax(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Adamax {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            learning_rate,
        )
    }

    /// Lion with β₁ 0.9, β₂ 0.99 (Keras default learning rate 0.001).
    pub fn lion(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Lion {
                beta_1: 0.9,
                beta_2: 0.99,
            },
            learning_rate,
        )
    }

    /// Adadelta with ρ 0.95, ε 1e-7 (Keras default learning rate 0.001).
    pub fn adadelta(learning_rate: f64) -> Self {
        Self::with_kind(
            OptimizerKind::Adadelta {
                rho: 0.95,
                epsilon: 1e-7,
            },
            learning_rate,
        )
    }

    /// An optimizer by Keras name with all Keras defaults, learning rate included. Like
    /// `keras.optimizers.get`, the name is case-insensitive: `"sgd"`, `"adam"`, `"adamw"`,
    /// `"rmsprop"`, `"adagrad"`, `"nadam"`, `"adamax"`, `"lion"`, `"adadelta"` (and `"SGD"`,
    /// `"RMSprop"`, …).
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        const SUPPORTED: &str = "sgd, adam, adamw, rmsprop, adagrad, nadam, adamax, lion, adadelta";
        let lower = name.to_ascii_lowercase();
        let cfg = match lower.as_str() {
            "sgd" => Self::sgd(0.01),
            "adam" => Self::adam(0.001),
            "adamw" => Self::adamw(0.001),
            "rmsprop" => Self::rmsprop(0.001),
            "adagrad" => Self::adagrad(0.001),
            "nadam" => Self::nadam(0.001),
            "adamax" => Self::adamax(0.001),
            "lion" => Self::lion(0.001),
            "adadelta" => Self::adadelta(0.001),
            other if KERAS_OPTIMIZERS_UNSUPPORTED.contains(&other) => {
                return Err(ConfigError::unsupported(
                    "optimizer",
                    format!("Keras optimizer `{name}` is not implemented by grucell; supported: {SUPPORTED}"),
                ))
            }
            _ => {
                return Err(ConfigError::UnknownName {
                    kind: "optimizer",
                    name: name.to_string(),
                    known: SUPPORTED.into(),
                })
            }
        };
        Ok(cfg)
    }

    /// Reads a Keras `compile_config` `"optimizer"` entry: a name, or the serialized optimizer
    /// Keras writes (`{"module": "keras.optimizers", "class_name": "Adam", "config": {...}}`).
    ///
    /// The learning rate may be a number or one of Keras' built-in schedules
    /// ([`LearningRateSchedule`](crate::train::schedule::LearningRateSchedule)); `use_ema`
    /// gives [`OptimizerConfig::ema`], `gradient_accumulation_steps`
    /// [`OptimizerConfig::gradient_accumulation_steps`] and `loss_scale_factor`
    /// [`OptimizerConfig::loss_scale_factor`]. Another schedule or TF-Keras 2's `use_ema`
    /// (whose average starts otherwise) give [`ConfigError::Unsupported`]; unknown keys are invalid
    /// (Keras rejects them too). Missing keys take Keras' defaults. The result is validated.
    pub fn from_keras(v: &Value) -> Result<Self, ConfigError> {
        let obj = match v {
            Value::String(s) => return Self::from_name(s),
            Value::Object(o) => o,
            other => {
                return Err(ConfigError::invalid(
                    "optimizer",
                    other,
                    "an optimizer name or a serialized Keras optimizer",
                ))
            }
        };
        let class = match obj.get("class_name") {
            Some(Value::String(c)) => c.as_str(),
            other => {
                return Err(ConfigError::invalid(
                    "optimizer.class_name",
                    other.unwrap_or(&Value::Null),
                    "a Keras optimizer class name",
                ))
            }
        };
        let empty = Map::new();
        let c = match obj.get("config") {
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
        // TF-Keras 2.11+ writes registered names, `Custom>Adam`: the class is after the `>`.
        let mut cfg = Self::from_name(class.rsplit('>').next().unwrap_or(class))?;
        let (own_keys, default_wd): (&[&str], Option<f64>) = match cfg.kind {
            OptimizerKind::Sgd { .. } => (&["momentum", "nesterov"], None),
            OptimizerKind::Adam { .. } => (&["beta_1", "beta_2", "epsilon", "amsgrad"], None),
            OptimizerKind::AdamW { .. } => {
                (&["beta_1", "beta_2", "epsilon", "amsgrad"], Some(0.004))
            }
            OptimizerKind::RmsProp { .. } => (&["rho", "momentum", "epsilon", "centered"], None),
            OptimizerKind::Adagrad { .. } => (&["initial_accumulator_value", "epsilon"], None),
            OptimizerKind::Nadam { .. } | OptimizerKind::Adamax { .. } => {
                (&["beta_1", "beta_2", "epsilon"], None)
            }
            OptimizerKind::Lion { .. } => (&["beta_1", "beta_2"], None),
            OptimizerKind::Adadelta { .. } => (&["rho", "epsilon"], None),
        };
        for key in c.keys() {
            if !BASE_KEYS.contains(&key.as_str()) && !own_keys.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{class}.{key}"),
                    c.get(key).unwrap_or(&Value::Null),
                    format!(
                        "no such argument; {class} takes {}, {}",
                        BASE_KEYS.join(", "),
                        own_keys.join(", ")
                    ),
                ));
            }
        }
        cfg.learning_rate = match c.get("learning_rate") {
            None | Some(Value::Null) => LearningRate::Constant(cfg.kind.default_learning_rate()),
            Some(x) => LearningRate::from_keras(x, class)?,
        };
        let opt = |k: &str| -> Result<Option<f64>, ConfigError> {
            match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| {
                    ConfigError::invalid(format!("{class}.{k}"), x, "a number or null")
                }),
            }
        };
        let num = |k: &str, d: f64| -> Result<f64, ConfigError> { Ok(opt(k)?.unwrap_or(d)) };
        // A step count; Keras tests the value's truth, so 0 is "not set" (the range is checked
        // by `validate`).
        let count = |k: &str, expected: &str| -> Result<Option<u64>, ConfigError> {
            match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(0) => Ok(None),
                    Some(n) => Ok(Some(n)),
                    None => Err(ConfigError::invalid(format!("{class}.{k}"), v, expected)),
                },
            }
        };
        cfg.clipnorm = opt("clipnorm")?;
        cfg.clipvalue = opt("clipvalue")?;
        cfg.global_clipnorm = opt("global_clipnorm")?;
        cfg.weight_decay = match c.get("weight_decay") {
            None => default_wd,
            Some(_) => opt("weight_decay")?,
        };
        if get_bool(c, "use_ema", false)? {
            // TF-Keras 2.11+ writes `is_legacy_optimizer`; its average starts at the weights the
            // optimizer was built with and has no first-step rule.
            if c.contains_key("is_legacy_optimizer") {
                return Err(ConfigError::unsupported(
                    "optimizer option",
                    format!("{class}.use_ema = true in a TF-Keras 2 optimizer (grucell computes Keras 3's moving average)"),
                ));
            }
            cfg.ema = Some(Ema {
                momentum: num("ema_momentum", 0.99)?,
                overwrite_frequency: count(
                    "ema_overwrite_frequency",
                    "a whole number ≥ 1 or null",
                )?,
            });
        }
        cfg.loss_scale_factor = opt("loss_scale_factor")?;
        cfg.gradient_accumulation_steps =
            count("gradient_accumulation_steps", "a whole number ≥ 2 or null")?;
        cfg.kind = match cfg.kind {
            OptimizerKind::Sgd { .. } => OptimizerKind::Sgd {
                momentum: num("momentum", 0.0)?,
                nesterov: get_bool(c, "nesterov", false)?,
            },
            OptimizerKind::Adam { .. } => OptimizerKind::Adam {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: num("epsilon", 1e-7)?,
                amsgrad: get_bool(c, "amsgrad", false)?,
            },
            OptimizerKind::AdamW { .. } => OptimizerKind::AdamW {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: num("epsilon", 1e-7)?,
                amsgrad: get_bool(c, "amsgrad", false)?,
            },
            OptimizerKind::RmsProp { .. } => OptimizerKind::RmsProp {
                rho: num("rho", 0.9)?,
                momentum: num("momentum", 0.0)?,
                epsilon: num("epsilon", 1e-7)?,
                centered: get_bool(c, "centered", false)?,
            },
            OptimizerKind::Adagrad { .. } => OptimizerKind::Adagrad {
                initial_accumulator_value: num("initial_accumulator_value", 0.1)?,
                epsilon: num("epsilon", 1e-7)?,
            },
            OptimizerKind::Nadam { .. } => OptimizerKind::Nadam {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: num("epsilon", 1e-7)?,
            },
            OptimizerKind::Adamax { .. } => OptimizerKind::Adamax {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: num("epsilon", 1e-7)?,
            },
            OptimizerKind::Lion { .. } => OptimizerKind::Lion {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.99)?,
            },
            OptimizerKind::Adadelta { .. } => OptimizerKind::Adadelta {
                rho: num("rho", 0.95)?,
                epsilon: num("epsilon", 1e-7)?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serializes as Keras 3.15.1 does (`keras.saving.serialize_keras_object(optimizer)`), with the
    /// default object name and the learning rate as [`LearningRate::to_keras`] writes it (a
    /// constant as its float32 value widened to f64, as Keras reads it back from its float32
    /// variable: 0.001 → 0.0010000000474974513).
    pub fn to_keras(&self) -> Value {
        let mut c = Map::new();
        let o = |x: Option<f64>| x.map_or(Value::Null, |v| json!(v));
        c.insert("name".into(), json!(self.kind.keras_name()));
        c.insert("learning_rate".into(), self.learning_rate.to_keras());
        c.insert("weight_decay".into(), o(self.weight_decay));
        c.insert("clipnorm".into(), o(self.clipnorm));
        c.insert("global_clipnorm".into(), o(self.global_clipnorm));
        c.insert("clipvalue".into(), o(self.clipvalue));
        let ema = self.ema.unwrap_or_default();
        c.insert("use_ema".into(), json!(self.ema.is_some()));
        c.insert("ema_momentum".into(), json!(ema.momentum));
        c.insert(
            "ema_overwrite_frequency".into(),
            json!(ema.overwrite_frequency),
        );
        c.insert("loss_scale_factor".into(), json!(self.loss_scale_factor));
        c.insert(
            "gradient_accumulation_steps".into(),
            json!(self.gradient_accumulation_steps),
        );
        match self.kind {
            OptimizerKind::Sgd { momentum, nesterov } => {
                c.insert("momentum".into(), json!(momentum));
                c.insert("nesterov".into(), json!(nesterov));
            }
            OptimizerKind::Adam {
                beta_1,
                beta_2,
                epsilon,
                amsgrad,
            }
            | OptimizerKind::AdamW {
                beta_1,
                beta_2,
                epsilon,
                amsgrad,
            } => {
                c.insert("beta_1".into(), json!(beta_1));
                c.insert("beta_2".into(), json!(beta_2));
                c.insert("epsilon".into(), json!(epsilon));
                c.insert("amsgrad".into(), json!(amsgrad));
            }
            OptimizerKind::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            } => {
                c.insert("rho".into(), json!(rho));
                c.insert("momentum".into(), json!(momentum));
                c.insert("epsilon".into(), json!(epsilon));
                c.insert("centered".into(), json!(centered));
            }
            OptimizerKind::Adagrad {
                initial_accumulator_value,
                epsilon,
            } => {
                c.insert(
                    "initial_accumulator_value".into(),
                    json!(initial_accumulator_value),
                );
                c.insert("epsilon".into(), json!(epsilon));
            }
            OptimizerKind::Nadam {
                beta_1,
                beta_2,
                epsilon,
            }
            | OptimizerKind::Adamax {
                beta_1,
                beta_2,
                epsilon,
            } => {
                c.insert("beta_1".into(), json!(beta_1));
                c.insert("beta_2".into(), json!(beta_2));
                c.insert("epsilon".into(), json!(epsilon));
            }
            OptimizerKind::Lion { beta_1, beta_2 } => {
                c.insert("beta_1".into(), json!(beta_1));
                c.insert("beta_2".into(), json!(beta_2));
            }
            OptimizerKind::Adadelta { rho, epsilon } => {
                c.insert("rho".into(), json!(rho));
                c.insert("epsilon".into(), json!(epsilon));
            }
        }
        json!({
            "module": "keras.optimizers",
            "class_name": self.kind.keras_class_name(),
            "config": Value::Object(c),
            "registered_name": Value::Null,
        })
    }

    /// Checks the configuration: at most one of `clipnorm`, `clipvalue`, `global_clipnorm` (as
    /// Keras), finite numbers, a constant `learning_rate ≥ 0` (a schedule as
    /// [`LearningRate::validate`]), SGD momentum in `[0, 1]` (as Keras), β's in
    /// `[0, 1)` (Lion's β₁ in `(0, 1]`, as Keras, and β₂ in `[0, 1]`), `ρ` in `[0, 1]`, `ε`,
    /// RMSprop momentum and the initial accumulator `≥ 0`, and a weight decay for AdamW (as
    /// Keras).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let set = [self.clipnorm, self.clipvalue, self.global_clipnorm]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if set > 1 {
            return Err(ConfigError::invalid(
                "clipnorm/clipvalue/global_clipnorm",
                format!(
                    "clipnorm={:?}, clipvalue={:?}, global_clipnorm={:?}",
                    self.clipnorm, self.clipvalue, self.global_clipnorm
                ),
                "only one of `clipnorm`, `clipvalue` and `global_clipnorm` set",
            ));
        }
        let finite = |arg: &str, x: f64| {
            if x.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::invalid(arg, x, "a finite number"))
            }
        };
        let range = |arg: &str, x: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = x >= lo && if hi_open { x < hi } else { x <= hi };
            if ok {
                Ok(())
            } else {
                let close = if hi_open { ")" } else { "]" };
                Err(ConfigError::invalid(
                    arg,
                    x,
                    format!("a number in [{lo}, {hi}{close}"),
                ))
            }
        };
        self.learning_rate.validate()?;
        if let Some(s) = self.loss_scale_factor {
            if !(s.is_finite() && s > 0.0) {
                return Err(ConfigError::invalid(
                    "loss_scale_factor",
                    s,
                    "a finite number > 0 or None",
                ));
            }
        }
        if let Some(k) = self.gradient_accumulation_steps {
            if k < 2 {
                return Err(ConfigError::invalid(
                    "gradient_accumulation_steps",
                    k,
                    "a whole number ≥ 2 or None (as Keras)",
                ));
            }
        }
        if let Some(ema) = self.ema {
            range("ema_momentum", ema.momentum, 0.0, 1.0, false)?;
            if ema.overwrite_frequency == Some(0) {
                return Err(ConfigError::invalid(
                    "ema_overwrite_frequency",
                    0,
                    "a whole number ≥ 1 or None",
                ));
            }
        }
        for (arg, x) in [
            ("clipnorm", self.clipnorm),
            ("clipvalue", self.clipvalue),
            ("global_clipnorm", self.global_clipnorm),
            ("weight_decay", self.weight_decay),
        ] {
            if let Some(x) = x {
                finite(arg, x)?;
            }
        }
        match self.kind {
            OptimizerKind::Sgd { momentum, .. } => range("momentum", momentum, 0.0, 1.0, false)?,
            OptimizerKind::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            }
            | OptimizerKind::AdamW {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => {
                range("beta_1", beta_1, 0.0, 1.0, true)?;
                range("beta_2", beta_2, 0.0, 1.0, true)?;
                range("epsilon", epsilon, 0.0, f64::INFINITY, true)?;
                if matches!(self.kind, OptimizerKind::AdamW { .. }) && self.weight_decay.is_none() {
                    return Err(ConfigError::invalid(
                        "weight_decay",
                        "None",
                        "a float (AdamW requires it)",
                    ));
                }
            }
            OptimizerKind::RmsProp {
                rho,
                momentum,
                epsilon,
                ..
            } => {
                range("rho", rho, 0.0, 1.0, false)?;
                range("momentum", momentum, 0.0, f64::INFINITY, true)?;
                range("epsilon", epsilon, 0.0, f64::INFINITY, true)?;
            }
            OptimizerKind::Adagrad {
                initial_accumulator_value,
                epsilon,
            } => {
                range(
                    "initial_accumulator_value",
                    initial_accumulator_value,
                    0.0,
                    f64::INFINITY,
                    true,
                )?;
                range("epsilon", epsilon, 0.0, f64::INFINITY, true)?;
            }
            OptimizerKind::Nadam {
                beta_1,
                beta_2,
                epsilon,
            }
            | OptimizerKind::Adamax {
                beta_1,
                beta_2,
                epsilon,
            } => {
                range("beta_1", beta_1, 0.0, 1.0, true)?;
                range("beta_2", beta_2, 0.0, 1.0, true)?;
                range("epsilon", epsilon, 0.0, f64::INFINITY, true)?;
            }
            OptimizerKind::Lion { beta_1, beta_2 } => {
                if !(beta_1 > 0.0 && beta_1 <= 1.0) {
                    return Err(ConfigError::invalid(
                        "beta_1",
                        beta_1,
                        "a number in (0, 1] (Lion degenerates to SignSGD otherwise)",
                    ));
                }
                range("beta_2", beta_2, 0.0, 1.0, false)?;
            }
            OptimizerKind::Adadelta { rho, epsilon } => {
                range("rho", rho, 0.0, 1.0, false)?;
                range("epsilon", epsilon, 0.0, f64::INFINITY, true)?;
            }
        }
        Ok(())
    }
}

/// What [`Optimizer::restore_keras_state`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The whole state was loaded.
    Yes,
    /// The file holds no state to restore (no optimizer variables, or only the iteration count
    /// and learning rate of an optimizer that never trained).
    NothingSaved,
    /// The file's state has another number of variables (another optimizer or other trainable
    /// variables): nothing was loaded.
    Mismatch {
        /// Variables in the file.
        saved: usize,
        /// Variables this optimizer has.
        expected: usize,
    },
}

/// A saved iteration count: a whole number up to 2⁵³ (beyond that f64 no longer counts steps
/// one by one).
fn check_iteration(it: f64) -> Result<(), ShapeError> {
    if it >= 0.0 && it.fract() == 0.0 && it <= 9_007_199_254_740_992.0 {
        Ok(())
    } else {
        Err(ShapeError::OutOfRange {
            arg: "optimizer variable 0 (iteration)".into(),
            value: it,
            expected: "a whole number of steps in 0..=2^53".into(),
        })
    }
}

/// An optimizer with its state: the iteration counter and the slot variables of every model
/// variable (see [`OptimizerConfig`] for an example).
#[derive(Clone, Debug)]
pub struct Optimizer<T: Float> {
    config: OptimizerConfig,
    iterations: u64,
    var_sizes: Vec<usize>,
    /// `slots[s][v]`: slot `s` (in `kind.slot_names()` order) of variable `v`.
    slots: Vec<Vec<Vec<T>>>,
    /// The optimizer's own scalars (`kind.scalars()` order): Nadam's product of momentum factors.
    scalars: Vec<T>,
    /// The moving averages of the variables (`use_ema`; empty without).
    averages: Vec<Vec<T>>,
    /// The gradients summed since the last update (`gradient_accumulation_steps`; empty
    /// without).
    accumulators: Vec<Vec<T>>,
}

impl<T: Float> Optimizer<T> {
    /// A fresh optimizer (iterations 0, slots at their initial values) for variables of the given
    /// element counts, in the order later passed to [`Optimizer::step`].
    pub fn new(config: OptimizerConfig, var_sizes: &[usize]) -> Result<Self, ConfigError> {
        config.validate()?;
        let init = match config.kind {
            OptimizerKind::Adagrad {
                initial_accumulator_value,
                ..
            } => cast_f32::<T>(initial_accumulator_value),
            _ => T::zero(),
        };
        let slots = config
            .kind
            .slot_names()
            .iter()
            .map(|_| var_sizes.iter().map(|&n| vec![init; n]).collect())
            .collect();
        let scalars = config
            .kind
            .scalars()
            .iter()
            .map(|&(_, x)| T::of(x))
            .collect();
        let zeros = |on: bool| -> Vec<Vec<T>> {
            if on {
                var_sizes.iter().map(|&n| vec![T::zero(); n]).collect()
            } else {
                Vec::new()
            }
        };
        let averages = zeros(config.ema.is_some());
        let accumulators = zeros(config.gradient_accumulation_steps.is_some());
        Ok(Optimizer {
            config,
            iterations: 0,
            var_sizes: var_sizes.to_vec(),
            slots,
            scalars,
            averages,
            accumulators,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of steps applied so far (Keras' `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Sets the iteration counter (e.g. when resuming from a saved optimizer).
    pub fn set_iterations(&mut self, iterations: u64) {
        self.iterations = iterations;
    }

    /// The learning rate the next step uses: the float32 value (of the schedule at
    /// [`Optimizer::iterations`]), converted to `T`.
    pub fn learning_rate(&self) -> T {
        T::of(f64::from(self.config.learning_rate.at(self.iterations)))
    }

    /// How many scalars precede the slots in Keras' variables: the iteration count, and the
    /// learning rate when it is a constant (a schedule has no variable).
    fn leading_scalars(&self) -> usize {
        1 + usize::from(self.config.learning_rate.constant().is_some())
    }

    /// One Keras `apply_gradients` step over all variables at once (clip, weight decay, update,
    /// `iterations += 1`; see the module documentation). `grads[i]` is the gradient of `vars[i]`;
    /// the gradients are clipped in place.
    pub fn step(
        &mut self,
        vars: &mut [&mut [T]],
        grads: &mut [&mut [T]],
    ) -> Result<(), ShapeError> {
        self.step_with_rows(vars, grads, &mut [])
    }

    /// [`Optimizer::step`] where some gradients are also given as the rows TensorFlow holds them
    /// in (`rows[i]` for `grads[i]`, which must be their sum per index; missing or `None` entries
    /// are dense), so that squares and norms follow Keras' `IndexedSlices` arithmetic (module
    /// documentation).
    ///
    /// ```
    /// use grucell::train::optimizer::{Optimizer, OptimizerConfig, RowGrads};
    ///
    /// // A 2 × 1 table whose row 0 was looked up twice, with gradients 3 and −3.
    /// let rows = RowGrads::new(1, vec![0, 0], vec![3.0f32, -3.0])?;
    /// let mut dense = rows.dense(2)?; // [0, 0]: the sum per row
    /// let mut w = [1.0f32, 1.0];
    /// let mut opt = Optimizer::new(OptimizerConfig::adagrad(0.1), &[2])?;
    /// opt.step_with_rows(&mut [&mut w], &mut [&mut dense], &mut [Some(rows)])?;
    /// // Adagrad's accumulator grew by 3² + (−3)² for row 0 (the weights do not move: Σg = 0).
    /// let state = opt.keras_variables(&["table"])?; // iteration, learning rate, accumulator
    /// assert_eq!(state[2].1, [0.1f32 + 18.0, 0.1]);
    /// assert_eq!(w, [1.0, 1.0]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn step_with_rows(
        &mut self,
        vars: &mut [&mut [T]],
        grads: &mut [&mut [T]],
        rows: &mut [Option<RowGrads<T>>],
    ) -> Result<(), ShapeError> {
        self.check(vars, grads)?;
        for (i, r) in rows.iter().enumerate() {
            if let (Some(r), Some(g)) = (r, grads.get(i)) {
                r.check_fits(g.len(), i)?;
            }
        }
        if let Some(s) = self.config.loss_scale_factor {
            // Keras' `apply`: the gradients of the scaled loss are divided by the scale first.
            let s = T::of(s);
            grads
                .iter_mut()
                .for_each(|g| g.iter_mut().for_each(|x| *x /= s));
            rows.iter_mut()
                .flatten()
                .for_each(|r| r.values.iter_mut().for_each(|x| *x /= s));
        }
        // Keras' `iterations` property: the count of updates (all steps without accumulation).
        let k = self.config.gradient_accumulation_steps.unwrap_or(1).max(1);
        let updates = self.iterations / k;
        let mut no_rows: [Option<RowGrads<T>>; 0] = [];
        let rows = if k > 1 {
            // TensorFlow adds the rows into a dense tensor: `grads` (their sums) are that.
            let last = (self.iterations + 1).is_multiple_of(k);
            let kk = T::of(k as f64);
            for (g, acc) in grads.iter_mut().zip(self.accumulators.iter_mut()) {
                for (x, a) in g.iter_mut().zip(acc.iter_mut()) {
                    if last {
                        *x = (*x + *a) / kk;
                        *a = T::zero();
                    } else {
                        *a += *x;
                    }
                }
            }
            if !last {
                self.moving_average(vars, updates);
                self.iterations += 1;
                return Ok(());
            }
            &mut no_rows[..]
        } else {
            rows
        };
        self.clip(grads, rows);
        let lr = self.learning_rate();
        if let Some(wd) = self.config.weight_decay {
            let wd = cast_f32::<T>(wd);
            for v in vars.iter_mut() {
                for x in v.iter_mut() {
                    *x -= (*x * wd) * lr;
                }
            }
        }
        let t = T::of((updates as f64) + 1.0);
        let kind = self.config.kind;
        if let (OptimizerKind::Nadam { beta_1, .. }, [product]) =
            (kind, self.scalars.as_mut_slice())
        {
            // Keras' `Nadam._backend_update_step`, before the variables' updates (Python floats
            // in plain arithmetic: not rounded through float32).
            let half = T::of(0.5);
            *product = (*product * T::of(beta_1)) * (T::one() - half * T::of(0.96).powf(t));
        }
        let product = self.scalars.first().copied().unwrap_or_else(T::one);
        let row_term = kind.row_term::<T>();
        for (i, (v, g)) in vars.iter_mut().zip(grads.iter()).enumerate() {
            let mut slots: Vec<&mut [T]> = self
                .slots
                .iter_mut()
                .filter_map(|s| s.get_mut(i).map(|x| x.as_mut_slice()))
                .collect();
            let per_row = rows
                .get(i)
                .and_then(Option::as_ref)
                .map(|r| r.summed(g.len(), row_term));
            let step = Step { lr, t, product };
            update(kind, step, v, g, per_row.as_deref(), &mut slots);
        }
        self.moving_average(vars, updates);
        self.iterations += 1;
        Ok(())
    }

    /// Keras' `_update_model_variables_moving_average` with `use_ema` (after every step, an
    /// accumulating one too), then the periodic overwrite; `updates` is Keras' `iterations`
    /// property (the step count divided by the accumulation steps).
    fn moving_average(&mut self, vars: &mut [&mut [T]], updates: u64) {
        let Some(ema) = self.config.ema else {
            return;
        };
        let m = if updates == 0 {
            T::zero()
        } else {
            T::of(ema.momentum)
        };
        let rest = T::one() - m;
        for (v, avg) in vars.iter_mut().zip(self.averages.iter_mut()) {
            for (a, &x) in avg.iter_mut().zip(v.iter()) {
                *a = m * *a + rest * x;
            }
        }
        if let Some(f) = ema.overwrite_frequency {
            if (updates + 1).is_multiple_of(f) {
                for (v, avg) in vars.iter_mut().zip(&self.averages) {
                    v.copy_from_slice(avg);
                }
            }
        }
    }

    /// Keras' `optimizer.finalize_variable_values`, which `fit` calls after its last epoch: with
    /// [`OptimizerConfig::ema`], the variables take their moving averages; otherwise nothing
    /// changes. `vars` as in [`Optimizer::step`].
    ///
    /// ```
    /// use grucell::train::optimizer::{Ema, Optimizer, OptimizerConfig};
    ///
    /// let mut cfg = OptimizerConfig::sgd(0.1);
    /// cfg.ema = Some(Ema { momentum: 0.5, overwrite_frequency: None });
    /// let mut opt = Optimizer::<f32>::new(cfg, &[1])?;
    /// let mut w = [1.0f32];
    /// opt.step(&mut [&mut w], &mut [&mut [1.0]])?; // w 0.9, average 0.9 (the first step)
    /// opt.step(&mut [&mut w], &mut [&mut [1.0]])?; // w 0.8, average 0.5·0.9 + 0.5·0.8
    /// opt.finalize_variable_values(&mut [&mut w])?;
    /// assert!((w[0] - 0.85).abs() < 1e-6);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn finalize_variable_values(&self, vars: &mut [&mut [T]]) -> Result<(), ShapeError> {
        if self.config.ema.is_none() {
            return Ok(());
        }
        let n = self.var_sizes.len();
        if vars.len() != n {
            return Err(ShapeError::mismatch(
                "vars",
                &[vars.len()],
                format!("{n} variables"),
            ));
        }
        for (i, (v, avg)) in vars.iter_mut().zip(&self.averages).enumerate() {
            if v.len() != avg.len() {
                return Err(ShapeError::ElementCount {
                    arg: format!("vars[{i}]"),
                    shape: vec![avg.len()],
                    needed: avg.len(),
                    got: v.len(),
                });
            }
        }
        for (v, avg) in vars.iter_mut().zip(&self.averages) {
            v.copy_from_slice(avg);
        }
        Ok(())
    }

    /// The optimizer's variables in Keras' order with Keras' paths, as `.keras` files store them
    /// under `optimizer/vars/0..N`: `("{name}/iteration", [iterations])`,
    /// `("{name}/learning_rate", [lr])` (not with a schedule, which Keras does not store in a
    /// variable), with `use_ema` every variable's `{path}_average`, with gradient accumulation
    /// every variable's `{path}_gradient_accumulator`, then the slots, e.g. for Adam per model variable
    /// `{path}_momentum`, `{path}_velocity` (then all `{path}_velocity_hat` with AMSGrad); for
    /// RMSprop all `velocity`, then all `momentum`, then all `average_gradient`.
    ///
    /// `var_paths` are the model variables' Keras paths (`"sequential/gru/gru_cell/kernel"`); a
    /// slot is named `"{name}/" + path.replace('/', '_') + "_" + slot`, `name` being the default
    /// optimizer name (`"adam"`, `"rm_sprop"`, …). Keras stores the iteration as int64 and the
    /// learning rate as float32: write them from [`Optimizer::iterations`] and the value here.
    pub fn keras_variables(&self, var_paths: &[&str]) -> Result<Vec<(String, Vec<T>)>, ShapeError> {
        if var_paths.len() != self.var_sizes.len() {
            return Err(ShapeError::mismatch(
                "var_paths",
                &[var_paths.len()],
                format!("one path per variable ({})", self.var_sizes.len()),
            ));
        }
        let name = self.config.kind.keras_name();
        let mut out = vec![(
            format!("{name}/iteration"),
            vec![T::of(self.iterations as f64)],
        )];
        if self.leading_scalars() == 2 {
            out.push((format!("{name}/learning_rate"), vec![self.learning_rate()]));
        }
        for (slot, v, values) in self.keras_slots() {
            match v {
                Some(v) => {
                    if let Some(path) = var_paths.get(v) {
                        out.push((
                            format!("{name}/{}_{slot}", path.replace('/', "_")),
                            values.to_vec(),
                        ));
                    }
                }
                None => out.push((format!("{name}/{slot}"), values.to_vec())),
            }
        }
        Ok(out)
    }

    /// Restores the state a Keras file saved for this optimizer (the arrays of
    /// [`KerasFile::optimizer_variables`](crate::io::keras::KerasFile::optimizer_variables)), as
    /// Keras' `load_model` restores a compiled model's optimizer: when the file holds exactly as
    /// many variables as this optimizer has, every one is loaded (the iteration count exactly,
    /// beyond `f32`'s integers too); otherwise nothing changes and the outcome says why (Keras
    /// skips such a state with a warning). Fails, changing nothing, when the counts agree but
    /// an array's size or the iteration count is wrong.
    ///
    /// ```
    /// use grucell::train::optimizer::{Optimizer, OptimizerConfig, Restored};
    /// use grucell::Tensor;
    /// let mut opt = Optimizer::<f32>::new(OptimizerConfig::adam(0.01), &[2])?;
    /// let t = |v: &[f64]| Tensor::new(vec![v.len()], v.to_vec()).unwrap();
    /// let saved = [t(&[7.0]), t(&[0.01]), t(&[0.1, 0.2]), t(&[0.3, 0.4])];
    /// let refs: Vec<&Tensor<f64>> = saved.iter().collect();
    /// assert_eq!(opt.restore_keras_state(&refs)?, Restored::Yes);
    /// assert_eq!(opt.iterations(), 7);
    /// // An optimizer that never trained saved only its iteration count and learning rate.
    /// assert_eq!(opt.restore_keras_state(&refs[..2])?, Restored::NothingSaved);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn restore_keras_state(
        &mut self,
        saved: &[&crate::tensor::Tensor<f64>],
    ) -> Result<Restored, ShapeError> {
        let want = self.num_keras_variables();
        let lead = self.leading_scalars();
        if saved.is_empty() || (saved.len() <= lead && want > lead) {
            return Ok(Restored::NothingSaved);
        }
        if saved.len() != want {
            return Ok(Restored::Mismatch {
                saved: saved.len(),
                expected: want,
            });
        }
        let values: Vec<Vec<T>> = saved
            .iter()
            .map(|t| t.data().iter().map(|&v| T::of(v)).collect())
            .collect();
        let refs: Vec<&[T]> = values.iter().map(Vec::as_slice).collect();
        // The count as f64 (exact for int64 counts up to 2^53), not as `T` rounds it; checked
        // before anything is loaded.
        let it = saved.first().and_then(|t| t.data().first()).copied();
        if let Some(it) = it {
            check_iteration(it)?;
        }
        self.load_keras_variables(&refs)?;
        if let Some(it) = it {
            self.iterations = it as u64;
        }
        Ok(Restored::Yes)
    }

    /// How many variables Keras saves for this optimizer: the iteration count, the learning
    /// rate (unless it is a schedule), the moving averages (with `use_ema`), the gradient
    /// accumulators, every slot and the optimizer's own scalars (the length [`Optimizer::load_keras_variables`] expects).
    pub fn num_keras_variables(&self) -> usize {
        self.leading_scalars()
            + self.averages.len()
            + self.accumulators.len()
            + self.config.kind.slot_names().len() * self.var_sizes.len()
            + self.scalars.len()
    }

    /// The slots in Keras' order (`optimizer/vars/2`, `3`, …; `1`, `2`, … with a schedule), the
    /// moving averages and gradient accumulators first, then the optimizer's own scalars: name, index of
    /// the model variable a slot belongs to (its shape is that variable's; `None` for a scalar),
    /// values.
    pub(crate) fn keras_slots(&self) -> Vec<(&'static str, Option<usize>, &[T])> {
        // Keras' base optimizer builds the moving averages and the gradient accumulators before
        // the algorithm's slots.
        let averages = self
            .averages
            .iter()
            .enumerate()
            .map(|(v, a)| ("average", Some(v), a.as_slice()))
            .chain(
                self.accumulators
                    .iter()
                    .enumerate()
                    .map(|(v, a)| ("gradient_accumulator", Some(v), a.as_slice())),
            );
        let slot_names = self.config.kind.slot_names();
        let slots = self
            .config
            .kind
            .keras_order(self.var_sizes.len())
            .into_iter()
            .filter_map(|(s, v)| {
                let values = self.slots.get(s)?.get(v)?;
                Some((*slot_names.get(s)?, Some(v), values.as_slice()))
            });
        let scalars = self
            .config
            .kind
            .scalars()
            .iter()
            .zip(&self.scalars)
            .map(|(&(name, _), x)| (name, None, std::slice::from_ref(x)));
        averages.chain(slots).chain(scalars).collect()
    }

    /// Restores the state from the values of [`Optimizer::keras_variables`] (same order and
    /// lengths): the iteration counter (use [`Optimizer::set_iterations`] afterwards for counts
    /// above 2²⁴ in `f32`), a constant learning rate (Keras restores it too), every slot and
    /// the optimizer's own scalars.
    pub fn load_keras_variables(&mut self, values: &[&[T]]) -> Result<(), ShapeError> {
        let order = self.config.kind.keras_order(self.var_sizes.len());
        let n_scalars = self.scalars.len();
        let lead = self.leading_scalars();
        let n_avg = self.averages.len() + self.accumulators.len();
        // Where the algorithm's slots start: after the iteration, the rate, the averages and the
        // accumulators.
        let first = lead + n_avg;
        let want = first + order.len() + n_scalars;
        if values.len() != want {
            let rate = if lead == 2 { "learning_rate, " } else { "" };
            let avg = if n_avg > 0 {
                format!("{n_avg} moving averages and gradient accumulators, ")
            } else {
                String::new()
            };
            return Err(ShapeError::mismatch(
                "optimizer variables",
                &[values.len()],
                format!(
                    "{want} arrays (iteration, {rate}{avg}then {} slots and {n_scalars} scalars)",
                    order.len()
                ),
            ));
        }
        let scalar = |i: usize, what: &str| -> Result<T, ShapeError> {
            match values.get(i) {
                Some([x]) => Ok(*x),
                other => Err(ShapeError::mismatch(
                    format!("optimizer variable {i} ({what})"),
                    &[other.map_or(0, |x| x.len())],
                    "a scalar",
                )),
            }
        };
        let it = scalar(0, "iteration")?.f64();
        let lr = if lead == 2 {
            Some(scalar(1, "learning_rate")?.f64())
        } else {
            None
        };
        check_iteration(it)?;
        let own: Vec<T> = (0..n_scalars)
            .map(|k| scalar(first + order.len() + k, "the optimizer's own scalar"))
            .collect::<Result<_, _>>()?;
        // (index in `values`, destination) in Keras' order: the averages, then the slots.
        let mut targets: Vec<(usize, &mut Vec<T>)> = self
            .averages
            .iter_mut()
            .chain(self.accumulators.iter_mut())
            .enumerate()
            .map(|(k, a)| (lead + k, a))
            .collect();
        // Slot `s` of variable `v` is `values[first + k]` for `order[k] == (s, v)`.
        let mut position = vec![vec![0; self.var_sizes.len()]; self.slots.len()];
        for (k, &(s, v)) in order.iter().enumerate() {
            if let Some(p) = position.get_mut(s).and_then(|x| x.get_mut(v)) {
                *p = first + k;
            }
        }
        for (per_var, at) in self.slots.iter_mut().zip(&position) {
            targets.extend(at.iter().copied().zip(per_var.iter_mut()));
        }
        for (i, dst) in &targets {
            let got = values.get(*i).map_or(0, |x| x.len());
            if got != dst.len() {
                return Err(ShapeError::ElementCount {
                    arg: format!("optimizer variable {i}"),
                    shape: vec![dst.len()],
                    needed: dst.len(),
                    got,
                });
            }
        }
        for (i, dst) in targets {
            if let Some(src) = values.get(i) {
                dst.copy_from_slice(src);
            }
        }
        self.scalars = own;
        self.iterations = it as u64;
        if let Some(lr) = lr {
            self.config.learning_rate = LearningRate::Constant(lr);
        }
        Ok(())
    }

    fn check(&self, vars: &[&mut [T]], grads: &[&mut [T]]) -> Result<(), ShapeError> {
        let n = self.var_sizes.len();
        if vars.len() != n {
            return Err(ShapeError::mismatch(
                "vars",
                &[vars.len()],
                format!("{n} variables"),
            ));
        }
        if grads.len() != n {
            return Err(ShapeError::mismatch(
                "grads",
                &[grads.len()],
                format!("{n} gradients"),
            ));
        }
        for (i, ((v, g), &size)) in vars.iter().zip(grads).zip(&self.var_sizes).enumerate() {
            for (arg, len) in [("vars", v.len()), ("grads", g.len())] {
                if len != size {
                    return Err(ShapeError::ElementCount {
                        arg: format!("{arg}[{i}]"),
                        shape: vec![size],
                        needed: size,
                        got: len,
                    });
                }
            }
        }
        Ok(())
    }

    /// Keras' `_clip_gradients`: the first of clipnorm / global_clipnorm / clipvalue that is `> 0`.
    fn clip(&self, grads: &mut [&mut [T]], rows: &mut [Option<RowGrads<T>>]) {
        let c = &self.config;
        if let Some(cn) = c.clipnorm.filter(|&x| x > 0.0) {
            // tf.clip_by_norm: (g · c) / max(‖g‖, c); ‖g‖ = 0 stays 0. Rows stay rows.
            let cn_t = T::of(cn);
            for (i, g) in grads.iter_mut().enumerate() {
                let l2sum =
                    row_of(rows, i).map_or_else(|| sum_squares(g), |r| sum_squares(&r.values));
                let l2norm = if l2sum > T::zero() {
                    l2sum.sqrt()
                } else {
                    l2sum
                };
                let den = l2norm.max(cn_t);
                for x in g.iter_mut() {
                    *x = (*x * cn_t) / den;
                }
                if let Some(Some(r)) = rows.get_mut(i) {
                    r.values.iter_mut().for_each(|x| *x = (*x * cn_t) / den);
                }
            }
        } else if let Some(gn) = c.global_clipnorm.filter(|&x| x > 0.0) {
            // Keras' global_norm: per-variable Σg² in T, summed in T, square root.
            let mut total = T::zero();
            for (i, g) in grads.iter().enumerate() {
                total += row_of(rows, i).map_or_else(|| sum_squares(g), |r| sum_squares(&r.values));
            }
            let norm = total.sqrt();
            // `+ (n − n)` turns an infinite or NaN norm into NaN, as Keras does on purpose.
            #[allow(clippy::eq_op)]
            let nan_if_not_finite = norm - norm;
            let scale = T::of(gn) * (T::one() / norm).min(T::of(1.0 / gn)) + nan_if_not_finite;
            for g in grads.iter_mut() {
                for x in g.iter_mut() {
                    *x *= scale;
                }
            }
            // `v * scale` makes `IndexedSlices` dense.
            rows.iter_mut().for_each(|r| *r = None);
        } else if let Some(cv) = c.clipvalue.filter(|&x| x > 0.0) {
            let (lo, hi) = (T::of(-cv), T::of(cv));
            // NaN stays NaN, as in `ops.clip` (`f32::min/max` would clip it).
            let clip = |x: &mut T| {
                if *x > hi {
                    *x = hi;
                } else if *x < lo {
                    *x = lo;
                }
            };
            for (i, g) in grads.iter_mut().enumerate() {
                match rows.get_mut(i) {
                    // Each looked-up row is clipped, then the rows are summed again.
                    Some(Some(r)) => {
                        r.values.iter_mut().for_each(clip);
                        r.sum_into(g);
                    }
                    _ => g.iter_mut().for_each(clip),
                }
            }
        }
    }
}

/// The row form of gradient `i`, if it has one.
fn row_of<T>(rows: &[Option<RowGrads<T>>], i: usize) -> Option<&RowGrads<T>> {
    rows.get(i).and_then(Option::as_ref)
}

/// A gradient as TensorFlow's `IndexedSlices` holds it: one row of `width` values per looked-up
/// index, repeats included (see the module documentation for what that changes).
#[derive(Clone, Debug, PartialEq)]
pub struct RowGrads<T> {
    width: usize,
    indices: Vec<usize>,
    values: Vec<T>,
}

impl<T: Float> RowGrads<T> {
    /// Multiplies every row by `s`.
    pub(crate) fn scale(&mut self, s: T) {
        self.values.iter_mut().for_each(|x| *x *= s);
    }

    /// Rows `values[k·width..(k+1)·width]` for the variable's row `indices[k]`. Fails when
    /// `values` does not hold `width` values per index.
    pub fn new(width: usize, indices: Vec<usize>, values: Vec<T>) -> Result<Self, ShapeError> {
        if width == 0 || values.len() != indices.len().saturating_mul(width) {
            return Err(ShapeError::ElementCount {
                arg: "row gradient values".into(),
                shape: vec![indices.len(), width],
                needed: indices.len().saturating_mul(width),
                got: values.len(),
            });
        }
        Ok(RowGrads {
            width,
            indices,
            values,
        })
    }

    /// Appends the rows of another lookup of the same variable (a shared layer's second call).
    pub fn extend(&mut self, other: RowGrads<T>) -> Result<(), ShapeError> {
        if other.width != self.width {
            return Err(ShapeError::mismatch(
                "row gradient width",
                &[other.width],
                format!("{}", self.width),
            ));
        }
        self.indices.extend(other.indices);
        self.values.extend(other.values);
        Ok(())
    }

    /// The dense gradient of a variable of `len` values: the rows summed per index.
    pub fn dense(&self, len: usize) -> Result<Vec<T>, ShapeError> {
        self.check_fits(len, 0)?;
        let mut g = vec![T::zero(); len];
        self.sum_into(&mut g);
        Ok(g)
    }

    fn check_fits(&self, len: usize, i: usize) -> Result<(), ShapeError> {
        let rows = len / self.width;
        match self.indices.iter().find(|&&r| r >= rows) {
            Some(&bad) if len.is_multiple_of(self.width) => Err(ShapeError::OutOfRange {
                arg: format!("row gradient {i} index"),
                value: bad as f64,
                expected: format!("a row below {rows}"),
            }),
            None if len.is_multiple_of(self.width) => Ok(()),
            _ => Err(ShapeError::mismatch(
                format!("grads[{i}]"),
                &[len],
                format!("a multiple of the row width {}", self.width),
            )),
        }
    }

    /// `g = Σ rows per index` (checked to fit by the caller).
    fn sum_into(&self, g: &mut [T]) {
        g.iter_mut().for_each(|x| *x = T::zero());
        self.accumulate(g, |v| v);
    }

    /// `Σ f(row) per index`: what Keras computes row by row before summing where the gradient
    /// is `IndexedSlices` (`f` = square, or Adamax's absolute value).
    fn summed(&self, len: usize, f: fn(T) -> T) -> Vec<T> {
        let mut out = vec![T::zero(); len];
        self.accumulate(&mut out, f);
        out
    }

    fn accumulate(&self, out: &mut [T], f: impl Fn(T) -> T) {
        let w = self.width;
        for (&r, vals) in self.indices.iter().zip(self.values.chunks_exact(w)) {
            if let Some(dst) = out.get_mut(r * w..(r + 1) * w) {
                dst.iter_mut().zip(vals).for_each(|(a, &b)| *a += f(b));
            }
        }
    }
}

/// A Python float passed through `ops.cast(x, dtype)` / `tf.cast`: TensorFlow first makes it a
/// float32 tensor, so even for `f64` variables the value is `f64(f32(x))` (SGD's momentum,
/// Adam's β's in `βᵗ`, the weight decay). Plain arithmetic with Python floats is not rounded so.
fn cast_f32<T: Float>(x: f64) -> T {
    T::of(f64::from(x as f32))
}

/// `Σ g²` rounded to `T` (accumulated in f64, close to TensorFlow's tree reduction).
fn sum_squares<T: Float>(g: &[T]) -> T {
    T::of(g.iter().map(|&x| (x * x).f64()).sum::<f64>())
}

/// What one step's updates share: the learning rate, `t = iterations + 1` and Nadam's product of
/// momentum factors (already updated for this step; 1 for the other optimizers).
#[derive(Clone, Copy)]
struct Step<T> {
    lr: T,
    t: T,
    product: T,
}

impl OptimizerKind {
    /// The non-linear function of the gradient that Keras applies row by row where the gradient
    /// is `IndexedSlices`: `|g|` for Adamax, `g²` for the others (unused by SGD and Lion).
    fn row_term<T: Float>(&self) -> fn(T) -> T {
        match self {
            OptimizerKind::Adamax { .. } => |x: T| x.abs(),
            _ => |x: T| x * x,
        }
    }
}

/// One variable's update (step 3 of the module documentation). `slots` are this variable's slot
/// arrays in `slot_names()` order; `per_row` is [`OptimizerKind::row_term`] of the gradient's
/// rows summed per index, where the gradient came as rows.
fn update<T: Float>(
    kind: OptimizerKind,
    step: Step<T>,
    v: &mut [T],
    g: &[T],
    per_row: Option<&[T]>,
    slots: &mut [&mut [T]],
) {
    let Step { lr, t, product } = step;
    // `g²` (Adamax: `|g|`) per element: summed from the rows where Keras keeps `IndexedSlices`.
    let sq = |i: usize, g: T| {
        per_row
            .and_then(|s| s.get(i))
            .copied()
            .unwrap_or_else(|| kind.row_term::<T>()(g))
    };
    match (kind, slots) {
        (OptimizerKind::Sgd { momentum, nesterov }, slots) => {
            if let [m] = slots {
                let mu = cast_f32::<T>(momentum);
                for ((x, &g), m) in v.iter_mut().zip(g).zip(m.iter_mut()) {
                    *m = *m * mu - g * lr;
                    if nesterov {
                        *x += *m * mu - g * lr;
                    } else {
                        *x += *m;
                    }
                }
            } else {
                for (x, &g) in v.iter_mut().zip(g) {
                    *x -= g * lr;
                }
            }
        }
        (
            OptimizerKind::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            }
            | OptimizerKind::AdamW {
                beta_1,
                beta_2,
                epsilon,
                ..
            },
            slots,
        ) => {
            let b1p = cast_f32::<T>(beta_1).powf(t);
            let b2p = cast_f32::<T>(beta_2).powf(t);
            let alpha = lr * (T::one() - b2p).sqrt() / (T::one() - b1p);
            let (c1, c2, eps) = (T::of(1.0 - beta_1), T::of(1.0 - beta_2), T::of(epsilon));
            match slots {
                [m, vel] => {
                    for (i, (((x, &g), m), vel)) in v
                        .iter_mut()
                        .zip(g)
                        .zip(m.iter_mut())
                        .zip(vel.iter_mut())
                        .enumerate()
                    {
                        *m += (g - *m) * c1;
                        *vel += (sq(i, g) - *vel) * c2;
                        *x -= (*m * alpha) / (vel.sqrt() + eps);
                    }
                }
                [m, vel, vhat] => {
                    for (i, ((((x, &g), m), vel), vh)) in v
                        .iter_mut()
                        .zip(g)
                        .zip(m.iter_mut())
                        .zip(vel.iter_mut())
                        .zip(vhat.iter_mut())
                        .enumerate()
                    {
                        *m += (g - *m) * c1;
                        *vel += (sq(i, g) - *vel) * c2;
                        // `ops.maximum`: NaN on either side gives NaN (`f32::max` drops it).
                        if *vel > *vh || vel.is_nan() {
                            *vh = *vel;
                        }
                        *x -= (*m * alpha) / (vh.sqrt() + eps);
                    }
                }
                _ => {}
            }
        }
        (
            OptimizerKind::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            },
            slots,
        ) => {
            let (r, c, eps, mu) = (
                T::of(rho),
                T::of(1.0 - rho),
                T::of(epsilon),
                T::of(momentum),
            );
            let (vel, rest) = match slots.split_first_mut() {
                Some(x) => x,
                None => return,
            };
            let (mut mom, rest) = if momentum > 0.0 {
                match rest.split_first_mut() {
                    Some((m, r)) => (Some(m), r),
                    None => return,
                }
            } else {
                (None, rest)
            };
            let mut avg = if centered { rest.first_mut() } else { None };
            for (i, (x, &g)) in v.iter_mut().zip(g).enumerate() {
                let Some(vi) = vel.get_mut(i) else { return };
                *vi = r * *vi + c * sq(i, g);
                let den = match avg.as_deref_mut().and_then(|a| a.get_mut(i)) {
                    Some(a) => {
                        *a = r * *a + c * g;
                        (*vi - *a * *a) + eps
                    }
                    None => *vi + eps,
                };
                let inc = (lr * g) / den.sqrt();
                match mom.as_deref_mut().and_then(|m| m.get_mut(i)) {
                    Some(m) => {
                        *m = mu * *m + inc;
                        *x -= *m;
                    }
                    None => *x -= inc,
                }
            }
        }
        (OptimizerKind::Adagrad { epsilon, .. }, [acc]) => {
            let eps = T::of(epsilon);
            for (i, ((x, &g), a)) in v.iter_mut().zip(g).zip(acc.iter_mut()).enumerate() {
                *a += sq(i, g);
                *x -= (lr * g) / (*a + eps).sqrt();
            }
        }
        (OptimizerKind::Adagrad { .. }, _) => {}
        (
            OptimizerKind::Nadam {
                beta_1,
                beta_2,
                epsilon,
            },
            [m, vel],
        ) => {
            // `ops.cast` of Python floats: through float32 (`decay`, β's); `1 − β` in `T`.
            let (one, half) = (T::one(), T::of(0.5));
            let (b1, b2, decay) = (
                cast_f32::<T>(beta_1),
                cast_f32::<T>(beta_2),
                cast_f32::<T>(0.96),
            );
            let u_t = b1 * (one - half * decay.powf(t));
            let u_next = b1 * (one - half * decay.powf(t + one));
            let product_next = product * u_next;
            let b2p = b2.powf(t);
            let (c1, c2, eps) = (one - b1, one - b2, T::of(epsilon));
            for (i, (((x, &g), m), vel)) in v
                .iter_mut()
                .zip(g)
                .zip(m.iter_mut())
                .zip(vel.iter_mut())
                .enumerate()
            {
                *m += (g - *m) * c1;
                *vel += (sq(i, g) - *vel) * c2;
                let m_hat =
                    (u_next * *m) / (one - product_next) + ((one - u_t) * g) / (one - product);
                let v_hat = *vel / (one - b2p);
                *x -= (m_hat * lr) / (v_hat.sqrt() + eps);
            }
        }
        (
            OptimizerKind::Adamax {
                beta_1,
                beta_2,
                epsilon,
            },
            [m, u],
        ) => {
            let b1p = cast_f32::<T>(beta_1).powf(t);
            let (c1, b2, eps) = (T::of(1.0 - beta_1), T::of(beta_2), T::of(epsilon));
            for (i, (((x, &g), m), u)) in v
                .iter_mut()
                .zip(g)
                .zip(m.iter_mut())
                .zip(u.iter_mut())
                .enumerate()
            {
                *m += (g - *m) * c1;
                // `ops.maximum`: NaN on either side gives NaN (`f32::max` drops it).
                let (a, b) = (b2 * *u, sq(i, g));
                *u = if a.is_nan() || b > a { b } else { a };
                *x -= (lr * *m) / ((T::one() - b1p) * (*u + eps));
            }
        }
        (OptimizerKind::Lion { beta_1, beta_2 }, [m]) => {
            let (b1, b2) = (cast_f32::<T>(beta_1), cast_f32::<T>(beta_2));
            let (c1, c2) = (T::of(1.0) - b1, T::of(1.0) - b2);
            for ((x, &g), m) in v.iter_mut().zip(g).zip(m.iter_mut()) {
                let d = *m * b1 + g * c1;
                // `ops.sign`: 0 for ±0, NaN for NaN.
                let sign = if d > T::zero() {
                    T::one()
                } else if d < T::zero() {
                    -T::one()
                } else {
                    d
                };
                *x -= lr * sign;
                *m = *m * b2 + g * c2;
            }
        }
        (OptimizerKind::Adadelta { rho, epsilon }, [acc_g, acc_d]) => {
            let (r, c, eps) = (T::of(rho), T::of(1.0 - rho), T::of(epsilon));
            for (i, (((x, &g), ag), ad)) in v
                .iter_mut()
                .zip(g)
                .zip(acc_g.iter_mut())
                .zip(acc_d.iter_mut())
                .enumerate()
            {
                *ag = r * *ag + c * sq(i, g);
                let (rms_d, rms_g) = ((*ad + eps).sqrt(), (*ag + eps).sqrt());
                let delta = -((rms_d * g) / rms_g);
                // Keras squares `Δ` row by row where `g` came as rows: `Σ Δᵢ² = (√D/√A)²·Σ gᵢ²`.
                let delta_sq = match per_row.and_then(|s| s.get(i)) {
                    Some(&g2) => {
                        let ratio = rms_d / rms_g;
                        ratio * ratio * g2
                    }
                    None => delta * delta,
                };
                *ad = r * *ad + c * delta_sq;
                *x += lr * delta;
            }
        }
        (
            OptimizerKind::Nadam { .. }
            | OptimizerKind::Adamax { .. }
            | OptimizerKind::Lion { .. }
            | OptimizerKind::Adadelta { .. },
            _,
        ) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths of an optimizer's Keras variables for one variable `w`.
    fn variable_names(o: &Optimizer<f32>) -> Vec<String> {
        o.keras_variables(&["w"])
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// Adam with Keras' defaults and `amsgrad = True`.
    fn amsgrad(learning_rate: f64) -> OptimizerConfig {
        let mut c = OptimizerConfig::adam(learning_rate);
        c.kind = OptimizerKind::Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            amsgrad: true,
        };
        c
    }

    /// Clipping row gradients as Keras clips `IndexedSlices`: `clipvalue` per looked-up row
    /// before the sum, `clipnorm` and `global_clipnorm` with the rows' own norm (row 0 looked up
    /// twice with gradients 0.6 and 0.8: norm 1, not 1.4).
    #[test]
    fn row_gradients_clip_row_by_row() {
        for (clip, want) in [
            ("value", 1.0 - 0.5 - 0.5),
            ("norm", 1.0 - 0.7),
            ("global", 1.0 - 0.7),
        ] {
            let mut cfg = OptimizerConfig::sgd(1.0);
            match clip {
                "value" => cfg.clipvalue = Some(0.5),
                "norm" => cfg.clipnorm = Some(0.5),
                _ => cfg.global_clipnorm = Some(0.5),
            }
            let rows = RowGrads::new(1, vec![0, 0], vec![0.6f64, 0.8]).unwrap();
            let mut g = rows.dense(2).unwrap();
            let mut w = [1.0f64, 1.0];
            let mut o = Optimizer::<f64>::new(cfg, &[2]).unwrap();
            o.step_with_rows(&mut [&mut w], &mut [&mut g], &mut [Some(rows)])
                .unwrap();
            assert!((w[0] - want).abs() < 1e-12 && w[1] == 1.0, "{clip}: {w:?}");
        }
        // Rows that do not fit the variable are refused.
        let rows = RowGrads::new(1, vec![2], vec![1.0f64]).unwrap();
        let mut o = Optimizer::<f64>::new(OptimizerConfig::sgd(1.0), &[2]).unwrap();
        let (mut w, mut g) = ([0.0f64; 2], [0.0f64; 2]);
        assert!(o
            .step_with_rows(&mut [&mut w], &mut [&mut g], &mut [Some(rows)])
            .is_err());
    }

    /// NaN is not clipped away nor dropped by AMSGrad's maximum (TensorFlow's `clip_by_value`
    /// and `maximum` keep it): a corrupted state or gradient shows as NaN weights, as in Keras.
    #[test]
    fn nan_survives_clipvalue_and_amsgrad_max() {
        let mut cfg = OptimizerConfig::sgd(0.1);
        cfg.clipvalue = Some(0.5);
        let mut o = Optimizer::<f32>::new(cfg, &[2]).unwrap();
        let mut w = [1.0f32, 1.0];
        let mut g = [f32::NAN, 3.0];
        o.step(&mut [&mut w], &mut [&mut g]).unwrap();
        assert!(w[0].is_nan() && (w[1] - 0.95).abs() < 1e-7, "{w:?}");

        let ams = amsgrad(0.1);
        let mut o = Optimizer::<f32>::new(ams, &[2]).unwrap();
        // iteration, lr, m, v, v̂ — the saved velocity of element 0 is NaN
        let (m, v, vh) = ([0.0f32; 2], [f32::NAN, 0.0], [0.0f32; 2]);
        o.load_keras_variables(&[&[0.0], &[0.1], &m, &v, &vh])
            .unwrap();
        let mut w = [1.0f32, 1.0];
        let mut g = [0.5f32, 0.5];
        o.step(&mut [&mut w], &mut [&mut g]).unwrap();
        assert!(w[0].is_nan() && w[1].is_finite(), "{w:?}");
    }

    #[test]
    fn keras_order_interleaves_adam_only() {
        let adam = OptimizerConfig::adam(0.1);
        assert_eq!(
            adam.kind.keras_order(2),
            vec![(0, 0), (1, 0), (0, 1), (1, 1)]
        );
        let ams = amsgrad(0.1);
        assert_eq!(
            ams.kind.keras_order(2),
            vec![(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
        );
        let rms = OptimizerKind::RmsProp {
            rho: 0.9,
            momentum: 0.5,
            epsilon: 1e-7,
            centered: true,
        };
        assert_eq!(
            rms.keras_order(2),
            vec![(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
        );
        assert!(OptimizerConfig::sgd(0.1).kind.keras_order(3).is_empty());
    }

    #[test]
    fn validation_rejects_what_keras_rejects() {
        let mut c = OptimizerConfig::sgd(0.1);
        c.clipnorm = Some(1.0);
        c.clipvalue = Some(1.0);
        assert!(c.validate().unwrap_err().to_string().contains("only one"));
        let mut c = OptimizerConfig::adamw(0.1);
        c.weight_decay = None;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("weight_decay"));
        let mut c = OptimizerConfig::sgd(0.1);
        c.kind = OptimizerKind::Sgd {
            momentum: 1.5,
            nesterov: false,
        };
        assert!(c.validate().unwrap_err().to_string().contains("momentum"));
        assert!(OptimizerConfig::adam(f64::NAN).validate().is_err());
        // Lion's β₁ must be in (0, 1], as Keras checks; the other new optimizers' ranges too.
        for beta_1 in [0.0, 1.5, f64::NAN] {
            let mut c = OptimizerConfig::lion(0.1);
            c.kind = OptimizerKind::Lion {
                beta_1,
                beta_2: 0.99,
            };
            assert!(c.validate().unwrap_err().to_string().contains("beta_1"));
        }
        let mut c = OptimizerConfig::lion(0.1);
        c.kind = OptimizerKind::Lion {
            beta_1: 1.0,
            beta_2: 0.99,
        };
        assert!(c.validate().is_ok());
        let mut c = OptimizerConfig::adadelta(0.1);
        c.kind = OptimizerKind::Adadelta {
            rho: 1.5,
            epsilon: 1e-7,
        };
        assert!(c.validate().unwrap_err().to_string().contains("rho"));
        for mut c in [OptimizerConfig::nadam(0.1), OptimizerConfig::adamax(0.1)] {
            match &mut c.kind {
                OptimizerKind::Nadam { beta_2, .. } | OptimizerKind::Adamax { beta_2, .. } => {
                    *beta_2 = 1.0
                }
                _ => unreachable!(),
            }
            assert!(c.validate().unwrap_err().to_string().contains("beta_2"));
        }
    }

    /// The names `keras.optimizers.get` takes, and the ones grucell does not implement.
    #[test]
    fn names_and_defaults() {
        for (name, class, lr) in [
            ("Nadam", "Nadam", 0.001),
            ("adamax", "Adamax", 0.001),
            ("lion", "Lion", 0.001),
            ("adadelta", "Adadelta", 0.001),
            ("SGD", "SGD", 0.01),
        ] {
            let c = OptimizerConfig::from_name(name).unwrap();
            assert_eq!(
                (c.kind.keras_class_name(), c.learning_rate.constant()),
                (class, Some(lr))
            );
            // Serialized with the float32 learning rate, as Keras writes it.
            let back = OptimizerConfig::from_keras(&c.to_keras()).unwrap();
            assert_eq!((back.kind, back.learning_rate.at(0)), (c.kind, lr as f32));
        }
        let e = OptimizerConfig::from_name("ftrl").unwrap_err().to_string();
        assert!(e.contains("not implemented") && e.contains("lion"), "{e}");
        assert!(OptimizerConfig::from_name("sgdd").is_err());
    }

    /// Nadam saves its product of momentum factors after the slots, and a state without it (or
    /// with a non-scalar there) is refused.
    #[test]
    fn nadam_scalar_is_saved_and_checked() {
        let mut o = Optimizer::<f32>::new(OptimizerConfig::nadam(0.1), &[2]).unwrap();
        o.step(&mut [&mut [1.0, 2.0]], &mut [&mut [0.5, -0.5]])
            .unwrap();
        let vars = o.keras_variables(&["w"]).unwrap();
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "nadam/iteration",
                "nadam/learning_rate",
                "nadam/w_momentum",
                "nadam/w_velocity",
                "nadam/variable"
            ]
        );
        // Π after one step: β₁·(1 − ½·0.96).
        let want = 0.9f32 * (1.0 - 0.5 * 0.96f32);
        assert!((vars[4].1[0] - want).abs() < 1e-7);
        assert_eq!(o.num_keras_variables(), 5);
        let refs: Vec<&[f32]> = vars.iter().map(|(_, v)| v.as_slice()).collect();
        let mut back = Optimizer::<f32>::new(OptimizerConfig::nadam(0.1), &[2]).unwrap();
        assert!(back.load_keras_variables(&refs[..4]).is_err());
        let bad = [refs[0], refs[1], refs[2], refs[3], &[1.0f32, 2.0][..]];
        assert!(back.load_keras_variables(&bad).is_err());
        back.load_keras_variables(&refs).unwrap();
        assert_eq!(back.keras_variables(&["w"]).unwrap(), vars);
    }

    /// With a schedule, Keras keeps no learning-rate variable: the slots follow the iteration
    /// count, and the rate follows the restored count.
    #[test]
    fn a_schedule_has_no_rate_variable_and_continues_from_the_count() {
        let s = json!({"class_name": "SGD", "config": {"momentum": 0.5, "learning_rate":
            {"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [1], "values": [0.5, 0.25]}}}});
        let cfg = OptimizerConfig::from_keras(&s).unwrap();
        let mut o = Optimizer::<f32>::new(cfg.clone(), &[1]).unwrap();
        assert_eq!((o.num_keras_variables(), o.learning_rate()), (2, 0.5));
        let untrained = o.keras_variables(&["w"]).unwrap();
        let names: Vec<&str> = untrained.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sgd/iteration", "sgd/w_momentum"]);
        let t = |v: &[f64]| crate::tensor::Tensor::new(vec![v.len()], v.to_vec()).unwrap();
        let it = t(&[0.0]);
        assert_eq!(
            o.restore_keras_state(&[&it]).unwrap(),
            Restored::NothingSaved
        );
        let (it, m) = (t(&[2.0]), t(&[0.1]));
        assert_eq!(o.restore_keras_state(&[&it, &m]).unwrap(), Restored::Yes);
        assert_eq!(o.learning_rate(), 0.25);
        let mut w = [1.0f32];
        o.step(&mut [&mut w], &mut [&mut [1.0]]).unwrap();
        // m ← 0.1·0.5 − 1·0.25, θ ← θ + m
        assert_eq!(w, [1.0 + (0.1 * 0.5 - 0.25)]);
        // Saved with Keras 3's default name for the unnamed schedule, and read back the same.
        let saved = cfg.to_keras();
        assert_eq!(
            saved["config"]["learning_rate"]["config"]["name"],
            "PiecewiseConstant"
        );
        assert_eq!(
            OptimizerConfig::from_keras(&saved).unwrap().to_keras(),
            saved
        );
    }

    /// `use_ema` as Keras 3 writes it round-trips; TF-Keras 2's is refused, and Keras' checks
    /// hold (momentum in [0, 1], a whole overwrite frequency, 0 meaning none).
    #[test]
    fn ema_options_read_and_write_as_keras() {
        let s = json!({"class_name": "Adam", "config": {"use_ema": true, "ema_momentum": 0.9,
            "ema_overwrite_frequency": 3}});
        let c = OptimizerConfig::from_keras(&s).unwrap();
        let ema = Ema {
            momentum: 0.9,
            overwrite_frequency: Some(3),
        };
        assert_eq!(c.ema, Some(ema));
        assert_eq!(
            OptimizerConfig::from_keras(&c.to_keras()).unwrap().ema,
            c.ema
        );
        let off = OptimizerConfig::adam(0.001).to_keras();
        assert_eq!(
            (&off["config"]["use_ema"], &off["config"]["ema_momentum"]),
            (&json!(false), &json!(0.99))
        );
        let zero =
            json!({"class_name": "SGD", "config": {"use_ema": true, "ema_overwrite_frequency": 0}});
        assert_eq!(
            OptimizerConfig::from_keras(&zero).unwrap().ema,
            Some(Ema::default())
        );
        for bad in [
            json!({"class_name": "SGD", "config": {"use_ema": true, "ema_momentum": 1.5}}),
            json!({"class_name": "SGD", "config": {"use_ema": true, "ema_overwrite_frequency": 2.5}}),
        ] {
            assert!(matches!(
                OptimizerConfig::from_keras(&bad),
                Err(ConfigError::InvalidValue { .. })
            ));
        }
        let tf2 = json!({"class_name": "Custom>SGD", "config": {"use_ema": true, "is_legacy_optimizer": false}});
        let e = OptimizerConfig::from_keras(&tf2).unwrap_err();
        assert!(
            matches!(e, ConfigError::Unsupported { .. }) && e.to_string().contains("TF-Keras 2")
        );
        // The averages are saved after the iteration count and rate, before the slots.
        let o = Optimizer::<f32>::new(c, &[2]).unwrap();
        assert_eq!(
            variable_names(&o),
            [
                "adam/iteration",
                "adam/learning_rate",
                "adam/w_average",
                "adam/w_momentum",
                "adam/w_velocity"
            ]
        );
    }

    /// `loss_scale_factor` is read, validated and saved back, and `step` divides the given
    /// gradients (those of the scaled loss) by it, rows included.
    #[test]
    fn loss_scale_factor_divides_the_gradients() {
        let cfg = |s: Value| {
            OptimizerConfig::from_keras(&json!({"class_name": "SGD", "config": {
                "learning_rate": 0.5, "loss_scale_factor": s}}))
        };
        assert_eq!(cfg(Value::Null).unwrap().loss_scale_factor, None);
        assert!(cfg(json!(0.0)).is_err() && cfg(json!(-2.0)).is_err() && cfg(json!("x")).is_err());
        let c = cfg(json!(4.0)).unwrap();
        assert_eq!(c.to_keras()["config"]["loss_scale_factor"], 4.0);
        let mut scaled = Optimizer::<f32>::new(c, &[2, 2]).unwrap();
        let mut plain = Optimizer::<f32>::new(OptimizerConfig::sgd(0.5), &[2, 2]).unwrap();
        let (mut a, mut b) = ([1.0f32, 2.0], [1.0f32, 2.0]);
        let (mut ta, mut tb) = ([1.0f32, 1.0], [1.0f32, 1.0]);
        let mut ga = [4.0f32, -8.0];
        let mut ra = [0.0f32, 12.0];
        let rows = RowGrads::new(1, vec![1], vec![12.0f32]).unwrap();
        scaled
            .step_with_rows(
                &mut [&mut a, &mut ta],
                &mut [&mut ga, &mut ra],
                &mut [None, Some(rows)],
            )
            .unwrap();
        let rows = RowGrads::new(1, vec![1], vec![3.0f32]).unwrap();
        plain
            .step_with_rows(
                &mut [&mut b, &mut tb],
                &mut [&mut [1.0f32, -2.0], &mut [0.0f32, 3.0]],
                &mut [None, Some(rows)],
            )
            .unwrap();
        assert_eq!((a, ta), (b, tb));
        assert_eq!(a, [0.5, 3.0]);
    }

    /// `gradient_accumulation_steps` as Keras reads it (0 is off, 1 is refused), saved back,
    /// and the accumulators saved after the averages, before the slots.
    #[test]
    fn gradient_accumulation_reads_and_saves_as_keras() {
        let cfg = |k: Value| {
            OptimizerConfig::from_keras(&json!({"class_name": "Adam", "config": {
                "use_ema": true, "gradient_accumulation_steps": k}}))
        };
        assert_eq!(cfg(json!(0)).unwrap().gradient_accumulation_steps, None);
        assert!(cfg(json!(1)).is_err() && cfg(json!(2.5)).is_err() && cfg(json!(-2)).is_err());
        let c = cfg(json!(3)).unwrap();
        assert_eq!(c.gradient_accumulation_steps, Some(3));
        assert_eq!(c.to_keras()["config"]["gradient_accumulation_steps"], 3);
        let o = Optimizer::<f32>::new(c, &[2]).unwrap();
        assert_eq!(
            variable_names(&o),
            [
                "adam/iteration",
                "adam/learning_rate",
                "adam/w_average",
                "adam/w_gradient_accumulator",
                "adam/w_momentum",
                "adam/w_velocity"
            ]
        );
        // Two accumulating steps, then the update with the mean gradient (SGD: exact).
        let mut sgd = OptimizerConfig::sgd(0.5);
        sgd.gradient_accumulation_steps = Some(3);
        let mut o = Optimizer::<f32>::new(sgd, &[1]).unwrap();
        let mut w = [1.0f32];
        for g in [1.0f32, 2.0] {
            o.step(&mut [&mut w], &mut [&mut [g]]).unwrap();
            assert_eq!(w, [1.0]);
        }
        o.step(&mut [&mut w], &mut [&mut [6.0]]).unwrap();
        assert_eq!((w, o.iterations()), ([1.0 - 0.5 * 3.0], 3));
    }

    #[test]
    fn from_keras_rejects_unknown_schedules_and_keys() {
        let s = json!({"class_name": "Adam", "config": {"learning_rate": {"class_name": "LinearCosineDecay", "config": {}}}});
        let e = OptimizerConfig::from_keras(&s).unwrap_err();
        assert!(
            matches!(e, ConfigError::Unsupported { .. })
                && e.to_string().contains("LinearCosineDecay")
        );
        let s = json!({"class_name": "Adam", "config": {"learning_rate": {"class_name": "ExponentialDecay", "config": {}}}});
        let e = OptimizerConfig::from_keras(&s).unwrap_err().to_string();
        assert!(
            e.contains("Adam.learning_rate.initial_learning_rate"),
            "{e}"
        );
        let s = json!({"class_name": "SGD", "config": {"beta_1": 0.9}});
        assert!(OptimizerConfig::from_keras(&s)
            .unwrap_err()
            .to_string()
            .contains("SGD.beta_1"));
        assert!(matches!(
            OptimizerConfig::from_name("ftrl"),
            Err(ConfigError::Unsupported { .. })
        ));
        assert!(matches!(
            OptimizerConfig::from_name("foo"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert_eq!(
            OptimizerConfig::from_name("RMSprop").unwrap(),
            OptimizerConfig::rmsprop(0.001)
        );
        let w = OptimizerConfig::from_keras(&json!({"class_name": "AdamW", "config": {}})).unwrap();
        assert_eq!(w.weight_decay, Some(0.004));
        // A TF-Keras 2.11+ optimizer config (legacy .h5 training_config, as tf_keras 2.21 writes
        // it, registered name `Custom>Adam`): its extra keys change no update and are ignored.
        let tf2 = json!({"class_name": "Custom>Adam", "config": {"name": "Adam", "weight_decay": null,
            "clipnorm": null, "global_clipnorm": null, "clipvalue": null, "use_ema": false,
            "ema_momentum": 0.99, "ema_overwrite_frequency": null, "jit_compile": true,
            "is_legacy_optimizer": false, "learning_rate": 0.002, "beta_1": 0.9,
            "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": false, "decay": 0.0}});
        assert_eq!(
            OptimizerConfig::from_keras(&tf2).unwrap(),
            OptimizerConfig::adam(0.002)
        );
    }

    #[test]
    fn step_checks_shapes_and_load_round_trips() {
        let mut o = Optimizer::<f32>::new(OptimizerConfig::adam(0.1), &[2, 1]).unwrap();
        let mut a = [1.0f32, 2.0];
        let mut b = [3.0f32];
        let mut ga = [0.5f32, -0.5];
        let mut gb = [1.0f32, 1.0];
        let e = o
            .step(&mut [&mut a, &mut b], &mut [&mut ga, &mut gb])
            .unwrap_err();
        assert!(e.to_string().contains("grads[1]"), "{e}");
        assert_eq!(o.iterations(), 0);
        o.step(&mut [&mut a, &mut b], &mut [&mut ga, &mut gb[..1]])
            .unwrap();
        let vars = o.keras_variables(&["d/kernel", "d/bias"]).unwrap();
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "adam/iteration",
                "adam/learning_rate",
                "adam/d_kernel_momentum",
                "adam/d_kernel_velocity",
                "adam/d_bias_momentum",
                "adam/d_bias_velocity"
            ]
        );
        let mut fresh = Optimizer::<f32>::new(OptimizerConfig::adam(0.5), &[2, 1]).unwrap();
        let refs: Vec<&[f32]> = vars.iter().map(|(_, v)| v.as_slice()).collect();
        fresh.load_keras_variables(&refs).unwrap();
        assert_eq!(fresh.iterations(), 1);
        assert_eq!(
            fresh.keras_variables(&["d/kernel", "d/bias"]).unwrap(),
            vars
        );
        assert!(fresh.load_keras_variables(&refs[..3]).is_err());
        assert_eq!(fresh.num_keras_variables(), refs.len());
        for bad in [-1.0f32, 1.5, 1e30, f32::NAN] {
            let it = [bad];
            let mut r = refs.clone();
            r[0] = &it;
            let e = fresh.load_keras_variables(&r).unwrap_err();
            assert!(
                matches!(e, ShapeError::OutOfRange { .. }) && e.to_string().contains("iteration"),
                "{bad}: {e}"
            );
        }
        assert_eq!(fresh.iterations(), 1, "a refused load changes nothing");

        // From a file's arrays: the count exactly (2^40 + 1 is not an f32), a wrong count of
        // arrays leaves the state alone and says so.
        let t = |v: &[f64]| crate::tensor::Tensor::new(vec![v.len()], v.to_vec()).unwrap();
        let big = (1u64 << 40) + 1;
        let mut arrays = vec![t(&[big as f64]), t(&[0.25])];
        arrays.extend(
            vars[2..]
                .iter()
                .map(|(_, v)| t(&v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>())),
        );
        let refs: Vec<&crate::tensor::Tensor<f64>> = arrays.iter().collect();
        assert_eq!(fresh.restore_keras_state(&refs).unwrap(), Restored::Yes);
        assert_eq!(fresh.iterations(), big);
        assert_eq!(fresh.config().learning_rate, LearningRate::Constant(0.25));
        assert_eq!(
            fresh.restore_keras_state(&refs[..5]).unwrap(),
            Restored::Mismatch {
                saved: 5,
                expected: 6
            }
        );
        assert_eq!(fresh.iterations(), big);
        assert_eq!(
            fresh.restore_keras_state(&[]).unwrap(),
            Restored::NothingSaved
        );
        let short = t(&[0.0]);
        let mut bad = refs.clone();
        bad[3] = &short;
        assert!(fresh.restore_keras_state(&bad).is_err());
    }
}
