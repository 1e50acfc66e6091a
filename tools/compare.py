"""Train several networks under the same recipe, epochs and data; print the paper-style
table, write DIR/comparison.json and DIR/comparison.png (accuracy vs Equivalent OPs).

  python tools/compare.py --models=bnas-a,xnor-resnet18 --dataset=folder --data_dir=PATH \\
      --epochs=2 --max_examples=500 --output_dir=runs/compare

Rerunning the same command resumes every model's training.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import compare, training  # noqa: E402
import flags  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import model as model_flags  # noqa: E402,F401  (--drop_path, --auxiliary)
from flags import size as size_flags  # noqa: E402  (--models)
from flags import train as train_flags  # noqa: E402

FLAGS = size_flags.FLAGS

HELP = (("compare", ("models", "output_dir", "strategy", "progress")),
        ("data", flags.names(data_flags)),
        ("model", ("auxiliary", "drop_path")),
        ("train (recipe)", ("recipe",) + train_flags.RECIPE_FLAGS))


def main(argv):
    flags.check_args(argv, models="NAME,NAME,... (presets or preset JSON files)",
                     output_dir="DIR")
    with flags.usage_errors():
        strategy = training.make_strategy(FLAGS.strategy)  # first: before any TF op
        compare.compare(FLAGS.models, data_flags.data_config_from_flags(),
                        train_flags.train_config_from_flags(), FLAGS.output_dir,
                        strategy=strategy)


def run():
    flags.run(main, __doc__, HELP, saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))
