//! The engine's code paths against each other and against f64: batch-1 strips, in-place and
//! packed recurrent weights, the packed-kernel and GEMM-crate input projections, the spinning
//! helper team (threads ≥ 2 on large steps), sequences split by batch rows (2 or more threads
//! and enough rows per part: `engine::gru::batch_parts`), rayon
//! splits in the backward pass, weights packed ahead of the call (`PackedWeights`); both reset
//! conventions, masks, go_backwards and recurrent dropout; under every kernel level the CPU
//! has (portable, AVX2+FMA, AVX-512: `engine::isa::set_limit`), each with its own paths. Sizes
//! are chosen so that every path is taken (see `engine::gru::use_team`, `batch_parts`,
//! `recurrent_rhs` and `projects_in_step`).
//!
//! Splitting work between threads never changes the order of any sum, so the f32 results of
//! 1, 2 and 3 threads must be *identical*; all of them must match f64 to f32 round-off.

use grucell::engine::gru::{
    gru_sequence, projects_in_step, DropoutMasks, GruParams, GruTrace, SequenceOptions,
    SequenceOutputs,
};
use grucell::engine::gru_backward::{gru_sequence_backward, GruGrads, OutputGrads};
use grucell::engine::isa::{self, Isa};
use grucell::engine::prepacked::PackedWeights;
use grucell::engine::projection;
use grucell::engine::workspace::GruWorkspace;
use grucell::{Activation, Float};

mod common;
use common::Lcg;

struct Problem {
    b: usize,
    t: usize,
    d: usize,
    u: usize,
    reset_after: bool,
    backwards: bool,
    kernel: Vec<f64>,
    rec: Vec<f64>,
    xb: Vec<f64>,
    hb: Vec<f64>,
    x: Vec<f64>,
    h0: Vec<f64>,
    mask: Vec<bool>,
    rec_masks: Option<Vec<Vec<f64>>>,
    dseq: Vec<f64>,
    /// Pass `h0` (else no initial state: zeros, the first step's products skipped).
    h0_given: bool,
    /// Ask the backward pass for `d h0` (else its last product is skipped).
    want_dh0: bool,
    /// Run on weights packed ahead of the call ([`PackedWeights`]).
    prepack: bool,
}

/// Keras-default activations (tanh, sigmoid) over `(kernel, recurrent)`, biases
/// `(input side, recurrent candidate)` and `(D, u)`, nothing pre-packed.
fn tanh_params<'a, T>(
    (kernel, recurrent): (&'a [T], &'a [T]),
    (xp_bias, hh_bias): (Option<&'a [T]>, Option<&'a [T]>),
    (input_dim, units): (usize, usize),
    reset_after: bool,
) -> GruParams<'a, T> {
    GruParams {
        kernel,
        recurrent,
        xp_bias,
        hh_bias,
        input_dim,
        units,
        reset_after,
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        packed: None,
    }
}

/// Everything a run produces: outputs, then (training) gradients, `dx` and `dh0` (when asked).
type Results<T> = (Vec<T>, Vec<T>, Option<(GruGrads<T>, Vec<T>, Vec<T>)>);

impl Problem {
    #[allow(clippy::too_many_arguments)]
    fn new(
        (b, t, d, u): (usize, usize, usize, usize),
        reset_after: bool,
        masked: bool,
        backwards: bool,
        rec_drop: bool,
        seed: u64,
    ) -> Self {
        let mut r = Lcg(seed);
        let g = 3 * u;
        let s = 1.0 / (u as f64).sqrt();
        let rec_masks = rec_drop.then(|| {
            (0..3)
                .map(|_| {
                    (0..b * u)
                        .map(|_| if r.next() > -0.5 { 1.0 / 0.75 } else { 0.0 })
                        .collect()
                })
                .collect()
        });
        Problem {
            b,
            t,
            d,
            u,
            reset_after,
            backwards,
            kernel: r.vec(d * g, 1.0 / (d as f64).sqrt()),
            rec: r.vec(u * g, s),
            xb: r.vec(g, 0.3),
            hb: r.vec(u, 0.3),
            x: r.vec(b * t * d, 1.0),
            h0: r.vec(b * u, 0.5),
            mask: (0..b * t).map(|i| !masked || i % 7 != 3).collect(),
            rec_masks,
            dseq: r.vec(b * t * u, 1.0),
            h0_given: true,
            want_dh0: false,
            prepack: false,
        }
    }

    fn run<T: Float>(&self, threads: usize, train: bool) -> Results<T> {
        let c = |v: &[f64]| v.iter().map(|&x| T::of(x)).collect::<Vec<T>>();
        let (kernel, rec, xb, hb, x, h0) = (
            c(&self.kernel),
            c(&self.rec),
            c(&self.xb),
            c(&self.hb),
            c(&self.x),
            c(&self.h0),
        );
        let rm: Option<Vec<Vec<T>>> = self
            .rec_masks
            .as_ref()
            .map(|m| m.iter().map(|v| c(v)).collect());
        let p = tanh_params(
            (&kernel, &rec),
            (Some(&xb), self.reset_after.then_some(&hb[..])),
            (self.d, self.u),
            self.reset_after,
        );
        let prepacked = self
            .prepack
            .then(|| PackedWeights::new(&p, threads).unwrap());
        let p = GruParams {
            packed: prepacked.as_ref(),
            ..p
        };
        let (b, t, u) = (self.b, self.t, self.u);
        let opts = SequenceOptions {
            mask: Some(&self.mask),
            go_backwards: self.backwards,
            zero_output_for_mask: false,
            threads,
        };
        let dm = DropoutMasks {
            input: None,
            recurrent: rm.as_ref().map(|m| [&m[0][..], &m[1][..], &m[2][..]]),
        };
        let mut seq = vec![T::zero(); b * t * u];
        let mut last = vec![T::zero(); b * u];
        let mut state = vec![T::zero(); b * u];
        let mut trace = GruTrace::default();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            gru_sequence(
                &p,
                &x,
                b,
                t,
                self.h0_given.then_some(&h0[..]),
                opts,
                dm,
                SequenceOutputs {
                    sequence: Some(&mut seq),
                    last_output: &mut last,
                    state: &mut state,
                },
                &mut GruWorkspace::new(),
                train.then_some(&mut trace),
            );
        });
        let grads = train.then(|| {
            let mut grads = GruGrads::zeros(self.d, u);
            let mut dx = vec![T::zero(); b * t * self.d];
            let mut dh0 = vec![T::zero(); if self.want_dh0 { b * u } else { 0 }];
            let dseq = c(&self.dseq);
            pool.install(|| {
                gru_sequence_backward(
                    &p,
                    &x,
                    b,
                    t,
                    opts,
                    dm,
                    &mut trace,
                    OutputGrads {
                        sequence: Some(&dseq),
                        last: None,
                        state: None,
                    },
                    &mut grads,
                    Some(&mut dx),
                    self.want_dh0.then_some(&mut dh0[..]),
                );
            });
            (grads, dx, dh0)
        });
        (seq, state, grads)
    }
}

fn close(label: &str, a: &[f32], want: &[f64], tol: f64) {
    assert_eq!(a.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(want).enumerate() {
        assert!(
            (*x as f64 - y).abs() <= tol * scale,
            "{label}[{i}]: f32 {x} vs f64 {y} (scale {scale})"
        );
    }
}

/// The kernels' level is process-wide ([`isa::set_limit`]): the tests of this file take turns.
static ISA_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn isa_turn() -> std::sync::MutexGuard<'static, ()> {
    ISA_TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restores the best level when dropped (also when a check fails).
struct FullIsa;

impl Drop for FullIsa {
    fn drop(&mut self) {
        isa::set_limit(Isa::Avx512);
    }
}

/// Every kernel level this CPU has (portable, AVX2+FMA, AVX-512), each taking its own paths
/// (e.g. the packed left operands and the group kernels only on AVX-512, the in-step projection
/// of wide inputs on AVX-512 and AVX2).
#[test]
fn all_paths_agree_with_f64_and_across_thread_counts() {
    let _turn = isa_turn();
    let _full = FullIsa;
    for level in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
        if level <= isa::detected() {
            isa::set_limit(level);
            check_all_paths(level);
        }
    }
}

fn check_all_paths(level: Isa) {
    // (B, T, D, u): batch-1 strips; in-place tiles (T < 4); packed + packed-kernel projection;
    // the batch split in parts (16 and 24 rows: two, or three for 24 rows and 3 threads where
    // the machine has them), in inference as in training, with the packed-kernel projection
    // and a narrow last panel (u = 200 is not a multiple of 16); the team with a wide input
    // (8 rows, D > 256: the GEMM crate's projection, or on AVX-512 and AVX2 `f32` the
    // pre-packed one, `projection::preferred`) and with a narrow input that its fused steps
    // project themselves (12 rows and a `U` over 1 MiB: too few rows per part to split); a wide
    // input of 64 batch rows split in parts whose fused inference steps project it as the whole
    // call would (where AVX-512 or AVX2 `f32` make `projects_in_step` say so; otherwise the GEMM
    // crate does), with a narrow last panel (u = 88) and with a `U` over 4 MiB (u = 600). (The
    // team's fused steps that project wide inputs are compared with one thread in
    // `engine::team`'s tests: sequences reach them only with a `U` over 16 MiB.) Thin batches
    // of packed `U` take the group kernels (AVX-512: tiles of up to 8 rows run whole; AVX2:
    // 2 rows), 2 rows of a `U` over 4 MiB split between threads by panels. 4 rows of 220 units
    // take the team from `gru::TEAM_MIN_WORK`; training's batch-1 products of 300 units are
    // split between threads (`packed::PAR_MIN_WORK_TRAINING_ONE_ROW`), inference's are not.
    let sizes = [
        (1, 5, 3, 70),
        (2, 5, 3, 70),
        (3, 6, 5, 100),
        (2, 6, 5, 600),
        (4, 5, 6, 220),
        (1, 5, 4, 300),
        (3, 2, 5, 40),
        (13, 6, 7, 40),
        (16, 5, 24, 256),
        (8, 4, 300, 256),
        (24, 5, 10, 200),
        (64, 5, 300, 88),
        (64, 4, 300, 600),
        (1, 6, 5, 600),
        (12, 5, 20, 300),
    ];
    let mut seed = 1;
    for &size in &sizes {
        for (reset_after, masked, backwards, rec_drop) in [
            (true, false, false, false),
            (false, true, true, false),
            (true, true, false, true),
            (false, false, true, true),
        ] {
            seed += 1;
            let mut pr = Problem::new(size, reset_after, masked, backwards, rec_drop, seed);
            let label = format!(
                "{level}: {size:?} reset_after={reset_after} mask={masked} back={backwards} \
                 drop={rec_drop}"
            );
            // The f64 reference trains only on a few small cases; the f32 runs compare thread
            // counts both in inference (fused team steps) and in training (gradients too).
            let train64 = size.3 <= 40 || rec_drop;
            let (seq64, state64, g64) = pr.run::<f64>(1, train64);
            for train in [false, true] {
                let (seq1, state1, g1) = pr.run::<f32>(1, train);
                close(&format!("{label} seq"), &seq1, &seq64, 2e-5);
                close(&format!("{label} state"), &state1, &state64, 2e-5);
                if let (Some((g32, dx32, _)), Some((g64, dx64, _))) = (&g1, &g64) {
                    close(&format!("{label} dU"), &g32.recurrent, &g64.recurrent, 1e-4);
                    close(&format!("{label} dW"), &g32.kernel, &g64.kernel, 1e-4);
                    close(
                        &format!("{label} db"),
                        &g32.bias_input,
                        &g64.bias_input,
                        1e-4,
                    );
                    close(&format!("{label} dx"), dx32, dx64, 1e-4);
                }
                // Other thread counts, and weights packed ahead of the call, change nothing;
                // except that a wide input (D > 256) of a short call is then projected from the
                // pre-packed `W` (`engine::projection`, where available), which sums in another
                // order: those runs must agree with the f64 reference and among themselves
                // (gradients included). Fused inference that projects wide inputs in its steps
                // does so with or without the pre-packed `W`.
                let (rows, d) = (size.0 * size.1, size.2);
                let fused = !train && reset_after && !rec_drop;
                let own = d > 256
                    && projection::preferred::<f32>(rows)
                    && !(fused && projects_in_step::<f32>(size.0, d));
                let mut packed_first = None;
                for (threads, prepack) in [(2, false), (3, false), (1, true), (2, true)] {
                    pr.prepack = prepack;
                    let run = pr.run::<f32>(threads, train);
                    pr.prepack = false;
                    let label = format!(
                        "{label} train={train}: {threads} threads, prepack={prepack} changed"
                    );
                    let want = match &packed_first {
                        _ if !(prepack && own) => (&seq1, &state1, &g1),
                        Some((s, st, g)) => (s, st, g),
                        None => {
                            close(&format!("{label} seq"), &run.0, &seq64, 2e-5);
                            close(&format!("{label} state"), &run.1, &state64, 2e-5);
                            assert!(run.0 != seq1, "{label}: expected the own projection");
                            packed_first = Some(run);
                            continue;
                        }
                    };
                    let (seq, state, g) = &run;
                    assert!(seq == want.0, "{label} the outputs");
                    assert!(state == want.1, "{label} the state");
                    if let (Some((ga, dxa, _)), Some((gb, dxb, _))) = (g, want.2) {
                        assert!(ga == gb, "{label} the gradients");
                        assert!(dxa == dxb, "{label} dx");
                    }
                }
            }
        }
    }
}

/// Batch-1 inference on two threads splits each step by units (`engine::pair`, from 128 units
/// and 8 steps, where the second worker comes in time): under every kernel level, in both of
/// Keras' conventions, with and without masks, initial state and pre-packed weights, the same
/// bits as one thread.
#[test]
fn batch_one_on_two_threads_matches_one_thread_under_every_level() {
    let _turn = isa_turn();
    let _full = FullIsa;
    for level in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
        if level > isa::detected() {
            continue;
        }
        isa::set_limit(level);
        for ((i, (size, masked, backwards)), reset_after) in [
            ((1, 40, 9, 130), false, false),
            ((1, 30, 5, 128), true, true),
            ((1, 24, 300, 144), true, false),
        ]
        .into_iter()
        .enumerate()
        .flat_map(|c| [(c, true), (c, false)])
        {
            let mut pr = Problem::new(size, reset_after, masked, backwards, false, 90 + i as u64);
            for (h0, prepack) in [(true, false), (false, true)] {
                pr.h0_given = h0;
                pr.prepack = prepack;
                let one = pr.run::<f32>(1, false);
                for _ in 0..3 {
                    let two = pr.run::<f32>(2, false);
                    let label = format!(
                        "{level}: {size:?} reset_after={reset_after} mask={masked} h0={h0} \
                         prepack={prepack}"
                    );
                    assert!(same(&one.0, &two.0), "{label}: outputs");
                    assert!(same(&one.1, &two.1), "{label}: state");
                }
            }
        }
    }
}

/// Inference steps without a trace take their own gate loops where they can (Keras' default
/// activations in `f32`: `reset_after = false` in `gru::step_rows`, fused steps for
/// `reset_after = true`); the training forward keeps the trace through the generic passes.
/// Both must give the same bits, under every kernel level, at batch 1 and beyond, for units
/// that are and are not multiples of 16, with and without an initial state.
#[test]
fn inference_gives_the_training_forward_bits_under_every_level() {
    let _turn = isa_turn();
    let _full = FullIsa;
    for level in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
        if level > isa::detected() {
            continue;
        }
        isa::set_limit(level);
        for (i, (size, masked, backwards)) in [
            ((1, 30, 7, 64), false, false),
            ((1, 20, 5, 70), true, true),
            ((3, 12, 9, 33), true, false),
            ((1, 3, 4, 40), false, true),
        ]
        .into_iter()
        .enumerate()
        {
            for reset_after in [false, true] {
                let mut pr =
                    Problem::new(size, reset_after, masked, backwards, false, 120 + i as u64);
                for (h0, prepack) in [(true, false), (false, true)] {
                    pr.h0_given = h0;
                    pr.prepack = prepack;
                    let label = format!(
                        "{level}: {size:?} reset_after={reset_after} mask={masked} \
                         back={backwards} h0={h0} prepack={prepack}"
                    );
                    for threads in [1, 2] {
                        let infer = pr.run::<f32>(threads, false);
                        let train = pr.run::<f32>(threads, true);
                        assert!(same(&infer.0, &train.0), "{label} {threads}: outputs");
                        assert!(same(&infer.1, &train.1), "{label} {threads}: state");
                    }
                }
            }
        }
    }
}

/// Bit-for-bit equality that treats NaN as equal to NaN.
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// No initial state means zeros, and the engine then skips the first step's products (`0 · U`);
/// not asking for `d h0` skips the backward's last product. Both must change nothing, on every
/// path and thread count, and a non-finite `U` must turn the skip off (`0 · ∞` is NaN in Keras).
#[test]
fn skipped_first_products_change_nothing() {
    let _turn = isa_turn();
    let sizes = [
        (1, 5, 3, 70),
        (13, 6, 7, 40),
        (16, 5, 24, 256),
        (24, 5, 10, 200),
        (64, 5, 300, 88),
    ];
    let mut seed = 100;
    for &size in &sizes {
        for (reset_after, masked, backwards, rec_drop) in [
            (true, false, false, false),
            (false, true, true, false),
            (true, true, false, true),
        ] {
            for poison in [false, true] {
                seed += 1;
                let mut pr = Problem::new(size, reset_after, masked, backwards, rec_drop, seed);
                pr.h0.iter_mut().for_each(|v| *v = 0.0);
                if poison {
                    pr.rec[5] = f64::INFINITY;
                }
                let label = format!(
                    "{size:?} reset_after={reset_after} mask={masked} back={backwards} \
                     drop={rec_drop} inf={poison}"
                );
                // Inference (fused team steps, inputs projected in the step) and training.
                let trains: &[bool] = if poison { &[false] } else { &[false, true] };
                for (&train, threads) in trains.iter().flat_map(|t| [(t, 1), (t, 2)]) {
                    let (seq_a, state_a, g_a) = pr.run::<f32>(threads, train);
                    pr.h0_given = false;
                    pr.want_dh0 = true;
                    let (seq_b, state_b, g_b) = pr.run::<f32>(threads, train);
                    pr.h0_given = true;
                    pr.want_dh0 = false;
                    assert!(same(&seq_a, &seq_b), "{label} th={threads}: outputs");
                    assert!(same(&state_a, &state_b), "{label} th={threads}: state");
                    if poison {
                        assert!(seq_a.iter().any(|v| v.is_nan()), "{label}: NaN expected");
                    }
                    if let (Some((ga, dxa, _)), Some((gb, dxb, dh0))) = (&g_a, &g_b) {
                        assert!(ga == gb, "{label} th={threads}: gradients");
                        assert!(dxa == dxb, "{label} th={threads}: dx");
                        assert!(dh0.iter().any(|v| *v != 0.0), "{label}: dh0 computed");
                    }
                }
            }
        }
    }
}

/// Single steps (`gru_step`, what streams call) read a pre-packed `U` for one row and for three
/// or more rows, and a pre-packed `W` in the projection: the numbers must not change (beyond
/// round-off where a wide `W` is read by `engine::projection`).
#[test]
fn single_steps_on_prepacked_weights_change_nothing() {
    let _turn = isa_turn();
    use grucell::engine::gru::gru_step;
    for &(b, d, u) in &[(5, 7, 40), (3, 300, 33), (2, 9, 20), (1, 4, 64)] {
        let pr = Problem::new((b, 1, d, u), true, false, false, false, 7 + u as u64);
        let c = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (kernel, rec, xb, hb, x) = (c(&pr.kernel), c(&pr.rec), c(&pr.xb), c(&pr.hb), c(&pr.x));
        let p = tanh_params((&kernel, &rec), (Some(&xb), Some(&hb)), (d, u), true);
        let pw = PackedWeights::new(&p, 1).unwrap();
        // `U` padded to whole 16-column panels per gate, each panel one 16-value row longer
        // than its depth (see `panel_stride`), and each packing one 16-value cache line longer
        // (its panels start on a line); `W` for inputs of ≤ 256 features, and for wider ones
        // where `engine::projection` may read it (elsewhere the GEMM crate projects them from
        // the slice).
        let per_row = 3 * u.div_ceil(16) * 16;
        let packs_w = d <= 256 || projection::available::<f32>();
        let w_len = if packs_w { per_row * (d + 1) + 16 } else { 0 };
        assert_eq!(
            pw.len(),
            per_row * (u + 1) + 16 + w_len,
            "(D, u) = {:?}",
            (d, u)
        );
        let mut outs = Vec::new();
        for packed in [None, Some(&pw)] {
            let p = GruParams { packed, ..p };
            let mut h = c(&pr.h0);
            let mut ws = GruWorkspace::new();
            // Three steps, so the state is not the initial one.
            for _ in 0..3 {
                gru_step(&p, &x, b, &mut h, &mut ws, 1);
            }
            outs.push(h);
        }
        if d > 256 && projection::preferred::<f32>(b) {
            // The pre-packed wide `W` is read by `engine::projection`: another summation order.
            for (x, y) in outs[0].iter().zip(&outs[1]) {
                assert!(
                    (x - y).abs() <= 1e-5,
                    "(B, D, u) = {:?}: {x} vs {y}",
                    (b, d, u)
                );
            }
            assert!(!same(&outs[0], &outs[1]), "expected the own projection");
        } else {
            assert!(same(&outs[0], &outs[1]), "(B, D, u) = {:?}", (b, d, u));
        }
    }
}

/// Packing checks the slices against the dimensions it is given.
#[test]
fn packed_weights_reject_short_slices() {
    let _turn = isa_turn();
    let (d, u) = (4, 8);
    let kernel = vec![0.0f32; d * 3 * u - 1];
    let rec = vec![0.0f32; u * 3 * u];
    let p = tanh_params((&kernel, &rec), (None, None), (d, u), true);
    let e = PackedWeights::new(&p, 1).unwrap_err().to_string();
    assert!(
        e.contains("kernel") && e.contains("95") && e.contains("96"),
        "{e}"
    );
    let p = GruParams {
        kernel: &rec[..d * 3 * u],
        recurrent: &rec[..u * 3 * u - 3],
        ..p
    };
    let e = PackedWeights::new(&p, 1).unwrap_err().to_string();
    assert!(e.contains("recurrent_kernel") && e.contains("192"), "{e}");
}
