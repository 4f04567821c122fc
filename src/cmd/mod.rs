//! One module per subcommand, each with a clap `Args` struct and `run(&Args) -> anyhow::Result<()>`
//! (wired up in `main.rs`).

pub mod bench;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod fit;
pub mod forecast;
pub mod inspect;
pub mod predict;

/// Warns (stderr) when the model computes in less than float32 in Keras (`mixed_float16`,
/// `bfloat16`, …): grucell computes it in float32, so its numbers differ from Keras' by
/// Keras' own float16 round-off.
/// `shown` names the file as the command line gave it (`--model m.keras`, or `m.keras`).
pub fn warn_reduced_precision(file: &grucell::io::keras::KerasFile, shown: &str) {
    if let Some(p) = grucell::io::keras::load::reduced_precision_policy(file) {
        eprintln!(
            "warning: {shown}: dtype policy `{p}` computes in 16-bit floats in Keras; grucell \
             computes in float32, so results differ from Keras' by its 16-bit round-off"
        );
    }
}

/// A Keras object's name (for messages): a plain string, else its `class_name`, else compact JSON.
pub fn object_name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => {
            match o.get("class_name").and_then(serde_json::Value::as_str) {
                Some(c) => c.to_string(),
                None => v.to_string(),
            }
        }
        serde_json::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(object_name).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The model's compiled metrics that grucell computes (`metrics`, `weighted_metrics`); a
/// warning on stderr names each one it does not.
pub fn compiled_metrics<T: grucell::Float>(
    model: &grucell::layers::model::Model<T>,
    shown: &str,
) -> (
    Vec<grucell::train::metrics::Metric>,
    Vec<grucell::train::metrics::Metric>,
) {
    let c = model.compiled_metrics();
    for u in &c.unsupported {
        eprintln!("warning: {shown}: compiled {u}; it is left out");
    }
    (c.metrics, c.weighted_metrics)
}
