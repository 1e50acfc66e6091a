"""The layout of a search directory (DIR, tools/search.py --output_dir) and its guard.

* ``search_config.json``  the run's identity: its `SearchConfig` (``search``), the data
                          settings that shape it (``data``) and the engine's cell
                          implementation (``engine``); a rerun must match it;
* ``ckpt/``               tf.train.CheckpointManager: weights, alphas, both optimizers,
                          the epoch counter (and ``net.rng`` if the supernet keeps a
                          tf.random.Generator there), saved after every epoch;
* ``genotypes/epoch_XXX.json``  the genotype derived after every epoch;
* ``genotype.json``       the genotype of the epoch with the best validation accuracy;
* ``search_summary.json`` per epoch: losses, accuracies, genotype, learnable ops;
* ``logs/``               TensorBoard: ``train``/``validation`` (Keras) and ``search``.

A directory written by the previous version (flat BNAS settings and ``extra``) is
read through `SearchConfig.from_dict`'s upgrade and resumes.
"""
from __future__ import annotations

import json
import os

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import files
from bnas_tf.search import SearchConfig

CONFIG_FILE = "search_config.json"
SUMMARY_FILE = "search_summary.json"
GENOTYPE_FILE = "genotype.json"
GENOTYPES_DIR = "genotypes"
CKPT_DIR = "ckpt"
LOGS_DIR = "logs"
DATA_IDENTITY = ("dataset", "data_dir", "image_size", "max_examples", "cutout", "augment",
                 "validation_fraction", "num_subset_classes")


class SearchDirError(files.OtherRunError):
    """The output directory belongs to another search run."""


def path(output_dir, name):
    return os.path.join(output_dir, name)


def epoch_genotype_path(output_dir, epoch):
    """DIR/genotypes/epoch_XXX.json of epoch `epoch`, counted from 1."""
    return os.path.join(output_dir, GENOTYPES_DIR, f"epoch_{epoch:03d}.json")


def run_identity(data_config, search_config, engine):
    """What must match for a directory's checkpoint to be resumed."""
    data_part = {k: getattr(data_config, k) for k in DATA_IDENTITY if hasattr(data_config, k)}
    if data_part.get("data_dir"):
        data_part["data_dir"] = os.path.abspath(os.path.expanduser(data_part["data_dir"]))
    return files.plain({"search": search_config.to_dict(), "data": data_part,
                        "engine": {"cell": engine.cell,
                                   "recompute_stages": engine.recompute_stages}})


def upgrade_identity(saved):
    """A saved identity in today's layout: the previous version's search settings
    upgraded (`SearchConfig.from_dict`), its engine the only cell it had ('fused') and
    no recomputation (recompute_stages 0, before the setting existed)."""
    saved = dict(saved)
    if isinstance(saved.get("search"), dict):
        saved["search"] = SearchConfig.from_dict(saved["search"]).to_dict()
    saved["engine"] = {"cell": "fused", "recompute_stages": 0, **saved.get("engine", {})}
    return files.plain(saved)


def read_record(output_dir):
    """The search directory's search_config.json as written (`upgrade_identity` gives it
    in today's layout; FileNotFoundError / one-line ValueError when there is none or it
    is malformed)."""
    file = path(output_dir, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{output_dir} holds no {CONFIG_FILE} (is it a "
                                "tools/search.py output directory?)")
    with open(file, encoding="utf-8") as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError:
            raise ValueError(f"{file} is malformed") from None
    return record


def read_config(output_dir):
    """The SearchConfig recorded in a search directory (errors as `read_record`)."""
    record = read_record(output_dir)
    return SearchConfig.from_dict(record.get("search", record))


def has_checkpoint(output_dir):
    ckpt_dir = path(output_dir, CKPT_DIR)
    return os.path.isdir(ckpt_dir) and tf.train.latest_checkpoint(ckpt_dir) is not None


def check_output_dir(output_dir, identity):
    """True if `output_dir` holds a checkpoint of this run (resume), False if it holds
    none; SearchDirError if it belongs to a different run (its search_config.json
    differs in anything but ``search.epochs``, which a resumed run may extend) or holds a
    checkpoint without a search_config.json."""
    has_ckpt = has_checkpoint(output_dir)
    file = path(output_dir, CONFIG_FILE)
    if not os.path.isfile(file):
        if has_ckpt:
            raise SearchDirError(f"{output_dir} holds a search checkpoint without "
                                 f"{CONFIG_FILE}; choose another --output_dir")
        return False
    with open(file, encoding="utf-8") as f:
        try:
            saved = upgrade_identity(json.load(f))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise SearchDirError(f"{file} is malformed or of an unknown version; "
                                 "choose another --output_dir") from None
    if isinstance(saved.get("search"), dict) and isinstance(identity.get("search"), dict):
        saved["search"]["epochs"] = identity["search"]["epochs"]
    files.refuse_other_run(output_dir, saved, identity, "search", error=SearchDirError)
    return has_ckpt


def epochs_done(output_dir):
    """Completed epochs recorded in DIR/ckpt (0 without a checkpoint)."""
    latest = tf.train.latest_checkpoint(path(output_dir, CKPT_DIR))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    return int(reader.get_tensor("done/.ATTRIBUTES/VARIABLE_VALUE"))
