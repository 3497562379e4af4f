"""What `fpn-keras evaluate` adds to the 12 COCO numbers, from one evaluated `CocoEvaluator`:
per-class COCO numbers, Pascal VOC mAP, the PR-curve picture and the worst-images picture.

`evaluator.evaluate()` must have run (it keeps the accumulated COCOeval); boxes are in
original image pixels (COCO xywh in the evaluator).
"""

import numpy as np

from fpn_keras.evaluation import failures as failures_lib
from fpn_keras.evaluation import per_class, plots, voc_eval

PR_CURVES_FILE = "pr_curves.png"
WORST_IMAGES_FILE = "worst_images.png"


def _label_of(evaluator):
    return {c["id"]: label for label, c in enumerate(evaluator.categories())}


def _names(evaluator):
    return [c["name"] for c in evaluator.categories()]


def voc_metrics(evaluator):
    """Pascal VOC AP at IoU 0.5 of the evaluator's boxes (crowd / ignore = VOC difficult):
    `voc_eval.voc_metrics` with the evaluator's class names, labels 0..K-1."""
    label_of = _label_of(evaluator)
    gts, dets = evaluator.ground_truth_json(), evaluator.results_json()
    xyxy = failures_lib.xyxy_boxes
    return voc_eval.voc_metrics(
        [g["image_id"] for g in gts], xyxy(gts), [label_of[g["category_id"]] for g in gts],
        [bool(g["iscrowd"]) for g in gts],
        [d["image_id"] for d in dets], xyxy(dets), [d["score"] for d in dets],
        [label_of[d["category_id"]] for d in dets], len(label_of), class_names=_names(evaluator))


def class_report(evaluator):
    """-> ({"per_class": [...], "voc": {"mAP07", "mAP", "per_class"}} for metrics.json, the
    printed table). per_class rows: see `per_class.per_class_metrics` (None = no ground truth)."""
    rows = per_class.per_class_metrics(evaluator.coco_eval, _names(evaluator))
    voc = voc_metrics(evaluator)
    table = per_class.format_per_class(rows, voc["per_class"])

    def show(value):
        return "-" if value is None else f"{value:.4f}"

    table += (f"\nPascal VOC mAP at IoU 0.5 (difficult / crowd boxes ignored): VOC2007 11-point "
              f"{show(voc['mAP07'])}, VOC2010+ area {show(voc['mAP'])}")
    return {"per_class": rows, "voc": voc}, table


def pr_picture(evaluator, path=None):
    """The PR curves at IoU 0.5 ("all" + one panel per class) -> `path` (PNG) or uint8
    [H, W, 3] when path is None; size `plots.pr_figure_size(K + 1)`."""
    recall, curves, mean = per_class.pr_curves(evaluator.coco_eval, 0.5)
    names = _names(evaluator)
    values = [None if c is None else float(np.mean(c)) for c in curves.values()]
    if mean is None:
        mean = np.zeros_like(recall)
    return plots.plot_pr_curves(recall, list(curves.values()), names[:len(curves)], mean=mean, path=path,
                                title_values=values)


def collect_images(dataset, image_ids):
    """-> {image id: (uint8 [h, w, 3] the resized image without padding, scale)} for the
    `image_ids` found in `dataset` (batches of the input pipeline: targets with "image_id",
    optional "image_scale" and "image_size")."""
    wanted, found = {int(i) for i in image_ids}, {}
    for images, targets in dataset:
        ids = np.asarray(targets["image_id"]).reshape(-1)
        scales = np.asarray(targets.get("image_scale", np.ones(len(ids)))).reshape(-1)
        sizes = targets.get("image_size")
        for b, image_id in enumerate(ids.tolist()):
            if image_id in wanted and image_id not in found:
                h, w = (np.asarray(sizes[b]).tolist() if sizes is not None else np.shape(images[b])[:2])
                image = np.asarray(images[b])[:max(int(h), 1), :max(int(w), 1)]
                found[image_id] = (np.clip(image, 0, 255).astype(np.uint8),
                                   float(scales[b]) if scales[b] > 0 else 1.0)
        if len(found) == len(wanted):
            break
    return found


def worst_picture(evaluator, dataset, path=None, num_images=4, score_threshold=0.3):
    """Draws the images with the most missed ground truth and those with the most confident
    false positives (VOC matching at IoU 0.5) -> `path` or uint8 [H, W, 3]; size
    `plots.worst_figure_size(num_images, 2)` when both rows are full."""
    gts, dets = evaluator.ground_truth_json(), evaluator.results_json()
    image_ids = sorted({g["image_id"] for g in gts} | {d["image_id"] for d in dets})
    failures = failures_lib.image_failures(gts, dets, image_ids)
    missed, confident = failures_lib.worst_images(failures, num_images)
    images = collect_images(dataset, missed + confident)
    label_of, names = _label_of(evaluator), _names(evaluator)

    def panel(image_id, title):
        image, scale = images[image_id]
        f = failures[image_id]
        return {"image": image, "title": f"image {image_id}: {title(f)}",
                "gt_boxes": f["gt_boxes"] * scale, "gt_matched": f["gt_matched"], "gt_ignore": f["gt_ignore"],
                "det_boxes": f["det_boxes"] * scale, "det_scores": f["det_scores"], "det_fp": f["det_fp"],
                "det_labels": np.asarray([label_of[c] for c in f["det_category_ids"]], np.int64)}

    rows = [
        ("most missed ground truth",
         [panel(i, lambda f: f"{f['num_missed']} of {int(np.sum(~f['gt_ignore']))} missed")
          for i in missed if i in images]),
        ("most confident false positives",
         [panel(i, lambda f: f"false positive {f['top_fp_score']:.2f}") for i in confident if i in images]),
    ]
    return plots.plot_worst_images(rows, path=path, class_names=names, score_threshold=score_threshold)


def write_report(evaluator, dataset, out_dir):
    """Everything above for `fpn-keras evaluate`: -> (dict for metrics.json, text to print,
    files written in `out_dir`). A class-agnostic run (the RPN's proposals) has no classes:
    an empty dict, a note, no pictures."""
    import os

    if not evaluator.coco_eval.params.useCats:
        return {}, "(class-agnostic evaluation: no per-class numbers, VOC mAP or pictures)", []
    classes, table = class_report(evaluator)
    pr_picture(evaluator, os.path.join(out_dir, PR_CURVES_FILE))
    worst_picture(evaluator, dataset, os.path.join(out_dir, WORST_IMAGES_FILE))
    return classes, table, [PR_CURVES_FILE, WORST_IMAGES_FILE]
