//! Reading `.keras` archives (Keras 3 `model.save("x.keras")`).
//!
//! The zip holds `metadata.json` (`keras_version`), `config.json` (the serialized model, with a
//! top-level `compile_config`) and `model.weights.h5`, whose datasets are keyed by object-graph
//! paths such as `layers/gru/cell/vars/0` (see the spec, §5.1). Entries may be stored (as Keras
//! writes them) or deflated. Only these three names are read; nothing is extracted to disk, so
//! entry names cannot escape anywhere. Sizes are bounded as described in [`crate::io::npy`].
//!
//! ```
//! use grucell::io::keras::read_keras_archive;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/io/keras/trained.keras");
//! let f = read_keras_archive(std::path::Path::new(path))?;
//! assert_eq!(f.compile_config.unwrap()["loss"], "mse");
//! # Ok::<(), grucell::FormatError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use super::{parse_config_json, parse_json, KerasFile, KerasWeights};
use crate::error::FormatError;
use crate::io::h5::H5File;
use crate::io::npy::{read_file, read_zip_entries};
use crate::tensor::Tensor;

const CONFIG: &str = "config.json";
const METADATA: &str = "metadata.json";
const WEIGHTS_H5: &str = "model.weights.h5";
const WEIGHTS_NPZ: &str = "model.weights.npz";

/// Reads a `.keras` archive from disk.
pub fn read_keras_archive(path: &Path) -> Result<KerasFile, FormatError> {
    let bytes = read_file(path)?;
    read_keras_archive_bytes(&bytes, &path.display().to_string())
}

/// Reads a `.keras` archive held in memory; `name_for_errors` is used in messages.
pub fn read_keras_archive_bytes(
    bytes: &[u8],
    name_for_errors: &str,
) -> Result<KerasFile, FormatError> {
    let name = name_for_errors;
    let entries = read_zip_entries(bytes, name, |n| {
        matches!(n, CONFIG | METADATA | WEIGHTS_H5 | WEIGHTS_NPZ)
    })?;
    let mut config = None;
    let mut metadata = None;
    let mut weights_h5 = None;
    let mut has_npz = false;
    for (entry, data) in entries {
        let slot = match entry.as_str() {
            CONFIG => &mut config,
            METADATA => &mut metadata,
            WEIGHTS_H5 => &mut weights_h5,
            _ => {
                has_npz = true;
                continue;
            }
        };
        if slot.is_some() {
            return Err(FormatError::malformed(
                name,
                entry,
                "duplicate zip entry, expected one",
            ));
        }
        *slot = Some(data);
    }

    let config = config.ok_or_else(|| {
        FormatError::malformed(
            name,
            CONFIG,
            "missing: not a .keras archive (expected config.json, metadata.json, model.weights.h5)",
        )
    })?;
    let (model_config, compile_config) = parse_config_json(&config, name, CONFIG)?;

    let keras_version = match metadata {
        Some(m) => {
            let meta = parse_json(&m, name, METADATA)?;
            match meta.get("keras_version") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(FormatError::malformed(
                        name,
                        format!("{METADATA}: keras_version"),
                        format!("got {other}, expected a string"),
                    ))
                }
            }
        }
        None => None,
    };

    let weights = match weights_h5 {
        Some(h5) => {
            let h5 = H5File::from_bytes(h5, &format!("{name}[{WEIGHTS_H5}]"))?;
            read_weights_by_path(&h5)?
        }
        None if has_npz => {
            return Err(FormatError::malformed(
                name,
                WEIGHTS_NPZ,
                "weights saved with weights_format=\"npz\" (pickled) are not supported; re-save with the default \"h5\"",
            ))
        }
        None => return Err(FormatError::malformed(name, WEIGHTS_H5, "missing from the archive")),
    };

    Ok(KerasFile {
        model_config,
        compile_config,
        keras_version,
        weights: KerasWeights::ByPath(weights),
        legacy_optimizer_weights: Vec::new(),
        path: name.to_string(),
    })
}

/// Every dataset of a Keras 3 weights file (model.weights.h5 or `*.weights.h5`), by full path.
pub fn read_weights_by_path(h5: &H5File) -> Result<BTreeMap<String, Tensor<f64>>, FormatError> {
    let mut out = BTreeMap::new();
    for path in h5.datasets_under("")? {
        let t = h5.read_f64(&path)?;
        out.insert(path, t);
    }
    Ok(out)
}
