"""Size a BNAS network to an Equivalent-OPs budget with keras-tuner; rerun to resume.

  python tools/size.py --genotype=bnas_a --flops_budget=1.6e7 --dataset=folder \
      --data_dir=PATH --max_examples=2000 --max_trials=10 --epochs_per_trial=2 \
      --directory=runs/sizing --output=sized.json
  python tools/train.py --preset=sized.json --output_dir=runs/sized ...

Distributed tuning (keras-tuner's chief/worker mode): start one chief with
KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=HOST KERASTUNER_ORACLE_PORT=PORT and
workers with the same IP/port and KERASTUNER_TUNER_ID=tuner0, tuner1, ...; the
chief serves the oracle and writes --output when every trial has finished.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import sizing, training  # noqa: E402
import flags  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import model as model_flags  # noqa: E402,F401  (--preset, --genotype)
from flags import size as size_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = size_flags.FLAGS


def main(argv):
    flags.check_args(argv)
    try:
        strategy = training.make_strategy(FLAGS.strategy)  # first: before any TF op
        config = size_flags.sizing_config_from_flags()
        spec, search_dir = sizing.resolve_spec(FLAGS.preset, FLAGS.genotype, FLAGS.search_dir,
                                               FLAGS.binarization)
        train_config = train_flags.train_config_from_flags(epochs=FLAGS.epochs_per_trial)
        sizing.size(spec, data_flags.data_config_from_flags(), train_config, config,
                    FLAGS.directory, FLAGS.project_name, search_dir=search_dir,
                    output=FLAGS.output, strategy=strategy)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise app.UsageError(str(e)) from None
    except RuntimeError as e:
        sys.exit(f"size.py: {e}")


def run():
    app.run(main)


if __name__ == "__main__":
    app.run(main)
