"""BNAS derivation (pure numpy): Eq. 4's gamma, Zeroise handling, top-2 edges."""
import numpy as np
import pytest

from bnas_tf import genotypes, ops
from bnas_tf.search.bnas import derive

OPS = ops.BNAS_OPS  # none is column 0
NONE, MAX, CONV = OPS.index("none"), OPS.index("max_pool_3x3"), OPS.index("bin_conv_3x3")


def _alpha(fill=0.0):
    return np.full((14, len(OPS)), fill)


def test_gamma_flips_a_zeroise_choice_on_a_late_edge():
    alpha = _alpha()
    # Node 3 (rows 9..13): edge from s1 (row 10) prefers none slightly over conv.
    alpha[10, NONE], alpha[10, CONV] = 2.0, 1.8
    alpha[9, MAX] = 1.0
    alpha[0, CONV], alpha[1, MAX] = 1.0, 1.0
    g1 = derive.derive_bnas(alpha, alpha, OPS, gamma=1.0)
    g3 = derive.derive_bnas(alpha, alpha, OPS, gamma=3.0)
    node3_g1 = dict((src, op) for op, src in g1.normal[6:8])
    node3_g3 = dict((src, op) for op, src in g3.normal[6:8])
    assert node3_g1[1] == "none"
    assert node3_g3[1] == "bin_conv_3x3"
    # gamma touches the Zeroise column only: the first edge row (node 0, from s0)
    # keeps its op (the reference divided that row instead).
    assert ("bin_conv_3x3", 0) in g1.normal[:2] and ("bin_conv_3x3", 0) in g3.normal[:2]
    assert g1.normal[:2] == g3.normal[:2]


def test_gamma_acts_on_the_zeroise_column_wherever_it_is():
    names = ("max_pool_3x3", "bin_conv_3x3", "none")
    alpha = np.zeros((14, 3))
    alpha[0] = [0.0, 1.0, 1.2]       # row 0: none wins at gamma 1, conv at gamma 2
    alpha[1] = [0.0, 0.0, 0.0]
    g1 = derive.derive_bnas(alpha, alpha, names, gamma=1.0)
    g2 = derive.derive_bnas(alpha, alpha, names, gamma=2.0)
    assert ("none", 0) in g1.normal[:2]
    assert ("bin_conv_3x3", 0) in g2.normal[:2]


def test_gamma_changes_which_edges_a_node_keeps():
    alpha = _alpha()
    # Node 1 (rows 2..4): s0 edge strong only through none, s1 and node-0 edges mild convs.
    alpha[2, NONE] = 3.0
    alpha[3, CONV] = 1.5
    alpha[4, CONV] = 1.4
    keep = lambda g: sorted(src for _, src in g.normal[2:4])  # noqa: E731
    assert keep(derive.derive_bnas(alpha, alpha, OPS, gamma=1.0)) == [0, 1]
    assert keep(derive.derive_bnas(alpha, alpha, OPS, gamma=10.0)) == [1, 2]


def test_darts_mode_never_picks_zeroise():
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(14, len(OPS)))
    alpha[:, NONE] = 10.0  # Zeroise dominates every edge
    bnas = derive.derive_bnas(alpha, alpha, OPS, mode="bnas")
    darts = derive.derive_bnas(alpha, alpha, OPS, mode="darts")
    assert all(op == "none" for op in bnas.ops_used())
    assert "none" not in darts.ops_used()
    # Strongest non-Zeroise op per kept edge.
    for op, src in darts.normal[:2]:
        assert op == OPS[1 + int(np.argmax(alpha[src, 1:]))]


def test_two_strongest_edges_per_node_strongest_first():
    alpha = _alpha()
    alpha[9:14, CONV] = [0.1, 0.5, 0.3, 0.9, 0.2]  # node 3 inputs 0..4
    g = derive.derive_bnas(alpha, alpha, OPS)
    assert [src for _, src in g.normal[6:8]] == [3, 1]
    assert [op for op, _ in g.normal[6:8]] == ["bin_conv_3x3"] * 2
    for k, (_, src) in enumerate(g.normal):
        assert 0 <= src < 2 + k // 2


def test_genotype_round_trips_and_carries_the_template(tmp_path):
    alpha = np.random.default_rng(1).normal(size=(14, len(OPS)))
    g = derive.derive_bnas(alpha, -alpha, OPS, gamma=2.0, template="darts")
    assert g.template == "darts"
    path = tmp_path / "g.json"
    genotypes.save(g, str(path))
    assert genotypes.load(str(path)) == g


def test_bad_inputs():
    with pytest.raises(ValueError, match="gamma"):
        derive.derive_bnas(_alpha(), _alpha(), OPS, gamma=0)
    with pytest.raises(ValueError, match="shape"):
        derive.derive_bnas(np.zeros((14, 3)), np.zeros((14, 3)), OPS)
    with pytest.raises(ValueError, match="edge rows"):
        derive.derive_bnas(np.zeros((10, 7)), np.zeros((10, 7)), OPS)
    with pytest.raises(ValueError, match="unknown derivation"):
        derive.derive_bnas(_alpha(), _alpha(), OPS, mode="snas")
    with pytest.raises(ValueError, match="besides none"):
        derive.derive_bnas(np.zeros((14, 1)), np.zeros((14, 1)), ("none",), mode="darts")


def test_edge_labels_match_rows():
    labels = derive.edge_labels()
    assert len(labels) == derive.edge_offsets()[1] == 14
    assert labels[0] == "c_{k-2}->n0" and labels[-1] == "n2->n3"


# ------------------------------------------------- diverged alphas, input-independent cells
@pytest.mark.parametrize("poison", ["nan", "inf", "-inf"])
def test_derivation_refuses_non_finite_alphas(poison):
    """NaN everywhere or one +-Inf used to derive an all-`none` genotype silently."""
    good = _alpha()
    bad = np.full((14, len(OPS)), np.nan) if poison == "nan" else _alpha()
    if poison != "nan":
        bad[3, CONV] = float(poison)
    for normal, reduce in ((bad, good), (good, bad)):
        with pytest.raises(ValueError, match=r"non-finite .*diverged") as error:
            derive.derive_bnas(normal, reduce, OPS)
        assert "\n" not in str(error.value)


def test_bars_derivation_refuses_non_finite_alphas():
    import bnas_tf  # noqa: F401
    from bnas_tf.search.bars import derive as bars_derive
    from bnas_tf.search.bars import supernet as bars_supernet
    net = bars_supernet.BarsSupernet(10, 16, base_channels=(4,), max_depth=1)
    net.alpha_width.assign(np.full(net.alpha_width.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"BARS .*alpha_width.*non-finite") as error:
        bars_derive.sample_architectures(net, 2, np.random.default_rng(0))
    assert "\n" not in str(error.value)


def test_disconnected_cells_are_found():
    """A cell whose output nodes reach neither input through non-`none` ops."""
    live = genotypes.load("bnas_a")
    assert genotypes.disconnected_cells(live) == []
    all_none = derive.derive_bnas(_alpha(), _alpha(), OPS, gamma=1e-9)  # Zeroise wins all
    assert genotypes.disconnected_cells(all_none) == ["normal", "reduce"]
    # Node 0 takes s0 through a conv, but only nodes 1..3 (Zeroise-only) are concatenated.
    edges = [("bin_conv_3x3", 0), ("none", 1)] + [("none", 0), ("none", 1)] * 3
    g = genotypes.BnasGenotype(normal=edges, reduce=edges, normal_concat=(3, 4, 5),
                               reduce_concat=(3, 4, 5))
    assert genotypes.disconnected_cells(g) == ["normal", "reduce"]
    # A chain node2 <- node0 <- s0 through shortcut/pool keeps the cell live.
    edges = [("max_pool_3x3", 0), ("none", 1), ("shortcut", 2), ("none", 0)] + \
        [("none", 0), ("none", 1)] * 2
    g = genotypes.BnasGenotype(normal=edges, reduce=genotypes.load("bnas_a").reduce,
                               normal_concat=(3,))
    assert genotypes.disconnected_cells(g) == []
