//! `Flatten` and `RepeatVector`: the reshaping layers of GRU models (`GRU(…,
//! return_sequences=True)` → `Flatten` → `Dense`; the encoder–decoder `GRU` → `RepeatVector(n)` →
//! `GRU(…, return_sequences=True)`), as Keras 3.15.1 computes them. Neither passes a mask on
//! (Keras drops it with a warning).

use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::keras_json::{channels_first, data_format};
use crate::tensor::Tensor;

/// `Flatten`: `(batch, d1, d2, …)` to `(batch, d1·d2·…)`. With `data_format = "channels_first"`
/// (and rank 3 or more) the features axis 1 moves last before flattening, as Keras does.
///
/// ```
/// use grucell::layers::reshaping::Flatten;
/// use grucell::Tensor;
/// let x = Tensor::new(vec![1, 2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// let y = Flatten::default().call(&x)?;
/// assert_eq!((y.shape(), y.data()), (&[1usize, 6][..], x.data()));
/// let cf = Flatten { channels_first: true }.call(&x)?;
/// assert_eq!(cf.data(), &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten {
    /// `data_format = "channels_first"`.
    pub channels_first: bool,
}

/// `x` of shape `(b, c, r)` as `(b, r, c)` (or back, with `c` and `r` swapped).
fn swap_last_two<T: Float>(data: &[T], b: usize, c: usize, r: usize) -> Vec<T> {
    let mut out = vec![T::zero(); data.len()];
    for i in 0..b {
        for j in 0..c {
            for k in 0..r {
                out[(i * r + k) * c + j] = data[(i * c + j) * r + k];
            }
        }
    }
    out
}

impl Flatten {
    /// Reads a Keras config (`data_format`).
    pub fn from_keras(cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        Ok(Flatten {
            channels_first: channels_first(cfg, "Flatten")?,
        })
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("data_format".into(), data_format(self.channels_first));
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let rest = input.get(1..).unwrap_or(&[]);
        let flat = rest
            .iter()
            .try_fold(1usize, |n, d| d.and_then(|d| n.checked_mul(d)));
        vec![input.first().copied().flatten(), flat]
    }

    /// `(batch, channels, rest)` of an input shape of rank 2 or more.
    fn dims(shape: &[usize]) -> Result<(usize, usize, usize), ShapeError> {
        match shape {
            [b, c, rest @ ..] => Ok((*b, *c, rest.iter().product())),
            other => Err(ShapeError::mismatch(
                "input of Flatten",
                other,
                "(batch, …) of rank 2 or more",
            )),
        }
    }

    /// The layer on `x`.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let (b, c, r) = Self::dims(x.shape())?;
        let data = if self.channels_first && x.rank() > 2 {
            swap_last_two(x.data(), b, c, r)
        } else {
            x.data().to_vec()
        };
        Ok(Tensor::new(vec![b, c * r], data)?)
    }

    /// The gradient with respect to `x` (of the given shape) given the output's gradient.
    pub fn backward<T: Float>(
        &self,
        x_shape: &[usize],
        dy: &Tensor<T>,
    ) -> Result<Tensor<T>, Error> {
        let (b, c, r) = Self::dims(x_shape)?;
        if dy.len() != b * c * r {
            return Err(ShapeError::mismatch(
                "output gradient of Flatten",
                dy.shape(),
                format!("{} values for an input of shape {x_shape:?}", b * c * r),
            )
            .into());
        }
        let data = if self.channels_first && x_shape.len() > 2 {
            swap_last_two(dy.data(), b, r, c)
        } else {
            dy.data().to_vec()
        };
        Ok(Tensor::new(x_shape.to_vec(), data)?)
    }
}

/// Most repeats a `RepeatVector` config may ask for (as many as a GRU may have units).
pub const MAX_REPEATS: usize = crate::layers::gru_cell::MAX_UNITS;

/// Most values a `RepeatVector` output may hold (1 GiB of `float32`): the layer multiplies its
/// input's size by `n`, so a file cannot make a small input ask for a huge allocation.
pub const MAX_REPEAT_OUTPUT: usize = 1 << 28;

/// `RepeatVector(n)`: `(batch, features)` to `(batch, n, features)`, the row repeated `n` times.
///
/// ```
/// use grucell::layers::reshaping::RepeatVector;
/// use grucell::Tensor;
/// let x = Tensor::new(vec![1, 2], vec![1.0f32, 2.0])?;
/// let y = RepeatVector::new(3)?.call(&x)?;
/// assert_eq!((y.shape(), y.data()), (&[1usize, 3, 2][..], &[1.0f32, 2.0, 1.0, 2.0, 1.0, 2.0][..]));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatVector {
    n: usize,
}

impl RepeatVector {
    /// Repeats `n` times, `1 ≤ n ≤` [`MAX_REPEATS`] (Keras refuses 0).
    pub fn new(n: usize) -> Result<Self, ConfigError> {
        if !(1..=MAX_REPEATS).contains(&n) {
            return Err(ConfigError::invalid(
                "RepeatVector.n",
                n,
                format!("a positive integer up to {MAX_REPEATS}"),
            ));
        }
        Ok(RepeatVector { n })
    }

    /// How many times the input is repeated.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reads a Keras config (`n`, a positive integer up to [`MAX_REPEATS`]).
    pub fn from_keras(cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let v = cfg.get("n").unwrap_or(&Value::Null);
        match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Self::new(n),
            None => Err(ConfigError::invalid(
                "RepeatVector.n",
                v,
                format!("a positive integer up to {MAX_REPEATS}"),
            )),
        }
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("n".into(), Value::from(self.n));
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        vec![
            input.first().copied().flatten(),
            Some(self.n),
            input.get(1).copied().flatten(),
        ]
    }

    fn dims<T: Float>(x: &Tensor<T>) -> Result<(usize, usize), ShapeError> {
        match x.shape() {
            &[b, f] => Ok((b, f)),
            other => Err(ShapeError::mismatch(
                "input of RepeatVector",
                other,
                "(batch, features)",
            )),
        }
    }

    /// The layer on `x`. Fails rather than make an output of more than [`MAX_REPEAT_OUTPUT`]
    /// values.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let (b, f) = Self::dims(x)?;
        let shape = vec![b, self.n, f];
        let total = crate::tensor::checked_numel(&shape)
            .filter(|&n| n <= MAX_REPEAT_OUTPUT)
            .ok_or_else(|| {
                ShapeError::mismatch(
                    "output of RepeatVector",
                    &shape,
                    format!("at most {MAX_REPEAT_OUTPUT} values (input rows × n × features)"),
                )
            })?;
        let mut out = Vec::with_capacity(total);
        for row in x.data().chunks_exact(f.max(1)).take(b) {
            for _ in 0..self.n {
                out.extend_from_slice(row);
            }
        }
        Ok(Tensor::new(shape, out)?)
    }

    /// The gradient with respect to `x` given the output's gradient: the sum over the repeats.
    pub fn backward<T: Float>(&self, dy: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let &[b, n, f] = dy.shape() else {
            return Err(ShapeError::mismatch(
                "output gradient of RepeatVector",
                dy.shape(),
                "(batch, n, features)",
            )
            .into());
        };
        if n != self.n {
            return Err(ShapeError::mismatch(
                "output gradient of RepeatVector",
                dy.shape(),
                format!("(batch, {}, features)", self.n),
            )
            .into());
        }
        let mut dx = vec![T::zero(); b * f];
        for (i, block) in dy.data().chunks_exact((n * f).max(1)).enumerate().take(b) {
            let dst = &mut dx[i * f..(i + 1) * f];
            for row in block.chunks_exact(f.max(1)) {
                dst.iter_mut().zip(row).for_each(|(a, g)| *a += *g);
            }
        }
        Ok(Tensor::new(vec![b, f], dx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_round_trips_its_gradient() {
        let x = Tensor::new(vec![2, 3, 2], (0..12).map(f64::from).collect()).unwrap();
        for channels_first in [false, true] {
            let f = Flatten { channels_first };
            let y = f.call(&x).unwrap();
            assert_eq!(y.shape(), &[2, 6]);
            // Flatten only moves values, so its gradient puts each one back where it came from.
            let back = f.backward(x.shape(), &y).unwrap();
            assert_eq!(back, x);
        }
        assert_eq!(
            Flatten::default().output_shape(&[None, Some(4), Some(3)]),
            [None, Some(12)]
        );
        assert_eq!(
            Flatten::default().output_shape(&[None, None, Some(3)]),
            [None, None]
        );
        assert!(Flatten::default()
            .call(&Tensor::new(vec![3], vec![0.0f32; 3]).unwrap())
            .is_err());
    }

    #[test]
    fn repeat_vector_sums_its_gradient() {
        let r = RepeatVector::new(3).unwrap();
        let dy = Tensor::new(vec![1, 3, 2], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(r.backward(&dy).unwrap().data(), &[9.0, 12.0]);
        assert!(RepeatVector::new(0).is_err());
        let cfg = |v: Value| {
            serde_json::from_value::<Map<String, Value>>(serde_json::json!({ "n": v })).unwrap()
        };
        assert!(RepeatVector::from_keras(&cfg(Value::from(-1))).is_err());
        assert!(RepeatVector::from_keras(&cfg(Value::from(1u64 << 40))).is_err());
        assert!(RepeatVector::from_keras(&cfg(Value::from(MAX_REPEATS + 1))).is_err());
        assert!(RepeatVector::from_keras(&cfg(Value::from("3"))).is_err());
        // A small input cannot ask for a huge output.
        let big = RepeatVector::new(MAX_REPEATS).unwrap();
        let x = Tensor::new(vec![64, 128], vec![0.0f32; 64 * 128]).unwrap();
        let e = big.call(&x).unwrap_err().to_string();
        assert!(e.contains("RepeatVector") && e.contains("at most"), "{e}");
        assert_eq!(
            RepeatVector::from_keras(&cfg(Value::from(4))).unwrap().n(),
            4
        );
        assert!(r
            .call(&Tensor::new(vec![1, 2, 1], vec![0.0f32; 2]).unwrap())
            .is_err());
    }
}
