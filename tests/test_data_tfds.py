import sys

import numpy as np
import pytest
import tensorflow as tf

from fpn_keras import data as data_lib
from fpn_keras.data import pipeline, tfds

try:
    import tensorflow_datasets as tfds_lib
except ImportError:  # the tfds extra; `make test` installs it
    tfds_lib = None
needs_tfds = pytest.mark.skipif(tfds_lib is None, reason='needs the tfds extra: pip install "fpn_keras[tfds]"')


def test_missing_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` raises ImportError
    with pytest.raises(ImportError) as raised:
        data_lib.load("tfds:voc/2007", "train")
    assert str(raised.value) == ("the data spec 'tfds:voc/2007' needs TensorFlow Datasets, which is "
                                 'not installed: pip install "fpn_keras[tfds]"')
    # the other specs never touch it
    dataset, names = data_lib.load("synthetic", "train", num_images=1)
    assert int(dataset.cardinality()) == 1 and len(names) == 4


@needs_tfds
@pytest.mark.parametrize("name,flag", [("coco/2017", "is_crowd"), ("voc/2007", "is_difficult")])
def test_tfds_mock_data(name, flag):
    with tfds_lib.testing.mock_data(num_examples=3, policy=tfds_lib.testing.MockPolicy.USE_CODE):
        ds, names = data_lib.load(f"tfds:{name}", "val", seed=0)
        elements = list(ds.as_numpy_iterator())
    assert len(elements) == 3
    if name.startswith("coco"):
        assert len(names) == 80 and names.category_ids == list(tfds.COCO_CATEGORY_IDS)
        assert names.category_ids[:3] == [1, 2, 3] and names.category_ids[-1] == 90
    else:
        assert names[:3] == ["aeroplane", "bicycle", "bird"] and names.category_ids is None
    spec = ds.element_spec
    assert spec["image"].dtype == tf.uint8 and spec["image"].shape.as_list()[-1] == 3
    assert spec["image_id"].dtype == tf.int64 and spec["image_id"].shape.rank == 0
    assert spec["boxes"].dtype == tf.float32 and spec["labels"].dtype == tf.int32
    assert spec["ignore"].dtype == tf.bool
    for e in elements:
        h, w = e["image"].shape[:2]
        n = len(e["labels"])
        assert e["boxes"].shape == (n, 4) and e["ignore"].shape == (n,)
        assert np.all(e["boxes"] >= 0) and np.all(e["boxes"][:, [0, 2]] <= w) and np.all(e["boxes"][:, [1, 3]] <= h)
        assert np.all((e["labels"] >= 0) & (e["labels"] < len(names)))


@needs_tfds
def test_tfds_mock_batches_feed_prepare():
    with tfds_lib.testing.mock_data(num_examples=4, policy=tfds_lib.testing.MockPolicy.USE_CODE):
        ds, _ = data_lib.load("tfds:voc/2007", "train")
        images, targets = next(iter(pipeline.prepare(ds, batch_size=4, training=True, seed=1)))
    assert images.shape == (4, 128, 128, 3)
    assert targets["ignore"].dtype == tf.bool
    # difficult boxes are never positives in training batches
    assert np.all(targets["labels"].numpy()[targets["ignore"].numpy()] == -1)


@needs_tfds
def test_convert_example_hand_computed():
    info = tfds_lib.builder("voc/2007").info  # features come from code: works offline
    example = {
        "image": tf.zeros([20, 40, 3], tf.uint8),
        "image/filename": tf.constant("VOC2007/JPEGImages/000042.jpg"),
        "objects": {
            "bbox": tf.constant([[0.1, 0.25, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]]),  # yxyx normalised
            "label": tf.constant([14, 3], tf.int64),
            "is_difficult": tf.constant([False, True]),
            "is_truncated": tf.constant([False, False]),
            "pose": tf.constant([0, 0], tf.int64),
        },
    }
    e = tfds.convert_example(example, info.features)
    np.testing.assert_allclose(e["boxes"].numpy(), [[10, 2, 40, 10], [0, 0, 20, 20]])
    np.testing.assert_array_equal(e["labels"].numpy(), [14, 3])
    np.testing.assert_array_equal(e["ignore"].numpy(), [False, True])
    assert e["image_id"].numpy() == 42


@needs_tfds
def test_tfds_not_prepared_gives_instructions(tmp_path):
    with pytest.raises(tfds.DatasetNotPreparedError) as info:
        data_lib.load("tfds:voc/2007", "val", data_dir=str(tmp_path))
    message = str(info.value)
    assert "voc/2007" in message and str(tmp_path) in message
    assert f"tfds build voc/2007 --data_dir {tmp_path}" in message
    assert "download=True" in message and "could not find data" in message
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        data_lib.load("tfds:no_such_dataset_xyz", "train", data_dir=str(tmp_path))


@needs_tfds
def test_tfds_split_size_is_known_and_a_holdout_splits_it():
    with tfds_lib.testing.mock_data(num_examples=10, policy=tfds_lib.testing.MockPolicy.USE_CODE):
        _, _, info = data_lib.load("tfds:voc/2007", "train", with_info=True)
        held, _, held_info = data_lib.load("tfds:voc/2007", "train", holdout=0.2, part="held_out",
                                           with_info=True, seed=0)
        rest, _, rest_info = data_lib.load("tfds:voc/2007", "train", holdout=0.2, part="train",
                                           with_info=True, seed=0)
        held_ids = [int(e["image_id"]) for e in held]
        rest_ids = [int(e["image_id"]) for e in rest]
    assert info.num_images == 10  # the steps per epoch of a TFDS split come from its size
    assert (held_info.num_images, rest_info.num_images) == (2, 8) == (len(held_ids), len(rest_ids))
    assert not set(held_ids) & set(rest_ids)
