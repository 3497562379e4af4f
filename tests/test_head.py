"""fpn_keras.models.head: the protocol every head follows."""

import pytest

from fpn_keras.models.faster_rcnn import FasterRCNN
from fpn_keras.models.head import DetectionHead
from fpn_keras.models.retinanet import RetinaNet
from fpn_keras.models.rpn import RPN


@pytest.mark.parametrize("head", [RetinaNet(num_classes=3), RPN(), FasterRCNN(num_classes=3)])
def test_every_head_declares_the_protocol(head):
    assert isinstance(head, DetectionHead)
    for name in ("num_classes", "min_level", "max_level", "loss_names", "max_detections", "neck_args",
                 "primary_metric", "evaluation_settings"):
        assert hasattr(head, name), name
    for method in ("compute_losses", "detect"):  # implemented, not the base class' NotImplementedError
        assert getattr(type(head), method) is not getattr(DetectionHead, method), method
    assert head.loss_names and all(isinstance(n, str) for n in head.loss_names)


def test_rpn_is_ranked_by_ar1000_and_scored_class_agnostically():
    assert RPN().primary_metric == "AR1000"
    assert RPN().evaluation_settings == {"max_dets": (10, 100, 1000), "class_agnostic": True}
    assert RetinaNet().primary_metric == FasterRCNN().primary_metric == "AP"
    assert FasterRCNN().neck_args == RPN().neck_args == {"extra_levels_type": "max_pool"}


def test_set_implementations_validates_returns_the_previous_and_reaches_the_rpn():
    head = FasterRCNN(num_classes=2)
    assert head.set_implementations(nms="generic", roi_align="generic") == ("auto", "auto")
    assert (head.nms_implementation, head.roi_align_implementation, head.rpn.nms_implementation) == \
        ("generic", "generic", "generic")
    assert head.set_implementations(roi_align="auto") == ("generic", "generic")
    assert head.nms_implementation == "generic" and head.roi_align_implementation == "auto"
    with pytest.raises(ValueError, match="nms implementation must be one of"):
        RetinaNet().set_implementations(nms="fast")
