"""What the benchmark measures (`BenchConfig`), the PyTorch reference's figures and
the acceptance targets (docs/benchmark.md); the bottom of benchmarks/: every other
module reads it, it reads none of them."""
from __future__ import annotations

import dataclasses
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PyTorch reference and earlier measurements on this kind of machine (2 cores),
# from ../shared/REFERENCE.md.
REFERENCE = {
    "search_step_s": 9.7,         # PyTorch BNAS supernet, 8 x 16, batch 64, 2 threads
    "first_step_s": 17.6,         # PyTorch, process start to the end of the first step
    "train_step_s": 4.99,         # PyTorch BNAS-A (20 x 36), batch 64
    "keras_quick_search_step_s": 4.75,   # a quick tf.keras + larq supernet
    "keras_quick_first_step_s": 109.0,
    "keras_quick_xla_search_step_s": 10.4,
}
# name -> (comparison, bound): what the benchmark reports as met / not met.
TARGETS = {
    "search_step_s": ("<=", 3.2),        # >= 3x the reference throughput
    "first_step_s": ("<=", 20.0),
    "train_step_s": ("<=", 2.5),         # >= 2x the reference
    "peak_rss_mb": ("<", 4096.0),
    "size_ratio_binres": (">=", 20.0),   # binary .tflite <= 1/20 of its float twin
    "all_binary_convs_converted": ("==", True),
    "bars_first_step_s": ("<=", 20.0),         # BARS: benchmarks/bars.py (issue 17)
    "bars_peak_rss_mb": ("<=", 3000.0),
    "bars_ms_per_gmac_vs_bnas": ("<=", 1.0),   # BARS ms/GMAC <= the BNAS supernet's
}
PARTS = ("search", "bars", "train", "input", "export")
KEYS = ("search_step_s", "bars_search_step_s", "first_step_s", "peak_rss_mb", "train_step_s",
        "train_step_bars_s", "train_step_xnor_resnet18_s",
        "input_images_per_s", "input_first_pass_images_per_s", "train_images_per_s",
        "input_ratio", "tflite_binary_bytes", "tflite_float_bytes", "size_ratio",
        "bconv_ops", "binary_convs", "live_binary_convs", "latency_binary_ms",
        "latency_float_ms", "tflite_binary_bytes_binres", "tflite_float_bytes_binres",
        "size_ratio_binres", "bconv_ops_binres", "binary_convs_binres",
        "latency_binary_binres_ms", "bars_first_step_s", "bars_peak_rss_mb",
        "bars_gmac_per_step", "bars_ms_per_gmac", "gmac_per_step", "ms_per_gmac",
        "bars_ms_per_gmac_vs_bnas")  # the BARS ones: benchmarks/bars.py


@dataclasses.dataclass
class BenchConfig:
    """What to measure, at which sizes (defaults: the reference's shapes)."""

    parts: tuple = PARTS
    repeats: int = 5                 # timed repetitions (median reported)
    search_processes: int = 3        # fresh processes of the BNAS search figures (medians)
    warmup: int = 1                  # untimed repetitions after the first (tracing) call
    batch_size: int = 64
    image_size: int = 32
    search_cells: int = 8
    search_channels: int = 16
    conv_dtype: str = "auto"         # BNAS supernet binary convs: auto | float32 | bfloat16
    compare_float32: bool = True     # also time the float32 supernet when auto picks bf16
    bars_extra: dict = dataclasses.field(default_factory=dict)  # overrides of BARS defaults
    train_preset: str = "bnas-a"     # final network of the train-step / export figures
    train_genotype: str | None = None  # or a genotype (with train_cells/train_channels)
    train_cells: int | None = None
    train_channels: int | None = None
    data_dir: str | None = None      # image folder for the input pipeline
    input_max_examples: int | None = None
    input_batches: int = 100         # batches timed in the steady state
    latency_runs: int = 20
    export_samples: int = 8
    intra_op_threads: int = 0        # 0 = TensorFlow's default
    inter_op_threads: int = 0
    quick: bool = False

    def validate(self):
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown benchmark part(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(PARTS)}")
        for name in ("repeats", "search_processes", "batch_size", "image_size",
                     "search_channels", "input_batches", "latency_runs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.search_cells < 2:
            raise ValueError(f"search_cells must be >= 2, got {self.search_cells}")
        if "input" in self.parts:
            if not self.data_dir:
                raise ValueError("the input-pipeline benchmark needs an image folder "
                                 "(--bench_data_dir)")
            if not os.path.isdir(self.data_dir):
                raise FileNotFoundError(f"image folder not found: {self.data_dir}")
        return self


def quick_config(**overrides) -> BenchConfig:
    """Small shapes and few repetitions: a smoke run of every measurement."""
    values = dict(repeats=2, search_processes=1, warmup=0, batch_size=8, image_size=16,
                  search_cells=3, search_channels=4,
                  bars_extra={"base_channels": [4, 8, 16], "max_depth": 1,
                              "width_choices": [0.5, 1.0]},
                  train_preset=None, train_genotype="bnas_imagenet", train_cells=3,
                  train_channels=8, input_max_examples=256, input_batches=8,
                  latency_runs=2, export_samples=2, quick=True)
    values.update(overrides)
    return BenchConfig(**values)


def final_spec(config, residual=None):
    from bnas_tf.models import presets
    overrides = {"residual": residual} if residual else {}
    return presets.resolve(preset=config.train_preset, genotype=config.train_genotype,
                           cells=config.train_cells, channels=config.train_channels,
                           **overrides)
