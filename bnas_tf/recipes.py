"""Training recipes: the TrainConfig, the named recipes of the papers, learning-rate
schedules (OneCycle) and optimizers.

`recipe(name, **overrides)` is the TrainConfig `bnas_tf.training.train` runs;
`make_optimizer(config, steps_per_epoch)` the legacy Keras optimizer (Larq needs the
legacy API) with the schedule of `make_schedule`. Batch size and cutout are
training-recipe values (`train` takes them from the TrainConfig, not from the DataConfig).
Weight decay is the L2 penalty of `bnas_tf.training.add_weight_decay`.
"""
from __future__ import annotations

import dataclasses
import math

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from bnas_tf import fast_binary, precision
from bnas_tf.binary import SERIAL

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "cosine_restarts", "one_cycle")
PRECISIONS = precision.PRECISIONS


@dataclasses.dataclass
class TrainConfig:
    recipe: str = "custom"
    optimizer: str = "sgd"            # 'sgd' (momentum) | 'adam'
    learning_rate: float = 0.05       # peak / initial learning rate
    min_learning_rate: float = 0.0    # floor of the schedule
    schedule: str = "cosine"          # 'constant' | 'cosine' | 'cosine_restarts' | 'one_cycle'
    warmup_fraction: float = 0.3      # one_cycle: share of steps rising min -> peak
    restart_epochs: int = 50          # cosine_restarts: epochs per cycle
    momentum: float = 0.9             # SGD momentum
    weight_decay: float = 0.0         # L2 on kernels (see training.add_weight_decay)
    label_smoothing: float = 0.0
    epochs: int = 1
    batch_size: int = 64              # global batch size (over all replicas)
    drop_path: float = 0.0            # final drop-path rate, raised linearly over epochs
    auxiliary: bool = False           # train with the auxiliary tower
    auxiliary_weight: float = 0.4
    cutout: int = 0                   # cutout length in pixels (0 = off)
    validation_freq: int = 1          # validate every N epochs (0 = never)
    seed: int = 0
    verbose: int = 1                  # Keras fit: 1 progress bar, 2 one line per epoch, 0 quiet
    keep_checkpoints: int = 3
    precision: str = "float32"        # Keras dtype policy while training (see `precision_policy`)
    jit_compile: bool = False         # XLA-compile the train/eval steps
    conv_dtype: str = "auto"          # binary convs while training (bnas_tf.fast_binary)

    def validate(self):
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                                           f"got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, "
                                         f"got {self.schedule!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.min_learning_rate <= self.learning_rate,
             f"min_learning_rate must be in [0, learning_rate={self.learning_rate}], "
             f"got {self.min_learning_rate}"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), "
                                            f"got {self.warmup_fraction}"),
            (self.restart_epochs >= 1, f"restart_epochs must be >= 1, got {self.restart_epochs}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), "
                                            f"got {self.label_smoothing}"),
            (0 <= self.drop_path < 1, f"drop_path must be in [0, 1), got {self.drop_path}"),
            (self.auxiliary_weight >= 0, f"auxiliary_weight must be >= 0, "
                                         f"got {self.auxiliary_weight}"),
            (self.cutout >= 0, f"cutout must be >= 0, got {self.cutout}"),
            (self.validation_freq >= 0, f"validation_freq must be >= 0, "
                                        f"got {self.validation_freq}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, "
                                         f"got {self.keep_checkpoints}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, "
                                           f"got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        fast_binary.resolve(self.conv_dtype, self.precision)  # refuses what it cannot honour
        return self


RECIPES = {
    # BNAS, CIFAR-10: SGD, one-cycle 5e-2 .. 4e-4 per step, 600 epochs, drop-path 0.2.
    "cifar": dict(optimizer="sgd", learning_rate=5e-2, min_learning_rate=4e-4,
                  schedule="one_cycle", momentum=0.9, weight_decay=3e-6, epochs=600,
                  batch_size=256, drop_path=0.2),
    # BNAS, ImageNet: SGD 0.1, cosine warm restarts every 50 epochs down to 1e-5.
    "imagenet": dict(optimizer="sgd", learning_rate=0.1, min_learning_rate=1e-5,
                     schedule="cosine_restarts", restart_epochs=50, momentum=0.9,
                     weight_decay=3e-5, label_smoothing=0.1, epochs=250, batch_size=256),
    # A plain Adam baseline.
    "adam_cosine": dict(optimizer="adam", learning_rate=1e-3, min_learning_rate=0.0,
                        schedule="cosine", weight_decay=0.0, epochs=100, batch_size=256),
    # BARS, CIFAR-10: Adam 2e-3 cosine to 0, cutout 16, auxiliary tower 0.4, 200 epochs.
    "bars": dict(optimizer="adam", learning_rate=2e-3, min_learning_rate=0.0,
                 schedule="cosine", weight_decay=0.0, cutout=16, auxiliary=True,
                 auxiliary_weight=0.4, epochs=200, batch_size=256),
    # BARS, ImageNet: Adam 1e-3 cosine to 0, 100 epochs, no cutout.
    "bars_imagenet": dict(optimizer="adam", learning_rate=1e-3, min_learning_rate=0.0,
                          schedule="cosine", weight_decay=0.0, epochs=100, batch_size=256),
}


def recipe(name, **overrides):
    """The TrainConfig of recipe `name` with `overrides` applied (None values ignored)."""
    if name not in RECIPES and name != "custom":
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown training option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(fields))}")
    values = dict(RECIPES.get(name, {}), recipe=name)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


# ----------------------------------------------------------------------------- schedules

@tf.keras.utils.register_keras_serializable(SERIAL)
class OneCycle(tf.keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle learning rate (Smith): cosine rise min -> max, then cosine fall to min.

    The rise takes ``warmup_fraction`` of ``total_steps``; past the end it stays at
    ``min_lr``. With warmup_fraction 0 it is a cosine decay from max_lr to min_lr.
    """

    def __init__(self, max_lr, min_lr, total_steps, warmup_fraction=0.3, name="one_cycle"):
        super().__init__()
        self.max_lr, self.min_lr = float(max_lr), float(min_lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_fraction = float(warmup_fraction)
        self.warmup_steps = int(round(self.total_steps * self.warmup_fraction))
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name):
            step = tf.cast(step, tf.float32)
            up = float(self.warmup_steps)
            down = float(max(self.total_steps - self.warmup_steps, 1))
            span = self.max_lr - self.min_lr
            rising = self.min_lr + span * 0.5 * (1.0 - tf.cos(math.pi * step / max(up, 1.0)))
            progress = tf.clip_by_value((step - up) / down, 0.0, 1.0)
            falling = self.min_lr + span * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < up, rising, falling)

    def get_config(self):
        return {"max_lr": self.max_lr, "min_lr": self.min_lr, "total_steps": self.total_steps,
                "warmup_fraction": self.warmup_fraction, "name": self.name}


# A legacy optimizer's config names its schedule by bare class name ("OneCycle"), not by
# the registered "bnas_tf>OneCycle": register that name too, so saved models load.
tf.keras.utils.get_custom_objects().setdefault("OneCycle", OneCycle)


def make_schedule(config, steps_per_epoch):
    """The per-step learning-rate schedule of `config` (a float for 'constant')."""
    steps_per_epoch = max(int(steps_per_epoch), 1)
    total = config.epochs * steps_per_epoch
    lr, floor = config.learning_rate, config.min_learning_rate
    schedules = tf.keras.optimizers.schedules
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        return schedules.CosineDecay(lr, total, alpha=floor / lr)
    if config.schedule == "cosine_restarts":
        return schedules.CosineDecayRestarts(lr, config.restart_epochs * steps_per_epoch,
                                             t_mul=1.0, m_mul=1.0, alpha=floor / lr)
    if config.schedule == "one_cycle":
        return OneCycle(lr, floor, total, config.warmup_fraction)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_optimizer(config, steps_per_epoch):
    """A tf.keras.optimizers.legacy optimizer (Larq needs the legacy API)."""
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return tf.keras.optimizers.legacy.SGD(schedule, momentum=config.momentum)
    if config.optimizer == "adam":
        return tf.keras.optimizers.legacy.Adam(schedule)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")

