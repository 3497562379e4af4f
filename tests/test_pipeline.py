import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import pipeline, synthetic


def test_resize_and_pad_hand_computed():
    image = np.full((50, 100, 3), 200, np.uint8)
    boxes = np.array([[10.0, 5.0, 60.0, 45.0], [0.0, 0.0, 100.0, 50.0]], np.float32)
    out, out_boxes, scale = pipeline.resize_and_pad(image, boxes, (128, 128))
    assert out.dtype == tf.float32 and out.shape == (128, 128, 3)
    assert scale.dtype == tf.float32 and scale.shape == ()
    np.testing.assert_allclose(scale.numpy(), 1.28, rtol=1e-6)
    # 128 / 100 = 1.28 (width limits); 50 * 1.28 = 64 rows of content
    np.testing.assert_allclose(
        out_boxes.numpy(),
        [[12.8, 6.4, 76.8, 57.6], [0.0, 0.0, 128.0, 64.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(out.numpy()[:64], 200.0, atol=1e-3)
    np.testing.assert_array_equal(out.numpy()[64:], 0.0)


def test_resize_and_pad_in_graph_mode_and_upscale():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def fn(image):
        return pipeline.resize_and_pad(image, tf.constant([[4.0, 2.0, 8.0, 6.0]]), (256, 128))

    out, out_boxes, scale = fn(tf.fill([32, 64, 3], tf.constant(9, tf.uint8)))
    assert out.shape == (256, 128, 3)
    assert scale.numpy() == 2.0  # min(256 / 32, 128 / 64)
    np.testing.assert_array_equal(out_boxes.numpy(), [[8.0, 4.0, 16.0, 12.0]])
    np.testing.assert_allclose(out.numpy()[:64], 9.0, atol=1e-4)
    np.testing.assert_array_equal(out.numpy()[64:], 0.0)


def test_resize_and_pad_rejects_non_multiple_of_stride():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(100, 128\)"):
        pipeline.resize_and_pad(image, np.zeros((0, 4), np.float32), (100, 128))
    out, _, _ = pipeline.resize_and_pad(image, np.zeros((0, 4), np.float32), (96, 64), stride=32)
    assert out.shape == (96, 64, 3)


def test_clip_and_filter():
    boxes = tf.constant(
        [[10.0, 10.0, 10.0, 20.0], [-5.0, 20.0, 130.0, 140.0], [5.0, 5.0, 15.0, 15.0], [3.0, 4.0, 3.5, 9.0]]
    )
    labels = tf.constant([0, 1, 2, 3], tf.int32)
    out_boxes, out_labels = pipeline.clip_and_filter(boxes, labels, height=100, width=120)
    np.testing.assert_array_equal(out_boxes.numpy(), [[0.0, 20.0, 120.0, 100.0], [5.0, 5.0, 15.0, 15.0]])
    np.testing.assert_array_equal(out_labels.numpy(), [1, 2])
    # a box entirely outside the image clips to zero area and is dropped
    out_boxes, out_labels = pipeline.clip_and_filter(
        tf.constant([[130.0, 10.0, 150.0, 20.0]]), tf.constant([4]), 100, 120
    )
    assert out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def _raw(num_images, **kwargs):
    return synthetic.generate(num_images, seed=1_000_003, max_objects=3, **kwargs)


def test_prepare_eval_spec_padding_and_values():
    ds = pipeline.prepare(synthetic.load("val", num_images=10, max_objects=3), batch_size=4)
    images_spec, targets_spec = ds.element_spec
    assert images_spec.shape.as_list() == [None, 128, 128, 3] and images_spec.dtype == tf.float32
    assert targets_spec["boxes"].shape.as_list() == [None, 100, 4]
    assert targets_spec["boxes"].dtype == tf.float32
    assert targets_spec["labels"].shape.as_list() == [None, 100]
    assert targets_spec["labels"].dtype == tf.int32
    assert targets_spec["image_id"].shape.as_list() == [None]
    assert targets_spec["image_id"].dtype == tf.int64
    assert targets_spec["image_scale"].shape.as_list() == [None]
    assert targets_spec["image_scale"].dtype == tf.float32

    raw = _raw(10)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images = np.concatenate([b[0] for b in batches])
    boxes = np.concatenate([b[1]["boxes"] for b in batches])
    labels = np.concatenate([b[1]["labels"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1]["image_id"] for b in batches]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([b[1]["image_scale"] for b in batches]), 1.0)
    np.testing.assert_allclose(images, raw["images"].astype(np.float32), atol=1e-3)
    np.testing.assert_array_equal(boxes[:, :3], raw["boxes"])
    np.testing.assert_array_equal(labels[:, :3], raw["labels"])
    assert np.all(boxes[:, 3:] == -1.0) and np.all(labels[:, 3:] == -1)


def test_prepare_rescales():
    ds = pipeline.prepare(
        synthetic.load("val", num_images=3, min_objects=3, max_objects=3),
        batch_size=3,
        image_size=(256, 256),
        max_boxes=3,
    )
    images, targets = next(iter(ds))
    raw = _raw(3, min_objects=3)
    assert images.shape == (3, 256, 256, 3)
    np.testing.assert_array_equal(targets["image_scale"].numpy(), [2.0, 2.0, 2.0])
    assert targets["boxes"].shape == (3, 3, 4) and targets["labels"].shape == (3, 3)
    expected = np.where(raw["boxes"] >= 0, raw["boxes"] * 2.0, -1.0)
    np.testing.assert_array_equal(targets["boxes"].numpy(), expected)
    np.testing.assert_array_equal(targets["labels"].numpy(), raw["labels"])


def test_more_boxes_than_max_boxes_is_an_error_naming_the_image():
    raw = _raw(3, min_objects=3)
    assert np.all(raw["labels"] >= 0)  # 3 objects in every image
    ds = pipeline.prepare(synthetic.load("val", num_images=3, min_objects=3, max_objects=3),
                          batch_size=3, max_boxes=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"more ground-truth boxes than max_boxes=2"):
        next(iter(ds))


def test_prepare_training_static_batch_shuffle_and_flip():
    ds = pipeline.prepare(
        synthetic.load("val", num_images=10, max_objects=3), batch_size=4, training=True, seed=1, cache=True
    )
    images_spec, targets_spec = ds.element_spec
    assert images_spec.shape.as_list() == [4, 128, 128, 3]
    assert targets_spec["boxes"].shape.as_list() == [4, 100, 4]
    assert targets_spec["labels"].shape.as_list() == [4, 100]
    raw = _raw(10)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2  # drop_remainder defaults to training
    ids = np.concatenate([b[1]["image_id"] for b in batches])
    assert len(set(ids.tolist())) == 8
    outcomes = []
    for images, targets in batches:
        for j, image_id in enumerate(targets["image_id"]):
            raw_boxes = raw["boxes"][image_id]
            flipped = raw_boxes.copy()
            flipped[:, [0, 2]] = np.where(raw_boxes[:, [0, 2]] >= 0, 128.0 - raw_boxes[:, [2, 0]], -1.0)
            raw_image = raw["images"][image_id].astype(np.float32)
            outcomes.append(not np.allclose(images[j], raw_image, atol=1e-3))
            if not outcomes[-1]:
                np.testing.assert_array_equal(targets["boxes"][j, :3], raw_boxes)
            else:
                np.testing.assert_allclose(images[j], raw_image[:, ::-1], atol=1e-3)
                np.testing.assert_array_equal(targets["boxes"][j, :3], flipped)
            np.testing.assert_array_equal(targets["labels"][j, :3], raw["labels"][image_id])
    assert set(outcomes) == {True, False}  # seeded: both flipped and unflipped images occur
    assert ids.tolist() != list(range(8))  # shuffled


def test_prepare_accepts_arbitrary_image_sizes():
    element = {
        "image": np.full((50, 100, 3), 7, np.uint8),
        "image_id": np.int64(42),
        "boxes": np.array([[10.0, 5.0, 60.0, 45.0]], np.float32),
        "labels": np.array([2], np.int32),
    }
    ds = tf.data.Dataset.from_tensors(element)
    images, targets = next(iter(pipeline.prepare(ds, batch_size=1, max_boxes=3)))
    assert images.shape == (1, 128, 128, 3)
    np.testing.assert_allclose(targets["image_scale"].numpy(), [1.28], rtol=1e-6)
    np.testing.assert_allclose(
        targets["boxes"].numpy()[0], [[12.8, 6.4, 76.8, 57.6], [-1, -1, -1, -1], [-1, -1, -1, -1]], rtol=1e-6
    )
    np.testing.assert_array_equal(targets["labels"].numpy(), [[2, -1, -1]])
    np.testing.assert_array_equal(targets["image_id"].numpy(), [42])
    np.testing.assert_array_equal(images.numpy()[0, 64:], 0.0)


def test_prepare_invalid_arguments():
    ds = synthetic.load("val", num_images=1)
    with pytest.raises(ValueError, match="100"):
        pipeline.prepare(ds, batch_size=1, image_size=(100, 128))
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.prepare(ds, batch_size=0)


def test_prepare_gives_boxes_in_the_model_format_with_padding_kept():
    element = {"image": tf.zeros([64, 64, 3], tf.uint8), "image_id": tf.constant(1, tf.int64),
               "boxes": tf.constant([[8.0, 4.0, 24.0, 36.0]]), "labels": tf.constant([2])}
    dataset = tf.data.Dataset.from_tensors(element)
    for fmt, expected in (("xyxy", [8, 4, 24, 36]), ("yxyx", [4, 8, 36, 24]),
                          ("xywh", [8, 4, 16, 32]), ("center_xywh", [16, 20, 16, 32])):
        _, targets = next(iter(pipeline.prepare(dataset, 1, (64, 64), max_boxes=2, bounding_box_format=fmt)))
        np.testing.assert_allclose(targets["boxes"][0], [expected, [-1, -1, -1, -1]], err_msg=fmt)


def _element(ignore=True):
    e = {
        "image": np.full((50, 100, 3), 7, np.uint8),
        "image_id": np.int64(9),
        "boxes": np.array([[0.0, 0.0, 100.0, 50.0], [10.0, 5.0, 60.0, 45.0]], np.float32),
        "labels": np.array([3, 2], np.int32),
    }
    if ignore:
        e["ignore"] = np.array([True, False])
    return tf.data.Dataset.from_tensors(e)


def test_prepare_ignore_boxes_train_vs_eval():
    _, targets = next(iter(pipeline.prepare(_element(), 1, max_boxes=3)))
    # ignore boxes sorted last; evaluation keeps their label
    np.testing.assert_allclose(targets["boxes"].numpy()[0, :2], [[12.8, 6.4, 76.8, 57.6], [0, 0, 128, 64]], rtol=1e-6)
    np.testing.assert_array_equal(targets["labels"].numpy(), [[2, 3, -1]])
    np.testing.assert_array_equal(targets["ignore"].numpy(), [[False, True, False]])
    _, targets = next(iter(pipeline.prepare(_element(), 1, max_boxes=3, training=True,
                                            augment=False, seed=0)))
    np.testing.assert_array_equal(targets["labels"].numpy(), [[2, -1, -1]])  # never a positive
    np.testing.assert_array_equal(targets["ignore"].numpy(), [[False, True, False]])
    # elements without "ignore" get all-False
    _, targets = next(iter(pipeline.prepare(_element(ignore=False), 1, max_boxes=3)))
    np.testing.assert_array_equal(targets["ignore"].numpy(), [[False, False, False]])


def test_prepare_resize_and_multiscale():
    _, t = next(iter(pipeline.prepare(_element(), 1, resize=(64, 100))))
    assert float(t["image_scale"][0]) == pytest.approx(1.0)  # 64 / 50 capped by 100 / 100
    images, t = next(iter(pipeline.prepare(_element(), 1, training=True, seed=0,
                                           augment={"flip": False, "short_sides": [32]})))
    assert float(t["image_scale"][0]) == pytest.approx(0.64)
    np.testing.assert_allclose(t["boxes"].numpy()[0, :2], [[6.4, 3.2, 38.4, 28.8], [0, 0, 64, 32]], rtol=1e-5)
    assert images.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(images.numpy()[0, 32:], 0.0)
    np.testing.assert_array_equal(images.numpy()[0, :, 64:], 0.0)


def test_prepare_full_augment_deterministic_with_seed():
    from fpn_keras.data import synthetic

    aug = {"short_sides": (96, 128), "max_size": 128, "scale_range": (0.5, 1.5), "brightness": 0.1,
           "contrast": 0.2, "saturation": 0.2}

    def run(seed):
        ds = pipeline.prepare(synthetic.load("val", num_images=6, max_objects=3), 2, training=True,
                              seed=seed, augment=aug, shuffle_buffer=6)
        return [(i.numpy(), t["boxes"].numpy()) for i, t in ds]

    a, b, c = run(5), run(5), run(6)
    assert len(a) == 3 and a[0][0].shape == (2, 128, 128, 3)
    for (ia, ba), (ib, bb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    for _, boxes in a:
        valid = boxes[..., 0] >= 0
        assert np.all(boxes[valid] <= 128.0)


# ---------------------------------------------- epochs as a function of (seed, epoch)
def _sources(tmp_path):
    """name -> (elements, whether the epochs are looked up by index)."""
    import shapes_folder
    from fpn_keras.data import coco

    spec = shapes_folder.write_coco(str(tmp_path), num_images=9, size=(60, 90), seed=3, max_objects=3,
                                    min_side=8, max_side=30)
    _, annotations, image_dir = spec.split(":")
    records, _, _ = coco.read_annotations(annotations, image_dir)
    synthetic_elements = synthetic.load("val", num_images=9, max_objects=3)
    no_random_access = synthetic_elements.filter(lambda e: True).apply(tf.data.experimental.assert_cardinality(9))
    return {"synthetic": (synthetic_elements, True), "coco": (coco.records_to_dataset(records, seed=0), True),
            "no random access": (no_random_access, False)}


@pytest.mark.parametrize("cache", [False, True])
def test_a_pipeline_started_at_epoch_e_batch_k_gives_batches_k_on_of_epoch_e(tmp_path, cache):
    """9 images in batches of 2 -> 4 batches per epoch (one image left out each epoch). A
    pipeline started at (epoch 1, batch 3) gives, pixel for pixel and box for box, batches
    7.. of the one run from the start, with scale jitter, flips and colour jitter on."""
    from fpn_keras.data import epochs

    tf.random.set_seed(0)  # as train() does with train.seed 0 (the shuffle path's seed logic)
    aug = {"scale_range": (0.5, 1.5), "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}
    for name, (elements, random_access) in _sources(tmp_path).items():
        view = epochs.random_access_view(elements)
        assert (view is not None) == random_access, name  # COCO: looked up before decoding
        make = pipeline.prepare(elements, 2, (96, 96), training=True, max_boxes=3, seed=7, augment=aug,
                                cache=cache, factory=True)
        full = [(i.numpy(), t["boxes"].numpy(), t["image_id"].numpy()) for i, t in make(num_epochs=3)]
        resumed = [(i.numpy(), t["boxes"].numpy(), t["image_id"].numpy())
                   for i, t in make(start_epoch=1, start_batch=3, num_epochs=2)]
        assert len(full) == 12 and len(resumed) == 5, name
        for step, (a, b) in enumerate(zip(full[7:], resumed), start=7):
            assert a[0].tobytes() == b[0].tobytes(), (name, step)
            np.testing.assert_array_equal(a[1], b[1], err_msg=f"{name} step {step}")
            np.testing.assert_array_equal(a[2], b[2], err_msg=f"{name} step {step}")
        ids = [np.concatenate([b[2] for b in full[4 * e:4 * e + 4]]) for e in range(3)]
        assert all(len(set(i.tolist())) == 8 for i in ids), name  # each image at most once an epoch
        assert ids[0].tolist() != ids[1].tolist(), name  # a new order every epoch
        # a fresh pipeline with the same seed repeats the run exactly
        again = pipeline.prepare(elements, 2, (96, 96), training=True, max_boxes=3, seed=7, augment=aug,
                                 cache=cache)
        assert [i.numpy().tobytes() for i, _ in again] == [b[0].tobytes() for b in full[:4]], name
