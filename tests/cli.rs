//! End-to-end tests of the `grucell` binary: `predict` against every Keras model fixture
//! (tests/fixtures/models, outputs computed by Keras 3.15.1), `inspect`, and the error paths
//! (exit code 1 and one `error: ...` line naming the problem; 2 for usage errors; never a panic).

use grucell::io::npy::{read_npy, read_npz, write_npy, write_npz, Array, ArrayRef};
use grucell::Tensor;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_grucell");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("grucell-cli-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn grucell<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a clean failure: exit code 1, a single `error: ` line on stderr containing every
/// one of `needles` (case-insensitive), no panic, no backtrace.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit code 1, got {:?}; stderr:\n{err}",
        o.status.code()
    );
    assert!(
        err.starts_with("error: "),
        "stderr does not start with `error: `:\n{err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "stderr is not one line:\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error") && !err.contains("backtrace"),
        "{err}"
    );
    for n in needles {
        assert!(
            err.to_lowercase().contains(&n.to_lowercase()),
            "stderr lacks `{n}`:\n{err}"
        );
    }
}

fn manifest_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    m["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    manifest_cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no fixture case {name}"))
}

fn npz_map(path: &Path) -> HashMap<String, Array> {
    read_npz(path).unwrap().into_iter().collect()
}

fn write_array(path: &Path, a: &Array) {
    match a {
        Array::F32(t) => write_npy(path, t).unwrap(),
        Array::F64(t) => write_npy(path, t).unwrap(),
    }
}

/// Max |got - want| over all elements, or an error naming the first element off by more than
/// `atol + rtol·|want|`.
fn compare(got: &Array, want: &Array, atol: f64, rtol: f64) -> Result<f64, String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    let mut worst: f64 = 0.0;
    for (k, (a, b)) in g.data().iter().zip(w.data()).enumerate() {
        let d = (a - b).abs();
        if d.is_nan() || d > atol + rtol * b.abs() {
            return Err(format!("flat index {k}: got {a}, expected {b}"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// Runs `grucell predict` on one fixture file and checks every output. Multi-input models are
/// given one .npy per input when `npz_input` is false, else one .npz.
fn predict_case(case: &Value, file: &str, npz_input: bool, dir: &TempDir) -> Result<f64, String> {
    let data = npz_map(&fixtures().join(case["data"].as_str().unwrap()));
    let calls = case["calls"].as_u64().unwrap();
    // Stateful cases: a fresh process is Keras' first call after loading.
    let key = |kind: &str, i: usize| {
        if calls == 1 {
            format!("{kind}_{i}")
        } else {
            format!("call0_{kind}_{i}")
        }
    };
    let n_in = case["n_inputs"].as_u64().unwrap() as usize;
    let n_out = case["n_outputs"].as_u64().unwrap() as usize;
    let stem = file.replace('.', "_");
    let mut args: Vec<String> = vec![
        "predict".into(),
        "--model".into(),
        fixtures().join(file).display().to_string(),
    ];
    if npz_input {
        let x = dir.path(&format!("{stem}_x.npz"));
        let arrays: Vec<(String, ArrayRef)> = (0..n_in)
            .map(|i| (format!("input_{i}"), (&data[&key("input", i)]).into()))
            .collect();
        write_npz(&x, &arrays).unwrap();
        args.extend(["--input".into(), x.display().to_string()]);
    } else {
        for i in 0..n_in {
            let x = dir.path(&format!("{stem}_x{i}.npy"));
            write_array(&x, &data[&key("input", i)]);
            args.extend(["--input".into(), x.display().to_string()]);
        }
    }
    let y = dir.path(&format!(
        "{stem}_y.{}",
        if n_out == 1 { "npy" } else { "npz" }
    ));
    args.extend(["--output".into(), y.display().to_string()]);
    let o = grucell(&args);
    if !o.status.success() {
        return Err(format!("exit {:?}: {}", o.status.code(), stderr(&o)));
    }
    let outs: Vec<Array> = if n_out == 1 {
        vec![read_npy(&y).map_err(|e| e.to_string())?]
    } else {
        let m = npz_map(&y);
        if m.len() != n_out {
            return Err(format!(
                "{} arrays in the output npz, expected {n_out}",
                m.len()
            ));
        }
        (0..n_out)
            .map(|j| {
                m.get(&format!("output_{j}"))
                    .cloned()
                    .ok_or(format!("no output_{j}"))
            })
            .collect::<Result<_, _>>()?
    };
    let dtype = case["dtype"].as_str().unwrap();
    let atol = case["atol"].as_f64().unwrap();
    let rtol = if dtype == "float64" { 0.0 } else { 1e-4 };
    let mut worst: f64 = 0.0;
    for (j, got) in outs.iter().enumerate() {
        if got.dtype() != dtype {
            return Err(format!(
                "output {j} has dtype {}, expected {dtype}",
                got.dtype()
            ));
        }
        worst = worst.max(
            compare(got, &data[&key("output", j)], atol, rtol)
                .map_err(|e| format!("output {j}: {e}"))?,
        );
    }
    Ok(worst)
}

#[test]
fn predict_matches_keras_on_every_fixture() {
    let dir = TempDir::new("all");
    let cases = manifest_cases();
    assert!(cases.len() >= 40, "only {} fixture cases", cases.len());
    let (mut checked, mut failures, mut multi_in) = (0, Vec::new(), 0);
    for (k, c) in cases.iter().enumerate() {
        let multi = c["n_inputs"].as_u64().unwrap() > 1;
        multi_in += usize::from(multi);
        for file in c["files"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            // Multi-input models: alternate between repeated --input .npy and one .npz.
            match predict_case(c, file, multi && k % 2 == 0, &dir) {
                Ok(w) => {
                    checked += 1;
                    eprintln!("ok {file:45} max|diff| {w:.2e}");
                }
                Err(e) => failures.push(format!("{file}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        checked + failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 80 && multi_in >= 3,
        "checked {checked} files, {multi_in} multi-input cases"
    );
}

#[test]
fn predict_multi_input_npy_and_npz_agree() {
    let dir = TempDir::new("multi");
    let c = case("rnn_stacked_initial_state");
    assert_eq!(c["n_inputs"], 3);
    for file in [
        "rnn_stacked_initial_state.keras",
        "rnn_stacked_initial_state.h5",
    ] {
        for npz in [false, true] {
            predict_case(&c, file, npz, &dir).unwrap_or_else(|e| panic!("{file} npz={npz}: {e}"));
        }
    }
}

#[test]
fn predict_multi_input_npz_by_layer_name() {
    let dir = TempDir::new("names");
    let data = npz_map(&fixtures().join("init_state_seq_state.npz"));
    let model = fixtures().join("init_state_seq_state.keras");
    let names: Vec<String> = {
        let f = grucell::io::keras::load_keras_file(&model).unwrap();
        let m = grucell::io::keras::load::model_from_file::<f32>(&f).unwrap();
        m.inputs
            .iter()
            .map(|r| m.layers[r.layer].name.clone())
            .collect()
    };
    assert_eq!(names.len(), 2);
    // Stored in reverse order, keyed by input layer name: order must come from the names.
    let x = dir.path("x.npz");
    write_npz(
        &x,
        &[
            (names[1].clone(), (&data["input_1"]).into()),
            (names[0].clone(), (&data["input_0"]).into()),
        ],
    )
    .unwrap();
    let y = dir.path("y.npz");
    let o = grucell(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        x.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = npz_map(&y);
    compare(&out["output_0"], &data["output_0"], 1e-5, 1e-4).unwrap();
    compare(&out["output_1"], &data["output_1"], 1e-5, 1e-4).unwrap();
}

#[test]
fn predict_float64_input_to_float32_model_and_float32_input_to_float64_model() {
    let dir = TempDir::new("dtypes");
    // float64 input to a float32 model: converted, computed and written in float32.
    let data = npz_map(&fixtures().join("seed_gru.npz"));
    let x64 = dir.path("x64.npy");
    write_npy(&x64, &data["input_0"].to_f64()).unwrap();
    let y = dir.path("y.npy");
    let model = fixtures().join("seed_gru.keras");
    let o = grucell(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        x64.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
        "--threads".as_ref(),
        "2".as_ref(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_npy(&y).unwrap();
    assert_eq!(got.dtype(), "float32");
    compare(&got, &data["output_0"], 1e-5, 1e-4).unwrap();

    // float32 input to a float64 model: computed and written in float64.
    let data = npz_map(&fixtures().join("f64_gru_seq.npz"));
    let x32 = dir.path("x32.npy");
    let x32_t: Tensor<f32> = data["input_0"].to_f32();
    write_npy(&x32, &x32_t).unwrap();
    let model = fixtures().join("f64_gru_seq.keras");
    let y = dir.path("y64.npy");
    let o = grucell(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        x32.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_npy(&y).unwrap();
    assert_eq!(got.dtype(), "float64");
    // The input was rounded to float32, so compare loosely with Keras' float64 result.
    compare(&got, &data["output_0"], 1e-6, 0.0).unwrap();
}

#[test]
fn inspect_prints_layers_params_and_metadata() {
    let o = grucell(&[
        "inspect".as_ref(),
        fixtures().join("seed_rnn_cell_state.keras").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "rnn (RNN)",
        "input_layer (InputLayer)",
        "168",
        "(None, 10, 4)",
        "Inputs: 1 (None, 10, 8)",
        "Outputs: 2",
        "Dtype: float32",
        "Keras version: 3.15.1",
        "Compiled: no",
    ] {
        assert!(
            out.contains(needle),
            "inspect output lacks `{needle}`:\n{out}"
        );
    }
    assert!(!out.contains("Optimizer state"), "{out}");

    // A model Keras trained with AMSGrad Adam (GRU + Dense: 5 variables, 3 slots each, plus the
    // iteration and the learning rate), 2 epochs of 4 batches, as .keras and as legacy .h5.
    for ext in ["keras", "h5"] {
        let f = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/resume/adam_amsgrad_trained.{ext}"));
        let o = grucell(&["inspect".as_ref(), f.as_os_str()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("Optimizer state: 17 variables, iteration 8"),
            "{ext}: {out}"
        );
    }
    // A learning-rate schedule is named; its optimizer keeps no learning-rate variable (SGD with
    // momentum on GRU + Dense: the iteration and 5 momentums).
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/resume/schedule_restarts_sgd_trained.keras");
    let o = grucell(&["inspect".as_ref(), f.as_os_str()]);
    let out = stdout(&o);
    for needle in [
        "optimizer SGD (learning_rate schedule CosineDecayRestarts)",
        "Optimizer state: 6 variables, iteration 6",
    ] {
        assert!(
            out.contains(needle),
            "inspect output lacks `{needle}`:\n{out}"
        );
    }

    // Legacy h5, compiled with Adam + mse: GRU(4) on 3 features = 3·12 + 4·12 + 2·12 = 108.
    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io/keras/trained.h5");
    let o = grucell(&["inspect".as_ref(), trained.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "g (GRU)",
        "108",
        "d (Dense)",
        "Total params: 113",
        "optimizer Adam (learning_rate 0.001)",
        "loss mse",
    ] {
        assert!(
            out.contains(needle),
            "inspect output lacks `{needle}`:\n{out}"
        );
    }

    let o = grucell(&[
        "inspect".as_ref(),
        fixtures().join("f64_functional_mask_dense.h5").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "Dtype: float64",
        "Inputs: 2 (None, 8, 3), (None, 4)",
        "gru (GRU)",
        "dense (Dense)",
    ] {
        assert!(
            out.contains(needle),
            "inspect output lacks `{needle}`:\n{out}"
        );
    }
}

/// `predict` arguments for the seed GRU model with the given input and output files.
fn seed_predict(x: &Path, y: &Path) -> Output {
    let model = fixtures().join("seed_gru.keras");
    grucell(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        x.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
    ])
}

#[test]
fn error_missing_files() {
    let dir = TempDir::new("missing");
    let missing = dir.path("no_such_model.keras");
    let o = grucell(&["inspect".as_ref(), missing.as_os_str()]);
    assert_fails_with(&o, &["no_such_model.keras", "no such file"]);

    let y = dir.path("y.npy");
    let o = seed_predict(&dir.path("no_such_input.npy"), &y);
    assert_fails_with(&o, &["no_such_input.npy", "no such file"]);
    assert!(!y.exists(), "an output was written despite the error");
}

#[test]
fn error_wrong_feature_count() {
    let dir = TempDir::new("features");
    let x = dir.path("x.npy");
    write_npy(&x, &Tensor::<f32>::zeros(vec![2, 10, 5])).unwrap();
    let y = dir.path("y.npy");
    let o = seed_predict(&x, &y);
    assert_fails_with(&o, &["5"]);
    let err = stderr(&o);
    assert!(
        err.contains('8') && err.contains("shape"),
        "message does not say what was expected:\n{err}"
    );
    assert!(!y.exists());
}

#[test]
fn error_npy_output_for_multi_output_model() {
    let dir = TempDir::new("multiout");
    let data = npz_map(&fixtures().join("seed_rnn_cell_state.npz"));
    let x = dir.path("x.npy");
    write_array(&x, &data["input_0"]);
    let y = dir.path("y.npy");
    let model = fixtures().join("seed_rnn_cell_state.keras");
    let o = grucell(&[
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        x.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
    ]);
    assert_fails_with(&o, &["2 outputs", ".npz"]);
    assert!(!y.exists());
}

#[test]
fn error_wrong_number_of_inputs_and_missing_npz_array() {
    let dir = TempDir::new("ninputs");
    let data = npz_map(&fixtures().join("init_state_seq_state.npz"));
    let x = dir.path("x.npy");
    write_array(&x, &data["input_0"]);
    let model = fixtures().join("init_state_seq_state.keras");
    let y = dir.path("y.npz");
    let base = [
        "predict".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--output".as_ref(),
        y.as_os_str(),
    ];
    let o = grucell(&[&base[..], &["--input".as_ref(), x.as_os_str()]].concat());
    assert_fails_with(&o, &["2 input", "1 --input"]);

    let xz = dir.path("x.npz");
    write_npz(&xz, &[("input_0".to_string(), (&data["input_0"]).into())]).unwrap();
    let o = grucell(&[&base[..], &["--input".as_ref(), xz.as_os_str()]].concat());
    assert_fails_with(&o, &["x.npz", "input_1", "input_0"]);
    assert!(!y.exists());
}

#[test]
fn error_garbage_and_truncated_model_files() {
    let dir = TempDir::new("garbage");
    let x = dir.path("x.npy");
    write_npy(&x, &Tensor::<f32>::zeros(vec![2, 10, 8])).unwrap();
    let y = dir.path("y.npy");

    let garbage = dir.path("garbage.keras");
    std::fs::write(
        &garbage,
        b"this is not a model at all, just some text\n".repeat(20),
    )
    .unwrap();
    for bytes in [std::fs::read(&garbage).unwrap(), Vec::new()] {
        std::fs::write(&garbage, &bytes).unwrap();
        let o = grucell(&["inspect".as_ref(), garbage.as_os_str()]);
        assert_fails_with(&o, &["garbage.keras"]);
        let o = grucell(&[
            "predict".as_ref(),
            "--model".as_ref(),
            garbage.as_os_str(),
            "--input".as_ref(),
            x.as_os_str(),
            "--output".as_ref(),
            y.as_os_str(),
        ]);
        assert_fails_with(&o, &["garbage.keras"]);
    }

    for (src, name) in [
        ("seed_gru.keras", "truncated.keras"),
        ("seed_gru.h5", "truncated.h5"),
    ] {
        let full = std::fs::read(fixtures().join(src)).unwrap();
        let cut = dir.path(name);
        // (A legacy .h5 cut only in its last bytes can still load: the reader does not compare
        // the superblock's end-of-file address with the file size, as h5py does.)
        let cuts = if name.ends_with(".keras") {
            vec![full.len() / 2, full.len() - 100, 600]
        } else {
            vec![full.len() / 2, 600]
        };
        for keep in cuts {
            std::fs::write(&cut, &full[..keep]).unwrap();
            let o = grucell(&[
                "predict".as_ref(),
                "--model".as_ref(),
                cut.as_os_str(),
                "--input".as_ref(),
                x.as_os_str(),
                "--output".as_ref(),
                y.as_os_str(),
            ]);
            assert_fails_with(&o, &[name]);
        }
    }
    assert!(!y.exists());
}

#[test]
fn error_bad_input_arrays() {
    let dir = TempDir::new("badinput");
    let y = dir.path("y.npy");
    // Not an npy file.
    let x = dir.path("x.npy");
    std::fs::write(&x, b"\x93NUMPY garbage").unwrap();
    assert_fails_with(&seed_predict(&x, &y), &["x.npy"]);
    // An unsupported dtype (float16) is refused, naming the dtype.
    let f16 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io/npy/f16_2.npy");
    assert_fails_with(&seed_predict(&f16, &y), &["f16_2.npy", "float16"]);
    // Neither .npy nor .npz.
    assert_fails_with(
        &seed_predict(&dir.path("x.csv"), &y),
        &["x.csv", ".npy or .npz"],
    );
    assert!(!y.exists());
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["predict", "--model", "m.keras"],
        vec!["frobnicate"],
        vec![],
        vec!["inspect"],
        vec![
            "predict",
            "--model",
            "m.keras",
            "--input",
            "x.npy",
            "--output",
            "y.npy",
            "--threads",
            "0",
        ],
    ] {
        let o = grucell(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let o = grucell(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    for sub in ["predict", "inspect", "demo"] {
        assert!(stdout(&o).contains(sub), "--help does not list {sub}");
    }
}

/// `grucell bench --isa`: a bad name is a clean error naming the flag and what it accepts; a
/// capped run reports the kernels it used in its JSON line.
#[test]
fn bench_isa_flag() {
    let o = grucell(&["bench", "--isa", "sse9", "--sizes", "T1"]);
    assert_fails_with(&o, &["--isa", "sse9", "avx512"]);
    let o = grucell(&[
        "bench",
        "--isa",
        "portable",
        "--json",
        "--sizes",
        "T1",
        "--budget-ms",
        "50",
        "--threads",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["isa"], "portable");
    assert_eq!(line["size"], "T1");
    assert_eq!(line["reset_after"], true);
    assert!(line["forward_ms"].as_f64().unwrap() > 0.0);
}

/// `grucell bench --reset-after false` times Keras' other convention and says so.
#[test]
fn bench_reset_after_flag() {
    let o = grucell(&["bench", "--reset-after", "maybe", "--sizes", "T1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--reset-after"), "{}", stderr(&o));
    let o = grucell(&[
        "bench",
        "--reset-after",
        "false",
        "--json",
        "--sizes",
        "2,3,4,5",
        "--budget-ms",
        "20",
        "--threads",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["reset_after"], false);
    assert_eq!(line["units"], 5);
    assert!(line["train_ms"].as_f64().unwrap() > 0.0);
}

/// A stateful model with a fixed batch size (4) given 8 rows runs them as Keras'
/// `predict(x, batch_size=4)` does: 4 rows, then 4 more from the carried states. The fixture's
/// first two calls (state carried from call 0 to call 1) give the expected outputs; 6 rows (not a
/// multiple of 4) are refused with the batch size named.
#[test]
fn stateful_model_runs_a_multiple_of_its_batch_size_carrying_states() {
    let dir = TempDir::new("stateful_rows");
    let data = npz_map(&fixtures().join("stateful_gru.npz"));
    // Two calls' arrays as one batch: call 0's rows, then call 1's.
    let both = |kind: &str| {
        let (a, b) = (
            data[&format!("call0_{kind}_0")].to_f64(),
            data[&format!("call1_{kind}_0")].to_f64(),
        );
        let mut shape = a.shape().to_vec();
        shape[0] *= 2;
        Tensor::new(shape, [a.data(), b.data()].concat()).unwrap()
    };
    let (xp, yp) = (dir.path("x.npy"), dir.path("y.npy"));
    let predict = |x: &Tensor<f64>| {
        write_npy(&xp, &x.cast::<f32>()).unwrap();
        grucell(&[
            "predict".as_ref(),
            "--model".as_ref(),
            fixtures().join("stateful_gru.keras").as_os_str(),
            "--input".as_ref(),
            xp.as_os_str(),
            "--output".as_ref(),
            yp.as_os_str(),
        ])
    };
    let x = both("input");
    let o = predict(&x);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_npy(&yp).unwrap().to_f64();
    let d = compare(&Array::F64(got), &Array::F64(both("output")), 1e-5, 1e-4).unwrap();
    assert!(d <= 1e-5, "{d}");

    let six = Tensor::new(vec![6, 5, 3], x.data()[..90].to_vec()).unwrap();
    assert_fails_with(&predict(&six), &["[6, 5, 3]", "(4, 5, 3)"]);
}

/// `.npy` bytes of an `int64` array (NumPy's default integer type, what token ids usually are).
fn npy_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    let dims: String = shape.iter().map(|d| format!("{d},")).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    common::npy_raw("<i8", &format!("({dims})"), &bytes)
}

/// An Embedding model (mask_zero → GRU → GRU) on integer token ids, as Keras users hold them:
/// the same outputs as Keras on the float ids of the fixture; an id outside the vocabulary is a
/// clean error naming the layer and its `input_dim`.
#[test]
fn predict_embedding_model_on_integer_token_ids() {
    let dir = TempDir::new("embedding");
    let c = case("embedding_mask_zero");
    let data = npz_map(&fixtures().join(c["data"].as_str().unwrap()));
    let x = data["input_0"].to_f64();
    let ids: Vec<i64> = x.data().iter().map(|v| *v as i64).collect();
    // Whole ids, with padding (0) among them.
    assert!(ids.contains(&0) && x.data().iter().all(|v| v.fract() == 0.0));
    let xp = dir.path("ids.npy");
    std::fs::write(&xp, npy_i64(x.shape(), &ids)).unwrap();
    let model = fixtures().join("embedding_mask_zero.keras");
    let y = dir.path("y.npy");
    let run = |input: &Path| {
        grucell(&[
            "predict".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            y.as_os_str(),
        ])
    };
    let o = run(&xp);
    assert!(o.status.success(), "{}", stderr(&o));
    compare(&read_npy(&y).unwrap(), &data["output_0"], 1e-5, 1e-4).unwrap();

    let mut bad = ids.clone();
    bad[5] = 12; // the vocabulary is 0..12
    std::fs::write(&xp, npy_i64(x.shape(), &bad)).unwrap();
    assert_fails_with(&run(&xp), &["embedding", "flat index 5", "input_dim = 12"]);
}
