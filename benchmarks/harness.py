"""Speed, memory and size figures of the library on this machine.

Every timing is the median of several repetitions after warm-up. The figures:

* ``search_step_s``: one full bilevel step (alpha step on a validation batch + weight
  step on a training batch: `bilevel.BilevelModel.train_step` inside Keras'
  ``make_train_function``, as ``model.fit`` in the runner runs it) of the BNAS
  supernet, built by the method's own ``build_supernet``/``build`` (default: 8 cells
  x 16 channels, batch 64, 32x32), measured in a fresh Python process that runs the
  search step loop. ``first_step_s``: wall time from launching that process to the
  end of its first step (interpreter start, imports, building, tracing, the step);
  ``peak_rss_mb``: its peak resident memory (the child's own VmHWM). The BARS
  figures (``bars_search_step_s`` and the rest) are measured the same way
  (benchmarks/bars.py). Batches are constant tensors: the input pipeline is measured
  on its own.
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

`run(config)` measures the parts `config` names and returns one dict (its keys:
`config.KEYS`); `write_json` writes it atomically and `table.format_table` renders
it. One module per part: search.py, bars.py, train.py, inputs.py, export.py; below
them process.py (fresh processes, timing), machine.py and config.py (what to
measure, the reference's figures, the targets).
"""
from __future__ import annotations

import dataclasses
import os

from benchmarks import export, inputs, machine, search
from benchmarks.config import REFERENCE, TARGETS, BenchConfig


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
           "environment": machine.environment(config), "reference": dict(REFERENCE)}
    details = out["details"] = {}
    out["environment"]["machine_speed"] = {"start": machine.machine_speed()}

    if "search" in config.parts:
        progress(f"[benchmark] BNAS search step, first step, peak RSS "
                 f"({config.search_processes} fresh process(es)) ...")
        r = details["search"] = search.search_processes(config)
        out["search_step_s"], out["first_step_s"] = r["median_s"], r["first_step_s"]
        out["peak_rss_mb"] = r["peak_rss_mb"]
        out["search_conv_dtype"] = r["conv_dtype"]
        search.report(progress, r)
        if config.compare_float32 and r["conv_dtype"] not in ("float32", None) and not config.quick:
            progress("[benchmark] BNAS search step with float32 binary convs ...")
            r = details["search_float32"] = search.search_processes(config, "float32", processes=1)
            out["search_step_float32_s"] = r["median_s"]
            search.report(progress, r)
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
        r = details["input"] = inputs.input_pipeline(config)
        out["input_images_per_s"] = r["images_per_s"]
        out["input_first_pass_images_per_s"] = r["first_pass_images_per_s"]
        if "train_images_per_s" in out:
            out["input_ratio"] = r["images_per_s"] / out["train_images_per_s"]
        progress(f"[benchmark] input: {r['images_per_s']:.0f} images/s steady, "
                 f"{r['first_pass_images_per_s']:.0f} images/s first pass")
    if "export" in config.parts:
        for residual, suffix in ((None, ""), ("binary", "_binres")):
            progress(f"[benchmark] LCE export{' (residual=binary)' if residual else ''} ...")
            r = details[f"export{suffix}"] = export.export_sizes(config, residual)
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
    out["environment"]["machine_speed"]["end"] = machine.machine_speed()
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
