"""Network builder: a spec (plain data) -> a Keras model, one function per family.

Families register a ``build(spec, num_classes, image_size, auxiliary, binarization)``
function in FAMILIES; `build` dispatches on ``spec["family"]``.
"""
from __future__ import annotations

from bnas_tf import binary
from bnas_tf.models import bnas, presets

FAMILIES = {"bnas": bnas.build}


def register_family(name, builder):
    FAMILIES[name] = builder


def build(spec, num_classes, image_size, auxiliary=False, binarization=None, name=None):
    """Build the Keras model of `spec` (a dict, or a preset name)."""
    if isinstance(spec, str):
        spec = presets.resolve(preset=spec)
    family = spec.get("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; known: {', '.join(FAMILIES)}")
    scheme = binary.scheme(binarization or spec.get("binarization", "xnor"))
    return FAMILIES[family](spec, num_classes, image_size, auxiliary=auxiliary,
                            binarization=scheme, name=name or spec.get("name"))
from bnas_tf.models import bars as _bars  # noqa: E402,F401  (registers the "bars" family)
from bnas_tf.models import baselines as _baselines  # noqa: E402,F401  (xnor-* baselines)
from bnas_tf.models import birealnet as _birealnet  # noqa: E402,F401  (Bi-Real Net)
from bnas_tf.models import reactnet as _reactnet  # noqa: E402,F401  (ReActNet-A)
from bnas_tf.models import quicknet as _quicknet  # noqa: E402,F401  (QuickNet)
