//! The forecasting pipeline: gaps → chronological split → season → candidate representations
//! → a few small GRUs per representation (early stopping on the validation part) → the
//! representation with the lowest validation RMSE (in the series' units) → its members merged
//! into one Keras model → test RMSE next to the last-value and seasonal-naive baselines.
//!
//! Split (chronological): the last `test_fraction` (20 %) of the points is the test part; the
//! last `validation_fraction` (20 %) of the rest is the validation part (early stopping and
//! the choice of representation); the first part fits the weights and the scaling. A window
//! belongs to the part that holds its *targets*; its inputs may reach back into earlier parts
//! (they are past observations at forecast time).
//!
//! Why several representations: a GRU on raw levels cannot forecast values outside the range
//! it was trained on, so trending series need differences; on stationary cyclic series levels
//! win. Seasonal differences (`y[t] − y[t−s]`) give the network the value one season back
//! without a season-long window. The validation part decides, and `metrics.json` says which.
//! Averaging a few seeds (merged exactly into one GRU, see [`super::ensemble`]) makes the result
//! much less dependent on one initialization.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Error};
use crate::forecast::baseline::{last_value, seasonal_naive};
use crate::forecast::csv::Series;
use crate::forecast::ensemble::merge_members;
use crate::forecast::metrics::{mae, rmse, rmse_by_step};
use crate::forecast::series::{
    detect_season, fill_gaps, windows, GapReport, Representation, Scaler,
};
use crate::layers::dense::DenseConfig;
use crate::layers::model::{Layer, Model};
use crate::tensor::Tensor;
use crate::train::fit::{FitConfig, Progress as FitProgress};
use crate::train::loss::Loss;
use crate::train::optimizer::{Optimizer, OptimizerConfig};
use crate::{GruCellConfig, Rnn, RnnKind};

/// Options of [`forecast`]. `None` fields are chosen from the data (see each field).
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastConfig {
    /// Input window length. Default: one season + 1 when a season of at most 100 is known
    /// (so the window holds the value one season back), else 24; shortened for short series.
    pub lookback: Option<usize>,
    /// Steps forecast from each origin (default 1).
    pub horizon: usize,
    /// GRU units of each ensemble member (default 32).
    pub units: usize,
    /// Maximum epochs per member (default: chosen from the series length, 30–150); early
    /// stopping usually ends sooner.
    pub epochs: Option<usize>,
    /// Seed of weights and shuffling (default 0). Member `m` uses `seed + m`.
    pub seed: u64,
    /// Season length in steps; `None` detects it from the autocorrelation of the differenced
    /// training part.
    pub season: Option<usize>,
    /// Candidate representations; `None`: levels, differences and (with a season) seasonal
    /// differences.
    pub representations: Option<Vec<Representation>>,
    /// Members per representation, averaged into the final model (default 3).
    pub ensemble: usize,
    /// Mini-batch size (default 32).
    pub batch_size: usize,
    /// Adam learning rate (default 0.003).
    pub learning_rate: f64,
    /// Epochs without validation improvement before stopping (default 8).
    pub patience: usize,
    /// Fraction of the points held out for the test (default 0.2).
    pub test_fraction: f64,
    /// Fraction of the training part used for validation (default 0.2).
    pub validation_fraction: f64,
    /// At most this many (most recent) training windows are used (default 8000).
    pub max_train_windows: usize,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            lookback: None,
            horizon: 1,
            units: 32,
            epochs: None,
            seed: 0,
            season: None,
            representations: None,
            ensemble: 3,
            batch_size: 32,
            learning_rate: 0.003,
            patience: 8,
            test_fraction: 0.2,
            validation_fraction: 0.2,
            max_train_windows: 8000,
        }
    }
}

/// Progress of [`forecast`], for a progress bar. Trainings run in parallel, so events of
/// different trainings interleave.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Sent once before training: `trainings × max_epochs` epochs at most.
    Plan {
        /// Number of GRUs to train.
        trainings: usize,
        /// Epoch limit of each.
        max_epochs: usize,
    },
    /// One epoch of one training finished.
    Epoch {
        /// Which training (0-based).
        training: usize,
        /// Its representation's name.
        representation: String,
        /// 1-based epoch.
        epoch: usize,
        /// Mean training loss (scaled MSE).
        loss: f64,
        /// Validation loss (scaled MSE).
        val_loss: f64,
    },
    /// A training ended (possibly early).
    Finished {
        /// Which training.
        training: usize,
        /// Epochs it ran.
        epochs_run: usize,
    },
}

/// Per-epoch losses of one trained member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainHistory {
    /// Mean training loss of each epoch (scaled MSE).
    pub loss: Vec<f64>,
    /// Validation loss after each epoch (scaled MSE).
    pub val_loss: Vec<f64>,
    /// 1-based epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    /// True when early stopping ended the training before the epoch limit.
    pub stopped_early: bool,
}

/// How one candidate representation did on the validation part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    /// Representation name.
    pub representation: String,
    /// RMSE (series units) of its members' mean forecast on the validation windows.
    pub val_rmse: f64,
    /// RMSE of its members' mean forecast on the test windows (reported for comparison
    /// only; the choice uses the validation RMSE).
    pub test_rmse: f64,
    /// Epochs run by each member.
    pub epochs_run: Vec<usize>,
}

/// Everything `metrics.json` records: results, baselines, sizes and how to reproduce the
/// model's input and turn its output back into values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastMetrics {
    /// Value column.
    pub column: String,
    /// Rows read (missing ones included).
    pub rows: usize,
    /// What the gap handling did.
    pub gaps: GapReport,
    /// Where the dates came from (``column `date` ``, ``columns `year` + `quarter` ``); `None`
    /// when the file has no time axis grucell found or was given.
    #[serde(default)]
    pub time_axis: Option<String>,
    /// True when the rows were reversed into chronological order.
    pub reversed: bool,
    /// True when the file had no header row (columns named `column 1`, `column 2`, …).
    #[serde(default)]
    pub headerless: bool,
    /// Points used after gap handling.
    pub points: usize,
    /// Points in the part that fits weights and scaling.
    pub train_size: usize,
    /// Points in the validation part.
    pub val_size: usize,
    /// Points in the test part.
    pub test_size: usize,
    /// Training windows used.
    pub train_windows: usize,
    /// Validation windows.
    pub val_windows: usize,
    /// Test windows (forecast origins).
    pub test_windows: usize,
    /// Input window length.
    pub lookback: usize,
    /// Steps forecast from each origin.
    pub horizon: usize,
    /// Season length used by the seasonal baseline and representation (if any).
    pub season: Option<usize>,
    /// `given`, `detected (autocorrelation 0.63)` or `none`.
    pub season_source: String,
    /// The chosen representation's name.
    pub representation: String,
    /// The chosen representation.
    pub representation_detail: Representation,
    /// Scaling of the representation (fitted on the training part): model input and output
    /// are `(z − mean) / std`.
    pub scaler: Scaler,
    /// Validation results of every candidate.
    pub candidates: Vec<CandidateReport>,
    /// Last-value RMSE on the validation windows.
    pub val_naive_rmse: f64,
    /// RMSE of the model on the test windows (all horizon steps).
    pub test_rmse: f64,
    /// MAE of the model on the test windows.
    pub test_mae: f64,
    /// RMSE of each horizon step.
    pub test_rmse_by_step: Vec<f64>,
    /// RMSE of the last-value forecast on the same windows.
    pub naive_rmse: f64,
    /// RMSE of the seasonal naive forecast (one season earlier) on the same windows.
    pub seasonal_naive_rmse: Option<f64>,
    /// `test_rmse / naive_rmse`.
    pub ratio_to_naive: f64,
    /// `test_rmse / seasonal_naive_rmse`.
    pub ratio_to_seasonal_naive: Option<f64>,
    /// Largest number of epochs run by a member of the chosen representation.
    pub epochs_run: usize,
    /// Epoch limit per member.
    pub max_epochs: usize,
    /// GRU units per member.
    pub units: usize,
    /// Members averaged into the saved model (its GRU has `units × ensemble` units).
    pub ensemble: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed.
    pub seed: u64,
    /// Wall-clock seconds spent training.
    pub training_seconds: f64,
    /// How to use the saved model.
    pub model_usage: String,
}

/// What the plot needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotData {
    /// Series name.
    pub name: String,
    /// The levels after gap handling.
    pub values: Vec<f64>,
    /// Date labels aligned with `values`, if a date column was given.
    pub dates: Option<Vec<String>>,
    /// First index of the validation part.
    pub val_start: usize,
    /// First index of the test part.
    pub test_start: usize,
    /// Test forecast origins.
    pub test_origins: Vec<usize>,
    /// Model forecasts, `horizon` per origin (row-major).
    pub test_forecasts: Vec<f64>,
    /// Forecast horizon.
    pub horizon: usize,
    /// Training histories of the chosen representation's members.
    pub histories: Vec<TrainHistory>,
    /// Chosen representation name.
    pub representation: String,
    /// Season length, if any.
    pub season: Option<usize>,
    /// Test RMSE, last-value RMSE and seasonal-naive RMSE, for the title.
    pub rmse: (f64, f64, Option<f64>),
}

/// The result of [`forecast`].
#[derive(Clone, Debug)]
pub struct ForecastOutcome {
    /// Metrics, sizes and settings (`metrics.json`).
    pub metrics: ForecastMetrics,
    /// The saved model: `Sequential(GRU(units × ensemble), Dense(horizon))` on scaled windows.
    pub model: Model<f32>,
    /// The model inputs of the test windows, `(test_windows, lookback, 1)`.
    pub test_inputs: Tensor<f32>,
    /// Data for [`super::plot::draw_forecast`].
    pub plot: PlotData,
}

/// The data of one candidate representation.
struct Candidate {
    rep: Representation,
    scaler: Scaler,
    zs: Vec<f64>,
    /// Training windows `(N, lookback, 1)` and targets `(N, horizon)`.
    fit_x: Tensor<f32>,
    fit_y: Tensor<f32>,
    /// Validation windows and targets.
    val_x: Tensor<f32>,
    val_y: Tensor<f32>,
    val_origins: Vec<usize>,
}

/// Builds the `GRU(units) → Dense(horizon)` model that every member starts from.
pub fn build_model(
    lookback: usize,
    horizon: usize,
    units: usize,
    seed: u64,
) -> Result<Model<f32>, Error> {
    let gru = Rnn::new(GruCellConfig::new(units).seed(Some(seed)), 1)?
        .with_kind(RnnKind::Gru)?
        .name("gru");
    let dense = DenseConfig::new(horizon).build(units, seed)?;
    Model::sequential(
        "gru_forecaster",
        vec![Some(lookback), Some(1)],
        vec![
            ("gru".into(), Layer::Rnn(gru)),
            ("dense".into(), Layer::Dense(dense)),
        ],
    )
}

/// Runs the model over windows `x` (flattened `(N, lookback, 1)`) in chunks; returns `(N, h)`
/// flattened.
fn predict_windows(model: &Model<f32>, x: &[f32], lookback: usize) -> Result<Vec<f32>, Error> {
    let mut out = Vec::new();
    for chunk in x.chunks(4096 * lookback.max(1)) {
        let n = chunk.len() / lookback.max(1);
        let y = model.predict(&[Tensor::new(vec![n, lookback, 1], chunk.to_vec())?])?;
        if let Some(y) = y.into_iter().next() {
            out.extend(y.into_data());
        }
    }
    Ok(out)
}

/// Trains one member with Adam ([`Model::fit`], one epoch at a time) and early stopping on the
/// validation loss, keeping the best weights (Keras' `EarlyStopping(patience,
/// restore_best_weights=True)`).
#[allow(clippy::too_many_arguments)]
fn train_member(
    c: &Candidate,
    cfg: &ForecastConfig,
    lookback: usize,
    seed: u64,
    max_epochs: usize,
    training: usize,
    report: &(dyn Fn(Progress) + Sync),
) -> Result<(Model<f32>, TrainHistory), Error> {
    let h = cfg.horizon;
    let mut model = build_model(lookback, h, cfg.units, seed)?;
    model.set_threads(1);
    let sizes: Vec<usize> = model
        .trainable_variables()
        .iter()
        .map(|(_, s)| s.iter().product())
        .collect();
    let mut opt_cfg = OptimizerConfig::adam(cfg.learning_rate);
    opt_cfg.global_clipnorm = Some(1.0);
    let mut opt = Optimizer::new(opt_cfg, &sizes)?;
    let loss = Loss::MeanSquaredError;
    let mut best: Option<(f64, Model<f32>, usize)> = None;
    let mut hist = TrainHistory::default();
    let mut since_best = 0;
    for epoch in 1..=max_epochs {
        // One epoch of Keras' fit (shuffled mini-batches); the validation loss (a forward pass
        // in large batches, cheaper than `evaluate`'s loss-and-gradients) and early stopping
        // with the best weights kept are done here, so that progress can be reported after
        // every epoch.
        let fit_cfg = FitConfig {
            batch_size: cfg.batch_size.max(1),
            epochs: 1,
            shuffle: true,
            seed: Some(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(epoch as u64),
            ),
            progress: FitProgress::Never,
            ..FitConfig::default()
        };
        let epoch_hist = model.fit(
            std::slice::from_ref(&c.fit_x),
            std::slice::from_ref(&c.fit_y),
            &loss,
            &mut opt,
            &fit_cfg,
            None,
        )?;
        let train_loss = epoch_hist.loss.first().copied().unwrap_or(f64::NAN);
        let val_pred = predict_windows(&model, c.val_x.data(), lookback)?;
        let val_loss = f64::from(loss.value(c.val_y.data(), &val_pred, c.val_y.shape(), None)?);
        hist.loss.push(train_loss);
        hist.val_loss.push(val_loss);
        report(Progress::Epoch {
            training,
            representation: c.rep.name(),
            epoch,
            loss: train_loss,
            val_loss,
        });
        let improved = best
            .as_ref()
            .is_none_or(|(b, _, _)| val_loss < b * (1.0 - 1e-4));
        if improved {
            best = Some((val_loss, model.clone(), epoch));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                hist.stopped_early = true;
                break;
            }
        }
    }
    report(Progress::Finished {
        training,
        epochs_run: hist.loss.len(),
    });
    match best {
        Some((_, m, e)) => {
            hist.best_epoch = e;
            Ok((m, hist))
        }
        None => Ok((model, hist)),
    }
}

/// Fewest training windows a representation needs.
const MIN_FIT_WINDOWS: usize = 16;

/// Relative margin within which validation RMSEs count as a tie: among the representations
/// within it of the lowest, differences are chosen first, then seasonal differences, then
/// levels.
pub const TIE: f64 = 0.05;

/// The candidate with the lowest validation RMSE; within [`TIE`] of it, differences are
/// preferred to seasonal differences and those to levels, because a model of changes degrades
/// gracefully (towards the last value) when the test leaves the range seen in training, and a
/// model of levels does not.
fn choose(reps: &[Representation], reports: &[CandidateReport]) -> usize {
    let best = reports
        .iter()
        .map(|r| r.val_rmse)
        .filter(|v| v.is_finite())
        .fold(f64::INFINITY, f64::min);
    let rank = |r: &Representation| match r {
        Representation::Differences => 0,
        Representation::SeasonalDifferences { .. } => 1,
        Representation::Levels => 2,
    };
    (0..reports.len())
        .filter(|&i| reports[i].val_rmse.is_finite() && reports[i].val_rmse <= best * (1.0 + TIE))
        .min_by(|&a, &b| {
            rank(&reps[a])
                .cmp(&rank(&reps[b]))
                .then(reports[a].val_rmse.total_cmp(&reports[b].val_rmse))
        })
        .unwrap_or(0)
}

/// Levels forecast for each origin from the model's scaled outputs.
fn to_levels(
    rep: Representation,
    scaler: &Scaler,
    y: &[f64],
    origins: &[usize],
    out: &[f32],
    h: usize,
) -> Vec<f64> {
    let mut levels = Vec::with_capacity(origins.len() * h);
    for (i, &t) in origins.iter().enumerate() {
        let z: Vec<f64> = out
            .get(i * h..(i + 1) * h)
            .unwrap_or(&[])
            .iter()
            .map(|v| scaler.unscale(f64::from(*v)))
            .collect();
        levels.extend(rep.reconstruct(&y[..=t.min(y.len().saturating_sub(1))], t, &z));
    }
    levels
}

fn actuals(y: &[f64], origins: &[usize], h: usize) -> Vec<f64> {
    origins
        .iter()
        .flat_map(|&t| (1..=h).map(move |k| y.get(t + k).copied().unwrap_or(f64::NAN)))
        .collect()
}

/// Trains and evaluates a GRU forecaster on `series` (see the module documentation).
///
/// ```
/// use grucell::forecast::csv::Series;
/// use grucell::forecast::pipeline::{forecast, ForecastConfig};
/// // a noisy cycle: the model must beat repeating the last value
/// let values: Vec<Option<f64>> = (0..300)
///     .map(|i| Some((i as f64 * std::f64::consts::TAU / 12.0).sin() * 5.0 + ((i * 7919) % 13) as f64 * 0.1))
///     .collect();
/// let cfg = ForecastConfig { epochs: Some(20), ensemble: 1, units: 8, ..ForecastConfig::default() };
/// let out = forecast(&Series::from_values("v", values), &cfg, &|_| {})?;
/// assert!(out.metrics.test_rmse < out.metrics.naive_rmse);
/// assert_eq!(out.metrics.season, Some(12));
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn forecast(
    series: &Series,
    cfg: &ForecastConfig,
    report: &(dyn Fn(Progress) + Sync),
) -> Result<ForecastOutcome, Error> {
    let started = std::time::Instant::now();
    let h = cfg.horizon;
    if h == 0 {
        return Err(ConfigError::invalid("horizon", 0, "at least 1").into());
    }
    if cfg.units == 0 || cfg.ensemble == 0 || cfg.batch_size == 0 {
        return Err(ConfigError::invalid(
            "units/ensemble/batch_size",
            format!("{}/{}/{}", cfg.units, cfg.ensemble, cfg.batch_size),
            "positive integers",
        )
        .into());
    }
    if !(0.0..0.9).contains(&cfg.test_fraction)
        || !(0.0..0.9).contains(&cfg.validation_fraction)
        || cfg.test_fraction <= 0.0
        || cfg.validation_fraction <= 0.0
    {
        return Err(ConfigError::invalid(
            "test/validation fraction",
            format!("{}/{}", cfg.test_fraction, cfg.validation_fraction),
            "in (0, 0.9)",
        )
        .into());
    }
    let (y, first, gaps) = fill_gaps(&series.values)?;
    let n = y.len();
    let dates = series
        .dates
        .as_ref()
        .map(|d| d.iter().skip(first).take(n).cloned().collect::<Vec<_>>());
    let n_test = ((n as f64 * cfg.test_fraction).round() as usize).max(h);
    let n_train = n.saturating_sub(n_test);
    let n_val = ((n_train as f64 * cfg.validation_fraction).round() as usize).max(h);
    let n_fit = n_train.saturating_sub(n_val);
    let too_few = |need: String| -> Error {
        ConfigError::invalid(
            "series length",
            format!(
                "{n} usable values in column `{}` (after gap handling)",
                series.name
            ),
            need,
        )
        .into()
    };
    // At least MIN_FIT_WINDOWS training windows with a lookback of 2, after the split.
    let rows_for = |fit_points: usize| {
        ((fit_points as f64) / ((1.0 - cfg.test_fraction) * (1.0 - cfg.validation_fraction))).ceil()
            as usize
            + 1
    };
    let min_fit = (h + 1 + MIN_FIT_WINDOWS).max(2 * h + 8);
    if n_fit < min_fit {
        return Err(too_few(format!("at least {} values for horizon {h} (train/validation/test split with {MIN_FIT_WINDOWS} training windows)", rows_for(min_fit))));
    }
    // Season: given, or detected on the part that fits the weights.
    let (season, season_source) = match cfg.season {
        Some(s) if s >= 2 => (Some(s), "given".to_string()),
        Some(s) => return Err(ConfigError::invalid("season", s, "at least 2").into()),
        None => match detect_season(&y[..n_fit], (n_fit / 3).min(400)) {
            Some((s, a)) => (Some(s), format!("detected (autocorrelation {a:.2})")),
            None => (None, "none".to_string()),
        },
    };
    // Lookback: one season + 1 (holds the value one season back), else 24; shortened so that
    // at least ~60 % of the fitting part makes windows.
    let lookback = match cfg.lookback {
        Some(0) => return Err(ConfigError::invalid("lookback", 0, "at least 1").into()),
        Some(l) => {
            if n_fit < l + h + MIN_FIT_WINDOWS - 1 {
                return Err(too_few(format!(
                    "at least {} values for lookback {l} and horizon {h} ({MIN_FIT_WINDOWS} training windows after the train/validation/test split); use a smaller --lookback",
                    rows_for(l + h + MIN_FIT_WINDOWS - 1)
                )));
            }
            l
        }
        None => {
            let want = match season {
                Some(s) if s <= 100 => s + 1,
                _ => 24,
            };
            want.min(n_fit * 2 / 5)
                .min(n_fit + 1 - h - MIN_FIT_WINDOWS)
                .max(2)
        }
    };
    // Candidates.
    let reps: Vec<Representation> = match &cfg.representations {
        Some(r) if !r.is_empty() => r.clone(),
        _ => {
            let mut r = vec![Representation::Levels, Representation::Differences];
            if let Some(s) = season {
                r.push(Representation::SeasonalDifferences { season: s });
            }
            r
        }
    };
    let fit_origins_all = |o: usize| -> Vec<usize> {
        let lo = o + lookback - 1;
        let hi = n_fit.saturating_sub(h + 1); // t + h ≤ n_fit − 1
        if hi < lo {
            return vec![];
        }
        let mut v: Vec<usize> = (lo..=hi).collect();
        if v.len() > cfg.max_train_windows {
            v.drain(..v.len() - cfg.max_train_windows);
        }
        v
    };
    let val_origins: Vec<usize> = ((n_fit - 1)..=(n_train - 1 - h)).collect();
    let test_origins: Vec<usize> = ((n_train - 1)..=(n - 1 - h)).collect();
    let mut candidates = Vec::new();
    for rep in reps {
        let o = rep.offset();
        let fo = fit_origins_all(o);
        if fo.len() < MIN_FIT_WINDOWS || val_origins.first().is_some_and(|&t| t + 1 < o + lookback)
        {
            continue;
        }
        let z = rep.transform(&y);
        let scaler = Scaler::fit(&z[o..n_fit]);
        let zs: Vec<f64> = z.iter().map(|v| scaler.scale(*v)).collect();
        let (fit_x, fit_y, fk) = windows(&zs, &fo, lookback, h);
        let (val_x, val_y, vo) = windows(&zs, &val_origins, lookback, h);
        let (nf, nv) = (fk.len(), vo.len());
        candidates.push(Candidate {
            rep,
            scaler,
            zs,
            fit_x: Tensor::new(vec![nf, lookback, 1], fit_x)?,
            fit_y: Tensor::new(vec![nf, h], fit_y)?,
            val_x: Tensor::new(vec![nv, lookback, 1], val_x)?,
            val_y: Tensor::new(vec![nv, h], val_y)?,
            val_origins: vo,
        });
    }
    if candidates.is_empty() {
        return Err(too_few(format!("more values for lookback {lookback} and horizon {h} (no representation has {MIN_FIT_WINDOWS} training windows)")));
    }
    let fit_windows = candidates
        .iter()
        .map(|c| c.fit_y.shape()[0])
        .max()
        .unwrap_or(0);
    let max_epochs = cfg
        .epochs
        .unwrap_or_else(|| (60_000 / fit_windows.max(1)).clamp(30, 150));
    if max_epochs == 0 {
        return Err(ConfigError::invalid("epochs", 0, "at least 1").into());
    }
    let jobs: Vec<(usize, usize)> = (0..candidates.len())
        .flat_map(|c| (0..cfg.ensemble).map(move |m| (c, m)))
        .collect();
    report(Progress::Plan {
        trainings: jobs.len(),
        max_epochs,
    });
    let trained: Vec<(Model<f32>, TrainHistory)> = jobs
        .par_iter()
        .enumerate()
        .map(|(i, &(c, m))| {
            train_member(
                &candidates[c],
                cfg,
                lookback,
                cfg.seed.wrapping_add(m as u64),
                max_epochs,
                i,
                report,
            )
        })
        .collect::<Result<_, Error>>()?;
    let training_seconds = started.elapsed().as_secs_f64();
    // Validation (and, for the report, test) RMSE in the series' units of each candidate's
    // member mean.
    let mut reports = Vec::new();
    let mut outputs = Vec::new();
    for (ci, c) in candidates.iter().enumerate() {
        let members: Vec<&(Model<f32>, TrainHistory)> = jobs
            .iter()
            .zip(&trained)
            .filter(|((jc, _), _)| *jc == ci)
            .map(|(_, t)| t)
            .collect();
        let (test_x, _, test_kept) = windows(&c.zs, &test_origins, lookback, h);
        let mean = |x: &[f32], len: usize| -> Result<Vec<f32>, Error> {
            let mut acc = vec![0f32; len];
            for (m, _) in &members {
                for (a, v) in acc.iter_mut().zip(predict_windows(m, x, lookback)?) {
                    *a += v / members.len() as f32;
                }
            }
            Ok(acc)
        };
        let val_pred = to_levels(
            c.rep,
            &c.scaler,
            &y,
            &c.val_origins,
            &mean(c.val_x.data(), c.val_y.len())?,
            h,
        );
        let val_rmse = rmse(&actuals(&y, &c.val_origins, h), &val_pred);
        let test_pred = to_levels(
            c.rep,
            &c.scaler,
            &y,
            &test_kept,
            &mean(&test_x, test_kept.len() * h)?,
            h,
        );
        let test_rmse = rmse(&actuals(&y, &test_kept, h), &test_pred);
        reports.push(CandidateReport {
            representation: c.rep.name(),
            val_rmse,
            test_rmse,
            epochs_run: members.iter().map(|(_, hh)| hh.loss.len()).collect(),
        });
        outputs.push((test_x, test_kept));
    }
    let chosen = choose(
        &candidates.iter().map(|c| c.rep).collect::<Vec<_>>(),
        &reports,
    );
    let c = &candidates[chosen];
    let members: Vec<Model<f32>> = jobs
        .iter()
        .zip(&trained)
        .filter(|((jc, _), _)| *jc == chosen)
        .map(|(_, (m, _))| m.clone())
        .collect();
    let histories: Vec<TrainHistory> = jobs
        .iter()
        .zip(&trained)
        .filter(|((jc, _), _)| *jc == chosen)
        .map(|(_, (_, hh))| hh.clone())
        .collect();
    let model = merge_members(&members)?;
    // Test, with the merged model (the one that is saved).
    let (test_x, test_kept) = outputs.swap_remove(chosen);
    let test_out = predict_windows(&model, &test_x, lookback)?;
    let pred = to_levels(c.rep, &c.scaler, &y, &test_kept, &test_out, h);
    let act = actuals(&y, &test_kept, h);
    let naive: Vec<f64> = test_kept
        .iter()
        .flat_map(|&t| last_value(&y, t, h))
        .collect();
    let snaive: Option<Vec<f64>> = season.map(|s| {
        test_kept
            .iter()
            .flat_map(|&t| seasonal_naive(&y, t, h, s))
            .collect()
    });
    let val_act = actuals(&y, &val_origins, h);
    let val_naive: Vec<f64> = val_origins
        .iter()
        .flat_map(|&t| last_value(&y, t, h))
        .collect();
    let test_rmse = rmse(&act, &pred);
    let naive_rmse = rmse(&act, &naive);
    let seasonal_naive_rmse = snaive.as_ref().map(|p| rmse(&act, p));
    let rep_name = c.rep.name();
    let usage = format!(
        "model.keras maps (batch, {lookback}, 1) float32 windows to (batch, {h}). Input: the last {lookback} values of z = {}, each scaled as (z - {:.6}) / {:.6}. \
Output: the next {h} values of z, scaled the same way: unscale (v * std + mean), then rebuild values: {}. test_inputs.npy holds the inputs of the {} test windows in order.",
        match c.rep {
            Representation::Levels => "y (the values themselves)".to_string(),
            Representation::Differences => "y[t] - y[t-1]".to_string(),
            Representation::SeasonalDifferences { season } => format!("y[t] - y[t-{season}]"),
        },
        c.scaler.mean,
        c.scaler.std,
        match c.rep {
            Representation::Levels => "the unscaled outputs are the values".to_string(),
            Representation::Differences => "y[t+k] = y[t] + cumulative sum of the first k outputs".to_string(),
            Representation::SeasonalDifferences { season } => format!("y[t+k] = output_k + y[t+k-{season}]"),
        },
        test_kept.len()
    );
    let metrics = ForecastMetrics {
        column: series.name.clone(),
        rows: series.values.len(),
        gaps,
        time_axis: series.time_axis.clone(),
        reversed: series.reversed,
        headerless: series.headerless,
        points: n,
        train_size: n_fit,
        val_size: n_train - n_fit,
        test_size: n - n_train,
        train_windows: c.fit_y.shape()[0],
        val_windows: c.val_origins.len(),
        test_windows: test_kept.len(),
        lookback,
        horizon: h,
        season,
        season_source,
        representation: rep_name.clone(),
        representation_detail: c.rep,
        scaler: c.scaler,
        candidates: reports,
        val_naive_rmse: rmse(&val_act, &val_naive),
        test_rmse,
        test_mae: mae(&act, &pred),
        test_rmse_by_step: rmse_by_step(&act, &pred, h),
        naive_rmse,
        seasonal_naive_rmse,
        ratio_to_naive: test_rmse / naive_rmse,
        ratio_to_seasonal_naive: seasonal_naive_rmse.map(|s| test_rmse / s),
        epochs_run: histories.iter().map(|hh| hh.loss.len()).max().unwrap_or(0),
        max_epochs,
        units: cfg.units,
        ensemble: members.len(),
        batch_size: cfg.batch_size,
        learning_rate: cfg.learning_rate,
        seed: cfg.seed,
        training_seconds,
        model_usage: usage,
    };
    let n_test_windows = test_kept.len();
    let plot = PlotData {
        name: series.name.clone(),
        values: y,
        dates,
        val_start: n_fit,
        test_start: n_train,
        test_origins: test_kept,
        test_forecasts: pred,
        horizon: h,
        histories,
        representation: rep_name,
        season,
        rmse: (test_rmse, naive_rmse, seasonal_naive_rmse),
    };
    Ok(ForecastOutcome {
        metrics,
        model,
        test_inputs: Tensor::new(vec![n_test_windows, lookback, 1], test_x)?,
        plot,
    })
}
