//! Times the engine's pieces in isolation (recurrent product, gate math, whole sequence).
use grucell::engine::gemm::Operand;
use grucell::engine::packed::{PackedRhs, Rhs};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    for _ in 0..3 {
        f();
    }
    let mut v = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    println!(
        "{name:40} {:10.2} us  {:7.1} GFLOP/s",
        med * 1e6,
        flops / med / 1e9
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, u, threads) = (args[0], args[1], args[2]);
    if args.len() > 3 {
        // Fixed work for `perf stat`: mode 0 = packed, 1 = faer; args[4] repetitions.
        let g = 3 * u;
        let b: Vec<f32> = (0..u * g)
            .map(|i| ((i as f32) * 0.37).sin() * 0.1)
            .collect();
        let a: Vec<f32> = (0..m * u).map(|i| ((i as f32) * 0.11).sin()).collect();
        let mut c = vec![0f32; m * g];
        let mut pk = PackedRhs::new();
        pk.pack(Operand::new(&b[..], g), u, u, 3);
        for _ in 0..args[4] {
            if args[3] == 0 {
                Rhs::Packed(&pk).matmul(m, &a, u, 0..u, 0..3, &mut c, g, false, 1, &mut Vec::new());
            } else {
                grucell::engine::gemm(
                    m,
                    g,
                    u,
                    1.0,
                    Operand::new(&a, u),
                    Operand::new(&b, g),
                    false,
                    &mut c,
                    g,
                    1,
                );
            }
        }
        println!("{}", c[7]);
        return;
    }
    let g = 3 * u;
    let b: Vec<f32> = (0..u * g)
        .map(|i| ((i as f32) * 0.37).sin() * 0.1)
        .collect();
    let a: Vec<f32> = (0..m * u).map(|i| ((i as f32) * 0.11).sin()).collect();
    let mut c = vec![0f32; m * g];
    let mut pk = PackedRhs::new();
    pk.pack(Operand::new(&b[..], g), u, u, 3);
    let mut scratch = Vec::new();
    let flops = 2.0 * (m * g * u) as f64;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        time("packed matmul", flops, || {
            Rhs::Packed(&pk).matmul(
                m,
                &a,
                u,
                0..u,
                0..3,
                &mut c,
                g,
                false,
                threads,
                &mut scratch,
            )
        });
        time("plain matmul", flops, || {
            Rhs::Plain {
                data: &b,
                ld: g,
                seg: u,
            }
            .matmul(
                m,
                &a,
                u,
                0..u,
                0..3,
                &mut c,
                g,
                false,
                threads,
                &mut scratch,
            )
        });
        time("faer gemm", flops, || {
            grucell::engine::gemm(
                m,
                g,
                u,
                1.0,
                Operand::new(&a, u),
                Operand::new(&b, g),
                false,
                &mut c,
                g,
                threads,
            )
        });
        time("pack", 0.0, || pk.pack(Operand::new(&b[..], g), u, u, 3));
        let mut v: Vec<f32> = (0..m * g)
            .map(|i| ((i as f32) * 0.01).sin() * 3.0)
            .collect();
        time("sigmoid m*3u", 0.0, || {
            grucell::engine::math::sigmoid_slice(&mut v)
        });
        time("tanh m*3u", 0.0, || {
            grucell::engine::math::tanh_slice(&mut v)
        });
    });
}
