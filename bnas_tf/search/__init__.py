"""Differentiable architecture search: the search configuration shared by every method.

Modules: `supernet` (the BNAS supernet and the BNAS method), `bilevel` (the generic
bilevel Keras `train_step`), `regularizers` (the diversity regulariser), `derive`
(BNAS genotype derivation, numpy), `runner` (the generic search loop). A search
*method* is a module exposing ``build_supernet``, ``derive``, ``epoch_logs`` and
``on_epoch_begin`` (see docs/search.md); `METHODS` maps names to those modules.

This module does not import TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json

from bnas_tf import ops

METHODS = {"bnas": "bnas_tf.search.supernet", "bars": "bnas_tf.search.bars"}
TEMPLATES = ("bnas", "darts")
DERIVE_MODES = ("bnas", "darts")
STRATEGIES = ("default", "mirrored", "multi_worker")  # bnas_tf.distribute


@dataclasses.dataclass
class SearchConfig:
    """Everything a search run depends on (saved as DIR/search_config.json)."""

    method: str = "bnas"
    epochs: int = 50
    batch_size: int = 64
    cells: int = 8
    channels: int = 16
    ops: tuple = ops.BNAS_OPS
    cell_template: str = "bnas"      # 'bnas' (inter-cell skips) | 'darts' ("No Skip")
    order: int = 1                   # 1 = first order, 2 = DARTS' unrolled gradient
    diversity_lambda: float = 1.0    # lambda of the diversity regulariser (0 = "No Div")
    diversity_tau: float = 7.7       # tau: the regulariser decays as exp(-epoch / tau)
    gamma: float = 1.0               # Eq. 4: Zeroise weight divided by gamma in derivation
    derive: str = "bnas"             # 'bnas' (keeps Zeroise) | 'darts' ("No Zeroise")
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
    strategy: str = "default"
    eval_batches: int | None = None  # validation batches per epoch (None = whole split)
    extra: dict = dataclasses.field(default_factory=dict)  # method-specific (BARS)

    def __post_init__(self):
        self.ops = tuple(self.ops)
        self.extra = dict(self.extra or {})

    def validate(self):
        """Raise a one-line ValueError naming the first bad setting."""
        if self.method not in METHODS:
            raise ValueError(f"unknown search method {self.method!r}; "
                             f"choose one of {', '.join(METHODS)}")
        self.ops = ops.check_ops(self.ops)
        _positive_int(self, "epochs", "batch_size", "channels")
        if self.cells < 2:
            raise ValueError(f"a supernet needs at least 2 cells, got cells={self.cells}")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0 (it divides the Zeroise weight), "
                             f"got {self.gamma}")
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")
        if self.cell_template not in TEMPLATES:
            raise ValueError(f"unknown cell template {self.cell_template!r}; "
                             f"choose one of {', '.join(TEMPLATES)}")
        if self.derive not in DERIVE_MODES:
            raise ValueError(f"unknown derivation {self.derive!r}; "
                             f"choose one of {', '.join(DERIVE_MODES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; "
                             f"choose one of {', '.join(STRATEGIES)}")
        if self.diversity_lambda < 0:
            raise ValueError(f"diversity_lambda must be >= 0, got {self.diversity_lambda}")
        if not self.diversity_tau > 0:
            raise ValueError(f"diversity_tau must be > 0, got {self.diversity_tau}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(f"eval_batches must be >= 1, got {self.eval_batches}")
        for name in ("w_lr", "a_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        return self

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["ops"] = list(self.ops)
        return data

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown search settings: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _positive_int(config, *names):
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
