//! Error measures over forecast windows (all in the series' own units).

/// Root mean squared error over all pairs whose prediction is finite; NaN when none is.
///
/// ```
/// use grucell::forecast::metrics::rmse;
/// assert!((rmse(&[1.0, 2.0], &[1.0, 4.0]) - 2f64.sqrt()).abs() < 1e-12);
/// ```
pub fn rmse(actual: &[f64], predicted: &[f64]) -> f64 {
    let (sum, n) = actual
        .iter()
        .zip(predicted)
        .filter(|(_, p)| p.is_finite())
        .fold((0.0, 0usize), |(s, n), (a, p)| {
            (s + (a - p) * (a - p), n + 1)
        });
    if n == 0 {
        f64::NAN
    } else {
        (sum / n as f64).sqrt()
    }
}

/// Mean absolute error over all pairs whose prediction is finite; NaN when none is.
///
/// ```
/// use grucell::forecast::metrics::mae;
/// assert_eq!(mae(&[1.0, 2.0], &[2.0, 4.0]), 1.5);
/// ```
pub fn mae(actual: &[f64], predicted: &[f64]) -> f64 {
    let (sum, n) = actual
        .iter()
        .zip(predicted)
        .filter(|(_, p)| p.is_finite())
        .fold((0.0, 0usize), |(s, n), (a, p)| (s + (a - p).abs(), n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// RMSE of each horizon step `k` (predictions and actuals laid out `[window][k]`).
pub fn rmse_by_step(actual: &[f64], predicted: &[f64], horizon: usize) -> Vec<f64> {
    let h = horizon.max(1);
    (0..h)
        .map(|k| {
            let a: Vec<f64> = actual.iter().skip(k).step_by(h).copied().collect();
            let p: Vec<f64> = predicted.iter().skip(k).step_by(h).copied().collect();
            rmse(&a, &p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_non_finite_predictions() {
        assert_eq!(rmse(&[1.0, 2.0, 3.0], &[1.0, f64::NAN, 5.0]), 2f64.sqrt());
        assert!(rmse(&[1.0], &[f64::NAN]).is_nan());
        assert_eq!(
            rmse_by_step(&[0.0, 0.0, 0.0, 0.0], &[1.0, 2.0, 1.0, 2.0], 2),
            vec![1.0, 2.0]
        );
    }
}
