"""Model flags, defined once: --preset, --genotype, --cells, --channels, --binarization,
--residual, --auxiliary, --drop_path."""
import os

from absl import flags as absl_flags

from flags import define

from bnas_tf import binary
from bnas_tf.models import presets

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    (absl_flags.DEFINE_string, "preset", None, {},
     "Network preset (bnas-mini, bnas-a..bnas-h, ...) or a preset JSON file."),
    (absl_flags.DEFINE_string, "genotype", None, {},
     "Cell genotype: a released name (bnas_a, bnas_imagenet), a genotype JSON file, or JSON."),
    (absl_flags.DEFINE_integer, "cells", None, dict(lower_bound=2),
     "Number of cells (overrides the preset)."),
    (absl_flags.DEFINE_integer, "channels", None, dict(lower_bound=1),
     "Initial channels (overrides the preset)."),
    (absl_flags.DEFINE_enum, "binarization", None, dict(enum_values=sorted(binary.SCHEMES)),
     "Binarization scheme of the binary ops (default: the spec's, else xnor)."),
    (absl_flags.DEFINE_enum, "residual", None, dict(enum_values=["float", "binary"]),
     "BNAS reduction-cell residual: float (the paper) or binary (a really binary net)."),
    (absl_flags.DEFINE_boolean, "auxiliary", None, {},
     "Train with the auxiliary tower (default: the recipe's)."),
    (absl_flags.DEFINE_float, "drop_path", None, dict(lower_bound=0.0, upper_bound=0.99),
     "Final drop-path rate, raised linearly over the epochs (default: the recipe's)."),
)
define(_DEFINITIONS)


def spec_from_flags(**overrides):
    """The network spec of --preset/--genotype/--cells/--channels/--binarization."""
    preset, genotype = FLAGS.preset, FLAGS.genotype
    if preset is None and genotype is None:
        raise ValueError("give --preset=NAME or --genotype=NAME_OR_JSON_PATH")
    values = {"binarization": FLAGS.binarization, "residual": FLAGS.residual}
    if preset is None:  # name the network after its genotype
        values["name"] = os.path.splitext(os.path.basename(genotype.rstrip("/")))[0] \
            if not genotype.lstrip().startswith("{") else "custom"
    values.update(overrides)
    return presets.resolve(preset=preset, genotype=genotype, cells=FLAGS.cells,
                           channels=FLAGS.channels, **values)
