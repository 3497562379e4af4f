"""torchvision retinanet_resnet50_fpn -> FPNDetector (convert/torchvision_retinanet.py), without torch.

tests/data/torchvision_retinanet_keys.json: the keys and shapes of torchvision's
retinanet_resnet50_fpn(num_classes=91).state_dict() outside backbone.body. The
numerical check against torchvision is bench/torchvision_retinanet_check.py.
"""

import json
import os

import numpy as np
import pytest

from fpn_keras.convert.resnet_layout import random_resnet_state_dict
from fpn_keras.convert.torchvision_retinanet import (COCO_80_IDS, load_torchvision_retinanet,
                                                     reorder_anchor_outputs)
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.detector import COCO_CLASS_NAMES, FPNDetector
from fpn_keras.models.retinanet import RetinaNet
from fpn_keras.models.torchvision_resnet import torchvision_resnet

KEYS = os.path.join(os.path.dirname(__file__), "data", "torchvision_retinanet_keys.json")


def test_anchor_order_and_class_selection_by_hand():
    # bias[a_t * 2 + k] = 10 * a_t + k for torchvision anchor a_t = ratio * 3 + scale, 2 classes.
    bias = np.array([10 * a + k for a in range(9) for k in range(2)], np.float32)
    ours = reorder_anchor_outputs(bias, 2).reshape(9, 2)
    # our anchor a = scale * 3 + ratio holds torchvision's ratio * 3 + scale:
    assert ours[:, 0].tolist() == [0, 30, 60, 10, 40, 70, 20, 50, 80]
    assert ours[1].tolist() == [30, 31]
    kept = reorder_anchor_outputs(bias, 2, keep=[1]).reshape(9)
    assert kept.tolist() == [1, 31, 61, 11, 41, 71, 21, 51, 81]
    weight = np.arange(9 * 4 * 2, dtype=np.float32).reshape(36, 2, 1, 1)  # [A*4, C, kh, kw]
    assert reorder_anchor_outputs(weight, 4).shape == (36, 2, 1, 1)
    np.testing.assert_array_equal(reorder_anchor_outputs(weight, 4)[4:8], weight[12:16])  # ours 1 <- 3


def test_coco_ids_follow_our_class_names():
    assert len(COCO_80_IDS) == len(COCO_CLASS_NAMES) == 80
    # COCO category ids skip 12: "stop sign" is id 13, our 12th class.
    assert COCO_80_IDS[:12] == tuple(range(1, 12)) + (13,) and COCO_CLASS_NAMES[11] == "stop sign"
    assert COCO_80_IDS[-1] == 90 and COCO_CLASS_NAMES[-1] == "toothbrush"


def _detector(**neck_args):
    neck = FeaturePyramid(3, 7, 256, **{"extra_levels_source": "P5", **neck_args})
    detector = FPNDetector(backbone=torchvision_resnet(50), head=RetinaNet(num_classes=80, name="head"),
                           neck=neck)
    detector(np.zeros((1, 64, 64, 3), np.float32))
    return detector


def test_every_torchvision_key_has_a_place():
    with open(KEYS) as handle:
        shapes = json.load(handle)["shapes"]
    rng = np.random.default_rng(0)
    state = random_resnet_state_dict(50, prefix="backbone.body.")
    state.update({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
    detector = _detector()
    used = load_torchvision_retinanet(detector, state)
    assert len(used) == len([k for k in state if not k.endswith("num_batches_tracked")
                             and not k.startswith("backbone.body.fc.")])
    towers = detector.head.head
    # our anchor 1 (scale 0, ratio 1) takes torchvision's anchor 3; class 0 is COCO id 1 (person)
    bias = state["head.classification_head.cls_logits.bias"].reshape(9, 91)
    np.testing.assert_array_equal(np.asarray(towers.cls_logits.bias).reshape(9, 80)[1], bias[3, list(COCO_80_IDS)])
    kernel = state["backbone.fpn.extra_blocks.p6.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(detector.neck.extra["P6"].kernel), kernel)
    with pytest.raises(ValueError, match=r"P6/P7 source 'C5' \(torchvision: 'P5'\)"):
        load_torchvision_retinanet(_detector(extra_levels_source="C5"), state)
