"""The Region Proposal Network as a head bundle (FPN paper Section 4.1, Table 1).

Shapes: B batch, N anchors (all levels), M ground truths, P proposals per image.
Used inside `FasterRCNN`, or alone as `FPNDetector(head="rpn")`, whose detections
are the proposals (one class, "object"; score = objectness probability). Follows the
head protocol of `fpn_keras.models.head`.
"""

import keras
from keras import ops

from fpn_keras import distribute
from fpn_keras.anchors import head_anchor_generator
from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.layers.dense_heads import RPNHead
from fpn_keras.layers.proposals import generate_proposals
from fpn_keras.losses import smooth_l1_loss
from fpn_keras.matching import Matcher, sample_balanced
from fpn_keras.models.head import DetectionHead
from fpn_keras.targets import label_anchors


@keras.saving.register_keras_serializable(package="fpn_keras")
class RPN(DetectionHead):
    """RPN on P2-P6: one anchor size per level (anchor_scale 8: 32..512) x 3 ratios.

    Training: IoU >= 0.7 positive, < 0.3 negative, low-quality matches allowed;
    `batch_size_per_image` anchors per image, at most `positive_fraction`
    positive; binary cross-entropy over the sampled anchors + smooth-L1 (beta 0:
    L1) over the sampled positives, both divided by `batch_size_per_image` x images
    (detectron2's normaliser, fixed whatever the number sampled). Proposals: see `generate_proposals`.

    `anchor_scales` multiplies the level's anchor size (default (1.0,): one
    size per level, as in the paper); several scales let a single level cover
    all object sizes (Table 1's single-map baselines and "only P2").
    anchor_offset, anchor_sizes, round_anchors, anchor_strides: as `RetinaNet`'s
    (torchvision's conventions; `AnchorGenerator`). score_threshold: proposals whose
    objectness probability is below it are dropped before NMS (0: none; torchvision's
    rpn_score_thresh, 0.05 in fasterrcnn_mobilenet_v3_large_fpn). conv_depth: the head's
    3x3 convs (`RPNHead`; torchvision's fasterrcnn_resnet50_fpn_v2: 2).
    """

    loss_names = ("rpn_cls_loss", "rpn_box_loss")
    class_agnostic = True  # one class, "object"
    neck_args = {"extra_levels_type": "max_pool"}  # the paper's P6: subsampled P5
    # Proposals are scored class-agnostically with AR@10/100/1000 (the FPN paper's Table 1).
    primary_metric = "AR1000"
    evaluation_settings = {"max_dets": (10, 100, 1000), "class_agnostic": True}

    def __init__(self, min_level=2, max_level=6, anchor_scale=8.0, aspect_ratios=(0.5, 1.0, 2.0),
                 positive_threshold=0.7, negative_threshold=0.3, batch_size_per_image=256,
                 positive_fraction=0.5, pre_nms_topk_train=2000, pre_nms_topk_test=1000,
                 post_nms_topk_train=2000, post_nms_topk_test=1000, nms_threshold=0.7,
                 min_size=0.0, smooth_l1_beta=0.0, seed=None, anchor_scales=(1.0,), anchor_offset=0.5,
                 anchor_sizes=None, round_anchors=False, anchor_strides="level", score_threshold=0.0,
                 conv_depth=1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = 1
        self.min_level, self.max_level = int(min_level), int(max_level)
        self.anchor_generator = head_anchor_generator(
            min_level, max_level, anchor_scale, anchor_scales, aspect_ratios, anchor_offset,
            anchor_sizes, round_anchors, anchor_strides)
        self.matcher = Matcher(positive_threshold, negative_threshold, allow_low_quality_matches=True)
        self.box_coder = BoxCoder()
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.pre_nms_topk_train, self.pre_nms_topk_test = int(pre_nms_topk_train), int(pre_nms_topk_test)
        self.post_nms_topk_train, self.post_nms_topk_test = int(post_nms_topk_train), int(post_nms_topk_test)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)
        self.score_threshold = float(score_threshold)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.head = RPNHead(self.anchor_generator.num_anchors_per_location, conv_depth=conv_depth, name="rpn_head")

    @property
    def max_detections(self):
        return self.post_nms_topk_test

    def build(self, input_shape):
        if not self.head.built:
            self.head.build({k: v for k, v in input_shape.items()
                             if self.min_level <= int(k[1:]) <= self.max_level})
        self.built = True

    def call(self, pyramid, image_shape=None, training=False, image_sizes=None):
        """-> {"objectness": {"P2": [B, N2]}, "deltas": {"P2": [B, N2, 4]}, "anchors": {"P2": [N2, 4]}}."""
        levels = self.select_levels(pyramid)
        objectness, deltas = self.head(levels)
        shapes = {name: (ops.shape(x)[1], ops.shape(x)[2]) for name, x in levels.items()}
        return {"objectness": objectness, "deltas": deltas, "anchors": self.anchor_generator(shapes, image_shape)}

    def compute_losses(self, raw, gt_boxes, gt_labels, image_shape=None):
        """-> {"rpn_cls_loss", "rpn_box_loss"}; any label >= 0 is an object."""
        anchors = self.concat_levels(raw["anchors"], axis=0)  # [N, 4]
        logits = ops.cast(self.concat_levels(raw["objectness"], axis=1), "float32")  # [B, N]
        deltas = ops.cast(self.concat_levels(raw["deltas"], axis=1), "float32")  # [B, N, 4]
        objects = ops.where(ops.cast(gt_labels, "int32") >= 0, 0, -1)
        cls_targets, matched_boxes = label_anchors(anchors, gt_boxes, objects, self.matcher)
        positive, negative = sample_balanced(cls_targets, self.batch_size_per_image,
                                             self.positive_fraction, self.seed_generator)
        # Sampled anchors of the global batch (all replicas; see fpn_keras.distribute).
        normaliser = distribute.global_sum(
            float(self.batch_size_per_image) * ops.cast(ops.shape(logits)[0], "float32"))
        target = ops.cast(positive, "float32")
        bce = ops.maximum(logits, 0.0) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
        cls_loss = ops.sum(ops.where(positive | negative, bce, 0.0)) / normaliser
        box_targets = self.box_coder.encode(matched_boxes, anchors[None])
        per_anchor = ops.sum(smooth_l1_loss(box_targets, deltas, self.smooth_l1_beta), axis=-1)
        box_loss = ops.sum(ops.where(positive, per_anchor, 0.0)) / normaliser
        return {"rpn_cls_loss": cls_loss, "rpn_box_loss": box_loss}

    def propose(self, raw, image_shape, training=False, image_sizes=None):
        """-> (proposals [B, P, 4] xyxy, logits [B, P], valid [B, P]); P = post_nms_topk;
        clipped to the canvas `image_shape`, or to each image's `image_sizes` [B, 2]."""
        return generate_proposals(
            raw["objectness"], raw["deltas"], raw["anchors"], self.clip_bounds(image_shape, image_sizes),
            self.box_coder,
            self.pre_nms_topk_train if training else self.pre_nms_topk_test,
            self.post_nms_topk_train if training else self.post_nms_topk_test,
            self.nms_threshold, self.min_size, self.nms_implementation, self.score_threshold)

    def detect(self, raw, image_shape, image_sizes=None):
        """Proposals as detections of class 0 ("object")."""
        proposals, logits, valid = self.propose(raw, image_shape, training=False, image_sizes=image_sizes)
        return {
            "boxes": ops.where(valid[..., None], proposals, -1.0),
            "scores": ops.where(valid, ops.sigmoid(logits), 0.0),
            "labels": ops.where(valid, 0, -1),
            "num_detections": ops.sum(ops.cast(valid, "int32"), axis=1),
        }

    def class_specific_layers(self):
        """None: one class, "object", whatever the dataset."""
        return []

    def get_config(self):
        config = super().get_config()
        anchors = self.anchor_generator.get_config()
        config.update({
            "min_level": self.min_level, "max_level": self.max_level,
            "anchor_scale": anchors["anchor_scale"], "aspect_ratios": anchors["aspect_ratios"],
            "anchor_scales": anchors["scales"],
            "positive_threshold": self.matcher.positive_threshold,
            "negative_threshold": self.matcher.negative_threshold,
            "batch_size_per_image": self.batch_size_per_image,
            "positive_fraction": self.positive_fraction,
            "pre_nms_topk_train": self.pre_nms_topk_train, "pre_nms_topk_test": self.pre_nms_topk_test,
            "post_nms_topk_train": self.post_nms_topk_train, "post_nms_topk_test": self.post_nms_topk_test,
            "nms_threshold": self.nms_threshold, "min_size": self.min_size, "score_threshold": self.score_threshold,
            "smooth_l1_beta": self.smooth_l1_beta, "seed": self.seed, "conv_depth": self.head.conv_depth,
            **self.anchor_generator.head_config(),
        })
        return config
