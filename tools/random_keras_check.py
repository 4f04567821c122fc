#!/usr/bin/env python3
"""Random Keras models against `grucell`: what the fixtures do not enumerate.

Builds random models with Keras 3.15.1 (Sequential or Functional; GRU, RNN(GRUCell),
RNN(StackedRNNCells), Bidirectional, Masking, Embedding (token ids, mask_zero), merged GRU
branches (Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum), Dense,
TimeDistributed(Dense | Dropout | Activation | LayerNormalization | pointwise), LayerNormalization,
RMSNormalization,
Conv1D,
ReLU, LeakyReLU, PReLU, ELU, Identity, Rescaling, UnitNormalization, Softmax, ZeroPadding1D, Cropping1D,
UpSampling1D,
SpatialDropout1D,
GaussianNoise, GaussianDropout, AlphaDropout, ActivityRegularization, Permute, BatchNormalization, Normalization,
MaxPooling1D,
AveragePooling1D, Attention, AdditiveAttention, MultiHeadAttention (self-attention, maybe a residual
block), Dot attention, GlobalAveragePooling1D,
GlobalMaxPooling1D, Flatten, RepeatVector, random activations, biases, masks, initial states, return_state, frozen
layers, activity penalties; nine optimizers), saves each as
`.keras` and legacy `.h5`, and compares with the `grucell` binary:

  predict  single-output models: `grucell predict` (1 and 2 threads, both formats) vs Keras'
           `model.predict`; NaN/inf positions must agree (unstable models overflow), finite values
           within 1e-5 relative to max(1, |y|)
  multi    models with initial-state inputs and return_state outputs (.npz in and out)
  fit      compiled models (random optimizer and clipping, loss, regularizers, constraints, masks,
           Embedding tables with and without penalties), trained
           with shuffle=False: `grucell fit` from the untrained file vs Keras' weights after fit
           (within 1e-5); then both continue one more epoch from grucell's output (Keras:
           load_model + fit), which checks that the saved optimizer state is Keras' own. A model
           whose Keras float32 result is more than 1e-5 from Keras' own float64 result (trained
           alike) is reported as "unstable" and not counted when its continued epoch agrees, or
           else when `grucell fit` on the float64 copy ends within 1e-9 of Keras' float64 weights

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r tools/requirements-fixtures.txt
    cargo build --release
    .venv-fixtures/bin/python tools/random_keras_check.py predict --n 40 --seed 1
    .venv-fixtures/bin/python tools/random_keras_check.py fit --n 20 --seed 5
    .venv-fixtures/bin/python tools/random_keras_check.py predict --n 20 --seed 7 --tf-keras

Prints one line per model that disagrees and a summary; exits 1 when any did. Models whose
outputs exceed 1e3 in magnitude (unbounded activations that blow up), or whose Keras float32
prediction is more than 1e-5 from the same model's in float64, are reported as "unstable" and not
counted: there round-off differences are amplified beyond the tolerance, in Keras too. Where
TensorFlow cannot run the float64 copy (TF-Keras 2 models, a channels-first Conv1D), Keras' own
float32 prediction with every weight scaled by 1 + 1e-7 stands in for it.
Not run by CI (it needs TensorFlow).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACTS = ["tanh", "sigmoid", "relu", "linear", "hard_sigmoid", "softsign", "elu", "selu", "softplus",
        "swish", "gelu", "relu6", "silu", "mish", "hard_silu", "sparsemax"]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def compare(p, y):
    """Largest error relative to max(1, |y|) over finite entries; None when non-finite
    positions disagree."""
    if p.shape != y.shape:
        return None
    if not np.array_equal(np.isnan(p), np.isnan(y)):
        return None
    inf = np.isinf(y)
    if not np.array_equal(p[inf], y[inf]):
        return None
    fin = np.isfinite(y)
    if not fin.any():
        return 0.0
    if not np.isfinite(p[fin]).all():
        return None
    return float(np.max(np.abs(p[fin] - y[fin]) / np.maximum(1.0, np.abs(y[fin]))))


def random_recurrent(rng, layers, u, last, pick, stateful=False):
    """A random recurrent layer, whether it returns sequences, and its description."""
    kw = dict(activation=pick(ACTS), recurrent_activation=pick(ACTS),
              use_bias=bool(rng.random() < 0.8), reset_after=bool(rng.random() < 0.6))
    sf = {"stateful": True} if stateful else {}
    rs = (not last) or rng.random() < 0.4
    gb = bool(rng.random() < 0.25)
    kind = pick(["gru", "rnn", "stacked", "bidi"])
    if kind == "gru":
        lay = layers.GRU(u, return_sequences=rs, go_backwards=gb, **kw, **sf)
    elif kind == "rnn":
        lay = layers.RNN(layers.GRUCell(u, **kw), return_sequences=rs, go_backwards=gb, **sf)
    elif kind == "stacked":
        cells = [layers.GRUCell(int(rng.integers(1, 6)), **kw),
                 layers.GRUCell(u, activation=pick(ACTS), reset_after=bool(rng.random() < 0.5))]
        lay = layers.RNN(cells, return_sequences=rs, go_backwards=gb, **sf)
    else:
        lay = layers.Bidirectional(layers.GRU(u, return_sequences=rs, **kw, **sf),
                                   merge_mode=pick(["concat", "sum", "mul", "ave"]))
    st = ", stateful" if stateful else ""
    return lay, rs, f"{kind}({u}, {kw['activation']}/{kw['recurrent_activation']}, rs={rs}{st})"


def keras_uniform(lo, hi):
    import keras

    return keras.initializers.RandomUniform(lo, hi)


def random_head(rng, layers, seq, pick, acts, fixed_t=True):
    """The layers after the recurrent ones: maybe a pooling or Flatten head on a sequence, or
    RepeatVector -> GRU after a last state; maybe a Dense (wrapped in TimeDistributed on a
    sequence, sometimes), maybe TimeDistributed(Dropout | Activation)."""
    head, desc = [], []
    if seq and rng.random() < 0.3:
        pools = [layers.GlobalAveragePooling1D(), layers.GlobalMaxPooling1D(),
                 layers.GlobalAveragePooling1D(data_format="channels_first", keepdims=bool(rng.random() < 0.5))]
        if fixed_t:
            pools.append(layers.Flatten())
        pool = pick(pools)
        head.append(pool)
        desc.append(pool.__class__.__name__)
        if pool.__class__.__name__ == "GlobalAveragePooling1D" and pool.data_format == "channels_first":
            seq = pool.keepdims  # (B, T, 1) with keepdims, else (B, T)
        else:
            seq = False
    elif not seq and rng.random() < 0.2:
        n = int(rng.integers(1, 5))
        head += [layers.RepeatVector(n), layers.GRU(int(rng.integers(1, 5)), return_sequences=bool(rng.random() < 0.5))]
        desc.append(f"RepeatVector({n}) -> GRU")
        seq = head[-1].return_sequences
    if rng.random() < 0.2:
        head.append(layers.LayerNormalization(center=bool(rng.random() < 0.8), scale=bool(rng.random() < 0.8),
                                              gamma_initializer="random_normal", beta_initializer="random_normal"))
        desc.append("LayerNormalization")
    elif rng.random() < 0.1 and hasattr(layers, "RMSNormalization"):  # not in TF-Keras 2
        head.append(layers.RMSNormalization(epsilon=float(pick([1e-6, 1e-3]))))  # drops the mask
        desc.append("RMSNormalization")
    if rng.random() < 0.15:
        head.append(layers.BatchNormalization(center=bool(rng.random() < 0.8), scale=bool(rng.random() < 0.8),
                                              gamma_initializer="random_normal", beta_initializer="random_normal",
                                              moving_mean_initializer="random_normal",
                                              moving_variance_initializer=keras_uniform(0.5, 1.5)))
        desc.append("BatchNormalization")
    if seq and rng.random() < 0.3:
        head.append(layers.TimeDistributed(pick([layers.Dropout(0.3), layers.Activation(pick(acts)),
                                                 layers.LayerNormalization(gamma_initializer="random_normal"),
                                                 random_pointwise(rng, layers, pick, prelu=True)[0]])))
        desc.append("TimeDistributed(Dropout|Activation|LayerNormalization|pointwise)")
    if rng.random() < 0.5:
        dense = layers.Dense(int(rng.integers(1, 5)), activation=pick(acts))
        if seq and rng.random() < 0.5:
            head.append(layers.TimeDistributed(dense))
            desc.append("TimeDistributed(Dense)")
        else:
            head.append(dense)
            desc.append("Dense")
    return head, desc


def random_normalization(rng, layers, T, D, var_t, pick):
    """A random Normalization of (B, T, D) inputs: per feature, per step and feature, per step or
    one for all (the axes over steps only on a fixed T), adapted on random data or given its
    statistics (sometimes of lower rank, broadcast; sometimes a variance of 0), maybe inverted."""
    axis = pick([-1, None] + ([] if var_t else [(1, 2), 1]))
    kept = {-1: (D,), None: (), (1, 2): (T, D), 1: (T,)}[axis]
    invert = bool(rng.random() < 0.2)
    if rng.random() < 0.5:
        lay = layers.Normalization(axis=axis, invert=invert)
        lay.adapt((rng.normal(size=(8, T or 4, D)) * 2.0 + 1.0).astype("float32"))
        return lay, f"Normalization(axis={axis}, adapted, invert={invert})"
    if kept and rng.random() < 0.3:
        kept = kept[1:]  # a lower-rank mean, broadcast over the leading kept axes
    mean = rng.normal(size=kept)
    var = rng.uniform(0.0, 3.0, size=kept) * (rng.random(size=kept) > 0.1)
    lay = layers.Normalization(axis=axis, invert=invert, mean=mean.tolist(), variance=var.tolist())
    return lay, f"Normalization(axis={axis}, mean{list(kept)}, invert={invert})"


def random_conv(rng, layers, T, D, var_t, pick, **kw):
    """A random Conv1D over (B, T, D) (padding, strides or dilation, groups, channels_first on
    a fixed T), or None when the draw does not fit the input."""
    cf = (not var_t) and rng.random() < 0.25
    steps, channels = (D, T) if cf else (T, D)
    k = int(rng.integers(1, 4))
    s, d = (int(rng.integers(1, 3)), 1) if rng.random() < 0.5 else (1, int(rng.integers(1, 3)))
    pads = ["same", "causal"] + (["valid"] if steps is not None and steps >= (k - 1) * d + 1 else [])
    pad = pick(pads)
    groups = pick([g for g in (1, 2, 3) if channels % g == 0])
    f = groups * int(rng.integers(1, 4))
    lay = layers.Conv1D(f, k, strides=s, dilation_rate=d, padding=pad, groups=groups,
                        data_format="channels_first" if cf else "channels_last",
                        activation=pick(["linear", "relu", "tanh"]), use_bias=bool(rng.random() < 0.85), **kw)
    desc = f"Conv1D({f}, {k}, s={s}, d={d}, {pad}, g={groups}{', cf' if cf else ''})"
    if rng.random() < 0.4:
        # A window pooling after it ("same" padding fits any step count).
        pool = pick([layers.MaxPooling1D, layers.AveragePooling1D])(int(rng.integers(2, 4)),
                                                                     strides=int(rng.integers(1, 3)), padding="same")
        return Chain([lay, pool]), f"{desc} -> {pool.__class__.__name__}"
    return lay, desc


class SelfAttention:
    """An attention layer over a sequence and itself (Functional models only)."""

    def __init__(self, layer, causal):
        self.layer, self.causal = layer, causal

    def __call__(self, x):
        if self.causal:
            return self.layer([x, x], use_causal_mask=True)
        return self.layer([x, x])


class DotAttention:
    """Luong attention of a sequence over itself with Dot layers (Functional models only):
    Dot(axes=[2, 2]) scores -> Softmax -> Dot(axes=[2, 1]) context, maybe cosine scores."""

    def __init__(self, layers, normalize, axis=-1):
        self.layers, self.normalize, self.axis = layers, normalize, axis

    def __call__(self, x):
        L = self.layers
        w = L.Softmax(axis=self.axis)(L.Dot(axes=[2, 2], normalize=self.normalize)([x, x]))
        return L.Dot(axes=[2, 1])([w, x])


class MhaBlock:
    """MultiHeadAttention over a sequence and itself, maybe in a residual block
    (LayerNormalization(Add([x, attention(x, x)]))) (Functional models only)."""

    def __init__(self, layer, causal, residual, layers):
        self.layer, self.causal, self.residual, self.layers = layer, causal, residual, layers

    def __call__(self, x):
        a = self.layer(x, x, use_causal_mask=True) if self.causal else self.layer(x, x)
        if self.residual:
            return self.layers.LayerNormalization()(self.layers.Add()([x, a]))
        return a


def random_attention(rng, layers, pick, dropout_ok=True, mha_ok=True, axes_ok=True):
    """`mha_ok=False` for TF-Keras 2 models: grucell refuses TF-Keras 2's MultiHeadAttention.
    `axes_ok`: Dot attention's Softmax may run over another axis than the last, or two."""
    causal = bool(rng.random() < 0.3)
    if rng.random() < 0.4 and mha_ok:
        residual = bool(rng.random() < 0.5)
        kw = dict(value_dim=pick([None, 1, 2, 3]), use_bias=bool(rng.random() < 0.8),
                  dropout=pick([0.0, 0.2]) if dropout_ok else 0.0,
                  sliding_window=pick([None, None, 2]),
                  bias_initializer="random_normal")
        if not residual:
            kw["output_shape"] = pick([None, int(rng.integers(1, 5))])
        lay = layers.MultiHeadAttention(int(rng.integers(1, 4)), int(rng.integers(1, 5)), **kw)
        return MhaBlock(lay, causal, residual, layers), (f"MultiHeadAttention(self{', causal' if causal else ''}"
                                                          f"{', residual' if residual else ''}, {kw})")
    if rng.random() < 0.2:
        normalize = bool(rng.random() < 0.5)
        axis = pick([-1, -1, 1, [1, 2]]) if axes_ok else -1
        return DotAttention(layers, normalize, axis), f"Dot attention(self, normalize={normalize}, softmax axis={axis})"
    lay = pick([layers.Attention(), layers.Attention(use_scale=True), layers.Attention(score_mode="concat"),
                layers.AdditiveAttention(), layers.AdditiveAttention(use_scale=False)])
    return SelfAttention(lay, causal), f"{lay.__class__.__name__}(self{', causal' if causal else ''})"


class Chain:
    """Layers applied one after the other, as one entry of a model's layer list."""

    def __init__(self, lays):
        self.lays = lays

    def __call__(self, x):
        for lay in self.lays:
            x = lay(x)
        return x


class Branches:
    """Two layers on the same tensor, joined by a merge layer (Functional models only)."""

    def __init__(self, a, b, merge):
        self.a, self.b, self.merge = a, b, merge

    def __call__(self, x):
        return self.merge([self.a(x), self.b(x)])


def random_pointwise(rng, layers, pick, prelu=True, axes_ok=False):
    """A layer that maps each value or feature vector and passes the mask on: ReLU (random
    max_value / negative_slope / threshold), LeakyReLU, PReLU, ELU, Identity, Rescaling or
    UnitNormalization (over the time axis or several axes too when `axes_ok`: a sequence,
    not inside TimeDistributed)."""
    kind = pick(["relu", "relu", "leaky", "elu", "identity", "rescaling", "unit"] + ["prelu", "prelu"] * prelu)
    if kind == "prelu":
        # One alpha per feature (per step too without shared_axes: not on variable-length input).
        shared = pick([[1], [1], None])
        return (layers.PReLU(alpha_initializer=keras_uniform(-0.5, 1.0), shared_axes=shared),
                f"PReLU(shared_axes={shared})")
    if kind == "relu":
        kw = dict(max_value=pick([None, None, 6.0, float(rng.uniform(0.5, 3.0))]),
                  negative_slope=pick([0.0, 0.0, float(rng.uniform(0.05, 0.5))]),
                  threshold=pick([0.0, 0.0, float(rng.uniform(0.0, 0.5))]))
        return layers.ReLU(**kw), f"ReLU({kw})"
    if kind == "leaky":
        s = float(rng.uniform(0.0, 0.5))
        return layers.LeakyReLU(s), f"LeakyReLU({s:.3f})"
    if kind == "elu":
        a = float(rng.uniform(0.1, 2.0))
        return layers.ELU(a), f"ELU({a:.3f})"
    if kind == "identity":
        return layers.Identity(), "Identity"
    if kind == "rescaling":
        sc, off = float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-1.0, 1.0))
        return layers.Rescaling(sc, off), f"Rescaling({sc:.3f}, {off:.3f})"
    axis = pick([-1, -1, 1, [1, 2], [-1, 1], [2]]) if axes_ok else -1
    return layers.UnitNormalization(axis=axis), f"UnitNormalization(axis={axis})"


def random_steps(rng, layers, pick, crop_ok, cf_ok=True):
    """A layer that changes the number of steps (and drops the mask): ZeroPadding1D (maybe
    channels_first, padding the features, when `cf_ok`: TF-Keras 2's has no data_format),
    UpSampling1D, or Cropping1D when `crop_ok`."""
    kinds = ["pad", "up"] + (["pad_cf"] if cf_ok else []) + (["crop"] if crop_ok else [])
    kind = pick(kinds)
    if kind == "pad":
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        return layers.ZeroPadding1D(p), f"ZeroPadding1D({p})"
    if kind == "pad_cf":
        return layers.ZeroPadding1D(1, data_format="channels_first"), "ZeroPadding1D(1, channels_first)"
    if kind == "up":
        n = int(rng.integers(1, 4))
        return layers.UpSampling1D(n), f"UpSampling1D({n})"
    c = pick([(1, 0), (0, 1)])
    return layers.Cropping1D(c), f"Cropping1D({c})"


def random_branches(rng, layers, u, rs, pick, **kw):
    """GRU(u) twice (one maybe backwards) on the same input, merged by a random merge layer."""
    a = layers.GRU(u, return_sequences=rs, go_backwards=bool(rng.random() < 0.3), **kw)
    b = layers.GRU(u, return_sequences=rs, **kw)
    ops = [layers.Concatenate(), layers.Add(), layers.Subtract(), layers.Multiply(), layers.Average(),
           layers.Maximum(), layers.Minimum()]
    if rs:
        ops.append(layers.Concatenate(axis=1))
    merge = pick(ops)
    return Branches(a, b, merge), f"[GRU({u}), GRU({u})] -> {merge.__class__.__name__}"


def chain(keras, rng, inp, lays):
    """The layers applied one after the other: as a Functional model or, sometimes, Sequential
    (never with merged branches)."""
    flat = [y for lay in lays for y in (lay.lays if isinstance(lay, Chain) else [lay])]
    if rng.random() < 0.3 and not any(isinstance(lay, (Branches, SelfAttention, MhaBlock, DotAttention)) for lay in flat):
        return keras.Sequential([inp, *flat]), "Sequential"
    x = inp
    for lay in lays:
        x = lay(x)
    return keras.Model(inp, x), "Functional"


def check_predict(args, keras, layers, rng, pick, out):
    bad = unstable = keras_fails = no_f64 = with_states = h5_unloadable = 0
    for i in range(args.n):
        keras.utils.set_random_seed(args.seed * 1000 + i)
        T, D, B = int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.integers(1, 6))
        var_t = rng.random() < 0.3
        # Token ids through an Embedding (its mask_zero mask, or none) instead of features.
        emb = rng.random() < 0.25
        V = int(rng.integers(2, 12))
        # Stateful recurrent layers: a fixed batch of B rows, predicted on several batches of
        # rows (states carried from one to the next, in Keras' predict(x, batch_size=B) and in
        # grucell predict).
        stateful = bool(rng.random() < args.stateful)
        batches = int(rng.integers(2, 4)) if stateful else 1
        shape = (None if var_t else T,) if emb else (None if var_t else T, D)
        inp = keras.Input(batch_shape=(B, *shape)) if stateful else keras.Input(shape)
        lays, desc = [], []
        mask = rng.random() < 0.35
        if emb:
            lays.append(layers.Embedding(V, D, mask_zero=mask,
                                         embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.7)))
            desc.append(f"Embedding({V}, {D}, mask_zero={mask})")
        elif mask:
            lays.append(layers.Masking(mask_value=0.0))
        if not emb and rng.random() < 0.15:
            lay, d = random_normalization(rng, layers, None if var_t else T, D, var_t, pick)
            lays.append(lay)
            desc.append(d)
        if rng.random() < 0.2:
            # Identity at inference; the mask passes.
            lay = pick([layers.SpatialDropout1D(0.3), layers.GaussianNoise(0.2), layers.GaussianDropout(0.3),
                        layers.AlphaDropout(0.2), layers.ActivityRegularization(0.01, 0.02)])
            lays.append(lay)
            desc.append(lay.__class__.__name__)
        if not emb and not var_t and rng.random() < 0.1:
            lays.append(layers.Permute((2, 1)))  # the GRU then runs over the features (no mask)
            desc.append("Permute((2, 1))")
        elif not emb and rng.random() < 0.25:
            lay, d = random_conv(rng, layers, None if var_t else T, D, var_t, pick)
            lays.append(lay)
            desc.append(d)
        nl = int(rng.integers(1, 4))
        for l in range(nl):
            lay, seq, d = random_recurrent(rng, layers, int(rng.integers(1, 9)), l == nl - 1, pick,
                                           stateful=stateful)
            if not stateful and rng.random() < 0.15:
                # Behind a mask, Keras 3 records the merged mask as graph ops.
                lay, d = random_branches(rng, layers, int(rng.integers(1, 6)), seq, pick,
                                         activation=pick(ACTS), reset_after=bool(rng.random() < 0.6))
            lays.append(lay)
            desc.append(d)
            if rng.random() < 0.15:
                lay, d = random_pointwise(rng, layers, pick, axes_ok=seq and not args.tf_keras)
                lays.append(lay)
                desc.append(d)
            if seq and l < nl - 1 and rng.random() < 0.1:
                lay, d = random_steps(rng, layers, pick, crop_ok=T >= 4, cf_ok=not args.tf_keras)
                lays.append(lay)
                desc.append(d)
        if seq and rng.random() < 0.2:
            lay, d = random_attention(rng, layers, pick, mha_ok=not args.tf_keras, axes_ok=not args.tf_keras)
            lays.append(lay)
            desc.append(d)
        head, d = random_head(rng, layers, seq, pick, ["linear", "relu", "sigmoid", "tanh", "softmax"] + ([] if args.tf_keras else ["sparsemax"]),
                              fixed_t=not var_t)
        try:
            m, kind = chain(keras, rng, inp, lays + head)
        except Exception as e:  # a draw Keras cannot build (e.g. a normalization of an unknown size)
            keras_fails += 1
            print(f"model {i}: skipped, Keras cannot build it: {str(e).splitlines()[0][:120]} | "
                  f"{' -> '.join(desc + d)}")
            continue
        desc = [kind, *desc, *d]
        for w in m.weights:
            if "bias" in getattr(w, "path", w.name):
                w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)
        X = rng.normal(size=(B * batches, int(rng.integers(1, 9)) if var_t else T, D)).astype("float32")
        if emb:
            # Ids from -V (counted from the end; TF-Keras 2 refuses them) to V - 1; 0 is padding
            # under mask_zero.
            X = rng.integers(0 if args.tf_keras else -V, V, size=X.shape[:2]).astype("float32")
        if mask:
            for b in range(X.shape[0]):
                X[b, int(rng.integers(0, X.shape[1] + 1)):] = 0.0
        pbs = B if stateful else None
        with_states += stateful
        try:
            Y = m.predict(X, batch_size=pbs, verbose=0)
        except Exception as e:  # Keras itself cannot run this draw: nothing to compare with
            keras_fails += 1
            print(f"model {i}: skipped, Keras fails: {str(e).splitlines()[0][:120]} | {' -> '.join(desc)}")
            continue
        np.save(out / "x.npy", X)
        # Unstable: outputs that overflow, or whose float32 round-off in Keras itself (against
        # the same model in float64) is beyond the tolerance.
        f64_gap = None
        if np.nanmax(np.abs(np.where(np.isfinite(Y), Y, 0))) > 1e3 or not np.isfinite(Y).all():
            unstable += 1
        else:
            try:
                f64_gap = compare(Y, keras_f64_prediction(keras, m, X, pbs))
            except Exception:  # e.g. TensorFlow has no float64 kernel for this layer (NCW Conv1D)
                # Then how far Keras' own float32 result moves when every weight moves by one
                # part in 1e7 stands for its round-off.
                f64_gap = keras_perturbed_gap(m, X, Y, pbs)
                no_f64 += 1
            if f64_gap is None or f64_gap > 1e-5:
                unstable += 1
        for ext in ["keras", "h5"]:
            m.save(out / f"m.{ext}")
            want = Y
            if ext == "h5" and not args.tf_keras:
                # Keras' legacy loader can build another model than the one saved (it drops a
                # list `axis` of several axes): the reference is what Keras makes of the file,
                # when it can read it back at all.
                try:
                    want = keras.saving.load_model(out / "m.h5", compile=False).predict(X, batch_size=pbs,
                                                                                      verbose=0)
                except Exception:
                    if legacy_axis_rewritten(out / "m.h5"):
                        # No reference: the file is not the saved model for Keras' loader, and
                        # that loader fails on it (e.g. Attention's score_mode in .h5).
                        h5_unloadable += 1
                        continue
                    want = Y
            for th in ["1", "2"]:
                rc, _, err = run([args.grucell, "predict", "--model", str(out / f"m.{ext}"),
                                  "--input", str(out / "x.npy"), "--output", str(out / "p.npy"),
                                  "--threads", th])
                e = compare(np.load(out / "p.npy"), want) if rc == 0 else None
                stable = f64_gap is not None and f64_gap <= 1e-5
                if rc != 0 or (stable and (e is None or e > 1e-5)):
                    bad += 1
                    print(f"model {i} .{ext} threads {th}: {err.strip()[:200] or e} | {' -> '.join(desc)}")
                    np.save(out / "keras_y.npy", Y)
                    keep(args, out, f"predict_{args.seed}_{i}", m, {"desc": desc})
    print(f"predict: {args.n} models x 2 formats x 2 thread counts, {bad} disagreements, "
          f"{unstable} unstable (not counted), {keras_fails} that Keras itself cannot run (skipped), "
          f"{h5_unloadable} .h5 files Keras cannot load whose layers its loader would change (skipped), "
          f"{with_states} stateful run in batches, "
          f"{no_f64} without Keras' float64 stability check (TensorFlow cannot run their float64 copy)")
    return bad


def legacy_axis_rewritten(h5_path):
    """Whether Keras' legacy .h5 loader would build another layer than the one saved: it keeps
    only a one-element `axis` list of a top-level layer (several axes, `[]` or `null` go back to
    the layer's default)."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    layers_ = config.get("config", {}).get("layers", [])
    return any("axis" in l.get("config", {}) and (not isinstance(l["config"]["axis"], (int, float))
                                                  and (not isinstance(l["config"]["axis"], list)
                                                       or len(l["config"]["axis"]) != 1))
               for l in layers_)


def check_multi(args, keras, layers, rng, pick, out):
    bad = 0
    for i in range(args.n):
        keras.utils.set_random_seed(args.seed * 100 + i)
        T, D, B, u = (int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 5)),
                      int(rng.integers(1, 6)))
        inp = keras.Input((T, D))
        ins, xs = [inp], [rng.normal(size=(B, T, D)).astype("float32")]
        x = inp
        if rng.random() < 0.4:
            x = layers.Masking()(x)
            for b in range(B):
                xs[0][b, int(rng.integers(0, T + 1)):] = 0
        kw = dict(reset_after=bool(rng.random() < 0.5), use_bias=bool(rng.random() < 0.8),
                  activation=pick(["tanh", "relu", "sigmoid"]))
        rs, gb = bool(rng.random() < 0.5), bool(rng.random() < 0.3)
        kind = pick(["gru", "stacked", "bidi"])

        def state(n):
            h = keras.Input((n,))
            ins.append(h)
            xs.append(rng.normal(size=(B, n)).astype("float32"))
            return h

        if kind == "gru":
            init = [state(u)] if rng.random() < 0.6 else None
            lay = layers.GRU(u, return_sequences=rs, return_state=True, go_backwards=gb, **kw)
        elif kind == "stacked":
            u2 = int(rng.integers(1, 5))
            init = [state(u), state(u2)] if rng.random() < 0.6 else None
            lay = layers.RNN([layers.GRUCell(u, **kw), layers.GRUCell(u2)], return_sequences=rs,
                             return_state=True, go_backwards=gb)
        else:
            init = [state(u), state(u)] if rng.random() < 0.6 else None
            lay = layers.Bidirectional(layers.GRU(u, return_sequences=rs, return_state=True, **kw),
                                       merge_mode=pick(["concat", "sum", None]))
        outs = list(lay(x, initial_state=init) if init else lay(x))
        if rng.random() < 0.4:
            outs[0] = layers.Dense(2)(outs[0])
        m = keras.Model(ins, outs)
        ys = m.predict(xs, verbose=0)
        ys = ys if isinstance(ys, list) else [ys]
        np.savez(out / "x.npz", **{f"input_{k}": v for k, v in enumerate(xs)})
        for ext in ["keras", "h5"]:
            m.save(out / f"m.{ext}")
            rc, _, err = run([args.grucell, "predict", "--model", str(out / f"m.{ext}"),
                              "--input", str(out / "x.npz"), "--output", str(out / "p.npz")])
            errs = []
            if rc == 0:
                p = np.load(out / "p.npz")
                errs = [compare(p[f"output_{k}"], y) for k, y in enumerate(ys)]
            if rc != 0 or any(e is None or e > 1e-5 for e in errs):
                bad += 1
                print(f"model {i} .{ext} ({kind}, init={init is not None}): {err.strip()[:200] or errs}")
    print(f"multi: {args.n} models x 2 formats, {bad} disagreements")
    return bad


def check_fit(args, keras, layers, rng, pick, out):
    bad = unstable = unbuildable = 0
    with_schedule = with_ema = with_accumulation = with_scale = with_states = with_weights = with_class_weights = with_epoch_options = 0
    with_metrics = metric_bad = 0
    drawn = {}  # loss name (and from_logits) -> count
    reg = lambda: pick([None, "l2", "l1", keras.regularizers.L1L2(0.01, 0.02)])  # noqa: E731
    con = lambda: pick([None, None, "non_neg", keras.constraints.MaxNorm(1.5),  # noqa: E731
                        keras.constraints.UnitNorm()])
    for i in range(args.n):
        keras.utils.set_random_seed(args.seed * 1000 + i)
        T, D, N = int(rng.integers(1, 8)), int(rng.integers(1, 6)), int(rng.integers(5, 40))
        emb = rng.random() < 0.25
        V = int(rng.integers(2, 10))
        # Stateful recurrent layers: a fixed batch size that divides the samples; states carried
        # from batch to batch and epoch to epoch (and not saved: the continued fit starts at 0).
        stateful = bool(rng.random() < args.stateful)
        sbs = int(rng.integers(2, 6))
        if stateful:
            N = sbs * int(rng.integers(2, 6))
            inp = keras.Input(batch_shape=(sbs, T) if emb else (sbs, T, D))
        else:
            inp = keras.Input((T,) if emb else (T, D))
        sf = {"stateful": True} if stateful else {}
        lays = []
        mask = rng.random() < 0.3
        if emb:
            lays.append(layers.Embedding(V, D, mask_zero=mask, embeddings_regularizer=reg(),
                                         embeddings_constraint=con(),
                                         activity_regularizer=pick([None, None, "l2"]),
                                         trainable=bool(rng.random() < 0.85)))
        elif mask:
            lays.append(layers.Masking(mask_value=0.0))
        if not emb and rng.random() < 0.25:
            lays.append(random_conv(rng, layers, T, D, False, pick, kernel_regularizer=reg(),
                                    bias_constraint=con())[0])
        if rng.random() < 0.1:
            lays.append(layers.ActivityRegularization(0.01, 0.02))
        if not emb and rng.random() < 0.15:
            lays.append(random_normalization(rng, layers, T, D, False, pick)[0])
        nl = int(rng.integers(1, 3))
        for l in range(nl):
            u = int(rng.integers(1, 7))
            kw = dict(activation=pick(["tanh", "tanh", "softsign", "elu"]),
                      recurrent_activation=pick(["sigmoid", "sigmoid", "hard_sigmoid"]),
                      use_bias=bool(rng.random() < 0.85), reset_after=bool(rng.random() < 0.6),
                      kernel_regularizer=reg(), recurrent_regularizer=reg(), bias_regularizer=reg(),
                      kernel_constraint=con(), recurrent_constraint=con(), bias_constraint=con())
            rs = l < nl - 1 or rng.random() < 0.3
            kind = pick(["gru", "rnn", "bidi"])
            # Freezing: a constructor flag (which Keras does not pass from a wrapper to what it
            # wraps), a cell's own flag, or `layer.trainable = False` afterwards.
            freeze = pick(["none"] * 6 + ["ctor", "inner", "setter"])
            ctor = {"trainable": False} if freeze == "ctor" else {}
            inner = {"trainable": False} if freeze == "inner" else {}
            if kind == "gru":
                lay = layers.GRU(u, return_sequences=rs, go_backwards=bool(rng.random() < 0.2),
                                 **kw, **ctor, **inner, **sf)
            elif kind == "rnn":
                lay = layers.RNN(layers.GRUCell(u, **kw, **inner), return_sequences=rs, **ctor, **sf)
            else:
                lay = layers.Bidirectional(layers.GRU(u, return_sequences=rs, **kw, **inner, **sf),
                                           merge_mode=pick(["concat", "sum", "ave", "mul"]), **ctor)
            if freeze == "setter":
                lay.trainable = False
            if freeze == "none" and not stateful and rng.random() < 0.15:
                lay, _ = random_branches(rng, layers, u, rs, pick, **kw)
            lays.append(lay)
            if rng.random() < 0.15:
                lays.append(random_pointwise(rng, layers, pick, axes_ok=rs)[0])
            if rs and l < nl - 1 and rng.random() < 0.1:
                lays.append(random_steps(rng, layers, pick, crop_ok=T >= 4)[0])
        if rs and rng.random() < 0.15:
            lays.append(random_attention(rng, layers, pick, dropout_ok=False)[0])
        loss = pick(["mse", "mae", "huber", "log_cosh", "binary_crossentropy",
                     "categorical_crossentropy", "sparse_categorical_crossentropy",
                     "mape", "msle", "poisson", "hinge", "squared_hinge", "categorical_hinge", "kld",
                     "cosine_similarity", "binary_focal_crossentropy", "categorical_focal_crossentropy",
                     "generalized_ce"])
        k = int(rng.integers(2, 4))
        act = {"binary_crossentropy": "sigmoid", "categorical_crossentropy": "softmax",
               "sparse_categorical_crossentropy": "softmax", "poisson": "softplus", "kld": "softmax",
               "generalized_ce": "softmax"}.get(loss, pick(["linear", "tanh"]))
        # The loss object: with random arguments, from_logits=True on a linear head or (Keras reads
        # the activation's input anyway) on a sigmoid/softmax one.
        L = keras.losses
        logits = bool(rng.random() < 0.3)
        if loss == "binary_crossentropy":
            loss_obj = L.BinaryCrossentropy(from_logits=logits, label_smoothing=float(pick([0.0, 0.1])))
        elif loss == "categorical_crossentropy":
            loss_obj = L.CategoricalCrossentropy(from_logits=logits)
        elif loss == "sparse_categorical_crossentropy":
            loss_obj = L.SparseCategoricalCrossentropy(from_logits=logits)
        elif loss == "binary_focal_crossentropy":
            act = "linear" if logits else "sigmoid"
            loss_obj = L.BinaryFocalCrossentropy(apply_class_balancing=bool(rng.random() < 0.5),
                                                 alpha=float(pick([0.25, 0.6])), gamma=float(pick([2.0, 1.5, 0.0])),
                                                 from_logits=logits, label_smoothing=float(pick([0.0, 0.1])))
        elif loss == "categorical_focal_crossentropy":
            act = "linear" if logits else "softmax"
            loss_obj = L.CategoricalFocalCrossentropy(alpha=float(pick([0.25, 1.0])), gamma=float(pick([2.0, 1.5])),
                                                      from_logits=logits, label_smoothing=float(pick([0.0, 0.1])))
        elif loss == "generalized_ce":
            loss_obj = L.CategoricalGeneralizedCrossEntropy(q=float(pick([0.5, 0.8])))
        elif loss == "cosine_similarity":
            loss_obj = L.CosineSimilarity()
        else:
            loss_obj = loss
        # A softmax head is sometimes Dense -> Softmax layer (whose input Keras' crossentropies
        # read as logits too), or -> Activation(softmax) behind a sequence mask, which Keras'
        # Softmax refuses.
        softmax_layer = act == "softmax" and rng.random() < 0.3
        dense = layers.Dense(k, activation="linear" if softmax_layer else act,
                             activity_regularizer=pick([None, None, None, "l1"]))
        if rng.random() < 0.15:
            lays.append(layers.LayerNormalization(gamma_regularizer=reg(), beta_constraint=con()))
        elif rng.random() < 0.1:
            lays.append(layers.RMSNormalization())
        if rng.random() < 0.15:
            # Trained with the batch's statistics (masked), its moving ones compared after fit.
            lays.append(layers.BatchNormalization(momentum=float(pick([0.9, 0.99])), gamma_regularizer=reg(),
                                                  beta_constraint=con(), trainable=bool(rng.random() < 0.85)))
        if rs and rng.random() < 0.3:
            # A pooling head (the masked mean only without masks: a fully masked sample is 0/0).
            pools = [layers.GlobalMaxPooling1D(), layers.Flatten()]
            if not mask:
                pools.append(layers.GlobalAveragePooling1D())
            lays.append(pick(pools))
            rs = False
        elif not rs and rng.random() < 0.15:
            lays += [layers.RepeatVector(int(rng.integers(1, 4))),
                     layers.GRU(int(rng.integers(1, 5)), return_sequences=True)]
            rs = True
        if rs and rng.random() < 0.5:
            # TimeDistributed(Activation) too (not Dropout: its random mask differs from Keras').
            if rng.random() < 0.4:
                lays.append(layers.TimeDistributed(layers.Activation(pick(["tanh", "relu"]))))
            dense = layers.TimeDistributed(dense)
        try:
            tail = [layers.Activation("softmax") if rs and mask else layers.Softmax()] if softmax_layer else []
            m, kind = chain(keras, rng, inp, lays + [dense] + tail)
        except Exception as e:  # a draw Keras cannot build (e.g. a normalization of an unknown size)
            unbuildable += 1
            print(f"model {i}: skipped, Keras cannot build it: {str(e).splitlines()[0][:120]}", flush=True)
            continue
        lr0 = float(pick([0.01, 0.003, 0.05]))
        S = keras.optimizers.schedules
        sched = pick([None, None, None,
                      lambda r: S.ExponentialDecay(r, int(rng.integers(1, 6)), 0.7, staircase=bool(rng.random() < 0.5)),
                      lambda r: S.InverseTimeDecay(r, 2, 0.5, staircase=bool(rng.random() < 0.5)),
                      lambda r: S.PiecewiseConstantDecay([2, 5], [r, r / 2, r / 5]),
                      lambda r: S.PolynomialDecay(r, 4, r / 10, power=2.0, cycle=bool(rng.random() < 0.5)),
                      lambda r: S.CosineDecay(r / 10, 5, alpha=0.1, warmup_target=r, warmup_steps=2),
                      lambda r: S.CosineDecayRestarts(r, 2, t_mul=float(pick([1.0, 1.5, 2.0])), m_mul=0.8)])

        class Rate(float):
            """The drawn learning rate: scaling it (Lion's /10, Adadelta's *20) scales the schedule's."""

            def value(self):
                return sched(float(self)) if sched else float(self)

            def __truediv__(self, k):
                return Rate(float(self) / k)

            def __mul__(self, k):
                return Rate(float(self) * k)

        lr = Rate(lr0)
        opt_name = pick(["sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "adamax", "lion", "adadelta"])
        clip = pick([{}, {}, {}, {"clipnorm": 0.5}, {"clipvalue": 0.05}, {"global_clipnorm": 0.5}])
        # The moving average of the weights (Keras 3 only: grucell refuses TF-Keras 2's).
        clip = {**clip, **pick([{}, {}, {}, {"use_ema": True, "ema_momentum": 0.9},
                                {"use_ema": True, "ema_momentum": 0.6, "ema_overwrite_frequency": 2}]),
                **pick([{}, {}, {}, {"gradient_accumulation_steps": 2}, {"gradient_accumulation_steps": 3}]),
                **pick([{}, {}, {}, {}, {"loss_scale_factor": 3.0}, {"loss_scale_factor": 128.0}])}
        opt = {"sgd": lambda: keras.optimizers.SGD(lr.value(), momentum=float(pick([0.0, 0.9])), **clip),
               "adam": lambda: keras.optimizers.Adam(lr.value(), amsgrad=bool(rng.random() < 0.3), **clip),
               "adamw": lambda: keras.optimizers.AdamW(lr.value(), **clip),
               "rmsprop": lambda: keras.optimizers.RMSprop(lr.value(), momentum=float(pick([0.0, 0.5])), **clip),
               "adagrad": lambda: keras.optimizers.Adagrad(lr.value(), **clip),
               "nadam": lambda: keras.optimizers.Nadam(lr.value(), **clip),
               "adamax": lambda: keras.optimizers.Adamax(lr.value(), **clip),
               "lion": lambda: keras.optimizers.Lion((lr / 10).value(), **clip),
               "adadelta": lambda: keras.optimizers.Adadelta((lr * 20).value(), **clip)}[opt_name]()
        # Keras' compiled metrics (those grucell computes), some weighted.
        metric_names, weighted_names = [], []
        if rng.random() < args.metrics:
            if loss in ("sparse_categorical_crossentropy", "generalized_ce"):
                pool = ["acc", "accuracy", "sparse_categorical_accuracy", "sparse_categorical_crossentropy",
                        "sparse_top_k_categorical_accuracy"]
            else:
                pool = ["mae", "mse", "msle", "mape", "acc", "binary_accuracy", "categorical_accuracy",
                        "root_mean_squared_error", "precision", "recall", "log_cosh_error", "cosine_similarity",
                        "hinge", "squared_hinge", "categorical_hinge", "kl_divergence", "top_k_categorical_accuracy",
                        "auc", "true_positives", "false_negatives", "binary_crossentropy"]
                pool += ["pearson_correlation", "concordance_correlation", "binary_iou", "recall_at_p",
                         "precision_top1", "recall_class0", "sens_at_spec_class0", "auc_thresholds_pr",
                         "auc_label_weights", "precision_thresholds", "fn_thresholds"]
                # R² and the F-scores take (batch, outputs) only.
                if not rs:
                    pool += ["r2_score", "f1_macro", "f1_micro", "fbeta_weighted", "auc_ml", "auc_ml_weighted",
                             "f1_score", "r2_per_column", "fbeta_per_class"]
                # Poisson and categorical crossentropy need positive outputs (NaN otherwise).
                if act in ("sigmoid", "softmax", "softplus"):
                    pool += ["poisson", "categorical_crossentropy"]
            metric_names = [str(v) for v in rng.choice(pool, size=int(rng.integers(1, 3)), replace=False)]
            weighted_names = [str(v) for v in rng.choice(pool, size=int(rng.integers(0, 2)), replace=False)]
        with_metrics += bool(metric_names)
        # Metric objects under a name of their own (strings stay strings).
        objects = {"f1_macro": lambda n: keras.metrics.F1Score(average="macro", name=n),
                   "f1_micro": lambda n: keras.metrics.F1Score(average="micro", threshold=0.5, name=n),
                   "r2_per_column": lambda n: keras.metrics.R2Score(class_aggregation=None, name=n),
                   "precision_thresholds": lambda n: keras.metrics.Precision(thresholds=[0.6, 0.3], name=n),
                   "fn_thresholds": lambda n: keras.metrics.FalseNegatives(thresholds=[0.2, 0.5, 0.8], name=n),
                   "fbeta_per_class": lambda n: keras.metrics.FBetaScore(beta=0.5, threshold=0.3, name=n),
                   "fbeta_weighted": lambda n: keras.metrics.FBetaScore(
                       beta=2.0, average="weighted", threshold=0.4, name=n),
                   "binary_iou": lambda n: keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=0.4, name=n),
                   "recall_at_p": lambda n: keras.metrics.RecallAtPrecision(0.6, num_thresholds=20, name=n),
                   "precision_top1": lambda n: keras.metrics.Precision(top_k=1, name=n),
                   "recall_class0": lambda n: keras.metrics.Recall(class_id=0, thresholds=0.3, name=n),
                   "sens_at_spec_class0": lambda n: keras.metrics.SensitivityAtSpecificity(
                       0.5, class_id=0, num_thresholds=20, name=n),
                   "auc_ml": lambda n: keras.metrics.AUC(multi_label=True, num_thresholds=50, name=n),
                   "auc_thresholds_pr": lambda n: keras.metrics.AUC(thresholds=[0.9, 0.2, 0.45], curve="PR", name=n),
                   # One weight per label of the output's last axis.
                   "auc_label_weights": lambda n: keras.metrics.AUC(
                       label_weights=[float(1 + j % 3) for j in range(k)], num_thresholds=30, name=n),
                   "auc_ml_weighted": lambda n: keras.metrics.AUC(
                       multi_label=True, thresholds=[0.3, 0.6], label_weights=[float(j % 2) + 0.5 for j in range(k)],
                       name=n)}
        as_metrics = lambda names: [objects[n](n) if n in objects else n for n in names] or None
        m.compile(optimizer=opt, loss=loss_obj, metrics=as_metrics(metric_names),
                  weighted_metrics=as_metrics(weighted_names))
        with_schedule += sched is not None
        with_ema += "use_ema" in clip
        with_accumulation += "gradient_accumulation_steps" in clip
        with_scale += "loss_scale_factor" in clip
        with_states += stateful
        lkey = loss + (" from_logits" if getattr(loss_obj, "_fn_kwargs", {}).get("from_logits") else "")
        drawn[lkey] = drawn.get(lkey, 0) + 1
        X = rng.normal(size=(N, T, D)).astype("float32")
        if emb:
            X = rng.integers(-V, V, size=(N, T)).astype("float32")
            X[X == 0] = 1.0
        if mask:
            for b in range(N):
                X[b, int(rng.integers(1, T + 1)):] = 0.0
        yshape = (N,) + tuple(m.compute_output_shape(X.shape)[1:])
        if loss in ("binary_crossentropy", "binary_focal_crossentropy"):
            Y = (rng.random(yshape) < 0.5).astype("float32")
        elif loss in ("categorical_crossentropy", "categorical_hinge", "categorical_focal_crossentropy"):
            Y = np.eye(k, dtype="float32")[rng.integers(0, k, yshape[:-1])]
        elif loss in ("sparse_categorical_crossentropy", "generalized_ce"):
            Y = rng.integers(0, k, yshape[:-1]).astype("float32")
        elif loss == "kld":
            Y = rng.dirichlet(np.ones(k), size=yshape[:-1]).astype("float32")
        elif loss in ("msle", "poisson", "mape"):
            Y = rng.uniform(0.0, 2.0, size=yshape).astype("float32")
        elif loss in ("hinge", "squared_hinge"):
            Y = (rng.random(yshape) < 0.5).astype("float32")
            if rng.random() < 0.5:
                Y = 2 * Y - 1
        else:
            Y = rng.normal(size=yshape).astype("float32")
        np.save(out / "x.npy", X)
        np.save(out / "y.npy", Y)
        m.save(out / "untrained.keras")
        bs, ep = int(rng.integers(2, 12)), int(rng.integers(1, 4))
        if stateful:
            bs = sbs
        # Keras' sample_weight, shaped like the loss terms: the targets' shape without its class
        # axis (sparse labels have none), some weights 0.
        sw = None
        if rng.random() < args.weighted:
            sparse = loss in ("sparse_categorical_crossentropy", "generalized_ce")
            sw = rng.uniform(0.0, 2.0, Y.shape if sparse else Y.shape[:-1]).astype("float32")
            sw[rng.random(sw.shape) < 0.1] = 0.0
            np.save(out / "w.npy", sw)
        with_weights += sw is not None
        # Keras' class_weight (one class per sample: targets (N,), (N, 1) or one-hot (N, C);
        # regression targets are rounded to classes too, negative ones included).
        cw = None
        if sw is None and Y.ndim <= 2 and rng.random() < args.class_weighted:
            labels = np.unique(np.round(Y).astype("int32") if Y.ndim == 1 or Y.shape[-1] == 1 else np.argmax(Y, -1))
            keys = set(rng.choice(labels, size=int(rng.integers(1, len(labels) + 1)), replace=False).tolist())
            keys.add(int(labels.max()) + 1)  # a class that never occurs
            cw = {int(c): float(np.float32(rng.uniform(0.1, 3.0))) for c in sorted(keys)}
        with_class_weights += cw is not None
        # Keras' epoch options: at most steps_per_epoch batches (a pass runs on into the next
        # epoch), and an epoch count resumed from initial_epoch.
        kw = {}
        if rng.random() < args.epoch_options:
            kw["steps_per_epoch"] = int(rng.integers(1, -(-len(X) // bs) + 2))
            if rng.random() < 0.5:
                kw["initial_epoch"] = int(rng.integers(1, 3))
                ep += kw["initial_epoch"]
        with_epoch_options += bool(kw)
        try:
            hist = m.fit(X, Y, batch_size=bs, epochs=ep, shuffle=False, verbose=0, sample_weight=sw, class_weight=cw,
                         **kw).history
        except Exception as e:  # a draw Keras builds but cannot train (a shape it checks late)
            unbuildable += 1
            print(f"model {i}: skipped, Keras cannot fit it: {str(e).splitlines()[0][:120]}", flush=True)
            continue
        common = ["--x", str(out / "x.npy"), "--y", str(out / "y.npy"), "--batch-size", str(bs),
                  "--no-shuffle", "--quiet"] + weight_args(out, sw, cw)
        first = epoch_args(kw)
        rate = type(opt._learning_rate).__name__ if sched else "constant rate"
        lname = loss if isinstance(loss_obj, str) else json.dumps(keras.saving.serialize_keras_object(loss_obj)["config"])
        label = (f"model {i} ({kind}{', stateful' if stateful else ''}, {opt_name} {clip}, {rate}, {loss} {lname}, act={act}, mask={mask}, emb={emb}, "
                 f"{dense.__class__.__name__})")
        # With metrics, the history table is printed (not --quiet) and compared with Keras'.
        shown = [a for a in common if a != "--quiet"] if metric_names else common
        rc, table, err = run([args.grucell, "fit", "--model", str(out / "untrained.keras"),
                              "--epochs", str(ep), "--output", str(out / "ours.keras"), *shown, *first])
        if rc != 0:
            bad += 1
            print(f"{label}: fit failed: {err.strip()[:200]}")
            continue
        if metric_names:
            off = metric_differences(table, hist)
            if off:
                metric_bad += 1
                print(f"{label}: metrics {metric_names} weighted {weighted_names} differ: {off[:3]}")
        try:
            ours = keras.saving.load_model(out / "ours.keras")
        except Exception as why:  # grucell wrote a file Keras cannot load: a disagreement
            bad += 1
            print(f"{label}: Keras cannot load grucell's trained file: {str(why).splitlines()[0][:200]}")
            keep(args, out, f"fit_{i}", m, dict(batch_size=bs, epochs=ep, class_weight=cw, **kw))
            continue
        e = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(ours.weights, m.weights))
        # One more epoch from grucell's file: in Keras (its optimizer state restored) and in grucell.
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            again = keras.saving.load_model(out / "ours.keras")
            skipped = [str(x.message) for x in w if "optimizer" in str(x.message)]
        again.fit(X, Y, batch_size=bs, epochs=1, shuffle=False, verbose=0, sample_weight=sw, class_weight=cw)
        rc, _, err = run([args.grucell, "fit", "--model", str(out / "ours.keras"), "--epochs", "1",
                          "--output", str(out / "ours2.keras"), *common])
        e2 = None
        if rc == 0:
            ours2 = keras.saving.load_model(out / "ours2.keras")
            e2 = max(float(np.max(np.abs(a.numpy() - b.numpy())))
                     for a, b in zip(ours2.weights, again.weights))
        if e > 1e-5 or e2 is None or e2 > 1e-5 or skipped:
            # Is the float32 result determined by the math at all? Keras again in float64 from
            # the same weights: when Keras' own float32 result is further than the tolerance from
            # it, round-off decides the outcome (e.g. a gradient that is exactly zero in float64
            # but round-off noise in float32, blown up by a unit-norm constraint to
            # w / (1e-7 + |w|)), and comparing two float32 implementations says nothing.
            try:
                ek = keras_f64_distance(keras, out / "untrained.keras", m, X, Y, bs, ep, sw, cw, kw)
            except Exception as why:
                ek = float("nan")
                print(f"{label}: Keras in float64 failed: {str(why)[:120]}")
                # TensorFlow has no float64 kernel for some gradients (a channels_first Conv1D's
                # filter gradient). Then grucell's own float64 run tells whether float32 round-off
                # decides the outcome: grucell's float32 result far from its float64 one means it
                # does (a weight whose exact gradient is 0, in front of a normalization, moved by
                # round-off that RMSprop scales up to full steps), and the float32 comparison says
                # nothing. Anything else stays a disagreement.
                try:
                    own = grucell_own_f64_distance(args, keras, out / "untrained.keras", out / "ours.keras", X, Y,
                                                   bs, ep, out, sw, cw, kw)
                except Exception as why2:
                    own = float("nan")
                    print(f"{label}: grucell in float64 failed: {str(why2)[:120]}")
                if own > 1e-5:
                    unstable += 1
                    print(f"{label}: unstable (not counted): fit {e:.2e}, continued {e2}; Keras cannot run "
                          f"in float64, and grucell's float32 result is {own:.2e} from its float64 one")
                    continue
            if ek > 1e-5 and e2 is not None and e2 <= 1e-5 and not skipped:
                unstable += 1
                print(f"{label}: unstable (not counted): fit {e:.2e}, but Keras' float32 result "
                      f"is {ek:.2e} from its float64 one")
                continue
            if ek > 1e-5 and not skipped:
                # The continued epoch is as sensitive: train the float64 copy with grucell too.
                try:
                    g64 = grucell_f64_distance(args, keras, out / "untrained.keras", X, Y, bs, ep, out, sw, cw, kw)
                except Exception as why:
                    g64 = float("nan")
                    print(f"{label}: float64 comparison failed: {str(why)[:120]}")
                if g64 <= 1e-9:
                    unstable += 1
                    print(f"{label}: unstable (not counted): fit {e:.2e}, continued {e2}, but Keras' "
                          f"float32 result is {ek:.2e} from its float64 one, and grucell in float64 is "
                          f"{g64:.2e} from Keras in float64")
                    continue
                # Even float64 may not settle it: a weight whose exact gradient is 0 (a
                # LayerNormalization's beta in front of a BatchNormalization) moves by round-off
                # alone, which a UnitNorm constraint or a clip then blows up. Keras against
                # itself, with inputs moved by one part in 1e12, tells.
                try:
                    p64 = keras_f64_perturbed_distance(keras, out / "untrained.keras", X, Y, bs, ep, sw, cw, kw)
                except Exception as why:
                    p64 = 0.0
                    print(f"{label}: perturbed float64 run failed: {str(why)[:120]}")
                if p64 >= g64 / 10:
                    unstable += 1
                    print(f"{label}: unstable (not counted): fit {e:.2e}, continued {e2}; Keras' float32 "
                          f"result is {ek:.2e} from its float64 one, grucell in float64 {g64:.2e} from "
                          f"Keras in float64, and Keras in float64 moves by {p64:.2e} when its inputs "
                          f"move by one part in 1e12")
                    continue
            bad += 1
            print(f"{label}: fit {e:.2e}, continued {e2}, Keras warnings {skipped[:1]} "
                  f"{err.strip()[:200]} (Keras float32 vs float64: {ek:.2e})")
            keep(args, out, f"fit_{i}", m, dict(batch_size=bs, epochs=ep, class_weight=cw, **kw))
    print(f"fit: {args.n} models, {bad} disagreements, {metric_bad} with compiled metrics differing (of {with_metrics} with metrics), {unstable} unstable (not counted), "
          f"{unbuildable} that Keras cannot build or fit (skipped); {with_schedule} with a learning-rate schedule, "
          f"{with_ema} with use_ema, {with_accumulation} with gradient accumulation, {with_scale} with "
          f"loss_scale_factor, {with_states} stateful, {with_weights} with sample weights, {with_class_weights} with class weights, {with_epoch_options} with steps_per_epoch (and initial_epoch); losses drawn: {dict(sorted(drawn.items()))}")
    return bad + metric_bad


def to_f64_config(v):
    """A model config with every float32 dtype (policies included) rewritten as float64."""
    if isinstance(v, dict):
        return {k: to_f64_config(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_f64_config(x) for x in v]
    return "float64" if v == "float32" else v


def f64_copy(m32):
    """`m32` rebuilt in float64 with the same weights (call with floatx set to float64). Layer
    configs carry their dtype policy ("float32"): rewritten, not inherited."""
    m64 = type(m32).from_config(to_f64_config(m32.get_config()))
    for a, b in zip(m64.weights, m32.weights):
        a.assign(np.asarray(b.numpy(), dtype=a.dtype))
    return m64


def keras_perturbed_gap(m, X, Y, batch_size=None):
    """How far Keras' float32 prediction `Y` of `m` moves (as `compare` measures it) when every
    weight is scaled by 1 + 1e-7, on a copy built from `m`'s config (fresh states); None when no
    copy can be built or run."""
    try:
        m2 = type(m).from_config(m.get_config())
        for a, b in zip(m2.weights, m.weights):
            a.assign(np.asarray(b.numpy()) * np.float32(1 + 1e-7))
        return compare(m2.predict(X, batch_size=batch_size, verbose=0), Y)
    except Exception:
        return None


def keras_f64_prediction(keras, m32, X, batch_size=None):
    """The prediction of `m32` rebuilt in float64 with the same weights."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        return f64_copy(m32).predict(X.astype("float64"), batch_size=batch_size, verbose=0)
    finally:
        keras.config.set_floatx(old)


def compiled_f64_copy(keras, untrained):
    """The untrained model file rebuilt in float64 and compiled as it was (call with floatx set to
    float64)."""
    base = keras.saving.load_model(untrained)
    m64 = f64_copy(base)
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(base.optimizer))
    m64.compile(optimizer=opt, loss=base.loss)
    return m64


def weight_args(out, sw, cw):
    """`grucell fit`'s options for Keras' sample_weight (saved as w.npy) or class_weight."""
    if sw is not None:
        return ["--sample-weight", str(out / "w.npy")]
    if cw is not None:
        return ["--class-weight", ",".join(f"{c}:{w!r}" for c, w in cw.items())]
    return []


def metric_differences(table, hist):
    """Where `grucell fit`'s printed history table differs from Keras' history (metric columns
    only; the loss is compared through the weights): (column, epoch, grucell, Keras)."""
    lines = [l.split("\t") for l in table.splitlines()]
    header = next((l for l in lines if l and l[0] == "epoch"), None)
    if header is None:
        return [("no table", None, None, None)]
    rows = [l for l in lines if l and l[0].isdigit()]
    off = []
    for c, key in enumerate(header):
        if key in ("epoch", "loss", "val_loss"):
            continue
        want = hist.get(key)
        if want is None:
            off.append((key, None, "not in Keras", None))
            continue
        # A metric with one value per class (F1Score(average=None)) prints `[a, b, …]`.
        got = [np.array(json.loads(r[c]) if r[c].startswith("[") else [float(r[c])], dtype=np.float64)
               for r in rows if c < len(r) and r[c] != ""]
        if len(got) != len(want):
            off.append((key, None, len(got), len(want)))
            continue
        for e, (a, b) in enumerate(zip(got, want)):
            b = np.asarray(b, dtype=np.float64).ravel()
            if a.shape != b.shape or np.any(np.abs(a - b) > 1e-4 * np.maximum(1.0, np.abs(b))):
                off.append((key, e + 1, a.tolist(), b.tolist()))
    missing = [k for k in hist if k not in header]
    return off + [(k, None, "missing", None) for k in missing]


def epoch_args(kw):
    """`grucell fit`'s options for Keras' steps_per_epoch and initial_epoch."""
    return [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def keras_f64_distance(keras, untrained, m32, X, Y, bs, ep, sw=None, cw=None, kw=None):
    """Largest difference between `m32`'s weights after fit and those of the same model, compiled
    and trained the same way, in float64."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        m64 = compiled_f64_copy(keras, untrained)
        m64.fit(X.astype("float64"), Y.astype("float64"), batch_size=bs, epochs=ep,
                shuffle=False, verbose=0, sample_weight=None if sw is None else sw.astype("float64"), class_weight=cw,
                **(kw or {}))
        return max(float(np.max(np.abs(a.numpy() - b.numpy().astype("float64"))))
                   for a, b in zip(m64.weights, m32.weights))
    finally:
        keras.config.set_floatx(old)


def keras_f64_perturbed_distance(keras, untrained, X, Y, bs, ep, sw=None, cw=None, kw=None):
    """Largest difference between the weights of two float64 Keras fits of the untrained model,
    one on the inputs as they are, one on inputs scaled by 1 + 1e-12: how far round-off alone
    moves the result."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        runs = []
        for scale in (1.0, 1.0 + 1e-12):
            m64 = compiled_f64_copy(keras, untrained)
            m64.fit(X.astype("float64") * scale, Y.astype("float64"), batch_size=bs, epochs=ep, shuffle=False,
                    verbose=0, sample_weight=None if sw is None else sw.astype("float64"), class_weight=cw,
                    **(kw or {}))
            runs.append([w.numpy() for w in m64.weights])
        return max(float(np.max(np.abs(a - b))) for a, b in zip(*runs))
    finally:
        keras.config.set_floatx(old)


def grucell_fit_f64(args, keras, m64, X, Y, bs, ep, out, sw=None, cw=None, kw=None):
    """The model `grucell fit` writes from the float64 model `m64` (saved first, untrained) on the
    data in float64 (same optimizer, batches and epochs)."""
    m64.save(out / "untrained64.keras")
    np.save(out / "x64.npy", X.astype("float64"))
    np.save(out / "y64.npy", Y.astype("float64"))
    rc, _, err = run([args.grucell, "fit", "--model", str(out / "untrained64.keras"), "--x", str(out / "x64.npy"),
                      "--y", str(out / "y64.npy"), "--batch-size", str(bs), "--epochs", str(ep), "--no-shuffle",
                      "--quiet", "--output", str(out / "ours64.keras")]
                     + weight_args(out, sw, cw) + epoch_args(kw or {}))
    if rc != 0:
        raise RuntimeError(err.strip()[:200])
    return keras.saving.load_model(out / "ours64.keras")


def grucell_f64_distance(args, keras, untrained, X, Y, bs, ep, out, sw=None, cw=None, kw=None):
    """Largest difference between the weights Keras and `grucell fit` reach from the float64
    copy of the untrained model (same optimizer, data, batches and epochs)."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        m64 = compiled_f64_copy(keras, untrained)
        ours = grucell_fit_f64(args, keras, m64, X, Y, bs, ep, out, sw, cw, kw)
        w64 = None if sw is None else sw.astype("float64")
        m64.fit(X.astype("float64"), Y.astype("float64"), batch_size=bs, epochs=ep, shuffle=False, verbose=0,
                sample_weight=w64, class_weight=cw, **(kw or {}))
        return max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(ours.weights, m64.weights))
    finally:
        keras.config.set_floatx(old)


def grucell_own_f64_distance(args, keras, untrained, ours32, X, Y, bs, ep, out, sw=None, cw=None, kw=None):
    """Largest difference between the weights `grucell fit` reached in float32 (`ours32`) and
    those it reaches from the float64 copy of the untrained model (Keras only builds the copy)."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        a = grucell_fit_f64(args, keras, compiled_f64_copy(keras, untrained), X, Y, bs, ep, out, sw, cw, kw)
    finally:
        keras.config.set_floatx(old)
    b = keras.saving.load_model(ours32)
    return max(float(np.max(np.abs(u.numpy() - v.numpy().astype("float64")))) for u, v in zip(a.weights, b.weights))


def keep(args, out, name, model, info):
    """With --keep DIR: copies a disagreeing case's files (and Keras' own result) to DIR/name."""
    if args.keep:
        import shutil

        dst = pathlib.Path(args.keep) / name
        shutil.copytree(out, dst, dirs_exist_ok=True)
        model.save(dst / "keras_result.keras")
        (dst / "info.json").write_text(json.dumps(info) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["predict", "multi", "fit"])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grucell", default=str(ROOT / "target" / "release" / "grucell"))
    ap.add_argument("--stateful", type=float, default=0.15, metavar="P",
                    help="predict, fit: the share of models whose recurrent layers are stateful")
    ap.add_argument("--class-weighted", type=float, default=0.15, metavar="P",
                    help="fit: the share of fits (of those without sample weights) with Keras' class_weight")
    ap.add_argument("--metrics", type=float, default=0.3, metavar="P",
                    help="fit: the share of models compiled with Keras metrics, compared with the history")
    ap.add_argument("--epoch-options", type=float, default=0.2, metavar="P",
                    help="fit: the share of fits with Keras' steps_per_epoch (half of them also with initial_epoch)")
    ap.add_argument("--weighted", type=float, default=0.2, metavar="P",
                    help="fit: the share of fits with Keras' sample_weight")
    ap.add_argument("--keep", metavar="DIR", help="copy the files of each disagreeing case into DIR")
    ap.add_argument("--tf-keras", action="store_true",
                    help="build and save the models with TF-Keras 2 (tf_keras 2.21) instead of Keras 3")
    args = ap.parse_args()
    if args.tf_keras and args.what == "fit":
        ap.error("--tf-keras checks predict and multi (grucell's fit writes Keras 3 files)")
    if args.tf_keras:
        import tf_keras as keras
        from tf_keras import layers

        assert keras.__version__.startswith("2.21"), f"pinned to tf_keras 2.21, found {keras.__version__}"
        # Activations TF-Keras 2 does not have.
        for a in ["hard_silu", "sparsemax"]:
            ACTS.remove(a)
    else:
        import keras
        from keras import layers

        assert keras.__version__ == "3.15.1", f"pinned to keras 3.15.1, found {keras.__version__}"
    rng = np.random.default_rng(args.seed)

    def pick(items):
        return items[rng.integers(len(items))]

    check = {"predict": check_predict, "multi": check_multi, "fit": check_fit}[args.what]
    with tempfile.TemporaryDirectory() as d:
        # A copy of the binary: a rebuild during the (long) run must not swap it mid-way.
        import shutil

        args.grucell = shutil.copy2(args.grucell, pathlib.Path(d) / "grucell")
        bad = check(args, keras, layers, rng, pick, pathlib.Path(d))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
