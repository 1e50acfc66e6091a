"""Speed, memory and size figures of the library on this machine.

Every timing is the median of several repetitions after warm-up. The figures:

* ``search_step_s``: one full bilevel step (alpha step on a validation batch + weight
  step on a training batch: `bilevel.BilevelModel.train_step` inside Keras'
  ``make_train_function``, as ``model.fit`` in the runner runs it) of the BNAS
  supernet, built by the method's own ``build_supernet``/``build`` (default: 8 cells
  x 16 channels, batch 64, 32x32), measured in a fresh Python process that runs the
  search step loop. ``first_step_s``: wall time from launching that process to the
  end of its first step (interpreter start, imports, building, tracing, the step);
  ``peak_rss_mb``: its peak resident memory (``os.wait4`` rusage).
  ``bars_search_step_s``: the same step for the BARS supernet at
  ``bars.default_config()`` (in this process). Batches are constant tensors: the
  input pipeline is measured on its own.
* ``train_step_s``: one optimizer step (weight decay included) of the final network
  (default ``bnas-a``, batch 64) compiled as `training.train` compiles it;
  ``train_step_bars_s`` and ``train_step_xnor_resnet18_s`` the same for a BARS
  network and XNOR ResNet-18 (benchmarks/train.py).
* ``input_images_per_s``: the training input pipeline alone (`data.load(...,
  'train')` with augmentation: decode, augment, batch), steady state after the first
  pass filled the cache; ``input_first_pass_images_per_s`` the first (decoding) pass.
  Compared with what the train step consumes (batch / train_step_s).
* LCE export of the final network (paper: float reduction residual) and of the same
  network with ``residual="binary"``: .tflite bytes of the binary file and of its
  float twin, ``LceBconv2d`` count, Keras binary-conv count, single-image latency
  through the LCE interpreter (indirect BGEMM, 1 thread; XNNPack for the float twin).

`run(config)` returns one dict (see `KEYS`); `write_json` writes it atomically and
`format_table` renders it.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PyTorch reference and earlier measurements on this kind of machine (2 cores),
# from ../shared/REFERENCE.md.
REFERENCE = {
    "search_step_s": 9.7,         # PyTorch BNAS supernet, 8 x 16, batch 64, 2 threads
    "first_step_s": 17.6,         # PyTorch, process start to the end of the first step
    "train_step_s": 4.99,         # PyTorch BNAS-A (20 x 36), batch 64
    "keras_quick_search_step_s": 4.75,   # a quick tf.keras + larq supernet
    "keras_quick_first_step_s": 109.0,
    "keras_quick_xla_search_step_s": 10.4,
}
# name -> (comparison, bound): what the benchmark reports as met / not met.
TARGETS = {
    "search_step_s": ("<=", 3.2),        # >= 3x the reference throughput
    "first_step_s": ("<=", 20.0),
    "train_step_s": ("<=", 2.5),         # >= 2x the reference
    "peak_rss_mb": ("<", 4096.0),
    "size_ratio_binres": (">=", 20.0),   # binary .tflite <= 1/20 of its float twin
    "all_binary_convs_converted": ("==", True),
    "bars_first_step_s": ("<=", 20.0),         # BARS: benchmarks/bars.py (issue 17)
    "bars_peak_rss_mb": ("<=", 3000.0),
    "bars_ms_per_gmac_vs_bnas": ("<=", 1.0),   # BARS ms/GMAC <= the BNAS supernet's
}
PARTS = ("search", "bars", "train", "input", "export")
KEYS = ("search_step_s", "bars_search_step_s", "first_step_s", "peak_rss_mb", "train_step_s",
        "train_step_bars_s", "train_step_xnor_resnet18_s",
        "input_images_per_s", "input_first_pass_images_per_s", "train_images_per_s",
        "input_ratio", "tflite_binary_bytes", "tflite_float_bytes", "size_ratio",
        "bconv_ops", "binary_convs", "live_binary_convs", "latency_binary_ms",
        "latency_float_ms", "tflite_binary_bytes_binres", "tflite_float_bytes_binres",
        "size_ratio_binres", "bconv_ops_binres", "binary_convs_binres",
        "latency_binary_binres_ms", "bars_first_step_s", "bars_peak_rss_mb",
        "bars_gmac_per_step", "bars_ms_per_gmac", "gmac_per_step", "ms_per_gmac",
        "bars_ms_per_gmac_vs_bnas")  # the BARS ones: benchmarks/bars.py


@dataclasses.dataclass
class BenchConfig:
    """What to measure, at which sizes (defaults: the reference's shapes)."""

    parts: tuple = PARTS
    repeats: int = 5                 # timed repetitions (median reported)
    search_processes: int = 3        # fresh processes of the BNAS search figures (medians)
    warmup: int = 1                  # untimed repetitions after the first (tracing) call
    batch_size: int = 64
    image_size: int = 32
    search_cells: int = 8
    search_channels: int = 16
    conv_dtype: str = "auto"         # BNAS supernet binary convs: auto | float32 | bfloat16
    compare_float32: bool = True     # also time the float32 supernet when auto picks bf16
    bars_extra: dict = dataclasses.field(default_factory=dict)  # overrides of BARS defaults
    train_preset: str = "bnas-a"     # final network of the train-step / export figures
    train_genotype: str | None = None  # or a genotype (with train_cells/train_channels)
    train_cells: int | None = None
    train_channels: int | None = None
    data_dir: str | None = None      # image folder for the input pipeline
    input_max_examples: int | None = None
    input_batches: int = 100         # batches timed in the steady state
    latency_runs: int = 20
    export_samples: int = 8
    intra_op_threads: int = 0        # 0 = TensorFlow's default
    inter_op_threads: int = 0
    quick: bool = False

    def validate(self):
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown benchmark part(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(PARTS)}")
        for name in ("repeats", "search_processes", "batch_size", "image_size",
                     "search_channels", "input_batches", "latency_runs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.search_cells < 2:
            raise ValueError(f"search_cells must be >= 2, got {self.search_cells}")
        if "input" in self.parts:
            if not self.data_dir:
                raise ValueError("the input-pipeline benchmark needs an image folder "
                                 "(--bench_data_dir)")
            if not os.path.isdir(self.data_dir):
                raise FileNotFoundError(f"image folder not found: {self.data_dir}")
        return self


def quick_config(**overrides) -> BenchConfig:
    """Small shapes and few repetitions: a smoke run of every measurement."""
    values = dict(repeats=2, search_processes=1, warmup=0, batch_size=8, image_size=16,
                  search_cells=3, search_channels=4,
                  bars_extra={"base_channels": [4, 8, 16], "max_depth": 1,
                              "width_choices": [0.5, 1.0]},
                  train_preset=None, train_genotype="bnas_imagenet", train_cells=3,
                  train_channels=8, input_max_examples=256, input_batches=8,
                  latency_runs=2, export_samples=2, quick=True)
    values.update(overrides)
    return BenchConfig(**values)


# ----------------------------------------------------------------------------- timing

def median_time(fn, repeats, warmup=1):
    """(median seconds, all timed seconds) of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), [float(t) for t in times]


def _random_batch(batch_size, image_size, num_classes=10, seed=0):
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(batch_size,)).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def _keras_step(model, element):
    """A callable running one `model.make_train_function()` step on `element` and
    waiting for its results, plus the first call's duration (tracing included)."""
    import tensorflow as tf
    iterator = iter(tf.data.Dataset.from_tensors(element).repeat())
    train_function = model.make_train_function()

    def step():
        logs = train_function(iterator)
        return {k: float(np.asarray(v)) for k, v in logs.items()}

    start = time.perf_counter()
    logs = step()
    return step, time.perf_counter() - start, logs


def _clear():
    import tensorflow as tf
    tf.keras.backend.clear_session()
    gc.collect()


# ----------------------------------------------------------------------------- search

def bnas_search_config(config):
    from bnas_tf.search import SearchConfig
    return SearchConfig.create("bnas", cells=config.search_cells,
                               channels=config.search_channels, batch_size=config.batch_size)


def bars_search_config(config):
    from bnas_tf.search import SearchConfig
    return SearchConfig.create("bars", batch_size=config.batch_size, **config.bars_extra)


def build_search_model(method, search_config, image_size, num_classes=10, steps_per_epoch=100,
                       conv_dtype="auto"):
    """(net, compiled BilevelModel) exactly as `runner.run_search` builds them."""
    import tensorflow as tf
    from bnas_tf.search import runner
    from bnas_tf.search.engine import EngineConfig
    module = runner.get_method(method)
    engine = EngineConfig(conv_dtype=conv_dtype).resolve()
    tf.keras.utils.set_random_seed(search_config.seed)
    net = module.build_supernet(search_config, num_classes, image_size, engine)
    return net, module.build_model(net, search_config, steps_per_epoch, image_size, engine)


def search_step(method, search_config, config):
    """Median seconds of one bilevel search step (and the first, tracing, call)."""
    _, model = build_search_model(method, search_config, config.image_size,
                                  conv_dtype=config.conv_dtype)
    train, val = (_random_batch(search_config.batch_size, config.image_size, seed=s)
                  for s in (0, 1))
    step, first, logs = _keras_step(model, (train, val))
    median, times = median_time(step, config.repeats, config.warmup)
    _clear()
    return {"median_s": median, "times_s": times, "first_call_s": first,
            "loss_finite": bool(math.isfinite(logs.get("loss", float("nan"))))}


def child_search(args):
    """Body of the fresh process of `search_process` (prints one JSON line)."""
    started = time.time()
    import bnas_tf  # noqa: F401
    import tensorflow as tf
    child_threads(args)
    imported = time.time()
    from bnas_tf.search import SearchConfig
    search_config = SearchConfig.from_dict(args["search"])
    _, model = build_search_model("bnas", search_config, args["image_size"],
                                  conv_dtype=args["conv_dtype"])
    built = time.time()
    train, val = (_random_batch(search_config.batch_size, args["image_size"], seed=s)
                  for s in (0, 1))
    step, _, _ = _keras_step(model, (train, val))
    first_done = time.time()
    cpu_before = _cpu_seconds()
    times = median_time(step, args["repeats"], args["warmup"])[1]
    cpu_per_step = (_cpu_seconds() - cpu_before) / (args["repeats"] + args["warmup"])
    del tf
    print(json.dumps({"started": started, "imported": imported, "built": built,
                      "first_done": first_done, "step_times_s": times,
                      "cpu_s_per_step": cpu_per_step, "conv_dtype": net_dtype(model),
                      "process_start": _process_start_time()}), flush=True)


def _cpu_seconds():
    usage = os.times()
    return usage.user + usage.system


def net_dtype(model):
    """The BNAS supernet's resolved binary-conv dtype (None for other nets)."""
    return getattr(getattr(model, "net", None), "conv_dtype", None)


def _process_start_time():
    """Wall-clock time this process started (Linux /proc), else None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def search_process(config, conv_dtype=None, timeout=3600):
    """Launch a fresh Python process running the BNAS search step loop at the
    configured shape: the wall time from launch to the end of its first step (and its
    breakdown), the median of the timed steps after warm-up, the process CPU time
    per step, and the child's peak resident memory (MB) over the whole run."""
    args = {"search": bnas_search_config(config).to_dict(),
            "conv_dtype": conv_dtype or config.conv_dtype,
            "image_size": config.image_size, "repeats": config.repeats,
            "warmup": config.warmup}
    report, peak_rss_mb, launched = run_child("harness", "child_search", args, config, timeout)
    start = report["process_start"] or launched
    return {"first_step_s": report["first_done"] - launched,
            "first_step_from_process_start_s": report["first_done"] - start,
            "startup_and_imports_s": report["imported"] - launched,
            "build_s": report["built"] - report["imported"],
            "first_call_s": report["first_done"] - report["built"],
            "median_s": float(np.median(report["step_times_s"])),
            "times_s": report["step_times_s"],
            "cpu_s_per_step": report["cpu_s_per_step"],
            "conv_dtype": report["conv_dtype"],
            "peak_rss_mb": peak_rss_mb}


def run_child(module, function, args, config, timeout=3600):
    """Run ``benchmarks.<module>.<function>(args)`` in a fresh Python process, `args`
    given the thread settings of `config` (``intra``, ``inter``: `child_threads`);
    (its last stdout line as JSON, its peak resident memory in MB, the launch time).
    RuntimeError naming the child's error when it fails."""
    args = dict(args, intra=config.intra_op_threads, inter=config.inter_op_threads)
    # The peak RSS is the child's own VmHWM (/proc/self/status), printed last: wait4's
    # ru_maxrss keeps the parent's high-water mark across fork/vfork + exec, so a child
    # smaller than this process would report this process's peak.
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
            f"from benchmarks import {module}; {module}.{function}(json.loads(sys.argv[2])); "
            "from benchmarks import harness; harness.print_own_peak_rss()")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        launched = time.time()
        proc = subprocess.Popen([sys.executable, "-c", code, REPO, json.dumps(args)],
                                stdout=out, stderr=err, env=env, text=True)
        status, usage = _wait(proc, timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if status != 0:
        raise RuntimeError(f"the {function} child failed (exit status {status}): "
                           f"{_error_line(stderr)}")
    lines = stdout.strip().splitlines()
    own = json.loads(lines[-1]) if lines else {}
    if isinstance(own, dict) and PEAK_KEY in own:
        peak_rss_mb, lines = own[PEAK_KEY] / 1024.0, lines[:-1]
    else:  # no /proc (not Linux): the rusage figure, an upper bound
        peak_rss_mb = usage.ru_maxrss / 1024.0  # Linux: ru_maxrss in KB
    return json.loads(lines[-1]), peak_rss_mb, launched


PEAK_KEY = "peak_rss_kb_of_this_process"


def print_own_peak_rss():
    """In a `run_child` process, last: this process's peak RSS (VmHWM, KB) as JSON."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return
    print(json.dumps({PEAK_KEY: kb}), flush=True)


def child_probe(args):
    """A `run_child` body for tests: touch ``args['mb']`` MB, print a JSON line."""
    import numpy as np
    block = np.ones(int(args["mb"]) * 2 ** 20 // 8)
    print(json.dumps({"sum": float(block.sum())}), flush=True)


def child_threads(args):
    """In a `run_child` process: TensorFlow's thread pools as the parent's config says."""
    from bnas_tf.search import engine
    engine.configure_threads(args.get("intra", 0), args.get("inter", 0))


_MEDIAN_KEYS = ("first_step_s", "first_step_from_process_start_s", "startup_and_imports_s",
                "build_s", "first_call_s", "median_s", "cpu_s_per_step")


def search_processes(config, conv_dtype=None, processes=None):
    """`search_process` run `processes` times (default `config.search_processes`), one
    after the other: medians of its times over the processes (the first step is one
    sample per process; a shared machine's load moves it by seconds), the largest
    peak RSS, every timed step in ``times_s`` and each process's result in ``runs``."""
    runs = [search_process(config, conv_dtype)
            for _ in range(processes or config.search_processes)]
    out = {key: float(np.median([r[key] for r in runs])) for key in _MEDIAN_KEYS}
    out.update(peak_rss_mb=max(r["peak_rss_mb"] for r in runs), conv_dtype=runs[0]["conv_dtype"],
               times_s=[t for r in runs for t in r["times_s"]], processes=len(runs), runs=runs)
    return out


def _error_line(stderr):
    """The last 'SomethingError: message' line of a traceback (else the last line)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return line
    return lines[-1] if lines else "no output"


def _wait(proc, timeout):
    """(exit status, rusage of exactly this child) via os.wait4; kills it on timeout."""
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
            return proc.returncode, usage
        if time.time() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise RuntimeError(f"the first-step child did not finish within {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- final net

def final_spec(config, residual=None):
    from bnas_tf.models import presets
    overrides = {"residual": residual} if residual else {}
    return presets.resolve(preset=config.train_preset, genotype=config.train_genotype,
                           cells=config.train_cells, channels=config.train_channels,
                           **overrides)


# ----------------------------------------------------------------------------- input

def input_pipeline(config):
    """Images/s of the training pipeline: the first pass (decode + augment, fills the
    cache) and the steady state afterwards (cache + augment + batch)."""
    from bnas_tf import data
    data_config = data.DataConfig(dataset="folder", data_dir=config.data_dir,
                                  batch_size=config.batch_size,
                                  max_examples=config.input_max_examples, seed=0)
    ds = data.load(data_config, "train", training=True)
    start, count = time.perf_counter(), 0
    for _, labels in ds:
        count += int(labels.shape[0])
    first = time.perf_counter() - start
    steady_batches, steady_images = 0, 0
    iterator = iter(ds.repeat())
    next(iterator)  # the second epoch's first batch: shuffle buffer filled
    start = time.perf_counter()
    while steady_batches < config.input_batches:
        _, labels = next(iterator)
        steady_batches += 1
        steady_images += int(labels.shape[0])
    steady = time.perf_counter() - start
    return {"first_pass_images_per_s": count / first, "first_pass_images": count,
            "first_pass_s": first, "images_per_s": steady_images / steady,
            "steady_images": steady_images}


# ----------------------------------------------------------------------------- export

def export_sizes(config, residual=None):
    """Binary .tflite (LCE) and float twin of the final network: bytes, op counts,
    single-image latency."""
    import tensorflow as tf
    from bnas_tf import export, model_dir, models
    spec = final_spec(config, residual)
    tf.keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="bnas_bench_") as directory:
        model = export.randomize_batchnorm(models.build(spec, 10, config.image_size))
        model_dir.write_spec(directory, spec, 10, config.image_size)
        model.save_weights(model_dir.path(directory, model_dir.WEIGHTS))
        binary = export.export(model, samples=config.export_samples,
                               latency_runs=config.latency_runs)
        twin = export.float_twin(directory)
        floating = export.export(twin, converter="tflite", samples=0,
                                 latency_runs=config.latency_runs)
    _clear()
    return {"binary_bytes": binary.bytes, "float_bytes": floating.bytes,
            "ratio": floating.bytes / binary.bytes, "bconv_ops": binary.bconv_ops,
            "float_conv_ops": binary.float_conv_ops, "binary_convs": binary.binary_convs,
            "live_binary_convs": binary.live_binary_convs, "agreement": binary.agreement,
            "latency_binary_ms": binary.latency_ms, "latency_float_ms": floating.latency_ms,
            "op_counts": binary.op_counts}


# ----------------------------------------------------------------------------- all

def environment(config):
    import tensorflow as tf
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"tensorflow": tf.__version__, "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def machine_speed(repeats=5, warmup_s=0.5):
    """This machine's speed right now, to compare figures across runs on a shared
    machine: float32 matmul GFLOP/s (1024^3, compute-bound) and elementwise add GB/s
    (16M floats, memory-bound), medians of `repeats` runs after `warmup_s` seconds of
    untimed ones (the first ~20 matmuls of a process run at half speed here)."""
    import tensorflow as tf

    def rate(fn, args, amount):
        start = time.perf_counter()
        while time.perf_counter() - start < warmup_s:  # traces, then warms up
            fn(*args).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*args).numpy()
            times.append(time.perf_counter() - start)
        return amount / float(np.median(times)) / 1e9

    n, m = 1024, 1 << 24
    a = tf.random.stateless_normal([n, n], seed=[0, 1])
    x = tf.random.stateless_normal([m], seed=[0, 2])
    matmul = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)))
    add = tf.function(lambda x: tf.reduce_sum(x + 1.0))
    return {"matmul_gflops": rate(matmul, [a], 2.0 * n ** 3),
            "elementwise_gbps": rate(add, [x], 2.0 * 4 * m)}


def _report_search(progress, r):
    runs = f", medians of {r['processes']} processes" if r.get("processes", 1) > 1 else ""
    progress(f"[benchmark] BNAS search step ({r['conv_dtype']} convs{runs}) "
             f"{r['median_s']:.3f} s "
             f"({r['cpu_s_per_step']:.2f} CPU s), first step {r['first_step_s']:.1f} s from "
             f"launch (imports {r['startup_and_imports_s']:.1f} s, build {r['build_s']:.1f} s, "
             f"first call {r['first_call_s']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB")


def _report_step(progress, label, r):
    progress(f"[benchmark] {label}: {r['median_s']:.3f} s (first call {r['first_call_s']:.1f} s)")


def _met(value, comparison, bound):
    if value is None:
        return None
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound,
            "==": value == bound}[comparison]


def run(config: BenchConfig, progress=print) -> dict:
    """Run the configured measurements; returns the result dict (see module doc)."""
    config.validate()
    import bnas_tf  # noqa: F401
    from bnas_tf.search import engine
    engine.configure_threads(config.intra_op_threads, config.inter_op_threads)
    from bnas_tf import files
    out = {"quick": config.quick, "config": dataclasses.asdict(config),
           "environment": environment(config), "reference": dict(REFERENCE)}
    details = out["details"] = {}
    out["environment"]["machine_speed"] = {"start": machine_speed()}

    if "search" in config.parts:
        progress(f"[benchmark] BNAS search step, first step, peak RSS "
                 f"({config.search_processes} fresh process(es)) ...")
        r = details["search"] = search_processes(config)
        out["search_step_s"], out["first_step_s"] = r["median_s"], r["first_step_s"]
        out["peak_rss_mb"] = r["peak_rss_mb"]
        out["search_conv_dtype"] = r["conv_dtype"]
        _report_search(progress, r)
        if config.compare_float32 and r["conv_dtype"] not in ("float32", None) and not config.quick:
            progress("[benchmark] BNAS search step with float32 binary convs ...")
            r = details["search_float32"] = search_processes(config, "float32", processes=1)
            out["search_step_float32_s"] = r["median_s"]
            _report_search(progress, r)
    if "bars" in config.parts:  # benchmarks/bars.py
        from benchmarks import bars
        progress(f"[benchmark] BARS search step, first step, peak RSS, GMAC "
                 f"({config.search_processes} fresh process(es)) ...")
        figures, details["bars"] = bars.measure(config, out.get("search_step_s"), progress)
        out.update(figures)
    if "train" in config.parts:
        from benchmarks import train
        details["train"] = train.measure(config, progress)
        train.record(out, details["train"], config.batch_size)
    if "input" in config.parts:
        progress("[benchmark] input pipeline ...")
        r = details["input"] = input_pipeline(config)
        out["input_images_per_s"] = r["images_per_s"]
        out["input_first_pass_images_per_s"] = r["first_pass_images_per_s"]
        if "train_images_per_s" in out:
            out["input_ratio"] = r["images_per_s"] / out["train_images_per_s"]
        progress(f"[benchmark] input: {r['images_per_s']:.0f} images/s steady, "
                 f"{r['first_pass_images_per_s']:.0f} images/s first pass")
    if "export" in config.parts:
        for residual, suffix in ((None, ""), ("binary", "_binres")):
            progress(f"[benchmark] LCE export{' (residual=binary)' if residual else ''} ...")
            r = details[f"export{suffix}"] = export_sizes(config, residual)
            out[f"tflite_binary_bytes{suffix}"] = r["binary_bytes"]
            out[f"tflite_float_bytes{suffix}"] = r["float_bytes"]
            out[f"size_ratio{suffix}"] = r["ratio"]
            out[f"bconv_ops{suffix}"] = r["bconv_ops"]
            out[f"binary_convs{suffix}"] = r["binary_convs"]
            out[f"latency_binary{suffix}_ms"] = r["latency_binary_ms"]
            if not residual:
                out["live_binary_convs"] = r["live_binary_convs"]
                out["latency_float_ms"] = r["latency_float_ms"]
            progress(f"[benchmark] export{suffix}: {r['binary_bytes']:,} B binary, "
                     f"{r['float_bytes']:,} B float ({r['ratio']:.1f}x), "
                     f"{r['bconv_ops']} LceBconv2d")
        out["all_binary_convs_converted"] = all(
            details[k]["bconv_ops"] == details[k]["live_binary_convs"]
            for k in ("export", "export_binres"))
    out["environment"]["load_average_end"] = list(os.getloadavg()) \
        if hasattr(os, "getloadavg") else None
    out["environment"]["machine_speed"]["end"] = machine_speed()
    out["speedup"] = {}
    for key in ("search_step_s", "first_step_s", "train_step_s"):
        if out.get(key):
            out["speedup"][key] = REFERENCE[key] / out[key]
    out["targets"] = {k: {"value": out.get(k), "target": f"{c} {b}",
                          "met": _met(out.get(k), c, b)}
                      for k, (c, b) in TARGETS.items() if k in out}
    return files.plain(out)


def write_json(path, result):
    """Write the result atomically (a failed write keeps an existing file)."""
    from bnas_tf import files
    return files.write_json(path, result, sort_keys=True)


ROWS = (
    ("search_step_s", "BNAS search step (s)", "{:.3f}"),
    ("search_step_float32_s", "BNAS search step, float32 convs (s)", "{:.3f}"),
    ("bars_search_step_s", "BARS search step (s)", "{:.3f}"),
    ("bars_first_step_s", "BARS first search step from launch (s)", "{:.1f}"),
    ("bars_peak_rss_mb", "peak RSS of the BARS search (MB)", "{:.0f}"),
    ("bars_gmac_per_step", "BARS supernet GMAC per bilevel step", "{:.1f}"),
    ("gmac_per_step", "BNAS supernet GMAC per bilevel step", "{:.1f}"),
    ("bars_ms_per_gmac", "BARS step ms per GMAC", "{:.2f}"),
    ("ms_per_gmac", "BNAS step ms per GMAC", "{:.2f}"),
    ("bars_ms_per_gmac_vs_bnas", "BARS / BNAS ms per GMAC", "{:.2f}"),
    ("first_step_s", "first search step from process start (s)", "{:.1f}"),
    ("peak_rss_mb", "peak RSS of the search (MB)", "{:.0f}"),
    ("train_step_s", "BNAS-A train step (s)", "{:.3f}"),
    ("train_step_float32_s", "BNAS-A train step, float32 convs (s)", "{:.3f}"),
    ("train_step_bars_s", "BARS network train step (s)", "{:.3f}"),
    ("train_step_xnor_resnet18_s", "XNOR ResNet-18 train step (s)", "{:.3f}"),
    ("train_images_per_s", "train step consumes (images/s)", "{:.1f}"),
    ("input_images_per_s", "input pipeline, steady (images/s)", "{:.0f}"),
    ("input_first_pass_images_per_s", "input pipeline, first pass (images/s)", "{:.0f}"),
    ("input_ratio", "input / consumption", "{:.1f}x"),
    ("tflite_binary_bytes", "binary .tflite (bytes)", "{:,}"),
    ("tflite_float_bytes", "float twin .tflite (bytes)", "{:,}"),
    ("size_ratio", "float / binary size", "{:.2f}x"),
    ("tflite_binary_bytes_binres", "binary .tflite, residual=binary (bytes)", "{:,}"),
    ("tflite_float_bytes_binres", "float twin, residual=binary (bytes)", "{:,}"),
    ("size_ratio_binres", "float / binary size, residual=binary", "{:.2f}x"),
    ("bconv_ops", "LceBconv2d ops", "{}"),
    ("binary_convs", "binary convs (Keras)", "{}"),
    ("live_binary_convs", "binary convs reaching the output", "{}"),
    ("latency_binary_ms", "latency binary, 1 image (ms)", "{:.2f}"),
    ("latency_float_ms", "latency float twin, 1 image (ms)", "{:.2f}"),
    ("latency_binary_binres_ms", "latency binary residual=binary (ms)", "{:.2f}"),
)


def format_table(result) -> str:
    """A readable table of the figures, with reference values and targets."""
    lines = [f"{'figure':<44} {'value':>14} {'reference':>10} {'target':>10}  met",
             "-" * 86]
    if result.get("quick"):
        lines.insert(0, "QUICK shapes: a smoke run. The reference column, the speed-ups and "
                        "the targets are for the full shapes and say nothing here.")
    targets = result.get("targets", {})
    for key, label, fmt in ROWS:
        if result.get(key) is None:
            continue
        ref = result.get("reference", {}).get(key)
        target = targets.get(key, {})
        met = target.get("met")
        lines.append(f"{label:<44} {fmt.format(result[key]):>14} "
                     f"{'' if ref is None else ref:>10} {target.get('target', ''):>10}  "
                     f"{'' if met is None else ('yes' if met else 'NO')}")
    for key, factor in result.get("speedup", {}).items():
        lines.append(f"speed-up vs reference, {key:<21} {factor:>14.2f}x")
    if "all_binary_convs_converted" in result:
        lines.append(f"every live binary conv is LceBconv2d: "
                     f"{'yes' if result['all_binary_convs_converted'] else 'NO'}")
    env = result.get("environment", {})
    lines.append(f"TensorFlow {env.get('tensorflow')}, {env.get('cpu')} ({env.get('cpu_count')} "
                 f"CPUs), threads intra {env.get('intra_op_threads')} / inter "
                 f"{env.get('inter_op_threads')}{', QUICK shapes' if result.get('quick') else ''}")
    speed = env.get("machine_speed") or {}
    if speed:
        def figures(key):
            return " / ".join(f"{speed[when][key]:.1f}" for when in ("start", "end")
                              if when in speed)
        lines.append(f"machine speed (start / end): float32 matmul GFLOP/s "
                     f"{figures('matmul_gflops')}, elementwise GB/s "
                     f"{figures('elementwise_gbps')}")
    return "\n".join(lines)
