"""The `fpn-keras` command line (also `python -m fpn_keras`).

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure.
Errors print as one line; `--verbose` adds the traceback.
"""

import argparse
import json
import os
import sys
import traceback

# Quiet TensorFlow's C++ start-up logging unless the user asked otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_train(sub):
    p = sub.add_parser("train", help="train a recipe", description=(
        "Train a recipe: writes OUT/model.keras, OUT/recipe.yaml (resolved), OUT/metrics.json, "
        "OUT/predictions.png, OUT/history.csv and TensorBoard logs in OUT/logs."))
    p.add_argument("--recipe", required=True, help="recipe name (in recipes/) or path to a YAML file")
    p.add_argument("--out", default=None, help="output directory (default runs/<recipe name>)")
    p.add_argument("--data", default=None, help="dataset spec for train and val (overrides data.train/data.val)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.batch_size=8 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write a TF Serving SavedModel here, e.g. saved_models/NAME/1")


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="COCO-evaluate a saved model", description=(
        "Evaluate a .keras model with COCO metrics; prints the table and writes "
        "OUT/metrics.json and OUT/results.json (COCO results format)."))
    p.add_argument("--model", required=True, help="path to a .keras file written by train")
    p.add_argument("--data", default="synthetic", help="dataset spec (default: synthetic)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size (default: the size in the model's recipe.yaml next to it, else 128 128)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--out", default=None, help="output directory (default: next to the model)")


def _train(args):
    from fpn_keras.config import load_recipe
    from fpn_keras.training import train

    overrides = list(args.set)
    if args.data:
        overrides += [f"data.train={args.data}", f"data.val={args.data}"]
    recipe = load_recipe(args.recipe, overrides)
    name = os.path.splitext(os.path.basename(args.recipe))[0]
    out = args.out or os.path.join("runs", name)
    model, _ = train(recipe, out, verbose=2 if args.quiet else 1)
    print(f"Wrote {out}/model.keras, metrics.json, predictions.png")
    if args.export:
        from fpn_keras.export import saved_model

        saved_model(model, args.export, image_size=recipe.data.image_size)
        print(f"Exported SavedModel (signatures serving_default, serve_image_bytes) to {args.export}")


def _evaluate(args):
    import keras

    from fpn_keras import data as data_lib
    from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model, format_metrics

    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no model file {args.model!r}")
    model = keras.saving.load_model(args.model)
    size = _model_image_size(args.model, args.image_size)
    extra = {"image_size": size} if args.data == "synthetic" else {}
    elements, class_names = data_lib.load(args.data, args.split, **extra)
    batches = data_lib.pipeline.prepare(elements, args.batch_size, size, training=False)
    evaluator = CocoEvaluator(class_names=class_names)
    metrics = evaluate_model(model, batches, class_names=class_names, verbose=False, evaluator=evaluator)
    print(format_metrics(metrics, title=f"COCO metrics: {args.model} on {args.data}:{args.split}"))
    out = args.out or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"metrics": metrics}, f, indent=2)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(evaluator.results_json(), f)
    print(f"Wrote {out}/metrics.json and {out}/results.json")


def _add_export(sub):
    p = sub.add_parser("export", help="export a saved model for serving", description=(
        "Export a .keras model. saved_model: TF Serving layout with decoding and NMS inside; "
        "signatures serving_default (uint8 images, any size) and serve_image_bytes."))
    p.add_argument("--model", required=True, help="path to a .keras file written by train")
    p.add_argument("--format", default="saved_model", choices=["saved_model"], help="export format")
    p.add_argument("--out", required=True, help="output folder, e.g. saved_models/NAME/1")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="size the model runs at (default: from recipe.yaml next to the model, else 128 128)")


def _model_image_size(model_path, size):
    import yaml

    recipe_path = os.path.join(os.path.dirname(model_path), "recipe.yaml")
    if size is None and os.path.isfile(recipe_path):
        with open(recipe_path) as f:
            size = (yaml.safe_load(f) or {}).get("data", {}).get("image_size")
    return tuple(size or (128, 128))


def _export(args):
    import keras

    from fpn_keras.export import saved_model

    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no model file {args.model!r}")
    model = keras.saving.load_model(args.model)
    saved_model(model, args.out, image_size=_model_image_size(args.model, args.image_size))
    print(f"Exported {args.model} to {args.out}")


def _recipes(args):
    from fpn_keras.config import recipes_dir

    folder = recipes_dir()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".yaml"):
            with open(os.path.join(folder, name)) as f:
                first = f.readline().lstrip("# ").strip()
            print(f"{name[:-5]:<40} {first}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fpn-keras", description="FPN object detectors for Keras 3.")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    sub.add_parser("recipes", help="list the recipes", description="List the recipes with one line each.")
    args = parser.parse_args(argv)
    from fpn_keras.config import RecipeError

    commands = {"train": _train, "evaluate": _evaluate, "export": _export, "recipes": _recipes}
    try:
        commands[args.command](args)
    except (RecipeError, FileNotFoundError) as error:
        if args.verbose:
            traceback.print_exc()
        print(f"fpn-keras {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one clear line, traceback with --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"fpn-keras {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
