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

/// `kernel_timing fwd B T I H THREADS REPS`: the forward sequence kernel only (for `perf record`).
fn forward_only(a: &[usize]) {
    use grucell::engine::gru::*;
    use grucell::engine::workspace::GruWorkspace;
    let (b, t, i, h, threads, reps) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let g = 3 * h;
    let v = |n: usize, s: f32| {
        (0..n)
            .map(|k| ((k as f32) * 0.37).sin() * s)
            .collect::<Vec<f32>>()
    };
    let (kernel, recurrent, xb, hb, x) = (
        v(i * g, 0.05),
        v(h * g, 0.05),
        v(g, 0.1),
        v(h, 0.1),
        v(b * t * i, 1.0),
    );
    let p = GruParams {
        kernel: &kernel,
        recurrent: &recurrent,
        xp_bias: Some(&xb),
        hh_bias: Some(&hb),
        input_dim: i,
        units: h,
        reset_after: true,
        activation: grucell::Activation::Tanh,
        recurrent_activation: grucell::Activation::Sigmoid,
    };
    let opts = SequenceOptions {
        threads,
        ..Default::default()
    };
    let mut ws = GruWorkspace::new();
    let (mut seq, mut last, mut state) =
        (vec![0f32; b * t * h], vec![0f32; b * h], vec![0f32; b * h]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let start = Instant::now();
        for _ in 0..reps {
            gru_sequence(
                &p,
                &x,
                b,
                t,
                None,
                opts,
                DropoutMasks::default(),
                SequenceOutputs {
                    sequence: Some(&mut seq),
                    last_output: &mut last,
                    state: &mut state,
                },
                &mut ws,
                None,
            );
        }
        println!(
            "{:.3} ms per forward",
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
    });
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(|s| s == "fwd").unwrap_or(false) {
        let a: Vec<usize> = raw[1..].iter().map(|s| s.parse().unwrap()).collect();
        return forward_only(&a);
    }
    let args: Vec<usize> = raw.iter().map(|s| s.parse().unwrap()).collect();
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
