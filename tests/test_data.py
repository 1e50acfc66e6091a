"""Tests for bnas_tf.data and flags.data (real CIFAR-10 folder, tiny tmp folders, mocked TFDS)."""
import hashlib
import importlib
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import data, folders


def _config(root, **kw):
    return data.DataConfig(**{"dataset": "folder", "data_dir": str(root), "max_examples": 256,
                              "batch_size": 64, **kw})


def _hashes(ds):
    return [hashlib.sha1(img.tobytes()).hexdigest()
            for images, _ in ds.as_numpy_iterator() for img in images]


def _labels(ds):
    return np.concatenate([labels for _, labels in ds.as_numpy_iterator()])


def _write_folder(root, classes=("a", "b"), per_class=3, size=32):
    rng = np.random.RandomState(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            jpg = tf.io.encode_jpeg(rng.randint(0, 256, (size, size, 3), dtype=np.uint8))
            (root / c / f"{i}.jpg").write_bytes(jpg.numpy())
    return root


def test_batch_shapes_dtypes_and_normalisation(cifar_dir):
    config = _config(cifar_dir, batch_size=100)
    info = data.dataset_info(config)
    assert (info.num_classes, info.image_size, info.recipe) == (10, 32, "cifar")
    assert info.class_names[0] == "airplane" and info.split_sizes["validation"] == 256
    batches = list(data.load(config, "validation").as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [100, 100, 56]  # eval keeps the remainder
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (256, 32, 32, 3) and images.dtype == np.float32
    assert batches[0][1].dtype == np.int32
    assert np.all(np.abs(images.mean(axis=(0, 1, 2))) < 0.25)
    assert np.all(np.abs(images.std(axis=(0, 1, 2)) - 1) < 0.25)
    train = list(data.load(config, "train").as_numpy_iterator())
    assert [len(b[1]) for b in train] == [100, 100]  # training drops the remainder


def test_capped_split_is_class_balanced(cifar_dir):
    labels = _labels(data.load(_config(cifar_dir), "train", training=False))
    assert len(labels) == 256
    assert np.bincount(labels, minlength=10).min() >= 25


def test_holdout_and_search_halves_are_disjoint(cifar_dir):
    full = _config(cifar_dir, max_examples=None)
    assert data.num_examples(full, "train") == 45000
    assert data.num_examples(full, "validation") == data.num_examples(full, "test") == 5000
    assert data.num_examples(full, "search_train") == data.num_examples(full, "search_val") == 22500
    config = _config(cifar_dir)
    train = _hashes(data.load(config, "train", training=False))
    validation = _hashes(data.load(config, "validation"))
    first = _hashes(data.load(config, "search_train", training=False))
    second = _hashes(data.load(config, "search_val"))
    assert not set(train) & set(validation)
    assert len(first) == len(second) == 128 and not set(first) & set(second)
    assert set(first) | set(second) == set(train)
    other_seed = _hashes(data.load(_config(cifar_dir, seed=1), "search_val"))
    assert set(other_seed) != set(second) and set(other_seed) <= set(train)


def test_augmentation_changes_images_and_eval_is_deterministic(cifar_dir):
    config = _config(cifar_dir, batch_size=256)
    eval_ds = data.load(config, "train", training=False)
    reference = _hashes(eval_ds)
    assert _hashes(eval_ds) == reference
    augmented = _hashes(data.load(config, "train"))
    assert len(set(augmented) & set(reference)) < 26
    plain = _hashes(data.load(_config(cifar_dir, batch_size=256, augment=False), "train"))
    assert sorted(plain) == sorted(reference) and plain != reference  # shuffled, not augmented


def test_cutout_zeroes_a_square():
    info = data.DatasetInfo(10, 32, [], {}, "cifar")
    fn = data.augment_fn(data.DataConfig(cutout=8), info, training=True)
    image = tf.fill([32, 32, 3], tf.constant(200, tf.uint8))
    for s in range(5):
        zero = np.all(fn(image, tf.constant([s, 7], tf.int64)).numpy() == 0, axis=-1)
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
        assert zero.sum() == len(rows) * len(cols)  # a filled rectangle
    assert not np.any(data.augment_fn(data.DataConfig(), info, True)(image, [0, 7]).numpy() == 0)


def test_corrupt_image_is_named_before_training_or_skipped_with_a_count(tmp_path, capfd):
    root = _write_folder(tmp_path / "ds")
    broken = root / "b" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    config = _config(root, batch_size=2, validation_fraction=0.0)
    # Refused before any batch is built (dataset_info is the first call of every run).
    with pytest.raises(ValueError, match=r"^1 corrupt or undecodable image file\(s\): "
                       rf"{broken}; .*--bad_images=skip"):
        data.dataset_info(config)
    with pytest.raises(ValueError, match="broken.jpg"):
        data.load(config, "train", training=False)
    skip = data.DataConfig(**{**config.__dict__, "bad_images": "skip"})
    assert data.dataset_info(skip).split_sizes["train"] == 6
    assert len(_labels(data.load(skip, "train", training=False))) == 6
    assert len(_labels(data.load(skip, "search_train", training=False))) == 3
    err = capfd.readouterr().err
    assert "skipping 1 undecodable image file(s) of 7 (--bad_images=skip)" in err
    assert err.count("skipping") == 1  # said once, not per split or epoch
    assert folders.undecodable_images([str(broken), str(root / "a" / "0.jpg")]) == [str(broken)]


def test_folder_with_train_and_test_dirs(tmp_path):
    _write_folder(tmp_path / "ds" / "train", per_class=10)
    _write_folder(tmp_path / "ds" / "test", per_class=2)
    config = _config(tmp_path / "ds", batch_size=4, validation_fraction=0.2)
    sizes = data.dataset_info(config).split_sizes
    assert (sizes["train"], sizes["validation"], sizes["test"]) == (16, 4, 4)
    assert sorted(_labels(data.load(config, "test"))) == [0, 0, 1, 1]


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*--data_dir"):
        data.dataset_info(_config(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images under"):
        data.dataset_info(_config(tmp_path / "empty"))
    with pytest.raises(ValueError, match="valid: cifar10, imagenet2012, imagenet100, folder"):
        data.dataset_info(data.DataConfig(dataset="mnist"))
    root = _write_folder(tmp_path / "ds", per_class=8)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load(_config(root), "dev")
    with pytest.raises(ValueError, match="batch_size 32 is larger than the train split \\(14 "):
        data.load(_config(root, batch_size=32), "train")
    assert len(list(data.load(_config(root, batch_size=32), "validation"))) == 1


def test_unprepared_tfds_fails_fast(tmp_path):
    start = time.time()
    with pytest.raises(FileNotFoundError, match="not prepared under .*--dataset=folder"):
        data.load(data.DataConfig(dataset="cifar10", data_dir=str(tmp_path)), "train")
    assert time.time() - start < 10


def test_imagenet100_class_selection():
    chosen = data.subset_classes(1000, 100)
    assert np.array_equal(chosen, data.subset_classes(1000, 100))
    assert len(np.unique(chosen)) == 100 and chosen.min() >= 0 and chosen.max() < 1000
    assert not np.array_equal(chosen, np.arange(100))
    assert not np.array_equal(chosen, data.subset_classes(1000, 100, seed=1))
    with pytest.raises(ValueError, match="1..1000"):
        data.subset_classes(1000, 1001)


@pytest.fixture()
def mocked_tfds():
    import tensorflow_datasets as tfds
    data._tfds_source.cache_clear()
    with tfds.testing.mock_data(num_examples=400), mock.patch.object(
            tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield tfds
    data._tfds_source.cache_clear()


def test_tfds_cifar10_and_imagenet100(mocked_tfds):
    config = data.DataConfig(dataset="cifar10", data_dir="/unused", batch_size=50)
    builder = mocked_tfds.builder("cifar10")
    expected = {split: [int(ex["label"]) for ex in builder.as_dataset(split=split)]
                for split in ("train", "test")}
    held = np.floor(np.bincount(expected["train"]) * 0.1 + 0.5).sum()
    sizes = data.dataset_info(config).split_sizes
    assert (sizes["train"], sizes["validation"], sizes["test"]) == (400 - held, held, 400)
    assert _labels(data.load(config, "test")).tolist() == expected["test"]
    images, _ = next(data.load(config, "train").as_numpy_iterator())
    assert images.shape == (50, 32, 32, 3)
    subset = data.DataConfig(dataset="imagenet100", data_dir="/unused", batch_size=4,
                             max_examples=8)
    info = data.dataset_info(subset)
    assert (info.num_classes, info.image_size, info.recipe) == (100, 224, "imagenet")
    images, labels = next(data.load(subset, "train").as_numpy_iterator())
    assert images.shape == (4, 224, 224, 3) and labels.max() < 100


def test_flags_config(monkeypatch):
    import flags.data as data_flags
    importlib.reload(data_flags)  # defining the flags twice must not crash
    flag_values = data_flags.FLAGS
    monkeypatch.setattr(flag_values["dataset"], "value", "folder")
    config = data_flags.data_config_from_flags(batch_size=8)
    assert (config.dataset, config.batch_size, config.cutout) == ("folder", 8, 0)


def test_large_images_use_imagenet_recipe(tmp_path):
    root = _write_folder(tmp_path / "ds", per_class=4, size=48)
    config = _config(root, batch_size=2, image_size=40, validation_fraction=0.25)
    info = data.dataset_info(config)
    assert (info.recipe, info.image_size) == ("imagenet", 40)
    assert data.dataset_info(_config(root)).image_size == 224
    evaluated = [_hashes(data.load(config, "validation")) for _ in range(2)]
    assert evaluated[0] == evaluated[1] and len(evaluated[0]) == 2
    images, _ = next(data.load(config, "train").as_numpy_iterator())
    assert images.shape == (2, 40, 40, 3) and np.isfinite(images).all()


def test_data_dir_is_stored_absolute_and_found_from_another_folder(tmp_path, monkeypatch):
    import dataclasses
    import json

    from bnas_tf import training

    _write_folder(tmp_path / "work" / "ds")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    config = data.DataConfig(dataset="folder", data_dir="ds", batch_size=2)
    assert config.data_dir == str(tmp_path / "work" / "ds")
    model = tmp_path / "work" / "model"
    model.mkdir()
    (model / training.TRAIN_CONFIG).write_text(json.dumps({"data": dataclasses.asdict(config)}))
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = training.training_data_config(str(model))
    assert again.data_dir == config.data_dir
    assert data.dataset_info(again).num_classes == 2
    # A directory that is not there is named as the path tried.
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'elsewhere' / 'gone'} does not"):
        data.dataset_info(data.DataConfig(dataset="folder", data_dir="gone"))


def test_empty_class_folder_is_refused_naming_it(tmp_path):
    root = _write_folder(tmp_path / "ds")
    (root / "ghost").mkdir()  # would silently become a third class
    with pytest.raises(ValueError, match=r"class folder .*ghost holds no images"):
        data.dataset_info(_config(root))
    only_text = _write_folder(tmp_path / "ds2")
    (only_text / "notes").mkdir()
    (only_text / "notes" / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes holds no images"):
        data.dataset_info(_config(only_text))


def test_folder_scan_reports_classes_counts_and_skipped_files_in_one_line(tmp_path, capsys):
    root = _write_folder(tmp_path / "ds", classes=("a", "b", "c"), per_class=4)
    (root / "b" / "labels.csv").write_text("x")
    (root / "c" / "Thumbs.db").write_bytes(b"\0")
    info = data.dataset_info(_config(root, validation_fraction=0.0))
    assert info.num_classes == 3
    lines = [l for l in capsys.readouterr().err.splitlines() if str(root) in l]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "3 classes" in line and "train 12 (4..4 per class)" in line
    assert "skipped 2 non-image file(s)" in line
    assert "b/labels.csv" in line and "c/Thumbs.db" in line
