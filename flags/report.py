"""Report flags (tools/report.py): --models --format --table --results --output ...

--models, --output and --image_size are shared with other flag groups; whichever
group is imported first defines them (same types), the others reuse them.
"""
from absl import flags as absl_flags

from flags import define

FLAGS = absl_flags.FLAGS
FORMATS = ("table", "json", "csv")
_DEFINITIONS = (
    (absl_flags.DEFINE_list, "models", None, {},
     "Comma-separated presets (or preset JSON files); 'all' = every preset."),
    (absl_flags.DEFINE_enum, "format", "table", dict(enum_values=list(FORMATS)),
     "Output format: aligned text table, JSON list, or CSV."),
    (absl_flags.DEFINE_enum, "table", None, dict(enum_values=["cifar", "imagenet"]),
     "Print the paper-style table (BNAS Table 6/7, BARS Table 2) of this dataset."),
    (absl_flags.DEFINE_list, "results", [], {},
     "tools/train.py output directories (metrics.json + spec.json) whose accuracy fills "
     "the paper-style table."),
    (absl_flags.DEFINE_string, "output", None, {},
     "Also write the rows to FILE.json or FILE.csv."),
    (absl_flags.DEFINE_integer, "num_classes", None, dict(lower_bound=1),
     "Classes of the counted networks (default: 10 for CIFAR presets, 1000 for ImageNet)."),
    (absl_flags.DEFINE_integer, "image_size", None, dict(lower_bound=8),
     "Image side in pixels (default: 32 for CIFAR presets, 224 for ImageNet)."),
)
define(_DEFINITIONS)
