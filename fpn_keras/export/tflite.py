"""TFLite (LiteRT) export with anchor decoding and NMS inside the graph.

TFLite builtin ops only: the converter is restricted to `TFLITE_BUILTINS`
(plus `TFLITE_BUILTINS_INT8` for full-integer int8), never `SELECT_TF_OPS`,
so the file runs with the stock interpreter (no Flex delegate). NMS is the
builtin NON_MAX_SUPPRESSION_V5 (from `tf.raw_ops.NonMaxSuppressionV5`, which
`fpn_keras.boxes.nms.batched_nms` uses under TF for a static batch), one call
per image, class-aware via the box-offset trick.

Input: one tensor `images` [1, H, W, 3], RGB 0..255, float32, or uint8 with
`input_type="uint8"` (cast to float inside: raw camera pixels go straight in,
for any `quantize`). The image must already be H x W (resize/pad on the app
side); boxes come out in those input pixels.

Outputs of the signature "serving_default" (get them by name with
`interpreter.get_signature_runner()`; `fpn_keras.export.outputs.OUTPUT_NAMES`):
  boxes           float32 [1, D, 4]  model.bounding_box_format, input pixels, -1 padding
  scores          float32 [1, D]     0 padding
  labels          int32   [1, D]     0-based label ids, -1 padding
  num_detections  int32   [1]
The raw output tensors (`get_output_details()`) are named
"StatefulPartitionedCall:<i>" with i in `OUTPUT_ORDER` = (boxes, labels,
num_detections, scores): TF flattens the output dict by sorted name. (These are not
the TF Object Detection API's TFLite outputs, whose boxes are normalised yxyx.)
D is the head's `max_detections`. From Python, `TFLiteRunner` runs the file and
checks the input first (shape, dtype, NaN / Inf pixels of a float32 input, which
would give 0 detections: read as "no objects" by an app).

Quantization:
  None            float32 weights and activations.
  "float16"       float16 weights (dequantized at load; float32 compute on CPU).
  "dynamic_range" int8 weights, float activations (ops quantize on the fly).
  "int8"          full-integer int8 weights and activations, calibrated on
                  `representative_data`; ops without an int8 kernel (box
                  decoding exp, NMS) stay float with QUANTIZE/DEQUANTIZE
                  around them, so decoding and NMS run in float32.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from fpn_keras.export.outputs import OUTPUT_NAMES, serving_outputs
from fpn_keras.postprocess import FLOAT_SCOPE, finalize_detections

# Index i of the raw output tensor "StatefulPartitionedCall:<i>" -> its name.
OUTPUT_ORDER = tuple(sorted(OUTPUT_NAMES))
SIGNATURE = "serving_default"
POSTPROCESS_SCOPE = FLOAT_SCOPE  # kept float in int8 (fpn_keras.postprocess)
QUANTIZE_MODES = (None, "float16", "dynamic_range", "int8")


def _check_model(model, image_size, what="tflite export"):
    from fpn_keras.models.detector import FPNDetector

    if not isinstance(model, FPNDetector):
        raise ValueError(f"{what} needs an FPNDetector, received {type(model).__name__}")
    size = model._require_image_size(what, image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be (height, width), received {image_size!r}")
    if not model.built:
        raise ValueError(
            "the model is not built: it has no weights to export. Train it, load weights "
            "(keras.saving.load_model / model.load_weights) or call it on an image first")
    return size


def inference_function(model, image_size, input_type="float32"):
    """A tf.function images [1, H, W, 3] -> {name: tensor} for `OUTPUT_NAMES`."""
    height, width = image_size

    def detect(images):
        raw = model(tf.cast(images, tf.float32), training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):  # int8: these ops are kept float
            detections = model.head.detect(raw, (height, width))
            return serving_outputs(finalize_detections(detections, model.bounding_box_format, (height, width)))

    spec = tf.TensorSpec([1, height, width, 3], tf.dtypes.as_dtype(input_type), name="images")
    return tf.function(detect, input_signature=[spec], autograph=False)


def _representative_dataset(representative_data, image_size, input_type):
    if representative_data is None:
        raise ValueError('quantize="int8" needs representative_data: an iterable of float32 '
                         'images [1, H, W, 3] (0..255), ideally 100+ real images')

    def generator():
        count = 0
        for image in representative_data:
            image = tf.convert_to_tensor(image, tf.float32)
            if image.shape.rank == 3:
                image = image[None]
            if tuple(image.shape) != (1, image_size[0], image_size[1], 3):
                raise ValueError(f"representative images must be [1, {image_size[0]}, "
                                 f"{image_size[1]}, 3]; received {tuple(image.shape)}")
            count += 1
            yield {"images": tf.cast(tf.clip_by_value(image, 0.0, 255.0), input_type)}
        if count == 0:
            raise ValueError("representative_data gave no images")

    return generator


def convert(model, image_size=None, quantize=None, representative_data=None, input_type="float32"):
    """Returns the .tflite flatbuffer (bytes); see `tflite` for the arguments."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {list(QUANTIZE_MODES)}, received {quantize!r}")
    if input_type not in ("float32", "uint8"):
        raise ValueError(f"input_type must be 'float32' or 'uint8', received {input_type!r}")
    size = _check_model(model, image_size)
    # Faster R-CNN: RoIAlign through gathers (TFLite builtins), not TF's CropAndResize.
    previous = model.set_implementations(roi_align="generic")
    try:
        return _convert(model, size, quantize, representative_data, input_type)
    finally:
        model.set_implementations(*previous)


def _convert(model, size, quantize, representative_data, input_type):
    function = inference_function(model, size, input_type)
    # Through a SavedModel written by keras' ExportArchive (which tracks every variable):
    # the converter then freezes the weights into constants and keeps the signature's
    # input/output names. (`from_concrete_functions(..., trackable_obj=model)` left
    # READ_VARIABLE ops on never-initialised variables: all-zero weights at run time.)
    with tempfile.TemporaryDirectory() as directory:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, function.python_function,
                             input_signature=function.input_signature)
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = False
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic_range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative_dataset(
                representative_data, size, input_type)
            # Calibrate only (float graph + activation ranges), then quantize the network
            # and keep the post-processing float: see `_quantize_network_only`.
            converter._experimental_calibrate_only = True  # noqa: SLF001
            return _quantize_network_only(converter.convert())
        return converter.convert()


def _is_postprocess(tensor_name):
    return f"{POSTPROCESS_SCOPE}/" in tensor_name or tensor_name.startswith("StatefulPartitionedCall")


def _quantize_network_only(calibrated):
    """Full-integer int8 for the network, float32 for decoding and NMS.

    The default int8 converter quantizes every op that has an int8 kernel: the
    anchors and decoded boxes (MUL/SUB/EXP/GATHER) became int8, i.e. box
    coordinates on a 256-level grid before NMS. Here the tensors made under
    the `postprocess` name scope lose their calibration ranges and their ops are
    denylisted, which is what `tf.lite.experimental.QuantizationDebugger`'s
    selective quantization does (same calls: calibrate-only model ->
    `mlir_quantize(denylisted_nodes=..., denylisted_ops=...)`). The network
    outputs are dequantized once, at the boundary.

    Private TF calls (the calibrate-only flag, `mlir_quantize`, `flatbuffer_utils`): the
    public `QuantizationDebugger` with the same denylist keeps those ops float but still
    quantizes and dequantizes their calibrated outputs (class scores on a 256-level grid
    before NMS); stripping the ranges needs the flatbuffer. tests/test_export_tflite.py
    (`test_public_selective_quantization_...`) fails once a TF release no longer does that.
    """
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    nodes = set()
    for subgraph in model.subgraphs:
        names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in subgraph.tensors]
        for index, tensor in enumerate(subgraph.tensors):
            if _is_postprocess(names[index]):
                tensor.quantization = None  # no range: never quantized
        for op in subgraph.operators:
            outputs = [names[i] for i in op.outputs if i >= 0]
            if any(_is_postprocess(name) for name in outputs):
                nodes.update(outputs)
                nodes.add(";".join(outputs))
    stripped = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    # TOPK_V2 and UNPACK (multi-output ops, which the node denylist misses) are
    # "same scale" ops the quantizer would otherwise run in int8 inside the
    # post-processing; the networks here do not use them.
    return lite_convert.mlir_quantize(stripped, denylisted_nodes=sorted(nodes),
                                      denylisted_ops=["TOPK_V2", "UNPACK"])


def tflite(model, path, image_size=None, quantize=None, representative_data=None, input_type="float32"):
    """Writes `model` as a TFLite flatbuffer at `path` (builtin ops only).

    Args:
        model: a built FPNDetector.
        path: output file (e.g. "model.tflite").
        image_size: (height, width) of the fixed input.
        quantize: None, "float16", "dynamic_range" or "int8" (see module doc).
        representative_data: for "int8": an iterable of float32 images
            [1, H, W, 3] (0..255) used to calibrate activation ranges.
        input_type: "float32" (values 0..255) or "uint8" (raw pixels, cast to
            float inside the graph).

    Returns `path`. Outputs: see `OUTPUT_NAMES` and the module docstring.
    """
    content = convert(model, image_size, quantize, representative_data, input_type)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


class TFLiteRunner:
    """Runs a .tflite file written by `tflite` from Python, checking its input first.

    `runner(images)` takes images [1, H, W, 3] (or one [H, W, 3]) of the file's input
    size and dtype and returns {name: numpy array} for `OUTPUT_NAMES`. A float32 input
    with NaN / Inf pixels raises ValueError naming the image and how many values are not
    finite (the interpreter would return 0 detections, which reads as "no objects");
    a wrong shape or dtype raises ValueError naming the expected and received ones.

    model: a path to a .tflite file, or its bytes; num_threads: the interpreter's.
    """

    def __init__(self, model, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, (bytes, bytearray)) else None
        self.interpreter = Interpreter(model_content=bytes(content), num_threads=num_threads) if content \
            else Interpreter(model_path=str(model), num_threads=num_threads)
        self.source = "the .tflite model" if content else str(model)
        (detail,) = self.interpreter.get_input_details()
        self.input_shape = tuple(int(d) for d in detail["shape"])
        self.input_dtype = np.dtype(detail["dtype"])
        self._run = self.interpreter.get_signature_runner(SIGNATURE)

    def __call__(self, images, name=None):
        """images [1, H, W, 3] or [H, W, 3] -> {name: array}; `name` (e.g. the file the
        image came from) is used in the non-finite message."""
        images = check_runner_input(images, self.input_shape, self.input_dtype, self.source, name)
        return self._run(images=images)


def check_runner_input(images, input_shape, input_dtype, source, name=None):
    """images [1, H, W, 3] or [H, W, 3] -> numpy [1, H, W, 3] of `input_dtype`, or a
    ValueError naming `source`, the expected and the received shape / dtype, or the
    non-finite pixels (TFLiteRunner and OnnxRunner)."""
    from fpn_keras.preprocessing import check_finite_images

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if tuple(images.shape) != tuple(input_shape):
        raise ValueError(f"{source} takes images of shape {list(input_shape)} "
                         f"({input_dtype.name}, RGB 0..255, resized/padded on the app side); "
                         f"received shape {list(images.shape)}")
    if images.dtype != input_dtype:
        if not (np.issubdtype(images.dtype, np.number) and np.can_cast(images.dtype, input_dtype)):
            raise ValueError(f"{source} takes {input_dtype.name} images; received {images.dtype.name}")
        images = images.astype(input_dtype)
    check_finite_images(images, names=[name] if name else None)
    return images


def op_names(model_content):
    """The builtin/custom op names used by a .tflite flatbuffer (bytes)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_content)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})

