//! Models: a graph of layers (Keras `Sequential` or `Functional`), run as Keras runs it, with
//! mask propagation, multi-output, stateful layers and a `summary()` like Keras'.

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::attention::{Attention, AttentionCall};
use crate::layers::batch_norm::BatchNorm;
use crate::layers::bidirectional::Bidirectional;
use crate::layers::conv::Conv1D;
use crate::layers::dense::Dense;
use crate::layers::dot::Dot;
use crate::layers::embedding::Embedding;
use crate::layers::keras_order::MaskClearing;
use crate::layers::mask_ops::MaskOp;
use crate::layers::merge::{concat_symbolic, Merge, MergeOp};
use crate::layers::multi_head_attention::MultiHeadAttention;
use crate::layers::noise::Noise;
use crate::layers::normalization::LayerNorm;
use crate::layers::pointwise::Pointwise;
use crate::layers::pooling::GlobalPooling1D;
use crate::layers::prelu::PRelu;
use crate::layers::preprocessing::Normalization;
use crate::layers::regularizer::Regularizer;
use crate::layers::reshaping::{Flatten, Permute, RepeatVector, Reshape};
use crate::layers::rms_norm::RmsNorm;
use crate::layers::rnn::{dims3, Mask, Rnn, RnnKind};
use crate::layers::steps::StepLayer;
use crate::layers::window_pooling::Pooling1D;
use crate::tensor::Tensor;

/// One layer (or, in Functional models, one mask operation) of a model.
#[derive(Clone, Debug)]
pub enum Layer<T = f32> {
    /// `InputLayer` with its batch shape (`None` = any size).
    Input {
        /// `(batch, time, features)` or any rank; `None` where Keras has `null`.
        batch_shape: Vec<Option<usize>>,
    },
    /// `Masking(mask_value)`.
    Masking {
        /// A step is masked when every feature equals this.
        mask_value: f64,
    },
    /// `GRU`, `RNN(GRUCell)` or `RNN(StackedRNNCells)`.
    Rnn(Rnn<T>),
    /// `Bidirectional(GRU | RNN)`.
    Bidirectional(Bidirectional<T>),
    /// `Dense`.
    Dense(Dense<T>),
    /// `Embedding`: integer indices to table rows (and, with `mask_zero`, the padding mask).
    Embedding(Embedding<T>),
    /// A merge layer (`Concatenate`, `Add`, `Subtract`, `Multiply`, `Average`, `Maximum`,
    /// `Minimum`) over the call's tensor arguments.
    Merge(Merge),
    /// `Dot(axes, normalize)` over its two tensor arguments (no mask on the output).
    Dot(Dot),
    /// `Dropout(rate)`: the identity at inference.
    Dropout {
        /// Drop rate (training only).
        rate: f64,
        /// Seed of the dropout mask.
        seed: Option<u64>,
    },
    /// `Activation(name)`.
    Activation(Activation),
    /// `ReLU`, `LeakyReLU`, `ELU`, `Softmax`, `Identity`, `Rescaling` or `UnitNormalization`.
    Pointwise(Pointwise),
    /// `PReLU` (a learned slope per position).
    PRelu(PRelu<T>),
    /// `RMSNormalization` over the last axis (drops the mask, as Keras does).
    RmsNorm(RmsNorm<T>),
    /// `LayerNormalization` over the last axis.
    LayerNorm(LayerNorm<T>),
    /// `Conv1D` over the steps (drops the mask, as Keras does).
    Conv1D(Conv1D<T>),
    /// `BatchNormalization` over one axis.
    BatchNorm(BatchNorm<T>),
    /// `Normalization` (the preprocessing layer): fixed mean and variance, never trained.
    Normalization(Normalization<T>),
    /// `MaxPooling1D` or `AveragePooling1D` (drops the mask).
    Pooling(Pooling1D),
    /// `Attention` or `AdditiveAttention` over `[query, value(, key)]`.
    Attention(Attention<T>),
    /// `MultiHeadAttention` over `(query, value(, key))`.
    MultiHeadAttention(MultiHeadAttention<T>),
    /// `SpatialDropout1D`, `GaussianNoise` or `GaussianDropout`: the identity at inference.
    Noise(Noise),
    /// `ActivityRegularization(l1, l2)`: the identity, with its `L1L2` penalty on the output.
    ActivityRegularization(Regularizer),
    /// `Permute(dims)`.
    Permute(Permute),
    /// `Reshape(target_shape)`.
    Reshape(Reshape),
    /// `GlobalAveragePooling1D` (masked mean over the steps) or `GlobalMaxPooling1D`.
    GlobalPooling(GlobalPooling1D),
    /// `Flatten`.
    Flatten(Flatten),
    /// `RepeatVector(n)`.
    RepeatVector(RepeatVector),
    /// `ZeroPadding1D`, `Cropping1D` or `UpSampling1D` (drop the mask).
    Steps(StepLayer),
    /// The `NotEqual(x, value)` op Keras serializes for a Functional `Masking`.
    NotEqual {
        /// The scalar compared against.
        value: f64,
    },
    /// The `Any(axis)` op Keras serializes for a Functional `Masking`.
    Any {
        /// Reduced axis (negative from the end).
        axis: isize,
    },
    /// One of the boolean ops Keras serializes for the mask of a merge of masked tensors.
    MaskOp(MaskOp),
}

/// A layer with its name and how Keras knows it.
#[derive(Clone, Debug)]
pub struct ModelLayer<T = f32> {
    /// The layer's `name`.
    pub name: String,
    /// Keras class name (`GRU`, `RNN`, `Dense`, …).
    pub class_name: String,
    /// The layer's own Keras `trainable` flag, as its config holds it.
    ///
    /// Keras 3.15.1 decides trainability per variable, by the flag of the layer that owns the
    /// variable: a `GRU` layer's flag is its cell's, but the flag a wrapper is *constructed* with
    /// — `RNN(cell, trainable=False)`, `Bidirectional(…, trainable=False)`,
    /// `TimeDistributed(…, trainable=False)` — does not reach the cells or layer it wraps, and
    /// Keras still trains those. [`ModelLayer::variable_trainable`] applies that rule;
    /// [`ModelLayer::set_trainable`] is Keras' `layer.trainable = b`, which sets every flag
    /// inside the layer too.
    pub trainable: bool,
    /// The layer (for a `TimeDistributed` layer, the wrapped one).
    pub layer: Layer<T>,
    /// Set when this is a Keras `TimeDistributed` wrapper: the wrapped layer's own name, class
    /// and flag, while `name` and `class_name` above are the wrapper's.
    pub time_distributed: Option<Wrapped>,
    /// The `activity_regularizer` of a layer whose own config type does not hold one (every
    /// layer but GRU/RNN, Dense and Embedding): Keras adds its penalty of the layer's output to
    /// the training loss, divided by the batch size, as for those.
    pub activity_regularizer: Option<Regularizer>,
    /// The layer's outputs carry no mask whatever its inputs carry: TF-Keras 2's `Normalization`,
    /// `Identity` and `Rescaling` do not support masking and drop it, where Keras 3's pass it on.
    /// The loader sets it for those layers of TF-Keras 2 files; false everywhere else.
    pub drops_mask: bool,
}

/// The layer inside a Keras `TimeDistributed` wrapper.
///
/// `TimeDistributed(layer)` applies `layer` to every time step of a `(batch, time, …)` input
/// and passes the mask through. For the layers grucell wraps — `Dense`, `Dropout`,
/// `Activation`, `LayerNormalization` — that is exactly what the layer computes on the sequence
/// itself (on the last axis, element by element, or per row), so a wrapped layer runs, trains
/// and is counted as its unwrapped self; only loading and saving know about the wrapper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapped {
    /// The wrapped layer's `name` (e.g. `dense`).
    pub name: String,
    /// The wrapped layer's Keras class (`Dense`, `Dropout`, `Activation`,
    /// `LayerNormalization`).
    pub class_name: String,
    /// The wrapped layer's own `trainable` flag.
    pub trainable: bool,
}

impl<T: Float> ModelLayer<T> {
    /// Number of weights (parameters) of the layer.
    pub fn param_count(&self) -> usize {
        match &self.layer {
            Layer::Rnn(r) => r.param_count(),
            Layer::Bidirectional(b) => b.param_count(),
            Layer::Dense(d) => d.param_count(),
            Layer::Embedding(e) => e.param_count(),
            Layer::LayerNorm(n) => n.param_count(),
            Layer::Conv1D(c) => c.param_count(),
            Layer::PRelu(p) => p.param_count(),
            Layer::RmsNorm(n) => n.param_count(),
            Layer::BatchNorm(n) => n.param_count(),
            Layer::Attention(a) => a.param_count(),
            Layer::Normalization(n) => n.param_count(),
            Layer::MultiHeadAttention(a) => a.param_count(),
            _ => 0,
        }
    }

    /// Whether training updates each of the layer's variables, in Keras' weight order (see
    /// [`ModelLayer::trainable`] for the rule).
    ///
    /// ```
    /// use grucell::layers::model::{Layer, ModelLayer};
    /// use grucell::{GruCellConfig, Rnn};
    ///
    /// // RNN([GRUCell(3), GRUCell(2, trainable=False)]): the second cell's 3 arrays stay frozen.
    /// let configs = vec![GruCellConfig::new(3), GruCellConfig::new(2).trainable(false)];
    /// let rnn = Rnn::<f32>::stacked(configs, 4)?;
    /// let mut layer = ModelLayer::new("rnn", Layer::Rnn(rnn));
    /// assert_eq!(layer.variable_trainable(), [true, true, true, false, false, false]);
    /// layer.set_trainable(false); // Keras: layer.trainable = False
    /// assert_eq!(layer.variable_trainable(), [false; 6]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn variable_trainable(&self) -> Vec<bool> {
        let cells = |r: &Rnn<T>, gate: bool| -> Vec<bool> {
            r.cells()
                .iter()
                .flat_map(|c| std::iter::repeat_n(gate && c.config().trainable, c.weights().len()))
                .collect()
        };
        match &self.layer {
            // GRU passes its flag to the cell it makes; RNN(cells) leaves the cells' own.
            Layer::Rnn(r) => cells(r, self.trainable || r.kind() != RnnKind::Gru),
            Layer::Bidirectional(b) => {
                let mut v = cells(&b.forward, true);
                v.extend(cells(&b.backward, true));
                v
            }
            // Inside a TimeDistributed wrapper, the wrapped layer's own flag.
            Layer::Dense(_) | Layer::LayerNorm(_) => {
                let own = self
                    .time_distributed
                    .as_ref()
                    .map_or(self.trainable, |w| w.trainable);
                let n = match &self.layer {
                    Layer::Dense(d) => d.weights().len(),
                    Layer::LayerNorm(n) => n.weights().len(),
                    _ => 0,
                };
                vec![own; n]
            }
            Layer::Embedding(_) => vec![self.trainable],
            Layer::Conv1D(c) => vec![self.trainable; c.weights().len()],
            Layer::PRelu(_) | Layer::RmsNorm(_) => vec![self.trainable],
            Layer::Attention(a) => vec![self.trainable; a.weights().len()],
            Layer::MultiHeadAttention(a) => vec![self.trainable; a.weights().len()],
            // γ and β; the moving statistics are never trainable.
            Layer::BatchNorm(n) => {
                let mut v = vec![self.trainable; n.trainable_weight_count()];
                v.extend([false, false]);
                v
            }
            // Its statistics (the int64 count is not among the float variables).
            Layer::Normalization(n) => vec![false; n.weights().len()],
            _ => Vec::new(),
        }
    }

    /// Keras' `layer.trainable = b`: sets the layer's flag and every flag inside it (cells,
    /// both directions of a `Bidirectional`, the layer in a `TimeDistributed`).
    pub fn set_trainable(&mut self, b: bool) {
        self.trainable = b;
        if let Some(w) = &mut self.time_distributed {
            w.trainable = b;
        }
        match &mut self.layer {
            Layer::Rnn(r) => r.cells_mut().iter_mut().for_each(|c| c.set_trainable(b)),
            Layer::Bidirectional(bi) => {
                for r in [&mut bi.forward, &mut bi.backward] {
                    r.cells_mut().iter_mut().for_each(|c| c.set_trainable(b));
                }
            }
            _ => {}
        }
    }

    /// Applies `f` to every activation of the layer (cells, Dense, Activation).
    pub(crate) fn map_activations(&mut self, f: impl Fn(Activation) -> Activation + Copy) {
        match &mut self.layer {
            Layer::Rnn(r) => r.cells_mut().iter_mut().for_each(|c| c.map_activations(f)),
            Layer::Bidirectional(b) => {
                for r in [&mut b.forward, &mut b.backward] {
                    r.cells_mut().iter_mut().for_each(|c| c.map_activations(f));
                }
            }
            Layer::Dense(d) => d.map_activation(f),
            Layer::Conv1D(c) => c.map_activation(f),
            Layer::Activation(a) => *a = f(*a),
            _ => {}
        }
    }

    /// Every activation of the layer (cells, Dense, Activation).
    pub fn activations(&self) -> Vec<Activation> {
        match &self.layer {
            Layer::Rnn(r) => r
                .cells()
                .iter()
                .flat_map(|c| [c.config().activation, c.config().recurrent_activation])
                .collect(),
            Layer::Bidirectional(b) => [&b.forward, &b.backward]
                .iter()
                .flat_map(|r| r.cells().iter())
                .flat_map(|c| [c.config().activation, c.config().recurrent_activation])
                .collect(),
            Layer::Dense(d) => vec![d.config().activation],
            Layer::Conv1D(c) => vec![c.config().activation],
            Layer::Activation(a) => vec![*a],
            _ => Vec::new(),
        }
    }

    /// A layer named `name` with Keras' default class for it, trainable, not wrapped.
    pub fn new(name: impl Into<String>, layer: Layer<T>) -> Self {
        ModelLayer {
            name: name.into(),
            class_name: default_class_name(&layer).to_string(),
            trainable: true,
            layer,
            time_distributed: None,
            activity_regularizer: None,
            drops_mask: false,
        }
    }

    /// Number of weights training updates (see [`ModelLayer::variable_trainable`]).
    pub fn trainable_param_count(&self) -> usize {
        let weights: Vec<usize> = match &self.layer {
            Layer::Rnn(r) => r
                .cells()
                .iter()
                .flat_map(|c| c.weights())
                .map(Tensor::len)
                .collect(),
            Layer::Bidirectional(b) => [&b.forward, &b.backward]
                .iter()
                .flat_map(|r| r.cells().iter().flat_map(|c| c.weights()))
                .map(Tensor::len)
                .collect(),
            Layer::Dense(d) => d.weights().into_iter().map(Tensor::len).collect(),
            Layer::Embedding(e) => vec![e.param_count()],
            Layer::LayerNorm(n) => n.weights().into_iter().map(Tensor::len).collect(),
            Layer::Conv1D(c) => c.weights().into_iter().map(Tensor::len).collect(),
            Layer::PRelu(p) => vec![p.param_count()],
            Layer::RmsNorm(n) => vec![n.param_count()],
            Layer::BatchNorm(n) => n.weights().into_iter().map(Tensor::len).collect(),
            Layer::Attention(a) => a.weights().into_iter().map(Tensor::len).collect(),
            Layer::MultiHeadAttention(a) => a.weights().into_iter().map(Tensor::len).collect(),
            _ => Vec::new(),
        };
        weights
            .iter()
            .zip(self.variable_trainable())
            .filter(|(_, t)| *t)
            .map(|(n, _)| n)
            .sum()
    }

    /// The layer's activity regularizer, when Keras applies one to its outputs (`GRU`/`RNN`,
    /// `Dense` outside a `TimeDistributed` wrapper, `Embedding`).
    pub fn activity_regularizer(&self) -> Option<&Regularizer> {
        match &self.layer {
            Layer::Rnn(r) => r.activity_regularizer_ref(),
            Layer::Dense(d) if self.time_distributed.is_none() => {
                d.config().activity_regularizer.as_ref()
            }
            Layer::Embedding(e) => e.config().activity_regularizer.as_ref(),
            Layer::ActivityRegularization(r) => Some(r),
            Layer::Dense(_) => None,
            _ => self.activity_regularizer.as_ref(),
        }
    }

    /// True for the mask operations Keras records as graph nodes (not layers).
    pub fn is_op(&self) -> bool {
        matches!(
            self.layer,
            Layer::NotEqual { .. } | Layer::Any { .. } | Layer::MaskOp(_)
        )
    }
}

/// A reference to one output of one call of a layer: `(layer index, node index, tensor index)`,
/// as Keras' `keras_history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorRef {
    /// Index into [`Model::layers`].
    pub layer: usize,
    /// Which call of the layer (0 unless the layer is shared).
    pub node: usize,
    /// Which of the call's outputs.
    pub index: usize,
}

/// A positional argument of a call.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeArg {
    /// A tensor produced by another call.
    Tensor(TensorRef),
    /// A constant (e.g. `NotEqual(x, 0.0)`).
    Scalar(f64),
}

/// One call of a layer in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Which layer is called.
    pub layer: usize,
    /// Which call of that layer this is.
    pub call: usize,
    /// Positional arguments.
    pub args: Vec<NodeArg>,
    /// `initial_state=` keyword argument.
    pub initial_state: Vec<TensorRef>,
    /// `mask=` keyword argument.
    pub mask: Option<TensorRef>,
    /// TF-Keras 2 semantics for a call with initial states: they came as extra call inputs, and
    /// the mask of the first input still applies (Keras 3 drops an upstream mask when
    /// `initial_state` is given). Set by the loader for TF-Keras 2 files.
    pub states_keep_mask: bool,
    /// An attention call's `use_causal_mask` and `return_attention_scores`.
    pub attention: AttentionCall,
}

impl Node {
    /// The tensors the call reads: its positional tensor arguments, then `initial_state`, then
    /// `mask` (the order of Keras' `node.input_tensors`, `tree.flatten` of the arguments).
    pub fn inputs(&self) -> impl Iterator<Item = TensorRef> + '_ {
        self.tensor_args()
            .chain(self.initial_state.iter().copied())
            .chain(self.mask)
    }

    /// The positional arguments that are tensors (constants left out).
    pub fn tensor_args(&self) -> impl Iterator<Item = TensorRef> + '_ {
        self.args.iter().filter_map(|a| match a {
            NodeArg::Tensor(t) => Some(*t),
            NodeArg::Scalar(_) => None,
        })
    }
}

/// Sequential or Functional, to write the model back the way it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `keras.Sequential`.
    Sequential,
    /// `keras.Model` (Functional API).
    Functional,
}

/// A Keras model: layers, the call graph, inputs and outputs.
#[derive(Clone, Debug)]
pub struct Model<T = f32> {
    /// Model name.
    pub name: String,
    /// Sequential or Functional.
    pub kind: ModelKind,
    /// Layers in Keras' order.
    pub layers: Vec<ModelLayer<T>>,
    /// Calls in an order where every argument is computed before it is used.
    pub nodes: Vec<Node>,
    /// The model inputs (outputs of `Input` layers).
    pub inputs: Vec<TensorRef>,
    /// The model outputs, in Keras' order.
    pub outputs: Vec<TensorRef>,
    /// Keras `compile_config`, kept to write it back and to default `fit` options.
    pub compile_config: Option<serde_json::Value>,
    threads: usize,
}

/// A value flowing through the graph: a float tensor with its Keras mask, or a boolean tensor
/// (the result of the mask operations).
#[derive(Clone, Debug)]
pub(crate) enum Val<T> {
    F(Tensor<T>, Option<Mask>),
    B(Vec<usize>, Vec<bool>),
}

impl<T: Float> Model<T> {
    /// Assembles a model and checks the graph (every reference points at an earlier call).
    pub fn new(
        name: impl Into<String>,
        kind: ModelKind,
        layers: Vec<ModelLayer<T>>,
        nodes: Vec<Node>,
        inputs: Vec<TensorRef>,
        outputs: Vec<TensorRef>,
    ) -> Result<Self, Error> {
        let m = Model {
            name: name.into(),
            kind,
            layers,
            nodes,
            inputs,
            outputs,
            compile_config: None,
            threads: 1,
        };
        m.check_graph()?;
        Ok(m)
    }

    /// A Sequential model: an `Input` of `(None, time, features)` followed by `layers`, each
    /// fed the previous layer's first output.
    ///
    /// ```
    /// use grucell::layers::dense::DenseConfig;
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    /// let gru = Rnn::<f32>::new(GruCellConfig::new(4).seed(Some(0)), 3)?;
    /// let dense = DenseConfig::new(1).build(4, 0)?;
    /// let model = Model::sequential("m", vec![None, Some(3)], vec![
    ///     ("gru".into(), Layer::Rnn(gru)),
    ///     ("dense".into(), Layer::Dense(dense)),
    /// ])?;
    /// let y = model.predict(&[Tensor::new(vec![2, 5, 3], vec![0.1; 30])?])?;
    /// assert_eq!(y[0].shape(), &[2, 1]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn sequential(
        name: &str,
        input_shape: Vec<Option<usize>>,
        layers: Vec<(String, Layer<T>)>,
    ) -> Result<Self, Error> {
        let mut batch_shape = vec![None];
        batch_shape.extend(input_shape);
        let mut ml = vec![ModelLayer {
            name: "input_layer".into(),
            class_name: "InputLayer".into(),
            trainable: true,
            layer: Layer::Input { batch_shape },
            time_distributed: None,
            activity_regularizer: None,
            drops_mask: false,
        }];
        let mut nodes = vec![Node {
            layer: 0,
            call: 0,
            args: vec![],
            initial_state: vec![],
            mask: None,
            states_keep_mask: false,
            attention: AttentionCall::default(),
        }];
        for (i, (name, layer)) in layers.into_iter().enumerate() {
            let class_name = default_class_name(&layer).to_string();
            ml.push(ModelLayer {
                name,
                class_name,
                trainable: true,
                layer,
                time_distributed: None,
                activity_regularizer: None,
                drops_mask: false,
            });
            nodes.push(Node {
                layer: i + 1,
                call: 0,
                args: vec![NodeArg::Tensor(TensorRef {
                    layer: i,
                    node: 0,
                    index: 0,
                })],
                initial_state: vec![],
                mask: None,
                states_keep_mask: false,
                attention: AttentionCall::default(),
            });
        }
        let out = TensorRef {
            layer: ml.len() - 1,
            node: 0,
            index: 0,
        };
        Model::new(
            name,
            ModelKind::Sequential,
            ml,
            nodes,
            vec![TensorRef {
                layer: 0,
                node: 0,
                index: 0,
            }],
            vec![out],
        )
    }

    fn check_graph(&self) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        let bad = |what: String| -> Error {
            ConfigError::invalid(
                "model graph",
                what,
                "references to layers called earlier in the graph",
            )
            .into()
        };
        for n in &self.nodes {
            if n.layer >= self.layers.len() {
                return Err(bad(format!("call of layer #{}", n.layer)));
            }
            for r in n.inputs() {
                if !seen.contains(&(r.layer, r.node)) {
                    return Err(bad(format!(
                        "input of `{}` from layer #{} call {}",
                        self.layers[n.layer].name, r.layer, r.node
                    )));
                }
            }
            seen.insert((n.layer, n.call));
        }
        for r in self.inputs.iter().chain(&self.outputs) {
            if !seen.contains(&(r.layer, r.node)) {
                return Err(bad(format!(
                    "model input/output from layer #{} call {}",
                    r.layer, r.node
                )));
            }
        }
        for r in &self.inputs {
            if !matches!(self.layers[r.layer].layer, Layer::Input { .. }) {
                return Err(bad(format!(
                    "model input `{}` is not an InputLayer",
                    self.layers[r.layer].name
                )));
            }
        }
        Ok(())
    }

    /// Threads the GEMMs may use (default 1).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
        let n = self.threads;
        for l in &mut self.layers {
            match &mut l.layer {
                Layer::Rnn(r) => *r = r.clone().threads(n),
                Layer::Bidirectional(b) => {
                    b.forward = b.forward.clone().threads(n);
                    b.backward = b.backward.clone().threads(n);
                }
                _ => {}
            }
        }
    }

    /// Thread count.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Batch shape of each model input.
    pub fn input_shapes(&self) -> Vec<Vec<Option<usize>>> {
        self.inputs
            .iter()
            .map(|r| match &self.layers[r.layer].layer {
                Layer::Input { batch_shape } => batch_shape.clone(),
                _ => vec![],
            })
            .collect()
    }

    /// Total parameter count.
    pub fn param_count(&self) -> usize {
        self.layers.iter().map(ModelLayer::param_count).sum()
    }

    /// Runs the model on `inputs` (one tensor per model input) and returns its outputs in Keras'
    /// order. Stateful layers start from their carried states but do not update them (see
    /// [`Model::predict_stateful`]).
    pub fn predict(&self, inputs: &[Tensor<T>]) -> Result<Vec<Tensor<T>>, Error> {
        let vals = self.run(inputs)?;
        self.collect_outputs(vals)
    }

    /// Like [`Model::predict`], but stateful layers keep their final states for the next call,
    /// as Keras' `predict` does.
    pub fn predict_stateful(&mut self, inputs: &[Tensor<T>]) -> Result<Vec<Tensor<T>>, Error> {
        let vals = self.run_mut(inputs)?;
        self.collect_outputs(vals)
    }

    /// Keras' `predict(inputs, batch_size=batch_size)`: runs the inputs in consecutive slices of
    /// `batch_size` rows (the last may be shorter) and joins the outputs along the batch axis.
    /// Stateful layers carry their states from one slice to the next, as in Keras, which is how
    /// a stateful model with a fixed batch size runs more rows than that size.
    ///
    /// ```
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    ///
    /// let rnn = Rnn::<f32>::new(GruCellConfig::new(3), 2)?.stateful(true);
    /// let mut model = Model::sequential("m", vec![Some(4), Some(2)], vec![("rnn".into(), Layer::Rnn(rnn))])?;
    /// let x = Tensor::new(vec![6, 4, 2], (0..48).map(|v| v as f32 / 48.0).collect())?;
    /// let y = model.predict_in_batches(&[x], 2)?;
    /// assert_eq!(y[0].shape(), &[6, 3]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn predict_in_batches(
        &mut self,
        inputs: &[Tensor<T>],
        batch_size: usize,
    ) -> Result<Vec<Tensor<T>>, Error> {
        if batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", 0, "a positive integer").into());
        }
        let rows = match inputs.first() {
            Some(x) => x.shape().first().copied().unwrap_or(0),
            None => return self.predict_stateful(inputs),
        };
        if let Some((i, x)) = inputs
            .iter()
            .enumerate()
            .find(|(_, x)| x.shape().first() != Some(&rows))
        {
            return Err(ShapeError::mismatch(
                format!("input {i}"),
                x.shape(),
                format!("batch size {rows}, as input 0"),
            )
            .into());
        }
        if rows <= batch_size {
            return self.predict_stateful(inputs);
        }
        let mut parts: Vec<Vec<Tensor<T>>> = Vec::new();
        for start in (0..rows).step_by(batch_size) {
            let end = (start + batch_size).min(rows);
            let slice: Vec<Tensor<T>> = inputs
                .iter()
                .map(|x| {
                    let row = x.len() / rows.max(1);
                    let mut shape = x.shape().to_vec();
                    shape[0] = end - start;
                    Tensor::new(shape, x.data()[start * row..end * row].to_vec())
                })
                .collect::<Result<_, _>>()?;
            parts.push(self.predict_stateful(&slice)?);
        }
        let n_out = parts.first().map_or(0, Vec::len);
        (0..n_out)
            .map(|j| {
                let first = &parts[0][j];
                let mut shape = first.shape().to_vec();
                let mut data = Vec::new();
                for p in &parts {
                    data.extend_from_slice(p[j].data());
                }
                if let Some(b) = shape.first_mut() {
                    *b = parts
                        .iter()
                        .map(|p| p[j].shape().first().copied().unwrap_or(0))
                        .sum();
                }
                Ok(Tensor::new(shape, data)?)
            })
            .collect()
    }

    /// Zeroes the carried state of every stateful layer (Keras `reset_states()`).
    pub fn reset_states(&mut self) {
        for l in &mut self.layers {
            match &mut l.layer {
                Layer::Rnn(r) => r.reset_states(),
                Layer::Bidirectional(b) => b.reset_states(),
                _ => {}
            }
        }
    }

    /// The batch size the model's inputs are built for, where one is fixed (Keras
    /// `batch_shape`; stateful models have one): that of the first input that fixes it.
    pub fn fixed_batch_size(&self) -> Option<usize> {
        self.input_shapes()
            .iter()
            .find_map(|s| s.first().copied().flatten())
    }

    /// Whether a layer carries states from one call to the next (`stateful=True`).
    pub fn is_stateful(&self) -> bool {
        self.layers.iter().any(|l| match &l.layer {
            Layer::Rnn(r) => r.is_stateful(),
            Layer::Bidirectional(b) => b.is_stateful(),
            _ => false,
        })
    }

    /// Gives the stateful layer `layer` the final states of its last call (a `Bidirectional`'s
    /// forward cells, then its backward cells).
    pub(crate) fn set_carried_states(&mut self, layer: usize, states: Vec<Tensor<T>>) {
        match self.layers.get_mut(layer).map(|l| &mut l.layer) {
            Some(Layer::Rnn(r)) => r.set_carried_states(states),
            Some(Layer::Bidirectional(b)) => b.set_carried_states(states),
            _ => {}
        }
    }

    /// Replaces the layers with `layers` (the same model with other weights, e.g. an earlier
    /// epoch's), keeping the stateful layers' current carried states: in Keras they are not
    /// weights.
    pub(crate) fn restore_layers(&mut self, mut layers: Vec<ModelLayer<T>>) {
        for (new, old) in layers.iter_mut().zip(&self.layers) {
            match (&mut new.layer, &old.layer) {
                (Layer::Rnn(n), Layer::Rnn(o)) => n.keep_carried_states_of(o),
                (Layer::Bidirectional(n), Layer::Bidirectional(o)) => {
                    n.forward.keep_carried_states_of(&o.forward);
                    n.backward.keep_carried_states_of(&o.backward);
                }
                _ => {}
            }
        }
        self.layers = layers;
    }

    fn collect_outputs(&self, vals: Vec<Vec<Val<T>>>) -> Result<Vec<Tensor<T>>, Error> {
        let pos = self.node_positions();
        self.outputs
            .iter()
            .map(|r| match lookup(&vals, &pos, *r)? {
                Val::F(t, _) => Ok(t.clone()),
                Val::B(..) => {
                    Err(ConfigError::unsupported("model output", "a boolean mask tensor").into())
                }
            })
            .collect()
    }

    pub(crate) fn node_positions(&self) -> std::collections::HashMap<(usize, usize), usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ((n.layer, n.call), i))
            .collect()
    }

    fn check_model_inputs(&self, inputs: &[Tensor<T>]) -> Result<(), Error> {
        if inputs.len() != self.inputs.len() {
            return Err(ConfigError::invalid(
                "inputs",
                format!("{} arrays", inputs.len()),
                format!("{} (one per model input)", self.inputs.len()),
            )
            .into());
        }
        for (k, (x, shape)) in inputs.iter().zip(self.input_shapes()).enumerate() {
            let ok = x.rank() == shape.len()
                && x.shape()
                    .iter()
                    .zip(&shape)
                    .all(|(d, s)| s.is_none_or(|s| s == *d));
            if !ok {
                let want: Vec<String> = shape
                    .iter()
                    .map(|d| d.map_or("None".into(), |d| d.to_string()))
                    .collect();
                return Err(ShapeError::mismatch(
                    format!("input {k} ({})", self.layers[self.inputs[k].layer].name),
                    x.shape(),
                    format!("({})", want.join(", ")),
                )
                .into());
            }
            x.check_finite(&format!("input {k}"))?;
        }
        Ok(())
    }

    pub(crate) fn run(&self, inputs: &[Tensor<T>]) -> Result<Vec<Vec<Val<T>>>, Error> {
        self.check_model_inputs(inputs)?;
        let pos = self.node_positions();
        let mut vals: Vec<Vec<Val<T>>> = Vec::with_capacity(self.nodes.len());
        let plan = self.mask_clearing();
        let mut originals = std::collections::HashMap::new();
        for (c, node) in self.nodes.iter().enumerate() {
            if let Some(p) = &plan {
                Self::clear_masks_before(p, c, node, &mut vals, &pos, &mut originals);
            }
            let mut out = self.eval_node(node, inputs, &vals, &pos, None)?;
            self.recorded_output_mask(node, &vals, &pos, &mut out)?;
            vals.push(out);
        }
        Ok(vals)
    }

    /// The calls that see an argument's mask removed by an earlier `MultiHeadAttention` call
    /// (see [`crate::layers::keras_order`]); `None` when the model has no such layer.
    pub(crate) fn mask_clearing(&self) -> Option<MaskClearing> {
        let attention: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| matches!(self.layers[n.layer].layer, Layer::MultiHeadAttention(_)))
            .collect();
        MaskClearing::plan(&self.nodes, &self.outputs, &attention)
    }

    /// A layer that passes its input's mask on hands on the mask argument Keras recorded for
    /// its call, when there is one (`compute_mask(inputs, mask)`), whatever mask its input
    /// tensor carries at run time: the two differ once a `MultiHeadAttention` has removed the
    /// input's mask (see [`crate::layers::keras_order`]). A layer that drops the mask
    /// ([`ModelLayer::drops_mask`]) hands on none. Every forward pass calls this after each node.
    pub(crate) fn recorded_output_mask(
        &self,
        node: &Node,
        vals: &[Vec<Val<T>>],
        pos: &std::collections::HashMap<(usize, usize), usize>,
        out: &mut [Val<T>],
    ) -> Result<(), Error> {
        let ml = &self.layers[node.layer];
        if ml.drops_mask {
            for v in out.iter_mut() {
                if let Val::F(_, m) = v {
                    *m = None;
                }
            }
            return Ok(());
        }
        if node.mask.is_none() {
            return Ok(());
        }
        let passes = matches!(
            ml.layer,
            Layer::Dense(_)
                | Layer::Dropout { .. }
                | Layer::Noise(_)
                | Layer::ActivityRegularization(_)
                | Layer::Normalization(_)
                | Layer::Activation(_)
                | Layer::Pointwise(_)
                | Layer::PRelu(_)
                | Layer::LayerNorm(_)
                | Layer::BatchNorm(_)
        );
        if let (true, Some(Val::F(_, m))) = (passes, out.first_mut()) {
            *m = call_mask(node, vals, pos, None, &ml.name)?;
        }
        Ok(())
    }

    /// Before call `c` (`node`) runs: removes the masks of its arguments that an attention call
    /// Keras ran before it removed, and puts back those it did not (`originals` keeps them).
    pub(crate) fn clear_masks_before(
        plan: &MaskClearing,
        c: usize,
        node: &Node,
        vals: &mut [Vec<Val<T>>],
        pos: &std::collections::HashMap<(usize, usize), usize>,
        originals: &mut std::collections::HashMap<TensorRef, Option<Mask>>,
    ) {
        for a in &node.args {
            let NodeArg::Tensor(r) = a else { continue };
            if !plan.watches(*r) {
                continue;
            }
            let slot = pos
                .get(&(r.layer, r.node))
                .and_then(|&p| vals.get_mut(p))
                .and_then(|v| v.get_mut(r.index));
            if let Some(Val::F(_, m)) = slot {
                let original = originals.entry(*r).or_insert_with(|| m.clone());
                *m = if plan.is_cleared(c, *r) {
                    None
                } else {
                    original.clone()
                };
            }
        }
    }

    fn run_mut(&mut self, inputs: &[Tensor<T>]) -> Result<Vec<Vec<Val<T>>>, Error> {
        self.check_model_inputs(inputs)?;
        let pos = self.node_positions();
        let mut vals: Vec<Vec<Val<T>>> = Vec::with_capacity(self.nodes.len());
        let mut finals: Vec<(usize, Vec<Tensor<T>>)> = Vec::new();
        let plan = self.mask_clearing();
        let mut originals = std::collections::HashMap::new();
        for (c, node) in self.nodes.iter().enumerate() {
            if let Some(p) = &plan {
                Self::clear_masks_before(p, c, node, &mut vals, &pos, &mut originals);
            }
            let mut keep = Vec::new();
            let mut out = self.eval_node(node, inputs, &vals, &pos, Some(&mut keep))?;
            self.recorded_output_mask(node, &vals, &pos, &mut out)?;
            if !keep.is_empty() {
                finals.push((node.layer, keep));
            }
            vals.push(out);
        }
        for (l, states) in finals {
            self.set_carried_states(l, states);
        }
        Ok(vals)
    }

    pub(crate) fn eval_node(
        &self,
        node: &Node,
        inputs: &[Tensor<T>],
        vals: &[Vec<Val<T>>],
        pos: &std::collections::HashMap<(usize, usize), usize>,
        keep_states: Option<&mut Vec<Tensor<T>>>,
    ) -> Result<Vec<Val<T>>, Error> {
        let ml = &self.layers[node.layer];
        let arg = |i: usize| -> Result<&Val<T>, Error> {
            match node.args.get(i) {
                Some(NodeArg::Tensor(r)) => lookup(vals, pos, *r),
                _ => Err(ConfigError::invalid(
                    format!("call of `{}`", ml.name),
                    format!("argument {i}"),
                    "a tensor",
                )
                .into()),
            }
        };
        let float_arg = |i: usize| -> Result<(&Tensor<T>, Option<&Mask>), Error> {
            match arg(i)? {
                Val::F(t, m) => Ok((t, m.as_ref())),
                Val::B(..) => Err(ConfigError::invalid(
                    format!("input of `{}`", ml.name),
                    "a boolean tensor",
                    "a float tensor",
                )
                .into()),
            }
        };
        // Keras fills `mask` from the input's mask only when the call has a single tensor
        // argument: a call with `initial_state` tensors ignores an upstream mask unless it was
        // passed explicitly.
        let implicit_mask_allowed = node.initial_state.is_empty() || node.states_keep_mask;
        let explicit_mask = |batch: usize, time: usize| -> Result<Option<Mask>, Error> {
            match node.mask {
                None => Ok(None),
                Some(r) => match lookup(vals, pos, r)? {
                    Val::B(shape, data) if shape.as_slice() == [batch, time] => {
                        Ok(Some(Mask::new(batch, time, data.clone())?))
                    }
                    Val::B(shape, _) => Err(ShapeError::mismatch(
                        format!("mask of `{}`", ml.name),
                        shape,
                        format!("({batch}, {time})"),
                    )
                    .into()),
                    Val::F(..) => Err(ConfigError::invalid(
                        format!("mask of `{}`", ml.name),
                        "a float tensor",
                        "a boolean mask",
                    )
                    .into()),
                },
            }
        };
        let states = || -> Result<Option<Vec<Tensor<T>>>, Error> {
            if node.initial_state.is_empty() {
                return Ok(None);
            }
            node.initial_state
                .iter()
                .map(|r| match lookup(vals, pos, *r)? {
                    Val::F(t, _) => Ok(t.clone()),
                    Val::B(..) => Err(ConfigError::invalid(
                        format!("initial_state of `{}`", ml.name),
                        "a boolean tensor",
                        "a float tensor",
                    )
                    .into()),
                })
                .collect::<Result<Vec<_>, Error>>()
                .map(Some)
        };
        let threads = self.threads;
        Ok(match &ml.layer {
            Layer::Input { .. } => {
                let k = self
                    .inputs
                    .iter()
                    .position(|r| r.layer == node.layer)
                    .ok_or_else(|| ConfigError::invalid("InputLayer", &ml.name, "a model input"))?;
                vec![Val::F(inputs[k].clone(), None)]
            }
            Layer::Masking { mask_value } => {
                let (x, _) = float_arg(0)?;
                let mask = Mask::from_values(x, T::of(*mask_value))?;
                let d = x.shape()[2];
                let mut y = x.clone();
                for (row, keep) in y.data_mut().chunks_exact_mut(d.max(1)).zip(&mask.data) {
                    if !keep {
                        row.fill(T::zero());
                    }
                }
                vec![Val::F(y, Some(mask))]
            }
            Layer::Rnn(rnn) => {
                let (x, m) = float_arg(0)?;
                let (b, t, _) = dims3(x, &format!("input of `{}`", ml.name))?;
                let mask =
                    explicit_mask(b, t)?.or_else(|| m.filter(|_| implicit_mask_allowed).cloned());
                let init = states()?;
                let (out, finals) =
                    rnn.call_with_final_states(x, init.as_deref(), mask.as_ref())?;
                if let Some(keep) = keep_states {
                    if rnn.is_stateful() {
                        *keep = finals;
                    }
                }
                let out_mask = if rnn.returns_sequences() { mask } else { None };
                let mut v = vec![Val::F(out.output, out_mask)];
                v.extend(out.states.into_iter().map(|s| Val::F(s, None)));
                v
            }
            Layer::Bidirectional(bi) => {
                let (x, m) = float_arg(0)?;
                let (b, t, _) = dims3(x, &format!("input of `{}`", ml.name))?;
                let mask =
                    explicit_mask(b, t)?.or_else(|| m.filter(|_| implicit_mask_allowed).cloned());
                let init = states()?;
                let (outs, finals) =
                    bi.call_with_final_states(x, init.as_deref(), mask.as_ref())?;
                if let Some(keep) = keep_states {
                    if bi.is_stateful() {
                        *keep = finals;
                    }
                }
                let n_out = if bi.merge_mode().is_some() { 1 } else { 2 };
                let out_mask = if bi.forward.returns_sequences() {
                    mask
                } else {
                    None
                };
                outs.into_iter()
                    .enumerate()
                    .map(|(i, o)| Val::F(o, if i < n_out { out_mask.clone() } else { None }))
                    .collect()
            }
            Layer::Dense(d) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(d.call(x, threads)?, m.cloned())]
            }
            Layer::Embedding(e) => {
                let (x, _) = float_arg(0)?;
                vec![Val::F(e.call(x)?, e.compute_mask(x)?)]
            }
            Layer::Dot(d) => {
                let (x, _) = float_arg(0)?;
                let (y, _) = float_arg(1)?;
                vec![Val::F(d.call(x, y)?, None)]
            }
            Layer::Merge(merge) => {
                let args = (0..node.args.len())
                    .map(float_arg)
                    .collect::<Result<Vec<_>, _>>()?;
                let xs: Vec<&Tensor<T>> = args.iter().map(|(x, _)| *x).collect();
                let masks: Vec<Option<&Mask>> = args.iter().map(|(_, m)| *m).collect();
                vec![Val::F(merge.call(&xs, &masks)?, merge.mask(&xs, &masks)?)]
            }
            Layer::Dropout { .. } | Layer::Noise(_) | Layer::ActivityRegularization(_) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(x.clone(), m.cloned())]
            }
            Layer::Normalization(n) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(n.call(x)?, m.cloned())]
            }
            Layer::Attention(a) => {
                let (q, qm) = float_arg(0)?;
                let (v, vm) = float_arg(1)?;
                let k = if node.args.len() > 2 {
                    Some(float_arg(2)?.0)
                } else {
                    None
                };
                let (out, w) = a.call(q, v, k, qm, vm, node.attention)?;
                let mut o = vec![Val::F(out, qm.cloned())];
                if node.attention.return_attention_scores {
                    o.push(Val::F(w, None));
                }
                o
            }
            Layer::MultiHeadAttention(a) => {
                let (q, qm) = float_arg(0)?;
                let (v, vm) = float_arg(1)?;
                let (k, km) = if node.args.len() > 2 {
                    let (k, km) = float_arg(2)?;
                    (Some(k), km)
                } else {
                    (None, None)
                };
                let (out, w) = a.call(q, v, k, [qm, vm, km], node.attention)?;
                let mut o = vec![Val::F(out, qm.cloned())];
                if node.attention.return_attention_scores {
                    o.push(Val::F(w, None));
                }
                o
            }
            Layer::Permute(p) => vec![Val::F(p.call(float_arg(0)?.0)?, None)],
            Layer::Pooling(p) => vec![Val::F(p.call(float_arg(0)?.0)?, None)],
            Layer::Reshape(r) => vec![Val::F(r.call(float_arg(0)?.0)?, None)],
            Layer::Activation(a) => {
                let (x, m) = float_arg(0)?;
                let mut y = x.clone();
                let last = y.shape().last().copied().unwrap_or(1).max(1);
                for row in y.data_mut().chunks_exact_mut(last) {
                    a.apply_row(row);
                }
                vec![Val::F(y, m.cloned())]
            }
            Layer::Pointwise(p) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(p.call_masked(x, m)?, m.cloned())]
            }
            Layer::PRelu(p) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(p.call(x)?, m.cloned())]
            }
            Layer::RmsNorm(n) => vec![Val::F(n.call(float_arg(0)?.0)?, None)],
            Layer::LayerNorm(n) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(n.call(x)?, m.cloned())]
            }
            Layer::Conv1D(c) => vec![Val::F(c.call(float_arg(0)?.0, threads)?, None)],
            Layer::BatchNorm(n) => {
                let (x, m) = float_arg(0)?;
                vec![Val::F(n.call(x)?, m.cloned())]
            }
            Layer::GlobalPooling(p) => {
                let (x, m) = float_arg(0)?;
                let mask = call_mask(node, vals, pos, m.cloned(), &ml.name)?;
                vec![Val::F(p.call(x, mask.as_ref())?, None)]
            }
            Layer::Flatten(f) => vec![Val::F(f.call(float_arg(0)?.0)?, None)],
            Layer::RepeatVector(r) => vec![Val::F(r.call(float_arg(0)?.0)?, None)],
            Layer::Steps(l) => vec![Val::F(l.call(float_arg(0)?.0)?, None)],
            Layer::MaskOp(op) => {
                let flags = (0..node.args.len())
                    .map(|i| {
                        Ok(match arg(i)? {
                            Val::B(s, d) => (s.clone(), d.clone()),
                            // `zeros_like` / `ones_like` of a float tensor read its shape only.
                            Val::F(t, _) => (t.shape().to_vec(), Vec::new()),
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                if !matches!(op, MaskOp::ZerosLike | MaskOp::OnesLike)
                    && flags
                        .iter()
                        .any(|(s, d)| d.len() != s.iter().product::<usize>())
                {
                    return Err(ConfigError::invalid(
                        format!("input of `{}`", ml.name),
                        "a float tensor",
                        "a boolean mask",
                    )
                    .into());
                }
                let (shape, data) = op.apply(&flags)?;
                vec![Val::B(shape, data)]
            }
            Layer::NotEqual { value } => {
                let (x, _) = float_arg(0)?;
                let v = T::of(*value);
                vec![Val::B(
                    x.shape().to_vec(),
                    x.data().iter().map(|e| *e != v).collect(),
                )]
            }
            Layer::Any { axis } => {
                let (shape, data) = match arg(0)? {
                    Val::B(s, d) => (s.clone(), d.clone()),
                    Val::F(t, _) => (
                        t.shape().to_vec(),
                        t.data().iter().map(|e| *e != T::zero()).collect(),
                    ),
                };
                let r = shape.len() as isize;
                let ax = if *axis < 0 { r + axis } else { *axis };
                if ax != r - 1 || r == 0 {
                    return Err(ConfigError::unsupported(
                        "Any axis",
                        format!("{axis} on a rank-{r} tensor (only the last axis)"),
                    )
                    .into());
                }
                let last = shape[shape.len() - 1].max(1);
                let out: Vec<bool> = data
                    .chunks_exact(last)
                    .map(|c| c.iter().any(|b| *b))
                    .collect();
                vec![Val::B(shape[..shape.len() - 1].to_vec(), out)]
            }
        })
    }

    /// Output shapes of every call, inferred symbolically (`None` = not fixed).
    pub fn output_shapes(&self) -> Result<Vec<Vec<Vec<Option<usize>>>>, Error> {
        let pos = self.node_positions();
        let mut shapes: Vec<Vec<Vec<Option<usize>>>> = Vec::new();
        for node in &self.nodes {
            let ml = &self.layers[node.layer];
            let input = match node.args.first() {
                Some(NodeArg::Tensor(r)) => {
                    let p = pos.get(&(r.layer, r.node)).copied().unwrap_or(0);
                    shapes
                        .get(p)
                        .and_then(|s| s.get(r.index))
                        .cloned()
                        .unwrap_or_default()
                }
                _ => vec![],
            };
            let batch = input.first().copied().flatten();
            let time = input.get(1).copied().flatten();
            // Every tensor argument's shape (merges and mask ops take several).
            let arg_shapes = || -> Vec<Vec<Option<usize>>> {
                node.args
                    .iter()
                    .filter_map(|a| match a {
                        NodeArg::Tensor(r) => Some(
                            pos.get(&(r.layer, r.node))
                                .and_then(|&p| shapes.get(p))
                                .and_then(|s| s.get(r.index))
                                .cloned()
                                .unwrap_or_default(),
                        ),
                        NodeArg::Scalar(_) => None,
                    })
                    .collect()
            };
            let out = match &ml.layer {
                Layer::Input { batch_shape } => vec![batch_shape.clone()],
                Layer::Masking { .. }
                | Layer::Dropout { .. }
                | Layer::Activation(_)
                | Layer::Pointwise(_)
                | Layer::PRelu(_)
                | Layer::RmsNorm(_)
                | Layer::LayerNorm(_)
                | Layer::Noise(_)
                | Layer::ActivityRegularization(_)
                | Layer::BatchNorm(_)
                | Layer::Normalization(_)
                | Layer::NotEqual { .. } => vec![input],
                Layer::Permute(p) => vec![p.output_shape(&input)],
                Layer::Pooling(p) => vec![p.output_shape(&input)],
                Layer::Attention(_) | Layer::MultiHeadAttention(_) => {
                    let args = arg_shapes();
                    let value = args.get(1).cloned().unwrap_or_default();
                    let [out, scores] = if let Layer::Attention(a) = &ml.layer {
                        a.output_shapes(&input, &value)
                    } else if let Layer::MultiHeadAttention(a) = &ml.layer {
                        a.output_shapes(&input, &value)
                    } else {
                        [Vec::new(), Vec::new()]
                    };
                    if node.attention.return_attention_scores {
                        vec![out, scores]
                    } else {
                        vec![out]
                    }
                }
                Layer::Reshape(r) => vec![r.output_shape(&input)],
                Layer::Any { .. } => vec![input[..input.len().saturating_sub(1)].to_vec()],
                Layer::GlobalPooling(p) => vec![p.output_shape(&input)],
                Layer::Flatten(f) => vec![f.output_shape(&input)],
                Layer::RepeatVector(r) => vec![r.output_shape(&input)],
                Layer::Steps(l) => vec![l.output_shape(&input)],
                Layer::Conv1D(c) => vec![c.config().output_shape(&input)],
                Layer::MaskOp(op) => vec![op.output_shape(&arg_shapes())],
                Layer::Dense(d) => {
                    let mut s = input;
                    if let Some(l) = s.last_mut() {
                        *l = Some(d.config().units);
                    }
                    vec![s]
                }
                Layer::Embedding(e) => {
                    let mut s = input;
                    s.push(Some(e.config().output_dim));
                    vec![s]
                }
                Layer::Merge(Merge {
                    op: MergeOp::Concatenate { axis },
                    ..
                }) => vec![concat_symbolic(&arg_shapes(), *axis)],
                Layer::Merge(_) => vec![input],
                Layer::Dot(d) => {
                    let args = arg_shapes();
                    let y = args.get(1).cloned().unwrap_or_default();
                    vec![d.output_shape(&input, &y)]
                }
                Layer::Rnn(r) => {
                    let mut v = vec![if r.returns_sequences() {
                        vec![batch, time, Some(r.units())]
                    } else {
                        vec![batch, Some(r.units())]
                    }];
                    if r.returns_state() {
                        v.extend(r.cells().iter().map(|c| vec![batch, Some(c.units())]));
                    }
                    v
                }
                Layer::Bidirectional(b) => {
                    let seq = b.forward.returns_sequences();
                    let shape = |u: usize| {
                        if seq {
                            vec![batch, time, Some(u)]
                        } else {
                            vec![batch, Some(u)]
                        }
                    };
                    let mut v = match b.merge_mode() {
                        Some(_) => vec![shape(b.units())],
                        None => vec![shape(b.forward.units()), shape(b.backward.units())],
                    };
                    if b.forward.returns_state() {
                        v.extend(
                            b.forward
                                .cells()
                                .iter()
                                .chain(b.backward.cells())
                                .map(|c| vec![batch, Some(c.units())]),
                        );
                    }
                    v
                }
            };
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// A text summary like Keras' `model.summary()`: layers, output shapes, parameter counts.
    pub fn summary(&self) -> String {
        let shapes = self.output_shapes().unwrap_or_default();
        let fmt_shape = |s: &Vec<Option<usize>>| {
            let parts: Vec<String> = s
                .iter()
                .map(|d| d.map_or("None".into(), |d| d.to_string()))
                .collect();
            if parts.len() == 1 {
                format!("({},)", parts[0])
            } else {
                format!("({})", parts.join(", "))
            }
        };
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let ml = &self.layers[node.layer];
            if ml.is_op()
                || (self.kind == ModelKind::Sequential && matches!(ml.layer, Layer::Input { .. }))
            {
                continue;
            }
            let out = shapes
                .get(i)
                .map(|v| v.iter().map(fmt_shape).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let out = if shapes.get(i).is_some_and(|v| v.len() > 1) {
                format!("[{out}]")
            } else {
                out
            };
            let params = if node.call == 0 { ml.param_count() } else { 0 };
            rows.push((
                format!("{} ({})", ml.name, ml.class_name),
                out,
                group_digits(params),
            ));
        }
        let w0 = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .max(14)
            + 2;
        let w1 = rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(0)
            .max(12)
            + 2;
        let w2 = 14;
        let line = |l: char, m: char, r: char, f: char| {
            format!(
                "{l}{}{m}{}{m}{}{r}\n",
                f.to_string().repeat(w0 + 2),
                f.to_string().repeat(w1 + 2),
                f.to_string().repeat(w2 + 2)
            )
        };
        let mut s = format!("Model: \"{}\"\n", self.name);
        s += &line('┏', '┳', '┓', '━');
        s += &format!(
            "┃ {:<w0$} ┃ {:<w1$} ┃ {:>w2$} ┃\n",
            "Layer (type)", "Output Shape", "Param #"
        );
        s += &line('┡', '╇', '┩', '━');
        for (k, (a, b, c)) in rows.iter().enumerate() {
            s += &format!("│ {a:<w0$} │ {b:<w1$} │ {c:>w2$} │\n");
            if k + 1 < rows.len() {
                s += &line('├', '┼', '┤', '─');
            }
        }
        s += &line('└', '┴', '┘', '─');
        let total = self.param_count();
        let trainable: usize = self
            .layers
            .iter()
            .map(ModelLayer::trainable_param_count)
            .sum();
        // Each `Normalization` count is an int64 (8 bytes), the other parameters are `T`s.
        let ints = self
            .layers
            .iter()
            .filter(|l| matches!(&l.layer, Layer::Normalization(n) if n.count().is_some()))
            .count();
        let bytes =
            |n: usize, ints: usize| human_bytes((n - ints) * std::mem::size_of::<T>() + ints * 8);
        s += &format!(
            " Total params: {} ({})\n",
            group_digits(total),
            bytes(total, ints)
        );
        s += &format!(
            " Trainable params: {} ({})\n",
            group_digits(trainable),
            bytes(trainable, 0)
        );
        s += &format!(
            " Non-trainable params: {} ({})\n",
            group_digits(total - trainable),
            bytes(total - trainable, ints)
        );
        s
    }
}

pub(crate) fn lookup<'a, T>(
    vals: &'a [Vec<Val<T>>],
    pos: &std::collections::HashMap<(usize, usize), usize>,
    r: TensorRef,
) -> Result<&'a Val<T>, Error> {
    pos.get(&(r.layer, r.node))
        .and_then(|&p| vals.get(p))
        .and_then(|v| v.get(r.index))
        .ok_or_else(|| {
            ConfigError::invalid(
                "tensor reference",
                format!("layer #{} call {} output {}", r.layer, r.node, r.index),
                "an output computed earlier",
            )
            .into()
        })
}

/// The Keras class name a layer is written back as.
pub fn default_class_name<T: Float>(l: &Layer<T>) -> &'static str {
    match l {
        Layer::Input { .. } => "InputLayer",
        Layer::Masking { .. } => "Masking",
        Layer::Rnn(r) => match r.kind() {
            crate::layers::rnn::RnnKind::Gru => "GRU",
            _ => "RNN",
        },
        Layer::Bidirectional(_) => "Bidirectional",
        Layer::Dense(_) => "Dense",
        Layer::Embedding(_) => "Embedding",
        Layer::Merge(m) => m.op.class_name(),
        Layer::Dot(_) => "Dot",
        Layer::Dropout { .. } => "Dropout",
        Layer::Activation(_) => "Activation",
        Layer::Pointwise(p) => p.class_name(),
        Layer::PRelu(_) => "PReLU",
        Layer::RmsNorm(_) => "RMSNormalization",
        Layer::LayerNorm(_) => "LayerNormalization",
        Layer::Conv1D(_) => "Conv1D",
        Layer::BatchNorm(_) => "BatchNormalization",
        Layer::Normalization(_) => "Normalization",
        Layer::Pooling(p) => p.class_name(),
        Layer::Attention(a) => a.class_name(),
        Layer::MultiHeadAttention(_) => "MultiHeadAttention",
        Layer::Noise(n) => n.class_name(),
        Layer::ActivityRegularization(_) => "ActivityRegularization",
        Layer::Permute(_) => "Permute",
        Layer::Reshape(_) => "Reshape",
        Layer::GlobalPooling(p) => p.class_name(),
        Layer::Flatten(_) => "Flatten",
        Layer::RepeatVector(_) => "RepeatVector",
        Layer::Steps(l) => l.class_name(),
        Layer::NotEqual { .. } => "NotEqual",
        Layer::Any { .. } => "Any",
        Layer::MaskOp(op) => op.class_name(),
    }
}

/// The mask a call of `layer` takes: its explicit `mask` argument as it is (any `(batch, time)`
/// shape; the layer checks it against its input), else `implicit`, its input's.
pub(crate) fn call_mask<T: Float>(
    node: &Node,
    vals: &[Vec<Val<T>>],
    pos: &std::collections::HashMap<(usize, usize), usize>,
    implicit: Option<Mask>,
    layer: &str,
) -> Result<Option<Mask>, Error> {
    let Some(r) = node.mask else {
        return Ok(implicit);
    };
    match lookup(vals, pos, r)? {
        Val::B(shape, data) if shape.len() == 2 => {
            Ok(Some(Mask::new(shape[0], shape[1], data.clone())?))
        }
        Val::B(shape, _) => Err(ShapeError::mismatch(
            format!("mask of `{layer}`"),
            shape,
            "(batch, time) booleans",
        )
        .into()),
        Val::F(..) => Err(ConfigError::invalid(
            format!("mask of `{layer}`"),
            "a float tensor",
            "a boolean mask",
        )
        .into()),
    }
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b < 1024.0 {
        format!("{b:.2} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2} KB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} MB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GB", b / 1024.0 / 1024.0 / 1024.0)
    }
}
