"""absl flag groups, each defined once and shared by every binary in tools/."""
import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
