//! Helpers shared by the integration tests (each test binary includes this with `mod common;`
//! and uses what it needs).
#![allow(dead_code)]

use grucell::Tensor;

/// A tiny deterministic generator (64-bit LCG) for test data in `[-1, 1)`.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `[-1, 1)`.
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `n` values scaled by `s`.
    pub fn vec(&mut self, n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * s).collect()
    }

    /// A tensor of `shape` with values scaled by `s`.
    pub fn tensor(&mut self, shape: &[usize], s: f64) -> Tensor<f64> {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), self.vec(n, s)).unwrap()
    }
}
