"""Where a model fails, image by image: missed ground truth and confident false positives.

Ground truth and detections are COCO-format dicts (`CocoEvaluator.ground_truth_json()` /
`results_json()`: bbox [x, y, w, h] in original image pixels, category_id, iscrowd /
score). Matching is VOC's at IoU 0.5 (`voc_eval.match_detections`), class-aware; crowd /
ignore / difficult boxes count neither way.
"""

import numpy as np

from fpn_keras.evaluation.voc_eval import VOC_IOU_THRESHOLD, match_detections


def xyxy_boxes(rows):
    """COCO-format dicts -> their boxes [N, 4] xyxy (bbox is [x, y, w, h])."""
    boxes = np.asarray([row["bbox"] for row in rows], np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _columns(ground_truth, results):
    """COCO-format dicts -> the arrays `match_detections` takes, each built once."""
    return {
        "gt_ids": np.asarray([g["image_id"] for g in ground_truth], np.int64),
        "gt_boxes": xyxy_boxes(ground_truth),
        "gt_cats": np.asarray([g["category_id"] for g in ground_truth], np.int64),
        "gt_ignore": np.asarray([bool(g.get("iscrowd", 0)) for g in ground_truth], bool),
        "det_ids": np.asarray([d["image_id"] for d in results], np.int64),
        "det_boxes": xyxy_boxes(results),
        "det_scores": np.asarray([d["score"] for d in results], np.float64),
        "det_cats": np.asarray([d["category_id"] for d in results], np.int64),
    }


def _match(c, iou_threshold):
    return match_detections(c["gt_ids"], c["gt_boxes"], c["gt_cats"], c["gt_ignore"], c["det_ids"],
                            c["det_boxes"], c["det_scores"], c["det_cats"], iou_threshold)


def match_results(ground_truth, results, iou_threshold=VOC_IOU_THRESHOLD):
    """VOC matching of COCO-format ground truth and results -> (det_tp [D], det_fp [D],
    gt_matched [G]), see `voc_eval.match_detections`; iscrowd boxes are VOC's difficult."""
    return _match(_columns(ground_truth, results), iou_threshold)


def image_failures(ground_truth, results, image_ids, iou_threshold=VOC_IOU_THRESHOLD):
    """-> {image id: {"gt_boxes" [G, 4] xyxy, "gt_category_ids" [G], "gt_ignore" [G] bool,
    "gt_matched" [G] bool, "det_boxes" [D, 4] xyxy, "det_category_ids" [D], "det_scores" [D],
    "det_fp" [D] bool, "num_missed" int (non-ignored ground truth not found),
    "top_fp_score" float (highest score of a false positive, 0 if none)}} for every id in
    `image_ids`."""
    c = _columns(ground_truth, results)
    _, det_fp, gt_matched = _match(c, iou_threshold)
    failures = {}
    for image_id in image_ids:
        g, d = c["gt_ids"] == image_id, c["det_ids"] == image_id
        fp_scores = c["det_scores"][d & det_fp]
        failures[int(image_id)] = {
            "gt_boxes": c["gt_boxes"][g], "gt_category_ids": c["gt_cats"][g], "gt_ignore": c["gt_ignore"][g],
            "gt_matched": gt_matched[g], "det_boxes": c["det_boxes"][d], "det_category_ids": c["det_cats"][d],
            "det_scores": c["det_scores"][d], "det_fp": det_fp[d],
            "num_missed": int(np.sum(~gt_matched[g] & ~c["gt_ignore"][g])),
            "top_fp_score": float(fp_scores.max()) if fp_scores.size else 0.0,
        }
    return failures


def worst_images(failures, num_images=4):
    """-> (ids with the most missed ground truth, ids with the most confident false
    positives), `num_images` each at most, worst first; images with nothing missed / no
    false positive are left out; ties keep the lower image id first."""
    ids = sorted(failures)
    missed = sorted((i for i in ids if failures[i]["num_missed"] > 0),
                    key=lambda i: -failures[i]["num_missed"])
    confident = sorted((i for i in ids if failures[i]["top_fp_score"] > 0),
                       key=lambda i: -failures[i]["top_fp_score"])
    return missed[:num_images], confident[:num_images]
