//! Keras 3 weight regularizers (`keras.regularizers`): penalty, gradient, config (spec §2.3).
//!
//! Penalties are on the raw variable, summed over all elements, and enter the training loss
//! unscaled (not divided by the batch size).
//!
//! Factor precision, as Keras 3 on TensorFlow: every factor is applied rounded to float32, also
//! to float64 weights (`ops.cast(0.01, "float64")` goes through a float32 tensor, so Keras' f64
//! L2 penalty is `0.009999999776482582·Σw²`). `L1` and `OrthogonalRegularizer` even store the
//! rounded factor in their config (`L1(0.01)` serializes `0.009999999776482582`); `L2` and
//! `L1L2` keep the given value in the config. grucell does all of this the same way.

use crate::error::ConfigError;
use crate::float::Float;
use crate::layers::keras_json::{class_and_config, get_f64, get_str};
use serde_json::{json, Map, Value};

/// Which vectors [`Regularizer::Orthogonal`] pushes towards orthogonality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrthoMode {
    /// The rows of the 2-D weight (`"rows"`, Keras' default).
    Rows,
    /// The columns (`"columns"`).
    Columns,
}

impl OrthoMode {
    /// The Keras spelling.
    pub fn name(self) -> &'static str {
        match self {
            OrthoMode::Rows => "rows",
            OrthoMode::Columns => "columns",
        }
    }

    /// Parses the Keras spelling (exact).
    pub fn from_name(s: &str) -> Result<Self, ConfigError> {
        match s {
            "rows" => Ok(OrthoMode::Rows),
            "columns" => Ok(OrthoMode::Columns),
            other => Err(ConfigError::invalid(
                "mode",
                format!("{other:?}"),
                "\"rows\" or \"columns\"",
            )),
        }
    }
}

/// A Keras weight regularizer.
///
/// ```
/// use grucell::layers::regularizer::Regularizer;
/// use serde_json::json;
///
/// let r = Regularizer::from_keras(&json!("l2"))?.expect("not null");
/// let w = [1.0f32, -2.0, 0.5, 0.0];
/// assert!((r.penalty(&w, &[2, 2]) - 0.01 * 5.25).abs() < 1e-7);
/// let mut g = [0.0f32; 4];
/// r.add_grad(&w, &[2, 2], &mut g); // accumulates 2·l2·w
/// assert!((g[1] + 0.04).abs() < 1e-7);
///
/// assert_eq!(Regularizer::from_keras(&json!(null))?, None);
/// // "l1l2" means zero factors; "l1_l2" is rejected, both as in Keras 3.
/// assert_eq!(Regularizer::from_keras(&json!("l1l2"))?, Some(Regularizer::L1L2 { l1: 0.0, l2: 0.0 }));
/// assert!(Regularizer::from_keras(&json!("l1_l2")).is_err());
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Regularizer {
    /// `l1 · Σ|w|` (Keras `L1`, default 0.01; the factor is used rounded to float32).
    L1 {
        /// Factor (≥ 0).
        l1: f64,
    },
    /// `l2 · Σw²` (Keras `L2`, default 0.01; applied rounded to float32).
    L2 {
        /// Factor (≥ 0).
        l2: f64,
    },
    /// `l1 · Σ|w| + l2 · Σw²` (Keras `L1L2`, defaults 0 and 0; applied rounded to float32).
    L1L2 {
        /// L1 factor (≥ 0).
        l1: f64,
        /// L2 factor (≥ 0).
        l2: f64,
    },
    /// Keras `OrthogonalRegularizer(factor=0.01, mode="rows")`, 2-D weights only: normalize the
    /// rows (or columns), `P` = their Gram matrix without its diagonal,
    /// `factor · 0.5 · Σ|P| / (n(n−1)/2)`. The factor is used rounded to float32.
    Orthogonal {
        /// Factor (≥ 0).
        factor: f64,
        /// Rows or columns.
        mode: OrthoMode,
    },
}

const NAMES: &[&str] = &[
    "L1",
    "l1",
    "L2",
    "l2",
    "L1L2",
    "l1l2",
    "OrthogonalRegularizer",
    "orthogonal_regularizer",
];

/// Keras' backend epsilon.
const EPSILON: f64 = 1e-7;

fn round32(x: f64) -> f64 {
    x as f32 as f64
}

fn check_keys(class: &str, cfg: &Map<String, Value>, allowed: &[&str]) -> Result<(), ConfigError> {
    match cfg.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ConfigError::invalid(
            format!("{class}.config"),
            format!("unexpected key `{k}`"),
            format!("only {}", allowed.join(", ")),
        )),
    }
}

fn check_factor(arg: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(arg, v, "a non-negative finite number"))
    }
}

impl Regularizer {
    /// `L1(l1)`, the factor rounded to float32 as Keras stores it.
    pub fn l1(l1: f64) -> Self {
        Regularizer::L1 { l1: round32(l1) }
    }

    /// `L2(l2)`.
    pub fn l2(l2: f64) -> Self {
        Regularizer::L2 { l2 }
    }

    /// `L1L2(l1, l2)`.
    pub fn l1_l2(l1: f64, l2: f64) -> Self {
        Regularizer::L1L2 { l1, l2 }
    }

    /// `OrthogonalRegularizer(factor, mode)`, the factor rounded to float32 as Keras stores it.
    pub fn orthogonal(factor: f64, mode: OrthoMode) -> Self {
        Regularizer::Orthogonal {
            factor: round32(factor),
            mode,
        }
    }

    /// Looks up a Keras string identifier (`"l1"`, `"L1"`, `"l2"`, `"l1l2"`, `"L1L2"`,
    /// `"orthogonal_regularizer"`, `"OrthogonalRegularizer"`) with Keras' defaults —
    /// `"l1l2"` gives **zero** factors, and `"l1_l2"` is rejected, as in Keras 3.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        Self::build(name, &Map::new())
    }

    /// Reads a Keras identifier: `null` → `None`, a string (see [`Regularizer::from_name`]) or a
    /// serialized object `{"class_name", "config", …}` (extra keys around it are ignored; unknown
    /// keys inside `config` are rejected as Keras rejects them).
    pub fn from_keras(v: &Value) -> Result<Option<Self>, ConfigError> {
        match class_and_config(v)? {
            None => Ok(None),
            Some((class, cfg)) => Self::build(&class, &cfg).map(Some),
        }
    }

    fn build(class: &str, cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let r = match class {
            "L1" | "l1" => {
                check_keys(class, cfg, &["l1"])?;
                Regularizer::l1(get_f64(cfg, "l1", 0.01)?)
            }
            "L2" | "l2" => {
                check_keys(class, cfg, &["l2"])?;
                Regularizer::l2(get_f64(cfg, "l2", 0.01)?)
            }
            "L1L2" | "l1l2" => {
                check_keys(class, cfg, &["l1", "l2"])?;
                Regularizer::l1_l2(get_f64(cfg, "l1", 0.0)?, get_f64(cfg, "l2", 0.0)?)
            }
            "OrthogonalRegularizer" | "orthogonal_regularizer" => {
                check_keys(class, cfg, &["factor", "mode"])?;
                Regularizer::orthogonal(
                    get_f64(cfg, "factor", 0.01)?,
                    OrthoMode::from_name(get_str(cfg, "mode")?.unwrap_or("rows"))?,
                )
            }
            "Regularizer" | "regularizer" => {
                return Err(ConfigError::unsupported(
                    "regularizer",
                    format!(
                        "`{class}` (the abstract base class; Keras cannot serialize it either)"
                    ),
                ))
            }
            _ => {
                return Err(ConfigError::UnknownName {
                    kind: "regularizer",
                    name: class.to_string(),
                    known: NAMES.join(", "),
                })
            }
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the factors: finite and ≥ 0 (Keras' `validate_float_arg`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Regularizer::L1 { l1 } => check_factor("l1", l1),
            Regularizer::L2 { l2 } => check_factor("l2", l2),
            Regularizer::L1L2 { l1, l2 } => {
                check_factor("l1", l1)?;
                check_factor("l2", l2)
            }
            Regularizer::Orthogonal { factor, .. } => check_factor("factor", factor),
        }
    }

    /// Fails when the regularizer cannot be applied to a weight of `shape`: the orthogonal
    /// regularizer needs a 2-D weight (Keras raises too) with at least 2 rows (or columns) —
    /// with one, Keras' penalty is 0/0 = NaN. Call it once when building a layer.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), ConfigError> {
        match (self, shape) {
            (Regularizer::Orthogonal { mode, .. }, [r, c]) => {
                let n = if *mode == OrthoMode::Rows { *r } else { *c };
                if n >= 2 {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(
                        "shape",
                        format!("{shape:?}"),
                        format!("at least 2 {} for OrthogonalRegularizer", mode.name()),
                    ))
                }
            }
            (Regularizer::Orthogonal { .. }, _) => Err(ConfigError::invalid(
                "shape",
                format!("{shape:?}"),
                "a 2-D weight (OrthogonalRegularizer needs rank 2)",
            )),
            _ => Ok(()),
        }
    }

    /// The Keras class name (`"L1"`, `"L2"`, `"L1L2"`, `"OrthogonalRegularizer"`).
    pub fn class_name(&self) -> &'static str {
        match self {
            Regularizer::L1 { .. } => "L1",
            Regularizer::L2 { .. } => "L2",
            Regularizer::L1L2 { .. } => "L1L2",
            Regularizer::Orthogonal { .. } => "OrthogonalRegularizer",
        }
    }

    /// Serializes as Keras 3.15.1 does (`keras.regularizers.serialize`):
    /// `{"module": "keras.regularizers", "class_name", "config", "registered_name": null}`.
    pub fn to_keras(&self) -> Value {
        let config = match *self {
            Regularizer::L1 { l1 } => json!({ "l1": round32(l1) }),
            Regularizer::L2 { l2 } => json!({ "l2": l2 }),
            Regularizer::L1L2 { l1, l2 } => json!({"l1": l1, "l2": l2}),
            Regularizer::Orthogonal { factor, mode } => {
                json!({"factor": round32(factor), "mode": mode.name()})
            }
        };
        json!({
            "module": "keras.regularizers",
            "class_name": self.class_name(),
            "config": config,
            "registered_name": null,
        })
    }

    /// The penalty of weight `w` (row-major, of `shape`). Sums are accumulated in f64.
    /// For a shape [`Regularizer::check_shape`] rejects (or `w.len()` ≠ the shape's element
    /// count) the orthogonal penalty is NaN.
    pub fn penalty<T: Float>(&self, w: &[T], shape: &[usize]) -> T {
        let abs_sum = || T::of(w.iter().map(|x| x.f64().abs()).sum::<f64>());
        let sq_sum = || T::of(w.iter().map(|x| x.f64() * x.f64()).sum::<f64>());
        match *self {
            Regularizer::L1 { l1 } => T::of(round32(l1)) * abs_sum(),
            Regularizer::L2 { l2 } => T::of(round32(l2)) * sq_sum(),
            Regularizer::L1L2 { l1, l2 } => {
                // Keras skips a zero factor's term entirely.
                let mut p = T::zero();
                if l1 != 0.0 {
                    p += T::of(round32(l1)) * abs_sum();
                }
                if l2 != 0.0 {
                    p += T::of(round32(l2)) * sq_sum();
                }
                p
            }
            Regularizer::Orthogonal { factor, mode } => match ortho_setup(w, shape, mode) {
                Some(o) => T::of(o.penalty(round32(factor))),
                None => T::nan(),
            },
        }
    }

    /// Adds `d penalty / d w` to `grad` (same layout as `w`). At `w = 0` the L1 term contributes
    /// 0 (TensorFlow's `sign(0)`). Shapes [`Regularizer::check_shape`] rejects add nothing.
    pub fn add_grad<T: Float>(&self, w: &[T], shape: &[usize], grad: &mut [T]) {
        let sign = |x: T| {
            if x > T::zero() {
                T::one()
            } else if x < T::zero() {
                -T::one()
            } else {
                T::zero()
            }
        };
        match *self {
            Regularizer::L1 { l1 } => {
                let f = T::of(round32(l1));
                for (g, &x) in grad.iter_mut().zip(w) {
                    *g += f * sign(x);
                }
            }
            Regularizer::L2 { l2 } => {
                let f = T::of(2.0 * round32(l2));
                for (g, &x) in grad.iter_mut().zip(w) {
                    *g += f * x;
                }
            }
            Regularizer::L1L2 { l1, l2 } => {
                let (f1, f2) = (T::of(round32(l1)), T::of(2.0 * round32(l2)));
                for (g, &x) in grad.iter_mut().zip(w) {
                    *g += f1 * sign(x) + f2 * x;
                }
            }
            Regularizer::Orthogonal { factor, mode } => {
                if let Some(o) = ortho_setup(w, shape, mode) {
                    o.add_grad(round32(factor), grad);
                }
            }
        }
    }
}

/// The orthogonal regularizer's working set, always in "rows" form: `v` is `n × d` (the rows of
/// W, or the columns of W for `Columns`), in f64.
struct Ortho {
    n: usize,
    d: usize,
    columns: bool,
    cols: usize,
    v: Vec<f64>,
    /// Per vector: `min(rsqrt(Σ v²), 1/ε)` and whether the rsqrt branch is the active one.
    inv: Vec<(f64, bool)>,
    /// Normalized vectors, `n × d`.
    u: Vec<f64>,
    /// Gram matrix `U Uᵀ`, `n × n`.
    p: Vec<f64>,
}

fn ortho_setup<T: Float>(w: &[T], shape: &[usize], mode: OrthoMode) -> Option<Ortho> {
    let (rows, cols) = match shape {
        [r, c] if r.checked_mul(*c) == Some(w.len()) => (*r, *c),
        _ => return None,
    };
    let columns = mode == OrthoMode::Columns;
    let (n, d) = if columns { (cols, rows) } else { (rows, cols) };
    if n < 2 {
        return None;
    }
    let v: Vec<f64> = if columns {
        (0..n * d)
            .map(|k| w[(k % d) * cols + k / d].f64())
            .collect()
    } else {
        w.iter().map(|x| x.f64()).collect()
    };
    // Keras' `normalize`: x · min(rsqrt(Σx²), 1/ε).
    let inv: Vec<(f64, bool)> = v
        .chunks_exact(d.max(1))
        .map(|row| {
            let q: f64 = row.iter().map(|x| x * x).sum();
            let r = 1.0 / q.sqrt();
            if r < 1.0 / EPSILON {
                (r, true)
            } else {
                (1.0 / EPSILON, false)
            }
        })
        .collect();
    let u: Vec<f64> = v
        .iter()
        .enumerate()
        .map(|(k, x)| x * inv.get(k / d.max(1)).map_or(0.0, |s| s.0))
        .collect();
    let mut p = vec![0.0; n * n];
    // f64 GEMM through the crate's single faer entry point: P = U Uᵀ.
    crate::engine::gemm(
        n,
        n,
        d,
        1.0,
        crate::engine::Operand::new(&u, d),
        crate::engine::Operand::new(&u, d).t(),
        false,
        &mut p,
        n,
        1,
    );
    Some(Ortho {
        n,
        d,
        columns,
        cols,
        v,
        inv,
        u,
        p,
    })
}

impl Ortho {
    fn coef(&self, factor: f64) -> f64 {
        let n = self.n as f64;
        factor * 0.5 / (n * (n - 1.0) / 2.0)
    }

    fn penalty(&self, factor: f64) -> f64 {
        let n = self.n;
        let off: f64 = self
            .p
            .iter()
            .enumerate()
            .filter(|(k, _)| k / n != k % n)
            .map(|(_, x)| x.abs())
            .sum();
        self.coef(factor) * off
    }

    fn add_grad<T: Float>(&self, factor: f64, grad: &mut [T]) {
        let (n, d) = (self.n, self.d);
        let c = self.coef(factor);
        // dL/dP = c·sign(P) off the diagonal; P = U Uᵀ with G symmetric gives dU = 2·G·U.
        let g: Vec<f64> = self
            .p
            .iter()
            .enumerate()
            .map(|(k, &x)| {
                if k / n == k % n || x == 0.0 {
                    0.0
                } else {
                    2.0 * c * x.signum()
                }
            })
            .collect();
        let mut du = vec![0.0; n * d];
        crate::engine::gemm(
            n,
            d,
            n,
            1.0,
            crate::engine::Operand::new(&g, n),
            crate::engine::Operand::new(&self.u, d),
            false,
            &mut du,
            d,
            1,
        );
        // U_i = s_i·V_i, s_i = rsqrt(q_i) (unless clamped at 1/ε), q_i = Σ V_i²:
        // dV_i = s_i·dU_i − s_i³·(dU_i·V_i)·V_i.
        for i in 0..n {
            let (s, active) = self.inv.get(i).copied().unwrap_or((0.0, false));
            let row_v = &self.v[i * d..(i + 1) * d];
            let row_du = &du[i * d..(i + 1) * d];
            let dot: f64 = if active {
                row_v.iter().zip(row_du).map(|(a, b)| a * b).sum()
            } else {
                0.0
            };
            for k in 0..d {
                let dv = s * row_du[k] - s * s * s * dot * row_v[k];
                let idx = if self.columns {
                    k * self.cols + i
                } else {
                    i * d + k
                };
                if let Some(gr) = grad.get_mut(idx) {
                    *gr += T::of(dv);
                }
            }
        }
    }
}

impl std::fmt::Display for Regularizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.class_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_grad(r: &Regularizer, w: &[f64], shape: &[usize]) -> Vec<f64> {
        (0..w.len())
            .map(|k| {
                let h = 1e-6;
                let (mut a, mut b) = (w.to_vec(), w.to_vec());
                a[k] += h;
                b[k] -= h;
                (r.penalty(&a, shape) - r.penalty(&b, shape)) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn gradients_match_central_differences() {
        let shape = [4, 6];
        let w: Vec<f64> = (0..24)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0 + 0.013)
            .collect();
        for r in [
            Regularizer::l1(0.3),
            Regularizer::l2(0.05),
            Regularizer::l1_l2(0.01, 0.02),
            Regularizer::orthogonal(0.1, OrthoMode::Rows),
            Regularizer::orthogonal(0.05, OrthoMode::Columns),
        ] {
            let mut g = vec![0.0; 24];
            r.add_grad(&w, &shape, &mut g);
            let num = numeric_grad(&r, &w, &shape);
            for k in 0..24 {
                assert!(
                    (g[k] - num[k]).abs() < 1e-7,
                    "{r:?} [{k}]: {} vs {}",
                    g[k],
                    num[k]
                );
            }
        }
    }

    #[test]
    fn add_grad_accumulates() {
        let r = Regularizer::l2(0.5);
        let mut g = [1.0f32, 1.0];
        r.add_grad(&[1.0f32, -2.0], &[2], &mut g);
        assert_eq!(g, [2.0, -1.0]);
    }

    #[test]
    fn orthogonal_penalty_of_orthogonal_rows_is_zero() {
        let w = [1.0f64, 0.0, 0.0, 0.0, 2.0, 0.0];
        let r = Regularizer::orthogonal(0.5, OrthoMode::Rows);
        assert_eq!(r.penalty(&w, &[2, 3]), 0.0);
        // Parallel rows: |cos| = 1 for the one pair (counted twice, halved): factor · 1.
        let w = [1.0f64, 1.0, 2.0, 2.0];
        let p = r.penalty(&w, &[2, 2]);
        assert!((p - round32(0.5)).abs() < 1e-12, "{p}");
        assert!(r.penalty(&w, &[4]).is_nan());
        assert!(r.check_shape(&[4]).is_err());
        assert!(r.check_shape(&[1, 4]).is_err());
        assert!(r.check_shape(&[2, 4]).is_ok());
        assert!(Regularizer::l2(0.1).check_shape(&[4]).is_ok());
    }

    #[test]
    fn configs() {
        assert_eq!(
            Regularizer::from_name("l1").unwrap(),
            Regularizer::L1 { l1: round32(0.01) }
        );
        assert_eq!(
            Regularizer::from_name("L2").unwrap(),
            Regularizer::L2 { l2: 0.01 }
        );
        assert!(matches!(
            Regularizer::from_name("l1_l2"),
            Err(ConfigError::UnknownName { .. })
        ));
        assert!(matches!(
            Regularizer::from_name("Regularizer"),
            Err(ConfigError::Unsupported { .. })
        ));
        let e = Regularizer::from_keras(&json!({"class_name": "L2", "config": {"l2": -1.0}}))
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::InvalidValue { ref arg, .. } if arg == "l2"),
            "{e}"
        );
        let e = Regularizer::from_keras(&json!({"class_name": "L2", "config": {"l3": 1.0}}))
            .unwrap_err();
        assert!(e.to_string().contains("l3"), "{e}");
        let e = Regularizer::from_keras(&json!({"class_name": "OrthogonalRegularizer",
            "config": {"mode": "diagonal"}}))
        .unwrap_err();
        assert!(e.to_string().contains("diagonal"), "{e}");
    }
}
