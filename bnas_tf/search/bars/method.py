"""The BARS search method (`bnas_tf.search.SearchMethod`): what `runner.run_search`
calls for ``--method=bars``. Settings: `bnas_tf.search.BarsSettings` (their defaults
and BARS' optimiser defaults, App. A, are written there once)."""
from __future__ import annotations

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary
from bnas_tf.search import bilevel
from bnas_tf.search.bars import costs
from bnas_tf.search.bars.derive import derive_candidates
from bnas_tf.search.bars.supernet import BarsSupernet


def search_binarization(config):
    """BARS binarises with one tensor-wide weight scale: the generic default 'xnor'
    means binary.BARS here (any other scheme is honoured)."""
    scheme = binary.scheme(config.binarization or "bars")
    return binary.BARS if scheme == binary.XNOR else scheme


def build_supernet(config, num_classes, image_size, engine):
    """The BARS supernet of a SearchConfig; `engine` (a resolved engine.EngineConfig,
    default: the fused cell in float32) picks the cell, its conv dtype and the stages
    whose cells recompute their forward pass in the backward pass."""
    s = config.settings
    cell, conv_dtype, recompute = ("fused", "float32", 0) if engine is None else (
        engine.cell, engine.conv_dtype, engine.recompute_stages)
    net = BarsSupernet(num_classes, image_size, base_channels=s.base_channels,
                       width_choices=s.width_choices, max_depth=s.max_depth,
                       op_names=config.ops, downsample=s.downsample,
                       op_shortcut=s.op_shortcut, binarization=search_binarization(config),
                       seed=config.seed, cell=cell, conv_dtype=conv_dtype,
                       recompute_stages=recompute)
    net.flops_budget = s.flops_budget
    net.budget_theta = (s.budget_theta_above, s.budget_theta_below)
    net.entropy_schedule = (s.entropy_start, s.entropy_step)
    net.temperature_schedule = (s.temperature, s.temperature_decay, s.warmup_epochs)
    net.temperature.assign(s.temperature)
    net.entropy_coef.assign(s.entropy_start)
    return net


def make_optimizers(config, steps_per_epoch):
    """BARS: Adam for the weights (lr w_lr, per-epoch cosine to w_lr_min) and Adam for
    the alphas (a_lr, betas a_beta1/a_beta2); decay is applied by the BilevelModel."""
    w_opt = tf.keras.optimizers.legacy.Adam(
        bilevel.cosine_schedule(config.w_lr, config.w_lr_min, config.epochs,
                                steps_per_epoch), name="w_adam")
    a_opt = tf.keras.optimizers.legacy.Adam(config.a_lr, beta_1=config.a_beta1,
                                            beta_2=config.a_beta2, name="a_adam")
    return w_opt, a_opt


def build_model(net, config, steps_per_epoch, image_size, engine):
    """The bilevel model with BARS' optimisers (the alpha loss is the net's). The cost
    tables are counted after the supernet's variables exist: counting builds
    throwaway layers (cached per process), which would otherwise draw from the seeded
    random state before the weights do, only in a process's first search, and make
    two searches of one process start from different weights."""
    model = bilevel.build(net, config, steps_per_epoch, image_size, engine,
                          optimizers=make_optimizers(config, steps_per_epoch))
    net.cost_tables()
    return model


def on_epoch_begin(net, epoch):
    """Temperature 1.0 * 0.9^epoch; lambda_ent = -0.01 + 0.001 * epoch; alphas frozen
    during the warm-up epochs (returns whether they are updated)."""
    start, step = net.entropy_schedule
    initial, decay, warmup = net.temperature_schedule
    net.temperature.assign(costs.temperature(epoch, initial, decay))
    net.entropy_coef.assign(costs.entropy_coefficient(epoch, start, step))
    net.epoch_seen = int(epoch)
    return epoch >= warmup


def derive(net, config, val_batches):
    """Sample `num_samples` architectures from softmax(alpha), keep the one with the
    lowest validation loss (BARS Sec. 5.1)."""
    genotype, _ = derive_candidates(net, config.settings.num_samples, val_batches,
                                    seed=[int(config.seed), int(net.epoch_seen)],
                                    derive_batches=config.settings.derive_batches)
    return genotype


def epoch_logs(net, epoch):
    """TensorBoard scalars: width/depth/op probabilities, temperature, lambda_ent,
    alpha entropy and the expected costs (millions, per image)."""
    probs = net.probabilities()
    expected = {k: float(v.numpy()) / costs.MEGA for k, v in net.expected_costs().items()}
    logs = {"bars/temperature": float(net.temperature.numpy()),
            "bars/entropy_coefficient": float(net.entropy_coef.numpy()),
            "bars/alpha_entropy": float(net.entropy().numpy()),
            "bars/expected_mflops": expected["flops"],
            "bars/expected_mbiops": expected["biops"],
            "bars/expected_equivalent_mops": expected["equivalent_ops"],
            "bars/flops_budget_mops": float(net.flops_budget)}
    for i, (p_w, p_d) in enumerate(zip(probs["width"], probs["depth"])):
        for r, p in zip(net.width_choices, p_w):
            logs[f"bars/stage{i}/width_{r:g}"] = float(p)
        logs[f"bars/stage{i}/expected_width"] = float(np.dot(p_w, net.width_choices))
        for d, p in enumerate(p_d):
            logs[f"bars/stage{i}/depth_{d}"] = float(p)
        logs[f"bars/stage{i}/expected_depth"] = float(np.dot(p_d, np.arange(len(p_d))))
    all_ops = np.concatenate(list(probs["ops"]) + [probs["reduce"]], axis=0)
    for name, p in zip(net.op_names, all_ops.mean(axis=0)):
        logs[f"bars/op_{name}"] = float(p)
    return logs
