"""BARS derivation (Sec. 5.1): sample architectures from softmax(alpha), evaluate each
one-hot on validation batches, keep the lowest loss."""
from __future__ import annotations

import math
import sys

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import genotypes
from bnas_tf.search import alphas, bilevel
from bnas_tf.search.bars.supernet import Architecture


def sample_architectures(net, count, rng):
    """`count` architectures drawn from softmax(alpha) (``none`` allowed); ValueError
    (one line) if an alpha is NaN/Inf (a diverged search)."""
    for v in net.arch_variables:
        alphas.check_finite(v.numpy(), f"BARS {v.name.split(':')[0]}")
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
    # BN moving statistics are saved and restored per local copy: under a strategy they
    # are per-replica (sync-on-read) variables, and reading one as a whole is a
    # collective all-reduce that every worker of a multi-worker search would have to
    # join in step (they do not: each worker scores the candidates on its own).
    local = net.distribute_strategy.experimental_local_results  # (v,) without a strategy
    saved = [[c.numpy() for c in local(v)] for v in net.non_trainable_variables]
    total, count = 0.0, 0
    try:
        for x, y in batches:
            loss, n = net._cache.eval_fn(x, y, weights)
            total += float(loss)
            count += int(n)
    finally:
        for v, values in zip(net.non_trainable_variables, saved):
            for c, value in zip(local(v), values):
                c.assign(value)
    if not count:
        raise ValueError("BARS derivation needs at least one validation batch")
    return total / count


def derive_batch_count(batches, num_samples, derive_batches=0):
    """Validation batches each sampled candidate is scored on: `derive_batches` when > 0,
    else (auto) N // num_samples (at least 1) of the N batches of one validation pass, so
    scoring every candidate costs no more than that one pass. `batches`: a tf.data
    Dataset (N from its cardinality; unknown or infinite: all its batches, counted once)."""
    if derive_batches:
        return int(derive_batches)
    n = int(batches.cardinality())
    if n < 0:  # tf.data.UNKNOWN_CARDINALITY / INFINITE_CARDINALITY
        n = int(batches.take(10_000).reduce(0, lambda count, _: count + 1))
    return max(1, n // int(num_samples))


def derive_candidates(net, num_samples, batches, seed=0, derive_batches=0, progress=True):
    """Sample, evaluate and pick: (best genotype, [(genotype, loss), ...]).

    Every candidate is scored on the same first `derive_batch_count(...)` batches of
    `batches`; `progress` shows a Keras progress bar over the candidates."""
    rng = np.random.default_rng(seed)
    candidates = sample_architectures(net, num_samples, rng)
    if isinstance(batches, tf.data.Dataset):
        count = derive_batch_count(batches, num_samples, derive_batches)
        batches = batches.take(count)
        if progress:
            print(f"deriving: {len(candidates)} sampled architectures, each scored on "
                  f"{count} validation batches (--derive_batches)", flush=True)
    # A live bar on a terminal; one line at the end in a log (Keras' verbose=2).
    bar = tf.keras.utils.Progbar(len(candidates), unit_name="candidate",
                                 verbose=1 if sys.stdout.isatty() else 2) if progress else None
    losses = []
    for arch in candidates:
        losses.append(evaluation_loss(net, arch, batches))
        if bar is not None:
            bar.add(1, values=[("val_loss", losses[-1])])
    best, _ = pick_lowest_loss(candidates, losses)
    return to_genotype(net, best), [(to_genotype(net, a), loss)
                                    for a, loss in zip(candidates, losses)]
