"""The evidence study: searched vs random vs hand-designed binary networks at equal EqOPs.

  python tools/study.py --profile=cpu --data_dir=../shared/datasets/cifar10/train \\
      --output_dir=runs/study

Runs every arm (--arms) over --seeds, each trial's network matched on equivalent
OPs, trained identically, evaluated on a held-out test split no search or training
reads, exported through LCE; writes results.json, results.md and
accuracy_vs_eqops.png into --output_dir. Rerunning the same command resumes.

Scale out (keras-tuner's chief/worker mode): start one chief with
KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=HOST KERASTUNER_ORACLE_PORT=PORT and
workers with the same IP/port and KERASTUNER_TUNER_ID=tuner0, tuner1, ..., all with
the same command and a shared --output_dir; the chief writes the report at the end.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
import flags  # noqa: E402
from flags import study as study_flags  # noqa: E402

FLAGS = study_flags.FLAGS

OWN = (study_flags,)  # whose help a shared flag shows
HELP = (("study", flags.names(study_flags)),)


def main(argv):
    flags.check_args(argv, output_dir="DIR")
    from bnas_tf.study import run as study_run, scale_out
    with flags.usage_errors():
        config = study_flags.study_config_from_flags()
        if scale_out.distributed():
            results = scale_out.run(config, FLAGS.output_dir)
        else:
            results = study_run.run(config, FLAGS.output_dir)
    if results is not None:
        print(os.path.join(FLAGS.output_dir, "results.md"))


def _saved():
    """Ctrl-C's line: finished trials (their trial.json) and checkpoints of the others."""
    from bnas_tf.study import trial
    root = os.path.join(FLAGS.output_dir or "", "trials")
    finished = [d for d, _, names in os.walk(root) if trial.TRIAL_FILE in names]
    return (f"{len(finished)} finished trial(s) in {root}; "
            + flags.saved_checkpoints(root))


def run():
    flags.run(main, __doc__, HELP, saved=_saved, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, saved=_saved, own=OWN)
