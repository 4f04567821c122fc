//! The fast path, free of Keras vocabulary: GEMM, fused gate kernels, vectorized math, scratch.

pub mod gemm;
pub mod gru;
pub mod gru_backward;
pub mod math;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod simd;
pub(crate) mod team;
pub mod workspace;

pub use gemm::{gemm, Operand};
