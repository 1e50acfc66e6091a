"""The training speed variant of the binary conv (bnas_tf/fast_binary.py): the same
function as Larq's readable QuantConv2D (outputs and gradients within the stated
bfloat16 tolerance), one switch, and a trained network saved and exported with the
readable layers only."""
import dataclasses
import os

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import binary, data, export, fast_binary, recipes, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import bars, presets

# bfloat16 rounds the conv's integer result and the incoming gradient to 8
# significant bits (relative 2^-9 each): outputs within 2^-8 of the largest entry,
# gradients (sums of many rounded terms) within 2% of the largest entry.
OUT_TOL, GRAD_TOL = 2.0 ** -8, 2e-2


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def twins(build):
    """(readable, fast) built by `build()`, the fast one carrying the readable's weights."""
    readable = build()
    with fast_binary.building("bfloat16"):
        fast = build()
    return readable, fast


def outputs_and_grads(layer, x, variables):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        y = y[0] if isinstance(y, (list, tuple)) else y
        loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per element
    return y, tape.gradient(loss, [x] + variables)


@pytest.mark.parametrize("kernel,strides,dilation,scheme,size", [
    (3, 1, 1, "xnor", 9), (3, 2, 1, "xnor", 9), (1, 1, 1, "xnor", 9), (3, 1, 2, "xnor", 9),
    (3, 2, 2, "xnor", 9), (5, 1, 2, "bars", 9), (3, 2, 1, "binarynet", 9),
    (3, 1, 1, "xnor", 4), (1, 1, 1, "bars", 4)])
def test_fast_binary_conv_equals_the_readable_one(kernel, strides, dilation, scheme, size):
    """BinaryConv (BN -> sign -> conv -> ReLU) with FastQuantConv2D inside equals the
    readable block: outputs, input and kernel gradients (every stride/dilation form
    BinaryConv uses, each weight scale; 4x4 maps: the matmul filter gradient)."""
    x = tf.random.stateless_normal([2, size, size, 24], seed=[kernel, strides])
    readable, fast = twins(lambda: binary.BinaryConv(16, kernel, strides, dilation,
                                                     binarization=scheme))
    assert type(readable.conv) is binary.QuantConv2D  # noqa: E721
    assert type(fast.conv) is fast_binary.FastQuantConv2D  # noqa: E721
    readable(x)
    fast(x)
    fast.set_weights(readable.get_weights())
    y0, g0 = outputs_and_grads(readable, x, [readable.conv.kernel.latent_variable])
    y1, g1 = outputs_and_grads(fast, x, [fast.conv.kernel.latent_variable])
    assert y0.shape == y1.shape and y1.dtype == tf.float32
    assert rel_err(y0, y1) <= OUT_TOL
    for name, a, b in zip(("input", "kernel"), g0, g1):
        assert rel_err(a, b) <= GRAD_TOL, name
        assert np.abs(np.asarray(b)).max() > 0, name


def graph_ops(fn, *args):
    """(type, output shape) of every op of the graph `fn` traces on `args`."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    return [(op.type, tuple(op.outputs[0].shape) if op.outputs else ())
            for op in graph.get_operations()]


@pytest.mark.parametrize("kernel,strides,dilation,scheme", [
    (3, 1, 1, "xnor"), (3, 2, 1, "xnor"), (1, 1, 1, "xnor"), (3, 1, 2, "xnor"),
    (5, 1, 2, "bars"), (3, 2, 1, "binarynet")])
def test_the_fused_sign_conv_is_the_shifted_form_bit_for_bit_in_fewer_passes(
        kernel, strides, dilation, scheme, monkeypatch):
    """`shifted_sign_conv` (the indicator [x < 0] against -2 * signs, its gradient
    written out) gives the outputs and the input and kernel gradients of the
    straightforward form (Larq's ste_sign, minus 1, cast) bit for bit, and its
    training step makes fewer passes over the activations: no Sign, Sub or Abs
    of the activations in the forward pass."""
    x = tf.random.stateless_normal([2, 9, 9, 24], seed=[kernel, strides])
    with fast_binary.building("bfloat16"):
        layer = binary.BinaryConv(16, kernel, strides, dilation, binarization=scheme)
    layer(x)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(fast_binary.FastQuantConv2D, "FUSED_SIGN", fused, raising=False)
        y, grads = outputs_and_grads(layer, x, [layer.conv.kernel.latent_variable])
        results.append([y, *grads])
    for name, a, b in zip(("output", "input gradient", "kernel gradient"), *results):
        assert np.array_equal(a, b), name
    normalised = layer.bn(x, training=True)
    forward = graph_ops(lambda t: layer.conv(t), normalised)
    full = [t for t, shape in forward if shape == tuple(normalised.shape)
            and t not in ("Placeholder", "Identity")]
    assert not {"Sign", "Sub", "AddV2", "Abs"} & set(full), full

    def backward(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = layer.conv(t)
        return tape.gradient(y, t, output_gradients=tf.sin(y))
    full = [t for t, shape in graph_ops(backward, normalised)
            if shape == tuple(normalised.shape)]
    assert not {"Abs", "LessEqual", "SelectV2", "Select"} & set(full), full


@pytest.mark.parametrize("height,width,kernel", [(4, 4, 3), (3, 5, 3), (4, 4, 1), (4, 4, 2),
                                                 (2, 2, 5)])
def test_the_filter_gradient_on_small_maps_is_a_matmul_of_the_same_sum(height, width, kernel):
    """On maps of at most 16 positions (ResNet-18's 4x4 last stage) the binary conv's
    filter gradient is computed as patches and one matmul, not oneDNN's filter-gradient
    conv (slower there): the same sum as the float32 conv gradient ('SAME' padding,
    odd, even and oversized kernels, non-square maps) up to the bfloat16 rounding; on
    larger maps, and in the layer's training step, the conv op is used as before."""
    rng = np.random.default_rng(kernel)
    x = (rng.random((3, height, width, 8)) < 0.5).astype(np.float32)
    dy = rng.normal(size=(3, height, width, 5)).astype(np.float32)
    shape = [kernel, kernel, 8, 5]
    exact = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=dy,
                                            strides=[1, 1, 1, 1], padding="SAME")
    got = fast_binary.filter_gradient(tf.cast(x, tf.bfloat16), tf.cast(dy, tf.bfloat16),
                                      shape, [1, 1, 1, 1], [1, 1, 1, 1])
    assert got.dtype == tf.bfloat16 and got.shape == exact.shape
    assert rel_err(exact, tf.cast(got, tf.float32)) <= OUT_TOL

    def kernel_gradient_ops(size):
        with fast_binary.building("bfloat16"):
            layer = binary.BinaryConv(16, 3)
        t = tf.random.stateless_normal([2, size, size, 8], seed=[size, 0])
        layer(t)

        def step(t):
            with tf.GradientTape() as tape:
                y = layer(t, training=True)
            return tape.gradient(y, layer.conv.kernel.latent_variable,
                                 output_gradients=tf.sin(y))
        return {op.type for op in tf.function(step).get_concrete_function(t).graph
                .get_operations()}
    assert "Conv2DBackpropFilter" not in kernel_gradient_ops(4)
    assert "Conv2DBackpropFilter" in kernel_gradient_ops(8)


@pytest.mark.parametrize("channels, size", [(36, 32), (24, 32), (20, 32), (32, 32), (8, 32)])
def test_dilated_bfloat16_kernel_gradients_are_finite_and_right(channels, size):
    """oneDNN's bfloat16 filter gradient of a dilated conv is NaN or garbage for inputs
    whose channels are not a multiple of 16 on maps of 32x32 (a 36-channel BNAS-A lost
    its training to NaN at step 2). The training variant (`shifted_sign_conv`) and the
    search's fused convs (`conv_op`) give the float32 gradient, rounded to bfloat16."""
    from bnas_tf.search.bnas.fused import conv_op
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, size, size, channels)).astype(np.float32))
    signs = tf.constant(np.sign(rng.normal(size=(3, 3, channels, 12))).astype(np.float32))
    dy = tf.constant(rng.normal(size=(4, size, size, 12)).astype(np.float32))
    negative = tf.cast(x < 0, tf.float32)
    with tf.GradientTape() as tape:  # float32 reference: conv(sign(x) - 1, signs)
        tape.watch(signs)
        y = tf.nn.conv2d(negative, -2 * signs, 1, "SAME", dilations=2)
    want = tape.gradient(y, signs, output_gradients=dy).numpy()
    with tf.GradientTape() as tape:
        tape.watch(signs)
        y = fast_binary.shifted_sign_conv(x, signs, None, (1, 1), (2, 2))
    got = tape.gradient(y, signs, output_gradients=tf.cast(dy, tf.bfloat16)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())
    kernel = tf.cast(-2 * signs, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = conv_op(2)(tf.cast(negative, tf.bfloat16), kernel, [1, 1], "SAME", dilations=2)
    got = tf.cast(tape.gradient(y, kernel, output_gradients=tf.cast(dy, tf.bfloat16)),
                  tf.float32).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(-2 * got, want, rtol=0, atol=1e-2 * np.abs(want).max())


def test_the_clipped_gradient_is_larqs_in_one_op():
    """`clipped_gradient` passes dy exactly where Larq's ste_sign gradient does
    (|x| <= clip, the bounds included), for several clip values."""
    import larq as lq
    edge = np.float32([1, -1, np.nextafter(1, 2), -np.nextafter(1, 2), np.nextafter(1, 0),
                       0, 0.5, 1.25, -1.25, 2, -2, np.inf, -np.inf])
    x = tf.constant(np.concatenate([edge, np.random.default_rng(0).normal(
        size=4000).astype(np.float32) * 1.5]).reshape([1, 1, -1, 1]))
    dy = tf.random.stateless_normal(x.shape, seed=[7, 8])
    for clip in (1.0, 1.25, 0.5, 2.0):
        want = lq.quantizers._clipped_gradient(x, dy, clip)
        assert np.array_equal(fast_binary.clipped_gradient(x, dy, clip), want), clip
    ops = {t for t, _ in graph_ops(lambda a, b: fast_binary.clipped_gradient(a, b, 1.0), x, dy)}
    assert ops == {"Placeholder", "FakeQuantWithMinMaxArgsGradient", "Identity"}, ops


BNAS_SMALL = presets.resolve(genotype="bnas_a", cells=3, channels=8)
NETWORKS = {"bnas": BNAS_SMALL,
            "bars": {"family": "bars", "genotype": bars.random_genotype(
                seed=0, base_channels=(4, 8, 16), max_depth=1).to_dict()},
            "xnor-resnet18": presets.resolve(preset="xnor-resnet18")}


@pytest.mark.parametrize("operands", ["bfloat16", "float32"])
def test_fast_network_equals_the_readable_network(operands, monkeypatch):
    """A small BNAS-A built under the switch: same variables (names, shapes, order),
    logits and gradients within tolerance; with float32 operands the rewrite alone
    (shift, bias, scale), with bfloat16 ones the variant as trained. (Tiny BARS and
    ResNet networks have channels that are all 0 after ReLU for the whole batch: there
    Larq's float32 conv leaves +-1e-8 of rounding noise that BatchNorm scales up and
    the next sign() reads at random, so their logits are compared layer by layer only:
    test_fast_binary_conv_equals_the_readable_one, test_every_family_builds_the_variant.)"""
    network = "bnas"
    from bnas_tf import models
    monkeypatch.setattr(fast_binary.FastQuantConv2D, "operand_dtype", tf.as_dtype(operands))
    spec, size = NETWORKS[network], 16
    readable, fast = twins(lambda: models.build(spec, 10, size))
    assert [v.name for v in readable.weights] == [v.name for v in fast.weights]
    assert fast_binary.uses_fast_convs(fast) and not fast_binary.uses_fast_convs(readable)
    fast.set_weights(readable.get_weights())
    x = tf.random.stateless_normal([4, size, size, 3], seed=[3, 4])
    y0, g0 = outputs_and_grads(readable, x, readable.trainable_weights)
    y1, g1 = outputs_and_grads(fast, x, fast.trainable_weights)
    assert rel_err(y0, y1) <= 4 * OUT_TOL  # rounding passes through the layers
    assert [g is None for g in g0] == [g is None for g in g1]
    # The classifier's gradient agrees within tolerance. Deeper gradients differ by the
    # subgradient at ReLU's kink: where a binary conv's exact result is 0, Larq's
    # float32 conv returns rounding noise of +-1e-8 (4-9% of the entries) and ReLU
    # passes the gradient or not by chance; the variant computes the exact 0. The
    # whole gradient stays aligned.
    for a, b in zip(g0[-2:], g1[-2:]):
        assert rel_err(a, b) <= GRAD_TOL
    flat0 = np.concatenate([np.ravel(g) for g in g0[1:] if g is not None])
    flat1 = np.concatenate([np.ravel(g) for g in g1[1:] if g is not None])
    cosine = flat0 @ flat1 / (np.linalg.norm(flat0) * np.linalg.norm(flat1))
    assert cosine >= 0.8


@pytest.mark.parametrize("operands", ["float32", "bfloat16"])
def test_the_variant_skips_the_structurally_zero_channels_and_computes_the_same(operands,
                                                                                monkeypatch):
    """BNAS-A's first-stage cell outputs are 0 from channel 2C on whatever the data
    (two all-Zeroise nodes, kept zero by the identity skips): `zero_tail` says so (the
    readable network's outputs are exactly 0 there), the variant's training pass
    convolves only the live channels of the preprocess convs and of the float residual
    reading them, and gives the outputs of the variant convolving all channels (equal
    with float32 operands, whose sums are exact), the same variable gradients (but the
    rounding of partial sums) and the same moving statistics."""
    from bnas_tf import models
    monkeypatch.setattr(fast_binary.FastQuantConv2D, "operand_dtype", tf.as_dtype(operands))
    spec = presets.resolve(genotype="bnas_a", cells=6, channels=8)  # cells 0, 1 in stage 1
    readable, fast = twins(lambda: models.build(spec, 10, 16))
    fast.set_weights(readable.get_weights())
    cells = [layer for layer in fast.layers if layer.name.startswith("cell")]
    tails = [cell.zero_tail(cell.input_zero_tails[1]) for cell in cells]
    assert tails == [16, 16, None, None, None, None]
    assert [c.input_zero_tails for c in cells][:4] == [(None, None), (None, 16), (16, 16),
                                                       (16, None)]
    x = tf.random.stateless_normal([4, 16, 16, 3], seed=[3, 4])
    outputs = tf.keras.Model(readable.input, [readable.get_layer(c.name).output
                                              for c in cells[:2]])(x, training=True)
    for out, tail in zip(outputs, tails):
        assert np.abs(out[..., :tail]).max() > 0 and not np.any(out[..., tail:])

    def step():
        moving = [v for v in fast.non_trainable_weights if "moving" in v.name]
        before = [v.numpy() for v in moving]
        y, grads = outputs_and_grads(fast, x, fast.trainable_weights)
        after = [v.numpy() for v in moving]
        for v, b in zip(moving, before):
            v.assign(b)
        return y, grads, after

    def conv_inputs():  # input channels of the training pass's binary and float convs
        graph = tf.function(lambda t: fast(t, training=True)).get_concrete_function(x).graph
        return sorted(op.inputs[1].shape[2] for op in graph.get_operations()
                      if op.type == "Conv2D" and op.inputs[1].shape[0] <= 2)
    y1, g1, m1 = step()
    narrow = conv_inputs()
    saved = [cell.input_zero_tails for cell in cells]
    for cell in cells:
        cell.input_zero_tails = (None, None)
    y0, g0, m0 = step()
    wide = conv_inputs()
    for cell, tails_in in zip(cells, saved):
        cell.input_zero_tails = tails_in
    # cell1's pre1, cell2's pre0 and pre1 (1x1, 32 -> 16 channels live) and its residual
    assert sum(narrow) == sum(wide) - 4 * 16
    if operands == "float32":
        assert np.array_equal(y0, y1)
    assert rel_err(y0, y1) <= OUT_TOL
    assert [g is None for g in g0] == [g is None for g in g1]
    scale = max(np.abs(g).max() for g in g0[1:] if g is not None)
    tol = 1e-5 if operands == "float32" else GRAD_TOL
    for a, b, v in zip(g0[1:], g1[1:], fast.trainable_weights):
        if a is not None:  # (a residual BN's beta gets ~0: the next batch norms remove it)
            err = np.abs(np.asarray(a) - np.asarray(b)).max()
            assert err <= tol * np.abs(a).max() + 1e-6 * scale, v.name
    for a, b in zip(m0, m1):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("network", ["bars", "xnor-resnet18"])
def test_every_family_builds_the_variant(network):
    """Every binary conv of the BARS and XNOR ResNet-18 benchmark networks becomes the
    variant under the switch, over the same variables."""
    from bnas_tf import models
    readable, fast = twins(lambda: models.build(NETWORKS[network], 10, 16))
    assert [v.name for v in readable.weights] == [v.name for v in fast.weights]
    convs = [m for m in fast.submodules if isinstance(m, binary.QuantConv2D)]
    assert len(convs) > 5
    assert all(isinstance(c, fast_binary.FastQuantConv2D) for c in convs)
    assert not fast_binary.uses_fast_convs(readable)


def test_the_switch_resolves_and_refuses_what_it_cannot_honour(monkeypatch):
    with fast_binary.building("float32"):
        assert type(binary.quant_conv(4, 3, binary.XNOR)) is binary.QuantConv2D  # noqa: E721
    with fast_binary.building("bfloat16"):
        assert isinstance(binary.quant_conv(4, 3, binary.XNOR), fast_binary.FastQuantConv2D)
    assert type(binary.quant_conv(4, 3, binary.XNOR)) is binary.QuantConv2D  # restored
    from bnas_tf.search import engine
    assert fast_binary.resolve("auto") == ("bfloat16" if engine.native_bfloat16()
                                           else "float32")
    assert fast_binary.resolve("auto", "mixed_bfloat16") == "float32"
    assert recipes.recipe("cifar").conv_dtype == "auto"
    with pytest.raises(ValueError, match="unknown train conv dtype 'int8'"):
        recipes.recipe("cifar", conv_dtype="int8")
    with pytest.raises(ValueError, match="--precision=mixed_bfloat16 already computes"):
        recipes.recipe("cifar", conv_dtype="bfloat16", precision="mixed_bfloat16")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    with pytest.raises(ValueError, match="needs TensorFlow's oneDNN kernels"):
        recipes.recipe("cifar", conv_dtype="bfloat16")
    assert fast_binary.resolve("auto") == "float32"


class KeepModel(tf.keras.callbacks.Callback):
    """Keeps the model training trained (the fast one)."""

    def on_train_end(self, logs=None):
        self.trained = self.model


def test_trained_with_the_fast_convs_saves_and_exports_the_readable_network(cifar_dir,
                                                                          tmp_path, caplog):
    """A network trained with --train_conv_dtype=bfloat16 is saved with Larq's
    QuantConv2D only, with the trained weights (its outputs equal the training
    model's within tolerance), and every binary conv exports as LceBconv2d."""
    spec = presets.resolve(genotype="bnas_a", cells=3, channels=4)  # a small BNAS-A
    config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=16,
                             image_size=16, augment=False)
    recipe = recipes.recipe("cifar", epochs=1, batch_size=8, validation_freq=0, verbose=0,
                            conv_dtype="bfloat16")
    keep = KeepModel()
    # on the absl logger itself: any SavedModel save earlier in the process (an LCE
    # export in another test) leaves it at the then root level, WARNING, through
    # TensorFlow's get/set_verbosity round trip (autotrackable._trackable_children)
    caplog.set_level("INFO", logger="absl")
    training.train(spec, config, recipe, str(tmp_path), callbacks=[keep])
    assert fast_binary.uses_fast_convs(keep.trained)
    # the run says what it computes in (auto resolves silently otherwise)
    assert "binary convs train in bfloat16 (fast_binary.FastQuantConv2D; " \
           "--train_conv_dtype=bfloat16)" in caplog.text
    saved = mdir.load_model(str(tmp_path))
    assert not fast_binary.uses_fast_convs(saved)
    convs = [m for m in saved.submodules if isinstance(m, binary.QuantConv2D)]
    assert convs and all(type(c) is binary.QuantConv2D for c in convs)  # noqa: E721
    x = tf.random.stateless_normal([4, 16, 16, 3], seed=[5, 6])
    trained = keep.trained(x, training=False)
    assert rel_err(saved(x, training=False), trained) <= 4 * OUT_TOL
    report = export.export(str(tmp_path), samples=8)
    assert report.binary_convs == len(convs)
    assert report.bconv_ops == report.live_binary_convs > 0  # Zeroise cuts 2 off the output
    assert report.agreement == 1.0


def test_a_training_resumes_only_with_the_conv_dtype_it_started_with(tmp_path):
    """A run started with float32 convs and resumed in bfloat16 (or the reverse) would
    not equal an uninterrupted run: refused in one line. A model directory from before
    the setting existed was trained in float32 (Larq's layer)."""
    from bnas_tf import files, training
    from bnas_tf import model_dir as mdir
    spec = {"family": "bnas", "genotype": "bnas_a", "cells": 3, "channels": 4}
    record = {"spec": spec, "num_classes": 10, "image_size": 32, "dataset": "folder",
              "auxiliary": False}
    mdir.write_spec(str(tmp_path), spec, 10, 32, dataset="folder", auxiliary=False)
    os.makedirs(tmp_path / mdir.CKPT)
    training._check_output_dir(str(tmp_path), dict(record, conv_dtype="float32"))
    with pytest.raises(files.OtherRunError, match=r"differs in conv_dtype: float32 recorded vs "
                       r"bfloat16 given\)") as e:
        training._check_output_dir(str(tmp_path), dict(record, conv_dtype="bfloat16"))
    assert "\n" not in str(e.value)
    mdir.write_spec(str(tmp_path), spec, 10, 32, dataset="folder", auxiliary=False,
                    conv_dtype="bfloat16")
    training._check_output_dir(str(tmp_path), dict(record, conv_dtype="bfloat16"))


def test_families_without_the_variant_record_what_they_computed():
    """Bi-Real, ReActNet and QuickNet keep Larq's layers: 'auto' trains (and records)
    float32 convs for them, an explicit bfloat16 is refused."""
    assert fast_binary.resolve_for("birealnet", "auto") == "float32"
    assert fast_binary.resolve_for("reactnet", "float32") == "float32"
    with pytest.raises(ValueError, match="birealnet network's binary convs have no speed"):
        fast_binary.resolve_for("birealnet", "bfloat16")
    assert fast_binary.resolve_for("bnas", "float32") == "float32"


def test_a_rerun_with_other_training_settings_is_refused(tmp_path):
    """A finished or interrupted run re-run with another learning rate used to be
    accepted and its train_config.json rewritten to a value it never trained with."""
    from bnas_tf import files, training
    spec = {"family": "bnas", "genotype": "bnas_a", "cells": 3, "channels": 4}
    record = {"spec": spec, "num_classes": 10, "image_size": 32, "dataset": "folder",
              "auxiliary": False, "conv_dtype": "float32"}
    mdir.write_spec(str(tmp_path), spec, 10, 32, dataset="folder", auxiliary=False,
                    conv_dtype="float32")
    os.makedirs(tmp_path / mdir.CKPT)
    config = recipes.recipe("cifar", epochs=2)
    mdir.write_json(mdir.path(str(tmp_path), training.TRAIN_CONFIG),
                    {"train": dataclasses.asdict(config), "data": {}})
    training._check_output_dir(str(tmp_path), record, dataclasses.replace(config, epochs=4,
                                                                          verbose=0))
    with pytest.raises(files.OtherRunError, match=r"differs in learning_rate: 0\.05 recorded vs "
                       r"0\.3 given\)"):
        training._check_output_dir(str(tmp_path), record,
                                   dataclasses.replace(config, learning_rate=0.3))
