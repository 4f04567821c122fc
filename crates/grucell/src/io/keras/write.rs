//! Saving a [`Model`] as Keras 3 writes it: a `.keras` archive (config.json, metadata.json,
//! model.weights.h5) that `keras.saving.load_model` loads and predicts with identically, and
//! the same weights as a safetensors file.
//!
//! This is the inverse of [`super::load`]: the weight paths follow the same object-path rules
//! (`layers/<snake_case(class)>[_n]`, then `cell`, `cells/gru_cell[_n]`, `forward_layer`,
//! `backward_layer`; Sequential's list leaves the InputLayer out, Functional's includes it and
//! leaves the mask ops out), and config.json is what Keras 3.15.1 writes for the same model
//! (module, class_name, config, registered_name, build_config; Functional entries add name and
//! inbound_nodes in the Keras 3 `{"args": [...], "kwargs": {...}}` form). Checked against every
//! fixture of tests/fixtures/models: same config (apart from Keras' `shared_object_id` keys and
//! the few choices listed below) and same weight paths.
//!
//! Choices where the model does not record what Keras had:
//! - the dtype is the model's float type: `Model<f32>` is written with `float32` policies and
//!   float32 weights, `Model<f64>` with `float64` policies and float64 weights (as Keras saves a
//!   model built with `dtype="float64"`). The Sequential's own policy stays `float32`, as Keras
//!   writes it. `StackedRNNCells` gets the model's dtype, where Keras writes `float32`: Keras
//!   3.15.1 cannot call its own file of a float64 `RNN([cells])` (TypeError: a float32 loop
//!   variable becomes float64), and loads and runs ours;
//! - a single initial state is written as a bare tensor (`initial_state=h`), several as a list;
//!   Bidirectional always gets a list;
//! - `StackedRNNCells` are named `stacked_rnn_cells`, `stacked_rnn_cells_1`, … in model order;
//! - an uncompiled model gets `"compile_config": {}`, which is what Keras writes for one
//!   (`Trainer.get_compile_config` returns `{}` when not compiled); the model's own
//!   `compile_config` is written back unchanged otherwise, except that a legacy `.h5`
//!   `training_config` is converted to Keras 3's form and AUC metrics' `label_weights` are
//!   written as a plain list (Keras' own serialized tensor there is one its loader refuses).
//!   Optimizer state is written by [`save_model_with_optimizer`] (not by [`save_model`]).
//!
//! ```
//! use grucell::io::keras::write::{model_config_json, save_model};
//! use grucell::layers::model::{Layer, Model};
//! use grucell::{GruCellConfig, Rnn, Tensor};
//! let gru = Rnn::<f32>::new(GruCellConfig::new(4).seed(Some(1)), 3)?
//!     .with_kind(grucell::RnnKind::Gru)?
//!     .name("gru");
//! let model = Model::sequential("m", vec![Some(5), Some(3)], vec![("gru".into(), Layer::Rnn(gru))])?;
//! let config = model_config_json(&model)?;
//! assert_eq!(config["class_name"], "Sequential");
//! assert_eq!(config["config"]["layers"][1]["class_name"], "GRU");
//! let path = std::env::temp_dir().join(format!("grucell_doc_write_{}.keras", std::process::id()));
//! save_model(&model, &path)?;
//! let back = grucell::io::keras::load::load_model::<f32>(&path)?;
//! let x = Tensor::new(vec![2, 5, 3], vec![0.25; 30])?;
//! assert_eq!(back.predict(&[x.clone()])?, model.predict(&[x])?);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), grucell::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hdf5_writer::{AttributeBuilder, DatasetBuilder, Hdf5Builder, WriteOptions};
use serde_json::{json, Map, Value};

use super::save::{
    write_keras_archive, write_weights_h5_with_ints, IntWeightEntry, VarsGroup, WeightEntry,
    KERAS_VERSION, WEIGHTS_ENTRY,
};
use super::Namer;
use crate::error::{ConfigError, Error, FormatError, ShapeError};
use crate::float::Float;
use crate::layers::bidirectional::Bidirectional;
use crate::layers::gru_cell::{dtype_policy, GruCell};
use crate::layers::mask_ops::MaskOp;
use crate::layers::merge::{Merge, MergeOp};
use crate::layers::model::{
    default_class_name, Layer, Model, ModelKind, ModelLayer, Node, NodeArg, TensorRef, Wrapped,
};
use crate::layers::noise::Noise;
use crate::layers::pointwise::Pointwise;
use crate::layers::pooling::PoolOp;
use crate::layers::regularizer::Regularizer;
use crate::layers::rnn::{Rnn, RnnKind};
use crate::tensor::Tensor;
use crate::train::loss::Loss;
use crate::train::optimizer::Optimizer;

/// A shape as Keras writes it: `null` for an unknown dimension.
type Shape = Vec<Option<usize>>;

/// Writes `model` as a Keras 3 `.keras` archive (config.json with the model's compile_config if
/// any, metadata.json, model.weights.h5), atomically: on error the file at `path`, if any, is
/// left as it was.
///
/// Weights are float32 for `Model<f32>` and float64 (with `float64` dtype policies) for
/// `Model<f64>`. Stateful layers' carried states are not saved (Keras does not save them either).
///
/// ```no_run
/// let model = grucell::io::keras::load::load_model::<f32>("in.keras".as_ref())?;
/// grucell::io::keras::write::save_model(&model, "out.keras".as_ref())?;
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn save_model<T: Float>(model: &Model<T>, path: &Path) -> Result<(), Error> {
    let plan = Plan::new(model)?;
    let h5 = plan.weights_h5(None)?;
    write_keras_archive(path, &plan.config, &h5)?;
    Ok(())
}

/// Saves the model as [`save_model`] does, with the state of the optimizer that trained it, as
/// Keras saves a compiled model after `fit`: `optimizer/vars` holds the iteration count (int64),
/// the learning rate and the slots (Adam's momentums and velocities, …) in Keras' order, so
/// that `keras.saving.load_model` restores them and a further `model.fit` in Keras continues
/// with the steps grucell would take (and the reverse: `grucell fit` restores a Keras file's
/// state, see [`KerasFile::optimizer_variables`](super::KerasFile::optimizer_variables)).
///
/// `optimizer` must be the one made for [`Model::trainable_variables`] (as [`Model::fit`] takes
/// it); an optimizer for other variables is refused with a shape error. Keras names the group
/// after its optimizer object (`adam`, `adam_1`, …); grucell writes the default name, which
/// Keras does not check when loading.
///
/// ```
/// use grucell::io::keras::write::save_model_with_optimizer;
/// use grucell::layers::model::{Layer, Model};
/// use grucell::train::optimizer::{Optimizer, OptimizerConfig};
/// use grucell::{GruCellConfig, Rnn};
/// let gru = Rnn::<f32>::new(GruCellConfig::new(2).seed(Some(3)), 3)?;
/// let model = Model::sequential("m", vec![None, Some(3)], vec![("rnn".into(), Layer::Rnn(gru))])?;
/// let sizes: Vec<usize> = model.trainable_variables().iter().map(|(_, s)| s.iter().product()).collect();
/// let opt = Optimizer::<f32>::new(OptimizerConfig::adam(0.01), &sizes)?;
/// let path = std::env::temp_dir().join(format!("grucell_doc_opt_{}.keras", std::process::id()));
/// save_model_with_optimizer(&model, &opt, &path)?;
/// let file = grucell::io::keras::load_keras_file(&path)?;
/// // iteration, learning rate, then a momentum and a velocity per variable (3 of them)
/// assert_eq!(file.optimizer_variables().len(), 2 + 2 * 3);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn save_model_with_optimizer<T: Float>(
    model: &Model<T>,
    optimizer: &Optimizer<T>,
    path: &Path,
) -> Result<(), Error> {
    let plan = Plan::new(model)?;
    let state = OptimizerVars::new(model, optimizer)?;
    let h5 = plan.weights_h5(Some(&state))?;
    write_keras_archive(path, &plan.config, &h5)?;
    Ok(())
}

/// An optimizer's variables as `optimizer/vars` stores them: dataset 0 the iteration count
/// (int64), then the learning rate (a constant one) and the slots, each with its shape.
struct OptimizerVars<T> {
    name: &'static str,
    iterations: i64,
    values: Vec<Tensor<T>>,
}

impl<T: Float> OptimizerVars<T> {
    fn new(model: &Model<T>, optimizer: &Optimizer<T>) -> Result<Self, Error> {
        let shapes: Vec<Vec<usize>> = model
            .trainable_variables()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        // A learning-rate schedule has no variable (Keras keeps only a constant rate in one).
        let mut values = Vec::new();
        if optimizer.config().learning_rate.constant().is_some() {
            values.push(Tensor::new(vec![], vec![optimizer.learning_rate()])?);
        }
        for (slot, v, data) in optimizer.keras_slots() {
            // An optimizer's own scalar (Nadam's product of momentum factors).
            let Some(v) = v else {
                values.push(Tensor::new(vec![], data.to_vec())?);
                continue;
            };
            let misfit = || {
                ShapeError::mismatch(
                    format!("optimizer slot `{slot}` of variable {v}"),
                    &[data.len()],
                    format!(
                        "the size of the model's trainable variable {v} (the optimizer must be made for Model::trainable_variables, {} variables)",
                        shapes.len()
                    ),
                )
            };
            let shape = shapes.get(v).ok_or_else(misfit)?;
            values.push(Tensor::new(shape.clone(), data.to_vec()).map_err(|_| misfit())?);
        }
        let iterations =
            i64::try_from(optimizer.iterations()).map_err(|_| ShapeError::OutOfRange {
                arg: "optimizer iterations".into(),
                value: optimizer.iterations() as f64,
                expected: format!("at most {} (Keras stores an int64)", i64::MAX),
            })?;
        Ok(OptimizerVars {
            name: optimizer.config().kind.keras_name(),
            iterations,
            values,
        })
    }
}

/// The config.json value Keras would write for this model (top level
/// `{"module", "class_name", "config", "registered_name", "build_config", "compile_config"}`).
///
/// Fails when a Sequential model's graph is not a chain (each layer called once on the previous
/// layer's first output), or when the graph refers to a call that does not exist.
pub fn model_config_json<T: Float>(model: &Model<T>) -> Result<Value, Error> {
    Ok(Plan::new(model)?.config)
}

/// Saves the model's weights as a safetensors file: tensor names are the `.keras` dataset
/// paths (`"layers/gru/cell/vars/0"`); `__metadata__` holds `keras_config`
/// (the config.json text of [`model_config_json`]), `keras_version`, `dtype` (the model's) and
/// `format` = `"keras"`. Atomic like [`save_model`].
///
/// safetensors tensors are written as F32 (the writer, [`crate::io::safetensors::save_safetensors`],
/// is float32-only): the weights of a `Model<f64>` are rounded to float32 here.
///
/// ```
/// use grucell::io::keras::write::save_safetensors_model;
/// use grucell::layers::model::{Layer, Model};
/// use grucell::{GruCellConfig, Rnn};
/// let gru = Rnn::<f32>::new(GruCellConfig::new(2).seed(Some(3)), 3)?;
/// let model = Model::sequential("m", vec![None, Some(3)], vec![("rnn".into(), Layer::Rnn(gru))])?;
/// let path = std::env::temp_dir().join(format!("grucell_doc_st_{}.safetensors", std::process::id()));
/// save_safetensors_model(&model, &path)?;
/// let (tensors, meta) = grucell::io::safetensors::load_safetensors_with_metadata(&path)?;
/// assert_eq!(tensors[0].0, "layers/rnn/cell/vars/0");
/// assert_eq!(tensors[0].1.shape(), &[3, 6]);
/// assert!(meta.unwrap()["keras_config"].contains("\"GRUCell\""));
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn save_safetensors_model<T: Float>(model: &Model<T>, path: &Path) -> Result<(), Error> {
    let plan = Plan::new(model)?;
    let owned: Vec<(String, Tensor<f32>)> = plan
        .weights
        .iter()
        .map(|w| (format!("{}/{}", w.group, w.index), w.tensor.cast::<f32>()))
        // Int64 scalars (a Normalization's count) as float32 too, exact below 2^24.
        .chain(plan.ints.iter().map(|v| {
            let mut t = Tensor::zeros(vec![]);
            if let Some(c) = t.data_mut().first_mut() {
                *c = v.value as f32;
            }
            (format!("{}/{}", v.group, v.index), t)
        }))
        .collect();
    let tensors: Vec<(String, Vec<usize>, &[f32])> = owned
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec(), t.data()))
        .collect();
    let shown = path.display().to_string();
    let config = serde_json::to_string(&plan.config)
        .map_err(|e| FormatError::malformed(&shown, "keras_config", e.to_string()))?;
    let metadata = HashMap::from([
        ("format".to_string(), "keras".to_string()),
        ("keras_config".to_string(), config),
        ("keras_version".to_string(), KERAS_VERSION.to_string()),
        ("dtype".to_string(), T::DTYPE.to_string()),
    ]);
    crate::io::safetensors::save_safetensors(path, &tensors, Some(metadata))?;
    Ok(())
}

/// One variable: its `vars` group, its index there, its value.
struct Var<'a, T> {
    group: String,
    index: usize,
    tensor: &'a Tensor<T>,
}

/// One int64 scalar variable (a `Normalization`'s `count`): its `vars` group, index, value.
struct IntVar {
    group: String,
    index: usize,
    value: i64,
}

/// Everything a save needs: the config, the `vars` groups and the variables, in Keras' order.
struct Plan<'a, T> {
    config: Value,
    groups: Vec<VarsGroup>,
    weights: Vec<Var<'a, T>>,
    ints: Vec<IntVar>,
}

impl<'a, T: Float> Plan<'a, T> {
    fn new(model: &'a Model<T>) -> Result<Self, Error> {
        if let Some(l) = model.layers.iter().find(|l| {
            l.activations()
                .contains(&crate::Activation::HardSigmoidKeras2)
        }) {
            return Err(ConfigError::unsupported(
                "activation",
                format!(
                    "TF-Keras 2's `hard_sigmoid` (0.2x + 0.5) in layer `{}`: Keras 3 has no such \
                     activation (its `hard_sigmoid` is x/6 + 0.5), so no Keras 3 file can hold \
                     this model",
                    l.name
                ),
            )
            .into());
        }
        // A TF-Keras 2 call that keeps its input's mask alongside initial states cannot be
        // written as a Keras 3 call (Keras 3 drops the mask there), when a mask can exist.
        let masking = model.layers.iter().any(|l| match &l.layer {
            Layer::Masking { .. } => true,
            Layer::Embedding(e) => e.config().mask_zero,
            _ => false,
        });
        if let Some(l) = model
            .layers
            .iter()
            .find(|l| matches!(l.layer, Layer::Merge(m) if m.keras2_masks) && masking)
        {
            return Err(ConfigError::unsupported(
                "merge",
                format!(
                    "`{}` merges masks as TF-Keras 2 does (a step is kept if every masked input \
                     keeps it); Keras 3 merges them otherwise, so no Keras 3 file computes the same",
                    l.name
                ),
            )
            .into());
        }
        if let Some(l) = model.layers.iter().find(|l| l.drops_mask && masking) {
            return Err(ConfigError::unsupported(
                "layer",
                format!(
                    "`{}` drops its input's mask as TF-Keras 2's {} does; Keras 3's passes it on, \
                     so no Keras 3 file computes the same",
                    l.name, l.class_name
                ),
            )
            .into());
        }
        if let Some(n) = model.nodes.iter().find(|n| n.states_keep_mask && masking) {
            let name = model.layers.get(n.layer).map_or("?", |l| l.name.as_str());
            return Err(ConfigError::unsupported(
                "call",
                format!(
                    "`{name}` takes initial states and a mask together as TF-Keras 2 does; \
                     Keras 3 ignores the mask of such a call, so no Keras 3 file computes the same"
                ),
            )
            .into());
        }
        let mut w = Writer {
            model,
            dtype: keras_dtype::<T>(),
            shapes: node_shapes(model)?,
            groups: Vec::new(),
            weights: Vec::new(),
            ints: Vec::new(),
            attention_sublayers: 0,
            stacked: 0,
        };
        w.groups.push(VarsGroup::new("vars", &model.name));
        let config = match model.kind {
            ModelKind::Sequential => w.sequential()?,
            ModelKind::Functional => w.functional()?,
        };
        Ok(Plan {
            config,
            groups: w.groups,
            weights: w.weights,
            ints: w.ints,
        })
    }

    /// The bytes of model.weights.h5, with the optimizer's variables when given.
    fn weights_h5(&self, optimizer: Option<&OptimizerVars<T>>) -> Result<Vec<u8>, FormatError> {
        const OPT_GROUP: &str = "optimizer/vars";
        let mut groups = self.groups.clone();
        let mut vars: Vec<(String, usize, &Tensor<T>)> = self
            .weights
            .iter()
            .map(|w| (w.group.clone(), w.index, w.tensor))
            .collect();
        let iterations: Vec<i64> = optimizer.map(|o| vec![o.iterations]).unwrap_or_default();
        let values: Vec<[i64; 1]> = self.ints.iter().map(|v| [v.value]).collect();
        let mut ints: Vec<IntWeightEntry> = self
            .ints
            .iter()
            .zip(&values)
            .map(|(v, data)| IntWeightEntry {
                group: v.group.clone(),
                index: v.index,
                shape: vec![],
                data,
            })
            .collect();
        if let Some(o) = optimizer {
            groups.push(VarsGroup::new(OPT_GROUP, o.name));
            ints.push(IntWeightEntry {
                group: OPT_GROUP.into(),
                index: 0,
                shape: vec![],
                data: &iterations,
            });
            for (i, t) in o.values.iter().enumerate() {
                vars.push((OPT_GROUP.into(), i + 1, t));
            }
        }
        if T::DTYPE == "float64" {
            let data: Vec<Tensor<f64>> = vars.iter().map(|v| v.2.cast::<f64>()).collect();
            let entries: Vec<(String, &Tensor<f64>)> = vars
                .iter()
                .zip(&data)
                .map(|(v, t)| (format!("{}/{}", v.0, v.1), t))
                .collect();
            return weights_h5_f64(&groups, &entries, &ints);
        }
        let data: Vec<Tensor<f32>> = vars.iter().map(|v| v.2.cast::<f32>()).collect();
        let entries: Vec<WeightEntry> = vars
            .iter()
            .zip(&data)
            .map(|(v, t)| WeightEntry {
                group: v.0.clone(),
                index: v.1,
                shape: t.shape().to_vec(),
                data: t.data(),
            })
            .collect();
        write_weights_h5_with_ints(&groups, &entries, &ints)
    }
}

/// The Keras dtype name a model computing in `T` is saved with.
/// The `trainable` flag written for a layer made only of cells (a `Bidirectional`'s two layers,
/// a `StackedRNNCells`): whether all its cells are trainable. Keras sets those flags either
/// together with the cells' (`layer.trainable = b` reaches every sublayer) or leaves them at
/// their default while a wrapper's constructor flag stops above them; training reads only the
/// cells' flags.
fn cells_trainable<T: Float>(r: &Rnn<T>) -> bool {
    r.cells().iter().all(|c| c.config().trainable)
}

/// The Keras class a layer is saved as: its wrapper's, if it has one.
fn saved_class<T: Float>(ml: &ModelLayer<T>) -> &'static str {
    if ml.time_distributed.is_some() {
        "TimeDistributed"
    } else {
        default_class_name(&ml.layer)
    }
}

fn keras_dtype<T: Float>() -> &'static str {
    if T::DTYPE == "float64" {
        "float64"
    } else {
        "float32"
    }
}

/// Output shapes of every call, by `(layer, call)`.
fn node_shapes<T: Float>(model: &Model<T>) -> Result<HashMap<(usize, usize), Vec<Shape>>, Error> {
    let shapes = model.output_shapes()?;
    Ok(model
        .nodes
        .iter()
        .zip(shapes)
        .map(|(n, s)| ((n.layer, n.call), s))
        .collect())
}

struct Writer<'a, T> {
    model: &'a Model<T>,
    dtype: &'static str,
    shapes: HashMap<(usize, usize), Vec<Shape>>,
    groups: Vec<VarsGroup>,
    weights: Vec<Var<'a, T>>,
    ints: Vec<IntVar>,
    /// MultiHeadAttention layers written so far (for their sublayers' names).
    attention_sublayers: usize,
    /// StackedRNNCells written so far (for their names).
    stacked: usize,
}

/// What a layer's first call was given, for its build_config.
struct CallShapes {
    /// Shape of the first positional argument.
    input: Shape,
    /// Shapes of every positional tensor argument (a merge layer's list).
    args: Vec<Shape>,
    /// Shapes of the `initial_state` tensors.
    states: Vec<Shape>,
}

fn shape_json(s: &[Option<usize>]) -> Value {
    Value::Array(
        s.iter()
            .map(|d| d.map_or(Value::Null, |d| json!(d)))
            .collect(),
    )
}

/// `{"module", "class_name", "config", "registered_name"}`.
fn object(
    module: &str,
    class: &str,
    config: Map<String, Value>,
    registered: Value,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("module".into(), json!(module));
    m.insert("class_name".into(), json!(class));
    m.insert("config".into(), Value::Object(config));
    m.insert("registered_name".into(), registered);
    m
}

fn input_shape_build(s: &[Option<usize>]) -> Value {
    json!({ "input_shape": shape_json(s) })
}

/// `name`, `trainable`, `dtype`: the keys every layer config starts with.
fn base_config(name: &str, trainable: bool, dtype: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("trainable".into(), json!(trainable));
    m.insert("dtype".into(), dtype_policy(dtype));
    m
}

fn bad_graph(what: String) -> Error {
    ConfigError::invalid(
        "model graph",
        what,
        "references to calls present in the model",
    )
    .into()
}

impl<'a, T: Float> Writer<'a, T> {
    fn layer(&self, i: usize) -> Result<&'a ModelLayer<T>, Error> {
        self.model
            .layers
            .get(i)
            .ok_or_else(|| bad_graph(format!("layer #{i}")))
    }

    fn shape_of(&self, r: TensorRef) -> Result<Shape, Error> {
        self.shapes
            .get(&(r.layer, r.node))
            .and_then(|v| v.get(r.index))
            .cloned()
            .ok_or_else(|| {
                bad_graph(format!(
                    "output {} of layer #{} call {}",
                    r.index, r.layer, r.node
                ))
            })
    }

    fn tensor_dtype(&self, r: TensorRef) -> Result<&'static str, Error> {
        Ok(if self.layer(r.layer)?.is_op() {
            "bool"
        } else {
            self.dtype
        })
    }

    /// `{"class_name": "__keras_tensor__", "config": {"shape", "dtype", "keras_history"}}`.
    fn keras_tensor(&self, r: TensorRef) -> Result<Value, Error> {
        let name = &self.layer(r.layer)?.name;
        Ok(json!({
            "class_name": "__keras_tensor__",
            "config": {
                "shape": shape_json(&self.shape_of(r)?),
                "dtype": self.tensor_dtype(r)?,
                "keras_history": [name, r.node, r.index],
            }
        }))
    }

    fn history(&self, r: TensorRef) -> Result<Value, Error> {
        Ok(json!([self.layer(r.layer)?.name, r.node, r.index]))
    }

    /// `[name, node, index]` for one tensor, a list of them for several (as Keras writes
    /// `input_layers` / `output_layers`).
    fn histories(&self, refs: &[TensorRef]) -> Result<Value, Error> {
        match refs {
            [one] => self.history(*one),
            many => Ok(Value::Array(
                many.iter()
                    .map(|r| self.history(*r))
                    .collect::<Result<_, _>>()?,
            )),
        }
    }

    /// Shapes of the first call of layer `i` (`None` when it is never called).
    fn first_call(&self, i: usize) -> Result<Option<CallShapes>, Error> {
        let Some(node) = self
            .model
            .nodes
            .iter()
            .filter(|n| n.layer == i)
            .min_by_key(|n| n.call)
        else {
            return Ok(None);
        };
        let input = match node.args.first() {
            Some(NodeArg::Tensor(r)) => self.shape_of(*r)?,
            _ => return Ok(None),
        };
        let states = node
            .initial_state
            .iter()
            .map(|r| self.shape_of(*r))
            .collect::<Result<_, _>>()?;
        let args = node
            .args
            .iter()
            .filter_map(|a| match a {
                NodeArg::Tensor(r) => Some(self.shape_of(*r)),
                NodeArg::Scalar(_) => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(CallShapes {
            input,
            args,
            states,
        }))
    }

    fn sequential(&mut self) -> Result<Value, Error> {
        let model = self.model;
        // The graph must be the chain Sequential implies.
        let chain = model.nodes.iter().enumerate().all(|(i, n)| {
            n.layer == i
                && n.call == 0
                && n.initial_state.is_empty()
                && n.mask.is_none()
                && if i == 0 {
                    n.args.is_empty()
                } else {
                    n.args
                        == [NodeArg::Tensor(TensorRef {
                            layer: i - 1,
                            node: 0,
                            index: 0,
                        })]
                }
        });
        let input_first = matches!(
            model.layers.first().map(|l| &l.layer),
            Some(Layer::Input { .. })
        );
        let single_input = model
            .layers
            .iter()
            .skip(1)
            .all(|l| !matches!(l.layer, Layer::Input { .. }) && !l.is_op());
        if !chain || !input_first || !single_input || model.nodes.len() != model.layers.len() {
            return Err(ConfigError::unsupported(
                "Sequential model graph",
                format!("`{}` is not a chain of layers each called once on the previous layer's output (write it as Functional)", model.name),
            )
            .into());
        }
        let mut namer = Namer::default();
        let mut layers = Vec::with_capacity(model.layers.len());
        let mut build_input = Shape::new();
        for (i, ml) in model.layers.iter().enumerate() {
            if let Layer::Input { batch_shape } = &ml.layer {
                build_input = batch_shape.clone();
                layers.push(Value::Object(self.input_layer(ml, batch_shape)));
                continue;
            }
            let path = format!("layers/{}", namer.next(saved_class(ml)));
            let call = self.first_call(i)?;
            layers.push(Value::Object(self.layer_object(
                ml,
                &path,
                call.as_ref(),
            )?));
        }
        let mut config = base_config(&model.name, true, "float32");
        config.insert("layers".into(), Value::Array(layers));
        config.insert("build_input_shape".into(), shape_json(&build_input));
        let mut top = object("keras", "Sequential", config, Value::Null);
        top.insert("build_config".into(), input_shape_build(&build_input));
        top.insert("compile_config".into(), self.compile_config());
        Ok(Value::Object(top))
    }

    fn functional(&mut self) -> Result<Value, Error> {
        let model = self.model;
        let mut namer = Namer::default();
        let mut layers = Vec::with_capacity(model.layers.len());
        for (i, ml) in model.layers.iter().enumerate() {
            let mut entry = match &ml.layer {
                Layer::Input { batch_shape } => {
                    let path = format!("layers/{}", namer.next("InputLayer"));
                    self.groups
                        .push(VarsGroup::new(format!("{path}/vars"), &ml.name));
                    self.input_layer(ml, batch_shape)
                }
                Layer::NotEqual { .. } => object(
                    "keras.src.ops.numpy",
                    "NotEqual",
                    Map::from_iter([("name".to_string(), json!(ml.name))]),
                    json!("NotEqual"),
                ),
                Layer::Any { axis } => {
                    let config = Map::from_iter([
                        ("name".to_string(), json!(ml.name)),
                        ("axis".to_string(), json!(axis)),
                        ("keepdims".to_string(), json!(false)),
                    ]);
                    object("keras.src.ops.numpy", "Any", config, json!("Any"))
                }
                Layer::MaskOp(op) => {
                    let mut config = Map::from_iter([("name".to_string(), json!(ml.name))]);
                    match op {
                        MaskOp::ExpandDims { axis } | MaskOp::Concatenate { axis } => {
                            config.insert("axis".into(), json!(axis));
                        }
                        MaskOp::ZerosLike | MaskOp::OnesLike => {
                            config.insert("dtype".into(), json!("bool"));
                        }
                        MaskOp::LogicalOr => {}
                        MaskOp::ConvertToTensor => {
                            for k in ["dtype", "sparse", "ragged"] {
                                config.insert(k.into(), Value::Null);
                            }
                        }
                    }
                    let class = op.class_name();
                    object(op.module(), class, config, json!(class))
                }
                _ => {
                    let path = format!("layers/{}", namer.next(saved_class(ml)));
                    let call = self.first_call(i)?;
                    self.layer_object(ml, &path, call.as_ref())?
                }
            };
            entry.insert("name".into(), json!(ml.name));
            let mut calls: Vec<&Node> = model.nodes.iter().filter(|n| n.layer == i).collect();
            calls.sort_by_key(|n| n.call);
            let inbound = if matches!(ml.layer, Layer::Input { .. }) {
                vec![]
            } else {
                calls
                    .iter()
                    .map(|n| self.inbound_node(ml, n))
                    .collect::<Result<Vec<_>, _>>()?
            };
            entry.insert("inbound_nodes".into(), Value::Array(inbound));
            layers.push(Value::Object(entry));
        }
        let mut config = Map::new();
        config.insert("name".into(), json!(model.name));
        config.insert("trainable".into(), json!(true));
        config.insert("layers".into(), Value::Array(layers));
        config.insert("input_layers".into(), self.histories(&model.inputs)?);
        config.insert("output_layers".into(), self.histories(&model.outputs)?);
        let mut top = object(
            "keras.src.models.functional",
            "Functional",
            config,
            json!("Functional"),
        );
        top.insert("build_config".into(), json!({ "input_shape": null }));
        top.insert("compile_config".into(), self.compile_config());
        Ok(Value::Object(top))
    }

    fn compile_config(&self) -> Value {
        self.model
            .compile_config
            .as_ref()
            .map_or_else(|| json!({}), keras3_compile_config)
    }

    /// One inbound node, with the keyword arguments Keras records for the layer's call.
    fn inbound_node(&self, ml: &ModelLayer<T>, n: &Node) -> Result<Value, Error> {
        let mut args = n
            .args
            .iter()
            .map(|a| match a {
                NodeArg::Tensor(r) => self.keras_tensor(*r),
                NodeArg::Scalar(x) => Ok(json!(x)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A merge layer (and the concatenate op) is called on one list of tensors.
        if matches!(
            ml.layer,
            Layer::Merge(_)
                | Layer::Dot(_)
                | Layer::Attention(_)
                | Layer::MaskOp(MaskOp::Concatenate { .. })
        ) {
            args = vec![Value::Array(args)];
        }
        let mask = n.mask.map(|r| self.keras_tensor(r)).transpose()?;
        let states = n
            .initial_state
            .iter()
            .map(|r| self.keras_tensor(*r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut kwargs = Map::new();
        match &ml.layer {
            Layer::Rnn(_) | Layer::Bidirectional(_) if !states.is_empty() => {
                let bare = matches!(ml.layer, Layer::Rnn(_)) && states.len() == 1;
                let value = if bare {
                    states.into_iter().next().unwrap_or(Value::Null)
                } else {
                    Value::Array(states)
                };
                kwargs.insert("initial_state".into(), value);
                if let Some(m) = mask {
                    kwargs.insert("mask".into(), m);
                }
            }
            Layer::Rnn(_) => {
                kwargs.insert("training".into(), json!(false));
                kwargs.insert("mask".into(), mask.unwrap_or(Value::Null));
            }
            Layer::Bidirectional(_) => {
                kwargs.insert("mask".into(), mask.unwrap_or(Value::Null));
            }
            // TimeDistributed's `call(inputs, training=None, mask=None)`: Keras records the
            // mask only, `null` when there is none.
            _ if ml.time_distributed.is_some() => {
                kwargs.insert("mask".into(), mask.unwrap_or(Value::Null));
            }
            Layer::Dropout { .. } | Layer::Noise(_) => {
                kwargs.insert("training".into(), json!(false));
            }
            // `GlobalAveragePooling1D.call(inputs, mask=None)`: Keras records the mask, `null`
            // when there is none (`GlobalMaxPooling1D.call` takes none).
            Layer::GlobalPooling(p) if p.op == PoolOp::Average => {
                kwargs.insert("mask".into(), mask.unwrap_or(Value::Null));
            }
            // `BatchNormalization.call(inputs, training=None, mask=None)` and
            // `Softmax.call(inputs, mask=None)` record it too.
            Layer::BatchNorm(_) | Layer::Pointwise(Pointwise::Softmax { .. }) => {
                kwargs.insert("mask".into(), mask.unwrap_or(Value::Null));
            }
            // The options a call passed (Keras records those given; grucell those set).
            Layer::Attention(_) | Layer::MultiHeadAttention(_) => {
                if n.attention.use_causal_mask {
                    kwargs.insert("use_causal_mask".into(), json!(true));
                }
                if n.attention.return_attention_scores {
                    kwargs.insert("return_attention_scores".into(), json!(true));
                }
            }
            _ => {}
        }
        Ok(json!({ "args": args, "kwargs": kwargs }))
    }

    fn input_layer(&self, ml: &ModelLayer<T>, batch_shape: &[Option<usize>]) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("batch_shape".into(), shape_json(batch_shape));
        c.insert("dtype".into(), json!(self.dtype));
        c.insert("sparse".into(), json!(false));
        c.insert("ragged".into(), json!(false));
        c.insert("name".into(), json!(ml.name));
        c.insert("optional".into(), json!(false));
        object("keras.layers", "InputLayer", c, Value::Null)
    }

    /// A (non-input, non-op) layer's serialized object; records its `vars` groups and weights
    /// under `path`.
    fn layer_object(
        &mut self,
        ml: &'a ModelLayer<T>,
        path: &str,
        call: Option<&CallShapes>,
    ) -> Result<Map<String, Value>, Error> {
        if let Some(inner) = &ml.time_distributed {
            return self.time_distributed_object(ml, inner, path, call);
        }
        let class = default_class_name(&ml.layer);
        let mut build = call.map(|c| input_shape_build(&c.input));
        let mut config = match &ml.layer {
            Layer::Masking { .. }
            | Layer::Dropout { .. }
            | Layer::Activation(_)
            | Layer::Dense(_)
            | Layer::Embedding(_)
            | Layer::LayerNorm(_)
            | Layer::BatchNorm(_)
            | Layer::Normalization(_)
            | Layer::PRelu(_)
            | Layer::RmsNorm(_)
            | Layer::Conv1D(_) => {
                let (c, built) = self.plain_config(&ml.layer, &ml.name, ml.trainable, path)?;
                if !built {
                    build = None;
                } else if let (Layer::Normalization(n), Some(c)) = (&ml.layer, call) {
                    build = Some(input_shape_build(&n.build_input_shape(&c.input)));
                }
                c
            }
            Layer::Rnn(r) => {
                if let Some(c) = call.filter(|c| !c.states.is_empty()) {
                    let states = match c.states.as_slice() {
                        [one] => shape_json(one),
                        many => Value::Array(many.iter().map(|s| shape_json(s)).collect()),
                    };
                    build = Some(
                        json!({ "shapes_dict": { "sequences_shape": shape_json(&c.input), "initial_state_shape": states } }),
                    );
                }
                return self.rnn_object(
                    r,
                    &ml.name,
                    ml.trainable,
                    path,
                    call.map(|c| &c.input),
                    build,
                );
            }
            Layer::Bidirectional(b) => {
                if let Some(c) = call.filter(|c| !c.states.is_empty()) {
                    let states = Value::Array(c.states.iter().map(|s| shape_json(s)).collect());
                    build = Some(
                        json!({ "shapes_dict": { "sequences_shape": shape_json(&c.input), "initial_state_shape": states } }),
                    );
                }
                self.bidirectional_config(b, ml, path, call.map(|c| &c.input))?
            }
            // The base config and the layer's own keys. Built on their input (Flatten,
            // RepeatVector, Permute, Rescaling, the step layers) or at construction (no
            // `build_config`), as Keras writes them.
            Layer::GlobalPooling(_)
            | Layer::Flatten(_)
            | Layer::RepeatVector(_)
            | Layer::Permute(_)
            | Layer::Pooling(_)
            | Layer::Reshape(_)
            | Layer::Noise(_)
            | Layer::Pointwise(_)
            | Layer::Steps(_) => {
                let built = match &ml.layer {
                    Layer::Flatten(_)
                    | Layer::RepeatVector(_)
                    | Layer::Permute(_)
                    | Layer::Steps(_) => true,
                    Layer::Pointwise(p) => p.keras_builds(),
                    _ => false,
                };
                if !built {
                    build = None;
                }
                let mut c = base_config(&ml.name, ml.trainable, self.dtype);
                match &ml.layer {
                    Layer::GlobalPooling(p) => p.write_keras(&mut c),
                    Layer::Flatten(f) => f.write_keras(&mut c),
                    Layer::RepeatVector(r) => r.write_keras(&mut c),
                    Layer::Permute(p) => p.write_keras(&mut c),
                    Layer::Pooling(p) => p.write_keras(&mut c),
                    Layer::Reshape(r) => r.write_keras(&mut c),
                    Layer::Pointwise(p) => p.write_keras(&mut c),
                    Layer::Steps(l) => l.write_keras(&mut c),
                    // SpatialDropout1D's config is its own four keys (no `trainable`, the
                    // dtype by name).
                    Layer::Noise(n @ Noise::SpatialDropout1D { .. }) => {
                        c = Map::new();
                        n.write_keras(&mut c);
                        c.insert("name".into(), json!(ml.name));
                        c.insert("dtype".into(), json!(self.dtype));
                    }
                    Layer::Noise(n) => n.write_keras(&mut c),
                    _ => {}
                }
                c
            }
            Layer::ActivityRegularization(r) => {
                build = None;
                let mut c = base_config(&ml.name, ml.trainable, self.dtype);
                let (l1, l2) = match *r {
                    Regularizer::L1L2 { l1, l2 } => (l1, l2),
                    Regularizer::L1 { l1 } => (l1, 0.0),
                    Regularizer::L2 { l2 } => (0.0, l2),
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("ActivityRegularization `{}`", ml.name),
                            "another regularizer",
                            "L1, L2 or L1L2 factors",
                        )
                        .into())
                    }
                };
                c.insert("l1".into(), json!(l1));
                c.insert("l2".into(), json!(l2));
                c
            }
            Layer::Attention(a) => {
                // Built on the list of its inputs' shapes; weights under `path/vars`.
                build = call.map(|c| {
                    json!({ "input_shape": Value::Array(c.args.iter().map(|s| shape_json(s)).collect()) })
                });
                let mut c = base_config(&ml.name, ml.trainable, self.dtype);
                a.write_keras(&mut c);
                for (k, t) in a.weights().into_iter().enumerate() {
                    self.weights.push(Var {
                        group: format!("{path}/vars"),
                        index: k,
                        tensor: t,
                    });
                }
                c
            }
            Layer::MultiHeadAttention(a) => {
                // Built on its inputs' shapes; each projection's weights under its sublayer,
                // the softmax and dropout sublayers with empty groups, as Keras saves them.
                build = call.map(|c| {
                    let mut d = Map::new();
                    for (key, s) in ["query_shape", "value_shape", "key_shape"]
                        .iter()
                        .zip(&c.args)
                    {
                        d.insert((*key).into(), shape_json(s));
                    }
                    json!({ "shapes_dict": d })
                });
                let dtype = self.dtype;
                let mut c = a.config().to_keras(dtype);
                c.insert("name".into(), json!(ml.name));
                c.insert("trainable".into(), json!(ml.trainable));
                let step = if a.config().use_bias { 2 } else { 1 };
                let weights = a.weights();
                for (p, (sub, name)) in [
                    ("query_dense", "query"),
                    ("key_dense", "key"),
                    ("value_dense", "value"),
                    ("output_dense", "attention_output"),
                ]
                .into_iter()
                .enumerate()
                {
                    let group = format!("{path}/{sub}/vars");
                    self.groups.push(VarsGroup::new(group.clone(), name));
                    for (k, t) in weights[p * step..(p + 1) * step].iter().enumerate() {
                        self.weights.push(Var {
                            group: group.clone(),
                            index: k,
                            tensor: t,
                        });
                    }
                }
                // Auto-named by Keras when it builds the layers in order: `softmax`, `softmax_1`, …
                let k = self.attention_sublayers;
                self.attention_sublayers += 1;
                for (sub, name) in [("_softmax", "softmax"), ("_dropout_layer", "dropout")] {
                    let name = if k == 0 {
                        name.to_string()
                    } else {
                        format!("{name}_{k}")
                    };
                    self.groups
                        .push(VarsGroup::new(format!("{path}/{sub}/vars"), name));
                }
                c
            }
            Layer::Merge(_) | Layer::Dot(_) => {
                // Built on the list of its inputs' shapes.
                build = call.map(|c| {
                    json!({ "input_shape": Value::Array(c.args.iter().map(|s| shape_json(s)).collect()) })
                });
                let mut c = base_config(&ml.name, ml.trainable, self.dtype);
                match &ml.layer {
                    Layer::Merge(Merge {
                        op: MergeOp::Concatenate { axis },
                        ..
                    }) => {
                        c.insert("axis".into(), json!(axis));
                    }
                    Layer::Dot(d) => d.write_keras(&mut c),
                    _ => {}
                }
                c
            }
            Layer::Input { .. } | Layer::NotEqual { .. } | Layer::Any { .. } | Layer::MaskOp(_) => {
                return Err(ConfigError::invalid(
                    "layer",
                    class,
                    "a layer with a Keras layer config",
                )
                .into());
            }
        };
        if let Some(r) = &ml.activity_regularizer {
            config.insert("activity_regularizer".into(), r.to_keras());
        }
        self.groups
            .push(VarsGroup::new(format!("{path}/vars"), &ml.name));
        let mut o = object("keras.layers", class, config, Value::Null);
        if let Some(b) = build {
            o.insert("build_config".into(), b);
        }
        Ok(o)
    }

    /// The config of a layer without sublayers (`Masking`, `Dropout`, `Activation`, `Dense`,
    /// `Embedding`, `LayerNormalization`, `BatchNormalization`, `Conv1D`, …, and the pointwise
    /// layers inside `TimeDistributed`), and whether Keras gives it a `build_config` (the layers
    /// with weights, and `Rescaling`); records their weights under `path/vars`.
    fn plain_config(
        &mut self,
        layer: &'a Layer<T>,
        name: &str,
        trainable: bool,
        path: &str,
    ) -> Result<(Map<String, Value>, bool), Error> {
        let dtype = self.dtype;
        // The layers with weights: their own config, built, weights under `path/vars`.
        let weighted = match layer {
            Layer::Dense(d) => Some((d.config().to_keras(dtype), d.weights())),
            Layer::Embedding(e) => Some((e.config().to_keras(dtype), vec![e.embeddings()])),
            Layer::LayerNorm(n) => Some((n.config().to_keras(dtype), n.weights())),
            Layer::Conv1D(c) => Some((c.config().to_keras(dtype), c.weights())),
            Layer::PRelu(p) => Some((p.config().to_keras(dtype), vec![p.alpha()])),
            Layer::RmsNorm(n) => Some((n.config().to_keras(dtype), vec![n.scale()])),
            Layer::BatchNorm(n) => Some((n.config().to_keras(dtype), n.weights())),
            Layer::Normalization(n) => {
                if let Some(count) = n.count() {
                    self.ints.push(IntVar {
                        group: format!("{path}/vars"),
                        index: n.weights().len(),
                        value: count,
                    });
                }
                Some((n.config().to_keras(dtype), n.weights()))
            }
            _ => None,
        };
        if let Some((mut c, weights)) = weighted {
            c.insert("name".into(), json!(name));
            c.insert("trainable".into(), json!(trainable));
            for (k, t) in weights.into_iter().enumerate() {
                self.weights.push(Var {
                    group: format!("{path}/vars"),
                    index: k,
                    tensor: t,
                });
            }
            return Ok((c, true));
        }
        let mut c = base_config(name, trainable, dtype);
        match layer {
            Layer::Masking { mask_value } => {
                c.insert("mask_value".into(), json!(mask_value));
            }
            Layer::Dropout { rate, seed } => {
                c.insert("rate".into(), json!(rate));
                c.insert("seed".into(), json!(seed));
                c.insert("noise_shape".into(), Value::Null);
            }
            Layer::Activation(a) => {
                c.insert("activation".into(), json!(a.name()));
            }
            // Inside a TimeDistributed wrapper (elsewhere they are written with the layers
            // without weights).
            Layer::Pointwise(p) => {
                p.write_keras(&mut c);
                return Ok((c, p.keras_builds()));
            }
            other => {
                return Err(ConfigError::invalid(
                    "layer",
                    default_class_name(other),
                    "Masking, Dropout, Activation, Dense, Embedding, LayerNormalization or Conv1D",
                )
                .into())
            }
        }
        Ok((c, false))
    }

    /// `TimeDistributed(layer)`: the wrapped layer's object at `path/layer`, built on the
    /// input without its time axis, inside the wrapper's.
    fn time_distributed_object(
        &mut self,
        ml: &'a ModelLayer<T>,
        inner: &Wrapped,
        path: &str,
        call: Option<&CallShapes>,
    ) -> Result<Map<String, Value>, Error> {
        if !matches!(
            ml.layer,
            Layer::Dense(_)
                | Layer::Dropout { .. }
                | Layer::Activation(_)
                | Layer::LayerNorm(_)
                | Layer::Pointwise(_)
                | Layer::PRelu(_)
        ) {
            return Err(ConfigError::unsupported(
                "layer inside TimeDistributed",
                format!("{} (in `{}`)", default_class_name(&ml.layer), ml.name),
            )
            .into());
        }
        let inner_path = format!("{path}/layer");
        let (mut config, built) =
            self.plain_config(&ml.layer, &inner.name, inner.trainable, &inner_path)?;
        // Axes back to the wrapped layer's own count (see `load::shift_axis`).
        crate::io::keras::load::shift_axis(&mut config, -1);
        self.groups
            .push(VarsGroup::new(format!("{inner_path}/vars"), &inner.name));
        let mut wrapped = object(
            "keras.layers",
            default_class_name(&ml.layer),
            config,
            Value::Null,
        );
        if let Some(c) = call.filter(|_| built) {
            let step: Shape = c
                .input
                .iter()
                .enumerate()
                .filter(|&(axis, _)| axis != 1)
                .map(|(_, d)| *d)
                .collect();
            wrapped.insert("build_config".into(), input_shape_build(&step));
        }
        let mut c = base_config(&ml.name, ml.trainable, self.dtype);
        c.insert("layer".into(), Value::Object(wrapped));
        self.groups
            .push(VarsGroup::new(format!("{path}/vars"), &ml.name));
        let mut o = object("keras.layers", "TimeDistributed", c, Value::Null);
        if let Some(c) = call {
            o.insert("build_config".into(), input_shape_build(&c.input));
        }
        Ok(o)
    }

    fn bidirectional_config(
        &mut self,
        b: &'a Bidirectional<T>,
        ml: &ModelLayer<T>,
        path: &str,
        input: Option<&Shape>,
    ) -> Result<Map<String, Value>, Error> {
        let mut c = base_config(&ml.name, ml.trainable, self.dtype);
        c.insert(
            "merge_mode".into(),
            b.merge_mode().map_or(Value::Null, |m| json!(m.name())),
        );
        // Keras renames the two copies `forward_<name>` / `backward_<name>` at construction.
        let fname = format!(
            "forward_{}",
            b.forward
                .name
                .strip_prefix("forward_")
                .unwrap_or(&b.forward.name)
        );
        let bname = format!(
            "backward_{}",
            b.backward
                .name
                .strip_prefix("backward_")
                .unwrap_or(&b.backward.name)
        );
        let build = input.map(|s| input_shape_build(s));
        // The two layers' own flags: their cells' (see `cells_trainable`).
        let f = self.rnn_object(
            &b.forward,
            &fname,
            cells_trainable(&b.forward),
            &format!("{path}/forward_layer"),
            input,
            build.clone(),
        )?;
        let bw = self.rnn_object(
            &b.backward,
            &bname,
            cells_trainable(&b.backward),
            &format!("{path}/backward_layer"),
            input,
            build,
        )?;
        c.insert("layer".into(), Value::Object(f));
        c.insert("backward_layer".into(), Value::Object(bw));
        Ok(c)
    }

    /// A `GRU` or `RNN` layer object at `path`, with its `vars` groups and cell weights.
    fn rnn_object(
        &mut self,
        r: &'a Rnn<T>,
        name: &str,
        trainable: bool,
        path: &str,
        input: Option<&Shape>,
        build: Option<Value>,
    ) -> Result<Map<String, Value>, Error> {
        let dtype = self.dtype;
        self.groups
            .push(VarsGroup::new(format!("{path}/vars"), name));
        let mut c = base_config(name, trainable, dtype);
        c.insert("return_sequences".into(), json!(r.returns_sequences()));
        c.insert("return_state".into(), json!(r.returns_state()));
        c.insert("go_backwards".into(), json!(r.is_go_backwards()));
        c.insert("stateful".into(), json!(r.is_stateful()));
        c.insert("unroll".into(), json!(r.is_unrolled()));
        c.insert(
            "zero_output_for_mask".into(),
            json!(r.zeroes_masked_outputs()),
        );
        let activity = r
            .activity_regularizer_ref()
            .map_or(Value::Null, |a| a.to_keras());
        let batch = input.and_then(|s| s.first().copied()).flatten();
        let class = match r.kind() {
            RnnKind::Gru => {
                let cell = r
                    .cells()
                    .first()
                    .ok_or_else(|| ConfigError::invalid("GRU layer", name, "one cell"))?;
                for (k, v) in cell.config().to_keras(dtype) {
                    if !matches!(k.as_str(), "name" | "trainable" | "dtype") {
                        c.insert(k, v);
                    }
                }
                c.insert("activity_regularizer".into(), activity);
                self.cell_weights(cell, &format!("{path}/cell/vars"), "gru_cell");
                "GRU"
            }
            RnnKind::RnnCell => {
                let cell = r
                    .cells()
                    .first()
                    .ok_or_else(|| ConfigError::invalid("RNN layer", name, "one cell"))?;
                c.insert("cell".into(), Value::Object(self.cell_object(cell, batch)));
                if !activity.is_null() {
                    c.insert("activity_regularizer".into(), activity);
                }
                self.cell_weights(cell, &format!("{path}/cell/vars"), &cell.config().name);
                "RNN"
            }
            RnnKind::RnnStacked => {
                let sname = if self.stacked == 0 {
                    "stacked_rnn_cells".to_string()
                } else {
                    format!("stacked_rnn_cells_{}", self.stacked)
                };
                self.stacked += 1;
                self.groups
                    .push(VarsGroup::new(format!("{path}/cell/vars"), &sname));
                let mut namer = Namer::default();
                let mut cells = Vec::with_capacity(r.cells().len());
                for cell in r.cells() {
                    cells.push(Value::Object(self.cell_object(cell, batch)));
                    let p = format!("{path}/cell/cells/{}/vars", namer.next("GRUCell"));
                    self.cell_weights(cell, &p, &cell.config().name);
                }
                // Keras writes `float32` here whatever the cells' dtype (RNN does not pass its
                // dtype on to the StackedRNNCells it makes), and then cannot run its own file for
                // a float64 model (a float32 state enters a float64 loop). The model's dtype
                // loads and runs.
                let mut sc = base_config(&sname, cells_trainable(r), dtype);
                sc.insert("cells".into(), Value::Array(cells));
                let mut so = object("keras.layers", "StackedRNNCells", sc, Value::Null);
                if let Some(d) = r.cells().first().map(GruCell::input_dim) {
                    so.insert("build_config".into(), input_shape_build(&[batch, Some(d)]));
                }
                c.insert("cell".into(), Value::Object(so));
                if !activity.is_null() {
                    c.insert("activity_regularizer".into(), activity);
                }
                "RNN"
            }
        };
        let mut o = object("keras.layers", class, c, Value::Null);
        if let Some(b) = build {
            o.insert("build_config".into(), b);
        }
        Ok(o)
    }

    /// A `GRUCell` object with its build_config `(batch, input_dim)`.
    fn cell_object(&self, cell: &GruCell<T>, batch: Option<usize>) -> Map<String, Value> {
        let c = cell.config().to_keras(self.dtype);
        let mut o = object("keras.layers", "GRUCell", c, Value::Null);
        o.insert(
            "build_config".into(),
            input_shape_build(&[batch, Some(cell.input_dim())]),
        );
        o
    }

    fn cell_weights(&mut self, cell: &'a GruCell<T>, group: &str, name: &str) {
        self.groups.push(VarsGroup::new(group, name));
        for (k, t) in cell.weights().into_iter().enumerate() {
            self.weights.push(Var {
                group: group.to_string(),
                index: k,
                tensor: t,
            });
        }
    }
}

/// A Keras 3 `compile_config`. A legacy `.h5` `training_config` (recognised by its
/// `optimizer_config` key) is converted as Keras' own loader converts it
/// (`compile_args_from_training_config`): the optimizer becomes a serialized `keras.optimizers`
/// object and the other keys get Keras' `compile()` defaults. Keras 3 passes `compile_config` to
/// `compile(**config)`, which rejects `optimizer_config`. Anything else is written unchanged,
/// except AUC metrics' `label_weights`, which Keras 3.15.1 writes as a serialized tensor that its
/// own loader then cannot read (`AUC.__init__` gets the dict): they are written as a plain list,
/// which it reads.
fn keras3_compile_config(c: &Value) -> Value {
    let mut out = keras3_compile_config_keys(c);
    if let Some(o) = out.as_object_mut() {
        for k in ["metrics", "weighted_metrics"] {
            if let Some(m) = o.get_mut(k) {
                auc_label_weights_as_lists(m);
            }
        }
    }
    out
}

/// Every AUC metric's `label_weights` under `v` (a metric, or lists and dicts of them, as Keras
/// nests them per output) as a plain list where it is a serialized tensor.
fn auc_label_weights_as_lists(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(auc_label_weights_as_lists),
        Value::Object(o) if o.get("class_name").and_then(Value::as_str) == Some("AUC") => {
            let Some(lw) = o.get_mut("config").and_then(|c| c.get_mut("label_weights")) else {
                return;
            };
            if let Some(list) = crate::layers::keras_json::tensor_value(lw).cloned() {
                *lw = list;
            }
        }
        Value::Object(o) => o.values_mut().for_each(auc_label_weights_as_lists),
        _ => {}
    }
}

/// [`keras3_compile_config`]'s keys: a legacy `training_config` converted, else `c`.
fn keras3_compile_config_keys(c: &Value) -> Value {
    let Some(tc) = c.as_object().filter(|o| o.contains_key("optimizer_config")) else {
        return c.clone();
    };
    let mut out = Map::new();
    if let Some(opt) = tc.get("optimizer_config").and_then(Value::as_object) {
        let mut o = Map::new();
        o.insert("module".into(), json!("keras.optimizers"));
        // TF-Keras 2.11+ writes registered names (`Custom>Adam`); Keras 3 wants the class.
        let class = match opt.get("class_name") {
            Some(Value::String(c)) => json!(c.rsplit('>').next().unwrap_or(c)),
            other => other.cloned().unwrap_or(Value::Null),
        };
        o.insert("class_name".into(), class);
        // Keras 3 refuses TF-Keras 2's `is_legacy_optimizer` and `jit_compile` ("Argument(s) not
        // recognized") and warns about `decay`, which neither it nor grucell applies.
        let mut config = opt.get("config").cloned().unwrap_or_else(|| json!({}));
        if let Some(c) = config.as_object_mut() {
            for k in ["is_legacy_optimizer", "jit_compile", "decay"] {
                c.remove(k);
            }
        }
        o.insert("config".into(), config);
        o.insert("registered_name".into(), Value::Null);
        out.insert("optimizer".into(), Value::Object(o));
    }
    let defaults = [
        ("loss", Value::Null),
        ("loss_weights", Value::Null),
        ("metrics", Value::Null),
        ("weighted_metrics", Value::Null),
        ("run_eagerly", json!(false)),
        ("steps_per_execution", json!(1)),
        ("jit_compile", json!(false)),
    ];
    for (k, d) in defaults {
        out.insert(k.into(), tc.get(k).cloned().unwrap_or(d));
    }
    // A TF-Keras 2 loss object (`reduction: "auto"`, `fn`) in Keras 3's form, which Keras 3's
    // `compile` accepts; a loss grucell cannot read stays as it was.
    if let Some(l) = out.get_mut("loss") {
        if l.is_object() {
            if let Ok(loss) = Loss::from_keras(l) {
                *l = loss.to_keras();
            }
        }
    }
    Value::Object(out)
}

/// model.weights.h5 with float64 datasets, laid out as [`write_weights_h5`] lays out float32
/// ones (that writer takes `f32` only; Keras stores a float64 model's variables as float64).
/// `weights` are `(dataset path, tensor)`, the path being `<vars group>/<index>`.
fn weights_h5_f64(
    groups: &[VarsGroup],
    weights: &[(String, &Tensor<f64>)],
    ints: &[IntWeightEntry],
) -> Result<Vec<u8>, FormatError> {
    let err = |part: &str, e: hdf5_writer::Error| {
        FormatError::malformed(WEIGHTS_ENTRY, part, format!("HDF5 writer: {e}"))
    };
    // Sorted, as write_weights_h5 does, so the file does not depend on the order given.
    let named: BTreeMap<&str, &str> = groups
        .iter()
        .map(|g| (g.path.as_str(), g.name.as_str()))
        .collect();
    let sorted: BTreeMap<&str, &Tensor<f64>> =
        weights.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    if named.len() != groups.len() || sorted.len() != weights.len() {
        return Err(FormatError::malformed(
            WEIGHTS_ENTRY,
            "file",
            "a vars group or variable listed twice",
        ));
    }
    let mut builder = Hdf5Builder::new();
    for (path, name) in named {
        builder = builder.group_attribute(path, AttributeBuilder::fixed_string("name", name));
    }
    for (path, t) in sorted {
        let dims: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        builder = builder
            .dataset(DatasetBuilder::typed_data(path, dims, t.data()).map_err(|e| err(path, e))?);
    }
    for e in ints {
        let path = format!("{}/{}", e.group, e.index);
        let dims: Vec<u64> = e.shape.iter().map(|&d| d as u64).collect();
        builder = builder
            .dataset(DatasetBuilder::typed_data(&path, dims, e.data).map_err(|x| err(&path, x))?);
    }
    builder
        .into_plan()
        .and_then(|plan| plan.encode(WriteOptions::default()))
        .map_err(|e| err("file", e))
}
