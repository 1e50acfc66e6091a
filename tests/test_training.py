"""Training: recipes, schedules, losses, and one real (tiny) run that is resumed,
hits a NaN, is refused for a different spec, and is read back by evaluation."""
import glob
import importlib.util
import json
import math
import os
import pathlib

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import data, model_dir, models, recipes, training
from bnas_tf.models import presets

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3
EXAMPLES = 128
BATCH = 32
STEPS = EXAMPLES // BATCH


def tiny_spec(cells=3):
    return presets.resolve(genotype="bnas_a", cells=cells, channels=4)


# ----------------------------------------------------------------------------- recipes

def test_recipes_hold_the_papers_numbers_and_accept_overrides():
    cifar = recipes.recipe("cifar")
    assert (cifar.optimizer, cifar.schedule, cifar.learning_rate, cifar.min_learning_rate,
            cifar.momentum, cifar.weight_decay, cifar.epochs, cifar.batch_size,
            cifar.drop_path) == ("sgd", "one_cycle", 5e-2, 4e-4, 0.9, 3e-6, 600, 256, 0.2)
    imagenet = recipes.recipe("imagenet")
    assert (imagenet.schedule, imagenet.learning_rate, imagenet.min_learning_rate,
            imagenet.restart_epochs, imagenet.weight_decay, imagenet.label_smoothing,
            imagenet.epochs) == ("cosine_restarts", 0.1, 1e-5, 50, 3e-5, 0.1, 250)
    bars = recipes.recipe("bars")
    assert (bars.optimizer, bars.learning_rate, bars.min_learning_rate, bars.cutout,
            bars.auxiliary, bars.auxiliary_weight, bars.epochs) == (
        "adam", 2e-3, 0.0, 16, True, 0.4, 200)
    assert recipes.recipe("bars_imagenet").cutout == 0
    custom = recipes.recipe("cifar", learning_rate=0.01, epochs=None, batch_size=8)
    assert (custom.learning_rate, custom.epochs, custom.batch_size) == (0.01, 600, 8)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.recipe("sgdr")
    with pytest.raises(ValueError, match="unknown training option"):
        recipes.recipe("cifar", learning_rat=0.1)
    with pytest.raises(ValueError, match="min_learning_rate"):
        recipes.recipe("cifar", min_learning_rate=1.0)


def test_one_cycle_schedule_key_steps():
    config = recipes.recipe("cifar", epochs=10)
    schedule = recipes.make_schedule(config, steps_per_epoch=100)  # 1000 steps, 300 rising
    value = lambda step: float(schedule(step))  # noqa: E731
    assert value(0) == pytest.approx(4e-4)
    assert value(150) == pytest.approx((5e-2 + 4e-4) / 2)
    assert value(300) == pytest.approx(5e-2)
    assert value(650) == pytest.approx((5e-2 + 4e-4) / 2)
    assert value(1000) == pytest.approx(4e-4)
    assert value(5000) == pytest.approx(4e-4)
    rising = [value(s) for s in range(0, 301, 30)]
    falling = [value(s) for s in range(300, 1001, 70)]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)


def test_cosine_restart_schedule_key_steps():
    config = recipes.recipe("imagenet")
    schedule = recipes.make_schedule(config, steps_per_epoch=10)  # a cycle = 500 steps
    value = lambda step: float(schedule(step))  # noqa: E731
    assert value(0) == pytest.approx(0.1)
    assert value(250) == pytest.approx(1e-5 + (0.1 - 1e-5) / 2, rel=1e-4)
    assert value(499) == pytest.approx(1e-5, abs=2e-5)
    assert value(500) == pytest.approx(0.1)   # warm restart, same height (m_mul 1)
    assert value(750) == pytest.approx(value(250), rel=1e-4)  # same length (t_mul 1)
    cosine = recipes.make_schedule(recipes.recipe("bars", epochs=4), steps_per_epoch=25)
    assert float(cosine(0)) == pytest.approx(2e-3)
    assert float(cosine(50)) == pytest.approx(1e-3)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- losses

def test_auxiliary_loss_and_weight_decay_enter_the_loss():
    tf.keras.utils.set_random_seed(1)
    model = models.build(tiny_spec(), 10, 32, auxiliary=True)
    assert len(model.outputs) == 2
    kernels = training.add_weight_decay(model, 1e-2)
    names = [k.name for k in kernels]
    assert names and all("kernel" in n for n in names)
    assert not any("gamma" in n or "beta" in n or "bias" in n for n in names)
    config = recipes.recipe("bars", auxiliary_weight=0.4)
    training.compile_model(model, config, tf.keras.optimizers.legacy.Adam(1e-3))
    x = tf.random.normal([8, 32, 32, 3], seed=2)
    y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    logits, aux = model(x, training=False)
    ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    decay = 0.5 * 1e-2 * sum(float(tf.reduce_sum(k ** 2)) for k in kernels)
    expected = float(ce(y, logits)) + 0.4 * float(ce(y, aux)) + decay
    result = model.evaluate(x, (y, y), batch_size=8, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected, rel=1e-4)
    assert not any(k.startswith("aux") and "top" in k for k in result)  # metrics: main head


def test_label_smoothing_raises_the_loss_of_confident_predictions():
    logits = tf.constant([[10.0, 0.0, 0.0]])
    plain = float(training.CrossEntropy()(tf.constant([0]), logits))
    smooth = float(training.CrossEntropy(0.1)(tf.constant([0]), logits))
    expected = -(0.9 + 0.1 / 3) * tf.nn.log_softmax(logits)[0, 0] \
        - (0.1 / 3) * tf.reduce_sum(tf.nn.log_softmax(logits)[0, 1:])
    assert smooth == pytest.approx(float(expected), rel=1e-5) and smooth > plain


# ----------------------------------------------------------------------------- a real run

class Probe(tf.keras.callbacks.Callback):
    """Records epochs run, the starting iteration, the loss on a fixed batch before and
    after training, and poisons the classifier with NaN at `nan_epoch`."""

    def __init__(self, images, labels, nan_epoch=None):
        super().__init__()
        self.images, self.labels, self.nan_epoch = images, labels, nan_epoch
        self.epochs, self.start_iteration, self.losses = [], None, []

    def _loss(self):
        logits = self.model(self.images, training=True)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return float(training.CrossEntropy()(self.labels, logits))

    def on_train_begin(self, logs=None):  # train() calls fit once per epoch
        if self.start_iteration is None:
            self.start_iteration = int(self.model.optimizer.iterations)
            self.losses.append(self._loss())

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        if epoch == self.nan_epoch:
            kernel = self.model.get_layer("classifier").kernel
            kernel.assign(tf.fill(kernel.shape, float("nan")))

    def on_train_end(self, logs=None):
        self.losses[1:] = [self._loss()]


@pytest.fixture(scope="module")
def data_config(cifar_dir):
    return data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=EXAMPLES,
                           augment=False)


@pytest.fixture(scope="module")
def fixed_batch(data_config):
    images, labels = next(iter(data.load(data_config, "train", training=False).unbatch()
                               .batch(EXAMPLES)))
    return images, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_config, fixed_batch):
    out = str(tmp_path_factory.mktemp("run") / "model")
    config = recipes.recipe("adam_cosine", learning_rate=2e-3, epochs=EPOCHS,
                             batch_size=BATCH, validation_freq=0, verbose=0)
    probe = Probe(*fixed_batch)
    metrics = training.train(tiny_spec(), data_config, config, out, callbacks=[probe])
    return out, metrics, probe


def test_training_lowers_the_loss(trained):
    _, metrics, probe = trained
    before, after = probe.losses
    assert after < before - 0.05, f"loss on the training images {before:.3f} -> {after:.3f}"
    assert probe.epochs == list(range(EPOCHS)) and probe.start_iteration == 0
    assert len(metrics["history"]["loss"]) == EPOCHS


def test_run_writes_model_dir_and_evaluate_reads_it_back(trained, data_config):
    out, metrics, _ = trained
    for key in ("top1", "top5", "loss", "params", "flops", "biops", "equivalent_ops",
                "epochs", "dataset", "spec"):
        assert key in metrics, key
    assert metrics["epochs"] == EPOCHS and metrics["dataset"] == "folder"
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert metrics["params"] > 0
    with open(model_dir.path(out, model_dir.METRICS)) as f:
        assert json.load(f)["top1"] == metrics["top1"]
    assert os.path.isfile(model_dir.path(out, model_dir.WEIGHTS))
    spec, num_classes, image_size, record = model_dir.read_spec(out)
    assert (spec, num_classes, image_size, record["dataset"]) == (tiny_spec(), 10, 32, "folder")

    result = training.evaluate(out, data_config, split="test")
    assert result["top1"] == pytest.approx(metrics["top1"], abs=1e-6)
    assert result["loss"] == pytest.approx(metrics["loss"], rel=1e-4)
    with open(model_dir.path(out, "eval_test.json")) as f:
        assert json.load(f)["top1"] == result["top1"]


def test_saved_model_serves_the_trained_network(trained, fixed_batch):
    out, _, _ = trained
    assert os.path.isfile(model_dir.path(out, model_dir.SAVED_MODEL + "/saved_model.pb"))
    images = fixed_batch[0][:8]
    served = tf.saved_model.load(model_dir.path(out, model_dir.SAVED_MODEL))
    logits = list(served.signatures["serving_default"](images).values())[0]
    expected = model_dir.load_model(out)(images, training=False)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_tensorboard_logs_hold_the_learning_rate(trained):
    out, metrics, _ = trained
    events = glob.glob(os.path.join(out, model_dir.LOGS, "train", "events.out.tfevents.*"))
    assert events
    lrs = [value for _, value in sorted(  # one events file per epoch: order by step
        (event.step, tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value)
        for path in events for event in tf.compat.v1.train.summary_iterator(path)
        for v in event.summary.value if v.tag == "epoch_learning_rate")]
    assert len(lrs) == EPOCHS
    # the rate each epoch USED (its first step's), not the next epoch's (issue 14, item 4)
    used = [2e-3 * 0.5 * (1 + math.cos(math.pi * e / EPOCHS)) for e in range(EPOCHS)]
    assert [float(v) for v in lrs] == pytest.approx(used, rel=1e-4)
    assert metrics["history"]["learning_rate"] == pytest.approx(used, rel=1e-4)


def test_evaluate_tool_prints_and_writes(trained, capsys):
    out, metrics, _ = trained
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.FLAGS(["evaluate.py", f"--model_dir={out}", "--split=test"])
    try:
        tool.main(["evaluate.py"])  # no --dataset: the data the model was trained with
    finally:
        tool.FLAGS.unparse_flags()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["top1"] == pytest.approx(metrics["top1"], abs=1e-6)


def test_evaluate_tool_refuses_a_strategy_it_cannot_honour(trained):
    from absl import app
    out, _, _ = trained
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.FLAGS(["evaluate.py", f"--model_dir={out}", "--strategy=mirrored"])
    try:
        with pytest.raises(app.UsageError, match="one device"):
            tool.main(["evaluate.py"])
    finally:
        tool.FLAGS.unparse_flags()


def test_different_spec_is_refused_and_nothing_is_touched(trained, data_config):
    out, _, _ = trained
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**"), recursive=True)}
    config = recipes.recipe("adam_cosine", epochs=EPOCHS + 1, batch_size=BATCH,
                             validation_freq=0, verbose=0)
    with pytest.raises(ValueError, match="holds a different run"):
        training.train(tiny_spec(cells=4), data_config, config, out)
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**"), recursive=True)}
    assert after == before


def test_resume_continues_then_nan_stops_keeping_checkpoints(trained, data_config, fixed_batch):
    """Rerun with more epochs: starts after the last completed epoch with the optimizer
    state; a NaN in the last epoch raises naming it and keeps the earlier checkpoints."""
    out, metrics, _ = trained
    config = recipes.recipe("adam_cosine", learning_rate=2e-3, epochs=EPOCHS + 2,
                             batch_size=BATCH, validation_freq=0, verbose=0)
    probe = Probe(*fixed_batch, nan_epoch=EPOCHS + 1)
    with pytest.raises(FloatingPointError, match=f"epoch {EPOCHS + 2}"):
        training.train(tiny_spec(), data_config, config, out, callbacks=[probe])
    assert probe.epochs == [EPOCHS, EPOCHS + 1]
    assert probe.start_iteration == EPOCHS * STEPS
    latest = tf.train.latest_checkpoint(model_dir.path(out, model_dir.CKPT))
    assert latest.endswith(f"ckpt-{EPOCHS + 1}")
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE") == EPOCHS + 1
    assert reader.get_tensor("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE") == (EPOCHS + 1) * STEPS
    weights = [reader.get_tensor(k) for k, _ in tf.train.list_variables(latest)
               if k.startswith("model_weights/")]
    assert weights and all(np.isfinite(w).all() for w in weights)
    with open(model_dir.path(out, model_dir.METRICS)) as f:
        assert json.load(f)["epochs"] == metrics["epochs"]  # untouched by the failed run
