//! Saving models: every model fixture (tests/fixtures/models, written by Keras 3.15.1) is loaded
//! from each of its files, saved with `save_model`, and
//! - the saved file reloads in grucell and predicts the fixture's Keras outputs (same tolerance
//!   as tests/keras_models.rs: 1e-5 abs + 1e-4 rel for float32, 1e-12 for float64);
//! - its model.weights.h5 holds exactly the dataset paths of the Keras-written `.keras` file,
//!   with the same shapes and bit-identical values;
//! - its config.json equals the one Keras wrote (ignoring Keras' `shared_object_id` keys and the
//!   normalizations listed in `normalize`), and saving the reloaded model gives the same config
//!   again;
//! - `save_safetensors_model` writes the same tensors under the same names.
//!
//! The saved files are written to a temporary folder that is removed afterwards, or kept in
//! `$GRUCELL_SAVE_OUT` when that is set, e.g. to check them with Keras:
//! `GRUCELL_SAVE_OUT=/tmp/saved cargo test -p grucell --test model_save` then
//! `python tools/check_saved_keras.py /tmp/saved/<case>.keras --npz tests/fixtures/models/<case>.npz`.

use grucell::io::keras::load::model_from_file;
use grucell::io::keras::write::{model_config_json, save_model, save_safetensors_model};
use grucell::io::keras::{load_keras_file, KerasFile, KerasWeights};
use grucell::io::npy::{read_npz, Array};
use grucell::io::safetensors::load_safetensors_with_metadata;
use grucell::layers::model::Model;
use grucell::{Float, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ))
}

/// Where saved files go, and whether to keep them.
/// The Keras files of the loading fixtures (tests/fixtures/io/keras).
fn io_keras_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/io/keras"
    ))
}

fn out_dir(tag: &str) -> (PathBuf, bool) {
    match std::env::var_os("GRUCELL_SAVE_OUT") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            (d, true)
        }
        None => {
            let d = std::env::temp_dir()
                .join(format!("grucell_model_save_{tag}_{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            (d, false)
        }
    }
}

fn manifest_cases() -> Vec<Value> {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let cases = manifest["cases"].as_array().unwrap().clone();
    assert!(
        cases.len() >= 40,
        "fixture manifest has only {} cases",
        cases.len()
    );
    cases
}

/// Runs the model as tests/keras_models.rs does (stateful calls and resets included) and
/// compares with the npz outputs; returns the largest difference.
fn check_predictions<T: Float>(model: &mut Model<T>, case: &Value) -> Result<f64, String> {
    let data: HashMap<String, Array> = read_npz(&dir().join(case["data"].as_str().unwrap()))
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let calls = case["calls"].as_u64().unwrap() as usize;
    let resets: Vec<u64> = case["reset_before_call"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let n_in = case["n_inputs"].as_u64().unwrap() as usize;
    let n_out = case["n_outputs"].as_u64().unwrap() as usize;
    let atol = case["atol"].as_f64().unwrap();
    let rtol = if case["dtype"] == "float64" {
        0.0
    } else {
        1e-4
    };
    let mut worst: f64 = 0.0;
    model.reset_states();
    for c in 0..calls {
        if resets.contains(&(c as u64)) {
            model.reset_states();
        }
        let key = |kind: &str, i: usize| {
            if calls == 1 {
                format!("{kind}_{i}")
            } else {
                format!("call{c}_{kind}_{i}")
            }
        };
        let inputs: Vec<Tensor<T>> = (0..n_in)
            .map(|i| data[&key("input", i)].to_f64().cast())
            .collect();
        let outs = model
            .predict_stateful(&inputs)
            .map_err(|e| format!("call {c}: predict: {e}"))?;
        if outs.len() != n_out {
            return Err(format!(
                "call {c}: {} outputs, expected {n_out}",
                outs.len()
            ));
        }
        for (j, o) in outs.iter().enumerate() {
            let want = data[&key("output", j)].to_f64();
            if o.shape() != want.shape() {
                return Err(format!(
                    "call {c} output {j}: shape {:?} expected {:?}",
                    o.shape(),
                    want.shape()
                ));
            }
            for (k, (a, b)) in o.data().iter().zip(want.data()).enumerate() {
                let d = (a.f64() - b).abs();
                worst = worst.max(d);
                if d > atol + rtol * b.abs() || d.is_nan() {
                    return Err(format!(
                        "call {c} output {j} flat index {k}: got {} expected {b} (|diff| {d:e})",
                        a.f64()
                    ));
                }
            }
        }
    }
    Ok(worst)
}

/// Model datasets of a `.keras` file by path (optimizer state left out).
fn model_datasets(f: &KerasFile) -> BTreeMap<String, Tensor<f64>> {
    match &f.weights {
        KerasWeights::ByPath(m) => m
            .iter()
            .filter(|(k, _)| !k.starts_with("optimizer/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        KerasWeights::ByLayer { .. } => panic!("{}: expected a .keras file", f.path),
    }
}

/// Removes what Keras writes but a model cannot carry: `shared_object_id` (object identity
/// inside one Python session), the form of a single `initial_state` (bare tensor or one-element
/// list: the same call for Keras), the `stacked_rnn_cells` auto-name's numbering, and
/// StackedRNNCells' dtype (Keras writes float32 even in a float64 model; grucell writes the
/// model's, see io::keras::write).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            let stacked_config =
                o.get("class_name").and_then(Value::as_str) == Some("StackedRNNCells");
            for (k, x) in o {
                if k == "shared_object_id" {
                    continue;
                }
                if stacked_config && k == "config" {
                    let mut c = x.clone();
                    if let Some(c) = c.as_object_mut() {
                        c.remove("dtype");
                    }
                    out.insert(k.clone(), normalize(&c));
                    continue;
                }
                let x = match (k.as_str(), x) {
                    ("initial_state" | "initial_state_shape", Value::Array(a))
                        if a.len() == 1 && !a[0].is_null() && !a[0].is_number() =>
                    {
                        a[0].clone()
                    }
                    _ => x.clone(),
                };
                out.insert(k.clone(), normalize(&x));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::String(s) if s.starts_with("stacked_rnn_cells") => {
            Value::String("stacked_rnn_cells".into())
        }
        x => x.clone(),
    }
}

/// Paths where two JSON values differ (first 12).
fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 12 {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => json_diff(p, q, &format!("{path}/{k}"), out),
                    (p, q) => out.push(format!("{path}/{k}: {p:?} vs {q:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diff(p, q, &format!("{path}/{i}"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}

fn diff_text(a: &Value, b: &Value) -> Option<String> {
    let mut d = Vec::new();
    json_diff(a, b, "", &mut d);
    (!d.is_empty()).then(|| d.join("\n    "))
}

/// The Keras config.json of a `.keras` file: model config plus its compile_config.
fn keras_config_json(f: &KerasFile) -> Value {
    let mut c = f.model_config.clone();
    c["compile_config"] = f
        .compile_config
        .clone()
        .unwrap_or(Value::Object(Default::default()));
    c
}

/// Loads `file`, saves it, checks the saved file; returns the largest prediction difference.
fn round_trip<T: Float>(case: &Value, file: &str, out: &Path) -> Result<f64, String> {
    let name = case["name"].as_str().unwrap();
    let src = load_keras_file(&dir().join(file)).map_err(|e| format!("load: {e}"))?;
    let model = model_from_file::<T>(&src).map_err(|e| format!("build: {e}"))?;
    let from_h5 = file.ends_with(".h5");
    let saved_path = out.join(if from_h5 {
        format!("{name}.from_h5.keras")
    } else {
        format!("{name}.keras")
    });
    save_model(&model, &saved_path).map_err(|e| format!("save: {e}"))?;
    let saved = load_keras_file(&saved_path).map_err(|e| format!("reading the saved file: {e}"))?;
    if saved.keras_version.as_deref() != Some("3.15.1") {
        return Err(format!("saved keras_version {:?}", saved.keras_version));
    }

    // Weights: the Keras file's dataset paths, shapes and values.
    let reference =
        load_keras_file(&dir().join(format!("{name}.keras"))).map_err(|e| e.to_string())?;
    let (want, got) = (model_datasets(&reference), model_datasets(&saved));
    let (wk, gk): (Vec<_>, Vec<_>) = (want.keys().collect(), got.keys().collect());
    if wk != gk {
        return Err(format!(
            "weight paths differ:\n  keras:   {wk:?}\n  grucell: {gk:?}"
        ));
    }
    for (k, w) in &want {
        if got[k] != *w {
            return Err(format!(
                "dataset {k}: values or shape differ ({:?} vs {:?})",
                got[k].shape(),
                w.shape()
            ));
        }
    }

    // Config: what Keras wrote (from .keras sources; legacy .h5 configs differ in form), and
    // stable under a second save.
    let config = keras_config_json(&saved);
    if !from_h5 {
        if let Some(d) = diff_text(&normalize(&config), &normalize(&keras_config_json(&src))) {
            return Err(format!(
                "config.json differs from Keras' (grucell vs keras):\n    {d}"
            ));
        }
    }
    let mut reloaded =
        model_from_file::<T>(&saved).map_err(|e| format!("rebuilding the saved file: {e}"))?;
    let again = model_config_json(&reloaded).map_err(|e| e.to_string())?;
    if let Some(d) = diff_text(&again, &config) {
        return Err(format!("config changes on a second save:\n    {d}"));
    }

    // safetensors: same names and values.
    let st_path = out.join(format!(
        "{name}.{}.safetensors",
        if from_h5 { "from_h5" } else { "keras" }
    ));
    save_safetensors_model(&model, &st_path).map_err(|e| format!("safetensors: {e}"))?;
    let (tensors, meta) = load_safetensors_with_metadata(&st_path).map_err(|e| e.to_string())?;
    let names: Vec<&String> = tensors.iter().map(|(n, _)| n).collect();
    if names
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        != want.keys().collect()
    {
        return Err(format!("safetensors names {names:?}"));
    }
    for (n, t) in &tensors {
        let w: Tensor<f32> = want[n].cast();
        if *t != w {
            return Err(format!("safetensors tensor {n} differs"));
        }
    }
    let meta = meta.ok_or("safetensors without metadata")?;
    let meta_config: Value =
        serde_json::from_str(&meta["keras_config"]).map_err(|e| e.to_string())?;
    if meta_config != config || meta["dtype"] != T::DTYPE {
        return Err("safetensors metadata does not hold the model config".into());
    }

    // The reloaded model computes exactly what the loaded one does, and matches Keras' outputs
    // (unless the loaded model already does not: that is tests/keras_models.rs' failure, not a
    // saving problem, and is reported there).
    let mut original = model;
    let n_in = case["n_inputs"].as_u64().unwrap() as usize;
    let data: HashMap<String, Array> = read_npz(&dir().join(case["data"].as_str().unwrap()))
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let key = |i: usize| {
        if case["calls"] == 1 {
            format!("input_{i}")
        } else {
            format!("call0_input_{i}")
        }
    };
    let inputs: Vec<Tensor<T>> = (0..n_in).map(|i| data[&key(i)].to_f64().cast()).collect();
    if original.predict(&inputs).map_err(|e| e.to_string())?
        != reloaded.predict(&inputs).map_err(|e| e.to_string())?
    {
        return Err("the reloaded model predicts differently from the loaded one".into());
    }
    // The safetensors file is a model file too: it loads with the same compile config and
    // predicts as the loaded model (exactly in float32; a float64 model's weights were written
    // rounded to float32).
    let st_file = load_keras_file(&st_path).map_err(|e| format!("loading the safetensors: {e}"))?;
    if st_file.compile_config != saved.compile_config {
        return Err("the safetensors model's compile config differs from the .keras one".into());
    }
    let from_st =
        model_from_file::<T>(&st_file).map_err(|e| format!("building the safetensors: {e}"))?;
    let (a, b) = (
        original.predict(&inputs).map_err(|e| e.to_string())?,
        from_st.predict(&inputs).map_err(|e| e.to_string())?,
    );
    let tolerance = if T::DTYPE == "float32" { 0.0 } else { 1e-5 };
    for (x, y) in a.iter().zip(&b) {
        let d = x.max_abs_diff(y);
        if d.is_nan() || d > tolerance {
            return Err(format!(
                "the safetensors model predicts differently (max|diff| {d:.2e})"
            ));
        }
    }
    if std::env::var_os("GRUCELL_SAVE_OUT").is_some() {
        // grucell's outputs for the first call, for tools/check_saved_keras.py --npz.
        let outs = reloaded.predict(&inputs).map_err(|e| e.to_string())?;
        let mut arrays: Vec<(String, grucell::io::npy::Array)> = Vec::new();
        arrays.extend(
            inputs
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("input_{i}"), x.cast::<f64>().into())),
        );
        arrays.extend(
            outs.iter()
                .enumerate()
                .map(|(j, y)| (format!("output_{j}"), y.cast::<f64>().into())),
        );
        let refs: Vec<(String, grucell::io::npy::ArrayRef)> = arrays
            .iter()
            .map(|(k, a)| (k.clone(), a.as_array_ref()))
            .collect();
        grucell::io::npy::write_npz(&out.join(format!("{name}.grucell.npz")), &refs)
            .map_err(|e| e.to_string())?;
    }
    match check_predictions(&mut reloaded, case) {
        Err(e) if check_predictions(&mut original, case).as_ref().err() == Some(&e) => {
            eprintln!("note {file:45} the loaded model itself differs from Keras (see keras_models.rs): {e}");
            Ok(f64::NAN)
        }
        r => r,
    }
}

#[test]
fn saved_models_reload_with_keras_paths_configs_and_outputs() {
    let (out, keep) = out_dir("all");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in manifest_cases() {
        for file in case["files"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            let r = if case["dtype"] == "float64" {
                round_trip::<f64>(&case, file, &out)
            } else {
                round_trip::<f32>(&case, file, &out)
            };
            match r {
                Ok(w) => {
                    checked += 1;
                    eprintln!("ok   {file:45} saved, reloaded: max|diff| {w:.2e}");
                }
                Err(e) => failures.push(format!("{file}: {e}")),
            }
        }
    }
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        failures.len() + checked,
        failures.join("\n")
    );
}

#[test]
fn uncompiled_model_gets_empty_compile_config_and_compiled_one_keeps_it() {
    let src = load_keras_file(&dir().join("seed_gru.keras")).unwrap();
    let mut model = model_from_file::<f32>(&src).unwrap();
    assert!(model.compile_config.is_none());
    assert_eq!(
        model_config_json(&model).unwrap()["compile_config"],
        serde_json::json!({})
    );
    let cc = serde_json::json!({"optimizer": "adam", "loss": "mse", "metrics": null, "loss_weights": null,
                                "weighted_metrics": null, "run_eagerly": false, "steps_per_execution": 1, "jit_compile": false});
    model.compile_config = Some(cc.clone());
    let (out, keep) = out_dir("compile");
    let path = out.join("compiled_seed_gru.keras");
    save_model(&model, &path).unwrap();
    let back = load_keras_file(&path).unwrap();
    assert_eq!(back.compile_config, Some(cc));
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn float64_models_are_saved_as_float64() {
    let src = load_keras_file(&dir().join("f64_gru_seq.keras")).unwrap();
    let model = model_from_file::<f64>(&src).unwrap();
    let c = model_config_json(&model).unwrap();
    assert_eq!(c["config"]["layers"][0]["config"]["dtype"], "float64");
    assert_eq!(
        c["config"]["layers"][1]["config"]["dtype"]["config"]["name"],
        "float64"
    );
    // The same model computing in f32 is written as a float32 model.
    let m32 = model_from_file::<f32>(&src).unwrap();
    let c32 = model_config_json(&m32).unwrap();
    assert_eq!(c32["config"]["layers"][0]["config"]["dtype"], "float32");
    assert_eq!(
        c32["config"]["layers"][1]["config"]["dtype"]["config"]["name"],
        "float32"
    );
}

#[test]
fn a_failed_save_leaves_the_previous_file() {
    let (out, keep) = out_dir("atomic");
    let src = load_keras_file(&dir().join("seed_gru.keras")).unwrap();
    let model = model_from_file::<f32>(&src).unwrap();
    let path = out.join("kept.keras");
    std::fs::write(&path, b"previous").unwrap();
    // A Sequential model whose graph is not a chain cannot be written as Sequential.
    let mut broken = model.clone();
    broken.nodes[1].args.clear();
    let err = save_model(&broken, &path).unwrap_err().to_string();
    assert!(err.contains("Sequential"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"previous");
    save_model(&model, &path).unwrap();
    assert!(load_keras_file(&path).is_ok());
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
}

/// Deterministic inputs in [-1, 1) with some all-zero (masked) steps at the ends of rows.
fn inputs<T: Float>(shape: &[usize], salt: u64, zero_tail: bool) -> Tensor<T> {
    let n: usize = shape.iter().product();
    let mut s = salt
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut data: Vec<T> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            T::of(((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0)
        })
        .collect();
    if zero_tail && shape.len() == 3 {
        let (t, d) = (shape[1], shape[2]);
        for b in 0..shape[0] {
            for step in t.saturating_sub(b % 3)..t {
                data[(b * t + step) * d..(b * t + step + 1) * d]
                    .iter_mut()
                    .for_each(|x| *x = T::zero());
            }
        }
    }
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn cell(units: usize, seed: u64) -> grucell::GruCellConfig {
    let bias = grucell::Initializer::from_keras(&serde_json::json!({"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.5, "seed": null}})).unwrap();
    grucell::GruCellConfig::new(units)
        .seed(Some(seed))
        .bias_initializer(bias)
}

/// A Sequential model built in Rust: Masking, GRU, RNN(StackedRNNCells), Bidirectional,
/// Dropout, Activation, Dense.
fn rust_sequential<T: Float>() -> Model<T> {
    use grucell::layers::bidirectional::{Bidirectional, MergeMode};
    use grucell::layers::dense::DenseConfig;
    use grucell::layers::model::Layer;
    use grucell::{Activation, Rnn, RnnKind};
    let gru = Rnn::<T>::new(cell(4, 1), 3)
        .unwrap()
        .with_kind(RnnKind::Gru)
        .unwrap()
        .name("gru")
        .return_sequences(true);
    let stacked = Rnn::<T>::stacked(
        vec![cell(3, 2).reset_after(false), cell(2, 3).use_bias(false)],
        4,
    )
    .unwrap()
    .name("rnn")
    .return_sequences(true);
    let f = Rnn::<T>::new(cell(2, 4), 2)
        .unwrap()
        .with_kind(RnnKind::Gru)
        .unwrap()
        .return_sequences(true);
    let b = Rnn::<T>::new(cell(2, 5).activation(Activation::Relu), 2)
        .unwrap()
        .with_kind(RnnKind::Gru)
        .unwrap()
        .return_sequences(true)
        .go_backwards(true);
    let bi = Bidirectional::new(f, b, Some(MergeMode::Concat)).unwrap();
    let last = Rnn::<T>::new(cell(3, 6), 4).unwrap().name("rnn_1");
    let dense = DenseConfig::new(2)
        .activation(Activation::Sigmoid)
        .name("dense")
        .build::<T>(3, 7)
        .unwrap();
    Model::sequential(
        "rust_seq",
        vec![Some(6), Some(3)],
        vec![
            ("masking".into(), Layer::Masking { mask_value: 0.0 }),
            ("gru".into(), Layer::Rnn(gru)),
            ("rnn".into(), Layer::Rnn(stacked)),
            ("bidirectional".into(), Layer::Bidirectional(bi)),
            (
                "dropout".into(),
                Layer::Dropout {
                    rate: 0.25,
                    seed: Some(3),
                },
            ),
            ("activation".into(), Layer::Activation(Activation::Tanh)),
            ("rnn_1".into(), Layer::Rnn(last)),
            ("dense".into(), Layer::Dense(dense)),
        ],
    )
    .unwrap()
}

/// A Functional model built in Rust, with an implicit mask (no NotEqual/Any nodes), an
/// initial state, a layer called twice and three outputs.
fn rust_functional<T: Float>() -> Model<T> {
    use grucell::layers::dense::DenseConfig;
    use grucell::layers::model::{Layer, ModelKind, ModelLayer, Node, NodeArg, TensorRef};
    use grucell::{Rnn, RnnKind};
    let ml = |name: &str, layer: Layer<T>| ModelLayer {
        name: name.into(),
        class_name: grucell::layers::model::default_class_name(&layer).into(),
        trainable: true,
        layer,
        time_distributed: None,
        activity_regularizer: None,
        drops_mask: false,
    };
    let gru = Rnn::<T>::new(cell(4, 11), 3)
        .unwrap()
        .with_kind(RnnKind::Gru)
        .unwrap()
        .return_sequences(true)
        .return_state(true);
    let gru_h = Rnn::<T>::new(cell(4, 12).reset_after(false), 3)
        .unwrap()
        .name("gru_h");
    let dense = DenseConfig::new(2).name("dense").build::<T>(4, 13).unwrap();
    let layers = vec![
        ml(
            "x",
            Layer::Input {
                batch_shape: vec![None, Some(5), Some(3)],
            },
        ),
        ml(
            "h",
            Layer::Input {
                batch_shape: vec![None, Some(4)],
            },
        ),
        ml("masking", Layer::Masking { mask_value: 0.0 }),
        ml("gru", Layer::Rnn(gru)),
        ml("gru_h", Layer::Rnn(gru_h)),
        ml("dense", Layer::Dense(dense)),
    ];
    let t = |layer, node, index| TensorRef { layer, node, index };
    let call = |layer, call, args: Vec<TensorRef>, initial_state: Vec<TensorRef>| Node {
        layer,
        call,
        args: args.into_iter().map(NodeArg::Tensor).collect(),
        initial_state,
        mask: None,
        states_keep_mask: false,
        attention: Default::default(),
    };
    let nodes = vec![
        call(0, 0, vec![], vec![]),
        call(1, 0, vec![], vec![]),
        call(2, 0, vec![t(0, 0, 0)], vec![]),
        call(3, 0, vec![t(2, 0, 0)], vec![]),
        call(4, 0, vec![t(2, 0, 0)], vec![t(1, 0, 0)]),
        call(5, 0, vec![t(3, 0, 1)], vec![]),
        call(5, 1, vec![t(4, 0, 0)], vec![]),
    ];
    Model::new(
        "rust_functional",
        ModelKind::Functional,
        layers,
        nodes,
        vec![t(0, 0, 0), t(1, 0, 0)],
        vec![t(3, 0, 0), t(5, 0, 0), t(5, 1, 0)],
    )
    .unwrap()
}

fn rust_model_round_trip<T: Float>(model: &Model<T>, xs: &[Tensor<T>], out: &Path, keep: bool) {
    let path = out.join(format!("{}_{}.keras", model.name, T::DTYPE));
    save_model(model, &path).unwrap();
    let back = model_from_file::<T>(&load_keras_file(&path).unwrap()).unwrap();
    let want = model.predict(xs).unwrap();
    assert_eq!(back.predict(xs).unwrap(), want, "{}", model.name);
    assert_eq!(
        model_config_json(&back).unwrap(),
        model_config_json(model).unwrap()
    );
    let f = load_keras_file(&path).unwrap();
    let KerasWeights::ByPath(w) = &f.weights else {
        panic!("{}: not a .keras file", path.display())
    };
    assert!(w.keys().all(|k| k.starts_with("layers/")), "{:?}", w.keys());
    assert_eq!(
        w.values().map(|t| t.len()).sum::<usize>(),
        model.param_count()
    );
    if keep {
        // Inputs and grucell's outputs, for tools/check_saved_keras.py --npz.
        let mut arrays: Vec<(String, grucell::io::npy::Array)> = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            arrays.push((format!("input_{i}"), x.cast::<f64>().into()));
        }
        for (j, y) in want.iter().enumerate() {
            arrays.push((format!("output_{j}"), y.cast::<f64>().into()));
        }
        let refs: Vec<(String, grucell::io::npy::ArrayRef)> = arrays
            .iter()
            .map(|(k, a)| (k.clone(), a.as_array_ref()))
            .collect();
        grucell::io::npy::write_npz(&out.join(format!("{}_{}.npz", model.name, T::DTYPE)), &refs)
            .unwrap();
    }
}

#[test]
fn models_built_in_rust_round_trip() {
    let (out, keep) = out_dir("rust");
    let seq32 = rust_sequential::<f32>();
    let c = model_config_json(&seq32).unwrap();
    let names: Vec<&str> = c["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["class_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "InputLayer",
            "Masking",
            "GRU",
            "RNN",
            "Bidirectional",
            "Dropout",
            "Activation",
            "RNN",
            "Dense"
        ]
    );
    let bi = &c["config"]["layers"][4]["config"];
    assert_eq!(bi["layer"]["config"]["name"], "forward_rnn"); // Keras prefixes the wrapped layers' names
    assert_eq!(bi["backward_layer"]["config"]["name"], "backward_rnn");
    assert_eq!(
        c["config"]["layers"][3]["config"]["cell"]["class_name"],
        "StackedRNNCells"
    );
    assert_eq!(
        c["config"]["layers"][3]["config"]["cell"]["config"]["cells"][1]["build_config"]
            ["input_shape"],
        serde_json::json!([null, 3])
    );
    rust_model_round_trip(&seq32, &[inputs::<f32>(&[4, 6, 3], 1, true)], &out, keep);
    rust_model_round_trip(
        &rust_sequential::<f64>(),
        &[inputs::<f64>(&[4, 6, 3], 1, true)],
        &out,
        keep,
    );
    let fun = rust_functional::<f32>();
    let c = model_config_json(&fun).unwrap();
    assert_eq!(
        c["config"]["input_layers"],
        serde_json::json!([["x", 0, 0], ["h", 0, 0]])
    );
    assert_eq!(
        c["config"]["output_layers"],
        serde_json::json!([["gru", 0, 0], ["dense", 0, 0], ["dense", 1, 0]])
    );
    let dense_nodes = &c["config"]["layers"][5]["inbound_nodes"];
    assert_eq!(dense_nodes.as_array().unwrap().len(), 2);
    assert_eq!(
        dense_nodes[1]["args"][0]["config"]["keras_history"],
        serde_json::json!(["gru_h", 0, 0])
    );
    let gru_h = &c["config"]["layers"][4];
    assert_eq!(
        gru_h["build_config"]["shapes_dict"]["initial_state_shape"],
        serde_json::json!([null, 4])
    );
    assert_eq!(
        gru_h["inbound_nodes"][0]["kwargs"]["initial_state"]["config"]["keras_history"],
        serde_json::json!(["h", 0, 0])
    );
    let xs = [
        inputs::<f32>(&[3, 5, 3], 2, true),
        inputs::<f32>(&[3, 4], 3, false),
    ];
    rust_model_round_trip(&fun, &xs, &out, keep);
    let xs64 = [
        inputs::<f64>(&[3, 5, 3], 2, true),
        inputs::<f64>(&[3, 4], 3, false),
    ];
    rust_model_round_trip(&rust_functional::<f64>(), &xs64, &out, keep);
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn legacy_training_config_is_written_as_keras3_compile_config() {
    let io = io_keras_dir();
    let (out, keep) = out_dir("legacy_compile");
    let keras3 = load_keras_file(&io.join("trained.keras")).unwrap();
    for name in ["trained.h5", "tf2_style.h5", "trained.keras"] {
        let src = load_keras_file(&io.join(name)).unwrap();
        let model = model_from_file::<f32>(&src).unwrap();
        let path = out.join(format!("compiled_{name}.keras"));
        save_model(&model, &path).unwrap();
        let cc = load_keras_file(&path).unwrap().compile_config.unwrap();
        assert!(cc.get("optimizer_config").is_none(), "{name}: {cc}");
        assert_eq!(cc["optimizer"]["module"], "keras.optimizers", "{name}");
        assert_eq!(cc["optimizer"]["class_name"], "Adam", "{name}");
        assert_eq!(cc["loss"], "mse", "{name}");
        if name == "trained.h5" || name == "trained.keras" {
            assert_eq!(Some(cc), keras3.compile_config, "{name}");
        }
    }
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
}

/// Keras 3.15.1 writes AUC's `label_weights` as a serialized tensor, which its own loader cannot
/// read back; grucell writes them as a plain list, nested as Keras nests metrics per output.
#[test]
fn auc_label_weights_are_written_as_lists() {
    let io = io_keras_dir();
    let (out, keep) = out_dir("auc_label_weights");
    let src = load_keras_file(&io.join("trained.keras")).unwrap();
    let mut model = model_from_file::<f32>(&src).unwrap();
    let tensor = serde_json::json!({"class_name": "__tensor__", "config": {"value": [1.0, 2.0], "dtype": "float32"}});
    let auc = serde_json::json!({"module": "keras.metrics", "class_name": "AUC", "config": {"name": "auc", "label_weights": tensor}});
    let mut cc = src.compile_config.clone().unwrap();
    cc["metrics"] = serde_json::json!([auc, "mae"]);
    cc["weighted_metrics"] = serde_json::json!({"out": [auc]});
    model.compile_config = Some(cc);
    let path = out.join("auc.keras");
    save_model(&model, &path).unwrap();
    let cc = load_keras_file(&path).unwrap().compile_config.unwrap();
    let list = serde_json::json!([1.0, 2.0]);
    assert_eq!(cc["metrics"][0]["config"]["label_weights"], list, "{cc}");
    assert_eq!(cc["metrics"][1], "mae");
    assert_eq!(
        cc["weighted_metrics"]["out"][0]["config"]["label_weights"], list,
        "{cc}"
    );
    if !keep {
        std::fs::remove_dir_all(&out).ok();
    }
}

/// `save_model_with_optimizer` writes `optimizer/vars` (int64 iteration count, learning rate,
/// slots shaped like the trainable variables, in Keras' order) for float32 and float64 models;
/// reading them back into a fresh optimizer restores the same state, and an optimizer made for
/// other variables is refused.
#[test]
fn optimizer_state_round_trips_through_the_file() {
    use grucell::io::keras::write::save_model_with_optimizer;
    use grucell::train::loss::Loss;
    use grucell::train::optimizer::{Optimizer, OptimizerConfig};
    fn check<T: Float>(tag: &str) {
        let file = load_keras_file(&dir().join("seed_gru.keras")).unwrap();
        let mut model: Model<T> = model_from_file(&file).unwrap();
        let vars = model.trainable_variables();
        let sizes: Vec<usize> = vars.iter().map(|(_, s)| s.iter().product()).collect();
        let mut cfg = OptimizerConfig::adam(0.01);
        cfg.kind = match cfg.kind {
            grucell::train::optimizer::OptimizerKind::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => grucell::train::optimizer::OptimizerKind::Adam {
                beta_1,
                beta_2,
                epsilon,
                amsgrad: true,
            },
            k => k,
        };
        let mut opt = Optimizer::<T>::new(cfg.clone(), &sizes).unwrap();
        let shape = model.input_shapes()[0].clone();
        let (t, d) = (shape[1].unwrap_or(3), shape[2].unwrap());
        let x = Tensor::new(
            vec![2, t, d],
            (0..2 * t * d)
                .map(|i| T::of((i % 7) as f64 / 7.0 - 0.4))
                .collect(),
        )
        .unwrap();
        let out = model.predict(std::slice::from_ref(&x)).unwrap();
        let y = Tensor::new(out[0].shape().to_vec(), vec![T::of(0.3); out[0].len()]).unwrap();
        for _ in 0..3 {
            model
                .train_on_batch(
                    std::slice::from_ref(&x),
                    std::slice::from_ref(&y),
                    &Loss::from_name("mse").unwrap(),
                    &mut opt,
                    None,
                )
                .unwrap();
        }
        // Compiled, so that Keras builds an optimizer to load the state into.
        model.compile_config = Some(grucell::train::fit::keras_compile_config(
            &Loss::from_name("mse").unwrap(),
            &cfg,
        ));
        let (out_dir, keep) = out_dir(&format!("opt_{tag}"));
        let path = out_dir.join(format!("with_optimizer_{tag}.keras"));
        save_model_with_optimizer(&model, &opt, &path).unwrap();
        let saved = load_keras_file(&path).unwrap();
        let got = saved.optimizer_variables();
        assert_eq!(
            got.len(),
            2 + 3 * vars.len(),
            "{tag}: iteration, lr, 3 AMSGrad slots per variable"
        );
        assert_eq!(got[0].data(), &[3.0], "{tag}: iterations");
        for (k, t) in got[2..].iter().enumerate() {
            // Keras' AMSGrad order: momentum, velocity per variable, then all velocity_hat.
            let v = if k < 2 * vars.len() {
                k / 2
            } else {
                k - 2 * vars.len()
            };
            assert_eq!(t.shape(), vars[v].1.as_slice(), "{tag}: slot {k}");
        }
        let mut back = Optimizer::<T>::new(cfg.clone(), &sizes).unwrap();
        assert_eq!(
            back.restore_keras_state(&got).unwrap(),
            grucell::train::optimizer::Restored::Yes
        );
        let paths: Vec<String> = vars.iter().map(|(id, _)| id.path.clone()).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert_eq!(back.iterations(), 3);
        let a = opt.keras_variables(&paths).unwrap();
        let b = back.keras_variables(&paths).unwrap();
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.0 == q.0 && p.1 == q.1),
            "{tag}: restored state"
        );
        // An optimizer for other variables does not fit this model.
        let mut more = sizes.clone();
        more.push(1);
        for other_sizes in [vec![5, 5, 5], more] {
            let other = Optimizer::<T>::new(cfg.clone(), &other_sizes).unwrap();
            let err = save_model_with_optimizer(&model, &other, &path)
                .unwrap_err()
                .to_string();
            assert!(err.contains("optimizer slot"), "{tag}: {err}");
        }
        if !keep {
            let _ = std::fs::remove_dir_all(&out_dir);
        }
    }
    check::<f32>("f32");
    check::<f64>("f64");
}

/// A Normalization adapted on data with a size 1 on a kept axis (broadcast over the input's
/// size there) keeps its variables' shape: the saved `build_config` gives that size, since Keras
/// builds the variables from it on load (the inbound shape would make (5, 2) variables that
/// the saved (5, 1) values do not fit, and Keras would refuse the file).
#[test]
fn normalization_with_broadcast_statistics_saves_a_build_shape_keras_can_load() {
    use grucell::layers::dense::DenseConfig;
    use grucell::layers::model::Layer;
    use grucell::layers::preprocessing::Normalization;
    use grucell::Rnn;
    let stats = |v: f32| Tensor::new(vec![5, 1], vec![v; 5]).unwrap();
    for (axis, want) in [
        (vec![1, 2], vec![Value::Null, 5.into(), 1.into()]),
        (vec![-2, -1], vec![Value::Null, 5.into(), 1.into()]),
    ] {
        let norm = Normalization::new(axis.clone(), false, stats(0.5), stats(2.0)).unwrap();
        let model = Model::sequential(
            "m",
            vec![Some(5), Some(2)],
            vec![
                ("normalization".into(), Layer::Normalization(norm)),
                (
                    "gru".into(),
                    Layer::Rnn(Rnn::<f32>::new(cell(3, 1), 2).unwrap()),
                ),
                (
                    "dense".into(),
                    Layer::Dense(DenseConfig::new(1).build(3, 2).unwrap()),
                ),
            ],
        )
        .unwrap();
        let c = model_config_json(&model).unwrap();
        let layer = &c["config"]["layers"][1];
        assert_eq!(layer["class_name"], "Normalization", "{layer}");
        assert_eq!(
            layer["build_config"]["input_shape"],
            Value::Array(want),
            "axis {axis:?}"
        );
        // The model's input stays (5, 2).
        assert_eq!(
            c["config"]["layers"][0]["config"]["batch_shape"],
            serde_json::json!([null, 5, 2])
        );
    }
}
