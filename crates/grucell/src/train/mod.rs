//! Training: backward pass (BPTT), losses, metrics, optimizers, `fit`.

pub mod backward;
pub mod fit;
pub mod loss;
pub mod metrics;
pub mod optimizer;
pub mod rnn_grad;
pub mod schedule;
