"""Every hand-crafted baseline exports through LCE with each binary conv as LceBconv2d."""
import bnas_tf  # noqa: F401
import pytest
import tensorflow as tf

from bnas_tf import costs, export, models
from bnas_tf.models import baselines
from tests.test_baselines import small_spec


@pytest.mark.parametrize("name", sorted(baselines.BASELINE_PRESETS))
def test_baseline_exports_with_lce_bconv2d(name):
    model = models.build(small_spec(name), num_classes=5, image_size=32)
    report = export.export(model, samples=4, min_agreement=0.0)
    assert report.bconv_ops > 0
    assert report.bconv_ops == report.live_binary_convs  # none left as a float conv
    # the .tflite holds exactly the Keras model's float convs (stem, float shortcuts), no more
    float_convs = [m for m in model.submodules if isinstance(m, tf.keras.layers.Conv2D)
                   and not costs.is_binary_layer(m)]
    assert report.float_conv_ops == len(float_convs)
    if small_spec(name)["arch"] == "resnet":  # float downsampling adds float 1x1 convs
        binary_downsample = small_spec(name).get("downsample", "float") != "float"
        assert binary_downsample == (len(float_convs) == 1)
