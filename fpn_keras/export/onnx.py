"""ONNX export with anchor decoding and NMS inside the graph, run with onnxruntime.

Route: the TFLite export's tf.function (`tflite.inference_function`: `model(...)`,
`head.detect`, `finalize_detections`) converted by tf2onnx, which freezes the weights.
NMS (`tf.raw_ops.NonMaxSuppressionV5`, what `fpn_keras.boxes.nms.batched_nms` runs under
TF for a static batch) becomes the standard ONNX `NonMaxSuppression` op, one call per
image, class-aware through the box-offset trick. Faster R-CNN's RoIAlign keeps the
model's implementation (by default TF's CropAndResize, which tf2onnx writes with ONNX
`Loop` ops): in onnxruntime that ran 2.6x faster at 640x640 with 1000 RoIs than the
generic gathers that TFLite needs (bench/onnx_roi_align.py, docs/benchmarks.md). Only the default ONNX
domain is used: no custom ops. (Keras' `model.export(format="onnx")` traces `call()`
only: raw head tensors, no decoding or NMS.)

Input: `images` [1, H, W, 3] RGB 0..255, float32, or uint8 with `input_type="uint8"`;
the image must already be H x W (resize / pad on the app side, as for TFLite).
Outputs (`fpn_keras.export.outputs.OUTPUT_NAMES`, by name):
  boxes           float32 [1, D, 4]  model.bounding_box_format, input pixels, -1 padding
  scores          float32 [1, D]     0 padding
  labels          int32   [1, D]     0-based label ids, -1 padding
  num_detections  int32   [1]
D is the head's `max_detections`. `OnnxRunner` runs a file with onnxruntime and checks
its input first, like `TFLiteRunner`.

Needs the `onnx` extra (tf2onnx, onnx, onnxruntime).
"""

import os

import numpy as np

from fpn_keras.export.outputs import OUTPUT_NAMES
from fpn_keras.export.tflite import _check_model, check_runner_input, inference_function

OPSET = 17  # NonMaxSuppression exists since opset 10; tf2onnx 1.17 writes up to 18 (its default: 15)


def convert(model, image_size=None, input_type="float32", opset=OPSET):
    """Returns the ONNX model (bytes); see `onnx` for the arguments."""
    if input_type not in ("float32", "uint8"):
        raise ValueError(f"input_type must be 'float32' or 'uint8', received {input_type!r}")
    size = _check_model(model, image_size, "onnx export")
    import tf2onnx

    function = inference_function(model, size, input_type)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset)
    return proto.SerializeToString()


def onnx(model, path, image_size=None, input_type="float32", opset=OPSET):
    """Writes `model` as an ONNX file at `path` (e.g. "model.onnx").

    Args:
        model: a built FPNDetector.
        image_size: (height, width) of the fixed input (default: `model.image_size`).
        input_type: "float32" (values 0..255) or "uint8" (raw pixels, cast inside).
        opset: the ONNX opset to write.

    Returns `path`. Outputs: see the module docstring.
    """
    content = convert(model, image_size, input_type, opset)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


class OnnxRunner:
    """Runs an ONNX file written by `onnx` with onnxruntime (CPU), checking its input first.

    `runner(images)` takes images [1, H, W, 3] (or one [H, W, 3]) of the file's input size
    and dtype and returns {name: numpy array} for `OUTPUT_NAMES`; wrong shapes, dtypes or
    NaN / Inf pixels raise ValueError as `TFLiteRunner` does.

    model: a path to a .onnx file, or its bytes; num_threads: onnxruntime's intra-op threads.
    """

    def __init__(self, model, num_threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        content = model if isinstance(model, (bytes, bytearray)) else None
        self.session = onnxruntime.InferenceSession(bytes(content) if content else str(model), options,
                                                    providers=["CPUExecutionProvider"])
        self.source = "the .onnx model" if content else str(model)
        (detail,) = self.session.get_inputs()
        self.input_name = detail.name
        self.input_shape = tuple(int(d) for d in detail.shape)
        self.input_dtype = np.dtype({"tensor(float)": "float32", "tensor(uint8)": "uint8"}[detail.type])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images, name=None):
        """images [1, H, W, 3] or [H, W, 3] -> {name: array}; `name` (e.g. the file the
        image came from) is used in the non-finite message."""
        images = check_runner_input(images, self.input_shape, self.input_dtype, self.source, name)
        values = self.session.run(self.output_names, {self.input_name: images})
        out = dict(zip(self.output_names, values))
        return {key: out[key] for key in OUTPUT_NAMES}


def op_types(model_content):
    """{(domain, op_type)} of an ONNX model (bytes); domain "" is the default ONNX domain."""
    import onnx as onnx_lib

    graph = onnx_lib.load_from_string(model_content).graph
    return sorted({(node.domain, node.op_type) for node in graph.node})
