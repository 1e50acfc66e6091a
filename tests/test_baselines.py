"""Hand-crafted binary baselines: build, train a step, count, binarise as the papers do."""
import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import costs, models
from bnas_tf.models import baselines, presets

SMALL = {"resnet": 4, "wrn": 2, "nin": 12}  # reduced widths for the quick step


def small_spec(name):
    spec = presets.get(name)
    spec["channels"] = SMALL[spec["arch"]]
    return spec


@pytest.mark.parametrize("name", sorted(baselines.BASELINE_PRESETS))
def test_baseline_builds_trains_and_counts(name):
    assert name in presets.names()
    spec = small_spec(name)
    model = models.build(spec, num_classes=5, image_size=32)
    images = tf.random.normal((2, 32, 32, 3))
    labels = tf.constant([1, 3])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    assert logits.shape == (2, 5)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    assert any(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    c = costs.count(model)
    assert c.biops > 0 and c.flops > 0
    assert c.fully_binarized == (spec.get("downsample", "float") != "float"
                                 or spec["arch"] == "nin")
    # Every binary conv is LCE-convertible: QuantConv2D, ste_sign input, sign-family
    # kernel, +1 padding (or valid), no bias.
    convs = [l for l in model.submodules if isinstance(l, lq.layers.QuantConv2D)
             and costs.is_binary_layer(l)]
    assert convs
    for conv in convs:
        assert isinstance(conv.input_quantizer, lq.quantizers.SteSign)
        assert costs.is_binary_quantizer(conv.kernel_quantizer)
        assert conv.padding == "valid" or conv.pad_values == 1.0
        assert not conv.use_bias


def test_xnor_resnet18_biops_match_bars_table2():
    c = costs.count_spec("xnor-resnet18", 10, 32)
    assert c.biops == pytest.approx(547e6, rel=0.03)
    assert c.params == pytest.approx(11.17e6, rel=0.01)
    assert not c.fully_binarized  # float 1x1 downsampling convs
    assert c.flops < 10e6  # stem + 3 downsampling convs + classifier


def _binary_kernels(model):
    return [(l, l.kernel_quantizer(tf.convert_to_tensor(l.kernel))) for l in model.submodules
            if isinstance(l, lq.layers.QuantConv2D) and costs.is_binary_layer(l)]


def test_binarynet_kernels_are_plus_minus_one():
    model = models.build(small_spec("binarynet-resnet18"), 10, 16)
    for _, q in _binary_kernels(model):
        assert np.array_equal(np.abs(q.numpy()), np.ones(q.shape))
    xnor = models.build(small_spec("xnor-resnet18"), 10, 16)
    scaled = [q for _, q in _binary_kernels(xnor)]
    assert any(not np.allclose(np.abs(q.numpy()), 1.0) for q in scaled)  # XNOR scales


def test_downsample_kinds_and_bad_specs():
    base = small_spec("xnor-resnet18")
    float_ds = costs.count(models.build(base, 10, 16))
    binary_ds = costs.count(models.build(dict(base, downsample="binary"), 10, 16))
    improved = costs.count(models.build(dict(base, downsample="improved"), 10, 16))
    assert binary_ds.flops < float_ds.flops and binary_ds.biops > float_ds.biops
    assert binary_ds.fully_binarized and improved.fully_binarized
    with pytest.raises(ValueError, match="downsample"):
        models.build(dict(base, downsample="bogus"), 10, 16)
    with pytest.raises(ValueError, match="depth"):
        models.build(dict(base, depth=50), 10, 16)
    with pytest.raises(ValueError, match="cells"):
        models.build(dict(base, cells=8), 10, 16)
    with pytest.raises(ValueError, match="arch"):
        models.build(dict(base, arch="vgg"), 10, 16)


def test_auxiliary_head_is_optional_and_free():
    spec = small_spec("xnor-resnet18")
    model = models.build(spec, 10, 32, auxiliary=True)
    assert len(model.outputs) == 2
    assert costs.count(model).to_dict() == costs.count_spec(spec, 10, 32).to_dict()
