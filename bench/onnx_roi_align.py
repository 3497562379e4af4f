"""Faster R-CNN R50-FPN at 640x640 in onnxruntime: RoIAlign through TF's CropAndResize
(tf2onnx Loop ops; what fpn_keras.export.onnx writes) vs the generic gathers (what TFLite
needs), beside Keras, timed interleaved in one process (5 rounds after 2 warm-ups,
medians), 2 threads. Random weights, score threshold 0.

    python bench/onnx_roi_align.py
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(size=(640, 640), rounds=5, threads=2):
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from fpn_keras.export.onnx import OnnxRunner
    from fpn_keras.export.tflite import inference_function
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.faster_rcnn import FasterRCNN

    model = FPNDetector(head=FasterRCNN(num_classes=80, score_threshold=0.0, name="head"))
    image = np.random.default_rng(0).integers(0, 255, (1, *size, 3)).astype("float32")
    model(image)
    runners = {}
    for implementation in ("auto", "generic"):  # auto: TF's CropAndResize
        previous = model.set_implementations(roi_align=implementation)
        function = inference_function(model, size)
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=17)
        model.set_implementations(*previous)
        runners[implementation] = OnnxRunner(proto.SerializeToString(), num_threads=threads)
    keras_detect = tf.function(lambda x: model.head.detect(model(x, training=False), size))
    functions = {"keras": lambda: keras_detect(image)["num_detections"].numpy(),
                 "onnx_crop_and_resize": lambda: runners["auto"](image),
                 "onnx_generic": lambda: runners["generic"](image)}
    for function in functions.values():
        function(), function()
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(1000 * (time.perf_counter() - start))
    print({name: round(statistics.median(values)) for name, values in times.items()})


if __name__ == "__main__":
    main()
