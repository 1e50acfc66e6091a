"""Flags of the main job (tools/pipeline.py) on top of the data, search and train flags."""
from absl import flags as absl_flags

from flags import define

from flags import data as _data  # noqa: F401  (--dataset, --data_dir, --batch_size, ...)
from flags import search as _search  # noqa: F401  (--method, --cells, --channels, BARS flags)
from flags import train as _train  # noqa: F401  (--recipe and its numbers)

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    (absl_flags.DEFINE_integer, "search_epochs", 2, dict(lower_bound=1), "Search epochs."),
    (absl_flags.DEFINE_integer, "train_epochs", 2, dict(lower_bound=1),
     "Training epochs of the derived network."),
    (absl_flags.DEFINE_integer, "train_cells", None, dict(lower_bound=2),
     "BNAS: cells of the trained network (default: the search's --cells)."),
    (absl_flags.DEFINE_integer, "train_channels", None, dict(lower_bound=1),
     "BNAS: channels of the trained network (default: the search's --channels)."),
    (absl_flags.DEFINE_integer, "export_samples", 32, dict(lower_bound=0),
     "Sample images on which the .tflite must agree with Keras (0 = skip)."),
)
define(_DEFINITIONS)
