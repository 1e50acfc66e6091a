"""The layout of a model directory, written by training and read by evaluate/export.

```
DIR/spec.json       network spec + num_classes + image_size + dataset (rebuilds the net)
DIR/saved_model/    SavedModel of the trained network (inference signature)
DIR/weights.h5      final weights (Keras HDF5), loaded into a rebuilt network
DIR/metrics.json    top-1, top-5, loss, params, flops, biops, ...
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


def load_model(model_dir):
    """The trained inference network of `model_dir`: rebuilt from spec, final weights loaded."""
    weights = path(model_dir, WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no trained weights in {model_dir} (expected {WEIGHTS}); "
                                "run tools/train.py to the end first")
    model = build_model(model_dir)
    model.load_weights(weights, by_name=True)
    return model


def save_model(model_dir, model):
    """Save final weights and a SavedModel of the inference outputs (no auxiliary head)."""
    if len(model.outputs) > 1:
        model = tf.keras.Model(model.inputs, model.outputs[0], name=model.name)
    model.save_weights(path(model_dir, WEIGHTS))
    model.save(path(model_dir, SAVED_MODEL), include_optimizer=False)
