"""bnas-tf: search, train and deploy binary neural network architectures (BNAS, BARS).

Larq only works with tf-keras (Keras 2), so the legacy Keras switch is set here,
once, before anything imports TensorFlow.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "bnas_tf needs tf-keras: import bnas_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1")

__version__ = "0.1.0"
