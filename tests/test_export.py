"""Export to a binary .tflite through Larq Compute Engine: conversion, verification, files."""
import os

import bnas_tf  # noqa: F401  (before TensorFlow)
import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags

from bnas_tf.export import randomize_batchnorm
from bnas_tf import binary, export, model_dir, models, ops
from bnas_tf.models import presets

LEARNABLE_CONVS = ("bin_conv_3x3", "bin_conv_5x5", "bin_dil_conv_3x3", "bin_dil_conv_5x5")


def one_op_model(layer, channels=8, size=16, classes=10):
    """image -> float 1x1 conv -> op -> global pool -> dense: the op is the only binary part."""
    inputs = tf.keras.Input((size, size, 3))
    x = tf.keras.layers.Conv2D(channels, 1, name="lift")(inputs)
    x = layer(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(classes)(x))
    return randomize_batchnorm(model)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A tiny BNAS-A model directory (spec.json + weights.h5) with trained-looking BNs."""
    directory = str(tmp_path_factory.mktemp("bnas_a_tiny"))
    spec = presets.resolve(genotype="bnas_a", cells=3, channels=8)
    model = randomize_batchnorm(models.build(spec, 10, 32))
    model_dir.write_spec(directory, spec, 10, 32)
    # weights.h5 is all model_dir.load_model reads (save_model adds a slow SavedModel)
    model.save_weights(model_dir.path(directory, model_dir.WEIGHTS))
    probe = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    return directory, probe, model(probe, training=False).numpy()


@pytest.fixture
def parsed_flags():
    """Parse tool flags in-process; restore them afterwards."""
    from flags import data as _data  # noqa: F401  (defines the data flags)
    from flags import export as _export  # noqa: F401
    flag_values = absl_flags.FLAGS

    def parse(*args):
        flag_values.unparse_flags()
        flag_values(["export", *args])
    yield parse
    flag_values.unparse_flags()


def test_tool_exports_model_dir_with_bconvs_and_float_twin(trained_dir, tmp_path, parsed_flags,
                                                           capsys):
    from tools import export as tool
    directory, probe, trained_logits = trained_dir
    out, twin = tmp_path / "model.tflite", tmp_path / "float.tflite"
    parsed_flags(f"--model_dir={directory}", f"--output={out}", f"--float_twin={twin}",
                 "--samples=16")
    tool.main(["export"])
    captured = capsys.readouterr()
    printed = captured.out
    assert "LceBconv2d" in printed and "size ratio float/binary" in printed
    assert "it/s" not in captured.err + printed  # no stray tqdm bar of LCE's predict
    assert "16/16" in printed  # the agreement check's progress over the sample images

    flatbuffer = out.read_bytes()
    counts = export.op_counts(flatbuffer)
    loaded = model_dir.load_model(directory)
    # BNAS-A's reduction cells never read s1, so 2 of the 8 binary convs are unused
    # and pruned; every used one is an LceBconv2d.
    assert len(export.binary_conv_layers(loaded)) == 8
    assert export.live_binary_convs(loaded) == 6
    assert counts["LceBconv2d"] == 6
    assert counts["CONV_2D"] == 3  # float stem + the two float reduction residuals
    # the exported file is the trained network, not a fresh one
    np.testing.assert_allclose(loaded(probe, training=False), trained_logits, atol=1e-4)
    tflite_logits = export.predict_tflite(flatbuffer, probe)
    result = export.compare(trained_logits, tflite_logits)
    assert result["agreement"] >= export.DEFAULT_MIN_AGREEMENT
    assert result["close_fraction"] >= 0.75

    twin_bytes = twin.read_bytes()
    twin_counts = export.op_counts(twin_bytes)
    assert "LceBconv2d" not in twin_counts and twin_counts["CONV_2D"] >= 9
    binary_weights, float_weights = export.weight_bytes(flatbuffer), export.weight_bytes(twin_bytes)
    # the twin's bytes for the convolutions that are binary in the binary model
    assert binary_weights["LceBconv2d"] * 8 < float_weights["CONV_2D"] - binary_weights["CONV_2D"]
    # the whole file is smaller too, though float stem/residual convs dominate a tiny net
    assert len(flatbuffer) * 1.1 < len(twin_bytes)


def test_samples_from_a_data_split(trained_dir, cifar_dir):
    from bnas_tf import data
    directory, _, _ = trained_dir
    config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), batch_size=8)
    images = export.data_samples(config, "test", 12, image_size=32)
    sampled = export.sample_images(None, 12, images)
    assert sampled.shape == (12, 32, 32, 3) and sampled.std() > 0.1  # real, normalised images
    report = export.export(directory, samples=12, images=images)
    assert report.samples == 12 and report.agreement >= export.DEFAULT_MIN_AGREEMENT


def test_float_twin_has_float_convs_and_trained_weights(trained_dir):
    directory, _, _ = trained_dir
    twin = export.float_twin(directory)
    assert not export.binary_conv_layers(twin)
    loaded = model_dir.load_model(directory)
    for name in ("stem_conv", "classifier"):
        np.testing.assert_array_equal(twin.get_layer(name).get_weights()[0],
                                      loaded.get_layer(name).get_weights()[0])
    report = export.export(twin, samples=4, converter="tflite")
    assert report.bconv_ops == 0 and report.float_conv_ops >= 9 and report.agreement == 1.0


def test_imagenet_cell_all_binary_convs_become_bconv():
    """BNAS-D..H's cell: dilated convs, stride-2 convs, pools, 3x3 stride-2 preprocess."""
    spec = presets.resolve(genotype="bnas_imagenet", cells=3, channels=8)
    model = randomize_batchnorm(models.build(spec, 10, 32))
    report = export.export(model, samples=16)
    assert report.binary_convs == report.live_binary_convs == 20
    assert report.bconv_ops == 20
    assert report.float_conv_ops == 3
    assert report.op_counts.get("SPACE_TO_BATCH_ND", 0) == 0
    assert report.agreement >= export.DEFAULT_MIN_AGREEMENT and report.max_abs_diff < 1e-2


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("op", LEARNABLE_CONVS)
def test_each_binary_op_converts_to_one_bconv(op, stride):
    model = one_op_model(ops.make(op, 8, stride))
    report = export.export(model, samples=8)
    assert report.binary_convs == 1
    assert report.bconv_ops == 1
    assert report.float_conv_ops == 1  # the float 1x1 "lift" conv only
    assert report.agreement >= export.DEFAULT_MIN_AGREEMENT


@pytest.mark.parametrize("scheme", ("bars", "binarynet", "xnor_activation_scale"))
def test_binarization_schemes_convert_to_bconv(scheme):
    binarization = (binary.Binarization(activation_scale=True)
                    if scheme == "xnor_activation_scale" else binary.scheme(scheme))
    config = ops.OpConfig(binarization=binarization, op_shortcut=scheme == "bars")
    model = one_op_model(ops.make("bin_conv_3x3", 8, 2, config))
    report = export.export(model, samples=8)
    assert report.bconv_ops == report.binary_convs == 1
    assert report.agreement >= export.DEFAULT_MIN_AGREEMENT


def test_bars_improved_downsample_is_two_bconvs():
    layer = binary.BinaryDownsample(16, "improved", binary.BARS)
    report = export.export(one_op_model(layer), samples=8)
    assert report.bconv_ops == 2
    assert report.float_conv_ops == 1
    assert report.agreement >= export.DEFAULT_MIN_AGREEMENT


def test_binary_sep_conv_keeps_float_depthwise():
    """Only the two pointwise convs become LceBconv2d; the binary depthwise runs as a
    float DEPTHWISE_CONV_2D on dequantised +-1 inputs (LCE has no binary depthwise)."""
    report = export.export(one_op_model(ops.make("bin_sep_conv_3x3", 8, 2)), samples=8)
    assert report.bconv_ops == report.binary_convs == 2
    assert report.op_counts["DEPTHWISE_CONV_2D"] == 2
    assert report.op_counts["LceDequantize"] == 2


def raw_dilated_conv():
    return lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, dilation_rate=2,
                                 use_bias=False, input_quantizer="ste_sign",
                                 kernel_quantizer="magnitude_aware_sign",
                                 kernel_constraint="weight_clip")


def test_unconverted_binary_conv_fails_and_keeps_existing_file(tmp_path):
    # Two dilated binary convs on the same tensor: the converter shares their
    # SpaceToBatchND, LCE cannot fuse it, and both run as float CONV_2D.
    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(8, 1)(inputs)
    x = tf.keras.layers.Add()([raw_dilated_conv()(x), raw_dilated_conv()(x)])
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x))
    out = tmp_path / "model.tflite"
    out.write_bytes(b"previous good export")
    with pytest.raises(export.ExportError, match=r"2 binary convolutions.* 0 LceBconv2d"):
        export.export(model, out, samples=4)
    assert out.read_bytes() == b"previous good export"
    assert os.listdir(tmp_path) == ["model.tflite"]  # no temporary file left behind


def test_low_agreement_fails_and_keeps_existing_file(tmp_path, monkeypatch):
    model = one_op_model(ops.make("bin_conv_3x3", 8, 1))
    out = tmp_path / "model.tflite"
    out.write_bytes(b"previous good export")

    def shuffled(flatbuffer, images, *args, **kwargs):  # a broken runtime: wrong logits
        return np.random.default_rng(1).normal(size=(len(images), 10))
    monkeypatch.setattr(export, "predict_tflite", shuffled)
    with pytest.raises(export.ExportError, match="agrees with Keras on only"):
        export.export(model, out, samples=16, min_agreement=0.9)
    assert out.read_bytes() == b"previous good export"
    report = export.export(model, out, samples=16, min_agreement=0.0)  # threshold respected
    assert report.path == str(out) and out.read_bytes() == report.flatbuffer
    assert export.op_counts(out.read_bytes())["LceBconv2d"] == 1


def test_missing_model_dir_is_one_line_error(tmp_path, parsed_flags):
    from tools import export as tool
    with pytest.raises(FileNotFoundError, match="model directory not found") as error:
        export.export(str(tmp_path / "nope"), str(tmp_path / "x.tflite"))
    assert "\n" not in str(error.value)
    parsed_flags(f"--model_dir={tmp_path / 'nope'}", f"--output={tmp_path / 'x.tflite'}")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["export"])
    message = str(exit_info.value.code)
    assert message.startswith("export failed: model directory not found") and "\n" not in message
    assert not (tmp_path / "x.tflite").exists()


def test_op_counts_rejects_garbage_and_formats_table():
    with pytest.raises(export.ExportError, match="not a TFLite flatbuffer"):
        export.op_counts(b"\x00\x01garbage")
    table = export.format_op_counts({"LceBconv2d": 3, "CONV_2D": 1})
    assert table.splitlines()[2].split() == ["LceBconv2d", "3"]
    assert table.splitlines()[-1].split() == ["total", "4"]


def test_dilated_binary_convs_on_one_input_convert():
    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(8, 1)(inputs)
    y = [binary.quant_conv(8, 3, binary.XNOR, dilation_rate=2)(x) for _ in range(2)]
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Add()(y))
    report = export.export(tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x)), samples=4)
    assert report.bconv_ops == 2
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"} & set(report.op_counts)  # docs/export.md
