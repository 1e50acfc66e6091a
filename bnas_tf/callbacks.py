"""Keras callbacks and epoch logs: the learning rate an epoch USED, a stop at the first
NaN/Inf, and the per-epoch history a resumed training run keeps.

Keras' own TensorBoard callback logs ``epoch_learning_rate`` as the schedule's value
at the optimizer's step counter after the epoch, i.e. the NEXT epoch's first step.
`EpochLearningRate` reads the schedule when the epoch begins (its first step) and
puts that value into the epoch logs as ``learning_rate``; `TensorBoard` writes the
logs' value instead of recomputing it. Per-step schedules vary within an epoch: the
logged value is the one of the epoch's first step.
"""
from __future__ import annotations

import json
import os

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf


def learning_rate(optimizer, step=None):
    """The learning rate `optimizer` applies at `step` (default: its next step), a float."""
    lr = optimizer._get_hyper("learning_rate")  # the schedule itself, not its value
    if isinstance(lr, tf.keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations if step is None else step)
    return float(tf.keras.backend.get_value(lr))


class EpochLearningRate(tf.keras.callbacks.Callback):
    """``logs["learning_rate"]``: the learning rate of the epoch's first step."""

    def __init__(self, optimizer=None):
        super().__init__()
        self.optimizer, self.value = optimizer, None

    def on_epoch_begin(self, epoch, logs=None):
        self.value = learning_rate(self.optimizer or self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.value is not None:
            logs["learning_rate"] = self.value


class TensorBoard(tf.keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, writing the logs' ``learning_rate`` (set by
    `EpochLearningRate`) rather than the schedule's value for the next epoch."""

    def _collect_learning_rate(self, logs):
        if "learning_rate" in logs:
            return logs
        return super()._collect_learning_rate(logs)


class Progbar(tf.keras.callbacks.ProgbarLogger):
    """Keras' progress output for a run of one `fit` per epoch: "Epoch e/EPOCHS" counts
    the run's epochs, not the single epoch of each fit. Put it last in the callbacks."""

    def __init__(self, epochs):
        super().__init__(count_mode="steps")
        self.total_epochs = int(epochs)

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def first_nonfinite(values):
    """The name of the first non-finite scalar or array in a name -> value mapping, or None."""
    for name, value in values.items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(array).all():
            return name
    return None


class StopOnNonFinite(tf.keras.callbacks.Callback):
    """Stop training at the first batch or epoch whose logs hold NaN/Inf; `failure` is
    then ``(epoch, name)`` (epoch 0-based, name of the first non-finite log entry)."""

    def __init__(self):
        super().__init__()
        self.epoch, self.failure = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs):
        name = first_nonfinite(logs or {})
        if name is not None and self.failure is None:
            self.failure = (self.epoch, name)
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs)


def read_history(path, epochs_done):
    """The per-epoch logs of the `epochs_done` checkpointed epochs ([] without a file)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [e for e in json.load(f) if e["epoch"] < epochs_done]


def history_lists(history):
    """Per-epoch dicts -> {name: [value per epoch that logged it]} (Keras' History form)."""
    out = {}
    for entry in history:
        for k, v in entry.items():
            if k != "epoch":
                out.setdefault(k, []).append(v)
    return out
