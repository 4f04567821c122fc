//! Quick engine timing without the CLI: `cargo run --release -p grucell --example quickbench -- S M L`.
fn main() {
    let threads: usize = std::env::var("THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let sizes: Vec<String> = std::env::args().skip(1).collect();
    let sizes = if sizes.is_empty() { vec!["S".into(), "M".into(), "L".into(), "XL".into(), "T1".into()] } else { sizes };
    let r = grucell::bench::with_threads(threads, || {
        println!("cpu: {}  gemm: {:.1} GFLOP/s ({threads} threads)", grucell::bench::cpu_model(), grucell::bench::gemm_gflops(threads));
        for s in &sizes {
            let size = match grucell::bench::BenchSize::parse(s) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    continue;
                }
            };
            let r = grucell::bench::bench_size(&size, threads, 2000.0);
            println!("{:4} fwd {:9.3} ms ({:6.1} GF/s)  train {:9.3} ms ({:6.1} GF/s)", size.name, r.forward_ms, r.forward_gflops(), r.train_ms, r.train_gflops());
        }
    });
    if let Err(e) = r {
        eprintln!("{e}");
    }
}
