"""Faster R-CNN with FPN (FPN paper Section 4.2): RPN -> proposals -> RoI heads
(multi-level RoIAlign -> 2fc box head). Follows the head protocol of
`fpn_keras.models.head`.

Shapes: B batch, P proposals, S sampled RoIs, M ground truths, K classes,
D = max_detections. Boxes are `xyxy` in input-image pixels.
"""

import keras
from keras import ops

from fpn_keras import distribute
from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.boxes.convert import clip_boxes
from fpn_keras.layers.roi_heads import RoIHeads
from fpn_keras.postprocess import FLOAT_SCOPE
from fpn_keras.losses import smooth_l1_loss
from fpn_keras.matching import IGNORED, Matcher
from fpn_keras.models.head import DetectionHead
from fpn_keras.models.rpn import RPN
from fpn_keras.targets import check_labels, sample_rois


def _deserialize(value):
    return keras.saving.deserialize_keras_object(value) if isinstance(value, dict) else value


def fast_rcnn_losses(cls_logits, box_deltas, cls_targets, rois, matched_boxes, box_coder, smooth_l1_beta):
    """The second stage's losses (Fast R-CNN), both divided by the sampled RoIs of the
    global batch (all replicas; see fpn_keras.distribute).

    cls_logits [B, S, K + 1] (background last), box_deltas [B, S, K, 4] (one per class),
    cls_targets [B, S] (class id, BACKGROUND, IGNORED: see fpn_keras.matching), rois and
    matched_boxes [B, S, 4] xyxy -> (softmax cross-entropy over the sampled RoIs,
    smooth L1 of the ground-truth class's deltas over the foreground RoIs).
    """
    cls_logits = ops.cast(cls_logits, "float32")
    sampled = cls_targets != IGNORED
    foreground = cls_targets >= 0
    num_classes = cls_logits.shape[-1] - 1
    normaliser = ops.maximum(distribute.global_sum(ops.sum(ops.cast(sampled, "float32"))), 1.0)
    softmax_index = ops.where(foreground, cls_targets, num_classes)  # background: the last logit
    ce = ops.sparse_categorical_crossentropy(softmax_index, cls_logits, from_logits=True)
    cls_loss = ops.sum(ops.where(sampled, ce, 0.0)) / normaliser
    # The deltas of each RoI's ground-truth class: [B, S, K, 4] -> [B, S, 4].
    deltas = ops.take_along_axis(ops.cast(box_deltas, "float32"),
                                 ops.maximum(cls_targets, 0)[..., None, None], axis=2)[:, :, 0, :]
    per_roi = ops.sum(smooth_l1_loss(box_coder.encode(matched_boxes, rois), deltas, smooth_l1_beta), axis=-1)
    return cls_loss, ops.sum(ops.where(foreground, per_roi, 0.0)) / normaliser


@keras.saving.register_keras_serializable(package="fpn_keras")
class FasterRCNN(DetectionHead):
    """Faster R-CNN head bundle.

    Args:
        num_classes: K foreground classes (softmax over K + 1, background last).
        rpn: a built `RPN` (default: the paper's, P2-P6).
        roi_min_level, roi_max_level: levels RoIs are pooled from (P2-P5).
        pooled_size, sampling_ratio, canonical_level, canonical_size: RoIAlign and Eq. (1).
        fc_dim, num_fc: the box head's fcs; num_conv, conv_dim, box_head_norm,
            box_head_norm_epsilon: its convs before them (`BoxHead`; 0 convs: the paper's 2fc
            head; torchvision's fasterrcnn_resnet50_fpn_v2: 4 x 256, "batch", 1e-5, 1 fc).
        batch_size_per_image, positive_fraction, positive_threshold: RoI sampling
            (512, 25 %, IoU 0.5).
        box_coder_weights: (10, 10, 5, 5). smooth_l1_beta: 0 (L1), as detectron2.
        score_threshold, nms_iou_threshold, max_detections: inference (0.05, 0.5, 100).
        pre_nms_topk: (proposal, class) candidates kept before NMS (a static bound; P * K
            keeps them all, as torchvision).
        roi_aligned, roi_level_epsilon: RoIAlign's half-pixel shift (True, detectron2) and the
            level mapper's epsilon (see `assign_levels`); torchvision: False, 1e-6.
        min_box_size: at inference, boxes with a side < min_box_size (pixels) are dropped
            before NMS (0: none; torchvision: 1e-2).
        roi_feature_strides: the stride of each RoI level (None: 2**l; torchvision's
            MobileNetV3 FPN: (32,), its RoI level P4 is at stride 32).
        max_sampling_ratio: with sampling_ratio 0 (detectron2's adaptive RoIAlign), the most
            samples per bin and axis (see `multilevel_roi_align`).
    """

    neck_args = RPN.neck_args
    sub_heads = {"rpn": RPN}  # head_args.rpn: the RPN's own arguments

    def __init__(self, num_classes=80, rpn=None, roi_min_level=2, roi_max_level=5, pooled_size=7,
                 sampling_ratio=2, canonical_level=4, canonical_size=224.0, fc_dim=1024, num_fc=2,
                 batch_size_per_image=512, positive_fraction=0.25, positive_threshold=0.5,
                 box_coder_weights=(10.0, 10.0, 5.0, 5.0), smooth_l1_beta=0.0,
                 score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100,
                 pre_nms_topk=5000, seed=None, roi_aligned=True, roi_level_epsilon=None,
                 min_box_size=0.0, roi_feature_strides=None, num_conv=0, conv_dim=256, box_head_norm=None,
                 box_head_norm_epsilon=None, max_sampling_ratio=4, **kwargs):
        super().__init__(**kwargs)
        rpn = _deserialize(rpn)
        self.rpn = rpn if rpn is not None else RPN(seed=seed, name="rpn")
        self.num_classes = int(num_classes)
        self.min_level, self.max_level = self.rpn.min_level, self.rpn.max_level
        if roi_min_level < self.min_level or roi_max_level > self.max_level:
            raise ValueError(
                f"RoI levels P{roi_min_level}-P{roi_max_level} must lie within the RPN's "
                f"P{self.min_level}-P{self.max_level}")
        self.roi_min_level, self.roi_max_level = int(roi_min_level), int(roi_max_level)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.matcher = Matcher(positive_threshold, positive_threshold, allow_low_quality_matches=False)
        self.box_coder = BoxCoder(box_coder_weights)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.set_detection_options(pre_nms_topk, score_threshold, nms_iou_threshold, max_detections)
        self.min_box_size = float(min_box_size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.roi_heads = RoIHeads(num_classes, roi_min_level, roi_max_level, pooled_size, sampling_ratio,
                                  canonical_level, canonical_size, fc_dim, num_fc, roi_aligned,
                                  roi_level_epsilon, max_sampling_ratio=max_sampling_ratio,
                                  feature_strides=roi_feature_strides, num_conv=num_conv,
                                  conv_dim=conv_dim, norm=box_head_norm, norm_epsilon=box_head_norm_epsilon,
                                  name="roi_heads")
        self.loss_names = self.rpn.loss_names + ("cls_loss", "box_loss")

    def build(self, input_shape):
        if not self.rpn.built:  # a deserialised RPN arrives built
            self.rpn.build(input_shape)
        self.roi_heads.build({f"P{l}": input_shape[f"P{l}"]
                              for l in range(self.roi_min_level, self.roi_max_level + 1)})
        self.built = True

    def call(self, pyramid, image_shape, training=False, image_sizes=None):
        """RPN -> proposals -> RoI heads. Returns {"rpn": the RPN's raw outputs,
        "features": {"P2".."P5"}, "proposals": [B, P, 4], "valid": [B, P]} and, at
        inference, the RoI heads' "cls_logits" [B, P, K + 1] and "box_deltas" [B, P, K, 4]
        on the proposals. In training the RoI heads run in `compute_losses`, on RoIs
        sampled against the ground truth (which `call` does not see)."""
        features = {f"P{l}": pyramid[f"P{l}"] for l in range(self.roi_min_level, self.roi_max_level + 1)}
        rpn_raw = self.rpn(pyramid, image_shape=image_shape, training=training)
        with keras.name_scope(FLOAT_SCOPE):  # box arithmetic: float32 in an int8 TFLite export
            proposals, _, valid = self.rpn.propose(rpn_raw, image_shape, training=training,
                                                   image_sizes=image_sizes)
        raw = {"rpn": rpn_raw, "features": features, "proposals": proposals, "valid": valid}
        if not training:
            raw["cls_logits"], raw["box_deltas"] = self.roi_heads(features, proposals)
        return raw

    def set_implementations(self, nms=None, roi_align=None):
        """Also sets the RPN's NMS and the RoI heads' RoIAlign (see
        `DetectionHead.set_implementations`)."""
        self.rpn.set_implementations(nms=nms)
        previous = super().set_implementations(nms=nms, roi_align=roi_align)
        self.roi_heads.implementation = self.roi_align_implementation
        return previous

    def compute_losses(self, raw, gt_boxes, gt_labels, image_shape):
        """RPN losses + Fast R-CNN softmax cross-entropy and L1 on foreground RoIs,
        both divided by the number of sampled RoIs."""
        losses = self.rpn.compute_losses(raw["rpn"], gt_boxes, gt_labels, image_shape)
        gt_labels = check_labels(gt_labels, self.num_classes)
        rois, cls_targets, matched_boxes = sample_rois(
            raw["proposals"], raw["valid"], gt_boxes, gt_labels, self.matcher,
            self.batch_size_per_image, self.positive_fraction, self.seed_generator)
        cls_logits, box_deltas = self.roi_heads(raw["features"], rois)
        losses["cls_loss"], losses["box_loss"] = fast_rcnn_losses(
            cls_logits, box_deltas, cls_targets, rois, matched_boxes, self.box_coder, self.smooth_l1_beta)
        return losses

    def detect(self, raw, image_shape, image_sizes=None):
        """-> {"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D], "num_detections" [B]}."""
        proposals, valid = raw["proposals"], raw["valid"]
        probs = ops.softmax(ops.cast(raw["cls_logits"], "float32"), axis=-1)[..., : self.num_classes]
        probs = ops.where(valid[..., None], probs, 0.0)  # [B, P, K]
        boxes = self.box_coder.decode(raw["box_deltas"], proposals[:, :, None, :])  # [B, P, K, 4]
        boxes = clip_boxes(boxes, *self.clip_bounds(image_shape, image_sizes))
        if self.min_box_size > 0:
            sides = ops.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
            probs = ops.where(sides >= self.min_box_size, probs, 0.0)
        num_proposals = proposals.shape[1]
        # [B, P, K] -> [B, P * K] candidates, each with its class.
        scores = ops.reshape(probs, (-1, num_proposals * self.num_classes))
        boxes = ops.reshape(boxes, (-1, num_proposals * self.num_classes, 4))
        classes = ops.tile(ops.arange(self.num_classes, dtype="int32")[None], (1, num_proposals))
        k = min(self.pre_nms_topk, num_proposals * self.num_classes)
        scores, top = ops.top_k(scores, k=k)
        boxes = ops.take_along_axis(boxes, top[..., None], axis=1)
        classes = ops.take(classes[0], top, axis=0)
        return self.select(boxes, scores, classes)

    def class_specific_layers(self):
        """The box predictor's class scores (K + 1) and per-class box deltas (K * 4); the RPN,
        RoIAlign and the fc layers are shared."""
        box_head = self.roi_heads.box_head
        return [box_head.cls_score, box_head.bbox_pred]

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "rpn": keras.saving.serialize_keras_object(self.rpn),
            "roi_min_level": self.roi_min_level, "roi_max_level": self.roi_max_level,
            "pooled_size": self.roi_heads.pooled_size, "sampling_ratio": self.roi_heads.sampling_ratio,
            "canonical_level": self.roi_heads.canonical_level, "canonical_size": self.roi_heads.canonical_size,
            "fc_dim": self.roi_heads.box_head.fc_dim, "num_fc": self.roi_heads.box_head.num_fc,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "positive_threshold": self.matcher.positive_threshold,
            "box_coder_weights": list(self.box_coder.weights),
            "smooth_l1_beta": self.smooth_l1_beta, "seed": self.seed, **self.detection_options(),
            "roi_aligned": self.roi_heads.aligned, "roi_level_epsilon": self.roi_heads.level_epsilon,
            "min_box_size": self.min_box_size, "max_sampling_ratio": self.roi_heads.max_sampling_ratio,
            "roi_feature_strides": self.roi_heads.get_config()["feature_strides"],
            "num_conv": self.roi_heads.box_head.num_conv,
            "conv_dim": self.roi_heads.box_head.conv_dim, "box_head_norm": self.roi_heads.box_head.norm,
            "box_head_norm_epsilon": self.roi_heads.box_head.norm_epsilon,
        })
        return config
