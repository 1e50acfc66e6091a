"""Cost accounting of a built network: parameters, FLOPs, BiOPs, memory, speed-up.

Conventions (BNAS / BARS, see docs/costs.md):

* ``params``: every trainable tensor, BatchNorm gamma/beta included (the BNAS
  reference's count); ``total_params`` adds non-trainable state (BN moving
  statistics); ``binary_params``: kernels of binary convolutions.
* ``flops``: multiply-accumulates (MACs) of float convolutions, depthwise
  convolutions and dense layers; ``biops``: MACs of binary convolutions (input
  binarised by a sign-family quantizer, kernel binarised too). Pooling, BN, adds
  and activations are not counted. Zeroise edges are not built in final networks,
  so they cost nothing.
* ``equivalent_ops = flops + biops / 64`` (Bi-Real / BARS); theoretical
  ``speedup = (flops + biops) / equivalent_ops`` (BNAS Table 9 style, relative to
  the same network run in float).
* ``memory_bytes``: binary kernels at 1 bit, every other weight (BN statistics
  included) at 32 bit; ``float_memory_bytes``: the same network all-float;
  ``memory_saving`` their ratio.
* ``fully_binarized``: the only float convs/dense layers are the stem (run before
  the first binary conv) and the classifier (run after the last), neither inside a
  block that also holds binary convs (BARS Table 2's "Fully-Binarized").
* ``cell_float_flops``: the part of ``flops`` spent in float convs inside blocks
  that also hold binary convs (BNAS' float reduction-cell residual, BARS' "FP
  Cell Shortcut"). The BNAS paper's "FLOPs" leave it out:
  ``equivalent_ops - cell_float_flops`` reproduces its Tables 6, 7, 9 and 13.

Layer shapes are recorded by temporarily wrapping each conv/dense layer's `call`
and running one eager forward pass on zeros; an auxiliary head (second output) is
left out of every count.
"""
from __future__ import annotations

import dataclasses
import math

import bnas_tf  # noqa: F401
import larq as lq
import tensorflow as tf

BINARY_OPS_PER_FLOP = 64


@dataclasses.dataclass
class Costs:
    params: int = 0
    total_params: int = 0
    binary_params: int = 0
    flops: int = 0
    biops: int = 0
    memory_bytes: float = 0.0
    float_memory_bytes: float = 0.0
    fully_binarized: bool = False
    cell_float_flops: int = 0
    layers: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def equivalent_ops(self) -> float:
        return self.flops + self.biops / BINARY_OPS_PER_FLOP

    @property
    def memory_saving(self) -> float:
        return self.float_memory_bytes / self.memory_bytes if self.memory_bytes else 1.0

    @property
    def speedup(self) -> float:
        eq = self.equivalent_ops
        return (self.flops + self.biops) / eq if eq else 1.0

    def to_dict(self, with_layers=False):
        data = {"params": self.params, "total_params": self.total_params,
                "binary_params": self.binary_params, "flops": self.flops,
                "biops": self.biops, "equivalent_ops": self.equivalent_ops,
                "memory_bytes": self.memory_bytes,
                "float_memory_bytes": self.float_memory_bytes,
                "memory_saving": self.memory_saving, "speedup": self.speedup,
                "fully_binarized": self.fully_binarized,
                "cell_float_flops": self.cell_float_flops}
        if with_layers:
            data["layers"] = list(self.layers)
        return data


def is_binary_quantizer(quantizer) -> bool:
    """True for sign-family (1-bit) Larq quantizers (ste_sign, approx_sign, ...)."""
    if quantizer is None:
        return False
    if getattr(quantizer, "precision", None) == 1:
        return True
    name = getattr(quantizer, "__name__", "") or type(quantizer).__name__
    return "sign" in name.lower()


def is_binary_layer(layer) -> bool:
    """A Larq conv whose input and kernel are both binarised (runs as XNOR-popcount)."""
    if isinstance(layer, lq.layers.QuantDepthwiseConv2D):
        kernel_q = layer.depthwise_quantizer
    elif isinstance(layer, lq.layers.QuantConv2D):
        kernel_q = layer.kernel_quantizer
    else:
        return False
    return is_binary_quantizer(layer.input_quantizer) and is_binary_quantizer(kernel_q)


def _is_costed(layer) -> bool:
    return isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D,
                              tf.keras.layers.SeparableConv2D, tf.keras.layers.Dense))


def _dim(value):
    return int(value) if value is not None else 1


def layer_macs(layer, input_shape, output_shape) -> int:
    """Multiply-accumulates of one call of a conv/dense layer (batch included)."""
    batch = _dim(output_shape[0])
    if isinstance(layer, tf.keras.layers.Dense):
        positions = math.prod(_dim(d) for d in output_shape[:-1])
        return positions * int(input_shape[-1]) * int(output_shape[-1])
    h, w, c_out = (int(d) for d in output_shape[1:4])
    c_in = int(input_shape[-1])
    kh, kw = layer.kernel_size
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return batch * h * w * c_out * kh * kw
    if isinstance(layer, tf.keras.layers.SeparableConv2D):
        return batch * h * w * (c_in * layer.depth_multiplier * kh * kw
                                + c_in * layer.depth_multiplier * c_out)
    groups = getattr(layer, "groups", 1) or 1
    return batch * h * w * c_out * (c_in // groups) * kh * kw


def _subsampling(model):
    """id(conv) -> factor for BinaryConv's strided-dilation (conv at stride 1, then subsample)."""
    from bnas_tf import binary
    factors = {}
    for layer in model.submodules:
        if isinstance(layer, binary.BinaryConv) and getattr(layer, "subsample", 1) > 1:
            factors[id(layer.conv)] = layer.subsample
    return factors


def _inference_model(model):
    """The model without its auxiliary outputs (costs count inference only)."""
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) > 1 and getattr(model, "inputs", None):
        return tf.keras.Model(model.inputs, outputs[0], name=f"{model.name}_inference")
    return model


def _input_shape(model, input_shape):
    if input_shape is not None:
        return tuple(input_shape)
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        shape = None
    if isinstance(shape, list):
        raise ValueError(f"{model.name}: cost counting needs a single-input model")
    if shape is None or any(d is None for d in shape[1:]):
        raise ValueError(f"{model.name}: unknown input shape; pass input_shape=(H, W, C)")
    return tuple(shape[1:])


def _record_calls(layers):
    """Wrap every layer's `call` (instance attribute); returns (calls list, restore fn)."""
    calls = []

    def wrap(layer, original):
        def call(inputs, *args, **kwargs):
            outputs = original(inputs, *args, **kwargs)
            calls.append((layer, tuple(inputs.shape), tuple(outputs.shape)))
            return outputs
        return call

    wrapped = []
    for layer in layers:
        had_own = "call" in layer.__dict__
        original = layer.__dict__.get("call", layer.call)
        object.__setattr__(layer, "call", wrap(layer, original))
        wrapped.append((layer, had_own, original))

    def restore():
        for layer, had_own, original in wrapped:
            if had_own:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")

    return calls, restore


def _top_level_owner(model):
    """id(sublayer) -> the top-level layer of `model` that holds it (or itself)."""
    owner = {}
    for top in getattr(model, "layers", []):
        owner[id(top)] = top
        for sub in top.submodules:
            owner.setdefault(id(sub), top)
    return owner


def _classify_float(model, calls):
    """(fully_binarized, indices of float calls inside blocks that hold binary convs)."""
    binary_at = [i for i, (layer, _, _) in enumerate(calls) if is_binary_layer(layer)]
    owner = _top_level_owner(model)
    holds_binary = {id(owner[id(layer)]) for layer, _, _ in calls
                    if is_binary_layer(layer) and id(layer) in owner}
    inside, between = [], []
    for i, (layer, _, _) in enumerate(calls):
        if is_binary_layer(layer):
            continue
        top = owner.get(id(layer))
        if top is not None and id(top) in holds_binary:
            inside.append(i)
        elif binary_at and binary_at[0] < i < binary_at[-1]:
            between.append(i)
    return bool(binary_at) and not inside and not between, inside


def _parameter_counts(model):
    from bnas_tf.models import common
    skip = {id(w) for layer in model.submodules if isinstance(layer, common.DropPath)
            for w in layer.weights}
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights
                    if id(w) not in skip)
    total = sum(int(math.prod(w.shape)) for w in model.weights if id(w) not in skip)
    return trainable, total


def count(model, batch_size=1, input_shape=None) -> Costs:
    """Costs of `model` for one forward pass on `batch_size` images.

    FLOPs/BiOPs scale with `batch_size` (default 1: per image); parameter and
    memory counts do not. `input_shape` (H, W, C) is only needed for models
    without a static input shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = _inference_model(model)
    shape = _input_shape(model, input_shape)
    costed = [layer for layer in model.submodules if _is_costed(layer)]
    if _is_costed(model):
        costed.append(model)
    calls, restore = _record_calls(costed)
    try:
        model(tf.zeros((batch_size,) + shape), training=False)
    finally:
        restore()

    subsample = _subsampling(model)
    costs = Costs()
    for layer, in_shape, out_shape in calls:
        factor = subsample.get(id(layer), 1)
        if factor > 1:
            out_shape = (out_shape[0], -(-out_shape[1] // factor), -(-out_shape[2] // factor),
                         out_shape[3])
        macs = layer_macs(layer, in_shape, out_shape)
        binary = is_binary_layer(layer)
        if binary:
            costs.biops += macs
        else:
            costs.flops += macs
        costs.layers.append({"name": layer.name, "type": type(layer).__name__,
                             "binary": binary, "input_shape": list(in_shape[1:]),
                             "output_shape": list(out_shape[1:]), "macs": macs})

    costs.params, costs.total_params = _parameter_counts(model)
    binary_kernels = {id(layer.kernel if hasattr(layer, "kernel") else
                         layer.depthwise_kernel): layer
                      for layer in model.submodules if is_binary_layer(layer) and layer.built}
    costs.binary_params = sum(int(math.prod(layer.kernel.shape if hasattr(layer, "kernel")
                                            else layer.depthwise_kernel.shape))
                              for layer in binary_kernels.values())
    costs.float_memory_bytes = 4.0 * costs.total_params
    costs.memory_bytes = (costs.binary_params / 8.0
                          + 4.0 * (costs.total_params - costs.binary_params))
    costs.fully_binarized, inside = _classify_float(model, calls)
    costs.cell_float_flops = sum(costs.layers[i]["macs"] for i in inside)
    return costs


def count_spec(spec, num_classes, image_size, batch_size=1, binarization=None) -> Costs:
    """Build the network of `spec` (dict or preset name) and count its costs."""
    from bnas_tf import models
    model = models.build(spec, num_classes, image_size, auxiliary=False,
                         binarization=binarization)
    return count(model, batch_size=batch_size)
