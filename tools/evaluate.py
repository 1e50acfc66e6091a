"""Evaluate a trained model directory (top-1 / top-5 / loss) on a labelled split.

  python tools/evaluate.py --model_dir=runs/bnas_a --dataset=folder --data_dir=PATH --split=test
Without --dataset/--data_dir it uses the data the model was trained with (other data
flags given, e.g. --max_examples, apply on top of it). Writes MODEL_DIR/eval_<split>.json.
"""
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import training  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = train_flags.FLAGS
GROUPS = (data_flags, train_flags)
# Data flags that apply on top of the training data when --dataset/--data_dir are not given
DATA_OVERRIDES = ("batch_size", "max_examples", "seed", "validation_fraction", "download",
                  "bad_images")
USED = {"dataset", "data_dir", "model_dir", "split", "progress", *DATA_OVERRIDES}
HINTS = {"image_size": "images are resized to the model's own size",
         "cutout": "evaluation does not augment",
         "strategy": "it scores the saved model on one device, as training reports it",
         "output_dir": "results go to MODEL_DIR/eval_<split>.json"}

# this tool's wording of shared flags whose module help does not fit it (flags.help_text)
OWN_HELP = {
    "dataset": "Dataset: cifar10 / imagenet2012 (TFDS), imagenet100 (subset), folder (image "
               "folder). (default: the model's training data)",
    "data_dir": "TFDS data_dir, or the image-folder root for --dataset=folder; with --dataset "
                "alone, $BNAS_DATA_DIR. (default: the model's training data)",
}
OWN = (OWN_HELP, data_flags, train_flags)  # whose help a shared flag shows
HELP = (("evaluate", ("model_dir", "split", "progress")),
        ("data (without --dataset/--data_dir: the model's training data, other flags on top)",
         tuple(n for n in flags.names(data_flags) if n in USED)))


def main(argv):
    flags.check_args(argv, model_dir="DIR")
    applies.refuse_unused("tools/evaluate.py", GROUPS, USED, HINTS)
    given = FLAGS["dataset"].present or FLAGS["data_dir"].present
    with flags.usage_errors():
        if given:
            config = data_flags.data_config_from_flags()
        else:  # the training data, with the data flags given applied
            overrides = {n: FLAGS[n].value for n in DATA_OVERRIDES if applies.given(n)}
            config = (dataclasses.replace(training.training_data_config(FLAGS.model_dir),
                                          **overrides) if overrides else None)
        results = training.evaluate(FLAGS.model_dir, config, split=FLAGS.split,
                                    verbose=train_flags.PROGRESS[FLAGS.progress])
    print(json.dumps(results))


def run():
    flags.run(main, __doc__, HELP, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN)
