//! Error types, one enum per concern. Every message names the argument or part, the value found
//! and what was expected.

use thiserror::Error;

/// A configuration value (layer argument, activation name, initializer, …) is invalid.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// An argument has a value outside its allowed range or set.
    #[error("invalid value for `{arg}`: got {value}, expected {expected}")]
    InvalidValue {
        /// Argument name, as Keras spells it.
        arg: String,
        /// The value that was given, formatted.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A name (activation, initializer, loss, …) that grucell does not know.
    #[error("unknown {kind} `{name}`; known: {known}")]
    UnknownName {
        /// What kind of name it is (e.g. "activation").
        kind: &'static str,
        /// The name that was given.
        name: String,
        /// The accepted names, comma separated.
        known: String,
    },
    /// An error in the config of a named layer.
    #[error("layer `{layer}`: {source}")]
    InLayer {
        /// Layer name and class, e.g. "gru (GRU)".
        layer: String,
        /// What is wrong.
        source: Box<ConfigError>,
    },
    /// A Keras layer, option or feature that grucell does not support (yet).
    #[error("unsupported {what}: {detail}")]
    Unsupported {
        /// What is unsupported (e.g. "layer", "option").
        what: String,
        /// Details naming the thing.
        detail: String,
    },
}

impl ConfigError {
    /// Wraps an error with the layer it happened in.
    pub fn in_layer(layer: impl Into<String>, source: ConfigError) -> Self {
        ConfigError::InLayer {
            layer: layer.into(),
            source: Box::new(source),
        }
    }

    /// Shorthand for [`ConfigError::InvalidValue`].
    pub fn invalid(
        arg: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::InvalidValue {
            arg: arg.into(),
            value: shorten(value.to_string()),
            expected: expected.into(),
        }
    }

    /// Shorthand for [`ConfigError::Unsupported`].
    pub fn unsupported(what: impl Into<String>, detail: impl Into<String>) -> Self {
        ConfigError::Unsupported {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Array shapes or values disagree with what an operation needs.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ShapeError {
    /// An array has the wrong shape.
    #[error("`{arg}` has shape {got:?}, expected {expected}")]
    Mismatch {
        /// Which array.
        arg: String,
        /// Its shape.
        got: Vec<usize>,
        /// The expected shape, in words (e.g. "(batch, time, 8)").
        expected: String,
    },
    /// The number of elements does not match the shape.
    #[error("`{arg}`: shape {shape:?} needs {needed} elements, got {got}")]
    ElementCount {
        /// Which array.
        arg: String,
        /// The claimed shape.
        shape: Vec<usize>,
        /// Product of the shape.
        needed: usize,
        /// Number of elements supplied.
        got: usize,
    },
    /// A value outside the range an operation accepts (e.g. a saved iteration count that is
    /// negative or not a whole number).
    #[error("`{arg}` is {value:?}, expected {expected}")]
    OutOfRange {
        /// Which value.
        arg: String,
        /// The value.
        value: f64,
        /// What is accepted, in words.
        expected: String,
    },
    /// A value that must be finite is NaN or infinite.
    #[error("`{arg}` contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Which array.
        arg: String,
        /// The offending value.
        value: f64,
        /// Flat (row-major) index.
        index: usize,
    },
}

impl ShapeError {
    /// Shorthand for [`ShapeError::Mismatch`].
    pub fn mismatch(arg: impl Into<String>, got: &[usize], expected: impl Into<String>) -> Self {
        ShapeError::Mismatch {
            arg: arg.into(),
            got: got.to_vec(),
            expected: expected.into(),
        }
    }
}

/// A file could not be read or written, or its content is not what it claims to be.
#[derive(Debug, Error)]
pub enum FormatError {
    /// An operating-system I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file (or a part of it) is malformed.
    #[error("{path}: {part}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// The part of the file (e.g. "config.json", "model_weights/gru/…").
        part: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl FormatError {
    /// Shorthand for [`FormatError::Malformed`].
    pub fn malformed(
        path: impl Into<String>,
        part: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FormatError::Malformed {
            path: path.into(),
            part: part.into(),
            message: message.into(),
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Training failed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TrainError {
    /// The loss or a gradient became NaN or infinite.
    #[error("training diverged: non-finite {what} at epoch {epoch}, batch {batch}")]
    NonFinite {
        /// "loss" or "gradient".
        what: &'static str,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch within the epoch.
        batch: usize,
    },
}

/// Any grucell error.
#[derive(Debug, Error)]
pub enum Error {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// See [`ShapeError`].
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// See [`FormatError`].
    #[error(transparent)]
    Format(#[from] FormatError),
    /// See [`TrainError`].
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Result alias with [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Values quoted in messages are cut to 200 characters (a hostile config can hold megabytes).
fn shorten(s: String) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} characters)", &s[..cut], s.chars().count()),
        None => s,
    }
}

#[cfg(test)]
mod shorten_tests {
    use super::*;

    #[test]
    fn long_values_are_cut() {
        let e = ConfigError::invalid("units", "9".repeat(5000), "an integer");
        let msg = e.to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains("(5000 characters)"));
        let e = ConfigError::invalid("units", "é".repeat(10), "x");
        assert!(e.to_string().contains(&"é".repeat(10)));
    }
}
