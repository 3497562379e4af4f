"""The FPN paper's Table 1 (RPN) and Table 3 (Faster R-CNN) ablations on synthetic multi-scale data.

    python bench/ablation.py [--head rpn|faster_rcnn] [--quick] [--size 256] [--steps 400]
                             [--variants a,b,c,d,e] [--json out.jsonl] [--markdown table.md] [--plot plot.png]

Same backbone (a small ResNet, random init), same data, same optimizer and the
same number of training steps for every variant; only the neck and the RPN's
levels / anchors differ (Lin et al. 2017, Table 1):

  a) single C4 map: P4 = 3x3(1x1(C4)), no pyramid; RPN on it alone with 5 anchor
     scales (the paper's conv4 baseline)
  b) bottom-up pyramid, no top-down: Pl = 3x3(1x1(Cl)), l = 2..5, P6 pooled
  c) top-down, no lateral connections: Pl = 3x3(up(M(l+1))), M5 = 1x1(C5)
  d) only the finest level P2 of the full FPN, with 5 anchor scales
  e) full FPN: P2..P6 (top-down + laterals), one anchor size per level

--head faster_rcnn (Table 3): the same five feature sets feed both the RPN and
the Fast R-CNN head (RoIAlign from P4 only in (a), P2 only in (d), P2..P5 with
the paper's Eq. 1 level assignment otherwise); 4 classes (the synthetic
shapes), a 2fc-256 box head; COCO AP, AP50, AP_s / AP_m / AP_l.

Anchors cover the same sizes in every variant: 8, 16, 32, 64, 128 px (x 3
aspect ratios) -- one size per level on pyramids, all five on a single map.
Single-map variants keep 5x the per-level pre-NMS top-k, so every variant
sees as many candidates before NMS.

Data: `fpn_keras.data.synthetic` shapes (class-agnostic: every shape is an
"object"), 1..8 per image, longer side log-uniform in 8 .. size/2 px. Metrics:
COCO's class-agnostic AR@100, AR@1000 and AR_s / AR_m / AR_l (at 1000
proposals, as the paper), with COCO's area thresholds (32^2, 96^2 px^2).
`--quick` (CI): 128x128, a few steps, a handful of validation images; its
numbers mean nothing, it checks the script runs.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fpn_keras.data import synthetic  # noqa: E402
from fpn_keras.evaluation import evaluate_model  # noqa: E402
from fpn_keras.layers.fpn import FeaturePyramid  # noqa: E402
from fpn_keras.models.backbones import small_resnet  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.faster_rcnn import FasterRCNN  # noqa: E402
from fpn_keras.models.rpn import RPN  # noqa: E402

VARIANTS = {
    "a": "(a) single C4 map, no pyramid",
    "b": "(b) bottom-up pyramid, no top-down",
    "c": "(c) top-down, no lateral",
    "d": "(d) only finest level P2",
    "e": "(e) full FPN (P2-P6)",
}
FIVE_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)


def build(variant, fpn_channels, rpn_args, seed, head_kind="rpn"):
    """-> FPNDetector(head=RPN or FasterRCNN) for one ablation row; anchors 8..128 px in every row."""
    keras.utils.set_random_seed(seed)  # the same backbone initialisation in every row
    rpn_name = "head" if head_kind == "rpn" else "rpn"
    backbone = small_resnet((32, 64, 128, 256))
    pre = rpn_args["pre_nms_topk_test"]
    single = dict(rpn_args, pre_nms_topk_test=5 * pre, pre_nms_topk_train=5 * rpn_args["pre_nms_topk_train"])
    if variant == "a":  # C4 (stride 16): base 2 * 16 = 32 px; scales 1/4 .. 4 -> 8 .. 128 px
        neck = FeaturePyramid(4, 4, fpn_channels, top_down=False, name="neck")
        rpn = RPN(4, 4, anchor_scale=2.0, anchor_scales=tuple(s / 4 for s in FIVE_SCALES), name=rpn_name, **single)
        roi_levels = (4, 4)
    elif variant == "d":  # P2 (stride 4): base 8 px; scales 1 .. 16 -> 8 .. 128 px
        neck = FeaturePyramid(2, 2, fpn_channels, name="neck")
        rpn = RPN(2, 2, anchor_scale=2.0, anchor_scales=FIVE_SCALES, name=rpn_name, **single)
        roi_levels = (2, 2)
    else:  # P2..P6, anchor_scale 2: 8, 16, 32, 64, 128 px
        neck_args = {"b": {"top_down": False}, "c": {"lateral": False}, "e": {}}[variant]
        neck = FeaturePyramid(2, 6, fpn_channels, extra_levels_type="max_pool", name="neck", **neck_args)
        rpn = RPN(2, 6, anchor_scale=2.0, name=rpn_name, **rpn_args)
        roi_levels = (2, 5)
    if head_kind == "rpn":
        head = rpn
    else:  # Fast R-CNN on the same features as the RPN (the paper's Table 3)
        head = FasterRCNN(num_classes=len(synthetic.CLASS_NAMES), rpn=rpn, roi_min_level=roi_levels[0],
                          roi_max_level=roi_levels[1], fc_dim=256, batch_size_per_image=256,
                          seed=seed + 1, name="head")
    return FPNDetector(backbone=backbone, head=head, neck=neck)


def make_data(num, size, seed, max_objects, split_offset, class_agnostic=True):
    data = synthetic.generate(num, image_size=(size, size), seed=seed + split_offset,
                              min_objects=1, max_objects=max_objects, min_size=8, max_size=size // 2)
    labels = data["labels"].astype("int32")
    if class_agnostic:  # RPN: every shape is an "object"
        labels = np.where(labels >= 0, 0, -1).astype("int32")
    return data["images"].astype("float32"), data["boxes"], labels


METRICS = {"rpn": ("AR10", "AR100", "AR1000", "ARs", "ARm", "ARl"),
           "faster_rcnn": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}


def run_variant(variant, args, train, val):
    rpn_args = dict(batch_size_per_image=256, pre_nms_topk_train=1000, post_nms_topk_train=1000,
                    pre_nms_topk_test=1000, post_nms_topk_test=1000, seed=args.seed)
    model = build(variant, args.fpn_channels, rpn_args, args.seed, args.head)
    warmup = max(1, args.steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr * 0.1, args.steps - warmup, alpha=0.01, warmup_target=args.lr, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=1e-4, clipnorm=10.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    model.compile(optimizer=optimizer)
    images, boxes, labels = train
    dataset = (tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "labels": labels}))
               .shuffle(len(images), seed=args.seed).repeat().batch(args.batch_size, drop_remainder=True))
    start = time.perf_counter()
    history = model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    train_s = time.perf_counter() - start
    v_images, v_boxes, v_labels = val
    val_batches = [(v_images[i:i + args.batch_size],
                    {"boxes": v_boxes[i:i + args.batch_size], "labels": v_labels[i:i + args.batch_size],
                     "image_id": np.arange(i, min(i + args.batch_size, len(v_images)))})
                   for i in range(0, len(v_images), args.batch_size)]
    start = time.perf_counter()
    class_names = ["object"] if args.head == "rpn" else list(synthetic.CLASS_NAMES)
    metrics = evaluate_model(model, val_batches, class_names=class_names, verbose=False)
    eval_s = time.perf_counter() - start
    row = {"head": args.head, "variant": variant, "name": VARIANTS[variant], "steps": args.steps, "batch_size": args.batch_size,
           "size": args.size, "final_loss": float(history.history["loss"][-1]),
           "train_s": train_s, "eval_s": eval_s, "params": model.count_params()}
    for key in METRICS[args.head]:
        row[key] = float(metrics.get(key, float("nan")))
    return row


# (key, column / legend label) per head: the paper's Table 1 (RPN) and Table 3 (Faster R-CNN).
COLUMNS = {"rpn": [("AR100", "AR@100"), ("AR1000", "AR@1k"), ("ARs", "AR_s@1k"), ("ARm", "AR_m@1k"),
                   ("ARl", "AR_l@1k")],
           "faster_rcnn": [("AP", "AP"), ("AP50", "AP50"), ("APs", "AP_s"), ("APm", "AP_m"), ("APl", "AP_l")]}
PLOTTED = {"rpn": ("AR100", "ARs", "ARm", "ARl"), "faster_rcnn": ("AP", "APs", "APm", "APl")}


def markdown_table(rows, head="rpn"):
    columns = COLUMNS[head]
    lines = ["| variant | " + " | ".join(label for _, label in columns) + " | final loss | params | train s |",
             "|---|" + "---|" * (len(columns) + 3)]
    for r in rows:
        values = " | ".join(f"{100 * r[key]:.1f}" for key, _ in columns)
        lines.append(f"| {r['name']} | {values} | {r['final_loss']:.3f} | "
                     f"{r['params'] / 1e6:.2f} M | {r['train_s']:.0f} |")
    return "\n".join(lines)


def bar_plot(rows, path, title, head="rpn"):
    """Grouped bars (AR@100 / AP, then small, medium, large per variant), drawn with PIL."""
    from PIL import Image, ImageDraw

    labels = dict(COLUMNS[head])
    colours = [(70, 110, 180), (220, 120, 50), (90, 160, 90), (170, 80, 160)]
    metrics = [(key, labels[key], colour) for key, colour in zip(PLOTTED[head], colours)]
    width, height, left, bottom, top = 900, 420, 50, 70, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_h = height - bottom - top
    draw.text((left, 15), title, fill="black")
    for tick in range(0, 101, 20):
        y = top + plot_h - plot_h * tick / 100
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((10, y - 6), f"{tick}", fill="black")
    group_w = (width - left - 20) / max(1, len(rows))
    bar_w = group_w * 0.8 / len(metrics)
    for g, row in enumerate(rows):
        x0 = left + g * group_w + group_w * 0.1
        for m, (key, _, colour) in enumerate(metrics):
            value = row[key] if np.isfinite(row[key]) else 0.0
            x = x0 + m * bar_w
            y = top + plot_h - plot_h * min(max(value, 0.0), 1.0)
            draw.rectangle([x, y, x + bar_w - 2, top + plot_h], fill=colour)
            draw.text((x, y - 12), f"{100 * value:.0f}", fill="black")
        draw.text((x0, top + plot_h + 8), row["name"][:4] + " " + row["name"][4:30], fill="black")
        if len(row["name"]) > 30:
            draw.text((x0 + 24, top + plot_h + 22), row["name"][30:], fill="black")
    for m, (_, label, colour) in enumerate(metrics):
        x = left + m * 120
        draw.rectangle([x, height - 22, x + 12, height - 10], fill=colour)
        draw.text((x + 16, height - 22), label, fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", choices=["rpn", "faster_rcnn"], default="rpn",
                        help="rpn: Table 1 (AR); faster_rcnn: Table 3 (AP)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI (numbers mean nothing)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400, help="training steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--val-images", type=int, default=150)
    parser.add_argument("--max-objects", type=int, default=8)
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="a,b,c,d,e")
    parser.add_argument("--json", default=None, help="append one JSON line per variant here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--plot", default=None, help="write the bar plot (PNG) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.batch_size = 128, 3, 2
        args.train_images, args.val_images, args.max_objects = 8, 4, 4
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    agnostic = args.head == "rpn"
    train = make_data(args.train_images, args.size, args.seed, args.max_objects, 0, agnostic)
    val = make_data(args.val_images, args.size, args.seed, args.max_objects, 1_000_003, agnostic)
    sizes = np.sqrt(np.prod(val[1][..., 2:] - val[1][..., :2], axis=-1))[val[2] >= 0]
    print(f"{args.size}x{args.size}, {args.train_images} train / {args.val_images} val images, "
          f"{args.steps} steps x batch {args.batch_size} per variant; val objects: {len(sizes)} "
          f"(small {np.mean(sizes < 32):.0%}, medium {np.mean((sizes >= 32) & (sizes < 96)):.0%}, "
          f"large {np.mean(sizes >= 96):.0%} by sqrt(area))", flush=True)
    rows = []
    for variant in args.variants.split(","):
        row = run_variant(variant, args, train, val)
        rows.append(row)
        values = "  ".join(f"{label} {100 * row[key]:5.1f}" for key, label in COLUMNS[args.head])
        print(f"{row['name']:<40} {values}  loss {row['final_loss']:.3f}  "
              f"({row['train_s']:.0f} s train, {row['eval_s']:.0f} s eval)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"bench": f"ablation_{args.head}", "quick": args.quick, **row}) + "\n")
    table = markdown_table(rows, args.head)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.plot:
        title = {"rpn": "RPN ablation (FPN paper Table 1 structure)",
                 "faster_rcnn": "Faster R-CNN ablation (FPN paper Table 3 structure)"}[args.head]
        bar_plot(rows, args.plot, f"{title}, synthetic {args.size}x{args.size}, "
                                  f"{args.steps} steps x {args.batch_size}", args.head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
