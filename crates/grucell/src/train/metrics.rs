//! Keras' compiled metrics (`model.compile(metrics=[…], weighted_metrics=[…])`), as Keras 3.15.1
//! reports them in `fit`'s history and in `evaluate`.
//!
//! Each metric is Keras' `MeanMetricWrapper`: a function gives one value per element of its result
//! (`mae`: the mean over the last axis of `|y − ŷ|`, one per sample or per sample and step;
//! `binary_accuracy`: one per output entry), and the metric is their weighted mean over every batch
//! of the epoch or evaluation, `Σ v·w / Σ w`. The weights are the output mask (for a masked
//! sequence output), times the sample weights for `weighted_metrics` only: plain `metrics` ignore
//! sample and class weights, as in Keras. Each sample's values and weights are averaged first and
//! the sums run over samples, in Keras' order.
//!
//! Supported mean wrappers: `mae`, `mse`, `mape`, `msle`, `log_cosh_error`, `cosine_similarity`
//! (and their class names), `accuracy`/`acc` (resolved from the shapes to binary, sparse
//! categorical or categorical accuracy, as Keras' `compile` does), `binary_accuracy` (with its
//! `threshold`), `categorical_accuracy`, `sparse_categorical_accuracy`, the exact `Accuracy`
//! class, the top-k accuracies, and Keras' loss functions as metrics (the crossentropies, KL
//! divergence, Poisson, the hinges). Metrics that are not mean wrappers and do not see the
//! output mask, as in Keras: `root_mean_squared_error` (a weighted mean of squares, then its
//! root), `precision`, `recall` and the four confusion counts (weighted counts over the epoch,
//! at one threshold or at each of a list, [`Thresholds`]; `precision` and `recall` with Keras'
//! `top_k` and `class_id`), `auc` (thresholds
//! spread evenly or a given list; one label, or with `multi_label` the mean of the columns'
//! areas; `label_weights`), `r2_score` (combined over the output columns, or one score per
//! column) and `F1Score`/`FBetaScore` (counts per class over the epoch, combined `micro`, `macro`
//! or `weighted`, or Keras' default of one score per class: a [`MetricValue::PerClass`]).
//! `pearson_correlation` and `concordance_correlation` are mean wrappers of one value per row of
//! the last axis. The IoU metrics (`IoU`, `MeanIoU`, `BinaryIoU`, `OneHotIoU`,
//! `OneHotMeanIoU`) count a confusion matrix over the epoch as Keras' integer-typed base class
//! does, and `SensitivityAtSpecificity`, `SpecificityAtSensitivity`, `PrecisionAtRecall` and
//! `RecallAtPrecision` AUC's counts at evenly spread thresholds (with `class_id`). Other metrics
//! are reported by [`Metric::from_keras`] as unsupported.

use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::activation::Activation;
use crate::layers::keras_json::{get_bool, get_f64, get_u64, tensor_value};
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;
use crate::train::backward::ModelOutput;
use crate::train::loss::Loss;

/// What a metric computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricFn {
    /// `mean(|y − ŷ|)` over the last axis.
    MeanAbsoluteError,
    /// `mean((y − ŷ)²)` over the last axis.
    MeanSquaredError,
    /// `100 · mean(|y − ŷ| / max(|y|, 1e-7))` over the last axis.
    MeanAbsolutePercentageError,
    /// `mean((log(max(ŷ, 1e-7) + 1) − log(max(y, 1e-7) + 1))²)` over the last axis.
    MeanSquaredLogarithmicError,
    /// Keras' `"accuracy"`/`"acc"`: binary, sparse categorical or categorical accuracy, picked
    /// from the shapes of the targets and outputs when the metric first sees them.
    Accuracy,
    /// `ŷ > threshold` equals `y`, per entry.
    BinaryAccuracy {
        /// Keras default 0.5.
        threshold: f64,
    },
    /// The arg-max of `ŷ` equals the arg-max of the one-hot `y`.
    CategoricalAccuracy,
    /// The arg-max of `ŷ` equals the class index `y`.
    SparseCategoricalAccuracy,
    /// `sqrt` of the weighted mean of `(y − ŷ)²` over every entry (Keras' `RootMeanSquaredError`,
    /// a plain `Mean`: the output mask does not apply).
    RootMeanSquaredError,
    /// True positives over predicted positives, `ŷ > threshold` against `y ≠ 0`, per entry,
    /// counted over the epoch (the output mask does not apply).
    Precision {
        /// Keras default 0.5 (−10¹⁰ with `top_k`); with several, one value per threshold.
        thresholds: Thresholds,
        /// Keras' `top_k` and `class_id`.
        select: Selection,
    },
    /// True positives over actual positives, as `Precision`.
    Recall {
        /// Keras default 0.5 (−10¹⁰ with `top_k`); with several, one value per threshold.
        thresholds: Thresholds,
        /// Keras' `top_k` and `class_id`.
        select: Selection,
    },
    /// The mean of a Keras loss function's values (Keras' `BinaryCrossentropy`,
    /// `CategoricalCrossentropy`, `SparseCategoricalCrossentropy`, `KLDivergence`, `Poisson`,
    /// `Hinge`, `SquaredHinge`, `CategoricalHinge` and `LogCoshError` metrics): one value per
    /// row, as the loss computes it before its reduction. A crossentropy on a `sigmoid` or
    /// `softmax` output reads that activation's input as logits, as the loss does
    /// ([`Loss::on_activation_output`]).
    Loss(Loss),
    /// The cosine of the angle between `y` and `ŷ` over the last axis (Keras'
    /// `CosineSimilarity` metric: the loss of that name, negated).
    CosineSimilarity,
    /// `ŷ` equals `y`, per entry (Keras' `Accuracy` class; the string `"accuracy"` is
    /// [`MetricFn::Accuracy`]).
    ExactAccuracy,
    /// The class of the one-hot `y` is among the `k` largest `ŷ` (TensorFlow's `in_top_k`:
    /// fewer than `k` entries are larger).
    TopKCategoricalAccuracy {
        /// Keras default 5.
        k: usize,
    },
    /// The class index `y` is among the `k` largest `ŷ`.
    SparseTopKCategoricalAccuracy {
        /// Keras default 5.
        k: usize,
    },
    /// A confusion count over the epoch, `ŷ > threshold` against `y ≠ 0` per entry, weighted
    /// (Keras' `TruePositives`, `FalsePositives`, `TrueNegatives`, `FalseNegatives`; the
    /// output mask does not apply).
    Count {
        /// Which count.
        count: Confusion,
        /// Keras default 0.5; with several, one count per threshold.
        thresholds: Thresholds,
    },
    /// The area under the ROC or precision-recall curve (Keras' `AUC`), from
    /// confusion counts at `num_thresholds` thresholds spread evenly over `[0, 1]`, counted over
    /// the epoch as Keras buckets them (the output mask does not apply).
    Auc {
        /// Keras default 200.
        num_thresholds: usize,
        /// Keras default ROC.
        curve: AucCurve,
        /// Keras default interpolation.
        summation: AucSummation,
        /// Apply a sigmoid to `ŷ` first.
        from_logits: bool,
        /// Keras' `multi_label`: counts per column of `(batch, labels)` outputs and the mean of
        /// the labels' areas, instead of every entry counted as one label.
        multi_label: bool,
    },
    /// The coefficient of determination of each output column over the epoch, weighted by the
    /// sample weights, then averaged (Keras' `R2Score` on `(batch, outputs)` outputs; the output
    /// mask does not apply).
    R2Score {
        /// How the columns' scores are combined (Keras default: uniform average).
        aggregation: R2Aggregation,
        /// Keras' `num_regressors`: the adjusted R² for this many independent variables (0: the
        /// plain R²).
        num_regressors: usize,
    },
    /// Pearson's correlation between `y` and `ŷ` over the last axis, per row, averaged as a
    /// loss-like metric (Keras' `PearsonCorrelation`: each row centred and divided by its
    /// population standard deviation, no epsilon, so a constant row gives NaN as in Keras).
    PearsonCorrelation,
    /// Lin's concordance correlation over the last axis, per row, averaged (Keras'
    /// `ConcordanceCorrelation`, with its formula as written: the covariance term centres `y`
    /// on the mean of `ŷ`, and the denominator adds Keras' epsilon 1e-7).
    ConcordanceCorrelation,
    /// Keras' IoU metrics, counted over the epoch (the output mask does not apply).
    Iou(IouConfig),
    /// One rate at the best threshold where another reaches `value` (Keras'
    /// `SensitivityAtSpecificity`, `SpecificityAtSensitivity`, `PrecisionAtRecall`,
    /// `RecallAtPrecision`), from confusion counts at `num_thresholds` thresholds spread evenly
    /// over `[0, 1]`, counted over the epoch as AUC counts them (the output mask does not apply).
    AtPoint {
        /// Which rate, under which constraint.
        kind: AtPoint,
        /// Keras' `specificity`, `sensitivity`, `recall` or `precision`: the constraint's
        /// least value.
        value: f64,
        /// Keras default 200.
        num_thresholds: usize,
        /// Keras' `class_id` (`top_k` is not a setting of these metrics).
        select: Selection,
    },
    /// The F-beta score of `(batch, classes)` outputs over the epoch (Keras' `FBetaScore`, and
    /// `F1Score` with `beta = 1`): weighted true-positive, false-positive and false-negative
    /// sums per class (or over every entry, `micro`), combined as Keras' `result` does (the
    /// output mask does not apply).
    FBeta {
        /// Keras' `beta` (1 for `F1Score`).
        beta: f64,
        /// Keras' `average`.
        average: FAverage,
        /// Keras' `threshold`: `ŷ > threshold` is positive; `None` marks each row's largest
        /// entries (those not within 1e-9 of 0) positive.
        threshold: Option<f64>,
    },
}

/// Most classes a [`MetricFn::Iou`] keeps a confusion matrix for (`num_classes²` counts, 8 MiB
/// at most): a file cannot make grucell allocate more.
pub const IOU_MAX_CLASSES: usize = 1024;

/// Most counts (thresholds × labels) a multi-label [`MetricFn::Auc`] keeps.
pub const AUC_MAX_COUNTS: usize = 1 << 20;

/// Keras' IoU metrics (`IoU`, `MeanIoU`, `BinaryIoU`, `OneHotIoU`, `OneHotMeanIoU`), as their
/// shared base computes them: each entry's true and predicted class (an arg-max over the last
/// axis where they are one-hot, a cast to an integer otherwise, which truncates), a weighted
/// confusion matrix over the epoch, and the mean IoU `tp / (tp + fp + fn)` of the target classes
/// that occur.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IouConfig {
    /// Keras' `num_classes` (2 for `BinaryIoU`).
    pub num_classes: usize,
    /// Keras' `target_class_ids`: the classes averaged, as a bit set of the first 256 ids;
    /// `None` for every class (`MeanIoU`).
    pub targets: Option<[u64; 4]>,
    /// Keras' `ignore_class`: entries of this true class are left out.
    pub ignore_class: Option<i64>,
    /// Keras' `sparse_y_true`: the targets are class ids (else one-hot, read by arg-max).
    pub sparse_true: bool,
    /// Keras' `sparse_y_pred`: the outputs are class ids (else scores, read by arg-max).
    pub sparse_pred: bool,
    /// `BinaryIoU`'s `threshold`: an output `≥ threshold` is class 1, else 0.
    pub threshold: Option<f64>,
    /// The metric's dtype is an integer type (Keras' default `int64`): the sample weights are
    /// truncated to integers, as Keras casts them.
    pub integer: bool,
}

impl IouConfig {
    /// Whether class `c` is averaged.
    fn targets(&self, c: usize) -> bool {
        match self.targets {
            None => true,
            Some(bits) => c < 256 && bits[c / 64] >> (c % 64) & 1 == 1,
        }
    }
}

impl MetricFn {
    /// The entries a confusion-count metric sees: Keras' `top_k` and `class_id`, where the
    /// metric has them.
    pub fn selection(&self) -> Selection {
        match *self {
            MetricFn::Precision { select, .. }
            | MetricFn::Recall { select, .. }
            | MetricFn::AtPoint { select, .. } => select,
            _ => Selection::default(),
        }
    }
}

/// The entries a confusion-count metric sees (Keras' `top_k` and `class_id` of `Precision`,
/// `Recall` and the rates at a point), along the last axis of `ŷ`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only the `k` largest `ŷ` of each row keep their value; the others count as −10¹⁰ (Keras'
    /// `_filter_top_k`; of equal values the first come first).
    pub top_k: Option<usize>,
    /// Only this column counts (`y[..., class_id]` against `ŷ[..., class_id]`), after `top_k`.
    pub class_id: Option<usize>,
}

impl Selection {
    /// The setting that asks for more than an output whose last axis has `last` entries gives
    /// (Keras fails there), with its value: a `class_id` from `last` on, a `top_k` over `last`.
    pub fn beyond(&self, last: usize) -> Option<(&'static str, usize)> {
        match (self.class_id, self.top_k) {
            (Some(c), _) if c >= last => Some(("class_id", c)),
            (_, Some(k)) if k > last => Some(("top_k", k)),
            _ => None,
        }
    }
}

/// Which [`MetricFn::AtPoint`] metric: the rate maximized, and the one held at its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtPoint {
    /// `SensitivityAtSpecificity`: the best recall where specificity ≥ value.
    SensitivityAtSpecificity,
    /// `SpecificityAtSensitivity`: the best specificity where recall ≥ value.
    SpecificityAtSensitivity,
    /// `PrecisionAtRecall`: the best precision where recall ≥ value.
    PrecisionAtRecall,
    /// `RecallAtPrecision`: the best recall where precision ≥ value.
    RecallAtPrecision,
}

/// Most thresholds a confusion metric takes at once (see [`Thresholds`]).
pub const MAX_THRESHOLDS: usize = 32;

/// The thresholds of `Precision`, `Recall` and the confusion counts (Keras' `thresholds`): one,
/// or a list of up to [`MAX_THRESHOLDS`], for which the metric gives one value per threshold,
/// in the list's order, as Keras does. A list of fixed capacity, so that [`MetricFn`] stays
/// `Copy`.
///
/// ```
/// use grucell::train::metrics::Thresholds;
/// assert_eq!(Thresholds::one(0.5).as_slice(), &[0.5]);
/// assert_eq!(Thresholds::new(&[0.7, 0.3]).unwrap().as_slice(), &[0.7, 0.3]);
/// assert!(Thresholds::new(&[]).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    values: [f64; MAX_THRESHOLDS],
    len: usize,
}

impl Thresholds {
    /// One threshold.
    pub fn one(t: f64) -> Self {
        let mut values = [0.0; MAX_THRESHOLDS];
        values[0] = t;
        Thresholds { values, len: 1 }
    }

    /// The thresholds of `list`; `None` when it is empty or longer than [`MAX_THRESHOLDS`].
    pub fn new(list: &[f64]) -> Option<Self> {
        if list.is_empty() || list.len() > MAX_THRESHOLDS {
            return None;
        }
        let mut values = [0.0; MAX_THRESHOLDS];
        values[..list.len()].copy_from_slice(list);
        Some(Thresholds {
            values,
            len: list.len(),
        })
    }

    /// The thresholds, in their order.
    pub fn as_slice(&self) -> &[f64] {
        &self.values[..self.len]
    }
}

/// A metric's result after some batches: one number, or one per class (or column).
///
/// ```
/// use grucell::train::metrics::MetricValue;
/// assert_eq!(MetricValue::Scalar(0.5).to_string(), "0.5");
/// assert_eq!(MetricValue::PerClass(vec![0.5, 0.25]).to_string(), "[0.5, 0.25]");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    /// One number, as most metrics give.
    Scalar(f64),
    /// One number per class or column, in their order: Keras' `F1Score`/`FBetaScore` with
    /// `average=None` and `R2Score` with `class_aggregation=None`, on more than one column;
    /// also one number per threshold of `Precision`, `Recall` and the confusion counts given
    /// several [`Thresholds`].
    PerClass(Vec<f64>),
}

impl std::fmt::Display for MetricValue {
    /// The number as Rust prints an `f64`; per class, `[a, b, …]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricValue::Scalar(v) => write!(f, "{v}"),
            MetricValue::PerClass(v) => {
                let items: Vec<String> = v.iter().map(f64::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// How a [`MetricFn::FBeta`] combines its classes (Keras' `average`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FAverage {
    /// `None`: one score per class (a [`MetricValue::PerClass`] on several classes; on one
    /// column, Keras' one-element result is logged as that score).
    PerClass,
    /// `"micro"`: the counts summed over every class first.
    Micro,
    /// `"macro"`: the mean of the classes' scores.
    Macro,
    /// `"weighted"`: the classes' scores weighted by their (weighted) counts of `y`.
    Weighted,
}

/// How a [`MetricFn::R2Score`] combines its columns (Keras' `class_aggregation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum R2Aggregation {
    /// `"uniform_average"`: the mean of the columns' scores.
    Uniform,
    /// `"variance_weighted_average"`: weighted by each column's total sum of squares.
    VarianceWeighted,
    /// `None`: one score per column (a [`MetricValue::PerClass`] on several columns).
    PerColumn,
}

/// Which confusion count a [`MetricFn::Count`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confusion {
    /// `y ≠ 0` and `ŷ > threshold`.
    TruePositives,
    /// `y = 0` and `ŷ > threshold`.
    FalsePositives,
    /// `y = 0` and `ŷ ≤ threshold`.
    TrueNegatives,
    /// `y ≠ 0` and `ŷ ≤ threshold`.
    FalseNegatives,
}

/// The curve of a [`MetricFn::Auc`] (Keras' `curve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AucCurve {
    /// `"ROC"`: recall over the false-positive rate.
    Roc,
    /// `"PR"`: precision over recall.
    Pr,
    /// `"PRGAIN"`: precision gain over recall gain.
    PrGain,
}

/// How a [`MetricFn::Auc`] sums its rectangles (Keras' `summation_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AucSummation {
    /// `"interpolation"`: trapezoids (ROC, PR gain), or Davis and Goadrich's interpolation (PR).
    Interpolation,
    /// `"minoring"`: the lower of each interval's two heights.
    Minoring,
    /// `"majoring"`: the higher one.
    Majoring,
}

/// One compiled metric: its history name and what it computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// The name in the history (`"mae"`, `"accuracy"`, …; `val_` is prefixed for validation):
    /// the string the metric was compiled with, or a metric object's `name`.
    pub name: String,
    /// The function.
    pub function: MetricFn,
    /// The model output it is computed on (0 for a single output). For a model with several
    /// outputs Keras prefixes its name with the output's: `"b_mae"`.
    pub output: usize,
    /// AUC's list settings (empty for every other metric).
    pub auc: AucLists,
}

/// AUC's settings that are lists (Keras' `thresholds` and `label_weights`), kept beside the
/// `Copy` [`MetricFn::Auc`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AucLists {
    /// Keras' `thresholds` when they are not evenly spread (evenly spread ones are
    /// `num_thresholds`, as Keras treats them): Keras' `−ε`, the given values ascending and
    /// `1 + ε`, each rounded to `f32` as Keras' variables hold them. An entry counts as positive
    /// at a threshold it exceeds.
    pub thresholds: Option<Vec<f64>>,
    /// Keras' `label_weights`, one per label (the last axis). Without `multi_label` each entry's
    /// weight is multiplied by its label's; with it, the labels' areas are averaged with these
    /// weights (0 when they sum to 0).
    pub label_weights: Option<Vec<f64>>,
}

impl Metric {
    /// A metric by the names `keras.metrics.get` knows (case-sensitive, as Keras), with the name
    /// as its history key; `"accuracy"` and `"acc"` (any case) are resolved later from the shapes.
    ///
    /// ```
    /// use grucell::train::metrics::{Metric, MetricFn};
    /// assert_eq!(Metric::from_name("mae")?.function, MetricFn::MeanAbsoluteError);
    /// assert_eq!(Metric::from_name("acc")?.function, MetricFn::Accuracy);
    /// assert!(Metric::from_name("mean_tensor").is_err());
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Metric, ConfigError> {
        let count = |count| MetricFn::Count {
            count,
            thresholds: Thresholds::one(0.5),
        };
        let function = match name {
            _ if ["accuracy", "acc"].contains(&name.to_lowercase().as_str()) => MetricFn::Accuracy,
            "mae" | "MAE" | "mean_absolute_error" | "MeanAbsoluteError" => {
                MetricFn::MeanAbsoluteError
            }
            "mse" | "MSE" | "mean_squared_error" | "MeanSquaredError" => MetricFn::MeanSquaredError,
            "mape" | "MAPE" | "mean_absolute_percentage_error" | "MeanAbsolutePercentageError" => {
                MetricFn::MeanAbsolutePercentageError
            }
            "msle" | "MSLE" | "mean_squared_logarithmic_error" | "MeanSquaredLogarithmicError" => {
                MetricFn::MeanSquaredLogarithmicError
            }
            "binary_accuracy" | "BinaryAccuracy" => MetricFn::BinaryAccuracy { threshold: 0.5 },
            "categorical_accuracy" | "CategoricalAccuracy" => MetricFn::CategoricalAccuracy,
            "sparse_categorical_accuracy" | "SparseCategoricalAccuracy" => {
                MetricFn::SparseCategoricalAccuracy
            }
            "root_mean_squared_error" | "RootMeanSquaredError" => MetricFn::RootMeanSquaredError,
            "precision" | "Precision" => MetricFn::Precision {
                thresholds: Thresholds::one(0.5),
                select: Selection::default(),
            },
            "recall" | "Recall" => MetricFn::Recall {
                thresholds: Thresholds::one(0.5),
                select: Selection::default(),
            },
            "bce" | "BCE" | "binary_crossentropy" | "BinaryCrossentropy" => {
                MetricFn::Loss(Loss::BinaryCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.0,
                })
            }
            "categorical_crossentropy" | "CategoricalCrossentropy" => {
                MetricFn::Loss(Loss::CategoricalCrossentropy {
                    from_logits: false,
                    label_smoothing: 0.0,
                })
            }
            "sparse_categorical_crossentropy" | "SparseCategoricalCrossentropy" => {
                MetricFn::Loss(Loss::SparseCategoricalCrossentropy { from_logits: false })
            }
            "kl_divergence" | "KLDivergence" => MetricFn::Loss(Loss::KlDivergence),
            "poisson" | "Poisson" => MetricFn::Loss(Loss::Poisson),
            "hinge" | "Hinge" => MetricFn::Loss(Loss::Hinge),
            "squared_hinge" | "SquaredHinge" => MetricFn::Loss(Loss::SquaredHinge),
            "categorical_hinge" | "CategoricalHinge" => MetricFn::Loss(Loss::CategoricalHinge),
            "log_cosh_error" | "LogCoshError" => MetricFn::Loss(Loss::LogCosh),
            "cosine_similarity" | "CosineSimilarity" => MetricFn::CosineSimilarity,
            "top_k_categorical_accuracy" | "TopKCategoricalAccuracy" => {
                MetricFn::TopKCategoricalAccuracy { k: 5 }
            }
            "sparse_top_k_categorical_accuracy" | "SparseTopKCategoricalAccuracy" => {
                MetricFn::SparseTopKCategoricalAccuracy { k: 5 }
            }
            "true_positives" | "TruePositives" => count(Confusion::TruePositives),
            "false_positives" | "FalsePositives" => count(Confusion::FalsePositives),
            "true_negatives" | "TrueNegatives" => count(Confusion::TrueNegatives),
            "false_negatives" | "FalseNegatives" => count(Confusion::FalseNegatives),
            "r2_score" | "R2Score" => MetricFn::R2Score {
                aggregation: R2Aggregation::Uniform,
                num_regressors: 0,
            },
            "pearson_correlation" | "PearsonCorrelation" => MetricFn::PearsonCorrelation,
            "concordance_correlation" | "ConcordanceCorrelation" => {
                MetricFn::ConcordanceCorrelation
            }
            "f1_score" | "F1Score" => MetricFn::FBeta {
                beta: 1.0,
                average: FAverage::PerClass,
                threshold: None,
            },
            "auc" | "AUC" => MetricFn::Auc {
                num_thresholds: 200,
                curve: AucCurve::Roc,
                summation: AucSummation::Interpolation,
                from_logits: false,
                multi_label: false,
            },
            other => {
                return Err(ConfigError::unsupported(
                    "metric",
                    format!(
                        "`{other}` is not computed by grucell (supported: mae, mse, mape, msle, \
                         root_mean_squared_error, log_cosh_error, cosine_similarity, accuracy, \
                         binary_accuracy, categorical_accuracy, sparse_categorical_accuracy, \
                         top_k_categorical_accuracy, sparse_top_k_categorical_accuracy, \
                         binary_crossentropy, categorical_crossentropy, \
                         sparse_categorical_crossentropy, kl_divergence, poisson, hinge, \
                         squared_hinge, categorical_hinge, precision, recall, true_positives, \
                         false_positives, true_negatives, false_negatives, auc, r2_score, \
                         pearson_correlation, concordance_correlation, f1_score, and the \
                         FBetaScore, IoU and sensitivity/specificity/precision/recall-at \
                         classes)"
                    ),
                ))
            }
        };
        Ok(Metric {
            name: name.to_string(),
            function,
            output: 0,
            auc: AucLists::default(),
        })
    }

    /// Checks the settings a [`Metric`] built in code may carry: AUC's `num_thresholds` in
    /// `[2, 2^20]`, as Keras files are read.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.function {
            MetricFn::Auc { num_thresholds, .. } if !(2..=1 << 20).contains(&num_thresholds) => {
                Err(ConfigError::invalid(
                    format!("metric `{}` num_thresholds", self.name),
                    num_thresholds,
                    "an integer in [2, 1048576]",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The same metric on model output `output`.
    ///
    /// ```
    /// use grucell::train::metrics::Metric;
    /// assert_eq!(Metric::from_name("mae")?.on_output(1).output, 1);
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn on_output(self, output: usize) -> Metric {
        Metric { output, ..self }
    }

    /// A metric as a Keras compile config holds it: a name, or a serialized metric object
    /// (`{"class_name": "BinaryAccuracy", "config": {"name": …, "threshold": …}}`), named by
    /// its config's `name` as Keras names it.
    ///
    /// ```
    /// use grucell::train::metrics::{AucCurve, Metric, MetricFn};
    /// let v = serde_json::json!({"class_name": "AUC", "config": {"name": "pr", "curve": "PR"}});
    /// let m = Metric::from_keras(&v)?;
    /// assert_eq!(m.name, "pr");
    /// assert!(matches!(m.function, MetricFn::Auc { curve: AucCurve::Pr, num_thresholds: 200, .. }));
    /// // What grucell does not compute is an error naming it.
    /// let m = serde_json::json!({"class_name": "MeanTensor", "config": {}});
    /// assert!(Metric::from_keras(&m).unwrap_err().to_string().contains("MeanTensor"));
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn from_keras(v: &Value) -> Result<Metric, ConfigError> {
        let o = match v {
            Value::String(s) => return Metric::from_name(s),
            Value::Object(o) => o,
            other => {
                return Err(ConfigError::invalid(
                    "metric",
                    other,
                    "a metric name or a serialized Keras metric",
                ))
            }
        };
        let class = o.get("class_name").and_then(Value::as_str).unwrap_or("");
        let config = o.get("config");
        // A metric function (`metrics=[keras.metrics.mae]`) is saved by its name.
        if class == "function" {
            return match config.and_then(Value::as_str) {
                Some(f) => Metric::from_function(f),
                None => Err(ConfigError::invalid(
                    "metric.config",
                    config.unwrap_or(&Value::Null),
                    "the name of a Keras metric function",
                )),
            };
        }
        let empty = Map::new();
        let cfg = config.and_then(Value::as_object).unwrap_or(&empty);
        let name = cfg.get("name").and_then(Value::as_str).unwrap_or(class);
        let named = |function| Metric {
            name: name.to_string(),
            function,
            output: 0,
            auc: AucLists::default(),
        };
        // TF-Keras 2 saves compiled metrics as wrappers of a named function.
        if class == "MeanMetricWrapper" {
            let f = match cfg.get("fn") {
                Some(Value::String(f)) => Some(f.as_str()),
                Some(Value::Object(f)) => f.get("config").and_then(Value::as_str),
                _ => None,
            };
            if let Some(f) = f {
                return Ok(named(Metric::from_function(f)?.function));
            }
        }
        let setting = |k: &str| cfg.get(k).filter(|v| !v.is_null());
        let refuse = |what: String| {
            Err(ConfigError::unsupported(
                "metric",
                format!("`{class}` with {what} is not computed by grucell"),
            ))
        };
        // Keras' `thresholds`: none (0.5), one number, or a list of numbers.
        let thresholds = || -> Result<Thresholds, ConfigError> {
            let bad = |t: &Value| {
                ConfigError::invalid(
                    format!("{class}.thresholds"),
                    t,
                    format!("null, a number, or a list of 1 to {MAX_THRESHOLDS} numbers"),
                )
            };
            match setting("thresholds") {
                None => Ok(Thresholds::one(0.5)),
                Some(v @ Value::Array(a)) => a
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .and_then(|list| Thresholds::new(&list))
                    .ok_or_else(|| bad(v)),
                Some(t) => t.as_f64().map(Thresholds::one).ok_or_else(|| bad(t)),
            }
        };
        let k = || -> Result<usize, ConfigError> {
            Ok(get_u64(cfg, "k")?.map_or(5, |k| usize::try_from(k).unwrap_or(usize::MAX)))
        };
        // `top_k`, `class_id`: null or a whole number.
        let index = |key: &str| -> Result<Option<usize>, ConfigError> {
            Ok(get_u64(cfg, key)?.map(|v| usize::try_from(v).unwrap_or(usize::MAX)))
        };
        let function = match class {
            // A metric class named "Accuracy" is Keras' exact-equality metric, not the
            // string's shape-resolved accuracy.
            "Accuracy" => MetricFn::ExactAccuracy,
            "BinaryCrossentropy"
            | "CategoricalCrossentropy"
            | "SparseCategoricalCrossentropy"
            | "KLDivergence"
            | "Poisson"
            | "Hinge"
            | "SquaredHinge"
            | "CategoricalHinge" => {
                // The metric classes take the loss classes' settings.
                MetricFn::Loss(Loss::from_keras(
                    &serde_json::json!({ "class_name": class, "config": cfg }),
                )?)
            }
            "CosineSimilarity" | "PearsonCorrelation" | "ConcordanceCorrelation" => {
                if let Some(a) = setting("axis").filter(|a| a.as_i64() != Some(-1)) {
                    return refuse(format!("axis {a}"));
                }
                Metric::from_name(class)?.function
            }
            "IoU" | "MeanIoU" | "BinaryIoU" | "OneHotIoU" | "OneHotMeanIoU" => {
                MetricFn::Iou(iou_config(class, cfg)?)
            }
            "SensitivityAtSpecificity"
            | "SpecificityAtSensitivity"
            | "PrecisionAtRecall"
            | "RecallAtPrecision" => {
                let select = Selection {
                    top_k: None,
                    class_id: index("class_id")?,
                };
                let (kind, key) = match class {
                    "SensitivityAtSpecificity" => {
                        (AtPoint::SensitivityAtSpecificity, "specificity")
                    }
                    "SpecificityAtSensitivity" => {
                        (AtPoint::SpecificityAtSensitivity, "sensitivity")
                    }
                    "PrecisionAtRecall" => (AtPoint::PrecisionAtRecall, "recall"),
                    _ => (AtPoint::RecallAtPrecision, "precision"),
                };
                let value = match setting(key).and_then(Value::as_f64) {
                    Some(v) if (0.0..=1.0).contains(&v) => v,
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("{class}.{key}"),
                            setting(key).unwrap_or(&Value::Null),
                            "a number in [0, 1]",
                        ))
                    }
                };
                let num_thresholds = match get_u64(cfg, "num_thresholds")? {
                    None => 200,
                    Some(n) if (2..=1 << 20).contains(&n) => n as usize,
                    // One threshold is Keras' 0.5 alone, not the evenly spread buckets.
                    Some(1) => return refuse("num_thresholds 1".into()),
                    Some(n) => {
                        return Err(ConfigError::invalid(
                            format!("{class}.num_thresholds"),
                            n,
                            "an integer in [2, 1048576]",
                        ))
                    }
                };
                MetricFn::AtPoint {
                    kind,
                    value,
                    num_thresholds,
                    select,
                }
            }
            "F1Score" | "FBetaScore" => {
                let average = match setting("average") {
                    None => FAverage::PerClass,
                    Some(Value::String(a)) if a == "micro" => FAverage::Micro,
                    Some(Value::String(a)) if a == "macro" => FAverage::Macro,
                    Some(Value::String(a)) if a == "weighted" => FAverage::Weighted,
                    Some(other) => {
                        return Err(ConfigError::invalid(
                            format!("{class}.average"),
                            other,
                            "null, \"micro\", \"macro\" or \"weighted\"",
                        ))
                    }
                };
                let beta = if class == "F1Score" {
                    1.0
                } else {
                    get_f64(cfg, "beta", 1.0)?
                };
                if !(beta.is_finite() && beta > 0.0) {
                    return Err(ConfigError::invalid(
                        format!("{class}.beta"),
                        beta,
                        "a number greater than 0",
                    ));
                }
                let threshold = match setting("threshold") {
                    None => None,
                    Some(t) => match t.as_f64() {
                        Some(t) if (0.0..=1.0).contains(&t) && t > 0.0 => Some(t),
                        _ => {
                            return Err(ConfigError::invalid(
                                format!("{class}.threshold"),
                                t,
                                "null or a number in (0, 1]",
                            ))
                        }
                    },
                };
                MetricFn::FBeta {
                    beta,
                    average,
                    threshold,
                }
            }
            "TopKCategoricalAccuracy" => MetricFn::TopKCategoricalAccuracy { k: k()? },
            "SparseTopKCategoricalAccuracy" => {
                if get_bool(cfg, "from_sorted_ids", false)? {
                    return refuse("`from_sorted_ids`".into());
                }
                MetricFn::SparseTopKCategoricalAccuracy { k: k()? }
            }
            "BinaryAccuracy" => MetricFn::BinaryAccuracy {
                threshold: get_f64(cfg, "threshold", 0.5)?,
            },
            "Precision" | "Recall" => {
                let select = Selection {
                    top_k: index("top_k")?,
                    class_id: index("class_id")?,
                };
                if select.top_k == Some(0) {
                    return Err(ConfigError::invalid(
                        format!("{class}.top_k"),
                        0,
                        "null or a positive integer",
                    ));
                }
                // Keras' default threshold with `top_k` is its `NEG_INF`: every entry kept is a
                // positive, every other (set to `NEG_INF`) a negative.
                let thresholds = match (setting("thresholds"), select.top_k) {
                    (None, Some(_)) => Thresholds::one(TOP_K_OUT),
                    _ => thresholds()?,
                };
                if class == "Precision" {
                    MetricFn::Precision { thresholds, select }
                } else {
                    MetricFn::Recall { thresholds, select }
                }
            }
            "TruePositives" | "FalsePositives" | "TrueNegatives" | "FalseNegatives" => {
                let thresholds = thresholds()?;
                match Metric::from_name(class)?.function {
                    MetricFn::Count { count, .. } => MetricFn::Count { count, thresholds },
                    f => f,
                }
            }
            "R2Score" => {
                let aggregation = match cfg.get("class_aggregation") {
                    None => R2Aggregation::Uniform,
                    Some(Value::String(a)) if a == "uniform_average" => R2Aggregation::Uniform,
                    Some(Value::String(a)) if a == "variance_weighted_average" => {
                        R2Aggregation::VarianceWeighted
                    }
                    Some(Value::Null) => R2Aggregation::PerColumn,
                    Some(other) => {
                        return Err(ConfigError::invalid(
                            "R2Score.class_aggregation",
                            other,
                            "null, \"uniform_average\" or \"variance_weighted_average\"",
                        ))
                    }
                };
                let num_regressors = get_u64(cfg, "num_regressors")?.unwrap_or(0);
                MetricFn::R2Score {
                    aggregation,
                    num_regressors: usize::try_from(num_regressors).unwrap_or(usize::MAX),
                }
            }
            "AUC" => {
                let label_weights = match auc_list(setting("label_weights"), "label_weights")? {
                    Some(w) if w.is_empty() => {
                        return Err(ConfigError::invalid(
                            "AUC.label_weights",
                            "[]",
                            "one weight per label, or one for all",
                        ))
                    }
                    w => w,
                };
                let given = auc_list(setting("thresholds"), "thresholds")?;
                let (num_thresholds, thresholds) = match given {
                    Some(t) => (t.len() + 2, uneven_auc_thresholds(t)),
                    None => match get_u64(cfg, "num_thresholds")? {
                        None => (200, None),
                        Some(n) if (2..=1 << 20).contains(&n) => (n as usize, None),
                        Some(n) => {
                            return Err(ConfigError::invalid(
                                "AUC.num_thresholds",
                                n,
                                "an integer in [2, 1048576]",
                            ))
                        }
                    },
                };
                let lists = AucLists {
                    thresholds,
                    label_weights,
                };
                let text = |k: &str, default: &str| -> String {
                    cfg.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                let curve = match text("curve", "ROC").to_uppercase().as_str() {
                    "ROC" => AucCurve::Roc,
                    "PR" => AucCurve::Pr,
                    "PRGAIN" => AucCurve::PrGain,
                    other => {
                        return Err(ConfigError::invalid(
                            "AUC.curve",
                            other,
                            "\"ROC\", \"PR\" or \"PRGAIN\"",
                        ))
                    }
                };
                let summation = match text("summation_method", "interpolation")
                    .to_lowercase()
                    .as_str()
                {
                    "interpolation" => AucSummation::Interpolation,
                    "minoring" => AucSummation::Minoring,
                    "majoring" => AucSummation::Majoring,
                    other => {
                        return Err(ConfigError::invalid(
                            "AUC.summation_method",
                            other,
                            "\"interpolation\", \"minoring\" or \"majoring\"",
                        ))
                    }
                };
                let function = MetricFn::Auc {
                    num_thresholds,
                    curve,
                    summation,
                    from_logits: get_bool(cfg, "from_logits", false)?,
                    multi_label: get_bool(cfg, "multi_label", false)?,
                };
                return Ok(Metric {
                    auc: lists,
                    ..named(function)
                });
            }
            _ => Metric::from_name(class)?.function,
        };
        Ok(named(function))
    }

    /// A metric function by its name, as Keras 3 saves `metrics=[keras.metrics.mae]` and
    /// TF-Keras 2 the function of a `MeanMetricWrapper`, with that name. The function
    /// `accuracy` is exact equality; TF-Keras 2 also names `kl_divergence` and `log_cosh`
    /// `kld`/`kullback_leibler_divergence` and `logcosh`.
    fn from_function(f: &str) -> Result<Metric, ConfigError> {
        let function = match f {
            "accuracy" => MetricFn::ExactAccuracy,
            "kld" | "KLD" | "kullback_leibler_divergence" => MetricFn::Loss(Loss::KlDivergence),
            "logcosh" | "log_cosh" => MetricFn::Loss(Loss::LogCosh),
            f => Metric::from_name(f)?.function,
        };
        Ok(Metric {
            name: f.to_string(),
            function,
            output: 0,
            auc: AucLists::default(),
        })
    }

    /// This metric with `Accuracy` resolved for targets of shape `y_true` and outputs of shape
    /// `y_pred`, as Keras' `is_binary_or_sparse_categorical`.
    pub fn resolved(&self, y_true: &[usize], y_pred: &[usize]) -> Metric {
        let function = match self.function {
            MetricFn::Accuracy => {
                let (t_last, p_last) = (y_true.last().copied(), y_pred.last().copied());
                if p_last == Some(1) {
                    MetricFn::BinaryAccuracy { threshold: 0.5 }
                } else if y_true.len() < y_pred.len()
                    || (t_last == Some(1) && p_last.is_some_and(|p| p > 1))
                {
                    MetricFn::SparseCategoricalAccuracy
                } else {
                    MetricFn::CategoricalAccuracy
                }
            }
            f => f,
        };
        Metric {
            name: self.name.clone(),
            function,
            output: self.output,
            auc: self.auc.clone(),
        }
    }
}

/// The running state of one metric: Keras' `Mean` with its `total` and `count`, or the
/// confusion counts of the threshold metrics.
#[derive(Clone, Debug)]
pub(crate) struct MetricState<T> {
    pub(crate) metric: Metric,
    /// Takes the sample weights (a `weighted_metrics` entry).
    pub(crate) weighted: bool,
    resolved: Option<MetricFn>,
    total: T,
    count: T,
    /// AUC's counts per threshold (true positives, false positives, true negatives, false
    /// negatives), or R²'s sums per output column (of `y`, of `y²`, of `(y − ŷ)²`, of the
    /// weights).
    sums: Vec<[T; 4]>,
    /// R²'s count of entries (Keras' `num_samples`).
    entries: T,
    /// An IoU metric's confusion matrix, `[true][predicted]`, in `f64` (exact for Keras'
    /// integer weights).
    cm: Vec<f64>,
}

impl<T: Float> MetricState<T> {
    pub(crate) fn new(metric: Metric, weighted: bool) -> Self {
        let metric_fn = metric.function;
        let sums = match metric.function {
            MetricFn::Auc {
                num_thresholds,
                multi_label: false,
                ..
            }
            | MetricFn::AtPoint { num_thresholds, .. } => vec![[T::zero(); 4]; num_thresholds],
            _ => Vec::new(),
        };
        MetricState {
            metric,
            weighted,
            resolved: None,
            total: T::zero(),
            count: T::zero(),
            sums,
            entries: T::zero(),
            cm: match metric_fn {
                MetricFn::Iou(c) => vec![0.0; c.num_classes * c.num_classes],
                _ => Vec::new(),
            },
        }
    }

    /// `reset_state`.
    pub(crate) fn reset(&mut self) {
        self.total = T::zero();
        self.count = T::zero();
        self.sums.iter_mut().for_each(|c| *c = [T::zero(); 4]);
        self.entries = T::zero();
        self.cm.iter_mut().for_each(|c| *c = 0.0);
    }

    /// `result`: `total / count`, 0 when nothing was counted (`divide_no_nan`); its square
    /// root for `RootMeanSquaredError`, the count itself for a confusion count, the area for
    /// AUC.
    pub(crate) fn result(&self) -> f64 {
        let r = divide_no_nan(self.total, self.count);
        match self.resolved {
            Some(MetricFn::RootMeanSquaredError) => r.sqrt().f64(),
            Some(MetricFn::Count { .. }) => self.total.f64(),
            Some(MetricFn::Auc {
                curve,
                summation,
                num_thresholds,
                multi_label: true,
                ..
            }) => {
                // Keras' mean of the labels' areas, weighted by `label_weights` if any
                // (`divide_no_nan`: 0 when they sum to 0).
                let labels = self.sums.chunks(num_thresholds.max(1));
                let n = labels.len();
                match &self.metric.auc.label_weights {
                    Some(lw) => {
                        let (mut sum, mut total) = (T::zero(), T::zero());
                        for (j, c) in labels.enumerate() {
                            let w = T::of(lw.get(j % lw.len().max(1)).copied().unwrap_or(1.0));
                            sum += auc(c, curve, summation) * w;
                            total += w;
                        }
                        divide_no_nan(sum, total).f64()
                    }
                    None => {
                        let mut sum = T::zero();
                        for c in labels {
                            sum += auc(c, curve, summation);
                        }
                        (sum / T::of(n.max(1) as f64)).f64()
                    }
                }
            }
            Some(MetricFn::Auc {
                curve, summation, ..
            }) => auc(&self.sums, curve, summation).f64(),
            Some(MetricFn::R2Score {
                aggregation,
                num_regressors,
            }) => r2(&self.sums, self.entries, aggregation, num_regressors).f64(),
            Some(MetricFn::FBeta { beta, average, .. }) => fbeta(&self.sums, beta, average).f64(),
            Some(MetricFn::Iou(c)) => iou(&self.cm, &c),
            Some(MetricFn::AtPoint { kind, value, .. }) => at_point(&self.sums, kind, value).f64(),
            _ => r.f64(),
        }
    }

    /// [`Self::result`], or each class's (column's) score where Keras' result is one per class:
    /// `F1Score`/`FBetaScore` with `average=None` and `R2Score` with `class_aggregation=None`,
    /// on more than one column (on one column Keras' one-element result is that score); or one
    /// value per threshold for `Precision`, `Recall` and the confusion counts given several.
    pub(crate) fn value(&self) -> MetricValue {
        let per_class = match self.resolved {
            Some(MetricFn::FBeta {
                beta,
                average: FAverage::PerClass,
                ..
            }) => fbeta_per_class(&self.sums, beta),
            Some(MetricFn::R2Score {
                aggregation: R2Aggregation::PerColumn,
                num_regressors,
            }) => r2_per_column(&self.sums, self.entries, num_regressors),
            Some(f @ (MetricFn::Precision { .. } | MetricFn::Recall { .. }))
                if self.sums.len() > 1 =>
            {
                // Keras' `divide_no_nan(tp, tp + fp)` (precision) or `(tp, tp + fn)` (recall).
                let other = if matches!(f, MetricFn::Precision { .. }) {
                    1
                } else {
                    3
                };
                self.sums
                    .iter()
                    .map(|c| divide_no_nan(c[0], c[0] + c[other]))
                    .collect()
            }
            Some(MetricFn::Count { count, .. }) if self.sums.len() > 1 => {
                let k = match count {
                    Confusion::TruePositives => 0,
                    Confusion::FalsePositives => 1,
                    Confusion::TrueNegatives => 2,
                    Confusion::FalseNegatives => 3,
                };
                self.sums.iter().map(|c| c[k]).collect()
            }
            _ => Vec::new(),
        };
        if per_class.len() > 1 {
            MetricValue::PerClass(per_class.iter().map(|v| v.f64()).collect())
        } else {
            MetricValue::Scalar(self.result())
        }
    }

    /// `update_state(y_true, y_pred, sample_weight)` for one batch. `sample_weight` holds one
    /// weight per loss term (per sample, or per sample and step), as the loss takes them; it is
    /// used by weighted metrics only. `mask` is the output's mask (sequence outputs); `logits`
    /// the input of the output's `sigmoid`/`softmax` activation, which crossentropies read.
    pub(crate) fn update(
        &mut self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        mask: Option<&Mask>,
        logits: Option<(Activation, &Tensor<T>)>,
        sample_weight: Option<&[T]>,
    ) -> Result<(), Error> {
        let function = match self.resolved {
            Some(f) => f,
            None => {
                let f = self
                    .metric
                    .resolved(y_true.shape(), y_pred.shape())
                    .function;
                self.resolved = Some(f);
                f
            }
        };
        let sw = sample_weight.filter(|_| self.weighted);
        if let MetricFn::R2Score { .. } = function {
            return self.update_r2(y_true, y_pred, sw);
        }
        if let MetricFn::FBeta {
            average, threshold, ..
        } = function
        {
            return self.update_fbeta(y_true, y_pred, sw, average, threshold);
        }
        if let MetricFn::Iou(c) = function {
            return self.update_iou(y_true, y_pred, sw, &c);
        }
        let values = metric_values(function, &self.metric.name, y_true, y_pred, logits)?;
        let n = y_pred.shape().first().copied().unwrap_or(1).max(1);
        let per = values.len() / n;
        // Weights per sample: none, one, or one per step (mask and/or step weights). Keras'
        // plain `Mean` and confusion-matrix metrics do not see the output mask.
        let confusion = matches!(
            function,
            MetricFn::Precision { .. }
                | MetricFn::Recall { .. }
                | MetricFn::Count { .. }
                | MetricFn::Auc { .. }
                | MetricFn::AtPoint { .. }
        );
        let wrapper = !confusion && function != MetricFn::RootMeanSquaredError;
        let mask =
            mask.filter(|m| wrapper && y_pred.shape().len() == 3 && m.data.len() == n * m.time);
        if mask.is_none() && sw.is_none() && !confusion {
            for v in values.chunks(per.max(1)) {
                self.total += mean(v);
            }
            self.count += T::of(n as f64);
            return Ok(());
        }
        let steps = mask.map(|m| m.time);
        let sw_per = sw.map_or(1, |w| w.len() / n);
        // The weights' own layout: per step where the mask or the weights are.
        let w_per = steps.unwrap_or(sw_per).max(sw_per).max(1);
        if per % w_per != 0 || sw.is_some_and(|w| w.len() != n * sw_per) {
            return Err(ShapeError::mismatch(
                format!("metric `{}` weights", self.metric.name),
                [sw.map_or(0, <[T]>::len)].as_slice(),
                format!("{n} samples of {w_per} weights for {per} values each"),
            )
            .into());
        }
        let each = per / w_per;
        if let MetricFn::Auc {
            num_thresholds,
            from_logits,
            multi_label: true,
            ..
        } = function
        {
            let labels = self.two_d(
                y_true,
                y_pred,
                sw,
                "(batch, labels)",
                "AUC with multi_label",
            )?;
            let counts = num_thresholds.saturating_mul(labels);
            if counts > AUC_MAX_COUNTS {
                return Err(ConfigError::invalid(
                    format!("metric `{}` with multi_label", self.metric.name),
                    format!("{num_thresholds} thresholds × {labels} labels"),
                    format!("at most {AUC_MAX_COUNTS} counts"),
                )
                .into());
            }
            if self.sums.len() != counts {
                self.sums = vec![[T::zero(); 4]; counts];
            }
            self.label_weights(labels)?;
            let (t, p) = (y_true.data(), y_pred.data());
            let at = self.metric.auc.thresholds.as_deref();
            for (j, sums) in self.sums.chunks_mut(num_thresholds).enumerate() {
                let entries = (0..n).map(|s| {
                    let i = s * labels + j;
                    let w = sw.map_or(T::one(), |w| w[s]);
                    (t[i] != T::zero(), p[i], w)
                });
                match at {
                    Some(at) => add_auc_counts_at(sums, at, from_logits, entries),
                    None => add_auc_counts(sums, from_logits, true, entries),
                }
            }
            return Ok(());
        }
        if confusion {
            let select = function.selection();
            let last = y_pred.shape().last().copied().unwrap_or(1).max(1);
            if let Some((key, v)) = select.beyond(last) {
                let bound = if key == "class_id" {
                    "below"
                } else {
                    "at most"
                };
                return Err(ConfigError::invalid(
                    format!("metric `{}` {key}", self.metric.name),
                    v,
                    format!("{bound} {last}, the output's last axis"),
                )
                .into());
            }
            let kept = select.top_k.map(|k| top_k_kept(y_pred.data(), last, k));
            // AUC's `label_weights` scale each entry's weight by its label's (the last axis).
            let label_weights = match function {
                MetricFn::Auc { .. } => self.label_weights(last)?,
                _ => None,
            };
            // Per entry: its label, prediction and weight.
            let entries = y_true
                .data()
                .iter()
                .zip(y_pred.data())
                .enumerate()
                .filter(|(i, _)| select.class_id.is_none_or(|c| i % last == c))
                .map(|(i, (&label, &pred))| {
                    let (s, j) = (i / per, (i % per) / each);
                    let mut w = sw.map_or(T::one(), |w| w[s * sw_per + j * sw_per / w_per]);
                    if let Some(lw) = label_weights.as_ref().filter(|lw| !lw.is_empty()) {
                        w *= lw[(i % last) % lw.len()];
                    }
                    // Keras: `x · mask + NEG_INF · (1 − mask)`.
                    let pred = match &kept {
                        Some(kept) if !kept[i] => pred * T::zero() + T::of(TOP_K_OUT),
                        _ => pred,
                    };
                    (label != T::zero(), pred, w)
                });
            self.count_confusion(function, entries);
            return Ok(());
        }
        for s in 0..n {
            let (mut vw, mut ws) = (T::zero(), T::zero());
            for j in 0..w_per {
                let mut w = T::one();
                if let Some(m) = mask {
                    let t = j * m.time / w_per;
                    if !m.data[s * m.time + t] {
                        w = T::zero();
                    }
                }
                if let Some(sw) = sw {
                    w *= sw[s * sw_per + j * sw_per / w_per];
                }
                for v in &values[(s * w_per + j) * each..(s * w_per + j + 1) * each] {
                    vw += *v * w;
                    ws += w;
                }
            }
            let size = T::of(per as f64);
            self.total += vw / size;
            self.count += ws / size;
        }
        Ok(())
    }

    /// Checks the batch of a metric Keras builds for 2-D outputs only (`what`, e.g. `(batch,
    /// outputs)`, as Keras' `class` takes them): outputs of rank 2, targets of the same size,
    /// one weight per sample. Returns the outputs' columns.
    fn two_d(
        &self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        sample_weight: Option<&[T]>,
        what: &str,
        class: &str,
    ) -> Result<usize, Error> {
        let (shape, name) = (y_pred.shape(), &self.metric.name);
        let [rows, cols] = *shape else {
            return Err(ShapeError::mismatch(
                format!("metric `{name}` outputs"),
                shape,
                format!("2-D outputs {what}, as Keras' {class} takes"),
            )
            .into());
        };
        if y_true.len() != y_pred.len() {
            return Err(ShapeError::mismatch(
                format!("metric `{name}` targets"),
                y_true.shape(),
                format!("the output's shape {shape:?}"),
            )
            .into());
        }
        if sample_weight.is_some_and(|w| w.len() != rows) {
            return Err(ShapeError::mismatch(
                format!("metric `{name}` weights"),
                [sample_weight.map_or(0, <[T]>::len)].as_slice(),
                format!("one weight per sample of {rows}"),
            )
            .into());
        }
        Ok(cols)
    }

    /// R²'s sums of one batch: `(batch, outputs)` targets and outputs, one weight per sample.
    fn update_r2(
        &mut self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        sample_weight: Option<&[T]>,
    ) -> Result<(), Error> {
        let cols = self.two_d(y_true, y_pred, sample_weight, "(batch, outputs)", "R2Score")?;
        if self.sums.len() != cols {
            self.sums = vec![[T::zero(); 4]; cols];
        }
        for (r, (t, p)) in y_true
            .data()
            .chunks(cols.max(1))
            .zip(y_pred.data().chunks(cols.max(1)))
            .enumerate()
        {
            let w = sample_weight.map_or(T::one(), |w| w[r]);
            for ((s, &y), &q) in self.sums.iter_mut().zip(t).zip(p) {
                let wy = y * w;
                s[0] += wy;
                s[1] += y * wy;
                s[2] += (y - q) * (y - q) * w;
                s[3] += w;
            }
        }
        self.entries += T::of(y_true.len() as f64);
        Ok(())
    }

    /// F-beta's sums of one batch, as Keras' `FBetaScore.update_state`: `(batch, classes)`
    /// targets and outputs, one weight per sample; per class (one sum for `micro`) the batch's
    /// `Σ w·p·y`, `Σ w·p·(1 − y)`, `Σ w·(1 − p)·y` and `Σ w·y`, with `p` the 0/1 prediction, then
    /// added to the running sums.
    fn update_fbeta(
        &mut self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        sample_weight: Option<&[T]>,
        average: FAverage,
        threshold: Option<f64>,
    ) -> Result<(), Error> {
        let cols = self.two_d(
            y_true,
            y_pred,
            sample_weight,
            "(batch, classes)",
            "FBetaScore",
        )?;
        let slots = if average == FAverage::Micro { 1 } else { cols };
        if self.sums.len() != slots {
            self.sums = vec![[T::zero(); 4]; slots];
        }
        let mut batch = vec![[T::zero(); 4]; slots];
        let tiny = T::of(1e-9);
        for (r, (t, p)) in y_true
            .data()
            .chunks(cols.max(1))
            .zip(y_pred.data().chunks(cols.max(1)))
            .enumerate()
        {
            let top = p.iter().copied().fold(T::neg_infinity(), T::max);
            let w = sample_weight.map_or(T::one(), |w| w[r]);
            for (j, (&y, &q)) in t.iter().zip(p).enumerate() {
                let positive = match threshold {
                    Some(th) => q > T::of(th),
                    None => q >= top && q.abs() > tiny,
                };
                let p = if positive { T::one() } else { T::zero() };
                let s = &mut batch[j % slots];
                s[0] += p * y * w;
                s[1] += p * (T::one() - y) * w;
                s[2] += (T::one() - p) * y * w;
                s[3] += y * w;
            }
        }
        for (s, b) in self.sums.iter_mut().zip(&batch) {
            for k in 0..4 {
                s[k] += b[k];
            }
        }
        Ok(())
    }

    /// An IoU metric's `update_state` for one batch: each entry's true and predicted class, its
    /// weight (the sample weights broadcast over the entries, as Keras broadcasts them), and
    /// the confusion matrix count. Entries whose classes are outside `[0, num_classes)`, or
    /// whose true class is `ignore_class`, count 0.
    fn update_iou(
        &mut self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        sample_weight: Option<&[T]>,
        c: &IouConfig,
    ) -> Result<(), Error> {
        let name = &self.metric.name;
        let last = |t: &Tensor<T>| t.shape().last().copied().unwrap_or(1).max(1);
        // Class ids, one per entry (arg-max over the last axis where one-hot).
        let classes = |t: &Tensor<T>, sparse: bool, threshold: Option<f64>| -> Vec<f64> {
            let d = t.data();
            if let Some(th) = threshold {
                // BinaryIoU: compared in float32, as Keras converts the outputs.
                let th = th as f32;
                return d
                    .iter()
                    .map(|v| f64::from(u8::from(v.f64() as f32 >= th)))
                    .collect();
            }
            if sparse {
                // Keras casts to its integer dtype, truncating.
                return d.iter().map(|v| v.f64().trunc()).collect();
            }
            d.chunks(last(t)).map(|row| argmax(row) as f64).collect()
        };
        let truth = classes(y_true, c.sparse_true || c.threshold.is_some(), None);
        let pred = classes(y_pred, c.sparse_pred, c.threshold);
        if truth.len() != pred.len() {
            return Err(ShapeError::mismatch(
                format!("metric `{name}` targets"),
                y_true.shape(),
                format!(
                    "{} class ids, one per entry of the output {:?}",
                    pred.len(),
                    y_pred.shape()
                ),
            )
            .into());
        }
        let n = truth.len();
        let weights: Option<Vec<f64>> = match sample_weight {
            None => None,
            Some(w) if w.len() == n || w.len() == 1 => Some(
                (0..n)
                    .map(|i| {
                        let v = w[if w.len() == 1 { 0 } else { i }].f64();
                        if c.integer {
                            v.trunc()
                        } else {
                            v
                        }
                    })
                    .collect(),
            ),
            Some(w) => {
                return Err(ShapeError::mismatch(
                    format!("metric `{name}` weights"),
                    [w.len()].as_slice(),
                    format!("one weight per class id ({n}), as Keras broadcasts them"),
                )
                .into())
            }
        };
        let k = c.num_classes;
        let in_range = |v: f64| v >= 0.0 && v < k as f64;
        for i in 0..n {
            let (t, p) = (truth[i], pred[i]);
            if !in_range(t) || !in_range(p) || c.ignore_class.is_some_and(|g| g as f64 == t) {
                continue;
            }
            let w = weights.as_ref().map_or(1.0, |w| w[i]);
            self.cm[t as usize * k + p as usize] += w;
        }
        Ok(())
    }

    /// Adds one batch's weighted confusion counts: `(y ≠ 0, ŷ, weight)` per entry.
    /// AUC's `label_weights` for outputs of `labels` labels (the last axis), in `T`: as Keras
    /// broadcasts them, one per label or a single one for all.
    fn label_weights(&self, labels: usize) -> Result<Option<Vec<T>>, Error> {
        let Some(lw) = &self.metric.auc.label_weights else {
            return Ok(None);
        };
        if lw.len() != labels && lw.len() != 1 {
            return Err(ShapeError::mismatch(
                format!("metric `{}` label_weights", self.metric.name),
                [lw.len()].as_slice(),
                format!("one weight per label of the output's last axis ({labels}), or one"),
            )
            .into());
        }
        Ok(Some(lw.iter().map(|&w| T::of(w)).collect()))
    }

    fn count_confusion(&mut self, function: MetricFn, entries: impl Iterator<Item = (bool, T, T)>) {
        match function {
            MetricFn::Precision { thresholds, .. }
            | MetricFn::Recall { thresholds, .. }
            | MetricFn::Count { thresholds, .. }
                if thresholds.len > 1 =>
            {
                // Counts per threshold (`[tp, fp, tn, fn]`), as AUC's general path keeps them.
                let t = thresholds.as_slice();
                if self.sums.len() != t.len() {
                    self.sums = vec![[T::zero(); 4]; t.len()];
                }
                add_auc_counts_at(&mut self.sums, t, false, entries);
            }
            MetricFn::Precision { thresholds, .. } | MetricFn::Recall { thresholds, .. } => {
                // `total` true positives, `count` those plus the false positives (precision)
                // or the false negatives (recall).
                let th = T::of(thresholds.values[0]);
                let precision = matches!(function, MetricFn::Precision { .. });
                for (actual, pred, w) in entries {
                    let predicted = pred > th;
                    if actual && predicted {
                        self.total += w;
                        self.count += w;
                    } else if (predicted && !actual && precision)
                        || (actual && !predicted && !precision)
                    {
                        self.count += w;
                    }
                }
            }
            MetricFn::Count { count, thresholds } => {
                let th = T::of(thresholds.values[0]);
                for (actual, pred, w) in entries {
                    // Keras' `logical_not(pred > threshold)`: a NaN prediction is negative.
                    let positive = pred > th;
                    let hit = match count {
                        Confusion::TruePositives => actual && positive,
                        Confusion::FalsePositives => !actual && positive,
                        Confusion::TrueNegatives => !actual && !positive,
                        Confusion::FalseNegatives => actual && !positive,
                    };
                    if hit {
                        self.total += w;
                    }
                }
            }
            MetricFn::Auc { from_logits, .. } => match self.metric.auc.thresholds.as_deref() {
                Some(t) => add_auc_counts_at(&mut self.sums, t, from_logits, entries),
                None => add_auc_counts(&mut self.sums, from_logits, true, entries),
            },
            MetricFn::AtPoint { .. } => add_auc_counts(&mut self.sums, false, false, entries),
            _ => {}
        }
    }
}

/// Most values in an AUC list setting (as `num_thresholds`).
const AUC_MAX_LIST: usize = 1 << 20;

/// An AUC list setting (`thresholds`, `label_weights`): a list of finite numbers, or Keras'
/// serialized tensor of one (`{"class_name": "__tensor__", "config": {"value": [...]}}`).
fn auc_list(v: Option<&Value>, key: &str) -> Result<Option<Vec<f64>>, ConfigError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let list = tensor_value(v).unwrap_or(v);
    let bad = || {
        ConfigError::invalid(
            format!("AUC.{key}"),
            v,
            format!("a list of at most {AUC_MAX_LIST} finite numbers"),
        )
    };
    match list {
        Value::Array(a) if a.len() <= AUC_MAX_LIST => a
            .iter()
            .map(|x| x.as_f64().filter(|f| f.is_finite()).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(bad()),
    }
}

/// Keras' `backend.epsilon()`, which AUC puts below and above its thresholds.
const AUC_EPSILON: f64 = 1e-7;

/// AUC's thresholds from a `thresholds` list as Keras builds them: sorted; `None` when
/// `[0, …, 1]` around them is evenly spread (Keras' `is_evenly_distributed_thresholds`:
/// `np.allclose` against `arange(n) / (n − 1)` in `f32`, tolerance `ε + 1e-5·|even|`), for then
/// Keras counts them as `num_thresholds` evenly spread ones; else `−ε`, the values, `1 + ε`,
/// rounded to `f32`.
fn uneven_auc_thresholds(mut given: Vec<f64>) -> Option<Vec<f64>> {
    given.sort_by(f64::total_cmp);
    let n = given.len() + 2;
    let around = std::iter::once(0.0)
        .chain(given.iter().copied())
        .chain([1.0]);
    let even = (0..n).map(|j| f64::from(j as f32 / (n - 1) as f32));
    if n >= 3
        && around
            .zip(even)
            .all(|(t, e)| (t - e).abs() <= AUC_EPSILON + 1e-5 * e.abs())
    {
        return None;
    }
    let ends = [0.0 - AUC_EPSILON, 1.0 + AUC_EPSILON];
    let all = std::iter::once(ends[0]).chain(given).chain([ends[1]]);
    Some(all.map(|t| f64::from(t as f32)).collect())
}

/// What Keras' `_filter_top_k` gives the entries outside a row's `top_k` (its `NEG_INF`).
const TOP_K_OUT: f64 = -1e10;

/// Whether each entry of `pred` (rows of `last`) is among its row's `k` largest (TensorFlow's
/// `top_k`: of equal values the first come first; NaN below every number).
fn top_k_kept<T: Float>(pred: &[T], last: usize, k: usize) -> Vec<bool> {
    let mut kept = vec![false; pred.len()];
    let mut order: Vec<usize> = Vec::with_capacity(last);
    for (row, out) in pred.chunks(last).zip(kept.chunks_mut(last)) {
        order.clear();
        order.extend(0..row.len());
        // Stable: equal values keep their order.
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a], row[b]);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
            }
        });
        for &j in order.iter().take(k) {
            out[j] = true;
        }
    }
    kept
}

/// [`add_auc_counts`] for AUC's explicit, unevenly spread `thresholds` (Keras' general path):
/// an entry counts as positive at each threshold its prediction exceeds, unclipped; a NaN
/// prediction at none.
fn add_auc_counts_at<T: Float>(
    sums: &mut [[T; 4]],
    thresholds: &[f64],
    from_logits: bool,
    entries: impl Iterator<Item = (bool, T, T)>,
) {
    let t: Vec<T> = thresholds
        .iter()
        .take(sums.len())
        .map(|&v| T::of(v))
        .collect();
    // Ascending thresholds (always, unless some given ones lie outside [−ε, 1 + ε]): an entry is
    // positive at a leading run of them, so it goes into the bucket of that run's length.
    let ascending = t.windows(2).all(|w| w[0] <= w[1]);
    let mut runs = vec![[T::zero(); 2]; t.len() + 1];
    let (mut pos, mut neg) = (T::zero(), T::zero());
    for (actual, pred, w) in entries {
        let p = probability(pred, from_logits);
        if actual {
            pos += w;
        } else {
            neg += w;
        }
        if ascending {
            runs[t.partition_point(|&ti| p > ti)][usize::from(!actual)] += w;
        } else {
            for (c, &ti) in sums.iter_mut().zip(&t) {
                let k = match (actual, p > ti) {
                    (true, true) => 0,
                    (false, true) => 1,
                    (false, false) => 2,
                    (true, false) => 3,
                };
                c[k] += w;
            }
        }
    }
    if ascending {
        add_bucket_counts(sums, &runs[1..], pos, neg);
    }
}

/// Keras' `divide_no_nan`: `a / b`, 0 where `b` is 0.
fn divide_no_nan<T: Float>(a: T, b: T) -> T {
    if b == T::zero() {
        T::zero()
    } else {
        a / b
    }
}

/// An AUC prediction: `ŷ`, or its sigmoid with `from_logits`.
fn probability<T: Float>(pred: T, from_logits: bool) -> T {
    if from_logits {
        Activation::Sigmoid.apply(pred)
    } else {
        pred
    }
}

/// Adds one batch's AUC counts per threshold (`[tp, fp, tn, fn]` in `sums`, one per threshold)
/// from its entries `(y ≠ 0, ŷ, weight)`. `with_epsilon`: the thresholds run from −ε to 1 + ε
/// (AUC's), not from 0 to 1 (the rates at a point).
fn add_auc_counts<T: Float>(
    sums: &mut [[T; 4]],
    from_logits: bool,
    with_epsilon: bool,
    entries: impl Iterator<Item = (bool, T, T)>,
) {
    // Keras' evenly spread thresholds: `−ε, 1/(n−1), …, (n−2)/(n−1), 1 + ε`. A
    // prediction clipped to [0, 1] falls in bucket `max(⌈ŷ·(n−1)⌉ − 1, 0)` and
    // counts as positive at every threshold up to its bucket; the batch's bucket
    // sums are then summed from the top.
    let n = sums.len();
    if n == 0 {
        return;
    }
    let scale = T::of(n as f64 - 1.0);
    let mut buckets = vec![[T::zero(); 2]; n];
    let (mut pos, mut neg) = (T::zero(), T::zero());
    for (actual, pred, w) in entries {
        let p = probability(pred, from_logits);
        // NaN predictions land in bucket 0, as TensorFlow's cast of NaN does here.
        let b = if p.is_nan() {
            Some(0)
        } else {
            let b = (p.max(T::zero()).min(T::one()) * scale).ceil().f64() - 1.0;
            match b {
                // A prediction of 0 (or below) is positive at no threshold of `[0, …, 1]`:
                // Keras' bucket −1, left out of every bucket; AUC's first threshold is −ε.
                b if b < 0.0 => with_epsilon.then_some(0),
                b => Some((b as usize).min(n - 1)),
            }
        };
        if let Some(b) = b {
            buckets[b][usize::from(!actual)] += w;
        }
        if actual {
            pos += w;
        } else {
            neg += w;
        }
    }
    add_bucket_counts(sums, &buckets, pos, neg);
}

/// Adds one batch's counts per threshold to `sums` (`[tp, fp, tn, fn]`) from `buckets`: the
/// weight of the positive and of the negative entries whose last positive threshold is each one
/// (they are positive at it and every threshold before it); `pos` and `neg` are the batch's
/// total weights of each label. Summed from the top threshold down.
fn add_bucket_counts<T: Float>(sums: &mut [[T; 4]], buckets: &[[T; 2]], pos: T, neg: T) {
    let (mut tp, mut fp) = (T::zero(), T::zero());
    for (c, b) in sums.iter_mut().zip(buckets).rev() {
        tp += b[0];
        fp += b[1];
        c[0] += tp;
        c[1] += fp;
        c[2] += neg - fp;
        c[3] += pos - tp;
    }
}

/// Keras' `AUC.result` from the counts per threshold (`[tp, fp, tn, fn]`), in its order of
/// operations.
fn auc<T: Float>(c: &[[T; 4]], curve: AucCurve, summation: AucSummation) -> T {
    let zero = T::zero();
    let mut sum = zero;
    if curve == AucCurve::Pr && summation == AucSummation::Interpolation {
        for w in c.windows(2) {
            let ([tp0, fp0, _, _], [tp1, fp1, _, fn1]) = (w[0], w[1]);
            let dtp = tp0 - tp1;
            let (p0, p1) = (tp0 + fp0, tp1 + fp1);
            let slope = divide_no_nan(dtp, (p0 - p1).max(zero));
            let intercept = tp1 - slope * p1;
            let ratio = if p0 > zero && p1 > zero {
                divide_no_nan(p0, p1.max(zero))
            } else {
                T::one()
            };
            sum += divide_no_nan(
                slope * (dtp + intercept * ratio.ln()),
                (tp1 + fn1).max(zero),
            );
        }
        return sum;
    }
    let point = |&[tp, fp, tn, fun]: &[T; 4]| -> (T, T) {
        let recall = divide_no_nan(tp, tp + fun);
        match curve {
            AucCurve::Roc => (divide_no_nan(fp, fp + tn), recall),
            AucCurve::Pr => (recall, divide_no_nan(tp, tp + fp)),
            AucCurve::PrGain => {
                let scaling = divide_no_nan(tp + fun, tn + fp);
                if tp == zero {
                    (zero, T::one())
                } else {
                    let rg = T::one() - scaling * divide_no_nan(fun, tp);
                    (rg.max(zero), T::one() - scaling * divide_no_nan(fp, tp))
                }
            }
        }
    };
    for w in c.windows(2) {
        let ((x0, y0), (x1, y1)) = (point(&w[0]), point(&w[1]));
        let height = match summation {
            AucSummation::Interpolation => (y0 + y1) / T::of(2.0),
            AucSummation::Minoring => y0.min(y1),
            AucSummation::Majoring => y0.max(y1),
        };
        sum += (x0 - x1) * height;
    }
    sum
}

/// Keras' `R2Score.result` from the sums per column (`[Σwy, Σwy², Σw(y − ŷ)², Σw]`) and the
/// number of entries seen.
fn r2<T: Float>(sums: &[[T; 4]], entries: T, aggregation: R2Aggregation, regressors: usize) -> T {
    let (mut sum_scores, mut weighted, mut totals) = (T::zero(), T::zero(), T::zero());
    for (raw, total) in r2_columns(sums) {
        sum_scores += raw;
        weighted += total * raw;
        totals += total;
    }
    let score = match aggregation {
        R2Aggregation::Uniform | R2Aggregation::PerColumn => {
            sum_scores / T::of(sums.len().max(1) as f64)
        }
        R2Aggregation::VarianceWeighted => weighted / totals,
    };
    r2_adjusted(score, entries, regressors)
}

/// Keras' `R2Score.result` with `class_aggregation=None`: each column's score, adjusted as
/// [`r2`] adjusts the aggregate.
fn r2_per_column<T: Float>(sums: &[[T; 4]], entries: T, regressors: usize) -> Vec<T> {
    r2_columns(sums)
        .map(|(raw, _)| r2_adjusted(raw, entries, regressors))
        .collect()
}

/// Each column's raw score (0 where it is infinite, as Keras sets it) and total sum of squares.
fn r2_columns<T: Float>(sums: &[[T; 4]]) -> impl Iterator<Item = (T, T)> + '_ {
    sums.iter().map(|&[sum, squares, residual, count]| {
        let mean = sum / count;
        let total = squares - sum * mean;
        let raw = T::one() - residual / total;
        (if raw.is_infinite() { T::zero() } else { raw }, total)
    })
}

/// The adjusted score, where there are more entries than regressors plus one.
fn r2_adjusted<T: Float>(score: T, entries: T, regressors: usize) -> T {
    let (n, p) = (entries, T::of(regressors as f64));
    if regressors == 0 || p >= n - T::one() {
        return score;
    }
    T::one() - ((T::one() - score) * (n - T::one())) / ((n - p) - T::one())
}

/// Keras' `SensitivitySpecificityBase` results from the counts per threshold (`[tp, fp, tn,
/// fn]`): the largest of one rate over the thresholds where the other is at least `value` (0
/// where none is), each rate 0 where its denominator is.
fn at_point<T: Float>(c: &[[T; 4]], kind: AtPoint, value: f64) -> T {
    let value = T::of(value);
    let mut best = T::zero();
    for &[tp, fp, tn, fun] in c {
        let recall = divide_no_nan(tp, tp + fun);
        let specificity = divide_no_nan(tn, tn + fp);
        let precision = divide_no_nan(tp, tp + fp);
        let (constrained, dependent) = match kind {
            AtPoint::SensitivityAtSpecificity => (specificity, recall),
            AtPoint::SpecificityAtSensitivity => (recall, specificity),
            AtPoint::PrecisionAtRecall => (recall, precision),
            AtPoint::RecallAtPrecision => (precision, recall),
        };
        if constrained >= value && dependent > best {
            best = dependent;
        }
    }
    best
}

/// Keras' IoU `result` from the confusion matrix (`[true][predicted]`), in `float32` as Keras
/// casts it: per target class `tp / (predicted + true − tp + 1e-7)` where that denominator is
/// above 1e-9, else 0; their sum over the number of such classes (+ 1e-7).
fn iou(cm: &[f64], c: &IouConfig) -> f64 {
    let k = c.num_classes;
    let (mut sum, mut valid) = (0f32, 0f32);
    for class in (0..k).filter(|&j| c.targets(j)) {
        let predicted: f64 = (0..k).map(|t| cm[t * k + class]).sum();
        let truth: f64 = cm[class * k..(class + 1) * k].iter().sum();
        let tp = cm[class * k + class];
        let denominator = (predicted + truth - tp) as f32;
        if denominator > 1e-9 {
            valid += 1.0;
            sum += tp as f32 / (denominator + 1e-7);
        }
    }
    f64::from(sum / (valid + 1e-7))
}

/// An IoU metric's settings from its Keras class and config.
fn iou_config(class: &str, cfg: &Map<String, Value>) -> Result<IouConfig, ConfigError> {
    let setting = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let binary = class == "BinaryIoU";
    let num_classes = if binary {
        2
    } else {
        match get_u64(cfg, "num_classes")? {
            Some(n) if (1..=IOU_MAX_CLASSES as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ConfigError::invalid(
                    format!("{class}.num_classes"),
                    n,
                    format!("an integer in [1, {IOU_MAX_CLASSES}]"),
                ))
            }
            None => {
                return Err(ConfigError::invalid(
                    format!("{class}.num_classes"),
                    "(not given)",
                    "the number of classes",
                ))
            }
        }
    };
    let targets = match (class, setting("target_class_ids")) {
        ("MeanIoU" | "OneHotMeanIoU", _) => None,
        ("BinaryIoU", None) => Some([3, 0, 0, 0]),
        (_, Some(Value::Array(ids))) if !ids.is_empty() => {
            let mut bits = [0u64; 4];
            for id in ids {
                match id.as_u64() {
                    Some(i) if (i as usize) < num_classes && i < 256 => {
                        bits[i as usize / 64] |= 1 << (i % 64)
                    }
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("{class}.target_class_ids"),
                            id,
                            format!(
                                "class ids in [0, {}) (ids from 256 on are not computed)",
                                num_classes.min(256)
                            ),
                        ))
                    }
                }
            }
            Some(bits)
        }
        (_, other) => {
            return Err(ConfigError::invalid(
                format!("{class}.target_class_ids"),
                other.unwrap_or(&Value::Null),
                "a non-empty list of class ids",
            ))
        }
    };
    if let Some(a) = setting("axis").filter(|a| a.as_i64() != Some(-1)) {
        return Err(ConfigError::unsupported(
            "metric",
            format!("`{class}` with axis {a} is not computed by grucell"),
        ));
    }
    let ignore_class = match setting("ignore_class") {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ConfigError::invalid(format!("{class}.ignore_class"), v, "null or an integer")
        })?),
    };
    let one_hot = class.starts_with("OneHot");
    let threshold = if binary {
        Some(get_f64(cfg, "threshold", 0.5)?)
    } else {
        None
    };
    let integer = match setting("dtype") {
        None => true,
        Some(Value::String(d)) => d.contains("int"),
        // A dtype policy object: its name.
        Some(v) => v
            .pointer("/config/name")
            .and_then(Value::as_str)
            .is_none_or(|d| d.contains("int")),
    };
    Ok(IouConfig {
        num_classes,
        targets,
        ignore_class,
        // The one-hot classes read their targets by arg-max; their outputs too, unless
        // `sparse_y_pred` says they are class ids.
        sparse_true: !one_hot && get_bool(cfg, "sparse_y_true", true)?,
        sparse_pred: get_bool(cfg, "sparse_y_pred", !one_hot)?,
        threshold,
        integer,
    })
}

/// Keras' `FBetaScore.result` from the sums per class (`[tp, fp, fn, Σw·y]`; one for `micro`),
/// in its order of operations, with Keras' epsilon 1e-7 in every denominator. Nothing counted
/// yet gives 0, as Keras' zero-initialized sums do.
fn fbeta<T: Float>(sums: &[[T; 4]], beta: f64, average: FAverage) -> T {
    let eps = T::of(1e-7);
    let scores = fbeta_per_class(sums, beta);
    match average {
        FAverage::Weighted => {
            let mut total = T::zero();
            for s in sums {
                total += s[3];
            }
            let mut sum = T::zero();
            for (f, s) in scores.iter().zip(sums) {
                sum += *f * (s[3] / (total + eps));
            }
            sum
        }
        _ => mean(&scores),
    }
}

/// Each class's score of [`fbeta`] (Keras' result with `average=None`).
fn fbeta_per_class<T: Float>(sums: &[[T; 4]], beta: f64) -> Vec<T> {
    let eps = T::of(1e-7);
    let b2 = T::of(beta * beta);
    sums.iter()
        .map(|&[tp, fp, fun, _]| {
            let precision = tp / (tp + fp + eps);
            let recall = tp / (tp + fun + eps);
            let mul = precision * recall;
            let add = b2 * precision + recall;
            mul / (add + eps) * (T::one() + b2)
        })
        .collect()
}

/// Keras' `pearson_correlation` of one row: both centred, each divided by its population
/// standard deviation (of the centred values), then the mean of their products.
fn pearson<T: Float>(y: &[T], q: &[T]) -> T {
    let centred = |v: &[T]| -> Vec<T> {
        let m = mean(v);
        let sd = variance_about(v, m).sqrt();
        v.iter().map(|x| (*x - m) / sd).collect()
    };
    let (a, b) = (centred(y), centred(q));
    mean(&a.iter().zip(&b).map(|(x, z)| *x * *z).collect::<Vec<_>>())
}

/// Keras' `concordance_correlation` of one row, as written there:
/// `mean(2 (y − mean ŷ)(ŷ − mean ŷ) / (var y + var ŷ + (mean y − mean ŷ)² + 1e-7))`.
fn concordance<T: Float>(y: &[T], q: &[T]) -> T {
    let (my, mq) = (mean(y), mean(q));
    let norm = variance_about(y, my) + variance_about(q, mq) + (my - mq) * (my - mq);
    let two = T::of(2.0);
    let terms: Vec<T> = y
        .iter()
        .zip(q)
        .map(|(a, b)| two * ((*a - mq) * (*b - mq)) / (norm + T::of(1e-7)))
        .collect();
    mean(&terms)
}

/// Keras' `ops.var(v − m)`: the population variance of the values less `m`, centred again on
/// their own mean (as Keras computes it, not assuming `m` is the mean).
fn variance_about<T: Float>(v: &[T], m: T) -> T {
    let c: Vec<T> = v.iter().map(|x| *x - m).collect();
    let cm = mean(&c);
    mean(&c.iter().map(|x| (*x - cm) * (*x - cm)).collect::<Vec<_>>())
}

/// The index of the first largest value (0 for an empty or all-NaN slice), as the accuracies
/// and the one-hot IoU metrics take a class.
fn argmax<T: Float>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn mean<T: Float>(v: &[T]) -> T {
    let mut s = T::zero();
    for x in v {
        s += *x;
    }
    s / T::of(v.len().max(1) as f64)
}

/// The metric function's result, flattened: one value per row of `y_pred` (all axes but the
/// last), or per entry for the entry-wise metrics.
fn metric_values<T: Float>(
    f: MetricFn,
    name: &str,
    y_true: &Tensor<T>,
    y_pred: &Tensor<T>,
    logits: Option<(Activation, &Tensor<T>)>,
) -> Result<Vec<T>, Error> {
    let shape = y_pred.shape();
    let last = shape.last().copied().unwrap_or(1).max(1);
    let rows = y_pred.len() / last;
    let (t, p) = (y_true.data(), y_pred.data());
    let mismatch = |want: String| -> Error {
        ShapeError::mismatch(format!("metric `{name}` targets"), y_true.shape(), want).into()
    };
    let sparse = match f {
        MetricFn::SparseCategoricalAccuracy | MetricFn::SparseTopKCategoricalAccuracy { .. } => {
            true
        }
        MetricFn::Loss(l) => l.sparse_labels(),
        _ => false,
    };
    if sparse {
        if y_true.len() != rows {
            return Err(mismatch(format!(
                "one class index per row of the output {shape:?}"
            )));
        }
    } else if y_true.len() != y_pred.len() {
        return Err(mismatch(format!("the output's shape {shape:?}")));
    }
    let per_row = |g: &dyn Fn(T, T) -> T| -> Vec<T> {
        (0..rows)
            .map(|r| {
                let mut s = T::zero();
                for j in r * last..(r + 1) * last {
                    s += g(t[j], p[j]);
                }
                s / T::of(last as f64)
            })
            .collect()
    };
    let eps = T::of(1e-7);
    let one_if = |b: bool| if b { T::one() } else { T::zero() };
    // TensorFlow's `in_top_k`: the target's score is finite and fewer than `k` scores beat it.
    let in_top_k = |row: &[T], target: Option<usize>, k: usize| -> T {
        one_if(
            target
                .and_then(|c| row.get(c))
                .is_some_and(|&s| s.is_finite() && row.iter().filter(|&&x| x > s).count() < k),
        )
    };
    let class_index = |v: T| -> Option<usize> {
        let v = v.f64();
        (v.is_finite() && v >= 0.0).then_some(v as usize)
    };
    Ok(match f {
        MetricFn::MeanAbsoluteError => per_row(&|a, b| (a - b).abs()),
        MetricFn::MeanSquaredError => per_row(&|a, b| (a - b) * (a - b)),
        MetricFn::MeanAbsolutePercentageError => per_row(&|a, b| {
            let d = ((a - b) / a.abs().max(eps)).abs();
            d * T::of(100.0)
        }),
        MetricFn::MeanSquaredLogarithmicError => per_row(&|a, b| {
            let d = (b.max(eps) + T::one()).ln() - (a.max(eps) + T::one()).ln();
            d * d
        }),
        MetricFn::BinaryAccuracy { threshold } => {
            let th = T::of(threshold);
            t.iter()
                .zip(p)
                .map(|(a, b)| one_if(one_if(*b > th) == *a))
                .collect()
        }
        MetricFn::ExactAccuracy => t.iter().zip(p).map(|(a, b)| one_if(a == b)).collect(),
        MetricFn::CategoricalAccuracy => (0..rows)
            .map(|r| {
                one_if(argmax(&t[r * last..(r + 1) * last]) == argmax(&p[r * last..(r + 1) * last]))
            })
            .collect(),
        MetricFn::SparseCategoricalAccuracy => (0..rows)
            .map(|r| one_if(T::of(argmax(&p[r * last..(r + 1) * last]) as f64) == t[r]))
            .collect(),
        MetricFn::TopKCategoricalAccuracy { k } => (0..rows)
            .map(|r| {
                let target = argmax(&t[r * last..(r + 1) * last]);
                in_top_k(&p[r * last..(r + 1) * last], Some(target), k)
            })
            .collect(),
        MetricFn::SparseTopKCategoricalAccuracy { k } => (0..rows)
            .map(|r| in_top_k(&p[r * last..(r + 1) * last], class_index(t[r]), k))
            .collect(),
        MetricFn::Loss(loss) => {
            let (used, loss) = match logits {
                Some((a, z)) => match loss.on_activation_output(a)? {
                    Some(l) => (z, l),
                    None => (y_pred, loss),
                },
                None => (y_pred, loss),
            };
            loss.row_values(t, used.data(), used.shape())?
        }
        MetricFn::CosineSimilarity => Loss::CosineSimilarity
            .row_values(t, p, shape)?
            .into_iter()
            .map(|v| -v)
            .collect(),
        MetricFn::PearsonCorrelation | MetricFn::ConcordanceCorrelation => (0..rows)
            .map(|r| {
                let (a, b) = (&t[r * last..(r + 1) * last], &p[r * last..(r + 1) * last]);
                if f == MetricFn::PearsonCorrelation {
                    pearson(a, b)
                } else {
                    concordance(a, b)
                }
            })
            .collect(),
        MetricFn::RootMeanSquaredError => t
            .iter()
            .zip(p)
            .map(|(a, b)| (*b - *a) * (*b - *a))
            .collect(),
        // Counted in `update` from the entries themselves; one placeholder per entry (R² is
        // summed by `update_r2` and does not come here).
        MetricFn::Precision { .. }
        | MetricFn::Recall { .. }
        | MetricFn::Count { .. }
        | MetricFn::Auc { .. }
        | MetricFn::R2Score { .. }
        | MetricFn::FBeta { .. }
        | MetricFn::Iou(_)
        | MetricFn::AtPoint { .. } => vec![T::zero(); p.len()],
        MetricFn::Accuracy => {
            return Err(ConfigError::invalid(
                "metric",
                name,
                "an accuracy resolved from the shapes before use",
            )
            .into())
        }
    })
}

/// The metrics of one `fit` or `evaluate` call, with the names Keras gives them in its logs:
/// each output's loss (`<output>_loss`, for a model with several outputs), then `metrics`, then
/// `weighted_metrics`, each named `<output>_<name>` when there are several outputs; a repeated
/// name gets `_1`, `_2`, … (a weighted one `weighted_` first), as Keras' `CompileMetrics.result`.
#[derive(Clone, Debug)]
pub(crate) struct MetricSet<T> {
    /// Per output: Keras' `Mean` of its loss over the batches.
    losses: Vec<(String, T, T)>,
    states: Vec<MetricState<T>>,
    names: Vec<String>,
}

impl<T: Float> MetricSet<T> {
    /// `outputs`: the names of the model's outputs when it has several (their losses are
    /// tracked, and their names prefix the metrics'), none for a single output, as in Keras.
    pub(crate) fn new(metrics: &[Metric], weighted: &[Metric], outputs: &[String]) -> Self {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let prefixed = |m: &Metric, name: &str| match outputs.get(m.output) {
            Some(o) => format!("{o}_{name}"),
            None => name.to_string(),
        };
        let mut states = Vec::new();
        let mut names = Vec::new();
        for m in metrics {
            let name = prefixed(m, &m.name);
            let name = match seen.get_mut(&name) {
                None => {
                    seen.insert(name.clone(), 1);
                    name
                }
                Some(k) => {
                    *k += 1;
                    format!("{name}_{}", *k - 1)
                }
            };
            names.push(name);
            states.push(MetricState::new(m.clone(), false));
        }
        for m in weighted {
            let mut name = prefixed(m, &m.name);
            if seen.contains_key(&name) {
                name = prefixed(m, &format!("weighted_{}", m.name));
                if let Some(k) = seen.get_mut(&name) {
                    *k += 1;
                    name = format!("{name}_{}", *k - 1);
                }
            }
            seen.entry(name.clone()).or_insert(1);
            names.push(name);
            states.push(MetricState::new(m.clone(), true));
        }
        let losses = outputs
            .iter()
            .map(|o| (format!("{o}_loss"), T::zero(), T::zero()))
            .collect();
        MetricSet {
            losses,
            states,
            names,
        }
    }

    /// Whether the outputs must be kept for the metrics.
    pub(crate) fn needs_outputs(&self) -> bool {
        !self.states.is_empty()
    }

    /// The log names: the output losses', then the metrics'.
    pub(crate) fn names(&self) -> Vec<String> {
        let losses = self.losses.iter().map(|(n, _, _)| n.clone());
        losses.chain(self.names.iter().cloned()).collect()
    }

    pub(crate) fn reset(&mut self) {
        self.states.iter_mut().for_each(MetricState::reset);
        for (_, total, count) in &mut self.losses {
            *total = T::zero();
            *count = T::zero();
        }
    }

    /// Each output's loss of one batch. Keras weighs each batch by its static batch size, which
    /// its traced step knows only when every batch is whole: with equal batches, or with a
    /// partial one (no static size, a weight of 1 each), that is the plain mean of the batches'
    /// losses.
    pub(crate) fn update_losses(&mut self, values: &[T]) {
        for ((_, total, count), v) in self.losses.iter_mut().zip(values) {
            *total += *v;
            *count += T::one();
        }
    }

    /// Every metric's `update_state` with one batch: the targets and outputs of every model
    /// output, and the batch's weights, which every output shares (as Keras repeats them).
    pub(crate) fn update(
        &mut self,
        y_true: &[Tensor<T>],
        outputs: &[ModelOutput<T>],
        sample_weight: Option<&[T]>,
    ) -> Result<(), Error> {
        for s in &mut self.states {
            let k = s.metric.output;
            let (Some(y), Some(o)) = (y_true.get(k), outputs.get(k)) else {
                return Err(ConfigError::invalid(
                    format!("metric `{}` output", s.metric.name),
                    k,
                    format!("an output of the model's {}", outputs.len()),
                )
                .into());
            };
            let logits = o.logits.as_ref().map(|(a, z)| (*a, z));
            s.update(y, &o.value, o.mask.as_ref(), logits, sample_weight)?;
        }
        Ok(())
    }

    /// Each output's loss, then each metric's value, in [`Self::names`]' order.
    pub(crate) fn values(&self) -> Vec<MetricValue> {
        let losses = self
            .losses
            .iter()
            .map(|(_, total, count)| MetricValue::Scalar(divide_no_nan(*total, *count).f64()));
        losses
            .chain(self.states.iter().map(MetricState::value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One metric over one batch `(y_true, y_pred)` of shape `shape`, with weights where given.
    fn run(
        metric: Value,
        y_true: &[f32],
        y_pred: &[f32],
        shape: &[usize],
        w: Option<&[f32]>,
    ) -> f64 {
        let metric = Metric::from_keras(&metric).unwrap();
        let mut state = MetricState::<f32>::new(metric, w.is_some());
        let true_shape = if y_true.len() == y_pred.len() {
            shape.to_vec()
        } else {
            shape[..shape.len() - 1].to_vec()
        };
        let t = Tensor::new(true_shape, y_true.to_vec()).unwrap();
        let p = Tensor::new(shape.to_vec(), y_pred.to_vec()).unwrap();
        state.update(&t, &p, None, None, w).unwrap();
        state.result()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    /// One batch of 3 columns: targets, outputs, a weight per row (used by weighted metrics
    /// only), and the number of rows.
    type Batch<'a> = (&'a [f32], &'a [f32], &'a [f32], usize);

    /// Feeds `state` the `batches`.
    fn feed(state: &mut MetricState<f32>, batches: &[Batch<'_>]) {
        for &(t, p, w, n) in batches {
            let t = Tensor::new(vec![n, 3], t.to_vec()).unwrap();
            let p = Tensor::new(vec![n, 3], p.to_vec()).unwrap();
            state.update(&t, &p, None, None, Some(w)).unwrap();
        }
    }

    /// `metric`'s state after `batches`.
    fn after(metric: &Value, weighted: bool, batches: &[Batch<'_>]) -> MetricState<f32> {
        let mut state = MetricState::<f32>::new(Metric::from_keras(metric).unwrap(), weighted);
        feed(&mut state, batches);
        state
    }

    /// Asserts that `state` gives one value per class, each close to `want`'s.
    fn assert_per_class(state: &MetricState<f32>, want: &[f64], what: &str) {
        let MetricValue::PerClass(got) = state.value() else {
            panic!("{what}: one number");
        };
        assert!(
            got.len() == want.len() && got.iter().zip(want).all(|(a, b)| close(*a, *b)),
            "{what}: {got:?} against {want:?}"
        );
    }

    // The values are the examples of Keras' own docstrings.

    #[test]
    fn auc_matches_keras_examples() {
        let auc = |cfg: Value| {
            run(
                json!({"class_name": "AUC", "config": cfg}),
                &[0.0, 0.0, 1.0, 1.0],
                &[0.0, 0.5, 0.3, 0.9],
                &[4],
                None,
            )
        };
        assert!(close(auc(json!({"num_thresholds": 3})), 0.75));
        // Weighted: `sample_weight=[1, 0, 0, 1]` gives 1.0.
        let w = run(
            json!({"class_name": "AUC", "config": {"num_thresholds": 3}}),
            &[0.0, 0.0, 1.0, 1.0],
            &[0.0, 0.5, 0.3, 0.9],
            &[4],
            Some(&[1.0, 0.0, 0.0, 1.0]),
        );
        assert!(close(w, 1.0), "{w}");
        // From logits: a sigmoid first.
        let logits = run(
            json!({"class_name": "AUC", "config": {"from_logits": true}}),
            &[0.0, 0.0, 1.0, 1.0],
            &[-3.0, 0.0, -0.5, 2.0],
            &[4],
            None,
        );
        let probs = auc(json!({}));
        assert!(close(logits, probs), "{logits} vs {probs}");
        // A perfect ranking has area 1 on every curve.
        for curve in ["ROC", "PR", "PRGAIN"] {
            let a = run(
                json!({"class_name": "AUC", "config": {"curve": curve}}),
                &[0.0, 1.0, 0.0, 1.0],
                &[0.1, 0.8, 0.3, 0.9],
                &[4],
                None,
            );
            assert!(close(a, 1.0), "{curve}: {a}");
        }
    }

    #[test]
    fn confusion_counts_match_keras_examples() {
        let count = |class: &str, w: Option<&[f32]>| {
            run(
                json!({"class_name": class, "config": {}}),
                &[0.0, 1.0, 1.0, 1.0],
                &[1.0, 0.0, 1.0, 1.0],
                &[4],
                w,
            )
        };
        assert_eq!(count("TruePositives", None), 2.0);
        assert_eq!(count("TruePositives", Some(&[0.0, 0.0, 1.0, 0.0])), 1.0);
        assert_eq!(count("FalsePositives", None), 1.0);
        assert_eq!(count("FalseNegatives", None), 1.0);
        assert_eq!(count("TrueNegatives", None), 0.0);
        let tn = run(
            json!("true_negatives"),
            &[0.0, 1.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 0.0],
            &[4],
            None,
        );
        assert_eq!(tn, 2.0);
        // One threshold, as a number or a list of one.
        let at = |t: Value| {
            Metric::from_keras(
                &json!({"class_name": "FalsePositives", "config": {"thresholds": t}}),
            )
            .map(|m| m.function)
        };
        let want = MetricFn::Count {
            count: Confusion::FalsePositives,
            thresholds: Thresholds::one(0.25),
        };
        assert_eq!(at(json!(0.25)).unwrap(), want);
        assert_eq!(at(json!([0.25])).unwrap(), want);
        for bad in [json!([]), json!(["a"]), json!("x"), json!(vec![0.5; 33])] {
            let e = at(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("thresholds") && e.contains("32"), "{bad}: {e}");
        }
    }

    /// Several thresholds: one value per threshold, Keras 3.15.1's results on the AUC tests' two
    /// batches, unweighted and weighted (as a weighted metric).
    #[test]
    fn threshold_lists_give_one_value_per_threshold_as_keras() {
        let t3 = json!([0.3, 0.5, 0.7]);
        #[rustfmt::skip]
        let cases: [(&str, Value, [&[f64]; 2]); 8] = [
            ("Precision", json!({"thresholds": t3}),
             [&[0.699999988079071, 0.8571428656578064, 1.0], &[0.7307692170143127, 0.8999999761581421, 1.0]]),
            ("Recall", json!({"thresholds": t3}),
             [&[0.7777777910232544, 0.6666666865348816, 0.3333333432674408],
              &[0.7307692170143127, 0.692307710647583, 0.3076923191547394]]),
            ("Precision", json!({"thresholds": [0.1, 0.5], "top_k": 2}),
             [&[0.6666666865348816, 0.8571428656578064], &[0.7352941036224365, 0.8999999761581421]]),
            ("Recall", json!({"thresholds": [0.25, 0.6], "class_id": 1}),
             [&[1.0, 0.3333333432674408], &[1.0, 0.3636363744735718]]),
            ("TruePositives", json!({"thresholds": t3}), [&[7.0, 6.0, 3.0], &[9.5, 9.0, 4.0]]),
            ("FalsePositives", json!({"thresholds": t3}), [&[3.0, 1.0, 0.0], &[3.5, 1.0, 0.0]]),
            ("TrueNegatives", json!({"thresholds": t3}), [&[6.0, 8.0, 9.0], &[9.0, 11.5, 12.5]]),
            ("FalseNegatives", json!({"thresholds": t3}), [&[2.0, 3.0, 6.0], &[3.5, 4.0, 9.0]]),
        ];
        for (class, cfg, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let metric = json!({"class_name": class, "config": cfg});
                let mut state =
                    MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), weighted);
                feed_auc_batches(&mut state);
                assert_per_class(&state, want, &format!("{class} {cfg} weighted {weighted}"));
            }
        }
        // Unsorted thresholds keep their order.
        let metric = json!({"class_name": "TruePositives", "config": {"thresholds": [0.7, 0.3]}});
        let mut state = MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), false);
        feed_auc_batches(&mut state);
        assert_per_class(&state, &[3.0, 7.0], "unsorted");
    }

    #[test]
    fn top_k_accuracies_match_keras_examples() {
        let y_pred = [0.1, 0.9, 0.8, 0.05, 0.95, 0.0];
        let top = run(
            json!({"class_name": "TopKCategoricalAccuracy", "config": {"k": 1}}),
            &[0.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            &y_pred,
            &[2, 3],
            None,
        );
        assert!(close(top, 0.5));
        let sparse = run(
            json!({"class_name": "SparseTopKCategoricalAccuracy", "config": {"k": 1}}),
            &[2.0, 1.0],
            &y_pred,
            &[2, 3],
            None,
        );
        assert!(close(sparse, 0.5));
        // Ties at the boundary are in the top k (TensorFlow's `in_top_k`).
        let tie = run(
            json!({"class_name": "SparseTopKCategoricalAccuracy", "config": {"k": 1}}),
            &[0.0],
            &[0.5, 0.5, 0.1],
            &[1, 3],
            None,
        );
        assert_eq!(tie, 1.0);
        // Five by default: every class of three.
        let all = run(
            json!("top_k_categorical_accuracy"),
            &[1.0, 0.0, 0.0],
            &[0.0, 1.0, 2.0],
            &[1, 3],
            None,
        );
        assert_eq!(all, 1.0);
    }

    #[test]
    fn exact_accuracy_cosine_and_loss_metrics_match_keras_examples() {
        let exact = run(
            json!({"class_name": "Accuracy", "config": {"name": "accuracy"}}),
            &[1.0, 2.0, 3.0, 4.0],
            &[0.0, 2.0, 3.0, 4.0],
            &[4, 1],
            None,
        );
        assert!(close(exact, 0.75));
        let cos = run(
            json!("cosine_similarity"),
            &[0.0, 1.0, 1.0, 1.0],
            &[1.0, 0.0, 1.0, 1.0],
            &[2, 2],
            None,
        );
        assert!(close(cos, 0.49999997), "{cos}");
        // keras.metrics.BinaryCrossentropy docstring: 0.81492424.
        let bce = run(
            json!("binary_crossentropy"),
            &[0.0, 1.0, 0.0, 0.0],
            &[0.6, 0.4, 0.4, 0.6],
            &[2, 2],
            None,
        );
        assert!(close(bce, 0.81492424), "{bce}");
        // keras.metrics.CategoricalCrossentropy: 1.1769392.
        let cce = run(
            json!("categorical_crossentropy"),
            &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            &[0.05, 0.95, 0.0, 0.1, 0.8, 0.1],
            &[2, 3],
            None,
        );
        assert!(close(cce, 1.1769392), "{cce}");
        let sparse = run(
            json!("sparse_categorical_crossentropy"),
            &[1.0, 2.0],
            &[0.05, 0.95, 0.0, 0.1, 0.8, 0.1],
            &[2, 3],
            None,
        );
        assert!(close(sparse, 1.1769392), "{sparse}");
        // keras.metrics.Hinge: 1.3; SquaredHinge: 1.86; CategoricalHinge: 1.4.
        let hinge = |m: &str| {
            run(
                json!(m),
                &[0.0, 1.0, 0.0, 0.0],
                &[0.6, 0.4, 0.4, 0.6],
                &[2, 2],
                None,
            )
        };
        assert!(close(hinge("hinge"), 1.3));
        assert!(close(hinge("squared_hinge"), 1.86));
        assert!(close(hinge("categorical_hinge"), 1.4));
        // keras.metrics.KLDivergence: 0.45814306; Poisson: 0.49999997.
        assert!(
            close(hinge("kl_divergence"), 0.45814306),
            "{}",
            hinge("kl_divergence")
        );
        let poisson = run(
            json!("poisson"),
            &[0.0, 1.0, 0.0, 0.0],
            &[1.0, 1.0, 0.0, 0.0],
            &[2, 2],
            None,
        );
        assert!(close(poisson, 0.49999997), "{poisson}");
    }

    #[test]
    fn r2_matches_keras_examples() {
        // keras.metrics.R2Score docstring: 0.57142854.
        let y_true = [1.0, 4.0, 3.0];
        let y_pred = [2.0, 4.0, 4.0];
        let r2 = run(json!("r2_score"), &y_true, &y_pred, &[3, 1], None);
        assert!(close(r2, 0.57142854), "{r2}");
        // Adjusted for 1 regressor over 3 entries: 1 − (1 − r2)·2/1.
        let adj = run(
            json!({"class_name": "R2Score", "config": {"num_regressors": 1}}),
            &y_true,
            &y_pred,
            &[3, 1],
            None,
        );
        assert!(close(adj, 1.0 - (1.0 - 0.57142854) * 2.0), "{adj}");
        // `class_aggregation=None`: one score per column, plain and adjusted, unweighted and
        // weighted, over two batches (Keras 3.15.1's results).
        let (t1, p1) = (
            [1., 4., 3., 2., 0.5, 7., -1., 2., 2.5],
            [2., 4., 4., 1., 0., 6., 0., 2., 3.],
        );
        let (t2, p2) = ([3., 1., 0., 2., 2., 1.], [2.5, 1.5, 0.5, 2., 1., 1.]);
        let (w1, w2) = ([1., 2., 0.5], [3., 1.]);
        #[rustfmt::skip]
        let cases: [(Value, [[f64; 3]; 2]); 2] = [
            (json!({"class_aggregation": null}),
             [[0.64673912525177, 0.7916666865348816, 0.9131944179534912],
              [0.49803149700164795, 0.7597864866256714, 0.9372130632400513]]),
            (json!({"class_aggregation": null, "num_regressors": 2}),
             [[0.5878623723983765, 0.756944477558136, 0.8987268209457397],
              [0.414370059967041, 0.7197508811950684, 0.9267485737800598]]),
        ];
        let batches: [Batch<'_>; 2] = [(&t1, &p1, &w1, 3), (&t2, &p2, &w2, 2)];
        for (cfg, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let metric = json!({"class_name": "R2Score", "config": cfg});
                let state = after(&metric, weighted, &batches);
                assert_per_class(&state, &want, &format!("{cfg} weighted {weighted}"));
            }
        }
        // On one column, Keras' one-element result is that score.
        let one = run(
            json!({"class_name": "R2Score", "config": {"class_aggregation": null}}),
            &y_true,
            &y_pred,
            &[3, 1],
            None,
        );
        assert!(close(one, 0.57142854), "{one}");
        let bad = json!({"class_name": "R2Score", "config": {"class_aggregation": "max"}});
        let e = Metric::from_keras(&bad).unwrap_err().to_string();
        assert!(
            e.contains("class_aggregation") && e.contains("\"max\""),
            "{e}"
        );
        // Sequence outputs are refused, as Keras refuses them.
        let metric = Metric::from_name("r2_score").unwrap();
        let mut state = MetricState::<f32>::new(metric, false);
        let t = Tensor::new(vec![1, 2, 1], vec![1.0, 2.0]).unwrap();
        let e = state
            .update(&t, &t, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2-D"), "{e}");
    }

    /// Feeds `state` the two batches of 3 labels the AUC tests share, with their sample weights
    /// (used by weighted metrics only).
    fn feed_auc_batches(state: &mut MetricState<f32>) {
        let yt1 = [1., 0., 1., 0., 1., 0., 1., 1., 0., 0., 0., 1.];
        let yp1 = [0.7, 0.2, 0.6, 0.3, 0.8, 0.4, 0.1, 0.5, 0.45, 0.6, 0.3, 0.9];
        let (yt2, yp2) = ([0., 1., 1., 1., 0., 0.], [0.2, 0.55, 0.3, 0.95, 0.1, 0.2]);
        let (w1, w2) = ([1.0, 2.0, 0.5, 1.0], [3.0, 1.0]);
        feed(state, &[(&yt1, &yp1, &w1, 4), (&yt2, &yp2, &w2, 2)]);
    }

    #[test]
    fn multi_label_auc_matches_keras_over_two_batches() {
        // keras.metrics.AUC(multi_label=True) (Keras 3.15.1), two batches of 3 labels, without
        // and with sample weights.
        #[rustfmt::skip]
        let cases: [(Value, [f64; 2]); 4] = [
            (json!({}), [0.8148148655891418, 0.7904761433601379]),
            (json!({"curve": "PR"}), [0.8896387219429016, 0.8663627505302429]),
            (json!({"curve": "PR", "summation_method": "minoring", "num_thresholds": 7}), [0.5444444417953491, 0.5176767706871033]),
            (json!({"from_logits": true, "num_thresholds": 11}), [0.8148148059844971, 0.8309523463249207]),
        ];
        for (cfg, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let mut cfg = cfg.clone();
                cfg["multi_label"] = json!(true);
                let metric = json!({"class_name": "AUC", "config": cfg});
                let mut state =
                    MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), weighted);
                for _ in 0..2 {
                    // After a reset the counts start again.
                    state.reset();
                    feed_auc_batches(&mut state);
                }
                let r = state.result();
                assert!(
                    close(r, want),
                    "{cfg} weighted {weighted}: {r} against {want}"
                );
            }
        }
        // Counts for every threshold and label are kept: a file's settings cannot make that huge.
        let m = json!({"class_name": "AUC", "config": {"multi_label": true, "num_thresholds": 1 << 20}});
        let mut state = MetricState::<f32>::new(Metric::from_keras(&m).unwrap(), false);
        let t = Tensor::new(vec![1, 5], vec![1.0; 5]).unwrap();
        let e = state
            .update(&t, &t, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("× 5 labels") && state.sums.is_empty(), "{e}");
        // Keras takes (batch, labels) only.
        let m = json!({"class_name": "AUC", "config": {"multi_label": true}});
        let mut state = MetricState::<f32>::new(Metric::from_keras(&m).unwrap(), false);
        let t = Tensor::new(vec![1, 2, 1], vec![1.0, 0.0]).unwrap();
        let e = state
            .update(&t, &t, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multi_label"), "{e}");
    }

    /// AUC's `label_weights` (without and with `multi_label`) and explicit `thresholds` (uneven,
    /// evenly spread, outside [0, 1]), against Keras 3.15.1 on `multi_label`'s two batches.
    #[test]
    fn auc_lists_match_keras_over_two_batches() {
        // Keras saves label_weights as a serialized tensor.
        let tensor = |v: Value| json!({"class_name": "__tensor__", "config": {"value": v, "dtype": "float32"}});
        #[rustfmt::skip]
        let cases: [(Value, [f64; 2]); 10] = [
            (json!({"label_weights": tensor(json!([1.0, 2.0, 0.5]))}), [0.8594104051589966, 0.9090908765792847]),
            (json!({"label_weights": [1.0, 2.0, 0.5], "multi_label": true}), [0.8730158805847168, 0.8816326856613159]),
            (json!({"label_weights": [0.0, 3.0, 1.0], "multi_label": true, "curve": "PR"}), [0.9628094434738159, 0.9361467957496643]),
            (json!({"label_weights": [1.0, 0.0, 2.0], "curve": "PR", "summation_method": "majoring", "num_thresholds": 9}), [0.8492063283920288, 0.7876078486442566]),
            (json!({"thresholds": [0.45, 0.3, 0.9]}), [0.8148148059844971, 0.8015384674072266]),
            (json!({"thresholds": [0.45, 0.3, 0.9], "curve": "PR"}), [0.839860200881958, 0.8393981456756592]),
            (json!({"thresholds": [0.25, 0.5, 0.75]}), [0.8209877014160156, 0.8746154308319092]),
            (json!({"thresholds": [0.1, 0.55, 0.6], "multi_label": true, "label_weights": [2.0, 1.0, 1.0]}), [0.7361111640930176, 0.771969735622406]),
            (json!({"thresholds": [0.1, 0.55, 0.6], "label_weights": [2.0, 1.0, 1.0], "from_logits": true}), [0.7395833134651184, 0.838273823261261]),
            (json!({"thresholds": [-0.5, 0.5, 2.0]}), [0.7777777910232544, 0.8061538934707642]),
        ];
        for (cfg, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let metric = json!({"class_name": "AUC", "config": cfg});
                let mut state =
                    MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), weighted);
                feed_auc_batches(&mut state);
                let r = state.result();
                assert!(
                    close(r, want),
                    "{cfg} weighted {weighted}: {r} against {want}"
                );
            }
        }
        // Given thresholds outside [0, 1] leave the list unsorted, and predictions outside
        // [0, 1] (unclipped on this path) are then positive at no leading run of them.
        for (curve, want) in [("ROC", 0.0), ("PR", 0.3004625737667084)] {
            let metric = json!({"class_name": "AUC", "config": {"thresholds": [-0.5, 0.5, 2.0], "curve": curve}});
            let mut state = MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), false);
            let t = Tensor::new(vec![5, 1], vec![1., 0., 1., 0., 1.]).unwrap();
            let p = Tensor::new(vec![5, 1], vec![1.5, -1.0, 0.7, 3.0, -0.7]).unwrap();
            state.update(&t, &p, None, None, None).unwrap();
            let r = state.result();
            assert!(close(r, want), "{curve}: {r} against {want}");
            // Keras' variables: true positives 2 2 2 0 1, false negatives 1 1 1 3 2, false
            // positives and true negatives 1 each.
            let counts: Vec<[f32; 4]> = state.sums.clone();
            let want = [
                [2., 1., 1., 1.],
                [2., 1., 1., 1.],
                [2., 1., 1., 1.],
                [0., 1., 1., 3.],
                [1., 1., 1., 2.],
            ];
            assert_eq!(counts, want, "{curve}");
        }
        // Evenly spread thresholds are Keras' `num_thresholds`; uneven ones are kept with ε ends.
        let m = Metric::from_keras(&json!({"class_name": "AUC", "config": {"thresholds": [0.5]}}))
            .unwrap();
        assert!(matches!(
            m.function,
            MetricFn::Auc {
                num_thresholds: 3,
                ..
            }
        ));
        assert_eq!(m.auc.thresholds, None);
        let m =
            Metric::from_keras(&json!({"class_name": "AUC", "config": {"thresholds": [0.7, 0.2]}}))
                .unwrap();
        let want = [-1e-7f32, 0.2, 0.7, 1.0 + 1e-7].map(f64::from).to_vec();
        assert_eq!(m.auc.thresholds, Some(want));
        // label_weights must match the labels (or be one weight).
        let m = json!({"class_name": "AUC", "config": {"label_weights": [1.0, 2.0]}});
        let mut state = MetricState::<f32>::new(Metric::from_keras(&m).unwrap(), false);
        let t = Tensor::new(vec![1, 3], vec![1.0, 0.0, 1.0]).unwrap();
        let e = state
            .update(&t, &t, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label_weights"), "{e}");
    }

    #[test]
    fn iou_metrics_match_keras_over_two_batches() {
        // Keras 3.15.1's IoU metrics, update_state on rows 0–3 then 4–5, float32.
        let yt = [0., 1., 2., 1., 2., 0.];
        let yp = [0.2, 1.9, 2.5, 0.7, 2.0, 3.1];
        let bt = [0., 1., 0., 1., 1., 0.];
        let bp = [0.1, 0.2, 0.4, 0.7, 0.5, 0.5];
        let ot: Vec<f32> = [0, 1, 2, 1, 2, 0]
            .iter()
            .flat_map(|&c| (0..3).map(move |j| f32::from(u8::from(j == c))))
            .collect();
        #[rustfmt::skip]
        let op = [0.5, 0.3, 0.2, 0.1, 0.8, 0.1, 0.3, 0.3, 0.4, 0.6, 0.2, 0.2, 0.1, 0.1, 0.8, 0.2, 0.5, 0.3];
        let w = [1.0, 2.0, 1.0, 3.0, 1.0, 2.0];
        let wf = [0.5, 2.0, 1.0, 1.5, 1.0, 2.0];
        let two = |cfg: Value, t: &[f32], p: &[f32], cols: usize, w: Option<&[f32]>| {
            let mut state = MetricState::<f32>::new(Metric::from_keras(&cfg).unwrap(), w.is_some());
            for rows in [0..4, 4..6] {
                let tc = t.len() / 6;
                let tt = Tensor::new(
                    vec![rows.len(), tc],
                    t[rows.start * tc..rows.end * tc].to_vec(),
                );
                let pp = Tensor::new(
                    vec![rows.len(), cols],
                    p[rows.start * cols..rows.end * cols].to_vec(),
                );
                let ww = w.map(|w| &w[rows]);
                state
                    .update(&tt.unwrap(), &pp.unwrap(), None, None, ww)
                    .unwrap();
            }
            state.result()
        };
        let m = |class: &str, cfg: Value| json!({"class_name": class, "config": cfg});
        // (metric, targets, outputs, output columns, sample weights, Keras' result)
        type Case<'a> = (Value, &'a [f32], &'a [f32], usize, Option<&'a [f32]>, f64);
        let cases: [Case; 10] = [
            (
                m("MeanIoU", json!({"num_classes": 3})),
                &yt,
                &yp,
                1,
                None,
                0.6666666865348816,
            ),
            (
                m("MeanIoU", json!({"num_classes": 3})),
                &yt,
                &yp,
                1,
                Some(&w),
                0.550000011920929,
            ),
            (
                m("IoU", json!({"num_classes": 3, "target_class_ids": [0, 2]})),
                &yt,
                &yp,
                1,
                None,
                0.75,
            ),
            (
                m(
                    "IoU",
                    json!({"num_classes": 3, "target_class_ids": [0, 1, 2], "ignore_class": 1}),
                ),
                &yt,
                &yp,
                1,
                None,
                0.9999999403953552,
            ),
            // A float dtype keeps fractional weights; Keras' default int64 truncates them.
            (
                m("MeanIoU", json!({"num_classes": 3, "dtype": "float32"})),
                &yt,
                &yp,
                1,
                Some(&wf),
                0.6071428656578064,
            ),
            (
                m("MeanIoU", json!({"num_classes": 3, "dtype": "int64"})),
                &yt,
                &yp,
                1,
                Some(&wf),
                0.5555555820465088,
            ),
            (m("BinaryIoU", json!({})), &bt, &bp, 1, None, 0.5),
            (
                m(
                    "BinaryIoU",
                    json!({"target_class_ids": [1], "threshold": 0.3}),
                ),
                &bt,
                &bp,
                1,
                None,
                0.3999999463558197,
            ),
            (
                m("OneHotMeanIoU", json!({"num_classes": 3})),
                &ot,
                &op,
                3,
                None,
                0.5555555820465088,
            ),
            (
                m(
                    "OneHotIoU",
                    json!({"num_classes": 3, "target_class_ids": [1, 2]}),
                ),
                &ot,
                &op,
                3,
                None,
                0.6666666865348816,
            ),
        ];
        for (cfg, t, p, cols, w, want) in cases {
            let r = two(cfg.clone(), t, p, cols, w);
            assert!(
                close(r, want),
                "{cfg} weighted {}: {r} against {want}",
                w.is_some()
            );
        }
        for bad in [
            m("MeanIoU", json!({})),
            m("MeanIoU", json!({"num_classes": 0})),
            // Its confusion matrix would take more than 8 MiB.
            m("MeanIoU", json!({"num_classes": IOU_MAX_CLASSES + 1})),
            m("IoU", json!({"num_classes": 3, "target_class_ids": [3]})),
            m("IoU", json!({"num_classes": 3, "target_class_ids": []})),
            m(
                "IoU",
                json!({"num_classes": 3, "target_class_ids": [0], "axis": 1}),
            ),
        ] {
            assert!(Metric::from_keras(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_at_a_point_match_keras_over_two_batches() {
        // Keras 3.15.1: (metric, its value key), value, num_thresholds, then its results
        // without and with sample weights, update_state on two batches of (n, 1) outputs.
        let yt1 = [0., 1., 1., 0., 1., 0., 0., 1.];
        let yp1 = [0.1, 0.8, 0.45, 0.6, 0.3, 0.2, 0.55, 0.9];
        let (yt2, yp2) = ([1., 0., 1., 0.], [0.7, 0.35, 0.05, 0.95]);
        let (w1, w2) = (
            [1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 0.5],
            [2.0, 1.0, 1.0, 0.5],
        );
        #[rustfmt::skip]
        let cases: [(&str, &str, f64, u64, [f64; 2]); 16] = [
            ("SensitivityAtSpecificity", "specificity", 0.5, 200, [0.6666666865348816, 0.8571428656578064]),
            ("SensitivityAtSpecificity", "specificity", 0.5, 7, [0.5, 0.7142857313156128]),
            ("SensitivityAtSpecificity", "specificity", 0.8, 200, [0.5, 0.6428571343421936]),
            ("SensitivityAtSpecificity", "specificity", 0.8, 7, [0.5, 0.6428571343421936]),
            ("SpecificityAtSensitivity", "sensitivity", 0.5, 200, [0.8333333134651184, 0.9333333373069763]),
            ("SpecificityAtSensitivity", "sensitivity", 0.5, 7, [0.8333333134651184, 0.9333333373069763]),
            ("SpecificityAtSensitivity", "sensitivity", 0.8, 200, [0.3333333432674408, 0.5333333611488342]),
            ("SpecificityAtSensitivity", "sensitivity", 0.8, 7, [0.1666666716337204, 0.13333334028720856]),
            ("PrecisionAtRecall", "recall", 0.5, 200, [0.75, 0.8999999761581421]),
            ("PrecisionAtRecall", "recall", 0.5, 7, [0.75, 0.8999999761581421]),
            ("PrecisionAtRecall", "recall", 0.8, 200, [0.5555555820465088, 0.6315789222717285]),
            ("PrecisionAtRecall", "recall", 0.8, 7, [0.5, 0.48275861144065857]),
            ("RecallAtPrecision", "precision", 0.5, 200, [1.0, 0.8571428656578064]),
            ("RecallAtPrecision", "precision", 0.5, 7, [1.0, 0.7142857313156128]),
            ("RecallAtPrecision", "precision", 0.8, 200, [0.0, 0.6428571343421936]),
            ("RecallAtPrecision", "precision", 0.8, 7, [0.0, 0.6428571343421936]),
        ];
        for (class, key, value, n, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let mut cfg = json!({"name": "m", "num_thresholds": n, "class_id": null});
                cfg[key] = json!(value);
                let metric = json!({"class_name": class, "config": cfg});
                let mut state =
                    MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), weighted);
                for (t, p, w) in [(&yt1[..], &yp1[..], &w1[..]), (&yt2, &yp2, &w2)] {
                    let t = Tensor::new(vec![t.len(), 1], t.to_vec()).unwrap();
                    let p = Tensor::new(vec![p.len(), 1], p.to_vec()).unwrap();
                    state.update(&t, &p, None, None, Some(w)).unwrap();
                }
                let r = state.result();
                assert!(
                    close(r, want),
                    "{metric} weighted {weighted}: {r} against {want}"
                );
            }
        }
        // Outputs of 0 and below are positive at no threshold of [0, …, 1] (AUC's start at −ε).
        let (t, p) = ([0., 1., 1., 0., 1., 0.], [-0.5, 0.0, 0.3, 0.0, 0.8, 1.7]);
        for (class, key) in [
            ("SensitivityAtSpecificity", "specificity"),
            ("SpecificityAtSensitivity", "sensitivity"),
            ("PrecisionAtRecall", "recall"),
            ("RecallAtPrecision", "precision"),
        ] {
            let mut cfg = json!({"num_thresholds": 11});
            cfg[key] = json!(0.5);
            let r = run(
                json!({"class_name": class, "config": cfg}),
                &t,
                &p,
                &[6, 1],
                None,
            );
            assert!(close(r, 0.6666666865348816), "{class}: {r}");
        }
        let auc = json!({"class_name": "AUC", "config": {"num_thresholds": 11}});
        let r = run(auc, &t, &p, &[6, 1], None);
        assert!(close(r, 0.555555522441864), "AUC: {r}");
        let m = |cfg: Value| json!({"class_name": "PrecisionAtRecall", "config": cfg});
        for bad in [
            m(json!({})),
            m(json!({"recall": 1.5})),
            m(json!({"recall": 0.5, "num_thresholds": 0})),
            m(json!({"recall": 0.5, "num_thresholds": 1})),
            m(json!({"recall": 0.5, "class_id": -1})),
        ] {
            assert!(Metric::from_keras(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_k_and_class_id_match_keras_over_two_batches() {
        // Keras 3.15.1: update_state on two batches of (n, 3) outputs, without and with sample
        // weights. Rows [0.5, 0.5, 0.2] and [0.3, 0.3, 0.3] tie at the top-k boundary.
        let (yt1, yp1) = (
            [0., 1., 0., 1., 0., 0., 0., 0., 1., 0., 1., 1., 1., 0., 1.],
            [
                0.2, 0.7, 0.1, 0.6, 0.3, 0.8, 0.1, 0.4, 0.35, 0.5, 0.5, 0.2, 0.9, 0.05, 0.6,
            ],
        );
        let (yt2, yp2) = (
            [1., 0., 0., 0., 1., 0., 0., 0., 1.],
            [0.3, 0.3, 0.3, 0.2, 0.9, 0.1, 0.45, 0.6, 0.7],
        );
        let (w1, w2) = ([1.0, 2.0, 0.5, 1.0, 3.0], [2.0, 1.0, 0.5]);
        #[rustfmt::skip]
        let cases: [(&str, Value, [f64; 2]); 11] = [
            ("Precision", json!({"class_id": 1}), [0.6666666865348816, 0.800000011920929]),
            ("Precision", json!({"class_id": 2, "thresholds": 0.3}), [0.75, 0.6666666865348816]),
            ("Recall", json!({"class_id": 0}), [0.6666666865348816, 0.7142857313156128]),
            ("Precision", json!({"top_k": 1}), [0.625, 0.6818181872367859]),
            ("Recall", json!({"top_k": 2}), [0.8999999761581421, 0.9333333373069763]),
            ("Precision", json!({"top_k": 2, "class_id": 2}), [0.75, 0.6666666865348816]),
            ("Recall", json!({"top_k": 1, "class_id": 1}), [0.6666666865348816, 0.6666666865348816]),
            ("Precision", json!({"top_k": 2, "thresholds": 0.4}), [0.699999988079071, 0.7666666507720947]),
            ("SensitivityAtSpecificity", json!({"specificity": 0.5, "class_id": 2, "num_thresholds": 11}), [1.0, 0.800000011920929]),
            ("RecallAtPrecision", json!({"precision": 0.5, "class_id": 0, "num_thresholds": 11}), [1.0, 1.0]),
            ("PrecisionAtRecall", json!({"recall": 0.6, "class_id": 1}), [1.0, 1.0]),
        ];
        for (class, cfg, want) in cases {
            let metric = json!({"class_name": class, "config": cfg});
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let mut state =
                    MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), weighted);
                for (t, p, w) in [(&yt1[..], &yp1[..], &w1[..]), (&yt2, &yp2, &w2)] {
                    let t = Tensor::new(vec![t.len() / 3, 3], t.to_vec()).unwrap();
                    let p = Tensor::new(vec![p.len() / 3, 3], p.to_vec()).unwrap();
                    state.update(&t, &p, None, None, Some(w)).unwrap();
                }
                let r = state.result();
                assert!(
                    close(r, want),
                    "{metric} weighted {weighted}: {r} against {want}"
                );
            }
        }
        // Kept entries of 0 and below are positives too: Keras' default threshold with `top_k` is
        // −10¹⁰ (with a threshold of 0 they would be 0.2 and 1.0).
        let t = [0., 1., 0., 1., 0., 0., 0., 0., 1., 0., 1., 1.];
        let p = [
            -0.2, -0.7, -0.1, 0.6, -0.3, 0.8, -0.1, -0.4, -0.35, 0.0, -0.5, -0.2,
        ];
        for (class, cfg, want) in [
            ("Recall", json!({"top_k": 2}), 0.6000000238418579),
            ("Precision", json!({"top_k": 2, "class_id": 0}), 0.25),
        ] {
            let r = run(
                json!({"class_name": class, "config": cfg}),
                &t,
                &p,
                &[4, 3],
                None,
            );
            assert!(close(r, want), "{class} {cfg}: {r} against {want}");
        }
        // Beyond the last axis: an error naming the setting, not a panic.
        let (t, p) = (
            Tensor::new(vec![1, 3], vec![0., 1., 0.]).unwrap(),
            Tensor::new(vec![1, 3], vec![0.2, 0.7, 0.1]).unwrap(),
        );
        for (cfg, key) in [
            (json!({"class_id": 3}), "class_id"),
            (json!({"top_k": 4}), "top_k"),
        ] {
            let metric = json!({"class_name": "Recall", "config": cfg});
            let mut state = MetricState::<f32>::new(Metric::from_keras(&metric).unwrap(), false);
            let err = state
                .update(&t, &p, None, None, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let bad = json!({"class_name": "Precision", "config": {"top_k": 0}});
        assert!(Metric::from_keras(&bad).is_err());
    }

    #[test]
    fn correlations_match_keras() {
        // keras.metrics.PearsonCorrelation / ConcordanceCorrelation (Keras 3.15.1, float32), on
        // their docstrings' example, plain and with sample weights [2, 1].
        let (a, b) = (
            [0.0, 1.0, 0.5, 1.0, 1.0, 0.2],
            [0.1, 0.9, 0.5, 1.0, 0.9, 0.2],
        );
        let w = [2.0, 1.0];
        for (name, plain, weighted) in [
            ("PearsonCorrelation", 0.9966995716094971, 0.9977996945381165),
            (
                "ConcordanceCorrelation",
                0.9816316962242126,
                0.9796242713928223,
            ),
        ] {
            let m = || json!({"class_name": name, "config": {"name": "c", "axis": -1}});
            let r = run(m(), &a, &b, &[2, 3], None);
            assert!(close(r, plain), "{name} {r}");
            let r = run(m(), &a, &b, &[2, 3], Some(&w));
            assert!(close(r, weighted), "{name} weighted {r}");
        }
        // The string names, per step of a sequence output (the mean over rows of its last axis).
        let r = run(json!("pearson_correlation"), &a, &b, &[1, 2, 3], None);
        assert!(close(r, 0.9966995716094971), "{r}");
        // One column: Keras divides 0 by a standard deviation of 0.
        assert!(run(
            json!("pearson_correlation"),
            &[1.0, 2.0],
            &[1.0, 3.0],
            &[2, 1],
            None
        )
        .is_nan());
        let e =
            Metric::from_keras(&json!({"class_name": "PearsonCorrelation", "config": {"axis": 0}}));
        assert!(e.unwrap_err().to_string().contains("axis 0"));
    }

    #[test]
    fn fbeta_matches_keras_over_two_batches() {
        // keras.metrics.FBetaScore (Keras 3.15.1), update_state on two batches, without and with
        // sample weights; the second batch has a row of zeros (no positive without a threshold).
        let yt1 = [1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 0., 0.];
        let yp1 = [0.7, 0.2, 0.1, 0.3, 0.3, 0.4, 0.1, 0.5, 0.4, 0.6, 0.3, 0.1];
        let (yt2, yp2) = ([0., 1., 0., 0., 0., 1.], [0.2, 0.5, 0.3, 0.0, 0.0, 0.0]);
        let (w1, w2) = ([1.0, 2.0, 0.5, 1.0], [3.0, 1.0]);
        let batches: [Batch<'_>; 2] = [(&yt1, &yp1, &w1, 4), (&yt2, &yp2, &w2, 2)];
        #[rustfmt::skip]
        let cases: [(Value, f64, [f64; 2]); 8] = [
            (json!({"average": "micro"}), 1.0, [0.5454545021057129, 0.625]),
            (json!({"average": "micro"}), 2.0, [0.5172414183616638, 0.6024096608161926]),
            (json!({"average": "macro"}), 1.0, [0.5, 0.5686274170875549]),
            (json!({"average": "macro"}), 2.0, [0.5, 0.5460992455482483]),
            (json!({"average": "weighted"}), 1.0, [0.5, 0.650519073009491]),
            (json!({"average": "weighted"}), 2.0, [0.5, 0.6107634902000427]),
            (json!({"average": "macro", "threshold": 0.35}), 1.0, [0.6666666865348816, 0.6519607901573181]),
            (json!({"average": "macro", "threshold": 0.35}), 2.0, [0.6666666865348816, 0.6441384553909302]),
        ];
        for (cfg, beta, want) in cases {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let mut cfg = cfg.clone();
                cfg["beta"] = json!(beta);
                let metric = json!({"class_name": "FBetaScore", "config": cfg});
                let r = after(&metric, weighted, &batches).result();
                assert!(
                    close(r, want),
                    "{cfg} weighted {weighted}: {r} against {want}"
                );
            }
        }
        // F1Score's default (average None) on one column: Keras' one-element result.
        let r = run(
            json!("f1_score"),
            &[1.0, 0.0, 1.0],
            &[0.7, 0.2, 0.0],
            &[3, 1],
            None,
        );
        assert!(close(r, 0.49999994), "{r}");
        // On several columns: one score per class, Keras' `FBetaScore(average=None)` result on
        // the same two batches.
        #[rustfmt::skip]
        let per_class: [(Value, [[f64; 3]; 2]); 4] = [
            (json!({}), [[1.0, 0.4999999403953552, 0.0], [1.0, 0.7058823704719543, 0.0]]),
            (json!({"beta": 2.0}), [[1.0, 0.5, 0.0], [1.0, 0.6382978558540344, 0.0]]),
            (json!({"threshold": 0.35}),
             [[1.0, 0.4999999403953552, 0.4999999403953552], [1.0, 0.7058823704719543, 0.24999994039535522]]),
            (json!({"beta": 0.5, "threshold": 0.35}),
             [[0.9999999403953552, 0.49999988079071045, 0.49999988079071045],
              [0.9999999403953552, 0.7894735932350159, 0.2173912525177002]]),
        ];
        for (cfg, want) in per_class {
            for (weighted, want) in [false, true].into_iter().zip(want) {
                let metric = json!({"class_name": "FBetaScore", "config": cfg});
                let state = after(&metric, weighted, &batches);
                assert_per_class(&state, &want, &format!("{cfg} weighted {weighted}"));
            }
        }
        for bad in [
            json!({"average": "mean"}),
            json!({"beta": 0.0}),
            json!({"threshold": 1.5}),
        ] {
            let m = json!({"class_name": "FBetaScore", "config": bad});
            assert!(Metric::from_keras(&m).is_err(), "{m}");
        }
    }

    #[test]
    fn metric_functions_and_refused_settings() {
        let f = |v: Value| Metric::from_keras(&v);
        // Keras 3 saves metric functions by name; TF-Keras 2 wraps them.
        let m = f(json!({"class_name": "function", "config": "mean_absolute_error"})).unwrap();
        assert_eq!(
            (m.name.as_str(), m.function),
            ("mean_absolute_error", MetricFn::MeanAbsoluteError)
        );
        let m = f(json!({"class_name": "MeanMetricWrapper", "config": {"name": "kl", "fn": "kullback_leibler_divergence"}}))
            .unwrap();
        assert_eq!(
            (m.name.as_str(), m.function),
            ("kl", MetricFn::Loss(Loss::KlDivergence))
        );
        assert_eq!(
            f(json!({"class_name": "function", "config": "accuracy"}))
                .unwrap()
                .function,
            MetricFn::ExactAccuracy
        );
        let m = f(json!({"class_name": "BinaryCrossentropy", "config": {"name": "b", "from_logits": true, "label_smoothing": 0.1}}))
            .unwrap();
        assert_eq!(
            m.function,
            MetricFn::Loss(Loss::BinaryCrossentropy {
                from_logits: true,
                label_smoothing: 0.1
            })
        );
        let refused = |v: Value, what: &str| {
            let e = f(v).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        refused(
            json!({"class_name": "AUC", "config": {"label_weights": [1, "x"]}}),
            "AUC.label_weights",
        );
        refused(
            json!({"class_name": "AUC", "config": {"thresholds": 0.5}}),
            "AUC.thresholds",
        );
        refused(
            json!({"class_name": "AUC", "config": {"label_weights": []}}),
            "AUC.label_weights",
        );
        refused(
            json!({"class_name": "AUC", "config": {"curve": "XY"}}),
            "AUC.curve",
        );
        refused(
            json!({"class_name": "AUC", "config": {"num_thresholds": 1}}),
            "num_thresholds",
        );
        refused(
            json!({"class_name": "SparseTopKCategoricalAccuracy", "config": {"from_sorted_ids": true}}),
            "from_sorted_ids",
        );
        refused(
            json!({"class_name": "SparseCategoricalCrossentropy", "config": {"ignore_class": 0}}),
            "ignore_class",
        );
        refused(
            json!({"class_name": "CosineSimilarity", "config": {"axis": 1}}),
            "axis",
        );
        refused(json!("mean_tensor"), "mean_tensor");
        // Built in code: checked before use.
        let mut auc = Metric::from_name("auc").unwrap();
        assert!(auc.validate().is_ok());
        auc.function = MetricFn::Auc {
            num_thresholds: 0,
            curve: AucCurve::Roc,
            summation: AucSummation::Interpolation,
            from_logits: false,
            multi_label: false,
        };
        assert!(auc
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_thresholds"));
    }
}
