"""Benchmark harness: the quick run writes every figure; bad input fails in one line.

No timing thresholds here: the figures are checked for presence and sanity only.
"""
import json
import math
import pathlib
import subprocess
import sys

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
    assert set(result["targets"]) == set(benchmark.TARGETS)
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    # the readable table names the figures
    assert "BNAS search step" in stdout and "LceBconv2d ops" in stdout


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
