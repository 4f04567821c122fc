//! Keras model files: `.keras` (zip of config.json + model.weights.h5) and legacy `.h5`.
//!
//! [`load_keras_file`] reads either kind (chosen from the content, not the extension) into a
//! [`KerasFile`]: the model's JSON config and its weights, still in the file's own layout
//! ([`KerasWeights::ByPath`] for `.keras`, [`KerasWeights::ByLayer`] for legacy `.h5`). Building
//! layers from them is the job of [`crate::layers`].
//!
//! ```
//! use grucell::io::keras::{load_keras_file, KerasWeights};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/io/keras/seq_gru.keras");
//! let f = load_keras_file(std::path::Path::new(path))?;
//! assert_eq!(f.model_config["class_name"], "Sequential");
//! assert_eq!(f.keras_version.as_deref(), Some("3.15.1"));
//! let KerasWeights::ByPath(w) = &f.weights else { unreachable!() };
//! assert_eq!(w["layers/gru/cell/vars/0"].shape(), &[3, 12]); // GRU(4) kernel, input dim 3
//! # Ok::<(), grucell::FormatError>(())
//! ```

pub mod archive;
pub mod legacy_h5;
pub mod load;
pub mod safetensors_model;
pub mod save;
pub mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use archive::{read_keras_archive, read_keras_archive_bytes};
pub use legacy_h5::{read_legacy_h5, read_legacy_h5_bytes};
pub use safetensors_model::read_safetensors_model_bytes;

use crate::error::FormatError;
use crate::io::h5::H5File;
use crate::tensor::Tensor;

/// A Keras model file, as read: config JSON plus weights in the file's own layout.
#[derive(Clone, Debug)]
pub struct KerasFile {
    /// The top-level model object `{"class_name", "config", …}`: config.json of a `.keras` file
    /// (without its `compile_config`, which is moved to [`KerasFile::compile_config`]), or the
    /// `model_config` attribute of a legacy `.h5` file.
    pub model_config: serde_json::Value,
    /// `.keras`: config.json's `compile_config` (absent or `null` → `None`; an uncompiled model
    /// saved by Keras 3 gives `Some({})`). Legacy `.h5`: the `training_config` attribute.
    pub compile_config: Option<serde_json::Value>,
    /// The Keras version that wrote the file (metadata.json, or the root `keras_version` attribute).
    pub keras_version: Option<String>,
    /// The weights.
    pub weights: KerasWeights,
    /// Legacy `.h5`: the optimizer's weights (group `optimizer_weights`, in its `weight_names`
    /// order: iteration, learning rate, slots), as `(name, array)`; empty when the file has none
    /// or the group cannot be read (Keras, too, goes on without optimizer weights it cannot
    /// set). Always empty for `.keras`, whose optimizer variables are in
    /// [`KerasFile::weights`] under `optimizer/vars/…`. [`KerasFile::optimizer_variables`]
    /// reads either.
    pub legacy_optimizer_weights: Vec<(String, Tensor<f64>)>,
    /// The file's path (or the name given for in-memory content), for messages.
    pub path: String,
}

/// Model weights as a Keras file stores them, every array converted to `f64`.
#[derive(Clone, Debug, PartialEq)]
pub enum KerasWeights {
    /// `.keras`: every dataset under model.weights.h5 by its full path
    /// (`"layers/gru/cell/vars/0"` → tensor), optimizer variables (`"optimizer/vars/…"`) included.
    ByPath(BTreeMap<String, Tensor<f64>>),
    /// Legacy `.h5`: per layer name (model_weights attr `layer_names` order), the layer's arrays
    /// in `weight_names` order. Layers without weights have an empty list. Non-empty
    /// `top_level_model_weights` appear in `weights` under that key but not in `layer_names`.
    ByLayer {
        /// Layer names, in model order (Functional models include the input layer).
        layer_names: Vec<String>,
        /// Per layer: `(weight name as stored, e.g. "seqm/gru/gru_cell/kernel" or
        /// "gru/gru_cell/kernel:0", array)`.
        weights: BTreeMap<String, Vec<(String, Tensor<f64>)>>,
    },
}

impl KerasFile {
    /// The optimizer's saved variables in Keras' order — the iteration count, the learning rate,
    /// then the slots, as [`crate::train::optimizer::Optimizer::load_keras_variables`] takes
    /// them: `optimizer/vars/0`, `1`, … of a `.keras` file, or the `optimizer_weights` of a
    /// legacy `.h5` file. Empty for a model saved without an optimizer; a compiled model that
    /// never trained has just the first two.
    pub fn optimizer_variables(&self) -> Vec<&Tensor<f64>> {
        match &self.weights {
            KerasWeights::ByPath(m) => (0..)
                .map_while(|i| m.get(&format!("optimizer/vars/{i}")))
                .collect(),
            KerasWeights::ByLayer { .. } => self
                .legacy_optimizer_weights
                .iter()
                .map(|(_, t)| t)
                .collect(),
        }
    }
}

impl KerasWeights {
    /// Total number of arrays.
    pub fn num_arrays(&self) -> usize {
        match self {
            KerasWeights::ByPath(m) => m.len(),
            KerasWeights::ByLayer { weights, .. } => weights.values().map(Vec::len).sum(),
        }
    }
}

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A zip archive (`.keras`, `.npz`).
    Zip,
    /// An HDF5 file (legacy `.h5`, `.weights.h5`).
    Hdf5,
    /// A safetensors file (grucell's `.safetensors` model, or weights alone).
    Safetensors,
}

/// HDF5's signature; it sits at offset 0 or after a user block of 512 · 2^k bytes.
const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Recognises a zip archive (`PK\x03\x04`, or `PK\x05\x06` for an empty one), a safetensors
/// file (a little-endian header length the content covers, then `{`) or an HDF5 file.
pub fn sniff(bytes: &[u8]) -> Option<FileKind> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(FileKind::Zip);
    }
    if safetensors_model::looks_like_safetensors(bytes) {
        return Some(FileKind::Safetensors);
    }
    let mut off = 0usize;
    while let Some(sig) = bytes.get(off..off + 8) {
        if sig == HDF5_MAGIC {
            return Some(FileKind::Hdf5);
        }
        off = if off == 0 { 512 } else { off.checked_mul(2)? };
    }
    None
}

/// Reads a Keras model file: a `.keras` archive, a legacy `.h5` or a safetensors model written by
/// grucell ([`safetensors_model`]), told apart by content.
pub fn load_keras_file(path: &Path) -> Result<KerasFile, FormatError> {
    let bytes = crate::io::npy::read_file(path)?;
    load_keras_bytes(bytes, &path.display().to_string())
}

/// [`load_keras_file`] on content held in memory; `name_for_errors` is used in messages.
pub fn load_keras_bytes(bytes: Vec<u8>, name_for_errors: &str) -> Result<KerasFile, FormatError> {
    match sniff(&bytes) {
        Some(FileKind::Zip) => read_keras_archive_bytes(&bytes, name_for_errors),
        Some(FileKind::Hdf5) => read_legacy_h5_bytes(bytes, name_for_errors),
        Some(FileKind::Safetensors) => read_safetensors_model_bytes(&bytes, name_for_errors),
        None => Err(FormatError::malformed(
            name_for_errors,
            "file signature",
            "neither a .keras archive (zip), a legacy .h5 model (HDF5) nor a safetensors model written by grucell",
        )),
    }
}

/// Reads the weights of a Keras file without needing a model config: a Keras 3 weights file
/// (`model.save_weights("x.weights.h5")`, same layout as model.weights.h5 →
/// [`KerasWeights::ByPath`]), a legacy weights file with a root `layer_names` attribute or a full
/// legacy `.h5` model (→ [`KerasWeights::ByLayer`]), a `.keras` archive (its weights), or a
/// safetensors file (its tensors by name → [`KerasWeights::ByPath`]).
pub fn read_weights_file(path: &Path) -> Result<KerasWeights, FormatError> {
    let name = path.display().to_string();
    let bytes = crate::io::npy::read_file(path)?;
    match sniff(&bytes) {
        Some(FileKind::Zip) => Ok(read_keras_archive_bytes(&bytes, &name)?.weights),
        Some(FileKind::Safetensors) => {
            let (tensors, _) = crate::io::safetensors::load_safetensors_bytes(&bytes, &name)?;
            safetensors_model::weights_by_path(tensors, &name).map(KerasWeights::ByPath)
        }
        Some(FileKind::Hdf5) => {
            let h5 = H5File::from_bytes(bytes, &name)?;
            if h5.attr_strings("", "layer_names")?.is_some() {
                legacy_h5::read_layer_weights(&h5, "")
            } else if h5.is_group("model_weights")
                && h5.attr_strings("model_weights", "layer_names")?.is_some()
            {
                legacy_h5::read_layer_weights(&h5, "model_weights")
            } else {
                archive::read_weights_by_path(&h5).map(KerasWeights::ByPath)
            }
        }
        None => Err(FormatError::malformed(
            name,
            "file signature",
            "neither a Keras weights file (HDF5), a .keras archive (zip) nor a safetensors file",
        )),
    }
}

/// Unique snake_case names within one list, as Keras' object-path traversal makes them
/// (`gru`, `gru_1`, …): used by the loader to find a layer's weights and by the writer to
/// place them.
#[derive(Default)]
pub(crate) struct Namer(HashMap<String, usize>);

impl Namer {
    /// The name for the next object of class `class` in this list.
    pub(crate) fn next(&mut self, class: &str) -> String {
        let base = crate::layers::keras_json::to_snake_case(class);
        let n = self.0.entry(base.clone()).or_insert(0);
        let name = if *n == 0 { base } else { format!("{base}_{n}") };
        *n += 1;
        name
    }
}

/// Parses a JSON document, naming the file and part on error.
pub(crate) fn parse_json(
    text: &[u8],
    file: &str,
    part: &str,
) -> Result<serde_json::Value, FormatError> {
    serde_json::from_slice(text)
        .map_err(|e| FormatError::malformed(file, part, format!("invalid JSON: {e}")))
}

/// Parses a config.json text (a `.keras` archive's, or the metadata of a grucell safetensors
/// model) into the model config, checked as [`check_model_config`] does, and the
/// `compile_config` taken out of it (absent or `null` → `None`).
pub(crate) fn parse_config_json(
    text: &[u8],
    file: &str,
    part: &str,
) -> Result<(serde_json::Value, Option<serde_json::Value>), FormatError> {
    let mut model_config = parse_json(text, file, part)?;
    check_model_config(&model_config, file, part)?;
    let compile_config = model_config
        .as_object_mut()
        .and_then(|o| o.remove("compile_config"))
        .filter(|v| !v.is_null());
    Ok((model_config, compile_config))
}

/// Checks that a model config is a Keras object with a string `class_name`.
pub(crate) fn check_model_config(
    v: &serde_json::Value,
    file: &str,
    part: &str,
) -> Result<(), FormatError> {
    match v.get("class_name") {
        Some(serde_json::Value::String(_)) => Ok(()),
        _ => Err(FormatError::malformed(
            file,
            part,
            "expected a JSON object with a string \"class_name\" (a serialized Keras model)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Some(FileKind::Zip));
        assert_eq!(sniff(b"\x89HDF\r\n\x1a\nrest"), Some(FileKind::Hdf5));
        let mut ub = vec![0u8; 512];
        ub.extend_from_slice(HDF5_MAGIC);
        assert_eq!(sniff(&ub), Some(FileKind::Hdf5));
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st), Some(FileKind::Safetensors));
        assert_eq!(sniff(b"{}"), None);
        assert_eq!(sniff(b""), None);
    }
}
