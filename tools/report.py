"""Costs of presets, and paper-style comparison tables with trained accuracies.

  python tools/report.py --models=bnas-a,xnor-resnet18 --format=table
  python tools/report.py --models=all --format=json --output=costs.json
  python tools/report.py --table=cifar --results=runs/bnas_a,runs/xnor18
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import report  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import report as report_flags  # noqa: E402

FLAGS = report_flags.FLAGS


def render(rows, fmt, kind=None):
    if fmt == "json":
        return report.to_json(rows)
    if fmt == "csv":
        return report.to_csv(rows).rstrip("\n")
    return report.format_paper_table(rows, kind) if kind else report.format_costs(rows)

OWN = (report_flags,)  # whose help a shared flag shows
HELP = (("report", flags.names(report_flags)),)


def main(argv):
    flags.check_args(argv)
    applies.refuse_unused("tools/report.py", (report_flags,), applies.names(report_flags))
    applies.refuse_without(not FLAGS.table, ["num_classes", "image_size"],
                           "the paper-style table counts each network on its paper's data")
    with flags.usage_errors():
        if FLAGS.table:
            rows = report.paper_table(FLAGS.table, results=FLAGS.results or (),
                                      models=FLAGS.models or None, progress=True)
        else:
            if not FLAGS.models:
                raise ValueError("give --models=NAME[,NAME...] (or 'all'), "
                                 "or --table=cifar|imagenet")
            if FLAGS.results:
                raise ValueError("--results only fills the paper-style table; add --table")
            rows = report.cost_rows(FLAGS.models, FLAGS.num_classes, FLAGS.image_size,
                                    progress=True)
        text = render(rows, FLAGS.format, FLAGS.table)
        if FLAGS.output:
            report.write(rows, FLAGS.output)
    print(text)


def run():
    flags.run(main, __doc__, HELP, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN)
