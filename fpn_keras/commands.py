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


def output_folder(out, default, exist_ok=False, resume=False, resumable=False):
    """run_folders.choose_output_folder, its RunFolderExists a usage error."""
    from fpn_keras.run_folders import RunFolderExists, choose_output_folder

    try:
        return choose_output_folder(out, default, exist_ok=exist_ok, resume=resume, resumable=resumable)
    except RunFolderExists as error:
        raise UsageError(str(error)) from None


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

    from fpn_keras.distribute import num_workers
    from fpn_keras.progress import interactive
    from fpn_keras.training import train

    name = os.path.splitext(os.path.basename(recipe_name))[0]
    if num_workers() > 1:  # every worker must name the same folder: no numbering, no check
        out = args.out or os.path.join("runs", name)
    else:
        out = output_folder(args.out, os.path.join("runs", name), args.exist_ok, args.resume, resumable=True)
    args.resolved_out = out  # for the `resume with:` line of an interrupted run (cli.main)
    print(f"Recipe {recipe_name} ({resolve_recipe_path(recipe_name)}), writing to {out}", flush=True)
    # Progress bars on a terminal; one line per epoch in a log file or with --quiet.
    model, _ = train(recipe, out, verbose=1 if interactive() and not args.quiet else 2, resume=args.resume)
    written = [f for f in ("model.keras", "recipe.yaml", "metrics.json", "history.csv", "predictions.png",
                           "curves.png") if os.path.isfile(os.path.join(out, f))]
    print(f"Wrote {', '.join(written)} in {out}")
    if args.export:
        from fpn_keras.export import saved_model

        saved_model(model, args.export, image_size=recipe.data.image_size)
        print(f"Exported SavedModel (signatures serving_default, serve_image_bytes) to {args.export}")


RESULTS_IMAGE_SIZE = (640, 640)  # evaluate --results without --image-size: the canvas the data is drawn on


def evaluate(args):
    from fpn_keras import data as data_lib
    from fpn_keras.config import HOLDOUT
    from fpn_keras.evaluation import report
    from fpn_keras.evaluation.coco_eval import CocoEvaluator, add_ground_truth, evaluate_model, format_metrics

    if (args.model is None) == (args.results is None):
        raise UsageError("pass --model M (a model to run) or --results FILE (a COCO results JSON to score), "
                         "one of the two")
    if args.results is not None:
        _require_file(args.results, "--results file")
        if args.data is None:
            raise UsageError("--results needs --data SPEC (the images and ground truth it was made on)")
    else:
        _require_file(args.model, "model file")
    run = _run_recipe(args.model).get("data", {}) if args.model else {}
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
    model = with_precision(load_keras_model(args.model), args.precision, "evaluate") if args.model else None
    if model is not None:
        size = _image_size(model, args.image_size)
    else:
        size = tuple(args.image_size or RESULTS_IMAGE_SIZE)
    extra = {"image_size": size} if spec == "synthetic" else {}
    elements, class_names, info = data_lib.load(spec, split, num_images=args.num_images, with_info=True,
                                                **holdout, **extra)
    # A converted torchvision / detectron2 model resizes as its library does (short side, cap).
    resize = (run.get("resize") if args.data is None else None) or getattr(model, "short_side_resize", None)
    box_format = model.bounding_box_format if model is not None else "xyxy"
    batches = data_lib.pipeline.prepare(elements, args.batch_size, size, training=False, resize=resize,
                                        bounding_box_format=box_format,
                                        pad_value=model.pad_value if model is not None else 0.0)
    category_ids = (_category_ids(model, class_names) if model is not None
                    else getattr(class_names, "category_ids", None))
    evaluator = CocoEvaluator(class_names=class_names, category_ids=category_ids)
    scored = args.model or args.results
    if model is not None:
        from fpn_keras.progress import Progress, interactive, track

        progress = Progress(info.num_images, "evaluate", "images", bar=interactive() and not args.quiet)
        tracked = track(batches, progress, count=lambda batch: int(batch[0].shape[0]))
        metrics = evaluate_model(model, tracked, class_names=class_names, verbose=False, evaluator=evaluator)
    else:
        try:
            with open(args.results) as f:
                results = json.load(f)
            add_ground_truth(evaluator, batches, box_format).add_results(results)
        except ValueError as error:
            raise UsageError(f"--results {args.results}: {error}") from None
        metrics = evaluator.evaluate(verbose=False)
    print(format_metrics(metrics, title=f"COCO metrics: {scored} on {info.description} "
                                        f"({info.num_images} images)"))
    out = args.out or os.path.dirname(os.path.abspath(scored))
    os.makedirs(out, exist_ok=True)
    classes, table, pictures = report.write_report(evaluator, batches, out)
    print(table)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"metrics": metrics, "model": args.model, "results": args.results, "data": spec,
                   "split": split, "evaluated_on": info.description, "num_images": info.num_images,
                   **classes}, f, indent=2)
    written = ["metrics.json"]
    if model is not None:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(evaluator.results_json(), f)
        written.append("results.json")
    print(f"Wrote {', '.join(written + pictures)} in {out}")


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


def _predictor(model_path, image_size, box_format, precision=None):
    """-> (fn(uint8 [N, H, W, 3]) -> serving outputs, class names, category ids or None, box format)."""
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
        from fpn_keras.export.outputs import pixel_outputs

        try:
            run, kind = pixel_outputs(loaded.signatures["serving_default"])
        except ValueError as error:
            raise UsageError(f"{model_path}: {error}") from None
        if kind == "od_api" and box_format not in (None, "xyxy"):  # boxes come back as xyxy pixels
            raise UsageError(f"{model_path} has the TF OD API's outputs (normalised yxyx boxes); "
                             f"--box-format {box_format} does not apply to it")
        names = []
        for candidate in (os.path.join(model_path, "labels.txt"), os.path.join(model_path, "assets", "labels.txt")):
            if os.path.isfile(candidate):
                with open(candidate) as f:
                    names = [line.strip() for line in f if line.strip()]
                break
        return run, names, None, box_format or "xyxy"
    from fpn_keras.export.saved_model import serving_functions

    model = with_precision(load_keras_model(model_path), precision, "predict")
    from_images, _ = serving_functions(model, _image_size(model, image_size))
    function = tf.function(from_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    return (function, list(model.class_names or []), model.category_ids,
            box_format or model.bounding_box_format)


def read_outputs(outputs):
    """Serving outputs (export/saved_model.py `serving_outputs`) -> (boxes [N, D, 4] in the
    model's box format, scores [N, D], labels [N, D] int, -1 padding): the one place
    that knows the output names."""
    import numpy as np

    return (np.asarray(outputs["boxes"]), np.asarray(outputs["scores"]),
            np.asarray(outputs["labels"]).astype(np.int64))


def predict(args):
    import keras
    import numpy as np

    from fpn_keras import predict_sources, predicting
    from fpn_keras.progress import interactive

    try:
        sources, skipped = predict_sources.expand(args.sources, recursive=args.recursive)
    except predict_sources.SourceError as error:
        raise UsageError(str(error)) from None
    if not sources:
        raise UsageError("no image or video among the inputs: " +
                         "; ".join(f"{path}: {reason}" for path, reason in skipped[:3]))
    if any(source.kind == "video" for source in sources):
        try:
            predict_sources.opencv()
        except predict_sources.MissingVideoSupport as error:
            raise UsageError(str(error)) from None
    if not os.path.exists(args.model):
        raise UsageError(f"model {args.model!r} does not exist")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, received {args.batch_size}")
    out = output_folder(args.out, os.path.join("runs", "predict"), args.exist_ok)
    predict, class_names, category_ids, box_format = _predictor(args.model, args.image_size, args.box_format,
                                                                  args.precision)

    def detect(images):
        boxes, scores, labels = read_outputs(predict(images))
        boxes = keras.utils.bounding_boxes.convert_format(
            boxes, source=box_format, target="xyxy", height=images.shape[1], width=images.shape[2])
        return np.asarray(keras.ops.convert_to_numpy(boxes)), scores, labels

    summary = predicting.run(detect, sources, out, class_names, category_ids, args.score_threshold,
                             args.batch_size, skipped, bar=interactive() and not args.quiet)
    if summary["images"] + summary["frames"] == 0:
        raise UsageError("none of the inputs could be read: " +
                         "; ".join(f"{path}: {reason}" for path, reason in summary["skipped"][:3]))
    print(predicting.summary_line(summary, out, args.score_threshold))


def _representative_images(spec, size, count):
    from fpn_keras import data as data_lib

    extra = {"image_size": size} if spec == "synthetic" else {}
    elements, _ = data_lib.load(spec, "train", num_images=count, **extra)
    for images, _ in data_lib.pipeline.prepare(elements, 1, size, training=False):
        yield images.numpy()


def export(args):
    if args.precision not in (None, "fp32") and args.format != "saved_model":
        raise UsageError(f"--precision {args.precision} applies to --format saved_model: the {args.format} export "
                         "is a float32 graph (for TFLite, --quantize float16 / dynamic_range / int8)")
    model = with_precision(load_keras_model(args.model), args.precision, "export")
    size = _image_size(model, args.image_size)
    if args.format != "tflite" and (args.quantize != "none" or args.representative_data):
        raise UsageError("--quantize and --representative-data apply to --format tflite only")
    if args.format != "saved_model" and args.outputs != "pixels":
        raise UsageError("--outputs applies to --format saved_model only")
    if args.format == "saved_model":
        from fpn_keras.export import saved_model

        saved_model(model, args.out, image_size=size, outputs=args.outputs)
        print(f"Exported {args.model} to {args.out} (SavedModel: serving_default, serve_image_bytes; "
              f"outputs {args.outputs})")
        return
    if args.format == "onnx":
        try:
            from fpn_keras.export import onnx
            import tf2onnx  # noqa: F401
        except ImportError as error:
            raise UsageError(f"--format onnx needs the onnx extra (pip install 'fpn_keras[onnx]'): {error}") from None
        onnx(model, args.out, size, input_type=args.input_type)
        print(f"Exported {args.model} to {args.out} (ONNX, input [1, {size[0]}, {size[1]}, 3] {args.input_type})")
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
