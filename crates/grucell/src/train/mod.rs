//! Training: backward pass (BPTT), losses, optimizers, `fit`.

pub mod backward;
pub mod fit;
pub mod loss;
pub mod optimizer;
pub mod rnn_grad;
pub mod schedule;
