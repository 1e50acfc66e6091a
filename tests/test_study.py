"""The evidence study (issue 18): random draws, split, matching, report, end to end."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bnas_tf import fast_binary, genotypes, ops
from bnas_tf.models import presets
from bnas_tf.study import arms, matching, report, run, split, trial
from bnas_tf import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- random draws

def test_random_bnas_is_valid_and_covers_every_op_and_input():
    rng = np.random.default_rng(0)
    seen = {kind: {"ops": set(), "inputs": {n: set() for n in range(2, 6)}}
            for kind in ("normal", "reduce")}
    for _ in range(400):
        g = genotypes.random_bnas(rng)
        g.validate()
        for kind in ("normal", "reduce"):
            edges = getattr(g, kind)
            for k, (op, src) in enumerate(edges):
                seen[kind]["ops"].add(op)
                seen[kind]["inputs"][2 + k // 2].add(src)
            for node in range(4):  # a node's two inputs are distinct, as derivation keeps
                assert edges[2 * node][1] != edges[2 * node + 1][1]
    for kind in ("normal", "reduce"):
        assert seen[kind]["ops"] == set(ops.BNAS_OPS)  # Zeroise ('none') included
        for node, inputs in seen[kind]["inputs"].items():
            assert inputs == set(range(node)), (kind, node)


def test_random_bnas_is_seeded():
    a = genotypes.random_bnas(np.random.default_rng(3))
    b = genotypes.random_bnas(np.random.default_rng(3))
    c = genotypes.random_bnas(np.random.default_rng(4))
    assert a == b and a != c


def test_random_bars_covers_the_space_and_respects_the_budget():
    rng = np.random.default_rng(0)
    widths, depths, op_seen = set(), set(), set()

    def fits(g):  # a stand-in budget: total depth at most 3
        return sum(s.depth for s in g.stages) <= 3

    for _ in range(300):
        g = genotypes.random_bars(rng, base_channels=(8, 16, 32), max_depth=2, fits=fits)
        assert fits(g)
        widths.update(s.width for s in g.stages)
        depths.update(s.depth for s in g.stages)
        op_seen.update(g.ops_used())
    assert widths == {0.25, 0.5, 0.75, 1.0}
    assert depths == {0, 1, 2}
    assert op_seen == set(ops.BARS_OPS)
    with pytest.raises(ValueError, match="budget"):
        genotypes.random_bars(rng, fits=lambda g: False, max_tries=5)


# ----------------------------------------------------------------------------- split

def _config(cifar_dir, **kw):
    values = dict(data_dir=str(cifar_dir), train_per_class=6, test_per_class=3)
    values.update(kw)
    return study.config_for("smoke", **values)


def test_split_is_class_balanced_and_disjoint_from_what_search_and_training_read(
        cifar_dir, tmp_path):
    from bnas_tf import data
    config = _config(cifar_dir)
    record = split.make_split(config, str(tmp_path / "data"))
    test = split.read_list(str(tmp_path / "data"), "test")
    pool = split.read_list(str(tmp_path / "data"), "pool")
    assert len(test) == 30 and len(pool) == 60
    assert {t.split("/")[0] for t in test} == set(record["classes"])
    assert not set(test) & set(pool)  # by file name
    assert split.disjoint(record)
    # every split searches and trainings read comes from the pool directory alone
    cfg = data.DataConfig(dataset="folder", data_dir=record["pool_dir"])
    sizes = data.dataset_info(cfg).split_sizes
    assert sizes["train"] + sizes["validation"] == 60
    assert sizes["search_train"] + sizes["search_val"] == sizes["train"]
    assert split.listed_files(record["pool_dir"]) == {
        os.path.realpath(os.path.join(cifar_dir, p)) for p in pool}
    # the same seed gives the same split; the record is reused
    again = split.make_split(config, str(tmp_path / "data"))
    assert again == record


def test_split_with_an_external_test_dir(cifar_dir, tmp_path):
    ext = tmp_path / "ext"
    for c in sorted(os.listdir(cifar_dir)):
        (ext / c).mkdir(parents=True)
        name = sorted(os.listdir(cifar_dir / c))[0]
        os.symlink(cifar_dir / c / name, ext / c / name)
    record = split.make_split(_config(cifar_dir, test_dir=str(ext)), str(tmp_path / "data"))
    assert record["external_test"] and record["test_dir"] == str(ext)
    assert record["test_files"] == 10 and record["pool_files"] == 60
    (ext / "cat").rename(ext / "kitten")
    with pytest.raises(ValueError, match="classes"):
        split.make_split(_config(cifar_dir, test_dir=str(ext)), str(tmp_path / "other"))


# ----------------------------------------------------------------------------- config

def test_changed_configuration_is_refused_with_one_line(cifar_dir, tmp_path):
    run.check_dir(str(tmp_path), _config(cifar_dir))
    run.check_dir(str(tmp_path), _config(cifar_dir))  # the same: accepted
    with pytest.raises(run.StudyDirError) as e:
        run.check_dir(str(tmp_path), _config(cifar_dir, split_seed=1))
    assert "\n" not in str(e.value)
    assert "holds a different study (differs in split_seed: 0 recorded vs 1 given)" in str(e.value)
    # the advice resumes it: a cpu study from before the profile trained in bfloat16
    assert "to resume it add --split_seed=0, else use another --output_dir" in str(e.value)
    run.check_dir(str(tmp_path), _config(cifar_dir, split_seed=0))


def test_arms_can_be_added_to_a_study_but_not_removed(cifar_dir, tmp_path):
    said = []
    run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=("bnas", "bnas-random")))
    run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=("bnas", "bnas-random",
                                                          "bnas-warmup")), said.append)
    assert json.loads((tmp_path / run.STUDY_FILE).read_text())["arms"] == [
        "bnas", "bnas-random", "bnas-warmup"]
    assert "bnas-warmup added" in said[0]
    with pytest.raises(run.StudyDirError, match="arms"):
        run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=("bnas",)))
    three = ("bnas", "bnas-random", "bnas-warmup")
    with pytest.raises(run.StudyDirError, match="search_epochs"):  # others still refused
        run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=3, arms=three))


def test_seeds_can_be_added_to_a_study_but_not_removed(cifar_dir, tmp_path):
    """docs/results.md says more --seeds sharpen the answer: a rerun with more seeds
    was refused ('seeds: 1 recorded vs 3 given'); now it keeps the finished trials."""
    said = []
    arms_ = ("bnas", "bnas-random")
    run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=arms_, seeds=2))
    run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=arms_, seeds=3),
                  said.append)
    assert json.loads((tmp_path / run.STUDY_FILE).read_text())["seeds"] == 3
    assert "seeds 2 -> 3" in said[0]
    with pytest.raises(run.StudyDirError, match="seeds"):
        run.check_dir(str(tmp_path), _config(cifar_dir, search_epochs=2, arms=arms_, seeds=2))


def test_the_warmup_arm_trains_the_weights_alone_for_half_the_search():
    config = study.config_for("cpu", data_dir="x")
    search = arms.search_config(arms.get("bnas-warmup"), config, 0)
    assert search.settings.warmup_epochs == config.search_epochs // 2 == 6
    assert arms.search_config(arms.get("bnas"), config, 0).settings.warmup_epochs == 0
    assert ("bnas-warmup", "bnas-random") in arms.PAIRS
    with pytest.raises(ValueError, match="bnas-warmup arm warms up for half"):
        study.config_for("smoke", data_dir="x", arms=("bnas", "bnas-warmup"))
    assert study.config_for("smoke", data_dir="x", arms=("bnas", "bnas-warmup"),
                            search_epochs=2).arms[-1] == "bnas-warmup"


def test_the_perturbation_arm_reuses_only_a_finished_search_of_the_same_config(
        cifar_dir, tmp_path):
    import dataclasses
    import types

    from bnas_tf import data
    from bnas_tf.search import runner

    config = _config(cifar_dir)
    pt, bnas = arms.get("bnas-pt"), arms.get("bnas")
    search = arms.search_config(pt, config, 0)
    assert search.to_dict() == arms.search_config(bnas, config, 0).to_dict()
    owner = tmp_path / "trials" / "bnas" / "seed0" / "search"
    fake = types.SimpleNamespace(output_dir=str(tmp_path), config=config)
    assert trial._shared_search(fake, pt, 0, search) is None  # nothing there yet
    runner.run_search("bnas", data.DataConfig(dataset="folder", data_dir=str(cifar_dir),
                                              max_examples=40, image_size=16),
                      search, str(owner), verbose=0)
    assert trial._shared_search(fake, pt, 0, search) == str(owner)
    assert trial._shared_search(fake, pt, 1, search) is None  # another seed's trial
    assert trial._shared_search(fake, bnas, 0, search) is None  # an arm that shares none
    other = dataclasses.replace(search, a_lr=search.a_lr * 2)
    assert trial._shared_search(fake, pt, 0, other) is None  # another supernet
    longer = dataclasses.replace(search, epochs=search.epochs + 1)
    assert trial._shared_search(fake, pt, 0, longer) is None  # not finished for it
    assert ("bnas-pt", "bnas-random") in arms.PAIRS and "bnas-pt" in study.ARMS


def test_a_study_written_before_a_setting_existed_resumes(cifar_dir, tmp_path):
    """study.json from before `strategy`, `search_a_lr`, `search_diversity_tau` existed:
    each missing setting counts as the value that study ran with (study.LEGACY), so it
    resumes under the same settings and refuses others."""
    old = dict(search_a_lr=3e-4, search_diversity_tau=7.7)
    run.check_dir(str(tmp_path), _config(cifar_dir, **old))
    path = tmp_path / run.STUDY_FILE
    saved = json.loads(path.read_text())
    for name in study.LEGACY:
        del saved[name]
    path.write_text(json.dumps(saved))
    run.check_dir(str(tmp_path), _config(cifar_dir, **old))
    with pytest.raises(run.StudyDirError, match="strategy"):
        run.check_dir(str(tmp_path), _config(cifar_dir, strategy="mirrored", **old))
    with pytest.raises(run.StudyDirError, match="search_a_lr"):  # the profile's 6e-3
        run.check_dir(str(tmp_path), _config(cifar_dir, search_diversity_tau=7.7))


def test_study_search_settings_reach_the_search_config():
    config = study.config_for("cpu", data_dir="x")
    bnas = arms.search_config(arms.get("bnas"), config, 0)
    assert bnas.a_lr == config.search_a_lr == 6e-3
    assert bnas.settings.diversity_tau == config.search_diversity_tau == 1.85
    bars = arms.search_config(arms.get("bars"), config, 0)
    assert bars.a_lr == 6e-3
    paper = study.config_for("paper", data_dir="x")
    assert arms.search_config(arms.get("bnas"), paper, 0).a_lr == 3e-4
    with pytest.raises(ValueError, match="search_a_lr"):
        study.config_for("cpu", data_dir="x", search_a_lr=0.0)


def test_strategy_setting_is_checked():
    assert study.config_for("smoke", data_dir="x", strategy="mirrored").strategy == "mirrored"
    with pytest.raises(ValueError, match="keras-tuner's chief/worker") as e:
        study.config_for("smoke", data_dir="x", strategy="multi_worker")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown strategy"):
        study.config_for("smoke", data_dir="x", strategy="tpu")


def test_the_study_pins_the_conv_dtype_of_its_trainings():
    """'auto' depends on the CPU: a study records float32 or bfloat16. The cpu profile
    trains in bfloat16 (its 2.5 h); smoke and paper in Larq's float32."""
    assert study.config_for("cpu", data_dir="x").train_conv_dtype == "bfloat16"
    assert study.config_for("smoke", data_dir="x").train_conv_dtype == "float32"
    assert study.config_for("paper", data_dir="x").train_conv_dtype == "float32"
    assert study.config_for("cpu", data_dir="x",
                            train_conv_dtype="float32").train_conv_dtype == "float32"
    with pytest.raises(ValueError, match="train_conv_dtype must be float32 or bfloat16"):
        study.config_for("cpu", data_dir="x", train_conv_dtype="auto")


def test_profiles_and_overrides():
    assert study.config_for("cpu", data_dir="x") == study.StudyConfig(data_dir="x")
    c = study.config_for("cpu", data_dir="x", seeds=5)
    assert c.seeds == 5 and c.search_epochs == study.PROFILES["cpu"]["search_epochs"]
    with pytest.raises(ValueError, match="unknown arm"):
        study.config_for("smoke", data_dir="x", arms=("bnas", "nas-bench"))
    with pytest.raises(ValueError, match="profile"):
        study.config_for("gpu", data_dir="x")
    with pytest.raises(ValueError, match="data_dir"):
        study.config_for("smoke")


def test_an_arm_without_the_bfloat16_variant_is_refused_before_any_trial(cifar_dir,
                                                                         tmp_path):
    """Bi-Real Net's blocks are Larq's layers: under the cpu profile's bfloat16 the
    study refuses the arm up front (one line), not when its training starts."""
    arms.check_available(["bnas", "xnor-resnet18-matched"], "bfloat16")
    arms.check_available(["birealnet18-cifar"], "float32")
    from bnas_tf.study import run as study_run
    config = _config(cifar_dir, arms=("bnas-a", "birealnet18-cifar"),
                     train_conv_dtype="bfloat16")
    with pytest.raises(ValueError, match="birealnet18-cifar cannot train with "
                                         "train_conv_dtype=bfloat16") as e:
        study_run.prepare(config, str(tmp_path / "s"), log=lambda m: None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_bfloat16_trainings_on_a_cpu_without_it_are_announced(cifar_dir, tmp_path,
                                                             monkeypatch):
    from bnas_tf.search import engine
    from bnas_tf.study import run as study_run
    lines = []
    config = _config(cifar_dir, arms=("bnas-a",), train_conv_dtype="bfloat16")
    monkeypatch.setattr(engine, "native_bfloat16", lambda: True)
    study_run.prepare(config, str(tmp_path / "a"), log=lines.append)
    assert not any("no native bfloat16" in line for line in lines)
    monkeypatch.setattr(engine, "native_bfloat16", lambda: False)
    study_run.prepare(config, str(tmp_path / "b"), log=lines.append)
    assert any("no native bfloat16" in line and "--train_conv_dtype=float32" in line
               for line in lines)


def test_missing_preset_arm_is_refused(monkeypatch):
    arms.check_available(["bnas", "xnor-resnet18-matched"])
    monkeypatch.delitem(presets.PRESETS, "birealnet18-cifar", raising=False)
    with pytest.raises(ValueError, match="birealnet18-cifar") as e:
        arms.check_available(["bnas", "birealnet18-cifar"])
    assert "\n" not in str(e.value)


def test_ablation_arms_set_the_search_settings():
    c = study.config_for("smoke", data_dir="x")
    assert arms.search_config(arms.get("bnas-no-zeroise"), c, 0).settings.derive == "darts"
    assert arms.search_config(arms.get("bnas-no-skip"), c, 0).settings.cell_template == "darts"
    assert arms.search_config(arms.get("bnas-no-div"), c, 0).settings.diversity_lambda == 0.0
    base = arms.search_config(arms.get("bnas"), c, 1)
    assert (base.settings.derive, base.settings.cell_template, base.seed) == ("bnas", "bnas", 1)
    assert base.settings.diversity_lambda > 0
    no_pool = arms.search_config(arms.get("bnas-no-pool"), c, 1)
    assert no_pool.ops == ("none", "bin_dil_conv_3x3", "bin_dil_conv_5x5", "bin_conv_3x3",
                           "bin_conv_5x5")
    assert {**no_pool.to_dict(), "ops": None} == {**base.to_dict(), "ops": None}


# ----------------------------------------------------------------------------- report

def test_alpha_report_flags_alphas_that_never_moved():
    from bnas_tf.search import SearchConfig
    cfg = SearchConfig()
    k = len(cfg.ops)
    # search_summary.json counts epochs (and best_epoch) from 1; derived at the last one
    still = {"best_epoch": 2, "epochs": [{"epoch": 1, "alpha_entropy": np.log(k)},
                                         {"epoch": 2, "alpha_entropy": np.log(k) - 1e-5}]}
    moved = {"best_epoch": 2, "epochs": [{"epoch": 1, "alpha_entropy": np.log(k) - 1e-4},
                                         {"epoch": 2, "alpha_entropy": np.log(k) - 0.05}]}
    a = trial.alpha_report(still, cfg)
    b = trial.alpha_report(moved, cfg)
    assert a["indistinguishable"] and not b["indistinguishable"]
    assert b["per_epoch"] == pytest.approx([1e-4, 0.05])
    assert (a["derived_epoch"], b["at_derived_epoch"]) == (2, pytest.approx(0.05))
    # BARS: op rows (10 dense edges x (3 stages + reduce)), width rows, depth rows
    bars = arms.search_config(arms.get("bars"), study.config_for(
        "smoke", data_dir="x", bars_base_channels=(8, 16, 16), bars_max_depth=1), 0)
    uniform = (40 * np.log(3) + 3 * np.log(4) + 3 * np.log(2)) / 46  # 1.0909 nats
    flat = {"best_epoch": 1, "epochs": [{"epoch": 1, "bars/alpha_entropy": uniform - 1e-6}]}
    assert trial.alpha_report(flat, bars)["indistinguishable"]
    moved = {"best_epoch": 1, "epochs": [{"epoch": 1, "bars/alpha_entropy": uniform - 0.02}]}
    assert trial.alpha_report(moved, bars)["per_epoch"] == pytest.approx([0.02])


def _fake(arm, seed, top1):
    return {"arm": arm, "seed": seed, "top1": top1, "top5": 0.9, "equivalent_ops": 5e6,
            "target_equivalent_ops": 5e6, "params": 1e5, "bytes": 2048, "bconv_ops": 4,
            "latency_ms": 1.0, "search_cpu_s": 3600.0, "train_cpu_s": 0.0, "matched": True}


def test_an_arm_reusing_a_search_is_charged_for_it():
    owner = dict(_fake("bnas", 0, 0.4), search_cpu_s=1000.0, train_cpu_s=200.0)
    reuser = dict(_fake("bnas-pt", 0, 0.4), search_cpu_s=0.0, train_cpu_s=300.0,
                  search_shared_with="bnas", stages={"select": {"cpu_s": 50.0}})
    trials = [owner, reuser]
    assert report.cpu_seconds(owner, trials) == 1200.0
    assert report.cpu_seconds(reuser, trials) == 1350.0
    config = study.config_for("smoke", data_dir="x", arms=("bnas", "bnas-pt"))
    rows = {r["arm"]: r for r in report.arm_rows(trials, config)}
    assert rows["bnas-pt"]["cpu_hours"] == pytest.approx(1350.0 / 3600)


def test_paired_comparison_and_arm_statistics():
    c = study.StudyConfig(data_dir="x", arms=("bnas", "bnas-random"), seeds=3)
    trials = [_fake("bnas", s, t) for s, t in enumerate((0.50, 0.52, 0.51))]
    trials += [_fake("bnas-random", s, t) for s, t in enumerate((0.45, 0.46, 0.47))]
    rows = report.arm_rows(trials, c)
    assert rows[0]["top1_mean"] == pytest.approx(51.0)
    assert rows[0]["top1_std"] == pytest.approx(1.0)
    assert rows[0]["cpu_hours"] == pytest.approx(3.0)
    (pair,) = report.pairs(trials, c)
    assert pair["differences"] == pytest.approx([5.0, 6.0, 4.0])
    assert pair["mean"] == pytest.approx(5.0) and "bnas better" in pair["verdict"]
    # paired t-test, 2 degrees of freedom: t = 5 / (1 / sqrt 3) = 8.66, p = 0.013;
    # 95% CI 5 +- 4.303 * 0.577
    assert pair["p_value"] == pytest.approx(0.01307, abs=1e-4)
    assert pair["ci95"] == pytest.approx([2.516, 7.484], abs=1e-3)
    assert "95% CI [+2.52, +7.48], paired t-test p = 0.013" in pair["verdict"]
    close = trials[:3] + [_fake("bnas-random", s, t) for s, t in enumerate((0.52, 0.49, 0.51))]
    assert "no difference" in report.pairs(close, c)[0]["verdict"]
    # two seeds 4.97 +- 1.13 apart: over 2 SE (the old rule called it shown), but a t
    # with 1 degree of freedom is not significant (p = 0.10)
    few = study.StudyConfig(data_dir="x", arms=("bnas", "bnas-random"), seeds=2)
    two = [_fake("bnas", 0, 0.3337), _fake("bnas", 1, 0.3623),
           _fake("bnas-random", 0, 0.3753), _fake("bnas-random", 1, 0.4200)]
    (pair,) = report.pairs(two, few)
    assert abs(pair["mean"]) > 2 * pair["se"] and pair["p_value"] > 0.05
    assert pair["verdict"].startswith("no difference shown")


# ----------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_matched_equivalent_ops_within_10_percent(cifar_dir, tmp_path):
    from bnas_tf.study import run as study_run
    config = _config(cifar_dir)
    s = study_run.prepare(config, str(tmp_path), log=lambda m: None)
    for name in ("bnas-random", "bnas-a", "xnor-resnet18-matched", "bars-random"):
        arm = arms.get(name)
        search = arms.search_config(arm, config, 0) if arm.kind == "random" else None
        g = arms.random_genotype(arm, config, 0, s.table) if arm.kind == "random" \
            else genotypes.BNAS_A
        if name == "bars-random":  # the draw respects the BARS budget at search width
            spec = arms.final_spec(arm, config, search, g)
            assert s.table.equivalent_ops(spec) <= config.bars_flops_budget * 1e6
        spec, row = matching.match(arms.final_spec(arm, config, search, g), s.target, s.table)
        assert abs(row["equivalent_ops"] / s.target - 1) <= 0.10, (name, row)


def _tool(out, cifar_dir, *extra):
    return [sys.executable, os.path.join(REPO, "tools", "study.py"), "--profile=smoke",
            f"--data_dir={cifar_dir}", f"--output_dir={out}", "--arms=bnas,bnas-random",
            *extra]


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


MIRRORED_STUDY = """
import os, runpy, sys
import bnas_tf
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["study.py", *sys.argv[1:]]
runpy.run_path(os.path.join("tools", "study.py"), run_name="__main__")
"""


@pytest.mark.slow
def test_study_trials_search_and_train_under_the_mirrored_strategy(cifar_dir, tmp_path):
    """--strategy=mirrored: a trial's search and training run on both logical CPUs
    (the batch plan of each says 2 replicas; the training's metrics record 2)."""
    out = tmp_path / "study"
    args = _tool(out, cifar_dir, "--strategy=mirrored")[2:]
    args = [a if not a.startswith("--arms") else "--arms=bnas" for a in args]
    done = subprocess.run([sys.executable, "-c", MIRRORED_STUDY, *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert printed.count("MirroredStrategy: 2 replica(s)") >= 2, printed[-3000:]
    metrics = json.loads((out / "trials" / "bnas" / "seed0" / "train" / "metrics.json")
                         .read_text())
    assert metrics["replicas"] == 2
    assert json.loads((out / run.STUDY_FILE).read_text())["strategy"] == "mirrored"


@pytest.mark.slow
def test_smoke_profile_end_to_end_with_kill_and_resume(cifar_dir, tmp_path):
    out = tmp_path / "study"
    first = out / "trials" / "bnas" / "seed0" / "trial.json"
    second = out / "trials" / "bnas-random" / "seed0" / "stages.json"
    proc = subprocess.Popen(_tool(out, cifar_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # kill -9 once the first trial is done and the second is past its sizing
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if first.exists() and second.exists() and "match" in json.loads(second.read_text()):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the study finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = first.read_text()
    # the report so far, written when the first trial finished
    assert "1/2 trials finished (the study has not finished" in (out / "results.md").read_text()
    done = subprocess.run(_tool(out, cifar_dir), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first.read_text() == kept  # the finished trial was not redone
    assert "1/2 trial(s) already finished" in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 2
    for t in results["trials"]:
        assert 0.0 <= t["top1"] <= 1.0 and t["test_examples"] == 30
        assert t["bconv_ops"] > 0 and os.path.getsize(t["tflite"]) == t["bytes"]
        assert t["latency_ms"] > 0 and t["train_cpu_s"] > 0
        assert abs(t["equivalent_ops"] / t["target_equivalent_ops"] - 1) <= 0.10
    bnas = next(t for t in results["trials"] if t["arm"] == "bnas")
    assert bnas["search_cpu_s"] > 0 and len(bnas["alphas"]["per_epoch"]) == 1
    md = (out / "results.md").read_text()
    assert "bnas vs bnas-random" in md and "Fairness" in md and "Did the alphas move" in md
    assert "2/2 trials finished;" in md
    assert (out / "accuracy_vs_eqops.png").stat().st_size > 10_000
    assert split.disjoint(results["split"])
    # a changed configuration in the same directory: one line, nothing lost
    changed = subprocess.run(_tool(out, cifar_dir, "--split_seed=1"), env=_env(),
                             capture_output=True, text=True)
    assert changed.returncode != 0 and \
        "holds a different study (differs in split_seed" in changed.stderr
    assert first.read_text() == kept


@pytest.mark.slow
def test_two_scale_out_workers_share_one_study(cifar_dir, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "study"
    cmd = [sys.executable, os.path.join(REPO, "tools", "study.py"), "--profile=smoke",
           f"--data_dir={cifar_dir}", f"--output_dir={out}", "--arms=bnas-a,bnas-random"]

    def start(tuner_id):
        env = {**_env(), "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(port)}
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    chief = start("chief")
    procs = [chief]
    try:
        deadline = time.time() + 300
        while not (out / "data" / "split.json").exists() and time.time() < deadline:
            assert chief.poll() is None, chief.stdout.read()[-2000:]
            time.sleep(0.5)
        time.sleep(5)  # the chief's oracle server is up
        procs += [start("tuner0"), start("tuner1")]
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [log[-1500:] for log in logs]
    ran = [{arm for arm in ("bnas-a", "bnas-random") if f"= {arm} seed 0" in log}
           for log in logs[1:]]
    assert ran[0] | ran[1] == {"bnas-a", "bnas-random"} and not ran[0] & ran[1]
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 2 and (out / "results.md").exists()


def test_flags_override_the_profile_and_say_so():
    from flags import study as study_flags
    FLAGS = study_flags.FLAGS
    lines = []
    try:
        FLAGS(["study", "--profile=smoke", "--data_dir=x", "--seeds=2",
               "--arms=bnas,bars-random"])
        config = study_flags.study_config_from_flags(log=lines.append)
    finally:
        FLAGS.unparse_flags()
    assert config.seeds == 2 and config.arms == ("bnas", "bars-random")
    assert config.search_epochs == study.PROFILES["smoke"]["search_epochs"]
    assert any(line.startswith("--seeds=2 overrides profile smoke's 1") for line in lines)
    assert any(line.startswith("--arms=bnas,bars-random overrides") for line in lines)


def test_train_conv_dtype_auto_on_the_command_line_is_resolved_and_recorded():
    """The flag's shown default, auto, is the training tool's: given to the study it is
    resolved once to this machine's choice (said), never refused nor stored as 'auto'."""
    from flags import study as study_flags
    FLAGS = study_flags.FLAGS
    lines = []
    try:
        FLAGS(["study", "--profile=smoke", "--data_dir=x", "--train_conv_dtype=auto"])
        config = study_flags.study_config_from_flags(log=lines.append)
    finally:
        FLAGS.unparse_flags()
    assert config.train_conv_dtype == fast_binary.resolve("auto") != "auto"
    assert f"--train_conv_dtype=auto resolves to {config.train_conv_dtype} on this " \
           "machine" in lines


def test_matching_refuses_a_width_that_changes_nothing():
    class Flat:
        def equivalent_ops(self, spec):
            return 1e6

    with pytest.raises(ValueError, match="does not change"):
        matching.match({"family": "baseline", "arch": "resnet"}, 2e6, Flat())


def test_matching_finds_the_closest_width_of_a_quadratic_cost():
    class Quadratic:  # EqOPs = 1000 c^2 + 5000 c, monotone like a real network
        def equivalent_ops(self, spec):
            c = spec["channels"]
            return 1000.0 * c * c + 5000.0 * c

        def get(self, spec):
            return {"equivalent_ops": self.equivalent_ops(spec)}

    for target in (2.0e5, 1.0e6, 4.1e6):
        spec, row = matching.match({"family": "bnas", "channels": 16}, target, Quadratic())
        best = min(range(2, 513), key=lambda c: abs(1000 * c * c + 5000 * c - target))
        assert spec["channels"] == best
        assert row["equivalent_ops"] == Quadratic().equivalent_ops(spec)


@pytest.mark.slow
def test_the_perturbation_arm_selects_on_the_bnas_arms_supernet(cifar_dir, tmp_path):
    from bnas_tf.search.bnas import perturbation

    out = tmp_path / "study"
    cmd = [sys.executable, os.path.join(REPO, "tools", "study.py"), "--profile=smoke",
           f"--data_dir={cifar_dir}", f"--output_dir={out}", "--arms=bnas,bnas-pt"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    by_arm = {t["arm"]: t for t in json.loads((out / "results.json").read_text())["trials"]}
    shared = out / "trials" / "bnas" / "seed0" / "search"
    pt = by_arm["bnas-pt"]
    assert pt["search_shared_with"] == "bnas" and pt["selection"]["rule"] == "perturbation"
    assert not (out / "trials" / "bnas-pt" / "seed0" / "search").exists()
    assert pt["alphas"] == by_arm["bnas"]["alphas"]
    selected = perturbation.select(str(shared), arms.PERTURBATION_BATCHES, progress=False)
    assert pt["genotype"] == selected.to_dict()
    assert np.shape(pt["selection"]["scores"]["reduce"]["op"]) == (14, 7)
    assert pt["bconv_ops"] > 0 and 0 <= pt["top1"] <= 1
    assert abs(pt["equivalent_ops"] / pt["target_equivalent_ops"] - 1) <= 0.10
    assert "bnas-pt vs bnas" in (out / "results.md").read_text()


@pytest.mark.slow
def test_bars_backbone_and_ablation_arms_produce_trials(cifar_dir, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, os.path.join(REPO, "tools", "study.py"), "--profile=smoke",
           f"--data_dir={cifar_dir}", f"--output_dir={out}",
           "--arms=bars,bars-random,xnor-resnet18,bnas-no-skip"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    by_arm = {t["arm"]: t for t in results["trials"]}
    assert set(by_arm) == {"bars", "bars-random", "xnor-resnet18", "bnas-no-skip"}
    for t in by_arm.values():
        assert t["bconv_ops"] > 0 and t["bytes"] > 0 and 0 <= t["top1"] <= 1
    assert by_arm["bnas-no-skip"]["genotype"]["template"] == "darts"
    assert by_arm["bars"]["genotype"]["method"] == "bars" and "alphas" in by_arm["bars"]
    assert not by_arm["xnor-resnet18"]["matched"]
    assert by_arm["xnor-resnet18"]["width"] == 64  # the original width, not matched
    for arm in ("bars", "bars-random", "bnas-no-skip"):
        assert abs(by_arm[arm]["equivalent_ops"] / results["target_equivalent_ops"] - 1) <= 0.1


def test_report_files_hold_every_trial(tmp_path):
    import types
    from bnas_tf import recipes
    c = study.StudyConfig(data_dir="x", arms=("bnas", "bnas-random", "bnas-pt"), seeds=2)
    trials = []
    for s, (a, b) in enumerate(((0.50, 0.45), (0.52, 0.47))):
        for arm, top1 in (("bnas", a), ("bnas-random", b), ("bnas-pt", b)):
            t = _fake(arm, s, top1)
            t.update(width=16, resumed=False, search_wall_s=1.0, train_wall_s=2.0,
                     agreement=1.0, export_error=None)
            if arm != "bnas-random":
                t["alphas"] = {"measure": "mean KL from uniform (nats)",
                               "per_epoch": [1e-5, 2e-5], "derived_epoch": 1,
                               "at_derived_epoch": 2e-5, "indistinguishable": True}
            if arm == "bnas-pt":
                t.update(search_shared_with="bnas", selection={"rule": "perturbation"})
            trials.append(t)
    fake = types.SimpleNamespace(
        config=c, output_dir=str(tmp_path), target=5e6, train_config=recipes.TrainConfig(),
        split={"pool_files": 60, "test_files": 30, "source": "x", "classes": list("abc"),
               "external_test": False})
    results = report.write(fake, trials + [None], log=lambda m: None)
    saved = json.loads((tmp_path / report.RESULTS_JSON).read_text())
    assert saved["finished"] == 6 and saved["total"] == 7 and len(saved["trials"]) == 6
    assert results["pairs"][0]["differences"] == pytest.approx([5.0, 5.0])
    md = (tmp_path / report.RESULTS_MD).read_text()
    assert "| bnas | 2 | 51.00 +- 1.41 |" in md and "| bnas-random | 2 | 46.00 +- 1.41 |" in md
    assert md.count("indistinguishable from their initial values") == 2  # bnas, 2 seeds
    assert md.count("selected by perturbation on its last supernet, not from them") == 2
    for name in c.arms:  # every arm says what it is
        assert f"- `{name}`: {arms.ARMS[name].about}" in md and arms.ARMS[name].about
    assert "6/7 trials finished (the study has not finished: this is the table so far" in md
    assert "30 images" in md
    assert f"binary convs trained in {c.train_conv_dtype}" in md  # part of what was fair
    assert "Code of the trials (commit: trials): not recorded: 6." in md  # (fakes)
    assert (tmp_path / report.PLOT).stat().st_size > 10_000


def test_a_trial_records_the_code_it_ran():
    """21 trials ran over several commits and none recorded which (docs/results.md)."""
    code = trial.code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert code["bnas_tf"] and code["commit"] == head.stdout.strip()
    assert code["modified"] in (True, False)


def test_one_seed_has_no_spread_and_no_difference_prints_as_minus_zero():
    """A single seed printed '+- 0.00' (a spread it does not have), and a difference of
    -0.001 points printed '-0.00'."""
    c = study.StudyConfig(data_dir="x", arms=("bnas", "bnas-random"), seeds=2)
    rows = report.arm_rows([_fake("bnas", 0, 0.5)], c)
    assert rows[0]["top1_std"] is None
    trials = [_fake("bnas", 0, 0.50), _fake("bnas", 1, 0.51),
              _fake("bnas-random", 0, 0.50001), _fake("bnas-random", 1, 0.51001)]
    (pair,) = report.pairs(trials, c)  # -0.001 points on both seeds: rounds to zero
    assert "-0.00" not in pair["verdict"]
    # the same difference on every seed is the t-test's limit (p -> 0), as for nearly
    # equal ones: it was given no verdict while 0.83, 0.83, 0.87 was called better
    three = study.StudyConfig(data_dir="x", arms=("bnas", "bnas-random"), seeds=3)
    same = [_fake("bnas", s, 0.5 + 0.0333) for s in range(3)] + \
        [_fake("bnas-random", s, 0.5) for s in range(3)]
    (pair,) = report.pairs(same, three)
    assert pair["verdict"] == ("bnas better by 3.33 points (the same difference on all 3 "
                               "seeds, no spread: p < 0.001)")
    near = [_fake("bnas", s, 0.5 + d) for s, d in enumerate((0.0083, 0.0083, 0.0087))] + \
        [_fake("bnas-random", s, 0.5) for s in range(3)]
    assert "bnas better by 0.84 points" in report.pairs(near, three)[0]["verdict"]
    assert "p < 0.001" in report.pairs(near, three)[0]["verdict"]
    assert report._fmt(-0.001) == "0.00" and report._fmt(-0.02) == "-0.02"
    assert report._fmt(-0.001, "+.2f") == "+0.00"


def test_a_stage_rerun_after_a_kill_counts_the_seconds_spent_before_it(tmp_path,
                                                                      monkeypatch):
    """The report's CPU-hours are what a trial cost: a stage's seconds are saved while
    it runs, and a rerun after kill -9 adds to them (they used to restart from zero)."""
    monkeypatch.setattr(trial._Stages, "FLUSH_S", 0.05)
    stages_file = tmp_path / trial.STAGES_FILE
    on_disk = []

    def busy(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def killed():
        busy(0.4)
        on_disk.append(json.loads(stages_file.read_text()))  # what kill -9 would leave
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trial._Stages(str(tmp_path)).run("train", killed)
    assert on_disk[0]["train"]["partial"]["cpu_s"] >= 0.2  # flushed while running
    stages_file.write_text(json.dumps(on_disk[0]))  # the kill: no final write
    assert trial._Stages(str(tmp_path)).run("train", lambda: busy(0.2) or "done") == "done"
    record = json.loads(stages_file.read_text())["train"]
    assert record["cpu_s"] >= on_disk[0]["train"]["partial"]["cpu_s"] + 0.2
    assert record["result"] == "done" and "partial" not in record


def test_shared_flags_say_the_profiles_values_beside_another_tools_default():
    """--search_epochs etc. are defined once for several tools: the study's --help
    showed '(default: 2)', no profile's value, as if it applied."""
    import flags
    from flags import pipeline  # noqa: F401  (defines them first, with its own help)
    from tools import study as study_tool
    text = flags.help_text(study_tool.__doc__, study_tool.HELP, study_tool.OWN)
    assert "Not given: the profile's value (smoke 1, cpu 12, paper 50)" in text
    assert "cpu 6" in text


def test_a_resumed_study_has_an_eta_from_the_trials_finished_before():
    """After a restart the first trial line said 'ETA unknown' although 16 trials had
    recorded their seconds: the ETA now starts from them (per arm, else overall)."""
    from bnas_tf.study import run as study_run

    def record(arm, *walls):
        return {"arm": arm, "seed": 0,
                "stages": {f"s{i}": {"wall_s": w, "cpu_s": 2 * w} for i, w in enumerate(walls)}}

    lines = []
    progress = study_run.Progress(4, lines.append,
                                  [record("a", 100, 200), record("a", 300, 400), record("b", 60)])
    progress.begin(3, "a", 2, [("a", 2), ("b", 2), ("c", 2)])
    # a: mean 500 s; b: 60 s; c (none finished): the mean over the 3 trials, 1060/3 s
    assert "ETA 0h15m13s" in lines[-1], lines[-1]
    assert "unknown" in study_run.Progress(4, lines.append, []).eta([("a", 0)])
