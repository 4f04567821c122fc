//! Measures f32 `C = A · B` (row-major) with faer, gemm, matrixmultiply, OpenBLAS (cblas) and
//! grucell's own packed per-step kernel, on the products a GRU layer runs for the benchmark sizes.
//! The results are recorded in `docs/gemm-choice.md`.
//!
//! Usage: `cargo run --release --manifest-path tools/gemm_compare/Cargo.toml [-- --runs N]`.
//! The parent process runs one child per (run, thread count) — matrixmultiply and OpenBLAS take
//! their thread count from the environment once per process — keeps the best GFLOP/s per cell
//! over the runs and prints Markdown tables (best per row in bold).

use std::collections::BTreeMap;
use std::os::raw::c_int;
use std::process::Command;
use std::time::Instant;

use grucell::engine::gemm::Operand;
use grucell::engine::packed::{PackedRhs, Rhs};

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_config() -> *const std::os::raw::c_char;
}

/// Benchmark sizes as (name, B, T, I, H).
const SIZES: [(&str, usize, usize, usize, usize); 5] = [
    ("S", 1, 100, 32, 64),
    ("M", 32, 50, 64, 256),
    ("L", 64, 50, 512, 512),
    ("XL", 16, 25, 1024, 1024),
    ("T1", 1, 1, 64, 256),
];

const IMPLS: [&str; 6] = [
    "faer",
    "gemm",
    "matrixmultiply",
    "openblas",
    "grucell-packed",
    "grucell-plain",
];
const MIN_SECS: f64 = 0.3;
const MIN_REPS: usize = 5;

#[derive(Clone, Copy)]
enum Kind {
    InputProj,
    Step,
    WeightGrad,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::InputProj => "input proj",
            Kind::Step => "per-step",
            Kind::WeightGrad => "weight grad",
        }
    }
}

/// (m, n, k) of the product for one size.
fn dims(kind: Kind, b: usize, t: usize, i: usize, h: usize) -> (usize, usize, usize) {
    match kind {
        Kind::InputProj => (b * t, 3 * h, i),
        Kind::Step => (b, 3 * h, h),
        Kind::WeightGrad => (i, 3 * h, b * t),
    }
}

/// Deterministic pseudo-random values in [-1, 1).
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Median seconds per call: one warm-up call, then calls until both MIN_SECS and MIN_REPS.
fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < MIN_REPS || start.elapsed().as_secs_f64() < MIN_SECS {
        let t0 = Instant::now();
        f();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn faer_mm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    use faer::{Accum, MatMut, MatRef, Par};
    let par = if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    faer::linalg::matmul::matmul(c, Accum::Replace, a, b, 1.0f32, par);
}

fn gemm_mm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the slices hold the row-major m×k, k×n and m×n matrices described by the strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn mm_mm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: as above; threads come from MATMUL_NUM_THREADS (set by the parent process).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn blas_mm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: as above.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            CBLAS_TRANSPOSE::CblasNoTrans,
            CBLAS_TRANSPOSE::CblasNoTrans,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.as_ptr(),
            k as c_int,
            b.as_ptr(),
            n as c_int,
            0.0,
            c.as_mut_ptr(),
            n as c_int,
        );
    }
}

fn max_rel_err(x: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    x.iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Runs every cell for one thread count; prints `size\tkind\timpl\tgflops` lines.
fn child(threads: usize) {
    // SAFETY: plain FFI calls into OpenBLAS.
    unsafe { openblas_set_num_threads(threads as c_int) };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    let kinds = [Kind::InputProj, Kind::Step, Kind::WeightGrad];
    // Impl-major order, so that one library's idle threads (OpenBLAS spins for a while after a
    // call) disturb at most the first cell of the next library, which has a warm-up call anyway.
    for imp in IMPLS {
        for &(size, bb, tt, ii, hh) in &SIZES {
            for kind in kinds {
                let (m, n, k) = dims(kind, bb, tt, ii, hh);
                if imp.starts_with("grucell") && !matches!(kind, Kind::Step) {
                    continue;
                }
                let a = fill(m * k, 1);
                let b = fill(k * n, 2);
                let mut reference = vec![0.0f32; m * n];
                faer_mm(m, n, k, &a, &b, &mut reference, 1);
                let mut c = vec![0.0f32; m * n];
                let secs = pool.install(|| match imp {
                    "faer" => time_it(|| faer_mm(m, n, k, &a, &b, &mut c, threads)),
                    "gemm" => time_it(|| gemm_mm(m, n, k, &a, &b, &mut c, threads)),
                    "matrixmultiply" => time_it(|| mm_mm(m, n, k, &a, &b, &mut c)),
                    "openblas" => time_it(|| blas_mm(m, n, k, &a, &b, &mut c)),
                    "grucell-plain" => {
                        // The same kernel reading U in place (what the layer does at batch 1).
                        let h = k;
                        let mut scratch = Vec::new();
                        let rhs = Rhs::Plain {
                            data: &b,
                            ld: 3 * h,
                            seg: h,
                        };
                        time_it(|| {
                            rhs.matmul(
                                m,
                                &a,
                                h,
                                0..h,
                                0..3,
                                &mut c,
                                3 * h,
                                false,
                                threads,
                                &mut scratch,
                            )
                        })
                    }
                    _ => {
                        // grucell's per-step product: U (h × 3h) packed once per sequence,
                        // outside the timing, as the layer does.
                        let h = k;
                        let mut pk = PackedRhs::new();
                        pk.pack(Operand::new(&b, 3 * h), h, h, 3);
                        let mut scratch = Vec::new();
                        let rhs = Rhs::Packed(&pk);
                        time_it(|| {
                            rhs.matmul(
                                m,
                                &a,
                                h,
                                0..h,
                                0..3,
                                &mut c,
                                3 * h,
                                false,
                                threads,
                                &mut scratch,
                            )
                        })
                    }
                });
                let err = max_rel_err(&c, &reference);
                assert!(err < 1e-4, "{imp} {size} {}: rel err {err}", kind.name());
                let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
                println!("{size}\t{}\t{imp}\t{gflops:.3}", kind.name());
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|p| args.get(p + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    if let Some(t) = arg("--threads") {
        child(t);
        return;
    }
    let runs = arg("--runs").unwrap_or(2);
    // SAFETY: reads a static string from OpenBLAS.
    let cfg = unsafe { std::ffi::CStr::from_ptr(openblas_get_config()) };
    println!("OpenBLAS config: {}", cfg.to_string_lossy());
    let exe = std::env::current_exe().expect("current exe");
    // best[(threads, size, kind)][impl] = best GFLOP/s over the runs
    let mut best: BTreeMap<(usize, usize, usize), BTreeMap<&str, f64>> = BTreeMap::new();
    for run in 1..=runs {
        for threads in [1usize, 2] {
            eprintln!("run {run}/{runs}, {threads} thread(s)...");
            let out = Command::new(&exe)
                .args(["--threads", &threads.to_string()])
                .env("MATMUL_NUM_THREADS", threads.to_string())
                .env("OPENBLAS_NUM_THREADS", threads.to_string())
                .env("RAYON_NUM_THREADS", threads.to_string())
                .output()
                .expect("spawn child");
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split('\t').collect();
                let (Some(size), Some(kind), Some(imp), Some(g)) =
                    (f.first(), f.get(1), f.get(2), f.get(3))
                else {
                    continue;
                };
                let si = SIZES.iter().position(|s| s.0 == *size).expect("size");
                let ki = ["input proj", "per-step", "weight grad"]
                    .iter()
                    .position(|k| k == kind)
                    .expect("kind");
                let ii = IMPLS.iter().position(|i| i == imp).expect("impl");
                let g: f64 = g.parse().expect("gflops");
                let e = best
                    .entry((threads, ki, si))
                    .or_default()
                    .entry(IMPLS[ii])
                    .or_insert(0.0);
                *e = e.max(g);
            }
        }
    }
    for threads in [1usize, 2] {
        println!("\n### {threads} thread(s) — GFLOP/s (best of {runs} runs)\n");
        println!("| shape | m × k · k × n | {} |", IMPLS.join(" | "));
        println!("|---|---|{}", "---:|".repeat(IMPLS.len()));
        for (ki, kind) in [Kind::InputProj, Kind::Step, Kind::WeightGrad]
            .iter()
            .enumerate()
        {
            for (si, &(size, bb, tt, ii, hh)) in SIZES.iter().enumerate() {
                let (m, n, k) = dims(*kind, bb, tt, ii, hh);
                let Some(row) = best.get(&(threads, ki, si)) else {
                    continue;
                };
                let top = row.values().cloned().fold(0.0, f64::max);
                let cells: Vec<String> = IMPLS
                    .iter()
                    .map(|i| match row.get(i) {
                        Some(&g) if g == top => format!("**{g:.1}**"),
                        Some(&g) => format!("{g:.1}"),
                        None => "—".to_string(),
                    })
                    .collect();
                println!(
                    "| {size} {} | {m}×{k} · {k}×{n} | {} |",
                    kind.name(),
                    cells.join(" | ")
                );
            }
        }
    }
}
