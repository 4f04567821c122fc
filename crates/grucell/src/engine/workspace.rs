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
    /// Masked input copy `(B·T, D)` (training with input dropout only).
    pub(crate) xm: Vec<T>,
    /// Masked states `(3, B, u)` (training with recurrent dropout only).
    pub(crate) hs: Vec<T>,
    /// The recurrent kernel packed for the time loop (`u × 3u`, padded to whole panels).
    pub(crate) packed: PackedRhs<T>,
    /// The input kernel packed for projections inside the steps (`D × 3u`, short inputs only).
    pub(crate) wpacked: PackedRhs<T>,
    /// Panel-major scratch of a recurrent product split between threads `(B, 3u)` padded.
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

    /// Number of elements the workspace needs for a problem of this size (for memory budgets).
    pub fn required_len(batch: usize, time: usize, units: usize) -> usize {
        let padded = 3 * units.div_ceil(super::packed::NR) * super::packed::NR;
        time * batch * 3 * units + batch * 3 * units + 3 * batch * units + (units + batch) * padded
    }

    /// Grows every buffer to fit `(batch, time, units)`.
    pub fn reserve(&mut self, batch: usize, time: usize, units: usize) {
        grow(&mut self.xp, time * batch * 3 * units);
        grow(&mut self.hu, batch * 3 * units);
        grow(&mut self.h, batch * units);
        grow(&mut self.tmp, batch * units);
        grow(&mut self.h2, batch * units);
    }

    /// Elements currently held (capacity in use).
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
    }

    /// True when nothing has been allocated yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
