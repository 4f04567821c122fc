#!/usr/bin/env python3
"""Regenerates every Keras fixture under tests/fixtures/.

Pinned reference: tensorflow-cpu==2.21.0, keras==3.15.1 (see tools/requirements-fixtures.txt).

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r tools/requirements-fixtures.txt
    .venv-fixtures/bin/python tools/make_fixtures.py            # all groups
    .venv-fixtures/bin/python tools/make_fixtures.py models     # one group
    FIXTURE_CASES=time_distributed .venv-fixtures/bin/python tools/make_fixtures.py models
                                                                # some cases of the models group

Each group lives in tools/fixtures/<group>.py and exposes `generate(out_dir: pathlib.Path)`.
Everything is seeded, so a rerun gives the same files up to Keras' own nondeterminism.
"""
import importlib
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
GROUPS = ["params", "io", "io_write", "models", "optim", "training", "fit", "resume", "tfkeras"]


def main(argv):
    sys.path.insert(0, str(ROOT / "tools"))
    import keras

    assert keras.__version__ == "3.15.1", f"fixtures are pinned to keras 3.15.1, found {keras.__version__}"
    groups = argv[1:] or GROUPS
    for g in groups:
        if not (ROOT / "tools" / "fixtures" / f"{g}.py").exists():
            print(f"skip {g}: tools/fixtures/{g}.py not present")
            continue
        mod = importlib.import_module(f"fixtures.{g}")
        out = OUT / g
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {g} -> {out.relative_to(ROOT)}")
        mod.generate(out)


if __name__ == "__main__":
    main(sys.argv)
