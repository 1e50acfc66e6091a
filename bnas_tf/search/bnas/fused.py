"""The fused BNAS search cell: `bnas/cell.py`'s cell computed with fewer, wider ops.

Same interface and the same function as `cell.SearchCell` (tested equal, outputs and
gradients, float32 and bfloat16: tests/test_fused_cell.py); the supernet's default
(`Supernet(cell="fused")`). Measurements behind each choice: docs/benchmark.md.

* All edges leaving one state are computed together (`SourceOps`): in the search the
  BNs are non-affine, so every edge's BN -> sign of that state is the same: one BN ->
  sign per state, one wide conv per conv type whose output channels concatenate the
  edges' convs (per-output-channel XNOR scales act per edge), one pool per kind, the
  pools' terms for all edges from one matmul (`pool_mix`).
* The binary kernels of a cell are one variable per conv type (all 14 edges,
  `SOURCE_ORDER`); `FusedSearchCell.precompute` turns them into +-1 signs, XNOR
  scales and padding biases, once per bilevel step for both of its passes.
* Binary convs run as ``scale * conv(sign(x), sign(W))``: the XNOR scale folded into
  the op weights, the +1 padding as a -1 shift of the signs plus a per-channel bias
  (`padding_bias`); with ``conv_dtype='bfloat16'`` the +-1 products run in bfloat16
  (exact products, float32 accumulation, results rounded to 8 significant bits).
"""
from __future__ import annotations

import functools

import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import tensorflow as tf

from bnas_tf import binary, fast_binary, ops
from bnas_tf.fast_binary import kernel_signs, padding_bias  # shared with training
from bnas_tf.search.bnas.cell import (N_EDGES, NODES, SearchCell, build_layer, edge_stride,
                                      no_autograph, search_bn)

def groupable(binarization):
    """True if the binary convs of `binarization` can share one wide conv per source
    (float convs, or a weight quantizer `kernel_signs` can split per edge)."""
    quantizer = binarization.kernel_quantizer()
    return quantizer is None or kernel_signs(quantizer, tf.ones([1, 1, 1, 2]), 2) is not None


def conv_op(dilation):
    """tf.nn.conv2d; for dilated convs tf.nn.convolution (space-to-batch) when oneDNN
    is off (Eigen has no dilated conv2d gradient), else `fast_binary.conv2d` (oneDNN's
    bfloat16 filter gradient of a dilated conv is wrong for some channel counts)."""
    if dilation == 1:
        return tf.nn.conv2d
    return tf.nn.convolution if binary.onednn_disabled() else fast_binary.conv2d


_UNIT_EPS = 2.0 ** -10  # with variance 1 - eps (exact): 1 / sqrt(var + eps) == 1


@tf.custom_gradient
def widen_and_weight(y, factor):
    """float32(y) * factor (per channel), keeping only `y` (bfloat16 in the search's
    convs) for the gradient instead of its float32 copy. The gradient is one fused
    op: a batch-norm gradient in inference mode with mean 0, variance 1 and scale
    `factor` gives g * factor in y's dtype and the op weights' gradient sum(g * y)
    per channel in one pass (with g rounded to y's dtype), against five elementwise
    passes as cast-and-multiply."""
    def grad(g):
        channels = int(factor.shape[-1])
        dy, dfactor, _, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=tf.cast(g, y.dtype), x=y, scale=factor,
            reserve_space_1=tf.constant(np.zeros(channels, np.float32)),
            reserve_space_2=tf.constant(np.full(channels, 1.0 - _UNIT_EPS, np.float32)),
            reserve_space_3=tf.constant(np.zeros(0, np.float32)), epsilon=_UNIT_EPS,
            data_format="NHWC", is_training=False)
        return dy, dfactor
    return tf.cast(y, tf.float32) * factor, grad


def _sum(tensors):
    return tf.add_n(tensors) if len(tensors) > 1 else tensors[0]


def _edges_from(src):
    """[(edge index, node)] of the edges leaving state `src` (0 = s0, 1 = s1, 2.. nodes),
    in DARTS' edge order (node by node, sources in order)."""
    out, k = [], 0
    for node in range(NODES):
        for s in range(2 + node):
            if s == src:
                out.append((k, node))
            k += 1
    return out


def _conv_spec(layer):
    """(kernel, dilation, relu, shortcut) of a plain BinaryConv op, else None."""
    if type(layer) is not binary.BinaryConv:  # noqa: E721  (subclasses may differ)
        return None
    config = layer._config
    if config.get("groups", 1) != 1 or config.get("affine"):
        return None
    return (int(config["kernel_size"]), int(config["dilation_rate"]), bool(config["relu"]),
            bool(config["shortcut"]))



def _fan(shape, mode):
    """Keras' VarianceScaling fan of a kernel shape (..., in, out) for `mode`."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


class StackedInitializer(tf.keras.initializers.Initializer):
    """`parts` independent draws of `base` for a kernel of shape (..., parts * n),
    concatenated along the output axis: a grouped kernel initialised exactly like
    `parts` separate (..., n) kernels (glorot's fan-out is that of one part; a
    VarianceScaling base is drawn once for the whole kernel with that variance)."""

    def __init__(self, base, parts):
        self.base, self.parts = tf.keras.initializers.get(base), int(parts)

    def __call__(self, shape, dtype=None, **kwargs):
        part = list(shape[:-1]) + [shape[-1] // self.parts]
        base = self.base
        if isinstance(base, tf.keras.initializers.VarianceScaling):
            # i.i.d. draws: one draw of the whole kernel with the variance of a part's
            ratio = _fan(shape, base.mode) / _fan(part, base.mode)
            return tf.keras.initializers.VarianceScaling(
                base.scale * ratio, base.mode, base.distribution, base.seed)(shape, dtype)
        # a fresh instance per part: one unseeded instance repeats its values
        config = base.get_config()
        return tf.concat([type(base).from_config(config)(part, dtype=dtype)
                          for _ in range(self.parts)], axis=-1)

    def get_config(self):
        return {"base": tf.keras.initializers.serialize(self.base), "parts": self.parts}


@functools.lru_cache(maxsize=None)
def _op_kind(op, channels, stride, config):
    """How `SourceOps` computes op `op`: ("pool", kind) shared by the edges,
    ("conv", spec) in a grouped conv, or ("layer", None): one layer per edge. Decided
    on one throwaway layer per distinct arguments (cached: docs/benchmark.md)."""
    layer = ops.make(op, channels, stride, config, layer_name="probe")
    if type(layer) is binary.Pool:  # noqa: E721  (a pure function of x: share it)
        return "pool", layer._config["kind"]
    spec = _conv_spec(layer)
    if spec is not None and not spec[3] and groupable(config.binarization):
        return "conv", spec
    return "layer", None


class SourceOps(tf.keras.layers.Layer):
    """Every op of the `targets` edges leaving one state, computed together.

    All edges leaving a state read the same tensor at the same stride, so in the
    search (non-affine BatchNorms, whose batch and moving statistics are then
    identical for every edge) their ops share work exactly:

    * one BN -> sign front end for all binary convs of all these edges;
    * per conv type (kernel, dilation), ONE conv whose output channels are the
      concatenation of the `targets` edges' convs (per-output-channel XNOR scales and
      the weight clip act per channel, so this equals separate convs); the kernels
      belong to the cell (`FusedSearchCell.precompute`), which passes them in;
    * one pool (and its non-affine BN) per pool kind, shared by the edges.

    Ops of other kinds (separable convs, op shortcuts, ...) are built once per edge.
    """

    def __init__(self, op_names, channels, stride, targets, config, name=None):
        super().__init__(name=name)
        self.op_names, self.channels, self.stride = tuple(op_names), channels, stride
        self.targets, self.binarization = int(targets), config.binarization
        self.pool_kinds, self.pool_indices, self.singles = [], [], []
        self.conv_indices, self.specs = [], []
        for k, op in enumerate(self.op_names):
            if op == ops.ZERO:
                continue
            kind, detail = _op_kind(op, channels, stride, config)
            if kind == "pool":
                self.pool_kinds.append(detail)
                self.pool_indices.append(k)
            elif kind == "conv":
                self.conv_indices.append(k)
                self.specs.append(detail)
            else:
                names = [f"{k}_{op}"] + [f"{k}_{op}_t{t}" for t in range(1, self.targets)]
                self.singles.append((k, [ops.make(op, channels, stride, config, layer_name=n)
                                         for n in names]))
        self.single_layers = [layer for _, per_edge in self.singles for layer in per_edge]
        self.bn = search_bn("bn") if self.specs else None
        # one non-affine BN per pool kind (one BN over the concatenated pools and the
        # state computes the same, but its concat and split copies measured slower)
        self.pool_bns = ([search_bn(f"pool_bn_{kind}") for kind in self.pool_kinds]
                         if config.pool_bn else [])
        self.sign = self.binarization.input_quantizer() if self.specs else None

    def build(self, shape):
        """The BNs from the state's shape (ops built per edge need a call)."""
        if self.bn is not None:
            build_layer(self.bn, shape)
        for bn in self.pool_bns:
            build_layer(bn, shape)  # per channel: the pooled size does not matter
        super().build(shape)

    def _pools(self, x):
        return [tf.nn.max_pool2d(x, 3, self.stride, "SAME") if kind == "max"
                else tf.nn.avg_pool2d(x, 3, self.stride, "SAME") for kind in self.pool_kinds]

    @no_autograph
    def call(self, x, rows, conv_factors=None, pool_factors=None, kernels=None,
             compute_dtype="float32", training=None):
        """x: the state; rows: [targets, n_ops] op weights (read only by ops computed
        per edge; None when there are none); conv_factors:
        [n_conv, targets, C] op weights times kernel scales; pool_factors:
        [n_pools, targets]; kernels: {"signs": ..., "biases": ...} per conv type
        (`FusedSearchCell.precompute`) ->
        the list of `targets` mixed edge outputs sum_k w[t, k] * op_k(x)."""
        stride, targets, channels = self.stride, self.targets, self.channels
        pooled = self._pools(x) if self.pool_kinds else []
        if self.pool_bns:
            pooled = [bn(p, training=training) for bn, p in zip(self.pool_bns, pooled)]
        h = self.bn(x, training=training) if self.specs else None
        terms = []  # each [B, H, W, targets * C], summed by one AddN
        if self.specs:
            signed = self.sign(h) if self.sign is not None else h
            if self.sign is not None and self.binarization.pad_values:
                # +1 padding as a shift: conv(s padded with 1) = conv(s - 1) + bias
                signed = signed - float(self.binarization.pad_values)
            even = signed[:, ::2, ::2, :] if stride > 1 else signed
            dtype = compute_dtype if self.sign is not None else "float32"
            scaled = self.binarization.enabled and self.binarization.activation_scale
            # one chain of elementwise ops per conv type (measured faster than
            # concatenating the conv types and reducing over them)
            factors = tf.unstack(tf.reshape(conv_factors, [len(self.specs), -1]))
            for signs, bias, factor, spec in zip(kernels["signs"], kernels["biases"],
                                                 factors, self.specs):
                kernel, dilation, relu, _ = spec
                # a dilated conv at stride 2 runs undilated on the even pixels (the
                # pixels it reads; TensorFlow has no strided dilated conv)
                picked = dilation > 1 and stride > 1
                conv_stride, conv_dilation = (1, 1) if picked else (stride, dilation)
                # cast per conv type: each cast's gradient widens that conv's input
                # gradient, so they add up in float32 (one shared cast would add
                # them in bfloat16, measured slower)
                y = conv_op(conv_dilation)(tf.cast(even if picked else signed, dtype), signs,
                                           conv_stride, "SAME", dilations=conv_dilation)
                if bias is not None:
                    y = tf.nn.bias_add(y, bias)
                if scaled:  # the activation scale comes before the ReLU
                    y = tf.cast(y, tf.float32) * binary.activation_scale(h, kernel, stride)
                if relu:  # in the conv's dtype: fused into it, and a half-size saved output
                    y = tf.nn.relu(y)
                # [B, H, W, targets * C]: edge t in channels t*C..
                terms.append(widen_and_weight(y, factor))
        if pooled:
            terms.append(pool_mix(pooled, pool_factors))
        acc = _sum(terms) if terms else None
        outs = (tf.split(acc, targets, axis=-1) if targets > 1 else [acc]) \
            if acc is not None else [None] * targets
        for k, per_edge in self.singles:
            for t, layer in enumerate(per_edge):
                term = rows[t, k] * layer(x, training=training)
                outs[t] = term if outs[t] is None else outs[t] + term
        if outs[0] is None:  # only Zeroise: zeros at the output's shape
            zero = tf.zeros_like(x[:, ::stride, ::stride, :] if stride > 1 else x)
            outs = [zero] * targets
        return outs


def pool_mix(pooled, factors):
    """sum_k factors[k, t] * pooled[k] for every target t, as one [B, H, W, T * C]
    tensor (target t in channels t*C..): ONE matmul of the concatenated pools with a
    [K * C, T * C] matrix of diagonal blocks factors[k, t] * I (faster than broadcast
    products and their reductions: docs/benchmark.md)."""
    n_pools, targets = (int(n) for n in factors.shape)
    channels = int(pooled[0].shape[-1])
    eye = tf.constant(np.eye(channels, dtype=np.float32)[None, :, None, :])
    mixing = tf.reshape(tf.reshape(factors, [n_pools, 1, targets, 1]) * eye,
                        [n_pools * channels, targets * channels])
    x = tf.concat(pooled, axis=-1) if n_pools > 1 else pooled[0]
    y = tf.matmul(tf.reshape(x, [-1, n_pools * channels]), mixing)
    return tf.reshape(y, [-1, x.shape[1], x.shape[2], targets * channels])


def _one_hot_columns(indices, n):
    """[n, len(indices)] float32 constant: column j is one-hot at indices[j] (x @ it
    gathers the columns `indices` of x)."""
    matrix = np.zeros([n, len(indices)], np.float32)
    matrix[list(indices), np.arange(len(indices))] = 1.0
    return tf.constant(matrix)


# the 14 edges ordered by source state (all edges leaving s0, then s1, then node 0, ...):
# the column order of a cell's grouped kernels and of `FusedSearchCell.precompute`'s outputs
SOURCE_ORDER = [e for src in range(1 + NODES) for e, _ in _edges_from(src)]


class FusedSearchCell(SearchCell):
    """`cell.SearchCell`, fused: the ops of all edges leaving a state computed together
    (`SourceOps`), and the binary conv kernels of all 14 edges ONE variable per conv
    type, [k, k, C, 14 * C] with the edges in `SOURCE_ORDER`; `precompute()` turns them
    into signs, scales and padding biases (once per bilevel step for both passes) and
    `nodes` hands each source its slice. `conv_dtype`: dtype of the +-1 products
    ('float32' or 'bfloat16', resolved by `engine.EngineConfig`)."""

    def __init__(self, op_names, channels, reduction, reduction_prev, skip, op_config,
                 conv_dtype="float32", name=None):
        if conv_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"FusedSearchCell computes in float32 or bfloat16, not "
                             f"{conv_dtype!r} (resolve 'auto' with engine.EngineConfig)")
        super().__init__(op_names, channels, reduction, reduction_prev, skip, op_config,
                         name=name)
        self.compute_dtype_ = conv_dtype
        self.kernels = []

    def make_edges(self, op_names, op_config):
        self.sources = [SourceOps(op_names, self.channels, edge_stride(self.reduction, src),
                                  len(_edges_from(src)), op_config, name=f"from{src}")
                        for src in range(1 + NODES)]
        first = self.sources[0]
        # ops with a layer per edge (they read the op-weight rows; built by a call)
        self.edge_layers = any(source.singles for source in self.sources)
        self.specs = first.specs
        self.conv_indices, self.pool_indices = first.conv_indices, first.pool_indices
        self.targets = [source.targets for source in self.sources]

    def build(self, input_shapes):
        b, c = self.binarization, self.channels
        self.kernels = [self.add_weight(
            name=f"kernel_{k}x{k}_d{d}", shape=(k, k, c, N_EDGES * c), trainable=True,
            initializer=StackedInitializer("glorot_normal", N_EDGES),
            constraint=b.kernel_constraint()) for k, d, _, _ in self.specs]
        self.kernel_quantizer = b.kernel_quantizer()
        super().build(input_shapes)

    def build_from_shapes(self, shapes):
        """Build the cell and its layers for states of `shapes` ([s0, s1]) without a
        forward pass; the output shape, or None (nothing built) when an op has its
        own per-edge layers (those are built by a call)."""
        if self.edge_layers:
            return None
        s0, s1 = (list(shape) for shape in shapes)
        in_hw = tuple(s1[1:3])
        with tf.name_scope(self.name):
            build_layer(self.pre0, s0)
            build_layer(self.pre1, s1)
            for src, source in enumerate(self.sources):
                build_layer(source, [s1[0], *self._source_hw(src, in_hw), self.channels])
            self.build([s0, s1])
            if self.residual_conv is not None:
                build_layer(self.residual_bn, s1)
                build_layer(self.residual_conv, s1)
        return [s1[0], *self._source_hw(2, in_hw), NODES * self.channels]

    def _source_hw(self, src, in_hw):
        if src < 2 or not self.reduction:
            return in_hw
        return tuple(-(-n // 2) for n in in_hw)

    def precompute(self):
        """The cell's binary kernels ready for the convs: a dict with ``kernels``, per
        source {"signs": per conv type in the compute dtype, "biases": per conv type
        the `padding_bias` in the compute dtype, or None}, and ``scales``
        [n_conv, 14, C] (None without scales). Signs and scales as in `kernel_signs`
        (straight-through gradients to the latent kernels). Nothing depends on the
        input size."""
        if not self.kernels:
            return None
        widths = [t * self.channels for t in self.targets]
        kernels = [{"signs": [], "biases": []} for _ in self.sources]
        scales = []
        for variable in self.kernels:
            signed = (kernel_signs(self.kernel_quantizer, variable, N_EDGES)
                      if self.kernel_quantizer is not None else None)
            signs, scale = signed if signed is not None else (tf.convert_to_tensor(variable),
                                                              None)
            scales.append(scale)
            dtype = self.compute_dtype_ if signed is not None else "float32"
            bias = padding_bias(signs, self.binarization.pad_values) if signed is not None \
                else None
            biases = (tf.split(tf.cast(bias, dtype), widths) if bias is not None
                      else [None] * len(self.sources))
            for kernel, part, piece in zip(kernels, tf.split(tf.cast(signs, dtype), widths,
                                                             axis=-1), biases):
                kernel["signs"].append(part)
                kernel["biases"].append(piece)
        stacked = (None if any(scale is None for scale in scales) else
                   tf.reshape(tf.stack(scales), [len(scales), N_EDGES, self.channels]))
        return {"kernels": kernels, "scales": stacked}

    def nodes(self, states, mix, training=None, precomputed=None):
        """The 4 node states; `precomputed`: this cell's `precompute()` (computed here
        when None)."""
        states = list(states)
        q = precomputed if precomputed is not None else self.precompute()
        # [n_ops, 14]: the op weights of the edges in SOURCE_ORDER (gathers as
        # products with one-hot matrices: exact, and their gradients trace faster)
        by_source = tf.matmul(mix, _one_hot_columns(SOURCE_ORDER, N_EDGES), transpose_a=True)
        rows = (tf.split(tf.transpose(by_source), self.targets, axis=0)
                if self.edge_layers else [None] * len(self.sources))
        conv_factors = pool_factors = [None] * len(self.sources)
        n_ops = int(mix.shape[-1])
        if self.specs:
            w = tf.matmul(_one_hot_columns(self.conv_indices, n_ops), by_source,
                          transpose_a=True)[:, :, None]
            # [n_conv, 14, C]: per channel (float convs: the op weight repeated)
            w = w * (q["scales"] if q["scales"] is not None
                     else tf.ones([1, 1, self.channels]))
            conv_factors = tf.split(w, self.targets, axis=1)
        if self.pool_indices:
            pool_factors = tf.split(tf.matmul(_one_hot_columns(self.pool_indices, n_ops),
                                              by_source, transpose_a=True),
                                    self.targets, axis=1)
        # edge outputs per node; node n is complete once sources 0..n+1 are done
        incoming = [[] for _ in range(NODES)]
        for src, layer in enumerate(self.sources):
            if src >= 2:
                states.append(_sum(incoming[src - 2]))
            outs = layer(states[src], rows[src], conv_factors[src], pool_factors[src],
                         q["kernels"][src] if q is not None else None,
                         compute_dtype=self.compute_dtype_, training=training)
            for (_, node), out in zip(_edges_from(src), outs):
                incoming[node].append(out)
        states.append(_sum(incoming[NODES - 1]))
        return states[2:]
