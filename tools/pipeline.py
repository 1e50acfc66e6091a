"""The main job: a search, the derived network trained briefly, and its binary .tflite.

  python tools/pipeline.py --dataset=folder --data_dir=../shared/datasets/cifar10/train \\
      --max_examples=512 --search_epochs=2 --train_epochs=2 --cells=5 --channels=8 \\
      --batch_size=32 --output_dir=runs/demo

Everything lands in --output_dir (search/, train/, model.tflite, pipeline.json);
rerunning the same command continues an interrupted run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import pipeline  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import pipeline as pipeline_flags  # noqa: E402
from flags import search as search_flags  # noqa: E402
from flags import train as train_flags  # noqa: E402

FLAGS = pipeline_flags.FLAGS
GROUPS = (data_flags, search_flags, train_flags, pipeline_flags)
HINTS = {"epochs": "set --search_epochs and --train_epochs",
         "stop_after": "rerun the same command to continue an interrupted pipeline",
         "model_dir": "the trained model is OUTPUT_DIR/train",
         "split": "the trained model is scored on the test split"}

# this tool's wording of shared flags whose module help does not fit it (flags.help_text)
OWN_HELP = {
    "output_dir": "Pipeline directory: search/ (the search: genotype.json, ckpt/, logs/), "
                  "train/ (the trained model directory), model.tflite (the binary export) and "
                  "pipeline.json (a summary of the three stages). Rerunning the same command "
                  "resumes.",
    "strategy": "Distribution of the search and the training: default (one device) or "
                "mirrored (all local GPUs / logical CPUs). multi_worker is refused: run "
                "tools/search.py and tools/train.py with it.",
    "keep_checkpoints": "How many epoch checkpoints of the training to keep in "
                        "OUTPUT_DIR/train/ckpt.",
}
OWN = (OWN_HELP, pipeline_flags, data_flags, search_flags, train_flags)  # whose help shows
HELP = (("pipeline", flags.names(pipeline_flags) + ("output_dir", "progress")),
        ("data", flags.names(data_flags)),
        ("search", flags.names(search_flags, exclude=search_flags.BNAS_FLAGS
                               + search_flags.BARS_FLAGS
                               + ("epochs", "stop_after", "output_dir", "progress"))),
        ("search, --method=bnas only", search_flags.BNAS_FLAGS),
        ("search, --method=bars only", search_flags.BARS_FLAGS),
        ("train (recipe; --train_epochs sets the epochs)",
         ("recipe",) + tuple(n for n in train_flags.RECIPE_FLAGS if n != "epochs")))


def main(argv):
    flags.check_args(argv, output_dir="DIR")
    applies.refuse_unused("tools/pipeline.py", GROUPS, applies.names(*GROUPS) - set(HINTS),
                          HINTS)
    applies.refuse_without(FLAGS.method == "bnas", ["train_cells", "train_channels"],
                           f"a {FLAGS.method} network's size comes from its searched genotype")
    with flags.usage_errors():
        search_config = search_flags.search_config_from_flags(epochs=FLAGS.search_epochs)
        train_config = train_flags.train_config_from_flags(epochs=FLAGS.train_epochs)
        sources = {"cells": "--train_cells" if FLAGS.train_cells else
                   "the search's --cells" if applies.given("cells") else "the search's default",
                   "channels": "--train_channels" if FLAGS.train_channels else
                   "the search's --channels" if applies.given("channels")
                   else "the search's default"}
        summary = pipeline.run(data_flags.data_config_from_flags(), search_config, train_config,
                               FLAGS.output_dir, cells=FLAGS.train_cells,
                               channels=FLAGS.train_channels,
                               export_samples=FLAGS.export_samples, sources=sources,
                               verbose=search_flags.PROGRESS[FLAGS.progress])
    print(pipeline.format_summary(summary))


def run():
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN,
              saved=lambda: flags.saved_checkpoints(FLAGS.output_dir))
