"""Evaluate a trained model directory (top-1 / top-5 / loss) on a labelled split.

  python tools/evaluate.py --model_dir=runs/bnas_a --dataset=folder --data_dir=PATH --split=test
Without --dataset/--data_dir it uses the data the model was trained with. Writes
MODEL_DIR/eval_<split>.json.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import training  # noqa: E402
import flags  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = train_flags.FLAGS

HELP = (("evaluate", ("model_dir", "split")),
        ("data (default: the data the model was trained with)", flags.names(data_flags)))


def main(argv):
    flags.check_args(argv, model_dir="DIR")
    if FLAGS.strategy != "default":  # a flag it cannot honour is refused, not ignored
        raise app.UsageError(f"--strategy={FLAGS.strategy}: evaluate.py scores the saved "
                             "model on one device (as training reports it); drop --strategy")
    given = FLAGS["dataset"].present or FLAGS["data_dir"].present
    with flags.usage_errors():
        config = data_flags.data_config_from_flags() if given else None
        results = training.evaluate(FLAGS.model_dir, config, split=FLAGS.split, verbose=1)
    print(json.dumps(results))


def run():
    flags.run(main, __doc__, HELP)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP)
