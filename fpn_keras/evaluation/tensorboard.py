"""TensorBoard pictures of an evaluation during training (tf.summary), beside the scalars.

The COCO numbers and the learning rate need nothing here: `CocoMetricsCallback` puts
`val_AP`, ... into the epoch logs and `LearningRateLogger` `learning_rate`, and Keras'
`TensorBoard` callback (listed after them) writes them as `epoch_AP`, ... (logs/validation)
and `epoch_learning_rate` (logs/train) at step = epoch. `EvaluationSummaries` adds, at the
same step, in its own folder (logs/evaluation):
- "predictions": the model's detections on a fixed set of validation images (the first
  `num_images` of the dataset, the same every time), one image each;
- "pr_curves": the per-class precision-recall picture of `fpn-keras evaluate` (COCO's
  interpolated precision at IoU 0.5);
- "pr_curve/<class>": TensorBoard's PR-curve plugin data per class: true / false positives
  (VOC matching at IoU 0.5) and misses of the detections scoring >= t, t in 0..1.
"""

import keras
import numpy as np

from fpn_keras import visualization
from fpn_keras.evaluation import failures, report

NUM_THRESHOLDS = 51  # score thresholds 0, 0.02, ..., 1 of the PR-curve plugin


def draw_predictions(model, images, score_threshold=0.3):
    """Draws `model`'s detections on images [B, H, W, 3] (0..255) -> list of B uint8 arrays;
    images smaller than 256 pixels high are drawn 2x (or more) so the labels stay readable."""
    detections = model.predict_on_batch(images)
    boxes = keras.utils.bounding_boxes.convert_format(
        detections["boxes"], source=model.bounding_box_format, target="xyxy",
        height=images.shape[1], width=images.shape[2])
    zoom = max(1, 256 // int(images.shape[1]))
    boxes = keras.ops.convert_to_numpy(boxes) * zoom
    labels = keras.ops.convert_to_numpy(detections["labels"])
    scores = keras.ops.convert_to_numpy(detections["scores"])
    drawn = []
    for i in range(images.shape[0]):
        image = np.asarray(images[i]).repeat(zoom, axis=0).repeat(zoom, axis=1)
        drawn.append(visualization.draw_detections(image, boxes[i], labels[i], scores[i],
                                                   class_names=model.class_names,
                                                   score_threshold=score_threshold))
    return drawn


def pr_curve_data(det_tp, det_fp, det_scores, num_positives, num_thresholds=NUM_THRESHOLDS):
    """[6, num_thresholds] float32 rows TP, FP, TN (0: undefined for detection), FN,
    precision, recall of the detections with score >= t for t = linspace(0, 1), the layout
    of tensorboard.plugins.pr_curve (precision 1 where nothing is detected)."""
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    scores = np.asarray(det_scores, np.float64)
    above = scores[None, :] >= thresholds[:, None]  # [T, D]
    tp = (above & np.asarray(det_tp, bool)[None]).sum(axis=1).astype(np.float64)
    fp = (above & np.asarray(det_fp, bool)[None]).sum(axis=1).astype(np.float64)
    fn = num_positives - tp
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = tp / max(num_positives, 1)
    return np.stack([tp, fp, np.zeros_like(tp), fn, precision, recall]).astype(np.float32)


class EvaluationSummaries:
    """Writes the pictures above into `log_dir` at every `write(model, evaluator, step)`.

    Args:
        log_dir: folder of the tf.summary event files (e.g. OUT/logs/evaluation).
        dataset: iterable of `(images, targets)` validation batches.
        num_images: how many validation images get their detections drawn.
        score_threshold: lowest score drawn.
    """

    def __init__(self, log_dir, dataset, num_images=4, score_threshold=0.3):
        if int(num_images) < 0:
            raise ValueError(f"`num_images` must be >= 0, received {num_images}.")
        self.log_dir = log_dir
        self.dataset = dataset
        self.num_images = int(num_images)
        self.score_threshold = score_threshold
        self._images = None
        self._writer = None

    def fixed_images(self):
        """The first `num_images` validation images, float32 [N, H, W, 3] (read once)."""
        if self._images is None:
            taken = []
            for images, _ in self.dataset:
                taken.extend(np.asarray(images)[: self.num_images - len(taken)])
                if len(taken) >= self.num_images:
                    break
            self._images = np.stack(taken).astype("float32") if taken else None
        return self._images

    def write(self, model, evaluator, step):
        """Writes predictions, the PR picture and the PR-curve data of an evaluated
        `evaluator` (class-aware runs only for the PR parts) at `step`."""
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            images = self.fixed_images() if self.num_images else None
            if images is not None:
                drawn = np.stack(draw_predictions(model, images, self.score_threshold))
                tf.summary.image("predictions", drawn, step=step, max_outputs=len(drawn))
            if getattr(evaluator, "coco_eval", None) is not None and evaluator.coco_eval.params.useCats:
                picture = report.pr_picture(evaluator)
                tf.summary.image("pr_curves", picture[None], step=step)
                self._write_pr_curves(evaluator, step)
        self._writer.flush()

    def _write_pr_curves(self, evaluator, step):
        import tensorflow as tf
        from tensorboard.plugins.pr_curve import metadata

        gts, dets = evaluator.ground_truth_json(), evaluator.results_json()
        det_tp, det_fp, _ = failures.match_results(gts, dets)
        det_cats = np.asarray([d["category_id"] for d in dets], np.int64)
        det_scores = np.asarray([d["score"] for d in dets], np.float64)
        for category in evaluator.categories():
            num_positives = sum(1 for g in gts if g["category_id"] == category["id"] and not g["iscrowd"])
            if not num_positives:
                continue
            mine = det_cats == category["id"]
            data = pr_curve_data(det_tp[mine], det_fp[mine], det_scores[mine], num_positives)
            summary_metadata = tf.compat.v1.SummaryMetadata.FromString(metadata.create_summary_metadata(
                display_name=category["name"], description="IoU 0.5, detections scoring >= threshold",
                num_thresholds=NUM_THRESHOLDS).SerializeToString())
            tf.summary.write(f"pr_curve/{category['name']}", data, step=step, metadata=summary_metadata)
