"""Export a trained network to a really binary .tflite through Larq Compute Engine.

`export` loads a model directory (or takes a Keras model), converts it with
``larq_compute_engine.convert_keras_model`` (float32 input and output), checks that
every binary convolution became an ``LceBconv2d`` op (`verify_binary`), checks on
sample images that the .tflite agrees with Keras (top-1 agreement, max |logit
difference|), and only then writes the file atomically: a failed conversion or
check never leaves a half-written file nor replaces an existing one.

`float_twin` rebuilds the same network with float convolutions, for the size (and
speed) comparison; `latency_ms` times single-image inference through the LCE
interpreter; `op_counts` parses a flatbuffer into ``{op name: count}`` (custom ops
show as ``LceBconv2d``, ``LceQuantize``, ``LceDequantize``).

Binary networks are not bit-exact after conversion (BatchNorm is folded into the
binary conv's output transform, so values within float rounding of 0 can change
sign), hence agreement is reported and only a top-1 agreement below
`min_agreement` fails.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import time
import warnings

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import larq as lq
import larq_compute_engine as lce
import numpy as np
import tensorflow as tf
from larq_compute_engine.mlir.python import tflite_schema
from larq_compute_engine.tflite.python.interpreter import Interpreter
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from bnas_tf import binary, files, model_dir as model_dir_lib, models

BCONV = "LceBconv2d"
FLOAT_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")
CONVERTERS = ("lce", "tflite")
DEFAULT_MIN_AGREEMENT = 0.9
# ops a binary conv's input may pass through between the sign and the convolution
_SIGN_PASSTHROUGH = ("Pad", "PadV2", "Identity", "IdentityN", "SpaceToBatchND")
_SAVED_MODEL_FALLBACK = "Saved-model conversion failed"


class ExportError(ValueError):
    """Conversion or verification failed (one-line message naming the cause)."""


@dataclasses.dataclass
class ExportReport:
    """What `export` produced and measured."""

    path: str | None
    bytes: int
    op_counts: dict
    bconv_ops: int                  # LceBconv2d ops in the .tflite
    float_conv_ops: int             # CONV_2D + DEPTHWISE_CONV_2D ops
    agreement: float | None         # top-1 agreement with Keras on the samples
    max_abs_diff: float | None      # max |logit difference| over the samples
    latency_ms: float | None = None  # median single-image latency (when timed)
    binary_convs: int = 0           # binary QuantConv2D layers in the Keras model
    live_binary_convs: int = 0      # ... of which reach the output (dead ones are pruned)
    close_fraction: float | None = None  # samples whose logits all match within tolerance
    samples: int = 0
    flatbuffer: bytes = dataclasses.field(default=b"", repr=False)

    def summary(self):
        parts = [f"{self.path or '<memory>'}: {self.bytes:,} bytes",
                 f"{self.bconv_ops} {BCONV}", f"{self.float_conv_ops} float conv"]
        if self.agreement is not None:
            parts.append(f"top-1 agreement {self.agreement:.3f} on {self.samples} samples "
                         f"(max |diff| {self.max_abs_diff:.3g}, "
                         f"{self.close_fraction:.0%} samples close)")
        if self.latency_ms is not None:
            parts.append(f"latency {self.latency_ms:.2f} ms")
        return ", ".join(parts)


# ----------------------------------------------------------------------------- flatbuffer

def _parse(flatbuffer):
    """(model, op names per opcode index, [(subgraph index, subgraph, operator)])
    of a flatbuffer; custom ops are named by their custom code."""
    try:
        model = tflite_schema.Model.GetRootAs(bytearray(flatbuffer), 0)
        builtins = {code: name for name, code in vars(tflite_schema.BuiltinOperator).items()
                    if not name.startswith("_")}
        names = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            names.append(code.CustomCode().decode()
                         if builtin == tflite_schema.BuiltinOperator.CUSTOM
                         else builtins.get(builtin, f"BUILTIN_{builtin}"))
        operators = [(g, model.Subgraphs(g), model.Subgraphs(g).Operators(j))
                     for g in range(model.SubgraphsLength())
                     for j in range(model.Subgraphs(g).OperatorsLength())]
    except Exception as e:  # flatbuffers raises assorted errors on garbage
        raise ExportError(f"not a TFLite flatbuffer ({type(e).__name__}: {e})") from None
    return model, names, operators


def op_counts(flatbuffer) -> dict:
    """{op name: count} over all subgraphs of a .tflite flatbuffer, most frequent first."""
    _, names, operators = _parse(flatbuffer)
    counts = collections.Counter(names[op.OpcodeIndex()] for _, _, op in operators)
    return dict(counts.most_common())


def weight_bytes(flatbuffer) -> dict:
    """{op name: bytes of the constant tensors it reads}: where the file size goes."""
    model, names, operators = _parse(flatbuffer)
    sizes, seen = collections.Counter(), set()
    for g, subgraph, op in operators:
        for k in range(op.InputsLength()):
            index = op.Inputs(k)
            if index < 0 or (g, index) in seen:
                continue
            seen.add((g, index))
            buffer = model.Buffers(subgraph.Tensors(index).Buffer())
            sizes[names[op.OpcodeIndex()]] += buffer.DataLength() if buffer else 0
    return dict(sizes.most_common())


def format_op_counts(counts) -> str:
    """The op counts as an aligned two-column table."""
    width = max([len("op")] + [len(name) for name in counts])
    lines = [f"{'op':<{width}}  count", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {count:5d}" for name, count in counts.items()]
    lines.append(f"{'total':<{width}}  {sum(counts.values()):5d}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- binary check

def binary_conv_layers(model):
    """The Larq QuantConv2D layers of `model` that binarise their input."""
    return [layer for layer in model.submodules
            if isinstance(layer, lq.layers.QuantConv2D) and layer.input_quantizer is not None]


@dataclasses.dataclass
class Traced:
    """One trace of a model's inference call, shared by conversion, checks and predictions.

    `function` takes float32 images of any batch size; `frozen` is the same graph
    with the variables folded into constants (what the converters read).
    """

    model: tf.keras.Model
    function: object
    frozen: object


def trace(model) -> Traced:
    """Trace `model`'s inference (first output only) once."""
    if isinstance(model, Traced):
        return model
    model = inference_model(model)
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return Traced(model, function, convert_variables_to_constants_v2(function,
                                                                     lower_control_flow=False))


def live_binary_convs(model) -> int:
    """Binary convolutions (Conv2D fed by a sign) that reach the model's output.

    Counted on the traced inference graph: a cell whose s0 or s1 no edge reads
    (BNAS-A's reduction cell ignores s1) still builds its preprocess conv, which
    Keras counts but the converter rightly prunes.
    """
    frozen = trace(model).frozen
    nodes = {node.name: node for node in frozen.graph.as_graph_def().node}

    def producer(tensor_name):
        name, _, index = tensor_name.partition(":")
        return nodes[name], int(index or 0)

    live, stack = set(), [t.op.name for t in frozen.outputs]
    while stack:  # data edges only: control edges do not keep a conv alive
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        stack += [producer(i)[0].name for i in nodes[name].input if not i.startswith("^")]

    def fed_by_sign(node):
        tensor = node.input[0]
        while True:
            source, index = producer(tensor)
            if source.op not in _SIGN_PASSTHROUGH:
                return source.op == "Sign"
            tensor = source.input[index if source.op == "IdentityN" else 0]

    return sum(1 for name in live if nodes[name].op == "Conv2D" and fed_by_sign(nodes[name]))


def verify_binary(model, flatbuffer, counts=None) -> dict:
    """Check that every binary conv of `model` became one LceBconv2d op in `flatbuffer`.

    `model`: a Keras model or its `trace`. Returns {"binary_convs",
    "live_binary_convs", "bconv_ops", "float_conv_ops"}; raises ExportError naming
    the counts on a mismatch. Binary convs whose output is never used are pruned by
    the converter and not expected in the .tflite.
    """
    counts = op_counts(flatbuffer) if counts is None else counts
    keras_model = model.model if isinstance(model, Traced) else model
    keras_count = len(binary_conv_layers(keras_model))
    live = live_binary_convs(model) if keras_count else 0
    bconvs = counts.get(BCONV, 0)
    floats = sum(counts.get(op, 0) for op in FLOAT_CONVS)
    if bconvs != live:
        unused = f" ({keras_count - live} of them unused)" if keras_count != live else ""
        raise ExportError(
            f"the Keras model has {keras_count} binary convolutions{unused} but the .tflite "
            f"has {bconvs} {BCONV} ops for the {live} used ones (and {floats} float conv "
            "ops): some binary convs were not converted to LceBconv2d")
    return {"binary_convs": keras_count, "live_binary_convs": live, "bconv_ops": bconvs,
            "float_conv_ops": floats}


# ----------------------------------------------------------------------------- convert

def inference_model(model):
    """`model` with its first output only (drops a training-time auxiliary head)."""
    if len(model.outputs) > 1:
        return tf.keras.Model(model.inputs, model.outputs[0], name=model.name)
    return model


def _tensor_name(tensor):
    """A graph tensor's name as the TFLite converters take it (no ':0')."""
    return tensor.name[:-2] if tensor.name.endswith(":0") else tensor.name


def _lce_convert(traced):
    """LCE conversion of the frozen graph (float32 I/O, target arm, no int8 ranges).

    This is the graph path of ``lce.convert_keras_model``, called directly: the
    public function first saves a SavedModel and converts that, which costs most of
    the time (15 of 18 s for a 3-cell net) and fails for layers holding dicts of
    layers; it is still used when this LCE build lacks the graph entry point.
    """
    try:
        from larq_compute_engine.mlir._tf_tfl_flatbuffer import (
            convert_graphdef_to_tflite_flatbuffer)
    except ImportError:  # pragma: no cover - other LCE versions
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SAVED_MODEL_FALLBACK)
            return lce.convert_keras_model(traced.model, inference_input_type=tf.float32,
                                           inference_output_type=tf.float32,
                                           experimental_default_int8_range=None)
    frozen = traced.frozen
    inputs = [t for t in frozen.inputs if t.dtype != tf.resource]
    return convert_graphdef_to_tflite_flatbuffer(
        frozen.graph.as_graph_def().SerializeToString(),
        [_tensor_name(t) for t in inputs],
        [types_pb2.DataType.Name(t.dtype.as_datatype_enum) for t in inputs],
        [[1] + t.shape.as_list()[1:] for t in inputs],  # single-image batch
        [_tensor_name(t) for t in frozen.outputs],
        False,  # no training-time fake quantisation in these graphs
        "arm", None)


def convert(model, converter="lce") -> bytes:
    """The .tflite flatbuffer of `model` (a Keras model or its `trace`), float32 I/O.

    ``lce``: Larq Compute Engine (binary convs -> LceBconv2d); ``tflite``: the plain
    TensorFlow Lite converter (for float networks).
    """
    if converter not in CONVERTERS:
        raise ValueError(f"unknown converter {converter!r}; choose one of {', '.join(CONVERTERS)}")
    try:
        traced = trace(model)
        if converter == "tflite":
            return tf.lite.TFLiteConverter.from_concrete_functions([traced.frozen]).convert()
        return _lce_convert(traced)
    except Exception as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{converter} conversion failed: {message}") from e


# ----------------------------------------------------------------------------- run

def interpreter(flatbuffer, num_threads=1, xnnpack=False):
    """An LCE interpreter with the fastest x86 setting for binary convs (indirect BGEMM).

    Measured on 2 x86 cores, BNAS-A single image: indirect BGEMM 36 ms vs 318 ms for
    the default BGEMM kernels; XNNPack speeds up float-only networks (25 vs 30 ms)
    and not binary ones. One thread is the default: on a busy 2-core machine two
    threads are often slower. Falls back to the interpreter's defaults when this
    LCE build does not take the kernel-selection arguments.
    """
    threads = max(1, int(num_threads or 1))
    try:
        return Interpreter(flatbuffer, num_threads=threads, use_reference_bconv=False,
                           use_indirect_bgemm=True, use_xnnpack=xnnpack)
    except TypeError:
        return Interpreter(flatbuffer, num_threads=threads)


def predict_tflite(flatbuffer, images, num_threads=1, verbose=0):
    """Logits of the .tflite for a batch of NHWC float32 images (run one image at a time);
    `verbose` shows a Keras progress bar over the images (LCE's own tqdm bar, with no
    total, printed a stray ``0it [00:00, ?it/s]``)."""
    runner = interpreter(flatbuffer, num_threads)
    images = np.asarray(images, np.float32)
    bar = tf.keras.utils.Progbar(len(images), unit_name="image") if verbose else None
    outputs = []
    for image in images:
        out = runner.predict(image[None], verbose=0)
        outputs.append(out[0] if isinstance(out, list) else out)
        if bar is not None:
            bar.add(1)
    return np.concatenate(outputs)


def latency_ms(flatbuffer, runs=20, num_threads=1, warmup=3, xnnpack=False) -> float:
    """Median single-image inference time in ms through the LCE interpreter
    (`interpreter` settings; `xnnpack=True` is the faster choice for float twins)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    runner = interpreter(flatbuffer, num_threads, xnnpack)
    shape = tuple(runner.input_shapes[0])
    image = np.random.default_rng(0).normal(size=(1,) + shape[1:]).astype(np.float32)
    for _ in range(warmup):
        runner.predict(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.predict(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def compare(keras_logits, tflite_logits, atol=1e-3, rtol=1e-3) -> dict:
    """Top-1 agreement, max |logit difference| and the fraction of close samples."""
    keras_logits = np.asarray(keras_logits, np.float64)
    tflite_logits = np.asarray(tflite_logits, np.float64)
    if keras_logits.shape != tflite_logits.shape:
        raise ExportError(f"output shapes differ: Keras {keras_logits.shape}, "
                          f".tflite {tflite_logits.shape}")
    diff = np.abs(keras_logits - tflite_logits)
    per_sample = diff.reshape(len(diff), -1).max(axis=1)
    scale = np.abs(keras_logits).reshape(len(diff), -1).max(axis=1)
    return {"agreement": float(np.mean(keras_logits.argmax(-1) == tflite_logits.argmax(-1))),
            "max_abs_diff": float(diff.max()),
            "close_fraction": float(np.mean(per_sample <= atol + rtol * scale))}


def sample_images(model, samples=32, images=None, seed=0):
    """`samples` input images: taken from `images` (array or dataset of (x, y)
    batches) when given, else standard-normal noise of the model's input shape."""
    if images is None:
        shape = tuple(model.inputs[0].shape[1:])
        return np.random.default_rng(seed).normal(size=(samples,) + shape).astype(np.float32)
    if isinstance(images, tf.data.Dataset):
        batches, count = [], 0
        for batch in images:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            batches.append(np.asarray(x, np.float32))
            count += len(batches[-1])
            if count >= samples:
                break
        if not batches:
            raise ValueError("the sample dataset is empty")
        images = np.concatenate(batches)
    return np.asarray(images, np.float32)[:samples]


def data_samples(config, split, samples, image_size=None):
    """A dataset of about `samples` un-augmented images of `split` (bnas_tf.data),
    class-balanced unless `config.max_examples` says otherwise."""
    from bnas_tf import data
    overrides = {"augment": False, "batch_size": max(1, min(int(samples), 64))}
    if config.max_examples is None:
        overrides["max_examples"] = max(1, int(samples))
    if image_size is not None:
        overrides["image_size"] = int(image_size)
    return data.load(dataclasses.replace(config, **overrides), split, training=False)


# ----------------------------------------------------------------------------- files

def _load(model_or_dir):
    if isinstance(model_or_dir, (tf.keras.Model, Traced)):
        return model_or_dir
    if not isinstance(model_or_dir, (str, os.PathLike)):
        raise TypeError(f"expected a Keras model or a model directory, "
                        f"got {type(model_or_dir).__name__}")
    if not os.path.isdir(model_or_dir):
        raise FileNotFoundError(f"model directory not found: {os.fspath(model_or_dir)}")
    return model_dir_lib.load_model(os.fspath(model_or_dir))


def float_twin(model_dir, load_weights=True) -> tf.keras.Model:
    """The network of `model_dir` with float convolutions (binarization FLOAT).

    With `load_weights` the trained (latent) weights are copied in when present, so
    the twin has the same parameters; its size does not depend on them.
    """
    spec, num_classes, image_size, _ = model_dir_lib.read_spec(os.fspath(model_dir))
    model = models.build(spec, num_classes, image_size, binarization=binary.FLOAT)
    weights = model_dir_lib.path(os.fspath(model_dir), model_dir_lib.WEIGHTS)
    if load_weights and os.path.isfile(weights):
        model_dir_lib.load_weights(model, weights)
    return model


def export(model_or_dir, output=None, *, samples=32, images=None,
           min_agreement=DEFAULT_MIN_AGREEMENT, converter="lce", num_threads=1,
           latency_runs=0, seed=0, verbose=0) -> ExportReport:
    """Convert, verify and (when `output` is given) atomically write a .tflite.

    `model_or_dir`: a Keras model or a model directory (spec.json + weights.h5).
    `images`: sample inputs (array, or dataset of (images, labels) batches); default
    `samples` standard-normal images. `samples=0` skips the agreement check.
    Raises ExportError (nothing written) when a binary conv was not converted to
    LceBconv2d or the top-1 agreement is below `min_agreement`.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
    traced = trace(_load(model_or_dir))
    flatbuffer = convert(traced, converter)
    counts = op_counts(flatbuffer)
    binary_counts = verify_binary(traced, flatbuffer, counts)
    report = ExportReport(path=None, bytes=len(flatbuffer), op_counts=counts, agreement=None,
                          max_abs_diff=None, flatbuffer=flatbuffer, **binary_counts)
    if samples:
        x = sample_images(traced.model, samples, images, seed)
        keras_logits = np.concatenate([traced.function(tf.constant(x[i:i + 32])).numpy()
                                       for i in range(0, len(x), 32)])
        result = compare(keras_logits, predict_tflite(flatbuffer, x, num_threads, verbose))
        report = dataclasses.replace(report, samples=len(x), **result)
        if result["agreement"] < min_agreement:
            raise ExportError(
                f"the .tflite agrees with Keras on only {result['agreement']:.1%} of "
                f"{len(x)} samples (top-1; minimum {min_agreement:.1%}, "
                f"max |logit diff| {result['max_abs_diff']:.3g})")
    if latency_runs:
        report.latency_ms = latency_ms(flatbuffer, latency_runs, num_threads,
                                       xnnpack=report.bconv_ops == 0)
    if output is not None:
        report.path = files.write_atomic(output, flatbuffer)
    return report


def randomize_batchnorm(model, seed=0):
    """`model` with BN statistics and affine parameters as after training (random,
    seeded): an untrained net has identical BNs, which the converter may merge, so
    exporting it would not test what a trained net exports (tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.built:
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.3, n))
    return model
