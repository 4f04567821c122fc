//! The boolean operations Keras 3 records in a Functional graph when it computes the mask of a
//! merge of masked tensors (`Concatenate.compute_mask`, the merges' `logical_or`):
//! `ExpandDims`, `ZerosLike` / `OnesLike` (bool), `LogicalOr` and the `Concatenate` *op*, and
//! the `ConvertToTensor` of the attention layers' `compute_mask`. They act on `(shape, flags)`
//! values; `NotEqual` and `Any` (Masking's) live in the model itself.

use crate::error::{ConfigError, Error, ShapeError};
use crate::layers::merge::{axis_in, concat, concat_symbolic};

/// One recorded mask operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskOp {
    /// `ops.expand_dims(x, axis)`.
    ExpandDims {
        /// Where the new axis goes (negative from the end of the result).
        axis: isize,
    },
    /// `ops.zeros_like(x, dtype="bool")`: all false, `x`'s shape.
    ZerosLike,
    /// `ops.ones_like(x, dtype="bool")`: all true, `x`'s shape.
    OnesLike,
    /// `ops.logical_or(a, b)`, with NumPy broadcasting of size-1 axes.
    LogicalOr,
    /// `ops.concatenate(xs, axis)` of boolean tensors.
    Concatenate {
        /// Axis (negative from the end).
        axis: isize,
    },
    /// `ops.convert_to_tensor(mask)` (module `keras.src.ops.core`): the identity.
    ConvertToTensor,
}

/// A boolean tensor: shape and row-major flags.
pub type Flags = (Vec<usize>, Vec<bool>);

impl MaskOp {
    /// The module Keras records for the op.
    pub fn module(self) -> &'static str {
        match self {
            MaskOp::ConvertToTensor => "keras.src.ops.core",
            _ => "keras.src.ops.numpy",
        }
    }

    /// The Keras class name (module [`MaskOp::module`]).
    pub fn class_name(self) -> &'static str {
        match self {
            MaskOp::ExpandDims { .. } => "ExpandDims",
            MaskOp::ZerosLike => "ZerosLike",
            MaskOp::OnesLike => "OnesLike",
            MaskOp::LogicalOr => "LogicalOr",
            MaskOp::Concatenate { .. } => "Concatenate",
            MaskOp::ConvertToTensor => "ConvertToTensor",
        }
    }

    /// The operation of a recorded op's class name (`axis` for the two that take one).
    pub fn from_class(class: &str, axis: isize) -> Option<Self> {
        Some(match class {
            "ExpandDims" => MaskOp::ExpandDims { axis },
            "ZerosLike" => MaskOp::ZerosLike,
            "OnesLike" => MaskOp::OnesLike,
            "LogicalOr" => MaskOp::LogicalOr,
            "Concatenate" => MaskOp::Concatenate { axis },
            "ConvertToTensor" => MaskOp::ConvertToTensor,
            _ => return None,
        })
    }

    /// Applies the op to its arguments' shapes and flags (`ZerosLike`/`OnesLike` only read the
    /// shape).
    ///
    /// ```
    /// use grucell::layers::mask_ops::MaskOp;
    ///
    /// let m = (vec![1, 2], vec![true, false]);
    /// let e = MaskOp::ExpandDims { axis: -1 }.apply(&[m])?; // (1, 2, 1)
    /// let z = MaskOp::ZerosLike.apply(&[(vec![1, 2, 3], vec![])])?;
    /// let or = MaskOp::LogicalOr.apply(&[e, z])?; // broadcast to (1, 2, 3)
    /// assert_eq!(or.1, [true, true, true, false, false, false]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn apply(self, args: &[Flags]) -> Result<Flags, Error> {
        let arity = |n: usize| -> Result<(), Error> {
            if args.len() == n {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("{} op arguments", self.class_name()),
                    args.len(),
                    format!("{n} tensors"),
                )
                .into())
            }
        };
        match self {
            MaskOp::ExpandDims { axis } => {
                arity(1)?;
                let (shape, data) = &args[0];
                let rank = shape.len() + 1;
                let a = axis_in(axis, rank).ok_or_else(|| {
                    ConfigError::invalid(
                        "ExpandDims.axis",
                        axis,
                        format!("an axis of a rank-{rank} result"),
                    )
                })?;
                let mut s = shape.clone();
                s.insert(a, 1);
                Ok((s, data.clone()))
            }
            MaskOp::ZerosLike | MaskOp::OnesLike => {
                arity(1)?;
                let shape = args[0].0.clone();
                let n = shape.iter().product();
                Ok((shape, vec![self == MaskOp::OnesLike; n]))
            }
            MaskOp::LogicalOr => {
                arity(2)?;
                broadcast_or(&args[0], &args[1])
            }
            MaskOp::ConvertToTensor => {
                arity(1)?;
                Ok(args[0].clone())
            }
            MaskOp::Concatenate { axis } => {
                let Some((first, _)) = args.first() else {
                    return Err(ConfigError::invalid(
                        "Concatenate op arguments",
                        0,
                        "at least 1 tensor",
                    )
                    .into());
                };
                let rank = first.len();
                let a = axis_in(axis, rank).ok_or_else(|| {
                    ConfigError::invalid(
                        "Concatenate op axis",
                        axis,
                        format!("an axis of rank-{rank} tensors"),
                    )
                })?;
                let parts: Vec<(&[usize], &[bool])> = args
                    .iter()
                    .map(|(s, d)| (s.as_slice(), d.as_slice()))
                    .collect();
                concat(&parts, a, "Concatenate op argument")
            }
        }
    }

    /// The output shape from the arguments' shapes (`None` = unknown size).
    pub fn output_shape(self, args: &[Vec<Option<usize>>]) -> Vec<Option<usize>> {
        let first = args.first().cloned().unwrap_or_default();
        match self {
            MaskOp::ExpandDims { axis } => {
                let mut s = first;
                if let Some(a) = axis_in(axis, s.len() + 1) {
                    s.insert(a, Some(1));
                }
                s
            }
            MaskOp::ZerosLike | MaskOp::OnesLike | MaskOp::ConvertToTensor => first,
            MaskOp::LogicalOr => {
                let other = args.get(1).cloned().unwrap_or_default();
                first
                    .iter()
                    .zip(&other)
                    .map(|(a, b)| match (a, b) {
                        (Some(1), x) | (x, Some(1)) => *x,
                        (x, _) => *x,
                    })
                    .collect()
            }
            MaskOp::Concatenate { axis } => concat_symbolic(args, axis),
        }
    }
}

/// `a | b` with NumPy broadcasting (equal ranks; an axis of size 1 stretches).
fn broadcast_or(a: &Flags, b: &Flags) -> Result<Flags, Error> {
    let (sa, sb) = (&a.0, &b.0);
    let bad = || -> Error {
        ShapeError::mismatch(
            "LogicalOr op argument",
            sb,
            format!("a shape that broadcasts with {sa:?}"),
        )
        .into()
    };
    if sa.len() != sb.len() {
        return Err(bad());
    }
    let shape: Vec<usize> = sa
        .iter()
        .zip(sb)
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    if a.1.len() != sa.iter().product::<usize>() || b.1.len() != sb.iter().product::<usize>() {
        return Err(bad());
    }
    // Row-major strides, 0 along a stretched axis.
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![0; s.len()];
        let mut acc = 1;
        for i in (0..s.len()).rev() {
            st[i] = if s[i] == 1 { 0 } else { acc };
            acc *= s[i];
        }
        st
    };
    let (ta, tb) = (strides(sa), strides(sb));
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let ia: usize = idx.iter().zip(&ta).map(|(i, s)| i * s).sum();
        let ib: usize = idx.iter().zip(&tb).map(|(i, s)| i * s).sum();
        out.push(a.1[ia] || b.1[ib]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok((shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenate_mask_as_keras_builds_it() {
        // Concatenate.compute_mask for a masked (B=1, T=2, 2 features) and an unmasked input:
        // any(concat(expand(m) | zeros_like(x1), ones_like(x2)), -1) keeps every step.
        let m = (vec![1, 2], vec![true, false]);
        let e = MaskOp::ExpandDims { axis: -1 }.apply(&[m]).unwrap();
        let z = MaskOp::ZerosLike.apply(&[(vec![1, 2, 2], vec![])]).unwrap();
        let or = MaskOp::LogicalOr.apply(&[e, z]).unwrap();
        assert_eq!(or, (vec![1, 2, 2], vec![true, true, false, false]));
        let ones = MaskOp::OnesLike.apply(&[(vec![1, 2, 1], vec![])]).unwrap();
        let cat = MaskOp::Concatenate { axis: -1 }.apply(&[or, ones]).unwrap();
        assert_eq!(
            cat,
            (vec![1, 2, 3], vec![true, true, true, false, false, true])
        );
        assert_eq!(
            MaskOp::Concatenate { axis: -1 }
                .output_shape(&[vec![None, Some(2), Some(2)], vec![None, Some(2), Some(1)]]),
            [None, Some(2), Some(3)]
        );
        assert!(MaskOp::LogicalOr
            .apply(&[(vec![2], vec![true; 2]), (vec![3], vec![true; 3])])
            .is_err());
        assert!(MaskOp::ExpandDims { axis: 5 }
            .apply(&[(vec![2], vec![true; 2])])
            .is_err());
    }
}
