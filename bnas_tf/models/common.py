"""Pieces every network family shares: float stems, classifier, auxiliary head, drop-path."""
from __future__ import annotations

import zlib

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary

SERIAL = binary.SERIAL


def batchnorm(name=None, affine=True):
    return tf.keras.layers.BatchNormalization(center=affine, scale=affine, momentum=0.9,
                                              epsilon=1e-5, name=name)


def float_conv(filters, kernel_size, strides=1, name=None, use_bias=False):
    return tf.keras.layers.Conv2D(filters, kernel_size, strides, padding="same",
                                  use_bias=use_bias, kernel_initializer="he_normal", name=name)


STEMS = ("auto", "cifar", "imagenet")


def resolve_stem(stem, image_size):
    """'cifar' or 'imagenet' for `stem` ('auto': the ImageNet stem, 1/8 resolution,
    for images of 128 pixels and more; the CIFAR stem, full resolution, below)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    if stem == "auto":
        return "imagenet" if int(image_size) >= 128 else "cifar"
    return stem


def cifar_stem(x, filters, name="stem"):
    """Float 3x3 conv + BN (the DARTS/BNAS CIFAR stem)."""
    x = float_conv(filters, 3, name=f"{name}_conv")(x)
    return batchnorm(f"{name}_bn")(x)


def imagenet_stem(x, channels, name="stem"):
    """Two stride-2 float 3x3 convs (C/2, C), then one more stride-2 3x3 conv.

    Returns (s0, s1): the outputs at 1/4 and 1/8 resolution (DARTS' stem0, stem1).
    """
    x = float_conv(channels // 2, 3, 2, name=f"{name}0_conv0")(x)
    x = tf.keras.layers.ReLU()(batchnorm(f"{name}0_bn0")(x))
    x = float_conv(channels, 3, 2, name=f"{name}0_conv1")(x)
    s0 = batchnorm(f"{name}0_bn1")(x)
    x = float_conv(channels, 3, 2, name=f"{name}1_conv")(tf.keras.layers.ReLU()(s0))
    s1 = batchnorm(f"{name}1_bn")(x)
    return s0, s1


def classifier(x, num_classes, name="classifier"):
    """Global average pooling and a float dense layer (logits)."""
    x = tf.keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return tf.keras.layers.Dense(num_classes, name=name)(x)


def auxiliary_head(x, num_classes, name="aux"):
    """DARTS' float auxiliary tower (applied at 2/3 depth during training)."""
    size = x.shape[1]
    x = tf.keras.layers.ReLU()(x)
    pool = min(5, size) if size <= 8 else size // 2  # 8x8 (CIFAR) -> 2x2, tiny maps -> 1x1
    x = tf.keras.layers.AveragePooling2D(pool, 3 if size <= 8 else 2, padding="valid",
                                         name=f"{name}_pool")(x)
    x = float_conv(128, 1, name=f"{name}_conv0")(x)
    x = tf.keras.layers.ReLU()(batchnorm(f"{name}_bn0")(x))
    x = tf.keras.layers.Conv2D(768, x.shape[1], padding="valid", use_bias=False,
                               name=f"{name}_conv1")(x)
    x = tf.keras.layers.ReLU()(batchnorm(f"{name}_bn1")(x))
    x = tf.keras.layers.Flatten()(x)
    return tf.keras.layers.Dense(num_classes, name=f"{name}_logits")(x)


@tf.keras.utils.register_keras_serializable(SERIAL)
class DropPath(tf.keras.layers.Layer):
    """Drops a whole sample's branch with probability `rate` during training.

    The rate lives in a non-trainable weight so a callback can raise it over the
    epochs (DARTS: drop_path_prob * epoch / epochs) without retracing. The mask is
    stateless random, seeded by the layer's name and the batch's content: it carries
    no random state, so a resumed run draws the masks an uninterrupted run draws.
    """

    def build(self, input_shape):
        self.rate = self.add_weight(name="rate", shape=(), initializer="zeros",
                                    trainable=False)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        keep = 1.0 - self.rate
        shape = tf.stack([tf.shape(inputs)[0], 1, 1, 1])
        content = tf.bitcast(tf.reduce_sum(tf.cast(inputs, tf.float32)), tf.int32)
        seed = tf.stack([tf.constant(zlib.crc32(self.name.encode()) & 0x7FFFFFFF), content])
        mask = tf.floor(keep + tf.random.stateless_uniform(shape, seed, dtype=inputs.dtype))
        # inputs / keep * mask as ONE pass over the batch (forward and backward): the
        # divisor keep / mask is keep for a kept sample, inf (a 0 result) for a dropped
        # one, so the values are those of the two-op form bit for bit; at rate 0 the
        # mask is 1 and keep 1, the identity.
        return inputs / (keep / mask)


def set_drop_path(model, rate):
    """Set the drop-path rate of every DropPath layer inside `model`."""
    for layer in model.submodules:
        if isinstance(layer, DropPath) and layer.built:
            layer.rate.assign(rate)


def own_quantizers(family, spec, binarization):
    """True: build `family` with its own quantizers; False: its float twin.

    Hand-designed binary networks (Bi-Real, ReActNet, QuickNet) name their
    quantizers once, in their own module, as their papers/larq-zoo do; of the
    `binary.SCHEMES` they honour only ``float`` (the float twin, used by export's
    size comparison). Raises ValueError for any other scheme (in the spec or passed
    in), and for the cell-network settings ``cells``, ``genotype`` and ``residual``
    (these networks have no cells).
    """
    for key in ("cells", "genotype", "residual"):
        if spec.get(key) is not None:
            raise ValueError(f"{family} networks have no cells, so no '{key}' "
                             f"(--{key}); set 'channels' instead")
    binarization = binary.scheme(binarization)
    named = spec.get("binarization")
    if named not in (None, "float") or binarization not in (binary.XNOR, binary.FLOAT):
        given = named or next((k for k, v in binary.SCHEMES.items() if v == binarization),
                              binarization)
        raise ValueError(f"{family} uses its own quantizers (see bnas_tf/models/{family}.py); "
                         f"--binarization can only be 'float' (its float twin), got {given}")
    return binarization.enabled and named != "float"



def classified_model(body, num_classes, image_size, auxiliary=False, name=None):
    """A Keras Model: (image_size, image_size, 3) images -> `body` -> `classifier` logits.

    `body(inputs)` returns (features, per-stage outputs); with `auxiliary` the model
    has a second output, `auxiliary_head` on the stage output at 2/3 of the depth.
    """
    inputs = tf.keras.Input((image_size, image_size, 3), name="image")
    x, stage_outputs = body(inputs)
    outputs = classifier(x, num_classes)
    if auxiliary:
        aux_at = stage_outputs[max(0, -(-2 * len(stage_outputs) // 3) - 1)]
        outputs = [outputs, auxiliary_head(aux_at, num_classes)]
    return tf.keras.Model(inputs, outputs, name=name)
