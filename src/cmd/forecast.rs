//! `grucell forecast`: train a GRU forecaster on one numeric column of a CSV file and write
//! metrics.json, forecast.png, model.keras and test_inputs.npy.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use grucell::forecast::csv::{read_series, Series};
use grucell::forecast::pipeline::{forecast, ForecastConfig, ForecastOutcome, Progress};
use grucell::forecast::{write_outputs, OutputFiles};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `grucell forecast`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Splits the series chronologically (train 64 %, validation 16 %, test 20 %), fits the scaling on \
the training part, trains small GRUs on levels, differences and (with a season) seasonal differences with early \
stopping on the validation part, keeps the representation with the lowest validation RMSE and averages its \
members into one Keras model. Interior missing values are linearly interpolated; leading/trailing ones are dropped."
)]
pub struct Args {
    /// CSV file: a header row naming the columns, or data from the first row (numbers and dates only; the columns are then `column 1`, `column 2`, …).
    #[arg(long, value_name = "FILE")]
    pub csv: PathBuf,
    /// Numeric column to forecast (default: the only numeric column, a row-number index column aside).
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// Output folder for metrics.json, forecast.png, model.keras, test_inputs.npy.
    #[arg(long, value_name = "DIR", default_value = "out/forecast")]
    pub out: PathBuf,
    /// Column with the dates (used for the plot's axis and to order rows newest-last; default: the first column of dates such as 1958-03-29, 1949-01, Jan-1-1995, 1974Q1, 29.03.1958 or 3/29/1958, else a year column with quarter/month/week/day/hour columns beside it, else a year/t/time/step/period/date/timestamp/... column of whole numbers running up or down, if any).
    #[arg(long, value_name = "C")]
    pub date_column: Option<String>,
    /// Input window length (default: season + 1 for seasons up to 100, else 24; shorter for short series).
    #[arg(long, value_name = "N")]
    pub lookback: Option<usize>,
    /// Steps forecast from each point.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub horizon: usize,
    /// GRU units per ensemble member.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub units: usize,
    /// Maximum epochs per member (default: 30–150 by series length; early stopping usually ends sooner).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Seed for weights and shuffling.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Season length in steps, e.g. 12 for monthly data (default: detected by autocorrelation).
    #[arg(long, value_name = "N")]
    pub season: Option<usize>,
    /// Members averaged into the final model.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub ensemble: usize,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// The pipeline options these arguments select.
    pub fn config(&self) -> ForecastConfig {
        ForecastConfig {
            lookback: self.lookback,
            horizon: self.horizon,
            units: self.units,
            epochs: self.epochs,
            seed: self.seed,
            season: self.season,
            ensemble: self.ensemble,
            ..ForecastConfig::default()
        }
    }
}

/// Runs `grucell forecast`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let series = read_series(
        &args.csv,
        args.column.as_deref(),
        args.date_column.as_deref(),
    )?;
    let (outcome, files) = train_and_write(&series, &args.config(), &args.out, args.quiet)?;
    print_report(&outcome, &files, &Labels::default(), "");
    Ok(())
}

/// Trains with a progress display on stderr (a bar on a terminal, a line per finished training
/// otherwise) and writes the outputs.
pub fn train_and_write(
    series: &Series,
    cfg: &ForecastConfig,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<(ForecastOutcome, OutputFiles)> {
    let tty = std::io::stderr().is_terminal();
    let bar = if quiet || !tty {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{bar:32.cyan/blue}] {pos}/{len} epochs {elapsed_precise} (eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("training");
    let max_epochs = AtomicUsize::new(0);
    let trainings = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let log = Mutex::new(());
    let report = |p: Progress| match p {
        Progress::Plan {
            trainings: t,
            max_epochs: m,
        } => {
            max_epochs.store(m, Ordering::Relaxed);
            trainings.store(t, Ordering::Relaxed);
            bar.set_length((t * m) as u64);
            if !quiet && !tty {
                eprintln!("training {t} GRUs (at most {m} epochs each, early stopping on the validation part)");
            }
        }
        Progress::Epoch {
            representation,
            epoch,
            loss,
            val_loss,
            ..
        } => {
            bar.inc(1);
            bar.set_message(format!(
                "{representation} epoch {epoch}: loss {loss:.4}, val {val_loss:.4}"
            ));
        }
        Progress::Finished {
            epochs_run,
            training,
        } => {
            bar.inc(
                max_epochs
                    .load(Ordering::Relaxed)
                    .saturating_sub(epochs_run) as u64,
            );
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if !quiet && !tty {
                let _guard = log.lock();
                eprintln!(
                    "  [{d}/{}] training {} done after {epochs_run} epochs",
                    trainings.load(Ordering::Relaxed),
                    training + 1
                );
            }
        }
    };
    let outcome = forecast(series, cfg, &report);
    bar.finish_and_clear();
    let outcome = outcome?;
    let files = write_outputs(&outcome, out)
        .with_context(|| format!("writing the results to {}", out.display()))?;
    Ok((outcome, files))
}

/// Words used by [`print_report`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Labels<'a> {
    /// Unit of the values (e.g. `ppm`).
    pub unit: Option<&'a str>,
    /// What one step is (e.g. `week`); `point` when `""`.
    pub step: &'a str,
    /// Name of the seasonal baseline (e.g. `same week one year earlier`).
    pub seasonal: Option<&'a str>,
    /// How to invoke grucell in the printed command; `grucell` when `""`.
    pub command: &'a str,
}

/// Prints the metrics table, the files and how to run the saved model. `indent` prefixes
/// every line.
pub fn print_report(o: &ForecastOutcome, files: &OutputFiles, labels: &Labels, indent: &str) {
    let labels = Labels {
        step: if labels.step.is_empty() {
            "point"
        } else {
            labels.step
        },
        ..*labels
    };
    let m = &o.metrics;
    let unit = |v: f64| format!("{v:.4}");
    let period = match (&o.plot.dates, o.plot.test_start) {
        (Some(d), s) => format!(
            " ({} to {})",
            d.get(s).map_or("?", |x| x.as_str()),
            d.last().map_or("?", |x| x.as_str())
        ),
        _ => String::new(),
    };
    println!(
        "{indent}Series `{}`: {} rows, {} used",
        m.column, m.rows, m.points
    );
    if m.gaps.interpolated + m.gaps.dropped_leading + m.gaps.dropped_trailing > 0 {
        println!(
            "{indent}  missing values: {} interior filled by linear interpolation, {} leading and {} trailing dropped",
            m.gaps.interpolated, m.gaps.dropped_leading, m.gaps.dropped_trailing
        );
    }
    if m.headerless {
        println!("{indent}  no header row: the first row is data, columns are named `column 1`, `column 2`, …");
    }
    if let Some(axis) = &m.time_axis {
        println!("{indent}  dates from {axis}");
    }
    if m.reversed {
        println!("{indent}  rows were newest-first: reversed into chronological order");
    }
    println!(
        "{indent}  split: train {} / validation {} / test {} {}s; lookback {}, horizon {}",
        m.train_size, m.val_size, m.test_size, labels.step, m.lookback, m.horizon
    );
    match m.season {
        Some(s) => println!("{indent}  season: {s} steps ({})", m.season_source),
        None => println!("{indent}  season: none detected"),
    }
    println!(
        "{indent}  representation chosen on the validation part: {} (the lowest RMSE; within {:.0} % of it, differences, then seasonal differences, are preferred to levels)",
        m.representation,
        100.0 * grucell::forecast::pipeline::TIE
    );
    for c in &m.candidates {
        println!(
            "{indent}    {:<28} validation RMSE {}  epochs {:?}",
            c.representation,
            unit(c.val_rmse),
            c.epochs_run
        );
    }
    println!(
        "{indent}    {:<28} validation RMSE {}",
        "(last value)",
        unit(m.val_naive_rmse)
    );
    let steps = if m.horizon == 1 {
        format!("one {} ahead", labels.step)
    } else {
        format!("1 to {} {}s ahead", m.horizon, labels.step)
    };
    let u = labels.unit.map_or(String::new(), |u| format!(" {u}"));
    println!();
    println!(
        "{indent}Test RMSE on the last {} {}s{period}, {steps}:",
        m.test_size, labels.step
    );
    let row =
        |name: String, v: f64, note: String| println!("{indent}  {name:<46} {v:>10.4}{u}{note}");
    row(
        format!("GRU ({}, {} averaged)", m.representation, m.ensemble),
        m.test_rmse,
        String::new(),
    );
    row(
        "last value".into(),
        m.naive_rmse,
        format!("   GRU / last value = {:.2}", m.ratio_to_naive),
    );
    if let (Some(s), Some(r), Some(season)) =
        (m.seasonal_naive_rmse, m.ratio_to_seasonal_naive, m.season)
    {
        let name = labels.seasonal.map_or_else(
            || format!("same point one season earlier (lag {season})"),
            |l| format!("{l} (lag {season})"),
        );
        row(name, s, format!("   GRU / seasonal  = {r:.2}"));
    }
    println!();
    println!("{indent}Wrote {}", files.plot.display());
    println!("{indent}      {}", files.metrics.display());
    println!("{indent}      {}  (Keras Sequential GRU -> Dense, input: scaled windows, see metrics.json model_usage)", files.model.display());
    println!(
        "{indent}      {}  (the model inputs of the test windows)",
        files.test_inputs.display()
    );
    println!("{indent}Run the saved model on them:");
    println!(
        "{indent}  {}",
        predict_command(
            if labels.command.is_empty() {
                "grucell"
            } else {
                labels.command
            },
            files
        )
    );
}

/// The one-line command that runs the saved model on the saved test inputs (`grucell` is how
/// grucell is invoked, e.g. `cargo run --release --`).
pub fn predict_command(grucell: &str, files: &OutputFiles) -> String {
    let out = files.test_inputs.with_file_name("test_predictions.npy");
    format!(
        "{grucell} predict --model {} --input {} --output {}",
        files.model.display(),
        files.test_inputs.display(),
        out.display()
    )
}
