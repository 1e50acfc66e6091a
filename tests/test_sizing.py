"""Budget sizing with keras-tuner: feasibility by construction, resume, infeasible budgets,
gamma re-derivation from a search's alphas."""
import json
import os

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import costs, data, genotypes, models, recipes, size_space, sizing, training
from bnas_tf.models import presets
from bnas_tf.search import SearchConfig

BUDGET = 3.0e6  # tiny grid 2..4 cells x 4..8 channels: 4x8, 3x8 (~4.9e6) do not fit
TINY = dict(min_cells=2, max_cells=4, min_channels=4, max_channels=8, channels_step=2)


def _data(cifar_dir):
    return data.DataConfig(dataset="folder", data_dir=str(cifar_dir), batch_size=16,
                           image_size=32, max_examples=32)


def _train():
    return recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0)


def _run(cifar_dir, directory, **overrides):
    config = size_space.SizingConfig(budget=BUDGET, max_trials=2, seed=1, **TINY)
    for key, value in overrides.items():
        setattr(config, key, value)
    spec = presets.resolve(genotype="bnas_a")
    output = os.path.join(directory, "sized.json")
    preset = sizing.size(spec, _data(cifar_dir), _train(), config, directory, "proj",
                         output=output)
    return preset, output


def _oracle_trials(project_dir):
    return sorted(d for d in os.listdir(project_dir) if d.startswith("trial_"))


@pytest.fixture(scope="module")
def sized(cifar_dir, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sizing"))
    preset, output = _run(cifar_dir, directory)
    return directory, preset, output


def test_last_fitting_is_a_binary_search_for_the_largest_fit():
    calls = []

    def fits(v):
        calls.append(v)
        return v <= 37
    values = list(range(0, 100, 3))
    assert size_space.last_fitting(values, fits) == 36
    assert len(calls) <= 8  # log2(34) + the first check
    assert size_space.last_fitting(values, lambda v: False) is None
    assert size_space.last_fitting(values, lambda v: True) == 99


class _FakeTable:
    """Monotone synthetic costs: cells * channels^2."""

    def __init__(self):
        self.seen = []

    def equivalent_ops(self, size):
        self.seen.append((size.cells, size.channels))
        return float(size.cells * size.channels ** 2)

    def get(self, size):
        return {"equivalent_ops": self.equivalent_ops(size), "params": 0}


def test_every_proposal_decodes_to_a_size_within_budget():
    config = size_space.SizingConfig(budget=10 * 24 ** 2, min_cells=5, max_cells=20,
                                 min_channels=8, max_channels=64, channels_step=4)
    spec = presets.resolve(genotype="bnas_a")
    space = size_space.SizeSpace(config, sizing.candidate_specs(spec), _FakeTable())
    rng = np.random.RandomState(0)
    sizes = {(s.cells, s.channels) for s in (
        space.decode({"cells_fraction": u, "channels_fraction": v})
        for u, v in rng.uniform(size=(200, 2)))}
    assert all(c * ch ** 2 <= config.budget for c, ch in sizes)
    assert all(5 <= c <= 20 and ch % 4 == 0 and 8 <= ch <= 64 for c, ch in sizes)
    # the corners: the widest network with the fewest cells, the most cells that still fit
    widest = space.decode({"cells_fraction": 0.0, "channels_fraction": 1.0})
    deepest = space.decode({"cells_fraction": 1.0, "channels_fraction": 1.0})
    assert (widest.cells, widest.channels) == (5, 32)     # 5 * 36^2 > 5760
    assert (deepest.cells, deepest.channels) == (20, 16)  # 20 * 20^2 > 5760
    assert len(sizes) > 20  # the space is explored, not collapsed to a few points
    hp = space.hyperparameters()
    assert sorted(p.name for p in hp.space) == ["cells_fraction", "channels_fraction"]


def test_sizing_picks_a_size_within_budget_and_writes_a_buildable_preset(sized):
    directory, preset, output = sized
    assert preset["equivalent_ops"] <= BUDGET
    written = presets.get(output)  # what tools/train.py --preset=FILE reads
    assert written["cells"] == preset["cells"] and written["channels"] == preset["channels"]
    assert 2 <= written["cells"] <= 4 and written["channels"] in (4, 6, 8)
    model = models.build(written, 10, 32)
    counted = costs.count(model).equivalent_ops
    assert counted == pytest.approx(written["equivalent_ops"])
    assert counted <= BUDGET
    # the preset is the best of the finished trials
    project = os.path.join(directory, "proj")
    results = [json.load(open(os.path.join(project, "sizes", d, sizing.RESULT_FILE)))
               for d in os.listdir(os.path.join(project, "sizes"))]
    assert written["val_accuracy"] == max(r["val_accuracy"] for r in results)
    assert all(r["equivalent_ops"] <= BUDGET for r in results)
    assert len(_oracle_trials(project)) == 2


def test_rerun_resumes_without_redoing_finished_trials(sized, cifar_dir, monkeypatch):
    directory, preset, _ = sized
    project = os.path.join(directory, "proj")
    before = json.load(open(os.path.join(project, "oracle.json")))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")
    monkeypatch.setattr(training, "train", no_training)
    again, _ = _run(cifar_dir, directory)
    assert len(_oracle_trials(project)) == 2
    after = json.load(open(os.path.join(project, "oracle.json")))
    assert after["end_order"] == before["end_order"] and len(after["end_order"]) == 2
    assert (again["cells"], again["channels"]) == (preset["cells"], preset["channels"])


def test_rerun_with_other_settings_is_refused(sized, cifar_dir):
    directory, _, _ = sized
    with pytest.raises(ValueError, match="different .*budget.*another --project_name"):
        _run(cifar_dir, directory, budget=2.0e6)


def test_infeasible_budget_is_a_clear_one_line_error(cifar_dir, tmp_path):
    with pytest.raises(size_space.BudgetError) as info:
        _run(cifar_dir, str(tmp_path), budget=1.0e5)
    message = str(info.value)
    assert "\n" not in message
    assert "2 cells x 4 channels" in message and "--flops_budget" in message
    assert not os.path.exists(tmp_path / "proj" / "oracle.json")
    assert not os.path.exists(tmp_path / "sized.json")


def _fake_search_dir(directory):
    """A search output directory: search_config.json and a checkpoint holding alphas where
    'none' narrowly beats bin_conv_3x3 on every edge."""
    config = SearchConfig()
    with open(os.path.join(directory, "search_config.json"), "w") as f:
        json.dump({"data": {}, "search": config.to_dict()}, f)
    op_names = list(config.ops)
    alpha = np.zeros((14, len(op_names)), np.float32)
    alpha[:, op_names.index("none")] = 1.0
    alpha[:, op_names.index("bin_conv_3x3")] = 0.8
    net = tf.Module()
    net.alpha_normal = tf.Variable(alpha)
    net.alpha_reduce = tf.Variable(alpha)
    tf.train.Checkpoint(model=net).save(os.path.join(directory, "ckpt", "ckpt"))
    genotypes.save(genotypes.BNAS_A, os.path.join(directory, "genotype.json"))
    return directory


def test_tune_gamma_rederives_the_cell_from_the_search_alphas(tmp_path):
    search_dir = _fake_search_dir(str(tmp_path))
    spec, found = sizing.resolve_spec(genotype=search_dir)
    assert found == search_dir and spec["genotype"] == genotypes.BNAS_A.to_dict()
    candidates = sizing.candidate_specs(spec, found, gammas=(1.0, 2.0))
    assert sorted(candidates) == [1.0, 2.0]
    ops_1 = genotypes.load(candidates[1.0]["genotype"]).ops_used()
    ops_2 = genotypes.load(candidates[2.0]["genotype"]).ops_used()
    assert set(ops_1) == {"none"}          # gamma 1: Zeroise wins every edge
    assert set(ops_2) == {"bin_conv_3x3"}  # gamma 2: softmax weight of none halved, conv wins
    with pytest.raises(ValueError, match="search output directory"):
        sizing.candidate_specs(presets.resolve(genotype="bnas_a"), None, gammas=(1.0,))
    empty = tmp_path / "unfinished"
    empty.mkdir()
    (empty / "search_config.json").write_text(json.dumps(SearchConfig().to_dict()))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sizing.gamma_genotypes(str(empty), (1.0,))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_worker_on_localhost(cifar_dir, tmp_path):
    """keras-tuner's distributed mode: the chief serves the oracle, the worker trains."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = tmp_path / "sized.json"
    args = [sys.executable, os.path.join(repo, "tools", "size.py"), "--genotype=bnas_a",
            f"--flops_budget={BUDGET}", "--dataset=folder", f"--data_dir={cifar_dir}",
            "--max_examples=32", "--batch_size=16", "--recipe=adam_cosine", "--progress=none",
            "--min_cells=2", "--max_cells=4", "--min_channels=4", "--max_channels=8",
            "--channels_step=2", "--max_trials=2", f"--directory={tmp_path / 'run'}",
            f"--output={output}"]
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(_free_port()))
    chief = subprocess.Popen(args, env=dict(env, KERASTUNER_TUNER_ID="chief"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.run(args, env=dict(env, KERASTUNER_TUNER_ID="tuner0"),
                            capture_output=True, text=True, timeout=600)
    chief_out, _ = chief.communicate(timeout=120)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "worker tuner tuner0 finished" in worker.stdout
    assert chief.returncode == 0, chief_out[-2000:]
    preset = presets.get(str(output))
    assert preset["equivalent_ops"] <= BUDGET
    assert len(_oracle_trials(tmp_path / "run" / "sizing")) == 2
