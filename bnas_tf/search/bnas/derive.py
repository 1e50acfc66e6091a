"""Derive a BNAS cell genotype from architecture weights (numpy, testable).

Each of the 4 nodes of a cell has one edge row per earlier state (2, 3, 4, 5 rows:
14 in all). Per row, softmax over ops. In ``bnas`` mode (the paper, Eq. 4) the
Zeroise (``none``) weight is divided by `gamma` and then competes with the other
ops both for the edge strength (max over ops) and for the op choice (argmax);
larger gamma picks Zeroise only when it clearly wins. In ``darts`` mode Zeroise is
excluded entirely (the "No Zeroise" ablation, and DARTS' own rule). Each node keeps
its two strongest incoming edges, strongest first (ties: lower input index).
"""
from __future__ import annotations

import numpy as np

from bnas_tf import genotypes, ops
from bnas_tf.search import alphas

MODES = ("bnas", "darts")


def edge_offsets(nodes=genotypes.NODES):
    """First edge row of each node: node i (0-based) has 2 + i incoming rows."""
    offsets, start = [], 0
    for i in range(nodes):
        offsets.append(start)
        start += 2 + i
    return offsets, start


def edge_labels(nodes=genotypes.NODES):
    """Human-readable labels of the edge rows ("c_{k-2}->0", ..., "n2->n3")."""
    names = ["c_{k-2}", "c_{k-1}"] + [f"n{i}" for i in range(nodes)]
    return [f"{names[j]}->n{i}" for i in range(nodes) for j in range(2 + i)]


def scored_weights(alpha, op_names, gamma=1.0, mode="bnas"):
    """Per-row op scores used for the decision: softmax, Zeroise / gamma ('bnas') or
    Zeroise at -inf ('darts')."""
    if mode not in MODES:
        raise ValueError(f"unknown derivation mode {mode!r}; choose one of {', '.join(MODES)}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    op_names = list(op_names)
    w = alphas.softmax_np(alphas.check_finite(alpha))
    if w.ndim != 2 or w.shape[1] != len(op_names):
        raise ValueError(f"alpha has shape {np.shape(alpha)}, expected (edges, "
                         f"{len(op_names)}) for ops {', '.join(op_names)}")
    if ops.ZERO in op_names:
        z = op_names.index(ops.ZERO)
        w[:, z] = w[:, z] / gamma if mode == "bnas" else -np.inf
    if mode == "darts" and not np.isfinite(w).any(axis=1).all():
        raise ValueError("'darts' derivation needs at least one op besides none")
    return w


def derive_cell(alpha, op_names, gamma=1.0, mode="bnas", nodes=genotypes.NODES):
    """The (op, input) pairs of one cell: two per node."""
    op_names = list(op_names)
    offsets, n_rows = edge_offsets(nodes)
    if np.shape(alpha)[0] != n_rows:
        raise ValueError(f"alpha has {np.shape(alpha)[0]} edge rows, a {nodes}-node cell "
                         f"has {n_rows}")
    scores = scored_weights(alpha, op_names, gamma, mode)
    return select_pairs(np.argmax(scores, axis=1), scores.max(axis=1), op_names, nodes)


def select_pairs(choice, strength, op_names, nodes=genotypes.NODES):
    """The (op, input) pairs of one cell from per-edge-row decisions: `choice[r]` the
    op index and `strength[r]` the strength of row r (rows as `edge_offsets`); each
    node keeps its two strongest rows, strongest first (ties: lower input index)."""
    offsets, _ = edge_offsets(nodes)
    pairs = []
    for node, start in enumerate(offsets):
        rows = range(start, start + 2 + node)
        order = sorted(rows, key=lambda r: (-strength[r], r))[:2]
        pairs.extend((op_names[int(choice[r])], r - start) for r in order)
    return pairs


def derive_bnas(alpha_normal, alpha_reduce, op_names, gamma=1.0, mode="bnas",
                template="bnas"):
    """A BnasGenotype from the two architecture matrices (14 x len(op_names) each)."""
    op_names = ops.check_ops(op_names)
    return genotypes.BnasGenotype(
        normal=derive_cell(alpha_normal, op_names, gamma, mode),
        reduce=derive_cell(alpha_reduce, op_names, gamma, mode),
        template=template)
