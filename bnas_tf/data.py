"""Input pipelines: CIFAR-10 / ImageNet (TFDS), an ImageNet-100 subset, and image folders.

Every source is reduced to per-split label arrays ("pools"); all split logic (validation
hold-out, search halves, class subsets, the max_examples cap) is index arithmetic on those
arrays, so it is deterministic, cheap and identical for every source. Image folders are
scanned and their undecodable files found by bnas_tf.folders.
"""
import dataclasses
import functools
import os

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf

from bnas_tf import folders

DATASETS = ("cifar10", "imagenet2012", "imagenet100", "folder")
SPLITS = ("train", "validation", "test", "search_train", "search_val")
TFDS_POOLS = {"cifar10": ("train", "test"), "imagenet2012": ("train", "validation")}
MEAN_STD = {"cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
CACHE_LIMIT_BYTES = 2 * 1024 ** 3  # decoded uint8 splits below this are cached in memory
HOLDOUT_SEED = 0   # the validation hold-out does not move with config.seed
SUBSET_SEED = 0    # nor does the ImageNet-100 class subset
EVAL_CROP = 0.875  # ImageNet eval: resize shorter side to size / 0.875, centre crop
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class DataConfig:
    dataset: str = "cifar10"       # 'cifar10' | 'imagenet2012' | 'imagenet100' | 'folder'
    data_dir: str | None = None    # TFDS data_dir, or the image-folder root for 'folder'
    batch_size: int = 64
    image_size: int | None = None  # None: 32 for CIFAR-like data, 224 otherwise
    max_examples: int | None = None  # class-balanced cap on every split, for smoke runs
    cutout: int = 0                # cutout length in pixels, 0 = off
    augment: bool = True           # training-time augmentation on the train splits
    cache: bool | None = None      # None = cache decoded images when the split fits (< 2 GiB)
    seed: int = 0
    validation_fraction: float = 0.1  # per-class hold-out of train when there is no own val
    download: bool = False
    num_subset_classes: int = 100  # for imagenet100
    bad_images: str = "error"      # image folders: 'error' (refuse) or 'skip' undecodable files
    data_service: str | None = None  # tf.data service dispatcher (grpc://HOST:PORT) that
    #                                  decodes and augments the training splits

    def __post_init__(self):
        # Absolute, so a config stored in a model or search directory (train_config.json,
        # metrics.json) still points at the data when read from another working directory.
        if self.data_dir:
            self.data_dir = os.path.abspath(os.path.expanduser(str(self.data_dir)))


@dataclasses.dataclass
class DatasetInfo:
    num_classes: int
    image_size: int
    class_names: list
    split_sizes: dict  # split -> number of examples after the max_examples cap
    recipe: str = "cifar"  # preprocessing recipe: 'cifar' or 'imagenet'


@dataclasses.dataclass
class _Source:
    name: str
    class_names: list
    pools: dict          # pool name -> int32 labels (-1 = class not used)
    recipe: str
    image_size: int      # default image size
    pixels: int          # estimated decoded pixels per image (cache decision)
    records: object      # (pool, sorted indices, pool labels) -> Dataset of (ref, label, name)
    read_files: bool     # ref is a file path (True) or encoded bytes (False)


# ----------------------------------------------------------------------------- sources

@functools.lru_cache(maxsize=8)
def _folder_source(root, name="folder"):
    """The source of an image-folder tree (bnas_tf.folders.scan: prints one line, raises
    on missing or empty folders). Its first training image sets the default image size
    (32 when it is 32 x 32, else 224) and the recipe ('cifar' for a 32 x 32 'folder',
    else 'imagenet')."""
    classes, paths, pools = folders.scan(root)
    first = tf.io.decode_image(tf.io.read_file(paths["train"][0]), channels=3,
                               expand_animations=False).shape
    small = tuple(first[:2]) == (32, 32)
    recipe = "cifar" if small and name == "folder" else "imagenet"

    def records(pool, idx, labels):
        files = paths[pool][idx].astype(str)
        return tf.data.Dataset.from_tensor_slices((files, labels[idx], files))

    return _Source(name, classes, pools, recipe, 32 if small else 224,
                   int(first[0]) * int(first[1]), records, True)


@functools.lru_cache(maxsize=8)
def _tfds_source(name, data_dir, download):
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            where = data_dir or os.path.dirname(os.path.dirname(builder.data_dir))
            raise FileNotFoundError(
                f"TFDS dataset {name} is not prepared under {where}; use "
                f"--dataset=folder --data_dir=PATH for an image folder (or --download)")
        builder.download_and_prepare()
    pools = {pool: _tfds_labels(builder, pool) for pool in TFDS_POOLS[name]}

    def records(pool, idx, labels):
        ds = builder.as_dataset(split=pool, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.enumerate()
        if len(idx) < len(labels):
            mask = np.zeros(len(labels), bool)
            mask[idx] = True
            mask = tf.constant(mask)
            ds = ds.filter(lambda i, ex: mask[i]).take(len(idx))
        labels = tf.constant(labels)
        return ds.map(lambda i, ex: (ex["image"], labels[i], tf.strings.join(
            [f"{name}/{pool}[", tf.strings.as_string(i), "]"])))

    small = name == "cifar10"
    return _Source(name, builder.info.features["label"].names, pools,
                   "cifar" if small else "imagenet", 32 if small else 224,
                   1024 if small else 400 * 350, records, False)


def _tfds_labels(builder, pool):
    """Labels of a TFDS split in as_dataset(shuffle_files=False) order; cached beside the data."""
    import tensorflow_datasets as tfds
    path = os.path.join(builder.data_dir, f"bnas_labels_{pool}.npy")
    if os.path.exists(path):
        return np.load(path)
    ds = builder.as_dataset(split=pool, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    batches = ds.map(lambda ex: ex["label"]).batch(8192).as_numpy_iterator()
    labels = np.concatenate(list(batches)).astype(np.int32)
    try:
        np.save(path, labels)
    except OSError:
        pass
    return labels


def subset_classes(num_classes, num_subset, seed=SUBSET_SEED):
    """Sorted class ids of a deterministic num_subset-class subset (seeded permutation)."""
    if not 0 < num_subset <= num_classes:
        raise ValueError(f"num_subset_classes {num_subset} must be in 1..{num_classes}")
    return np.sort(np.random.RandomState(seed).permutation(num_classes)[:num_subset])


def _with_subset(source, num_subset):
    keep = subset_classes(len(source.class_names), num_subset)
    remap = np.full(len(source.class_names), -1, np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    pools = {pool: remap[labels] for pool, labels in source.pools.items()}
    return dataclasses.replace(source, name=f"{source.name}[{num_subset} classes]",
                               class_names=[source.class_names[k] for k in keep], pools=pools)


def _source(config):
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid: {', '.join(DATASETS)}")
    data_dir = os.path.abspath(os.path.expanduser(config.data_dir)) if config.data_dir else None
    if config.dataset == "folder":
        if data_dir is None:
            raise ValueError("--dataset=folder needs --data_dir=PATH (the image-folder root)")
        return _folder_source(data_dir)
    if config.dataset == "imagenet100":
        if data_dir and os.path.isdir(os.path.join(data_dir, "train")):
            source = _folder_source(data_dir, "imagenet100")
        else:
            source = _tfds_source("imagenet2012", data_dir, config.download)
        return _with_subset(source, config.num_subset_classes)
    return _tfds_source(config.dataset, data_dir, config.download)


# ----------------------------------------------------------------------------- splits

def _class_ranks(labels):
    """Position of each element among the elements of its class (stable)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels)
    ranks = np.empty(len(labels), np.int64)
    ranks[order] = np.arange(len(labels)) - starts
    return ranks


def _stratified(labels, idx, seed):
    """idx shuffled with the seed, then grouped by class (class order kept)."""
    perm = idx[np.random.RandomState(seed).permutation(len(idx))]
    return perm[np.argsort(labels[perm], kind="stable")]


def _holdout(labels, idx, fraction):
    """Deterministic per-class hold-out: (kept, held), each sorted."""
    order = _stratified(labels, idx, HOLDOUT_SEED)
    counts = np.bincount(labels[order])
    held = _class_ranks(labels[order]) < np.floor(counts[labels[order]] * fraction + 0.5)
    return np.sort(order[~held]), np.sort(order[held])


def _balanced_cap(labels, idx, cap):
    """First `cap` of idx taken round-robin over classes (class-balanced, deterministic)."""
    if cap is None or cap >= len(idx):
        return idx
    ranks = _class_ranks(labels[idx])
    return np.sort(idx[np.lexsort((labels[idx], ranks))[:cap]])


def _halves(labels, idx, seed):
    """Two disjoint, class-stratified halves of idx, seeded."""
    order = _stratified(labels, idx, seed)
    return np.sort(order[0::2]), np.sort(order[1::2])


def _resolve(source, config, split):
    """(pool, sorted indices into the pool) of a logical split, or None when it has no data."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    pools = source.pools

    def valid(pool):
        return (pool, np.flatnonzero(pools[pool] >= 0)) if pool in pools else None

    train, validation, test = valid("train"), valid("validation"), valid("test")
    if validation is None and config.validation_fraction > 0:
        kept, held = _holdout(pools["train"], train[1], config.validation_fraction)
        train, validation = ("train", kept), ("train", held)
    validation = validation or test
    chosen = {"train": train, "validation": validation, "test": test or validation}
    chosen = {k: v and (v[0], _balanced_cap(pools[v[0]], v[1], config.max_examples))
              for k, v in chosen.items()}
    if split.startswith("search_"):
        _, kept = folders.without_bad_images(source, config, *chosen["train"])
        first, second = _halves(pools["train"], kept, config.seed)
        return "train", first if split == "search_train" else second
    return chosen[split] and folders.without_bad_images(source, config, *chosen[split])


def split_pool(config, split):
    """Where a logical split's images come from: 'train', 'validation' or 'test' (a
    split of 'train' pool is held out from the training data); None when empty."""
    chosen = _resolve(_source(config), config, split)
    return chosen[0] if chosen else None


def _check_config(config):
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if not 0 <= config.validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {config.validation_fraction}")
    if config.cutout < 0:
        raise ValueError(f"cutout must be >= 0, got {config.cutout}")
    if config.max_examples is not None and config.max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {config.max_examples}")


def num_examples(config, split):
    """Number of examples of `split` after the max_examples cap."""
    _check_config(config)
    chosen = _resolve(_source(config), config, split)
    return 0 if chosen is None else len(chosen[1])


def dataset_info(config):
    """Classes, image size and split sizes; decodes at most one image."""
    _check_config(config)
    source = _source(config)
    sizes = {}
    for split in SPLITS:
        chosen = _resolve(source, config, split)
        sizes[split] = 0 if chosen is None else len(chosen[1])
    return DatasetInfo(len(source.class_names), config.image_size or source.image_size,
                       list(source.class_names), sizes, source.recipe)


# ----------------------------------------------------------------------------- preprocessing

def _normalise(image, recipe):
    mean, std = MEAN_STD[recipe]
    return (image - tf.constant(mean)) / tf.constant(std)


def _cutout(image, length, seed):
    """Zero a length x length square (clipped at the borders) centred at a random pixel."""
    shape = tf.shape(image)
    centre = tf.cast(tf.random.stateless_uniform([2], seed) * tf.cast(shape[:2], tf.float32),
                     tf.int32)
    low = tf.maximum(centre - length // 2, 0)
    high = tf.minimum(centre + length // 2 + length % 2, shape[:2])
    rows, cols = tf.range(shape[0]), tf.range(shape[1])
    inside_r = (rows >= low[0]) & (rows < high[0])
    inside_c = (cols >= low[1]) & (cols < high[1])
    mask = tf.cast(inside_r[:, None] & inside_c[None, :], image.dtype)
    return image * (1.0 - mask[:, :, None])


def _cifar_augment(image, size, seed):
    pad = max(size // 8, 1)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed[0])
    return tf.image.stateless_random_flip_left_right(image, seed[1])


def _imagenet_augment(image, size, seed):
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed[0], min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10)
    image = tf.image.resize(tf.slice(image, begin, crop), [size, size])
    image = tf.image.stateless_random_flip_left_right(image, seed[1])
    image = image * tf.random.stateless_uniform([], seed[2], 0.6, 1.4)
    image = tf.image.stateless_random_contrast(image, 0.6, 1.4, seed[3])
    image = tf.image.stateless_random_saturation(image, 0.6, 1.4, seed[4])
    return tf.clip_by_value(image, 0.0, 1.0)


def _imagenet_eval(image, size):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.math.round(size / EVAL_CROP) / tf.reduce_min(shape)
    resized = tf.cast(tf.math.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])


def augment_fn(config, info, training):
    """fn(uint8 HWC image, seed [2] int) -> float32 normalised image_size^2 x 3 image."""
    size, recipe, cutout = info.image_size, info.recipe, config.cutout

    def fn(image, seed=None):
        image = tf.cast(image, tf.float32) / 255.0
        seeds = None if seed is None else tf.random.experimental.stateless_split(seed, 6)
        if recipe == "cifar":
            image = tf.image.resize(image, [size, size])
            if training:
                image = _cifar_augment(image, size, seeds)
        elif training:
            image = _imagenet_augment(image, size, seeds)
        else:
            image = _imagenet_eval(image, size)
        image = _normalise(tf.ensure_shape(image, [size, size, 3]), recipe)
        return _cutout(image, cutout, seeds[5]) if training and cutout else image

    return fn


# ----------------------------------------------------------------------------- pipeline

def _decode(ds, read_files):
    """Decode (ref, label, name) -> (uint8 image, label); a bad file raises naming the file."""
    def good(ref, label, name):
        data = tf.io.read_file(ref) if read_files else ref
        return tf.io.decode_image(data, channels=3, expand_animations=False), label

    def bad(ref, label, name):
        check = tf.debugging.Assert(tf.equal(tf.size(name), -1), [
            tf.strings.join(["cannot read or decode image file ", name])])
        with tf.control_dependencies([check]):
            return tf.zeros([1, 1, 3], tf.uint8), label

    def one(*element):
        single = tf.data.Dataset.from_tensors(element)
        return single.map(good).ignore_errors().concatenate(single.map(bad)).take(1)

    return ds.interleave(one, cycle_length=max(4, os.cpu_count() or 1), block_length=1,
                         num_parallel_calls=AUTOTUNE, deterministic=True)


def load(config, split, training=None):
    """Batched (float32 NHWC normalised images, int32 labels) for one split."""
    _check_config(config)
    source = _source(config)
    chosen = _resolve(source, config, split)
    if chosen is None or not len(chosen[1]):
        raise ValueError(f"split {split!r} of {source.name} is empty; check --data_dir, "
                         f"--validation_fraction and --max_examples")
    pool, idx = chosen
    n = len(idx)
    if training is None:
        training = split in ("train", "search_train")
    if training and config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {split} split "
                         f"({n} examples); lower --batch_size or raise --max_examples")
    info = DatasetInfo(len(source.class_names), config.image_size or source.image_size,
                       list(source.class_names), {split: n}, source.recipe)
    cache = config.cache if config.cache is not None else n * source.pixels * 3 < CACHE_LIMIT_BYTES
    ds = source.records(pool, idx, source.pools[pool])
    if training and not cache:  # shuffle cheap references before decoding
        ds = ds.shuffle(n if source.read_files else min(n, 2048), seed=config.seed,
                        reshuffle_each_iteration=True)
    ds = _decode(ds, source.read_files).apply(tf.data.experimental.assert_cardinality(n))
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
    fn = augment_fn(config, info, training and config.augment)
    if training and config.augment:
        seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda element, seed: (fn(element[0], seed), element[1]), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda image, label: (fn(image), label), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=training).prefetch(AUTOTUNE)
    if training and config.data_service:  # decode + augment on the service's workers
        ds = ds.apply(tf.data.experimental.service.distribute(
            "distributed_epoch", config.data_service)).prefetch(AUTOTUNE)
    return ds
