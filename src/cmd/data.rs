//! What `fit` and `evaluate` share: their model and data arguments, reading the arrays and sample
//! weights, the default batch size, the loss and the compiled metrics to use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use grucell::io::keras::load::model_from_file;
use grucell::io::keras::{load_keras_file, KerasFile};
use grucell::io::npy::read_npy;
use grucell::layers::model::Model;
use grucell::train::loss::Loss;
use grucell::train::metrics::Metric;
use grucell::{Float, Tensor};

/// The model and arrays `fit` and `evaluate` read.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelData {
    /// Keras model file (.keras or legacy .h5), or a .safetensors model written by grucell fit.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Inputs (.npy), samples on axis 0; repeat once per model input.
    #[arg(long, value_name = "X.npy", required = true)]
    pub x: Vec<PathBuf>,
    /// Targets (.npy), samples on axis 0; repeat once per model output.
    #[arg(long, value_name = "Y.npy", required = true)]
    pub y: Vec<PathBuf>,
}

impl ModelData {
    /// Loads `--model` (warning when Keras computes it in 16-bit floats).
    pub fn open(&self) -> Result<KerasFile> {
        let file = load_keras_file(&self.model)
            .with_context(|| format!("loading --model {}", self.model.display()))?;
        super::warn_reduced_precision(&file, &format!("--model {}", self.model.display()));
        Ok(file)
    }

    /// The model of the loaded `--model` file, computing in `T`.
    pub fn build<T: Float>(&self, file: &KerasFile) -> Result<Model<T>> {
        model_from_file(file)
            .with_context(|| format!("cannot build the model in --model {}", self.model.display()))
    }
}

/// Keras' default batch size (32), or the fixed input batch size of a stateful model, which
/// takes batches of that size only.
pub fn default_batch_size<T: Float>(model: &Model<T>) -> usize {
    match model.fixed_batch_size() {
        Some(b) if model.is_stateful() => b,
        _ => 32,
    }
}

/// Reads one `.npy` per path (`flag` names them in errors), converted to `T`.
pub fn read_arrays<T: Float>(paths: &[PathBuf], flag: &str) -> Result<Vec<Tensor<T>>> {
    paths
        .iter()
        .map(|p| {
            read_npy(p)
                .map(|a| a.into_float::<T>())
                .with_context(|| format!("reading {flag} {}", p.display()))
        })
        .collect()
}

/// `--sample-weight` (`flag`): weights shaped like the loss terms, `(N,)` or `(N, T)`.
pub fn read_sample_weight(path: &Path, flag: &str) -> Result<Tensor<f64>> {
    let a = read_npy(path)
        .map(|a| a.into_float::<f64>())
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    if !(1..=2).contains(&a.shape().len()) {
        bail!(
            "{flag} {}: shape {:?}, expected (samples,) or (samples, steps)",
            path.display(),
            a.shape()
        );
    }
    Ok(a)
}

/// A count flag's parser: an integer ≥ 1.
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// The loss: `--loss NAME` when given, else the one in the model file's compile config.
pub fn loss_of<T: Float>(model: &Model<T>, flag: Option<&str>, path: &Path) -> Result<Loss> {
    match flag {
        Some(name) => Loss::from_name(name).context("--loss"),
        None => model
            .compiled_loss()
            .with_context(|| format!("reading the compile config of {}", path.display()))?
            .with_context(|| {
                format!(
                    "no --loss and {} has no compile config with a loss; give one, e.g. --loss mse",
                    path.display()
                )
            }),
    }
}

/// The model's compiled metrics that grucell computes (`metrics`, `weighted_metrics`); a
/// warning on stderr names each one it does not.
pub fn compiled_metrics<T: Float>(model: &Model<T>, shown: &str) -> (Vec<Metric>, Vec<Metric>) {
    let c = model.compiled_metrics();
    for u in &c.unsupported {
        eprintln!("warning: {shown}: compiled {u}; it is left out");
    }
    (c.metrics, c.weighted_metrics)
}
