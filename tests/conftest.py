import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

# bench/shapes_folder.py writes user-style COCO / VOC folders (shared with the benchmark).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


# Tiny models and batches shared by the model tests (fixtures, not cross-file imports).
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fpn_keras.models.backbones import small_resnet  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.faster_rcnn import FasterRCNN  # noqa: E402
from fpn_keras.models.retinanet import RetinaNet  # noqa: E402
from fpn_keras.models.rpn import RPN  # noqa: E402


def tiny_detector(num_classes=3, bounding_box_format="xyxy", **head_args):
    head_args = {"min_level": 3, "max_level": 5, "anchor_scale": 2.0, "channels": 16,
                 "num_convs": 1, **head_args}
    return FPNDetector(
        num_classes=num_classes,
        backbone=small_resnet((8, 16, 32, 64)),
        head=RetinaNet(num_classes=num_classes, name="head", **head_args),
        fpn_channels=16,
        bounding_box_format=bounding_box_format,
    )


def tiny_faster_rcnn(num_classes=3):
    rpn = RPN(anchor_scale=4.0, pre_nms_topk_train=300, post_nms_topk_train=200, pre_nms_topk_test=200,
              post_nms_topk_test=100, batch_size_per_image=64, seed=1, name="rpn")
    head = FasterRCNN(num_classes=num_classes, rpn=rpn, fc_dim=64, batch_size_per_image=64, seed=2,
                      name="head")
    return FPNDetector(backbone=small_resnet((8, 16, 32, 64)), head=head, fpn_channels=16)


def batch(boxes, labels, size=64, n=2, seed=0):
    images = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = {"boxes": np.array([boxes] * n, "float32"), "labels": np.array([labels] * n, "int32")}
    return images, y


@pytest.fixture
def make_detector():
    """A tiny RetinaNet FPNDetector (small ResNet, P3-P5, 16 channels): make_detector(**args)."""
    return tiny_detector


@pytest.fixture
def make_faster_rcnn():
    """A tiny Faster R-CNN FPNDetector: make_faster_rcnn(num_classes=3)."""
    return tiny_faster_rcnn


@pytest.fixture
def make_batch():
    """make_batch(boxes, labels, size=64, n=2, seed=0) -> (images, y): the same boxes in n images."""
    return batch
