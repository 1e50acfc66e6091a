"""BARS end to end: a short search on real CIFAR-10 images writes a genotype that
builds, trains and converts to LCE with every binary conv as LceBconv2d."""
import dataclasses
import json
import os

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import data, genotypes, models
from bnas_tf.search import SearchConfig, runner
from bnas_tf.search.bars import method as bars_method
from bnas_tf.search.engine import EngineConfig

SIZE = 16


def data_config(cifar_dir, examples=40):
    return data.DataConfig(dataset="folder", data_dir=str(cifar_dir), image_size=SIZE,
                           max_examples=examples, batch_size=8)


def search_config(**settings):
    settings = {"base_channels": [8], "max_depth": 1, "warmup_epochs": 0, "num_samples": 2,
                **settings}
    return SearchConfig.create("bars", epochs=1, batch_size=8, eval_batches=1, **settings)


def alpha_values(ckpt_dir):
    reader = tf.train.load_checkpoint(ckpt_dir)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "alpha_" in k and "OPTIMIZER_SLOT" not in k and ".OPTIMIZER" not in k}


def train_one_step(spec, cifar_dir):
    model = models.build(spec, 10, SIZE)
    model.compile(tf.keras.optimizers.legacy.Adam(2e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = next(iter(data.load(data_config(cifar_dir), "train", training=True)))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = sum(not np.array_equal(b, w.numpy())
                  for b, w in zip(before, model.trainable_weights))
    assert changed > len(before) // 2
    return model


def test_one_epoch_search_writes_a_genotype_that_trains(cifar_dir, tmp_path):
    out = str(tmp_path / "search")
    config = dataclasses.replace(search_config(), epochs=2)
    summary = runner.run_search("bars", data_config(cifar_dir), config, out, verbose=0)
    entry = summary["epochs"][0]
    for key in ("bars/temperature", "bars/entropy_coefficient", "bars/expected_equivalent_mops",
                "bars/stage0/width_0.25", "bars/stage0/depth_1", "bars/op_bin_conv_3x3"):
        assert key in entry
    # Each epoch logs the schedules' values it USED (issue 14, item 4): temperature
    # 1.0 * 0.9^e, lambda_ent -0.01 + 0.001 e, and the weights' cosine learning rate.
    epochs = summary["epochs"]
    assert [e["bars/temperature"] for e in epochs] == pytest.approx([1.0, 0.9])
    assert [e["bars/entropy_coefficient"] for e in epochs] == pytest.approx([-0.01, -0.009])
    lr, lr_min = config.w_lr, config.w_lr_min
    assert [e["w_lr"] for e in epochs] == pytest.approx([lr, lr_min + (lr - lr_min) * 0.5])
    alphas = alpha_values(os.path.join(out, "ckpt"))
    assert alphas and any(np.abs(a).max() > 0 for a in alphas.values())  # alphas moved
    path = os.path.join(out, runner.GENOTYPE_FILE)
    genotype = genotypes.load(path)
    assert isinstance(genotype, genotypes.BarsGenotype)
    assert genotype.base_channels == (8,) and genotype.max_depth == 1
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["method"] == "bars"
    train_one_step({"family": "bars", "genotype": path}, cifar_dir)


def test_bars_bilevel_model_applies_the_multiplicative_budget(cifar_dir):
    """One eager BARS step with a budget far below the supernet's cost: the alpha
    step lowers the expected FLOPs; without a budget the loss is CE + entropy term."""
    config = search_config()
    engine = EngineConfig().resolve()
    net = bars_method.build_supernet(config, 10, SIZE, engine)
    model = bars_method.build_model(net, config, steps_per_epoch=1, image_size=SIZE,
                                    engine=engine)
    assert type(model.w_optimizer).__name__ == "Adam"
    x, y = next(iter(data.load(data_config(cifar_dir), "search_val", training=False)))
    ce = model._ce(x, y)[0]  # random Gumbel sample: compare loss structure, not values
    loss, _, reg = model._arch_loss(x, y)
    assert float(reg) == pytest.approx(-0.01 * float(net.entropy()), rel=1e-5)
    start = float(net.expected_flops())
    net.flops_budget = 0.01 * start / 1e6
    factor = float(net.expected_flops()) / 1e6 / net.flops_budget
    loss, _, reg = model._arch_loss(x, y)
    assert float(loss - reg) > 0.5 * factor * float(ce)  # CE scaled by FLOPs / F (~100)
    model.train_step(((x, y), (x, y)))
    assert float(net.expected_flops()) < start


def lce_op_names(flatbuffer):
    from tensorflow.lite.python import schema_py_generated as schema
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else
                     str(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())))
    names = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        names += [codes[graph.Operators(k).OpcodeIndex()] for k in range(graph.OperatorsLength())]
    return names


def binary_convs(model):
    import larq as lq
    return [m for m in model.submodules
            if isinstance(m, lq.layers.QuantConv2D) and m.input_quantizer is not None]


def dense_cell(**ops_by_edge):
    """A cell genotype from {"ij": op} (all other edges none)."""
    return tuple(ops_by_edge.get(f"{i}{j}", "none") for i, j in genotypes.dense_edges())


def test_every_binary_conv_becomes_lce_bconv2d():
    import larq_compute_engine as lce
    normal = dense_cell(**{"04": "bin_conv_3x3", "14": "shortcut", "01": "bin_conv_3x3"})
    reduce = dense_cell(**{"01": "bin_conv_3x3", "04": "shortcut", "14": "bin_conv_3x3"})
    g = genotypes.BarsGenotype(stages=[genotypes.BarsStage(0.5, 0, normal),
                                       genotypes.BarsStage(0.75, 0, normal)],
                               reduce_cell=reduce, base_channels=(8, 16), max_depth=0)
    model = models.build({"family": "bars", "genotype": g.to_dict()}, 10, SIZE)
    convs = binary_convs(model)
    reduce_cell = model.get_layer("stage1_reduce")
    factorized = [h.conv for h in reduce_cell.downsample.halves] + \
        [h.conv for layer in reduce_cell.edge_ops if hasattr(layer, "halves")
         for h in layer.halves]
    assert len(factorized) == 4 and {id(c) for c in factorized} <= {id(c) for c in convs}
    names = lce_op_names(lce.convert_keras_model(model))
    assert names.count("LceBconv2d") == len(convs) == 2 * 3 + 3 + 4
    float_convs = [n for n in names if n in ("3", "CONV_2D")]  # builtin CONV_2D = 3
    assert len(float_convs) == 1  # the stem


@pytest.mark.slow
def test_two_stage_search_with_budget_trains_and_exports(cifar_dir, tmp_path):
    import larq_compute_engine as lce
    out = str(tmp_path / "search")
    config = search_config(base_channels=[8, 16], flops_budget=0.01, num_samples=4)
    config.epochs = 2
    runner.run_search("bars", data_config(cifar_dir, 80), config, out, verbose=0)
    path = os.path.join(out, runner.GENOTYPE_FILE)
    model = train_one_step({"family": "bars", "genotype": path}, cifar_dir)
    names = lce_op_names(lce.convert_keras_model(model))
    assert names.count("LceBconv2d") == len(binary_convs(model))


def checkpoint_tensors(directory):
    """Every tensor of the latest checkpoint of a search directory, by key."""
    reader = tf.train.load_checkpoint(os.path.join(directory, runner.search_dir.CKPT_DIR))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "save_counter" not in k and "CHECKPOINTABLE_OBJECT_GRAPH" not in k}


@pytest.mark.slow
def test_resumed_bars_search_equals_an_uninterrupted_one(cifar_dir, tmp_path):
    """Stopped after epoch 1 (its checkpoint: weights, alphas, both Adams' slots, the
    epoch counter and the Gumbel generator's state) and resumed, a BARS search ends
    where the uninterrupted one ends: every checkpoint tensor, the genotype."""
    config = dataclasses.replace(search_config(), epochs=2)
    straight = runner.run_search("bars", data_config(cifar_dir), config,
                                 str(tmp_path / "straight"), verbose=0)
    resumed_dir = str(tmp_path / "resumed")
    runner.run_search("bars", data_config(cifar_dir), config, resumed_dir, stop_after=1,
                      verbose=0)
    resumed = runner.run_search("bars", data_config(cifar_dir), config, resumed_dir,
                                verbose=0)
    want, got = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(resumed_dir)
    assert sorted(want) == sorted(got)
    assert any("rng" in k for k in want) and any("alpha_width" in k for k in want)
    differ = [k for k in want if not np.allclose(want[k], got[k], rtol=1e-5, atol=1e-6)]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ, e.g. {differ[:3]}"
    assert resumed["epochs"][-1]["genotype"] == straight["epochs"][-1]["genotype"]


def search_command(cifar_dir, output_dir):
    """tools/search.py --method=bars at tiny shapes (~50 steps of batch 8 per epoch)."""
    import sys
    return [sys.executable, "tools/search.py", "--method=bars", "--dataset=folder",
            f"--data_dir={cifar_dir}", f"--image_size={SIZE}", "--max_examples=800",
            "--batch_size=8", "--epochs=3", "--warmup_epochs=0", "--base_channels=8",
            "--max_depth=1", "--num_samples=2", "--eval_batches=1", "--progress=none",
            f"--output_dir={output_dir}"]


def search_results(directory):
    """What a finished search directory reports: checkpoint tensors, genotype files,
    the summary (every epoch's metrics, alpha statistics and genotype)."""
    genotype_files = sorted(p.name for p in (directory / runner.search_dir.GENOTYPES_DIR)
                            .iterdir())
    return (checkpoint_tensors(directory), (directory / runner.GENOTYPE_FILE).read_text(),
            {name: (directory / runner.search_dir.GENOTYPES_DIR / name).read_text()
             for name in genotype_files},
            json.loads((directory / runner.SUMMARY_FILE).read_text()))


@pytest.mark.slow
def test_bars_search_killed_9_then_rerun_equals_an_uninterrupted_one(cifar_dir, tmp_path):
    """Issue 17: `tools/search.py --method=bars` SIGKILLed in its second epoch (its first
    epoch's checkpoint written) and rerun with the same command, in fresh processes,
    ends bit for bit where an uninterrupted run in another fresh process ends: every
    checkpoint tensor (weights, alphas, both Adams' slots, counters, the Gumbel
    generator), the genotype files and the summary's per-epoch metrics."""
    import signal
    import subprocess
    import time
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)

    def run(directory):
        done = subprocess.run(search_command(cifar_dir, directory), cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    run(straight_dir)
    ckpt_dir = str(resumed_dir / runner.search_dir.CKPT_DIR)
    killed = subprocess.Popen(search_command(cifar_dir, resumed_dir), cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while tf.train.latest_checkpoint(ckpt_dir) is None:  # poll for epoch 1's
            assert killed.poll() is None, "the search ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.02)
        time.sleep(0.5)  # into epoch 2's steps (~50 of them)
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(ckpt_dir)
    assert latest.endswith("ckpt-1"), f"killed too late to test a resume: {latest}"
    summary = json.loads((resumed_dir / runner.SUMMARY_FILE).read_text())
    # [1, 2] if the kill fell between epoch 2's summary and its checkpoint
    assert [e["epoch"] for e in summary["epochs"]] in ([1], [1, 2])
    rerun = run(resumed_dir)
    assert "resuming" in rerun.stderr and "after epoch 1/3" in rerun.stderr

    want, got = search_results(straight_dir), search_results(resumed_dir)
    assert sorted(want[0]) == sorted(got[0])
    assert any("rng" in k for k in want[0]) and any("alpha_width" in k for k in want[0])
    assert any("OPTIMIZER_SLOT" in k for k in want[0])
    differ = [k for k in want[0] if not np.array_equal(want[0][k], got[0][k])]
    assert not differ, f"{len(differ)} of {len(want[0])} tensors differ, e.g. {differ[:3]}"
    assert got[1:] == want[1:]
    assert len(got[3]["epochs"]) == 3


def test_the_recompute_engine_setting_reaches_the_supernet_and_the_run_identity():
    """--recompute_stages (engine.EngineConfig): the BARS supernet's first N stages
    recompute; BNAS refuses it; it is part of what a resume must match (the step equals
    one without recomputation only to ~1e-6), and a directory from before the setting
    reads as 0."""
    from bnas_tf.search import engine as engine_lib
    from bnas_tf.search import search_dir
    from bnas_tf.search.bars import method as bars_method
    from bnas_tf.search.bnas import method as bnas_method
    config = search_config(base_channels=[8, 16], max_depth=1)
    on = engine_lib.EngineConfig(recompute_stages=1).resolve()
    net = bars_method.build_supernet(config, 10, SIZE, on)
    assert net.recompute_stages == 1
    assert all(c.recompute for c in net.stage_cells[0])
    assert not any(c.recompute for c in net.stage_cells[1])
    with pytest.raises(ValueError, match="recompute_stages must be >= 0"):
        engine_lib.EngineConfig(recompute_stages=-1).validate()
    bnas_config = SearchConfig.create("bnas", cells=3, channels=4)
    with pytest.raises(ValueError, match="BARS' fused cell only"):
        bnas_method.build_supernet(bnas_config, 10, SIZE, on)
    dc = data.DataConfig(dataset="folder", data_dir="x")
    identity = search_dir.run_identity(dc, config, on)
    assert identity["engine"] == {"cell": "fused", "recompute_stages": 1}
    old = dict(identity, engine={"cell": "fused"})  # written before the setting existed
    assert search_dir.upgrade_identity(old)["engine"]["recompute_stages"] == 0


@pytest.mark.parametrize("engine,message", [
    (EngineConfig(recompute_stages=9), r"recompute_stages must be in 0\.\.2, got 9"),
    (EngineConfig(recompute_stages=1, cell="reference"), "needs the fused cell")])
def test_an_engine_the_search_cannot_run_is_refused_before_anything_is_written(
        tmp_path, engine, message):
    """A refused --recompute_stages used to leave search_config.json behind, and the
    corrected command was then refused as 'a different search' in that directory."""
    out = tmp_path / "run"
    config = search_config(base_channels=[8, 16], max_depth=1)
    dc = data.DataConfig(dataset="folder", data_dir=str(tmp_path / "no-data"))
    with pytest.raises(ValueError, match=message):  # before the data is even looked at
        runner.run_search("bars", dc, config, str(out), verbose=0, engine=engine)
    assert not out.exists()
