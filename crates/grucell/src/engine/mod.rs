//! The fast path, free of Keras vocabulary: GEMM, fused gate kernels, vectorized math, scratch.

mod gates;
pub mod gemm;
pub mod gru;
pub mod gru_backward;
pub mod isa;
#[allow(unsafe_code)] // runtime-dispatched AVX2+FMA / AVX-512 gate math
pub mod math;
#[allow(unsafe_code)] // runtime-dispatched AVX2+FMA / AVX-512 kernels
pub mod packed;
#[allow(unsafe_code)] // madvise: huge pages for large buffers
mod pages;
pub(crate) mod pair;
pub mod prepacked;
pub mod projection;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // AVX2+FMA register tiles (raw loads after bounds checks)
mod simd;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // AVX-512F register tiles (raw loads after bounds checks)
mod simd512;
pub(crate) mod team;
pub mod workspace;

pub use gemm::{gemm, Operand};
