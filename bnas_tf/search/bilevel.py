"""Bilevel (DARTS) optimisation as a Keras model: one custom `train_step`, any supernet.

`BilevelModel` wraps a supernet `net` (the `bnas_tf.search.Supernet` Protocol;
`SupernetBase` gives the defaults of its optional parts), a Keras model that

* maps images to logits: ``net(x, training=...)``;
* lists its architecture variables in the property ``net.arch_variables``
  (every other trainable variable of `net` is a weight);
* gives the architecture loss ``net.arch_loss(ce, reg, epoch)`` from the validation
  CE and its regulariser ``reg = net.arch_regularization(epoch)`` (default
  ``ce + reg``; BNAS: the diversity regulariser; BARS: the entropy term and a
  multiplicative FLOPs budget);
* may share tensors that depend only on its weights between the two passes of a
  first-order step: ``net.precompute()``, passed back as ``net(x, precomputed=...)``.

Each training step takes ``((x_train, y_train), (x_val, y_val))`` and

1. updates the architecture variables on the VALIDATION batch:
   loss = CE_val + arch_regularization(epoch), gradients only w.r.t. the
   architecture variables, plus L2 decay ``a_wd * alpha`` (DARTS' Adam weight_decay);
   first order, or with ``order=2`` DARTS' unrolled gradient (virtual step
   w' = w - xi * grad_w L_train, finite-difference Hessian-vector product with
   eps = 0.01 / ||grad_w' L_val||, xi = the current weight learning rate);
   skipped while the ``alpha_update`` flag is off (BARS' warm-up);
2. updates the weights on the TRAINING batch (with the just-updated alphas):
   loss = CE_train, gradients only w.r.t. the weights, clipped to global norm
   `grad_clip` after cross-replica aggregation, plus L2 decay ``w_wd * w``.

Losses are per-example cross entropies averaged with `tf.nn.compute_average_loss`
(and regularisers scaled by `tf.nn.scale_regularization_loss`), gradients are
summed across replicas explicitly, so the step is correct under tf.distribute
strategies (build and compile inside ``strategy.scope()``). ``order=2`` needs a
single replica (it assigns virtual weights in place).
"""
from __future__ import annotations

import bnas_tf  # noqa: F401
import tensorflow as tf

from bnas_tf import grappler


def cross_entropy(labels, logits):
    """Per-example sparse softmax cross entropy (float32)."""
    return tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def _all_reduce(grads):
    """Sum per-replica gradients across replicas (a no-op on one replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(grads)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))


def _tape():
    """A gradient tape that watches only what the caller `watch`es inside it (the
    step's other variables are not differentiated: their backward ops are not even
    traced)."""
    return tf.GradientTape(watch_accessed_variables=False)


class SupernetBase(tf.keras.Model):
    """The defaults of a supernet's optional parts (the `bnas_tf.search.Supernet`
    Protocol): no regulariser, alpha loss = CE + regulariser, nothing precomputed,
    variables created by a first call, no random generator to checkpoint (`rng`)."""

    rng = None  # a tf.random.Generator the runner checkpoints (BARS' Gumbel noise)

    @property
    def arch_variables(self):
        raise NotImplementedError("a supernet lists its architecture variables")

    def arch_regularization(self, epoch):
        del epoch
        return tf.constant(0.0)

    def arch_loss(self, ce, reg, epoch):
        """`ce`: the replica-scaled validation CE; `reg` is scaled for tf.distribute
        like any regulariser."""
        del epoch
        return ce + tf.nn.scale_regularization_loss(reg)

    def precompute(self):
        return None

    def build_from_shape(self, input_shape):
        del input_shape
        return False


def _dense(grads, variables):
    """Replace missing gradients by zeros and IndexedSlices by dense tensors."""
    return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)]


class BilevelModel(tf.keras.Model):
    """A supernet trained by alternating architecture and weight steps.

    Args:
      net: the supernet (see the module docstring for the interface).
      order: 1 (first order, default) or 2 (DARTS' unrolled second order).
      w_wd: L2 weight decay of the weights (added to their gradient, after clipping).
      a_wd: L2 weight decay of the architecture variables.
      grad_clip: global-norm clip of the weight gradients (None or 0 = off).
      lean_grappler: optimise the traced step with `grappler.lean` (engine knob).
    """

    def __init__(self, net, order=1, w_wd=3e-4, a_wd=1e-3, grad_clip=5.0, lean_grappler=True,
                 name="bilevel", **kwargs):
        super().__init__(name=name, **kwargs)
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        self.net = net
        self.order = order
        self.w_wd, self.a_wd, self.grad_clip = float(w_wd), float(a_wd), grad_clip
        self.lean_grappler = bool(lean_grappler)
        self.epoch = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="epoch")
        self.alpha_update = tf.Variable(True, trainable=False, dtype=tf.bool,
                                        name="alpha_update")
        self.loss_tracker = tf.keras.metrics.Mean("loss")
        self.accuracy = tf.keras.metrics.SparseCategoricalAccuracy("accuracy")
        self.arch_loss_tracker = tf.keras.metrics.Mean("arch_loss")
        self.arch_reg_tracker = tf.keras.metrics.Mean("arch_reg")
        self.w_optimizer = self.a_optimizer = None
        self._alpha_step_on = True  # the traced step's copy of alpha_update

    # ------------------------------------------------------------------ variables
    @property
    def arch_variables(self):
        return list(self.net.arch_variables)

    @property
    def weight_variables(self):
        arch = {v.ref() for v in self.arch_variables}
        return [v for v in self.net.trainable_variables if v.ref() not in arch]

    def build_net(self, image_size, channels=3):
        """Create the supernet's variables (call inside the strategy scope): from the
        input shape when the net's ``build_from_shape(shape)`` succeeds, else by one
        call on a batch of zeros."""
        if not self.net.built:
            shape = [1, image_size, image_size, channels]
            if not self.net.build_from_shape(shape):  # else a forward pass builds it
                self.net(tf.zeros(shape), training=False)
        return self

    def call(self, inputs, training=None):
        return self.net(inputs, training=training)

    # ------------------------------------------------------------------ compile
    def compile(self, w_optimizer, a_optimizer, **kwargs):
        """`w_optimizer` updates the weights, `a_optimizer` the architecture variables.

        Use tf.keras.optimizers.legacy optimizers. Build the net first
        (`build_net`) so the optimizers' slots can be created eagerly here.
        """
        self._check_order()
        # test_step weights its own loss and accuracy trackers (the padded validation
        # rows of a multi-replica search weigh 0); weighted_metrics=[] says so to
        # Keras, which otherwise warns that the sample weights reach no metric.
        kwargs.setdefault("weighted_metrics", [])
        super().compile(optimizer=w_optimizer, **kwargs)
        self.w_optimizer, self.a_optimizer = w_optimizer, a_optimizer
        if self.net.built:
            self.create_optimizer_slots()

    def _check_order(self):
        if self.order == 2 and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise ValueError("second-order search (order=2) runs on a single device only; "
                             "use order=1 with a multi-device strategy")

    def create_optimizer_slots(self):
        """Create both optimizers' slots now (before tracing; needed for checkpoint restore)."""
        for opt, variables in ((self.w_optimizer, self.weight_variables),
                               (self.a_optimizer, self.arch_variables)):
            if hasattr(opt, "_create_all_weights"):
                with tf.name_scope(opt._name):
                    opt._create_all_weights(variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy, self.arch_loss_tracker,
                self.arch_reg_tracker]

    def set_alpha_update(self, enabled):
        """Turn architecture updates on/off (BARS warm-up). Turning them back on
        restarts the alpha optimizer's step count, so Adam starts afresh."""
        enabled = bool(enabled)
        if enabled and not bool(self.alpha_update.numpy()) and self.a_optimizer is not None:
            self.a_optimizer.iterations.assign(0)
        self.alpha_update.assign(enabled)
        self._alpha_step_on = enabled

    def set_epoch(self, epoch):
        self.epoch.assign(float(epoch))

    # ------------------------------------------------------------------ losses
    def _ce(self, x, y, training=True, precomputed=None):
        logits = (self.net(x, training=training) if precomputed is None
                  else self.net(x, training=training, precomputed=precomputed))
        per_example = cross_entropy(y, logits)
        return tf.nn.compute_average_loss(per_example), per_example, logits

    def _arch_loss(self, x_val, y_val, precomputed=None):
        """Scaled loss for the alpha step (``net.arch_loss``), the unscaled CE and the
        regulariser."""
        ce, per_example, _ = self._ce(x_val, y_val, precomputed=precomputed)
        reg = tf.cast(self.net.arch_regularization(self.epoch), tf.float32)
        loss = self.net.arch_loss(ce, reg, self.epoch)
        return loss, tf.reduce_mean(per_example), reg

    def _train_loss_grads(self, x, y, variables):
        with _tape() as tape:
            tape.watch(variables)
            loss, _, _ = self._ce(x, y)
        return _all_reduce(_dense(tape.gradient(loss, variables), variables))

    # ------------------------------------------------------------------ alpha step
    def _first_order_arch_grads(self, x_train, y_train, x_val, y_val, precomputed=None):
        alphas = self.arch_variables
        with _tape() as tape:
            tape.watch(alphas)
            loss, ce, reg = self._arch_loss(x_val, y_val, precomputed)
        grads = _dense(tape.gradient(loss, alphas), alphas)
        return grads, ce, reg

    def _second_order_arch_grads(self, x_train, y_train, x_val, y_val, precomputed=None):
        del precomputed  # the virtual steps change the weights: computed anew each pass
        alphas, weights = self.arch_variables, self.weight_variables
        xi = self._w_lr()
        # Virtual step w' = w - xi * grad_w L_train(w, alpha) (with the L2 term).
        g_train = self._train_loss_grads(x_train, y_train, weights)
        backup = [tf.identity(w) for w in weights]
        for w, g, w0 in zip(weights, g_train, backup):
            w.assign(w0 - xi * (g + self.w_wd * w0))
        with _tape() as tape:
            tape.watch(alphas + weights)
            loss, ce, reg = self._arch_loss(x_val, y_val)
        grads = _all_reduce(_dense(tape.gradient(loss, alphas + weights), alphas + weights))
        d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
        eps = 0.01 / (tf.linalg.global_norm(d_w) + 1e-12)
        # Hessian-vector product by central differences around the original w.
        hessian = []
        for sign in (1.0, -1.0):
            for w, w0, d in zip(weights, backup, d_w):
                w.assign(w0 + sign * eps * d)
            hessian.append(self._train_loss_grads(x_train, y_train, alphas))
        for w, w0 in zip(weights, backup):
            w.assign(w0)
        grads = [da - xi * (hp - hm) / (2.0 * eps)
                 for da, hp, hm in zip(d_alpha, hessian[0], hessian[1])]
        return grads, ce, reg

    def _w_lr(self):
        opt = self.w_optimizer
        if hasattr(opt, "_decayed_lr"):
            return opt._decayed_lr(tf.float32)
        lr = opt.learning_rate
        return tf.cast(lr(opt.iterations) if callable(lr) else lr, tf.float32)

    def _arch_step(self, x_train, y_train, x_val, y_val, precomputed=None):
        alphas = self.arch_variables
        if self.order == 2:
            self._check_order()
            grads, ce, reg = self._second_order_arch_grads(x_train, y_train, x_val, y_val)
        else:
            grads, ce, reg = self._first_order_arch_grads(x_train, y_train, x_val, y_val,
                                                          precomputed)
            grads = _all_reduce(grads)
        grads = [g + self.a_wd * a for g, a in zip(grads, alphas)]
        update = self.a_optimizer.apply_gradients(zip(grads, alphas),
                                                  experimental_aggregate_gradients=False)
        return ce, reg, update

    # ------------------------------------------------------------------ weight step
    def _weight_step(self, x, y, tape=None, precomputed=None):
        weights = self.weight_variables
        tape = tape if tape is not None else _tape()
        with tape:
            tape.watch(weights)
            loss, per_example, logits = self._ce(x, y, precomputed=precomputed)
        grads = _all_reduce(_dense(tape.gradient(loss, weights), weights))
        if self.grad_clip:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip)
        if self.w_wd:
            grads = [g + self.w_wd * w for g, w in zip(grads, weights)]
        self.w_optimizer.apply_gradients(zip(grads, weights),
                                         experimental_aggregate_gradients=False)
        return per_example, logits

    def train_step(self, data):
        """One bilevel step. In first order the net's ``precompute()`` (BNAS' fused cells:
        the quantised binary kernels) runs once, recorded on the weight step's tape,
        and is shared by the alpha and weight passes (the weights do not change in
        between). The
        alpha step is left out while `alpha_update` is off: eagerly read from the
        variable, in a traced step from its Python copy, which `set_alpha_update` and
        the train function (`make_train_function`) keep in sync."""
        (x_train, y_train), (x_val, y_val) = data
        tape, precomputed = _tape(), None
        if self.order == 1:
            with tape:
                tape.watch(self.weight_variables)
                precomputed = self.net.precompute()
        on = bool(self.alpha_update.numpy()) if tf.executing_eagerly() else self._alpha_step_on
        if on:
            arch_ce, reg, update = self._arch_step(x_train, y_train, x_val, y_val, precomputed)
            # the weight pass starts after the alpha step: its first layers (which do
            # not read the alphas) would otherwise run during the alpha pass and add
            # their activations to its peak memory
            with tf.control_dependencies([update]):
                x_train = tf.identity(x_train)
        else:
            arch_ce, reg = tf.constant(0.0), tf.constant(0.0)
        per_example, logits = self._weight_step(x_train, y_train, tape, precomputed)
        self.loss_tracker.update_state(per_example)
        self.accuracy.update_state(y_train, logits)
        self.arch_loss_tracker.update_state(arch_ce)
        self.arch_reg_tracker.update_state(reg)
        return {m.name: m.result() for m in self.metrics}

    def make_train_function(self, force=False):
        """Keras' train function, traced once per value of the `alpha_update` flag
        (read before every step): a step without the alpha step while it is off (BARS'
        warm-up) instead of a graph-level conditional around it, which would add its
        lowering and a switch per captured tensor to every step's graph. Its calls are
        optimised with `grappler.lean` (seconds less at the first step)."""
        if self.train_function is not None and not force:
            return self.train_function
        functions = {}

        def train_function(iterator):
            on = bool(self.alpha_update.numpy())
            self._alpha_step_on = on  # read while (re)tracing
            if on not in functions:
                functions[on] = super(BilevelModel, self).make_train_function(force=True)
                self.train_function = train_function
            if not self.lean_grappler:
                return functions[on](iterator)
            with grappler.lean():
                return functions[on](iterator)

        self.train_function = train_function
        return train_function

    def evaluate(self, *args, **kwargs):
        """Keras' evaluate, reporting the aggregated `loss` and `accuracy` metrics (see
        `get_metrics_result`)."""
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def get_metrics_result(self):
        """The metrics' results; while evaluating only those `test_step` reports. With
        the same keys as the step's logs Keras returns these metric results, which
        aggregate every replica and worker; otherwise it would reduce the step's
        per-replica logs, and multi-worker strategies SUM them (a 2-worker search
        reported twice its validation loss and accuracy)."""
        results = super().get_metrics_result()
        if getattr(self, "_evaluating", False):
            results = {k: results[k] for k in ("loss", "accuracy")}
        return results

    def test_step(self, data):
        """Validation loss/accuracy; an optional third element weights the examples
        (0 for the padding of `scoring.pad_batches` under a distribution strategy)."""
        x, y = data[:2] if isinstance(data, (tuple, list)) else data
        weight = data[2] if isinstance(data, (tuple, list)) and len(data) > 2 else None
        logits = self.net(x, training=False)
        self.loss_tracker.update_state(cross_entropy(y, logits), sample_weight=weight)
        self.accuracy.update_state(y, logits, sample_weight=weight)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy.result()}


def cosine_schedule(lr, lr_min, epochs, steps_per_epoch):
    """DARTS' per-epoch cosine annealing from `lr` to `lr_min` as a step schedule."""
    return EpochCosine(lr, lr_min, epochs, steps_per_epoch)


class EpochCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """lr(epoch) = lr_min + (lr - lr_min) * (1 + cos(pi * epoch / epochs)) / 2, constant
    within an epoch (PyTorch CosineAnnealingLR stepped once per epoch)."""

    def __init__(self, lr, lr_min, epochs, steps_per_epoch):
        self.lr, self.lr_min = float(lr), float(lr_min)
        self.epochs, self.steps_per_epoch = int(epochs), max(1, int(steps_per_epoch))

    def __call__(self, step):
        epoch = tf.floor(tf.cast(step, tf.float32) / float(self.steps_per_epoch))
        epoch = tf.minimum(epoch, float(self.epochs))
        cos = 0.5 * (1.0 + tf.cos(3.141592653589793 * epoch / float(self.epochs)))
        return self.lr_min + (self.lr - self.lr_min) * cos

    def get_config(self):
        return {"lr": self.lr, "lr_min": self.lr_min, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}


def make_optimizers(config, steps_per_epoch):
    """DARTS' optimizers from a SearchConfig: SGD (cosine lr, momentum) for the weights,
    Adam (betas a_beta1/a_beta2) for the architecture. Weight decay and clipping are
    applied by BilevelModel, not by the optimizers."""
    w_opt = tf.keras.optimizers.legacy.SGD(
        cosine_schedule(config.w_lr, config.w_lr_min, config.epochs, steps_per_epoch),
        momentum=config.w_momentum, name="w_sgd")
    a_opt = tf.keras.optimizers.legacy.Adam(config.a_lr, beta_1=config.a_beta1,
                                            beta_2=config.a_beta2, epsilon=1e-8,
                                            name="a_adam")
    return w_opt, a_opt


def build(net, config, steps_per_epoch, image_size, engine=None, optimizers=None):
    """A compiled BilevelModel for `net` and a SearchConfig (call inside strategy.scope()):
    `optimizers` (w_optimizer, a_optimizer) default to DARTS' (`make_optimizers`);
    `engine`: an engine.EngineConfig (its ``lean_grappler``)."""
    model = BilevelModel(net, order=config.order, w_wd=config.w_wd, a_wd=config.a_wd,
                         grad_clip=config.grad_clip,
                         lean_grappler=True if engine is None else engine.lean_grappler)
    model.build_net(image_size)
    w_opt, a_opt = optimizers or make_optimizers(config, steps_per_epoch)
    model.compile(w_opt, a_opt)
    return model
