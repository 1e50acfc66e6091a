"""BARS' complexity and schedule helpers: expected-FLOPs pieces, the FLOPs-budget loss,
the Gumbel temperature and entropy-coefficient schedules, alpha entropy.

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

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import costs

BINARY_OPS_PER_FLOP = costs.BINARY_OPS_PER_FLOP
MEGA = 1e6


def temperature(epoch, initial=1.0, decay=0.9):
    """Gumbel-softmax temperature at `epoch` (0-based): initial * decay ** epoch."""
    return float(initial) * float(decay) ** int(epoch)


def entropy_coefficient(epoch, start=-0.01, step=0.001):
    """lambda_ent at `epoch`: start + step * epoch (tensor-friendly)."""
    return start + step * epoch


def row_entropy(logits):
    """Entropy (nats) of softmax over the last axis, one value per row."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)


def mean_entropy(alphas):
    """Mean row entropy over a list of alpha tensors (each [..., choices])."""
    rows = [tf.reshape(row_entropy(a), [-1]) for a in alphas]
    return tf.reduce_mean(tf.concat(rows, axis=0))


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
