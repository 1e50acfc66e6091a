"""The main job end to end on real CIFAR-10 images: search -> train -> export, resumable."""
import json
import os
import re
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
    test = summary["test"]
    assert 0.0 <= test["top1"] <= 1.0 and summary["network"]["biops"] > 0
    assert test["images"] > 0 and test["chance_top1"] == 0.1 and test["split"] == "test"
    assert summary["search"]["best_epoch"] == 1  # epochs count from 1
    # The printed summary: every figure with its split and images, chance, what to run next.
    text = result.stdout[result.stdout.index("\nsearch (bnas, 1 epoch on"):]
    assert all(len(line) <= 100 for line in text.splitlines()), text
    assert f"on {test['images']} test images" in text and "chance 0.100" in text
    assert "search_val images" in text and "python tools/study.py --profile=cpu" in text
    assert '"train": {' not in text
    genotype_before = (out / "search" / "genotype.json").read_text()
    # Rerunning the same command finds both stages finished and redoes neither.
    again = _run(cifar_dir, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "search" / "genotype.json").read_text() == genotype_before
    history = json.loads((out / "search" / "search_summary.json").read_text())["epochs"]
    assert len(history) == 1
    # README's TensorBoard command: the output folder holds both stages' logs.
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    logdirs = re.findall(r"tensorboard --logdir (\S+?)`", readme)
    assert logdirs and "runs/demo" in logdirs
    for logdir in logdirs:
        folder = out / logdir.replace("runs/demo", "").replace("DIR", "").strip("/")
        events = {p.relative_to(out).parts[0] for p in folder.rglob("events.out.tfevents.*")}
        assert events == {"search", "train"}, logdir
    # A different run (other channels) into the same folder is refused; nothing changes.
    tflite = (out / "model.tflite").read_bytes()
    other = _run(cifar_dir, out, "--channels=6")
    assert other.returncode != 0 and "different search" in other.stderr
    assert (out / "search" / "genotype.json").read_text() == genotype_before
    assert (out / "model.tflite").read_bytes() == tflite
