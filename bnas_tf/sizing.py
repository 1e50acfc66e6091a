"""Budget sizing: the cells x channels (and optionally gamma) of a BNAS network that
fits an Equivalent-OPs budget and trains best, searched with keras-tuner.

The search space, feasible by construction, and the cost counts are bnas_tf.size_space
(read its module doc for how the budget is met). This module runs keras-tuner over it:
the candidates (a fixed genotype, or with gamma tuning one cell re-derived from the
search's alphas per gamma, BNAS Eq. 4), the trials (each trains a size with
bnas_tf.training), the oracle, resume and the best preset.

Project layout (``DIR/PROJECT``, keras-tuner's own files plus):

* ``sizing.json``  what the run depends on; a rerun must match it (max_trials may grow);
* ``costs.json``   cached cost counts of every size visited;
* ``sizes/<spec hash>-<cells>x<channels>/``  a model directory per trained size
  (training.train output + ``size_result.json``); a size proposed twice is not
  retrained;
* ``logs/``        TensorBoard: validation accuracy and Equivalent OPs per trial.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from bnas_tf import data, distribute, fast_binary, files, genotypes, size_space, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import presets

# the public sizing API, re-exported: size() takes a SizingConfig and may raise BudgetError
SizingConfig = size_space.SizingConfig
BudgetError = size_space.BudgetError

OBJECTIVE = "val_accuracy"
DEFAULT_GAMMAS = (1.0, 1.5, 2.0, 3.0)
STATE_FILE = "sizing.json"
COSTS_FILE = "costs.json"
SIZES_DIR = "sizes"
RESULT_FILE = "size_result.json"
LOGS_DIR = "logs"
DATA_IDENTITY = ("dataset", "data_dir", "image_size", "max_examples", "validation_fraction",
                 "num_subset_classes", "seed")


# ----------------------------------------------------------------------------- gamma

def search_dir_genotype(search_dir):
    """The genotype file of a search output directory (tools/search.py)."""
    path = os.path.join(search_dir, "genotype.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{search_dir} is not a finished search directory "
                                "(no genotype.json)")
    return path


def search_alphas(search_dir):
    """(alpha_normal, alpha_reduce, SearchConfig) from a search directory's latest
    checkpoint (the final alphas of the run)."""
    from bnas_tf.search import search_dir as search_dir_lib
    config = search_dir_lib.read_config(search_dir)
    if config.method != "bnas":
        raise ValueError(f"--tune_gamma re-derives BNAS cells; {search_dir} holds a "
                         f"{config.method!r} search")
    ckpt_dir = os.path.join(search_dir, "ckpt")
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"--tune_gamma needs the search's alphas, but {ckpt_dir} holds "
                                "no checkpoint")
    reader = tf.train.load_checkpoint(latest)
    found = {}
    for name in ("alpha_normal", "alpha_reduce"):
        keys = [k for k in reader.get_variable_to_shape_map()
                if k.endswith(f"/{name}/.ATTRIBUTES/VARIABLE_VALUE") and "OPTIMIZER_SLOT" not in k]
        if len(keys) != 1:
            raise ValueError(f"{latest}: expected one {name} variable in the checkpoint, "
                             f"found {len(keys)}")
        found[name] = np.asarray(reader.get_tensor(keys[0]))
    return found["alpha_normal"], found["alpha_reduce"], config


def gamma_genotypes(search_dir, gammas):
    """{gamma: genotype dict} re-derived from the search's alphas with each gamma (Eq. 4)."""
    from bnas_tf.search.bnas import derive
    alpha_normal, alpha_reduce, config = search_alphas(search_dir)
    out = {}
    for gamma in gammas:
        geno = derive.derive_bnas(alpha_normal, alpha_reduce, config.ops, gamma=gamma,
                                  mode=config.settings.derive,
                                  template=config.settings.cell_template)
        out[float(gamma)] = geno.to_dict()
    return out


def resolve_spec(preset=None, genotype=None, search_dir=None, binarization=None):
    """(network spec, search dir) of --preset/--genotype; --genotype may name a search
    output directory, whose genotype.json is used and whose alphas --tune_gamma reads."""
    if genotype and os.path.isdir(genotype):
        search_dir = search_dir or genotype
        genotype = search_dir_genotype(genotype)
    elif preset is None and genotype is None and search_dir:
        genotype = search_dir_genotype(search_dir)
    return presets.resolve(preset=preset, genotype=genotype, binarization=binarization), search_dir


def candidate_specs(base_spec, search_dir=None, gammas=()):
    """{gamma or None: base spec with an inline genotype}: one entry, or one per gamma."""
    spec = copy.deepcopy(base_spec)
    if spec.get("family") != "bnas":
        raise ValueError(f"sizing searches cells x channels of BNAS networks; the "
                         f"{spec.get('family')!r} family has no such sizes")
    spec.pop("name", None)
    if not gammas:
        spec["genotype"] = genotypes.load(spec["genotype"]).to_dict()
        return {None: spec}
    if search_dir is None:
        raise ValueError("--tune_gamma needs the search output directory (--search_dir=DIR, "
                         "or --genotype=DIR) whose checkpoint holds the alphas")
    out = {}
    for gamma, geno in gamma_genotypes(search_dir, gammas).items():
        out[gamma] = dict(spec, genotype=geno)
    return out


# ----------------------------------------------------------------------------- trials

def size_dir(project_dir, size):
    return os.path.join(project_dir, SIZES_DIR, size.key)


def _val_accuracy(metrics):
    history = metrics.get("history") or {}
    keys = sorted(k for k in history if k.startswith("val_") and k.endswith("top1"))
    return float(history[keys[0]][-1]) if keys and history[keys[0]] else None


def train_size(size, data_config, train_config, directory, cost_row, strategy=None):
    """Train `size` (training.train into `directory`, under `strategy`: a
    tf.distribute.Strategy or name) and return its trial metrics; a size already
    trained there returns its recorded result."""
    result_path = os.path.join(directory, RESULT_FILE)
    if os.path.isfile(result_path):
        return mdir.read_json(result_path, "size result")
    metrics = training.train(size.network_spec(), data_config, train_config, directory,
                             strategy=strategy)
    accuracy = _val_accuracy(metrics)
    if accuracy is None:  # trained in an earlier run, or validation switched off
        accuracy = training.evaluate(directory, data_config, "validation")["top1"]
    result = {OBJECTIVE: float(accuracy), "equivalent_ops": cost_row["equivalent_ops"],
              "cells": size.cells, "channels": size.channels, "params": cost_row["params"]}
    if size.gamma is not None:
        result["gamma"] = float(size.gamma)
    mdir.write_json(result_path, result)
    return result


class SizeTuner(kt.Tuner):
    """A keras-tuner Tuner whose trials are sizes (never builds a Keras 3 model).

    keras-tuner 1.4 imports Keras 3 and its stock `run_trial` checks models against
    Keras 3 classes, which tf-keras models (Larq needs tf-keras) are not; this
    subclass overrides `run_trial` and trains with bnas_tf.training instead. The
    constructor only adds attributes before `kt.Tuner.__init__`, which handles
    reloading (overwrite=False) and the KERASTUNER_* distributed environment.
    """

    def __init__(self, oracle, space, data_config, train_config, strategy=None, **kwargs):
        self.space, self.data_config, self.train_config = space, data_config, train_config
        self.strategy = strategy
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        size = self.space.decode(trial.hyperparameters)
        row = self.space.table.get(size)
        budget = self.space.config.budget
        if row["equivalent_ops"] > budget:  # never happens for a monotone cost model
            raise kt.errors.FailedTrialError(
                f"{size.cells} cells x {size.channels} channels need "
                f"{row['equivalent_ops']:.4g} equivalent OPs, over the budget {budget:.4g}")
        gamma = f", gamma {size.gamma:g}" if size.gamma is not None else ""
        print(f"== trial {trial.trial_id}: {size.cells} cells x {size.channels} channels"
              f"{gamma}, {row['equivalent_ops']:.4g} equivalent OPs "
              f"({row['equivalent_ops'] / budget:.0%} of the budget)", flush=True)
        result = train_size(size, self.data_config, self.train_config,
                            size_dir(self.project_dir, size), row, strategy=self.strategy)
        print(f"== trial {trial.trial_id}: validation accuracy {result[OBJECTIVE]:.4f}",
              flush=True)
        self._log_trial(trial, result)
        return {k: v for k, v in result.items() if isinstance(v, (int, float))}

    def _log_trial(self, trial, result):
        try:
            step = int(trial.trial_id)
        except ValueError:
            step = 0
        writer = tf.summary.create_file_writer(os.path.join(self.project_dir, LOGS_DIR))
        with writer.as_default(step=step):
            tf.summary.scalar("sizing/val_accuracy", result[OBJECTIVE])
            tf.summary.scalar("sizing/equivalent_ops", result["equivalent_ops"])
            tf.summary.scalar("sizing/cells", result["cells"])
            tf.summary.scalar("sizing/channels", result["channels"])
        writer.close()


def make_oracle(config, hyperparameters):
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, max_trials=config.max_trials, seed=config.seed,
                  hyperparameters=hyperparameters, allow_new_entries=False,
                  tune_new_entries=False)
    if config.oracle == "random":
        return kt.oracles.RandomSearchOracle(**common)
    try:
        return kt.oracles.BayesianOptimizationOracle(**common)
    except ImportError as e:
        raise ImportError(f"--oracle=bayesian needs scikit-learn and scipy "
                          f"(pip install keras-tuner[bayesian]): {e}") from None


# ----------------------------------------------------------------------------- run

def _check_state(project_dir, state):
    """Refuse to resume a project made with other settings (one-line ValueError)."""
    path = os.path.join(project_dir, STATE_FILE)
    if not os.path.isfile(path):
        return
    saved = mdir.read_json(path, "sizing state")
    if isinstance(saved.get("train"), dict):  # a project from before --train_conv_dtype
        saved["train"].setdefault("conv_dtype", training.RECORD_LEGACY["conv_dtype"])
    files.refuse_other_run(project_dir, saved, state,
                           "sizing run", "use another --project_name or --directory")


def best_result(oracle):
    """Metrics of the best completed trial: highest validation accuracy, ties going to
    the cheaper network, then to the earlier trial (RuntimeError when none completed)."""
    done = [t for t in oracle.trials.values()
            if t.status == "COMPLETED" and t.metrics.exists(OBJECTIVE)]
    if not done:
        raise RuntimeError("no sizing trial completed; see the trial_*/trial.json messages "
                           "in the project directory")

    def rank(trial):
        m = trial.metrics
        return (-m.get_last_value(OBJECTIVE), m.get_last_value("equivalent_ops"),
                int(trial.trial_id))
    trial = min(done, key=rank)
    out = {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}
    out["trial_id"] = trial.trial_id
    return out


def trial_table(oracle):
    """Rows (trial id, status, cells, channels, gamma, equivalent ops, val accuracy)."""
    rows = []
    for trial_id in sorted(oracle.trials, key=int):
        t = oracle.trials[trial_id]

        def metric(name, trial=t):
            return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None
        rows.append({"trial": trial_id, "status": t.status, "cells": metric("cells"),
                     "channels": metric("channels"), "gamma": metric("gamma"),
                     "equivalent_ops": metric("equivalent_ops"), OBJECTIVE: metric(OBJECTIVE)})
    return rows


def format_table(rows):
    lines = [f"{'trial':>5}  {'status':<9} {'cells':>5} {'chan':>5} {'gamma':>5} "
             f"{'equiv. OPs':>11} {'val acc':>8}"]
    for r in rows:
        def num(value, fmt):
            return format(value, fmt) if value is not None else "-"
        lines.append(f"{r['trial']:>5}  {r['status']:<9} {num(r['cells'], '.0f'):>5} "
                     f"{num(r['channels'], '.0f'):>5} {num(r['gamma'], 'g'):>5} "
                     f"{num(r['equivalent_ops'], '.4g'):>11} {num(r[OBJECTIVE], '.4f'):>8}")
    return "\n".join(lines)


def preset_of(space, result, name=None):
    """The preset JSON (dict) of a trial result: a spec tools/train.py --preset accepts."""
    gamma = result.get("gamma")
    size = space._size(float(gamma) if gamma is not None else None,
                       int(result["cells"]), int(result["channels"]))
    spec = size.network_spec()
    spec.update({"equivalent_ops": float(result["equivalent_ops"]),
                 "val_accuracy": float(result[OBJECTIVE]), "budget": space.config.budget})
    if name:
        spec["name"] = name
    return spec


def size(base_spec, data_config, train_config, sizing_config, directory, project_name="sizing",
         search_dir=None, output=None, strategy=None):
    """Search the size of `base_spec` within the budget; returns the best preset dict
    (None on a distributed worker, whose chief writes it). Writes it to `output` when given.

    Rerunning with the same directory/project continues the search; raising
    `sizing_config.max_trials` adds trials. Every trial trains under `strategy` (a
    tf.distribute.Strategy or name, see bnas_tf.distribute). Under multi_worker every
    worker runs the same seeded trials together; a non-chief tunes in a private copy
    of `directory` (deleted at the end), so only the chief writes.
    """
    strategy = training.make_strategy(strategy)
    dirs = distribute.WorkerDirs(strategy)
    try:
        if not dirs.chief:
            private = dirs.path(directory)
            if os.path.isdir(directory):
                shutil.copytree(directory, private, dirs_exist_ok=True)
            directory, output = private, None
        return _size(base_spec, data_config, train_config, sizing_config, directory,
                     project_name, search_dir, output, strategy)
    finally:
        dirs.cleanup()


def _size(base_spec, data_config, train_config, sizing_config, directory, project_name,
          search_dir, output, strategy):
    config = sizing_config.validate()
    train_config = dataclasses.replace(train_config).validate()
    candidates = candidate_specs(base_spec, search_dir, config.gammas)
    info = data.dataset_info(data_config)
    project_dir = os.path.join(directory, project_name)
    conv_dtype = fast_binary.resolve_for(base_spec.get("family"), train_config.conv_dtype,
                                         train_config.precision)  # what the trials compute
    state = {"sizing": config.identity(),
             "candidates": {str(g): s for g, s in candidates.items()},
             "train": dataclasses.asdict(dataclasses.replace(train_config, verbose=0,
                                                             conv_dtype=conv_dtype)),
             "data": {k: getattr(data_config, k) for k in DATA_IDENTITY},
             "num_classes": info.num_classes, "image_size": info.image_size}
    _check_state(project_dir, state)
    table = size_space.CostTable(os.path.join(project_dir, COSTS_FILE), info.num_classes,
                                 info.image_size)
    space = size_space.SizeSpace(config, candidates, table)
    space.feasible_gammas()  # BudgetError before any trial when nothing fits
    mdir.write_json(os.path.join(project_dir, STATE_FILE), state)

    oracle = make_oracle(config, space.hyperparameters())
    tuner = SizeTuner(oracle, space, data_config, train_config, strategy=strategy,
                      directory=directory, project_name=project_name, overwrite=False)
    tuner.search()
    if _is_worker():
        print(f"worker tuner {tuner.tuner_id} finished; the chief writes the preset")
        return None
    print(format_table(trial_table(tuner.oracle)))
    result = best_result(tuner.oracle)
    name = os.path.splitext(os.path.basename(output))[0] if output else None
    preset = preset_of(space, result, name=name)
    gamma = f", gamma {preset['gamma']:g}" if "gamma" in preset else ""
    print(f"best size: {preset['cells']} cells x {preset['channels']} channels{gamma}: "
          f"{preset['equivalent_ops']:.4g} equivalent OPs (budget {config.budget:.4g}), "
          f"validation accuracy {preset['val_accuracy']:.4f}")
    if output:
        mdir.write_json(output, preset)
        print(f"preset written to {output} (train it with tools/train.py --preset={output})")
    return preset


def _is_worker():
    from keras_tuner.src.distribute import utils as dist_utils
    return dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()

