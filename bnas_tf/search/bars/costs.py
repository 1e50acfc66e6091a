"""BARS' costs and schedules: the cost tables of the supernet's components, expected-FLOPs
pieces, the FLOPs-budget loss, the Gumbel temperature and entropy-coefficient schedules.

Cost convention (the one of `bnas_tf.costs`, hence of the paper's Table 2):
multiply-accumulates (MACs) per image; binary convs count as BiOPs, float convs and
dense layers as FLOPs; pooling, BN, adds and activations are not counted. The
search budgets *equivalent OPs* = FLOPs + BiOPs / 64 (Bi-Real / BARS), in the
same unit: ``flops_budget`` is given in millions of equivalent OPs (the paper's
"Equivalent Ops" column, e.g. 18.37 for BARS-B).

Budget loss (BARS Eq. 5): ``L = L0 * (FLOPs(alpha) / F) ** theta`` with
``theta = theta_above`` (default 1) when FLOPs(alpha) >= F, else ``theta_below``
(default 0: no pull towards the budget from below); no budget (F <= 0): ``L = L0``.

Entropy term (BARS Eq. 7): ``L_ent = lambda_ent * H(alpha)``, H the mean row
entropy of softmax(alpha) over every BARS alpha row (ops, widths, depths). The
loss is minimised, so lambda_ent < 0 *rewards* entropy (exploration, early
epochs) and lambda_ent > 0 penalises it (confident choices, late epochs).
"""
from __future__ import annotations

import math

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary, costs, genotypes, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common

BINARY_OPS_PER_FLOP = costs.BINARY_OPS_PER_FLOP
MEGA = 1e6


def temperature(epoch, initial=1.0, decay=0.9):
    """Gumbel-softmax temperature at `epoch` (0-based): initial * decay ** epoch."""
    return float(initial) * float(decay) ** int(epoch)


def entropy_coefficient(epoch, start=-0.01, step=0.001):
    """lambda_ent at `epoch`: start + step * epoch (tensor-friendly)."""
    return start + step * epoch


def equivalent_ops(flops, biops):
    """FLOPs + BiOPs / 64."""
    return flops + biops / BINARY_OPS_PER_FLOP


def budget_factor(flops, budget, theta_above=1.0, theta_below=0.0):
    """(flops / budget) ** theta, theta = theta_above if flops >= budget else theta_below.

    `flops` and `budget` in the same unit; differentiable in `flops`.
    """
    flops = tf.convert_to_tensor(flops, tf.float32)
    ratio = flops / float(budget)
    theta = tf.where(flops >= float(budget), float(theta_above), float(theta_below))
    return tf.pow(ratio, theta)


def budget_loss(loss, flops, budget, theta_above=1.0, theta_below=0.0):
    """BARS Eq. 5: loss * (flops / budget) ** theta; just `loss` when budget <= 0/None."""
    if not budget or budget <= 0:
        return loss
    return loss * budget_factor(flops, budget, theta_above, theta_below)


def layer_costs(layer, input_shape):
    """(FLOPs, BiOPs) per image of one call of a fresh, unbuilt `layer` on `input_shape`
    (H, W, C) or (C,), counted by `bnas_tf.costs` (builds the layer)."""
    counted = costs.count(layer, batch_size=1, input_shape=tuple(input_shape))
    return float(counted.flops), float(counted.biops)


def expectation(probs, values):
    """sum_i probs[..., i] * values[i] (values a python/numpy sequence)."""
    return tf.reduce_sum(probs * tf.constant(values, tf.float32), axis=-1)


def stage_resolutions(image_size, stages, stem_stride):
    """Feature-map size of each stage: the stem divides by `stem_stride`, every
    reduction cell by 2 ('same' padding: ceil)."""
    size = math.ceil(image_size / stem_stride)
    out = []
    for _ in range(stages):
        out.append(size)
        size = math.ceil(size / 2)
    return out


_COST_CACHE = {}


def _cached_costs(key, make_layer, input_shape):
    if key not in _COST_CACHE:
        _COST_CACHE[key] = layer_costs(make_layer(), input_shape)
    return _COST_CACHE[key]


def cost_tables(net):
    """Component costs at full width (widths enter as channel ratios, exact for convs
    whose MACs are bilinear in C_in * C_out); stem and classifier per width choice."""
    scheme, base = net.binarization, net.base_channels
    op_config = ops.OpConfig(binarization=scheme, op_shortcut=net.op_shortcut)
    sizes = stage_resolutions(net.image_size, len(base), net.stem_stride)
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
