import math

import keras
import numpy as np
import tensorflow as tf

from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.matching import BACKGROUND, IGNORED
from fpn_keras.models.faster_rcnn import FasterRCNN, fast_rcnn_losses
from fpn_keras.models.rpn import RPN


def test_second_stage_losses_by_hand_background_index_and_class_specific_deltas():
    # 2 images x 3 RoIs, K = 2 classes: softmax over 3 logits, background the last.
    cls_targets = np.array([[1, BACKGROUND, IGNORED], [0, 0, BACKGROUND]], "int32")
    cls_logits = np.zeros((2, 3, 3), "float32")
    cls_logits[0, 0] = [0, 2, 0]  # class 1 (its target): -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2)
    cls_logits[0, 2] = [9, 0, 0]  # an unused slot: no loss
    # All other sampled RoIs have zero logits: log 3 each, background (index 2) included.
    rois = np.tile(np.array([0, 0, 10, 10], "float32"), (2, 3, 1))
    matched = rois.copy()
    matched[0, 0] = [1, 0, 11, 10]  # target dx = 10 (weight) x 1 / 10 = 1.0 for class 1
    deltas = np.zeros((2, 3, 2, 4), "float32")
    deltas[0, 0, 0] = [1, 0, 0, 0]  # class 0's deltas would fit: a wrong gather gives loss 0
    deltas[1, 0, 0] = [0, 0, 0.5, 0]  # class 0, exact target 0: L1 0.5
    deltas[1, 1, 1] = 3.0  # the other class's deltas: no loss
    deltas[1, 2] = 7.0  # a background RoI: no box loss
    cls_loss, box_loss = fast_rcnn_losses(cls_logits, deltas, cls_targets, rois, matched,
                                          BoxCoder((10.0, 10.0, 5.0, 5.0)), smooth_l1_beta=0.0)
    sampled = 5
    np.testing.assert_allclose(float(cls_loss), (math.log(1 + 2 * math.exp(-2)) + 4 * math.log(3)) / sampled,
                               rtol=1e-5)
    np.testing.assert_allclose(float(box_loss), (1.0 + 0.5) / sampled, rtol=1e-5)


def test_detect_by_hand_softmax_class_aware_nms_clip_and_invalid_proposals():
    head = FasterRCNN(num_classes=2, rpn=RPN(), score_threshold=0.2, nms_iou_threshold=0.5,
                      max_detections=3)
    log = math.log
    raw = {
        "proposals": np.array([[[0, 0, 10, 10], [20, 20, 40, 40]],
                               [[50, 50, 60, 60], [0, 0, 30, 30]]], "float32"),
        "valid": np.array([[True, True], [True, False]]),
        # softmax -> image 0: p0 (0.6, 0.3 | bg 0.1), p1 (0.1, 0.1 | 0.8): both under 0.2;
        # image 1: p0 (0.1, 0.4 | 0.5); p1 is not a proposal (its 0.99 must not count).
        "cls_logits": np.array([[[log(6), log(3), log(1)], [log(1), log(1), log(8)]],
                                [[log(1), log(4), log(5)], [10, 0, 0]]], "float32"),
        "box_deltas": np.zeros((2, 2, 2, 4), "float32"),
    }
    raw["box_deltas"][0, 0, 0] = [1, 0, 0, 0]  # class 0: dx = 1 / 10 of width 10 -> 1 px right
    raw["box_deltas"][1, 0, 1] = [10, 0, 0, 0]  # class 1: 10 px right, clipped at x = 64
    out = head.detect(raw, (64, 64))
    # Image 0: the class-0 and class-1 boxes overlap (IoU 9/11) but NMS is per class: both stay.
    np.testing.assert_allclose(out["boxes"][0], [[1, 0, 11, 10], [0, 0, 10, 10], [-1, -1, -1, -1]],
                               atol=1e-4)
    np.testing.assert_allclose(out["scores"][0], [0.6, 0.3, 0], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"][0], [0, 1, -1])
    np.testing.assert_allclose(out["boxes"][1, 0], [60, 50, 64, 60], atol=1e-4)
    np.testing.assert_allclose(out["scores"][1], [0.4, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"][1], [1, -1, -1])
    np.testing.assert_array_equal(out["num_detections"], [2, 1])


def test_faster_rcnn_trains_and_losses_fall(make_faster_rcnn):
    keras.utils.set_random_seed(0)
    model = make_faster_rcnn()
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


def test_image_without_ground_truth_trains_on_background_only(make_faster_rcnn):
    keras.utils.set_random_seed(1)
    model = make_faster_rcnn()
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": -np.ones((2, 3, 4), "float32"), "labels": -np.ones((2, 3), "int32")}
    model.compile(optimizer="adam")
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=3,
                        verbose=0).history
    assert math.isfinite(history["loss"][0])
    assert history["cls_loss"][0] > 0 and history["rpn_cls_loss"][0] > 0
    assert history["box_loss"][0] == 0.0 and history["rpn_box_loss"][0] == 0.0


def test_save_load_round_trip_and_config(tmp_path, make_faster_rcnn):
    model = make_faster_rcnn()
    x = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    before = model.predict(x, verbose=0)
    model.save(str(tmp_path / "frcnn.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "frcnn.keras"))
    after = loaded.predict(x, verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert loaded.head.rpn.post_nms_topk_test == 100 and loaded.head.roi_heads.box_head.fc_dim == 64
    assert loaded.neck.extra_levels_type == "max_pool"


def test_jit_compile_true_trains_and_predicts_with_generic_nms_and_roi_align(make_detector, make_faster_rcnn):

    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[8, 8, 40, 30], [30, 20, 60, 60]]] * 2, "float32"),
         "labels": np.array([[0, 2]] * 2, "int32")}
    for model in (make_detector(prior_probability=0.3), make_faster_rcnn()):
        model.compile(optimizer="adam", jit_compile=True)  # TF kernels for NMS/RoIAlign are not XLA ops
        assert model.head.nms_implementation == "generic"
        history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=2,
                            verbose=0).history
        assert math.isfinite(history["loss"][0])
        out = model.predict(x, verbose=0)
        assert out["num_detections"].min() > 0
    assert model.head.rpn.nms_implementation == "generic" and model.head.roi_align_implementation == "generic"


def test_min_box_size_drops_thin_boxes_before_nms():
    # torchvision's postprocess: boxes with a side < 1e-2 px go before the threshold / NMS.
    raw = {"proposals": np.array([[[0, 0, 10, 10], [0, 0, 10, 0.005], [20, 20, 30, 30.01]]], "float32"),
           "valid": np.array([[True, True, True]]),
           "cls_logits": np.array([[[1, 0], [3, 0], [2, 0]]], "float32"),  # p1 the best
           "box_deltas": np.zeros((1, 3, 1, 4), "float32")}
    kept = FasterRCNN(num_classes=1, rpn=RPN(), min_box_size=1e-2).detect(raw, (64, 64))
    np.testing.assert_array_equal(kept["num_detections"], [2])
    np.testing.assert_allclose(kept["boxes"][0, :2], [[20, 20, 30, 30.01], [0, 0, 10, 10]], atol=1e-4)
    default = FasterRCNN(num_classes=1, rpn=RPN()).detect(raw, (64, 64))  # 0: keeps every box
    np.testing.assert_allclose(default["boxes"][0, 0], [0, 0, 10, 0.005], atol=1e-6)
    config = FasterRCNN(num_classes=1, rpn=RPN(), min_box_size=1e-2, roi_aligned=False,
                        roi_level_epsilon=1e-6).get_config()
    head = FasterRCNN.from_config(config)
    assert (head.min_box_size, head.roi_heads.aligned, head.roi_heads.level_epsilon) == (1e-2, False, 1e-6)
    assert (FasterRCNN(rpn=RPN()).roi_heads.aligned, FasterRCNN(rpn=RPN()).roi_heads.level_epsilon) == (True, None)


def test_conv_box_head_options_reach_the_box_head_and_round_trip():
    head = FasterRCNN(num_classes=3, fc_dim=16, num_fc=1, num_conv=2, conv_dim=8, box_head_norm="group",
                      box_head_norm_epsilon=1e-5)
    clone = FasterRCNN.from_config(head.get_config())
    box_head = clone.roi_heads.box_head
    assert (box_head.num_conv, box_head.conv_dim, box_head.norm, box_head.num_fc) == (2, 8, "group", 1)
    assert box_head.norms[1].epsilon == 1e-5 and box_head.convs[1].filters == 8
    assert FasterRCNN(num_classes=3).roi_heads.box_head.convs == []  # the paper's 2fc head by default


def test_max_sampling_ratio_reaches_the_roi_heads_and_round_trips():
    head = FasterRCNN(num_classes=1, rpn=RPN(), sampling_ratio=0, max_sampling_ratio=6)
    assert (head.roi_heads.sampling_ratio, head.roi_heads.max_sampling_ratio) == (0, 6)
    restored = FasterRCNN.from_config(head.get_config())
    assert (restored.roi_heads.sampling_ratio, restored.roi_heads.max_sampling_ratio) == (0, 6)
    assert FasterRCNN(rpn=RPN()).roi_heads.max_sampling_ratio == 4
