"""Draw a genotype's cells (matplotlib; the format follows the output extension).

  python tools/plot_genotype.py --genotype=bnas_a --output=cell.png
  python tools/plot_genotype.py --genotype=runs/search/genotype.json --output=cell.svg
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags as absl_flags  # noqa: E402

from bnas_tf import genotypes  # noqa: E402

FLAGS = absl_flags.FLAGS
if "genotype" not in FLAGS:
    absl_flags.DEFINE_string("genotype", None, "Released genotype name, JSON file or JSON string.")
if "output" not in FLAGS:
    absl_flags.DEFINE_string("output", "cell.png", "Output image (.png, .svg, .pdf).")
if "title" not in FLAGS:
    absl_flags.DEFINE_string("title", None, "Figure title (default: the genotype's name).")

FORMATS = (".png", ".svg", ".pdf")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.genotype:
        raise app.UsageError("--genotype=NAME_OR_PATH is required")
    ext = os.path.splitext(FLAGS.output)[1].lower()
    if ext not in FORMATS:
        raise app.UsageError(f"--output must end in {', '.join(FORMATS)}, got {FLAGS.output!r}")
    folder = os.path.dirname(os.path.abspath(FLAGS.output))
    if not os.path.isdir(folder):
        raise app.UsageError(f"output folder {folder} does not exist")
    try:
        genotype = genotypes.load(FLAGS.genotype)
    except genotypes.GenotypeError as e:
        raise app.UsageError(str(e)) from None
    from bnas_tf import plot  # matplotlib only when drawing

    title = FLAGS.title or os.path.basename(str(FLAGS.genotype))
    plot.plot_genotype(genotype, FLAGS.output, title=title)
    print(FLAGS.output)


def run():
    app.run(main)


if __name__ == "__main__":
    app.run(main)
