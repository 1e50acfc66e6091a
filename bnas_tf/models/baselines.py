"""Hand-crafted binary baselines: XNOR-Net / BinaryNet ResNets, Wide ResNet, NiN.

The papers' comparison networks (BNAS Tables 6/7, BARS Table 2), binarised with
the XNOR-Net recipe: the first conv and the classifier stay float, every other
conv is a `binary.BinaryConv` (BN -> sign -> conv -> ReLU) whose conv is a Larq
QuantConv2D built by `binary.quant_conv` (ste_sign input, sign-family kernel,
+1 padding, no bias), so LCE converts it to a binary conv.

Spec (family ``baseline``)::

    {"family": "baseline", "arch": "resnet" | "wrn" | "nin", "depth": 18,
     "channels": 64, "width": 4, "stem": "cifar" | "imagenet",
     "downsample": "float" | "binary" | "improved", "binarization": "xnor"}

* ``resnet``: basic blocks, depth 18 ([2, 2, 2, 2]) or 34 ([3, 4, 6, 3]),
  stages ``channels * (1, 2, 4, 8)``; the CIFAR stem is one 3x3 conv (kuangliu's
  pytorch-cifar layout), the ImageNet stem a 7x7 stride-2 conv and a 3x3
  stride-2 max pool.
* ``wrn``: Wide ResNet-`depth`-`width` for CIFAR ((depth - 4) / 6 blocks per
  stage, stages ``channels * width * (1, 2, 4)``, ``channels`` = 16).
* ``nin``: XNOR-Net's Network-in-Network for CIFAR (float 5x5 stem conv, binary
  1x1/5x5/3x3 convs, float 1x1 classifier conv + global average pooling), its
  widths scaled by ``channels / 192``.

``downsample`` is the channel-changing shortcut of a residual block: a float 1x1
conv (``float``, what most BNNs keep), a binary 1x1 conv (``binary``), or BARS'
binary factorised reduce (``improved``; two 1x1 stride-2 binary convs on
staggered inputs with AvgPool shortcuts).
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary
from bnas_tf.models import common, presets

FAMILY = "baseline"
ARCHS = ("resnet", "wrn", "nin")
DOWNSAMPLES = {"float": "float", "binary": "plain", "improved": "improved"}
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("cifar", "imagenet")
DEFAULT_CHANNELS = {"resnet": 64, "wrn": 16, "nin": 192}


def _check(spec):
    arch = spec.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"baseline: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if "cells" in spec:
        raise ValueError("baseline networks have no cells; set 'depth' (and 'channels') instead")
    kind = spec.get("downsample", "float")
    if kind not in DOWNSAMPLES:
        raise ValueError(f"baseline: unknown downsample {kind!r}; choose one of "
                         f"{', '.join(DOWNSAMPLES)}")
    stem = spec.get("stem", "cifar")
    if stem not in STEMS:
        raise ValueError(f"baseline: unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    channels = int(spec.get("channels", DEFAULT_CHANNELS[arch]))
    if channels < 1:
        raise ValueError(f"baseline: channels must be positive, got {channels}")
    return arch, kind, stem, channels


def shortcut(x, filters, stride, kind, binarization, name):
    """Identity, or the projection shortcut of a block that changes shape."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    if stride == 2:
        return binary.BinaryDownsample(filters, DOWNSAMPLES[kind], binarization,
                                       kernel_size=1, name=name)(x)
    if stride != 1:
        raise ValueError(f"{name}: shortcut stride must be 1 or 2, got {stride}")
    # Stride 1 with more channels (WRN's first block): a 1x1 conv, float or binary.
    scheme = binary.FLOAT if kind == "float" else binarization
    return binary.BinaryConv(filters, 1, binarization=scheme, relu=False, name=name)(x)


def basic_block(x, filters, stride, kind, binarization, name):
    """Two binary 3x3 convs (BN -> sign -> conv -> ReLU) plus the shortcut."""
    residual = shortcut(x, filters, stride, kind, binarization, f"{name}_shortcut")
    y = binary.BinaryConv(filters, 3, stride, binarization=binarization, name=f"{name}_conv1")(x)
    y = binary.BinaryConv(filters, 3, 1, binarization=binarization, name=f"{name}_conv2")(y)
    return tf.keras.layers.Add(name=f"{name}_add")([y, residual])


def _stem(x, channels, stem):
    if stem == "imagenet":
        x = tf.keras.layers.Conv2D(channels, 7, 2, padding="same", use_bias=False,
                                   kernel_initializer="he_normal", name="stem_conv")(x)
        x = tf.keras.layers.ReLU(name="stem_relu")(common.batchnorm("stem_bn")(x))
        return tf.keras.layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)
    x = common.float_conv(channels, 3, name="stem_conv")(x)
    return tf.keras.layers.ReLU(name="stem_relu")(common.batchnorm("stem_bn")(x))


def _stages(x, widths, blocks, kind, binarization, first_stride=1):
    """Residual stages; returns the output and the per-stage outputs."""
    outs = []
    for s, (filters, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            stride = (first_stride if s == 0 else 2) if b == 0 else 1
            x = basic_block(x, filters, stride, kind, binarization, f"stage{s + 1}_block{b + 1}")
        outs.append(x)
    return x, outs


def _resnet(inputs, spec, binarization):
    _, kind, stem, channels = _check(spec)
    depth = int(spec.get("depth", 18))
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"baseline resnet: depth must be one of "
                         f"{', '.join(map(str, RESNET_BLOCKS))}, got {depth}")
    x = _stem(inputs, channels, stem)
    widths = [channels * m for m in (1, 2, 4, 8)]
    return _stages(x, widths, RESNET_BLOCKS[depth], kind, binarization)


def _wrn(inputs, spec, binarization):
    _, kind, stem, channels = _check(spec)
    depth, width = int(spec.get("depth", 40)), int(spec.get("width", 4))
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"baseline wrn: depth must be 6n + 4 (n >= 1), got {depth}")
    if width < 1:
        raise ValueError(f"baseline wrn: width must be positive, got {width}")
    x = _stem(inputs, channels, stem)
    n = (depth - 4) // 6
    widths = [channels * width * m for m in (1, 2, 4)]
    return _stages(x, widths, (n, n, n), kind, binarization)


NIN_LAYOUT = (  # (filters at channels=192, kernel), then a pool after each group
    ((160, 1), (96, 1)), ((192, 5), (192, 1), (192, 1)), ((192, 3), (192, 1)))


def _nin(inputs, spec, binarization):
    _, _, stem, channels = _check(spec)
    scale = channels / 192.0

    def width(f):
        return max(1, int(round(f * scale)))

    x = _stem_nin(inputs, width(192), stem)
    outs = []
    for g, group in enumerate(NIN_LAYOUT):
        for i, (filters, kernel) in enumerate(group):
            x = binary.BinaryConv(width(filters), kernel, binarization=binarization,
                                  name=f"group{g + 1}_conv{i + 1}")(x)
        if g == 0:
            x = tf.keras.layers.MaxPool2D(3, 2, padding="same", name="group1_pool")(x)
        elif g == 1:
            x = tf.keras.layers.AveragePooling2D(3, 2, padding="same", name="group2_pool")(x)
        outs.append(x)
    return x, outs


def _stem_nin(x, filters, stem):
    if stem != "cifar":
        raise ValueError("baseline nin: only the CIFAR layout is implemented (stem 'cifar')")
    x = tf.keras.layers.Conv2D(filters, 5, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name="stem_conv")(x)
    return tf.keras.layers.ReLU(name="stem_relu")(common.batchnorm("stem_bn")(x))


def _nin_classifier(x, num_classes):
    """NiN's head: BN, a float 1x1 conv to the classes, global average pooling."""
    x = common.batchnorm("classifier_bn")(x)
    x = tf.keras.layers.Conv2D(num_classes, 1, name="classifier_conv")(x)
    return tf.keras.layers.GlobalAveragePooling2D(name="classifier")(x)


BODIES = {"resnet": _resnet, "wrn": _wrn, "nin": _nin}


def build(spec, num_classes, image_size, auxiliary=False, binarization=binary.XNOR, name=None):
    """The baseline network of `spec` as a Keras Model (two outputs with `auxiliary`)."""
    arch = _check(spec)[0]
    binarization = binary.scheme(binarization)
    inputs = tf.keras.Input((image_size, image_size, 3), name="image")
    x, stage_outputs = BODIES[arch](inputs, spec, binarization)
    logits = (_nin_classifier(x, num_classes) if arch == "nin"
              else common.classifier(x, num_classes))
    outputs = logits
    if auxiliary:  # DARTS-style auxiliary tower at 2/3 of the depth
        aux_at = stage_outputs[max(0, -(-2 * len(stage_outputs) // 3) - 1)]
        outputs = [logits, common.auxiliary_head(aux_at, num_classes)]
    return tf.keras.Model(inputs, outputs, name=name or spec.get("name") or f"xnor_{arch}")


def _resnet_spec(depth, downsample="float", binarization="xnor", stem="cifar"):
    return {"family": FAMILY, "arch": "resnet", "depth": depth, "channels": 64, "stem": stem,
            "downsample": downsample, "binarization": binarization}


BASELINE_PRESETS = {
    "xnor-resnet18": _resnet_spec(18),
    "xnor-resnet18-bds": _resnet_spec(18, "binary"),
    "xnor-resnet18-ids": _resnet_spec(18, "improved"),
    "xnor-resnet34": _resnet_spec(34),
    "binarynet-resnet18": _resnet_spec(18, binarization="binarynet"),
    "xnor-wrn40": {"family": FAMILY, "arch": "wrn", "depth": 40, "width": 4, "channels": 16,
                   "stem": "cifar", "downsample": "float", "binarization": "xnor"},
    "xnor-nin": {"family": FAMILY, "arch": "nin", "channels": 192, "stem": "cifar",
                 "binarization": "xnor"},
    # XNOR-Net's ImageNet ResNet-18 binarised its downsampling convs (BNAS Table 7);
    # BARS Table 2 also lists the float-downsample ("-fpds") variant.
    "xnor-resnet18-imagenet": _resnet_spec(18, "binary", stem="imagenet"),
    "xnor-resnet18-imagenet-fpds": _resnet_spec(18, "float", stem="imagenet"),
}


def _register():
    from bnas_tf import models
    models.register_family(FAMILY, build)
    for preset_name, spec in BASELINE_PRESETS.items():
        presets.register(preset_name, spec)


_register()
