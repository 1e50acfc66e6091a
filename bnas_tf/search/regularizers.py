"""BNAS' diversity regulariser (Eq. 5): -lambda * H(alpha) * exp(-epoch / tau).

H is the mean, over every edge row of every architecture matrix (normal and
reduce cells alike), of the entropy of softmax(row). Subtracting it from the
architecture loss keeps the op distribution closer to uniform early in the search,
so learnable (slower-training) binary convs are not dropped before they train.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import numpy as np
import tensorflow as tf


def row_entropy(alpha):
    """Entropy of softmax over the last axis, per row (natural log)."""
    log_p = tf.nn.log_softmax(alpha, axis=-1)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)


def mean_row_entropy(alphas):
    """Mean row entropy over all rows of all the given architecture matrices."""
    rows = tf.concat([tf.reshape(row_entropy(a), [-1]) for a in alphas], axis=0)
    return tf.reduce_mean(rows)


def annealing(epoch, tau):
    """exp(-epoch / tau) (epoch may be a tensor)."""
    return tf.exp(-tf.cast(epoch, tf.float32) / float(tau))


def diversity(alphas, lam, tau, epoch):
    """The diversity term added to the architecture loss: -lam * H * exp(-epoch/tau)."""
    if not lam:
        return tf.constant(0.0)
    return -float(lam) * mean_row_entropy(alphas) * annealing(epoch, tau)


def softmax_np(alpha):
    alpha = np.asarray(alpha, dtype=np.float64)
    e = np.exp(alpha - alpha.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def row_entropy_np(alpha):
    p = softmax_np(alpha)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)


def diversity_np(alphas, lam, tau, epoch):
    """numpy twin of `diversity` (for logs)."""
    h = float(np.mean(np.concatenate([row_entropy_np(a).ravel() for a in alphas])))
    return -float(lam) * h * float(np.exp(-float(epoch) / float(tau)))
