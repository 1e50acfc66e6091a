"""The BNAS search cell as the paper and DARTS write it: the specification.

* `MixedOp`: the mixed op of one edge, ``sum_k softmax(alpha)_k * op_k(x)`` over the
  op list (DARTS Eq. 2); Zeroise (``none``) contributes exactly zero and is not
  computed. Each op is the layer of the ops table (`bnas_tf.ops`), built as in
  DARTS' search: non-affine BN inside binary convs and after pools.
* `SearchCell`: DARTS' cell (model_search.py) with BNAS' inter-cell skip. Two FLOAT
  preprocess layers (ReLU -> 1x1 conv -> BN, or `FactorizedReduce` after a
  reduction cell) give the states s0, s1; 4 nodes, node i the sum of a mixed op over
  every earlier state (2 + 3 + 4 + 5 = 14 edges); output = concat of the 4 nodes
  ([B, H, W, 4C], H and W halved in a reduction cell). Template ``bnas`` adds the
  inter-cell skip: s1 itself in normal cells (when shapes match), a float BN -> 2x2
  stride-2 conv of s1 in reduction cells; ``darts`` adds nothing ("No Skip").

`bnas/fused.py` computes the same cell faster (tested equal in tests/test_fused_cell.py);
`Supernet(cell=...)` picks one. This file holds no speed machinery.
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import genotypes, ops
from bnas_tf.models import common
from bnas_tf.search.bnas import derive

NODES = genotypes.NODES
N_EDGES = derive.edge_offsets(NODES)[1]
# The supernet's calls are plain Python over a static structure: autograph would
# only add tracing time (it converts every nested call), so it is switched off.
no_autograph = tf.autograph.experimental.do_not_convert


def build_layer(layer, shape):
    """Build `layer` for inputs of `shape` under its name scope, as its first call
    would (the same variable names), without running it."""
    with tf.name_scope(layer.name):
        layer.build(shape)


def search_bn(name):
    """DARTS' search-time BatchNorm: no learned scale or offset."""
    return common.batchnorm(name, affine=False)


class ReLUConvBN(tf.keras.layers.Layer):
    """Float ReLU -> 1x1 conv -> non-affine BN (search-time preprocess)."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        self.conv, self.bn = common.float_conv(filters, 1, name="conv"), search_bn("bn")

    def build(self, shape):
        build_layer(self.conv, shape)
        build_layer(self.bn, [*shape[:-1], self.conv.filters])
        super().build(shape)

    @no_autograph
    def call(self, x, training=None):
        return self.bn(self.conv(tf.nn.relu(x)), training=training)


class FactorizedReduce(tf.keras.layers.Layer):
    """Float ReLU -> two stride-2 1x1 convs on x and x shifted by one pixel, concat, BN.

    The second conv reads the odd rows and columns of x (zero-padded at the end for
    odd sizes): exactly the pixels a stride-2 1x1 conv reads from the shifted x."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        if filters % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {filters}")
        self.conv0 = common.float_conv(filters // 2, 1, 2, name="conv0")
        self.conv1 = common.float_conv(filters // 2, 1, 1, name="conv1")
        self.bn = search_bn("bn")

    def build(self, shape):
        for conv in (self.conv0, self.conv1):
            build_layer(conv, shape)
        build_layer(self.bn, [*shape[:-1], 2 * self.conv0.filters])
        super().build(shape)

    @no_autograph
    def call(self, x, training=None):
        x = tf.nn.relu(x)
        odd = x[:, 1::2, 1::2, :]
        extra = [int(n) % 2 for n in x.shape[1:3]]  # the shifted x's zero row/column
        if any(extra):
            odd = tf.pad(odd, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]])
        y = tf.concat([self.conv0(x), self.conv1(odd)], axis=-1)
        return self.bn(y, training=training)


class MixedOp(tf.keras.layers.Layer):
    """sum_k w_k * op_k(x) over `op_names` (w: the edge's softmaxed alpha row, [n_ops]).

    x: [B, H, W, C] -> [B, H/stride, W/stride, C]. Zeroise contributes w * 0 = 0 and
    is not computed."""

    def __init__(self, op_names, channels, stride, config, name=None):
        super().__init__(name=name)
        self.op_names, self.stride = tuple(op_names), stride
        self.candidates = [(k, ops.make(op, channels, stride, config, layer_name=f"{k}_{op}"))
                           for k, op in enumerate(self.op_names) if op != ops.ZERO]
        self.layers_ = [layer for _, layer in self.candidates]

    @no_autograph
    def call(self, x, weights, training=None):
        terms = [weights[k] * layer(x, training=training) for k, layer in self.candidates]
        if not terms:  # only Zeroise
            return tf.zeros_like(x[:, ::self.stride, ::self.stride, :])
        return tf.add_n(terms)


def edge_stride(reduction, src):
    """DARTS: in a reduction cell the edges leaving s0 and s1 have stride 2."""
    return 2 if reduction and src < 2 else 1


class SearchCell(tf.keras.layers.Layer):
    """A DARTS search cell with the BNAS (or plain DARTS) inter-cell skip.

    Args:
      op_names: the candidate ops of every edge.
      channels: C, the channels of each node.
      reduction: halve H and W (stride-2 edges from s0 and s1).
      reduction_prev: the previous cell reduced (s0 is then twice s1's size).
      skip: add BNAS' inter-cell skip (template 'bnas', not in cell 0).
      op_config: `ops.OpConfig` of the ops (the search's: non-affine BNs).

    Call: ``cell([s0, s1], mix, training)`` with `mix` the cell type's softmaxed
    alphas [14, n_ops] (DARTS' edge order: node by node, sources in order) ->
    [B, H', W', 4C].
    """

    def __init__(self, op_names, channels, reduction, reduction_prev, skip, op_config,
                 name=None):
        super().__init__(name=name)
        self.channels, self.reduction, self.skip = channels, reduction, skip
        self.binarization = op_config.binarization
        self.pre0 = (FactorizedReduce(channels, name="pre0") if reduction_prev
                     else ReLUConvBN(channels, name="pre0"))
        self.pre1 = ReLUConvBN(channels, name="pre1")
        self.residual_bn = self.residual_conv = None
        self.identity_skip = False
        self.make_edges(op_names, op_config)

    def make_edges(self, op_names, op_config):
        """One MixedOp per edge (`edge_layers`: built by a call, not from shapes)."""
        self.edge_layers = True
        self.edges = [MixedOp(op_names, self.channels, edge_stride(self.reduction, src),
                              op_config, name=f"n{node}_from{src}")
                      for node in range(NODES) for src in range(2 + node)]

    def build(self, input_shapes):
        prev = input_shapes[1]
        out_channels = NODES * self.channels
        if self.skip and self.reduction:
            self.residual_bn = search_bn("residual_bn")
            self.residual_conv = common.float_conv(out_channels, 2, 2, name="residual_conv")
        elif self.skip:
            self.identity_skip = prev[-1] == out_channels
        super().build(input_shapes)

    def build_from_shapes(self, shapes):
        """None: the reference cell is built by its first call."""
        del shapes
        return None

    def precompute(self):
        """Nothing: the reference cell quantises its kernels in every call."""
        return None

    def nodes(self, states, mix, training=None, precomputed=None):
        """The 4 node states from [s0', s1'] (preprocessed): node i = sum over the
        earlier states j of MixedOp_ij(state j) (DARTS' model_search.Cell)."""
        del precomputed
        states, k = list(states), 0
        for _ in range(NODES):
            terms = []
            for state in states:
                terms.append(self.edges[k](state, mix[k], training=training))
                k += 1
            states.append(tf.add_n(terms))
        return states[2:]

    @no_autograph
    def call(self, inputs, mix, training=None, precomputed=None):
        s0, s1 = inputs
        states = [self.pre0(s0, training=training), self.pre1(s1, training=training)]
        out = tf.concat(self.nodes(states, mix, training, precomputed), axis=-1)
        if self.residual_conv is not None:
            out = out + self.residual_conv(self.residual_bn(s1, training=training))
        elif self.identity_skip:
            out = out + s1
        return out
