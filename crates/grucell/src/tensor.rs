//! A small row-major tensor: a shape and a `Vec` of elements. No strides, no views beyond slices.

use crate::error::ShapeError;
use crate::float::Float;

/// A dense row-major (C-order) array.
///
/// ```
/// use grucell::Tensor;
/// let t = Tensor::<f32>::new(vec![2, 3], vec![0.0; 6])?;
/// assert_eq!(t.shape(), &[2, 3]);
/// assert!(Tensor::<f32>::new(vec![2, 3], vec![0.0; 5]).is_err());
/// # Ok::<(), grucell::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Tensor<T = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// Product of the dimensions, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl<T> Tensor<T> {
    /// Wraps `data` with `shape`; fails when the element count does not match.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self, ShapeError> {
        let needed = checked_numel(&shape).unwrap_or(usize::MAX);
        if needed != data.len() {
            return Err(ShapeError::ElementCount {
                arg: "data".into(),
                shape,
                needed,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements in row-major order, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Takes the elements out.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    /// Splits into shape and elements.
    pub fn into_parts(self) -> (Vec<usize>, Vec<T>) {
        (self.shape, self.data)
    }

    /// Same elements, another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, ShapeError> {
        Tensor::new(shape, self.data)
    }

    /// Size of dimension `axis` (negative counts from the end, as in numpy).
    pub fn dim(&self, axis: isize) -> Option<usize> {
        let r = self.shape.len() as isize;
        let a = if axis < 0 { r + axis } else { axis };
        if (0..r).contains(&a) {
            Some(self.shape[a as usize])
        } else {
            None
        }
    }
}

impl<T: Clone + Default> Tensor<T> {
    /// A tensor of `T::default()` (zeros for floats).
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = checked_numel(&shape).unwrap_or(0);
        Tensor {
            shape,
            data: vec![T::default(); n],
        }
    }
}

impl<T: Float> Tensor<T> {
    /// Converts element type (`f32` ↔ `f64`).
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| U::of(x.f64())).collect(),
        }
    }

    /// Fails with [`ShapeError::NonFinite`] naming `arg` when any element is NaN or infinite.
    pub fn check_finite(&self, arg: &str) -> Result<(), ShapeError> {
        match self.data.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(index) => Err(ShapeError::NonFinite {
                arg: arg.into(),
                value: self.data[index].f64(),
                index,
            }),
        }
    }

    /// Largest absolute element-wise difference (∞ when shapes differ).
    pub fn max_abs_diff(&self, other: &Tensor<T>) -> f64 {
        if self.shape != other.shape {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a.f64() - b.f64()).abs())
            .fold(0.0, f64::max)
    }
}
