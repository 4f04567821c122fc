//! The GRU kernels: a whole sequence (inference or training forward) and single steps.
//!
//! Shape of the computation (see ARCHITECTURE.md and `docs/engine.md`):
//! 1. one GEMM projects the inputs of every time step, `XP = X · W + b` (`(B·T) × 3u`), with the
//!    recurrent z/r biases pre-summed into it;
//! 2. per step one GEMM `h · U` into a preallocated `(B, 3u)` buffer (`reset_after = false` needs a
//!    second, `(r ⊙ h) · U_h`, after the gates);
//! 3. one fused pass per batch row computes the gates and the new state, applies the mask and
//!    writes the outputs.
//!
//! Rows of `XP` and of the training trace are indexed `b·T + t` with `t` the *input* time index,
//! so the weight/input gradients after the loop are single GEMMs against `X` as given.

use super::gemm::{gemm, Operand};
use super::math::vectorized;
use super::packed::{Lhs, Par, Rhs};
use super::prepacked::PackedWeights;
use super::projection::{preferred, project};
use super::team::{fused_step_alone, StepAt, StepCtx, StepInputs, Team};
use super::workspace::{grow, GruWorkspace};
use crate::float::Float;
use crate::layers::activation::Activation;
use rayon::prelude::*;

/// Borrowed GRU weights in Keras layout, free of Keras vocabulary otherwise.
#[derive(Clone, Copy, Debug)]
pub struct GruParams<'a, T> {
    /// `(input_dim, 3u)`, gate blocks z, r, h.
    pub kernel: &'a [T],
    /// `(u, 3u)`.
    pub recurrent: &'a [T],
    /// Bias added to the input projection `(3u)`: Keras' input bias, plus (reset_after) the
    /// recurrent z and r biases, pre-summed once by the layer. `None` = no bias.
    pub xp_bias: Option<&'a [T]>,
    /// Recurrent candidate bias `b_rh` `(u)` (reset_after only: it sits inside `r ⊙ (…)`).
    pub hh_bias: Option<&'a [T]>,
    /// Input feature count.
    pub input_dim: usize,
    /// Units `u`.
    pub units: usize,
    /// Keras `reset_after`.
    pub reset_after: bool,
    /// Candidate activation φ.
    pub activation: Activation,
    /// Gate activation σ.
    pub recurrent_activation: Activation,
    /// `W` and `U` packed ahead of the call (made from these same weights), or `None` to pack
    /// inside the call where packing pays off. Results are identical either way.
    pub packed: Option<&'a PackedWeights<T>>,
}

/// How a sequence is walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct SequenceOptions<'a> {
    /// `(B, T)` in input time order; `false` = masked step.
    pub mask: Option<&'a [bool]>,
    /// Walk time backwards; the output sequence stays in processing order (as Keras).
    pub go_backwards: bool,
    /// Masked steps output zeros instead of the previous output.
    pub zero_output_for_mask: bool,
    /// Threads the GEMMs may use.
    pub threads: usize,
}

/// Training-time dropout masks (values 0 or 1/(1−rate)), per sample and reused at every step,
/// as Keras draws them. Gate order z, r, h; pass the same slice three times for Keras'
/// single shared input mask (`recurrent_dropout == 0`).
#[derive(Clone, Copy, Debug, Default)]
pub struct DropoutMasks<'a, T> {
    /// Input masks `(B, D)` for the z, r and h projections.
    pub input: Option<[&'a [T]; 3]>,
    /// Recurrent masks `(B, u)` for the z, r and h recurrent products.
    pub recurrent: Option<[&'a [T]; 3]>,
}

/// Where a sequence's results go. All buffers are caller-owned.
#[derive(Debug)]
pub struct SequenceOutputs<'a, T> {
    /// `(B, T, u)` output at each processing step, or `None` when only the last is needed.
    pub sequence: Option<&'a mut [T]>,
    /// `(B, u)` output of the final step.
    pub last_output: &'a mut [T],
    /// `(B, u)` final state.
    pub state: &'a mut [T],
}

/// What the training forward keeps for the backward pass. Rows are indexed `b·T + t`
/// (`t` = input time index).
#[derive(Debug, Default, Clone)]
pub struct GruTrace<T> {
    /// Post-activation gates `(B·T, 3u)`: z, r, ĥ.
    pub gates: Vec<T>,
    /// Pre-activation gates `(B·T, 3u)`, kept only when an activation's derivative needs them.
    pub pre: Vec<T>,
    /// `(B·T, u)`: `h·U_h + b_rh` (reset_after) or `r ⊙ h_prev` (reset_after = false).
    pub hn: Vec<T>,
    /// State before each step `(B·T, u)`.
    pub h_prev: Vec<T>,
    /// Whether `pre` is filled.
    pub has_pre: bool,
    /// Kept between backward passes so that they allocate nothing new: `Uᵀ` packed for the
    /// reverse loop, the row-major copy of a chunk of a transposed weight-gradient operand, and
    /// each batch row's bias-gradient sums `(B, 4u)`.
    pub(crate) packed_t: super::packed::PackedRhs<T>,
    pub(crate) transposed: Vec<T>,
    pub(crate) bias_rows: Vec<T>,
}

impl<T: Float> GruTrace<T> {
    fn prepare(&mut self, rows: usize, units: usize, keep_pre: bool) {
        grow(&mut self.gates, rows * 3 * units);
        grow(&mut self.hn, rows * units);
        grow(&mut self.h_prev, rows * units);
        self.has_pre = keep_pre;
        if keep_pre {
            grow(&mut self.pre, rows * 3 * units);
        }
    }

    /// The first `rows` rows of every buffer (after [`GruTrace::prepare`]).
    pub(crate) fn rows(&mut self, rows: usize, units: usize) -> TraceRows<'_, T> {
        let g = 3 * units;
        TraceRows {
            gates: &mut self.gates[..rows * g],
            pre: if self.has_pre {
                &mut self.pre[..rows * g]
            } else {
                &mut []
            },
            hn: &mut self.hn[..rows * units],
            h_prev: &mut self.h_prev[..rows * units],
            has_pre: self.has_pre,
        }
    }
}

/// Rows of a [`GruTrace`] (same layout, rows `b·T + t` counted from the view's first batch row),
/// so that batch parts can write their own rows at the same time.
#[derive(Debug)]
pub(crate) struct TraceRows<'a, T> {
    pub gates: &'a mut [T],
    pub pre: &'a mut [T],
    pub hn: &'a mut [T],
    pub h_prev: &'a mut [T],
    pub has_pre: bool,
}

impl<'a, T> TraceRows<'a, T> {
    /// The first `rows` trace rows (a multiple of `T`: whole batch rows), leaving the others in
    /// `self`.
    pub(crate) fn take_front(&mut self, rows: usize, units: usize) -> TraceRows<'a, T> {
        let g = 3 * units;
        TraceRows {
            gates: take_front(&mut self.gates, rows * g),
            pre: take_front(&mut self.pre, if self.has_pre { rows * g } else { 0 }),
            hn: take_front(&mut self.hn, rows * units),
            h_prev: take_front(&mut self.h_prev, rows * units),
            has_pre: self.has_pre,
        }
    }
}

/// The first `n` values of `*rest`, leaving the others in `*rest`: how a sequence split by batch
/// rows hands each part its rows of a caller's buffer.
pub(crate) fn take_front<'a, T>(rest: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let (head, tail) = std::mem::take(rest).split_at_mut(n);
    *rest = tail;
    head
}

/// Activations whose derivative the backward pass computes from the output alone.
pub(crate) fn y_only_derivative(a: Activation) -> bool {
    matches!(
        a,
        Activation::Sigmoid | Activation::Tanh | Activation::Linear
    )
}

/// Applies an activation to one contiguous gate block with a tight loop for the common cases.
#[inline]
pub(crate) fn activate<T: Float>(a: Activation, v: &mut [T]) {
    match a {
        Activation::Sigmoid => super::math::sigmoid_slice(v),
        Activation::Tanh => super::math::tanh_slice(v),
        Activation::Linear => {}
        _ => a.apply_row(v),
    }
}

/// Input widths up to which [`project_inputs`] uses the packed kernel instead of the GEMM crate.
pub(crate) const PROJECT_OWN_MAX_K: usize = 256;

/// Fewest batch rows for which [`projects_in_step`] takes inputs wider than
/// [`PROJECT_OWN_MAX_K`] into the steps. Each step then reads `W` as well as `U`, which pays
/// where enough rows share each value read. Measured on an AVX-512 Xeon (2 MiB L2 per core),
/// 2 threads, forward (B, T, D, u), medians in one process, against projecting all steps
/// first with the GEMM crate: (64, 50, 512, 512) −4 %, (128, 25, 512, 512) −4 %, (64, 50,
/// 384, 384) −4 %, (64, 50, 512, 1024) −5 %, (64, 50, 1024, 512) ±0; (32, 50, 512, 512) ±0 to
/// −13 % (noisy); (16, 50, 512, 512) +7 %, (16, 25, 1024, 1024) +10 %, (8, 50, 512, 256) +30 %.
const IN_STEP_MIN_BATCH: usize = 64;

/// Fewest input elements for which a sequence's inputs are packed for its steps by rayon
/// threads (L's 1.6 M take ~0.3 ms on one thread).
const PACK_PAR_MIN: usize = 1 << 18;

/// Whether a fused inference call (see `StepCtx`: no trace, no dropout, `reset_after`,
/// element-wise activations) of `batch` rows projects its inputs with the panel kernels step by
/// step, inside the fused steps (`StepInputs::Raw`: no `(B·T, 3u)` buffer written and read
/// back, `x_t` packed for the group kernel where the kernels read packed operands): inputs of
/// at most `PROJECT_OWN_MAX_K` (256) features always (a call without a team (`engine::team`)
/// projects those before the loop, with the same sums); wider ones with `f32` on AVX-512 and
/// AVX2 CPUs (see [`super::projection::available`]) from `IN_STEP_MIN_BATCH` (64) rows, in the
/// steps whatever the thread count (without a team, fused steps on the calling thread; one
/// thread, L forward: 76.6 against 78.7 ms with the GEMM crate's projection). `batch` is the
/// whole call's, also for each part of a call split by batch rows (`batch_parts`): the
/// thread count plays no part, so results do not depend on it. Other
/// calls project wide inputs with the GEMM crate (or [`super::projection::project`], see
/// [`preferred`]).
pub fn projects_in_step<T: Float>(batch: usize, input_dim: usize) -> bool {
    input_dim <= PROJECT_OWN_MAX_K
        || (super::projection::available::<T>() && batch >= IN_STEP_MIN_BATCH)
}

/// Rows per block of the packed-kernel projection: a block's outputs (`48 × 3u`) stay in L2
/// while its panels are computed and its bias added, so `XP` is written to memory once.
const PROJECT_MC: usize = 48;

/// `XP[(b·T+t)] = x[b, t] · W + b_in (+ b_rec for z, r when reset_after)` for every row.
///
/// `scratch` holds a packed copy of `x` when a pre-packed wide `W` is read by
/// [`super::projection::project`] (see [`super::projection::preferred`]).
pub fn project_inputs<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    rows: usize,
    xp: &mut [T],
    scratch: &mut Vec<T>,
    threads: usize,
) {
    let own = preferred::<T>(rows);
    project_rows(p, x, rows, own, xp, scratch, threads);
}

/// [`project_inputs`], with the choice of [`super::projection::project`] for wide inputs made by
/// the caller (`own`): a sequence split into parts by batch rows makes it once for the whole
/// call, so that the parts sum exactly as the whole would.
pub(crate) fn project_rows<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    rows: usize,
    own: bool,
    xp: &mut [T],
    scratch: &mut Vec<T>,
    threads: usize,
) {
    let g = 3 * p.units;
    let d = p.input_dim;
    let xp = &mut xp[..rows * g];
    let add_bias = |block: &mut [T]| {
        if let Some(bias) = p.xp_bias {
            add_bias_rows(bias, block, g);
        }
    };
    if rows <= 2 {
        // Streaming and single steps: the batch-1 strips have no call overhead. One row reads
        // a pre-packed `W` when there is one (sequential panels instead of rows a stride apart;
        // the same sums).
        match prepacked_kernel(p) {
            Some(pk) if rows == 1 => {
                Rhs::Packed(pk).matmul(1, x, d, 0..d, 0..3, xp, g, false, 1, &mut Vec::new())
            }
            _ => {
                let w = Rhs::Plain {
                    data: p.kernel,
                    ld: g,
                    seg: g,
                };
                w.matmul(rows, x, d, 0..d, 0..1, xp, g, false, 1, &mut Vec::new());
            }
        }
        add_bias(xp);
    } else if d <= PROJECT_OWN_MAX_K {
        // Short inputs: the packed kernel (the GEMM crate's packing is most of the work when k
        // is this small), in blocks of rows shared out between threads, each block's bias added
        // while it is still in cache.
        let mut own = super::packed::PackedRhs::new();
        let w = Rhs::Packed(match prepacked_kernel(p) {
            Some(pk) => pk,
            None => {
                own.pack(Operand::new(p.kernel, g), d, p.units, 3);
                &own
            }
        });
        let job = |(i, out): (usize, &mut [T])| {
            let m = out.len() / g;
            let xs = &x[i * PROJECT_MC * d..];
            w.matmul(m, xs, d, 0..d, 0..3, out, g, false, 1, &mut Vec::new());
            add_bias(out);
        };
        // A small projection stays on the calling thread: waking a sleeping rayon worker costs
        // more than it saves (S, 100 × 32 · 32 × 192: median call 0.11–0.16 ms with the split,
        // 0.10 without).
        if threads > 1 && rows.saturating_mul(d).saturating_mul(g) >= super::packed::PAR_MIN_WORK {
            xp.par_chunks_mut(PROJECT_MC * g).enumerate().for_each(job);
        } else {
            xp.chunks_mut(PROJECT_MC * g).enumerate().for_each(job);
        }
    } else if let Some(pk) = prepacked_kernel(p).filter(|_| own) {
        // Few rows: `W` packed once beats the GEMM crate's copy of it in every call.
        project(pk, rows, x, d, xp, g, p.xp_bias, scratch, threads);
    } else {
        gemm(
            rows,
            g,
            d,
            T::one(),
            Operand::new(x, d),
            Operand::new(p.kernel, g),
            false,
            xp,
            g,
            threads,
        );
        add_bias(xp);
    }
}

/// The caller's pre-packed weights, when they have `p`'s dimensions.
fn prepacked<'a, T: Float>(p: &GruParams<'a, T>) -> Option<&'a PackedWeights<T>> {
    p.packed.filter(|pw| pw.fits(p.input_dim, p.units))
}

/// The caller's pre-packed `W` (segments z, r, h), when there is one for `p`.
fn prepacked_kernel<'a, T: Float>(p: &GruParams<'a, T>) -> Option<&'a super::packed::PackedRhs<T>> {
    prepacked(p).and_then(PackedWeights::kernel)
}

/// Whether a sequence of this size reads `U` packed (the time loop's panel kernel, or at batch 1
/// strips over sequential panels; see [`recurrent_rhs`]): batches of 2 or more from 4 steps;
/// batch 1 (a training forward, or a call without [`PackedWeights`]) from
/// [`BATCH_ONE_PACK_MIN_STEPS`], or from 4 steps where `u` is a multiple of 1024.
pub(crate) fn packs_recurrent(batch: usize, time: usize, units: usize) -> bool {
    match batch {
        0 => false,
        1 => time >= BATCH_ONE_PACK_MIN_STEPS || (time >= 4 && units.is_multiple_of(1024)),
        _ => time >= 4,
    }
}

/// Fewest steps from which a batch-1 sequence packs `U`. In place, its strips take 256 bytes
/// from each row of `U`, rows `3u` apart; packed, they read whole panels in order, with the
/// same sums, a few per cent faster a step, after a copy of `U` that costs several steps.
/// Where `u` is a multiple of 1024 the rows are a multiple of 12 KiB apart and share cache sets,
/// and the strips in place run at half speed or less. `grucell bench`, training, `(1, T, 64,
/// u)`, 2 threads, Zen 4, in place → packed: T = 8: u = 384 0.89 → 0.95 ms, 768 3.8 → 4.3, 1024
/// 11.0 → 6.7; T = 50: u = 384 3.2 → 3.0, 768 13.6 → 12.2, 896 18.0 → 14.9, 1023 26.9 → 21.7,
/// 1024 52.5 → 20.2.
const BATCH_ONE_PACK_MIN_STEPS: usize = 32;

/// Rows from which a single step ([`gru_step`]) reads a pre-packed `U` (the panel kernel; fewer
/// rows take the in-place strips).
pub(crate) const STEP_PACKED_MIN_ROWS: usize = 3;

/// Like [`project_inputs`] with per-gate input dropout masks `(B, D)` reused over the `time`
/// steps: `XP[:, g] = (X ⊙ m_g) · W_g + b`. Identical masks take a single GEMM.
#[allow(clippy::too_many_arguments)]
pub fn project_inputs_masked<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    batch: usize,
    time: usize,
    masks: [&[T]; 3],
    xp: &mut [T],
    scratch: &mut Vec<T>,
    threads: usize,
) {
    let (d, u) = (p.input_dim, p.units);
    let g = 3 * u;
    let rows = batch * time;
    let shared = std::ptr::eq(masks[0], masks[1]) && std::ptr::eq(masks[1], masks[2]);
    grow(scratch, rows * d);
    let blocks: &[usize] = if shared { &[0] } else { &[0, 1, 2] };
    for &gate in blocks {
        mask_rows(x, batch, time, d, masks[gate], &mut scratch[..rows * d]);
        let (cols, off) = if shared { (g, 0) } else { (u, gate * u) };
        gemm(
            rows,
            cols,
            d,
            T::one(),
            Operand::new(&scratch[..rows * d], d),
            Operand::new(&p.kernel[off..], g),
            false,
            &mut xp[off..],
            g,
            threads,
        );
    }
    if let Some(bias) = p.xp_bias {
        add_bias_rows(bias, &mut xp[..rows * g], g);
    }
}

/// `block[r·stride + j] += bias[j]` for every row `r` and `j < bias.len()` (the last row may end
/// right after its `bias.len()` values): the projection's bias, added in one place for every
/// projection path (so all of them round alike).
pub(crate) fn add_bias_rows<T: Float>(bias: &[T], block: &mut [T], stride: usize) {
    for row in block.chunks_mut(stride) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += *b;
        }
    }
}

/// `out[b, t, :] = x[b, t, :] ⊙ m[b, :]`.
pub(crate) fn mask_rows<T: Float>(
    x: &[T],
    batch: usize,
    time: usize,
    d: usize,
    m: &[T],
    out: &mut [T],
) {
    for b in 0..batch {
        let mb = &m[b * d..(b + 1) * d];
        for t in 0..time {
            let o = (b * time + t) * d;
            for ((y, xv), mv) in out[o..o + d].iter_mut().zip(&x[o..o + d]).zip(mb) {
                *y = *xv * *mv;
            }
        }
    }
}

/// `HU[:, gates] = h · U[:, gates]`, or per gate `(h ⊙ s_g) · U_g` with recurrent dropout masks.
#[allow(clippy::too_many_arguments)]
fn recurrent_product<T: Float>(
    p: &GruParams<T>,
    rhs: Rhs<'_, T>,
    batch: usize,
    gates: usize,
    h: &[T],
    hu: &mut [T],
    rec: Option<[&[T]; 3]>,
    hs: &mut [T],
    par: Par<'_, T>,
    scratch: &mut Vec<T>,
) {
    let u = p.units;
    let g = 3 * u;
    match rec {
        None => rhs.product(par, batch, h, u, 0..u, 0..gates, hu, g, false, scratch),
        Some(s) => {
            for gate in 0..gates {
                let hsg = &mut hs[gate * batch * u..(gate + 1) * batch * u];
                for ((o, hv), sv) in hsg.iter_mut().zip(&h[..batch * u]).zip(s[gate]) {
                    *o = *hv * *sv;
                }
                rhs.product(
                    par,
                    batch,
                    hsg,
                    u,
                    0..u,
                    gate..gate + 1,
                    hu,
                    g,
                    false,
                    scratch,
                );
            }
        }
    }
}

/// Fewest multiply-adds in a step's products for which its time loop gets a [`Team`] (from 4
/// batch rows).
///
/// It was 2^20, and smaller steps ran on one thread (the rayon split of a product,
/// [`super::packed::PAR_MIN_WORK`], also starts at 2^20). `grucell bench --threads 2`, AMD EPYC
/// Zen 4 VM, four alternations, forward / training ms, alone → team: (4, 100, 32, 256)
/// 1.84–1.90 → 1.44–1.66 / 5.36–6.75 → 4.76–5.90, (6, 50, 64, 200) 1.66–1.78 → 1.52–1.59 /
/// 4.10–4.72 → 3.70–3.97 (one run 6.18), (4, 50, 32, 220) 1.25–1.27 → 1.12–1.15 / 3.11–3.15 →
/// 2.98–3.09, (8, 50, 32, 150) −2 % / −7 %, (7, 50, 64, 160) −1 % / −3 %. Below 2^19 the team
/// was as often slower: (4, 50, 32, 160) −3 % / +5 %, (5, 50, 32, 150) +4 % / +4 %,
/// (12, 50, 32, 100) −7 % / −10 %. Batches of 2 and 3 keep to one thread below 2^20: the team
/// gave (2, 100, 32, 256) 0.95 against 1.22 ms in a quiet minute, but its spinning helper
/// depends on the other core's being free, and over five alternations in a busier one it took
/// 0.95–1.88 ms (median 1.47) against 1.22–1.60 (1.31), training 3.0–6.5 against 3.6–5.5.
pub(crate) const TEAM_MIN_WORK: usize = 1 << 19;

/// Whether a sequence's time loop gets a [`Team`]: two or more threads, enough steps to pay for
/// starting the helpers, 4 or more batch rows, and a per-step product worth splitting
/// ([`TEAM_MIN_WORK`]). Never more team members than the machine has hardware threads: a
/// spinning helper without a core of its own would stall every step.
pub(crate) fn use_team(threads: usize, batch: usize, time: usize, units: usize) -> bool {
    let work = units
        .saturating_mul(units)
        .saturating_mul(3)
        .saturating_mul(batch);
    threads >= 2 && time >= 4 && batch >= 4 && work >= TEAM_MIN_WORK && team_size(threads) >= 2
}

/// `threads`, capped at the hardware threads available to the process (asked once: the query
/// reads cgroup files and costs more than a whole batch-1 step).
pub(crate) fn team_size(threads: usize) -> usize {
    static HW: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let hw = *HW.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    threads.min(hw)
}

/// The recurrent kernel as the time loop reads it: packed once when the sequence is long enough
/// for the copy to pay off ([`packs_recurrent`]), else in place.
pub(crate) fn recurrent_rhs<'a, T: Float>(
    p: &GruParams<'a, T>,
    batch: usize,
    time: usize,
    threads: usize,
    packed: &'a mut super::packed::PackedRhs<T>,
) -> Rhs<'a, T> {
    let u = p.units;
    let prepacked = prepacked(p);
    if packs_recurrent(batch, time, u) || (batch == 1 && prepacked.is_some()) {
        // Batch 1 reads a pre-packed `U` with the same strips as in place (same sums).
        if let Some(pw) = prepacked {
            return Rhs::Packed(pw.recurrent());
        }
        packed.pack_with_threads(Operand::new(p.recurrent, 3 * u), u, u, 3, threads);
        Rhs::Packed(packed)
    } else {
        Rhs::Plain {
            data: p.recurrent,
            ld: 3 * u,
            seg: u,
        }
    }
}

/// Whether `U` as `rhs` reads it is known to be finite (checked when packed; read in place, when
/// the caller's pre-packed copy is), so that `0 · U` is exactly zero.
fn known_finite<T: Float>(p: &GruParams<T>, rhs: Rhs<'_, T>) -> bool {
    match rhs {
        Rhs::Packed(pk) => pk.is_finite(),
        Rhs::Plain { .. } => prepacked(p).is_some_and(|pw| pw.recurrent().is_finite()),
    }
}

/// Where a step's trace rows go: the trace and a map from batch row to trace row.
type Keep<'a, 'b, T> = Option<(&'a mut TraceRows<'b, T>, &'a dyn Fn(usize) -> usize)>;

/// One recurrent step for every batch row, given the rows' input projections.
///
/// `xp_row(b)` gives the offset of row `b`'s projection in `xp`. `h` is the state `(B, u)` and is
/// left untouched; the candidate new state goes to `h_new`. `hu` is `(B, 3u)` scratch, `tmp`
/// `(B, u)` scratch. `zero_state` says that `h` is all zeros and `U` finite: the products are then
/// exactly zero and skipped. When `keep` is given, gates (post and optionally pre-activation) and `hn` of
/// row `b` are written at `keep.row(b)`.
#[allow(clippy::too_many_arguments)]
fn step_rows<T: Float>(
    p: &GruParams<T>,
    rhs: Rhs<'_, T>,
    batch: usize,
    xp: &[T],
    xp_row: impl Fn(usize) -> usize,
    h: &[T],
    h_new: &mut [T],
    hu: &mut [T],
    tmp: &mut [T],
    rec: Option<[&[T]; 3]>,
    hs: &mut [T],
    par: Par<'_, T>,
    scratch: &mut Vec<T>,
    zero_state: bool,
    mut keep: Keep<'_, '_, T>,
) {
    let u = p.units;
    let g = 3 * u;
    let u2 = 2 * u;
    // Inference with Keras' default activations in `f32`: each gate pass one loop, the
    // activations inlined (`engine::gates`; the same bits as the passes below).
    let lanes = keep.is_none()
        && rec.is_none()
        && matches!(
            (p.recurrent_activation, p.activation),
            (Activation::Sigmoid, Activation::Tanh)
        )
        && T::slice_f32(h).is_some();
    if lanes
        && batch == 1
        && !p.reset_after
        && !zero_state
        && u >= RESET_BEFORE_SPLIT_UNITS
        && u * u < super::packed::PAR_MIN_WORK
    {
        reset_before_one(p, rhs, &xp[xp_row(0)..], h, h_new, hu, tmp, par, scratch);
        return;
    }
    if zero_state {
        hu[..batch * g].fill(T::zero());
    } else {
        recurrent_product(
            p,
            rhs,
            batch,
            if p.reset_after { 3 } else { 2 },
            h,
            hu,
            rec,
            hs,
            par,
            scratch,
        );
    }
    if lanes {
        lane_passes(
            p, rhs, batch, xp, xp_row, h, h_new, hu, tmp, par, scratch, zero_state,
        );
        return;
    }
    // Gates z and r (and for reset_after the candidate too) row by row, vectorized as wide as
    // the kernels run.
    vectorized(
        #[inline(always)]
        || {
            for b in 0..batch {
                let x = &xp[xp_row(b)..xp_row(b) + g];
                let hr = &mut hu[b * g..(b + 1) * g];
                for (v, xv) in hr[..u2].iter_mut().zip(&x[..u2]) {
                    *v += *xv;
                }
                if let Some((tr, row)) = keep.as_mut() {
                    if tr.has_pre {
                        let o = row(b) * g;
                        tr.pre[o..o + u2].copy_from_slice(&hr[..u2]);
                    }
                }
                if p.recurrent_activation.is_elementwise() {
                    // z and r in one call: the same operations on each value.
                    activate(p.recurrent_activation, &mut hr[..u2]);
                } else {
                    activate(p.recurrent_activation, &mut hr[..u]);
                    activate(p.recurrent_activation, &mut hr[u..u2]);
                }
                let hb = &h[b * u..(b + 1) * u];
                if p.reset_after {
                    let (zr, cand) = hr.split_at_mut(u2);
                    let r = &zr[u..u2];
                    if let Some(br) = p.hh_bias {
                        for (c, bv) in cand.iter_mut().zip(br) {
                            *c += *bv;
                        }
                    }
                    if let Some((tr, row)) = keep.as_mut() {
                        let o = row(b) * u;
                        tr.hn[o..o + u].copy_from_slice(cand);
                    }
                    for ((c, rv), xv) in cand.iter_mut().zip(r).zip(&x[u2..g]) {
                        *c = *xv + *rv * *c;
                    }
                } else {
                    let tb = &mut tmp[b * u..(b + 1) * u];
                    for ((t, rv), hv) in tb.iter_mut().zip(&hr[u..u2]).zip(hb) {
                        *t = *rv * *hv;
                    }
                    if let Some(s) = rec {
                        for (t, sv) in tb.iter_mut().zip(&s[2][b * u..(b + 1) * u]) {
                            *t *= *sv;
                        }
                    }
                    if let Some((tr, row)) = keep.as_mut() {
                        let o = row(b) * u;
                        tr.hn[o..o + u].copy_from_slice(tb);
                    }
                }
            }
        },
    );
    if !p.reset_after && !zero_state {
        rhs.product(par, batch, tmp, u, 0..u, 2..3, hu, g, false, scratch);
    }
    // Candidate activation (reset_after = false: its input projection added first) and the
    // blend h' = z ⊙ h + (1 − z) ⊙ ĥ.
    vectorized(
        #[inline(always)]
        || {
            for b in 0..batch {
                let hr = &mut hu[b * g..(b + 1) * g];
                if !p.reset_after {
                    let x = &xp[xp_row(b) + u2..xp_row(b) + g];
                    for (c, xv) in hr[u2..].iter_mut().zip(x) {
                        *c += *xv;
                    }
                }
                if let Some((tr, row)) = keep.as_mut() {
                    if tr.has_pre {
                        let o = row(b) * g;
                        tr.pre[o + u2..o + g].copy_from_slice(&hr[u2..g]);
                    }
                }
                activate(p.activation, &mut hr[u2..g]);
                if let Some((tr, row)) = keep.as_mut() {
                    let o = row(b) * g;
                    tr.gates[o..o + g].copy_from_slice(hr);
                }
                let hb = &h[b * u..(b + 1) * u];
                let nb = &mut h_new[b * u..(b + 1) * u];
                let (z, rest) = hr.split_at(u);
                let cand = &rest[u..];
                for (((n, zv), hv), cv) in nb.iter_mut().zip(z).zip(hb).zip(cand) {
                    // Keras: z * h + (1 - z) * hh
                    *n = *zv * *hv + (T::one() - *zv) * *cv;
                }
            }
        },
    );
}

/// Fewest units for which a batch-1 `reset_after = false` step takes its products one segment
/// at a time ([`reset_before_one`]), up to those whose one segment would be split between
/// threads (`u² ≥ PAR_MIN_WORK`, 1024 units: three splits per step instead of two, 1–2 %
/// slower). Below, `U` (at most 27 KiB at 48 units) stays in L1 whatever the order, and the
/// extra product call costs 1–5 % (32 and 48 units). Zen 4, one process, 2-thread pool, against
/// the two-product step: 64 units (48 KiB) 0.0758–0.0774 → 0.0724–0.0727 ms, 96 −1.5 %, 128 to
/// 640 within ±1 %, 768 5.0 → 3.9 ms (its z-and-r product of 2 · 768² multiply-adds had been
/// split between two threads, slower than one at batch 1).
const RESET_BEFORE_SPLIT_UNITS: usize = 64;

std::thread_local! {
    /// Whether this thread's next batch-1 `reset_after = false` step takes its products in the
    /// order r, ĥ, z rather than z, r, ĥ (see [`reset_before_one`]).
    static RESET_BEFORE_ORDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One batch-1 `reset_after = false` inference step in `f32` with Keras' default activations:
/// its three single-segment products in alternate orders from step to step, z, r, ĥ then r,
/// ĥ, z (r must come before ĥ, whose left operand is `r ⊙ h`). Where `U` is about the size of
/// L1 (S: three 16 KiB segments against 32 KiB), the second order starts with the two segments
/// the first read last, and the first starts with the one the second read last. The order
/// changes no sum. (Other types leave the step undone: the caller checks for `f32`.)
#[allow(clippy::too_many_arguments)]
fn reset_before_one<T: Float>(
    p: &GruParams<T>,
    rhs: Rhs<'_, T>,
    x: &[T],
    h: &[T],
    h_new: &mut [T],
    hu: &mut [T],
    tmp: &mut [T],
    par: Par<'_, T>,
    scratch: &mut Vec<T>,
) {
    let (u, u2, g) = (p.units, 2 * p.units, 3 * p.units);
    let rhd = RESET_BEFORE_ORDER.with(|o| o.replace(!o.get()));
    let product = |a: &[T], seg: usize, hu: &mut [T], scratch: &mut Vec<T>| {
        rhs.product(par, 1, a, u, 0..u, seg..seg + 1, hu, g, false, scratch);
    };
    let (Some(x), Some(hb)) = (T::slice_f32(&x[..g]), T::slice_f32(&h[..u])) else {
        return;
    };
    if rhd {
        product(h, 1, hu, scratch);
        if let (Some(r), Some(t)) = (T::slice_f32_mut(&mut hu[u..u2]), T::slice_f32_mut(tmp)) {
            super::gates::reset_before_r(r, &x[u..u2], hb, &mut t[..u]);
        }
        product(tmp, 2, hu, scratch);
        product(h, 0, hu, scratch);
        if let Some(z) = T::slice_f32_mut(&mut hu[..u]) {
            super::gates::reset_before_z(z, &x[..u]);
        }
    } else {
        product(h, 0, hu, scratch);
        product(h, 1, hu, scratch);
        if let (Some(zr), Some(t)) = (T::slice_f32_mut(&mut hu[..u2]), T::slice_f32_mut(tmp)) {
            super::gates::reset_before_zr(zr, &x[..u2], hb, &mut t[..u]);
        }
        product(tmp, 2, hu, scratch);
    }
    if let (Some(g3), Some(nb)) = (T::slice_f32_mut(&mut hu[..g]), T::slice_f32_mut(h_new)) {
        super::gates::reset_before_blend(g3, &x[u2..], hb, &mut nb[..u]);
    }
}

/// [`step_rows`]' gate passes for `f32` and Keras' default activations, without a trace or
/// recurrent dropout (`engine::gates`); for `reset_after = false` the candidate's product in
/// between. (Other types leave the step undone: the caller checks for `f32`.)
#[allow(clippy::too_many_arguments)]
fn lane_passes<T: Float>(
    p: &GruParams<T>,
    rhs: Rhs<'_, T>,
    batch: usize,
    xp: &[T],
    xp_row: impl Fn(usize) -> usize,
    h: &[T],
    h_new: &mut [T],
    hu: &mut [T],
    tmp: &mut [T],
    par: Par<'_, T>,
    scratch: &mut Vec<T>,
    zero_state: bool,
) {
    let (u, u2, g) = (p.units, 2 * p.units, 3 * p.units);
    if !p.reset_after {
        for b in 0..batch {
            let x = &xp[xp_row(b)..xp_row(b) + u2];
            let (hr, hb) = (&mut hu[b * g..b * g + u2], &h[b * u..(b + 1) * u]);
            let tb = &mut tmp[b * u..(b + 1) * u];
            if let (Some(hr), Some(x), Some(hb), Some(tb)) = (
                T::slice_f32_mut(hr),
                T::slice_f32(x),
                T::slice_f32(hb),
                T::slice_f32_mut(tb),
            ) {
                super::gates::reset_before_zr(hr, x, hb, tb);
            }
        }
        if !zero_state {
            rhs.product(par, batch, tmp, u, 0..u, 2..3, hu, g, false, scratch);
        }
    }
    let bias = p.hh_bias.and_then(T::slice_f32);
    for b in 0..batch {
        let x = &xp[xp_row(b)..xp_row(b) + g];
        let (hr, hb) = (&mut hu[b * g..(b + 1) * g], &h[b * u..(b + 1) * u]);
        let nb = &mut h_new[b * u..(b + 1) * u];
        let (Some(hr), Some(x), Some(hb), Some(nb)) = (
            T::slice_f32_mut(hr),
            T::slice_f32(x),
            T::slice_f32(hb),
            T::slice_f32_mut(nb),
        ) else {
            continue;
        };
        if p.reset_after {
            let (z, rest) = hr.split_at_mut(u);
            let (r, c) = rest.split_at_mut(u);
            let xs = [&x[..u], &x[u..u2], &x[u2..]];
            super::gates::reset_after([z, r, c], xs, bias, hb, nb);
        } else {
            super::gates::reset_before_blend(hr, &x[u2..], hb, nb);
        }
    }
}

/// Runs a GRU over a whole sequence `x` `(B, T, D)`.
///
/// With `trace`, keeps what the backward pass needs. Buffers in `out` must have the documented
/// sizes; callers (the layers) validate user shapes before calling.
#[allow(clippy::too_many_arguments)]
pub fn gru_sequence<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    batch: usize,
    time: usize,
    h0: Option<&[T]>,
    opts: SequenceOptions<'_>,
    dropout: DropoutMasks<'_, T>,
    out: SequenceOutputs<'_, T>,
    ws: &mut GruWorkspace<T>,
    trace: Option<&mut GruTrace<T>>,
) {
    let u = p.units;
    let rows = batch * time;
    let trace = trace.map(|tr| {
        let keep_pre =
            !(y_only_derivative(p.activation) && y_only_derivative(p.recurrent_activation));
        tr.prepare(rows, u, keep_pre);
        tr.rows(rows, u)
    });
    let fused = fusable(p, trace.is_some(), dropout);
    let parts = batch_parts(
        opts.threads,
        batch,
        time,
        u,
        std::mem::size_of::<T>(),
        fused,
    );
    if parts > 1 {
        split_sequence(p, x, batch, time, h0, opts, dropout, out, ws, trace, parts);
    } else {
        let shared = Shared {
            recurrent: None,
            kernel: None,
            call_rows: rows,
        };
        sequence_rows(p, x, batch, time, h0, opts, dropout, out, ws, trace, shared);
    }
}

/// Whether inference steps can be fused (see `StepCtx`): no trace, element-wise activations, no
/// recurrent dropout, `reset_after = true`.
fn fusable<T: Float>(p: &GruParams<T>, training: bool, dropout: DropoutMasks<'_, T>) -> bool {
    !training
        && dropout.recurrent.is_none()
        && p.reset_after
        && p.activation.is_elementwise()
        && p.recurrent_activation.is_elementwise()
}

/// Whether a batch-1 inference call may be split by units (`engine::pair`): no trace,
/// element-wise activations, no recurrent dropout, either convention.
fn pairable<T: Float>(p: &GruParams<T>, training: bool, dropout: DropoutMasks<'_, T>) -> bool {
    !training
        && dropout.recurrent.is_none()
        && p.activation.is_elementwise()
        && p.recurrent_activation.is_elementwise()
}

/// Largest recurrent kernel (bytes) for which a sequence is split by batch rows (see
/// [`batch_parts`]): each part then reads all of `U` at every step, twice the cache traffic of
/// splitting the units, which pays only while `U` stays in the caches and each part's rows make
/// enough use of each of its lines ([`split_min_rows`]).
const SPLIT_MAX_U_BYTES: usize = 16 << 20;

/// Fewest batch rows per part of a split sequence: below this a part's products run on thin
/// register tiles.
const SPLIT_MIN_ROWS: usize = 8;

/// Largest recurrent kernel (bytes) for which parts of [`SPLIT_MIN_ROWS`] rows suffice in
/// training and unfused inference; above it they need twice as many.
const SPLIT_SMALL_U_BYTES: usize = 4 << 20;

/// Largest recurrent kernel (bytes) for which fused inference splits into parts as small as
/// training's; above it fused parts need twice as many rows as training's.
const FUSED_SPLIT_SMALL_U_BYTES: usize = 1 << 20;

/// Fewest batch rows per part for which a sequence with a recurrent kernel of `u_bytes` runs
/// faster split by batch rows than with a [`Team`] (`fused`: fused inference steps, see
/// `StepCtx`). The team shares each step's unit panels between the threads and hands `h` and
/// the new state from core to core at every step; split, each thread runs its own rows' whole
/// sequence with no handoff, but reads all of `U` at every step instead of its share, so the
/// larger `U` the more rows a part needs. Two threads, one process, binaries alternated three or
/// four times (AVX-512; AVX-512 hidden where given):
///
/// - fused inference, `U` ≤ 1 MiB, 8+ rows: M forward 4.13 → 3.33 ms (6.33 → 5.77),
///   (128, 50, 64, 128) −22 % (−10 %), (64, 50, 64, 256) −16 %, (16, 50, 64, 256) −5 % (±5 %);
/// - fused inference, `U` of 3 MiB: 16+ rows pay (L −1 to −5 %, (128, 25, 512, 512) −9 %),
///   8 do not ((16, 50, 512, 512) +2 to +4 %, +1 to +7 %);
/// - `U` of 7–12 MiB, training: 16+ rows pay ((32, 50, 256, 768) −12 %, (64, 50, 512, 1024)
///   −10 %, (128, 25, 1024, 1024) −9 %), 8 do not (XL +3 %); fused inference: 32+ rows pay
///   ((64, 50, 512, 1024) −4 %, (128, 25, 1024, 1024) −8 %), 16 do not ((32, 50, 256, 768)
///   +3 %).
fn split_min_rows(u_bytes: usize, fused: bool) -> usize {
    let rows = if u_bytes <= SPLIT_SMALL_U_BYTES {
        SPLIT_MIN_ROWS
    } else {
        2 * SPLIT_MIN_ROWS
    };
    if fused && u_bytes > FUSED_SPLIT_SMALL_U_BYTES {
        2 * rows
    } else {
        rows
    }
}

/// Into how many parts of whole batch rows a sequence is split, each part run by one thread
/// from start to end (1: not split; `fused`: fused inference steps). Batch rows are independent
/// sequences, so the parts need no step-by-step synchronisation at all and their element-wise
/// passes run in parallel too — unlike a [`Team`] (see [`split_min_rows`]). Training forward +
/// backward, 2 threads, M size: 33.0 ms against 37.6 ms with the team (dev VM, medians of six
/// alternating runs).
///
/// Fused inference is split only where the parts use every thread: with more threads than
/// parts the team, which shares each step among all of them, stays (as before fused inference
/// was split at all; the split was measured on two cores only).
pub(crate) fn batch_parts(
    threads: usize,
    batch: usize,
    time: usize,
    units: usize,
    elem: usize,
    fused: bool,
) -> usize {
    let u_bytes = 3usize
        .saturating_mul(units)
        .saturating_mul(units)
        .saturating_mul(elem);
    if threads < 2 || time < 4 || u_bytes > SPLIT_MAX_U_BYTES {
        return 1;
    }
    let all = team_size(threads);
    let parts = all.min(batch / split_min_rows(u_bytes, fused)).max(1);
    if fused && parts < all {
        1
    } else {
        parts
    }
}

/// [`gru_sequence`] over `parts` runs of whole batch rows at once, one thread each (rayon), on
/// the same packed `U` (and, where their fused steps project wide inputs, the same packed `W`).
/// Each row's arithmetic is the single-threaded path's.
#[allow(clippy::too_many_arguments)]
fn split_sequence<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    batch: usize,
    time: usize,
    h0: Option<&[T]>,
    opts: SequenceOptions<'_>,
    dropout: DropoutMasks<'_, T>,
    out: SequenceOutputs<'_, T>,
    ws: &mut GruWorkspace<T>,
    trace: Option<TraceRows<'_, T>>,
    parts: usize,
) {
    let (d, u) = (p.input_dim, p.units);
    let GruWorkspace {
        packed,
        wpacked,
        parts: sub,
        ..
    } = ws;
    let rhs = recurrent_rhs(p, batch, time, opts.threads, packed);
    // Parts run without a team, so their fused steps project wide inputs themselves
    // (`sequence_rows`' `alone`) and read a packed `W`: packed here once for all of them (each
    // part packing its own copy cost one copy of `W` per part) unless the caller packed it.
    let fused = fusable(p, trace.is_some(), dropout);
    let w = (inputs_in_steps(p, fused, dropout, batch)
        && d > PROJECT_OWN_MAX_K
        && prepacked_kernel(p).is_none())
    .then(|| {
        wpacked.pack_with_threads(Operand::new(p.kernel, 3 * u), d, u, 3, opts.threads);
        &*wpacked
    });
    if sub.len() < parts {
        sub.resize_with(parts, GruWorkspace::new);
    }
    let (mut seq, mut last, mut state, mut trace) =
        (out.sequence, out.last_output, out.state, trace);
    let mut jobs = Vec::with_capacity(parts);
    for (rows, ws) in part_rows(batch, parts).zip(sub.iter_mut()) {
        let n = rows.len();
        jobs.push((
            n,
            &x[rows.start * time * d..rows.end * time * d],
            h0.map(|h| &h[rows.start * u..rows.end * u]),
            SequenceOptions {
                mask: opts.mask.map(|m| &m[rows.start * time..rows.end * time]),
                threads: 1,
                ..opts
            },
            DropoutMasks {
                input: mask_part(dropout.input, &rows, d),
                recurrent: mask_part(dropout.recurrent, &rows, u),
            },
            SequenceOutputs {
                sequence: seq.as_mut().map(|s| take_front(s, n * time * u)),
                last_output: take_front(&mut last, n * u),
                state: take_front(&mut state, n * u),
            },
            ws,
            trace.as_mut().map(|tr| tr.take_front(n * time, u)),
        ));
    }
    let call_rows = batch * time;
    jobs.into_par_iter()
        .for_each(|(n, x, h0, opts, dropout, out, ws, trace)| {
            let shared = Shared {
                recurrent: Some(rhs),
                kernel: w,
                call_rows,
            };
            sequence_rows(p, x, n, time, h0, opts, dropout, out, ws, trace, shared);
        });
}

/// The batch rows of each of `parts` parts, in order: consecutive ranges covering `0..batch`,
/// sizes differing by at most one (the split of [`batch_parts`], forward and backward alike).
pub(crate) fn part_rows(
    batch: usize,
    parts: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..parts).map(move |i| batch * i / parts..batch * (i + 1) / parts)
}

/// Batch rows `rows` of per-gate masks `(B, per)`.
pub(crate) fn mask_part<'a, T>(
    m: Option<[&'a [T]; 3]>,
    rows: &std::ops::Range<usize>,
    per: usize,
) -> Option<[&'a [T]; 3]> {
    m.map(|m| m.map(|g| &g[rows.start * per..rows.end * per]))
}

/// Whether the fused steps (`fusable`) of a call of `call_batch` rows project their inputs
/// themselves (see [`projects_in_step`]; never with input dropout).
fn inputs_in_steps<T: Float>(
    p: &GruParams<T>,
    fusable: bool,
    dropout: DropoutMasks<'_, T>,
    call_batch: usize,
) -> bool {
    fusable && dropout.input.is_none() && projects_in_step::<T>(call_batch, p.input_dim)
}

/// What the parts of a call split by batch rows ([`split_sequence`]) share.
#[derive(Clone, Copy)]
struct Shared<'a, T> {
    /// `U` as the time loop reads it (`None`: see [`recurrent_rhs`]).
    recurrent: Option<Rhs<'a, T>>,
    /// `W` packed for fused steps that project wide inputs (`None`: the caller's
    /// [`PackedWeights`], or packed by the part).
    kernel: Option<&'a super::packed::PackedRhs<T>>,
    /// Rows `B·T` of the whole call, on which the choices that change sums are made.
    call_rows: usize,
}

/// The body of [`gru_sequence`] for `batch` rows, with `U` and `W` as `shared` gives them (or
/// packed here).
#[allow(clippy::too_many_arguments)]
fn sequence_rows<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    batch: usize,
    time: usize,
    h0: Option<&[T]>,
    opts: SequenceOptions<'_>,
    dropout: DropoutMasks<'_, T>,
    out: SequenceOutputs<'_, T>,
    ws: &mut GruWorkspace<T>,
    mut trace: Option<TraceRows<'_, T>>,
    shared: Shared<'_, T>,
) {
    let call_rows = shared.call_rows;
    let u = p.units;
    let g = 3 * u;
    let rows = batch * time;
    let team = use_team(opts.threads, batch, time, u);
    // Inference with element-wise activations and no recurrent dropout: the team fuses each
    // step's products and gate pass (see `StepCtx`), and where `projects_in_step` says so it
    // projects the inputs in the step too (`StepInputs::Raw`). Without a team, wide inputs are
    // still projected in the steps (fused steps on this thread alone: the GEMM crate cannot
    // give the team's sums), short ones before the loop, with the same sums.
    let d = p.input_dim;
    // Training's forward keeps a trace (and splits its batch-1 products from a smaller size).
    let training = trace.is_some();
    let fusable = fusable(p, training, dropout);
    // Decided on the whole call's batch, so that a part of a split call projects its inputs as
    // the unsplit call would (the same sums whatever the thread count).
    let in_step = inputs_in_steps(p, fusable, dropout, call_rows / time.max(1));
    let alone = in_step && !team && d > PROJECT_OWN_MAX_K;
    let raw = in_step && (team || alone);
    if !raw
        && pairable(p, training, dropout)
        && !team
        && super::pair::wanted::<T>(opts.threads, batch, time, u)
    {
        sequence_pair(p, x, time, h0, opts, dropout, out, ws, shared);
        return;
    }
    if raw {
        // Only the two state buffers: no projections buffer, no unfused-step scratch.
        grow(&mut ws.h, batch * u);
        grow(&mut ws.h2, batch * u);
    } else {
        ws.reserve(batch, time, u);
    }
    let prepacked_w = prepacked_kernel(p).or(shared.kernel);
    match dropout.input {
        _ if raw => {
            if prepacked_w.is_none() {
                // (A part of a split call is on one thread; a team's call packs on all of them,
                // as `split_sequence` packs for its parts.)
                ws.wpacked
                    .pack_with_threads(Operand::new(p.kernel, g), d, u, 3, opts.threads);
            }
        }
        None => {
            let own = preferred::<T>(call_rows);
            project_rows(p, x, rows, own, &mut ws.xp, &mut ws.xm, opts.threads)
        }
        Some(m) => {
            project_inputs_masked(p, x, batch, time, m, &mut ws.xp, &mut ws.xm, opts.threads)
        }
    }
    if dropout.recurrent.is_some() {
        grow(&mut ws.hs, 3 * batch * u);
    }
    match h0 {
        Some(h0) => ws.h[..batch * u].copy_from_slice(&h0[..batch * u]),
        None => ws.h[..batch * u].fill(T::zero()),
    }
    out.last_output[..batch * u].fill(T::zero());
    let mut sequence = out.sequence;
    let GruWorkspace {
        xp,
        hu,
        h,
        tmp,
        h2,
        hs,
        packed,
        wpacked,
        pscratch,
        xm,
        ..
    } = ws;
    let rhs = match shared.recurrent {
        Some(rhs) => rhs,
        None => recurrent_rhs(p, batch, time, opts.threads, packed),
    };
    // No initial state: the first step's products are `0 · U = 0` (exactly, for a finite `U`,
    // which packing checks), so that step skips them. `U` read in place (short sequences, batch
    // 1) is known finite when the caller packed it beforehand: a single step with no state
    // (T1: 1 × 256 · 256 × 768) then costs only its input projection.
    let zero_start = h0.is_none() && known_finite(p, rhs);
    let xp: &[T] = xp;
    // The inputs of each step packed for the group kernel, all before the loop (input dropout,
    // the buffer's other use, never comes here).
    let packed_x = raw && Lhs::<T>::packs();
    if packed_x {
        let n = batch * d;
        grow(xm, time * n);
        let pack = |(t, dst): (usize, &mut [T])| {
            Lhs::pack_into(&x[t * d..], time * d, batch, &(0..d), dst);
        };
        if opts.threads > 1 && time * n >= PACK_PAR_MIN {
            xm[..time * n].par_chunks_mut(n).enumerate().for_each(pack);
        } else {
            xm[..time * n].chunks_mut(n).enumerate().for_each(pack);
        }
    }
    let inputs = if raw {
        StepInputs::Raw {
            x,
            input_dim: d,
            w: Rhs::Packed(prepacked_w.unwrap_or(wpacked)),
            bias: p.xp_bias,
            // (Not `then_some`: its argument is evaluated, and `xm` is short when not packed.)
            packed_x: if packed_x {
                xm.get(..time * batch * d)
            } else {
                None
            },
        }
    } else {
        StepInputs::Projected(xp)
    };
    let fused = fusable.then_some(StepCtx {
        inputs,
        time,
        units: u,
        hh_bias: p.hh_bias,
        activation: p.activation,
        recurrent_activation: p.recurrent_activation,
    });
    let mut run = |par: Par<'_, T>| {
        for k in 0..time {
            let t = if opts.go_backwards { time - 1 - k } else { k };
            let xp_row = |b: usize| (b * time + t) * g;
            if let Some(tr) = trace.as_mut() {
                for b in 0..batch {
                    let o = (b * time + t) * u;
                    tr.h_prev[o..o + u].copy_from_slice(&h[b * u..(b + 1) * u]);
                }
            }
            let row_of = |b: usize| b * time + t;
            let zero_state = zero_start && k == 0;
            let at = StepAt {
                t,
                zero: zero_state,
            };
            let (hb, hn) = (&h[..batch * u], &mut h2[..batch * u]);
            match (par, &fused) {
                (Par::Team(team), Some(ctx)) => {
                    team.fused_step(rhs, ctx, at, batch, hb, hn, pscratch);
                }
                // Free in fused steps (no recurrent dropout), `hs` holds `h` packed.
                (_, Some(ctx)) if alone => {
                    fused_step_alone(rhs, ctx, at, batch, hb, hn, pscratch, hs);
                }
                _ => step_rows(
                    p,
                    rhs,
                    batch,
                    xp,
                    xp_row,
                    hb,
                    hn,
                    hu,
                    tmp,
                    dropout.recurrent,
                    hs,
                    par,
                    pscratch,
                    zero_state,
                    trace
                        .as_mut()
                        .map(|tr| (tr, &row_of as &dyn Fn(usize) -> usize)),
                ),
            }
            // The new state becomes the state by swapping the two buffers; a masked row first
            // takes its old state over. Without a mask the output is the new state, and the last
            // output (set after the loop) the final state.
            for b in 0..batch {
                let rows = b * u..(b + 1) * u;
                let out_row = match opts.mask {
                    None => &h2[rows],
                    Some(m) => {
                        let lo = &mut out.last_output[rows.clone()];
                        if m[b * time + t] {
                            lo.copy_from_slice(&h2[rows]);
                        } else {
                            h2[rows.clone()].copy_from_slice(&h[rows]);
                            if opts.zero_output_for_mask {
                                lo.fill(T::zero());
                            }
                        }
                        &*lo
                    }
                };
                if let Some(seq) = sequence.as_deref_mut() {
                    let o = (b * time + k) * u;
                    seq[o..o + u].copy_from_slice(out_row);
                }
            }
            std::mem::swap(h, h2);
        }
    };
    if team {
        Team::run(team_size(opts.threads), rhs, fused, |team| {
            run(Par::Team(team))
        });
    } else if training {
        run(Par::Training(opts.threads));
    } else {
        run(Par::Threads(opts.threads));
    }
    out.state[..batch * u].copy_from_slice(&h[..batch * u]);
    if opts.mask.is_none() && time > 0 {
        out.last_output[..batch * u].copy_from_slice(&h[..batch * u]);
    }
}

/// [`sequence_rows`] for one batch row on two threads, split by units (see `engine::pair`): an
/// inference call (see [`pairable`]) whose inputs are projected before the loop, the
/// projection done by the caller while the helper thread comes. The same sums as on one
/// thread.
#[allow(clippy::too_many_arguments)]
fn sequence_pair<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    time: usize,
    h0: Option<&[T]>,
    opts: SequenceOptions<'_>,
    dropout: DropoutMasks<'_, T>,
    out: SequenceOutputs<'_, T>,
    ws: &mut GruWorkspace<T>,
    shared: Shared<'_, T>,
) {
    let u = p.units;
    let g = 3 * u;
    ws.reserve(1, time, u);
    match h0 {
        Some(h0) => ws.h[..u].copy_from_slice(&h0[..u]),
        None => ws.h[..u].fill(T::zero()),
    }
    let GruWorkspace {
        xp,
        hu,
        h,
        h2,
        tmp,
        packed,
        xm,
        ..
    } = ws;
    let rhs = match shared.recurrent {
        Some(rhs) => rhs,
        None => recurrent_rhs(p, 1, time, opts.threads, packed),
    };
    // As `sequence_rows`: the first step of a zero state skips its (exactly zero) products.
    let ctx = super::pair::PairRun {
        rhs,
        time,
        units: u,
        reset_after: p.reset_after,
        hh_bias: p.hh_bias,
        activation: p.activation,
        recurrent_activation: p.recurrent_activation,
        go_backwards: opts.go_backwards,
        zero_start: h0.is_none() && known_finite(p, rhs),
    };
    let call_rows = shared.call_rows;
    let project = move || {
        // (Moved in: the closure is then `FnOnce` and may hand out `xp` for good.)
        let (xp, xm) = (xp, xm);
        match dropout.input {
            None => {
                let own = preferred::<T>(call_rows);
                project_rows(p, x, time, own, xp, xm, opts.threads);
            }
            Some(m) => project_inputs_masked(p, x, 1, time, m, xp, xm, opts.threads),
        }
        let xp: &Vec<T> = xp;
        &xp[..time * g]
    };
    let bufs = super::pair::CallerBufs {
        h: &mut h[..u],
        h2: &mut h2[..u],
        pre: &mut hu[..g],
        t: &mut tmp[..u],
        sequence: out.sequence,
        last_output: &mut out.last_output[..u],
    };
    super::pair::run(&ctx, project, opts.mask, opts.zero_output_for_mask, bufs);
    out.state[..u].copy_from_slice(&h[..u]);
}

/// One time step for a batch: `x_t` `(B, D)`, state `h` `(B, u)` updated in place.
///
/// Allocation-free once `ws` has seen this batch size.
pub fn gru_step<T: Float>(
    p: &GruParams<T>,
    x_t: &[T],
    batch: usize,
    h: &mut [T],
    ws: &mut GruWorkspace<T>,
    threads: usize,
) {
    let u = p.units;
    let g = 3 * u;
    ws.reserve(batch, 1, u);
    project_inputs(p, x_t, batch, &mut ws.xp, &mut ws.xm, threads);
    let GruWorkspace {
        xp,
        hu,
        tmp,
        h2,
        hs,
        pscratch,
        ..
    } = ws;
    // The pre-packed `U` when there is one (same kernel and summation order as in place, for
    // the panel kernel's three or more rows and the strips of one row).
    let rhs = match prepacked(p) {
        Some(pw) if batch >= STEP_PACKED_MIN_ROWS || batch == 1 => Rhs::Packed(pw.recurrent()),
        _ => Rhs::Plain {
            data: p.recurrent,
            ld: g,
            seg: u,
        },
    };
    step_rows(
        p,
        rhs,
        batch,
        xp,
        |b| b * g,
        &h[..batch * u],
        &mut h2[..batch * u],
        hu,
        tmp,
        None,
        hs,
        Par::Threads(threads),
        pscratch,
        false,
        None,
    );
    h[..batch * u].copy_from_slice(&h2[..batch * u]);
}
