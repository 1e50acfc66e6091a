"""The speed variant of the binary conv for training final networks.

`binary.QuantConv2D` (Larq's QuantConv2D: sign(x), pad with +1, conv with the
quantised kernel) is the readable layer, and the one every saved, evaluated and
exported network holds. `FastQuantConv2D` computes the same function with the same
variables, faster on CPUs with native bfloat16, and is used only while training
(`TrainConfig.conv_dtype`, tools/train.py ``--train_conv_dtype``):

* the +-1 operands run in bfloat16, which represents them exactly; oneDNN multiplies
  them exactly and accumulates in float32; the conv's integer result is rounded to
  bfloat16 (8 significant bits: a relative error <= 2^-9), then widened to float32;
* the +1 padding as a shift: the conv reads ``sign(x) - 1`` (in {-2, 0}) with zero
  padding, and a per-output-channel bias ``1 * sum(kernel taps)`` adds what the +1
  border contributed (`padding_bias`: exact at every position, stride and
  dilation), so no padded copy of the batch is made;
* the kernel is quantised once per call into +-1 signs and a per-output-channel
  scale (`kernel_signs`), the scale applied to the float32 result;
* with +1 padding the shifted signs ``sign(x) - 1`` are ``-2 * [x < 0]``: the conv
  reads the indicator (one comparison, no sign, add, sign and subtraction) against
  ``-2 * signs``, its gradient written out (`shifted_sign_conv`), the
  straight-through mask in one op (`clipped_gradient`); bit for bit the same values;
* on maps of at most 16 positions the filter gradient as patches and one matmul
  (`filter_gradient`), faster there than oneDNN's filter-gradient conv;
* channels of the input that are 0 whatever the data (BNAS-A's first-stage cell
  outputs) are not convolved: after batch norm they are its beta, so their share of a
  1x1 conv (or of a float conv that pads nothing) is a constant
  (`zero_tail_binary_conv`, `zero_tail_float_conv`, called by `models.bnas`).

Gradients are the readable layer's (straight-through sign of the input and kernel),
up to the bfloat16 rounding of the incoming gradient and of the filter gradient
(tests/test_fast_binary.py: within 2% of the largest entry), and up to ReLU's kink:
where the exact conv result is 0 (4-9% of positions) the variant computes 0, while
Larq's conv with the scaled kernel leaves +-1e-8 of rounding noise that a following
ReLU passes the gradient through, or not, by chance.
The same technique runs the BNAS search's fused cell (search/bnas/fused.py;
measurements in docs/benchmark.md).

`building(conv_dtype)` is the one switch: inside it `binary.quant_conv` makes
`FastQuantConv2D` layers; `precision.float32_twin` rebuilds a network that has them
(`uses_fast_convs`) with readable layers and the same weights: what training
evaluates, saves and exports.
"""
from __future__ import annotations

import contextlib

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary

CONV_DTYPES = ("auto", "float32", "bfloat16")


def kernel_signs(quantizer, kernel, parts=1):
    """(signs, scale): +-1 kernel and per-output-channel scale >= 0 (no gradient) with
    ``quantizer(k) == scale * signs`` for each of the `parts` equal slices k of the
    kernel along its output axis (each slice is one edge's kernel in a grouped conv),
    with the quantizer's straight-through gradient. None for quantizers it does not
    know (Larq's MagnitudeAwareSign: XNOR-Net, one scale per output channel;
    `binary.TensorScaledSign`: BARS, one per kernel; SteSign: BinaryNet, none)."""
    if quantizer is None:
        return None
    channels = kernel.shape[-1]
    if isinstance(quantizer, binary.TensorScaledSign):  # one scale per edge's kernel
        signs = lq.quantizers.ste_sign(kernel, clip_value=quantizer.clip_value)
        per_part = tf.reduce_mean(tf.abs(tf.reshape(kernel, [-1, parts, channels // parts])),
                                  axis=[0, 2])
        return signs, tf.stop_gradient(tf.repeat(per_part, channels // parts))
    if isinstance(quantizer, lq.quantizers.MagnitudeAwareSign):  # XNOR: one per channel
        signs = lq.quantizers.ste_sign(kernel, clip_value=quantizer.clip_value)
        return signs, tf.stop_gradient(tf.reduce_mean(tf.abs(kernel), axis=[0, 1, 2]))
    if type(quantizer) is lq.quantizers.SteSign:  # noqa: E721  (BinaryNet: no scale)
        return quantizer(kernel), tf.ones([channels])
    return None


def padding_bias(signs, pad_value):
    """Per output channel, what a 'SAME' border of `pad_value` adds to a conv once its
    input is shifted by -pad_value: conv(x padded with p) = conv((x - p) padded with 0)
    + p * (sum of the kernel's taps), exactly, at every position, stride and
    dilation. None when the padding value is 0."""
    if not pad_value:
        return None
    return float(pad_value) * tf.reduce_sum(signs, axis=[0, 1, 2])


def clipped_gradient(x, dy, clip_value):
    """``dy`` where ``|x| <= clip_value``, else 0 (Larq's ste_sign gradient; float32
    NHWC `x`, `dy`), in one pass instead of Larq's three (abs, compare, select):
    TensorFlow's fake-quantisation gradient passes ``dy`` where ``min <= x <= max``,
    and with 2 bits, narrow range, the range [-c, c] is its own nudged range exactly
    (scale c, zero point 2), so the mask is Larq's bit for bit (but the sign of
    zeros)."""
    c = float(clip_value)
    return tf.raw_ops.FakeQuantWithMinMaxArgsGradient(gradients=dy, inputs=x, min=-c, max=c,
                                                      num_bits=2, narrow_range=True)


def shifted_sign_conv(x, signs, clip_value, strides, dilations, dtype=tf.bfloat16):
    """``conv(sign(x) - 1, signs)`` ('SAME', zero padding; NHWC float32 `x`, HWIO +-1
    `signs`; result in `dtype`) with Larq's ste_sign gradient, in fewer passes over the
    activations than ste_sign, a subtraction and a cast: ``sign(x) - 1`` is
    ``-2 * [x < 0]`` (sign(0) = 1, as Larq's), so the conv reads the indicator
    (one comparison and one cast) with the kernel ``-2 * signs`` (exact in bfloat16).
    The gradient is written out: the input's is ``conv_transpose(dy, signs)`` where
    ``|x| <= clip_value`` and 0 elsewhere (`clip_value` None: everywhere), the
    kernel's ``-2 * conv_filter_gradient([x < 0], dy)`` (`filter_gradient`); both
    equal, bit for bit, those of the straightforward form (the factors are powers of
    two), but on the small maps where `filter_gradient` takes its matmul form: there the
    kernel gradient's float32 sums run in another order before the rounding."""
    strides = [1, *strides, 1]
    dilations = [1, *dilations, 1]

    @tf.custom_gradient
    def conv(x, signs):
        negative = tf.cast(x < 0, dtype)
        kernel = tf.cast(signs, dtype)
        y = tf.nn.conv2d(negative, -2 * kernel, strides, "SAME", dilations=dilations)

        def grad(dy):
            dx = tf.cast(tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=strides,
                padding="SAME", dilations=dilations), x.dtype)
            if clip_value is not None:
                dx = clipped_gradient(x, dx, clip_value)
            dk = filter_gradient(negative, dy, signs.shape, strides, dilations)
            return dx, -2 * tf.cast(dk, signs.dtype)
        return y, grad

    return conv(x, signs)


# Output maps of at most this many positions (H x W) take `filter_gradient`'s matmul
# form: measured in isolation (bfloat16, batch 64, 3x3, CPU ms), 4x4 maps at 256 / 384 /
# 512 channels 11.5 / 28.7 / 49.6 ms with oneDNN's filter-gradient conv against 8.1 /
# 15.6 / 28.2 as the matmul; at 8x8 the conv is as fast or faster (128-256 channels:
# 8.3-32.5 vs 9.4-31.5 ms), at 16x16 and 32x32 clearly faster (docs/benchmark.md).
MATMUL_FILTER_GRADIENT_MAX = 16


def filter_gradient(inputs, dy, filter_shape, strides, dilations):
    """The conv's filter gradient ``Conv2DBackpropFilter(inputs, dy)`` ('SAME', zero
    padding; NHWC `inputs` and `dy` of one dtype, HWIO `filter_shape`; result in that
    dtype). At stride 1, undilated, on output maps of at most
    `MATMUL_FILTER_GRADIENT_MAX` positions (ResNet-18's last stage at 32x32 inputs:
    4x4) it is computed as patches and one matmul, ``patches(inputs)^T @ dy``, which
    oneDNN runs faster there than its filter-gradient conv; the same sum, up to the
    order of the float32 accumulation before the rounding to `dy`'s dtype."""
    height, width = inputs.shape[1], inputs.shape[2]
    small = (height is not None and width is not None
             and height * width <= MATMUL_FILTER_GRADIENT_MAX)
    if max(dilations) > 1 and inputs.dtype == tf.bfloat16 and not _dilated_bfloat16_safe(inputs):
        grad = tf.raw_ops.Conv2DBackpropFilter(
            input=tf.cast(inputs, tf.float32), filter_sizes=list(filter_shape),
            out_backprop=tf.cast(dy, tf.float32), strides=strides, padding="SAME",
            dilations=dilations)
        return tf.cast(grad, inputs.dtype)
    if not small or max(strides) > 1 or max(dilations) > 1:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=inputs, filter_sizes=list(filter_shape), out_backprop=dy, strides=strides,
            padding="SAME", dilations=dilations)
    kh, kw, channels, filters = (int(d) for d in filter_shape)
    padded = tf.pad(inputs, [[0, 0], binary.same_padding(height, kh),
                             binary.same_padding(width, kw), [0, 0]])
    taps = [padded[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)]
    patches = tf.reshape(tf.concat(taps, -1) if len(taps) > 1 else taps[0],
                         [-1, kh * kw * channels])
    grad = tf.matmul(patches, tf.reshape(dy, [-1, filters]), transpose_a=True)
    return tf.reshape(grad, [kh, kw, channels, filters])


def _dilated_bfloat16_safe(inputs):
    """False where oneDNN's bfloat16 filter gradient of a dilated conv is wrong (TF 2.21,
    measured on AVX512-BF16: NaN, inf or garbage): inputs whose channels are not a
    multiple of 16 (17, 20, 24, 36 and 40 were wrong on maps of 32x32 and larger;
    8, 16, 32, 48 and 64 right). Such convs take the filter gradient in float32 (the
    same operands, float32 sums, the result rounded to bfloat16)."""
    channels = inputs.shape[-1]
    return channels is not None and int(channels) % 16 == 0


def conv2d(x, kernel, strides, padding, dilations):
    """``tf.nn.conv2d(x, kernel, strides, padding, dilations=dilations)`` (NHWC, HWIO;
    'SAME'; int or [s, s] strides, int dilations) whose kernel gradient is
    `filter_gradient`'s: for a dilated bfloat16 conv the float32 one where oneDNN's
    bfloat16 one is wrong (`_dilated_bfloat16_safe`). Other convs are tf.nn.conv2d
    itself. ValueError for another padding."""
    if padding != "SAME":
        raise ValueError(f"fast_binary.conv2d pads 'SAME', got {padding!r}")
    if dilations == 1 or x.dtype != tf.bfloat16:
        return tf.nn.conv2d(x, kernel, strides, "SAME", dilations=dilations)
    stride = strides if isinstance(strides, int) else int(strides[0])
    strides4, dilations4 = [1, stride, stride, 1], [1, int(dilations), int(dilations), 1]

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=strides4,
                padding="SAME", dilations=dilations4)
            return dx, filter_gradient(x, dy, kernel.shape, strides4, dilations4)
        return tf.nn.conv2d(x, kernel, strides4, "SAME", dilations=dilations4), grad
    return conv(x, kernel)


# families whose binary convs are Larq's own layers (Bi-Real's, ReActNet's and
# QuickNet's blocks), not made by binary.quant_conv: they have no speed variant
WITHOUT_VARIANT = ("birealnet", "reactnet", "quicknet")


def resolve_for(family, conv_dtype, precision="float32"):
    """`resolve`, for a network of `family`: what its binary convs compute while
    training. 'auto' is 'float32' for a family without the variant; an explicit
    'bfloat16' for one is refused (ValueError, one line)."""
    if family in WITHOUT_VARIANT:
        if conv_dtype == "bfloat16":
            raise ValueError(f"--train_conv_dtype=bfloat16: the {family} network's binary "
                             "convs have no speed variant (Larq's layers); use float32 or auto")
        resolve(conv_dtype, precision)  # still refuses unknown names
        return "float32"
    return resolve(conv_dtype, precision)


def resolve(conv_dtype, precision="float32"):
    """'auto' -> 'bfloat16' when training in float32 on a CPU that multiplies
    bfloat16 natively (no GPU, oneDNN on), else 'float32'; 'float32' is returned as
    is. ValueError for unknown names, and for 'bfloat16' where it cannot be honoured:
    with TF_ENABLE_ONEDNN_OPTS=0 (Eigen lacks the bfloat16 conv gradients it needs)
    or with a mixed `precision` (whose layers already compute in 16 bits)."""
    if conv_dtype not in CONV_DTYPES:
        raise ValueError(f"unknown train conv dtype {conv_dtype!r}; choose one of "
                         f"{', '.join(CONV_DTYPES)}")
    if conv_dtype == "auto":
        from bnas_tf.search import engine
        return "bfloat16" if precision == "float32" and engine.native_bfloat16() else "float32"
    if conv_dtype == "bfloat16":
        if precision != "float32":
            raise ValueError(f"--train_conv_dtype=bfloat16 speeds up float32 training; "
                             f"--precision={precision} already computes every conv in 16 bits")
        if binary.onednn_disabled():
            raise ValueError("--train_conv_dtype=bfloat16 needs TensorFlow's oneDNN kernels "
                             "(TF_ENABLE_ONEDNN_OPTS=0 turns them off); use float32")
    return conv_dtype


@tf.keras.utils.register_keras_serializable(binary.SERIAL)
class FastQuantConv2D(binary.QuantConv2D):
    """`binary.QuantConv2D` computed as ``scale * (conv(sign(x) - p, signs) + bias)``
    with bfloat16 operands (module doc). Same variables, config and output shape
    (NHWC, float32) as the readable layer; layers it cannot compute exactly this way
    (grouped convs, float convs, padding other than 'same' with p != 0, quantizers
    `kernel_signs` does not know, non-float32 inputs) run the readable call."""

    operand_dtype = tf.bfloat16  # tests set float32: the shift-and-bias rewrite alone
    FUSED_SIGN = True  # `shifted_sign_conv` for +1 padding; False: Larq's ste_sign, a Sub

    def _fast(self, inputs):
        return (self.groups == 1 and not binary.onednn_disabled()
                and self.padding == "same" and self.pad_values != 0
                and isinstance(self.input_quantizer, lq.quantizers.SteSign)
                and inputs.dtype == tf.float32
                and kernel_signs(self.kernel_quantizer, tf.ones([1, 1, 1, 1])) is not None)

    def call(self, inputs):
        if not self._fast(inputs):
            return super().call(inputs)
        signs, scale = kernel_signs(self.kernel_quantizer, self.kernel.latent_variable)
        pad = float(self.pad_values)
        if pad == 1.0 and self.FUSED_SIGN:
            y = shifted_sign_conv(inputs, signs, self.input_quantizer.clip_value,
                                  self.strides, self.dilation_rate, self.operand_dtype)
        else:
            x = tf.cast(self.input_quantizer(inputs) - pad, self.operand_dtype)
            y = tf.nn.conv2d(x, tf.cast(signs, self.operand_dtype), list(self.strides),
                             "SAME", dilations=list(self.dilation_rate))
        return (tf.cast(y, tf.float32) + padding_bias(signs, pad)) * scale


def _live(x, live):
    """x's channels [0, live) (NHWC); a Slice, whose gradient is one Pad (a strided
    slice's gradient measured much slower)."""
    return tf.slice(x, [0, 0, 0, 0], [-1, -1, -1, live])


def zero_tail_binary_conv(block, inputs, live, training):
    """``block(inputs, training=True)`` for a `binary.BinaryConv` whose input channels
    from `live` on are 0 whatever the data (NHWC float32 `inputs`; BNAS-A's cell outputs
    in its first stage: all-Zeroise nodes kept zero by the identity skips), computed
    without convolving the zero channels: in training, batch norm turns a zero channel
    into its beta exactly (batch mean and variance 0), so its sign is a constant and
    its share of a 1x1 conv a per-output-channel constant ``sum_c (sign(beta_c) - 1) *
    signs[c]`` (in the shifted form of `FastQuantConv2D`), with Larq's straight-through
    gradient to beta (``|beta| <= clip``), as the readable block gives. The batch norm
    runs on all channels (Keras' moving statistics as always); its output's zero
    channels get no gradient, where the readable block's input gradient flows to
    the structural zeros only, i.e. to no variable. `block(inputs)` when the fast form
    does not apply (not a FastQuantConv2D, not 1x1 stride 1, an activation scale, a
    shortcut, not training)."""
    conv = block.conv
    if (training is not True or not isinstance(conv, FastQuantConv2D) or not conv._fast(inputs)
            or tuple(conv.kernel_size) != (1, 1) or tuple(conv.strides) != (1, 1)
            or float(conv.pad_values) != 1.0 or block.use_shortcut or block.pick > 1
            or block.subsample > 1 or block.binarization.activation_scale
            or not 0 < live < inputs.shape[-1]):
        return block(inputs, training=training)
    y = block.bn(inputs, training=True)
    signs, scale = kernel_signs(conv.kernel_quantizer, conv.kernel.latent_variable)
    beta = block.bn.beta if block.bn.center else tf.zeros([inputs.shape[-1]])
    tail = conv.input_quantizer(beta[live:])  # sign(beta), straight-through gradient
    constant = tf.linalg.matvec(signs[0, 0, live:, :], tail - 1.0, transpose_a=True)
    z = shifted_sign_conv(_live(y, live), signs[:, :, :live, :],
                          conv.input_quantizer.clip_value, conv.strides, conv.dilation_rate,
                          conv.operand_dtype)
    out = (tf.cast(z, tf.float32) + (padding_bias(signs, 1.0) + constant)) * scale
    return tf.nn.relu(out) if block.use_relu else out


def zero_tail_float_conv(bn, conv, inputs, live, training):
    """``conv(bn(inputs, training=True))`` for a Keras BatchNormalization and a float
    Conv2D without bias that pads nothing at this input size (BNAS' 2x2 stride-2
    reduction residual) when the input channels from `live` on are 0 (as
    `zero_tail_binary_conv`): the zero channels are beta after the batch norm, their
    share of the conv the constant ``sum_c beta_c * sum_taps(kernel[..., c, :])``.
    The two layers as they are otherwise."""
    height, width = inputs.shape[1], inputs.shape[2]
    kh, kw = conv.kernel_size
    no_padding = (conv.padding == "valid" or (
        height is not None and width is not None
        and binary.same_padding(height, kh, conv.strides[0]) == (0, 0)
        and binary.same_padding(width, kw, conv.strides[1]) == (0, 0)))
    if (training is not True or conv.use_bias or not no_padding or conv.groups != 1
            or max(conv.dilation_rate) > 1 or not 0 < live < inputs.shape[-1]):
        return conv(bn(inputs, training=training))
    y = bn(inputs, training=True)
    beta = bn.beta if bn.center else tf.zeros([inputs.shape[-1]])
    kernel = conv.kernel
    constant = tf.linalg.matvec(tf.reduce_sum(kernel[:, :, live:, :], axis=[0, 1]),
                                beta[live:], transpose_a=True)
    out = tf.nn.conv2d(_live(y, live), kernel[:, :, :live, :], list(conv.strides),
                       conv.padding.upper())
    return out + constant


@contextlib.contextmanager
def building(conv_dtype, precision="float32"):
    """Within: `binary.quant_conv` makes `FastQuantConv2D` when `conv_dtype` resolves
    to 'bfloat16' (`resolve`), the readable `binary.QuantConv2D` when it resolves to
    'float32'."""
    previous = binary.CONV_CLASS[0]
    variant = resolve(conv_dtype, precision) == "bfloat16"
    binary.CONV_CLASS[0] = FastQuantConv2D if variant else None
    try:
        yield
    finally:
        binary.CONV_CLASS[0] = previous


def uses_fast_convs(model):
    """True if any layer of `model` (nested layers included) is a FastQuantConv2D."""
    return any(isinstance(layer, FastQuantConv2D)
               for layer in model._flatten_layers(include_self=False))
