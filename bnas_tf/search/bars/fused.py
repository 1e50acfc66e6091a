"""The fused BARS search cell: `cell.SearchCell` computed with fewer, wider ops.

Same variables (checkpoints and derivation are shared with the reference cell), the
same function (tested equal, outputs and alpha/weight gradients, float32 and
bfloat16: tests/test_bars_fused.py); the supernet's default
(`BarsSupernet(cell="fused")`, `engine.EngineConfig.cell`). Measurements behind
each choice: docs/benchmark.md, "BARS search".

* The binary convs of all edges leaving one node read the same tensor through
  non-affine BatchNorms (identical batch and moving statistics): one BN -> sign per
  node, and per conv type ONE conv whose output channels concatenate the edges'
  kernels (`kernel_signs` keeps one tensor-wide scale per edge). The other BNs of
  the group get the shared BN's moving statistics (they are equal in the reference).
* The +1 padding of the masked signs (`cell.masked_conv`: pad_1(s) * m) is a -1
  shift plus a per-output-channel bias: conv(pad_1(s) * m) = conv((s - 1) * m, zero
  padding) + 1 * sum over taps and channels of sign(W) * m. The kernel operand is
  +-1 (exact in bfloat16); the masked signs (s - 1) * m round only the mask (to 8
  significant bits with ``conv_dtype='bfloat16'``, as the conv's result does;
  `mask_and_cast`). The mask stays on the input side: its gradient is then a
  reduction of the input gradient the alpha pass computes anyway (folded into the
  kernel, its gradient needs a filter gradient in the alpha pass: one more conv
  pass; docs/benchmark.md).
* The op weight and the weight scale multiply the conv's output in one op
  (`bnas.fused.widen_and_weight`); the op shortcut is added per edge.

Ops of other kinds (the ``shortcut`` op, downsamples, pools) run as the reference
cell runs them.
"""
from __future__ import annotations

import types

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary, genotypes
from bnas_tf.search.bars.cell import MaskedBinaryConv, SearchCell, masked
from bnas_tf.search.bnas.fused import conv_op, kernel_signs, widen_and_weight

DTYPES = ("float32", "bfloat16")


def _fusable(layer):
    """True for a masked binary conv the fused path computes: plain MaskedBinaryConv,
    ungrouped, no activation scale, a weight quantizer `kernel_signs` knows, a
    conv that reads every pixel (no strided dilated pick/subsample)."""
    if type(layer) is not MaskedBinaryConv:  # noqa: E721  (subclasses may differ)
        return False
    b = layer.binarization
    if not b.enabled or b.activation_scale or layer.conv.groups != 1:
        return False
    if layer.pick != 1 or layer.subsample != 1:
        return False
    quantizer = layer.conv.kernel_quantizer
    return quantizer is not None and kernel_signs(quantizer, tf.ones([1, 1, 1, 2]), 2) is not None


def _spec(layer):
    return (layer.kernel_size, tuple(layer.conv.dilation_rate), layer.strides, layer.use_relu,
            layer.use_shortcut)


def mask_and_cast(x, mask, dtype):
    """dtype(x) * dtype(mask) per channel, for x whose values `dtype` holds exactly
    (the shifted signs, 0 / -2): the product rounds only the mask (to 8 significant
    bits in bfloat16). Its gradient keeps only the `dtype` copy of x (not a float32
    one): d_x = g * mask, d_mask = sum over batch and pixels of g * x (float32)."""
    low = tf.cast(x, dtype)

    @tf.custom_gradient
    def apply(low, mask):
        def grad(g):
            g = tf.cast(g, tf.float32)
            return (tf.cast(g * mask, dtype),
                    tf.reduce_sum(g * tf.cast(low, tf.float32), axis=[0, 1, 2]))
        return low * tf.cast(mask, dtype), grad
    return apply(low, mask)


def quantise(layers, conv_dtype):
    """The binary kernels of `layers` (one spec) as one grouped conv reads them:
    ``signs`` [k, k, C_in, T * C] +-1 in `conv_dtype`, ``scale`` [T * C] (each layer's
    tensor-wide scale, no gradient) and ``taps`` [C_in, T * C] float32 (the signs
    summed over the taps, for the padding bias); straight-through gradients to the
    latent kernels. Nothing here depends on the batch or the masks: the supernet's
    `precompute` runs it once per bilevel step for both passes."""
    latent = [tf.convert_to_tensor(layer.conv.kernel.latent_variable) for layer in layers]
    kernel = tf.concat(latent, axis=-1) if len(latent) > 1 else latent[0]
    signs, scale = kernel_signs(layers[0].conv.kernel_quantizer, kernel, len(layers))
    return {"signs": tf.cast(signs, conv_dtype), "scale": scale,
            "taps": tf.reduce_sum(signs, axis=[0, 1])}


def grouped_masked_conv(layers, x, channel_mask, factors, conv_dtype, training=None,
                        kernels=None):
    """sum-free grouped form of `cell.MaskedBinaryConv` calls: the outputs of
    ``layers[t](x, channel_mask=channel_mask)`` (one spec, see `_spec`) without their
    op shortcut, each multiplied by ``factors[t]`` (factors: [T] op weights), as ONE
    [B, H', W', T * C] tensor (layer t in channels t*C..). x: [B, H, W, C_in] NHWC
    float32; channel_mask: [C_in]; kernels: their `quantise` (computed here when
    None). The layers' BNs share the first one's statistics (moving statistics
    copied to the others in training)."""
    first = layers[0]
    h = first.bn(x, training=training)
    if training:
        for other in layers[1:]:
            other.bn.moving_mean.assign(first.bn.moving_mean)
            other.bn.moving_variance.assign(first.bn.moving_variance)
    conv = first.conv
    signed = conv.input_quantizer(h)
    pad = float(conv.pad_values)
    q = kernels if kernels is not None else quantise(layers, conv_dtype)
    bias = None
    if pad:  # +1 padding as a shift: conv(pad_1(s) * m) = conv((s - 1) * m) + bias
        signed = signed - pad
        bias = pad * tf.linalg.matvec(q["taps"], channel_mask, transpose_a=True)
    dilation = conv.dilation_rate[0]
    y = conv_op(dilation)(mask_and_cast(signed, channel_mask, conv_dtype), q["signs"],
                          list(conv.strides), "SAME", dilations=dilation)
    if bias is not None:
        y = tf.nn.bias_add(y, tf.cast(bias, conv_dtype))
    if first.use_relu:  # scale > 0: relu(scale * y) = scale * relu(y)
        y = tf.nn.relu(y)
    channels = int(y.shape[-1]) // len(layers)
    factor = tf.reshape(tf.broadcast_to(factors[:, None], [len(layers), channels]), [-1])
    factor = factor * q["scale"]
    return widen_and_weight(y, factor)


class FusedSearchCell(SearchCell):
    """`cell.SearchCell` with its binary convs grouped per source node (see the module
    docstring); `conv_dtype`: 'float32' or 'bfloat16' (resolved by
    `engine.EngineConfig`). Falls back to the reference computation for layers
    `_fusable` refuses, and for its first call (which builds the layers)."""

    def __init__(self, *args, conv_dtype="float32", **kwargs):
        if conv_dtype not in DTYPES:
            raise ValueError(f"the fused BARS cell computes in float32 or bfloat16, not "
                             f"{conv_dtype!r} (resolve 'auto' with engine.EngineConfig)")
        super().__init__(*args, **kwargs)
        self.conv_dtype = conv_dtype
        self._ready = False
        self._static = types.SimpleNamespace(groups={})  # not tracked (not checkpointed)

    def _layers_built(self):
        layers = [self.pre] + [op for edge in self.edges for op in edge.candidates
                               if not isinstance(op, binary.Zeroise)]  # never called
        return all(layer.built for layer in layers)

    def _groups(self, src):
        """(per-edge ops [(edge, op index, op)], grouped convs {(op index, spec): [edge
        indices]}) of the edges leaving node `src` (static: cached)."""
        if src not in self._static.groups:
            singles, groups = [], {}
            for k, (i, _) in enumerate(genotypes.dense_edges()):
                if i != src:
                    continue
                for o, op in enumerate(self.edges[k].candidates):
                    if isinstance(op, binary.Zeroise):
                        continue
                    if _fusable(op):
                        groups.setdefault((o, _spec(op)), []).append(k)
                    else:
                        singles.append((k, o, op))
            self._static.groups[src] = (singles, groups)
        return self._static.groups[src]

    def precompute(self):
        """{"pre": ..., "from{src}_op{o}": ...}: every grouped conv's `quantise`
        (None before the first call has built the layers)."""
        if not (self._ready or self._layers_built()):
            return None
        out = {"pre": quantise([self.pre], self.conv_dtype) if _fusable(self.pre) else None}
        for src in range(genotypes.NODES):
            for (o, spec), members in self._groups(src)[1].items():
                out[f"from{src}_op{o}"] = quantise([self.edges[k].candidates[o] for k in members],
                                               self.conv_dtype)
        return out

    def _source_terms(self, x, src, op_weights, mask, training, precomputed):
        """{edge index: mixed-op outputs} of the edges leaving node `src`."""
        singles, groups = self._groups(src)
        terms = {k: [] for k, (i, _) in enumerate(genotypes.dense_edges()) if i == src}
        for k, o, op in singles:
            y = (op(x, training=training, channel_mask=mask) if masked(op)
                 else op(x, training=training))
            terms[k].append(op_weights[k, o] * y)
        for (o, spec), members in groups.items():
            layers = [self.edges[k].candidates[o] for k in members]
            weights = tf.gather_nd(op_weights, [[k, o] for k in members])  # [T]
            kernels = precomputed[f"from{src}_op{o}"] if precomputed is not None else None
            y = grouped_masked_conv(layers, x, mask, weights, self.conv_dtype, training,
                                    kernels)
            parts = tf.split(y, len(members), axis=-1) if len(members) > 1 else [y]
            shortcut = binary.shortcut(x, spec[2]) if spec[4] else None
            for k, w, part in zip(members, tf.unstack(weights), parts):
                terms[k].append(part if shortcut is None else part + w * shortcut)
        return terms

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, op_weights, in_mask, out_mask, training=None, precomputed=None):
        """As `cell.SearchCell.call`; `precomputed`: this cell's `precompute()` of the
        current weights (computed here when None)."""
        if not self._ready:
            if not self._layers_built():  # the first call builds every layer
                return super().call(inputs, op_weights, in_mask, out_mask, training=training)
            self._ready = True
        if _fusable(self.pre):
            pre = grouped_masked_conv([self.pre], inputs, in_mask, tf.ones([1]),
                                      self.conv_dtype, training,
                                      precomputed["pre"] if precomputed else None)
        else:
            pre = self.pre(inputs, training=training, channel_mask=in_mask)
        nodes = [pre * out_mask]
        incoming = [[] for _ in range(genotypes.NODES + 1)]
        edges = genotypes.dense_edges()
        for src in range(genotypes.NODES):
            for k, outs in self._source_terms(nodes[src], src, op_weights, out_mask,
                                              training, precomputed).items():
                incoming[edges[k][1]].extend(outs)
            terms = incoming[src + 1]
            node = (tf.add_n(terms) if terms else  # only 'none' ops: zeros
                    binary.Zeroise(2 if self.reduction else 1)(nodes[0]))
            nodes.append(node * out_mask)
        if self.reduction:
            skip = self.skip(inputs, training=training, channel_mask=in_mask)
        else:
            skip = inputs
        return (nodes[-1] + skip) * out_mask
