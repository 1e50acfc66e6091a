"""ImageNet input throughput at 224 px against what a final network's training consumes.

`measure()` times, on this machine:

* the ImageNet training input pipeline exactly as training runs it (`data.load`:
  read, JPEG decode, random-resized crop to 224, flip, colour jitter, normalise,
  batch; no cache, as ImageNet never fits in memory), in images per second and
  per CPU-second (the per-core rate, which does not depend on how busy a shared
  machine is). Source: a prepared TFDS imagenet2012 (`data_dir`) or, without one,
  synthetic JPEGs of ImageNet's typical size (500x375, quality 90);
* one training step of the network (default `bnas-d`, 1000 classes, 224 px) on this
  CPU, in images per second;
* this CPU's utilisation in that step: training FLOPs per CPU-second against a
  large float32 matmul's FLOPs per CPU-second (CPU time, so a busy shared machine
  does not bias the ratio): a check that the FLOP count explains the step time;
* what one GPU would consume: training MACs per image (forward float MACs + BiOPs,
  which train as float MACs, times 3 for forward + backward) against the GPU's peak
  `gpu_tflops` at an assumed sustained share `gpu_utilization` (an assumption: small
  per-op work and elementwise sign/BatchNorm ops keep GPUs far below the utilisation
  a CPU reaches, so the CPU's figure is reported but not transferred);

and says how many CPU cores the pipeline needs to keep that GPU fed, and what to do
when this machine has fewer (docs/data.md, "ImageNet at speed").
"""
from __future__ import annotations

import dataclasses
import os
import resource
import tempfile
import time

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf

from bnas_tf import costs, data, models, recipes, training
from bnas_tf.models import presets

IMAGENET_TRAIN_IMAGES = 1_281_167
TYPICAL_IMAGE = (375, 500)  # height x width of a typical ImageNet training JPEG
TRAIN_MACS_FACTOR = 3       # forward + backward (input and weight gradients) ~ 3x forward


@dataclasses.dataclass
class ThroughputConfig:
    data_dir: str | None = None   # TFDS data_dir with imagenet2012 prepared; None: synthetic
    image_size: int = 224
    batch_size: int = 64          # input-pipeline batch
    input_batches: int = 20       # batches timed after `warmup_batches`
    warmup_batches: int = 3
    synthetic_images: int = 256   # JPEGs written when there is no data_dir
    preset: str = "bnas-d"
    cells: int | None = None      # override the preset's size (smoke runs)
    channels: int | None = None
    train_batch: int = 16         # batch of the timed training step on this CPU
    train_steps: int = 2          # timed steps after one warm-up step
    gpu_tflops: float = 312.0     # dense bfloat16/float16 peak of the assumed GPU (A100)
    gpu_utilization: float = 0.2  # assumed sustained share of the GPU's peak

    def validate(self):
        for name in ("image_size", "batch_size", "input_batches", "synthetic_images",
                     "train_batch", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gpu_utilization <= 1:
            raise ValueError(f"gpu_utilization must be in (0, 1], got {self.gpu_utilization}")
        return self


def quick_config(**overrides) -> ThroughputConfig:
    """Small settings for smoke runs (224 px input kept; a 3-cell x 8-channel network)."""
    values = dict(batch_size=8, input_batches=4, warmup_batches=1, synthetic_images=48,
                  cells=3, channels=8, train_batch=4, train_steps=1)
    values.update(overrides)
    return ThroughputConfig(**values)


def write_synthetic_jpegs(directory, count, size=TYPICAL_IMAGE, classes=4, seed=0):
    """`count` JPEGs (quality 90) of `size` under directory/<class>/: smooth random
    colour fields plus pixel noise, so they compress like photographs rather than
    like flat colour or pure noise. Returns the mean file size in bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        folder = os.path.join(directory, f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform(0, 255, (size[0] // 25 + 1, size[1] // 25 + 1, 3))
        smooth = tf.image.resize(coarse[None], size, method="bicubic")[0].numpy()
        image = np.clip(smooth + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
        payload = tf.io.encode_jpeg(image, quality=90).numpy()
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(payload)
        total += len(payload)
    return total / count


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def input_rate(data_config, batches, warmup_batches=2):
    """Images/s and images per CPU-second of `data.load(data_config, 'train')` (no cache),
    timed over `batches` batches after `warmup_batches`."""
    config = dataclasses.replace(data_config, cache=False)
    iterator = iter(data.load(config, "train", training=True).repeat())
    for _ in range(warmup_batches):
        next(iterator)
    images, cpu, start = 0, _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {"images_per_s": images / wall, "images_per_cpu_s": images / max(cpu, 1e-9),
            "images": images, "seconds": wall}


def train_rate(spec, image_size, batch_size, steps, num_classes=1000):
    """Images/s of one training step of `spec` on this machine (SGD, random batch)."""
    tf.keras.utils.set_random_seed(0)
    model = models.build(spec, num_classes, image_size)
    config = recipes.recipe("imagenet", batch_size=batch_size)
    training.compile_model(model, config, recipes.make_optimizer(config, 100))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(batch_size,))
    model.train_on_batch(x, y)  # traces
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds, cpu = (time.perf_counter() - start) / steps, (_cpu_seconds() - cpu) / steps
    tf.keras.backend.clear_session()
    return {"images_per_s": batch_size / seconds, "step_s": seconds, "cpu_s": cpu,
            "batch": batch_size}


def matmul_flops_per_cpu_s(n=1024, repeats=8):
    """FLOPs per CPU-second of an n x n float32 matmul: this CPU's practical peak."""
    x = tf.random.normal([n, n], seed=0)
    tf.matmul(x, x).numpy()
    cpu = _cpu_seconds()
    for _ in range(repeats):
        tf.matmul(x, x).numpy()
    return 2 * n ** 3 * repeats / max(_cpu_seconds() - cpu, 1e-9)


def measure(config: ThroughputConfig | None = None, progress=lambda line: None) -> dict:
    """The figures of the module docstring as a dict (see `format_report`)."""
    config = (config or ThroughputConfig()).validate()
    spec = presets.resolve(preset=config.preset, cells=config.cells, channels=config.channels)
    cost = costs.count_spec(spec, 1000, config.image_size)
    forward_macs = cost.flops + cost.biops  # binary convs train as float convs
    out = {"image_size": config.image_size, "network": spec.get("name", config.preset),
           "cells": spec.get("cells"), "channels": spec.get("channels"),
           "forward_macs": int(forward_macs), "train_macs": int(TRAIN_MACS_FACTOR * forward_macs),
           "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bnas_imagenet_input_") as tmp:
        if config.data_dir:
            data_config = data.DataConfig(dataset="imagenet2012", data_dir=config.data_dir,
                                          batch_size=config.batch_size,
                                          image_size=config.image_size)
            out["source"] = "imagenet2012 (TFDS)"
        else:
            progress(f"[throughput] writing {config.synthetic_images} synthetic "
                     f"{TYPICAL_IMAGE[1]}x{TYPICAL_IMAGE[0]} JPEGs ...")
            out["jpeg_bytes"] = write_synthetic_jpegs(tmp, config.synthetic_images)
            data_config = data.DataConfig(dataset="folder", data_dir=tmp,
                                          batch_size=config.batch_size,
                                          image_size=config.image_size,
                                          validation_fraction=0.0)
            out["source"] = (f"synthetic {TYPICAL_IMAGE[1]}x{TYPICAL_IMAGE[0]} JPEGs, "
                             f"{out['jpeg_bytes'] / 1024:.0f} KiB each")
        progress(f"[throughput] decode + augment at {config.image_size} px ...")
        batches = min(config.input_batches,
                      max(data.num_examples(data_config, "train") // config.batch_size, 1))
        pipe = input_rate(data_config, batches, config.warmup_batches)
    out["input_images_per_s"] = pipe["images_per_s"]
    out["input_images_per_cpu_s"] = pipe["images_per_cpu_s"]
    progress(f"[throughput] {out['network']} training step at {config.image_size} px ...")
    step = train_rate(spec, config.image_size, config.train_batch, config.train_steps)
    out["cpu_train_images_per_s"] = step["images_per_s"]
    out["cpu_train_step_s"] = step["step_s"]
    out["cpu_train_batch"] = step["batch"]
    out["cpu_input_to_train_ratio"] = pipe["images_per_s"] / step["images_per_s"]
    out["cpu_train_flops_per_cpu_s"] = 2 * out["train_macs"] * step["batch"] / step["cpu_s"]
    out["cpu_matmul_flops_per_cpu_s"] = matmul_flops_per_cpu_s()
    out["cpu_utilization"] = out["cpu_train_flops_per_cpu_s"] / out["cpu_matmul_flops_per_cpu_s"]
    utilization = config.gpu_utilization
    sustained = config.gpu_tflops * 1e12 * utilization
    gpu = sustained / (2 * out["train_macs"])  # 2 FLOPs per MAC
    out.update(gpu_tflops=config.gpu_tflops, gpu_utilization=utilization,
               gpu_images_per_s=gpu, gpu_epoch_s=IMAGENET_TRAIN_IMAGES / gpu,
               cores_to_feed_gpu=gpu / pipe["images_per_cpu_s"])
    epoch_rate = min(gpu, pipe["images_per_cpu_s"] * (os.cpu_count() or 1))
    out["epoch_s_on_this_host"] = IMAGENET_TRAIN_IMAGES / epoch_rate
    out["advice"] = advice(out)
    return out


def advice(out):
    """What to do when this machine's cores cannot decode as fast as the GPU trains."""
    cores, have = out["cores_to_feed_gpu"], out["cpu_count"] or 1
    if cores <= 0.8 * have:
        return (f"input keeps up: {cores:.1f} of {have} cores feed the GPU estimate")
    return (f"input-bound: the GPU estimate needs {cores:.1f} cores of decoding, this host "
            f"has {have}. Store pre-resized data (shorter side 256 px: about 3x fewer "
            f"pixels to decode than 500x375), or decode on more CPU hosts with the "
            f"tf.data service (--data_service=grpc://DISPATCHER:PORT; docs/data.md)")


def format_report(out) -> str:
    """The figures as a few aligned lines."""
    rows = [
        ("source", out["source"]),
        (f"decode + augment at {out['image_size']} px",
         f"{out['input_images_per_s']:.0f} images/s ({out['input_images_per_cpu_s']:.0f} "
         f"per CPU-second, {out['cpu_count']} cores)"),
        (f"{out['network']} training on this CPU",
         f"{out['cpu_train_images_per_s']:.1f} images/s (batch {out['cpu_train_batch']}, "
         f"{out['cpu_train_step_s']:.2f} s/step); input / training "
         f"{out['cpu_input_to_train_ratio']:.1f}x"),
        ("training MACs per image", f"{out['train_macs'] / 1e9:.2f} G (3 x forward "
                                    f"{out['forward_macs'] / 1e9:.2f} G)"),
        ("CPU utilisation in training",
         f"{out['cpu_utilization']:.0%} ({out['cpu_train_flops_per_cpu_s'] / 1e9:.1f} of "
         f"{out['cpu_matmul_flops_per_cpu_s'] / 1e9:.1f} GFLOP per CPU-second, matmul)"),
        ("one GPU (estimate)",
         f"{out['gpu_images_per_s']:.0f} images/s at {out['gpu_utilization']:.0%} of "
         f"{out['gpu_tflops']:.0f} TFLOPS; epoch {out['gpu_epoch_s'] / 60:.1f} min; needs "
         f"{out['cores_to_feed_gpu']:.1f} cores of decoding"),
        ("advice", out["advice"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
