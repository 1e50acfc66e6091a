"""One trial of the study (one arm, one seed): genotype -> matched spec -> train ->
held-out evaluation -> LCE export, resumable.

``DIR/trials/<arm>/seed<k>/`` holds ``search/`` (runner.run_search's directory,
resumed by it), ``genotype.json``, ``spec.json`` (the matched network),
``train/`` (training.train's model directory, resumed by it), ``model.tflite``,
``stages.json`` (per stage: wall and CPU seconds, those spent before a kill
included, whether it was resumed) and,
last, ``trial.json`` (the trial's record; its presence means done).
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time

from bnas_tf import export, files, genotypes, training
from bnas_tf import model_dir as mdir
from bnas_tf.search import runner
from bnas_tf.search import search_dir as search_files
from bnas_tf.search.bnas import perturbation
from bnas_tf.study import arms, matching

TRIAL_FILE = "trial.json"
STAGES_FILE = "stages.json"
# A genotype derived from alphas whose mean KL divergence from uniform is below this
# (nats per edge) is called indistinguishable from the initial alphas: ~1e-3 nats is a
# few tenths of a percent of probability moved per op; the first look had < 1e-4.
ALPHA_KL_MIN = 1e-3


def trial_dir(output_dir, arm, seed):
    return os.path.join(output_dir, "trials", arm, f"seed{seed}")


def load(output_dir, arm, seed):
    """The trial.json record of a finished trial, or None."""
    path = os.path.join(trial_dir(output_dir, arm, seed), TRIAL_FILE)
    return mdir.read_json(path) if os.path.isfile(path) else None


class _Stages:
    """stages.json: wall/CPU seconds per stage; a stage already recorded is not re-timed.

    While a stage runs, its seconds so far are saved every `FLUSH_S` seconds (and when
    it raises) as ``{"partial": ...}``; a stage rerun after a kill starts from them, so
    its seconds are what it cost, the work lost to the kill included, but for the at
    most `FLUSH_S` seconds after the last save before a kill -9 (they used to count only
    the last process's part: a search resumed at its last epoch cost one epoch)."""

    FLUSH_S = 30.0

    def __init__(self, directory):
        self.path = os.path.join(directory, STAGES_FILE)
        self.data = mdir.read_json(self.path) if os.path.isfile(self.path) else {}

    def run(self, name, fn, resumed_if=None):
        if name in self.data and "result" in self.data[name]:
            return self.data[name]["result"]
        before = self.data.get(name, {}).get("partial", {"wall_s": 0.0, "cpu_s": 0.0})
        resumed = bool(resumed_if and os.path.exists(resumed_if))
        wall, cpu = time.perf_counter(), time.process_time()

        def spent():
            return {"wall_s": before["wall_s"] + time.perf_counter() - wall,
                    "cpu_s": before["cpu_s"] + time.process_time() - cpu}

        def save_partial():
            self.data[name] = {"partial": spent()}
            files.write_json(self.path, self.data)

        def flush_until_stopped():
            while not stop.wait(self.FLUSH_S):
                save_partial()

        stop = threading.Event()
        flusher = threading.Thread(target=flush_until_stopped, daemon=True)
        flusher.start()
        try:
            result = fn()
        except BaseException:
            stop.set()
            flusher.join()
            save_partial()
            raise
        stop.set()
        flusher.join()
        self.data[name] = {**spent(), "resumed": resumed, "result": files.plain(result)}
        files.write_json(self.path, self.data)
        return result


def alpha_report(summary, search_config):
    """Per search epoch, how far the alphas are from uniform, and whether the derived
    genotype's epoch is indistinguishable from the initial (uniform) alphas.

    The measure is the mean KL(softmax(alpha) || uniform) over alpha rows, which is
    ln K - H for a row of K choices, so it comes from the mean row entropy H the
    search logs per epoch: BNAS ``alpha_entropy`` (every row has K = len(ops)); BARS
    ``bars/alpha_entropy`` over its op rows (one per dense edge of every stage cell and
    of the reduction cell), width rows and depth rows (one each per stage), whose
    uniform mean entropy is the mean of their ln K. Both initialise alphas (near)
    uniform, so the initial value is ~0.
    """
    epochs = summary.get("epochs", [])
    best = summary.get("best_epoch", epochs[-1]["epoch"] if epochs else None)
    if search_config.method == "bnas":
        key, uniform = "alpha_entropy", math.log(len(search_config.ops))
    else:
        settings = search_config.settings
        stages = len(settings.base_channels)
        rows = ([math.log(len(search_config.ops))] * (stages + 1) * len(genotypes.dense_edges())
                + [math.log(len(settings.width_choices))] * stages
                + [math.log(settings.max_depth + 1)] * stages)
        key, uniform = "bars/alpha_entropy", sum(rows) / len(rows)
    per_epoch = [uniform - e[key] for e in epochs if key in e]
    # best_epoch counts from 1 (search_summary.json), per_epoch from 0
    at_best = per_epoch[best - 1] if best is not None and 1 <= best <= len(per_epoch) else None
    return {"measure": "mean KL from uniform (nats)", "per_epoch": per_epoch,
            "derived_epoch": best, "at_derived_epoch": at_best,
            "indistinguishable": at_best is not None and abs(at_best) < ALPHA_KL_MIN,
            "learnable_ops": [e.get("learnable_ops") for e in epochs]}


def code_version():
    """The code a trial runs: bnas_tf's version and, in a git checkout, its commit and
    whether tracked files were modified (None where git or the checkout is missing)."""
    import subprocess
    import bnas_tf
    root = os.path.dirname(os.path.dirname(os.path.abspath(bnas_tf.__file__)))

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"bnas_tf": bnas_tf.__version__, "commit": commit,
            "modified": None if status is None else bool(status)}


def run_trial(study, arm_name, seed, log=print):
    """Run (or resume) one trial; returns its record (also DIR/.../trial.json)."""
    done = load(study.output_dir, arm_name, seed)
    if done is not None:
        return done
    config, arm = study.config, arms.get(arm_name)
    directory = trial_dir(study.output_dir, arm_name, seed)
    os.makedirs(directory, exist_ok=True)
    stages = _Stages(directory)
    record = {"arm": arm_name, "seed": seed, "code": code_version()}
    tag = f"[{arm_name} seed {seed}]"

    search = None
    genotype = None
    if arm.kind in ("search", "random") or arm.method == "bars":
        search = arms.search_config(arm, config, seed)
    if arm.kind == "search":
        search_dir = _shared_search(study, arm, seed, search)
        if search_dir:
            log(f"{tag} {arm.method} search: the finished search of {arm.shares_search} "
                f"seed {seed} ({search_dir})")
            record["search_shared_with"] = arm.shares_search
            summary = stages.run("search", lambda: mdir.read_json(
                os.path.join(search_dir, runner.SUMMARY_FILE)))
        else:
            search_dir = os.path.join(directory, "search")
            log(f"{tag} {arm.method} search: {config.search_epochs} epoch(s) -> {search_dir}")
            summary = stages.run("search", lambda: runner.run_search(
                arm.method, study.search_data, search, search_dir, verbose=2), search_dir)
        genotype = genotypes.load(os.path.join(search_dir, runner.GENOTYPE_FILE))
        if arm.selection == "perturbation":
            log(f"{tag} selecting ops by perturbation on the trained supernet")
            selected = stages.run("select", lambda: _select(search_dir))
            if "genotype" not in selected:  # a trial selected before scores were kept
                selected = {"genotype": selected, "scores": None}
            genotype = genotypes.from_dict(selected["genotype"])
            record["selection"] = {"rule": "perturbation", "search_dir": search_dir,
                                   "batches": arms.PERTURBATION_BATCHES,
                                   "scores": selected["scores"]}
        record["alphas"] = alpha_report(summary, search)
        if record["alphas"]["indistinguishable"] and not arm.selection:  # read from them
            log(f"{tag} WARNING: the genotype comes from alphas indistinguishable from their "
                f"initial values ({record['alphas']['measure']} "
                f"{record['alphas']['at_derived_epoch']:.2e} < {ALPHA_KL_MIN:g})")
    elif arm.kind == "random":
        genotype = genotypes.from_dict(stages.run(
            "draw", lambda: arms.random_genotype(arm, config, seed, study.table).to_dict()))
    elif arm.kind == "released":
        genotype = genotypes.BNAS_A
    if genotype is not None:
        genotypes.save(genotype, os.path.join(directory, "genotype.json"))
        record["genotype"] = genotype.to_dict()

    def sized():
        spec = arms.final_spec(arm, config, search, genotype)
        if arm.matched:
            spec, row = matching.match(spec, study.target, study.table)
        else:
            row = study.table.get(spec)
        return {"spec": spec, "costs": row}

    size = stages.run("match", sized)
    spec = size["spec"]
    files.write_json(os.path.join(directory, "spec.json"), spec)
    log(f"{tag} network {spec.get('name')}: width {matching.width_of(spec)}, "
        f"{size['costs']['equivalent_ops'] / 1e6:.3f}M EqOPs "
        f"(target {study.target / 1e6:.3f}M{'' if arm.matched else ', not matched'})")

    train_dir = os.path.join(directory, "train")
    train_config = dataclasses.replace(study.train_config, seed=seed)
    log(f"{tag} training {train_config.epochs} epoch(s) -> {train_dir}")
    train_data = dataclasses.replace(study.train_data, seed=seed)
    metrics = stages.run("train", lambda: training.train(spec, train_data, train_config,
                                                         train_dir, strategy=config.strategy),
                         os.path.join(train_dir, "ckpt"))
    log(f"{tag} evaluating on the held-out test split ({study.split['test_files']} images)")
    heldout = stages.run("evaluate", lambda: training.evaluate(
        train_dir, study.test_data, split="train", write=False))
    tflite = os.path.join(directory, "model.tflite")
    exported = stages.run("export", lambda: _export(study, train_dir, tflite))
    log(f"{tag} held-out top-1 {heldout['top1']:.4f}; {exported['bytes']:,} bytes, "
        f"{exported['bconv_ops']} LceBconv2d, latency "
        f"{'-' if exported['latency_ms'] is None else format(exported['latency_ms'], '.2f')} ms")

    timing = {name: {k: v for k, v in s.items() if k != "result"}
              for name, s in stages.data.items()}
    record.update({
        "top1": heldout["top1"], "top5": heldout["top5"], "test_examples": heldout["examples"],
        "params": metrics.get("params"), "flops": metrics.get("flops"),
        "biops": metrics.get("biops"), "equivalent_ops": metrics.get("equivalent_ops"),
        "target_equivalent_ops": study.target, "matched": arm.matched,
        "width": matching.width_of(spec), "spec": spec,
        "train_top1_holdout_of_pool": metrics.get("top1"), **exported,
        "search_wall_s": timing.get("search", {}).get("wall_s", 0.0),
        "search_cpu_s": timing.get("search", {}).get("cpu_s", 0.0),
        "train_wall_s": timing["train"]["wall_s"], "train_cpu_s": timing["train"]["cpu_s"],
        "resumed": any(s.get("resumed") for s in timing.values()), "stages": timing,
    })
    files.write_json(os.path.join(directory, TRIAL_FILE), record)
    return record


def _select(search_dir):
    genotype, scores = perturbation.select(search_dir, arms.PERTURBATION_BATCHES,
                                           with_scores=True)
    return {"genotype": genotype.to_dict(), "scores": scores}


def _shared_search(study, arm, seed, search):
    """The finished search directory of the arm `arm` shares its search with, for this
    seed, when it ran the same SearchConfig `search` (then it holds the same supernet:
    searches are deterministic and resume bit-identically); read only. None otherwise
    (the trial runs the search in its own directory)."""
    if not arm.shares_search:
        return None
    shared = os.path.join(trial_dir(study.output_dir, arm.shares_search, seed), "search")
    if not os.path.isfile(os.path.join(shared, runner.SUMMARY_FILE)) or \
            search_files.epochs_done(shared) < search.epochs:
        return None
    return shared if search_files.read_config(shared).to_dict() == search.to_dict() else None


def _export(study, train_dir, tflite):
    """export.export with the agreement check on held-out images; a failed agreement is
    recorded (and the .tflite still written, unchecked) rather than losing the trial."""
    config = study.config
    images = export.data_samples(study.test_data, "train", config.export_samples) \
        if config.export_samples else None
    error = None
    try:
        report = export.export(train_dir, tflite, samples=config.export_samples, images=images,
                               latency_runs=config.latency_runs)
    except export.ExportError as e:
        if "agrees" not in str(e):
            raise
        error = str(e)
        report = export.export(train_dir, tflite, samples=0, latency_runs=config.latency_runs)
    return {"bytes": report.bytes, "bconv_ops": report.bconv_ops,
            "float_conv_ops": report.float_conv_ops, "agreement": report.agreement,
            "latency_ms": report.latency_ms, "export_error": error, "tflite": tflite}
