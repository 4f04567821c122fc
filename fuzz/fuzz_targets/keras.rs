//! `.keras` / `.h5` bytes → KerasFile → Model (f32 and f64) → one small prediction, the compile
//! config (loss, optimizer, metrics, one evaluation with them) and the saved optimizer state. Must return errors, never panic, abort or allocate without bound.
#![no_main]

use grucell::io::keras::load::model_from_file;
use grucell::io::keras::load_keras_bytes;
use grucell::{Float, Tensor};
use libfuzzer_sys::fuzz_target;

fn run<T: Float>(file: &grucell::io::keras::KerasFile) {
    let Ok(model) = model_from_file::<T>(file) else {
        return;
    };
    let _ = model.summary();
    // One prediction on zeros, with `None` dimensions set small and every input capped.
    let inputs: Option<Vec<Tensor<T>>> = model
        .input_shapes()
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s.iter().map(|d| d.unwrap_or(2)).collect();
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            (n <= 1 << 16).then(|| Tensor::zeros(shape))
        })
        .collect();
    let Some(inputs) = inputs else {
        return;
    };
    let Ok(outputs) = model.predict(&inputs) else {
        return;
    };
    // The compile config: loss, optimizer and metrics; with a loss, one evaluation with the
    // metrics on the prediction as targets.
    let mut model = model;
    let compiled = model.compiled_metrics();
    if let Ok((Some(loss), _)) = model.compiled_loss_and_optimizer() {
        let _ = model.evaluate_with_metrics(
            &inputs,
            &outputs,
            &loss,
            2,
            None,
            &compiled.metrics,
            &compiled.weighted_metrics,
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = load_keras_bytes(data.to_vec(), "fuzz.keras") else {
        return;
    };
    let _ = file.optimizer_variables();
    run::<f32>(&file);
    run::<f64>(&file);
});
