"""The BARS supernet's cell and its masked layers (BARS Sec. 4, Eq. 3; docs/bars.md).

Every feature map of stage i is multiplied by the relaxed width mask sum_w m_w M_w,
M_w keeping the first ``width_channels(r_w, C_i)`` channels; binary convs also mask
their *binarised* input (sign(0) = +1 would otherwise leak the dead channels), so at
one-hot widths a stage computes what the narrow network computes (up to the weight
scale mean|W|, which spans the whole kernel). Cells are dense: node 0 = binary 3x3
preprocess without shortcut, nodes 1..4 sum all earlier nodes through a mixed op per
edge.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import bars as bars_models


def masked_conv(conv, x, channel_mask):
    """`conv` (a Larq QuantConv2D) on `x` with its *quantized* input multiplied by
    `channel_mask` ([C_in]) after the +1 'same' padding: masked channels contribute
    nothing, as if the conv had only the live input channels."""
    if not conv.built:
        conv(x)  # creates the kernel where Keras expects it
    q = conv.input_quantizer(x) if conv.input_quantizer is not None else x
    pads = [[0, 0]]
    for axis in (0, 1):
        pads.append(list(binary.same_padding(int(x.shape[1 + axis]), conv.kernel_size[axis],
                                      conv.strides[axis], conv.dilation_rate[axis])))
    pads.append([0, 0])
    q = tf.pad(q, pads, constant_values=conv.pad_values) * channel_mask
    with lq.context.quantized_scope(True):
        kernel = tf.convert_to_tensor(conv.kernel)
    return tf.nn.conv2d(q, kernel, strides=conv.strides, padding="VALID",
                        dilations=conv.dilation_rate)


class MaskedBinaryConv(binary.BinaryConv):
    """`binary.BinaryConv` whose call takes an optional `channel_mask` of its input."""

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, channel_mask=None):
        if channel_mask is None:
            return super().call(inputs, training=training)
        x = self.bn(inputs, training=training)
        y = masked_conv(self.conv, self.conv_input(x), channel_mask)
        if self.subsample > 1:
            y = y[:, ::self.subsample, ::self.subsample, :]
        if self.binarization.enabled and self.binarization.activation_scale:
            y = y * binary.activation_scale(x * channel_mask, self.kernel_size, self.strides)
        if self.use_relu:
            y = tf.nn.relu(y)
        if self.use_shortcut:
            y = y + binary.shortcut(inputs, self.strides)
        return y


def interleave(a, b):
    """Channels a0, b0, a1, b1, ...: the first 2k channels hold a[:k] and b[:k]."""
    stacked = tf.stack([a, b], axis=-1)
    shape = tf.concat([tf.shape(a)[:-1], [2 * a.shape[-1]]], axis=0)
    return tf.reshape(stacked, shape)


class SearchDownsample(tf.keras.layers.Layer):
    """`models.bars.BarsDownsample` for the supernet: masked binary convs, and for
    ``improved`` the two halves interleaved (not concatenated) so that a width mask
    keeping the first k channels keeps k/2 of each half, as the narrow network does
    (the same function up to a channel permutation)."""

    def __init__(self, filters, kind="improved", binarization=binary.BARS, affine=False,
                 **kwargs):
        super().__init__(**kwargs)
        if kind not in bars_models.DOWNSAMPLES:
            raise ValueError(f"unknown downsample {kind!r}; choose one of "
                             f"{', '.join(bars_models.DOWNSAMPLES)}")
        self.filters, self.kind = filters, kind
        if kind == "improved":
            self.halves = [MaskedBinaryConv(filters // 2, 3, 2, binarization=binarization,
                                            affine=affine, relu=False, name=f"half{i}")
                           for i in range(2)]
        else:
            scheme = binarization if kind == "plain" else binary.FLOAT
            self.conv = MaskedBinaryConv(filters, 3, 2, binarization=scheme, affine=affine,
                                         relu=False, name="conv")

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, channel_mask=None):
        if self.kind != "improved":
            return self.conv(inputs, training=training, channel_mask=channel_mask)
        outs = []
        for half, x in zip(self.halves, (inputs, bars_models.stagger(inputs))):
            y = half(x, training=training, channel_mask=channel_mask)
            outs.append(y + bars_models.match_channels(binary.shortcut(x, 2), self.filters // 2))
        return interleave(*outs)


def search_op(name, channels, stride, config):
    """Op `name` for the supernet: binary convs and downsamples in their masked form,
    anything else (pools, none, identity, separable convs) as `ops.make` builds it."""
    proto = ops.make(name, channels, stride, config, layer_name=name)
    if type(proto) is binary.BinaryConv:
        return MaskedBinaryConv.from_config(proto.get_config())
    if isinstance(proto, binary.BinaryDownsample):
        return SearchDownsample(channels, proto.kind, config.binarization, config.affine,
                                name=name)
    return proto


def masked(layer):
    """True for the layers whose call takes a `channel_mask`."""
    return isinstance(layer, (MaskedBinaryConv, SearchDownsample))


class MixedOp(tf.keras.layers.Layer):
    """sum_o w_o * op_o(x) over the candidate ops of one edge (``none`` adds nothing)."""

    def __init__(self, op_names, channels, stride, config, **kwargs):
        super().__init__(**kwargs)
        self.candidates = [search_op(n, channels, stride, config) for n in op_names]
        self.stride = stride

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, op_weights, channel_mask, training=None):
        terms = []
        for k, op in enumerate(self.candidates):
            if isinstance(op, binary.Zeroise):
                continue
            if masked(op):
                y = op(inputs, training=training, channel_mask=channel_mask)
            else:
                y = op(inputs, training=training)
            terms.append(op_weights[k] * y)
        if not terms:
            return binary.Zeroise(self.stride)(inputs)
        return tf.add_n(terms)


class SearchCell(tf.keras.layers.Layer):
    """A dense cell of the supernet: mixed ops on every edge, masked feature maps."""

    def __init__(self, op_names, channels, reduction=False, downsample="improved",
                 config=ops.OpConfig(), **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction
        self.pre = MaskedBinaryConv(channels, 3, binarization=config.binarization,
                                    affine=config.affine, name="pre")
        self.edges = [MixedOp(op_names, channels, 2 if reduction and i == 0 else 1, config,
                              name=f"e{i}{j}") for i, j in genotypes.dense_edges()]
        self.skip = (SearchDownsample(channels, downsample, config.binarization, config.affine,
                                      name="downsample") if reduction else None)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, op_weights, in_mask, out_mask, training=None):
        nodes = [self.pre(inputs, training=training, channel_mask=in_mask) * out_mask]
        edges = genotypes.dense_edges()
        for j in range(1, genotypes.NODES + 1):
            terms = [self.edges[k](nodes[i], op_weights[k], out_mask, training=training)
                     for k, (i, target) in enumerate(edges) if target == j]
            nodes.append(tf.add_n(terms) * out_mask)
        if self.reduction:
            skip = self.skip(inputs, training=training, channel_mask=in_mask)
        else:
            skip = inputs
        return (nodes[-1] + skip) * out_mask
