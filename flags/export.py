"""Export flags, defined once: --model_dir, --output, --float_twin, --samples, ..."""
from absl import flags as absl_flags

from flags import define

from bnas_tf import data, export

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    (absl_flags.DEFINE_string, "model_dir", None, {},
     "A trained model directory (written by tools/train.py)."),
    (absl_flags.DEFINE_string, "output", None, {},
     "Where to write the binary .tflite (written atomically, only when every check passes)."),
    (absl_flags.DEFINE_string, "float_twin", None, {},
     "Also write the float twin (same network, float convs) .tflite here, for the size "
     "comparison."),
    (absl_flags.DEFINE_integer, "samples", 32, dict(lower_bound=0),
     "Sample images on which the .tflite must agree with Keras (0 = skip the check)."),
    (absl_flags.DEFINE_float, "min_agreement", export.DEFAULT_MIN_AGREEMENT,
     dict(lower_bound=0.0, upper_bound=1.0),
     "Fail when the top-1 agreement of .tflite and Keras on the samples is below this."),
    (absl_flags.DEFINE_enum, "split", "test", dict(enum_values=list(data.SPLITS)),
     "Data split the sample images come from when --dataset/--data_dir are given "
     "(otherwise the samples are standard-normal noise)."),
    (absl_flags.DEFINE_integer, "num_threads", 1, dict(lower_bound=1),
     "Interpreter threads for the agreement check and latency."),
    (absl_flags.DEFINE_integer, "latency_runs", 0, dict(lower_bound=0),
     "Time this many single-image runs through the LCE interpreter (0 = skip)."),
)
define(_DEFINITIONS)
