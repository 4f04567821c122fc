//! Backpropagation through time for the GRU sequence kernel.
//!
//! Shaped as oneDNN shapes it: the forward keeps the post-activation gates (and pre-activations
//! when an activation needs them), `h·U_h + b_rh` (or `r ⊙ h`) and the previous states; the reverse
//! loop does only the element-wise gate gradients and `dh_prev += dG · Uᵀ` per step; the weight
//! and input gradients are single GEMMs over all `B·T` rows after the loop
//! (`dW = Xᵀ·dG_x`, `dU = H_prevᵀ·dG_h`, `dX = dG_x·Wᵀ`).

use super::gemm::{for_transposed_chunks, gemm, gemm_with, transposes, Operand};
use super::gru::{batch_parts, mask_part, part_rows, take_front, team_size, use_team, TraceRows};
use super::gru::{mask_rows, DropoutMasks, GruParams, GruTrace, SequenceOptions};
use super::math::vectorized;
use super::packed::{PackedRhs, Par, Rhs};
use super::team::Team;
use super::workspace::grow;
use crate::float::Float;
use crate::layers::activation::Activation;
use rayon::prelude::*;

/// Gradients of the GRU weights in Keras layout. Accumulated into (`+=`), so a caller can sum
/// over batches or calls; start from [`GruGrads::zeros`].
#[derive(Clone, Debug, PartialEq)]
pub struct GruGrads<T> {
    /// d kernel `(D, 3u)`.
    pub kernel: Vec<T>,
    /// d recurrent kernel `(u, 3u)`.
    pub recurrent: Vec<T>,
    /// d input-side bias `(3u)` (Keras bias row 0, or the whole `(3u,)` bias).
    pub bias_input: Vec<T>,
    /// d recurrent-side bias `(3u)` (Keras bias row 1; reset_after only).
    pub bias_recurrent: Vec<T>,
}

impl<T: Float> GruGrads<T> {
    /// Zero gradients for a cell of `input_dim` inputs and `units` units.
    pub fn zeros(input_dim: usize, units: usize) -> Self {
        let g = 3 * units;
        GruGrads {
            kernel: vec![T::zero(); input_dim * g],
            recurrent: vec![T::zero(); units * g],
            bias_input: vec![T::zero(); g],
            bias_recurrent: vec![T::zero(); g],
        }
    }
}

/// Upstream gradients of a sequence call.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputGrads<'a, T> {
    /// d loss / d output sequence `(B, T, u)`, in processing order (as the forward wrote it).
    pub sequence: Option<&'a [T]>,
    /// d loss / d last output `(B, u)`.
    pub last: Option<&'a [T]>,
    /// d loss / d final state `(B, u)`.
    pub state: Option<&'a [T]>,
}

/// Fewest units for which a batch-1 reverse loop reads `Uᵀ` in place. Its product is then one
/// row times `Uᵀ`: the GEMM crate's dot products over rows of `U`, which are contiguous, while
/// packing `Uᵀ` (a transposing copy) costs several steps. Below, its per-call overhead is more
/// than the packed strips save. `grucell bench`, training, 2 threads, Zen 4, packed → in place:
/// `(1, 8, 64, 128)` 0.097 → 0.105 ms, `(1, 100, 32, 192)` 1.35 → 1.55, `(1, 30, 32, 512)`
/// 4.19 → 4.23, `(1, 100, 64, 512)` 10.4 → 9.7, `(1, 50, 64, 768)` 8.9 → 7.9, `(1, 50, 64,
/// 1023)` 15.3 → 13.9, `(1, 16, 64, 1024)` 7.8 → 6.1.
const BATCH_ONE_IN_PLACE_UNITS: usize = 512;

/// `Uᵀ` for the per-step `dG · Uᵀ` of the reverse loop: packed once for sequences of 4 or more
/// steps, except at batch 1 from [`BATCH_ONE_IN_PLACE_UNITS`]; else read in place by the GEMM
/// crate.
struct RecurrentT<'a, T> {
    packed: Option<Rhs<'a, T>>,
    recurrent: &'a [T],
    units: usize,
    threads: usize,
}

impl<'a, T: Float> RecurrentT<'a, T> {
    fn new(
        p: &GruParams<'a, T>,
        batch: usize,
        time: usize,
        threads: usize,
        store: &'a mut PackedRhs<T>,
    ) -> Self {
        let u = p.units;
        let packed = (time >= 4 && (batch > 1 || u < BATCH_ONE_IN_PLACE_UNITS)).then(|| {
            store.pack_with_threads(Operand::new(p.recurrent, 3 * u).t(), 3 * u, u, 1, threads);
            Rhs::Packed(&*store)
        });
        RecurrentT {
            packed,
            recurrent: p.recurrent,
            units: u,
            threads,
        }
    }

    /// `C (+)= G[:, kr] · U[:, kr]ᵀ` with `G` `(m, 3u)` and `C` `(m, u)`.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        par: Par<'_, T>,
        m: usize,
        gsrc: &[T],
        kr: std::ops::Range<usize>,
        c: &mut [T],
        accumulate: bool,
        scratch: &mut Vec<T>,
    ) {
        let (u, g) = (self.units, 3 * self.units);
        match self.packed {
            Some(rhs) => rhs.product(par, m, gsrc, g, kr, 0..1, c, u, accumulate, scratch),
            None => gemm(
                m,
                u,
                kr.len(),
                T::one(),
                Operand::new(&gsrc[kr.start..], g),
                Operand::new(&self.recurrent[kr.start..], g).t(),
                accumulate,
                c,
                u,
                match par {
                    Par::Threads(t) | Par::Training(t) => t,
                    Par::Team(_) => self.threads,
                },
            ),
        }
    }
}

/// `d ← d ⊙ f'(pre)` for one gate block (row-wise for softmax-like activations).
#[inline(always)]
fn act_backward<T: Float>(a: Activation, pre: &[T], post: &[T], d: &mut [T], scratch: &mut Vec<T>) {
    match a {
        Activation::Sigmoid => d
            .iter_mut()
            .zip(post)
            .for_each(|(g, y)| *g *= *y * (T::one() - *y)),
        Activation::Tanh => d
            .iter_mut()
            .zip(post)
            .for_each(|(g, y)| *g *= T::one() - *y * *y),
        Activation::Linear => {}
        a if a.is_elementwise() => d
            .iter_mut()
            .zip(pre)
            .zip(post)
            .for_each(|((g, x), y)| *g *= a.derivative(*x, *y)),
        a => {
            scratch.clear();
            scratch.extend_from_slice(d);
            a.backward_row(pre, post, scratch, d);
        }
    }
}

/// `d_out = carry + d_seq (+ d_last)` for one batch row: added to the state gradient
/// (`dhn = dh + d_out`) on a valid step, carried to the previous output on a masked one.
#[inline(always)]
fn route_output_grad<T: Float>(
    carry: &mut [T],
    seq: Option<&[T]>,
    last: Option<&[T]>,
    dh: &[T],
    dhn: &mut [T],
    valid: bool,
    zero_output_for_mask: bool,
) {
    // d_out is summed in `carry` (carry + d_seq + d_last, in that order), then moved.
    if let Some(s) = seq {
        carry.iter_mut().zip(s).for_each(|(c, v)| *c += *v);
    }
    if let Some(l) = last {
        carry.iter_mut().zip(l).for_each(|(c, v)| *c += *v);
    }
    if valid {
        for ((n, h), c) in dhn.iter_mut().zip(dh).zip(carry.iter_mut()) {
            *n = *h + *c;
            *c = T::zero();
        }
    } else if zero_output_for_mask {
        carry.fill(T::zero());
    }
}

/// One batch row's saved activations at one step.
struct GateRows<'a, T> {
    /// Post-activation gates `(3u)`: z, r, ĥ.
    gates: &'a [T],
    /// Pre-activations `(3u)` when kept.
    pre: Option<&'a [T]>,
    /// State before the step `(u)`.
    h_prev: &'a [T],
    /// `h·U_h + b_rh` (reset_after) or `r ⊙ h_prev` `(u)`.
    hn: &'a [T],
}

/// Gate gradients of one batch row from its state gradient `dhn`: the input side `gx` `(3u)`
/// (dz, dr, dĥ — for `reset_after = false` dr is filled in after the candidate's product), the
/// recurrent side `gh` `(3u)`, and the direct part of `dh_prev` (`dhn ⊙ z`).
#[inline(always)]
fn gate_grads_row<T: Float>(
    p: &GruParams<T>,
    rows: &GateRows<'_, T>,
    dhn: &[T],
    gx: &mut [T],
    gh: &mut [T],
    dh_prev: &mut [T],
    scratch: &mut Vec<T>,
) {
    let u = p.units;
    let u2 = 2 * u;
    let gates = rows.gates;
    let pre = rows.pre.unwrap_or(gates);
    let (z, r, n) = (&gates[..u], &gates[u..u2], &gates[u2..]);
    let (dz, rest) = gx.split_at_mut(u);
    let (dr, dn) = rest.split_at_mut(u);
    // Indexed over equal-length slices (a six-way zip was left scalar by the compiler).
    let (dh_prev, dhn, h_prev) = (&mut dh_prev[..u], &dhn[..u], &rows.h_prev[..u]);
    let (dn, n) = (&mut dn[..u], &n[..u]);
    for j in 0..u {
        let d = dhn[j];
        dz[j] = d * (h_prev[j] - n[j]);
        dn[j] = d * (T::one() - z[j]);
        dh_prev[j] = d * z[j];
    }
    act_backward(p.activation, &pre[u2..], n, dn, scratch);
    if p.reset_after {
        for ((drv, dnv), hnv) in dr.iter_mut().zip(dn.iter()).zip(rows.hn) {
            *drv = *dnv * *hnv;
        }
        act_backward(p.recurrent_activation, &pre[u..u2], r, dr, scratch);
    }
    act_backward(p.recurrent_activation, &pre[..u], z, dz, scratch);
    gh[..u2].copy_from_slice(&gx[..u2]);
    if p.reset_after {
        // d(h·U_h + b_rh) = dĥ ⊙ r
        for ((o, dnv), rv) in gh[u2..].iter_mut().zip(&gx[u2..]).zip(r) {
            *o = *dnv * *rv;
        }
    } else {
        gh[u2..].copy_from_slice(&gx[u2..]);
    }
}

/// Backward pass of [`super::gru::gru_sequence`] run with the same arguments and a trace.
///
/// Accumulates weight gradients into `grads`; writes `dx` `(B, T, D)` and `dh0` `(B, u)` when
/// given (overwriting them). The trace is consumed: the gate gradients of each step overwrite that
/// step's saved gates (and, for reset_after, `hn`) once they are no longer needed, so training
/// memory is the saved activations plus `O(B·u)` scratch (the per-step vectors and each batch
/// row's bias sums, `B·4u`), plus two buffers the trace keeps for the next call: `Uᵀ` packed (the
/// size of `U`) and, for layers with 512 or more inputs or units, the row-major copy of a chunk
/// of at most 512 rows of `Xᵀ` or `H_prevᵀ` that the weight-gradient GEMMs read (`512·max(D,
/// u)` values, whatever the sequence length; see [`super::gemm::transposes`]).
#[allow(clippy::too_many_arguments)]
pub fn gru_sequence_backward<T: Float>(
    p: &GruParams<T>,
    x: &[T],
    batch: usize,
    time: usize,
    opts: SequenceOptions<'_>,
    dropout: DropoutMasks<'_, T>,
    trace: &mut GruTrace<T>,
    upstream: OutputGrads<'_, T>,
    grads: &mut GruGrads<T>,
    dx: Option<&mut [T]>,
    mut dh0: Option<&mut [T]>,
) {
    let threads = opts.threads;
    let (d, u) = (p.input_dim, p.units);
    let g = 3 * u;
    let rows = batch * time;
    let mut packed = std::mem::take(&mut trace.packed_t);
    let mut lt = std::mem::take(&mut trace.transposed);
    // Each batch row's bias-gradient sums over its steps, summed up after the loop.
    let mut sums = std::mem::take(&mut trace.bias_rows);
    grow(&mut sums, batch * 4 * u);
    sums[..batch * 4 * u].fill(T::zero());
    let mut part_sums = &mut sums[..batch * 4 * u];
    let rec = RecurrentT::new(p, batch, time, threads, &mut packed);
    let parts = batch_parts(threads, batch, time, u, std::mem::size_of::<T>(), false);
    let mut view = trace.rows(rows, u);
    if parts > 1 && rec.packed.is_some() {
        // Batch rows are independent sequences: each part runs the whole reverse loop for its
        // rows on one thread (see `gru::batch_parts`); the GEMMs below then see every row.
        let mut jobs = Vec::with_capacity(parts);
        for r in part_rows(batch, parts) {
            let n = r.len();
            jobs.push((
                n,
                SequenceOptions {
                    mask: opts.mask.map(|m| &m[r.start * time..r.end * time]),
                    threads: 1,
                    ..opts
                },
                mask_part(dropout.recurrent, &r, u),
                view.take_front(n * time, u),
                OutputGrads {
                    sequence: upstream
                        .sequence
                        .map(|v| &v[r.start * time * u..r.end * time * u]),
                    last: upstream.last.map(|v| &v[r.start * u..r.end * u]),
                    state: upstream.state.map(|v| &v[r.start * u..r.end * u]),
                },
                dh0.as_mut().map(|h| take_front(h, n * u)),
                take_front(&mut part_sums, n * 4 * u),
            ));
        }
        let rec = &rec;
        jobs.into_par_iter()
            .for_each(|(n, opts, rec_masks, tr, upstream, dh0, sums)| {
                reverse_rows(
                    p,
                    rec,
                    Par::Threads(1),
                    n,
                    time,
                    opts,
                    rec_masks,
                    tr,
                    upstream,
                    dh0,
                    sums,
                );
            });
    } else {
        let run = |par: Par<'_, T>| {
            reverse_rows(
                p,
                &rec,
                par,
                batch,
                time,
                opts,
                dropout.recurrent,
                view,
                upstream,
                dh0,
                part_sums,
            )
        };
        match rec.packed {
            Some(rhs) if use_team(threads, batch, time, u) => {
                Team::run(team_size(threads), rhs, None, |team| run(Par::Team(team)))
            }
            _ => run(Par::Training(threads)),
        }
    }
    // From here on: `dxp` = d(input projections) (B·T, 3u); for reset_after `dg` = d(h·U_h + b_rh).
    let dxp = &trace.gates[..rows * g];
    // Weight and input gradients: one GEMM each over all B·T rows.
    let mut xm = Vec::new();
    match dropout.input {
        None => gemm_with(
            d,
            g,
            rows,
            T::one(),
            Operand::new(x, d).t(),
            Operand::new(dxp, g),
            true,
            &mut grads.kernel,
            g,
            threads,
            &mut lt,
        ),
        Some(m) => {
            for gate in 0..3 {
                xm.resize(rows * d, T::zero());
                mask_rows(x, batch, time, d, m[gate], &mut xm);
                gemm_with(
                    d,
                    u,
                    rows,
                    T::one(),
                    Operand::new(&xm, d).t(),
                    Operand::new(&dxp[gate * u..], g),
                    true,
                    &mut grads.kernel[gate * u..],
                    g,
                    threads,
                    &mut lt,
                );
            }
        }
    }
    if let Some(dx) = dx {
        match dropout.input {
            None => gemm(
                rows,
                d,
                g,
                T::one(),
                Operand::new(dxp, g),
                Operand::new(p.kernel, g).t(),
                false,
                dx,
                d,
                threads,
            ),
            Some(m) => {
                dx[..rows * d].fill(T::zero());
                let mut part = vec![T::zero(); rows * d];
                for gate in 0..3 {
                    gemm(
                        rows,
                        d,
                        u,
                        T::one(),
                        Operand::new(&dxp[gate * u..], g),
                        Operand::new(&p.kernel[gate * u..], g).t(),
                        false,
                        &mut part,
                        d,
                        threads,
                    );
                    for b in 0..batch {
                        let mb = &m[gate][b * d..(b + 1) * d];
                        for t in 0..time {
                            let o = (b * time + t) * d;
                            for j in 0..d {
                                dx[o + j] += part[o + j] * mb[j];
                            }
                        }
                    }
                }
            }
        }
    }
    let hprev = &trace.h_prev[..rows * u];
    let mut hm = Vec::new();
    // Gates z and r share their left operand (`H_prev`) unless recurrent dropout masks differ per
    // gate: then one GEMM covers both (`u × 2u`), which runs faster than two `u × u` ones.
    let blocks: &[std::ops::Range<usize>] = if dropout.recurrent.is_none() {
        &[0..2, 2..3]
    } else {
        &[0..1, 1..2, 2..3]
    };
    let right_of = |gate: usize| -> (&[T], usize) {
        if p.reset_after && gate == 2 {
            (&trace.hn[..rows * u], u)
        } else {
            (&dxp[gate * u..], g)
        }
    };
    let mut i = 0;
    while i < blocks.len() {
        let gate = blocks[i].start;
        // Left operand of these gates' recurrent product over all rows, and its gradient.
        let candidate_hn = !p.reset_after && gate == 2;
        let masks = dropout.recurrent.filter(|_| !candidate_hn);
        let left: &[T] = if candidate_hn {
            &trace.hn[..rows * u]
        } else if let Some(s) = masks {
            hm.resize(rows * u, T::zero());
            mask_rows(hprev, batch, time, u, s[gate], &mut hm);
            &hm
        } else {
            hprev
        };
        // Without masks, `H_prev` is the left operand of z, r and, with reset_after, ĥ: the
        // blocks that share it share each transposed chunk too.
        let j = if masks.is_none() && !candidate_hn && p.reset_after {
            blocks.len()
        } else {
            i + 1
        };
        let group = &blocks[i..j];
        if group.iter().all(|b| transposes(u, b.len() * u)) {
            for_transposed_chunks(left, rows, u, u, &mut lt, threads, |at, kr| {
                for b in group {
                    let (right, ld) = right_of(b.start);
                    gemm(
                        u,
                        b.len() * u,
                        kr.len(),
                        T::one(),
                        at,
                        Operand::new(right, ld).skip_rows(kr.start),
                        true,
                        &mut grads.recurrent[b.start * u..],
                        g,
                        threads,
                    );
                }
            });
        } else {
            for b in group {
                let (right, ld) = right_of(b.start);
                gemm(
                    u,
                    b.len() * u,
                    rows,
                    T::one(),
                    Operand::new(left, u).t(),
                    Operand::new(right, ld),
                    true,
                    &mut grads.recurrent[b.start * u..],
                    g,
                    threads,
                );
            }
        }
        i = j;
    }
    bias_grads(&sums[..batch * 4 * u], p.reset_after, u, grads);
    trace.packed_t = packed;
    trace.transposed = lt;
    trace.bias_rows = sums;
}

/// Bias gradients from each batch row's sums over its steps (`sums`, `(B, 4u)`: `Σ dG_x` then,
/// for reset_after, `Σ dĥ_rec`; see [`reverse_rows`]): `db_in += Σ_b Σ dG_x` and, for
/// reset_after, `db_rec += Σ_b [Σ dz, Σ dr | Σ dĥ_rec]`, batch rows in order. Each row's sums are
/// made by one thread in step order, so no sum depends on the thread count. Summed in the reverse
/// loop while the gate gradients are in L1, they cost no pass over the `(B·T, 3u)` gradients
/// (that pass was 1.8 ms of L training's 127).
fn bias_grads<T: Float>(sums: &[T], reset_after: bool, u: usize, grads: &mut GruGrads<T>) {
    let (g, u2) = (3 * u, 2 * u);
    let (bi, br) = (&mut grads.bias_input[..g], &mut grads.bias_recurrent[..g]);
    let mut total = vec![T::zero(); 4 * u];
    for row in sums.chunks_exact(4 * u) {
        for (t, v) in total.iter_mut().zip(row) {
            *t += *v;
        }
    }
    for (b, t) in bi.iter_mut().zip(&total[..g]) {
        *b += *t;
    }
    if reset_after {
        for (b, t) in br.iter_mut().zip(total[..u2].iter().chain(&total[g..])) {
            *b += *t;
        }
    }
}

/// The reverse loop for `batch` rows (the whole batch, or one part of it with the matching rows
/// of the mask, recurrent dropout masks, trace and upstream gradients): the element-wise gate
/// gradients and `dh_prev += dG · Uᵀ` per step. Leaves the gate gradients in the trace (see
/// [`gru_sequence_backward`]), adds each row's to its bias sums in `sums` (`(batch, 4u)`: `Σ dG_x`,
/// then for reset_after `Σ dĥ_rec`; zeroed by the caller), and writes `d h0` to `dh0` when given.
#[allow(clippy::too_many_arguments)]
fn reverse_rows<T: Float>(
    p: &GruParams<T>,
    rec: &RecurrentT<'_, T>,
    par: Par<'_, T>,
    batch: usize,
    time: usize,
    opts: SequenceOptions<'_>,
    rec_masks: Option<[&[T]; 3]>,
    trace: TraceRows<'_, T>,
    upstream: OutputGrads<'_, T>,
    dh0: Option<&mut [T]>,
    sums: &mut [T],
) {
    let u = p.units;
    let g = 3 * u;
    let u2 = 2 * u;
    // Per-step scratch: [dz, dr, dĥ] (input side) and [dz, dr, dg | dĥ] (recurrent side).
    let mut sx = vec![T::zero(); batch * g];
    let mut sh = vec![T::zero(); batch * g];
    let mut dh = match upstream.state {
        Some(s) => s[..batch * u].to_vec(),
        None => vec![T::zero(); batch * u],
    };
    let mut carry = vec![T::zero(); batch * u];
    let mut dh_prev = vec![T::zero(); batch * u];
    let mut dhn = vec![T::zero(); batch * u];
    let mut tmp = vec![T::zero(); batch * u];
    let mut valid = vec![true; batch];
    let mut scratch = Vec::with_capacity(u);
    let gates_in_loop = if p.reset_after { 3 } else { 2 };
    let mut pscratch = Vec::new();
    let want_dh0 = dh0.is_some();
    for k in (0..time).rev() {
        let t = if opts.go_backwards { time - 1 - k } else { k };
        // The element-wise work of the step, vectorized as wide as the kernels run.
        vectorized(
            #[inline(always)]
            || {
                // Output gradient of this step, routed to the new state or (masked) to the previous output.
                for b in 0..batch {
                    valid[b] = opts.mask.is_none_or(|m| m[b * time + t]);
                    let bu = b * u..(b + 1) * u;
                    let seq = upstream
                        .sequence
                        .map(|s| &s[(b * time + k) * u..(b * time + k + 1) * u]);
                    let last = upstream
                        .last
                        .filter(|_| k + 1 == time)
                        .map(|l| &l[bu.clone()]);
                    route_output_grad(
                        &mut carry[bu.clone()],
                        seq,
                        last,
                        &dh[bu.clone()],
                        &mut dhn[bu],
                        valid[b],
                        opts.zero_output_for_mask,
                    );
                }
                // Element-wise gate gradients.
                for b in 0..batch {
                    let bu = b * u..(b + 1) * u;
                    if !valid[b] {
                        dh_prev[bu.clone()].copy_from_slice(&dh[bu]);
                        sx[b * g..(b + 1) * g].fill(T::zero());
                        sh[b * g..(b + 1) * g].fill(T::zero());
                        continue;
                    }
                    let row = b * time + t;
                    let rows = GateRows {
                        gates: &trace.gates[row * g..(row + 1) * g],
                        pre: trace.has_pre.then(|| &trace.pre[row * g..(row + 1) * g]),
                        h_prev: &trace.h_prev[row * u..(row + 1) * u],
                        hn: &trace.hn[row * u..(row + 1) * u],
                    };
                    gate_grads_row(
                        p,
                        &rows,
                        &dhn[bu.clone()],
                        &mut sx[b * g..(b + 1) * g],
                        &mut sh[b * g..(b + 1) * g],
                        &mut dh_prev[bu],
                        &mut scratch,
                    );
                }
            },
        );
        if !p.reset_after {
            // d(r ⊙ h_s) = da_n · U_hᵀ, then dr and the direct path into h.
            rec.product(par, batch, &sh, u2..g, &mut tmp, false, &mut pscratch);
            vectorized(
                #[inline(always)]
                || {
                    for b in (0..batch).filter(|&b| valid[b]) {
                        let row = b * time + t;
                        let gates = &trace.gates[row * g..(row + 1) * g];
                        let pre = if trace.has_pre {
                            &trace.pre[row * g..(row + 1) * g]
                        } else {
                            gates
                        };
                        let hp = &trace.h_prev[row * u..(row + 1) * u];
                        let r = &gates[u..u2];
                        let s_h = rec_masks.map(|s| &s[2][b * u..(b + 1) * u]);
                        let gx = &mut sx[b * g..(b + 1) * g];
                        for j in 0..u {
                            let drh = tmp[b * u + j];
                            let sh = s_h.map_or(T::one(), |s| s[j]);
                            gx[u + j] = drh * hp[j] * sh;
                            dh_prev[b * u + j] += drh * r[j] * sh;
                        }
                        act_backward(
                            p.recurrent_activation,
                            &pre[u..u2],
                            r,
                            &mut gx[u..u2],
                            &mut scratch,
                        );
                        sh[b * g + u..b * g + u2].copy_from_slice(&gx[u..u2]);
                    }
                },
            );
        }
        // dh_prev += dG_h · Uᵀ over the recurrent gates (masked rows have dG_h = 0). The
        // first step's `dh_prev` is `dh0`, not needed unless asked for.
        let need_dh_prev = k > 0 || want_dh0;
        match rec_masks {
            _ if !need_dh_prev => {}
            None => rec.product(
                par,
                batch,
                &sh,
                0..gates_in_loop * u,
                &mut dh_prev,
                true,
                &mut pscratch,
            ),
            Some(s) => {
                for (gate, sg) in s.iter().enumerate().take(gates_in_loop) {
                    rec.product(
                        par,
                        batch,
                        &sh,
                        gate * u..(gate + 1) * u,
                        &mut tmp,
                        false,
                        &mut pscratch,
                    );
                    for b in (0..batch).filter(|&b| valid[b]) {
                        for j in 0..u {
                            dh_prev[b * u + j] += tmp[b * u + j] * sg[b * u + j];
                        }
                    }
                }
            }
        }
        // This step's saved activations are spent: keep its gate gradients in their place.
        // ... and add them to the row's bias sums (`sums`: `Σ dG_x`, then `Σ dĥ_rec`).
        vectorized(
            #[inline(always)]
            || {
                for b in 0..batch {
                    let row = b * time + t;
                    let (gx, s) = (
                        &sx[b * g..(b + 1) * g],
                        &mut sums[b * 4 * u..(b + 1) * 4 * u],
                    );
                    trace.gates[row * g..(row + 1) * g].copy_from_slice(gx);
                    for (acc, v) in s[..g].iter_mut().zip(gx) {
                        *acc += *v;
                    }
                    if p.reset_after {
                        let gh = &sh[b * g + u2..(b + 1) * g];
                        trace.hn[row * u..(row + 1) * u].copy_from_slice(gh);
                        for (acc, v) in s[g..].iter_mut().zip(gh) {
                            *acc += *v;
                        }
                    }
                }
            },
        );
        std::mem::swap(&mut dh, &mut dh_prev);
    }
    if let Some(h0) = dh0 {
        h0[..batch * u].copy_from_slice(&dh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-split bias sums give the serial sums bit for bit, with the split falling
    /// inside the input-side columns, at the `dĥ` block and inside it (`u` = 64, 100, 256).
    /// The weight gradients of a layer wide enough for the transposed-operand copies (`D`, `u` ≥
    /// 512: `Xᵀ` for `dW`, `H_prevᵀ` once for both `dU` blocks with reset_after, twice without),
    /// over more rows than one chunk of them (`B·T` = 600: chunks of 512 and 88), equal `Xᵀ·dG`
    /// and `H_prevᵀ·[dz dr | dĥ_rec]` formed from what the backward leaves in the trace, and
    /// the bias gradients (summed in the reverse loop) the column sums of `dG` and `dĥ_rec`, on
    /// two calls that reuse the trace's buffers.
    #[test]
    fn weight_gradients_through_transposed_copies() {
        use crate::engine::gru::{gru_sequence, SequenceOutputs};
        use crate::engine::workspace::GruWorkspace;
        let (b, t, d, u) = (2, 300, 512, 512);
        let (g, rows) = (3 * u, b * t);
        let val = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32) * s).sin() * 0.05).collect()
        };
        let (kernel, rec, x) = (val(d * g, 0.37), val(u * g, 0.11), val(rows * d, 0.7));
        let h0 = val(b * u, 0.3);
        for reset_after in [true, false] {
            let p = GruParams {
                kernel: &kernel,
                recurrent: &rec,
                xp_bias: None,
                hh_bias: None,
                input_dim: d,
                units: u,
                reset_after,
                activation: Activation::Tanh,
                recurrent_activation: Activation::Sigmoid,
                packed: None,
            };
            let opts = SequenceOptions {
                mask: None,
                go_backwards: false,
                zero_output_for_mask: false,
                threads: 2,
            };
            let (mut ws, mut trace) = (GruWorkspace::new(), GruTrace::default());
            let (mut seq, mut last, mut state) =
                (vec![0f32; rows * u], vec![0f32; b * u], vec![0f32; b * u]);
            let ones = vec![1f32; rows * u];
            for call in 0..2 {
                gru_sequence(
                    &p,
                    &x,
                    b,
                    t,
                    Some(&h0),
                    opts,
                    DropoutMasks::default(),
                    SequenceOutputs {
                        sequence: Some(&mut seq),
                        last_output: &mut last,
                        state: &mut state,
                    },
                    &mut ws,
                    Some(&mut trace),
                );
                let mut grads = GruGrads::zeros(d, u);
                gru_sequence_backward(
                    &p,
                    &x,
                    b,
                    t,
                    opts,
                    DropoutMasks::default(),
                    &mut trace,
                    OutputGrads {
                        sequence: Some(&ones),
                        last: None,
                        state: None,
                    },
                    &mut grads,
                    None,
                    None,
                );
                let (dg, hn, hp) = (&trace.gates, &trace.hn, &trace.h_prev);
                let check = |got: f32, want: f64, what: &str| {
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "reset_after {reset_after} call {call} {what}: {got} vs {want}"
                    );
                };
                for i in (0..d).step_by(37) {
                    for j in (0..g).step_by(5) {
                        let want: f64 = (0..rows)
                            .map(|r| f64::from(x[r * d + i]) * f64::from(dg[r * g + j]))
                            .sum();
                        check(grads.kernel[i * g + j], want, "dW");
                    }
                }
                for i in (0..u).step_by(31) {
                    for j in (0..g).step_by(5) {
                        // Left operand: H_prev, except `r ⊙ H_prev` (held in `hn`) for the
                        // candidate without reset_after; right: dG, except `dĥ_rec` (in `hn`)
                        // for the candidate with reset_after.
                        let want: f64 = (0..rows)
                            .map(|r| {
                                let (l, rt) = match (j >= 2 * u, reset_after) {
                                    (false, _) => (hp[r * u + i], dg[r * g + j]),
                                    (true, true) => (hp[r * u + i], hn[r * u + j - 2 * u]),
                                    (true, false) => (hn[r * u + i], dg[r * g + j]),
                                };
                                f64::from(l) * f64::from(rt)
                            })
                            .sum();
                        check(grads.recurrent[i * g + j], want, "dU");
                    }
                }
                for j in 0..g {
                    let col = |v: &[f32], w: usize, c: usize| -> f64 {
                        (0..rows).map(|r| f64::from(v[r * w + c])).sum()
                    };
                    check(grads.bias_input[j], col(dg, g, j), "db_in");
                    let rec = match (reset_after, j >= 2 * u) {
                        (false, _) => 0.0,
                        (true, false) => col(dg, g, j),
                        (true, true) => col(hn, u, j - 2 * u),
                    };
                    check(grads.bias_recurrent[j], rec, "db_rec");
                }
            }
        }
    }
}
