"""XNOR-Net binarisation on Larq quantizers, and the binary building blocks.

A `Binarization` names the quantizers once (as larq-zoo does per model) and is
passed down to every block:

* weights: ``sign(W) * mean|W|`` per output channel (XNOR-Net, BNAS), one
  tensor-wide scale (BARS), or plain ``sign(W)`` (BinaryNet); latent weights are
  clipped to [-1, 1];
* activations: ``ste_sign`` (straight-through, gradient zeroed where |x| > 1),
  optionally multiplied back by the XNOR-Net activation scale K;
* ``enabled=False`` gives the float twin of the same graph (ablations, and the
  size comparison of the exported model).

Block order is BNAS's: BatchNorm -> sign -> conv (no bias) -> ReLU.
"""
from __future__ import annotations

import dataclasses
import os

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

WEIGHT_SCALES = ("channel", "tensor", "none")
SERIAL = "bnas_tf"


@tf.keras.utils.register_keras_serializable(SERIAL)
class TensorScaledSign(lq.quantizers.SteSign):
    """sign(W) times a single tensor-wide scale mean|W| (BARS' XNOR variant)."""

    def call(self, inputs):
        scale = tf.stop_gradient(tf.reduce_mean(tf.abs(inputs)))
        return scale * super().call(inputs)


@dataclasses.dataclass(frozen=True)
class Binarization:
    """How binary convolutions binarise; named once per network, passed down."""

    weight_scale: str = "channel"
    activation_scale: bool = False
    enabled: bool = True
    pad_values: float = 1.0
    weight_clip: float | None = 1.0

    def __post_init__(self):
        if self.weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"unknown weight_scale {self.weight_scale!r}; "
                             f"choose one of {', '.join(WEIGHT_SCALES)}")

    def input_quantizer(self):
        return lq.quantizers.SteSign() if self.enabled else None

    def kernel_quantizer(self):
        if not self.enabled:
            return None
        return {"channel": lq.quantizers.MagnitudeAwareSign,
                "tensor": TensorScaledSign,
                "none": lq.quantizers.SteSign}[self.weight_scale]()

    def kernel_constraint(self):
        if not self.enabled or self.weight_clip is None:
            return None
        return lq.constraints.WeightClip(self.weight_clip)

    def to_dict(self):
        return dataclasses.asdict(self)


XNOR = Binarization()
BARS = Binarization(weight_scale="tensor")
BINARYNET = Binarization(weight_scale="none")
FLOAT = Binarization(enabled=False)
SCHEMES = {"xnor": XNOR, "bars": BARS, "binarynet": BINARYNET, "float": FLOAT}


def scheme(name_or_binarization) -> Binarization:
    """A Binarization from its name ('xnor', 'bars', 'binarynet', 'float') or dict."""
    if isinstance(name_or_binarization, Binarization):
        return name_or_binarization
    if isinstance(name_or_binarization, dict):
        return Binarization(**name_or_binarization)
    try:
        return SCHEMES[name_or_binarization]
    except KeyError:
        raise ValueError(f"unknown binarization {name_or_binarization!r}; "
                         f"choose one of {', '.join(SCHEMES)}") from None


def onednn_disabled():
    """True when TF_ENABLE_ONEDNN_OPTS turns TensorFlow's oneDNN CPU kernels off."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false")


def same_padding(size, kernel, stride=1, dilation=1):
    """(before, after) of TensorFlow's 'SAME' padding along one axis."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


@tf.keras.utils.register_keras_serializable(SERIAL)
class QuantConv2D(lq.layers.QuantConv2D):
    """Larq's QuantConv2D, with dilated convs as one Conv2D(dilations=...) op.

    TensorFlow otherwise lowers a dilated conv to SpaceToBatch -> Conv2D ->
    BatchToSpace; when two dilated convs read the same binarised tensor the
    converter shares the SpaceToBatch and LCE can no longer fuse either into
    LceBconv2d.
    """

    def convolution_op(self, inputs, kernel):
        # Without oneDNN, TensorFlow's Eigen kernels have no gradient for a dilated conv2d.
        if max(self.dilation_rate) == 1 or self.groups != 1 or onednn_disabled():
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, list(self.strides), self.padding.upper(),
                            dilations=list(self.dilation_rate))


# the class quant_conv builds: QuantConv2D, or the training speed variant inside
# fast_binary.building()
CONV_CLASS = [None]


def quant_conv(filters, kernel_size, binarization: Binarization, strides=1,
               dilation_rate=1, groups=1, name=None):
    """A Larq QuantConv2D (no bias, 'same' padding) binarised as `binarization` says
    (`fast_binary.FastQuantConv2D`, its training speed variant, inside
    `fast_binary.building`).

    Padding uses +1 (pad_values) so that LCE turns it into LceBconv2d.
    """
    return (CONV_CLASS[0] or QuantConv2D)(
        filters, kernel_size, strides=strides, padding="same",
        pad_values=binarization.pad_values if binarization.enabled else 0.0,
        dilation_rate=dilation_rate, groups=groups, use_bias=False,
        input_quantizer=binarization.input_quantizer(),
        kernel_quantizer=binarization.kernel_quantizer(),
        kernel_constraint=binarization.kernel_constraint(),
        kernel_initializer="glorot_normal", name=name)


def activation_scale(inputs, kernel_size, strides):
    """XNOR-Net's K: mean over channels of |x|, averaged over each k x k window."""
    mean_abs = tf.reduce_mean(tf.abs(inputs), axis=-1, keepdims=True)
    return tf.nn.avg_pool2d(mean_abs, kernel_size, strides, "SAME")


class _Block(tf.keras.layers.Layer):
    """A layer whose constructor arguments are its config."""

    def __init__(self, **kwargs):
        base = {k: kwargs.pop(k) for k in ("name", "trainable", "dtype") if k in kwargs}
        super().__init__(**base)
        self._config = kwargs

    def get_config(self):
        config = dict(self._config)
        if isinstance(config.get("binarization"), Binarization):
            config["binarization"] = config["binarization"].to_dict()
        return {**super().get_config(), **config}


@tf.keras.utils.register_keras_serializable(SERIAL)
class BinaryConv(_Block):
    """BN -> sign -> conv -> ReLU, with an optional op-level shortcut (BARS).

    Strided dilated convolutions (which TensorFlow refuses in one conv) read only
    every `strides`-th pixel when the dilation equals the stride (BNAS: 2 and 2): they
    run as an undilated conv on those pixels (exactly the same outputs, 1/4 of the
    work of a stride-1 dilated conv, and still one LceBconv2d after conversion);
    other combinations run the dilated conv at stride 1 and subsample its output.
    The shortcut is identity at stride 1 and 2x2 average pooling at stride 2; it
    needs equal channel counts.
    """

    def __init__(self, filters, kernel_size, strides=1, dilation_rate=1,
                 binarization=XNOR, affine=True, relu=True, shortcut=False, groups=1,
                 **kwargs):
        binarization = scheme(binarization)
        super().__init__(filters=filters, kernel_size=kernel_size, strides=strides,
                         dilation_rate=dilation_rate, binarization=binarization,
                         affine=affine, relu=relu, shortcut=shortcut, groups=groups,
                         **kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.binarization, self.use_relu, self.use_shortcut = binarization, relu, shortcut
        dilated_stride = dilation_rate > 1 and strides > 1
        # dilation == stride: the conv reads exactly the pixels of the strided grid
        self.pick = strides if dilated_stride and dilation_rate == strides else 1
        self.subsample = strides if dilated_stride and self.pick == 1 else 1
        self.bn = tf.keras.layers.BatchNormalization(center=affine, scale=affine,
                                                     momentum=0.9, epsilon=1e-5, name="bn")
        self.conv = quant_conv(filters, kernel_size, binarization,
                               strides=1 if dilated_stride else strides,
                               dilation_rate=1 if self.pick > 1 else dilation_rate,
                               groups=groups, name="conv")

    def build(self, input_shape):
        if self.use_shortcut and input_shape[-1] != self.filters:
            raise ValueError(f"{self.name}: an op-level shortcut needs equal channels, "
                             f"got {input_shape[-1]} -> {self.filters}")
        super().build(input_shape)

    def conv_input(self, x):
        """What the conv reads of the normalised input: every `pick`-th pixel when a
        strided dilated conv runs as an undilated one, else all of it."""
        return x[:, ::self.pick, ::self.pick, :] if self.pick > 1 else x

    def call(self, inputs, training=None):
        x = self.bn(inputs, training=training)
        y = self.conv(self.conv_input(x))
        if self.subsample > 1:
            y = y[:, ::self.subsample, ::self.subsample, :]
        if self.binarization.enabled and self.binarization.activation_scale:
            y = y * activation_scale(x, self.kernel_size, self.strides)
        if self.use_relu:
            y = tf.nn.relu(y)
        if self.use_shortcut:
            y = y + shortcut(inputs, self.strides)
        return y


def shortcut(inputs, strides):
    """Identity, or 2x2 average pooling when the block downsamples."""
    if strides == 1:
        return inputs
    return tf.nn.avg_pool2d(inputs, strides, strides, "SAME")


@tf.keras.utils.register_keras_serializable(SERIAL)
class BinarySepConv(_Block):
    """Binary separable conv (depthwise then pointwise), twice as in DARTS' SepConv.

    Only for the BNAS ablation that shows nested binary convs accumulate
    quantization error.
    """

    def __init__(self, filters, kernel_size, strides=1, binarization=XNOR, affine=True,
                 **kwargs):
        binarization = scheme(binarization)
        super().__init__(filters=filters, kernel_size=kernel_size, strides=strides,
                         binarization=binarization, affine=affine, **kwargs)
        self.stages = []
        for i, stride in enumerate((strides, 1)):
            bn = tf.keras.layers.BatchNormalization(center=affine, scale=affine,
                                                    momentum=0.9, epsilon=1e-5, name=f"bn{i}")
            depthwise = lq.layers.QuantDepthwiseConv2D(
                kernel_size, strides=stride, padding="same",
                pad_values=binarization.pad_values if binarization.enabled else 0.0,
                use_bias=False, input_quantizer=binarization.input_quantizer(),
                depthwise_quantizer=binarization.kernel_quantizer(),
                depthwise_constraint=binarization.kernel_constraint(), name=f"dw{i}")
            pointwise = quant_conv(filters, 1, binarization, name=f"pw{i}")
            self.stages.append((bn, depthwise, pointwise))

    def call(self, inputs, training=None):
        x = inputs
        for bn, depthwise, pointwise in self.stages:
            x = tf.nn.relu(pointwise(depthwise(bn(x, training=training))))
        return x


@tf.keras.utils.register_keras_serializable(SERIAL)
class BinaryDownsample(_Block):
    """Channel-changing stride-2 binary block (BARS' fully binary downsampling).

    * ``improved``: two stride-2 binary 3x3 convs on spatially staggered inputs
      (x and x shifted by one pixel), each with a 2x2 AvgPool shortcut, outputs
      concatenated ("binary factorized reduce", BARS Fig. 8);
    * ``plain``: one stride-2 binary 3x3 conv, no shortcut;
    * ``float``: the same single conv in full precision (what most BNNs do).

    The AvgPool shortcut of each half needs C_in == C_out / 2 (the usual doubling);
    when C_in == C_out the pooled input is added to the concatenation instead.
    """

    KINDS = ("improved", "plain", "float")

    def __init__(self, filters, kind="improved", binarization=XNOR, kernel_size=3,
                 **kwargs):
        if kind not in self.KINDS:
            raise ValueError(f"unknown downsample {kind!r}; choose one of "
                             f"{', '.join(self.KINDS)}")
        if kind == "improved" and filters % 2:
            raise ValueError(f"improved downsample needs an even channel count, got {filters}")
        binarization = scheme(binarization)
        super().__init__(filters=filters, kind=kind, binarization=binarization,
                         kernel_size=kernel_size, **kwargs)
        self.filters, self.kind = filters, kind
        if kind == "improved":
            self.halves = [BinaryConv(filters // 2, kernel_size, 2, binarization=binarization,
                                      relu=False, name=f"half{i}") for i in range(2)]
        else:
            self.conv = BinaryConv(filters, kernel_size, 2, relu=False, name="conv",
                                   binarization=binarization if kind == "plain" else FLOAT)

    def call(self, inputs, training=None):
        if self.kind != "improved":
            return self.conv(inputs, training=training)
        channels = inputs.shape[-1]
        shifted = tf.pad(inputs[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
        outs = []
        for half, x in zip(self.halves, (inputs, shifted)):
            y = half(x, training=training)
            if 2 * channels == self.filters:
                y = y + shortcut(x, 2)
            outs.append(y)
        y = tf.concat(outs, axis=-1)
        if channels == self.filters:
            y = y + shortcut(inputs, 2)
        return y


@tf.keras.utils.register_keras_serializable(SERIAL)
class Zeroise(_Block):
    """BNAS's Zeroise: zeros (subsampled at stride 2, `filters` channels if given)."""

    def __init__(self, strides=1, filters=None, **kwargs):
        super().__init__(strides=strides, filters=filters, **kwargs)
        self.strides, self.filters = strides, filters

    def call(self, inputs):
        x = inputs[:, ::self.strides, ::self.strides, :] if self.strides > 1 else inputs
        if self.filters is not None and self.filters != x.shape[-1]:
            x = tf.tile(x[..., :1], [1, 1, 1, self.filters])
        return tf.zeros_like(x)


@tf.keras.utils.register_keras_serializable(SERIAL)
class Pool(_Block):
    """3x3 max or average pooling ('same'), with DARTS' non-affine BN in search."""

    def __init__(self, kind="max", pool_size=3, strides=1, batchnorm=False, **kwargs):
        super().__init__(kind=kind, pool_size=pool_size, strides=strides,
                         batchnorm=batchnorm, **kwargs)
        layer = tf.keras.layers.MaxPool2D if kind == "max" else tf.keras.layers.AveragePooling2D
        self.pool = layer(pool_size, strides, padding="same")
        self.bn = (tf.keras.layers.BatchNormalization(center=False, scale=False, momentum=0.9,
                                                      epsilon=1e-5, name="bn")
                   if batchnorm else None)

    def call(self, inputs, training=None):
        x = self.pool(inputs)
        return self.bn(x, training=training) if self.bn is not None else x


@tf.keras.utils.register_keras_serializable(SERIAL)
class SkipConnect(_Block):
    """The identity op (DARTS' ``skip_connect``). Not named ``Identity``: that is a
    built-in TF-Keras layer, and saving a model holding a same-named class logs a
    warning per layer (tf_keras saved_model/save.py)."""

    def call(self, inputs):
        return inputs
