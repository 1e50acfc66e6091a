"""BNAS search: bilevel step, diversity regulariser, supernet, runner, resume, CLI."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import data, genotypes, models, ops
from bnas_tf.search import SearchConfig, bilevel, parse_ops, runner
from bnas_tf.search import alphas as alpha_fns
from bnas_tf.search.bnas import cell as bnas_cell
from bnas_tf.search.bnas import method as bnas_method
from bnas_tf.search.bnas import regularizers, supernet
from bnas_tf.search.engine import EngineConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
FEW_OPS = ("none", "max_pool_3x3", "bin_conv_3x3")


# ----------------------------------------------------------------------------- toy supernet

class ToyNet(bilevel.SupernetBase):
    """logits = x @ W + alpha; optionally an unused alpha matrix with a regulariser."""

    def __init__(self, reg_lambda=None):
        super().__init__()
        self.dense = tf.keras.layers.Dense(3, use_bias=False)
        self.alpha = self.add_weight(name="alpha", shape=(3,),
                                     initializer=tf.keras.initializers.RandomNormal(seed=1))
        self.reg_lambda = reg_lambda
        if reg_lambda is not None:  # a matrix only the regulariser sees
            self.alpha_free = self.add_weight(
                name="alpha_free", shape=(4, 5),
                initializer=tf.keras.initializers.RandomNormal(stddev=2.0, seed=2))

    @property
    def arch_variables(self):
        return [self.alpha] + ([self.alpha_free] if self.reg_lambda is not None else [])

    def arch_regularization(self, epoch):
        if self.reg_lambda is None:
            return tf.constant(0.0)
        return regularizers.diversity([self.alpha_free], self.reg_lambda, 7.7, epoch)

    def call(self, x, training=None):
        return self.dense(x) + self.alpha


def _batches(seed=0, n=8):
    rng = np.random.default_rng(seed)
    xt, xv = rng.normal(size=(2, n, 5)).astype("float32")
    yt, yv = rng.integers(0, 3, size=(2, n)).astype("int32")
    return (tf.constant(xt), tf.constant(yt)), (tf.constant(xv), tf.constant(yv))


def _toy_model(order=1, a_lr=1.0, w_lr=1.0, reg_lambda=None, grad_clip=None, adam=False):
    tf.keras.utils.set_random_seed(0)
    model = bilevel.BilevelModel(ToyNet(reg_lambda), order=order, w_wd=0.0, a_wd=0.0,
                                 grad_clip=grad_clip)
    model.net(tf.zeros([1, 5]))  # build before compile: optimizer slots are created eagerly
    a_opt = (tf.keras.optimizers.legacy.Adam(a_lr, beta_1=0.5) if adam
             else tf.keras.optimizers.legacy.SGD(a_lr))
    model.compile(tf.keras.optimizers.legacy.SGD(w_lr), a_opt)
    return model


def _ce(net, x, y, kernel=None, alpha=None):
    kernel = net.dense.kernel if kernel is None else kernel
    alpha = net.alpha if alpha is None else alpha
    logits = tf.matmul(x, kernel) + alpha
    return tf.reduce_mean(bilevel.cross_entropy(y, logits))


def test_alphas_learn_from_validation_batches_weights_from_training_batches():
    model = _toy_model()
    net = model.net
    (xt, yt), (xv, yv) = _batches()
    w0, a0 = net.dense.kernel.numpy(), net.alpha.numpy()
    with tf.GradientTape(persistent=True) as tape:
        val, train = _ce(net, xv, yv), _ce(net, xt, yt)
    ga_val, ga_train = tape.gradient(val, net.alpha), tape.gradient(train, net.alpha)
    gw_val = tape.gradient(val, net.dense.kernel)
    a1_expected = a0 - ga_val.numpy()
    with tf.GradientTape() as tape:  # the weight step sees the updated alphas
        train_after = _ce(net, xt, yt, alpha=tf.constant(a1_expected))
    gw_train = tape.gradient(train_after, net.dense.kernel).numpy()

    model.train_step(((xt, yt), (xv, yv)))
    assert np.allclose(net.alpha.numpy(), a1_expected, atol=1e-6)
    assert np.allclose(net.dense.kernel.numpy(), w0 - gw_train, atol=1e-6)
    # Decisive: the swapped assignments would give different values.
    assert not np.allclose(net.alpha.numpy(), a0 - ga_train.numpy(), atol=1e-3)
    assert not np.allclose(net.dense.kernel.numpy(), w0 - gw_val.numpy(), atol=1e-3)
    assert {v.ref() for v in model.weight_variables} == {net.dense.kernel.ref()}


def test_alpha_update_flag_freezes_alphas_only():
    model = _toy_model(adam=True)
    net = model.net
    a0, w0 = net.alpha.numpy(), net.dense.kernel.numpy()
    model.set_alpha_update(False)
    for _ in range(3):
        model.train_step(_batches())
    assert np.array_equal(net.alpha.numpy(), a0)
    assert not np.allclose(net.dense.kernel.numpy(), w0)
    model.set_alpha_update(True)
    assert int(model.a_optimizer.iterations.numpy()) == 0  # Adam restarts afresh
    model.train_step(_batches())
    assert not np.allclose(net.alpha.numpy(), a0)



def _descendants(ops):
    """Every op reachable from `ops` along data and control edges."""
    seen, todo = set(), list(ops)
    while todo:
        op = todo.pop()
        for nxt in [c for t in op.outputs for c in t.consumers()] + list(op._control_outputs):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_weight_pass_starts_after_the_alpha_update():
    """The traced step runs the weight pass's first layer (its MatMul, which reads no
    alpha) only after the alpha optimizer's update: the two passes' activations are
    never alive together."""
    model = _toy_model(adam=True)  # alphas: Adam, weights: SGD
    graph = tf.function(model.train_step, autograph=False).get_concrete_function(
        _batches()).graph
    updates = [op for op in graph.get_operations() if op.type == "ResourceApplyAdam"]
    assert updates
    forward = [op for op in graph.get_operations()
               if op.type == "MatMul" and "gradient_tape" not in op.name]
    assert len(forward) == 2  # alpha pass (validation batch), weight pass
    after = _descendants(updates)
    assert [op in after for op in forward] == [False, True]

def test_train_function_follows_the_alpha_update_variable():
    """The compiled step leaves the alpha step out while `alpha_update` is off, read
    from the variable before every call (a restored checkpoint or a callback may set
    it), and traces the step with it once the flag is back on."""
    model = _toy_model(adam=True)
    net = model.net
    batch = _batches()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    train_function = model.make_train_function()
    a0, w0 = net.alpha.numpy(), net.dense.kernel.numpy()
    model.alpha_update.assign(False)  # not through set_alpha_update
    for _ in range(2):
        logs = train_function(iterator)
    assert np.array_equal(net.alpha.numpy(), a0)
    assert not np.allclose(net.dense.kernel.numpy(), w0)
    assert float(logs["arch_loss"]) == 0.0
    model.alpha_update.assign(True)
    logs = train_function(iterator)
    assert not np.allclose(net.alpha.numpy(), a0)
    assert float(logs["arch_loss"]) > 0.0
    assert model.make_train_function() is train_function


@pytest.mark.parametrize("order", [1, 2])
def test_shared_kernel_quantisation_gives_the_same_step(order):
    """The bilevel step quantises the supernet's binary kernels once for its alpha and
    weight passes (recorded on the weight tape, re-entered for the weight pass): after
    two compiled steps, every variable equals that of the step quantising per pass."""
    batch = tuple((tf.random.stateless_normal([4, 16, 16, 3], seed=[s, 1]),
                   tf.constant([s, 1, 2, 3], tf.int32)) for s in (1, 2))
    results = []
    for shared in (True, False):
        tf.keras.utils.set_random_seed(3)
        net = supernet.Supernet(FEW_OPS, cells=3, channels=4, conv_dtype="float32")
        config = SearchConfig.create(cells=3, channels=4, batch_size=4, order=order,
                                     ops=FEW_OPS)
        model = bilevel.build(net, config, steps_per_epoch=2, image_size=16)
        if not shared:
            net.precompute = lambda: None  # the step then quantises inside each pass
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        train_function = model.make_train_function()
        for _ in range(2):
            train_function(iterator)
        results.append([v.numpy() for v in net.variables])
    for a, b in zip(*results):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
    tf.keras.utils.set_random_seed(3)
    fresh = supernet.Supernet(FEW_OPS, cells=3, channels=4, conv_dtype="float32")
    fresh(batch[0][0])
    moved = sum(not np.allclose(a, v.numpy()) for a, v in zip(results[0], fresh.variables))
    assert moved > len(fresh.trainable_variables) // 2  # the steps did train


def test_supernet_reuses_given_quantised_kernels():
    """net(x, precomputed=net.precompute()) equals net(x), and gradients reach the latent
    kernels through the given signs (straight-through)."""
    tf.keras.utils.set_random_seed(4)
    net = supernet.Supernet(FEW_OPS, cells=3, channels=4, conv_dtype="float32")
    x = tf.random.stateless_normal([2, 16, 16, 3], seed=[4, 4])
    net(x)
    kernels = [k for cell in net.cells for k in cell.kernels]
    assert len(kernels) == 3 and kernels[0].shape == (3, 3, 4, 14 * 4)
    grads = []
    for given in (True, False):
        with tf.GradientTape() as tape:
            quantized = net.precompute() if given else None
            y = net(x, training=True, precomputed=quantized)
            loss = tf.reduce_sum(y * y)
        grads.append(tape.gradient(loss, kernels))
        if given:
            y_given = y
    assert np.allclose(y_given.numpy(), y.numpy(), atol=1e-6)
    # at another input size the given kernels' border terms do not fit: quantised anew
    x24 = tf.random.stateless_normal([2, 24, 24, 3], seed=[5, 5])
    assert np.allclose(net(x24, precomputed=net.precompute()).numpy(), net(x24).numpy(),
                       atol=1e-6)
    for a, b in zip(*grads):
        assert a is not None and np.abs(a.numpy()).sum() > 0
        assert np.allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_diversity_regulariser_pushes_alphas_towards_uniform():
    """CE does not touch alpha_free: only the regulariser moves it."""
    entropies = {}
    for lam in (0.0, 1.0):
        model = _toy_model(reg_lambda=lam, a_lr=0.05, adam=True)
        net = model.net
        before = alpha_fns.row_entropy_np(net.alpha_free.numpy()).mean()
        start = net.alpha_free.numpy()
        for _ in range(20):
            model.train_step(_batches())
        entropies[lam] = alpha_fns.row_entropy_np(net.alpha_free.numpy()).mean()
        if lam == 0.0:
            assert np.array_equal(net.alpha_free.numpy(), start)
    assert entropies[1.0] > before + 0.05
    assert entropies[0.0] == pytest.approx(before)


def test_diversity_term_value_and_annealing():
    alphas = [tf.constant([[0.0, 0.0], [3.0, 0.0]]), tf.constant([[1.0, -1.0]])]
    rows = np.concatenate([alpha_fns.row_entropy_np(a.numpy()) for a in alphas])
    h = rows.mean()
    assert float(regularizers.diversity(alphas, 1.0, 7.7, 0.0)) == pytest.approx(-h, rel=1e-5)
    assert float(regularizers.diversity(alphas, 2.0, 7.7, 7.7)) == pytest.approx(
        -2 * h * np.exp(-1), rel=1e-5)
    assert regularizers.diversity_np([a.numpy() for a in alphas], 2.0, 7.7, 7.7) == \
        pytest.approx(-2 * h * np.exp(-1), rel=1e-5)
    assert float(regularizers.diversity(alphas, 0.0, 7.7, 0)) == 0.0


def test_second_order_step_matches_the_exact_unrolled_gradient():
    xi = 0.5
    model = _toy_model(order=2, w_lr=xi)
    net = model.net
    (xt, yt), (xv, yv) = _batches(3)
    w0, a0 = tf.constant(net.dense.kernel.numpy()), tf.constant(net.alpha.numpy())
    a = tf.Variable(a0)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(w0)
            train = _ce(net, xt, yt, kernel=w0, alpha=a)
        w_virtual = w0 - xi * inner.gradient(train, w0)
        val = _ce(net, xv, yv, kernel=w_virtual, alpha=a)
    exact = outer.gradient(val, a).numpy()
    with tf.GradientTape() as tape:
        tape.watch(a0)
        first_order = tape.gradient(_ce(net, xv, yv, kernel=w0, alpha=a0), a0).numpy()

    model.train_step(((xt, yt), (xv, yv)))
    step = a0.numpy() - net.alpha.numpy()
    assert np.allclose(step, exact, rtol=2e-3, atol=1e-5)
    assert not np.allclose(step, first_order, rtol=1e-2, atol=1e-4)


def test_mirrored_step_equals_single_device_step():
    """Two logical CPUs (subprocess: they must exist before TF starts). Gradients are
    summed across replicas before clipping, so both runs agree."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import bnas_tf, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import test_search as t
        results = []
        for strategy in (tf.distribute.get_strategy(),
                         tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
            with strategy.scope():
                model = t._toy_model(grad_clip=0.05)
            ds = tf.data.Dataset.from_tensors(t._batches()).repeat(2)
            model.fit(ds, epochs=1, verbose=0)
            results.append((strategy.num_replicas_in_sync, model.net.alpha.numpy(),
                            model.net.dense.kernel.numpy()))
        (n1, a1, w1), (n2, a2, w2) = results
        assert n2 == 2, n2
        assert np.allclose(a1, a2, atol=1e-5), (a1, a2)
        assert np.allclose(w1, w2, atol=1e-5)
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------- supernet

def test_supernet_structure_and_variables():
    net = supernet.Supernet(FEW_OPS, cells=3, channels=4, num_classes=10)
    logits = net(tf.zeros([2, 16, 16, 3]), training=False)
    assert logits.shape == (2, 10)
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert net.alpha_normal.shape == (14, 3) and net.alpha_reduce.shape == (14, 3)
    arch = {v.ref() for v in net.arch_variables}
    assert len(arch) == 2 and arch <= {v.ref() for v in net.trainable_variables}
    # BNAS template: reduction cells get the float residual, normal cells after cell 0
    # the identity skip; cell 0 nothing. DARTS template: no skips at all.
    assert net.cells[1].residual_conv is not None and net.cells[2].residual_conv is not None
    assert net.cells[0].residual_conv is None and not net.cells[0].identity_skip
    plain = supernet.Supernet(FEW_OPS, cells=4, channels=4, template="darts")
    plain(tf.zeros([1, 16, 16, 3]))
    assert all(c.residual_conv is None and not c.identity_skip for c in plain.cells)
    skip = supernet.Supernet(FEW_OPS, cells=4, channels=4)
    skip(tf.zeros([1, 16, 16, 3]))
    assert [c.identity_skip for c in skip.cells] == [False, False, False, True]


@pytest.mark.parametrize("ops_, cells, stem, size", [(ops.BNAS_OPS, 4, "auto", 15),
                                                     (FEW_OPS, 3, "auto", 15),
                                                     (FEW_OPS, 3, "imagenet", 60)])
def test_supernet_built_from_its_input_shape_equals_one_built_by_a_call(ops_, cells, stem,
                                                                        size):
    """`build_from_shape` (no forward pass) creates the variables a first call creates
    (names, shapes), and with the same values the two nets compute the same logits
    and the same quantised kernels (the cells' build size is right), with either stem."""
    x = tf.random.stateless_normal([2, size, size, 3], seed=[4, 2])
    by_call = supernet.Supernet(ops_, cells=cells, channels=4, conv_dtype="float32",
                                stem=stem)
    by_call(tf.zeros([1, size, size, 3]), training=False)
    by_shape = supernet.Supernet(ops_, cells=cells, channels=4, conv_dtype="float32",
                                 stem=stem)
    assert by_shape.build_from_shape([1, size, size, 3]) is True and by_shape.built
    names = [(v.name, tuple(v.shape)) for v in by_call.variables]
    assert sorted(names) == sorted((v.name, tuple(v.shape)) for v in by_shape.variables)
    values = {v.name: v.numpy() for v in by_call.variables}
    for v in by_shape.variables:
        v.assign(values[v.name])
    assert np.allclose(by_call(x, training=True).numpy(), by_shape(x, training=True).numpy(),
                       atol=1e-5)
    assert len(by_shape.variables) == len(names)  # the call created nothing more


def test_supernet_stem_follows_the_image_size_like_the_final_network():
    """'auto' picks DARTS' ImageNet stem from 128 pixels (1/8 resolution into the
    first cell, which reduces s0 as after a reduction), the CIFAR stem below; the
    search config's ``stem`` setting overrides it; a bad stem is a one-line error."""
    def build(size, **settings):
        config = SearchConfig.create(cells=3, channels=4, ops=FEW_OPS, **settings).validate()
        return bnas_method.build_supernet(config, 10, size, EngineConfig().resolve())

    big, small = build(128), build(32)
    assert (big.stem_kind, small.stem_kind) == ("imagenet", "cifar")
    assert build(32, stem="imagenet").stem_kind == "imagenet"
    assert build(128, stem="cifar").stem_kind == "cifar"
    assert big.stem(tf.zeros([1, 128, 128, 3]))[1].shape[1:3] == (16, 16)
    assert isinstance(big.cells[0].pre0, bnas_cell.FactorizedReduce)
    assert isinstance(small.cells[0].pre0, bnas_cell.ReLUConvBN)
    assert bnas_method.derive(big, SearchConfig.create(cells=3, channels=4, ops=FEW_OPS)).normal
    with pytest.raises(ValueError, match="unknown BNAS stem 'cifar10'; choose one of auto, cifar"):
        build(32, stem="cifar10")
    with pytest.raises(ValueError, match="unknown bnas search settings: stems"):
        SearchConfig.create(ops=FEW_OPS, stems="cifar")


def test_supernet_with_per_edge_layers_is_built_by_a_call():
    """Ops with their own per-edge layers (separable convs) are built by the first
    call: `build_from_shape` declines and creates nothing; bilevel's build_net then
    falls back to a call."""
    net = supernet.Supernet(("none", "bin_sep_conv_3x3"), cells=2, channels=4)
    assert net.build_from_shape([1, 8, 8, 3]) is False
    assert not net.built and len(net.variables) == 2  # the alphas, made in __init__
    bilevel.BilevelModel(net).build_net(8)
    assert net.built and len(net.variables) > 2


# ----------------------------------------------------------------------------- config & CLI

def test_config_and_ops_errors():
    assert parse_ops("bnas,sep") == ops.BNAS_OPS + ops.SEP_OPS
    assert "bin_dil_conv_3x3" not in parse_ops("bnas,-bin_dil_conv_3x3,-bin_dil_conv_5x5")
    with pytest.raises(ValueError, match="unknown op 'bin_conv_7x7'"):
        parse_ops("bnas,bin_conv_7x7")
    with pytest.raises(ValueError, match="unknown op"):
        SearchConfig.create(ops=("none", "conv_9x9")).validate()
    with pytest.raises(ValueError, match="BNAS gamma must be > 0"):
        SearchConfig.create(gamma=0.0).validate()
    with pytest.raises(ValueError, match="BNAS cells must be an integer >= 2"):
        SearchConfig.create(cells=1).validate()
    with pytest.raises(ValueError, match="order"):
        SearchConfig.create(order=3).validate()
    with pytest.raises(ValueError, match="unknown bnas search settings: num_samples"):
        SearchConfig.create(ops=FEW_OPS, num_samples=5)
    for cfg in (SearchConfig.create(ops=FEW_OPS, gamma=2.0),
                SearchConfig.create("bars", base_channels="8,16", warmup_epochs=2)):
        assert SearchConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_flags_give_method_defaults_then_command_line_values():
    sys.path.insert(0, str(REPO))
    from absl.testing import flagsaver

    from flags import data as _data_flags  # noqa: F401  (--batch_size, --seed)
    from flags import search as search_flags

    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--method=bnas", "--gamma=2",
                            "--ops=bnas,-bin_conv_5x5", "--batch_size=32", "--epochs=3"])
        cfg = search_flags.search_config_from_flags()
        assert search_flags.engine_from_flags() == EngineConfig()
    assert (cfg.method, cfg.settings.gamma, cfg.batch_size, cfg.epochs) == ("bnas", 2.0, 32, 3)
    assert "bin_conv_5x5" not in cfg.ops and cfg.settings.cells == 8
    assert cfg.w_lr == SearchConfig().w_lr
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--method=bars", "--flops_budget=10",
                            "--base_channels=8,16", "--w_lr=0.001"])
        cfg = search_flags.search_config_from_flags()
    assert cfg.method == "bars" and cfg.w_lr == 0.001
    assert cfg.ops == ops.BARS_OPS  # the BARS method's own default, not the BNAS set
    assert cfg.settings.flops_budget == 10.0 and cfg.settings.base_channels == (8, 16)
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--method=bars", "--width_choices=0.5,x"])
        with pytest.raises(ValueError, match="width_choices"):
            search_flags.search_config_from_flags()
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--conv_dtype=float32",
                            "--cell_implementation=reference"])
        engine = search_flags.engine_from_flags()
    assert engine == EngineConfig(cell="reference", conv_dtype="float32")
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--method=bars", "--conv_dtype=bfloat16",
                            "--cell_implementation=reference"])
        engine = search_flags.engine_from_flags()  # BARS has both cells too
    assert engine == EngineConfig(cell="reference", conv_dtype="bfloat16")
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", "--method=bars", "--recompute_stages=1"])
        assert search_flags.engine_from_flags() == EngineConfig(recompute_stages=1)
    with flagsaver.flagsaver():  # BARS' fused cell only: refused for BNAS in one line
        search_flags.FLAGS(["search.py", "--method=bnas", "--recompute_stages=1"])
        with pytest.raises(ValueError, match="^--recompute_stages applies to --method=bars "
                                             "only, not --method=bnas$"):
            search_flags.engine_from_flags()


@pytest.mark.parametrize("method,flag", [("bars", "--cells=5"), ("bars", "--channels=8"),
                                         ("bars", "--gamma=2"), ("bars", "--stem=cifar"),
                                         ("bnas", "--num_samples=4"),
                                         ("bnas", "--base_channels=8,16,32"),
                                         ("bnas", "--flops_budget=5")])
def test_a_flag_the_method_does_not_read_is_refused_in_one_line(method, flag):
    """tools/search.py --method=bars --cells=5 used to ignore --cells silently."""
    sys.path.insert(0, str(REPO))
    from absl.testing import flagsaver

    from flags import search as search_flags

    name = flag[2:].split("=")[0]
    other = "bnas" if method == "bars" else "bars"
    with flagsaver.flagsaver():
        search_flags.FLAGS(["search.py", f"--method={method}", flag])
        with pytest.raises(ValueError, match=f"^--{name} applies to --method={other} only, "
                                             f"not --method={method}$"):
            search_flags.search_config_from_flags()


@pytest.mark.parametrize("method", ["bars", "bnas"])
@pytest.mark.parametrize("epochs,warmup", [(1, 5), (3, 3)])
def test_a_search_whose_warmup_covers_every_epoch_is_refused(method, epochs, warmup):
    """With warm-up >= epochs no alpha is ever updated: such a search would present a
    genotype of untouched alphas as its result."""
    with pytest.raises(ValueError, match=f"{method.upper()} warmup_epochs={warmup} >= "
                                         f"epochs={epochs}"):
        SearchConfig.create(method, epochs=epochs, warmup_epochs=warmup).validate()
    SearchConfig.create(method, epochs=warmup + 1, warmup_epochs=warmup).validate()


def test_warmup_epochs_is_one_flag_for_both_methods_with_their_defaults():
    sys.path.insert(0, str(REPO))
    from absl.testing import flagsaver

    from flags import search as search_flags

    assert search_flags.FIELDS["warmup_epochs"] == ("bnas+bars", "warmup_epochs")
    assert "bnas: 0; bars: 5" in search_flags.FLAGS["warmup_epochs"].help
    for method in ("bnas", "bars"):
        with flagsaver.flagsaver():
            search_flags.FLAGS(["search.py", f"--method={method}", "--warmup_epochs=2",
                                "--epochs=3"])
            assert search_flags.search_config_from_flags().settings.warmup_epochs == 2
    assert SearchConfig.create("bnas").settings.warmup_epochs == 0  # as in the paper


def test_bnas_warmup_freezes_the_alphas_then_updates_them():
    """on_epoch_begin turns the alpha step off during the warm-up epochs only."""
    from bnas_tf.search.bnas import method
    config = SearchConfig.create("bnas", ops=FEW_OPS, cells=3, channels=4, epochs=4,
                                 warmup_epochs=2).validate()
    net = method.build_supernet(config, 10, 16, EngineConfig().resolve())
    assert [method.on_epoch_begin(net, e) for e in range(4)] == [False, False, True, True]
    paper = method.build_supernet(SearchConfig.create("bnas", ops=FEW_OPS, cells=3, channels=4),
                                  10, 16, EngineConfig().resolve())
    assert method.on_epoch_begin(paper, 0)


def test_net_defined_arch_loss_replaces_the_additive_one():
    """A net's arch_loss(ce, reg, epoch) (BARS' multiplicative budget) owns the alpha loss."""
    steps = []
    for scale in (None, 3.0):
        model = _toy_model()
        if scale is not None:
            model.net.arch_loss = lambda ce, reg, epoch, s=scale: s * ce
        a0 = model.net.alpha.numpy()
        model.train_step(_batches())
        steps.append(a0 - model.net.alpha.numpy())
    assert np.allclose(steps[1], 3.0 * steps[0], rtol=1e-5, atol=1e-7)


def _run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tools" / "search.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_cli_rejects_bad_input_in_one_line(tmp_path, cifar_dir):
    base = ["--dataset=folder", f"--data_dir={cifar_dir}", f"--output_dir={tmp_path / 'o'}"]
    # (gamma <= 0 and cells < 2 take the same path: SearchConfig.validate, tested above.)
    for flag, message in (("--ops=bnas,bin_conv_9x9", "unknown op 'bin_conv_9x9'"),
                          ("--max_examples=20", "larger than the search_train split")):
        out = _run_cli(*base, flag, "--batch_size=16")
        assert out.returncode != 0
        lines = [l for l in out.stderr.splitlines() if message in l]
        assert lines, (flag, out.stderr[-2000:])
        assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- full runs

def _small(cifar_dir, epochs=2, **kw):
    cfg = SearchConfig.create(cells=3, channels=4, epochs=epochs, batch_size=16, ops=FEW_OPS,
                              **kw)
    dc = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=128,
                         image_size=16)
    return dc, cfg


def _tb_scalars(log_dir, tag):
    """The values of one TensorBoard scalar, by step (last write wins)."""
    values = {}
    for path in sorted(log_dir.glob("events.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == tag:
                    value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
                    values[event.step] = float(value)
    return [values[k] for k in sorted(values)]


def _ckpt_alphas(directory):
    reader = tf.train.load_checkpoint(os.path.join(directory, "ckpt"))
    keys = sorted(k for k in reader.get_variable_to_shape_map()
                  if "net/alpha_" in k and "OPTIMIZER" not in k)
    assert len(keys) == 2, keys
    return [reader.get_tensor(k) for k in keys]


@pytest.fixture(scope="module")
def interrupted_search(tmp_path_factory, cifar_dir):
    """A 2-epoch search run through the CLI, stopped after epoch 1."""
    out = tmp_path_factory.mktemp("search") / "run"
    args = ["--method=bnas", "--dataset=folder", f"--data_dir={cifar_dir}",
            "--max_examples=128", "--image_size=16", "--batch_size=16", "--epochs=2",
            "--cells=3", "--channels=4", f"--ops={','.join(FEW_OPS)}", "--progress=epoch",
            f"--output_dir={out}"]
    first = _run_cli(*args, "--stop_after=1")
    assert first.returncode == 0, first.stderr[-3000:]
    return out, args, first


def test_one_epoch_search_writes_a_trainable_genotype(interrupted_search):
    out, _, first = interrupted_search
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["epochs_done"] == 1
    path = out / "genotype.json"
    genotype = genotypes.load(str(path))
    assert isinstance(genotype, genotypes.BnasGenotype)
    assert set(genotype.ops_used()) <= set(FEW_OPS)
    # Epochs count from 1 everywhere: progress, summary, genotype files.
    assert "Epoch 1/2" in first.stdout and "Epoch 2/2" not in first.stdout
    assert genotypes.load(str(out / "genotypes" / "epoch_001.json")) == genotype
    assert json.loads((out / "search_summary.json").read_text())["best_epoch"] == 1
    summary = json.loads((out / "search_summary.json").read_text())
    entry = summary["epochs"][0]
    assert entry["learnable_ops"] == runner.learnable_ops(genotype)
    for key in ("val_accuracy", "val_loss", "loss", "alpha_entropy", "diversity_term"):
        assert np.isfinite(entry[key]), key
    spec = models.presets.resolve(genotype=str(path), cells=3, channels=4)
    model = models.build(spec, 10, 32)
    assert model.output_shape == (None, 10)
    # TensorBoard: Keras scalars plus the search logs (scalars, heatmaps, genotype text).
    tags = set()
    for event_file in (out / "logs" / "search").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert {"alpha_entropy", "alphas/normal", "alphas/reduce", "genotype"} <= tags
    assert list((out / "logs" / "train").glob("events.*"))


def test_different_run_in_the_same_directory_is_refused(interrupted_search, cifar_dir):
    out, _, _ = interrupted_search
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    dc, cfg = _small(cifar_dir, gamma=2.0)
    with pytest.raises(runner.SearchDirError, match="different search.*gamma"):
        runner.run_search("bnas", dc, cfg, str(out))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_resumed_search_matches_an_uninterrupted_one(interrupted_search, cifar_dir,
                                                     tmp_path, capfd):
    out, _, _ = interrupted_search
    dc, cfg = _small(cifar_dir)  # the same settings as the CLI run
    resumed = runner.run_search("bnas", dc, cfg, str(out), verbose=0)
    assert "resuming" in capfd.readouterr().err
    straight = tmp_path / "straight"
    summary = runner.run_search("bnas", dc, cfg, str(straight), verbose=0)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    for a, b in zip(_ckpt_alphas(out), _ckpt_alphas(straight)):
        assert np.allclose(a, b, atol=1e-6)
    assert resumed["epochs"][1]["val_loss"] == pytest.approx(summary["epochs"][1]["val_loss"],
                                                             rel=1e-5)
    assert resumed["epochs"][1]["genotype"] == summary["epochs"][1]["genotype"]
    assert (out / "genotypes" / "epoch_002.json").exists()
    best = summary["best_epoch"]
    assert best in (1, 2)
    assert genotypes.load(str(straight / "genotype.json")) == \
        genotypes.load(str(straight / "genotypes" / f"epoch_{best:03d}.json"))
    # The learning rate each epoch USED (issue 14, item 4): summary, TensorBoard w_lr
    # (logs/search) and epoch_learning_rate (logs/train), in the resumed run too.
    used = [cfg.w_lr_min + (cfg.w_lr - cfg.w_lr_min) * 0.5 * (1 + math.cos(math.pi * e / 2))
            for e in range(2)]
    for run in (summary, resumed):
        assert [e["w_lr"] for e in run["epochs"]] == pytest.approx(used, rel=1e-5)
        assert [e["learning_rate"] for e in run["epochs"]] == pytest.approx(used, rel=1e-5)
    for run_dir in (straight, out):
        assert _tb_scalars(run_dir / "logs" / "search", "w_lr") == pytest.approx(used, rel=1e-5)
        assert _tb_scalars(run_dir / "logs" / "train", "epoch_learning_rate") == \
            pytest.approx(used, rel=1e-5)
    # A finished search reruns as a no-op.
    again = runner.run_search("bnas", dc, cfg, str(out), verbose=0)
    assert again["epochs"] == resumed["epochs"]


def test_finished_search_extends_to_more_epochs(interrupted_search, cifar_dir, capfd):
    out, _, _ = interrupted_search
    dc, cfg = _small(cifar_dir)
    runner.run_search("bnas", dc, cfg, str(out), verbose=0)  # finish the 2 epochs
    capfd.readouterr()
    _, longer = _small(cifar_dir, epochs=3)
    extended = runner.run_search("bnas", dc, longer, str(out), verbose=2)
    captured = capfd.readouterr()
    assert "Epoch 3/3" in captured.out and "Epoch 2/3" not in captured.out
    assert "recomputed for 3 epochs" in captured.err
    assert [e["epoch"] for e in extended["epochs"]] == [1, 2, 3]
    assert (out / "genotypes" / "epoch_003.json").exists()
    assert json.loads((out / "search_config.json").read_text())["search"]["epochs"] == 3
    with pytest.raises(runner.SearchDirError, match="3 epochs done"):
        runner.run_search("bnas", dc, cfg, str(out), verbose=0)


def test_a_summary_counted_from_0_by_the_previous_version_resumes_counted_from_1(tmp_path,
                                                                                 cifar_dir):
    """The previous version wrote search_summary.json epochs (and best_epoch) from 0: a
    resumed directory of it continues counting from 1, without a gap or a repeat."""
    dc, cfg = _small(cifar_dir)
    out = tmp_path / "old"
    runner.run_search("bnas", dc, cfg, str(out), stop_after=1, verbose=0)
    path = out / "search_summary.json"
    old = json.loads(path.read_text())
    for entry in old["epochs"]:
        entry["epoch"] -= 1
    old["best_epoch"] -= 1
    path.write_text(json.dumps(old))
    resumed = runner.run_search("bnas", dc, cfg, str(out), verbose=0)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_search_runs_under_mirrored_strategy(tmp_path, cifar_dir):
    """A 1-epoch supernet search on 2 logical CPUs (MirroredStrategy, subprocess)."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import bnas_tf, json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from bnas_tf import data
        from bnas_tf.search import SearchConfig, runner
        cfg = SearchConfig.create(cells=3, channels=4, epochs=1, batch_size=16, ops={FEW_OPS!r},
                           strategy="mirrored")
        dc = data.DataConfig(dataset="folder", data_dir={str(cifar_dir)!r}, max_examples=128,
                             image_size=16)
        summary = runner.run_search("bnas", dc, cfg, {str(tmp_path / 'm')!r}, verbose=0)
        print(json.dumps(summary["epochs"][0]["val_accuracy"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 0.0 <= float(out.stdout.strip().splitlines()[-1]) <= 1.0
    assert genotypes.load(str(tmp_path / "m" / "genotype.json"))


# A search_config.json written by the previous version (flat BNAS settings, `extra`).
OLD_SEARCH = {"a_beta1": 0.5, "a_beta2": 0.999, "a_lr": 0.0003, "a_wd": 0.001, "batch_size": 16,
              "binarization": "xnor", "cell_template": "bnas", "cells": 3, "channels": 4,
              "derive": "bnas", "diversity_lambda": 1.0, "diversity_tau": 7.7, "epochs": 2,
              "eval_batches": None, "extra": {"conv_dtype": "auto"}, "gamma": 1.0,
              "grad_clip": 5.0, "method": "bnas", "ops": list(FEW_OPS), "order": 1, "seed": 0,
              "strategy": "default", "w_lr": 0.025, "w_lr_min": 0.001, "w_momentum": 0.9,
              "w_wd": 0.0003}


def test_a_search_directory_of_the_previous_version_is_recognised(tmp_path, cifar_dir):
    """Its identity, upgraded, equals this run's (so it resumes: the checkpoint's
    variable names are unchanged); with other settings it is refused in one line."""
    from bnas_tf.search import search_dir

    dc, cfg = _small(cifar_dir)
    dc = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=128,
                         image_size=16, batch_size=16, seed=0)
    identity = search_dir.run_identity(dc, cfg, EngineConfig())
    (tmp_path / "search_config.json").write_text(json.dumps(
        {"data": identity["data"], "search": OLD_SEARCH}))
    assert search_dir.check_output_dir(str(tmp_path), identity) is False
    assert search_dir.read_config(str(tmp_path)) == cfg
    other = search_dir.run_identity(dc, SearchConfig.create(
        cells=3, channels=4, epochs=2, batch_size=16, ops=FEW_OPS, gamma=2.0), EngineConfig())
    with pytest.raises(runner.SearchDirError,
                       match=r"differs in search\.bnas\.gamma: \S+ recorded vs 2\.0 given\)"):
        search_dir.check_output_dir(str(tmp_path), other)


# ----------------------------------------------------------------------------- divergence

def test_diverged_search_exits_nonzero_with_one_line_and_no_genotype(tmp_path, cifar_dir):
    """--w_lr=1e38 used to log NaN losses in every epoch, exit 0 and write genotype.json."""
    out = tmp_path / "diverged"
    result = _run_cli("--method=bnas", "--dataset=folder", f"--data_dir={cifar_dir}",
                      "--max_examples=64", "--image_size=16", "--batch_size=16", "--epochs=2",
                      "--cells=3", "--channels=4", f"--ops={','.join(FEW_OPS)}",
                      "--w_lr=1e38", "--progress=none", f"--output_dir={out}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"search\.py: search diverged in epoch 1/2: \S+ is NaN/Inf; .*", last), \
        result.stderr[-2000:]
    assert not (out / "genotype.json").exists()
    assert not list((out / "genotypes").glob("*.json"))
    assert tf.train.latest_checkpoint(str(out / "ckpt")) is None


def test_divergence_keeps_the_last_good_epoch_and_dead_cells_are_flagged(tmp_path, cifar_dir,
                                                                        capfd):
    """Epoch 1 derives with gamma 1e-9 (Zeroise wins every edge: the cells ignore their
    inputs, flagged in the log, summary and genotype files); epoch 1's alphas turn NaN:
    the run stops naming the epoch, keeping epoch 0's checkpoint, summary and genotype."""
    def poison(net, epoch):
        if epoch == 1:
            net.alpha_normal.assign(tf.fill(net.alpha_normal.shape, float("nan")))
        return bnas_method.on_epoch_begin(net, epoch)
    method = types.SimpleNamespace(**{k: getattr(bnas_method, k) for k in (
        "build_supernet", "build_model", "derive", "epoch_logs")}, on_epoch_begin=poison)
    dc, cfg = _small(cifar_dir, epochs=3, gamma=1e-9)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"diverged in epoch 2/3: .*NaN/Inf.*epochs 1\.\.1"):
        runner.run_search(method, dc, cfg, str(out), verbose=0)
    assert "WARNING: epoch 1: the derived normal and reduce cell does not depend on its " \
           "inputs" in capfd.readouterr().err
    assert tf.train.latest_checkpoint(str(out / "ckpt")).endswith("ckpt-1")
    summary = json.loads((out / "search_summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [1]
    assert summary["warning"].startswith("genotype.json: the derived normal and reduce cell")
    saved = json.loads((out / "genotype.json").read_text())
    assert saved["epoch"] == 1 and "does not depend on its inputs" in saved["warning"]
    assert genotypes.disconnected_cells(genotypes.load(str(out / "genotype.json")))
    assert sorted(p.name for p in (out / "genotypes").iterdir()) == ["epoch_001.json"]


def test_mirrored_search_with_a_validation_remainder_finishes(tmp_path, cifar_dir):
    """2 logical CPUs; the search_val split leaves 1 image in its last batch (less than
    one per replica): used to crash in oneDNN's conv, now padded with weight-0 rows."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import bnas_tf, json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from bnas_tf import data
        from bnas_tf.search import SearchConfig, runner
        for cap in range(20, 60):
            dc = data.DataConfig(dataset="folder", data_dir={str(cifar_dir)!r},
                                 max_examples=cap, image_size=16)
            n_val = data.num_examples(dc, "search_val")
            if n_val % 4 == 1:
                break
        cfg = SearchConfig.create(cells=3, channels=4, epochs=1, batch_size=4,
                                  ops={FEW_OPS!r}, strategy="mirrored")
        summary = runner.run_search("bnas", dc, cfg, {str(tmp_path / 'm')!r}, verbose=0)
        print("RESULT " + json.dumps({{"n_val": n_val,
                                      "val_accuracy": summary["epochs"][0]["val_accuracy"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["n_val"] % 4 == 1
    correct = result["val_accuracy"] * result["n_val"]  # each image counted exactly once
    assert correct == pytest.approx(round(correct), abs=1e-4)
    assert genotypes.load(str(tmp_path / "m" / "genotype.json"))


def test_the_best_epoch_is_never_a_warmup_epoch():
    """A warm-up epoch's genotype is read from alphas no step has updated: it must
    not become genotype.json however well its weights validated."""
    from bnas_tf.search import runner
    entries = [{"epoch": 1, "val_accuracy": 0.9, "alphas_updated": False},
               {"epoch": 2, "val_accuracy": 0.5, "alphas_updated": True},
               {"epoch": 3, "val_accuracy": 0.4, "alphas_updated": True}]
    assert runner._best(entries)["epoch"] == 2
    assert runner._best(entries[:1]) is None
    assert runner._best([{"epoch": 1, "val_accuracy": 0.3}])["epoch"] == 1  # older summaries
