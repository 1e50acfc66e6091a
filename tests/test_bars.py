"""BARS: final networks, supernet width/depth mechanics, expected FLOPs, budget loss,
schedules and derivation by sampling (tiny sizes)."""
import math

import bnas_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf import binary, costs, genotypes, models, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.search import SearchConfig
from bnas_tf.search.bars import cell as bars_cell
from bnas_tf.search.bars import costs as budget
from bnas_tf.search.bars import derive as bars_derive
from bnas_tf.search.bars import method as bars_method
from bnas_tf.search.bars import supernet as bars_supernet

BASE = (8, 16)
SIZE = 16


@pytest.fixture(scope="module")
def net():
    net = bars_supernet.BarsSupernet(10, SIZE, base_channels=BASE, max_depth=2)
    net(tf.zeros([1, SIZE, SIZE, 3]), training=False)
    net.cost_tables()
    return net


def images(n=4, seed=0):
    return tf.random.stateless_normal([n, SIZE, SIZE, 3], [seed, 1])


def set_alphas(net, arch, big=50.0):
    """Make softmax(alpha) (numerically) one-hot at `arch`."""
    w = net.onehot_weights(arch)
    for var, hot in zip(net.alpha_ops, w["ops"]):
        var.assign(hot * big)
    net.alpha_reduce.assign(w["reduce"] * big)
    net.alpha_width.assign(w["width"] * big)
    net.alpha_depth.assign(w["depth"] * big)


def reset_alphas(net):
    for var in net.arch_variables:
        var.assign(tf.zeros_like(var))


# ------------------------------------------------------------------ final network
def test_width_channels_are_even_and_follow_the_ratio():
    assert [bars_models.width_channels(r, 48) for r in bars_models.WIDTH_CHOICES] == \
        [12, 24, 36, 48]
    assert bars_models.width_channels(0.25, 4) == 2
    assert all(bars_models.width_channels(r, 10) % 2 == 0 for r in (0.25, 0.5, 0.75, 1.0))


def test_live_edges_skip_none_and_dead_ends():
    cell = ["none"] * 10
    edges = genotypes.dense_edges()
    cell[edges.index((0, 1))] = "bin_conv_3x3"   # 0 -> 1, but 1 never reaches 4
    cell[edges.index((2, 4))] = "shortcut"       # 2 is never reached from 0
    cell[edges.index((0, 4))] = "bin_conv_3x3"
    assert bars_models.live_edges(cell) == (edges.index((0, 4)),)
    assert bars_models.live_edges(["none"] * 10) == ()


def test_final_network_layout_and_only_stem_and_classifier_float():
    g = bars_models.random_genotype(1, base_channels=(4, 8, 16), max_depth=1)
    model = models.build({"family": "bars", "genotype": g.to_dict()}, 10, 16)
    assert model(tf.zeros([2, 16, 16, 3])).shape == (2, 10)
    names = [layer.name for layer in model.layers]
    for i, stage in enumerate(g.stages):
        assert sum(n.startswith(f"stage{i}_cell") for n in names) == 1 + stage.depth
        cell = model.get_layer(f"stage{i}_cell0")
        assert cell.channels == bars_models.width_channels(stage.width, g.base_channels[i])
    assert sum(n.endswith("_reduce") for n in names) == 2
    floats = [m for m in model.submodules
              if isinstance(m, tf.keras.layers.Conv2D) and not costs.is_binary_layer(m)]
    assert [m.name for m in floats] == ["stem_conv"]
    assert [m.name for m in model.submodules if isinstance(m, tf.keras.layers.Dense)] == \
        ["classifier"]
    assert costs.count(model).fully_binarized


def test_binarization_defaults_to_tensor_scale_and_spec_or_caller_overrides():
    g = bars_models.random_genotype(0, base_channels=(4, 8), max_depth=1)

    def kernel_quantizers(model):
        return {type(m.kernel_quantizer).__name__ for m in model.submodules
                if isinstance(m, tf.keras.layers.Conv2D) and hasattr(m, "kernel_quantizer")
                and m.kernel_quantizer is not None}
    spec = {"family": "bars", "genotype": g.to_dict()}
    assert kernel_quantizers(models.build(spec, 10, 16)) == {"TensorScaledSign"}
    assert kernel_quantizers(models.build({**spec, "binarization": "xnor"}, 10, 16)) == \
        {"MagnitudeAwareSign"}
    assert kernel_quantizers(models.build(spec, 10, 16, binarization="float")) == set()


def test_downsample_and_op_shortcut_ablations():
    g = bars_models.random_genotype(1, base_channels=(4, 8), max_depth=0)
    g = genotypes.BarsGenotype(stages=g.stages, reduce_cell=("bin_conv_3x3",) * 10,
                               base_channels=g.base_channels, max_depth=0)
    spec = {"family": "bars", "genotype": g.to_dict()}
    fp = models.build({**spec, "downsample": "float"}, 10, 16)
    assert not costs.count(fp).fully_binarized  # a float conv inside the backbone
    plain = models.build({**spec, "downsample": "plain"}, 10, 16).get_layer("stage1_reduce")
    assert plain.downsample.kind == "plain"
    off = models.build({**spec, "op_shortcut": False}, 10, 16).get_layer("stage1_reduce")
    convs = [layer for layer in off.edge_ops if isinstance(layer, binary.BinaryConv)]
    assert convs and not any(c.use_shortcut for c in convs)
    with pytest.raises(ValueError, match="downsample"):
        models.build({**spec, "downsample": "strided"}, 10, 16)


@pytest.mark.parametrize("c_in", [3, 4, 6])
def test_factorized_reduce_keeps_a_shortcut_for_any_width_pair(c_in):
    layer = bars_models.BarsDownsample(8, "improved", binary.BARS)
    x = tf.random.stateless_uniform([1, 8, 8, c_in], [c_in, 0], 0.5, 1.0)
    layer(x)
    for half in layer.halves:  # silence the convs: only the AvgPool shortcuts remain
        half.conv.kernel.assign(tf.zeros_like(half.conv.kernel))
    y = layer(x).numpy()
    pooled = tf.nn.avg_pool2d(x, 2, 2, "SAME").numpy()
    k = min(c_in, 4)
    np.testing.assert_allclose(y[..., :k], pooled[..., :k], rtol=1e-5)
    assert np.all(y[..., k:4] == 0)  # zero-padded when C_in < C_out / 2
    assert y.shape == (1, 4, 4, 8) and np.abs(y[..., 4:4 + k]).sum() > 0


# ------------------------------------------------------------------ supernet mechanics
def test_width_masks_zero_the_right_channels(net):
    for w, r in enumerate(net.width_choices):
        hot = tf.one_hot([w] * len(BASE), len(net.width_choices))
        for mask, base in zip(net.channel_masks(hot), BASE):
            keep = bars_models.width_channels(r, base)
            np.testing.assert_array_equal(mask.numpy(), [1.0] * keep + [0.0] * (base - keep))
    arch = bars_supernet.Architecture(ops=((0,) * 10, (1,) * 10), reduce=(0,) * 10, widths=(1, 2),
                             depths=(2, 1))
    weights = net.onehot_weights(arch)
    masks = net.channel_masks(weights["width"])
    x = net.stem(images()) * masks[0]
    out0, _ = net.run_stage(0, x, weights, masks, training=True)
    out1, _ = net.run_stage(1, out0, weights, masks, training=True)
    assert np.all(out0.numpy()[..., 4:] == 0) and np.abs(out0.numpy()[..., :4]).sum() > 0
    assert np.all(out1.numpy()[..., 12:] == 0) and np.abs(out1.numpy()[..., :12]).sum() > 0


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_masked_binary_conv_equals_the_narrow_conv(stride, dilation):
    """Masking the binarised, +1-padded input = a conv that only has the live channels,
    whatever the dead channels hold (sign(0) = +1 would otherwise leak them); at
    stride 2 and dilation 2 both read the strided grid with an undilated conv."""
    x = tf.random.stateless_normal([2, 8, 8, 8], [stride, 3 + dilation])
    mask = tf.constant([1.0] * 4 + [0.0] * 4)
    wide = bars_cell.MaskedBinaryConv(8, 3, stride, dilation, binarization=binary.BINARYNET,
                                 affine=False)
    narrow = binary.BinaryConv(8, 3, stride, dilation, binarization=binary.BINARYNET,
                               affine=False)
    picked = stride == dilation == 2
    assert wide.pick == (2 if picked else 1) and wide.subsample == 1
    assert wide.conv.dilation_rate == ((1, 1) if picked else (dilation, dilation))
    wide(x)
    narrow(x[..., :4])
    narrow.conv.kernel.assign(wide.conv.kernel[:, :, :4, :])
    got = wide(x, training=False, channel_mask=mask).numpy()
    np.testing.assert_allclose(got, narrow(x[..., :4], training=False).numpy(), atol=1e-5)
    leaky = wide(x * mask, training=False).numpy()  # unmasked conv on zeroed channels
    assert not np.allclose(leaky, got, atol=1e-3)


def test_depth_weights_sum_the_right_cell_outputs(net):
    weights = net.relaxed_weights()
    depth = tf.constant([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    weights["depth"] = depth
    masks = net.channel_masks(weights["width"])
    x = net.stem(images()) * masks[0]
    out, outs = net.run_stage(0, x, weights, masks, training=False)
    assert len(outs) == 3  # y0 = fixed cell, y1, y2 = optional cells
    expected = sum(float(depth[0, d]) * outs[d] for d in range(3))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    cells = net.stage_cells[0]
    y1 = cells[1](outs[0], weights["ops"][0], masks[0], masks[0], training=False)
    np.testing.assert_allclose(outs[1].numpy(), y1.numpy(), rtol=1e-5, atol=1e-6)


def test_gumbel_samples_are_distributions_that_sharpen_with_temperature(net):
    w = net.sampled_weights()
    for t in [*w["ops"], w["reduce"], w["width"], w["depth"]]:
        np.testing.assert_allclose(tf.reduce_sum(t, -1).numpy(), 1.0, rtol=1e-5)
    net.temperature.assign(0.01)
    try:
        assert float(tf.reduce_min(tf.reduce_max(net.sampled_weights()["width"], -1))) > 0.95
    finally:
        net.temperature.assign(1.0)


# ------------------------------------------------------------------ expected FLOPs
def test_expected_flops_differentiable_in_every_alpha_and_falls_with_width(net):
    reset_alphas(net)
    with tf.GradientTape() as tape:
        flops = net.expected_flops()
    grads = tape.gradient(flops, net.arch_variables)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    wide = float(flops)
    net.alpha_width.assign([[5.0, 0, 0, 0]] * len(BASE))   # favour 0.25
    narrow = float(net.expected_flops())
    net.alpha_width.assign([[0, 0, 0, 5.0]] * len(BASE))   # favour 1.0
    widest = float(net.expected_flops())
    net.alpha_width.assign(tf.zeros_like(net.alpha_width))
    net.alpha_depth.assign([[5.0, 0, 0]] * len(BASE))      # favour depth 0
    shallow = float(net.expected_flops())
    reset_alphas(net)
    assert narrow < wide < widest and shallow < wide


def test_expected_flops_at_one_hot_alpha_equals_the_final_network_costs(net):
    arch = bars_supernet.Architecture(ops=((0,) * 10, (0, 1) * 5), reduce=(0,) * 10, widths=(1, 3),
                             depths=(2, 1))
    set_alphas(net, arch)
    try:
        expected = {k: float(v) for k, v in net.expected_costs().items()}
    finally:
        reset_alphas(net)
    genotype = bars_derive.to_genotype(net, arch)
    counted = costs.count(models.build({"family": "bars", "genotype": genotype.to_dict()},
                                       10, SIZE))
    assert expected["flops"] == pytest.approx(counted.flops, rel=1e-4)
    assert expected["biops"] == pytest.approx(counted.biops, rel=1e-4)
    assert expected["equivalent_ops"] == pytest.approx(counted.equivalent_ops, rel=1e-4)


def test_budget_factor_follows_eq5():
    assert float(budget.budget_factor(200.0, 100.0)) == pytest.approx(2.0)
    assert float(budget.budget_factor(50.0, 100.0)) == pytest.approx(1.0)   # theta_below 0
    assert float(budget.budget_factor(50.0, 100.0, 1.0, 0.5)) == pytest.approx(math.sqrt(0.5))
    assert float(budget.budget_loss(3.0, 200.0, 100.0)) == pytest.approx(6.0)
    assert budget.budget_loss(3.0, 200.0, 0.0) == 3.0  # no budget: L0


def test_budget_loss_pushes_flops_down_when_above_budget(net):
    reset_alphas(net)
    start = float(net.expected_flops())
    net.flops_budget = 0.5 * start / budget.MEGA
    opt = tf.keras.optimizers.legacy.Adam(0.05)
    ce = tf.constant(2.3)
    try:
        for _ in range(5):
            with tf.GradientTape() as tape:
                loss = net.arch_loss(ce, net.arch_regularization(tf.constant(20.0)),
                                    tf.constant(20.0))  # lambda_ent = +0.01
            grads = tape.gradient(loss, net.arch_variables)
            opt.apply_gradients(zip(grads, net.arch_variables))
        end = float(net.expected_flops())
    finally:
        net.flops_budget = 0.0
        reset_alphas(net)
    assert end < 0.97 * start


# ------------------------------------------------------------------ schedules
def test_temperature_and_entropy_schedules_follow_the_paper(net):
    for e in (0, 1, 5, 20, 49):
        assert budget.temperature(e) == pytest.approx(0.9 ** e)
        assert budget.entropy_coefficient(e) == pytest.approx(-0.01 + 0.001 * e)
    net.temperature_schedule = (1.0, 0.9, 5)
    assert bars_method.on_epoch_begin(net, 3) is False
    assert float(net.temperature) == pytest.approx(0.9 ** 3)
    assert float(net.entropy_coef) == pytest.approx(-0.007)
    assert bars_method.on_epoch_begin(net, 5) is True
    bars_method.on_epoch_begin(net, 0)


def test_entropy_term_sign(net):
    """lambda < 0 (early): minimising the term raises the alpha entropy; lambda > 0 lowers it."""
    for epoch, direction in ((0.0, 1), (30.0, -1)):
        net.alpha_width.assign([[1.0, 0.5, 0.0, -0.5]] * len(BASE))
        before = float(net.entropy())
        with tf.GradientTape() as tape:
            term = net.arch_regularization(tf.constant(epoch))
        grads = tape.gradient(term, net.arch_variables)
        for var, g in zip(net.arch_variables, grads):
            var.assign_sub(50.0 * g)
        assert direction * (float(net.entropy()) - before) > 0
        reset_alphas(net)


# ------------------------------------------------------------------ derivation
def test_pick_lowest_loss():
    assert bars_derive.pick_lowest_loss(["a", "b", "c"], [0.7, 0.2, 0.5]) == ("b", 1)
    assert bars_derive.pick_lowest_loss(["a", "b"], [float("nan"), 3.0]) == ("b", 1)
    assert bars_derive.pick_lowest_loss(["a", "b"], [1.0, 1.0]) == ("a", 0)
    with pytest.raises(ValueError, match="one loss per candidate"):
        bars_derive.pick_lowest_loss(["a"], [])


def test_sampling_follows_alpha_and_derivation_picks_lowest_loss(net):
    arch = bars_supernet.Architecture(ops=((2,) * 10, (1,) * 10), reduce=(0,) * 10, widths=(0, 3),
                             depths=(1, 0))
    set_alphas(net, arch)
    try:
        sampled = bars_derive.sample_architectures(net, 3, np.random.default_rng(0))
        assert all(s == arch for s in sampled)  # confident alphas: always that point
    finally:
        reset_alphas(net)
    batches = [(images(4, s), tf.constant([0, 1, 2, 3])) for s in range(2)]
    best, scored = bars_derive.derive_candidates(net, 3, batches, seed=1)
    assert len(scored) == 3
    assert best == min(scored, key=lambda gl: gl[1])[0]
    assert isinstance(best, genotypes.BarsGenotype) and best.base_channels == BASE


def test_derivation_is_bounded_to_one_validation_pass_and_shows_progress(net, capsys):
    ds = tf.data.Dataset.from_tensor_slices((tf.concat([images(4, s) for s in range(8)], 0),
                                             tf.constant([0, 1, 2, 3] * 8))).batch(4)
    assert bars_derive.derive_batch_count(ds, 3) == 2  # 8 batches // 3 candidates
    assert bars_derive.derive_batch_count(ds, 16) == 1
    assert bars_derive.derive_batch_count(ds, 3, derive_batches=5) == 5
    assert bars_derive.derive_batch_count(ds.filter(lambda x, y: True), 4) == 2  # unknown size
    _, scored = bars_derive.derive_candidates(net, 3, ds, seed=1)
    out = capsys.readouterr().out
    assert "3 sampled architectures, each scored on 2 validation batches" in out
    assert "3/3" in out  # the progress bar over the candidates
    _, first_two = bars_derive.derive_candidates(net, 3, list(ds.take(2)), seed=1, progress=False)
    assert [loss for _, loss in scored] == pytest.approx([loss for _, loss in first_two])


def test_settings_parse_flag_strings_and_reject_bad_values():
    cfg = SearchConfig.create("bars", base_channels="8,16", width_choices="0.5,1",
                              op_shortcut=False, max_depth=2).validate()
    s = cfg.settings
    assert s.base_channels == (8, 16) and s.width_choices == (0.5, 1.0)
    assert s.op_shortcut is False and s.num_samples == 8
    for bad, match in (({"downsample": "x"}, "downsample"), ({"width_choices": "0,1"}, "width"),
                       ({"num_samples": 0}, "num_samples"), ({"temperature": 0}, "temperature"),
                       ({"base_channels": "a"}, "base"), ({"max_depth": 1.5}, "max_depth"),
                       ({"op_shortcut": "false"}, "op_shortcut")):
        with pytest.raises(ValueError, match=match):
            SearchConfig.create("bars", **bad).validate()
    with pytest.raises(ValueError, match="unknown bars search settings: budget"):
        SearchConfig.create("bars", budget=1)
    cfg = SearchConfig.create("bars")
    assert cfg.method == "bars" and cfg.ops == ops.BARS_OPS and cfg.w_wd == 0.0
    assert cfg.settings.warmup_epochs == 5 and cfg.settings.num_samples == 8


def test_logits_keep_their_scale_at_initialisation():
    """Op, cell and stage shortcuts add up; the float BN before the classifier keeps the
    initial cross-entropy near log(10) instead of ~10 (logit std ~9 without it)."""
    genotype = bars_models.random_genotype(seed=1, base_channels=(8, 16, 32))
    model = models.build({"family": "bars", "genotype": genotype.to_dict()}, 10, 32)
    logits = model(tf.random.stateless_normal((16, 32, 32, 3), seed=(1, 2)), training=True)
    assert float(tf.math.reduce_std(logits)) < 3.0
