"""BARS search figures (issue 17), measured as the BNAS search figures are: fresh
processes, medians, comparable per multiply-accumulate with the BNAS supernet.

* ``bars_search_step_s``: one BARS bilevel step (`BilevelModel.train_step` in Keras'
  train function) at ``SearchConfig.create("bars")`` (3 stages 48/96/192, depth 3,
  4 widths, batch 64, 32x32), built by the method's ``build_supernet``/``build_model``
  with the default engine (fused cell, ``conv_dtype`` auto); median over fresh
  processes of each process's median step.
* ``bars_first_step_s``: launch of such a process to the end of its first step;
  ``bars_peak_rss_mb``: its peak resident memory (largest over the processes).
* ``gmac_per_step`` / ``bars_gmac_per_step``: multiply-accumulates of one bilevel
  step of the BNAS / BARS supernet, in 1e9: ``STEP_PASSES`` x the forward MACs of
  the supernet on the batch. Forward MACs are counted on the traced forward graph
  of the *reference* cell (every Conv2D, DepthwiseConv2dNative and MatMul: output
  elements x reduction length), so the figure does not depend on the
  implementation measured; every candidate op of every edge counts (the supernet
  computes them all; width masks do not skip work).
* ``ms_per_gmac`` / ``bars_ms_per_gmac``: step milliseconds per GMAC of that step;
  ``bars_ms_per_gmac_vs_bnas``: their ratio (target <= 1: BARS no slower per
  operation than the BNAS supernet in the same run).
"""
from __future__ import annotations

import json
import time

import numpy as np

from benchmarks import process, search

# forward-MAC equivalents of one bilevel step: the alpha pass (forward + the input
# gradients it backpropagates = 2) and the weight pass (forward + input and filter
# gradients = 3)
STEP_PASSES = 5
# (their targets and table rows are in config.TARGETS and table.ROWS)


def graph_macs(graph) -> int:
    """Multiply-accumulates of the Conv2D, DepthwiseConv2dNative and MatMul ops of a
    graph with static shapes: output elements x reduction length."""
    total = 0
    for op in graph.get_operations():
        if op.type not in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
            continue
        out = op.outputs[0].shape
        kernel = op.inputs[1].shape
        if op.type == "Conv2D":
            total += out.num_elements() * int(np.prod(kernel[:3]))
        elif op.type == "DepthwiseConv2dNative":
            total += out.num_elements() * int(np.prod(kernel[:2]))
        else:
            inner = kernel[1] if op.get_attr("transpose_b") else kernel[0]
            total += out.num_elements() * int(inner)
    return int(total)


def forward_macs(net, image_size, batch_size) -> int:
    """Forward MACs of `net` (training mode) on a [batch, size, size, 3] batch."""
    import tensorflow as tf
    spec = tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32)
    concrete = tf.function(lambda x: net(x, training=True)).get_concrete_function(spec)
    return graph_macs(concrete.graph)


def gmac_per_step(method, search_config, image_size, num_classes=10):
    """GMAC of one bilevel step of `method`'s supernet (see the module docstring),
    counted on the reference cell."""
    import tensorflow as tf
    from bnas_tf.search import runner
    from bnas_tf.search.engine import EngineConfig
    engine = EngineConfig(cell="reference", conv_dtype="float32").resolve()
    net = runner.get_method(method).build_supernet(search_config, num_classes, image_size,
                                                   engine)
    net(tf.zeros([1, image_size, image_size, 3]), training=False)
    macs = forward_macs(net, image_size, search_config.batch_size)
    process.clear()
    return STEP_PASSES * macs / 1e9


def child(args):
    """Body of the fresh process of `bars_process` (prints one JSON line)."""
    import bnas_tf  # noqa: F401
    from bnas_tf.search import SearchConfig
    process.child_threads(args)
    search_config = SearchConfig.from_dict(args["search"])
    _, model = search.build_search_model("bars", search_config, args["image_size"],
                                          conv_dtype=args["conv_dtype"])
    train, val = (process.random_batch(search_config.batch_size, args["image_size"], seed=s)
                  for s in (0, 1))
    step, first_call, _ = process.keras_step(model, (train, val))
    first_done = time.time()
    times = process.median_time(step, args["repeats"], args["warmup"])[1]
    print(json.dumps({"first_done": first_done, "first_call_s": first_call,
                      "step_times_s": times, "conv_dtype": model.net.conv_dtype}), flush=True)


def bars_process(config, timeout=3600):
    """One fresh process running the BARS step loop: first step from launch, median
    step, peak RSS (MB)."""
    args = {"search": search.bars_search_config(config).to_dict(),
            "conv_dtype": config.conv_dtype, "image_size": config.image_size,
            "repeats": config.repeats, "warmup": config.warmup}
    report, peak_rss_mb, launched = process.run_child("bars", "child", args, config, timeout)
    return {"first_step_s": report["first_done"] - launched,
            "first_call_s": report["first_call_s"],
            "median_s": float(np.median(report["step_times_s"])),
            "times_s": report["step_times_s"], "conv_dtype": report["conv_dtype"],
            "peak_rss_mb": peak_rss_mb}


def measure(config, bnas_step_s=None, progress=print):
    """The BARS figures (`KEYS` and ``bars_search_step_s``) and their details; with
    `bnas_step_s` (the BNAS search step of the same run) also the BNAS ms per GMAC
    and the ratio."""
    runs = [bars_process(config) for _ in range(config.search_processes)]
    out = {"bars_search_step_s": float(np.median([r["median_s"] for r in runs])),
           "bars_first_step_s": float(np.median([r["first_step_s"] for r in runs])),
           "bars_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "bars_gmac_per_step": gmac_per_step("bars", search.bars_search_config(config),
                                               config.image_size)}
    out["bars_ms_per_gmac"] = 1000.0 * out["bars_search_step_s"] / out["bars_gmac_per_step"]
    if bnas_step_s:
        out["gmac_per_step"] = gmac_per_step("bnas", search.bnas_search_config(config),
                                             config.image_size)
        out["ms_per_gmac"] = 1000.0 * bnas_step_s / out["gmac_per_step"]
        out["bars_ms_per_gmac_vs_bnas"] = out["bars_ms_per_gmac"] / out["ms_per_gmac"]
    progress(f"[benchmark] BARS search step ({runs[0]['conv_dtype']} convs) "
             f"{out['bars_search_step_s']:.3f} s, first step {out['bars_first_step_s']:.1f} s "
             f"from launch, peak RSS {out['bars_peak_rss_mb']:.0f} MB, "
             f"{out['bars_gmac_per_step']:.1f} GMAC per step "
             f"({out['bars_ms_per_gmac']:.2f} ms/GMAC"
             + (f"; BNAS {out['ms_per_gmac']:.2f})" if "ms_per_gmac" in out else ")"))
    return out, {"processes": len(runs), "runs": runs}
