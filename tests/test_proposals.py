"""Region proposals from RPN outputs (fpn_keras.layers.proposals)."""

import numpy as np
from keras import ops

from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.layers.proposals import generate_proposals


def grid_anchors(start, step, side, n):
    centres = [(start + step * i, start + step * j) for j in range(n) for i in range(n)]
    return np.array([[x - side / 2, y - side / 2, x + side / 2, y + side / 2] for x, y in centres], "float32")


def test_proposals_shapes_ordering_and_per_level_nms():
    # Inside a 100x100 image (no clipping): P2 has 16 anchors of 16 px every 4 px, P3 4 anchors of
    # 32 px every 8 px. Horizontal neighbours overlap with IoU 12*16 / (2*256 - 192) = 0.6 < 0.7
    # (and 24*32 / (2*1024 - 768) = 0.6): NMS at 0.7 keeps all of them.
    anchors = {"P2": grid_anchors(20, 4, 16, 4), "P3": grid_anchors(30, 8, 32, 2)}
    rng = np.random.default_rng(0)
    objectness = {"P2": rng.normal(size=(2, 16)).astype("float32"),
                  "P3": rng.normal(size=(2, 4)).astype("float32")}
    deltas = {"P2": np.zeros((2, 16, 4), "float32"), "P3": np.zeros((2, 4, 4), "float32")}
    proposals, logits, valid = generate_proposals(objectness, deltas, anchors, (100, 100), BoxCoder(),
                                                  pre_nms_topk=10, post_nms_topk=12, nms_threshold=0.7)
    proposals, logits, valid = map(ops.convert_to_numpy, (proposals, logits, valid))
    assert proposals.shape == (2, 12, 4) and logits.shape == (2, 12) and valid.shape == (2, 12)
    for b in range(2):
        # Top 10 of P2 + all 4 of P3 = 14 candidates, the best 12 kept, in descending objectness.
        expected = np.sort(np.concatenate([np.sort(objectness["P2"][b])[-10:], objectness["P3"][b]]))[::-1][:12]
        assert valid[b].all()
        np.testing.assert_allclose(logits[b], expected, rtol=1e-6)
    # With NMS at 0.5 the 0.6-overlapping neighbours suppress each other: fewer proposals, padded.
    _, _, valid_05 = generate_proposals(objectness, deltas, anchors, (100, 100), BoxCoder(),
                                        pre_nms_topk=10, post_nms_topk=12, nms_threshold=0.5)
    assert 0 < ops.convert_to_numpy(valid_05).sum(1).max() < 12


def test_score_threshold_drops_low_objectness_before_nms():
    # Four disjoint anchors, logits 2, -2, -3, 0: probabilities 0.881, 0.119, 0.047, 0.5. At 0.05
    # (torchvision's rpn_score_thresh of fasterrcnn_mobilenet_v3_large_fpn) the third is dropped.
    anchors = {"P2": np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], "float32")}
    objectness = {"P2": np.array([[2.0, -2.0, -3.0, 0.0]], "float32")}
    deltas = {"P2": np.zeros((1, 4, 4), "float32")}

    def run(threshold):
        _, logits, valid = generate_proposals(objectness, deltas, anchors, (100, 100), BoxCoder(), 4, 4,
                                              score_threshold=threshold)
        return ops.convert_to_numpy(logits)[0], ops.convert_to_numpy(valid)[0]

    logits, valid = run(0.05)
    assert valid.tolist() == [True, True, True, False]
    np.testing.assert_allclose(logits[:3], [2.0, 0.0, -2.0])
    assert run(0.0)[1].all()  # the default keeps every box
