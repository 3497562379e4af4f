"""fpn_keras.data.training_data: the datasets a recipe names and the settings the data decides."""

import numpy as np
import pytest

import shapes_folder
from fpn_keras import data as data_lib
from fpn_keras.config import recipe_from_dict
from fpn_keras.data import coco
from fpn_keras.data.training_data import auto_image_size, build_datasets


def test_auto_image_size_is_the_median_long_side_rounded_to_32_and_capped():
    # long sides 640, 256, 500 -> median 500 -> 15.6 x 32 -> 16 x 32 = 512
    assert auto_image_size([[480, 640], [256, 256], [300, 500]], 640)[:2] == (512, 512)
    assert auto_image_size([[1000, 1200]], 640)[:2] == (640, 640)  # capped
    assert auto_image_size([[1000, 1200]], 650)[:2] == (640, 640)  # cap rounded down to 32
    assert auto_image_size([[20, 30]], 640)[:2] == (64, 64)  # at least 64
    assert auto_image_size([[120, 96], [96, 120], [100, 90]], 640)[:2] == (128, 128)  # median 120 -> 3.75 -> 4


def test_holdout_indices_are_seeded_and_sized():
    assert len(coco.holdout_indices(400, 0.1, 0)) == 40
    assert len(coco.holdout_indices(10, 0.04, 0)) == 1  # at least one image held out
    assert len(coco.holdout_indices(3, 0.9, 0)) == 2  # at least one image left for training
    np.testing.assert_array_equal(coco.holdout_indices(50, 0.2, 7), coco.holdout_indices(50, 0.2, 7))
    assert set(coco.holdout_indices(50, 0.2, 7)) != set(coco.holdout_indices(50, 0.2, 8))
    with pytest.raises(ValueError, match="dataset of 1 image"):
        coco.holdout_indices(1, 0.1, 0)
    with pytest.raises(ValueError, match="fraction"):
        coco.holdout_indices(10, 1.0, 0)


def test_split_records_partitions_the_records():
    records = [{"image_id": i} for i in range(20)]
    train = coco.split_records(records, 0.25, 3, "train")
    held = coco.split_records(records, 0.25, 3, "held_out")
    assert len(train) == 15 and len(held) == 5
    assert sorted(r["image_id"] for r in train + held) == list(range(20))


def test_coco_holdout_through_data_load_counts_and_sizes(tmp_path):
    spec = shapes_folder.write_coco(str(tmp_path), num_images=20, size=[(96, 120), (64, 64)], seed=0,
                                    max_objects=3, min_side=8, max_side=40)
    train, names, info = data_lib.load(spec, "train", holdout=0.2, part="train", with_info=True, seed=0)
    val, _, val_info = data_lib.load(spec, "train", holdout=0.2, part="held_out", with_info=True, seed=0)
    assert (info.num_images, val_info.num_images) == (16, 4)
    assert names.category_ids == [3, 7, 12]
    train_ids = [int(e["image_id"]) for e in train]
    val_ids = [int(e["image_id"]) for e in val]
    assert len(train_ids) == 16 and len(val_ids) == 4 and not set(train_ids) & set(val_ids)
    # sizes from the image headers, in record order; most boxes in one image
    shapes = [tuple(e["image"].shape[:2]) for e in train]
    assert [tuple(s) for s in info.image_sizes] == shapes
    assert info.max_boxes == max(len(e["labels"]) for e in train)
    assert "held-out 20%" in val_info.description


def test_synthetic_holdout_is_the_same_split_as_for_records():
    held, _, info = data_lib.load("synthetic", "train", holdout=0.25, part="held_out", with_info=True,
                                  num_images=None, seed=0, image_size=(64, 64), max_objects=2)
    everything = [int(e["image_id"]) for e in data_lib.load("synthetic", "train", seed=0, image_size=(64, 64),
                                                            max_objects=2)[0]]
    expected = [everything[i] for i in coco.holdout_indices(len(everything), 0.25, 0)]
    assert [int(e["image_id"]) for e in held] == expected and info.num_images == len(expected) == 500


def _recipe(spec, **data):
    return recipe_from_dict({
        "model": {"num_classes": 3, "backbone": "small_resnet", "head": "retinanet"},
        "data": {"train": spec, "val": "holdout", "image_size": "auto", "max_boxes": "auto", **data},
        "train": {"batch_size": 4},
    })


def test_build_datasets_resolves_the_auto_settings_from_the_data(tmp_path):
    spec = shapes_folder.write_coco(str(tmp_path), num_images=12, size=(96, 150), seed=1, max_objects=4,
                                    min_side=8, max_side=40)
    built = build_datasets(_recipe(spec))
    assert built.image_size == (160, 160)  # 150 -> 4.69 x 32 -> 160
    assert built.train_info.num_images == 11 and built.val_info.num_images == 1  # round(1.2) = 1 held out
    assert built.max_boxes == built.train_info.max_boxes >= 1
    assert built.settings["cache"][0] == "on"  # 11 x 96 x 150 x 3 bytes
    images, targets = next(iter(built.train))
    assert images.shape == (4, 160, 160, 3) and targets["boxes"].shape == (4, built.max_boxes, 4)
    assert sum(1 for _ in built.train) == 2  # 11 images -> 2 full batches of 4
    capped = build_datasets(_recipe(spec, max_image_size=100, cache=False))
    assert capped.image_size == (96, 96) and capped.settings["cache"] == ("off", "default")


def test_synthetic_limits_apply_to_the_synthetic_data_only(tmp_path):
    spec = shapes_folder.write_coco(str(tmp_path), num_images=10, size=(64, 64), seed=2, max_objects=2,
                                    min_side=8, max_side=30)
    built = build_datasets(_recipe(spec, num_train_images=3, num_val_images=1))
    assert built.train_info.num_images == 9 and built.val_info.num_images == 1
