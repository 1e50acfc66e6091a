"""tools/benchmark.py --reference: the reference's fresh processes interleaved with
ours, ratios reference/ours in the JSON, and a clean one-line refusal when the
reference bench or its venv cannot be had. A fake bench (a setup.sh and a
time_reference.py writing the reference's JSON) stands in for PyTorch."""
import json
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import config, reference, search, train  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = [sys.executable, str(REPO / "tools" / "benchmark.py")]

FAKE_TIMER = """
import argparse, json, sys, time
p = argparse.ArgumentParser()
for name in ("part", "steps", "warmup", "json", "batch_size", "image_size"):
    p.add_argument("--" + name)
p.add_argument("--quick", action="store_true")
a = p.parse_args()
with open(a.json + ".calls", "a") as f:
    f.write(a.part + "\\n")
log = __import__("os").environ["FAKE_REF_LOG"]
with open(log, "a") as f:
    f.write("reference " + a.part + "\\n")
r = {"median_s": 9.0 if a.part == "search" else 6.0, "first_step_from_launch_s": 20.0}
out = {a.part: r, a.part + "_step_s": r["median_s"], "first_step_from_launch_s": 20.0}
json.dump(out, open(a.json, "w"))
"""


def fake_bench(tmp_path, setup_exit=0):
    bench = tmp_path / "bench"
    bench.mkdir()
    venv = tmp_path / "venv"
    (bench / "setup.sh").write_text(
        "set -e\n"
        f"[ {setup_exit} = 0 ] || {{ echo 'ERROR: Could not find a version that satisfies "
        f"torch' >&2; exit {setup_exit}; }}\n"
        f'mkdir -p "$TORCHREF_VENV/bin"\nln -sf {sys.executable} "$TORCHREF_VENV/bin/python"\n')
    (bench / "time_reference.py").write_text(FAKE_TIMER)
    return bench, venv


def test_compare_interleaves_fresh_processes_and_computes_ratios(tmp_path, monkeypatch):
    bench, venv = fake_bench(tmp_path)
    log = tmp_path / "order.log"
    monkeypatch.setenv("TORCHREF_VENV", str(venv))
    monkeypatch.setenv("FAKE_REF_LOG", str(log))

    def ours(kind, median, first=None):
        def run(config, *args, **kwargs):
            with open(log, "a") as f:
                f.write(f"ours {kind}\n")
            return {"median_s": median, "first_step_s": first}
        return run

    monkeypatch.setattr(search, "search_process", ours("search", 3.0, 10.0))
    monkeypatch.setattr(train, "train_process", ours("train", 1.5))
    path, python = reference.prepare(str(bench))
    assert python == str(venv / "bin" / "python")
    result = reference.compare(config.quick_config(), python, path, rounds=2,
                               progress=lambda line: None)
    assert log.read_text().split("\n")[:-1] == [
        "reference search", "ours search", "reference train", "ours train"] * 2
    r = result["ratios"]
    assert r["search_step"]["ratio"] == pytest.approx(3.0) and r["search_step"]["met"]
    assert r["first_step"]["ratio"] == pytest.approx(2.0) and r["first_step"]["met"]
    assert r["train_step"]["ratio"] == pytest.approx(4.0) and r["train_step"]["met"]
    assert r["train_step"]["ratios"] == [4.0, 4.0]
    text = reference.format_ratios(result)
    assert "train_step" in text and "4.00x" in text and "target >= 3x: met" in text


def test_ratios_below_target_are_not_met():
    r = reference.ratios({"search": [{"search_step_s": 5.0, "first_step_from_launch_s": 9.0}],
                          "train": [{"train_step_s": 4.0}]},
                         {"search": [{"median_s": 2.5, "first_step_s": 10.0}],
                          "train": [{"median_s": 2.0}]})
    assert r["search_step"]["ratio"] == 2.0 and not r["search_step"]["met"]
    assert r["first_step"]["ratio"] == pytest.approx(0.9) and not r["first_step"]["met"]
    assert r["train_step"]["ratio"] == 2.0 and not r["train_step"]["met"]


@pytest.mark.parametrize("case", ["no_bench", "setup_fails", "rounds_alone"])
def test_reference_refuses_in_one_line_and_writes_nothing(tmp_path, case):
    bench, venv = fake_bench(tmp_path, setup_exit=1 if case == "setup_fails" else 0)
    env = dict(__import__("os").environ, TORCHREF_VENV=str(venv),
               BNAS_REFERENCE_BENCH=str(tmp_path / "none" if case == "no_bench" else bench))
    out = tmp_path / "b.json"
    args = ["--reference_rounds=2"] if case == "rounds_alone" else ["--reference"]
    proc = subprocess.run(TOOL + args + ["--quick", "--only=train", f"--output={out}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    message = {"no_bench": "--reference needs the PyTorch reference bench: setup.sh not found",
               "setup_fails": "could not set up the PyTorch venv",
               "rounds_alone": "--reference_rounds needs --reference"}[case]
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if case == "setup_fails":
        assert "Could not find a version that satisfies torch" in proc.stderr
    assert not out.exists()
