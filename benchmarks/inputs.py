"""The training input pipeline's throughput (``input_images_per_s``, the first
decoding pass), measured alone: no train step runs beside it."""
from __future__ import annotations

import time


def input_pipeline(config):
    """Images/s of the training pipeline: the first pass (decode + augment, fills the
    cache) and the steady state afterwards (cache + augment + batch)."""
    from bnas_tf import data
    data_config = data.DataConfig(dataset="folder", data_dir=config.data_dir,
                                  batch_size=config.batch_size,
                                  max_examples=config.input_max_examples, seed=0)
    ds = data.load(data_config, "train", training=True)
    start, count = time.perf_counter(), 0
    for _, labels in ds:
        count += int(labels.shape[0])
    first = time.perf_counter() - start
    steady_batches, steady_images = 0, 0
    iterator = iter(ds.repeat())
    next(iterator)  # the second epoch's first batch: shuffle buffer filled
    start = time.perf_counter()
    while steady_batches < config.input_batches:
        _, labels = next(iterator)
        steady_batches += 1
        steady_images += int(labels.shape[0])
    steady = time.perf_counter() - start
    return {"first_pass_images_per_s": count / first, "first_pass_images": count,
            "first_pass_s": first, "images_per_s": steady_images / steady,
            "steady_images": steady_images}
