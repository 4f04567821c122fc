//! Averaging several `GRU(u) → Dense(h)` forecasters *inside one plain Keras model*.
//!
//! `k` GRUs of `u` units each run side by side exactly like one GRU of `k·u` units whose
//! weights are block-structured: the input kernel concatenates the members' gate columns, the
//! recurrent kernel is block-diagonal per gate (unit `j` of member `m` only sees member `m`'s
//! units), and the biases are concatenated — every gate is element-wise per unit, so the
//! combined state is exactly the members' states side by side. A Dense over that state with the
//! members' kernels stacked and divided by `k` (bias: the mean of the biases) outputs the mean
//! of the members' forecasts. The result is an ordinary `Sequential(GRU(k·u), Dense(h))`
//! that Keras loads, and its predictions equal the ensemble mean to float round-off.

use crate::error::{ConfigError, Error};
use crate::layers::dense::{Dense, DenseConfig};
use crate::layers::model::{Layer, Model};
use crate::layers::rnn::{Rnn, RnnKind};
use crate::tensor::Tensor;
use crate::GruCell;

/// The GRU and Dense layers of a `Sequential(GRU, Dense)` model.
fn parts(model: &Model<f32>) -> Result<(&Rnn<f32>, &Dense<f32>), Error> {
    let mut rnn = None;
    let mut dense = None;
    for l in &model.layers {
        match &l.layer {
            Layer::Rnn(r) if rnn.is_none() => rnn = Some(r),
            Layer::Dense(d) if dense.is_none() => dense = Some(d),
            Layer::Input { .. } => {}
            _ => {
                return Err(ConfigError::unsupported(
                    "ensemble member",
                    format!(
                        "layer `{}` (only Sequential(GRU, Dense) models merge)",
                        l.name
                    ),
                )
                .into())
            }
        }
    }
    match (rnn, dense) {
        (Some(r), Some(d)) if r.cells().len() == 1 => Ok((r, d)),
        _ => Err(ConfigError::unsupported(
            "ensemble member",
            format!(
                "model `{}` (expected one single-cell GRU followed by one Dense)",
                model.name
            ),
        )
        .into()),
    }
}

/// Merges `members` (all `Sequential(GRU(u), Dense(h))` with the same input shape, units,
/// cell options and horizon) into one model whose output is their mean.
///
/// ```
/// use grucell::forecast::ensemble::merge_members;
/// use grucell::layers::dense::DenseConfig;
/// use grucell::layers::model::{Layer, Model};
/// use grucell::{GruCellConfig, Rnn, RnnKind, Tensor};
/// let member = |seed: u64| -> grucell::Result<Model<f32>> {
///     let gru = Rnn::new(GruCellConfig::new(3).seed(Some(seed)), 1)?.with_kind(RnnKind::Gru)?;
///     Model::sequential("m", vec![Some(4), Some(1)], vec![
///         ("gru".into(), Layer::Rnn(gru)),
///         ("dense".into(), Layer::Dense(DenseConfig::new(2).build(3, seed)?)),
///     ])
/// };
/// let (a, b) = (member(1)?, member(2)?);
/// let merged = merge_members(&[a.clone(), b.clone()])?;
/// let x = Tensor::new(vec![1, 4, 1], vec![0.1, -0.4, 0.3, 0.9])?;
/// let (ya, yb, ym) = (a.predict(&[x.clone()])?, b.predict(&[x.clone()])?, merged.predict(&[x])?);
/// for i in 0..2 {
///     let mean = (ya[0].data()[i] + yb[0].data()[i]) / 2.0;
///     assert!((ym[0].data()[i] - mean).abs() < 1e-5);
/// }
/// # Ok::<(), grucell::Error>(())
/// ```
pub fn merge_members(members: &[Model<f32>]) -> Result<Model<f32>, Error> {
    let first = members
        .first()
        .ok_or_else(|| ConfigError::invalid("members", "[]", "at least one model"))?;
    if members.len() == 1 {
        return Ok(first.clone());
    }
    let (r0, d0) = parts(first)?;
    let c0 = &r0.cells()[0];
    let cfg0 = c0.config().clone();
    let (u, input_dim, h) = (c0.units(), c0.input_dim(), d0.config().units);
    let k = members.len();
    let mut cells: Vec<&GruCell<f32>> = Vec::with_capacity(k);
    let mut denses: Vec<&Dense<f32>> = Vec::with_capacity(k);
    for m in members {
        let (r, d) = parts(m)?;
        let c = &r.cells()[0];
        let same_cell = {
            let mut a = c.config().clone();
            a.seed = cfg0.seed;
            a == cfg0
        };
        if !same_cell
            || c.input_dim() != input_dim
            || d.config().units != h
            || d.input_dim() != u
            || m.input_shapes() != first.input_shapes()
        {
            return Err(ConfigError::invalid(
                "members",
                format!("model `{}`", m.name),
                "the same GRU config, input shape and Dense width as the first member",
            )
            .into());
        }
        cells.push(c);
        denses.push(d);
    }
    let ku = k * u;
    let g = 3 * ku;
    // Kernel (input_dim, 3ku): gate block q of member m goes to columns q·ku + m·u.
    let mut kernel = vec![0f32; input_dim * g];
    let mut rec = vec![0f32; ku * g];
    let bias_rows = cfg0.bias_shape().map(|s| if s.len() == 2 { 2 } else { 1 });
    let mut bias = bias_rows.map(|rows| vec![0f32; rows * g]);
    for (m, c) in cells.iter().enumerate() {
        let kd = c.kernel().data();
        let rd = c.recurrent_kernel().data();
        for q in 0..3 {
            for j in 0..u {
                let src = q * u + j;
                let dst = q * ku + m * u + j;
                for i in 0..input_dim {
                    kernel[i * g + dst] = kd[i * 3 * u + src];
                }
                for i in 0..u {
                    rec[(m * u + i) * g + dst] = rd[i * 3 * u + src];
                }
                if let (Some(b), Some(cb), Some(rows)) = (bias.as_mut(), c.bias(), bias_rows) {
                    for row in 0..rows {
                        b[row * g + dst] = cb.data()[row * 3 * u + src];
                    }
                }
            }
        }
    }
    let cfg = {
        let mut c = cfg0.clone();
        c.units = ku;
        c
    };
    let bias_t = match (bias, cfg.bias_shape()) {
        (Some(b), Some(shape)) => Some(Tensor::new(shape, b)?),
        _ => None,
    };
    let cell = GruCell::from_weights(
        cfg,
        Tensor::new(vec![input_dim, g], kernel)?,
        Tensor::new(vec![ku, g], rec)?,
        bias_t,
    )?;
    let rnn = Rnn::from_cells(vec![cell], RnnKind::Gru)?.name(r0.name.clone());
    // Dense: stacked kernels / k, mean bias.
    let scale = 1.0 / k as f32;
    let mut dk = vec![0f32; ku * h];
    let mut db = vec![0f32; h];
    for (m, d) in denses.iter().enumerate() {
        for (i, v) in d.kernel().data().iter().enumerate() {
            dk[m * u * h + i] = v * scale;
        }
        if let Some(b) = d.bias() {
            for (acc, v) in db.iter_mut().zip(b.data()) {
                *acc += v * scale;
            }
        }
    }
    let dcfg: DenseConfig = d0.config().clone();
    let dense = Dense::from_weights(
        dcfg.clone(),
        Tensor::new(vec![ku, h], dk)?,
        if dcfg.use_bias {
            Some(Tensor::new(vec![h], db)?)
        } else {
            None
        },
    )?;
    let input_shape = first
        .input_shapes()
        .into_iter()
        .next()
        .map(|s| s.into_iter().skip(1).collect())
        .unwrap_or_else(|| vec![None, Some(input_dim)]);
    let gru_name = first
        .layers
        .iter()
        .find(|l| matches!(l.layer, Layer::Rnn(_)))
        .map_or("gru".to_string(), |l| l.name.clone());
    let dense_name = first
        .layers
        .iter()
        .find(|l| matches!(l.layer, Layer::Dense(_)))
        .map_or("dense".to_string(), |l| l.name.clone());
    Model::sequential(
        &first.name,
        input_shape,
        vec![
            (gru_name, Layer::Rnn(rnn)),
            (dense_name, Layer::Dense(dense)),
        ],
    )
}
