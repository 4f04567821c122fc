//! `Flatten`, `RepeatVector`, `Permute` and `Reshape`: the reshaping layers of GRU models (`GRU(…,
//! return_sequences=True)` → `Flatten` → `Dense`; the encoder–decoder `GRU` → `RepeatVector(n)` →
//! `GRU(…, return_sequences=True)`; `Permute((2, 1))` to run a GRU over the features), as Keras
//! 3.15.1 computes them. None passes a mask on (Keras drops it with a warning).

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

/// Most axes a `Permute` or `Reshape` config may name.
const MAX_AXES: usize = 8;

/// `Permute(dims)`: the non-batch axes reordered, `dims` a permutation of `1..=rank − 1`
/// (output axis `i` is input axis `dims[i − 1]`).
///
/// ```
/// use grucell::layers::reshaping::Permute;
/// use grucell::Tensor;
/// let x = Tensor::new(vec![1, 2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// let y = Permute::new(vec![2, 1])?.call(&x)?;
/// assert_eq!((y.shape(), y.data()), (&[1usize, 3, 2][..], &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0][..]));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permute {
    dims: Vec<usize>,
}

impl Permute {
    /// `dims` must hold each of `1..=dims.len()` once (at most 8 axes).
    pub fn new(dims: Vec<usize>) -> Result<Self, ConfigError> {
        let mut sorted = dims.clone();
        sorted.sort_unstable();
        if dims.is_empty()
            || dims.len() > MAX_AXES
            || sorted != (1..=dims.len()).collect::<Vec<_>>()
        {
            return Err(ConfigError::invalid(
                "Permute.dims",
                format!("{dims:?}"),
                "a permutation of 1, 2, …, n (n ≤ 8)",
            ));
        }
        Ok(Permute { dims })
    }

    /// The permutation (1-based, batch axis excluded).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Reads a Keras config (`dims`).
    pub fn from_keras(cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let v = cfg.get("dims").unwrap_or(&Value::Null);
        let dims = v
            .as_array()
            .filter(|a| a.len() <= MAX_AXES)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| {
                ConfigError::invalid("Permute.dims", v, "a list of axes 1, 2, …, n in some order")
            })?;
        Self::new(dims)
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("dims".into(), Value::from(self.dims.clone()));
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let mut out = vec![input.first().copied().flatten()];
        out.extend(self.dims.iter().map(|&d| input.get(d).copied().flatten()));
        out
    }

    /// Moves the values of `data` (of `shape`) to the axis order `order` (0-based, all axes).
    fn transpose<T: Float>(data: &[T], shape: &[usize], order: &[usize]) -> Vec<T> {
        let rank = shape.len();
        let mut strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        let out_shape: Vec<usize> = order.iter().map(|&a| shape[a]).collect();
        let out_strides: Vec<usize> = order.iter().map(|&a| strides[a]).collect();
        let mut out = Vec::with_capacity(data.len());
        let mut idx = vec![0usize; rank];
        for _ in 0..data.len() {
            out.push(
                data[idx
                    .iter()
                    .zip(&out_strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>()],
            );
            for a in (0..rank).rev() {
                idx[a] += 1;
                if idx[a] < out_shape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        out
    }

    fn check<T: Float>(&self, x: &Tensor<T>, what: &str) -> Result<(), ShapeError> {
        if x.rank() != self.dims.len() + 1 {
            return Err(ShapeError::mismatch(
                format!("{what} of Permute"),
                x.shape(),
                format!("rank {} (dims {:?})", self.dims.len() + 1, self.dims),
            ));
        }
        Ok(())
    }

    /// The layer on `x`.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        self.check(x, "input")?;
        let order: Vec<usize> = std::iter::once(0)
            .chain(self.dims.iter().copied())
            .collect();
        let shape: Vec<usize> = order.iter().map(|&a| x.shape()[a]).collect();
        Ok(Tensor::new(
            shape,
            Self::transpose(x.data(), x.shape(), &order),
        )?)
    }

    /// The gradient with respect to the input given the output's gradient (the inverse
    /// permutation).
    pub fn backward<T: Float>(&self, dy: &Tensor<T>) -> Result<Tensor<T>, Error> {
        self.check(dy, "output gradient")?;
        let mut inverse = vec![0usize; self.dims.len() + 1];
        for (i, &d) in self.dims.iter().enumerate() {
            inverse[d] = i + 1;
        }
        let shape: Vec<usize> = inverse.iter().map(|&a| dy.shape()[a]).collect();
        Ok(Tensor::new(
            shape,
            Self::transpose(dy.data(), dy.shape(), &inverse),
        )?)
    }
}

/// `Reshape(target_shape)`: the non-batch axes reshaped to `target_shape`, where one entry may be
/// `-1` (inferred from the size).
///
/// ```
/// use grucell::layers::reshaping::Reshape;
/// use grucell::Tensor;
/// let x = Tensor::new(vec![2, 6], (0..12).map(|v| v as f32).collect())?;
/// let y = Reshape::new(vec![-1, 2])?.call(&x)?;
/// assert_eq!(y.shape(), &[2, 3, 2]);
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reshape {
    target: Vec<i64>,
}

impl Reshape {
    /// `target` of at most 8 positive sizes, or `-1` once.
    pub fn new(target: Vec<i64>) -> Result<Self, ConfigError> {
        let unknown = target.iter().filter(|&&d| d == -1).count();
        if target.len() > MAX_AXES
            || unknown > 1
            || target
                .iter()
                .any(|&d| d == 0 || !(-1..=1 << 31).contains(&d))
        {
            return Err(ConfigError::invalid(
                "Reshape.target_shape",
                format!("{target:?}"),
                "at most 8 positive sizes, one of which may be -1",
            ));
        }
        Ok(Reshape { target })
    }

    /// The target shape (`-1` where inferred).
    pub fn target_shape(&self) -> &[i64] {
        &self.target
    }

    /// Reads a Keras config (`target_shape`).
    pub fn from_keras(cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let v = cfg.get("target_shape").unwrap_or(&Value::Null);
        let target = v
            .as_array()
            .filter(|a| a.len() <= MAX_AXES)
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| {
                ConfigError::invalid("Reshape.target_shape", v, "a list of sizes (one may be -1)")
            })?;
        Self::new(target)
    }

    /// Adds this layer's own keys to a Keras config.
    pub fn write_keras(&self, cfg: &mut Map<String, Value>) {
        cfg.insert("target_shape".into(), Value::from(self.target.clone()));
    }

    /// The target with its `-1` resolved for `n` values per sample, or `None` when it does not
    /// divide them.
    fn resolve(&self, n: usize) -> Option<Vec<usize>> {
        let known: usize = self
            .target
            .iter()
            .filter(|&&d| d > 0)
            .try_fold(1usize, |p, &d| p.checked_mul(d as usize))?;
        self.target
            .iter()
            .map(|&d| {
                if d > 0 {
                    Some(d as usize)
                } else if known > 0 && n.is_multiple_of(known) {
                    Some(n / known)
                } else {
                    None
                }
            })
            .collect::<Option<Vec<usize>>>()
            .filter(|s| s.iter().product::<usize>() == n)
    }

    /// The output shape for an input shape (`None` = not fixed).
    pub fn output_shape(&self, input: &[Option<usize>]) -> Vec<Option<usize>> {
        let n = input
            .get(1..)
            .unwrap_or(&[])
            .iter()
            .try_fold(1usize, |p, d| d.and_then(|d| p.checked_mul(d)));
        let mut out = vec![input.first().copied().flatten()];
        match n.and_then(|n| self.resolve(n)) {
            Some(s) => out.extend(s.into_iter().map(Some)),
            None => out.extend(self.target.iter().map(|&d| usize::try_from(d).ok())),
        }
        out
    }

    /// The layer on `x`.
    pub fn call<T: Float>(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let b = x.shape().first().copied().unwrap_or(0);
        let n = x.shape().get(1..).unwrap_or(&[]).iter().product::<usize>();
        let shape = self.resolve(n).filter(|_| x.rank() >= 1).ok_or_else(|| {
            ShapeError::mismatch(
                "input of Reshape",
                x.shape(),
                format!(
                    "(batch, …) with values per sample that fit target_shape {:?}",
                    self.target
                ),
            )
        })?;
        Ok(Tensor::new([&[b][..], &shape].concat(), x.data().to_vec())?)
    }

    /// The gradient with respect to `x` (of the given shape) given the output's gradient.
    pub fn backward<T: Float>(
        &self,
        x_shape: &[usize],
        dy: &Tensor<T>,
    ) -> Result<Tensor<T>, Error> {
        Ok(Tensor::new(x_shape.to_vec(), dy.data().to_vec())?)
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
    fn permute_and_reshape_move_values_and_gradients_back() {
        let x = Tensor::new(vec![2, 3, 4, 5], (0..120).map(f64::from).collect()).unwrap();
        for dims in [vec![1, 2, 3], vec![3, 1, 2], vec![2, 3, 1], vec![3, 2, 1]] {
            let p = Permute::new(dims.clone()).unwrap();
            let y = p.call(&x).unwrap();
            let want: Vec<usize> = std::iter::once(2)
                .chain(dims.iter().map(|&d| x.shape()[d]))
                .collect();
            assert_eq!(y.shape(), want.as_slice());
            // y[b, i1, i2, i3] = x[b, j…] with j[dims[k]] = i[k]
            let (s1, s2, s3) = (y.shape()[1], y.shape()[2], y.shape()[3]);
            for b in 0..2 {
                for i in 0..s1 * s2 * s3 {
                    let o = [i / (s2 * s3), (i / s3) % s2, i % s3];
                    let mut j = [0usize; 3];
                    for k in 0..3 {
                        j[dims[k] - 1] = o[k];
                    }
                    let src = ((b * 3 + j[0]) * 4 + j[1]) * 5 + j[2];
                    assert_eq!(y.data()[b * 60 + i], x.data()[src]);
                }
            }
            assert_eq!(p.backward(&y).unwrap(), x);
            let sym: Vec<Option<usize>> = x.shape().iter().map(|&d| Some(d)).collect();
            let out: Vec<Option<usize>> = y.shape().iter().map(|&d| Some(d)).collect();
            assert_eq!(p.output_shape(&sym), out);
        }
        assert!(Permute::new(vec![1, 1]).is_err() && Permute::new(vec![0, 1]).is_err());
        assert!(Permute::new(vec![2, 1]).unwrap().call(&x).is_err());
        let r = Reshape::new(vec![-1, 10]).unwrap();
        let y = r.call(&x).unwrap();
        assert_eq!(y.shape(), &[2, 6, 10]);
        assert_eq!(r.backward(x.shape(), &y).unwrap(), x);
        assert_eq!(
            r.output_shape(&[None, Some(3), Some(4), Some(5)]),
            [None, Some(6), Some(10)]
        );
        assert_eq!(
            r.output_shape(&[None, None, Some(10)]),
            [None, None, Some(10)]
        );
        assert!(Reshape::new(vec![7]).unwrap().call(&x).is_err());
        assert!(Reshape::new(vec![-1, -1]).is_err() && Reshape::new(vec![0]).is_err());
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
