import numpy as np
import pytest

from fpn_keras.evaluation import (
    CocoEvaluator,
    CocoMetricsCallback,
    evaluate_model,
)
from fpn_keras.evaluation.coco_eval import METRIC_NAMES

# Two images, three classes, padding rows (-1) in both.
# Areas: 400 (small), 40*50=2000 (medium), 100*120=12000 (large).
GT_BOXES = np.array(
    [
        [[0, 0, 20, 20], [30, 40, 70, 90], [-1, -1, -1, -1]],
        [[10, 10, 110, 130], [50, 60, 70, 80], [-1, -1, -1, -1]],
    ],
    dtype=np.float32,
)
GT_LABELS = np.array([[0, 1, -1], [2, 0, -1]], dtype=np.int32)


def _perfect_dets():
    scores = np.where(GT_LABELS >= 0, 1.0, 0.0).astype(np.float32)
    return GT_BOXES.copy(), scores, GT_LABELS.copy()


def test_perfect_predictions_give_ap_one():
    ev = CocoEvaluator(class_names=["a", "b", "c"])
    boxes, scores, labels = _perfect_dets()
    ev.add(GT_BOXES, GT_LABELS, boxes, scores, labels,
           num_detections=np.array([2, 2]))
    m = ev.evaluate(verbose=False)
    assert set(m) == set(METRIC_NAMES)
    assert all(isinstance(v, float) for v in m.values())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl",
                 "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert m[name] == pytest.approx(1.0), name


def test_shifted_detection_hand_computed_ap():
    # gt [0,0,20,20] (area 400 < 32**2 -> "small");
    # det [0,0,20,32]: intersection 20*20 = 400, union 20*32 = 640,
    # IoU = 400 / 640 = 0.625. It matches at IoU thresholds 0.50, 0.55, 0.60
    # (precision 1 at every recall point) and fails at 0.65..0.95, so
    # AP = (1 + 1 + 1 + 0 * 7) / 10 = 0.3.
    ev = CocoEvaluator()
    ev.add(
        gt_boxes=np.array([[[0, 0, 20, 20]]], np.float32),
        gt_labels=np.array([[0]]),
        det_boxes=np.array([[[0, 0, 20, 32]]], np.float32),
        det_scores=np.array([[0.9]], np.float32),
        det_labels=np.array([[0]]),
    )
    m = ev.evaluate(verbose=False)
    assert m["AP"] == pytest.approx(0.3, abs=1e-6)
    assert m["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert m["AP75"] == pytest.approx(0.0, abs=1e-6)
    assert m["APs"] == pytest.approx(0.3, abs=1e-6)
    assert m["APm"] == -1.0  # no medium ground truth
    assert m["APl"] == -1.0
    assert m["AR100"] == pytest.approx(0.3, abs=1e-6)


def test_wrong_class_detection_gives_ap_zero():
    ev = CocoEvaluator()
    ev.add(
        gt_boxes=np.array([[[0, 0, 20, 20]]], np.float32),
        gt_labels=np.array([[0]]),
        det_boxes=np.array([[[0, 0, 20, 20]]], np.float32),
        det_scores=np.array([[1.0]], np.float32),
        det_labels=np.array([[1]]),
    )
    m = ev.evaluate(verbose=False)
    assert m["AP"] == 0.0
    assert m["AP50"] == 0.0
    assert m["AR100"] == 0.0


def test_no_detections_gives_zeros():
    ev = CocoEvaluator()
    ev.add(GT_BOXES, GT_LABELS, np.zeros((2, 0, 4)), np.zeros((2, 0)),
           np.zeros((2, 0), np.int32))
    m = ev.evaluate(verbose=False)
    # GT covers small, medium and large, so every metric is 0 (not -1).
    for name in METRIC_NAMES:
        assert m[name] == 0.0, name
    assert ev.results_json() == []


def test_padding_only_detections_give_zeros():
    ev = CocoEvaluator()
    ev.add(GT_BOXES, GT_LABELS, -np.ones((2, 3, 4)), np.zeros((2, 3)),
           -np.ones((2, 3), np.int32))
    m = ev.evaluate(verbose=False)
    assert m["AP"] == 0.0
    assert m["AR100"] == 0.0


def test_no_ground_truth_raises():
    ev = CocoEvaluator()
    with pytest.raises(ValueError, match="ground truth"):
        ev.evaluate(verbose=False)
    ev.add(-np.ones((1, 2, 4)), -np.ones((1, 2)), np.zeros((1, 1, 4)),
           np.ones((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="ground truth"):
        ev.evaluate(verbose=False)


def test_shape_mismatch_raises():
    ev = CocoEvaluator()
    boxes, scores, labels = _perfect_dets()
    with pytest.raises(ValueError, match="gt_labels"):
        ev.add(GT_BOXES, GT_LABELS[:, :2], boxes, scores, labels)
    with pytest.raises(ValueError, match="det_scores"):
        ev.add(GT_BOXES, GT_LABELS, boxes, scores[:1], labels)
    with pytest.raises(ValueError, match="gt_boxes"):
        ev.add(GT_BOXES[..., :3], GT_LABELS, boxes, scores, labels)
    with pytest.raises(ValueError, match="gt_ignore"):
        ev.add(GT_BOXES, GT_LABELS, boxes, scores, labels,
               gt_ignore=np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="unique"):
        ev.add(GT_BOXES, GT_LABELS, boxes, scores, labels, image_ids=[7, 7])
    with pytest.raises(ValueError, match="out of range"):
        CocoEvaluator(class_names=["a"]).add(
            GT_BOXES, GT_LABELS, boxes, scores, labels)
    # Nothing was recorded by the failed calls.
    assert ev.results_json() == []


def test_results_json_maps_category_ids_and_xywh():
    ev = CocoEvaluator(category_ids=[1, 18, 44])
    ev.add(
        gt_boxes=np.array([[[0, 0, 10, 10]]], np.float32),
        gt_labels=np.array([[0]]),
        det_boxes=np.array([[[2.5, 4.0, 12.5, 24.0], [1, 2, 3, 4],
                             [0, 0, 5, 5]]], np.float32),
        det_scores=np.array([[0.75, 0.5, 0.25]], np.float32),
        det_labels=np.array([[2, 1, 0]]),
        num_detections=np.array([2]),
        image_ids=np.array([123]),
    )
    assert ev.results_json() == [
        {"image_id": 123, "category_id": 44,
         "bbox": [2.5, 4.0, 10.0, 20.0], "score": 0.75},
        {"image_id": 123, "category_id": 18,
         "bbox": [1.0, 2.0, 2.0, 2.0], "score": 0.5},
    ]
    ev.reset()
    assert ev.results_json() == []


def test_crowd_gt_is_ignored():
    # Second gt is a crowd region: an unmatched crowd box is not a miss, and
    # a detection on it is not a false positive, so AP stays 1.
    ev = CocoEvaluator()
    ev.add(
        gt_boxes=np.array([[[0, 0, 20, 20], [50, 50, 90, 90]]], np.float32),
        gt_labels=np.array([[0, 0]]),
        det_boxes=np.array([[[0, 0, 20, 20], [50, 50, 90, 90]]], np.float32),
        det_scores=np.array([[0.5, 0.9]], np.float32),
        det_labels=np.array([[0, 0]]),
        gt_ignore=np.array([[False, True]]),
    )
    m = ev.evaluate(verbose=False)
    assert m["AP"] == pytest.approx(1.0)


def test_verbose_prints_table(capsys):
    ev = CocoEvaluator()
    boxes, scores, labels = _perfect_dets()
    ev.add(GT_BOXES, GT_LABELS, boxes, scores, labels)
    ev.evaluate(verbose=False)
    assert capsys.readouterr().out == ""
    ev.evaluate(verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out


def _xyxy_to_yxyx(boxes):
    return boxes[..., [1, 0, 3, 2]]


class FakeModel:
    """Predicts the ground truth of the batch, in yxyx."""

    bounding_box_format = "yxyx"

    def __init__(self, batches):
        self._targets = {id(images): t for images, t in batches}

    def predict_on_batch(self, images):
        t = self._targets[id(images)]
        labels = t["labels"]
        return {
            "boxes": t["boxes"],
            "scores": np.where(labels >= 0, 0.9, 0.0).astype(np.float32),
            "labels": labels,
            "num_detections": (labels >= 0).sum(axis=1),
        }


def _yxyx_dataset():
    images = np.zeros((2, 160, 160, 3), np.float32)
    targets = {
        "boxes": np.where(GT_LABELS[..., None] >= 0,
                          _xyxy_to_yxyx(GT_BOXES), -1.0).astype(np.float32),
        "labels": GT_LABELS,
        "image_id": np.array([5, 6]),
    }
    return [(images, targets)]


def test_evaluate_model_converts_yxyx():
    data = _yxyx_dataset()
    m = evaluate_model(FakeModel(data), data, verbose=False)
    assert m["AP"] == pytest.approx(1.0)
    assert m["AP50"] == pytest.approx(1.0)


def test_evaluate_model_passes_xyxy_to_evaluator(monkeypatch):
    # Identical yxyx boxes would also score AP 1 if nobody converted them, so
    # check what actually reaches CocoEvaluator.add.
    seen = {}
    original_add = CocoEvaluator.add

    def spy_add(self, **kwargs):
        seen.update(kwargs)
        return original_add(self, **kwargs)

    monkeypatch.setattr(CocoEvaluator, "add", spy_add)
    data = _yxyx_dataset()
    evaluate_model(FakeModel(data), data, verbose=False)
    np.testing.assert_allclose(seen["gt_boxes"], GT_BOXES)  # padding kept -1
    np.testing.assert_allclose(seen["det_boxes"], GT_BOXES)
    np.testing.assert_array_equal(seen["image_ids"], [5, 6])
    np.testing.assert_array_equal(seen["num_detections"], [2, 2])
    np.testing.assert_array_equal(seen["image_sizes"], [[160, 160]] * 2)


def test_evaluate_model_center_xywh_and_max_batches():
    class CenterModel:
        bounding_box_format = "center_xywh"

        def predict_on_batch(self, images):
            return {
                "boxes": np.array([[[10, 10, 20, 20]]], np.float32),
                "scores": np.array([[0.8]], np.float32),
                "labels": np.array([[0]]),
                "num_detections": np.array([1]),
            }

    # center (10, 10), size 20 -> xyxy [0, 0, 20, 20]; gt given as xyxy
    # [0, 0, 20, 20] in center_xywh is the same box.
    targets = {"boxes": np.array([[[10, 10, 20, 20]]], np.float32),
               "labels": np.array([[0]])}
    images = np.zeros((1, 64, 64, 3), np.float32)
    bad = {"boxes": np.array([[[50, 50, 4, 4]]], np.float32),
           "labels": np.array([[0]])}
    data = [(images, targets), (images, bad)]
    m = evaluate_model(CenterModel(), data, max_batches=1, verbose=False)
    assert m["AP"] == pytest.approx(1.0)
    m = evaluate_model(CenterModel(), data, verbose=False)
    assert m["AP"] < 0.6  # second batch has a missed gt


def test_callback_writes_logs():
    data = _yxyx_dataset()
    cb = CocoMetricsCallback(data, every_n_epochs=5, verbose=0)
    cb.set_model(FakeModel(data))
    cb.params = {"epochs": 3}
    logs = {"loss": 1.0}
    cb.on_epoch_end(0, logs)  # not an evaluation epoch
    assert logs == {"loss": 1.0}
    assert cb.history == []
    cb.on_epoch_end(2, logs)  # last epoch: always evaluated
    assert logs["val_AP"] == pytest.approx(1.0)
    assert logs["val_AP50"] == pytest.approx(1.0)
    assert set(logs) == {"loss"} | {"val_" + k for k in METRIC_NAMES}
    assert len(cb.history) == 1 and cb.history[0][0] == 2


def test_callback_logs_voc_map_when_asked():
    data = _yxyx_dataset()

    class OneMissed(FakeModel):  # drops the last real detection of image 2 (label 0)
        def predict_on_batch(self, images):
            out = super().predict_on_batch(images)
            labels = out["labels"].copy()
            labels[1, 1] = -1
            return dict(out, labels=labels, num_detections=(labels >= 0).sum(axis=1))

    cb = CocoMetricsCallback(data, class_names=["a", "b", "c"], verbose=0, voc_metric=True)
    cb.set_model(OneMissed(data))
    logs = {}
    cb.on_epoch_end(0, logs)
    # class 0 found 1 of 2 (AP 0.5 area, 6/11 11-point); classes 1 and 2 perfect
    assert logs["val_VOC_mAP"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert logs["val_VOC07_mAP"] == pytest.approx((6 / 11 + 1 + 1) / 3)


def test_callback_every_epoch():
    data = _yxyx_dataset()
    cb = CocoMetricsCallback(data, verbose=0)
    cb.set_model(FakeModel(data))
    cb.params = {"epochs": 1}
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs["val_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        CocoMetricsCallback(data, every_n_epochs=0)


def test_results_json_scored_without_the_model_gives_the_same_metrics():
    from fpn_keras.evaluation.coco_eval import add_ground_truth

    data = _yxyx_dataset()
    shifted = [(images, dict(t)) for images, t in data]

    class Shifted(FakeModel):  # detections 4 px to the right: AP < 1
        def predict_on_batch(self, images):
            out = super().predict_on_batch(images)
            return dict(out, boxes=np.where(out["boxes"] >= 0, out["boxes"] + [0, 4, 0, 4], -1.0))

    with_model = CocoEvaluator(class_names=["a", "b", "c"])
    expected = evaluate_model(Shifted(shifted), shifted, verbose=False, evaluator=with_model)
    assert 0 < expected["AP"] < 1
    scored = CocoEvaluator(class_names=["a", "b", "c"])
    add_ground_truth(scored, data, "yxyx").add_results(with_model.results_json())
    assert scored.ground_truth_json() == with_model.ground_truth_json()
    assert scored.evaluate(verbose=False) == expected


def test_add_results_rejects_unknown_images_categories_and_rows():
    from fpn_keras.evaluation.coco_eval import add_ground_truth

    evaluator = add_ground_truth(CocoEvaluator(class_names=["a", "b", "c"]), _yxyx_dataset(), "yxyx")
    row = {"image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}
    with pytest.raises(ValueError, match="image_id 7"):
        evaluator.add_results([dict(row, image_id=7)])
    with pytest.raises(ValueError, match="category_id 9"):
        evaluator.add_results([dict(row, category_id=9)])
    with pytest.raises(ValueError, match="lacks"):
        evaluator.add_results([{"image_id": 5}])
    with pytest.raises(ValueError, match="list"):
        evaluator.add_results({"image_id": 5})
    evaluator.add_results([row])
    assert evaluator.results_json() == [row]
