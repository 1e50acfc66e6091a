"""BNAS networks from genotypes: structure, presets and parameter-count fidelity."""
import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import genotypes, models
from bnas_tf.models import presets


def trainable_params(model):
    """The reference's count: every trainable tensor (conv/linear weights and BN gamma/beta;
    BN running statistics excluded), as PyTorch's sum(p.numel() for p in parameters())."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("preset, classes, size, reference", [
    ("bnas-a", 10, 32, 5_578_252), ("bnas-f", 1000, 224, 39_781_442)])
def test_parameter_counts_match_reference(preset, classes, size, reference):
    count = trainable_params(models.build(preset, classes, size))
    assert abs(count - reference) / reference < 0.01, count


def test_tiny_network_forward_backward_and_aux():
    spec = presets.resolve(genotype="bnas_imagenet", cells=3, channels=4)
    model = models.build(spec, 10, 32, auxiliary=True)
    x = tf.random.normal((2, 32, 32, 3))
    with tf.GradientTape() as tape:
        logits, aux = model(x, training=True)
        loss = tf.reduce_mean(logits ** 2) + tf.reduce_mean(aux ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    assert sum(g is not None for g in grads) == len(grads)


def test_zeroise_edges_are_not_built_and_all_zero_nodes_are_zero():
    model = models.build(presets.resolve(genotype="bnas_a", cells=3, channels=4), 10, 32)
    cell = model.get_layer("cell0")
    assert sorted(cell.ops) == ["1", "2"]  # BNAS-A normal: only edges 1 and 2 are not Zeroise
    s = tf.random.normal((1, 32, 32, 12))
    out = cell([s, s], training=False).numpy()
    # nodes 4 and 5 take only Zeroise edges, and cell 0 has no inter-cell skip
    assert np.all(out[..., 8:] == 0) and np.any(out[..., :8] != 0)


def test_inter_cell_skip_and_darts_template():
    geno = genotypes.BNAS_A.to_dict()
    bnas = models.build(presets.resolve(genotype=geno, cells=3, channels=4), 10, 32)
    darts = models.build(presets.resolve(genotype={**geno, "template": "darts"}, cells=3,
                                         channels=4), 10, 32)
    assert bnas.get_layer("cell1").residual is not None  # reduction residual
    assert darts.get_layer("cell1").residual is None
    assert trainable_params(bnas) > trainable_params(darts)


def test_reductions_and_binary_convs():
    model = models.build(presets.resolve(genotype="bnas_imagenet", cells=6, channels=8), 10, 32)
    shapes = [model.get_layer(f"cell{i}").output_shape for i in range(6)]
    assert [s[1] for s in shapes] == [32, 32, 16, 16, 8, 8]
    binary = [m for m in model.submodules if isinstance(m, lq.layers.QuantConv2D)
              and m.input_quantizer is not None]
    floats = [m for m in model.submodules if isinstance(m, tf.keras.layers.Conv2D)
              and not isinstance(m, lq.layers.QuantConv2D)]
    assert len(binary) > 20
    # float: the stem conv and the two reduction-cell residual convs
    assert sorted(f.name for f in floats) == ["conv", "conv", "stem_conv"]


def test_presets_and_errors():
    assert presets.get("bnas-mini")["cells"] == 10 and presets.get("bnas-c")["channels"] == 108
    assert presets.get("bnas-h") == {**presets.get("bnas-d"), "cells": 16, "channels": 128}
    with pytest.raises(ValueError, match="unknown preset 'bnas-z'"):
        presets.get("bnas-z")
    with pytest.raises(ValueError, match="at least 2 cells"):
        models.build(presets.resolve(genotype="bnas_a", cells=1), 10, 32)
    with pytest.raises(ValueError, match="give a preset"):
        presets.resolve()


@pytest.mark.parametrize("size", [16, 32])
def test_auxiliary_head_on_small_feature_maps(size):
    model = models.build(presets.resolve(genotype="bnas_a", cells=3, channels=4), 10, size,
                         auxiliary=True)
    logits, aux = model(tf.zeros((1, size, size, 3)))
    assert logits.shape == aux.shape == (1, 10)


def test_binary_residual_makes_reduction_cells_float_free():
    spec = presets.resolve(genotype="bnas_a", cells=3, channels=4, residual="binary")
    model = models.build(spec, 10, 32)
    residual = model.get_layer("cell1").residual
    assert residual.conv.input_quantizer is not None
    floats = [m for m in model.submodules if isinstance(m, tf.keras.layers.Conv2D)
              and getattr(m, "input_quantizer", None) is None]
    assert [f.name for f in floats] == ["stem_conv"]
    assert model(tf.zeros((1, 32, 32, 3))).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown residual 'half'"):
        models.build({**spec, "residual": "half"}, 10, 32)


def test_drop_path_is_one_pass_and_draws_the_masks_it_drew():
    """DropPath's training output is ``inputs / keep * mask`` bit for bit (values and
    gradient; the masks a resumed run must redraw), as ONE pass over the batch: no
    full-size Select or second multiply (it ran three before)."""
    import zlib
    from bnas_tf.models import common
    layer = common.DropPath(name="drop3")
    x = tf.random.stateless_normal([64, 4, 4, 8], seed=[1, 2])
    layer(x)
    for rate in (0.0, 0.3):
        layer.rate.assign(rate)
        keep = 1.0 - rate
        seed = tf.stack([tf.constant(zlib.crc32(b"drop3") & 0x7FFFFFFF),
                         tf.bitcast(tf.reduce_sum(x), tf.int32)])
        mask = tf.floor(keep + tf.random.stateless_uniform([64, 1, 1, 1], seed))
        results = []
        for fn in (lambda t: layer(t, training=True), lambda t: t / keep * mask):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            results.append((y, tape.gradient(loss, x)))
        (y, g), (want_y, want_g) = results
        assert np.array_equal(y, want_y) and np.array_equal(g, want_g)
        assert (0 < float(tf.reduce_mean(tf.cast(tf.reduce_all(y == 0, [1, 2, 3]),
                                                tf.float32))) < 0.6) == (rate > 0)
    graph = tf.function(lambda t: layer(t, training=True)).get_concrete_function(x).graph
    full = [op.type for op in graph.get_operations()
            if op.outputs and tuple(op.outputs[0].shape) == tuple(x.shape)
            and op.type not in ("Placeholder", "Identity")]
    assert full == ["RealDiv"], full
