"""Training a recipe end to end: data -> model -> fit -> COCO evaluation -> artefacts."""

import contextlib
import os
import re
import tempfile
import time

import keras
import tensorflow as tf

from fpn_keras import schedules
from fpn_keras import distribute, keras_workarounds
from fpn_keras import visualization
from fpn_keras.build import build_model, build_optimizer, check_model_args
from fpn_keras.callbacks import (NON_FINITE_DATA, BestModelSaver, Checkpointer, EMAWeights, LearningRateLogger,
                                 NonFiniteLossGuard, StopOnSignal, WorkerLost, check_finite_batches,
                                 write_json)
from fpn_keras.config import DataError, Recipe, dump_recipe
from fpn_keras.data.training_data import build_datasets
from fpn_keras.evaluation import CocoMetricsCallback, evaluate_model
from fpn_keras.evaluation.coco_eval import format_metrics
from fpn_keras.evaluation.tensorboard import draw_predictions
from fpn_keras.models.detector import HEADS
from fpn_keras.progress import EpochLog
from fpn_keras.run_folders import clear_resume_state
from fpn_keras.precision import dtype_policy


def describe_plan(recipe, data, epochs, steps_per_epoch, total_steps):
    """The training log's opening lines: the data, the settings the data decided, the
    schedule, and where each setting came from (recipe file, --set, --data, auto, default)."""
    cfg = recipe.train
    origins = recipe.origins
    train_info, val_info = data.train_info, data.val_info
    count = "unknown number of" if train_info.num_images is None else str(train_info.num_images)
    rows = [
        ("train data", f"{train_info.description}: {count} images", origins.get("data.train", "default")),
        ("val data", f"{val_info.description}: {val_info.num_images} images", origins.get("data.val", "default")),
    ]
    rows += [(name, value, origin) for name, (value, origin) in data.settings.items()]
    rows.append(("batch_size", cfg.batch_size, origins.get("train.batch_size", "default")))
    per_epoch = (f"{steps_per_epoch} full batches per epoch" if train_info.num_images is not None
                 else f"{steps_per_epoch} batches per epoch (dataset size unknown)")
    if cfg.steps is not None:
        source = f"train.steps={cfg.steps} ({origins.get('train.steps', 'default')})"
    else:
        source = f"train.epochs={cfg.epochs} ({origins.get('train.epochs', 'default')})"
    if cfg.min_steps:
        source += f", at least train.min_steps={cfg.min_steps} ({origins.get('train.min_steps', 'default')})"
    rows.append(("schedule", f"{per_epoch} x {epochs} epochs = {total_steps} optimizer steps", source))
    if cfg.gradient_accumulation_steps and cfg.gradient_accumulation_steps > 1:
        k = cfg.gradient_accumulation_steps
        rows.append(("accumulation", f"one update per {k} batches ({k * cfg.batch_size} images): "
                     f"{total_steps // k} updates; steps above count batches", "train.gradient_accumulation_steps"))
    rows.append(("evaluation", f"every {schedules.eval_period_epochs(cfg, steps_per_epoch)} epoch(s) and at "
                 "the end", "train.eval_every_n_steps" if cfg.eval_every_n_steps else "train.eval_every_n_epochs"))
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(["Training plan:"] + [f"  {name:<{width}}  {value}   [{origin}]" for name, value, origin in rows])


def save_predictions_picture(model, dataset, path, num_images=8, score_threshold=0.3):
    """Draws the model's detections on the first `num_images` images of `dataset`."""
    drawn = []
    for images, _ in dataset:
        drawn += draw_predictions(model, images, score_threshold)[: num_images - len(drawn)]
        if len(drawn) == num_images:
            break
    visualization.save_image(visualization.make_grid(drawn, cols=4), path)


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step and the last finite checkpoint."""


class TrainingOutOfMemoryError(RuntimeError):
    """The accelerator ran out of memory; the message suggests what to lower."""


def train(recipe: Recipe, out_dir, verbose=1, resume=False, strategy=None, callbacks=()):
    """Trains `recipe`, writes model.keras, best.keras, recipe.yaml, metrics.json,
    predictions.png, history.csv, checkpoints/ and TensorBoard logs into `out_dir`;
    returns (model, metrics).

    resume: continue from the latest checkpoint in out_dir/checkpoints (weights,
        optimizer state and step; the interrupted epoch resumes at the next batch, with
        the data order and augmentations an uninterrupted run has there).
    strategy: a `tf.distribute.Strategy` or a spec for `distribute.strategy`
        (default: the recipe's train.strategy, "auto").
    callbacks: extra Keras callbacks.
    verbose: 0 silent, 1 Keras' progress bars (for a terminal), 2 one line per epoch
        with the loss terms, learning rate, time and COCO numbers (`progress.EpochLog`:
        for a log file, where a progress bar's `\r` updates pile up in one line).
    Raises TrainingDivergedError (NaN/Inf loss), TrainingOutOfMemoryError, and
    callbacks.TrainingInterrupted on SIGINT / SIGTERM, after checkpointing the last
    finished step (resume with resume=True / `fpn-keras train ... --resume`), and
    callbacks.WorkerLost when another worker of a multi-worker run died (restart all
    of them with --resume).
    """
    cfg = recipe.train
    check_model_args(recipe)  # before any data is loaded
    chief = distribute.is_chief()
    keras.utils.set_random_seed(cfg.seed)
    start = time.time()
    strategy = distribute.strategy(strategy if strategy is not None else cfg.strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"train.batch_size={cfg.batch_size} (the global batch) must be a multiple of "
                         f"the {replicas} replicas of the {type(strategy).__name__}")
    if cfg.gradient_accumulation_steps and cfg.gradient_accumulation_steps > 1 and replicas > 1:
        # Keras 3.15 applies the accumulated update inside ops.cond, whose branch all-reduces
        # (merge_call): TF refuses that under a multi-replica strategy (keras-team/keras#20582).
        raise ValueError(f"train.gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not run "
                         f"under the {replicas} replicas of the {type(strategy).__name__} (Keras applies the "
                         "accumulated update in a conditional that tf.distribute refuses, keras-team/keras#20582): "
                         "train on one device, or drop the accumulation and raise train.batch_size across replicas")
    try:
        data = build_datasets(recipe)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise DataError(str(error)) from error
    val_ds, class_names = data.val, data.class_names
    num_images = data.train_info.num_images
    if num_images is not None and num_images < cfg.batch_size:
        raise DataError(
            f"the training set ({data.train_info.description}) has {num_images} images, fewer than one "
            f"batch of train.batch_size={cfg.batch_size}: lower train.batch_size or add images")
    # Nothing is written before the data is known to be usable (no half-empty run folders).
    os.makedirs(out_dir, exist_ok=True)
    # Every worker runs the same code (saving and predicting may need collectives);
    # only the chief's files land in out_dir, the others' in a throwaway folder.
    files_dir = out_dir if chief else tempfile.mkdtemp(prefix="fpn_keras_worker_")
    num_batches = None if num_images is None else num_images // cfg.batch_size  # full batches
    epochs, steps_per_epoch, total_steps = schedules.schedule_steps(cfg, num_batches)
    # The recipe written next to the model holds the settings the data decided.
    recipe.data.image_size, recipe.data.max_boxes = list(data.image_size), data.max_boxes
    if not HEADS[recipe.model.head].class_agnostic and len(class_names) != recipe.model.num_classes:
        # A recipe trained on other data (e.g. the user-data recipe with --data coco:...):
        # the dataset decides the number of classes.
        data.settings["num_classes"] = (len(class_names), f"the dataset's categories (the recipe has "
                                        f"{recipe.model.num_classes})")
        recipe.model.num_classes = len(class_names)
    if verbose or chief:
        print(describe_plan(recipe, data, epochs, steps_per_epoch, total_steps))

    def train_batches(epoch, batch=0, num_epochs=None):
        # Epoch e's batches are a function of (seed, e): a resumed run starts at its batch.
        # Training needs boxes and labels only (extra keys trip Keras' build under
        # MultiWorkerMirroredStrategy).
        return data.train_from(epoch, batch, num_epochs).map(
            lambda images, y: (images, {"boxes": y["boxes"], "labels": y["labels"]})
            if isinstance(y, dict) else (images, y))

    dump_recipe(recipe, os.path.join(files_dir, "recipe.yaml"))
    precision = cfg.mixed_precision
    with dtype_policy(precision), strategy.scope():
        model = build_model(recipe, class_names=class_names)
        height, width = data.image_size
        model(keras.ops.zeros((1, height, width, 3)))  # build: checkpoints load into built models
        model.compile(optimizer=build_optimizer(recipe, steps_per_epoch))
    keras_workarounds.skip_data_build(model, strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_workarounds.rank1_logs(model)
    if replicas > 1:
        keras_workarounds.trim_replicated_predictions(model)
    if verbose and replicas > 1:
        print(f"{type(strategy).__name__}: {replicas} replicas, "
              f"{cfg.batch_size // replicas} images each per step")
    if verbose and cfg.sync_batchnorm and replicas == 1:
        print("train.sync_batchnorm: one replica, so BatchNormalization already sees the whole batch")

    if not resume and chief:  # a fresh run in a used folder (--exist-ok) continues nothing of the last
        clear_resume_state(out_dir)
    checkpointer = Checkpointer(os.path.join(out_dir, "checkpoints"), steps_per_epoch,
                                cfg.checkpoint_every_n_steps, cfg.keep_checkpoints, write=chief)
    with strategy.scope():  # the optimizer's variables are built under the strategy
        step = checkpointer.restore(model) if resume else 0
    if resume and verbose:
        print(f"resuming from step {step} (epoch {step // steps_per_epoch + 1}, batch "
              f"{step % steps_per_epoch + 1})" if step else "resume: no checkpoint found, starting afresh")
    if resume and step >= total_steps and verbose:
        print(f"the checkpoint is at step {step}: training already finished ({total_steps} steps)")
    guard = NonFiniteLossGuard(checkpointer, steps_per_epoch)
    # Signals are caught on one-process runs; under multi-worker training every worker
    # would have to stop at the same step (the scheduler's kill ends the job instead).
    stopper = StopOnSignal(checkpointer, announce=bool(verbose))
    catch_signals = not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    coco = CocoMetricsCallback(val_ds, class_names=class_names,
                               every_n_epochs=schedules.eval_period_epochs(cfg, steps_per_epoch),
                               verbose=1 if verbose == 1 else 0,
                               log_dir=os.path.join(files_dir, "logs", "evaluation"), voc_metric=cfg.voc_metric)
    ema = EMAWeights() if cfg.use_ema else None
    all_callbacks = [
        guard,
        *([stopper] if catch_signals else []),
        checkpointer,
        *([ema] if ema else []),  # evaluation and best.keras on the averaged weights
        coco,
        BestModelSaver(os.path.join(files_dir, "best.keras"), coco.prefix + model.primary_metric),
        LearningRateLogger(),
        # After the COCO callback and the learning rate, which it prints.
        *([EpochLog(epochs, total_steps, terms=("loss", *model.head.loss_names),
                    metrics=dict.fromkeys((*EpochLog.METRICS, coco.prefix + model.primary_metric)))]
          if verbose == 2 else []),
        *callbacks,
    ]
    all_callbacks += [
        keras.callbacks.CSVLogger(os.path.join(files_dir, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(files_dir, "logs"), write_graph=False),
    ]
    fit_verbose = 1 if verbose == 1 else 0  # verbose 2: EpochLog's lines, not Keras' (see progress.py)
    try:
        with stopper if catch_signals else contextlib.nullcontext():
            # A run resumed inside an epoch first finishes that epoch from the next batch
            # (the batches an uninterrupted run trains on there), then goes on.
            epoch, offset = divmod(step, steps_per_epoch)
            if offset and step < total_steps:
                fit_start = step
                if ema:  # a next fit would go on from the raw weights
                    ema.keep_raw_weights()
                model.fit(check_finite_batches(train_batches(epoch, offset, 1)), initial_epoch=epoch,
                          epochs=epoch + 1,
                          steps_per_epoch=steps_per_epoch - offset, callbacks=all_callbacks,
                          verbose=fit_verbose, shuffle=False)
                epoch += 1
                finished = schedules.batches_trained(model.optimizer) >= epoch * steps_per_epoch
                if guard.message or not finished:  # stopped inside the epoch (NaN, a callback)
                    epoch = epochs
                if ema:  # the raw weights back when training goes on, else the averages stay
                    ema.restore_raw_weights(epoch < epochs)
            if ema and step >= total_steps:  # nothing left to train: the finished run's averages
                model.optimizer.finalize_variable_values(model.trainable_weights)
            if epoch < epochs:
                fit_start = schedules.batches_trained(model.optimizer)
                model.fit(check_finite_batches(train_batches(epoch)), initial_epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          callbacks=all_callbacks, verbose=fit_verbose, shuffle=False)
    except tf.errors.InvalidArgumentError as error:
        if NON_FINITE_DATA not in str(error):
            raise
        index = re.search(r"batch index:\D*(\d+)", str(error))
        step = fit_start + int(index.group(1)) + 1 if index else \
            schedules.batches_trained(model.optimizer) + 1
        batch = (step - 1) % steps_per_epoch
        guard._epoch = (step - 1) // steps_per_epoch
        raise TrainingDivergedError(guard.describe("NaN/Inf pixels or boxes in a training batch", step, batch)) \
            from None
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise WorkerLost(sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", str(error)))),
                         schedules.batches_trained(model.optimizer), checkpointer.latest(),
                         distribute.num_workers()) from error
    except tf.errors.ResourceExhaustedError as error:
        raise TrainingOutOfMemoryError(
            f"out of memory while training (global batch {cfg.batch_size}, images "
            f"{recipe.data.image_size[0]}x{recipe.data.image_size[1]}, {replicas} replica(s)): lower "
            f"train.batch_size (e.g. --set train.batch_size={max(replicas, cfg.batch_size // 2)}) or "
            f"data.image_size, or try train.mixed_precision=mixed_float16 / mixed_bfloat16. "
            f"TensorFlow said: {str(error.message if hasattr(error, 'message') else error)[:300]}"
        ) from error
    if guard.message:
        raise TrainingDivergedError(guard.message)
    train_seconds = time.time() - start

    metrics = coco.history[-1][1] if coco.history else evaluate_model(model, val_ds, verbose=False)
    val_description = f"{data.val_info.description} ({data.val_info.num_images} images)"
    if verbose or chief:
        print(format_metrics(metrics, title=f"COCO metrics on {val_description}, not used for training"))
    with distribute.batchnorm_unsynchronized(model):  # loadable under any backend
        model.save(os.path.join(files_dir, "model.keras"))
    save_predictions_picture(model, val_ds, os.path.join(files_dir, "predictions.png"))
    record = {"metrics": metrics, "evaluated_on": val_description,
              "num_val_images": data.val_info.num_images, "num_train_images": num_images,
              "image_size": list(data.image_size), "train_seconds": round(train_seconds, 1),
              "epochs": epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
              "optimizer_steps": schedules.batches_trained(model.optimizer),
              "optimizer_updates": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
              "replicas": replicas, "mixed_precision": precision,
              "history": [[epoch, values] for epoch, values in coco.history]}
    write_json(os.path.join(files_dir, "metrics.json"), record)
    visualization.plot_curves(os.path.join(files_dir, "history.csv"), coco.history,
                              os.path.join(files_dir, "curves.png"))
    return model, metrics
