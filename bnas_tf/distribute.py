"""Distribution strategies for training: one device, mirrored replicas, several workers.

`make_strategy("multi_worker")` reads the cluster from the TF_CONFIG environment
variable and must run before TensorFlow executes anything (create the strategy
first thing in a program). Only the chief writes checkpoints, logs and metrics; the
other workers write the same files into a private temporary directory that is
deleted afterwards (the pattern of the TF multi-worker Keras guide: every worker
takes part in saving, because saving distributed variables may run collectives).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


_MADE = {}  # one strategy per name and process (see make_strategy)


def make_strategy(name="default"):
    """A tf.distribute strategy by name: 'default' | 'mirrored' | 'multi_worker'.

    'mirrored' uses every local GPU, or every logical CPU device when there is no GPU
    (configure them with tf.config.set_logical_device_configuration beforehand).
    A process gets one strategy per name: a later call returns the first one. Two
    strategies in one process (a study's or pipeline's search, then its training)
    number their collective ops alike, and the second fails with "Shape mismatch in
    the collective instance"; a second MultiWorkerMirroredStrategy cannot join its
    cluster at all.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    name = name or "default"
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in _MADE:
        _MADE[name] = _new_strategy(name)
    return _MADE[name]


def _new_strategy(name):
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if not os.environ.get("TF_CONFIG"):
        raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(cluster spec and this worker's task)")
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e.msg})") from None
    task = tf_config.get("task", {}) if isinstance(tf_config, dict) else {}
    cluster = tf_config.get("cluster", {}) if isinstance(tf_config, dict) else {}
    tasks = sum(len(v) for v in cluster.values() if isinstance(v, list))
    # the strategy blocks until every task has joined: say so (a missing worker is
    # otherwise a silent wait)
    print(f"multi_worker: task {task.get('type')} {task.get('index')} of {tasks} in "
          f"TF_CONFIG; waiting for all of them to join", file=sys.stderr, flush=True)
    return tf.distribute.MultiWorkerMirroredStrategy()


def batch_plan(strategy, global_batch, **learning_rates):
    """The line printed at the start of a run: replicas, global and per-replica batch,
    and the learning rate(s) used (never rescaled with the replica count: the batch
    flag is the global batch, so the same flags mean the same optimisation on 1 or N
    replicas). Raises ValueError when the global batch does not split evenly."""
    replicas = int(strategy.num_replicas_in_sync)
    if global_batch % replicas:
        raise ValueError(f"batch_size {global_batch} (the global batch) does not split evenly "
                         f"over {replicas} replicas; use a multiple of {replicas}")
    rates = ", ".join(f"{name} {value:g}" for name, value in learning_rates.items())
    name = type(strategy).__name__.lstrip("_")  # _DefaultDistributionStrategy: no strategy
    name = "no distribution strategy" if name == "DefaultDistributionStrategy" else name
    return (f"{name}: {replicas} replica(s), global batch {global_batch}, "
            f"per-replica batch {global_batch // replicas}; {rates} as given (not scaled "
            f"with the number of replicas: --batch_size is the global batch)")


def print_batch_plan(strategy, global_batch, **learning_rates):
    """Print `batch_plan` to stderr (every worker; stdout stays for the tools' results)."""
    print(batch_plan(strategy, global_batch, **learning_rates), file=sys.stderr, flush=True)


def task(strategy):
    """(task_type, task_id) of this process; (None, None) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """True on the process that owns the outputs: the chief, else worker 0, else alone."""
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


class WorkerDirs:
    """Where this process writes: the real directory on the chief, temp dirs elsewhere.

    ``dirs.path(real_path)`` maps a path to this worker's place for it; call
    ``dirs.cleanup()`` at the end to delete a non-chief's temporary files.
    """

    def __init__(self, strategy):
        self.chief = is_chief(strategy)
        task_type, task_id = task(strategy)
        self._temp = None if self.chief else tempfile.mkdtemp(
            prefix=f"bnas_{task_type}{task_id}_")

    def path(self, real_path):
        if self.chief:
            return real_path
        target = os.path.join(self._temp, os.path.basename(os.path.normpath(real_path)))
        return target

    def cleanup(self):
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
