"""Bi-Real Net, ReActNet-A and QuickNet: published costs, forward pass, LCE export, presets."""
import bnas_tf  # noqa: F401
import larq as lq
import pytest
import tensorflow as tf

from bnas_tf import binary, compare, costs, export, models, report
from bnas_tf.models import birealnet, presets, quicknet, reactnet

ZOO = sorted({**birealnet.PRESETS, **reactnet.PRESETS, **quicknet.PRESETS})
SMALL_CHANNELS = {"birealnet": 4, "reactnet": 2, "quicknet": 8}

# The published figures, with their source. OPs = FLOPs + BiOPs / 64 (the Bi-Real and
# ReActNet papers); FLOPs/BiOPs are multiply-accumulates (docs/costs.md). larq-zoo's
# "Parameters" are Keras' count_params(): BN moving statistics and fixed kernels included.
PUBLISHED = {
    # Bi-Real Net paper (and ReActNet's comparison table): BOPs 1.68e9, FLOPs 1.39e8, OPs 1.63e8;
    # larq-zoo docs (literature.BiRealNet): 11,699,112 parameters.
    "birealnet18": {"biops": 1.68e9, "flops": 1.39e8, "equivalent_ops": 1.63e8,
                    "total_params": 11_699_112},
    # ReActNet paper (ReActNet-A): BOPs 4.82e9, FLOPs 0.12e8, OPs 0.87e8.
    "reactnet-a": {"biops": 4.82e9, "flops": 0.12e8, "equivalent_ops": 0.87e8},
    # larq-zoo docs (sota.QuickNet / sota.QuickNetSmall, v1.0): 13,234,088 / 12,655,688.
    "quicknet": {"total_params": 13_234_088},
    "quicknet-small": {"total_params": 12_655_688},
}


def small_spec(name):
    spec = presets.get(name)
    spec["channels"] = SMALL_CHANNELS[spec["family"]]
    return spec


def binary_convs(model):
    return [layer for layer in model.submodules
            if isinstance(layer, lq.layers.QuantConv2D) and costs.is_binary_layer(layer)]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_costs_match_the_published_figures(name):
    c = costs.count_spec(name, 1000, 224)
    for key, published in PUBLISHED[name].items():
        assert getattr(c, key) == pytest.approx(published, rel=0.02), key
    assert c.equivalent_ops == c.flops + c.biops / 64
    # ReActNet-A keeps only the stem and classifier float; Bi-Real's downsampling 1x1
    # convs and QuickNet's transition blocks are float convs between binary ones.
    assert c.fully_binarized == (name == "reactnet-a")


def test_cifar_forms_keep_32_px_and_10_classes():
    for name in ("birealnet18-cifar", "reactnet-a-cifar"):
        model = models.build(small_spec(name), 10, 32)
        assert model.output_shape == (None, 10)
        first_binary = binary_convs(model)[0]
        assert first_binary.input.shape[1] == 32  # the CIFAR stem keeps full resolution
        imagenet = models.build(small_spec(name.replace("-cifar", "")), 10, 32)
        assert binary_convs(imagenet)[0].input.shape[1] < 32
    bireal = costs.count_spec("birealnet18-cifar", 10, 32)
    assert bireal.biops == pytest.approx(547.4e6, rel=0.01)  # ResNet-18's binary convs


# Binary convs per network: Bi-Real-18 has 16 (one per block), ReActNet-A 13 3x3 convs
# plus 8 single and 5 doubled 1x1 convs, QuickNet 4 sections x 4 blocks.
BINARY_CONVS = {"birealnet": 16, "reactnet": 31, "quicknet": 16}


@pytest.mark.parametrize("name", ZOO)
def test_forward_pass_and_gradients_at_small_size(name):
    spec = small_spec(name)
    model = models.build(spec, num_classes=5, image_size=32)
    assert len(binary_convs(model)) == BINARY_CONVS[spec["family"]]
    images = tf.random.normal((2, 32, 32, 3))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            tf.constant([1, 3]), logits, from_logits=True))
    assert logits.shape == (2, 5)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    for conv in binary_convs(model):  # LCE-convertible binary convs
        assert conv.pad_values == 1.0 and not conv.use_bias
    aux = models.build(spec, num_classes=5, image_size=32, auxiliary=True)
    assert [o.shape[-1] for o in aux.outputs] == [5, 5]


@pytest.mark.parametrize("name", ["birealnet18", "reactnet-a", "quicknet"])
def test_exports_every_binary_conv_as_lce_bconv2d(name):
    spec = small_spec(name)
    model = models.build(spec, num_classes=5, image_size=32)
    result = export.export(model, samples=4, min_agreement=0.0)
    assert result.bconv_ops == BINARY_CONVS[spec["family"]] == len(binary_convs(model))
    assert result.bconv_ops == result.live_binary_convs


def test_float_twin_and_refused_settings():
    spec = small_spec("reactnet-a")
    twin = models.build(spec, 5, 32, binarization=binary.FLOAT)
    assert not binary_convs(twin)
    assert costs.count(twin).biops == 0
    for name in ("birealnet18", "reactnet-a", "quicknet"):
        with pytest.raises(ValueError, match="own quantizers"):
            models.build(dict(small_spec(name), binarization="bars"), 5, 32)
        with pytest.raises(ValueError, match="own quantizers"):
            models.build(small_spec(name), 5, 32, binarization="binarynet")
        for key, value in (("cells", 8), ("residual", "binary"), ("genotype", "bnas_a")):
            with pytest.raises(ValueError, match=f"no cells, so no '{key}'"):
                models.build(dict(small_spec(name), **{key: value}), 5, 32)
    with pytest.raises(ValueError, match="stem"):
        models.build(dict(small_spec("quicknet"), stem="cifar"), 5, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        models.build(dict(small_spec("quicknet"), channels=6), 5, 32)
    with pytest.raises(ValueError, match="depth"):
        models.build(dict(small_spec("birealnet18"), depth=50), 5, 32)


def test_presets_resolve_in_train_and_compare_paths():
    from absl import flags as absl_flags
    from flags import model as model_flags
    flag_values = absl_flags.FLAGS
    flag_values.unparse_flags()
    try:
        flag_values(["train", "--preset=birealnet18-cifar", "--channels=8"])
        spec = model_flags.spec_from_flags()
    finally:
        flag_values.unparse_flags()
    assert spec["family"] == "birealnet" and spec["channels"] == 8
    assert spec["name"] == "birealnet18-cifar"
    assert models.build(spec, 10, 32).get_layer("stem_conv").filters == 8
    for name in ZOO:
        assert name in presets.names()
        assert compare.model_spec(name)["name"] == name
        kind = report.dataset_kind(presets.get(name))
        assert kind == ("cifar" if name.endswith("-cifar") else "imagenet")


def test_report_shows_published_accuracy_with_its_source():
    refs = {name: report.paper_references(name, presets.resolve(preset=name)) for name in ZOO}
    assert [(r.top1, r.top5, r.source) for r in refs["birealnet18"]] == [(56.4, 79.5, "BNAS T7")]
    assert [(r.top1, r.source, r.eq_ops) for r in refs["reactnet-a"]] == [
        (69.4, "ReActNet", "87")]
    assert [r.top1 for r in refs["quicknet"]] == [63.3]
    assert [r.top1 for r in refs["quicknet-small"]] == [59.4]
    assert refs["birealnet18-cifar"] == () and refs["reactnet-a-cifar"] == ()
    # a resized network gets no paper figure
    assert report.paper_references("quicknet", small_spec("quicknet")) == ()


def test_train_tool_then_export_birealnet18_cifar(cifar_dir, tmp_path, capsys):
    """tools/train.py --preset=birealnet18-cifar (reduced), then LCE export of its directory."""
    from absl import flags as absl_flags
    from tools import train as tool
    out = tmp_path / "bireal"
    flag_values = absl_flags.FLAGS
    flag_values.unparse_flags()
    try:
        flag_values(["train.py", "--preset=birealnet18-cifar", "--channels=4",
                     "--recipe=adam_cosine", "--epochs=1", "--dataset=folder",
                     f"--data_dir={cifar_dir}", "--max_examples=32", "--batch_size=16",
                     f"--output_dir={out}", "--progress=none"])
        tool.main(["train.py"])
    finally:
        flag_values.unparse_flags()
    assert '"top1"' in capsys.readouterr().out
    result = export.export(str(out), samples=4, min_agreement=0.0)
    assert result.bconv_ops == BINARY_CONVS["birealnet"] == result.live_binary_convs
    twin = export.float_twin(str(out))  # what tools/export.py --float_twin builds
    assert not binary_convs(twin) and costs.count(twin).params == costs.count(
        models.build(presets.resolve("birealnet18-cifar", channels=4), 10, 32)).params


@pytest.mark.slow  # full 224-px networks: ~15-40 s of conversion each
@pytest.mark.parametrize("name", ["birealnet18", "reactnet-a", "quicknet"])
def test_full_size_imagenet_networks_export_with_lce_bconv2d(name):
    model = models.build(name, 1000, 224)
    result = export.export(model, samples=4)  # the default top-1 agreement check too
    family = presets.get(name)["family"]
    assert result.bconv_ops == len(binary_convs(model)) == BINARY_CONVS[family]
