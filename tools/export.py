"""Export a trained model directory to a binary .tflite (Larq Compute Engine) and verify it.

  python tools/export.py --model_dir=runs/bnas_a --output=bnas_a.tflite \\
      [--float_twin=bnas_a_float.tflite] [--samples=32] [--min_agreement=0.9] \\
      [--dataset=folder --data_dir=PATH --split=test] [--latency_runs=20]
Checks that every binary conv became LceBconv2d and that the .tflite agrees with Keras
on sample images (noise, or real images when --dataset/--data_dir are given); the file
is written only when the checks pass. Prints the op counts and the agreement.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from bnas_tf import export, model_dir  # noqa: E402
import flags  # noqa: E402
from flags import applies  # noqa: E402
from flags import data as data_flags  # noqa: E402
from flags import export as export_flags  # noqa: E402

FLAGS = export_flags.FLAGS
GROUPS = (data_flags, export_flags)
HINTS = {"batch_size": "the sample images are taken in one batch of --samples",
         "image_size": "sample images are resized to the model's own size",
         "cutout": "sample images are not augmented",
         "data_service": "sample images are read in this process (only training and search "
                         "use the tf.data service)"}
# Flags that choose or check the sample images: they need --samples > 0, and the data
# ones real images (--dataset or --data_dir)
SAMPLE_DATA = ("dataset", "data_dir", "split", "max_examples", "seed", "validation_fraction",
               "download")


def _refuse_unused():
    applies.refuse_unused("tools/export.py", GROUPS, applies.names(*GROUPS) - set(HINTS), HINTS)
    applies.refuse_without(FLAGS.samples > 0, SAMPLE_DATA + ("min_agreement",),
                           "--samples=0 checks no sample images")
    applies.refuse_without(applies.given("dataset") or applies.given("data_dir"),
                           SAMPLE_DATA[2:], "the sample images are noise unless --dataset or "
                           "--data_dir gives real ones")


def _sample_images():
    if not (FLAGS["dataset"].present or FLAGS["data_dir"].present) or not FLAGS.samples:
        return None
    image_size = model_dir.read_spec(FLAGS.model_dir)[2]
    return export.data_samples(data_flags.data_config_from_flags(), FLAGS.split, FLAGS.samples,
                               image_size)


def _export(model, output, images, converter):
    return export.export(model, output, samples=FLAGS.samples, images=images,
                         min_agreement=FLAGS.min_agreement, converter=converter,
                         num_threads=FLAGS.num_threads, latency_runs=FLAGS.latency_runs,
                         verbose=1)

OWN = (export_flags, data_flags)  # whose help a shared flag shows
HELP = (("export", flags.names(export_flags)),
        ("data (real sample images; default: noise)",
         tuple(n for n in flags.names(data_flags) if n not in HINTS)))


def main(argv):
    flags.check_args(argv, model_dir="DIR", output="FILE.tflite")
    _refuse_unused()
    try:
        images = _sample_images()
        report = _export(FLAGS.model_dir, FLAGS.output, images, "lce")
        print(export.format_op_counts(report.op_counts))
        print(f"binary convs: {report.binary_convs} in Keras ({report.live_binary_convs} used) "
              f"-> {report.bconv_ops} LceBconv2d; float convs: {report.float_conv_ops}")
        print(report.summary())
        if FLAGS.float_twin:
            twin = _export(export.float_twin(FLAGS.model_dir), FLAGS.float_twin, images, "tflite")
            print(twin.summary())
            print(f"size ratio float/binary: {twin.bytes / report.bytes:.2f}x")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"export failed: {e}")


def run():
    flags.run(main, __doc__, HELP, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN)
