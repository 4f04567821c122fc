//! Keras model files: `.keras` (zip of config.json + model.weights.h5) and legacy `.h5`.

pub mod archive;
pub mod legacy_h5;
pub mod save;
