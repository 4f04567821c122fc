//! Training forward and backward of an [`Rnn`] layer: per-cell traces, Keras-structured dropout
//! masks, and gradients for every cell's weights, the inputs and the initial states.

use crate::engine::gru::{gru_sequence, DropoutMasks, GruTrace, SequenceOptions, SequenceOutputs};
use crate::engine::gru_backward::{gru_sequence_backward, GruGrads, OutputGrads};
use crate::engine::workspace::GruWorkspace;
use crate::error::Error;
use crate::float::Float;
use crate::layers::gru_cell::GruCell;
use crate::layers::rnn::{Mask, Rnn, RnnOutput};
use crate::tensor::Tensor;
use rand::Rng;

/// Keras' dropout masks of one cell for one call: values 0 or `1/(1−rate)`, per sample.
#[derive(Clone, Debug, Default)]
pub struct CellDropout<T> {
    /// Input masks `(B, D)`: one shared (`recurrent_dropout == 0`) or three (z, r, h).
    pub input: Vec<Vec<T>>,
    /// Recurrent masks `(B, u)`, three (z, r, h), when `recurrent_dropout > 0`.
    pub recurrent: Vec<Vec<T>>,
}

impl<T: Float> CellDropout<T> {
    /// Draws the masks Keras would draw for `cell` on a batch of `batch` (training only; Keras
    /// applies dropout only for `0 < rate < 1`).
    pub fn draw(cell: &GruCell<T>, batch: usize, rng: &mut impl Rng) -> Self {
        let c = cell.config();
        let active = |r: f64| r > 0.0 && r < 1.0;
        let mask = |n: usize, rate: f64, rng: &mut dyn rand::RngCore| -> Vec<T> {
            let scale = T::of(1.0 / (1.0 - rate));
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() >= rate {
                        scale
                    } else {
                        T::zero()
                    }
                })
                .collect()
        };
        let mut out = CellDropout::default();
        if active(c.recurrent_dropout) {
            if active(c.dropout) {
                out.input = (0..3)
                    .map(|_| mask(batch * cell.input_dim(), c.dropout, rng))
                    .collect();
            }
            out.recurrent = (0..3)
                .map(|_| mask(batch * cell.units(), c.recurrent_dropout, rng))
                .collect();
        } else if active(c.dropout) {
            out.input = vec![mask(batch * cell.input_dim(), c.dropout, rng)];
        }
        out
    }

    fn masks(&self) -> DropoutMasks<'_, T> {
        DropoutMasks {
            input: match self.input.len() {
                1 => Some([&self.input[0], &self.input[0], &self.input[0]]),
                3 => Some([&self.input[0], &self.input[1], &self.input[2]]),
                _ => None,
            },
            recurrent: if self.recurrent.len() == 3 {
                Some([&self.recurrent[0], &self.recurrent[1], &self.recurrent[2]])
            } else {
                None
            },
        }
    }
}

/// A training forward's output, every cell's final state, and its tape.
pub type TrainForward<T> = (RnnOutput<T>, Vec<Tensor<T>>, RnnTape<T>);

/// What the training forward of an RNN layer keeps.
#[derive(Clone, Debug)]
pub struct RnnTape<T> {
    batch: usize,
    time: usize,
    inputs: Vec<Vec<T>>,
    traces: Vec<GruTrace<T>>,
    dropout: Vec<CellDropout<T>>,
    mask: Option<Mask>,
    reversed_mask: Option<Mask>,
    initial: Option<Vec<Tensor<T>>>,
}

/// Gradients of an RNN layer call.
#[derive(Clone, Debug)]
pub struct RnnGrads<T> {
    /// Per cell, in order.
    pub cells: Vec<GruGrads<T>>,
    /// d inputs `(B, T, D)`.
    pub dx: Tensor<T>,
    /// d initial states, per cell (zero when none were given).
    pub dinitial: Vec<Tensor<T>>,
}

impl<T: Float> Rnn<T> {
    /// Training forward: like [`Rnn::call_with`], keeping what [`Rnn::backward`] needs. With an
    /// `rng`, dropout masks are drawn as Keras draws them; without, no dropout.
    pub fn forward_train(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
        rng: Option<&mut rand::rngs::StdRng>,
    ) -> Result<TrainForward<T>, Error> {
        let (b, t) = self.check_inputs(x, initial_state, mask)?;
        let initial = initial_state.map(|s| s.to_vec()).or_else(|| {
            if self.is_stateful() {
                self.carried_states().map(|s| s.to_vec())
            } else {
                None
            }
        });
        let n = self.cells().len();
        let mut rng = rng;
        let reversed_mask = if self.is_go_backwards() && n > 1 {
            mask.map(Mask::reversed)
        } else {
            None
        };
        let mut tape = RnnTape {
            batch: b,
            time: t,
            inputs: Vec::new(),
            traces: Vec::new(),
            dropout: Vec::new(),
            mask: mask.cloned(),
            reversed_mask,
            initial,
        };
        let mut ws = GruWorkspace::new();
        let mut input = x.data().to_vec();
        let mut finals = Vec::with_capacity(n);
        let mut last = Vec::new();
        let mut seq_out = Vec::new();
        for (k, cell) in self.cells().iter().enumerate() {
            let u = cell.units();
            let drop = match rng.as_deref_mut() {
                Some(r) => CellDropout::draw(cell, b, r),
                None => CellDropout::default(),
            };
            let mut seq = vec![T::zero(); b * t * u];
            let mut last_k = vec![T::zero(); b * u];
            let mut state = vec![T::zero(); b * u];
            let mut trace = GruTrace::default();
            let m = if k == 0 {
                tape.mask.as_ref()
            } else {
                tape.reversed_mask.as_ref().or(tape.mask.as_ref())
            };
            let opts = SequenceOptions {
                mask: m.map(|m| m.data.as_slice()),
                go_backwards: self.is_go_backwards() && k == 0,
                zero_output_for_mask: self.zeroes_masked_outputs(),
                threads: self.thread_count(),
            };
            gru_sequence(
                &cell.params(),
                &input,
                b,
                t,
                tape.initial.as_ref().map(|s| s[k].data()),
                opts,
                drop.masks(),
                SequenceOutputs {
                    sequence: Some(&mut seq),
                    last_output: &mut last_k,
                    state: &mut state,
                },
                &mut ws,
                Some(&mut trace),
            );
            finals.push(Tensor::new(vec![b, u], state)?);
            tape.traces.push(trace);
            tape.dropout.push(drop);
            let next = seq.clone();
            tape.inputs.push(std::mem::replace(&mut input, next));
            if k + 1 == n {
                last = last_k;
                seq_out = seq;
            }
        }
        let u = self.units();
        let output = if self.returns_sequences() {
            Tensor::new(vec![b, t, u], seq_out)?
        } else {
            Tensor::new(vec![b, u], last)?
        };
        let states = if self.returns_state() {
            finals.clone()
        } else {
            Vec::new()
        };
        Ok((RnnOutput { output, states }, finals, tape))
    }

    /// Backward of [`Rnn::forward_train`] (consumes the tape): `d_output` matches the output (`(B, T, u)` or `(B, u)`),
    /// `d_states` the final state of each cell (zeros when `None`).
    pub fn backward(
        &self,
        mut tape: RnnTape<T>,
        d_output: &Tensor<T>,
        d_states: Option<&[Tensor<T>]>,
    ) -> Result<RnnGrads<T>, Error> {
        let (b, t) = (tape.batch, tape.time);
        let n = self.cells().len();
        let mut cells: Vec<GruGrads<T>> = self
            .cells()
            .iter()
            .map(|c| GruGrads::zeros(c.input_dim(), c.units()))
            .collect();
        let mut dinitial: Vec<Tensor<T>> = self
            .cells()
            .iter()
            .map(|c| Tensor::zeros(vec![b, c.units()]))
            .collect();
        // Gradient w.r.t. the current cell's output sequence (flows from the next cell's dx).
        let mut d_seq: Option<Vec<T>> = None;
        let mut dx_out = Vec::new();
        for k in (0..n).rev() {
            let cell = &self.cells()[k];
            let is_last = k + 1 == n;
            let m = if k == 0 {
                tape.mask.as_ref()
            } else {
                tape.reversed_mask.as_ref().or(tape.mask.as_ref())
            };
            let opts = SequenceOptions {
                mask: m.map(|m| m.data.as_slice()),
                go_backwards: self.is_go_backwards() && k == 0,
                zero_output_for_mask: self.zeroes_masked_outputs(),
                threads: self.thread_count(),
            };
            let (seq_grad, last_grad) = if is_last {
                if self.returns_sequences() {
                    (Some(d_output.data()), None)
                } else {
                    (None, Some(d_output.data()))
                }
            } else {
                (d_seq.as_deref(), None)
            };
            let mut dx = vec![T::zero(); b * t * cell.input_dim()];
            let mut dh0 = vec![T::zero(); b * cell.units()];
            gru_sequence_backward(
                &cell.params(),
                &tape.inputs[k],
                b,
                t,
                opts,
                tape.dropout[k].masks(),
                &mut tape.traces[k],
                OutputGrads {
                    sequence: seq_grad,
                    last: last_grad,
                    state: d_states.map(|s| s[k].data()),
                },
                &mut cells[k],
                Some(&mut dx),
                Some(&mut dh0),
            );
            if tape.initial.is_some() {
                dinitial[k] = Tensor::new(vec![b, cell.units()], dh0)?;
            }
            if k == 0 {
                dx_out = dx;
            } else {
                d_seq = Some(dx);
            }
        }
        Ok(RnnGrads {
            cells,
            dx: Tensor::new(vec![b, t, self.input_dim()], dx_out)?,
            dinitial,
        })
    }
}
