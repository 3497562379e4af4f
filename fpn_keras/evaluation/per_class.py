"""Per-class COCO numbers and precision-recall curves from an accumulated pycocotools COCOeval.

COCOeval.accumulate() leaves `eval["precision"]` [T, R, K, A, M] (T IoU thresholds 0.5:0.95,
R = 101 recall thresholds, K categories in `params.catIds` order, A area ranges (0 = all),
M detection limits `params.maxDets`) and `eval["recall"]` [T, K, A, M]. Entries are -1
where a category has no ground truth (pycocotools skips it); those classes get None here
(null in JSON, "-" in the table). As in COCOeval.summarize, AP is the mean of the entries
> -1 at the last detection limit (100).
"""

import numpy as np


def _mean_valid(values):
    values = np.asarray(values, np.float64)
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def per_class_metrics(coco_eval, class_names=None):
    """-> list of {"class", "category_id", "ap", "ap50", "ar100", "num_gt"}, one per category.

    ap: AP @[IoU 0.50:0.95], ap50: AP @[IoU 0.50], ar100: AR @[IoU 0.50:0.95, 100 dets], all
    for area "all"; num_gt: the category's ground truth boxes that are not crowd / ignore.
    class_names: optional K names (default: the categories' names in the ground truth).
    """
    params = coco_eval.params
    if not params.useCats:
        raise ValueError("per-class metrics need a COCOeval run with useCats=1 (class-aware).")
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    recall = coco_eval.eval["recall"]  # [T, K, A, M]
    iou_50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    area_all = list(params.areaRngLbl).index("all")
    limit = len(params.maxDets) - 1  # the largest limit, as COCO's AP
    rows = []
    for k, cat_id in enumerate(params.catIds):
        annotations = coco_eval.cocoGt.loadAnns(coco_eval.cocoGt.getAnnIds(catIds=[cat_id]))
        if class_names is not None:
            name = class_names[k]
        else:
            name = coco_eval.cocoGt.cats[cat_id].get("name", str(cat_id))
        rows.append({
            "class": str(name),
            "category_id": int(cat_id),
            "ap": _mean_valid(precision[:, :, k, area_all, limit]),
            "ap50": _mean_valid(precision[iou_50, :, k, area_all, limit]),
            "ar100": _mean_valid(recall[:, k, area_all, limit]),
            "num_gt": sum(1 for a in annotations if not a.get("iscrowd", 0)),
        })
    return rows


def pr_curves(coco_eval, iou_threshold=0.5):
    """-> (recall [R], {category id: precision [R] or None (no ground truth)}, mean precision [R]
    over the categories with ground truth, or None) at `iou_threshold`, area all, the last
    detection limit. Precision is COCO's interpolated precision at each recall threshold."""
    params = coco_eval.params
    precision = coco_eval.eval["precision"]
    t = int(np.argmin(np.abs(np.asarray(params.iouThrs) - iou_threshold)))
    area_all = list(params.areaRngLbl).index("all")
    curves = {}
    for k, cat_id in enumerate(params.catIds if params.useCats else [-1]):
        curve = np.asarray(precision[t, :, k, area_all, -1], np.float64)
        curves[int(cat_id)] = None if np.all(curve < 0) else np.clip(curve, 0, None)
    valid = [c for c in curves.values() if c is not None]
    mean = np.mean(valid, axis=0) if valid else None
    return np.asarray(params.recThrs, np.float64), curves, mean


def format_per_class(rows, voc_rows=None, title="Per-class results"):
    """A text table of `per_class_metrics` rows (None -> "-"), with the VOC APs of
    `voc_eval.voc_metrics(...)["per_class"]` (same order) when given."""
    width = max([len("class")] + [len(row["class"]) for row in rows])

    def cell(value):
        return f"{value:7.3f}" if value is not None else f"{'-':>7}"

    header = f"  {'class':<{width}} {'AP':>7} {'AP50':>7} {'AR100':>7} {'num_gt':>7}"
    if voc_rows is not None:
        header += f" {'VOC07':>7} {'VOC':>7}"
    lines = [title, header]
    for i, row in enumerate(rows):
        line = f"  {row['class']:<{width}} {cell(row['ap'])} {cell(row['ap50'])} {cell(row['ar100'])} {row['num_gt']:>7}"
        if voc_rows is not None:
            line += f" {cell(voc_rows[i]['ap07'])} {cell(voc_rows[i]['ap'])}"
        lines.append(line)
    lines.append('  ("-": the class has no ground truth in these images)')
    return "\n".join(lines)
