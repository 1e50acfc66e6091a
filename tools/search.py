"""Search a binary architecture (BNAS cell search, or BARS) into a search directory.

  python tools/search.py --method=bnas --dataset=folder --data_dir=PATH \\
      --epochs=50 --batch_size=64 --output_dir=runs/search_bnas

Writes DIR/genotype.json (usable as `tools/train.py --genotype=DIR/genotype.json`),
DIR/genotypes/epoch_XXX.json, DIR/search_summary.json, DIR/ckpt and DIR/logs.
Rerunning the same command resumes an interrupted search.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf.search import runner  # noqa: E402
import flags  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import search as search_flags  # noqa: E402

FLAGS = search_flags.FLAGS

OWN = (search_flags, data_flags)  # whose help a shared flag shows
HELP = (("search", flags.names(search_flags, exclude=search_flags.BNAS_FLAGS
                                + search_flags.BARS_FLAGS)),
        ("search, --method=bnas only", search_flags.BNAS_FLAGS),
        ("search, --method=bars only", search_flags.BARS_FLAGS),
        ("data", flags.names(data_flags)))


def main(argv):
    flags.check_args(argv, output_dir="DIR")
    try:
        with flags.usage_errors():
            config = search_flags.search_config_from_flags()
            engine = search_flags.engine_from_flags()
            summary = runner.run_search(config.method, data_flags.data_config_from_flags(),
                                        config, FLAGS.output_dir, stop_after=FLAGS.stop_after,
                                        verbose=search_flags.PROGRESS[FLAGS.progress],
                                        engine=engine)
    except FloatingPointError as e:  # a diverged search: one line, exit status 1
        sys.exit(f"search.py: {e}")
    path = os.path.join(FLAGS.output_dir, runner.GENOTYPE_FILE)
    print(json.dumps({"genotype": path if os.path.isfile(path) else None,
                      "best_epoch": summary.get("best_epoch"),
                      "best_val_accuracy": summary.get("best_val_accuracy"),
                      "epochs_done": len(summary.get("epochs", [])),
                      **({"warning": summary["warning"]} if summary.get("warning") else {})}))


def run():
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))
