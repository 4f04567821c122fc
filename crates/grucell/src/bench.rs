//! Benchmark harness behind `grucell bench`: times the GRU engine (inference forward over the full
//! sequence; training = forward with saved activations + backward giving every weight gradient
//! and the input gradient, loss = sum of the output sequence) and the machine's own GEMM rate.
//!
//! FLOP count (DeepBench's convention, element-wise work ignored):
//! forward = `2·B·T·3H·(I + H)`, training ≈ 3 × forward.

use crate::engine::gemm::{gemm, Operand};
use crate::engine::gru::{
    gru_sequence, DropoutMasks, GruParams, GruTrace, SequenceOptions, SequenceOutputs,
};
use crate::engine::gru_backward::{gru_sequence_backward, GruGrads, OutputGrads};
use crate::engine::prepacked::PackedWeights;
use crate::engine::workspace::GruWorkspace;
use crate::error::{ConfigError, Error};
use crate::layers::activation::Activation;
use std::time::Instant;

/// A problem size: batch, time steps, input features, units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchSize {
    /// Label (`S`, `M`, … or `B,T,I,H`).
    pub name: String,
    /// Batch.
    pub batch: usize,
    /// Time steps.
    pub time: usize,
    /// Input features.
    pub input: usize,
    /// Units.
    pub units: usize,
}

impl BenchSize {
    /// The named sizes of the benchmark: S, M, L, XL, T1.
    pub fn named(name: &str) -> Option<BenchSize> {
        let (b, t, i, h) = match name {
            "S" => (1, 100, 32, 64),
            "M" => (32, 50, 64, 256),
            "L" => (64, 50, 512, 512),
            "XL" => (16, 25, 1024, 1024),
            "T1" => (1, 1, 64, 256),
            _ => return None,
        };
        Some(BenchSize {
            name: name.into(),
            batch: b,
            time: t,
            input: i,
            units: h,
        })
    }

    /// Parses `S`, `M`, … or `B,T,I,H`.
    pub fn parse(s: &str) -> Result<BenchSize, ConfigError> {
        if let Some(n) = BenchSize::named(s) {
            return Ok(n);
        }
        let parts: Vec<usize> = s
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| ConfigError::invalid("--sizes", s, "S, M, L, XL, T1 or B,T,I,H"))?;
        match parts.as_slice() {
            &[b, t, i, h] if b > 0 && t > 0 && i > 0 && h > 0 && b * t * (i + h) < 1 << 31 => {
                Ok(BenchSize {
                    name: s.into(),
                    batch: b,
                    time: t,
                    input: i,
                    units: h,
                })
            }
            _ => Err(ConfigError::invalid(
                "--sizes",
                s,
                "S, M, L, XL, T1 or four positive integers B,T,I,H",
            )),
        }
    }

    /// Forward FLOPs `2·B·T·3H·(I + H)`.
    pub fn forward_flops(&self) -> f64 {
        2.0 * (self.batch * self.time * 3 * self.units) as f64 * (self.input + self.units) as f64
    }
}

/// Timings of one size.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// The size.
    pub size: BenchSize,
    /// Median inference forward time, ms.
    pub forward_ms: f64,
    /// Median training step (forward + backward) time, ms.
    pub train_ms: f64,
    /// Threads used.
    pub threads: usize,
    /// Repetitions timed.
    pub reps: usize,
}

impl BenchResult {
    /// Forward GFLOP/s.
    pub fn forward_gflops(&self) -> f64 {
        self.size.forward_flops() / self.forward_ms / 1e6
    }
    /// Training GFLOP/s (3 × forward FLOPs).
    pub fn train_gflops(&self) -> f64 {
        3.0 * self.size.forward_flops() / self.train_ms / 1e6
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pseudo(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Reps so one size takes roughly `budget_ms`, between 3 and 200.
fn reps_for(one_ms: f64, budget_ms: f64) -> usize {
    ((budget_ms / one_ms.max(1e-3)) as usize).clamp(3, 200)
}

/// Times the engine on one size with `threads` threads (run inside a rayon pool of that size),
/// in Keras' default convention (`reset_after = true`).
pub fn bench_size(size: &BenchSize, threads: usize, budget_ms: f64) -> BenchResult {
    bench_size_with(size, threads, budget_ms, true)
}

/// [`bench_size`] in either convention: `reset_after = false` is Keras' other one (the reset
/// gate applied to the state before its product with the candidate's recurrent kernel, ONNX
/// `linear_before_reset = 0`), with the same FLOP count.
pub fn bench_size_with(
    size: &BenchSize,
    threads: usize,
    budget_ms: f64,
    reset_after: bool,
) -> BenchResult {
    let (b, t, i, h) = (size.batch, size.time, size.input, size.units);
    let g = 3 * h;
    let kernel = pseudo(i * g, 1, (6.0 / (i + g) as f32).sqrt());
    let recurrent = pseudo(h * g, 2, (1.0 / h as f32).sqrt());
    let xb = pseudo(g, 3, 0.1);
    let hb = pseudo(h, 4, 0.1);
    let x = pseudo(b * t * i, 5, 1.0);
    let p = GruParams {
        kernel: &kernel,
        recurrent: &recurrent,
        xp_bias: Some(&xb),
        hh_bias: reset_after.then_some(hb.as_slice()),
        input_dim: i,
        units: h,
        reset_after,
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        packed: None,
    };
    // Inference runs on weights packed once, as a layer does across calls (and ONNX Runtime at
    // session creation); training packs in every call, since its weights change every step.
    let prepacked = PackedWeights::new(&p, threads).ok();
    let p_inf = GruParams {
        packed: prepacked.as_ref(),
        ..p
    };
    let opts = SequenceOptions {
        mask: None,
        go_backwards: false,
        zero_output_for_mask: false,
        threads,
    };
    let mut ws = GruWorkspace::new();
    let mut seq = vec![0f32; b * t * h];
    let mut last = vec![0f32; b * h];
    let mut state = vec![0f32; b * h];
    let mut fwd =
        |ws: &mut GruWorkspace<f32>, seq: &mut [f32], trace: Option<&mut GruTrace<f32>>| {
            gru_sequence(
                if trace.is_some() { &p } else { &p_inf },
                &x,
                b,
                t,
                None,
                opts,
                DropoutMasks::default(),
                SequenceOutputs {
                    sequence: Some(seq),
                    last_output: &mut last,
                    state: &mut state,
                },
                ws,
                trace,
            );
        };
    // Forward.
    let t0 = Instant::now();
    fwd(&mut ws, &mut seq, None);
    let reps = reps_for(t0.elapsed().as_secs_f64() * 1e3, budget_ms / 2.0);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        fwd(&mut ws, &mut seq, None);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let forward_ms = median(times);
    // Training: forward with trace + backward (d loss / d seq = 1).
    let ones = vec![1f32; b * t * h];
    let mut trace = GruTrace::default();
    let mut grads = GruGrads::zeros(i, h);
    let mut dx = vec![0f32; b * t * i];
    let mut train = |ws: &mut GruWorkspace<f32>,
                     seq: &mut [f32],
                     trace: &mut GruTrace<f32>,
                     grads: &mut GruGrads<f32>,
                     dx: &mut [f32]| {
        fwd(ws, seq, Some(trace));
        gru_sequence_backward(
            &p,
            &x,
            b,
            t,
            opts,
            DropoutMasks::default(),
            trace,
            OutputGrads {
                sequence: Some(&ones),
                last: None,
                state: None,
            },
            grads,
            Some(dx),
            None,
        );
    };
    let t0 = Instant::now();
    train(&mut ws, &mut seq, &mut trace, &mut grads, &mut dx);
    let reps_t = reps_for(t0.elapsed().as_secs_f64() * 1e3, budget_ms / 2.0);
    let mut times = Vec::with_capacity(reps_t);
    for _ in 0..reps_t {
        let t0 = Instant::now();
        train(&mut ws, &mut seq, &mut trace, &mut grads, &mut dx);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    BenchResult {
        size: size.clone(),
        forward_ms,
        train_ms: median(times),
        threads,
        reps: reps.min(reps_t),
    }
}

/// The machine's own single-GEMM rate in GFLOP/s on the large input-projection shape
/// (3200 × 512 · 512 × 1536), best of a few runs.
pub fn gemm_gflops(threads: usize) -> f64 {
    let (m, k, n) = (3200, 512, 1536);
    let a = pseudo(m * k, 7, 1.0);
    let b = pseudo(k * n, 8, 1.0);
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        gemm(
            m,
            n,
            k,
            1.0,
            Operand::new(&a, k),
            Operand::new(&b, n),
            false,
            &mut c,
            n,
            threads,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// CPU model name from `/proc/cpuinfo` (Linux), or `"unknown"`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `f` on a dedicated rayon pool of `threads` threads (faer's parallel GEMMs use the
/// current pool), so thread counts are explicit.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| {
            ConfigError::invalid(
                "threads",
                threads,
                format!("a thread count the OS allows ({e})"),
            )
        })?;
    Ok(pool.install(f))
}
