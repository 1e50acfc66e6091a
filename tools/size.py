"""Size a BNAS network to an Equivalent-OPs budget with keras-tuner; rerun to resume.

  python tools/size.py --genotype=bnas_a --flops_budget=1.6e7 --dataset=folder \\
      --data_dir=PATH --max_examples=2000 --max_trials=10 --epochs_per_trial=2 \\
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

from bnas_tf import data, sizing, training  # noqa: E402
from bnas_tf.models import checks  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import model as model_flags  # noqa: E402  (--preset, --genotype, --binarization)
from flags import size as size_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = size_flags.FLAGS
GROUPS = (data_flags, model_flags, size_flags, train_flags)
HINTS = {"cells": "sizing searches the cells: set --min_cells/--max_cells",
         "channels": "sizing searches the channels: set --min_channels/--max_channels",
         "epochs": "each trial trains --epochs_per_trial epochs",
         "models": "--models is tools/compare.py's",
         "output_dir": "trials are written under --directory/--project_name; the best size "
                       "to --output",
         "model_dir": "--model_dir is tools/evaluate.py's",
         "split": "trials are scored on the validation split"}

# this tool's wording of shared flags whose module help does not fit it (flags.help_text)
OWN_HELP = {
    "keep_checkpoints": "How many epoch checkpoints to keep of each trained size, in "
                        "DIRECTORY/PROJECT_NAME/sizes/<size>/ckpt.",
}
OWN = (OWN_HELP, size_flags, data_flags, model_flags, train_flags)  # whose help shows
HELP = (("size", flags.names(size_flags, exclude=("models",)) + ("strategy",)),
        ("model", ("preset", "genotype", "binarization", "residual", "auxiliary", "drop_path")),
        ("data", flags.names(data_flags)),
        ("train (recipe; --epochs_per_trial sets the epochs)",
         ("recipe", "progress") + tuple(n for n in train_flags.RECIPE_FLAGS if n != "epochs")))


def sizing_trials_saved():
    """Ctrl-C: how many keras-tuner trials of --directory/--project_name completed."""
    import glob
    import json

    folder = os.path.join(FLAGS.directory, FLAGS.project_name)
    done = 0
    for path in glob.glob(os.path.join(folder, "trial_*", "trial.json")):
        with open(path, encoding="utf-8") as f:
            done += json.load(f).get("status") == "COMPLETED"
    return f"{done} completed sizing trial{'s' * (done != 1)} in {folder}"


def main(argv):
    flags.check_args(argv)
    applies.refuse_unused("tools/size.py", GROUPS, applies.names(*GROUPS) - set(HINTS), HINTS)
    applies.refuse_without(FLAGS.tune_gamma, ["gammas"], "gammas are tried with --tune_gamma only")
    applies.refuse_without(FLAGS.tune_gamma or not (FLAGS.preset or FLAGS.genotype),
                           ["search_dir"], "the search's alphas are read with --tune_gamma only "
                           "(without --preset/--genotype it names the genotype)")
    try:
        strategy = training.make_strategy(FLAGS.strategy)  # first: before any TF op
        config = size_flags.sizing_config_from_flags()
        spec, search_dir = sizing.resolve_spec(FLAGS.preset, FLAGS.genotype, FLAGS.search_dir,
                                               FLAGS.binarization)
        if FLAGS.residual is not None:
            spec = dict(spec, residual=FLAGS.residual)
        checks.check_options(spec.get("family"), {"residual": FLAGS.residual,
                                                  "drop_path": FLAGS.drop_path})
        spec = model_flags.fit_to_data(spec, data.dataset_info(data_flags.data_config_from_flags()))
        where = (f"--preset={FLAGS.preset}" if FLAGS.preset else
                 f"--genotype={FLAGS.genotype}" if FLAGS.genotype else f"--search_dir={search_dir}")
        print(f"sizing a {spec.get('family')} network (cell from {where}): cells "
              f"{config.min_cells}..{config.max_cells} (--min_cells, --max_cells) x channels "
              f"{config.min_channels}..{config.max_channels} step {config.channels_step} "
              f"(--min_channels, --max_channels, --channels_step)", flush=True)
        train_config = train_flags.train_config_from_flags(epochs=FLAGS.epochs_per_trial)
        sizing.size(spec, data_flags.data_config_from_flags(), train_config, config,
                    FLAGS.directory, FLAGS.project_name, search_dir=search_dir,
                    output=FLAGS.output, strategy=strategy)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise app.UsageError(str(e)) from None
    except RuntimeError as e:
        sys.exit(f"size.py: {e}")


def run():
    flags.run(main, __doc__, HELP, saved=lambda: sizing_trials_saved(), own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, saved=lambda: sizing_trials_saved(), own=OWN)
