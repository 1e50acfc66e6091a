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
import textwrap

import bnas_tf  # noqa: F401

from bnas_tf import data, export, genotypes, model_dir, training
from bnas_tf.models import checks, presets
from bnas_tf.search import runner

SUMMARY = "pipeline.json"
NEXT = ("These are a smoke run's figures: a few epochs on a few hundred images say nothing "
        "about the method.\nFor a result worth reading: python tools/study.py --profile=cpu\n"
        "Or the BNAS paper's settings (CIFAR-10; days on a CPU): python tools/search.py "
        "--dataset=folder --data_dir=PATH --epochs=50 --cells=8 --channels=16 --batch_size=64 "
        "--output_dir=runs/search, then python tools/train.py "
        "--genotype=runs/search/genotype.json --cells=20 --channels=36 --recipe=cifar "
        "--dataset=folder --data_dir=PATH --output_dir=runs/bnas")
BARS_SPEC_KEYS = ("downsample", "op_shortcut")


def derived_spec(search_config, genotype_path, cells=None, channels=None):
    """The network spec of a searched genotype (BNAS: sized by cells/channels, default
    the search's). ValueError for cells/channels with a BARS genotype (its size is the
    genotype's)."""
    genotype = genotypes.load(genotype_path)
    settings = search_config.settings
    if isinstance(genotype, genotypes.BnasGenotype):
        return presets.resolve(genotype=genotype, name="searched",
                               cells=cells or settings.cells,
                               channels=channels or settings.channels,
                               binarization=search_config.binarization)
    return presets.resolve(genotype=genotype, name="searched", cells=cells, channels=channels,
                           **{k: getattr(settings, k) for k in BARS_SPEC_KEYS})


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
        log(f"network to train: the searched cell, {cells or search_config.settings.cells} cells "
            f"({sources['cells']}) x {channels or search_config.settings.channels} channels "
            f"({sources['channels']})")
    elif cells or channels:
        raise ValueError(f"the size of a {search_config.method} network comes from its "
                         f"searched genotype; drop the cells/channels of the trained network")
    log(f"[1/3] {search_config.method} search -> {search_dir}")
    search = runner.run_search(search_config.method, data_config, search_config, search_dir,
                               verbose=verbose)
    genotype_path = os.path.join(search_dir, runner.GENOTYPE_FILE)
    spec = derived_spec(search_config, genotype_path, cells, channels)
    log(f"[2/3] training the derived network -> {train_dir}")
    log(f"      {checks.describe(spec, {'genotype': genotype_path, **sources})}")
    metrics = training.train(spec, data_config, train_config, train_dir,
                             strategy=search_config.strategy)
    log(f"[3/3] exporting -> {tflite}")
    report = export.export(train_dir, tflite, samples=export_samples,
                           min_agreement=min_agreement)
    sizes = data.dataset_info(data_config).split_sizes
    val_images = sizes["search_val"] if not search_config.eval_batches else min(
        sizes["search_val"], search_config.eval_batches * search_config.batch_size)
    num_classes = int(metrics["num_classes"])
    summary = {
        "genotype": genotype_path,
        "search": {"method": search_config.method, "epochs": search_config.epochs,
                   "best_epoch": search.get("best_epoch"),  # counted from 1
                   "best_val_accuracy": search.get("best_val_accuracy"),
                   "train_split": "search_train", "train_images": sizes["search_train"],
                   "val_split": "search_val", "val_images": val_images},
        "network": {k: metrics.get(k) for k in ("params", "flops", "biops", "equivalent_ops")},
        "training": {"epochs": metrics.get("epochs"), "split": "train",
                     "images": metrics.get("train_examples")},
        "test": {"split": "test", "images": metrics.get("test_examples"),
                 "held_out_from_train": data.split_pool(data_config, "test") == "train",
                 "top1": metrics.get("top1"), "top5": metrics.get("top5"),
                 "loss": metrics.get("loss"), "num_classes": num_classes,
                 "chance_top1": 1.0 / num_classes, "chance_top5": min(1.0, 5.0 / num_classes)},
        "export": {"path": tflite, "bytes": report.bytes, "bconv_ops": report.bconv_ops,
                   "float_conv_ops": report.float_conv_ops, "agreement": report.agreement,
                   "agreement_samples": export_samples},
        "next": NEXT,
        "output_dir": output_dir,
    }
    model_dir.write_json(os.path.join(output_dir, SUMMARY), summary)
    return summary


def format_summary(summary, width=100):
    """The summary as text lines of at most `width` columns: each figure with the split and
    number of images it comes from, the chance level, and the command worth running next."""
    s, t, n, tr, e = (summary[k] for k in ("search", "test", "network", "training", "export"))
    held = " (held out from the training folder)" if t["held_out_from_train"] else ""
    lines = [
        f"search ({s['method']}, {_epochs(s['epochs'])} on {s['train_images']} search_train "
        f"images): best epoch {s['best_epoch']}, validation top-1 "
        f"{_fraction(s['best_val_accuracy'])} on {s['val_images']} search_val images",
        f"genotype: {summary['genotype']}",
        f"network: {n['params']:,} params, {n['flops'] / 1e6:.2f} M FLOPs, "
        f"{n['biops'] / 1e6:.2f} M BiOPs, {n['equivalent_ops'] / 1e6:.2f} M EqOPs",
        f"training: {_epochs(tr['epochs'])} on {tr['images']} train images",
        f"test: top-1 {_fraction(t['top1'])}, top-5 {_fraction(t['top5'])} on {t['images']} "
        f"test images{held}; chance {t['chance_top1']:.3f} / {t['chance_top5']:.3f} "
        f"({t['num_classes']} classes)",
        f"export: {e['path']} ({e['bytes']:,} bytes, {e['bconv_ops']} LceBconv2d), top-1 "
        f"agreement with Keras {_fraction(e['agreement'])} on {e['agreement_samples']} images",
        "",
    ] + summary["next"].split("\n") + [
        f"All figures: {os.path.join(summary['output_dir'], SUMMARY)}; TensorBoard: "
        f"tensorboard --logdir {summary['output_dir']}"]
    return "\n".join(line for raw in lines
                     for line in (textwrap.wrap(raw, width, subsequent_indent="    ",
                                                break_on_hyphens=False) or [""]))


def _epochs(n):
    return f"{n} epoch{'s' * (n != 1)}"


def _fraction(value):
    return "-" if value is None else f"{float(value):.3f}"
