"""What machine a benchmark ran on (TensorFlow, CPU, threads, load) and how fast it
was right then (`machine_speed`): figures from a shared machine are compared by these."""
from __future__ import annotations

import os
import platform
import time

import numpy as np


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
