"""Search flags, generated once from the typed settings of `bnas_tf.search`: one flag
per `SearchConfig` field, per `BnasSettings` / `BarsSettings` field and per engine knob,
each mapped onto its setting in one table (`FIELDS`).

Every setting flag defaults to None ("the method's default", shown in its help); a
flag given on the command line that the chosen --method does not read is refused
with one line naming it. Data flags (--dataset, --data_dir, --batch_size, --seed, ...)
come from flags/data.py.
"""
import dataclasses

from absl import flags as absl_flags

from flags import define

from bnas_tf import binary, distribute, genotypes, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common
from bnas_tf.search import SETTINGS, SearchConfig, engine, parse_ops
from bnas_tf.search.bnas import derive

FLAGS = absl_flags.FLAGS
PROGRESS = {"bar": 1, "epoch": 2, "none": 0}

# flag help of each setting (its default is added from the dataclass)
HELP = {
    "epochs": "Search epochs.",
    "ops": "Op list: comma-separated names; 'bnas' = the BNAS set, 'sep' = the binary "
           f"separable convs, '-name' removes one. Known ops: {', '.join(ops.OPS)}.",
    "order": "1: first-order alpha gradient; 2: DARTS' unrolled second order.",
    "binarization": "Binarisation of the supernet's binary ops.",
    "w_lr": "Weight learning rate (cosine to --w_lr_min).",
    "w_lr_min": "Final weight learning rate.",
    "w_wd": "Weight decay of the weights.",
    "a_lr": "Architecture Adam learning rate.",
    "a_wd": "Weight decay of the architecture.",
    "eval_batches": "Validation batches evaluated per epoch (unset: the whole search_val "
                    "split).",
    # BNAS
    "cells": "BNAS: cells of the supernet.",
    "channels": "BNAS: channels of the first cell.",
    "cell_template": "BNAS: bnas = inter-cell skips; darts = none (the 'No Skip' ablation).",
    "diversity_lambda": "BNAS: diversity regulariser weight (0 = the 'No Div' ablation).",
    "diversity_tau": "BNAS: diversity regulariser annealing, exp(-epoch / tau).",
    "gamma": "BNAS Eq. 4: Zeroise weight divided by gamma when deriving (> 0).",
    "derive": "BNAS: bnas = Zeroise may be picked; darts = never (the 'No Zeroise' "
              "ablation).",
    "stem": "BNAS: supernet stem (auto: by image size, as the final network).",
    # BARS
    "flops_budget": "BARS: budget of the searched network in millions of equivalent OPs "
                    "(FLOPs + BiOPs/64; 0 = no budget loss).",
    "warmup_epochs": "Epochs of weight-only training before the architecture is updated "
                     "(must be < --epochs; BNAS: not in its paper, the warm-up of "
                     "P-DARTS / PC-DARTS).",
    "temperature": "BARS: initial Gumbel-softmax temperature.",
    "temperature_decay": "BARS: temperature multiplier per epoch.",
    "entropy_start": "BARS: initial weight of the architecture entropy term.",
    "entropy_step": "BARS: per-epoch increment of the entropy weight.",
    "budget_theta_above": "BARS: exponent of (FLOPs/budget) when over the budget.",
    "budget_theta_below": "BARS: exponent of (FLOPs/budget) when under the budget.",
    "num_samples": "BARS: architectures sampled when deriving.",
    "derive_batches": "BARS: validation batches each sampled architecture is scored on "
                      "when deriving; 0 = one validation pass shared out: (validation "
                      "batches) // num_samples each.",
    "base_channels": "BARS: channels of each stage at width 1.0 (comma-separated).",
    "width_choices": "BARS: width ratios to choose from (comma-separated).",
    "max_depth": "BARS: maximum optional cells per stage.",
    "downsample": "BARS: downsampling block (improved binary, plain binary, float).",
    "op_shortcut": "BARS: op-level shortcut around each binary conv.",
    # engine (engine.EngineConfig)
    "cell_implementation": "Search engine: fused (the fast grouped cell) or reference (the "
                           "specification: bnas/cell.py, bars/cell.py; slower).",
    "conv_dtype": "Search engine: dtype of the fused cell's +-1 conv products (auto: "
                  "bfloat16 on CPUs with native bfloat16, else float32; "
                  "docs/benchmark.md).",
    "recompute_stages": "Search engine, BARS' fused cell: the cells of the first N stages "
                        "recompute their forward pass in the backward pass instead of "
                        "keeping its activations (less memory, one more forward pass of "
                        "them; at the defaults N=1 measured peak RSS ~0.77x for ~1.1x "
                        "CPU per step: docs/benchmark.md).",
}
CHOICES = {"binarization": sorted(binary.SCHEMES), "cell_template": genotypes.TEMPLATES,
           "derive": derive.MODES, "stem": common.STEMS,
           "downsample": bars_models.DOWNSAMPLES, "strategy": distribute.STRATEGIES}
# bounds shared with flags/model.py and flags/size.py (a flag is defined identically)
BOUNDS = {"epochs": dict(lower_bound=1), "cells": dict(lower_bound=2),
          "channels": dict(lower_bound=1), "flops_budget": dict(lower_bound=0.0)}
COMMON = ("epochs", "ops", "order", "binarization", "w_lr", "w_lr_min", "w_wd", "a_lr",
          "a_wd", "eval_batches")
# flag name -> (owner, field): owner 'common' (SearchConfig), a method name (its
# settings), methods joined by '+' (a setting of each, e.g. warmup_epochs) or
# 'engine' (engine.EngineConfig, ENGINE_METHODS)
_SETTING_OWNERS = {}
for _method, _kind in SETTINGS.items():
    for _field in dataclasses.fields(_kind):
        _SETTING_OWNERS.setdefault(_field.name, []).append(_method)
FIELDS = {**{name: ("common", name) for name in COMMON},
          **{name: ("+".join(methods), name) for name, methods in _SETTING_OWNERS.items()},
          "cell_implementation": ("engine", "cell"), "conv_dtype": ("engine", "conv_dtype"),
          "recompute_stages": ("engine", "recompute_stages")}
ENGINE_METHODS = ("bnas", "bars")
# the flags of one method only (grouped apart in --help)
BNAS_FLAGS = tuple(n for n, (owner, _) in FIELDS.items() if owner == "bnas")
BARS_FLAGS = tuple(n for n, (owner, _) in FIELDS.items() if owner == "bars")


def _default_text(owner, field):
    if owner == "engine":
        return getattr(engine.EngineConfig(), field)
    if owner in SETTINGS:
        value = getattr(SETTINGS[owner](), field)
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
    if owner != "common":  # a setting of several methods
        values = {m: getattr(SETTINGS[m](), field) for m in owner.split("+")}
        return "; ".join(f"{m}: {v}" for m, v in values.items())
    values = {m: kind.SEARCH_DEFAULTS.get(field, getattr(SearchConfig(), field))
              for m, kind in SETTINGS.items()}
    values = {m: "the BNAS set" if v == ops.BNAS_OPS else ",".join(v) if isinstance(v, tuple)
              else v for m, v in values.items()}
    if len(set(map(str, values.values()))) == 1:
        return next(iter(values.values()))
    return "; ".join(f"{m}: {v}" for m, v in values.items())


def _row(name, owner, field):
    """(DEFINE_fn, name, None, kwargs, help) of one setting's flag."""
    if owner == "engine":
        sample = getattr(engine.EngineConfig(), field)
        choices = engine.CELLS if field == "cell" else engine.CONV_DTYPES
    else:
        kind = SearchConfig if owner == "common" else SETTINGS[owner.split("+")[0]]
        sample = {f.name: f for f in dataclasses.fields(kind)}[field].default
        choices = CHOICES.get(name)
    help_text = f"{HELP[name]} (default: {_default_text(owner, field)})"
    kwargs = dict(BOUNDS.get(name, {}))
    if owner == "engine" and isinstance(sample, int):
        return (absl_flags.DEFINE_integer, name, sample, dict(lower_bound=0),
                f"{HELP[name]} (default: {sample})")
    if owner == "engine":  # shared with flags/benchmark.py: the engine's default
        return (absl_flags.DEFINE_enum, name, sample, dict(enum_values=list(choices)),
                HELP[name])
    if choices:
        return absl_flags.DEFINE_enum, name, None, dict(enum_values=list(choices)), help_text
    if isinstance(sample, bool):
        return absl_flags.DEFINE_boolean, name, None, kwargs, help_text
    if isinstance(sample, int) or (sample is None and name == "eval_batches"):
        return absl_flags.DEFINE_integer, name, None, kwargs, help_text
    if isinstance(sample, float):
        return absl_flags.DEFINE_float, name, None, kwargs, help_text
    return absl_flags.DEFINE_string, name, None, kwargs, help_text


_DEFINITIONS = (
    (absl_flags.DEFINE_enum, "method", "bnas", dict(enum_values=list(SETTINGS)),
     "Search method: bnas (cell search, BNAS paper) or bars (BARS macro+micro search)."),
    *(_row(name, owner, field) for name, (owner, field) in FIELDS.items()),
    (absl_flags.DEFINE_integer, "stop_after", None, {},
     "Run at most this many epochs now; rerun the same command to continue."),
    (absl_flags.DEFINE_string, "output_dir", None, {},
     "Search directory (genotype.json, genotypes/, search_summary.json, ckpt/, logs/). "
     "Rerunning the same command resumes."),
    (absl_flags.DEFINE_enum, "strategy", "default",
     dict(enum_values=list(distribute.STRATEGIES)),
     "Distribution: default, mirrored (local GPUs / logical CPUs), multi_worker (TF_CONFIG)."),
    (absl_flags.DEFINE_enum, "progress", "bar", dict(enum_values=list(PROGRESS)),
     "Keras progress output: bar, one line per epoch, or none."),
)
define(_DEFINITIONS)


def _flag_value(name):
    value = FLAGS[name].value
    return parse_ops(value) if name == "ops" else value


def _given(name):
    return name in FLAGS and FLAGS[name].present


def search_config_from_flags(**overrides) -> SearchConfig:
    """SearchConfig of --method: the method's defaults (`SearchConfig.create`), then every
    flag given on the command line, then `overrides`. A given flag the method does not
    read is refused (one-line ValueError naming it)."""
    method = FLAGS.method
    values = {}
    for name, (owner, field) in FIELDS.items():
        if not _given(name) or owner == "engine":
            continue
        if owner != "common" and method not in owner.split("+"):
            raise ValueError(f"--{name} applies to --method={owner} only, not "
                             f"--method={method}")
        values[field] = _flag_value(name)
    for name in ("batch_size", "seed", "strategy"):  # flags/data.py's and the above
        if _given(name):
            values[name] = FLAGS[name].value
    values.update(overrides)
    return SearchConfig.create(method, **values).validate()


def engine_from_flags() -> engine.EngineConfig:
    """engine.EngineConfig of --cell_implementation, --conv_dtype and
    --recompute_stages."""
    values = {}
    for name, (owner, field) in FIELDS.items():
        if owner == "engine" and _given(name):
            if FLAGS.method not in ENGINE_METHODS:
                raise ValueError(f"--{name} applies to --method=bnas or bars, not "
                                 f"--method={FLAGS.method}")
            if field == "recompute_stages" and FLAGS.method != "bars":
                raise ValueError(f"--recompute_stages applies to --method=bars only, not "
                                 f"--method={FLAGS.method}")
            values[field] = FLAGS[name].value
    return engine.EngineConfig(**values).validate()
