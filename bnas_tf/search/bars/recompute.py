"""Recomputing a fused BARS cell in the backward pass (gradient checkpointing).

A training pass keeps, for its backward pass, what every op's gradient reads: per
stage-0 cell ~207 MB at the defaults (batch 64; docs/benchmark.md, "BARS search").
`recomputed` runs a `fused.FusedSearchCell` keeping only the cell's inputs and runs
its forward pass again when the gradient arrives (one cell at a time), so a pass
holds one cell's activations instead of all of them, for one more forward pass of
the recomputed cells. The recomputed pass normalises with the same batch statistics
(`fused.batch_norm`) but does not update the BatchNorms' moving statistics a
second time: they end as without recomputation (tests/test_bars_fused.py). Only the
inputs some active tape differentiates get gradients (the alpha pass computes no
kernel gradients, the weight pass none for the op weights and masks). Off by
default (`tools/search.py --recompute_stages`, `engine.EngineConfig`): at the
defaults recomputing stage 0 takes the peak RSS from ~3.8 to ~2.9 GB for ~10% more
CPU time per step (docs/benchmark.md).

`tape_gradient`, the custom gradient this uses, also serves the fused cell's own
custom gradients (fewer graph nodes than `tf.custom_gradient` in a traced step).
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import tensorflow as tf
from tensorflow.python.eager import record  # which tensors an active tape watches

from bnas_tf import binary, genotypes


def possible(cell, precomputed):
    """True if `cell` (a built `fused.FusedSearchCell`) can be recomputed: every op it
    runs is fused (its only state is the non-affine BatchNorms' moving statistics,
    which the recomputed pass leaves alone) and its kernels come precomputed as
    tensors (the cell reads no trainable variable: `tape_gradient`)."""
    if precomputed is None or any(t is None for t in tf.nest.flatten(precomputed)):
        return False
    static = cell._static.groups
    if "recompute" not in static:
        singles = [op for src in range(genotypes.NODES) for _, _, op in cell._groups(src)[0]]
        fused_bns = [layer.bn for layer in _fused_layers(cell)]
        static["recompute"] = (cell._pre_fusable()
                               and (cell.skip is None or cell._skip_fusable())
                               and not any(op.variables for op in singles
                                           if not isinstance(op, binary.Zeroise))
                               and all(bn.fused and not bn.trainable_weights
                                       for bn in fused_bns))
    return static["recompute"]


def _fused_layers(cell):
    """The masked binary convs the fused cell computes (their BNs)."""
    layers = [cell.pre]
    for src in range(genotypes.NODES):
        for (o, spec), members in cell._groups(src)[1].items():
            for k in members:
                op = cell.edges[k].candidates[o]
                layers.extend(op.halves if spec == "downsample" else [op])
    if cell.skip is not None:
        layers.extend(cell.skip.halves)
    return layers


def tape_gradient(forward):
    """`tf.custom_gradient` for gradient tapes (all the search steps use): ``forward(
    *tensors)`` returns (one output tensor, ``grad(g)``: a gradient or None per input),
    recorded on the active tapes as ONE operation from the inputs to the output. In a
    traced function `tf.custom_gradient` also passes every input through an IdentityN
    and the tape then builds zeros for those copies' unused gradients: graph nodes
    traced, then pruned (~4 per call; docs/benchmark.md). `forward` must read no
    trainable variable (its gradient would be lost); `tf.gradients` does not see it."""
    def wrapper(*args):
        args = [tf.convert_to_tensor(a) for a in args]
        with record.stop_recording():
            out, grad = forward(*args)
        record.record_operation(forward.__name__, [out], args,
                                lambda g: list(grad(g)))
        return out
    return wrapper


def recomputed(fused_call, inputs, op_weights, in_mask, out_mask, precomputed):
    """``fused_call(inputs, op_weights, in_mask, out_mask, True, precomputed)`` (a
    training pass: moving statistics updated once) whose backward pass recomputes
    it (``update=False``) after the output's gradient has arrived, and
    differentiates the recomputation. Shapes as `fused.FusedSearchCell.call`."""
    flat = tf.nest.flatten(precomputed)
    args = [inputs, op_weights, in_mask, out_mask] + flat
    needed = [record.should_record_backprop([a]) for a in args]  # fixed while tracing

    def run(update, values):
        kernels = tf.nest.pack_sequence_as(precomputed, list(values[4:]))
        return fused_call(*values[:4], True, kernels, update)

    @tape_gradient
    def cell(*values):
        def grad(g):
            # after g: not scheduled early (it would hold the activations again),
            # not merged with the forward pass by common-subexpression elimination
            with tf.control_dependencies([g]):
                again = [tf.identity(v) for v in values]
            sources = [v for v, n in zip(again, needed) if n]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(sources)
                out = run(False, again)
            grads = iter(tape.gradient(out, sources, output_gradients=g))
            return [next(grads) if n else None for n in needed]
        return run(True, values), grad
    return cell(*args)
