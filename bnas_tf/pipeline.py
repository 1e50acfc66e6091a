"""The main job: search -> genotype -> train the derived network -> export, in one folder.

```
DIR/search/        tools/search.py output (genotype.json, logs/, ckpt/, ...)
DIR/train/         tools/train.py output (metrics.json, weights, SavedModel, logs/, ckpt/)
DIR/model.tflite   the binary network through Larq Compute Engine
DIR/pipeline.json  a summary of the three stages
```
Each stage resumes on its own, so rerunning the same command continues where it
stopped; a finished search or training is not redone.
"""
from __future__ import annotations

import os

import bnas_tf  # noqa: F401

from bnas_tf import export, genotypes, model_dir, training
from bnas_tf.models import checks, presets
from bnas_tf.search import runner

SUMMARY = "pipeline.json"
BARS_SPEC_KEYS = ("downsample", "op_shortcut")


def derived_spec(search_config, genotype_path, cells=None, channels=None):
    """The network spec of a searched genotype (BNAS: sized by cells/channels, default
    the search's). ValueError for cells/channels with a BARS genotype (its size is the
    genotype's)."""
    genotype = genotypes.load(genotype_path)
    if isinstance(genotype, genotypes.BnasGenotype):
        return presets.resolve(genotype=genotype, name="searched",
                               cells=cells or search_config.cells,
                               channels=channels or search_config.channels,
                               binarization=search_config.binarization)
    extra = search_config.extra or {}
    return presets.resolve(genotype=genotype, name="searched", cells=cells, channels=channels,
                           binarization=search_config.binarization,
                           **{k: extra[k] for k in BARS_SPEC_KEYS if k in extra})


def run(data_config, search_config, train_config, output_dir, cells=None, channels=None,
        export_samples=32, min_agreement=export.DEFAULT_MIN_AGREEMENT, log=print,
        sources=None, verbose="auto"):
    """Search, train the derived network and export it; returns the summary dict.

    The search and the training run on `search_config.strategy`; `verbose` is the
    search's Keras progress (the training's is `train_config.verbose`). `sources`
    ({cells, channels: where the value came from}) labels the size line printed
    first."""
    search_dir = os.path.join(output_dir, "search")
    train_dir = os.path.join(output_dir, "train")
    tflite = os.path.join(output_dir, "model.tflite")
    if search_config.strategy == "multi_worker":  # one strategy cannot span both stages
        raise ValueError("the pipeline runs on one machine (--strategy=default or mirrored); "
                         "run tools/search.py and tools/train.py with --strategy=multi_worker")
    sources = sources or {"cells": "given" if cells else "the search's",
                          "channels": "given" if channels else "the search's"}
    if search_config.method == "bnas":
        log(f"network to train: the searched cell, {cells or search_config.cells} cells "
            f"({sources['cells']}) x {channels or search_config.channels} channels "
            f"({sources['channels']})")
    elif cells or channels:
        raise ValueError(f"the size of a {search_config.method} network comes from its "
                         f"searched genotype; drop the cells/channels of the trained network")
    log(f"[1/3] {search_config.method} search -> {search_dir}")
    search = runner.run_search(search_config.method, data_config, search_config, search_dir,
                               verbose=verbose)
    genotype_path = os.path.join(search_dir, runner.GENOTYPE_FILE)
    spec = derived_spec(search_config, genotype_path, cells, channels)
    log(f"[2/3] training the derived network -> {train_dir}: "
        f"{checks.describe(spec, {'genotype': genotype_path, **sources})}")
    metrics = training.train(spec, data_config, train_config, train_dir,
                             strategy=search_config.strategy)
    log(f"[3/3] exporting -> {tflite}")
    report = export.export(train_dir, tflite, samples=export_samples,
                           min_agreement=min_agreement)
    summary = {
        "genotype": genotype_path,
        "search": {k: search.get(k) for k in ("best_epoch", "best_val_accuracy")},
        "train": {k: metrics.get(k) for k in ("top1", "top5", "loss", "params", "flops",
                                              "biops", "equivalent_ops")},
        "export": {"path": tflite, "bytes": report.bytes, "bconv_ops": report.bconv_ops,
                   "float_conv_ops": report.float_conv_ops, "agreement": report.agreement},
    }
    model_dir.write_json(os.path.join(output_dir, SUMMARY), summary)
    return summary
