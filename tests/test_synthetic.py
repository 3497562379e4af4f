import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import synthetic


@pytest.fixture(scope="module")
def data200():
    return synthetic.generate(200, seed=0)


def test_class_names():
    assert synthetic.CLASS_NAMES == ("rectangle", "ellipse", "triangle", "cross")


def test_shapes_and_dtypes():
    data = synthetic.generate(5, image_size=(96, 128), max_objects=4, max_boxes=7)
    assert set(data) == {"images", "boxes", "labels", "image_ids"}
    assert data["images"].shape == (5, 96, 128, 3)
    assert data["images"].dtype == np.uint8
    assert data["boxes"].shape == (5, 7, 4)
    assert data["boxes"].dtype == np.float32
    assert data["labels"].shape == (5, 7)
    assert data["labels"].dtype == np.int32
    assert data["image_ids"].dtype == np.int64
    np.testing.assert_array_equal(data["image_ids"], np.arange(5))
    # at most max_objects real objects, padding rows are all -1
    valid = data["labels"] >= 0
    assert valid.sum(axis=1).max() <= 4
    assert np.all(data["boxes"][~valid] == -1.0)
    assert np.all(data["labels"][:, 4:] == -1)


def test_default_max_boxes_is_max_objects():
    data = synthetic.generate(2, max_objects=3)
    assert data["boxes"].shape == (2, 3, 4)
    assert data["labels"].shape == (2, 3)


def test_deterministic_and_independent_of_num_images():
    a = synthetic.generate(3, seed=7)
    b = synthetic.generate(3, seed=7)
    c = synthetic.generate(10, seed=7)
    for key in ("images", "boxes", "labels"):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key][:3])
    d = synthetic.generate(3, seed=8)
    assert not np.array_equal(a["images"], d["images"])


def test_boxes_inside_image_with_positive_area_and_valid_labels(data200):
    valid = data200["labels"] >= 0
    assert valid.sum(axis=1).min() >= 1
    boxes = data200["boxes"][valid]
    labels = data200["labels"][valid]
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= 128) and np.all(boxes[:, 3] <= 128)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    np.testing.assert_array_equal(boxes, np.round(boxes))  # integer pixel edges
    assert labels.min() >= 0 and labels.max() < len(synthetic.CLASS_NAMES)
    np.testing.assert_array_equal(np.unique(labels), np.arange(4))  # every class occurs


def test_sizes_span_small_to_large(data200):
    boxes = data200["boxes"][data200["labels"] >= 0]
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert longer.min() < 16
    assert longer.max() >= 40
    assert longer.min() >= 8  # min_size
    assert longer.max() <= 64  # max_size = half of 128


def test_boxes_are_tight_bbox_of_drawn_pixels():
    """Re-render the same image without its object: the changed pixels' bbox is the box."""
    seen = set()
    for seed in range(40):
        if seen == {0, 1, 2, 3}:
            break
        data = synthetic.generate(1, seed=seed, min_objects=1, max_objects=1, clutter=False)
        label = int(data["labels"][0, 0])
        seen.add(label)
        rng = np.random.default_rng([seed, 0])
        rng.integers(1, 2)  # the object count drawn by generate
        empty, boxes, _ = synthetic._render(rng, 128, 128, 0, 8, 64, clutter=False)
        assert boxes.shape == (0, 4)
        changed = np.any(data["images"][0] != empty, axis=-1)
        ys, xs = np.nonzero(changed)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_array_equal(data["boxes"][0, 0], np.array(expected, np.float32))
    assert seen == {0, 1, 2, 3}


def test_clutter_option_changes_only_clutter():
    with_clutter = synthetic.generate(2, seed=3)
    without = synthetic.generate(2, seed=3, clutter=False)
    assert not np.array_equal(with_clutter["images"], without["images"])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="min_objects"):
        synthetic.generate(1, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="max_boxes"):
        synthetic.generate(1, max_objects=4, max_boxes=2)
    with pytest.raises(ValueError, match="max_size"):
        synthetic.generate(1, image_size=(32, 32), max_size=40)


def test_load_elements_unpadded():
    ds = synthetic.load("val", num_images=4, max_objects=3)
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [128, 128, 3]
    assert spec["image"].dtype == tf.uint8
    assert spec["image_id"].shape.as_list() == [] and spec["image_id"].dtype == tf.int64
    assert spec["boxes"].shape.as_list() == [None, 4] and spec["boxes"].dtype == tf.float32
    assert spec["labels"].shape.as_list() == [None] and spec["labels"].dtype == tf.int32
    data = synthetic.generate(4, seed=1_000_003, max_objects=3)
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 4
    for i, element in enumerate(elements):
        n = int((data["labels"][i] >= 0).sum())
        assert element["image_id"] == i
        np.testing.assert_array_equal(element["image"], data["images"][i])
        np.testing.assert_array_equal(element["boxes"], data["boxes"][i, :n])
        np.testing.assert_array_equal(element["labels"], data["labels"][i, :n])
        assert np.all(element["labels"] >= 0)


def test_splits_differ_and_unknown_split():
    train = next(iter(synthetic.load("train", num_images=2)))
    val = next(iter(synthetic.load("val", num_images=2)))
    test = next(iter(synthetic.load("test", num_images=2)))
    assert not np.array_equal(train["image"].numpy(), val["image"].numpy())
    assert not np.array_equal(val["image"].numpy(), test["image"].numpy())
    assert synthetic.load("val").cardinality().numpy() == 200
    with pytest.raises(ValueError, match="'bogus'.*test.*train.*val"):
        synthetic.load("bogus")
