"""Pascal VOC detection AP (numpy only): AP at IoU 0.5 per class, with VOC's rules.

Glossary: G ground-truth boxes, D detections (all images together); boxes are `xyxy`
pixels in continuous coordinates (`fpn_keras.data.voc` already turns VOC's 1-based
inclusive pixel indices into `(xmin - 1, ymin - 1, xmax, ymax)`, so no "+1" is added to
widths here: the devkit's `xmax - xmin + 1` on the raw indices is the same width).

VOC's rules (the VOC devkit's `VOCevaldet.m`, as detectron2's `voc_eval` reimplements it):
- detections of a class are taken in decreasing score order (a stable sort here: ties keep
  their input order); each is matched to the ground truth of its class in its image with
  the highest IoU; IoU > 0.5 with an unmatched box is a true positive, with a box already
  matched a false positive (a duplicate), below it a false positive;
- "difficult" boxes count neither way: a detection whose best match is difficult is
  ignored, and difficult boxes are not in the number of positives;
- two AP definitions: VOC2007's 11-point interpolation (mean over recall r in
  {0, 0.1, ..., 1} of the highest precision at recall >= r) and VOC2010+'s area under the
  precision-recall curve made monotone (precision at recall r = the highest precision at
  any recall >= r).
A class without non-difficult ground truth has no AP (None) and is left out of the mean.
"""

import numpy as np

VOC_IOU_THRESHOLD = 0.5


def _iou(box, boxes):
    """IoU of one xyxy box [4] with boxes [N, 4] -> [N]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).tiny)


def match_detections(gt_image_ids, gt_boxes, gt_labels, gt_difficult,
                     det_image_ids, det_boxes, det_scores, det_labels,
                     iou_threshold=VOC_IOU_THRESHOLD):
    """VOC matching of all classes at once.

    Args: gt_* [G] / [G, 4] (gt_difficult bool [G], or None: none difficult); det_* [D] /
        [D, 4].

    Returns:
        (det_tp bool [D], det_fp bool [D], gt_matched bool [G]): a detection matched to a
        difficult box is neither TP nor FP; gt_matched marks boxes found by a TP.
    """
    gt_image_ids = np.asarray(gt_image_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    gt_difficult = (np.zeros(len(gt_labels), bool) if gt_difficult is None
                    else np.asarray(gt_difficult, bool).reshape(-1))
    det_image_ids = np.asarray(det_image_ids).reshape(-1)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_labels = np.asarray(det_labels).reshape(-1)
    for name, array, rows in (("gt_boxes", gt_boxes, len(gt_image_ids)), ("gt_labels", gt_labels, len(gt_image_ids)),
                              ("gt_difficult", gt_difficult, len(gt_image_ids)),
                              ("det_boxes", det_boxes, len(det_image_ids)),
                              ("det_scores", det_scores, len(det_image_ids)),
                              ("det_labels", det_labels, len(det_image_ids))):
        if len(array) != rows:
            raise ValueError(f"`{name}` has {len(array)} rows, expected {rows} (one per image id).")
    det_tp = np.zeros(len(det_scores), bool)
    det_fp = np.zeros(len(det_scores), bool)
    gt_matched = np.zeros(len(gt_labels), bool)
    by_key = {}  # (image id, label) -> indices of its ground truth
    for g, key in enumerate(zip(gt_image_ids.tolist(), gt_labels.tolist())):
        by_key.setdefault(key, []).append(g)
    for d in np.argsort(-det_scores, kind="stable"):
        candidates = np.asarray(by_key.get((det_image_ids[d].item(), det_labels[d].item()), []), np.int64)
        if not len(candidates):
            det_fp[d] = True
            continue
        overlaps = _iou(det_boxes[d], gt_boxes[candidates])
        best = int(np.argmax(overlaps))
        g = candidates[best]
        if overlaps[best] <= iou_threshold:
            det_fp[d] = True
        elif gt_difficult[g]:
            continue
        elif gt_matched[g]:
            det_fp[d] = True
        else:
            det_tp[d] = gt_matched[g] = True
    return det_tp, det_fp, gt_matched


def precision_recall(det_tp, det_fp, det_scores, num_positives):
    """Cumulative (precision [n], recall [n]) over the TP/FP detections in decreasing score
    order (stable); num_positives: the non-difficult ground truth (> 0)."""
    order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
    det_tp, det_fp = np.asarray(det_tp, bool)[order], np.asarray(det_fp, bool)[order]
    counted = det_tp | det_fp
    tp = np.cumsum(det_tp[counted])
    fp = np.cumsum(det_fp[counted])
    return tp / np.maximum(tp + fp, 1), tp / float(num_positives)


def voc07_ap(precision, recall):
    """VOC2007 11-point AP: mean over r in {0, 0.1, ..., 1} of max(precision[recall >= r]) (0 if none)."""
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    points = [precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def voc_area_ap(precision, recall):
    """VOC2010+ AP: the area under the monotone precision envelope, with (0, 0) and (1, 0) added."""
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision at r = best precision at recall >= r
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_metrics(gt_image_ids, gt_boxes, gt_labels, gt_difficult,
                det_image_ids, det_boxes, det_scores, det_labels, num_classes,
                class_names=None, iou_threshold=VOC_IOU_THRESHOLD):
    """Per-class VOC AP and their means.

    Labels are 0..num_classes-1 (any hashable id works if `class_names` is None and
    num_classes is a list of the ids). Returns
    `{"mAP07": float | None, "mAP": float | None, "per_class": [{"class", "label", "num_gt",
    "ap07", "ap"}, ...]}`: ap07 the 11-point AP, ap the area AP; None where a class has no
    non-difficult ground truth (means over the others).
    """
    det_tp, det_fp, _ = match_detections(gt_image_ids, gt_boxes, gt_labels, gt_difficult, det_image_ids,
                                         det_boxes, det_scores, det_labels, iou_threshold)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    gt_difficult = (np.zeros(len(gt_labels), bool) if gt_difficult is None
                    else np.asarray(gt_difficult, bool).reshape(-1))
    det_labels = np.asarray(det_labels).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    labels = list(range(num_classes)) if isinstance(num_classes, int) else list(num_classes)
    rows = []
    for i, label in enumerate(labels):
        num_gt = int(np.sum((gt_labels == label) & ~gt_difficult))
        ap07 = ap = None
        if num_gt:
            mine = det_labels == label
            precision, recall = precision_recall(det_tp[mine], det_fp[mine], det_scores[mine], num_gt)
            ap07, ap = voc07_ap(precision, recall), voc_area_ap(precision, recall)
        name = class_names[i] if class_names is not None else str(label)
        rows.append({"class": name, "label": label, "num_gt": num_gt, "ap07": ap07, "ap": ap})

    def mean(key):
        values = [row[key] for row in rows if row[key] is not None]
        return float(np.mean(values)) if values else None

    return {"mAP07": mean("ap07"), "mAP": mean("ap"), "per_class": rows}
