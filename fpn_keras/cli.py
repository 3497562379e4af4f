"""The `fpn-keras` command line (also `python -m fpn_keras`).

Subcommands: train, evaluate, predict, export, recipes, benchmark (`fpn-keras CMD --help`).

Exit codes:
  0  success;
  2  usage or configuration error: bad arguments, an invalid recipe or `--set`
     override (unknown key, wrong type, missing required key), an unknown dataset
     spec, or a file / folder named on the command line or in the recipe that does
     not exist (e.g. a missing --model file or data path). Nothing has run yet.
  1  runtime failure while working on valid inputs (e.g. a model file that exists
     but cannot be loaded, a training run that fails).
Errors print as one line on stderr ("fpn-keras CMD: error: ..."); `--verbose`
adds the traceback.
"""

import argparse
import json
import os
import sys
import traceback

# Quiet TensorFlow's C++ start-up logging unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROG = "fpn-keras"
EPILOG = ("exit codes: 0 success, 2 usage/configuration error (bad option, invalid recipe or "
          "--set, missing input file or data path), 1 runtime failure")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu", "one_device:DEVICE")
QUANTIZE = ("none", "float16", "dynamic_range", "int8")
DEMO_RECIPE = "retinanet_synthetic"
USER_DATA_RECIPE = "retinanet_user_data"


class UsageError(Exception):
    """A bad command line or missing input: exit code 2."""


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
        "OUT/predictions.png, OUT/curves.png and TensorBoard logs in OUT/logs; shows Keras\n"
        "progress bars and the COCO evaluation every train.eval_every_n_epochs epochs."))
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
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: runs/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe value (YAML syntax), e.g. --set train.batch_size=8 "
                        "--set model.backbone=resnet101 --set data.image_size=[256,256]; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in OUT (when the training runner supports it)")
    p.add_argument("--strategy", default=None, metavar="S",
                   help=f"tf.distribute strategy: one of {', '.join(STRATEGIES)} (default: the runner's, "
                        "i.e. auto); see docs on training on several GPUs/workers")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write a TF Serving SavedModel here after training, e.g. saved_models/NAME/1")


def _add_evaluate(sub):
    p = _parser(sub, "evaluate", "COCO-evaluate a trained model", (
        "COCO-evaluate a .keras model: prints the COCO table and writes OUT/metrics.json and\n"
        "OUT/results.json (COCO results format, with the dataset's original category ids)."))
    p.add_argument("--model", required=True, metavar="M", help="a .keras file written by train")
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


def _add_predict(sub):
    p = _parser(sub, "predict", "draw a model's detections on images", (
        "Run a model on image files: writes OUT/<image name>.png with boxes, class names and\n"
        "scores drawn, and OUT/detections.json ({image path: [{box [x1, y1, x2, y2] in the\n"
        "image's pixels, label, class, score}, ...]}). The model is a .keras file or a\n"
        "SavedModel folder written by export (its serving_default signature)."))
    p.add_argument("--model", required=True, metavar="M", help="a .keras file or a SavedModel directory")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files (JPEG, PNG, BMP, GIF)")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output directory (default: predictions)")
    p.add_argument("--score-threshold", type=float, default=0.3, metavar="T",
                   help="keep detections scoring at least T (default: 0.3)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="size a .keras model runs at (default: the size stored in the model file)")
    p.add_argument("--box-format", default=None,
                   help="box format of a SavedModel's outputs (default: xyxy; a .keras model knows its own)")


def _add_export(sub):
    p = _parser(sub, "export", "export a trained model for serving", (
        "Export a .keras model.\n"
        "  saved_model: TF Serving layout (OUT is a version folder, e.g. saved_models/NAME/1) with\n"
        "               decoding and NMS inside; signatures serving_default (uint8 images, any\n"
        "               size) and serve_image_bytes (encoded images).\n"
        "  tflite:      one .tflite file (OUT) with a fixed [1, H, W, 3] input, builtin ops only;\n"
        "               --quantize float16 / dynamic_range / int8 (int8 calibrates on\n"
        "               --representative-data)."))
    p.add_argument("--model", required=True, metavar="M", help="a .keras file written by train")
    p.add_argument("--format", default="saved_model", choices=["saved_model", "tflite"],
                   help="export format (default: saved_model)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="saved_model: output folder, e.g. saved_models/NAME/1; tflite: output file, e.g. model.tflite")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="size the model runs at (default: the size stored in the model file)")
    p.add_argument("--quantize", default="none", choices=QUANTIZE, help="tflite only: quantization (default: none)")
    p.add_argument("--input-type", default="float32", choices=["float32", "uint8"],
                   help="tflite only: input tensor type, float32 0..255 or uint8 pixels (default: float32)")
    p.add_argument("--representative-data", default=None, metavar="SPEC",
                   help="tflite int8 only: dataset spec whose train images calibrate the ranges")
    p.add_argument("--num-calibration-images", type=int, default=100, metavar="N",
                   help="tflite int8 only: number of calibration images (default: 100)")


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
    for add in (_add_train, _add_evaluate, _add_predict, _add_export, _add_recipes, _add_benchmark):
        add(sub)
    return parser


# ---------------------------------------------------------------- helpers


def _require_file(path, what):
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} does not exist" if not os.path.exists(path)
                         else f"{what} {path!r} is not a file")


def check_data_spec(spec, what="--data"):
    """Unknown specs and missing local paths are usage errors (exit 2)."""
    from fpn_keras.data import parse_spec

    try:
        kind, args = parse_spec(spec)
    except ValueError as error:
        raise UsageError(f"{what}: {error}") from None
    if kind == "coco":
        _require_file(args[0], f"{what}: COCO annotation file")
        if not os.path.isdir(args[1]):
            raise UsageError(f"{what}: COCO image folder {args[1]!r} does not exist")
    elif kind == "voc" and not os.path.isdir(args[0]):
        raise UsageError(f"{what}: VOC folder {args[0]!r} does not exist")


def _run_recipe(model_path):
    """The recipe.yaml written next to a model by train (plain dict), or {}."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "recipe.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _image_size(model, size):
    """--image-size, else the size stored with the model (FPNDetector.image_size)."""
    if size is not None:
        return tuple(size)
    if model.image_size is None:
        raise UsageError("the model file does not store the image size it was trained at: "
                         "pass --image-size H W")
    return tuple(model.image_size)


def load_keras_model(path):
    """Loads a .keras model with safe_mode=True (no arbitrary code from the file)."""
    import keras

    import fpn_keras.build  # noqa: F401 - imports (registers) every serializable class

    _require_file(path, "model file")
    return keras.saving.load_model(path, safe_mode=True)


# ---------------------------------------------------------------- commands


def _train(args):
    from fpn_keras.config import HOLDOUT, load_recipe
    from fpn_keras.recipe_files import resolve_recipe_path

    overrides = list(args.overrides)
    data_origins = {}
    if args.data:
        overrides.append(f"data.train={args.data}")
        data_origins["data.train"] = "--data"
    if args.val_data or args.data:
        overrides.append(f"data.val={args.val_data or HOLDOUT}")
        data_origins["data.val"] = "--val-data" if args.val_data else "--data without --val-data"
    if args.strategy is not None:
        overrides.append(f"train.strategy={args.strategy}")  # recorded in OUT/recipe.yaml
    recipe_name = args.recipe or (USER_DATA_RECIPE if args.data else DEMO_RECIPE)
    recipe = load_recipe(recipe_name, overrides)
    recipe.origins.update(data_origins)
    train_specs = recipe.data.train if isinstance(recipe.data.train, list) else [recipe.data.train]
    for spec in train_specs:
        check_data_spec(spec, "data.train")
    if recipe.data.val != HOLDOUT:
        check_data_spec(recipe.data.val, "data.val")
    if args.strategy is not None:
        name = args.strategy.split(":", 1)[0].strip().lower()
        known = {s.split(":", 1)[0] for s in STRATEGIES} | {"multiworker", "multi_worker_mirrored"}
        if name not in known:
            raise UsageError(f"--strategy {args.strategy!r}: expected one of {list(STRATEGIES)}")

    from fpn_keras.training import train

    name = os.path.splitext(os.path.basename(recipe_name))[0]
    out = args.out or os.path.join("runs", name)
    print(f"Recipe {recipe_name} ({resolve_recipe_path(recipe_name)}), writing to {out}")
    model, _ = train(recipe, out, verbose=2 if args.quiet else 1, resume=args.resume)
    written = [f for f in ("model.keras", "recipe.yaml", "metrics.json", "history.csv", "predictions.png",
                           "curves.png") if os.path.isfile(os.path.join(out, f))]
    print(f"Wrote {', '.join(written)} in {out}")
    if args.export:
        from fpn_keras.export import saved_model

        saved_model(model, args.export, image_size=recipe.data.image_size)
        print(f"Exported SavedModel (signatures serving_default, serve_image_bytes) to {args.export}")


def _evaluate(args):
    from fpn_keras import data as data_lib
    from fpn_keras.config import HOLDOUT
    from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model, format_metrics

    _require_file(args.model, "model file")
    run = _run_recipe(args.model).get("data", {})
    spec = args.data or run.get("val") or "synthetic"
    split = args.split or run.get("val_split") or "val"
    holdout = {}
    if spec == HOLDOUT:  # the held-out images of the run's training data, as in training
        spec = run.get("train")
        if not isinstance(spec, str):
            raise UsageError(f"the recipe.yaml next to {args.model} holds out images from {spec!r}: "
                             "pass --data SPEC")
        split = args.split or run.get("train_split") or "train"
        holdout = {"holdout": run.get("holdout_fraction", 0.1), "part": "held_out", "seed": run.get("seed", 0)}
    check_data_spec(spec)
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, received {args.batch_size}")
    model = load_keras_model(args.model)
    size = _image_size(model, args.image_size)
    extra = {"image_size": size} if spec == "synthetic" else {}
    elements, class_names, info = data_lib.load(spec, split, num_images=args.num_images, with_info=True,
                                                **holdout, **extra)
    batches = data_lib.pipeline.prepare(elements, args.batch_size, size, training=False,
                                        resize=run.get("resize") if args.data is None else None,
                                        bounding_box_format=model.bounding_box_format)
    evaluator = CocoEvaluator(class_names=class_names,
                              category_ids=getattr(class_names, "category_ids", None))
    metrics = evaluate_model(model, batches, class_names=class_names, verbose=False, evaluator=evaluator)
    print(format_metrics(metrics, title=f"COCO metrics: {args.model} on {info.description} "
                                        f"({info.num_images} images)"))
    out = args.out or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"metrics": metrics, "model": args.model, "data": spec, "split": split,
                   "evaluated_on": info.description, "num_images": info.num_images}, f, indent=2)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(evaluator.results_json(), f)
    print(f"Wrote {os.path.join(out, 'metrics.json')} and {os.path.join(out, 'results.json')}")


def _read_image(path):
    from fpn_keras.preprocessing import read_image

    try:
        return read_image(path)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _predictor(model_path, image_size, box_format):
    """-> (fn(uint8 [1, H, W, 3]) -> serving outputs, class names, box format)."""
    import tensorflow as tf

    if os.path.isdir(model_path):
        if not os.path.isfile(os.path.join(model_path, "saved_model.pb")):
            raise UsageError(f"model folder {model_path!r} holds no saved_model.pb")
        loaded = tf.saved_model.load(model_path)
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"{model_path}: the SavedModel has no serving_default signature")
        signature = loaded.signatures["serving_default"]
        names = []
        for candidate in (os.path.join(model_path, "labels.txt"), os.path.join(model_path, "assets", "labels.txt")):
            if os.path.isfile(candidate):
                with open(candidate) as f:
                    names = [line.strip() for line in f if line.strip()]
                break
        return (lambda images: signature(images=images)), names, box_format or "xyxy"
    from fpn_keras.export.saved_model import serving_functions

    model = load_keras_model(model_path)
    from_images, _ = serving_functions(model, _image_size(model, image_size))
    function = tf.function(from_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    return function, list(model.class_names or []), box_format or model.bounding_box_format


def _predict(args):
    import keras
    import numpy as np

    from fpn_keras import visualization

    for path in args.images:
        _require_file(path, "image")
    if not os.path.exists(args.model):
        raise UsageError(f"model {args.model!r} does not exist")
    images = [_read_image(path) for path in args.images]
    predict, class_names, box_format = _predictor(args.model, args.image_size, args.box_format)
    os.makedirs(args.out, exist_ok=True)
    results, used = {}, set()
    for path, image in zip(args.images, images):
        outputs = predict(image[None])
        height, width = image.shape[:2]
        boxes = keras.utils.bounding_boxes.convert_format(
            outputs["detection_boxes"], source=box_format, target="xyxy", height=height, width=width)
        boxes = np.asarray(keras.ops.convert_to_numpy(boxes))[0]
        scores = np.asarray(outputs["detection_scores"])[0]
        labels = np.asarray(outputs["detection_classes"])[0]
        keep = (labels >= 0) & (scores >= args.score_threshold)
        drawn = visualization.draw_detections(image, boxes[keep], labels[keep], scores[keep],
                                              class_names=class_names or None)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, i = stem, 1
        while name in used:
            name, i = f"{stem}_{i}", i + 1
        used.add(name)
        visualization.save_image(drawn, os.path.join(args.out, name + ".png"))
        results[path] = [
            {"box": [round(float(v), 2) for v in box], "label": int(label),
             "class": class_names[label] if 0 <= label < len(class_names) else str(int(label)),
             "score": round(float(score), 4)}
            for box, label, score in zip(boxes[keep], labels[keep], scores[keep])]
        print(f"{path}: {len(results[path])} detections -> {os.path.join(args.out, name + '.png')}")
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"Wrote {os.path.join(args.out, 'detections.json')}")


def _representative_images(spec, size, count):
    from fpn_keras import data as data_lib

    extra = {"image_size": size} if spec == "synthetic" else {}
    elements, _ = data_lib.load(spec, "train", num_images=count, **extra)
    for images, _ in data_lib.pipeline.prepare(elements, 1, size, training=False):
        yield images.numpy()


def _export(args):
    model = load_keras_model(args.model)
    size = _image_size(model, args.image_size)
    if args.format == "saved_model":
        if args.quantize != "none" or args.representative_data:
            raise UsageError("--quantize and --representative-data apply to --format tflite only")
        from fpn_keras.export import saved_model

        saved_model(model, args.out, image_size=size)
        print(f"Exported {args.model} to {args.out} (SavedModel: serving_default, serve_image_bytes)")
        return
    quantize = None if args.quantize == "none" else args.quantize
    representative = None
    if quantize == "int8":
        if not args.representative_data:
            raise UsageError("--quantize int8 needs --representative-data SPEC (calibration images)")
        check_data_spec(args.representative_data, "--representative-data")
        representative = list(_representative_images(args.representative_data, size,
                                                      args.num_calibration_images))
    from fpn_keras.export import tflite

    tflite(model, args.out, size, quantize=quantize,
           representative_data=representative, input_type=args.input_type)
    print(f"Exported {args.model} to {args.out} (TFLite, input [1, {size[0]}, {size[1]}, 3] "
          f"{args.input_type}, quantize={args.quantize})")


def _recipes(args):
    from fpn_keras.config import load_recipe
    from fpn_keras.recipe_files import available_recipes, recipes_dir, resolve_recipe_path

    if args.name:
        import yaml

        recipe = load_recipe(args.name)
        print(f"# {resolve_recipe_path(args.name)} (resolved)")
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return
    for name in available_recipes():
        with open(os.path.join(recipes_dir(), name + ".yaml")) as f:
            first = f.readline().strip().lstrip("#").strip()
        print(f"{name:<40} {first}")


def _benchmark(args):
    """Runs bench/NAME.py in a subprocess (the scripts pick their own backend and threads)."""
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "bench", f"{args.name}.py")
    if not os.path.isfile(script):
        raise UsageError(f"the benchmarks live in bench/ of a source checkout ({script} not found): "
                         f"run python bench/{args.name}.py there")
    result = subprocess.run([sys.executable, script, *args.script_args])
    if result.returncode != 0:
        raise RuntimeError(f"bench/{args.name}.py exited with {result.returncode}")


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export,
            "recipes": _recipes, "benchmark": _benchmark}


def _one_line(error, limit=400):
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ... (--verbose for the full message)"


def main(argv=None):
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
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - one clear line, the traceback with --verbose
        if verbose:
            traceback.print_exc()
        print(f"{PROG} {args.command}: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
