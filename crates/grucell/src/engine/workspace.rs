//! Caller-owned scratch memory for the GRU kernels, sized up front (as faer's `*_scratch()`), so
//! the time loop never allocates. A workspace grows to the largest problem it has seen and is then
//! reused: streaming one step at a time allocates nothing after the first call.

use super::packed::PackedRhs;
use crate::float::Float;

/// Scratch buffers for [`crate::engine::gru`]. Create one per thread (or per stream) and reuse it.
#[derive(Debug, Default, Clone)]
pub struct GruWorkspace<T> {
    /// Input projections `(B, T, 3u)`, rows in input order.
    pub(crate) xp: Vec<T>,
    /// Recurrent projection of one step `(B, 3u)`.
    pub(crate) hu: Vec<T>,
    /// Current state `(B, u)`.
    pub(crate) h: Vec<T>,
    /// Scratch `(B, u)` (r ⊙ h for reset_after = false; new state).
    pub(crate) tmp: Vec<T>,
    /// Scratch `(B, u)`: second state buffer.
    pub(crate) h2: Vec<T>,
    /// Masked input copy `(B·T, D)` (input dropout), or the inputs packed for fused steps that
    /// project them (`T·B·D`).
    pub(crate) xm: Vec<T>,
    /// Masked states `(3, B, u)` (recurrent dropout), or the state packed for fused steps on
    /// one thread (`B·u`).
    pub(crate) hs: Vec<T>,
    /// The recurrent kernel packed for the time loop (`u × 3u`, padded to whole panels).
    pub(crate) packed: PackedRhs<T>,
    /// The input kernel packed for projections inside the steps (`D × 3u`): by a call without
    /// pre-packed weights whose fused steps project their inputs, once for all parts of a call
    /// split by batch rows.
    pub(crate) wpacked: PackedRhs<T>,
    /// Panel-major scratch of a recurrent product split between threads `(B, 3u)` padded, or
    /// the gate tiles of a fused step on one thread (`6·B·NR`).
    pub(crate) pscratch: Vec<T>,
    /// One workspace per part of a sequence split by batch rows (`gru::batch_parts`).
    pub(crate) parts: Vec<GruWorkspace<T>>,
}

/// Grows `v` to at least `n` elements (large buffers on huge pages, see [`super::pages`]).
pub(crate) fn grow<T: Float>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        super::pages::resize(v, n, T::zero());
    }
}

impl<T: Float> GruWorkspace<T> {
    /// An empty workspace; it grows on first use.
    pub fn new() -> Self {
        GruWorkspace {
            xp: Vec::new(),
            hu: Vec::new(),
            h: Vec::new(),
            tmp: Vec::new(),
            h2: Vec::new(),
            xm: Vec::new(),
            hs: Vec::new(),
            packed: PackedRhs::new(),
            wpacked: PackedRhs::new(),
            pscratch: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// The most elements ([`GruWorkspace::len`]) a fresh workspace grows to for sequences of
    /// `batch` rows, `time` steps, `input_dim` features and `units` units, whatever the path
    /// (training or inference, dropout, thread count, weights packed ahead or not): for memory
    /// budgets. Saturates at `usize::MAX`.
    ///
    /// ```
    /// use grucell::engine::workspace::GruWorkspace;
    /// // L: (64, 50, 512, 512), at most about 34 MB of f32 scratch.
    /// let n = GruWorkspace::<f32>::required_len(64, 50, 512, 512);
    /// assert_eq!(n, 8_522_784);
    /// ```
    pub fn required_len(batch: usize, time: usize, input_dim: usize, units: usize) -> usize {
        let nr = super::packed::NR;
        let padded = units.div_ceil(nr).saturating_mul(3 * nr);
        let rows = batch.saturating_mul(time);
        [
            // xp: every step's input projections.
            rows.saturating_mul(3).saturating_mul(units),
            // hu: one step's recurrent projections.
            batch.saturating_mul(3).saturating_mul(units),
            // h, tmp, h2; hs.
            batch.saturating_mul(units).saturating_mul(6),
            // xm: masked or packed inputs.
            rows.saturating_mul(input_dim),
            // packed U and W: each panel one row deeper than `k`, and each packing one
            // cache line longer (its panels start on a line, `PackedRhs::panels`).
            units
                .saturating_add(input_dim)
                .saturating_add(2)
                .saturating_mul(padded)
                .saturating_add(2 * nr),
            // pscratch: panel-major product rows or a fused step's gate tiles.
            batch.saturating_mul(padded.max(6 * nr)),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// Grows every buffer to fit `(batch, time, units)`.
    pub fn reserve(&mut self, batch: usize, time: usize, units: usize) {
        grow(&mut self.xp, time * batch * 3 * units);
        grow(&mut self.hu, batch * 3 * units);
        grow(&mut self.h, batch * units);
        grow(&mut self.tmp, batch * units);
        grow(&mut self.h2, batch * units);
    }

    /// Elements currently held (capacity in use), those of the parts' workspaces of calls split
    /// by batch rows included.
    pub fn len(&self) -> usize {
        self.xp.len()
            + self.hu.len()
            + self.h.len()
            + self.tmp.len()
            + self.h2.len()
            + self.xm.len()
            + self.hs.len()
            + self.packed.len()
            + self.wpacked.len()
            + self.pscratch.len()
            + self.parts.iter().map(GruWorkspace::len).sum::<usize>()
    }

    /// True when nothing has been allocated yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::GruWorkspace;
    use crate::engine::gru::{gru_sequence, DropoutMasks, GruParams, GruTrace};
    use crate::engine::gru::{SequenceOptions, SequenceOutputs};
    use crate::engine::prepacked::PackedWeights;
    use crate::layers::activation::Activation;

    /// Every path a sequence can take (batch 1 and larger, short and wide inputs, fused and
    /// unfused, team, split by batch rows, dropout, pre-packed weights) stays within
    /// `required_len`.
    #[test]
    fn required_len_bounds_every_path() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [
            (1, 7, 5, 20),
            (3, 6, 40, 33),
            (64, 5, 300, 64),
            (16, 6, 300, 256),
            (12, 5, 20, 300),
            (70, 4, 8, 17),
        ];
        for (b, t, d, u) in shapes {
            let g = 3 * u;
            let kernel: Vec<f32> = (0..d * g).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
            let rec: Vec<f32> = (0..u * g).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
            let bias: Vec<f32> = vec![0.1; g];
            let x: Vec<f32> = (0..b * t * d).map(|i| (i as f32 * 0.07).sin()).collect();
            let mx: Vec<f32> = vec![1.25; b * d];
            let mh: Vec<f32> = vec![0.5; b * u];
            let bound = GruWorkspace::<f32>::required_len(b, t, d, u);
            for reset_after in [true, false] {
                let p = GruParams {
                    kernel: &kernel,
                    recurrent: &rec,
                    xp_bias: Some(&bias),
                    hh_bias: Some(&bias[..u]),
                    input_dim: d,
                    units: u,
                    reset_after,
                    activation: Activation::Tanh,
                    recurrent_activation: Activation::Sigmoid,
                    packed: None,
                };
                let pw = PackedWeights::new(&p, 2).unwrap();
                for (threads, train, drop, prepack) in [
                    (1, false, false, false),
                    (2, false, false, false),
                    (2, false, false, true),
                    (1, true, false, false),
                    (2, true, false, false),
                    (2, true, true, false),
                    (1, false, true, true),
                ] {
                    let p = GruParams {
                        packed: prepack.then_some(&pw),
                        ..p
                    };
                    let dropout = if drop {
                        DropoutMasks {
                            input: Some([&mx[..], &mx[..], &mx[..]]),
                            recurrent: Some([&mh[..], &mh[..], &mh[..]]),
                        }
                    } else {
                        DropoutMasks::default()
                    };
                    let opts = SequenceOptions {
                        mask: None,
                        go_backwards: false,
                        zero_output_for_mask: false,
                        threads,
                    };
                    let (mut seq, mut last, mut state) =
                        (vec![0f32; b * t * u], vec![0f32; b * u], vec![0f32; b * u]);
                    let mut ws = GruWorkspace::new();
                    let mut trace = GruTrace::default();
                    pool.install(|| {
                        gru_sequence(
                            &p,
                            &x,
                            b,
                            t,
                            None,
                            opts,
                            dropout,
                            SequenceOutputs {
                                sequence: Some(&mut seq),
                                last_output: &mut last,
                                state: &mut state,
                            },
                            &mut ws,
                            train.then_some(&mut trace),
                        )
                    });
                    assert!(
                        ws.len() <= bound,
                        "({b}, {t}, {d}, {u}) reset_after={reset_after} threads={threads} \
                         train={train} dropout={drop} prepack={prepack}: {} > {bound}",
                        ws.len()
                    );
                    assert!(!ws.is_empty());
                }
            }
        }
    }

    #[test]
    fn required_len_saturates() {
        assert_eq!(
            GruWorkspace::<f32>::required_len(usize::MAX, 2, 3, 4),
            usize::MAX
        );
    }
}
