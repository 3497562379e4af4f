"""Matching anchors (or proposals) to ground-truth boxes by IoU.

Shapes: B batch, N anchors, M ground-truth boxes (padded).

One target encoding, used by the matcher, the samplers, `fpn_keras.targets` and
every head's loss (torchvision's `Matcher` uses the same two negative values):

    >= 0        a positive: the matched ground truth's index (matcher) or its
                class id (class targets)
    BACKGROUND  -1: below the negative threshold, or a sampled background RoI
    IGNORED     -2: between the thresholds, not sampled, or an unused slot: no loss
"""

from keras import ops

BACKGROUND = -1
IGNORED = -2


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
        """iou [B, N, M], gt_valid [B, M] bool -> matches [B, N] int32: the matched
        ground truth's index for positives, BACKGROUND or IGNORED otherwise."""
        # Invalid ground truth: IoU -1 so it is never the argmax of a real overlap.
        iou = ops.where(gt_valid[:, None, :], iou, -1.0)
        matched_idx = ops.cast(ops.argmax(iou, axis=-1), "int32")  # [B, N]
        max_iou = ops.max(iou, axis=-1)  # [B, N]
        positive = max_iou >= self.positive_threshold
        if self.allow_low_quality_matches:
            best_per_gt = ops.max(iou, axis=1, keepdims=True)  # [B, 1, M]
            is_best = (iou == best_per_gt) & (best_per_gt > 0.0) & gt_valid[:, None, :]
            positive = positive | ops.any(is_best, axis=-1)
        unmatched = ops.where(max_iou < self.negative_threshold, BACKGROUND, IGNORED)
        return ops.cast(ops.where(positive, matched_idx, unmatched), "int32")

    def get_config(self):
        return {
            "positive_threshold": self.positive_threshold,
            "negative_threshold": self.negative_threshold,
            "allow_low_quality_matches": self.allow_low_quality_matches,
        }


def _select_random(mask, priority, max_count, quota=None):
    """Up to min(sum(mask), max_count, quota) random True entries of mask [B, N] per row."""
    num = mask.shape[1]
    k = min(max_count, num) if isinstance(num, int) else max_count
    ranked = ops.where(mask, priority, -1.0)
    top_values, _ = ops.top_k(ranked, k=k)  # [B, k], descending
    count = ops.minimum(ops.sum(ops.cast(mask, "int32"), axis=1), k)
    if quota is not None:
        count = ops.minimum(count, ops.cast(quota, "int32"))
    # The count-th largest priority is the cut-off (priorities are distinct a.s.).
    cutoff = ops.take_along_axis(top_values, ops.maximum(count - 1, 0)[:, None], axis=1)
    return mask & (ranked >= cutoff) & (count[:, None] > 0)


def sample_balanced(targets, num_samples, positive_fraction, seed=None):
    """Random balanced sample of positives and negatives per image (detectron2's
    `subsample_labels`), with static shapes.

    targets [B, N] in the encoding above (>= 0 positive, BACKGROUND negative,
    IGNORED never sampled) -> (positive_mask,
    negative_mask), both [B, N] bool: at most num_samples * positive_fraction
    positives, then negatives up to num_samples in total (fewer when there
    are not enough). `seed`: an int or `keras.random.SeedGenerator`.
    """
    import keras

    priority = keras.random.uniform(ops.shape(targets), seed=seed)
    max_positives = int(num_samples * positive_fraction)
    positives = _select_random(targets >= 0, priority, max_positives)
    num_positives = ops.sum(ops.cast(positives, "int32"), axis=1)
    negatives = _select_random(targets == BACKGROUND, priority, num_samples,
                               quota=num_samples - num_positives)
    return positives, negatives
