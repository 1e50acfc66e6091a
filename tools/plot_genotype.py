"""Draw a genotype's cells (matplotlib; the format follows the output extension).

  python tools/plot_genotype.py --genotype=bnas_a --output=cell.png
  python tools/plot_genotype.py --genotype=runs/search/genotype.json --output=cell.svg
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401
from absl import app  # noqa: E402

import flags  # noqa: E402
from bnas_tf import genotypes  # noqa: E402
from flags import plot as plot_flags  # noqa: E402

FLAGS = plot_flags.FLAGS
FORMATS = plot_flags.FORMATS

OWN = (plot_flags,)  # whose help a shared flag shows
HELP = (("plot", flags.names(plot_flags)),)


def main(argv):
    flags.check_args(argv, genotype="NAME_OR_PATH")
    output = FLAGS.output or "cell.png"
    ext = os.path.splitext(output)[1].lower()
    if ext not in FORMATS:
        raise app.UsageError(f"--output must end in {', '.join(FORMATS)}, got {output!r}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise app.UsageError(f"output folder {folder} does not exist")
    with flags.usage_errors():
        genotype = genotypes.load(FLAGS.genotype)
    from bnas_tf import plot  # matplotlib only when drawing

    title = FLAGS.title or os.path.basename(str(FLAGS.genotype))
    plot.plot_genotype(genotype, output, title=title)
    print(output)


def run():
    flags.run(main, __doc__, HELP, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN)
