"""Search flags, defined once: the BNAS/DARTS search settings and the BARS settings
(which reach the BARS method through ``SearchConfig.extra``).

Data flags (--dataset, --data_dir, --batch_size, --max_examples, --seed, ...) come
from flags/data.py.
"""
from absl import flags as absl_flags

from flags import define

from bnas_tf import distribute, ops
from bnas_tf.search import METHODS, SearchConfig, parse_ops
from bnas_tf.search.supernet import CONV_DTYPES

FLAGS = absl_flags.FLAGS
PROGRESS = {"bar": 1, "epoch": 2, "none": 0}
_D = SearchConfig()
_DEFINITIONS = (
    (absl_flags.DEFINE_enum, "method", "bnas", dict(enum_values=list(METHODS)),
     "Search method: bnas (cell search, BNAS paper) or bars (BARS macro+micro search)."),
    # Shared with flags/model.py and flags/train.py: no default here (None), so whichever
    # group defines them first, an unset flag means "the method's / the preset's value".
    (absl_flags.DEFINE_integer, "epochs", None, dict(lower_bound=1),
     f"Search epochs (default {_D.epochs})."),
    (absl_flags.DEFINE_integer, "cells", None, {},
     f"Cells of the supernet (>= 2; default {_D.cells})."),
    (absl_flags.DEFINE_integer, "channels", None, dict(lower_bound=1),
     f"Channels of the first cell (default {_D.channels})."),
    (absl_flags.DEFINE_string, "ops", "bnas", {},
     "Op list: comma-separated names; 'bnas' = the BNAS set, 'sep' = the binary "
     f"separable convs, '-name' removes one. Known ops: {', '.join(ops.OPS)}."),
    (absl_flags.DEFINE_enum, "cell_template", _D.cell_template, dict(enum_values=["bnas", "darts"]),
     "bnas: inter-cell skips; darts: none (the 'No Skip' ablation)."),
    (absl_flags.DEFINE_integer, "order", _D.order, {},
     "1: first-order alpha gradient; 2: DARTS' unrolled second order."),
    (absl_flags.DEFINE_float, "diversity_lambda", _D.diversity_lambda, {},
     "Diversity regulariser weight (0 = the 'No Div' ablation)."),
    (absl_flags.DEFINE_float, "diversity_tau", _D.diversity_tau, {},
     "Diversity regulariser annealing: exp(-epoch / tau)."),
    (absl_flags.DEFINE_float, "gamma", _D.gamma, {},
     "Eq. 4 transferability: Zeroise weight divided by gamma when deriving (> 0)."),
    (absl_flags.DEFINE_enum, "derive", _D.derive, dict(enum_values=["bnas", "darts"]),
     "bnas: Zeroise may be picked; darts: never (the 'No Zeroise' ablation)."),
    (absl_flags.DEFINE_enum, "binarization", None,
     dict(enum_values=["xnor", "bars", "binarynet", "float"]),
     "Binarisation of the supernet's binary ops."),
    (absl_flags.DEFINE_float, "w_lr", _D.w_lr, {}, "Weight SGD learning rate (cosine)."),
    (absl_flags.DEFINE_float, "w_lr_min", _D.w_lr_min, {}, "Final weight learning rate."),
    (absl_flags.DEFINE_float, "w_wd", _D.w_wd, {}, "Weight decay of the weights."),
    (absl_flags.DEFINE_float, "a_lr", _D.a_lr, {}, "Architecture Adam learning rate."),
    (absl_flags.DEFINE_float, "a_wd", _D.a_wd, {}, "Weight decay of the architecture."),
    (absl_flags.DEFINE_integer, "eval_batches", None, {},
     "Validation batches evaluated per epoch (default: the whole search_val split)."),
    (absl_flags.DEFINE_integer, "stop_after", None, {},
     "Run at most this many epochs now; rerun the same command to continue."),
    (absl_flags.DEFINE_string, "output_dir", None, {},
     "Search directory (genotype.json, genotypes/, search_summary.json, ckpt/, logs/). "
     "Rerunning the same command resumes."),
    (absl_flags.DEFINE_enum, "strategy", "default", dict(enum_values=list(distribute.STRATEGIES)),
     "Distribution: default, mirrored (local GPUs / logical CPUs), multi_worker (TF_CONFIG)."),
    (absl_flags.DEFINE_enum, "progress", "bar", dict(enum_values=list(PROGRESS)),
     "Keras progress output: bar, one line per epoch, or none."),
    # BARS (consumed by bnas_tf.search.bars through SearchConfig.extra).
    (absl_flags.DEFINE_float, "flops_budget", None, {},
     "BARS: FLOPs budget of the searched network (None = no budget loss)."),
    (absl_flags.DEFINE_integer, "warmup_epochs", 5, {},
     "BARS: epochs of weight-only training before the architecture is updated."),
    (absl_flags.DEFINE_float, "temperature", 1.0, {}, "BARS: initial Gumbel-softmax temperature."),
    (absl_flags.DEFINE_float, "temperature_decay", 0.9, {},
     "BARS: temperature multiplier per epoch."),
    (absl_flags.DEFINE_float, "entropy_start", -0.01, {},
     "BARS: initial weight of the architecture entropy term."),
    (absl_flags.DEFINE_float, "entropy_step", 0.001, {},
     "BARS: per-epoch increment of the entropy weight."),
    (absl_flags.DEFINE_float, "budget_theta_above", 1.0, {},
     "BARS: exponent of (FLOPs/budget) when over the budget."),
    (absl_flags.DEFINE_float, "budget_theta_below", 0.0, {},
     "BARS: exponent of (FLOPs/budget) when under the budget."),
    (absl_flags.DEFINE_integer, "num_samples", 8, {},
     "BARS: architectures sampled when deriving."),
    (absl_flags.DEFINE_integer, "derive_batches", 0, dict(lower_bound=0),
     "BARS: validation batches each sampled architecture is scored on when deriving; "
     "0 = one validation pass shared out: (validation batches) // num_samples each."),
    (absl_flags.DEFINE_string, "base_channels", "48,96,192", {},
     "BARS: channels of each stage at width 1.0 (comma-separated)."),
    (absl_flags.DEFINE_string, "width_choices", "0.25,0.5,0.75,1.0", {},
     "BARS: width ratios to choose from (comma-separated)."),
    (absl_flags.DEFINE_integer, "max_depth", 3, {}, "BARS: maximum cells per stage."),
    (absl_flags.DEFINE_enum, "downsample", "improved",
     dict(enum_values=["improved", "plain", "float"]),
     "BARS: downsampling block (improved binary, plain binary, float)."),
    (absl_flags.DEFINE_boolean, "op_shortcut", True, {},
     "BARS: op-level shortcut around each binary conv."),
    # BNAS (consumed by bnas_tf.search.supernet through SearchConfig.extra).
    (absl_flags.DEFINE_enum, "conv_dtype", None, dict(enum_values=list(CONV_DTYPES)),
     "BNAS supernet: dtype of the +-1 binary conv products (auto: bfloat16 on CPUs "
     "with native bfloat16, else float32; see docs/benchmark.md)."),
)
define(_DEFINITIONS)

BARS_FLAGS = ("flops_budget", "warmup_epochs", "temperature", "temperature_decay",
              "entropy_start", "entropy_step", "budget_theta_above", "budget_theta_below",
              "num_samples", "derive_batches", "base_channels", "width_choices", "max_depth", "downsample",
              "op_shortcut")


def _numbers(name, text, kind):
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of numbers, "
                         f"got {text!r}") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


# flag name -> SearchConfig field (flags/data.py provides batch_size and seed)
_FIELDS = {"epochs": "epochs", "cells": "cells", "channels": "channels", "ops": "ops",
           "cell_template": "cell_template", "order": "order",
           "diversity_lambda": "diversity_lambda", "diversity_tau": "diversity_tau",
           "gamma": "gamma", "derive": "derive", "binarization": "binarization",
           "w_lr": "w_lr", "w_lr_min": "w_lr_min", "w_wd": "w_wd", "a_lr": "a_lr",
           "a_wd": "a_wd", "eval_batches": "eval_batches", "strategy": "strategy",
           "batch_size": "batch_size", "seed": "seed"}


def _flag_value(name):
    value = FLAGS[name].value
    if name == "ops":
        return parse_ops(value)
    if name in ("base_channels", "width_choices"):
        return _numbers(name, value, int if name == "base_channels" else float)
    return value


def bars_extra_from_flags(present_only=False):
    """The BARS flags as the dict stored in SearchConfig.extra."""
    return {name: _flag_value(name) for name in BARS_FLAGS
            if not present_only or FLAGS[name].present}


def search_config_from_flags(**overrides) -> SearchConfig:
    """SearchConfig of --method: the method's own defaults (its optional
    ``default_config()``, e.g. BARS' Adam and op set; else SearchConfig's), then
    every flag given on the command line, then `overrides`."""
    from bnas_tf.search import runner  # imports the method lazily

    method = runner.get_method(FLAGS.method)
    make_default = getattr(method, "default_config", None)
    base = make_default() if make_default else SearchConfig(method=FLAGS.method)
    values = base.to_dict()
    values["method"] = FLAGS.method
    # Only flags given on the command line override (the defaults of the flags are
    # SearchConfig's, and a flag another group defined may carry another default).
    for flag, field in _FIELDS.items():
        if flag in FLAGS and FLAGS[flag].present:
            values[field] = _flag_value(flag)
    if FLAGS.method == "bars":
        values["extra"] = {**values.get("extra", {}),
                           **bars_extra_from_flags(present_only=bool(make_default))}
    if FLAGS.conv_dtype is not None:
        if FLAGS.method != "bnas":
            raise ValueError(f"--conv_dtype applies to --method=bnas only, "
                             f"not --method={FLAGS.method}")
        values["extra"] = {**values.get("extra", {}), "conv_dtype": FLAGS.conv_dtype}
    values.update(overrides)
    return SearchConfig(**values).validate()
