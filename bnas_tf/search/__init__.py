"""Differentiable architecture search: the typed settings and the two interfaces every
method shares.

The house (docs/search.md): `bilevel` (the DARTS bilevel step), `runner` (the generic
loop), `search_dir` (a search directory's layout and guard), `engine` (speed knobs,
not the paper's), and one folder per method: `bnas/` (cell search, BNAS paper) and
`bars/` (macro + micro search, BARS paper), each with a ``method.py`` implementing
`SearchMethod`.

* `SearchConfig`: what every method reads (epochs, batch, op list, optimisers, ...)
  plus ``settings``, the method's own typed settings (`BnasSettings`, `BarsSettings`);
  saved as the ``search`` part of DIR/search_config.json.
* `SearchMethod`, `Supernet`: the Protocols the runner and the bilevel step rely on.
"""
from __future__ import annotations

import dataclasses
import json
import typing

from bnas_tf import genotypes, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common
from bnas_tf.search.bnas import derive as bnas_derive

METHODS = {"bnas": "bnas_tf.search.bnas.method", "bars": "bnas_tf.search.bars.method"}


def _fail(owner, name, rule, value):
    raise ValueError(f"{owner}{name} must be {rule}, got {value!r}")


def _check_int(owner, name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(owner, name, f"an integer >= {low}", value)


def _check_choice(owner, name, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {owner}{name} {value!r}; choose one of {', '.join(choices)}")


def _numbers(value, kind, owner, name):
    """A tuple of numbers from a sequence or a comma-separated string."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        out = tuple(kind(float(v)) if kind is int else kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}{name} must be a comma-separated list of numbers, "
                         f"got {value!r}") from None
    if kind is int and any(float(v) != int(float(v)) for v in value):
        _fail(owner, name, "integers", list(value))
    return out


def _check_warmup(method, warmup_epochs, epochs):
    if warmup_epochs and warmup_epochs >= epochs:
        raise ValueError(f"{method} warmup_epochs={warmup_epochs} >= epochs={epochs}: "
                         "the search would never update an architecture parameter; "
                         "lower --warmup_epochs or raise --epochs")


@dataclasses.dataclass
class BnasSettings:
    """BNAS' own settings (the BNAS paper; docs/search.md)."""

    cells: int = 8
    channels: int = 16
    cell_template: str = "bnas"     # 'bnas' (inter-cell skips) | 'darts' ("No Skip")
    diversity_lambda: float = 1.0   # lambda of the diversity regulariser (0 = "No Div")
    diversity_tau: float = 7.7      # tau: the regulariser decays as exp(-epoch / tau)
    gamma: float = 1.0              # Eq. 4: Zeroise weight divided by gamma in derivation
    derive: str = "bnas"            # 'bnas' (keeps Zeroise) | 'darts' ("No Zeroise")
    stem: str = "auto"              # 'auto' (by image size), 'cifar', 'imagenet'
    # weight-only epochs before the alphas are updated: not in the BNAS paper (0 = as
    # there); the warm-up of P-DARTS, PC-DARTS and BARS, against parameter-free ops
    # winning while the binary convs are still untrained (docs/results.md)
    warmup_epochs: int = 0

    SEARCH_DEFAULTS: typing.ClassVar[dict] = {}  # SearchConfig fields: its own defaults

    def validate(self):
        o = "BNAS "
        _check_int(o, "cells", self.cells, 2)
        _check_int(o, "channels", self.channels, 1)
        _check_choice(o, "cell_template", self.cell_template, genotypes.TEMPLATES)
        _check_choice(o, "derive", self.derive, bnas_derive.MODES)
        _check_choice(o, "stem", self.stem, common.STEMS)
        if not self.gamma > 0:
            _fail(o, "gamma", "> 0 (it divides the Zeroise weight)", self.gamma)
        if not self.diversity_lambda >= 0:
            _fail(o, "diversity_lambda", ">= 0", self.diversity_lambda)
        if not self.diversity_tau > 0:
            _fail(o, "diversity_tau", "> 0", self.diversity_tau)
        _check_int(o, "warmup_epochs", self.warmup_epochs, 0)
        return self

    def check_run(self, epochs, strategy):
        """Refused: a warm-up covering every epoch (no alpha would ever be updated)."""
        del strategy  # every strategy runs
        _check_warmup("BNAS", self.warmup_epochs, epochs)


@dataclasses.dataclass
class BarsSettings:
    """BARS' own settings (BARS paper Sec. 4-5, App. A; docs/bars.md)."""

    flops_budget: float = 0.0       # millions of equivalent OPs (FLOPs + BiOPs/64); 0 = none
    warmup_epochs: int = 5          # weight-only epochs before the alphas are updated
    temperature: float = 1.0        # initial Gumbel-softmax temperature
    temperature_decay: float = 0.9  # temperature multiplier per epoch
    entropy_start: float = -0.01    # lambda_ent at epoch 0
    entropy_step: float = 0.001     # lambda_ent increment per epoch
    budget_theta_above: float = 1.0
    budget_theta_below: float = 0.0
    num_samples: int = 8            # architectures sampled when deriving
    derive_batches: int = 0         # validation batches per sampled candidate; 0 = auto
    base_channels: tuple = (48, 96, 192)
    width_choices: tuple = (0.25, 0.5, 0.75, 1.0)
    max_depth: int = 3
    downsample: str = "improved"
    op_shortcut: bool = True

    # BARS App. A: Adam for the weights (3e-4, cosine to 0, no decay) and alphas
    SEARCH_DEFAULTS: typing.ClassVar[dict] = dict(
        ops=ops.BARS_OPS, w_lr=3e-4, w_lr_min=0.0, w_wd=0.0, a_lr=3e-4, a_beta1=0.9,
        a_beta2=0.999, a_wd=1e-3, binarization="bars")

    def __post_init__(self):
        self.base_channels = _numbers(self.base_channels, int, "BARS ", "base_channels")
        self.width_choices = _numbers(self.width_choices, float, "BARS ", "width_choices")

    def validate(self):
        o = "BARS "
        if not self.base_channels or any(c < 2 for c in self.base_channels):
            _fail(o, "base_channels", "integers >= 2", list(self.base_channels))
        w = self.width_choices
        if not w or any(not 0 < r <= 1 for r in w):
            _fail(o, "width_choices", "in (0, 1]", list(w))
        if len(set(w)) != len(w):
            raise ValueError(f"BARS width_choices has duplicates: {list(w)}")
        _check_int(o, "warmup_epochs", self.warmup_epochs, 0)
        _check_int(o, "max_depth", self.max_depth, 0)
        _check_int(o, "num_samples", self.num_samples, 1)
        _check_int(o, "derive_batches", self.derive_batches, 0)
        if not self.flops_budget >= 0:
            _fail(o, "flops_budget", ">= 0 (0 = none)", self.flops_budget)
        if not self.temperature > 0:
            _fail(o, "temperature", "> 0", self.temperature)
        if not 0 < self.temperature_decay <= 1:
            _fail(o, "temperature_decay", "in (0, 1]", self.temperature_decay)
        _check_choice(o, "downsample", self.downsample, bars_models.DOWNSAMPLES)
        if not isinstance(self.op_shortcut, bool):
            _fail(o, "op_shortcut", "true or false", self.op_shortcut)
        return self

    def check_run(self, epochs, strategy):
        """Refused: a warm-up covering every epoch (no alpha would ever be updated)."""
        del strategy  # every strategy runs (a multi-worker search derives on each worker)
        _check_warmup("BARS", self.warmup_epochs, epochs)


SETTINGS = {"bnas": BnasSettings, "bars": BarsSettings}


@dataclasses.dataclass
class SearchConfig:
    """Everything a search run depends on: the settings every method reads, and
    `settings`, the typed settings of `method` (saved in DIR/search_config.json).

    Build one with `SearchConfig.create(method, **values)`: each value goes to the
    field or the method setting of its name; unset ones take the method's defaults.
    """

    method: str = "bnas"
    epochs: int = 50
    batch_size: int = 64
    ops: tuple = ops.BNAS_OPS
    order: int = 1                   # 1 = first order, 2 = DARTS' unrolled gradient
    binarization: str = "xnor"       # binary.SCHEMES name of the supernet's binary ops
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_wd: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_wd: float = 1e-3
    seed: int = 0
    strategy: str = "default"        # bnas_tf.distribute.STRATEGIES
    eval_batches: int | None = None  # validation batches per epoch (None = whole split)
    settings: BnasSettings | BarsSettings | None = None  # None: the method's defaults

    def __post_init__(self):
        self.ops = tuple(self.ops)
        if self.settings is None and self.method in SETTINGS:
            self.settings = SETTINGS[self.method]()

    @classmethod
    def create(cls, method="bnas", **values):
        """The config of `method`: its defaults, then `values` (field or setting names)."""
        _check_choice("search ", "method", method, METHODS)
        kind = SETTINGS[method]
        own = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(values) - own - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {method} search settings: {', '.join(unknown)}")
        settings = kind(**{k: v for k, v in values.items() if k in own})
        common = {**kind.SEARCH_DEFAULTS, **{k: v for k, v in values.items() if k not in own}}
        return cls(method=method, settings=settings, **common)

    def validate(self):
        """Raise a one-line ValueError naming the first bad setting."""
        _check_choice("search ", "method", self.method, METHODS)
        if not isinstance(self.settings, SETTINGS[self.method]):
            raise ValueError(f"a {self.method} search needs {SETTINGS[self.method].__name__}, "
                             f"got {type(self.settings).__name__}")
        self.ops = ops.check_ops(self.ops)
        for name in ("epochs", "batch_size"):
            _check_int("", name, getattr(self, name), 1)
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")
        if self.eval_batches is not None:
            _check_int("", "eval_batches", self.eval_batches, 1)
        for name in ("w_lr", "a_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self.settings.validate()
        self.settings.check_run(self.epochs, self.strategy)
        return self

    def to_dict(self):
        """Plain data: the common fields and, under the method's name, its settings."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "settings"}
        data["ops"] = list(self.ops)
        settings = dataclasses.asdict(self.settings)
        data[self.method] = {k: list(v) if isinstance(v, tuple) else v
                             for k, v in settings.items()}
        return data

    @classmethod
    def from_dict(cls, data):
        """The config of `to_dict`'s data, or of a previous version's search_config.json
        (flat BNAS settings and an untyped ``extra`` dict), which it upgrades."""
        data = upgrade(data)
        method = data.get("method", "bnas")
        known = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        unknown = sorted(set(data) - known - {method})
        if unknown:
            raise ValueError(f"unknown search settings: {', '.join(unknown)}")
        kind = SETTINGS.get(method)
        settings = kind(**data.get(method, {})) if kind else None
        return cls(settings=settings, **{k: v for k, v in data.items() if k in known})

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_OLD_BNAS = ("cells", "channels", "cell_template", "diversity_lambda", "diversity_tau",
             "gamma", "derive")


def upgrade(data):
    """A search config dict of the previous version (BNAS settings flat beside the
    common ones, BARS' and the engine's in ``extra``) in today's layout; today's
    layout unchanged. The engine's conv_dtype, no longer part of a run's identity,
    is dropped."""
    if "extra" not in data:
        return dict(data)
    data = dict(data)
    extra = dict(data.pop("extra") or {})
    extra.pop("conv_dtype", None)
    method = data.get("method", "bnas")
    own = {k: data.pop(k) for k in _OLD_BNAS if k in data}
    if method == "bnas":
        data["bnas"] = {**own, **extra}
    else:
        data[method] = {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}
    return data


@typing.runtime_checkable
class Supernet(typing.Protocol):
    """What the bilevel step needs of a supernet (`bilevel.SupernetBase` gives the
    defaults of the optional parts)."""

    arch_variables: list   # the architecture variables; every other trainable is a weight

    def __call__(self, x, training=None, precomputed=None):
        """[B, H, W, 3] images -> [B, classes] logits (`precomputed`: `precompute()`)."""

    def arch_regularization(self, epoch):
        """The scalar regulariser of the alpha loss (BNAS: diversity; BARS: entropy)."""

    def arch_loss(self, ce, reg, epoch):
        """The whole alpha loss from the (replica-scaled) validation CE and `reg`."""

    def precompute(self):
        """Tensors that depend only on the weights, shared by the alpha and weight
        passes of one first-order step (BNAS: quantised kernels), or None."""

    def build_from_shape(self, input_shape) -> bool:
        """Create the variables without a forward pass; False if a call must."""


class SearchMethod(typing.Protocol):
    """A search method: the module ``bnas_tf.search.<name>.method`` (`METHODS`)."""

    def build_supernet(self, config: SearchConfig, num_classes: int, image_size: int,
                       engine) -> Supernet:
        """The supernet (variables built by `build_model`); `engine`: engine.EngineConfig."""

    def build_model(self, net, config: SearchConfig, steps_per_epoch: int, image_size: int,
                    engine):
        """A compiled bilevel.BilevelModel (call inside the strategy scope)."""

    def on_epoch_begin(self, net, epoch: int) -> bool:
        """Per-epoch schedules; returns whether the alphas are updated this epoch."""

    def derive(self, net, config: SearchConfig, val_batches):
        """The genotype (genotypes.*Genotype) of the current alphas."""

    def epoch_logs(self, net, epoch: int) -> dict:
        """name -> float (scalar), HxWx3 uint8 array (image) or str (text)."""


def parse_ops(text):
    """An op list from ``--ops``: comma-separated op names, where ``bnas`` stands for
    the BNAS set, ``sep`` for the separable convs, and ``-name`` removes an op.

    ``bnas,sep`` adds bin_sep_conv_3x3/5x5; ``bnas,-bin_dil_conv_3x3,-bin_dil_conv_5x5``
    drops the dilated convs.
    """
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
    else:
        items = str(text).split(",")
    groups = {"bnas": ops.BNAS_OPS, "sep": ops.SEP_OPS, "bars": ops.BARS_OPS}
    chosen = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.startswith("-"):
            name = item[1:]
            ops.check_ops([name])
            if name not in chosen:
                raise ValueError(f"--ops: cannot remove {name!r}, it is not in the list")
            chosen.remove(name)
            continue
        for name in groups.get(item, (item,)):
            if name not in chosen:
                chosen.append(name)
    return ops.check_ops(chosen)
