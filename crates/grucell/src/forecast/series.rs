//! Series preparation: gaps, representations (levels, differences, seasonal differences),
//! scaling, season detection and the sliding windows a GRU is trained on.
//!
//! Indexing convention: `y[0..n]` are the levels. A representation with offset `o` defines
//! `z[i]` for `i ≥ o` (`o` = 0 for levels, 1 for differences, `s` for seasonal differences).
//! A window with *origin* `t` (the last observed index) has inputs `z[t−L+1 ..= t]` and targets
//! `z[t+1 ..= t+h]`; [`Representation::reconstruct`] turns predicted targets back into levels.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Error};

/// What the gap handling did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapReport {
    /// Missing values before the first observation (dropped).
    pub dropped_leading: usize,
    /// Missing values after the last observation (dropped).
    pub dropped_trailing: usize,
    /// Interior missing values filled by linear interpolation.
    pub interpolated: usize,
}

/// Fills interior gaps by linear interpolation between the neighbouring observations and drops
/// leading and trailing gaps. Returns the filled values and the index (into `values`) of the
/// first kept row.
///
/// ```
/// use grucell::forecast::series::fill_gaps;
/// let (y, first, report) = fill_gaps(&[None, Some(1.0), None, None, Some(4.0), None])?;
/// assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0]);
/// assert_eq!((first, report.dropped_leading, report.interpolated, report.dropped_trailing), (1, 1, 2, 1));
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn fill_gaps(values: &[Option<f64>]) -> Result<(Vec<f64>, usize, GapReport), Error> {
    let first = values.iter().position(Option::is_some);
    let last = values.iter().rposition(Option::is_some);
    let (Some(first), Some(last)) = (first, last) else {
        return Err(
            ConfigError::invalid("series", "no observed values", "at least one number").into(),
        );
    };
    let mut out = Vec::with_capacity(last + 1 - first);
    let mut interpolated = 0;
    let mut prev: (usize, f64) = (first, 0.0);
    for (i, v) in values.iter().enumerate().take(last + 1).skip(first) {
        if let Some(v) = v {
            let gap = i - prev.0;
            if gap > 1 {
                for k in 1..gap {
                    let w = k as f64 / gap as f64;
                    out.push(prev.1 + (v - prev.1) * w);
                    interpolated += 1;
                }
            }
            out.push(*v);
            prev = (i, *v);
        }
    }
    let report = GapReport {
        dropped_leading: first,
        dropped_trailing: values.len() - 1 - last,
        interpolated,
    };
    Ok((out, first, report))
}

/// How the series is presented to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Representation {
    /// The values themselves: `z[t] = y[t]`.
    Levels,
    /// Step-to-step changes: `z[t] = y[t] − y[t−1]`; levels are rebuilt by cumulative sums
    /// from the last observed value.
    Differences,
    /// Changes from one season earlier: `z[t] = y[t] − y[t−s]`.
    SeasonalDifferences {
        /// The season length `s`.
        season: usize,
    },
}

impl Representation {
    /// A short name: `levels`, `differences`, `seasonal_differences_52`.
    pub fn name(&self) -> String {
        match self {
            Representation::Levels => "levels".into(),
            Representation::Differences => "differences".into(),
            Representation::SeasonalDifferences { season } => {
                format!("seasonal_differences_{season}")
            }
        }
    }

    /// How many leading values have no representation (0, 1 or `s`).
    pub fn offset(&self) -> usize {
        match self {
            Representation::Levels => 0,
            Representation::Differences => 1,
            Representation::SeasonalDifferences { season } => *season,
        }
    }

    /// `z` aligned with `y`: `z[i]` for `i ≥ offset`, `0.0` before (never used).
    pub fn transform(&self, y: &[f64]) -> Vec<f64> {
        let o = self.offset();
        (0..y.len())
            .map(|i| {
                if i < o {
                    0.0
                } else {
                    y[i] - if o == 0 { 0.0 } else { y[i - o] }
                }
            })
            .collect()
    }

    /// Levels `ŷ[t+1 ..= t+h]` from predicted representation values `z_hat[0..h]` at origin
    /// `t`, using the observed levels `y[..=t]` (never anything after `t`).
    pub fn reconstruct(&self, y: &[f64], t: usize, z_hat: &[f64]) -> Vec<f64> {
        let yt = y.get(t).copied().unwrap_or(0.0);
        match self {
            Representation::Levels => z_hat.to_vec(),
            Representation::Differences => z_hat
                .iter()
                .scan(yt, |acc, d| {
                    *acc += d;
                    Some(*acc)
                })
                .collect(),
            Representation::SeasonalDifferences { season } => {
                let s = *season;
                let mut out: Vec<f64> = Vec::with_capacity(z_hat.len());
                for (k0, z) in z_hat.iter().enumerate() {
                    let k = k0 + 1;
                    // The value one season before t+k: observed when t+k−s ≤ t, else predicted.
                    let base = if k <= s {
                        (t + k)
                            .checked_sub(s)
                            .and_then(|i| y.get(i))
                            .copied()
                            .unwrap_or(yt)
                    } else {
                        out.get(k0 - s).copied().unwrap_or(yt)
                    };
                    out.push(z + base);
                }
                out
            }
        }
    }
}

/// Standardization `(z − mean) / std`, fitted on the training part only.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Mean of the fitted values.
    pub mean: f64,
    /// Standard deviation of the fitted values (1 when they are constant).
    pub std: f64,
}

impl Scaler {
    /// Fits mean and standard deviation (population) of `z`.
    pub fn fit(z: &[f64]) -> Scaler {
        let n = z.len().max(1) as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let std = var.sqrt();
        Scaler {
            mean,
            std: if std.is_finite() && std > 1e-12 * mean.abs().max(1.0) {
                std
            } else {
                1.0
            },
        }
    }

    /// `(v − mean) / std`.
    pub fn scale(&self, v: f64) -> f64 {
        (v - self.mean) / self.std
    }

    /// `v · std + mean`.
    pub fn unscale(&self, v: f64) -> f64 {
        v * self.std + self.mean
    }
}

/// Inputs `(N, lookback, 1)` and targets `(N, horizon)`, flattened, for the given origins of
/// the scaled representation `zs`. Origins must satisfy `t + 1 ≥ lookback` and
/// `t + horizon < zs.len()`; others are skipped.
pub fn windows(
    zs: &[f64],
    origins: &[usize],
    lookback: usize,
    horizon: usize,
) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
    let mut x = Vec::with_capacity(origins.len() * lookback);
    let mut y = Vec::with_capacity(origins.len() * horizon);
    let mut kept = Vec::with_capacity(origins.len());
    for &t in origins {
        if t + 1 < lookback || t + horizon >= zs.len() {
            continue;
        }
        x.extend(zs[t + 1 - lookback..=t].iter().map(|v| *v as f32));
        y.extend(zs[t + 1..=t + horizon].iter().map(|v| *v as f32));
        kept.push(t);
    }
    (x, y, kept)
}

/// Autocorrelation of `x` at `lag` (biased estimator, as `statsmodels.acf`).
pub fn autocorrelation(x: &[f64], lag: usize) -> f64 {
    let n = x.len();
    if lag >= n {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    if var <= 0.0 {
        return 0.0;
    }
    let cov: f64 = (lag..n).map(|i| (x[i] - mean) * (x[i - lag] - mean)).sum();
    cov / var
}

/// Detects a season length from the autocorrelation (ACF) of the first differences of `y`.
///
/// Candidates are the lags in `2..=max_lag` whose ACF is above `max(0.2, 3/√n)` and at least
/// 0.2 above the lowest ACF at a shorter lag (a cycle comes back; a smooth series' ACF only
/// decays). Each is scored by the mean ACF at its first (up to) three multiples, so a true
/// season beats a noise peak. The best-scoring lag wins, unless it is a multiple (give or take
/// one step) of a shorter lag scoring within 0.05 of it: then the shortest such lag wins (a
/// season's multiples score as well as the season; a lag next to the season does too, but is
/// not taken for it). Returns the lag and its ACF.
///
/// Differences are used so that a trend does not make every lag look correlated.
///
/// ```
/// use grucell::forecast::series::detect_season;
/// let y: Vec<f64> = (0..400).map(|i| (i as f64 * std::f64::consts::TAU / 12.0).sin() + 0.01 * i as f64).collect();
/// assert_eq!(detect_season(&y, 100).map(|(s, _)| s), Some(12));
/// ```
pub fn detect_season(y: &[f64], max_lag: usize) -> Option<(usize, f64)> {
    if y.len() < 8 {
        return None;
    }
    let d: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let max_lag = max_lag.min(d.len() / 2);
    if max_lag < 3 {
        return None;
    }
    // Multiples are looked at up to two thirds of the length (the biased estimator shrinks
    // long lags towards 0, which penalizes long seasons with few repetitions).
    let reach = (d.len() * 2 / 3).max(max_lag + 1);
    let acf: Vec<f64> = (0..=reach).map(|l| autocorrelation(&d, l)).collect();
    let threshold = (3.0 / (d.len() as f64).sqrt()).max(0.2);
    // A true season also correlates at its multiples, a noise peak does not: score each
    // peak by the mean autocorrelation at its first (up to) three multiples.
    let score = |p: usize| -> f64 {
        let k = (reach / p).clamp(1, 3);
        (1..=k).map(|m| acf[m * p]).sum::<f64>() / k as f64
    };
    // Candidates: lags where the autocorrelation is significant and has risen clearly from
    // a dip since lag 1 (a cycle, not the slow decay of a smooth series).
    let mut low = f64::INFINITY;
    let mut scored: Vec<(usize, f64, f64)> = Vec::new();
    for lag in 2..=max_lag {
        low = low.min(acf[lag - 1]);
        let a = acf[lag];
        if a > threshold && a - low > 0.2 {
            let s = score(lag);
            if s > threshold {
                scored.push((lag, a, s));
            }
        }
    }
    // The best score, or the shortest lag of which it is a multiple (give or take a step)
    // scoring nearly as well: a season's multiples score as well as the season itself. A lag
    // next to the best one also scores nearly as well, but is not a season of it.
    let (best, _, top) =
        scored.iter().copied().fold(
            (0, 0.0, f64::NEG_INFINITY),
            |b, c| if c.2 > b.2 { c } else { b },
        );
    let divides = |lag: usize| {
        let m = (best + lag / 2) / lag;
        m >= 2 && best.abs_diff(m * lag) <= 1
    };
    scored
        .into_iter()
        .find(|c| c.0 == best || (c.2 >= top - 0.05 && divides(c.0)))
        .map(|(lag, a, _)| (lag, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_gaps_interpolates_and_trims() {
        let (y, first, r) =
            fill_gaps(&[None, None, Some(0.0), None, Some(3.0), Some(5.0), None]).unwrap();
        assert_eq!(y, vec![0.0, 1.5, 3.0, 5.0]);
        assert_eq!(first, 2);
        assert_eq!(
            r,
            GapReport {
                dropped_leading: 2,
                dropped_trailing: 1,
                interpolated: 1
            }
        );
        assert!(fill_gaps(&[None, None]).is_err());
    }

    #[test]
    fn representations_round_trip() {
        let y: Vec<f64> = (0..30)
            .map(|i| (i as f64 * 0.7).sin() * 3.0 + i as f64)
            .collect();
        for rep in [
            Representation::Levels,
            Representation::Differences,
            Representation::SeasonalDifferences { season: 5 },
        ] {
            let z = rep.transform(&y);
            let t = 17;
            // Reconstructing the true future representation gives the true future levels,
            // also beyond one season (k > s uses reconstructed values).
            let h = 9;
            let back = rep.reconstruct(&y[..=t], t, &z[t + 1..=t + h]);
            for (k, v) in back.iter().enumerate() {
                assert!(
                    (v - y[t + 1 + k]).abs() < 1e-9,
                    "{rep:?} k={k}: {v} vs {}",
                    y[t + 1 + k]
                );
            }
        }
    }

    #[test]
    fn scaler_and_windows() {
        let s = Scaler::fit(&[1.0, 3.0]);
        assert_eq!((s.mean, s.std), (2.0, 1.0));
        assert_eq!(s.unscale(s.scale(7.5)), 7.5);
        assert_eq!(Scaler::fit(&[4.0, 4.0]).std, 1.0);
        let z: Vec<f64> = (0..10).map(f64::from).collect();
        let (x, y, kept) = windows(&z, &[1, 2, 8, 9], 3, 2);
        assert_eq!(kept, vec![2]);
        assert_eq!(x, vec![0.0, 1.0, 2.0]);
        assert_eq!(y, vec![3.0, 4.0]);
    }

    #[test]
    fn season_detection() {
        let mut state = 1u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let seasonal: Vec<f64> = (0..500)
            .map(|i| {
                (i as f64 * std::f64::consts::TAU / 24.0).sin() + 0.3 * noise() + 0.05 * i as f64
            })
            .collect();
        assert_eq!(detect_season(&seasonal, 100).map(|(s, _)| s), Some(24));
        let mut acc = 0.0;
        let walk: Vec<f64> = (0..500)
            .map(|_| {
                acc += noise();
                acc
            })
            .collect();
        assert_eq!(detect_season(&walk, 100), None);
    }

    /// A lag next to the season scores about as well as the season (its autocorrelations are
    /// cos(2π/s) ≈ 0.97 of the season's): it must not win for being shorter. Short noisy
    /// cycles of 7, 12 and 24 steps with 10 noise draws each, as a split of a few hundred
    /// points gives them.
    #[test]
    fn season_detection_is_not_one_step_short() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut misses = Vec::new();
        for season in [7usize, 12, 24] {
            for seed in 0..10u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let y: Vec<f64> = (0..230)
                    .map(|i| {
                        5.0 * (i as f64 * std::f64::consts::TAU / season as f64).sin()
                            + rng.random_range(-0.9..0.9)
                    })
                    .collect();
                let got = detect_season(&y, 76).map(|(s, _)| s);
                if got != Some(season) {
                    misses.push((season, seed, got));
                }
            }
        }
        assert!(misses.is_empty(), "(season, seed, detected): {misses:?}");
    }
}
