"""Flags of tools/plot_genotype.py."""
from absl import flags as absl_flags

from flags import define

FLAGS = absl_flags.FLAGS
FORMATS = (".png", ".svg", ".pdf")
_DEFINITIONS = (
    (absl_flags.DEFINE_string, "genotype", None, {},
     "Released genotype name, JSON file or JSON string."),
    (absl_flags.DEFINE_string, "output", None, {},
     "Output image (.png, .svg, .pdf). (default: cell.png)"),
    (absl_flags.DEFINE_string, "title", None, {}, "Figure title (default: the genotype's name)."),
)
define(_DEFINITIONS)
