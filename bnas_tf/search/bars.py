"""BARS search: the macro (width, depth) + micro (dense cell) supernet, the method
hooks `runner.run_search` calls, and derivation by sampling.

Supernet (BARS Sec. 4, App. A; docs/bars.md): a float stem, 3 stages, a float
classifier. Stage i = 1 fixed normal cell + `max_depth` optional normal cells
(depth d uses the first d of them); its output is the Gumbel-softmax weighted sum
of [y0 = fixed cell output, y1, ..., y_max_depth] (Eq. 4). A reduction cell sits
between stages: 3 * (1 + 3) + 2 = 14 cells by default. Every feature map of
stage i is multiplied by the relaxed width mask sum_w m_w M_w (Eq. 3), M_w keeping
the first ``width_channels(r_w, C_i)`` channels; binary convs also mask their
*binarised* input (sign(0) = +1 would otherwise leak the dead channels), so at
one-hot widths a stage computes what the narrow network computes (up to the
weight scale mean|W|, which spans the whole kernel).
Cells are dense (node 0 = binary 3x3 preprocess without shortcut, nodes 1..4 sum
all earlier nodes through a mixed op per edge); one op alpha per stage, one shared
by the reduction cells; every decision (ops, widths, depths) is Gumbel-softmax
sampled (Eq. 6) at temperature ``net.temperature``.

Method hooks (module-level; `METHOD` is this module): `build_supernet`,
`build_model` (BilevelModel with BARS' optimisers and multiplicative budget
loss), `derive`, `epoch_logs`, `on_epoch_begin`, `validate_config`,
`default_config`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import types

import numpy as np

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common
from bnas_tf.search import SearchConfig, bilevel, budget
from bnas_tf.search import derive as derive_lib

WIDTH_CHOICES = bars_models.WIDTH_CHOICES
EXTRA_DEFAULTS = {
    "flops_budget": 0.0,          # millions of equivalent OPs (FLOPs + BiOPs/64); 0 = none
    "warmup_epochs": 5,
    "temperature": 1.0,
    "temperature_decay": 0.9,
    "entropy_start": -0.01,
    "entropy_step": 0.001,
    "budget_theta_above": 1.0,
    "budget_theta_below": 0.0,
    "num_samples": 8,
    "base_channels": (48, 96, 192),
    "width_choices": WIDTH_CHOICES,
    "max_depth": 3,
    "downsample": "improved",
    "op_shortcut": True,
}


# ---------------------------------------------------------------------------- layers
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


def _masked(layer):
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
            if _masked(op):
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


# ---------------------------------------------------------------------------- supernet
@dataclasses.dataclass(frozen=True)
class Architecture:
    """One discrete point of the search space, as choice indices."""

    ops: tuple       # per stage: one op index per dense edge
    reduce: tuple    # one op index per dense edge of the reduction cells
    widths: tuple    # per stage: index into width_choices
    depths: tuple    # per stage: depth 0..max_depth


class BarsSupernet(tf.keras.Model):
    """The BARS supernet (see the module docstring). `arch_variables`: one op alpha
    per stage ([edges, ops]), `alpha_reduce`, `alpha_width` [stages, widths],
    `alpha_depth` [stages, max_depth + 1]."""

    def __init__(self, num_classes, image_size, base_channels=(48, 96, 192),
                 width_choices=WIDTH_CHOICES, max_depth=3, op_names=ops.BARS_OPS,
                 downsample="improved", op_shortcut=True, binarization=binary.BARS,
                 stem="auto", seed=0, name="bars_supernet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.base_channels = tuple(int(c) for c in base_channels)
        self.width_choices = tuple(float(w) for w in width_choices)
        self.max_depth = int(max_depth)
        self.op_names = ops.check_ops(op_names)
        self.downsample, self.op_shortcut = downsample, bool(op_shortcut)
        self.binarization = binary.scheme(binarization)
        self.stem_kind = common.resolve_stem(stem, image_size)
        self.op_config = ops.OpConfig(binarization=self.binarization, affine=False,
                                      op_shortcut=self.op_shortcut)
        n_stages, n_edges = len(self.base_channels), len(genotypes.dense_edges())
        # Width masks M_w (rows) and the kept fraction of channels of each choice.
        self.widths_channels = [[bars_models.width_channels(r, c) for r in self.width_choices]
                                for c in self.base_channels]
        self.width_masks = [tf.constant([[1.0] * k + [0.0] * (c - k) for k in row], tf.float32)
                            for row, c in zip(self.widths_channels, self.base_channels)]
        self.ratios = np.array([[k / c for k in row] for row, c in
                                zip(self.widths_channels, self.base_channels)], np.float64)

        self.stem = self._make_stem()
        self.reduce_cells, self.stage_cells = [], []
        for i, c in enumerate(self.base_channels):
            if i > 0:
                self.reduce_cells.append(SearchCell(self.op_names, c, True, downsample,
                                                    self.op_config, name=f"stage{i}_reduce"))
            self.stage_cells.append([SearchCell(self.op_names, c, False, downsample,
                                                self.op_config, name=f"stage{i}_cell{k}")
                                     for k in range(1 + self.max_depth)])
        self.head_bn = common.batchnorm("classifier_bn")  # as the final network (models/bars.py)
        self.pool = tf.keras.layers.GlobalAveragePooling2D(name="classifier_pool")
        self.fc = tf.keras.layers.Dense(self.num_classes, name="classifier")

        zeros = tf.keras.initializers.Zeros()
        self.alpha_ops = [self.add_weight(name=f"alpha_stage{i}", shape=(n_edges, len(op_names)),
                                          initializer=zeros, trainable=True)
                          for i in range(n_stages)]
        self.alpha_reduce = self.add_weight(name="alpha_reduce", shape=(n_edges, len(op_names)),
                                            initializer=zeros, trainable=True)
        self.alpha_width = self.add_weight(name="alpha_width",
                                           shape=(n_stages, len(self.width_choices)),
                                           initializer=zeros, trainable=True)
        self.alpha_depth = self.add_weight(name="alpha_depth",
                                           shape=(n_stages, self.max_depth + 1),
                                           initializer=zeros, trainable=True)
        self.temperature = self.add_weight(name="temperature", shape=(),
                                           initializer=tf.keras.initializers.Constant(1.0),
                                           trainable=False)
        self.entropy_coef = self.add_weight(name="entropy_coefficient", shape=(),
                                            initializer=tf.keras.initializers.Constant(-0.01),
                                            trainable=False)
        self.rng = tf.random.Generator.from_seed(int(seed))
        # Filled by the method hooks (plain python: not part of the graph).
        self.flops_budget = 0.0
        self.budget_theta = (1.0, 0.0)
        self.entropy_schedule = (-0.01, 0.001)
        self.temperature_schedule = (1.0, 0.9, 5)  # initial, decay, warm-up epochs
        self.epoch_seen = 0
        self._cache = types.SimpleNamespace(cost_tables=None, eval_fn=None)  # not tracked

    # ------------------------------------------------------------------ structure
    def _make_stem(self):
        inputs = tf.keras.Input((self.image_size, self.image_size, 3))
        if self.stem_kind == "cifar":
            out = common.cifar_stem(inputs, self.base_channels[0])
        else:
            _, out = common.imagenet_stem(inputs, self.base_channels[0])
        return tf.keras.Model(inputs, out, name="stem")

    @property
    def stem_stride(self):
        return 1 if self.stem_kind == "cifar" else 8

    @property
    def arch_variables(self):
        return list(self.alpha_ops) + [self.alpha_reduce, self.alpha_width, self.alpha_depth]

    # ------------------------------------------------------------------ arch weights
    def _gumbel_softmax(self, logits):
        u = self.rng.uniform(tf.shape(logits), minval=1e-10, maxval=1.0)
        gumbel = -tf.math.log(-tf.math.log(u))
        return tf.nn.softmax((logits + gumbel) / self.temperature, axis=-1)

    def sampled_weights(self):
        """Gumbel-softmax relaxed decisions (one sample per forward pass)."""
        return {"ops": [self._gumbel_softmax(a) for a in self.alpha_ops],
                "reduce": self._gumbel_softmax(self.alpha_reduce),
                "width": self._gumbel_softmax(self.alpha_width),
                "depth": self._gumbel_softmax(self.alpha_depth)}

    def relaxed_weights(self):
        """The noise-free relaxation softmax(alpha / temperature) (evaluation)."""
        def soft(a):
            return tf.nn.softmax(a / self.temperature, axis=-1)
        return {"ops": [soft(a) for a in self.alpha_ops], "reduce": soft(self.alpha_reduce),
                "width": soft(self.alpha_width), "depth": soft(self.alpha_depth)}

    def onehot_weights(self, arch: Architecture):
        """Decision weights of one discrete architecture."""
        n_ops = len(self.op_names)

        def hot(indices, depth):
            return tf.one_hot(list(indices), depth, dtype=tf.float32)
        return {"ops": [hot(o, n_ops) for o in arch.ops], "reduce": hot(arch.reduce, n_ops),
                "width": hot(arch.widths, len(self.width_choices)),
                "depth": hot(arch.depths, self.max_depth + 1)}

    def probabilities(self):
        """softmax(alpha) of every decision, as numpy arrays."""
        return {"ops": [tf.nn.softmax(a).numpy() for a in self.alpha_ops],
                "reduce": tf.nn.softmax(self.alpha_reduce).numpy(),
                "width": tf.nn.softmax(self.alpha_width).numpy(),
                "depth": tf.nn.softmax(self.alpha_depth).numpy()}

    # ------------------------------------------------------------------ forward
    def channel_masks(self, width_weights):
        """Per stage: sum_w m_w M_w, a [C_i] vector."""
        return [tf.linalg.matvec(mask, width_weights[i], transpose_a=True)
                for i, mask in enumerate(self.width_masks)]

    @tf.autograph.experimental.do_not_convert
    def forward(self, inputs, arch_weights, training=None):
        masks = self.channel_masks(arch_weights["width"])
        x = self.stem(inputs, training=training) * masks[0]
        for i in range(len(self.stage_cells)):
            x, _ = self.run_stage(i, x, arch_weights, masks, training=training)
        x = self.head_bn(x, training=training) * masks[-1]
        return self.fc(self.pool(x))

    def run_stage(self, i, x, arch_weights, masks, training=None):
        """Stage i on `x` (the previous stage's output): (output, [y0, y1, ...]) with
        output = sum_d m_d * y_d over the depth decision (BARS Eq. 4)."""
        if i > 0:
            x = self.reduce_cells[i - 1](x, arch_weights["reduce"], masks[i - 1], masks[i],
                                         training=training)
        outs = []
        for cell in self.stage_cells[i]:
            x = cell(x, arch_weights["ops"][i], masks[i], masks[i], training=training)
            outs.append(x)
        depth_w = arch_weights["depth"][i]
        return tf.add_n([depth_w[d] * y for d, y in enumerate(outs)]), outs

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        weights = self.sampled_weights() if training else self.relaxed_weights()
        return self.forward(inputs, weights, training=training)

    # ------------------------------------------------------------------ costs
    def cost_tables(self):
        """Full-width (FLOPs, BiOPs) of every candidate component, counted on the layers
        the final network uses (`bnas_tf.costs`); cached."""
        if self._cache.cost_tables is None:
            with tf.init_scope():  # eager even when first asked inside a tf.function
                self._cache.cost_tables = _cost_tables(self)
        return self._cache.cost_tables

    def expected_costs(self):
        """Expected FLOPs, BiOPs and equivalent OPs (per image) under softmax(alpha);
        differentiable in every alpha."""
        t = self.cost_tables()
        p_w = tf.nn.softmax(self.alpha_width)
        p_d = tf.nn.softmax(self.alpha_depth)
        ratios = tf.constant(self.ratios, tf.float32)
        e1 = tf.reduce_sum(p_w * ratios, axis=-1)            # E[rho]
        e2 = tf.reduce_sum(p_w * ratios ** 2, axis=-1)       # E[rho^2]
        depths = tf.range(self.max_depth + 1, dtype=tf.float32)
        cells_on = 1.0 + tf.reduce_sum(p_d * depths, axis=-1)  # 1 + sum_k P(depth >= k)
        p_red = tf.nn.softmax(self.alpha_reduce)
        out = []
        for kind in (0, 1):  # 0: FLOPs, 1: BiOPs
            total = budget.expectation(p_w[0], t["stem"][:, kind])
            total += budget.expectation(p_w[-1], t["classifier"][:, kind])
            for i, alpha in enumerate(self.alpha_ops):
                p_ops = tf.nn.softmax(alpha)
                normal = t["pre"][i][kind] + tf.reduce_sum(p_ops * t["edges"][i][..., kind])
                total += cells_on[i] * e2[i] * normal
                if i > 0:
                    total += e1[i - 1] * e1[i] * (t["reduce_pre"][i][kind]
                                                  + t["reduce_skip"][i][kind])
                    total += e2[i] * tf.reduce_sum(p_red * t["reduce_edges"][i][..., kind])
            out.append(total)
        flops, biops = out
        return {"flops": flops, "biops": biops,
                "equivalent_ops": budget.equivalent_ops(flops, biops)}

    def expected_flops(self):
        """Expected equivalent OPs (FLOPs + BiOPs/64) per image, differentiable."""
        return self.expected_costs()["equivalent_ops"]

    # ------------------------------------------------------------------ losses
    def entropy(self):
        return budget.mean_entropy(self.arch_variables)

    def entropy_term(self, epoch):
        start, step = self.entropy_schedule
        coef = budget.entropy_coefficient(tf.cast(epoch, tf.float32), start, step)
        return coef * self.entropy()

    def arch_regularization(self, epoch):
        """The additive part of BARS' alpha loss: lambda_ent(epoch) * H(alpha)."""
        return self.entropy_term(epoch)

    def arch_loss(self, ce, epoch):
        """BARS' whole alpha loss: CE * (FLOPs(alpha)/F)^theta + lambda_ent * H(alpha).

        `ce` is the (replica-scaled) validation cross entropy; the entropy term is
        scaled for tf.distribute like any regulariser."""
        above, below = self.budget_theta
        loss = budget.budget_loss(ce, self.expected_flops() / budget.MEGA, self.flops_budget,
                                  above, below)
        return loss + tf.nn.scale_regularization_loss(self.entropy_term(epoch))

    def get_config(self):
        return {"num_classes": self.num_classes, "image_size": self.image_size,
                "base_channels": list(self.base_channels),
                "width_choices": list(self.width_choices), "max_depth": self.max_depth,
                "op_names": list(self.op_names), "downsample": self.downsample,
                "op_shortcut": self.op_shortcut, "stem": self.stem_kind}


_COST_CACHE = {}


def _cached_costs(key, make_layer, input_shape):
    if key not in _COST_CACHE:
        _COST_CACHE[key] = budget.layer_costs(make_layer(), input_shape)
    return _COST_CACHE[key]


def _cost_tables(net):
    """Component costs at full width (widths enter as channel ratios, exact for convs
    whose MACs are bilinear in C_in * C_out); stem and classifier per width choice."""
    scheme, base = net.binarization, net.base_channels
    op_config = ops.OpConfig(binarization=scheme, op_shortcut=net.op_shortcut)
    sizes = budget.stage_resolutions(net.image_size, len(base), net.stem_stride)
    ident = (scheme, net.op_shortcut)

    def op_cost(name, c, size, stride):
        return _cached_costs(("op", name, c, size, stride) + ident,
                             lambda: ops.make(name, c, stride, op_config), (size, size, c))

    def pre_cost(c_in, c, size):
        return _cached_costs(("pre", c_in, c, size) + ident,
                             lambda: binary.BinaryConv(c, 3, binarization=scheme),
                             (size, size, c_in))

    def stem_cost(c):
        def make():
            inputs = tf.keras.Input((net.image_size, net.image_size, 3))
            if net.stem_kind == "cifar":
                out = common.cifar_stem(inputs, c)
            else:
                out = common.imagenet_stem(inputs, c)[1]
            return tf.keras.Model(inputs, out)
        return _cached_costs(("stem", net.stem_kind, c, net.image_size), make,
                             (net.image_size, net.image_size, 3))

    tables = {"stem": np.array([stem_cost(c) for c in net.widths_channels[0]]),
              "classifier": np.array([_cached_costs(
                  ("fc", c, net.num_classes), lambda: tf.keras.layers.Dense(net.num_classes),
                  (c,)) for c in net.widths_channels[-1]]),
              "pre": [], "edges": [], "reduce_pre": [None], "reduce_skip": [None],
              "reduce_edges": [None]}
    for i, (c, size) in enumerate(zip(base, sizes)):
        tables["pre"].append(np.array(pre_cost(c, c, size)))
        tables["edges"].append(np.array([[op_cost(o, c, size, 1) for o in net.op_names]
                                         for _ in genotypes.dense_edges()]))
        if i == 0:
            continue
        c_prev, size_prev = base[i - 1], sizes[i - 1]
        tables["reduce_pre"].append(np.array(pre_cost(c_prev, c, size_prev)))
        tables["reduce_skip"].append(np.array(_cached_costs(
            ("skip", net.downsample, c_prev, c, size_prev) + ident,
            lambda: bars_models.BarsDownsample(c, net.downsample, scheme),
            (size_prev, size_prev, c_prev))))
        tables["reduce_edges"].append(np.array([
            [op_cost(o, c, size_prev, 2) if src == 0 else op_cost(o, c, size, 1)
             for o in net.op_names] for src, _ in genotypes.dense_edges()]))
    for key in ("stem", "classifier"):
        tables[key] = tables[key].astype(np.float32)
    return tables


# ---------------------------------------------------------------------------- derivation
def sample_architectures(net, count, rng):
    """`count` architectures drawn from softmax(alpha) (``none`` allowed); ValueError
    (one line) if an alpha is NaN/Inf (a diverged search)."""
    for v in net.arch_variables:
        derive_lib.check_finite(v.numpy(), f"BARS {v.name.split(':')[0]}")
    probs = net.probabilities()

    def draw(p):
        p = np.asarray(p, np.float64)
        return tuple(int(rng.choice(p.shape[-1], p=row / row.sum())) for row in p)
    return [Architecture(ops=tuple(draw(p) for p in probs["ops"]), reduce=draw(probs["reduce"]),
                         widths=draw(probs["width"]), depths=draw(probs["depth"]))
            for _ in range(int(count))]


def to_genotype(net, arch: Architecture):
    names = net.op_names
    stages = [genotypes.BarsStage(net.width_choices[w], int(d), tuple(names[k] for k in o))
              for o, w, d in zip(arch.ops, arch.widths, arch.depths)]
    return genotypes.BarsGenotype(stages=stages, reduce_cell=tuple(names[k] for k in arch.reduce),
                                  base_channels=net.base_channels, max_depth=net.max_depth)


def pick_lowest_loss(candidates, losses):
    """(candidate, index) with the lowest loss; NaN counts as +inf, ties go to the first."""
    if len(candidates) != len(losses) or not candidates:
        raise ValueError(f"need one loss per candidate (got {len(candidates)} candidates, "
                         f"{len(losses)} losses)")
    clean = [math.inf if loss is None or math.isnan(float(loss)) else float(loss)
             for loss in losses]
    index = int(np.argmin(clean))
    return candidates[index], index


def evaluation_loss(net, arch, batches):
    """Mean validation cross entropy of `net` restricted to one-hot `arch` (BN uses
    batch statistics, as in search; BN moving statistics are left unchanged)."""
    if net._cache.eval_fn is None:
        @tf.function(reduce_retracing=True)
        def batch_loss(x, y, weights):
            logits = net.forward(x, weights, training=True)
            return tf.reduce_sum(bilevel.cross_entropy(y, logits)), tf.shape(y)[0]
        net._cache.eval_fn = batch_loss
    weights = net.onehot_weights(arch)
    saved = [v.numpy() for v in net.non_trainable_variables]
    total, count = 0.0, 0
    try:
        for x, y in batches:
            loss, n = net._cache.eval_fn(x, y, weights)
            total += float(loss)
            count += int(n)
    finally:
        for v, value in zip(net.non_trainable_variables, saved):
            v.assign(value)
    if not count:
        raise ValueError("BARS derivation needs at least one validation batch")
    return total / count


def derive_candidates(net, num_samples, batches, seed=0):
    """Sample, evaluate and pick: (best genotype, [(genotype, loss), ...])."""
    rng = np.random.default_rng(seed)
    candidates = sample_architectures(net, num_samples, rng)
    losses = [evaluation_loss(net, arch, batches) for arch in candidates]
    best, _ = pick_lowest_loss(candidates, losses)
    return to_genotype(net, best), [(to_genotype(net, a), loss)
                                    for a, loss in zip(candidates, losses)]


# ---------------------------------------------------------------------------- method hooks
def _floats(value, what):
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"BARS {what} must be a comma-separated list of numbers, "
                         f"got {value!r}") from None


def settings(search_config):
    """BARS settings: EXTRA_DEFAULTS updated by `search_config.extra`, parsed."""
    extra = dict(getattr(search_config, "extra", None) or {})
    unknown = sorted(set(extra) - set(EXTRA_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown BARS settings: {', '.join(unknown)}; known: "
                         f"{', '.join(EXTRA_DEFAULTS)}")
    s = {**EXTRA_DEFAULTS, **{k: v for k, v in extra.items() if v is not None}}
    base = _floats(s["base_channels"], "base_channels")
    if any(c != int(c) or c < 2 for c in base) or not base:
        raise ValueError(f"BARS base_channels must be integers >= 2, got {list(base)}")
    s["base_channels"] = tuple(int(c) for c in base)
    s["width_choices"] = _floats(s["width_choices"], "width_choices")
    if not s["width_choices"] or any(not 0 < w <= 1 for w in s["width_choices"]):
        raise ValueError(f"BARS width_choices must be in (0, 1], got {list(s['width_choices'])}")
    if len(set(s["width_choices"])) != len(s["width_choices"]):
        raise ValueError(f"BARS width_choices has duplicates: {list(s['width_choices'])}")
    for key in ("warmup_epochs", "max_depth", "num_samples"):
        value = s[key]
        if isinstance(value, bool) or int(value) != float(value) or int(value) < 0:
            raise ValueError(f"BARS {key} must be a non-negative integer, got {value!r}")
        s[key] = int(value)
    if s["num_samples"] < 1:
        raise ValueError(f"BARS num_samples must be >= 1, got {s['num_samples']}")
    for key in ("flops_budget", "temperature", "temperature_decay", "entropy_start",
                "entropy_step", "budget_theta_above", "budget_theta_below"):
        try:
            s[key] = float(s[key])
        except (TypeError, ValueError):
            raise ValueError(f"BARS {key} must be a number, got {s[key]!r}") from None
    if s["flops_budget"] < 0:
        raise ValueError(f"BARS flops_budget must be >= 0 (0 = none), got {s['flops_budget']}")
    if not s["temperature"] > 0:
        raise ValueError(f"BARS temperature must be > 0, got {s['temperature']}")
    if not 0 < s["temperature_decay"] <= 1:
        raise ValueError(f"BARS temperature_decay must be in (0, 1], "
                         f"got {s['temperature_decay']}")
    if s["downsample"] not in bars_models.DOWNSAMPLES:
        raise ValueError(f"unknown BARS downsample {s['downsample']!r}; choose one of "
                         f"{', '.join(bars_models.DOWNSAMPLES)}")
    if isinstance(s["op_shortcut"], str):
        if s["op_shortcut"].lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"BARS op_shortcut must be true or false, got {s['op_shortcut']!r}")
        s["op_shortcut"] = s["op_shortcut"].lower() in ("true", "1")
    s["op_shortcut"] = bool(s["op_shortcut"])
    return s


def validate_config(search_config):
    """One-line ValueError for bad BARS settings (`search_config.extra`, ops)."""
    ops.check_ops(search_config.ops)
    settings(search_config)


def search_binarization(search_config):
    """BARS binarises with one tensor-wide weight scale: the generic default 'xnor'
    means binary.BARS here (any other scheme is honoured)."""
    scheme = binary.scheme(getattr(search_config, "binarization", "bars") or "bars")
    return binary.BARS if scheme == binary.XNOR else scheme


def build_supernet(search_config, num_classes, image_size):
    s = settings(search_config)
    net = BarsSupernet(num_classes, image_size, base_channels=s["base_channels"],
                       width_choices=s["width_choices"], max_depth=s["max_depth"],
                       op_names=search_config.ops, downsample=s["downsample"],
                       op_shortcut=s["op_shortcut"],
                       binarization=search_binarization(search_config),
                       seed=search_config.seed)
    net.flops_budget = s["flops_budget"]
    net.budget_theta = (s["budget_theta_above"], s["budget_theta_below"])
    net.entropy_schedule = (s["entropy_start"], s["entropy_step"])
    net.temperature_schedule = (s["temperature"], s["temperature_decay"], s["warmup_epochs"])
    net.temperature.assign(s["temperature"])
    net.entropy_coef.assign(s["entropy_start"])
    net.cost_tables()
    return net


class BarsBilevelModel(bilevel.BilevelModel):
    """BilevelModel whose alpha loss is the net's `arch_loss(ce, epoch)` (BARS'
    multiplicative FLOPs budget does not fit the additive `arch_regularization`)."""

    def _arch_loss(self, x_val, y_val, quantized=None):
        ce, per_example, _ = self._ce(x_val, y_val, quantized=quantized)
        loss = self.net.arch_loss(ce, self.epoch)
        return loss, tf.reduce_mean(per_example), self.net.arch_regularization(self.epoch)


def make_optimizers(search_config, steps_per_epoch):
    """BARS: Adam for the weights (lr w_lr, per-epoch cosine to w_lr_min) and Adam for
    the alphas (a_lr, betas a_beta1/a_beta2); decay is applied by the BilevelModel."""
    w_opt = tf.keras.optimizers.legacy.Adam(
        bilevel.cosine_schedule(search_config.w_lr, search_config.w_lr_min,
                                search_config.epochs, steps_per_epoch), name="w_adam")
    a_opt = tf.keras.optimizers.legacy.Adam(search_config.a_lr, beta_1=search_config.a_beta1,
                                            beta_2=search_config.a_beta2, name="a_adam")
    return w_opt, a_opt


def build_model(net, search_config, steps_per_epoch, image_size):
    """A compiled BarsBilevelModel (call inside strategy.scope())."""
    model = BarsBilevelModel(net, order=search_config.order, w_wd=search_config.w_wd,
                             a_wd=search_config.a_wd, grad_clip=search_config.grad_clip)
    model.build_net(image_size)
    model.compile(*make_optimizers(search_config, steps_per_epoch))
    return model


def on_epoch_begin(net, epoch):
    """Temperature 1.0 * 0.9^epoch; lambda_ent = -0.01 + 0.001 * epoch; alphas frozen
    during the warm-up epochs."""
    start, step = net.entropy_schedule
    initial, decay, warmup = net.temperature_schedule
    net.temperature.assign(budget.temperature(epoch, initial, decay))
    net.entropy_coef.assign(budget.entropy_coefficient(epoch, start, step))
    net.epoch_seen = int(epoch)
    return {"alpha_update": epoch >= warmup}


def derive(net, search_config, val_batches):
    """Sample `num_samples` architectures from softmax(alpha), keep the one with the
    lowest validation loss (BARS Sec. 5.1)."""
    s = settings(search_config)
    genotype, _ = derive_candidates(net, s["num_samples"], val_batches,
                                    seed=[int(search_config.seed), int(net.epoch_seen)])
    return genotype


def epoch_logs(net, epoch):
    """TensorBoard scalars: width/depth/op probabilities, temperature, lambda_ent,
    alpha entropy and the expected costs (millions, per image)."""
    probs = net.probabilities()
    expected = {k: float(v.numpy()) / budget.MEGA for k, v in net.expected_costs().items()}
    logs = {"bars/temperature": float(net.temperature.numpy()),
            "bars/entropy_coefficient": float(net.entropy_coef.numpy()),
            "bars/alpha_entropy": float(net.entropy().numpy()),
            "bars/expected_mflops": expected["flops"],
            "bars/expected_mbiops": expected["biops"],
            "bars/expected_equivalent_mops": expected["equivalent_ops"],
            "bars/flops_budget_mops": float(net.flops_budget)}
    for i, (p_w, p_d) in enumerate(zip(probs["width"], probs["depth"])):
        for r, p in zip(net.width_choices, p_w):
            logs[f"bars/stage{i}/width_{r:g}"] = float(p)
        logs[f"bars/stage{i}/expected_width"] = float(np.dot(p_w, net.width_choices))
        for d, p in enumerate(p_d):
            logs[f"bars/stage{i}/depth_{d}"] = float(p)
        logs[f"bars/stage{i}/expected_depth"] = float(np.dot(p_d, np.arange(len(p_d))))
    all_ops = np.concatenate(list(probs["ops"]) + [probs["reduce"]], axis=0)
    for name, p in zip(net.op_names, all_ops.mean(axis=0)):
        logs[f"bars/op_{name}"] = float(p)
    return logs


def default_config(**overrides):
    """A SearchConfig with BARS' settings (paper App. A): 50 epochs, batch 64, ops
    bin_conv_3x3/shortcut/none, weights Adam 3e-4 cosine to 0 without decay, alphas
    Adam 3e-4 with decay 1e-3, tensor-scale binarisation; `extra` from EXTRA_DEFAULTS."""
    extra = {**EXTRA_DEFAULTS, **overrides.pop("extra", {})}
    extra["base_channels"] = list(extra["base_channels"])
    extra["width_choices"] = list(extra["width_choices"])
    values = dict(method="bars", epochs=50, batch_size=64, ops=ops.BARS_OPS, w_lr=3e-4,
                  w_lr_min=0.0, w_wd=0.0, a_lr=3e-4, a_beta1=0.9, a_beta2=0.999, a_wd=1e-3,
                  binarization="bars", extra=extra)
    values.update(overrides)
    return SearchConfig(**values)


METHOD = sys.modules[__name__]
