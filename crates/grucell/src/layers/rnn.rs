//! The RNN layer around GRU cells: `return_sequences`, `return_state`, `go_backwards`, `stateful`,
//! `initial_state`, masking, stacked cells, and a step API for streaming.

use crate::engine::gru::{gru_sequence, gru_step, DropoutMasks, SequenceOptions, SequenceOutputs};
use crate::engine::workspace::GruWorkspace;
use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::gru_cell::{GruCell, GruCellConfig};
use crate::layers::regularizer::Regularizer;
use crate::tensor::Tensor;

/// How the layer was written in Keras, so it can be written back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnKind {
    /// `keras.layers.GRU(units, …)`.
    Gru,
    /// `keras.layers.RNN(GRUCell(…))`.
    RnnCell,
    /// `keras.layers.RNN(StackedRNNCells([…]))` or `RNN([cell, cell, …])`.
    RnnStacked,
}

/// An RNN layer over one GRU cell or a stack of them.
///
/// ```
/// use grucell::{GruCellConfig, Rnn, Tensor};
/// let x = Tensor::<f32>::new(vec![3, 5, 2], (0..30).map(|i| i as f32 / 30.0).collect())?;
/// let rnn = Rnn::stacked(vec![GruCellConfig::new(4), GruCellConfig::new(3)], 2)?.return_state(true);
/// let out = rnn.call(&x)?;
/// assert_eq!(out.output.shape(), &[3, 3]);
/// assert_eq!(out.states.len(), 2); // one state per cell
/// assert_eq!(out.states[0].shape(), &[3, 4]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Rnn<T = f32> {
    cells: Vec<GruCell<T>>,
    kind: RnnKind,
    /// Layer name.
    pub name: String,
    return_sequences: bool,
    return_state: bool,
    go_backwards: bool,
    stateful: bool,
    zero_output_for_mask: bool,
    unroll: bool,
    activity_regularizer: Option<Regularizer>,
    threads: usize,
    /// Stateful layers' carried states, one per cell.
    states: Option<Vec<Tensor<T>>>,
}

/// What an RNN call returns: the output (last step `(B, u)` or the sequence `(B, T, u)`) and the
/// final state of every cell (empty unless `return_state`).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnOutput<T> {
    /// `(B, u)` or, with `return_sequences`, `(B, T, u)`.
    pub output: Tensor<T>,
    /// Final states `(B, u_k)`, one per cell, when `return_state` is set.
    pub states: Vec<Tensor<T>>,
}

/// A per-sample, per-step mask `(B, T)`: `true` = the step is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    /// Batch size.
    pub batch: usize,
    /// Time steps.
    pub time: usize,
    /// Row-major `(B, T)` flags.
    pub data: Vec<bool>,
}

impl Mask {
    /// Wraps `(B, T)` flags.
    pub fn new(batch: usize, time: usize, data: Vec<bool>) -> Result<Self, ShapeError> {
        if data.len() != batch * time {
            return Err(ShapeError::ElementCount {
                arg: "mask".into(),
                shape: vec![batch, time],
                needed: batch * time,
                got: data.len(),
            });
        }
        Ok(Mask { batch, time, data })
    }

    /// The mask Keras' `Masking(mask_value)` computes: a step is kept unless every feature equals
    /// `mask_value`.
    pub fn from_values<T: Float>(x: &Tensor<T>, mask_value: T) -> Result<Self, ShapeError> {
        let (b, t, d) = dims3(x, "inputs")?;
        let data = x
            .data()
            .chunks_exact(d.max(1))
            .take(b * t)
            .map(|row| row.iter().any(|v| *v != mask_value))
            .collect();
        Mask::new(b, t, data)
    }

    /// The mask reversed in time.
    pub fn reversed(&self) -> Mask {
        let mut data = self.data.clone();
        for row in data.chunks_exact_mut(self.time.max(1)) {
            row.reverse();
        }
        Mask { data, ..*self }
    }
}

/// `(B, T, D)` of a rank-3 tensor, or an error naming `arg`.
pub(crate) fn dims3<T>(x: &Tensor<T>, arg: &str) -> Result<(usize, usize, usize), ShapeError> {
    match x.shape() {
        &[b, t, d] => Ok((b, t, d)),
        s => Err(ShapeError::mismatch(
            arg,
            s,
            "rank 3: (batch, time, features)",
        )),
    }
}

impl<T: Float> Rnn<T> {
    /// `RNN(GRUCell(config))` over inputs with `input_dim` features, weights freshly initialized.
    pub fn new(config: GruCellConfig, input_dim: usize) -> Result<Self, Error> {
        let cell = config.build(input_dim)?;
        Self::from_cells(vec![cell], RnnKind::RnnCell)
    }

    /// `RNN(StackedRNNCells(configs))`: cell k feeds cell k + 1 within each time step.
    pub fn stacked(configs: Vec<GruCellConfig>, input_dim: usize) -> Result<Self, Error> {
        let mut cells = Vec::with_capacity(configs.len());
        let mut d = input_dim;
        for (k, c) in configs.into_iter().enumerate() {
            let c = if k > 0 && c.name == "gru_cell" {
                c.clone().name(format!("gru_cell_{k}"))
            } else {
                c
            };
            let cell = c.build(d)?;
            d = cell.units();
            cells.push(cell);
        }
        Self::from_cells(cells, RnnKind::RnnStacked)
    }

    /// Wraps existing cells (weights already set). Consecutive cells must chain: cell k + 1's
    /// input_dim equals cell k's units.
    pub fn from_cells(cells: Vec<GruCell<T>>, kind: RnnKind) -> Result<Self, Error> {
        if cells.is_empty() {
            return Err(ConfigError::invalid("cells", "[]", "at least one GRU cell").into());
        }
        for (k, w) in cells.windows(2).enumerate() {
            if w[1].input_dim() != w[0].units() {
                return Err(ShapeError::mismatch(
                    format!("cells[{}].kernel", k + 1),
                    w[1].kernel().shape(),
                    format!(
                        "({}, {}) to follow a cell of {} units",
                        w[0].units(),
                        3 * w[1].units(),
                        w[0].units()
                    ),
                )
                .into());
            }
        }
        if kind != RnnKind::RnnStacked && cells.len() != 1 {
            return Err(ConfigError::invalid(
                "cells",
                cells.len(),
                "one cell unless the layer is stacked",
            )
            .into());
        }
        let name = match kind {
            RnnKind::Gru => "gru",
            _ => "rnn",
        };
        Ok(Rnn {
            cells,
            kind,
            name: name.into(),
            return_sequences: false,
            return_state: false,
            go_backwards: false,
            stateful: false,
            zero_output_for_mask: false,
            unroll: false,
            activity_regularizer: None,
            threads: 1,
            states: None,
        })
    }

    /// Sets `return_sequences`.
    pub fn return_sequences(mut self, b: bool) -> Self {
        self.return_sequences = b;
        self
    }
    /// Sets `return_state`.
    pub fn return_state(mut self, b: bool) -> Self {
        self.return_state = b;
        self
    }
    /// Sets `go_backwards` (the returned sequence is not flipped back, as in Keras).
    pub fn go_backwards(mut self, b: bool) -> Self {
        self.go_backwards = b;
        self
    }
    /// Sets `stateful`: each [`Rnn::call_mut`] starts from the states the previous one ended with.
    pub fn stateful(mut self, b: bool) -> Self {
        self.stateful = b;
        self
    }
    /// Sets `zero_output_for_mask` (masked steps output zeros instead of the previous output).
    pub fn zero_output_for_mask(mut self, b: bool) -> Self {
        self.zero_output_for_mask = b;
        self
    }
    /// Keras' `unroll` (stored and saved; it does not change the numbers).
    pub fn unroll(mut self, b: bool) -> Self {
        self.unroll = b;
        self
    }
    /// Sets the layer name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the layer's activity regularizer (applied to its outputs in training).
    pub fn activity_regularizer(mut self, r: Option<Regularizer>) -> Self {
        self.activity_regularizer = r;
        self
    }
    /// Threads the GEMMs may use (default 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }
    /// Changes how the layer is serialized (`GRU` vs `RNN(GRUCell)`); single-cell only for `Gru`.
    pub fn with_kind(mut self, kind: RnnKind) -> Result<Self, ConfigError> {
        if kind != RnnKind::RnnStacked && self.cells.len() != 1 {
            return Err(ConfigError::invalid(
                "kind",
                format!("{kind:?}"),
                "RnnStacked for several cells",
            ));
        }
        self.kind = kind;
        Ok(self)
    }

    /// The cells, first to last.
    pub fn cells(&self) -> &[GruCell<T>] {
        &self.cells
    }
    /// Mutable cells (training).
    pub(crate) fn cells_mut(&mut self) -> &mut [GruCell<T>] {
        &mut self.cells
    }
    /// How the layer is serialized.
    pub fn kind(&self) -> RnnKind {
        self.kind
    }
    /// Feature count the layer expects.
    pub fn input_dim(&self) -> usize {
        self.cells[0].input_dim()
    }
    /// Units of the last cell (the output width).
    pub fn units(&self) -> usize {
        self.cells[self.cells.len() - 1].units()
    }
    /// `return_sequences`.
    pub fn returns_sequences(&self) -> bool {
        self.return_sequences
    }
    /// `return_state`.
    pub fn returns_state(&self) -> bool {
        self.return_state
    }
    /// `go_backwards`.
    pub fn is_go_backwards(&self) -> bool {
        self.go_backwards
    }
    /// `stateful`.
    pub fn is_stateful(&self) -> bool {
        self.stateful
    }
    /// `zero_output_for_mask`.
    pub fn zeroes_masked_outputs(&self) -> bool {
        self.zero_output_for_mask
    }
    /// `unroll`.
    pub fn is_unrolled(&self) -> bool {
        self.unroll
    }
    /// The activity regularizer, if any.
    pub fn activity_regularizer_ref(&self) -> Option<&Regularizer> {
        self.activity_regularizer.as_ref()
    }
    /// Thread count.
    pub fn thread_count(&self) -> usize {
        self.threads
    }
    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.cells.iter().map(GruCell::param_count).sum()
    }

    /// Zeroes a stateful layer's carried states (Keras `reset_states()`).
    pub fn reset_states(&mut self) {
        self.states = None;
    }

    /// The carried states of a stateful layer (`None` before the first call or after a reset).
    pub fn carried_states(&self) -> Option<&[Tensor<T>]> {
        self.states.as_deref()
    }

    /// Runs the layer on `x` `(B, T, D)` from zero (or carried, if stateful) states, no mask.
    pub fn call(&self, x: &Tensor<T>) -> Result<RnnOutput<T>, Error> {
        self.call_with(x, None, None)
    }

    /// Runs the layer with an optional initial state per cell (`(B, u_k)` each) and an optional
    /// mask. Stateful layers start from their carried states when no initial state is given, but
    /// this `&self` call does not update them: use [`Rnn::call_mut`].
    pub fn call_with(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<RnnOutput<T>, Error> {
        let (out, _) = self.run(x, initial_state, mask)?;
        Ok(out)
    }

    /// Like [`Rnn::call_with`]; a stateful layer also keeps its final states for the next call.
    pub fn call_mut(
        &mut self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<RnnOutput<T>, Error> {
        let (out, finals) = self.run(x, initial_state, mask)?;
        if self.stateful {
            self.states = Some(finals);
        }
        Ok(out)
    }

    /// Like [`Rnn::call_with`], also returning every cell's final state (whatever
    /// `return_state` says).
    pub fn call_with_final_states(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<(RnnOutput<T>, Vec<Tensor<T>>), Error> {
        self.run(x, initial_state, mask)
    }

    /// Replaces a stateful layer's carried states (used by models after a stateful call).
    pub(crate) fn set_carried_states(&mut self, states: Vec<Tensor<T>>) {
        if self.stateful {
            self.states = Some(states);
        }
    }

    /// Takes `other`'s carried states (none if it has none), e.g. when earlier weights are
    /// restored: Keras' states are not weights, and stay as the last call left them.
    pub(crate) fn keep_carried_states_of(&mut self, other: &Rnn<T>) {
        if self.stateful {
            self.states.clone_from(&other.states);
        }
    }

    /// Validates shapes and returns the per-cell initial states to use.
    pub(crate) fn check_inputs(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<(usize, usize), Error> {
        let (b, t, d) = dims3(x, "inputs")?;
        if d != self.input_dim() {
            return Err(ShapeError::mismatch(
                "inputs",
                x.shape(),
                format!(
                    "(batch, time, {}) — the layer was built for {} features",
                    self.input_dim(),
                    self.input_dim()
                ),
            )
            .into());
        }
        if t == 0 {
            return Err(ShapeError::mismatch(
                "inputs",
                x.shape(),
                "at least one time step (Keras fails on T = 0)",
            )
            .into());
        }
        if let Some(m) = mask {
            if m.batch != b || m.time != t {
                return Err(ShapeError::mismatch(
                    "mask",
                    &[m.batch, m.time],
                    format!("({b}, {t})"),
                )
                .into());
            }
        }
        if let Some(s) = initial_state {
            if s.len() != self.cells.len() {
                return Err(ConfigError::invalid(
                    "initial_state",
                    format!("{} tensors", s.len()),
                    format!("one tensor per cell ({})", self.cells.len()),
                )
                .into());
            }
            for (k, (st, c)) in s.iter().zip(&self.cells).enumerate() {
                if st.shape() != [b, c.units()] {
                    return Err(ShapeError::mismatch(
                        format!("initial_state[{k}]"),
                        st.shape(),
                        format!("({b}, {})", c.units()),
                    )
                    .into());
                }
            }
        }
        if self.stateful {
            if let Some(s) = &self.states {
                if s[0].shape()[0] != b {
                    return Err(ConfigError::invalid(
                        "batch size",
                        b,
                        format!("{} — a stateful RNN keeps the batch size of its first call (reset_states() to change it)", s[0].shape()[0]),
                    )
                    .into());
                }
            }
        }
        Ok((b, t))
    }

    fn run(
        &self,
        x: &Tensor<T>,
        initial_state: Option<&[Tensor<T>]>,
        mask: Option<&Mask>,
    ) -> Result<(RnnOutput<T>, Vec<Tensor<T>>), Error> {
        let (b, t) = self.check_inputs(x, initial_state, mask)?;
        // Non-finite values propagate as in Keras (a model refuses them in its own inputs; an
        // earlier layer that overflowed hands them on, and Keras' result is NaN/inf, not an error).
        let initial = initial_state.or(if self.stateful {
            self.states.as_deref()
        } else {
            None
        });
        let mut ws = GruWorkspace::new();
        let n = self.cells.len();
        // Stacked cells run layer by layer (identical numbers: a masked step holds every cell's
        // state, and each layer's input projection becomes one GEMM). With go_backwards the first
        // cell walks backwards and writes its sequence in processing order; later cells walk that
        // sequence forwards with the mask reversed to match.
        let reversed_mask = if self.go_backwards && n > 1 {
            mask.map(Mask::reversed)
        } else {
            None
        };
        let mut input = x.data().to_vec();
        let mut finals = Vec::with_capacity(n);
        let mut last = Tensor::zeros(vec![b, self.units()]);
        let mut seq_out = Vec::new();
        for (k, cell) in self.cells.iter().enumerate() {
            let u = cell.units();
            let is_last = k + 1 == n;
            let want_seq = !is_last || self.return_sequences;
            let mut seq = if want_seq {
                vec![T::zero(); b * t * u]
            } else {
                Vec::new()
            };
            let mut last_k = vec![T::zero(); b * u];
            let mut state = vec![T::zero(); b * u];
            let m = if k == 0 {
                mask
            } else {
                reversed_mask.as_ref().or(mask)
            };
            let opts = SequenceOptions {
                mask: m.map(|m| m.data.as_slice()),
                go_backwards: self.go_backwards && k == 0,
                zero_output_for_mask: self.zero_output_for_mask,
                threads: self.threads,
            };
            gru_sequence(
                &cell.params_for(b, t, self.threads),
                &input,
                b,
                t,
                initial.map(|s| s[k].data()),
                opts,
                DropoutMasks::default(),
                SequenceOutputs {
                    sequence: if want_seq { Some(&mut seq) } else { None },
                    last_output: &mut last_k,
                    state: &mut state,
                },
                &mut ws,
                None,
            );
            finals.push(Tensor::new(vec![b, u], state)?);
            if is_last {
                last = Tensor::new(vec![b, u], last_k)?;
                seq_out = seq;
            } else {
                input = seq;
            }
        }
        let output = if self.return_sequences {
            Tensor::new(vec![b, t, self.units()], seq_out)?
        } else {
            last
        };
        let states = if self.return_state {
            finals.clone()
        } else {
            Vec::new()
        };
        Ok((RnnOutput { output, states }, finals))
    }

    /// A stream for feeding one time step at a time (batch `batch`), starting from zero states.
    pub fn stream(&self, batch: usize) -> RnnStream<T> {
        RnnStream {
            batch,
            states: self
                .cells
                .iter()
                .map(|c| vec![T::zero(); batch * c.units()])
                .collect(),
            ws: GruWorkspace::new(),
            layer_in: Vec::new(),
        }
    }
}

/// Streaming state for one sequence batch: one state per cell and its own scratch. Feeding a step
/// allocates nothing after the first call. Each stream is independent, so many streams can share
/// one (immutable) [`Rnn`] across threads.
///
/// ```
/// use grucell::{GruCellConfig, Rnn, Tensor};
/// let rnn = Rnn::<f32>::new(GruCellConfig::new(4).seed(Some(1)), 2)?;
/// let x = Tensor::new(vec![1, 3, 2], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6])?;
/// let whole = rnn.call(&x)?.output;
/// let mut s = rnn.stream(1);
/// for t in 0..3 {
///     s.step(&rnn, &x.data()[t * 2..t * 2 + 2])?;
/// }
/// let streamed = s.output();
/// assert!(whole.data().iter().zip(streamed).all(|(a, b)| (a - b).abs() < 1e-6));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RnnStream<T> {
    batch: usize,
    states: Vec<Vec<T>>,
    ws: GruWorkspace<T>,
    layer_in: Vec<T>,
}

impl<T: Float> RnnStream<T> {
    /// Feeds one step `x_t` `(B, D)` and returns the new output `(B, u)` of the last cell.
    pub fn step(&mut self, rnn: &Rnn<T>, x_t: &[T]) -> Result<&[T], Error> {
        if x_t.len() != self.batch * rnn.input_dim() {
            return Err(ShapeError::mismatch(
                "x_t",
                &[x_t.len()],
                format!("({}, {}) flattened", self.batch, rnn.input_dim()),
            )
            .into());
        }
        if self.states.len() != rnn.cells.len()
            || self
                .states
                .iter()
                .zip(&rnn.cells)
                .any(|(s, c)| s.len() != self.batch * c.units())
        {
            return Err(ConfigError::invalid(
                "stream",
                "a stream of another layer",
                "a stream made by this layer's `stream()`",
            )
            .into());
        }
        for (k, cell) in rnn.cells.iter().enumerate() {
            if k > 0 {
                self.layer_in.clear();
                self.layer_in.extend_from_slice(&self.states[k - 1]);
            }
            let input = if k == 0 { x_t } else { &self.layer_in[..] };
            gru_step(
                &cell.params_for(self.batch, 1, rnn.threads),
                input,
                self.batch,
                &mut self.states[k],
                &mut self.ws,
                rnn.threads,
            );
        }
        Ok(self.output())
    }

    /// The current output `(B, u)` of the last cell (= its state).
    pub fn output(&self) -> &[T] {
        self.states.last().map_or(&[], |s| s.as_slice())
    }

    /// Current state of every cell.
    pub fn states(&self) -> &[Vec<T>] {
        &self.states
    }

    /// Zeroes the states.
    pub fn reset(&mut self) {
        for s in &mut self.states {
            s.fill(T::zero());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_seq(rnn: &Rnn<f32>, x: &Tensor<f32>) -> Vec<f32> {
        rnn.call(x).unwrap().output.data().to_vec()
    }

    /// Inference packs the weights once and keeps them with the cell; a weight change (as the
    /// trainer makes one) must drop that packing, or later calls would run on the old weights.
    #[test]
    fn packed_weights_follow_weight_changes() {
        let cfg = GruCellConfig::new(20).seed(Some(3));
        let mut rnn = Rnn::<f32>::new(cfg, 6).unwrap().return_sequences(true);
        let (b, t, d) = (4, 5, 6);
        let data = (0..b * t * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let x = Tensor::new(vec![b, t, d], data).unwrap();
        assert!(rnn.cells()[0].params().packed.is_none());
        let before = call_seq(&rnn, &x);
        assert!(
            rnn.cells()[0].params().packed.is_some(),
            "packed by the call"
        );
        assert_eq!(
            call_seq(&rnn, &x),
            before,
            "the kept packing reproduces the call"
        );

        let cell = &mut rnn.cells_mut()[0];
        for w in cell.weights_mut() {
            w.data_mut().iter_mut().for_each(|v| *v = -0.5 * *v + 0.01);
        }
        cell.weights_changed();
        assert!(
            rnn.cells()[0].params().packed.is_none(),
            "dropped on change"
        );
        let after = call_seq(&rnn, &x);
        assert_ne!(after, before);

        let c = &rnn.cells()[0];
        let fresh = GruCell::from_weights(
            c.config().clone(),
            c.kernel().clone(),
            c.recurrent_kernel().clone(),
            c.bias().cloned(),
        )
        .unwrap();
        let fresh = Rnn::from_cells(vec![fresh], RnnKind::Gru)
            .unwrap()
            .return_sequences(true);
        assert_eq!(call_seq(&fresh, &x), after);
    }

    /// Keras propagates non-finite values through a GRU (an earlier layer may have overflowed):
    /// the batch row holding a NaN turns NaN from that step on, the other rows are untouched
    /// (for an infinity too), and the call does not fail.
    #[test]
    fn non_finite_inputs_propagate_per_batch_row() {
        let cfg = GruCellConfig::new(5).seed(Some(4));
        let rnn = Rnn::<f32>::new(cfg, 3).unwrap().return_sequences(true);
        let (b, t, d) = (3, 4, 3);
        let data: Vec<f32> = (0..b * t * d).map(|i| (i % 5) as f32 / 5.0 - 0.4).collect();
        let clean = call_seq(&rnn, &Tensor::new(vec![b, t, d], data.clone()).unwrap());
        for bad in [f32::NAN, f32::INFINITY] {
            let mut dirty = data.clone();
            dirty[(t + 2) * d + 1] = bad; // row 1, step 2
            let out = call_seq(&rnn, &Tensor::new(vec![b, t, d], dirty).unwrap());
            for (i, (o, c)) in out.iter().zip(&clean).enumerate() {
                let (row, step) = (i / (t * 5), i / 5 % t);
                if row == 1 && step >= 2 {
                    // An infinity saturates the gates (it may well stay finite); NaN spreads.
                    assert!(
                        bad.is_infinite() || o.is_nan(),
                        "NaN: row 1 step {step} is {o}"
                    );
                } else {
                    assert_eq!(o.to_bits(), c.to_bits(), "{bad}: row {row} step {step}");
                }
            }
        }
    }
}
