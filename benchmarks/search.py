"""The BNAS search figures: one bilevel step of the supernet in fresh processes
(``search_step_s``, ``first_step_s`` from launch, ``peak_rss_mb``; harness.py's
docstring), and the search configurations and models the BARS figures share
(benchmarks/bars.py)."""
from __future__ import annotations

import json
import math
import time

import numpy as np

from benchmarks import process


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
    train, val = (process.random_batch(search_config.batch_size, config.image_size, seed=s)
                  for s in (0, 1))
    step, first, logs = process.keras_step(model, (train, val))
    median, times = process.median_time(step, config.repeats, config.warmup)
    process.clear()
    return {"median_s": median, "times_s": times, "first_call_s": first,
            "loss_finite": bool(math.isfinite(logs.get("loss", float("nan"))))}


def child_search(args):
    """Body of the fresh process of `search_process` (prints one JSON line)."""
    started = time.time()
    import bnas_tf  # noqa: F401
    import tensorflow as tf
    process.child_threads(args)
    imported = time.time()
    from bnas_tf.search import SearchConfig
    search_config = SearchConfig.from_dict(args["search"])
    _, model = build_search_model("bnas", search_config, args["image_size"],
                                  conv_dtype=args["conv_dtype"])
    built = time.time()
    train, val = (process.random_batch(search_config.batch_size, args["image_size"], seed=s)
                  for s in (0, 1))
    step, _, _ = process.keras_step(model, (train, val))
    first_done = time.time()
    cpu_before = process.cpu_seconds()
    times = process.median_time(step, args["repeats"], args["warmup"])[1]
    cpu_per_step = (process.cpu_seconds() - cpu_before) / (args["repeats"] + args["warmup"])
    del tf
    print(json.dumps({"started": started, "imported": imported, "built": built,
                      "first_done": first_done, "step_times_s": times,
                      "cpu_s_per_step": cpu_per_step, "conv_dtype": net_dtype(model),
                      "process_start": process.process_start_time()}), flush=True)


def net_dtype(model):
    """The BNAS supernet's resolved binary-conv dtype (None for other nets)."""
    return getattr(getattr(model, "net", None), "conv_dtype", None)


def search_process(config, conv_dtype=None, timeout=3600):
    """Launch a fresh Python process running the BNAS search step loop at the
    configured shape: the wall time from launch to the end of its first step (and its
    breakdown), the median of the timed steps after warm-up, the process CPU time
    per step, and the child's peak resident memory (MB) over the whole run."""
    args = {"search": bnas_search_config(config).to_dict(),
            "conv_dtype": conv_dtype or config.conv_dtype,
            "image_size": config.image_size, "repeats": config.repeats,
            "warmup": config.warmup}
    report, peak_rss_mb, launched = process.run_child("search", "child_search", args, config, timeout)
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


def report(progress, r):
    runs = f", medians of {r['processes']} processes" if r.get("processes", 1) > 1 else ""
    progress(f"[benchmark] BNAS search step ({r['conv_dtype']} convs{runs}) "
             f"{r['median_s']:.3f} s "
             f"({r['cpu_s_per_step']:.2f} CPU s), first step {r['first_step_s']:.1f} s from "
             f"launch (imports {r['startup_and_imports_s']:.1f} s, build {r['build_s']:.1f} s, "
             f"first call {r['first_call_s']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB")
