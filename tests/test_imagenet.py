"""The ImageNet path end to end through the tools, on a tiny imagenet2012 that TFDS's
real builder prepared from ILSVRC-format archives (tests/imagenet_tfds.py): search with
the ImageNet stem, `bnas-d` and a BARS network trained with the ImageNet recipes,
centre-crop evaluation, export with every binary conv an LceBconv2d, ImageNet-100."""
import contextlib
import json
import pathlib
import sys
from unittest import mock

import bnas_tf  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

from bnas_tf import data, export, genotypes, model_dir, training
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import imagenet_tfds  # noqa: E402


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    data._tfds_source.cache_clear()
    root = tmp_path_factory.mktemp("imagenet2012")
    data_dir, train, val = imagenet_tfds.prepare(str(root))
    yield data_dir, train, val
    data._tfds_source.cache_clear()


def run_tool(module, *args):
    """Run tools/<module>.py's main in-process with `args` as its command line."""
    import importlib
    tool = importlib.import_module(f"tools.{module}")
    flag_values = absl_flags.FLAGS
    flag_values.unparse_flags()
    try:
        flag_values([module, *args])
        tool.main([module])
    finally:
        flag_values.unparse_flags()


class Spy:
    """Wraps module functions, recording the calls (and results) made through them."""

    def __init__(self):
        self.calls = {}
        self._stack = contextlib.ExitStack()

    def watch(self, module, name):
        original = getattr(module, name)
        calls = self.calls.setdefault(name, [])

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append((args, kwargs, result))
            return result
        self._stack.enter_context(mock.patch.object(module, name, wrapper))
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


def test_imagenet_tfds_fixture_is_the_real_builder(imagenet):
    import tensorflow_datasets as tfds
    data_dir, train, val = imagenet
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == sum(train.values())
    assert builder.info.splits["validation"].num_examples == len(val)
    config = data.DataConfig(dataset="imagenet2012", data_dir=data_dir, batch_size=4)
    info = data.dataset_info(config)
    assert (info.num_classes, info.image_size, info.recipe) == (1000, 224, "imagenet")
    labels = np.concatenate([y for _, y in data.load(config, "validation").as_numpy_iterator()])
    # TFDS's validation labels (validation_labels.txt), in the builder's record order
    assert sorted(labels.tolist()) == sorted(val)
    records = builder.as_dataset(split="validation", shuffle_files=False)
    assert labels.tolist() == [int(ex["label"]) for ex in records]


def test_imagenet100_picks_the_documented_classes_and_nothing_else(imagenet):
    data_dir, train, _ = imagenet
    chosen = data.subset_classes(1000, 100)
    # docs/data.md: the first 100 of a RandomState(0) permutation of the 1000 ids, sorted
    np.testing.assert_array_equal(chosen, np.sort(np.random.RandomState(0).permutation(1000)[:100]))
    config = data.DataConfig(dataset="imagenet100", data_dir=data_dir, batch_size=4,
                             validation_fraction=0.0)
    info = data.dataset_info(config)
    names = imagenet_tfds.synsets()
    assert info.num_classes == 100 and info.class_names == [names[c] for c in chosen]
    in_subset = {c: n for c, n in train.items() if c in set(chosen.tolist())}
    outside = {c for c in train if c not in in_subset}
    assert in_subset and outside  # the fixture has classes of both kinds
    assert info.split_sizes["train"] == sum(in_subset.values())
    labels = np.concatenate([y for _, y in
                             data.load(config, "train", training=False).as_numpy_iterator()])
    original = chosen[labels]  # remapped 0..99 back to ImageNet ids
    assert sorted(set(original.tolist())) == sorted(in_subset)
    assert not set(original.tolist()) & outside
    assert np.bincount(labels, minlength=100)[np.searchsorted(chosen, sorted(in_subset))].tolist() \
        == [in_subset[c] for c in sorted(in_subset)]


def test_imagenet_search_bnas_uses_the_imagenet_stem(imagenet, tmp_path, capsys):
    data_dir, _, _ = imagenet
    out = tmp_path / "search"
    with Spy().watch(common, "imagenet_stem") as spy:
        run_tool("search", "--method=bnas", "--dataset=imagenet2012", f"--data_dir={data_dir}",
                 "--image_size=128", "--cells=2", "--channels=4", "--epochs=1",
                 "--batch_size=8", "--progress=none", f"--output_dir={out}")
    (args, _, outputs), = spy.calls["imagenet_stem"]
    s0, s1 = tf.keras.Model(args[0], outputs)(tf.zeros([1, 128, 128, 3]))
    assert (s0.shape[1:3], s1.shape[1:3]) == ((32, 32), (16, 16))  # cells at 1/4 and 1/8
    printed = capsys.readouterr()
    assert "global batch 8, per-replica batch 8" in printed.err
    assert json.loads(printed.out.strip().splitlines()[-1])["epochs_done"] == 1
    genotype = genotypes.load(str(out / "genotype.json"))
    assert genotype.to_dict()["method"] == "bnas"
    with open(out / "search_config.json") as f:
        assert json.load(f)["data"]["dataset"] == "imagenet2012"


def _train_with_spies(data_dir, out, *args):
    with Spy().watch(training, "compile_model").watch(data, "_imagenet_augment") \
            .watch(data, "_imagenet_eval").watch(common, "imagenet_stem") as spy:
        run_tool("train", "--dataset=imagenet2012", f"--data_dir={data_dir}", "--epochs=1",
                 "--batch_size=8", "--progress=none", f"--output_dir={out}", *args)
    return spy


def _assert_colour_jitter(image_size):
    """A uniform-colour image is unchanged by crops and flips: what differs between
    two seeds of the training augmentation is the colour jitter."""
    info = data.DatasetInfo(1000, image_size, [], {}, "imagenet")
    fn = data.augment_fn(data.DataConfig(dataset="imagenet2012"), info, training=True)
    image = tf.fill([80, 60, 3], tf.constant(120, tf.uint8))
    a, b = (fn(image, tf.constant([s, 7], tf.int64)).numpy() for s in (1, 2))
    assert a.shape == (image_size, image_size, 3)
    assert a.std(axis=(0, 1)).max() < 1e-4 and np.abs(a - b).max() > 0.05


@pytest.fixture(scope="module")
def bnas_d(imagenet, tmp_path_factory):
    data_dir, _, _ = imagenet
    out = tmp_path_factory.mktemp("bnas_d") / "run"
    spy = _train_with_spies(data_dir, out, "--preset=bnas-d", "--cells=3", "--channels=8",
                            "--recipe=imagenet", "--image_size=128")  # the ImageNet stem's side
    return out, spy


def test_imagenet_train_bnas_d_with_the_imagenet_recipe(imagenet, bnas_d):
    data_dir, _, _ = imagenet
    out, spy = bnas_d
    (args, _, model), = spy.calls["compile_model"]
    _, config, optimizer = args
    assert (config.recipe, config.label_smoothing, config.schedule) == \
        ("imagenet", 0.1, "cosine_restarts")
    assert model.loss.label_smoothing == 0.1
    schedule = optimizer._get_hyper("learning_rate")
    assert isinstance(schedule, tf.keras.optimizers.schedules.CosineDecayRestarts)
    steps = 48 // 8
    assert (schedule.initial_learning_rate, schedule.first_decay_steps) == (0.1, 50 * steps)
    assert isinstance(optimizer, tf.keras.optimizers.legacy.SGD)
    assert optimizer.momentum == 0.9
    assert spy.calls["_imagenet_augment"]  # random-resized crop, flip, colour jitter
    assert spy.calls["_imagenet_eval"]     # validation / test: centre crop
    # built twice: the trained network and its one-device twin that scores it
    for _, _, (s0, s1) in spy.calls["imagenet_stem"]:
        assert tuple(s1.shape[1:3]) == (16, 16)  # 128 px -> cells at 1/8
    _assert_colour_jitter(128)
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert (metrics["num_classes"], metrics["image_size"], metrics["recipe"]) == \
        (1000, 128, "imagenet")
    assert metrics["train_examples"] == 48 and metrics["test_examples"] == 24
    lr = metrics["history"]["learning_rate"][-1]
    assert lr == pytest.approx(0.1)  # the rate epoch 1 used: the first cosine cycle's start


def test_imagenet_evaluate_uses_the_centre_crop(imagenet, bnas_d, capsys):
    out, _ = bnas_d
    with Spy().watch(data, "_imagenet_augment").watch(data, "_imagenet_eval") as spy:
        run_tool("evaluate", f"--model_dir={out}", "--split=validation")
    assert spy.calls["_imagenet_eval"] and not spy.calls["_imagenet_augment"]
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(out / "metrics.json") as f:
        trained = json.load(f)
    # imagenet2012 has no test labels: test = validation, so the scores are the same
    assert result["examples"] == 24
    assert result["top1"] == pytest.approx(trained["top1"])
    assert result["loss"] == pytest.approx(trained["loss"], rel=1e-5)


def _assert_all_bconv(out, tflite):
    counts = export.op_counts(tflite.read_bytes())
    loaded = model_dir.load_model(str(out))
    live = export.live_binary_convs(loaded)
    assert live > 0 and counts.get("LceBconv2d") == live
    return counts


def test_imagenet_export_bnas_d_every_binary_conv_is_lce_bconv(bnas_d, tmp_path, capsys):
    out, _ = bnas_d
    tflite = tmp_path / "bnas_d.tflite"
    run_tool("export", f"--model_dir={out}", f"--output={tflite}", "--samples=8")
    assert "LceBconv2d" in capsys.readouterr().out
    _assert_all_bconv(out, tflite)


@pytest.mark.slow
def test_imagenet_train_evaluate_export_bars_imagenet(imagenet, tmp_path, capsys):
    data_dir, _, _ = imagenet
    genotype = bars_models.random_genotype(1, base_channels=(8, 16, 32), max_depth=1)
    path = tmp_path / "bars.json"
    genotypes.save(genotype, str(path))
    out = tmp_path / "bars"
    spy = _train_with_spies(data_dir, out, f"--genotype={path}", "--recipe=bars_imagenet",
                            "--image_size=128")
    (args, _, model), = spy.calls["compile_model"]
    _, config, optimizer = args
    assert (config.recipe, config.cutout, config.auxiliary) == ("bars_imagenet", 0, False)
    assert isinstance(optimizer, tf.keras.optimizers.legacy.Adam)
    schedule = optimizer._get_hyper("learning_rate")
    assert isinstance(schedule, tf.keras.optimizers.schedules.CosineDecay)
    assert (schedule.initial_learning_rate, schedule.decay_steps) == (1e-3, 48 // 8)  # 1 epoch
    assert spy.calls["_imagenet_augment"] and spy.calls["_imagenet_eval"]
    (_, _, (_, s1)), = spy.calls["imagenet_stem"]
    assert tuple(s1.shape[1:3]) == (16, 16)
    capsys.readouterr()
    run_tool("evaluate", f"--model_dir={out}")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(out / "metrics.json") as f:
        assert result["top1"] == pytest.approx(json.load(f)["top1"])
    tflite = tmp_path / "bars.tflite"
    run_tool("export", f"--model_dir={out}", f"--output={tflite}", "--samples=8")
    _assert_all_bconv(out, tflite)
