"""Cost accounting: exact counts on hand-computable models, and the paper's conventions."""
import bnas_tf  # noqa: F401
import larq as lq
import pytest
import tensorflow as tf

from bnas_tf import binary, costs, genotypes, models


def tiny_model():
    """float conv 3->4 (3x3) + BN, binary conv 4->6 (3x3), GAP, dense 6->5, on 8x8x3."""
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="float_conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = lq.layers.QuantConv2D(6, 3, padding="same", pad_values=1.0, use_bias=False,
                              input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              name="binary_conv")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(5, name="dense")(x)
    return tf.keras.Model(inputs, outputs)


def test_tiny_model_exact_counts():
    c = costs.count(tiny_model())
    assert c.flops == 8 * 8 * 4 * 3 * 9 + 6 * 5
    assert c.biops == 8 * 8 * 6 * 4 * 9
    assert c.params == 3 * 3 * 3 * 4 + 2 * 4 + 3 * 3 * 4 * 6 + 6 * 5 + 5
    assert c.total_params == c.params + 2 * 4
    assert c.binary_params == 3 * 3 * 4 * 6
    assert c.memory_bytes == 216 / 8 + 4 * (c.total_params - 216)
    assert c.float_memory_bytes == 4 * c.total_params
    assert c.memory_saving == pytest.approx(c.float_memory_bytes / c.memory_bytes)
    assert c.equivalent_ops == pytest.approx(c.flops + c.biops / 64)
    assert c.speedup == pytest.approx((c.flops + c.biops) / c.equivalent_ops)
    assert c.fully_binarized  # float conv only before, dense only after the binary conv
    d = c.to_dict()
    for key in ("params", "flops", "biops", "equivalent_ops", "memory_bytes",
                "memory_saving", "speedup", "fully_binarized", "total_params",
                "binary_params", "float_memory_bytes"):
        assert key in d
    # Costs scale with the batch; parameters do not. Calls are restored afterwards.
    model = tiny_model()
    c4 = costs.count(model, batch_size=4)
    assert c4.flops == 4 * c.flops and c4.biops == 4 * c.biops and c4.params == c.params
    assert all("call" not in layer.__dict__ for layer in model.submodules)


def test_float_binarization_counts_no_biops():
    inputs = tf.keras.Input((8, 8, 4))
    y = binary.BinaryConv(4, 3, binarization=binary.FLOAT)(inputs)
    c = costs.count(tf.keras.Model(inputs, y))
    assert c.biops == 0 and c.flops == 8 * 8 * 4 * 4 * 9
    assert c.binary_params == 0 and not c.fully_binarized


def test_dilated_stride2_counted_at_subsampled_size():
    inputs = tf.keras.Input((16, 16, 4))
    y = binary.BinaryConv(8, 3, strides=2, dilation_rate=2)(inputs)
    model = tf.keras.Model(inputs, y)
    assert model.output_shape[1:3] == (8, 8)
    c = costs.count(model)
    assert c.biops == 8 * 8 * 8 * 4 * 9  # not the stride-1 16x16 the conv really runs at
    assert c.flops == 0


def _fully(float_inside):
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = binary.BinaryConv(8, 3, name="b0")(x)
    if float_inside:
        x = tf.keras.layers.Conv2D(8, 1, name="float_inside")(x)
    x = binary.BinaryConv(8, 3, name="b1")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(3)(x))


def test_fully_binarized_flag():
    assert costs.count(_fully(False)).fully_binarized
    between = costs.count(_fully(True))
    assert not between.fully_binarized and between.cell_float_flops == 0
    # A BNAS network has a float residual conv inside its reduction cells.
    tiny = {"family": "bnas", "genotype": "bnas_a", "cells": 3, "channels": 4, "stem": "cifar"}
    bnas = costs.count_spec(tiny, 10, 16)
    assert not bnas.fully_binarized
    # 2x2 stride-2 residual convs: cell 1 16 -> 4*8 channels at 8x8, cell 2 32 -> 64 at 4x4
    residual = 8 * 8 * 32 * 16 * 4 + 4 * 4 * 64 * 32 * 4
    assert bnas.cell_float_flops == residual and bnas.flops > residual


def _replace_none(genotype, op):
    g = genotypes.load(genotype).to_dict()
    for kind in ("normal", "reduce"):
        g[kind] = [[op if name == "none" else name, src] for name, src in g[kind]]
    return g


def test_zeroise_cell_is_cheaper_and_aux_head_excluded():
    spec = {"family": "bnas", "genotype": "bnas_a", "cells": 3, "channels": 8, "stem": "cifar"}
    dense = dict(spec, genotype=_replace_none("bnas_a", "bin_conv_3x3"))
    with_zeroise = costs.count_spec(spec, 10, 16)
    without = costs.count_spec(dense, 10, 16)
    assert with_zeroise.biops < without.biops
    assert with_zeroise.params < without.params
    assert with_zeroise.memory_bytes < without.memory_bytes
    small = dict(spec, channels=4)
    aux = costs.count(models.build(small, 10, 32, auxiliary=True))
    assert aux.to_dict() == costs.count_spec(small, 10, 32).to_dict()


def test_bnas_a_params_match_reference():
    c = costs.count_spec("bnas-a", 10, 32)
    assert c.params == pytest.approx(5_578_252, rel=0.01)
    assert c.biops > 0 and c.flops > 0 and c.total_params > c.params


def test_bad_inputs():
    with pytest.raises(ValueError, match="batch_size"):
        costs.count(tiny_model(), batch_size=0)

    class Sub(tf.keras.Model):
        def call(self, x):
            return x
    with pytest.raises(ValueError, match="input shape"):
        costs.count(Sub())
