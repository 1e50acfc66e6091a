"""GPU-ready final-network training on CPU: mixed precision (bfloat16) and XLA."""
import dataclasses
import json

import bnas_tf  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import binary, data, export, model_dir, models, recipes, training
from bnas_tf.models import presets

SPEC = presets.resolve(genotype="bnas_a", cells=3, channels=8)


class PolicyProbe(tf.keras.callbacks.Callback):
    """Records the dtypes the network really computes in while training."""

    def on_train_begin(self, logs=None):
        convs = [m for m in self.model.submodules if isinstance(m, binary.QuantConv2D)]
        self.policy = self.model.dtype_policy.name
        self.variable_dtypes = {v.dtype.name for v in self.model.trainable_weights}
        probe = tf.zeros([1, *self.model.input_shape[1:]])
        self.output_dtype = self.model(probe, training=False)[0].dtype.name
        self.conv_dtype = convs[0].compute_dtype


def test_bfloat16_layers_keep_float32_variables_and_exact_xnor_scales():
    """Under mixed_bfloat16 the latent binary kernels stay float32 variables (a small
    update must not vanish in bfloat16) and the XNOR scale mean|W| matches float32's
    up to bfloat16 rounding of the result (TensorFlow reduces bfloat16 in float32)."""
    w = np.random.default_rng(0).uniform(-1.0, 1.0, (3, 3, 512, 4)).astype(np.float32)
    with training.precision_policy("mixed_bfloat16"):
        conv = binary.quant_conv(4, 3, binary.XNOR)
    conv.build((1, 4, 4, 512))
    latent = conv.kernel.latent_variable
    assert latent.dtype == tf.float32 and conv.compute_dtype == "bfloat16"
    latent.assign(w)
    latent.assign_add(np.full(w.shape, 1e-4, np.float32))  # far below bfloat16's step at 1
    np.testing.assert_allclose(latent.numpy(), w + 1e-4, rtol=1e-6)
    quantized = conv.kernel_quantizer(tf.constant(latent.numpy()))
    assert quantized.dtype == tf.bfloat16
    scale = np.abs(w + 1e-4).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.abs(tf.cast(quantized, tf.float32).numpy()),
                               np.broadcast_to(scale, w.shape), rtol=2 ** -8)


def test_bfloat16_training_decreases_loss_and_exports_float32_same_structure(cifar_dir,
                                                                             tmp_path, capsys):
    config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=96,
                             augment=False)
    recipe = recipes.recipe("adam_cosine", learning_rate=3e-3, epochs=4, batch_size=16,
                             validation_freq=0, verbose=0, precision="mixed_bfloat16")
    probe = PolicyProbe()
    out = tmp_path / "bf16"
    metrics = training.train(SPEC, config, recipe, str(out), callbacks=[probe])
    assert "1 replica(s), global batch 16, per-replica batch 16" in capsys.readouterr().err
    assert probe.policy == "mixed_bfloat16" and probe.conv_dtype == "bfloat16"
    assert probe.variable_dtypes == {"float32"} and probe.output_dtype == "bfloat16"
    losses = metrics["history"]["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
    with open(out / training.TRAIN_CONFIG) as f:
        assert json.load(f)["train"]["precision"] == "mixed_bfloat16"

    saved = model_dir.load_model(str(out))
    assert saved.dtype_policy.name == "float32"
    assert {w.dtype for w in saved.get_weights()} == {np.dtype("float32")}
    bf16_report = export.export(str(out), samples=16)
    float32 = dataclasses.replace(recipe, precision="float32", epochs=1)
    training.train(SPEC, config, float32, str(tmp_path / "f32"))
    f32_report = export.export(str(tmp_path / "f32"), samples=0)
    assert bf16_report.bconv_ops == f32_report.bconv_ops == 6
    assert bf16_report.op_counts == f32_report.op_counts


def test_precision_flag_is_validated():
    with pytest.raises(ValueError, match="precision must be one of float32, mixed_float16"):
        recipes.recipe("cifar", precision="float16")
    if not tf.config.list_logical_devices("GPU"):  # refused before anything is written
        with pytest.raises(ValueError, match="mixed_float16 needs a GPU"):
            with training.precision_policy("mixed_float16"):
                pass


def _compiled_pair(jit):
    tf.keras.utils.set_random_seed(3)
    model = models.build(SPEC, 10, 32)
    config = recipes.recipe("cifar", batch_size=8, jit_compile=jit)
    training.compile_model(model, config, tf.keras.optimizers.legacy.SGD(0.05, momentum=0.9))
    return model


def test_jit_compile_matches_the_plain_step():
    """Same weights, same batch: the XLA-compiled inference and first training step give
    the non-XLA outputs and loss within float tolerance; later steps stay close (a
    rounding difference can flip a sign near 0, so they are not bit-equal)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=(8,))
    plain, xla = _compiled_pair(False), _compiled_pair(True)
    xla.set_weights(plain.get_weights())
    assert xla._jit_compile and not plain._jit_compile
    np.testing.assert_allclose(xla.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    losses = [[m.train_on_batch(x, y, return_dict=True)["loss"] for m in (plain, xla)]
              for _ in range(3)]
    np.testing.assert_allclose(losses[0][1], losses[0][0], rtol=1e-5)
    np.testing.assert_allclose([l[1] for l in losses], [l[0] for l in losses], rtol=0.02)
    assert losses[-1][1] < losses[0][1]
