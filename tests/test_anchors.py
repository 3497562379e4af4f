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
