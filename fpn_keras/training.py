"""Training a recipe end to end: data -> model -> fit -> COCO evaluation -> artefacts."""

import contextlib
import os
import re
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from fpn_keras import schedules
from fpn_keras import distribute, keras_workarounds
from fpn_keras import visualization
from fpn_keras.build import build_model, build_optimizer, check_model_args
from fpn_keras.callbacks import (NON_FINITE_DATA, BestModelSaver, Checkpointer, LearningRateLogger,
                                 NonFiniteLossGuard, StopOnSignal, WorkerLost, check_finite_batches,
                                 write_json)
from fpn_keras.config import DataError, Recipe, dump_recipe
from fpn_keras.data.training_data import build_datasets
from fpn_keras.evaluation import CocoMetricsCallback, evaluate_model
from fpn_keras.evaluation.coco_eval import format_metrics
from fpn_keras.models.detector import HEADS
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
    rows.append(("evaluation", f"every {schedules.eval_period_epochs(cfg, steps_per_epoch)} epoch(s) and at "
                 "the end", "train.eval_every_n_steps" if cfg.eval_every_n_steps else "train.eval_every_n_epochs"))
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(["Training plan:"] + [f"  {name:<{width}}  {value}   [{origin}]" for name, value, origin in rows])


def save_predictions_picture(model, dataset, path, num_images=8, score_threshold=0.3):
    """Draws the model's detections on the first `num_images` images of `dataset`."""
    drawn = []
    for images, _ in dataset:
        detections = model.predict_on_batch(images)
        boxes = keras.utils.bounding_boxes.convert_format(
            detections["boxes"], source=model.bounding_box_format, target="xyxy",
            height=images.shape[1], width=images.shape[2])
        # Small images are drawn 2x (or more) larger so the labels stay readable.
        zoom = max(1, 256 // int(images.shape[1]))
        boxes = keras.ops.convert_to_numpy(boxes) * zoom
        for i in range(images.shape[0]):
            image = np.asarray(images[i]).repeat(zoom, axis=0).repeat(zoom, axis=1)
            drawn.append(visualization.draw_detections(
                image, boxes[i], np.asarray(detections["labels"][i]),
                np.asarray(detections["scores"][i]), class_names=model.class_names,
                score_threshold=score_threshold))
            if len(drawn) == num_images:
                break
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
                               verbose=verbose)
    all_callbacks = [
        guard,
        *([stopper] if catch_signals else []),
        checkpointer,
        coco,
        BestModelSaver(os.path.join(files_dir, "best.keras"), coco.prefix + model.primary_metric),
        LearningRateLogger(),
        *callbacks,
    ]
    all_callbacks += [
        keras.callbacks.CSVLogger(os.path.join(files_dir, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(files_dir, "logs"), write_graph=False),
    ]
    try:
        with stopper if catch_signals else contextlib.nullcontext():
            # A run resumed inside an epoch first finishes that epoch from the next batch
            # (the batches an uninterrupted run trains on there), then goes on.
            epoch, offset = divmod(step, steps_per_epoch)
            if offset and step < total_steps:
                fit_start = step
                model.fit(check_finite_batches(train_batches(epoch, offset, 1)), initial_epoch=epoch,
                          epochs=epoch + 1,
                          steps_per_epoch=steps_per_epoch - offset, callbacks=all_callbacks,
                          verbose=verbose, shuffle=False)
                epoch += 1
                finished = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) >= epoch * steps_per_epoch
                if guard.message or not finished:  # stopped inside the epoch (NaN, a callback)
                    epoch = epochs
            if epoch < epochs:
                fit_start = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
                model.fit(check_finite_batches(train_batches(epoch)), initial_epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          callbacks=all_callbacks, verbose=verbose, shuffle=False)
    except tf.errors.InvalidArgumentError as error:
        if NON_FINITE_DATA not in str(error):
            raise
        index = re.search(r"batch index:\D*(\d+)", str(error))
        step = fit_start + int(index.group(1)) + 1 if index else \
            int(keras.ops.convert_to_numpy(model.optimizer.iterations)) + 1
        batch = (step - 1) % steps_per_epoch
        guard._epoch = (step - 1) // steps_per_epoch
        raise TrainingDivergedError(guard.describe("NaN/Inf pixels or boxes in a training batch", step, batch)) \
            from None
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise WorkerLost(sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", str(error)))),
                         int(keras.ops.convert_to_numpy(model.optimizer.iterations)), checkpointer.latest(),
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
    model.save(os.path.join(files_dir, "model.keras"))
    save_predictions_picture(model, val_ds, os.path.join(files_dir, "predictions.png"))
    record = {"metrics": metrics, "evaluated_on": val_description,
              "num_val_images": data.val_info.num_images, "num_train_images": num_images,
              "image_size": list(data.image_size), "train_seconds": round(train_seconds, 1),
              "epochs": epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
              "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
              "replicas": replicas, "mixed_precision": precision,
              "history": [[epoch, values] for epoch, values in coco.history]}
    write_json(os.path.join(files_dir, "metrics.json"), record)
    visualization.plot_curves(os.path.join(files_dir, "history.csv"), coco.history,
                              os.path.join(files_dir, "curves.png"))
    return model, metrics
