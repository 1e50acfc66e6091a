"""Benchmark harness: the quick run writes every figure; bad input fails in one line.

No timing thresholds here: the figures are checked for presence and sanity only.
"""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from bnas_tf import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = [sys.executable, str(REPO / "tools" / "benchmark.py")]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(TOOL + ["--quick", f"--output={out}", f"--bench_data_dir={cifar_dir}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_run_writes_every_figure(quick_result):
    result, stdout = quick_result
    assert result["quick"] is True
    for key in benchmark.KEYS:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key
    # every binary conv of the quick network (all of them live) became one LceBconv2d
    assert result["bconv_ops"] == result["binary_convs"] == result["live_binary_convs"]
    assert result["bconv_ops_binres"] == result["binary_convs_binres"]
    assert result["all_binary_convs_converted"] is True
    # residual=binary removes float convs: fewer bytes than the paper's float residual
    assert result["tflite_binary_bytes_binres"] < result["tflite_binary_bytes"]
    assert result["size_ratio"] == pytest.approx(
        result["tflite_float_bytes"] / result["tflite_binary_bytes"])
    assert result["input_ratio"] == pytest.approx(
        result["input_images_per_s"] / result["train_images_per_s"])
    # the first step (fresh process, tracing included) takes longer than a later one
    assert result["first_step_s"] > result["search_step_s"]
    assert result["speedup"]["search_step_s"] == pytest.approx(
        benchmark.REFERENCE["search_step_s"] / result["search_step_s"])
    env = result["environment"]
    assert env["tensorflow"] and env["cpu_count"] >= 1
    # the machine's speed at start and end (to compare runs on a shared machine)
    for when in ("start", "end"):
        speed = env["machine_speed"][when]
        assert set(speed) == {"matmul_gflops", "elementwise_gbps"}
        assert all(math.isfinite(v) and v > 0 for v in speed.values())
    assert "machine speed (start / end): float32 matmul GFLOP/s" in stdout
    assert set(result["targets"]) == set(benchmark.TARGETS)
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    # the readable table names the figures
    assert "BNAS search step" in stdout and "LceBconv2d ops" in stdout


def test_search_figures_are_medians_over_fresh_processes(monkeypatch):
    """Each search process is one sample of the first step: the reported figures are
    medians over `search_processes` processes, the peak RSS the largest, and every
    process's steps and result are kept."""
    samples = iter([(30.0, 3.5, 3000.0), (20.0, 3.1, 3200.0), (25.0, 3.3, 3100.0)])
    calls = []

    def fake_process(config, conv_dtype=None):
        first, step, rss = next(samples)
        calls.append(conv_dtype)
        times = [step - 0.1, step, step + 0.1]
        return {"first_step_s": first, "first_step_from_process_start_s": first + 0.5,
                "startup_and_imports_s": 3.0, "build_s": 1.0, "first_call_s": first - 4.0,
                "median_s": step, "times_s": times, "cpu_s_per_step": 2 * step,
                "conv_dtype": "bfloat16", "peak_rss_mb": rss}

    monkeypatch.setattr(benchmark, "search_process", fake_process)
    r = benchmark.search_processes(benchmark.BenchConfig(search_processes=3), "float32")
    assert calls == ["float32"] * 3
    assert r["first_step_s"] == 25.0 and r["first_call_s"] == 21.0
    assert r["median_s"] == pytest.approx(3.3) and r["cpu_s_per_step"] == pytest.approx(6.6)
    assert r["peak_rss_mb"] == 3200.0 and r["processes"] == 3 and len(r["runs"]) == 3
    assert len(r["times_s"]) == 9
    with pytest.raises(ValueError, match="search_processes must be >= 1"):
        benchmark.BenchConfig(search_processes=0, parts=("search",)).validate()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "b.json"
    for args, message in ((["--only=search,warp"], "unknown benchmark part(s) warp"),
                          ([f"--bench_data_dir={tmp_path / 'none'}", "--only=input"],
                           "image folder not found"),
                          ([], "--output=bench.json is required")):
        flags = args + ([f"--output={out}"] if "required" not in message else [])
        proc = subprocess.run(TOOL + flags, capture_output=True, text=True, timeout=120,
                              cwd=REPO)
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match="is a directory"):
        benchmark.write_json(str(tmp_path), {"a": 1})


def test_write_json_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "b.json"
    benchmark.write_json(str(path), {"search_step_s": 1.5})
    assert json.loads(path.read_text()) == {"search_step_s": 1.5}
    with pytest.raises(TypeError):
        benchmark.write_json(str(path), {"bad": object()})
    assert json.loads(path.read_text()) == {"search_step_s": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


# ----------------------------------------------------------------------------- speed work

def _edge_kernels(grouped, separate):
    """(grouped kernel variable, the per-edge kernel variables of `separate` in its
    column order) per conv type: a grouped kernel concatenates the 14 edges' kernels
    in `supernet.SOURCE_ORDER`."""
    from bnas_tf.search import supernet
    return [(kernel, [dict(separate.edges[e].singles)[k].conv.kernel
                      for e in supernet.SOURCE_ORDER])
            for kernel, k in zip(grouped.kernels, grouped.conv_indices)]


def _copy_into_separate(grouped, separate):
    """Give the per-edge cell the grouped cell's weights."""
    for a, b in ((grouped.pre0, separate.pre0), (grouped.pre1, separate.pre1)):
        for va, vb in zip(a.weights, b.weights):
            vb.assign(va)
    if grouped.residual_conv is not None:
        separate.residual_conv.kernel.assign(grouped.residual_conv.kernel)
    for kernel, edge_kernels in _edge_kernels(grouped, separate):
        for part, edge_kernel in zip(np.split(kernel.numpy(), len(edge_kernels), axis=-1),
                                     edge_kernels):
            edge_kernel.assign(part)


@pytest.mark.parametrize("reduction,scheme", [(False, "xnor"), (True, "xnor"),
                                               (False, "bars"), (True, "binarynet"),
                                               (False, "float")])
def test_grouped_search_cell_equals_one_layer_per_edge(reduction, scheme):
    """The supernet's grouped cell (shared BN -> sign per source state, one wide conv
    per conv type, shared pools) computes what separate per-edge ops compute: same
    outputs and same gradients w.r.t. inputs and alphas. Odd channel counts make every
    binary conv output an odd multiple of its scale (never a ReLU tie at 0), so the
    two summation orders cannot differ in a ReLU mask. BARS' tensor-wide weight scale
    stays one scale per edge inside a grouped kernel."""
    import tensorflow as tf
    from bnas_tf import binary, ops
    from bnas_tf.search import supernet
    x0 = tf.random.stateless_normal([4, 8, 8, 6], seed=[1, 2])
    x1 = tf.random.stateless_normal([4, 8, 8, 6], seed=[3, 4])
    alpha = tf.Variable(tf.random.stateless_normal([14, len(ops.BNAS_OPS)], seed=[5, 6]))
    config = ops.OpConfig(binarization=binary.scheme(scheme), affine=False, pool_bn=True)
    cells = [supernet.SearchCell(ops.BNAS_OPS, 3, reduction, False, True, config,
                                 share_bn=grouped, conv_dtype="float32")
             for grouped in (True, False)]
    for cell in cells:
        cell([x0, x1], tf.nn.softmax(alpha))
    grouped, separate = cells
    assert len(grouped.sources) == 5 and not grouped.edges and len(separate.edges) == 14
    assert sum(int(np.prod(v.shape)) for v in grouped.trainable_weights) == \
        sum(int(np.prod(v.shape)) for v in separate.trainable_weights)
    _copy_into_separate(grouped, separate)
    # the binary kernels of both cells: one grouped kernel per conv type, 14 per edge
    kernel_pairs = _edge_kernels(grouped, separate)
    results = []
    for cell, side in zip(cells, (0, 1)):
        kernels = [pair[0] for pair in kernel_pairs] if side == 0 else \
            [v for pair in kernel_pairs for v in pair[1]]
        with tf.GradientTape() as tape:
            tape.watch([x0, x1])
            y = cell([x0, x1], tf.nn.softmax(alpha), training=True)
            loss = tf.reduce_sum(y * tf.random.stateless_normal(y.shape, seed=[7, 8]))
        grads = tape.gradient(loss, [x0, x1, alpha] + kernels)
        if side == 1:  # concatenate the per-edge kernel gradients like the kernels
            sizes = [len(pair[1]) for pair in kernel_pairs]
            flat, grads = grads[3:], grads[:3]
            for n in sizes:
                grads.append(tf.concat(flat[:n], axis=-1))
                flat = flat[n:]
        results.append([y] + grads)
    assert len(results[0]) == len(results[1]) == 4 + len(kernel_pairs)
    for a, b in zip(*results):
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2),
                                                     (5, 1, 2)])
def test_padding_bias_turns_plus_one_padding_into_a_shift(kernel, stride, dilation):
    """A +-1 conv with a 'SAME' border of +1 equals the conv of the shifted signs
    (s - 1, zero border) plus `padding_bias`, at every position (odd sizes: uneven
    borders)."""
    import tensorflow as tf
    from bnas_tf import binary
    from bnas_tf.search import supernet
    s = tf.sign(tf.random.stateless_normal([2, 7, 9, 3], seed=[kernel, stride]))
    signs = tf.sign(tf.random.stateless_normal([kernel, kernel, 3, 5], seed=[dilation, 1]))
    pads = [binary.same_padding(n, kernel, stride, dilation) for n in (7, 9)]
    padded = tf.pad(s, [[0, 0], *pads, [0, 0]], constant_values=1.0)
    expected = tf.nn.conv2d(padded, signs, stride, "VALID", dilations=dilation)
    shifted = tf.nn.conv2d(s - 1.0, signs, stride, "SAME", dilations=dilation)
    bias = supernet.padding_bias(signs, 1.0)
    assert bias.shape == (5,) and supernet.padding_bias(signs, 0.0) is None
    assert np.array_equal(tf.nn.bias_add(shifted, bias).numpy(), expected.numpy())
    assert not np.array_equal(shifted.numpy(), expected.numpy())


@pytest.mark.parametrize("reduction", [False, True])
def test_bfloat16_search_cell_follows_the_float32_one(reduction):
    """conv_dtype='bfloat16' (shifted signs, bias and ReLU in bfloat16) computes the
    float32 cell's outputs and gradients to bfloat16 precision (the kernel gradients
    add the padding bias's gradient to the shifted conv's, both rounded: a few
    tenths of a percent of their scale at the benchmark's shape, up to ~2% here)."""
    import tensorflow as tf
    from bnas_tf import ops
    from bnas_tf.search import supernet
    tf.keras.utils.set_random_seed(0)
    x0 = tf.random.stateless_normal([4, 8, 8, 6], seed=[1, 2])
    x1 = tf.random.stateless_normal([4, 8, 8, 6], seed=[3, 4])
    alpha = tf.Variable(tf.random.stateless_normal([14, len(ops.BNAS_OPS)], seed=[5, 6]))
    config = ops.OpConfig(affine=False, pool_bn=True)
    cells = [supernet.SearchCell(ops.BNAS_OPS, 4, reduction, False, True, config,
                                 conv_dtype=dtype) for dtype in ("float32", "bfloat16")]
    for cell in cells:
        cell([x0, x1], tf.nn.softmax(alpha))
    for a, b in zip(cells[0].weights, cells[1].weights):
        b.assign(a)
    results = []
    for cell in cells:
        with tf.GradientTape() as tape:
            tape.watch([x0, x1])
            y = cell([x0, x1], tf.nn.softmax(alpha), training=True)
            loss = tf.reduce_sum(y * tf.random.stateless_normal(y.shape, seed=[7, 8]))
        results.append([y] + tape.gradient(loss, [x0, x1, alpha] + cell.kernels))
    assert len(results[0]) == 4 + len(cells[0].kernels)
    for a, b in zip(*results):
        a, b = a.numpy(), b.numpy()
        assert np.abs(a).max() > 0
        assert np.abs(a - b).max() <= 0.03 * np.abs(a).max()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_widen_and_weight_has_the_gradients_of_cast_and_multiply(dtype):
    """Its fused batch-norm-gradient backward gives what autodiff of cast-and-multiply
    gives, for the input and the per-channel factor."""
    import tensorflow as tf
    from bnas_tf.search import supernet
    y = tf.cast(tf.nn.relu(tf.random.stateless_normal([2, 3, 3, 4], seed=[1, 1])), dtype)
    factor = tf.random.stateless_uniform([4], seed=[2, 2])
    g = tf.random.stateless_normal([2, 3, 3, 4], seed=[3, 3])
    results = []
    for fn in (supernet.widen_and_weight, lambda a, b: tf.cast(a, tf.float32) * b):
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
    import tensorflow as tf
    from bnas_tf.search import supernet
    x = tf.random.stateless_normal([2, size, size, 6], seed=[size, 1])
    layer = supernet.FactorizedReduce(8)
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
    import tensorflow as tf
    from bnas_tf.search import supernet
    pools = [tf.random.stateless_normal([2, 5, 5, 3], seed=[k, 9]) for k in range(2)]
    w = tf.random.stateless_uniform([2, 4], seed=[3, 3])
    with tf.GradientTape() as tape:
        tape.watch([w] + pools)
        y = supernet.pool_mix(pools, w)
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
    from bnas_tf.search import supernet
    init = supernet.StackedInitializer("glorot_normal", 4)
    kernel = init([5, 5, 16, 4 * 16]).numpy()
    parts = np.split(kernel, 4, axis=-1)
    expected_std = np.sqrt(2.0 / (2 * 25 * 16))  # glorot on one (5, 5, 16, 16) kernel
    for part in parts:
        assert 0.8 * expected_std < part.std() < 1.2 * expected_std
    assert not np.allclose(parts[0], parts[1])


@pytest.mark.parametrize("kernel", [3, 5])
def test_strided_dilated_binary_conv_reads_the_strided_grid_and_exports(kernel):
    """binary.BinaryConv at stride 2, dilation 2 runs an undilated conv on the even
    pixels: the outputs of the stride-1 dilated conv subsampled (what it computed
    before, at 4x the work), and still one LceBconv2d after conversion."""
    import tensorflow as tf
    from bnas_tf import binary, export
    from bnas_tf.benchmark import randomize_batchnorm
    x = tf.random.stateless_normal([2, 7, 7, 4], seed=[1, kernel])
    layer = binary.BinaryConv(6, kernel, 2, 2)
    y = layer(x, training=True)
    assert layer.pick == 2 and layer.subsample == 1 and layer.conv.dilation_rate == (1, 1)
    reference = binary.quant_conv(6, kernel, binary.XNOR, strides=1, dilation_rate=2)
    h = layer.bn(x, training=True)
    reference(h)
    reference.kernel.latent_variable.assign(layer.conv.kernel.latent_variable)
    expected = tf.nn.relu(reference(h)[:, ::2, ::2, :])
    assert y.shape == expected.shape == (2, 4, 4, 6)
    assert np.allclose(y.numpy(), expected.numpy(), atol=1e-5)

    inputs = tf.keras.Input((16, 16, 3))
    z = tf.keras.layers.Conv2D(8, 1)(inputs)
    z = binary.BinaryConv(8, kernel, 2, 2, name="dil")(z)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(
        tf.keras.layers.GlobalAveragePooling2D()(z)))
    report = export.export(randomize_batchnorm(model), samples=4)
    assert report.bconv_ops == report.binary_convs == 1
