//! The two reference forecasts every model is compared with, on the same windows:
//! the last value (`ŷ[t+k] = y[t]`) and the seasonal naive forecast (`ŷ[t+k] = y[t+k−s]`, the
//! same point one season earlier, repeated for horizons beyond one season).

/// Last-value forecast of `horizon` steps from origin `t`.
///
/// ```
/// use grucell::forecast::baseline::last_value;
/// assert_eq!(last_value(&[1.0, 2.0, 5.0], 2, 3), vec![5.0, 5.0, 5.0]);
/// ```
pub fn last_value(y: &[f64], t: usize, horizon: usize) -> Vec<f64> {
    vec![y.get(t).copied().unwrap_or(f64::NAN); horizon]
}

/// Seasonal naive forecast of `horizon` steps from origin `t` with season `s`: step `k` takes
/// the last observed value at the same phase, `y[t + k − s·⌈k/s⌉]`. NaN where the history is
/// too short.
///
/// ```
/// use grucell::forecast::baseline::seasonal_naive;
/// let y = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
/// assert_eq!(seasonal_naive(&y, 5, 4, 3), vec![10.0, 20.0, 30.0, 10.0]);
/// ```
pub fn seasonal_naive(y: &[f64], t: usize, horizon: usize, s: usize) -> Vec<f64> {
    let s = s.max(1);
    (1..=horizon)
        .map(|k| {
            let back = s * k.div_ceil(s);
            (t + k)
                .checked_sub(back)
                .and_then(|i| y.get(i))
                .copied()
                .unwrap_or(f64::NAN)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_uses_only_the_past() {
        let y: Vec<f64> = (0..20).map(f64::from).collect();
        let f = seasonal_naive(&y, 10, 7, 3);
        // every value comes from index ≤ 10 at the same phase mod 3
        for (k, v) in f.iter().enumerate() {
            let target = 10 + k + 1;
            assert!(
                *v <= 10.0 && (target - *v as usize).is_multiple_of(3),
                "k={k} v={v}"
            );
        }
        assert!(seasonal_naive(&y, 1, 1, 5)[0].is_nan());
        assert_eq!(last_value(&y, 4, 2), vec![4.0, 4.0]);
    }
}
