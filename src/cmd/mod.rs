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
