"""Train a network (preset or genotype) into a model directory; rerun to resume.

  python tools/train.py --genotype=bnas_a --cells=20 --channels=36 --recipe=cifar \\
      --dataset=folder --data_dir=PATH --output_dir=runs/bnas_a
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import data, training  # noqa: E402
from bnas_tf.models import checks  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import model as model_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = train_flags.FLAGS
SUMMARY = ("top1", "top5", "loss", "params", "flops", "biops", "equivalent_ops", "epochs")

OWN = (train_flags, data_flags, model_flags)  # whose help a shared flag shows
HELP = (("train", ("output_dir", "strategy", "progress")),
        ("model", flags.names(model_flags)),
        ("data", flags.names(data_flags)),
        ("train (recipe)", ("recipe",) + train_flags.RECIPE_FLAGS))


GROUPS = (data_flags, model_flags, train_flags)
HINTS = {"model_dir": "--model_dir is tools/evaluate.py's; training writes --output_dir",
         "split": "training uses the train split (and validation, test for the scores)"}


def main(argv):
    flags.check_args(argv, output_dir="DIR")
    applies.refuse_unused("tools/train.py", GROUPS, applies.names(*GROUPS) - set(HINTS), HINTS)
    try:
        with flags.usage_errors():
            strategy = training.make_strategy(FLAGS.strategy)  # first: before any TF op
            sources = {}
            spec = model_flags.spec_from_flags(sources=sources)
            config = train_flags.train_config_from_flags()
            data_config = data_flags.data_config_from_flags()
            spec = model_flags.fit_to_data(spec, data.dataset_info(data_config))
            print(f"network {checks.describe(spec, sources, FLAGS.genotype)}", flush=True)
            metrics = training.train(spec, data_config, config, FLAGS.output_dir,
                                     strategy=strategy)
    except FloatingPointError as e:
        sys.exit(f"train.py: {e}")
    print(json.dumps({k: metrics[k] for k in SUMMARY if k in metrics}))


def run():
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))
