//! Read-only HDF5 access: a thin wrapper over `hdf5-reader`, so the rest of the crate never sees
//! its types and every error is a [`FormatError`] naming the file and the dataset or attribute.
//!
//! Paths are `/`-separated from the root (`"model_weights/gru"`; a leading `/` and `""` for the
//! root are accepted). Datasets are read as `f64` tensors whatever their stored float or integer
//! type. Before a dataset is read its element count is checked against [`MAX_DATASET_ELEMENTS`]
//! and, for unchunked storage, against the file size, so a forged header cannot trigger a huge
//! allocation; `hdf5-reader` also bounds every read by the bytes present.
//!
//! ```
//! use grucell::io::h5::H5File;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/io/keras/seq_gru.h5");
//! let f = H5File::open(std::path::Path::new(path))?;
//! let layers = f.attr_strings("model_weights", "layer_names")?.unwrap_or_default();
//! assert_eq!(layers, ["g", "d"]);
//! let names = f.attr_strings("model_weights/g", "weight_names")?.unwrap_or_default();
//! assert_eq!(names[0], "seqm/g/gru_cell/kernel");
//! let kernel = f.read_f64(&format!("model_weights/g/{}", names[0]))?;
//! assert_eq!(kernel.shape(), &[3, 12]);
//! # Ok::<(), grucell::FormatError>(())
//! ```

use std::collections::HashSet;
use std::path::Path;

use hdf5_reader::{Attribute, Datatype, Hdf5File, OpenOptions, StringSize, VarLenKind};

use crate::error::FormatError;
use crate::tensor::Tensor;

/// Largest element count read from one dataset (2^31).
pub const MAX_DATASET_ELEMENTS: u64 = 1 << 31;

/// Largest number of objects visited by [`H5File::datasets_under`].
pub const MAX_WALK_OBJECTS: usize = 100_000;

/// Deepest group nesting visited by [`H5File::datasets_under`].
pub const MAX_WALK_DEPTH: usize = 64;

/// Largest expansion ratio assumed for chunked (possibly compressed) datasets.
const MAX_CHUNKED_EXPANSION: u64 = 1100;

/// An HDF5 file opened for reading (held in memory; clones share it).
#[derive(Clone)]
pub struct H5File {
    inner: Hdf5File,
    name: String,
    len: u64,
}

impl std::fmt::Debug for H5File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H5File")
            .field("name", &self.name)
            .field("len", &self.len)
            .finish()
    }
}

/// What a path names.
enum Node {
    Group(hdf5_reader::group::Group),
    Dataset(Box<hdf5_reader::Dataset>),
}

impl H5File {
    /// Opens HDF5 content held in memory; `name_for_errors` is used in error messages.
    ///
    /// A file shorter than the end-of-file address its superblock records (a truncated copy) is
    /// refused before anything else is read, as the HDF5 library refuses it.
    pub fn from_bytes(bytes: Vec<u8>, name_for_errors: &str) -> Result<Self, FormatError> {
        check_superblock_eof(&bytes, name_for_errors)?;
        let len = bytes.len() as u64;
        let budget = len
            .saturating_mul(MAX_CHUNKED_EXPANSION)
            .clamp(1 << 20, MAX_DATASET_ELEMENTS * 8);
        let options = OpenOptions::default()
            .with_max_read_bytes(usize::try_from(budget).unwrap_or(usize::MAX));
        let inner = guard(name_for_errors, "file", || {
            Hdf5File::from_vec_with_options(bytes, options)
        })?
        .map_err(|e| {
            FormatError::malformed(
                name_for_errors,
                "superblock",
                format!("not a readable HDF5 file: {e}"),
            )
        })?;
        Ok(H5File {
            inner,
            name: name_for_errors.to_string(),
            len,
        })
    }

    /// Reads the file at `path` into memory and opens it.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let bytes =
            std::fs::read(path).map_err(|e| FormatError::io(path.display().to_string(), e))?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// The name used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, part: impl Into<String>, msg: impl Into<String>) -> FormatError {
        FormatError::malformed(&self.name, part, msg)
    }

    fn node(&self, path: &str) -> Result<Node, FormatError> {
        let p = path.trim_matches('/');
        guard(&self.name, path, || -> Result<Node, String> {
            if p.is_empty() {
                return self
                    .inner
                    .root_group()
                    .map(Node::Group)
                    .map_err(|e| e.to_string());
            }
            // Walk the parents as groups, then take the last part as either kind.
            let mut group = self.inner.root_group().map_err(|e| e.to_string())?;
            let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let (last, parents) = parts.split_last().ok_or_else(|| "empty path".to_string())?;
            for part in parents {
                group = group
                    .group(part)
                    .map_err(|e| format!("no group {part:?}: {e}"))?;
            }
            match group.group(last) {
                Ok(g) => Ok(Node::Group(g)),
                Err(_) => group
                    .dataset(last)
                    .map(|d| Node::Dataset(Box::new(d)))
                    .map_err(|e| format!("no group or dataset {last:?}: {e}")),
            }
        })?
        .map_err(|m| self.err(display_path(path), m))
    }

    fn group(&self, path: &str) -> Result<hdf5_reader::group::Group, FormatError> {
        match self.node(path)? {
            Node::Group(g) => Ok(g),
            Node::Dataset(_) => Err(self.err(display_path(path), "is a dataset, expected a group")),
        }
    }

    fn dataset(&self, path: &str) -> Result<hdf5_reader::Dataset, FormatError> {
        match self.node(path)? {
            Node::Dataset(d) => Ok(*d),
            Node::Group(_) => Err(self.err(display_path(path), "is a group, expected a dataset")),
        }
    }

    /// Names of the child groups of the group at `path`, in the file's listing order.
    pub fn group_names(&self, path: &str) -> Result<Vec<String>, FormatError> {
        let g = self.group(path)?;
        guard(&self.name, path, || g.member_names())?
            .map(|(groups, _)| groups)
            .map_err(|e| self.err(display_path(path), format!("cannot list members: {e}")))
    }

    /// Names of the child datasets of the group at `path`, in the file's listing order.
    pub fn dataset_names(&self, path: &str) -> Result<Vec<String>, FormatError> {
        let g = self.group(path)?;
        guard(&self.name, path, || g.member_names())?
            .map(|(_, datasets)| datasets)
            .map_err(|e| self.err(display_path(path), format!("cannot list members: {e}")))
    }

    /// True when `path` names a group or a dataset.
    pub fn exists(&self, path: &str) -> bool {
        self.node(path).is_ok()
    }

    /// True when `path` names a group.
    pub fn is_group(&self, path: &str) -> bool {
        matches!(self.node(path), Ok(Node::Group(_)))
    }

    /// True when `path` names a dataset.
    pub fn is_dataset(&self, path: &str) -> bool {
        matches!(self.node(path), Ok(Node::Dataset(_)))
    }

    /// Shape of the dataset at `path` (`[]` for a scalar).
    pub fn dataset_shape(&self, path: &str) -> Result<Vec<usize>, FormatError> {
        let d = self.dataset(path)?;
        d.shape()
            .iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| self.err(display_path(path), format!("dimension {x} too large")))
            })
            .collect()
    }

    /// numpy-style name of the dataset's element type (`"float32"`, `"int64"`, `"string"`, …).
    pub fn dataset_dtype(&self, path: &str) -> Result<String, FormatError> {
        Ok(dtype_name(self.dataset(path)?.dtype()))
    }

    /// Every dataset below the group at `path`, as full paths without a leading `/`, depth first
    /// in listing order. Hard-link cycles are not followed; at most [`MAX_WALK_OBJECTS`] objects
    /// and [`MAX_WALK_DEPTH`] levels are visited.
    pub fn datasets_under(&self, path: &str) -> Result<Vec<String>, FormatError> {
        let root = self.group(path)?;
        let prefix = path.trim_matches('/').to_string();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut visited = 0usize;
        let mut stack = vec![(root, prefix, 0usize)];
        while let Some((g, p, depth)) = stack.pop() {
            if !seen.insert(g.address()) {
                continue;
            }
            let (groups, datasets) = guard(&self.name, &p, || g.member_names())?
                .map_err(|e| self.err(display_path(&p), format!("cannot list members: {e}")))?;
            visited = visited.saturating_add(groups.len() + datasets.len());
            if visited > MAX_WALK_OBJECTS {
                return Err(self.err(
                    display_path(path),
                    format!("more than {MAX_WALK_OBJECTS} objects"),
                ));
            }
            let join = |n: &str| {
                if p.is_empty() {
                    n.to_string()
                } else {
                    format!("{p}/{n}")
                }
            };
            out.extend(datasets.iter().map(|d| join(d)));
            if !groups.is_empty() && depth >= MAX_WALK_DEPTH {
                return Err(self.err(
                    display_path(&p),
                    format!("groups nested deeper than {MAX_WALK_DEPTH}"),
                ));
            }
            // Reverse so that the first group is walked first.
            for name in groups.iter().rev() {
                let child = guard(&self.name, &p, || g.group(name))?.map_err(|e| {
                    self.err(display_path(&join(name)), format!("cannot open group: {e}"))
                })?;
                stack.push((child, join(name), depth + 1));
            }
        }
        Ok(out)
    }

    /// Reads the dataset at `path` as `f64`: float16/32/64 and integer datasets are accepted
    /// (integers above 2^53 lose precision); anything else is an error naming the dataset.
    pub fn read_f64(&self, path: &str) -> Result<Tensor<f64>, FormatError> {
        let d = self.dataset(path)?;
        let part = display_path(path);
        let (shape, n) = self.checked_size(&d, &part)?;
        let rerr =
            |e: hdf5_reader::error::Error| self.err(part.clone(), format!("cannot read: {e}"));
        let data: Vec<f64> = match d.dtype().clone() {
            Datatype::FloatingPoint { size: 8, .. } => {
                let mut v = try_filled(self, n, 0f64, &part)?;
                guard(&self.name, &part, || d.read_into(&mut v))?.map_err(rerr)?;
                v
            }
            Datatype::FloatingPoint { size: 4, .. } => read_as::<f32>(self, &d, n, &part)?,
            Datatype::FloatingPoint { size: 2, .. } => {
                let bytes = guard(&self.name, &part, || d.read_native_bytes())?.map_err(rerr)?;
                if bytes.len() != n * 2 {
                    return Err(self.err(
                        part,
                        format!("expected {} bytes of float16, read {}", n * 2, bytes.len()),
                    ));
                }
                bytes
                    .chunks_exact(2)
                    .map(|c| f16_to_f64(u16::from_ne_bytes([c[0], c[1]])))
                    .collect()
            }
            Datatype::FixedPoint { size, signed, .. } => match (size, signed) {
                (1, true) => read_as::<i8>(self, &d, n, &part)?,
                (1, false) => read_as::<u8>(self, &d, n, &part)?,
                (2, true) => read_as::<i16>(self, &d, n, &part)?,
                (2, false) => read_as::<u16>(self, &d, n, &part)?,
                (4, true) => read_as::<i32>(self, &d, n, &part)?,
                (4, false) => read_as::<u32>(self, &d, n, &part)?,
                (8, true) => read_int64(self, &d, n, &part, true)?,
                (8, false) => read_int64(self, &d, n, &part, false)?,
                _ => {
                    return Err(self.err(part, format!("integer of {size} bytes is not supported")))
                }
            },
            other => {
                return Err(self.err(
                    part,
                    format!(
                        "dataset of type {}, expected a float or integer dataset",
                        dtype_name(&other)
                    ),
                ))
            }
        };
        Tensor::new(shape, data).map_err(|e| self.err(display_path(path), e.to_string()))
    }

    /// [`H5File::read_f64`] rounded to `f32` (exact for `float32` datasets).
    pub fn read_f32(&self, path: &str) -> Result<Tensor<f32>, FormatError> {
        Ok(self.read_f64(path)?.cast())
    }

    /// Shape and element count of `d`, refusing sizes the file cannot back.
    fn checked_size(
        &self,
        d: &hdf5_reader::Dataset,
        part: &str,
    ) -> Result<(Vec<usize>, usize), FormatError> {
        let n = guard(&self.name, part, || d.num_elements())?
            .map_err(|e| self.err(part, format!("invalid dataspace: {e}")))?;
        if n > MAX_DATASET_ELEMENTS {
            return Err(self.err(
                part,
                format!("{n} elements, expected at most {MAX_DATASET_ELEMENTS}"),
            ));
        }
        let elem = guard(&self.name, part, || d.raw_element_size())?
            .map_err(|e| self.err(part, format!("invalid datatype: {e}")))?
            as u64;
        let bytes = n.saturating_mul(elem.max(1));
        let backing = if d.chunks().is_some() {
            self.len.saturating_mul(MAX_CHUNKED_EXPANSION).max(1 << 20)
        } else {
            self.len
        };
        if bytes > backing {
            return Err(self.err(
                part,
                format!(
                    "{n} elements of {elem} bytes cannot be stored in a {}-byte file",
                    self.len
                ),
            ));
        }
        let mut shape: Vec<usize> = d.shape().iter().map(|&x| x as usize).collect();
        if shape.is_empty() && n == 0 {
            shape.push(0); // null dataspace
        }
        Ok((shape, n as usize))
    }

    /// Names of the attributes on the group or dataset at `path`.
    pub fn attr_names(&self, path: &str) -> Result<Vec<String>, FormatError> {
        Ok(self.attributes(path)?.into_iter().map(|a| a.name).collect())
    }

    fn attributes(&self, path: &str) -> Result<Vec<Attribute>, FormatError> {
        match self.node(path)? {
            Node::Group(g) => guard(&self.name, path, || g.attributes())?
                .map_err(|e| self.err(display_path(path), format!("cannot read attributes: {e}"))),
            Node::Dataset(d) => guard(&self.name, path, || d.attributes()),
        }
    }

    fn attribute(&self, path: &str, name: &str) -> Result<Option<Attribute>, FormatError> {
        Ok(self.attributes(path)?.into_iter().find(|a| a.name == name))
    }

    /// The string attribute `name` on `path` (fixed or variable length, bytes or UTF-8);
    /// `None` when there is no such attribute; an error when it is not exactly one string.
    pub fn attr_string(&self, path: &str, name: &str) -> Result<Option<String>, FormatError> {
        match self.attr_strings(path, name)? {
            None => Ok(None),
            Some(mut v) if v.len() == 1 => Ok(v.pop()),
            Some(v) => Err(self.err(
                attr_part(path, name),
                format!("holds {} strings, expected one", v.len()),
            )),
        }
    }

    /// The string (array) attribute `name` on `path`: fixed or variable length, bytes or UTF-8,
    /// scalar or 1-d. An empty numeric array (what Keras writes for
    /// `top_level_model_weights/@weight_names`) gives an empty list. `None` when absent.
    pub fn attr_strings(&self, path: &str, name: &str) -> Result<Option<Vec<String>>, FormatError> {
        let Some(a) = self.attribute(path, name)? else {
            return Ok(None);
        };
        let part = attr_part(path, name);
        let count = a.num_elements().unwrap_or(u64::MAX);
        match &a.datatype {
            Datatype::String { .. }
            | Datatype::VarLen {
                kind: VarLenKind::String,
                ..
            } => {
                let strings = match &a.decoded_strings {
                    Some(s) => Ok(s.clone()),
                    None => guard(&self.name, &part, || a.read_strings())?,
                }
                .map_err(|e| self.err(part.clone(), format!("cannot decode strings: {e}")))?;
                if strings.len() as u64 != count {
                    return Err(self.err(
                        part,
                        format!("declares {count} strings, decoded {}", strings.len()),
                    ));
                }
                Ok(Some(strings))
            }
            _ if count == 0 => Ok(Some(Vec::new())),
            other => Err(self.err(
                part,
                format!("attribute of type {}, expected strings", dtype_name(other)),
            )),
        }
    }

    /// A numeric scalar attribute as `f64`; `None` when absent.
    pub fn attr_f64(&self, path: &str, name: &str) -> Result<Option<f64>, FormatError> {
        let Some(a) = self.attribute(path, name)? else {
            return Ok(None);
        };
        let part = attr_part(path, name);
        guard(&self.name, &part, || a.read_as_f64())?
            .map(Some)
            .map_err(|e| self.err(part, format!("expected a numeric scalar: {e}")))
    }
}

/// HDF5's signature; the superblock sits at offset 0 or after a user block of 512 · 2^k bytes.
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Refuses a file shorter than the end-of-file address its superblock records.
///
/// `hdf5-reader` does not make this check, so a file cut at its tail would otherwise load as
/// long as what was cut held nothing it reads. Layout (HDF5 file format spec, §II.A; every
/// offset below is from the signature):
/// - version 0 and 1: signature (8), versions of superblock, free space, root symbol table
///   entry, reserved, shared header (5 bytes), size of offsets (1, at 13), size of lengths (1),
///   reserved (1), leaf and internal node K (2 + 2), consistency flags (4) — 24 bytes; version 1
///   adds indexed storage K (2) and reserved (2). Then base address, free-space address,
///   **end-of-file address**, driver info address (one offset each): the EOF address is at 24 +
///   2·O (version 0) or 28 + 2·O (version 1).
/// - version 2 and 3: signature (8), version (1), size of offsets (1, at 9), size of lengths (1),
///   flags (1), then base address, superblock extension address, **end-of-file address** (at
///   12 + 2·O), root object header address, checksum.
///
/// The stored address counts from the start of the file, user block included (checked on files
/// h5py writes with a 512- and a 1024-byte user block), so it is compared with the whole length.
/// An undefined address (all bits set) and superblock versions above 3 are left to the reader.
fn check_superblock_eof(bytes: &[u8], name: &str) -> Result<(), FormatError> {
    let mut at = 0usize;
    while bytes.get(at..at.saturating_add(8)) != Some(&SIGNATURE[..]) {
        if at.saturating_add(8) > bytes.len() {
            return Ok(()); // no signature: the reader reports it
        }
        at = if at == 0 { 512 } else { at.saturating_mul(2) };
    }
    let bad = |msg: String| Err(FormatError::malformed(name, "superblock", msg));
    let byte = |i: usize| bytes.get(at.saturating_add(i)).copied();
    let Some(version) = byte(8) else {
        return bad("truncated after the signature; expected a superblock version".into());
    };
    let (size_pos, base_pos) = match version {
        0 => (13, 24),
        1 => (13, 28),
        2 | 3 => (9, 12),
        _ => return Ok(()),
    };
    let Some(size) = byte(size_pos) else {
        return bad(format!(
            "version {version} superblock truncated at {} bytes; expected the size of offsets",
            bytes.len()
        ));
    };
    if !matches!(size, 2 | 4 | 8) {
        return bad(format!(
            "size of offsets is {size}; expected 2, 4 or 8 bytes"
        ));
    }
    let size = usize::from(size);
    let eof_pos = at + base_pos + 2 * size;
    let Some(field) = bytes.get(eof_pos..eof_pos + size) else {
        return bad(format!(
            "version {version} superblock truncated: the file has {} bytes, the end-of-file \
             address field needs {}",
            bytes.len(),
            eof_pos + size
        ));
    };
    let claimed = field
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let undefined = field.iter().all(|&b| b == 0xff);
    let actual = bytes.len() as u64;
    if !undefined && claimed > actual {
        return bad(format!(
            "the file is truncated: the superblock records an end-of-file address of {claimed} \
             bytes, but the file has {actual} bytes"
        ));
    }
    Ok(())
}

/// Reads `n` elements of type `S` and widens them to `f64`.
fn read_as<S>(
    f: &H5File,
    d: &hdf5_reader::Dataset,
    n: usize,
    part: &str,
) -> Result<Vec<f64>, FormatError>
where
    S: hdf5_reader::H5Type + Default + Copy + Into<f64>,
{
    let mut v = try_filled(f, n, S::default(), part)?;
    guard(&f.name, part, || d.read_into(&mut v))?
        .map_err(|e| f.err(part, format!("cannot read: {e}")))?;
    let mut out: Vec<f64> = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| no_memory(f, n, 8, part))?;
    out.extend(v.into_iter().map(Into::into));
    Ok(out)
}

/// `n` copies of `fill`, allocated fallibly: a dataset too large for the memory available
/// (e.g. under `ulimit -v`) is an error naming it, not an abort.
fn try_filled<S: Clone>(f: &H5File, n: usize, fill: S, part: &str) -> Result<Vec<S>, FormatError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| no_memory(f, n, std::mem::size_of::<S>(), part))?;
    v.resize(n, fill);
    Ok(v)
}

fn no_memory(f: &H5File, n: usize, size: usize, part: &str) -> FormatError {
    f.err(
        part,
        format!(
            "cannot allocate {} bytes for {n} elements",
            n.saturating_mul(size)
        ),
    )
}

/// 64-bit integers have no lossless `Into<f64>`.
fn read_int64(
    f: &H5File,
    d: &hdf5_reader::Dataset,
    n: usize,
    part: &str,
    signed: bool,
) -> Result<Vec<f64>, FormatError> {
    let e = |e: hdf5_reader::error::Error| f.err(part, format!("cannot read: {e}"));
    // Converted in place (same size), so no second buffer is needed.
    if signed {
        let mut v = try_filled(f, n, 0i64, part)?;
        guard(&f.name, part, || d.read_into(&mut v))?.map_err(e)?;
        Ok(v.into_iter().map(|x| x as f64).collect())
    } else {
        let mut v = try_filled(f, n, 0u64, part)?;
        guard(&f.name, part, || d.read_into(&mut v))?.map_err(e)?;
        Ok(v.into_iter().map(|x| x as f64).collect())
    }
}

/// IEEE 754 binary16 to f64 (hand-written: 10 lines do not justify the `half` crate).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// numpy-style name of an HDF5 datatype, for messages.
fn dtype_name(t: &Datatype) -> String {
    match t {
        Datatype::FloatingPoint { size, .. } => format!("float{}", u32::from(*size) * 8),
        Datatype::FixedPoint {
            size, signed: true, ..
        } => format!("int{}", u32::from(*size) * 8),
        Datatype::FixedPoint {
            size,
            signed: false,
            ..
        } => format!("uint{}", u32::from(*size) * 8),
        Datatype::String {
            size: StringSize::Fixed(n),
            ..
        } => format!("fixed-length string ({n} bytes)"),
        Datatype::String { .. } => "variable-length string".into(),
        Datatype::VarLen {
            kind: VarLenKind::String,
            ..
        } => "variable-length string".into(),
        Datatype::VarLen { .. } => "variable-length sequence".into(),
        Datatype::Compound { .. } => "compound".into(),
        Datatype::Array { .. } => "array".into(),
        Datatype::Enum { .. } => "enum".into(),
        Datatype::Opaque { .. } => "opaque".into(),
        Datatype::Reference { .. } => "reference".into(),
        Datatype::Bitfield { .. } => "bitfield".into(),
    }
}

fn display_path(path: &str) -> String {
    let p = path.trim_matches('/');
    if p.is_empty() {
        "/".into()
    } else {
        p.into()
    }
}

fn attr_part(path: &str, name: &str) -> String {
    format!("{}@{name}", display_path(path))
}

/// Runs a call into `hdf5-reader`, turning a panic (a bug in the reader on malformed input; none
/// seen in our mutation tests, but the crate is not ours) into a [`FormatError`].
fn guard<R>(file: &str, part: &str, f: impl FnOnce() -> R) -> Result<R, FormatError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        FormatError::malformed(
            file,
            display_path(part),
            "the HDF5 reader failed on malformed data",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superblock of `version` with 8-byte offsets recording `eof`, padded to `len` bytes.
    fn superblock(version: u8, eof: u64, len: usize, user_block: usize) -> Vec<u8> {
        let mut b = vec![0u8; user_block];
        b.extend_from_slice(SIGNATURE);
        b.push(version);
        let base = match version {
            0 | 1 => {
                b.extend_from_slice(&[0, 0, 0, 0, 8, 8, 0, 4, 0, 16, 0, 0, 0, 0, 0]);
                if version == 1 {
                    b.extend_from_slice(&[32, 0, 0, 0]);
                }
                b.len()
            }
            _ => {
                b.extend_from_slice(&[8, 8, 0]);
                b.len()
            }
        };
        assert_eq!(
            base - user_block,
            if version == 1 {
                28
            } else if version == 0 {
                24
            } else {
                12
            }
        );
        b.extend_from_slice(&(user_block as u64).to_le_bytes()); // base address
        b.extend_from_slice(&u64::MAX.to_le_bytes()); // free space / extension: undefined
        b.extend_from_slice(&eof.to_le_bytes());
        b.resize(len.max(b.len()), 0);
        b
    }

    #[test]
    fn superblock_eof_is_checked_for_every_version() {
        for version in [0u8, 1, 2, 3] {
            for ub in [0usize, 512] {
                let n = ub + 200;
                assert!(check_superblock_eof(&superblock(version, n as u64, n, ub), "f").is_ok());
                // Longer than recorded is fine (as for the HDF5 library).
                assert!(check_superblock_eof(&superblock(version, 100, n, ub), "f").is_ok());
                let e = check_superblock_eof(&superblock(version, n as u64 + 1, n, ub), "f.h5")
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("f.h5")
                        && e.contains("superblock")
                        && e.contains(&format!("{}", n + 1))
                        && e.contains(&format!("{n} bytes")),
                    "v{version}: {e}"
                );
                // Undefined address: left to the reader.
                assert!(check_superblock_eof(&superblock(version, u64::MAX, n, ub), "f").is_ok());
            }
        }
        // Cut inside the superblock.
        let full = superblock(0, 200, 200, 0);
        let e = check_superblock_eof(&full[..44], "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("superblock truncated"), "{e}");
        let e = check_superblock_eof(&full[..8], "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("after the signature"), "{e}");
        let mut odd = full.clone();
        odd[13] = 3;
        let e = check_superblock_eof(&odd, "f").unwrap_err().to_string();
        assert!(e.contains("size of offsets is 3"), "{e}");
        // No signature: nothing to check here.
        assert!(check_superblock_eof(b"not hdf5", "f").is_ok());
        assert!(check_superblock_eof(b"", "f").is_ok());
    }

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(f16_to_f64(0xfc00), f64::NEG_INFINITY);
    }
}
