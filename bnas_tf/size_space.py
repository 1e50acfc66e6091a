"""The space of budget sizing: the cells x channels (and optionally gamma) sizes of a
BNAS network under an Equivalent-OPs budget, and their exact cost counts.

The constraint is handled by construction, not by penalty. Equivalent OPs
(``costs.count_spec(...).equivalent_ops`` = FLOPs + BiOPs / 64) grow monotonically
with the number of cells and with the channels, so the feasible sizes form a
staircase under the budget. `SizeSpace` maps the oracle's unit box of two fractions,

* ``cells_fraction`` u -> cells = lo + round(u * (cells_max - lo)), where cells_max is
  the most cells that fit the budget at the fewest channels;
* ``channels_fraction`` v -> channels on the grid in [min_channels, channels_max(cells)],
  the widest that still fits with that many cells;

so every proposal is a feasible size, any keras-tuner oracle works unchanged
(random search samples each cells row uniformly, Bayesian optimisation sees a
smooth box), and no trial is wasted on a network over budget. Both maxima are
found by binary search (`last_fitting`) on exact cost counts (`CostTable`), computed
only for the rows the oracle visits and cached in a JSON file. With gamma tuning a
``gamma`` choice comes first and only gammas whose smallest network fits are offered.
The keras-tuner run over this space is bnas_tf.sizing.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import keras_tuner as kt
import tensorflow as tf

from bnas_tf import costs
from bnas_tf import model_dir as mdir

ORACLES = ("random", "bayesian")


class BudgetError(ValueError):
    """No size in the searched ranges fits the budget."""


@dataclasses.dataclass
class SizingConfig:
    """The search space and the search itself (not the training recipe)."""

    budget: float                    # Equivalent OPs (FLOPs + BiOPs / 64)
    min_cells: int = 5
    max_cells: int = 20
    min_channels: int = 8
    max_channels: int = 64
    channels_step: int = 4
    max_trials: int = 10
    oracle: str = "random"
    gammas: tuple = ()               # empty: the genotype is fixed
    seed: int = 0

    def __post_init__(self):
        self.gammas = tuple(float(g) for g in self.gammas)

    def validate(self):
        if not self.budget > 0:
            raise ValueError(f"the Equivalent-OPs budget must be > 0, got {self.budget}")
        if not 2 <= self.min_cells <= self.max_cells:
            raise ValueError(f"need 2 <= min_cells <= max_cells, got cells "
                             f"{self.min_cells}..{self.max_cells}")
        if not 1 <= self.min_channels <= self.max_channels:
            raise ValueError(f"need 1 <= min_channels <= max_channels, got channels "
                             f"{self.min_channels}..{self.max_channels}")
        if self.channels_step < 1:
            raise ValueError(f"channels_step must be >= 1, got {self.channels_step}")
        if self.max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {self.max_trials}")
        if self.oracle not in ORACLES:
            raise ValueError(f"unknown oracle {self.oracle!r}; choose one of {', '.join(ORACLES)}")
        if any(not g > 0 for g in self.gammas):
            raise ValueError(f"every gamma must be > 0, got {list(self.gammas)}")
        return self

    def cells_grid(self):
        return list(range(self.min_cells, self.max_cells + 1))

    def channels_grid(self):
        return list(range(self.min_channels, self.max_channels + 1, self.channels_step))

    def identity(self):
        """The settings a resumed run must share (max_trials may change)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "max_trials"}


@dataclasses.dataclass(frozen=True)
class Size:
    """One candidate network: base spec with a genotype, cells and channels."""

    spec: dict
    cells: int
    channels: int
    gamma: float | None = None

    @property
    def key(self):
        """Names the size's cost-cache row and model directory: a hash of the spec (cell,
        stem, binarization, ...) then cells x channels."""
        base = {k: v for k, v in self.spec.items() if k not in ("cells", "channels", "name")}
        return f"{spec_key(base)}-{self.cells}x{self.channels}"

    def network_spec(self):
        spec = copy.deepcopy(self.spec)
        spec["cells"], spec["channels"] = int(self.cells), int(self.channels)
        if self.gamma is not None:
            spec["gamma"] = float(self.gamma)
        return spec


def spec_key(data):
    """Short stable hash of plain data (a spec without its size)."""
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def last_fitting(values, fits):
    """The largest of the sorted `values` with fits(v), for fits True-then-False (monotone);
    None when even the first does not fit. Binary search: O(log n) calls."""
    if not values or not fits(values[0]):
        return None
    lo, hi, best = 1, len(values) - 1, values[0]
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(values[mid]):
            best, lo = values[mid], mid + 1
        else:
            hi = mid - 1
    return best


# ----------------------------------------------------------------------------- costs

class CostTable:
    """Exact cost counts of sizes, cached in a JSON file (counting builds the network)."""

    def __init__(self, path, num_classes, image_size, verbose=True):
        self.path, self.num_classes, self.image_size = path, int(num_classes), int(image_size)
        self.verbose = verbose
        self.rows = {}
        if path and os.path.isfile(path):
            self.rows = mdir.read_json(path, "cost cache")
        self.counted = 0  # counts made by this process (not from the cache)

    def _row_key(self, size):
        return f"{size.key}@{self.num_classes}c{self.image_size}px"

    def get(self, size):
        """{'equivalent_ops', 'flops', 'biops', 'params'} of `size`."""
        key = self._row_key(size)
        if key not in self.rows:
            c = costs.count_spec(size.network_spec(), self.num_classes, self.image_size)
            tf.keras.backend.clear_session()
            self.rows[key] = {"equivalent_ops": float(c.equivalent_ops), "flops": int(c.flops),
                              "biops": int(c.biops), "params": int(c.params)}
            self.counted += 1
            if self.verbose:
                print(f"  cost of {size.cells} cells x {size.channels} channels: "
                      f"{c.equivalent_ops:.4g} equivalent OPs", flush=True)
            if self.path:  # merge rows other processes (distributed workers) counted
                if os.path.isfile(self.path):
                    self.rows = {**mdir.read_json(self.path, "cost cache"), **self.rows}
                mdir.write_json(self.path, self.rows)
        return self.rows[key]

    def equivalent_ops(self, size):
        return self.get(size)["equivalent_ops"]


# ----------------------------------------------------------------------------- space

class SizeSpace:
    """Maps the oracle's unit-box hyperparameters to feasible sizes (see module doc)."""

    def __init__(self, config, candidates, table):
        """candidates: {gamma or None: base spec (dict with an inline genotype)}."""
        self.config, self.candidates, self.table = config, dict(candidates), table
        self._cells_max, self._channels_max = {}, {}

    def _size(self, gamma, cells, channels):
        return Size(self.candidates[gamma], int(cells), int(channels), gamma)

    def fits(self, size):
        return self.table.equivalent_ops(size) <= self.config.budget

    def cells_max(self, gamma):
        """Most cells that fit with the fewest channels (None: not even the smallest fits)."""
        if gamma not in self._cells_max:
            c = self.config
            self._cells_max[gamma] = last_fitting(
                c.cells_grid(), lambda n: self.fits(self._size(gamma, n, c.min_channels)))
        return self._cells_max[gamma]

    def channels_max(self, gamma, cells):
        """Widest grid channel count that fits with `cells` cells (None: none fits)."""
        if (gamma, cells) not in self._channels_max:
            self._channels_max[(gamma, cells)] = last_fitting(
                self.config.channels_grid(), lambda ch: self.fits(self._size(gamma, cells, ch)))
        return self._channels_max[(gamma, cells)]

    def smallest(self, gamma):
        c = self.config
        return self._size(gamma, c.min_cells, c.min_channels)

    def feasible_gammas(self):
        """Candidates whose smallest network fits; BudgetError when none does."""
        feasible = [g for g in self.candidates if self.cells_max(g) is not None]
        if not feasible:
            eq = min(self.table.equivalent_ops(self.smallest(g)) for g in self.candidates)
            c = self.config
            raise BudgetError(
                f"budget of {c.budget:.4g} equivalent OPs is below the smallest size: "
                f"{c.min_cells} cells x {c.min_channels} channels already needs {eq:.4g}; "
                "raise --flops_budget or lower --min_cells/--min_channels")
        return feasible

    def hyperparameters(self):
        hp = kt.HyperParameters()
        gammas = [g for g in self.candidates if g is not None]
        if gammas:
            hp.Choice("gamma", sorted(self.feasible_gammas()), ordered=True)
        hp.Float("cells_fraction", 0.0, 1.0)
        hp.Float("channels_fraction", 0.0, 1.0)
        return hp

    def decode(self, values):
        """The feasible Size of hyperparameter values (a dict or kt.HyperParameters)."""
        if isinstance(values, kt.HyperParameters):
            values = values.values
        gamma = float(values["gamma"]) if "gamma" in values else None
        if gamma not in self.candidates:
            raise ValueError(f"gamma {gamma} is not among the candidates {list(self.candidates)}")
        c = self.config
        cells_hi = self.cells_max(gamma)
        if cells_hi is None:
            raise kt.errors.FailedTrialError(f"no size fits the budget with gamma {gamma}")
        cells = c.min_cells + int(round(float(values["cells_fraction"]) * (cells_hi - c.min_cells)))
        channels_hi = self.channels_max(gamma, cells)
        if channels_hi is None:  # only if costs were not monotone in cells
            raise kt.errors.FailedTrialError(
                f"{cells} cells do not fit the budget even with {c.min_channels} channels")
        steps = (channels_hi - c.min_channels) // c.channels_step
        channels = c.min_channels + c.channels_step * int(
            round(float(values["channels_fraction"]) * steps))
        return self._size(gamma, cells, channels)
