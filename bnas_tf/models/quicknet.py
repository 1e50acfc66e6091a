"""QuickNet and QuickNet-Small (larq-zoo ``sota``, v1.0), built from Larq layers.

Plumerai's network designed for LCE inference (larq-zoo ``larq_zoo/sota/quicknet.py``):

* stem: float 3x3/2 conv to C/4 + BN + ReLU, float depthwise 3x3/2 + BN (no
  scale/centre), float 1x1 conv to C + BN (1/4 resolution);
* four sections of residual blocks ``x + BN(ReLU(binary 3x3 conv(x)))``;
* between sections a transition block: ReLU, 2x2 max pool at stride 1 (valid), a
  fixed (non-trainable) 3x3 blur-pool depthwise conv at stride 2 ([1, 2, 1] outer
  product, "Making Convolutional Networks Shift-Invariant Again"), a float 1x1 conv
  to the new width and BN;
* ReLU, global average pooling and a float dense classifier.

Quantizers, named once in `QuickNet`: ``ste_sign`` with clip 1.25 on activations and
weights, latent weights clipped to [-1.25, 1.25]; binary convs pad with +1 (as
larq-zoo) so LCE converts each to one LceBconv2d.

Spec (family ``quicknet``)::

    {"family": "quicknet", "section_blocks": [4, 4, 4, 4],
     "section_filters": [64, 128, 256, 512], "channels": 64}

``channels`` (the first section's width) scales every section. larq-zoo's docs:
QuickNet 13,234,088 parameters (63.3% top-1), QuickNet-Small (sections 32, 64, 256,
512) 12,655,688 (59.4%); Keras' count, BN moving statistics and the blur-pool
kernels included (our ``total_params``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary
from bnas_tf.models import common, presets

FAMILY = "quicknet"


@tf.keras.utils.register_keras_serializable(common.SERIAL)
class BlurPool(tf.keras.initializers.Initializer):
    """A depthwise kernel (k, k, C, 1) of the normalised binomial filter (k = 2, 3 or 5)."""

    TAPS = {2: (1, 1), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1)}

    def __call__(self, shape, dtype=None, **kwargs):
        size, channels = int(shape[0]), int(shape[2])
        if size not in self.TAPS or shape[1] != size:
            raise ValueError(f"blur pool: kernel size must be one of 2, 3, 5, got {shape[:2]}")
        taps = np.array(self.TAPS[size], dtype=np.float64)
        kernel = np.outer(taps, taps) / np.sum(taps) ** 2
        kernel = np.repeat(kernel[:, :, None, None], channels, axis=2)
        return tf.constant(np.reshape(kernel, shape), dtype=dtype or tf.float32)


@dataclasses.dataclass(frozen=True)
class QuickNet:
    """One QuickNet: its sections and its quantizers, named once."""

    section_blocks: tuple = (4, 4, 4, 4)
    section_filters: tuple = (64, 128, 256, 512)
    binary: bool = True
    clip_value: float = 1.25

    def __post_init__(self):
        if len(self.section_blocks) != len(self.section_filters) or not self.section_blocks:
            raise ValueError(f"{FAMILY}: section_blocks and section_filters need the same, "
                             f"non-zero length, got {list(self.section_blocks)} and "
                             f"{list(self.section_filters)}")
        if any(int(b) < 1 for b in self.section_blocks):
            raise ValueError(f"{FAMILY}: every section needs at least one block")
        if self.section_filters[0] % 4 or min(self.section_filters) < 4:
            raise ValueError(f"{FAMILY}: the first section's width must be a multiple of 4 "
                             f"(the stem starts at a quarter of it), got "
                             f"{list(self.section_filters)}")

    def input_quantizer(self):
        return lq.quantizers.SteSign(clip_value=self.clip_value) if self.binary else None

    def kernel_quantizer(self):
        return lq.quantizers.SteSign(clip_value=self.clip_value) if self.binary else None

    def kernel_constraint(self):
        return lq.constraints.WeightClip(clip_value=self.clip_value) if self.binary else None

    @staticmethod
    def batchnorm(name, **kwargs):
        return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name,
                                                  **kwargs)

    def stem_layers(self, x):
        filters = self.section_filters[0]
        x = tf.keras.layers.Conv2D(filters // 4, 3, 2, padding="same", use_bias=False,
                                   kernel_initializer="he_normal", name="stem_conv")(x)
        x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
        x = tf.keras.layers.ReLU(name="stem_relu")(x)
        x = tf.keras.layers.DepthwiseConv2D(3, 2, padding="same", use_bias=False,
                                            name="stem_depthwise")(x)
        x = tf.keras.layers.BatchNormalization(scale=False, center=False,
                                               name="stem_depthwise_bn")(x)
        x = tf.keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                                   name="stem_pointwise")(x)
        return tf.keras.layers.BatchNormalization(name="stem_pointwise_bn")(x)

    def residual_block(self, x, name):
        """x + BN(ReLU(binary 3x3 conv(x))), width unchanged."""
        y = binary.QuantConv2D(
            int(x.shape[-1]), 3, padding="same", pad_values=1.0 if self.binary else 0.0,
            activation="relu", use_bias=False, input_quantizer=self.input_quantizer(),
            kernel_quantizer=self.kernel_quantizer(),
            kernel_constraint=self.kernel_constraint(), kernel_initializer="glorot_normal",
            name=f"{name}_conv")(x)
        y = self.batchnorm(f"{name}_bn")(y)
        return tf.keras.layers.Add(name=f"{name}_add")([y, x])

    def transition_block(self, x, filters, strides, name):
        """ReLU, max pool (stride 1), fixed blur-pool depthwise at `strides`, float 1x1, BN."""
        x = tf.keras.layers.ReLU(name=f"{name}_relu")(x)
        x = tf.keras.layers.MaxPool2D(strides, 1, name=f"{name}_maxpool")(x)
        x = tf.keras.layers.DepthwiseConv2D(3, strides, padding="same", use_bias=False,
                                            depthwise_initializer=BlurPool(), trainable=False,
                                            name=f"{name}_blurpool")(x)
        x = tf.keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="glorot_normal",
                                   name=f"{name}_pointwise")(x)
        return self.batchnorm(f"{name}_bn")(x)

    def body(self, inputs):
        """NHWC images -> (features, per-section outputs)."""
        x = self.stem_layers(inputs)
        outs = []
        for s, (blocks, filters) in enumerate(zip(self.section_blocks, self.section_filters)):
            for b in range(int(blocks)):
                if filters != x.shape[-1]:
                    x = self.transition_block(x, int(filters), 1 if s == 0 else 2,
                                              f"section{s + 1}_transition")
                x = self.residual_block(x, f"section{s + 1}_block{b + 1}")
            outs.append(x)
        return tf.keras.layers.ReLU(name="head_relu")(x), outs


def _sections(spec):
    filters = [int(f) for f in spec.get("section_filters", QuickNet.section_filters)]
    channels = spec.get("channels")
    if channels is not None and int(channels) != filters[0]:
        if int(channels) < 4 or int(channels) % 4:
            raise ValueError(f"{FAMILY}: channels must be a positive multiple of 4, "
                             f"got {channels}")
        filters = [max(4, int(round(f * int(channels) / filters[0]))) for f in filters]
    return tuple(int(b) for b in spec.get("section_blocks", QuickNet.section_blocks)), \
        tuple(filters)


def build(spec, num_classes, image_size, auxiliary=False, binarization=binary.XNOR, name=None):
    """QuickNet of `spec` on (image_size, image_size, 3) images -> `num_classes` logits.

    Raises ValueError for bad sections/channels, cells, or a binarization other than
    the network's own or ``float`` (see `common.own_quantizers`).
    """
    if spec.get("stem", "imagenet") != "imagenet":
        raise ValueError(f"{FAMILY}: only larq-zoo's ImageNet stem exists (stem 'imagenet'), "
                         f"got {spec.get('stem')!r}")
    section_blocks, section_filters = _sections(spec)
    net = QuickNet(section_blocks=section_blocks, section_filters=section_filters,
                   binary=common.own_quantizers(FAMILY, spec, binarization))
    return common.classified_model(net.body, num_classes, image_size, auxiliary,
                                   name=name or spec.get("name") or "quicknet")


PRESETS = {
    "quicknet": {"family": FAMILY, "section_blocks": [4, 4, 4, 4],
                 "section_filters": [64, 128, 256, 512], "channels": 64, "stem": "imagenet"},
    "quicknet-small": {"family": FAMILY, "section_blocks": [4, 4, 4, 4],
                       "section_filters": [32, 64, 256, 512], "channels": 32,
                       "stem": "imagenet"},
}


def _register():
    from bnas_tf import models
    models.register_family(FAMILY, build)
    for preset_name, spec in PRESETS.items():
        presets.register(preset_name, spec)


_register()
