"""BARS derivation (Sec. 5.1): sample architectures from softmax(alpha), evaluate each
one-hot on validation batches, keep the lowest loss."""
from __future__ import annotations

import math

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import genotypes
from bnas_tf.search import bilevel
from bnas_tf.search.bars.supernet import Architecture


def sample_architectures(net, count, rng):
    """`count` architectures drawn from softmax(alpha) (``none`` allowed)."""
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
