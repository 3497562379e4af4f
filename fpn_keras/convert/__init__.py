"""Checkpoints from other frameworks: torch.save / safetensors readers (no torch needed)
and converters of torchvision and detectron2 weights into this package's models."""

from fpn_keras.convert.presets import PRESETS, from_preset
from fpn_keras.convert.detectron2 import from_detectron2
from fpn_keras.convert.detectron2_checkpoint import read_detectron2_weights
from fpn_keras.convert.torch_checkpoint import (CheckpointError, load_safetensors,
                                                read_torch_checkpoint, save_torch_checkpoint)
from fpn_keras.convert.torchvision import (ConversionError, load_torchvision_mobilenet_v3, load_torchvision_resnet,
                                          read_weights)
from fpn_keras.convert.torchvision_detection import from_torchvision
from fpn_keras.convert.torchvision_faster_rcnn import load_torchvision_faster_rcnn
from fpn_keras.convert.torchvision_faster_rcnn_mobilenet import load_torchvision_faster_rcnn_mobilenet
from fpn_keras.convert.torchvision_faster_rcnn_v2 import load_torchvision_faster_rcnn_v2
from fpn_keras.convert.torchvision_retinanet import load_torchvision_retinanet
from fpn_keras.convert.torchvision_retinanet_v2 import load_torchvision_retinanet_v2

__all__ = ["CheckpointError", "ConversionError", "PRESETS", "from_detectron2", "from_preset", "from_torchvision",
           "load_safetensors", "load_torchvision_faster_rcnn", "load_torchvision_faster_rcnn_mobilenet",
           "load_torchvision_faster_rcnn_v2", "load_torchvision_mobilenet_v3", "load_torchvision_resnet",
           "load_torchvision_retinanet", "load_torchvision_retinanet_v2", "read_detectron2_weights",
           "read_torch_checkpoint", "read_weights", "save_torch_checkpoint"]
