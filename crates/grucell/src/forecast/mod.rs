//! Forecasting a univariate series with a small GRU: CSV loading, gap handling, representation
//! choice, training with early stopping, baselines, metrics, a plot and a Keras model.
//!
//! The entry point is [`pipeline::forecast`]; [`write_outputs`] writes what `grucell forecast`
//! and `grucell demo` leave in their output folder.
//!
//! Missing values: empty (or `NA`, `NaN`, …) cells inside the series are filled by linear
//! interpolation between the neighbouring observations; missing values before the first or
//! after the last observation are dropped (see [`series::fill_gaps`]). `metrics.json` reports
//! how many of each there were.

pub mod baseline;
pub mod csv;
pub mod ensemble;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod series;

use std::path::{Path, PathBuf};

use crate::error::{Error, FormatError};
use crate::forecast::pipeline::ForecastOutcome;

/// The files [`write_outputs`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFiles {
    /// `metrics.json`.
    pub metrics: PathBuf,
    /// `forecast.png`.
    pub plot: PathBuf,
    /// `model.keras`.
    pub model: PathBuf,
    /// `test_inputs.npy`: the model inputs of the test windows.
    pub test_inputs: PathBuf,
}

/// Writes `metrics.json`, `forecast.png`, `model.keras` and `test_inputs.npy` into `dir`
/// (created if needed).
pub fn write_outputs(outcome: &ForecastOutcome, dir: &Path) -> Result<OutputFiles, Error> {
    std::fs::create_dir_all(dir).map_err(|e| FormatError::io(dir.display().to_string(), e))?;
    let files = OutputFiles {
        metrics: dir.join("metrics.json"),
        plot: dir.join("forecast.png"),
        model: dir.join("model.keras"),
        test_inputs: dir.join("test_inputs.npy"),
    };
    let json = serde_json::to_string_pretty(&outcome.metrics).map_err(|e| {
        FormatError::malformed(
            files.metrics.display().to_string(),
            "metrics",
            e.to_string(),
        )
    })?;
    std::fs::write(&files.metrics, json + "\n")
        .map_err(|e| FormatError::io(files.metrics.display().to_string(), e))?;
    plot::draw_forecast(&outcome.plot, &files.plot)?;
    crate::io::keras::write::save_model(&outcome.model, &files.model)?;
    crate::io::npy::write_npy(&files.test_inputs, &outcome.test_inputs)?;
    Ok(files)
}
