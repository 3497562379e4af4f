"""torchvision's ResNet layout as data, and seeded numpy weights in that layout.

numpy only (no Keras, no torch): the Keras builder
(`fpn_keras.models.torchvision_resnet`), the converter, the tests and
`bench/torchvision_reference.py` (run where only torch is installed, loading
this file by path) all read the same table.

Keys and shapes are torchvision's `resnet{depth}().state_dict()`: convs OIHW
without bias, BatchNorm `weight`, `bias`, `running_mean`, `running_var` [C] and
`num_batches_tracked` (int64 scalar), classifier `fc.weight` [1000, C5], `fc.bias`.
"""

import hashlib

import numpy as np

# depth -> (block kind, blocks per stage layer1..layer4)
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
STEM_CHANNELS = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for images in 0..1 (GeneralizedRCNNTransform)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_layout(depth):
    """(kind, blocks) for a supported depth; a ValueError names the choices otherwise."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth!r}; choose from {sorted(RESNET_LAYOUTS)}")
    return RESNET_LAYOUTS[depth]


def resnet_blocks(depth):
    """Yields (name, in_channels, width, out_channels, stride, downsample) per block,
    name like "layer2.0"; the stride sits on the 3x3 conv (conv2 of a bottleneck,
    conv1 of a basic block), downsample: a 1x1 conv + BN shortcut is needed."""
    kind, blocks = resnet_layout(depth)
    channels = STEM_CHANNELS
    for stage, count in enumerate(blocks, start=1):
        width = STEM_CHANNELS * 2 ** (stage - 1)
        out = width * EXPANSION[kind]
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            yield f"layer{stage}.{index}", channels, width, out, stride, stride != 1 or channels != out
            channels = out


def block_convs(kind, in_channels, width, out_channels, stride, stride_in_1x1=False):
    """[(conv name, in, out, kernel, stride)] of one block, each conv followed by bn<i>.
    stride_in_1x1: a bottleneck's stride on its first 1x1 conv (detectron2's STRIDE_IN_1X1,
    the MSRA weights) instead of the 3x3 (torchvision)."""
    if kind == "basic":
        return [("conv1", in_channels, width, 3, stride), ("conv2", width, out_channels, 3, 1)]
    first, middle = (stride, 1) if stride_in_1x1 else (1, stride)
    return [("conv1", in_channels, width, 1, first), ("conv2", width, width, 3, middle),
            ("conv3", width, out_channels, 1, 1)]


def resnet_state_dict_shapes(depth, include_fc=True):
    """{torchvision key: shape} for resnet{depth} (conv OIHW, BN vectors, fc)."""
    kind, _ = resnet_layout(depth)
    convs = [("conv1", "bn1", 3, STEM_CHANNELS, 7)]
    for name, cin, width, cout, stride, downsample in resnet_blocks(depth):
        for conv, i, o, k, _ in block_convs(kind, cin, width, cout, stride):
            convs.append((f"{name}.{conv}", f"{name}.bn{conv[-1]}", i, o, k))
        if downsample:
            convs.append((f"{name}.downsample.0", f"{name}.downsample.1", cin, cout, 1))
    shapes = {}
    for conv, bn, i, o, k in convs:
        shapes[f"{conv}.weight"] = (o, i, k, k)
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{field}"] = (o,)
        shapes[f"{bn}.num_batches_tracked"] = ()
    if include_fc:
        c5 = STEM_CHANNELS * 8 * EXPANSION[kind]
        shapes["fc.weight"], shapes["fc.bias"] = (1000, c5), (1000,)
    return shapes


def random_resnet_state_dict(depth, seed=0, prefix=""):
    """Deterministic float32 weights {prefix + key: array} in torchvision's layout.

    He-normal convs; BN gamma U(0.5, 1.5) (U(0.1, 0.4) on a block's last BN, so
    the residual sum stays O(1) through 100 layers), beta N(0, 0.1), running mean
    N(0, 0.1), running var U(0.5, 2) > 0; num_batches_tracked int64.
    """
    rng = np.random.default_rng(seed)
    last_bn = {"basic": "bn2", "bottleneck": "bn3"}[resnet_layout(depth)[0]]
    state = {}
    for key, shape in resnet_state_dict_shapes(depth).items():
        if key.endswith("num_batches_tracked"):
            value = np.array(1000, np.int64)
        elif len(shape) == 4:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.startswith("fc."):
            value = rng.standard_normal(shape) * 0.01
        elif key.endswith(".weight"):
            low, high = (0.1, 0.4) if key.endswith(f"{last_bn}.weight") else (0.5, 1.5)
            value = rng.uniform(low, high, shape)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # BN bias, running_mean
            value = rng.standard_normal(shape) * 0.1
        state[prefix + key] = value if value.dtype == np.int64 else value.astype(np.float32)
    return state


def random_images(height, width, seed=0, batch=1):
    """Integer-valued RGB images [batch, height, width, 3] float32 in 0..255."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 3)).astype(np.float32)


def state_dict_sha256(state):
    """SHA-256 over keys, dtypes, shapes and bytes in key order (checks a generator's output)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = np.asarray(state[key])
        digest.update(f"{key}|{value.dtype.str}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def feature_summary(feature):
    """Small fingerprint of a feature map [H, W, C] (one image): channel vectors at
    three pixels (two corners and the centre, where padding differences show),
    the channel sum at every pixel, and mean / std / max |x|."""
    feature = np.asarray(feature, np.float64)
    h, w = feature.shape[:2]
    pixels = np.stack([feature[0, 0], feature[h // 2, w // 2], feature[h - 1, w - 1]])
    return {"pixels": pixels.astype(np.float32), "channel_sum": feature.sum(-1).astype(np.float32),
            "stats": np.array([feature.mean(), feature.std(), np.abs(feature).max()], np.float32)}


def padded_canvas(images, height, width):
    """images [B, h, w, 3] 0..255 on a (height, width) canvas, the rest the ImageNet mean pixel:
    normalised ((x / 255 - mean) / std) it is GeneralizedRCNNTransform's zero padding."""
    canvas = np.empty((images.shape[0], height, width, 3), np.float32)
    canvas[:] = np.float32(255.0) * np.array(IMAGENET_MEAN, np.float32)
    canvas[:, : images.shape[1], : images.shape[2]] = images
    return canvas
