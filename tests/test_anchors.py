import math

import numpy as np
import pytest
from keras import ops

from fpn_keras.anchors import AnchorGenerator


def test_counts_per_level_for_a_640_image():
    gen = AnchorGenerator()  # RetinaNet: P3-P7, 9 anchors per location
    shapes = {f"P{l}": (math.ceil(640 / 2**l), math.ceil(640 / 2**l)) for l in range(3, 8)}
    anchors = gen(shapes)
    counts = {name: a.shape[0] for name, a in anchors.items()}
    assert counts == {"P3": 80 * 80 * 9, "P4": 40 * 40 * 9, "P5": 20 * 20 * 9,
                      "P6": 10 * 10 * 9, "P7": 5 * 5 * 9}


def test_centres_sizes_and_order():
    gen = AnchorGenerator(min_level=3, max_level=3)
    anchors = ops.convert_to_numpy(gen({"P3": (2, 3)})["P3"])
    assert anchors.shape == (2 * 3 * 9, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # Location (y=1, x=2) is the last; its centre is ((2 + 0.5) * 8, (1 + 0.5) * 8).
    np.testing.assert_allclose(centres[-9:], [[20.0, 12.0]] * 9, atol=1e-5)
    np.testing.assert_allclose(centres[:9], [[4.0, 4.0]] * 9, atol=1e-5)
    # Anchor 1 of a location: scale 1, ratio 1 -> a 32 x 32 square (anchor_scale 4 x stride 8).
    np.testing.assert_allclose(anchors[1], [-12, -12, 20, 20], atol=1e-5)
    # Anchor 0: ratio 0.5 = h / w at area 32^2 -> w = 32 / sqrt(0.5), h = 32 * sqrt(0.5).
    w, h = anchors[0, 2] - anchors[0, 0], anchors[0, 3] - anchors[0, 1]
    np.testing.assert_allclose([w, h], [32 / math.sqrt(0.5), 32 * math.sqrt(0.5)], rtol=1e-5)
    # Largest scale 2^(2/3) on P3.
    side = anchors[7, 2] - anchors[7, 0]
    np.testing.assert_allclose(side, 32 * 2 ** (2 / 3), rtol=1e-5)


def test_retinanet_sizes_32_to_512():
    gen = AnchorGenerator()
    sides = [gen.cell_anchors(l)[1][2] * 2 for l in range(3, 8)]
    np.testing.assert_allclose(sides, [32, 64, 128, 256, 512])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match=r"min_level \(5\) must be <= max_level \(4\)"):
        AnchorGenerator(5, 4)
    with pytest.raises(ValueError, match="must be > 0"):
        AnchorGenerator(aspect_ratios=(0.0, 1.0))
    with pytest.raises(ValueError, match="no P4"):
        AnchorGenerator(3, 4)({"P3": (2, 2)})


def _centres(anchors):
    anchors = ops.convert_to_numpy(anchors)
    return (anchors[:, :2] + anchors[:, 2:]) / 2


def test_offset_zero_centres_on_the_grid_corners():
    gen = AnchorGenerator(3, 3, offset=0.0)  # torchvision: x * stride
    centres = _centres(gen({"P3": (2, 3)})["P3"])
    np.testing.assert_allclose(centres[:9], [[0.0, 0.0]] * 9, atol=1e-5)
    np.testing.assert_allclose(centres[-9:], [[16.0, 8.0]] * 9, atol=1e-5)  # (x=2, y=1) * 8


def test_explicit_sizes_and_rounded_corners():
    # torchvision's P3: sides 32, 40, 50, corners rounded (its cell_anchors[0]).
    gen = AnchorGenerator(3, 3, sizes=((32, 40, 50),), round_cells=True)
    cells = np.array(gen.cell_anchors(3))
    # scale-major: a = scale * 3 + ratio. Side 32, ratio 0.5: w = 45.25, h = 22.63 -> +-22.63, +-11.31.
    np.testing.assert_array_equal(cells[0], [-23, -11, 23, 11])
    np.testing.assert_array_equal(cells[4], [-20, -20, 20, 20])  # side 40, ratio 1
    np.testing.assert_array_equal(cells[8], [-18, -35, 18, 35])  # side 50, ratio 2: w 35.36, h 70.71
    exact = np.array(AnchorGenerator(3, 3, sizes=((32, 40, 50),)).cell_anchors(3))
    np.testing.assert_allclose(exact[0], [-22.627417, -11.313708, 22.627417, 11.313708], rtol=1e-6)
    anchors = ops.convert_to_numpy(gen({"P3": (2, 3)})["P3"])
    np.testing.assert_array_equal(anchors[9 * 5 + 4], [20 - 20, 12 - 20, 20 + 20, 12 + 20])  # (x=2, y=1), offset 0.5


def test_image_over_grid_strides():
    # torchvision: stride = canvas // grid per axis: 19 // 2 = 9 rows, 31 // 3 = 10 columns.
    gen = AnchorGenerator(3, 3, offset=0.0, strides="image_over_grid")
    centres = _centres(gen({"P3": (2, 3)}, image_shape=(19, 31))["P3"])
    np.testing.assert_allclose(centres[-9:], [[20.0, 9.0]] * 9, atol=1e-5)
    np.testing.assert_allclose(centres[9 * 1], [10.0, 0.0], atol=1e-5)  # (x=1, y=0)
    # the default ignores the canvas: 2**3
    np.testing.assert_allclose(_centres(AnchorGenerator(3, 3)({"P3": (2, 3)}, (19, 31))["P3"])[-1], [20, 12])


def test_new_options_validate_and_round_trip():
    with pytest.raises(ValueError, match="strides must be one of"):
        AnchorGenerator(strides="grid")
    with pytest.raises(ValueError, match="sizes must give 3 sides"):
        AnchorGenerator(3, 4, sizes=((32, 40, 50),))
    with pytest.raises(ValueError, match="needs the image_shape"):
        AnchorGenerator(3, 3, strides="image_over_grid")({"P3": (2, 2)})
    gen = AnchorGenerator(3, 4, offset=0.0, sizes=((32, 40, 50), (64, 80, 101)), round_cells=True,
                          strides="image_over_grid")
    assert AnchorGenerator(**gen.get_config()).get_config() == gen.get_config()
    assert gen.head_config() == {"anchor_offset": 0.0, "anchor_sizes": [[32, 40, 50], [64, 80, 101]],
                                 "round_anchors": True, "anchor_strides": "image_over_grid"}


def test_heads_pass_the_options_through():
    from fpn_keras.models.retinanet import RetinaNet
    from fpn_keras.models.rpn import RPN

    options = {"anchor_offset": 0.0, "anchor_sizes": [[32], [64]], "round_anchors": True,
               "anchor_strides": "image_over_grid"}
    rpn = RPN(min_level=2, max_level=3, **options)
    assert RPN.from_config(rpn.get_config()).anchor_generator.get_config() == rpn.anchor_generator.get_config()
    assert rpn.get_config()["anchor_sizes"] == [[32.0], [64.0]]
    head = RetinaNet(num_classes=2, min_level=3, max_level=3, anchor_sizes=[[32, 40, 50]], anchor_offset=0.0)
    assert head.anchor_generator.cell_anchors(3)[4] == [-20.0, -20.0, 20.0, 20.0]
    assert RetinaNet().get_config()["anchor_strides"] == "level"
