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
* `Supernet`: float CIFAR stem (3x3 conv -> 3C, BN), cells (reductions at
  cells//3 and 2*cells//3, channels doubling there), global pooling, dense.
  ``alpha_normal``/``alpha_reduce`` (14 x n_ops, init 1e-3 * N(0, 1)) are its
  `arch_variables`; `arch_regularization(epoch)` is the diversity regulariser.

Ops are built as in DARTS' search: non-affine BN inside binary convs and a
non-affine BN after pools (``ops.OpConfig(affine=False, pool_bn=True)``).

Speed: a cell computes the ops of all edges leaving one state together
(`SourceOps`): one BN -> sign per state, one wide conv per conv type whose output
channels concatenate the edges' convs, one pool per kind. With non-affine BNs this
is exactly the per-edge computation (tested against ``share_bn=False``, which
builds one `MixedOp` with separate layers per edge) at 2.4x the speed. Binary convs
run as ``scale * conv(sign(x), sign(W))`` (`binary_conv`): +-1 operands, the XNOR
scale folded into the op weights, the +1 padding as zero padding plus a constant
border term; with ``conv_dtype='bfloat16'`` (the default 'auto' picks it on CPUs
with native bfloat16) the +-1 products run in bfloat16: exact products, float32
accumulation, results rounded to 8 significant bits (numerics differ slightly from
float32; gradients are bfloat16 too), about 1.4x faster again.
"""
from __future__ import annotations


import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.search import derive as derive_lib
from bnas_tf.search import regularizers

NODES = genotypes.NODES
N_EDGES = derive_lib.edge_offsets(NODES)[1]
# The supernet's calls are plain Python over a static structure: autograph would
# only add tracing time (it converts every nested call), so it is switched off.
_no_autograph = tf.autograph.experimental.do_not_convert


def reduction_cells(cells):
    return (cells // 3, 2 * cells // 3)


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

    @_no_autograph
    def call(self, x, training=None):
        return self.bn(self.conv(tf.nn.relu(x)), training=training)


class FactorizedReduce(tf.keras.layers.Layer):
    """Float ReLU -> two stride-2 1x1 convs on x and x shifted by one pixel, concat, BN."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        if filters % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {filters}")
        self.conv0 = _conv(filters // 2, 1, 2, name="conv0")
        self.conv1 = _conv(filters // 2, 1, 2, name="conv1")
        self.bn = _bn("bn")

    @_no_autograph
    def call(self, x, training=None):
        x = tf.nn.relu(x)
        shifted = tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
        y = tf.concat([self.conv0(x), self.conv1(shifted)], axis=-1)
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


def binary_conv(conv, x, compute_dtype="float32", parts=1):
    """A larq QuantConv2D without input quantizer applied to the signed `x`, computed
    as ``scale * conv(x, signs)`` (`kernel_signs`: signs exactly +-1, the scale per
    output channel, constant for the gradient; `parts` = edges sharing the kernel).

    Returns (z, scale): the caller multiplies by `scale` (>= 0), which commutes with
    ReLU, so it can be folded into the op weights. z is an integer-valued sum of +-1
    products: exact in float32 in any summation order; with `compute_dtype`
    'bfloat16' its products are exact too (accumulated in float32 by oneDNN; the
    bfloat16 result keeps 8 significant bits, i.e. sums beyond 256 are rounded).
    Gradients equal those of the plain conv. The +1 padding of binary convs
    (`pad_values`) is zero padding plus a constant border term (the conv of the
    padding mask, one image): no padded copy of the input. Float convs (no kernel
    quantizer) run as the layer itself.
    """
    if conv.kernel_quantizer is None:
        return conv(x), None
    if not conv.built:
        with tf.name_scope(conv.name):
            conv.build(x.shape)
    latent = getattr(conv.kernel, "latent_variable", conv.kernel)
    signs, scale = kernel_signs(conv.kernel_quantizer, latent, parts)
    strides, dilations = list(conv.strides), list(conv.dilation_rate)
    padded = conv.padding == "same" and conv.pad_values != 0
    padding = "SAME" if padded else conv.padding.upper()
    # Eigen (oneDNN off) has no dilated conv gradient: space-to-batch convs there
    op = tf.nn.convolution if max(dilations) > 1 and binary.onednn_disabled() else tf.nn.conv2d
    if compute_dtype != "float32":
        z = tf.cast(op(tf.cast(x, compute_dtype), tf.cast(signs, compute_dtype), strides,
                       padding, dilations=dilations), tf.float32)
    else:
        z = op(x, signs, strides, padding, dilations=dilations)
    if padded:
        pads = conv._get_padding_same(x)
        if any(p for pair in pads for p in pair):
            mask = np.pad(np.zeros([1] + x.shape[1:].as_list(), np.float32), pads,
                          constant_values=float(conv.pad_values))
            z = z + op(tf.constant(mask), signs, strides, "VALID", dilations=dilations)
    return z, scale


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


class StackedInitializer(tf.keras.initializers.Initializer):
    """`parts` independent draws of `base` for a kernel of shape (..., parts * n),
    concatenated along the output axis: a grouped kernel initialised exactly like
    `parts` separate (..., n) kernels (glorot's fan-out is that of one part)."""

    def __init__(self, base, parts):
        self.base, self.parts = tf.keras.initializers.get(base), int(parts)

    def __call__(self, shape, dtype=None, **kwargs):
        part = list(shape[:-1]) + [shape[-1] // self.parts]
        # a fresh instance per part: one unseeded instance repeats its values
        config = self.base.get_config()
        return tf.concat([type(self.base).from_config(config)(part, dtype=dtype)
                          for _ in range(self.parts)], axis=-1)

    def get_config(self):
        return {"base": tf.keras.initializers.serialize(self.base), "parts": self.parts}


class SourceOps(tf.keras.layers.Layer):
    """Every op of the `targets` edges leaving one state, computed together.

    All edges leaving a state read the same tensor at the same stride, so in the
    search (non-affine BatchNorms, whose batch and moving statistics are then
    identical for every edge) their ops can share work exactly:

    * one BN -> sign front end for all binary convs of all these edges;
    * per conv type (kernel, dilation), ONE conv whose output channels are the
      concatenation of the `targets` edges' convs (per-output-channel XNOR scales and
      the weight clip act per channel, so this equals separate convs; initialised as
      separate glorot kernels), then split;
    * one pool (and its non-affine BN) per pool kind, shared by the edges.

    Ops of other kinds (separable convs, op shortcuts, ...) are built once per edge.
    `call(x, weights)` takes the `targets` x n_ops op weights and returns the
    `targets` mixed edge outputs sum_k w[t, k] * op_k(x).
    """

    def __init__(self, op_names, channels, stride, targets, config, conv_dtype="float32",
                 name=None):
        super().__init__(name=name)
        self.compute_dtype_ = resolve_conv_dtype(conv_dtype)
        self.op_names, self.channels, self.stride = tuple(op_names), channels, stride
        self.targets, self.binarization = int(targets), config.binarization
        self.pools, self.singles, self.conv_indices, self.specs = [], [], [], []
        for k, op in enumerate(self.op_names):
            if op == ops.ZERO:
                continue
            layer = ops.make(op, channels, stride, config, layer_name=f"{k}_{op}")
            spec = _conv_spec(layer)
            if type(layer) is binary.Pool:  # noqa: E721  (a pure function of x: share it)
                self.pools.append((k, layer))
            elif spec is not None and not spec[3] and groupable(config.binarization):
                self.conv_indices.append(k)
                self.specs.append(spec)
            else:
                per_edge = [layer] + [ops.make(op, channels, stride, config,
                                               layer_name=f"{k}_{op}_t{t}")
                                      for t in range(1, self.targets)]
                self.singles.append((k, per_edge))
        self.pool_layers = [layer for _, layer in self.pools]
        self.single_layers = [layer for _, per_edge in self.singles for layer in per_edge]
        self.bn = _bn("bn") if self.specs else None
        self.sign = self.binarization.input_quantizer() if self.specs else None
        self.convs = []
        width = self.targets * channels
        for kernel, dilation, _relu, _shortcut in self.specs:
            dilated_stride = dilation > 1 and stride > 1
            self.convs.append(binary.QuantConv2D(
                width, kernel, strides=1 if dilated_stride else stride, padding="same",
                pad_values=self.binarization.pad_values if self.binarization.enabled else 0.0,
                dilation_rate=1 if dilated_stride else dilation, use_bias=False,
                input_quantizer=None, kernel_quantizer=self.binarization.kernel_quantizer(),
                kernel_constraint=self.binarization.kernel_constraint(),
                kernel_initializer=StackedInitializer("glorot_normal", self.targets),
                name=f"conv_{kernel}x{kernel}_d{dilation}"))

    @_no_autograph
    def call(self, x, weights, training=None):
        """x: the state; weights: [targets, n_ops] op weights -> list of targets outputs."""
        stride, targets, channels = self.stride, self.targets, self.channels
        columns = tf.unstack(tf.transpose(weights))  # n_ops tensors of shape [targets]
        acc = None  # [B, H, W, targets, C]
        if self.convs:
            h = self.bn(x, training=training)
            signed = self.sign(h) if self.sign is not None else h
            even = signed[:, ::2, ::2, :] if stride > 1 else signed
            dtype = self.compute_dtype_ if self.sign is not None else "float32"
            for conv, k, (kernel, dilation, relu, _) in zip(self.convs, self.conv_indices,
                                                           self.specs):
                y, scale = binary_conv(conv, even if dilation > 1 and stride > 1 else signed,
                                       dtype, parts=targets)
                factor = tf.reshape(columns[k], [targets, 1])
                if self.binarization.enabled and self.binarization.activation_scale:
                    y = y * binary.activation_scale(h, kernel, stride)
                if scale is not None:  # scale >= 0 commutes with ReLU: fold it in
                    factor = factor * tf.reshape(scale, [targets, channels])
                if relu:
                    y = tf.nn.relu(y)
                term = tf.reshape(y, [-1, y.shape[1], y.shape[2], targets, channels]) * factor
                acc = term if acc is None else acc + term
        for k, layer in self.pools:
            p = layer(x, training=training)
            term = p[:, :, :, None, :] * tf.reshape(columns[k], [targets, 1])
            acc = term if acc is None else acc + term
        outs = tf.unstack(acc, axis=3) if acc is not None else [None] * targets
        for k, per_edge in self.singles:
            for t, layer in enumerate(per_edge):
                term = columns[k][t] * layer(x, training=training)
                outs[t] = term if outs[t] is None else outs[t] + term
        if outs[0] is None:  # only Zeroise: zeros at the output's shape
            zero = tf.zeros_like(x[:, ::stride, ::stride, :] if stride > 1 else x)
            outs = [zero] * targets
        return outs


class SearchCell(tf.keras.layers.Layer):
    """A DARTS search cell with the BNAS (or plain DARTS) inter-cell skip."""

    def __init__(self, op_names, channels, reduction, reduction_prev, skip, op_config,
                 share_bn=True, conv_dtype="float32", name=None):
        super().__init__(name=name)
        self.channels, self.reduction, self.skip = channels, reduction, skip
        self.pre0 = (FactorizedReduce(channels, name="pre0") if reduction_prev
                     else ReLUConvBN(channels, name="pre0"))
        self.pre1 = ReLUConvBN(channels, name="pre1")
        self.grouped = bool(share_bn)
        self.edges, self.sources = [], []
        if self.grouped:  # all edges leaving a state computed together (SourceOps)
            for src in range(1 + NODES):
                stride = 2 if reduction and src < 2 else 1
                self.sources.append(SourceOps(op_names, channels, stride,
                                              len(_edges_from(src)), op_config,
                                              conv_dtype=conv_dtype, name=f"from{src}"))
        else:  # one MixedOp (with its own layers) per edge
            for node in range(NODES):
                for src in range(2 + node):
                    stride = 2 if reduction and src < 2 else 1
                    self.edges.append(MixedOp(op_names, channels, stride, op_config, False,
                                              name=f"n{node}_from{src}"))
        self.residual_bn = self.residual_conv = None
        self.identity_skip = False

    def build(self, input_shapes):
        prev = input_shapes[1]
        out_channels = NODES * self.channels
        if self.skip and self.reduction:
            self.residual_bn = _bn("residual_bn")
            self.residual_conv = _conv(out_channels, 2, 2, name="residual_conv")
        elif self.skip:
            self.identity_skip = prev[-1] == out_channels
        super().build(input_shapes)

    @_no_autograph
    def call(self, inputs, mix, training=None):
        """inputs [s0, s1]; mix: the cell type's softmaxed alphas [14, n_ops]."""
        s0, s1 = inputs
        states = [self.pre0(s0, training=training), self.pre1(s1, training=training)]
        if self.grouped:
            # edge outputs per node; node n is complete once sources 0..n+1 are done
            incoming = [[] for _ in range(NODES)]
            for src, layer in enumerate(self.sources):
                if src >= 2:
                    states.append(_sum(incoming[src - 2]))
                edges = _edges_from(src)
                rows = tf.gather(mix, [e for e, _ in edges])
                for (_, node), out in zip(edges, layer(states[src], rows, training=training)):
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
    """The BNAS search network; `arch_variables` = [alpha_normal, alpha_reduce]."""

    def __init__(self, op_names=ops.BNAS_OPS, cells=8, channels=16, num_classes=10,
                 template="bnas", binarization="xnor", diversity_lambda=1.0,
                 diversity_tau=7.7, share_bn=True, conv_dtype="auto", name="bnas_supernet"):
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
        self.stem_conv = _conv(3 * channels, 3, name="stem_conv")
        self.stem_bn = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                                          name="stem_bn")
        self.cells = []
        current, reduction_prev = channels, False
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

    def arch_regularization(self, epoch):
        return regularizers.diversity(self.arch_variables, self.diversity_lambda,
                                      self.diversity_tau, epoch)

    @_no_autograph
    def call(self, x, training=None):
        s0 = s1 = self.stem_bn(self.stem_conv(x), training=training)
        mix_normal, mix_reduce = (tf.nn.softmax(alpha, axis=-1)
                                  for alpha in self.arch_variables)
        for cell in self.cells:
            mix = mix_reduce if cell.reduction else mix_normal
            s0, s1 = s1, cell([s0, s1], mix, training=training)
        return self.classifier(self.pool(s1))

    def alpha_arrays(self):
        """(alpha_normal, alpha_reduce) as numpy arrays."""
        return (np.asarray(self.alpha_normal.numpy()), np.asarray(self.alpha_reduce.numpy()))


# ----------------------------------------------------------------------------- method API

def build_supernet(search_config, num_classes, image_size):
    """The BNAS supernet of a SearchConfig (the runner builds its variables)."""
    del image_size  # the CIFAR stem works at any input size
    return Supernet(search_config.ops, search_config.cells, search_config.channels,
                    num_classes, template=search_config.cell_template,
                    binarization=search_config.binarization,
                    diversity_lambda=search_config.diversity_lambda,
                    diversity_tau=search_config.diversity_tau,
                    conv_dtype=(search_config.extra or {}).get("conv_dtype", "auto"))


def validate_config(search_config):
    """One-line ValueError for bad BNAS settings in `search_config.extra` (only
    ``conv_dtype``: 'auto', 'float32' or 'bfloat16' binary convs)."""
    extra = dict(search_config.extra or {})
    unknown = sorted(set(extra) - {"conv_dtype"})
    if unknown:
        raise ValueError(f"unknown BNAS search settings: {', '.join(unknown)} "
                         "(the only one is conv_dtype)")
    resolve_conv_dtype(extra.get("conv_dtype", "auto"))


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
