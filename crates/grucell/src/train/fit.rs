//! Keras' training loop: [`Model::fit`] (epochs of mini-batches, validation, early stopping,
//! history, progress bar) and [`Model::evaluate`], as Keras 3.15.1's `fit`/`evaluate` run them on
//! in-memory arrays.
//!
//! What is reproduced exactly (checked against Keras runs in `tests/fixtures/fit/`):
//! - `validation_split = s` keeps the **last** `n − ⌊n·(1 − s)⌋` samples for validation, taken
//!   before any shuffling (Keras' `train_validation_split`); it is ignored when validation data
//!   is given, as in Keras;
//! - batches of `batch_size` in order, the last partial batch included; one optimizer step each
//!   ([`Model::train_on_batch`]);
//! - the epoch `loss` is Keras' loss tracker: the batch losses (regularization included) averaged
//!   with the batch sizes as weights, accumulated in the model's float type (Keras' `Mean` metric
//!   in `floatx`); `val_loss` is [`Model::evaluate`] on the validation data after the epoch;
//! - [`EarlyStopping`] is a port of `keras.callbacks.EarlyStopping` with `baseline = None` and
//!   `start_from_epoch = 0`, including its quirks: the improvement test runs in float32 (Keras
//!   compares with `ops.less` on Python floats), the first epoch never stops training, and the
//!   best weights are restored at the end of training whether it stopped early or not;
//! - stateful layers carry their states from each batch to the next, through the validation
//!   batches after each epoch and from one epoch into the next, with no reset (Keras assigns a
//!   stateful RNN's states in every call, training or not; its `fit` never resets them); the
//!   states are not weights, so restoring the best weights leaves them as they are. Every
//!   batch then needs the same size, as in Keras;
//! - `sample_weight` (shaped like the loss terms) multiplies each term, in training and in the
//!   validation split, which keeps its samples' weights; given validation data has its own
//!   (`validation_sample_weight`, Keras' `validation_data=(x, y, sample_weight)`);
//! - `class_weight` gives each training sample the weight of its class (Keras'
//!   `class_weight_to_sample_weights`: the target rounded half to even, or its arg-max when it is
//!   one-hot); the validation data stays unweighted;
//! - Keras' epoch options: `initial_epoch` (epochs `initial_epoch..epochs` run, numbered so),
//!   `steps_per_epoch` (a pass over the samples runs on across epochs and an epoch ends where
//!   its pass ends, as Keras' epoch iterator runs arrays), `validation_freq` (every n-th epoch
//!   or listed epochs; early stopping skips the others), `validation_steps` (the first batches
//!   only) and `validation_batch_size`;
//! - after the last epoch, the optimizer's `finalize_variable_values` (with `use_ema` the weights
//!   take their moving averages, [`Optimizer::finalize_variable_values`]), then early stopping's
//!   restore, in Keras' order.
//!
//! What differs: with `shuffle = true` the per-epoch permutation comes from a seeded [`StdRng`]
//! (TensorFlow's shuffle cannot be reproduced), and so do dropout masks. A non-finite loss or
//! gradient stops training with [`TrainError::NonFinite`] naming the epoch and batch (Keras would
//! carry on with NaN weights); the weights are then those from before that batch (a stateful
//! layer's states are those that batch's forward ended with, as in Keras).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::error::{ConfigError, Error, ShapeError, TrainError};
use crate::float::Float;
use crate::layers::model::{Layer, Model, ModelLayer};
use crate::tensor::Tensor;
use crate::train::loss::Loss;
use crate::train::metrics::{Metric, MetricFn, MetricSet, MetricValue};
use crate::train::optimizer::{Optimizer, OptimizerConfig};

/// `m` when it can be computed on an output of shape `shape` (where the config gives it): the
/// metrics Keras builds for `(batch, columns)` outputs only (the F-scores, R², multi-label AUC)
/// need rank 2, as Keras fails on others; a `class_id` or `top_k` beyond the last axis fails in
/// Keras.
fn fits_output(m: Metric, shape: Option<&Vec<Option<usize>>>) -> Result<Metric, ConfigError> {
    let Some(s) = shape else {
        return Ok(m);
    };
    let two_d = matches!(
        m.function,
        MetricFn::FBeta { .. }
            | MetricFn::R2Score { .. }
            | MetricFn::Auc {
                multi_label: true,
                ..
            }
    );
    if two_d && s.len() != 2 {
        return Err(ConfigError::unsupported(
            "metric",
            format!(
                "`{}` on an output of rank {} (Keras takes it for (batch, columns) outputs only)",
                m.name,
                s.len()
            ),
        ));
    }
    if let Some(Some(d)) = s.last() {
        // Keras fails on a column or a top-k the last axis does not have.
        if let Some((key, v)) = m.function.selection().beyond(*d) {
            return Err(ConfigError::unsupported(
                "metric",
                format!("`{}` with {key} {v} on an output of {d} columns", m.name),
            ));
        }
    }
    Ok(m)
}

/// Mixed into the seed for the dropout stream, so that it differs from the shuffle stream.
const DROPOUT_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;

/// Validation inputs and targets for [`Model::fit`]: one array per model input, one per output.
pub type ValidationData<'a, T> = (&'a [Tensor<T>], &'a [Tensor<T>]);

/// What [`Model::evaluate_with_metrics`] returns: Keras' `evaluate(..., return_dict=True)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The loss, as [`Model::evaluate`] gives it.
    pub loss: f64,
    /// Each output's loss (`"<output>_loss"`, several outputs only), then each metric's value,
    /// under their Keras names, in Keras' order; metrics with one value per class are in
    /// `class_metrics` instead.
    pub metrics: Vec<(String, f64)>,
    /// The metrics whose value is one number per class or column (see
    /// [`MetricValue::PerClass`]), under their Keras names, in Keras' order.
    pub class_metrics: Vec<(String, Vec<f64>)>,
}

/// What [`Model::compiled_metrics`] finds in a compile config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledMetrics {
    /// `metrics`, unweighted.
    pub metrics: Vec<Metric>,
    /// `weighted_metrics`.
    pub weighted_metrics: Vec<Metric>,
    /// A message for each listed metric that grucell does not compute.
    pub unsupported: Vec<String>,
}

/// How an evaluation walks its samples.
#[derive(Clone, Copy)]
struct Batches<'a, T> {
    /// Flat weights, one per loss term (per sample, or per sample and step).
    sample_weight: Option<&'a [T]>,
    batch_size: usize,
    /// At most this many batches (Keras' `steps`).
    steps: Option<usize>,
}

impl<T> Batches<'_, T> {
    /// Every sample, unweighted, in batches of `batch_size`.
    fn all(batch_size: usize) -> Self {
        Batches {
            sample_weight: None,
            batch_size,
            steps: None,
        }
    }
}

/// The value [`EarlyStopping`] watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// The training loss of the epoch (`"loss"`).
    Loss,
    /// The validation loss after the epoch (`"val_loss"`, Keras' default); needs validation data.
    ValLoss,
}

impl Monitor {
    /// The Keras log key: `"loss"` or `"val_loss"`.
    pub fn keras_name(&self) -> &'static str {
        match self {
            Monitor::Loss => "loss",
            Monitor::ValLoss => "val_loss",
        }
    }
}

/// `keras.callbacks.EarlyStopping(monitor, min_delta, patience, restore_best_weights)` with
/// `mode = "min"` (what `"auto"` picks for losses), no baseline and `start_from_epoch = 0`.
///
/// After each epoch: an epoch improves when `monitored + |min_delta| < best` (in float32);
/// training stops once `patience` epochs in a row did not improve, never after the first epoch.
/// With `restore_best_weights`, the weights of the best epoch are put back at the end of
/// training (even when it did not stop early).
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// The watched value (Keras default `val_loss`).
    pub monitor: Monitor,
    /// Epochs without improvement before stopping (Keras default 0).
    pub patience: usize,
    /// Smallest change that counts as an improvement; its sign is ignored (Keras default 0).
    pub min_delta: f64,
    /// Put the best epoch's weights back at the end (Keras default false).
    pub restore_best_weights: bool,
}

impl Default for EarlyStopping {
    /// Keras' defaults: `val_loss`, patience 0, min_delta 0, no restoring.
    fn default() -> Self {
        EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 0,
            min_delta: 0.0,
            restore_best_weights: false,
        }
    }
}

/// When [`Model::fit`] shows its progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar per epoch and a summary line per epoch, only when stderr is a terminal.
    Auto,
    /// Nothing.
    Never,
    /// A summary line per epoch always; the bar itself only where stderr is a terminal.
    Always,
}

/// Options of [`Model::fit`], Keras' `fit` arguments (defaults as Keras).
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    /// Samples per optimizer step (Keras default 32); the last batch may be smaller.
    pub batch_size: usize,
    /// Number of passes over the training data (Keras default 1).
    pub epochs: usize,
    /// Reorder the training samples at the start of every epoch (Keras default true).
    pub shuffle: bool,
    /// Seed of the shuffling and dropout random streams; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Fraction in `[0, 1)` of the samples, taken from the end, held out for validation
    /// (Keras default 0: none). Ignored when validation data is passed.
    pub validation_split: f64,
    /// Stop training when the monitored loss stops improving.
    pub early_stopping: Option<EarlyStopping>,
    /// Progress display on stderr.
    pub progress: Progress,
    /// Zero the stateful layers' states at the start of every epoch, as a Keras callback that
    /// calls each stateful layer's `reset_state()` (TF-Keras 2: `model.reset_states()`) in
    /// `on_epoch_begin` does (Keras' `fit` itself never resets them; default false).
    pub reset_states_each_epoch: bool,
    /// Keras' `sample_weight`, shaped like the loss terms: `(N,)` (a weight per sample) for
    /// outputs `(N, C)`, `(N, T)` (a weight per step) for sequence outputs. The validation split
    /// keeps its samples' weights, as Keras splits them; given validation data takes
    /// `validation_sample_weight`. `None`: every term weighs 1.
    pub sample_weight: Option<Tensor<f64>>,
    /// Keras' `class_weight`: a weight per class index; each training sample weighs as its
    /// class, and classes not listed weigh 1. The class of a sample is its target rounded half to
    /// even (targets `(N,)` or `(N, 1)`) or the index of its largest entry (one-hot targets
    /// `(N, C)`), as Keras' `class_weight_to_sample_weights` finds it. Single-output models only,
    /// not together with `sample_weight`; the validation data is not weighted (Keras applies it
    /// to the training batches only).
    pub class_weight: Option<BTreeMap<i64, f64>>,
    /// Weights of the validation data passed to [`Model::fit`], shaped like its loss terms as
    /// `sample_weight` is (Keras' `validation_data=(x_val, y_val, val_sample_weight)`). Needs
    /// validation data; `None`: unweighted.
    pub validation_sample_weight: Option<Tensor<f64>>,
    /// Keras' `initial_epoch`: the 0-based epoch to start at, so that epochs `initial_epoch + 1`
    /// to `epochs` run (numbered as Keras numbers them, which early stopping's "never after the
    /// first epoch" rule and [`History::epoch`] follow). Resumes an earlier run's count; the
    /// optimizer keeps its own step count either way. Default 0.
    pub initial_epoch: usize,
    /// Keras' `steps_per_epoch`: at most this many batches per epoch. A pass over the training
    /// samples then runs on across epochs (its batches in order, reshuffled only when a new pass
    /// starts), and an epoch ends early where the pass ends, as Keras' epoch iterator does on
    /// in-memory arrays. `None` (Keras' default): one whole pass per epoch.
    pub steps_per_epoch: Option<usize>,
    /// Keras' `validation_steps`: validate on the first this-many validation batches only
    /// (`None`: all of them, Keras' default).
    pub validation_steps: Option<usize>,
    /// Keras' `validation_batch_size` (`None`: `batch_size`, Keras' default). The validation
    /// loss is the size-weighted mean of the batch losses either way, so only round-off (and
    /// stateful layers, which need every batch of their size) can tell them apart.
    pub validation_batch_size: Option<usize>,
    /// Keras' `validation_freq`: the epochs after which the validation data is evaluated
    /// (default: every epoch).
    pub validation_freq: ValidationFreq,
    /// Keras' compiled `metrics` ([`Model::compiled_metrics`]): computed on each training
    /// batch's outputs (those its loss saw, before its update) and on the validation data,
    /// without the sample or class weights (an output mask still applies), as Keras does.
    /// Each applies to its [`Metric::output`]. Reported in [`History::metrics`].
    pub metrics: Vec<Metric>,
    /// Keras' `weighted_metrics`: as `metrics`, weighted by the sample (or class) weights.
    pub weighted_metrics: Vec<Metric>,
}

/// When [`Model::fit`] evaluates the validation data: Keras' `validation_freq`, an integer or
/// a list of epochs.
///
/// ```
/// use grucell::train::fit::ValidationFreq;
/// // Keras validation_freq=2: after epochs 2, 4, 6, …
/// assert!(!ValidationFreq::Every(2).is_due(1) && ValidationFreq::Every(2).is_due(2));
/// // Keras validation_freq=[1, 5]
/// let listed = ValidationFreq::Epochs([1, 5].into());
/// assert!(listed.is_due(5) && !listed.is_due(4));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidationFreq {
    /// After every `n`-th epoch (1-based epochs `n`, `2n`, …); `n ≥ 1`.
    Every(usize),
    /// After the listed 1-based epochs only.
    Epochs(BTreeSet<usize>),
}

impl Default for ValidationFreq {
    /// Keras' default, `validation_freq=1`: after every epoch.
    fn default() -> Self {
        ValidationFreq::Every(1)
    }
}

impl ValidationFreq {
    /// Whether validation runs after the 1-based `epoch` (Keras' `_should_eval`).
    pub fn is_due(&self, epoch: usize) -> bool {
        match self {
            ValidationFreq::Every(n) => *n > 0 && epoch.is_multiple_of(*n),
            ValidationFreq::Epochs(e) => e.contains(&epoch),
        }
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            batch_size: 32,
            epochs: 1,
            shuffle: true,
            seed: None,
            validation_split: 0.0,
            early_stopping: None,
            progress: Progress::Auto,
            reset_states_each_epoch: false,
            sample_weight: None,
            class_weight: None,
            validation_sample_weight: None,
            initial_epoch: 0,
            steps_per_epoch: None,
            validation_steps: None,
            validation_batch_size: None,
            validation_freq: ValidationFreq::default(),
            metrics: Vec::new(),
            weighted_metrics: Vec::new(),
        }
    }
}

impl FitConfig {
    /// Checks the options: `batch_size ≥ 1`, `validation_split` in `[0, 1)`, finite class
    /// weights, not both class and sample weights, a finite `min_delta`, and counts of at
    /// least 1 for the step and batch options and `validation_freq`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", 0, "an integer ≥ 1"));
        }
        for (name, v) in [
            ("steps_per_epoch", self.steps_per_epoch),
            ("validation_steps", self.validation_steps),
            ("validation_batch_size", self.validation_batch_size),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(name, 0, "an integer ≥ 1, or none"));
            }
        }
        match &self.validation_freq {
            ValidationFreq::Every(0) => {
                return Err(ConfigError::invalid(
                    "validation_freq",
                    0,
                    "an integer ≥ 1 (validate every n-th epoch) or a list of epochs",
                ))
            }
            ValidationFreq::Epochs(e) if e.contains(&0) => {
                return Err(ConfigError::invalid(
                    "validation_freq",
                    format!("{e:?}"),
                    "1-based epochs (0 is never reached)",
                ))
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return Err(ConfigError::invalid(
                "validation_split",
                self.validation_split,
                "a number in [0, 1)",
            ));
        }
        if let Some((k, w)) = self
            .class_weight
            .iter()
            .flatten()
            .find(|(_, w)| !w.is_finite())
        {
            return Err(ConfigError::invalid(
                format!("class_weight[{k}]"),
                w,
                "a finite weight",
            ));
        }
        if self.class_weight.is_some() && self.sample_weight.is_some() {
            return Err(ConfigError::invalid(
                "class_weight",
                "given with sample_weight",
                "one of class_weight and sample_weight, not both (Keras refuses both at once)",
            ));
        }
        if let Some(es) = &self.early_stopping {
            if !es.min_delta.is_finite() {
                return Err(ConfigError::invalid(
                    "early_stopping.min_delta",
                    es.min_delta,
                    "a finite number",
                ));
            }
        }
        Ok(())
    }
}

/// What [`Model::fit`] returns: Keras' `History.history` plus how training ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The 0-based index of each epoch run (Keras' `History.epoch`): `initial_epoch`,
    /// `initial_epoch + 1`, …
    pub epoch: Vec<usize>,
    /// Training loss of each epoch run.
    pub loss: Vec<f64>,
    /// Validation loss of each epoch after which validation ran (Keras' `history["val_loss"]`;
    /// empty without validation data). Without `validation_freq` that is every epoch run.
    pub val_loss: Vec<f64>,
    /// The 0-based index of the epoch of each entry of `val_loss`.
    pub val_epoch: Vec<usize>,
    /// Per epoch run, under its Keras log name: for a model with several outputs each output's
    /// loss (`"<output>_loss"`, without penalties, the mean over the epoch's batches), then each
    /// compiled metric (`"mae"`, `"accuracy"`, …), in Keras' order.
    pub metrics: Vec<(String, Vec<f64>)>,
    /// The same on the validation data (`"val_a_loss"`, `"val_mae"`, …), aligned with
    /// `val_loss`.
    pub val_metrics: Vec<(String, Vec<f64>)>,
    /// Per epoch run, the metrics whose value is one number per class or column (see
    /// [`MetricValue::PerClass`]): Keras logs them under their names like the others.
    pub class_metrics: Vec<(String, Vec<Vec<f64>>)>,
    /// The same on the validation data, aligned with `val_loss`.
    pub val_class_metrics: Vec<(String, Vec<Vec<f64>>)>,
    /// Number of epochs run.
    pub epochs_run: usize,
    /// Whether early stopping ended training before `epochs`.
    pub stopped_early: bool,
    /// With early stopping: the 1-based epoch with the best monitored value (whose weights were
    /// restored when `restore_best_weights`); `None` without early stopping or without a
    /// monitored value (no epoch run, or none validated).
    pub best_epoch: Option<usize>,
}

impl History {
    /// The history as a table: a header `epoch loss [metrics…] [val_loss val_metrics…]` (each
    /// group's per-class metrics after its other metrics), then one line per epoch run, with its
    /// 1-based number; a per-class value is a list `[a, b, …]`, and the validation fields are
    /// empty after an epoch not validated.
    pub fn table(&self) -> String {
        let with_val = !self.val_loss.is_empty();
        let mut s = String::from("epoch\tloss");
        let names = |m: &[(String, Vec<f64>)], c: &[(String, Vec<Vec<f64>>)]| {
            let m = m.iter().map(|(n, _)| n.clone());
            m.chain(c.iter().map(|(n, _)| n.clone()))
                .collect::<Vec<_>>()
        };
        for name in names(&self.metrics, &self.class_metrics) {
            s.push_str(&format!("\t{name}"));
        }
        if with_val {
            s.push_str("\tval_loss");
            for name in names(&self.val_metrics, &self.val_class_metrics) {
                s.push_str(&format!("\t{name}"));
            }
        }
        s.push('\n');
        // The `i`-th entry of each column, as `MetricValue` prints it (empty where there is none).
        let cells = |i: Option<usize>, m: &[(String, Vec<f64>)], c: &[(String, Vec<Vec<f64>>)]| {
            let m = m.iter().map(move |(_, v)| {
                i.and_then(|i| v.get(i))
                    .map(|v| MetricValue::Scalar(*v).to_string())
            });
            let c = c.iter().map(move |(_, v)| {
                i.and_then(|i| v.get(i))
                    .map(|v| MetricValue::PerClass(v.clone()).to_string())
            });
            m.chain(c)
                .map(Option::unwrap_or_default)
                .collect::<Vec<_>>()
        };
        for (i, (&e, l)) in self.epoch.iter().zip(&self.loss).enumerate() {
            s.push_str(&format!("{}\t{l}", e + 1));
            for cell in cells(Some(i), &self.metrics, &self.class_metrics) {
                s.push('\t');
                s.push_str(&cell);
            }
            if with_val {
                let at = self.val_epoch.iter().position(|&ve| ve == e);
                s.push('\t');
                if let Some(v) = at.and_then(|j| self.val_loss.get(j)) {
                    s.push_str(&v.to_string());
                }
                for cell in cells(at, &self.val_metrics, &self.val_class_metrics) {
                    s.push('\t');
                    s.push_str(&cell);
                }
            }
            s.push('\n');
        }
        s
    }
}

/// The `compile_config` Keras 3.15.1 writes for `model.compile(optimizer, loss)` with the other
/// arguments at their defaults (`metrics` none, `steps_per_execution` 1, `jit_compile` false as
/// `"auto"` resolves on CPU). Set it as [`Model::compile_config`] to save what `fit` used.
pub fn keras_compile_config(loss: &Loss, optimizer: &OptimizerConfig) -> Value {
    json!({
        "optimizer": optimizer.to_keras(),
        "loss": loss.to_keras(),
        "loss_weights": null,
        "metrics": null,
        "weighted_metrics": null,
        "run_eagerly": false,
        "steps_per_execution": 1,
        "jit_compile": false,
    })
}

/// Keras' `EarlyStopping` state, ported line by line (`on_train_begin` is [`Stopper::new`]).
struct Stopper<T> {
    cfg: EarlyStopping,
    wait: usize,
    best: Option<f64>,
    best_epoch: usize,
    best_weights: Option<Vec<ModelLayer<T>>>,
}

impl<T: Float> Stopper<T> {
    fn new(cfg: EarlyStopping) -> Self {
        Stopper {
            cfg,
            wait: 0,
            best: None,
            best_epoch: 0,
            best_weights: None,
        }
    }

    /// `_is_improvement` with `monitor_op = ops.less` and `min_delta` negated: Keras subtracts
    /// in Python floats, then `ops.less` compares the two as float32 tensors.
    fn is_improvement(&self, current: f64) -> bool {
        match self.best {
            None => true,
            Some(best) => ((current + self.cfg.min_delta.abs()) as f32) < (best as f32),
        }
    }

    /// `on_epoch_end` (0-based `epoch`); true when training must stop.
    fn on_epoch_end(&mut self, epoch: usize, current: f64, layers: &[ModelLayer<T>]) -> bool {
        if self.cfg.restore_best_weights && self.best_weights.is_none() {
            self.best_weights = Some(layers.to_vec());
            self.best_epoch = epoch;
        }
        self.wait += 1;
        if self.is_improvement(current) {
            self.best = Some(current);
            self.best_epoch = epoch;
            if self.cfg.restore_best_weights {
                self.best_weights = Some(layers.to_vec());
            }
            self.wait = 0;
            return false;
        }
        self.wait >= self.cfg.patience && epoch > 0
    }
}

/// Leading (sample) dimension shared by every array of `x` and `y`, at least 1.
fn sample_count<T: Float>(
    x: &[Tensor<T>],
    y: &[Tensor<T>],
    xname: &str,
    yname: &str,
) -> Result<usize, Error> {
    let mut n = None;
    let named = x
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{xname}[{i}]"), t))
        .chain(
            y.iter()
                .enumerate()
                .map(|(i, t)| (format!("{yname}[{i}]"), t)),
        );
    for (name, t) in named {
        let Some(&m) = t.shape().first() else {
            return Err(
                ShapeError::mismatch(name, t.shape(), "(samples, …): at least one axis").into(),
            );
        };
        match n {
            None => n = Some(m),
            Some(k) if k != m => {
                return Err(ShapeError::mismatch(
                    name,
                    t.shape(),
                    format!("{k} samples on axis 0, as the first array of {xname}"),
                )
                .into())
            }
            Some(_) => {}
        }
    }
    match n {
        Some(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::invalid(xname, "no samples", "at least one sample").into()),
    }
}

/// Sample weights `w` (argument `arg`) of `n` samples (`what`): `(n,)` or `(n, steps)`, finite,
/// as the model's float type, with the number of weights per sample.
fn sample_weights<T: Float>(
    w: &Tensor<f64>,
    n: usize,
    arg: &str,
    what: &str,
) -> Result<(Vec<T>, usize), Error> {
    if w.shape().first() != Some(&n) || w.shape().len() > 2 {
        return Err(ShapeError::mismatch(
            arg,
            w.shape(),
            format!("({n},) or ({n}, steps): the loss terms of the {n} {what}"),
        )
        .into());
    }
    w.check_finite(arg)?;
    let per = w.len().checked_div(n).unwrap_or(0);
    Ok((w.data().iter().map(|&v| T::of(v)).collect(), per))
}

/// Keras' `class_weight_to_sample_weights`: the weight of each sample's class, 1 for classes
/// `class_weight` does not list. A sample's class is its target rounded half to even (NumPy's
/// `round`) for targets `(N,)` or `(N, 1)`, the index of the first largest entry for one-hot
/// targets `(N, C)`; either must leave one class per sample, as Keras needs.
///
/// [`Model::fit`] applies it with [`FitConfig::class_weight`]; for Keras'
/// `train_on_batch(x, y, class_weight=…)`, pass its result to [`Model::train_on_batch_weighted`].
///
/// ```
/// use grucell::train::fit::class_sample_weights;
/// use grucell::Tensor;
/// let cw = [(0, 0.5), (2, 3.0)].into();
/// let labels = Tensor::new(vec![4], vec![0.0f32, 1.0, 2.0, 2.5])?; // 2.5 rounds to 2
/// assert_eq!(class_sample_weights(&labels, &cw)?, [0.5, 1.0, 3.0, 3.0]);
/// let one_hot = Tensor::new(vec![2, 3], vec![0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0])?;
/// assert_eq!(class_sample_weights(&one_hot, &cw)?, [3.0, 0.5]);
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn class_sample_weights<T: Float>(
    y: &Tensor<T>,
    class_weight: &BTreeMap<i64, f64>,
) -> Result<Vec<T>, Error> {
    let shape = y.shape();
    let n = shape.first().copied().unwrap_or(0);
    let last = shape.last().copied().unwrap_or(0);
    let one_hot = shape.len() > 1 && last != 1;
    let classes_per_sample = if one_hot {
        shape[1..shape.len() - 1].iter().product::<usize>()
    } else {
        shape[1..].iter().product::<usize>()
    };
    if classes_per_sample != 1 || (one_hot && last == 0) {
        return Err(ShapeError::mismatch(
            "y (with class_weight)",
            shape,
            format!(
                "({n},) or ({n}, 1) class indices, or ({n}, classes) one-hot: Keras' class_weight \
                 takes one class per sample"
            ),
        )
        .into());
    }
    let class_of = |row: &[T]| -> i64 {
        if one_hot {
            // NumPy's argmax: the first of equal largest entries.
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as i64
        } else {
            // NumPy's round (half to even), then astype("int32"); x86 turns values out of
            // the int32 range into i32::MIN.
            let r = row.first().map_or(0.0, |v| v.f64().round_ties_even());
            if r >= f64::from(i32::MIN) && r <= f64::from(i32::MAX) {
                r as i64
            } else {
                i64::from(i32::MIN)
            }
        }
    };
    let width = if one_hot { last } else { 1 };
    Ok(y.data()
        .chunks(width)
        .map(|row| T::of(class_weight.get(&class_of(row)).copied().unwrap_or(1.0)))
        .collect())
}

/// The rows `idx` (axis 0) of `t`, in that order.
fn gather<T: Float>(t: &Tensor<T>, idx: &[usize]) -> Result<Tensor<T>, Error> {
    let n = t.shape().first().copied().unwrap_or(0);
    let row = t.len().checked_div(n).unwrap_or(0);
    let mut data = Vec::with_capacity(idx.len() * row);
    for &i in idx {
        let r = t
            .data()
            .get(i * row..(i + 1) * row)
            .ok_or_else(|| ShapeError::mismatch("sample index", &[i], format!("< {n}")))?;
        data.extend_from_slice(r);
    }
    let mut shape = t.shape().to_vec();
    if let Some(s) = shape.first_mut() {
        *s = idx.len();
    }
    Ok(Tensor::new(shape, data)?)
}

/// Rows `start..end` of every array.
fn slice_all<T: Float>(
    ts: &[Tensor<T>],
    start: usize,
    end: usize,
) -> Result<Vec<Tensor<T>>, Error> {
    let idx: Vec<usize> = (start..end).collect();
    ts.iter().map(|t| gather(t, &idx)).collect()
}

/// The leaves of a nested `metrics` entry (metric names and serialized metric objects), in
/// Keras' `tree.flatten` order.
fn flatten_metrics<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten_metrics(x, out)),
        Value::Object(o) if !o.contains_key("class_name") => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            keys.into_iter().for_each(|k| flatten_metrics(&o[k], out));
        }
        Value::Null => {}
        leaf => out.push(leaf),
    }
}

/// Appends each metric's result to its history column (`prefix` + its name), making the column
/// on first use: a number in `columns`, one per class in `class_columns`.
fn push_metrics<T: Float>(
    columns: &mut Vec<(String, Vec<f64>)>,
    class_columns: &mut Vec<(String, Vec<Vec<f64>>)>,
    set: &MetricSet<T>,
    prefix: &str,
) {
    fn push<V>(columns: &mut Vec<(String, Vec<V>)>, key: String, v: V) {
        match columns.iter_mut().find(|(k, _)| *k == key) {
            Some((_, col)) => col.push(v),
            None => columns.push((key, vec![v])),
        }
    }
    for (name, v) in set.names().iter().zip(set.values()) {
        let key = format!("{prefix}{name}");
        match v {
            MetricValue::Scalar(v) => push(columns, key, v),
            MetricValue::PerClass(v) => push(class_columns, key, v),
        }
    }
}

/// Puts the 1-based epoch and batch into a [`TrainError::NonFinite`].
fn at_batch(e: Error, epoch: usize, batch: usize) -> Error {
    match e {
        Error::Train(TrainError::NonFinite { what, .. }) => {
            TrainError::NonFinite { what, epoch, batch }.into()
        }
        other => other,
    }
}

fn epoch_bar(show: bool, epoch: usize, epochs: usize, batches: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // The default draw target is stderr, hidden by indicatif itself when it is not a terminal.
    let bar = ProgressBar::new(batches as u64).with_prefix(format!("Epoch {epoch}/{epochs}"));
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl<T: Float> Model<T> {
    /// Tells every `Conv1D` whether the training steps that follow are those of a Keras `fit`
    /// whose batches include a partial one.
    fn set_partial_batch_fit(&mut self, on: bool) {
        for l in &mut self.layers {
            if let Layer::Conv1D(c) = &mut l.layer {
                c.set_partial_batch_fit(on);
            }
        }
    }

    /// With stateful layers, checks that every batch of `samples` (`(what, count)` pairs) has
    /// `batch_size` rows, the batch size of the model's inputs where it is fixed: the layers
    /// carry their states from one batch to the next, and Keras refuses a partial batch or
    /// another batch size.
    fn check_stateful_batches(
        &self,
        arg: &str,
        batch_size: usize,
        samples: &[(&str, usize)],
    ) -> Result<(), Error> {
        if !self.is_stateful() {
            return Ok(());
        }
        if let Some(fixed) = self
            .input_shapes()
            .iter()
            .filter_map(|s| s.first().copied().flatten())
            .find(|&b| b != batch_size)
        {
            return Err(ConfigError::invalid(
                arg,
                batch_size,
                format!("{fixed}, the batch size of the stateful model's inputs"),
            )
            .into());
        }
        for &(what, n) in samples {
            if !n.is_multiple_of(batch_size) {
                return Err(ConfigError::invalid(
                    arg,
                    batch_size,
                    format!(
                        "a divisor of the {n} {what} samples: a stateful model carries its \
                         states from batch to batch and takes no partial batch"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    fn check_arity(
        &self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        xname: &str,
        yname: &str,
    ) -> Result<(), Error> {
        if x.len() != self.inputs.len() {
            return Err(ConfigError::invalid(
                xname,
                format!("{} arrays", x.len()),
                format!("{} (one per model input)", self.inputs.len()),
            )
            .into());
        }
        if y.len() != self.outputs.len() {
            return Err(ConfigError::invalid(
                yname,
                format!("{} arrays", y.len()),
                format!("{} (one per model output)", self.outputs.len()),
            )
            .into());
        }
        Ok(())
    }

    /// The loss and the optimizer recorded in the model's Keras `compile_config`, each `None`
    /// where the file has none (an uncompiled model saves `{}`). A legacy `.h5` file's
    /// `training_config` names its optimizer `optimizer_config` (`{"class_name", "config"}`),
    /// which is read the same way, as Keras' legacy loader compiles the model with it.
    pub fn compiled_loss_and_optimizer(
        &self,
    ) -> Result<(Option<Loss>, Option<OptimizerConfig>), Error> {
        Ok((self.compiled_loss()?, self.compiled_optimizer()?))
    }

    /// The loss of [`Model::compiled_loss_and_optimizer`] alone (so that a caller replacing the
    /// optimizer is not stopped by one it cannot read).
    pub fn compiled_loss(&self) -> Result<Option<Loss>, Error> {
        match self.compile_entry(&["loss"]) {
            None => Ok(None),
            Some(v) => Ok(Some(Loss::from_keras(v)?)),
        }
    }

    /// The optimizer of [`Model::compiled_loss_and_optimizer`] alone.
    pub fn compiled_optimizer(&self) -> Result<Option<OptimizerConfig>, Error> {
        match self.compile_entry(&["optimizer", "optimizer_config"]) {
            None => Ok(None),
            Some(v) => Ok(Some(OptimizerConfig::from_keras(v)?)),
        }
    }

    /// The `metrics` and `weighted_metrics` of the compile config (Keras 3's `compile_config`
    /// or TF-Keras 2's `training_config`): names, metric objects and TF-Keras' function
    /// wrappers. A single output takes them all, however nested, as in Keras; with several
    /// outputs, a list with one entry per output or a dict keyed by output names gives each
    /// output its own ([`Metric::output`]), as Keras 3 does (not for a TF-Keras 2 file, whose
    /// metrics of several outputs follow other rules). What grucell does not compute, or cannot
    /// place on an output, is listed in `unsupported`, for the caller to report.
    pub fn compiled_metrics(&self) -> CompiledMetrics {
        let mut out = CompiledMetrics::default();
        let names = self.output_names();
        // TF-Keras 2 (a legacy `training_config`) broadcasts and renames a multi-output model's
        // metrics its own way; those are not placed.
        let tf_keras = self.compile_entry(&["optimizer_config"]).is_some();
        // Each output's shape, where the model's config gives it.
        let shapes = self.output_shapes().unwrap_or_default();
        let pos = self.node_positions();
        let out_shapes: Vec<Option<&Vec<Option<usize>>>> = self
            .outputs
            .iter()
            .map(|r| shapes.get(*pos.get(&(r.layer, r.node))?)?.get(r.index))
            .collect();
        for (key, weighted) in [("metrics", false), ("weighted_metrics", true)] {
            let Some(v) = self.compile_entry(&[key]) else {
                continue;
            };
            // Each output's entries (Keras' `_build_metrics_set`): a single output takes every
            // metric listed, however nested (`tree.flatten`: lists in order, dicts by sorted
            // key); several take a list of one entry per output, or a dict by output name.
            let mut items: Vec<(usize, &Value)> = Vec::new();
            fn per_output(k: usize, entry: &Value) -> Vec<(usize, &Value)> {
                let mut flat = Vec::new();
                flatten_metrics(entry, &mut flat);
                flat.into_iter().map(|m| (k, m)).collect()
            }
            match v {
                _ if names.len() == 1 => items = per_output(0, v),
                _ if tf_keras => out.unsupported.push(format!(
                    "{key} {v} (metrics of a TF-Keras 2 model with several outputs are not \
                     computed)"
                )),
                Value::Array(a) if a.len() == names.len() => {
                    for (k, entry) in a.iter().enumerate() {
                        items.extend(per_output(k, entry));
                    }
                }
                Value::Object(o)
                    if !o.contains_key("class_name")
                        && o.keys().all(|k| names.contains(&k.as_str())) =>
                {
                    for (k, name) in names.iter().enumerate() {
                        if let Some(entry) = o.get(*name) {
                            items.extend(per_output(k, entry));
                        }
                    }
                }
                other => {
                    out.unsupported.push(format!(
                        "{key} {other} (for a model with {} outputs grucell takes a list with one \
                         entry per output or a dict keyed by output name: {names:?})",
                        names.len()
                    ));
                }
            }
            for (k, item) in items {
                let shown = || match item {
                    Value::String(s) => s.clone(),
                    other => other
                        .get("class_name")
                        .and_then(Value::as_str)
                        .map_or_else(|| other.to_string(), str::to_string),
                };
                let placed = Metric::from_keras(item)
                    .map(|m| m.on_output(k))
                    .and_then(|m| fits_output(m, out_shapes.get(k).copied().flatten()));
                match placed {
                    Ok(m) if weighted => out.weighted_metrics.push(m),
                    Ok(m) => out.metrics.push(m),
                    Err(e) => out.unsupported.push(format!("{key} `{}`: {e}", shown())),
                }
            }
        }
        out
    }

    /// The first of `keys` present (and not null) in the compile config.
    fn compile_entry(&self, keys: &[&str]) -> Option<&Value> {
        let Some(Value::Object(c)) = &self.compile_config else {
            return None;
        };
        keys.iter().find_map(|k| c.get(*k).filter(|v| !v.is_null()))
    }

    /// Keras `model.evaluate(x, y, batch_size)`: the loss (regularization penalties included, as
    /// Keras' `compute_loss` adds them in evaluation too) of each batch in order, in inference
    /// mode (no dropout; `BatchNormalization` on its moving statistics, left unchanged), averaged
    /// with the batch sizes as weights. Stateful layers carry their states through the batches
    /// and keep the last ones, as in Keras (every batch then needs `batch_size` rows).
    ///
    /// ```
    /// use grucell::layers::dense::DenseConfig;
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::train::loss::Loss;
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    /// let gru = Rnn::<f32>::new(GruCellConfig::new(3).seed(Some(0)), 2)?;
    /// let dense = DenseConfig::new(1).build(3, 1)?;
    /// let mut model = Model::sequential("m", vec![None, Some(2)], vec![
    ///     ("gru".into(), Layer::Rnn(gru)),
    ///     ("dense".into(), Layer::Dense(dense)),
    /// ])?;
    /// let x = Tensor::new(vec![5, 4, 2], (0..40).map(|i| (i % 5) as f32 / 5.0).collect())?;
    /// let y = Tensor::new(vec![5, 1], vec![0.5; 5])?;
    /// let all_at_once = model.evaluate(&[x.clone()], &[y.clone()], &Loss::MeanSquaredError, 5)?;
    /// let in_batches = model.evaluate(&[x], &[y], &Loss::MeanSquaredError, 2)?;
    /// assert!((all_at_once - in_batches).abs() < 1e-6);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    // Computed with `loss_and_grads` in inference mode (its gradients discarded) so that the loss
    // is exactly the training loss of the same weights: Keras' logits shortcut, output masks and
    // activity regularizers live there. A loss-only forward would save the backward pass.
    pub fn evaluate(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        batch_size: usize,
    ) -> Result<f64, Error> {
        if batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", 0, "an integer ≥ 1").into());
        }
        loss.validate()?;
        self.evaluate_in(x, y, loss, Batches::all(batch_size), None)
    }

    /// Keras `model.evaluate(x, y, batch_size, sample_weight=w)`: [`Model::evaluate`] with each
    /// loss term multiplied by its weight. `sample_weight` is shaped like the loss terms, as
    /// [`FitConfig::sample_weight`]: `(N,)` for outputs `(N, C)`, `(N, T)` for sequence outputs;
    /// Keras' mean still divides by the number of terms, zero weights included.
    ///
    /// ```
    /// use grucell::layers::dense::DenseConfig;
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::train::loss::Loss;
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    /// let gru = Rnn::<f32>::new(GruCellConfig::new(3).seed(Some(0)), 2)?;
    /// let dense = DenseConfig::new(1).build(3, 1)?;
    /// let mut model = Model::sequential("m", vec![None, Some(2)], vec![
    ///     ("gru".into(), Layer::Rnn(gru)),
    ///     ("dense".into(), Layer::Dense(dense)),
    /// ])?;
    /// let x = Tensor::new(vec![4, 3, 2], (0..24).map(|i| (i % 7) as f32 / 7.0).collect())?;
    /// let y = Tensor::new(vec![4, 1], vec![0.5; 4])?;
    /// let plain = model.evaluate(&[x.clone()], &[y.clone()], &Loss::MeanSquaredError, 2)?;
    /// let twice = Tensor::new(vec![4], vec![2.0; 4])?;
    /// let weighted = model.evaluate_weighted(&[x], &[y], &twice, &Loss::MeanSquaredError, 2)?;
    /// assert!((weighted - 2.0 * plain).abs() < 1e-6);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn evaluate_weighted(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        sample_weight: &Tensor<f64>,
        loss: &Loss,
        batch_size: usize,
    ) -> Result<f64, Error> {
        self.evaluate_with_metrics(x, y, loss, batch_size, Some(sample_weight), &[], &[])
            .map(|e| e.loss)
    }

    /// Keras `model.evaluate(x, y, batch_size, sample_weight, return_dict=True)` on a model
    /// compiled with metrics: the loss as [`Model::evaluate`] (weighted as
    /// [`Model::evaluate_weighted`] when `sample_weight` is given) and each metric's value
    /// under its Keras name, `metrics` unweighted and `weighted_metrics` weighted.
    ///
    /// ```
    /// use grucell::layers::dense::DenseConfig;
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::train::loss::Loss;
    /// use grucell::train::metrics::Metric;
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    /// let gru = Rnn::<f32>::new(GruCellConfig::new(3).seed(Some(0)), 2)?;
    /// let dense = DenseConfig::new(1).build(3, 1)?;
    /// let mut model = Model::sequential("m", vec![None, Some(2)], vec![
    ///     ("gru".into(), Layer::Rnn(gru)),
    ///     ("dense".into(), Layer::Dense(dense)),
    /// ])?;
    /// let x = Tensor::new(vec![4, 3, 2], (0..24).map(|i| (i % 7) as f32 / 7.0).collect())?;
    /// let y = Tensor::new(vec![4, 1], vec![0.5; 4])?;
    /// let metrics = [Metric::from_name("mse")?, Metric::from_name("mae")?];
    /// let e = model.evaluate_with_metrics(&[x], &[y], &Loss::MeanSquaredError, 2, None, &metrics, &[])?;
    /// assert_eq!(e.metrics[0].0, "mse");
    /// assert!((e.metrics[0].1 - e.loss).abs() < 1e-6); // no regularizer: mse is the loss
    /// # Ok::<(), grucell::Error>(())
    /// ```
    #[allow(clippy::too_many_arguments)] // Keras' evaluate arguments, one each
    pub fn evaluate_with_metrics(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        batch_size: usize,
        sample_weight: Option<&Tensor<f64>>,
        metrics: &[Metric],
        weighted_metrics: &[Metric],
    ) -> Result<Evaluation, Error> {
        if batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", 0, "an integer ≥ 1").into());
        }
        loss.validate()?;
        self.check_arity(x, y, "x", "y")?;
        let n = sample_count(x, y, "x", "y")?;
        let w = match sample_weight {
            Some(w) => Some(sample_weights::<T>(w, n, "sample_weight", "samples of x")?.0),
            None => None,
        };
        let mut set = self.metric_set(metrics, weighted_metrics)?;
        let batches = Batches {
            sample_weight: w.as_deref(),
            ..Batches::all(batch_size)
        };
        let loss = self.evaluate_in(x, y, loss, batches, Some(&mut set))?;
        let (mut metrics, mut class_metrics) = (Vec::new(), Vec::new());
        for (name, v) in set.names().into_iter().zip(set.values()) {
            match v {
                MetricValue::Scalar(v) => metrics.push((name, v)),
                MetricValue::PerClass(v) => class_metrics.push((name, v)),
            }
        }
        Ok(Evaluation {
            loss,
            metrics,
            class_metrics,
        })
    }

    /// The metrics' running state.
    fn metric_set(&self, metrics: &[Metric], weighted: &[Metric]) -> Result<MetricSet<T>, Error> {
        for m in metrics.iter().chain(weighted) {
            m.validate()?;
        }
        if let Some(m) = metrics
            .iter()
            .chain(weighted)
            .find(|m| m.output >= self.outputs.len())
        {
            return Err(ConfigError::invalid(
                format!("metric `{}` output", m.name),
                m.output,
                format!("an output index below {}", self.outputs.len()),
            )
            .into());
        }
        // Keras tracks each output's loss when there are several, and prefixes the metrics'
        // names with the outputs'.
        let outputs: Vec<String> = match self.outputs.len() {
            1 => Vec::new(),
            _ => self
                .output_names()
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        Ok(MetricSet::new(metrics, weighted, &outputs))
    }

    /// The names of the model's outputs (their layers' names), as Keras names them in its logs.
    fn output_names(&self) -> Vec<&str> {
        self.outputs
            .iter()
            .map(|r| self.layers[r.layer].name.as_str())
            .collect()
    }

    /// [`Model::evaluate`] in `batches` (optional per-sample weights, Keras' `sample_weight`, and
    /// a limit on the number of batches, Keras' `steps`), updating `metrics` (reset first).
    fn evaluate_in(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        batches: Batches<'_, T>,
        mut metrics: Option<&mut MetricSet<T>>,
    ) -> Result<f64, Error> {
        let Batches {
            sample_weight,
            batch_size,
            steps,
        } = batches;
        if let Some(m) = metrics.as_deref_mut() {
            m.reset();
        }
        let keep = metrics.as_ref().is_some_and(|m| m.needs_outputs());
        self.check_arity(x, y, "x", "y")?;
        let all = sample_count(x, y, "x", "y")?;
        let n = steps.map_or(all, |s| all.min(s.saturating_mul(batch_size)));
        self.check_stateful_batches("batch_size", batch_size, &[("evaluation", n)])?;
        // Each sample's share of the flat weights (1, or one per step).
        let per = sample_weight.map_or(0, |w| w.len().checked_div(all).unwrap_or(0));
        let (mut total, mut count) = (T::zero(), T::zero());
        let mut start = 0;
        while start < n {
            let end = (start + batch_size).min(n);
            let xb = slice_all(x, start, end)?;
            let yb = slice_all(y, start, end)?;
            let wb = sample_weight.and_then(|w| w.get(start * per..end * per));
            let out = self.loss_and_grads_in(&xb, &yb, wb, loss, None, false, keep)?;
            if let Some(m) = metrics.as_deref_mut() {
                m.update_losses(&out.output_losses);
                m.update(&yb, &out.outputs, wb)?;
            }
            let v = out.loss;
            let w = T::of((end - start) as f64);
            total += v * w;
            count += w;
            start = end;
        }
        Ok((total / count).f64())
    }

    /// Keras `model.fit(x, y, batch_size, epochs, shuffle, validation_split | validation_data,
    /// callbacks = [EarlyStopping])` on in-memory arrays (see the [module
    /// documentation](self) for what matches Keras exactly).
    ///
    /// `x` holds one array per model input and `y` one per output, all with the samples on
    /// axis 0. `optimizer` must have been made for [`Model::trainable_variables`]; it keeps its
    /// state, so a second `fit` continues where the first ended, as in Keras.
    ///
    /// Errors: bad options or shapes; non-finite values in `x`/`y`; with stateful layers, a
    /// batch size that does not divide the training and validation samples or differs from the
    /// model's fixed input batch size;
    /// [`TrainError::NonFinite`] (with 1-based epoch and batch) when a batch's loss or gradient
    /// is not finite, the weights being those from before that batch. Early stopping on
    /// `val_loss` without validation data is an error (Keras only warns).
    ///
    /// ```
    /// use grucell::layers::dense::DenseConfig;
    /// use grucell::layers::model::{Layer, Model};
    /// use grucell::train::fit::FitConfig;
    /// use grucell::train::loss::Loss;
    /// use grucell::train::optimizer::{Optimizer, OptimizerConfig};
    /// use grucell::{GruCellConfig, Rnn, Tensor};
    /// let gru = Rnn::<f32>::new(GruCellConfig::new(4).seed(Some(1)), 1)?;
    /// let dense = DenseConfig::new(1).build(4, 2)?;
    /// let mut model = Model::sequential("m", vec![None, Some(1)], vec![
    ///     ("gru".into(), Layer::Rnn(gru)),
    ///     ("dense".into(), Layer::Dense(dense)),
    /// ])?;
    /// // target: the mean of a 5-step sequence
    /// let xs: Vec<f32> = (0..64 * 5).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    /// let ys: Vec<f32> = xs.chunks(5).map(|s| s.iter().sum::<f32>() / 5.0).collect();
    /// let (x, y) = (Tensor::new(vec![64, 5, 1], xs)?, Tensor::new(vec![64, 1], ys)?);
    /// let sizes: Vec<usize> = model.trainable_variables().iter().map(|(_, s)| s.iter().product()).collect();
    /// let mut opt = Optimizer::new(OptimizerConfig::adam(0.02), &sizes)?;
    /// let cfg = FitConfig { batch_size: 16, epochs: 20, seed: Some(7), validation_split: 0.25, ..FitConfig::default() };
    /// let history = model.fit(&[x], &[y], &Loss::MeanSquaredError, &mut opt, &cfg, None)?;
    /// assert_eq!(history.epochs_run, 20);
    /// assert!(history.loss[19] < history.loss[0] / 2.0);
    /// assert_eq!(history.val_loss.len(), 20); // the last 16 samples
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn fit(
        &mut self,
        x: &[Tensor<T>],
        y: &[Tensor<T>],
        loss: &Loss,
        optimizer: &mut Optimizer<T>,
        cfg: &FitConfig,
        validation_data: Option<ValidationData<'_, T>>,
    ) -> Result<History, Error> {
        cfg.validate()?;
        loss.validate()?;
        self.check_arity(x, y, "x", "y")?;
        let n = sample_count(x, y, "x", "y")?;
        for (i, t) in x.iter().enumerate() {
            t.check_finite(&format!("x[{i}]"))?;
        }
        for (i, t) in y.iter().enumerate() {
            t.check_finite(&format!("y[{i}]"))?;
        }
        // Per sample, `per` weights (1, or one per step).
        let (weights, per): (Option<Vec<T>>, usize) = match &cfg.sample_weight {
            None => match (&cfg.class_weight, y) {
                (None, _) => (None, 0),
                (Some(cw), [y]) => (Some(class_sample_weights(y, cw)?), 1),
                (Some(_), _) => {
                    return Err(ConfigError::invalid(
                        "class_weight",
                        format!("a model with {} outputs", y.len()),
                        "a model with a single output (as Keras)",
                    )
                    .into())
                }
            },
            Some(w) => {
                let (w, per) = sample_weights(w, n, "sample_weight", "samples of x")?;
                (Some(w), per)
            }
        };
        // Validation data: given, or the tail of x/y (Keras' train_validation_split).
        let mut n_train = n;
        let mut n_val = 0;
        let split: Option<[Vec<Tensor<T>>; 2]> = match validation_data {
            Some((vx, vy)) => {
                self.check_arity(vx, vy, "validation x", "validation y")?;
                n_val = sample_count(vx, vy, "validation x", "validation y")?;
                None
            }
            None if cfg.validation_split > 0.0 => {
                let split_at = (n as f64 * (1.0 - cfg.validation_split)).floor() as usize;
                if split_at == 0 || split_at >= n {
                    return Err(ConfigError::invalid(
                        "validation_split",
                        cfg.validation_split,
                        format!("a fraction leaving at least one of the {n} samples for training and one for validation"),
                    )
                    .into());
                }
                n_train = split_at;
                n_val = n - split_at;
                Some([slice_all(x, split_at, n)?, slice_all(y, split_at, n)?])
            }
            None => None,
        };
        let val_batch_size = cfg.validation_batch_size.unwrap_or(cfg.batch_size);
        self.check_stateful_batches("batch_size", cfg.batch_size, &[("training", n_train)])?;
        let n_val_used = cfg
            .validation_steps
            .map_or(n_val, |s| n_val.min(s.saturating_mul(val_batch_size)));
        let val_arg = match cfg.validation_batch_size {
            Some(_) => "validation_batch_size",
            None => "batch_size",
        };
        if self.is_stateful() && n_val > 0 && val_batch_size != cfg.batch_size {
            return Err(ConfigError::invalid(
                "validation_batch_size",
                val_batch_size,
                format!(
                    "{}, the training batch size: a stateful model's states keep the batch size \
                     they were made with",
                    cfg.batch_size
                ),
            )
            .into());
        }
        self.check_stateful_batches(val_arg, val_batch_size, &[("validation", n_val_used)])?;
        // The split's samples keep their sample weights; given validation data has its own, if
        // any; class weights apply to the training batches only.
        let given_val_weights: Option<Vec<T>> =
            match (&validation_data, &cfg.validation_sample_weight) {
                (_, None) => None,
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        "validation_sample_weight",
                        "given without validation data",
                        "validation data to weigh (validation_data)",
                    )
                    .into())
                }
                (Some(_), Some(w)) => Some(
                    sample_weights(w, n_val, "validation_sample_weight", "validation samples")?.0,
                ),
            };
        let val_weights: Option<&[T]> = match (&split, &weights) {
            (Some(_), Some(w)) if cfg.class_weight.is_none() => w.get(n_train * per..),
            _ => given_val_weights.as_deref(),
        };
        let val: Option<ValidationData<'_, T>> =
            validation_data.or(split.as_ref().map(|[a, b]| (a.as_slice(), b.as_slice())));
        let mut train_metrics = self.metric_set(&cfg.metrics, &cfg.weighted_metrics)?;
        let mut val_metrics = train_metrics.clone();
        let keep = train_metrics.needs_outputs();
        let mut stopper = match &cfg.early_stopping {
            Some(es) if es.monitor == Monitor::ValLoss && val.is_none() => {
                return Err(ConfigError::invalid(
                    "early_stopping.monitor",
                    "val_loss",
                    "`loss`, or validation data (validation_split > 0 or validation_data)",
                )
                .into())
            }
            Some(es) => Some(Stopper::<T>::new(es.clone())),
            None => None,
        };

        let seed = cfg.seed.unwrap_or_else(rand::random);
        let mut shuffle_rng = StdRng::seed_from_u64(seed);
        let mut dropout_rng = StdRng::seed_from_u64(seed ^ DROPOUT_STREAM);
        let show = match cfg.progress {
            Progress::Never => false,
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Always => true,
        };
        // Batches per pass over the training samples; `pass_at` is the next batch of the pass
        // under way (0: a new pass starts, with a new order when shuffling). Without
        // `steps_per_epoch` every epoch is one whole pass.
        let batches = n_train.div_ceil(cfg.batch_size);
        let steps = cfg.steps_per_epoch.unwrap_or(batches);
        let mut pass_at = 0;
        let partial_batch = !n_train.is_multiple_of(cfg.batch_size);
        let mut order: Vec<usize> = (0..n_train).collect();
        let mut history = History::default();
        for epoch in cfg.initial_epoch..cfg.epochs {
            let started = Instant::now();
            if cfg.reset_states_each_epoch {
                self.reset_states();
            }
            if pass_at == 0 && cfg.shuffle {
                order.shuffle(&mut shuffle_rng);
            }
            // Keras' epoch iterator ends an epoch where its pass ends.
            let first = pass_at;
            let last = (first + steps).min(batches);
            pass_at = if last == batches { 0 } else { last };
            let bar = epoch_bar(show, epoch + 1, cfg.epochs, last - first);
            let (mut total, mut count) = (T::zero(), T::zero());
            train_metrics.reset();
            // Keras traces its training step on an unknown batch size when the epoch ends with
            // a partial batch, which changes one layer's forward (Conv1D::bias_on_steps).
            self.set_partial_batch_fit(partial_batch);
            let trained = (|| -> Result<(), Error> {
                // `b`: the batch's 0-based step in this epoch.
                let pass = order.chunks(cfg.batch_size).skip(first).take(last - first);
                for (b, idx) in pass.enumerate() {
                    let xb = x
                        .iter()
                        .map(|t| gather(t, idx))
                        .collect::<Result<Vec<_>, _>>()?;
                    let yb = y
                        .iter()
                        .map(|t| gather(t, idx))
                        .collect::<Result<Vec<_>, _>>()?;
                    let wb: Option<Vec<T>> = weights.as_ref().map(|w| {
                        idx.iter()
                            .flat_map(|&i| &w[i * per..(i + 1) * per])
                            .copied()
                            .collect()
                    });
                    let step = self
                        .train_step(
                            &xb,
                            &yb,
                            wb.as_deref(),
                            loss,
                            optimizer,
                            Some(&mut dropout_rng),
                            keep,
                        )
                        .map_err(|e| {
                            bar.abandon();
                            at_batch(e, epoch + 1, b + 1)
                        })?;
                    train_metrics.update_losses(&step.output_losses);
                    train_metrics.update(&yb, &step.outputs, wb.as_deref())?;
                    let w = T::of(idx.len() as f64);
                    total += step.loss * w;
                    count += w;
                    bar.inc(1);
                    bar.set_message(format!("loss {:.4}", (total / count).f64()));
                }
                Ok(())
            })();
            self.set_partial_batch_fit(false);
            trained?;
            bar.finish_and_clear();
            let epoch_loss = (total / count).f64();
            history.epoch.push(epoch);
            history.loss.push(epoch_loss);
            push_metrics(
                &mut history.metrics,
                &mut history.class_metrics,
                &train_metrics,
                "",
            );
            let val_loss = match val {
                Some((vx, vy)) if cfg.validation_freq.is_due(epoch + 1) => {
                    let batches = Batches {
                        sample_weight: val_weights,
                        batch_size: val_batch_size,
                        steps: cfg.validation_steps,
                    };
                    Some(self.evaluate_in(vx, vy, loss, batches, Some(&mut val_metrics))?)
                }
                _ => None,
            };
            if let Some(v) = val_loss {
                history.val_loss.push(v);
                history.val_epoch.push(epoch);
                push_metrics(
                    &mut history.val_metrics,
                    &mut history.val_class_metrics,
                    &val_metrics,
                    "val_",
                );
            }
            history.epochs_run += 1;
            if show {
                let v = val_loss
                    .map(|v| format!(" - val_loss {v:.6}"))
                    .unwrap_or_default();
                eprintln!(
                    "Epoch {}/{}: loss {epoch_loss:.6}{v} ({:.2} s)",
                    epoch + 1,
                    cfg.epochs,
                    started.elapsed().as_secs_f64()
                );
            }
            if let Some(s) = stopper.as_mut() {
                // An epoch without the monitored value (not validated) is skipped, as Keras
                // skips it (with a warning).
                let current = match s.cfg.monitor {
                    Monitor::Loss => Some(epoch_loss),
                    Monitor::ValLoss => val_loss,
                };
                if current.is_some_and(|c| s.on_epoch_end(epoch, c, &self.layers)) {
                    history.stopped_early = true;
                    if show {
                        eprintln!("Epoch {}: early stopping", epoch + 1);
                    }
                    break;
                }
            }
        }
        // Keras' `optimizer.finalize_variable_values` (the weights take their moving averages
        // with `use_ema`), before the callbacks' `on_train_end`.
        if cfg.epochs > 0 && optimizer.config().ema.is_some() {
            let done = {
                let mut vars = self.variables_mut();
                let mut slices: Vec<&mut [T]> =
                    vars.iter_mut().map(|(w, _, _)| w.data_mut()).collect();
                optimizer.finalize_variable_values(&mut slices)
            };
            self.weights_changed();
            done?;
        }
        // on_train_end
        if let Some(s) = stopper {
            if s.best.is_some() {
                history.best_epoch = Some(s.best_epoch + 1);
            }
            if let Some(layers) = s.best_weights {
                if show {
                    eprintln!(
                        "Restoring model weights from the end of the best epoch: {}.",
                        s.best_epoch + 1
                    );
                }
                self.restore_layers(layers);
                self.weights_changed();
            }
        }
        Ok(history)
    }
}
