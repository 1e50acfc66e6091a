"""Image folders: scanning a ``{class}/`` or ``{train,val|validation,test}/{class}/``
tree into file paths and labels per pool, and finding image files that cannot be read
or decoded (refused or skipped, ``bad_images``). bnas_tf.data turns a scanned folder
into a source of its input pipelines.
"""
import os
import sys

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BAD_IMAGES = ("error", "skip")


def _image_files(directory):
    """(sorted image file names, sorted names of the other files) of one class folder."""
    files = [e.name for e in os.scandir(directory) if e.is_file()]
    images = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return images, sorted(set(files) - set(images))


def _class_dirs(directory):
    return sorted(e.name for e in os.scandir(directory)
                  if e.is_dir() and not e.name.startswith("."))


def _folder_line(root, classes, pools, skipped):
    """One line: classes, images per pool (fewest..most per class), skipped files."""
    counts = []
    for pool, labels in pools.items():
        per_class = np.bincount(labels, minlength=len(classes))
        counts.append(f"{pool} {len(labels)} ({per_class.min()}..{per_class.max()} per class)"
                      if pool == "train" else f"{pool} {len(labels)}")
    line = f"data: {root}: {len(classes)} classes, images found: {', '.join(counts)}"
    if skipped:
        shown = ", ".join(os.path.relpath(p, root) for p in skipped[:3])
        more = f", +{len(skipped) - 3} more" if len(skipped) > 3 else ""
        line += (f"; skipped {len(skipped)} non-image file(s) (not "
                 f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}): {shown}{more}")
    return line


def scan(root):
    """Scan `root` ({class}/ or {train,val|validation,test}/{class}/ image folders).

    Returns (sorted class names, {pool: object array of image paths}, {pool: int32
    labels}), pools 'train' and, when `root` has them, 'validation' and 'test'.
    Prints one line to stderr: classes, image counts and skipped non-image files.
    Raises FileNotFoundError when there are no images, ValueError naming the folder of
    an empty class (it would silently count as a class) or of a class only a val/test
    folder has."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data directory {root} does not exist; pass --data_dir=PATH")
    layout = {"train": os.path.join(root, "train")}
    if os.path.isdir(layout["train"]):
        for pool, dirs in (("validation", ("val", "validation")), ("test", ("test",))):
            found = [os.path.join(root, d) for d in dirs if os.path.isdir(os.path.join(root, d))]
            if found:
                layout[pool] = found[0]
    else:
        layout = {"train": root}
    classes = _class_dirs(layout["train"])
    index = {c: i for i, c in enumerate(classes)}
    paths, pools, skipped = {}, {}, []
    for pool, directory in layout.items():
        files, labels = [], []
        for c in _class_dirs(directory):
            if c not in index:
                raise ValueError(f"class dir {os.path.join(directory, c)} has no counterpart in "
                                 f"{layout['train']}")
            names, others = _image_files(os.path.join(directory, c))
            skipped += [os.path.join(directory, c, f) for f in others]
            if not names:
                raise ValueError(f"class folder {os.path.join(directory, c)} holds no images "
                                 f"(*.jpg|jpeg|png); remove it or add its images")
            files += [os.path.join(directory, c, f) for f in names]
            labels += [index[c]] * len(names)
        paths[pool], pools[pool] = np.array(files, dtype=object), np.array(labels, np.int32)
    if not classes or not len(pools["train"]):
        raise FileNotFoundError(f"no images under {root}: expected {root}/<class>/*.jpg|jpeg|png "
                                f"or {root}/train/<class>/...")
    print(_folder_line(root, classes, pools, skipped), file=sys.stderr, flush=True)
    return classes, paths, pools


_DECODES = {}  # image path -> decodes (bool); each file is checked once per process


def undecodable_images(paths):
    """The paths among `paths` (image files) that cannot be read or decoded as an image,
    sorted. Each file is decoded once per process (in parallel, tf.data)."""
    todo = [p for p in dict.fromkeys(map(str, paths)) if p not in _DECODES]
    if todo:
        def size(path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False)
            return path, tf.shape(image)[0]
        good = tf.data.Dataset.from_tensor_slices(todo).map(
            size, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False).ignore_errors().batch(4096)
        decoded = {p.decode() for batch, _ in good.as_numpy_iterator() for p in batch}
        _DECODES.update((p, p in decoded) for p in todo)
    return sorted(p for p in map(str, paths) if not _DECODES[p])


def without_bad_images(source, config, pool, idx):
    """(pool, idx) minus undecodable files (config.bad_images='skip', said once on stderr),
    or a one-line ValueError naming them ('error'). `source` is a bnas_tf.data source
    (read_files, records, pools): image folders only, TFDS data
    is validated when prepared."""
    if not source.read_files or not len(idx):
        return pool, idx
    if config.bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, "
                         f"got {config.bad_images!r}")
    paths = source.records(pool, idx, source.pools[pool])
    files = [p.decode() for batch in paths.map(lambda ref, label, name: ref).batch(65536)
             .as_numpy_iterator() for p in batch]
    bad = undecodable_images(files)
    if not bad:
        return pool, idx
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if config.bad_images == "error":
        raise ValueError(f"{len(bad)} corrupt or undecodable image file(s): {listed}; "
                         "remove or replace them, or pass --bad_images=skip to leave them out")
    key = (pool, tuple(bad))
    if key not in _SKIP_REPORTED:
        _SKIP_REPORTED.add(key)
        print(f"skipping {len(bad)} undecodable image file(s) of {len(files)} "
              f"(--bad_images=skip): {listed}", file=sys.stderr, flush=True)
    bad = set(bad)
    return pool, np.array([i for i, f in zip(idx, files) if f not in bad], dtype=idx.dtype)


_SKIP_REPORTED = set()
