"""Writes a user-style detection folder of simple shapes, as COCO JSON or Pascal VOC.

Independent of `fpn_keras.data.synthetic` (which draws the demo's data in memory):
these are JPEG files on disk with an annotation file, as a labelling tool would
export them, so that training on them goes through the loaders a user's data goes
through. Used by `bench/user_data.py` and by the tests (tests/conftest.py).

    python bench/shapes_folder.py OUT_DIR [--num-images 400] [--size 256 256] [--format coco|voc]

Each image: a random background (flat colour, gradient or noise), 1..`max_objects`
filled shapes (rectangle, ellipse, triangle by default) of random colours that
contrast with the background, sides from `min_side` to `max_side` pixels, overlap
between shapes limited. Category ids are `category_ids` (non-contiguous by
default: 3, 7, 12), as in a real COCO export.
"""

import argparse
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "triangle")


def _background(rng, height, width):
    kind = rng.integers(3)
    base = rng.integers(0, 256, 3)
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    elif kind == 1:
        other = rng.integers(0, 256, 3)
        t = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = t[None, :, None] if len(t) == width else t[:, None, None]
        image = np.broadcast_to(base * (1 - ramp) + other * ramp, (height, width, 3))
    else:
        image = base + rng.normal(0.0, 25.0, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _contrasting_colour(rng, background_mean):
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background_mean).sum() > 180:
            return colour
    return 255 - background_mean.astype(np.int64)


def _iou(box, others):
    if not others:
        return 0.0
    others = np.asarray(others, np.float32)
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float((inter / (area + areas - inter)).max())


def draw_image(rng, height, width, num_shapes=len(SHAPES), max_objects=6, min_side=10, max_side=120):
    """-> (uint8 [H, W, 3], boxes [n, 4] xyxy pixels, labels [n] in 0..num_shapes-1)."""
    image = _background(rng, height, width)
    mean = image.reshape(-1, 3).mean(0)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    boxes, labels = [], []
    max_side = min(max_side, height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            # log-uniform sizes: as many small objects as large ones
            w = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
            h = float(np.clip(w * np.exp(rng.uniform(-0.4, 0.4)), min_side, max_side))
            x = float(rng.uniform(0, width - w))
            y = float(rng.uniform(0, height - h))
            box = [x, y, x + w, y + h]
            if _iou(box, boxes) < 0.1:
                break
        else:
            continue
        label = int(rng.integers(num_shapes))
        colour = tuple(int(c) for c in _contrasting_colour(rng, mean))
        shape = SHAPES[label % len(SHAPES)]
        if shape == "rectangle":
            draw.rectangle(box, fill=colour)
        elif shape == "ellipse":
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=colour)
        boxes.append(box)
        labels.append(label)
    return np.asarray(canvas), np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _sizes(rng, num_images, size):
    """`size` (H, W) for every image, or a list of sizes to draw from."""
    if isinstance(size[0], (list, tuple)):
        return [tuple(size[i]) for i in rng.integers(len(size), size=num_images)]
    return [tuple(size)] * num_images


def write_coco(folder, num_images=400, size=(256, 256), seed=0, category_ids=(3, 7, 12),
               names=SHAPES, image_dir="images", annotation_file="annotations.json", **draw):
    """Writes `folder/image_dir/*.jpg` and `folder/annotation_file` -> the dataset spec
    "coco:ANNOTATIONS:IMAGE_DIR". `size` is (H, W) or a list of (H, W) to draw from."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, image_dir), exist_ok=True)
    images, annotations = [], []
    for index, (height, width) in enumerate(_sizes(rng, num_images, size)):
        image, boxes, labels = draw_image(rng, height, width, num_shapes=len(category_ids), **draw)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(image).save(os.path.join(folder, image_dir, file_name), quality=92)
        image_id = 1000 + index
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for box, label in zip(boxes, labels):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(category_ids[label]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": int(c), "name": str(names[i % len(names)])} for i, c in enumerate(category_ids)]
    ann_path = os.path.join(folder, annotation_file)
    with open(ann_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return f"coco:{ann_path}:{os.path.join(folder, image_dir)}"


def write_voc(folder, num_images=400, size=(256, 256), seed=0, names=SHAPES, splits=None, **draw):
    """Writes a VOC year folder (JPEGImages/, Annotations/, ImageSets/Main/) -> "voc:FOLDER".
    `splits` maps a split name to a fraction of the images, default {"trainval": 1.0}
    (a user's folder often has no val.txt); VOC boxes are 1-based inclusive."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    stems = []
    for index, (height, width) in enumerate(_sizes(rng, num_images, size)):
        image, boxes, labels = draw_image(rng, height, width, num_shapes=len(names), **draw)
        stem = f"{index:06d}"
        Image.fromarray(image).save(os.path.join(folder, "JPEGImages", stem + ".jpg"), quality=92)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = stem + ".jpg"
        size_node = ET.SubElement(root, "size")
        for tag, value in (("width", width), ("height", height), ("depth", 3)):
            ET.SubElement(size_node, tag).text = str(value)
        for box, label in zip(boxes, labels):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[label]
            ET.SubElement(obj, "difficult").text = "0"
            bndbox = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = box
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bndbox, tag).text = str(int(round(float(value))))
        ET.ElementTree(root).write(os.path.join(folder, "Annotations", stem + ".xml"))
        stems.append(stem)
    start = 0
    for split, fraction in (splits or {"trainval": 1.0}).items():
        count = int(round(fraction * len(stems)))
        with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(stems[start:start + count]) + "\n")
        start = start + count if splits else 0
    return f"voc:{folder}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--format", choices=("coco", "voc"), default="coco")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write = write_coco if args.format == "coco" else write_voc
    print(write(args.out, args.num_images, tuple(args.size), seed=args.seed))


if __name__ == "__main__":
    main()
