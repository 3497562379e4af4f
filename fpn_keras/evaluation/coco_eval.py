"""COCO-style bounding box evaluation with pycocotools.

Boxes given to `CocoEvaluator.add` are `xyxy` absolute pixels; rows whose
label is < 0 are padding and are ignored.
"""

import contextlib
import io

import numpy as np

METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

# Width/height written for images whose size is unknown (COCOeval does not
# use them for bbox evaluation, but the dataset dict needs them).
_UNKNOWN_SIZE = 100000


def _check_shape(name, array, shape):
    """Raises ValueError unless `array.shape` matches `shape` (None = any)."""
    ok = array.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, array.shape)
    )
    if not ok:
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(
            f"`{name}` must have shape {want}, received shape {array.shape}."
        )


def _xywh(box):
    """xyxy box -> COCO [x, y, w, h] list of python floats."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


class CocoEvaluator:
    """Accumulates detections and ground truth, then runs COCOeval (bbox).

    Args:
        class_names: optional list of K class names (label i -> name i).
        category_ids: optional list mapping contiguous label -> original COCO
            category id. Defaults to `label + 1`.
    """

    def __init__(self, class_names=None, category_ids=None):
        if (
            class_names is not None
            and category_ids is not None
            and len(class_names) != len(category_ids)
        ):
            raise ValueError(
                "`class_names` and `category_ids` must have the same length, "
                f"received {len(class_names)} and {len(category_ids)}."
            )
        self.class_names = None if class_names is None else list(class_names)
        self.category_ids = (
            None if category_ids is None else [int(c) for c in category_ids]
        )
        self.reset()

    def reset(self):
        """Forgets everything added so far."""
        self._images = []  # COCO image dicts
        self._gts = []  # COCO annotation dicts (without id)
        self._dets = []  # COCO result dicts
        self._labels_seen = set()

    @property
    def num_classes(self):
        if self.category_ids is not None:
            return len(self.category_ids)
        if self.class_names is not None:
            return len(self.class_names)
        return None

    def _category_id(self, label):
        label = int(label)
        self._labels_seen.add(label)
        if self.category_ids is not None:
            return self.category_ids[label]
        return label + 1

    def add(
        self,
        gt_boxes,
        gt_labels,
        det_boxes,
        det_scores,
        det_labels,
        num_detections=None,
        image_ids=None,
        gt_ignore=None,
        image_sizes=None,
    ):
        """Adds a batch of B images.

        Args:
            gt_boxes: [B, M, 4] xyxy pixels, padding rows -1.
            gt_labels: [B, M] int, -1 = padding.
            det_boxes: [B, K, 4] xyxy pixels.
            det_scores: [B, K] float.
            det_labels: [B, K] int, -1 = padding.
            num_detections: optional [B] int; only the first n rows are used.
            image_ids: optional [B] int ids (default: a running counter).
            gt_ignore: optional [B, M] bool; True marks crowd/ignore regions
                (given to COCO as `iscrowd=1`).
            image_sizes: optional [B, 2] (height, width).
        """
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
        gt_labels = np.asarray(gt_labels)
        det_boxes = np.asarray(det_boxes, dtype=np.float64)
        det_scores = np.asarray(det_scores, dtype=np.float64)
        det_labels = np.asarray(det_labels)
        _check_shape("gt_boxes", gt_boxes, (None, None, 4))
        batch, max_gt = gt_boxes.shape[:2]
        _check_shape("gt_labels", gt_labels, (batch, max_gt))
        _check_shape("det_boxes", det_boxes, (batch, None, 4))
        max_det = det_boxes.shape[1]
        _check_shape("det_scores", det_scores, (batch, max_det))
        _check_shape("det_labels", det_labels, (batch, max_det))
        if num_detections is not None:
            num_detections = np.asarray(num_detections).astype(np.int64)
            _check_shape("num_detections", num_detections, (batch,))
        if gt_ignore is not None:
            gt_ignore = np.asarray(gt_ignore).astype(bool)
            _check_shape("gt_ignore", gt_ignore, (batch, max_gt))
        if image_sizes is not None:
            image_sizes = np.asarray(image_sizes)
            _check_shape("image_sizes", image_sizes, (batch, 2))
        if image_ids is None:
            start = max((img["id"] for img in self._images), default=0) + 1
            image_ids = np.arange(start, start + batch)
        else:
            image_ids = np.asarray(image_ids).reshape(-1)
            _check_shape("image_ids", image_ids, (batch,))

        image_ids = [int(i) for i in image_ids]
        known_ids = {img["id"] for img in self._images}
        repeated = sorted(
            {i for i in image_ids if image_ids.count(i) > 1 or i in known_ids}
        )
        if repeated:
            raise ValueError(
                f"Image ids must be unique, received {image_ids}; "
                f"repeated or already added: {repeated}."
            )
        n = self.num_classes
        top = max(gt_labels.max(initial=-1), det_labels.max(initial=-1))
        if n is not None and top >= n:
            raise ValueError(f"Label {int(top)} is out of range for {n} classes.")

        for b in range(batch):
            image_id = image_ids[b]
            if image_sizes is None:
                height = width = _UNKNOWN_SIZE
            else:
                height, width = (int(v) for v in image_sizes[b])
            self._images.append(
                {"id": image_id, "height": height, "width": width}
            )
            for m in np.flatnonzero(gt_labels[b] >= 0):
                bbox = _xywh(gt_boxes[b, m])
                crowd = gt_ignore is not None and bool(gt_ignore[b, m])
                self._gts.append({
                    "image_id": image_id,
                    "category_id": self._category_id(gt_labels[b, m]),
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": int(crowd),
                })
            valid = det_labels[b] >= 0
            if num_detections is not None:
                valid &= np.arange(max_det) < num_detections[b]
            for k in np.flatnonzero(valid):
                self._dets.append({
                    "image_id": image_id,
                    "category_id": self._category_id(det_labels[b, k]),
                    "bbox": _xywh(det_boxes[b, k]),
                    "score": float(det_scores[b, k]),
                })

    def results_json(self):
        """COCO-format detections: list of dicts with image_id, category_id,
        bbox ([x, y, w, h] pixels) and score."""
        return [dict(d) for d in self._dets]

    def ground_truth_json(self):
        """COCO-format ground truth: list of dicts with image_id, category_id, bbox
        ([x, y, w, h] pixels), area and iscrowd (1: crowd / ignore / VOC difficult)."""
        return [dict(g) for g in self._gts]

    def add_results(self, results):
        """Adds COCO-format detections (a results JSON: dicts with image_id, category_id,
        bbox [x, y, w, h] and score) for images already added (their ground truth)."""
        if not isinstance(results, list):
            raise ValueError(f"expected a list of detections (COCO results format), received a "
                             f"{type(results).__name__}")
        known_images = {img["id"] for img in self._images}
        known_categories = {c["id"] for c in self._categories()}
        for i, row in enumerate(results):
            missing = {"image_id", "category_id", "bbox", "score"} - set(row if isinstance(row, dict) else {})
            if missing:
                raise ValueError(f"result {i} lacks {sorted(missing)}: {row}")
            if int(row["image_id"]) not in known_images:
                raise ValueError(f"result {i} is for image_id {row['image_id']}, which is not among the "
                                 f"{len(known_images)} images evaluated")
            if int(row["category_id"]) not in known_categories:
                raise ValueError(f"result {i} has category_id {row['category_id']}, not one of the data's "
                                 f"{sorted(known_categories)[:10]}")
            self._dets.append({"image_id": int(row["image_id"]), "category_id": int(row["category_id"]),
                               "bbox": [float(v) for v in row["bbox"]], "score": float(row["score"])})

    def categories(self):
        """COCO category dicts {"id", "name"}, in label order (label i -> entry i)."""
        return self._categories()

    def _categories(self):
        if self.num_classes is not None:
            labels = range(self.num_classes)
        else:
            labels = sorted(self._labels_seen)
        categories = []
        for label in labels:
            if self.class_names is not None:
                name = self.class_names[label]
            else:
                name = str(label)
            cat_id = (
                self.category_ids[label]
                if self.category_ids is not None
                else label + 1
            )
            categories.append({"id": cat_id, "name": name})
        return categories

    def evaluate(self, verbose=True, max_dets=(1, 10, 100), class_agnostic=False):
        """Runs COCOeval and returns a dict of python floats keyed by
        METRIC_NAMES ("AP", "AP50", ..., "ARl").

        max_dets: the three detection limits of COCO's recall metrics; the AR
        keys follow them (e.g. (10, 100, 1000) gives "AR10", "AR100",
        "AR1000", with AP and ARs/ARm/ARl at the last). class_agnostic: ignore
        categories (proposal recall, as in the FPN paper's Table 1).

        As in COCO, a metric is -1 when no ground truth falls in its area
        range. With no detections at all, the other metrics are 0.
        """
        if not self._gts:
            raise ValueError(
                "No ground truth boxes were added (all gt labels were < 0 or "
                "`add` was never called); COCO metrics are undefined."
            )
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            coco_gt = COCO()
            coco_gt.dataset = {
                "images": [dict(img) for img in self._images],
                "annotations": [
                    dict(ann, id=i + 1) for i, ann in enumerate(self._gts)
                ],
                "categories": self._categories(),
            }
            coco_gt.createIndex()
            if self._dets:
                coco_dt = coco_gt.loadRes(self.results_json())
            else:
                # loadRes fails on an empty list: build an empty result set.
                coco_dt = COCO()
                coco_dt.dataset = {
                    "images": coco_gt.dataset["images"],
                    "annotations": [],
                    "categories": coco_gt.dataset["categories"],
                }
                coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.maxDets = [int(m) for m in max_dets]
            if class_agnostic:
                coco_eval.params.useCats = 0
            coco_eval.evaluate()
            coco_eval.accumulate()
        self.coco_eval = coco_eval  # accumulated: evaluation.per_class reads its arrays
        if verbose:
            coco_eval.summarize()
        else:
            with contextlib.redirect_stdout(quiet):
                coco_eval.summarize()
        names = list(METRIC_NAMES)
        names[6:9] = [f"AR{int(m)}" for m in max_dets]
        return {name: float(value) for name, value in zip(names, coco_eval.stats)}


def _to_xyxy(boxes, labels, source, height, width):
    """Converts [B, N, 4] boxes from `source` format to xyxy numpy, keeping
    padding rows (label < 0) at -1."""
    import keras

    boxes = keras.ops.convert_to_numpy(boxes).astype("float32")
    labels = keras.ops.convert_to_numpy(labels)
    if source != "xyxy":
        boxes = keras.ops.convert_to_numpy(
            keras.utils.bounding_boxes.convert_format(
                boxes, source=source, target="xyxy",
                height=height, width=width,
            )
        )
    return np.where((labels < 0)[..., None], -1.0, boxes).astype("float32")


def _add_batch(evaluator, images, targets, preds, fmt):
    """Adds one batch of ground truth (and `preds`, the model's outputs, unless None) to
    `evaluator`, in original image pixels; see `evaluate_model` for the dicts."""
    import keras

    height, width = int(images.shape[1]), int(images.shape[2])
    gt_labels = keras.ops.convert_to_numpy(targets["labels"])
    batch = gt_labels.shape[0]
    if preds is None:  # ground truth only (scoring a results JSON)
        preds = {"boxes": np.zeros((batch, 0, 4), "float32"), "scores": np.zeros((batch, 0), "float32"),
                 "labels": np.zeros((batch, 0), "int32")}
    det_labels = keras.ops.convert_to_numpy(preds["labels"])
    image_ids = targets.get("image_id")
    if image_ids is not None:
        image_ids = keras.ops.convert_to_numpy(image_ids)
    num_detections = preds.get("num_detections")
    if num_detections is not None:
        num_detections = keras.ops.convert_to_numpy(num_detections)
    gt_boxes = _to_xyxy(targets["boxes"], gt_labels, fmt, height, width)
    det_boxes = _to_xyxy(preds["boxes"], det_labels, fmt, height, width)
    image_sizes = np.tile([[height, width]], (batch, 1))
    gt_ignore = targets.get("ignore")
    if gt_ignore is not None:
        gt_ignore = keras.ops.convert_to_numpy(gt_ignore).astype(bool)
    scale = targets.get("image_scale")
    if scale is not None:
        # back to original image pixels (padding rows stay -1)
        scale = keras.ops.convert_to_numpy(scale).astype("float32").reshape(-1)
        scale = np.where(scale > 0, scale, 1.0)
        gt_boxes = np.where((gt_labels < 0)[..., None], -1.0, gt_boxes / scale[:, None, None])
        det_boxes = np.where((det_labels < 0)[..., None], -1.0, det_boxes / scale[:, None, None])
        image_sizes = np.round(image_sizes / scale[:, None]).astype("int64")
    evaluator.add(
        gt_boxes=gt_boxes.astype("float32"),
        gt_labels=gt_labels,
        det_boxes=det_boxes.astype("float32"),
        det_scores=keras.ops.convert_to_numpy(preds["scores"]),
        det_labels=det_labels,
        num_detections=num_detections,
        image_ids=image_ids,
        gt_ignore=gt_ignore,
        image_sizes=image_sizes,
    )


def add_ground_truth(evaluator, dataset, bounding_box_format):
    """Adds the ground truth of every `(images, targets)` batch of `dataset` (targets as in
    `evaluate_model`, boxes in `bounding_box_format`) to `evaluator`, without detections:
    then `evaluator.add_results(results_json)` scores a results file."""
    for images, targets in dataset:
        _add_batch(evaluator, images, targets, None, bounding_box_format)
    return evaluator


def evaluate_model(
    model, dataset, class_names=None, max_batches=None, verbose=True, evaluator=None
):
    """Runs `model.predict_on_batch` over `dataset` and returns COCO metrics.

    Args:
        model: object with `bounding_box_format` (keras format name) and
            `predict_on_batch(images)` returning a dict with "boxes" [B,K,4]
            in that format, "scores" [B,K], "labels" [B,K] (-1 padded) and
            "num_detections" [B].
        dataset: iterable of `(images, targets)`; images [B,H,W,C], targets a
            dict with "boxes" [B,M,4] (model format), "labels" [B,M] (-1
            padded) and optional "image_id" [B], "ignore" [B,M] (crowd /
            difficult boxes, given to COCO as iscrowd) and "image_scale" [B]
            (resize factor of `fpn_keras.data.pipeline.prepare`: boxes are
            divided by it, so results are in original image pixels).
        class_names: optional list of K class names; its `category_ids`
            attribute (`fpn_keras.data.ClassNames`), if any, gives the
            original category ids of a new evaluator.
        max_batches: optional limit on the number of batches.
        verbose: show a progress bar and print the COCO table.
        evaluator: optional `CocoEvaluator` to fill (e.g. to read
            `results_json()` afterwards); a new one by default.

    Returns:
        dict of metrics, see `CocoEvaluator.evaluate`.
    """
    import keras

    if max_batches is not None and max_batches < 1:
        raise ValueError(f"`max_batches` must be >= 1, received {max_batches}.")
    fmt = model.bounding_box_format
    if evaluator is None:
        evaluator = CocoEvaluator(
            class_names=class_names, category_ids=getattr(class_names, "category_ids", None)
        )
    target = max_batches
    if target is None:
        try:
            target = len(dataset)
        except TypeError:
            target = None
    progbar = keras.utils.Progbar(target) if verbose else None

    for step, (images, targets) in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            break
        if getattr(model, "short_side_resize", None) and "image_size" in targets:
            # A converted model clips boxes to each image before NMS, as its library does.
            preds = model.detect(images, image_sizes=targets["image_size"])
        else:
            preds = model.predict_on_batch(images)
        _add_batch(evaluator, images, targets, preds, fmt)
        if progbar is not None:
            progbar.update(step + 1)
    # Models may ask for other recall limits / class-agnostic scoring (the RPN does).
    return evaluator.evaluate(verbose=verbose, **getattr(model, "evaluation_settings", {}))


_DESCRIPTIONS = {
    "AP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP50": "AP @[IoU=0.50      | area=all | maxDets=100]",
    "AP75": "AP @[IoU=0.75      | area=all | maxDets=100]",
    "APs": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "APm": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "APl": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "ARs": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "ARm": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "ARl": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "VOC07_mAP": "Pascal VOC mAP @[IoU=0.50 | 2007 11-point]",
    "VOC_mAP": "Pascal VOC mAP @[IoU=0.50 | area under PR]",
}


def format_metrics(metrics, title="COCO metrics"):
    """A COCO-style table of the metrics dict returned by `evaluate`."""
    lines = [title]
    # AP and ARs/ARm/ARl are computed at the largest recall limit (1000 for proposals).
    limits = [int(name[2:]) for name in metrics if name[2:].isdigit() and name.startswith("AR")]
    largest = max(limits, default=100)
    for name, value in metrics.items():
        description = _DESCRIPTIONS.get(name)
        if description and largest != 100 and not name[2:].isdigit():
            description = description.replace("maxDets=100]", f"maxDets={largest}]")
        if description is None and name.startswith("AR"):
            description = f"AR @[IoU=0.50:0.95 | area=all | maxDets={name[2:]}]"
        lines.append(f"  {name:<6} {description or '':<45} = {value:.3f}")
    return "\n".join(lines)
