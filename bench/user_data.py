"""Training on a user's own COCO-JSON folder with default settings, as the README shows it.

Writes a 400-image COCO-JSON set (256x256 JPEGs, 3 classes of simple high-contrast
shapes from 10 to 120 px, category ids 3/7/12; `bench/shapes_folder.py`, not the
synthetic module), then runs exactly

    fpn-keras train --data coco:ANNOTATIONS.json:IMAGE_DIR --out RUN
    fpn-keras evaluate --model RUN/model.keras            # the held-out 10 %, again

and reports AP, AP50, the wall time of the training command and its optimizer steps.
Target (issue 12): AP50 >= 0.80 on the held-out split within 15 minutes on 2 CPU
cores; the exit status is 1 when it is missed (--no-check: always 0).

    python bench/user_data.py [--seed 0] [--num-images 400] [--out /tmp/user_data] [-- EXTRA TRAIN ARGS]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shapes_folder  # noqa: E402

TARGET_AP50 = 0.80
TARGET_SECONDS = 15 * 60


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the image set (default 0)")
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--out", default="/tmp/fpn_keras_user_data", help="folder for the data and the run")
    parser.add_argument("--no-check", action="store_true", help="exit 0 even when the target is missed")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra `fpn-keras train` arguments")
    args = parser.parse_args()

    data_dir = os.path.join(args.out, f"shapes_seed{args.seed}")
    if not os.path.isfile(os.path.join(data_dir, "annotations.json")):
        shapes_folder.write_coco(data_dir, args.num_images, tuple(args.size), seed=args.seed)
    spec = f"coco:{os.path.join(data_dir, 'annotations.json')}:{os.path.join(data_dir, 'images')}"
    run = os.path.join(args.out, f"run_seed{args.seed}")
    cli = [sys.executable, "-m", "fpn_keras"]
    extra = [a for a in args.train_args if a != "--"]
    command = cli + ["train", "--data", spec, "--out", run, "--quiet", *extra]
    print("$", " ".join(command[2:]), flush=True)
    start = time.time()
    subprocess.run(command, check=True)
    seconds = time.time() - start
    with open(os.path.join(run, "metrics.json")) as f:
        record = json.load(f)
    evaluated = subprocess.run(cli + ["evaluate", "--model", os.path.join(run, "model.keras"),
                                      "--out", os.path.join(run, "evaluate")], check=True,
                               capture_output=True, text=True)
    with open(os.path.join(run, "evaluate", "metrics.json")) as f:
        again = json.load(f)
    metrics = record["metrics"]
    summary = {
        "data": f"{args.num_images} images {args.size[0]}x{args.size[1]}, seed {args.seed}",
        "evaluated_on": record["evaluated_on"],
        "AP": round(metrics["AP"], 3), "AP50": round(metrics["AP50"], 3),
        "AP50_fpn_keras_evaluate": round(again["metrics"]["AP50"], 3),
        "train_command_seconds": round(seconds, 1), "train_seconds": record["train_seconds"],
        "optimizer_steps": record["optimizer_steps"], "steps_per_epoch": record["steps_per_epoch"],
        "epochs": record["epochs"], "image_size": record["image_size"],
        "num_train_images": record["num_train_images"], "num_val_images": record["num_val_images"],
    }
    print(evaluated.stdout.strip().splitlines()[0] if evaluated.stdout.strip() else "")
    print(json.dumps(summary, indent=2))
    with open(os.path.join(run, "user_data_bench.json"), "w") as f:
        json.dump(summary, f, indent=2)
    met = summary["AP50"] >= TARGET_AP50 and seconds <= TARGET_SECONDS
    print(f"target AP50 >= {TARGET_AP50} within {TARGET_SECONDS // 60} min: {'met' if met else 'MISSED'} "
          f"(AP50 {summary['AP50']:.3f}, {seconds / 60:.1f} min)")
    return 0 if met or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
