//! Helpers for reading Keras' serialized objects (`{"class_name", "config", "module", …}`).

use crate::error::ConfigError;
use serde_json::{Map, Value};

/// Splits a serialized Keras object into `(class_name, config)`. A bare string is returned as
/// `(string, empty config)`; `null` gives `None`.
/// A serialized object split into its class name and config map.
pub type ClassAndConfig = (String, Map<String, Value>);

/// Splits a serialized Keras object; see the module docs.
pub fn class_and_config(v: &Value) -> Result<Option<ClassAndConfig>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some((s.clone(), Map::new()))),
        Value::Object(o) => {
            let class = o.get("class_name").and_then(Value::as_str).ok_or_else(|| {
                ConfigError::invalid("class_name", v, "a Keras object with a string `class_name`")
            })?;
            let config = match o.get("config") {
                Some(Value::Object(c)) => c.clone(),
                None | Some(Value::Null) => Map::new(),
                Some(other) => {
                    return Err(ConfigError::invalid(
                        format!("{class}.config"),
                        other,
                        "an object",
                    ))
                }
            };
            Ok(Some((class.to_string(), config)))
        }
        other => Err(ConfigError::invalid(
            "object",
            other,
            "a string, an object or null",
        )),
    }
}

/// Reads an optional float field (absent or null → `default`).
pub fn get_f64(c: &Map<String, Value>, key: &str, default: f64) -> Result<f64, ConfigError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| ConfigError::invalid(key, v, "a number")),
    }
}

/// Reads an optional bool field (absent or null → `default`).
pub fn get_bool(c: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ConfigError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ConfigError::invalid(key, v, "true or false")),
    }
}

/// Reads an optional non-negative integer field (absent or null → `None`).
pub fn get_u64(c: &Map<String, Value>, key: &str) -> Result<Option<u64>, ConfigError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e18)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| ConfigError::invalid(key, v, "a non-negative integer")),
    }
}

/// Reads an optional string field (absent or null → `None`).
pub fn get_str<'a>(c: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ConfigError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(ConfigError::invalid(key, v, "a string")),
    }
}

/// Reads a layer's `data_format` (`"channels_last"`, the default, or `"channels_first"`):
/// whether the features come before the steps. `layer` names the layer class in errors.
pub fn channels_first(c: &Map<String, Value>, layer: &str) -> Result<bool, ConfigError> {
    match c.get("data_format") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "channels_last" => Ok(false),
        Some(Value::String(s)) if s == "channels_first" => Ok(true),
        Some(other) => Err(ConfigError::invalid(
            format!("{layer}.data_format"),
            other,
            "\"channels_last\" or \"channels_first\"",
        )),
    }
}

/// The `data_format` value Keras writes for [`channels_first`]'s flag.
pub fn data_format(channels_first: bool) -> Value {
    Value::from(if channels_first {
        "channels_first"
    } else {
        "channels_last"
    })
}

/// The `value` of a tensor as Keras serializes one in a config
/// (`{"class_name": "__tensor__", "config": {"value": …, "dtype": …}}`); `None` for anything
/// else, a tensor without a value included.
///
/// ```
/// use grucell::layers::keras_json::tensor_value;
/// use serde_json::json;
/// let t = json!({"class_name": "__tensor__", "config": {"value": [1.0, 2.0], "dtype": "float32"}});
/// assert_eq!(tensor_value(&t), Some(&json!([1.0, 2.0])));
/// assert_eq!(tensor_value(&json!([1.0, 2.0])), None);
/// ```
pub fn tensor_value(v: &Value) -> Option<&Value> {
    if v.get("class_name").and_then(Value::as_str) != Some("__tensor__") {
        return None;
    }
    v.get("config").and_then(|c| c.get("value"))
}

/// Converts Keras' class names to the snake_case names its serializer also accepts
/// (`GlorotUniform` → `glorot_uniform`, `L1L2` → `l1l2`), exactly as
/// `keras.src.utils.naming.to_snake_case` does it with its three regular expressions.
pub fn to_snake_case(name: &str) -> String {
    let c: Vec<char> = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2")
    let mut step = Vec::with_capacity(c.len() + 4);
    let mut i = 0;
    while i < c.len() {
        if i + 2 < c.len() && c[i + 1].is_ascii_uppercase() && c[i + 2].is_ascii_lowercase() {
            step.push(c[i]);
            step.push('_');
            step.push(c[i + 1]);
            i += 2;
            while i < c.len() && c[i].is_ascii_lowercase() {
                step.push(c[i]);
                i += 1;
            }
        } else {
            step.push(c[i]);
            i += 1;
        }
    }
    // re.sub("([a-z])([A-Z])", r"\1_\2").lower()
    let mut out = String::with_capacity(step.len() + 4);
    let mut i = 0;
    while i < step.len() {
        if i + 1 < step.len() && step[i].is_ascii_lowercase() && step[i + 1].is_ascii_uppercase() {
            out.push(step[i]);
            out.push('_');
            out.extend(step[i + 1].to_lowercase());
            i += 2;
        } else {
            out.extend(step[i].to_lowercase());
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_like_keras() {
        assert_eq!(to_snake_case("GlorotUniform"), "glorot_uniform");
        assert_eq!(to_snake_case("GRU"), "gru");
        assert_eq!(to_snake_case("RNN"), "rnn");
        assert_eq!(to_snake_case("StackedRNNCells"), "stacked_rnn_cells");
        assert_eq!(to_snake_case("InputLayer"), "input_layer");
        assert_eq!(to_snake_case("GRUCell"), "gru_cell");
        assert_eq!(to_snake_case("Dense"), "dense");
        assert_eq!(to_snake_case("L1L2"), "l1l2");
        assert_eq!(to_snake_case("MaxNorm"), "max_norm");
    }
}
