"""The BARS supernet (BARS Sec. 4, App. A; docs/bars.md): the macro (width, depth) +
micro (dense cell) search space as one network.

A float stem, 3 stages, a float classifier. Stage i = 1 fixed normal cell +
`max_depth` optional normal cells (depth d uses the first d of them); its output is
the Gumbel-softmax weighted sum of [y0 = fixed cell output, y1, ..., y_max_depth]
(Eq. 4). A reduction cell sits between stages: 3 * (1 + 3) + 2 = 14 cells by
default. Every feature map of stage i is multiplied by the relaxed width mask
(Eq. 3; `cell.py`). One op alpha per stage, one shared by the reduction cells;
every decision (ops, widths, depths) is Gumbel-softmax sampled (Eq. 6) at
temperature ``net.temperature``. The alpha loss is the FLOPs-budget loss (Eq. 5)
plus the entropy term (Eq. 7): `arch_loss`.
"""
from __future__ import annotations

import dataclasses
import types

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import bars as bars_models
from bnas_tf.models import common
from bnas_tf.search import alphas, bilevel, engine
from bnas_tf.search.bars import costs
from bnas_tf.search.bars.cell import SearchCell
from bnas_tf.search.bars.fused import FusedSearchCell

CELLS = {"fused": FusedSearchCell, "reference": SearchCell}  # the names of engine.CELLS

WIDTH_CHOICES = bars_models.WIDTH_CHOICES


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One discrete point of the search space, as choice indices."""

    ops: tuple       # per stage: one op index per dense edge
    reduce: tuple    # one op index per dense edge of the reduction cells
    widths: tuple    # per stage: index into width_choices
    depths: tuple    # per stage: depth 0..max_depth


class BarsSupernet(bilevel.SupernetBase):
    """The BARS supernet (see the module docstring). `arch_variables`: one op alpha
    per stage ([edges, ops]), `alpha_reduce`, `alpha_width` [stages, widths],
    `alpha_depth` [stages, max_depth + 1].

    `cell`: 'fused' (default, `fused.FusedSearchCell`: the same variables and
    function, computed faster) or 'reference' (`cell.SearchCell`, the specification);
    `conv_dtype`: the fused cell's 'float32' or 'bfloat16' ('auto' is resolved by
    `engine.EngineConfig`); `recompute_stages`: the fused cells of that many leading
    stages recompute their forward pass in the backward pass (`recompute.py`: less
    memory, one more forward pass of those cells; tools/search.py --recompute_stages)."""

    def __init__(self, num_classes, image_size, base_channels=(48, 96, 192),
                 width_choices=WIDTH_CHOICES, max_depth=3, op_names=ops.BARS_OPS,
                 downsample="improved", op_shortcut=True, binarization=binary.BARS,
                 stem="auto", seed=0, cell="fused", conv_dtype="float32",
                 recompute_stages=0, name="bars_supernet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.base_channels = tuple(int(c) for c in base_channels)
        self.width_choices = tuple(float(w) for w in width_choices)
        self.max_depth = int(max_depth)
        self.op_names = ops.check_ops(op_names)
        self.downsample, self.op_shortcut = downsample, bool(op_shortcut)
        self.binarization = binary.scheme(binarization)
        self.stem_kind = common.resolve_stem(stem, image_size)
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        self.cell_kind = cell
        self.conv_dtype = conv_dtype if cell == "fused" else "float32"
        make_cell = CELLS[cell]
        fused = {"conv_dtype": self.conv_dtype} if cell == "fused" else {}
        self.op_config = ops.OpConfig(binarization=self.binarization, affine=False,
                                      op_shortcut=self.op_shortcut)
        n_stages, n_edges = len(self.base_channels), len(genotypes.dense_edges())
        # Width masks M_w (rows) and the kept fraction of channels of each choice.
        self.widths_channels = [[bars_models.width_channels(r, c) for r in self.width_choices]
                                for c in self.base_channels]
        self.width_masks = [tf.constant([[1.0] * k + [0.0] * (c - k) for k in row], tf.float32)
                            for row, c in zip(self.widths_channels, self.base_channels)]
        self.ratios = np.array([[k / c for k in row] for row, c in
                                zip(self.widths_channels, self.base_channels)], np.float64)

        self.stem = self._make_stem()
        self.reduce_cells, self.stage_cells = [], []
        for i, c in enumerate(self.base_channels):
            if i > 0:
                self.reduce_cells.append(make_cell(self.op_names, c, True, downsample,
                                                   self.op_config, name=f"stage{i}_reduce",
                                                   **fused))
            self.stage_cells.append([make_cell(self.op_names, c, False, downsample,
                                               self.op_config, name=f"stage{i}_cell{k}",
                                               **fused)
                                     for k in range(1 + self.max_depth)])
        self.recompute_stages = self._set_recompute(recompute_stages)
        self.head_bn = common.batchnorm("classifier_bn")  # as the final network (models/bars.py)
        self.pool = tf.keras.layers.GlobalAveragePooling2D(name="classifier_pool")
        self.fc = tf.keras.layers.Dense(self.num_classes, name="classifier")

        zeros = tf.keras.initializers.Zeros()
        self.alpha_ops = [self.add_weight(name=f"alpha_stage{i}", shape=(n_edges, len(op_names)),
                                          initializer=zeros, trainable=True)
                          for i in range(n_stages)]
        self.alpha_reduce = self.add_weight(name="alpha_reduce", shape=(n_edges, len(op_names)),
                                            initializer=zeros, trainable=True)
        self.alpha_width = self.add_weight(name="alpha_width",
                                           shape=(n_stages, len(self.width_choices)),
                                           initializer=zeros, trainable=True)
        self.alpha_depth = self.add_weight(name="alpha_depth",
                                           shape=(n_stages, self.max_depth + 1),
                                           initializer=zeros, trainable=True)
        self.temperature = self.add_weight(name="temperature", shape=(),
                                           initializer=tf.keras.initializers.Constant(1.0),
                                           trainable=False)
        self.entropy_coef = self.add_weight(name="entropy_coefficient", shape=(),
                                            initializer=tf.keras.initializers.Constant(-0.01),
                                            trainable=False)
        self.rng = tf.random.Generator.from_seed(int(seed))
        # Filled by the method hooks (plain python: not part of the graph).
        self.flops_budget = 0.0
        self.budget_theta = (1.0, 0.0)
        self.entropy_schedule = (-0.01, 0.001)
        self.temperature_schedule = (1.0, 0.9, 5)  # initial, decay, warm-up epochs
        self.epoch_seen = 0
        self._cache = types.SimpleNamespace(cost_tables=None, eval_fn=None)  # not tracked

    # ------------------------------------------------------------------ structure
    def _make_stem(self):
        inputs = tf.keras.Input((self.image_size, self.image_size, 3))
        if self.stem_kind == "cifar":
            out = common.cifar_stem(inputs, self.base_channels[0])
        else:
            _, out = common.imagenet_stem(inputs, self.base_channels[0])
        return tf.keras.Model(inputs, out, name="stem")

    def _set_recompute(self, stages):
        """Marks the cells of the first `stages` stages (and the reduction cells
        before them) for recomputation in the backward pass (`recompute.py`)."""
        stages = engine.check_recompute(stages, "bars", self.cell_kind,
                                        len(self.base_channels))
        cells = ([c for s in self.stage_cells[:stages] for c in s]
                 + self.reduce_cells[:max(stages - 1, 0)])
        for cell in cells:
            cell.recompute = True
        return stages

    @property
    def stem_stride(self):
        return 1 if self.stem_kind == "cifar" else 8

    @property
    def arch_variables(self):
        return list(self.alpha_ops) + [self.alpha_reduce, self.alpha_width, self.alpha_depth]

    # ------------------------------------------------------------------ arch weights
    def _gumbel_softmax(self, logits):
        u = self.rng.uniform(tf.shape(logits), minval=1e-10, maxval=1.0)
        gumbel = -tf.math.log(-tf.math.log(u))
        return tf.nn.softmax((logits + gumbel) / self.temperature, axis=-1)

    def sampled_weights(self):
        """Gumbel-softmax relaxed decisions (one sample per forward pass)."""
        return {"ops": [self._gumbel_softmax(a) for a in self.alpha_ops],
                "reduce": self._gumbel_softmax(self.alpha_reduce),
                "width": self._gumbel_softmax(self.alpha_width),
                "depth": self._gumbel_softmax(self.alpha_depth)}

    def relaxed_weights(self):
        """The noise-free relaxation softmax(alpha / temperature) (evaluation)."""
        def soft(a):
            return tf.nn.softmax(a / self.temperature, axis=-1)
        return {"ops": [soft(a) for a in self.alpha_ops], "reduce": soft(self.alpha_reduce),
                "width": soft(self.alpha_width), "depth": soft(self.alpha_depth)}

    def onehot_weights(self, arch: Architecture):
        """Decision weights of one discrete architecture."""
        n_ops = len(self.op_names)

        def hot(indices, depth):
            return tf.one_hot(list(indices), depth, dtype=tf.float32)
        return {"ops": [hot(o, n_ops) for o in arch.ops], "reduce": hot(arch.reduce, n_ops),
                "width": hot(arch.widths, len(self.width_choices)),
                "depth": hot(arch.depths, self.max_depth + 1)}

    def probabilities(self):
        """softmax(alpha) of every decision, as numpy arrays."""
        return {"ops": [tf.nn.softmax(a).numpy() for a in self.alpha_ops],
                "reduce": tf.nn.softmax(self.alpha_reduce).numpy(),
                "width": tf.nn.softmax(self.alpha_width).numpy(),
                "depth": tf.nn.softmax(self.alpha_depth).numpy()}

    # ------------------------------------------------------------------ forward
    def channel_masks(self, width_weights):
        """Per stage: sum_w m_w M_w, a [C_i] vector."""
        return [tf.linalg.matvec(mask, width_weights[i], transpose_a=True)
                for i, mask in enumerate(self.width_masks)]

    @tf.autograph.experimental.do_not_convert
    def forward(self, inputs, arch_weights, training=None, precomputed=None):
        masks = self.channel_masks(arch_weights["width"])
        x = self.stem(inputs, training=training) * masks[0]
        for i in range(len(self.stage_cells)):
            x, _ = self.run_stage(i, x, arch_weights, masks, training=training,
                                  precomputed=precomputed)
        x = self.head_bn(x, training=training) * masks[-1]
        return self.fc(self.pool(x))

    def run_stage(self, i, x, arch_weights, masks, training=None, precomputed=None):
        """Stage i on `x` (the previous stage's output): (output, [y0, y1, ...]) with
        output = sum_d m_d * y_d over the depth decision (BARS Eq. 4)."""
        def extra(cell):
            part = precomputed.get(cell.name) if precomputed else None
            return {} if part is None else {"precomputed": part}
        if i > 0:
            cell = self.reduce_cells[i - 1]
            x = cell(x, arch_weights["reduce"], masks[i - 1], masks[i], training=training,
                     **extra(cell))
        outs = []
        for cell in self.stage_cells[i]:
            x = cell(x, arch_weights["ops"][i], masks[i], masks[i], training=training,
                     **extra(cell))
            outs.append(x)
        depth_w = arch_weights["depth"][i]
        return tf.add_n([depth_w[d] * y for d, y in enumerate(outs)]), outs

    def precompute(self):
        """The fused cells' quantised kernels (`FusedSearchCell.precompute`) by cell
        name: computed once per bilevel step and shared by its two passes (the weights
        do not change in between; `bilevel.BilevelModel.train_step`). None for the
        reference cell."""
        if self.cell_kind != "fused":
            return None
        parts = {cell.name: cell.precompute()
                 for cell in self.reduce_cells + [c for s in self.stage_cells for c in s]}
        return None if any(part is None for part in parts.values()) else parts

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, precomputed=None):
        weights = self.sampled_weights() if training else self.relaxed_weights()
        return self.forward(inputs, weights, training=training, precomputed=precomputed)

    # ------------------------------------------------------------------ costs
    def cost_tables(self):
        """Full-width (FLOPs, BiOPs) of every candidate component, counted on the layers
        the final network uses (`bnas_tf.costs`); cached."""
        if self._cache.cost_tables is None:
            with tf.init_scope():  # eager even when first asked inside a tf.function
                self._cache.cost_tables = costs.cost_tables(self)
        return self._cache.cost_tables

    def expected_costs(self):
        """Expected FLOPs, BiOPs and equivalent OPs (per image) under softmax(alpha);
        differentiable in every alpha."""
        t = self.cost_tables()
        p_w = tf.nn.softmax(self.alpha_width)
        p_d = tf.nn.softmax(self.alpha_depth)
        ratios = tf.constant(self.ratios, tf.float32)
        e1 = tf.reduce_sum(p_w * ratios, axis=-1)            # E[rho]
        e2 = tf.reduce_sum(p_w * ratios ** 2, axis=-1)       # E[rho^2]
        depths = tf.range(self.max_depth + 1, dtype=tf.float32)
        cells_on = 1.0 + tf.reduce_sum(p_d * depths, axis=-1)  # 1 + sum_k P(depth >= k)
        p_red = tf.nn.softmax(self.alpha_reduce)
        out = []
        for kind in (0, 1):  # 0: FLOPs, 1: BiOPs
            total = costs.expectation(p_w[0], t["stem"][:, kind])
            total += costs.expectation(p_w[-1], t["classifier"][:, kind])
            for i, alpha in enumerate(self.alpha_ops):
                p_ops = tf.nn.softmax(alpha)
                normal = t["pre"][i][kind] + tf.reduce_sum(p_ops * t["edges"][i][..., kind])
                total += cells_on[i] * e2[i] * normal
                if i > 0:
                    total += e1[i - 1] * e1[i] * (t["reduce_pre"][i][kind]
                                                  + t["reduce_skip"][i][kind])
                    total += e2[i] * tf.reduce_sum(p_red * t["reduce_edges"][i][..., kind])
            out.append(total)
        flops, biops = out
        return {"flops": flops, "biops": biops,
                "equivalent_ops": costs.equivalent_ops(flops, biops)}

    def expected_flops(self):
        """Expected equivalent OPs (FLOPs + BiOPs/64) per image, differentiable."""
        return self.expected_costs()["equivalent_ops"]

    # ------------------------------------------------------------------ losses
    def entropy(self):
        return alphas.mean_row_entropy(self.arch_variables)

    def entropy_term(self, epoch):
        start, step = self.entropy_schedule
        coef = costs.entropy_coefficient(tf.cast(epoch, tf.float32), start, step)
        return coef * self.entropy()

    def arch_regularization(self, epoch):
        """The additive part of BARS' alpha loss: lambda_ent(epoch) * H(alpha)."""
        return self.entropy_term(epoch)

    def arch_loss(self, ce, reg, epoch):
        """BARS' whole alpha loss: CE * (FLOPs(alpha)/F)^theta + lambda_ent * H(alpha).

        `ce` is the (replica-scaled) validation cross entropy, `reg` the entropy term
        (`arch_regularization`), scaled for tf.distribute like any regulariser."""
        del epoch
        above, below = self.budget_theta
        loss = costs.budget_loss(ce, self.expected_flops() / costs.MEGA, self.flops_budget,
                                 above, below)
        return loss + tf.nn.scale_regularization_loss(reg)

    def get_config(self):
        return {"num_classes": self.num_classes, "image_size": self.image_size,
                "base_channels": list(self.base_channels),
                "width_choices": list(self.width_choices), "max_depth": self.max_depth,
                "op_names": list(self.op_names), "downsample": self.downsample,
                "op_shortcut": self.op_shortcut, "stem": self.stem_kind}
