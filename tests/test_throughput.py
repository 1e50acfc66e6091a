"""ImageNet input throughput at 224 px against a final network's training (bnas_tf/throughput.py)
and its place in tools/benchmark.py."""
import json

import bnas_tf  # noqa: F401  (before TensorFlow)
import pytest
from absl import flags as absl_flags

from benchmarks import harness as benchmark  # noqa: E402  (the harness behind tools/benchmark.py)
from bnas_tf import costs, throughput
from bnas_tf.models import presets

TINY = dict(input_batches=2, synthetic_images=24, train_steps=1)


@pytest.fixture(scope="module")
def measured():
    return throughput.measure(throughput.quick_config(**TINY))


def test_measure_times_the_224px_pipeline_and_the_training_step(measured):
    out = measured
    assert out["image_size"] == 224 and out["source"].startswith("synthetic 500x375 JPEGs")
    assert 10_000 < out["jpeg_bytes"] < 400_000  # photograph-like, not flat, not noise
    assert out["input_images_per_s"] > 0 and out["input_images_per_cpu_s"] > 0
    assert out["cpu_train_images_per_s"] > 0
    assert out["cpu_input_to_train_ratio"] == pytest.approx(
        out["input_images_per_s"] / out["cpu_train_images_per_s"])


def test_gpu_estimate_arithmetic(measured):
    out = measured
    spec = presets.resolve(preset="bnas-d", cells=3, channels=8)
    cost = costs.count_spec(spec, 1000, 224)
    assert out["forward_macs"] == cost.flops + cost.biops
    assert out["train_macs"] == 3 * out["forward_macs"]
    assert 0 < out["cpu_utilization"] == pytest.approx(
        out["cpu_train_flops_per_cpu_s"] / out["cpu_matmul_flops_per_cpu_s"])
    gpu = 312e12 * 0.2 / (2 * out["train_macs"])
    assert out["gpu_images_per_s"] == pytest.approx(gpu)
    assert out["gpu_epoch_s"] == pytest.approx(1_281_167 / gpu)
    assert out["cores_to_feed_gpu"] == pytest.approx(gpu / out["input_images_per_cpu_s"])
    # a 3-cell x 8-channel net needs far more decoding than 2 cores give
    assert out["advice"].startswith("input-bound") and "pre-resized" in out["advice"]
    report = throughput.format_report(out)
    assert "decode + augment at 224 px" in report and "one GPU (estimate)" in report


def test_advice_when_input_keeps_up():
    assert throughput.advice({"cores_to_feed_gpu": 3.0, "cpu_count": 16}).startswith(
        "input keeps up")


def test_config_is_validated():
    with pytest.raises(ValueError, match="gpu_utilization must be in"):
        throughput.ThroughputConfig(gpu_utilization=0).validate()
    with pytest.raises(ValueError, match="input_batches must be >= 1"):
        throughput.ThroughputConfig(input_batches=0).validate()


def test_benchmark_tool_reports_imagenet_input(tmp_path, monkeypatch, capsys):
    from tools import benchmark as tool
    monkeypatch.setattr(benchmark, "run", lambda config, progress: {"quick": True})
    monkeypatch.setattr(throughput, "quick_config",
                        lambda **kw: throughput.ThroughputConfig(
                            batch_size=8, warmup_batches=1, cells=3, channels=8,
                            train_batch=2, **TINY, **kw))
    output = tmp_path / "bench.json"
    flag_values = absl_flags.FLAGS
    flag_values.unparse_flags()
    try:
        flag_values(["benchmark", "--quick", "--only=input", "--imagenet_input",
                     f"--output={output}"])
        tool.main(["benchmark"])
    finally:
        flag_values.unparse_flags()
    assert "decode + augment at 224 px" in capsys.readouterr().out
    with open(output) as f:
        written = json.load(f)["imagenet_input"]
    assert written["image_size"] == 224 and written["input_images_per_s"] > 0


def test_data_service_serves_each_training_example_once_per_epoch(cifar_dir, tmp_path):
    """--data_service: a tf.data service (here a dispatcher and one worker in this
    process) decodes and augments the training batches; an epoch still holds every
    training example once, and training runs on it."""
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from bnas_tf import data, recipes, training
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(  # noqa: F841  (kept alive)
        dispatcher_address=dispatcher.target.split("://")[1]))
    local = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=64,
                            batch_size=8, augment=False)
    served = dataclasses.replace(local, data_service=dispatcher.target)

    def labels(config):
        return sorted(np.concatenate([y for _, y in data.load(config, "train")
                                      .as_numpy_iterator()]).tolist())
    assert labels(served) == labels(local)
    assert len(labels(local)) == data.num_examples(local, "train") // 8 * 8
    recipe = recipes.recipe("adam_cosine", epochs=1, batch_size=8, validation_freq=0,
                             verbose=0)
    metrics = training.train(presets.resolve(genotype="bnas_a", cells=2, channels=4), served,
                             recipe, str(tmp_path / "run"))
    assert np.isfinite(metrics["history"]["loss"]).all()
