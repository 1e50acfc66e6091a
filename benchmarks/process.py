"""Fresh processes and timing: `run_child` runs a measurement in a new Python process
and reads its JSON line and its own peak RSS; `median_time`, `keras_step` and the
helpers every timed part shares (random constant batches, CPU seconds, clearing
Keras' session)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.config import REPO


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


def random_batch(batch_size, image_size, num_classes=10, seed=0):
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(batch_size,)).astype(np.int32)
    return tf.constant(x), tf.constant(y)


def keras_step(model, element):
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


def clear():
    import tensorflow as tf
    tf.keras.backend.clear_session()
    gc.collect()


def cpu_seconds():
    usage = os.times()
    return usage.user + usage.system


def process_start_time():
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
            "from benchmarks import process; process.print_own_peak_rss()")
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
                           f"{error_line(stderr)}")
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


def error_line(stderr):
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
