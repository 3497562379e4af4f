import math

import keras
import numpy as np
import pytest

from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.backbones import small_resnet


def features(height, width):
    backbone = small_resnet((8, 16, 32, 64))
    return backbone(np.zeros((1, height, width, 3), "float32"))


@pytest.mark.parametrize("height,width", [(128, 128), (200, 150), (97, 61)])
def test_retinanet_levels_for_odd_sizes(height, width):
    feats = features(height, width)
    pyramid = FeaturePyramid(3, 7, channels=32)(feats)
    assert sorted(pyramid) == ["P3", "P4", "P5", "P6", "P7"]
    for level in range(3, 8):
        expected_h, expected_w = height, width
        for _ in range(level):  # stride-2 'same' convolutions round up
            expected_h, expected_w = math.ceil(expected_h / 2), math.ceil(expected_w / 2)
        assert tuple(pyramid[f"P{level}"].shape) == (1, expected_h, expected_w, 32)


def test_two_stage_levels_with_max_pool_p6():
    feats = features(96, 160)
    pyramid = FeaturePyramid(2, 6, channels=16, extra_levels_type="max_pool")(feats)
    assert [tuple(pyramid[f"P{l}"].shape[1:3]) for l in range(2, 7)] == [
        (24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]


def test_top_down_adds_upsampled_coarser_level():
    # With identity 1x1 laterals and identity 3x3 outputs, P4 = C4 + up2(C5).
    fpn = FeaturePyramid(4, 5, channels=1)
    c4 = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    c5 = np.array([[1.0, 2.0], [3.0, 4.0]], "float32").reshape(1, 2, 2, 1)
    fpn.build({"C4": c4.shape, "C5": c5.shape})
    for layer in list(fpn.lateral.values()):
        layer.set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
    identity = np.zeros((3, 3, 1, 1), "float32")
    identity[1, 1] = 1.0
    for layer in list(fpn.output_convs.values()):
        layer.set_weights([identity, np.zeros(1, "float32")])
    out = fpn({"C4": c4, "C5": c5})
    expected = c4[0, :, :, 0] + np.kron(c5[0, :, :, 0], np.ones((2, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P4"])[0, :, :, 0], expected)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P5"]), c5)


def test_resnet50_two_stage_neck_has_the_papers_parameter_count():
    shapes = {"C2": (None, None, None, 256), "C3": (None, None, None, 512),
              "C4": (None, None, None, 1024), "C5": (None, None, None, 2048)}
    fpn = FeaturePyramid(2, 6, 256, extra_levels_type="max_pool")
    fpn.build(shapes)
    # 4 laterals (C*256 + 256) + 4 output 3x3 convs (9*256*256 + 256); max-pool P6 has none.
    assert fpn.count_params() == 3_344_384


def test_config_round_trip_reaches_sublayers():
    fpn = FeaturePyramid(2, 6, channels=48, extra_levels_source="P5", separable=True, name="neck")
    clone = FeaturePyramid.from_config(fpn.get_config())
    assert clone.get_config() == fpn.get_config()
    assert clone.output_convs["P3"].filters == 48
    assert isinstance(clone.output_convs["P3"], keras.layers.SeparableConv2D)
    assert clone.extra_levels_source == "P5"
    feats = features(64, 64)
    assert tuple(clone(feats)["P6"].shape) == (1, 1, 1, 48)


def test_bad_arguments_and_missing_levels():
    with pytest.raises(ValueError, match=r"min_level \(5\) must be <= max_level \(3\)"):
        FeaturePyramid(5, 3)
    with pytest.raises(ValueError, match="extra_levels_type"):
        FeaturePyramid(extra_levels_type="avg_pool")
    fpn = FeaturePyramid(3, 5, channels=8)
    feats = features(64, 64)
    with pytest.raises(ValueError, match="missing"):
        fpn({"C4": feats["C4"], "C5": feats["C5"]})


def _identity_weights(fpn):
    """1x1 laterals = identity (x1) and 3x3 outputs = centre tap, on one channel."""
    for layer in fpn.lateral.values():
        layer.set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
    identity = np.zeros((3, 3, 1, 1), "float32")
    identity[1, 1] = 1.0
    for layer in fpn.output_convs.values():
        layer.set_weights([identity, np.zeros(1, "float32")])


def test_without_top_down_each_level_comes_from_its_own_map():
    feats = features(64, 64)
    fpn = FeaturePyramid(3, 5, channels=8, top_down=False)
    out = fpn(feats)
    for level in (3, 4, 5):
        expected = fpn.output_convs[f"P{level}"](fpn.lateral[f"C{level}"](feats[f"C{level}"]))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out[f"P{level}"]),
                                   keras.ops.convert_to_numpy(expected), rtol=1e-6, atol=1e-6)
    # Hand-checkable: with identity convs P4 is C4 itself (nothing from C5 added).
    fpn = FeaturePyramid(4, 5, channels=1, top_down=False)
    c4 = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    c5 = np.array([[1.0, 2.0], [3.0, 4.0]], "float32").reshape(1, 2, 2, 1)
    fpn.build({"C4": c4.shape, "C5": c5.shape})
    _identity_weights(fpn)
    out = fpn({"C4": c4, "C5": c5})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P4"]), c4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P5"]), c5)


def test_without_laterals_levels_are_upsampled_c5():
    fpn = FeaturePyramid(3, 5, channels=1, lateral=False)
    c3 = np.full((1, 8, 8, 1), 100.0, "float32")
    c4 = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    c5 = np.array([[1.0, 2.0], [3.0, 4.0]], "float32").reshape(1, 2, 2, 1)
    fpn.build({"C3": c3.shape, "C4": c4.shape, "C5": c5.shape})
    assert sorted(fpn.lateral) == ["C5"]  # no 1x1 convs below C5
    _identity_weights(fpn)
    out = fpn({"C3": c3, "C4": c4, "C5": c5})
    up4 = np.kron(c5[0, :, :, 0], np.ones((2, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P4"])[0, :, :, 0], up4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["P3"])[0, :, :, 0],
                               np.kron(up4, np.ones((2, 2))))


def test_single_level_necks():
    feats = features(64, 64)
    c5_only = FeaturePyramid(5, 5, channels=8, top_down=False)
    out = c5_only({"C5": feats["C5"]})  # needs nothing but C5
    assert sorted(out) == ["P5"] and sorted(c5_only.lateral) == ["C5"]
    p2_only = FeaturePyramid(2, 2, channels=8)
    out = p2_only(feats)
    assert sorted(out) == ["P2"] and tuple(out["P2"].shape) == (1, 16, 16, 8)
    assert sorted(p2_only.lateral) == ["C2", "C3", "C4", "C5"]  # full top-down into P2
    with pytest.raises(ValueError, match="keep one of them"):
        FeaturePyramid(top_down=False, lateral=False)


def test_ablation_options_round_trip():
    fpn = FeaturePyramid(2, 6, channels=8, top_down=False, extra_levels_type="max_pool")
    config = fpn.get_config()
    assert config["top_down"] is False and config["lateral"] is True
    clone = FeaturePyramid.from_config(config)
    assert clone.get_config() == config
    assert tuple(clone(features(64, 64))["P6"].shape) == (1, 1, 1, 8)
    assert FeaturePyramid.from_config(FeaturePyramid(lateral=False).get_config()).use_lateral is False


def test_rpn_anchor_scales_on_one_level():
    from fpn_keras.models.rpn import RPN

    rpn = RPN(min_level=5, max_level=5, anchor_scale=2.0, anchor_scales=(0.25, 0.5, 1.0, 2.0))
    assert rpn.anchor_generator.num_anchors_per_location == 12
    assert rpn.head.num_anchors == 12
    clone = RPN.from_config(rpn.get_config())
    assert clone.get_config()["anchor_scales"] == [0.25, 0.5, 1.0, 2.0]
    raw = rpn({"P5": np.zeros((1, 2, 2, 8), "float32")})
    anchors = keras.ops.convert_to_numpy(raw["anchors"]["P5"])
    assert anchors.shape == (2 * 2 * 12, 4)
    sides = np.sqrt((anchors[:12, 2] - anchors[:12, 0]) * (anchors[:12, 3] - anchors[:12, 1]))
    np.testing.assert_allclose(sorted(set(np.round(sides, 3))), [16.0, 32.0, 64.0, 128.0])
    assert RPN().get_config()["anchor_scales"] == [1.0]


def test_parameter_count_matches_detectron2_r50_fpn_neck():
    neck = FeaturePyramid(2, 6, 256, extra_levels_type="max_pool")
    neck.build({f"C{l}": (None, None, None, c) for l, c in zip(range(2, 6), (256, 512, 1024, 2048))})
    # Laterals 1x1: (256+512+1024+2048) * 256 + 4 * 256; outputs 3x3: 4 * (9 * 256 * 256 + 256).
    assert neck.count_params() == 3840 * 256 + 1024 + 4 * (9 * 65536 + 256) == 3_344_384


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_p6_padding_same_vs_symmetric(padding):
    # P5 = C5 (identity lateral and output conv); P6 = 3x3 stride-2 conv of P5 with all-ones
    # kernel: a window sum. On a 4 x 4 P5, "symmetric" pads 1 on every side, so P6[0, 0] sums
    # rows / columns -1..1 (zeros, 0, 1); "same" pads bottom / right only: rows 0..2.
    fpn = FeaturePyramid(5, 6, channels=1, extra_levels_source="P5", conv_padding=padding)
    c5 = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    fpn.build({"C5": c5.shape})
    fpn.lateral["C5"].set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
    identity = np.zeros((3, 3, 1, 1), "float32")
    identity[1, 1] = 1.0
    fpn.output_convs["P5"].set_weights([identity, np.zeros(1, "float32")])
    fpn.extra["P6"].set_weights([np.ones((3, 3, 1, 1), "float32"), np.zeros(1, "float32")])
    p6 = keras.ops.convert_to_numpy(fpn({"C5": c5})["P6"])[0, :, :, 0]
    grid = c5[0, :, :, 0]
    assert p6.shape == (2, 2)  # ceil(4 / 2) both ways
    if padding == "symmetric":
        assert p6[0, 0] == grid[:2, :2].sum() == 10  # 0 + 1 + 4 + 5
        assert p6[1, 1] == grid[1:4, 1:4].sum()
    else:
        assert p6[0, 0] == grid[:3, :3].sum() == 45
    # odd sides agree: 5 x 5 -> 3 x 3, both centred
    odd = FeaturePyramid(3, 7, channels=8, extra_levels_source="P5", conv_padding=padding)(features(160, 160))
    assert tuple(odd["P6"].shape[1:3]) == (3, 3) and tuple(odd["P7"].shape[1:3]) == (2, 2)


def test_conv_padding_validates_and_round_trips():
    with pytest.raises(ValueError, match="conv_padding must be one of"):
        FeaturePyramid(conv_padding="valid")
    fpn = FeaturePyramid(3, 7, conv_padding="symmetric")
    assert FeaturePyramid.from_config(fpn.get_config()).conv_padding == "symmetric"
    assert FeaturePyramid().get_config()["conv_padding"] == "same"


def test_top_down_upsampling_1_adds_the_coarser_level_as_it_is():
    # torchvision's MobileNetV3 FPN: C4 and C5 at one resolution, so P4 = C4 + C5 (no upsampling),
    # P6 = P5[::2, ::2] (identity laterals and outputs).
    fpn = FeaturePyramid(4, 6, channels=1, extra_levels_type="max_pool", top_down_upsampling=1)
    c4 = np.arange(6, dtype="float32").reshape(1, 2, 3, 1)
    c5 = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]], "float32").reshape(1, 2, 3, 1)
    fpn.build({"C4": c4.shape, "C5": c5.shape})
    for layer in fpn.lateral.values():
        layer.set_weights([np.ones((1, 1, 1, 1), "float32"), np.zeros(1, "float32")])
    identity = np.zeros((3, 3, 1, 1), "float32")
    identity[1, 1] = 1.0
    for layer in fpn.output_convs.values():
        layer.set_weights([identity, np.zeros(1, "float32")])
    out = {k: keras.ops.convert_to_numpy(v)[0, :, :, 0] for k, v in fpn({"C4": c4, "C5": c5}).items()}
    np.testing.assert_allclose(out["P4"], [[10.0, 21.0, 32.0], [43.0, 54.0, 65.0]])
    np.testing.assert_allclose(out["P5"], c5[0, :, :, 0])
    np.testing.assert_allclose(out["P6"], [[10.0, 30.0]])
    assert FeaturePyramid.from_config(fpn.get_config()).top_down_upsampling == 1
    assert FeaturePyramid().get_config()["top_down_upsampling"] == 2
    with pytest.raises(ValueError, match="top_down_upsampling must be 2 or 1, received 4"):
        FeaturePyramid(top_down_upsampling=4)


def test_norm_after_lateral_and_output_convs_by_hand():
    # One level, 2 channels: identity 1x1 lateral, identity 3x3 output conv (centre tap),
    # each followed by BatchNorm (mean 1, var 4, gamma 2, beta 0.5, eps 0): y = (x - 1) / 2 * 2 + 0.5.
    fpn = FeaturePyramid(5, 5, channels=2, top_down=False, norm="batch", norm_epsilon=0.0)
    fpn.build({"C5": (None, 3, 3, 2)})
    assert not fpn.lateral["C5"].use_bias and not fpn.output_convs["P5"].use_bias
    fpn.lateral["C5"].kernel.assign(np.eye(2, dtype="float32")[None, None])
    output = np.zeros((3, 3, 2, 2), "float32")
    output[1, 1] = np.eye(2)
    fpn.output_convs["P5"].kernel.assign(output)
    for norm in (fpn.lateral_norms["C5"], fpn.output_norms["P5"]):
        norm.set_weights([np.full(2, 2.0), np.full(2, 0.5), np.full(2, 1.0), np.full(2, 4.0)])
    x = np.arange(18, dtype="float32").reshape(1, 3, 3, 2)
    once = (x - 1.0) + 0.5
    np.testing.assert_allclose(np.asarray(fpn({"C5": x})["P5"]), (once - 1.0) + 0.5, rtol=1e-6)
    clone = FeaturePyramid.from_config(fpn.get_config())
    assert clone.norm == "batch" and clone.output_norms["P5"].epsilon == 0.0
    assert FeaturePyramid(3, 7).lateral["C3"].use_bias and not FeaturePyramid(3, 7).lateral_norms
