//! `ZeroPadding1D`, `Cropping1D` and `UpSampling1D`: the layers that change the number of steps
//! of a `(batch, steps, features)` input, as Keras 3.15.1 computes them. None of them passes a
//! mask on (Keras drops it with a warning).

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::{channels_first, data_format};
use crate::tensor::Tensor;

/// Most steps a config may pad, crop or repeat by (as many as a GRU may have units), so that a
/// file cannot make a small input ask for a huge allocation.
pub const MAX_STEPS_ARG: usize = crate::layers::gru_cell::MAX_UNITS;

/// Most values an output of these layers may hold (1 GiB of `float32`).
pub const MAX_STEPS_OUTPUT: usize = 1 << 28;

/// One of the step-changing layers.
///
/// ```
/// use grucell::layers::steps::StepLayer;
/// use grucell::Tensor;
/// // (batch 1, 2 steps, 1 feature)
/// let x = Tensor::new(vec![1, 2, 1], vec![1.0f32, 2.0])?;
/// let pad = StepLayer::ZeroPadding { left: 1, right: 2, channels_first: false };
/// assert_eq!(pad.call(&x)?.data(), &[0.0f32, 1.0, 2.0, 0.0, 0.0]);
/// assert_eq!(StepLayer::UpSampling { size: 2 }.call(&x)?.data(), &[1.0f32, 1.0, 2.0, 2.0]);
/// assert_eq!(StepLayer::Cropping { left: 1, right: 0 }.call(&x)?.data(), &[2.0f32]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepLayer {
    /// `ZeroPadding1D(padding=(left, right))`: zero steps before and after (with
    /// `data_format="channels_first"`, along the last axis instead).
    ZeroPadding {
        /// Steps added before.
        left: usize,
        /// Steps added after.
        right: usize,
        /// `data_format = "channels_first"`: the input is `(batch, features, steps)`.
        channels_first: bool,
    },
    /// `Cropping1D(cropping=(left, right))`: steps removed from the start and the end.
    Cropping {
        /// Steps removed from the start.
        left: usize,
        /// Steps removed from the end.
        right: usize,
    },
    /// `UpSampling1D(size)`: every step repeated `size` times in place.
    UpSampling {
        /// Repeats of each step.
        size: usize,
    },
}

/// Reads an `int` or a pair of `int`s ≥ 0 (Keras' `standardize_tuple(…, 2, allow_zero=True)`).
fn pair(
    cfg: &Map<String, Value>,
    class: &str,
    key: &str,
    default: usize,
) -> Result<(usize, usize), ConfigError> {
    let v = cfg.get(key).unwrap_or(&Value::Null);
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_STEPS_ARG)
    };
    let got = match v {
        Value::Null => Some((default, default)),
        Value::Array(a) if a.len() == 2 => one(&a[0]).zip(one(&a[1])),
        _ => one(v).map(|n| (n, n)),
    };
    got.ok_or_else(|| {
        ConfigError::invalid(
            format!("{class}.{key}"),
            v,
            format!("an integer or a pair of integers from 0 to {MAX_STEPS_ARG}"),
        )
    })
}

impl StepLayer {
    /// Reads the config of Keras class `class` (`ZeroPadding1D`, `Cropping1D`,
    /// `UpSampling1D`); `None` for another class.
    pub fn from_keras(class: &str, cfg: &Map<String, Value>) -> Result<Option<Self>, ConfigError> {
        Ok(Some(match class {
            "ZeroPadding1D" => {
                let (left, right) = pair(cfg, class, "padding", 1)?;
                StepLayer::ZeroPadding {
                    left,
                    right,
                    channels_first: channels_first(cfg, class)?,
                }
            }
            "Cropping1D" => {
                let (left, right) = pair(cfg, class, "cropping", 1)?;
                StepLayer::Cropping { left, right }
            }
            "UpSampling1D" => {
                let v = cfg.get("size").unwrap_or(&Value::Null);
                let size = match v {
                    Value::Null => Some(2),
                    _ => v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=MAX_STEPS_ARG).contains(n)),
                };
                StepLayer::UpSampling {
                    size: size.ok_or_else(|| {
                        ConfigError::invalid(
                            "UpSampling1D.size",
                            v,
                            format!("an integer from 1 to {MAX_STEPS_ARG}"),
                        )
                    })?,
                }
            }
            _ => return Ok(None),
        }))
    }

    /// The Keras class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            StepLayer::ZeroPadding { .. } => "ZeroPadding1D",
            StepLayer::Cropping { .. } => "Cropping1D",
            StepLayer::UpSampling { .. } => "UpSampling1D",
        }
    }

    /// Adds the layer's own keys to a Keras config.
    pub fn write_keras(&self, c: &mut Map<String, Value>) {
        match *self {
            StepLayer::ZeroPadding {
                left,
                right,
                channels_first,
            } => {
                c.insert("padding".into(), json!([left, right]));
                c.insert("data_format".into(), data_format(channels_first));
            }
            StepLayer::Cropping { left, right } => {
                c.insert("cropping".into(), json!([left, right]));
            }
            StepLayer::UpSampling { size } => {
                c.insert("size".into(), json!(size));
            }
        }
    }

    /// The axis whose length changes (1, or 2 for a `channels_first` padding).
    fn axis(&self) -> usize {
        match self {
            StepLayer::ZeroPadding {
                channels_first: true,
                ..
            } => 2,
            _ => 1,
        }
    }

    /// The new length of the changed axis for an input length `n`, `None` when cropping leaves
    /// no step (Keras refuses that).
    fn out_len(&self, n: usize) -> Option<usize> {
        match *self {
            StepLayer::ZeroPadding { left, right, .. } => n.checked_add(left)?.checked_add(right),
            StepLayer::Cropping { left, right } => {
                n.checked_sub(left.checked_add(right)?).filter(|&m| m > 0)
            }
            StepLayer::UpSampling { size } => n.checked_mul(size),
        }
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let mut out = input.to_vec();
        if let Some(d) = out.get_mut(self.axis()) {
            *d = d.and_then(|n| self.out_len(n));
        }
        out
    }

    fn dims<T: Float>(&self, x: &Tensor<T>, what: &str) -> Result<[usize; 3], ShapeError> {
        match *x.shape() {
            [b, t, f] => Ok([b, t, f]),
            ref other => Err(ShapeError::mismatch(
                format!("{what} of {}", self.class_name()),
                other,
                "(batch, steps, features)",
            )),
        }
    }

    /// The layer on `x` (`(batch, steps, features)`). Fails when cropping would leave no step,
    /// or rather than make an output of more than [`MAX_STEPS_OUTPUT`] values.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let [b, t, f] = self.dims(x, "input")?;
        let ax = self.axis();
        let n = [b, t, f][ax];
        let m = self.out_len(n).ok_or_else(|| {
            ShapeError::mismatch(
                format!("input of {}", self.class_name()),
                x.shape(),
                format!("more steps than the {self:?} removes"),
            )
        })?;
        let mut shape = vec![b, t, f];
        shape[ax] = m;
        crate::tensor::checked_numel(&shape)
            .filter(|&n| n <= MAX_STEPS_OUTPUT)
            .ok_or_else(|| {
                ShapeError::mismatch(
                    format!("output of {}", self.class_name()),
                    &shape,
                    format!("at most {MAX_STEPS_OUTPUT} values"),
                )
            })?;
        // Rows of `inner` values along the changed axis, `outer` of them.
        let (outer, inner) = if ax == 1 { (b, f) } else { (b * t, 1) };
        let mut out = Vec::with_capacity(outer * m * inner);
        for block in x.data().chunks_exact((n * inner).max(1)).take(outer) {
            match *self {
                StepLayer::ZeroPadding { left, right, .. } => {
                    out.extend(std::iter::repeat_n(T::zero(), left * inner));
                    out.extend_from_slice(block);
                    out.extend(std::iter::repeat_n(T::zero(), right * inner));
                }
                StepLayer::Cropping { left, .. } => {
                    out.extend_from_slice(&block[left * inner..(left + m) * inner]);
                }
                StepLayer::UpSampling { size } => {
                    for step in block.chunks_exact(inner.max(1)) {
                        for _ in 0..size {
                            out.extend_from_slice(step);
                        }
                    }
                }
            }
        }
        out.resize(outer * m * inner, T::zero());
        Ok(Tensor::new(shape, out)?)
    }

    /// The gradient with respect to an input of shape `input` given the output's gradient.
    pub fn backward<T: Float>(&self, input: &[usize], dy: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let &[b, t, f] = input else {
            return Err(ShapeError::mismatch(
                format!("input of {}", self.class_name()),
                input,
                "(batch, steps, features)",
            )
            .into());
        };
        let ax = self.axis();
        let n = [b, t, f][ax];
        let mut expected = vec![b, t, f];
        expected[ax] = self.out_len(n).unwrap_or(0);
        if dy.shape() != expected.as_slice() {
            return Err(ShapeError::mismatch(
                format!("output gradient of {}", self.class_name()),
                dy.shape(),
                format!("{expected:?}"),
            )
            .into());
        }
        let m = expected[ax];
        let (outer, inner) = if ax == 1 { (b, f) } else { (b * t, 1) };
        let mut dx = vec![T::zero(); outer * n * inner];
        for (g, d) in dy
            .data()
            .chunks_exact((m * inner).max(1))
            .zip(dx.chunks_exact_mut((n * inner).max(1)))
            .take(outer)
        {
            match *self {
                StepLayer::ZeroPadding { left, .. } => {
                    d.copy_from_slice(&g[left * inner..(left + n) * inner]);
                }
                StepLayer::Cropping { left, .. } => {
                    d[left * inner..(left + m) * inner].copy_from_slice(g);
                }
                StepLayer::UpSampling { size } => {
                    for (s, ds) in d.chunks_exact_mut(inner.max(1)).enumerate() {
                        for r in 0..size {
                            let src = &g[(s * size + r) * inner..(s * size + r + 1) * inner];
                            ds.iter_mut().zip(src).for_each(|(a, &v)| *a += v);
                        }
                    }
                }
            }
        }
        Ok(Tensor::new(input.to_vec(), dx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<StepLayer> {
        vec![
            StepLayer::ZeroPadding {
                left: 2,
                right: 1,
                channels_first: false,
            },
            StepLayer::ZeroPadding {
                left: 0,
                right: 3,
                channels_first: true,
            },
            StepLayer::Cropping { left: 1, right: 2 },
            StepLayer::Cropping { left: 0, right: 0 },
            StepLayer::UpSampling { size: 3 },
        ]
    }

    #[test]
    fn backward_is_the_transpose_of_call() {
        // Linear layers: <call(x), g> = <x, backward(g)> for every x and g.
        let x = Tensor::new(
            vec![2, 4, 3],
            (0..24).map(|i| (i as f64 * 0.37).sin()).collect(),
        )
        .unwrap();
        for l in all() {
            let y = l.call(&x).unwrap();
            let g = Tensor::new(
                y.shape().to_vec(),
                (0..y.len()).map(|i| (i as f64 * 0.91).cos()).collect(),
            )
            .unwrap();
            let dx = l.backward(x.shape(), &g).unwrap();
            let lhs: f64 = y.data().iter().zip(g.data()).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.data().iter().zip(dx.data()).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-12, "{l:?}: {lhs} vs {rhs}");
            let shape: Vec<Option<usize>> = vec![None, Some(4), Some(3)];
            let want: Vec<Option<usize>> = y.shape().iter().skip(1).map(|&d| Some(d)).collect();
            assert_eq!(l.output_shape(&shape)[1..], want[..], "{l:?}");
        }
    }

    #[test]
    fn configs_round_trip_and_refuse() {
        for l in all() {
            let mut c = Map::new();
            l.write_keras(&mut c);
            assert_eq!(StepLayer::from_keras(l.class_name(), &c).unwrap(), Some(l));
        }
        let cfg = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            StepLayer::from_keras("ZeroPadding1D", &cfg(json!({"padding": 3}))).unwrap(),
            Some(StepLayer::ZeroPadding {
                left: 3,
                right: 3,
                channels_first: false
            })
        );
        for (class, c) in [
            ("ZeroPadding1D", json!({"padding": [1, 2, 3]})),
            ("ZeroPadding1D", json!({"padding": -1})),
            ("Cropping1D", json!({"cropping": 1e12})),
            ("UpSampling1D", json!({"size": 0})),
            ("UpSampling1D", json!({"size": 1.5})),
        ] {
            let e = StepLayer::from_keras(class, &cfg(c.clone()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(class), "{class} {c}: {e}");
        }
        let x = Tensor::new(vec![1, 3, 1], vec![1.0f32, 2.0, 3.0]).unwrap();
        let e = StepLayer::Cropping { left: 2, right: 1 }
            .call(&x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Cropping1D"), "{e}");
        let big = StepLayer::UpSampling {
            size: MAX_STEPS_ARG,
        };
        let x = Tensor::new(vec![1, 4096, 16], vec![0.0f32; 4096 * 16]).unwrap();
        assert!(big.call(&x).unwrap_err().to_string().contains("at most"));
    }
}
