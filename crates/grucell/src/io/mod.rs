//! File formats: Keras `.keras` and legacy `.h5`, `.npy`/`.npz`, safetensors, CSV.

pub mod atomic;
pub mod h5;
pub mod keras;
pub mod npy;
pub mod safetensors;
