"""The BNAS supernet (DARTS' over-parameterised network with BNAS' cell template),
and the BNAS search method (the functions `runner.run_search` calls).

* `MixedOp`: sum_k softmax(alpha)_k * op_k(x) over a configurable op list;
  Zeroise (``none``) contributes exactly zero and is not computed at all.
* `SearchCell`: DARTS cell — two FLOAT preprocess convs (ReLU -> 1x1 conv -> BN, or
  a FactorizedReduce after a reduction cell), 4 nodes, each summing mixed ops over
  all earlier states (14 edges), output = concat of the 4 nodes. Template ``bnas``
  adds the inter-cell skip: s1 itself in normal cells (when shapes match), a float
  BN -> 2x2 stride-2 conv of s1 in reduction cells; cell 0 adds nothing. Template
  ``darts`` adds nothing (the "No Skip" ablation).
* `Supernet`: float stem (``stem='auto'``, as the final network: for images under
  128 pixels the CIFAR stem, 3x3 conv -> 3C, BN; from 128 pixels DARTS' ImageNet
  stem, three stride-2 3x3 convs to 1/8 resolution, C channels, with the first cell
  reducing s0 as after a reduction), cells (reductions at cells//3 and 2*cells//3,
  channels doubling there), global pooling, dense.
  ``alpha_normal``/``alpha_reduce`` (14 x n_ops, init 1e-3 * N(0, 1)) are its
  `arch_variables`; `arch_regularization(epoch)` is the diversity regulariser.

Ops are built as in DARTS' search: non-affine BN inside binary convs and a
non-affine BN after pools (``ops.OpConfig(affine=False, pool_bn=True)``).

Speed: a cell computes the ops of all edges leaving one state together
(`SourceOps`): one BN -> sign per state, one wide conv per conv type whose output
channels concatenate the edges' convs, one pool per kind (the pools' terms for all
edges from one matmul, `pool_mix`). With non-affine BNs this
is exactly the per-edge computation (tested against ``share_bn=False``, which
builds one `MixedOp` with separate layers per edge) at 2.4x the speed. The binary
kernels of a cell are one variable per conv type (all 14 edges, `SOURCE_ORDER`);
`SearchCell.quantize` turns them into +-1 signs, XNOR scales and padding
biases, and the bilevel step does that once for its alpha and weight passes
(`Supernet.quantize`, ``net(x, quantized=...)``). Binary convs run as
``scale * conv(sign(x), sign(W))``: +-1 operands, the XNOR scale folded into the op
weights, the +1 padding as a -1 shift of the signs, zero padding and a
per-channel bias (`padding_bias`: one fused conv + bias + ReLU); with
``conv_dtype='bfloat16'`` (the default 'auto' picks it on CPUs with native
bfloat16) the +-1 products run in bfloat16: exact products, float32 accumulation,
results rounded to 8 significant bits (numerics differ slightly from float32;
gradients are bfloat16 too), about 1.4x faster again.
"""
from __future__ import annotations

import functools

import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import common
from bnas_tf.search import derive as derive_lib
from bnas_tf.search import regularizers

NODES = genotypes.NODES
N_EDGES = derive_lib.edge_offsets(NODES)[1]
# The supernet's calls are plain Python over a static structure: autograph would
# only add tracing time (it converts every nested call), so it is switched off.
_no_autograph = tf.autograph.experimental.do_not_convert


def reduction_cells(cells):
    return (cells // 3, 2 * cells // 3)


def _build(layer, shape):
    """Build `layer` for inputs of `shape` under its name scope, as its first call
    would (the same variable names), without running it."""
    with tf.name_scope(layer.name):
        layer.build(shape)


def _bn(name):
    return tf.keras.layers.BatchNormalization(center=False, scale=False, momentum=0.9,
                                              epsilon=1e-5, name=name)


def _conv(filters, kernel, strides=1, name=None):
    return tf.keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                                  kernel_initializer="he_normal", name=name)


class ReLUConvBN(tf.keras.layers.Layer):
    """Float ReLU -> 1x1 conv -> non-affine BN (search-time preprocess)."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        self.conv, self.bn = _conv(filters, 1, name="conv"), _bn("bn")

    def build(self, shape):
        _build(self.conv, shape)
        _build(self.bn, [*shape[:-1], self.conv.filters])
        super().build(shape)

    @_no_autograph
    def call(self, x, training=None):
        return self.bn(self.conv(tf.nn.relu(x)), training=training)


class FactorizedReduce(tf.keras.layers.Layer):
    """Float ReLU -> two stride-2 1x1 convs on x and x shifted by one pixel, concat, BN.

    The second conv reads the odd rows and columns of x (zero-padded at the end for
    odd sizes): exactly the pixels a stride-2 1x1 conv reads from the shifted x,
    without the shifted copy (its slice, pad and their full-size gradients)."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        if filters % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {filters}")
        self.conv0 = _conv(filters // 2, 1, 2, name="conv0")
        self.conv1 = _conv(filters // 2, 1, 1, name="conv1")
        self.bn = _bn("bn")

    def build(self, shape):
        for conv in (self.conv0, self.conv1):
            _build(conv, shape)
        _build(self.bn, [*shape[:-1], 2 * self.conv0.filters])
        super().build(shape)

    @_no_autograph
    def call(self, x, training=None):
        x = tf.nn.relu(x)
        odd = x[:, 1::2, 1::2, :]
        extra = [int(n) % 2 for n in x.shape[1:3]]  # the shifted x's zero row/column
        if any(extra):
            odd = tf.pad(odd, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]])
        y = tf.concat([self.conv0(x), self.conv1(odd)], axis=-1)
        return self.bn(y, training=training)


class SharedInputConvs(tf.keras.layers.Layer):
    """The binary convs of one mixed op, sharing their BN -> sign front end.

    In the search every binary conv of an edge normalises the same input with a
    NON-affine BatchNorm (identical outputs and moving statistics), then takes its
    sign: computing that once per edge gives exactly the outputs and gradients of
    separate `binary.BinaryConv` layers, with a smaller, faster graph. A dilated
    conv at stride 2 runs as a plain conv on the even pixels (the values a
    stride-2 dilation-2 conv reads), which TensorFlow cannot do in one conv.
    """

    def __init__(self, specs, channels, stride, binarization, name=None):
        super().__init__(name=name)
        self.specs, self.stride, self.binarization = list(specs), stride, binarization
        self.bn = _bn("bn")
        self.sign = binarization.input_quantizer()
        self.convs = []
        for i, (kernel, dilation, _relu, _shortcut) in enumerate(self.specs):
            dilated_stride = dilation > 1 and stride > 1
            self.convs.append(lq.layers.QuantConv2D(
                channels, kernel, strides=1 if dilated_stride else stride, padding="same",
                pad_values=binarization.pad_values if binarization.enabled else 0.0,
                dilation_rate=1 if dilated_stride else dilation, use_bias=False,
                input_quantizer=None, kernel_quantizer=binarization.kernel_quantizer(),
                kernel_constraint=binarization.kernel_constraint(),
                kernel_initializer="glorot_normal", name=f"conv{i}_{kernel}x{kernel}_d{dilation}"))

    @_no_autograph
    def call(self, x, training=None):
        h = self.bn(x, training=training)
        signed = self.sign(h) if self.sign is not None else h
        even = signed[:, ::2, ::2, :] if self.stride > 1 else signed
        outs = []
        for conv, (kernel, dilation, relu, shortcut) in zip(self.convs, self.specs):
            y = conv(even if dilation > 1 and self.stride > 1 else signed)
            if self.binarization.enabled and self.binarization.activation_scale:
                y = y * binary.activation_scale(h, kernel, self.stride)
            if relu:
                y = tf.nn.relu(y)
            if shortcut:
                y = y + binary.shortcut(x, self.stride)
            outs.append(y)
        return outs


CONV_DTYPES = ("auto", "float32", "bfloat16")


def native_bfloat16():
    """True if this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) and no GPU is
    visible: then bfloat16 binary convs run about twice as fast as float32 ones."""
    if tf.config.list_physical_devices("GPU") or binary.onednn_disabled():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_conv_dtype(conv_dtype):
    """'auto' -> 'bfloat16' where native (`native_bfloat16`), else 'float32'."""
    if conv_dtype not in CONV_DTYPES:
        raise ValueError(f"unknown conv_dtype {conv_dtype!r}; choose one of "
                         f"{', '.join(CONV_DTYPES)}")
    if conv_dtype == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return conv_dtype


def kernel_signs(quantizer, kernel, parts=1):
    """(signs, scale): +-1 kernel and per-output-channel scale >= 0 (no gradient) with
    ``quantizer(k) == scale * signs`` for each of the `parts` equal slices k of the
    kernel along its output axis (each slice is one edge's kernel in a grouped conv),
    with the quantizer's straight-through gradient. None for quantizers it does not
    know (their convs are not grouped)."""
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


def groupable(binarization):
    """True if the binary convs of `binarization` can share one wide conv per source
    (float convs, or a weight quantizer `kernel_signs` can split per edge)."""
    quantizer = binarization.kernel_quantizer()
    return quantizer is None or kernel_signs(quantizer, tf.ones([1, 1, 1, 2]), 2) is not None


def conv_op(dilation):
    """tf.nn.conv2d, or tf.nn.convolution (space-to-batch) for dilated convs when oneDNN
    is off: Eigen has no dilated conv2d gradient."""
    return tf.nn.convolution if dilation > 1 and binary.onednn_disabled() else tf.nn.conv2d


def padding_bias(signs, pad_value):
    """Per output channel, what a 'SAME' border of `pad_value` adds to a conv once its
    input is shifted by -pad_value: conv(x padded with p) = conv((x - p) padded with 0)
    + p * (sum of the kernel's taps), exactly, at every position, stride and
    dilation. The search convs run in that form: no padded copy of the batch, and
    a bias the conv takes in (oneDNN's graph rewrite fuses conv + bias + ReLU, and
    the filter gradient with the bias gradient). None when the padding value is 0."""
    if not pad_value:
        return None
    return float(pad_value) * tf.reduce_sum(signs, axis=[0, 1, 2])


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


class MixedOp(tf.keras.layers.Layer):
    """sum_k w_k * op_k(x) over `op_names` (w: the softmaxed alpha row).

    Zeroise contributes w * 0 = 0 and is not computed. With `share_bn`, the binary
    convs share one BN -> sign front end (`SharedInputConvs`); other ops are the
    layers of the ops table.
    """

    def __init__(self, op_names, channels, stride, config, share_bn=True, name=None):
        super().__init__(name=name)
        self.op_names = tuple(op_names)
        self.stride = stride
        self.singles, conv_indices, specs = [], [], []
        for k, op in enumerate(self.op_names):
            if op == ops.ZERO:
                continue
            layer = ops.make(op, channels, stride, config, layer_name=f"{k}_{op}")
            spec = _conv_spec(layer) if share_bn else None
            if spec is None:
                self.singles.append((k, layer))
            else:
                conv_indices.append(k)
                specs.append(spec)
        self.conv_indices = conv_indices
        self.convs = (SharedInputConvs(specs, channels, stride, config.binarization,
                                       name="convs") if specs else None)
        self.single_layers = [layer for _, layer in self.singles]

    @_no_autograph
    def call(self, x, mix, training=None):
        terms = [mix[k] * layer(x, training=training) for k, layer in self.singles]
        if self.convs is not None:
            outs = self.convs(x, training=training)
            terms += [mix[k] * y for k, y in zip(self.conv_indices, outs)]
        if not terms:
            y = x[:, ::self.stride, ::self.stride, :] if self.stride > 1 else x
            return tf.zeros_like(y)
        return tf.add_n(terms) if len(terms) > 1 else terms[0]


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
    on one throwaway layer per distinct arguments (one per source and op measured
    0.9 s of the supernet's 2.5 s build)."""
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
      belong to the cell (`SearchCell.quantize`), which passes them in;
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
        self.bn = _bn("bn") if self.specs else None
        # one non-affine BN per pool kind (one BN over the concatenated pools and the
        # state computes the same, but its concat and split copies measured slower)
        self.pool_bns = ([_bn(f"pool_bn_{kind}") for kind in self.pool_kinds]
                         if config.pool_bn else [])
        self.sign = self.binarization.input_quantizer() if self.specs else None

    def build(self, shape):
        """The BNs from the state's shape (ops built per edge need a call)."""
        if self.bn is not None:
            _build(self.bn, shape)
        for bn in self.pool_bns:
            _build(bn, shape)  # per channel: the pooled size does not matter
        super().build(shape)

    def _pools(self, x):
        return [tf.nn.max_pool2d(x, 3, self.stride, "SAME") if kind == "max"
                else tf.nn.avg_pool2d(x, 3, self.stride, "SAME") for kind in self.pool_kinds]

    @_no_autograph
    def call(self, x, rows, conv_factors=None, pool_factors=None, kernels=None,
             compute_dtype="float32", training=None):
        """x: the state; rows: [targets, n_ops] op weights (read only by ops computed
        per edge; None when there are none); conv_factors:
        [n_conv, targets, C] op weights times kernel scales; pool_factors:
        [n_pools, targets]; kernels: {"signs": ..., "biases": ...} per conv type
        (`SearchCell.quantize`) ->
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
    [K * C, T * C] matrix of diagonal blocks factors[k, t] * I. Measured at 32x32, 16
    channels, 4 targets, forward and backward: 9.1 -> 5.9 ms (weight pass) and 17.4
    -> 7.4 ms (alpha pass) against broadcast products and their reductions."""
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
# the column order of a cell's grouped kernels and of `SearchCell.quantize`'s outputs
SOURCE_ORDER = [e for src in range(1 + NODES) for e, _ in _edges_from(src)]


class SearchCell(tf.keras.layers.Layer):
    """A DARTS search cell with the BNAS (or plain DARTS) inter-cell skip.

    Grouped (the default): the binary conv kernels of all 14 edges are ONE variable per
    conv type, [k, k, C, 14 * C] with the edges in `SOURCE_ORDER`; `quantize()` turns
    them into signs, scales and padding biases once (the bilevel step does it
    once for both of its passes) and `call` hands each source its slice.
    """

    def __init__(self, op_names, channels, reduction, reduction_prev, skip, op_config,
                 share_bn=True, conv_dtype="float32", name=None):
        super().__init__(name=name)
        self.channels, self.reduction, self.skip = channels, reduction, skip
        self.pre0 = (FactorizedReduce(channels, name="pre0") if reduction_prev
                     else ReLUConvBN(channels, name="pre0"))
        self.pre1 = ReLUConvBN(channels, name="pre1")
        self.grouped = bool(share_bn)
        self.binarization = op_config.binarization
        self.compute_dtype_ = resolve_conv_dtype(conv_dtype)
        self.edges, self.sources, self.kernels, self.specs = [], [], [], []
        if self.grouped:  # all edges leaving a state computed together (SourceOps)
            for src in range(1 + NODES):
                stride = 2 if reduction and src < 2 else 1
                self.sources.append(SourceOps(op_names, channels, stride,
                                              len(_edges_from(src)), op_config,
                                              name=f"from{src}"))
            first = self.sources[0]
            # ops with a layer per edge (they read the op-weight rows; built by a call)
            self.edge_layers = any(source.singles for source in self.sources)
            self.specs = first.specs
            self.conv_indices, self.pool_indices = first.conv_indices, first.pool_indices
            self.targets = [source.targets for source in self.sources]
        else:  # one MixedOp (with its own layers) per edge
            self.edge_layers = True
            for node in range(NODES):
                for src in range(2 + node):
                    stride = 2 if reduction and src < 2 else 1
                    self.edges.append(MixedOp(op_names, channels, stride, op_config, False,
                                              name=f"n{node}_from{src}"))
        self.residual_bn = self.residual_conv = None
        self.identity_skip = False
        self.in_hw = None

    def build(self, input_shapes):
        prev = input_shapes[1]
        out_channels = NODES * self.channels
        if self.skip and self.reduction:
            self.residual_bn = _bn("residual_bn")
            self.residual_conv = _conv(out_channels, 2, 2, name="residual_conv")
        elif self.skip:
            self.identity_skip = prev[-1] == out_channels
        self.in_hw = tuple(int(n) for n in prev[1:3])
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
            _build(self.pre0, s0)
            _build(self.pre1, s1)
            for src, source in enumerate(self.sources):
                _build(source, [s1[0], *self._source_hw(src, in_hw), self.channels])
            self.build([s0, s1])
            if self.residual_conv is not None:
                _build(self.residual_bn, s1)
                _build(self.residual_conv, s1)
        return [s1[0], *self._source_hw(2, in_hw), NODES * self.channels]

    def _source_hw(self, src, in_hw):
        if src < 2 or not self.reduction:
            return in_hw
        return tuple(-(-n // 2) for n in in_hw)

    def quantize(self):
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
        for variable, spec in zip(self.kernels, self.specs):
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

    @_no_autograph
    def call(self, inputs, mix, training=None, quantized=None):
        """inputs [s0, s1]; mix: the cell type's softmaxed alphas [14, n_ops];
        quantized: this cell's `quantize()` (computed here when None)."""
        s0, s1 = inputs
        states = [self.pre0(s0, training=training), self.pre1(s1, training=training)]
        if self.grouped:
            q = quantized if quantized is not None else self.quantize()
            # [n_ops, 14]: the op weights of the edges in SOURCE_ORDER (gathers as
            # products with one-hot matrices: exact, and their gradients trace faster)
            by_source = tf.matmul(mix, _one_hot_columns(SOURCE_ORDER, N_EDGES),
                                  transpose_a=True)
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
        else:
            rows = tf.unstack(mix)
            k = 0
            for node in range(NODES):
                terms = []
                for src in range(2 + node):
                    terms.append(self.edges[k](states[src], tf.unstack(rows[k]),
                                               training=training))
                    k += 1
                states.append(tf.add_n(terms))
        out = tf.concat(states[2:], axis=-1)
        if self.residual_conv is not None:
            out = out + self.residual_conv(self.residual_bn(s1, training=training))
        elif self.identity_skip:
            out = out + s1
        return out


class Supernet(tf.keras.Model):
    """The BNAS search network; `arch_variables` = [alpha_normal, alpha_reduce].
    `build_from_shape` creates its variables without a forward pass."""

    def __init__(self, op_names=ops.BNAS_OPS, cells=8, channels=16, num_classes=10,
                 template="bnas", binarization="xnor", diversity_lambda=1.0,
                 diversity_tau=7.7, share_bn=True, conv_dtype="auto", stem="auto",
                 image_size=32, name="bnas_supernet"):
        super().__init__(name=name)
        self.op_names = ops.check_ops(op_names)
        if cells < 2:
            raise ValueError(f"a supernet needs at least 2 cells, got {cells}")
        if template not in genotypes.TEMPLATES:
            raise ValueError(f"unknown cell template {template!r}")
        self.cells_count, self.channels, self.template = cells, channels, template
        self.conv_dtype = resolve_conv_dtype(conv_dtype)
        self.diversity_lambda, self.diversity_tau = diversity_lambda, diversity_tau
        config = ops.OpConfig(binarization=binary.scheme(binarization), affine=False,
                              pool_bn=True)
        self.stem_kind = common.resolve_stem(stem, image_size)
        self.stem = self.stem_conv = self.stem_bn = None
        if self.stem_kind == "cifar":
            self.stem_conv = _conv(3 * channels, 3, name="stem_conv")
            self.stem_bn = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                              name="stem_bn")
        else:  # (s0, s1) at 1/4 and 1/8 resolution, C channels (the final network's)
            inputs = tf.keras.Input((None, None, 3))
            self.stem = tf.keras.Model(inputs, common.imagenet_stem(inputs, channels),
                                       name="stem")
        self.cells = []
        current, reduction_prev = channels, self.stem_kind == "imagenet"
        for i in range(cells):
            reduction = i in reduction_cells(cells)
            if reduction:
                current *= 2
            self.cells.append(SearchCell(self.op_names, current, reduction, reduction_prev,
                                         skip=template == "bnas" and i > 0,
                                         op_config=config, share_bn=share_bn,
                                         conv_dtype=self.conv_dtype, name=f"cell{i}"))
            reduction_prev = reduction
        self.pool = tf.keras.layers.GlobalAveragePooling2D(name="pool")
        self.classifier = tf.keras.layers.Dense(num_classes, name="classifier")
        shape = (N_EDGES, len(self.op_names))
        self.alpha_normal, self.alpha_reduce = (
            self.add_weight(name=f"alpha_{kind}", shape=shape, trainable=True,
                            initializer=tf.keras.initializers.RandomNormal(stddev=1e-3))
            for kind in ("normal", "reduce"))

    @property
    def arch_variables(self):
        return [self.alpha_normal, self.alpha_reduce]

    def build_from_shape(self, input_shape):
        """Create every variable for images of `input_shape` (batch, height, width,
        channels) without a forward pass (an eager call runs ~4000 ops); False,
        with nothing built, when a cell needs a call (ops with per-edge layers)."""
        if any(cell.edge_layers for cell in self.cells):
            return False
        shape = list(input_shape)
        with tf.name_scope(self.name):
            if self.stem is None:
                _build(self.stem_conv, shape)
                stem = [shape[0], *shape[1:3], self.stem_conv.filters]
                _build(self.stem_bn, stem)
                s0 = s1 = stem
            else:  # a functional model: built already; its outputs' shapes
                s0, s1 = (list(s) for s in self.stem.compute_output_shape(shape))
            for cell in self.cells:
                s0, s1 = s1, cell.build_from_shapes([s0, s1])
            _build(self.classifier, [shape[0], s1[-1]])
        self.built = True
        return True

    def arch_regularization(self, epoch):
        return regularizers.diversity(self.arch_variables, self.diversity_lambda,
                                      self.diversity_tau, epoch)

    def quantize(self):
        """Every cell's quantised binary kernels (`SearchCell.quantize`): pass them as
        ``net(x, quantized=...)`` to reuse them across calls while the weights do not
        change (the bilevel step's alpha and weight passes)."""
        return [cell.quantize() for cell in self.cells]

    @_no_autograph
    def call(self, x, training=None, quantized=None):
        if self.stem is None:
            s0 = s1 = self.stem_bn(self.stem_conv(x), training=training)
        else:
            s0, s1 = self.stem(x, training=training)
        mix_normal, mix_reduce = (tf.nn.softmax(alpha, axis=-1)
                                  for alpha in self.arch_variables)
        for i, cell in enumerate(self.cells):
            mix = mix_reduce if cell.reduction else mix_normal
            s0, s1 = s1, cell([s0, s1], mix, training=training,
                              quantized=None if quantized is None else quantized[i])
        return self.classifier(self.pool(s1))

    def alpha_arrays(self):
        """(alpha_normal, alpha_reduce) as numpy arrays."""
        return (np.asarray(self.alpha_normal.numpy()), np.asarray(self.alpha_reduce.numpy()))


# ----------------------------------------------------------------------------- method API

def build_supernet(search_config, num_classes, image_size):
    """The BNAS supernet of a SearchConfig (the runner builds its variables); its
    stem follows ``extra['stem']`` (default 'auto': by `image_size`)."""
    extra = search_config.extra or {}
    return Supernet(search_config.ops, search_config.cells, search_config.channels,
                    num_classes, template=search_config.cell_template,
                    binarization=search_config.binarization,
                    diversity_lambda=search_config.diversity_lambda,
                    diversity_tau=search_config.diversity_tau,
                    conv_dtype=extra.get("conv_dtype", "auto"),
                    stem=extra.get("stem", "auto"), image_size=image_size)


def validate_config(search_config):
    """One-line ValueError for bad BNAS settings in `search_config.extra`:
    ``conv_dtype`` ('auto', 'float32' or 'bfloat16' binary convs) and ``stem``
    ('auto', 'cifar' or 'imagenet')."""
    extra = dict(search_config.extra or {})
    unknown = sorted(set(extra) - {"conv_dtype", "stem"})
    if unknown:
        raise ValueError(f"unknown BNAS search settings: {', '.join(unknown)} "
                         "(they are conv_dtype and stem)")
    resolve_conv_dtype(extra.get("conv_dtype", "auto"))
    common.resolve_stem(extra.get("stem", "auto"), 32)


def derive(net, search_config, val_batches=None):
    """The BNAS genotype of the current alphas (Eq. 4 with search_config.gamma)."""
    del val_batches
    alpha_normal, alpha_reduce = net.alpha_arrays()
    return derive_lib.derive_bnas(alpha_normal, alpha_reduce, net.op_names,
                                  gamma=search_config.gamma, mode=search_config.derive,
                                  template=search_config.cell_template)


def epoch_logs(net, epoch):
    """Alpha entropies, the diversity term, and op-probability heatmaps per cell."""
    from bnas_tf import plot  # matplotlib only when logging

    alphas = net.alpha_arrays()
    h_normal = float(regularizers.row_entropy_np(alphas[0]).mean())
    h_reduce = float(regularizers.row_entropy_np(alphas[1]).mean())
    logs = {"alpha_entropy": (h_normal + h_reduce) / 2,
            "alpha_entropy_normal": h_normal, "alpha_entropy_reduce": h_reduce,
            "diversity_term": regularizers.diversity_np(alphas, net.diversity_lambda,
                                                        net.diversity_tau, epoch)}
    labels = derive_lib.edge_labels(NODES)
    for kind, alpha in zip(("normal", "reduce"), alphas):
        logs[f"alphas/{kind}"] = plot.alpha_heatmap(
            regularizers.softmax_np(alpha), labels, net.op_names,
            title=f"{kind} cell, epoch {epoch}")
    return logs


def on_epoch_begin(net, epoch):
    """BNAS has no per-epoch schedule besides the regulariser's (driven by the epoch)."""
    del net, epoch
    return None
