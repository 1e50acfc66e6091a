"""BNAS derive='perturbation' (DARTS-PT op selection, bnas/perturbation.py)."""
import json

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import genotypes, ops
from bnas_tf.search import SearchConfig, bilevel, runner
from bnas_tf.search.bnas import derive as derive_lib
from bnas_tf.search.bnas import perturbation
from bnas_tf.search.bnas.supernet import Supernet
from tests.test_search import FEW_OPS, _ckpt_alphas, _small

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "bin_conv_3x3")


def _uniform_mix():
    return {k: np.full((14, len(OPS)), 1 / len(OPS), np.float32) for k in perturbation.KINDS}


def _linear_loss(effect_op):
    """A loss that each kept mixing weight lowers by its effect: removing op k of edge e
    raises it by effect_op[kind][e, k] * w; zeroing a row by the row's total."""
    def loss_of(mix):
        return -sum(float((mix[k] * effect_op[k]).sum()) for k in perturbation.KINDS)
    return loss_of


def test_each_edge_gets_the_op_whose_removal_hurts_most_and_zeroise_when_none_does():
    rng = np.random.default_rng(0)
    effect = {k: rng.normal(size=(14, len(OPS))) for k in perturbation.KINDS}
    effect["normal"][3, :] = -1.0   # every removal of edge 3 lowers the loss
    effect["normal"][3, 0] = 0.0    # (Zeroise's own output is zero: no effect)
    mix = _uniform_mix()
    op_scores, edge_scores = perturbation.removal_scores(_linear_loss(effect), mix,
                                                         list(OPS))
    for kind in perturbation.KINDS:
        expected = effect[kind] * mix[kind]
        expected[:, 0] = 0.0
        np.testing.assert_allclose(op_scores[kind], expected, atol=1e-9)
        np.testing.assert_allclose(edge_scores[kind], (effect[kind] * mix[kind]).sum(1),
                                   atol=1e-9)
    genotype = perturbation.genotype_from_scores(op_scores, edge_scores, OPS)
    offsets, _ = derive_lib.edge_offsets()
    for node, start in enumerate(offsets):
        rows = list(range(start, start + 2 + node))
        kept = sorted(rows, key=lambda r: -edge_scores["normal"][r])[:2]
        pairs = genotype.normal[2 * node: 2 * node + 2]
        assert [j for _, j in pairs] == [r - start for r in kept]
        for (op, _), r in zip(pairs, kept):
            hurt = effect["normal"][r, 1:] * mix["normal"][r, 1:]  # the non-Zeroise ops
            assert op == (OPS[1 + int(np.argmax(hurt))] if hurt.max() > 0 else "none")
    # edge 3: no removal raises the loss, so its decision is Zeroise
    assert np.argmax(op_scores["normal"][3]) == 0 and op_scores["normal"][3, 1:].max() < 0


def test_a_removal_zeroes_one_weight_without_renormalising():
    mix = _uniform_mix()
    out = perturbation._without(mix, "reduce", 5, 2)
    assert out["reduce"][5, 2] == 0 and np.isclose(out["reduce"][5].sum(), 0.75)
    assert np.array_equal(out["normal"], mix["normal"]) and mix["reduce"][5, 2] == 0.25
    assert not perturbation._without(mix, "normal", 1, None)["normal"][1].any()


def test_alpha_derivation_still_picks_by_the_same_rule_after_the_refactor():
    rng = np.random.default_rng(3)
    alpha = rng.normal(size=(14, len(OPS)))
    pairs = derive_lib.derive_cell(alpha, OPS)
    scores = derive_lib.scored_weights(alpha, OPS)
    offsets, _ = derive_lib.edge_offsets()
    for node, start in enumerate(offsets):
        rows = scores[start:start + 2 + node]
        order = sorted(range(len(rows)), key=lambda j: (-rows[j].max(), j))[:2]
        assert pairs[2 * node: 2 * node + 2] == [(OPS[int(np.argmax(rows[j]))], j)
                                                 for j in order]


@pytest.fixture(scope="module")
def small_net():
    tf.keras.utils.set_random_seed(0)
    net = Supernet(OPS, cells=3, channels=4, num_classes=10, image_size=16)
    x = tf.random.normal([6, 16, 16, 3])
    y = tf.constant([0, 1, 2, 3, 4, 5])
    net(x, training=False)
    net.alpha_normal.assign(tf.random.normal([14, len(OPS)]))
    net.alpha_reduce.assign(tf.random.normal([14, len(OPS)]))
    return net, [(x, y)]


def test_the_supernet_uses_the_given_mixing_weights(small_net):
    net, batches = small_net
    x, y = batches[0]
    loss_of = perturbation.validation_loss_fn(net, batches)
    mix = {k: tf.nn.softmax(a).numpy() for k, a in zip(perturbation.KINDS,
                                                        net.arch_variables)}
    ce = float(tf.reduce_mean(bilevel.cross_entropy(y, net(x, training=False))))
    assert loss_of(mix) == pytest.approx(ce, rel=1e-5)
    for kind in perturbation.KINDS:  # each cell kind reads its own weights
        changed = dict(mix, **{kind: np.eye(14, len(OPS), k=0, dtype=np.float32)})
        assert abs(loss_of(changed) - ce) > 1e-4, kind


def test_derive_on_a_supernet_gives_a_valid_genotype_and_counts_its_evaluations(small_net,
                                                                               capsys):
    net, batches = small_net
    genotype = perturbation.derive(net, iter(batches), OPS)
    assert isinstance(genotype, genotypes.BnasGenotype)
    genotypes.BnasGenotype.from_dict(genotype.to_dict())
    assert set(genotype.ops_used()) <= set(OPS)
    out = capsys.readouterr().out
    assert "113 supernet evaluations on 1 validation batches" in out
    again, scores = perturbation.derive(net, batches, OPS, progress=False, with_scores=True)
    assert again == genotype
    assert np.shape(scores["normal"]["op"]) == (14, len(OPS)) and len(scores["reduce"]["edge"]) == 14  # 1 + 2*14*(3+1)
    net.alpha_normal.assign(tf.fill([14, len(OPS)], np.nan))
    try:
        with pytest.raises(ValueError, match="alpha_normal"):
            perturbation.derive(net, batches, OPS, progress=False)
    finally:
        net.alpha_normal.assign(tf.zeros([14, len(OPS)]))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("pt") / "search"
    dc, cfg = _small(cifar_dir, epochs=1)
    runner.run_search("bnas", dc, cfg, str(out), verbose=0)
    return out


def test_a_search_directory_restores_its_trained_supernet(searched):
    net, config, data_config = runner.restore_supernet(str(searched))
    assert config.settings.cells == 3 and config.ops == FEW_OPS
    for saved, restored in zip(_ckpt_alphas(str(searched)), net.alpha_arrays()):
        np.testing.assert_array_equal(saved, restored)
    reader = tf.train.load_checkpoint(str(searched / "ckpt"))
    kernel = next(k for k in reader.get_variable_to_shape_map()
                  if "classifier/kernel" in k and "OPTIMIZER" not in k)
    np.testing.assert_array_equal(reader.get_tensor(kernel), net.classifier.kernel.numpy())
    assert data_config.max_examples == 128 and data_config.image_size == 16


def test_select_scores_a_finished_search_on_its_validation_split(searched, capsys):
    genotype = perturbation.select(str(searched), max_batches=1)
    assert isinstance(genotype, genotypes.BnasGenotype)
    assert set(genotype.ops_used()) <= set(FEW_OPS)
    assert "85 supernet evaluations on 1 validation batches" in capsys.readouterr().out
    # deterministic: the same supernet and batches give the same decision
    assert perturbation.select(str(searched), max_batches=1, progress=False) == genotype


def test_select_refuses_a_directory_without_a_checkpoint(tmp_path, searched):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="search_config.json"):
        perturbation.select(str(empty))
    (empty / "search_config.json").write_text((searched / "search_config.json").read_text())
    with pytest.raises(ValueError, match="no search checkpoint"):
        perturbation.select(str(empty))
    bars = tmp_path / "bars"
    bars.mkdir()  # refused from its config, before any data is read
    (bars / "search_config.json").write_text(json.dumps(
        {"search": SearchConfig.create("bars").to_dict(),
         "data": {"dataset": "folder", "data_dir": str(tmp_path / "nowhere")}}))
    with pytest.raises(ValueError, match="is a bars search"):
        perturbation.select(str(bars))
