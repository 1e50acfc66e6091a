"""ReActNet-A (Liu et al., ECCV 2020), built from Larq layers.

A binarised MobileNet-V1 (the reference code's ``reactnet``): a float 3x3/2 stem
conv + BN (32 channels; stride 1 on CIFAR, so 32 px images keep full resolution),
13 blocks of widths 64, 128, 128, 256, 256, 512 x 6, 1024 x 2, global average
pooling and a float dense classifier. Each block is two binary convs, each with a
real-valued shortcut and ReActNet's generalised activations:

* ``RSign(x)``  = sign(x + b) (a `LearnableBias` then the binary conv's input quantizer);
* ``RPReLU(x)`` = PReLU(x + b1) + b2 (per-channel PReLU, slope initialised at 0.25);
* 3x3 part: RSign -> binary 3x3 conv (stride 2 where the width doubles, except the
  first block) -> BN, + x (2x2 average-pooled at stride 2) -> RPReLU;
* 1x1 part: RSign -> binary 1x1 conv -> BN, + its input -> RPReLU; where the width
  doubles, two binary 1x1 convs of the input width, each + the input, concatenated.

BatchNorm as PyTorch's defaults (momentum 0.1 there = 0.9 here, epsilon 1e-5).
Quantizers, named once in `ReActNetA`: ``approx_sign`` activations (ReActNet uses
Bi-Real's gradient), ``magnitude_aware_sign`` weights (sign x mean |W| per output
channel, gradient zero where |W| > 1, as the reference's clamp). Deviations from
the reference: latent weights are clipped to [-1, 1] (Larq's guard against weights
stuck where the gradient is zero; the reference leaves them unclipped), and binary
convs pad with +1 (the reference pads the signed input with 0) so LCE converts each
to one LceBconv2d.

Spec (family ``reactnet``)::

    {"family": "reactnet", "channels": 32, "stem": "imagenet" | "cifar"}

``channels`` scales every width (the stem's, 32 in the paper). Costs at 224 px /
1000 classes: 11.9M FLOPs + 4817M BiOPs / 64 = 87.1M OPs (paper 0.12e8 + 4.82e9/64
= 0.87e8), fully binarised.
"""
from __future__ import annotations

import dataclasses

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary
from bnas_tf.models import common, presets

FAMILY = "reactnet"
WIDTHS = (64, 128, 128, 256, 256) + (512,) * 6 + (1024,) * 2  # after the 32-channel stem
STEM_WIDTH = 32
STEMS = ("imagenet", "cifar")


@tf.keras.utils.register_keras_serializable(common.SERIAL)
class LearnableBias(tf.keras.layers.Layer):
    """A learned per-channel shift x + b (ReActNet's "move" in RSign/RPReLU); NHWC."""

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(int(input_shape[-1]),),
                                    initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        return inputs + self.bias


@dataclasses.dataclass(frozen=True)
class ReActNetA:
    """One ReActNet-A: its widths and its quantizers, named once."""

    channels: int = STEM_WIDTH
    stem: str = "imagenet"
    binary: bool = True
    prelu_init: float = 0.25  # PyTorch's nn.PReLU default, which the reference uses
    kernel_initializer: str = "glorot_normal"

    def __post_init__(self):
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

    def width(self, reference_width):
        return max(1, int(round(reference_width * self.channels / STEM_WIDTH)))

    def binary_conv(self, filters, kernel_size, strides, name):
        return binary.QuantConv2D(
            filters, kernel_size, strides=strides, padding="same",
            pad_values=1.0 if self.binary else 0.0, use_bias=False,
            input_quantizer=self.input_quantizer(), kernel_quantizer=self.kernel_quantizer(),
            kernel_constraint=self.kernel_constraint(),
            kernel_initializer=self.kernel_initializer, name=name)

    def rsign_conv(self, x, filters, kernel_size, strides, name):
        """RSign -> binary conv -> BN."""
        y = LearnableBias(name=f"{name}_move")(x)
        y = self.binary_conv(filters, kernel_size, strides, f"{name}_conv")(y)
        return common.batchnorm(f"{name}_bn")(y)

    def rprelu(self, x, name):
        x = LearnableBias(name=f"{name}_move_in")(x)
        x = tf.keras.layers.PReLU(tf.keras.initializers.Constant(self.prelu_init),
                                  shared_axes=[1, 2], name=f"{name}_prelu")(x)
        return LearnableBias(name=f"{name}_move_out")(x)

    def block(self, x, filters, strides, name):
        channels = x.shape[-1]
        if filters not in (channels, 2 * channels):
            raise ValueError(f"{name}: a ReActNet block keeps or doubles the width, "
                             f"got {channels} -> {filters}")
        shortcut = x
        if strides == 2:
            shortcut = tf.keras.layers.AvgPool2D(2, 2, padding="same", name=f"{name}_pool")(x)
        y = self.rsign_conv(x, channels, 3, strides, f"{name}_3x3")
        y = self.rprelu(tf.keras.layers.Add(name=f"{name}_3x3_add")([y, shortcut]),
                        f"{name}_3x3")
        if filters == channels:
            z = self.rsign_conv(y, filters, 1, 1, f"{name}_1x1")
            z = tf.keras.layers.Add(name=f"{name}_1x1_add")([z, y])
        else:
            halves = [tf.keras.layers.Add(name=f"{name}_1x1_{i}_add")(
                [self.rsign_conv(y, channels, 1, 1, f"{name}_1x1_{i}"), y]) for i in range(2)]
            z = tf.keras.layers.Concatenate(name=f"{name}_concat")(halves)
        return self.rprelu(z, f"{name}_1x1")

    def body(self, inputs):
        """NHWC images -> (features, outputs of the blocks that end a resolution)."""
        x = tf.keras.layers.Conv2D(self.width(STEM_WIDTH), 3,
                                   2 if self.stem == "imagenet" else 1, padding="same",
                                   use_bias=False, kernel_initializer="he_normal",
                                   name="stem_conv")(inputs)
        x = common.batchnorm("stem_bn")(x)
        outs = []
        for i, reference in enumerate(WIDTHS):
            filters = self.width(reference)
            # The width doubles at stride 2, except in the first block (32 -> 64).
            strides = 2 if filters != x.shape[-1] and i > 0 else 1
            if strides == 2:
                outs.append(x)
            x = self.block(x, filters, strides, f"block{i + 1}")
        return x, outs + [x]


def build(spec, num_classes, image_size, auxiliary=False, binarization=binary.XNOR, name=None):
    """ReActNet-A of `spec` on (image_size, image_size, 3) images -> `num_classes` logits.

    Raises ValueError for an unknown stem, cells, or a binarization other than the
    network's own or ``float`` (see `common.own_quantizers`).
    """
    net = ReActNetA(channels=int(spec.get("channels", STEM_WIDTH)),
                    stem=spec.get("stem", "imagenet"),
                    binary=common.own_quantizers(FAMILY, spec, binarization))
    return common.classified_model(net.body, num_classes, image_size, auxiliary,
                                   name=name or spec.get("name") or "reactnet_a")


PRESETS = {
    "reactnet-a": {"family": FAMILY, "channels": STEM_WIDTH, "stem": "imagenet"},
    "reactnet-a-cifar": {"family": FAMILY, "channels": STEM_WIDTH, "stem": "cifar"},
}


def _register():
    from bnas_tf import models
    models.register_family(FAMILY, build)
    for preset_name, spec in PRESETS.items():
        presets.register(preset_name, spec)


_register()
