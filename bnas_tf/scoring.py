"""Score what is saved: evaluation on one device of a network's synchronised weights.

Under a distribution strategy each replica evaluates with its own BatchNorm moving
statistics, and TensorFlow's oneDNN convolution fails on the empty per-replica batch
of a remainder batch (fewer images than replicas; ``TF_ENABLE_ONEDNN_OPTS=0`` avoids
it). The saved weights hold the replicas' mean statistics. So validation during
training, the final test score and `training.evaluate` all run an inference twin of
the network (main head, built outside any strategy) on one device, with the weights
copied from the trained network: every reported score is the saved model's, each
image counted once, whatever the strategy.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from bnas_tf import models


def inference_twin(spec, num_classes, image_size):
    """The main-head network of `spec` for one device; call it outside any strategy
    scope (ValueError inside one: its variables would be distributed)."""
    if tf.distribute.has_strategy():
        raise ValueError("build the one-device twin outside the strategy scope")
    return models.build(spec, num_classes, image_size, auxiliary=False)


def copy_weights(source, target):
    """Copy `source`'s weights into `target` layer by layer (by name); distributed
    variables are read as the values a checkpoint saves (BN statistics: replica mean)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return target


def evaluate(twin, dataset, verbose=0):
    """{"loss", "top1", "top5"} of a compiled `twin` on (images, labels) batches."""
    results = twin.evaluate(dataset, return_dict=True, verbose=verbose)
    return {"loss": float(results["loss"]), "top1": float(results["top1"]),
            "top5": float(results["top5"])}


def pad_batches(dataset, multiple):
    """(images, labels) batches -> (images, labels, weights), each batch padded to a
    multiple of `multiple` rows (repeats of its first row, weight 0), so that no
    replica of a `multiple`-replica strategy gets an empty batch; weighted Mean-type
    metrics then count every real example exactly once."""
    multiple = int(multiple)

    def pad(images, labels):
        n = tf.shape(images)[0]
        extra = (multiple - n % multiple) % multiple
        rows = tf.concat([tf.range(n), tf.zeros([extra], tf.int32)], 0)
        weights = tf.concat([tf.ones([n]), tf.zeros([extra])], 0)
        return tf.gather(images, rows), tf.gather(labels, rows), weights
    return dataset.map(pad)


class Validation(tf.keras.callbacks.Callback):
    """Every `freq` epochs: copy the trained network into `twin` and put its scores on
    `dataset` into the epoch logs as val_loss / val_top1 / val_top5."""

    def __init__(self, twin, dataset, freq=1):
        super().__init__()
        self.twin, self.dataset, self.freq = twin, dataset, int(freq)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.freq or (epoch + 1) % self.freq:
            return
        copy_weights(self.model, self.twin)
        logs.update({f"val_{k}": v for k, v in evaluate(self.twin, self.dataset).items()})
