#!/usr/bin/env python3
"""Checks that .keras files written by grucell load in Keras and predict what they should.

    python tools/check_saved_keras.py MODEL.keras [MODEL2.keras ...]
        [--npz DATA.npz ...]        one for all models, or one per model (same order)
        [--reference REF.keras ...] one for all models, or one per model: a Keras-written file whose
                                    model.weights.h5 must match (paths, `name` attrs, dtypes,
                                    shapes, values) and whose predictions must match
        [--exact | --atol A --rtol R]
        [--allow-warnings]

For each model: checks the zip layout (entries metadata.json, config.json, model.weights.h5 in that
order, STORED), loads it with keras.saving.load_model (warnings count as failures unless
--allow-warnings), prints model.summary(), and compares predict(input_0[, input_1...]) with
output_0[, output_1...] from the .npz, and with the reference model's predictions.
Exit status: 0 when every check passed, 1 on any mismatch or load failure, 2 on bad usage.

Reference environment: tensorflow-cpu 2.21.0, keras 3.15.1 (tools/requirements-fixtures.txt).
"""
import argparse
import io
import os
import sys
import warnings
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

EXPECTED_ENTRIES = ["metadata.json", "config.json", "model.weights.h5"]


def h5_items(raw):
    f = h5py.File(io.BytesIO(raw), "r")
    items = {}
    f.visititems(lambda name, obj: items.__setitem__(name, obj))
    return f, items


def attr_str(v):
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def compare_h5(raw, ref_raw, problems):
    """Same paths, kinds, `name` attributes, dtypes, shapes and values as the reference."""
    _f, got = h5_items(raw)
    _g, want = h5_items(ref_raw)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        problems.append(f"model.weights.h5 lacks {len(missing)} object(s): {missing[:8]}")
    if extra:
        problems.append(f"model.weights.h5 has {len(extra)} extra object(s): {extra[:8]}")
    n_ds = 0
    for name in sorted(set(got) & set(want)):
        a, b = got[name], want[name]
        if isinstance(a, h5py.Dataset) != isinstance(b, h5py.Dataset):
            problems.append(f"{name}: group/dataset kind differs")
            continue
        for k in b.attrs:
            if k not in a.attrs:
                problems.append(f"{name}: attribute {k!r} missing")
            elif attr_str(a.attrs[k]) != attr_str(b.attrs[k]):
                problems.append(f"{name}: attribute {k!r} = {a.attrs[k]!r}, expected {b.attrs[k]!r}")
        if isinstance(b, h5py.Dataset):
            n_ds += 1
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(f"{name}: {a.dtype}{a.shape}, expected {b.dtype}{b.shape}")
            elif not np.array_equal(a[()], b[()]):
                problems.append(f"{name}: values differ (max |diff| {np.max(np.abs(a[()] - b[()]))})")
            if a.chunks is not None or a.compression is not None:
                problems.append(f"{name}: chunked/compressed; Keras writes contiguous datasets")
    return len(want), n_ds


def compare(label, got, want, atol, rtol, problems):
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    if len(got) != len(want):
        problems.append(f"{label}: {len(got)} output(s), expected {len(want)}")
        return
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            problems.append(f"{label} output_{i}: shape {g.shape}, expected {w.shape}")
            continue
        diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if g.size else 0.0
        ok = np.array_equal(g, w) if atol == 0 and rtol == 0 else np.allclose(g, w, atol=atol, rtol=rtol)
        print(f"  {label} output_{i}: shape {g.shape}, max |diff| {diff:.3e} -> {'OK' if ok else 'MISMATCH'}")
        if not ok:
            problems.append(f"{label} output_{i}: max |diff| {diff:.3e} exceeds atol={atol}, rtol={rtol}")


def pick(lst, i, n, what):
    if not lst:
        return None
    if len(lst) == 1:
        return lst[0]
    if len(lst) != n:
        sys.exit(f"usage: give one {what} for all models or one per model ({n}), got {len(lst)}")
    return lst[i]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--npz", action="append", default=[])
    p.add_argument("--reference", action="append", default=[])
    p.add_argument("--exact", action="store_true", help="predictions must be bit-identical")
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--allow-warnings", action="store_true")
    a = p.parse_args(argv)
    atol, rtol = (0.0, 0.0) if a.exact else (a.atol, a.rtol)

    import keras

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    failed = 0
    for i, path in enumerate(a.models):
        problems = []
        print(f"== {path}")
        npz = pick(a.npz, i, len(a.models), "--npz")
        ref = pick(a.reference, i, len(a.models), "--reference")
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                names = [x.filename for x in infos]
                if names != EXPECTED_ENTRIES:
                    problems.append(f"zip entries {names}, expected {EXPECTED_ENTRIES}")
                for x in infos:
                    if x.compress_type != zipfile.ZIP_STORED:
                        problems.append(f"zip entry {x.filename} compressed ({x.compress_type}), Keras stores")
                print(f"  zip: {[(x.filename, x.file_size) for x in infos]}")
                print(f"  metadata.json: {z.read('metadata.json').decode()}")
                raw = z.read("model.weights.h5")
            if ref:
                with zipfile.ZipFile(ref) as z:
                    n, nd = compare_h5(raw, z.read("model.weights.h5"), problems)
                print(f"  model.weights.h5 vs {ref}: {n} objects, {nd} datasets compared")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = keras.saving.load_model(path)
            for w in caught:
                msg = f"warning while loading: {w.category.__name__}: {str(w.message)[:300]}"
                print(f"  {msg}")
                if not a.allow_warnings:
                    problems.append(msg)
            model.summary(print_fn=lambda s, **_: print("  " + s))
            opt = getattr(model, "optimizer", None)
            if opt is not None and opt.built:
                print(f"  optimizer {opt.name}: iterations {int(opt.iterations)}, "
                      f"{len(opt.variables)} variables")
            if npz:
                data = np.load(npz)
                ins = [data[k] for k in sorted((k for k in data.files if k.startswith("input_")),
                                               key=lambda k: int(k.split("_")[1]))]
                outs = [data[k] for k in sorted((k for k in data.files if k.startswith("output_")),
                                                key=lambda k: int(k.split("_")[1]))]
                if not ins or not outs:
                    problems.append(f"{npz}: needs input_0… and output_0… arrays, has {data.files}")
                else:
                    x = ins[0] if len(ins) == 1 else ins
                    got = model.predict(x, verbose=0)
                    compare(f"vs {os.path.basename(npz)}", got, outs if len(outs) > 1 else outs[0],
                            atol, rtol, problems)
                    if ref:
                        want = keras.saving.load_model(ref).predict(x, verbose=0)
                        compare(f"vs {os.path.basename(ref)}", got, want, atol, rtol, problems)
            if ref and opt is not None and opt.built:
                ref_opt = getattr(keras.saving.load_model(ref), "optimizer", None)
                if ref_opt is None or not ref_opt.built:
                    problems.append("optimizer state present, but the reference has none")
                else:
                    pairs = list(zip(opt.variables, ref_opt.variables))
                    bad = [v.path for v, r in pairs if not np.array_equal(np.asarray(v), np.asarray(r))]
                    if len(opt.variables) != len(ref_opt.variables) or bad:
                        problems.append(f"optimizer variables differ from the reference: {bad[:8]}")
                    else:
                        print(f"  optimizer state equals the reference ({len(pairs)} variables)")
        except Exception as e:  # report and go on with the next model
            problems.append(f"{type(e).__name__}: {e}")
        if problems:
            failed += 1
            print("  FAIL:")
            for pr in problems:
                print(f"    - {pr}")
        else:
            print("  PASS")
    print(f"{len(a.models) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
