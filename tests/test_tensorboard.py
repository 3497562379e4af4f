"""TensorBoard pictures during training (fpn_keras.evaluation.tensorboard, CocoMetricsCallback)."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fpn_keras.evaluation.tensorboard import NUM_THRESHOLDS, pr_curve_data
from train_helpers import tiny_recipe


def test_pr_curve_data_hand_computed():
    # 3 positives; detections 0.9 TP, 0.5 FP, 0.3 TP
    data = pr_curve_data([True, False, True], [False, True, False], [0.9, 0.5, 0.3], 3, num_thresholds=3)
    # thresholds 0, 0.5, 1: TP 2, 1, 0; FP 1, 1, 0; FN 1, 2, 3
    np.testing.assert_array_equal(data[0], [2, 1, 0])
    np.testing.assert_array_equal(data[1], [1, 1, 0])
    np.testing.assert_array_equal(data[2], [0, 0, 0])
    np.testing.assert_array_equal(data[3], [1, 2, 3])
    np.testing.assert_allclose(data[4], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(data[5], [2 / 3, 1 / 3, 0.0])


def _events(folder):
    """{tag: [(step, value proto), ...]} of every event file under `folder`."""
    tags = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


def _png(value):
    """The PNG of an image summary written by tf.summary.image (tensor: width, height, PNG...)."""
    strings = tf.make_ndarray(value.tensor)
    with Image.open(io.BytesIO(strings[2])) as image:
        return np.asarray(image.convert("RGB")), [bytes(s) for s in strings[2:]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from fpn_keras import training

    out = str(tmp_path_factory.mktemp("tb"))
    training.train(tiny_recipe(eval_every_n_epochs=1), out, verbose=0)
    return out


def test_training_writes_predictions_pr_curves_and_scalars_at_every_evaluation(run_dir):
    tags = _events(os.path.join(run_dir, "logs", "evaluation"))
    # 2 epochs, evaluated after each: steps 0 and 1
    assert [step for step, _ in tags["predictions"]] == [0, 1]
    assert [step for step, _ in tags["pr_curves"]] == [0, 1]
    first, first_pngs = _png(tags["predictions"][0][1])
    assert len(first_pngs) == 2  # the tiny recipe has 2 validation images (num_images=4 at most)
    assert first.shape == (256, 256, 3)  # 128 x 128 images drawn 2x
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 10
    # the same validation images each time (the shapes' pixels are unchanged apart from boxes)
    second, _ = _png(tags["predictions"][1][1])
    assert np.mean(np.all(first == second, axis=-1)) > 0.8
    pr, _ = _png(tags["pr_curves"][0][1])
    assert pr.shape[0] > 100 and pr.shape[1] > 100
    curves = [tag for tag in tags if tag.startswith("pr_curve/")]
    assert curves, sorted(tags)
    data = tf.make_ndarray(tags[curves[0]][0][1].tensor)
    assert data.shape == (6, NUM_THRESHOLDS)
    assert tags[curves[0]][0][1].metadata.plugin_data.plugin_name == "pr_curves"
    # COCO numbers and the learning rate reach Keras' TensorBoard callback through the logs
    val = _events(os.path.join(run_dir, "logs", "validation"))
    train = _events(os.path.join(run_dir, "logs", "train"))
    assert [step for step, _ in val["epoch_AP"]] == [0, 1]
    assert [step for step, _ in train["epoch_learning_rate"]] == [0, 1]
