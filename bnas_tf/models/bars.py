"""BARS final networks built from a `genotypes.BarsGenotype` (fully binary backbone).

Layout (BARS Sec. 4 / App. A): a float stem, three stages and a float classifier.
Stage i has ``width_channels(width_i, base_channels_i)`` channels and
``1 + depth_i`` normal cells of that stage's topology; a reduction cell (the
genotype's `reduce_cell` topology) sits between consecutive stages.

A dense cell: node 0 is a binary 3x3 conv of the cell input (no shortcut,
C_prev -> C, stride 1); nodes 1..4 each sum all earlier nodes through one op per
edge (``genotypes.dense_edges()`` order; ``none`` edges are not built, nor are ops
that cannot reach node 4 or be reached from node 0). In a reduction cell the edges
leaving node 0 have stride 2. The cell outputs node 4 plus a cell-level shortcut:
identity in normal cells, a strided binary downsample in reduction cells
(`BarsDownsample`: ``improved`` = BARS' binary factorized reduce, ``plain`` = one
binary stride-2 conv, ``float`` = the same conv in full precision, an ablation).
Binary convs carry BARS' op-level shortcut unless ``op_shortcut`` is False.
"""
from __future__ import annotations

import numpy as np

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import binary, genotypes, ops
from bnas_tf.models import common

DOWNSAMPLES = binary.BinaryDownsample.KINDS
WIDTH_CHOICES = (0.25, 0.5, 0.75, 1.0)


def width_channels(ratio, base):
    """Channels of a stage with width `ratio` of `base`: rounded to an even count >= 2."""
    return max(2, 2 * int(round(float(ratio) * int(base) / 2.0)))


def stage_channels(genotype):
    return [width_channels(s.width, c) for s, c in zip(genotype.stages, genotype.base_channels)]


def match_channels(x, channels):
    """`x` truncated or zero-padded along the channel axis to `channels` channels."""
    have = x.shape[-1]
    if have == channels:
        return x
    if have > channels:
        return x[..., :channels]
    return tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, channels - have]])


def stagger(x):
    """`x` shifted up-left by one pixel (zero fill): the second factorized-reduce input."""
    return tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])


def live_edges(cell):
    """Indices (in dense_edges() order) of the non-``none`` edges on a path 0 -> 4."""
    edges = genotypes.dense_edges()
    last = genotypes.NODES
    reach = [True] + [False] * last
    for k, (i, j) in enumerate(edges):  # edges are ordered by target node
        if cell[k] != ops.ZERO and reach[i]:
            reach[j] = True
    useful = [False] * last + [True]
    for k in reversed(range(len(edges))):
        i, j = edges[k]
        if cell[k] != ops.ZERO and useful[j]:
            useful[i] = True
    return tuple(k for k, (i, j) in enumerate(edges)
                 if cell[k] != ops.ZERO and reach[i] and useful[j])


@tf.keras.utils.register_keras_serializable(binary.SERIAL)
class BarsDownsample(binary._Block):
    """Channel-changing stride-2 binary block for any C_in -> C_out.

    ``improved``: `binary.BinaryDownsample`'s binary factorized reduce (two stride-2
    binary 3x3 convs on x and on x staggered by one pixel, concatenated), except
    that each half's 2x2 AvgPool shortcut is truncated or zero-padded to the
    half's C_out / 2 channels, so it exists for every pair of searched widths (for
    C_out = 2 C_in it is exactly BinaryDownsample). ``plain``/``float`` are
    `binary.BinaryDownsample`'s (no shortcut).
    """

    def __init__(self, filters, kind="improved", binarization=binary.BARS, **kwargs):
        if kind not in DOWNSAMPLES:
            raise ValueError(f"unknown downsample {kind!r}; choose one of "
                             f"{', '.join(DOWNSAMPLES)}")
        if kind == "improved" and filters % 2:
            raise ValueError(f"improved downsample needs an even channel count, got {filters}")
        binarization = binary.scheme(binarization)
        super().__init__(filters=filters, kind=kind, binarization=binarization, **kwargs)
        self.filters, self.kind = filters, kind
        if kind == "improved":
            self.halves = [binary.BinaryConv(filters // 2, 3, 2, binarization=binarization,
                                             relu=False, name=f"half{i}") for i in range(2)]
        else:
            self.block = binary.BinaryDownsample(filters, kind, binarization, name="block")

    def call(self, inputs, training=None):
        if self.kind != "improved":
            return self.block(inputs, training=training)
        outs = []
        for half, x in zip(self.halves, (inputs, stagger(inputs))):
            y = half(x, training=training)
            outs.append(y + match_channels(binary.shortcut(x, 2), self.filters // 2))
        return tf.concat(outs, axis=-1)


@tf.keras.utils.register_keras_serializable(binary.SERIAL)
class BarsCell(binary._Block):
    """One dense BARS cell (see the module docstring)."""

    def __init__(self, cell, channels, reduction=False, downsample="improved",
                 op_shortcut=True, binarization=binary.BARS, **kwargs):
        binarization = binary.scheme(binarization)
        cell = tuple(str(op) for op in cell)
        super().__init__(cell=list(cell), channels=channels, reduction=reduction,
                         downsample=downsample, op_shortcut=op_shortcut,
                         binarization=binarization, **kwargs)
        edges = genotypes.dense_edges()
        if len(cell) != len(edges):
            raise ValueError(f"a dense cell needs {len(edges)} edge ops, got {len(cell)}")
        self.channels, self.reduction = channels, reduction
        config = ops.OpConfig(binarization=binarization, op_shortcut=op_shortcut)
        self.live = live_edges(cell)
        self.edge_ops = []  # one layer per live edge (a list: SavedModel needs str dict keys)
        for k in self.live:
            i, j = edges[k]
            stride = 2 if reduction and i == 0 else 1
            self.edge_ops.append(ops.make(cell[k], channels, stride, config,
                                          layer_name=f"e{i}{j}_{cell[k]}"))
        self.pre = (binary.BinaryConv(channels, 3, binarization=binarization, name="pre")
                    if self.live else None)
        self.downsample = (BarsDownsample(channels, downsample, binarization, name="downsample")
                           if reduction else None)

    def build(self, input_shape):
        if not self.reduction and input_shape[-1] != self.channels:
            raise ValueError(f"{self.name}: a normal cell keeps its channels, got "
                             f"{input_shape[-1]} -> {self.channels}")
        super().build(input_shape)

    def call(self, inputs, training=None):
        skip = (self.downsample(inputs, training=training) if self.reduction else inputs)
        if not self.live:
            return skip
        edges = genotypes.dense_edges()
        nodes = [self.pre(inputs, training=training)] + [None] * genotypes.NODES
        for k, layer in zip(self.live, self.edge_ops):
            i, j = edges[k]
            h = layer(nodes[i], training=training)
            nodes[j] = h if nodes[j] is None else nodes[j] + h
        return nodes[-1] + skip


def _binarization(spec, binarization):
    """The spec's own scheme if it names one; else the caller's unless it is the
    generic default (XNOR), which BARS replaces by its tensor-scale XNOR (BARS)."""
    if spec.get("binarization") is not None:
        return binary.scheme(spec["binarization"])
    if binarization is None or binary.scheme(binarization) == binary.XNOR:
        return binary.BARS
    return binary.scheme(binarization)


def build(spec, num_classes, image_size, auxiliary=False, binarization=None, name=None):
    """The BARS network of `spec` = {"family": "bars", "genotype": <BarsGenotype>,
    "downsample": "improved"|"plain"|"float", "op_shortcut": bool, "stem": "auto"|
    "cifar"|"imagenet", "binarization": optional scheme name} as a Keras Model."""
    genotype = genotypes.load(spec["genotype"])
    if not isinstance(genotype, genotypes.BarsGenotype):
        raise ValueError("the bars network family needs a bars genotype")
    downsample = spec.get("downsample", "improved")
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"unknown downsample {downsample!r}; choose one of "
                         f"{', '.join(DOWNSAMPLES)}")
    op_shortcut = bool(spec.get("op_shortcut", True))
    scheme = _binarization(spec, binarization)
    stem = common.resolve_stem(spec.get("stem", "auto"), image_size)
    channels = stage_channels(genotype)
    inputs = tf.keras.Input((image_size, image_size, 3), name="image")
    if stem == "cifar":
        x = common.cifar_stem(inputs, channels[0])
    else:
        _, x = common.imagenet_stem(inputs, channels[0])
    aux_logits = None
    cell_args = dict(downsample=downsample, op_shortcut=op_shortcut, binarization=scheme)
    for i, stage in enumerate(genotype.stages):
        if i > 0:
            x = BarsCell(genotype.reduce_cell, channels[i], reduction=True,
                         name=f"stage{i}_reduce", **cell_args)(x)
        for k in range(1 + stage.depth):
            x = BarsCell(stage.cell, channels[i], name=f"stage{i}_cell{k}", **cell_args)(x)
        if auxiliary and i == max(0, len(genotype.stages) - 2):
            aux_logits = common.auxiliary_head(x, num_classes)
    # Shortcuts at op, cell and stage level add up: a float BN before the classifier
    # keeps the logits' scale (std ~9 at initialisation without it).
    logits = common.classifier(common.batchnorm("classifier_bn")(x), num_classes)
    outputs = [logits, aux_logits] if aux_logits is not None else logits
    return tf.keras.Model(inputs, outputs, name=name or "bars")


def random_genotype(seed=0, base_channels=(48, 96, 192), max_depth=3, op_names=ops.BARS_OPS,
                    widths=WIDTH_CHOICES):
    """A random BarsGenotype (tests, benchmarks): uniform ops, widths and depths."""
    rng = np.random.default_rng(seed)
    n_edges = len(genotypes.dense_edges())

    def cell():
        return tuple(str(op) for op in rng.choice(list(op_names), n_edges))

    stages = [genotypes.BarsStage(float(rng.choice(widths)), int(rng.integers(0, max_depth + 1)),
                                  cell()) for _ in base_channels]
    return genotypes.BarsGenotype(stages=stages, reduce_cell=cell(),
                                  base_channels=tuple(base_channels), max_depth=max_depth)


def _register():
    from bnas_tf.models import register_family
    register_family("bars", build)


_register()
