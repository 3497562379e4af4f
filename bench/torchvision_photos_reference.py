"""torchvision's whole detection models (GeneralizedRCNNTransform included) on real
photographs: the reference that tests/test_torchvision_photos.py checks the converted
FPNDetector's `predict_images` against (without torch).

Run where torch + torchvision + scikit-image are installed (Keras is not needed):

    python bench/torchvision_photos_reference.py [--out tests/data/torchvision_photos_reference.npz]

Photographs: scikit-image's `astronaut` (512x512) and `coffee` (400x600), shrunk with PIL
(bicubic) to 147x131 and 101x152 (sizes that are not multiples of 32) and written as PNG to
tests/data/photos/ (the test reads those files, so both sides see the same pixels).
Models: retinanet_resnet50_fpn and fasterrcnn_resnet50_fpn on the seeded weights of
bench/torchvision_{retinanet,faster_rcnn}_reference.py (the same numpy seeds, 91 classes,
BatchNorm eps 0.0), run as `model([image_1, image_2])` with the transform's min_size 160,
max_size 256 (torchvision's rule at a test-sized scale: resize to short side 160 -> 179x160
and 160x240, a batch padded to 192x256 with zeros after normalising, boxes clipped to each
image, then scaled back to its own pixels). Written: the batch's image_sizes and padded
shape, channels 0..31 of every FPN level of the batch, and each image's detections.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import ROOT, SEED, load_by_path  # noqa: E402
from torchvision_retinanet_reference import seeded_model  # noqa: E402

PHOTOS = (("astronaut", (147, 131)), ("coffee", (101, 152)))  # name, (height, width)
MIN_SIZE, MAX_SIZE = 160, 256
CHANNELS = 32  # of every FPN level, stored


def write_photos(directory):
    """scikit-image's photographs, shrunk to PHOTOS' sizes -> {name: uint8 [h, w, 3]}."""
    import skimage.data
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    photos = {}
    for name, (height, width) in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).resize((width, height), Image.BICUBIC)
        image.save(os.path.join(directory, f"{name}.png"))
        photos[name] = np.asarray(Image.open(os.path.join(directory, f"{name}.png")).convert("RGB"))
    return photos


def run(torch, model, photos):
    """model(photos) in eval mode -> (image_sizes, padded shape, FPN levels, detections)."""
    captured = {}
    model.transform.min_size, model.transform.max_size = (MIN_SIZE,), MAX_SIZE
    hook = model.backbone.register_forward_hook(lambda module, inputs, output: captured.update(
        features=output, shape=tuple(inputs[0].shape)))
    images = [torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255.0 for photo in photos]
    with torch.no_grad():
        detections = model(images)
    hook.remove()
    sizes = [tuple(model.transform(images)[0].image_sizes[i]) for i in range(len(images))]
    return sizes, captured["shape"], captured["features"], detections


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_photos_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    photos = write_photos(os.path.join(ROOT, "tests", "data", "photos"))
    resnet = load_by_path("resnet_layout")
    backbone = resnet.random_resnet_state_dict(50, SEED, prefix="backbone.body.")
    states = {"retinanet_resnet50_fpn": load_by_path("retinanet_layout").random_retinanet_state_dict(backbone, SEED),
              "fasterrcnn_resnet50_fpn": load_by_path("fasterrcnn_layout").random_fasterrcnn_state_dict(backbone,
                                                                                                         SEED)}
    reference = {"photos": np.array([name for name, _ in PHOTOS]), "min_size": np.array(MIN_SIZE),
                 "max_size": np.array(MAX_SIZE)}
    for builder, state in states.items():
        model, header = seeded_model(torch, resnet, state, builder)
        reference.update({f"{builder}/{k}": v for k, v in header.items()})
        sizes, shape, features, detections = run(torch, model, list(photos.values()))
        reference[f"{builder}/image_sizes"] = np.array(sizes, np.int32)
        reference[f"{builder}/batch_shape"] = np.array(shape[2:], np.int32)
        for name, feature in features.items():
            level = {"0": 2, "1": 3, "2": 4, "3": 5, "pool": 6, "p6": 6, "p7": 7}[name] + (
                1 if builder.startswith("retinanet") and name in "0123" else 0)
            reference[f"{builder}/P{level}"] = feature[:, :CHANNELS].permute(0, 2, 3, 1).numpy()
        for i, (photo, result) in enumerate(zip(photos, detections)):
            for key in ("boxes", "scores", "labels"):
                reference[f"{builder}/{photo}/{key}"] = result[key].numpy()
            print(f"{builder} {photo}: resized {sizes[i]}, batch {shape[2:]}, {len(result['scores'])} detections, "
                  f"best score {result['scores'].max().item() if len(result['scores']) else 0:.3f}")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
