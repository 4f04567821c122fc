//! `GruCell`: the Keras `GRUCell` configuration (every seed argument, Keras defaults) and its
//! weights in Keras layout.

use crate::engine::gru::{packs_recurrent, GruParams, STEP_PACKED_MIN_ROWS};
use crate::engine::prepacked::PackedWeights;
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::constraint::Constraint;
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{get_bool, get_f64, get_str, get_u64};
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// Configuration of a GRU cell: the arguments of Keras' `GRUCell` / R's `layer_gru_cell`, with
/// the same defaults.
///
/// ```
/// use grucell::{Activation, GruCellConfig, Initializer};
/// let cfg = GruCellConfig::new(4)
///     .activation(Activation::Relu)
///     .reset_after(false)
///     .kernel_initializer(Initializer::from_name("he_normal")?)
///     .dropout(0.2)?;
/// assert_eq!(cfg.units, 4);
/// assert_eq!(cfg.recurrent_activation, Activation::Sigmoid); // Keras default
/// let cell = cfg.build::<f32>(8)?;
/// assert_eq!(cell.kernel().shape(), &[8, 12]);
/// assert_eq!(cell.bias().map(|b| b.shape().to_vec()), Some(vec![12])); // reset_after = false
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GruCellConfig {
    /// Positive integer, dimensionality of the output space.
    pub units: usize,
    /// Candidate activation (default `tanh`).
    pub activation: Activation,
    /// Gate activation (default `sigmoid`).
    pub recurrent_activation: Activation,
    /// Whether the cell has a bias (default true).
    pub use_bias: bool,
    /// Initializer of the kernel (default `glorot_uniform`).
    pub kernel_initializer: Initializer,
    /// Initializer of the recurrent kernel (default `orthogonal`).
    pub recurrent_initializer: Initializer,
    /// Initializer of the bias (default `zeros`).
    pub bias_initializer: Initializer,
    /// Penalty on the kernel (default none).
    pub kernel_regularizer: Option<Regularizer>,
    /// Penalty on the recurrent kernel (default none).
    pub recurrent_regularizer: Option<Regularizer>,
    /// Penalty on the bias (default none).
    pub bias_regularizer: Option<Regularizer>,
    /// Constraint applied to the kernel after each optimizer step (default none).
    pub kernel_constraint: Option<Constraint>,
    /// Constraint applied to the recurrent kernel after each optimizer step (default none).
    pub recurrent_constraint: Option<Constraint>,
    /// Constraint applied to the bias after each optimizer step (default none).
    pub bias_constraint: Option<Constraint>,
    /// Fraction of the input units to drop in training (default 0).
    pub dropout: f64,
    /// Fraction of the recurrent units to drop in training (default 0).
    pub recurrent_dropout: f64,
    /// Reset gate after (true, default, cuDNN-compatible) or before the recurrent product.
    pub reset_after: bool,
    /// Seed for initializers without their own seed and for dropout masks.
    pub seed: Option<u64>,
    /// Layer name (Keras' `name`), `gru_cell` by default.
    pub name: String,
    /// Keras `trainable`: whether training updates this cell's weights. For a `GRU` layer it is
    /// the layer's flag; for `RNN(GRUCell …)` the cell's own (see [`ModelLayer::trainable`]).
    ///
    /// [`ModelLayer::trainable`]: crate::layers::model::ModelLayer::trainable
    pub trainable: bool,
}

impl GruCellConfig {
    /// A configuration with `units` and every other argument at its Keras default.
    pub fn new(units: usize) -> Self {
        GruCellConfig {
            units,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            use_bias: true,
            kernel_initializer: Initializer::glorot_uniform(),
            recurrent_initializer: Initializer::orthogonal(),
            bias_initializer: Initializer::zeros(),
            kernel_regularizer: None,
            recurrent_regularizer: None,
            bias_regularizer: None,
            kernel_constraint: None,
            recurrent_constraint: None,
            bias_constraint: None,
            dropout: 0.0,
            recurrent_dropout: 0.0,
            reset_after: true,
            seed: None,
            name: "gru_cell".into(),
            trainable: true,
        }
    }

    /// Sets `activation`.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Sets `recurrent_activation`.
    pub fn recurrent_activation(mut self, a: Activation) -> Self {
        self.recurrent_activation = a;
        self
    }
    /// Sets `use_bias`.
    pub fn use_bias(mut self, b: bool) -> Self {
        self.use_bias = b;
        self
    }
    /// Sets `kernel_initializer`.
    pub fn kernel_initializer(mut self, i: Initializer) -> Self {
        self.kernel_initializer = i;
        self
    }
    /// Sets `recurrent_initializer`.
    pub fn recurrent_initializer(mut self, i: Initializer) -> Self {
        self.recurrent_initializer = i;
        self
    }
    /// Sets `bias_initializer`.
    pub fn bias_initializer(mut self, i: Initializer) -> Self {
        self.bias_initializer = i;
        self
    }
    /// Sets `kernel_regularizer`.
    pub fn kernel_regularizer(mut self, r: Option<Regularizer>) -> Self {
        self.kernel_regularizer = r;
        self
    }
    /// Sets `recurrent_regularizer`.
    pub fn recurrent_regularizer(mut self, r: Option<Regularizer>) -> Self {
        self.recurrent_regularizer = r;
        self
    }
    /// Sets `bias_regularizer`.
    pub fn bias_regularizer(mut self, r: Option<Regularizer>) -> Self {
        self.bias_regularizer = r;
        self
    }
    /// Sets `kernel_constraint`.
    pub fn kernel_constraint(mut self, c: Option<Constraint>) -> Self {
        self.kernel_constraint = c;
        self
    }
    /// Sets `recurrent_constraint`.
    pub fn recurrent_constraint(mut self, c: Option<Constraint>) -> Self {
        self.recurrent_constraint = c;
        self
    }
    /// Sets `bias_constraint`.
    pub fn bias_constraint(mut self, c: Option<Constraint>) -> Self {
        self.bias_constraint = c;
        self
    }
    /// Sets `dropout`; fails outside `[0, 1]`.
    pub fn dropout(mut self, rate: f64) -> Result<Self, ConfigError> {
        self.dropout = check_rate("dropout", rate)?;
        Ok(self)
    }
    /// Sets `recurrent_dropout`; fails outside `[0, 1]`.
    pub fn recurrent_dropout(mut self, rate: f64) -> Result<Self, ConfigError> {
        self.recurrent_dropout = check_rate("recurrent_dropout", rate)?;
        Ok(self)
    }
    /// Sets `reset_after`.
    pub fn reset_after(mut self, b: bool) -> Self {
        self.reset_after = b;
        self
    }
    /// Sets `seed`.
    pub fn seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }
    /// Sets `trainable`.
    pub fn trainable(mut self, b: bool) -> Self {
        self.trainable = b;
        self
    }
    /// Sets the layer name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks every argument; the error names the argument, its value and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.units == 0 {
            return Err(ConfigError::invalid("units", 0, "a positive integer"));
        }
        if self.units > MAX_UNITS {
            return Err(ConfigError::invalid(
                "units",
                self.units,
                format!("at most {MAX_UNITS}"),
            ));
        }
        check_rate("dropout", self.dropout)?;
        check_rate("recurrent_dropout", self.recurrent_dropout)?;
        for i in [
            &self.kernel_initializer,
            &self.recurrent_initializer,
            &self.bias_initializer,
        ] {
            i.validate()?;
        }
        for r in [
            &self.kernel_regularizer,
            &self.recurrent_regularizer,
            &self.bias_regularizer,
        ]
        .into_iter()
        .flatten()
        {
            r.validate()?;
        }
        Ok(())
    }

    /// Shape of the kernel for `input_dim` features: `(input_dim, 3u)`.
    pub fn kernel_shape(&self, input_dim: usize) -> Vec<usize> {
        vec![input_dim, 3 * self.units]
    }
    /// Shape of the recurrent kernel: `(u, 3u)`.
    pub fn recurrent_shape(&self) -> Vec<usize> {
        vec![self.units, 3 * self.units]
    }
    /// Shape of the bias: `(2, 3u)` when `reset_after`, `(3u,)` otherwise, `None` without bias.
    pub fn bias_shape(&self) -> Option<Vec<usize>> {
        match (self.use_bias, self.reset_after) {
            (false, _) => None,
            (true, true) => Some(vec![2, 3 * self.units]),
            (true, false) => Some(vec![3 * self.units]),
        }
    }

    /// Number of trainable parameters for `input_dim` features.
    pub fn param_count(&self, input_dim: usize) -> usize {
        let g = 3 * self.units;
        input_dim * g + self.units * g + self.bias_shape().map_or(0, |s| s.iter().product())
    }

    /// Builds a cell with freshly initialized weights (Keras' initializers; seeded by `seed` when
    /// set, else from the operating system's entropy).
    pub fn build<T: Float>(&self, input_dim: usize) -> Result<GruCell<T>, Error> {
        self.validate()?;
        if input_dim == 0 || input_dim > MAX_UNITS * 16 {
            return Err(
                ConfigError::invalid("input_dim", input_dim, "a positive feature count").into(),
            );
        }
        let seed = self.seed.unwrap_or_else(rand::random);
        let kernel = self
            .kernel_initializer
            .init(&self.kernel_shape(input_dim), seed)?;
        let recurrent = self
            .recurrent_initializer
            .init(&self.recurrent_shape(), seed.wrapping_add(1))?;
        let bias = match self.bias_shape() {
            Some(s) => Some(self.bias_initializer.init(&s, seed.wrapping_add(2))?),
            None => None,
        };
        GruCell::from_weights(self.clone(), kernel, recurrent, bias)
    }

    /// Reads a Keras `GRUCell` (or `GRU` layer) config object.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let units = get_u64(c, "units")?
            .ok_or_else(|| ConfigError::invalid("units", "missing", "a positive integer"))?;
        let units = usize::try_from(units)
            .map_err(|_| ConfigError::invalid("units", units, "a positive integer"))?;
        let mut cfg = GruCellConfig::new(units);
        cfg.activation = activation_of(c, "activation", Activation::Tanh)?;
        cfg.recurrent_activation = activation_of(c, "recurrent_activation", Activation::Sigmoid)?;
        cfg.use_bias = get_bool(c, "use_bias", true)?;
        if let Some(v) = c.get("kernel_initializer") {
            cfg.kernel_initializer = Initializer::from_keras(v)?;
        }
        if let Some(v) = c.get("recurrent_initializer") {
            cfg.recurrent_initializer = Initializer::from_keras(v)?;
        }
        if let Some(v) = c.get("bias_initializer") {
            cfg.bias_initializer = Initializer::from_keras(v)?;
        }
        let reg = |k: &str| c.get(k).map_or(Ok(None), Regularizer::from_keras);
        cfg.kernel_regularizer = reg("kernel_regularizer")?;
        cfg.recurrent_regularizer = reg("recurrent_regularizer")?;
        cfg.bias_regularizer = reg("bias_regularizer")?;
        let con = |k: &str| c.get(k).map_or(Ok(None), Constraint::from_keras);
        cfg.kernel_constraint = con("kernel_constraint")?;
        cfg.recurrent_constraint = con("recurrent_constraint")?;
        cfg.bias_constraint = con("bias_constraint")?;
        // Keras clamps the rates to [0, 1] at construction; files hold the clamped values.
        let rate = |k: &str| -> Result<f64, ConfigError> {
            let r = get_f64(c, k, 0.0)?;
            if r.is_nan() {
                return Err(ConfigError::invalid(k, r, "a number in [0, 1]"));
            }
            Ok(r.clamp(0.0, 1.0))
        };
        cfg.dropout = rate("dropout")?;
        cfg.recurrent_dropout = rate("recurrent_dropout")?;
        cfg.reset_after = get_bool(c, "reset_after", true)?;
        cfg.seed = get_u64(c, "seed")?;
        if let Some(n) = get_str(c, "name")? {
            cfg.name = n.to_string();
        }
        cfg.trainable = get_bool(c, "trainable", true)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The Keras `GRUCell` config object (the `config` part), as Keras 3.15 writes it.
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(self.trainable));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("units".into(), json!(self.units));
        m.insert("activation".into(), json!(self.activation.name()));
        m.insert(
            "recurrent_activation".into(),
            json!(self.recurrent_activation.name()),
        );
        m.insert("use_bias".into(), json!(self.use_bias));
        m.insert(
            "kernel_initializer".into(),
            self.kernel_initializer.to_keras(),
        );
        m.insert(
            "recurrent_initializer".into(),
            self.recurrent_initializer.to_keras(),
        );
        m.insert("bias_initializer".into(), self.bias_initializer.to_keras());
        m.insert(
            "kernel_regularizer".into(),
            opt(self.kernel_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "recurrent_regularizer".into(),
            opt(self
                .recurrent_regularizer
                .as_ref()
                .map(Regularizer::to_keras)),
        );
        m.insert(
            "bias_regularizer".into(),
            opt(self.bias_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "kernel_constraint".into(),
            opt(self.kernel_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert(
            "recurrent_constraint".into(),
            opt(self.recurrent_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert(
            "bias_constraint".into(),
            opt(self.bias_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert("dropout".into(), json!(self.dropout));
        m.insert("recurrent_dropout".into(), json!(self.recurrent_dropout));
        m.insert("reset_after".into(), json!(self.reset_after));
        m.insert("seed".into(), json!(self.seed));
        m
    }
}

/// Upper bound on `units` / features accepted from configs, so a hostile file cannot ask for
/// terabytes (a 65 536-unit GRU already has 12.9 G parameters).
pub const MAX_UNITS: usize = 1 << 16;

/// Keras' `DTypePolicy` object for a dtype name.
pub fn dtype_policy(dtype: &str) -> Value {
    json!({"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype}, "registered_name": null})
}

fn check_rate(arg: &str, rate: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(ConfigError::invalid(arg, rate, "a fraction in [0, 1]"))
    }
}

/// Reads an activation field: a Keras name, `null` (→ linear) or a serialized function object.
pub fn activation_of(
    c: &Map<String, Value>,
    key: &str,
    default: Activation,
) -> Result<Activation, ConfigError> {
    match c.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(Activation::Linear),
        Some(Value::String(s)) => Activation::from_name(s).map_err(|e| match e {
            ConfigError::UnknownName { name, known, .. } => {
                ConfigError::invalid(key, name, format!("a Keras activation name ({known})"))
            }
            other => other,
        }),
        Some(Value::Object(o)) => {
            // Keras may serialize a function as {"class_name": "function", "config": "relu", ...}.
            let name = o
                .get("config")
                .and_then(Value::as_str)
                .or_else(|| o.get("class_name").and_then(Value::as_str))
                .ok_or_else(|| {
                    ConfigError::invalid(key, Value::Object(o.clone()), "an activation name")
                })?;
            Activation::from_name(name)
        }
        Some(v) => Err(ConfigError::invalid(key, v, "an activation name or null")),
    }
}

/// A GRU cell with weights in Keras layout.
///
/// * `kernel` `(input_dim, 3u)` and `recurrent_kernel` `(u, 3u)`: column blocks z, r, h;
/// * `bias` `(2, 3u)` (row 0 input side, row 1 recurrent side) when `reset_after`, `(3u,)`
///   otherwise, absent without `use_bias`.
#[derive(Clone, Debug)]
pub struct GruCell<T = f32> {
    config: GruCellConfig,
    input_dim: usize,
    kernel: Tensor<T>,
    recurrent_kernel: Tensor<T>,
    bias: Option<Tensor<T>>,
    /// Input-projection bias with the recurrent z/r biases pre-summed (`3u`).
    xp_bias: Vec<T>,
    /// Recurrent candidate bias (`u`), reset_after only.
    hh_bias: Vec<T>,
    /// `W` and `U` packed for the engine on the first inference call that packs, reused by
    /// later calls, dropped whenever the weights change.
    packed: OnceLock<PackedWeights<T>>,
}

impl<T: Float> GruCell<T> {
    /// Wraps weights given in Keras layout; fails when a shape disagrees with the config.
    pub fn from_weights(
        config: GruCellConfig,
        kernel: Tensor<T>,
        recurrent_kernel: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let u = config.units;
        let g = 3 * u;
        if kernel.rank() != 2 || kernel.shape()[1] != g || kernel.shape()[0] == 0 {
            return Err(ShapeError::mismatch(
                format!("{}.kernel", config.name),
                kernel.shape(),
                format!("(input_dim, {g}) for units = {u}"),
            )
            .into());
        }
        let input_dim = kernel.shape()[0];
        if recurrent_kernel.shape() != [u, g] {
            return Err(ShapeError::mismatch(
                format!("{}.recurrent_kernel", config.name),
                recurrent_kernel.shape(),
                format!("({u}, {g})"),
            )
            .into());
        }
        match (&bias, config.bias_shape()) {
            (None, None) => {}
            (Some(b), Some(s)) if b.shape() == s.as_slice() => {}
            (b, s) => {
                return Err(ShapeError::mismatch(
                    format!("{}.bias", config.name),
                    b.as_ref().map_or(&[][..], |b| b.shape()),
                    match s {
                        Some(s) => format!(
                            "{s:?} (use_bias = true, reset_after = {})",
                            config.reset_after
                        ),
                        None => "no bias (use_bias = false)".to_string(),
                    },
                )
                .into())
            }
        }
        let mut cell = GruCell {
            config,
            input_dim,
            kernel,
            recurrent_kernel,
            bias,
            xp_bias: Vec::new(),
            hh_bias: Vec::new(),
            packed: OnceLock::new(),
        };
        cell.refresh_biases();
        Ok(cell)
    }

    /// Recomputes the pre-summed biases; call after changing weights in place.
    pub(crate) fn refresh_biases(&mut self) {
        let u = self.config.units;
        let g = 3 * u;
        self.xp_bias.clear();
        self.hh_bias.clear();
        if let Some(b) = &self.bias {
            let d = b.data();
            self.xp_bias.extend_from_slice(&d[..g]);
            if self.config.reset_after {
                for j in 0..2 * u {
                    self.xp_bias[j] += d[g + j];
                }
                self.hh_bias.extend_from_slice(&d[g + 2 * u..2 * g]);
            }
        }
    }

    /// Replaces `activation` and `recurrent_activation` by `f` of themselves (loading files
    /// whose activation names meant something else, see [`Activation::HardSigmoidKeras2`]).
    pub(crate) fn map_activations(&mut self, f: impl Fn(Activation) -> Activation) {
        self.config.activation = f(self.config.activation);
        self.config.recurrent_activation = f(self.config.recurrent_activation);
    }

    /// Sets whether training updates this cell's weights (Keras `cell.trainable = b`).
    pub fn set_trainable(&mut self, b: bool) {
        self.config.trainable = b;
    }
    /// The configuration.
    pub fn config(&self) -> &GruCellConfig {
        &self.config
    }
    /// Units `u`.
    pub fn units(&self) -> usize {
        self.config.units
    }
    /// Input feature count.
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }
    /// Kernel `(input_dim, 3u)`.
    pub fn kernel(&self) -> &Tensor<T> {
        &self.kernel
    }
    /// Recurrent kernel `(u, 3u)`.
    pub fn recurrent_kernel(&self) -> &Tensor<T> {
        &self.recurrent_kernel
    }
    /// Bias, if any.
    pub fn bias(&self) -> Option<&Tensor<T>> {
        self.bias.as_ref()
    }
    /// Weights in Keras order (kernel, recurrent_kernel, bias).
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        let mut w = vec![&self.kernel, &self.recurrent_kernel];
        if let Some(b) = &self.bias {
            w.push(b);
        }
        w
    }
    /// Mutable weights in Keras order; call [`GruCell::weights_changed`] after writing.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        let mut w = vec![&mut self.kernel, &mut self.recurrent_kernel];
        if let Some(b) = &mut self.bias {
            w.push(b);
        }
        w
    }
    /// Must be called after weights were modified through [`GruCell::weights_mut`].
    pub(crate) fn weights_changed(&mut self) {
        self.refresh_biases();
        self.packed = OnceLock::new();
    }
    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// [`GruCell::params`] with `W` and `U` packed (once: the packing is kept with the cell and
    /// reused until the weights change) when the engine would pack them for this call (a
    /// batch of 2 or more over 4 or more steps, a single step of 3 or more rows, or a batch of
    /// one, whose strips then read sequential panels instead of rows a stride apart). Results
    /// are identical to those without the packing (only the packing leaves the call), except
    /// for inputs wider than 256 features in calls that
    /// [`crate::engine::projection::preferred`] gives to the packed `W` (round-off only; see
    /// [`PackedWeights`]). For inference, where the weights stay fixed across calls; the packing
    /// costs as much memory again as `W` and `U`.
    pub fn params_for(&self, batch: usize, time: usize, threads: usize) -> GruParams<'_, T> {
        let mut p = self.params();
        let engine_packs = packs_recurrent(batch, time, self.units())
            || (time == 1 && batch >= STEP_PACKED_MIN_ROWS)
            || batch == 1;
        if p.packed.is_none() && engine_packs {
            if let Ok(pw) = PackedWeights::new(&p, threads) {
                p.packed = Some(self.packed.get_or_init(|| pw));
            }
        }
        p
    }

    /// The borrowed parameters the engine runs on (with the packed weights if an earlier
    /// [`GruCell::params_for`] packed them).
    pub fn params(&self) -> GruParams<'_, T> {
        GruParams {
            kernel: self.kernel.data(),
            recurrent: self.recurrent_kernel.data(),
            xp_bias: if self.bias.is_some() {
                Some(&self.xp_bias)
            } else {
                None
            },
            hh_bias: if self.config.reset_after && self.bias.is_some() {
                Some(&self.hh_bias)
            } else {
                None
            },
            input_dim: self.input_dim,
            units: self.config.units,
            reset_after: self.config.reset_after,
            activation: self.config.activation,
            recurrent_activation: self.config.recurrent_activation,
            packed: self.packed.get(),
        }
    }

    /// Casts the weights to another float type.
    pub fn cast<U: Float>(&self) -> GruCell<U> {
        let mut c = GruCell {
            config: self.config.clone(),
            input_dim: self.input_dim,
            kernel: self.kernel.cast(),
            recurrent_kernel: self.recurrent_kernel.cast(),
            bias: self.bias.as_ref().map(Tensor::cast),
            xp_bias: Vec::new(),
            hh_bias: Vec::new(),
            packed: OnceLock::new(),
        };
        c.refresh_biases();
        c
    }
}
