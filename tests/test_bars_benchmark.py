"""benchmarks/bars.py: MACs are counted from the traced graph (convs, depthwise convs,
matmuls), the same for both cell implementations; no timing is asserted."""
import pathlib
import sys

import bnas_tf  # noqa: F401
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import bars  # noqa: E402
from benchmarks import config as bench_config  # noqa: E402
from benchmarks import search as bench_search  # noqa: E402


def test_graph_macs_counts_convs_depthwise_convs_and_matmuls():
    @tf.function
    def f(x):
        y = tf.nn.conv2d(x, tf.ones([3, 3, 4, 6]), 2, "SAME")              # 8x8 -> 4x4
        z = tf.nn.depthwise_conv2d(y, tf.ones([3, 3, 6, 1]), [1, 1, 1, 1], "SAME")
        return tf.matmul(tf.reshape(z, [2, -1]), tf.ones([96, 10]))
    graph = f.get_concrete_function(tf.TensorSpec([2, 8, 8, 4])).graph
    expected = 2 * 4 * 4 * 6 * (3 * 3 * 4) + 2 * 4 * 4 * 6 * 9 + 2 * 10 * 96
    assert bars.graph_macs(graph) == expected


def test_bars_step_macs_follow_the_supernet_and_not_the_cell():
    """The BARS supernet's MACs per step: 5 forward passes of every candidate conv,
    counted on the reference cell whatever engine runs the step; doubling the batch
    doubles them."""
    config = bench_config.quick_config()
    search = bench_search.bars_search_config(config)
    small = bars.gmac_per_step("bars", search, config.image_size)
    twice = bars.gmac_per_step("bars", search.__class__.from_dict(
        {**search.to_dict(), "batch_size": 2 * search.batch_size}), config.image_size)
    assert small > 0 and abs(twice - 2 * small) < 1e-5 * twice  # (+ the masks' matvecs)
    # the binary 3x3 convs alone: per cell 1 + 10 of them at C x C (stage widths, full)
    net_macs = small * 1e9 / bars.STEP_PASSES / search.batch_size
    channels = search.settings.base_channels
    size = config.image_size
    convs = sum(11 * (1 + search.settings.max_depth) * (size >> i) ** 2 * 9 * c * c
                for i, c in enumerate(channels))
    assert net_macs > convs
