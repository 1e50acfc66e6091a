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
  `sign_mask_cast`, whose gradient keeps two boolean tensors instead of the float32
  BN output and the product). The mask stays on the input side: its gradient is then
  a reduction of the input gradient the alpha pass computes anyway (folded into the
  kernel, its gradient needs a filter gradient in the alpha pass: one more conv
  pass; docs/benchmark.md).
* The op weight, the weight scale and the mask of the node the edge feeds multiply
  the conv's output in one op (`bnas.fused.widen_and_weight`): the reference's
  node * mask is carried by every term's per-channel factor (node 4's by mask^2, as
  the cell output masks it again), so no float32 node sum is kept for the mask's
  gradient. The terms equal to the edge's input (the ``shortcut`` op at stride 1 and
  the convs' op shortcut) are one term, (sum of their op weights) * mask * x; the
  factors are computed once per cell ([edges, C] products).
* The reduction cells' 'improved' downsamples (the ``shortcut`` op of the stride-2
  edges, and the cell's skip) run grouped too (`grouped_downsample`): each half's
  convs of all edges as one grouped conv, the halves interleaved once for all
  edges, the pooled shortcut computed once.

* Per-channel products of float32 activations (the identity terms, the skip, the
  reduction cells' shortcuts: `channel_product`) and the masked signs' gradient
  (`sign_mask_cast`) are inference-mode batch-norm ops at mean 0, variance 1 (exact):
  one op computes g * factor and the factor's gradient sum(g * x) (only the alpha
  pass asks for it), against products, casts and batch-and-pixel reductions
  (`channelwise.py`).

* Custom gradients (the masked signs, the op weights, the batch norms) are single
  tape operations (`recompute.tape_gradient`): in a traced step no pass-through copy
  of their inputs and no zeros for unused gradients (fewer graph nodes to trace).
  `recompute` can recompute a cell in its backward pass (off by default).

Ops of other kinds (pools, other downsamples, ...) run as the reference cell runs
them.
"""
from __future__ import annotations

import types

import numpy as np

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary, genotypes
from bnas_tf.models import bars as bars_models
from bnas_tf.search.bars.cell import (MaskedBinaryConv, SearchCell, SearchDownsample,
                                     interleave, masked)
from bnas_tf.search.bars import recompute
from bnas_tf.search.bars.channelwise import channel_product, scale_and_sums
from bnas_tf.search.bnas import fused as bnas_fused
from bnas_tf.search.bnas.fused import conv_op, kernel_signs

DTYPES = ("float32", "bfloat16")
# BNAS' `widen_and_weight` (its function and gradient) as a tape-only custom gradient
# (`recompute.tape_gradient`: no pass-through copies of its inputs in the graph)
widen_and_weight = recompute.tape_gradient(bnas_fused.widen_and_weight.__wrapped__)


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
    if type(layer.conv.input_quantizer) is not lq.quantizers.SteSign:  # noqa: E721
        return False  # (`sign_mask_cast` is its function and gradient)
    quantizer = layer.conv.kernel_quantizer
    if quantizer is None:
        return False
    with tf.init_scope():  # a probe: eager, no ops in a traced step
        return kernel_signs(quantizer, tf.ones([1, 1, 1, 2]), 2) is not None


def _spec(layer):
    return (layer.kernel_size, tuple(layer.conv.dilation_rate), layer.strides, layer.use_relu,
            layer.use_shortcut)


def sign_mask_cast(h, mask, pad, dtype, clip=1.0):
    """(sign(h) - pad) * mask per channel in `dtype` (h: [B, H, W, C] float32, the
    BN output; mask: [C]): `cell.masked_conv`'s masked signs shifted by the padding
    value (larq's SteSign: sign(0) = +1), rounding only the mask (to 8 significant
    bits in bfloat16). Its gradient keeps two boolean tensors (1 byte a value) instead
    of the float32 `h` (for the sign's straight-through gradient) and the `dtype`
    result (for the mask's gradient): d_h = dtype(g * mask) where |h| <= `clip`
    (SteSign's clip_value; None: everywhere), else 0; d_mask = sum over batch and
    pixels of g * (sign(h) - pad), float32. The gradient's products and sums are one
    op (`channelwise.scale_and_sums`, as `widen_and_weight`'s) instead of casts,
    products and two reductions (docs/benchmark.md, "Fourth round"). (Selects of
    equal shapes only: broadcast selects run a slow generic path. A tape-only custom
    gradient: `recompute.tape_gradient`.)"""
    high, step = 1.0 - pad, -2.0  # sign(h) - pad = high + step * [h < 0]

    @recompute.tape_gradient
    def apply(h, mask):
        negative = tf.less(h, 0.0)
        inside = None if clip is None else tf.less_equal(tf.abs(h), float(clip))

        def grad(g):
            # g * mask in dtype, and per channel sum(g * [h < 0]) and sum(g)
            d_h, d_negative, d_all = scale_and_sums(
                tf.cast(g, dtype), tf.cast(negative, dtype), mask)
            if inside is not None:
                d_h = tf.where(inside, d_h, tf.zeros_like(d_h))
            d_mask = step * d_negative + high * d_all if high else step * d_negative
            return tf.cast(d_h, tf.float32), d_mask
        low_mask = tf.cast(mask, dtype)
        out = tf.cast(negative, dtype) * (tf.constant(step, dtype) * low_mask)
        return (out + tf.constant(high, dtype) * low_mask if high else out), grad
    return apply(h, mask)


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


def quantise_all(groups, conv_dtype):
    """`quantise` of each list of layers in `groups`, with one quantisation per kernel
    shape (the layers of all groups whose kernels have that shape, concatenated, then
    split per group): the same signs, scales and taps in fewer graph nodes."""
    buckets = {}
    for g, layers in enumerate(groups):
        kernel = layers[0].conv.kernel.latent_variable
        key = (tuple(kernel.shape), type(layers[0].conv.kernel_quantizer))
        buckets.setdefault(key, []).append(g)
    out = [None] * len(groups)
    for members in buckets.values():
        layers = [layer for g in members for layer in groups[g]]
        q = quantise(layers, conv_dtype)
        if len(members) == 1:
            out[members[0]] = q
            continue
        sizes = [len(groups[g]) * int(groups[g][0].conv.kernel.shape[-1]) for g in members]
        parts = {name: tf.split(value, sizes, axis=-1) for name, value in q.items()}
        for i, g in enumerate(members):
            out[g] = {name: parts[name][i] for name in q}
    return out


def batch_norm(bn, x, update=True):
    """``bn(x, training=True)`` of a fused, non-affine Keras BatchNormalization: its
    FusedBatchNormV3 on x's batch statistics, with its moving statistics updated as
    Keras does (``update=False``: left as they are, for the recomputed pass of
    `recompute`), recorded as one tape operation from x to the output with the
    op's own gradient (FusedBatchNormGradV3, as TensorFlow's): the tape then builds
    no zeros for the op's five other outputs (graph nodes traced, then pruned;
    executed eagerly: the plain op)."""
    def forward(x):
        if update:
            return bn(x, training=True)
        shape = [int(x.shape[-1])]
        return tf.compat.v1.nn.fused_batch_norm(x, tf.ones(shape), tf.zeros(shape),
                                                epsilon=bn.epsilon, is_training=True)[0]
    if tf.executing_eagerly():  # (no graph; eager tensors do not name their op)
        return forward(x)

    @recompute.tape_gradient
    def normalise(x):
        y = forward(x)
        op = y.op
        if op.type != "FusedBatchNormV3":
            raise TypeError(f"{bn.name}: expected a FusedBatchNormV3 output, got {op.type}")

        def grad(g):
            return [tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=g, x=op.inputs[0], scale=op.inputs[1],
                reserve_space_1=op.outputs[3], reserve_space_2=op.outputs[4],
                reserve_space_3=op.outputs[5], epsilon=op.get_attr("epsilon"),
                data_format=op.get_attr("data_format"), is_training=True)[0]]
        return y, grad
    return normalise(x)


def grouped_masked_conv(layers, x, channel_mask, factors, conv_dtype, training=None,
                        kernels=None, update=True):
    """sum-free grouped form of `cell.MaskedBinaryConv` calls: the outputs of
    ``layers[t](x, channel_mask=channel_mask)`` (one spec, see `_spec`) without their
    op shortcut, times ``factors`` ([T * C]: per output channel, e.g. layer t's op
    weight times the mask of the node it feeds), as ONE [B, H', W', T * C] tensor
    (layer t in channels t*C..). x: [B, H, W, C_in] NHWC float32; channel_mask:
    [C_in]; kernels: their `quantise` (computed here when None). The layers' BNs share
    the first one's statistics (moving statistics copied to the others in training;
    with ``update=False`` a training pass leaves them untouched: `batch_norm`)."""
    first = layers[0]
    h = (batch_norm(first.bn, x, update) if training and first.bn.fused
         and not first.bn.trainable_weights else first.bn(x, training=training))
    if training and update and len(layers) > 1:
        mean, variance = (tf.convert_to_tensor(v) for v in (first.bn.moving_mean,
                                                             first.bn.moving_variance))
        for other in layers[1:]:
            other.bn.moving_mean.assign(mean)
            other.bn.moving_variance.assign(variance)
    conv = first.conv
    pad = float(conv.pad_values)
    q = kernels if kernels is not None else quantise(layers, conv_dtype)
    # +1 padding as a shift: conv(pad_1(s) * m) = conv((s - 1) * m) + bias
    bias = pad * tf.linalg.matvec(q["taps"], channel_mask, transpose_a=True) if pad else None
    dilation = conv.dilation_rate[0]
    signed = sign_mask_cast(h, channel_mask, pad, conv_dtype, conv.input_quantizer.clip_value)
    y = conv_op(dilation)(signed, q["signs"],
                          list(conv.strides), "SAME", dilations=dilation)
    if bias is not None:
        y = tf.nn.bias_add(y, tf.cast(bias, conv_dtype))
    if first.use_relu:  # scale > 0: relu(scale * y) = scale * relu(y)
        y = tf.nn.relu(y)
    return widen_and_weight(y, factors * q["scale"])


def _downsample_fusable(layer):
    """True for a `cell.SearchDownsample` of kind 'improved' whose halves `_fusable`
    accepts (`grouped_downsample` computes it)."""
    return (type(layer) is SearchDownsample and layer.kind == "improved"  # noqa: E721
            and all(_fusable(half) for half in layer.halves))


def grouped_downsample(ops, x, channel_mask, factors, conv_dtype, training=None,
                       kernels=None, update=True):
    """`cell.SearchDownsample` ('improved') calls of `ops` (T of them, `filters` C
    each) on the same x ([B, H, W, C_in] NHWC float32; channel_mask [C_in]), grouped:
    each half's T convs as one grouped conv (`grouped_masked_conv`), the halves
    interleaved once for all T. Returns (convs, shortcut): convs [B, H', W', T * C],
    op t's conv part times ``factors[t]`` in channels t*C.. (factors: [T, C], per
    output channel of the interleaved output), and the shortcut [B, H', W', C] every op
    adds (interleaved pooled halves; op t's term is ``factors[t] * shortcut``).
    kernels: {0: ..., 1: ...} each half's `quantise` (computed here when None);
    update: as `grouped_masked_conv`'s."""
    halves = (x, bars_models.stagger(x))
    convs, shortcuts = [], []
    for h, part in enumerate(halves):
        layers = [op.halves[h] for op in ops]
        factor = tf.reshape(factors[:, h::2], [-1])  # [T * C/2]: the half's channels
        convs.append(grouped_masked_conv(layers, part, channel_mask, factor, conv_dtype,
                                         training, kernels[h] if kernels else None,
                                         update))
        shortcuts.append(bars_models.match_channels(binary.shortcut(part, 2),
                                                    ops[0].filters // 2))
    return interleave(*convs), interleave(*shortcuts)


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
        self.recompute = False  # set by the supernet (`BarsSupernet(recompute_stages=...)`)
        self._ready = False
        self._static = types.SimpleNamespace(groups={})  # not tracked (not checkpointed)

    def _layers_built(self):
        layers = [self.pre] + [op for edge in self.edges for op in edge.candidates
                               if not isinstance(op, binary.Zeroise)]  # never called
        return all(layer.built for layer in layers)

    def _pre_fusable(self):
        """`_fusable(self.pre)`, cached (its probe would add ops to every trace)."""
        if "pre" not in self._static.groups:
            self._static.groups["pre"] = _fusable(self.pre)
        return self._static.groups["pre"]

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
                    elif _downsample_fusable(op):
                        groups.setdefault((o, "downsample"), []).append(k)
                    else:
                        singles.append((k, o, op))
            self._static.groups[src] = (singles, groups)
        return self._static.groups[src]

    def precompute(self):
        """{"pre": ..., "from{src}_op{o}": ..., "skip": ...}: every grouped conv's
        `quantise` (a downsample's: {half: ...}), quantised per kernel shape
        (`quantise_all`); None before the first call has built the layers."""
        if not (self._ready or self._layers_built()):
            return None
        keys, groups = [], []  # (key, half) and the layers of each grouped conv
        if self._pre_fusable():
            keys.append(("pre", None))
            groups.append([self.pre])
        for src in range(genotypes.NODES):
            for (o, spec), members in self._groups(src)[1].items():
                ops = [self.edges[k].candidates[o] for k in members]
                for half in ((0, 1) if spec == "downsample" else (None,)):
                    keys.append((f"from{src}_op{o}", half))
                    groups.append(ops if half is None else [op.halves[half] for op in ops])
        if self._skip_fusable():
            for half in (0, 1):
                keys.append(("skip", half))
                groups.append([self.skip.halves[half]])
        out = {"pre": None}
        for (key, half), q in zip(keys, quantise_all(groups, self.conv_dtype)):
            if half is None:
                out[key] = q
            else:
                out.setdefault(key, {})[half] = q
        return out

    def _skip_fusable(self):
        """True for a reduction cell whose skip `grouped_downsample` computes (cached)."""
        if "skip" not in self._static.groups:
            self._static.groups["skip"] = (self.skip is not None
                                           and _downsample_fusable(self.skip))
        return self._static.groups["skip"]

    def _identity_ops(self):
        """[edges, ops] 0/1 constant: 1 where the op's output is the edge's input itself
        (the ``shortcut`` op at stride 1, and a grouped conv's op shortcut at stride
        1), whose terms `_source_terms` adds as one (sum of their weights) * x."""
        if "identity" not in self._static.groups:
            edges = genotypes.dense_edges()
            table = np.zeros([len(edges), len(self.edges[0].candidates)], np.float32)
            for src in range(genotypes.NODES):
                singles, groups = self._groups(src)
                for k, o, op in singles:
                    table[k, o] = float(type(op) is binary.SkipConnect)  # noqa: E721
                for (o, spec), members in groups.items():
                    for k in members:
                        table[k, o] = float(spec != "downsample" and spec[4] and spec[2] == 1)
            self._static.groups["identity"] = table
        return self._static.groups["identity"]

    def _source_terms(self, x, src, op_weights, mask, edge_masks, factors, training,
                      precomputed, update=True):
        """{edge index: terms} of the edges leaving node `src`, each term already times
        the mask of the edge's target node (``edge_masks[k]``: the reference cell
        masks each node's sum; here the masks ride on the per-channel factors).
        factors: {"identity": per edge its identity terms' weight times the mask,
        op index o: [edges, C] op o's weight times the mask}."""
        singles, groups = self._groups(src)
        identity = self._identity_ops()
        terms = {k: [] for k, (i, _) in enumerate(genotypes.dense_edges()) if i == src}
        for k, o, op in singles:
            if identity[k, o]:
                continue
            y = (op(x, training=training, channel_mask=mask) if masked(op)
                 else op(x, training=training))
            terms[k].append((op_weights[k, o] * edge_masks[k]) * y)
        for (o, spec), members in groups.items():
            layers = [self.edges[k].candidates[o] for k in members]
            factor = tf.gather(factors[o], members)  # [T, C]
            kernels = precomputed[f"from{src}_op{o}"] if precomputed is not None else None
            if spec == "downsample":
                y, shortcut = grouped_downsample(layers, x, mask, factor, self.conv_dtype,
                                                 training, kernels, update)
            else:
                y = grouped_masked_conv(layers, x, mask, tf.reshape(factor, [-1]),
                                        self.conv_dtype, training, kernels, update)
            parts = tf.split(y, len(members), axis=-1) if len(members) > 1 else [y]
            rows = tf.unstack(factor) if spec == "downsample" else [None] * len(members)
            for k, part, row in zip(members, parts, rows):
                terms[k].append(part)
                if spec == "downsample":
                    terms[k].append(channel_product(shortcut, row))
                elif spec[4] and spec[2] != 1:  # the op shortcut: identity at stride 1
                    terms[k].append(channel_product(binary.shortcut(x, spec[2]),
                                                    op_weights[k, o] * edge_masks[k]))
        for k in terms:
            if identity[k].any():
                terms[k].append(channel_product(x, factors["identity"][k]))
        return terms

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, op_weights, in_mask, out_mask, training=None, precomputed=None):
        """As `cell.SearchCell.call`; `precomputed`: this cell's `precompute()` of the
        current weights (computed here when None). The reference masks every node's
        sum and then the output ((node_4 + skip) * mask); here each term carries its
        node's mask in its factor (node 4's terms mask^2), which keeps no float32 sum
        for the mask's gradient and adds no pass over the node. With ``recompute`` set
        (a training pass with `precomputed` kernels) the cell keeps only its inputs for
        the backward pass and runs its forward again there (`recompute.recomputed`)."""
        if not self._ready:
            if not self._layers_built():  # the first call builds every layer
                return super().call(inputs, op_weights, in_mask, out_mask, training=training)
            self._ready = True
        if self.recompute and training and recompute.possible(self, precomputed):
            return recompute.recomputed(self.fused_call, inputs, op_weights, in_mask,
                                        out_mask, precomputed)
        return self.fused_call(inputs, op_weights, in_mask, out_mask, training, precomputed)

    def fused_call(self, inputs, op_weights, in_mask, out_mask, training, precomputed,
                   update=True):
        """The fused computation of `call` (built layers); ``update=False``: a training
        pass that leaves the BatchNorms' moving statistics as they are."""
        edges = genotypes.dense_edges()
        # per edge the mask of its target node (node 4: mask^2, see above), [edges, C]
        edge_masks = tf.gather(tf.stack([out_mask, out_mask * out_mask]),
                               [int(j == genotypes.NODES) for _, j in edges])
        factors = {"identity": tf.unstack(tf.reduce_sum(
            op_weights * self._identity_ops(), axis=1, keepdims=True) * edge_masks)}
        for o in sorted({o for src in range(genotypes.NODES) for o, _ in self._groups(src)[1]}):
            factors[o] = op_weights[:, o:o + 1] * edge_masks
        edge_masks = tf.unstack(edge_masks)
        if self._pre_fusable():
            pre = grouped_masked_conv([self.pre], inputs, in_mask, out_mask, self.conv_dtype,
                                      training, precomputed["pre"] if precomputed else None,
                                      update)
        else:
            pre = self.pre(inputs, training=training, channel_mask=in_mask) * out_mask
        nodes = [pre]
        incoming = [[] for _ in range(genotypes.NODES + 1)]
        for src in range(genotypes.NODES):
            for k, outs in self._source_terms(nodes[src], src, op_weights, out_mask,
                                              edge_masks, factors, training,
                                              precomputed, update).items():
                incoming[edges[k][1]].extend(outs)
            terms = incoming[src + 1]
            if src + 1 < genotypes.NODES:
                nodes.append(_sum(terms) if terms else  # only 'none' ops: zeros
                             binary.Zeroise(2 if self.reduction else 1)(nodes[0]))
        if self._skip_fusable():
            convs, shortcut = grouped_downsample(
                [self.skip], inputs, in_mask, out_mask[None, :], self.conv_dtype, training,
                precomputed["skip"] if precomputed else None, update)
            skip = [convs, channel_product(shortcut, out_mask)]
        elif self.reduction:
            skip = [self.skip(inputs, training=training, channel_mask=in_mask) * out_mask]
        else:
            skip = [channel_product(inputs, out_mask)]
        return _sum(incoming[genotypes.NODES] + skip)


def _sum(tensors):
    return tf.add_n(tensors) if len(tensors) > 1 else tensors[0]
