//! `.npy`, `.npz`, safetensors and raw HDF5 bytes: every reader over the same input.
#![no_main]

use grucell::io::h5::H5File;
use grucell::io::npy::{read_npy_bytes, read_npz_bytes};
use grucell::io::safetensors::load_safetensors_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_npy_bytes(data, "fuzz.npy");
    let _ = read_npz_bytes(data, "fuzz.npz");
    let _ = load_safetensors_bytes(data, "fuzz.safetensors");
    if let Ok(h) = H5File::from_bytes(data.to_vec(), "fuzz.h5") {
        if let Ok(paths) = h.datasets_under("") {
            for p in paths.iter().take(64) {
                let _ = h.read_f64(p);
            }
        }
        for g in ["", "model_weights", "layers", "optimizer/vars"] {
            let _ = h.group_names(g);
            if let Ok(names) = h.attr_names(g) {
                for n in names.iter().take(16) {
                    let _ = h.attr_strings(g, n);
                    let _ = h.attr_f64(g, n);
                }
            }
        }
    }
});
