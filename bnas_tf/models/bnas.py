"""BNAS final networks (CIFAR and ImageNet) built from a cell genotype.

DARTS' network with BNAS' cell template: every cell outputs the concat of its
nodes PLUS an inter-cell skip — normal cells add s1 (identity), reduction cells add
a float residual of s1 (BN -> 2x2 stride-2 conv, C_prev -> len(concat) * C); cell 0
adds nothing. Preprocess convs are binary (1x1, or 3x3 stride 2 after a reduction
cell). Reductions sit at cells ``cells//3`` and ``2*cells//3``. Stem and
classifier are float. Zeroise edges cost nothing: they are not built at all (a
node whose edges are all Zeroise outputs zeros). Trailing all-Zeroise nodes keep
their channels of the cell output 0 whatever the data, through the identity skips
too (`BnasCell.zero_tail`): in training with the speed variant the 1x1 preprocess
convs and the float residual reading them skip those channels
(`fast_binary.zero_tail_binary_conv`).

``spec["residual"]`` = ``"binary"`` replaces the float reduction residual by a
binary 2x2 stride-2 conv (BN -> sign -> conv), beyond the paper: the float
residuals hold ~15% of BNAS-A's parameters and ~78% of its deployed bytes.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import tensorflow as tf

from absl import logging

from bnas_tf import binary, fast_binary, genotypes, ops
from bnas_tf.models import common


RESIDUALS = ("float", "binary")


def reduction_cells(cells):
    return (cells // 3, 2 * cells // 3)


def unread_inputs(edges):
    """Indices (0 = s0, 1 = s1) of the cell inputs no non-Zeroise edge reads."""
    read = {src for op, src in edges if op != ops.ZERO}
    return tuple(i for i in (0, 1) if i not in read)


_UNREAD_PATHS = set()  # "cellK/preI/" of preprocess convs whose output no op reads


class _UnreadFilter:
    """Drops Keras' "Gradients do not exist" warning when it names only unread
    preprocess convs (`_UNREAD_PATHS`); any other variable keeps the warning."""

    def filter(self, record):
        if not str(record.msg).startswith("Gradients do not exist for variables"):
            return True
        names = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if not isinstance(names, (list, tuple)) or not names:
            return True
        return not all(any(p in str(n) for p in _UNREAD_PATHS) for n in names)


_FILTER = _UnreadFilter()


def explain_unread_inputs(cells):
    """Say once per process which preprocess convs no op reads, and why they exist."""
    paths = {f"{c.name}/pre{i}/" for c in cells for i in c.unread}
    if not paths or paths <= _UNREAD_PATHS:
        return
    if not _UNREAD_PATHS:
        tf.get_logger().addFilter(_FILTER)
    _UNREAD_PATHS.update(paths)
    kinds = sorted({f"{'reduction' if c.reduction else 'normal'} cells' pre{i} (s{i})"
                    for c in cells for i in c.unread})
    logging.info("bnas: no op of the genotype reads the %s; the preprocess conv is kept as "
                 "in the reference code (its parameters are counted) and gets no gradient",
                 ", ".join(kinds))


@tf.keras.utils.register_keras_serializable(binary.SERIAL)
class BnasCell(binary._Block):
    """One final-network cell. Inputs [s0, s1]; output concat (+ inter-cell skip)."""

    def __init__(self, genotype, channels, reduction, reduction_prev, skip=True,
                 binarization=binary.XNOR, drop_path=True, residual="float", **kwargs):
        genotype = genotypes.load(genotype)
        binarization = binary.scheme(binarization)
        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose one of "
                             f"{', '.join(RESIDUALS)}")
        super().__init__(genotype=genotype.to_dict(), channels=channels, reduction=reduction,
                         reduction_prev=reduction_prev, skip=skip, binarization=binarization,
                         drop_path=drop_path, residual=residual, **kwargs)
        self.binarization, self.residual_kind = binarization, residual
        kind = "reduce" if reduction else "normal"
        self.edges = getattr(genotype, kind)
        self.concat = getattr(genotype, f"{kind}_concat")
        self.channels, self.reduction = channels, reduction
        self.skip = skip and genotype.template == "bnas"
        config = ops.OpConfig(binarization=binarization)
        self.pre0 = (binary.BinaryConv(channels, 3, 2, binarization=binarization, name="pre0")
                     if reduction_prev else
                     binary.BinaryConv(channels, 1, binarization=binarization, name="pre0"))
        self.pre1 = binary.BinaryConv(channels, 1, binarization=binarization, name="pre1")
        self.unread = unread_inputs(self.edges)
        self.ops = {}
        for k, (op, src) in enumerate(self.edges):
            if op != ops.ZERO:
                stride = 2 if reduction and src < 2 else 1
                self.ops[str(k)] = ops.make(op, channels, stride, config,
                                            layer_name=f"e{k}_{op}")
        # String keys: TensorFlow's SavedModel refuses to track dicts with int keys.
        self.drops = ({k: common.DropPath(name=f"drop{k}") for k, layer in self.ops.items()
                       if not isinstance(layer, binary.SkipConnect)} if drop_path else {})
        self.residual = None
        # channels of [s0, s1] from which they are 0 whatever the data (`zero_tail` of
        # the cells before; set by `build`): the speed variant skips them in training
        self.input_zero_tails = (None, None)

    def build(self, input_shapes):
        prev_channels = input_shapes[1][-1]
        out_channels = len(self.concat) * self.channels
        if self.skip and self.reduction and self.residual_kind == "binary":
            self.residual = binary.BinaryConv(out_channels, 2, 2, binarization=self.binarization,
                                              relu=False, name="residual")
        elif self.skip and self.reduction:
            self.residual = tf.keras.Sequential([
                common.batchnorm("bn"),
                tf.keras.layers.Conv2D(out_channels, 2, 2, padding="same", use_bias=False,
                                       kernel_initializer="he_normal", name="conv")],
                name="residual")
        # Normal cells add s1 only where it already has the output's shape (not cell 0).
        self.identity_skip = (self.skip and not self.reduction and prev_channels == out_channels)
        super().build(input_shapes)

    def zero_tail(self, s1_tail=None):
        """The channel from which this (built) cell's output is 0 whatever its inputs,
        or None: trailing all-Zeroise nodes of the concat, kept zero by an identity
        skip whose input `s1_tail` is zero from there on too (BNAS-A's first stage:
        half the channels of every cell output), never after a residual."""
        trailing = 0
        for state in reversed(self.concat):
            edges = (2 * (state - 2), 2 * (state - 2) + 1)
            if state < 2 or any(str(k) in self.ops for k in edges):
                break
            trailing += 1
        if not trailing or self.residual is not None:
            return None
        tail = (len(self.concat) - trailing) * self.channels
        if self.identity_skip:
            return None if s1_tail is None else max(tail, s1_tail)
        return tail  # the concat alone (cell 0, a cell whose s1 has another shape)

    def _pre(self, index, x, training):
        """preI(x); in training with the speed variant, without convolving the
        channels of x that are structurally 0 (`input_zero_tails`, set by `build`;
        `fast_binary.zero_tail_binary_conv`)."""
        layer = self.pre0 if index == 0 else self.pre1
        live = self.input_zero_tails[index]
        if live is None or training is not True:  # (a symbolic `training`: the readable call)
            return layer(x, training=training)
        return fast_binary.zero_tail_binary_conv(layer, x, live, training)

    def _residual(self, x, training):
        live = self.input_zero_tails[1]
        if (live is None or training is not True or isinstance(self.residual, binary.BinaryConv)
                or not fast_binary.uses_fast_convs(self)):
            return self.residual(x, training=training)
        bn, conv = self.residual.layers
        return fast_binary.zero_tail_float_conv(bn, conv, x, live, training)

    def call(self, inputs, training=None):
        s0_in, s1_in = inputs
        states = [self._pre(0, s0_in, training), self._pre(1, s1_in, training)]
        for node in range(genotypes.NODES):
            terms = []
            for k in (2 * node, 2 * node + 1):
                if str(k) in self.ops:
                    h = self.ops[str(k)](states[self.edges[k][1]], training=training)
                    if str(k) in self.drops:
                        h = self.drops[str(k)](h, training=training)
                    terms.append(h)
            if not terms:  # all edges Zeroise: zeros at the output's shape
                src = self.edges[2 * node][1]
                strided = self.reduction and src < 2
                terms = [tf.zeros_like(states[src][:, ::2, ::2, :] if strided else states[src])]
            states.append(tf.add_n(terms) if len(terms) > 1 else terms[0])
        out = tf.concat([states[i] for i in self.concat], axis=-1)
        if self.residual is not None:
            out = out + self._residual(s1_in, training)
        elif self.identity_skip:
            out = out + s1_in
        return out


def build(spec, num_classes, image_size, auxiliary=False, binarization=binary.XNOR,
          drop_path=True, name=None):
    """The BNAS network of `spec` ({genotype, cells, channels, stem}) as a Keras Model."""
    genotype = genotypes.load(spec["genotype"])
    if not isinstance(genotype, genotypes.BnasGenotype):
        raise ValueError("the bnas network family needs a bnas genotype")
    cells, channels = int(spec["cells"]), int(spec["channels"])
    if cells < 2:
        raise ValueError(f"a network needs at least 2 cells, got {cells}")
    stem = common.resolve_stem(spec.get("stem", "auto"), image_size)
    inputs = tf.keras.Input((image_size, image_size, 3), name="image")
    if stem == "cifar":
        s0 = s1 = common.cifar_stem(inputs, 3 * channels)
        reduction_prev = False
    else:
        s0, s1 = common.imagenet_stem(inputs, channels)
        reduction_prev = True
    current = channels
    tails = (None, None)  # the stem's outputs have no zero channels
    aux_logits = None
    built = []
    for i in range(cells):
        reduction = i in reduction_cells(cells)
        if reduction:
            current *= 2
        cell = BnasCell(genotype, current, reduction, reduction_prev, skip=i > 0,
                        binarization=binarization, drop_path=drop_path,
                        residual=spec.get("residual", "float"), name=f"cell{i}")
        built.append(cell)
        cell.input_zero_tails = tails
        s0, s1 = s1, cell([s0, s1])
        tails = (tails[1], cell.zero_tail(tails[1]))
        reduction_prev = reduction
        if auxiliary and i == 2 * cells // 3:
            aux_logits = common.auxiliary_head(s1, num_classes)
    explain_unread_inputs(built)
    logits = common.classifier(s1, num_classes)
    outputs = [logits, aux_logits] if aux_logits is not None else logits
    return tf.keras.Model(inputs, outputs, name=name or "bnas")
