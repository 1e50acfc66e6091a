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

from bnas_tf.search.alphas import mean_row_entropy, row_entropy_np


def annealing(epoch, tau):
    """exp(-epoch / tau) (epoch may be a tensor)."""
    return tf.exp(-tf.cast(epoch, tf.float32) / float(tau))


def diversity(alphas, lam, tau, epoch):
    """The diversity term added to the architecture loss: -lam * H * exp(-epoch/tau)."""
    if not lam:
        return tf.constant(0.0)
    return -float(lam) * mean_row_entropy(alphas) * annealing(epoch, tau)


def diversity_np(alphas, lam, tau, epoch):
    """numpy twin of `diversity` (for logs)."""
    h = float(np.mean(np.concatenate([row_entropy_np(a).ravel() for a in alphas])))
    return -float(lam) * h * float(np.exp(-float(epoch) / float(tau)))
