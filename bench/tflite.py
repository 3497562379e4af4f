"""TFLite and ONNX latency of a detector vs Keras, and file sizes.

The mobile configuration: MobileNetV3-Large + FPN-lite (P3-P7, 128 channels,
depthwise-separable 3x3 convs) + RetinaNet head (128 channels) at 320x320, 80
classes. Weights are random (latency does not depend on them; detections do,
so the score threshold is lowered to keep NMS busy with D = 100 boxes).

Reports the median of --runs timed runs after --warmup runs, one image, for:
Keras forward + detect (tf.function, --threads intra-op threads) and the
float32 / float16 / dynamic_range / int8 TFLite files (LiteRT interpreter,
XNNPACK, --threads threads) and the float32 ONNX file (onnxruntime, CPU execution
provider, intra_op_num_threads = --threads; mode "onnx", needs the onnx extra), all
in the same run. int8 is calibrated on --calibration random images (enough for
latency; use real images for accuracy). --model r50 / r50_faster_rcnn: the ResNet-50
FPN RetinaNet / Faster R-CNN (80 classes).

    python bench/tflite.py [--size 320] [--runs 20] [--threads 2] [--modes keras,float32,onnx] [--json]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def build_mobile_model(num_classes=80):
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.backbones import build_backbone
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.retinanet import RetinaNet

    return FPNDetector(
        num_classes=num_classes, backbone=build_backbone("mobilenet_v3_large"),
        neck=FeaturePyramid(min_level=3, max_level=7, channels=128, separable=True, name="neck"),
        head=RetinaNet(num_classes=num_classes, min_level=3, max_level=7, channels=128,
                       score_threshold=0.0, name="head"))


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mobile", "r50", "r50_faster_rcnn"], default="mobile",
                        help="mobile: MobileNetV3-Large FPN-lite RetinaNet; r50: ResNet-50 FPN RetinaNet; "
                             "r50_faster_rcnn: ResNet-50 FPN Faster R-CNN")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--modes", default="keras,float32,float16,dynamic_range,int8,onnx")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per row")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ai_edge_litert.interpreter import Interpreter

    from fpn_keras.export.tflite import convert

    size = (args.size, args.size)
    if args.model == "r50":
        from fpn_keras.models.detector import FPNDetector
        from fpn_keras.models.retinanet import RetinaNet

        # ResNet-50 + FPN P3-P7 (256) + RetinaNet, 80 classes; threshold 0 as for mobile
        # (random weights score ~0.01: at 0.05, NMS would have nothing to do).
        model = FPNDetector(head=RetinaNet(num_classes=80, score_threshold=0.0, name="head"))
        title = "ResNet-50 + FPN(256) + RetinaNet(256)"
    elif args.model == "r50_faster_rcnn":
        from fpn_keras.models.detector import FPNDetector
        from fpn_keras.models.faster_rcnn import FasterRCNN

        # RPN (1000 proposals) + 2fc box head; threshold 0 for the same reason.
        model = FPNDetector(head=FasterRCNN(num_classes=80, score_threshold=0.0, name="head"))
        title = "ResNet-50 + FPN(256) + Faster R-CNN (2fc)"
    else:
        model = build_mobile_model()
        title = "MobileNetV3-Large + FPN-lite(128) + RetinaNet(128)"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1, *size, 3)).astype("float32")
    model(image)  # build
    rows = []
    modes = args.modes.split(",")

    if "keras" in modes:
        @tf.function(jit_compile=False)
        def forward(images):
            return model.head.detect(model(images, training=False), size)

        ms = median_ms(lambda: forward(image)["num_detections"].numpy(), args.warmup, args.runs)
        rows.append({"model": "keras forward+detect", "size": args.size, "median_ms": ms,
                     "file_mb": None, "num_detections": int(forward(image)["num_detections"][0]),
                     "convert_s": None})

    calibration = [rng.integers(0, 255, (1, *size, 3)).astype("float32")
                   for _ in range(args.calibration)]
    for mode in [m for m in modes if m not in ("keras", "onnx")]:
        start = time.perf_counter()
        content = convert(model, size, quantize=None if mode == "float32" else mode,
                          representative_data=calibration)
        convert_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, f"{mode}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            interpreter = Interpreter(model_path=path, num_threads=args.threads)
            runner = interpreter.get_signature_runner("serving_default")
            ms = median_ms(lambda: runner(images=image), args.warmup, args.runs)
            out = runner(images=image)
        rows.append({"model": f"tflite {mode}", "size": args.size, "median_ms": ms,
                     "file_mb": len(content) / 2**20,
                     "num_detections": int(out["num_detections"][0]), "convert_s": convert_s})

    if "onnx" in modes:
        from fpn_keras.export.onnx import OnnxRunner, convert as convert_onnx

        start = time.perf_counter()
        content = convert_onnx(model, size)
        convert_s = time.perf_counter() - start
        runner = OnnxRunner(content, num_threads=args.threads)
        ms = median_ms(lambda: runner(image), args.warmup, args.runs)
        rows.append({"model": "onnx float32 (onnxruntime)", "size": args.size, "median_ms": ms,
                     "file_mb": len(content) / 2**20,
                     "num_detections": int(runner(image)["num_detections"][0]), "convert_s": convert_s})

    print(f"\n{title}, {args.size}x{args.size}, "
          f"{args.threads} threads, median of {args.runs} after {args.warmup} warm-up")
    print(f"{'model':<28}{'median ms':>11}{'file MB':>9}{'dets':>6}{'convert s':>11}")
    for row in rows:
        mb = f"{row['file_mb']:.2f}" if row["file_mb"] is not None else "-"
        conv = f"{row['convert_s']:.1f}" if row["convert_s"] is not None else "-"
        print(f"{row['model']:<28}{row['median_ms']:>11.1f}{mb:>9}{row['num_detections']:>6}{conv:>11}")
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
