"""What each `fpn-keras` subcommand does (the parser and exit codes are in
`fpn_keras.cli`). Heavy imports happen inside the commands, so `--help` stays fast."""

import json
import os
import sys

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu", "one_device:DEVICE")
QUANTIZE = ("none", "float16", "dynamic_range", "int8")
DEMO_RECIPE = "retinanet_synthetic"
USER_DATA_RECIPE = "retinanet_user_data"


class UsageError(Exception):
    """A bad command line or missing input: exit code 2."""


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


class ModelFileError(RuntimeError):
    """A model file exists but is not a loadable .keras file (exit 1)."""


def load_keras_model(path):
    """Loads a .keras model with safe_mode=True (no arbitrary code from the file).
    A missing file or a path that is not a `.keras` file is a usage error; a file that
    is not a complete .keras archive (truncated, another format) a ModelFileError."""
    import zipfile

    import keras

    import fpn_keras.build  # noqa: F401 - imports (registers) every serializable class

    _require_file(path, "model file")
    if not str(path).endswith(".keras"):
        raise UsageError(f"model file {path!r}: expected a .keras file (written by `fpn-keras train` or "
                         "model.save); SavedModel and TFLite exports are for serving, not for this command")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} ({os.path.getsize(path)} bytes) is not a .keras file: not a zip archive "
                             "(truncated by an interrupted copy, or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelFileError(f"{path}: damaged .keras archive ({error})") from None
    if bad is not None or not {"config.json", "model.weights.h5"} <= names:
        what = f"member {bad} is damaged" if bad is not None else f"it holds {sorted(names)}"
        raise ModelFileError(f"{path}: not a complete .keras file ({what}; a .keras file holds "
                             "config.json, metadata.json and model.weights.h5)")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (TypeError, ValueError) as error:  # a config this fpn_keras cannot rebuild
        raise ModelFileError(_config_mismatch(path, error)) from error


def with_precision(model, precision, command):
    """--precision: the model rebuilt to compute in bf16 / fp16 (fpn_keras.precision), with a
    note on stderr when this machine has no native support."""
    if precision is None:
        return model
    from fpn_keras.precision import hardware_note

    note = hardware_note(precision)
    if note:
        print(f"fpn-keras {command}: note: --precision {precision}: {note}", file=sys.stderr)
    return model.with_precision(precision)


def _config_mismatch(path, error):
    """One paragraph for a .keras file whose config.json this installation cannot rebuild
    (written by another fpn_keras version, or edited): what Keras found, both versions."""
    import re
    import zipfile

    import keras

    import fpn_keras

    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("metadata.json")).get("keras_version", "?") \
            if "metadata.json" in archive.namelist() else "?"
    found = re.findall(r"Exception encountered: (.*)", str(error))
    cause = found[-1].strip() if found else " ".join(str(error).split())[:200]
    return (f"{path}: its config.json does not fit this fpn_keras {fpn_keras.__version__} (Keras "
            f"{keras.__version__}; the file was saved with Keras {saved}): {cause}. Load it with the "
            "fpn_keras version that wrote it, or retrain")


def train(args):
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


def evaluate(args):
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
    model = with_precision(load_keras_model(args.model), args.precision, "evaluate")
    size = _image_size(model, args.image_size)
    extra = {"image_size": size} if spec == "synthetic" else {}
    elements, class_names, info = data_lib.load(spec, split, num_images=args.num_images, with_info=True,
                                                **holdout, **extra)
    # A converted torchvision / detectron2 model resizes as its library does (short side, cap).
    resize = (run.get("resize") if args.data is None else None) or model.short_side_resize
    batches = data_lib.pipeline.prepare(elements, args.batch_size, size, training=False, resize=resize,
                                        bounding_box_format=model.bounding_box_format,
                                        pad_value=model.pad_value)
    evaluator = CocoEvaluator(class_names=class_names, category_ids=_category_ids(model, class_names))
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


def _category_ids(model, class_names):
    """The data's category ids (label -> id in results.json); a model that stores other
    ids (FPNDetector.category_ids) would have its labels scored as other classes: an error."""
    model_names = list(model.class_names or [])
    unnamed = model_names == [str(i) for i in range(len(model_names))]  # FPNDetector's default names
    if not model.head.class_agnostic and model_names and (
            len(class_names) != len(model_names) or (not unnamed and list(class_names) != model_names)):
        raise UsageError(f"the model's {len(model_names)} classes {model_names[:6]} are not the data's "
                         f"{len(class_names)} {list(class_names)[:6]}: its labels would be scored as other "
                         "classes; evaluate on data with the model's classes, in the same order")
    data_ids = getattr(class_names, "category_ids", None)
    model_ids = getattr(model, "category_ids", None)
    if data_ids is not None and model_ids is not None and list(data_ids) != list(model_ids):
        raise UsageError(f"the model's classes are category ids {model_ids[:5]}... ({len(model_ids)}), "
                         f"the data's {list(data_ids)[:5]}... ({len(data_ids)}): evaluate on data with "
                         "the model's categories")
    return data_ids


def convert(args):
    """A torchvision or detectron2 checkpoint -> a .keras FPNDetector
    (fpn_keras.convert.torchvision_detection, fpn_keras.convert.detectron2)."""
    source, _, name = args.source.partition(":")
    if source not in ("torchvision", "detectron2") or not name:
        raise UsageError(f"--from {args.source!r}: expected torchvision:MODEL or detectron2:CONFIG, e.g. "
                         "torchvision:retinanet_resnet50_fpn or detectron2:retinanet_R_50_FPN_1x")
    if not args.out.endswith(".keras"):
        raise UsageError(f"--out {args.out!r}: the model file must end in .keras")
    if source == "detectron2":
        return _convert_detectron2(args, name)
    from fpn_keras.convert.torchvision_detection import KNOWN_WEIGHTS, MODELS, from_torchvision

    if name not in MODELS:
        raise UsageError(f"--from {args.source!r}: unknown torchvision model; choose from {list(MODELS)}")
    if args.weights not in KNOWN_WEIGHTS:
        _require_file(args.weights, "--weights checkpoint")
    model = from_torchvision(name, args.weights, num_classes=args.num_classes, image_size=tuple(args.image_size),
                             norm_epsilon=args.norm_epsilon)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(f"Wrote {args.out}: {name} with {args.weights}, {model.num_classes} classes, image size "
          f"{tuple(model.image_size)} (predict / evaluate / export read it from the file)")


def _convert_detectron2(args, name):
    from fpn_keras.convert.detectron2 import SHORT_NAMES, from_detectron2

    if name not in SHORT_NAMES and name not in SHORT_NAMES.values():
        raise UsageError(f"--from {args.source!r}: unknown detectron2 config; choose from {list(SHORT_NAMES)}")
    if args.num_classes != 80:
        raise UsageError(f"--num-classes {args.num_classes}: detectron2's COCO models have 80 classes")
    _require_file(args.weights, "--weights checkpoint")
    model = from_detectron2(name, args.weights, image_size=tuple(args.image_size))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(f"Wrote {args.out}: detectron2 {name} with {args.weights}, {model.num_classes} classes, image size "
          f"{tuple(model.image_size)} (predict / evaluate / export read it from the file)")


def _read_image(path):
    from fpn_keras.preprocessing import read_image

    try:
        image = read_image(path)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if str(path).lower().endswith((".jpg", ".jpeg")):
        from fpn_keras.data.jpeg_check import jpeg_damage

        damage = jpeg_damage(path)  # PIL decodes a JPEG damaged in the middle without a word
        if damage:
            print(f"fpn-keras predict: warning: {path}: damaged JPEG data (libjpeg: {damage}); detections "
                  "on the damaged part of the image mean nothing", file=sys.stderr)
    return image


def _predictor(model_path, image_size, box_format, precision=None):
    """-> (fn(uint8 [1, H, W, 3]) -> serving outputs, class names, box format)."""
    import tensorflow as tf

    if os.path.isdir(model_path):
        if precision is not None:
            raise UsageError(f"--precision applies to .keras models: the SavedModel {model_path!r} computes "
                             "in the precision it was exported with (fpn-keras export --precision)")
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

    model = with_precision(load_keras_model(model_path), precision, "predict")
    from_images, _ = serving_functions(model, _image_size(model, image_size))
    function = tf.function(from_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    return function, list(model.class_names or []), box_format or model.bounding_box_format


def predict(args):
    import keras
    import numpy as np

    from fpn_keras import visualization

    for path in args.images:
        _require_file(path, "image")
    if not os.path.exists(args.model):
        raise UsageError(f"model {args.model!r} does not exist")
    images = [_read_image(path) for path in args.images]
    predict, class_names, box_format = _predictor(args.model, args.image_size, args.box_format, args.precision)
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


def export(args):
    if args.precision not in (None, "fp32") and args.format != "saved_model":
        raise UsageError(f"--precision {args.precision}: TFLite runs float32 or quantized graphs; use --quantize "
                         "float16 / dynamic_range / int8 for --format tflite")
    model = with_precision(load_keras_model(args.model), args.precision, "export")
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


def recipes(args):
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


def benchmark(args):
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
