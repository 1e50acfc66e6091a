"""A tiny ImageNet 2012 prepared by TFDS's own imagenet2012 builder, for tests.

`prepare(root)` writes ILSVRC2012_img_train.tar (one inner tar per synset, as the
real archive) and ILSVRC2012_img_val.tar (ILSVRC2012_val_XXXXXXXX.JPEG files, labelled
by TFDS's own validation_labels.txt), then runs the real builder's
download_and_prepare with that manual_dir: exactly what `tfds build imagenet2012
--manual_dir=...` does, so the tests read TFDS's real splits, features and decoding.
"""
import io
import os
import tarfile

import bnas_tf  # noqa: F401  (before TensorFlow)
import numpy as np

from bnas_tf import data

NUM_CLASSES = 1000


def synsets():
    """The 1000 ImageNet synsets in TFDS label order."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    path = imagenet_common.label_names_file()
    with open(os.fspath(path)) as f:
        names = f.read().split()
    assert len(names) == NUM_CLASSES, tfds
    return names


def validation_synsets():
    """Labels of ILSVRC2012_val_00000001.JPEG, ... in order (TFDS's file)."""
    import tensorflow_datasets as tfds
    path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    with open(os.fspath(path)) as f:
        return f.read().split()


def _jpeg(rng, height, width, label):
    """A JPEG whose colour depends on the class (so a network can learn something)."""
    import tensorflow as tf
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    noise = rng.normal(0, 30, (height, width, 3))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def chosen_classes(in_subset=4, outside=2):
    """Class ids of the training archive: `in_subset` ImageNet-100 classes and
    `outside` classes that are not in ImageNet-100."""
    subset = data.subset_classes(NUM_CLASSES, 100)
    others = np.setdiff1d(np.arange(NUM_CLASSES), subset)
    return sorted(int(c) for c in np.concatenate([subset[:in_subset], others[:outside]]))


def prepare(root, per_class=8, validation=24, size=(72, 96), seed=0):
    """Build the tiny dataset under root/tfds (data_dir) from root/manual; returns
    (data_dir, {class id: train images}, [validation class ids])."""
    import tensorflow_datasets as tfds
    rng = np.random.default_rng(seed)
    names = synsets()
    manual = os.path.join(root, "manual")
    os.makedirs(manual, exist_ok=True)
    train = {c: per_class for c in chosen_classes()}
    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c, count in train.items():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(count):
                    h, w = size if i % 2 else size[::-1]  # portrait and landscape
                    _add(tar, f"{names[c]}_{i}.JPEG", _jpeg(rng, h, w, c))
            _add(outer, f"{names[c]}.tar", inner.getvalue())
    val_names = validation_synsets()[:validation]
    index = {n: i for i, n in enumerate(names)}
    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i, synset in enumerate(val_names):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, *size, index[synset]))
    data_dir = os.path.join(root, "tfds")
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return data_dir, train, [index[n] for n in val_names]
