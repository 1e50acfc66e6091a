"""Train-step figures of final networks, each compiled as `training.train` compiles
it (`training.build_compiled`: its recipe's optimizer, weight decay, drop-path and
binary-conv variant), on a constant random batch.

Networks (`NETWORKS`), batch `config.batch_size` (64), 32x32 CIFAR images:

* ``bnas-a``: BNAS-A, 20 cells x 36 channels (the reference's train step), recipe
  ``cifar``;
* ``bars``: a BARS final network. BARS released no searched genotype, so the
  benchmark uses ``models.bars.random_genotype(seed=0)`` (the search space's defaults:
  3 stages at 48/96/192 base channels, depth <= 3), recipe ``bars`` (Adam, auxiliary
  tower);
* ``xnor-resnet18``: the XNOR ResNet-18 baseline preset, recipe ``cifar``.

``--quick`` shrinks them (3 BNAS cells x 8 channels, BARS 4/8/16 channels depth <= 1,
ResNet-18 at 1/8 width is not a preset: the quick run times ``xnor-resnet18`` at 16 px).

`train_step` measures in this process; `train_process` in a fresh one (what the
reference comparison interleaves, benchmarks/reference.py).
"""
from __future__ import annotations

import math
import time

from benchmarks import process
from benchmarks.config import BenchConfig, final_spec

NETWORKS = ("bnas-a", "bars", "xnor-resnet18")
RECIPES = {"bnas-a": "cifar", "bars": "bars", "xnor-resnet18": "cifar"}


def network_spec(config, network):
    """The spec of benchmark network `network` at the config's shapes."""
    from bnas_tf.models import bars, presets
    if network == "bnas-a":
        return final_spec(config)
    if network == "bars":
        extra = ({"base_channels": (4, 8, 16), "max_depth": 1} if config.quick else {})
        return {"family": "bars", "name": "bars-random-0",
                "genotype": bars.random_genotype(seed=0, **extra).to_dict()}
    if network == "xnor-resnet18":
        return presets.resolve(preset="xnor-resnet18")
    raise ValueError(f"unknown benchmark network {network!r}; choose from {', '.join(NETWORKS)}")


def image_size(config, network):
    return 16 if config.quick and network == "xnor-resnet18" else config.image_size


def train_step(config, network="bnas-a", conv_dtype=None):
    """Median seconds of one training step of `network` in this process (first call,
    CPU seconds per step, parameters, the resolved binary-conv dtype)."""
    import tensorflow as tf
    from bnas_tf import fast_binary, recipes, training
    from bnas_tf.models import common
    recipe = recipes.recipe(RECIPES[network], batch_size=config.batch_size,
                            conv_dtype=conv_dtype or config.conv_dtype)
    size = image_size(config, network)
    tf.keras.utils.set_random_seed(0)
    model, _ = training.build_compiled(network_spec(config, network), 10, size, recipe,
                                       steps_per_epoch=100)
    common.set_drop_path(model, recipe.drop_path)
    x, y = process.random_batch(config.batch_size, size)
    element = (x, (y, y)) if recipe.auxiliary else (x, y)
    step, first, logs = process.keras_step(model, element)
    cpu_before = process.cpu_seconds()
    median, times = process.median_time(step, config.repeats, config.warmup)
    cpu_per_step = (process.cpu_seconds() - cpu_before) / (config.repeats + config.warmup)
    params = int(model.count_params())
    dtype = "bfloat16" if fast_binary.uses_fast_convs(model) else "float32"
    process.clear()
    return {"median_s": median, "times_s": times, "first_call_s": first, "params": params,
            "cpu_s_per_step": cpu_per_step, "network": network, "conv_dtype": dtype,
            "loss_finite": bool(math.isfinite(logs.get("loss", float("nan"))))}


def child_train(args):
    """Body of the fresh process of `train_process` (prints one JSON line)."""
    started = time.time()
    import json
    import bnas_tf  # noqa: F401
    process.child_threads(args)
    config = BenchConfig(**args["config"])
    r = train_step(config, args["network"], args["conv_dtype"])
    print(json.dumps({**r, "started": started}), flush=True)


def train_process(config, network="bnas-a", conv_dtype=None, timeout=3600):
    """`train_step` in a fresh Python process (plus its peak RSS, MB)."""
    import dataclasses
    fields = dataclasses.asdict(config)
    fields["parts"] = list(fields["parts"])
    args = {"config": fields, "network": network,
            "conv_dtype": conv_dtype or config.conv_dtype}
    report, peak_rss_mb, _ = process.run_child("train", "child_train", args, config, timeout)
    report["peak_rss_mb"] = peak_rss_mb
    return report


def measure(config, progress=print):
    """{network: train_step result} for every benchmark network, in this process,
    with the float32 step of BNAS-A too when the variant resolved to bfloat16."""
    out = {}
    for network in NETWORKS:
        progress(f"[benchmark] {network} train step ...")
        r = out[network] = train_step(config, network)
        progress(f"[benchmark] {network} train step ({r['conv_dtype']} convs): "
                 f"{r['median_s']:.3f} s (first call {r['first_call_s']:.1f} s)")
    if out["bnas-a"]["conv_dtype"] != "float32" and config.compare_float32:
        r = out["bnas-a_float32"] = train_step(config, "bnas-a", "float32")
        progress(f"[benchmark] bnas-a train step (float32 convs): {r['median_s']:.3f} s")
    return out


def record(out, results, batch_size):
    """The top-level figures of `measure`'s results into the benchmark's dict."""
    out["train_step_s"] = results["bnas-a"]["median_s"]
    out["train_images_per_s"] = batch_size / out["train_step_s"]
    out["train_conv_dtype"] = results["bnas-a"]["conv_dtype"]
    out["train_step_bars_s"] = results["bars"]["median_s"]
    out["train_step_xnor_resnet18_s"] = results["xnor-resnet18"]["median_s"]
    if "bnas-a_float32" in results:
        out["train_step_float32_s"] = results["bnas-a_float32"]["median_s"]
    return out
