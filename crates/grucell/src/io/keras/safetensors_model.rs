//! grucell's safetensors model files, as [`super::write::save_safetensors_model`] writes them:
//! the weights under their `.keras` dataset paths and the model's config.json in the
//! `__metadata__` entry `keras_config`.
//!
//! Reading one gives the same [`KerasFile`] a `.keras` archive gives, so everything that loads a
//! Keras model (`load_model`, `grucell predict`, `inspect`, `fit`) loads these too.

use super::{parse_config_json, KerasFile, KerasWeights};
use crate::error::FormatError;
use crate::io::safetensors::{load_safetensors_bytes, NamedTensors};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// The `__metadata__` entry that holds the model's config.json text.
const CONFIG_KEY: &str = "keras_config";

/// Whether `bytes` start as a safetensors file: an 8-byte little-endian header length that the
/// content covers, then the header's opening `{`.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    match (bytes.split_first_chunk::<8>(), bytes.get(8)) {
        (Some((head, rest)), Some(b'{')) => u64::from_le_bytes(*head) <= rest.len() as u64,
        _ => false,
    }
}

/// Reads a safetensors model written by grucell (`format` = `"keras"` with a `keras_config`
/// in its metadata) into a [`KerasFile`] with [`KerasWeights::ByPath`] weights.
///
/// A safetensors file without that metadata holds weights but no architecture, and is refused
/// with a message that says so. Tensors are float32 in these files; a float64 model's weights
/// come back as the float32 values that were written.
///
/// ```
/// use grucell::io::keras::{load_keras_bytes, write::save_safetensors_model};
/// use grucell::layers::model::{Layer, Model};
/// use grucell::{GruCellConfig, Rnn};
/// let gru = Rnn::<f32>::new(GruCellConfig::new(2).seed(Some(3)), 3)?;
/// let model = Model::sequential("m", vec![None, Some(3)], vec![("rnn".into(), Layer::Rnn(gru))])?;
/// let path = std::env::temp_dir().join(format!("grucell_doc_stm_{}.safetensors", std::process::id()));
/// save_safetensors_model(&model, &path)?;
/// let file = load_keras_bytes(std::fs::read(&path)?, "m.safetensors")?;
/// assert_eq!(file.model_config["class_name"], "Sequential");
/// assert_eq!(file.weights.num_arrays(), 3); // kernel, recurrent kernel, bias
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_safetensors_model_bytes(
    bytes: &[u8],
    name_for_errors: &str,
) -> Result<KerasFile, FormatError> {
    let name = name_for_errors;
    let (tensors, metadata) = load_safetensors_bytes(bytes, name)?;
    let metadata = metadata.unwrap_or_default();
    let config = match (metadata.get("format").map(String::as_str), metadata.get(CONFIG_KEY)) {
        (Some("keras"), Some(config)) => config,
        _ => {
            return Err(FormatError::malformed(
                name,
                format!("__metadata__: {CONFIG_KEY}"),
                "missing: a safetensors file of weights alone has no model architecture; expected \
                 one written by grucell (`grucell fit --output model.safetensors`, \
                 save_safetensors_model), whose metadata has format \"keras\" and the model's config",
            ))
        }
    };
    let part = format!("__metadata__: {CONFIG_KEY}");
    let (model_config, compile_config) = parse_config_json(config.as_bytes(), name, &part)?;
    let weights = weights_by_path(tensors, name)?;
    Ok(KerasFile {
        model_config,
        compile_config,
        keras_version: metadata.get("keras_version").cloned(),
        weights: KerasWeights::ByPath(weights),
        legacy_optimizer_weights: Vec::new(),
        path: name.to_string(),
    })
}

/// A safetensors file's tensors by name (the `.keras` dataset paths in grucell's files), as
/// `f64`; a name given twice is refused.
pub(crate) fn weights_by_path(
    tensors: NamedTensors,
    name_for_errors: &str,
) -> Result<BTreeMap<String, Tensor<f64>>, FormatError> {
    let mut weights = BTreeMap::new();
    for (path, tensor) in tensors {
        if weights.insert(path.clone(), tensor.cast::<f64>()).is_some() {
            return Err(FormatError::malformed(
                name_for_errors,
                path,
                "duplicate tensor name, expected one",
            ));
        }
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::save_safetensors;

    #[test]
    fn recognised_by_content() {
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert!(looks_like_safetensors(&st));
        // A header length beyond the content, or no '{', is something else.
        let mut long = 3u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        assert!(!looks_like_safetensors(&long));
        assert!(!looks_like_safetensors(b"\x89HDF\r\n\x1a\n\x00rest"));
        assert!(!looks_like_safetensors(b"{}"));
    }

    #[test]
    fn weights_without_config_are_refused_with_the_reason() {
        let path = std::env::temp_dir().join(format!(
            "grucell_st_weights_only_{}.safetensors",
            std::process::id()
        ));
        let data = [1.0f32, 2.0];
        save_safetensors(&path, &[("w".to_string(), vec![2], &data[..])], None).expect("writes");
        let bytes = std::fs::read(&path).expect("reads");
        std::fs::remove_file(&path).ok();
        let err = read_safetensors_model_bytes(&bytes, "w.safetensors")
            .expect_err("no architecture")
            .to_string();
        assert!(err.contains("w.safetensors"), "{err}");
        assert!(
            err.contains("keras_config") && err.contains("no model architecture"),
            "{err}"
        );
    }
}
