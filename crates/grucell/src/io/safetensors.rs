//! safetensors files (Hugging Face format): named f32 tensors plus optional string metadata,
//! through the `safetensors` crate.
//!
//! Saving writes F32 tensors atomically ([`atomic_write`]); loading accepts F32 and F64 tensors
//! (F64 is rounded to f32) and returns them in file order.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::FormatError;
use crate::io::atomic::atomic_write;
use crate::tensor::{checked_numel, Tensor};

/// The safetensors format's own limit on the JSON header (100 MB), checked before the header is
/// parsed.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Tensors as loaded: name and f32 tensor, in file order.
pub type NamedTensors = Vec<(String, Tensor<f32>)>;

/// Saves `tensors` (name, shape, row-major f32 data) as a safetensors file at `path`, with
/// optional `__metadata__` strings. Atomic: on error the previous file is untouched.
///
/// Refused: a name given twice, a shape whose product differs from the data length.
///
/// ```
/// use grucell::io::safetensors::{load_safetensors, save_safetensors};
/// let path = std::env::temp_dir().join(format!("grucell_doc_{}.safetensors", std::process::id()));
/// let kernel = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// save_safetensors(&path, &[("gru/kernel".to_string(), vec![2, 3], &kernel[..])], None)?;
/// let back = load_safetensors(&path)?;
/// assert_eq!(back[0].0, "gru/kernel");
/// assert_eq!(back[0].1.shape(), &[2, 3]);
/// assert_eq!(back[0].1.data(), &kernel);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), grucell::FormatError>(())
/// ```
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), FormatError> {
    let shown = path.display().to_string();
    let mut seen = BTreeSet::new();
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(FormatError::malformed(
                &shown,
                name,
                "tensor name given twice; expected unique names",
            ));
        }
        match checked_numel(shape) {
            Some(n) if n == data.len() => {}
            _ => {
                return Err(FormatError::malformed(
                    &shown,
                    name,
                    format!(
                        "shape {shape:?} needs {} elements, got {}",
                        checked_numel(shape).map_or("too many".to_string(), |n| n.to_string()),
                        data.len()
                    ),
                ))
            }
        }
        bytes.push(data.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.as_str(), v))
                .map_err(|e| FormatError::malformed(&shown, name, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let buffer = safetensors::serialize(views, metadata)
        .map_err(|e| FormatError::malformed(&shown, "header", e.to_string()))?;
    atomic_write(path, |f| f.write_all(&buffer))
}

/// Loads every tensor of a safetensors file, in file order, as f32 (F64 tensors are rounded).
///
/// The header length is checked against the file size before the header is parsed; any other
/// dtype, a malformed header or data that does not cover the declared tensors gives
/// [`FormatError::Malformed`] naming the part.
pub fn load_safetensors(path: &Path) -> Result<NamedTensors, FormatError> {
    load_safetensors_with_metadata(path).map(|(t, _)| t)
}

/// As [`load_safetensors`], also returning the file's `__metadata__` strings.
pub fn load_safetensors_with_metadata(
    path: &Path,
) -> Result<(NamedTensors, Option<HashMap<String, String>>), FormatError> {
    // The whole file is read: the data must be in memory anyway, and the length field is then
    // checked against what is there before the header is parsed.
    let bytes = crate::io::npy::read_file(path)?;
    load_safetensors_bytes(&bytes, &path.display().to_string())
}

/// As [`load_safetensors_with_metadata`], on content held in memory; `name_for_errors` is used
/// in messages.
///
/// ```
/// use grucell::io::safetensors::load_safetensors_bytes;
/// // A header length far beyond the content is refused before anything is parsed.
/// let mut bytes = u64::MAX.to_le_bytes().to_vec();
/// bytes.extend_from_slice(b"{}");
/// let err = load_safetensors_bytes(&bytes, "m.safetensors").unwrap_err().to_string();
/// assert!(err.contains("m.safetensors") && err.contains("header length"));
/// ```
pub fn load_safetensors_bytes(
    buffer: &[u8],
    name_for_errors: &str,
) -> Result<(NamedTensors, Option<HashMap<String, String>>), FormatError> {
    let shown = name_for_errors;
    let (head, rest) = match buffer.split_first_chunk::<8>() {
        Some((head, rest)) => (*head, rest),
        None => {
            return Err(FormatError::malformed(
                shown,
                "header",
                format!(
                    "content is {} bytes; expected at least 8 (the header length)",
                    buffer.len()
                ),
            ))
        }
    };
    let header_len = u64::from_le_bytes(head);
    let after = rest.len() as u64;
    if header_len > MAX_HEADER_BYTES || header_len > after {
        return Err(FormatError::malformed(
            shown,
            "header",
            format!(
                "header length {header_len} does not fit: {after} bytes follow the length \
                 field, format limit {MAX_HEADER_BYTES}"
            ),
        ));
    }
    let (_, meta) = SafeTensors::read_metadata(buffer)
        .map_err(|e| FormatError::malformed(shown, "header", e.to_string()))?;
    let st = SafeTensors::deserialize(buffer)
        .map_err(|e| FormatError::malformed(shown, "header", e.to_string()))?;
    let mut out = Vec::with_capacity(st.len());
    for name in meta.offset_keys() {
        let view = st
            .tensor(&name)
            .map_err(|e| FormatError::malformed(shown, &name, e.to_string()))?;
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            other => {
                return Err(FormatError::malformed(
                    shown,
                    &name,
                    format!("dtype {other:?} is not supported; expected F32 or F64"),
                ))
            }
        };
        let tensor = Tensor::new(view.shape().to_vec(), data)
            .map_err(|e| FormatError::malformed(shown, &name, e.to_string()))?;
        out.push((name, tensor));
    }
    Ok((out, meta.metadata().clone()))
}
