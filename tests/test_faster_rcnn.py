import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.layers.box_head import BoxHead
from fpn_keras.layers.dense_heads import RPNHead
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.layers.proposals import generate_proposals
from fpn_keras.models.backbones import small_resnet
from fpn_keras.models.detector import FPNDetector
from fpn_keras.models.faster_rcnn import FasterRCNN
from fpn_keras.models.rpn import RPN


def tiny_faster_rcnn(num_classes=3):
    rpn = RPN(anchor_scale=4.0, pre_nms_topk_train=300, post_nms_topk_train=200, pre_nms_topk_test=200,
              post_nms_topk_test=100, batch_size_per_image=64, seed=1, name="rpn")
    head = FasterRCNN(num_classes=num_classes, rpn=rpn, fc_dim=64, batch_size_per_image=64, seed=2,
                      name="head")
    return FPNDetector(backbone=small_resnet((8, 16, 32, 64)), head=head, fpn_channels=16)


def test_parameter_counts_match_detectron2_with_resnet50_channels():
    neck = FeaturePyramid(2, 6, 256, extra_levels_type="max_pool")
    neck.build({f"C{l}": (None, None, None, c) for l, c in zip(range(2, 6), (256, 512, 1024, 2048))})
    rpn_head = RPNHead(num_anchors=3, channels=256)
    rpn_head.build({"P2": (None, None, None, 256)})
    box_head = BoxHead(num_classes=90, fc_dim=1024, num_fc=2)
    box_head.build((None, None, 7, 7, 256))
    fcs = sum(fc.count_params() for fc in box_head.fcs)
    predictor = box_head.cls_score.count_params() + box_head.bbox_pred.count_params()
    assert neck.count_params() == 3_344_384
    assert rpn_head.count_params() == 593_935
    assert fcs == 13_895_680
    assert predictor == 462_275  # 91 logits + 90 x 4 class-specific deltas


def grid_anchors(start, step, side, n):
    centres = [(start + step * i, start + step * j) for j in range(n) for i in range(n)]
    return np.array([[x - side / 2, y - side / 2, x + side / 2, y + side / 2] for x, y in centres], "float32")


def test_proposals_shapes_ordering_and_per_level_nms():
    # Inside a 100x100 image (no clipping): P2 has 16 anchors of 16 px every 4 px, P3 4 anchors of
    # 32 px every 8 px. Horizontal neighbours overlap with IoU 12*16 / (2*256 - 192) = 0.6 < 0.7
    # (and 24*32 / (2*1024 - 768) = 0.6): NMS at 0.7 keeps all of them.
    anchors = {"P2": grid_anchors(20, 4, 16, 4), "P3": grid_anchors(30, 8, 32, 2)}
    rng = np.random.default_rng(0)
    objectness = {"P2": rng.normal(size=(2, 16)).astype("float32"),
                  "P3": rng.normal(size=(2, 4)).astype("float32")}
    deltas = {"P2": np.zeros((2, 16, 4), "float32"), "P3": np.zeros((2, 4, 4), "float32")}
    proposals, logits, valid = generate_proposals(objectness, deltas, anchors, (100, 100), BoxCoder(),
                                                  pre_nms_topk=10, post_nms_topk=12, nms_threshold=0.7)
    proposals, logits, valid = map(ops.convert_to_numpy, (proposals, logits, valid))
    assert proposals.shape == (2, 12, 4) and logits.shape == (2, 12) and valid.shape == (2, 12)
    for b in range(2):
        # Top 10 of P2 + all 4 of P3 = 14 candidates, the best 12 kept, in descending objectness.
        expected = np.sort(np.concatenate([np.sort(objectness["P2"][b])[-10:], objectness["P3"][b]]))[::-1][:12]
        assert valid[b].all()
        np.testing.assert_allclose(logits[b], expected, rtol=1e-6)
    # With NMS at 0.5 the 0.6-overlapping neighbours suppress each other: fewer proposals, padded.
    _, _, valid_05 = generate_proposals(objectness, deltas, anchors, (100, 100), BoxCoder(),
                                        pre_nms_topk=10, post_nms_topk=12, nms_threshold=0.5)
    assert 0 < ops.convert_to_numpy(valid_05).sum(1).max() < 12


def test_faster_rcnn_trains_and_losses_fall():
    keras.utils.set_random_seed(0)
    model = tiny_faster_rcnn()
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[8, 8, 40, 30], [30, 20, 60, 60]]] * 2, "float32"),
         "labels": np.array([[0, 2]] * 2, "int32")}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=3, steps_per_epoch=8,
                        verbose=0).history
    for name in ("rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss"):
        assert all(v > 0 and math.isfinite(v) for v in history[name]), (name, history[name])
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    out = model.predict(x, verbose=0)
    assert out["boxes"].shape == (2, 100, 4) and out["num_detections"].min() > 0


def test_image_without_ground_truth_trains_on_background_only():
    keras.utils.set_random_seed(1)
    model = tiny_faster_rcnn()
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": -np.ones((2, 3, 4), "float32"), "labels": -np.ones((2, 3), "int32")}
    model.compile(optimizer="adam")
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=3,
                        verbose=0).history
    assert math.isfinite(history["loss"][0])
    assert history["cls_loss"][0] > 0 and history["rpn_cls_loss"][0] > 0
    assert history["box_loss"][0] == 0.0 and history["rpn_box_loss"][0] == 0.0


def test_save_load_round_trip_and_config(tmp_path):
    model = tiny_faster_rcnn()
    x = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    before = model.predict(x, verbose=0)
    model.save(str(tmp_path / "frcnn.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "frcnn.keras"))
    after = loaded.predict(x, verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert loaded.head.rpn.post_nms_topk_test == 100 and loaded.head.roi_heads.box_head.fc_dim == 64
    assert loaded.neck.extra_levels_type == "max_pool"


def test_rpn_head_alone_gives_class_agnostic_proposals():
    model = FPNDetector(head="rpn", backbone=small_resnet((8, 16, 32, 64)), fpn_channels=16)
    out = model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)
    assert model.class_names == ["object"]
    assert out["boxes"].shape == (1, 1000, 4)
    assert set(np.unique(out["labels"])) <= {-1, 0}
    assert model.evaluation_settings == {"max_dets": (10, 100, 1000), "class_agnostic": True}


def test_jit_compile_true_trains_and_predicts_with_generic_nms_and_roi_align():
    from test_detector import tiny_detector

    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[8, 8, 40, 30], [30, 20, 60, 60]]] * 2, "float32"),
         "labels": np.array([[0, 2]] * 2, "int32")}
    for model in (tiny_detector(prior_probability=0.3), tiny_faster_rcnn()):
        model.compile(optimizer="adam", jit_compile=True)  # TF kernels for NMS/RoIAlign are not XLA ops
        assert model.head.nms_implementation == "generic"
        history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=2,
                            verbose=0).history
        assert math.isfinite(history["loss"][0])
        out = model.predict(x, verbose=0)
        assert out["num_detections"].min() > 0
    assert model.head.rpn.nms_implementation == "generic" and model.head.roi_align_implementation == "generic"
