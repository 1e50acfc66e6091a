"""Training final networks: the training loop, losses, callbacks, checkpoint/resume,
evaluation. The recipes, schedules and optimizers are in bnas_tf.recipes.

`train(spec, data_config, train_config, output_dir)` builds the network inside a
distribution strategy, trains it with Keras ``model.fit`` and fills a model
directory (see bnas_tf.model_dir): spec.json, ckpt/ (model + optimizer + epoch,
saved after every epoch: rerunning the same command resumes), logs/ (TensorBoard),
weights.h5 + saved_model/ and metrics.json.

Weight decay is an L2 penalty ``weight_decay / 2 * sum(kernel ** 2)`` over every
conv/dense kernel (BatchNorm parameters and biases excluded) added to the loss, so
its gradient is ``weight_decay * kernel`` as in PyTorch's SGD(weight_decay=...).
Batch size and cutout are training-recipe values: `train` takes them from the
TrainConfig, not from the DataConfig.
"""
from __future__ import annotations

import dataclasses
import importlib
import os

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
from absl import logging

from bnas_tf import callbacks as lr_callbacks
from bnas_tf import data, distribute, fast_binary, files, models, precision, recipes, scoring
from bnas_tf import model_dir as mdir
from bnas_tf.models import checks, common, presets

make_strategy = distribute.make_strategy

# the public recipe API, re-exported: train() takes a TrainConfig made by recipe()
TrainConfig = recipes.TrainConfig
RECIPES = recipes.RECIPES
recipe = recipes.recipe
precision_policy = precision.precision_policy
float32_twin = precision.float32_twin
TRAIN_CONFIG = "train_config.json"
HISTORY = "history.json"  # per-epoch logs, kept in step with the checkpoints
SERIAL = recipes.SERIAL


current_learning_rate = lr_callbacks.learning_rate  # the optimizer's next step's rate


# ----------------------------------------------------------------------------- losses

@tf.keras.utils.register_keras_serializable(SERIAL)
class CrossEntropy(tf.keras.losses.Loss):
    """Softmax cross-entropy of logits against integer labels, with label smoothing."""

    def __init__(self, label_smoothing=0.0, name="cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        y_pred = tf.cast(y_pred, tf.float32)  # mixed precision: softmax and loss in float32
        if not self.label_smoothing:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, y_pred)
        onehot = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return tf.keras.losses.categorical_crossentropy(
            onehot, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def accuracy_metrics():
    return [tf.keras.metrics.SparseCategoricalAccuracy(name="top1"),
            tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]


def decayed_kernels(model):
    """Conv / dense kernels (binary latent kernels included); BN and biases excluded."""
    return [v for v in model.trainable_weights
            if v.name.split("/")[-1].split(":")[0].endswith("kernel")]


def add_weight_decay(model, weight_decay):
    """Add ``weight_decay / 2 * sum(kernel ** 2)`` to the model's losses."""
    kernels = decayed_kernels(model)
    if weight_decay and kernels:
        scale = 0.5 * float(weight_decay)
        model.add_loss(lambda: scale * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels]))
    return kernels


def compile_model(model, config, optimizer):
    """Compile for training: main CE (+ weighted auxiliary CE), top-1/top-5 on the main head."""
    loss = CrossEntropy(config.label_smoothing)
    jit = bool(config.jit_compile)
    if len(model.outputs) == 2:
        model.compile(optimizer, loss=[loss, CrossEntropy(config.label_smoothing, name="aux")],
                      loss_weights=[1.0, config.auxiliary_weight],
                      metrics=[accuracy_metrics(), []], jit_compile=jit)
    else:
        model.compile(optimizer, loss=loss, metrics=accuracy_metrics(), jit_compile=jit)
    return model


def build_compiled(spec, num_classes, image_size, config, steps_per_epoch):
    """(model, optimizer): the network of `spec` built for training under the
    config's precision policy and binary-conv variant (``conv_dtype``:
    `fast_binary.building`), weight decay added, optimizer slots created (a
    checkpoint restores into them), compiled (`compile_model`)."""
    with precision_policy(config.precision):
        with fast_binary.building(config.conv_dtype, config.precision):
            model = models.build(spec, num_classes, image_size, auxiliary=config.auxiliary)
        if config.auxiliary and len(model.outputs) != 2:
            raise ValueError(f"the {spec.get('family')} network has no auxiliary head")
        add_weight_decay(model, config.weight_decay)
        optimizer = recipes.make_optimizer(config, steps_per_epoch)
        optimizer._create_all_weights(model.trainable_variables)  # slots exist: restore now
        compile_model(model, config, optimizer)
    return model, optimizer


def inference_model(model):
    """The main-output network (no auxiliary head, no added losses), sharing weights."""
    return tf.keras.Model(model.inputs, model.outputs[0], name=model.name)


# ----------------------------------------------------------------------------- callbacks

class DropPathSchedule(tf.keras.callbacks.Callback):
    """Raise the drop-path rate linearly: ``drop_path * epoch / epochs`` (DARTS)."""

    def __init__(self, drop_path, epochs):
        super().__init__()
        self.drop_path, self.epochs = float(drop_path), int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        common.set_drop_path(self.model, self.drop_path * epoch / self.epochs)


# The learning rate the epoch used (its first step's) into the epoch logs (TensorBoard:
# epoch_learning_rate, metrics.json history), not the next epoch's.
LearningRateLogger = lr_callbacks.EpochLearningRate


class NanGuard(tf.keras.callbacks.Callback):
    """Stop at the first NaN/Inf training loss and remember the epoch (0-based)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failed_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.failed_epoch is None:
            self.failed_epoch = self.epoch
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs)


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """After every good epoch: append its logs to `history` (a list of per-epoch dicts)
    and write them to `history_path`, then save model + optimizer + completed-epoch
    counter. The history is written first: a kill in between leaves it one epoch
    ahead of the checkpoint, and a resume cuts it back (`callbacks.read_history`)."""

    def __init__(self, manager, epoch_var, guard, history=None, history_path=None):
        super().__init__()
        self.manager, self.epoch_var, self.guard = manager, epoch_var, guard
        self.history = [] if history is None else history
        self.history_path = history_path

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed_epoch is not None:
            return
        self.history.append({"epoch": int(epoch), **{k: float(v) for k, v in (logs or {}).items()}})
        if self.history_path:
            mdir.write_json(self.history_path, self.history)
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def epoch_seed(seed, epoch):
    """The data-order/augmentation seed of one training epoch (as the search's)."""
    return int(seed) * 100_003 + int(epoch)


# ----------------------------------------------------------------------------- model dir

def model_checkpoint(model, optimizer, epoch_var):
    """tf.train.Checkpoint of the model's variables (in build order), optimizer and epoch.

    The model's variables are tracked as a flat list rather than through the layer
    graph: a layer holding an int-keyed dict of sublayers cannot be saved
    object-wise, and the spec check guarantees the same build order on resume.
    """
    return tf.train.Checkpoint(model_weights=list(model.weights), optimizer=optimizer,
                               epoch=epoch_var)


# what a model directory written before a record entry existed was trained with
RECORD_LEGACY = {"conv_dtype": "float32"}


# training settings a rerun may change: more epochs continue the run; the others
# change what is shown or kept, not what is computed (conv_dtype: compared resolved,
# in the record)
RERUN_MAY_CHANGE = ("epochs", "verbose", "keep_checkpoints", "validation_freq", "jit_compile",
                    "conv_dtype")


def _check_output_dir(output_dir, record, config=None):
    """Refuse (ValueError) when output_dir holds outputs of a different run: another
    network record, or (with `config`) other training settings than its
    train_config.json, but for `RERUN_MAY_CHANGE` (a setting its file lacks, from an
    older version, is not compared)."""
    spec_path = mdir.path(output_dir, mdir.SPEC)
    if not os.path.isfile(spec_path):
        return
    outputs = [n for n in (mdir.CKPT, mdir.WEIGHTS, mdir.METRICS, mdir.SAVED_MODEL)
               if os.path.exists(mdir.path(output_dir, n))]
    if not outputs:
        return
    old = mdir.read_json(spec_path, "model spec")
    files.refuse_other_run(output_dir, {k: old.get(k, RECORD_LEGACY.get(k)) for k in record},
                           record)
    config_path = mdir.path(output_dir, TRAIN_CONFIG)
    if config is not None and os.path.isfile(config_path):
        saved = mdir.read_json(config_path, "training config").get("train", {})
        current = {k: v for k, v in dataclasses.asdict(config).items()
                   if k in saved and k not in RERUN_MAY_CHANGE}
        files.refuse_other_run(output_dir, {k: saved[k] for k in current}, current,
                               "training run")


def spec_name(spec):
    genotype = spec.get("genotype")
    name = spec.get("name") or (genotype.get("name") if isinstance(genotype, dict) else genotype)
    return str(name or spec.get("family", "custom"))


def _distribute(ds):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _save(directory, model):
    """model_dir.save_model; a failing SavedModel export leaves weights.h5 and warns."""
    try:
        mdir.save_model(directory, model)
    except (ValueError, TypeError) as e:
        if not os.path.isfile(mdir.path(directory, mdir.WEIGHTS)):
            raise
        logging.warning("SavedModel export failed (%s); %s holds the trained weights",
                        str(e).splitlines()[0][:300], mdir.path(directory, mdir.WEIGHTS))


def _costs(model):
    """bnas_tf.costs.count(model).to_dict(), or just the parameter counts without it."""
    try:
        costs = importlib.import_module("bnas_tf.costs")
    except ImportError:
        costs = None
    if costs is not None:
        try:
            return dict(costs.count(model).to_dict())
        except Exception as e:  # a cost-model bug must not throw away a trained network
            logging.warning("cost counting failed (%s: %s); writing parameter counts only",
                            type(e).__name__, e)
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    return {"params": int(model.count_params()), "trainable_params": trainable}


# ----------------------------------------------------------------------------- train

def train(spec, data_config, train_config, output_dir, strategy=None, callbacks=()):
    """Train `spec` and fill `output_dir`; returns the metrics dict written to metrics.json.

    spec: network spec dict (models.presets.resolve) or preset name.
    data_config: data.DataConfig (its batch_size and cutout are replaced by the recipe's).
    train_config: recipes.TrainConfig (see `recipes.recipe`).
    strategy: a tf.distribute.Strategy or a name for `make_strategy` (None = default).
    callbacks: extra Keras callbacks, run after the built-in ones.
    Rerunning with the same spec resumes from the last completed epoch; a different
    spec in a directory with outputs is refused before anything is written.
    """
    strategy = make_strategy(strategy)  # first: multi-worker must precede any TF op
    config = train_config.validate()
    if data_config.data_service and distribute.task(strategy)[0] is not None:
        raise ValueError("--data_service feeds one training process; with "
                         "--strategy=multi_worker every worker would read its own full epoch")
    if isinstance(spec, str):
        spec = presets.resolve(preset=spec)
    data_config = dataclasses.replace(data_config, batch_size=config.batch_size,
                                      cutout=config.cutout)
    info = data.dataset_info(data_config)
    checks.check_data(spec, info.num_classes, info.image_size)  # a preset for other data
    record = {"spec": spec, "num_classes": info.num_classes, "image_size": info.image_size,
              "dataset": data_config.dataset, "auxiliary": bool(config.auxiliary),
              # resumed epochs run the binary convs as the first ones did
              "conv_dtype": fast_binary.resolve_for(spec.get("family"), config.conv_dtype,
                                                    config.precision)}
    _check_output_dir(output_dir, record, config)
    logging.info("binary convs train in %s (%s; --train_conv_dtype=%s)", record["conv_dtype"],
                 "fast_binary.FastQuantConv2D" if record["conv_dtype"] == "bfloat16"
                 else "Larq's QuantConv2D", config.conv_dtype)
    dirs = distribute.WorkerDirs(strategy)
    try:
        return _train(spec, data_config, config, output_dir, strategy, info, record, dirs,
                      list(callbacks))
    finally:
        dirs.cleanup()


def _train(spec, data_config, config, output_dir, strategy, info, record, dirs, extra_callbacks):
    steps_per_epoch = data.num_examples(data_config, "train") // config.batch_size

    def with_targets(ds):
        return ds.map(lambda x, y: (x, (y, y))) if config.auxiliary else ds

    def epoch_data(epoch):  # epoch-seeded: a resumed run reads what an uninterrupted one reads
        seeded = dataclasses.replace(data_config, seed=epoch_seed(data_config.seed, epoch))
        return with_targets(_distribute(data.load(seeded, "train", training=True)))
    replicas = strategy.num_replicas_in_sync
    if config.batch_size < replicas:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {replicas} "
                         "replicas of the strategy: every replica needs at least one image")
    # validation and the final test run on one device (bnas_tf.scoring): the saved model
    twin = scoring.inference_twin(spec, info.num_classes, info.image_size)
    scorer = scoring.Scorer(twin)
    val_ds = (data.load(data_config, "validation", training=False)
              if config.validation_freq else None)

    distribute.print_batch_plan(strategy, config.batch_size, learning_rate=config.learning_rate)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model, optimizer = build_compiled(spec, info.num_classes, info.image_size, config,
                                          steps_per_epoch)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = model_checkpoint(model, optimizer, epoch_var)
    ckpt_dir = mdir.path(output_dir, mdir.CKPT)
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ValueError(f"checkpoint {latest} does not match this network and optimizer "
                             f"({str(e).splitlines()[0][:200]}); use another --output_dir") from None
        logging.info("resuming from %s after epoch %d", latest, int(epoch_var))
    initial_epoch = int(epoch_var)

    if dirs.chief:
        os.makedirs(output_dir, exist_ok=True)
        mdir.write_spec(output_dir, spec, info.num_classes, info.image_size,
                        **{k: v for k, v in record.items()
                           if k not in ("spec", "num_classes", "image_size")})
        mdir.write_json(mdir.path(output_dir, TRAIN_CONFIG),
                        {"train": dataclasses.asdict(config),
                         "data": dataclasses.asdict(data_config)})
    manager = tf.train.CheckpointManager(checkpoint, dirs.path(ckpt_dir),
                                         max_to_keep=config.keep_checkpoints)
    guard = NanGuard()
    history_path = dirs.path(mdir.path(output_dir, HISTORY))
    checkpointer = EpochCheckpoint(manager, epoch_var, guard,
                                   lr_callbacks.read_history(history_path, initial_epoch),
                                   history_path)
    callback_list = [
        guard,
        *([scoring.Validation(scorer, val_ds, config.validation_freq)] if val_ds else []),
        DropPathSchedule(config.drop_path, config.epochs),
        LearningRateLogger(),
        checkpointer,
        lr_callbacks.TensorBoard(dirs.path(mdir.path(output_dir, mdir.LOGS)),
                                       write_graph=False, profile_batch=0),
        *extra_callbacks,
        lr_callbacks.Progbar(config.epochs),  # last: shows the logs as the others left them
    ]
    # One fit per epoch, each on its epoch-seeded data (the search's scheme), so callbacks'
    # on_train_begin/end run once per epoch.
    for epoch in range(initial_epoch, config.epochs):
        model.fit(epoch_data(epoch), epochs=epoch + 1, initial_epoch=epoch,
                  callbacks=callback_list, verbose=config.verbose)
        if guard.failed_epoch is not None or model.stop_training:
            break
    if initial_epoch >= config.epochs:
        logging.info("%s already trained for %d epochs; evaluating", output_dir, initial_epoch)
    history = lr_callbacks.history_lists(checkpointer.history)
    previous = mdir.path(output_dir, mdir.METRICS)
    if not history and initial_epoch and os.path.isfile(previous):  # a run from before history.json
        history = mdir.read_json(previous).get("history", {})
    if guard.failed_epoch is not None:
        raise FloatingPointError(
            f"training loss became NaN/Inf in epoch {guard.failed_epoch + 1}; stopped. "
            f"Checkpoints of the {guard.failed_epoch} completed epoch(s) are kept in {ckpt_dir}")

    with strategy.scope():
        # a mixed-precision run saves (and exports) the float32 network
        final = inference_model(float32_twin(model, spec, info.num_classes, info.image_size,
                                             config.auxiliary))
    save_dir = dirs.path(output_dir)
    os.makedirs(save_dir, exist_ok=True)
    _save(save_dir, final)
    # the score of what was saved: weights.h5 in the one-device twin
    mdir.load_weights(twin, mdir.path(save_dir, mdir.WEIGHTS))
    results = scorer(data.load(data_config, "test", training=False))
    metrics = {
        **{k: results[k] for k in ("top1", "top5", "loss")},
        **_costs(twin),
        "epochs": int(max(initial_epoch, config.epochs)),
        "dataset": data_config.dataset,
        "data_dir": data_config.data_dir,
        "spec": spec_name(spec),
        "num_classes": info.num_classes,
        "image_size": info.image_size,
        "recipe": config.recipe,
        "test_examples": data.num_examples(data_config, "test"),
        "train_examples": data.num_examples(data_config, "train"),
        "replicas": strategy.num_replicas_in_sync,
        "history": history,
    }
    if dirs.chief:
        mdir.write_json(mdir.path(output_dir, mdir.METRICS), metrics)
    return metrics


# ----------------------------------------------------------------------------- evaluate

def training_data_config(model_dir):
    """The DataConfig a model directory was trained with (from its train_config.json)."""
    saved = mdir.read_json(mdir.path(model_dir, TRAIN_CONFIG), "training config")
    fields = {f.name for f in dataclasses.fields(data.DataConfig)}
    return data.DataConfig(**{k: v for k, v in saved["data"].items() if k in fields})


def evaluate(model_dir, data_config=None, split="test", write=True, verbose=0):
    """Top-1 / top-5 / loss of the trained network in `model_dir` on a data split.

    data_config None: the data the model was trained with. Images are resized to the
    model's image size. Runs weights.h5 on one device (bnas_tf.scoring), as training
    scores its runs. Writes model_dir/eval_<split>.json.
    """
    _, num_classes, image_size, _ = mdir.read_spec(model_dir)
    if data_config is None:
        data_config = training_data_config(model_dir)
    data_config = dataclasses.replace(data_config, image_size=image_size)
    info = data.dataset_info(data_config)
    if info.num_classes != num_classes:
        raise ValueError(f"the model in {model_dir} has {num_classes} classes but "
                         f"{data_config.data_dir or data_config.dataset} has {info.num_classes}")
    results = scoring.Scorer(mdir.load_model(model_dir))(
        data.load(data_config, split, training=False), verbose=verbose)
    out = {"top1": results["top1"], "top5": results["top5"], "loss": results["loss"],
           "split": split, "dataset": data_config.dataset, "data_dir": data_config.data_dir,
           "examples": results["examples"]}
    if write:
        mdir.write_json(mdir.path(model_dir, f"eval_{split}.json"), out)
    return out
