"""Fine-tuning on other classes (fpn_keras/finetune.py, FPNDetector.with_classes, recipes'
model.init_from): kept weights are copied exactly, the heads' class-specific layers are new."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data.coco import ClassNames


def _trained_like(detector, seed=3):
    """Built, with every weight set to seeded values unlike any initialiser."""
    detector(np.zeros((1, 64, 64, 3), np.float32))
    rng = np.random.default_rng(seed)
    for variable in detector.weights:
        if variable.dtype in ("float32", "float16", "bfloat16"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    return detector


def _values(layers):
    return [np.asarray(v) for layer in layers for v in layer.weights]


def _check_kept(old, new, kept, replaced):
    """kept(detector) / replaced(detector): lists of its layers, together holding all of its
    weights; the kept layers' weights are equal in old and new -> {name: new value} of the
    replaced layers' weights ("cls_logits/bias")."""
    for detector in (old, new):
        assert sum(len(layer.weights) for layer in kept(detector) + replaced(detector)) == len(detector.weights)
    for before, after in zip(_values(kept(old)), _values(kept(new)), strict=True):
        np.testing.assert_array_equal(after, before)
    return {"/".join(v.path.split("/")[-2:]): np.asarray(v) for layer in replaced(new) for v in layer.weights}


def _retinanet_kept(detector):
    towers = detector.head.head
    return [detector.backbone, detector.neck, *towers.cls_convs, *towers.box_convs, towers.box_deltas]


def _faster_rcnn_kept(detector):
    return [detector.backbone, detector.neck, detector.head.rpn, *detector.head.roi_heads.box_head.fcs]


def test_retinanet_keeps_everything_but_the_class_logits(make_detector):
    old = _trained_like(make_detector(num_classes=3))
    new = old.with_classes(ClassNames(["cat", "dog"], [17, 18]))
    weights = _check_kept(old, new, _retinanet_kept, lambda d: [d.head.head.cls_logits])
    anchors = old.head.head.num_anchors  # 9: 3 scales x 3 ratios
    assert weights["cls_logits/kernel"].shape == (3, 3, 16, anchors * 2)
    # Fresh initialisation: prior pi = 0.01 (RetinaNet) on every logit, N(0, 0.01) kernel.
    np.testing.assert_allclose(weights["cls_logits/bias"], -math.log(99.0), rtol=1e-6)
    assert 0.005 < weights["cls_logits/kernel"].std() < 0.02
    assert new.num_classes == new.head.num_classes == 2 and new.class_names == ["cat", "dog"]
    assert new.category_ids == [17, 18] and new.head.head.num_classes == 2
    assert new.head.anchor_generator.get_config() == old.head.anchor_generator.get_config()


def test_faster_rcnn_replaces_the_predictor_only(make_faster_rcnn):
    old = _trained_like(make_faster_rcnn(num_classes=3))
    new = old.with_classes(["a", "b", "c", "d", "e"], category_ids=[1, 2, 3, 4, 5], image_size=(96, 128))
    box_head = lambda d: d.head.roi_heads.box_head  # noqa: E731
    weights = _check_kept(old, new, _faster_rcnn_kept, lambda d: [box_head(d).cls_score, box_head(d).bbox_pred])
    assert weights["cls_score/kernel"].shape == (64, 6)  # K + 1, background last
    assert weights["bbox_pred/kernel"].shape == (64, 20)  # K * 4
    np.testing.assert_array_equal(weights["cls_score/bias"], 0.0)
    assert 0.0005 < weights["bbox_pred/kernel"].std() < 0.002  # N(0, 0.001)
    assert new.category_ids == [1, 2, 3, 4, 5] and new.image_size == (96, 128)
    assert new.head.rpn.get_config()["pre_nms_topk_train"] == 300  # the RPN's settings kept


def test_same_classes_keep_every_weight_and_rpn_has_none(make_detector):
    old = _trained_like(make_detector(num_classes=3))
    new = old.with_classes(list(old.class_names))
    _check_kept(old, new, lambda d: _retinanet_kept(d) + [d.head.head.cls_logits], lambda d: [])
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.backbones import small_resnet

    rpn = FPNDetector(backbone=small_resnet((8, 16, 32, 64)), head="rpn", fpn_channels=16)
    assert rpn.head.class_specific_layers() == []
    with pytest.raises(ValueError, match="one class, 'object'"):
        rpn.with_classes(["a"])
    with pytest.raises(ValueError, match="built detector"):
        make_detector().with_classes(["a"])


def test_a_fit_step_after_with_classes_trains_the_new_and_the_kept_layers(make_detector, make_batch):
    keras.utils.set_random_seed(0)
    old = make_detector(num_classes=3)
    old(np.zeros((1, 64, 64, 3), np.float32))
    new = old.with_classes(["a", "b"])
    layers = lambda d: {"cls_logits": d.head.head.cls_logits, "box_deltas": d.head.head.box_deltas,  # noqa: E731
                        "lateral_C5": d.neck.lateral["C5"]}
    before = {name: np.asarray(layer.kernel) for name, layer in layers(new).items()}
    images, y = make_batch([[8, 8, 40, 30], [30, 20, 60, 60]], [0, 1])
    new.compile(optimizer=keras.optimizers.SGD(0.01))
    history = new.fit(tf.data.Dataset.from_tensors((images, y)).repeat(), epochs=1, steps_per_epoch=2,
                      verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][0] > 0
    for name, layer in layers(new).items():
        assert not np.array_equal(np.asarray(layer.kernel), before[name]), name


# ---------------------------------------------------------------- recipes: model.init_from

RECIPE = {
    "model": {"num_classes": 4, "backbone": "small_resnet", "head": "retinanet"},
    "data": {"train": "synthetic", "val": "synthetic", "image_size": [64, 64]},
}


def _recipe(**model):
    from fpn_keras.config import recipe_from_dict

    return recipe_from_dict({**RECIPE, "model": {**RECIPE["model"], **model}})


def test_init_from_a_keras_file_is_the_built_model(make_detector, tmp_path):
    from fpn_keras.build import build_model, check_model_args

    old = _trained_like(make_detector(num_classes=3))
    path = str(tmp_path / "converted.keras")
    old.save(path)
    recipe = _recipe(init_from=path, bounding_box_format="yxyx")
    check_model_args(recipe)
    names = ClassNames(["w", "x", "y", "z"], [5, 6, 7, 8])
    model = build_model(recipe, class_names=names)
    _check_kept(old, model, _retinanet_kept, lambda d: [d.head.head.cls_logits])
    assert model.class_names == list(names) and model.category_ids == [5, 6, 7, 8]
    assert model.image_size == (64, 64) and model.bounding_box_format == "yxyx"


@pytest.mark.parametrize("model, expected", [
    ({"init_from": "torchvision/retinanet_resnet50_fpn"},
     "unknown preset 'torchvision/retinanet_resnet50_fpn' (did you mean 'torchvision/retinanet_resnet50_fpn_coco'?)"),
    ({"init_from": "/no/such/model.keras"}, "'/no/such/model.keras' does not exist"),
    ({"init_from": "torchvision/fasterrcnn_resnet50_fpn_coco"}, "has a 'faster_rcnn' head"),
    ({"init_from": "torchvision/retinanet_resnet50_fpn_coco", "head_args": {"channels": 8}},
     "sets the architecture: remove ['model.head_args']"),
    ({"init_from": "torchvision/retinanet_resnet50_fpn_coco", "head": "rpn"}, "no classes to fine-tune"),
])
def test_init_from_errors_are_config_errors(model, expected):
    from fpn_keras.build import check_model_args
    from fpn_keras.config import RecipeError

    with pytest.raises(RecipeError) as error:
        check_model_args(_recipe(**model))
    assert expected in str(error.value)


def test_cli_train_with_an_unknown_preset_exits_2_before_any_data(capsys, tmp_path):
    from fpn_keras import cli

    code = cli.main(["train", "--recipe", "retinanet_synthetic", "--out", str(tmp_path / "run"),
                     "--set", "model.init_from=detectron2/retinanet_R_50_FPN_3x_coco"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fpn-keras train: error: model.init_from: unknown preset"), err
    assert "did you mean 'detectron2/retinanet_R_50_FPN_1x_coco'" in err and not (tmp_path / "run").exists()

