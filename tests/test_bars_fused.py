"""The fused BARS cell (search/bars/fused.py) computes what the reference cell
(search/bars/cell.py, the specification) computes: outputs, alpha gradients, weight
gradients and BatchNorm moving statistics, with the same Gumbel noise, in float32
and (within bfloat16 rounding) in bfloat16; it holds the same variables."""
import bnas_tf  # noqa: F401
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnas_tf.search import SearchConfig
from bnas_tf.search.bars import fused as bars_fused
from bnas_tf.search.bars import method as bars_method
from bnas_tf.search.bars import supernet as bars_supernet
from bnas_tf.search.engine import EngineConfig

SIZE = 8


def make(cell, conv_dtype="float32", **kwargs):
    settings = dict(base_channels=(8, 12), max_depth=1, width_choices=(0.5, 1.0), seed=3)
    settings.update(kwargs)
    tf.keras.utils.set_random_seed(0)
    net = bars_supernet.BarsSupernet(10, SIZE, cell=cell, conv_dtype=conv_dtype, **settings)
    net(tf.zeros([2, SIZE, SIZE, 3]), training=False)
    return net


def pair(conv_dtype="float32", **kwargs):
    """A reference and a fused net with the same variables. The binary kernels are
    +-0.5 (weight scale 0.5): with dyadic width weights every binary conv sum is then
    exact in both nets, so ReLU ties (sums that are 0, computed as +-1e-8 by one
    rounding and -1e-8 by another) cannot make their gradients differ."""
    ref, fast = make("reference", **kwargs), make("fused", conv_dtype, **kwargs)
    assert [v.name for v in ref.variables] == [v.name for v in fast.variables]
    rng = np.random.default_rng(1)
    for v in ref.trainable_variables:
        if "stage" in v.name and v.name.endswith("kernel:0"):
            v.assign(np.where(rng.normal(size=v.shape) > 0, 0.5, -0.5).astype(np.float32))
    fast.set_weights(ref.get_weights())
    return ref, fast


def decisions(net):
    """Soft decision weights (as Gumbel-softmax samples are), dyadic widths."""
    rng = np.random.default_rng(2)

    def soft(shape):
        return tf.nn.softmax(tf.constant(rng.normal(size=shape), tf.float32))
    stages = len(net.base_channels)
    return {"ops": [soft(a.shape) for a in net.alpha_ops], "reduce": soft(net.alpha_reduce.shape),
            "width": tf.constant([[0.75, 0.25], [0.5, 0.5]][:stages], tf.float32),
            "depth": soft(net.alpha_depth.shape)}


def step(net, x, y, weights):
    """Logits, CE gradients w.r.t. the decision weights (the alphas' gradients are these
    through the shared softmax code) and the weights, BN moving statistics, after one
    training-mode forward pass (traced for the fused cell)."""
    arch = {v.ref() for v in net.arch_variables}
    variables = [v for v in net.trainable_variables if v.ref() not in arch]

    def run(flat):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            logits = net.forward(x, tf.nest.pack_sequence_as(weights, flat), training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        return logits, tape.gradient(loss, flat + variables)
    if net.cell_kind == "fused":  # traced, as in the search's steps (graph-only paths)
        run = tf.function(run)
    flat = tf.nest.flatten(weights)
    logits, grads = run(flat)
    stats = [v.numpy() for v in net.non_trainable_variables if "moving" in v.name]
    return (logits.numpy(), [g.numpy() for g in grads[:len(flat)]],
            [None if g is None else tf.convert_to_tensor(g).numpy()
             for g in grads[len(flat):]], stats)


def batch():
    x = tf.random.stateless_normal([4, SIZE, SIZE, 3], [5, 6])
    return x, tf.constant([1, 2, 3, 4])


def close(got, want, rtol, atol, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"{what} {i}"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what} {i}")


def same_step(ref, fast, x, y, weights):
    """Assert the fused net's `step` equals the reference's (float32); return it."""
    want, got = step(ref, x, y, weights), step(fast, x, y, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    # (the sums after the convs round differently: 1e-2 of each tensor's largest value)
    for what, g_got, g_want in (("decision-weight", got[1], want[1]),
                                ("weight", got[2], want[2])):
        for a, b in zip(g_got, g_want):
            scale = np.abs(b).max() if b is not None else 0.0
            close([a], [b], 1e-2, 1e-2 * scale, f"{what} gradient")
    close(got[3], want[3], 1e-5, 1e-5, "moving statistic")
    return got


def test_fused_cell_equals_the_reference_float32():
    ref, fast = pair()
    x, y = batch()
    weights = decisions(ref)
    got = same_step(ref, fast, x, y, weights)
    assert all(np.abs(g).sum() > 0 for g in got[1])  # every decision gets a gradient


def cosine(a, b):
    a, b = np.concatenate([g.ravel() for g in a]), np.concatenate([g.ravel() for g in b])
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_fused_cell_equals_the_reference_bfloat16():
    """bfloat16 operands (+-1 signs, kernels sign(W) * mask) with float32 accumulation,
    results rounded to 8 significant bits: equal within that rounding."""
    ref, fast = pair("bfloat16")
    x, y = batch()
    weights = decisions(ref)
    want, got = step(ref, x, y, weights), step(fast, x, y, weights)
    np.testing.assert_allclose(got[0], want[0], atol=0.02 * np.abs(want[0]).max())
    assert cosine(got[1], want[1]) > 0.99
    assert cosine(got[2], want[2]) > 0.99
    close(got[3], want[3], 1e-2, 1e-2, "moving statistic")


def test_fused_net_samples_the_same_gumbel_noise():
    """The whole step's way in: net(x, training=True) draws the same Gumbel samples
    from the same generator state and gives the same logits."""
    ref, fast = pair()
    for net in (ref, fast):
        net.rng.reset_from_seed(7)
    x, _ = batch()
    np.testing.assert_allclose(fast(x, training=True).numpy(), ref(x, training=True).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_fused_cell_with_one_hot_widths_computes_the_narrow_network():
    """At a one-hot narrow width the fused cell's dead channels stay zero (the mask on
    the conv input keeps sign(0) = +1 of dead channels out, the node masks on the
    factors keep the sums' dead channels 0)."""
    _, fast = pair()
    arch = bars_supernet.Architecture(ops=((0,) * 10, (0,) * 10), reduce=(1,) * 10,
                                      widths=(0, 0), depths=(1, 1))
    weights = fast.onehot_weights(arch)
    masks = fast.channel_masks(weights["width"])
    x = fast.stem(batch()[0]) * masks[0]
    out, _ = fast.run_stage(0, x, weights, masks, training=True)
    out = out.numpy()
    assert np.all(out[..., 4:] == 0) and np.abs(out[..., :4]).sum() > 0


def test_engine_switch_picks_the_cell_and_refuses_unknown_ones():
    config = SearchConfig.create("bars", base_channels=[4], max_depth=0,
                                 width_choices=[1.0])
    for cell, kind in (("fused", bars_fused.FusedSearchCell),
                       ("reference", bars_supernet.SearchCell)):
        net = bars_method.build_supernet(config, 10, SIZE, EngineConfig(cell=cell).resolve())
        assert type(net.stage_cells[0][0]) is kind and net.cell_kind == cell
    net = bars_method.build_supernet(config, 10, SIZE,
                                     EngineConfig(conv_dtype="bfloat16").resolve())
    assert net.conv_dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown cell 'other'"):
        bars_supernet.BarsSupernet(10, SIZE, base_channels=(4,), cell="other")
    with pytest.raises(ValueError, match="float32 or bfloat16, not 'auto'"):
        bars_supernet.BarsSupernet(10, SIZE, base_channels=(4,), conv_dtype="auto")


def test_precomputed_kernels_give_the_same_step():
    """The kernels quantised once per bilevel step (`BarsSupernet.precompute`, shared by
    the alpha and the weight pass) give the logits and gradients of kernels
    quantised inside the pass."""
    _, fast = pair()
    x, y = batch()
    weights = decisions(fast)
    arch = {v.ref() for v in fast.arch_variables}
    variables = [v for v in fast.trainable_variables if v.ref() not in arch]
    results = []
    for share in (False, True):
        with tf.GradientTape() as tape:
            pre = fast.precompute() if share else None
            logits = fast.forward(x, weights, training=True, precomputed=pre)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        results.append([logits] + tape.gradient(loss, variables))
    assert len(fast.precompute()) == len(fast.reduce_cells) + sum(map(len, fast.stage_cells))
    for a, b in zip(*results):
        if a is not None or b is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                       tf.convert_to_tensor(b).numpy(), rtol=1e-5, atol=1e-6)
    assert make("reference").precompute() is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sign_mask_cast_equals_larq_sign_shift_mask_and_its_gradients(dtype):
    """`fused.sign_mask_cast` (one custom gradient keeping two boolean tensors) computes
    what the reference chain computes: larq's SteSign (sign(0) = +1, gradient clipped
    at |h| <= 1), the -1 padding shift, the width mask rounded to `dtype`; the same
    gradients for h and the mask, at the sign's and the clip's edge cases."""
    h = tf.constant(np.array([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 0.3, -0.7] * 6,
                             np.float32).reshape([2, 2, 3, 4]))
    mask = tf.constant([1.0, 0.3, 0.0, 0.7])
    g = tf.constant(np.random.default_rng(0).normal(size=[2, 2, 3, 4]).astype(np.float32))

    def reference(h, mask):
        low = tf.cast(lq.quantizers.SteSign()(h) - 1.0, dtype)
        return tf.cast(low * tf.cast(mask, dtype), tf.float32)

    def fused(h, mask):
        return tf.cast(bars_fused.sign_mask_cast(h, mask, 1.0, dtype), tf.float32)
    results = []
    for fn in (reference, fused):
        with tf.GradientTape() as tape:
            tape.watch([h, mask])
            y = fn(h, mask)
            loss = tf.reduce_sum(y * g)
        results.append([y] + tape.gradient(loss, [h, mask]))
    np.testing.assert_array_equal(results[1][0].numpy(), results[0][0].numpy())
    # the gradients: exact in float32; in bfloat16 the reference rounds the mask
    # before its product with g, the fused gradient after (8 significant bits)
    tol = 1e-6 if dtype == "float32" else 2 ** -7
    for want, got in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol)
    d_h = results[1][1].numpy()
    assert np.all(d_h[np.abs(h.numpy()) > 1] == 0) and np.abs(d_h).sum() > 0


def test_reduction_downsamples_run_grouped_and_equal_the_reference():
    """The reduction cell's 'improved' downsamples (the shortcut op of its stride-2
    edges and the cell's skip) run grouped (`fused.grouped_downsample`: halves as
    grouped convs, interleaved once), with the reference's outputs and gradients when
    they carry most of the reduction cell's op weight."""
    ref, fast = pair()
    cell = fast.reduce_cells[0]
    assert (1, "downsample") in cell._groups(0)[1] and cell._skip_fusable()
    x, y = batch()
    weights = decisions(ref)
    weights["reduce"] = tf.nn.softmax(tf.math.log(weights["reduce"]) + [0.0, 3.0, 0.0])
    same_step(ref, fast, x, y, weights)


def bilevel_passes(net, x, y, weights):
    """As `bilevel.BilevelModel.train_step` (first order): kernels precomputed on the
    weight tape, an alpha pass differentiating only the decision weights, then a
    weight pass differentiating only the weights; traced (tf.function). Returns
    logits, decision-weight gradients, weight gradients, BN moving statistics and
    the traced graph."""
    arch = {v.ref() for v in net.arch_variables}
    variables = [v for v in net.trainable_variables if v.ref() not in arch]
    structure, flat = weights, tf.nest.flatten(weights)

    def ce(logits):
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True))

    @tf.function
    def passes(flat):
        weights = tf.nest.pack_sequence_as(structure, flat)
        weight_tape = tf.GradientTape(watch_accessed_variables=False)
        with weight_tape:
            weight_tape.watch(variables)
            pre = net.precompute()
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(flat)
            logits = net.forward(x, tf.nest.pack_sequence_as(weights, flat), training=True,
                                 precomputed=pre)
            loss = ce(logits)
        d_weights = tape.gradient(loss, flat)
        with weight_tape:
            loss = ce(net.forward(x, weights, training=True, precomputed=pre))
        return logits, d_weights, weight_tape.gradient(loss, variables)
    logits, d_weights, d_variables = passes(flat)
    stats = [v.numpy() for v in net.non_trainable_variables if "moving" in v.name]
    return (logits.numpy(), [g.numpy() for g in d_weights],
            [None if g is None else tf.convert_to_tensor(g).numpy() for g in d_variables],
            stats, passes.get_concrete_function(flat).graph)


@pytest.mark.parametrize("conv_dtype", [  # bfloat16 differs only in the dtype: slow
    "float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_recomputed_cells_give_the_same_step_and_moving_statistics(conv_dtype):
    """Cells recomputing their forward pass in the backward pass (`recompute.py`,
    ``recompute_stages``) give the logits, decision-weight and weight gradients of
    cells keeping their activations, in the alpha and the weight pass, and the BNs'
    moving statistics end as without recomputation (updated once per pass, not
    again by the recomputed pass)."""
    _, fast = pair(conv_dtype, max_depth=0)  # a normal cell per stage, a reduction cell
    again = make("fused", conv_dtype, recompute_stages=2, max_depth=0)
    again.set_weights(fast.get_weights())
    assert all(cell.recompute for cell in again.reduce_cells + again.stage_cells[1])
    x, y = batch()
    weights = decisions(fast)
    want, got = bilevel_passes(fast, x, y, weights), bilevel_passes(again, x, y, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    close(got[1], want[1], 1e-5, 1e-6, "decision-weight gradient")
    close(got[2], want[2], 1e-5, 1e-6, "weight gradient")
    close(got[3], want[3], 0, 0, "moving statistic")
    assert all(np.abs(g).sum() > 0 for g in got[1])

    def count(graph, kind):
        return sum(op.type == kind for op in graph.get_operations())
    # the recomputed passes ran: one more batch norm per BN of the cells, per pass
    assert count(got[4], "FusedBatchNormV3") > count(want[4], "FusedBatchNormV3")


def test_recompute_stages_is_checked():
    with pytest.raises(ValueError, match="recompute_stages must be in 0..2, got 3"):
        make("fused", recompute_stages=3)
    with pytest.raises(ValueError, match="needs the fused cell"):
        make("reference", recompute_stages=1)
    assert not any(c.recompute for c in make("fused", recompute_stages=0).stage_cells[0])


def test_fused_cells_add_no_pass_through_copies_or_dead_zeros_to_the_graph():
    """The fused cell's custom gradients (`recompute.tape_gradient`: masked signs, op
    weights, batch norms) are single tape operations: a traced forward and backward
    pass has as many IdentityN pass-through copies and unused zeros (graph nodes
    traced, then pruned) per cell as the kernels' quantisation adds (larq's
    straight-through sign, a tf.custom_gradient: one per cell), not one per op."""
    def waste(max_depth):
        net = make("fused", max_depth=max_depth)
        x, y = batch()
        weights = decisions(net)
        graph = bilevel_passes(net, x, y, weights)[4]
        ops = graph.get_operations()
        return (sum(op.type == "IdentityN" for op in ops),
                sum(op.type in ("Const", "Fill") and op.name.startswith("zeros")
                    and not op.outputs[0].consumers() for op in ops))
    shallow, deep = waste(0), waste(1)  # deep: one more normal cell in each of 2 stages
    assert deep[0] - shallow[0] <= 2 and deep[1] - shallow[1] <= 2, (shallow, deep)


def test_per_channel_gradients_of_the_fused_cells_are_single_ops():
    """The alpha pass's gradients of the fused cells' per-channel factors (the masks of
    the masked signs, the identity terms' op weights and masks, the skip's mask) are
    each one batch-norm gradient op (`_scale_and_sums`, `channel_product`), not a
    product and a batch-and-pixel reduction: a traced alpha and weight pass reduces no
    batch of activations per cell. (One more normal cell in each of the 2 stages adds
    only the depth decision's scalar product per stage, in the supernet.)"""
    def reductions(max_depth):
        net = make("fused", max_depth=max_depth)
        x, y = batch()
        graph = bilevel_passes(net, x, y, decisions(net))[4]
        return sum(op.type == "Sum" and op.inputs[0].shape.rank == 4
                   and op.inputs[0].shape[0] == x.shape[0]  # activations, not kernels
                   for op in graph.get_operations())
    shallow, deep = reductions(0), reductions(1)
    assert deep - shallow <= 2, (shallow, deep)


@pytest.mark.parametrize("watched", [True, False])
def test_channel_product_equals_the_product_and_its_gradients(watched):
    """`fused.channel_product` is x * factor; its gradients equal the product's (the
    factor's gradient when a tape differentiates it: one op)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=[2, 3, 3, 4]).astype(np.float32))
    factor = tf.constant([0.5, 0.0, 1.0, 0.25])
    g = tf.constant(rng.normal(size=[2, 3, 3, 4]).astype(np.float32))
    results = []
    for fn in (lambda a, b: a * b, bars_fused.channel_product):
        with tf.GradientTape() as tape:
            tape.watch([x, factor] if watched else [x])
            y = fn(x, factor)
        results.append([y] + tape.gradient(y, [x, factor] if watched else [x],
                                           output_gradients=g))
    for want, got in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
