"""Speed, memory and size figures: search step, first step, train step, input
pipeline, peak RSS, LCE export sizes and latency; compared with the PyTorch reference.
Runs from a checkout (the harness, benchmarks/, is not installed with the package).

  python tools/benchmark.py --output=bench.json            # the full run (~15 min)
  python tools/benchmark.py --quick --output=/tmp/b.json   # smoke run, small shapes
  python tools/benchmark.py --only=search,train --output=b.json
  python tools/benchmark.py --only=train --reference --output=b.json   # + the PyTorch ratios
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnas_tf  # noqa: E402,F401  (before TensorFlow)
from absl import app  # noqa: E402

from benchmarks import harness, table  # noqa: E402
from benchmarks import reference  # noqa: E402
from bnas_tf import throughput  # noqa: E402
import flags  # noqa: E402
from flags import benchmark as benchmark_flags  # noqa: E402

FLAGS = benchmark_flags.FLAGS

OWN = (benchmark_flags,)  # whose help a shared flag shows
HELP = (("benchmark", flags.names(benchmark_flags)),)


def main(argv):
    flags.check_args(argv, output="bench.json")
    with flags.usage_errors():
        config = benchmark_flags.config_from_flags().validate()
        if os.path.isdir(FLAGS.output):
            raise ValueError(f"--output {FLAGS.output} is a directory; give a .json file path")
        parent = os.path.dirname(os.path.abspath(FLAGS.output))
        while not os.path.exists(parent):  # checked now, not after the measurements
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ValueError(f"--output {FLAGS.output}: {parent} is a file, not a directory")
        if FLAGS.reference_rounds and not FLAGS.reference:
            raise ValueError("--reference_rounds needs --reference")
        if FLAGS.reference:
            print("[reference] setting up or finding the PyTorch venv ...", flush=True)
            bench_dir, python = reference.prepare()
    result = harness.run(config, progress=lambda line: print(line, flush=True))
    if FLAGS.reference:
        rounds = FLAGS.reference_rounds or (1 if FLAGS.quick else 3)
        result["reference_comparison"] = reference.compare(
            config, python, bench_dir, rounds, progress=lambda line: print(line, flush=True))
        result["reference_ratios"] = {k: v["ratio"] for k, v in
                                      result["reference_comparison"]["ratios"].items()}
    if FLAGS.imagenet_input or (FLAGS.imagenet_input is None and not FLAGS.only):
        make = throughput.quick_config if FLAGS.quick else throughput.ThroughputConfig
        result["imagenet_input"] = throughput.measure(make(data_dir=FLAGS.imagenet_data_dir),
                                                      progress=lambda line: print(line))
        print(throughput.format_report(result["imagenet_input"]))
    harness.write_json(FLAGS.output, result)
    print(table.format_table(result))
    if FLAGS.reference:
        print(reference.format_ratios(result["reference_comparison"]))
    print(f"wrote {FLAGS.output}")


def run():
    flags.run(main, __doc__, HELP, own=OWN)


if __name__ == "__main__":
    flags.run(main, __doc__, HELP, own=OWN)
