"""The layout of a model directory, written by training and read by evaluate/export.

```
DIR/spec.json       network spec + num_classes + image_size + dataset (rebuilds the net)
DIR/saved_model/    SavedModel of the trained network (inference signature)
DIR/weights.h5      final weights (Keras HDF5), loaded into a rebuilt network
DIR/metrics.json    top-1, top-5, loss (weights.h5 scored on one device), params, ...
DIR/history.json    per-epoch logs, in step with the checkpoints (resume keeps them)
DIR/ckpt/           tf.train.CheckpointManager checkpoints (resume)
DIR/logs/           TensorBoard logs
```
Rebuilding from spec + weights is the robust path (no custom-object
deserialisation); the SavedModel is there for serving.
"""
from __future__ import annotations

import json
import os

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf.files import write_json  # noqa: F401  (re-exported: model_dir.write_json)

SPEC = "spec.json"
SAVED_MODEL = "saved_model"
WEIGHTS = "weights.h5"
METRICS = "metrics.json"
CKPT = "ckpt"
LOGS = "logs"


def path(model_dir, name):
    return os.path.join(model_dir, name)


def read_json(file_path, what="file"):
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"{what} not found: {file_path}")
    with open(file_path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file_path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def write_spec(model_dir, spec, num_classes, image_size, **extra):
    return write_json(path(model_dir, SPEC), {"spec": spec, "num_classes": int(num_classes),
                                              "image_size": int(image_size), **extra})


def read_spec(model_dir):
    """(spec, num_classes, image_size, record) of a model directory."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    record = read_json(path(model_dir, SPEC), "model spec (is this a tools/train.py output?)")
    return record["spec"], record["num_classes"], record["image_size"], record


def build_model(model_dir, auxiliary=False):
    """Rebuild the network of `model_dir` from its spec (weights not loaded)."""
    from bnas_tf import models
    spec, num_classes, image_size, _ = read_spec(model_dir)
    return models.build(spec, num_classes, image_size, auxiliary=auxiliary)


def saved_layers(weights_path):
    """Names of the layers holding weights in a Keras HDF5 weights file."""
    import h5py  # tf-keras' own HDF5 dependency
    with h5py.File(weights_path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in group.attrs.get("layer_names", [])]
        return [n for n in names if len(group[n].attrs.get("weight_names", [])) > 0]


def check_weights(model, weights_path):
    """Raise ValueError (one line) unless the layers of `model` that hold weights are
    exactly the layers saved in `weights_path`: loading by name would otherwise leave
    a layer at its random initial weights, or drop saved weights, without a word."""
    saved = set(saved_layers(weights_path))
    built = {layer.name for layer in model.layers if layer.weights}
    missing, extra = sorted(built - saved), sorted(saved - built)
    if missing or extra:
        parts = ([f"layers without saved weights: {', '.join(missing)}"] if missing else []) + \
            ([f"saved weights without a layer: {', '.join(extra)}"] if extra else [])
        raise ValueError(f"{weights_path} does not match the network of its {SPEC} "
                         f"({'; '.join(parts)}); was {SPEC} edited after training?")


def load_weights(model, weights_path):
    """Load `weights_path` into `model` by layer name after `check_weights`; a layer whose
    weights differ in number or shape is a one-line ValueError too."""
    check_weights(model, weights_path)
    try:
        model.load_weights(weights_path, by_name=True)
    except ValueError as e:
        raise ValueError(f"{weights_path} does not match the network of its {SPEC} "
                         f"({' '.join(str(e).split())[:300]})") from None
    return model


def load_model(model_dir):
    """The trained inference network of `model_dir`: rebuilt from spec, final weights loaded.

    Raises FileNotFoundError without weights.h5, ValueError when weights.h5 and
    spec.json describe different networks (see `check_weights`).
    """
    weights = path(model_dir, WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no trained weights in {model_dir} (expected {WEIGHTS}); "
                                "run tools/train.py to the end first")
    return load_weights(build_model(model_dir), weights)


def save_model(model_dir, model):
    """Save final weights and a SavedModel of the inference outputs (no auxiliary head)."""
    if len(model.outputs) > 1:
        model = tf.keras.Model(model.inputs, model.outputs[0], name=model.name)
    model.save_weights(path(model_dir, WEIGHTS))
    model.save(path(model_dir, SAVED_MODEL), include_optimizer=False)
