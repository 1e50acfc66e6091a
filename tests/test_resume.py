"""A resumed tools/train.py run equals the uninterrupted one bit for bit, and keeps its
full history (issue 14, item 3): each epoch reads epoch-seeded data (shuffle and
augmentation) and drop-path masks carry no random state."""
import json
import os

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import data, recipes, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import presets

EPOCHS = 3


class Interrupt(tf.keras.callbacks.Callback):
    """Ctrl-C at the end of `epoch` (after its checkpoint) or after `batch` of it."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch == self.epoch:
            raise KeyboardInterrupt


def checkpoint_tensors(directory):
    latest = tf.train.latest_checkpoint(os.path.join(directory, mdir.CKPT))
    reader = tf.train.load_checkpoint(latest)
    return {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(latest)
            if k.startswith(("model_weights/", "optimizer/", "epoch/"))}


def run(directory, cifar_dir, callbacks=(), epochs=EPOCHS):
    # cifar recipe: one-cycle SGD, drop-path 0.2 (raised over the epochs); augmentation on
    spec = presets.resolve(genotype="bnas_a", cells=3, channels=4)
    config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=20,
                             image_size=16, augment=True)
    train = recipes.recipe("cifar", epochs=epochs, batch_size=4, validation_freq=1, verbose=0)
    return training.train(spec, config, train, str(directory), callbacks=list(callbacks))


def compare_runs(straight_dir, resumed_dir, straight, resumed, epochs):
    want, got = checkpoint_tensors(straight_dir), checkpoint_tensors(resumed_dir)
    assert sorted(want) == sorted(got) and len(want) > 50
    differ = [k for k in want if not np.array_equal(want[k], got[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ, e.g. {differ[:3]}"
    assert resumed["history"] == straight["history"]
    assert len(resumed["history"]["loss"]) == len(resumed["history"]["val_loss"]) == epochs
    assert (resumed["top1"], resumed["loss"]) == (straight["top1"], straight["loss"])
    saved = json.loads((resumed_dir / mdir.METRICS).read_text())
    assert saved["history"] == straight["history"]


def test_mid_epoch_interrupt_resumes_bit_identical(tmp_path, cifar_dir):
    straight = run(tmp_path / "straight", cifar_dir, epochs=2)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after batch 1 of epoch 1
        run(tmp_path / "resumed", cifar_dir, [Interrupt(1, batch=1)], epochs=2)
    resumed = run(tmp_path / "resumed", cifar_dir, epochs=2)
    compare_runs(tmp_path / "straight", tmp_path / "resumed", straight, resumed, 2)


@pytest.mark.slow
def test_interrupted_runs_resume_bit_identical_with_the_full_history(tmp_path, cifar_dir):
    straight = run(tmp_path / "straight", cifar_dir)
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # between epochs: after epoch 0's checkpoint
        run(resumed_dir, cifar_dir, [Interrupt(0)])
    with pytest.raises(KeyboardInterrupt):  # mid-epoch: after batch 1 of epoch 2
        run(resumed_dir, cifar_dir, [Interrupt(2, batch=1)])
    history = json.loads((resumed_dir / training.HISTORY).read_text())
    assert [e["epoch"] for e in history] == [0, 1]
    resumed = run(resumed_dir, cifar_dir)

    compare_runs(tmp_path / "straight", resumed_dir, straight, resumed, EPOCHS)


KILL_SCRIPT = """
import os, signal, sys
import bnas_tf
import tensorflow as tf
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv[0] else ".")
from tests.test_resume import run

class Kill(tf.keras.callbacks.Callback):  # kill -9 after batch 1 of epoch 1
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

import pathlib
kill = sys.argv[3] == "kill"
run(pathlib.Path(sys.argv[1]), sys.argv[2], [Kill()] if kill else [], epochs=2)
print("DONE")
"""


@pytest.mark.slow
def test_kill_9_mid_epoch_then_a_fresh_process_resumes_bit_identical(tmp_path, cifar_dir):
    """The uninterrupted and the killed-then-resumed runs each in fresh processes."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def proc(directory, mode):
        return subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(directory), str(cifar_dir),
                               mode], cwd=repo, capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, PYTHONPATH=repo))
    straight = proc(tmp_path / "straight", "run")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = proc(tmp_path / "resumed", "kill")
    assert killed.returncode == -9 and "DONE" not in killed.stdout
    resumed = proc(tmp_path / "resumed", "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = [json.loads((tmp_path / d / mdir.METRICS).read_text())
               for d in ("straight", "resumed")]
    compare_runs(tmp_path / "straight", tmp_path / "resumed", *metrics, 2)
