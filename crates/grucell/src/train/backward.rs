//! Model-level training step: forward with tapes, loss (with Keras' logits shortcut and output
//! masks), regularization penalties, backward through the graph, optimizer update, constraints.

use crate::error::{ConfigError, Error, ShapeError, TrainError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::attention::Score;
use crate::layers::batch_norm::BatchStats;
use crate::layers::bidirectional::{merge, MergeMode};
use crate::layers::constraint::Constraint;
use crate::layers::dense::{affine_backward, Dense};
use crate::layers::model::{call_mask, lookup, Layer, Model, NodeArg, TensorRef, Val};
use crate::layers::multi_head_attention::MhaTrace;
use crate::layers::noise::keep_factors;
use crate::layers::regularizer::Regularizer;
use crate::layers::rnn::{dims3, Mask, Rnn};
use crate::tensor::Tensor;
use crate::train::loss::Loss;
use crate::train::optimizer::{Optimizer, RowGrads};
use crate::train::rnn_grad::RnnTape;
use rand::rngs::StdRng;
use std::collections::HashMap;

/// What a layer call keeps for the backward pass.
enum Cache<T> {
    None,
    Masking(Mask),
    Dense {
        x: Tensor<T>,
        pre: Tensor<T>,
        y: Tensor<T>,
    },
    Act {
        x: Tensor<T>,
        y: Tensor<T>,
    },
    Dropout(Vec<T>),
    /// An `Embedding` call keeps its indices.
    Embedding(Tensor<T>),
    /// A merge (or `Dot`) keeps its inputs and their masks.
    Merge(Vec<Tensor<T>>, Vec<Option<Mask>>),
    /// A call that needs only its input (`LayerNormalization`, `RMSNormalization`, `PReLU`,
    /// `MaxPooling1D`, `AveragePooling1D`).
    Input(Tensor<T>),
    /// A `BatchNormalization` call keeps its input, its mask and the batch statistics it used
    /// (`None`: a frozen layer, which used the moving ones).
    BatchNorm(Tensor<T>, Option<Mask>, Option<BatchStats<T>>),
    /// An attention call keeps its query, value, key (if given), the query's mask, the weights
    /// it applied and their dropout factors.
    Attention {
        q: Tensor<T>,
        v: Tensor<T>,
        k: Option<Tensor<T>>,
        q_mask: Option<Mask>,
        weights: Tensor<T>,
        drop: Option<Vec<T>>,
    },
    /// A `MultiHeadAttention` call keeps its inputs and its trace.
    Mha {
        q: Tensor<T>,
        v: Tensor<T>,
        k: Option<Tensor<T>>,
        trace: Box<MhaTrace<T>>,
    },
    /// A global pooling keeps its input and the mask it used.
    Pool(Tensor<T>, Option<Mask>),
    /// `Flatten`, `ZeroPadding1D`, `Cropping1D` and `UpSampling1D` keep their input's shape.
    Shape(Vec<usize>),
    Rnn(Box<RnnTape<T>>),
    Bi {
        f: Box<RnnTape<T>>,
        b: Box<RnnTape<T>>,
        fo: Tensor<T>,
        bo: Tensor<T>,
    },
}

/// Where the backward pass leaves the gradients: dense per variable, plus the row form of
/// `Embedding` tables (see [`LossAndGrads::rows`]).
struct Grads<'a, T> {
    dense: &'a mut [Vec<T>],
    rows: &'a mut [Option<RowGrads<T>>],
}

/// The final states of the stateful layers' calls (layer index, states), which they carry to
/// the next batch.
type CarriedStates<T> = Vec<(usize, Vec<Tensor<T>>)>;

/// Values of every call, what each call kept for the backward pass, and the stateful layers'
/// final states.
type Taped<T> = (Vec<Vec<Val<T>>>, Vec<Cache<T>>, CarriedStates<T>);

/// Gradients of a Dense call: kernel, bias, input.
type DenseGrads<T> = (Vec<T>, Option<Vec<T>>, Tensor<T>);

/// One trainable variable of a model, addressed by layer and position in Keras' weight order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarId {
    /// Index into `Model::layers`.
    pub layer: usize,
    /// Position within the layer's weights (Keras order; Bidirectional: forward then backward).
    pub index: usize,
    /// Keras-style path, e.g. `gru/gru_cell/kernel`.
    pub path: String,
}

/// Result of one loss/gradient evaluation.
#[derive(Clone, Debug)]
pub struct LossAndGrads<T> {
    /// Total loss: data loss + regularization penalties (what Keras reports as `loss`).
    pub loss: T,
    /// Gradient of each trainable variable, aligned with [`Model::trainable_variables`].
    pub grads: Vec<Vec<T>>,
    /// For an `Embedding` table whose gradient comes from its lookups only (no weight penalty),
    /// the looked-up rows as TensorFlow's `IndexedSlices` holds them (`grads` has their sums):
    /// the optimizer squares those rows, as Keras does ([`Optimizer::step_with_rows`]).
    pub rows: Vec<Option<RowGrads<T>>>,
    /// The model's outputs of this call with their masks, kept when `fit` or `evaluate`
    /// compute metrics on them (empty otherwise).
    pub(crate) outputs: Vec<ModelOutput<T>>,
    /// Each output's data loss (no penalties), which Keras tracks as `<output>_loss` for a
    /// model with several outputs.
    pub(crate) output_losses: Vec<T>,
}

/// What one training step gives `fit`: the loss, and with metrics the outputs.
pub(crate) struct Step<T> {
    pub(crate) loss: T,
    pub(crate) outputs: Vec<ModelOutput<T>>,
    pub(crate) output_losses: Vec<T>,
}

/// One model output of a training or evaluation call, with its mask, and the input of its
/// `sigmoid`/`softmax` activation where it ends in one (which crossentropy metrics read, as the
/// loss does).
#[derive(Clone, Debug)]
pub(crate) struct ModelOutput<T> {
    pub(crate) value: Tensor<T>,
    pub(crate) mask: Option<Mask>,
    pub(crate) logits: Option<(Activation, Tensor<T>)>,
}

fn cell_weight_names(use_bias: bool) -> &'static [&'static str] {
    if use_bias {
        &["kernel", "recurrent_kernel", "bias"]
    } else {
        &["kernel", "recurrent_kernel"]
    }
}

impl<T: Float> Model<T> {
    /// The trainable variables in Keras' `trainable_weights` order, with their shapes.
    pub fn trainable_variables(&self) -> Vec<(VarId, Vec<usize>)> {
        let mut out = Vec::new();
        for (li, l) in self.layers.iter().enumerate() {
            let trains = l.variable_trainable();
            let mut push = |index: usize, path: String, shape: &[usize]| {
                if trains.get(index).copied().unwrap_or(false) {
                    out.push((
                        VarId {
                            layer: li,
                            index,
                            path,
                        },
                        shape.to_vec(),
                    ))
                }
            };
            match &l.layer {
                Layer::Rnn(r) => {
                    let mut i = 0;
                    for c in r.cells() {
                        for (n, w) in cell_weight_names(c.config().use_bias)
                            .iter()
                            .zip(c.weights())
                        {
                            push(i, format!("{}/{}/{n}", l.name, c.config().name), w.shape());
                            i += 1;
                        }
                    }
                }
                Layer::Bidirectional(b) => {
                    let mut i = 0;
                    for (dir, r) in [
                        (&b.forward.name, &b.forward),
                        (&b.backward.name, &b.backward),
                    ] {
                        for c in r.cells() {
                            for (n, w) in cell_weight_names(c.config().use_bias)
                                .iter()
                                .zip(c.weights())
                            {
                                push(
                                    i,
                                    format!("{}/{dir}/{}/{n}", l.name, c.config().name),
                                    w.shape(),
                                );
                                i += 1;
                            }
                        }
                    }
                }
                Layer::Dense(d) => {
                    for (i, (n, w)) in ["kernel", "bias"].iter().zip(d.weights()).enumerate() {
                        push(i, format!("{}/{n}", l.name), w.shape());
                    }
                }
                Layer::Embedding(e) => {
                    push(0, format!("{}/embeddings", l.name), e.embeddings().shape());
                }
                Layer::PRelu(p) => push(0, format!("{}/alpha", l.name), p.alpha().shape()),
                Layer::RmsNorm(n) => push(0, format!("{}/scale", l.name), n.scale().shape()),
                Layer::Conv1D(c) => {
                    for (i, (n, w)) in ["kernel", "bias"].iter().zip(c.weights()).enumerate() {
                        push(i, format!("{}/{n}", l.name), w.shape());
                    }
                }
                Layer::Attention(a) => {
                    let names = a
                        .use_scale
                        .then_some("scale")
                        .into_iter()
                        .chain((a.score == Score::Concat).then_some("concat_score_weight"));
                    for (i, (name, w)) in names.zip(a.weights()).enumerate() {
                        push(i, format!("{}/{name}", l.name), w.shape());
                    }
                }
                Layer::MultiHeadAttention(a) => {
                    let parts: &[&str] = if a.config().use_bias {
                        &["kernel", "bias"]
                    } else {
                        &["kernel"]
                    };
                    let names = ["query", "key", "value", "attention_output"]
                        .iter()
                        .flat_map(|p| parts.iter().map(move |w| format!("{p}/{w}")));
                    for (i, (name, w)) in names.zip(a.weights()).enumerate() {
                        push(i, format!("{}/{name}", l.name), w.shape());
                    }
                }
                Layer::BatchNorm(n) => {
                    let names = n
                        .config()
                        .scale
                        .then_some("gamma")
                        .into_iter()
                        .chain(n.config().center.then_some("beta"));
                    for (i, (name, w)) in names.zip(n.weights()).enumerate() {
                        push(i, format!("{}/{name}", l.name), w.shape());
                    }
                }
                Layer::LayerNorm(n) => {
                    let names = n
                        .config()
                        .scale
                        .then_some("gamma")
                        .into_iter()
                        .chain(n.config().center.then_some("beta"));
                    for (i, (name, w)) in names.zip(n.weights()).enumerate() {
                        push(i, format!("{}/{name}", l.name), w.shape());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Mutable views of the trainable variables (same order), with their regularizer and
    /// constraint. Call [`Model::weights_changed`] after writing.
    pub(crate) fn variables_mut(
        &mut self,
    ) -> Vec<(&mut Tensor<T>, Option<Regularizer>, Option<Constraint>)> {
        let mut out = Vec::new();
        for l in self.layers.iter_mut() {
            let trains = l.variable_trainable();
            let mut all = Vec::new();
            match &mut l.layer {
                Layer::Rnn(r) => push_rnn(r, &mut all),
                Layer::Bidirectional(b) => {
                    push_rnn(&mut b.forward, &mut all);
                    push_rnn(&mut b.backward, &mut all);
                }
                Layer::Dense(d) => {
                    let c = d.config().clone();
                    let regs = [
                        (c.kernel_regularizer, c.kernel_constraint),
                        (c.bias_regularizer, c.bias_constraint),
                    ];
                    for (w, (r, k)) in d.weights_mut().into_iter().zip(regs) {
                        all.push((w, r, k));
                    }
                }
                Layer::LayerNorm(n) => {
                    let rules = n.weight_rules();
                    for (w, (r, k)) in n.weights_mut().into_iter().zip(rules) {
                        all.push((w, r, k));
                    }
                }
                Layer::Conv1D(c) => {
                    let rules = c.weight_rules();
                    for (w, (r, k)) in c.weights_mut().into_iter().zip(rules) {
                        all.push((w, r, k));
                    }
                }
                Layer::Attention(a) => {
                    all.extend(a.weights_mut().into_iter().map(|w| (w, None, None)));
                }
                Layer::MultiHeadAttention(a) => {
                    let rules = a.weight_rules();
                    for (w, (r, k)) in a.weights_mut().into_iter().zip(rules) {
                        all.push((w, r, k));
                    }
                }
                Layer::BatchNorm(n) => {
                    let rules = n.weight_rules();
                    for (w, (r, k)) in n.weights_mut().into_iter().zip(rules) {
                        all.push((w, r, k));
                    }
                }
                Layer::PRelu(p) => {
                    let c = p.config().clone();
                    all.push((p.alpha_mut(), c.alpha_regularizer, c.alpha_constraint));
                }
                Layer::RmsNorm(n) => all.push((n.scale_mut(), None, None)),
                Layer::Embedding(e) => {
                    let c = e.config().clone();
                    for w in e.weights_mut() {
                        all.push((
                            w,
                            c.embeddings_regularizer.clone(),
                            c.embeddings_constraint.clone(),
                        ));
                    }
                }
                _ => {}
            }
            out.extend(
                all.into_iter()
                    .zip(trains)
                    .filter(|(_, t)| *t)
                    .map(|(v, _)| v),
            );
        }
        out
    }

    /// Recomputes derived data (pre-summed biases) after weights changed.
    pub(crate) fn weights_changed(&mut self) {
        for l in &mut self.layers {
            match &mut l.layer {
                Layer::Rnn(r) => r.cells_mut().iter_mut().for_each(|c| c.weights_changed()),
                Layer::Bidirectional(b) => {
                    b.forward
                        .cells_mut()
                        .iter_mut()
                        .for_each(|c| c.weights_changed());
                    b.backward
                        .cells_mut()
                        .iter_mut()
                        .for_each(|c| c.weights_changed());
                }
                _ => {}
            }
        }
    }

    /// Sum of the weight regularization penalties (Keras' `model.losses` from weights).
    pub fn regularization_loss(&mut self) -> T {
        let mut total = T::zero();
        for (w, r, _) in self.variables_mut() {
            if let Some(r) = r {
                total += r.penalty(w.data(), w.shape());
            }
        }
        total
    }

    /// Loss and gradients of every trainable variable for one batch, as Keras' `train_step`
    /// computes them. `rng` enables training-mode dropout (masks drawn as Keras structures them);
    /// `None` runs without dropout. Like Keras' training forward pass, it moves the moving
    /// statistics of every (not frozen) `BatchNormalization` layer, and stateful RNN layers
    /// start from their carried states and keep the batch's final ones (not differentiated
    /// through: the gradients are those of truncated backpropagation, as in Keras).
    pub fn loss_and_grads(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        rng: Option<&mut StdRng>,
    ) -> Result<LossAndGrads<T>, Error> {
        self.loss_and_grads_in(x, y, None, loss, rng, true, false)
    }

    /// [`Model::loss_and_grads`] in training mode (`training`), or in Keras' inference mode
    /// (`evaluate`: `BatchNormalization` on its moving statistics, which stay as they are).
    // Crate-private: the public entry points fix most of these.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn loss_and_grads_in(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        sample_weight: Option<&[T]>,
        loss: &Loss,
        rng: Option<&mut StdRng>,
        training: bool,
        keep_outputs: bool,
    ) -> Result<LossAndGrads<T>, Error> {
        if y.len() != self.outputs.len() {
            return Err(ConfigError::invalid(
                "targets",
                format!("{} arrays", y.len()),
                format!("{} (one per model output)", self.outputs.len()),
            )
            .into());
        }
        let (vals, caches, finals) = self.forward_train(x, rng, training)?;
        // Keras' training forward moves BatchNormalization's moving statistics, call by call,
        // and stateful layers carry the batch's final states to the next one, in training as in
        // evaluation (not differentiated through). Both are applied once the loss and gradients
        // are computed: a call that fails on its targets or weights changes nothing, as Keras'
        // traced step would fail before it ran.
        let moved: Vec<(usize, BatchStats<T>)> = caches
            .iter()
            .enumerate()
            .filter_map(|(i, cache)| match cache {
                Cache::BatchNorm(_, _, Some(s)) => Some((self.nodes[i].layer, s.clone())),
                _ => None,
            })
            .collect();
        let pos = self.node_positions();
        let mut dvals: Vec<Vec<Option<Tensor<T>>>> =
            vals.iter().map(|v| vec![None; v.len()]).collect();
        let mut total = T::zero();
        let mut logit_nodes = std::collections::HashSet::new();
        let mut outputs = Vec::new();
        let mut output_losses = Vec::new();
        // Data loss on every output, summed (Keras' default loss_weights of 1).
        for (k, (r, yt)) in self.outputs.iter().zip(y).enumerate() {
            let p = pos[&(r.layer, r.node)];
            let Val::F(pred, mask) = &vals[p][r.index] else {
                return Err(ConfigError::unsupported("model output", "a boolean tensor").into());
            };
            // Keras' crossentropies read the input of a sigmoid/softmax output activation
            // (`Loss::on_activation_output`). A `TimeDistributed` wrapper's output is a
            // transposed stack, which carries no logits.
            let ml = &self.layers[r.layer];
            let activation = match ml.time_distributed {
                Some(_) => None,
                None => output_activation(&caches[p], &ml.layer).map(|(a, pre, _)| (a, pre)),
            };
            if keep_outputs {
                outputs.push(ModelOutput {
                    value: pred.clone(),
                    mask: mask.clone(),
                    logits: activation
                        .filter(|(a, _)| matches!(a, Activation::Sigmoid | Activation::Softmax))
                        .map(|(a, z)| (a, z.clone())),
                });
            }
            // Keras' "crossentropy" alias, picked from the shapes.
            let loss = &loss.resolved(yt.shape(), pred.shape());
            let shortcut = match activation {
                Some((a, z)) => loss.on_activation_output(a)?.map(|l| (z, l)),
                None => None,
            };
            let logits = shortcut.as_ref().map(|(z, _)| *z);
            let (used, loss_fn) = match shortcut {
                Some((z, l)) => (z, l),
                None => (pred, *loss),
            };
            let shape = used.shape().to_vec();
            let expect_true: Vec<usize> = if loss_fn.sparse_labels() {
                shape[..shape.len() - 1].to_vec()
            } else {
                shape.clone()
            };
            if yt.shape() != expect_true.as_slice()
                && !(loss_fn.squeezes_label_axis()
                    && yt.shape() == [&expect_true[..], &[1]].concat().as_slice())
            {
                return Err(ShapeError::mismatch(
                    format!("targets[{k}]"),
                    yt.shape(),
                    format!("{expect_true:?} to match output {k}"),
                )
                .into());
            }
            // An output mask becomes sample weights m·R/Σm over the loss rows, as Keras applies it
            // (`apply_mask`), times the caller's weights (one per loss term) where given.
            let masked: Option<Vec<T>> = mask.as_ref().filter(|_| shape.len() == 3).map(|m| {
                let n = m.data.len();
                let kept = m.data.iter().filter(|b| **b).count().max(1);
                let s = T::of(n as f64 / kept as f64);
                m.data
                    .iter()
                    .map(|b| if *b { s } else { T::zero() })
                    .collect()
            });
            let sw = match sample_weight {
                None => masked,
                Some(w) => Some(per_row_weights(w, &shape, masked.as_deref(), k)?),
            };
            let mut grad = vec![T::zero(); used.len()];
            let v =
                loss_fn.value_and_grad(yt.data(), used.data(), &shape, sw.as_deref(), &mut grad)?;
            total += v;
            output_losses.push(v);
            let g = Tensor::new(shape, grad)?;
            if logits.is_some() {
                // Gradient is w.r.t. the pre-activation: hand it to the layer's backward directly.
                dvals[p][r.index] = Some(g);
                logit_nodes.insert(p);
            } else {
                add_grad(&mut dvals[p][r.index], g)?;
            }
        }
        // Activity regularizers: penalty / batch on every output tensor of the call.
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(reg) = self.layers[node.layer].activity_regularizer() else {
                continue;
            };
            for (j, v) in vals[i].iter().enumerate() {
                if let Val::F(t, _) = v {
                    let b = T::of(t.shape()[0].max(1) as f64);
                    total += reg.penalty(t.data(), t.shape()) / b;
                    let mut g = vec![T::zero(); t.len()];
                    reg.add_grad(t.data(), t.shape(), &mut g);
                    g.iter_mut().for_each(|v| *v /= b);
                    let mut g = Tensor::new(t.shape().to_vec(), g)?;
                    // A logits output's gradient slot holds d pre-activation: bring this one
                    // there too.
                    if logit_nodes.contains(&i) {
                        let layer = &self.layers[node.layer].layer;
                        if let Some((a, pre, y)) = output_activation(&caches[i], layer) {
                            g = act_back(a, pre, y, &g)?;
                        }
                    }
                    add_grad(&mut dvals[i][j], g)?;
                }
            }
        }
        let vars = self.trainable_variables();
        let index: HashMap<(usize, usize), usize> = vars
            .iter()
            .enumerate()
            .map(|(i, (v, _))| ((v.layer, v.index), i))
            .collect();
        let mut grads: Vec<Vec<T>> = vars
            .iter()
            .map(|(_, s)| vec![T::zero(); s.iter().product()])
            .collect();
        let mut rows: Vec<Option<RowGrads<T>>> = vec![None; vars.len()];
        let mut sink = Grads {
            dense: &mut grads,
            rows: &mut rows,
        };
        self.backward(&vals, caches, dvals, &pos, &index, &logit_nodes, &mut sink)?;
        // Weight penalties and their gradients (a penalty's gradient is dense: TensorFlow then
        // sums the lookups' rows into it).
        for (((w, r, _), g), rg) in self
            .variables_mut()
            .into_iter()
            .zip(grads.iter_mut())
            .zip(rows.iter_mut())
        {
            if let Some(r) = r {
                total += r.penalty(w.data(), w.shape());
                r.add_grad(w.data(), w.shape(), g);
                *rg = None;
            }
        }
        for (layer, stats) in moved {
            if let Layer::BatchNorm(n) = &mut self.layers[layer].layer {
                n.update_moving(&stats);
            }
        }
        for (layer, states) in finals {
            self.set_carried_states(layer, states);
        }
        Ok(LossAndGrads {
            loss: total,
            grads,
            rows,
            outputs,
            output_losses,
        })
    }

    /// One optimizer step on one batch (Keras `train_on_batch`): loss and gradients, the update,
    /// then the constraints. Returns the loss before the update. Non-finite loss or gradients
    /// give [`TrainError::NonFinite`] and leave the weights untouched.
    pub fn train_on_batch(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        optimizer: &mut Optimizer<T>,
        rng: Option<&mut StdRng>,
    ) -> Result<T, Error> {
        self.train_step(x, y, None, loss, optimizer, rng, false)
            .map(|s| s.loss)
    }

    /// [`Model::train_on_batch`] with Keras' `sample_weight`, flattened: one weight per loss term
    /// of every output, `(B,)` for outputs `(B, C)` and `(B, T)` for sequence outputs
    /// `(B, T, C)`. Each term is multiplied by its weight; the mean still divides by the number
    /// of terms, as Keras' `sum_over_batch_size` does, and an output mask multiplies in as well.
    pub fn train_on_batch_weighted(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        sample_weight: &[T],
        loss: &Loss,
        optimizer: &mut Optimizer<T>,
        rng: Option<&mut StdRng>,
    ) -> Result<T, Error> {
        self.train_step(x, y, Some(sample_weight), loss, optimizer, rng, false)
            .map(|s| s.loss)
    }

    // Crate-private: `train_on_batch[_weighted]` and `fit` fix most of these.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn train_step(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        sample_weight: Option<&[T]>,
        loss: &Loss,
        optimizer: &mut Optimizer<T>,
        rng: Option<&mut StdRng>,
        keep_outputs: bool,
    ) -> Result<Step<T>, Error> {
        if let Some(w) = sample_weight {
            if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                return Err(ConfigError::invalid(
                    format!("sample_weight[{i}]"),
                    w[i].f64(),
                    "a finite number",
                )
                .into());
            }
        }
        let LossAndGrads {
            loss: value,
            mut grads,
            mut rows,
            outputs,
            output_losses,
        } = self.loss_and_grads_in(x, y, sample_weight, loss, rng, true, keep_outputs)?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                epoch: 0,
                batch: 0,
            }
            .into());
        }
        if grads.iter().flatten().any(|g| !g.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "gradient",
                epoch: 0,
                batch: 0,
            }
            .into());
        }
        if let Some(s) = optimizer.config().loss_scale_factor {
            // Keras differentiates `loss · s` (the optimizer divides by `s` again).
            let s = T::of(s);
            grads
                .iter_mut()
                .for_each(|g| g.iter_mut().for_each(|x| *x *= s));
            rows.iter_mut().flatten().for_each(|r| r.scale(s));
        }
        let updated = (|| -> Result<(), Error> {
            let mut vars = self.variables_mut();
            let mut vslices: Vec<&mut [T]> =
                vars.iter_mut().map(|(w, _, _)| w.data_mut()).collect();
            let mut gslices: Vec<&mut [T]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            optimizer.step_with_rows(&mut vslices, &mut gslices, &mut rows)?;
            for (w, _, c) in vars {
                if let Some(c) = c {
                    let shape = w.shape().to_vec();
                    c.apply(w.data_mut(), &shape)?;
                }
            }
            Ok(())
        })();
        // Also after a failed update: weights may have changed before the error, and the
        // derived data (pre-summed biases, packed inference weights) must follow them.
        self.weights_changed();
        updated?;
        Ok(Step {
            loss: value,
            outputs,
            output_losses,
        })
    }

    fn forward_train(
        &self,
        inputs: &[Tensor<T>],
        mut rng: Option<&mut StdRng>,
        training: bool,
    ) -> Result<Taped<T>, Error> {
        // Shape checks are shared with inference.
        if inputs.len() != self.inputs.len() {
            return Err(ConfigError::invalid(
                "inputs",
                format!("{} arrays", inputs.len()),
                format!("{} (one per model input)", self.inputs.len()),
            )
            .into());
        }
        let pos = self.node_positions();
        let mut vals: Vec<Vec<Val<T>>> = Vec::with_capacity(self.nodes.len());
        let mut caches = Vec::with_capacity(self.nodes.len());
        let mut finals = Vec::new();
        let plan = self.mask_clearing();
        let mut originals = std::collections::HashMap::new();
        for (c, node) in self.nodes.iter().enumerate() {
            if let Some(p) = &plan {
                Self::clear_masks_before(p, c, node, &mut vals, &pos, &mut originals);
            }
            let ml = &self.layers[node.layer];
            let arg_t = |i: usize| -> Result<(Tensor<T>, Option<Mask>), Error> {
                match node.args.get(i) {
                    Some(NodeArg::Tensor(r)) => match lookup(&vals, &pos, *r)? {
                        Val::F(t, m) => Ok((t.clone(), m.clone())),
                        Val::B(..) => Err(ConfigError::invalid(
                            format!("input of `{}`", ml.name),
                            "a boolean tensor",
                            "a float tensor",
                        )
                        .into()),
                    },
                    _ => Err(ConfigError::invalid(
                        format!("call of `{}`", ml.name),
                        format!("argument {i}"),
                        "a tensor",
                    )
                    .into()),
                }
            };
            let explicit_mask = |b: usize, t: usize| -> Result<Option<Mask>, Error> {
                match node.mask {
                    None => Ok(None),
                    Some(r) => match lookup(&vals, &pos, r)? {
                        Val::B(s, d) if s.as_slice() == [b, t] => {
                            Ok(Some(Mask::new(b, t, d.clone())?))
                        }
                        _ => Err(ConfigError::invalid(
                            format!("mask of `{}`", ml.name),
                            "a tensor of another shape",
                            format!("({b}, {t}) booleans"),
                        )
                        .into()),
                    },
                }
            };
            let init = || -> Result<Option<Vec<Tensor<T>>>, Error> {
                if node.initial_state.is_empty() {
                    return Ok(None);
                }
                node.initial_state
                    .iter()
                    .map(|r| match lookup(&vals, &pos, *r)? {
                        Val::F(t, _) => Ok(t.clone()),
                        Val::B(..) => Err(ConfigError::invalid(
                            "initial_state",
                            "a boolean tensor",
                            "a float tensor",
                        )
                        .into()),
                    })
                    .collect::<Result<Vec<_>, Error>>()
                    .map(Some)
            };
            let implicit = node.initial_state.is_empty() || node.states_keep_mask;
            let (out, cache): (Vec<Val<T>>, Cache<T>) = match &ml.layer {
                Layer::Rnn(r) => {
                    let (x, m) = arg_t(0)?;
                    let (b, t, _) = dims3(&x, &format!("input of `{}`", ml.name))?;
                    let mask = explicit_mask(b, t)?.or(m.filter(|_| implicit));
                    let s = init()?;
                    let (o, f, tape) =
                        r.forward_train(&x, s.as_deref(), mask.as_ref(), rng.as_deref_mut())?;
                    if r.is_stateful() {
                        finals.push((node.layer, f));
                    }
                    let om = if r.returns_sequences() { mask } else { None };
                    let mut v = vec![Val::F(o.output, om)];
                    v.extend(o.states.into_iter().map(|s| Val::F(s, None)));
                    (v, Cache::Rnn(Box::new(tape)))
                }
                Layer::Bidirectional(bi) => {
                    let (x, m) = arg_t(0)?;
                    let (b, t, _) = dims3(&x, &format!("input of `{}`", ml.name))?;
                    let mask = explicit_mask(b, t)?.or(m.filter(|_| implicit));
                    let s = init()?;
                    let nf = bi.forward.cells().len();
                    let (fs, bs) = match &s {
                        Some(s) if s.len() == nf + bi.backward.cells().len() => {
                            (Some(&s[..nf]), Some(&s[nf..]))
                        }
                        Some(_) => {
                            return Err(ConfigError::invalid(
                                "initial_state",
                                "wrong count",
                                "forward then backward states",
                            )
                            .into())
                        }
                        None => (None, None),
                    };
                    let (fo, mut f, ft) =
                        bi.forward
                            .forward_train(&x, fs, mask.as_ref(), rng.as_deref_mut())?;
                    let (mut bo, b, bt) =
                        bi.backward
                            .forward_train(&x, bs, mask.as_ref(), rng.as_deref_mut())?;
                    if bi.is_stateful() {
                        f.extend(b);
                        finals.push((node.layer, f));
                    }
                    if bi.backward.returns_sequences() {
                        flip_time(&mut bo.output);
                    }
                    let om = if bi.forward.returns_sequences() {
                        mask
                    } else {
                        None
                    };
                    let mut v = match bi.merge_mode() {
                        None => vec![
                            Val::F(fo.output.clone(), om.clone()),
                            Val::F(bo.output.clone(), om),
                        ],
                        Some(mode) => vec![Val::F(merge(mode, &fo.output, &bo.output)?, om)],
                    };
                    v.extend(
                        fo.states
                            .into_iter()
                            .chain(bo.states)
                            .map(|s| Val::F(s, None)),
                    );
                    (
                        v,
                        Cache::Bi {
                            f: Box::new(ft),
                            b: Box::new(bt),
                            fo: fo.output,
                            bo: bo.output,
                        },
                    )
                }
                Layer::Dense(d) => {
                    let (x, m) = arg_t(0)?;
                    let pre = d.linear(&x, self.threads())?;
                    let mut y = pre.clone();
                    let n = d.config().units;
                    for row in y.data_mut().chunks_exact_mut(n) {
                        d.config().activation.apply_row(row);
                    }
                    (vec![Val::F(y.clone(), m)], Cache::Dense { x, pre, y })
                }
                Layer::Activation(a) => {
                    let (x, m) = arg_t(0)?;
                    let mut y = x.clone();
                    let last = y.shape().last().copied().unwrap_or(1).max(1);
                    for row in y.data_mut().chunks_exact_mut(last) {
                        a.apply_row(row);
                    }
                    (vec![Val::F(y.clone(), m)], Cache::Act { x, y })
                }
                Layer::Pointwise(pw) => {
                    let (x, m) = arg_t(0)?;
                    let y = pw.call_masked(&x, m.as_ref())?;
                    (vec![Val::F(y.clone(), m)], Cache::Act { x, y })
                }
                Layer::Dropout { rate, .. } => {
                    let (x, m) = arg_t(0)?;
                    match rng.as_deref_mut() {
                        Some(r) if *rate > 0.0 && *rate < 1.0 => {
                            let mask: Vec<T> = keep_factors(x.len(), *rate, r);
                            let mut y = x.clone();
                            y.data_mut()
                                .iter_mut()
                                .zip(&mask)
                                .for_each(|(v, k)| *v *= *k);
                            (vec![Val::F(y, m)], Cache::Dropout(mask))
                        }
                        _ => (vec![Val::F(x, m)], Cache::None),
                    }
                }
                Layer::Embedding(e) => {
                    let (x, _) = arg_t(0)?;
                    let y = e.call(&x)?;
                    let mask = e.compute_mask(&x)?;
                    (vec![Val::F(y, mask)], Cache::Embedding(x))
                }
                Layer::GlobalPooling(pool) => {
                    let (x, m) = arg_t(0)?;
                    let mask = call_mask(node, &vals, &pos, m, &ml.name)?;
                    let y = pool.call(&x, mask.as_ref())?;
                    (vec![Val::F(y, None)], Cache::Pool(x, mask))
                }
                Layer::LayerNorm(n) => {
                    let (x, m) = arg_t(0)?;
                    (vec![Val::F(n.call(&x)?, m)], Cache::Input(x))
                }
                Layer::PRelu(p) => {
                    let (x, m) = arg_t(0)?;
                    (vec![Val::F(p.call(&x)?, m)], Cache::Input(x))
                }
                Layer::RmsNorm(n) => {
                    let (x, _) = arg_t(0)?;
                    (vec![Val::F(n.call(&x)?, None)], Cache::Input(x))
                }
                Layer::Normalization(n) => {
                    let (x, m) = arg_t(0)?;
                    (vec![Val::F(n.call(&x)?, m)], Cache::None)
                }
                // Keras normalizes with the batch's statistics in training, unless the layer
                // is frozen (`training and self.trainable`).
                Layer::BatchNorm(n) => {
                    let (x, m) = arg_t(0)?;
                    let mask = call_mask(node, &vals, &pos, m.clone(), &ml.name)?;
                    if ml.trainable && training {
                        let (y, stats) = n.call_train(&x, mask.as_ref())?;
                        (vec![Val::F(y, m)], Cache::BatchNorm(x, mask, Some(stats)))
                    } else {
                        (
                            vec![Val::F(n.call(&x)?, m)],
                            Cache::BatchNorm(x, mask, None),
                        )
                    }
                }
                Layer::Conv1D(c) => {
                    let (x, _) = arg_t(0)?;
                    let pre = c.linear(&x, self.threads())?;
                    let mut y = pre.clone();
                    let last = y.shape()[2].max(1);
                    for row in y.data_mut().chunks_exact_mut(last) {
                        c.config().activation.apply_row(row);
                    }
                    // Keras' Conv1D drops the mask.
                    (vec![Val::F(y.clone(), None)], Cache::Dense { x, pre, y })
                }
                Layer::Flatten(f) => {
                    let (x, _) = arg_t(0)?;
                    (
                        vec![Val::F(f.call(&x)?, None)],
                        Cache::Shape(x.shape().to_vec()),
                    )
                }
                Layer::Steps(l) => {
                    let (x, _) = arg_t(0)?;
                    (
                        vec![Val::F(l.call(&x)?, None)],
                        Cache::Shape(x.shape().to_vec()),
                    )
                }
                Layer::Pooling(p) => {
                    let (x, _) = arg_t(0)?;
                    (vec![Val::F(p.call(&x)?, None)], Cache::Input(x))
                }
                Layer::Reshape(r) => {
                    let (x, _) = arg_t(0)?;
                    (
                        vec![Val::F(r.call(&x)?, None)],
                        Cache::Shape(x.shape().to_vec()),
                    )
                }
                Layer::Noise(n) => {
                    let (mut x, m) = arg_t(0)?;
                    let (f, e) = match rng.as_deref_mut() {
                        Some(r) => n.perturbation::<T>(x.shape(), r)?,
                        None => (None, None),
                    };
                    if let Some(f) = &f {
                        x.data_mut().iter_mut().zip(f).for_each(|(v, k)| *v *= *k);
                    }
                    if let Some(e) = e {
                        x.data_mut().iter_mut().zip(&e).for_each(|(v, k)| *v += *k);
                    }
                    let cache = f.map_or(Cache::None, Cache::Dropout);
                    (vec![Val::F(x, m)], cache)
                }
                Layer::Attention(a) => {
                    let (q, q_mask) = arg_t(0)?;
                    let (v, v_mask) = arg_t(1)?;
                    let k = if node.args.len() > 2 {
                        Some(arg_t(2)?.0)
                    } else {
                        None
                    };
                    let r = a.call_train(
                        &q,
                        &v,
                        k.as_ref(),
                        q_mask.as_ref(),
                        v_mask.as_ref(),
                        node.attention,
                        rng.as_deref_mut(),
                    )?;
                    let (weights, drop) = (r.weights, r.drop);
                    let mut o = vec![Val::F(r.out, q_mask.clone())];
                    if node.attention.return_attention_scores {
                        o.push(Val::F(weights.clone(), None));
                    }
                    (
                        o,
                        Cache::Attention {
                            q,
                            v,
                            k,
                            q_mask,
                            weights,
                            drop,
                        },
                    )
                }
                Layer::MultiHeadAttention(a) => {
                    let (q, q_mask) = arg_t(0)?;
                    let (v, v_mask) = arg_t(1)?;
                    let (k, k_mask) = if node.args.len() > 2 {
                        let (k, m) = arg_t(2)?;
                        (Some(k), m)
                    } else {
                        (None, None)
                    };
                    let (out, scores, trace) = a.call_train(
                        &q,
                        &v,
                        k.as_ref(),
                        [q_mask.as_ref(), v_mask.as_ref(), k_mask.as_ref()],
                        node.attention,
                        rng.as_deref_mut(),
                    )?;
                    let mut o = vec![Val::F(out, q_mask)];
                    if node.attention.return_attention_scores {
                        o.push(Val::F(scores, None));
                    }
                    let trace = Box::new(trace);
                    (o, Cache::Mha { q, v, k, trace })
                }
                Layer::Merge(_) | Layer::Dot(_) => {
                    let out = self.eval_node(node, inputs, &vals, &pos, None)?;
                    let (xs, masks) = (0..node.args.len())
                        .map(arg_t)
                        .collect::<Result<Vec<_>, _>>()?
                        .into_iter()
                        .unzip();
                    (out, Cache::Merge(xs, masks))
                }
                Layer::Masking { .. } => {
                    let v = self.eval_node(node, inputs, &vals, &pos, None)?;
                    let mask = match &v[0] {
                        Val::F(_, Some(m)) => m.clone(),
                        _ => {
                            return Err(ConfigError::invalid("Masking", "no mask", "a mask").into())
                        }
                    };
                    (v, Cache::Masking(mask))
                }
                _ => (
                    self.eval_node(node, inputs, &vals, &pos, None)?,
                    Cache::None,
                ),
            };
            let mut out = out;
            self.recorded_output_mask(node, &vals, &pos, &mut out)?;
            vals.push(out);
            caches.push(cache);
        }
        Ok((vals, caches, finals))
    }

    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        vals: &[Vec<Val<T>>],
        mut caches: Vec<Cache<T>>,
        mut dvals: Vec<Vec<Option<Tensor<T>>>>,
        pos: &HashMap<(usize, usize), usize>,
        index: &HashMap<(usize, usize), usize>,
        logit_nodes: &std::collections::HashSet<usize>,
        sink: &mut Grads<'_, T>,
    ) -> Result<(), Error> {
        let grads = &mut *sink.dense;
        for p in (0..self.nodes.len()).rev() {
            let node = &self.nodes[p];
            if dvals[p].iter().all(Option::is_none) {
                continue;
            }
            let ml = &self.layers[node.layer];
            // Gradients are handed out only to trainable variables (`var_grad` skips the rest).
            let trainable = ml.variable_trainable().contains(&true);
            let first_arg = match node.args.first() {
                Some(NodeArg::Tensor(r)) => Some(*r),
                _ => None,
            };
            let out_grads = std::mem::take(&mut dvals[p]);
            let cache = std::mem::replace(&mut caches[p], Cache::None);
            let send = |r: Option<TensorRef>,
                        g: Tensor<T>,
                        dvals: &mut Vec<Vec<Option<Tensor<T>>>>|
             -> Result<(), Error> {
                if let Some(r) = r {
                    if let Some(&q) = pos.get(&(r.layer, r.node)) {
                        if let Some(slot) = dvals[q].get_mut(r.index) {
                            add_grad(slot, g)?;
                        }
                    }
                }
                Ok(())
            };
            let mut var_grad = |i: usize, g: &[T]| {
                if let Some(&k) = index.get(&(node.layer, i)) {
                    grads[k].iter_mut().zip(g).for_each(|(a, b)| *a += *b);
                }
            };
            match (&ml.layer, cache) {
                (Layer::Dense(d), Cache::Dense { x, pre, y }) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    // A logits gradient (crossentropy shortcut) already is d pre-activation.
                    let dpre = if logit_nodes.contains(&p) {
                        dy
                    } else {
                        act_back(d.config().activation, &pre, &y, &dy)?
                    };
                    let (dw, db, dx) = dense_backward(d, &x, &dpre, self.threads())?;
                    if trainable {
                        var_grad(0, &dw);
                        if let Some(db) = db {
                            var_grad(1, &db);
                        }
                    }
                    send(first_arg, dx, &mut dvals)?;
                }
                (Layer::Conv1D(c), Cache::Dense { x, pre, y }) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let dpre = if logit_nodes.contains(&p) {
                        dy
                    } else {
                        act_back(c.config().activation, &pre, &y, &dy)?
                    };
                    let g = c.backward(&x, &dpre, self.threads())?;
                    if trainable {
                        var_grad(0, &g.kernel);
                        if let Some(db) = g.bias {
                            var_grad(1, &db);
                        }
                    }
                    send(first_arg, g.x, &mut dvals)?;
                }
                (Layer::Activation(a), Cache::Act { x, y }) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let dx = if logit_nodes.contains(&p) {
                        dy
                    } else {
                        act_back(*a, &x, &y, &dy)?
                    };
                    send(first_arg, dx, &mut dvals)?;
                }
                (Layer::Pointwise(pw), Cache::Act { x, y }) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let dx = if logit_nodes.contains(&p) {
                        dy
                    } else {
                        pw.backward(&x, &y, &dy)?
                    };
                    send(first_arg, dx, &mut dvals)?;
                }
                (Layer::Dropout { .. }, Cache::Dropout(m)) => {
                    let Some(mut dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    dy.data_mut().iter_mut().zip(&m).for_each(|(g, k)| *g *= *k);
                    send(first_arg, dy, &mut dvals)?;
                }
                (Layer::Noise(_), Cache::Dropout(m)) => {
                    let Some(mut dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    dy.data_mut().iter_mut().zip(&m).for_each(|(g, k)| *g *= *k);
                    send(first_arg, dy, &mut dvals)?;
                }
                // The identity (or an added noise) passes the gradient on unchanged.
                (
                    Layer::Dropout { .. } | Layer::Noise(_) | Layer::ActivityRegularization(_),
                    Cache::None,
                ) => {
                    if let Some(dy) = out_grads.into_iter().next().flatten() {
                        send(first_arg, dy, &mut dvals)?;
                    }
                }
                (Layer::Normalization(n), _) => {
                    if let Some(dy) = out_grads.into_iter().next().flatten() {
                        send(first_arg, n.backward(&dy)?, &mut dvals)?;
                    }
                }
                (Layer::Permute(perm), _) => {
                    if let Some(dy) = out_grads.into_iter().next().flatten() {
                        send(first_arg, perm.backward(&dy)?, &mut dvals)?;
                    }
                }
                (Layer::Pooling(pool), Cache::Input(x)) => {
                    if let Some(dy) = out_grads.into_iter().next().flatten() {
                        send(first_arg, pool.backward(&x, &dy)?, &mut dvals)?;
                    }
                }
                (Layer::Reshape(r), Cache::Shape(shape)) => {
                    if let Some(dy) = out_grads.into_iter().next().flatten() {
                        send(first_arg, r.backward(&shape, &dy)?, &mut dvals)?;
                    }
                }
                // Indices have no gradient (Keras' is `None` for an integer cast): only the
                // table gets one.
                (Layer::Embedding(e), Cache::Embedding(x)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    if trainable {
                        let rg = e.row_grads(&x, &dy)?;
                        if let Some(&k) = index.get(&(node.layer, 0)) {
                            let g = rg.dense(grads[k].len())?;
                            grads[k].iter_mut().zip(&g).for_each(|(a, b)| *a += *b);
                            match &mut sink.rows[k] {
                                Some(all) => all.extend(rg)?,
                                slot => *slot = Some(rg),
                            }
                        }
                    }
                }
                (
                    Layer::Attention(_) | Layer::MultiHeadAttention(_),
                    c @ (Cache::Attention { .. } | Cache::Mha { .. }),
                ) => {
                    let mut outs = out_grads.into_iter();
                    let (d_out, d_weights) = (outs.next().flatten(), outs.next().flatten());
                    if d_out.is_none() && d_weights.is_none() {
                        continue;
                    }
                    let g = match (&ml.layer, c) {
                        (
                            Layer::Attention(a),
                            Cache::Attention {
                                q,
                                v,
                                k,
                                q_mask,
                                weights,
                                drop,
                            },
                        ) => a.backward(
                            &q,
                            &v,
                            k.as_ref(),
                            q_mask.as_ref(),
                            &weights,
                            drop.as_deref(),
                            d_out.as_ref(),
                            d_weights.as_ref(),
                        )?,
                        (Layer::MultiHeadAttention(a), Cache::Mha { q, v, k, trace }) => a
                            .backward(
                                &q,
                                &v,
                                k.as_ref(),
                                &trace,
                                d_out.as_ref(),
                                d_weights.as_ref(),
                            )?,
                        _ => continue,
                    };
                    if trainable {
                        for (i, w) in g.weights.iter().enumerate() {
                            var_grad(i, w);
                        }
                    }
                    let arg = |i: usize| match node.args.get(i) {
                        Some(NodeArg::Tensor(r)) => Some(*r),
                        _ => None,
                    };
                    send(arg(0), g.query, &mut dvals)?;
                    send(arg(1), g.value, &mut dvals)?;
                    if let Some(dk) = g.key {
                        send(arg(2), dk, &mut dvals)?;
                    }
                }
                (Layer::Merge(merge), Cache::Merge(xs, masks)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let refs: Vec<&Tensor<T>> = xs.iter().collect();
                    let mrefs: Vec<Option<&Mask>> = masks.iter().map(Option::as_ref).collect();
                    for (a, g) in node.args.iter().zip(merge.backward(&refs, &mrefs, &dy)?) {
                        if let NodeArg::Tensor(r) = a {
                            send(Some(*r), g, &mut dvals)?;
                        }
                    }
                }
                (Layer::Dot(d), Cache::Merge(xs, _)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let [x, y] = xs.as_slice() else {
                        return Err(ConfigError::invalid("Dot", xs.len(), "two inputs").into());
                    };
                    let (gx, gy) = d.backward(x, y, &dy)?;
                    for (a, g) in node.args.iter().zip([gx, gy]) {
                        if let NodeArg::Tensor(r) = a {
                            send(Some(*r), g, &mut dvals)?;
                        }
                    }
                }
                (Layer::GlobalPooling(pool), Cache::Pool(x, mask)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    send(
                        first_arg,
                        pool.backward(&x, mask.as_ref(), &dy)?,
                        &mut dvals,
                    )?;
                }
                (Layer::LayerNorm(n), Cache::Input(x)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let g = n.backward(&x, &dy)?;
                    if trainable {
                        for (i, w) in g.gamma.iter().chain(g.beta.iter()).enumerate() {
                            var_grad(i, w);
                        }
                    }
                    send(first_arg, g.x, &mut dvals)?;
                }
                (Layer::PRelu(pr), Cache::Input(x)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let g = pr.backward(&x, &dy)?;
                    if trainable {
                        var_grad(0, &g.alpha);
                    }
                    send(first_arg, g.x, &mut dvals)?;
                }
                (Layer::RmsNorm(n), Cache::Input(x)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let g = n.backward(&x, &dy)?;
                    if trainable {
                        var_grad(0, &g.scale);
                    }
                    send(first_arg, g.x, &mut dvals)?;
                }
                (Layer::BatchNorm(n), Cache::BatchNorm(x, mask, stats)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let g = n.backward(&x, mask.as_ref(), stats.as_ref(), &dy)?;
                    if trainable {
                        for (i, w) in g.gamma.iter().chain(g.beta.iter()).enumerate() {
                            var_grad(i, w);
                        }
                    }
                    send(first_arg, g.x, &mut dvals)?;
                }
                (Layer::Flatten(f), Cache::Shape(shape)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    send(first_arg, f.backward(&shape, &dy)?, &mut dvals)?;
                }
                (Layer::Steps(l), Cache::Shape(shape)) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    send(first_arg, l.backward(&shape, &dy)?, &mut dvals)?;
                }
                (Layer::RepeatVector(r), _) => {
                    let Some(dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    send(first_arg, r.backward(&dy)?, &mut dvals)?;
                }
                (Layer::Masking { .. }, Cache::Masking(mask)) => {
                    let Some(mut dy) = out_grads.into_iter().next().flatten() else {
                        continue;
                    };
                    let d = dy.shape()[2].max(1);
                    for (row, keep) in dy.data_mut().chunks_exact_mut(d).zip(&mask.data) {
                        if !keep {
                            row.fill(T::zero());
                        }
                    }
                    send(first_arg, dy, &mut dvals)?;
                }
                (Layer::Rnn(r), Cache::Rnn(tape)) => {
                    let mut it = out_grads.into_iter();
                    let Val::F(o, _) = &vals[p][0] else { continue };
                    let d_out = it
                        .next()
                        .flatten()
                        .unwrap_or_else(|| Tensor::zeros(o.shape().to_vec()));
                    let ds: Vec<Option<Tensor<T>>> = it.collect();
                    let d_states = states_grads(r, &ds, d_out.shape()[0]);
                    let g = r.backward(*tape, &d_out, d_states.as_deref())?;
                    if trainable {
                        let mut i = 0;
                        for (c, cg) in r.cells().iter().zip(&g.cells) {
                            for w in
                                cell_grad_arrays(c.config().use_bias, c.config().reset_after, cg)
                            {
                                var_grad(i, &w);
                                i += 1;
                            }
                        }
                    }
                    send(first_arg, g.dx, &mut dvals)?;
                    for (r, d) in node.initial_state.iter().zip(g.dinitial) {
                        send(Some(*r), d, &mut dvals)?;
                    }
                }
                (Layer::Bidirectional(bi), Cache::Bi { f, b, fo, bo }) => {
                    let mut it = out_grads.into_iter();
                    let (dfo, mut dbo) = match bi.merge_mode() {
                        None => (
                            it.next()
                                .flatten()
                                .unwrap_or_else(|| Tensor::zeros(fo.shape().to_vec())),
                            it.next()
                                .flatten()
                                .unwrap_or_else(|| Tensor::zeros(bo.shape().to_vec())),
                        ),
                        Some(mode) => {
                            let dy = it
                                .next()
                                .flatten()
                                .unwrap_or_else(|| Tensor::zeros(merged_shape(mode, &fo, &bo)));
                            split_merge(mode, &dy, &fo, &bo)?
                        }
                    };
                    let ds: Vec<Option<Tensor<T>>> = it.collect();
                    let nf = bi.forward.cells().len();
                    let batch = fo.shape()[0];
                    let dfs = states_grads(&bi.forward, &ds[..nf.min(ds.len())], batch);
                    let dbs = states_grads(
                        &bi.backward,
                        if ds.len() > nf { &ds[nf..] } else { &[] },
                        batch,
                    );
                    if bi.backward.returns_sequences() {
                        flip_time(&mut dbo);
                    }
                    let gf = bi.forward.backward(*f, &dfo, dfs.as_deref())?;
                    let gb = bi.backward.backward(*b, &dbo, dbs.as_deref())?;
                    if trainable {
                        let mut i = 0;
                        for (r, gs) in [(&bi.forward, &gf), (&bi.backward, &gb)] {
                            for (c, cg) in r.cells().iter().zip(&gs.cells) {
                                for w in cell_grad_arrays(
                                    c.config().use_bias,
                                    c.config().reset_after,
                                    cg,
                                ) {
                                    var_grad(i, &w);
                                    i += 1;
                                }
                            }
                        }
                    }
                    let mut dx = gf.dx;
                    dx.data_mut()
                        .iter_mut()
                        .zip(gb.dx.data())
                        .for_each(|(a, b)| *a += *b);
                    send(first_arg, dx, &mut dvals)?;
                    for (r, d) in node
                        .initial_state
                        .iter()
                        .zip(gf.dinitial.into_iter().chain(gb.dinitial))
                    {
                        send(Some(*r), d, &mut dvals)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Keras' sample weights `w` for output `output` of shape `shape` (`(B, …, C)`): one per loss
/// term, i.e. per position of every axis but the last (`(B,)` for `(B, C)`, `(B, T)` for a
/// sequence), times the mask's row weights where it has some. Keras refuses weights of another
/// shape (per sample on a sequence output, say), and so does this.
fn per_row_weights<T: Float>(
    w: &[T],
    shape: &[usize],
    masked: Option<&[T]>,
    output: usize,
) -> Result<Vec<T>, Error> {
    let terms = &shape[..shape.len().saturating_sub(1).max(1).min(shape.len())];
    let rows: usize = terms.iter().product();
    if w.len() != rows {
        return Err(ShapeError::mismatch(
            "sample_weight",
            &[w.len()],
            format!(
                "{terms:?}: one weight per loss term of output {output} (Keras weighs a sequence \
                 output's steps with (batch, steps) weights, and refuses one weight per sample there)"
            ),
        )
        .into());
    }
    let mut out = w.to_vec();
    if let Some(m) = masked {
        if m.len() == out.len() {
            out.iter_mut().zip(m).for_each(|(o, &f)| *o *= f);
        }
    }
    Ok(out)
}

fn push_rnn<'a, T: Float>(
    r: &'a mut Rnn<T>,
    out: &mut Vec<(&'a mut Tensor<T>, Option<Regularizer>, Option<Constraint>)>,
) {
    for c in r.cells_mut() {
        let cfg = c.config().clone();
        let regs = [
            (cfg.kernel_regularizer, cfg.kernel_constraint),
            (cfg.recurrent_regularizer, cfg.recurrent_constraint),
            (cfg.bias_regularizer, cfg.bias_constraint),
        ];
        for (w, (rg, k)) in c.weights_mut().into_iter().zip(regs) {
            out.push((w, rg, k));
        }
    }
}

/// Cell gradients in Keras weight order and shapes (bias `(2, 3u)` = [input row; recurrent row]).
fn cell_grad_arrays<T: Float>(
    use_bias: bool,
    reset_after: bool,
    g: &crate::engine::gru_backward::GruGrads<T>,
) -> Vec<Vec<T>> {
    let mut v = vec![g.kernel.clone(), g.recurrent.clone()];
    if use_bias {
        let mut b = g.bias_input.clone();
        if reset_after {
            b.extend_from_slice(&g.bias_recurrent);
        }
        v.push(b);
    }
    v
}

/// Per-cell final-state gradients, zeros where a state was not used; `None` when none was.
fn states_grads<T: Float>(
    r: &Rnn<T>,
    ds: &[Option<Tensor<T>>],
    batch: usize,
) -> Option<Vec<Tensor<T>>> {
    if ds.iter().all(Option::is_none) {
        return None;
    }
    Some(
        r.cells()
            .iter()
            .enumerate()
            .map(|(k, c)| {
                ds.get(k)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| Tensor::zeros(vec![batch, c.units()]))
            })
            .collect(),
    )
}

fn add_grad<T: Float>(slot: &mut Option<Tensor<T>>, g: Tensor<T>) -> Result<(), Error> {
    match slot {
        None => *slot = Some(g),
        Some(s) => {
            if s.shape() != g.shape() {
                return Err(ShapeError::mismatch(
                    "gradient",
                    g.shape(),
                    format!("{:?}", s.shape()),
                )
                .into());
            }
            s.data_mut()
                .iter_mut()
                .zip(g.data())
                .for_each(|(a, b)| *a += *b);
        }
    }
    Ok(())
}

/// The activation of a layer with weights whose output Keras' crossentropies can read as
/// logits (`Dense`, `Conv1D`).
/// The activation that ends a call, with its input and output: a Dense or Conv1D layer's own, an
/// `Activation` layer's, or the softmax of a `Softmax` layer (what Keras' crossentropies may
/// read the logits of).
fn output_activation<'c, T: Float>(
    cache: &'c Cache<T>,
    layer: &Layer<T>,
) -> Option<(Activation, &'c Tensor<T>, &'c Tensor<T>)> {
    match (cache, layer) {
        (Cache::Dense { pre, y, .. }, _) => weighted_activation(layer).map(|a| (a, pre, y)),
        (Cache::Act { x, y }, Layer::Activation(a)) => Some((*a, x, y)),
        (Cache::Act { x, y }, Layer::Pointwise(pw)) => pw.logits_activation().map(|a| (a, x, y)),
        _ => None,
    }
}

fn weighted_activation<T: Float>(layer: &Layer<T>) -> Option<Activation> {
    match layer {
        Layer::Dense(d) => Some(d.config().activation),
        Layer::Conv1D(c) => Some(c.config().activation),
        _ => None,
    }
}

fn act_back<T: Float>(
    a: Activation,
    x: &Tensor<T>,
    y: &Tensor<T>,
    dy: &Tensor<T>,
) -> Result<Tensor<T>, Error> {
    let n = x.shape().last().copied().unwrap_or(1).max(1);
    let mut dx = vec![T::zero(); x.len()];
    for (((xr, yr), gr), dr) in x
        .data()
        .chunks_exact(n)
        .zip(y.data().chunks_exact(n))
        .zip(dy.data().chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        a.backward_row(xr, yr, gr, dr);
    }
    Ok(Tensor::new(x.shape().to_vec(), dx)?)
}

fn dense_backward<T: Float>(
    d: &Dense<T>,
    x: &Tensor<T>,
    dpre: &Tensor<T>,
    threads: usize,
) -> Result<DenseGrads<T>, Error> {
    let (i, o) = (d.input_dim(), d.config().units);
    let (dw, db, dx) = affine_backward(
        x.data(),
        i,
        d.kernel().data(),
        o,
        d.bias().is_some(),
        dpre.data(),
        threads,
    );
    Ok((dw, db, Tensor::new(x.shape().to_vec(), dx)?))
}

fn flip_time<T: Float>(t: &mut Tensor<T>) {
    if t.rank() != 3 {
        return;
    }
    let (b, n, u) = (t.shape()[0], t.shape()[1], t.shape()[2]);
    let d = t.data_mut();
    for s in 0..b {
        for k in 0..n / 2 {
            for j in 0..u {
                d.swap((s * n + k) * u + j, (s * n + n - 1 - k) * u + j);
            }
        }
    }
}

fn merged_shape<T: Float>(mode: MergeMode, f: &Tensor<T>, b: &Tensor<T>) -> Vec<usize> {
    let mut s = f.shape().to_vec();
    if mode == MergeMode::Concat {
        let l = s.len() - 1;
        s[l] += b.shape()[l];
    }
    s
}

fn split_merge<T: Float>(
    mode: MergeMode,
    dy: &Tensor<T>,
    f: &Tensor<T>,
    b: &Tensor<T>,
) -> Result<(Tensor<T>, Tensor<T>), Error> {
    let shape = f.shape().to_vec();
    Ok(match mode {
        MergeMode::Concat => {
            let l = shape.len() - 1;
            let (uf, ub) = (shape[l], b.shape()[l]);
            let mut df = Vec::with_capacity(f.len());
            let mut db = Vec::with_capacity(b.len());
            for row in dy.data().chunks_exact(uf + ub) {
                df.extend_from_slice(&row[..uf]);
                db.extend_from_slice(&row[uf..]);
            }
            (
                Tensor::new(shape, df)?,
                Tensor::new(b.shape().to_vec(), db)?,
            )
        }
        MergeMode::Sum => (dy.clone(), dy.clone()),
        MergeMode::Ave => {
            let h = T::of(0.5);
            let g: Vec<T> = dy.data().iter().map(|v| *v * h).collect();
            (
                Tensor::new(shape.clone(), g.clone())?,
                Tensor::new(shape, g)?,
            )
        }
        MergeMode::Mul => {
            let df = dy
                .data()
                .iter()
                .zip(b.data())
                .map(|(g, v)| *g * *v)
                .collect();
            let db = dy
                .data()
                .iter()
                .zip(f.data())
                .map(|(g, v)| *g * *v)
                .collect();
            (Tensor::new(shape.clone(), df)?, Tensor::new(shape, db)?)
        }
    })
}
