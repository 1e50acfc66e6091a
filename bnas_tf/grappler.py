"""Grappler (TensorFlow's graph optimiser) settings for one function's calls.

A ``tf.function`` is optimised by Grappler when it is first called, with the
rewriter settings of the calling thread's function-call options. For the search
step (about 20k nodes) the default settings cost seconds at the first step and buy
nothing measurable (docs/benchmark.md): the meta optimiser's second iteration
changes nothing but duplicate constants, the layout optimiser changes no node on
CPU, the remapper fuses 2, and the memory optimiser (1-1.8 s) adds 12 nodes and
raises peak memory slightly; the loop optimiser and the implementation selector
change no node (0.2 s) and the TFG (MLIR) hook, which TensorFlow's meta optimiser
runs twice and which runs no optimisation yet (its source says so), re-imports and
exports the whole graph each time (0.74 s). `lean()` turns those off for the calls
made inside it, in this thread only, and restores the caller's options after; every other
optimiser (pruning, constant folding, common subexpressions, arithmetic,
dependencies) keeps its default.

The settings take effect when a function is first instantiated: call a function
always inside, or always outside `lean()` (a function called both ways is
optimised, and holds memory, twice).
"""
from __future__ import annotations

import contextlib

import bnas_tf  # noqa: F401
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

_RC = rewriter_config_pb2.RewriterConfig
LEAN = {
    "meta_optimizer_iterations": _RC.ONE,
    "layout_optimizer": _RC.OFF,
    "remapping": _RC.OFF,
    "memory_optimization": _RC.NO_MEM_OPT,
    "loop_optimization": _RC.OFF,
    "implementation_selector": _RC.OFF,
    "disable_tfg_optimizer": True,
}


def lean_config(serialized):
    """The ConfigProto serialized in `serialized`, with the `LEAN` rewriter settings."""
    config = config_pb2.ConfigProto()
    config.ParseFromString(serialized)
    for name, value in LEAN.items():
        setattr(config.graph_options.rewrite_options, name, value)
    return config


@contextlib.contextmanager
def lean():
    """Function calls in this block (this thread) are optimised with `LEAN`."""
    ctx = context.context()
    previous = ctx.function_call_options
    options = context.FunctionCallOptions(executor_type=previous.executor_type)
    options.config_proto_serialized = lean_config(previous.config_proto_serialized)
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = previous
