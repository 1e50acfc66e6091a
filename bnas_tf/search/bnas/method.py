"""The BNAS search method (`bnas_tf.search.SearchMethod`): what `runner.run_search`
calls for ``--method=bnas``. Settings: `bnas_tf.search.BnasSettings`."""
from __future__ import annotations

import bnas_tf  # noqa: F401

from bnas_tf.search import alphas, bilevel
from bnas_tf.search.bnas import derive as derive_lib
from bnas_tf.search.bnas import regularizers
from bnas_tf.search.bnas.cell import NODES
from bnas_tf.search.bnas.supernet import Supernet


def build_supernet(config, num_classes, image_size, engine):
    """The BNAS supernet of a SearchConfig and a resolved engine.EngineConfig (its cell
    implementation and conv dtype; ValueError for its BARS-only recompute_stages)."""
    s = config.settings
    engine.check_for(config)
    net = Supernet(config.ops, s.cells, s.channels, num_classes, template=s.cell_template,
                   binarization=config.binarization, diversity_lambda=s.diversity_lambda,
                   diversity_tau=s.diversity_tau, cell=engine.cell,
                   conv_dtype=engine.conv_dtype, stem=s.stem, image_size=image_size)
    net.warmup_epochs = s.warmup_epochs
    return net


def build_model(net, config, steps_per_epoch, image_size, engine):
    """DARTS' optimisers (SGD with cosine lr for the weights, Adam for the alphas)."""
    return bilevel.build(net, config, steps_per_epoch, image_size, engine)


def on_epoch_begin(net, epoch):
    """BNAS has no per-epoch schedule besides the regulariser's (driven by the epoch):
    the alphas are updated from the first epoch after the warm-up (none by default,
    as in the paper). Returns whether they are updated in `epoch` (0-based)."""
    return epoch >= getattr(net, "warmup_epochs", 0)


def derive(net, config, val_batches=None):
    """The BNAS genotype of the current alphas (Eq. 4 with the settings' gamma)."""
    del val_batches
    s = config.settings
    alpha_normal, alpha_reduce = net.alpha_arrays()
    return derive_lib.derive_bnas(alpha_normal, alpha_reduce, net.op_names, gamma=s.gamma,
                                  mode=s.derive, template=s.cell_template)


def epoch_logs(net, epoch):
    """Alpha entropies, the diversity term, and op-probability heatmaps per cell."""
    from bnas_tf import plot  # matplotlib only when logging

    arrays = net.alpha_arrays()
    h_normal = float(alphas.row_entropy_np(arrays[0]).mean())
    h_reduce = float(alphas.row_entropy_np(arrays[1]).mean())
    logs = {"alpha_entropy": (h_normal + h_reduce) / 2,
            "alpha_entropy_normal": h_normal, "alpha_entropy_reduce": h_reduce,
            "diversity_term": regularizers.diversity_np(arrays, net.diversity_lambda,
                                                        net.diversity_tau, epoch)}
    labels = derive_lib.edge_labels(NODES)
    for kind, alpha in zip(("normal", "reduce"), arrays):
        logs[f"alphas/{kind}"] = plot.alpha_heatmap(
            alphas.softmax_np(alpha), labels, net.op_names,
            title=f"{kind} cell, epoch {epoch}")
    return logs
