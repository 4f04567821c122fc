//! Finite-difference checks (f64, central differences) of the GRU backward kernel: every weight,
//! the inputs and the initial state, over both reset conventions, masks, go_backwards,
//! zero_output_for_mask, dropout masks and several activations.

use grucell::engine::gru::{
    gru_sequence, DropoutMasks, GruParams, GruTrace, SequenceOptions, SequenceOutputs,
};
use grucell::engine::gru_backward::{gru_sequence_backward, GruGrads, OutputGrads};
use grucell::engine::workspace::GruWorkspace;
use grucell::Activation;

mod common;
use common::Lcg;

#[derive(Clone, Copy, Debug)]
struct Case {
    reset_after: bool,
    bias: bool,
    act: Activation,
    rec: Activation,
    masked: bool,
    backwards: bool,
    zero_out: bool,
    in_drop: bool,
    rec_drop: bool,
}

struct Problem {
    c: Case,
    b: usize,
    t: usize,
    d: usize,
    u: usize,
    kernel: Vec<f64>,
    rec: Vec<f64>,
    bias: Vec<f64>, // (2, 3u) or (3u)
    x: Vec<f64>,
    h0: Vec<f64>,
    mask: Vec<bool>,
    in_masks: Vec<Vec<f64>>,
    rec_masks: Vec<Vec<f64>>,
    w_seq: Vec<f64>,
    w_last: Vec<f64>,
    w_state: Vec<f64>,
}

impl Problem {
    fn new(c: Case, seed: u64) -> Self {
        let (b, t, d, u) = (3, 5, 4, 3);
        let mut r = Lcg(seed);
        let g = 3 * u;
        let mask: Vec<bool> = (0..b * t)
            .map(|i| !c.masked || !matches!(i, 2 | 5 | 6 | 14))
            .collect();
        let drop = |r: &mut Lcg, n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| if r.next() > -0.4 { 1.0 / 0.7 } else { 0.0 })
                .collect()
        };
        let in_masks = if c.in_drop {
            vec![
                drop(&mut r, b * d),
                drop(&mut r, b * d),
                drop(&mut r, b * d),
            ]
        } else {
            vec![]
        };
        let rec_masks = if c.rec_drop {
            vec![
                drop(&mut r, b * u),
                drop(&mut r, b * u),
                drop(&mut r, b * u),
            ]
        } else {
            vec![]
        };
        Problem {
            c,
            b,
            t,
            d,
            u,
            kernel: r.vec(d * g, 0.6),
            rec: r.vec(u * g, 0.6),
            bias: r.vec(if c.reset_after { 2 * g } else { g }, 0.5),
            x: r.vec(b * t * d, 1.0),
            h0: r.vec(b * u, 0.5),
            mask,
            in_masks,
            rec_masks,
            w_seq: r.vec(b * t * u, 1.0),
            w_last: r.vec(b * u, 1.0),
            w_state: r.vec(b * u, 1.0),
        }
    }

    fn biases(&self) -> (Vec<f64>, Vec<f64>) {
        let g = 3 * self.u;
        let mut xb = self.bias[..g].to_vec();
        let mut hb = vec![];
        if self.c.reset_after {
            for (j, v) in xb.iter_mut().enumerate().take(2 * self.u) {
                *v += self.bias[g + j];
            }
            hb = self.bias[g + 2 * self.u..].to_vec();
        }
        (xb, hb)
    }

    fn run(&self, trace: Option<&mut GruTrace<f64>>) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (xb, hb) = self.biases();
        let p = GruParams {
            kernel: &self.kernel,
            recurrent: &self.rec,
            xp_bias: if self.c.bias { Some(&xb) } else { None },
            hh_bias: if self.c.bias && self.c.reset_after {
                Some(&hb)
            } else {
                None
            },
            input_dim: self.d,
            units: self.u,
            reset_after: self.c.reset_after,
            activation: self.c.act,
            recurrent_activation: self.c.rec,
            packed: None,
        };
        let (b, t, u) = (self.b, self.t, self.u);
        let mut seq = vec![0.0; b * t * u];
        let mut last = vec![0.0; b * u];
        let mut state = vec![0.0; b * u];
        let opts = SequenceOptions {
            mask: Some(&self.mask),
            go_backwards: self.c.backwards,
            zero_output_for_mask: self.c.zero_out,
            threads: 1,
        };
        let dm = self.dropout();
        gru_sequence(
            &p,
            &self.x,
            b,
            t,
            Some(&self.h0),
            opts,
            dm,
            SequenceOutputs {
                sequence: Some(&mut seq),
                last_output: &mut last,
                state: &mut state,
            },
            &mut GruWorkspace::new(),
            trace,
        );
        let dot = |a: &[f64], w: &[f64]| a.iter().zip(w).map(|(x, y)| x * y).sum::<f64>();
        (
            dot(&seq, &self.w_seq) + dot(&last, &self.w_last) + dot(&state, &self.w_state),
            seq,
            last,
            state,
        )
    }

    fn dropout(&self) -> DropoutMasks<'_, f64> {
        DropoutMasks {
            input: if self.c.in_drop {
                Some([&self.in_masks[0], &self.in_masks[1], &self.in_masks[2]])
            } else {
                None
            },
            recurrent: if self.c.rec_drop {
                Some([&self.rec_masks[0], &self.rec_masks[1], &self.rec_masks[2]])
            } else {
                None
            },
        }
    }
}

fn check(c: Case, seed: u64) -> Vec<String> {
    let mut pr = Problem::new(c, seed);
    let mut trace = GruTrace::default();
    pr.run(Some(&mut trace));
    let (xb, hb) = pr.biases();
    let p = GruParams {
        kernel: &pr.kernel,
        recurrent: &pr.rec,
        xp_bias: if c.bias { Some(&xb) } else { None },
        hh_bias: if c.bias && c.reset_after {
            Some(&hb)
        } else {
            None
        },
        input_dim: pr.d,
        units: pr.u,
        reset_after: c.reset_after,
        activation: c.act,
        recurrent_activation: c.rec,
        packed: None,
    };
    let mut grads = GruGrads::zeros(pr.d, pr.u);
    let mut dx = vec![0.0; pr.x.len()];
    let mut dh0 = vec![0.0; pr.h0.len()];
    let opts = SequenceOptions {
        mask: Some(&pr.mask),
        go_backwards: c.backwards,
        zero_output_for_mask: c.zero_out,
        threads: 1,
    };
    gru_sequence_backward(
        &p,
        &pr.x,
        pr.b,
        pr.t,
        opts,
        pr.dropout(),
        &mut trace,
        OutputGrads {
            sequence: Some(&pr.w_seq),
            last: Some(&pr.w_last),
            state: Some(&pr.w_state),
        },
        &mut grads,
        Some(&mut dx),
        Some(&mut dh0),
    );
    let g = 3 * pr.u;
    let mut bias_grad = grads.bias_input.clone();
    if c.reset_after {
        bias_grad.extend_from_slice(&grads.bias_recurrent);
    }
    let mut errs = Vec::new();
    let h = 1e-6;
    macro_rules! fd {
        ($field:ident, $ana:expr, $name:literal) => {
            for i in 0..pr.$field.len() {
                if $name == "bias" && !c.bias {
                    break;
                }
                let orig = pr.$field[i];
                pr.$field[i] = orig + h;
                let fp = pr.run(None).0;
                pr.$field[i] = orig - h;
                let fm = pr.run(None).0;
                pr.$field[i] = orig;
                let num = (fp - fm) / (2.0 * h);
                let ana = $ana[i];
                if (num - ana).abs() > 1e-6 * (1.0 + num.abs()) {
                    errs.push(format!(
                        "{c:?} seed {seed}: d{}[{i}] numeric {num} analytic {ana}",
                        $name
                    ));
                }
            }
        };
    }
    fd!(kernel, grads.kernel, "kernel");
    fd!(rec, grads.recurrent, "recurrent_kernel");
    fd!(bias, bias_grad, "bias");
    fd!(x, dx, "x");
    fd!(h0, dh0, "h0");
    let _ = g;
    errs
}

#[test]
fn backward_matches_finite_differences() {
    use Activation::*;
    let mut errs = Vec::new();
    let mut n = 0;
    for reset_after in [true, false] {
        for (act, rec) in [
            (Tanh, Sigmoid),
            (Softsign, HardSigmoid),
            (Elu, Sigmoid),
            (Softmax, Sigmoid),
            (Gelu, Softplus),
        ] {
            for (masked, backwards, zero_out) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, false, true),
            ] {
                for (in_drop, rec_drop) in [(false, false), (true, false), (true, true)] {
                    for bias in [true, false] {
                        if !bias && (in_drop || masked) {
                            continue;
                        }
                        let c = Case {
                            reset_after,
                            bias,
                            act,
                            rec,
                            masked,
                            backwards,
                            zero_out,
                            in_drop,
                            rec_drop,
                        };
                        errs.extend(check(c, 7 + n));
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(
        errs.is_empty(),
        "{} mismatches over {n} cases, first 20:\n{}",
        errs.len(),
        errs[..errs.len().min(20)].join("\n")
    );
}
