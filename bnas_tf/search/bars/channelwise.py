"""Per-channel products of NHWC activations as inference-mode batch-norm ops at mean 0,
variance 1 (x * scale * 1 + 0: exact), for the fused BARS cell (`fused.py`).

On this CPU (oneDNN) the batch norm's forward is faster than TensorFlow's broadcast
product of a [B, H, W, C] tensor by a [C] vector, and its gradient computes g *
scale, sum(g * x) and sum(g) per channel in ONE pass where the product's gradient
takes a product for x and a product and a batch-and-pixel reduction for the vector
(BNAS' `widen_and_weight` uses the same gradient). Measurements: docs/benchmark.md,
"BARS search", "Fourth round".
"""
from __future__ import annotations

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf
from tensorflow.python.eager import record  # which tensors an active tape watches

from bnas_tf.search.bars import recompute
from bnas_tf.search.bnas import fused as bnas_fused


def scale_and_sums(g, x, scale):
    """(g * scale in g's dtype, sum(g * x), sum(g)) per channel of g, x: [B, H, W, C]
    in one op: the batch-norm gradient in inference mode at mean 0, variance 1
    (`bnas.fused.widen_and_weight`'s), which computes in float32 and rounds the first
    result once to g's dtype; the sums are float32 [C]."""
    mean, variance, eps = _unit_statistics(int(scale.shape[-1]))
    dy, d_scale, d_offset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=g, x=x, scale=scale, reserve_space_1=mean, reserve_space_2=variance,
        reserve_space_3=tf.constant(np.zeros(0, np.float32)), epsilon=eps,
        data_format="NHWC", is_training=False)
    return dy, d_scale, d_offset


def channel_product(x, factor):
    """x * factor (x: [B, H, W, C] float32, factor: [C]) as one op each way: the
    batch-norm forward in inference mode at mean 0, variance 1 (`scaled`: exact, and
    faster than a broadcast product on this CPU), and as its gradient either
    `scale_and_sums` (g * factor and the factor's gradient sum(g * x) in one pass,
    when an active tape differentiates `factor`: the alpha pass) or g * factor alone
    (`scaled`: the weight pass, which differentiates no factor). Against a broadcast
    product, a product and a product-and-sum (docs/benchmark.md, "Fourth round")."""
    needed = record.should_record_backprop([factor])  # (not inside the tape operation)

    @recompute.tape_gradient
    def apply(x, factor):
        def grad(g):
            if needed:
                d_x, d_factor, _ = scale_and_sums(g, x, factor)
                return d_x, d_factor
            return scaled(g, factor), None
        return scaled(x, factor), grad
    return apply(x, factor)


def _unit_statistics(channels):
    """(mean 0, variance 1 - eps) [channels] and eps: 1 / sqrt(variance + eps) == 1."""
    return (tf.constant(np.zeros(channels, np.float32)),
            tf.constant(np.full(channels, 1.0 - bnas_fused._UNIT_EPS, np.float32)),
            bnas_fused._UNIT_EPS)


def scaled(x, factor):
    """x * factor per channel (x: [B, H, W, C] float32, factor: [C]): the batch-norm
    forward in inference mode at mean 0, variance 1, offset 0 (x * factor * 1 + 0,
    exact)."""
    mean, variance, eps = _unit_statistics(int(factor.shape[-1]))
    return tf.raw_ops.FusedBatchNormV3(x=x, scale=factor, offset=mean, mean=mean,
                                       variance=variance, epsilon=eps, data_format="NHWC",
                                       is_training=False)[0]
