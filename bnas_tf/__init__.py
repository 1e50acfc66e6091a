"""bnas-tf: search, train and deploy binary neural network architectures (BNAS, BARS).

Larq only works with tf-keras (Keras 2), so the legacy Keras switch is set here,
once, before anything imports TensorFlow. Importing the package registers every
custom Keras object (``bnas_tf>...``), so ``tf.keras.models.load_model`` reads a
model saved whole after ``import bnas_tf`` alone.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "bnas_tf needs tf-keras: import bnas_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1")

__version__ = "0.1.0"

# Register every custom Keras layer/schedule (package "bnas_tf"), as `import larq` does:
# a model saved whole loads after `import bnas_tf` alone. These modules import
# TensorFlow but create no tensors, so devices can still be configured afterwards.
from bnas_tf import models as _models  # noqa: E402,F401  (binary, bnas, bars, baselines)
from bnas_tf import training as _training  # noqa: E402,F401  (OneCycle, CrossEntropy)

