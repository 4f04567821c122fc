//! `grucell evaluate --model M --x X.npy --y Y.npy`: Keras' `model.evaluate`, the loss of a
//! model on data.
//!
//! The loss is the one named by `--loss`, else the model file's compiled loss, computed as
//! Keras' `evaluate(x, y, batch_size, sample_weight)` computes it: in inference mode, batch by
//! batch, each batch's loss (regularization penalties included) weighted by its size. Stateful
//! layers start from zeros (as after Keras' `load_model`) and carry their states through the
//! batches, which then must all have the model's batch size. The model's compiled metrics that
//! grucell computes are printed after the loss (`metrics` unweighted, `weighted_metrics` with
//! the sample weights), as Keras' `evaluate(..., return_dict=True)` reports them.

use std::path::PathBuf;

use anyhow::Result;
use grucell::io::keras::load::file_dtype;
use grucell::layers::model::Model;
use grucell::train::metrics::MetricValue;
use grucell::Float;
use serde_json::json;

use super::data::{
    at_least_one, compiled_metrics, default_batch_size, loss_of, read_arrays, read_sample_weight,
    ModelData,
};

/// Arguments of `grucell evaluate`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The model and the data.
    #[command(flatten)]
    pub data: ModelData,
    /// Loss, by Keras name (as `grucell fit --loss`). Default: the model's compile config.
    #[arg(long, value_name = "NAME")]
    pub loss: Option<String>,
    /// Samples per batch [default: the model's fixed input batch size if it has stateful
    /// layers, else 32].
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub batch_size: Option<usize>,
    /// Keras' `sample_weight` (.npy): one weight per sample, or per sample and step for a
    /// sequence output, multiplying those loss terms.
    #[arg(long, value_name = "W.npy")]
    pub sample_weight: Option<PathBuf>,
    /// Threads for the matrix products.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: usize,
    /// Print one JSON object (`{"loss": …, "samples": …, "batch_size": …, "metrics": {…}}`)
    /// instead of `NAME<TAB>value` lines (the loss, then each compiled metric; a metric with one
    /// value per class, such as Keras' default `F1Score`, as a list `[a, b, …]`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `grucell evaluate`.
pub fn run(args: &Args) -> Result<()> {
    let file = args.data.open()?;
    if file_dtype(&file) == "float64" {
        evaluate::<f64>(args, args.data.build(&file)?)
    } else {
        evaluate::<f32>(args, args.data.build(&file)?)
    }
}

fn evaluate<T: Float>(args: &Args, mut model: Model<T>) -> Result<()> {
    model.set_threads(args.threads);
    let (metrics, weighted_metrics) =
        compiled_metrics(&model, &format!("--model {}", args.data.model.display()));
    let loss = loss_of(&model, args.loss.as_deref(), &args.data.model)?;
    let x = read_arrays::<T>(&args.data.x, "--x")?;
    let y = read_arrays::<T>(&args.data.y, "--y")?;
    let batch_size = args
        .batch_size
        .unwrap_or_else(|| default_batch_size(&model));
    let weights = args
        .sample_weight
        .as_deref()
        .map(|p| read_sample_weight(p, "--sample-weight"))
        .transpose()?;
    let e = model.evaluate_with_metrics(
        &x,
        &y,
        &loss,
        batch_size,
        weights.as_ref(),
        &metrics,
        &weighted_metrics,
    )?;
    if args.json {
        let samples = x.first().and_then(|t| t.shape().first().copied());
        let mut out = json!({"loss": e.loss, "samples": samples, "batch_size": batch_size});
        for (name, v) in &e.metrics {
            out["metrics"][name] = json!(v);
        }
        for (name, v) in &e.class_metrics {
            out["metrics"][name] = json!(v);
        }
        println!("{out}");
    } else {
        println!("loss\t{}", e.loss);
        for (name, v) in &e.metrics {
            println!("{name}\t{v}");
        }
        for (name, v) in &e.class_metrics {
            println!("{name}\t{}", MetricValue::PerClass(v.clone()));
        }
    }
    Ok(())
}
