"""grappler.lean: the search step's Grappler settings, scoped to the calls inside it."""
import contextlib

import bnas_tf  # noqa: F401
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

from bnas_tf import grappler
from bnas_tf.search import bilevel


def _rewrite_options():
    config = config_pb2.ConfigProto()
    config.ParseFromString(context.context().function_call_options.config_proto_serialized)
    return config


def test_lean_sets_the_rewriter_options_and_restores_them():
    before = _rewrite_options()
    assert before.graph_options.rewrite_options.meta_optimizer_iterations != grappler._RC.ONE
    with grappler.lean():
        inside = _rewrite_options()
        assert tf.function(lambda x: 2 * x)(tf.constant(3.0)).numpy() == 6.0
    for name, value in grappler.LEAN.items():
        assert getattr(inside.graph_options.rewrite_options, name) == value
    # everything else (soft placement, threads, other optimisers) is the caller's
    inside.graph_options.rewrite_options.Clear()
    expected = config_pb2.ConfigProto()
    expected.CopyFrom(before)
    expected.graph_options.rewrite_options.Clear()
    assert inside == expected
    assert _rewrite_options() == before


def test_lean_restores_the_options_after_an_error():
    before = _rewrite_options()
    with pytest.raises(RuntimeError, match="boom"):
        with grappler.lean():
            raise RuntimeError("boom")
    assert _rewrite_options() == before


def test_bilevel_train_function_runs_inside_lean(monkeypatch):
    """Every call of the bilevel train function runs under `grappler.lean` (the
    options seen inside the call are the lean ones)."""
    seen = []
    real = grappler.lean

    @contextlib.contextmanager
    def recording():
        with real():
            seen.append(_rewrite_options().graph_options.rewrite_options.meta_optimizer_iterations)
            yield

    monkeypatch.setattr(bilevel.grappler, "lean", recording)
    class Net(bilevel.SupernetBase):
        def __init__(self):
            super().__init__()
            self.dense = tf.keras.layers.Dense(3)
            self.alpha = tf.Variable(tf.zeros([3]), name="alpha")  # unused: zero gradient

        @property
        def arch_variables(self):
            return [self.alpha]

        def call(self, x, training=None):
            return self.dense(x)

    net = Net()
    net(tf.ones([1, 5]))
    model = bilevel.BilevelModel(net, w_wd=0.0, a_wd=0.0)
    model.compile(tf.keras.optimizers.legacy.SGD(0.1), tf.keras.optimizers.legacy.SGD(0.1))
    batch = ((tf.ones([4, 5]), tf.constant([0, 1, 2, 0])),) * 2
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    train_function = model.make_train_function()
    for _ in range(2):
        train_function(iterator)
    assert seen == [grappler._RC.ONE] * 2
