"""The batch both equivalence checks train on (tests/distribute_equivalence.py under
tf.distribute, tests/jax_data_parallel_check.py under JAX): numpy only, importable without
TensorFlow. 4 images of size x size; images 0-1 hold one box, 2-3 three (so replicas see
unequal box counts)."""

import numpy as np


def data(size):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    boxes = -np.ones((4, 3, 4), "float32")
    labels = -np.ones((4, 3), "int32")
    one = [[8, 8, 40, 30]]
    three = [[8, 8, 40, 30], [30, 20, 60, 60], [2, 34, 26, 62]]
    for i, objects in enumerate([one, one, three, three]):
        boxes[i, : len(objects)] = objects
        labels[i, : len(objects)] = [0, 2, 1][: len(objects)]
    return images, {"boxes": boxes, "labels": labels}
