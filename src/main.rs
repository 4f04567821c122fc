//! The `grucell` command-line tool: a thin shell over the library. One module per subcommand in
//! `src/cmd/`, each with a clap `Args` struct and a `run(&Args) -> anyhow::Result<()>`.
//!
//! Adding a subcommand: write `src/cmd/<name>.rs`, add `pub mod <name>;` to `src/cmd/mod.rs`,
//! then one variant to [`Command`] (its `///` line is the help text) and one arm to
//! [`Command::run`].
//!
//! Exit codes:
//! - 0: success (also when stdout is closed early, e.g. `grucell inspect m.keras | head`);
//! - 1: a runtime or data error (unreadable or malformed file, shape mismatch, training
//!   diverged): one line `error: ...` on stderr, with the whole cause chain (as `{:#}`);
//! - 2: a usage error (unknown flag, missing argument), reported by clap;
//! - 101: an internal error (a bug): one line `error: internal error: ...` on stderr, never a
//!   backtrace.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Keras-exact GRU: predict with Keras models, train, forecast, benchmark.
#[derive(Parser, Debug)]
#[command(name = "grucell", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what grucell is for: the Keras seed example, then a GRU forecaster on the shipped
    /// CO2 series.
    Demo(cmd::demo::Args),
    /// Run a Keras model (.keras or .h5) on arrays (.npy / .npz) and write its outputs.
    Predict(cmd::predict::Args),
    /// Print a Keras model's summary (layers, output shapes, parameter counts, dtype, compile
    /// settings).
    Inspect(cmd::inspect::Args),
    /// Train a Keras model (.keras or .h5) on arrays (.npy), as Keras' fit, and save it.
    Fit(Box<cmd::fit::Args>),
    /// The loss of a Keras model on data (.npy), as Keras' evaluate.
    Evaluate(cmd::evaluate::Args),
    /// Train a GRU forecaster on a column of a CSV file.
    Forecast(cmd::forecast::Args),
    /// Time the GRU engine (forward and training) on standard sizes.
    Bench(cmd::bench::Args),
}

impl Command {
    fn run(&self) -> anyhow::Result<()> {
        match self {
            Command::Demo(a) => cmd::demo::run(a),
            Command::Predict(a) => cmd::predict::run(a),
            Command::Inspect(a) => cmd::inspect::run(a),
            Command::Fit(a) => cmd::fit::run(a),
            Command::Evaluate(a) => cmd::evaluate::run(a),
            Command::Forecast(a) => cmd::forecast::run(a),
            Command::Bench(a) => cmd::bench::run(a),
        }
    }
}

/// Set by the panic hook when the panic was `println!` failing on a closed stdout.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// The panic's message, without the location and backtrace the default hook prints.
fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The error and its causes on one line, like anyhow's `{:#}`, but without repeating a cause
/// whose text the message before it already contains (grucell's I/O errors quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(msg.as_str())) {
            parts.push(msg);
        }
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when an error chain ends in a broken pipe (the reader of stdout went away).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // A panic is a bug: report it in one line, without a backtrace, with its own exit code. The
    // one expected panic, `println!` into a closed pipe, ends the program quietly instead.
    std::panic::set_hook(Box::new(|info| {
        let msg = panic_message(info);
        if msg.contains("Broken pipe") {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
            return;
        }
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}{at}; please report it");
    }));
    // Usage errors exit with 2 here, `--help` and `--version` with 0.
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| cli.command.run()) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
        Err(_) if STDOUT_CLOSED.load(Ordering::SeqCst) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(101),
    }
}
