//! `grucell demo`: what grucell is for, in one command, offline: the Keras seed example's
//! shapes, then a GRU forecaster trained on the weekly Mauna Loa CO2 series shipped in `data/`,
//! compared with two baselines, with its plot, metrics and a Keras model written to `out/demo`.

use std::path::PathBuf;
use std::time::Instant;

use grucell::forecast::csv::parse_series;
use grucell::forecast::pipeline::ForecastConfig;
use grucell::{GruCellConfig, Initializer, Rnn, Tensor};

use crate::cmd::forecast::{print_report, train_and_write, Labels};

/// The CO2 series, embedded so the demo runs from any folder (see data/README.md).
const CO2_CSV: &[u8] = include_bytes!("../../data/co2_weekly_mauna_loa.csv");

/// Arguments of `grucell demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "out/demo")]
    pub out: PathBuf,
    /// Seed for weights and shuffling.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Maximum epochs per member (for quick checks; default as `grucell forecast`).
    #[arg(long, value_name = "N", hide = true)]
    pub epochs: Option<usize>,
}

fn shape(t: &Tensor<f32>) -> String {
    let dims: Vec<String> = t.shape().iter().map(ToString::to_string).collect();
    format!("({})", dims.join(", "))
}

/// The seed example of the Keras `layer_gru_cell` documentation, with the shapes it prints.
pub fn seed_example() -> anyhow::Result<()> {
    println!("1. The seed example (Keras layer_gru_cell documentation):");
    // inputs <- k_random_uniform(c(32, 10, 8))
    let uniform = Initializer::RandomUniform {
        minval: 0.0,
        maxval: 1.0,
        seed: Some(0),
    };
    let inputs: Tensor<f32> = uniform.init(&[32, 10, 8], 0)?;
    // output <- inputs %>% layer_rnn(layer_gru_cell(4))
    let output = Rnn::new(GruCellConfig::new(4), 8)?.call(&inputs)?.output;
    println!("   inputs <- k_random_uniform(c(32, 10, 8))");
    println!("   output <- inputs %>% layer_rnn(layer_gru_cell(4))");
    println!("   output$shape                 {}", shape(&output));
    // rnn <- layer_rnn(cell = layer_gru_cell(4), return_sequences = TRUE, return_state = TRUE)
    let rnn = Rnn::new(GruCellConfig::new(4), 8)?
        .return_sequences(true)
        .return_state(true);
    let out = rnn.call(&inputs)?;
    let final_state = out
        .states
        .first()
        .ok_or_else(|| anyhow::anyhow!("the GRU returned no state"))?;
    println!("   rnn <- layer_rnn(cell = layer_gru_cell(4), return_sequences = TRUE, return_state = TRUE)");
    println!("   c(whole_sequence_output, final_state) %<-% rnn(inputs)");
    println!("   whole_sequence_output$shape  {}", shape(&out.output));
    println!("   final_state$shape            {}", shape(final_state));
    println!();
    Ok(())
}

/// Runs `grucell demo`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    seed_example()?;
    println!("2. Forecasting weekly CO2 at Mauna Loa (1958-2001, NOAA/Scripps, data/co2_weekly_mauna_loa.csv)");
    println!("   one week ahead, chronological split; the last 20 % is the test part.");
    let series = parse_series(
        CO2_CSV,
        "data/co2_weekly_mauna_loa.csv",
        Some("co2_ppm"),
        Some("date"),
    )?;
    let cfg = ForecastConfig {
        season: Some(52),
        seed: args.seed,
        epochs: args.epochs,
        ..ForecastConfig::default()
    };
    let (outcome, files) = train_and_write(&series, &cfg, &args.out, args.quiet)?;
    println!();
    let labels = Labels {
        unit: Some("ppm"),
        step: "week",
        seasonal: Some("same week one year earlier"),
        command: "cargo run --release --",
    };
    print_report(&outcome, &files, &labels, "   ");
    println!();
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}
