//! Helpers shared by the CLI test crates.

/// A `.npy` file with a hand-written header dict (`descr`, `shape` as Python writes them, e.g.
/// `'<i8'` and `(2, 3)`) and raw little-endian data.
pub fn npy_raw(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    v.extend_from_slice(dict.as_bytes());
    v.extend_from_slice(data);
    v
}
