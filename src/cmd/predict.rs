//! `grucell predict --model M --input X.npy --output Y.npy`: a Keras model's outputs.
//!
//! Inputs: `float32` arrays; `float64`, integer and bool arrays are converted (as Keras converts
//! them to the model's dtype); other dtypes (float16, complex, ...) are refused. A model with
//! several inputs takes one `.npz` holding `input_0`, `input_1`, ... (or arrays named after the
//! Keras input layers), or one `--input X.npy` per model input, in model order.
//!
//! Computation is in `float32`, except for a model saved with a `float64` dtype policy, which
//! computes in `float64` and writes `float64` outputs.
//!
//! Outputs: `.npy` for a one-output model; `.npz` (`output_0` ... `output_{k-1}`, in the model's
//! output order) for any model. Files are written atomically (a temporary file, then a rename).

use anyhow::{bail, Context, Result};
use grucell::io::keras::load::{file_dtype, model_from_file};
use grucell::io::keras::load_keras_file;
use grucell::io::npy::{read_npy, read_npz, write_npy, write_npz, Array, ArrayRef};
use grucell::layers::model::Model;
use grucell::{Float, Tensor};
use std::path::{Path, PathBuf};

/// Arguments of `grucell predict`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "A float64 model (saved with dtype float64) computes and writes float64; \
any other model computes and writes float32. A model built for a fixed batch size B (stateful \
models are) takes any multiple of B rows and runs them B at a time, stateful layers carrying \
their states from one batch to the next, as Keras' predict(x, batch_size=B)."
)]
pub struct Args {
    /// The model file (.keras or legacy .h5), or a .safetensors model written by grucell fit.
    #[arg(long, value_name = "M")]
    pub model: PathBuf,
    /// Input array(s): one .npy per model input (repeat the flag, in model input order), or one
    /// .npz with arrays input_0, input_1, ... (or named after the input layers).
    #[arg(long, value_name = "X", required = true)]
    pub input: Vec<PathBuf>,
    /// Output file: .npy for a one-output model, or .npz with arrays output_0, output_1, ...
    #[arg(long, value_name = "Y")]
    pub output: PathBuf,
    /// Threads for the matrix products (1 gives bit-for-bit reproducible results).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: usize,
}

/// The two file kinds this command reads and writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Npy,
    Npz,
}

fn kind_of(p: &Path, what: &str) -> Result<Kind> {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("npy") => Ok(Kind::Npy),
        Some("npz") => Ok(Kind::Npz),
        _ => bail!("{what} {}: expected a .npy or .npz file name", p.display()),
    }
}

/// Reads the input arrays in model-input order. `names` are the Keras input layer names.
fn read_inputs(paths: &[PathBuf], names: &[String]) -> Result<Vec<Array>> {
    let kinds = paths
        .iter()
        .map(|p| kind_of(p, "--input"))
        .collect::<Result<Vec<_>>>()?;
    if let ([path], [Kind::Npz]) = (paths, kinds.as_slice()) {
        let arrays = read_npz(path).context("cannot read --input")?;
        let available = || {
            arrays
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut picked = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let key = format!("input_{i}");
            let found = arrays
                .iter()
                .position(|(k, _)| *k == key)
                .or_else(|| arrays.iter().position(|(k, _)| k == name))
                .or(if names.len() == 1 && arrays.len() == 1 {
                    Some(0)
                } else {
                    None
                });
            match found {
                Some(j) => picked.push(j),
                None => bail!(
                    "--input {}: no array for model input {i} (`{name}`): expected an array named `{key}` or `{name}`, found [{}]",
                    path.display(),
                    available()
                ),
            }
        }
        // Move the arrays out (an input named twice, e.g. `input_0` and a layer name, is cloned).
        let mut slots: Vec<Option<Array>> = arrays.into_iter().map(|(_, a)| Some(a)).collect();
        let mut out = Vec::with_capacity(picked.len());
        for (n, &j) in picked.iter().enumerate() {
            let reused_later = picked[n + 1..].contains(&j);
            let a = match slots.get_mut(j) {
                Some(slot) if reused_later => slot.clone(),
                Some(slot) => slot.take(),
                None => None,
            };
            out.push(a.ok_or_else(|| {
                anyhow::anyhow!("--input {}: array {j} taken twice", path.display())
            })?);
        }
        return Ok(out);
    }
    if let Some(p) = paths
        .iter()
        .zip(&kinds)
        .find_map(|(p, k)| (*k == Kind::Npz).then_some(p))
    {
        bail!(
            "--input {}: an .npz input must be the only --input (it holds all model inputs)",
            p.display()
        );
    }
    if paths.len() != names.len() {
        bail!(
            "the model has {} input(s) ({}) but {} --input file(s) were given: give one .npy per input, in this order, or one .npz",
            names.len(),
            names.join(", "),
            paths.len()
        );
    }
    paths
        .iter()
        .map(|p| read_npy(p).context("cannot read --input"))
        .collect()
}

/// Runs the model in `T` on `inputs` and writes the outputs to `args.output`.
fn predict_and_write<T: Float>(mut model: Model<T>, args: &Args) -> Result<()>
where
    for<'a> &'a Tensor<T>: Into<ArrayRef<'a>>,
{
    let out_kind = kind_of(&args.output, "--output")?;
    let n_out = model.outputs.len();
    if out_kind == Kind::Npy && n_out != 1 {
        bail!(
            "--output {}: the model has {n_out} outputs; use an .npz output file (it will hold output_0 ... output_{})",
            args.output.display(),
            n_out.saturating_sub(1)
        );
    }
    let names: Vec<String> = model
        .inputs
        .iter()
        .map(|r| {
            model
                .layers
                .get(r.layer)
                .map_or_else(String::new, |l| l.name.clone())
        })
        .collect();
    let xs: Vec<Tensor<T>> = read_inputs(&args.input, &names)?
        .into_iter()
        .map(Array::into_float)
        .collect();
    model.set_threads(args.threads);
    // A model built for a fixed batch size (stateful ones must be) runs more rows the way
    // Keras' `predict(x, batch_size=B)` does: B rows at a time, states carried across.
    let fixed = model.fixed_batch_size();
    let rows = xs.first().and_then(|x| x.shape().first().copied());
    let outs = match (fixed, rows) {
        (Some(b), Some(n)) if b > 0 && n > b && n % b == 0 => model.predict_in_batches(&xs, b),
        _ => model.predict_stateful(&xs),
    }
    .with_context(|| {
        let inputs: Vec<String> = args.input.iter().map(|p| p.display().to_string()).collect();
        format!(
            "cannot run --model {} on --input {}",
            args.model.display(),
            inputs.join(", ")
        )
    })?;
    match (out_kind, outs.as_slice()) {
        (Kind::Npy, [y]) => write_npy(&args.output, y).context("cannot write --output")?,
        (Kind::Npy, _) => bail!("the model returned {} outputs instead of 1", outs.len()),
        (Kind::Npz, _) => {
            let named: Vec<(String, ArrayRef)> = outs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("output_{i}"), t.into()))
                .collect();
            write_npz(&args.output, &named).context("cannot write --output")?;
        }
    }
    Ok(())
}

/// Runs `grucell predict`.
pub fn run(args: &Args) -> Result<()> {
    let file = load_keras_file(&args.model).context("cannot load --model")?;
    super::warn_reduced_precision(&file, &format!("--model {}", args.model.display()));
    // Config errors name the layer and the value; the context adds the file.
    let building = || format!("cannot build the model in --model {}", args.model.display());
    if file_dtype(&file) == "float64" {
        predict_and_write(model_from_file::<f64>(&file).with_context(building)?, args)
    } else {
        predict_and_write(model_from_file::<f32>(&file).with_context(building)?, args)
    }
}
