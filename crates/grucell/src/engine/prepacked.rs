//! Weights packed once and reused by many calls, as ONNX Runtime and oneDNN pre-pack theirs when
//! a session or primitive is created: the per-call packing of `U` (12 MiB at 1024 units, a few
//! ms) and of a short-input `W` then leaves the call.

use super::gemm::Operand;
use super::gru::{GruParams, PROJECT_OWN_MAX_K};
use super::packed::PackedRhs;
use super::projection;
use crate::error::ShapeError;
use crate::float::Float;

/// The recurrent kernel `U` `(u, 3u)` and the input kernel `W` `(D, 3u)` of one GRU cell, packed
/// into the 16-column panels the engine's kernels read, each gate block (z, r, h) its own
/// segment. `W` is packed for inputs of at most 256 features, and for wider inputs where
/// [`super::projection`] may read it (`f32` on CPUs with the AVX-512 or AVX2 kernels, for calls
/// of up to 512 rows, and inside fused steps); elsewhere wide inputs are projected by the GEMM
/// crate, which reads `W` in place, and packing it would only cost memory.
///
/// Pass it in [`GruParams::packed`]. It must have been made from the **same** weights as the
/// params it travels with: the engine reads `U` (and a packed `W`) from here instead of from
/// the slices. Rebuild it whenever the weights change ([`crate::layers::gru_cell::GruCell`]
/// does this itself). Results are bit-identical with and without it (only the packing moves out
/// of the call), except for the wide-input projections that [`super::projection`] takes over:
/// their sums are formed in another order than the GEMM crate's (round-off only).
///
/// ```
/// use grucell::engine::gru::GruParams;
/// use grucell::engine::prepacked::PackedWeights;
/// use grucell::layers::activation::Activation;
///
/// let (d, u) = (3, 4);
/// let kernel = vec![0.1f32; d * 3 * u];
/// let recurrent = vec![0.2f32; u * 3 * u];
/// let mut p = GruParams {
///     kernel: &kernel,
///     recurrent: &recurrent,
///     xp_bias: None,
///     hh_bias: None,
///     input_dim: d,
///     units: u,
///     reset_after: true,
///     activation: Activation::Tanh,
///     recurrent_activation: Activation::Sigmoid,
///     packed: None,
/// };
/// let packed = PackedWeights::new(&p, 1)?;
/// p.packed = Some(&packed);
/// assert_eq!(packed.units(), 4);
/// # Ok::<(), grucell::error::ShapeError>(())
/// ```
#[derive(Clone)]
pub struct PackedWeights<T> {
    recurrent: PackedRhs<T>,
    kernel: Option<PackedRhs<T>>,
    input_dim: usize,
    units: usize,
}

impl<T: Float> PackedWeights<T> {
    /// Packs `p.recurrent` and (inputs of at most 256 features) `p.kernel`, splitting the copy
    /// between up to `threads` threads for large weights. Fails when a slice is shorter than the
    /// dimensions say.
    pub fn new(p: &GruParams<'_, T>, threads: usize) -> Result<Self, ShapeError> {
        let (d, u) = (p.input_dim, p.units);
        let g = u.saturating_mul(3);
        for (name, have, rows) in [
            ("kernel", p.kernel.len(), d),
            ("recurrent_kernel", p.recurrent.len(), u),
        ] {
            // Saturating: dimensions whose product overflows are simply too large for the slice.
            let need = rows.saturating_mul(g);
            if have < need {
                return Err(ShapeError::mismatch(
                    name,
                    &[have],
                    format!("{need} values ({rows} × {g})"),
                ));
            }
        }
        let mut recurrent = PackedRhs::new();
        recurrent.pack_with_threads(Operand::new(p.recurrent, g), u, u, 3, threads);
        let kernel = (d <= PROJECT_OWN_MAX_K || projection::available::<T>()).then(|| {
            let mut kernel = PackedRhs::new();
            kernel.pack_with_threads(Operand::new(p.kernel, g), d, u, 3, threads);
            kernel
        });
        Ok(PackedWeights {
            recurrent,
            kernel,
            input_dim: d,
            units: u,
        })
    }

    /// Units `u`.
    pub fn units(&self) -> usize {
        self.units
    }

    /// Input features `D`.
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// Elements held (the packings, padding included).
    pub fn len(&self) -> usize {
        self.recurrent.len() + self.kernel.as_ref().map_or(0, PackedRhs::len)
    }

    /// True when both weights are empty (zero units).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this packing has the dimensions of `p` (a guard against mixing up cells; it
    /// cannot see whether the values are the same).
    pub(crate) fn fits(&self, input_dim: usize, units: usize) -> bool {
        self.input_dim == input_dim && self.units == units
    }

    /// Packed `U`: `u` rows, segments z, r, h of `u` columns.
    pub(crate) fn recurrent(&self) -> &PackedRhs<T> {
        &self.recurrent
    }

    /// Packed `W` (inputs of at most 256 features): `D` rows, segments z, r, h of `u` columns.
    pub(crate) fn kernel(&self) -> Option<&PackedRhs<T>> {
        self.kernel.as_ref()
    }
}

/// Shapes only: the packed data is megabytes of numbers.
impl<T> std::fmt::Debug for PackedWeights<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights")
            .field("input_dim", &self.input_dim)
            .field("units", &self.units)
            .finish_non_exhaustive()
    }
}
