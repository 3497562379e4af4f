"""FPNDetector: backbone -> feature pyramid -> head (FPN paper, Figure 3).

Shapes: B batch, H x W input size, M ground-truth boxes (padded), D detections.
Inputs are RGB images [B, H, W, 3] with values 0..255 (any dtype). Targets and
detections use the model's `bounding_box_format`, in input-image pixels.
"""

import keras
import numpy as np
from keras import ops

from fpn_keras import distribute
from fpn_keras import schedules  # noqa: F401 (registers the LR schedules for load_model)
from fpn_keras.boxes.convert import check_format, clip_boxes, to_xyxy
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.backbones import build_backbone
from fpn_keras.models.faster_rcnn import FasterRCNN
from fpn_keras.models.retinanet import RetinaNet
from fpn_keras.models.rpn import RPN
from fpn_keras.postprocess import finalize_detections
from fpn_keras.preprocessing import check_finite_images, fit_to_canvas, read_image, short_side_batch


HEADS = {"retinanet": RetinaNet, "faster_rcnn": FasterRCNN, "rpn": RPN}

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)


def _deserialize(value):
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


@keras.saving.register_keras_serializable(package="fpn_keras")
class FPNDetector(keras.Model):
    """An FPN object detector.

    Args:
        num_classes: number of foreground classes (default: the head's, or 80,
            COCO, for a head given by name; "rpn" has one class, "object").
        backbone: a name from `fpn_keras.models.backbones.BACKBONES` or a built
            Keras model mapping images to {"C2".."C5"}.
        head: "retinanet", "faster_rcnn", "rpn", or a built head (e.g.
            `RetinaNet(num_classes=..., ...)`, `FasterRCNN(...)`, `RPN(...)`).
        bounding_box_format: format of target and predicted boxes (keras names:
            "xyxy", "yxyx", "xywh", "center_xywh", "rel_xyxy", ...).
        neck: a built `FeaturePyramid`; by default one covering the head's levels.
        fpn_channels: channels of the default neck (256 in the paper).
        backbone_weights: None, "imagenet" or a local weights path, for a named backbone.
        class_names: optional names of the classes, stored with the model.
        category_ids: optional dataset category id of each class (label i -> id i; COCO
            results files), stored with the model; default: `class_names.category_ids`
            (`fpn_keras.data.ClassNames`), if any.
        image_size: (height, width) of the input canvas the model was trained at
            (multiples of 32), stored with the model: `predict_images` and the
            exports resize every image to fit it (keeping its aspect ratio, padding
            bottom/right) and map boxes back to the image's pixels. None: unknown
            (`predict_images` and `export` then need it).
        short_side_resize: None, or (short side, long-side cap) such as (800, 1333):
            `predict_images` resizes and pads as torchvision / detectron2 do (see
            `fpn_keras.preprocessing.short_side_batch`); the exports take that scale,
            capped to fit `image_size`.
        pad_value: pixel value(s) (0..255, one or one per channel) of the padding;
            a converted torchvision model pads with the pixel mean, as torchvision
            pads with 0 after normalising.
    """

    def __init__(self, num_classes=None, backbone="resnet50", head="retinanet",
                 bounding_box_format="xyxy", neck=None, fpn_channels=256,
                 backbone_weights=None, class_names=None, image_size=None, category_ids=None,
                 short_side_resize=None, pad_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.bounding_box_format = check_format(bounding_box_format)
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) <= 0 or any(s % 32 for s in image_size):
                raise ValueError(f"image_size must be (height, width), positive multiples of 32; "
                                 f"received {image_size!r}")
        self.image_size = image_size
        if short_side_resize is not None:
            short_side_resize = tuple(int(s) for s in short_side_resize)
            if len(short_side_resize) != 2 or min(short_side_resize) <= 0:
                raise ValueError("short_side_resize must be (short side, long-side cap) in pixels, e.g. "
                                 f"(800, 1333); received {short_side_resize!r}")
        self.short_side_resize = short_side_resize
        pad = np.asarray(pad_value, np.float64).reshape(-1)
        if pad.size not in (1, 3) or not np.all((pad >= 0) & (pad <= 255)):
            raise ValueError(f"pad_value must be one or three pixel values in 0..255; received {pad_value!r}")
        self.pad_value = float(pad[0]) if pad.size == 1 else tuple(float(p) for p in pad)
        backbone, head, neck = _deserialize(backbone), _deserialize(head), _deserialize(neck)

        self._backbone_name = backbone if isinstance(backbone, str) else None
        self.backbone = (build_backbone(backbone, weights=backbone_weights)
                         if isinstance(backbone, str) else backbone)

        if isinstance(head, str):
            if head not in HEADS:
                raise ValueError(f"head must be one of {sorted(HEADS)} or a built head, received {head!r}")
            if HEADS[head].class_agnostic:
                if num_classes not in (None, 1):
                    raise ValueError(f"head={head!r} has one class ('object'); received num_classes={num_classes}")
                class_names = class_names or ["object"]
            head = HEADS[head].from_args(80 if num_classes is None else num_classes, name="head")
        elif num_classes is not None and head.num_classes != num_classes:
            raise ValueError(
                f"num_classes ({num_classes}) differs from the head's num_classes ({head.num_classes})")
        self.head = head
        self.num_classes = head.num_classes

        if neck is None:
            neck = FeaturePyramid(head.min_level, head.max_level, fpn_channels, name="neck",
                                  **head.neck_args)
        elif neck.min_level > head.min_level or neck.max_level < head.max_level:
            raise ValueError(
                f"the neck gives P{neck.min_level}-P{neck.max_level} but the head needs "
                f"P{head.min_level}-P{head.max_level}")
        self.neck = neck
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names for num_classes={self.num_classes}")
        if class_names is None and self.num_classes == 80:
            class_names = COCO_CLASS_NAMES
        if category_ids is None:
            category_ids = getattr(class_names, "category_ids", None)
        if category_ids is not None and len(category_ids) != self.num_classes:
            raise ValueError(f"category_ids has {len(category_ids)} ids for num_classes={self.num_classes}")
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self.class_names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in head.loss_names}

    # ------------------------------------------------------------------ flow
    def call(self, images, training=False, image_sizes=None):
        """images [B, H, W, 3] (0..255) -> the head's raw outputs. image_sizes: None, or
        [B, 2] (height, width) of each image's pixels on the padded canvas (boxes are
        clipped to them)."""
        images = self._check_images(images)
        features = self.backbone(images, training=training)  # {"C2".."C5"}
        pyramid = self.neck(features)  # {"P<min>".."P<max>"}
        image_shape = (ops.shape(images)[1], ops.shape(images)[2])
        return self.head(pyramid, image_shape=image_shape, training=training, image_sizes=image_sizes)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Matches anchors to `y` and returns the total loss (per-term losses are tracked)."""
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        gt_boxes, gt_labels = self._prepare_targets(y, height, width)
        losses = self.head.compute_losses(y_pred, gt_boxes, gt_labels, (height, width))
        for name, value in losses.items():
            # Under tf.distribute each replica holds its share of the global loss
            # (the heads divide by global counts); x num_replicas makes the
            # tracker's mean over replicas the global value (as Keras' loss tracker).
            self.loss_trackers[name].update_state(distribute.unscale_for_replicas(value))
        total = ops.sum(ops.stack(list(losses.values())))
        if self.losses:  # weight regularisers: each replica adds them in full
            total = total + distribute.scale_for_replicas(ops.sum(ops.stack(self.losses)))
        return total

    def predict_step(self, *args):
        """images -> {"boxes" [B, D, 4] in bounding_box_format, "scores" [B, D],
        "labels" [B, D] (-1 padding), "num_detections" [B]}.

        Under JAX, Keras calls predict_step(state, data) and expects it to be
        stateless: the whole inference path then runs in a StatelessScope.
        """
        if len(args) == 2:  # JAX: ((trainable, non_trainable, ...), data)
            state, data = args
            trainable, non_trainable = state[0], state[1]
            mapping = list(zip(self.trainable_variables, trainable))
            mapping += list(zip(self.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping):
                detections = self.detect(data)
            return detections, non_trainable
        return self.detect(args[0])

    def predict(self, x, *args, **kwargs):
        """Keras' `predict` (-> `predict_step`), with the shape of array inputs checked first."""
        shape = getattr(x, "shape", None)
        if shape is not None and (len(shape) != 4 or shape[-1] != 3):
            hint = "; for one image add a batch axis: images[None]" if len(shape) == 3 else ""
            raise ValueError(f"images must be [batch, height, width, 3] RGB; received shape {tuple(shape)}{hint}")
        return super().predict(x, *args, **kwargs)

    def detect(self, data, image_sizes=None):
        """The inference path: images (or an (images, ...) tuple) -> padded detections.
        image_sizes: None, or [B, 2] (h, w) of each image on the padded canvas (boxes are
        clipped to them, as torchvision does; `evaluate_model` passes them for a model with
        `short_side_resize`)."""
        images = data[0] if isinstance(data, (tuple, list)) else data
        raw = self(check_finite_images(images), training=False, image_sizes=image_sizes)
        image_shape = (ops.shape(images)[1], ops.shape(images)[2])
        detections = self.head.detect(raw, image_shape, image_sizes=image_sizes)
        return finalize_detections(detections, self.bounding_box_format, image_shape)

    # -------------------------------------------------------------- helpers
    @property
    def evaluation_settings(self):
        """How COCO evaluation should score this model (the head's, see fpn_keras.models.head)."""
        return dict(self.head.evaluation_settings)

    @property
    def primary_metric(self):
        """The COCO metric that ranks checkpoints of this model: the head's ("AP"; "AR1000"
        for an RPN, the paper's Table 1)."""
        return self.head.primary_metric

    def set_implementations(self, nms=None, roi_align=None):
        """The one place that chooses the NMS / RoIAlign kernels of the whole model
        ("auto" or "generic", see fpn_keras.models.head), for training (`compile`) and
        for every exporter -> the previous (nms, roi_align), to restore them."""
        return self.head.set_implementations(nms=nms, roi_align=roi_align)

    @property
    def metrics(self):
        metrics = super().metrics
        return metrics + [t for t in self.loss_trackers.values() if t not in metrics]

    def compile(self, optimizer="adam", jit_compile="auto", **kwargs):
        """Like keras.Model.compile; losses are built in (no `loss` argument needed).

        jit_compile="auto": False under TensorFlow (XLA did not speed up training
        or RetinaNet on CPU, docs/benchmarks.md), True under JAX (without jit,
        JAX runs op by op: 16x slower on a GPU). With jit_compile=True under
        TensorFlow, NMS and RoIAlign switch from TF's kernels (not
        XLA-compilable) to their generic keras.ops versions.
        """
        if kwargs.pop("loss", None) is not None:
            raise ValueError("FPNDetector computes its own losses; do not pass loss= to compile")
        if jit_compile == "auto":
            jit_compile = keras.backend.backend() != "tensorflow"
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        implementation = "generic" if jit_compile is True and keras.backend.backend() == "tensorflow" \
            else "auto"
        self.set_implementations(nms=implementation, roi_align=implementation)

    def compile_from_config(self, config):
        """Restores compile() settings (optimizer included) when a .keras file is loaded."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _check_images(self, images):
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"images must be [batch, height, width, 3] RGB; received shape {shape}")
        return ops.cast(images, self.compute_dtype)

    def _prepare_targets(self, y, height, width):
        if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
            raise ValueError(
                "targets must be a dict with 'boxes' [B, M, 4] and 'labels' [B, M]; received "
                f"{type(y).__name__}" + (f" with keys {sorted(y)}" if isinstance(y, dict) else ""))
        boxes, labels = y["boxes"], y["labels"]
        if hasattr(boxes, "to_tensor"):  # tf.RaggedTensor -> padded with -1
            boxes = boxes.to_tensor(default_value=-1.0)
        if hasattr(labels, "to_tensor"):
            labels = labels.to_tensor(default_value=-1)
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"target boxes must be [batch, max_boxes, 4]; received shape {tuple(boxes.shape)}")
        labels = ops.cast(labels, "int32")
        boxes = to_xyxy(ops.cast(boxes, "float32"), self.bounding_box_format, height, width)
        boxes = clip_boxes(boxes, height, width)
        # Padding rows stay padding whatever the format conversion made of them.
        boxes = ops.where(labels[..., None] >= 0, boxes, -1.0)
        return boxes, labels

    def predict_images(self, images, batch_size=8, precision=None):
        """Detections on images of any sizes, in their own pixels.

        images: a list of uint8 / float [H_i, W_i, 3] arrays (0..255) or image file paths.
        Each image is resized to fit `image_size` (aspect kept, padded bottom/right), as
        in training (`fpn_keras.data.pipeline.prepare`) and in the exports; with
        `short_side_resize`, as torchvision does (`preprocessing.short_side_batch`: a
        batch padded to its largest image, boxes clipped to each image). Returns a list
        with one dict per image: "boxes" [n, 4] in `bounding_box_format` relative to that
        image, "scores" [n], "labels" [n] (only the n real detections).
        precision: None (the model's own), "fp32", "bf16" or "fp16": runs a copy made by
        `with_precision` (rebuilt at each call: keep `model.with_precision(p)` to reuse it).
        """
        if precision is not None:
            from fpn_keras.precision import canonical, precision_of

            if canonical(precision) != precision_of(self):
                return self.with_precision(precision).predict_images(images, batch_size=batch_size)
        size = None if self.short_side_resize else self._require_image_size("predict_images")
        arrays = [read_image(image) if isinstance(image, str) else np.asarray(image) for image in images]
        for i, image in enumerate(arrays):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"image {images[i] if isinstance(images[i], str) else i}: expected [height, "
                                 f"width, 3] RGB, received shape {image.shape}")
            check_finite_images(image[None], [images[i] if isinstance(images[i], str) else f"image {i}"])
        results = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start:start + batch_size]
            if self.short_side_resize:
                canvas, image_sizes, scales, sizes = short_side_batch(chunk, *self.short_side_resize,
                                                                      pad_value=self.pad_value)
                shape = tuple(canvas.shape[1:3])
                raw = self(canvas, training=False, image_sizes=image_sizes)
                detections = self.head.detect(raw, shape, image_sizes=image_sizes)
            else:
                canvases, scales, sizes = zip(*(fit_to_canvas(image, size, self.pad_value) for image in chunk))
                canvas, scales, sizes, shape = ops.stack(canvases), ops.stack(scales), ops.stack(sizes), size
                detections = self.head.detect(self(canvas, training=False), shape)
            detections = finalize_detections(detections, self.bounding_box_format, shape, scales, sizes)
            numpy = {k: ops.convert_to_numpy(v) for k, v in detections.items()}
            for i in range(len(chunk)):
                n = int(numpy["num_detections"][i])
                results.append({"boxes": numpy["boxes"][i, :n], "scores": numpy["scores"][i, :n],
                                "labels": numpy["labels"][i, :n]})
        return results

    def _require_image_size(self, what, image_size=None):
        size = image_size if image_size is not None else self.image_size
        if size is None:
            raise ValueError(f"FPNDetector.{what} needs the input size the model was trained at: build "
                             "the model with image_size=(height, width) or pass image_size")
        return tuple(int(s) for s in size)

    # ------------------------------------------------------------- export
    def export(self, filepath, format="tf_saved_model", image_size=None, **kwargs):
        """Exports the whole inference path (resize, backbone, FPN, head, decoding, NMS,
        boxes in input pixels), unlike `keras.Model.export`, which traces `call()` only
        and would write raw head tensors.

        format: "tf_saved_model" (`fpn_keras.export.saved_model`, TF Serving layout; kwarg
            outputs="od_api" for the TF OD API's contract), "tflite" (`fpn_keras.export.tflite`;
            kwargs quantize, representative_data, input_type) or "onnx"
            (`fpn_keras.export.onnx`; kwargs input_type, opset). image_size: (height, width)
            the model runs at (default: its `image_size`).
        """
        image_size = self._require_image_size("export", image_size)
        from fpn_keras import export

        if format == "tf_saved_model":
            return export.saved_model(self, filepath, image_size, **kwargs)
        if format == "tflite":
            return export.tflite(self, filepath, image_size, **kwargs)
        if format == "onnx":
            return export.onnx(self, filepath, image_size, **kwargs)
        raise ValueError(f"FPNDetector.export: format must be 'tf_saved_model', 'tflite' or 'onnx', received "
                         f"{format!r} (keras' other formats would hold raw head outputs without decoding "
                         "or NMS; use fpn_keras.export)")

    # ------------------------------------------------- presets, fine-tuning
    @classmethod
    def from_preset(cls, name, cache_dir=None, **kwargs):
        """A COCO-trained detector by preset name (e.g. "torchvision/retinanet_resnet50_fpn_coco"),
        downloaded and converted once into `cache_dir` (default $FPN_KERAS_HOME, else
        ~/.keras/fpn_keras); offline, `checkpoint="/path/file.pth"`. See fpn_keras.convert.presets."""
        from fpn_keras.convert.presets import from_preset

        return from_preset(name, cache_dir=cache_dir, **kwargs)

    def with_classes(self, class_names, **kwargs):
        """A copy for other classes: every weight kept but the head's class-specific layers,
        freshly initialised (fine-tuning; kwargs category_ids, image_size, bounding_box_format:
        see fpn_keras.finetune.with_classes)."""
        from fpn_keras.finetune import with_classes

        return with_classes(self, class_names, **kwargs)

    def with_precision(self, precision):
        """A copy computing in "fp32", "bf16" or "fp16" with the same float32 weights (itself
        if it already does); decoding and NMS stay float32 (fpn_keras.precision)."""
        from fpn_keras.precision import with_precision

        return with_precision(self, precision)

    # ---------------------------------------------------------- serialising
    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            # A named backbone is rebuilt by name (its weights come from the saved file).
            "backbone": self._backbone_name or keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
            "neck": keras.saving.serialize_keras_object(self.neck),
            "bounding_box_format": self.bounding_box_format,
            "class_names": list(self.class_names),
            "category_ids": self.category_ids,
            "image_size": None if self.image_size is None else list(self.image_size),
            "short_side_resize": None if self.short_side_resize is None else list(self.short_side_resize),
            "pad_value": self.pad_value if isinstance(self.pad_value, float) else list(self.pad_value),
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
