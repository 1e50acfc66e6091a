"""Training precision: Keras mixed-precision policies around network building, and the
float32 twin of a network trained in 16 bits (what is evaluated, saved and exported).

In the mixed policies every variable (the latent binary kernels included) stays float32
and the layers compute in 16 bits; bnas_tf.training computes the loss in float32
(`CrossEntropy`), Keras keeps BatchNorm statistics in float32 and wraps the optimizer in
a LossScaleOptimizer for mixed_float16 (`compile`). Larq's sign quantizers are exact in
any dtype, and the XNOR scale mean|W| matches float32 up to the 16-bit rounding of the
result, as TensorFlow reduces 16-bit tensors in float32 (tests/test_precision.py).
"""
from __future__ import annotations

import contextlib

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from bnas_tf import fast_binary, models

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(precision):
    """Build layers under the Keras dtype policy `precision` ('float32', 'mixed_float16',
    'mixed_bfloat16'); the previous global policy is restored afterwards. Raises
    ValueError for an unknown name, and for mixed_float16 without a GPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "mixed_float16" and not tf.config.list_logical_devices("GPU"):
        raise ValueError("--precision=mixed_float16 needs a GPU (TensorFlow's CPU kernels "
                         "have no float16 gradient of dilated convs); use mixed_bfloat16")
    mixed_precision = tf.keras.mixed_precision
    previous = mixed_precision.global_policy()
    mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        mixed_precision.set_global_policy(previous)


def float32_twin(model, spec, num_classes, image_size, auxiliary):
    """`model` itself when it computes in float32 with the readable binary convs, else
    the same network rebuilt under the float32 policy with readable layers
    (`binary.QuantConv2D`, not the training speed variant `fast_binary.FastQuantConv2D`)
    and `model`'s trained weights: what is evaluated, saved and exported."""
    if model.dtype_policy.compute_dtype == "float32" and not fast_binary.uses_fast_convs(model):
        return model
    with precision_policy("float32"):
        twin = models.build(spec, num_classes, image_size, auxiliary=auxiliary)
    twin.set_weights(model.get_weights())
    return twin
