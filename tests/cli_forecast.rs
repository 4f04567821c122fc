//! End-to-end tests of `grucell forecast` and `grucell demo`: the files they write, what they
//! print, and clear errors (exit code 1, one `error: ...` line) for bad CSVs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_grucell");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "grucell-cli-forecast-{}-{tag}-{n}",
            std::process::id()
        ));
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

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A seasonal series with a trend and a few gaps, newest row last.
fn write_csv(path: &Path, rows: usize) {
    let mut s = String::from("month,sales,note\n");
    for i in 0..rows {
        let v = 100.0
            + 0.2 * i as f64
            + 8.0 * (i as f64 * std::f64::consts::TAU / 12.0).sin()
            + ((i * 7919) % 11) as f64 * 0.3;
        let cell = if i % 37 == 5 {
            String::new()
        } else {
            format!("{v:.3}")
        };
        s += &format!("{}-{:02},{cell},x\n", 1990 + i / 12, i % 12 + 1);
    }
    std::fs::write(path, s).unwrap();
}

fn err_line(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let e = text(&o.stderr);
    assert!(!e.contains("panicked"), "{e}");
    let line = e.lines().last().unwrap_or("").to_string();
    assert!(line.starts_with("error: "), "{e}");
    line
}

#[test]
fn forecast_writes_all_outputs_and_reports_baselines() {
    let dir = TempDir::new("ok");
    let csv = dir.path("sales.csv");
    write_csv(&csv, 240);
    let out = dir.path("out");
    let o = run(
        &[
            "forecast",
            "--csv",
            csv.to_str().unwrap(),
            "--column",
            "sales",
            "--date-column",
            "month",
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "3",
            "--units",
            "6",
            "--ensemble",
            "1",
            "--quiet",
        ],
        &dir.0,
    );
    let so = text(&o.stdout);
    assert!(o.status.success(), "{so}\n{}", text(&o.stderr));
    assert!(
        so.contains("missing values: 7 interior filled by linear interpolation"),
        "{so}"
    );
    assert!(so.contains("season: 12 steps (detected"), "{so}");
    assert!(so.contains("last value") && so.contains("lag 12"), "{so}");
    assert!(so.contains("predict --model"), "{so}");
    for f in [
        "metrics.json",
        "forecast.png",
        "model.keras",
        "test_inputs.npy",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["test_size"], 48);
    assert_eq!(m["season"], 12);
    assert!(m["test_rmse"].as_f64().unwrap() > 0.0);
    assert!(m["naive_rmse"].as_f64().unwrap() > 0.0);
    assert!(m["seasonal_naive_rmse"].as_f64().unwrap() > 0.0);
    // The printed command runs the saved model on the saved inputs.
    let cmd = so
        .lines()
        .find(|l| l.contains("predict --model"))
        .unwrap()
        .trim()
        .to_string();
    let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    let p = run(&args, &dir.0);
    assert!(p.status.success(), "{cmd}: {}", text(&p.stderr));
    assert!(out.join("test_predictions.npy").is_file());
}

#[test]
fn bad_csvs_give_clear_errors() {
    let dir = TempDir::new("bad");
    let csv = dir.path("s.csv");
    write_csv(&csv, 240);
    let out = dir.path("out");
    let o = dir.0.clone();
    let base = |col: &str, file: &Path| -> Output {
        run(
            &[
                "forecast",
                "--csv",
                file.to_str().unwrap(),
                "--column",
                col,
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ],
            &o,
        )
    };

    let line = err_line(&base("revenue", &csv));
    assert!(
        line.contains("column `revenue`")
            && line.contains("available columns: `month`, `sales`, `note`"),
        "{line}"
    );

    let line = err_line(&base("note", &csv));
    assert!(
        line.contains("`x` is not a number") && line.contains("row 2"),
        "{line}"
    );

    let empty = dir.path("empty.csv");
    std::fs::write(&empty, "t,v\n1,\n2,NA\n").unwrap();
    let line = err_line(&base("v", &empty));
    assert!(line.contains("no numeric values"), "{line}");

    let short = dir.path("short.csv");
    write_csv(&short, 15);
    let line = err_line(&base("sales", &short));
    assert!(
        line.contains("series length") && line.contains("at least"),
        "{line}"
    );

    let line = err_line(&run(
        &[
            "forecast",
            "--csv",
            csv.to_str().unwrap(),
            "--column",
            "sales",
            "--lookback",
            "200",
            "--quiet",
        ],
        &o,
    ));
    assert!(
        line.contains("lookback 200") && line.contains("--lookback"),
        "{line}"
    );

    let line = err_line(&run(
        &[
            "forecast",
            "--csv",
            dir.path("nope.csv").to_str().unwrap(),
            "--column",
            "v",
        ],
        &o,
    ));
    assert!(line.contains("nope.csv"), "{line}");
}

#[test]
fn demo_prints_the_seed_shapes_and_writes_its_files() {
    let dir = TempDir::new("demo");
    let o = run(&["demo", "--epochs", "1", "--quiet"], &dir.0);
    let so = text(&o.stdout);
    assert!(o.status.success(), "{so}\n{}", text(&o.stderr));
    let shapes: Vec<&str> = so.lines().filter(|l| l.contains("$shape")).collect();
    assert_eq!(shapes.len(), 3, "{so}");
    assert!(
        shapes[0].ends_with("(32, 4)")
            && shapes[1].ends_with("(32, 10, 4)")
            && shapes[2].ends_with("(32, 4)"),
        "{shapes:?}"
    );
    assert!(
        so.contains("59 interior filled by linear interpolation"),
        "{so}"
    );
    assert!(so.contains("same week one year earlier (lag 52)"), "{so}");
    assert!(so.contains("cargo run --release -- predict --model out/demo/model.keras --input out/demo/test_inputs.npy"), "{so}");
    for f in [
        "metrics.json",
        "forecast.png",
        "model.keras",
        "test_inputs.npy",
    ] {
        assert!(dir.0.join("out/demo").join(f).is_file(), "{f} missing");
    }
}
