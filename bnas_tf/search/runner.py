"""The search loop, generic over methods: data, bilevel fit, derivation, logs, resume.

``run_search(method, data_config, search_config, output_dir)`` writes into
``output_dir`` (DIR):

* ``search_config.json``  what the run depends on (a rerun must match it);
* ``ckpt/``               tf.train.CheckpointManager: weights, alphas, both
                          optimizers, the epoch counter (and ``net.rng`` if the
                          supernet keeps a tf.random.Generator there), saved after
                          every epoch. Rerunning the same command continues;
* ``genotypes/epoch_XXX.json``  the genotype derived after every epoch;
* ``genotype.json``       the genotype of the epoch with the best validation accuracy;
* ``search_summary.json`` per epoch: losses, accuracies, genotype, learnable ops;
* ``logs/``               TensorBoard: ``train``/``validation`` (Keras) and ``search``
                          (method scalars such as alpha entropy, per-cell op
                          probability heatmaps, the genotype as text).

A *method* is a module (or any object) with

* ``build_supernet(search_config, num_classes, image_size) -> net`` (see
  `bilevel.BilevelModel` for what a net provides);
* ``derive(net, search_config, val_batches) -> genotype`` (a genotypes.*Genotype);
* ``epoch_logs(net, epoch) -> dict``: name -> float (scalar), HxWx3 uint8 array
  (image) or str (text), written to TensorBoard and (scalars) to the summary;
* ``on_epoch_begin(net, epoch) -> None | dict`` (optional): a returned
  ``{"alpha_update": bool}`` switches architecture updates for that epoch;
* ``validate_config(search_config)`` (optional): one-line ValueError for bad
  method-specific settings (``search_config.extra``);
* ``build_model(net, search_config, steps_per_epoch, image_size)`` (optional): a
  compiled BilevelModel (default `bilevel.build`), for method-specific optimisers;
* ``default_config()`` (optional): the method's SearchConfig defaults, used by
  tools/search.py for every setting not given on the command line.

Epoch ``e`` reads its data with seed ``data_seed(seed, e)``, so a resumed run sees
the same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import sys

import bnas_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from bnas_tf import data, distribute, files, genotypes, ops
from bnas_tf.search import METHODS, SearchConfig, bilevel  # noqa: F401  (re-export)

CONFIG_FILE = "search_config.json"
SUMMARY_FILE = "search_summary.json"
GENOTYPE_FILE = "genotype.json"
DATA_IDENTITY = ("dataset", "data_dir", "image_size", "max_examples", "cutout", "augment",
                 "validation_fraction", "num_subset_classes")


class SearchDirError(ValueError):
    """The output directory belongs to another search run."""


def get_method(name_or_method):
    """The method module for a name in `METHODS` (imported lazily), or the object itself."""
    if not isinstance(name_or_method, str):
        return name_or_method
    if name_or_method not in METHODS:
        raise ValueError(f"unknown search method {name_or_method!r}; "
                         f"choose one of {', '.join(METHODS)}")
    try:
        return importlib.import_module(METHODS[name_or_method])
    except ModuleNotFoundError as e:
        raise ValueError(f"search method {name_or_method!r} is not available "
                         f"({e})") from None


def data_seed(seed, epoch):
    """The data-order/augmentation seed of one epoch."""
    return int(seed) * 100_003 + int(epoch)


def run_identity(data_config, search_config):
    """What must match for a directory's checkpoint to be resumed."""
    data_part = {k: getattr(data_config, k) for k in DATA_IDENTITY if hasattr(data_config, k)}
    if data_part.get("data_dir"):
        data_part["data_dir"] = os.path.abspath(os.path.expanduser(data_part["data_dir"]))
    return files.plain({"search": search_config.to_dict(), "data": data_part})


def check_output_dir(output_dir, identity):
    """True if `output_dir` holds a checkpoint of this run (resume), False if it holds
    none; SearchDirError if it belongs to a different run (its search_config.json
    differs) or holds a checkpoint without a search_config.json."""
    ckpt_dir = os.path.join(output_dir, "ckpt")
    has_ckpt = os.path.isdir(ckpt_dir) and tf.train.latest_checkpoint(ckpt_dir) is not None
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        if has_ckpt:
            raise SearchDirError(f"{output_dir} holds a search checkpoint without "
                                 f"{CONFIG_FILE}; choose another --output_dir")
        return False
    with open(path, encoding="utf-8") as f:
        try:
            saved = json.load(f)
        except json.JSONDecodeError:
            raise SearchDirError(f"{path} is malformed; choose another --output_dir") from None
    diffs = _diff(saved, identity)
    if diffs:
        raise SearchDirError(f"{output_dir} holds a different search (differs in "
                             f"{', '.join(diffs[:6])}); use another --output_dir or "
                             "delete it")
    return has_ckpt


def _diff(saved, current, prefix=""):
    keys = sorted(set(saved) | set(current)) if isinstance(saved, dict) and \
        isinstance(current, dict) else None
    if keys is None:
        return [] if saved == current else [prefix.rstrip(".") or "config"]
    out = []
    for k in keys:
        if k not in saved or k not in current:
            out.append(f"{prefix}{k}")
        else:
            out.extend(_diff(saved[k], current[k], f"{prefix}{k}."))
    return out


def learnable_ops(genotype):
    """Number of learnable (binary conv) ops a genotype picks."""
    return int(sum(op in ops.LEARNABLE for op in genotype.ops_used()))


def _checkpoint(model, net):
    items = {"model": model, "w_optimizer": model.w_optimizer,
             "a_optimizer": model.a_optimizer,
             "done": tf.Variable(0, dtype=tf.int64, trainable=False, name="done")}
    rng = getattr(net, "rng", None)
    if isinstance(rng, tf.random.Generator):
        items["rng"] = rng
    return tf.train.Checkpoint(**items)


def _epochs_done(output_dir):
    """Completed epochs recorded in DIR/ckpt (0 without a checkpoint)."""
    latest = tf.train.latest_checkpoint(os.path.join(output_dir, "ckpt"))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    return int(reader.get_tensor("done/.ATTRIBUTES/VARIABLE_VALUE"))


def _search_datasets(data_config, epoch, steps):
    """(train, val) batches of one epoch, zipped; val repeats as needed."""
    cfg = dataclasses.replace(data_config, seed=data_seed(data_config.seed, epoch))
    train = data.load(cfg, "search_train", training=True)
    val_cfg = dataclasses.replace(cfg, seed=cfg.seed + 50_021)
    val = data.load(val_cfg, "search_val", training=True).repeat()
    return tf.data.Dataset.zip((train, val)).take(steps)


def _write_summaries(writer, epoch, logs):
    with writer.as_default(step=epoch):
        for name, value in logs.items():
            if isinstance(value, str):
                tf.summary.text(name, value)
            elif isinstance(value, np.ndarray) and value.ndim in (3, 4):
                image = value if value.ndim == 4 else value[None]
                tf.summary.image(name, image)
            elif value is not None and np.ndim(value) == 0:
                tf.summary.scalar(name, float(value))
        writer.flush()


def _scalars(logs):
    return {k: float(v) for k, v in logs.items()
            if not isinstance(v, (str, np.ndarray)) and v is not None and np.ndim(v) == 0}


def _best(entries):
    best = None
    for entry in entries:
        acc = entry.get("val_accuracy")
        if acc is None or (isinstance(acc, float) and math.isnan(acc)):
            continue
        if best is None or acc >= best["val_accuracy"]:
            best = entry
    return best


def run_search(method, data_config, search_config, output_dir, stop_after=None,
               verbose="auto"):
    """Search; returns the summary dict (also in DIR/search_summary.json).

    `stop_after`: run at most this many epochs in this call (the run resumes on the
    next call with the same arguments), for time-sliced or preemptible runs.
    """
    config = search_config.validate()
    if config.method == "bars" and config.strategy == "multi_worker":
        raise ValueError("BARS search does not run under --strategy=multi_worker yet: its "
                         "derivation reads and restores the supernet's per-replica BatchNorm "
                         "statistics outside the replica context and the workers hang; use "
                         "--strategy=mirrored on one machine")
    if getattr(data_config, "data_service", None) and config.strategy == "multi_worker":
        raise ValueError("--data_service feeds one search process; with "
                         "--strategy=multi_worker every worker would read its own full epoch")
    method = get_method(method)
    strategy = distribute.make_strategy(config.strategy)  # first: multi-worker needs it
    dirs = distribute.WorkerDirs(strategy)
    chief = dirs.chief
    if hasattr(method, "validate_config"):
        method.validate_config(config)
    data_config = dataclasses.replace(data_config, batch_size=config.batch_size,
                                      seed=config.seed)
    info = data.dataset_info(data_config)
    n_train = info.split_sizes.get("search_train", 0)
    n_val = info.split_sizes.get("search_val", 0)
    for split, n in (("search_train", n_train), ("search_val", n_val)):
        if config.batch_size > n:
            raise ValueError(f"batch_size {config.batch_size} is larger than the {split} "
                             f"split ({n} examples); lower --batch_size or raise "
                             "--max_examples")
    steps = n_train // config.batch_size
    distribute.print_batch_plan(strategy, config.batch_size, w_lr=config.w_lr, a_lr=config.a_lr)

    identity = run_identity(data_config, config)
    resuming = check_output_dir(output_dir, identity)
    os.makedirs(os.path.join(output_dir, "genotypes"), exist_ok=True)
    if chief and not os.path.isfile(os.path.join(output_dir, CONFIG_FILE)):
        files.write_json(os.path.join(output_dir, CONFIG_FILE), identity, sort_keys=True)

    summary_path = os.path.join(output_dir, SUMMARY_FILE)
    if resuming and _epochs_done(output_dir) >= config.epochs and os.path.isfile(summary_path):
        _log(f"{output_dir}: search already complete ({config.epochs} epochs)")
        with open(summary_path, encoding="utf-8") as f:
            return json.load(f)

    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        net = method.build_supernet(config, info.num_classes, info.image_size)
        build_model = getattr(method, "build_model", None) or bilevel.build
        model = build_model(net, config, steps, info.image_size)
    ckpt = _checkpoint(model, net)
    ckpt_dir = os.path.join(output_dir, "ckpt")
    manager = tf.train.CheckpointManager(ckpt, dirs.path(ckpt_dir), max_to_keep=2)
    start = 0
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        start = int(ckpt.done.numpy())
        _log(f"resuming {output_dir} after epoch {start}/{config.epochs}")

    summary = {"method": config.method, "epochs": []}
    if start and os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        summary["epochs"] = [e for e in summary.get("epochs", []) if e["epoch"] < start]

    eval_ds = data.load(data_config, "search_val", training=False)
    if config.eval_batches:
        eval_ds = eval_ds.take(config.eval_batches)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "logs", "search")) \
        if chief else tf.summary.create_noop_writer()
    end = config.epochs if stop_after is None else min(config.epochs, start + int(stop_after))
    for epoch in range(start, end):
        model.set_epoch(epoch)
        control = getattr(method, "on_epoch_begin", None)
        control = control(net, epoch) if control else None
        if isinstance(control, dict) and "alpha_update" in control:
            model.set_alpha_update(control["alpha_update"])
        callbacks = [tf.keras.callbacks.TensorBoard(dirs.path(os.path.join(output_dir, "logs")),
                                                    write_graph=False, profile_batch=0)]
        history = model.fit(_search_datasets(data_config, epoch, steps), epochs=epoch + 1,
                            initial_epoch=epoch, steps_per_epoch=steps,
                            validation_data=eval_ds, callbacks=callbacks, verbose=verbose)
        fit_logs = {k: float(v[-1]) for k, v in history.history.items()}
        genotype = method.derive(net, config, eval_ds)
        logs = dict(method.epoch_logs(net, epoch) or {})
        logs["genotype"] = str(genotype)
        logs["learnable_ops"] = learnable_ops(genotype)
        logs["w_lr"] = float(model._w_lr().numpy())
        entry = {"epoch": epoch, **fit_logs, **_scalars(logs),
                 "genotype": genotype.to_dict()}
        summary["epochs"].append(entry)
        if chief:
            _write_summaries(writer, epoch, logs)
            genotypes.save(genotype, os.path.join(output_dir, "genotypes",
                                                  f"epoch_{epoch:03d}.json"),
                           extra={"epoch": epoch, "val_accuracy": entry.get("val_accuracy")})
            _finish_summary(summary, output_dir)
        ckpt.done.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
    if chief and summary["epochs"]:
        _finish_summary(summary, output_dir)
    dirs.cleanup()
    return summary


def _finish_summary(summary, output_dir):
    best = _best(summary["epochs"])
    if best is not None:
        summary["best_epoch"] = best["epoch"]
        summary["best_val_accuracy"] = best["val_accuracy"]
        genotypes.save(genotypes.from_dict(best["genotype"]),
                       os.path.join(output_dir, GENOTYPE_FILE),
                       extra={"epoch": best["epoch"], "val_accuracy": best["val_accuracy"]})
    files.write_json(os.path.join(output_dir, SUMMARY_FILE), summary, sort_keys=True)


def _log(message):
    print(message, file=sys.stderr, flush=True)
