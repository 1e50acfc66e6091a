"""Binary primitives: real binarisation, STE gradients, every op at both strides."""
import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import binary, ops


def _inputs(channels=8, size=16, seed=0):
    return tf.random.stateless_normal((2, size, size, channels), seed=(seed, 1))


@pytest.mark.parametrize("name", [n for n in ops.OPS if n != "shortcut"])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape_at_both_strides(name, stride):
    layer = ops.make(name, 8, stride)
    y = layer(_inputs(), training=True)
    assert y.shape == (2, 16 // stride, 16 // stride, 8)


@pytest.mark.parametrize("stride", [1, 2])
def test_shortcut_op_shape(stride):
    y = ops.make("shortcut", 8, stride)(_inputs())
    assert y.shape == (2, 16 // stride, 16 // stride, 8)


def test_zeroise_outputs_zeros():
    y = ops.make("none", 8, 2)(_inputs() + 5.0)
    assert y.shape == (2, 8, 8, 8)
    assert float(tf.reduce_max(tf.abs(y))) == 0.0


def _conv_inputs_and_kernel(conv, x):
    """What the conv really multiplies: its quantised input and quantised kernel."""
    return conv.input_quantizer(x), conv.kernel_quantizer(tf.convert_to_tensor(conv.kernel))


def test_binarisation_is_real_xnor_channel_scale():
    layer = binary.BinaryConv(6, 3, binarization=binary.XNOR)
    x = _inputs(4)
    layer(x, training=False)
    xq, wq = _conv_inputs_and_kernel(layer.conv, layer.bn(x, training=False))
    assert set(np.unique(xq.numpy())) <= {-1.0, 1.0}
    w = layer.conv.kernel.numpy()
    scale = np.abs(w).mean(axis=(0, 1, 2))  # per output channel
    np.testing.assert_allclose(np.abs(wq.numpy()), np.broadcast_to(scale, w.shape), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(wq.numpy()), np.where(w >= 0, 1.0, -1.0))


def test_tensor_scale_and_sign_only_schemes():
    w = tf.constant(np.random.RandomState(0).randn(3, 3, 4, 5).astype("float32"))
    tensor = binary.BARS.kernel_quantizer()(w).numpy()
    np.testing.assert_allclose(np.abs(tensor), np.abs(w.numpy()).mean(), rtol=1e-6)
    sign = binary.BINARYNET.kernel_quantizer()(w).numpy()
    assert set(np.unique(sign)) == {-1.0, 1.0}
    assert binary.FLOAT.kernel_quantizer() is None and binary.FLOAT.input_quantizer() is None


def test_conv_output_equals_conv_of_binarised_operands():
    layer = binary.BinaryConv(5, 3, binarization=binary.XNOR, relu=False)
    x = _inputs(4)
    y = layer(x, training=False)
    xq, wq = _conv_inputs_and_kernel(layer.conv, layer.bn(x, training=False))
    xq = tf.pad(xq, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)  # pad_values=1
    expected = tf.nn.conv2d(xq, wq, 1, "VALID")
    np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-4)


def test_gradients_reach_latent_weights_through_ste():
    layer = binary.BinaryConv(4, 3)
    x = _inputs(4) * 0.5
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.random.stateless_normal(y.shape, seed=(3, 4)))
    grad = tape.gradient(loss, layer.conv.kernel)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_ste_zeroes_gradient_where_input_is_large():
    x = tf.constant([[-3.0, -0.5, 0.5, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = binary.XNOR.input_quantizer()(x)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[0.0, 1.0, 1.0, 0.0]])


def test_weight_clip_constraint():
    assert isinstance(binary.XNOR.kernel_constraint(), lq.constraints.WeightClip)
    clipped = binary.XNOR.kernel_constraint()(tf.constant([-3.0, 0.2, 2.0]))
    np.testing.assert_allclose(clipped.numpy(), [-1.0, 0.2, 1.0])


def test_activation_scale_option_changes_output_magnitude():
    x = _inputs(4) * 3.0
    plain = binary.BinaryConv(4, 3, relu=False, name="a")
    scaled = binary.BinaryConv(4, 3, relu=False, name="b",
                               binarization=binary.Binarization(activation_scale=True))
    plain(x), scaled(x)
    scaled.set_weights(plain.get_weights())
    ratio = scaled(x, training=False) / (plain(x, training=False) + 1e-9)
    k = binary.activation_scale(plain.bn(x, training=False), 3, 1)
    mask = tf.abs(plain(x, training=False)) > 1e-3
    np.testing.assert_allclose(tf.boolean_mask(ratio, mask).numpy(),
                               tf.boolean_mask(tf.broadcast_to(k, ratio.shape), mask).numpy(),
                               rtol=1e-3)


def test_improved_downsample_has_two_staggered_binary_convs():
    block = binary.BinaryDownsample(16, "improved")
    y = block(_inputs(8), training=False)
    assert y.shape == (2, 8, 8, 16)
    convs = [m for m in block.submodules if isinstance(m, lq.layers.QuantConv2D)]
    assert len(convs) == 2 and all(c.input_quantizer is not None for c in convs)
    float_block = binary.BinaryDownsample(16, "float")
    float_block(_inputs(8))
    assert all(m.input_quantizer is None for m in float_block.submodules
               if isinstance(m, lq.layers.QuantConv2D))


def test_op_shortcut_adds_input():
    layer = binary.BinaryConv(8, 3, shortcut=True)
    x = _inputs(8)
    no_sc = binary.BinaryConv(8, 3, name="plain")
    layer(x), no_sc(x)
    no_sc.set_weights(layer.get_weights())
    np.testing.assert_allclose((layer(x) - no_sc(x)).numpy(), x.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="equal channels"):
        binary.BinaryConv(4, 3, shortcut=True)(x)


def test_bad_scheme_and_op_names():
    with pytest.raises(ValueError, match="unknown binarization 'ternary'"):
        binary.scheme("ternary")
    with pytest.raises(ValueError, match="unknown weight_scale"):
        binary.Binarization(weight_scale="row")
    with pytest.raises(ValueError, match="unknown op 'sep_conv_3x3'"):
        ops.check_ops(["bin_conv_3x3", "sep_conv_3x3"])
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ops.make("bin_conv_3x3", 4, 3)


def test_dilated_binary_conv_trains_with_onednn_off():
    """Eigen (oneDNN off) has no gradient for a dilated conv2d: fall back to TF's own path."""
    import subprocess
    import sys
    code = ("import bnas_tf, tensorflow as tf\n"
            "from bnas_tf import binary\n"
            "layer = binary.BinaryConv(4, 3, 1, 2)\n"
            "x = tf.random.normal((1, 8, 8, 4))\n"
            "with tf.GradientTape() as tape:\n"
            "    y = tf.reduce_sum(layer(x, training=True))\n"
            "g = tape.gradient(y, layer.conv.kernel)\n"
            "print('ok', float(tf.reduce_sum(tf.abs(g))) > 0)\n")
    env = {**__import__("os").environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "ok True" in out.stdout


def test_quant_conv2d_is_registered_and_round_trips_through_its_config():
    """binary.QuantConv2D serialises under the package's name and deserialises to
    itself (not to Larq's class, and not without its dilation handling)."""
    name = f"{binary.SERIAL}>QuantConv2D"
    assert tf.keras.utils.get_registered_name(binary.QuantConv2D) == name
    assert tf.keras.utils.get_registered_object(name) is binary.QuantConv2D
    layer = binary.QuantConv2D(4, 3, dilation_rate=2, padding="same", use_bias=False)
    assert tf.keras.utils.serialize_keras_object(layer)["registered_name"] == name
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), layer])
    rebuilt = tf.keras.Sequential.from_config(model.get_config())
    assert type(rebuilt.layers[0]) is binary.QuantConv2D
