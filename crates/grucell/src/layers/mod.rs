//! Keras semantics: cells, layers, activations, initializers, regularizers, constraints, models.

pub mod activation;
pub mod attention;
pub mod batch_norm;
pub mod bidirectional;
pub mod constraint;
pub mod conv;
pub mod dense;
pub mod embedding;
pub mod gru_cell;
pub mod initializer;
pub mod keras_json;
pub(crate) mod keras_order;
pub mod mask_ops;
pub mod merge;
pub mod model;
pub mod multi_head_attention;
pub mod noise;
pub mod normalization;
pub mod pointwise;
pub mod pooling;
pub mod preprocessing;
pub mod regularizer;
pub mod reshaping;
pub mod rnn;
pub mod steps;
pub mod window_pooling;
