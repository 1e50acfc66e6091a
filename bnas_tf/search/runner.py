"""The search loop, generic over methods: data, bilevel fit, derivation, logs, resume.

``run_search(method, data_config, search_config, output_dir, engine=EngineConfig())``
writes a search directory (its layout: `search_dir`). A method is a
`bnas_tf.search.SearchMethod` (``bnas_tf.search.<name>.method``, see `METHODS`).

Epoch ``e`` reads its data with seed ``data_seed(seed, e)``, so a resumed run sees
the same batches as an uninterrupted one.

Epochs are counted from 1 wherever a person reads them: the progress line
``Epoch 3/4``, ``search_summary.json`` (``epoch``, ``best_epoch``), the genotype files
``genotypes/epoch_003.json`` and the log lines. (TensorBoard's step axis is Keras'
0-based epoch index, so the ``search`` scalars line up with Keras' ``epoch_*`` curves.)

A finished or interrupted search may be extended by rerunning it with a larger
``--epochs`` (every other setting equal): it continues from its checkpoint, and the
weight learning-rate schedule (cosine over all epochs) is recomputed for the new total,
so the epochs already run followed the old total's schedule; the run says so.
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

from bnas_tf import callbacks as lr_callbacks
from bnas_tf import data, distribute, files, genotypes, ops, scoring
from bnas_tf.search import METHODS, SearchConfig, search_dir  # noqa: F401  (re-export)
from bnas_tf.search.engine import EngineConfig
from bnas_tf.search.search_dir import (CONFIG_FILE, GENOTYPE_FILE, SUMMARY_FILE,  # noqa: F401
                                       SearchDirError, check_output_dir, run_identity)


def get_method(name_or_method):
    """The method module for a name in `METHODS` (imported lazily), or the object itself."""
    if not isinstance(name_or_method, str):
        return name_or_method
    if name_or_method not in METHODS:
        raise ValueError(f"unknown search method {name_or_method!r}; "
                         f"choose one of {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name_or_method])


def data_seed(seed, epoch):
    """The data-order/augmentation seed of one epoch."""
    return int(seed) * 100_003 + int(epoch)


def learnable_ops(genotype):
    """Number of learnable (binary conv) ops a genotype picks."""
    return int(sum(op in ops.LEARNABLE for op in genotype.ops_used()))


def _checkpoint(model, net):
    items = {"model": model, "w_optimizer": model.w_optimizer,
             "a_optimizer": model.a_optimizer,
             "done": tf.Variable(0, dtype=tf.int64, trainable=False, name="done")}
    if isinstance(net.rng, tf.random.Generator):
        items["rng"] = net.rng
    return tf.train.Checkpoint(**items)


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
    """The entry of the best validation accuracy (ties: the later), among the epochs
    whose alphas were updated: a warm-up epoch's genotype reads untrained alphas."""
    best = None
    for entry in entries:
        if not entry.get("alphas_updated", True):
            continue
        acc = entry.get("val_accuracy")
        if acc is None or (isinstance(acc, float) and math.isnan(acc)):
            continue
        if best is None or acc >= best["val_accuracy"]:
            best = entry
    return best


def run_search(method, data_config, search_config, output_dir, stop_after=None,
               verbose="auto", engine=None):
    """Search; returns the summary dict (also in DIR/search_summary.json).

    `method`: a name in `METHODS` (it must be ``search_config.method``) or a
    `SearchMethod`; `engine`: an engine.EngineConfig (default: EngineConfig()), resolved
    here, once. `stop_after`: run at most this many epochs in this call (the run
    resumes on the next call with the same arguments), for time-sliced or
    preemptible runs.
    """
    config = search_config.validate()
    if isinstance(method, str) and method != config.method:
        raise ValueError(f"run_search: method {method!r} differs from the config's "
                         f"{config.method!r}")
    if getattr(data_config, "data_service", None) and config.strategy == "multi_worker":
        raise ValueError("--data_service feeds one search process; with "
                         "--strategy=multi_worker every worker would read its own full epoch")
    method = get_method(method)
    engine = (engine or EngineConfig()).resolve().check_for(config)  # before any write
    strategy = distribute.make_strategy(config.strategy)  # first: multi-worker needs it
    dirs = distribute.WorkerDirs(strategy)
    chief = dirs.chief
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

    identity = run_identity(data_config, config, engine)
    resuming = check_output_dir(output_dir, identity)
    os.makedirs(os.path.join(output_dir, search_dir.GENOTYPES_DIR), exist_ok=True)
    if resuming:
        _extend_epochs(output_dir, config.epochs)
    if chief:  # equal to the saved one but for search.epochs (check_output_dir)
        files.write_json(os.path.join(output_dir, CONFIG_FILE), identity, sort_keys=True)

    summary_path = os.path.join(output_dir, SUMMARY_FILE)
    if resuming and search_dir.epochs_done(output_dir) >= config.epochs \
            and os.path.isfile(summary_path):
        _log(f"{output_dir}: search already complete ({config.epochs} epochs)")
        with open(summary_path, encoding="utf-8") as f:
            return json.load(f)

    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        net = method.build_supernet(config, info.num_classes, info.image_size, engine)
        model = method.build_model(net, config, steps, info.image_size, engine)
    ckpt = _checkpoint(model, net)
    ckpt_dir = os.path.join(output_dir, search_dir.CKPT_DIR)
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
        entries = summary.get("epochs", [])
        if entries and entries[0].get("epoch") == 0:  # a previous version counted from 0
            for entry in entries:
                entry["epoch"] += 1
            if summary.get("best_epoch") is not None:
                summary["best_epoch"] += 1
        summary["epochs"] = [e for e in entries if e["epoch"] <= start]

    eval_ds = data.load(data_config, "search_val", training=False)
    if config.eval_batches:
        eval_ds = eval_ds.take(config.eval_batches)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, search_dir.LOGS_DIR,
                                                        "search")) \
        if chief else tf.summary.create_noop_writer()
    end = config.epochs if stop_after is None else min(config.epochs, start + int(stop_after))
    for epoch in range(start, end):
        model.set_epoch(epoch)
        alphas_updated = bool(method.on_epoch_begin(net, epoch))
        model.set_alpha_update(alphas_updated)
        w_lr = float(model._w_lr().numpy())  # this epoch's, read before its steps run
        guard = lr_callbacks.StopOnNonFinite()
        logs_dir = os.path.join(output_dir, search_dir.LOGS_DIR)
        callbacks = [guard, lr_callbacks.EpochLearningRate(model.w_optimizer),
                     lr_callbacks.TensorBoard(dirs.path(logs_dir), write_graph=False,
                                              profile_batch=0)]
        if verbose != 0:  # "Epoch 1/4" .. "Epoch 4/4", not Keras' "Epoch 2/2" of one fit
            callbacks.append(EpochOfTotal(config.epochs, count_mode="steps"))
        history = model.fit(_search_datasets(data_config, epoch, steps), epochs=epoch + 1,
                            initial_epoch=epoch, steps_per_epoch=steps,
                            validation_data=_replica_safe(eval_ds, strategy),
                            callbacks=callbacks, verbose=verbose)
        fit_logs = {k: float(v[-1]) for k, v in history.history.items()}
        _stop_if_diverged(guard, fit_logs, model, epoch, config.epochs, output_dir, dirs)
        genotype = method.derive(net, config, eval_ds)
        logs = dict(method.epoch_logs(net, epoch) or {})
        logs["genotype"] = str(genotype)
        logs["learnable_ops"] = learnable_ops(genotype)
        logs["w_lr"] = w_lr
        entry = {"epoch": epoch + 1, **fit_logs, **_scalars(logs),  # counted from 1
                 "alphas_updated": alphas_updated, "genotype": genotype.to_dict()}
        warning = genotype_warning(genotype)
        if warning:
            entry["warning"] = warning
            _log(f"WARNING: epoch {epoch + 1}: {warning}")
        summary["epochs"].append(entry)
        if chief:
            _write_summaries(writer, epoch, logs)
            genotypes.save(genotype, search_dir.epoch_genotype_path(output_dir, epoch + 1),
                           extra={"epoch": epoch + 1, "val_accuracy": entry.get("val_accuracy"),
                                  **({"warning": warning} if warning else {})})
            _finish_summary(summary, output_dir)
        ckpt.done.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
    if chief and summary["epochs"]:
        _finish_summary(summary, output_dir)
    dirs.cleanup()
    return summary


class EpochOfTotal(tf.keras.callbacks.ProgbarLogger):
    """Keras' progress bar for one fit() per epoch, headed ``Epoch e/total`` of the whole
    search (Keras alone prints nothing for the first epoch, then ``Epoch 2/2``, ...)."""

    def __init__(self, total, **kwargs):
        super().__init__(**kwargs)
        self.total = int(total)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs = 1  # Keras' own line is printed only when epochs > 1
        super().on_epoch_begin(epoch, logs)
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.total}", flush=True)


def _extend_epochs(output_dir, epochs):
    """Accept a resumed search's new --epochs (extending, or shortening a run not yet
    past it); print that the weight-lr schedule is recomputed for the new total.

    Raises SearchDirError if more epochs than `epochs` are already done."""
    before = search_dir.read_record(output_dir).get("search", {}).get("epochs")
    if before is None or before == epochs:
        return
    done = search_dir.epochs_done(output_dir)
    if done > epochs:
        raise SearchDirError(f"{output_dir} has {done} epochs done; --epochs={epochs} is "
                             f"fewer (give --epochs >= {done}, or another --output_dir)")
    _log(f"{output_dir}: search of {before} epochs ({done} done) continues to {epochs} "
         f"epochs; the weight learning-rate schedule is recomputed for {epochs} epochs "
         f"(epochs 1..{done} followed the {before}-epoch schedule)")


def _replica_safe(eval_ds, strategy):
    """`eval_ds` with no empty per-replica batch under a multi-replica strategy (a
    remainder batch smaller than the replica count crashes oneDNN's conv):
    `scoring.pad_batches`, padding weighted 0."""
    replicas = strategy.num_replicas_in_sync
    return scoring.pad_batches(eval_ds, replicas) if replicas > 1 else eval_ds


def genotype_warning(genotype):
    """A one-line warning for a genotype whose cells ignore their inputs, else None."""
    dead = genotypes.disconnected_cells(genotype)
    if not dead:
        return None
    return (f"the derived {' and '.join(dead)} cell does not depend on its inputs (every "
            "path to its output nodes passes through none: Zeroise dominates); a network "
            "built from it cannot learn - raise --gamma or use --derive=darts")


def _stop_if_diverged(guard, fit_logs, model, epoch, epochs, output_dir, dirs):
    """FloatingPointError (one line) at the first NaN/Inf loss or alpha of `epoch`
    (0-based), before anything of that epoch is saved: the previous epoch's
    checkpoint, genotype and summary stay as they were."""
    name = guard.failure[1] if guard.failure else lr_callbacks.first_nonfinite(fit_logs)
    if name is None:
        name = lr_callbacks.first_nonfinite({v.name.split(":")[0]: v.numpy()
                                             for v in model.arch_variables})
    if name is None:
        return
    dirs.cleanup()
    kept = (f"checkpoint, summary and genotypes of epochs 1..{epoch} kept in {output_dir}"
            if epoch else "no epoch completed, no genotype written")
    raise FloatingPointError(f"search diverged in epoch {epoch + 1}/{epochs}: "
                             f"{name} is NaN/Inf; stopped ({kept})")


def _finish_summary(summary, output_dir):
    best = _best(summary["epochs"])
    if best is not None:
        summary["best_epoch"] = best["epoch"]
        summary["best_val_accuracy"] = best["val_accuracy"]
        extra = {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"]}
        summary.pop("warning", None)
        if best.get("warning"):
            summary["warning"] = extra["warning"] = f"{GENOTYPE_FILE}: {best['warning']}"
        genotypes.save(genotypes.from_dict(best["genotype"]),
                       os.path.join(output_dir, GENOTYPE_FILE), extra=extra)
    files.write_json(os.path.join(output_dir, SUMMARY_FILE), summary, sort_keys=True)


def _log(message):
    print(message, file=sys.stderr, flush=True)


def restore_supernet(output_dir):
    """(net, search_config, data_config) of a search directory: its supernet rebuilt from
    search_config.json (method, settings, data, engine cell) with the weights and alphas
    of its latest checkpoint, outside any strategy, and the data it searched on. For
    selection on a trained supernet (bnas/perturbation.py). FileNotFoundError /
    one-line ValueError when `output_dir` holds no search or no checkpoint."""
    record = search_dir.read_record(output_dir)
    config = SearchConfig.from_dict(record.get("search", record))
    record = search_dir.upgrade_identity(record)
    latest = tf.train.latest_checkpoint(search_dir.path(output_dir, search_dir.CKPT_DIR))
    if latest is None:
        raise ValueError(f"{output_dir} holds no search checkpoint (no epoch finished)")
    data_config = data.DataConfig(**record.get("data", {}), batch_size=config.batch_size,
                                  seed=config.seed)
    engine = EngineConfig(cell=record["engine"]["cell"],
                          recompute_stages=record["engine"]["recompute_stages"]).resolve()
    method = get_method(config.method)
    info = data.dataset_info(data_config)
    steps = max(1, info.split_sizes.get("search_train", 0) // config.batch_size)
    tf.keras.utils.set_random_seed(config.seed)
    net = method.build_supernet(config, info.num_classes, info.image_size, engine)
    model = method.build_model(net, config, steps, info.image_size, engine)
    _checkpoint(model, net).restore(latest).assert_existing_objects_matched()
    return net, config, data_config
