//! Reading legacy Keras `.h5` model files (`model.save("x.h5")`, Keras 3 and TF-Keras 2).
//!
//! Layout (spec §5.3): root attributes `model_config` (JSON, string or bytes), `keras_version`,
//! `backend`, optionally `training_config` (JSON); group `model_weights` with attribute
//! `layer_names`, and per layer a group with attribute `weight_names` whose datasets sit at
//! `model_weights/<layer>/<weight name>` (the `/` in weight names make nested groups; TF-Keras 2
//! names end in `:0`). Attributes too big for one HDF5 header are split by Keras into
//! `layer_names0`, `layer_names1`, … — both forms are read. A compiled, trained model also has
//! group `optimizer_weights` (attribute `weight_names`: iteration, learning rate, slots).
//!
//! ```
//! use grucell::io::keras::{read_legacy_h5, KerasWeights};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/io/keras/tf2_style.h5");
//! let f = read_legacy_h5(std::path::Path::new(path))?;
//! let KerasWeights::ByLayer { layer_names, weights } = &f.weights else { unreachable!() };
//! assert_eq!(layer_names, &["gru", "dense"]);
//! let (name, kernel) = &weights["gru"][0];
//! assert_eq!((name.as_str(), kernel.shape()), ("gru/gru_cell/kernel:0", &[3, 12][..]));
//! # Ok::<(), grucell::FormatError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use super::{check_model_config, parse_json, KerasFile, KerasWeights};
use crate::error::FormatError;
use crate::io::h5::H5File;

/// Most chunks (`name0`, `name1`, …) read for one split attribute.
const MAX_ATTR_CHUNKS: usize = 10_000;

/// Reads a legacy `.h5` model file from disk.
pub fn read_legacy_h5(path: &Path) -> Result<KerasFile, FormatError> {
    let h5 = H5File::open(path)?;
    read_legacy_h5_file(&h5)
}

/// Reads a legacy `.h5` model held in memory; `name_for_errors` is used in messages.
pub fn read_legacy_h5_bytes(
    bytes: Vec<u8>,
    name_for_errors: &str,
) -> Result<KerasFile, FormatError> {
    let h5 = H5File::from_bytes(bytes, name_for_errors)?;
    read_legacy_h5_file(&h5)
}

/// Reads a legacy `.h5` model from an opened file.
pub fn read_legacy_h5_file(h5: &H5File) -> Result<KerasFile, FormatError> {
    let name = h5.name();
    let config_text = h5.attr_string("", "model_config")?.ok_or_else(|| {
        let hint = if h5.attr_strings("", "layer_names").ok().flatten().is_some() {
            "this is a weights-only file (read it with read_weights_file)"
        } else if h5.is_group("layers") || h5.is_group("vars") {
            "this is a Keras 3 weights file (read it with read_weights_file)"
        } else {
            "not a Keras model file"
        };
        FormatError::malformed(name, "/@model_config", format!("missing: {hint}"))
    })?;
    let model_config = parse_json(config_text.as_bytes(), name, "/@model_config")?;
    check_model_config(&model_config, name, "/@model_config")?;
    let compile_config = match h5.attr_string("", "training_config")? {
        Some(t) => {
            Some(parse_json(t.as_bytes(), name, "/@training_config")?).filter(|v| !v.is_null())
        }
        None => None,
    };
    let keras_version = match h5.attr_string("", "keras_version")? {
        Some(v) => Some(v),
        None if h5.is_group("model_weights") => h5.attr_string("model_weights", "keras_version")?,
        None => None,
    };
    if !h5.is_group("model_weights") {
        return Err(FormatError::malformed(
            name,
            "model_weights",
            "missing group: the model was saved without weights",
        ));
    }
    let weights = read_layer_weights(h5, "model_weights")?;
    // Lenient, as Keras' loader: optimizer weights it cannot set are skipped with a warning, and
    // the model still loads.
    let legacy_optimizer_weights = if h5.is_group("optimizer_weights") {
        let w = read_layer(h5, "optimizer_weights").unwrap_or_default();
        with_learning_rate(w, compile_config.as_ref())
    } else {
        Vec::new()
    };
    Ok(KerasFile {
        model_config,
        compile_config,
        keras_version,
        weights,
        legacy_optimizer_weights,
        path: name.to_string(),
    })
}

/// TF-Keras 2 (its 2.11+ optimizers) saves `iteration:0` and then the slots, in the order Keras
/// 3 kept, but no learning-rate variable, which Keras 3 keeps second (`adam/iteration`,
/// `adam/learning_rate`, …). Inserts the rate of the file's optimizer config there, so the state
/// reads as Keras 3's; any other layout, or no rate in the config, is returned unchanged.
fn with_learning_rate(
    mut w: Vec<(String, crate::tensor::Tensor<f64>)>,
    compile_config: Option<&serde_json::Value>,
) -> Vec<(String, crate::tensor::Tensor<f64>)> {
    let tf2 = w.first().is_some_and(|(n, _)| n == "iteration:0")
        && !w.iter().any(|(n, _)| n.contains("learning_rate"));
    let lr = compile_config
        .and_then(|c| c.get("optimizer_config"))
        .and_then(|o| o.get("config"))
        .and_then(|c| c.get("learning_rate"))
        .and_then(serde_json::Value::as_f64);
    if let (true, Some(lr)) = (tf2, lr) {
        if let Ok(t) = crate::tensor::Tensor::new(vec![], vec![lr]) {
            w.insert(1, ("learning_rate:0".to_string(), t));
        }
    }
    w
}

/// Reads the per-layer weights of a legacy weights group (`"model_weights"` in a model file,
/// the root `""` in a legacy weights-only file): `layer_names` order, each layer's arrays in its
/// `weight_names` order.
pub fn read_layer_weights(h5: &H5File, group: &str) -> Result<KerasWeights, FormatError> {
    let name = h5.name();
    let layer_names = read_split_strings(h5, group, "layer_names")?.ok_or_else(|| {
        FormatError::malformed(
            name,
            format!("{}@layer_names", shown(group)),
            "missing attribute, expected the list of layer names",
        )
    })?;
    let mut weights = BTreeMap::new();
    let join = |a: &str| {
        if group.trim_matches('/').is_empty() {
            a.to_string()
        } else {
            format!("{}/{a}", group.trim_matches('/'))
        }
    };
    for layer in &layer_names {
        if weights.contains_key(layer) {
            return Err(FormatError::malformed(
                name,
                format!("{}@layer_names", shown(group)),
                format!("layer {layer:?} listed twice"),
            ));
        }
        let lpath = join(layer);
        if !h5.is_group(&lpath) {
            return Err(FormatError::malformed(
                name,
                lpath,
                "missing group for a layer listed in layer_names",
            ));
        }
        weights.insert(layer.clone(), read_layer(h5, &lpath)?);
    }
    // Weights that belong to the model itself, outside any layer (Keras 3 writes this group,
    // normally empty).
    let top = join("top_level_model_weights");
    if !layer_names.iter().any(|l| l == "top_level_model_weights") && h5.is_group(&top) {
        let arrays = read_layer(h5, &top)?;
        if !arrays.is_empty() {
            weights.insert("top_level_model_weights".to_string(), arrays);
        }
    }
    Ok(KerasWeights::ByLayer {
        layer_names,
        weights,
    })
}

/// One layer group: its `weight_names` datasets, in order.
fn read_layer(
    h5: &H5File,
    lpath: &str,
) -> Result<Vec<(String, crate::tensor::Tensor<f64>)>, FormatError> {
    let names = read_split_strings(h5, lpath, "weight_names")?.unwrap_or_default();
    let mut arrays = Vec::with_capacity(names.len());
    for w in names {
        let t = h5.read_f64(&format!("{lpath}/{w}"))?;
        arrays.push((w, t));
    }
    Ok(arrays)
}

/// A string-list attribute that Keras may have split into `name0`, `name1`, … when too large.
fn read_split_strings(
    h5: &H5File,
    path: &str,
    attr: &str,
) -> Result<Option<Vec<String>>, FormatError> {
    if let Some(v) = h5.attr_strings(path, attr)? {
        return Ok(Some(v));
    }
    let mut out: Option<Vec<String>> = None;
    for i in 0..MAX_ATTR_CHUNKS {
        match h5.attr_strings(path, &format!("{attr}{i}"))? {
            Some(v) => out.get_or_insert_with(Vec::new).extend(v),
            None => break,
        }
    }
    Ok(out)
}

fn shown(group: &str) -> &str {
    let g = group.trim_matches('/');
    if g.is_empty() {
        "/"
    } else {
        g
    }
}
