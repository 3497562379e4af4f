"""The `fpn-keras` command line (also `python -m fpn_keras`).

Subcommands: train, evaluate, predict, export, convert, recipes, benchmark (`fpn-keras CMD --help`).

Exit codes:
  0  success;
  2  usage or configuration error: bad arguments, an invalid recipe or `--set`
     override (unknown key, wrong type, missing required key), an unknown dataset
     spec, or a file / folder named on the command line or in the recipe that does
     not exist (e.g. a missing --model file or data path). Nothing has run yet.
  1  runtime failure while working on valid inputs (e.g. a model file that exists
     but cannot be loaded, a training run that fails).
  130 / 143  `train` stopped by SIGINT (Ctrl-C) / SIGTERM: the step in progress
     finished and was checkpointed; the last line says `resume with: ... --resume`.
     A second signal aborts at once (nothing saved since the last checkpoint).
     Multi-worker `train` whose other worker died exits 1 within ~20 s, naming the
     lost task and the checkpoint: restart every worker with `--resume`.
Errors print as one line on stderr ("fpn-keras CMD: error: ..."); `--verbose`
adds the traceback.
"""

import argparse
import os
import sys
import traceback

from fpn_keras import commands
from fpn_keras.commands import DEMO_RECIPE, QUANTIZE, STRATEGIES, USER_DATA_RECIPE, UsageError

# Quiet TensorFlow's C++ start-up logging unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROG = "fpn-keras"
EPILOG = ("exit codes: 0 success, 2 usage/configuration error (bad option, invalid recipe or "
          "--set, missing input file or data path, unusable data), 1 runtime failure, 130/143 train "
          "stopped by SIGINT/SIGTERM after checkpointing its last step")


# ---------------------------------------------------------------- parsers


def _common():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback on errors")
    return common


def _parser(sub, name, help, description):
    return sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                          parents=[_common()], formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_train(sub):
    p = _parser(sub, "train", "train a recipe", (
        "Train a recipe (a name from `fpn-keras recipes` or a YAML path). Writes OUT/model.keras,\n"
        "OUT/recipe.yaml (the resolved recipe), OUT/metrics.json, OUT/history.csv,\n"
        "OUT/predictions.png, OUT/curves.png and TensorBoard logs in OUT/logs; runs the COCO\n"
        "evaluation every train.eval_every_n_epochs epochs. On a terminal it shows Keras' progress\n"
        "bars; when stdout is not a terminal (a log file, CI, a scheduler) or with --quiet, one\n"
        "line per epoch: loss terms, learning rate, time and the COCO numbers.\n"
        "Each run gets a fresh folder: runs/<recipe name>, then runs/<recipe name>-2, -3, ...\n"
        "An explicit --out is used as given and must be new or empty unless --exist-ok or\n"
        "--resume; --resume without --out continues the newest runs/<recipe name>[-N]."))
    p.add_argument("--recipe", default=None, metavar="R",
                   help=f"recipe name (in recipes/) or path to a recipe YAML file (default: {USER_DATA_RECIPE} "
                        f"with --data, else the demo recipe {DEMO_RECIPE})")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="training data, overriding data.train: synthetic, tfds:NAME, "
                        "coco:ANNOTATIONS.json:IMAGE_DIR or voc:DIR. Without --val-data, a fixed "
                        "(seeded) data.holdout_fraction of its images (default 10%%) is held out for "
                        "validation and not trained on")
    p.add_argument("--val-data", default=None, metavar="SPEC",
                   help="validation data, overriding data.val (a spec as for --data, or 'holdout')")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, used as given (default: a fresh runs/<recipe name>[-N], see above)")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into an existing --out (or runs/<recipe name> itself), overwriting its files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe value (YAML syntax), e.g. --set train.batch_size=8 "
                        "--set model.backbone=resnet101 --set data.image_size=[256,256]; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in OUT (without --out: the newest "
                        "runs/<recipe name>[-N])")
    p.add_argument("--strategy", default=None, metavar="S",
                   help=f"tf.distribute strategy: one of {', '.join(STRATEGIES)} (default: the runner's, "
                        "i.e. auto); see docs on training on several GPUs/workers")
    p.add_argument("--quiet", action="store_true",
                   help="one line per epoch instead of progress bars, also on a terminal")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write a TF Serving SavedModel here after training, e.g. saved_models/NAME/1")


def _add_evaluate(sub):
    p = _parser(sub, "evaluate", "COCO-evaluate a trained model", (
        "COCO-evaluate a .keras model (or score a COCO results JSON with --results): prints the COCO\n"
        "table and a per-class table (AP, AP50, AR100, VOC07 / VOC AP at IoU 0.5; \"-\": a class\n"
        "without ground truth) and writes OUT/metrics.json (\"metrics\", \"per_class\", \"voc\"),\n"
        "OUT/results.json (COCO results format, with the dataset's original category ids),\n"
        "OUT/pr_curves.png (precision-recall at IoU 0.5 per class) and OUT/worst_images.png\n"
        "(the images with the most missed ground truth / the most confident false positives)."))
    p.add_argument("--model", default=None, metavar="M", help="a .keras file written by train")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="score this COCO results JSON (e.g. a results.json written by evaluate) instead of a "
                        "model; needs --data (default OUT: the file's folder)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="dataset spec (default: data.val of the recipe.yaml next to the model, i.e. the "
                        "held-out images when it trained with --data alone; else synthetic)")
    p.add_argument("--split", default=None,
                   help="split to evaluate (default: data.val_split of that recipe.yaml, else val)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input canvas size (default: the size stored in the model file)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default: 8)")
    p.add_argument("--num-images", type=int, default=None, metavar="N",
                   help="evaluate the first N images only (default: all)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: the model's folder)")
    p.add_argument("--quiet", action="store_true",
                   help="a progress line every 10%% of the images instead of a bar, also on a terminal")
    _add_precision(p, "run the model")


def _add_precision(p, what):
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help=f"{what} in this precision (default: the model's, fp32): bf16 on CPUs with AVX512_BF16 "
                        "/ AMX or on GPUs, fp16 on GPUs; weights stay float32, decoding and NMS float32")


def _add_predict(sub):
    p = _parser(sub, "predict", "draw a model's detections on images and videos", (
        "Run a model on images and videos. INPUTS are files, folders (their images and videos;\n"
        "--recursive: sub-folders too), glob patterns (quote them: 'photos/*.jpg', expanded here)\n"
        "and video files (.mp4, .avi, .mov, .mkv, ...; needs pip install \"fpn_keras[video]\").\n"
        "A file that is not an image or video is skipped with a message and counted. Writes to\n"
        "OUT: <name>.png per image with boxes, class names and scores drawn; <name>.mp4 per\n"
        "video (.avi for an .avi) with every frame drawn, same frame count, fps and size;\n"
        "results.json (COCO results format: [{image_id, category_id, bbox [x, y, w, h], score}],\n"
        "pycocotools' loadRes reads it); images.json (image_id -> path, size, and video + frame\n"
        "index for a video frame; the categories); detections.json ({path or path#frame:\n"
        "[{box [x1, y1, x2, y2] in the image's pixels, label, class, score}, ...]}).\n"
        "Each run gets a fresh folder: runs/predict, runs/predict-2, ...; an explicit --out is\n"
        "used as given and must be new or empty unless --exist-ok. The model is a .keras file or a\n"
        "SavedModel folder written by export (its serving_default signature)."))
    p.add_argument("--model", required=True, metavar="M", help="a .keras file or a SavedModel directory")
    p.add_argument("sources", nargs="+", metavar="INPUTS",
                   help="image files (JPEG, PNG, BMP, GIF, TIFF, WebP), folders, glob patterns, video files")
    p.add_argument("--recursive", action="store_true", help="also read the folders inside folders ('**' in patterns)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, used as given (default: a fresh runs/predict[-N])")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into an existing --out (or runs/predict itself), overwriting its files")
    p.add_argument("--score-threshold", type=float, default=0.3, metavar="T",
                   help="keep (draw and write) detections scoring at least T (default: 0.3)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images of one size (video frames) run N at a time (default: 8)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="size a .keras model runs at (default: the size stored in the model file)")
    p.add_argument("--box-format", default=None,
                   help="box format of a SavedModel's outputs (default: xyxy; a .keras model knows its own)")
    p.add_argument("--quiet", action="store_true",
                   help="a progress line every 10%% of the images instead of a bar, also on a terminal")
    _add_precision(p, "run a .keras model")


def _add_export(sub):
    p = _parser(sub, "export", "export a trained model for serving", (
        "Export a .keras model.\n"
        "  saved_model: TF Serving layout (OUT is a version folder, e.g. saved_models/NAME/1) with\n"
        "               decoding and NMS inside; signatures serving_default (uint8 images, any\n"
        "               size) and serve_image_bytes (encoded images). Outputs boxes (the\n"
        "               model's box format, input pixels), scores, labels (0-based),\n"
        "               num_detections; --outputs od_api: the TF Object Detection API's\n"
        "               contract (input_tensor in; detection_boxes normalised yxyx,\n"
        "               detection_scores, detection_classes float 1-based, num_detections float).\n"
        "  tflite:      one .tflite file (OUT) with a fixed [1, H, W, 3] input, builtin ops only;\n"
        "               --quantize float16 / dynamic_range / int8 (int8 calibrates on\n"
        "               --representative-data).\n"
        "  onnx:        one .onnx file (OUT) with a fixed [1, H, W, 3] input, decoding and\n"
        "               NonMaxSuppression inside (needs the onnx extra: tf2onnx, onnxruntime)."))
    p.add_argument("--model", required=True, metavar="M", help="a .keras file written by train")
    p.add_argument("--format", default="saved_model", choices=["saved_model", "tflite", "onnx"],
                   help="export format (default: saved_model)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="saved_model: output folder, e.g. saved_models/NAME/1; tflite / onnx: output "
                        "file, e.g. model.tflite, model.onnx")
    p.add_argument("--outputs", default="pixels", choices=["pixels", "od_api"],
                   help="saved_model only: pixels (boxes, scores, labels, num_detections) or od_api "
                        "(the TF Object Detection API's names and meanings) (default: pixels)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="size the model runs at (default: the size stored in the model file)")
    p.add_argument("--quantize", default="none", choices=QUANTIZE, help="tflite only: quantization (default: none)")
    p.add_argument("--input-type", default="float32", choices=["float32", "uint8"],
                   help="tflite / onnx: input tensor type, float32 0..255 or uint8 pixels (default: float32)")
    p.add_argument("--representative-data", default=None, metavar="SPEC",
                   help="tflite int8 only: dataset spec whose train images calibrate the ranges")
    p.add_argument("--num-calibration-images", type=int, default=100, metavar="N",
                   help="tflite int8 only: number of calibration images (default: 100)")
    _add_precision(p, "saved_model only: the exported graph computes")


def _add_convert(sub):
    p = _parser(sub, "convert", "convert a torchvision or detectron2 detector to a .keras model", (
        "Convert a torchvision or detectron2 checkpoint (read without torch) into a .keras\n"
        "FPNDetector with that framework's conventions (anchors, padding, postprocess) and COCO class\n"
        "names and category ids: its detections on a canvas are the framework's. The file works with\n"
        "predict, evaluate and export."))
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="torchvision:retinanet_resnet50_fpn, torchvision:fasterrcnn_resnet50_fpn, "
                        "torchvision:fasterrcnn_mobilenet_v3_large_fpn, the _v2 ResNet-50 models "
                        "(retinanet_resnet50_fpn_v2, fasterrcnn_resnet50_fpn_v2), "
                        "detectron2:retinanet_R_50_FPN_1x or detectron2:faster_rcnn_R_50_FPN_1x")
    p.add_argument("--weights", required=True, metavar="W",
                   help="a torchvision state_dict (.pth / .safetensors), or COCO_V1 (downloads torchvision's); "
                        "detectron2: its checkpoint (.pkl from the model zoo, .pth, .safetensors, .npz)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .keras file to write")
    p.add_argument("--num-classes", type=int, default=80, choices=[80, 91],
                   help="80: COCO's classes (default); 91: torchvision's category ids (Faster R-CNN: "
                        "ids 1..90 as 90 classes, the softmax exactly torchvision's)")
    p.add_argument("--image-size", type=int, nargs=2, default=[800, 1344], metavar=("H", "W"),
                   help="canvas stored in the model, multiples of 32 (default: 800 1344)")
    p.add_argument("--norm-epsilon", type=float, default=None, metavar="EPS",
                   help="backbone BatchNorm epsilon (torchvision only; default: the COCO_V1 weights': 0.0 for "
                        "the v1 ResNet-50 models, 1e-5 for *_v2 and fasterrcnn_mobilenet_v3_large_fpn); 1e-5 "
                        "for a v1 model torchvision built without overwrite_eps; detectron2's is 1e-5")


def _add_recipes(sub):
    p = _parser(sub, "recipes", "list the recipes", (
        "List the recipes in recipes/ with one line each (source and target number);\n"
        "with a NAME, print that recipe resolved (bases merged, defaults filled in) as YAML."))
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="a recipe to print in full")


BENCHMARKS = {
    "postprocess": "forward pass vs decoding + NMS cost (RetinaNet R50-FPN, batch 1)",
    "speed": "inference latency and training throughput vs torchvision, same run",
    "ablation": "the FPN paper's Table 1 (--head rpn) / Table 3 (--head faster_rcnn) ablation",
    "tflite": "TFLite float32 / float16 / int8 latency and size vs Keras",
    "input_pipeline": "input pipeline images/s (synthetic, COCO folder)",
    "gpu": "ours under KERAS_BACKEND=jax vs torchvision on a GPU",
    "profile_ops": "TF profiler: predict time by op type",
    "precision": "COCO AP of bf16 / int8 inference against fp32 on a trained model (--model M)",
    "peak": "this machine's best GFLOP/s per precision (matmul, convolution, TFLite)",
    "onnx_roi_align": "ONNX Faster R-CNN: CropAndResize vs gather RoIAlign, interleaved",
}


def _add_benchmark(sub):
    p = _parser(sub, "benchmark", "run one of the bench/ scripts", (
        "Runs bench/NAME.py of a source checkout with the arguments that follow NAME\n"
        "(`fpn-keras benchmark speed --help` shows that script's own options):\n"
        + "\n".join(f"  {name:<15} {text}" for name, text in BENCHMARKS.items())))
    p.add_argument("name", nargs="?", default="postprocess", choices=sorted(BENCHMARKS),
                   help="which benchmark (default: postprocess)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...",
                   help="arguments for bench/NAME.py")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="FPN object detectors (RetinaNet, Faster R-CNN, RPN) for Keras 3.",
        epilog=EPILOG)
    parser.add_argument("--verbose", action="store_true", help="print the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_predict, _add_export, _add_convert, _add_recipes,
                _add_benchmark):
        add(sub)
    return parser


# ---------------------------------------------------------------- helpers


COMMANDS = {"train": commands.train, "evaluate": commands.evaluate, "predict": commands.predict,
            "export": commands.export, "convert": commands.convert, "recipes": commands.recipes,
            "benchmark": commands.benchmark}


def _one_line(error, limit=400):
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ... (--verbose for the full message)"


def resume_command(argv, out=None):
    """The command line that resumes an interrupted `train` run (adds --resume, and
    --out OUT when the run chose its own folder)."""
    import shlex

    argv = list(argv)
    if out is not None and not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    return " ".join([PROG, *map(shlex.quote, argv), *([] if "--resume" in argv else ["--resume"])])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    from fpn_keras.config import RecipeError

    try:
        COMMANDS[args.command](args)
    except (UsageError, RecipeError, FileNotFoundError, NotADirectoryError) as error:
        if verbose:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (nothing saved since the last checkpoint)",
              file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one clear line, the traceback with --verbose
        interrupted = sys.modules.get("fpn_keras.callbacks")  # imported by training, if it ran
        if interrupted is not None and isinstance(error, interrupted.TrainingInterrupted):
            print(f"{PROG} {args.command}: interrupted by {error}\n"
                  f"resume with: {resume_command(argv, getattr(args, 'resolved_out', None))}", file=sys.stderr)
            return error.exit_code
        if interrupted is not None and isinstance(error, interrupted.WorkerLost):
            print(f"{PROG} {args.command}: {error}\n"
                  f"resume with (on every worker): {resume_command(argv, getattr(args, 'resolved_out', None))}",
                  file=sys.stderr)
            return error.exit_code
        if verbose:
            traceback.print_exc()
        print(f"{PROG} {args.command}: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
