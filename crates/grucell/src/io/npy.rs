//! numpy's `.npy` and `.npz` files.
//!
//! Reading accepts `float32` and `float64` arrays in either byte order and in C or Fortran order
//! (Fortran arrays are transposed into grucell's row-major layout), plus integer and bool arrays,
//! which are converted to `float64` (integers above 2^53 lose precision). Anything else (float16,
//! float128, complex, object, string, datetime, structured dtypes) is refused with an error naming
//! the dtype. Writing produces little-endian C-order `<f4` / `<f8` files that numpy reads back.
//!
//! The header dictionary and the element bytes are decoded by `npyz`, the `.npz` container by
//! `zip`. Before anything is handed to them, this module checks what those crates would trust:
//! magic and version, header length (at most [`MAX_HEADER_BYTES`]), bracket nesting depth, the
//! shape (overflow-checked product, at most [`MAX_ELEMENTS`]) against the bytes actually present,
//! and for zip entries their declared and actual sizes. No input can make a read allocate much more
//! than the file holds.
//!
//! ```
//! use grucell::io::npy::{read_npy, write_npy, Array};
//! use grucell::Tensor;
//! let dir = std::env::temp_dir().join(format!("grucell-npy-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("x.npy");
//! let t = Tensor::<f32>::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! write_npy(&path, &t)?;
//! let back = read_npy(&path)?;
//! assert_eq!(back.shape(), &[2, 3]);
//! assert_eq!(back, Array::F32(t));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{Read, Write};
use std::path::Path;

use npyz::{DType, TypeChar, WriterBuilder};

use crate::error::FormatError;
use crate::float::Float;
use crate::io::atomic::atomic_write;
use crate::tensor::{checked_numel, Tensor};

/// Largest `.npy` header (the Python dict literal) accepted, in bytes. numpy's own reader refuses
/// headers over 10 000 bytes unless asked to.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest element count accepted for one array (2^31: 8 GiB as `float32`).
pub const MAX_ELEMENTS: u64 = 1 << 31;

/// Largest uncompressed size accepted for one zip entry (2 GiB), whatever the archive size.
pub const MAX_ZIP_ENTRY_BYTES: u64 = 2 << 30;

/// Largest expansion ratio accepted for one zip entry (deflate cannot exceed about 1032:1).
pub const MAX_ZIP_EXPANSION: u64 = 1100;

/// Deepest bracket nesting accepted in a `.npy` header (numpy writes depth 1 for plain arrays).
const MAX_HEADER_NESTING: usize = 16;

/// An array read from a `.npy` file: `float32` stays `f32`, everything else numeric is `f64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// A `float32` array.
    F32(Tensor<f32>),
    /// A `float64` array, or an integer/bool array converted to `float64`.
    F64(Tensor<f64>),
}

impl Array {
    /// The shape (`[]` for a 0-d array).
    pub fn shape(&self) -> &[usize] {
        match self {
            Array::F32(t) => t.shape(),
            Array::F64(t) => t.shape(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::F32(t) => t.len(),
            Array::F64(t) => t.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"float32"` or `"float64"`.
    pub fn dtype(&self) -> &'static str {
        match self {
            Array::F32(_) => f32::DTYPE,
            Array::F64(_) => f64::DTYPE,
        }
    }

    /// A copy as `f32` (`f64` values are rounded).
    pub fn to_f32(&self) -> Tensor<f32> {
        match self {
            Array::F32(t) => t.clone(),
            Array::F64(t) => t.cast(),
        }
    }

    /// A copy as `f64` (exact).
    pub fn to_f64(&self) -> Tensor<f64> {
        match self {
            Array::F32(t) => t.cast(),
            Array::F64(t) => t.clone(),
        }
    }

    /// As `T`, converting only when the stored type differs.
    pub fn into_float<T: Float>(self) -> Tensor<T> {
        match self {
            Array::F32(t) => t.cast(),
            Array::F64(t) => t.cast(),
        }
    }

    /// A borrowed view, for [`write_npz`].
    pub fn as_array_ref(&self) -> ArrayRef<'_> {
        match self {
            Array::F32(t) => ArrayRef::F32(t),
            Array::F64(t) => ArrayRef::F64(t),
        }
    }
}

impl From<Tensor<f32>> for Array {
    fn from(t: Tensor<f32>) -> Self {
        Array::F32(t)
    }
}

impl From<Tensor<f64>> for Array {
    fn from(t: Tensor<f64>) -> Self {
        Array::F64(t)
    }
}

/// A borrowed `f32` or `f64` tensor, to be written by [`write_npz`].
#[derive(Clone, Copy, Debug)]
pub enum ArrayRef<'a> {
    /// Written as `<f4`.
    F32(&'a Tensor<f32>),
    /// Written as `<f8`.
    F64(&'a Tensor<f64>),
}

impl<'a> From<&'a Tensor<f32>> for ArrayRef<'a> {
    fn from(t: &'a Tensor<f32>) -> Self {
        ArrayRef::F32(t)
    }
}

impl<'a> From<&'a Tensor<f64>> for ArrayRef<'a> {
    fn from(t: &'a Tensor<f64>) -> Self {
        ArrayRef::F64(t)
    }
}

impl<'a> From<&'a Array> for ArrayRef<'a> {
    fn from(a: &'a Array) -> Self {
        a.as_array_ref()
    }
}

/// Reads a whole file into memory, naming the path on error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, FormatError> {
    std::fs::read(path).map_err(|e| FormatError::io(path.display().to_string(), e))
}

/// Reads a `.npy` file.
///
/// Errors name the file and the part (header, dtype, data) and say what was expected.
pub fn read_npy(path: &Path) -> Result<Array, FormatError> {
    let bytes = read_file(path)?;
    read_npy_bytes(&bytes, &path.display().to_string())
}

/// Reads `.npy` content held in memory; `name_for_errors` is used in error messages.
///
/// ```
/// use grucell::io::npy::read_npy_bytes;
/// let err = read_npy_bytes(b"not numpy", "x.npy").unwrap_err();
/// assert!(err.to_string().contains("x.npy"));
/// ```
pub fn read_npy_bytes(bytes: &[u8], name_for_errors: &str) -> Result<Array, FormatError> {
    let name = name_for_errors;
    let bad = |part: &str, msg: String| FormatError::malformed(name, part, msg);

    // 1. Pre-header: magic, version, header length.
    let magic = bytes.get(..6);
    if magic != Some(b"\x93NUMPY".as_slice()) {
        return Err(bad(
            "header",
            "not a .npy file: expected the magic bytes \\x93NUMPY".into(),
        ));
    }
    let major = bytes.get(6).copied().unwrap_or(0);
    let (prefix, header_len) = match major {
        1 => (
            10usize,
            bytes
                .get(8..10)
                .and_then(|b| b.try_into().ok())
                .map(|b| u16::from_le_bytes(b) as usize),
        ),
        2 | 3 => (
            12usize,
            bytes
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_le_bytes(b) as usize),
        ),
        v => {
            return Err(bad(
                "header",
                format!("unsupported .npy format version {v}, expected 1, 2 or 3"),
            ))
        }
    };
    let header_len =
        header_len.ok_or_else(|| bad("header", "file truncated in the header length".into()))?;
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(
            "header",
            format!("header of {header_len} bytes, expected at most {MAX_HEADER_BYTES}"),
        ));
    }
    let data_start = prefix + header_len;
    let text = bytes.get(prefix..data_start).ok_or_else(|| {
        bad(
            "header",
            format!(
                "file truncated: header needs {data_start} bytes, file has {}",
                bytes.len()
            ),
        )
    })?;
    let text =
        std::str::from_utf8(text).map_err(|_| bad("header", "header is not UTF-8 text".into()))?;

    // 2. Checks npyz does not make: nesting depth (its parser recurses) and the shape product
    //    (it multiplies without overflow checks).
    let depth = max_nesting(text);
    if depth > MAX_HEADER_NESTING {
        return Err(bad(
            "header",
            format!("brackets nested {depth} deep, expected at most {MAX_HEADER_NESTING}"),
        ));
    }
    let scanned = scan_shape(text).ok_or_else(|| {
        bad(
            "header",
            "could not find `'shape': (…)` as a tuple of non-negative integers".into(),
        )
    })?;
    let numel = scanned
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            bad(
                "header",
                format!("shape {scanned:?} has more than {MAX_ELEMENTS} elements"),
            )
        })?;

    // 3. Let npyz parse the dict.
    let header = npyz::NpyHeader::from_reader(bytes.get(..data_start).unwrap_or_default())
        .map_err(|e| bad("header", format!("invalid header: {e}")))?;
    if header.shape() != scanned.as_slice() {
        return Err(bad(
            "header",
            format!("ambiguous shape: {:?} vs {:?}", header.shape(), scanned),
        ));
    }
    let dtype = header.dtype();
    let ts = match &dtype {
        DType::Plain(ts) => ts.clone(),
        other => {
            return Err(bad(
                "dtype",
                format!(
                    "structured dtype {}; expected a float32/float64, integer or bool array",
                    other.descr()
                ),
            ))
        }
    };
    let kind = ElemKind::of(ts.type_char(), ts.size_field()).ok_or_else(|| {
        bad(
            "dtype",
            format!(
                "dtype '{ts}' ({}) is not supported; expected float32, float64, an integer or bool \
                 (convert with arr.astype('float32'))",
                describe(ts.type_char(), ts.size_field())
            ),
        )
    })?;

    // 4. The data must be exactly what the shape and dtype need.
    let data = bytes.get(data_start..).unwrap_or_default();
    let needed = numel
        .checked_mul(kind.size())
        .ok_or_else(|| bad("data", "size overflows".into()))?;
    if data.len() as u64 != needed {
        return Err(bad(
            "data",
            format!(
                "shape {scanned:?} of '{ts}' needs {needed} bytes of data, found {}",
                data.len()
            ),
        ));
    }
    let shape: Vec<usize> = scanned.iter().map(|&d| d as usize).collect();
    let fortran = header.order() == npyz::Order::Fortran;
    let npy = npyz::NpyFile::with_header(header, data);
    let read_err =
        |e: std::io::Error| bad("data", format!("could not decode '{ts}' elements: {e}"));
    let array = match kind {
        ElemKind::F32 => Array::F32(finish(
            npy.into_vec::<f32>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::F64 => Array::F64(finish(
            npy.into_vec::<f64>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::I8 => Array::F64(widen(
            npy.into_vec::<i8>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::I16 => Array::F64(widen(
            npy.into_vec::<i16>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::I32 => Array::F64(widen(
            npy.into_vec::<i32>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::I64 => Array::F64(finish(
            npy.into_vec::<i64>()
                .map_err(read_err)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            &shape,
            fortran,
            name,
        )?),
        ElemKind::U8 => Array::F64(widen(
            npy.into_vec::<u8>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::U16 => Array::F64(widen(
            npy.into_vec::<u16>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::U32 => Array::F64(widen(
            npy.into_vec::<u32>().map_err(read_err)?,
            &shape,
            fortran,
            name,
        )?),
        ElemKind::U64 => Array::F64(finish(
            npy.into_vec::<u64>()
                .map_err(read_err)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            &shape,
            fortran,
            name,
        )?),
        ElemKind::Bool => Array::F64(finish(
            npy.into_vec::<bool>()
                .map_err(read_err)?
                .into_iter()
                .map(|b| if b { 1.0 } else { 0.0 })
                .collect(),
            &shape,
            fortran,
            name,
        )?),
    };
    Ok(array)
}

/// The element types grucell reads.
#[derive(Clone, Copy, Debug)]
enum ElemKind {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl ElemKind {
    fn of(c: TypeChar, size: u64) -> Option<Self> {
        Some(match (c, size) {
            (TypeChar::Float, 4) => ElemKind::F32,
            (TypeChar::Float, 8) => ElemKind::F64,
            (TypeChar::Int, 1) => ElemKind::I8,
            (TypeChar::Int, 2) => ElemKind::I16,
            (TypeChar::Int, 4) => ElemKind::I32,
            (TypeChar::Int, 8) => ElemKind::I64,
            (TypeChar::Uint, 1) => ElemKind::U8,
            (TypeChar::Uint, 2) => ElemKind::U16,
            (TypeChar::Uint, 4) => ElemKind::U32,
            (TypeChar::Uint, 8) => ElemKind::U64,
            (TypeChar::Bool, 1) => ElemKind::Bool,
            _ => return None,
        })
    }

    fn size(self) -> u64 {
        match self {
            ElemKind::I8 | ElemKind::U8 | ElemKind::Bool => 1,
            ElemKind::I16 | ElemKind::U16 => 2,
            ElemKind::F32 | ElemKind::I32 | ElemKind::U32 => 4,
            ElemKind::F64 | ElemKind::I64 | ElemKind::U64 => 8,
        }
    }
}

/// A numpy-style name for an unsupported element type, for error messages.
fn describe(c: TypeChar, size: u64) -> String {
    match c {
        TypeChar::Float => format!("float{}", size * 8),
        TypeChar::Complex => format!("complex{}", size * 8),
        TypeChar::Object => "object (pickled Python objects)".into(),
        TypeChar::ByteStr => "bytes string".into(),
        TypeChar::UnicodeStr => "unicode string".into(),
        TypeChar::TimeDelta => "timedelta64".into(),
        TypeChar::DateTime => "datetime64".into(),
        TypeChar::RawData => "raw void".into(),
        other => format!("{other:?} of {size} bytes"),
    }
}

/// Converts lossless integer types to `f64`, then [`finish`].
fn widen<S: Into<f64>>(
    v: Vec<S>,
    shape: &[usize],
    fortran: bool,
    name: &str,
) -> Result<Tensor<f64>, FormatError> {
    finish(
        v.into_iter().map(Into::into).collect(),
        shape,
        fortran,
        name,
    )
}

/// Reorders Fortran data to C order and wraps it in a tensor.
fn finish<T: Copy>(
    data: Vec<T>,
    shape: &[usize],
    fortran: bool,
    name: &str,
) -> Result<Tensor<T>, FormatError> {
    let data = if fortran {
        fortran_to_c(&data, shape).ok_or_else(|| {
            FormatError::malformed(name, "data", "Fortran-order data does not match its shape")
        })?
    } else {
        data
    };
    Tensor::new(shape.to_vec(), data)
        .map_err(|e| FormatError::malformed(name, "data", e.to_string()))
}

/// Rearranges column-major (Fortran) data into row-major order. `None` if the lengths disagree.
fn fortran_to_c<T: Copy>(data: &[T], shape: &[usize]) -> Option<Vec<T>> {
    let n = checked_numel(shape)?;
    if n != data.len() {
        return None;
    }
    if shape.len() < 2 || n == 0 {
        return Some(data.to_vec());
    }
    // Fortran strides: axis 0 is contiguous.
    let mut fstride = Vec::with_capacity(shape.len());
    let mut acc = 1usize;
    for &d in shape {
        fstride.push(acc);
        acc = acc.checked_mul(d)?;
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(*data.get(off)?);
        // Advance the C-order odometer (last axis fastest), keeping the Fortran offset in step.
        for k in (0..shape.len()).rev() {
            let (i, d, s) = (idx.get_mut(k)?, *shape.get(k)?, *fstride.get(k)?);
            *i += 1;
            off += s;
            if *i < d {
                break;
            }
            *i = 0;
            off -= s * d;
        }
    }
    Some(out)
}

/// Deepest nesting of `(`, `[`, `{` in `text` (brackets inside quotes are counted too, which
/// only errs on the safe side).
fn max_nesting(text: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    for b in text.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Finds `'shape': (d0, d1, …)` in a header dict and parses its decimal dimensions.
///
/// Hand-written because npyz multiplies the dimensions without overflow checks; the result is
/// cross-checked against npyz's own parse.
fn scan_shape(text: &str) -> Option<Vec<u64>> {
    for key in ["'shape'", "\"shape\""] {
        let mut from = 0;
        while let Some(pos) = text.get(from..)?.find(key) {
            let after = text.get(from + pos + key.len()..)?.trim_start();
            if let Some(rest) = after.strip_prefix(':') {
                let rest = rest.trim_start();
                let close = match rest.chars().next()? {
                    '(' => ')',
                    '[' => ']',
                    _ => return None,
                };
                let end = rest.find(close)?;
                let inner = rest.get(1..end)?;
                let mut dims = Vec::new();
                for tok in inner.split(',') {
                    let tok = tok.trim();
                    if tok.is_empty() {
                        continue;
                    }
                    if !tok.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    dims.push(tok.parse::<u64>().ok()?);
                }
                // Python needs a trailing comma for a 1-tuple, but "(3)" would be the int 3.
                if close == ')' && dims.len() == 1 && !inner.contains(',') {
                    return None;
                }
                return Some(dims);
            }
            from += pos + key.len();
        }
    }
    None
}

/// Reads a `.npz` file: every `*.npy` entry, in archive order, keyed by its name without `.npy`.
///
/// Both `np.savez` (stored) and `np.savez_compressed` (deflate) archives are read. Entries not
/// ending in `.npy` and directories are skipped. Entry names are only used as keys (nothing is
/// ever extracted to disk), so names like `../x.npy` are harmless and kept as they are.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>, FormatError> {
    let bytes = read_file(path)?;
    read_npz_bytes(&bytes, &path.display().to_string())
}

/// [`read_npz`] on bytes held in memory.
pub fn read_npz_bytes(
    bytes: &[u8],
    name_for_errors: &str,
) -> Result<Vec<(String, Array)>, FormatError> {
    let entries = read_zip_entries(bytes, name_for_errors, |n| n.ends_with(".npy"))?;
    let mut out = Vec::with_capacity(entries.len());
    for (entry, data) in entries {
        let label = format!("{name_for_errors}[{entry}]");
        let array = read_npy_bytes(&data, &label)?;
        let key = entry.strip_suffix(".npy").unwrap_or(&entry).to_string();
        out.push((key, array));
    }
    Ok(out)
}

/// Reads the file entries of an in-memory zip archive whose names satisfy `want`, in archive order.
///
/// Every entry's declared size is checked against [`MAX_ZIP_ENTRY_BYTES`] and
/// [`MAX_ZIP_EXPANSION`] × the archive size before reading, and the read itself is bounded by the
/// same limit (a lying header cannot make it read more). CRCs are checked by `zip`.
pub(crate) fn read_zip_entries(
    bytes: &[u8],
    name: &str,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, FormatError> {
    let zerr = |part: &str, e: zip::result::ZipError| {
        FormatError::malformed(name, part, format!("invalid zip archive: {e}"))
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| zerr("zip directory", e))?;
    let limit = (bytes.len() as u64)
        .saturating_mul(MAX_ZIP_EXPANSION)
        .clamp(1 << 16, MAX_ZIP_ENTRY_BYTES);
    let mut total = 0u64;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| zerr(&format!("zip entry #{i}"), e))?;
        let entry_name = entry
            .name()
            .map_err(|e| zerr(&format!("zip entry #{i}"), e))?
            .into_owned();
        if entry.is_dir() || !want(&entry_name) {
            continue;
        }
        let part = format!("zip entry {entry_name:?}");
        let declared = entry.size();
        if declared > limit {
            return Err(FormatError::malformed(
                name,
                part,
                format!(
                    "declares {declared} uncompressed bytes, expected at most {limit} for a {}-byte archive",
                    bytes.len()
                ),
            ));
        }
        // Reserved fallibly, so that running out of memory (e.g. under `ulimit -v`) is an error
        // rather than an abort; reading one byte past the declared size detects a lying header.
        let mut data = Vec::new();
        usize::try_from(declared)
            .ok()
            .and_then(|n| data.try_reserve_exact(n).ok())
            .ok_or_else(|| {
                FormatError::malformed(
                    name,
                    part.clone(),
                    format!("cannot allocate {declared} bytes to decompress it"),
                )
            })?;
        (&mut entry)
            .take(declared + 1)
            .read_to_end(&mut data)
            .map_err(|e| {
                FormatError::malformed(name, part.clone(), format!("could not decompress: {e}"))
            })?;
        if data.len() as u64 != declared {
            return Err(FormatError::malformed(
                name,
                part,
                format!("declares {declared} bytes, holds {}", data.len()),
            ));
        }
        total = total.saturating_add(declared);
        if total > 2 * MAX_ZIP_ENTRY_BYTES {
            return Err(FormatError::malformed(
                name,
                part,
                format!(
                    "entries add up to more than {} bytes",
                    2 * MAX_ZIP_ENTRY_BYTES
                ),
            ));
        }
        out.push((entry_name, data));
    }
    Ok(out)
}

/// Writes `t` as a little-endian C-order `.npy` (`<f4` or `<f8`).
///
/// Atomic: the data goes to a temporary file in the same directory, which is then renamed over
/// `path`; on error the temporary file is removed and `path` is untouched.
pub fn write_npy<T: Float>(path: &Path, t: &Tensor<T>) -> Result<(), FormatError> {
    atomic_write(path, |w| write_npy_to(w, t))
}

/// Writes `.npy` bytes for `t` to `w`.
pub fn write_npy_to<W: Write, T: Float>(w: W, t: &Tensor<T>) -> std::io::Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    if T::DTYPE == f32::DTYPE {
        let mut npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()?;
        // Exact for T = f32.
        npy.extend(t.data().iter().map(|x| x.f64() as f32))?;
        npy.finish()
    } else {
        let mut npy = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&shape)
            .writer(w)
            .begin_nd()?;
        npy.extend(t.data().iter().map(|x| x.f64()))?;
        npy.finish()
    }
}

/// Writes a `.npz` (stored entries, like `np.savez`): one `<key>.npy` per array, in order.
///
/// Keys must be non-empty and distinct. Atomic like [`write_npy`].
pub fn write_npz(path: &Path, arrays: &[(String, ArrayRef)]) -> Result<(), FormatError> {
    let pname = path.display().to_string();
    for (i, (key, _)) in arrays.iter().enumerate() {
        if key.is_empty() {
            return Err(FormatError::malformed(
                &pname,
                format!("array #{i}"),
                "empty key, expected a name",
            ));
        }
        if arrays.iter().take(i).any(|(k, _)| k == key) {
            return Err(FormatError::malformed(
                &pname,
                format!("array {key:?}"),
                "duplicate key, expected distinct names",
            ));
        }
    }
    atomic_write(path, |w| {
        let mut zw = zip::ZipWriter::new(w);
        let mut buf = Vec::new();
        for (key, array) in arrays {
            buf.clear();
            match array {
                ArrayRef::F32(t) => write_npy_to(&mut buf, *t)?,
                ArrayRef::F64(t) => write_npy_to(&mut buf, *t)?,
            }
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(buf.len() as u64 >= u32::MAX as u64);
            zw.start_file(format!("{key}.npy"), opts)
                .map_err(std::io::Error::other)?;
            zw.write_all(&buf)?;
        }
        zw.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_shape_forms() {
        assert_eq!(
            scan_shape("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            Some(vec![2, 3])
        );
        assert_eq!(scan_shape("{'shape': (), 'descr': '<f4'}"), Some(vec![]));
        assert_eq!(scan_shape("{'shape': (7,), }"), Some(vec![7]));
        assert_eq!(scan_shape("{'shape': [4, 5]}"), Some(vec![4, 5]));
        assert_eq!(scan_shape("{'shape': (7)}"), None);
        assert_eq!(scan_shape("{'shape': (-1,)}"), None);
        assert_eq!(scan_shape("{'shape': (99999999999999999999999,)}"), None);
        assert_eq!(scan_shape("{'descr': '<f4'}"), None);
    }

    #[test]
    fn fortran_transpose() {
        // numpy: np.asfortranarray(np.arange(6).reshape(2, 3)).ravel(order='K') == [0, 3, 1, 4, 2, 5]
        let f = [0, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&f, &[2, 3]), Some(vec![0, 1, 2, 3, 4, 5]));
        // 2x3x2: C index (i,j,k) = 6i+2j+k; F offset = i + 2j + 6k.
        let mut f = vec![0; 12];
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..2 {
                    f[i + 2 * j + 6 * k] = 6 * i + 2 * j + k;
                }
            }
        }
        assert_eq!(fortran_to_c(&f, &[2, 3, 2]), Some((0..12).collect()));
        assert_eq!(fortran_to_c(&[1, 2], &[3]), None);
    }

    #[test]
    fn nesting() {
        assert_eq!(max_nesting("{'a': ((1,),)}"), 3);
    }
}
