"""Several machines sharing one study directory through keras-tuner's chief/worker mode.

The study's trials are independent; a keras-tuner GridSearch oracle over one
hyperparameter, the trial index (`run.trial_keys` order), hands each worker the
next unstarted trial. The chief (``KERASTUNER_TUNER_ID=chief``) only serves the
oracle (as in `bnas_tf.sizing`) and writes the report once every trial has
finished; workers (``tuner0``, ``tuner1``, ...) run trials through `trial.run_trial`,
into the shared directory. The oracle's state lives in ``DIR/tuner/``; restarting
everything with the same command continues (finished trials are skipped, an
interrupted one resumes from its checkpoints).
"""
from __future__ import annotations

import os

import keras_tuner as kt

from bnas_tf.study import report, run as study_run, trial as trial_lib

PROJECT = "tuner"
HP = "trial"
OBJECTIVE = "top1"


def distributed():
    """True when the KERASTUNER_* environment asks for chief/worker mode."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP"))


def _is_chief():
    return os.environ.get("KERASTUNER_TUNER_ID") == "chief"


class StudyTuner(kt.Tuner):
    """Trials are study trials (keras-tuner's stock run_trial rejects tf-keras models)."""

    def __init__(self, oracle, study, keys, **kwargs):
        self.study, self.keys = study, keys
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        arm, seed = self.keys[trial.hyperparameters.get(HP)]
        print(f"=== {self.tuner_id}: keras-tuner trial {trial.trial_id} = {arm} seed {seed}",
              flush=True)
        record = trial_lib.run_trial(self.study, arm, seed)
        study_run._clear()
        return {OBJECTIVE: float(record["top1"])}


def make_oracle(keys):
    hp = kt.HyperParameters()
    hp.Choice(HP, list(range(len(keys))), ordered=True)
    return kt.oracles.GridSearchOracle(objective=kt.Objective(OBJECTIVE, "max"),
                                       max_trials=len(keys), hyperparameters=hp,
                                       allow_new_entries=False, tune_new_entries=False)


def run(config, output_dir, log=print):
    """Chief: serve the oracle, then write the report (returns results). Worker: run
    trials until the oracle has none left (returns None)."""
    study = study_run.prepare(config, output_dir, log)
    keys = study_run.trial_keys(study.config)
    tuner = StudyTuner(make_oracle(keys), study, keys, directory=output_dir,
                       project_name=PROJECT, overwrite=False)
    tuner.search()
    if not _is_chief():
        log(f"worker {tuner.tuner_id} finished; the chief writes the report")
        return None
    return report.write(study, [trial_lib.load(output_dir, *k) for k in keys], log)
