//! Builds a [`Model`] from a Keras file: parses the model config (Sequential or Functional,
//! Keras 3 and TF-Keras 2 node formats) and assigns weights by Keras' own rules (`.keras`: object
//! paths derived from the layer list; legacy `.h5`: per layer, in `weight_names` order).

use super::{load_keras_file, KerasFile, KerasWeights, Namer};
use crate::error::{ConfigError, Error, FormatError, ShapeError};
use crate::float::Float;
use crate::layers::attention::{Attention, AttentionCall};
use crate::layers::batch_norm::{BatchNorm, BatchNormConfig};
use crate::layers::bidirectional::{Bidirectional, MergeMode};
use crate::layers::conv::{Conv1D, Conv1DConfig};
use crate::layers::dense::{Dense, DenseConfig};
use crate::layers::dot::Dot;
use crate::layers::embedding::{Embedding, EmbeddingConfig};
use crate::layers::gru_cell::{activation_of, GruCell, GruCellConfig};
use crate::layers::keras_json::{
    class_and_config, get_bool, get_f64, get_str, get_u64, to_snake_case,
};
use crate::layers::mask_ops::MaskOp;
use crate::layers::merge::{Merge, MergeOp};
use crate::layers::model::{
    Layer, Model, ModelKind, ModelLayer, Node, NodeArg, TensorRef, Wrapped,
};
use crate::layers::multi_head_attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::layers::noise::Noise;
use crate::layers::normalization::{LayerNorm, LayerNormConfig};
use crate::layers::pointwise::Pointwise;
use crate::layers::pooling::{GlobalPooling1D, PoolOp};
use crate::layers::prelu::{PRelu, PReluConfig};
use crate::layers::preprocessing::{Normalization, NormalizationConfig};
use crate::layers::regularizer::Regularizer;
use crate::layers::reshaping::{Flatten, Permute, RepeatVector, Reshape};
use crate::layers::rms_norm::{RmsNorm, RmsNormConfig};
use crate::layers::rnn::{Rnn, RnnKind};
use crate::layers::steps::StepLayer;
use crate::layers::window_pooling::{Pooling1D, WindowOp};
use crate::tensor::Tensor;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// Loads a `.keras` or legacy `.h5` model file into a model computing in `T`.
///
/// ```no_run
/// let model = grucell::io::keras::load::load_model::<f32>("model.keras".as_ref())?;
/// println!("{}", model.summary());
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn load_model<T: Float>(path: &Path) -> Result<Model<T>, Error> {
    let file = load_keras_file(path)?;
    model_from_file(&file)
}

/// The dtype the model was saved to compute in: `"float64"` when any layer's dtype policy says
/// so, else `"float32"`.
pub fn file_dtype(file: &KerasFile) -> &'static str {
    if dtype_policies(&file.model_config).contains("float64") {
        "float64"
    } else {
        "float32"
    }
}

/// A dtype policy of the model that computes in less than float32 (`mixed_float16`,
/// `bfloat16`, …), if any. grucell computes such a model in float32: its results are closer to
/// the exact ones than Keras' and differ from them by Keras' float16 round-off, so callers warn.
///
/// ```no_run
/// let file = grucell::io::keras::load_keras_file("model.keras".as_ref())?;
/// if let Some(p) = grucell::io::keras::load::reduced_precision_policy(&file) {
///     eprintln!("warning: the model computes in {p} in Keras; grucell computes in float32");
/// }
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn reduced_precision_policy(file: &KerasFile) -> Option<String> {
    dtype_policies(&file.model_config)
        .into_iter()
        .find(|p| p.contains("float16"))
}

/// Every dtype policy name in a model config (`dtype` keys: a string, or a `DTypePolicy`
/// object with `config.name`).
fn dtype_policies(config: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                if let Some(d) = o.get("dtype") {
                    let name = match d {
                        Value::String(s) => Some(s.as_str()),
                        Value::Object(p) => p
                            .get("config")
                            .and_then(|c| c.get("name"))
                            .and_then(Value::as_str),
                        _ => None,
                    };
                    if let Some(n) = name {
                        out.insert(n.to_string());
                    }
                }
                o.values().for_each(|c| walk(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(config, &mut out);
    out
}

/// Builds the model described by an already-read Keras file.
pub fn model_from_file<T: Float>(file: &KerasFile) -> Result<Model<T>, Error> {
    let (class, cfg) = class_and_config(&file.model_config)?
        .ok_or_else(|| FormatError::malformed(&file.path, "model config", "null model config"))?;
    let mut weights = WeightReader {
        file,
        used_layers: 0,
    };
    let mut model = match class.as_str() {
        "Sequential" => sequential(&cfg, &mut weights)?,
        "Functional" | "Model" => functional(&cfg, &mut weights)?,
        other => {
            return Err(ConfigError::unsupported(
                "model class",
                format!("`{other}` (supported: Sequential, Functional)"),
            )
            .into())
        }
    };
    model.compile_config = file
        .compile_config
        .clone()
        .filter(|c| c.as_object().is_some_and(|o| !o.is_empty()));
    if written_by_keras_2(file) {
        // `hard_sigmoid` was 0.2x + 0.5 before Keras 3 (x/6 + 0.5), merged masks were ANDed,
        // a Conv1D added its bias per filter, and Normalization, Identity and Rescaling did not
        // support masking (inside TimeDistributed, TF-Keras 2 refuses a mask for them).
        for l in &mut model.layers {
            match &mut l.layer {
                Layer::Merge(m) => m.keras2_masks = true,
                Layer::Conv1D(c) => c.set_keras2_bias(true),
                Layer::Normalization(_)
                | Layer::Pointwise(Pointwise::Identity | Pointwise::Rescaling { .. })
                    if l.time_distributed.is_none() =>
                {
                    l.drops_mask = true;
                }
                _ => {}
            }
            l.map_activations(|a| match a {
                crate::Activation::HardSigmoid => crate::Activation::HardSigmoidKeras2,
                other => other,
            });
        }
    }
    Ok(model)
}

/// Whether the file was written by Keras 2 or TF-Keras 2 (`keras_version` 2.x or older).
pub fn written_by_keras_2(file: &KerasFile) -> bool {
    file.keras_version.as_deref().is_some_and(|v| {
        v.split('.')
            .next()
            .and_then(|m| m.trim().parse::<u32>().ok())
            .is_some_and(|m| m < 3)
    })
}

struct WeightReader<'a> {
    file: &'a KerasFile,
    /// Legacy h5: how many weight-bearing layers were consumed (positional fallback).
    used_layers: usize,
}

impl WeightReader<'_> {
    /// The one array of a layer with a single weight (`vars/0` under `path`); `what` names it
    /// in the error when the file has none.
    fn single_array<T: Float>(
        &mut self,
        layer_name: &str,
        path: &str,
        class: &str,
        what: &str,
    ) -> Result<Tensor<T>, Error> {
        self.layer_arrays::<T>(layer_name, &[format!("{path}/vars/0")])?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{class} `{layer_name}`"),
                    format!("no {what}"),
                    format!("its {what}"),
                )
                .into()
            })
    }

    /// The arrays of one layer: `paths` are the `.keras` dataset paths in Keras' weight order.
    fn layer_arrays<T: Float>(
        &mut self,
        layer_name: &str,
        paths: &[String],
    ) -> Result<Vec<Tensor<T>>, Error> {
        match &self.file.weights {
            KerasWeights::ByPath(map) => paths
                .iter()
                .map(|p| {
                    map.get(p).map(Tensor::cast).ok_or_else(|| {
                        FormatError::malformed(
                            &self.file.path,
                            "model.weights.h5",
                            format!("missing dataset `{p}` for layer `{layer_name}`"),
                        )
                        .into()
                    })
                })
                .collect(),
            KerasWeights::ByLayer {
                layer_names,
                weights,
            } => {
                // By name first; otherwise by position among the layers that have weights, as
                // Keras' legacy loader does.
                let arrays = match weights.get(layer_name).filter(|w| !w.is_empty()) {
                    Some(w) => w,
                    None => {
                        let with: Vec<&String> = layer_names
                            .iter()
                            .filter(|n| weights.get(*n).is_some_and(|w| !w.is_empty()))
                            .collect();
                        let name = with.get(self.used_layers).ok_or_else(|| {
                            FormatError::malformed(
                                &self.file.path,
                                "model_weights",
                                format!("no weights for layer `{layer_name}`"),
                            )
                        })?;
                        &weights[*name]
                    }
                };
                self.used_layers += 1;
                if arrays.len() != paths.len() {
                    return Err(FormatError::malformed(
                        &self.file.path,
                        format!("model_weights/{layer_name}"),
                        format!(
                            "{} arrays, expected {} for this layer's config",
                            arrays.len(),
                            paths.len()
                        ),
                    )
                    .into());
                }
                Ok(arrays.iter().map(|(_, t)| t.cast()).collect())
            }
        }
    }
}

fn layer_name(cfg: &Map<String, Value>, fallback: &str) -> Result<String, ConfigError> {
    Ok(get_str(cfg, "name")?.unwrap_or(fallback).to_string())
}

fn batch_shape(cfg: &Map<String, Value>) -> Result<Option<Vec<Option<usize>>>, ConfigError> {
    let v = ["batch_shape", "batch_input_shape"]
        .iter()
        .find_map(|k| cfg.get(*k).filter(|v| !v.is_null()));
    let Some(v) = v else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| ConfigError::invalid("batch_shape", v, "a list of integers or nulls"))?;
    if arr.len() > 8 {
        return Err(ConfigError::invalid(
            "batch_shape",
            v,
            "at most 8 dimensions",
        ));
    }
    arr.iter()
        .map(|d| match d {
            Value::Null => Ok(None),
            d => d
                .as_u64()
                .filter(|&n| n <= 1 << 32)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    ConfigError::invalid("batch_shape", v, "non-negative integers or nulls")
                }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A config's finite, non-negative number `key` (default 0): `ActivityRegularization`'s factors.
fn non_negative(cfg: &Map<String, Value>, key: &str) -> Result<f64, ConfigError> {
    let v = get_f64(cfg, key, 0.0)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            format!("ActivityRegularization.{key}"),
            v,
            "a finite number ≥ 0",
        ))
    }
}

/// A config's `axis` (default −1, the last), bounded to the ranks grucell handles.
fn axis_of(cfg: &Map<String, Value>, class: &str) -> Result<isize, ConfigError> {
    match cfg.get("axis") {
        None | Some(Value::Null) => Ok(-1),
        Some(v) => v
            .as_i64()
            .filter(|a| a.abs() <= 8)
            .map(|a| a as isize)
            .ok_or_else(|| ConfigError::invalid(format!("{class}.axis"), v, "an integer axis")),
    }
}

/// Whether a config entry is an op Keras recorded in the graph rather than a layer: its module
/// is `keras.src.ops…`, or (legacy `.h5` configs carry no module) it is one of the mask ops and
/// its config has no `trainable` key, which every layer's has (`Concatenate` is both).
fn is_recorded_op(entry: &Value, class: &str, cfg: &Map<String, Value>) -> bool {
    match entry.get("module").and_then(Value::as_str) {
        Some(m) => m.contains(".ops"),
        None => MaskOp::from_class(class, -1).is_some() && !cfg.contains_key("trainable"),
    }
}

/// Parses one layer entry and reads its weights. `path` is its `.keras` object path
/// (`layers/gru`).
fn build_layer<T: Float>(
    entry: &Value,
    path: &str,
    w: &mut WeightReader,
) -> Result<ModelLayer<T>, Error> {
    let Some(rewritten) = legacy_axis(entry) else {
        return build_layer_in(entry, path, w, None);
    };
    // Keras builds the layer with the rewritten axis. Where that cannot be built (the saved
    // weights or statistics have the original axes' shape, and Keras' own load fails), the
    // layer is built as the file describes it.
    let used = w.used_layers;
    match build_layer_in(&rewritten, path, w, None) {
        Ok(layer) => Ok(layer),
        Err(e) => {
            w.used_layers = used;
            build_layer_in(entry, path, w, None).map_err(|_| e)
        }
    }
}

/// What Keras' legacy deserializer makes of a model's layer entry that carries no `module`
/// (legacy `.h5` configs): `saving_utils.model_from_config` pops the layer's `axis` and puts
/// back only `int(axis[0])` for a one-element list or `int(axis)` for a number, so a list of
/// several axes, an empty one or `null` leaves the layer at its default axis (a `Softmax`
/// over `[1, 2]` saved to `.h5` comes back as one over the last axis). `None` when the entry is
/// kept as it is. (Wrapped layers are deserialized by their wrapper, untouched.)
fn legacy_axis(entry: &Value) -> Option<Value> {
    if entry.get("module").is_some() {
        return None;
    }
    let axis = entry.get("config")?.get("axis")?;
    let as_int = |v: &Value| match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(v.clone()),
        // Python's `int` truncates a float towards zero.
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| serde_json::json!(f.trunc() as i64)),
        _ => None,
    };
    let kept = match axis {
        Value::Array(a) if a.len() == 1 => match as_int(&a[0]) {
            Some(v) => Some(v),
            // `int()` of something else fails in Keras: left for the layer to refuse.
            None => return None,
        },
        Value::Number(_) => as_int(axis),
        _ => None,
    };
    if kept.as_ref() == Some(axis) {
        return None;
    }
    let mut out = entry.clone();
    let cfg = out.get_mut("config")?.as_object_mut()?;
    match kept {
        Some(v) => cfg.insert("axis".into(), v),
        None => cfg.remove("axis"),
    };
    Some(out)
}

/// [`build_layer`] for a layer whose legacy `.h5` weights sit under another layer's group
/// (`legacy_group`: the `TimeDistributed` wrapper around it), or under its own name (`None`).
fn build_layer_in<T: Float>(
    entry: &Value,
    path: &str,
    w: &mut WeightReader,
    legacy_group: Option<&str>,
) -> Result<ModelLayer<T>, Error> {
    let (class, cfg) = class_and_config(entry)?
        .ok_or_else(|| ConfigError::invalid("layer", "null", "a layer object"))?;
    let name = layer_name(&cfg, &to_snake_case(&class))?;
    let trainable = get_bool(&cfg, "trainable", true)?;
    if class == "TimeDistributed" {
        return time_distributed(&cfg, name, trainable, path, w);
    }
    let with_name = |e: Error| -> Error {
        match e {
            Error::Config(c) => ConfigError::in_layer(format!("{name} ({class})"), c).into(),
            // Weight shapes that do not fit the config: name the layer as well as the array.
            Error::Shape(ShapeError::Mismatch { arg, got, expected }) => ShapeError::Mismatch {
                arg: format!("{name}/{arg}"),
                got,
                expected,
            }
            .into(),
            other => other,
        }
    };
    let layer = match class.as_str() {
        "InputLayer" => Layer::Input {
            batch_shape: batch_shape(&cfg)?.ok_or_else(|| ConfigError::invalid(format!("InputLayer `{name}`"), "no batch_shape", "a batch_shape"))?,
        },
        "Masking" => Layer::Masking { mask_value: get_f64(&cfg, "mask_value", 0.0)? },
        "Dropout" => Layer::Dropout {
            rate: get_f64(&cfg, "rate", 0.0)?,
            seed: get_u64(&cfg, "seed")?,
        },
        "Activation" => Layer::Activation(activation_of(&cfg, "activation", crate::Activation::Linear)?),
        "LayerNormalization" => {
            let nc = LayerNormConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let n_weights = usize::from(nc.scale) + usize::from(nc.center);
            let paths: Vec<String> = (0..n_weights).map(|k| format!("{path}/vars/{k}")).collect();
            // Neither `center` nor `scale`: no weights (and no arrays in the file to read).
            let arrays = if paths.is_empty() {
                Vec::new()
            } else {
                w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)?
            };
            let mut arr = arrays.into_iter();
            let gamma = if nc.scale { arr.next() } else { None };
            let beta = if nc.center { arr.next() } else { None };
            Layer::LayerNorm(LayerNorm::from_weights(nc, gamma, beta).map_err(with_name)?)
        }
        "PReLU" => {
            let pc = PReluConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let alpha = w.single_array::<T>(legacy_group.unwrap_or(&name), path, "PReLU", "alpha")?;
            Layer::PRelu(PRelu::from_weights(pc, alpha).map_err(with_name)?)
        }
        "RMSNormalization" => {
            let rc = RmsNormConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let scale = w.single_array::<T>(legacy_group.unwrap_or(&name), path, "RMSNormalization", "scale")?;
            Layer::RmsNorm(RmsNorm::from_weights(rc, scale).map_err(with_name)?)
        }
        "GlobalAveragePooling1D" | "GlobalAvgPool1D" => {
            Layer::GlobalPooling(GlobalPooling1D::from_keras(PoolOp::Average, &cfg).map_err(|e| with_name(e.into()))?)
        }
        "GlobalMaxPooling1D" | "GlobalMaxPool1D" => {
            Layer::GlobalPooling(GlobalPooling1D::from_keras(PoolOp::Max, &cfg).map_err(|e| with_name(e.into()))?)
        }
        "BatchNormalization" => {
            let bc = BatchNormConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let n = usize::from(bc.scale) + usize::from(bc.center) + 2;
            let paths: Vec<String> = (0..n).map(|k| format!("{path}/vars/{k}")).collect();
            let mut arr = w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)?.into_iter();
            let gamma = if bc.scale { arr.next() } else { None };
            let beta = if bc.center { arr.next() } else { None };
            let (Some(mean), Some(var)) = (arr.next(), arr.next()) else {
                return Err(ConfigError::invalid(format!("BatchNormalization `{name}`"), "no moving statistics", "moving_mean and moving_variance").into());
            };
            Layer::BatchNorm(BatchNorm::from_weights(bc, gamma, beta, mean, var).map_err(with_name)?)
        }
        "Conv1D" | "Convolution1D" => {
            let cc = Conv1DConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let mut paths = vec![format!("{path}/vars/0")];
            if cc.use_bias {
                paths.push(format!("{path}/vars/1"));
            }
            let mut arr = w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)?.into_iter();
            let (kernel, bias) = (arr.next(), arr.next());
            let kernel = kernel.ok_or_else(|| ConfigError::invalid(format!("Conv1D `{name}`"), "no kernel", "a kernel"))?;
            Layer::Conv1D(Conv1D::from_weights(cc, kernel, bias).map_err(with_name)?)
        }
        "Normalization" => {
            let nc = NormalizationConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            if nc.given.is_some() {
                Layer::Normalization(Normalization::from_config(nc).map_err(with_name)?)
            } else {
                // mean, variance and the int64 count (read as f64: exact below 2^53).
                let paths: Vec<String> = (0..3).map(|k| format!("{path}/vars/{k}")).collect();
                let mut arr = w.layer_arrays::<f64>(legacy_group.unwrap_or(&name), &paths)?.into_iter();
                let (Some(mean), Some(var), Some(count)) = (arr.next(), arr.next(), arr.next()) else {
                    return Err(ConfigError::invalid(format!("Normalization `{name}`"), "fewer than 3 variables", "mean, variance and count").into());
                };
                let count = match count.data() {
                    [c] if c.fract() == 0.0 && c.abs() < 9.0e15 => *c as i64,
                    _ => return Err(ShapeError::mismatch(format!("{name}/count"), count.shape(), "one integer (an int64 scalar)").into()),
                };
                Layer::Normalization(Normalization::from_weights(nc, mean.cast(), var.cast(), count).map_err(with_name)?)
            }
        }
        "SpatialDropout1D" | "GaussianNoise" | "GaussianDropout" | "AlphaDropout" => Layer::Noise(
            Noise::from_keras(&class, &cfg)
                .map_err(|e| with_name(e.into()))?
                .ok_or_else(|| ConfigError::unsupported("layer", class.clone()))?,
        ),
        "ActivityRegularization" => Layer::ActivityRegularization(Regularizer::L1L2 {
            l1: non_negative(&cfg, "l1")?,
            l2: non_negative(&cfg, "l2")?,
        }),
        "Attention" | "AdditiveAttention" => {
            let a = Attention::<T>::from_keras(&class, &cfg).map_err(|e| with_name(e.into()))?;
            let paths: Vec<String> = (0..a.weight_count()).map(|k| format!("{path}/vars/{k}")).collect();
            let arrays = if paths.is_empty() { Vec::new() } else { w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)? };
            Layer::Attention(a.with_weights(arrays).map_err(with_name)?)
        }
        "MultiHeadAttention" => {
            let mc = MultiHeadAttentionConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let parts: &[usize] = if mc.use_bias { &[0, 1] } else { &[0] };
            let paths: Vec<String> = ["query_dense", "key_dense", "value_dense", "output_dense"]
                .iter()
                .flat_map(|sub| parts.iter().map(move |k| format!("{path}/{sub}/vars/{k}")))
                .collect();
            let arrays = w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)?;
            Layer::MultiHeadAttention(MultiHeadAttention::from_weights(mc, arrays).map_err(with_name)?)
        }
        "MaxPooling1D" | "MaxPool1D" => Layer::Pooling(Pooling1D::from_keras(WindowOp::Max, &cfg).map_err(|e| with_name(e.into()))?),
        "AveragePooling1D" | "AvgPool1D" => {
            Layer::Pooling(Pooling1D::from_keras(WindowOp::Average, &cfg).map_err(|e| with_name(e.into()))?)
        }
        "Permute" => Layer::Permute(Permute::from_keras(&cfg).map_err(|e| with_name(e.into()))?),
        "Reshape" => Layer::Reshape(Reshape::from_keras(&cfg).map_err(|e| with_name(e.into()))?),
        "Flatten" => Layer::Flatten(Flatten::from_keras(&cfg).map_err(|e| with_name(e.into()))?),
        "RepeatVector" => Layer::RepeatVector(RepeatVector::from_keras(&cfg).map_err(|e| with_name(e.into()))?),
        "Dense" => {
            let dc = DenseConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let mut paths = vec![format!("{path}/vars/0")];
            if dc.use_bias {
                paths.push(format!("{path}/vars/1"));
            }
            let mut arr = w.layer_arrays::<T>(legacy_group.unwrap_or(&name), &paths)?.into_iter();
            let (kernel, bias) = (arr.next(), arr.next());
            let kernel = kernel.ok_or_else(|| ConfigError::invalid(format!("Dense `{name}`"), "no kernel", "a kernel"))?;
            Layer::Dense(Dense::from_weights(dc, kernel, bias)?)
        }
        "Embedding" => {
            let ec = EmbeddingConfig::from_keras(&cfg).map_err(|e| with_name(e.into()))?;
            let table = w.single_array::<T>(legacy_group.unwrap_or(&name), path, "Embedding", "embeddings")?;
            Layer::Embedding(Embedding::from_weights(ec, table).map_err(with_name)?)
        }
        // An op Keras records in the graph (`keras.src.ops…`; some share a merge layer's class
        // name, like `Concatenate`), other than the two of Masking's and Embedding's masks.
        other if !matches!(other, "NotEqual" | "Any") && is_recorded_op(entry, other, &cfg) => {
            let axis = axis_of(&cfg, other)?;
            let bool_dtype = matches!(cfg.get("dtype").and_then(Value::as_str), None | Some("bool"));
            match MaskOp::from_class(other, axis).filter(|_| bool_dtype) {
                Some(op) => Layer::MaskOp(op),
                None => {
                    return Err(ConfigError::unsupported(
                        "operation",
                        format!("`{other}` (`{name}`): of the operations Keras records in a model graph, grucell runs those of masks (NotEqual, Any, ExpandDims, ZerosLike/OnesLike of bool, LogicalOr, Concatenate, ConvertToTensor)"),
                    )
                    .into())
                }
            }
        }
        "Dot" => Layer::Dot(Dot::from_keras(&cfg).map_err(|e| with_name(e.into()))?),
        "Concatenate" | "Add" | "Subtract" | "Multiply" | "Average" | "Maximum" | "Minimum" => {
            let axis = axis_of(&cfg, &class)?;
            Layer::Merge(Merge::new(MergeOp::from_class(&class, axis).ok_or_else(|| ConfigError::unsupported("layer", class.clone()))?))
        }
        "GRU" | "RNN" => Layer::Rnn(rnn_layer(&class, &cfg, &name, path, w, None).map_err(with_name)?),
        "Bidirectional" => Layer::Bidirectional(bidirectional(&cfg, &name, path, w).map_err(with_name)?),
        "NotEqual" => Layer::NotEqual { value: 0.0 },
        "Any" => {
            let axis = match cfg.get("axis") {
                None | Some(Value::Null) => -1,
                Some(v) => v.as_i64().ok_or_else(|| ConfigError::invalid("Any.axis", v, "an integer"))? as isize,
            };
            if get_bool(&cfg, "keepdims", false)? {
                return Err(ConfigError::unsupported("Any option", "keepdims = true").into());
            }
            Layer::Any { axis }
        }
        other => match (
            Pointwise::from_keras(other, &cfg).map_err(|e| with_name(e.into()))?,
            StepLayer::from_keras(other, &cfg).map_err(|e| with_name(e.into()))?,
        ) {
            (Some(p), _) => Layer::Pointwise(p),
            (None, Some(l)) => Layer::Steps(l),
            (None, None) => return Err(ConfigError::unsupported(
                "layer",
                format!("`{other}` (layer `{name}`); supported: InputLayer, Masking, Embedding, GRU, RNN(GRUCell | StackedRNNCells), Bidirectional, TimeDistributed(Dense | Dropout | Activation | LayerNormalization | PReLU | the pointwise layers), Dense, Dropout, Activation, ReLU, LeakyReLU, PReLU, ELU, Softmax, Identity, Rescaling, UnitNormalization, Normalization, SpatialDropout1D, GaussianNoise, GaussianDropout, AlphaDropout, ActivityRegularization, LayerNormalization, RMSNormalization, BatchNormalization, Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D, Flatten, RepeatVector, Permute, Reshape, ZeroPadding1D, Cropping1D, UpSampling1D, Attention, AdditiveAttention, MultiHeadAttention, Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum, Dot"),
            )
            .into()),
        },
    };
    // Every other layer's activity penalty (GRU/RNN, Dense and Embedding hold their own;
    // ActivityRegularization's is its l1 and l2).
    let activity_regularizer = match layer {
        Layer::Rnn(_)
        | Layer::Dense(_)
        | Layer::Embedding(_)
        | Layer::ActivityRegularization(_) => None,
        _ => cfg
            .get("activity_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)
            .map_err(|e| with_name(e.into()))?,
    };
    Ok(ModelLayer {
        name,
        class_name: class,
        trainable,
        layer,
        time_distributed: None,
        activity_regularizer,
        drops_mask: false,
    })
}

/// `TimeDistributed(layer)` for the layers whose per-step application is the layer itself on
/// the sequence (see [`Wrapped`]); its variables are under `path/layer` (`.keras`) or the
/// wrapper's group (legacy `.h5`).
fn time_distributed<T: Float>(
    cfg: &Map<String, Value>,
    name: String,
    trainable: bool,
    path: &str,
    w: &mut WeightReader,
) -> Result<ModelLayer<T>, Error> {
    let entry = cfg.get("layer").filter(|v| !v.is_null()).ok_or_else(|| {
        ConfigError::invalid(
            format!("TimeDistributed `{name}`"),
            "no `layer`",
            "the wrapped layer",
        )
    })?;
    let (class, _) = class_and_config(entry)?.ok_or_else(|| {
        ConfigError::invalid(
            format!("TimeDistributed `{name}`"),
            "null `layer`",
            "the wrapped layer",
        )
    })?;
    if !matches!(
        class.as_str(),
        "Dense"
            | "Dropout"
            | "Activation"
            | "LayerNormalization"
            | "ReLU"
            | "LeakyReLU"
            | "ELU"
            | "Softmax"
            | "Identity"
            | "Rescaling"
            | "UnitNormalization"
            | "PReLU"
    ) {
        return Err(ConfigError::unsupported(
            "layer inside TimeDistributed",
            format!(
                "`{class}` (in `{name}`); supported: Dense, Dropout, Activation, LayerNormalization, ReLU, LeakyReLU, PReLU, ELU, Softmax, Identity, Rescaling, UnitNormalization"
            ),
        )
        .into());
    }
    let mut entry = entry.clone();
    if let Some(cfg) = entry.get_mut("config").and_then(Value::as_object_mut) {
        shift_axis(cfg, 1);
    }
    let inner = build_layer_in::<T>(&entry, &format!("{path}/layer"), w, Some(&name))?;
    if let Layer::Pointwise(p) = &inner.layer {
        if !p.per_step() {
            return Err(ConfigError::unsupported(
                format!("{}.axis inside TimeDistributed `{name}`", p.class_name()),
                "a negative axis other than -1 (it may count into the merged batch and time axis)",
            )
            .into());
        }
    }
    Ok(ModelLayer {
        name,
        class_name: "TimeDistributed".into(),
        // The wrapper's own flag; the wrapped layer's decides training (ModelLayer::trainable).
        trainable,
        layer: inner.layer,
        // Keras 3 calls the wrapped layer's `call` (no penalty of its own); the wrapper's
        // penalty is not read.
        activity_regularizer: None,
        drops_mask: false,
        time_distributed: Some(Wrapped {
            name: inner.name,
            class_name: inner.class_name,
            trainable: inner.trainable,
        }),
    })
}

/// Moves the non-negative `axis` values (an integer or a list) of a layer config by `by`. The
/// layer inside `TimeDistributed` sees `(batch · time, …)`, so its axis `k ≥ 1` is the
/// sequence's axis `k + 1` (TF-Keras 2 writes the axes a layer was built with that way, e.g.
/// `LayerNormalization(axis=[1])`); negative axes count from the end in both. The loader moves a
/// wrapped layer's axes by `+1`, the writer by `−1`.
pub(crate) fn shift_axis(cfg: &mut Map<String, Value>, by: i64) {
    let shift = |v: &mut Value| {
        if let Some(k) = v.as_i64().filter(|&k| k > 0) {
            *v = Value::from(k.saturating_add(by));
        }
    };
    match cfg.get_mut("axis") {
        Some(Value::Array(list)) => list.iter_mut().for_each(shift),
        Some(other) => shift(other),
        None => {}
    }
}

/// Reads a GRU cell's weights given its vars path.
fn cell_with_weights<T: Float>(
    cfg: GruCellConfig,
    owner: &str,
    w: &mut Vec<Tensor<T>>,
) -> Result<GruCell<T>, Error> {
    let n = if cfg.use_bias { 3 } else { 2 };
    if w.len() < n {
        return Err(ConfigError::invalid(
            format!("weights of `{owner}`"),
            format!("{} arrays", w.len()),
            format!("{n} for cell `{}`", cfg.name),
        )
        .into());
    }
    let mut it = w.drain(..n);
    let (k, r, b) = (it.next(), it.next(), it.next());
    drop(it);
    let (Some(k), Some(r)) = (k, r) else {
        return Err(ConfigError::invalid(
            format!("weights of `{owner}`"),
            "too few arrays",
            "kernel and recurrent_kernel",
        )
        .into());
    };
    GruCell::from_weights(cfg, k, r, b)
}

/// `GRU(...)` or `RNN(cell=GRUCell | StackedRNNCells)` with its weights under `path`.
/// `legacy_arrays`, when given, supplies the arrays (Bidirectional in legacy h5 reads both
/// directions at once).
fn rnn_layer<T: Float>(
    class: &str,
    cfg: &Map<String, Value>,
    name: &str,
    path: &str,
    w: &mut WeightReader,
    legacy_arrays: Option<&mut Vec<Tensor<T>>>,
) -> Result<Rnn<T>, Error> {
    // Cell configs and the dataset paths of their variables, in Keras' order.
    let mut cells: Vec<(GruCellConfig, String)> = Vec::new();
    let kind = if class == "GRU" {
        let mut c = GruCellConfig::from_keras(cfg)?;
        c.name = "gru_cell".into();
        cells.push((c, format!("{path}/cell/vars")));
        RnnKind::Gru
    } else {
        let cell = cfg.get("cell").ok_or_else(|| {
            ConfigError::invalid("RNN.cell", "missing", "a GRUCell or StackedRNNCells")
        })?;
        let cell_list: Vec<Value> = match cell {
            Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        let mut flat = Vec::new();
        let mut stacked = cell_list.len() > 1;
        for c in &cell_list {
            let (cc, ccfg) = class_and_config(c)?
                .ok_or_else(|| ConfigError::invalid("RNN.cell", "null", "a cell"))?;
            match cc.as_str() {
                "GRUCell" => flat.push(ccfg),
                "StackedRNNCells" => {
                    stacked = true;
                    let list = ccfg.get("cells").and_then(Value::as_array).ok_or_else(|| {
                        ConfigError::invalid("StackedRNNCells.cells", "missing", "a list of cells")
                    })?;
                    for sc in list {
                        let (scc, sccfg) = class_and_config(sc)?.ok_or_else(|| {
                            ConfigError::invalid("StackedRNNCells.cells", "null", "a cell")
                        })?;
                        if scc != "GRUCell" {
                            return Err(ConfigError::unsupported(
                                "RNN cell",
                                format!("`{scc}` in StackedRNNCells (only GRUCell)"),
                            )
                            .into());
                        }
                        flat.push(sccfg);
                    }
                }
                other => {
                    return Err(ConfigError::unsupported(
                        "RNN cell",
                        format!("`{other}` (only GRUCell and StackedRNNCells of GRUCell)"),
                    )
                    .into())
                }
            }
        }
        if flat.is_empty() {
            return Err(
                ConfigError::invalid("RNN.cell", "no cells", "at least one GRUCell").into(),
            );
        }
        let mut namer = Namer::default();
        for c in flat {
            let gc = GruCellConfig::from_keras(&c)?;
            let p = if stacked {
                format!("{path}/cell/cells/{}/vars", namer.next("GRUCell"))
            } else {
                format!("{path}/cell/vars")
            };
            cells.push((gc, p));
        }
        if stacked {
            RnnKind::RnnStacked
        } else {
            RnnKind::RnnCell
        }
    };
    let mut built = Vec::with_capacity(cells.len());
    match legacy_arrays {
        Some(arrays) => {
            for (c, _) in cells {
                built.push(cell_with_weights(c, name, arrays)?);
            }
        }
        None => {
            let mut paths = Vec::new();
            for (c, p) in &cells {
                let n = if c.use_bias { 3 } else { 2 };
                paths.extend((0..n).map(|i| format!("{p}/{i}")));
            }
            let mut arrays = w.layer_arrays::<T>(name, &paths)?;
            for (c, _) in cells {
                built.push(cell_with_weights(c, name, &mut arrays)?);
            }
        }
    }
    let activity = cfg
        .get("activity_regularizer")
        .map_or(Ok(None), Regularizer::from_keras)?;
    Ok(Rnn::from_cells(built, kind)?
        .name(name)
        .return_sequences(get_bool(cfg, "return_sequences", false)?)
        .return_state(get_bool(cfg, "return_state", false)?)
        .go_backwards(get_bool(cfg, "go_backwards", false)?)
        .stateful(get_bool(cfg, "stateful", false)?)
        .zero_output_for_mask(get_bool(cfg, "zero_output_for_mask", false)?)
        .unroll(get_bool(cfg, "unroll", false)?)
        .activity_regularizer(activity))
}

fn bidirectional<T: Float>(
    cfg: &Map<String, Value>,
    name: &str,
    path: &str,
    w: &mut WeightReader,
) -> Result<Bidirectional<T>, Error> {
    let merge = MergeMode::from_keras(get_str(cfg, "merge_mode")?)?;
    let fwd = cfg.get("layer").ok_or_else(|| {
        ConfigError::invalid("Bidirectional.layer", "missing", "a GRU or RNN layer")
    })?;
    let (fc, fcfg) = class_and_config(fwd)?
        .ok_or_else(|| ConfigError::invalid("Bidirectional.layer", "null", "a layer"))?;
    let (bc, bcfg) = match cfg.get("backward_layer").filter(|v| !v.is_null()) {
        Some(b) => class_and_config(b)?.ok_or_else(|| {
            ConfigError::invalid("Bidirectional.backward_layer", "null", "a layer")
        })?,
        None => {
            // Keras builds the backward layer as a copy with go_backwards flipped.
            let mut c = fcfg.clone();
            c.insert(
                "go_backwards".into(),
                Value::Bool(!get_bool(&fcfg, "go_backwards", false)?),
            );
            (fc.clone(), c)
        }
    };
    for c in [&fc, &bc] {
        if c != "GRU" && c != "RNN" {
            return Err(ConfigError::unsupported(
                "Bidirectional layer",
                format!("`{c}` (only GRU and RNN of GRU cells)"),
            )
            .into());
        }
    }
    let fname = layer_name(&fcfg, "forward_layer")?;
    let bname = layer_name(&bcfg, "backward_layer")?;
    let (f, b) = match &w.file.weights {
        KerasWeights::ByPath(_) => (
            rnn_layer::<T>(&fc, &fcfg, name, &format!("{path}/forward_layer"), w, None)?,
            rnn_layer::<T>(&bc, &bcfg, name, &format!("{path}/backward_layer"), w, None)?,
        ),
        KerasWeights::ByLayer { .. } => {
            // Legacy h5: one list for the wrapper, forward weights then backward.
            let count = |c: &str, m: &Map<String, Value>| -> Result<usize, Error> {
                Ok(rnn_cell_configs(c, m)?
                    .iter()
                    .map(|c| if c.use_bias { 3 } else { 2 })
                    .sum())
            };
            let n = count(&fc, &fcfg)? + count(&bc, &bcfg)?;
            let paths: Vec<String> = (0..n).map(|i| format!("{path}/{i}")).collect();
            let mut arrays = w.layer_arrays::<T>(name, &paths)?;
            let f = rnn_layer::<T>(&fc, &fcfg, name, path, w, Some(&mut arrays))?;
            let b = rnn_layer::<T>(&bc, &bcfg, name, path, w, Some(&mut arrays))?;
            (f, b)
        }
    };
    let mut bi = Bidirectional::new(f.name(fname), b.name(bname), merge)?;
    bi.name = name.to_string();
    Ok(bi)
}

/// Cell configs of a GRU/RNN layer config (to count weights).
fn rnn_cell_configs(class: &str, cfg: &Map<String, Value>) -> Result<Vec<GruCellConfig>, Error> {
    if class == "GRU" {
        return Ok(vec![GruCellConfig::from_keras(cfg)?]);
    }
    let cell = cfg
        .get("cell")
        .ok_or_else(|| ConfigError::invalid("RNN.cell", "missing", "a cell"))?;
    let mut out = Vec::new();
    let list: Vec<Value> = match cell {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    for c in &list {
        if let Some((cc, ccfg)) = class_and_config(c)? {
            if cc == "StackedRNNCells" {
                for sc in ccfg
                    .get("cells")
                    .and_then(Value::as_array)
                    .map_or(&[][..], |v| v.as_slice())
                {
                    if let Some((_, sccfg)) = class_and_config(sc)? {
                        out.push(GruCellConfig::from_keras(&sccfg)?);
                    }
                }
            } else {
                out.push(GruCellConfig::from_keras(&ccfg)?);
            }
        }
    }
    Ok(out)
}

/// The model config's `layers` list; the error shows what is there instead (shortened).
fn layer_list<'a>(cfg: &'a Map<String, Value>, class: &str) -> Result<&'a Vec<Value>, ConfigError> {
    match cfg.get("layers") {
        Some(Value::Array(list)) => Ok(list),
        Some(other) => {
            let text = other.to_string();
            let shown = match text.char_indices().nth(80) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text,
            };
            Err(ConfigError::invalid(
                format!("{class}.layers"),
                shown,
                "a list of layers",
            ))
        }
        None => Err(ConfigError::invalid(
            format!("{class}.layers"),
            "missing",
            "a list of layers",
        )),
    }
}

fn is_op(entry: &Value) -> bool {
    entry
        .get("module")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("keras.src.ops"))
}

fn sequential<T: Float>(cfg: &Map<String, Value>, w: &mut WeightReader) -> Result<Model<T>, Error> {
    let name = layer_name(cfg, "sequential")?;
    let list = layer_list(cfg, "Sequential")?;
    if list.len() > 10_000 {
        return Err(
            ConfigError::invalid("Sequential.layers", list.len(), "at most 10000 layers").into(),
        );
    }
    let mut layers: Vec<ModelLayer<T>> = Vec::new();
    let mut namer = Namer::default();
    for entry in list {
        let (class, _) = class_and_config(entry)?
            .ok_or_else(|| ConfigError::invalid("layer", "null", "a layer object"))?;
        let path = if class == "InputLayer" {
            String::new()
        } else {
            format!("layers/{}", namer.next(&class))
        };
        layers.push(build_layer(entry, &path, w)?);
    }
    if !matches!(layers.first().map(|l| &l.layer), Some(Layer::Input { .. })) {
        // No InputLayer: take the shape from build_input_shape or the first layer's config.
        let shape = batch_shape(cfg)?
            .or(cfg.get("build_input_shape").and_then(|v| {
                batch_shape(&Map::from_iter([("batch_shape".to_string(), v.clone())]))
                    .ok()
                    .flatten()
            }))
            .or_else(|| {
                list.first()
                    .and_then(|e| e.get("config"))
                    .and_then(Value::as_object)
                    .and_then(|c| batch_shape(c).ok().flatten())
            })
            .ok_or_else(|| {
                ConfigError::invalid(
                    "Sequential",
                    "no input shape",
                    "an InputLayer or build_input_shape",
                )
            })?;
        layers.insert(
            0,
            ModelLayer {
                name: "input_layer".into(),
                class_name: "InputLayer".into(),
                trainable: true,
                layer: Layer::Input { batch_shape: shape },
                time_distributed: None,
                activity_regularizer: None,
                drops_mask: false,
            },
        );
    }
    let mut nodes = vec![Node {
        layer: 0,
        call: 0,
        args: vec![],
        initial_state: vec![],
        mask: None,
        states_keep_mask: false,
        attention: Default::default(),
    }];
    for i in 1..layers.len() {
        nodes.push(Node {
            layer: i,
            call: 0,
            args: vec![NodeArg::Tensor(TensorRef {
                layer: i - 1,
                node: 0,
                index: 0,
            })],
            initial_state: vec![],
            mask: None,
            states_keep_mask: false,
            attention: Default::default(),
        });
    }
    let last = layers.len() - 1;
    let n_out = match &layers[last].layer {
        Layer::Rnn(r) if r.returns_state() => 1 + r.cells().len(),
        Layer::Bidirectional(b) => {
            (if b.merge_mode().is_some() { 1 } else { 2 })
                + if b.forward.returns_state() {
                    2 * b.forward.cells().len()
                } else {
                    0
                }
        }
        _ => 1,
    };
    let outputs = (0..n_out)
        .map(|index| TensorRef {
            layer: last,
            node: 0,
            index,
        })
        .collect();
    Model::new(
        name,
        ModelKind::Sequential,
        layers,
        nodes,
        vec![TensorRef {
            layer: 0,
            node: 0,
            index: 0,
        }],
        outputs,
    )
}

/// Parses `[name, node, index]` (or a list of them).
fn history_triples(v: &Value) -> Result<Vec<(String, usize, usize)>, ConfigError> {
    let triple = |t: &Value| -> Result<(String, usize, usize), ConfigError> {
        let a = t.as_array().filter(|a| a.len() >= 3).ok_or_else(|| {
            ConfigError::invalid(
                "tensor reference",
                t,
                "[layer_name, node_index, tensor_index]",
            )
        })?;
        let name = a[0]
            .as_str()
            .ok_or_else(|| ConfigError::invalid("tensor reference", t, "a layer name first"))?;
        let n = a[1]
            .as_u64()
            .ok_or_else(|| ConfigError::invalid("tensor reference", t, "an integer node index"))?;
        let i = a[2].as_u64().ok_or_else(|| {
            ConfigError::invalid("tensor reference", t, "an integer tensor index")
        })?;
        Ok((name.to_string(), n as usize, i as usize))
    };
    match v.as_array() {
        Some(a) if a.first().is_some_and(Value::is_string) => Ok(vec![triple(v)?]),
        Some(a) => a.iter().map(triple).collect(),
        None => Err(ConfigError::invalid(
            "input_layers/output_layers",
            v,
            "a list",
        )),
    }
}

fn functional<T: Float>(cfg: &Map<String, Value>, w: &mut WeightReader) -> Result<Model<T>, Error> {
    let name = layer_name(cfg, "functional")?;
    let list = layer_list(cfg, "Functional")?;
    if list.len() > 10_000 {
        return Err(
            ConfigError::invalid("Functional.layers", list.len(), "at most 10000 layers").into(),
        );
    }
    let mut namer = Namer::default();
    let mut layers: Vec<ModelLayer<T>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for entry in list {
        let (class, _) = class_and_config(entry)?
            .ok_or_else(|| ConfigError::invalid("layer", "null", "a layer object"))?;
        let path = if is_op(entry) {
            String::new()
        } else {
            format!("layers/{}", namer.next(&class))
        };
        let mut ml = build_layer::<T>(entry, &path, w)?;
        if let Some(n) = entry.get("name").and_then(Value::as_str) {
            ml.name = n.to_string();
        }
        if index.insert(ml.name.clone(), layers.len()).is_some() {
            return Err(ConfigError::invalid("layer name", &ml.name, "unique layer names").into());
        }
        layers.push(ml);
    }
    // Calls, in the order the layer list gives them (Keras writes layers topologically).
    let mut nodes: Vec<Node> = Vec::new();
    for (li, entry) in list.iter().enumerate() {
        let inbound = entry
            .get("inbound_nodes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if matches!(layers[li].layer, Layer::Input { .. }) {
            nodes.push(Node {
                layer: li,
                call: 0,
                args: vec![],
                initial_state: vec![],
                mask: None,
                states_keep_mask: false,
                attention: Default::default(),
            });
            continue;
        }
        for (call, n) in inbound.iter().enumerate() {
            let mut node = parse_node(n, &index)?;
            node.layer = li;
            node.call = call;
            // TF-Keras 2 passes an RNN's initial states as extra inputs of the call
            // (`[[x], [h0], …]`); Keras 3 as the `initial_state` keyword.
            if n.is_array()
                && matches!(layers[li].layer, Layer::Rnn(_) | Layer::Bidirectional(_))
                && node.args.len() > 1
            {
                for a in node.args.split_off(1) {
                    if let NodeArg::Tensor(r) = a {
                        node.initial_state.push(r);
                    }
                }
            }
            // And there the input's mask still applies to a call with states.
            node.states_keep_mask = n.is_array() && !node.initial_state.is_empty();
            if let (Layer::NotEqual { value }, Some(NodeArg::Scalar(s))) =
                (&mut layers[li].layer, node.args.get(1))
            {
                *value = *s;
            }
            nodes.push(node);
        }
    }
    let refs = |key: &str| -> Result<Vec<TensorRef>, Error> {
        let v = cfg.get(key).ok_or_else(|| {
            ConfigError::invalid(
                format!("Functional.{key}"),
                "missing",
                "a list of [layer, node, index]",
            )
        })?;
        history_triples(v)?
            .into_iter()
            .map(|(n, node, i)| {
                let layer = *index.get(&n).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("Functional.{key}"),
                        &n,
                        "the name of a layer in the model",
                    )
                })?;
                Ok(TensorRef {
                    layer,
                    node,
                    index: i,
                })
            })
            .collect()
    };
    let inputs = refs("input_layers")?;
    let outputs = refs("output_layers")?;
    // Order calls so every argument comes first (Keras' list is already topological; this guards
    // against files that are not).
    let nodes = toposort(nodes)?;
    Model::new(name, ModelKind::Functional, layers, nodes, inputs, outputs)
}

fn toposort(mut pending: Vec<Node>) -> Result<Vec<Node>, Error> {
    let mut done = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for n in pending {
            let deps_ok = n
                .args
                .iter()
                .filter_map(|a| {
                    if let NodeArg::Tensor(t) = a {
                        Some(*t)
                    } else {
                        None
                    }
                })
                .chain(n.initial_state.iter().copied())
                .chain(n.mask)
                .all(|r| done.contains(&(r.layer, r.node)));
            if deps_ok {
                done.insert((n.layer, n.call));
                out.push(n);
            } else {
                rest.push(n);
            }
        }
        if rest.len() == before {
            return Err(ConfigError::invalid(
                "model graph",
                "a cycle or a reference to a missing call",
                "an acyclic graph",
            )
            .into());
        }
        pending = rest;
    }
    Ok(out)
}

/// An attention call's options from its keyword arguments (absent: false).
fn attention_call(kw: &Map<String, Value>) -> Result<AttentionCall, ConfigError> {
    let flag = |k: &str| match kw.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ConfigError::invalid(
            format!("call argument `{k}`"),
            v,
            "true or false",
        )),
    };
    Ok(AttentionCall {
        use_causal_mask: flag("use_causal_mask")?,
        return_attention_scores: flag("return_attention_scores")?,
    })
}

/// Parses one inbound node: Keras 3 `{"args": [...], "kwargs": {...}}` or TF-Keras 2
/// `[[name, node, index, kwargs], ...]`.
fn parse_node(n: &Value, index: &HashMap<String, usize>) -> Result<Node, Error> {
    let tensor_ref = |v: &Value| -> Result<Option<TensorRef>, Error> {
        let hist = match v {
            Value::Object(o)
                if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
            {
                o.get("config")
                    .and_then(|c| c.get("keras_history"))
                    .cloned()
            }
            _ => None,
        };
        match hist {
            None => Ok(None),
            Some(h) => {
                let t = history_triples(&h)?;
                let (name, node, i) = t.into_iter().next().ok_or_else(|| {
                    ConfigError::invalid("keras_history", &h, "[layer, node, index]")
                })?;
                let layer = *index.get(&name).ok_or_else(|| {
                    ConfigError::invalid("keras_history", &name, "the name of a layer in the model")
                })?;
                Ok(Some(TensorRef {
                    layer,
                    node,
                    index: i,
                }))
            }
        }
    };
    let refs_of = |v: &Value| -> Result<Vec<TensorRef>, Error> {
        match v {
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    tensor_ref(x)?.ok_or_else(|| {
                        ConfigError::invalid("tensor list", x, "Keras tensors").into()
                    })
                })
                .collect(),
            Value::Null => Ok(vec![]),
            x => Ok(tensor_ref(x)?.into_iter().collect()),
        }
    };
    let mut node = Node {
        layer: 0,
        call: 0,
        args: vec![],
        initial_state: vec![],
        mask: None,
        states_keep_mask: false,
        attention: Default::default(),
    };
    match n {
        Value::Object(o) => {
            for a in o
                .get("args")
                .and_then(Value::as_array)
                .map_or(&[][..], |v| v.as_slice())
            {
                match a {
                    Value::Number(x) => node.args.push(NodeArg::Scalar(x.as_f64().unwrap_or(0.0))),
                    Value::Array(list) => {
                        for x in list {
                            if let Some(r) = tensor_ref(x)? {
                                node.args.push(NodeArg::Tensor(r));
                            }
                        }
                    }
                    other => match tensor_ref(other)? {
                        Some(r) => node.args.push(NodeArg::Tensor(r)),
                        None => {
                            return Err(ConfigError::unsupported(
                                "call argument",
                                other.to_string(),
                            )
                            .into())
                        }
                    },
                }
            }
            if let Some(Value::Object(kw)) = o.get("kwargs") {
                if let Some(v) = kw.get("initial_state") {
                    node.initial_state = refs_of(v)?;
                }
                if let Some(v) = kw.get("mask") {
                    node.mask = refs_of(v)?.into_iter().next();
                }
                node.attention = attention_call(kw)?;
                // An attention's tensors passed by keyword (`mha(h, value=v, key=k)`) follow
                // the positional ones in the call's order.
                for name in ["query", "value", "key"] {
                    if let Some(v) = kw.get(name) {
                        let r = refs_of(v)?;
                        let [one] = r.as_slice() else {
                            return Err(ConfigError::invalid(
                                format!("call argument `{name}`"),
                                v,
                                "one tensor",
                            )
                            .into());
                        };
                        node.args.push(NodeArg::Tensor(*one));
                    }
                }
                for k in kw.keys() {
                    if !matches!(
                        k.as_str(),
                        "initial_state"
                            | "mask"
                            | "training"
                            | "use_causal_mask"
                            | "return_attention_scores"
                            | "query"
                            | "value"
                            | "key"
                    ) {
                        return Err(ConfigError::unsupported(
                            "call keyword argument",
                            format!("`{k}`"),
                        )
                        .into());
                    }
                }
            }
        }
        Value::Array(calls) => {
            // TF-Keras 2: [[name, node, index, kwargs], ...]; every entry carries the call's
            // keyword arguments, tensors in them as [name, node, index].
            let tf2_refs = |v: &Value| -> Result<Vec<TensorRef>, Error> {
                if v.is_null() {
                    return Ok(vec![]);
                }
                history_triples(v)?
                    .into_iter()
                    .map(|(name, nd, i)| {
                        let layer = *index.get(&name).ok_or_else(|| {
                            ConfigError::invalid("inbound node", &name, "a layer name")
                        })?;
                        Ok(TensorRef {
                            layer,
                            node: nd,
                            index: i,
                        })
                    })
                    .collect()
            };
            if let Some(Value::Object(kw)) = calls
                .first()
                .and_then(Value::as_array)
                .and_then(|a| a.get(3))
            {
                node.attention = attention_call(kw)?;
                for (k, v) in kw {
                    match k.as_str() {
                        "use_causal_mask" | "return_attention_scores" => {}
                        "mask" => node.mask = tf2_refs(v)?.into_iter().next(),
                        "initial_state" => node.initial_state = tf2_refs(v)?,
                        "training" => {}
                        // Bidirectional records `constants: None`; RNN constants are not supported.
                        "constants" if v.is_null() => {}
                        "value" | "key" => {
                            return Err(ConfigError::unsupported(
                                "layer call",
                                format!("`{k}` passed by keyword, as TF-Keras 2 calls MultiHeadAttention: grucell runs Keras 3's MultiHeadAttention (TF-Keras 2's masks its scores otherwise)"),
                            )
                            .into())
                        }
                        other => {
                            return Err(ConfigError::unsupported(
                                "call keyword argument",
                                format!("`{other}`"),
                            )
                            .into())
                        }
                    }
                }
            }
            for c in calls {
                let a = c.as_array().ok_or_else(|| {
                    ConfigError::invalid("inbound node", c, "[name, node, index, kwargs]")
                })?;
                let (name, nd, i) = history_triples(&Value::Array(a[..a.len().min(3)].to_vec()))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        ConfigError::invalid("inbound node", c, "[name, node, index, kwargs]")
                    })?;
                let layer = *index
                    .get(&name)
                    .ok_or_else(|| ConfigError::invalid("inbound node", &name, "a layer name"))?;
                node.args.push(NodeArg::Tensor(TensorRef {
                    layer,
                    node: nd,
                    index: i,
                }));
            }
        }
        other => {
            return Err(
                ConfigError::invalid("inbound node", other, "an object with args/kwargs").into(),
            )
        }
    }
    Ok(node)
}

#[cfg(test)]
mod legacy_axis_tests {
    use super::legacy_axis;
    use serde_json::{json, Value};

    fn axis_after(axis: Value) -> Option<Option<Value>> {
        let entry = json!({"class_name": "Softmax", "config": {"name": "s", "axis": axis}});
        legacy_axis(&entry).map(|e| e["config"].get("axis").cloned())
    }

    #[test]
    fn keras_legacy_loader_rewrites_axis() {
        // One-element lists and floats become integers; longer lists, empty ones and null go.
        assert_eq!(axis_after(json!([2])), Some(Some(json!(2))));
        assert_eq!(axis_after(json!(1.7)), Some(Some(json!(1))));
        assert_eq!(axis_after(json!([1, 2])), Some(None));
        assert_eq!(axis_after(json!([])), Some(None));
        assert_eq!(axis_after(Value::Null), Some(None));
        assert_eq!(axis_after(json!("x")), Some(None));
        // Kept: an integer, and what `int()` would refuse (left for the layer to refuse).
        assert_eq!(axis_after(json!(-1)), None);
        assert_eq!(axis_after(json!(["a"])), None);
        // Entries with a module (Keras 3 configs) and entries without an axis are not touched.
        let keras3 =
            json!({"module": "keras.layers", "class_name": "Softmax", "config": {"axis": [1, 2]}});
        assert_eq!(legacy_axis(&keras3), None);
        assert_eq!(
            legacy_axis(&json!({"class_name": "Dense", "config": {"units": 2}})),
            None
        );
    }
}
