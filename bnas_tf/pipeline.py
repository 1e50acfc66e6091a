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
from bnas_tf.models import presets
from bnas_tf.search import runner

SUMMARY = "pipeline.json"
BARS_SPEC_KEYS = ("downsample", "op_shortcut")


def derived_spec(search_config, genotype_path, cells=None, channels=None):
    """The network spec of a searched genotype (BNAS: sized by cells/channels)."""
    genotype = genotypes.load(genotype_path)
    settings = search_config.settings
    if isinstance(genotype, genotypes.BnasGenotype):
        return presets.resolve(genotype=genotype, name="searched",
                               cells=cells or settings.cells,
                               channels=channels or settings.channels,
                               binarization=search_config.binarization)
    return presets.resolve(genotype=genotype, name="searched",
                           **{k: getattr(settings, k) for k in BARS_SPEC_KEYS})


def run(data_config, search_config, train_config, output_dir, cells=None, channels=None,
        export_samples=32, min_agreement=export.DEFAULT_MIN_AGREEMENT, log=print):
    """Search, train the derived network and export it; returns the summary dict."""
    search_dir = os.path.join(output_dir, "search")
    train_dir = os.path.join(output_dir, "train")
    tflite = os.path.join(output_dir, "model.tflite")
    log(f"[1/3] {search_config.method} search -> {search_dir}")
    search = runner.run_search(search_config.method, data_config, search_config, search_dir)
    genotype_path = os.path.join(search_dir, runner.GENOTYPE_FILE)
    spec = derived_spec(search_config, genotype_path, cells, channels)
    log(f"[2/3] training the derived network -> {train_dir}")
    metrics = training.train(spec, data_config, train_config, train_dir)
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
