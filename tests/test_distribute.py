"""Distribution strategies: naming, chief logic, mirrored training on two logical CPUs
and two local worker processes under MultiWorkerMirroredStrategy (subprocesses, since
devices and collectives must be configured before TensorFlow starts)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import bnas_tf  # noqa: F401
import pytest

from bnas_tf import distribute

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300

TRAIN_SCRIPT = """
import json, os, sys
import bnas_tf
import tensorflow as tf
if os.environ.get("LOGICAL_CPUS"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
from bnas_tf import data, training
from bnas_tf.models import presets
strategy = training.make_strategy(sys.argv[2])
spec = presets.resolve(genotype="bnas_a", cells=3, channels=4)
config = data.DataConfig(dataset="folder", data_dir=sys.argv[3], max_examples=64, augment=False)
train = training.recipe("adam_cosine", epochs=1, batch_size=16, validation_freq=0, verbose=0)
metrics = training.train(spec, config, train, sys.argv[1], strategy=strategy)
print("RESULT " + json.dumps({"replicas": metrics["replicas"], "loss": metrics["history"]["loss"],
                              "top1": metrics["top1"]}))
"""


def run_script(args, env, timeout=TIMEOUT):
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(proc, timeout=TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"training subprocess timed out:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def base_env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path / "tmp"))
    env.pop("TF_CONFIG", None)
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return env


def test_make_strategy_names_and_errors(monkeypatch):
    import tensorflow as tf
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    assert distribute.make_strategy(None) is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")


def _fake_strategy(task_type, task_id, cluster):
    spec = types.SimpleNamespace(as_dict=lambda: cluster)
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: spec)
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes_the_real_directory(tmp_path):
    workers = {"worker": ["a:1", "b:2"]}
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert distribute.is_chief(types.SimpleNamespace())
    assert distribute.is_chief(_fake_strategy("worker", 0, workers))
    assert not distribute.is_chief(_fake_strategy("worker", 1, workers))
    assert distribute.is_chief(_fake_strategy("chief", 0, with_chief))
    assert not distribute.is_chief(_fake_strategy("worker", 0, with_chief))
    real = str(tmp_path / "run")
    dirs = distribute.WorkerDirs(_fake_strategy("worker", 1, workers))
    temp = dirs.path(real)
    assert temp != real and not temp.startswith(real)
    os.makedirs(temp)
    dirs.cleanup()
    assert not os.path.exists(temp)
    assert distribute.WorkerDirs(_fake_strategy("worker", 0, workers)).path(real) == real


def test_mirrored_training_on_two_logical_cpus(tmp_path, cifar_dir):
    env = dict(base_env(tmp_path), LOGICAL_CPUS="2")
    out = tmp_path / "mirrored"
    result = result_of(run_script([str(out), "mirrored", str(cifar_dir)], env))
    assert result["replicas"] == 2
    assert all(v == v for v in result["loss"])  # finite, not NaN
    with open(out / "metrics.json") as f:
        assert json.load(f)["replicas"] == 2


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together(tmp_path, cifar_dir):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    out = tmp_path / "multi"
    procs = []
    for index in range(2):
        env = base_env(tmp_path)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})
        procs.append(run_script([str(out), "multi_worker", str(cifar_dir)], env))
    try:
        results = [result_of(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["top1"] == results[1]["top1"]  # one model, evaluated together
    with open(out / "metrics.json") as f:
        assert json.load(f)["replicas"] == 2
    assert (out / "weights.h5").is_file() and (out / "ckpt").is_dir()
    assert not os.listdir(tmp_path / "tmp"), "the non-chief left its temporary files"


# ------------------------------------------------ remainder batches and reported scores

TF_BUG_SCRIPT = """
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(12, 3),
        tf.keras.layers.BatchNormalization(), tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(2)])
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x, y = np.zeros((5, 8, 8, 3), np.float32), np.zeros((5,), np.int32)
try:  # 5 images at batch 4: the last batch gives replica 1 no image
    model.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
    print("RESULT finished")
except tf.errors.InvalidArgumentError as e:
    print("RESULT crashed")
"""


@pytest.mark.skipif(os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0", reason="oneDNN is off")
def test_documents_the_tensorflow_bug_onednn_conv_on_an_empty_replica_batch(tmp_path):
    """Plain TensorFlow, no bnas_tf: a remainder batch smaller than the replica count
    crashes (oneDNN's conv given an empty batch returns its input's channels). If this
    test fails, TensorFlow fixed it and bnas_tf's padding / one-device scoring can be
    revisited; with TF_ENABLE_ONEDNN_OPTS=0 the same script finishes."""
    def outcome(env):
        proc = subprocess.run([sys.executable, "-c", TF_BUG_SCRIPT], capture_output=True,
                              text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
        return [line for line in proc.stdout.splitlines() if line.startswith("RESULT")][-1]
    env = base_env(tmp_path)
    assert outcome(env) == "RESULT crashed"
    assert outcome(dict(env, TF_ENABLE_ONEDNN_OPTS="0")) == "RESULT finished"


REMAINDER_SCRIPT = """
import json, sys
import bnas_tf
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from bnas_tf import data, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import presets
out, strategy, data_dir = sys.argv[1:4]
spec = presets.resolve(genotype="bnas_a", cells=3, channels=4)
config = data.DataConfig(dataset="folder", data_dir=data_dir, max_examples=5, image_size=16,
                         augment=False)
assert data.num_examples(config, "test") == 5, data.num_examples(config, "test")
train = training.recipe("adam_cosine", epochs=1, batch_size=4, verbose=0)
metrics = training.train(spec, config, train, out, strategy=training.make_strategy(strategy))
# what the saved model scores, on one device, image by image
model = mdir.load_model(out)
images, labels = zip(*data.load(config, "test", training=False).unbatch())
logits = model(tf.stack(images), training=False)
labels = tf.stack(labels)
ce = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
top1 = tf.reduce_mean(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels, tf.float32))
print("RESULT " + json.dumps({"replicas": metrics["replicas"], "loss": metrics["loss"],
                              "top1": metrics["top1"], "val_loss": metrics["history"]["val_loss"],
                              "saved_loss": float(tf.reduce_mean(ce)), "saved_top1": float(top1),
                              "count": int(labels.shape[0])}))
"""


def test_mirrored_run_with_a_remainder_reports_the_saved_models_scores(tmp_path, cifar_dir):
    """2 replicas, 5 test images at batch 4 (last batch: 1 image for 2 replicas): used to
    crash; now the run finishes and metrics.json holds what weights.h5 scores on one
    device over all 5 images (not the replicas' own BatchNorm statistics)."""
    env = dict(base_env(tmp_path), LOGICAL_CPUS="2")
    proc = subprocess.Popen([sys.executable, "-c", REMAINDER_SCRIPT, str(tmp_path / "m"),
                             "mirrored", str(cifar_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = result_of(proc)
    assert result["replicas"] == 2 and result["count"] == 5
    assert result["loss"] == pytest.approx(result["saved_loss"], rel=1e-5, abs=1e-6)
    assert result["top1"] == pytest.approx(result["saved_top1"], abs=1e-6)
    # validation (the same 5 images here: no separate test split) scores the saved model too
    assert result["val_loss"][-1] == pytest.approx(result["saved_loss"], rel=1e-5, abs=1e-6)
