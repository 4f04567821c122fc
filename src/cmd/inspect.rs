//! `grucell inspect M`: a summary like Keras' `model.summary()`, then the input shapes, the
//! output count, the compute dtype, the Keras version that wrote the file, the compile
//! settings (optimizer, loss, metrics) when the model was compiled, and the saved optimizer
//! state (variable count, iteration) when the file holds one.

use anyhow::{Context, Result};
use grucell::io::keras::load::{file_dtype, model_from_file};
use grucell::io::keras::{load_keras_file, KerasFile};
use grucell::Float;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `grucell inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The model file (.keras or legacy .h5), or a .safetensors model written by grucell fit.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
}

/// `(None, 10, 8)`, with Python's one-element tuple comma.
fn fmt_shape(s: &[Option<usize>]) -> String {
    let parts: Vec<String> = s
        .iter()
        .map(|d| d.map_or_else(|| "None".to_string(), |d| d.to_string()))
        .collect();
    match parts.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", parts.join(", ")),
    }
}

/// A Keras object's name: a plain string, else its `class_name`, else compact JSON.
fn object_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("class_name").and_then(Value::as_str) {
            Some(c) => c.to_string(),
            None => v.to_string(),
        },
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(object_name).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// One line describing a compile config (Keras 3 `compile_config` or legacy `training_config`),
/// or `None` when the model was not compiled.
fn compile_summary(cc: &Value) -> Option<String> {
    let o = cc.as_object().filter(|o| !o.is_empty())?;
    let mut parts = Vec::new();
    if let Some(opt) = o
        .get("optimizer")
        .or_else(|| o.get("optimizer_config"))
        .filter(|v| !v.is_null())
    {
        let mut s = format!("optimizer {}", object_name(opt));
        match opt.get("config").and_then(|c| c.get("learning_rate")) {
            // Keras stores the float32 learning rate widened to f64 (0.0010000000474974513).
            Some(Value::Number(lr)) => {
                s += &format!(
                    " (learning_rate {})",
                    lr.as_f64().unwrap_or(f64::NAN) as f32
                );
            }
            Some(sched @ Value::Object(_)) => {
                s += &format!(" (learning_rate schedule {})", object_name(sched));
            }
            _ => {}
        }
        parts.push(s);
    }
    if let Some(loss) = o.get("loss").filter(|v| !v.is_null()) {
        parts.push(format!("loss {}", object_name(loss)));
    }
    if let Some(m) = o
        .get("metrics")
        .filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    {
        parts.push(format!("metrics {}", object_name(m)));
    }
    Some(if parts.is_empty() {
        "yes".to_string()
    } else {
        parts.join(", ")
    })
}

/// The whole report for a model computing in `T`.
fn report<T: Float>(file: &KerasFile) -> Result<String> {
    let model = model_from_file::<T>(file)
        .with_context(|| format!("cannot build the model in {}", file.path))?;
    let mut s = model.summary();
    let shapes: Vec<String> = model.input_shapes().iter().map(|s| fmt_shape(s)).collect();
    s += &format!(" Inputs: {} {}\n", shapes.len(), shapes.join(", "));
    s += &format!(" Outputs: {}\n", model.outputs.len());
    s += &format!(" Dtype: {}\n", T::DTYPE);
    s += &format!(
        " Keras version: {}\n",
        file.keras_version.as_deref().unwrap_or("unknown")
    );
    let compiled = model
        .compile_config
        .as_ref()
        .and_then(compile_summary)
        .unwrap_or_else(|| "no".to_string());
    s += &format!(" Compiled: {compiled}\n");
    // The optimizer's saved variables (what `grucell fit` and Keras restore): the first is the
    // iteration count.
    let saved = file.optimizer_variables();
    if let Some(it) = saved.first().and_then(|t| t.data().first()) {
        s += &format!(
            " Optimizer state: {} variables, iteration {it}\n",
            saved.len()
        );
    }
    Ok(s)
}

/// Runs `grucell inspect`.
pub fn run(args: &Args) -> Result<()> {
    let file = load_keras_file(&args.model).context("cannot load the model")?;
    super::warn_reduced_precision(&file, &args.model.display().to_string());
    let text = if file_dtype(&file) == "float64" {
        report::<f64>(&file)?
    } else {
        report::<f32>(&file)?
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(())
}
