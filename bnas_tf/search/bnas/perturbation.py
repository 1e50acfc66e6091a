"""Perturbation-based op selection for BNAS (``derive='perturbation'``): pick each edge's
op by how much removing it from the trained supernet hurts, not by alpha magnitude.

Source: DARTS-PT (Wang et al., "Rethinking Architecture Selection in Differentiable
NAS", ICLR 2021, Sec. 3-4), which shows that alpha magnitude does not measure an op's
strength and that parameter-free ops win the alpha competition: the failure the study
finds in binary search (docs/results.md). As there, an op is removed by zeroing its
mixing weight in one edge row (the others keep theirs: no renormalisation), and a
node keeps the two input edges whose removal (the whole row zeroed) hurts most.

Differences from DARTS-PT, all for cost: every score is measured once against the
same supernet (no progressive projection of one edge at a time and no fine-tuning in
between), on the mean validation cross entropy (its accuracy on a few batches is too
coarse to rank 84 small removals) of the same ``batches``. Zeroise is scored 0 (its
output is zero: removing it changes nothing), so an edge gets Zeroise exactly when no
op's removal raises the loss: BNAS' "keep Zeroise" (Sec. 3.2), decided by measurement.
The supernet runs in inference mode (BN moving statistics), as the search's own
validation does, so nothing in it changes.
"""
from __future__ import annotations

import sys

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import data, genotypes, ops
from bnas_tf.search import alphas, bilevel, runner
from bnas_tf.search import search_dir as search_files
from bnas_tf.search.bnas import derive as derive_lib

KINDS = ("normal", "reduce")


def removal_scores(loss_of, mix, op_names):
    """Loss increases of every removal: (op_scores, edge_scores) per cell kind.

    `loss_of(mix)` -> the supernet's validation loss with mixing weights `mix` (a dict
    kind -> [14, n_ops] float32 array); `mix`: the trained softmax(alpha) per kind.
    op_scores[kind]: [14, n_ops], loss(op k of edge e removed) - loss(all); Zeroise 0
    (not evaluated). edge_scores[kind]: [14], loss(edge e's row zeroed) - loss(all).
    Costs 1 + 2 x 14 x (n_ops - has Zeroise + 1) calls of `loss_of`."""
    base = loss_of(mix)
    zero = op_names.index(ops.ZERO) if ops.ZERO in op_names else None
    op_scores, edge_scores = {}, {}
    for kind in KINDS:
        rows = mix[kind].shape[0]
        op_scores[kind] = np.zeros(mix[kind].shape)
        edge_scores[kind] = np.zeros(rows)
        for e in range(rows):
            for k in range(len(op_names)):
                if k != zero:
                    op_scores[kind][e, k] = loss_of(_without(mix, kind, e, k)) - base
            edge_scores[kind][e] = loss_of(_without(mix, kind, e, None)) - base
    return op_scores, edge_scores


def _without(mix, kind, edge, op):
    """`mix` with op `op` of `edge` (None: the whole row) zeroed in cell kind `kind`."""
    out = {k: v.copy() for k, v in mix.items()}
    if op is None:
        out[kind][edge, :] = 0.0
    else:
        out[kind][edge, op] = 0.0
    return out


def genotype_from_scores(op_scores, edge_scores, op_names, template="bnas"):
    """The BnasGenotype: per edge the op whose removal raises the loss most (Zeroise,
    scored 0, when none does); per node the two edges whose removal raises it most."""
    op_names = ops.check_ops(op_names)
    cells = [derive_lib.select_pairs(np.argmax(op_scores[kind], axis=1), edge_scores[kind],
                                     op_names)
             for kind in KINDS]
    return genotypes.BnasGenotype(normal=cells[0], reduce=cells[1], template=template)


def validation_loss_fn(net, batches):
    """loss_of(mix) for `removal_scores`: the mean cross entropy of `net` over the fixed
    list `batches` of (images NHWC, labels) with its mixing weights replaced by `mix`."""
    @tf.function(reduce_retracing=True)
    def batch_loss(x, y, normal, reduce):
        logits = net(x, training=False, mix=(normal, reduce))
        return tf.reduce_sum(bilevel.cross_entropy(y, logits)), tf.shape(y)[0]

    def loss_of(mix):
        total, count = 0.0, 0
        for x, y in batches:
            loss, n = batch_loss(x, y, tf.constant(mix["normal"], tf.float32),
                                 tf.constant(mix["reduce"], tf.float32))
            total, count = total + float(loss), count + int(n)
        if not count:
            raise ValueError("perturbation derivation needs at least one validation batch")
        return total / count
    return loss_of


def derive(net, batches, op_names, template="bnas", max_batches=None, progress=True,
           with_scores=False):
    """The perturbation-selected genotype of the trained supernet `net` on the first
    `max_batches` (None: all) batches of `batches` (a tf.data Dataset or iterable of
    (images, labels)); `progress` prints one line and a Keras progress bar over the
    supernet evaluations. `with_scores`: return (genotype, scores), scores[kind] =
    {"op": [14][n_ops], "edge": [14]} loss increases in nats (`removal_scores`).
    ValueError (one line) for non-finite alphas or no batch."""
    for v in net.arch_variables:
        alphas.check_finite(v.numpy(), f"BNAS {v.name.split(':')[0]}")
    if isinstance(batches, tf.data.Dataset) and max_batches:
        batches = batches.take(int(max_batches))
    batches = list(batches)
    mix = {kind: alphas.softmax_np(a).astype(np.float32)
           for kind, a in zip(KINDS, net.alpha_arrays())}
    loss_of = validation_loss_fn(net, batches)
    calls = 1 + len(KINDS) * mix["normal"].shape[0] * (
        len(op_names) - (ops.ZERO in op_names) + 1)
    if progress:
        print(f"selecting by perturbation: {calls} supernet evaluations on {len(batches)} "
              "validation batches", flush=True)
        bar = tf.keras.utils.Progbar(calls, unit_name="evaluation",
                                     verbose=1 if sys.stdout.isatty() else 2)

        def counted(m):
            loss = loss_of(m)
            bar.add(1, values=[("val_loss", loss)])
            return loss
    op_scores, edge_scores = removal_scores(counted if progress else loss_of, mix,
                                            list(op_names))
    genotype = genotype_from_scores(op_scores, edge_scores, op_names, template)
    if not with_scores:
        return genotype
    return genotype, {kind: {"op": op_scores[kind].tolist(), "edge": edge_scores[kind].tolist()}
                      for kind in KINDS}


def select(search_dir, max_batches=4, progress=True, with_scores=False):
    """The perturbation-selected genotype of a finished (or interrupted) BNAS search
    directory's latest supernet, scored on the first `max_batches` batches of the
    search_val split it validated on. ValueError (one line) for a BARS directory or
    one without a checkpoint; FileNotFoundError for a directory without a search."""
    method = search_files.read_config(search_dir).method
    if method != "bnas":
        raise ValueError(f"{search_dir} is a {method} search; perturbation selection is "
                         "defined for BNAS supernets")
    net, config, data_config = runner.restore_supernet(search_dir)
    batches = data.load(data_config, "search_val", training=False)
    return derive(net, batches, config.ops, template=config.settings.cell_template,
                  max_batches=max_batches, progress=progress, with_scores=with_scores)
