//! Training: backward pass (BPTT), losses, optimizers, `fit`.

pub mod loss;
pub mod optimizer;
