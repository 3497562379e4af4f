"""Training a recipe end to end: data -> model -> fit -> COCO evaluation -> artefacts."""

import json
import os
import time

import keras
import numpy as np

from fpn_keras import data as data_lib
from fpn_keras import visualization
from fpn_keras.build import build_model, build_optimizer
from fpn_keras.config import Recipe, dump_recipe
from fpn_keras.evaluation import CocoMetricsCallback, evaluate_model
from fpn_keras.evaluation.coco_eval import format_metrics


def build_datasets(recipe: Recipe):
    """-> (train batches, val batches, class_names) as `FPNDetector.fit` takes them."""
    cfg = recipe.data
    size = tuple(cfg.image_size)
    extra = {"image_size": size} if cfg.train == "synthetic" else {}
    train, class_names = data_lib.load(cfg.train, "train", num_images=cfg.num_train_images,
                                       seed=cfg.seed, **extra)
    val, _ = data_lib.load(cfg.val, "val", num_images=cfg.num_val_images, seed=cfg.seed, **extra)
    batch = recipe.train.batch_size
    train = data_lib.pipeline.prepare(train, batch, size, training=True, max_boxes=cfg.max_boxes,
                                      seed=recipe.train.seed, cache=cfg.cache)
    val = data_lib.pipeline.prepare(val, batch, size, training=False, max_boxes=cfg.max_boxes,
                                    cache=cfg.cache)
    return train, val, class_names


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


def train(recipe: Recipe, out_dir, verbose=1):
    """Trains `recipe`, writes model.keras, recipe.yaml, metrics.json, predictions.png,
    history.csv and TensorBoard logs into `out_dir`; returns (model, metrics)."""
    os.makedirs(out_dir, exist_ok=True)
    dump_recipe(recipe, os.path.join(out_dir, "recipe.yaml"))
    keras.utils.set_random_seed(recipe.train.seed)
    start = time.time()
    train_ds, val_ds, class_names = build_datasets(recipe)
    model = build_model(recipe, class_names=class_names)
    steps_per_epoch = int(train_ds.cardinality())
    if steps_per_epoch <= 0:
        raise ValueError(
            f"the training set gives no full batch of {recipe.train.batch_size}; "
            "lower train.batch_size or add images")
    model.compile(optimizer=build_optimizer(recipe, steps_per_epoch))
    coco = CocoMetricsCallback(val_ds, class_names=class_names,
                               every_n_epochs=recipe.train.eval_every_n_epochs, verbose=verbose)
    callbacks = [
        coco,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "history.csv")),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), write_graph=False),
    ]
    model.fit(train_ds, epochs=recipe.train.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
    train_seconds = time.time() - start

    metrics = coco.history[-1][1] if coco.history else evaluate_model(model, val_ds, verbose=False)
    print(format_metrics(metrics, title=f"COCO metrics on the '{recipe.data.val}' val split"))
    model.save(os.path.join(out_dir, "model.keras"))
    save_predictions_picture(model, val_ds, os.path.join(out_dir, "predictions.png"))
    record = {"metrics": metrics, "train_seconds": round(train_seconds, 1),
              "epochs": recipe.train.epochs, "steps_per_epoch": steps_per_epoch}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    return model, metrics
