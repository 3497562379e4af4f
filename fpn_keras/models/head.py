"""The head protocol: what every detection head provides, and the only thing
`FPNDetector` relies on.

Shapes: B batch, M ground truths (padded with -1), K classes, D = max_detections.
Boxes are `xyxy` in input-image pixels; (height, width) is the input canvas.

A head is a Keras layer with

  attributes
    num_classes          K (1 for the RPN: "object")
    min_level, max_level the pyramid levels it reads (P<min>..P<max>)
    loss_names           the keys of `compute_losses`, in logging order
    max_detections       D
    neck_args            extra `FeaturePyramid` options it needs ({} by default)
    class_agnostic       True when it has one class, "object", and takes no num_classes (the RPN)
    sub_heads            arguments that hold another head's arguments ({"rpn": RPN} for
                         Faster R-CNN; {} by default), built by `from_args`
    primary_metric       the COCO metric that ranks its checkpoints ("AP"; the RPN: "AR1000")
    evaluation_settings  options of `CocoEvaluator.evaluate` ({}; the RPN: class-agnostic AR)

  methods
    from_args(num_classes, name, **args)   (classmethod) the head from plain recipe data
    call(pyramid, image_shape, training, image_sizes=None)
                             {"P<l>": [B, H_l, W_l, C]}, (height, width) -> raw outputs (a
                             dict of tensors and per-level dicts; only this head reads them)
    compute_losses(raw, gt_boxes [B, M, 4], gt_labels [B, M], image_shape)
                             -> {name: scalar} for `loss_names`, each already normalised
                             over the global batch (fpn_keras.distribute)
    detect(raw, image_shape, image_sizes=None) -> `Detections`: {"boxes": [B, D, 4] xyxy, "scores": [B, D],
                             "labels": [B, D] int32 (-1 padding), "num_detections": [B] int32}
    image_sizes: None, or [B, 2] (height, width) of each image's pixels on the canvas
                             (the rest is padding): boxes are clipped to them instead of
                             to the canvas (`clip_bounds`), as torchvision and detectron2
                             clip to each image of a padded batch
    set_implementations(nms=None, roi_align=None)
                             which kernels it uses: "auto" (TF's NMS / CropAndResize
                             kernels under TensorFlow) or "generic" (keras.ops: XLA,
                             JAX, TFLite builtins). `FPNDetector.implementations` is the
                             one place that sets them, for training and every exporter.
    class_specific_layers()  the sub-layers whose weights depend on num_classes (RetinaNet:
                             the class logits conv; Faster R-CNN: the predictor's class scores
                             and per-class box deltas; the RPN: none): the layers that
                             `FPNDetector.with_classes` (fpn_keras.finetune) re-initialises

To add a head: subclass `DetectionHead` in a new module of `fpn_keras/models/`, set the
attributes, implement the three methods, and name it in `fpn_keras.models.detector.HEADS`.
"""

from keras import layers, ops

from fpn_keras.postprocess import select_detections

IMPLEMENTATIONS = ("auto", "generic")


class DetectionHead(layers.Layer):
    """Base class of the heads (see the module docstring for the protocol)."""

    loss_names = ()
    neck_args = {}
    class_agnostic = False
    sub_heads = {}
    primary_metric = "AP"
    evaluation_settings = {}
    # Not constructor arguments, not saved: chosen by FPNDetector.implementations.
    nms_implementation = "auto"
    roi_align_implementation = "auto"

    @classmethod
    def from_args(cls, num_classes=None, name="head", **args):
        """The head from plain (recipe) arguments: `num_classes` (ignored by a
        class-agnostic head) and constructor arguments, those named in `sub_heads`
        given as a dict of that head's arguments."""
        for key, sub_head in cls.sub_heads.items():
            if isinstance(args.get(key), dict):
                args[key] = sub_head.from_args(name=key, **args[key])
        if cls.class_agnostic:
            return cls(name=name, **args)
        return cls(num_classes=num_classes, name=name, **args)

    @property
    def level_names(self):
        """["P<min_level>", ..., "P<max_level>"]: the order of every per-level concat."""
        return [f"P{l}" for l in range(self.min_level, self.max_level + 1)]

    def select_levels(self, pyramid):
        """The head's levels of the pyramid, {"P<l>": [B, H_l, W_l, C]}."""
        return {name: pyramid[name] for name in self.level_names}

    def concat_levels(self, per_level, axis):
        """Concatenates a per-level dict along the anchor axis, in `level_names` order."""
        return ops.concatenate([per_level[name] for name in self.level_names], axis=axis)

    def set_detection_options(self, pre_nms_topk, score_threshold, nms_iou_threshold, max_detections):
        """The inference settings of a head that scores classes: `pre_nms_topk`
        candidates kept before NMS, then `select_detections`' threshold, IoU and D."""
        self.pre_nms_topk = int(pre_nms_topk)
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = int(max_detections)

    def detection_options(self):
        """The `set_detection_options` values, for `get_config`."""
        return {"pre_nms_topk": self.pre_nms_topk, "score_threshold": self.score_threshold,
                "nms_iou_threshold": self.nms_iou_threshold, "max_detections": self.max_detections}

    def select(self, boxes, scores, classes):
        """Candidates [B, C, 4] xyxy / [B, C] / [B, C] -> `Detections` with this head's
        options and NMS implementation (see `fpn_keras.postprocess.select_detections`)."""
        return select_detections(boxes, scores, classes, self.nms_iou_threshold, self.max_detections,
                                 self.score_threshold, self.nms_implementation)

    @staticmethod
    def clip_bounds(image_shape, image_sizes=None):
        """(height, width) that boxes are clipped to: the canvas' numbers, or [B] tensors
        of each image's own size (`image_sizes` [B, 2])."""
        if image_sizes is None:
            return image_shape
        sizes = ops.cast(image_sizes, "float32")
        return sizes[:, 0], sizes[:, 1]

    def compute_losses(self, raw, gt_boxes, gt_labels, image_shape):
        raise NotImplementedError(f"{type(self).__name__} does not implement compute_losses")

    def detect(self, raw, image_shape, image_sizes=None):
        raise NotImplementedError(f"{type(self).__name__} does not implement detect")

    def class_specific_layers(self):
        """The sub-layers whose weights depend on num_classes (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its class_specific_layers")

    def set_implementations(self, nms=None, roi_align=None):
        """Chooses the NMS / RoIAlign kernels ("auto" or "generic"; None: keep) ->
        the previous (nms, roi_align), to restore them."""
        previous = (self.nms_implementation, self.roi_align_implementation)
        for name, value in (("nms", nms), ("roi_align", roi_align)):
            if value is None:
                continue
            if value not in IMPLEMENTATIONS:
                raise ValueError(f"{name} implementation must be one of {IMPLEMENTATIONS}, received {value!r}")
            setattr(self, f"{name}_implementation", value)
        return previous


__all__ = ["DetectionHead", "IMPLEMENTATIONS"]
