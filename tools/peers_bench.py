#!/usr/bin/env python3
"""Peer comparison: grucell vs PyTorch nn.GRU, ONNX Runtime GRU and Keras GRU on the same sizes and threads.

Each framework runs in its own subprocess per size (thread pools of OpenBLAS / oneDNN / MKL / rayon would
otherwise interfere on a small machine), with the thread-count environment variables set before any import.
The grucell side is `grucell bench --threads N --json --sizes NAME`, run the same way.

    python3 -m venv /work/bvenv
    /work/bvenv/bin/pip install -r tools/requirements-bench.txt
    /work/bvenv/bin/python tools/peers_bench.py --sizes S,M,L,XL,T1 --threads 2 --json bench.json

Measures (milliseconds, median of the timed repetitions after warm-up), float32, h0 = 0, random data:
  forward  inference over the whole output sequence (return_sequences=True);
  training forward keeping activations + backward giving gradients for every weight and for the input,
           loss = sum of the output sequence (ONNX Runtime: forward only, training is n/a).
FLOPs: forward = 2*B*T*3H*(I+H) (elementwise work ignored); training = 3 x forward.
See docs/benchmarks.md for the method and the last recorded results.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name -> (batch, time, input, units)
SIZES = {
    "S": (1, 100, 32, 64),
    "M": (32, 50, 64, 256),
    "L": (64, 50, 512, 512),
    "XL": (16, 25, 1024, 1024),
    "T1": (1, 1, 64, 256),
}
PEERS = ("torch", "onnxruntime", "keras")
RESULT_TAG = "PEERS_BENCH_RESULT "
FLOP_FORMULA = "forward FLOPs = 2*B*T*3H*(I+H) (elementwise ignored); training FLOPs = 3 x forward"
# The shim --hide-avx512 preloads into every measured process (set by main).
HIDE_AVX512_SO = None
HIDDEN_NOTE = "; AVX-512 hidden from every engine (--hide-avx512)"


def forward_flops(b, t, i, h):
    """FLOPs of one forward pass: the input and recurrent GEMMs of the three gates."""
    return 2.0 * b * t * 3 * h * (i + h)


def thread_env(threads):
    """Environment for a benchmark subprocess: every known thread knob pinned to `threads`."""
    env = dict(os.environ)
    n = str(threads)
    for key in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "RAYON_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
    ):
        env[key] = n
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONHASHSEED"] = "0"
    if HIDE_AVX512_SO:
        env["LD_PRELOAD"] = " ".join(filter(None, [HIDE_AVX512_SO, env.get("LD_PRELOAD")]))
    return env


def build_hide_avx512(tmpdir):
    """Compiles tools/hide_avx512.c into `tmpdir`; returns the shared object's path."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit("--hide-avx512: needs Linux on x86-64 (CPUID faulting), not %s %s"
                         % (platform.system(), platform.machine()))
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise SystemExit("--hide-avx512: no C compiler (cc or gcc) on PATH")
    out = str(pathlib.Path(tmpdir) / "hide_avx512.so")
    res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", out, str(ROOT / "tools" / "hide_avx512.c")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit("--hide-avx512: compiling tools/hide_avx512.c failed: %s" % tail(res.stderr))
    check = subprocess.run([sys.executable, "-c", "pass"], env=dict(os.environ, LD_PRELOAD=out),
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit("--hide-avx512: the shim does not work here (exit code %s): %s"
                         % (check.returncode, tail(check.stderr)))
    return out


# ----------------------------------------------------------------------------------------------------------
# Worker side: runs inside the subprocess, imports exactly one framework.
# ----------------------------------------------------------------------------------------------------------


def measure(fn, opts):
    """Times `fn` after `opts.warmup` calls; returns the median and the raw per-call times (ms).

    At least `opts.reps` calls are timed; fast calls are repeated until `opts.min_time` seconds are
    spent (at most 5000 calls) so the median of a microsecond call is stable; slow calls stop after
    `opts.max_time` seconds once 3 calls are timed.
    """
    for _ in range(opts.warmup):
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start
        if len(times) >= 3 and spent > opts.max_time:
            break
        if len(times) >= opts.reps and (spent >= opts.min_time or len(times) >= 5000):
            break
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "reps": len(times),
        "times_ms": [round(t, 6) for t in times],
    }


def worker_torch(dims, opts):
    import torch

    b, t, i, h = dims
    torch.set_num_threads(opts.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(opts.seed)
    gru = torch.nn.GRU(i, h, batch_first=True)  # float32, PyTorch's only GRU == linear_before_reset
    x = torch.randn(b, t, i)
    x_grad = x.clone().requires_grad_(True)
    params = list(gru.parameters())

    def forward():
        with torch.inference_mode():
            y, _ = gru(x)
        return y

    def train():
        y, _ = gru(x_grad)
        return torch.autograd.grad(y.sum(), [x_grad] + params)

    info = {
        "versions": {"torch": torch.__version__},
        "torch_num_threads": torch.get_num_threads(),
        "torch_parallel_info": torch.__config__.parallel_info().strip().splitlines()[:8],
    }
    return info, measure(forward, opts), measure(train, opts)


def build_onnx_gru(dims, seed, reset_after=True):
    """ONNX model with one GRU node: X [T,B,I] -> Y [T,1,B,H], W [1,3H,I], R [1,3H,H], B [1,6H].

    Gate order z, r, h (ONNX); linear_before_reset=1 (= Keras reset_after=True = PyTorch), or 0 for
    Keras' reset_after=False; no h0 (zeros).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    b, t, i, h = dims
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(h)
    w = rng.uniform(-s, s, (1, 3 * h, i)).astype(np.float32)
    r = rng.uniform(-s, s, (1, 3 * h, h)).astype(np.float32)
    bias = rng.uniform(-s, s, (1, 6 * h)).astype(np.float32)
    node = helper.make_node(
        "GRU", inputs=["X", "W", "R", "B"], outputs=["Y"], hidden_size=h,
        linear_before_reset=1 if reset_after else 0
    )
    graph = helper.make_graph(
        [node],
        "gru_bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [t, b, i])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [t, 1, b, h])],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(r, "R"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def worker_onnxruntime(dims, opts):
    import numpy as np
    import onnx
    import onnxruntime as ort

    b, t, i, h = dims
    model = build_onnx_gru(dims, opts.seed, not opts.reset_before)
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(opts.seed + 1)
    # ONNX GRU's default layout is time-major; the transpose is data preparation, outside the timing.
    x = np.ascontiguousarray(rng.standard_normal((t, b, i), dtype=np.float32))

    def forward():
        return sess.run(["Y"], {"X": x})

    info = {"versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}}
    return info, measure(forward, opts), None


def worker_keras(dims, opts):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(opts.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    b, t, i, h = dims
    keras.utils.set_random_seed(opts.seed)
    # reset_after=True (default) == linear_before_reset; False with --reset-before
    layer = keras.layers.GRU(h, return_sequences=True, reset_after=not opts.reset_before)
    layer.build((b, t, i))
    x = tf.random.normal((b, t, i))

    @tf.function(jit_compile=False)
    def fwd(inp):
        return layer(inp, training=False)

    @tf.function(jit_compile=False)
    def train_step(inp):
        with tf.GradientTape() as tape:
            tape.watch(inp)
            y = layer(inp, training=True)
            loss = tf.reduce_sum(y)
        return tape.gradient(loss, [inp] + list(layer.trainable_variables))

    def forward():
        return fwd(x)

    def train():
        grads = train_step(x)
        if any(g is None for g in grads):
            raise RuntimeError("a Keras gradient is None")
        return grads

    info = {
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
        },
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    return info, measure(forward, opts), measure(train, opts)


WORKERS = {"torch": worker_torch, "onnxruntime": worker_onnxruntime, "keras": worker_keras}


def worker_main(opts):
    """Subprocess entry: benchmark one framework on one size and print one tagged JSON line."""
    # The parent already set the thread variables; set them again in case the worker is run by hand.
    for key, value in thread_env(opts.threads).items():
        os.environ.setdefault(key, value)
    dims = tuple(int(v) for v in opts.dims.split(","))
    info, fwd, train = WORKERS[opts.worker](dims, opts)
    out = {
        "framework": opts.worker,
        "dims": dims,
        "threads": opts.threads,
        "forward": fwd,
        "train": train,
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "python": sys.version.split()[0],
    }
    out.update(info)
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------
# Driver side.
# ----------------------------------------------------------------------------------------------------------


def vm_hwm_kib(pid):
    """Peak resident set size (VmHWM, KiB) of a running process from /proc; None when unreadable."""
    try:
        for line in pathlib.Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_process(cmd, env, timeout, cwd=None):
    """Runs `cmd` in its own session; returns rc, stdout, stderr, wall seconds, peak RSS (KiB), timed_out
    and the share of the machine's CPU time that other processes used meanwhile.

    os.wait4 gives the resource usage of exactly this child (its CPU time, and the RSS fallback).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = cpu_snapshot()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        except OSError as e:
            return {"rc": None, "stdout": "", "stderr": str(e), "wall_s": 0.0, "maxrss_kib": None,
                    "timed_out": False, "others_cpu": None}
        timed_out = False
        hwm = None
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                hwm = max(hwm or 0, vm_hwm_kib(proc.pid) or 0) or None
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.01)
        except BaseException:
            # Ctrl-C or any error here: do not leave the benchmark process (own session) running.
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        after = cpu_snapshot()
        others = None
        if before is not None and after is not None and after[0] > before[0]:
            # Busy CPU-seconds of the whole machine minus the child's own, over the CPU-seconds available.
            tick = os.sysconf("SC_CLK_TCK")
            total = (after[0] - before[0]) / tick
            busy = total - (after[1] - before[1]) / tick
            own = usage.ru_utime + usage.ru_stime
            others = round(min(1.0, max(0.0, (busy - own) / total)), 3)
        out.seek(0)
        err.seek(0)
        return {
            "rc": proc.returncode,
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"),
            "wall_s": wall,
            # VmHWM is the peak RSS of the exec'd program itself; ru_maxrss also counts the forked copy of
            # this driver before exec (a floor of the driver's own RSS), so it is only the fallback for a
            # process that ended before the first 10 ms poll.
            "maxrss_kib": hwm if hwm else usage.ru_maxrss,
            "maxrss_source": "VmHWM" if hwm else "ru_maxrss",
            "timed_out": timed_out,
            "others_cpu": others,
        }


def cpu_snapshot():
    """(total, idle) jiffies of all CPUs from /proc/stat; None where unreadable."""
    try:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def cpu_busy(sample_s=1.0):
    """Fraction of all CPUs busy over `sample_s` seconds, from /proc/stat (None where unreadable).

    The driver sleeps meanwhile, so this is the load other processes put on the machine.
    """
    a = cpu_snapshot()
    time.sleep(sample_s)
    b = cpu_snapshot()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def wait_quiet(opts):
    """Waits up to --wait-quiet seconds for the other processes' CPU use to drop under --quiet-below.

    Returns the last busy fraction seen, recorded with each result so noisy numbers can be spotted.
    """
    deadline = time.monotonic() + opts.wait_quiet
    busy = cpu_busy(0.5)
    while busy is not None and busy > opts.quiet_below and time.monotonic() < deadline:
        busy = cpu_busy(1.0)
    return None if busy is None else round(busy, 3)


def tail(text, lines=6):
    """Last non-empty lines of `text`, for failure messages."""
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def run_peer(framework, name, dims, opts):
    python = opts.keras_python if framework == "keras" and opts.keras_python else sys.executable
    cmd = [
        python,
        str(pathlib.Path(__file__).resolve()),
        "--worker", framework,
        "--dims", ",".join(str(d) for d in dims),
        "--threads", str(opts.threads),
        "--warmup", str(opts.warmup),
        "--reps", str(opts.reps),
        "--min-time", str(opts.min_time),
        "--max-time", str(opts.max_time),
        "--seed", str(opts.seed),
    ] + (["--reset-before"] if opts.reset_before else [])
    busy = wait_quiet(opts)
    res = run_process(cmd, thread_env(opts.threads), opts.timeout)
    row = {"framework": framework, "size": name, "dims": list(dims), "maxrss_kib": res["maxrss_kib"],
           "maxrss_source": res.get("maxrss_source"),
           "wall_s": round(res["wall_s"], 2), "cpu_busy_before": busy,
           "others_cpu_during": res["others_cpu"]}
    payload = None
    for line in res["stdout"].splitlines():
        if line.startswith(RESULT_TAG):
            payload = json.loads(line[len(RESULT_TAG):])
    if payload is None:
        why = "timed out after %ss" % opts.timeout if res["timed_out"] else "exit code %s" % res["rc"]
        row["error"] = "%s: %s" % (why, tail(res["stderr"] + "\n" + res["stdout"]))
        return row
    row.update(payload)
    return row


def noise_rank(row):
    """Sort key of a result row by noise (see noise_of): unknown = 1, failed = 2."""
    if "error" in row:
        return 2.0
    noise = noise_of(row)
    return 1.0 if noise is None else noise


def host_speed(n=300_000):
    """Iterations per second of a fixed pure-Python loop, best of three (~15 ms each): how fast the
    host lets this VM run right now. On a shared host a slow spell slows every process alike for
    minutes at a time, and the CPU-use figures inside the VM do not show it."""
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        s = 0
        for i in range(n):
            s += i
        best = max(best, n / max(time.perf_counter() - t, 1e-9))
    return best


_FASTEST_HOST = [0.0]


def relative_host_speed():
    """host_speed() as a fraction of the fastest seen in this run (1.0 = as fast as ever)."""
    v = host_speed()
    _FASTEST_HOST[0] = max(_FASTEST_HOST[0], v)
    return round(v / _FASTEST_HOST[0], 3)


def wait_fast(opts):
    """With --slow-below, waits up to --wait-quiet seconds (at least 60) while the host runs slower
    than --slow-below of its fastest; returns the last relative speed seen (None when off)."""
    if opts.slow_below <= 0:
        return None
    deadline = time.monotonic() + max(opts.wait_quiet, 60.0)
    rel = relative_host_speed()
    while rel < opts.slow_below and time.monotonic() < deadline:
        time.sleep(5.0)
        rel = relative_host_speed()
    return rel


def noise_of(row):
    """The larger of others' CPU share during a row and, with --slow-below, how much slower than its
    fastest the host ran just before or after it (None: unknown)."""
    noise = row.get("others_cpu_during")
    speeds = [row.get(k) for k in ("host_speed_before", "host_speed_after") if row.get(k) is not None]
    if speeds:
        noise = max(noise or 0.0, 1.0 - min(speeds))
    return noise


def run_quietest(job, opts):
    """Runs `job` (returning a result row) and reruns it up to --retries times while other processes
    used more than --quiet-below of the CPUs during it or, with --slow-below, the host ran slower
    than that fraction of its fastest just before or after it; keeps the row measured in the
    quietest run."""
    best = None
    for attempt in range(1 + max(0, opts.retries)):
        before = wait_fast(opts)
        row = job()
        row["attempt"] = attempt + 1
        if "error" in row:
            return row
        if before is not None:
            row["host_speed_before"] = before
            row["host_speed_after"] = relative_host_speed()
        noise = row.get("others_cpu_during")
        if best is None or noise_rank(row) < noise_rank(best):
            best = row
        slow = before is not None and min(row["host_speed_before"], row["host_speed_after"]) < opts.slow_below
        if (noise is None or noise <= opts.quiet_below) and not slow:
            break
    return best


def combine_rounds(got):
    """One row from the rows of several rounds of one (framework, size): its forward and train medians
    are the medians of the rounds' medians, its noise figure the largest; every round is kept under
    "rounds". One round: that row unchanged."""
    ok = [r for r in got if "error" not in r]
    if len(got) == 1 or not ok:
        return got[0]
    row = dict(ok[0])
    for kind in ("forward", "train"):
        vals = [median_of(r, kind) for r in ok if median_of(r, kind) is not None]
        if vals:
            row[kind] = {"median_ms": statistics.median(vals), "round_medians_ms": vals}
    noise = [r.get("others_cpu_during") for r in ok if r.get("others_cpu_during") is not None]
    row["others_cpu_during"] = max(noise) if noise else None
    rss = [r.get("maxrss_kib") for r in ok if isinstance(r.get("maxrss_kib"), int)]
    row["maxrss_kib"] = max(rss) if rss else row.get("maxrss_kib")
    row["rounds"] = got
    if "raw" in row:
        gemm = [r["raw"].get("gemm_gflops") for r in ok
                if isinstance(r.get("raw", {}).get("gemm_gflops"), (int, float))]
        if gemm:
            row["raw"] = dict(row["raw"], gemm_gflops=statistics.median(gemm))
    return row


def progress_line(row):
    """One line for the progress log: medians or the failure, plus the noise figures."""
    noise = "others' CPU %s before, %s during, attempt %s" % (
        row.get("cpu_busy_before"), row.get("others_cpu_during"), row.get("attempt"))
    if "error" in row:
        return "FAILED %s (%s)" % (row["error"].splitlines()[0], noise)
    train = median_of(row, "train")
    return "fwd %.3f ms, train %s ms (%.1fs; %s)" % (
        median_of(row, "forward"), "%.3f" % train if train is not None else "n/a", row["wall_s"], noise)


def locate_grucell(opts, notes):
    """Path of the grucell binary, building it when missing (unless --no-build); None when unavailable."""
    path = pathlib.Path(opts.grucell) if opts.grucell else ROOT / "target" / "release" / "grucell"
    if path.is_file() and not opts.build:
        return path
    if opts.no_build:
        notes.append("grucell: %s not found and --no-build given" % path)
        return None
    cargo = shutil.which("cargo")
    if cargo is None:
        notes.append("grucell: %s not found and cargo is not on PATH" % path)
        return None
    print("building grucell: cargo build --release (up to %ss) ..." % opts.build_timeout, flush=True)
    res = run_process([cargo, "build", "--release"], dict(os.environ), opts.build_timeout, cwd=str(ROOT))
    if res["rc"] != 0 or not path.is_file():
        why = "timed out" if res["timed_out"] else "exit code %s" % res["rc"]
        notes.append("grucell: cargo build --release failed (%s): %s" % (why, tail(res["stderr"])))
        return None
    return path


def grucell_size_arg(name, dims):
    """Size argument for `grucell bench --sizes`: the name for a standard size, B,T,I,H otherwise."""
    return name if name in SIZES and SIZES[name] == dims else ",".join(str(d) for d in dims)


def run_grucell(binary, name, dims, opts):
    cmd = [str(binary), "bench", "--threads", str(opts.threads), "--json", "--sizes", grucell_size_arg(name, dims)]
    if opts.grucell_isa:
        cmd += ["--isa", opts.grucell_isa]
    if opts.reset_before:
        cmd += ["--reset-after", "false"]
    busy = wait_quiet(opts)
    res = run_process(cmd, thread_env(opts.threads), opts.timeout)
    row = {"framework": "grucell", "size": name, "dims": list(dims), "maxrss_kib": res["maxrss_kib"],
           "maxrss_source": res.get("maxrss_source"),
           "wall_s": round(res["wall_s"], 2), "command": " ".join(cmd), "cpu_busy_before": busy,
           "others_cpu_during": res["others_cpu"]}
    objs = []
    for line in res["stdout"].splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    match = [o for o in objs if o.get("size") == name or
             [o.get("batch"), o.get("time"), o.get("input"), o.get("units")] == list(dims)]
    if res["rc"] != 0 or not match:
        if res["timed_out"]:
            why = "timed out after %ss" % opts.timeout
        elif res["rc"] != 0:
            why = "exit code %s" % res["rc"]
        else:
            why = "no JSON line for this size on stdout (does this binary have the `bench` subcommand?)"
        row["error"] = "%s: %s" % (why, tail(res["stderr"] + "\n" + res["stdout"], 4))
        return row
    obj = match[0]
    row["raw"] = obj
    row["forward"] = {"median_ms": obj.get("forward_ms")}
    row["train"] = {"median_ms": obj.get("train_ms")} if obj.get("train_ms") is not None else None
    if "version" in obj:
        row["versions"] = {"grucell": obj["version"]}
    if isinstance(obj.get("peak_rss_mib"), (int, float)) and obj["peak_rss_mib"] > 0:
        # grucell's own figure (read inside the process) beats a 10 ms poll of a short process.
        row["maxrss_kib"] = int(obj["peak_rss_mib"] * 1024)
        row["maxrss_source"] = "grucell peak_rss_mib"
    return row


def cpu_info():
    """CPU model, SIMD flags of interest and core counts from /proc/cpuinfo and the scheduler."""
    model, flags, physical = None, set(), set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    phys_id, core_id = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            physical.add((phys_id, core_id))
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
            if f in flags]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "model": model or platform.processor() or "unknown",
        "simd_flags": simd,
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or None,
        "usable_cpus": usable,
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def parse_sizes(opts):
    sizes = []
    for token in [s.strip() for s in opts.sizes.split(",") if s.strip()]:
        key = token.upper()
        if key in SIZES:
            sizes.append((key, SIZES[key]))
        elif re.fullmatch(r"\d+x\d+x\d+x\d+", token.lower()):
            dims = tuple(int(v) for v in token.lower().split("x"))
            sizes.append((token.lower(), dims))
        else:
            raise SystemExit("--sizes: unknown size %r; expected one of %s or BxTxIxH" % (token, ",".join(SIZES)))
    for spec in opts.custom or []:
        parts = spec.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise SystemExit("--custom: expected B,T,I,H (four positive integers), got %r" % spec)
        dims = tuple(int(p) for p in parts)
        sizes.append(("x".join(parts).replace(" ", ""), dims))
    if not sizes:
        raise SystemExit("--sizes: no size given")
    return sizes


def fmt_cell(ms, flops):
    if ms is None:
        return "n/a"
    digits = 4 if ms < 0.1 else 3 if ms < 10 else 1
    return "%.*f (%.1f)" % (digits, ms, flops / (ms * 1e6))


def median_of(row, kind):
    if row is None or "error" in row or not row.get(kind):
        return None
    return row[kind].get("median_ms")


def render_tables(sizes, rows, frameworks):
    """Markdown tables: per size the median ms (GFLOP/s) of each framework and grucell / fastest peer."""
    by = {(r["framework"], r["size"]): r for r in rows}
    out = []
    for kind, title, mult in (("forward", "Forward (inference, full output sequence)", 1.0),
                              ("train", "Training (forward + backward, all weight and input gradients)", 3.0)):
        out.append("%s: median ms (GFLOP/s)" % title)
        out.append("")
        head = ["size", "B,T,I,H", "GFLOP"] + frameworks + ["fastest peer", "grucell / fastest", "others' CPU"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * len(head)) + "|")
        for name, dims in sizes:
            flops = mult * forward_flops(*dims)
            cells = [name, ",".join(str(d) for d in dims), "%.4g" % (flops / 1e9)]
            peer_best = None
            for fw in frameworks:
                row = by.get((fw, name))
                ms = median_of(row, kind)
                if row is not None and "error" in row:
                    cells.append("n/a" if fw == "grucell" else "failed")
                elif fw == "onnxruntime" and kind == "train":
                    cells.append("n/a")
                else:
                    cells.append(fmt_cell(ms, flops))
                if fw != "grucell" and ms is not None and (peer_best is None or ms < peer_best[1]):
                    peer_best = (fw, ms)
            mine = median_of(by.get(("grucell", name)), kind)
            cells.append(peer_best[0] if peer_best else "n/a")
            cells.append("%.2f" % (mine / peer_best[1]) if mine is not None and peer_best else "n/a")
            noise = [by[(fw, name)].get("others_cpu_during") for fw in frameworks
                     if (fw, name) in by and "error" not in by[(fw, name)]]
            noise = [n for n in noise if n is not None]
            cells.append("%.0f%%" % (100 * max(noise)) if noise else "n/a")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append("others' CPU: the largest share of the machine's CPU time that other processes used while one of")
    out.append("the size's measurements ran (above ~15% the row is noisy).")
    out.append("")
    out.append("Peak RSS per process (MiB, information only)")
    out.append("")
    head = ["size"] + frameworks
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] * len(head)) + "|")
    for name, _ in sizes:
        cells = [name]
        for fw in frameworks:
            row = by.get((fw, name))
            rss = row.get("maxrss_kib") if row and "error" not in row else None
            cells.append("%.1f" % (rss / 1024) if rss else "n/a")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def print_saved(paths):
    """Prints the tables of saved --json runs; across several runs keeps, for each (framework, size),
    the row measured with the least CPU use by other processes."""
    docs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    hidden = {bool(doc["settings"].get("hide_avx512")) for doc in docs}
    before = {bool(doc["settings"].get("reset_before")) for doc in docs}
    if len({doc["threads"] for doc in docs}) > 1 or len({doc["cpu"]["model"] for doc in docs}) > 1 \
            or len(hidden) > 1 or len(before) > 1:
        raise SystemExit("--from-json: the runs differ in thread count, CPU model, --hide-avx512 or "
                         "--reset-before; merge only like runs")
    sizes, frameworks, best = {}, [], {}
    for doc in docs:
        for name, d in doc["sizes"].items():
            sizes.setdefault(name, tuple(d[k] for k in ("batch", "time", "input", "units")))
        for r in doc["results"]:
            if r["framework"] not in frameworks:
                frameworks.append(r["framework"])
            key = (r["framework"], r["size"])
            old = best.get(key)
            if old is None or noise_rank(r) < noise_rank(old):
                best[key] = dict(r, run_date=doc["date"])
    versions = {}
    for doc in docs:
        versions.update(doc["versions"])
    order = [n for n in SIZES if n in sizes] + [n for n in sizes if n not in SIZES]
    print("runs: %s" % ", ".join(doc["date"] for doc in docs))
    print("cpu: %s; logical cpus %s, physical cores %s; SIMD %s" % (
        docs[0]["cpu"]["model"], docs[0]["cpu"]["logical_cpus"], docs[0]["cpu"]["physical_cores"],
        " ".join(docs[0]["cpu"]["simd_flags"]))
        + (HIDDEN_NOTE if True in hidden else ""))
    print("threads: %s" % docs[0]["threads"])
    if True in before:
        print("convention: reset_after=False (ONNX linear_before_reset=0)")
    print("versions: %s" % ", ".join("%s %s" % kv for kv in sorted(versions.items())))
    print("flops: %s" % FLOP_FORMULA)
    print()
    print(render_tables([(n, sizes[n]) for n in order], list(best.values()), frameworks))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,M,L,XL,T1",
                    help="comma list of %s and/or BxTxIxH (default: all named sizes)" % ",".join(SIZES))
    ap.add_argument("--custom", action="append", metavar="B,T,I,H", help="extra size (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every framework (default 2)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of peers (default: %s)" % ",".join(PEERS))
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    ap.add_argument("--reps", type=int, default=10, help="minimum timed calls per measure (default 10)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="keep repeating fast calls until this many seconds are timed (default 1.0)")
    ap.add_argument("--max-time", type=float, default=20.0,
                    help="stop a slow measure after this many seconds once 3 calls are timed (default 20)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds allowed per subprocess (default 240)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each process wait up to this long for other processes' CPU use to drop "
                         "under --quiet-below (default 0: do not wait); the busy fraction is recorded anyway")
    ap.add_argument("--quiet-below", type=float, default=0.15,
                    help="CPU busy fraction (0..1) regarded as quiet (default 0.15)")
    ap.add_argument("--retries", type=int, default=0,
                    help="rerun a measurement up to this many times while other processes used more than "
                         "--quiet-below of the CPUs during it, keeping the quietest run (default 0)")
    ap.add_argument("--slow-below", type=float, default=0.0, metavar="FRACTION",
                    help="before each process wait (up to --wait-quiet seconds, at least 60) while a "
                         "fixed Python loop runs slower than this fraction of its fastest in this run, "
                         "and with --retries rerun a measurement after which it did (a slow spell of a "
                         "shared host, invisible to the CPU-use figures); e.g. 0.9 (default 0: off)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every framework on a size this many times, in an order rotated each "
                         "round, and report the median of the rounds' medians (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keras-python", default=None,
                    help="python interpreter for the Keras subprocess (default: this one)")
    ap.add_argument("--grucell", default=None, help="grucell binary (default: target/release/grucell)")
    ap.add_argument("--grucell-isa", default=None, metavar="ISA",
                    help="widest grucell kernels: portable, avx2 or avx512 (default: the best the CPU has)")
    ap.add_argument("--hide-avx512", action="store_true",
                    help="hide AVX-512 (and AMX) from every measured process, grucell and peers alike, "
                         "through the CPUID-faulting shim tools/hide_avx512.c (Linux x86-64, needs cc): "
                         "an AVX-512 machine then stands in for an AVX2-only one")
    ap.add_argument("--reset-before", action="store_true",
                    help="time Keras' other convention, reset_after=False (ONNX linear_before_reset=0), in "
                         "grucell, ONNX Runtime and Keras; PyTorch has no such GRU and is left out")
    ap.add_argument("--no-grucell", action="store_true", help="benchmark the peers only")
    ap.add_argument("--no-build", action="store_true", help="never run cargo build --release")
    ap.add_argument("--build", action="store_true", help="run cargo build --release even if the binary exists")
    ap.add_argument("--build-timeout", type=float, default=1800.0, help="seconds allowed for the build")
    ap.add_argument("--json", metavar="OUT", default=None, help="write every raw number to this JSON file")
    ap.add_argument("--from-json", metavar="FILE", nargs="+", default=None,
                    help="print the tables of earlier --json outputs instead of measuring; with several "
                         "files (same machine), each (framework, size) takes its quietest measurement")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--dims", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.threads < 1:
        raise SystemExit("--threads: expected a positive integer, got %d" % opts.threads)
    if opts.rounds < 1:
        raise SystemExit("--rounds: expected a positive integer, got %d" % opts.rounds)
    if opts.worker:
        worker_main(opts)
        return 0
    if opts.from_json:
        return print_saved(opts.from_json)

    sizes = parse_sizes(opts)
    peers = [p.strip() for p in opts.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            raise SystemExit("--peers: unknown peer %r; expected some of %s" % (p, ",".join(PEERS)))
    if opts.reset_before and "torch" in peers:
        peers.remove("torch")
        print("--reset-before: PyTorch left out (its GRU has only the reset-after convention)", flush=True)
    started = datetime.datetime.now().astimezone()
    cpu = cpu_info()
    notes = []
    global HIDE_AVX512_SO
    # Kept until main returns: the measured processes load the shim from it.
    shim_dir = tempfile.TemporaryDirectory(prefix="peers_bench_") if opts.hide_avx512 else None
    if shim_dir is not None:
        HIDE_AVX512_SO = build_hide_avx512(shim_dir.name)
    t_start = time.monotonic()

    binary = None
    if not opts.no_grucell:
        binary = locate_grucell(opts, notes)

    rows = []
    try:
        for name, dims in sizes:
            jobs = ([("grucell", lambda: run_grucell(binary, name, dims, opts))] if binary is not None else [])
            jobs += [(fw, lambda fw=fw: run_peer(fw, name, dims, opts)) for fw in peers]
            per_fw = {fw: [] for fw, _ in jobs}
            for r in range(opts.rounds):
                # Round r starts at the r-th framework, so that none is always measured first or
                # last: a slow minute on the machine then falls on each of them in turn.
                for fw, job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                    row = run_quietest(job, opts)
                    row["round"] = r + 1
                    per_fw[fw].append(row)
                    print("[%s] %s%s: %s" % (name, fw, " (round %d)" % (r + 1) if opts.rounds > 1 else "",
                                             progress_line(row)), flush=True)
            rows += [combine_rounds(got) for got in per_fw.values() if got]
    except KeyboardInterrupt:
        notes.append("interrupted: the tables hold only the measurements finished before Ctrl-C")

    grucell_rows = [r for r in rows if r["framework"] == "grucell"]
    if binary is not None and grucell_rows and all("error" in r for r in grucell_rows):
        notes.append("grucell: `%s bench` gave no usable result: %s" % (binary, grucell_rows[0]["error"]))
    elif opts.no_grucell:
        notes.append("grucell: skipped (--no-grucell)")

    versions = {"python": platform.python_version()}
    for r in rows:
        versions.update(r.get("versions", {}))
    if binary is not None and "grucell" not in versions:
        res = run_process([str(binary), "--version"], dict(os.environ), 10)
        if res["rc"] == 0 and res["stdout"].strip():
            versions["grucell"] = res["stdout"].strip().splitlines()[0].replace("grucell ", "", 1)

    busy = [r["others_cpu_during"] for r in rows if r.get("others_cpu_during") is not None]
    noisy = [b for b in busy if b > opts.quiet_below]
    if noisy:
        notes.append("other processes used %.0f%%-%.0f%% of the CPUs during %d of %d measurements: those "
                     "numbers are noisy (see others_cpu_during in --json; use --wait-quiet/--retries)"
                     % (100 * min(noisy), 100 * max(noisy), len(noisy), len(busy)))
    frameworks = (["grucell"] if not opts.no_grucell else []) + peers
    gemm_rates = [r["raw"]["gemm_gflops"] for r in grucell_rows
                  if isinstance(r.get("raw", {}).get("gemm_gflops"), (int, float))]
    isas = sorted({r["raw"]["isa"] for r in grucell_rows if isinstance(r.get("raw", {}).get("isa"), str)})
    if opts.hide_avx512 and "avx512" in isas:
        notes.append("--hide-avx512: grucell still reported AVX-512 kernels: the shim did not take")
    table = render_tables(sizes, rows, frameworks)
    header = [
        "date: %s" % started.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu: %s; logical cpus %s, physical cores %s, usable %s; SIMD %s" % (
            cpu["model"], cpu["logical_cpus"], cpu["physical_cores"], cpu["usable_cpus"],
            " ".join(cpu["simd_flags"]) or "-")
        + (HIDDEN_NOTE if opts.hide_avx512 else ""),
        "load average at start: %s; other processes' CPU use during the measurements: %s" % (
            " ".join(str(v) for v in cpu["load_avg_at_start"]),
            "%.0f%%..%.0f%%" % (100 * min(busy), 100 * max(busy)) if busy else "unknown"),
        "threads: %d (intra-op; inter-op 1)" % opts.threads,
        "convention: %s" % ("reset_after=False (ONNX linear_before_reset=0)" if opts.reset_before
                            else "reset_after=True (ONNX linear_before_reset=1, PyTorch)"),
        "grucell's own GEMM rate at these threads: %s; grucell kernels: %s" % (
            "%.1f GFLOP/s" % max(gemm_rates) if gemm_rates else "n/a", ", ".join(isas) or "n/a"),
        "versions: %s" % ", ".join("%s %s" % kv for kv in sorted(versions.items())),
        "flops: %s" % FLOP_FORMULA,
        "timing: median of >= %d calls after %d warm-up calls, float32, h0 = 0%s" % (
            opts.reps, opts.warmup,
            "; median over %d rounds (order rotated each round)" % opts.rounds if opts.rounds > 1 else ""),
    ]
    print()
    print("\n".join(header))
    print()
    print(table)
    for n in notes:
        print("NOTE: " + n)
    grucell_all_failed = bool(grucell_rows) and all("error" in r for r in grucell_rows)
    failed = [r for r in rows if "error" in r and not (r["framework"] == "grucell" and grucell_all_failed)]
    for r in failed:
        print("FAILED %s %s: %s" % (r["framework"], r["size"], r["error"]))
    print("total wall time: %.1f s" % (time.monotonic() - t_start))

    if opts.json:
        doc = {
            "date": started.isoformat(),
            "cpu": cpu,
            "threads": opts.threads,
            "versions": versions,
            "flop_formula": FLOP_FORMULA,
            "settings": {k: getattr(opts, k) for k in
                         ("warmup", "reps", "min_time", "max_time", "timeout", "seed", "peers", "sizes", "rounds",
                          "hide_avx512", "reset_before")},
            "sizes": {name: dict(zip(("batch", "time", "input", "units"), dims)) for name, dims in sizes},
            "results": rows,
            "notes": notes,
            "table_markdown": table,
        }
        for r in rows:
            dims = r["dims"]
            for kind, mult in (("forward", 1.0), ("train", 3.0)):
                ms = median_of(r, kind)
                if ms:
                    r.setdefault("gflops", {})[kind] = mult * forward_flops(*dims) / (ms * 1e6)
        pathlib.Path(opts.json).write_text(json.dumps(doc, indent=1))
        print("raw numbers written to %s" % opts.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
