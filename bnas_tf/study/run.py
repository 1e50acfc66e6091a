"""The study loop: config check, split, EqOPs target, trials with progress/ETA, report.

``run(config, output_dir)`` fills DIR:

* ``study.json``   the StudyConfig (a rerun with another configuration is refused);
* ``data/``        the split (`split`): pool symlinks, held-out test list;
* ``costs.json``   cached cost counts (`matching`); ``target.json`` the EqOPs target;
* ``trials/<arm>/seed<k>/``  one directory per trial (`trial`);
* the report (`report`): results.json, results.md, accuracy_vs_eqops.png.

Trials are independent: rerunning the same command skips finished trials and
resumes the interrupted one (search and training resume from their checkpoints).
Several machines can share one study directory through keras-tuner's chief/worker
mode (`scale_out`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from bnas_tf import data, fast_binary, files, recipes
from bnas_tf import model_dir as mdir
from bnas_tf.search import engine
from bnas_tf.study import LEGACY, StudyConfig, arms, matching, report, split, trial

STUDY_FILE = "study.json"
RECIPE_SETTINGS = dict(validation_freq=1, keep_checkpoints=2)


class StudyDirError(ValueError):
    """The output directory holds a study with another configuration."""


def check_dir(output_dir, config, log=print):
    """Refuse (one line) a directory holding a study with another configuration. Arms
    and seeds may be added (every trial is independent of the others): the saved arms
    must all be among `config.arms` and `config.seeds` may only grow; study.json then
    records the new list and count."""
    path = os.path.join(output_dir, STUDY_FILE)
    current = files.plain(config.to_dict())
    if os.path.isfile(path):
        saved = mdir.read_json(path, "study configuration")
        added = [a for a in current["arms"] if a not in saved.get("arms", [])]
        if not set(saved.get("arms", [])) - set(current["arms"]):
            saved = dict(saved, arms=current["arms"])  # only arms added: same study
        more_seeds = current["seeds"] > saved.get("seeds", current["seeds"])
        if more_seeds:
            log(f"study: seeds {saved['seeds']} -> {current['seeds']} in {output_dir}; the "
                "finished trials are kept")
            saved = dict(saved, seeds=current["seeds"])
        # a setting missing from an older study.json counts as the value that study ran
        # with (`study.LEGACY`), so it resumes under the same command
        saved = {k: saved.get(k, LEGACY.get(k)) for k in set(saved) | set(current)}
        files.refuse_other_run(output_dir, saved, current, "study",
                               _mend(saved, current), StudyDirError)
        if added:
            log(f"study: arm(s) {', '.join(added)} added to {output_dir}; the trials of "
                "the others are kept")
    else:
        os.makedirs(output_dir, exist_ok=True)
    files.write_json(path, current, sort_keys=True)


def _mend(saved, current):
    """The refusal's advice: the flags that resume the saved study (its recorded values
    of the differing settings, e.g. a cpu study from before the profile trained in
    bfloat16: --train_conv_dtype=float32), or another directory."""
    given = []
    for name in files.differences(saved, current):
        value = saved.get(name)
        if "." in name or value is None or isinstance(value, dict):
            return "use another --output_dir"
        given.append(f"--{name}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return f"to resume it add {' '.join(given)}, else use another --output_dir"


@dataclasses.dataclass
class Study:
    """What every trial shares: config, data configs, EqOPs target, cost cache."""

    config: StudyConfig
    output_dir: str
    split: dict
    search_data: data.DataConfig
    train_data: data.DataConfig
    test_data: data.DataConfig
    train_config: recipes.TrainConfig
    table: matching.CostCache
    target: float


def prepare(config, output_dir, log=print):
    """Check the directory, make the split, count the target; returns a Study."""
    config = config.validate()
    arms.check_available(config.arms, config.train_conv_dtype)
    fast_binary.resolve(config.train_conv_dtype)  # refuses bfloat16 where it cannot run
    if config.train_conv_dtype == "bfloat16" and not engine.native_bfloat16():
        log("study: warning: this CPU has no native bfloat16 (AVX512-BF16/AMX), so the "
            "trainings' bfloat16 binary convs are emulated and slower than float32; "
            "--train_conv_dtype=float32 runs Larq's layers")
    check_dir(output_dir, config, log)
    record = split.make_split(config, os.path.join(output_dir, "data"))
    pool = record["pool_dir"]
    train_data = data.DataConfig(dataset="folder", data_dir=pool, seed=0)
    search_data = dataclasses.replace(train_data, max_examples=config.search_examples)
    test_data = data.DataConfig(dataset="folder", data_dir=record["test_dir"], augment=False,
                                validation_fraction=0.0, batch_size=100)
    info = data.dataset_info(train_data)
    table = matching.CostCache(os.path.join(output_dir, "costs.json"), info.num_classes,
                               info.image_size)
    target = table.equivalent_ops(arms.target_spec(config))
    files.write_json(os.path.join(output_dir, "target.json"),
                     {"equivalent_ops": target, "spec": arms.target_spec(config)})
    train_config = recipes.recipe(config.recipe, epochs=config.train_epochs,
                                   batch_size=config.train_batch, verbose=2,
                                   conv_dtype=config.train_conv_dtype, **RECIPE_SETTINGS)
    log(f"study: {len(config.arms)} arm(s) x {config.seeds} seed(s); pool "
        f"{record['pool_files']} images, held-out test {record['test_files']} images; "
        f"EqOPs target {target / 1e6:.3f}M (BNAS-A cell, {config.final_cells} cells x "
        f"{config.final_channels} channels)")
    return Study(config, output_dir, record, search_data, train_data, test_data,
                 train_config, table, target)


def trial_keys(config):
    """(arm, seed) of every trial, seed-major so every arm gets seed 0 first."""
    return [(arm, seed) for seed in range(config.seeds) for arm in config.arms]


class Progress:
    """Overall progress with an ETA: per arm, the mean wall time of its finished trials
    (those of earlier runs from their recorded stage seconds, so a resumed study has an
    ETA from its first line), else the mean over every finished trial."""

    def __init__(self, total, log, finished=()):
        self.total, self.log, self.start, self.times = total, log, time.time(), {}
        for record in finished:
            seconds = sum(s.get("wall_s", 0.0) for s in record.get("stages", {}).values())
            if seconds:
                self.times.setdefault(record["arm"], []).append(seconds)

    def eta(self, pending):
        if not self.times:
            return "unknown until one trial finishes"
        means = {arm: sum(t) / len(t) for arm, t in self.times.items()}
        overall = sum(sum(t) for t in self.times.values()) / sum(map(len, self.times.values()))
        return _hms(sum(means.get(arm, overall) for arm, _ in pending))

    def begin(self, index, arm, seed, pending):
        self.log(f"\n=== trial {index}/{self.total}: {arm} seed {seed} (elapsed "
                 f"{_hms(time.time() - self.start)}, ETA {self.eta(pending)})")
        return time.time()

    def end(self, arm, started, record):
        self.times.setdefault(arm, []).append(time.time() - started)
        self.log(f"=== {arm} seed {record['seed']}: top-1 {record['top1']:.4f} in "
                 f"{_hms(time.time() - started)}")


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def run(config, output_dir, log=None):
    """Run (or resume) the study, writing its report after every finished trial (the
    table so far: a long study can be read while it runs); returns the results dict."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    study = prepare(config, output_dir, log)
    keys = trial_keys(study.config)
    finished = {k: trial.load(output_dir, *k) for k in keys}
    pending = [k for k in keys if finished[k] is None]
    log(f"study: {len(keys) - len(pending)}/{len(keys)} trial(s) already finished")
    progress = Progress(len(keys), log, [r for r in finished.values() if r is not None])
    for i, (arm, seed) in enumerate(pending):
        started = progress.begin(keys.index((arm, seed)) + 1, arm, seed, pending[i:])
        record = trial.run_trial(study, arm, seed, log)
        progress.end(arm, started, record)
        _clear()
        if i + 1 < len(pending):
            report.write(study, [trial.load(output_dir, *k) for k in keys], log)
    return report.write(study, [trial.load(output_dir, *k) for k in keys], log)


def _clear():
    import tensorflow as tf
    tf.keras.backend.clear_session()
