"""Sizing and comparison flags, defined once: the budget and search ranges of
tools/size.py, the model list of tools/compare.py. Data, model and training flags
come from flags/data.py, flags/model.py and flags/train.py."""
from absl import flags as absl_flags

from flags import define

from bnas_tf import size_space, sizing

FLAGS = absl_flags.FLAGS
_DEFINITIONS = (
    # tools/size.py
    (absl_flags.DEFINE_float, "flops_budget", None, dict(lower_bound=0.0),
     "Budget in Equivalent OPs (FLOPs + BiOPs / 64) the sized network must stay within."),
    (absl_flags.DEFINE_integer, "min_cells", 5, dict(lower_bound=2), "Fewest cells searched."),
    (absl_flags.DEFINE_integer, "max_cells", 20, dict(lower_bound=2), "Most cells searched."),
    (absl_flags.DEFINE_integer, "min_channels", 8, dict(lower_bound=1),
     "Fewest initial channels searched."),
    (absl_flags.DEFINE_integer, "max_channels", 64, dict(lower_bound=1),
     "Most initial channels searched."),
    (absl_flags.DEFINE_integer, "channels_step", 4, dict(lower_bound=1),
     "Step of the channel grid."),
    (absl_flags.DEFINE_integer, "max_trials", 10, dict(lower_bound=1),
     "Sizing trials in all (a rerun of the same project continues up to this many)."),
    (absl_flags.DEFINE_integer, "epochs_per_trial", 1, dict(lower_bound=1),
     "Training epochs of each sizing trial (the recipe's --epochs is not used)."),
    (absl_flags.DEFINE_enum, "oracle", "random", dict(enum_values=list(size_space.ORACLES)),
     "keras-tuner oracle: random (RandomSearchOracle) or bayesian "
     "(BayesianOptimizationOracle, needs scikit-learn)."),
    (absl_flags.DEFINE_string, "directory", "sizing", {},
     "keras-tuner working directory; rerunning with the same one resumes."),
    (absl_flags.DEFINE_string, "project_name", "sizing", {},
     "keras-tuner project name inside --directory."),
    (absl_flags.DEFINE_string, "output", None, {},
     "Where to write the best size as a preset JSON (tools/train.py --preset=FILE)."),
    (absl_flags.DEFINE_boolean, "tune_gamma", False, {},
     "Also tune gamma (BNAS Eq. 4): re-derive the cell from the search's alphas."),
    (absl_flags.DEFINE_list, "gammas", [str(g) for g in sizing.DEFAULT_GAMMAS], {},
     "Gamma values tried with --tune_gamma."),
    (absl_flags.DEFINE_string, "search_dir", None, {},
     "Search output directory (tools/search.py) whose checkpoint holds the alphas; "
     "--genotype=DIR sets it too."),
    # tools/compare.py
    (absl_flags.DEFINE_list, "models", None, {},
     "Comma-separated presets (or preset JSON files) to train and compare."),
)
define(_DEFINITIONS)


def sizing_config_from_flags(**overrides) -> size_space.SizingConfig:
    """SizingConfig from the sizing flags (and --seed), then `overrides`."""
    if FLAGS.flops_budget is None:
        raise ValueError("give the budget: --flops_budget=EQUIVALENT_OPS (e.g. 1.6e7)")
    try:
        gammas = tuple(float(g) for g in FLAGS.gammas) if FLAGS.tune_gamma else ()
    except ValueError:
        raise ValueError(f"--gammas must be numbers, got {','.join(FLAGS.gammas)}") from None
    values = dict(budget=FLAGS.flops_budget, min_cells=FLAGS.min_cells,
                  max_cells=FLAGS.max_cells, min_channels=FLAGS.min_channels,
                  max_channels=FLAGS.max_channels, channels_step=FLAGS.channels_step,
                  max_trials=FLAGS.max_trials, oracle=FLAGS.oracle, gammas=gammas,
                  seed=FLAGS.seed if "seed" in FLAGS else 0)
    values.update(overrides)
    return size_space.SizingConfig(**values)
