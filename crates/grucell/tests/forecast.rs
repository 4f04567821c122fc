//! Forecast pipeline: CSV loading of the shipped CO2 series, representation choice, baselines,
//! the merged ensemble, and the files written (the saved model must load back and predict what
//! the pipeline measured).

use grucell::forecast::csv::{parse_series, read_series, Series};
use grucell::forecast::ensemble::merge_members;
use grucell::forecast::pipeline::{build_model, forecast, ForecastConfig, Progress};
use grucell::forecast::series::{fill_gaps, Representation};
use grucell::forecast::write_outputs;
use grucell::Tensor;
use std::sync::Mutex;

const CO2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/co2_weekly_mauna_loa.csv"
);

/// Deterministic noise in [-0.5, 0.5).
fn noise(i: usize) -> f64 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

fn quick() -> ForecastConfig {
    ForecastConfig {
        units: 8,
        ensemble: 1,
        epochs: Some(12),
        ..ForecastConfig::default()
    }
}

fn series(values: impl Iterator<Item = f64>) -> Series {
    Series::from_values("value", values.map(Some).collect())
}

#[test]
fn shipped_co2_series_loads_with_its_gaps() {
    let s = read_series(CO2.as_ref(), Some("co2_ppm"), Some("date")).unwrap();
    assert_eq!(s.len(), 2284);
    assert_eq!(s.missing(), 59);
    assert_eq!(s.dates.as_ref().unwrap()[0], "1958-03-29");
    let (y, first, gaps) = fill_gaps(&s.values).unwrap();
    assert_eq!(first, gaps.dropped_leading);
    assert_eq!(
        gaps.interpolated + gaps.dropped_leading + gaps.dropped_trailing,
        59
    );
    assert!(y.iter().all(|v| (310.0..380.0).contains(v)));
    // 1958-05-10 is empty: interpolated between 1958-05-03 (316.9) and 1958-05-17 (317.5)
    assert!((y[6] - 317.2).abs() < 1e-9, "{}", y[6]);
}

#[test]
fn stationary_cycle_beats_both_baselines_and_finds_its_season() {
    let s = series(
        (0..360).map(|i| 10.0 + 3.0 * (i as f64 * std::f64::consts::TAU / 12.0).sin() + noise(i)),
    );
    let out = forecast(&s, &quick(), &|_| {}).unwrap();
    let m = &out.metrics;
    assert_eq!(m.season, Some(12));
    assert!(m.season_source.starts_with("detected"));
    assert_eq!(m.train_size + m.val_size + m.test_size, 360);
    assert_eq!(m.test_size, 72);
    assert_eq!(m.test_windows, 72);
    assert_eq!(m.lookback, 13);
    assert!(m.test_rmse < 0.8 * m.naive_rmse, "{m:?}");
    assert_eq!(m.candidates.len(), 3);
    assert!(m.seasonal_naive_rmse.is_some());
}

#[test]
fn trending_series_is_not_modelled_as_levels() {
    // Test values lie far above anything seen in training: a levels model cannot reach them.
    let s = series((0..400).map(|i| {
        0.5 * i as f64 + 2.0 * (i as f64 * std::f64::consts::TAU / 10.0).sin() + noise(i)
    }));
    let out = forecast(&s, &quick(), &|_| {}).unwrap();
    let m = &out.metrics;
    assert_ne!(m.representation_detail, Representation::Levels, "{m:?}");
    let levels = m
        .candidates
        .iter()
        .find(|c| c.representation == "levels")
        .unwrap();
    assert!(
        levels.val_rmse
            > 2.0
                * m.candidates
                    .iter()
                    .map(|c| c.val_rmse)
                    .fold(f64::INFINITY, f64::min)
    );
    assert!(m.ratio_to_naive < 1.0, "{m:?}");
}

#[test]
fn multi_step_horizon_and_progress_events() {
    let s = series((0..300).map(|i| (i as f64 * 0.3).sin() * 4.0 + noise(i)));
    let cfg = ForecastConfig {
        horizon: 3,
        lookback: Some(10),
        representations: Some(vec![Representation::Levels, Representation::Differences]),
        ..quick()
    };
    let events = Mutex::new(Vec::new());
    let out = forecast(&s, &cfg, &|p| events.lock().unwrap().push(p)).unwrap();
    let m = &out.metrics;
    assert_eq!(m.horizon, 3);
    assert_eq!(m.test_rmse_by_step.len(), 3);
    assert_eq!(m.test_windows, m.test_size - 2);
    assert_eq!(out.test_inputs.shape(), &[m.test_windows, 10, 1]);
    assert_eq!(out.plot.test_forecasts.len(), 3 * m.test_windows);
    let ev = events.into_inner().unwrap();
    assert!(matches!(
        ev[0],
        Progress::Plan {
            trainings: 2,
            max_epochs: 12
        }
    ));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Progress::Finished { .. }))
            .count(),
        2
    );
    let epochs = ev
        .iter()
        .filter(|e| matches!(e, Progress::Epoch { .. }))
        .count();
    assert_eq!(
        epochs,
        m.candidates
            .iter()
            .map(|c| c.epochs_run.iter().sum::<usize>())
            .sum::<usize>()
    );
}

#[test]
fn too_few_rows_and_bad_options_are_clear_errors() {
    let short = series((0..20).map(|i| i as f64));
    let e = forecast(&short, &quick(), &|_| {}).unwrap_err().to_string();
    assert!(
        e.contains("20 usable values") && e.contains("at least"),
        "{e}"
    );
    let s = series((0..200).map(|i| (i as f64).sin()));
    let e = forecast(
        &s,
        &ForecastConfig {
            lookback: Some(150),
            ..quick()
        },
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lookback 150") && e.contains("--lookback"),
        "{e}"
    );
    let e = forecast(
        &s,
        &ForecastConfig {
            horizon: 0,
            ..quick()
        },
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("horizon"), "{e}");
    let e = parse_series(b"a,b\n1,2\n", "x.csv", Some("c"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("available columns: `a`, `b`"), "{e}");
}

#[test]
fn merged_ensemble_predicts_the_member_mean() {
    let members: Vec<_> = (0..3).map(|s| build_model(7, 2, 5, s).unwrap()).collect();
    let merged = merge_members(&members).unwrap();
    assert_eq!(merged.param_count(), {
        // GRU(15) on 1 feature + Dense(15 -> 2)
        let u = 15;
        3 * u * (1 + u + 2) + u * 2 + 2
    });
    let x = Tensor::new(
        vec![4, 7, 1],
        (0..28).map(|i| noise(i) as f32 * 3.0).collect(),
    )
    .unwrap();
    let want: Vec<f32> = {
        let outs: Vec<Vec<f32>> = members
            .iter()
            .map(|m| {
                m.predict(std::slice::from_ref(&x)).unwrap()[0]
                    .data()
                    .to_vec()
            })
            .collect();
        (0..8)
            .map(|i| outs.iter().map(|o| o[i]).sum::<f32>() / 3.0)
            .collect()
    };
    let got = merged.predict(&[x]).unwrap()[0].data().to_vec();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn outputs_are_written_and_the_saved_model_reproduces_the_forecast() {
    let s = series((0..260).map(|i| {
        50.0 + 0.05 * i as f64
            + 2.0 * (i as f64 * std::f64::consts::TAU / 7.0).cos()
            + 0.5 * noise(i)
    }));
    let cfg = ForecastConfig {
        ensemble: 2,
        ..quick()
    };
    let out = forecast(&s, &cfg, &|_| {}).unwrap();
    let dir = std::env::temp_dir().join(format!("grucell_forecast_test_{}", std::process::id()));
    let files = write_outputs(&out, &dir).unwrap();
    let png = std::fs::read(&files.plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "plot too small to hold the figure: {} bytes",
        png.len()
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.metrics).unwrap()).unwrap();
    for key in [
        "test_rmse",
        "naive_rmse",
        "seasonal_naive_rmse",
        "representation",
        "lookback",
        "horizon",
        "epochs_run",
        "train_size",
        "val_size",
        "test_size",
        "scaler",
        "model_usage",
    ] {
        assert!(metrics.get(key).is_some(), "metrics.json lacks {key}");
    }
    assert_eq!(metrics["ensemble"], 2);
    // The saved model on the saved inputs gives back the measured forecast.
    let model = grucell::io::keras::load::load_model::<f32>(&files.model).unwrap();
    let x = grucell::io::npy::read_npy(&files.test_inputs)
        .unwrap()
        .to_f32();
    assert_eq!(x.shape(), out.test_inputs.shape());
    let y = model.predict(&[x]).unwrap();
    let direct = out
        .model
        .predict(std::slice::from_ref(&out.test_inputs))
        .unwrap();
    assert_eq!(y[0].data(), direct[0].data());
    // Rebuild the levels from the model output as metrics.json describes.
    let scaler = &out.metrics.scaler;
    let rep = out.metrics.representation_detail;
    let (levels, _, _) = fill_gaps(&s.values).unwrap();
    for (i, &t) in out.plot.test_origins.iter().enumerate().take(5) {
        let z = [scaler.unscale(f64::from(y[0].data()[i]))];
        let v = rep.reconstruct(&levels[..=t], t, &z)[0];
        assert!((v - out.plot.test_forecasts[i]).abs() < 1e-9);
    }
    std::fs::remove_dir_all(&dir).ok();
}
