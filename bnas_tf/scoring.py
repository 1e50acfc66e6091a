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


class Scorer:
    """Mean cross-entropy ("loss"), top-1 and top-5 accuracy of a network on (images,
    labels) batches, each example counted once (sums over examples, not means of
    batch means). A plain loop, not Keras' evaluate: that one runs under the strategy
    of an enclosing fit, and this must run on one device.
    Top-1 is argmax == label (Keras' SparseCategoricalAccuracy), top-5 tf.math.in_top_k
    (SparseTopKCategoricalAccuracy); the loss is softmax cross-entropy of the logits."""

    def __init__(self, model):
        self.model = model

        @tf.function(reduce_retracing=True)
        def sums(images, labels):
            logits = tf.cast(self.model(images, training=False), tf.float32)
            labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                           tf.float64)
            top5 = tf.cast(tf.math.in_top_k(labels, logits, 5), tf.float64)
            return (tf.reduce_sum(tf.cast(ce, tf.float64)), tf.reduce_sum(top1),
                    tf.reduce_sum(top5), tf.size(labels))
        self._sums = sums

    def __call__(self, dataset, verbose=0):
        """{"loss", "top1", "top5", "examples"}; `verbose` shows a Keras progress bar."""
        loss = top1 = top5 = 0.0
        count = 0
        batches = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
        progress = (tf.keras.utils.Progbar(batches if batches >= 0 else None, unit_name="batch",
                                           stateful_metrics=["top1"])
                    if verbose else None)
        step = 0
        for step, (images, labels) in enumerate(dataset, start=1):
            batch = self._sums(images, labels)
            loss, top1, top5 = loss + float(batch[0]), top1 + float(batch[1]), \
                top5 + float(batch[2])
            count += int(batch[3])
            if progress is not None:
                progress.update(step, [("top1", top1 / count)])
        if progress is not None and count:
            progress.update(step, [("top1", top1 / count)], finalize=True)
        if not count:
            raise ValueError("no examples to score (empty split)")
        return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count,
                "examples": count}


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
    """Every `freq` epochs: copy the trained network into the one-device twin of
    `scorer` and put its scores on `dataset` into the epoch logs (val_loss, val_top1,
    val_top5)."""

    def __init__(self, scorer, dataset, freq=1):
        super().__init__()
        self.scorer, self.dataset, self.freq = scorer, dataset, int(freq)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.freq or (epoch + 1) % self.freq:
            return
        copy_weights(self.model, self.scorer.model)
        scores = self.scorer(self.dataset)
        logs.update({f"val_{k}": scores[k] for k in ("loss", "top1", "top5")})
