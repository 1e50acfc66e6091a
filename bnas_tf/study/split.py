"""The study's data: a class-balanced held-out test split that no search or training reads.

`make_split(config, directory)` lays out, under ``directory`` (DIR/data):

* ``pool/<class>/<file>``  symlinks to the images searches and trainings may read
  (at most ``train_per_class`` per class); they read it as an image folder
  (`bnas_tf.data`, ``--dataset=folder``), whose own validation hold-out and
  search halves are taken from it;
* ``test/<class>/<file>``  symlinks to the held-out images (``test_per_class`` per
  class) - or, with ``test_dir``, nothing: the external folder is the test split;
* ``test_files.txt`` / ``pool_files.txt``  the ``<class>/<file>`` lists (the report
  cites them), and ``split.json``.

Files are drawn per class from the sorted listing with a seeded permutation
(``split_seed``), so the split is the same for every arm and seed. Searches and
trainings get a data directory holding only the pool, so they cannot read a test
image; `disjoint` checks it by file name.
"""
from __future__ import annotations

import os

import numpy as np

from bnas_tf import files, folders
from bnas_tf import model_dir as mdir

SPLIT_FILE = "split.json"
IMAGE_EXTENSIONS = folders.IMAGE_EXTENSIONS


def _classes(root):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist; pass --data_dir=PATH")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"no class folders under {root}: expected {root}/<class>/*.jpg")
    if os.path.isdir(os.path.join(root, "train")):
        raise ValueError(f"{root} holds train/ (a split layout); pass the folder of class "
                         "folders itself as --data_dir (and --test_dir for its test split)")
    return classes


def _images(directory):
    return sorted(e.name for e in os.scandir(directory)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _link(entries, source_root, target_root):
    for rel in entries:
        target = os.path.join(target_root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.symlink(os.path.abspath(os.path.join(source_root, rel)), target)
        except FileExistsError:  # a rerun, or another scale-out worker linked it first
            pass


def _write_list(path, entries):
    files.write_atomic(path, ("\n".join(entries) + "\n").encode("utf-8"))


def make_split(config, directory):
    """Create (or reuse) the split under `directory`; returns the split.json dict:
    ``pool_dir``, ``test_dir``, ``classes``, ``pool_files``/``test_files`` counts."""
    record_path = os.path.join(directory, SPLIT_FILE)
    if os.path.isfile(record_path):
        return mdir.read_json(record_path, "study split")
    root = os.path.abspath(os.path.expanduser(config.data_dir))
    classes = _classes(root)
    test_root = None
    if config.test_dir:
        test_root = os.path.abspath(os.path.expanduser(config.test_dir))
        test_classes = _classes(test_root)
        if test_classes != classes:
            raise ValueError(f"--test_dir classes ({', '.join(test_classes)}) differ from "
                             f"--data_dir classes ({', '.join(classes)})")
    pool, test = [], []
    for c in classes:
        names = _images(os.path.join(root, c))
        held = 0 if test_root else config.test_per_class
        want = held + (config.train_per_class or 0)
        if len(names) <= held or (config.train_per_class and len(names) < want):
            raise ValueError(f"class {c} has {len(names)} images in {root}; the split needs "
                             f"{want if config.train_per_class else held + 1} "
                             "(lower --test_per_class / --train_per_class)")
        order = np.random.RandomState(config.split_seed).permutation(len(names))
        picked = [f"{c}/{names[i]}" for i in order]
        test += sorted(picked[:held])
        rest = picked[held:]
        pool += sorted(rest[:config.train_per_class] if config.train_per_class else rest)
    if test_root:
        test = [f"{c}/{n}" for c in classes for n in _images(os.path.join(test_root, c))]
    pool_dir = os.path.join(directory, "pool")
    _link(pool, root, pool_dir)
    if not test_root:
        test_root = os.path.join(directory, "test")
        _link(test, root, test_root)
    _write_list(os.path.join(directory, "pool_files.txt"), pool)
    _write_list(os.path.join(directory, "test_files.txt"), test)
    record = {"source": root, "pool_dir": pool_dir, "test_dir": test_root,
              "external_test": bool(config.test_dir), "classes": classes,
              "pool_files": len(pool), "test_files": len(test)}
    files.write_json(record_path, record)
    return record


def read_list(directory, which):
    """The ``<class>/<file>`` entries of ``pool`` or ``test``."""
    with open(os.path.join(directory, f"{which}_files.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def listed_files(root):
    """Real paths of every image under an image-folder root (symlinks resolved)."""
    out = set()
    for c in _classes(root):
        folder = os.path.join(root, c)
        out.update(os.path.realpath(os.path.join(folder, n)) for n in _images(folder))
    return out


def disjoint(record):
    """True when no test image is also in the pool (compared by resolved file path)."""
    return not (listed_files(record["pool_dir"]) & listed_files(record["test_dir"]))
