"""Training flags, defined once: --recipe and every recipe number, --output_dir,
--strategy, --precision, --jit_compile, --train_conv_dtype, --progress; --model_dir and
--split for evaluation."""
from absl import flags as absl_flags

from flags import define

from bnas_tf import distribute, fast_binary, recipes

FLAGS = absl_flags.FLAGS
PROGRESS = {"bar": 1, "epoch": 2, "none": 0}
_DEFINITIONS = (
    (absl_flags.DEFINE_enum, "recipe", "cifar", dict(enum_values=sorted(recipes.RECIPES)),
     "Training recipe: cifar (BNAS CIFAR), imagenet (BNAS ImageNet), adam_cosine, bars "
     "(BARS CIFAR), bars_imagenet. Every number below overrides it."),
    (absl_flags.DEFINE_enum, "optimizer", None, dict(enum_values=list(recipes.OPTIMIZERS)),
     "Optimizer (default: the recipe's)."),
    (absl_flags.DEFINE_enum, "schedule", None, dict(enum_values=list(recipes.SCHEDULES)),
     "Learning-rate schedule, per step (default: the recipe's)."),
    (absl_flags.DEFINE_float, "learning_rate", None, dict(lower_bound=0.0),
     "Peak / initial learning rate."),
    (absl_flags.DEFINE_float, "min_learning_rate", None, dict(lower_bound=0.0),
     "Lowest learning rate of the schedule."),
    (absl_flags.DEFINE_float, "warmup_fraction", None, dict(lower_bound=0.0, upper_bound=0.99),
     "one_cycle: fraction of the steps spent rising to the peak."),
    (absl_flags.DEFINE_integer, "restart_epochs", None, dict(lower_bound=1),
     "cosine_restarts: epochs per cosine cycle."),
    (absl_flags.DEFINE_float, "momentum", None, dict(lower_bound=0.0, upper_bound=0.999),
     "SGD momentum."),
    (absl_flags.DEFINE_float, "weight_decay", None, dict(lower_bound=0.0),
     "L2 weight decay on conv/dense kernels."),
    (absl_flags.DEFINE_float, "label_smoothing", None, dict(lower_bound=0.0, upper_bound=0.99),
     "Label smoothing of the cross-entropy."),
    (absl_flags.DEFINE_integer, "epochs", None, dict(lower_bound=1), "Training epochs."),
    (absl_flags.DEFINE_float, "auxiliary_weight", None, dict(lower_bound=0.0),
     "Weight of the auxiliary-tower loss."),
    (absl_flags.DEFINE_integer, "validation_freq", None, dict(lower_bound=0),
     "Validate every N epochs (0 = never)."),
    (absl_flags.DEFINE_integer, "keep_checkpoints", None, dict(lower_bound=1),
     "How many epoch checkpoints to keep in OUTPUT_DIR/ckpt."),
    (absl_flags.DEFINE_string, "output_dir", None, {},
     "Model directory to write (spec.json, ckpt/, logs/, weights.h5, saved_model/, "
     "metrics.json). Rerunning the same command resumes."),
    (absl_flags.DEFINE_enum, "strategy", "default", dict(enum_values=list(distribute.STRATEGIES)),
     "Distribution: default (one device), mirrored (all local GPUs / logical CPUs), "
     "multi_worker (cluster from TF_CONFIG)."),
    (absl_flags.DEFINE_enum, "precision", "float32", dict(enum_values=list(recipes.PRECISIONS)),
     "Training precision: float32, mixed_float16 (GPUs; loss scaling) or mixed_bfloat16 "
     "(TPUs, recent GPUs/CPUs). Variables, loss, BatchNorm and XNOR scales stay float32; "
     "the saved and exported model is float32."),
    (absl_flags.DEFINE_boolean, "jit_compile", False, {},
     "Compile the training and evaluation steps with XLA."),
    (absl_flags.DEFINE_enum, "train_conv_dtype", "auto",
     dict(enum_values=list(fast_binary.CONV_DTYPES)),
     "Binary convs while training (a speed variant; bnas_tf/fast_binary.py): auto "
     "(bfloat16 on CPUs with native bfloat16, float32 training only), float32 (Larq's "
     "layer as exported) or bfloat16 (+-1 operands, exact products, float32 "
     "accumulation). The saved and exported model always holds Larq's layers."),
    (absl_flags.DEFINE_enum, "progress", "bar", dict(enum_values=list(PROGRESS)),
     "Keras progress output: bar, one line per epoch, or none."),
    (absl_flags.DEFINE_string, "model_dir", None, {},
     "A trained model directory (written by tools/train.py)."),
    (absl_flags.DEFINE_enum, "split", "test", dict(
        enum_values=["train", "validation", "test", "search_train", "search_val"]),
     "Data split to evaluate on."),
)
define(_DEFINITIONS)

RECIPE_FLAGS = ("optimizer", "schedule", "learning_rate", "min_learning_rate", "warmup_fraction",
                 "restart_epochs", "momentum", "weight_decay", "label_smoothing", "epochs",
                 "auxiliary_weight", "validation_freq", "keep_checkpoints", "precision",
                 "jit_compile", "train_conv_dtype")
# flags whose TrainConfig field has another name
_FIELDS = {"train_conv_dtype": "conv_dtype"}
# flags defined elsewhere (flags/data.py, flags/model.py) that override the recipe when given
_SHARED_FLAGS = ("batch_size", "cutout", "seed", "drop_path", "auxiliary")


def train_config_from_flags(**overrides) -> recipes.TrainConfig:
    """TrainConfig of --recipe with every given flag applied, then `overrides`."""
    values = {_FIELDS.get(name, name): FLAGS[name].value for name in RECIPE_FLAGS}
    for name in _SHARED_FLAGS:
        if name in FLAGS and FLAGS[name].present:
            values[name] = FLAGS[name].value
    values["verbose"] = PROGRESS[FLAGS.progress]
    values.update(overrides)
    return recipes.recipe(FLAGS.recipe, **values)
