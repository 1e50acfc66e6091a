"""Data flags, defined once for every tool: --dataset, --data_dir, --batch_size, ..."""
import os

from absl import flags as absl_flags

from flags import define

from bnas_tf import data, folders

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    (absl_flags.DEFINE_enum, "dataset", "cifar10", dict(enum_values=list(data.DATASETS)),
     "Dataset: cifar10 / imagenet2012 (TFDS), imagenet100 (subset), folder (image folder)."),
    (absl_flags.DEFINE_string, "data_dir", os.environ.get("BNAS_DATA_DIR"), {},
     "TFDS data_dir, or the image-folder root for --dataset=folder (default: $BNAS_DATA_DIR)."),
    (absl_flags.DEFINE_integer, "batch_size", 64, dict(lower_bound=1), "Batch size."),
    (absl_flags.DEFINE_integer, "image_size", None, dict(lower_bound=8),
     "Image side in pixels (default: 32 for CIFAR-like data, 224 otherwise)."),
    (absl_flags.DEFINE_integer, "max_examples", None, dict(lower_bound=1),
     "Class-balanced cap on every split, for smoke runs."),
    (absl_flags.DEFINE_integer, "cutout", 0, dict(lower_bound=0),
     "Cutout length in pixels for training (0 = off)."),
    (absl_flags.DEFINE_boolean, "download", False, {},
     "Let TFDS download and prepare the dataset when it is missing."),
    (absl_flags.DEFINE_integer, "seed", 0, {}, "Random seed (shuffling, augmentation, search halves)."),
    (absl_flags.DEFINE_string, "data_service", None, {},
     "tf.data service dispatcher (grpc://HOST:PORT): its workers decode and augment the "
     "training batches (each example once per epoch; the order is then not reproducible)."),
    (absl_flags.DEFINE_float, "validation_fraction", 0.1, dict(lower_bound=0.0, upper_bound=0.99),
     "Per-class hold-out of train used as validation when the data has no own validation split."),
    (absl_flags.DEFINE_enum, "bad_images", "error", dict(enum_values=list(folders.BAD_IMAGES)),
     "Image folders: every image a run uses is decoded once before it starts; a corrupt or "
     "undecodable file is an error naming it (error), or left out with a count (skip)."),
)
define(_DEFINITIONS)


def data_config_from_flags(**overrides) -> data.DataConfig:
    """DataConfig from the data flags (their defaults when unparsed), then `overrides`."""
    values = {name: FLAGS[name].value for _, name, *_ in _DEFINITIONS}
    values.update(overrides)
    return data.DataConfig(**values)
