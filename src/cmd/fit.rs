//! `grucell fit`: trains a Keras model file on `.npy` arrays, as Keras' `model.fit` does, and
//! saves the trained model.
//!
//! Loss and optimizer not given on the command line come from the file's `compile_config`
//! (what `model.compile(...)` recorded), else the optimizer defaults to Keras' `compile` default
//! (`rmsprop`); there is no default loss. The saved model's `compile_config` records the loss
//! and optimizer actually used.
//!
//! Optimizer state: when the optimizer is the file's compiled one (no `--optimizer` or
//! `--learning-rate`), the state the file holds (`optimizer/vars` of a model Keras or grucell
//! trained: iteration count, learning rate, Adam's moments, …) is restored; a learning-rate
//! schedule (Keras' six built-in ones) continues from that iteration count, as Keras'
//! `load_model` restores it, so training continues with the steps Keras would take. A file
//! whose saved optimizer has a different number of variables (another optimizer, other
//! trainable variables) is trained from a fresh state, with a warning, as Keras does. The
//! `.keras` output holds the state after training.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use grucell::io::keras::load::file_dtype;
use grucell::io::keras::write::{save_model_with_optimizer, save_safetensors_model};
use grucell::layers::model::Model;

use super::data::{
    at_least_one, compiled_metrics, default_batch_size, loss_of, read_arrays, read_sample_weight,
    ModelData,
};
use grucell::train::fit::{
    keras_compile_config, EarlyStopping, FitConfig, Monitor, Progress, ValidationFreq,
};
use grucell::train::optimizer::{Optimizer, OptimizerConfig, Restored};
use grucell::{Float, Tensor};
use serde_json::Value;

/// Arguments of `grucell fit`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Batches are taken in order (or reshuffled each epoch), the last partial batch included; \
--validation-split holds out the LAST fraction of the samples (as Keras). Training that diverges (a NaN or \
infinite loss or gradient) stops with an error naming the epoch and batch, and nothing is written."
)]
pub struct Args {
    /// The model and the data.
    #[command(flatten)]
    pub data: ModelData,
    /// Loss, by Keras name (mse, mae, huber, log_cosh, mape, msle, poisson, hinge, squared_hinge,
    /// categorical_hinge, kld, cosine_similarity, binary_crossentropy, categorical_crossentropy,
    /// sparse_categorical_crossentropy, binary_focal_crossentropy, categorical_focal_crossentropy,
    /// CategoricalGeneralizedCrossEntropy), with Keras' default arguments. Default: the model's
    /// compile config.
    #[arg(long, value_name = "NAME")]
    pub loss: Option<String>,
    /// Optimizer (sgd, adam, adamw, rmsprop, adagrad, nadam, adamax, lion, adadelta) with Keras'
    /// defaults. Default: the model's compile config, else rmsprop.
    #[arg(long, value_name = "NAME")]
    pub optimizer: Option<String>,
    /// Learning rate: a constant that replaces the optimizer's rate or schedule.
    #[arg(long, value_name = "F")]
    pub learning_rate: Option<f64>,
    /// Samples per optimizer step [default: the model's fixed input batch size if it has
    /// stateful layers (every batch must then have that size), else 32].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Passes over the training data.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub epochs: usize,
    /// Keep the sample order (Keras shuffle=False: the same results as Keras for models without
    /// dropout; with dropout, runs repeat with the same --seed).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Fraction of the samples, taken from the end, held out for validation.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub validation_split: f64,
    /// Validation inputs (.npy), as Keras' `validation_data`; repeat once per model input.
    /// Evaluated after every epoch (weighted by --validation-sample-weight, if given); needs
    /// --validation-y.
    #[arg(
        long,
        value_name = "X.npy",
        requires = "validation_y",
        conflicts_with = "validation_split"
    )]
    pub validation_x: Vec<PathBuf>,
    /// Validation targets (.npy); repeat once per model output. Needs --validation-x.
    #[arg(long, value_name = "Y.npy", requires = "validation_x")]
    pub validation_y: Vec<PathBuf>,
    /// Weights of the validation samples (.npy), shaped as --sample-weight's (Keras'
    /// `validation_data=(x, y, sample_weight)`). Needs --validation-x.
    #[arg(long, value_name = "W.npy", requires = "validation_x")]
    pub validation_sample_weight: Option<PathBuf>,
    /// Validate after every N-th epoch only (Keras' `validation_freq=N`).
    #[arg(long, value_name = "N", value_parser = at_least_one(), conflicts_with = "validation_epochs")]
    pub validation_freq: Option<usize>,
    /// Validate after the listed 1-based epochs only, e.g. `1,5,10` (Keras' `validation_freq`
    /// as a list).
    #[arg(long, value_name = "E,…", value_parser = parse_epochs)]
    pub validation_epochs: Option<BTreeSet<usize>>,
    /// Validate on the first N validation batches only (Keras' `validation_steps`).
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub validation_steps: Option<usize>,
    /// Samples per validation batch [default: --batch-size] (Keras' `validation_batch_size`).
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub validation_batch_size: Option<usize>,
    /// Start at this 0-based epoch, so that epochs N+1 to --epochs run (Keras' `initial_epoch`,
    /// to resume a run's epoch count).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub initial_epoch: usize,
    /// At most N batches per epoch; a pass over the samples then runs on across epochs, and an
    /// epoch ends early where a pass ends (Keras' `steps_per_epoch` on arrays).
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    pub steps_per_epoch: Option<usize>,
    /// Stop after N epochs without improvement of val_loss (loss without validation data or
    /// split) and keep
    /// the best epoch's weights (Keras EarlyStopping with restore_best_weights).
    #[arg(long, value_name = "N")]
    pub patience: Option<usize>,
    /// Zero the stateful layers' states at the start of every epoch (as a Keras callback calling
    /// their `reset_state()` in `on_epoch_begin`; Keras' fit itself never resets them).
    #[arg(long)]
    pub reset_states_each_epoch: bool,
    /// Keras' `sample_weight` (.npy): one weight per sample of --x, or per sample and step for a
    /// sequence output, multiplying those loss terms (the validation split keeps its samples'
    /// weights).
    #[arg(long, value_name = "W.npy")]
    pub sample_weight: Option<PathBuf>,
    /// Keras' `class_weight`, as `CLASS:WEIGHT,…` (e.g. `0:1,1:4.5`): each training sample
    /// weighs as its class (its target, rounded, or the arg-max of a one-hot target); classes
    /// not listed weigh 1, and the validation split is not weighted.
    #[arg(long, value_name = "C:W,…", value_parser = parse_class_weight, conflicts_with = "sample_weight")]
    pub class_weight: Option<BTreeMap<i64, f64>>,
    /// Seed of the shuffling and dropout (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Threads for the matrix products.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// No progress bar and no history table.
    #[arg(long)]
    pub quiet: bool,
    /// Where to save the trained model: .keras, or .safetensors (weights with the config).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Allow --output to be the --model file itself.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Clone, Copy)]
enum OutKind {
    Keras,
    Safetensors,
}

/// Checks `--output` before any work: its extension, and that it is not the input model.
fn check_output(args: &Args) -> Result<OutKind> {
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let kind = match ext.as_deref() {
        Some("keras") => OutKind::Keras,
        Some("safetensors") => OutKind::Safetensors,
        _ => bail!(
            "--output {}: expected a .keras or .safetensors file name",
            args.output.display()
        ),
    };
    if !args.overwrite && same_file(&args.data.model, &args.output) {
        bail!(
            "--output {} is the input model; pass --overwrite to replace it, or choose another file",
            args.output.display()
        );
    }
    Ok(kind)
}

/// Whether two paths name the same file (the second need not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(parent.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `--validation-epochs`: 1-based epoch numbers separated by commas.
fn parse_epochs(s: &str) -> Result<BTreeSet<usize>, String> {
    s.split(',')
        .map(|e| match e.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "`{e}` in `{s}`: expected 1-based epoch numbers separated by commas, e.g. 1,5,10"
            )),
        })
        .collect()
}

/// `--class-weight`: `CLASS:WEIGHT` pairs separated by commas, each class once.
fn parse_class_weight(s: &str) -> std::result::Result<BTreeMap<i64, f64>, String> {
    let mut map = BTreeMap::new();
    for pair in s.split(',').map(str::trim) {
        let (c, w) = pair
            .split_once(':')
            .ok_or_else(|| format!("`{pair}`: expected CLASS:WEIGHT, e.g. 1:2.5"))?;
        let c: i64 = c
            .trim()
            .parse()
            .map_err(|_| format!("`{pair}`: the class `{}` is not an integer", c.trim()))?;
        let w: f64 = w
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite())
            .ok_or_else(|| format!("`{pair}`: the weight `{}` is not a finite number", w.trim()))?;
        if map.insert(c, w).is_some() {
            return Err(format!("class {c} is given twice"));
        }
    }
    Ok(map)
}

/// Runs `grucell fit`.
pub fn run(args: &Args) -> Result<()> {
    if args.threads == 0 || args.threads > 1024 {
        bail!("--threads {}: expected 1..=1024", args.threads);
    }
    let out = check_output(args)?;
    let file = args.data.open()?;
    let saved_opt = file.optimizer_variables();
    if file_dtype(&file) == "float64" {
        train::<f64>(args, args.data.build(&file)?, &saved_opt, out)
    } else {
        train::<f32>(args, args.data.build(&file)?, &saved_opt, out)
    }
}

/// Restores the optimizer state saved in the model file (see the module documentation);
/// returns whether it did.
fn restore_optimizer<T: Float>(
    args: &Args,
    optimizer: &mut Optimizer<T>,
    saved: &[&Tensor<f64>],
) -> Result<bool> {
    let shown = args.data.model.display();
    match optimizer
        .restore_keras_state(saved)
        .with_context(|| format!("restoring the optimizer state of --model {shown}"))?
    {
        Restored::Yes => Ok(true),
        Restored::NothingSaved => Ok(false),
        Restored::Mismatch { saved, expected } => {
            eprintln!(
                "warning: not restoring the optimizer state of --model {shown}: it holds {saved} \
                 variables, this optimizer has {expected}; training starts from a fresh state \
                 (Keras skips it too)"
            );
            Ok(false)
        }
    }
}

fn train<T: Float>(
    args: &Args,
    mut model: Model<T>,
    saved_opt: &[&Tensor<f64>],
    out: OutKind,
) -> Result<()> {
    model.set_threads(args.threads);
    let (metrics, weighted_metrics) =
        compiled_metrics(&model, &format!("--model {}", args.data.model.display()));
    // A model no Keras 3 file can hold fails now, not after training.
    grucell::io::keras::write::model_config_json(&model).with_context(|| {
        format!(
            "--model {} cannot be saved after training",
            args.data.model.display()
        )
    })?;
    // The file's loss and optimizer are only read when the command line does not replace them,
    // so that one grucell cannot read does not stop a run that names its own.
    let reading = || {
        format!(
            "reading the compile config of {}",
            args.data.model.display()
        )
    };
    let loss = loss_of(&model, args.loss.as_deref(), &args.data.model)?;
    let from_config_loss = args.loss.is_none();
    let compiled_opt = match &args.optimizer {
        Some(_) => None,
        None => model.compiled_optimizer().with_context(reading)?,
    };
    let from_config_opt =
        args.optimizer.is_none() && args.learning_rate.is_none() && compiled_opt.is_some();
    let mut opt_cfg = match (&args.optimizer, compiled_opt) {
        (Some(name), _) => OptimizerConfig::from_name(name).context("--optimizer")?,
        (None, Some(o)) => o,
        (None, None) => OptimizerConfig::rmsprop(0.001),
    };
    if let Some(lr) = args.learning_rate {
        opt_cfg.learning_rate = lr.into();
    }
    let sizes: Vec<usize> = model
        .trainable_variables()
        .iter()
        .map(|(_, s)| s.iter().product())
        .collect();
    let mut optimizer =
        Optimizer::<T>::new(opt_cfg.clone(), &sizes).context("--learning-rate / --optimizer")?;
    if from_config_opt && restore_optimizer(args, &mut optimizer, saved_opt)? && !args.quiet {
        println!(
            "restored the optimizer state of {} (iteration {})",
            args.data.model.display(),
            optimizer.iterations()
        );
    }

    let x = read_arrays::<T>(&args.data.x, "--x")?;
    let y = read_arrays::<T>(&args.data.y, "--y")?;
    let val_x = read_arrays::<T>(&args.validation_x, "--validation-x")?;
    let val_y = read_arrays::<T>(&args.validation_y, "--validation-y")?;
    let validation = (!val_x.is_empty()).then_some((val_x.as_slice(), val_y.as_slice()));
    let cfg = FitConfig {
        batch_size: args
            .batch_size
            .unwrap_or_else(|| default_batch_size(&model)),
        epochs: args.epochs,
        shuffle: !args.no_shuffle,
        seed: args.seed,
        validation_split: args.validation_split,
        early_stopping: args.patience.map(|patience| EarlyStopping {
            monitor: if args.validation_split > 0.0 || validation.is_some() {
                Monitor::ValLoss
            } else {
                Monitor::Loss
            },
            patience,
            min_delta: 0.0,
            restore_best_weights: true,
        }),
        progress: if args.quiet {
            Progress::Never
        } else {
            Progress::Auto
        },
        reset_states_each_epoch: args.reset_states_each_epoch,
        sample_weight: args
            .sample_weight
            .as_deref()
            .map(|p| read_sample_weight(p, "--sample-weight"))
            .transpose()?,
        class_weight: args.class_weight.clone(),
        validation_sample_weight: args
            .validation_sample_weight
            .as_deref()
            .map(|p| read_sample_weight(p, "--validation-sample-weight"))
            .transpose()?,
        initial_epoch: args.initial_epoch,
        steps_per_epoch: args.steps_per_epoch,
        validation_steps: args.validation_steps,
        validation_batch_size: args.validation_batch_size,
        validation_freq: match (&args.validation_epochs, args.validation_freq) {
            (Some(e), _) => ValidationFreq::Epochs(e.clone()),
            (None, n) => ValidationFreq::Every(n.unwrap_or(1)),
        },
        metrics,
        weighted_metrics,
    };
    let history = model.fit(&x, &y, &loss, &mut optimizer, &cfg, validation)?;

    // Record what was used, keeping the file's other compile settings.
    let mut cc = match model.compile_config.take() {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => match keras_compile_config(&loss, &opt_cfg) {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
    };
    if !from_config_loss {
        cc.insert("loss".into(), loss.to_keras());
    }
    if !from_config_opt {
        cc.insert("optimizer".into(), opt_cfg.to_keras());
    }
    model.compile_config = Some(Value::Object(cc));
    match out {
        OutKind::Keras => save_model_with_optimizer(&model, &optimizer, &args.output),
        OutKind::Safetensors => save_safetensors_model(&model, &args.output),
    }
    .with_context(|| format!("saving --output {}", args.output.display()))?;

    if !args.quiet {
        print!("{}", history.table());
        let stop = match (history.stopped_early, history.best_epoch) {
            (true, Some(b)) => format!(", stopped early; weights of epoch {b}"),
            (false, Some(b)) => format!("; weights of epoch {b}"),
            _ => String::new(),
        };
        println!(
            "saved {} ({} epochs{stop})",
            args.output.display(),
            history.epochs_run
        );
    }
    Ok(())
}
