//! `grucell fit` end to end: trains fixture models from .npy files, checks the printed history
//! against Keras' (tests/fixtures/fit/basic: compiled model, so no --loss/--optimizer needed),
//! that the saved model loads and predicts, and the error paths (no loss, divergence, output
//! equal to the input) leave no output behind.

use grucell::io::keras::load::load_model;
use grucell::io::npy::{read_npy, read_npz, write_npy};
use grucell::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("grucell_cli_fit_{}_{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn grucell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grucell"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `grucell fit --model model --x x --y y --output out`, then `rest` of the command line.
fn fit(model: &Path, x: &Path, y: &Path, out: &Path, rest: &[&str]) -> Output {
    let mut a = vec![
        "fit",
        "--model",
        s(model),
        "--x",
        s(x),
        "--y",
        s(y),
        "--output",
        s(out),
    ];
    a.extend_from_slice(rest);
    grucell(&a)
}

/// Runs `grucell evaluate --model --x --y` and `rest`.
fn evaluate(model: &Path, x: &Path, y: &Path, rest: &[&str]) -> Output {
    let mut a = vec!["evaluate", "--model", s(model), "--x", s(x), "--y", s(y)];
    a.extend_from_slice(rest);
    grucell(&a)
}

/// Writes the npz arrays `x_key`, `y_key` of a fixture as x.npy / y.npy in `dir`.
fn arrays(
    npz: &Path,
    x_key: &str,
    y_key: &str,
    dir: &Scratch,
    edit_y: impl Fn(&mut Tensor<f32>),
) -> (PathBuf, PathBuf, Tensor<f32>) {
    let get = |k: &str| fixture_array(npz, k).cast::<f32>();
    let x = get(x_key);
    let mut y = get(y_key);
    edit_y(&mut y);
    let (xp, yp) = (dir.path("x.npy"), dir.path("y.npy"));
    write_npy(&xp, &x).unwrap();
    write_npy(&yp, &y).unwrap();
    (xp, yp, x)
}

/// The stdout of a run that must have succeeded (else fails with its stderr and stdout).
fn success_stdout(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// The stderr of a run that must have failed (else fails with its stdout).
fn failure_stderr(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes the arrays `keys` of a fixture, split at sample `cut`, as `<key>.npy` (samples before
/// `cut`) then `v<key>.npy` (the rest) in `dir`; returns the paths in that order.
fn split_arrays(npz: &Path, keys: &[&str], cut: usize, dir: &Scratch) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (prefix, part) in [("", 0), ("v", 1)] {
        for k in keys {
            let t = fixture_array(npz, k).cast::<f32>();
            let n = t.shape()[0];
            let (from, to) = if part == 0 { (0, cut) } else { (cut, n) };
            let p = dir.path(&format!("{prefix}{k}.npy"));
            write_npy(&p, &rows(&t, from, to)).unwrap();
            paths.push(p);
        }
    }
    paths
}

/// The samples `from..to` (axis 0) of `t`.
fn rows(t: &Tensor<f32>, from: usize, to: usize) -> Tensor<f32> {
    let row: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = to - from;
    Tensor::new(shape, t.data()[from * row..to * row].to_vec()).unwrap()
}

/// Array `key` of a fixture `.npz`, in float64.
fn fixture_array(npz: &Path, key: &str) -> Tensor<f64> {
    let a = read_npz(npz).unwrap();
    let found = a.iter().find(|(n, _)| n == key);
    found
        .unwrap_or_else(|| panic!("{}: no {key}", npz.display()))
        .1
        .to_f64()
}

/// The number of samples of array `key` of a fixture.
fn fixture_rows(npz: &Path, key: &str) -> usize {
    fixture_array(npz, key).shape()[0]
}

/// Writes a fixture's `sample_weight` array as `w.npy` in `dir`; returns its path.
fn fixture_weights(npz: &Path, dir: &Scratch) -> PathBuf {
    let wp = dir.path("w.npy");
    write_npy(&wp, &fixture_array(npz, "sample_weight").cast::<f32>()).unwrap();
    wp
}

/// `epoch loss val_loss` rows of the printed history (an empty field, after an epoch not
/// validated, reads as NaN).
fn history(stdout: &str) -> Vec<Vec<f64>> {
    stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            l.split('\t')
                .map(|v| {
                    if v.is_empty() {
                        f64::NAN
                    } else {
                        v.parse().unwrap()
                    }
                })
                .collect()
        })
        .collect()
}

/// The printed history (`epoch loss val_loss` rows) is the one Keras recorded for the
/// `tests/fixtures/fit` case `name`, to float32 round-off.
fn assert_history_like_keras(stdout: &str, name: &str, epochs: usize) {
    let path = root().join("tests/fixtures/fit/fit.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    let h = history(stdout);
    assert_eq!(h.len(), epochs, "{stdout}");
    // Keras' History.epoch (0-based) where the case has one, else 0, 1, …
    let numbers: Vec<f64> = match case.get("history_epoch").and_then(|e| e.as_array()) {
        Some(e) => e.iter().map(|e| e.as_f64().unwrap() + 1.0).collect(),
        None => (1..=epochs).map(|e| e as f64).collect(),
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "{name}: {what}: {got} vs Keras {want}\n{stdout}"
        );
    };
    // Every column of the printed table (its header names them) is Keras' history entry of
    // that name; a validation column's values are those of the validated epochs in order.
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("epoch\t"))
        .unwrap()
        .split('\t')
        .collect();
    let keras = case["history"].as_object().unwrap();
    assert_eq!(header.len(), keras.len() + 1, "{name}: columns\n{stdout}");
    let val_col = header.iter().position(|c| *c == "val_loss");
    let mut validated = 0;
    for (e, row) in h.iter().enumerate() {
        assert_eq!(row[0], numbers[e], "{stdout}");
        let is_val = val_col.is_some_and(|c| !row[c].is_nan());
        for (col, key) in header.iter().enumerate().skip(1) {
            let got = row[col];
            let want = &keras[*key];
            if key.starts_with("val_") {
                if is_val {
                    close(got, want[validated].as_f64().unwrap(), key);
                } else {
                    assert!(got.is_nan(), "{name}: {key} of epoch {}\n{stdout}", e + 1);
                }
            } else {
                close(got, want[e].as_f64().unwrap(), key);
            }
        }
        validated += usize::from(is_val);
    }
    let want_val = case["history"]
        .get("val_loss")
        .map_or(0, |v| v.as_array().unwrap().len());
    assert_eq!(validated, want_val, "{name}: validated epochs\n{stdout}");
}

#[test]
fn fits_compiled_fixture_like_keras() {
    let dir = Scratch::new("keras");
    let fx = root().join("tests/fixtures/fit");
    let (xp, yp, x) = arrays(&fx.join("basic.npz"), "input_0", "target_0", &dir, |_| {});
    let out = dir.path("trained.keras");
    let rest = [
        "--no-shuffle",
        "--batch-size",
        "3",
        "--epochs",
        "3",
        "--validation-split",
        "0.2",
    ];
    let o = fit(&fx.join("basic.keras"), &xp, &yp, &out, &rest);
    let stdout = success_stdout(&o);
    // compile config: Adam(0.02) + mse, as Keras recorded them; history as Keras printed it
    assert_history_like_keras(&stdout, "basic", 3);
    // the saved model loads and predicts what Keras' trained model predicts
    let m = load_model::<f32>(&out).unwrap();
    let p = m.predict(&[x]).unwrap();
    let want = fixture_array(&fx.join("basic.npz"), "pred_after").cast::<f32>();
    assert!(p[0].max_abs_diff(&want) < 2e-5);
    assert_eq!(
        m.compile_config.as_ref().unwrap()["optimizer"]["class_name"],
        "Adam"
    );
}

/// A stateful model (fixed batch 4) trains in batches of its own size without --batch-size,
/// carrying its states as Keras does (the history is Keras'); another batch size is refused.
#[test]
fn fits_a_stateful_model_in_batches_of_its_size() {
    let dir = Scratch::new("stateful");
    let fx = root().join("tests/fixtures/fit");
    let (xp, yp, _) = arrays(
        &fx.join("stateful_basic.npz"),
        "input_0",
        "target_0",
        &dir,
        |_| {},
    );
    let out = dir.path("trained.keras");
    let model = fx.join("stateful_basic.keras");
    let run = |extra: &[&str]| {
        let rest = [
            "--no-shuffle",
            "--epochs",
            "3",
            "--validation-split",
            "0.25",
        ];
        fit(&model, &xp, &yp, &out, &[&rest[..], extra].concat())
    };
    let stderr = failure_stderr(&run(&["--batch-size", "3"]));
    assert!(!out.exists());
    assert!(
        stderr.contains("batch_size") && stderr.contains("4, the batch size"),
        "{stderr}"
    );
    let o = run(&[]);
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "stateful_basic", 3);
    assert!(load_model::<f32>(&out).unwrap().is_stateful());
}

/// `--sample-weight W.npy`: Keras' per-sample weights (validation split included) give Keras'
/// history; weights of the wrong shape are refused before training.
#[test]
fn fits_with_sample_weights_like_keras() {
    let dir = Scratch::new("weighted");
    let fx = root().join("tests/fixtures/fit");
    let npz = fx.join("weighted_split.npz");
    let (xp, yp, _) = arrays(&npz, "input_0", "target_0", &dir, |_| {});
    let (wp, bad) = (fixture_weights(&npz, &dir), dir.path("w2.npy"));
    write_npy(&bad, &Tensor::new(vec![10, 2], vec![1.0f32; 20]).unwrap()).unwrap();
    let out = dir.path("trained.keras");
    let model = fx.join("weighted_split.keras");
    let run = |w: &Path| {
        let rest = [
            "--sample-weight",
            s(w),
            "--no-shuffle",
            "--batch-size",
            "3",
            "--epochs",
            "2",
            "--validation-split",
            "0.2",
        ];
        fit(&model, &xp, &yp, &out, &rest)
    };
    let stderr = failure_stderr(&run(&bad));
    assert!(!out.exists());
    assert!(stderr.contains("sample_weight"), "{stderr}");
    let o = run(&wp);
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "weighted_split", 2);
}

/// `--class-weight C:W,…`: Keras' class weights give Keras' history (the validation split
/// unweighted); a malformed list and one given with --sample-weight are refused.
#[test]
fn fits_with_class_weights_like_keras() {
    let dir = Scratch::new("class-weighted");
    let fx = root().join("tests/fixtures/fit");
    let (xp, yp, _) = arrays(
        &fx.join("class_onehot.npz"),
        "input_0",
        "target_0",
        &dir,
        |_| {},
    );
    let out = dir.path("trained.keras");
    let model = fx.join("class_onehot.keras");
    let run = |extra: &[&str]| {
        let rest = [
            "--no-shuffle",
            "--batch-size",
            "4",
            "--epochs",
            "3",
            "--validation-split",
            "0.25",
        ];
        fit(&model, &xp, &yp, &out, &[&rest[..], extra].concat())
    };
    for (bad, want) in [
        ("0:1,1", "expected CLASS:WEIGHT"),
        ("a:1", "not an integer"),
        ("1:inf", "not a finite number"),
        ("1:2,1:3", "class 1 is given twice"),
    ] {
        let stderr = failure_stderr(&run(&["--class-weight", bad]));
        assert!(!out.exists());
        assert!(stderr.contains(want), "{bad}: {stderr}");
    }
    let stderr = failure_stderr(&run(&["--class-weight", "0:1", "--sample-weight", s(&xp)]));
    assert!(!out.exists());
    assert!(stderr.contains("cannot be used with"));
    let o = run(&["--class-weight", "0:1, 1:3, 2:0.25"]);
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "class_onehot", 3);
}

/// Keras' epoch options on the command line: `--steps-per-epoch`, `--initial-epoch`,
/// `--validation-freq`/`--validation-epochs`, `--validation-steps` and
/// `--validation-batch-size` give the histories Keras reported; counts of 0 and malformed epoch
/// lists are refused naming the flag.
#[test]
fn fits_with_keras_epoch_options_like_keras() {
    let dir = Scratch::new("epoch-options");
    let fx = root().join("tests/fixtures/fit");
    let run = |name: &str, args: &[&str]| {
        let (xp, yp, _) = arrays(
            &fx.join(format!("{name}.npz")),
            "input_0",
            "target_0",
            &dir,
            |_| {},
        );
        let out = dir.path(&format!("{name}.keras"));
        let o = fit(&fx.join(format!("{name}.keras")), &xp, &yp, &out, args);
        (o, out)
    };
    let (o, _) = run(
        "steps_partial_pass",
        &[
            "--no-shuffle",
            "--batch-size",
            "3",
            "--epochs",
            "5",
            "--validation-split",
            "0.2",
        ]
        .iter()
        .chain(&["--steps-per-epoch", "2"])
        .copied()
        .collect::<Vec<_>>(),
    );
    assert_history_like_keras(&success_stdout(&o), "steps_partial_pass", 5);
    let (o, _) = run(
        "val_freq_initial_epoch",
        &[
            "--no-shuffle",
            "--batch-size",
            "3",
            "--epochs",
            "12",
            "--validation-split",
            "0.4",
            "--patience",
            "1",
            "--initial-epoch",
            "1",
            "--validation-freq",
            "2",
            "--validation-steps",
            "2",
            "--validation-batch-size",
            "2",
        ],
    );
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "val_freq_initial_epoch", 3);
    assert!(
        stdout.contains("stopped early; weights of epoch 2"),
        "{stdout}"
    );
    let (o, _) = run(
        "val_freq_list",
        &[
            "--no-shuffle",
            "--batch-size",
            "4",
            "--epochs",
            "4",
            "--validation-split",
            "0.3",
            "--validation-epochs",
            "1,3",
            "--steps-per-epoch",
            "7",
            "--validation-batch-size",
            "3",
        ],
    );
    assert_history_like_keras(&success_stdout(&o), "val_freq_list", 4);
    std::fs::remove_file(dir.path("val_freq_list.keras")).unwrap();
    for (bad, flag) in [
        (&["--steps-per-epoch", "0"][..], "--steps-per-epoch"),
        (&["--validation-freq", "0"], "--validation-freq"),
        (&["--validation-steps", "0"], "--validation-steps"),
        (&["--validation-batch-size", "0"], "--validation-batch-size"),
        (&["--validation-epochs", "1,0"], "--validation-epochs"),
        (&["--validation-epochs", "2,x"], "--validation-epochs"),
        (
            &["--validation-epochs", "2", "--validation-freq", "2"],
            "cannot be used with",
        ),
    ] {
        let (o, out) = run("val_freq_list", bad);
        let stderr = failure_stderr(&o);
        assert!(!out.exists(), "{bad:?}");
        assert!(stderr.contains(flag), "{bad:?}: {stderr}");
    }
}

/// A model compiled with metrics reports them as Keras does: training and validation columns
/// in the history, the weighted ones with `--sample-weight`.
#[test]
fn fits_with_compiled_metrics_like_keras() {
    let dir = Scratch::new("metrics");
    let fx = root().join("tests/fixtures/fit");
    let npz = fx.join("metrics_binary.npz");
    let (xp, yp, _) = arrays(&npz, "input_0", "target_0", &dir, |_| {});
    let wp = fixture_weights(&npz, &dir);
    let rest = [
        "--no-shuffle",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--validation-split",
        "0.25",
        "--sample-weight",
        s(&wp),
    ];
    let out = dir.path("binary.keras");
    let o = fit(&fx.join("metrics_binary.keras"), &xp, &yp, &out, &rest);
    assert_history_like_keras(&success_stdout(&o), "metrics_binary", 3);
    let npz = fx.join("metrics_categorical.npz");
    let (xp, yp, _) = arrays(&npz, "input_0", "target_0", &dir, |_| {});
    let rest = [
        "--no-shuffle",
        "--batch-size",
        "5",
        "--epochs",
        "3",
        "--validation-split",
        "0.25",
        "--validation-freq",
        "2",
    ];
    let out = dir.path("categorical.keras");
    let o = fit(&fx.join("metrics_categorical.keras"), &xp, &yp, &out, &rest);
    assert_history_like_keras(&success_stdout(&o), "metrics_categorical", 3);
}

/// `--validation-x/--validation-y` (Keras' `validation_data`): the last quarter of the
/// `class_onehot` samples given as validation data gives the history Keras reported for
/// `validation_split=0.25` on all of them. Half of the pair, or both with --validation-split,
/// is refused.
#[test]
fn fits_with_validation_data_like_keras() {
    let dir = Scratch::new("validation-data");
    let fx = root().join("tests/fixtures/fit");
    let npz = fx.join("class_onehot.npz");
    let n = fixture_rows(&npz, "input_0");
    // Keras: floor(n · (1 − 0.25)); paths x, y, vx, vy.
    let paths = split_arrays(&npz, &["input_0", "target_0"], n * 3 / 4, &dir);
    let out = dir.path("trained.keras");
    let model = fx.join("class_onehot.keras");
    let run = |extra: &[&str]| {
        let rest = [
            "--no-shuffle",
            "--batch-size",
            "4",
            "--epochs",
            "3",
            "--class-weight",
            "0:1,1:3,2:0.25",
        ];
        fit(
            &model,
            &paths[0],
            &paths[1],
            &out,
            &[&rest[..], extra].concat(),
        )
    };
    for bad in [
        vec!["--validation-x", s(&paths[2])],
        vec!["--validation-y", s(&paths[3])],
        vec![
            "--validation-x",
            s(&paths[2]),
            "--validation-y",
            s(&paths[3]),
            "--validation-split",
            "0.2",
        ],
    ] {
        let o = run(&bad);
        assert!(!o.status.success() && !out.exists(), "{bad:?}");
    }
    let o = run(&[
        "--validation-x",
        s(&paths[2]),
        "--validation-y",
        s(&paths[3]),
    ]);
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "class_onehot", 3);
}

/// `--validation-sample-weight`: the weighted tail of `weighted_split` as validation data gives
/// the history of Keras' `validation_split=0.2` run, whose split keeps its weights.
#[test]
fn fits_with_weighted_validation_data_like_keras() {
    let dir = Scratch::new("weighted-validation");
    let fx = root().join("tests/fixtures/fit");
    let npz = fx.join("weighted_split.npz");
    let n = fixture_rows(&npz, "input_0");
    // Keras: floor(n · (1 − 0.2)); paths x, y, w, vx, vy, vw.
    let keys = ["input_0", "target_0", "sample_weight"];
    let paths = split_arrays(&npz, &keys, n * 4 / 5, &dir);
    let (out, model) = (dir.path("trained.keras"), fx.join("weighted_split.keras"));
    let rest = [
        "--no-shuffle",
        "--batch-size",
        "3",
        "--epochs",
        "2",
        "--sample-weight",
        s(&paths[2]),
        "--validation-x",
        s(&paths[3]),
        "--validation-y",
        s(&paths[4]),
        "--validation-sample-weight",
        s(&paths[5]),
    ];
    let o = fit(&model, &paths[0], &paths[1], &out, &rest);
    let stdout = success_stdout(&o);
    assert_history_like_keras(&stdout, "weighted_split", 2);
}

#[test]
fn fits_model_fixture_two_epochs_deterministically() {
    let dir = Scratch::new("fixture");
    let models = root().join("tests/fixtures/models");
    let (xp, yp, x) = arrays(
        &models.join("dense_stack.npz"),
        "input_0",
        "output_0",
        &dir,
        |y| y.data_mut().iter_mut().for_each(|v| *v = 1.0 - *v),
    );
    let model = models.join("dense_stack.keras");
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "fit",
            "--model",
            s(&model),
            "--x",
            s(&xp),
            "--y",
            s(&yp),
            "--loss",
            "mse",
            "--optimizer",
            "adam",
        ];
        a.extend_from_slice(&[
            "--learning-rate",
            "0.05",
            "--no-shuffle",
            "--seed",
            "3",
            "--epochs",
            "2",
            "--batch-size",
            "3",
            "--output",
            s(out),
        ]);
        a.extend_from_slice(extra);
        let o = grucell(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (o1, o2) = (dir.path("a.keras"), dir.path("b.keras"));
    let stdout = run(&o1, &[]);
    let h = history(&stdout);
    assert_eq!(h.len(), 2, "{stdout}");
    assert!(h[1][1] < h[0][1], "loss should decrease: {stdout}");
    assert!(run(&o2, &["--quiet", "--threads", "2"]).is_empty());
    let before = load_model::<f32>(&model)
        .unwrap()
        .predict(std::slice::from_ref(&x))
        .unwrap();
    let p1 = load_model::<f32>(&o1)
        .unwrap()
        .predict(std::slice::from_ref(&x))
        .unwrap();
    let p2 = load_model::<f32>(&o2)
        .unwrap()
        .predict(std::slice::from_ref(&x))
        .unwrap();
    assert_eq!(p1[0].shape(), &[4, 3]);
    assert!(
        p1[0].max_abs_diff(&before[0]) > 1e-3,
        "training changed nothing"
    );
    // the model has a Dropout layer: --seed fixes its masks
    assert!(
        p1[0].max_abs_diff(&p2[0]) < 1e-5,
        "--no-shuffle --seed runs differ"
    );
    // the loss used is recorded in the saved compile config
    let cc = load_model::<f32>(&o1).unwrap().compile_config.unwrap();
    assert_eq!(cc["loss"]["class_name"], "MeanSquaredError");
    // safetensors output
    let st = dir.path("c.safetensors");
    run(&st, &["--quiet"]);
    assert!(std::fs::metadata(&st).unwrap().len() > 100);
    // ... is a model file `predict` reads: the same run, so the same predictions as a.keras.
    let (xin, yst) = (dir.path("x_in.npy"), dir.path("y_st.npy"));
    write_npy(&xin, &x).unwrap();
    let o = grucell(&[
        "predict",
        "--model",
        s(&st),
        "--input",
        s(&xin),
        "--output",
        s(&yst),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_st: Tensor<f32> = read_npy(&yst).unwrap().to_f64().cast();
    assert!(
        from_st.max_abs_diff(&p1[0]) == 0.0,
        "{from_st:?} vs {:?}",
        p1[0]
    );
}

/// `grucell evaluate` gives Keras' `evaluate` loss (batch 3), unweighted and with
/// `--sample-weight` (per sample and step), as text or JSON; bad flags and a model without a
/// loss are refused.
#[test]
fn evaluates_like_keras() {
    let dir = Scratch::new("evaluate");
    let fx = root().join("tests/fixtures/fit");
    let npz = fx.join("evaluate_weighted.npz");
    let (xp, yp, _) = arrays(&npz, "input_0", "target_0", &dir, |_| {});
    let get = |k: &str| fixture_array(&npz, k);
    let wp = fixture_weights(&npz, &dir);
    let model = fx.join("evaluate_weighted.keras");
    let run = |rest: &[&str]| evaluate(&model, &xp, &yp, rest);
    let value = |o: &Output| -> f64 {
        let stdout = success_stdout(o);
        stdout
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("loss\t"))
            .unwrap()
            .parse()
            .unwrap()
    };
    let close = |got: f64, key: &str| {
        let want = get(key).data()[0];
        assert!(
            (got - want).abs() < 1e-5 * want.abs(),
            "{key}: {got} vs Keras {want}"
        );
    };
    close(value(&run(&["--batch-size", "3"])), "eval");
    close(
        value(&run(&[
            "--batch-size",
            "3",
            "--sample-weight",
            s(&wp),
            "--threads",
            "2",
        ])),
        "eval_weighted",
    );
    // Compiled metrics grucell computes are printed after the loss; others are named in a
    // warning and left out.
    let mut with_metrics = load_model::<f32>(&model).unwrap();
    with_metrics.compile_config.as_mut().unwrap()["metrics"] =
        serde_json::json!(["mae", "f1_score"]);
    let mp = dir.path("metrics.keras");
    grucell::io::keras::write::save_model(&with_metrics, &mp).unwrap();
    let o = evaluate(&mp, &xp, &yp, &["--batch-size", "3"]);
    let stdout = success_stdout(&o);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[1].starts_with("mae\t"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("compiled metrics `f1_score`") && stderr.contains("left out"),
        "{stderr}"
    );
    let o = run(&["--batch-size", "3", "--json"]);
    let j: serde_json::Value = serde_json::from_str(success_stdout(&o).trim()).unwrap();
    close(j["loss"].as_f64().unwrap(), "eval");
    assert_eq!(
        (j["samples"].as_u64(), j["batch_size"].as_u64()),
        (Some(7), Some(3))
    );
    let stderr = failure_stderr(&run(&["--batch-size", "0"]));
    assert!(stderr.contains("--batch-size"), "{stderr}");
    let stderr = failure_stderr(&run(&["--sample-weight", s(&xp)]));
    assert!(stderr.contains("sample-weight"), "{stderr}");
    let models = root().join("tests/fixtures/models");
    let (xp, yp, _) = arrays(
        &models.join("dense_stack.npz"),
        "input_0",
        "output_0",
        &dir,
        |_| {},
    );
    let dense = models.join("dense_stack.keras");
    let stderr = failure_stderr(&evaluate(&dense, &xp, &yp, &[]));
    assert!(stderr.contains("no --loss and"), "{stderr}");
    let o = evaluate(&dense, &xp, &yp, &["--loss", "mse"]);
    assert!(
        value(&o) < 1e-10,
        "the fixture's own outputs as targets: loss 0"
    );
}

/// A TF-Keras 2 `.h5` compiled with metrics (function wrappers, a metric object, a weighted
/// metric): `grucell evaluate` prints TF-Keras' values, with and without sample weights.
#[test]
fn evaluates_tf_keras_2_metrics_like_tf_keras() {
    let dir = Scratch::new("evaluate-tfk");
    let fx = root().join("tests/fixtures/tfkeras");
    let npz = fx.join("eval_metrics.npz");
    let (xp, yp, _) = arrays(&npz, "input_0", "target_0", &dir, |_| {});
    let get = |k: &str| fixture_array(&npz, k).data()[0];
    let wp = fixture_weights(&npz, &dir);
    let model = fx.join("eval_metrics.h5");
    for (rest, prefix) in [
        (&["--batch-size", "4"][..], "eval_"),
        (
            &["--batch-size", "4", "--sample-weight", s(&wp)],
            "eval_weighted_",
        ),
    ] {
        let stdout = success_stdout(&evaluate(&model, &xp, &yp, rest));
        let names: Vec<&str> = stdout
            .lines()
            .map(|l| l.split('\t').next().unwrap())
            .collect();
        assert_eq!(names, ["loss", "accuracy", "mae", "ba4", "mse"], "{stdout}");
        for line in stdout.lines() {
            let (name, v) = line.split_once('\t').unwrap();
            let (got, want) = (v.parse::<f64>().unwrap(), get(&format!("{prefix}{name}")));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{prefix}{name}: {got} vs TF-Keras {want}"
            );
        }
    }
}

#[test]
fn missing_loss_is_an_error() {
    let dir = Scratch::new("noloss");
    let models = root().join("tests/fixtures/models");
    let (xp, yp, _) = arrays(
        &models.join("dense_stack.npz"),
        "input_0",
        "output_0",
        &dir,
        |_| {},
    );
    let out = dir.path("o.keras");
    let o = grucell(&[
        "fit",
        "--model",
        s(&models.join("dense_stack.keras")),
        "--x",
        s(&xp),
        "--y",
        s(&yp),
        "--output",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no --loss and") && err.contains("has no compile config with a loss"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn divergence_fails_naming_epoch_and_batch_and_writes_nothing() {
    let dir = Scratch::new("diverge");
    let models = root().join("tests/fixtures/models");
    // sample 2 (batch 2 with --batch-size 2) has a target whose squared error overflows float32
    let (xp, yp, _) = arrays(
        &models.join("dense_stack.npz"),
        "input_0",
        "output_0",
        &dir,
        |y| y.data_mut()[7] = 1e30,
    );
    let out = dir.path("o.keras");
    let model = models.join("dense_stack.keras");
    let o = grucell(&[
        "fit",
        "--model",
        s(&model),
        "--x",
        s(&xp),
        "--y",
        s(&yp),
        "--loss",
        "mse",
        "--no-shuffle",
        "--batch-size",
        "2",
        "--epochs",
        "3",
        "--output",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("epoch 1, batch 2"), "{err}");
    assert!(!out.exists());
    // a huge learning rate diverges too (GRU -> linear Dense: the second step overflows)
    let fx = root().join("tests/fixtures/fit");
    let (xp, yp, _) = arrays(&fx.join("basic.npz"), "input_0", "target_0", &dir, |_| {});
    let o = grucell(&[
        "fit",
        "--model",
        s(&fx.join("basic.keras")),
        "--x",
        s(&xp),
        "--y",
        s(&yp),
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e30",
        "--no-shuffle",
        "--batch-size",
        "2",
        "--epochs",
        "5",
        "--output",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("training diverged: non-finite loss at epoch 1, batch 2"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn output_must_differ_from_input_unless_overwrite() {
    let dir = Scratch::new("overwrite");
    let models = root().join("tests/fixtures/models");
    let (xp, yp, x) = arrays(
        &models.join("dense_stack.npz"),
        "input_0",
        "output_0",
        &dir,
        |y| y.data_mut().iter_mut().for_each(|v| *v += 1.0),
    );
    let model = dir.path("m.keras");
    std::fs::copy(models.join("dense_stack.keras"), &model).unwrap();
    let original = std::fs::read(&model).unwrap();
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = [
            "fit",
            "--model",
            s(&model),
            "--x",
            s(&xp),
            "--y",
            s(&yp),
            "--loss",
            "mse",
            "--quiet",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        a.extend(extra.iter().map(|v| v.to_string()));
        a
    };
    // the same file, named differently
    let same = dir.0.join(".").join("m.keras");
    let mut a = args(&[]);
    a.extend(["--output".to_string(), s(&same).to_string()]);
    let o = Command::new(env!("CARGO_BIN_EXE_grucell"))
        .args(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), original);
    let mut a = args(&["--overwrite", "--learning-rate", "0.1"]);
    a.extend(["--output".to_string(), s(&model).to_string()]);
    let o = Command::new(env!("CARGO_BIN_EXE_grucell"))
        .args(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(std::fs::read(&model).unwrap(), original);
    assert_eq!(
        load_model::<f32>(&model).unwrap().predict(&[x]).unwrap()[0].shape(),
        &[4, 3]
    );
    // an unsupported output kind is refused before training
    let mut a = args(&[]);
    a.extend(["--output".to_string(), s(&dir.path("o.h5")).to_string()]);
    let o = Command::new(env!("CARGO_BIN_EXE_grucell"))
        .args(&a)
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains(".keras or .safetensors")
    );
}

/// Every dataset of a `.keras` file's model.weights.h5, by path.
fn datasets(path: &Path) -> std::collections::BTreeMap<String, Tensor<f64>> {
    match grucell::io::keras::load_keras_file(path).unwrap().weights {
        grucell::io::keras::KerasWeights::ByPath(m) => m,
        other => panic!("{}: not a .keras file: {other:?}", path.display()),
    }
}

/// tests/fixtures/resume: a model Keras trained and saved (with its optimizer's variables, as
/// `.keras` and as legacy `.h5`), trained one more epoch by `grucell fit` and by Keras
/// (load_model of the `.keras` + fit). grucell restores the
/// state (iteration count, learning rate, Adam's AMSGrad maxima, RMSprop's centred averages,
/// SGD's Nesterov momentum, Adagrad's accumulators, AdamW with clipping), and a learning-rate
/// schedule continues from the saved iteration count, so its output file holds what Keras'
/// holds: the same datasets — weights and `optimizer/vars` — to float32 round-off, and the same
/// schedule in its compile config.
#[test]
fn continues_training_from_a_keras_optimizer_state() {
    let fx = root().join("tests/fixtures/resume");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("resume.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 26);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bs = case["batch_size"].to_string();
        let dir = Scratch::new(&format!("resume_{name}"));
        let (xp, yp, _) = arrays(
            &fx.join(format!("{name}.npz")),
            "input_0",
            "target_0",
            &dir,
            |_| {},
        );
        let want = datasets(&fx.join(format!("{name}_continued.keras")));
        let rate = |p: &Path| {
            let cc = grucell::io::keras::load_keras_file(p)
                .unwrap()
                .compile_config;
            cc.unwrap()["optimizer"]["config"]["learning_rate"].clone()
        };
        let want_rate = rate(&fx.join(format!("{name}_continued.keras")));
        assert!(
            want_rate.is_object() || !name.starts_with("schedule_"),
            "{name}: {want_rate}"
        );
        assert!(
            want.keys().any(|k| k == "optimizer/vars/2"),
            "{name}: slots in the fixture"
        );
        // The legacy .h5 of the same trained model holds the same state (`optimizer_weights`).
        for ext in ["keras", "h5"] {
            let trained = fx.join(format!("{name}_trained.{ext}"));
            let out = dir.path(&format!("out_{ext}.keras"));
            let run = grucell(&[
                "fit",
                "--model",
                s(&trained),
                "--x",
                s(&xp),
                "--y",
                s(&yp),
                "--batch-size",
                &bs,
                "--epochs",
                "1",
                "--no-shuffle",
                "--output",
                s(&out),
            ]);
            let stdout = String::from_utf8_lossy(&run.stdout);
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "{name}.{ext}: {stderr}");
            assert!(
                stdout.contains("restored the optimizer state") && stderr.is_empty(),
                "{name}.{ext}: {stdout} {stderr}"
            );
            let got = datasets(&out);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}.{ext}: dataset paths"
            );
            if want_rate.is_object() {
                assert_eq!(rate(&out), want_rate, "{name}.{ext}: the saved schedule");
            }
            for (path, w) in &want {
                let g = &got[path];
                assert_eq!(g.shape(), w.shape(), "{name}.{ext} {path}");
                let diff = g.max_abs_diff(w);
                assert!(
                    diff <= 1e-5,
                    "{name}.{ext} {path}: differs from Keras by {diff:e}"
                );
            }
        }
    }
}

/// An optimizer that is not the file's compiled one (here `--optimizer sgd` over a file
/// trained with Adam) starts from a fresh state, as a recompiled Keras model does, and the
/// saved file holds the new optimizer's variables (SGD without momentum: iteration and
/// learning rate only).
#[test]
fn another_optimizer_starts_fresh() {
    let fx = root().join("tests/fixtures/resume");
    let dir = Scratch::new("resume_other");
    let (xp, yp, _) = arrays(
        &fx.join("adamw_clip.npz"),
        "input_0",
        "target_0",
        &dir,
        |_| {},
    );
    let out = dir.path("out.keras");
    let run = grucell(&[
        "fit",
        "--model",
        s(&fx.join("adamw_clip_trained.keras")),
        "--x",
        s(&xp),
        "--y",
        s(&yp),
        "--batch-size",
        "3",
        "--epochs",
        "1",
        "--no-shuffle",
        "--optimizer",
        "sgd",
        "--output",
        s(&out),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!String::from_utf8_lossy(&run.stdout).contains("restored"));
    let got = datasets(&out);
    let opt: Vec<_> = got.keys().filter(|k| k.starts_with("optimizer/")).collect();
    assert_eq!(opt, ["optimizer/vars/0", "optimizer/vars/1"]);
    // Four batches of one epoch, counted from zero.
    assert_eq!(got["optimizer/vars/0"].data(), &[4.0]);
}

/// Every weight of a saved model, in Keras' `model.get_weights()` order.
fn all_weights(path: &Path) -> Vec<Tensor<f64>> {
    use grucell::layers::model::Layer;
    let file = grucell::io::keras::load_keras_file(path).unwrap();
    let model = grucell::io::keras::load::model_from_file::<f64>(&file).unwrap();
    let mut out = Vec::new();
    for ml in &model.layers {
        match &ml.layer {
            Layer::Rnn(r) => r
                .cells()
                .iter()
                .for_each(|c| out.extend(c.weights().into_iter().cloned())),
            Layer::Bidirectional(b) => {
                for r in [&b.forward, &b.backward] {
                    r.cells()
                        .iter()
                        .for_each(|c| out.extend(c.weights().into_iter().cloned()));
                }
            }
            Layer::Dense(d) => out.extend(d.weights().into_iter().cloned()),
            _ => {}
        }
    }
    out
}

/// `grucell fit` on a TF-Keras 2 fixture (tests/fixtures/tfkeras) for `epochs`, its weights
/// against the `weight_i` TF-Keras ended with; returns the output file.
fn fit_like_tf_keras(dir: &Scratch, model: &str, npz: &str, epochs: &str) -> PathBuf {
    let fx = root().join("tests/fixtures/tfkeras");
    let (xp, yp, _) = arrays(&fx.join(npz), "input_0", "target_0", dir, |_| {});
    let out = dir.path("out.keras");
    let o = grucell(&[
        "fit",
        "--model",
        s(&fx.join(model)),
        "--x",
        s(&xp),
        "--y",
        s(&yp),
        "--batch-size",
        "2",
        "--epochs",
        epochs,
        "--no-shuffle",
        "--output",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{model}: {err}");
    assert!(!err.contains("warning"), "{model}: {err}");
    let want = read_npz(&fx.join(npz)).unwrap();
    let want: Vec<Tensor<f64>> = (0..)
        .map_while(|i| want.iter().find(|(n, _)| *n == format!("weight_{i}")))
        .map(|(_, a)| a.to_f64())
        .collect();
    let got = all_weights(&out);
    assert_eq!(got.len(), want.len(), "{model}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.shape(), w.shape(), "{model} weight {i}");
        let d = g.max_abs_diff(w);
        assert!(d < 1e-5, "{model} weight {i}: differs from TF-Keras by {d}");
    }
    out
}

/// A compiled model saved by TF-Keras 2 (`tf_keras` 2.21, legacy `.h5`: optimizer `Custom>Adam`,
/// `is_legacy_optimizer`/`jit_compile` keys) trains with its own optimizer and loss as TF-Keras
/// trained it, and the `.keras` written holds a Keras 3 compile config (no TF-Keras-only keys).
#[test]
fn fits_a_tf_keras_2_file_like_tf_keras() {
    let dir = Scratch::new("tf2");
    let out = fit_like_tf_keras(&dir, "fit_adam.h5", "fit_adam.npz", "2");
    let file = grucell::io::keras::load_keras_file(&out).unwrap();
    let opt = &file.compile_config.as_ref().unwrap()["optimizer"];
    assert_eq!(opt["class_name"], "Adam", "{opt}");
    for k in ["is_legacy_optimizer", "jit_compile"] {
        assert!(opt["config"].get(k).is_none(), "{k} kept in {opt}");
    }
}

/// A stateful TF-Keras 2 model (`batch_input_shape` (2, 5, 3), stacked stateful GRUs, one going
/// backwards) trains as TF-Keras trains it: states carried through all batches and epochs.
#[test]
fn fits_a_stateful_tf_keras_2_file_like_tf_keras() {
    let dir = Scratch::new("tf2_stateful");
    let out = fit_like_tf_keras(&dir, "fit_stateful.h5", "fit_stateful.npz", "3");
    assert!(load_model::<f32>(&out).unwrap().is_stateful());
}

/// TF-Keras 2 files compiled with loss objects (config with `reduction: "auto"` and `fn`) train
/// as TF-Keras trains them: binary crossentropy `from_logits=True` on a sigmoid output (read as
/// the sigmoid's input), binary and categorical focal crossentropies, cosine similarity, Huber
/// with its delta, categorical crossentropy with label smoothing.
#[test]
fn fits_tf_keras_2_files_compiled_with_loss_objects() {
    for name in [
        "bce_logits_sigmoid",
        "binary_focal",
        "categorical_focal",
        "cosine",
        "huber",
        "cce_smoothing",
    ] {
        let dir = Scratch::new(&format!("tf2_loss_{name}"));
        let model = format!("fit_loss_{name}.h5");
        let out = fit_like_tf_keras(&dir, &model, &format!("fit_loss_{name}.npz"), "2");
        // The `.keras` written carries the loss in Keras 3's form (Keras 3 refuses `fn`).
        let file = grucell::io::keras::load_keras_file(&out).unwrap();
        let loss = &file.compile_config.as_ref().unwrap()["loss"];
        assert_eq!(loss["module"], "keras.losses", "{name}: {loss}");
        assert_eq!(
            loss["config"]["reduction"], "sum_over_batch_size",
            "{name}: {loss}"
        );
        assert!(loss["config"].get("fn").is_none(), "{name}: {loss}");
    }
}

/// TF-Keras 2 files trained and saved with their optimizer state (`iteration:0` then the slots,
/// no learning-rate variable) continue in grucell with that state, as in TF-Keras (AMSGrad's
/// maxima, centred RMSprop with momentum, a learning-rate schedule without a name;
/// Bidirectional, stacked cells, masking).
#[test]
fn continues_training_from_a_tf_keras_2_optimizer_state() {
    for name in ["resume_amsgrad", "resume_rmsprop", "resume_schedule"] {
        let dir = Scratch::new(&format!("tf2_{name}"));
        fit_like_tf_keras(&dir, &format!("{name}.h5"), &format!("{name}.npz"), "1");
    }
}
