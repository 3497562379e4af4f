"""torchvision's ResNet C2..C5 on seeded weights and images: the reference that
tests/test_torchvision_resnet.py checks `torchvision_resnet` against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_reference.py [--out tests/data/torchvision_resnet_reference.npz]
                                          [--full features.npz]

For resnet18 and resnet50: weights `resnet_layout.random_resnet_state_dict(depth,
SEED)` go through torch.save -> torch.load into `torchvision.models.resnet{depth}(
norm_layer=FrozenBatchNorm2d)` (strict), whose body (IntermediateLayerGetter,
layer1..layer4 as in detection's BackboneWithFPN) runs on
`random_images(H, W, IMAGE_SEED)` (RGB 0..255, NHWC) after the
GeneralizedRCNNTransform normalisation: x = (image / 255 - mean) / std, NCHW.
No resize and no padding to a multiple of 32 (the model sees exactly H x W).
Writes, per depth / size / level, `resnet_layout.feature_summary` of the NHWC
features, plus the weights' SHA-256 (`state_dict_sha256`) and the versions.
It also writes the reader's tiny test file (`write_views_checkpoint`).
--full also writes the whole feature maps (for a one-off full comparison).
It also checks both checkpoint directions: `read_torch_checkpoint` reads the
torch.save file, and torch.load(weights_only=True) reads `save_torch_checkpoint`'s.
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, IMAGE_SEED = 14, 7
SIZES = ((96, 128), (97, 131))  # an even canvas and an odd one (checks the padding)
DEPTHS = (18, 50)


def load_by_path(name):
    """A numpy-only module of fpn_keras/convert, without importing the (Keras) package
    (its numpy-only siblings import by plain name: the folder goes on sys.path)."""
    folder = os.path.join(ROOT, "fpn_keras", "convert")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_checkpoint_round_trips(torch, state, directory, checkpoint):
    """Our reader on torch's file and torch's reader on our file give the same arrays."""
    path = os.path.join(directory, "torch_saved.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    read = checkpoint.read_torch_checkpoint(path)
    assert read.keys() == state.keys() and all(np.array_equal(read[k], state[k]) for k in state)
    ours = os.path.join(directory, "numpy_saved.pth")
    checkpoint.save_torch_checkpoint(ours, state)
    loaded = torch.load(ours, weights_only=True)
    assert all(np.array_equal(loaded[k].numpy(), state[k]) for k in state)
    return path


def write_views_checkpoint(torch, path):
    """A tiny torch.save file for the reader's tests: views sharing one storage (a
    transpose, an offset slice, a strided slice), float16, bfloat16, int64, a 0-d
    tensor, inside a training-checkpoint dict {"model": state_dict, "epoch": 3}."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"base": base, "transposed": base.t(), "slice": base[1:3, 2:5], "strided": base[:, ::2],
             "half": torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16),
             "bfloat16": torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16),
             "long": torch.tensor([-3, 2**40]), "scalar": torch.tensor(7)}
    torch.save({"model": state, "epoch": 3}, path)


def torchvision_features(depth, checkpoint_path, images_nhwc):
    import torch
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d)
    model.load_state_dict(torch.load(checkpoint_path, weights_only=True), strict=True)
    body = IntermediateLayerGetter(model, {f"layer{i}": f"C{i + 1}" for i in range(1, 5)}).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = (torch.from_numpy(images_nhwc).permute(0, 3, 1, 2) / 255.0 - mean) / std
    with torch.no_grad():
        return {level: f.permute(0, 2, 3, 1).numpy() for level, f in body(x).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_resnet_reference.npz"))
    parser.add_argument("--views", default=os.path.join(ROOT, "tests", "data", "torch_views.pth"),
                        help="where to write the reader's tiny test checkpoint")
    parser.add_argument("--full", help="also write the full feature maps here")
    args = parser.parse_args()
    import torch
    import torchvision

    torch.set_num_threads(1)
    layout, checkpoint = load_by_path("resnet_layout"), load_by_path("torch_checkpoint")
    reference = {"seed": np.array(SEED), "image_seed": np.array(IMAGE_SEED),
                 "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")}
    write_views_checkpoint(torch, args.views)
    full = {}
    with tempfile.TemporaryDirectory() as directory:
        for depth in DEPTHS:
            state = layout.random_resnet_state_dict(depth, SEED)
            reference[f"resnet{depth}/weights_sha256"] = np.array(layout.state_dict_sha256(state))
            path = check_checkpoint_round_trips(torch, state, directory, checkpoint)
            for height, width in SIZES:
                images = layout.random_images(height, width, IMAGE_SEED)
                for level, feature in torchvision_features(depth, path, images).items():
                    name = f"resnet{depth}/{height}x{width}/{level}"
                    full[name] = feature
                    for field, value in layout.feature_summary(feature[0]).items():
                        reference[f"{name}/{field}"] = value
                    print(name, feature.shape, "std %.4f" % feature.std())
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")
    if args.full:
        np.savez(args.full, **full)


if __name__ == "__main__":
    main()
