//! Losses and optimizers against Keras 3.15.1 (fixtures from tools/fixtures/optim.py).
//!
//! Tolerances: f32 `|a − b| ≤ 1e-6 + 1e-5·|b|`, f64 `|a − b| ≤ 1e-12·max(1, |b|)`.

use grucell::train::loss::Loss;
use grucell::train::optimizer::{Optimizer, OptimizerConfig};
use grucell::Float;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/optim/");

fn load(name: &str) -> Value {
    let path = format!("{DIR}{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn arr<T: Float>(v: &Value) -> Vec<T> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::of(x.as_f64().unwrap()))
        .collect()
}

fn close<T: Float>(got: T, want: f64) -> bool {
    let (g, w) = (got.f64(), want);
    if g.is_nan() || w.is_nan() {
        return g.is_nan() && w.is_nan();
    }
    let d = (g - w).abs();
    if T::DTYPE == "float32" {
        d <= 1e-6 + 1e-5 * w.abs()
    } else {
        d <= 1e-12 * w.abs().max(1.0)
    }
}

fn assert_all_close<T: Float>(what: &str, got: &[T], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w = w.as_f64().unwrap();
        assert!(
            close(*g, w),
            "{what}[{i}]: grucell {g} vs keras {w} (diff {:e})",
            g.f64() - w
        );
    }
}

/// The loss the fixture case was built with, from its constructor arguments.
fn loss_from_args(a: &Value) -> Loss {
    let b = |k: &str| a[k].as_bool().unwrap();
    let f = |k: &str| a[k].as_f64().unwrap();
    match a["class_name"].as_str().unwrap() {
        "MeanSquaredError" => Loss::MeanSquaredError,
        "MeanAbsoluteError" => Loss::MeanAbsoluteError,
        "Huber" => Loss::Huber { delta: f("delta") },
        "LogCosh" => Loss::LogCosh,
        "BinaryCrossentropy" => Loss::BinaryCrossentropy {
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing"),
        },
        "CategoricalCrossentropy" => Loss::CategoricalCrossentropy {
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing"),
        },
        "SparseCategoricalCrossentropy" => Loss::SparseCategoricalCrossentropy {
            from_logits: b("from_logits"),
        },
        "MeanAbsolutePercentageError" => Loss::MeanAbsolutePercentageError,
        "MeanSquaredLogarithmicError" => Loss::MeanSquaredLogarithmicError,
        "Poisson" => Loss::Poisson,
        "Hinge" => Loss::Hinge,
        "SquaredHinge" => Loss::SquaredHinge,
        "CategoricalHinge" => Loss::CategoricalHinge,
        "KLDivergence" => Loss::KlDivergence,
        "CosineSimilarity" => Loss::CosineSimilarity,
        "BinaryFocalCrossentropy" => Loss::BinaryFocalCrossentropy {
            apply_class_balancing: b("apply_class_balancing"),
            alpha: f("alpha"),
            gamma: f("gamma"),
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing"),
        },
        "CategoricalFocalCrossentropy" => Loss::CategoricalFocalCrossentropy {
            alpha: f("alpha"),
            gamma: f("gamma"),
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing"),
        },
        "CategoricalGeneralizedCrossEntropy" => {
            Loss::CategoricalGeneralizedCrossEntropy { q: f("q") }
        }
        other => panic!("unexpected loss {other}"),
    }
}

fn check_loss_case<T: Float>(case: &Value) {
    let name = case["name"].as_str().unwrap();
    let loss = loss_from_args(&case["args"]);
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let y_true: Vec<T> = arr(&case["y_true"]);
    let y_pred: Vec<T> = arr(&case["y_pred"]);
    let sw: Option<Vec<T>> = case["sample_weight"]
        .as_array()
        .map(|_| arr(&case["sample_weight"]));
    let mut grad = vec![T::zero(); y_pred.len()];
    let value = loss
        .value_and_grad(&y_true, &y_pred, &shape, sw.as_deref(), &mut grad)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = case["value"].as_f64().unwrap();
    assert!(
        close(value, want),
        "{name}: value grucell {value} vs keras {want}"
    );
    assert_all_close(&format!("{name}: grad"), &grad, &case["grad"]);
    let only = loss.value(&y_true, &y_pred, &shape, sw.as_deref()).unwrap();
    assert_eq!(only, value, "{name}: value() differs from value_and_grad()");
}

#[test]
fn losses_match_keras() {
    let fx = load("losses.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 222);
    let (mut n32, mut n64) = (0, 0);
    for case in cases {
        match case["dtype"].as_str().unwrap() {
            "float32" => {
                check_loss_case::<f32>(case);
                n32 += 1
            }
            _ => {
                check_loss_case::<f64>(case);
                n64 += 1
            }
        }
    }
    assert!(n32 > 40 && n64 > 40);
}

#[test]
fn losses_read_keras_configs() {
    let fx = load("losses.json");
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let from_keras = Loss::from_keras(&case["keras"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let from_args = loss_from_args(&case["args"]);
        match from_args {
            // Keras' Huber.get_config drops `delta`: Keras itself reloads it as 1.0.
            Loss::Huber { .. } => assert_eq!(from_keras, Loss::Huber { delta: 1.0 }, "{name}"),
            other => assert_eq!(from_keras, other, "{name}"),
        }
        assert_eq!(from_keras.to_keras(), case["keras"], "{name}: to_keras");
    }
}

fn check_optimizer_case<T: Float>(case: &Value) {
    let name = case["name"].as_str().unwrap();
    let cfg = OptimizerConfig::from_keras(&case["keras"]).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(cfg.to_keras(), case["keras"], "{name}: to_keras");
    let sizes: Vec<usize> = case["init"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().len())
        .collect();
    let mut opt = Optimizer::<T>::new(cfg, &sizes).unwrap();
    let mut vars: Vec<Vec<T>> = case["init"].as_array().unwrap().iter().map(arr).collect();
    let steps = case["grads"].as_array().unwrap();
    let after = case["after"].as_array().unwrap();
    for (s, (grads, want)) in steps.iter().zip(after).enumerate() {
        let mut grads: Vec<Vec<T>> = grads.as_array().unwrap().iter().map(arr).collect();
        let mut vr: Vec<&mut [T]> = vars.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut gr: Vec<&mut [T]> = grads.iter_mut().map(|v| v.as_mut_slice()).collect();
        opt.step(&mut vr, &mut gr).unwrap();
        for (i, (v, w)) in vars.iter().zip(want.as_array().unwrap()).enumerate() {
            assert_all_close(&format!("{name}: step {} var {i}", s + 1), v, w);
        }
    }
    assert_eq!(
        opt.iterations(),
        case["iterations"].as_u64().unwrap(),
        "{name}"
    );
    let paths: Vec<&str> = case["var_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let got = opt.keras_variables(&paths).unwrap();
    let want = case["optimizer_variables"].as_array().unwrap();
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w["path"].as_str().unwrap()).collect();
    assert_eq!(got_names, want_names, "{name}: optimizer variable paths");
    for ((n, v), w) in got.iter().zip(want) {
        assert_all_close(&format!("{name}: {n}"), v, &w["value"]);
    }
}

#[test]
fn optimizers_match_keras() {
    let fx = load("optimizers.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        match case["dtype"].as_str().unwrap() {
            "float32" => check_optimizer_case::<f32>(case),
            _ => check_optimizer_case::<f64>(case),
        }
    }
}

/// Resuming from saved optimizer variables continues exactly as an uninterrupted run.
#[test]
fn optimizer_state_round_trips_through_keras_variables() {
    let fx = load("optimizers.json");
    for case in fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["dtype"] == "float32")
    {
        let name = case["name"].as_str().unwrap();
        let cfg = OptimizerConfig::from_keras(&case["keras"]).unwrap();
        let sizes: Vec<usize> = case["init"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_array().unwrap().len())
            .collect();
        let paths: Vec<&str> = case["var_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        let mut opt = Optimizer::<f32>::new(cfg.clone(), &sizes).unwrap();
        let mut vars: Vec<Vec<f32>> = case["init"].as_array().unwrap().iter().map(arr).collect();
        let steps = case["grads"].as_array().unwrap();
        for (s, grads) in steps.iter().enumerate() {
            if s == 2 {
                let saved = opt.keras_variables(&paths).unwrap();
                let refs: Vec<&[f32]> = saved.iter().map(|(_, v)| v.as_slice()).collect();
                let mut resumed = Optimizer::<f32>::new(cfg.clone(), &sizes).unwrap();
                resumed.load_keras_variables(&refs).unwrap();
                opt = resumed;
            }
            let mut grads: Vec<Vec<f32>> = grads.as_array().unwrap().iter().map(arr).collect();
            let mut vr: Vec<&mut [f32]> = vars.iter_mut().map(|v| v.as_mut_slice()).collect();
            let mut gr: Vec<&mut [f32]> = grads.iter_mut().map(|v| v.as_mut_slice()).collect();
            opt.step(&mut vr, &mut gr).unwrap();
        }
        let last = case["after"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_array()
            .unwrap();
        for (i, (v, w)) in vars.iter().zip(last).enumerate() {
            assert_all_close(&format!("{name} (resumed): var {i}"), v, w);
        }
    }
}

/// Keras' learning-rate schedules, read from their serialized form and evaluated at the step
/// counts Keras evaluated them at: the same float32 rate, to one unit in the last place (the
/// schedules are a few float32 operations; `powf`, `cos` and `ln` are the C library's, as in
/// TensorFlow's scalar kernels).
#[test]
fn learning_rate_schedules_match_keras() {
    use grucell::train::schedule::LearningRateSchedule;
    let fx = load("schedules.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 19);
    let mut exact = 0;
    let mut total = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let s = LearningRateSchedule::from_keras(&case["keras"], name).unwrap();
        let steps = case["steps"].as_array().unwrap();
        let rates = case["rates"].as_array().unwrap();
        for (step, want) in steps.iter().zip(rates) {
            let step = step.as_u64().unwrap();
            let got = s.at(step);
            let want = match want {
                Value::String(x) => x.parse::<f32>().unwrap(),
                x => x.as_f64().unwrap() as f32,
            };
            total += 1;
            if got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) {
                exact += 1;
                continue;
            }
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(
                got.is_finite() && ulps <= 1,
                "{name} at step {step}: grucell {got:e}, Keras {want:e} ({ulps} ulps)"
            );
        }
    }
    eprintln!("schedules: {exact} of {total} rates bit for bit");
    // Nearly all of them bit for bit.
    assert!(exact * 100 >= total * 95, "{exact} of {total} exact");
}
