"""Functions of architecture parameters that every method uses: softmax and the mean
row entropy H(alpha), as tensors (losses) and as numpy (logs, derivation)."""
from __future__ import annotations

import bnas_tf  # noqa: F401
import numpy as np
import tensorflow as tf


def row_entropy(alpha):
    """Entropy (nats) of softmax over the last axis, one value per row."""
    log_p = tf.nn.log_softmax(tf.convert_to_tensor(alpha, tf.float32), axis=-1)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)


def mean_row_entropy(alphas):
    """Mean row entropy over all rows of all the given architecture tensors."""
    rows = tf.concat([tf.reshape(row_entropy(a), [-1]) for a in alphas], axis=0)
    return tf.reduce_mean(rows)


def check_finite(alpha, what="alpha"):
    """`alpha` as float64 numpy; ValueError (one line) if it holds NaN or +-Inf: a
    diverged search, whose softmax would silently derive all-``none`` cells."""
    alpha = np.asarray(alpha, dtype=np.float64)
    bad = ~np.isfinite(alpha)
    if bad.any():
        rows = sorted({int(r) for r in np.argwhere(bad)[:, 0]}) if alpha.ndim == 2 else []
        where = f" (edge rows {', '.join(map(str, rows[:8]))})" if rows else ""
        raise ValueError(f"{what} holds {int(bad.sum())} non-finite value(s) (NaN/Inf)"
                         f"{where}: the search diverged; cannot derive a genotype")
    return alpha


def softmax_np(alpha):
    """softmax over the last axis, float64 numpy."""
    alpha = np.asarray(alpha, dtype=np.float64)
    e = np.exp(alpha - alpha.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def row_entropy_np(alpha):
    p = softmax_np(alpha)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)
