"""Speed against the PyTorch BNAS reference, measured in the same run.

``../shared/reference-bench/`` (see its README) holds the public PyTorch reference
(gistvision/bnas) with ``setup.sh`` (a venv with CPU torch) and
``time_reference.py`` (one search step of its supernet and one training step of
BNAS-A, on constant random batches). It is a measuring instrument: this module only
runs it as a subprocess; nothing of its code is part of the project.

`compare` interleaves fresh processes, one round after the other: the reference's
search part, our search step (`search.search_process`), the reference's train part,
our train step of BNAS-A (`train.train_process`). A shared machine's load moves
absolute seconds by 1.5x between days; ratios of processes run side by side move
much less. Reported ratios (reference / ours, medians over the rounds; > 1 means
ours is faster):

* ``search_step``: supernet search step, target >= 3;
* ``first_step``: process launch to the end of the first search step, target > 1;
* ``train_step``: BNAS-A train step (20 cells x 36 channels, batch 64), target >= 3.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import numpy as np

from benchmarks import process, search, train
from benchmarks.config import REPO

BENCH_DIR = os.path.join(os.path.dirname(REPO), "shared", "reference-bench")
DEFAULT_VENV = "/tmp/torchref-venv"
# name -> (reference key, our key, target): ratio = reference / ours
RATIOS = {"search_step": ("search_step_s", "median_s", 3.0),
          "first_step": ("first_step_from_launch_s", "first_step_s", 1.0),
          "train_step": ("train_step_s", "median_s", 3.0)}


def bench_dir(path=None):
    """The reference-bench folder (`path`, $BNAS_REFERENCE_BENCH, or ../shared/...
    beside the checkout); ValueError naming what is missing."""
    path = path or os.environ.get("BNAS_REFERENCE_BENCH") or BENCH_DIR
    for name in ("setup.sh", "time_reference.py"):
        if not os.path.isfile(os.path.join(path, name)):
            raise ValueError(f"--reference needs the PyTorch reference bench: {name} not "
                             f"found in {path} (set BNAS_REFERENCE_BENCH)")
    return path


def venv_python(path):
    """The reference venv's python: set up or found by its setup.sh (idempotent; the
    venv is $TORCHREF_VENV, default /tmp/torchref-venv). ValueError in one line when
    it cannot be made (e.g. no package registry)."""
    venv = os.environ.get("TORCHREF_VENV") or DEFAULT_VENV
    proc = subprocess.run(["bash", os.path.join(path, "setup.sh")], capture_output=True,
                          text=True, env=dict(os.environ, TORCHREF_VENV=venv), check=False)
    python = os.path.join(venv, "bin", "python")
    if proc.returncode != 0 or not os.access(python, os.X_OK):
        lines = [line for line in (proc.stderr + proc.stdout).splitlines()
                 if line.strip() and not line.startswith("WARNING")]
        raise ValueError(f"--reference: could not set up the PyTorch venv {venv} with "
                         f"{path}/setup.sh (exit {proc.returncode}): "
                         f"{lines[-1] if lines else 'no output'}")
    return python


def reference_process(python, path, part, config, timeout=3600):
    """time_reference.py --part=`part` in a fresh process; its JSON result."""
    steps, warmup = config.repeats, max(1, config.warmup + 1)  # its first step is a warm-up
    with tempfile.TemporaryDirectory(prefix="bnas_ref_") as tmp:
        out = os.path.join(tmp, "ref.json")
        cmd = [python, os.path.join(path, "time_reference.py"), f"--part={part}",
               f"--steps={steps}", f"--warmup={warmup}", f"--json={out}",
               f"--batch_size={config.batch_size}", f"--image_size={config.image_size}"]
        if config.quick:
            cmd.append("--quick")
        env = dict(os.environ, REF_LAUNCH_TIME=repr(time.time()))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise RuntimeError(f"the reference's {part} part failed (exit "
                               f"{proc.returncode}): {process.error_line(proc.stderr)}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def ratios(reference_runs, our_runs):
    """{name: {reference, ours, ratio (median of the per-round ratios), ratios, target,
    met}} from per-round results: reference_runs[part] / our_runs[part] are lists of
    dicts, part 'search' or 'train'."""
    out = {}
    for name, (ref_key, our_key, target) in RATIOS.items():
        part = "train" if name == "train_step" else "search"
        pairs = [(r.get(ref_key), o.get(our_key))
                 for r, o in zip(reference_runs.get(part, []), our_runs.get(part, []))]
        pairs = [(r, o) for r, o in pairs if r and o]
        if not pairs:
            continue
        per_round = [r / o for r, o in pairs]
        ratio = float(np.median(per_round))
        out[name] = {"reference_s": float(np.median([r for r, _ in pairs])),
                     "ours_s": float(np.median([o for _, o in pairs])),
                     "ratio": ratio, "ratios": per_round, "target": target,
                     "met": ratio >= target if name != "first_step" else ratio > target}
    return out


def prepare(path=None):
    """(bench folder, venv python), set up if needed; ValueError (one line) if not."""
    path = bench_dir(path)
    return path, venv_python(path)


def compare(config, python, path, rounds=1, progress=print):
    """Interleave the reference's (run by `python`, from `prepare`) and our fresh
    processes for `rounds` rounds; the result dict: per-round results of both and
    `ratios`."""
    reference_runs, our_runs = {"search": [], "train": []}, {"search": [], "train": []}
    for i in range(rounds):
        tag = f"[reference] round {i + 1}/{rounds}:"
        for part in ("search", "train"):
            progress(f"{tag} reference {part} step ...")
            r = reference_process(python, path, part, config)
            reference_runs[part].append(r[part] | {k: r.get(k) for k in (
                "search_step_s", "train_step_s", "first_step_from_launch_s")})
            progress(f"{tag} our {part} step ...")
            ours = (search.search_process(config) if part == "search"
                    else train.train_process(config, "bnas-a"))
            our_runs[part].append(ours)
            progress(f"{tag} {part} step: reference {r[part]['median_s']:.3f} s, "
                     f"ours {ours['median_s']:.3f} s")
    result = {"rounds": rounds, "bench_dir": path, "reference": reference_runs,
              "ours": our_runs, "ratios": ratios(reference_runs, our_runs)}
    return result


def format_ratios(result):
    """Lines: each ratio with both medians and whether its target is met."""
    lines = []
    for name, r in result.get("ratios", {}).items():
        sign = ">" if name == "first_step" else ">="
        lines.append(f"reference / ours, {name:<11} {r['ratio']:>6.2f}x  (reference "
                     f"{r['reference_s']:.3f} s, ours {r['ours_s']:.3f} s; target "
                     f"{sign} {r['target']:g}x: {'met' if r['met'] else 'NOT met'})")
    return "\n".join(lines)

