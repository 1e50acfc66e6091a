"""Checks of a network spec against what the user asked and the data it will see.

* `check_options`: a size/option value given for a family that has no such thing
  (``cells`` for a BARS or baseline network, ``residual`` outside BNAS) is refused
  with one line naming it, never recorded and ignored.
* `check_data` / `adapt_to_data`: a preset is meant for one kind of data (its stem:
  ``cifar`` = 10 classes at 32 px, ``imagenet`` = 1000 classes at 224 px, or its own
  ``num_classes`` / ``image_size``). Other data is refused (one line), unless the
  user asked for the adaptation (``--adapt_to_data``): then the stem follows the
  data's resolution, the classifier its classes, and the change is printed and
  recorded in the spec (``adapted_from``).
* `describe`: the one line a run prints first: the network's size and where each
  value came from (flag, preset, genotype file, default), and the size a genotype
  was searched at when its search directory says so.
"""
from __future__ import annotations

import json
import os

# Options a family takes beyond the genotype/preset; every family takes binarization
# and the auxiliary tower. A family missing here takes none of them.
FAMILY_OPTIONS = {
    "bnas": ("cells", "channels", "residual", "drop_path"),
    "baseline": ("channels",),
    "bars": (),
    # hand-designed binary networks: --channels scales their widths (models/common.own_quantizers)
    "birealnet": ("channels",),
    "reactnet": ("channels",),
    "quicknet": ("channels",),
}
CHECKED_OPTIONS = ("cells", "channels", "residual", "drop_path")
WHY_NOT = {
    "bars": "its stages' widths and depths come from the genotype",
    "baseline": "a baseline network has a depth and channels, no cells, no BNAS residual "
                "and no drop-path",
    **{f: "a hand-designed network has channels, no cells, no BNAS residual and no "
          "drop-path" for f in ("birealnet", "reactnet", "quicknet")},
}
# (classes, pixels) a stem is meant for
STEM_DATA = {"cifar": (10, 32), "imagenet": (1000, 224)}
IMAGENET_PIXELS = 128  # resolve_stem('auto'): the ImageNet stem from 128 px up


def check_options(family, given):
    """ValueError naming the first option in `given` ({name: value or None}) that
    `family` does not take (see FAMILY_OPTIONS)."""
    allowed = FAMILY_OPTIONS.get(family, ())
    for name in CHECKED_OPTIONS:
        if given.get(name) is not None and name not in allowed:
            why = WHY_NOT.get(family, f"the {family!r} family has no {name}")
            raise ValueError(f"--{name} does not apply to a {family} network ({why}); drop it")


def intended_data(spec):
    """(num_classes, image_size) the spec is meant for, or None when it adapts to any
    data (no stem, or stem 'auto': genotype-only specs)."""
    default = STEM_DATA.get(spec.get("stem"))
    if default is None and "image_size" not in spec:
        return None
    classes, pixels = default or (None, None)
    return spec.get("num_classes", classes), spec.get("image_size", pixels)


def _kind(pixels):
    return "imagenet" if int(pixels) >= IMAGENET_PIXELS else "cifar"


def _name(spec):
    return spec.get("name") or spec.get("family", "the network")


def data_mismatch(spec, num_classes, image_size):
    """A one-line description of how the data differs from what `spec` is meant for,
    or None when it fits (same classes, same side of the 128-px stem threshold)."""
    intended = intended_data(spec)
    if intended is None:
        return None
    classes, pixels = intended
    wrong = []
    if pixels is not None and _kind(pixels) != _kind(image_size):
        wrong.append(f"{image_size} px images (it is built for {pixels} px)")
    if classes is not None and int(classes) != int(num_classes):
        wrong.append(f"{num_classes} classes (it has a {classes}-class classifier)")
    return " and ".join(wrong) or None


def check_data(spec, num_classes, image_size):
    """ValueError (one line) when `spec` is meant for other data; see the module doc."""
    wrong = data_mismatch(spec, num_classes, image_size)
    if wrong:
        raise ValueError(f"{_name(spec)} does not fit the data: {wrong}; pass --adapt_to_data "
                         f"to train it adapted to this data, or choose a network made for it")


def adapt_to_data(spec, num_classes, image_size, log=print):
    """`spec` adapted to the data (stem for `image_size`, `num_classes` classes), the
    adaptation logged; `spec` unchanged when it already fits."""
    wrong = data_mismatch(spec, num_classes, image_size)
    if not wrong:
        return spec
    classes, pixels = intended_data(spec)
    stem = _kind(image_size)
    adapted = dict(spec, stem=stem, num_classes=int(num_classes), image_size=int(image_size),
                   adapted_from={"stem": spec.get("stem"), "num_classes": classes,
                                 "image_size": pixels})
    log(f"adapting {_name(spec)} to the data (--adapt_to_data): {wrong}; now the {stem} stem "
        f"and a {num_classes}-class classifier")
    return adapted


def search_size(genotype_source):
    """(cells, channels, path) a genotype file's search ran at, from the
    search_config.json of its search directory (DIR/genotype.json or
    DIR/genotypes/epoch_N.json), or None."""
    if not isinstance(genotype_source, str) or not os.path.exists(genotype_source):
        return None
    path = os.path.abspath(genotype_source)
    start = path if os.path.isdir(path) else os.path.dirname(path)
    for directory in (start, os.path.dirname(start)):
        config = os.path.join(directory, "search_config.json")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    search = json.load(f).get("search", {})
                # the BNAS settings sit under "bnas" (flat in the previous version)
                settings = search.get("bnas", search)
                return int(settings["cells"]), int(settings["channels"]), config
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def _from(sources, key):
    return f" ({sources[key]})" if sources and key in sources else ""


def describe(spec, sources=None, genotype_source=None):
    """One line: the network family, its size and where each value came from."""
    family = spec.get("family")
    name = _name(spec)
    if family == "bnas":
        text = (f"{name}: bnas network, {spec['cells']} cells{_from(sources, 'cells')} x "
                f"{spec['channels']} channels{_from(sources, 'channels')}")
        searched = search_size(genotype_source)
        if searched:
            text += (f"; the genotype was searched at {searched[0]} cells x {searched[1]} "
                     f"channels ({searched[2]})")
    elif family == "bars":
        from bnas_tf import genotypes
        from bnas_tf.models import bars
        geno = genotypes.load(spec["genotype"])
        stages = ", ".join(f"{c} ch x {1 + s.depth} cells"
                           for c, s in zip(bars.stage_channels(geno), geno.stages))
        text = f"{name}: bars network, stages {stages}{_from(sources, 'genotype')}"
    elif family == "baseline":
        depth = f"-{spec['depth']}" if "depth" in spec else ""
        text = (f"{name}: baseline {spec.get('arch')}{depth}, "
                f"{spec.get('channels', 'default')} channels{_from(sources, 'channels')}")
    else:
        text = f"{name}: {family} network"
    if spec.get("adapted_from"):
        text += f"; adapted to {spec['num_classes']} classes at {spec['image_size']} px"
    return text
