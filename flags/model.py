"""Model flags, defined once: --preset, --genotype, --cells, --channels, --binarization,
--residual, --auxiliary, --drop_path, --adapt_to_data."""
import os

from absl import flags as absl_flags

from flags import define

from bnas_tf import binary
from bnas_tf.models import checks, presets

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    (absl_flags.DEFINE_string, "preset", None, {},
     "Network preset (bnas-mini, bnas-a..bnas-h, ...) or a preset JSON file."),
    (absl_flags.DEFINE_string, "genotype", None, {},
     "Cell genotype: a released name (bnas_a, bnas_imagenet), a genotype JSON file, or JSON."),
    (absl_flags.DEFINE_integer, "cells", None, dict(lower_bound=2),
     "BNAS networks: number of cells (overrides the preset; refused for other families)."),
    (absl_flags.DEFINE_integer, "channels", None, dict(lower_bound=1),
     "BNAS and baseline networks: initial channels (overrides the preset; refused for BARS)."),
    (absl_flags.DEFINE_enum, "binarization", None, dict(enum_values=sorted(binary.SCHEMES)),
     "Binarization scheme of the binary ops (default: the spec's, else xnor)."),
    (absl_flags.DEFINE_enum, "residual", None, dict(enum_values=["float", "binary"]),
     "BNAS reduction-cell residual: float (the paper) or binary (a really binary net); "
     "refused for other families."),
    (absl_flags.DEFINE_boolean, "auxiliary", None, {},
     "Train with the auxiliary tower (default: the recipe's)."),
    (absl_flags.DEFINE_float, "drop_path", None, dict(lower_bound=0.0, upper_bound=0.99),
     "Final drop-path rate, raised linearly over the epochs (default: the recipe's)."),
    (absl_flags.DEFINE_boolean, "adapt_to_data", False, {},
     "Train a preset meant for other data (e.g. an ImageNet preset on 32-px CIFAR images) "
     "adapted to this data: the stem for its resolution, a classifier for its classes "
     "(printed and recorded). Without it such a preset is refused."),
)
define(_DEFINITIONS)


def spec_from_flags(sources=None, **overrides):
    """The network spec of --preset/--genotype/--cells/--channels/--binarization/--residual.

    sources: an optional dict filled with where each value came from (``--cells``,
    ``preset bnas-a``, ``--genotype=FILE``, ``default``), for `describe`. Raises
    ValueError for a flag the chosen family does not take (`checks.check_options`),
    --drop_path included."""
    preset, genotype = FLAGS.preset, FLAGS.genotype
    if preset is None and genotype is None:
        raise ValueError("give --preset=NAME or --genotype=NAME_OR_JSON_PATH")
    values = {"binarization": FLAGS.binarization, "residual": FLAGS.residual}
    if preset is None:  # name the network after its genotype
        values["name"] = os.path.splitext(os.path.basename(genotype.rstrip("/")))[0] \
            if not genotype.lstrip().startswith("{") else "custom"
    values.update(overrides)
    origin = {}
    spec = presets.resolve(preset=preset, genotype=genotype, cells=FLAGS.cells,
                           channels=FLAGS.channels, sources=origin, **values)
    checks.check_options(spec.get("family"), {"drop_path": FLAGS.drop_path})
    if preset is not None and spec.get("name") == preset and os.path.isfile(preset):
        spec["name"] = os.path.splitext(os.path.basename(preset))[0]  # a file: its stem
    if sources is not None:
        for key, where in origin.items():
            if where == "given" and key in FLAGS and FLAGS[key].present:
                where = f"--{key}"
            elif where == "genotype" and genotype is not None:
                where = f"--genotype={genotype}" if len(genotype) < 200 else "--genotype"
            sources[key] = where
    return spec


def fit_to_data(spec, info, log=print):
    """`spec` adapted to the data `info` (data.DatasetInfo) when --adapt_to_data is
    given; otherwise refused (ValueError) when it is meant for other data."""
    if FLAGS.adapt_to_data:
        return checks.adapt_to_data(spec, info.num_classes, info.image_size, log=log)
    checks.check_data(spec, info.num_classes, info.image_size)
    return spec
