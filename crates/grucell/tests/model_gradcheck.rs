//! Model-level gradient checks (f64, central finite differences of `Model::loss_and_grads`) for
//! every element of every trainable variable, on models loaded from the Keras training fixtures
//! (tests/fixtures/training: stacked cells, Bidirectional in every merge mode, masks,
//! go_backwards, initial states, return_state outputs, Dense heads, regularizers, the
//! crossentropy logits shortcut) and on models built here (stacked Bidirectional with masks,
//! activity regularizers, other activations and losses, dropout with a fixed seed).
//!
//! Also the dropout masks themselves (`CellDropout::draw`: rates, values, how many masks) and
//! how they are applied (one input mask for all steps and gates when `recurrent_dropout = 0`;
//! three input and three recurrent masks otherwise, checked against a reference GRU written
//! here), and that inference ignores dropout.

use grucell::io::keras::load::model_from_file;
use grucell::io::keras::load_keras_file;
use grucell::io::npy::read_npz;
use grucell::layers::batch_norm::BatchNorm;
use grucell::layers::bidirectional::{Bidirectional, MergeMode};
use grucell::layers::conv::Conv1D;
use grucell::layers::dense::{Dense, DenseConfig};
use grucell::layers::embedding::{Embedding, EmbeddingConfig};
use grucell::layers::model::{Layer, Model};
use grucell::layers::multi_head_attention::MultiHeadAttention;
use grucell::layers::normalization::LayerNorm;
use grucell::layers::prelu::PRelu;
use grucell::layers::rms_norm::RmsNorm;
use grucell::train::backward::VarId;
use grucell::train::loss::Loss;
use grucell::train::rnn_grad::CellDropout;
use grucell::{Activation, GruCell, GruCellConfig, Regularizer, Rnn, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

// ------------------------------------------------------------------------------------ helpers

mod common;
use common::Lcg;

fn rebuild_rnn(r: &Rnn<f64>, cells: Vec<GruCell<f64>>) -> Rnn<f64> {
    Rnn::from_cells(cells, r.kind())
        .unwrap()
        .return_sequences(r.returns_sequences())
        .return_state(r.returns_state())
        .go_backwards(r.is_go_backwards())
        .stateful(r.is_stateful())
        .zero_output_for_mask(r.zeroes_masked_outputs())
        .unroll(r.is_unrolled())
        .name(r.name.clone())
        .activity_regularizer(r.activity_regularizer_ref().cloned())
        .threads(r.thread_count())
}

/// `r` with weight `index` (flattened over its cells in Keras order) element `elem` set to `v`.
fn rnn_with(r: &Rnn<f64>, index: usize, elem: usize, v: f64) -> (Rnn<f64>, bool) {
    let mut k = 0;
    let mut hit = false;
    let cells = r
        .cells()
        .iter()
        .map(|c| {
            let mut ws: Vec<Tensor<f64>> = c.weights().into_iter().cloned().collect();
            for w in ws.iter_mut() {
                if k == index {
                    w.data_mut()[elem] = v;
                    hit = true;
                }
                k += 1;
            }
            let mut it = ws.into_iter();
            let (kern, rec) = (it.next().unwrap(), it.next().unwrap());
            GruCell::from_weights(c.config().clone(), kern, rec, it.next()).unwrap()
        })
        .collect();
    (rebuild_rnn(r, cells), hit)
}

fn rnn_weight_count(r: &Rnn<f64>) -> usize {
    r.cells().iter().map(|c| c.weights().len()).sum()
}

/// Reads variable `id` element `elem`.
fn get_var(m: &Model<f64>, id: &VarId, elem: usize) -> f64 {
    match &m.layers[id.layer].layer {
        Layer::Rnn(r) => r
            .cells()
            .iter()
            .flat_map(|c| c.weights())
            .nth(id.index)
            .unwrap()
            .data()[elem],
        Layer::Bidirectional(b) => b
            .forward
            .cells()
            .iter()
            .chain(b.backward.cells())
            .flat_map(|c| c.weights())
            .nth(id.index)
            .unwrap()
            .data()[elem],
        Layer::Dense(d) => d.weights()[id.index].data()[elem],
        Layer::Embedding(e) => e.embeddings().data()[elem],
        Layer::LayerNorm(n) => n.weights()[id.index].data()[elem],
        Layer::Conv1D(c) => c.weights()[id.index].data()[elem],
        Layer::BatchNorm(n) => n.weights()[id.index].data()[elem],
        Layer::Attention(a) => a.weights()[id.index].data()[elem],
        Layer::MultiHeadAttention(a) => a.weights()[id.index].data()[elem],
        Layer::PRelu(p) => p.alpha().data()[elem],
        Layer::RmsNorm(n) => n.scale().data()[elem],
        _ => panic!("variable in a layer without weights"),
    }
}

/// A copy of `m` with variable `id` element `elem` set to `v` (layers rebuilt through the public
/// constructors, every flag copied).
fn with_var(m: &Model<f64>, id: &VarId, elem: usize, v: f64) -> Model<f64> {
    let mut out = m.clone();
    let layer = &mut out.layers[id.layer].layer;
    match layer {
        Layer::Rnn(r) => {
            let (nr, hit) = rnn_with(r, id.index, elem, v);
            assert!(hit);
            *r = nr;
        }
        Layer::Bidirectional(b) => {
            let nf = rnn_weight_count(&b.forward);
            if id.index < nf {
                b.forward = rnn_with(&b.forward, id.index, elem, v).0;
            } else {
                b.backward = rnn_with(&b.backward, id.index - nf, elem, v).0;
            }
        }
        Layer::Dense(d) => {
            let mut k = d.kernel().clone();
            let mut bias = d.bias().cloned();
            match id.index {
                0 => k.data_mut()[elem] = v,
                _ => bias.as_mut().unwrap().data_mut()[elem] = v,
            }
            *d = Dense::from_weights(d.config().clone(), k, bias).unwrap();
        }
        Layer::Embedding(e) => {
            let mut table = e.embeddings().clone();
            table.data_mut()[elem] = v;
            *e = Embedding::from_weights(e.config().clone(), table).unwrap();
        }
        Layer::LayerNorm(n) => {
            let mut ws: Vec<Tensor<f64>> = n.weights().into_iter().cloned().collect();
            ws[id.index].data_mut()[elem] = v;
            let (scale, center) = (n.config().scale, n.config().center);
            let mut it = ws.into_iter();
            let gamma = if scale { it.next() } else { None };
            let beta = if center { it.next() } else { None };
            *n = LayerNorm::from_weights(n.config().clone(), gamma, beta).unwrap();
        }
        Layer::Conv1D(c) => {
            let mut k = c.kernel().clone();
            let mut bias = c.bias().cloned();
            match id.index {
                0 => k.data_mut()[elem] = v,
                _ => bias.as_mut().unwrap().data_mut()[elem] = v,
            }
            *c = Conv1D::from_weights(c.config().clone(), k, bias).unwrap();
        }
        Layer::BatchNorm(n) => {
            let mut ws: Vec<Tensor<f64>> = n.weights().into_iter().cloned().collect();
            ws[id.index].data_mut()[elem] = v;
            let (scale, center) = (n.config().scale, n.config().center);
            let mut it = ws.into_iter();
            let gamma = if scale { it.next() } else { None };
            let beta = if center { it.next() } else { None };
            let (mean, var) = (it.next().unwrap(), it.next().unwrap());
            *n = BatchNorm::from_weights(n.config().clone(), gamma, beta, mean, var).unwrap();
        }
        Layer::Attention(a) => {
            let mut ws: Vec<Tensor<f64>> = a.weights().into_iter().cloned().collect();
            ws[id.index].data_mut()[elem] = v;
            *a = a.clone().with_weights(ws).unwrap();
        }
        Layer::MultiHeadAttention(a) => {
            let mut ws: Vec<Tensor<f64>> = a.weights().into_iter().cloned().collect();
            ws[id.index].data_mut()[elem] = v;
            *a = MultiHeadAttention::from_weights(a.config().clone(), ws).unwrap();
        }
        Layer::PRelu(p) => {
            let mut alpha = p.alpha().clone();
            alpha.data_mut()[elem] = v;
            *p = PRelu::from_weights(p.config().clone(), alpha).unwrap();
        }
        Layer::RmsNorm(n) => {
            let mut scale = n.scale().clone();
            scale.data_mut()[elem] = v;
            *n = RmsNorm::from_weights(n.config().clone(), scale).unwrap();
        }
        _ => panic!("variable in a layer without weights"),
    }
    out
}

fn loss_of(
    m: &mut Model<f64>,
    x: &[Tensor<f64>],
    y: &[Tensor<f64>],
    loss: &Loss,
    seed: Option<u64>,
) -> f64 {
    let mut rng = seed.map(StdRng::seed_from_u64);
    m.loss_and_grads(x, y, loss, rng.as_mut()).unwrap().loss
}

/// Central differences for every element of every trainable variable; returns the number of
/// elements checked and the worst |analytic − numeric| / (1e-8 + 1e-6 · scale).
fn gradcheck(
    label: &str,
    m: &Model<f64>,
    x: &[Tensor<f64>],
    y: &[Tensor<f64>],
    loss: &Loss,
    seed: Option<u64>,
) -> Result<(usize, f64), String> {
    let mut base = m.clone();
    let mut rng = seed.map(StdRng::seed_from_u64);
    let lg = base
        .loss_and_grads(x, y, loss, rng.as_mut())
        .map_err(|e| format!("{label}: {e}"))?;
    let vars = m.trainable_variables();
    if lg.grads.len() != vars.len() {
        return Err(format!(
            "{label}: {} gradients for {} variables",
            lg.grads.len(),
            vars.len()
        ));
    }
    // Rebuilding without a change must reproduce the loss exactly (the perturbation helper
    // must not drop any layer flag).
    let same = loss_of(
        &mut with_var(m, &vars[0].0, 0, get_var(m, &vars[0].0, 0)),
        x,
        y,
        loss,
        seed,
    );
    if same != lg.loss {
        return Err(format!(
            "{label}: rebuilt model gives loss {same} instead of {}",
            lg.loss
        ));
    }
    let mut worst: f64 = 0.0;
    let mut n = 0;
    let mut errs = Vec::new();
    for ((id, shape), g) in vars.iter().zip(&lg.grads) {
        let count: usize = shape.iter().product();
        if g.len() != count {
            errs.push(format!(
                "{}: gradient has {} values for shape {shape:?}",
                id.path,
                g.len()
            ));
            continue;
        }
        for (e, &ge) in g.iter().enumerate() {
            let w = get_var(m, id, e);
            let h = 1e-5 * w.abs().max(1.0);
            let lp = loss_of(&mut with_var(m, id, e, w + h), x, y, loss, seed);
            let lm = loss_of(&mut with_var(m, id, e, w - h), x, y, loss, seed);
            let num = (lp - lm) / (2.0 * h);
            let tol = 1e-8 + 1e-6 * ge.abs().max(num.abs());
            let d = (ge - num).abs();
            worst = worst.max(d / tol);
            n += 1;
            // NaN-safe: a NaN difference fails too; the first 8 failures are listed
            if (d.is_nan() || d > tol) && errs.len() < 8 {
                errs.push(format!(
                    "{}[{e}]: analytic {ge:.10e}, numeric {num:.10e}",
                    id.path
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok((n, worst))
    } else {
        Err(format!("{label}:\n    {}", errs.join("\n    ")))
    }
}

// --------------------------------------------------------------------- models from the fixtures

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/training"
    ))
}

#[test]
fn fixture_models_gradcheck() {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let mut failures = Vec::new();
    let mut models = 0;
    let mut seen = std::collections::HashSet::new();
    for case in m["cases"].as_array().unwrap() {
        let file = case["model"].as_str().unwrap();
        if !seen.insert(file.to_string()) {
            continue; // opt_* cases share one model
        }
        let name = case["name"].as_str().unwrap();
        if let Some(why) = case["not_derivative"].as_str() {
            // Keras' gradient is not the derivative of its loss here; training_keras checks
            // grucell takes Keras' steps.
            eprintln!("skip {name:30} {why}");
            continue;
        }
        let data: HashMap<String, Tensor<f64>> =
            read_npz(&fixture_dir().join(case["data"].as_str().unwrap()))
                .unwrap()
                .into_iter()
                .map(|(k, a)| (k, a.to_f64()))
                .collect();
        let model =
            model_from_file::<f64>(&load_keras_file(&fixture_dir().join(file)).unwrap()).unwrap();
        let loss = Loss::from_keras(&model.compile_config.as_ref().unwrap()["loss"]).unwrap();
        let x: Vec<Tensor<f64>> = (0..case["n_inputs"].as_u64().unwrap())
            .map(|i| data[&format!("x_{i}")].clone())
            .collect();
        let y: Vec<Tensor<f64>> = (0..case["n_outputs"].as_u64().unwrap())
            .map(|i| data[&format!("y_{i}")].clone())
            .collect();
        match gradcheck(name, &model, &x, &y, &loss, None) {
            Ok((n, w)) => eprintln!("ok   {name:30} {n:4} elements, worst err/tol {w:.3}"),
            Err(e) => failures.push(e),
        }
        models += 1;
    }
    assert!(models >= 25, "only {models} fixture models");
    assert!(
        failures.is_empty(),
        "{} models failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ----------------------------------------------------------------------- models built in Rust

fn cell(units: usize, seed: u64) -> GruCellConfig {
    GruCellConfig::new(units).seed(Some(seed)).bias_initializer(
        grucell::Initializer::RandomNormal {
            mean: 0.0,
            stddev: 0.4,
            seed: Some(seed + 100),
        },
    )
}

/// `B × T × D` data with whole steps set to 0 (masked by `Masking(0.0)`): a gap, trailing
/// padding, leading steps, a sample with only its last step.
fn masked_x(r: &mut Lcg, b: usize, t: usize, d: usize) -> Tensor<f64> {
    let mut x = r.tensor(&[b, t, d], 1.0);
    let zero = |x: &mut Tensor<f64>, s: usize, k: usize| {
        x.data_mut()[(s * t + k) * d..(s * t + k + 1) * d].fill(0.0)
    };
    for &(s, k) in &[(1, 1), (1, 2), (2, t - 1), (3, 0), (3, 1)] {
        zero(&mut x, s, k);
    }
    for k in 0..t - 1 {
        zero(&mut x, 4, k);
    }
    x
}

fn bidir_stacked(merge: MergeMode, rs: bool) -> Layer<f64> {
    let cfgs = |s: u64| {
        vec![
            cell(3, s),
            cell(2, s + 1).reset_after(false).name("gru_cell_1"),
        ]
    };
    let f = Rnn::stacked(cfgs(1), 3).unwrap().return_sequences(rs);
    let b = Rnn::stacked(cfgs(7), 3)
        .unwrap()
        .return_sequences(rs)
        .go_backwards(true);
    Layer::Bidirectional(Bidirectional::new(f, b, Some(merge)).unwrap())
}

fn dense(units: usize, input: usize, act: Activation, seed: u64) -> Layer<f64> {
    let mut c = DenseConfig::new(units).activation(act);
    c.bias_initializer = grucell::Initializer::RandomNormal {
        mean: 0.0,
        stddev: 0.3,
        seed: Some(seed),
    };
    Layer::Dense(c.build(input, seed).unwrap())
}

#[test]
fn built_models_gradcheck() {
    let (b, t, d) = (5, 5, 3);
    let mut r = Lcg(42);
    let mut failures = Vec::new();
    let mut run =
        |label: &str,
         m: Model<f64>,
         x: Vec<Tensor<f64>>,
         y: Vec<Tensor<f64>>,
         loss: Loss,
         seed: Option<u64>| match gradcheck(label, &m, &x, &y, &loss, seed) {
            Ok((n, w)) => eprintln!("ok   {label:40} {n:4} elements, worst err/tol {w:.3}"),
            Err(e) => failures.push(e),
        };
    // Masking -> Bidirectional(stacked [GRUCell(3), GRUCell(2, ra=False)], seq), every merge mode
    // -> Dense(3, tanh) -> Dense(2); masked sequence loss.
    for (i, merge) in [
        MergeMode::Concat,
        MergeMode::Sum,
        MergeMode::Mul,
        MergeMode::Ave,
    ]
    .into_iter()
    .enumerate()
    {
        let width = if merge == MergeMode::Concat { 4 } else { 2 };
        let m = Model::sequential(
            "bi",
            vec![Some(t), Some(d)],
            vec![
                ("masking".into(), Layer::Masking { mask_value: 0.0 }),
                ("bidirectional".into(), bidir_stacked(merge, true)),
                (
                    "dense".into(),
                    dense(3, width, Activation::Tanh, 11 + i as u64),
                ),
                (
                    "dense_1".into(),
                    dense(2, 3, Activation::Linear, 21 + i as u64),
                ),
            ],
        )
        .unwrap();
        run(
            &format!("mask bidir stacked seq {merge:?}"),
            m,
            vec![masked_x(&mut r, b, t, d)],
            vec![r.tensor(&[b, t, 2], 1.0)],
            Loss::MeanSquaredError,
            None,
        );
    }
    // Bidirectional(stacked) last output, masked, mul merge, sigmoid head + bce (logits shortcut).
    let m = Model::sequential(
        "bi_last",
        vec![Some(t), Some(d)],
        vec![
            ("masking".into(), Layer::Masking { mask_value: 0.0 }),
            ("bidirectional".into(), bidir_stacked(MergeMode::Mul, false)),
            ("dense".into(), dense(2, 2, Activation::Sigmoid, 5)),
        ],
    )
    .unwrap();
    let yb = Tensor::new(
        vec![b, 2],
        (0..2 * b).map(|i| (i % 3 == 0) as u8 as f64).collect(),
    )
    .unwrap();
    run(
        "mask bidir stacked last mul + bce",
        m,
        vec![masked_x(&mut r, b, t, d)],
        vec![yb],
        Loss::BinaryCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        },
        None,
    );

    // Masking -> RNN(stacked, go_backwards, seq, activity L2) with softsign / sigmoid and
    // reset_after=False cells, regularizers -> Dense(2), log_cosh.
    let cfgs = vec![
        cell(4, 31)
            .activation(Activation::Softsign)
            .kernel_regularizer(Some(Regularizer::L2 { l2: 0.03 })),
        cell(3, 32)
            .reset_after(false)
            .name("gru_cell_1")
            .recurrent_regularizer(Some(Regularizer::L1L2 { l1: 0.01, l2: 0.02 }))
            .bias_regularizer(Some(Regularizer::L1 { l1: 0.02 })),
    ];
    let rnn = Rnn::stacked(cfgs, d)
        .unwrap()
        .return_sequences(true)
        .go_backwards(true)
        .activity_regularizer(Some(Regularizer::L2 { l2: 0.05 }));
    let m = Model::sequential(
        "stk",
        vec![Some(t), Some(d)],
        vec![
            ("masking".into(), Layer::Masking { mask_value: 0.0 }),
            ("rnn".into(), Layer::Rnn(rnn)),
            ("dense".into(), dense(2, 3, Activation::Linear, 9)),
        ],
    )
    .unwrap();
    run(
        "mask stacked go_backwards activity log_cosh",
        m,
        vec![masked_x(&mut r, b, t, d)],
        vec![r.tensor(&[b, t, 2], 1.0)],
        Loss::LogCosh,
        None,
    );

    // GRU(return_state) with activity regularizer: its state output gets a penalty too.
    let rnn = Rnn::new(cell(3, 41), d)
        .unwrap()
        .return_sequences(true)
        .return_state(true)
        .activity_regularizer(Some(Regularizer::L2 { l2: 0.1 }));
    let m = Model::sequential(
        "st",
        vec![Some(t), Some(d)],
        vec![
            ("gru".into(), Layer::Rnn(rnn)),
            ("dense".into(), dense(4, 3, Activation::Softmax, 3)),
        ],
    )
    .unwrap();
    let ys = Tensor::new(vec![b, t], (0..b * t).map(|i| (i % 4) as f64).collect()).unwrap();
    run(
        "gru state activity + softmax sparse CE",
        m,
        vec![r.tensor(&[b, t, d], 1.0)],
        vec![ys],
        Loss::SparseCategoricalCrossentropy { from_logits: false },
        None,
    );

    // Dropout with a fixed seed: the masks are the same in every evaluation, so the loss is a
    // smooth function of the weights. Three+three masks (recurrent_dropout > 0), then one shared
    // input mask (ra=False), then a Dropout layer.
    let g1 = Rnn::new(
        cell(4, 51)
            .dropout(0.3)
            .unwrap()
            .recurrent_dropout(0.25)
            .unwrap(),
        d,
    )
    .unwrap()
    .return_sequences(true);
    let g2 = Rnn::new(cell(3, 52).reset_after(false).dropout(0.4).unwrap(), 4).unwrap();
    let m = Model::sequential(
        "drop",
        vec![Some(t), Some(d)],
        vec![
            ("gru".into(), Layer::Rnn(g1)),
            ("gru_1".into(), Layer::Rnn(g2)),
            (
                "dropout".into(),
                Layer::Dropout {
                    rate: 0.3,
                    seed: None,
                },
            ),
            ("dense".into(), dense(2, 3, Activation::Linear, 4)),
        ],
    )
    .unwrap();
    let (x, y) = (
        vec![r.tensor(&[b, t, d], 1.0)],
        vec![r.tensor(&[b, 2], 1.0)],
    );
    // The seed must matter (dropout really on), and the same seed must give the same loss.
    let mut mm = m.clone();
    let (l0, l1, l1b) = (
        loss_of(&mut mm, &x, &y, &Loss::MeanSquaredError, None),
        loss_of(&mut mm, &x, &y, &Loss::MeanSquaredError, Some(1)),
        loss_of(&mut mm, &x, &y, &Loss::MeanSquaredError, Some(1)),
    );
    assert!(
        l0 != l1 && l1 == l1b,
        "dropout: loss without {l0}, with seed 1 {l1} / {l1b}"
    );
    run(
        "dropout (fixed seed)",
        m,
        x,
        y,
        Loss::MeanSquaredError,
        Some(1),
    );

    // Huber head on a Dense(relu-free) stack after GRU(go_backwards, ra=False, no bias).
    let rnn = Rnn::new(
        GruCellConfig::new(3)
            .seed(Some(61))
            .use_bias(false)
            .reset_after(false),
        d,
    )
    .unwrap()
    .go_backwards(true);
    let m = Model::sequential(
        "hub",
        vec![Some(t), Some(d)],
        vec![
            ("gru".into(), Layer::Rnn(rnn)),
            ("dense".into(), dense(3, 3, Activation::Silu, 7)),
            ("dense_1".into(), dense(2, 3, Activation::Linear, 8)),
        ],
    )
    .unwrap();
    run(
        "go_backwards nobias silu head huber",
        m,
        vec![r.tensor(&[b, t, d], 1.0)],
        vec![r.tensor(&[b, 2], 2.0)],
        Loss::Huber { delta: 0.5 },
        None,
    );

    // Embedding(7, 3, mask_zero, L2 table penalty, L2 activity penalty) -> GRU(3) -> Dense(2,
    // sigmoid, L1 activity penalty) + binary crossentropy: the table's gradient sums repeated
    // ids and skips padding, and the Dense activity penalty's gradient joins the crossentropy's
    // logits shortcut.
    let mut ec = EmbeddingConfig::new(7, 3).mask_zero(true);
    ec.embeddings_initializer = grucell::Initializer::RandomNormal {
        mean: 0.0,
        stddev: 0.5,
        seed: Some(3),
    };
    ec.embeddings_regularizer = Some(Regularizer::L2 { l2: 0.05 });
    ec.activity_regularizer = Some(Regularizer::L2 { l2: 0.1 });
    let mut head = DenseConfig::new(2).activation(Activation::Sigmoid);
    head.activity_regularizer = Some(Regularizer::L1 { l1: 0.2 });
    let m = Model::sequential(
        "emb",
        vec![Some(t)],
        vec![
            ("embedding".into(), Layer::Embedding(ec.build(1).unwrap())),
            ("gru".into(), Layer::Rnn(Rnn::new(cell(3, 71), 3).unwrap())),
            ("dense".into(), Layer::Dense(head.build(3, 72).unwrap())),
        ],
    )
    .unwrap();
    // Ids 1..6 with repeats, -1 (the last row), and trailing padding in two rows.
    let ids: Vec<f64> = (0..b * t)
        .map(|i| match (i / t, i % t) {
            (1, s) if s >= 2 => 0.0,
            (3, s) if s >= 4 => 0.0,
            (0, 0) => -1.0,
            (_, s) => ((i / t + s / 2) % 6 + 1) as f64,
        })
        .collect();
    let yb = Tensor::new(
        vec![b, 2],
        (0..2 * b).map(|i| (i % 3 == 1) as u8 as f64).collect(),
    )
    .unwrap();
    run(
        "embedding mask_zero + activity penalties + bce",
        m,
        vec![Tensor::new(vec![b, t], ids).unwrap()],
        vec![yb],
        Loss::BinaryCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        },
        None,
    );

    assert!(
        failures.is_empty(),
        "{} models failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------- dropout

fn frac_kept(m: &[f64], scale: f64) -> f64 {
    for &v in m {
        assert!(
            v == 0.0 || (v - scale).abs() < 1e-12,
            "mask value {v}, expected 0 or {scale}"
        );
    }
    m.iter().filter(|v| **v != 0.0).count() as f64 / m.len() as f64
}

#[test]
fn dropout_masks_have_keras_structure_and_statistics() {
    let (b, d, u) = (500, 8, 6);
    let mut rng = StdRng::seed_from_u64(7);
    // dropout only: one input mask (B, D), no recurrent masks.
    let c = GruCellConfig::new(u)
        .dropout(0.3)
        .unwrap()
        .build::<f64>(d)
        .unwrap();
    let m = CellDropout::draw(&c, b, &mut rng);
    assert_eq!((m.input.len(), m.recurrent.len()), (1, 0));
    assert_eq!(m.input[0].len(), b * d);
    let k = frac_kept(&m.input[0], 1.0 / 0.7);
    assert!((k - 0.7).abs() < 0.025, "kept {k}");
    // recurrent_dropout > 0: three input masks and three recurrent masks, independent.
    let c = GruCellConfig::new(u)
        .dropout(0.3)
        .unwrap()
        .recurrent_dropout(0.6)
        .unwrap()
        .build::<f64>(d)
        .unwrap();
    let m = CellDropout::draw(&c, b, &mut rng);
    assert_eq!((m.input.len(), m.recurrent.len()), (3, 3));
    for i in 0..3 {
        assert_eq!((m.input[i].len(), m.recurrent[i].len()), (b * d, b * u));
        let ki = frac_kept(&m.input[i], 1.0 / 0.7);
        let kr = frac_kept(&m.recurrent[i], 1.0 / 0.4);
        assert!(
            (ki - 0.7).abs() < 0.025 && (kr - 0.4).abs() < 0.03,
            "kept {ki} {kr}"
        );
    }
    assert!(
        m.input[0] != m.input[1] && m.input[1] != m.input[2] && m.recurrent[0] != m.recurrent[2]
    );
    // recurrent_dropout only: no input masks.
    let c = GruCellConfig::new(u)
        .recurrent_dropout(0.2)
        .unwrap()
        .build::<f64>(d)
        .unwrap();
    let m = CellDropout::draw(&c, b, &mut rng);
    assert_eq!((m.input.len(), m.recurrent.len()), (0, 3));
    let kr = frac_kept(&m.recurrent[1], 1.0 / 0.8);
    assert!((kr - 0.8).abs() < 0.03, "kept {kr}");
    // Keras applies dropout only for 0 < rate < 1: rate 1.0 means no dropout at all.
    let c = GruCellConfig::new(u)
        .dropout(1.0)
        .unwrap()
        .recurrent_dropout(1.0)
        .unwrap()
        .build::<f64>(d)
        .unwrap();
    let m = CellDropout::draw(&c, b, &mut rng);
    assert_eq!((m.input.len(), m.recurrent.len()), (0, 0));
    let c = GruCellConfig::new(u).build::<f64>(d).unwrap();
    let m = CellDropout::draw(&c, b, &mut rng);
    assert_eq!((m.input.len(), m.recurrent.len()), (0, 0));
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Reference GRU with Keras' dropout masks (spec §2.5), tanh/sigmoid, no mask, forward.
/// `im`: input masks per gate (z, r, h), `rm`: recurrent masks per gate, each `B × dim`.
fn ref_gru(c: &GruCell<f64>, x: &Tensor<f64>, im: [&[f64]; 3], rm: [&[f64]; 3]) -> Vec<f64> {
    let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let u = c.units();
    let (k, rk) = (c.kernel().data(), c.recurrent_kernel().data());
    let bias = c.bias().map(|t| t.data().to_vec()).unwrap_or_default();
    let ra = c.config().reset_after;
    let bi = |j: usize| bias.get(j).copied().unwrap_or(0.0);
    let br = |j: usize| {
        if ra {
            bias.get(3 * u + j).copied().unwrap_or(0.0)
        } else {
            0.0
        }
    };
    let mut h = vec![0.0; b * u];
    for step in 0..t {
        let mut hn = vec![0.0; b * u];
        for s in 0..b {
            let xs = &x.data()[(s * t + step) * d..(s * t + step + 1) * d];
            let hs = &h[s * u..(s + 1) * u];
            // input projection of gate g, column j
            let xp = |g: usize, j: usize| {
                (0..d)
                    .map(|i| xs[i] * im[g][s * d + i] * k[i * 3 * u + g * u + j])
                    .sum::<f64>()
                    + bi(g * u + j)
            };
            let hp = |g: usize, j: usize, hv: &dyn Fn(usize) -> f64| {
                (0..u)
                    .map(|i| hv(i) * rk[i * 3 * u + g * u + j])
                    .sum::<f64>()
            };
            let z: Vec<f64> = (0..u)
                .map(|j| sigmoid(xp(0, j) + hp(0, j, &|i| hs[i] * rm[0][s * u + i]) + br(j)))
                .collect();
            let r: Vec<f64> = (0..u)
                .map(|j| sigmoid(xp(1, j) + hp(1, j, &|i| hs[i] * rm[1][s * u + i]) + br(u + j)))
                .collect();
            for j in 0..u {
                let cand = if ra {
                    (xp(2, j) + r[j] * (hp(2, j, &|i| hs[i] * rm[2][s * u + i]) + br(2 * u + j)))
                        .tanh()
                } else {
                    (xp(2, j) + hp(2, j, &|i| r[i] * hs[i] * rm[2][s * u + i])).tanh()
                };
                hn[s * u + j] = z[j] * hs[j] + (1.0 - z[j]) * cand;
            }
        }
        h = hn;
    }
    h
}

#[test]
fn dropout_masks_are_applied_as_keras_applies_them() {
    let (b, t, d, u) = (4, 6, 3, 5);
    let mut r = Lcg(9);
    let x = r.tensor(&[b, t, d], 1.0);
    let ones_d = vec![1.0; b * d];
    let ones_u = vec![1.0; b * u];
    for (ra, rec_drop) in [(true, 0.0), (false, 0.0), (true, 0.3), (false, 0.3)] {
        let cfg = cell(u, 3)
            .reset_after(ra)
            .dropout(0.4)
            .unwrap()
            .recurrent_dropout(rec_drop)
            .unwrap();
        let rnn = Rnn::new(cfg, d).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        // forward_train draws the layer's masks first, so a clone of the rng sees the same ones.
        let masks = CellDropout::draw(&rnn.cells()[0], b, &mut rng.clone());
        let (out, _, _) = rnn.forward_train(&x, None, None, Some(&mut rng)).unwrap();
        let got = out.output.data().to_vec();
        let want = if rec_drop == 0.0 {
            assert_eq!(masks.input.len(), 1);
            // One input mask, the same for every time step and every gate: identical to running
            // the layer without dropout on x ⊙ m (m broadcast over time).
            let mut xm = x.clone();
            for s in 0..b {
                for k in 0..t {
                    for i in 0..d {
                        xm.data_mut()[(s * t + k) * d + i] *= masks.input[0][s * d + i];
                    }
                }
            }
            let via_inference = rnn.call(&xm).unwrap().output.data().to_vec();
            let reference = ref_gru(
                &rnn.cells()[0],
                &x,
                [&masks.input[0], &masks.input[0], &masks.input[0]],
                [&ones_u, &ones_u, &ones_u],
            );
            for (a, c) in via_inference.iter().zip(&reference) {
                assert!(
                    (a - c).abs() < 1e-12,
                    "reference GRU disagrees with inference"
                );
            }
            via_inference
        } else {
            assert_eq!((masks.input.len(), masks.recurrent.len()), (3, 3));
            let im = [masks.input[0].as_slice(), &masks.input[1], &masks.input[2]];
            let rm = [
                masks.recurrent[0].as_slice(),
                &masks.recurrent[1],
                &masks.recurrent[2],
            ];
            ref_gru(&rnn.cells()[0], &x, im, rm)
        };
        let no_drop = ref_gru(
            &rnn.cells()[0],
            &x,
            [&ones_d, &ones_d, &ones_d],
            [&ones_u, &ones_u, &ones_u],
        );
        assert!(
            no_drop.iter().zip(&want).any(|(a, c)| (a - c).abs() > 1e-3),
            "masks had no effect"
        );
        for (i, (a, c)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - c).abs() < 1e-12,
                "ra={ra} rec_drop={rec_drop} [{i}]: training forward {a}, reference {c}"
            );
        }
    }
}

#[test]
fn inference_ignores_dropout() {
    let (b, t, d) = (3, 5, 3);
    let mut r = Lcg(13);
    let x = r.tensor(&[b, t, d], 1.0);
    let with = Rnn::new(
        cell(4, 71)
            .dropout(0.5)
            .unwrap()
            .recurrent_dropout(0.5)
            .unwrap(),
        d,
    )
    .unwrap()
    .return_sequences(true);
    // Same weights, rates 0.
    let plain_cells: Vec<GruCell<f64>> = with
        .cells()
        .iter()
        .map(|c| {
            let mut cfg = c.config().clone();
            cfg.dropout = 0.0;
            cfg.recurrent_dropout = 0.0;
            GruCell::from_weights(
                cfg,
                c.kernel().clone(),
                c.recurrent_kernel().clone(),
                c.bias().cloned(),
            )
            .unwrap()
        })
        .collect();
    let plain = rebuild_rnn(&with, plain_cells);
    let build = |rnn: Rnn<f64>| {
        Model::sequential(
            "m",
            vec![Some(t), Some(d)],
            vec![
                ("gru".into(), Layer::Rnn(rnn)),
                (
                    "dropout".into(),
                    Layer::Dropout {
                        rate: 0.5,
                        seed: Some(1),
                    },
                ),
                ("dense".into(), dense(2, 4, Activation::Linear, 2)),
            ],
        )
        .unwrap()
    };
    let (mut md, mut mp) = (build(with), build(plain));
    let pd = md.predict(std::slice::from_ref(&x)).unwrap();
    let pp = mp.predict(std::slice::from_ref(&x)).unwrap();
    assert_eq!(pd[0].data(), pp[0].data(), "predict must not apply dropout");
    // Without an rng, loss_and_grads is the inference forward as well; with one, dropout is on.
    let y = vec![r.tensor(&[b, t, 2], 1.0)];
    let xs = vec![x];
    let a = md
        .loss_and_grads(&xs, &y, &Loss::MeanSquaredError, None)
        .unwrap();
    let c = mp
        .loss_and_grads(&xs, &y, &Loss::MeanSquaredError, None)
        .unwrap();
    assert_eq!(a.loss, c.loss);
    assert_eq!(a.grads, c.grads);
    let mut rng = StdRng::seed_from_u64(3);
    let e = md
        .loss_and_grads(&xs, &y, &Loss::MeanSquaredError, Some(&mut rng))
        .unwrap();
    assert!(e.loss != a.loss, "dropout had no effect in training mode");
}
