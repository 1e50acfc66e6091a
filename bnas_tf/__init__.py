"""bnas-tf: search, train and deploy binary neural network architectures (BNAS, BARS).

Larq only works with tf-keras (Keras 2), so the legacy Keras switch is set here,
once, before anything imports TensorFlow. Importing the package registers every
custom Keras object (``bnas_tf>...``), so ``tf.keras.models.load_model`` reads a
model saved whole after ``import bnas_tf`` alone.

TensorFlow is imported here too, with its start-up lines filtered (see `quiet_startup`):
its native libraries write the oneDNN notice and, on machines without an NVIDIA
driver, the CUDA probe lines ("Could not find cuda drivers", "failed call to cuInit")
straight to file descriptor 2, before ``TF_CPP_MIN_LOG_LEVEL`` is read, once per
library. Every other line is passed through. ``BNAS_TF_STARTUP_LOG=1`` shows them all.
INFO log lines from TensorFlow's and Keras' Python code (SavedModel internals) are dropped.
"""
import contextlib
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "bnas_tf needs tf-keras: import bnas_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1")

__version__ = "0.1.0"

# Start-up lines of TensorFlow's native libraries that say nothing to act on.
STARTUP_NOISE = ("All log messages before absl::InitializeLog() is called",
                 "oneDNN custom operations are on")
# CUDA probe lines: noise only where no NVIDIA driver is installed (on a GPU machine they
# explain why the GPU is not used, so they are kept there).
CUDA_PROBE = ("Could not find cuda drivers", "failed call to cuInit", "Unable to register cuDNN",
              "Unable to register cuFFT", "Unable to register cuBLAS", "TF-TRT Warning",
              "computation placer already registered")


def nvidia_driver_present():
    """True when an NVIDIA kernel driver is loaded (Linux /proc or /dev entries)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def startup_noise():
    """The line fragments `quiet_startup` drops on this machine."""
    return STARTUP_NOISE + (() if nvidia_driver_present() else CUDA_PROBE)


@contextlib.contextmanager
def quiet_startup(patterns=None):
    """Capture file descriptor 2 inside the block; afterwards replay every line that
    contains none of `patterns` (default `startup_noise()`). Native libraries write
    there directly, so redirecting sys.stderr alone would not catch them."""
    patterns = startup_noise() if patterns is None else tuple(patterns)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(True):
                if not any(p in line for p in patterns):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _import_tensorflow():
    if "tensorflow" in sys.modules or os.environ.get("BNAS_TF_STARTUP_LOG") == "1":
        return
    with quiet_startup():
        import tensorflow as tf
        # The CUDA platform is probed when devices are first listed: do it here, inside
        # the filter (listing physical devices does not initialise the runtime, so
        # strategies and device configuration can still be set afterwards).
        tf.config.list_physical_devices()
    # TensorFlow's own INFO lines (SavedModel "Assets written to", "Sharding callback
    # duration", "Found untraced functions", ...) report nothing a run did wrong; its
    # warnings and errors stay, and so do bnas-tf's own INFO lines (absl's logger).
    from absl import logging as absl_logging
    absl_logging.get_absl_handler().addFilter(_library_info_filter)
    tf.get_logger().addFilter(_library_info_filter)


_LIBRARIES = (f"{os.sep}tensorflow{os.sep}", f"{os.sep}tf_keras{os.sep}", f"{os.sep}keras{os.sep}")


# Warnings of TensorFlow/Keras internals about nothing the run did wrong: a SavedModel of
# a compiled model that never ran evaluate() (its metrics are unbuilt, by design).
_BENIGN = ("Compiled the loaded model, but the compiled metrics have yet to be built",)


def _library_info_filter(record):
    """False (drop) for INFO/DEBUG records logged from TensorFlow or Keras sources, and
    for the benign library warnings in `_BENIGN`."""
    if any(text in str(record.msg) for text in _BENIGN):
        return False
    return record.levelno >= 30 or not any(lib in str(record.pathname) for lib in _LIBRARIES)


_import_tensorflow()

# Register every custom Keras layer/schedule (package "bnas_tf"), as `import larq` does:
# a model saved whole loads after `import bnas_tf` alone. These modules import
# TensorFlow but create no tensors, so devices can still be configured afterwards.
from bnas_tf import models as _models  # noqa: E402,F401  (binary, bnas, bars, baselines)
from bnas_tf import recipes as _recipes  # noqa: E402,F401  (OneCycle)
from bnas_tf import training as _training  # noqa: E402,F401  (CrossEntropy)
