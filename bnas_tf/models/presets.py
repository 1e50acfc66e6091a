"""Named network presets: plain data the network builder reads.

A spec is a dict ``{"family", "genotype", "cells", "channels", ...}``; it is what
`tools/train.py` writes next to a trained model, so a model directory can always
be rebuilt. BNAS-Mini/B/C reuse BNAS-A's cell (their genotypes were never
released; the paper's Table 5 gives their sizes); BNAS-D..H share the released
ImageNet cell.
"""
from __future__ import annotations

import copy
import json
import os

from bnas_tf import genotypes
from bnas_tf.models import checks

PRESETS = {
    "bnas-mini": {"family": "bnas", "genotype": "bnas_a", "cells": 10, "channels": 24,
                  "stem": "cifar", "gamma": 1.0},
    "bnas-a": {"family": "bnas", "genotype": "bnas_a", "cells": 20, "channels": 36,
               "stem": "cifar", "gamma": 1.0},
    "bnas-b": {"family": "bnas", "genotype": "bnas_a", "cells": 12, "channels": 64,
               "stem": "cifar", "gamma": 1.0},
    "bnas-c": {"family": "bnas", "genotype": "bnas_a", "cells": 16, "channels": 108,
               "stem": "cifar", "gamma": 1.0},
}
for _name, _cells, _channels in (("d", 12, 64), ("e", 12, 68), ("f", 15, 68), ("g", 11, 74),
                                 ("h", 16, 128)):
    PRESETS[f"bnas-{_name}"] = {"family": "bnas", "genotype": "bnas_imagenet", "cells": _cells,
                                "channels": _channels, "stem": "imagenet", "gamma": 3.0}


def register(name, spec):
    """Add a preset (baselines and other families register theirs here)."""
    PRESETS[name] = dict(spec)


def names():
    return sorted(PRESETS)


def get(name):
    """The spec of preset `name`, or of a preset JSON file written by tools/size.py."""
    if os.path.isfile(str(name)):
        with open(name, encoding="utf-8") as f:
            try:
                spec = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}: malformed preset JSON ({e.msg})") from None
        if not isinstance(spec, dict) or "family" not in spec:
            raise ValueError(f"{name}: a preset JSON needs at least a 'family' key")
        return spec
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(names())}")
    return copy.deepcopy(PRESETS[key])


def resolve(preset=None, genotype=None, cells=None, channels=None, sources=None, **overrides):
    """A network spec from a preset and/or a genotype, with size overrides.

    The genotype is stored inline (as data), so the spec alone rebuilds the network.
    sources: an optional dict this fills with where each value came from: ``given``
    (the arguments), ``preset NAME``, ``genotype`` or ``default``.
    Raises ValueError when cells/channels/residual are given for a family that has no
    such thing (`checks.check_options`): a value is applied or refused, never ignored.
    """
    if preset is None and genotype is None:
        raise ValueError("give a preset (--preset) or a genotype (--genotype)")
    spec = get(preset) if preset else {}
    origin = {key: f"preset {preset}" for key in spec}
    if genotype is not None:
        geno = genotypes.load(genotype)
        spec["genotype"] = geno.to_dict()
        spec.setdefault("family", geno.to_dict()["method"])
        origin["genotype"] = "genotype"
    if "genotype" in spec and not isinstance(spec["genotype"], dict):
        spec["genotype"] = genotypes.load(spec["genotype"]).to_dict()
    checks.check_options(spec.get("family"), dict(overrides, cells=cells, channels=channels))
    if spec.get("family") == "bnas":
        for key, default in (("cells", 8), ("channels", 16)):
            if key not in spec:
                spec[key], origin[key] = default, "default"
    for key, value in dict(overrides, cells=cells, channels=channels).items():
        if value is not None:
            spec[key] = int(value) if key in ("cells", "channels") else value
            origin[key] = "given"
    if preset:
        spec.setdefault("name", str(preset))
    if sources is not None:
        sources.update(origin)
    return spec
