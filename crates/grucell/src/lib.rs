//! # grucell
//!
//! The Keras GRU cell (`keras.layers.GRUCell`, R's `layer_gru_cell`) and the RNN layer around it,
//! computed exactly as Keras computes it: same gate order (z, r, h), same weight layout
//! (kernel `(input_dim, 3·units)`, recurrent kernel `(units, 3·units)`, bias `(2, 3·units)` when
//! `reset_after` else `(3·units,)`), same numbers to float32 round-off.
//!
//! The seed example of the Keras documentation:
//!
//! ```
//! use grucell::{GruCellConfig, Rnn, Tensor};
//!
//! // inputs <- k_random_uniform(c(32, 10, 8))
//! let inputs = Tensor::<f32>::new(vec![32, 10, 8], (0..32 * 10 * 8).map(|i| (i % 7) as f32 / 7.0).collect())?;
//!
//! // output <- inputs %>% layer_rnn(layer_gru_cell(4))
//! let rnn = Rnn::new(GruCellConfig::new(4), 8)?;
//! let output = rnn.call(&inputs)?;
//! assert_eq!(output.output.shape(), &[32, 4]);
//!
//! // rnn <- layer_rnn(cell = layer_gru_cell(4), return_sequences = TRUE, return_state = TRUE)
//! let rnn = Rnn::new(GruCellConfig::new(4), 8)?.return_sequences(true).return_state(true);
//! let out = rnn.call(&inputs)?;
//! assert_eq!(out.output.shape(), &[32, 10, 4]);   // whole_sequence_output
//! assert_eq!(out.states[0].shape(), &[32, 4]);    // final_state
//! # Ok::<(), grucell::Error>(())
//! ```

#![warn(missing_docs)]
// `unsafe` is allowed only in the engine's kernel modules (`engine::{math, packed, simd}`) and
// in `engine::pages` (one `madvise`), and every block there must carry a `// SAFETY:` comment.
#![deny(unsafe_code, clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bench;
pub mod engine;
pub mod error;
pub mod float;
pub mod forecast;
pub mod io;
pub mod layers;
pub mod tensor;
pub mod train;

pub use error::{ConfigError, Error, FormatError, Result, ShapeError, TrainError};
pub use float::Float;
pub use layers::activation::Activation;
pub use layers::constraint::Constraint;
pub use layers::gru_cell::{GruCell, GruCellConfig};
pub use layers::initializer::Initializer;
pub use layers::model::Model;
pub use layers::regularizer::Regularizer;
pub use layers::rnn::{Mask, Rnn, RnnKind, RnnOutput, RnnStream};
pub use tensor::Tensor;
pub use train::fit::{FitConfig, History};
pub use train::loss::Loss;
pub use train::optimizer::{Optimizer, OptimizerConfig};
