"""Accuracy of each inference precision against fp32, on a trained model and its val split.

    python bench/precision.py --model runs/demo/model.keras [--model runs/frcnn/model.keras]
        [--precisions fp32,bf16,int8] [--num-calibration-images 100] [--out docs/precision.jsonl]

For each model: COCO AP / AP50 of the Keras model in fp32 and bf16 (`with_precision`,
float32 decoding and NMS), and of its int8 TFLite export (calibrated on training images
through `fpn_keras.export.tflite`), all on the same val split as `fpn-keras evaluate`
(the data in the recipe.yaml next to the model); and the share of the fp32 detections
(score >= 0.05, and >= 0.3) that each precision reproduces: a detection of the same image
with the same label and IoU >= 0.9. Prints a markdown table, appends JSON lines to --out.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TFLiteDetector:
    """A .tflite export behind `predict_on_batch` (one image at a time), for `evaluate_model`."""

    def __init__(self, content, model, num_threads=2):
        from fpn_keras.export.tflite import TFLiteRunner

        self.runner = TFLiteRunner(content, num_threads=num_threads)
        self.bounding_box_format = model.bounding_box_format
        self.evaluation_settings = model.evaluation_settings

    def predict_on_batch(self, images):
        from fpn_keras.export.tflite import OUTPUT_NAMES

        outputs = [self.runner(np.asarray(images[i:i + 1], np.float32)) for i in range(images.shape[0])]
        boxes, scores, labels, count = OUTPUT_NAMES
        stacked = {key: np.concatenate([o[name] for o in outputs]) for key, name in
                   (("boxes", boxes), ("scores", scores), ("labels", labels), ("num_detections", count))}
        return stacked


def reproduced(reference, other, min_score, min_iou=0.9):
    """Share of `reference`'s COCO results (score >= min_score) that `other` has: same image,
    same category, IoU >= min_iou (any score)."""
    import keras

    from fpn_keras.boxes.iou import pairwise_iou
    from fpn_keras.evaluation.failures import xyxy_boxes

    by_image = {}
    for r in other:
        by_image.setdefault(r["image_id"], []).append(r)
    hits = total = 0
    for r in reference:
        if r["score"] < min_score:
            continue
        total += 1
        candidates = [o for o in by_image.get(r["image_id"], []) if o["category_id"] == r["category_id"]]
        if candidates:
            iou = keras.ops.convert_to_numpy(pairwise_iou(xyxy_boxes([r]), xyxy_boxes(candidates)))
            hits += int(iou.max() >= min_iou)
    return hits / total if total else float("nan"), total


def _val_batches(model, model_path, num_images):
    from fpn_keras import data as data_lib
    from fpn_keras.commands import _run_recipe

    run = _run_recipe(model_path)
    spec = run.get("data", {}).get("val") or "synthetic"
    split = run.get("data", {}).get("val_split") or "val"
    size = tuple(model.image_size)
    extra = {"image_size": size} if spec == "synthetic" else {}
    count = num_images or run.get("data", {}).get("num_val_images")
    elements, class_names, info = data_lib.load(spec, split, num_images=count, with_info=True, **extra)
    batches = data_lib.pipeline.prepare(elements, 8, size, training=False, bounding_box_format=model.bounding_box_format,
                                        pad_value=model.pad_value)
    train_spec = run.get("data", {}).get("train") or "synthetic"
    return batches, class_names, f"{info.description} ({info.num_images} images)", train_spec, extra


def evaluate_precisions(model_path, precisions, num_calibration_images, num_images=None):
    from fpn_keras.commands import _representative_images, load_keras_model
    from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model
    from fpn_keras.export.tflite import convert

    model = load_keras_model(model_path)
    batches, class_names, described, train_spec, _ = _val_batches(model, model_path, num_images)
    rows, results = [], {}
    for name in precisions:
        start = time.time()
        if name == "int8":
            size = tuple(model.image_size)
            calibration = list(_representative_images(train_spec, size, num_calibration_images))
            runner = TFLiteDetector(convert(model, size, quantize="int8", representative_data=calibration), model)
        else:
            runner = model.with_precision(name)
        evaluator = CocoEvaluator(class_names=class_names, category_ids=getattr(class_names, "category_ids", None))
        metrics = evaluate_model(runner, batches, class_names=class_names, verbose=False, evaluator=evaluator)
        results[name] = evaluator.results_json()
        rows.append({"precision": name, "AP": metrics["AP"], "AP50": metrics["AP50"],
                     "seconds": round(time.time() - start, 1)})
    for row in rows:
        row["AP_minus_fp32"] = row["AP"] - rows[0]["AP"]
        for threshold in (0.05, 0.3):
            share, total = reproduced(results[rows[0]["precision"]], results[row["precision"]], threshold)
            row[f"reproduced@{threshold}"] = share
            row[f"fp32_detections@{threshold}"] = total
    return {"model": model_path, "head": type(model.head).__name__, "evaluated_on": described, "rows": rows}


def markdown(record):
    lines = [f"{record['model']} ({record['head']}), {record['evaluated_on']}:", "",
             "| precision | AP | AP50 | AP - fp32 AP | fp32 detections reproduced (score >= 0.3) | (all, score >= 0.05) |",
             "|---|---|---|---|---|---|"]
    for row in record["rows"]:
        lines.append(f"| {row['precision']} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AP_minus_fp32']:+.4f} | "
                     f"{row['reproduced@0.3']:.1%} of {row['fp32_detections@0.3']} | "
                     f"{row['reproduced@0.05']:.1%} of {row['fp32_detections@0.05']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a trained .keras file (repeatable)")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--num-calibration-images", type=int, default=100)
    parser.add_argument("--num-images", type=int, default=None, help="val images (default: the run's)")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",")]
    if precisions[0] != "fp32":
        precisions.insert(0, "fp32")
    for path in args.model:
        record = evaluate_precisions(path, precisions, args.num_calibration_images, args.num_images)
        record.update(date=datetime.date.today().isoformat(), machine=f"{platform.machine()}, {os.cpu_count()} cpus")
        print(markdown(record), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
