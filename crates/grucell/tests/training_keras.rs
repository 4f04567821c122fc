//! Model-level training math against Keras 3.15.1 (fixtures: tests/fixtures/training, generated
//! by tools/fixtures/training.py).
//!
//! Per case: the model saved before training is loaded; `Model::loss_and_grads` on the whole
//! data set must give Keras' `train_step` loss and the gradient of every trainable weight, and
//! `Model::train_on_batch` over the same batches, with the optimizer read from the Keras config,
//! must give Keras' per-step (or per-epoch) losses and the weights after training.
//!
//! Tolerances: float32 `1e-5 abs + 1e-4 rel` on gradients and weights, `1e-5` relative on losses;
//! float64 `1e-10 abs + 1e-10 rel` on gradients and weights. Keras casts a float64 model's
//! compiled loss value to float32 (its `CompileLoss` computes in floatx), so float64 loss values
//! are compared at `1e-6` relative, except for the case that runs `train_step` by hand ("manual").
//! All failing cases are reported together.

use grucell::io::keras::load::model_from_file;
use grucell::io::keras::load_keras_file;
use grucell::io::npy::{read_npz, Array};
use grucell::layers::model::{Layer, Model};
use grucell::train::loss::Loss;
use grucell::train::optimizer::{Optimizer, OptimizerConfig};
use grucell::{Float, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/training"
    ))
}

fn manifest() -> Vec<Value> {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    m["cases"].as_array().unwrap().clone()
}

/// The trainable weights of a model in `trainable_variables()` order, read through the public
/// layer accessors (independently of the library's own variable walk).
fn weights<T: Float>(m: &Model<T>) -> Vec<Tensor<T>> {
    let per_layer = layer_weights(m);
    m.trainable_variables()
        .iter()
        .map(|(id, _)| per_layer[id.layer][id.index].clone())
        .collect()
}

/// The weights training does not optimize, in Keras' `non_trainable_weights` order (layer by
/// layer, each layer's in its weight order).
fn non_trainable<T: Float>(m: &Model<T>) -> Vec<Tensor<T>> {
    layer_weights(m)
        .into_iter()
        .zip(&m.layers)
        .flat_map(|(w, l)| {
            // A Normalization's int64 count follows its float variables (never trainable).
            w.into_iter()
                .zip(
                    l.variable_trainable()
                        .into_iter()
                        .chain(std::iter::repeat(false)),
                )
                .filter(|(_, t)| !t)
                .map(|(w, _)| w)
        })
        .collect()
}

/// Every layer's weights in Keras' order.
fn layer_weights<T: Float>(m: &Model<T>) -> Vec<Vec<Tensor<T>>> {
    let mut per_layer: Vec<Vec<Tensor<T>>> = Vec::new();
    for l in &m.layers {
        let mut w = Vec::new();
        match &l.layer {
            Layer::Rnn(r) => r
                .cells()
                .iter()
                .for_each(|c| w.extend(c.weights().into_iter().cloned())),
            Layer::Bidirectional(b) => {
                for r in [&b.forward, &b.backward] {
                    r.cells()
                        .iter()
                        .for_each(|c| w.extend(c.weights().into_iter().cloned()));
                }
            }
            Layer::Dense(d) => w.extend(d.weights().into_iter().cloned()),
            Layer::LayerNorm(n) => w.extend(n.weights().into_iter().cloned()),
            Layer::Conv1D(c) => w.extend(c.weights().into_iter().cloned()),
            Layer::BatchNorm(n) => w.extend(n.weights().into_iter().cloned()),
            Layer::Attention(a) => w.extend(a.weights().into_iter().cloned()),
            Layer::MultiHeadAttention(a) => w.extend(a.weights().into_iter().cloned()),
            Layer::Embedding(e) => w.push(e.embeddings().clone()),
            Layer::PRelu(p) => w.push(p.alpha().clone()),
            Layer::RmsNorm(n) => w.push(n.scale().clone()),
            Layer::Normalization(n) => {
                w.extend(n.weights().into_iter().cloned());
                if let Some(c) = n.count() {
                    w.push(Tensor::new(vec![], vec![T::of(c as f64)]).unwrap());
                }
            }
            _ => {}
        }
        per_layer.push(w);
    }
    per_layer
}

fn rows<T: Float>(t: &Tensor<T>, a: usize, b: usize) -> Tensor<T> {
    let n = t.shape()[0];
    let per = t.len() / n;
    let mut shape = t.shape().to_vec();
    shape[0] = b - a;
    Tensor::new(shape, t.data()[a * per..b * per].to_vec()).unwrap()
}

struct Tol {
    atol: f64,
    rtol: f64,
    loss_rtol: f64,
}

fn compare<T: Float>(
    what: &str,
    got: &[T],
    want: &Tensor<f64>,
    tol: &Tol,
    worst: &mut f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, Keras has {}",
            got.len(),
            want.len()
        ));
    }
    for (k, (a, b)) in got.iter().zip(want.data()).enumerate() {
        let d = (a.f64() - b).abs();
        *worst = worst.max(d / (tol.atol + tol.rtol * b.abs()));
        if d.is_nan() || d > tol.atol + tol.rtol * b.abs() {
            return Err(format!(
                "{what}[{k}]: got {:.9e}, Keras {b:.9e} (|diff| {d:.2e})",
                a.f64()
            ));
        }
    }
    Ok(())
}

fn close_loss(what: &str, got: f64, want: f64, rtol: f64) -> Result<(), String> {
    if (got - want).abs() <= rtol * want.abs().max(1e-3) {
        // (a NaN `got` falls through to the error)
        Ok(())
    } else {
        Err(format!(
            "{what}: got {got:.9e}, Keras {want:.9e} (rel diff {:.2e})",
            (got - want).abs() / want.abs()
        ))
    }
}

/// Runs one case; returns the worst |diff| / tolerance seen.
fn run_case<T: Float>(case: &Value) -> Result<f64, String> {
    let f64_case = case["dtype"] == "float64";
    let manual = case["mode"] == "manual";
    let tol = if f64_case {
        Tol {
            atol: 1e-10,
            rtol: 1e-10,
            loss_rtol: if manual { 1e-10 } else { 1e-6 },
        }
    } else {
        Tol {
            atol: 1e-5,
            rtol: 1e-4,
            loss_rtol: 1e-5,
        }
    };
    let data: HashMap<String, Array> = read_npz(&dir().join(case["data"].as_str().unwrap()))
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let arr = |k: String| -> Result<Tensor<f64>, String> {
        data.get(&k)
            .map(Array::to_f64)
            .ok_or(format!("npz has no `{k}`"))
    };
    let kf = load_keras_file(&dir().join(case["model"].as_str().unwrap()))
        .map_err(|e| format!("load: {e}"))?;
    let mut model = model_from_file::<T>(&kf).map_err(|e| format!("build: {e}"))?;
    let cc = model
        .compile_config
        .clone()
        .ok_or("model has no compile_config")?;
    let loss =
        Loss::from_keras(&cc["loss"]).map_err(|e| format!("loss from compile_config: {e}"))?;
    if Loss::from_keras(&case["loss"]).map_err(|e| e.to_string())? != loss {
        return Err("manifest loss differs from the compile_config loss".into());
    }
    // The optimizer the case trained with (opt_* cases reuse one model with other optimizers).
    let opt_cfg =
        OptimizerConfig::from_keras(&case["optimizer"]).map_err(|e| format!("optimizer: {e}"))?;
    if case["model"].as_str() == Some(&format!("{}.keras", case["name"].as_str().unwrap())) {
        let compiled = OptimizerConfig::from_keras(&cc["optimizer"])
            .map_err(|e| format!("compile_config optimizer: {e}"))?;
        if compiled != opt_cfg {
            return Err(format!("compile_config optimizer {compiled:?} differs from the one Keras trained with {opt_cfg:?}"));
        }
    }
    let n_in = case["n_inputs"].as_u64().unwrap() as usize;
    let n_out = case["n_outputs"].as_u64().unwrap() as usize;
    let x: Vec<Tensor<T>> = (0..n_in)
        .map(|i| arr(format!("x_{i}")).map(|t| t.cast()))
        .collect::<Result<_, _>>()?;
    let y: Vec<Tensor<T>> = (0..n_out)
        .map(|i| arr(format!("y_{i}")).map(|t| t.cast()))
        .collect::<Result<_, _>>()?;

    // Variables: same count and shapes as Keras' trainable_weights.
    let vars = model.trainable_variables();
    let kvars = case["vars"].as_array().unwrap();
    if vars.len() != kvars.len() {
        let names: Vec<&str> = vars.iter().map(|(v, _)| v.path.as_str()).collect();
        return Err(format!(
            "{} trainable variables {names:?}, Keras has {}",
            vars.len(),
            kvars.len()
        ));
    }
    for ((id, shape), kv) in vars.iter().zip(kvars) {
        let ks: Vec<usize> = kv[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        if *shape != ks {
            return Err(format!(
                "variable {} shape {shape:?}, Keras {} {ks:?}",
                id.path, kv[0]
            ));
        }
    }
    let mut worst: f64 = 0.0;

    // (a) loss and gradients on the whole data set.
    // Mismatches are collected (first one per array) so that one report shows them all.
    let mut errs: Vec<String> = Vec::new();
    let lg = model
        .loss_and_grads(&x, &y, &loss, None)
        .map_err(|e| format!("loss_and_grads: {e}"))?;
    errs.extend(
        close_loss(
            "loss0",
            lg.loss.f64(),
            case["loss0"].as_f64().unwrap(),
            tol.loss_rtol,
        )
        .err(),
    );
    for (k, g) in lg.grads.iter().enumerate() {
        errs.extend(
            compare(
                &format!("grad of {} ({})", vars[k].0.path, kvars[k][0]),
                g,
                &arr(format!("grad_{k}"))?,
                &tol,
                &mut worst,
            )
            .err(),
        );
    }

    // (b) the optimizer steps.
    let sizes: Vec<usize> = vars.iter().map(|(_, s)| s.iter().product()).collect();
    let mut opt = Optimizer::<T>::new(opt_cfg, &sizes).map_err(|e| format!("optimizer: {e}"))?;
    let bs = case["batch_size"].as_u64().unwrap() as usize;
    let b = x[0].shape()[0];
    let epochs = case["epochs"].as_u64().unwrap() as usize;
    let mut losses = Vec::new();
    for _ in 0..epochs {
        for s in 0..b / bs {
            let xb: Vec<Tensor<T>> = x.iter().map(|t| rows(t, s * bs, (s + 1) * bs)).collect();
            let yb: Vec<Tensor<T>> = y.iter().map(|t| rows(t, s * bs, (s + 1) * bs)).collect();
            let l = model
                .train_on_batch(&xb, &yb, &loss, &mut opt, None)
                .map_err(|e| format!("train_on_batch step {}: {e}", losses.len()))?;
            losses.push(l.f64());
        }
    }
    if opt.iterations() as usize != case["steps"].as_u64().unwrap() as usize {
        return Err(format!(
            "{} optimizer steps, Keras {}",
            opt.iterations(),
            case["steps"]
        ));
    }
    if let Some(sl) = case.get("step_losses").and_then(Value::as_array) {
        for (i, (got, want)) in losses.iter().zip(sl).enumerate() {
            errs.extend(
                close_loss(
                    &format!("loss of step {i}"),
                    *got,
                    want.as_f64().unwrap(),
                    tol.loss_rtol,
                )
                .err(),
            );
        }
    }
    if let Some(el) = case.get("epoch_losses").and_then(Value::as_array) {
        let per = losses.len() / el.len();
        for (e, want) in el.iter().enumerate() {
            let mean = losses[e * per..(e + 1) * per].iter().sum::<f64>() / per as f64;
            errs.extend(
                close_loss(
                    &format!("mean loss of epoch {e}"),
                    mean,
                    want.as_f64().unwrap(),
                    tol.loss_rtol,
                )
                .err(),
            );
        }
    }
    for (k, w) in weights(&model).iter().enumerate() {
        errs.extend(
            compare(
                &format!("trained {} ({})", vars[k].0.path, kvars[k][0]),
                w.data(),
                &arr(format!("final_{k}"))?,
                &tol,
                &mut worst,
            )
            .err(),
        );
    }
    // The moving statistics (and other non-trainable weights), where the case recorded them.
    if data.contains_key("final_nt_0") {
        let nt = non_trainable(&model);
        let recorded = (0..)
            .take_while(|k| data.contains_key(&format!("final_nt_{k}")))
            .count();
        if nt.len() != recorded {
            errs.push(format!(
                "{} non-trainable weights, Keras {recorded}",
                nt.len()
            ));
        }
        for (k, w) in nt.iter().enumerate().take(recorded) {
            errs.extend(
                compare(
                    &format!("non-trainable weight {k} after training"),
                    w.data(),
                    &arr(format!("final_nt_{k}"))?,
                    &tol,
                    &mut worst,
                )
                .err(),
            );
        }
    }
    if errs.is_empty() {
        Ok(worst)
    } else {
        Err(errs.join("\n    "))
    }
}

#[test]
fn training_matches_keras() {
    let cases = manifest();
    assert!(cases.len() >= 95, "only {} training cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let r = if case["dtype"] == "float64" {
            run_case::<f64>(case)
        } else {
            run_case::<f32>(case)
        };
        match r {
            Ok(w) => eprintln!("ok   {name:34} worst |diff|/tol {w:.3}"),
            Err(e) => {
                eprintln!("FAIL {name:34} {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The fixture data must actually exercise the features the cases claim (guards the fixtures).
#[test]
fn fixtures_cover_the_brief() {
    let cases = manifest();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "mask_seq",
        "go_backwards_seq",
        "stacked",
        "bidir_sum_seq",
        "bidir_mul_last",
        "bidir_ave_seq",
        "bidir_concat_last",
        "func_init_state",
        "softmax_cce",
        "sigmoid_bce",
        "activation_sparse_ce",
        "regularizers",
        "constraints",
        "f64_gru_ra1",
    ] {
        assert!(names.contains(&want), "missing case {want}");
    }
    let kinds: Vec<String> = cases
        .iter()
        .map(|c| c["optimizer"]["class_name"].as_str().unwrap().to_string())
        .collect();
    for k in ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"] {
        assert!(kinds.iter().any(|c| c == k), "no {k} case");
    }
    let with = |key: &str| {
        cases
            .iter()
            .filter(|c| {
                c["optimizer"]["config"][key]
                    .as_f64()
                    .is_some_and(|v| v > 0.0)
            })
            .count()
    };
    assert!(
        with("clipnorm") >= 3 && with("global_clipnorm") >= 3,
        "clipping variants missing"
    );
    assert!(
        cases.iter().any(|c| c["mode"] == "fit")
            && cases.iter().filter(|c| c["dtype"] == "float64").count() >= 5
    );
}
