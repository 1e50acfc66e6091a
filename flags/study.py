"""Flags of the evidence study (tools/study.py): a profile, then per-setting overrides.

Every `bnas_tf.study.StudyConfig` setting has a flag of the same name; a flag given
on the command line overrides the profile's value (the tool prints each override).
"""
from absl import flags as absl_flags

from flags import define

from bnas_tf import distribute, fast_binary, recipes, study

FLAGS = absl_flags.FLAGS
_INT = ("seeds", "split_seed", "train_per_class", "test_per_class", "search_examples",
        "search_epochs", "search_cells", "search_channels", "search_batch", "bars_max_depth",
        "bars_warmup_epochs", "final_cells", "final_channels", "train_epochs", "train_batch",
        "export_samples", "latency_runs")
_HELP = {
    "seeds": "Repetitions of every arm (seeds 0..N-1).",
    "split_seed": "Seed of the per-class draw of the pool and the held-out test images.",
    "train_per_class": "Images per class searches and trainings may read (the pool).",
    "test_per_class": "Held-out test images per class (ignored with --test_dir).",
    "search_examples": "Class-balanced cap on the search data (search halves of the pool).",
    "search_epochs": "Search epochs (BNAS and BARS).",
    "search_cells": "Cells of the BNAS supernet.",
    "search_channels": "Channels of the BNAS supernet's first cell.",
    "search_batch": "Search batch size.",
    "bars_max_depth": "BARS: maximum cells per stage (search and random draws).",
    "bars_warmup_epochs": "BARS: weight-only epochs before the alphas are updated.",
    "final_cells": "Cells of every final BNAS-cell network; BNAS-A's cell at "
                   "final_cells x final_channels sets the EqOPs target.",
    "final_channels": "Channels of the BNAS-A reference network (EqOPs target).",
    "train_epochs": "Training epochs of every final network.",
    "train_batch": "Training batch size of every final network.",
    "export_samples": "Held-out images on which the .tflite must agree with Keras.",
    "latency_runs": "Single-image LCE latency runs (median reported).",
}
# flags other groups define too, defined identically (applied only when given)
_SHARED = {"latency_runs": (0, dict(lower_bound=0)),  # flags/export.py
           "search_epochs": (2, dict(lower_bound=1)),  # flags/pipeline.py
           "train_epochs": (2, dict(lower_bound=1)),
           "export_samples": (32, dict(lower_bound=0))}


def _profiles_text(name):
    """Help of a flag shared with another tool, whose shown default is that tool's."""
    values = ", ".join(f"{p} {study.PROFILES[p].get(name, getattr(study.StudyConfig, name))}"
                       for p in study.PROFILES)
    return (f" Not given: the profile's value ({values}); the default shown is another "
            "tool's (one flag, defined once).")


_DEFINITIONS = (
    (absl_flags.DEFINE_enum, "profile", "cpu", dict(enum_values=list(study.PROFILES)),
     "Study settings: smoke (minutes), cpu (~2.5 h on 2 cores), paper (GPU; "
     "see docs/results.md)."),
    (absl_flags.DEFINE_string, "output_dir", None, {},
     "Study directory (rerun the same command to resume; shared by scale-out workers)."),
    (absl_flags.DEFINE_string, "data_dir", None, {},
     "Image folder root/<class>/*.jpg the study splits into pool and held-out test."),
    (absl_flags.DEFINE_string, "test_dir", None, {},
     "External labelled test folder (<class>/*.jpg) instead of the held-out split."),
    (absl_flags.DEFINE_list, "arms", None, {},
     f"Arms (comma-separated; default: the profile's): {', '.join(study.ARMS)}."),
    (absl_flags.DEFINE_float, "bars_flops_budget", None, {},
     "BARS: equivalent-OPs budget in millions (search and random draws)."),
    (absl_flags.DEFINE_float, "search_a_lr", None, {},
     "Adam learning rate of the alphas of every search (the papers': 3e-4)."),
    (absl_flags.DEFINE_float, "search_diversity_tau", None, {},
     "BNAS: decay tau of the diversity regulariser, exp(-epoch / tau) (paper: 7.7 "
     "over 50 epochs)."),
    (absl_flags.DEFINE_list, "bars_base_channels", None, {},
     "BARS: channels of each stage at width 1.0 (comma-separated)."),
    # defined as flags/train.py and flags/search.py define it (one flag, one definition)
    (absl_flags.DEFINE_enum, "strategy", "default", dict(enum_values=list(distribute.STRATEGIES)),
     "Distribution of every search and training of a trial: default (one device), "
     "mirrored (all local GPUs / logical CPUs). multi_worker is refused: several machines "
     "share a study through keras-tuner's chief/worker mode."),
    # defined as flags/train.py defines it (one flag, one definition); applied only when given
    (absl_flags.DEFINE_enum, "train_conv_dtype", "auto",
     dict(enum_values=list(fast_binary.CONV_DTYPES)),
     "Binary convs of every final network's training. Not given: the profile's (cpu: "
     "bfloat16, the speed variant, docs/training.md, to fit its 2.5 h; smoke, paper: "
     "float32, Larq's numerics on any CPU; the 'auto' shown as default is the training "
     "tool's). auto: resolved once, here, to what this machine would run (printed), and "
     "that is what the study records."),
    (absl_flags.DEFINE_enum, "recipe", "cifar", dict(enum_values=sorted(recipes.RECIPES)),
     "Training recipe of every final network (default: the profile's)."),
    *((absl_flags.DEFINE_integer, name, *_SHARED.get(name, (None, {})),
       _HELP[name] + (_profiles_text(name) if name in _SHARED else ""))
      for name in _INT),
)
define(_DEFINITIONS)

OVERRIDES = ("data_dir", "test_dir", "arms", "bars_flops_budget", "bars_base_channels",
             "recipe", "strategy", "search_a_lr", "search_diversity_tau",
             "train_conv_dtype") + _INT


def study_config_from_flags(log=print):
    """StudyConfig of --profile with every flag given on the command line applied
    (each override printed)."""
    overrides = {}
    for name in OVERRIDES:
        if FLAGS[name].present or (name == "data_dir" and FLAGS[name].value):
            value = FLAGS[name].value
            if name == "bars_base_channels":
                try:
                    value = [int(v) for v in value]
                except ValueError:
                    raise ValueError(f"--bars_base_channels must be integers, "
                                     f"got {','.join(value)}") from None
            if name == "train_conv_dtype" and value == "auto":
                value = fast_binary.resolve(value)  # a study records what it computed
                log(f"--train_conv_dtype=auto resolves to {value} on this machine")
            overrides[name] = value
    profile = dict(study.PROFILES[FLAGS.profile])
    for name, value in overrides.items():
        if name in profile and _shown(profile[name]) != _shown(value):
            log(f"--{name}={_shown(value)} overrides profile {FLAGS.profile}'s "
                f"{_shown(profile[name])}")
    return study.config_for(FLAGS.profile, **overrides)


def _shown(value):
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
