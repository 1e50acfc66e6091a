"""A clean install: one TensorFlow distribution, the README's install commands, and a
normal run free of start-up noise (issue 15, "a clean install")."""
import importlib.metadata
import os
import re
import subprocess
import sys

from tests.conftest import REPO

# Distributions that install the `tensorflow` package beside (or instead of) `tensorflow`
OTHER_TENSORFLOWS = ("tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "intel-tensorflow",
                     "tensorflow-macos", "tensorflow-aarch64", "tensorflow-rocm", "tf-nightly",
                     "tf-nightly-cpu", "tf-nightly-gpu", "tf-nightly-intel")


def _pin():
    setup = (REPO / "setup.py").read_text()
    pins = re.findall(r'"(tensorflow[a-z-]*|tf-nightly[a-z-]*|intel-tensorflow)==([0-9.]+)"',
                      setup)
    pins = [(n, v) for n, v in pins if n == "tensorflow" or n in OTHER_TENSORFLOWS]
    return setup, pins


def test_one_tensorflow_distribution_is_installed():
    providers = sorted(set(importlib.metadata.packages_distributions().get("tensorflow", [])))
    assert providers == ["tensorflow"], f"the tensorflow package comes from {providers}"
    installed = {d.metadata["Name"].lower().replace("_", "-")
                 for d in importlib.metadata.distributions()}
    assert not installed & set(OTHER_TENSORFLOWS), installed & set(OTHER_TENSORFLOWS)


def test_setup_and_readme_name_one_tensorflow_and_the_same_version():
    setup, pins = _pin()
    assert [name for name, _ in pins] == ["tensorflow"], pins
    version = pins[0][1]
    for path in ("setup.py", "BUILD", ".ci/run", "README.md", *(
            f"docs/{n}" for n in os.listdir(REPO / "docs") if n.endswith(".md"))):
        text = (REPO / path).read_text()
        assert not any(other in text for other in OTHER_TENSORFLOWS), path
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[test]"' in readme  # CPU machines
    assert f'pip install -e ".[test]" "tensorflow[and-cuda]=={version}"' in readme  # NVIDIA
    assert f"tf-keras=={version}" in setup  # tf-keras follows TensorFlow's version


NOISE = ("Could not find cuda drivers", "failed call to cuInit", "oneDNN custom operations",
         "All log messages before absl::InitializeLog", "as a built-in TF-Keras object",
         "Gradients do not exist for variables")
SCRIPT = """
import sys, tempfile
import bnas_tf
import numpy as np
import tensorflow as tf
from bnas_tf import genotypes, model_dir, models
tf.config.list_physical_devices()
x = np.random.rand(4, 32, 32, 3).astype("float32")
y = np.arange(4) % 2
# BNAS-A's reduction cells read no s1: its pre1 gets no gradient
bnas = models.build({"family": "bnas", "genotype": "bnas_a", "cells": 3, "channels": 4}, 2, 32)
bnas.compile(optimizer="sgd",
             loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
bnas.fit(x, y, batch_size=2, epochs=1, verbose=0)
# a BARS network full of shortcut (identity) ops, saved as a SavedModel
cell = ["shortcut"] * len(genotypes.dense_edges())
stages = [genotypes.BarsStage(0.5, 0, cell) for _ in range(3)]
geno = genotypes.BarsGenotype(stages=stages, reduce_cell=cell, base_channels=(8, 16, 32),
                              max_depth=1)
net = models.build({"family": "bars", "genotype": geno.to_dict()}, 2, 32)
model_dir.save_model(tempfile.mkdtemp(), net)
print("ran", file=sys.stderr)
"""


def test_a_normal_run_prints_no_start_up_noise():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("BNAS_TF_STARTUP_LOG", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ran" in result.stderr
    found = [line for line in result.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not found, "\n".join(found[:5])


TF_INFO = ("Assets written to", "Sharding callback duration", "Found untraced functions",
           "Writing fingerprint to", "Compiled the loaded model")


def test_a_training_run_prints_no_noise(cifar_dir, tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--genotype=bnas_a", "--cells=3",
         "--channels=4", "--dataset=folder", f"--data_dir={cifar_dir}", "--max_examples=32",
         "--epochs=1", "--batch_size=16", "--recipe=adam_cosine", "--progress=none",
         f"--output_dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    found = [line for line in result.stderr.splitlines()
             if any(n in line for n in NOISE + TF_INFO)]
    assert not found, "\n".join(found[:5])
    # bnas-tf's own lines stay: the data, the network and why pre1 gets no gradient
    assert "10 classes" in result.stderr and "network bnas_a" in result.stdout
    assert "no op of the genotype reads the reduction cells' pre1" in result.stderr


def test_benign_library_warnings_are_dropped_and_others_kept():
    """TensorFlow warns "Compiled the loaded model, but the compiled metrics have yet to be
    built" (twice: its logger and absl's) after saving a trained network with an auxiliary
    head; it reports nothing the run did wrong. Other warnings still print."""
    code = ("import bnas_tf, tensorflow as tf\n"
            "tf.get_logger().warning('Compiled the loaded model, but the compiled metrics "
            "have yet to be built. `model.compile_metrics` will be empty')\n"
            "tf.get_logger().warning('a real warning')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Compiled the loaded model" not in result.stderr
    assert "a real warning" in result.stderr
