//! `Embedding`: integer indices to rows of a `(input_dim, output_dim)` table, with Keras'
//! `mask_zero` padding mask (the usual front of a text GRU: `Embedding(…, mask_zero=True)`
//! then `GRU`).

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::constraint::Constraint;
use crate::layers::gru_cell::{dtype_policy, MAX_UNITS};
use crate::layers::initializer::Initializer;
use crate::layers::keras_json::{get_bool, get_str, get_u64};
use crate::layers::regularizer::Regularizer;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;
use crate::train::optimizer::RowGrads;
use serde_json::{json, Map, Value};

/// Largest vocabulary (`input_dim`) a file may declare: 2^24 rows, the largest index a
/// `float32` input holds exactly.
pub const MAX_INPUT_DIM: usize = 1 << 24;

/// Largest table (`input_dim · output_dim`) a file may declare: 2^28 values (1 GiB of
/// `float32`), so that a hostile config cannot ask for a huge allocation.
pub const MAX_TABLE: usize = 1 << 28;

/// Configuration of a Keras `Embedding` layer.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingConfig {
    /// Vocabulary size: indices run from 0 to `input_dim − 1`.
    pub input_dim: usize,
    /// Width of each embedding vector.
    pub output_dim: usize,
    /// Table initializer (Keras default `uniform`: U(−0.05, 0.05)).
    pub embeddings_initializer: Initializer,
    /// Table penalty.
    pub embeddings_regularizer: Option<Regularizer>,
    /// Table constraint.
    pub embeddings_constraint: Option<Constraint>,
    /// Penalty on the layer's output (added to the loss divided by the batch size).
    pub activity_regularizer: Option<Regularizer>,
    /// Whether index 0 is padding: the layer then emits the mask `indices != 0`.
    pub mask_zero: bool,
    /// Layer name.
    pub name: String,
}

impl EmbeddingConfig {
    /// `Embedding(input_dim, output_dim)` with Keras defaults.
    ///
    /// ```
    /// use grucell::layers::embedding::EmbeddingConfig;
    ///
    /// let e = EmbeddingConfig::new(100, 8).mask_zero(true).build::<f32>(7)?;
    /// assert_eq!(e.param_count(), 800);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn new(input_dim: usize, output_dim: usize) -> Self {
        EmbeddingConfig {
            input_dim,
            output_dim,
            embeddings_initializer: Initializer::RandomUniform {
                minval: -0.05,
                maxval: 0.05,
                seed: None,
            },
            embeddings_regularizer: None,
            embeddings_constraint: None,
            activity_regularizer: None,
            mask_zero: false,
            name: "embedding".into(),
        }
    }

    /// Sets `mask_zero`.
    pub fn mask_zero(mut self, b: bool) -> Self {
        self.mask_zero = b;
        self
    }

    /// Sets the name.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = n.into();
        self
    }

    /// Reads a Keras `Embedding` config (Keras 3 and TF-Keras 2, whose `input_length` is
    /// ignored as Keras 3 ignores it).
    pub fn from_keras(c: &Map<String, Value>) -> Result<Self, ConfigError> {
        let dim = |key: &str, max: usize| -> Result<usize, ConfigError> {
            let v = get_u64(c, key)?.ok_or_else(|| {
                ConfigError::invalid(format!("Embedding.{key}"), "missing", "a positive integer")
            })?;
            if v == 0 || v > max as u64 {
                return Err(ConfigError::invalid(
                    format!("Embedding.{key}"),
                    v,
                    format!("a positive integer (at most {max})"),
                ));
            }
            Ok(v as usize)
        };
        let mut e = EmbeddingConfig::new(
            dim("input_dim", MAX_INPUT_DIM)?,
            dim("output_dim", MAX_UNITS * 16)?,
        );
        if e.input_dim.saturating_mul(e.output_dim) > MAX_TABLE {
            return Err(ConfigError::invalid(
                "Embedding.input_dim × output_dim",
                e.input_dim.saturating_mul(e.output_dim),
                format!("at most {MAX_TABLE} values"),
            ));
        }
        if let Some(v) = c.get("embeddings_initializer") {
            e.embeddings_initializer = Initializer::from_keras(v)?;
        }
        e.embeddings_regularizer = c
            .get("embeddings_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        e.embeddings_constraint = c
            .get("embeddings_constraint")
            .map_or(Ok(None), Constraint::from_keras)?;
        e.activity_regularizer = c
            .get("activity_regularizer")
            .map_or(Ok(None), Regularizer::from_keras)?;
        e.mask_zero = get_bool(c, "mask_zero", false)?;
        if let Some(n) = get_str(c, "name")? {
            e.name = n.into();
        }
        for key in ["lora_rank", "quantization_config"] {
            if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
                return Err(ConfigError::unsupported(
                    "Embedding option",
                    format!("{key} = {v}"),
                ));
            }
        }
        Ok(e)
    }

    /// The Keras 3 config object.
    pub fn to_keras(&self, dtype: &str) -> Map<String, Value> {
        let reg = |r: &Option<Regularizer>| r.as_ref().map_or(Value::Null, Regularizer::to_keras);
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("trainable".into(), json!(true));
        m.insert("dtype".into(), dtype_policy(dtype));
        m.insert("input_dim".into(), json!(self.input_dim));
        m.insert("output_dim".into(), json!(self.output_dim));
        m.insert(
            "embeddings_initializer".into(),
            self.embeddings_initializer.to_keras(),
        );
        m.insert(
            "embeddings_regularizer".into(),
            reg(&self.embeddings_regularizer),
        );
        m.insert(
            "activity_regularizer".into(),
            reg(&self.activity_regularizer),
        );
        m.insert(
            "embeddings_constraint".into(),
            self.embeddings_constraint
                .as_ref()
                .map_or(Value::Null, Constraint::to_keras),
        );
        m.insert("mask_zero".into(), json!(self.mask_zero));
        m.insert("quantization_config".into(), Value::Null);
        m
    }

    /// Builds the layer with a fresh table.
    pub fn build<T: Float>(&self, seed: u64) -> Result<Embedding<T>, Error> {
        let table = self
            .embeddings_initializer
            .init(&[self.input_dim, self.output_dim], seed)?;
        Embedding::from_weights(self.clone(), table)
    }
}

/// An Embedding layer with its table `(input_dim, output_dim)`.
#[derive(Clone, Debug)]
pub struct Embedding<T = f32> {
    config: EmbeddingConfig,
    embeddings: Tensor<T>,
}

impl<T: Float> Embedding<T> {
    /// Wraps a table; fails when its shape disagrees with the config.
    pub fn from_weights(config: EmbeddingConfig, embeddings: Tensor<T>) -> Result<Self, Error> {
        if embeddings.shape() != [config.input_dim, config.output_dim] {
            return Err(ShapeError::mismatch(
                format!("{}.embeddings", config.name),
                embeddings.shape(),
                format!("({}, {})", config.input_dim, config.output_dim),
            )
            .into());
        }
        Ok(Embedding { config, embeddings })
    }

    /// The config.
    pub fn config(&self) -> &EmbeddingConfig {
        &self.config
    }

    /// The table `(input_dim, output_dim)`.
    pub fn embeddings(&self) -> &Tensor<T> {
        &self.embeddings
    }

    /// Weights in Keras order (the table).
    pub fn weights(&self) -> Vec<&Tensor<T>> {
        vec![&self.embeddings]
    }

    /// Mutable weights in Keras order.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Tensor<T>> {
        vec![&mut self.embeddings]
    }

    /// Parameter count.
    pub fn param_count(&self) -> usize {
        self.embeddings.len()
    }

    /// The table row each input element selects, as Keras computes it: a float input is cast
    /// to `int32` (truncated toward zero), a negative index counts once from the end (`−1` is
    /// the last row), and an index outside the table is an error (TensorFlow's `gather` on a
    /// CPU refuses it too).
    pub fn rows(&self, x: &Tensor<T>) -> Result<Vec<usize>, Error> {
        let n = self.config.input_dim as f64;
        x.data()
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let i = v.f64().trunc();
                let i = if i < 0.0 { i + n } else { i };
                if (0.0..n).contains(&i) {
                    Ok(i as usize)
                } else {
                    Err(ShapeError::OutOfRange {
                        arg: format!("input of `{}` at flat index {index}", self.config.name),
                        value: v.f64(),
                        expected: format!(
                            "an index in [-{}, {}) (input_dim = {})",
                            self.config.input_dim, self.config.input_dim, self.config.input_dim
                        ),
                    }
                    .into())
                }
            })
            .collect()
    }

    /// The embedding of every input element: shape `x.shape + (output_dim,)`.
    ///
    /// ```
    /// use grucell::layers::embedding::{Embedding, EmbeddingConfig};
    /// use grucell::Tensor;
    ///
    /// let table = Tensor::new(vec![3, 2], vec![0.0f32, 0.0, 1.0, 2.0, 3.0, 4.0])?;
    /// let e = Embedding::from_weights(EmbeddingConfig::new(3, 2).mask_zero(true), table)?;
    /// let x = Tensor::new(vec![1, 3], vec![2.0f32, -2.0, 0.0])?;
    /// assert_eq!(e.call(&x)?.data(), &[3.0, 4.0, 1.0, 2.0, 0.0, 0.0]);
    /// assert_eq!(e.compute_mask(&x)?.unwrap().data, [true, true, false]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn call(&self, x: &Tensor<T>) -> Result<Tensor<T>, Error> {
        let d = self.config.output_dim;
        let rows = self.rows(x)?;
        let mut out = Vec::with_capacity(rows.len() * d);
        for r in rows {
            out.extend_from_slice(&self.embeddings.data()[r * d..(r + 1) * d]);
        }
        let mut shape = x.shape().to_vec();
        shape.push(d);
        Ok(Tensor::new(shape, out)?)
    }

    /// Keras' `compute_mask`: `x != 0` when `mask_zero`, else `None`. The mask of a
    /// `(batch, time)` input is a [`Mask`]; other ranks are refused with `mask_zero`.
    pub fn compute_mask(&self, x: &Tensor<T>) -> Result<Option<Mask>, Error> {
        if !self.config.mask_zero {
            return Ok(None);
        }
        match x.shape() {
            &[b, t] => Ok(Some(Mask::new(
                b,
                t,
                x.data().iter().map(|v| *v != T::zero()).collect(),
            )?)),
            s => Err(ShapeError::mismatch(
                format!("input of `{}` (mask_zero = true)", self.config.name),
                s,
                "(batch, time)",
            )
            .into()),
        }
    }

    /// Gradient of the table for output gradient `dy` (shape `x.shape + (output_dim,)`), in
    /// the form TensorFlow's gather gives it: one row of `dy` per input element, for the table
    /// row that element selected ([`RowGrads::dense`] sums them per table row).
    pub fn row_grads(&self, x: &Tensor<T>, dy: &Tensor<T>) -> Result<RowGrads<T>, Error> {
        let d = self.config.output_dim;
        if dy.len() != x.len() * d {
            return Err(ShapeError::mismatch(
                format!("gradient of `{}`", self.config.name),
                dy.shape(),
                format!("{:?} + ({d},)", x.shape()),
            )
            .into());
        }
        Ok(RowGrads::new(d, self.rows(x)?, dy.data().to_vec())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(mask_zero: bool) -> Embedding<f64> {
        let table = Tensor::new(vec![4, 2], (0..8).map(f64::from).collect()).unwrap();
        Embedding::from_weights(EmbeddingConfig::new(4, 2).mask_zero(mask_zero), table).unwrap()
    }

    #[test]
    fn indices_follow_keras_casting_and_negative_wrap() {
        let e = layer(false);
        let x = Tensor::new(vec![2, 3], vec![0.0, 3.9, -0.5, -1.0, -4.0, 2.0]).unwrap();
        assert_eq!(e.rows(&x).unwrap(), [0, 3, 0, 3, 0, 2]);
        assert_eq!(e.compute_mask(&x).unwrap(), None);
        for bad in [4.0, -5.0, 1e30] {
            let x = Tensor::new(vec![1, 1], vec![bad]).unwrap();
            let msg = e.call(&x).unwrap_err().to_string();
            assert!(msg.contains("input_dim = 4"), "{msg}");
        }
    }

    #[test]
    fn mask_is_taken_before_the_cast_and_gradient_sums_repeats() {
        let e = layer(true);
        let x = Tensor::new(vec![1, 4], vec![1.0, 0.0, -0.5, 1.0]).unwrap();
        assert_eq!(
            e.compute_mask(&x).unwrap().unwrap().data,
            [true, false, true, true]
        );
        let dy = Tensor::new(vec![1, 4, 2], (1..=8).map(f64::from).collect()).unwrap();
        // Row 1 twice (elements 0 and 3), row 0 twice (elements 1 and 2).
        assert_eq!(
            e.row_grads(&x, &dy).unwrap().dense(8).unwrap(),
            [
                3.0 + 5.0,
                4.0 + 6.0,
                1.0 + 7.0,
                2.0 + 8.0,
                0.0,
                0.0,
                0.0,
                0.0
            ]
        );
        let rank3 = Tensor::new(vec![1, 1, 1], vec![1.0]).unwrap();
        assert!(e.compute_mask(&rank3).is_err());
    }

    #[test]
    fn config_round_trips_and_refuses_hostile_sizes() {
        let c = EmbeddingConfig::new(10, 3).mask_zero(true).name("emb");
        let m = c.to_keras("float32");
        assert_eq!(EmbeddingConfig::from_keras(&m).unwrap(), c);
        let mut huge = m.clone();
        huge.insert("input_dim".into(), json!(1u64 << 24));
        huge.insert("output_dim".into(), json!(1u64 << 10));
        assert!(EmbeddingConfig::from_keras(&huge).is_err());
        let mut zero = m;
        zero.insert("output_dim".into(), json!(0));
        assert!(EmbeddingConfig::from_keras(&zero).is_err());
    }
}
