//! `Dot`: the batch-wise dot product of two tensors of rank 2 or 3 along one axis of each
//! (`keras.layers.Dot(axes, normalize)`), as Keras 3.15.1's `batch_dot` computes it: the
//! attention scores of a GRU encoder–decoder (`Dot(axes=[2, 2])([decoder, encoder])`) and their
//! context (`Dot(axes=[2, 1])([weights, encoder])`). The output carries no mask, as in Keras.

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::pointwise::L2Scale;
use crate::tensor::Tensor;

/// Most values a `Dot` output may hold (1 GiB of `float32`).
pub const MAX_DOT_OUTPUT: usize = 1 << 28;

/// `normalize=True`'s ε (Keras' `backend.epsilon()`): rows are scaled by
/// `min(1/√Σx², 1/ε)`.
const EPSILON: f64 = 1e-7;

/// The `axes` of a `Dot` layer, as its config gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotAxes {
    /// One axis for both inputs (negative from the end of each).
    Same(isize),
    /// One axis per input.
    Pair(isize, isize),
}

/// A `Dot` layer.
///
/// ```
/// use grucell::layers::dot::{Dot, DotAxes};
/// use grucell::Tensor;
/// // Scores of 2 decoder steps against 3 encoder steps, 2 features: (1, 2, 2) · (1, 3, 2).
/// let dec = Tensor::new(vec![1, 2, 2], vec![1.0f32, 0.0, 0.0, 1.0])?;
/// let enc = Tensor::new(vec![1, 3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// let dot = Dot { axes: DotAxes::Pair(2, 2), normalize: false };
/// let s = dot.call(&dec, &enc)?;
/// assert_eq!((s.shape(), s.data()), (&[1usize, 2, 3][..], &[1.0f32, 3.0, 5.0, 2.0, 4.0, 6.0][..]));
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dot {
    /// The contracted axes.
    pub axes: DotAxes,
    /// L2-normalize both inputs along their contracted axis first (cosine similarity).
    pub normalize: bool,
}

/// How one input is read as a batch of matrices: `rows` (the kept axis, 1 for a rank-2 input),
/// `k` (the contracted axis) and the strides of both within a sample.
#[derive(Clone, Copy, Debug)]
struct View {
    rows: usize,
    k: usize,
    row_stride: usize,
    k_stride: usize,
    sample: usize,
    kept: bool,
}

impl View {
    fn at(self, b: usize, r: usize, k: usize) -> usize {
        b * self.sample + r * self.row_stride + k * self.k_stride
    }
}

impl Dot {
    /// Reads a Keras `Dot` config (`axes`: an integer or a pair; `normalize`).
    pub fn from_keras(cfg: &Map<String, Value>) -> Result<Self, ConfigError> {
        let v = cfg.get("axes").unwrap_or(&Value::Null);
        let err = || ConfigError::invalid("Dot.axes", v, "an integer or a list of two integers");
        let int = |v: &Value| {
            v.as_i64()
                .and_then(|a| isize::try_from(a).ok())
                .ok_or_else(err)
        };
        let axes = match v {
            Value::Array(a) if a.len() == 2 => DotAxes::Pair(int(&a[0])?, int(&a[1])?),
            Value::Array(_) | Value::Null => return Err(err()),
            _ => DotAxes::Same(int(v)?),
        };
        let normalize = match cfg.get("normalize") {
            None | Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ConfigError::invalid("Dot.normalize", v, "true or false"))?,
        };
        Ok(Dot { axes, normalize })
    }

    /// Adds the layer's own keys to a Keras config.
    pub fn write_keras(&self, c: &mut Map<String, Value>) {
        let axes = match self.axes {
            DotAxes::Same(a) => json!(a),
            DotAxes::Pair(a, b) => json!([a, b]),
        };
        c.insert("axes".into(), axes);
        c.insert("normalize".into(), json!(self.normalize));
    }

    /// The two contracted axes for inputs of ranks `rx` and `ry` (Keras resolves a negative
    /// axis modulo the rank), checked to be 1 or 2.
    fn resolved(&self, rx: usize, ry: usize) -> Result<(usize, usize), Error> {
        let (a, b) = match self.axes {
            DotAxes::Same(a) => (a, a),
            DotAxes::Pair(a, b) => (a, b),
        };
        let fix = |a: isize, r: usize| -> Option<usize> {
            let a = if a < 0 { a.rem_euclid(r as isize) } else { a };
            usize::try_from(a).ok().filter(|&a| a >= 1 && a < r)
        };
        match (rx, ry) {
            (2 | 3, 2 | 3) => {}
            _ => {
                return Err(ShapeError::mismatch(
                    "inputs of Dot",
                    &[rx, ry],
                    "ranks 2 or 3 ((batch, features) or (batch, steps, features))",
                )
                .into())
            }
        }
        fix(a, rx).zip(fix(b, ry)).ok_or_else(|| {
            ConfigError::invalid(
                "Dot.axes",
                format!("{:?}", self.axes),
                format!("axes other than the batch's of inputs of ranks {rx} and {ry}"),
            )
            .into()
        })
    }

    fn views(&self, x: &[usize], y: &[usize]) -> Result<(View, View), Error> {
        let (ax, ay) = self.resolved(x.len(), y.len())?;
        let view = |s: &[usize], axis: usize| -> View {
            let sample = s[1..].iter().product();
            if s.len() == 2 {
                return View {
                    rows: 1,
                    k: s[1],
                    row_stride: 0,
                    k_stride: 1,
                    sample,
                    kept: false,
                };
            }
            // Rank 3: the other axis is the kept one.
            let (k, rows) = if axis == 2 {
                (s[2], s[1])
            } else {
                (s[1], s[2])
            };
            let (k_stride, row_stride) = if axis == 2 { (1, s[2]) } else { (s[2], 1) };
            View {
                rows,
                k,
                row_stride,
                k_stride,
                sample,
                kept: true,
            }
        };
        let (vx, vy) = (view(x, ax), view(y, ay));
        if x[0] != y[0] || vx.k != vy.k {
            return Err(ShapeError::mismatch(
                "inputs of Dot",
                y,
                format!("the batch of {x:?} and {} along axis {ay}", vx.k),
            )
            .into());
        }
        Ok((vx, vy))
    }

    /// The output shape for the inputs' shapes (`None` = not fixed), as Keras'
    /// `compute_output_shape`: `x`'s shape without its axis, then `y`'s without the batch and
    /// its axis, `(batch, 1)` when nothing is left.
    pub fn output_shape(&self, x: &[Option<usize>], y: &[Option<usize>]) -> Vec<Option<usize>> {
        let Ok((ax, ay)) = self.resolved(x.len(), y.len()) else {
            return Vec::new();
        };
        let mut out: Vec<Option<usize>> = x
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ax)
            .map(|(_, d)| *d)
            .collect();
        out.extend(
            y.iter()
                .enumerate()
                .skip(1)
                .filter(|(i, _)| *i != ay)
                .map(|(_, d)| *d),
        );
        if out.len() == 1 {
            out.push(Some(1));
        }
        out
    }

    fn out_shape(x: &[usize], vx: View, vy: View) -> Vec<usize> {
        let mut s = vec![x[0]];
        s.extend(vx.kept.then_some(vx.rows));
        s.extend(vy.kept.then_some(vy.rows));
        if s.len() == 1 {
            s.push(1);
        }
        s
    }

    /// `x` scaled along its contracted axis by `min(1/√Σx², 1/ε)` (when normalizing), with the
    /// per-row scales for the backward pass.
    fn normalized<T: Float>(&self, x: &Tensor<T>, v: View) -> (Tensor<T>, Vec<L2Scale<T>>) {
        if !self.normalize {
            return (x.clone(), Vec::new());
        }
        let batch = x.shape()[0];
        let mut out = x.clone();
        let mut scales = Vec::with_capacity(batch * v.rows);
        for b in 0..batch {
            for r in 0..v.rows {
                let s = L2Scale::of((0..v.k).map(|k| x.data()[v.at(b, r, k)]), EPSILON);
                for k in 0..v.k {
                    out.data_mut()[v.at(b, r, k)] *= s.inv;
                }
                scales.push(s);
            }
        }
        (out, scales)
    }

    /// The layer on `[x, y]`.
    pub fn call<T: Float>(&self, x: &Tensor<T>, y: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let (vx, vy) = self.views(x.shape(), y.shape())?;
        let shape = Self::out_shape(x.shape(), vx, vy);
        crate::tensor::checked_numel(&shape)
            .filter(|&n| n <= MAX_DOT_OUTPUT)
            .ok_or_else(|| {
                ShapeError::mismatch(
                    "output of Dot",
                    &shape,
                    format!("at most {MAX_DOT_OUTPUT} values"),
                )
            })?;
        let (xn, _) = self.normalized(x, vx);
        let (yn, _) = self.normalized(y, vy);
        let (xd, yd) = (xn.data(), yn.data());
        let mut out = Vec::with_capacity(shape.iter().product());
        for b in 0..x.shape()[0] {
            for r in 0..vx.rows {
                for c in 0..vy.rows {
                    out.push((0..vx.k).fold(T::zero(), |a, k| {
                        a + xd[vx.at(b, r, k)] * yd[vy.at(b, c, k)]
                    }));
                }
            }
        }
        Ok(Tensor::new(shape, out)?)
    }

    /// The gradients with respect to `x` and `y` given the output's gradient `dout`.
    pub fn backward<T: Float>(
        &self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        dout: &Tensor<T>,
    ) -> Result<(Tensor<T>, Tensor<T>), Error> {
        let (vx, vy) = self.views(x.shape(), y.shape())?;
        let shape = Self::out_shape(x.shape(), vx, vy);
        if dout.shape() != shape.as_slice() {
            return Err(ShapeError::mismatch(
                "output gradient of Dot",
                dout.shape(),
                format!("{shape:?}"),
            )
            .into());
        }
        let (xn, sx) = self.normalized(x, vx);
        let (yn, sy) = self.normalized(y, vy);
        let (xd, yd, g) = (xn.data(), yn.data(), dout.data());
        let mut dxn = vec![T::zero(); x.len()];
        let mut dyn_ = vec![T::zero(); y.len()];
        for b in 0..x.shape()[0] {
            for r in 0..vx.rows {
                for c in 0..vy.rows {
                    let go = g[(b * vx.rows + r) * vy.rows + c];
                    for k in 0..vx.k {
                        dxn[vx.at(b, r, k)] += go * yd[vy.at(b, c, k)];
                        dyn_[vy.at(b, c, k)] += go * xd[vx.at(b, r, k)];
                    }
                }
            }
        }
        let dx = self.unnormalize(x, vx, &sx, dxn);
        let dy = self.unnormalize(y, vy, &sy, dyn_);
        Ok((
            Tensor::new(x.shape().to_vec(), dx)?,
            Tensor::new(y.shape().to_vec(), dy)?,
        ))
    }

    /// The gradient with respect to an input from that of its normalized copy (see
    /// [`L2Scale::square_sum_grad`]).
    fn unnormalize<T: Float>(
        &self,
        x: &Tensor<T>,
        v: View,
        scales: &[L2Scale<T>],
        mut d: Vec<T>,
    ) -> Vec<T> {
        if !self.normalize {
            return d;
        }
        let xd = x.data();
        for b in 0..x.shape()[0] {
            for r in 0..v.rows {
                let s = scales[b * v.rows + r];
                let dinv =
                    (0..v.k).fold(T::zero(), |a, k| a + d[v.at(b, r, k)] * xd[v.at(b, r, k)]);
                for k in 0..v.k {
                    d[v.at(b, r, k)] *= s.inv;
                }
                if let Some(c) = s.square_sum_grad(dinv) {
                    for k in 0..v.k {
                        let i = v.at(b, r, k);
                        d[i] += c * (xd[i] * T::of(2.0));
                    }
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, seed: f64) -> Tensor<f64> {
        let n = shape.iter().product();
        Tensor::new(
            shape,
            (0..n).map(|i| ((i as f64 + seed) * 0.77).sin()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn gradients_match_central_differences_and_shapes_match_keras() {
        let cases = [
            (
                vec![2, 3, 4],
                vec![2, 5, 4],
                DotAxes::Pair(2, 2),
                vec![2, 3, 5],
            ),
            (
                vec![2, 3, 5],
                vec![2, 5, 4],
                DotAxes::Pair(2, 1),
                vec![2, 3, 4],
            ),
            (
                vec![2, 4, 3],
                vec![2, 4, 2],
                DotAxes::Same(1),
                vec![2, 3, 2],
            ),
            (vec![2, 4], vec![2, 4], DotAxes::Same(-1), vec![2, 1]),
            (vec![2, 4], vec![2, 3, 4], DotAxes::Pair(1, 2), vec![2, 3]),
            (vec![2, 3, 4], vec![2, 4], DotAxes::Pair(-1, -1), vec![2, 3]),
        ];
        for (sx, sy, axes, sout) in cases {
            for normalize in [false, true] {
                let dot = Dot { axes, normalize };
                let (x, y) = (t(sx.clone(), 0.3), t(sy.clone(), 1.9));
                let out = dot.call(&x, &y).unwrap();
                assert_eq!(out.shape(), sout.as_slice(), "{dot:?}");
                let sym = |s: &[usize]| s.iter().map(|&d| Some(d)).collect::<Vec<_>>();
                assert_eq!(dot.output_shape(&sym(&sx), &sym(&sy)), sym(&sout));
                let g = t(sout.clone(), 4.1);
                let (dx, dy) = dot.backward(&x, &y, &g).unwrap();
                let f = |x: &Tensor<f64>, y: &Tensor<f64>| -> f64 {
                    dot.call(x, y)
                        .unwrap()
                        .data()
                        .iter()
                        .zip(g.data())
                        .map(|(a, b)| a * b)
                        .sum()
                };
                for (which, base, grad) in [(0, &x, &dx), (1, &y, &dy)] {
                    for i in 0..base.len() {
                        let mut p = base.clone();
                        p.data_mut()[i] += 1e-6;
                        let mut m = base.clone();
                        m.data_mut()[i] -= 1e-6;
                        let fd = if which == 0 {
                            (f(&p, &y) - f(&m, &y)) / 2e-6
                        } else {
                            (f(&x, &p) - f(&x, &m)) / 2e-6
                        };
                        assert!(
                            (fd - grad.data()[i]).abs() < 1e-6,
                            "{dot:?} input {which}[{i}]: {fd} vs {}",
                            grad.data()[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn configs_round_trip_and_refuse() {
        let cfg = |v: Value| v.as_object().cloned().unwrap();
        for d in [
            Dot {
                axes: DotAxes::Same(-1),
                normalize: true,
            },
            Dot {
                axes: DotAxes::Pair(2, 1),
                normalize: false,
            },
        ] {
            let mut c = Map::new();
            d.write_keras(&mut c);
            assert_eq!(Dot::from_keras(&c).unwrap(), d);
        }
        for bad in [
            json!({"axes": [1, 2, 3]}),
            json!({"axes": "x"}),
            json!({}),
            json!({"axes": 1, "normalize": 3}),
        ] {
            let e = Dot::from_keras(&cfg(bad.clone())).unwrap_err().to_string();
            assert!(e.contains("Dot."), "{bad}: {e}");
        }
        let d = Dot {
            axes: DotAxes::Same(0),
            normalize: false,
        };
        let x = t(vec![2, 3], 0.0);
        assert!(d.call(&x, &x).unwrap_err().to_string().contains("Dot.axes"));
        let d = Dot {
            axes: DotAxes::Same(1),
            normalize: false,
        };
        assert!(d.call(&x, &t(vec![2, 4], 0.0)).is_err());
        assert!(d.call(&t(vec![2, 3, 4, 5], 0.0), &x).is_err());
    }
}
