"""The main job end to end on real CIFAR-10 images: search -> train -> export, resumable."""
import json
import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cifar_dir, out, *extra):
    cmd = [sys.executable, os.path.join(REPO, "tools", "pipeline.py"), "--dataset=folder",
           f"--data_dir={cifar_dir}", "--max_examples=128", "--search_epochs=1",
           "--train_epochs=1", "--cells=3", "--channels=4", "--batch_size=16",
           "--progress=none", "--export_samples=8", f"--output_dir={out}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_pipeline_search_train_export_and_rerun(cifar_dir, tmp_path):
    out = tmp_path / "demo"
    result = _run(cifar_dir, out)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "pipeline.json").read_text())
    assert os.path.isfile(summary["genotype"])
    assert summary["export"]["bconv_ops"] > 0 and summary["export"]["agreement"] >= 0.9
    assert (out / "model.tflite").stat().st_size == summary["export"]["bytes"]
    assert 0.0 <= summary["train"]["top1"] <= 1.0 and summary["train"]["biops"] > 0
    genotype_before = (out / "search" / "genotype.json").read_text()
    # Rerunning the same command finds both stages finished and redoes neither.
    again = _run(cifar_dir, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "search" / "genotype.json").read_text() == genotype_before
    history = json.loads((out / "search" / "search_summary.json").read_text())["epochs"]
    assert len(history) == 1
    # A different run (other channels) into the same folder is refused; nothing changes.
    tflite = (out / "model.tflite").read_bytes()
    other = _run(cifar_dir, out, "--channels=6")
    assert other.returncode != 0 and "different search" in other.stderr
    assert (out / "search" / "genotype.json").read_text() == genotype_before
    assert (out / "model.tflite").read_bytes() == tflite
