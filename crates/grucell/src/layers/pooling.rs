//! `GlobalAveragePooling1D` and `GlobalMaxPooling1D`: a sequence reduced over its steps, the
//! usual head of a GRU that returns sequences (`Bidirectional(GRU(…, return_sequences=True))` →
//! `GlobalMaxPooling1D` → `Dense`).
//!
//! As Keras 3.15.1 computes them: the average takes the mask of its input (a masked step counts
//! neither in the sum nor in the count, so a row with every step masked gives NaN, 0/0, as in
//! Keras); the maximum ignores the mask and takes every step. Neither passes a mask on.
//! `data_format = "channels_first"` reduces axis 2 of `(batch, features, steps)` instead of axis
//! 1 of `(batch, steps, features)`; `keepdims` keeps the reduced axis with size 1.

use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::{channels_first, data_format, get_bool};
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// What a global pooling layer computes over the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOp {
    /// `GlobalAveragePooling1D`: the mean of the steps the mask keeps.
    Average,
    /// `GlobalMaxPooling1D`: the maximum of every step.
    Max,
}

/// A `GlobalAveragePooling1D` or `GlobalMaxPooling1D` layer.
///
/// ```
/// use grucell::layers::pooling::{GlobalPooling1D, PoolOp};
/// use grucell::Tensor;
/// // (batch 1, 3 steps, 2 features)
/// let x = Tensor::new(vec![1, 3, 2], vec![1.0f32, -1.0, 3.0, 0.0, 2.0, 4.0])?;
/// let avg = GlobalPooling1D::new(PoolOp::Average).call(&x, None)?;
/// assert_eq!((avg.shape(), avg.data()), (&[1usize, 2][..], &[2.0f32, 1.0][..]));
/// let max = GlobalPooling1D::new(PoolOp::Max).call(&x, None)?;
/// assert_eq!(max.data(), &[3.0f32, 4.0]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalPooling1D {
    /// Average or maximum.
    pub op: PoolOp,
    /// `data_format = "channels_first"`: inputs are `(batch, features, steps)`.
    pub channels_first: bool,
    /// Keep the reduced axis (size 1).
    pub keepdims: bool,
}

/// An input's `(batch, steps, features)` and the strides of steps and features in its data.
struct Layout {
    batch: usize,
    steps: usize,
    features: usize,
    step_stride: usize,
    feature_stride: usize,
}

impl GlobalPooling1D {
    /// Keras' defaults: channels last, no `keepdims`.
    pub fn new(op: PoolOp) -> Self {
        GlobalPooling1D {
            op,
            channels_first: false,
            keepdims: false,
        }
    }

    /// Keras' class name.
    pub fn class_name(&self) -> &'static str {
        match self.op {
            PoolOp::Average => "GlobalAveragePooling1D",
            PoolOp::Max => "GlobalMaxPooling1D",
        }
    }

    /// Reads a Keras config (`data_format`, `keepdims`).
    pub fn from_keras(op: PoolOp, cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let layer = GlobalPooling1D::new(op);
        Ok(GlobalPooling1D {
            channels_first: channels_first(cfg, layer.class_name())?,
            keepdims: get_bool(cfg, "keepdims", false)?,
            ..layer
        })
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("data_format".into(), data_format(self.channels_first));
        cfg.insert("keepdims".into(), Value::from(self.keepdims));
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let batch = input.first().copied().flatten();
        let kept = if self.channels_first {
            input.get(1)
        } else {
            input.get(2)
        };
        let features = kept.copied().flatten();
        match (self.keepdims, self.channels_first) {
            (false, _) => vec![batch, features],
            (true, false) => vec![batch, Some(1), features],
            (true, true) => vec![batch, features, Some(1)],
        }
    }

    fn layout<T: Float>(&self, x: &Tensor<T>) -> Result<Layout, ShapeError> {
        let &[batch, a, b] = x.shape() else {
            return Err(ShapeError::mismatch(
                format!("input of {}", self.class_name()),
                x.shape(),
                "(batch, steps, features) or, channels first, (batch, features, steps)",
            ));
        };
        Ok(if self.channels_first {
            Layout {
                batch,
                steps: b,
                features: a,
                step_stride: 1,
                feature_stride: b,
            }
        } else {
            Layout {
                batch,
                steps: a,
                features: b,
                step_stride: b,
                feature_stride: 1,
            }
        })
    }

    fn out_shape(&self, l: &Layout) -> Vec<usize> {
        match (self.keepdims, self.channels_first) {
            (false, _) => vec![l.batch, l.features],
            (true, false) => vec![l.batch, 1, l.features],
            (true, true) => vec![l.batch, l.features, 1],
        }
    }

    /// How the average weighs the steps of each row under its input's mask, as Keras
    /// broadcasts it (`expand_dims` on the features axis, then `sum(where(mask, x, 0)) /
    /// sum(mask)`): per `(batch, step)` how many times the step enters the sum, and per row the
    /// divisor. A mask of the steps as they are gives the masked mean; a `(batch, 1)` mask
    /// gives, for a kept row, the *sum* of every step divided by 1, and a mask of `T` steps
    /// over a single step counts it `kept` times and divides by `kept` (Keras' own arithmetic
    /// for those broadcasts). Without a mask: every step once, divided by the step count.
    fn weights(&self, l: &Layout, mask: Option<&Mask>) -> Result<(Vec<usize>, Vec<usize>), Error> {
        let Some(m) = mask.filter(|_| self.op == PoolOp::Average) else {
            return Ok((vec![1; l.batch * l.steps], vec![l.steps; l.batch]));
        };
        if m.batch != l.batch || !(m.time == l.steps || m.time == 1 || l.steps == 1) {
            return Err(ShapeError::mismatch(
                format!("mask of {}", self.class_name()),
                &[m.batch, m.time],
                format!(
                    "({}, {}) or ({}, 1), to broadcast over the input's batch and steps",
                    l.batch, l.steps, l.batch
                ),
            )
            .into());
        }
        let rows = m.data.chunks_exact(m.time.max(1));
        let mut mult = Vec::with_capacity(l.batch * l.steps);
        let mut div = Vec::with_capacity(l.batch);
        for row in rows.take(l.batch) {
            let kept = row.iter().filter(|&&k| k).count();
            if m.time == l.steps {
                mult.extend(row.iter().map(|&k| usize::from(k)));
            } else if m.time == 1 {
                mult.extend(std::iter::repeat_n(kept, l.steps));
            } else {
                mult.push(kept);
            }
            div.push(kept);
        }
        Ok((mult, div))
    }

    /// The layer on `x` with its input's mask (used by the average only).
    pub fn call<T: Float>(&self, x: &Tensor<T>, mask: Option<&Mask>) -> Result<Tensor<T>, Error> {
        let l = self.layout(x)?;
        let (mult, div) = self.weights(&l, mask)?;
        let data = x.data();
        let mut out = Vec::with_capacity(l.batch * l.features);
        for b in 0..l.batch {
            let base = b * l.steps * l.features;
            for f in 0..l.features {
                let at = |t: usize| data[base + t * l.step_stride + f * l.feature_stride];
                out.push(match self.op {
                    PoolOp::Average => {
                        let mut sum = T::zero();
                        for t in 0..l.steps {
                            match mult[b * l.steps + t] {
                                0 => {}
                                1 => sum += at(t),
                                k => sum += at(t) * T::of(k as f64),
                            }
                        }
                        sum / T::of(div[b] as f64)
                    }
                    // NaN wins, as TensorFlow's reduce_max propagates it.
                    PoolOp::Max => (0..l.steps).map(at).fold(T::neg_infinity(), |m, v| {
                        if m.is_nan() || v > m || v.is_nan() {
                            v
                        } else {
                            m
                        }
                    }),
                });
            }
        }
        Ok(Tensor::new(self.out_shape(&l), out)?)
    }

    /// The gradient with respect to `x` given the output's gradient `dy`, as TensorFlow takes
    /// it: the average gives each step `dy · (times it is summed) / divisor` (0 for a step the
    /// mask drops); the maximum gives `dy` to the steps equal to the maximum, shared equally
    /// among ties.
    pub fn backward<T: Float>(
        &self,
        x: &Tensor<T>,
        mask: Option<&Mask>,
        dy: &Tensor<T>,
    ) -> Result<Tensor<T>, Error> {
        let l = self.layout(x)?;
        let (mult, div) = self.weights(&l, mask)?;
        if dy.len() != l.batch * l.features {
            return Err(ShapeError::mismatch(
                format!("output gradient of {}", self.class_name()),
                dy.shape(),
                format!("{:?}", self.out_shape(&l)),
            )
            .into());
        }
        let y = match self.op {
            PoolOp::Max => Some(self.call(x, None)?),
            PoolOp::Average => None,
        };
        let data = x.data();
        let mut dx = vec![T::zero(); x.len()];
        for b in 0..l.batch {
            let base = b * l.steps * l.features;
            for f in 0..l.features {
                let g = dy.data()[b * l.features + f];
                let idx = |t: usize| base + t * l.step_stride + f * l.feature_stride;
                match &y {
                    None => {
                        let share = g / T::of(div[b] as f64);
                        for t in 0..l.steps {
                            match mult[b * l.steps + t] {
                                0 => {}
                                1 => dx[idx(t)] = share,
                                k => dx[idx(t)] = share * T::of(k as f64),
                            }
                        }
                    }
                    Some(y) => {
                        let m = y.data()[b * l.features + f];
                        let ties = (0..l.steps).filter(|&t| data[idx(t)] == m).count();
                        let share = T::one() / T::of(ties as f64) * g;
                        for t in (0..l.steps).filter(|&t| data[idx(t)] == m) {
                            dx[idx(t)] = share;
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

    fn t(shape: &[usize], v: &[f64]) -> Tensor<f64> {
        Tensor::new(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn masked_average_and_channels_first() {
        let x = t(&[2, 3, 1], &[1.0, 2.0, 6.0, 4.0, 5.0, 6.0]);
        let mask = Mask::new(2, 3, vec![true, true, false, false, false, false]).unwrap();
        let avg = GlobalPooling1D::new(PoolOp::Average);
        let y = avg.call(&x, Some(&mask)).unwrap();
        assert_eq!(y.data()[0], 1.5);
        assert!(y.data()[1].is_nan(), "every step masked: 0/0 as in Keras");
        // The maximum ignores the mask.
        let y = GlobalPooling1D::new(PoolOp::Max)
            .call(&x, Some(&mask))
            .unwrap();
        assert_eq!(y.data(), &[6.0, 6.0]);
        // (1, 2 features, 3 steps), channels first, keepdims.
        let cf = GlobalPooling1D {
            op: PoolOp::Average,
            channels_first: true,
            keepdims: true,
        };
        let y = cf
            .call(&t(&[1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 9.0]), None)
            .unwrap();
        assert_eq!(
            (y.shape(), y.data()),
            (&[1usize, 2, 1][..], &[2.0, 6.0][..])
        );
        // A mask of another shape is an error, not a wrong answer.
        let short = Mask::new(2, 2, vec![true; 4]).unwrap();
        assert!(avg.call(&x, Some(&short)).is_err());
        // A (batch, 1) mask broadcasts over the steps and divides by its own sum, as Keras'
        // `sum(where(mask, x, 0)) / sum(mask)` does: the sum of a kept row, 0/0 otherwise.
        let rows = Mask::new(2, 1, vec![true, false]).unwrap();
        let y = avg.call(&x, Some(&rows)).unwrap();
        assert_eq!(y.data()[0], 9.0);
        assert!(y.data()[1].is_nan());
        // A 3-step mask over a single step: counted `kept` times, divided by `kept`.
        let one = t(&[2, 1, 1], &[4.0, 5.0]);
        let y = avg.call(&one, Some(&mask)).unwrap();
        assert_eq!(y.data()[0], 4.0);
        assert!(y.data()[1].is_nan());
        assert!(avg.call(&t(&[2, 3], &[0.0; 6]), None).is_err());
    }

    /// Gradients against central differences; ties share the maximum's gradient.
    #[test]
    fn gradients_match_finite_differences() {
        let x = t(
            &[2, 4, 3],
            &[
                0.3, -1.0, 2.0, 0.7, 0.2, -0.5, 1.1, 0.9, 0.4, -0.2, 0.0, 1.5, //
                0.5, 0.1, -0.3, 0.25, 0.8, 0.6, -0.9, 0.05, 0.35, 0.45, -0.6, 0.15,
            ],
        );
        let mask = Mask::new(2, 4, vec![true, false, true, true, true, true, false, true]).unwrap();
        let dy = t(&[2, 3], &[0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
        for op in [PoolOp::Average, PoolOp::Max] {
            let p = GlobalPooling1D::new(op);
            let m = Some(&mask);
            let dx = p.backward(&x, m, &dy).unwrap();
            let loss = |x: &Tensor<f64>| -> f64 {
                let y = p.call(x, m).unwrap();
                y.data().iter().zip(dy.data()).map(|(a, b)| a * b).sum()
            };
            for i in 0..x.len() {
                let (mut a, mut b) = (x.clone(), x.clone());
                a.data_mut()[i] += 1e-6;
                b.data_mut()[i] -= 1e-6;
                let fd = (loss(&a) - loss(&b)) / 2e-6;
                assert!(
                    (fd - dx.data()[i]).abs() < 1e-6,
                    "{op:?} [{i}]: {fd} vs {}",
                    dx.data()[i]
                );
            }
        }
        let tie = t(&[1, 2, 1], &[3.0, 3.0]);
        let p = GlobalPooling1D::new(PoolOp::Max);
        let dx = p.backward(&tie, None, &t(&[1, 1], &[1.0])).unwrap();
        assert_eq!(dx.data(), &[0.5, 0.5]);
    }
}
