//! `Conv1D`: a 1-D convolution over the steps of a `(batch, steps, channels)` input (or
//! `(batch, channels, steps)` with `data_format="channels_first"`), as Keras 3.15.1 computes it:
//! `out[b, t, f] = act(bias[f] + Σ_{j, c} x[b, t·s + j·d − pad, c] · kernel[j, c, f])`, with
//! TensorFlow's paddings (`valid`; `same`, the odd padded step on the right; `causal`, all of it
//! on the left), `strides` `s`, `dilation_rate` `d` and `groups` (each group of filters reads its
//! own slice of the channels). The kernel is `(kernel_size, channels / groups, filters)`.
//! One exception, as Keras on TensorFlow computes it: a `channels_first` convolution with as
//! many output steps as filters may add `bias[t]` at step `t` and sums the bias' gradient along
//! the steps (see `Conv1D::bias_on_steps`; not in files TF-Keras 2 wrote).
//!
//! Keras' `Conv1D` does not support masking: its output carries no mask (Keras warns and
//! drops it), and so does grucell's.
//!
//! The products run as GEMMs on the input unfolded into its receptive fields (im2col), in
//! chunks of rows that keep the unfolded copy under `COLS_BUDGET` values whatever the input.

use serde_json::{json, Map, Value};

use crate::engine::gemm::{gemm, Operand};
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{activation_of, dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{channels_first, data_format, get_bool, get_str, get_u64};
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;

/// Most values of the unfolded input (im2col) held at once: 4 Mi (16 MiB of `f32`).
const COLS_BUDGET: usize = 1 << 22;

/// Largest `kernel_size`, `strides` and `dilation_rate` accepted from a config.
const MAX_WINDOW: u64 = 1 << 16;

/// How `Conv1D` pads the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding: outputs only where the whole (dilated) kernel fits.
    Valid,
    /// Zero padding so that `out = ceil(steps / strides)`; TensorFlow puts the odd step on the
    /// right.
    Same,
    /// `dilation_rate · (kernel_size − 1)` zeros on the left: `out[t]` reads no step after `t`.
    Causal,
}

impl Padding {
    /// Keras' spelling.
    pub fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
            Padding::Causal => "causal",
        }
    }
}

/// Configuration of a Keras `Conv1D` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv1DConfig {
    /// Number of filters (output channels).
    pub filters: usize,
    /// Width of the window, in steps.
    pub kernel_size: usize,
    /// Step between windows (default 1).
    pub strides: usize,
    /// Padding (default valid).
    pub padding: Padding,
    /// `data_format="channels_first"`: inputs `(batch, channels, steps)`.
    pub channels_first: bool,
    /// Spacing of the kernel's taps (default 1; Keras refuses it with `strides > 1`).
    pub dilation_rate: usize,
    /// Channel groups (default 1): filters and channels both divide into this many.
    pub groups: usize,
    /// Activation (default linear).
    pub activation: Activation,
    /// Whether there is a bias (default true).
    pub use_bias: bool,
    /// Kernel initializer (default glorot_uniform).
    pub kernel_initializer: Initializer,
    /// Bias initializer (default zeros).
    pub bias_initializer: Initializer,
    /// Kernel penalty.
    pub kernel_regularizer: Option<Regularizer>,
    /// Bias penalty.
    pub bias_regularizer: Option<Regularizer>,
    /// Kernel constraint.
    pub kernel_constraint: Option<Constraint>,
    /// Bias constraint.
    pub bias_constraint: Option<Constraint>,
    /// Layer name.
    pub name: String,
}

impl Conv1DConfig {
    /// `Conv1D(filters, kernel_size)` with Keras defaults.
    pub fn new(filters: usize, kernel_size: usize) -> Self {
        Conv1DConfig {
            filters,
            kernel_size,
            strides: 1,
            padding: Padding::Valid,
            channels_first: false,
            dilation_rate: 1,
            groups: 1,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::zeros(),
            kernel_regularizer: None,
            bias_regularizer: None,
            kernel_constraint: None,
            bias_constraint: None,
            name: "conv1d".into(),
        }
    }

    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }

    /// Sets the strides.
    pub fn strides(mut self, s: usize) -> Self {
        self.strides = s;
        self
    }

    /// Sets the dilation rate.
    pub fn dilation_rate(mut self, d: usize) -> Self {
        self.dilation_rate = d;
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// Sets the activation.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }

    /// Reads a Keras `Conv1D` config.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let filters = get_u64(c, "filters")?.ok_or_else(|| {
            ConfigError::invalid("Conv1D.filters", "missing", "a positive integer")
        })?;
        if filters == 0 || filters as usize > MAX_UNITS * 16 {
            return Err(ConfigError::invalid(
                "Conv1D.filters",
                filters,
                "a positive integer (at most 1048576)",
            ));
        }
        let kernel_size = one_int(c, "kernel_size", None)?;
        let mut v = Conv1DConfig::new(filters as usize, kernel_size);
        v.strides = one_int(c, "strides", Some(1))?;
        v.dilation_rate = one_int(c, "dilation_rate", Some(1))?;
        v.padding = match get_str(c, "padding")?
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("valid") => Padding::Valid,
            Some("same") => Padding::Same,
            Some("causal") => Padding::Causal,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "Conv1D.padding",
                    other,
                    "\"valid\", \"same\" or \"causal\"",
                ))
            }
        };
        v.channels_first = channels_first(c, "Conv1D")?;
        let groups = get_u64(c, "groups")?.unwrap_or(1);
        if groups == 0 || filters % groups != 0 {
            return Err(ConfigError::invalid(
                "Conv1D.groups",
                groups,
                format!("a positive divisor of filters ({filters})"),
            ));
        }
        v.groups = groups as usize;
        if v.strides > 1 && v.dilation_rate > 1 {
            return Err(ConfigError::invalid(
                "Conv1D.dilation_rate",
                v.dilation_rate,
                format!(
                    "1 when strides > 1 (strides = {}; Keras refuses both)",
                    v.strides
                ),
            ));
        }
        v.activation = activation_of(c, "activation", Activation::Linear)?;
        v.use_bias = get_bool(c, "use_bias", true)?;
        if let Some(i) = c.get("kernel_initializer") {
            v.kernel_initializer = Initializer::from_keras(i)?;
        }
        if let Some(i) = c.get("bias_initializer") {
            v.bias_initializer = Initializer::from_keras(i)?;
        }
        v.kernel_regularizer = c
            .get("kernel_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        v.bias_regularizer = c
            .get("bias_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        v.kernel_constraint = c
            .get("kernel_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        v.bias_constraint = c
            .get("bias_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        if let Some(r) = c.get("lora_rank").filter(|r| !r.is_null()) {
            return Err(ConfigError::unsupported(
                "Conv1D option",
                format!("lora_rank = {r}"),
            ));
        }
        if let Some(n) = get_str(c, "name")? {
            v.name = n.into();
        }
        Ok(v)
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("filters".into(), json!(self.filters));
        m.insert("kernel_size".into(), json!([self.kernel_size]));
        m.insert("strides".into(), json!([self.strides]));
        m.insert("padding".into(), json!(self.padding.name()));
        m.insert("data_format".into(), data_format(self.channels_first));
        m.insert("dilation_rate".into(), json!([self.dilation_rate]));
        m.insert("groups".into(), json!(self.groups));
        m.insert("activation".into(), json!(self.activation.name()));
        m.insert("use_bias".into(), json!(self.use_bias));
        m.insert(
            "kernel_initializer".into(),
            self.kernel_initializer.to_keras(),
        );
        m.insert("bias_initializer".into(), self.bias_initializer.to_keras());
        m.insert(
            "kernel_regularizer".into(),
            opt(self.kernel_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        m.insert(
            "bias_regularizer".into(),
            opt(self.bias_regularizer.as_ref().map(Regularizer::to_keras)),
        );
        // Keras' convolutions always write the key (the layer's own penalty, if any, replaces
        // it when the model is written).
        m.insert("activity_regularizer".into(), Value::Null);
        m.insert(
            "kernel_constraint".into(),
            opt(self.kernel_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert(
            "bias_constraint".into(),
            opt(self.bias_constraint.as_ref().map(Constraint::to_keras)),
        );
        m
    }

    /// Builds the layer with fresh weights for inputs of `channels` channels.
    pub fn build<T: Float>(&self, channels: usize, seed: u64) -> Result<Conv1D<T>, Error> {
        if self.groups == 0 || !channels.is_multiple_of(self.groups) {
            return Err(ConfigError::invalid(
                format!("{} input channels", self.name),
                channels,
                format!("a multiple of groups ({})", self.groups),
            )
            .into());
        }
        let kernel = self.kernel_initializer.init(
            &[self.kernel_size, channels / self.groups, self.filters],
            seed,
        )?;
        let bias = if self.use_bias {
            Some(
                self.bias_initializer
                    .init(&[self.filters], seed.wrapping_add(1))?,
            )
        } else {
            None
        };
        Conv1D::from_weights(self.clone(), kernel, bias)
    }

    /// `(left padding, output steps)` for an input of `steps` steps, as TensorFlow pads.
    pub fn geometry(&self, steps: usize) -> Result<(usize, usize), Error> {
        let too_big = || {
            Error::from(ConfigError::invalid(
                format!("{}.kernel_size", self.name),
                self.kernel_size,
                "a window of at most 2^31 steps",
            ))
        };
        // The dilated window's width, `(k − 1)·d + 1`.
        let span = (self.kernel_size.max(1) - 1)
            .checked_mul(self.dilation_rate)
            .and_then(|v| v.checked_add(1))
            .filter(|&v| v <= 1 << 31)
            .ok_or_else(too_big)?;
        let s = self.strides.max(1);
        if steps == 0 {
            return Err(ShapeError::mismatch(
                format!("{} input steps", self.name),
                &[0][..],
                "at least one step",
            )
            .into());
        }
        Ok(match self.padding {
            Padding::Valid => {
                if steps < span {
                    return Err(ShapeError::mismatch(
                        format!("{} input steps", self.name),
                        &[steps][..],
                        format!(
                            "at least {span} (kernel_size {} × dilation_rate {} with padding \"valid\")",
                            self.kernel_size, self.dilation_rate
                        ),
                    )
                    .into());
                }
                (0, (steps - span) / s + 1)
            }
            Padding::Same => {
                let out = steps.div_ceil(s);
                let total = ((out - 1) * s + span).saturating_sub(steps);
                (total / 2, out)
            }
            Padding::Causal => (span - 1, (steps - 1) / s + 1),
        })
    }

    /// The output shape for an input shape (`None` = not fixed), in the layer's data format.
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let (steps_axis, _) = self.axes();
        let steps = input
            .get(steps_axis)
            .copied()
            .flatten()
            .and_then(|t| self.geometry(t).ok())
            .map(|(_, out)| out);
        let batch = input.first().copied().flatten();
        if self.channels_first {
            vec![batch, Some(self.filters), steps]
        } else {
            vec![batch, steps, Some(self.filters)]
        }
    }

    /// The axes of the steps and of the channels in the layer's data format.
    fn axes(&self) -> (usize, usize) {
        if self.channels_first {
            (2, 1)
        } else {
            (1, 2)
        }
    }
}

/// One integer of a config entry that Keras writes as a one-element list (`kernel_size`,
/// `strides`, `dilation_rate`), also read from a bare integer; `default` when absent.
fn one_int(
    c: &Map<String, Value>,
    key: &str,
    default: Option<usize>,
) -> Result<usize, ConfigError> {
    let err = |v: &Value| {
        ConfigError::invalid(
            format!("Conv1D.{key}"),
            v,
            format!("a positive integer (at most {MAX_WINDOW}) or a list of one"),
        )
    };
    let v = match c.get(key) {
        None | Some(Value::Null) => {
            return default.ok_or_else(|| {
                ConfigError::invalid(format!("Conv1D.{key}"), "missing", "a positive integer")
            })
        }
        Some(Value::Array(a)) if a.len() == 1 => &a[0],
        Some(v) => v,
    };
    v.as_u64()
        .filter(|n| (1..=MAX_WINDOW).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| err(v))
}

/// A `Conv1D` layer with its weights: kernel `(kernel_size, channels / groups, filters)`, bias
/// `(filters,)`.
///
/// ```
/// use grucell::layers::conv::{Conv1D, Conv1DConfig, Padding};
/// use grucell::Tensor;
/// // A causal moving sum of two steps: out[t] = x[t − 1] + x[t].
/// let cfg = Conv1DConfig::new(1, 2).padding(Padding::Causal);
/// let conv = Conv1D::from_weights(cfg, Tensor::new(vec![2, 1, 1], vec![1.0f32, 1.0])?, Some(Tensor::zeros(vec![1])))?;
/// let x = Tensor::new(vec![1, 4, 1], vec![1.0f32, 2.0, 3.0, 4.0])?;
/// assert_eq!(conv.call(&x, 1)?.data(), &[1.0, 3.0, 5.0, 7.0]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv1D<T = f32> {
    config: Conv1DConfig,
    kernel: Tensor<T>,
    bias: Option<Tensor<T>>,
    /// TF-Keras 2's bias add (always per filter), for files Keras 2 wrote.
    keras2_bias: bool,
    /// Set while `Model::fit` trains on batches that include a partial one (Keras then keeps
    /// the bias add along the steps unfused; see `bias_on_steps`).
    partial_batch_fit: bool,
}

/// Gradients of a `Conv1D` call.
pub struct Conv1DGrads<T> {
    /// d loss / d kernel, in the kernel's layout.
    pub kernel: Vec<T>,
    /// d loss / d bias (with a bias).
    pub bias: Option<Vec<T>>,
    /// d loss / d input, in the input's layout.
    pub x: Tensor<T>,
}

/// Sizes of one call: batch, input steps, channels, left padding, output steps.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    channels: usize,
    pad: usize,
    out: usize,
}

impl<T: Float> Conv1D<T> {
    /// Wraps weights; fails when shapes disagree with the config.
    pub fn from_weights(
        config: Conv1DConfig,
        kernel: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Self, Error> {
        let ks = kernel.shape();
        if kernel.rank() != 3
            || ks[0] != config.kernel_size
            || ks[1] == 0
            || ks[2] != config.filters
            || config.groups == 0
            || !config.filters.is_multiple_of(config.groups)
        {
            return Err(ShapeError::mismatch(
                format!("{}.kernel", config.name),
                ks,
                format!(
                    "({}, channels / groups, {})",
                    config.kernel_size, config.filters
                ),
            )
            .into());
        }
        match (&bias, config.use_bias) {
            (Some(b), true) if b.shape() == [config.filters] => {}
            (None, false) => {}
            (b, _) => {
                return Err(ShapeError::mismatch(
                    format!("{}.bias", config.name),
                    b.as_ref().map_or(&[][..], |b| b.shape()),
                    if config.use_bias {
                        format!("({},)", config.filters)
                    } else {
                        "no bias (use_bias = false)".into()
                    },
                )
                .into())
            }
        }
        Ok(Conv1D {
            config,
            kernel,
            bias,
            keras2_bias: false,
            partial_batch_fit: false,
        })
    }

    /// Adds the bias per filter in every case, as TF-Keras 2 does (it reshapes the bias of a
    /// `channels_first` Conv1D to `(1, filters, 1)`), instead of Keras 3's rule (along the
    /// steps for some `channels_first` convolutions with as many output steps as filters); set
    /// for files Keras 2 wrote.
    pub fn set_keras2_bias(&mut self, keras2: bool) {
        self.keras2_bias = keras2;
    }

    /// Runs the training forward as Keras' `fit` does when the epoch's batches include a
    /// partial one (see `bias_on_steps`); `Model::fit` sets it for its training steps only.
    pub(crate) fn set_partial_batch_fit(&mut self, on: bool) {
        self.partial_batch_fit = on;
    }

    /// The config.
    pub fn config(&self) -> &Conv1DConfig {
        &self.config
    }

    /// Kernel `(kernel_size, channels / groups, filters)`.
    pub fn kernel(&self) -> &Tensor<T> {
        &self.kernel
    }

    /// Bias.
    pub fn bias(&self) -> Option<&Tensor<T>> {
        self.bias.as_ref()
    }

    /// Input channels the layer reads.
    pub fn channels(&self) -> usize {
        self.kernel.shape()[1] * self.config.groups
    }

    /// Weights in Keras order (kernel, bias).
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        let mut w = vec![&self.kernel];
        w.extend(self.bias.iter());
        w
    }

    /// Mutable weights in Keras order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        let mut w = vec![&mut self.kernel];
        w.extend(self.bias.iter_mut());
        w
    }

    /// The regularizers and constraints of [`Conv1D::weights`], in the same order.
    pub(crate) fn weight_rules(&self) -> Vec<(Option<Regularizer>, Option<Constraint>)> {
        let c = &self.config;
        let mut v = vec![(c.kernel_regularizer.clone(), c.kernel_constraint.clone())];
        if self.bias.is_some() {
            v.push((c.bias_regularizer.clone(), c.bias_constraint.clone()));
        }
        v
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// Replaces the activation by `f` of itself (see [`GruCell`]'s counterpart).
    ///
    /// [`GruCell`]: crate::layers::gru_cell::GruCell
    pub(crate) fn map_activation(&mut self, f: impl Fn(Activation) -> Activation) {
        self.config.activation = f(self.config.activation);
    }

    /// Checks `x` and gives the call's sizes.
    fn dims(&self, x: &Tensor<T>) -> Result<Dims, Error> {
        let c = self.channels();
        let (steps_axis, ch_axis) = self.config.axes();
        let expected = || {
            if self.config.channels_first {
                format!("(batch, {c}, steps)")
            } else {
                format!("(batch, steps, {c})")
            }
        };
        if x.rank() != 3 || x.shape()[ch_axis] != c {
            return Err(ShapeError::mismatch(
                format!("{} input", self.config.name),
                x.shape(),
                expected(),
            )
            .into());
        }
        let steps = x.shape()[steps_axis];
        let (pad, out) = self.config.geometry(steps)?;
        Ok(Dims {
            batch: x.shape()[0],
            steps,
            channels: c,
            pad,
            out,
        })
    }

    /// Pre-activation output (`x ⊛ kernel + bias`) in the layer's data format.
    pub fn linear(&self, x: &Tensor<T>, threads: usize) -> Result<Tensor<T>, Error> {
        let d = self.dims(x)?;
        let xl = self.channels_last(x, &d);
        let f = self.config.filters;
        let mut pre = vec![T::zero(); d.batch * d.out * f];
        let mut cols = Vec::new();
        let (kc, fg) = self.group_sizes();
        for rows in self.chunks(&d) {
            for g in 0..self.config.groups {
                self.unfold(&xl, &d, g, rows.clone(), &mut cols);
                gemm(
                    rows.len(),
                    fg,
                    kc,
                    T::one(),
                    Operand::new(&cols, kc),
                    Operand::new(&self.kernel.data()[g * fg..], f),
                    false,
                    &mut pre[rows.start * f + g * fg..],
                    f,
                    threads,
                );
            }
        }
        if let Some(b) = &self.bias {
            if self.bias_on_steps(&d) {
                // pre is (batch, steps, filters): step t gets bias[t].
                for (r, row) in pre.chunks_exact_mut(f).enumerate() {
                    let bv = b.data()[r % d.out];
                    row.iter_mut().for_each(|v| *v += bv);
                }
            } else {
                for row in pre.chunks_exact_mut(f) {
                    row.iter_mut().zip(b.data()).for_each(|(v, bv)| *v += *bv);
                }
            }
        }
        Ok(if self.config.channels_first {
            Tensor::new(vec![d.batch, f, d.out], swap_last2(&pre, d.batch, d.out, f))?
        } else {
            Tensor::new(vec![d.batch, d.out, f], pre)?
        })
    }

    /// The layer on `x`: `activation(x ⊛ kernel + bias)` (the activation over the output's
    /// last axis, as Keras applies it).
    pub fn call(&self, x: &Tensor<T>, threads: usize) -> Result<Tensor<T>, Error> {
        let mut y = self.linear(x, threads)?;
        let last = y.shape()[2].max(1);
        for row in y.data_mut().chunks_exact_mut(last) {
            self.config.activation.apply_row(row);
        }
        Ok(y)
    }

    /// Gradients of the kernel, the bias and the input, from the gradient of the
    /// pre-activation output `dpre` (in the layer's data format).
    pub fn backward(
        &self,
        x: &Tensor<T>,
        dpre: &Tensor<T>,
        threads: usize,
    ) -> Result<Conv1DGrads<T>, Error> {
        let d = self.dims(x)?;
        let f = self.config.filters;
        let want = if self.config.channels_first {
            [d.batch, f, d.out]
        } else {
            [d.batch, d.out, f]
        };
        if dpre.shape() != want {
            return Err(ShapeError::mismatch(
                format!("{} output gradient", self.config.name),
                dpre.shape(),
                format!("{want:?}"),
            )
            .into());
        }
        let xl = self.channels_last(x, &d);
        let dl = if self.config.channels_first {
            swap_last2(dpre.data(), d.batch, f, d.out)
        } else {
            dpre.data().to_vec()
        };
        let (kc, fg) = self.group_sizes();
        let cg = self.kernel.shape()[1];
        let mut dk = vec![T::zero(); self.kernel.len()];
        let mut dxl = vec![T::zero(); xl.len()];
        let mut cols = Vec::new();
        let mut dcols = Vec::new();
        let (s, dil) = (self.config.strides, self.config.dilation_rate);
        for (ci, rows) in self.chunks(&d).into_iter().enumerate() {
            let m = rows.len();
            for g in 0..self.config.groups {
                self.unfold(&xl, &d, g, rows.clone(), &mut cols);
                let dg = &dl[rows.start * f + g * fg..];
                // dK_g += colsᵀ · dY_g
                gemm(
                    kc,
                    fg,
                    m,
                    T::one(),
                    Operand::new(&cols, kc).t(),
                    Operand::new(dg, f),
                    ci > 0,
                    &mut dk[g * fg..],
                    f,
                    threads,
                );
                // dcols = dY_g · K_gᵀ, folded back onto the steps it was read from.
                dcols.clear();
                dcols.resize(m * kc, T::zero());
                gemm(
                    m,
                    kc,
                    fg,
                    T::one(),
                    Operand::new(dg, f),
                    Operand::new(&self.kernel.data()[g * fg..], f).t(),
                    false,
                    &mut dcols,
                    kc,
                    threads,
                );
                for (r, drow) in rows.clone().zip(dcols.chunks_exact(kc)) {
                    let (b, t) = (r / d.out, r % d.out);
                    for j in 0..self.config.kernel_size {
                        let Some(ti) = (t * s + j * dil)
                            .checked_sub(d.pad)
                            .filter(|&ti| ti < d.steps)
                        else {
                            continue;
                        };
                        let dst = &mut dxl[(b * d.steps + ti) * d.channels + g * cg..][..cg];
                        dst.iter_mut()
                            .zip(&drow[j * cg..(j + 1) * cg])
                            .for_each(|(a, v)| *a += *v);
                    }
                }
            }
        }
        let bias = self.bias.as_ref().map(|_| {
            let mut s = vec![T::zero(); f];
            if self.bias_gradient_on_steps(&d) {
                for (r, row) in dl.chunks_exact(f).enumerate() {
                    s[r % d.out] += row.iter().copied().sum::<T>();
                }
            } else {
                for r in dl.chunks_exact(f) {
                    s.iter_mut().zip(r).for_each(|(a, v)| *a += *v);
                }
            }
            s
        });
        let dx = if self.config.channels_first {
            swap_last2(&dxl, d.batch, d.steps, d.channels)
        } else {
            dxl
        };
        Ok(Conv1DGrads {
            kernel: dk,
            bias,
            x: Tensor::new(x.shape().to_vec(), dx)?,
        })
    }

    /// Whether Keras 3.15.1 with the TensorFlow backend adds the bias along the *steps* in
    /// `predict`, `fit` and `evaluate`. Its `ops.add` turns an add of a bias-shaped
    /// `(1, filters, 1)` tensor into `tf.nn.bias_add`, in `NHWC` form whenever the last axis
    /// has the bias' length: with `channels_first` and as many output steps as filters (more
    /// than one), the output `(batch, filters, steps)` gets `bias[t]` at step `t` instead of
    /// `bias[f]` for filter `f` ([`Self::bias_gradient_on_steps`]). In the graphs those methods
    /// run, TensorFlow's optimizer fuses a plain convolution (one group, no dilation) with that
    /// bias add into one convolution that adds `bias[f]` per filter after all; a grouped
    /// convolution (which Keras runs under XLA) or a dilated one is not fused and keeps `bias[t]`.
    /// One exception: the training graph of a `fit` whose batches include a partial one (its
    /// data set's batch size is then unknown when it is traced) keeps `bias[t]` for every
    /// convolution, in every step of the epoch, while `predict`, `evaluate` and `fit`'s
    /// validation still fuse (measured with strides 1 and 2, dilated and grouped convolutions,
    /// and six sample counts and batch sizes; the fused forward of full batches over strides
    /// 1–3, kernel sizes 1–3, both paddings and seven activations). Keras' eager call,
    /// `model(x)`, always gives `bias[t]`; grucell follows `predict` and `fit` (with a graph
    /// traced on unknown step counts Keras would not add along the steps at all; `predict` and
    /// `fit` trace on the data's shapes). Measured with TensorFlow 2.21 on x86 CPUs, where a
    /// `channels_first` convolution runs only in float32 with oneDNN.
    fn bias_on_steps(&self, d: &Dims) -> bool {
        self.bias_gradient_on_steps(d)
            && (self.config.groups > 1 || self.config.dilation_rate > 1 || self.partial_batch_fit)
    }

    /// Whether Keras' gradient of the bias sums the output gradient along the steps: always
    /// when the bias add is written along the steps (see [`Self::bias_on_steps`]), even when
    /// TensorFlow's fused forward adds it per filter, since the gradient is taken on the unfused
    /// `BiasAdd` (so Keras' `fit` then steps the bias by a gradient of another function than
    /// the one it computes; grucell takes the same steps).
    fn bias_gradient_on_steps(&self, d: &Dims) -> bool {
        !self.keras2_bias
            && self.config.channels_first
            && self.config.filters > 1
            && d.out == self.config.filters
    }

    /// Columns of one group's unfolded input (`kernel_size · channels / groups`) and its
    /// filters.
    fn group_sizes(&self) -> (usize, usize) {
        let cg = self.kernel.shape()[1];
        (
            self.config.kernel_size * cg,
            self.config.filters / self.config.groups,
        )
    }

    /// Output rows (`batch · out`, flattened) in chunks whose unfolded input fits
    /// [`COLS_BUDGET`].
    fn chunks(&self, d: &Dims) -> Vec<std::ops::Range<usize>> {
        let (kc, _) = self.group_sizes();
        let per = (COLS_BUDGET / kc.max(1)).max(1);
        let total = d.batch * d.out;
        (0..total.div_ceil(per))
            .map(|i| i * per..((i + 1) * per).min(total))
            .collect()
    }

    /// The input in `(batch, steps, channels)` order.
    fn channels_last(&self, x: &Tensor<T>, d: &Dims) -> Vec<T> {
        if self.config.channels_first {
            swap_last2(x.data(), d.batch, d.channels, d.steps)
        } else {
            x.data().to_vec()
        }
    }

    /// im2col of group `g` for output rows `rows`: row `(b, t)` holds, for each tap `j`, the
    /// group's channels of step `t·s + j·d − pad` (zeros outside the input).
    fn unfold(
        &self,
        xl: &[T],
        d: &Dims,
        g: usize,
        rows: std::ops::Range<usize>,
        cols: &mut Vec<T>,
    ) {
        let (kc, _) = self.group_sizes();
        let cg = self.kernel.shape()[1];
        let (s, dil) = (self.config.strides, self.config.dilation_rate);
        cols.clear();
        cols.resize(rows.len() * kc, T::zero());
        for (r, row) in rows.zip(cols.chunks_exact_mut(kc)) {
            let (b, t) = (r / d.out, r % d.out);
            for j in 0..self.config.kernel_size {
                if let Some(ti) = (t * s + j * dil)
                    .checked_sub(d.pad)
                    .filter(|&ti| ti < d.steps)
                {
                    row[j * cg..(j + 1) * cg]
                        .copy_from_slice(&xl[(b * d.steps + ti) * d.channels + g * cg..][..cg]);
                }
            }
        }
    }
}

/// `(n, p, q)` → `(n, q, p)`.
fn swap_last2<T: Copy>(x: &[T], n: usize, p: usize, q: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for b in 0..n {
        let m = &x[b * p * q..(b + 1) * p * q];
        for j in 0..q {
            out.extend((0..p).map(|i| m[i * q + j]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution written out as its definition.
    fn naive(conv: &Conv1D<f64>, x: &Tensor<f64>) -> Vec<f64> {
        let c = conv.config();
        let (steps_axis, _) = c.axes();
        let (b, t) = (x.shape()[0], x.shape()[steps_axis]);
        let ch = conv.channels();
        let (pad, out) = c.geometry(t).unwrap();
        let cg = ch / c.groups;
        let fg = c.filters / c.groups;
        let at = |bi: usize, ti: usize, ci: usize| {
            if c.channels_first {
                x.data()[(bi * ch + ci) * t + ti]
            } else {
                x.data()[(bi * t + ti) * ch + ci]
            }
        };
        let mut y = vec![0.0; b * out * c.filters];
        for bi in 0..b {
            for to in 0..out {
                for f in 0..c.filters {
                    let g = f / fg;
                    // Keras' bias along the steps (see Conv1D::bias_on_steps).
                    let unfused = c.groups > 1 || c.dilation_rate > 1;
                    let bi_ = if c.channels_first && c.filters > 1 && out == c.filters && unfused {
                        to
                    } else {
                        f
                    };
                    let mut s = conv.bias().map_or(0.0, |b| b.data()[bi_]);
                    for j in 0..c.kernel_size {
                        let ti = (to * c.strides + j * c.dilation_rate) as isize - pad as isize;
                        if ti < 0 || ti as usize >= t {
                            continue;
                        }
                        for k in 0..cg {
                            s += at(bi, ti as usize, g * cg + k)
                                * conv.kernel().data()[(j * cg + k) * c.filters + f];
                        }
                    }
                    let idx = if c.channels_first {
                        (bi * c.filters + f) * out + to
                    } else {
                        (bi * out + to) * c.filters + f
                    };
                    y[idx] = s;
                }
            }
        }
        y
    }

    fn configs() -> Vec<(Conv1DConfig, usize)> {
        let mut v = Vec::new();
        for padding in [Padding::Valid, Padding::Same, Padding::Causal] {
            for (s, d) in [(1, 1), (2, 1), (3, 1), (1, 2)] {
                for (groups, ch) in [(1, 3), (2, 4)] {
                    for cf in [false, true] {
                        let mut c = Conv1DConfig::new(4, 3)
                            .padding(padding)
                            .strides(s)
                            .dilation_rate(d)
                            .groups(groups);
                        c.channels_first = cf;
                        v.push((c, ch));
                    }
                }
            }
        }
        v
    }

    #[test]
    fn matches_the_definition() {
        for (c, ch) in configs() {
            let conv = c.build::<f64>(ch, 3).unwrap();
            let mut conv = conv;
            let bias: Vec<f64> = (0..4).map(|i| 0.1 * i as f64 - 0.2).collect();
            conv.bias = Some(Tensor::new(vec![4], bias).unwrap());
            let t = 7;
            let shape = if c.channels_first {
                vec![2, ch, t]
            } else {
                vec![2, t, ch]
            };
            let n: usize = shape.iter().product();
            let x = Tensor::new(
                shape,
                (0..n).map(|i| ((i * 37) % 11) as f64 / 5.0 - 1.0).collect(),
            )
            .unwrap();
            let y = conv.linear(&x, 1).unwrap();
            let want = naive(&conv, &x);
            for (a, b) in y.data().iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{c:?}: {a} vs {b}");
            }
            let in_shape: Vec<Option<usize>> = x.shape().iter().map(|&v| Some(v)).collect();
            let want_shape: Vec<Option<usize>> = y.shape().iter().map(|&v| Some(v)).collect();
            assert_eq!(c.output_shape(&in_shape), want_shape);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (c, ch) in configs() {
            let conv = c.build::<f64>(ch, 5).unwrap();
            // 7 steps: channels_first with strides 2 gives 4 steps for 4 filters (the bias
            // along the steps, Conv1D::bias_on_steps).
            let t = 7;
            let shape = if c.channels_first {
                vec![2, ch, t]
            } else {
                vec![2, t, ch]
            };
            let n: usize = shape.iter().product();
            let x = Tensor::new(
                shape.clone(),
                (0..n).map(|i| ((i * 13) % 7) as f64 / 3.0 - 1.0).collect(),
            )
            .unwrap();
            let y = conv.linear(&x, 1).unwrap();
            // Loss = Σ w ⊙ y with fixed weights w.
            let w: Vec<f64> = (0..y.len())
                .map(|i| ((i * 5) % 9) as f64 / 4.0 - 1.0)
                .collect();
            let dy = Tensor::new(y.shape().to_vec(), w.clone()).unwrap();
            let g = conv.backward(&x, &dy, 1).unwrap();
            let loss = |conv: &Conv1D<f64>, x: &Tensor<f64>| -> f64 {
                conv.linear(x, 1)
                    .unwrap()
                    .data()
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let h = 1e-6;
            for i in 0..n {
                let mut xp = x.clone();
                xp.data_mut()[i] += h;
                let mut xm = x.clone();
                xm.data_mut()[i] -= h;
                let fd = (loss(&conv, &xp) - loss(&conv, &xm)) / (2.0 * h);
                assert!((fd - g.x.data()[i]).abs() < 1e-6, "{c:?} dx[{i}]");
            }
            for i in 0..conv.kernel.len() {
                let mut cp = conv.clone();
                cp.kernel.data_mut()[i] += h;
                let mut cm = conv.clone();
                cm.kernel.data_mut()[i] -= h;
                let fd = (loss(&cp, &x) - loss(&cm, &x)) / (2.0 * h);
                assert!((fd - g.kernel[i]).abs() < 1e-6, "{c:?} dk[{i}]");
            }
            let db = g.bias.unwrap();
            let d = conv.dims(&x).unwrap();
            if conv.bias_gradient_on_steps(&d) && !conv.bias_on_steps(&d) {
                // Keras' fused forward adds the bias per filter, its gradient sums along the
                // steps: the gradient is not the forward's derivative (Conv1D::bias_on_steps).
                let (f, o) = (c.filters, d.out);
                for (t, v) in db.iter().enumerate() {
                    let want: f64 = (0..d.batch * f).map(|r| w[r * o + t]).sum();
                    assert!((want - v).abs() < 1e-12, "{c:?} db[{t}]");
                }
                continue;
            }
            for (f, v) in db.iter().enumerate() {
                let mut cp = conv.clone();
                if let Some(b) = cp.bias.as_mut() {
                    b.data_mut()[f] += h;
                }
                let fd = (loss(&cp, &x) - loss(&conv, &x)) / h;
                assert!((fd - v).abs() < 1e-5, "{c:?} db[{f}]");
            }
        }
    }

    #[test]
    fn chunked_unfolding_gives_the_same_result() {
        // Enough rows that the unfolded input is cut into several chunks.
        let c = Conv1DConfig::new(2, 4).padding(Padding::Same);
        let conv = c.build::<f32>(512, 1).unwrap();
        let (b, t) = (3, 1100);
        let x = Tensor::new(
            vec![b, t, 512],
            (0..b * t * 512).map(|i| ((i % 97) as f32) / 97.0).collect(),
        )
        .unwrap();
        assert!(conv.chunks(&conv.dims(&x).unwrap()).len() > 1);
        let y = conv.linear(&x, 1).unwrap();
        // Row by row, each batch row alone (one chunk each).
        for bi in 0..b {
            let xi = Tensor::new(
                vec![1, t, 512],
                x.data()[bi * t * 512..(bi + 1) * t * 512].to_vec(),
            )
            .unwrap();
            let yi = conv.linear(&xi, 1).unwrap();
            assert_eq!(yi.data(), &y.data()[bi * t * 2..(bi + 1) * t * 2]);
        }
    }

    #[test]
    fn bad_inputs_and_configs_are_errors() {
        let conv = Conv1DConfig::new(2, 5).build::<f32>(3, 0).unwrap();
        let short = Tensor::<f32>::zeros(vec![1, 4, 3]);
        let e = conv.call(&short, 1).unwrap_err().to_string();
        assert!(e.contains("at least 5"), "{e}");
        let wrong = Tensor::<f32>::zeros(vec![1, 8, 2]);
        assert!(conv
            .call(&wrong, 1)
            .unwrap_err()
            .to_string()
            .contains("(batch, steps, 3)"));
        let cfg = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        for (bad, what) in [
            (r#"{"filters": 4, "kernel_size": [0]}"#, "kernel_size"),
            (r#"{"filters": 4, "kernel_size": 3, "groups": 3}"#, "groups"),
            (
                r#"{"filters": 4, "kernel_size": 3, "strides": 2, "dilation_rate": 2}"#,
                "dilation_rate",
            ),
            (
                r#"{"filters": 4, "kernel_size": 3, "padding": "full"}"#,
                "padding",
            ),
            (r#"{"filters": 0, "kernel_size": 3}"#, "filters"),
            (r#"{"filters": 4, "kernel_size": [3, 3]}"#, "kernel_size"),
        ] {
            let e = Conv1DConfig::from_keras(&cfg(bad)).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }
}
