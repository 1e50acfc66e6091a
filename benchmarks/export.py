"""LCE export figures of the final network: .tflite bytes of the binary file and of
its float twin, ``LceBconv2d`` count, single-image latency (harness.py's docstring)."""
from __future__ import annotations

import tempfile

from benchmarks import process
from benchmarks.config import final_spec


def export_sizes(config, residual=None):
    """Binary .tflite (LCE) and float twin of the final network: bytes, op counts,
    single-image latency."""
    import tensorflow as tf
    from bnas_tf import export, model_dir, models
    spec = final_spec(config, residual)
    tf.keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="bnas_bench_") as directory:
        model = export.randomize_batchnorm(models.build(spec, 10, config.image_size))
        model_dir.write_spec(directory, spec, 10, config.image_size)
        model.save_weights(model_dir.path(directory, model_dir.WEIGHTS))
        binary = export.export(model, samples=config.export_samples,
                               latency_runs=config.latency_runs)
        twin = export.float_twin(directory)
        floating = export.export(twin, converter="tflite", samples=0,
                                 latency_runs=config.latency_runs)
    process.clear()
    return {"binary_bytes": binary.bytes, "float_bytes": floating.bytes,
            "ratio": floating.bytes / binary.bytes, "bconv_ops": binary.bconv_ops,
            "float_conv_ops": binary.float_conv_ops, "binary_convs": binary.binary_convs,
            "live_binary_convs": binary.live_binary_convs, "agreement": binary.agreement,
            "latency_binary_ms": binary.latency_ms, "latency_float_ms": floating.latency_ms,
            "op_counts": binary.op_counts}
