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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import config as bench_config  # noqa: E402
from benchmarks import harness, process, table  # noqa: E402
from benchmarks import search as bench_search  # noqa: E402

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
    for key in bench_config.KEYS:
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
        bench_config.REFERENCE["search_step_s"] / result["search_step_s"])
    env = result["environment"]
    assert env["tensorflow"] and env["cpu_count"] >= 1
    # the machine's speed at start and end (to compare runs on a shared machine)
    for when in ("start", "end"):
        speed = env["machine_speed"][when]
        assert set(speed) == {"matmul_gflops", "elementwise_gbps"}
        assert all(math.isfinite(v) and v > 0 for v in speed.values())
    assert "machine speed (start / end): float32 matmul GFLOP/s" in stdout
    assert set(result["targets"]) == set(bench_config.TARGETS)
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    # the readable table names the figures
    assert "BNAS search step" in stdout and "LceBconv2d ops" in stdout
    # tiny shapes against full-shape references and targets: the table says they do not apply
    assert "QUICK shapes: a smoke run" in stdout
    assert "QUICK shapes: a smoke run" not in table.format_table({**result, "quick": False})


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

    monkeypatch.setattr(bench_search, "search_process", fake_process)
    r = bench_search.search_processes(bench_config.BenchConfig(search_processes=3), "float32")
    assert calls == ["float32"] * 3
    assert r["first_step_s"] == 25.0 and r["first_call_s"] == 21.0
    assert r["median_s"] == pytest.approx(3.3) and r["cpu_s_per_step"] == pytest.approx(6.6)
    assert r["peak_rss_mb"] == 3200.0 and r["processes"] == 3 and len(r["runs"]) == 3
    assert len(r["times_s"]) == 9
    with pytest.raises(ValueError, match="search_processes must be >= 1"):
        bench_config.BenchConfig(search_processes=0, parts=("search",)).validate()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "b.json"
    for args, message in ((["--only=search,warp"], "unknown benchmark part(s) warp"),
                          ([f"--bench_data_dir={tmp_path / 'none'}", "--only=input"],
                           "image folder not found"),
                          ([], "--output=bench.json is required"),
                          # a file where the output's directory should be: refused
                          # before the measurements (it crashed after them)
                          ([f"--output={tmp_path / 'file' / 'b.json'}", "--only=export"],
                           "is a file, not a directory")):
        (tmp_path / "file").write_text("x")
        flags = args + ([f"--output={out}"] if "required" not in message
                        and not any(a.startswith("--output") for a in args) else [])
        proc = subprocess.run(TOOL + flags, capture_output=True, text=True, timeout=120,
                              cwd=REPO)
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match="is a directory"):
        harness.write_json(str(tmp_path), {"a": 1})


def test_write_json_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "b.json"
    harness.write_json(str(path), {"search_step_s": 1.5})
    assert json.loads(path.read_text()) == {"search_step_s": 1.5}
    with pytest.raises(TypeError):
        harness.write_json(str(path), {"bad": object()})
    assert json.loads(path.read_text()) == {"search_step_s": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


@pytest.mark.parametrize("kernel", [3, 5])
def test_strided_dilated_binary_conv_reads_the_strided_grid_and_exports(kernel):
    """binary.BinaryConv at stride 2, dilation 2 runs an undilated conv on the even
    pixels: the outputs of the stride-1 dilated conv subsampled (what it computed
    before, at 4x the work), and still one LceBconv2d after conversion."""
    import tensorflow as tf
    from bnas_tf import binary, export
    from bnas_tf.export import randomize_batchnorm
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


def test_a_childs_peak_rss_is_its_own_not_the_parents():
    """wait4's ru_maxrss of a child carries this process's high-water mark over exec:
    a small child of a large parent used to report the parent's peak."""
    parent = np.ones(700 * 2 ** 20 // 8)  # this process: > 700 MB resident
    config = bench_config.quick_config()
    report, small, _ = process.run_child("process", "child_probe", {"mb": 1}, config, 120)
    assert report == {"sum": float(2 ** 20 // 8)}
    _, large, _ = process.run_child("process", "child_probe", {"mb": 400}, config, 120)
    assert small < 300 < 400 < large < 700 + 300, (small, large)
    del parent
