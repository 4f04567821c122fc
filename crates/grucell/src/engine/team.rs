//! A spinning team of helper threads for the per-step recurrent products.
//!
//! A time loop issues one small product per step (≈ 0.1 ms at batch 32, 256 units). Handing each
//! one to rayon wakes a sleeping worker through the kernel every step; on the machines measured
//! that cost as much as the second thread saved (2 threads ran the M forward no faster than 1).
//! Like the thread pools of oneDNN and ONNX Runtime, the team's helpers therefore stay awake for
//! the whole sequence: they spin on a step counter, compute their share of the panels, and spin
//! again, so a step costs two cache-line handoffs instead of a futex wake-up. Calls with enough
//! batch rows per thread for the size of `U` skip even that: they split the batch, each thread
//! running its own rows' whole sequence (`gru::batch_parts`); the team serves the others
//! (few rows, or a `U` too large to read whole on every core at every step).
//!
//! In a fused step a thread that has finished its own share goes on with the panels the others
//! have not started ([`Claim`]): on a shared VM one core is often slowed for a while, and a
//! static split then made the other wait at every step (M forward, 2 threads: median calls
//! 7.7–8.8 ms with the static split, 6.6–7.3 ms with this, fastest calls unchanged).
//!
//! No `unsafe`: the state the helpers share with the caller is behind a `RwLock` (the left operand,
//! copied in once per step, `B·u` values) and one `Mutex` per helper (its output panels); the
//! atomics only order the phases, so every lock is uncontended when taken. A helper that panics,
//! cannot be started, or keeps the caller waiting more than [`GIVE_UP`] (a busy machine) marks the
//! team failed; the caller then computes every share itself for the rest of the sequence, so
//! neither a bug, a thread limit nor an oversubscribed machine can hang or crawl the caller.

use super::gru::{activate, PROJECT_OWN_MAX_K};
use super::packed::{block_depth, prefetch, run_panel, run_panel_group, run_panel_range};
use super::packed::{Lhs, Rhs, NR};
use super::projection::GROUP_KC;
use super::workspace::grow;
use crate::float::Float;
use crate::layers::activation::Activation;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// One posted product: `C[:, segs] (+)= A[:, kr] · B[kr, segs]`, `A` being the team's copy.
#[derive(Clone, Debug, Default)]
struct Job {
    m: usize,
    lda: usize,
    kr: Range<usize>,
    segs: Range<usize>,
    /// Panels per share: the caller does share 0, helper `i` share `i + 1`.
    per: usize,
    /// The helpers' output tiles hold `C`'s values (gathered by the caller) to add to.
    accumulate: bool,
    /// A fused step (see [`StepCtx`]) instead of a plain product.
    fused: Option<StepAt>,
    /// The left operand is also shared packed (see [`Lhs`]).
    pack_lhs: bool,
}

/// The team's copy of a product's left operand.
#[derive(Debug, Default)]
struct Left<T> {
    rows: Vec<T>,
    packed: Vec<T>,
}

impl<T: Float> Left<T> {
    /// The operand of `job`.
    fn lhs(&self, job: &Job) -> Lhs<'_, T> {
        Lhs {
            rows: &self.rows,
            lda: job.lda,
            packed: job.pack_lhs.then_some(&self.packed[..]),
        }
    }
}

/// What a fused inference step needs besides `U`: with `reset_after = true`, element-wise
/// activations, no recurrent dropout and no training trace, each thread computes the z, r and
/// candidate panels of its own units and then their new state, so the gate pass is split between
/// the threads too and only `(B, units of the share)` values cross back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepCtx<'a, T> {
    /// Where each step's input projections come from.
    pub inputs: StepInputs<'a, T>,
    /// Sequence length `T`.
    pub time: usize,
    /// Units `u`.
    pub units: usize,
    /// Recurrent candidate bias `(u)`.
    pub hh_bias: Option<&'a [T]>,
    /// Candidate activation (element-wise).
    pub activation: Activation,
    /// Gate activation (element-wise).
    pub recurrent_activation: Activation,
}

/// The input side of a fused step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StepInputs<'a, T> {
    /// Projected before the loop: `(B·T, 3u)`, rows `b·T + t`.
    Projected(&'a [T]),
    /// Projected inside each step, by each thread for its own units: `x_t · W + b`; the
    /// `(B·T, 3u)` buffer is never written and read back (see
    /// [`super::gru::projects_in_step`]). Inputs of at most 256 features are summed as
    /// [`super::gru::project_inputs`] sums them before the loop of a call without a team, so
    /// the results are identical; wider ones are projected in the steps whatever the thread
    /// count ([`fused_step_alone`] without a team).
    Raw {
        /// Inputs `(B, T, D)`.
        x: &'a [T],
        /// `D`.
        input_dim: usize,
        /// The input kernel `W` packed as three gate segments.
        w: Rhs<'a, T>,
        /// The projection's bias `(3u)`.
        bias: Option<&'a [T]>,
        /// `x` packed for the group kernel (see `packed::Lhs`), step by step: rows `b·T + t` of
        /// step `t` (all `B` of them) at `t·B·D`. Without it, `x` is read from its rows.
        packed_x: Option<&'a [T]>,
    },
}

/// Helper threads that stay awake for one sequence; create with [`Team::run`].
#[derive(Debug)]
pub(crate) struct Team<T> {
    a: RwLock<Left<T>>,
    job: Mutex<Job>,
    outs: Vec<Mutex<Out<T>>>,
    /// Per share of a fused step, the unit panels not yet taken (see [`Claim`]).
    claims: Vec<Claim>,
    posted: AtomicUsize,
    done: AtomicUsize,
    stop: AtomicBool,
    failed: AtomicBool,
}

/// What a helper hands back: its output tiles and, in a fused step, the unit panel of each.
#[derive(Debug, Default)]
struct Out<T> {
    tiles: Vec<T>,
    panels: Vec<usize>,
}

/// The panels `front..back` of one share of a fused step that no thread has taken yet, packed
/// in one atomic word so that taking one is a single compare-and-swap. The share's owner takes
/// panels from the front; a thread that has finished its own share takes the others' panels
/// from the back. On a quiet machine every thread computes its own share (so each core keeps
/// reading the same part of `U`, from its own cache); when one core is slowed (a busy VM
/// host), the other finishes the slowed one's panels instead of waiting for them. Where a panel
/// is computed does not change its value.
#[derive(Debug, Default)]
#[repr(align(128))] // one per cache line pair: owners do not share a line
struct Claim(AtomicU64);

impl Claim {
    /// Panel indices are `units / 16`: far below the 2³² each half of the word holds.
    fn set(&self, r: Range<usize>) {
        self.0
            .store(((r.start as u64) << 32) | r.end as u64, Ordering::Relaxed);
    }

    /// Takes the first remaining panel (`back`: the last).
    fn take(&self, back: bool) -> Option<usize> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (front, end) = (cur >> 32, cur & 0xffff_ffff);
            if front >= end {
                return None;
            }
            let (next, got) = if back {
                (cur - 1, end - 1)
            } else {
                (cur + (1 << 32), front)
            };
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(got as usize),
                Err(now) => cur = now,
            }
        }
    }
}

/// Next panel for the thread of share `own`: its own front first, then the back of another's.
fn next_panel(claims: &[Claim], own: usize) -> Option<usize> {
    claims[own]
        .take(false)
        .or_else(|| (1..claims.len()).find_map(|d| claims[(own + d) % claims.len()].take(true)))
}

/// How long a waiting thread spins before it starts yielding its core: a little more than a
/// step's gate pass at the sizes where teams are used, so a quiet machine never leaves the spin.
const SPIN: Duration = Duration::from_micros(50);

/// How long the caller waits for the helpers of one step before it concludes that the machine is
/// oversubscribed (a helper without a core of its own) and finishes the sequence alone: waiting
/// for a descheduled helper every step made 2 threads ~10× slower than 1 on a busy machine.
pub(crate) const GIVE_UP: Duration = Duration::from_millis(2);

/// Spins, then yields, until `cond` holds (`true`) or `give_up` has passed (`false`).
#[inline]
pub(crate) fn wait_for(cond: impl Fn() -> bool, give_up: Option<Duration>) -> bool {
    if cond() {
        return true;
    }
    let start = Instant::now();
    let mut spinning = true;
    let mut n = 0u32;
    while !cond() {
        if spinning {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() > SPIN {
                spinning = false;
            }
        } else {
            if give_up.is_some_and(|g| start.elapsed() > g) {
                return false;
            }
            std::thread::yield_now();
        }
    }
    true
}

fn lock<G>(r: Result<G, PoisonError<G>>) -> G {
    r.unwrap_or_else(PoisonError::into_inner)
}

/// Sets `stop` when dropped (also on unwinding), so the helpers leave their loops.
struct StopOnDrop<'a, T>(&'a Team<T>);
impl<T> Drop for StopOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

/// Sets `failed` if a helper unwinds.
struct FailOnUnwind<'a, T>(&'a Team<T>);
impl<T> Drop for FailOnUnwind<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Release);
        }
    }
}

impl<T: Float> Team<T> {
    /// Runs `body` with a team of `threads − 1` helpers serving products of `rhs`; the helpers
    /// exist only for the duration of the call.
    pub fn run<R>(
        threads: usize,
        rhs: Rhs<'_, T>,
        ctx: Option<StepCtx<'_, T>>,
        body: impl FnOnce(&Team<T>) -> R,
    ) -> R {
        let helpers = threads.saturating_sub(1).max(1);
        let team = Team {
            a: RwLock::new(Left::default()),
            job: Mutex::new(Job::default()),
            outs: (0..helpers).map(|_| Mutex::new(Out::default())).collect(),
            claims: (0..=helpers).map(|_| Claim::default()).collect(),
            posted: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        std::thread::scope(|s| {
            for i in 0..helpers {
                let team = &team;
                let spawned = std::thread::Builder::new()
                    .name(format!("grucell-team-{i}"))
                    .spawn_scoped(s, move || team.helper(rhs, ctx, i));
                if spawned.is_err() {
                    // No thread (resource limits): the caller computes every share itself.
                    team.failed.store(true, Ordering::Release);
                }
            }
            let _stop = StopOnDrop(&team);
            body(&team)
        })
    }

    fn helper(&self, rhs: Rhs<'_, T>, ctx: Option<StepCtx<'_, T>>, idx: usize) {
        let _fail = FailOnUnwind(self);
        let mut seen = 0;
        let mut tiles = Vec::new();
        loop {
            let quit = || self.stop.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire);
            wait_for(
                || self.posted.load(Ordering::Acquire) > seen || quit(),
                None,
            );
            if quit() {
                return;
            }
            seen += 1;
            let job = lock(self.job.lock()).clone();
            {
                let left = lock(self.a.read());
                let a = left.lhs(&job);
                let mut out = lock(self.outs[idx].lock());
                if let (Some(at), Some(ctx)) = (job.fused, ctx) {
                    let tl = job.m * NR;
                    let out = &mut *out;
                    out.panels.clear();
                    while let Some(q) = next_panel(&self.claims, idx + 1) {
                        let j = out.panels.len();
                        out.panels.push(q);
                        if out.tiles.len() < (j + 1) * tl {
                            out.tiles.resize((j + 1) * tl, T::zero());
                        }
                        let tile = &mut out.tiles[j * tl..(j + 1) * tl];
                        fused_panel(&rhs, &ctx, at, q, job.m, a, &mut tiles, tile, NR, 0);
                    }
                    drop((left, out));
                    self.done.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                let panels = share(&job, &rhs, idx + 1);
                out.tiles.resize(panels.len() * job.m * NR, T::zero());
                run_panel_range(
                    &rhs,
                    &job.kr,
                    &job.segs,
                    panels,
                    job.m,
                    a,
                    &mut out.tiles,
                    job.accumulate,
                );
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `C[:, segs] (+)= A[:, kr] · B[kr, segs]` with the helpers taking their shares. `rhs`
    /// must be the one the team was started with (the helpers hold their own copy of it).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        rhs: Rhs<'_, T>,
        m: usize,
        a: &[T],
        lda: usize,
        kr: Range<usize>,
        segs: Range<usize>,
        c: &mut [T],
        ldc: usize,
        accumulate: bool,
    ) {
        let n_panels = segs.len() * rhs.panels_per_segment();
        let rows = Lhs::rows(a, lda);
        if self.failed.load(Ordering::Acquire) {
            rhs.panels_into(&kr, &segs, 0..n_panels, m, rows, c, ldc, accumulate);
            return;
        }
        let shares = self.outs.len() + 1;
        let job = Job {
            m,
            lda,
            kr: kr.clone(),
            segs: segs.clone(),
            per: n_panels.div_ceil(shares),
            accumulate,
            fused: None,
            pack_lhs: Lhs::<T>::wanted_by_team(m, kr.len(), n_panels),
        };
        if accumulate {
            // Each helper adds to `C`'s values, in the order of the single-threaded path
            // (see `Rhs::gather`).
            for (i, out) in self.outs.iter().enumerate() {
                let panels = share(&job, &rhs, i + 1);
                let mut out = lock(out.lock());
                out.tiles.resize(panels.len() * m * NR, T::zero());
                rhs.gather(&segs, panels, m, c, ldc, &mut out.tiles);
            }
        }
        let target = self.post(&job, &a[..(m - 1) * lda + kr.end]);
        // The caller's share, straight into C, from the team's copy (packed where the job says).
        {
            let left = lock(self.a.read());
            let own = left.lhs(&job);
            rhs.panels_into(&kr, &segs, share(&job, &rhs, 0), m, own, c, ldc, accumulate);
        }
        self.wait_helpers(target);
        for (i, out) in self.outs.iter().enumerate() {
            let panels = share(&job, &rhs, i + 1);
            if self.failed.load(Ordering::Acquire) {
                rhs.panels_into(&kr, &segs, panels, m, rows, c, ldc, accumulate);
                continue;
            }
            let out = lock(out.lock());
            rhs.scatter(&segs, panels, m, &out.tiles, c, ldc, false);
        }
    }

    /// One fused inference step at time index `at.t`: `h_new = GRU(h, x[:, t])` for all `m`
    /// rows, the units split between the caller and the helpers. The team must have been started
    /// with a [`StepCtx`]; `tiles` is the caller's scratch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fused_step(
        &self,
        rhs: Rhs<'_, T>,
        ctx: &StepCtx<'_, T>,
        at: StepAt,
        m: usize,
        h: &[T],
        h_new: &mut [T],
        tiles: &mut Vec<T>,
    ) {
        let u = ctx.units;
        let rows = Lhs::rows(h, u);
        if self.failed.load(Ordering::Acquire) {
            for q in 0..rhs.panels_per_segment() {
                fused_panel(&rhs, ctx, at, q, m, rows, tiles, h_new, u, q * NR);
            }
            return;
        }
        let shares = self.outs.len() + 1;
        let job = Job {
            m,
            lda: u,
            kr: 0..u,
            segs: 0..3,
            per: rhs.panels_per_segment().div_ceil(shares),
            accumulate: false,
            fused: Some(at),
            pack_lhs: !at.zero && Lhs::<T>::wanted_by_team(m, u, 3 * rhs.panels_per_segment()),
        };
        for (s, claim) in self.claims.iter().enumerate() {
            claim.set(fused_share(&job, &rhs, s));
        }
        // `post` publishes the claims with the job (release on `posted`).
        let target = self.post(&job, &h[..m * u]);
        {
            let left = lock(self.a.read());
            let own = left.lhs(&job);
            while let Some(q) = next_panel(&self.claims, 0) {
                fused_panel(&rhs, ctx, at, q, m, own, tiles, h_new, u, q * NR);
            }
        }
        self.wait_helpers(target);
        if self.failed.load(Ordering::Acquire) {
            // A helper gave up or was given up on mid-step: which of its panels are done is
            // unknown, so the caller computes every panel (the same values) itself.
            for q in 0..rhs.panels_per_segment() {
                fused_panel(&rhs, ctx, at, q, m, rows, tiles, h_new, u, q * NR);
            }
            return;
        }
        let tl = m * NR;
        for out in &self.outs {
            let out = lock(out.lock());
            for (j, &q) in out.panels.iter().enumerate() {
                let w = NR.min(u - q * NR);
                let tile = &out.tiles[j * tl..(j + 1) * tl];
                for (b, row) in tile.chunks_exact(NR).enumerate() {
                    h_new[b * u + q * NR..b * u + q * NR + w].copy_from_slice(&row[..w]);
                }
            }
        }
    }
}

impl<T: Float> Team<T> {
    /// Hands `job` and its left operand (rows `a`, and packed where `job.pack_lhs`) to the
    /// helpers; returns the `done` count at which all of them have finished it.
    fn post(&self, job: &Job, a: &[T]) -> usize {
        {
            let mut sa = lock(self.a.write());
            let sa = &mut *sa;
            sa.rows.clear();
            sa.rows.extend_from_slice(a);
            if job.pack_lhs {
                grow(&mut sa.packed, job.m * job.kr.len());
                Lhs::pack_into(a, job.lda, job.m, &job.kr, &mut sa.packed);
            }
        }
        *lock(self.job.lock()) = job.clone();
        let target = self.done.load(Ordering::Acquire) + self.outs.len();
        self.posted.fetch_add(1, Ordering::AcqRel);
        target
    }

    /// Waits until the helpers reach `target` or the team has failed; marks it failed when they
    /// keep the caller waiting longer than [`GIVE_UP`].
    fn wait_helpers(&self, target: usize) {
        let arrived = wait_for(
            || self.done.load(Ordering::Acquire) >= target || self.failed.load(Ordering::Acquire),
            Some(GIVE_UP),
        );
        if !arrived {
            self.failed.store(true, Ordering::Release);
        }
    }
}

/// The unit panels (of [`NR`] units) of share `s` in a fused step.
fn fused_share<T: Float>(job: &Job, rhs: &Rhs<'_, T>, s: usize) -> Range<usize> {
    let n = rhs.panels_per_segment();
    (s * job.per).min(n)..((s + 1) * job.per).min(n)
}

/// Which step a fused step is: time index `t`, and whether the state is all zeros (no initial
/// state, first step: `h·U = 0` exactly and is not computed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepAt {
    /// Input time index.
    pub t: usize,
    /// The state is all zeros.
    pub zero: bool,
}

/// One fused inference step on the calling thread alone, every unit panel in order: what
/// [`Team::fused_step`] computes, with the same sums (`h` packed into `packed_h` where the
/// kernels read it packed). Used where [`super::gru::projects_in_step`] takes wide inputs into
/// the steps but no team runs, so that they are projected in the steps all the same.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_step_alone<T: Float>(
    rhs: Rhs<'_, T>,
    ctx: &StepCtx<'_, T>,
    at: StepAt,
    m: usize,
    h: &[T],
    h_new: &mut [T],
    tiles: &mut Vec<T>,
    packed_h: &mut Vec<T>,
) {
    let u = ctx.units;
    let panels = rhs.panels_per_segment();
    let h = &h[..m * u];
    let hl = if !at.zero && Lhs::<T>::wanted(m, u, 3 * panels) {
        grow(packed_h, m * u);
        Lhs::with_packed(h, u, m, &(0..u), packed_h)
    } else {
        Lhs::rows(h, u)
    };
    for q in 0..panels {
        fused_panel(&rhs, ctx, at, q, m, hl, tiles, h_new, u, q * NR);
    }
}

/// Units `q·NR ..` of one fused step: the three gate panels of `h · U` (and with
/// [`StepInputs::Raw`] of `x_t · W + b`), then the gates and the new state, written to
/// `out[b·ldo + col0 + j]`. The arithmetic is exactly that of the unfused step (same kernels,
/// same order), so results do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
fn fused_panel<T: Float>(
    rhs: &Rhs<'_, T>,
    ctx: &StepCtx<'_, T>,
    at: StepAt,
    q: usize,
    m: usize,
    hl: Lhs<'_, T>,
    tiles: &mut Vec<T>,
    out: &mut [T],
    ldo: usize,
    col0: usize,
) {
    let h = hl.rows;
    let (t, u) = (at.t, ctx.units);
    let g = 3 * u;
    let tl = m * NR;
    let j0 = q * NR;
    tiles.resize(6 * tl, T::zero());
    let (th_tiles, tx_tiles) = tiles.split_at_mut(3 * tl);
    if let StepInputs::Projected(xp) = ctx.inputs {
        // This panel's input projections (one line per row and gate, rows a whole sequence's
        // projections apart: no hardware prefetcher follows them), requested now so that they
        // arrive while the products run (XL forward −1 to −2 %).
        for b in 0..m {
            for gate in 0..3 {
                prefetch(&xp[(b * ctx.time + t) * g + gate * u + j0..]);
            }
        }
    }
    // Gates z, r and ĥ of these units as one group of panels (each value of `h` broadcast once
    // for all three, each panel's own sums), where the kernel can. The three gates' panels
    // `q` are equally wide, so where the group kernel cannot run (`run_panel_group`: with
    // AVX-512, `h` not packed; with AVX2 alone, more than 2 rows), no pair could.
    let grouped = !at.zero && gate_group(rhs, q, m, hl, u, block_depth(u), th_tiles, None);
    // With `x_t` packed, its products for the three gates as one group too (the bias added as
    // they are stored). Short inputs in k-blocks of `KC`: a call without a team projects them
    // before the loop with `run_panel`, which sums the same; wider ones, which are projected in
    // the steps with or without a team, in those of `GROUP_KC` (as `projection::project`).
    let xgrouped = match ctx.inputs {
        StepInputs::Raw {
            x,
            input_dim: d,
            w: wk,
            bias,
            packed_x: Some(px),
        } => {
            let lhs = Lhs {
                rows: &x[t * d..],
                lda: ctx.time * d,
                packed: px.get(t * m * d..(t + 1) * m * d),
            };
            if d <= PROJECT_OWN_MAX_K {
                gate_group(&wk, q, m, lhs, d, block_depth(d), tx_tiles, bias)
            } else {
                gate_group(&wk, q, m, lhs, d, GROUP_KC, tx_tiles, bias)
            }
        }
        _ => false,
    };
    let mut w = 0;
    for gate in 0..3 {
        let (_, width, b, ldb) = rhs.panel(gate, q);
        w = width;
        let tile = &mut th_tiles[gate * tl..(gate + 1) * tl];
        if at.zero {
            tile.fill(T::zero());
        } else if grouped {
            // Done above.
        } else {
            // The owner of a share takes its panels in order, so after the three gates of `q`
            // come those of `q + 1`.
            let next = if gate < 2 {
                rhs.upcoming_at(gate + 1, q)
            } else {
                rhs.upcoming_at(0, q + 1)
            };
            run_panel(m, hl, &(0..u), b, ldb, w, tile, NR, false, next, None);
        }
        if let StepInputs::Raw {
            x,
            input_dim: d,
            w: wk,
            bias,
            ..
        } = ctx.inputs
        {
            if xgrouped {
                // Done above.
                continue;
            }
            // Rows b·T + t of x: offset t·D, stride T·D.
            let (_, _, b, ldb) = wk.panel(gate, q);
            let xt = &mut tx_tiles[gate * tl..(gate + 1) * tl];
            run_panel(
                m,
                Lhs::rows(&x[t * d..], ctx.time * d),
                &(0..d),
                b,
                ldb,
                w,
                xt,
                NR,
                false,
                None,
                bias.map(|bias| &bias[gate * u + j0..gate * u + j0 + w]),
            );
        }
    }
    let (tz, rest) = th_tiles.split_at_mut(tl);
    let (tr, th) = rest.split_at_mut(tl);
    // The input projection of row `b`, gate `gate`, these units.
    let xin = |b: usize, gate: usize| -> &[T] {
        match ctx.inputs {
            StepInputs::Projected(xp) => {
                let o = (b * ctx.time + t) * g + gate * u + j0;
                &xp[o..o + w]
            }
            StepInputs::Raw { .. } => {
                let o = gate * tl + b * NR;
                &tx_tiles[o..o + w]
            }
        }
    };
    // Each activation runs once over the whole `m × NR` tile (a call per row and gate cost more
    // than the math at these widths). Columns `w..NR` of a narrow last panel hold leftovers
    // that are activated but never read.
    for b in 0..m {
        for (v, xv) in tz[b * NR..b * NR + w].iter_mut().zip(xin(b, 0)) {
            *v += *xv;
        }
        for (v, xv) in tr[b * NR..b * NR + w].iter_mut().zip(xin(b, 1)) {
            *v += *xv;
        }
    }
    activate(ctx.recurrent_activation, tz);
    activate(ctx.recurrent_activation, tr);
    for b in 0..m {
        let c = &mut th[b * NR..b * NR + w];
        if let Some(bh) = ctx.hh_bias {
            for (v, bv) in c.iter_mut().zip(&bh[j0..j0 + w]) {
                *v += *bv;
            }
        }
        for ((v, rv), xv) in c.iter_mut().zip(&tr[b * NR..b * NR + w]).zip(xin(b, 2)) {
            *v = *xv + *rv * *v;
        }
    }
    activate(ctx.activation, th);
    for b in 0..m {
        let (z, c) = (&tz[b * NR..b * NR + w], &th[b * NR..b * NR + w]);
        let hb = &h[b * u + j0..b * u + j0 + w];
        let o = &mut out[b * ldo + col0..b * ldo + col0 + w];
        for (((n, zv), hv), cv) in o.iter_mut().zip(z).zip(hb).zip(c) {
            *n = *zv * *hv + (T::one() - *zv) * *cv;
        }
    }
}

/// `A[0..m, 0..k] · B` for the three gate panels `q` of `rhs` as one group (each value of `A`
/// broadcast once for all three, each panel's own sums in k-blocks of `bk`), gate `g`'s `m × NR`
/// tile at `tiles[g·m·NR..]`, each gate's columns of `bias` (`3u`) added as they are stored.
/// `false`, having done nothing, where a panel is narrow or the group kernel cannot run.
#[allow(clippy::too_many_arguments)]
fn gate_group<T: Float>(
    rhs: &Rhs<'_, T>,
    q: usize,
    m: usize,
    lhs: Lhs<'_, T>,
    k: usize,
    bk: usize,
    tiles: &mut [T],
    bias: Option<&[T]>,
) -> bool {
    let p: [(usize, usize, &[T], usize); 3] = std::array::from_fn(|g| rhs.panel(g, q));
    if !p.iter().all(|x| x.1 == NR && x.3 == NR) {
        return false;
    }
    // Full panels: units j0..j0 + NR of each gate exist.
    let (u, j0, tl) = (rhs.seg(), q * NR, m * NR);
    let bias = bias.map(|b| std::array::from_fn(|g| &b[g * u + j0..g * u + j0 + NR]));
    // A streamed kernel's next panels (those of `q + 1`, which the owner of a share computes
    // next) are requested while these run.
    let next: [&[T]; 3] = std::array::from_fn(|g| rhs.upcoming_at(g, q + 1).unwrap_or(&[]));
    run_panel_group::<T, 3>(
        m,
        lhs,
        &(0..k),
        bk,
        [p[0].2, p[1].2, p[2].2],
        tiles,
        [0, tl, 2 * tl],
        NR,
        false,
        bias,
        next,
    )
}

/// The panel indices (within `job.segs`) of share `s`.
fn share<T: Float>(job: &Job, rhs: &Rhs<'_, T>, s: usize) -> Range<usize> {
    let n = job.segs.len() * rhs.panels_per_segment();
    (s * job.per).min(n)..((s + 1) * job.per).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gemm::Operand;
    use crate::engine::packed::PackedRhs;

    /// Runs `body` on the team while a thread holds helper 0's output lock for `hold`, so the
    /// helper stalls after taking the job: the caller takes every panel (its own and the
    /// helper's), and if `hold` is longer than [`GIVE_UP`] it also gives the helper up.
    fn with_late_helper<T: Float>(team: &Team<T>, hold: Duration, body: impl FnOnce()) {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let _g = team.outs[0].lock().unwrap();
                held_tx.send(()).unwrap();
                std::thread::sleep(hold);
            });
            held_rx.recv().unwrap();
            body();
        });
    }

    /// What a test does to the team before its products: nothing, mark it failed, or stall
    /// helper 0 for a while (see [`with_late_helper`]).
    #[derive(Clone, Copy, Debug)]
    enum Trouble {
        None,
        Failed,
        Late(Duration),
    }

    const TROUBLES: [Trouble; 4] = [
        Trouble::None,
        Trouble::Failed,
        Trouble::Late(Duration::from_micros(500)),
        Trouble::Late(Duration::from_millis(10)),
    ];

    /// Runs `body` on `team` after doing `trouble` to it.
    fn with_trouble<T: Float>(team: &Team<T>, trouble: Trouble, body: impl FnOnce()) {
        match trouble {
            Trouble::None => body(),
            Trouble::Failed => {
                team.failed.store(true, Ordering::Release);
                body();
            }
            Trouble::Late(hold) => with_late_helper(team, hold, body),
        }
    }

    /// `run(threads, trouble)` equals `want` for 2 and 3 threads and every [`TROUBLES`] entry.
    fn assert_matches_under_trouble(want: &[f32], run: impl Fn(usize, Trouble) -> Vec<f32>) {
        for threads in [2, 3] {
            for trouble in TROUBLES {
                assert_eq!(
                    run(threads, trouble),
                    want,
                    "{threads} threads, {trouble:?}"
                );
            }
        }
    }

    fn product(threads: usize, trouble: Trouble) -> Vec<f32> {
        // k spans three of the AVX2 kernel's k-blocks: accumulating products must add them to
        // `C` in the single-threaded order.
        let (m, k, seg) = (9, 600, 40);
        let b: Vec<f32> = (0..k * 3 * seg).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut pk = PackedRhs::new();
        pk.pack(Operand::new(&b[..], 3 * seg), k, seg, 3);
        let rhs = Rhs::Packed(&pk);
        let mut c = vec![0.25f32; m * 3 * seg];
        if threads == 1 {
            for _ in 0..3 {
                rhs.matmul(
                    m,
                    &a,
                    k,
                    0..k,
                    0..3,
                    &mut c,
                    3 * seg,
                    true,
                    1,
                    &mut Vec::new(),
                );
            }
            return c;
        }
        Team::run(threads, rhs, None, |team| {
            with_trouble(team, trouble, || {
                for _ in 0..3 {
                    // Several steps: the helpers must follow every posted job.
                    team.matmul(rhs, m, &a, k, 0..k, 0..3, &mut c, 3 * seg, true);
                }
            })
        });
        c
    }

    /// One fused step of `ctx` at `at` for the `m` rows of `h`, on a team of `threads` after
    /// doing `trouble` to it.
    fn team_step(
        threads: usize,
        trouble: Trouble,
        rhs: Rhs<'_, f32>,
        ctx: &StepCtx<'_, f32>,
        at: StepAt,
        m: usize,
        h: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * ctx.units];
        Team::run(threads, rhs, Some(*ctx), |team| {
            let mut tiles = Vec::new();
            with_trouble(team, trouble, || {
                team.fused_step(rhs, ctx, at, m, h, &mut out, &mut tiles)
            })
        });
        out
    }

    /// Fused steps on 2 and 3 threads give the caller-only result, also when helper 0 arrives
    /// late or is given up on (see [`product`]).
    #[test]
    fn fused_steps_match_when_panels_move_between_threads() {
        // 600 units: `U` is 4.1 MiB, so the panels also request their next ones ahead.
        let (m, u, time) = (7, 600, 3);
        let g = 3 * u;
        let uw: Vec<f32> = (0..u * g).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
        let xp: Vec<f32> = (0..m * time * g).map(|i| (i as f32 * 0.13).cos()).collect();
        let hb: Vec<f32> = (0..u).map(|i| i as f32 * 0.01).collect();
        let h: Vec<f32> = (0..m * u).map(|i| (i as f32 * 0.07).sin()).collect();
        let mut pk = PackedRhs::new();
        pk.pack(Operand::new(&uw[..], g), u, u, 3);
        let rhs = Rhs::Packed(&pk);
        assert!(rhs.upcoming_at(0, 1).is_some_and(|n| !n.is_empty()));
        let ctx = StepCtx {
            inputs: StepInputs::Projected(&xp),
            time,
            units: u,
            hh_bias: Some(&hb),
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
        };
        let at = StepAt { t: 1, zero: false };
        let run = |threads, trouble| team_step(threads, trouble, rhs, &ctx, at, m, &h);
        let want = run(2, Trouble::Failed);
        assert!(want.iter().all(|v| v.is_finite()));
        assert_matches_under_trouble(&want, run);
    }

    /// Fused steps that project their own inputs (`StepInputs::Raw`: narrow and wide inputs,
    /// `x_t` packed where the kernels read it packed) give on 2 and 3 threads what
    /// [`fused_step_alone`] gives on one, also when helper 0 arrives late or is given up on.
    /// (Sequences reach the team with wide inputs only where `U` is too large to split the
    /// batch, `gru::batch_parts`, so `engine_paths` cannot afford that case.)
    #[test]
    fn fused_steps_projecting_their_inputs_match_one_thread() {
        for d in [40, 300] {
            let (m, u, time, t) = (9, 96, 3, 1);
            let g = 3 * u;
            let w: Vec<f32> = (0..d * g).map(|i| (i as f32 * 0.29).sin() * 0.1).collect();
            let uw: Vec<f32> = (0..u * g).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
            let x: Vec<f32> = (0..m * time * d).map(|i| (i as f32 * 0.13).cos()).collect();
            let bias: Vec<f32> = (0..g).map(|i| i as f32 * 0.003 - 0.2).collect();
            let hb: Vec<f32> = (0..u).map(|i| i as f32 * 0.01).collect();
            let h: Vec<f32> = (0..m * u).map(|i| (i as f32 * 0.07).sin()).collect();
            let (mut pk, mut wp) = (PackedRhs::new(), PackedRhs::new());
            pk.pack(Operand::new(&uw[..], g), u, u, 3);
            wp.pack(Operand::new(&w[..], g), d, u, 3);
            let rhs = Rhs::Packed(&pk);
            // Each step's rows `b·T + t` packed at `t·B·D`, as `gru::sequence_rows` packs them.
            let packed_x = Lhs::<f32>::packs().then(|| {
                let mut px = vec![0f32; time * m * d];
                for (s, dst) in px.chunks_mut(m * d).enumerate() {
                    Lhs::pack_into(&x[s * d..], time * d, m, &(0..d), dst);
                }
                px
            });
            let ctx = StepCtx {
                inputs: StepInputs::Raw {
                    x: &x,
                    input_dim: d,
                    w: Rhs::Packed(&wp),
                    bias: Some(&bias),
                    packed_x: packed_x.as_deref(),
                },
                time,
                units: u,
                hh_bias: Some(&hb),
                activation: Activation::Tanh,
                recurrent_activation: Activation::Sigmoid,
            };
            let at = StepAt { t, zero: false };
            let mut want = vec![0f32; m * u];
            fused_step_alone(
                rhs,
                &ctx,
                at,
                m,
                &h,
                &mut want,
                &mut Vec::new(),
                &mut Vec::new(),
            );
            assert!(want.iter().all(|v| v.is_finite() && *v != 0.0), "d = {d}");
            assert_matches_under_trouble(&want, |threads, trouble| {
                team_step(threads, trouble, rhs, &ctx, at, m, &h)
            });
        }
    }

    /// Every panel of every share is taken exactly once, whichever threads race for them.
    #[test]
    fn claims_hand_out_each_panel_once() {
        let claims: Vec<Claim> = (0..3).map(|_| Claim::default()).collect();
        claims[0].set(0..5);
        assert_eq!(claims[0].take(false), Some(0));
        assert_eq!(claims[0].take(true), Some(4));
        claims[0].set(2..2);
        assert_eq!(claims[0].take(false), None);
        for round in 0..50 {
            let per = 7 + round % 5;
            for (s, c) in claims.iter().enumerate() {
                c.set(s * per..((s + 1) * per).min(2 * per + 3));
            }
            let total = 2 * per + 3;
            let taken: Vec<Vec<usize>> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..3)
                    .map(|own| {
                        let claims = &claims;
                        sc.spawn(move || {
                            let mut got = Vec::new();
                            while let Some(q) = next_panel(claims, own) {
                                got.push(q);
                            }
                            got
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // A thread takes its own share from the front, in order.
            for (own, got) in taken.iter().enumerate() {
                let mine: Vec<usize> = got
                    .iter()
                    .copied()
                    .filter(|q| (own * per..(own + 1) * per).contains(q))
                    .collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            }
            let mut all: Vec<usize> = taken.concat();
            all.sort_unstable();
            assert_eq!(all, (0..total).collect::<Vec<_>>(), "round {round}");
        }
    }

    /// The team gives exactly the single-threaded result, also when a helper is marked failed
    /// (the caller then computes every share itself instead of waiting), arrives late (the
    /// caller takes its panels) or is given up on mid-product (the caller computes the
    /// helper's share itself; the helper's tiles were never added to `C`).
    #[test]
    fn team_matches_single_thread_and_survives_failed_helpers() {
        assert_matches_under_trouble(&product(1, Trouble::None), product);
    }
}
