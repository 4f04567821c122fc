//! `Bidirectional`: a forward and a backward RNN over the same input, merged.

use crate::error::{ConfigError, Error};
use crate::float::Float;
use crate::layers::rnn::{Mask, Rnn};
use crate::tensor::Tensor;

/// How the two directions are combined (Keras `merge_mode`); `None` in [`Bidirectional`] means
/// both outputs are returned separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeMode {
    /// `[forward, backward]` on the last axis (Keras default).
    Concat,
    /// `forward + backward`.
    Sum,
    /// `(forward + backward) / 2`.
    Ave,
    /// `forward ⊙ backward`.
    Mul,
}

impl MergeMode {
    /// Parses Keras' `merge_mode` (`null` → `None`).
    pub fn from_keras(v: Option<&str>) -> Result<Option<Self>, ConfigError> {
        match v {
            None => Ok(None),
            Some("concat") => Ok(Some(MergeMode::Concat)),
            Some("sum") => Ok(Some(MergeMode::Sum)),
            Some("ave") => Ok(Some(MergeMode::Ave)),
            Some("mul") => Ok(Some(MergeMode::Mul)),
            Some(other) => Err(ConfigError::invalid(
                "merge_mode",
                other,
                "one of concat, sum, ave, mul or null",
            )),
        }
    }

    /// Keras' name.
    pub fn name(self) -> &'static str {
        match self {
            MergeMode::Concat => "concat",
            MergeMode::Sum => "sum",
            MergeMode::Ave => "ave",
            MergeMode::Mul => "mul",
        }
    }
}

/// What [`Bidirectional::call_with_final_states`] returns: the outputs of
/// [`Bidirectional::call`], then every cell's final state (forward layer's, then backward's).
pub type OutputsAndFinals<T> = (Vec<Tensor<T>>, Vec<Tensor<T>>);

/// A bidirectional wrapper: `forward` walks time forwards, `backward` (built with
/// `go_backwards = true`) walks it backwards; its sequence is flipped back before merging.
///
/// ```
/// use grucell::layers::bidirectional::{Bidirectional, MergeMode};
/// use grucell::{GruCellConfig, Rnn, Tensor};
/// let f = Rnn::<f32>::new(GruCellConfig::new(3), 2)?.return_sequences(true);
/// let b = Rnn::<f32>::new(GruCellConfig::new(3), 2)?.return_sequences(true).go_backwards(true);
/// let bi = Bidirectional::new(f, b, Some(MergeMode::Concat))?;
/// let x = Tensor::new(vec![2, 4, 2], vec![0.5; 16])?;
/// assert_eq!(bi.call(&x, None, None)?[0].shape(), &[2, 4, 6]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Bidirectional<T = f32> {
    /// The forward layer.
    pub forward: Rnn<T>,
    /// The backward layer (`go_backwards = true`).
    pub backward: Rnn<T>,
    merge_mode: Option<MergeMode>,
    /// Layer name.
    pub name: String,
}

impl<T: Float> Bidirectional<T> {
    /// Pairs two layers. As in Keras, `zero_output_for_mask` of both is forced to
    /// `return_sequences`, and the two must agree on `return_sequences` / `return_state`.
    pub fn new(
        forward: Rnn<T>,
        backward: Rnn<T>,
        merge_mode: Option<MergeMode>,
    ) -> Result<Self, Error> {
        if forward.returns_sequences() != backward.returns_sequences()
            || forward.returns_state() != backward.returns_state()
        {
            return Err(ConfigError::invalid(
                "backward_layer",
                "return_sequences/return_state differing from the forward layer",
                "the same return_sequences and return_state as the forward layer",
            )
            .into());
        }
        if forward.input_dim() != backward.input_dim() {
            return Err(ConfigError::invalid(
                "backward_layer",
                backward.input_dim(),
                format!(
                    "{} input features like the forward layer",
                    forward.input_dim()
                ),
            )
            .into());
        }
        if !backward.is_go_backwards() || forward.is_go_backwards() {
            return Err(ConfigError::invalid(
                "go_backwards",
                "forward/backward flags",
                "forward go_backwards = false and backward go_backwards = true",
            )
            .into());
        }
        let rs = forward.returns_sequences();
        Ok(Bidirectional {
            forward: forward.zero_output_for_mask(rs),
            backward: backward.zero_output_for_mask(rs),
            merge_mode,
            name: "bidirectional".into(),
        })
    }

    /// The merge mode (`None`: two outputs).
    pub fn merge_mode(&self) -> Option<MergeMode> {
        self.merge_mode
    }

    /// Output width after merging.
    pub fn units(&self) -> usize {
        match self.merge_mode {
            Some(MergeMode::Concat) => self.forward.units() + self.backward.units(),
            _ => self.forward.units(),
        }
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.forward.param_count() + self.backward.param_count()
    }

    /// Runs both directions. Returns, like Keras: `[merged]` or `[forward, backward]` (merge mode
    /// `None`), followed with `return_state` by the forward states then the backward states.
    /// `initial_state`, if given, is the forward layer's states followed by the backward layer's.
    pub fn call(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<Vec<Tensor<T>>, Error> {
        Ok(self.call_with_final_states(x, initial_state, mask)?.0)
    }

    /// Like [`Bidirectional::call`], also returning every cell's final state (forward layer's
    /// cells, then the backward layer's), whatever `return_state` says: what stateful layers
    /// carry to the next call.
    pub fn call_with_final_states(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<OutputsAndFinals<T>, Error> {
        let nf = self.forward.cells().len();
        let (fs, bs) = match initial_state {
            Some(s) if s.len() == nf + self.backward.cells().len() => {
                (Some(&s[..nf]), Some(&s[nf..]))
            }
            Some(s) => {
                return Err(ConfigError::invalid(
                    "initial_state",
                    format!("{} tensors", s.len()),
                    format!(
                        "{} (forward states then backward states)",
                        nf + self.backward.cells().len()
                    ),
                )
                .into())
            }
            None => (None, None),
        };
        let (f, mut finals) = self.forward.call_with_final_states(x, fs, mask)?;
        let (mut b, back_finals) = self.backward.call_with_final_states(x, bs, mask)?;
        finals.extend(back_finals);
        if self.backward.returns_sequences() {
            // Flip the backward sequence back so position t aligns with input t.
            let (bn, tn, un) = (
                b.output.shape()[0],
                b.output.shape()[1],
                b.output.shape()[2],
            );
            let data = b.output.data_mut();
            for s in 0..bn {
                for t in 0..tn / 2 {
                    for j in 0..un {
                        data.swap((s * tn + t) * un + j, (s * tn + tn - 1 - t) * un + j);
                    }
                }
            }
        }
        let mut outs = match self.merge_mode {
            None => vec![f.output, b.output],
            Some(mode) => vec![merge(mode, &f.output, &b.output)?],
        };
        outs.extend(f.states);
        outs.extend(b.states);
        Ok((outs, finals))
    }

    /// Whether the wrapped layers are stateful (Keras requires both or neither).
    pub fn is_stateful(&self) -> bool {
        self.forward.is_stateful() || self.backward.is_stateful()
    }

    /// Zeroes both layers' carried states (Keras `reset_states()`).
    pub fn reset_states(&mut self) {
        self.forward.reset_states();
        self.backward.reset_states();
    }

    /// Replaces the carried states of stateful layers: the forward layer's cells, then the
    /// backward layer's, as [`Bidirectional::call_with_final_states`] returns them.
    pub(crate) fn set_carried_states(&mut self, mut states: Vec<Tensor<T>>) {
        let back = states.split_off(self.forward.cells().len().min(states.len()));
        self.forward.set_carried_states(states);
        self.backward.set_carried_states(back);
    }
}

/// Merges two outputs of the same leading shape.
pub fn merge<T: Float>(mode: MergeMode, f: &Tensor<T>, b: &Tensor<T>) -> Result<Tensor<T>, Error> {
    let fs = f.shape();
    let last = fs.len() - 1;
    match mode {
        MergeMode::Concat => {
            let (uf, ub) = (fs[last], b.shape()[last]);
            let rows = f.len() / uf.max(1);
            let mut data = Vec::with_capacity(f.len() + b.len());
            for r in 0..rows {
                data.extend_from_slice(&f.data()[r * uf..(r + 1) * uf]);
                data.extend_from_slice(&b.data()[r * ub..(r + 1) * ub]);
            }
            let mut shape = fs.to_vec();
            shape[last] = uf + ub;
            Ok(Tensor::new(shape, data)?)
        }
        _ => {
            let half = T::of(0.5);
            let data = f
                .data()
                .iter()
                .zip(b.data())
                .map(|(&x, &y)| match mode {
                    MergeMode::Sum => x + y,
                    MergeMode::Ave => (x + y) * half,
                    _ => x * y,
                })
                .collect();
            Ok(Tensor::new(fs.to_vec(), data)?)
        }
    }
}
