//! Batch-1 inference split between two threads by units.
//!
//! A batch-1 step is one row of `h` times all of `U` (`u × 3u`), then the gates: too little work
//! for a [`super::team::Team`], whose threads are started per call and share each step's left
//! operand through locks. But at batch 1 the time goes to reading `U`, not to arithmetic, and
//! from 128 units `U` (192 KiB) no longer fits a core's L1 (at 512 units, 3 MiB, not its L2).
//! Split by units, each of two cores reads only its own columns of `U`, from its own caches, and
//! computes their gates; the two halves of the new state cross between the cores once per step.
//! Below [`PAIR_MIN_UNITS`] that handoff costs about what the split saves. Keras' other
//! convention (`reset_after = false`) needs two crossings per step: the candidate's product
//! takes `r ⊙ h` over all units, so the halves of `r ⊙ h` cross first, then those of the new
//! state.
//!
//! The helper is a rayon job ([`rayon::join`]) that another worker of the caller's pool picks
//! up when it is free, while the caller projects the inputs. The caller never waits for it to
//! start: it runs the steps alone until the helper says it is ready (and the pace of a step
//! alone is known, see [`Pace`]), hands it the state at the next step boundary, and from then
//! on the two run in lock step. Each value of a half crosses in one atomic word with the number
//! of the exchange it belongs to (one per computed step), so a core that waits for the other's
//! half spins on the very cache lines that bring it, not on a flag and then the data. Two
//! buffers, by exchange parity, keep a fast thread from overwriting a half the other has not
//! read: its next exchange needs that other's half first. Steps a mask skips are skipped by
//! both threads without an exchange. A helper that never comes costs nothing but the check;
//! one that stops answering for [`GIVE_UP`] (a busy machine) is left behind and the caller
//! finishes alone.
//!
//! Every unit is summed as the single-threaded batch-1 step sums it ([`Rhs::row_cols`]) and
//! its gates are the same element-wise operations, so the results are those of one thread, bit
//! for bit. No `unsafe`: the helper reads only what the caller shares, through atomics and a
//! `OnceLock`. `f32` only (the stamp and the value share a 64-bit word).

use super::gru::{activate, team_size};
use super::math::vectorized;
use super::packed::{strip_granule, Rhs};
use super::team::{wait_for, GIVE_UP};
use crate::float::Float;
use crate::layers::activation::Activation;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fewest units for which a batch-1 sequence is split: below it a step's products take about
/// as long as the cross-core handoff of the state. `grucell bench --sizes 1,100,32,u`, AMD
/// EPYC Zen 4 VM, one thread against two: u = 64 0.072 against 0.074 ms, 96 0.144 against
/// 0.139, 128 0.236 against 0.196, 192 0.478 against 0.371, 256 0.826 against 0.635, 512 3.72
/// against 2.12.
const PAIR_MIN_UNITS: usize = 128;

/// Fewest time steps for which a batch-1 sequence is split.
const PAIR_MIN_STEPS: usize = 8;

/// Helper states.
const OPEN: usize = 0;
const READY: usize = 1;
const CLOSED: usize = 2;

/// `start` before the caller hands the state over.
const NOT_STARTED: usize = usize::MAX;

/// What both threads read: one batch-1 inference sequence (element-wise activations, no
/// recurrent dropout, inputs projected before the loop).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairRun<'a, T> {
    /// `U` as the time loop reads it.
    pub rhs: Rhs<'a, T>,
    /// Time steps `T`.
    pub time: usize,
    /// Units `u`.
    pub units: usize,
    /// Keras' convention: the reset gate applied after the candidate's recurrent product.
    pub reset_after: bool,
    /// Recurrent candidate bias `(u)` (`reset_after` only).
    pub hh_bias: Option<&'a [T]>,
    /// Candidate activation.
    pub activation: Activation,
    /// Gate activation.
    pub recurrent_activation: Activation,
    /// Steps taken last to first.
    pub go_backwards: bool,
    /// The state starts at zero and `U` is finite: the first step's products are exactly zero.
    pub zero_start: bool,
}

impl<T> PairRun<'_, T> {
    /// Step `k`'s input projections `(3u)` in `xp` `(T, 3u)`.
    fn projections<'x>(&self, xp: &'x [T], k: usize) -> &'x [T] {
        let (g, t) = (3 * self.units, self.t(k));
        &xp[t * g..(t + 1) * g]
    }

    /// The time index of step `k`.
    fn t(&self, k: usize) -> usize {
        if self.go_backwards {
            self.time - 1 - k
        } else {
            k
        }
    }
}

/// Whether a call of `batch` rows, `time` steps and `units` units with `threads` threads runs
/// split by units: `f32`, batch 1, long and wide enough, two hardware threads for the call, and
/// the caller on a worker of a rayon pool with another worker (the helper must not be a thread
/// started per call, nor a job injected into a pool from outside, each costing more than S's
/// whole sequence).
pub(crate) fn wanted<T: Float>(threads: usize, batch: usize, time: usize, units: usize) -> bool {
    batch == 1
        && T::slice_f32(&[T::zero()]).is_some()
        && time >= PAIR_MIN_STEPS
        && units >= PAIR_MIN_UNITS
        && team_size(threads) >= 2
        && rayon::current_thread_index().is_some()
        && rayon::current_num_threads() >= 2
        && split_at::<T>(units).is_some()
        && Pace::may_pair()
}

/// Where the caller's units end and the helper's begin: half the strips of
/// [`strip_granule`] columns (the caller takes the odd one), `None` for fewer than two.
fn split_at<T: Float>(units: usize) -> Option<usize> {
    let g = strip_granule::<T>();
    let blocks = units.div_ceil(g);
    (blocks >= 2).then(|| blocks.div_ceil(2) * g)
}

/// Eight stamped values: one cache line.
#[repr(align(64))]
struct Line([AtomicU64; 8]);

/// Steps per timing window of [`Pace`].
const WINDOW: usize = 8;

/// Paired steps not timed (see [`Pace::paired_step`]).
const WARM_UP: usize = 2;

/// Largest ratio of a paired step's time to a step's alone for which the caller keeps its
/// helper.
const KEEP_BELOW: f64 = 0.9;

/// Calls that run alone after one found its paired steps too slow (then pairing is tried
/// again).
const BACK_OFF_CALLS: usize = 8;

/// The last pace alone measured: `units << 32 | nanoseconds per step`.
static ALONE_PACE: AtomicU64 = AtomicU64::new(0);

/// Calls left to run alone (see [`BACK_OFF_CALLS`]).
static BACK_OFF: AtomicUsize = AtomicUsize::new(0);

/// The caller's clock: how long a step takes alone, and whether paired steps are faster.
///
/// Two cores pay off only while a handoff between them is quick. On the AMD EPYC VM measured,
/// two threads passing a cache line back and forth took 110 ns a round trip in some runs and
/// 500 ns in others (where the host had put the virtual CPUs), and at 500 ns paired steps of 64
/// units took twice as long as steps alone (0.16 against 0.07 ms for 100 steps). So the pace of a step
/// alone is timed over [`WINDOW`] steps (after the first, which may skip its products) and
/// remembered for the next calls with as many units ([`ALONE_PACE`]); paired steps are timed
/// in windows of as many steps (after [`WARM_UP`]), and after two windows in a row slower than
/// [`KEEP_BELOW`] of the pace alone, the caller sends the helper away, finishes alone, and the
/// next [`BACK_OFF_CALLS`] calls do not pair.
struct Pace {
    units: usize,
    /// Nanoseconds per step alone, once known.
    alone_ns: Option<f64>,
    from: Instant,
    steps: usize,
    /// Paired windows timed so far.
    windows: usize,
    /// The last paired window was slow.
    slow: bool,
}

impl Pace {
    fn new(units: usize) -> Self {
        let known = ALONE_PACE.load(Ordering::Relaxed);
        Pace {
            units,
            alone_ns: (known >> 32 == units as u64).then_some((known & 0xffff_ffff) as f64),
            from: Instant::now(),
            steps: 0,
            windows: 0,
            slow: false,
        }
    }

    /// Whether a call may pair (not while backing off; each call asking counts).
    fn may_pair() -> bool {
        BACK_OFF
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    fn restart(&mut self) {
        self.from = Instant::now();
        self.steps = 0;
    }

    /// Counts a step computed alone (not the first of the call).
    fn alone_step(&mut self) {
        if self.steps == 0 {
            self.restart();
        }
        self.steps += 1;
        if self.steps > WINDOW {
            let ns = self.from.elapsed().as_nanos() as f64 / WINDOW as f64;
            self.alone_ns = Some(ns);
            let word = (self.units as u64) << 32 | (ns as u64).min(0xffff_ffff);
            ALONE_PACE.store(word, Ordering::Relaxed);
            self.steps = 0;
        }
    }

    /// Counts a paired step: `false` when the window just timed says to stop pairing.
    fn paired_step(&mut self) -> bool {
        self.steps += 1;
        if self.windows == 0 && self.steps == WARM_UP {
            // The first paired steps read each core's part of `U` into its L1: not timed.
            self.restart();
            self.windows = 1;
            return true;
        }
        if self.steps < WINDOW {
            return true;
        }
        let ns = self.from.elapsed().as_nanos() as f64 / self.steps as f64;
        self.restart();
        self.windows += 1;
        // One slow window is often a passing hiccup (an interrupt, a descheduled core): two
        // in a row end the pairing.
        let slow = self.alone_ns.is_some_and(|a| ns >= KEEP_BELOW * a);
        let stop = slow && self.slow;
        self.slow = slow;
        if stop {
            BACK_OFF.store(BACK_OFF_CALLS, Ordering::Relaxed);
        }
        !stop
    }
}

/// What the two threads share.
struct Exchange<'a, T> {
    /// The helper's state: [`OPEN`], [`READY`] or [`CLOSED`].
    phase: Padded<AtomicUsize>,
    /// The step from which the two run together ([`NOT_STARTED`] before).
    start: Padded<AtomicUsize>,
    /// The input projections, once the caller has made them.
    xp: OnceLock<&'a [T]>,
    /// The state of exchanges of each parity, unit by unit: `(exchange << 32) | f32 bits`. Each
    /// thread writes its own units; the split falls on a line boundary. Exchange 0 is the
    /// caller's hand-over of the whole state; exchange `e` the state after the `e`-th step
    /// computed after it.
    h: [Vec<Line>; 2],
}

/// Keeps the caller's and the helper's words on separate cache lines.
#[repr(align(128))]
struct Padded<A>(A);

impl<T: Float> Exchange<'_, T> {
    fn closed(&self) -> bool {
        self.phase.0.load(Ordering::Acquire) == CLOSED
    }

    fn word(&self, e: usize, i: usize) -> &AtomicU64 {
        &self.h[e % 2][i / 8].0[i % 8]
    }

    /// Publishes `v` as units `cols` of exchange `e`.
    fn put(&self, e: usize, cols: Range<usize>, v: &[T]) {
        let stamp = (e as u64 & 0xffff_ffff) << 32;
        for (i, x) in cols.zip(v) {
            let bits = (x.f64() as f32).to_bits();
            self.word(e, i)
                .store(stamp | u64::from(bits), Ordering::Release);
        }
    }

    /// The caller's side of exchange `e`: publishes units `own` of `buf`, then takes units
    /// `other` into it (`false`: the helper did not answer within [`GIVE_UP`]).
    fn swap(&self, e: usize, own: &Range<usize>, other: &Range<usize>, buf: &mut [T]) -> bool {
        self.put(e, own.clone(), &buf[own.clone()]);
        self.take(e, other.clone(), &mut buf[other.clone()], Some(GIVE_UP))
    }

    /// Reads units `cols` of exchange `e` into `v`, each as soon as it is published: `false`
    /// if `give_up` passes first, or the helper's phase is closed while waiting.
    ///
    /// Last unit first: [`Exchange::put`] publishes in order, so once the last has come the
    /// others are there too (release and acquire), and their cache lines, requested together
    /// rather than one after another, cross between the cores in about the time of one.
    fn take(&self, e: usize, cols: Range<usize>, v: &mut [T], give_up: Option<Duration>) -> bool {
        let stamp = e as u64 & 0xffff_ffff;
        for (i, x) in cols.zip(v).rev() {
            let word = self.word(e, i);
            let ready = || word.load(Ordering::Acquire) >> 32 == stamp;
            // (Woken by `closed` rather than by the value: not there.)
            let came = ready() || (wait_for(|| ready() || self.closed(), give_up) && ready());
            if !came {
                return false;
            }
            let bits = word.load(Ordering::Acquire) as u32;
            *x = T::of(f64::from(f32::from_bits(bits)));
        }
        true
    }
}

/// Marks the helper's phase closed when the caller leaves (also on unwinding), so that a
/// helper still waiting returns and `rayon::join` can finish.
struct CloseOnDrop<'e, 'a, T: Float>(&'e Exchange<'a, T>);
impl<T: Float> Drop for CloseOnDrop<'_, '_, T> {
    fn drop(&mut self) {
        self.0.phase.0.store(CLOSED, Ordering::Release);
    }
}

/// The caller's side of [`run`]: the outputs and its scratch.
pub(crate) struct CallerBufs<'b, T> {
    /// The state `(u)`: the initial one on entry, the final one on return.
    pub h: &'b mut [T],
    /// Scratch `(u)`.
    pub h2: &'b mut [T],
    /// Scratch `(3u)`.
    pub pre: &'b mut [T],
    /// Scratch `(u)`: `r ⊙ h` (`reset_after = false`).
    pub t: &'b mut [T],
    /// Output row `k` at `k·u` (`(T, u)`), where wanted.
    pub sequence: Option<&'b mut [T]>,
    /// The last output `(u)`: the state after the last unmasked step, or zeros (`zero_output`).
    pub last_output: &'b mut [T],
}

/// Runs the sequence on the input projections `(T, 3u)` that `project` makes (on the calling
/// thread, while the helper comes), writing `bufs`. `mask[t]` false skips time index `t`: the
/// state is carried over and the output row repeats the last output (zeros where
/// `zero_output`), as `gru::sequence_rows` does.
pub(crate) fn run<'a, T: Float>(
    ctx: &PairRun<'_, T>,
    project: impl FnOnce() -> &'a [T] + Send,
    mask: Option<&[bool]>,
    zero_output: bool,
    bufs: CallerBufs<'_, T>,
) {
    let u = ctx.units;
    let split = split_at::<T>(u).unwrap_or(u);
    let lines = || {
        (0..u.div_ceil(8))
            .map(|_| Line(Default::default()))
            .collect()
    };
    let ex = Exchange {
        phase: Padded(AtomicUsize::new(OPEN)),
        start: Padded(AtomicUsize::new(NOT_STARTED)),
        xp: OnceLock::new(),
        h: [lines(), lines()],
    };
    let (own, other) = (0..split, split..u);
    // Whether step `k` is skipped by the mask: the same answer on both threads.
    let skipped = |k: usize| mask.is_some_and(|m| !m[ctx.t(k)]);
    let CallerBufs {
        h,
        h2,
        pre,
        t,
        mut sequence,
        last_output,
    } = bufs;
    let t = &mut t[..u];
    last_output[..u].fill(T::zero());
    let caller = || {
        let _close = CloseOnDrop(&ex);
        let xp = project();
        let _ = ex.xp.set(xp);
        let (mut cur, mut next) = (&mut h[..u], &mut h2[..u]);
        let (mut paired, mut alone, mut in_h2) = (false, false, false);
        let mut pace = Pace::new(u);
        // Exchanges made since the hand-over.
        let mut e = 0;
        for k in 0..ctx.time {
            // Hand over at a step boundary once the helper is ready and the pace of a step
            // alone is known (not for the last step).
            if !paired
                && !alone
                && k + 1 < ctx.time
                && pace.alone_ns.is_some()
                && ex.phase.0.load(Ordering::Acquire) == READY
            {
                ex.put(0, 0..u, cur);
                ex.start.0.store(k, Ordering::Release);
                paired = true;
                pace.restart();
            }
            if skipped(k) {
                if zero_output {
                    last_output[..u].fill(T::zero());
                }
                if let Some(seq) = sequence.as_deref_mut() {
                    seq[k * u..(k + 1) * u].copy_from_slice(&last_output[..u]);
                }
                continue;
            }
            if paired {
                let answered = if ctx.reset_after {
                    let step = |cols: &Range<usize>, pre: &mut [T], next: &mut [T]| {
                        step_cols(ctx, xp, k, cur, cols.clone(), pre, &mut next[cols.clone()]);
                    };
                    step(&own, pre, next);
                    e += 1;
                    let answered = ex.swap(e, &own, &other, next);
                    if !answered {
                        // The helper stopped answering: this step's other half here, then alone.
                        step(&other, pre, next);
                    }
                    answered
                } else {
                    // Two crossings: the halves of `r ⊙ h`, then those of the new state. Each
                    // half's z and r stay in its own part of `pre` for the blend.
                    let (pre_own, pre_other) = pre.split_at_mut(3 * split);
                    let zr = |cols: &Range<usize>, pre: &mut [T], t: &mut [T]| {
                        zr_cols(ctx, xp, k, cur, cols.clone(), pre, &mut t[cols.clone()]);
                    };
                    let cand = |cols: &Range<usize>, pre: &mut [T], t: &[T], next: &mut [T]| {
                        let out = &mut next[cols.clone()];
                        cand_cols(ctx, xp, k, cur, t, cols.clone(), pre, out);
                    };
                    zr(&own, pre_own, t);
                    e += 1;
                    let mut answered = ex.swap(e, &own, &other, t);
                    if !answered {
                        zr(&other, pre_other, t);
                    }
                    cand(&own, pre_own, t, next);
                    if answered {
                        e += 1;
                        answered = ex.swap(e, &own, &other, next);
                        if !answered {
                            // The other half's z and r for its blend (its `r ⊙ h` again, the
                            // same values).
                            zr(&other, pre_other, t);
                        }
                    }
                    if !answered {
                        cand(&other, pre_other, t, next);
                    }
                    answered
                };
                if !answered || !pace.paired_step() {
                    paired = false;
                    alone = true;
                    ex.phase.0.store(CLOSED, Ordering::Release);
                }
            } else {
                if ctx.reset_after {
                    step_cols(ctx, xp, k, cur, 0..u, pre, next);
                } else {
                    zr_cols(ctx, xp, k, cur, 0..u, pre, t);
                    cand_cols(ctx, xp, k, cur, t, 0..u, pre, next);
                }
                if k > 0 && !alone && pace.alone_ns.is_none() {
                    pace.alone_step();
                }
            }
            last_output[..u].copy_from_slice(next);
            if let Some(seq) = sequence.as_deref_mut() {
                seq[k * u..(k + 1) * u].copy_from_slice(next);
            }
            std::mem::swap(&mut cur, &mut next);
            in_h2 = !in_h2;
        }
        if in_h2 {
            next.copy_from_slice(cur);
        }
        #[cfg(test)]
        tests::HANDED_OVER.with(|c| c.set(c.get() + usize::from(e > 0)));
    };
    let helper = || {
        if ex
            .phase
            .0
            .compare_exchange(OPEN, READY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // Until the hand-over, take part in the pool's other work (the caller's projection may
        // be split between workers).
        while ex.start.0.load(Ordering::Acquire) == NOT_STARTED && !ex.closed() {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
        let k0 = ex.start.0.load(Ordering::Acquire);
        let Some(&xp) = ex.xp.get() else {
            return;
        };
        if k0 == NOT_STARTED || ex.closed() {
            return;
        }
        let mut cur = vec![T::zero(); u];
        let mut next = vec![T::zero(); u];
        let mut pre = vec![T::zero(); 3 * other.len()];
        let mut t = vec![T::zero(); if ctx.reset_after { 0 } else { u }];
        if !ex.take(0, 0..u, &mut cur, None) {
            return;
        }
        let mut e = 0;
        for k in k0..ctx.time {
            if skipped(k) {
                continue;
            }
            if !ctx.reset_after {
                zr_cols(
                    ctx,
                    xp,
                    k,
                    &cur,
                    other.clone(),
                    &mut pre,
                    &mut t[other.clone()],
                );
                e += 1;
                ex.put(e, other.clone(), &t[other.clone()]);
                if !ex.take(e, own.clone(), &mut t[own.clone()], None) {
                    return;
                }
                cand_cols(
                    ctx,
                    xp,
                    k,
                    &cur,
                    &t,
                    other.clone(),
                    &mut pre,
                    &mut next[other.clone()],
                );
            } else {
                step_cols(
                    ctx,
                    xp,
                    k,
                    &cur,
                    other.clone(),
                    &mut pre,
                    &mut next[other.clone()],
                );
            }
            e += 1;
            ex.put(e, other.clone(), &next[other.clone()]);
            if k + 1 == ctx.time || !ex.take(e, own.clone(), &mut next[own.clone()], None) {
                return;
            }
            std::mem::swap(&mut cur, &mut next);
        }
    };
    rayon::join(caller, helper);
}

/// Units `cols` of step `k` (time index `T − 1 − k` when going backwards) from the state `h`
/// `(u)` and the projections `xp` `(T, 3u)`, into `out` (`cols.len()`), with `pre` (at least
/// `3·|cols|`) as scratch: the arithmetic of the unfused batch-1 step (`gru::step_rows`) on
/// those units alone.
fn step_cols<T: Float>(
    ctx: &PairRun<'_, T>,
    xp: &[T],
    k: usize,
    h: &[T],
    cols: Range<usize>,
    pre: &mut [T],
    out: &mut [T],
) {
    let (u, w) = (ctx.units, cols.len());
    let g = 3 * u;
    let x = ctx.projections(xp, k);
    let pre = &mut pre[..3 * w];
    if ctx.zero_start && k == 0 {
        pre.fill(T::zero());
    } else if w == u {
        // All units on one thread (no helper): the single-threaded product, whose batch-1
        // strips take the gates in alternate orders from step to step (`packed::STRIP_ORDER`).
        ctx.rhs
            .matmul(1, h, u, 0..u, 0..3, pre, g, false, 1, &mut Vec::new());
    } else {
        ctx.rhs.row_gates(h, 0..u, cols.clone(), pre);
    }
    let (z, rest) = pre.split_at_mut(w);
    let (r, cand) = rest.split_at_mut(w);
    let (xz, xr, xh) = (
        &x[cols.clone()],
        &x[u + cols.start..u + cols.end],
        &x[2 * u..],
    );
    let xh = &xh[cols.clone()];
    let (hb, bias) = (&h[cols.clone()], ctx.hh_bias.map(|b| &b[cols.clone()]));
    if let (Activation::Sigmoid, Activation::Tanh) = (ctx.recurrent_activation, ctx.activation) {
        let f32s = (
            T::slice_f32_mut(z),
            T::slice_f32_mut(r),
            T::slice_f32_mut(cand),
            T::slice_f32(xz),
            T::slice_f32(xr),
            T::slice_f32(xh),
            T::slice_f32(hb),
            T::slice_f32_mut(out),
        );
        if let (Some(z), Some(r), Some(c), Some(xz), Some(xr), Some(xh), Some(hb), Some(out)) = f32s
        {
            let bias = bias.and_then(T::slice_f32);
            super::gates::reset_after([z, r, c], [xz, xr, xh], bias, hb, out);
            return;
        }
    }
    vectorized(
        #[inline(always)]
        || {
            z_and_r(ctx.recurrent_activation, z, r, xz, xr);
            if let Some(br) = bias {
                for (c, bv) in cand.iter_mut().zip(br) {
                    *c += *bv;
                }
            }
            for ((c, rv), xv) in cand.iter_mut().zip(&*r).zip(xh) {
                *c = *xv + *rv * *c;
            }
            activate(ctx.activation, cand);
            blend(z, hb, cand, out);
        },
    );
}

/// The first half of a `reset_after = false` step on units `cols` (time index as
/// [`step_cols`]): z and r into `pre[..2w]` (`w = |cols|`) and `r ⊙ h` of those units into `out`
/// (`w`), the arithmetic of the unfused batch-1 step (`gru::step_rows`) on those units alone.
fn zr_cols<T: Float>(
    ctx: &PairRun<'_, T>,
    xp: &[T],
    k: usize,
    h: &[T],
    cols: Range<usize>,
    pre: &mut [T],
    out: &mut [T],
) {
    let (u, w) = (ctx.units, cols.len());
    let x = ctx.projections(xp, k);
    let (z, rest) = pre[..3 * w].split_at_mut(w);
    let r = &mut rest[..w];
    if ctx.zero_start && k == 0 {
        z.fill(T::zero());
        r.fill(T::zero());
    } else {
        ctx.rhs.row_cols(h, 0..u, 0, cols.clone(), z);
        ctx.rhs.row_cols(h, 0..u, 1, cols.clone(), r);
    }
    let (xz, xr, hb) = (
        &x[cols.clone()],
        &x[u + cols.start..u + cols.end],
        &h[cols.clone()],
    );
    if let (Activation::Sigmoid, Activation::Tanh) = (ctx.recurrent_activation, ctx.activation) {
        let f32s = (
            T::slice_f32_mut(z),
            T::slice_f32_mut(r),
            T::slice_f32(xz),
            T::slice_f32(xr),
            T::slice_f32(hb),
            T::slice_f32_mut(out),
        );
        if let (Some(z), Some(r), Some(xz), Some(xr), Some(hb), Some(out)) = f32s {
            super::gates::reset_before_z(z, xz);
            super::gates::reset_before_r(r, xr, hb, out);
            return;
        }
    }
    vectorized(
        #[inline(always)]
        || {
            z_and_r(ctx.recurrent_activation, z, r, xz, xr);
            for ((o, rv), hv) in out.iter_mut().zip(&*r).zip(hb) {
                *o = *rv * *hv;
            }
        },
    );
}

/// The second half of a `reset_after = false` step on units `cols`: the candidate's product of
/// `t = r ⊙ h` (all `u` units) into `pre[2w..3w]`, then the candidate and the blend with z (left
/// in `pre[..w]` by [`zr_cols`]) into `out` (`w`).
#[allow(clippy::too_many_arguments)]
fn cand_cols<T: Float>(
    ctx: &PairRun<'_, T>,
    xp: &[T],
    k: usize,
    h: &[T],
    t: &[T],
    cols: Range<usize>,
    pre: &mut [T],
    out: &mut [T],
) {
    let (u, w) = (ctx.units, cols.len());
    let xh = &ctx.projections(xp, k)[2 * u + cols.start..2 * u + cols.end];
    let pre = &mut pre[..3 * w];
    if ctx.zero_start && k == 0 {
        pre[2 * w..].fill(T::zero());
    } else {
        ctx.rhs
            .row_cols(t, 0..u, 2, cols.clone(), &mut pre[2 * w..]);
    }
    let hb = &h[cols];
    if let (Activation::Sigmoid, Activation::Tanh) = (ctx.recurrent_activation, ctx.activation) {
        let f32s = (
            T::slice_f32_mut(pre),
            T::slice_f32(xh),
            T::slice_f32(hb),
            T::slice_f32_mut(out),
        );
        if let (Some(g3), Some(xh), Some(hb), Some(out)) = f32s {
            super::gates::reset_before_blend(g3, xh, hb, out);
            return;
        }
    }
    let (z, rest) = pre.split_at_mut(w);
    let cand = &mut rest[w..];
    vectorized(
        #[inline(always)]
        || {
            for (c, xv) in cand.iter_mut().zip(xh) {
                *c += *xv;
            }
            activate(ctx.activation, cand);
            blend(z, hb, cand, out);
        },
    );
}

/// z and r of some units from their products (in place) and input projections, with the gate
/// activation: the generic passes of [`step_cols`] and [`zr_cols`].
#[inline(always)]
fn z_and_r<T: Float>(act: Activation, z: &mut [T], r: &mut [T], xz: &[T], xr: &[T]) {
    for (v, xv) in z.iter_mut().zip(xz) {
        *v += *xv;
    }
    for (v, xv) in r.iter_mut().zip(xr) {
        *v += *xv;
    }
    activate(act, z);
    activate(act, r);
}

/// The new state of some units, `h' = z ⊙ h + (1 − z) ⊙ ĥ`, into `out`.
#[inline(always)]
fn blend<T: Float>(z: &[T], h: &[T], cand: &[T], out: &mut [T]) {
    for (((n, zv), hv), cv) in out.iter_mut().zip(z).zip(h).zip(cand) {
        // Keras: z * h + (1 - z) * hh
        *n = *zv * *hv + (T::one() - *zv) * *cv;
    }
}

#[cfg(test)]
mod tests {
    //! The split sequence against the single-threaded one, bit for bit, on every path it has:
    //! units that are and are not multiples of 16, in-place and pre-packed `U`, with and
    //! without biases, initial state, masks (skipped first and last steps, zeroed outputs),
    //! `go_backwards`, input dropout, Keras' default activations (`engine::gates`) and
    //! others (the slice kernels), both of Keras' conventions.
    use super::*;
    use crate::engine::gru::{
        gru_sequence, DropoutMasks, GruParams, SequenceOptions, SequenceOutputs,
    };
    use crate::engine::isa::active;
    use crate::engine::prepacked::PackedWeights;
    use crate::engine::workspace::GruWorkspace;
    use std::cell::Cell;

    std::thread_local! {
        /// Calls of this thread that handed a sequence over to a helper.
        pub(super) static HANDED_OVER: Cell<usize> = const { Cell::new(0) };
    }

    fn ramp(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    struct Case {
        t: usize,
        d: usize,
        u: usize,
        bias: bool,
        h0: bool,
        backwards: bool,
        mask: Option<Vec<bool>>,
        zero_output: bool,
        input_dropout: bool,
        prepack: bool,
        acts: (Activation, Activation),
        reset_after: bool,
    }

    /// Outputs, state and last output of `c` with `threads` threads, and whether the call
    /// handed over to a helper.
    fn run(c: &Case, threads: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, bool) {
        let (t, d, u) = (c.t, c.d, c.u);
        let g = 3 * u;
        let kernel = ramp(d * g, 1, 0.4);
        let recurrent = ramp(u * g, 2, 1.0 / (u as f32).sqrt());
        let xb = ramp(g, 3, 0.2);
        let hb = ramp(u, 4, 0.2);
        let x = ramp(t * d, 5, 1.0);
        let h0 = ramp(u, 6, 0.5);
        let drop: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                ramp(d, 7 + s, 1.0)
                    .iter()
                    .map(|v| if *v > -0.3 { 1.4 } else { 0.0 })
                    .collect()
            })
            .collect();
        let p = GruParams {
            kernel: &kernel,
            recurrent: &recurrent,
            xp_bias: c.bias.then_some(&xb[..]),
            hh_bias: (c.bias && c.reset_after).then_some(&hb[..]),
            input_dim: d,
            units: u,
            reset_after: c.reset_after,
            activation: c.acts.1,
            recurrent_activation: c.acts.0,
            packed: None,
        };
        let packed = c.prepack.then(|| PackedWeights::new(&p, 1).unwrap());
        let p = GruParams {
            packed: packed.as_ref(),
            ..p
        };
        let opts = SequenceOptions {
            mask: c.mask.as_deref(),
            go_backwards: c.backwards,
            zero_output_for_mask: c.zero_output,
            threads,
        };
        let dropout = DropoutMasks {
            input: c
                .input_dropout
                .then(|| [&drop[0][..], &drop[1][..], &drop[2][..]]),
            recurrent: None,
        };
        let mut seq = vec![0f32; t * u];
        let mut last = vec![0f32; u];
        let mut state = vec![0f32; u];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let handed = pool.install(|| {
            let before = HANDED_OVER.with(Cell::get);
            gru_sequence(
                &p,
                &x,
                1,
                t,
                c.h0.then_some(&h0[..]),
                opts,
                dropout,
                SequenceOutputs {
                    sequence: Some(&mut seq),
                    last_output: &mut last,
                    state: &mut state,
                },
                &mut GruWorkspace::new(),
                None,
            );
            HANDED_OVER.with(Cell::get) > before
        });
        (seq, state, last, handed)
    }

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn split_sequences_match_one_thread_bit_for_bit() {
        // (At the CPU's own kernel level, which is process-wide: `tests/engine_paths.rs`
        // compares one and two threads at batch 1 under every level.)
        let level = active();
        let sig_tanh = (Activation::Sigmoid, Activation::Tanh);
        let others = (Activation::HardSigmoid, Activation::Relu);
        let holes = |t: usize| Some((0..t).map(|i| i % 5 != 0 && i + 2 < t).collect());
        let cases = [
            // Keras defaults, pre-packed: the gate loops of `engine::gates`.
            (
                48, 32, 128, true, false, false, None, false, false, true, sig_tanh,
            ),
            // A narrow last panel (u = 150), in place, initial state, backwards.
            (
                40, 7, 150, true, true, true, None, false, false, false, sig_tanh,
            ),
            // No biases; a mask that skips the first and the last two steps, outputs zeroed.
            (
                40,
                5,
                160,
                false,
                false,
                false,
                holes(40),
                true,
                false,
                true,
                sig_tanh,
            ),
            // The same mask, outputs carried over; other activations (the slice kernels).
            (
                40,
                5,
                130,
                true,
                true,
                false,
                holes(40),
                false,
                false,
                false,
                others,
            ),
            // Input dropout (the masked projection), wide units.
            (
                24, 20, 256, true, false, true, None, false, true, true, sig_tanh,
            ),
        ];
        for reset_after in [true, false] {
            let mut handed = 0;
            for (t, d, u, bias, h0, backwards, mask, zero_output, input_dropout, prepack, acts) in
                cases.clone()
            {
                let c = Case {
                    t,
                    d,
                    u,
                    bias,
                    h0,
                    backwards,
                    mask,
                    zero_output,
                    input_dropout,
                    prepack,
                    acts,
                    reset_after,
                };
                let one = run(&c, 1);
                assert!(!one.3, "one thread never hands over");
                // The helper comes only when a worker is free in time: try a few times.
                for _ in 0..20 {
                    let two = run(&c, 2);
                    let label = format!(
                        "{level}: T={t} D={d} u={u} reset_after={reset_after} split={}",
                        two.3
                    );
                    assert!(same(&one.0, &two.0), "{label}: outputs");
                    assert!(same(&one.1, &two.1), "{label}: state");
                    assert!(same(&one.2, &two.2), "{label}: last output");
                    if two.3 {
                        handed += 1;
                        break;
                    }
                }
            }
            // Where the process has two hardware threads, at least some calls must really
            // have been split (or this test would compare one thread with itself).
            if team_size(2) >= 2 {
                assert!(
                    handed > 0,
                    "{level}, reset_after={reset_after}: no call was split between two threads"
                );
            }
        }
    }

    #[test]
    fn split_points_fall_on_strip_boundaries() {
        let g = strip_granule::<f32>();
        for u in [16, 48, 64, 70, 100, 128, 130, 256, 1024] {
            match split_at::<f32>(u) {
                Some(s) => {
                    assert_eq!(s % g, 0, "u = {u}");
                    assert!(s < u && s >= u - s, "u = {u}: split at {s}");
                }
                None => assert!(u <= g, "u = {u}"),
            }
        }
        assert_eq!(split_at::<f64>(64), Some(32));
    }
}
