//! `Attention` (Luong's dot-product or the `concat` score) and `AdditiveAttention` (Bahdanau's),
//! the attention layers of GRU encoder–decoder models, as Keras 3.15.1 computes them.
//!
//! Called on `[query, value]` or `[query, value, key]` (`key` defaults to `value`), each
//! `(batch, steps, dim)`:
//!
//! - scores `(batch, Tq, Tv)`: `dot`: `q·kᵀ` (times the learned scalar `scale` with
//!   `use_scale`); `concat`: `c·Σ_d tanh(scale·(q_i + k_j))` (`c` the learned
//!   `concat_score_weight`); additive: `Σ_d scale_d·tanh(q_i + k_j)` (`scale` a learned vector);
//! - where the value's mask (and, with the call's `use_causal_mask`, `j > i`) hides a step, its
//!   score is lowered by 1e9; `softmax` over the value steps (dropout on these weights in
//!   training); the output is `weights·value`, zero at the query's masked steps, and carries the
//!   query's mask. With `return_attention_scores` the call also returns the weights.

use rand::rngs::StdRng;
use serde_json::{json, Map, Value};

use crate::engine::gemm::{gemm, Operand};
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::{get_bool, get_f64, get_str, get_u64};
use crate::layers::noise::keep_factors;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// How an attention layer scores a query step against a key step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// `Attention(score_mode="dot")`.
    Dot,
    /// `Attention(score_mode="concat")`.
    Concat,
    /// `AdditiveAttention`.
    Additive,
}

/// Per-call options Keras records in the call's node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionCall {
    /// `use_causal_mask=True`: query step `i` sees value steps `j ≤ i` only.
    pub use_causal_mask: bool,
    /// `return_attention_scores=True`: the weights are a second output.
    pub return_attention_scores: bool,
}

/// An `Attention` or `AdditiveAttention` layer with its weights.
///
/// ```
/// use grucell::layers::attention::{Attention, AttentionCall, Score};
/// use grucell::Tensor;
/// let att = Attention::<f32>::new(Score::Dot, false, None)?;
/// let q = Tensor::new(vec![1, 1, 2], vec![1.0f32, 0.0])?;
/// let v = Tensor::new(vec![1, 2, 2], vec![0.0f32, 0.0, 2.0, 4.0])?;
/// let (out, weights) = att.call(&q, &v, None, None, None, AttentionCall::default())?;
/// // Scores q·v: 0 and 2; softmax weights 1/(1+e²) and e²/(1+e²).
/// let w1 = 1.0 / (1.0 + (-2.0f32).exp());
/// assert!((weights.data()[1] - w1).abs() < 1e-6 && (out.data()[1] - 4.0 * w1).abs() < 1e-5);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Attention<T = f32> {
    /// How steps are scored.
    pub score: Score,
    /// `use_scale` (Keras' default: false for `Attention`, true for `AdditiveAttention`).
    pub use_scale: bool,
    /// Dropout rate of the weights in training.
    pub dropout: f64,
    /// Seed of that dropout.
    pub seed: Option<u64>,
    /// `scale`: a scalar (`Attention`) or `(dim,)` (`AdditiveAttention`), with `use_scale`.
    scale: Option<Tensor<T>>,
    /// `concat_score_weight` (a scalar), with `score_mode="concat"`.
    concat_weight: Option<Tensor<T>>,
}

/// Gradients of an attention call.
pub struct AttentionGrads<T> {
    /// d loss / d weights, in [`Attention::weights`] order.
    pub weights: Vec<Vec<T>>,
    /// d loss / d query.
    pub query: Tensor<T>,
    /// d loss / d value (with the key's gradient added when the key is the value).
    pub value: Tensor<T>,
    /// d loss / d key, when a key was given.
    pub key: Option<Tensor<T>>,
}

impl<T: Float> AttentionGrads<T> {
    /// The gradients of a call on `q`, `v` and, if it had its own, the key `k`, from the flat
    /// gradients of the three inputs: where the value served as the key, the key's gradient is
    /// added to the value's.
    pub(crate) fn of_inputs(
        weights: Vec<Vec<T>>,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        dq: Vec<T>,
        mut dv: Vec<T>,
        dk: Vec<T>,
    ) -> Result<Self, Error> {
        let key = match k {
            Some(k) => Some(Tensor::new(k.shape().to_vec(), dk)?),
            None => {
                dv.iter_mut().zip(&dk).for_each(|(a, b)| *a += *b);
                None
            }
        };
        Ok(AttentionGrads {
            weights,
            query: Tensor::new(q.shape().to_vec(), dq)?,
            value: Tensor::new(v.shape().to_vec(), dv)?,
            key,
        })
    }
}

/// What a training call gives: the output, the weights it applied (after dropout) and the
/// dropout factors (`None` without dropout).
pub struct TrainOutput<T> {
    /// `(batch, Tq, dim_v)`.
    pub out: Tensor<T>,
    /// `(batch, Tq, Tv)`.
    pub weights: Tensor<T>,
    /// Dropout factors of the weights.
    pub drop: Option<Vec<T>>,
}

/// The sizes of a call: batch, query steps, value steps, query/key dim, value dim.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    tq: usize,
    tv: usize,
    d: usize,
    dv: usize,
}

/// Keras lowers hidden scores by this much (1e9; 65504 in float16, which grucell does not run).
const HIDDEN: f64 = 1.0e9;

impl<T: Float> Attention<T> {
    /// A layer with Keras' initial weights (`scale` and `concat_score_weight` ones; an additive
    /// `scale` needs its `dim`: give it with [`Attention::with_weights`]).
    pub fn new(score: Score, use_scale: bool, dim: Option<usize>) -> Result<Self, Error> {
        let scale = match (use_scale, score) {
            (false, _) => None,
            (true, Score::Additive) => {
                let d = dim.ok_or_else(|| {
                    ConfigError::invalid("AdditiveAttention.scale", "no dim", "the query's dim")
                })?;
                Some(Tensor::new(vec![d], vec![T::one(); d])?)
            }
            (true, _) => Some(Tensor::new(vec![], vec![T::one()])?),
        };
        let concat_weight = (score == Score::Concat)
            .then(|| Tensor::new(vec![], vec![T::one()]))
            .transpose()?;
        Ok(Attention {
            score,
            use_scale,
            dropout: 0.0,
            seed: None,
            scale,
            concat_weight,
        })
    }

    /// Reads a Keras `Attention` or `AdditiveAttention` config (`class`); the weights come with
    /// [`Attention::with_weights`].
    pub fn from_keras(class: &str, c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let additive = class == "AdditiveAttention";
        let score = if additive {
            Score::Additive
        } else {
            match get_str(c, "score_mode")?.unwrap_or("dot") {
                "dot" => Score::Dot,
                "concat" => Score::Concat,
                other => {
                    return Err(ConfigError::invalid(
                        "Attention.score_mode",
                        other,
                        "\"dot\" or \"concat\"",
                    ))
                }
            }
        };
        if get_bool(c, "causal", false)? {
            return Err(ConfigError::unsupported(
                format!("{class} option"),
                "causal = true (TF-Keras 2's deprecated form of the call's use_causal_mask)",
            ));
        }
        let dropout = get_f64(c, "dropout", 0.0)?;
        if !(0.0..=1.0).contains(&dropout) {
            return Err(ConfigError::invalid(
                format!("{class}.dropout"),
                dropout,
                "a number from 0 to 1",
            ));
        }
        Ok(Attention {
            score,
            use_scale: get_bool(c, "use_scale", additive)?,
            dropout,
            seed: get_u64(c, "seed")?,
            scale: None,
            concat_weight: None,
        })
    }

    /// Keras' class name.
    pub fn class_name(&self) -> &'static str {
        match self.score {
            Score::Additive => "AdditiveAttention",
            _ => "Attention",
        }
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("use_scale".into(), json!(self.use_scale));
        match self.score {
            Score::Dot => {
                cfg.insert("score_mode".into(), json!("dot"));
            }
            Score::Concat => {
                cfg.insert("score_mode".into(), json!("concat"));
            }
            Score::Additive => {}
        }
        cfg.insert("dropout".into(), json!(self.dropout));
        cfg.insert("seed".into(), json!(self.seed));
    }

    /// How many weights the config asks for (`scale`, then `concat_score_weight`).
    pub fn weight_count(&self) -> usize {
        usize::from(self.use_scale) + usize::from(self.score == Score::Concat)
    }

    /// Sets the weights (in [`Attention::weights`] order), checking their shapes.
    pub fn with_weights(mut self, weights: Vec<Tensor<T>>) -> Result<Self, Error> {
        if weights.len() != self.weight_count() {
            return Err(ShapeError::mismatch(
                format!("{} weights", self.class_name()),
                &[weights.len()][..],
                format!("{} arrays", self.weight_count()),
            )
            .into());
        }
        let mut it = weights.into_iter();
        if self.use_scale {
            let s = it
                .next()
                .ok_or_else(|| ConfigError::invalid("scale", "missing", "a weight"))?;
            let ok = match self.score {
                Score::Additive => s.rank() == 1 && !s.is_empty(),
                _ => s.len() == 1 && s.rank() <= 1,
            };
            if !ok {
                return Err(ShapeError::mismatch(
                    format!("{}.scale", self.class_name()),
                    s.shape(),
                    if self.score == Score::Additive {
                        "(dim,)"
                    } else {
                        "a scalar"
                    },
                )
                .into());
            }
            self.scale = Some(s);
        }
        if self.score == Score::Concat {
            let c = it.next().ok_or_else(|| {
                ConfigError::invalid("concat_score_weight", "missing", "a weight")
            })?;
            if c.len() != 1 || c.rank() > 1 {
                return Err(ShapeError::mismatch(
                    "Attention.concat_score_weight",
                    c.shape(),
                    "a scalar",
                )
                .into());
            }
            self.concat_weight = Some(c);
        }
        Ok(self)
    }

    /// The weights in Keras' order.
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        self.scale.iter().chain(self.concat_weight.iter()).collect()
    }

    /// Mutable weights in Keras' order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        self.scale
            .iter_mut()
            .chain(self.concat_weight.iter_mut())
            .collect()
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.len()).sum()
    }

    /// The output shape, and the weights' shape, for the query's and the value's shapes.
    pub fn output_shapes(
        &self,
        query: &[Option<usize>],
        value: &[Option<usize>],
    ) -> [Vec<Option<usize>>; 2] {
        let mut out = query.to_vec();
        if let Some(l) = out.last_mut() {
            *l = value.last().copied().flatten();
        }
        let mut scores = query[..query.len().saturating_sub(1)].to_vec();
        scores.push(value.get(1).copied().flatten());
        [out, scores]
    }

    fn dims(&self, q: &Tensor<T>, v: &Tensor<T>, k: &Tensor<T>) -> Result<Dims, Error> {
        let bad = |what: &str, t: &Tensor<T>, want: String| -> Error {
            ShapeError::mismatch(format!("{what} of {}", self.class_name()), t.shape(), want).into()
        };
        let (&[b, tq, d], &[vb, tv, dv]) = (q.shape(), v.shape()) else {
            return Err(bad("query/value", q, "(batch, steps, dim) for both".into()));
        };
        if vb != b {
            return Err(bad("value", v, format!("({b}, steps, dim)")));
        }
        if k.shape() != [b, tv, d] {
            return Err(bad("key", k, format!("({b}, {tv}, {d})")));
        }
        if let Some(s) = self
            .scale
            .as_ref()
            .filter(|_| self.score == Score::Additive)
        {
            if s.len() != d {
                return Err(bad("query", q, format!("(batch, steps, {})", s.len())));
            }
        }
        Ok(Dims { b, tq, tv, d, dv })
    }

    /// Scores `(b, tq, tv)` before masking.
    fn scores(&self, q: &Tensor<T>, k: &Tensor<T>, n: Dims) -> Vec<T> {
        let mut s = vec![T::zero(); n.b * n.tq * n.tv];
        let scale = self.scale.as_ref().map(|s| s.data());
        match self.score {
            Score::Dot => {
                for b in 0..n.b {
                    gemm(
                        n.tq,
                        n.tv,
                        n.d,
                        T::one(),
                        Operand::new(&q.data()[b * n.tq * n.d..], n.d),
                        Operand::new(&k.data()[b * n.tv * n.d..], n.d).t(),
                        false,
                        &mut s[b * n.tq * n.tv..],
                        n.tv,
                        1,
                    );
                }
                if let Some(sc) = scale {
                    s.iter_mut().for_each(|v| *v *= sc[0]);
                }
            }
            Score::Concat | Score::Additive => {
                let cw = self
                    .concat_weight
                    .as_ref()
                    .map_or(T::one(), |c| c.data()[0]);
                for b in 0..n.b {
                    for i in 0..n.tq {
                        let qi = &q.data()[(b * n.tq + i) * n.d..][..n.d];
                        for j in 0..n.tv {
                            let kj = &k.data()[(b * n.tv + j) * n.d..][..n.d];
                            let sum = (0..n.d)
                                .map(|x| self.term(qi[x], kj[x], x, scale).0)
                                .sum::<T>();
                            s[(b * n.tq + i) * n.tv + j] = if self.score == Score::Concat {
                                cw * sum
                            } else {
                                sum
                            };
                        }
                    }
                }
            }
        }
        s
    }

    /// One summand of a `concat` or additive score and `tanh` itself: `tanh(scale·(q + k))` or
    /// `scale_x·tanh(q + k)`.
    fn term(&self, q: T, k: T, x: usize, scale: Option<&[T]>) -> (T, T) {
        match (self.score, scale) {
            (Score::Concat, Some(s)) => {
                let t = (s[0] * (q + k)).tanh();
                (t, t)
            }
            (Score::Additive, Some(s)) => {
                let t = (q + k).tanh();
                (s[x] * t, t)
            }
            _ => {
                let t = (q + k).tanh();
                (t, t)
            }
        }
    }

    /// Whether value step `j` is hidden from query step `i` of batch row `b`.
    fn hidden(v_mask: Option<&Mask>, causal: bool, b: usize, i: usize, j: usize) -> bool {
        (causal && j > i) || v_mask.is_some_and(|m| !m.data[b * m.time + j])
    }

    /// The softmax weights `(b, tq, tv)`.
    fn softmax(&self, mut s: Vec<T>, v_mask: Option<&Mask>, causal: bool, n: Dims) -> Vec<T> {
        let hidden = T::of(HIDDEN);
        for (r, row) in s.chunks_exact_mut(n.tv.max(1)).enumerate() {
            let (b, i) = (r / n.tq.max(1), r % n.tq.max(1));
            for (j, v) in row.iter_mut().enumerate() {
                if Self::hidden(v_mask, causal, b, i, j) {
                    *v -= hidden;
                }
            }
            let max = row.iter().copied().fold(T::neg_infinity(), T::max);
            let mut sum = T::zero();
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        s
    }

    fn check_masks(q_mask: Option<&Mask>, v_mask: Option<&Mask>, n: Dims) -> Result<(), Error> {
        for (what, m, t) in [("query", q_mask, n.tq), ("value", v_mask, n.tv)] {
            if let Some(m) = m {
                if m.batch != n.b || m.time != t {
                    return Err(ShapeError::mismatch(
                        format!("{what} mask of the attention"),
                        &[m.batch, m.time][..],
                        format!("({}, {t})", n.b),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The layer at inference: the output `(batch, Tq, dim_v)` and the weights `(batch, Tq, Tv)`.
    pub fn call(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        q_mask: Option<&Mask>,
        v_mask: Option<&Mask>,
        opts: AttentionCall,
    ) -> Result<(Tensor<T>, Tensor<T>), Error> {
        let r = self.call_train(q, v, k, q_mask, v_mask, opts, None)?;
        Ok((r.out, r.weights))
    }

    /// `weights·value`, zero at the query's masked steps.
    fn apply(w: &[T], v: &Tensor<T>, q_mask: Option<&Mask>, n: Dims) -> Vec<T> {
        let mut out = vec![T::zero(); n.b * n.tq * n.dv];
        for b in 0..n.b {
            gemm(
                n.tq,
                n.dv,
                n.tv,
                T::one(),
                Operand::new(&w[b * n.tq * n.tv..], n.tv),
                Operand::new(&v.data()[b * n.tv * n.dv..], n.dv),
                false,
                &mut out[b * n.tq * n.dv..],
                n.dv,
                1,
            );
        }
        zero_masked_rows(&mut out, n.dv, q_mask);
        out
    }

    /// The layer in training: as [`Attention::call`], with dropout on the weights when `rng` is
    /// given (and a rate set); also returns the dropout factors applied (for
    /// [`Attention::backward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn call_train(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        q_mask: Option<&Mask>,
        v_mask: Option<&Mask>,
        opts: AttentionCall,
        rng: Option<&mut StdRng>,
    ) -> Result<TrainOutput<T>, Error> {
        let kk = k.unwrap_or(v);
        let n = self.dims(q, v, kk)?;
        Self::check_masks(q_mask, v_mask, n)?;
        let mut w = self.softmax(self.scores(q, kk, n), v_mask, opts.use_causal_mask, n);
        let drop = match rng {
            Some(r) if self.dropout > 0.0 && self.dropout < 1.0 => {
                let f: Vec<T> = keep_factors(w.len(), self.dropout, r);
                w.iter_mut().zip(&f).for_each(|(a, b)| *a *= *b);
                Some(f)
            }
            _ => None,
        };
        let out = Self::apply(&w, v, q_mask, n);
        Ok(TrainOutput {
            out: Tensor::new(vec![n.b, n.tq, n.dv], out)?,
            weights: Tensor::new(vec![n.b, n.tq, n.tv], w)?,
            drop,
        })
    }

    /// Gradients given the output's gradient `d_out` and, when the weights were returned and
    /// used, theirs (`d_weights`). `weights` are the (dropped-out) weights the call returned,
    /// `drop` its dropout factors.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        q: &Tensor<T>,
        v: &Tensor<T>,
        k: Option<&Tensor<T>>,
        q_mask: Option<&Mask>,
        weights: &Tensor<T>,
        drop: Option<&[T]>,
        d_out: Option<&Tensor<T>>,
        d_weights: Option<&Tensor<T>>,
    ) -> Result<AttentionGrads<T>, Error> {
        let kk = k.unwrap_or(v);
        let n = self.dims(q, v, kk)?;
        let w = weights.data();
        // d weights (as returned, after dropout), from the output and from outside.
        let mut dw = d_weights.map_or_else(|| vec![T::zero(); w.len()], |t| t.data().to_vec());
        let mut dv = vec![T::zero(); v.len()];
        if let Some(dout) = d_out {
            let mut dout = dout.data().to_vec();
            zero_masked_rows(&mut dout, n.dv, q_mask);
            for b in 0..n.b {
                // dW += dOut · Vᵀ ; dV = Wᵀ · dOut
                gemm(
                    n.tq,
                    n.tv,
                    n.dv,
                    T::one(),
                    Operand::new(&dout[b * n.tq * n.dv..], n.dv),
                    Operand::new(&v.data()[b * n.tv * n.dv..], n.dv).t(),
                    true,
                    &mut dw[b * n.tq * n.tv..],
                    n.tv,
                    1,
                );
                gemm(
                    n.tv,
                    n.dv,
                    n.tq,
                    T::one(),
                    Operand::new(&w[b * n.tq * n.tv..], n.tv).t(),
                    Operand::new(&dout[b * n.tq * n.dv..], n.dv),
                    false,
                    &mut dv[b * n.tv * n.dv..],
                    n.dv,
                    1,
                );
            }
        }
        // Back through the dropout to the softmax output p, then to the scores.
        let p: Vec<T> = match drop {
            Some(f) => {
                dw.iter_mut().zip(f).for_each(|(a, b)| *a *= *b);
                // p = w / f where kept; a dropped weight's p does not matter (its dw is 0).
                w.iter()
                    .zip(f)
                    .map(|(a, b)| if *b == T::zero() { T::zero() } else { *a / *b })
                    .collect()
            }
            None => w.to_vec(),
        };
        let mut ds = vec![T::zero(); w.len()];
        for ((prow, grow), srow) in p
            .chunks_exact(n.tv.max(1))
            .zip(dw.chunks_exact(n.tv.max(1)))
            .zip(ds.chunks_exact_mut(n.tv.max(1)))
        {
            let dot = prow.iter().zip(grow).map(|(a, b)| *a * *b).sum::<T>();
            for ((s, a), g) in srow.iter_mut().zip(prow).zip(grow) {
                *s = *a * (*g - dot);
            }
        }
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); kk.len()];
        let mut dscale = self.scale.as_ref().map(|s| vec![T::zero(); s.len()]);
        let mut dcw = self.concat_weight.as_ref().map(|_| vec![T::zero()]);
        let scale = self.scale.as_ref().map(|s| s.data());
        match self.score {
            Score::Dot => {
                let sc = scale.map_or(T::one(), |s| s[0]);
                if let Some(dsc) = dscale.as_mut() {
                    // d scale = Σ ds · (q·k), the unscaled scores.
                    let raw = Attention {
                        scale: None,
                        ..self.clone()
                    }
                    .scores(q, kk, n);
                    dsc[0] = ds.iter().zip(&raw).map(|(a, b)| *a * *b).sum();
                }
                for b in 0..n.b {
                    gemm(
                        n.tq,
                        n.d,
                        n.tv,
                        sc,
                        Operand::new(&ds[b * n.tq * n.tv..], n.tv),
                        Operand::new(&kk.data()[b * n.tv * n.d..], n.d),
                        false,
                        &mut dq[b * n.tq * n.d..],
                        n.d,
                        1,
                    );
                    gemm(
                        n.tv,
                        n.d,
                        n.tq,
                        sc,
                        Operand::new(&ds[b * n.tq * n.tv..], n.tv).t(),
                        Operand::new(&q.data()[b * n.tq * n.d..], n.d),
                        false,
                        &mut dk[b * n.tv * n.d..],
                        n.d,
                        1,
                    );
                }
            }
            Score::Concat | Score::Additive => {
                let cw = self
                    .concat_weight
                    .as_ref()
                    .map_or(T::one(), |c| c.data()[0]);
                for b in 0..n.b {
                    for i in 0..n.tq {
                        for j in 0..n.tv {
                            let g = ds[(b * n.tq + i) * n.tv + j];
                            let qo = (b * n.tq + i) * n.d;
                            let ko = (b * n.tv + j) * n.d;
                            let mut tsum = T::zero();
                            for x in 0..n.d {
                                let (qx, kx) = (q.data()[qo + x], kk.data()[ko + x]);
                                let (_, t) = self.term(qx, kx, x, scale);
                                let dt_du = T::one() - t * t;
                                // d u, with u the tanh's argument.
                                let du = match (self.score, scale) {
                                    (Score::Concat, Some(s)) => {
                                        let du = g * cw * dt_du;
                                        if let Some(d) = dscale.as_mut() {
                                            d[0] += du * (qx + kx);
                                        }
                                        du * s[0]
                                    }
                                    (Score::Concat, None) => g * cw * dt_du,
                                    (_, Some(s)) => {
                                        if let Some(d) = dscale.as_mut() {
                                            d[x] += g * t;
                                        }
                                        g * s[x] * dt_du
                                    }
                                    (_, None) => g * dt_du,
                                };
                                tsum += t;
                                dq[qo + x] += du;
                                dk[ko + x] += du;
                            }
                            if let Some(d) = dcw.as_mut() {
                                d[0] += g * tsum;
                            }
                        }
                    }
                }
            }
        }
        let mut grads = Vec::new();
        grads.extend(dscale);
        grads.extend(dcw);
        AttentionGrads::of_inputs(grads, q, v, k, dq, dv, dk)
    }
}

/// Zeroes the rows (of `width` values, one per query step) that `mask` hides.
fn zero_masked_rows<T: Float>(data: &mut [T], width: usize, mask: Option<&Mask>) {
    if let Some(m) = mask {
        for (row, keep) in data.chunks_exact_mut(width.max(1)).zip(&m.data) {
            if !keep {
                row.fill(T::zero());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<Attention<f64>> {
        let s = |v: f64| Tensor::new(vec![], vec![v]).unwrap();
        let mut out = Vec::new();
        for (score, use_scale) in [
            (Score::Dot, false),
            (Score::Dot, true),
            (Score::Concat, false),
            (Score::Concat, true),
            (Score::Additive, false),
            (Score::Additive, true),
        ] {
            let a = Attention::<f64>::new(score, use_scale, Some(3)).unwrap();
            let mut w = Vec::new();
            if use_scale {
                w.push(if score == Score::Additive {
                    Tensor::new(vec![3], vec![0.7, -1.2, 0.4]).unwrap()
                } else {
                    s(0.8)
                });
            }
            if score == Score::Concat {
                w.push(s(1.3));
            }
            out.push(a.with_weights(w).unwrap());
        }
        out
    }

    /// Gradients of `Σ out·a + Σ weights·c` against central differences, for every score, with
    /// masks, a causal mask and a separate key.
    #[test]
    fn gradients_match_finite_differences() {
        let (b, tq, tv, d) = (2, 3, 4, 3);
        let gen = |n: usize, s: usize| -> Vec<f64> {
            (0..n).map(|i| ((i * s) % 13) as f64 / 6.0 - 1.0).collect()
        };
        let q = Tensor::new(vec![b, tq, d], gen(b * tq * d, 5)).unwrap();
        let v = Tensor::new(vec![b, tv, d], gen(b * tv * d, 7)).unwrap();
        let k = Tensor::new(vec![b, tv, d], gen(b * tv * d, 3)).unwrap();
        let qm = Mask::new(b, tq, vec![true, true, false, true, false, true]).unwrap();
        // Every row keeps a visible step under the causal mask too (a row with none is a softmax
        // of scores lowered by 1e9, too coarse in float64 for finite differences).
        let vm = Mask::new(
            b,
            tv,
            vec![true, false, true, true, true, false, false, true],
        )
        .unwrap();
        let a_out = gen(b * tq * d, 11);
        let c_w = gen(b * tq * tv, 4);
        for att in layers() {
            for (key, masks, causal) in [
                (None, false, false),
                (Some(&k), true, false),
                (Some(&k), false, true),
                (None, true, true),
            ] {
                let (qmask, vmask) = if masks {
                    (Some(&qm), Some(&vm))
                } else {
                    (None, None)
                };
                let opts = AttentionCall {
                    use_causal_mask: causal,
                    return_attention_scores: true,
                };
                let loss = |att: &Attention<f64>,
                            q: &Tensor<f64>,
                            v: &Tensor<f64>,
                            k: Option<&Tensor<f64>>|
                 -> f64 {
                    let (o, w) = att.call(q, v, k, qmask, vmask, opts).unwrap();
                    o.data().iter().zip(&a_out).map(|(x, y)| x * y).sum::<f64>()
                        + w.data().iter().zip(&c_w).map(|(x, y)| x * y).sum::<f64>()
                };
                let (_, w) = att.call(&q, &v, key, qmask, vmask, opts).unwrap();
                let dout = Tensor::new(vec![b, tq, d], a_out.clone()).unwrap();
                let dws = Tensor::new(vec![b, tq, tv], c_w.clone()).unwrap();
                let g = att
                    .backward(&q, &v, key, qmask, &w, None, Some(&dout), Some(&dws))
                    .unwrap();
                let h = 1e-6;
                let check = |name: &str, fd: f64, got: f64| {
                    assert!(
                        (fd - got).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{:?} scale {} key {} masks {masks} causal {causal} {name}: {fd} vs {got}",
                        att.score,
                        att.use_scale,
                        key.is_some()
                    );
                };
                for i in 0..q.len() {
                    let (mut p, mut m) = (q.clone(), q.clone());
                    p.data_mut()[i] += h;
                    m.data_mut()[i] -= h;
                    check(
                        &format!("dq[{i}]"),
                        (loss(&att, &p, &v, key) - loss(&att, &m, &v, key)) / (2.0 * h),
                        g.query.data()[i],
                    );
                }
                for i in 0..v.len() {
                    let (mut p, mut m) = (v.clone(), v.clone());
                    p.data_mut()[i] += h;
                    m.data_mut()[i] -= h;
                    check(
                        &format!("dv[{i}]"),
                        (loss(&att, &q, &p, key) - loss(&att, &q, &m, key)) / (2.0 * h),
                        g.value.data()[i],
                    );
                }
                if let Some(kk) = key {
                    for i in 0..kk.len() {
                        let (mut p, mut m) = (kk.clone(), kk.clone());
                        p.data_mut()[i] += h;
                        m.data_mut()[i] -= h;
                        check(
                            &format!("dk[{i}]"),
                            (loss(&att, &q, &v, Some(&p)) - loss(&att, &q, &v, Some(&m)))
                                / (2.0 * h),
                            g.key.as_ref().unwrap().data()[i],
                        );
                    }
                }
                for (wi, gw) in g.weights.iter().enumerate() {
                    for (e, want) in gw.iter().enumerate() {
                        let (mut p, mut m) = (att.clone(), att.clone());
                        p.weights_mut()[wi].data_mut()[e] += h;
                        m.weights_mut()[wi].data_mut()[e] -= h;
                        check(
                            &format!("weight {wi}[{e}]"),
                            (loss(&p, &q, &v, key) - loss(&m, &q, &v, key)) / (2.0 * h),
                            *want,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn hidden_steps_get_no_weight_and_masked_queries_give_zero() {
        let att = Attention::<f64>::new(Score::Dot, false, None).unwrap();
        let q = Tensor::new(vec![1, 2, 1], vec![1.0, 2.0]).unwrap();
        let v = Tensor::new(vec![1, 3, 1], vec![1.0, 5.0, 3.0]).unwrap();
        let vm = Mask::new(1, 3, vec![true, false, true]).unwrap();
        let qm = Mask::new(1, 2, vec![true, false]).unwrap();
        let (o, w) = att
            .call(
                &q,
                &v,
                None,
                Some(&qm),
                Some(&vm),
                AttentionCall {
                    use_causal_mask: true,
                    return_attention_scores: true,
                },
            )
            .unwrap();
        // Query step 0 sees value step 0 only (1 is masked, 2 is in the future).
        assert_eq!(w.data()[..3], [1.0, 0.0, 0.0]);
        assert_eq!(o.data(), &[1.0, 0.0]);
        let cfg = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        assert!(
            Attention::<f32>::from_keras("Attention", &cfg(r#"{"score_mode": "general"}"#))
                .is_err()
        );
        assert!(Attention::<f32>::from_keras("Attention", &cfg(r#"{"causal": true}"#)).is_err());
        let add = Attention::<f32>::from_keras("AdditiveAttention", &cfg("{}")).unwrap();
        assert!(add.use_scale && add.weight_count() == 1);
        assert!(add
            .with_weights(vec![Tensor::new(vec![], vec![1.0f32]).unwrap()])
            .is_err());
    }
}
