"""Benchmark flags, defined once: --output, --quick, --only, sizes, thread settings,
--reference."""
from absl import flags as absl_flags

from flags import define

from benchmarks import config as benchmark
from bnas_tf.search import engine

FLAGS = absl_flags.FLAGS
_D = benchmark.BenchConfig()
_DEFINITIONS = (
    (absl_flags.DEFINE_string, "output", None, {},
     "Where to write the JSON results (atomically)."),
    (absl_flags.DEFINE_bool, "quick", False, {},
     "Small shapes and few repetitions: a smoke run of every measurement."),
    (absl_flags.DEFINE_list, "only", [], {},
     f"Run only these parts (comma list of {', '.join(benchmark.PARTS)}); default all."),
    (absl_flags.DEFINE_integer, "repeats", None, dict(lower_bound=1),
     f"Timed repetitions per figure, median reported (default {_D.repeats}; quick 2)."),
    (absl_flags.DEFINE_integer, "search_processes", None, dict(lower_bound=1),
     f"Fresh processes timing the BNAS search (first step, step, peak RSS): medians "
     f"over them (default {_D.search_processes}; quick 1)."),
    (absl_flags.DEFINE_string, "bench_data_dir", "../shared/datasets/cifar10/train", {},
     "Image folder (<class>/*.jpg) for the input-pipeline figures."),
    (absl_flags.DEFINE_integer, "intra_op_threads", 0, dict(lower_bound=0),
     "TensorFlow intra-op threads (0 = TensorFlow's default)."),
    (absl_flags.DEFINE_integer, "inter_op_threads", 0, dict(lower_bound=0),
     "TensorFlow inter-op threads (0 = TensorFlow's default)."),
    (absl_flags.DEFINE_enum, "conv_dtype", "auto", dict(enum_values=list(engine.CONV_DTYPES)),
     "Binary convs of the BNAS supernet and of the final networks' train steps: auto "
     "(bfloat16 where the CPU has it natively), float32 or bfloat16. With auto picking "
     "bfloat16 the float32 steps (search, BNAS-A training) are timed too."),
    (absl_flags.DEFINE_bool, "reference", False, {},
     "Also time the PyTorch BNAS reference (../shared/reference-bench, or "
     "$BNAS_REFERENCE_BENCH; its venv set up or found by its setup.sh in $TORCHREF_VENV, "
     "default /tmp/torchref-venv) in fresh processes interleaved with ours, and report "
     "reference/ours ratios of the search step, first step and BNAS-A train step."),
    (absl_flags.DEFINE_integer, "reference_rounds", None, dict(lower_bound=1),
     "Interleaved rounds of --reference (reference then ours, search and train; the "
     "ratios are medians over rounds; default 3, quick 1)."),
    # defined as flags/export.py defines it (0 there skips the timing)
    (absl_flags.DEFINE_integer, "latency_runs", 0, dict(lower_bound=0),
     f"Single-image .tflite runs timed (0 = the default, {_D.latency_runs})."),
    (absl_flags.DEFINE_boolean, "imagenet_input", None, {},
     "Also time ImageNet decode + augment at 224 px against bnas-d training "
     "(bnas_tf/throughput.py; default: on unless --only is given)."),
    (absl_flags.DEFINE_string, "imagenet_data_dir", None, {},
     "TFDS data_dir with imagenet2012 prepared, for --imagenet_input (default: synthetic "
     "500x375 JPEGs)."),
)
define(_DEFINITIONS)


def config_from_flags(**overrides) -> benchmark.BenchConfig:
    """BenchConfig (quick or full) with the given flags applied, then `overrides`."""
    values = {"data_dir": FLAGS.bench_data_dir,
              "intra_op_threads": FLAGS.intra_op_threads,
              "inter_op_threads": FLAGS.inter_op_threads,
              "conv_dtype": FLAGS.conv_dtype}
    if FLAGS.only:
        values["parts"] = tuple(p.strip() for p in FLAGS.only if p.strip())
    for name in ("repeats", "search_processes", "latency_runs"):
        if FLAGS[name].value:
            values[name] = FLAGS[name].value
    values.update(overrides)
    if FLAGS.quick:
        return benchmark.quick_config(**values)
    return benchmark.BenchConfig(**values)
