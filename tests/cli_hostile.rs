//! `grucell predict` on hostile inputs, under a 4 GiB address-space limit (`ulimit -v`): truncated
//! and bit-flipped `.keras` and legacy `.h5` models, configs with absurd or inconsistent units,
//! unknown layers and activations, input arrays of the wrong rank, width or dtype, `.npy` headers
//! claiming 10^17 elements, missing files.
//!
//! Every run must end (a hang detector kills it after [`HANG_LIMIT`]) with exit code 1 (see
//! src/main.rs) and one `error: …` line naming the file or argument at fault — no panic, no
//! abort (an allocation failure under the limit would abort), no backtrace hint. Bit flips that
//! land where nothing is checked (e.g. inside a weight of a legacy `.h5`) may also succeed.
//! Controls: the unmodified models, under the same limit, succeed.
//!
//! Linux only: it relies on `sh` and `ulimit -v`. `GRUCELL_HOSTILE_SHOW=1` prints every run's
//! exit code and message.
#![cfg(target_os = "linux")]

use grucell::io::keras::save::{write_keras_archive, write_weights_h5, VarsGroup, WeightEntry};
use grucell::io::keras::{load_keras_file, KerasWeights};
use grucell::io::npy::{read_npy, read_npz, write_npy, Array};

mod common;
use common::npy_raw;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_grucell");

/// 4 GiB, in the KiB that `ulimit -v` counts.
const ADDRESS_SPACE_KIB: u64 = 4 * 1024 * 1024;

/// A run still going after this long counts as a hang (a generous bound, not a timing test).
const HANG_LIMIT: Duration = Duration::from_secs(60);

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("grucell-hostile-{}-{tag}", std::process::id()));
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

/// What a run left behind.
struct Run {
    status: ExitStatus,
    stderr: String,
    secs: f64,
}

/// Runs `grucell <args>` under the address-space limit, with stdout and stderr in files (so a
/// flood of output cannot block it), killing it if it outlives [`HANG_LIMIT`].
fn run_limited(dir: &TempDir, tag: &str, args: &[String]) -> Run {
    let out = std::fs::File::create(dir.path(&format!("{tag}.stdout"))).unwrap();
    let err_path = dir.path(&format!("{tag}.stderr"));
    let err = std::fs::File::create(&err_path).unwrap();
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit -v {ADDRESS_SPACE_KIB} && exec "$0" "$@""#
        ))
        .arg(BIN)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{tag}: still running after {HANG_LIMIT:?}: grucell {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    }
}

fn predict_args(model: &Path, inputs: &[&Path], output: &Path) -> Vec<String> {
    let mut a = vec![
        "predict".into(),
        "--model".into(),
        model.display().to_string(),
    ];
    for i in inputs {
        a.extend(["--input".into(), i.display().to_string()]);
    }
    a.extend(["--output".into(), output.display().to_string()]);
    a
}

/// Checks a clean failure: exit code 1, one `error: ` line containing every needle
/// (case-insensitive), nothing that betrays a panic, an abort or a backtrace.
fn check_failure(tag: &str, r: &Run, needles: &[String]) -> Result<(), String> {
    let err = &r.stderr;
    if r.status.code() != Some(1) {
        return Err(format!(
            "{tag}: expected exit code 1, got {:?} (a signal means an abort or a kill); stderr:\n{err}",
            r.status
        ));
    }
    check_clean(tag, err)?;
    if !err.starts_with("error: ") || err.trim_end().lines().count() != 1 {
        return Err(format!("{tag}: stderr is not one `error: ` line:\n{err}"));
    }
    for n in needles {
        if !err.to_lowercase().contains(&n.to_lowercase()) {
            return Err(format!("{tag}: stderr lacks `{n}`:\n{err}"));
        }
    }
    Ok(())
}

fn check_clean(tag: &str, err: &str) -> Result<(), String> {
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "internal error",
        "memory allocation",
        "stack overflow",
    ] {
        if err.contains(bad) {
            return Err(format!("{tag}: stderr contains `{bad}`:\n{err}"));
        }
    }
    Ok(())
}

/// Rewrites a `.keras` fixture with its config edited by `edit` (weights unchanged), through
/// grucell's own writer.
fn rewrite_keras(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let f = load_keras_file(src).unwrap();
    let KerasWeights::ByPath(map) = &f.weights else {
        panic!("{}: not a .keras file", src.display())
    };
    let arrays: Vec<(String, usize, Vec<usize>, Vec<f32>)> = map
        .iter()
        .map(|(p, t)| {
            let (group, index) = p.rsplit_once('/').unwrap();
            (
                group.to_string(),
                index.parse().unwrap(),
                t.shape().to_vec(),
                t.data().iter().map(|&x| x as f32).collect(),
            )
        })
        .collect();
    let entries: Vec<WeightEntry> = arrays
        .iter()
        .map(|(group, index, shape, data)| WeightEntry {
            group: group.clone(),
            index: *index,
            shape: shape.clone(),
            data,
        })
        .collect();
    let mut groups: Vec<VarsGroup> = Vec::new();
    for (g, ..) in &arrays {
        if !groups.iter().any(|x| &x.path == g) {
            groups.push(VarsGroup::new(g.clone(), "v"));
        }
    }
    let h5 = write_weights_h5(&groups, &entries).unwrap();
    let mut config = f.model_config.clone();
    if let Some(cc) = &f.compile_config {
        config["compile_config"] = cc.clone();
    }
    edit(&mut config);
    write_keras_archive(dst, &config, &h5).unwrap();
}

/// The GRU layer's config in a Sequential model config.
fn gru_config(config: &mut Value) -> &mut Value {
    let layers = config["config"]["layers"].as_array_mut().unwrap();
    let gru = layers
        .iter_mut()
        .find(|l| l["class_name"] == "GRU")
        .unwrap();
    &mut gru["config"]
}

/// One hostile run: the model, the inputs, and what stderr must mention. `may_succeed`: bit
/// flips that may hit bytes nothing checks.
struct Case {
    tag: String,
    model: PathBuf,
    inputs: Vec<PathBuf>,
    needles: Vec<String>,
    may_succeed: bool,
}

fn base_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn hostile_predict_inputs_fail_cleanly_under_a_memory_limit() {
    let dir = TempDir::new("predict");
    let keras = models().join("seed_gru.keras");
    let h5 = models().join("seed_gru.h5");
    let data: Vec<(String, Array)> = read_npz(&models().join("seed_gru.npz")).unwrap();
    let x = data
        .iter()
        .find(|(k, _)| k == "input_0")
        .unwrap()
        .1
        .to_f32();
    assert_eq!(x.shape(), &[32, 10, 8]);
    let good_x = dir.path("x.npy");
    write_npy(&good_x, &x).unwrap();

    // ---- controls: the unmodified models (and grucell's own rewrite of the .keras) succeed
    let rewritten = dir.path("rewritten.keras");
    rewrite_keras(&keras, &rewritten, |_| {});
    // Integer inputs are converted, as documented (`grucell predict --help`).
    let int_x = dir.path("x_int32.npy");
    let ints: Vec<u8> = (0..32 * 10 * 8)
        .flat_map(|i: i32| (i % 3 - 1).to_le_bytes())
        .collect();
    std::fs::write(&int_x, npy_raw("<i4", "(32, 10, 8)", &ints)).unwrap();
    for (tag, model, input) in [
        ("control_keras", &keras, &good_x),
        ("control_h5", &h5, &good_x),
        ("control_rewritten", &rewritten, &good_x),
        ("control_int_input", &keras, &int_x),
    ] {
        let y = dir.path(&format!("{tag}_y.npy"));
        let r = run_limited(&dir, tag, &predict_args(model, &[input], &y));
        assert!(
            r.status.success(),
            "{tag}: {:?} under the 4 GiB limit: {}",
            r.status,
            r.stderr
        );
        check_clean(tag, &r.stderr).unwrap();
        assert_eq!(read_npy(&y).unwrap().shape(), &[32, 4], "{tag}");
    }

    let mut cases: Vec<Case> = Vec::new();
    let mut model_case = |tag: &str, model: PathBuf, needles: &[&str], may_succeed: bool| {
        let mut needles: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
        needles.push(base_name(&model));
        cases.push(Case {
            tag: tag.into(),
            model,
            inputs: vec![good_x.clone()],
            needles,
            may_succeed,
        });
    };

    // ---- truncated and bit-flipped model files, both formats
    for (src, ext) in [(&keras, "keras"), (&h5, "h5")] {
        let orig = std::fs::read(src).unwrap();
        let n = orig.len();
        for cut in [0, 5, 100, n / 3, n / 2, n - 1000, n - 30, n - 1] {
            let p = dir.path(&format!("trunc_{cut}.{ext}"));
            std::fs::write(&p, &orig[..cut]).unwrap();
            model_case(&format!("truncated {ext} to {cut}"), p, &[], false);
        }
        // Flips spread over the file: inside a .keras entry the CRC catches them.
        for k in 0..24 {
            let mut m = orig.clone();
            let at = (k * 7919 + 3) % n;
            m[at] ^= 1 << (k % 8);
            let p = dir.path(&format!("flip_{at}.{ext}"));
            std::fs::write(&p, &m).unwrap();
            // Zip headers and the central directory hold fields nothing checks (times,
            // attributes), and a legacy .h5 has no checksums: such a flip may load.
            model_case(
                &format!("{ext} bit {} flipped at {at}", k % 8),
                p,
                &[],
                true,
            );
        }
    }
    // The HDF5 signature or superblock damaged.
    let mut sig = std::fs::read(&h5).unwrap();
    sig[1] = b'X';
    let p = dir.path("bad_signature.h5");
    std::fs::write(&p, &sig).unwrap();
    model_case("h5 signature", p, &["signature"], false);
    let mut sb = std::fs::read(&h5).unwrap();
    sb[13] = 3; // size of offsets
    let p = dir.path("bad_superblock.h5");
    std::fs::write(&p, &sb).unwrap();
    model_case("h5 size of offsets", p, &["superblock"], false);

    // ---- configs with absurd or inconsistent values
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit, &[&str])> = vec![
        (
            "units_1e9",
            Box::new(|c| gru_config(c)["units"] = json!(1_000_000_000u64)),
            &["units", "1000000000"],
        ),
        (
            "units_1e12_float",
            Box::new(|c| gru_config(c)["units"] = json!(1e12)),
            &["units"],
        ),
        (
            "units_negative",
            Box::new(|c| gru_config(c)["units"] = json!(-4)),
            &["units", "-4"],
        ),
        (
            "units_vs_weights",
            Box::new(|c| gru_config(c)["units"] = json!(5)),
            &["kernel", "units = 5"],
        ),
        (
            "unknown_layer",
            Box::new(|c| {
                let layers = c["config"]["layers"].as_array_mut().unwrap();
                let gru = layers
                    .iter_mut()
                    .find(|l| l["class_name"] == "GRU")
                    .unwrap();
                gru["class_name"] = json!("ConvLSTM9D");
            }),
            &["ConvLSTM9D", "layer"],
        ),
        (
            "unknown_activation",
            Box::new(|c| gru_config(c)["activation"] = json!("swishy")),
            &["swishy", "activation"],
        ),
        (
            "unknown_model_class",
            Box::new(|c| c["class_name"] = json!("Graph")),
            &["Graph"],
        ),
        (
            "absurd_input_width",
            Box::new(|c| {
                c["config"]["layers"][0]["config"]["batch_shape"] =
                    json!([null, 10, 1_000_000_000_000u64])
            }),
            &["batch_shape"],
        ),
        (
            // A graph op grucell does not run.
            "graph_op",
            Box::new(|c| {
                c["config"]["layers"][1]["module"] = json!("keras.src.ops.numpy");
                c["config"]["layers"][1]["class_name"] = json!("Transpose");
            }),
            &["unsupported operation", "`Transpose`"],
        ),
        (
            "no_layers",
            Box::new(|c| c["config"]["layers"] = json!("none")),
            &["Sequential.layers", "\"none\"", "a list of layers"],
        ),
    ];
    for (tag, edit, needles) in &edits {
        let p = dir.path(&format!("{tag}.keras"));
        rewrite_keras(&keras, &p, edit);
        model_case(tag, p, needles, false);
    }

    // ---- missing and unreadable model files
    model_case(
        "missing model",
        dir.path("nope.keras"),
        &["nope.keras"],
        false,
    );
    let sub = dir.path("a_directory.keras");
    std::fs::create_dir_all(&sub).unwrap();
    model_case("model is a directory", sub, &[], false);
    model_case("model is an array", good_x.clone(), &["signature"], false);

    // ---- hostile input arrays, against the good model
    let mut input_case = |tag: &str, name: &str, bytes: Vec<u8>, needles: &[&str]| {
        let p = dir.path(name);
        std::fs::write(&p, bytes).unwrap();
        let mut needles: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
        needles.push(name.to_string());
        cases.push(Case {
            tag: tag.into(),
            model: keras.clone(),
            inputs: vec![p],
            needles,
            may_succeed: false,
        });
    };
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect()
    };
    input_case(
        "rank 2",
        "x_rank2.npy",
        npy_raw("<f4", "(32, 80)", &f32s(2560)),
        &["shape", "(None, 10, 8)"],
    );
    input_case(
        "rank 4",
        "x_rank4.npy",
        npy_raw("<f4", "(32, 10, 8, 1)", &f32s(2560)),
        &["shape", "(None, 10, 8)"],
    );
    input_case(
        "7 features",
        "x_feat7.npy",
        npy_raw("<f4", "(32, 10, 7)", &f32s(2240)),
        &["shape", "(None, 10, 8)"],
    );
    input_case(
        "float16",
        "x_f16.npy",
        npy_raw("<f2", "(32, 10, 8)", &vec![0; 5120]),
        &["dtype"],
    );
    input_case(
        "complex",
        "x_c8.npy",
        npy_raw("<c8", "(32, 10, 8)", &vec![0; 20480]),
        &["dtype"],
    );
    input_case(
        "strings",
        "x_str.npy",
        npy_raw("<U3", "(32, 10, 8)", &vec![0; 30720]),
        &["dtype"],
    );
    input_case(
        "10^17 elements",
        "x_1e17.npy",
        npy_raw("<f4", "(100000000000000000,)", &f32s(16)),
        &[],
    );
    input_case(
        "10^17 elements 3-d",
        "x_1e17_3d.npy",
        npy_raw("<f4", "(100000000, 1000000000, 1)", &f32s(16)),
        &[],
    );
    input_case(
        "overflowing shape",
        "x_overflow.npy",
        npy_raw("<f8", "(4294967296, 4294967296, 4294967296)", &[0; 64]),
        &[],
    );
    input_case(
        "data cut short",
        "x_short.npy",
        npy_raw("<f4", "(32, 10, 8)", &f32s(100)),
        &[],
    );
    input_case("empty file", "x_empty.npy", Vec::new(), &[]);
    input_case("not npy", "x_text.npy", b"1,2,3\n".to_vec(), &[]);
    let mut nan = f32s(2560);
    nan[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    input_case(
        "NaN input",
        "x_nan.npy",
        npy_raw("<f4", "(32, 10, 8)", &nan),
        &["nan"],
    );
    cases.push(Case {
        tag: "missing input".into(),
        model: keras.clone(),
        inputs: vec![dir.path("absent.npy")],
        needles: vec!["absent.npy".into()],
        may_succeed: false,
    });
    cases.push(Case {
        tag: "two inputs for a one-input model".into(),
        model: keras.clone(),
        inputs: vec![good_x.clone(), good_x.clone()],
        needles: vec!["1 input".into()],
        may_succeed: false,
    });

    // ---- run them all
    let mut failures = Vec::new();
    let (mut failed_cleanly, mut succeeded, mut slowest) = (0, 0, (0.0f64, String::new()));
    for (i, c) in cases.iter().enumerate() {
        let y = dir.path(&format!("y{i}.npy"));
        let inputs: Vec<&Path> = c.inputs.iter().map(PathBuf::as_path).collect();
        let r = run_limited(
            &dir,
            &format!("case{i}"),
            &predict_args(&c.model, &inputs, &y),
        );
        if std::env::var_os("GRUCELL_HOSTILE_SHOW").is_some() {
            eprintln!(
                "{} -> {:?}: {}",
                c.tag,
                r.status.code(),
                r.stderr.trim_end()
            );
        }
        if r.secs > slowest.0 {
            slowest = (r.secs, c.tag.clone());
        }
        if c.may_succeed && r.status.success() {
            succeeded += 1;
            if let Err(e) = check_clean(&c.tag, &r.stderr) {
                failures.push(e);
            }
            continue;
        }
        match check_failure(&c.tag, &r, &c.needles) {
            Ok(()) => failed_cleanly += 1,
            Err(e) => failures.push(e),
        }
        if y.exists() {
            failures.push(format!("{}: failed but wrote {}", c.tag, y.display()));
        }
    }
    eprintln!(
        "{} hostile runs: {failed_cleanly} clean failures, {succeeded} harmless flips; slowest {:.2} s ({})",
        cases.len(),
        slowest.0,
        slowest.1
    );
    assert!(
        failures.is_empty(),
        "{} of {} runs misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    assert!(failed_cleanly >= 60, "only {failed_cleanly} runs failed");
}

/// The limit really applies to the child: a shell under the same wrapper reports it.
#[test]
fn the_address_space_limit_is_applied() {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit -v {ADDRESS_SPACE_KIB} && exec "$0" "$@""#
        ))
        .arg("sh")
        .arg("-c")
        .arg("ulimit -v")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        ADDRESS_SPACE_KIB.to_string()
    );
}

/// A model whose GRU computes in float16 in Keras (`mixed_float16`) still runs, in float32, and
/// `predict` and `inspect` warn that its numbers differ from Keras' by 16-bit round-off.
#[test]
fn a_16_bit_policy_runs_in_float32_with_a_warning() {
    let dir = TempDir::new("mixed16");
    let model = dir.path("mixed.keras");
    rewrite_keras(&models().join("seed_gru.keras"), &model, |c| {
        gru_config(c)["dtype"]["config"]["name"] = Value::String("mixed_float16".into());
    });
    let data: Vec<(String, Array)> = read_npz(&models().join("seed_gru.npz")).unwrap();
    let x = data.iter().find(|(n, _)| n == "input_0").unwrap().1.clone();
    let xp = dir.path("x.npy");
    match &x {
        Array::F32(t) => write_npy(&xp, t).unwrap(),
        Array::F64(t) => write_npy(&xp, t).unwrap(),
    }
    let yp = dir.path("y.npy");
    let args: Vec<String> = [
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        xp.to_str().unwrap(),
        "--output",
        yp.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = run_limited(&dir, "predict", &args);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("mixed_float16") && r.stderr.contains("float32"),
        "{}",
        r.stderr
    );
    let r = run_limited(
        &dir,
        "inspect",
        &["inspect".to_string(), model.to_str().unwrap().to_string()],
    );
    assert!(
        r.status.success() && r.stderr.contains("mixed_float16"),
        "{}",
        r.stderr
    );
}
