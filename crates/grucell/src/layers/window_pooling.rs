//! `MaxPooling1D` and `AveragePooling1D`: the steps of a sequence pooled over windows of
//! `pool_size` steps, `strides` apart (the usual `Conv1D` → `MaxPooling1D` → `GRU` front), as
//! Keras 3.15.1 computes them with TensorFlow's pools: `valid` padding keeps whole windows,
//! `same` pads like the convolutions (the odd step on the right) and a window's padded steps
//! count neither in the maximum nor in the average's divisor. Neither passes a mask on (Keras
//! drops it with a warning). The gradient of a maximum goes to the first step that holds it.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::conv::Padding;
use crate::layers::keras_json::{channels_first, data_format, get_str};
use crate::tensor::Tensor;

/// Largest `pool_size` and `strides` accepted from a config.
const MAX_WINDOW: u64 = 1 << 16;

/// What a window pooling layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowOp {
    /// `MaxPooling1D`.
    Max,
    /// `AveragePooling1D`.
    Average,
}

impl WindowOp {
    /// Keras' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            WindowOp::Max => "MaxPooling1D",
            WindowOp::Average => "AveragePooling1D",
        }
    }
}

/// A `MaxPooling1D` or `AveragePooling1D` layer.
///
/// ```
/// use grucell::layers::window_pooling::{Pooling1D, WindowOp};
/// use grucell::Tensor;
/// let x = Tensor::new(vec![1, 5, 1], vec![1.0f32, 3.0, 2.0, 5.0, 4.0])?;
/// let max = Pooling1D::new(WindowOp::Max, 2)?.call(&x)?; // windows [1, 3], [2, 5]
/// assert_eq!((max.shape(), max.data()), (&[1usize, 2, 1][..], &[3.0f32, 5.0][..]));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooling1D {
    /// Maximum or average.
    pub op: WindowOp,
    /// Window length in steps.
    pub pool_size: usize,
    /// Steps between windows (Keras' default: `pool_size`).
    pub strides: usize,
    /// `Valid` or `Same`.
    pub padding: Padding,
    /// `data_format = "channels_first"`: inputs are `(batch, features, steps)`.
    pub channels_first: bool,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    features: usize,
    pad: usize,
    out: usize,
}

impl Pooling1D {
    /// Windows of `pool_size` steps, `pool_size` apart, `valid` padding, channels last.
    pub fn new(op: WindowOp, pool_size: usize) -> Result<Self, ConfigError> {
        if pool_size == 0 || pool_size as u64 > MAX_WINDOW {
            return Err(ConfigError::invalid(
                format!("{}.pool_size", op.class_name()),
                pool_size,
                format!("a positive integer up to {MAX_WINDOW}"),
            ));
        }
        Ok(Pooling1D {
            op,
            pool_size,
            strides: pool_size,
            padding: Padding::Valid,
            channels_first: false,
        })
    }

    /// Keras' class name.
    pub fn class_name(&self) -> &'static str {
        self.op.class_name()
    }

    /// Reads a Keras config (`pool_size`, `strides`, `padding`, `data_format`).
    pub fn from_keras(op: WindowOp, cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let class = op.class_name();
        let one = |key: &str, default: Option<usize>| -> Result<Option<usize>, ConfigError> {
            let v = match cfg.get(key) {
                None | Some(Value::Null) => return Ok(default),
                Some(Value::Array(a)) if a.len() == 1 => &a[0],
                Some(v) => v,
            };
            v.as_u64()
                .filter(|n| (1..=MAX_WINDOW).contains(n))
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{class}.{key}"),
                        v,
                        format!("a positive integer up to {MAX_WINDOW} (or a list of one)"),
                    )
                })
        };
        let pool_size = one("pool_size", Some(2))?.unwrap_or(2);
        let mut p = Pooling1D::new(op, pool_size)?;
        p.strides = one("strides", None)?.unwrap_or(pool_size);
        p.padding = match get_str(cfg, "padding")?
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("valid") => Padding::Valid,
            Some("same") => Padding::Same,
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{class}.padding"),
                    other,
                    "\"valid\" or \"same\"",
                ))
            }
        };
        p.channels_first = channels_first(cfg, class)?;
        Ok(p)
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("pool_size".into(), json!([self.pool_size]));
        cfg.insert("padding".into(), json!(self.padding.name()));
        cfg.insert("strides".into(), json!([self.strides]));
        cfg.insert("data_format".into(), data_format(self.channels_first));
    }

    /// `(left padding, output steps)` for `steps` input steps.
    fn geometry(&self, steps: usize) -> Result<(usize, usize), Error> {
        let (k, s) = (self.pool_size, self.strides.max(1));
        match self.padding {
            Padding::Same if steps > 0 => {
                let out = steps.div_ceil(s);
                Ok((((out - 1) * s + k).saturating_sub(steps) / 2, out))
            }
            _ if steps >= k => Ok((0, (steps - k) / s + 1)),
            _ => Err(ShapeError::mismatch(
                format!("input steps of {}", self.class_name()),
                &[steps][..],
                format!(
                    "at least {} (pool_size with padding \"{}\")",
                    k.max(1),
                    self.padding.name()
                ),
            )
            .into()),
        }
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let mut out = input.to_vec();
        let axis = if self.channels_first { 2 } else { 1 };
        if let Some(d) = out.get_mut(axis) {
            *d = d.and_then(|t| self.geometry(t).ok()).map(|(_, o)| o);
        }
        out
    }

    fn dims<T: Float>(&self, x: &Tensor<T>) -> Result<Dims, Error> {
        let &[batch, a, b] = x.shape() else {
            return Err(ShapeError::mismatch(
                format!("input of {}", self.class_name()),
                x.shape(),
                if self.channels_first {
                    "(batch, features, steps)"
                } else {
                    "(batch, steps, features)"
                },
            )
            .into());
        };
        let (steps, features) = if self.channels_first { (b, a) } else { (a, b) };
        let (pad, out) = self.geometry(steps)?;
        Ok(Dims {
            batch,
            steps,
            features,
            pad,
            out,
        })
    }

    /// Flat index of `(batch, step, feature)` in the layer's data format.
    fn at(&self, d: &Dims, steps: usize, b: usize, t: usize, f: usize) -> usize {
        if self.channels_first {
            (b * d.features + f) * steps + t
        } else {
            (b * steps + t) * d.features + f
        }
    }

    /// The input steps of output step `t` (padding excluded).
    fn window(&self, d: &Dims, t: usize) -> std::ops::Range<usize> {
        let start = t * self.strides;
        let lo = start.saturating_sub(d.pad);
        let hi = (start + self.pool_size).saturating_sub(d.pad).min(d.steps);
        lo..hi.max(lo)
    }

    /// The layer on `x`.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let d = self.dims(x)?;
        let shape = if self.channels_first {
            vec![d.batch, d.features, d.out]
        } else {
            vec![d.batch, d.out, d.features]
        };
        let mut y = vec![T::zero(); d.batch * d.out * d.features];
        for b in 0..d.batch {
            for t in 0..d.out {
                let w = self.window(&d, t);
                for f in 0..d.features {
                    let vals = w.clone().map(|i| x.data()[self.at(&d, d.steps, b, i, f)]);
                    y[self.at(&d, d.out, b, t, f)] = match self.op {
                        WindowOp::Max => {
                            vals.fold(
                                T::neg_infinity(),
                                |m, v| if v > m || v.is_nan() { v } else { m },
                            )
                        }
                        WindowOp::Average => vals.sum::<T>() / T::of(w.len().max(1) as f64),
                    };
                }
            }
        }
        Ok(Tensor::new(shape, y)?)
    }

    /// The gradient with respect to `x` given the output's gradient `dy`.
    pub fn backward<T: Float>(&self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let d = self.dims(x)?;
        if dy.len() != d.batch * d.out * d.features {
            return Err(ShapeError::mismatch(
                format!("output gradient of {}", self.class_name()),
                dy.shape(),
                format!("{} values", d.batch * d.out * d.features),
            )
            .into());
        }
        let mut dx = vec![T::zero(); x.len()];
        for b in 0..d.batch {
            for t in 0..d.out {
                let w = self.window(&d, t);
                for f in 0..d.features {
                    let g = dy.data()[self.at(&d, d.out, b, t, f)];
                    match self.op {
                        WindowOp::Max => {
                            // The first step holding the maximum.
                            let mut best: Option<(usize, T)> = None;
                            for i in w.clone() {
                                let v = x.data()[self.at(&d, d.steps, b, i, f)];
                                if best.is_none_or(|(_, m)| v > m) {
                                    best = Some((i, v));
                                }
                            }
                            if let Some((i, _)) = best {
                                dx[self.at(&d, d.steps, b, i, f)] += g;
                            }
                        }
                        WindowOp::Average => {
                            let share = g / T::of(w.len().max(1) as f64);
                            for i in w.clone() {
                                dx[self.at(&d, d.steps, b, i, f)] += share;
                            }
                        }
                    }
                }
            }
        }
        Ok(Tensor::new(x.shape().to_vec(), dx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_match_tensorflow() {
        // MaxPooling1D(3, strides=2, padding="same") on -1 … -5: Keras gives -1, -2, -4.
        let x = Tensor::new(vec![1, 5, 1], vec![-1.0f32, -2.0, -3.0, -4.0, -5.0]).unwrap();
        let mut p = Pooling1D::new(WindowOp::Max, 3).unwrap();
        p.strides = 2;
        p.padding = Padding::Same;
        assert_eq!(p.call(&x).unwrap().data(), &[-1.0, -2.0, -4.0]);
        // AveragePooling1D(3, strides=1, padding="same") of ones stays ones (padding not counted).
        let mut a = Pooling1D::new(WindowOp::Average, 3).unwrap();
        a.strides = 1;
        a.padding = Padding::Same;
        let ones = Tensor::new(vec![1, 4, 1], vec![1.0f32; 4]).unwrap();
        assert_eq!(a.call(&ones).unwrap().data(), &[1.0; 4]);
        assert_eq!(
            a.output_shape(&[None, Some(4), Some(1)]),
            [None, Some(4), Some(1)]
        );
        let short = Tensor::new(vec![1, 1, 1], vec![1.0f32]).unwrap();
        assert!(Pooling1D::new(WindowOp::Max, 2)
            .unwrap()
            .call(&short)
            .is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let n = 2 * 3 * 7;
        for op in [WindowOp::Max, WindowOp::Average] {
            for (k, s, padding, cf) in [
                (2, 2, Padding::Valid, false),
                (3, 2, Padding::Same, false),
                (3, 1, Padding::Same, true),
                (2, 3, Padding::Valid, true),
            ] {
                let mut p = Pooling1D::new(op, k).unwrap();
                p.strides = s;
                p.padding = padding;
                p.channels_first = cf;
                let shape = if cf { vec![2, 3, 7] } else { vec![2, 7, 3] };
                // Distinct values: no ties for the maximum.
                let x = Tensor::new(shape, (0..n).map(|i| ((i * 17) % n) as f64 / 7.0).collect())
                    .unwrap();
                let y = p.call(&x).unwrap();
                let w: Vec<f64> = (0..y.len()).map(|i| ((i * 5) % 9) as f64 - 4.0).collect();
                let dy = Tensor::new(y.shape().to_vec(), w.clone()).unwrap();
                let g = p.backward(&x, &dy).unwrap();
                let loss = |x: &Tensor<f64>| -> f64 {
                    p.call(x)
                        .unwrap()
                        .data()
                        .iter()
                        .zip(&w)
                        .map(|(a, b)| a * b)
                        .sum()
                };
                for i in 0..n {
                    let (mut a, mut b) = (x.clone(), x.clone());
                    a.data_mut()[i] += 1e-7;
                    b.data_mut()[i] -= 1e-7;
                    let fd = (loss(&a) - loss(&b)) / 2e-7;
                    assert!((fd - g.data()[i]).abs() < 1e-5, "{op:?} {k} {s} x[{i}]");
                }
            }
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        let cfg = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        for bad in [
            r#"{"pool_size": [0]}"#,
            r#"{"strides": -1}"#,
            r#"{"padding": "causal"}"#,
            r#"{"pool_size": [2, 2]}"#,
        ] {
            let e = Pooling1D::from_keras(WindowOp::Max, &cfg(bad)).unwrap_err();
            assert!(e.to_string().contains("MaxPooling1D"), "{bad}: {e}");
        }
        let p = Pooling1D::from_keras(
            WindowOp::Average,
            &cfg(r#"{"pool_size": [3], "strides": null}"#),
        )
        .unwrap();
        assert_eq!((p.pool_size, p.strides), (3, 3));
    }
}
