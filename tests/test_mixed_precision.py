"""Mixed precision (issue 5): bfloat16 / float16 compute, float32 variables, and
float32 head outputs, losses, decoding and NMS."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fpn_keras import training
from fpn_keras.build import build_optimizer
from train_helpers import tiny_recipe


def fit(model, images, y, epochs, steps, optimizer):
    model.compile(optimizer=optimizer)
    ds = tf.data.Dataset.from_tensors((images, y)).repeat()
    return model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0).history


def test_mixed_bfloat16_trains_with_finite_falling_loss_and_float32_outputs(make_detector, make_batch):
    before = keras.config.dtype_policy().name
    with training.dtype_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(1)
        model = make_detector()
        images, y = make_batch([[8, 8, 40, 30], [30, 20, 60, 60]], [0, 2])
        history = fit(model, images, y, epochs=4, steps=5, optimizer=keras.optimizers.Adam(1e-3))
        conv = model.backbone.get_layer("stem_conv")
        assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
        assert all(w.dtype == "float32" for w in model.weights)
        raw = model(images)
        for name in ("cls_logits", "box_deltas"):
            assert {str(v.dtype) for v in raw[name].values()} == {"<dtype: 'float32'>"}, name
        detections = model.predict(images, verbose=0)
    assert keras.config.dtype_policy().name == before  # policy restored
    losses = history["loss"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert detections["boxes"].dtype == np.float32 and detections["scores"].dtype == np.float32
    assert np.isfinite(detections["boxes"]).all()


@pytest.mark.parametrize("policy", ["mixed_float16"])  # bf16 covered above; ~9 s each
def test_faster_rcnn_trains_under_mixed_policies(policy, make_batch, make_faster_rcnn):
    with training.dtype_policy(policy):
        keras.utils.set_random_seed(1)
        model = make_faster_rcnn()
        images, y = make_batch([[8, 8, 40, 30], [30, 20, 60, 60]], [0, 2])
        history = fit(model, images, y, epochs=2, steps=1, optimizer=keras.optimizers.Adam(1e-3))
        detections = model.predict(images, verbose=0)
    assert all(np.isfinite(history["loss"])), history
    assert detections["boxes"].dtype == np.float32 and detections["scores"].dtype == np.float32


def test_mixed_float16_recipe_gets_loss_scaling():
    optimizer = build_optimizer(tiny_recipe(mixed_precision="mixed_float16"), steps_per_epoch=4)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)
    plain = build_optimizer(tiny_recipe(mixed_precision="mixed_bfloat16"), steps_per_epoch=4)
    assert not isinstance(plain, keras.optimizers.LossScaleOptimizer)  # bf16 has float32's range
