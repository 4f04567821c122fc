// TEMPORARY scratch (forecast helper): evaluate the pipeline on CSVs.
use grucell::forecast::csv::read_series;
use grucell::forecast::pipeline::{forecast, ForecastConfig, Progress};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = &a[1];
    let col = a.get(2).map(|s| s.as_str());
    let mut cfg = ForecastConfig::default();
    for kv in a.iter().skip(3) {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "lookback" => cfg.lookback = Some(v.parse().unwrap()),
            "horizon" => cfg.horizon = v.parse().unwrap(),
            "units" => cfg.units = v.parse().unwrap(),
            "epochs" => cfg.epochs = Some(v.parse().unwrap()),
            "season" => cfg.season = Some(v.parse().unwrap()),
            "ens" => cfg.ensemble = v.parse().unwrap(),
            "lr" => cfg.learning_rate = v.parse().unwrap(),
            "seed" => cfg.seed = v.parse().unwrap(),
            "patience" => cfg.patience = v.parse().unwrap(),
            "bs" => cfg.batch_size = v.parse().unwrap(),
            _ => panic!("{k}"),
        }
    }
    let s = read_series(path.as_ref(), col, None).unwrap();
    let t = std::time::Instant::now();
    let out = forecast(&s, &cfg, &|p| if let Progress::Finished { training, epochs_run } = p { eprint!("[{training}:{epochs_run}]") }).unwrap();
    eprintln!();
    let m = &out.metrics;
    println!("{path} n={} L={} h={} season={:?} ({}) rep={} test={:.4} naive={:.4} snaive={:?} ratio={:.3} time={:.1}s", m.points, m.lookback, m.horizon, m.season, m.season_source, m.representation, m.test_rmse, m.naive_rmse, m.seasonal_naive_rmse, m.ratio_to_naive, t.elapsed().as_secs_f64());
    for c in &m.candidates { println!("   {} val={:.4} test={:.4} epochs={:?}", c.representation, c.val_rmse, c.test_rmse, c.epochs_run); }
    println!("   val_naive={:.4}", m.val_naive_rmse);
    if let Ok(d) = std::env::var("OUTDIR") { grucell::forecast::write_outputs(&out, d.as_ref()).unwrap(); }
}
