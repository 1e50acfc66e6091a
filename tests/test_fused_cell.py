"""The reference BNAS cell (bnas/cell.py) is the specification; the fused cell
(bnas/fused.py) computes the same function: outputs and gradients (inputs, alphas,
binary kernels, every other weight) at several shapes, strides and op sets, in float32
and bfloat16. Also the fused cell's building blocks against their plain forms, and a
whole search on the reference cell (one switch)."""
import json

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import binary, data, ops
from bnas_tf.search import SearchConfig, runner
from bnas_tf.search.bnas import cell as ref
from bnas_tf.search.bnas import fused
from bnas_tf.search.bnas.supernet import Supernet
from bnas_tf.search.engine import EngineConfig

FEW_OPS = ("none", "max_pool_3x3", "bin_conv_3x3")
NO_POOLS = ("none", "bin_conv_3x3", "bin_dil_conv_5x5")


def _edge_kernels(grouped, separate):
    """(grouped kernel variable, the per-edge kernel variables of `separate` in its
    column order) per conv type: a grouped kernel concatenates the 14 edges' kernels
    in `fused.SOURCE_ORDER`."""
    return [(kernel, [dict(separate.edges[e].candidates)[k].conv.kernel
                      for e in fused.SOURCE_ORDER])
            for kernel, k in zip(grouped.kernels, grouped.conv_indices)]


def _copy_into_reference(grouped, separate):
    """Give the reference cell the fused cell's weights."""
    for a, b in ((grouped.pre0, separate.pre0), (grouped.pre1, separate.pre1)):
        for va, vb in zip(a.weights, b.weights):
            vb.assign(va)
    if grouped.residual_conv is not None:
        separate.residual_conv.kernel.assign(grouped.residual_conv.kernel)
    for kernel, edge_kernels in _edge_kernels(grouped, separate):
        for part, edge_kernel in zip(np.split(kernel.numpy(), len(edge_kernels), axis=-1),
                                     edge_kernels):
            edge_kernel.assign(part)


def _cells(op_names, channels, reduction, reduction_prev, scheme, conv_dtype, x0, x1, alpha):
    config = ops.OpConfig(binarization=binary.scheme(scheme), affine=False, pool_bn=True)
    grouped = fused.FusedSearchCell(op_names, channels, reduction, reduction_prev, True,
                                    config, conv_dtype=conv_dtype)
    separate = ref.SearchCell(op_names, channels, reduction, reduction_prev, True, config)
    for cell in (grouped, separate):
        cell([x0, x1], tf.nn.softmax(alpha))
    assert len(grouped.sources) == 5 and len(separate.edges) == 14
    assert sum(int(np.prod(v.shape)) for v in grouped.trainable_weights) == \
        sum(int(np.prod(v.shape)) for v in separate.trainable_weights)
    _copy_into_reference(grouped, separate)
    return grouped, separate


def _outputs_and_gradients(grouped, separate, x0, x1, alpha):
    """[y, dx0, dx1, dalpha, dkernel per conv type, d every other weight] of each cell."""
    kernel_pairs = _edge_kernels(grouped, separate)
    others = [(a, b) for a, b in zip(
        [w for layer in (grouped.pre0, grouped.pre1) for w in layer.trainable_weights],
        [w for layer in (separate.pre0, separate.pre1) for w in layer.trainable_weights])]
    results = []
    for cell, side in ((grouped, 0), (separate, 1)):
        kernels = [pair[0] for pair in kernel_pairs] if side == 0 else \
            [v for pair in kernel_pairs for v in pair[1]]
        weights = [pair[side] for pair in others]
        with tf.GradientTape() as tape:
            tape.watch([x0, x1])
            y = cell([x0, x1], tf.nn.softmax(alpha), training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) *
                                 tf.random.stateless_normal(y.shape, seed=[7, 8]))
        grads = tape.gradient(loss, [x0, x1, alpha] + weights + kernels)
        fixed, flat = grads[:3 + len(weights)], grads[3 + len(weights):]
        if side == 1:  # concatenate the per-edge kernel gradients like the kernels
            joined = []
            for pair in kernel_pairs:
                joined.append(tf.concat(flat[:len(pair[1])], axis=-1))
                flat = flat[len(pair[1]):]
            flat = joined
        results.append([y] + fixed + flat)
    return results


# Odd channel counts make every binary conv output an odd multiple of its scale (never a
# ReLU tie at 0), so the two summation orders cannot differ in a ReLU mask.
@pytest.mark.parametrize("op_names,size,channels,reduction,reduction_prev,scheme", [
    (ops.BNAS_OPS, 8, 3, False, False, "xnor"),
    (ops.BNAS_OPS, 8, 3, True, False, "xnor"),
    (ops.BNAS_OPS, 7, 3, True, False, "bars"),
    (ops.BNAS_OPS, 8, 3, False, False, "binarynet"),
    (ops.BNAS_OPS, 8, 3, False, False, "float"),
    (FEW_OPS, 9, 4, False, True, "float"),  # FactorizedReduce needs even channels
    (FEW_OPS, 6, 5, True, False, "xnor"),
    (NO_POOLS, 5, 3, True, False, "xnor"),
])
def test_fused_cell_equals_the_reference_cell(op_names, size, channels, reduction,
                                              reduction_prev, scheme):
    """Same outputs and gradients w.r.t. inputs, alphas, preprocess weights and binary
    kernels (float32). BARS' tensor-wide weight scale stays one scale per edge inside a
    grouped kernel; reduction_prev gives s0 twice s1's size."""
    s0 = 2 * size if reduction_prev else size
    x0 = tf.random.stateless_normal([4, s0, s0, 6], seed=[1, 2])
    x1 = tf.random.stateless_normal([4, size, size, 6], seed=[3, 4])
    alpha = tf.Variable(tf.random.stateless_normal([14, len(op_names)], seed=[5, 6]))
    grouped, separate = _cells(op_names, channels, reduction, reduction_prev, scheme,
                               "float32", x0, x1, alpha)
    results = _outputs_and_gradients(grouped, separate, x0, x1, alpha)
    assert len(results[0]) == len(results[1]) > 4
    for a, b in zip(*results):
        assert a is not None and b is not None
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op_names,reduction", [(ops.BNAS_OPS, False), (ops.BNAS_OPS, True),
                                                (FEW_OPS, True)])
def test_bfloat16_fused_cell_follows_the_reference_cell(op_names, reduction):
    """conv_dtype='bfloat16' (shifted signs, bias and ReLU in bfloat16) computes the
    reference cell's outputs and gradients to bfloat16 precision (the kernel gradients
    add the padding bias's gradient to the shifted conv's, both rounded: a few tenths
    of a percent of their scale at the benchmark's shape, up to ~2% here)."""
    x0 = tf.random.stateless_normal([4, 8, 8, 6], seed=[1, 2])
    x1 = tf.random.stateless_normal([4, 8, 8, 6], seed=[3, 4])
    alpha = tf.Variable(tf.random.stateless_normal([14, len(op_names)], seed=[5, 6]))
    grouped, separate = _cells(op_names, 3, reduction, False, "xnor", "bfloat16", x0, x1,
                               alpha)
    results = _outputs_and_gradients(grouped, separate, x0, x1, alpha)
    for a, b in zip(*results):
        a, b = a.numpy(), b.numpy()
        assert np.abs(b).max() > 0
        # 5%: the full suite once saw 3.3% (passing alone at < 3%): the conv's float32
        # sum order follows oneDNN's thread partition, and a pre-activation near 0
        # rounded to bfloat16 flips a ReLU; a wrong cell is off by O(100%)
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_supernets_of_either_cell_compute_the_same_logits():
    """The one switch: Supernet(cell='reference') and the fused default, with the same
    weights, give the same logits."""
    x = tf.random.stateless_normal([2, 16, 16, 3], seed=[3, 3])
    nets = [Supernet(FEW_OPS, cells=3, channels=3, cell=c) for c in ("fused", "reference")]
    for net in nets:
        net(x)
    fast, spec = nets
    spec.alpha_normal.assign(tf.random.stateless_normal([14, 3], seed=[1, 1]))
    spec.alpha_reduce.assign(tf.random.stateless_normal([14, 3], seed=[2, 2]))
    fast.alpha_normal.assign(spec.alpha_normal)
    fast.alpha_reduce.assign(spec.alpha_reduce)
    for layer in ("stem_conv", "stem_bn", "classifier"):
        for a, b in zip(getattr(fast, layer).weights, getattr(spec, layer).weights):
            b.assign(a)
    for a, b in zip(fast.cells, spec.cells):
        _copy_into_reference(a, b)
    assert np.allclose(fast(x, training=True).numpy(), spec(x, training=True).numpy(),
                       atol=1e-4)
    assert spec.precompute() is None and fast.precompute() is not None


def test_a_whole_search_runs_on_the_reference_cell(tmp_path, cifar_dir):
    """One switch (engine cell='reference', --cell_implementation) runs the search on the
    specification; resuming that directory with the fused cell is refused in one line."""
    cfg = SearchConfig.create(cells=2, channels=4, epochs=1, batch_size=16, ops=FEW_OPS)
    dc = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=64,
                         image_size=8)
    out = tmp_path / "ref"
    summary = runner.run_search("bnas", dc, cfg, str(out), verbose=0,
                                engine=EngineConfig(cell="reference"))
    assert len(summary["epochs"]) == 1 and (out / "genotype.json").exists()
    assert json.loads((out / "search_config.json").read_text())["engine"] == \
        {"cell": "reference", "recompute_stages": 0}
    with pytest.raises(runner.SearchDirError,
                       match="differs in engine.cell: reference recorded vs fused given"):
        runner.run_search("bnas", dc, cfg, str(out), verbose=0)


# ----------------------------------------------------------------------------- the fused cell's parts

@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2),
                                                     (5, 1, 2)])
def test_padding_bias_turns_plus_one_padding_into_a_shift(kernel, stride, dilation):
    """A +-1 conv with a 'SAME' border of +1 equals the conv of the shifted signs
    (s - 1, zero border) plus `padding_bias`, at every position (odd sizes: uneven
    borders)."""
    s = tf.sign(tf.random.stateless_normal([2, 7, 9, 3], seed=[kernel, stride]))
    signs = tf.sign(tf.random.stateless_normal([kernel, kernel, 3, 5], seed=[dilation, 1]))
    pads = [binary.same_padding(n, kernel, stride, dilation) for n in (7, 9)]
    padded = tf.pad(s, [[0, 0], *pads, [0, 0]], constant_values=1.0)
    expected = tf.nn.conv2d(padded, signs, stride, "VALID", dilations=dilation)
    shifted = tf.nn.conv2d(s - 1.0, signs, stride, "SAME", dilations=dilation)
    bias = fused.padding_bias(signs, 1.0)
    assert bias.shape == (5,) and fused.padding_bias(signs, 0.0) is None
    assert np.array_equal(tf.nn.bias_add(shifted, bias).numpy(), expected.numpy())
    assert not np.array_equal(shifted.numpy(), expected.numpy())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_widen_and_weight_has_the_gradients_of_cast_and_multiply(dtype):
    """Its fused batch-norm-gradient backward gives what autodiff of cast-and-multiply
    gives, for the input and the per-channel factor."""
    y = tf.cast(tf.nn.relu(tf.random.stateless_normal([2, 3, 3, 4], seed=[1, 1])), dtype)
    factor = tf.random.stateless_uniform([4], seed=[2, 2])
    g = tf.random.stateless_normal([2, 3, 3, 4], seed=[3, 3])
    results = []
    for fn in (fused.widen_and_weight, lambda a, b: tf.cast(a, tf.float32) * b):
        with tf.GradientTape() as tape:
            tape.watch([y, factor])
            out = fn(y, factor)
        results.append([out] + tape.gradient(out, [y, factor], output_gradients=g))
    assert results[0][1].dtype == dtype
    # bfloat16: g is rounded to bfloat16 first (relative to the largest entry)
    tol = 2.0 ** -7 if dtype == "bfloat16" else 1e-6
    for a, b in zip(*results):
        a, b = (tf.cast(t, tf.float32).numpy() for t in (a, b))
        assert np.abs(a - b).max() <= tol * np.abs(b).max()


@pytest.mark.parametrize("size", [8, 7])
def test_factorized_reduce_reads_the_pixels_of_the_shifted_stride2_conv(size):
    """The supernet's FactorizedReduce equals DARTS' formulation: 1x1 stride-2 convs on
    x and on x shifted up-left by one pixel (zero-filled), concatenated."""
    x = tf.random.stateless_normal([2, size, size, 6], seed=[size, 1])
    layer = ref.FactorizedReduce(8)
    y = layer(x, training=True)
    r = tf.nn.relu(x)
    shifted = tf.pad(r[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
    k0, k1 = layer.conv0.kernel, layer.conv1.kernel
    expected = layer.bn(tf.concat([tf.nn.conv2d(r, k0, 2, "SAME"),
                                   tf.nn.conv2d(shifted, k1, 2, "SAME")], axis=-1),
                        training=True)
    assert y.shape == expected.shape == (2, -(-size // 2), -(-size // 2), 8)
    assert np.allclose(y.numpy(), expected.numpy(), atol=1e-5)


def test_pool_mix_weights_each_pool_per_target():
    """pool_mix's matmul equals the broadcast sum_k w[k, t] * pool_k, and its gradient
    reaches the weights and the pools."""
    pools = [tf.random.stateless_normal([2, 5, 5, 3], seed=[k, 9]) for k in range(2)]
    w = tf.random.stateless_uniform([2, 4], seed=[3, 3])
    with tf.GradientTape() as tape:
        tape.watch([w] + pools)
        y = fused.pool_mix(pools, w)
        loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=tf.float32))
    grads = tape.gradient(loss, [w] + pools)
    expected = tf.concat([w[0, t] * pools[0] + w[1, t] * pools[1] for t in range(4)], -1)
    assert y.shape == (2, 5, 5, 12)
    assert np.allclose(y.numpy(), expected.numpy(), atol=1e-6)
    ramp = np.arange(12, dtype=np.float32).reshape(4, 3)  # d loss / d y per channel
    sums = [p.numpy().sum(axis=(0, 1, 2)) for p in pools]
    assert np.allclose(grads[0].numpy(), [[ramp[t] @ sums[k] for t in range(4)]
                                          for k in range(2)], atol=1e-4)
    assert np.allclose(grads[1].numpy()[0, 0, 0], w.numpy()[0] @ ramp, rtol=1e-5)


def test_grouped_kernels_start_like_separate_glorot_kernels():
    """Each edge's slice of a grouped kernel is its own glorot draw (fan of one edge)."""
    init = fused.StackedInitializer("glorot_normal", 4)
    kernel = init([5, 5, 16, 4 * 16]).numpy()
    parts = np.split(kernel, 4, axis=-1)
    expected_std = np.sqrt(2.0 / (2 * 25 * 16))  # glorot on one (5, 5, 16, 16) kernel
    for part in parts:
        assert 0.8 * expected_std < part.std() < 1.2 * expected_std
    assert not np.allclose(parts[0], parts[1])
