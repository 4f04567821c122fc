//! `grucell bench`: times the GRU engine (inference forward over the full sequence; training =
//! forward with saved activations + backward to every weight and the input) on the benchmark
//! sizes, beside the machine's CPU model and its own GEMM rate at the same thread count.
//!
//! FLOP count: forward = 2·B·T·3H·(I + H); training ≈ 3 × forward. `tools/peers_bench.py` runs
//! this command next to PyTorch, ONNX Runtime and Keras and prints the ratios.

use anyhow::Result;
use grucell::bench::{
    bench_size_with, cpu_model, gemm_gflops, peak_rss_mib, with_threads, BenchSize,
};

/// Arguments of `grucell bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Threads for the GEMMs (a dedicated pool of exactly this many).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub threads: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Sizes: S, M, L, XL, T1 or B,T,I,H (batch, time, input, units); separate with spaces or
    /// repeat the flag. Default: all named sizes.
    #[arg(long, value_name = "SIZE", num_args = 1.., value_delimiter = ' ')]
    pub sizes: Vec<String>,
    /// Time budget per size in milliseconds (median over as many repetitions as fit, 3..200).
    #[arg(long, value_name = "MS", default_value_t = 3000.0)]
    pub budget_ms: f64,
    /// Widest grucell kernels to use: portable, avx2 or avx512 (default: the best the CPU has),
    /// e.g. to time the AVX2 kernels on an AVX-512 machine. The GEMM crate (faer) still picks
    /// its own.
    #[arg(long, value_name = "ISA")]
    pub isa: Option<String>,
    /// Keras' GRU convention timed: true (the default, Keras' and PyTorch's) or false (the reset
    /// gate applied before the candidate's recurrent product, ONNX linear_before_reset = 0).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub reset_after: bool,
}

/// Splits `S,M,L` into names while keeping `B,T,I,H` groups of four integers together.
fn parse_sizes(raw: &[String]) -> Result<Vec<BenchSize>> {
    let mut out = Vec::new();
    for item in raw {
        let parts: Vec<&str> = item
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let mut i = 0;
        while i < parts.len() {
            if BenchSize::named(parts[i]).is_some() {
                out.push(BenchSize::parse(parts[i])?);
                i += 1;
            } else if i + 4 <= parts.len() {
                out.push(BenchSize::parse(&parts[i..i + 4].join(","))?);
                i += 4;
            } else {
                out.push(BenchSize::parse(parts[i])?);
                i += 1;
            }
        }
    }
    if out.is_empty() {
        out = ["S", "M", "L", "XL", "T1"]
            .iter()
            .filter_map(|s| BenchSize::named(s))
            .collect();
    }
    Ok(out)
}

/// Runs the benchmark and prints a table or JSON lines.
pub fn run(args: &Args) -> Result<()> {
    if args.threads == 0 || args.threads > 1024 {
        anyhow::bail!("--threads {}: expected 1..=1024", args.threads);
    }
    if !(args.budget_ms.is_finite() && args.budget_ms > 0.0) {
        anyhow::bail!("--budget-ms {}: expected a positive number", args.budget_ms);
    }
    if let Some(isa) = &args.isa {
        let isa = isa
            .parse()
            .map_err(|_| anyhow::anyhow!("--isa {isa}: expected portable, avx2 or avx512"))?;
        grucell::engine::isa::set_limit(isa);
    }
    let kernels = grucell::engine::isa::active();
    let sizes = parse_sizes(&args.sizes)?;
    let threads = args.threads;
    let json = args.json;
    let budget = args.budget_ms;
    let reset_after = args.reset_after;
    with_threads(threads, move || -> Result<()> {
        let cpu = cpu_model();
        let gemm = gemm_gflops(threads);
        if !json {
            println!("cpu: {cpu}; kernels: {kernels}; threads: {threads}; reset_after: {reset_after}; machine GEMM rate (3200x512·512x1536): {gemm:.1} GFLOP/s");
            println!("FLOPs: forward = 2·B·T·3H·(I+H); training = 3 × forward");
            println!(
                "{:>14} {:>5} {:>5} {:>5} {:>5} | {:>10} {:>8} {:>7} | {:>10} {:>8} | {:>8}",
                "size",
                "B",
                "T",
                "I",
                "H",
                "fwd ms",
                "GFLOP/s",
                "%gemm",
                "train ms",
                "GFLOP/s",
                "peak MiB"
            );
        }
        for s in &sizes {
            let r = bench_size_with(s, threads, budget, reset_after);
            let rss = peak_rss_mib().unwrap_or(f64::NAN);
            if json {
                let v = serde_json::json!({
                    "size": s.name, "batch": s.batch, "time": s.time, "input": s.input, "units": s.units,
                    "forward_ms": r.forward_ms, "train_ms": r.train_ms, "threads": threads,
                    "forward_gflops": r.forward_gflops(), "train_gflops": r.train_gflops(),
                    "gemm_gflops": gemm, "peak_rss_mib": rss, "cpu": cpu, "reps": r.reps,
                    "isa": kernels.name(), "reset_after": reset_after,
                });
                println!("{v}");
            } else {
                println!(
                    "{:>14} {:>5} {:>5} {:>5} {:>5} | {:>10.3} {:>8.1} {:>6.0}% | {:>10.3} {:>8.1} | {:>8.1}",
                    s.name,
                    s.batch,
                    s.time,
                    s.input,
                    s.units,
                    r.forward_ms,
                    r.forward_gflops(),
                    100.0 * r.forward_gflops() / gemm,
                    r.train_ms,
                    r.train_gflops(),
                    rss
                );
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_names_and_quadruples() {
        let s = parse_sizes(&["S,M,4,10,8,16".into(), "T1".into()]).unwrap();
        let names: Vec<_> = s
            .iter()
            .map(|s| (s.batch, s.time, s.input, s.units))
            .collect();
        assert_eq!(
            names,
            vec![
                (1, 100, 32, 64),
                (32, 50, 64, 256),
                (4, 10, 8, 16),
                (1, 1, 64, 256)
            ]
        );
        assert!(parse_sizes(&["Q".into()]).is_err());
        assert!(parse_sizes(&["1,2,3".into()]).is_err());
        assert_eq!(parse_sizes(&[]).unwrap().len(), 5);
    }
}
