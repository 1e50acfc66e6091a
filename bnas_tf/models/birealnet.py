"""Bi-Real Net (Liu et al., ECCV 2018), built from Larq layers as larq-zoo builds it.

ResNet-18/34 with one binary 3x3 conv per block, each wrapped by its own real-valued
identity shortcut: ``x -> sign -> binary conv -> BN -> + x`` (no ReLU). The
channel-doubling shortcut is 2x2 average pooling, a float 1x1 conv and BN. The
first conv (7x7/2 + BN + 3x3/2 max pool on ImageNet; 3x3/1 + BN on CIFAR, 32 px
kept) and the dense classifier stay float. Quantizers (larq-zoo
``literature.BiRealNet``): ``approx_sign`` activations (Bi-Real's piecewise
polynomial gradient), ``magnitude_aware_sign`` weights (sign times mean |W| per
output channel), latent weights clipped to [-1, 1]. Binary convs pad with +1 so
LCE converts each to one LceBconv2d (larq-zoo pads with 0; the count is the same).

Spec (family ``birealnet``)::

    {"family": "birealnet", "depth": 18 | 34, "channels": 64,
     "stem": "imagenet" | "cifar"}

Costs at 224 px / 1000 classes (docs/costs.md): 137.8M FLOPs + 1676.3M BiOPs / 64
= 164.0M OPs (paper: 1.39e8 + 1.68e9 / 64 = 1.63e8).
"""
from __future__ import annotations

import dataclasses

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary
from bnas_tf.models import common, presets

FAMILY = "birealnet"
BLOCKS = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # binary 3x3 convs per stage
STEMS = ("imagenet", "cifar")


@dataclasses.dataclass(frozen=True)
class BiRealNet:
    """One Bi-Real network: its sizes and its quantizers, named once."""

    depth: int = 18
    channels: int = 64
    stem: str = "imagenet"
    binary: bool = True
    momentum: float = 0.8  # larq-zoo's BatchNormalization(momentum=0.8)
    kernel_initializer: str = "glorot_normal"

    def __post_init__(self):
        if self.depth not in BLOCKS:
            raise ValueError(f"{FAMILY}: depth must be one of "
                             f"{', '.join(map(str, BLOCKS))}, got {self.depth}")
        if self.stem not in STEMS:
            raise ValueError(f"{FAMILY}: unknown stem {self.stem!r}; choose one of "
                             f"{', '.join(STEMS)}")
        if self.channels < 1:
            raise ValueError(f"{FAMILY}: channels must be positive, got {self.channels}")

    def input_quantizer(self):
        return lq.quantizers.ApproxSign() if self.binary else None

    def kernel_quantizer(self):
        return lq.quantizers.MagnitudeAwareSign() if self.binary else None

    def kernel_constraint(self):
        return lq.constraints.WeightClip(1.0) if self.binary else None

    def batchnorm(self, name):
        return tf.keras.layers.BatchNormalization(momentum=self.momentum, name=name)

    def binary_conv(self, filters, strides, name):
        return binary.QuantConv2D(
            filters, 3, strides=strides, padding="same",
            pad_values=1.0 if self.binary else 0.0, use_bias=False,
            input_quantizer=self.input_quantizer(), kernel_quantizer=self.kernel_quantizer(),
            kernel_constraint=self.kernel_constraint(),
            kernel_initializer=self.kernel_initializer, name=name)

    def residual_block(self, x, filters, name):
        """sign -> binary 3x3 conv (stride 2 when the width doubles) -> BN, + shortcut."""
        shortcut = x
        strides = 1
        if x.shape[-1] != filters:
            strides = 2
            shortcut = tf.keras.layers.AvgPool2D(2, 2, padding="same",
                                                 name=f"{name}_pool")(shortcut)
            shortcut = tf.keras.layers.Conv2D(filters, 1, use_bias=False,
                                              kernel_initializer=self.kernel_initializer,
                                              name=f"{name}_downsample")(shortcut)
            shortcut = self.batchnorm(f"{name}_downsample_bn")(shortcut)
        y = self.binary_conv(filters, strides, f"{name}_conv")(x)
        y = self.batchnorm(f"{name}_bn")(y)
        return tf.keras.layers.Add(name=f"{name}_add")([y, shortcut])

    def stem_layers(self, x):
        if self.stem == "imagenet":
            x = tf.keras.layers.Conv2D(self.channels, 7, 2, padding="same", use_bias=False,
                                       kernel_initializer=self.kernel_initializer,
                                       name="stem_conv")(x)
            x = self.batchnorm("stem_bn")(x)
            return tf.keras.layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)
        x = tf.keras.layers.Conv2D(self.channels, 3, padding="same", use_bias=False,
                                   kernel_initializer=self.kernel_initializer,
                                   name="stem_conv")(x)
        return self.batchnorm("stem_bn")(x)

    def body(self, inputs):
        """NHWC images -> (features, per-stage outputs)."""
        x = self.stem_layers(inputs)
        outs = []
        for s, n in enumerate(BLOCKS[self.depth]):
            for b in range(n):
                x = self.residual_block(x, self.channels * 2 ** s,
                                        f"stage{s + 1}_block{b + 1}")
            outs.append(x)
        return x, outs


def build(spec, num_classes, image_size, auxiliary=False, binarization=binary.XNOR, name=None):
    """Bi-Real Net of `spec` on (image_size, image_size, 3) images -> `num_classes` logits.

    Raises ValueError for an unknown depth/stem, cells, or a binarization other
    than the network's own or ``float`` (see `common.own_quantizers`).
    """
    net = BiRealNet(depth=int(spec.get("depth", 18)), channels=int(spec.get("channels", 64)),
                    stem=spec.get("stem", "imagenet"),
                    binary=common.own_quantizers(FAMILY, spec, binarization))
    return common.classified_model(net.body, num_classes, image_size, auxiliary,
                                   name=name or spec.get("name") or "birealnet")


PRESETS = {
    "birealnet18": {"family": FAMILY, "depth": 18, "channels": 64, "stem": "imagenet"},
    "birealnet18-cifar": {"family": FAMILY, "depth": 18, "channels": 64, "stem": "cifar"},
}


def _register():
    from bnas_tf import models
    models.register_family(FAMILY, build)
    for preset_name, spec in PRESETS.items():
        presets.register(preset_name, spec)


_register()
