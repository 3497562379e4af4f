"""Matching anchors (or proposals) to ground-truth boxes by IoU.

Shapes: B batch, N anchors, M ground-truth boxes (padded).
Labels: 1 positive, 0 negative, -1 ignored (between the thresholds).
"""

from keras import ops

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class Matcher:
    """Assigns each anchor the ground truth of highest IoU (detectron2's `Matcher`).

    IoU >= `positive_threshold` -> positive; IoU < `negative_threshold` ->
    negative; in between -> ignored. With `allow_low_quality_matches`, every
    ground truth's best anchors (ties included) become positive even below the
    threshold, so that no object is left without an anchor (Faster R-CNN RPN).
    Ground truth marked invalid (padding, zero area) never matches.
    """

    def __init__(self, positive_threshold=0.5, negative_threshold=0.4,
                 allow_low_quality_matches=True):
        if negative_threshold > positive_threshold:
            raise ValueError(
                f"negative_threshold ({negative_threshold}) must be <= "
                f"positive_threshold ({positive_threshold})"
            )
        self.positive_threshold = float(positive_threshold)
        self.negative_threshold = float(negative_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, iou, gt_valid):
        """iou [B, N, M], gt_valid [B, M] bool -> (matched_idx [B, N] int32, labels [B, N] int32)."""
        # Invalid ground truth: IoU -1 so it is never the argmax of a real overlap.
        iou = ops.where(gt_valid[:, None, :], iou, -1.0)
        matched_idx = ops.cast(ops.argmax(iou, axis=-1), "int32")  # [B, N]
        max_iou = ops.max(iou, axis=-1)  # [B, N]
        labels = ops.where(
            max_iou >= self.positive_threshold,
            POSITIVE,
            ops.where(max_iou < self.negative_threshold, NEGATIVE, IGNORE),
        )
        if self.allow_low_quality_matches:
            best_per_gt = ops.max(iou, axis=1, keepdims=True)  # [B, 1, M]
            is_best = (iou == best_per_gt) & (best_per_gt > 0.0) & gt_valid[:, None, :]
            labels = ops.where(ops.any(is_best, axis=-1), POSITIVE, labels)
        return matched_idx, ops.cast(labels, "int32")

    def get_config(self):
        return {
            "positive_threshold": self.positive_threshold,
            "negative_threshold": self.negative_threshold,
            "allow_low_quality_matches": self.allow_low_quality_matches,
        }
