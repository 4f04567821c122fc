//! A spinning team of helper threads for the per-step recurrent products.
//!
//! A time loop issues one small product per step (≈ 0.1 ms at batch 32, 256 units). Handing each
//! one to rayon wakes a sleeping worker through the kernel every step; on the machines measured
//! that cost as much as the second thread saved (2 threads ran the M forward no faster than 1).
//! Like the thread pools of oneDNN and ONNX Runtime, the team's helpers therefore stay awake for
//! the whole sequence: they spin on a step counter, compute their share of the panels, and spin
//! again, so a step costs two cache-line handoffs instead of a futex wake-up.
//!
//! No `unsafe`: the state the helpers share with the caller is behind a `RwLock` (the left operand,
//! copied in once per step, `B·u` values) and one `Mutex` per helper (its output panels); the
//! atomics only order the phases, so every lock is uncontended when taken. A helper that panics
//! marks the team failed and the caller computes the missing panels itself, so a bug cannot hang
//! the caller.

use super::packed::{run_panel_range, Rhs, NR};
use crate::float::Float;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// One posted product: `C[:, segs] (+)= A[:, kr] · B[kr, segs]`, `A` being the team's copy.
#[derive(Clone, Debug, Default)]
struct Job {
    m: usize,
    lda: usize,
    kr: Range<usize>,
    segs: Range<usize>,
    /// Panels per share: the caller does share 0, helper `i` share `i + 1`.
    per: usize,
}

/// Helper threads that stay awake for one sequence; create with [`Team::run`].
#[derive(Debug)]
pub(crate) struct Team<T> {
    a: RwLock<Vec<T>>,
    job: Mutex<Job>,
    outs: Vec<Mutex<Vec<T>>>,
    posted: AtomicUsize,
    done: AtomicUsize,
    stop: AtomicBool,
    failed: AtomicBool,
}

/// Spins (then yields) until `cond` holds.
#[inline]
fn wait_for(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        if spins < 20_000 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
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
    pub fn run<R>(threads: usize, rhs: Rhs<'_, T>, body: impl FnOnce(&Team<T>) -> R) -> R {
        let helpers = threads.saturating_sub(1).max(1);
        let team = Team {
            a: RwLock::new(Vec::new()),
            job: Mutex::new(Job::default()),
            outs: (0..helpers).map(|_| Mutex::new(Vec::new())).collect(),
            posted: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        std::thread::scope(|s| {
            for i in 0..helpers {
                let team = &team;
                s.spawn(move || team.helper(rhs, i));
            }
            let _stop = StopOnDrop(&team);
            body(&team)
        })
    }

    fn helper(&self, rhs: Rhs<'_, T>, idx: usize) {
        let _fail = FailOnUnwind(self);
        let mut seen = 0;
        loop {
            wait_for(|| {
                self.posted.load(Ordering::Acquire) > seen || self.stop.load(Ordering::Acquire)
            });
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            seen += 1;
            let job = lock(self.job.lock()).clone();
            {
                let a = lock(self.a.read());
                let mut out = lock(self.outs[idx].lock());
                let panels = share(&job, &rhs, idx + 1);
                out.resize(panels.len() * job.m * NR, T::zero());
                run_panel_range(
                    &rhs, &job.kr, &job.segs, panels, job.m, &a, job.lda, &mut out,
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
        let shares = self.outs.len() + 1;
        let job = Job {
            m,
            lda,
            kr: kr.clone(),
            segs: segs.clone(),
            per: n_panels.div_ceil(shares),
        };
        {
            let mut sa = lock(self.a.write());
            sa.clear();
            sa.extend_from_slice(&a[..(m - 1) * lda + kr.end]);
        }
        *lock(self.job.lock()) = job.clone();
        let target = self.done.load(Ordering::Acquire) + self.outs.len();
        self.posted.fetch_add(1, Ordering::AcqRel);
        // The caller's share, straight into C.
        rhs.panels_into(
            &kr,
            &segs,
            share(&job, &rhs, 0),
            m,
            a,
            lda,
            c,
            ldc,
            accumulate,
        );
        wait_for(|| {
            self.done.load(Ordering::Acquire) >= target || self.failed.load(Ordering::Acquire)
        });
        for (i, out) in self.outs.iter().enumerate() {
            let panels = share(&job, &rhs, i + 1);
            if self.failed.load(Ordering::Acquire) {
                rhs.panels_into(&kr, &segs, panels, m, a, lda, c, ldc, accumulate);
                continue;
            }
            let out = lock(out.lock());
            rhs.scatter(&segs, panels, m, &out, c, ldc, accumulate);
        }
    }
}

/// The panel indices (within `job.segs`) of share `s`.
fn share<T: Float>(job: &Job, rhs: &Rhs<'_, T>, s: usize) -> Range<usize> {
    let n = job.segs.len() * rhs.panels_per_segment();
    (s * job.per).min(n)..((s + 1) * job.per).min(n)
}
