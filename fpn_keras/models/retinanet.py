"""The RetinaNet head bundle: dense head + anchors + matching + losses + decoding.

Shapes: B batch, N anchors (all levels), M ground truths, K classes,
D = max_detections. Boxes are `xyxy` in input-image pixels. Follows the head
protocol of `fpn_keras.models.head`.
"""

import keras
from keras import ops

from fpn_keras import distribute
from fpn_keras.anchors import head_anchor_generator
from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.boxes.convert import clip_boxes
from fpn_keras.layers.dense_heads import RetinaNetHead
from fpn_keras.losses import giou_loss, sigmoid_focal_loss, smooth_l1_loss
from fpn_keras.matching import Matcher
from fpn_keras.models.head import DetectionHead
from fpn_keras.postprocess import top_candidates
from fpn_keras.targets import check_labels, label_anchors


def clip_and_drop_empty(detections, image_shape):
    """detectron2's detector_postprocess on padded detections: boxes clipped to `image_shape`,
    those left empty (a side <= 0) dropped, the rest moved up in order (D rows, padding -1)."""
    boxes = clip_boxes(detections["boxes"], *image_shape)  # [B, D, 4]
    valid = ((detections["labels"] >= 0) & (boxes[..., 2] > boxes[..., 0])
             & (boxes[..., 3] > boxes[..., 1]))  # [B, D]
    rows = ops.arange(ops.shape(boxes)[1], dtype="int32")[None]
    # Kept rows first, each group in its order: sort by row (+ D for the dropped ones).
    order = ops.argsort(ops.where(valid, rows, rows + ops.shape(boxes)[1]), axis=-1)
    valid = ops.take_along_axis(valid, order, axis=1)
    return {"boxes": ops.where(valid[..., None], ops.take_along_axis(boxes, order[..., None], axis=1), -1.0),
            "scores": ops.where(valid, ops.take_along_axis(detections["scores"], order, axis=1), 0.0),
            "labels": ops.where(valid, ops.take_along_axis(detections["labels"], order, axis=1), -1),
            "num_detections": ops.sum(ops.cast(valid, "int32"), axis=1)}


@keras.saving.register_keras_serializable(package="fpn_keras")
class RetinaNet(DetectionHead):
    """RetinaNet (Lin et al., 2017, "Focal Loss for Dense Object Detection") on P3-P7.

    Args:
        num_classes: K foreground classes (no background class: sigmoid outputs).
        min_level, max_level: pyramid levels the head runs on.
        anchor_scale, anchor_scales, aspect_ratios: see `AnchorGenerator`.
        anchor_offset, anchor_sizes, round_anchors, anchor_strides: `AnchorGenerator`'s
            offset, sizes, round_cells, strides (torchvision: 0.0, ((32, 40, 50), ...),
            True, "image_over_grid"; see `fpn_keras.convert.torchvision_retinanet`).
        channels, num_convs, norm, norm_epsilon: the class/box subnets (see `RetinaNetHead`).
        positive_threshold, negative_threshold: IoU matching (0.5 / 0.4).
        alpha, gamma: focal loss. box_loss: "smooth_l1" (beta `smooth_l1_beta`) or "giou".
        box_loss_weight: weight of the box loss in the total.
        pre_nms_topk, score_threshold, nms_iou_threshold, max_detections: inference.
        clip_before_nms: candidates clipped to the canvas before NMS (True, torchvision); False:
            NMS on the unclipped boxes, then clipped and the empty ones dropped (detectron2's
            RetinaNet and detector_postprocess; `clip_and_drop_empty`).
    """

    loss_names = ("cls_loss", "box_loss")

    def __init__(self, num_classes=80, min_level=3, max_level=7, anchor_scale=4.0,
                 anchor_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), aspect_ratios=(0.5, 1.0, 2.0),
                 channels=256, num_convs=4, norm=None, prior_probability=0.01,
                 positive_threshold=0.5, negative_threshold=0.4, allow_low_quality_matches=True,
                 alpha=0.25, gamma=2.0, box_loss="smooth_l1", smooth_l1_beta=0.1,
                 box_loss_weight=1.0, pre_nms_topk=1000, score_threshold=0.05,
                 nms_iou_threshold=0.5, max_detections=100, anchor_offset=0.5, anchor_sizes=None,
                 round_anchors=False, anchor_strides="level", norm_epsilon=None, clip_before_nms=True,
                 **kwargs):
        super().__init__(**kwargs)
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', received {box_loss!r}")
        self.num_classes = int(num_classes)
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.anchor_generator = head_anchor_generator(
            min_level, max_level, anchor_scale, anchor_scales, aspect_ratios, anchor_offset,
            anchor_sizes, round_anchors, anchor_strides)
        self.matcher = Matcher(positive_threshold, negative_threshold, allow_low_quality_matches)
        self.box_coder = BoxCoder()
        self.head = RetinaNetHead(
            num_classes, self.anchor_generator.num_anchors_per_location, channels,
            num_convs, norm, prior_probability, norm_epsilon=norm_epsilon, name="head")
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.norm = norm
        self.prior_probability = float(prior_probability)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.box_loss = box_loss
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_loss_weight = float(box_loss_weight)
        self.clip_before_nms = bool(clip_before_nms)
        self.set_detection_options(pre_nms_topk, score_threshold, nms_iou_threshold, max_detections)

    def build(self, input_shape):
        self.head.build(input_shape)
        self.built = True

    def call(self, pyramid, image_shape=None, training=False, image_sizes=None):
        """pyramid {"P3".."P7"} -> raw outputs, per level:
        {"cls_logits": {"P3": [B, N3, K], ...}, "box_deltas": {..: [B, Nl, 4]},
         "anchors": {..: [Nl, 4]}}."""
        levels = self.select_levels(pyramid)
        cls_logits, box_deltas = self.head(levels, training=training)
        shapes = {name: (ops.shape(x)[1], ops.shape(x)[2]) for name, x in levels.items()}
        anchors = self.anchor_generator(shapes, image_shape)
        return {"cls_logits": cls_logits, "box_deltas": box_deltas, "anchors": anchors}

    def compute_losses(self, raw, gt_boxes, gt_labels, image_shape=None):
        """Focal + box loss, each summed and divided by the number of positive anchors.

        gt_boxes [B, M, 4] xyxy clipped to the image; gt_labels [B, M] (-1 padding).
        Returns {"cls_loss": scalar, "box_loss": scalar}.
        """
        cls_logits = ops.cast(self.concat_levels(raw["cls_logits"], axis=-2), "float32")  # [B, N, K]
        box_deltas = ops.cast(self.concat_levels(raw["box_deltas"], axis=-2), "float32")  # [B, N, 4]
        anchors = self.concat_levels(raw["anchors"], axis=-2)  # [N, 4]
        gt_labels = check_labels(gt_labels, self.num_classes)
        cls_targets, matched_boxes = label_anchors(anchors, gt_boxes, gt_labels, self.matcher)

        positive = cls_targets >= 0  # [B, N]
        not_ignored = cls_targets != -2
        # Normaliser: positives in the whole (global, all replicas) batch, at least 1
        # (images without objects); see fpn_keras.distribute.
        num_positives = ops.maximum(distribute.global_sum(ops.sum(ops.cast(positive, "float32"))), 1.0)

        one_hot = ops.one_hot(ops.maximum(cls_targets, 0), self.num_classes)
        one_hot = one_hot * ops.cast(positive, "float32")[..., None]
        focal = ops.sum(sigmoid_focal_loss(one_hot, cls_logits, self.alpha, self.gamma), axis=-1)
        cls_loss = ops.sum(ops.where(not_ignored, focal, 0.0)) / num_positives

        if self.box_loss == "giou":
            predicted = self.box_coder.decode(box_deltas, anchors[None])
            per_anchor = giou_loss(matched_boxes, predicted)
        else:
            box_targets = self.box_coder.encode(matched_boxes, anchors[None])
            per_anchor = ops.sum(smooth_l1_loss(box_targets, box_deltas, self.smooth_l1_beta), axis=-1)
        box_loss = ops.sum(ops.where(positive, per_anchor, 0.0)) / num_positives
        return {"cls_loss": cls_loss, "box_loss": self.box_loss_weight * box_loss}

    def detect(self, raw, image_shape, image_sizes=None):
        """Raw outputs -> detections, padded to D = max_detections.

        Per level: the top `pre_nms_topk` (anchor, class) scores, decoded and
        clipped to `image_shape` (height, width) (or each image's `image_sizes`
        [B, 2]); then class-aware NMS over all
        levels and the D best. Returns {"boxes": [B, D, 4] xyxy, "scores": [B, D],
        "labels": [B, D] int32 (-1 padding), "num_detections": [B] int32}.
        """
        all_boxes, all_scores, all_classes = [], [], []
        for name in self.level_names:
            boxes, logits, classes = top_candidates(
                raw["cls_logits"][name], raw["box_deltas"][name], raw["anchors"][name],
                self.pre_nms_topk, self.box_coder,
                self.clip_bounds(image_shape, image_sizes) if self.clip_before_nms else None)
            all_boxes.append(boxes)
            all_scores.append(ops.sigmoid(logits))
            all_classes.append(classes)
        boxes = ops.concatenate(all_boxes, axis=1)
        scores = ops.concatenate(all_scores, axis=1)
        classes = ops.concatenate(all_classes, axis=1)
        detections = self.select(boxes, scores, classes)
        if not self.clip_before_nms:
            detections = clip_and_drop_empty(detections, self.clip_bounds(image_shape, image_sizes))
        return detections

    def class_specific_layers(self):
        """The class subnet's last conv (A*K logits); its towers and the box subnet are shared."""
        return [self.head.cls_logits]

    def get_config(self):
        config = super().get_config()
        anchors = self.anchor_generator.get_config()
        matcher = self.matcher.get_config()
        config.update({
            "num_classes": self.num_classes,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "anchor_scale": anchors["anchor_scale"],
            "anchor_scales": anchors["scales"],
            "aspect_ratios": anchors["aspect_ratios"],
            "channels": self.channels,
            "num_convs": self.num_convs,
            "norm": self.norm,
            "norm_epsilon": self.head.norm_epsilon,
            "prior_probability": self.prior_probability,
            "positive_threshold": matcher["positive_threshold"],
            "negative_threshold": matcher["negative_threshold"],
            "allow_low_quality_matches": matcher["allow_low_quality_matches"],
            "alpha": self.alpha,
            "gamma": self.gamma,
            "box_loss": self.box_loss,
            "smooth_l1_beta": self.smooth_l1_beta,
            "box_loss_weight": self.box_loss_weight,
            "clip_before_nms": self.clip_before_nms,
            **self.detection_options(),
            **self.anchor_generator.head_config(),
        })
        return config

