//! `Dense`: `activation(x · kernel + bias)` over the last axis.

use crate::engine::gemm::{gemm, Operand};
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{activation_of, dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{get_bool, get_str, get_u64};
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;
use serde_json::{json, Map, Value};

/// Configuration of a Keras `Dense` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseConfig {
    /// Output width.
    pub units: usize,
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
    /// Penalty on the layer's output, added to the loss divided by the batch size (not applied
    /// inside a `TimeDistributed` wrapper, where Keras 3 calls the layer's `call` directly).
    pub activity_regularizer: Option<Regularizer>,
    /// Layer name.
    pub name: String,
}

impl DenseConfig {
    /// `Dense(units)` with Keras defaults.
    pub fn new(units: usize) -> Self {
        DenseConfig {
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::zeros(),
            kernel_regularizer: None,
            bias_regularizer: None,
            kernel_constraint: None,
            bias_constraint: None,
            activity_regularizer: None,
            name: "dense".into(),
        }
    }

    /// Sets the activation.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }

    /// Sets the name.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = n.into();
        self
    }

    /// Reads a Keras `Dense` config.
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let units = get_u64(c, "units")?
            .ok_or_else(|| ConfigError::invalid("Dense.units", "missing", "a positive integer"))?;
        if units == 0 || units as usize > MAX_UNITS * 16 {
            return Err(ConfigError::invalid(
                "Dense.units",
                units,
                "a positive integer (at most 1048576)",
            ));
        }
        let mut d = DenseConfig::new(units as usize);
        d.activation = activation_of(c, "activation", Activation::Linear)?;
        d.use_bias = get_bool(c, "use_bias", true)?;
        if let Some(v) = c.get("kernel_initializer") {
            d.kernel_initializer = Initializer::from_keras(v)?;
        }
        if let Some(v) = c.get("bias_initializer") {
            d.bias_initializer = Initializer::from_keras(v)?;
        }
        d.kernel_regularizer = c
            .get("kernel_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        d.bias_regularizer = c
            .get("bias_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        d.kernel_constraint = c
            .get("kernel_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        d.bias_constraint = c
            .get("bias_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        d.activity_regularizer = c
            .get("activity_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        if let Some(n) = get_str(c, "name")? {
            d.name = n.into();
        }
        if let Some(Value::Object(q)) = c.get("quantization_config") {
            return Err(ConfigError::unsupported(
                "Dense option",
                format!("quantization_config {}", Value::Object(q.clone())),
            ));
        }
        Ok(d)
    }

    /// The Keras config object.
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        // Keras' base layer config holds the key only when one is set.
        if let Some(r) = &self.activity_regularizer {
            m.insert("activity_regularizer".into(), r.to_keras());
        }
        m.insert("units".into(), json!(self.units));
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
        m.insert(
            "kernel_constraint".into(),
            opt(self.kernel_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert(
            "bias_constraint".into(),
            opt(self.bias_constraint.as_ref().map(Constraint::to_keras)),
        );
        m.insert("quantization_config".into(), Value::Null);
        m
    }

    /// Builds the layer with fresh weights for `input_dim` features.
    pub fn build<T: Float>(&self, input_dim: usize, seed: u64) -> Result<Dense<T>, Error> {
        let kernel = self
            .kernel_initializer
            .init(&[input_dim, self.units], seed)?;
        let bias = if self.use_bias {
            Some(
                self.bias_initializer
                    .init(&[self.units], seed.wrapping_add(1))?,
            )
        } else {
            None
        };
        Dense::from_weights(self.clone(), kernel, bias)
    }
}

/// A Dense layer with weights: kernel `(in, units)`, bias `(units,)`.
#[derive(Clone, Debug)]
pub struct Dense<T = f32> {
    config: DenseConfig,
    kernel: Tensor<T>,
    bias: Option<Tensor<T>>,
}

impl<T: Float> Dense<T> {
    /// Replaces the activation by `f` of itself (see [`GruCell`]'s counterpart).
    ///
    /// [`GruCell`]: crate::layers::gru_cell::GruCell
    pub(crate) fn map_activation(&mut self, f: impl Fn(Activation) -> Activation) {
        self.config.activation = f(self.config.activation);
    }

    /// Wraps weights; fails when shapes disagree with the config.
    pub fn from_weights(
        config: DenseConfig,
        kernel: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Self, Error> {
        if kernel.rank() != 2 || kernel.shape()[1] != config.units || kernel.shape()[0] == 0 {
            return Err(ShapeError::mismatch(
                format!("{}.kernel", config.name),
                kernel.shape(),
                format!("(input_dim, {})", config.units),
            )
            .into());
        }
        match (&bias, config.use_bias) {
            (Some(b), true) if b.shape() == [config.units] => {}
            (None, false) => {}
            (b, _) => {
                return Err(ShapeError::mismatch(
                    format!("{}.bias", config.name),
                    b.as_ref().map_or(&[][..], |b| b.shape()),
                    if config.use_bias {
                        format!("({},)", config.units)
                    } else {
                        "no bias (use_bias = false)".into()
                    },
                )
                .into())
            }
        }
        Ok(Dense {
            config,
            kernel,
            bias,
        })
    }

    /// The config.
    pub fn config(&self) -> &DenseConfig {
        &self.config
    }
    /// Kernel `(in, units)`.
    pub fn kernel(&self) -> &Tensor<T> {
        &self.kernel
    }
    /// Bias.
    pub fn bias(&self) -> Option<&Tensor<T>> {
        self.bias.as_ref()
    }
    /// Input width.
    pub fn input_dim(&self) -> usize {
        self.kernel.shape()[0]
    }
    /// Weights in Keras order.
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        let mut w = vec![&self.kernel];
        if let Some(b) = &self.bias {
            w.push(b);
        }
        w
    }
    /// Mutable weights in Keras order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        let mut w = vec![&mut self.kernel];
        if let Some(b) = &mut self.bias {
            w.push(b);
        }
        w
    }
    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// Pre-activation `x · kernel + bias` over the last axis of `x` (any rank ≥ 1).
    pub fn linear(&self, x: &Tensor<T>, threads: usize) -> Result<Tensor<T>, Error> {
        let d = self.input_dim();
        if x.rank() == 0 || x.shape()[x.rank() - 1] != d {
            return Err(ShapeError::mismatch(
                format!("{} input", self.config.name),
                x.shape(),
                format!("(…, {d})"),
            )
            .into());
        }
        let n = self.config.units;
        let bias = self.bias.as_ref().map(Tensor::data);
        let out = affine(x.data(), d, self.kernel.data(), n, bias, threads);
        let mut shape = x.shape().to_vec();
        let last = shape.len() - 1;
        shape[last] = n;
        Ok(Tensor::new(shape, out)?)
    }

    /// `activation(x · kernel + bias)`.
    pub fn call(&self, x: &Tensor<T>, threads: usize) -> Result<Tensor<T>, Error> {
        let mut y = self.linear(x, threads)?;
        let n = self.config.units;
        for row in y.data_mut().chunks_exact_mut(n) {
            self.config.activation.apply_row(row);
        }
        Ok(y)
    }
}

/// `x · W + b` for the rows of `x` (`d` values each), `W` row-major `d × n`: the product of
/// Dense and of MultiHeadAttention's projections.
pub(crate) fn affine<T: Float>(
    x: &[T],
    d: usize,
    kernel: &[T],
    n: usize,
    bias: Option<&[T]>,
    threads: usize,
) -> Vec<T> {
    let rows = x.len() / d.max(1);
    let mut out = vec![T::zero(); rows * n];
    gemm(
        rows,
        n,
        d,
        T::one(),
        Operand::new(x, d),
        Operand::new(kernel, n),
        false,
        &mut out,
        n,
        threads,
    );
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += *bv);
        }
    }
    out
}

/// Gradients of [`affine`] for the output gradient `dy`: `(dW = xᵀ·dy, db = Σ dy` (with a
/// bias)`, dx = dy·Wᵀ)`.
pub(crate) fn affine_backward<T: Float>(
    x: &[T],
    d: usize,
    kernel: &[T],
    n: usize,
    with_bias: bool,
    dy: &[T],
    threads: usize,
) -> (Vec<T>, Option<Vec<T>>, Vec<T>) {
    let rows = x.len() / d.max(1);
    let mut dw = vec![T::zero(); d * n];
    gemm(
        d,
        n,
        rows,
        T::one(),
        Operand::new(x, d).t(),
        Operand::new(dy, n),
        false,
        &mut dw,
        n,
        threads,
    );
    let db = with_bias.then(|| {
        let mut s = vec![T::zero(); n];
        for r in dy.chunks_exact(n.max(1)) {
            s.iter_mut().zip(r).for_each(|(a, b)| *a += *b);
        }
        s
    });
    let mut dx = vec![T::zero(); rows * d];
    gemm(
        rows,
        d,
        n,
        T::one(),
        Operand::new(dy, n),
        Operand::new(kernel, n).t(),
        false,
        &mut dx,
        d,
        threads,
    );
    (dw, db, dx)
}
