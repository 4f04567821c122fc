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
//! Supported: `mae`, `mse`, `mape`, `msle` (and their long and class names), `accuracy`/`acc`
//! (resolved from the shapes to binary, sparse categorical or categorical accuracy, as Keras'
//! `compile` does), `binary_accuracy` (with its `threshold`), `categorical_accuracy`,
//! `sparse_categorical_accuracy`; and three metrics that are not mean wrappers and do not see the
//! output mask, as in Keras: `root_mean_squared_error` (a weighted mean of squares, then its
//! root), `precision` and `recall` (weighted confusion counts over the epoch, one threshold, no
//! `top_k` or `class_id`). Other metrics are reported by [`Metric::from_keras`] as unsupported.

use serde_json::Value;

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

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
        /// Keras default 0.5.
        threshold: f64,
    },
    /// True positives over actual positives, as `Precision`.
    Recall {
        /// Keras default 0.5.
        threshold: f64,
    },
}

/// One compiled metric: its history name and what it computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// The name in the history (`"mae"`, `"accuracy"`, …; `val_` is prefixed for validation):
    /// the string the metric was compiled with, or a metric object's `name`.
    pub name: String,
    /// The function.
    pub function: MetricFn,
}

impl Metric {
    /// A metric by the names `keras.metrics.get` knows (case-sensitive, as Keras), with the name
    /// as its history key; `"accuracy"` and `"acc"` (any case) are resolved later from the shapes.
    ///
    /// ```
    /// use grucell::train::metrics::{Metric, MetricFn};
    /// assert_eq!(Metric::from_name("mae")?.function, MetricFn::MeanAbsoluteError);
    /// assert_eq!(Metric::from_name("acc")?.function, MetricFn::Accuracy);
    /// assert!(Metric::from_name("AUC").is_err());
    /// # Ok::<(), grucell::ConfigError>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Metric, ConfigError> {
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
            "precision" | "Precision" => MetricFn::Precision { threshold: 0.5 },
            "recall" | "Recall" => MetricFn::Recall { threshold: 0.5 },
            other => {
                return Err(ConfigError::unsupported(
                    "metric",
                    format!(
                        "`{other}` is not computed by grucell (supported: mae, mse, mape, msle, \
                         root_mean_squared_error, accuracy, binary_accuracy, \
                         categorical_accuracy, sparse_categorical_accuracy, precision, recall)"
                    ),
                ))
            }
        };
        Ok(Metric {
            name: name.to_string(),
            function,
        })
    }

    /// A metric as a Keras compile config holds it: a name, or a serialized metric object
    /// (`{"class_name": "BinaryAccuracy", "config": {"name": …, "threshold": …}}`), named by
    /// its config's `name` as Keras names it.
    pub fn from_keras(v: &Value) -> Result<Metric, ConfigError> {
        match v {
            Value::String(s) => Metric::from_name(s),
            Value::Object(o) => {
                let class = o.get("class_name").and_then(Value::as_str).unwrap_or("");
                let config = o.get("config");
                let name = config
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or(class);
                // TF-Keras 2 saves compiled metrics as wrappers of a named function.
                if class == "MeanMetricWrapper" {
                    if let Some(f) = config.and_then(|c| c.get("fn")).and_then(Value::as_str) {
                        let mut m = Metric::from_name(f)?;
                        m.name = name.to_string();
                        return Ok(m);
                    }
                }
                // A metric class named "Accuracy" is Keras' exact-equality metric, not the
                // string's shape-resolved accuracy.
                if class == "Accuracy" {
                    return Err(ConfigError::unsupported(
                        "metric",
                        "`Accuracy` (the exact-equality metric) is not computed by grucell",
                    ));
                }
                let mut m = Metric::from_name(class)?;
                let setting = |k: &str| config.and_then(|c| c.get(k)).filter(|v| !v.is_null());
                match &mut m.function {
                    MetricFn::BinaryAccuracy { threshold } => {
                        if let Some(t) = setting("threshold") {
                            *threshold = t.as_f64().ok_or_else(|| {
                                ConfigError::invalid("BinaryAccuracy.threshold", t, "a number")
                            })?;
                        }
                    }
                    MetricFn::Precision { threshold } | MetricFn::Recall { threshold } => {
                        if let Some(k) = ["top_k", "class_id"]
                            .into_iter()
                            .find(|k| setting(k).is_some())
                        {
                            return Err(ConfigError::unsupported(
                                "metric",
                                format!("`{class}` with `{k}` is not computed by grucell"),
                            ));
                        }
                        if let Some(t) = setting("thresholds") {
                            *threshold = t.as_f64().ok_or_else(|| {
                                ConfigError::unsupported(
                                    "metric",
                                    format!(
                                        "`{class}` with thresholds {t} (one number is computed)"
                                    ),
                                )
                            })?;
                        }
                    }
                    _ => {}
                }
                m.name = name.to_string();
                Ok(m)
            }
            other => Err(ConfigError::invalid(
                "metric",
                other,
                "a metric name or a serialized Keras metric",
            )),
        }
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
        }
    }
}

/// The running state of one metric: Keras' `Mean` with its `total` and `count`.
#[derive(Clone, Debug)]
pub(crate) struct MetricState<T> {
    pub(crate) metric: Metric,
    /// Takes the sample weights (a `weighted_metrics` entry).
    pub(crate) weighted: bool,
    resolved: Option<MetricFn>,
    total: T,
    count: T,
}

impl<T: Float> MetricState<T> {
    pub(crate) fn new(metric: Metric, weighted: bool) -> Self {
        MetricState {
            metric,
            weighted,
            resolved: None,
            total: T::zero(),
            count: T::zero(),
        }
    }

    /// `reset_state`.
    pub(crate) fn reset(&mut self) {
        self.total = T::zero();
        self.count = T::zero();
    }

    /// `result`: `total / count`, 0 when nothing was counted (`divide_no_nan`); its square
    /// root for `RootMeanSquaredError`.
    pub(crate) fn result(&self) -> f64 {
        let r = if self.count == T::zero() {
            T::zero()
        } else {
            self.total / self.count
        };
        match self.resolved {
            Some(MetricFn::RootMeanSquaredError) => r.sqrt().f64(),
            _ => r.f64(),
        }
    }

    /// `update_state(y_true, y_pred, sample_weight)` for one batch. `sample_weight` holds one
    /// weight per loss term (per sample, or per sample and step), as the loss takes them; it is
    /// used by weighted metrics only. `mask` is the output's mask (sequence outputs).
    pub(crate) fn update(
        &mut self,
        y_true: &Tensor<T>,
        y_pred: &Tensor<T>,
        mask: Option<&Mask>,
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
        let values = metric_values(function, &self.metric.name, y_true, y_pred)?;
        let n = y_pred.shape().first().copied().unwrap_or(1).max(1);
        let per = values.len() / n;
        // Weights per sample: none, one, or one per step (mask and/or step weights). Keras'
        // plain `Mean` and confusion-matrix metrics do not see the output mask.
        let wrapper = !matches!(
            function,
            MetricFn::RootMeanSquaredError | MetricFn::Precision { .. } | MetricFn::Recall { .. }
        );
        let mask =
            mask.filter(|m| wrapper && y_pred.shape().len() == 3 && m.data.len() == n * m.time);
        let sw = sample_weight.filter(|_| self.weighted);
        let confusion = !wrapper && function != MetricFn::RootMeanSquaredError;
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
        if let MetricFn::Precision { threshold } | MetricFn::Recall { threshold } = function {
            // Confusion counts: `total` true positives, `count` those plus the false positives
            // (precision) or the false negatives (recall).
            let th = T::of(threshold);
            let precision = matches!(function, MetricFn::Precision { .. });
            for (i, (&label, &pred)) in y_true.data().iter().zip(y_pred.data()).enumerate() {
                let (s, j) = (i / per, (i % per) / each);
                let w = sw.map_or(T::one(), |w| w[s * sw_per + j * sw_per / w_per]);
                let (actual, predicted) = (label != T::zero(), pred > th);
                if actual && predicted {
                    self.total += w;
                    self.count += w;
                } else if (predicted && !actual && precision)
                    || (actual && !predicted && !precision)
                {
                    self.count += w;
                }
            }
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
}

fn mean<T: Float>(v: &[T]) -> T {
    let mut s = T::zero();
    for x in v {
        s += *x;
    }
    s / T::of(v.len().max(1) as f64)
}

/// The metric function's result, flattened: one value per row of `y_pred` (all axes but the
/// last), or per entry for binary accuracy.
fn metric_values<T: Float>(
    f: MetricFn,
    name: &str,
    y_true: &Tensor<T>,
    y_pred: &Tensor<T>,
) -> Result<Vec<T>, Error> {
    let shape = y_pred.shape();
    let last = shape.last().copied().unwrap_or(1).max(1);
    let rows = y_pred.len() / last;
    let (t, p) = (y_true.data(), y_pred.data());
    let mismatch = |want: String| -> Error {
        ShapeError::mismatch(format!("metric `{name}` targets"), y_true.shape(), want).into()
    };
    let sparse = matches!(f, MetricFn::SparseCategoricalAccuracy);
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
    let argmax = |v: &[T]| -> usize {
        let mut best = 0;
        for (i, x) in v.iter().enumerate() {
            if *x > v[best] {
                best = i;
            }
        }
        best
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
                .map(|(a, b)| {
                    let hit = if *b > th { T::one() } else { T::zero() };
                    if hit == *a {
                        T::one()
                    } else {
                        T::zero()
                    }
                })
                .collect()
        }
        MetricFn::CategoricalAccuracy => (0..rows)
            .map(|r| {
                let same =
                    argmax(&t[r * last..(r + 1) * last]) == argmax(&p[r * last..(r + 1) * last]);
                if same {
                    T::one()
                } else {
                    T::zero()
                }
            })
            .collect(),
        MetricFn::SparseCategoricalAccuracy => (0..rows)
            .map(|r| {
                let class = T::of(argmax(&p[r * last..(r + 1) * last]) as f64);
                if class == t[r] {
                    T::one()
                } else {
                    T::zero()
                }
            })
            .collect(),
        MetricFn::RootMeanSquaredError => t
            .iter()
            .zip(p)
            .map(|(a, b)| (*b - *a) * (*b - *a))
            .collect(),
        // Counted in `update` from the entries themselves; one placeholder per entry.
        MetricFn::Precision { .. } | MetricFn::Recall { .. } => vec![T::zero(); p.len()],
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
/// `weighted_metrics`; a repeated metric name gets `_1`, `_2`, … (a weighted one `weighted_`
/// first), as Keras' `CompileMetrics.result`.
#[derive(Clone, Debug)]
pub(crate) struct MetricSet<T> {
    /// Per output: Keras' `Mean` of its loss over the batches.
    losses: Vec<(String, T, T)>,
    states: Vec<MetricState<T>>,
    names: Vec<String>,
}

impl<T: Float> MetricSet<T> {
    /// `output_losses`: the names of the outputs whose losses are tracked (none for a single
    /// output, as in Keras).
    pub(crate) fn new(metrics: &[Metric], weighted: &[Metric], output_losses: &[String]) -> Self {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let mut unique = |name: String| -> String {
            match seen.get_mut(&name) {
                None => {
                    seen.insert(name.clone(), 1);
                    name
                }
                Some(k) => {
                    let n = format!("{name}_{k}");
                    *k += 1;
                    n
                }
            }
        };
        let mut states = Vec::new();
        let mut names = Vec::new();
        for m in metrics {
            names.push(unique(m.name.clone()));
            states.push(MetricState::new(m.clone(), false));
        }
        for m in weighted {
            let name = if names.contains(&m.name) {
                unique(format!("weighted_{}", m.name))
            } else {
                unique(m.name.clone())
            };
            names.push(name);
            states.push(MetricState::new(m.clone(), true));
        }
        let losses = output_losses
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

    /// Every metric's `update_state` with one batch of a single-output model.
    pub(crate) fn update(
        &mut self,
        y_true: &Tensor<T>,
        output: &(Tensor<T>, Option<Mask>),
        sample_weight: Option<&[T]>,
    ) -> Result<(), Error> {
        for s in &mut self.states {
            s.update(y_true, &output.0, output.1.as_ref(), sample_weight)?;
        }
        Ok(())
    }

    pub(crate) fn results(&self) -> Vec<f64> {
        let losses = self.losses.iter().map(|(_, total, count)| {
            if *count == T::zero() {
                0.0
            } else {
                (*total / *count).f64()
            }
        });
        losses
            .chain(self.states.iter().map(MetricState::result))
            .collect()
    }
}
