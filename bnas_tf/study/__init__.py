"""The evidence study: does a search beat random sampling and hand-designed backbones?

One seeded, resumable comparison (issue 18; `tools/study.py`): every *arm* (a way of
getting a binary network: a BNAS or BARS search, a random draw from the same search
space, the released BNAS-A cell, hand-designed backbones) is repeated over seeds;
each trial's final network is sized to the same equivalent OPs, trained with the
same data, recipe, epochs and batch, evaluated on a held-out test split no search
and no training reads, and exported through LCE. The report (``results.json``,
``results.md``, ``accuracy_vs_eqops.png``) puts it together.

Modules: `split` (the held-out test split), `arms` (what each arm builds),
`matching` (sizes matched on equivalent OPs), `trial` (one trial, resumable),
`report` (the report files), `run` (the study loop, progress, keras-tuner
scale-out). `StudyConfig` is everything a study depends on (saved as
``DIR/study.json``; a rerun must match it). `PROFILES` holds the named settings.
"""
from __future__ import annotations

import dataclasses

# Arm names (see bnas_tf.study.arms for what each builds).
ARMS = ("bnas", "bnas-random", "bnas-a", "bars", "bars-random", "xnor-resnet18",
        "xnor-resnet18-matched", "birealnet18-cifar", "bnas-no-zeroise", "bnas-no-skip",
        "bnas-no-div", "bnas-warmup", "bnas-pt", "bnas-no-pool")

STRATEGIES = ("default", "mirrored")  # multi_worker: scale out through keras-tuner instead


@dataclasses.dataclass
class StudyConfig:
    """Everything a study depends on (defaults: the cpu profile). Sizes in channels;
    budgets in millions of EqOPs."""

    data_dir: str | None = None        # image folder root/<class>/*.jpg (train + hold-out)
    test_dir: str | None = None        # external labelled test folder (<class>/*.jpg)
    arms: tuple = ("bnas", "bnas-random", "bnas-a", "xnor-resnet18-matched")
    seeds: int = 3
    split_seed: int = 0                # which files form the subset and the hold-out
    train_per_class: int | None = 800  # images per class searches/trainings may read
    test_per_class: int = 300          # held-out images per class (without test_dir)
    # search (BNAS supernet; the BARS settings below)
    search_examples: int | None = 4000  # class-balanced cap of the search data
    search_epochs: int = 12
    search_cells: int = 5
    search_channels: int = 8
    search_batch: int = 64
    # Adam learning rate of the alphas (BNAS and BARS; the papers' 3e-4 is for ~20k
    # alpha steps, the cpu profile makes ~370: see docs/results.md) and the BNAS
    # diversity regulariser's decay tau (paper 7.7 for 50 epochs; the cpu profile
    # keeps the paper's schedule shape over its 12 epochs: 7.7 * 12 / 50)
    search_a_lr: float = 6e-3
    search_diversity_tau: float = 1.85
    bars_base_channels: tuple = (16, 32, 64)
    bars_max_depth: int = 2
    bars_flops_budget: float = 10.0    # millions of equivalent OPs (search + random draws)
    bars_warmup_epochs: int = 3
    # final networks: BNAS-A's cell at final_cells x final_channels sets the EqOPs target
    final_cells: int = 8
    final_channels: int = 16
    recipe: str = "cifar"
    train_epochs: int = 6
    train_batch: int = 64
    export_samples: int = 32
    latency_runs: int = 20
    # every search and training of a trial runs under this tf.distribute strategy
    # ("default" | "mirrored"; per-replica BatchNorm statistics make it part of the
    # experiment, so it is saved with the rest)
    strategy: str = "default"
    # binary convs of every final network's training (bnas_tf.fast_binary): float32 =
    # Larq's own numerics on any machine; bfloat16 = the speed variant (same function,
    # products exact, results rounded to 8 bits; ~1.3-1.6x less CPU per step on a CPU
    # with native bfloat16, emulated and slower on others); never 'auto', which depends
    # on the CPU. The cpu profile uses bfloat16 to fit its 2.5 h (docs/results.md).
    train_conv_dtype: str = "bfloat16"

    def __post_init__(self):
        self.arms = tuple(self.arms)
        self.bars_base_channels = tuple(int(c) for c in self.bars_base_channels)

    def validate(self):
        """Raise a one-line ValueError naming the first bad setting."""
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        if not self.arms:
            raise ValueError("no arms selected (--arms)")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"an arm is given twice in --arms={','.join(self.arms)}")
        if not self.data_dir:
            raise ValueError("--data_dir=PATH (an image folder <class>/*.jpg) is required")
        for name in ("seeds", "test_per_class", "search_epochs", "search_channels",
                     "search_batch", "bars_max_depth", "final_channels", "train_epochs",
                     "train_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_per_class", "search_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("search_cells", "final_cells"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be >= 3 (two reduction cells), "
                                 f"got {getattr(self, name)}")
        for name in ("search_a_lr", "search_diversity_tau"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.bars_flops_budget > 0:
            raise ValueError(f"bars_flops_budget must be > 0, got {self.bars_flops_budget}")
        if "bnas-warmup" in self.arms and self.search_epochs < 2:
            raise ValueError(f"the bnas-warmup arm warms up for half the search epochs: "
                             f"search_epochs={self.search_epochs} leaves none (it would be "
                             f"the bnas arm); use --search_epochs >= 2 or drop the arm")
        if self.strategy == "multi_worker":
            raise ValueError("the study does not run under --strategy=multi_worker: its "
                             "trials are independent, so several machines share a study "
                             "through keras-tuner's chief/worker mode (docs/results.md, "
                             "scale-out); use --strategy=mirrored for the devices of one")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        if self.train_conv_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"train_conv_dtype must be float32 or bfloat16 (a study records "
                             f"what its trainings computed), got {self.train_conv_dtype!r}")
        if self.export_samples < 0 or self.latency_runs < 0:
            raise ValueError("export_samples and latency_runs must be >= 0")
        return self

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["arms"] = list(self.arms)
        out["bars_base_channels"] = list(self.bars_base_channels)
        return out


FIELDS = tuple(f.name for f in dataclasses.fields(StudyConfig))
# What a study.json written before a setting existed ran with (it resumes as such).
LEGACY = {"strategy": "default", "search_a_lr": 3e-4, "search_diversity_tau": 7.7,
          "train_conv_dtype": "float32"}

PROFILES = {
    # A few minutes on 2 cores: a handful of images, tiny networks, one epoch, one seed.
    "smoke": dict(arms=("bnas", "bnas-random", "bnas-a", "xnor-resnet18-matched"), seeds=1,
                  train_per_class=8, test_per_class=3, search_epochs=1, search_cells=3,
                  search_channels=4, search_batch=8, search_a_lr=6e-3,
                  search_diversity_tau=1.85, bars_base_channels=(8, 16, 16),
                  bars_max_depth=1, bars_flops_budget=2.0, bars_warmup_epochs=0,
                  final_cells=3, final_channels=8, train_epochs=1, train_batch=8,
                  train_conv_dtype="float32", export_samples=4, latency_runs=2),
    # The whole study within ~2.5 h on 2 CPU cores (reasons and measured costs in
    # docs/results.md); the diagnostic arms (bnas-pt, bnas-warmup, bnas-no-pool, ~0.3 CPU-h
    # each per seed) are added with --arms and lengthen it.
    "cpu": dict(arms=("bnas", "bnas-random", "bnas-a", "xnor-resnet18-matched"),
                seeds=3,
                train_per_class=800, test_per_class=300, search_examples=4000,
                search_epochs=12, search_cells=5, search_channels=8, search_batch=64,
                search_a_lr=6e-3, search_diversity_tau=1.85, bars_base_channels=(16, 32, 64), bars_max_depth=2, bars_flops_budget=10.0,
                bars_warmup_epochs=3, final_cells=8, final_channels=16, train_epochs=6,
                train_batch=64, train_conv_dtype="bfloat16", export_samples=32,
                latency_runs=20),
    # The papers' settings, for GPU runs (not run on CPU): BNAS search 50 epochs of an
    # 8-cell 16-channel supernet at batch 64; BNAS-A's size (20 cells x 36 channels)
    # trained 600 epochs with the cifar recipe at batch 256; all of CIFAR-10's folder.
    "paper": dict(arms=("bnas", "bnas-random", "bnas-a", "bars", "bars-random",
                        "xnor-resnet18", "xnor-resnet18-matched", "birealnet18-cifar"),
                  seeds=5, train_per_class=None, test_per_class=1000, search_examples=None,
                  search_epochs=50, search_cells=8, search_channels=16, search_batch=64,
                  search_a_lr=3e-4, search_diversity_tau=7.7, bars_base_channels=(48, 96, 192), bars_max_depth=3,
                  bars_flops_budget=18.37, bars_warmup_epochs=5, final_cells=20,
                  final_channels=36, train_epochs=600, train_batch=256,
                  train_conv_dtype="float32", export_samples=64,
                  latency_runs=50),
}


def config_for(profile, **overrides):
    """The StudyConfig of `profile` with `overrides` (None values ignored), validated."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown study setting(s) {', '.join(unknown)}")
    values = dict(PROFILES[profile])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig(**values).validate()
