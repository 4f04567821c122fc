//! `MultiHeadAttention` over sequences, as Keras 3.15.1 computes it with the TensorFlow backend.
//!
//! Called on `(query, value)` or `(query, value, key)` (`key` defaults to `value`), each
//! `(batch, steps, dim)`:
//!
//! - projections (Keras' `EinsumDense` sublayers `query`, `key`, `value`): `Q = query·Wq + bq`
//!   `(B, T, heads, key_dim)`, `K = key·Wk + bk` `(B, S, heads, key_dim)`,
//!   `V = value·Wv + bv` `(B, S, heads, value_dim)`;
//! - per head, scores `Q·Kᵀ / √key_dim` `(B, heads, T, S)`, masked where the query's mask, the
//!   value's and the key's masks, the call's `use_causal_mask` or the layer's `sliding_window`
//!   hide a pair, softmax over `S`; dropout on these weights in training; `O = weights·V`;
//! - the output projection (`attention_output`): `O·Wo + bo`, `(B, T, output_shape)` (the query's
//!   last dimension by default). The output carries the query's mask.
//!
//! Keras takes one of two routes, and they differ where every key step of a query step is
//! masked: without dropout and without `return_attention_scores` it calls
//! `ops.dot_product_attention`, which gives such a row uniform weights `1/S`; otherwise its
//! masked `Softmax` layer, which gives it zero weights. grucell follows the route Keras takes.
//!
//! Only the default `attention_axes` (the steps) of 3-D inputs are supported; `use_gate`,
//! `flash_attention`, an `activity_regularizer` (Keras gives it to each projection) and an
//! `attention_mask` call argument are refused with an error naming them.

use std::borrow::Cow;

use rand::rngs::StdRng;
use serde_json::{json, Map, Value};

use crate::engine::gemm::{gemm, Operand};
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::attention::{AttentionCall, AttentionGrads};
use crate::layers::constraint::Constraint;
use crate::layers::dense::{affine, affine_backward};
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::initializer::{Initializer, VsPreset};
use crate::layers::keras_json::{get_bool, get_f64, get_str, get_u64};
use crate::layers::noise::keep_factors;
use crate::layers::regularizer::Regularizer;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// Configuration of a Keras `MultiHeadAttention` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiHeadAttentionConfig {
    /// Layer name.
    pub name: String,
    /// Number of heads.
    pub num_heads: usize,
    /// Size of each head's query and key projections.
    pub key_dim: usize,
    /// Size of each head's value projection (`key_dim` by default).
    pub value_dim: usize,
    /// Dropout rate of the attention weights in training.
    pub dropout: f64,
    /// Projections with biases (default true).
    pub use_bias: bool,
    /// Last dimension of the output (`None`: the query's).
    pub output_dim: Option<usize>,
    /// Each query step sees the key steps less than this far away (`None`: all).
    pub sliding_window: Option<usize>,
    /// Initializer of the four kernels.
    pub kernel_initializer: Initializer,
    /// Initializer of the four biases.
    pub bias_initializer: Initializer,
    /// Penalty of each kernel.
    pub kernel_regularizer: Option<Regularizer>,
    /// Penalty of each bias.
    pub bias_regularizer: Option<Regularizer>,
    /// Constraint of each kernel.
    pub kernel_constraint: Option<Constraint>,
    /// Constraint of each bias.
    pub bias_constraint: Option<Constraint>,
    /// Seed of the dropout.
    pub seed: Option<u64>,
}

impl MultiHeadAttentionConfig {
    /// Reads a Keras `MultiHeadAttention` config.
    ///
    /// ```
    /// use grucell::layers::multi_head_attention::MultiHeadAttentionConfig;
    /// let c = serde_json::json!({"name": "mha", "num_heads": 2, "key_dim": 4, "output_shape": [3]});
    /// let cfg = MultiHeadAttentionConfig::from_keras(c.as_object().unwrap())?;
    /// assert_eq!((cfg.num_heads, cfg.key_dim, cfg.value_dim, cfg.output_dim), (2, 4, 4, Some(3)));
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let size = |key: &str, v: &Value| -> Result<usize, ConfigError> {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_UNITS).contains(n))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("MultiHeadAttention.{key}"),
                        v,
                        format!("an integer from 1 to {MAX_UNITS}"),
                    )
                })
        };
        let need = |key: &str| -> Result<usize, ConfigError> {
            size(key, c.get(key).unwrap_or(&Value::Null))
        };
        let num_heads = need("num_heads")?;
        let key_dim = need("key_dim")?;
        let value_dim = match c.get("value_dim") {
            None | Some(Value::Null) => key_dim,
            Some(v) => size("value_dim", v)?,
        };
        let output_dim = match c.get("output_shape") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.len() == 1 => Some(size("output_shape", &a[0])?),
            Some(v @ Value::Number(_)) => Some(size("output_shape", v)?),
            Some(v) => {
                return Err(ConfigError::unsupported(
                    "MultiHeadAttention output_shape",
                    format!("{v}: grucell supports one output dimension"),
                ))
            }
        };
        match c.get("attention_axes") {
            None | Some(Value::Null) => {}
            Some(v)
                if v == &json!([1]) || v == &json!(1) || v == &json!([-2]) || v == &json!(-2) => {}
            Some(v) => {
                return Err(ConfigError::unsupported(
                    "MultiHeadAttention attention_axes",
                    format!("{v}: grucell attends over the steps of 3-D inputs only"),
                ))
            }
        }
        let sliding_window = match c.get("sliding_window") {
            None | Some(Value::Null) => None,
            Some(v) => Some(size("sliding_window", v)?),
        };
        for key in ["use_gate", "flash_attention"] {
            if get_bool(c, key, false)? {
                return Err(ConfigError::unsupported(
                    "MultiHeadAttention option",
                    format!("{key} = true"),
                ));
            }
        }
        if c.get("activity_regularizer").is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::unsupported(
                "MultiHeadAttention option",
                "activity_regularizer (Keras applies it to each of the four projections)",
            ));
        }
        let dropout = get_f64(c, "dropout", 0.0)?;
        if !(0.0..1.0).contains(&dropout) {
            return Err(ConfigError::invalid(
                "MultiHeadAttention.dropout",
                dropout,
                "a rate from 0 to below 1",
            ));
        }
        let init = |key: &str, default: Initializer| -> Result<Initializer, ConfigError> {
            c.get(key)
                .filter(|v| !v.is_null())
                .map_or(Ok(default), Initializer::from_keras)
        };
        let reg = |key: &str| c.get(key).map_or(Ok(None), Regularizer::from_keras);
        let con = |key: &str| c.get(key).map_or(Ok(None), Constraint::from_keras);
        Ok(MultiHeadAttentionConfig {
            name: get_str(c, "name")?.unwrap_or("multi_head_attention").into(),
            num_heads,
            key_dim,
            value_dim,
            dropout,
            use_bias: get_bool(c, "use_bias", true)?,
            output_dim,
            sliding_window,
            kernel_initializer: init(
                "kernel_initializer",
                VsPreset::GlorotUniform.initializer(None),
            )?,
            bias_initializer: init("bias_initializer", Initializer::zeros())?,
            kernel_regularizer: reg("kernel_regularizer")?,
            bias_regularizer: reg("bias_regularizer")?,
            kernel_constraint: con("kernel_constraint")?,
            bias_constraint: con("bias_constraint")?,
            seed: get_u64(c, "seed")?,
        })
    }

    /// The Keras config object (keys in Keras' order).
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("num_heads".into(), json!(self.num_heads));
        m.insert("key_dim".into(), json!(self.key_dim));
        m.insert("value_dim".into(), json!(self.value_dim));
        m.insert("dropout".into(), json!(self.dropout));
        m.insert("use_bias".into(), json!(self.use_bias));
        m.insert("use_gate".into(), json!(false));
        m.insert(
            "output_shape".into(),
            opt(self.output_dim.map(|d| json!([d]))),
        );
        m.insert("attention_axes".into(), json!([1]));
        m.insert(
            "sliding_window".into(),
            opt(self.sliding_window.map(|w| json!(w))),
        );
        m.insert(
            "kernel_initializer".into(),
            self.kernel_initializer.to_keras(),
        );
        m.insert("bias_initializer".into(), self.bias_initializer.to_keras());
        let r = |x: &Option<Regularizer>| opt(x.as_ref().map(Regularizer::to_keras));
        let k = |x: &Option<Constraint>| opt(x.as_ref().map(Constraint::to_keras));
        m.insert("kernel_regularizer".into(), r(&self.kernel_regularizer));
        m.insert("bias_regularizer".into(), r(&self.bias_regularizer));
        m.insert("activity_regularizer".into(), Value::Null);
        m.insert("kernel_constraint".into(), k(&self.kernel_constraint));
        m.insert("bias_constraint".into(), k(&self.bias_constraint));
        m.insert("seed".into(), json!(self.seed));
        m
    }

    /// Builds the layer with fresh weights for inputs of `query_dim`, `value_dim` and
    /// `key_dim` features (Keras' initializers; each weight its own fallback seed).
    pub fn build<T: Float>(
        &self,
        query_dim: usize,
        value_dim: usize,
        key_dim: usize,
        seed: u64,
    ) -> Result<MultiHeadAttention<T>, Error> {
        let mut weights = Vec::new();
        for (i, shape) in self
            .weight_shapes(query_dim, value_dim, key_dim)
            .iter()
            .enumerate()
        {
            let init = if shape.len() == 3 {
                &self.kernel_initializer
            } else {
                &self.bias_initializer
            };
            weights.push(init.init(shape, seed.wrapping_add(i as u64))?);
        }
        MultiHeadAttention::from_weights(self.clone(), weights)
    }

    /// The shapes of the weights, in Keras' order: query kernel and bias, key kernel and bias,
    /// value kernel and bias, output kernel and bias (no biases without `use_bias`).
    fn weight_shapes(&self, dq: usize, dv: usize, dk: usize) -> Vec<Vec<usize>> {
        let (n, kd, vd) = (self.num_heads, self.key_dim, self.value_dim);
        let out = self.output_dim.unwrap_or(dq);
        let mut s = Vec::new();
        for (kernel, bias) in [
            (vec![dq, n, kd], vec![n, kd]),
            (vec![dk, n, kd], vec![n, kd]),
            (vec![dv, n, vd], vec![n, vd]),
            (vec![n, vd, out], vec![out]),
        ] {
            s.push(kernel);
            if self.use_bias {
                s.push(bias);
            }
        }
        s
    }
}

/// A `MultiHeadAttention` layer with its weights.
///
/// ```
/// use grucell::layers::attention::AttentionCall;
/// use grucell::layers::multi_head_attention::MultiHeadAttentionConfig;
/// use grucell::Tensor;
/// let c = serde_json::json!({"name": "mha", "num_heads": 2, "key_dim": 3});
/// let cfg = MultiHeadAttentionConfig::from_keras(c.as_object().unwrap())?;
/// let mha = cfg.build::<f32>(4, 4, 4, 7)?;
/// let x = Tensor::new(vec![1, 5, 4], (0..20).map(|i| i as f32 * 0.1).collect())?;
/// let (y, scores) = mha.call(&x, &x, None, [None, None, None], AttentionCall::default())?;
/// assert_eq!(y.shape(), &[1, 5, 4]);
/// assert_eq!(scores.shape(), &[1, 2, 5, 5]); // (batch, heads, query steps, key steps)
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MultiHeadAttention<T = f32> {
    config: MultiHeadAttentionConfig,
    /// Keras' weight order (see [`MultiHeadAttentionConfig::build`]).
    weights: Vec<Tensor<T>>,
}

/// Everything a training call keeps for its backward pass.
#[derive(Clone, Debug)]
pub struct MhaTrace<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// Softmax weights `(B, heads, T, S)` before dropout.
    probs: Vec<T>,
    /// Dropout factors of the weights (training with dropout only).
    keep: Option<Vec<T>>,
    /// Attention output `(B, T, heads·value_dim)` before the output projection.
    o: Vec<T>,
    /// Which (query step, key step) pairs count, `(B, T, S)`; `None`: all.
    pairs: Option<Vec<bool>>,
    /// Keras' explicit route (query scaled before the product) rather than
    /// `dot_product_attention`'s (scores scaled after it).
    explicit: bool,
}

/// A training call's output, attention weights `(batch, heads, T, S)` and trace.
pub type TrainOutput<T> = (Tensor<T>, Tensor<T>, MhaTrace<T>);

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    s: usize,
}

impl<T: Float> MultiHeadAttention<T> {
    /// The layer of a config with its weights in Keras' order; their shapes give the input sizes.
    pub fn from_weights(
        config: MultiHeadAttentionConfig,
        weights: Vec<Tensor<T>>,
    ) -> Result<Self, Error> {
        let n = if config.use_bias { 8 } else { 4 };
        if weights.len() != n {
            return Err(ShapeError::mismatch(
                format!("{} weights", config.name),
                &[weights.len()],
                format!(
                    "{n} arrays (query, key, value and output kernels{})",
                    if config.use_bias { " and biases" } else { "" }
                ),
            )
            .into());
        }
        let step = if config.use_bias { 2 } else { 1 };
        let first = |i: usize| weights[i * step].shape().first().copied().unwrap_or(0);
        let (dq, dk, dv) = (first(0), first(1), first(2));
        for (w, want) in weights.iter().zip(config.weight_shapes(dq, dv, dk)) {
            if w.shape() != want.as_slice() || want.iter().any(|&d| d == 0 || d > MAX_UNITS * 16) {
                return Err(ShapeError::mismatch(
                    format!("{} weight", config.name),
                    w.shape(),
                    format!(
                        "{want:?} (num_heads {}, key_dim {}, value_dim {})",
                        config.num_heads, config.key_dim, config.value_dim
                    ),
                )
                .into());
            }
        }
        Ok(MultiHeadAttention { config, weights })
    }

    /// The layer's config.
    pub fn config(&self) -> &MultiHeadAttentionConfig {
        &self.config
    }

    /// The weights in Keras' order.
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        self.weights.iter().collect()
    }

    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        self.weights.iter_mut().collect()
    }

    /// Each weight's regularizer and constraint (kernels, biases alternating as the weights).
    pub(crate) fn weight_rules(&self) -> Vec<(Option<Regularizer>, Option<Constraint>)> {
        let c = &self.config;
        self.weights
            .iter()
            .map(|w| {
                if w.rank() == 3 {
                    (c.kernel_regularizer.clone(), c.kernel_constraint.clone())
                } else {
                    (c.bias_regularizer.clone(), c.bias_constraint.clone())
                }
            })
            .collect()
    }

    /// Number of weights.
    pub fn param_count(&self) -> usize {
        self.weights.iter().map(Tensor::len).sum()
    }

    /// The weight of projection `p` (0 query, 1 key, 2 value, 3 output): kernel and bias.
    fn proj(&self, p: usize) -> (&Tensor<T>, Option<&Tensor<T>>) {
        if self.config.use_bias {
            (&self.weights[2 * p], Some(&self.weights[2 * p + 1]))
        } else {
            (&self.weights[p], None)
        }
    }

    /// Input feature counts the weights were made for: query, value, key.
    fn input_dims(&self) -> (usize, usize, usize) {
        let d = |p: usize| self.proj(p).0.shape()[0];
        (d(0), d(2), d(1))
    }

    /// Last dimension of the output.
    pub fn output_dim(&self) -> usize {
        *self.proj(3).0.shape().last().unwrap_or(&0)
    }

    fn dims(&self, q: &Tensor<T>, v: &Tensor<T>, k: &Tensor<T>) -> Result<Dims, Error> {
        let (dq, dv, dk) = self.input_dims();
        let name = &self.config.name;
        let three = |x: &Tensor<T>, what: &str, d: usize| -> Result<(usize, usize), Error> {
            match *x.shape() {
                [b, t, f] if f == d => Ok((b, t)),
                _ => Err(ShapeError::mismatch(
                    format!("{what} of `{name}`"),
                    x.shape(),
                    format!("(batch, steps, {d})"),
                )
                .into()),
            }
        };
        let (b, t) = three(q, "query", dq)?;
        let (bv, s) = three(v, "value", dv)?;
        let (bk, sk) = three(k, "key", dk)?;
        if (bv, bk, sk) != (b, b, s) {
            return Err(ShapeError::mismatch(
                format!("key of `{name}`"),
                k.shape(),
                format!("the query's batch {b} and the value's {s} steps"),
            )
            .into());
        }
        Ok(Dims { b, t, s })
    }

    /// Which (query step, key step) pairs count, `(B, T, S)`, from the masks of the query,
    /// value and key, the causal mask and the sliding window; `None` when nothing is masked.
    fn pairs(
        &self,
        n: Dims,
        masks: [Option<&Mask>; 3],
        causal: bool,
    ) -> Result<Option<Vec<bool>>, Error> {
        let window = self.config.sliding_window;
        if masks.iter().all(Option::is_none) && !causal && window.is_none() {
            return Ok(None);
        }
        for (m, steps, what) in [
            (masks[0], n.t, "query"),
            (masks[1], n.s, "value"),
            (masks[2], n.s, "key"),
        ] {
            if let Some(m) = m {
                if (m.batch, m.time) != (n.b, steps) {
                    return Err(ShapeError::mismatch(
                        format!("{what} mask of `{}`", self.config.name),
                        &[m.batch, m.time],
                        format!("({}, {steps})", n.b),
                    )
                    .into());
                }
            }
        }
        let keeps = |m: Option<&Mask>, i: usize| m.is_none_or(|m| m.data[i]);
        let mut out = Vec::with_capacity(n.b * n.t * n.s);
        for b in 0..n.b {
            for i in 0..n.t {
                for j in 0..n.s {
                    out.push(
                        keeps(masks[0], b * n.t + i)
                            && keeps(masks[1], b * n.s + j)
                            && keeps(masks[2], b * n.s + j)
                            && (!causal || j <= i)
                            && window.is_none_or(|w| i.abs_diff(j) < w),
                    );
                }
            }
        }
        Ok(Some(out))
    }

    /// `(inputs, outputs)` of projection `p` as a matrix product: the output kernel is
    /// `(heads, value_dim, out)`, its first two axes the input.
    fn proj_dims(&self, p: usize) -> (usize, usize) {
        let w = self.proj(p).0;
        let d = if p == 3 {
            w.shape()[0] * w.shape()[1]
        } else {
            w.shape()[0]
        };
        (d, w.len() / d.max(1))
    }

    /// Whether Keras adds projection `p`'s bias along the input's `steps` instead of per head:
    /// a query, key or value projection of size 1 per head (`key_dim` or `value_dim` 1) with
    /// more than one head, and as many heads as the input has steps. Keras 3.15.1's `EinsumDense`
    /// adds its `(heads, 1)` bias with `ops.add`, which on TensorFlow becomes `tf.nn.bias_add`
    /// whenever the bias has one axis longer than 1 whose length is the output's second or last
    /// axis; on the output `(batch, steps, heads, 1)` that is the steps', and `bias_add` in `NCHW`
    /// form adds `bias[t]` at step `t`. Eager calls and `predict` agree here (the einsum is not
    /// fused with it), and the gradient is that function's.
    fn bias_on_steps(&self, p: usize, steps: usize) -> bool {
        let w = self.proj(p).0.shape();
        p < 3 && self.config.use_bias && w[2] == 1 && w[1] > 1 && w[1] == steps
    }

    /// `x·W + b` of projection `p` over an input of `steps` steps.
    fn project(&self, p: usize, x: &[T], steps: usize) -> Vec<T> {
        let (w, bias) = self.proj(p);
        let (d, n) = self.proj_dims(p);
        if !self.bias_on_steps(p, steps) {
            return affine(x, d, w.data(), n, bias.map(Tensor::data), 1);
        }
        let mut y = affine(x, d, w.data(), n, None, 1);
        if let Some(b) = bias {
            for (r, row) in y.chunks_exact_mut(n).enumerate() {
                let bt = b.data()[r % steps];
                row.iter_mut().for_each(|v| *v += bt);
            }
        }
        y
    }

    /// Gradients of projection `p` (input `x` of `steps` steps, output gradient `dy`): its
    /// weights' into `wgrads` (Keras' order), the input's returned.
    fn project_back(
        &self,
        p: usize,
        x: &[T],
        steps: usize,
        dy: &[T],
        wgrads: &mut [Vec<T>],
    ) -> Vec<T> {
        let (w, _) = self.proj(p);
        let (d, n) = self.proj_dims(p);
        let (dw, db, dx) = affine_backward(x, d, w.data(), n, self.config.use_bias, dy, 1);
        let step = if self.config.use_bias { 2 } else { 1 };
        wgrads[p * step] = dw;
        if let Some(mut db) = db {
            if self.bias_on_steps(p, steps) {
                db.iter_mut().for_each(|g| *g = T::zero());
                for (r, row) in dy.chunks_exact(n).enumerate() {
                    db[r % steps] += row.iter().copied().sum::<T>();
                }
            }
            wgrads[p * step + 1] = db;
        }
        dx
    }

    /// The output and the attention weights `(batch, heads, T, S)` of a call at inference.
    /// `masks` are the query's, the value's and the key's.
    pub fn call(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        masks: [Option<&Mask>; 3],
        opts: AttentionCall,
    ) -> Result<(Tensor<T>, Tensor<T>), Error> {
        let (out, scores, _) = self.call_train(q, v, k, masks, opts, None)?;
        Ok((out, scores))
    }

    /// [`MultiHeadAttention::call`] in training (`rng`: dropout on the weights), with what the
    /// backward pass needs.
    pub fn call_train(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        masks: [Option<&Mask>; 3],
        opts: AttentionCall,
        rng: Option<&mut StdRng>,
    ) -> Result<TrainOutput<T>, Error> {
        let kx = k.unwrap_or(v);
        let n = self.dims(q, v, kx)?;
        let key_mask = if k.is_some() { masks[2] } else { None };
        let pairs = self.pairs(n, [masks[0], masks[1], key_mask], opts.use_causal_mask)?;
        let (heads, kd, vd) = (
            self.config.num_heads,
            self.config.key_dim,
            self.config.value_dim,
        );
        let explicit = self.config.dropout > 0.0 || opts.return_attention_scores;
        let scale = T::one() / T::of(kd as f64).sqrt();
        let qp = self.project(0, q.data(), q.shape()[1]);
        let kp = self.project(1, kx.data(), kx.shape()[1]);
        let vp = self.project(2, v.data(), v.shape()[1]);
        let qs = scaled_query(&qp, explicit, scale);
        let (ldq, ldv) = (heads * kd, heads * vd);
        let (t, s) = (n.t, n.s);
        let mut probs = vec![T::zero(); n.b * heads * t * s];
        for b in 0..n.b {
            for h in 0..heads {
                let at = (b * heads + h) * t * s;
                let p = &mut probs[at..at + t * s];
                gemm(
                    t,
                    s,
                    kd,
                    T::one(),
                    Operand::new(&qs[b * t * ldq + h * kd..], ldq),
                    Operand::new(&kp[b * s * ldq + h * kd..], ldq).t(),
                    false,
                    p,
                    s,
                    1,
                );
                for (i, row) in p.chunks_exact_mut(s.max(1)).enumerate() {
                    if !explicit {
                        row.iter_mut().for_each(|x| *x *= scale);
                    }
                    let keep = pairs.as_ref().map(|m| &m[(b * t + i) * s..][..s]);
                    softmax_row(row, keep, explicit);
                }
            }
        }
        let keep = match rng {
            Some(r) if self.config.dropout > 0.0 => {
                Some(keep_factors::<T>(probs.len(), self.config.dropout, r))
            }
            _ => None,
        };
        let weights = dropped_weights(&probs, keep.as_deref());
        let mut o = vec![T::zero(); n.b * t * ldv];
        for b in 0..n.b {
            for h in 0..heads {
                let at = (b * heads + h) * t * s;
                gemm(
                    t,
                    vd,
                    s,
                    T::one(),
                    Operand::new(&weights[at..at + t * s], s),
                    Operand::new(&vp[b * s * ldv + h * vd..], ldv),
                    false,
                    &mut o[b * t * ldv + h * vd..],
                    ldv,
                    1,
                );
            }
        }
        let out = self.project(3, &o, q.shape()[1]);
        let out = Tensor::new(vec![n.b, t, self.output_dim()], out)?;
        let scores = Tensor::new(vec![n.b, heads, t, s], probs.clone())?;
        let trace = MhaTrace {
            q: qp,
            k: kp,
            v: vp,
            probs,
            keep,
            o,
            pairs,
            explicit,
        };
        Ok((out, scores, trace))
    }

    /// Gradients of a call from the gradient of its output (`d_out`) and/or of its returned
    /// attention weights (`d_scores`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        trace: &MhaTrace<T>,
        d_out: Option<&Tensor<T>>,
        d_scores: Option<&Tensor<T>>,
    ) -> Result<AttentionGrads<T>, Error> {
        let kx = k.unwrap_or(v);
        let n = self.dims(q, v, kx)?;
        let (heads, kd, vd) = (
            self.config.num_heads,
            self.config.key_dim,
            self.config.value_dim,
        );
        let (t, s) = (n.t, n.s);
        let (ldq, ldv) = (heads * kd, heads * vd);
        let dout_dim = self.output_dim();
        if trace.probs.len() != n.b * heads * t * s
            || trace.o.len() != n.b * t * ldv
            || trace.q.len() != n.b * t * ldq
            || trace.k.len() != n.b * s * ldq
            || trace.v.len() != n.b * s * ldv
        {
            return Err(ShapeError::mismatch(
                "attention trace",
                &[trace.probs.len()],
                format!(
                    "the trace of a call on these inputs ({} weights)",
                    n.b * heads * t * s
                ),
            )
            .into());
        }
        let zeros_out;
        let d_out = match d_out {
            Some(d) => d,
            None => {
                zeros_out = Tensor::zeros(vec![n.b, t, dout_dim]);
                &zeros_out
            }
        };
        if d_out.shape() != [n.b, t, dout_dim] {
            return Err(ShapeError::mismatch(
                "gradient of the attention output",
                d_out.shape(),
                format!("({}, {t}, {dout_dim})", n.b),
            )
            .into());
        }
        if let Some(d) = d_scores {
            if d.shape() != [n.b, heads, t, s] {
                return Err(ShapeError::mismatch(
                    "gradient of the attention scores",
                    d.shape(),
                    format!("({}, {heads}, {t}, {s})", n.b),
                )
                .into());
            }
        }
        let mut wgrads: Vec<Vec<T>> = self
            .weights
            .iter()
            .map(|w| vec![T::zero(); w.len()])
            .collect();
        // Output projection: dWo = Oᵀ·dY, dbo = Σ dY, dO = dY·Woᵀ.
        let rows_q = n.b * t;
        let d_o = self.project_back(3, &trace.o, 0, d_out.data(), &mut wgrads);
        let weights = dropped_weights(&trace.probs, trace.keep.as_deref());
        let scale = T::one() / T::of(kd as f64).sqrt();
        let qs = scaled_query(&trace.q, trace.explicit, scale);
        let mut dq = vec![T::zero(); rows_q * ldq];
        let mut dk = vec![T::zero(); n.b * s * ldq];
        let mut dv = vec![T::zero(); n.b * s * ldv];
        let mut dp = vec![T::zero(); t * s];
        for b in 0..n.b {
            for h in 0..heads {
                let at = (b * heads + h) * t * s;
                // dV = Wᵀ·dO, dW = dO·Vᵀ (W the weights after dropout).
                gemm(
                    s,
                    vd,
                    t,
                    T::one(),
                    Operand::new(&weights[at..at + t * s], s).t(),
                    Operand::new(&d_o[b * t * ldv + h * vd..], ldv),
                    false,
                    &mut dv[b * s * ldv + h * vd..],
                    ldv,
                    1,
                );
                gemm(
                    t,
                    s,
                    vd,
                    T::one(),
                    Operand::new(&d_o[b * t * ldv + h * vd..], ldv),
                    Operand::new(&trace.v[b * s * ldv + h * vd..], ldv).t(),
                    false,
                    &mut dp,
                    s,
                    1,
                );
                if let Some(f) = &trace.keep {
                    dp.iter_mut()
                        .zip(&f[at..at + t * s])
                        .for_each(|(g, k)| *g *= *k);
                }
                if let Some(d) = d_scores {
                    dp.iter_mut()
                        .zip(&d.data()[at..at + t * s])
                        .for_each(|(g, x)| *g += *x);
                }
                // Softmax: dz = p·(dp − Σ p·dp), none where a pair is masked.
                let probs = &trace.probs[at..at + t * s];
                for i in 0..t {
                    let (p, g) = (&probs[i * s..(i + 1) * s], &mut dp[i * s..(i + 1) * s]);
                    let dot: T = p.iter().zip(g.iter()).map(|(a, b)| *a * *b).sum();
                    let keep = trace.pairs.as_ref().map(|m| &m[(b * t + i) * s..][..s]);
                    for (j, (gj, pj)) in g.iter_mut().zip(p).enumerate() {
                        *gj = if keep.is_none_or(|m| m[j]) {
                            *pj * (*gj - dot)
                        } else {
                            T::zero()
                        };
                    }
                }
                if !trace.explicit {
                    dp.iter_mut().for_each(|g| *g *= scale);
                }
                // scores = Qs·Kᵀ: dQs = dz·K, dK = dzᵀ·Qs.
                gemm(
                    t,
                    kd,
                    s,
                    T::one(),
                    Operand::new(&dp, s),
                    Operand::new(&trace.k[b * s * ldq + h * kd..], ldq),
                    false,
                    &mut dq[b * t * ldq + h * kd..],
                    ldq,
                    1,
                );
                gemm(
                    s,
                    kd,
                    t,
                    T::one(),
                    Operand::new(&dp, s).t(),
                    Operand::new(&qs[b * t * ldq + h * kd..], ldq),
                    false,
                    &mut dk[b * s * ldq + h * kd..],
                    ldq,
                    1,
                );
            }
        }
        if trace.explicit {
            dq.iter_mut().for_each(|g| *g *= scale);
        }
        // The three input projections.
        let dxq = self.project_back(0, q.data(), q.shape()[1], &dq, &mut wgrads);
        let dxk = self.project_back(1, kx.data(), kx.shape()[1], &dk, &mut wgrads);
        let dxv = self.project_back(2, v.data(), v.shape()[1], &dv, &mut wgrads);
        AttentionGrads::of_inputs(wgrads, q, v, k, dxq, dxv, dxk)
    }

    /// Output shapes `[output, scores]` for symbolic query and value shapes.
    pub fn output_shapes(
        &self,
        query: &[Option<usize>],
        value: &[Option<usize>],
    ) -> [Vec<Option<usize>>; 2] {
        let b = query.first().copied().flatten();
        let t = query.get(1).copied().flatten();
        let s = value.get(1).copied().flatten();
        [
            vec![b, t, Some(self.output_dim())],
            vec![b, Some(self.config.num_heads), t, s],
        ]
    }

    /// Input feature counts (query, value, key) for a saved build config.
    pub fn input_features(&self) -> (usize, usize, usize) {
        self.input_dims()
    }
}

/// The projected query as the scores' product reads it: Keras' explicit route scales the query
/// first, `dot_product_attention` the scores after (then the query is used as it is).
fn scaled_query<T: Float>(q: &[T], explicit: bool, scale: T) -> Cow<'_, [T]> {
    if explicit {
        Cow::Owned(q.iter().map(|x| *x * scale).collect())
    } else {
        Cow::Borrowed(q)
    }
}

/// The attention weights as the product with the values reads them: `probs` times the dropout
/// factors `keep` when dropout applies, `probs` itself otherwise.
fn dropped_weights<'a, T: Float>(probs: &'a [T], keep: Option<&[T]>) -> Cow<'a, [T]> {
    match keep {
        Some(f) => Cow::Owned(probs.iter().zip(f).map(|(p, k)| *p * *k).collect()),
        None => Cow::Borrowed(probs),
    }
}

/// Softmax of one row of scores in place, where `keep` (if any) says which entries count: the
/// others get weight 0. A row with none left gets zero weights on Keras' explicit route
/// (`explicit`) and uniform weights on `dot_product_attention`'s.
fn softmax_row<T: Float>(row: &mut [T], keep: Option<&[bool]>, explicit: bool) {
    let counts = |j: usize| keep.is_none_or(|k| k[j]);
    if !(0..row.len()).any(counts) {
        let u = if explicit {
            T::zero()
        } else {
            T::one() / T::of(row.len() as f64)
        };
        row.iter_mut().for_each(|x| *x = u);
        return;
    }
    let max = (0..row.len())
        .filter(|&j| counts(j))
        .map(|j| row[j])
        .fold(T::neg_infinity(), T::max);
    let mut sum = T::zero();
    for (j, x) in row.iter_mut().enumerate() {
        *x = if counts(j) {
            (*x - max).exp()
        } else {
            T::zero()
        };
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(v: Value) -> MultiHeadAttentionConfig {
        MultiHeadAttentionConfig::from_keras(v.as_object().unwrap()).unwrap()
    }

    fn data(shape: &[usize], salt: f64) -> Tensor<f64> {
        let n: usize = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|i| ((i as f64 + salt) * 0.731).sin()).collect(),
        )
        .unwrap()
    }

    /// The layer straight from its definition, per element, for comparison.
    fn reference(
        m: &MultiHeadAttention<f64>,
        q: &Tensor<f64>,
        v: &Tensor<f64>,
        k: &Tensor<f64>,
        pairs: &dyn Fn(usize, usize, usize) -> bool,
        explicit: bool,
    ) -> Vec<f64> {
        let c = m.config();
        let (heads, kd, vd) = (c.num_heads, c.key_dim, c.value_dim);
        let (b, t, s) = (q.shape()[0], q.shape()[1], v.shape()[1]);
        let proj =
            |p: usize, x: &Tensor<f64>, row: usize, h: usize, e: usize, width: usize| -> f64 {
                let (w, bias) = m.proj(p);
                let d = w.shape()[0];
                let mut acc = bias.map_or(0.0, |bb| bb.data()[h * width + e]);
                for f in 0..d {
                    acc += x.data()[row * d + f] * w.data()[(f * heads + h) * width + e];
                }
                acc
            };
        let out_dim = m.output_dim();
        let (wo, bo) = m.proj(3);
        let mut out = vec![0.0; b * t * out_dim];
        for bi in 0..b {
            for i in 0..t {
                let mut o = vec![0.0; heads * vd];
                for h in 0..heads {
                    let scores: Vec<f64> = (0..s)
                        .map(|j| {
                            (0..kd)
                                .map(|e| {
                                    proj(0, q, bi * t + i, h, e, kd)
                                        * proj(1, k, bi * s + j, h, e, kd)
                                })
                                .sum::<f64>()
                                / (kd as f64).sqrt()
                        })
                        .collect();
                    let kept: Vec<bool> = (0..s).map(|j| pairs(bi, i, j)).collect();
                    let mut w = vec![0.0; s];
                    if kept.iter().any(|x| *x) {
                        let mx = (0..s)
                            .filter(|&j| kept[j])
                            .map(|j| scores[j])
                            .fold(f64::MIN, f64::max);
                        let z: f64 = (0..s)
                            .filter(|&j| kept[j])
                            .map(|j| (scores[j] - mx).exp())
                            .sum();
                        for j in 0..s {
                            w[j] = if kept[j] {
                                (scores[j] - mx).exp() / z
                            } else {
                                0.0
                            };
                        }
                    } else if !explicit {
                        w = vec![1.0 / s as f64; s];
                    }
                    for e in 0..vd {
                        o[h * vd + e] = (0..s)
                            .map(|j| w[j] * proj(2, v, bi * s + j, h, e, vd))
                            .sum();
                    }
                }
                for f in 0..out_dim {
                    out[(bi * t + i) * out_dim + f] = bo.map_or(0.0, |x| x.data()[f])
                        + (0..heads * vd)
                            .map(|r| o[r] * wo.data()[r * out_dim + f])
                            .sum::<f64>();
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_the_definition_with_masks_and_both_routes() {
        let m = cfg(json!({"num_heads": 2, "key_dim": 3, "value_dim": 2, "output_shape": 5, "sliding_window": 3})).build::<f64>(4, 3, 2, 5).unwrap();
        let (q, v, k) = (
            data(&[2, 4, 4], 0.0),
            data(&[2, 5, 3], 1.0),
            data(&[2, 5, 2], 2.0),
        );
        let qm = Mask::new(2, 4, vec![true, true, false, true, true, true, true, true]).unwrap();
        // Sample 1's value is fully masked: its rows have no step left.
        let vm = Mask::new(
            2,
            5,
            vec![
                true, false, true, true, true, false, false, false, false, false,
            ],
        )
        .unwrap();
        let km = Mask::new(
            2,
            5,
            vec![true, true, true, false, true, true, true, true, true, true],
        )
        .unwrap();
        for (scores, causal) in [(false, false), (true, true), (false, true)] {
            let opts = AttentionCall {
                use_causal_mask: causal,
                return_attention_scores: scores,
            };
            let (y, w) = m
                .call(&q, &v, Some(&k), [Some(&qm), Some(&vm), Some(&km)], opts)
                .unwrap();
            let pairs = |b: usize, i: usize, j: usize| {
                qm.data[b * 4 + i]
                    && vm.data[b * 5 + j]
                    && km.data[b * 5 + j]
                    && (!causal || j <= i)
                    && i.abs_diff(j) < 3
            };
            let want = reference(&m, &q, &v, &k, &pairs, scores);
            for (a, b) in y.data().iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "{a} vs {b} (scores {scores}, causal {causal})"
                );
            }
            assert_eq!(w.shape(), &[2, 2, 4, 5]);
        }
        // Without masks: every weight row sums to 1.
        let (_, w) = m
            .call(&q, &v, Some(&k), [None; 3], AttentionCall::default())
            .unwrap();
        for row in w.data().chunks(5) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn gradients_match_central_differences() {
        let qm = Mask::new(2, 3, vec![true, true, true, true, false, true]).unwrap();
        let vm = Mask::new(2, 4, vec![true, true, false, true, true, true, true, false]).unwrap();
        for (use_bias, separate_key, scores, causal, dropout) in [
            (true, false, false, false, 0.0),
            (false, true, true, true, 0.0),
            (true, true, false, true, 0.3),
        ] {
            let c = cfg(
                json!({"num_heads": 2, "key_dim": 2, "value_dim": 3, "use_bias": use_bias, "output_shape": [2], "dropout": dropout}),
            );
            let dk_in = if separate_key { 2 } else { 3 };
            let mut m = c.build::<f64>(3, 3, dk_in, 11).unwrap();
            for (i, w) in m.weights_mut().into_iter().enumerate() {
                let shape = w.shape().to_vec();
                *w = data(&shape, i as f64 * 3.0);
            }
            let (q, v) = (data(&[2, 3, 3], 0.5), data(&[2, 4, 3], 1.5));
            let k = separate_key.then(|| data(&[2, 4, 2], 2.5));
            let opts = AttentionCall {
                use_causal_mask: causal,
                return_attention_scores: scores,
            };
            let masks = [Some(&qm), Some(&vm), None];
            let dy = data(&[2, 3, 2], 7.0);
            let ds = data(&[2, 2, 3, 4], 9.0);
            // The same dropout draw for every evaluation.
            let run = |m: &MultiHeadAttention<f64>,
                       q: &Tensor<f64>,
                       v: &Tensor<f64>,
                       k: Option<&Tensor<f64>>| {
                let mut rng = StdRng::seed_from_u64(3);
                let (y, w, tr) = m.call_train(q, v, k, masks, opts, Some(&mut rng)).unwrap();
                let loss: f64 = y
                    .data()
                    .iter()
                    .zip(dy.data())
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    + if scores {
                        w.data()
                            .iter()
                            .zip(ds.data())
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                    } else {
                        0.0
                    };
                (loss, tr)
            };
            let (_, tr) = run(&m, &q, &v, k.as_ref());
            let g = m
                .backward(&q, &v, k.as_ref(), &tr, Some(&dy), scores.then_some(&ds))
                .unwrap();
            let h = 1e-6;
            let check = |analytic: f64, plus: f64, minus: f64, what: &str| {
                let numeric = (plus - minus) / (2.0 * h);
                assert!(
                    (analytic - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{what}: {analytic} vs {numeric}"
                );
            };
            for wi in 0..m.weights().len() {
                for e in (0..m.weights()[wi].len()).step_by(5) {
                    let mut p = m.clone();
                    p.weights[wi].data_mut()[e] += h;
                    let mut mm = m.clone();
                    mm.weights[wi].data_mut()[e] -= h;
                    check(
                        g.weights[wi][e],
                        run(&p, &q, &v, k.as_ref()).0,
                        run(&mm, &q, &v, k.as_ref()).0,
                        &format!("weight {wi}[{e}]"),
                    );
                }
            }
            for (which, grad) in [(0, &g.query), (1, &g.value)] {
                for e in (0..grad.len()).step_by(3) {
                    let bump = |d: f64| {
                        let (mut q2, mut v2) = (q.clone(), v.clone());
                        if which == 0 {
                            q2.data_mut()[e] += d
                        } else {
                            v2.data_mut()[e] += d
                        }
                        run(&m, &q2, &v2, k.as_ref()).0
                    };
                    check(
                        grad.data()[e],
                        bump(h),
                        bump(-h),
                        &format!("input {which}[{e}]"),
                    );
                }
            }
            if let (Some(k), Some(gk)) = (&k, &g.key) {
                for e in 0..k.len() {
                    let bump = |d: f64| {
                        let mut k2 = k.clone();
                        k2.data_mut()[e] += d;
                        run(&m, &q, &v, Some(&k2)).0
                    };
                    check(gk.data()[e], bump(h), bump(-h), &format!("key[{e}]"));
                }
            }
        }
    }

    #[test]
    fn bad_configs_and_inputs_are_errors() {
        for (bad, says) in [
            (json!({"num_heads": 0, "key_dim": 2}), "num_heads"),
            (json!({"num_heads": 2}), "key_dim"),
            (
                json!({"num_heads": 2, "key_dim": 2, "attention_axes": [1, 2]}),
                "attention_axes",
            ),
            (
                json!({"num_heads": 2, "key_dim": 2, "output_shape": [2, 3]}),
                "output_shape",
            ),
            (
                json!({"num_heads": 2, "key_dim": 2, "use_gate": true}),
                "use_gate",
            ),
            (
                json!({"num_heads": 2, "key_dim": 2, "dropout": 1.0}),
                "dropout",
            ),
            (
                json!({"num_heads": 2, "key_dim": 2, "activity_regularizer": {"class_name": "L2", "config": {"l2": 0.1}}}),
                "activity_regularizer",
            ),
        ] {
            let err = MultiHeadAttentionConfig::from_keras(bad.as_object().unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let m = cfg(json!({"num_heads": 2, "key_dim": 2}))
            .build::<f32>(3, 3, 3, 1)
            .unwrap();
        let x = Tensor::<f32>::zeros(vec![1, 2, 3]);
        let wrong = Tensor::<f32>::zeros(vec![1, 2, 4]);
        assert!(m
            .call(&wrong, &x, None, [None; 3], AttentionCall::default())
            .is_err());
        // A trace of a call on other inputs.
        let longer = Tensor::<f32>::zeros(vec![1, 4, 3]);
        let (_, _, trace) = m
            .call_train(
                &longer,
                &longer,
                None,
                [None; 3],
                AttentionCall::default(),
                None,
            )
            .unwrap();
        assert!(m.backward(&x, &x, None, &trace, None, None).is_err());
        let bad_mask = Mask::new(1, 3, vec![true; 3]).unwrap();
        assert!(m
            .call(
                &x,
                &x,
                None,
                [Some(&bad_mask), None, None],
                AttentionCall::default()
            )
            .is_err());
        // Weights of the wrong count or shape.
        let c = m.config().clone();
        assert!(MultiHeadAttention::<f32>::from_weights(c.clone(), vec![]).is_err());
        let mut w: Vec<Tensor<f32>> = m.weights().into_iter().cloned().collect();
        w[1] = Tensor::zeros(vec![3]);
        assert!(MultiHeadAttention::from_weights(c, w).is_err());
    }

    #[test]
    fn config_round_trips() {
        let c = json!({"name": "mha", "num_heads": 2, "key_dim": 3, "value_dim": 4, "dropout": 0.1, "use_bias": false,
            "use_gate": false, "output_shape": [6], "attention_axes": [1], "sliding_window": 2, "seed": 5});
        let parsed = cfg(c);
        let back = parsed.to_keras("float32");
        assert_eq!(MultiHeadAttentionConfig::from_keras(&back).unwrap(), parsed);
        assert_eq!(back["output_shape"], json!([6]));
    }
}
