"""Input pipeline throughput (images/s): synthetic and a generated COCO-JSON folder.

    python bench/input_pipeline.py [--images 64] [--size 640] [--batch 4] [--epochs 2]
                                   [--augment flip|full] [--threads 2] [--json out.jsonl]
                                   [--train-step]

Cases:
  synthetic      the built-in shapes dataset (rendered in numpy up front, so
                 this measures prepare(): resize/augment/pad/batch).
  coco-folder    a temporary COCO-JSON folder of --images JPEGs of about
                 --size x 0.75*--size pixels (smooth gradients + noise + boxes,
                 generated once with PIL), read with `fpn_keras.data.load(
                 "coco:...")`: file read + JPEG decode + resize + augment +
                 pad + batch at --size x --size, training mode.
The first epoch (tracing, autotune warm-up, file cache) is not timed.
--train-step also times FPNDetector (ResNet-50 FPN RetinaNet) training steps
at the same size and batch, for the "pipeline >= 5x training" comparison
(slow on CPU).
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from fpn_keras import data as data_lib  # noqa: E402

AUGMENT = {
    "flip": None,
    "full": {"short_sides": (480, 512, 544, 576, 608, 640), "max_size": 640,
             "brightness": 0.1, "contrast": 0.2, "saturation": 0.2},
    "jitter": {"scale_range": (0.5, 1.5), "brightness": 0.1, "contrast": 0.2, "saturation": 0.2},
}


def make_coco_folder(root, num_images, size, seed=0):
    """Writes root/images/*.jpg and root/annotations.json; returns (ann, image_dir)."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    height, width = int(size * 0.75), int(size)
    ys, xs = np.mgrid[:height, :width]
    images, anns = [], []
    for i in range(num_images):
        c0, c1 = rng.uniform(30, 220, (2, 3))
        t = (xs / width * rng.uniform(0.2, 1) + ys / height * rng.uniform(0.2, 1))[..., None] / 2
        pixels = c0 + (c1 - c0) * t + rng.normal(0, 6, (height, width, 3))
        for _ in range(rng.integers(1, 6)):
            w, h = rng.integers(16, width // 3), rng.integers(16, height // 3)
            x, y = rng.integers(0, width - w), rng.integers(0, height - h)
            pixels[y : y + h, x : x + w] = rng.uniform(0, 255, 3)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 4)),
                         "bbox": [int(x), int(y), int(w), int(h)], "area": int(w * h), "iscrowd": 0})
        name = f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(image_dir, name), quality=90)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    ann_path = os.path.join(root, "annotations.json")
    with open(ann_path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return ann_path, image_dir


def images_per_second(make_batches, epochs):
    """Iterates one untimed warm-up epoch, then `epochs` timed ones."""
    for _ in make_batches():
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in make_batches():
            count += int(images.shape[0])
    return count / (time.perf_counter() - start), count


def train_steps_per_second(size, batch, steps=3):
    from fpn_keras import FPNDetector

    model = FPNDetector()
    model.compile(optimizer="sgd")
    images = tf.random.uniform([batch, size, size, 3], 0, 255)
    y = {"boxes": tf.constant([[[10.0, 20.0, 200.0, 220.0]] * 4] * batch),
         "labels": tf.constant([[1, -1, -1, -1]] * batch, tf.int32)}
    ds = tf.data.Dataset.from_tensors((images, y)).repeat()
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)  # trace
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images in the generated COCO folder")
    parser.add_argument("--size", type=int, default=640, help="canvas size (multiple of 128)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs")
    parser.add_argument("--augment", default="flip", choices=sorted(AUGMENT))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--synthetic-images", type=int, default=256)
    parser.add_argument("--train-step", action="store_true", help="also time RetinaNet training steps")
    parser.add_argument("--json", default=None, help="append one JSON line per result here")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    size = (args.size, args.size)
    augment = AUGMENT[args.augment]
    rows = []

    synthetic, _ = data_lib.load("synthetic", "val", num_images=args.synthetic_images)
    synthetic = synthetic.cache()
    rate, n = images_per_second(
        lambda: data_lib.pipeline.prepare(synthetic, args.batch, (128, 128), training=True,
                                          augment=augment if args.augment != "full" else
                                          dict(augment, short_sides=(96, 128), max_size=128),
                                          shuffle_buffer=64),
        args.epochs)
    rows.append({"case": "synthetic 128x128", "images_per_s": rate, "images": n})

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        ann, image_dir = make_coco_folder(root, args.images, args.size)
        generate_s = time.perf_counter() - start
        elements, _ = data_lib.load(f"coco:{ann}:{image_dir}", "train", shuffle=True, seed=0)
        rate, n = images_per_second(
            lambda: data_lib.pipeline.prepare(elements, args.batch, size, training=True,
                                              augment=augment, shuffle_buffer=16),
            args.epochs)
        rows.append({"case": f"coco-folder {args.size}x{int(args.size * 0.75)} JPEG -> {args.size}x{args.size}",
                     "images_per_s": rate, "images": n, "generate_s": generate_s})

    if args.train_step:
        steps = train_steps_per_second(args.size, args.batch)
        rows.append({"case": f"RetinaNet R50-FPN train step {args.size}x{args.size} batch {args.batch}",
                     "steps_per_s": steps, "images_per_s": steps * args.batch})

    print(f"input pipeline, batch {args.batch}, augment={args.augment}, {args.threads} threads, "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs")
    for row in rows:
        extra = f" ({row['images']} images timed)" if "images" in row else ""
        print(f"  {row['case']:<60} {row['images_per_s']:9.1f} images/s{extra}")
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(dict(row, batch=args.batch, augment=args.augment,
                                        threads=args.threads)) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
