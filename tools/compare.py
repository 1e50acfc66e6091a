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
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import model as model_flags  # noqa: E402  (--cells, --channels, --drop_path, ...)
from flags import size as size_flags  # noqa: E402  (--models)
from flags import train as train_flags  # noqa: E402

FLAGS = size_flags.FLAGS
GROUPS = (data_flags, model_flags, size_flags, train_flags)
OVERRIDES = ("cells", "channels", "binarization", "residual")  # applied to every model
USED = (applies.names(data_flags, model_flags, train_flags) - {"preset", "genotype", "model_dir",
                                                                "split"}) | {"models"}
HINTS = {"preset": "name the networks in --models", "genotype": "name the networks in --models "
         "(a genotype needs a preset JSON file: tools/size.py --output)",
         "model_dir": "each model's directory is OUTPUT_DIR/<model>",
         "split": "each model is scored on the test split"}

# this tool's wording of shared flags whose module help does not fit it (flags.help_text)
OWN_HELP = {
    "output_dir": "Comparison directory: DIR/<model>/ (each model's training directory), "
                  "DIR/comparison.json (settings and one row per model) and DIR/comparison.png "
                  "(top-1 accuracy vs Equivalent OPs). Rerunning the same command resumes.",
    "keep_checkpoints": "How many epoch checkpoints to keep in each OUTPUT_DIR/<model>/ckpt.",
    "strategy": "Distribution of every model's training: default (one device), mirrored "
                "(all local GPUs / logical CPUs), multi_worker (cluster from TF_CONFIG: the "
                "same command on every worker; the chief alone writes comparison.json and "
                "the plot).",
}
OWN = (OWN_HELP, size_flags, data_flags, model_flags, train_flags)  # whose help shows
HELP = (("compare", ("models", "output_dir", "strategy", "progress")),
        ("data", flags.names(data_flags)),
        ("model (applied to every model)",
         tuple(n for n in flags.names(model_flags) if n in USED)),
        ("train (recipe)", ("recipe",) + train_flags.RECIPE_FLAGS))


def main(argv):
    flags.check_args(argv, models="NAME,NAME,... (presets or preset JSON files)",
                     output_dir="DIR")
    applies.refuse_unused("tools/compare.py", GROUPS, USED, HINTS)
    with flags.usage_errors():
        strategy = training.make_strategy(FLAGS.strategy)  # first: before any TF op
        train_config = train_flags.train_config_from_flags()
        overrides = {name: FLAGS[name].value for name in OVERRIDES}
        if FLAGS.drop_path is not None:  # refused for a family without drop-path
            overrides["drop_path"] = FLAGS.drop_path
        compare.compare(FLAGS.models, data_flags.data_config_from_flags(), train_config,
                        FLAGS.output_dir, strategy=strategy, overrides=overrides,
                        adapt_to_data=FLAGS.adapt_to_data,
                        labels={name: f"--{name}" for name in OVERRIDES})


def run():
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))
