"""Final networks matched on equivalent OPs (EqOPs = FLOPs + BiOPs / 64, bnas_tf.costs).

A deterministic channels search over the exact cost model (`costs.count_spec`
builds the network and counts it, through `size_space.CostTable`'s cache, DIR/costs.json,
shared by every trial and scale-out worker of a study): EqOPs are a quadratic
polynomial of the width, so three counts fit it, its root gives the width, and the
widths around the root are counted exactly; the one closest to the target wins.

Width knobs: ``channels`` (BNAS cells: channels of the first cell; baselines:
the first stage's channels), or for BARS genotypes the first stage's base
channels with the others scaled in proportion (so the searched macro ratios stay).
"""
from __future__ import annotations

import copy
import math

import numpy as np

from bnas_tf import size_space

CHANNELS = tuple(range(2, 513))


class CostCache:
    """{'equivalent_ops', 'flops', 'biops', 'params'} of network specs: `size_space.CostTable`
    (exact counts, cached in the JSON file at `path`, merged with other processes')
    keyed by the whole spec."""

    def __init__(self, path, num_classes, image_size):
        self.table = size_space.CostTable(path, num_classes, image_size, verbose=False)

    def get(self, spec):
        return self.table.get(_Spec(spec))

    def equivalent_ops(self, spec):
        return self.get(spec)["equivalent_ops"]


class _Spec:
    """A whole network spec in the shape of a `size_space.Size` (what CostTable counts)."""

    def __init__(self, spec):
        self.spec, self.key = spec, size_space.spec_key(spec)

    def network_spec(self):
        return self.spec


def knob(spec):
    """The width knob of a spec: 'channels', 'base_channels' (BARS) or None."""
    if spec.get("family") == "bars":
        return "base_channels"
    return "channels" if "channels" in spec or spec.get("family") in ("bnas", "baseline") \
        else None


def with_width(spec, value):
    """A copy of `spec` with its width knob set to `value` (see module doc)."""
    out = copy.deepcopy(spec)
    if knob(spec) == "base_channels":
        base = list(out["genotype"]["base_channels"])
        out["genotype"]["base_channels"] = [max(2, int(round(value * b / base[0])))
                                            for b in base]
        out["genotype"]["base_channels"][0] = int(value)
    else:
        out["channels"] = int(value)
    return out


def width_of(spec):
    k = knob(spec)
    if k == "base_channels":
        return spec["genotype"]["base_channels"][0]
    if k is None:
        return None
    from bnas_tf.models import baselines
    return spec.get(k, baselines.DEFAULT_CHANNELS.get(spec.get("arch"), 64))


def match(spec, target, table, values=CHANNELS):
    """(spec, cost row) of the width of `spec` whose EqOPs are closest to `target`
    (EqOPs, not millions); ValueError when the spec has no width knob.

    EqOPs are a quadratic polynomial of the width (conv MACs ~ C_in * C_out, stem and
    classifier ~ C): three counts fit it, its root gives the width, and the widths
    around the root are counted exactly (5 counts instead of a binary search's ~10).
    When the fit misleads (rounding of BARS stage widths), `size_space.last_fitting`'s
    binary search over `values` decides.
    """
    if knob(spec) is None:
        raise ValueError(f"the {spec.get('family')} network has no width knob to match "
                         "equivalent OPs")

    def eqops(v):
        return table.equivalent_ops(with_width(spec, v))

    w0 = int(width_of(spec))
    lo, hi = values[0], values[-1]
    probes = sorted({max(lo, w0 // 2), w0, min(hi, 2 * w0)})
    counted = [eqops(v) for v in probes]
    if len(set(counted)) == 1:
        raise ValueError(f"the {spec.get('family')} network's {knob(spec)} does not change "
                         "its equivalent OPs; cannot match the target")
    guess = _quadratic_root(probes, counted, target)
    if guess is None:
        candidates = [size_space.last_fitting(list(values), lambda v: eqops(v) <= target) or lo]
    else:
        candidates = [int(math.floor(guess)), int(math.ceil(guess))]
    candidates = sorted({min(hi, max(lo, c)) for c in candidates})
    # widen until the target is bracketed (or a bound is reached)
    while candidates[0] > lo and eqops(candidates[0]) > target:
        candidates.insert(0, candidates[0] - 1)
    while candidates[-1] < hi and eqops(candidates[-1]) < target:
        candidates.append(candidates[-1] + 1)
    best = min(candidates, key=lambda v: abs(eqops(v) - target))
    sized = with_width(spec, best)
    return sized, table.get(sized)


def _quadratic_root(widths, eqops, target):
    """The positive width where the quadratic through (widths, eqops) reaches target."""
    if len(widths) < 3:
        return None
    a, b, c = np.polyfit(np.asarray(widths, float), np.asarray(eqops, float), 2)
    roots = [r.real for r in np.roots([a, b, c - target]) if abs(r.imag) < 1e-9 and r.real > 0]
    return max(roots) if roots else None
