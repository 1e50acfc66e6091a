"""A cache of network costs, so cost tables print in seconds instead of building every
network (building the 20-cell BNAS-A alone takes ~10 s on a CPU).

An entry is keyed by the network's spec, class count and image size, and a fingerprint
of everything the figures depend on: the source of `bnas_tf.costs`, `bnas_tf.models`,
`bnas_tf.binary`, `bnas_tf.ops` and `bnas_tf.genotypes`, and the TensorFlow and Larq
versions. Any change there makes every entry stale, so a cached figure is always the one
building the network would give now; a stale or missing entry is counted by building,
then stored.

Two files are read: the snapshot shipped with the package
(``bnas_tf/preset_costs.json``, every preset at its default shape; rewrite it with
``python -m bnas_tf.cost_cache``), then the user cache ``$BNAS_CACHE_DIR/costs.json``
(default ``~/.cache/bnas_tf``), which new entries go to. ``BNAS_CACHE_DIR=off`` turns
the user cache off.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

import bnas_tf  # noqa: F401

from bnas_tf import files

PACKAGE = os.path.dirname(os.path.abspath(__file__))
SNAPSHOT = os.path.join(PACKAGE, "preset_costs.json")
SOURCES = ("costs.py", "binary.py", "ops.py", "genotypes.py", "models")


@functools.lru_cache(maxsize=1)
def fingerprint():
    """sha256 (hex, 16 chars) of the cost-relevant sources and the TF / Larq versions."""
    import larq
    import tensorflow as tf

    digest = hashlib.sha256(f"{tf.__version__} {larq.__version__}".encode())
    for entry in SOURCES:
        path = os.path.join(PACKAGE, entry)
        paths = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py")) \
            if os.path.isdir(path) else [path]
        for p in paths:
            digest.update(os.path.relpath(p, PACKAGE).encode())
            with open(p, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def key(spec, num_classes, image_size):
    """The cache key of one network shape (spec dict, classes, image side in pixels)."""
    text = json.dumps({"spec": files.plain(spec), "num_classes": int(num_classes),
                       "image_size": int(image_size), "code": fingerprint()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def user_cache_path():
    """$BNAS_CACHE_DIR/costs.json (default ~/.cache/bnas_tf/costs.json); None when off."""
    folder = os.environ.get("BNAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "bnas_tf")
    return None if folder == "off" else os.path.join(folder, "costs.json")


def _read(path):
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}  # an unreadable cache is only a slower run
    return entries if isinstance(entries, dict) else {}


def cached_costs(spec, num_classes, image_size, count):
    """The cost dict of a network: from the snapshot or user cache when its key is there,
    else ``count(spec, num_classes, image_size)`` (which builds the network), stored in
    the user cache. Returns a fresh dict."""
    k = key(spec, num_classes, image_size)
    for path in (SNAPSHOT, user_cache_path()):
        entry = _read(path).get(k)
        if entry is not None:
            return dict(entry)
    value = count(spec, num_classes, image_size)
    path = user_cache_path()
    if path:
        entries = _read(path)
        entries[k] = files.plain(value)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            files.write_json(path, entries, sort_keys=True)
        except OSError:
            pass  # a read-only home only costs speed
    return dict(value)


def write_snapshot(path=SNAPSHOT, progress=print):
    """Count every preset at its default shape (building each) into `path`."""
    from bnas_tf import report
    from bnas_tf.models import presets

    entries = {}
    for name in presets.names():
        spec = presets.resolve(preset=name)
        num_classes, image_size = report.shape_of(spec)
        entries[key(spec, num_classes, image_size)] = files.plain(
            report.count_costs(spec, num_classes, image_size))
        progress(f"counted {name}")
    files.write_json(path, entries, sort_keys=True)
    return path


if __name__ == "__main__":
    print(write_snapshot())
