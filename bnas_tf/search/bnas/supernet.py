"""The BNAS supernet: DARTS' over-parameterised network with BNAS' cell template.

Float stem (``stem='auto'``, as the final network: for images under 128 pixels the
CIFAR stem, 3x3 conv -> 3C, BN; from 128 pixels DARTS' ImageNet stem, three stride-2
3x3 convs to 1/8 resolution, C channels, with the first cell reducing s0 as after a
reduction), `cells` search cells (reductions at cells//3 and 2*cells//3, channels
doubling there), global pooling, dense. ``alpha_normal``/``alpha_reduce``
(14 x n_ops, init 1e-3 * N(0, 1)) are its `arch_variables`, shared by the cells of
their type; `arch_regularization(epoch)` is the diversity regulariser (Eq. 5).

One switch picks the cell: ``cell='fused'`` (default, `fused.FusedSearchCell`) or
``cell='reference'`` (`cell.SearchCell`, the specification). Ops are built as in
DARTS' search: non-affine BN inside binary convs and after pools.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import bnas as bnas_models
from bnas_tf.models import common
from bnas_tf.search import bilevel
from bnas_tf.search.bnas import regularizers
from bnas_tf.search.bnas.cell import N_EDGES, SearchCell, build_layer, no_autograph
from bnas_tf.search.bnas.fused import FusedSearchCell

CELLS = {"fused": FusedSearchCell, "reference": SearchCell}  # the names of engine.CELLS


class Supernet(bilevel.SupernetBase):
    """The BNAS search network; `arch_variables` = [alpha_normal, alpha_reduce].
    `build_from_shape` creates its variables without a forward pass (fused cells).

    `cell`: 'fused' or 'reference' (see the module docstring); `conv_dtype`: the
    fused cell's 'float32' or 'bfloat16' ('auto' is resolved by `engine`)."""

    def __init__(self, op_names=ops.BNAS_OPS, cells=8, channels=16, num_classes=10,
                 template="bnas", binarization="xnor", diversity_lambda=1.0,
                 diversity_tau=7.7, cell="fused", conv_dtype="float32", stem="auto",
                 image_size=32, name="bnas_supernet"):
        super().__init__(name=name)
        self.op_names = ops.check_ops(op_names)
        if cells < 2:
            raise ValueError(f"a supernet needs at least 2 cells, got {cells}")
        if template not in genotypes.TEMPLATES:
            raise ValueError(f"unknown cell template {template!r}")
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        self.cells_count, self.channels, self.template = cells, channels, template
        self.cell_kind = cell
        self.conv_dtype = conv_dtype if cell == "fused" else "float32"
        self.diversity_lambda, self.diversity_tau = diversity_lambda, diversity_tau
        config = ops.OpConfig(binarization=binary.scheme(binarization), affine=False,
                              pool_bn=True)
        self.stem_kind = common.resolve_stem(stem, image_size)
        self.stem = self.stem_conv = self.stem_bn = None
        if self.stem_kind == "cifar":
            self.stem_conv = common.float_conv(3 * channels, 3, name="stem_conv")
            self.stem_bn = common.batchnorm("stem_bn")
        else:  # (s0, s1) at 1/4 and 1/8 resolution, C channels (the final network's)
            inputs = tf.keras.Input((None, None, 3))
            self.stem = tf.keras.Model(inputs, common.imagenet_stem(inputs, channels),
                                       name="stem")
        self.cells = []
        current, reduction_prev = channels, self.stem_kind == "imagenet"
        for i in range(cells):
            reduction = i in bnas_models.reduction_cells(cells)
            if reduction:
                current *= 2
            fused = {"conv_dtype": self.conv_dtype} if cell == "fused" else {}
            self.cells.append(CELLS[cell](self.op_names, current, reduction, reduction_prev,
                                          skip=template == "bnas" and i > 0,
                                          op_config=config, name=f"cell{i}", **fused))
            reduction_prev = reduction
        self.pool = tf.keras.layers.GlobalAveragePooling2D(name="pool")
        self.classifier = tf.keras.layers.Dense(num_classes, name="classifier")
        shape = (N_EDGES, len(self.op_names))
        self.alpha_normal, self.alpha_reduce = (
            self.add_weight(name=f"alpha_{kind}", shape=shape, trainable=True,
                            initializer=tf.keras.initializers.RandomNormal(stddev=1e-3))
            for kind in ("normal", "reduce"))

    @property
    def arch_variables(self):
        return [self.alpha_normal, self.alpha_reduce]

    def build_from_shape(self, input_shape):
        """Create every variable for images of `input_shape` (batch, height, width,
        channels) without a forward pass (an eager call runs ~4000 ops); False,
        with nothing built, when a cell needs a call (ops with per-edge layers)."""
        if any(cell.edge_layers for cell in self.cells):
            return False
        shape = list(input_shape)
        with tf.name_scope(self.name):
            if self.stem is None:
                build_layer(self.stem_conv, shape)
                stem = [shape[0], *shape[1:3], self.stem_conv.filters]
                build_layer(self.stem_bn, stem)
                s0 = s1 = stem
            else:  # a functional model: built already; its outputs' shapes
                s0, s1 = (list(s) for s in self.stem.compute_output_shape(shape))
            for cell in self.cells:
                s0, s1 = s1, cell.build_from_shapes([s0, s1])
            build_layer(self.classifier, [shape[0], s1[-1]])
        self.built = True
        return True

    def arch_regularization(self, epoch):
        return regularizers.diversity(self.arch_variables, self.diversity_lambda,
                                      self.diversity_tau, epoch)

    def precompute(self):
        """Every cell's quantised binary kernels (`FusedSearchCell.precompute`; None for
        reference cells): pass them as ``net(x, precomputed=...)`` to reuse them across
        calls while the weights do not change (the bilevel step's two passes)."""
        if self.cell_kind != "fused":
            return None
        return [cell.precompute() for cell in self.cells]

    @no_autograph
    def call(self, x, training=None, precomputed=None, mix=None):
        """Logits [N, classes] of images x [N, H, W, 3]; `mix`: (normal, reduce) mixing
        weights [14, n_ops] to use instead of softmax(alpha) (perturbation.py)."""
        if self.stem is None:
            s0 = s1 = self.stem_bn(self.stem_conv(x), training=training)
        else:
            s0, s1 = self.stem(x, training=training)
        mix_normal, mix_reduce = mix if mix is not None else (
            tf.nn.softmax(alpha, axis=-1) for alpha in self.arch_variables)
        for i, cell in enumerate(self.cells):
            mix = mix_reduce if cell.reduction else mix_normal
            s0, s1 = s1, cell([s0, s1], mix, training=training,
                              precomputed=None if precomputed is None else precomputed[i])
        return self.classifier(self.pool(s1))

    def alpha_arrays(self):
        """(alpha_normal, alpha_reduce) as numpy arrays."""
        return (np.asarray(self.alpha_normal.numpy()), np.asarray(self.alpha_reduce.numpy()))
