"""Region proposals from RPN outputs (Faster R-CNN; FPN paper Section 4.1).

Shapes: B batch, Nl anchors of level l, P = post_nms_topk proposals.
"""

from keras import ops

from fpn_keras.boxes.nms import batched_nms
from fpn_keras.postprocess import gather_kept, top_candidates

_DROPPED = -1e9  # logit given to boxes too small to keep


def generate_proposals(objectness, deltas, anchors, image_shape, box_coder, pre_nms_topk,
                       post_nms_topk, nms_threshold=0.7, min_size=0.0, implementation="auto",
                       score_threshold=0.0):
    """Per level: top `pre_nms_topk` objectness logits, decode, clip, drop boxes smaller
    than `min_size` and, when score_threshold > 0, boxes whose objectness probability
    sigmoid(logit) is below it (torchvision's rpn_score_thresh); then NMS within each level
    (detectron2) and the best `post_nms_topk` over all levels.

    objectness {"P2": [B, N2], ...}, deltas {"P2": [B, N2, 4]}, anchors {"P2": [N2, 4]};
    image_shape (height, width) to clip to: numbers, or [B] tensors (one per image).
    Returns (proposals [B, P, 4] xyxy, logits [B, P], valid [B, P] bool), in
    descending objectness; the gradient is stopped (no gradient through proposals).
    """
    all_boxes, all_logits, all_levels = [], [], []
    for i, name in enumerate(sorted(objectness, key=lambda n: int(n[1:]))):
        boxes, top_logits, _ = top_candidates(
            ops.stop_gradient(objectness[name])[..., None], ops.stop_gradient(deltas[name]),
            anchors[name], pre_nms_topk, box_coder, image_shape)
        wide = (boxes[..., 2] - boxes[..., 0]) > min_size
        tall = (boxes[..., 3] - boxes[..., 1]) > min_size
        all_boxes.append(boxes)
        keep = wide & tall
        if score_threshold > 0:
            keep = keep & (ops.sigmoid(ops.cast(top_logits, "float32")) >= score_threshold)
        all_logits.append(ops.where(keep, top_logits, _DROPPED))
        all_levels.append(ops.full(ops.shape(top_logits), i, "int32"))
    boxes = ops.concatenate(all_boxes, axis=1)
    logits = ops.concatenate(all_logits, axis=1)
    levels = ops.concatenate(all_levels, axis=1)
    indices, _ = batched_nms(boxes, logits, levels, iou_threshold=nms_threshold,
                             max_output_size=post_nms_topk, score_threshold=_DROPPED / 2,
                             implementation=implementation)
    proposals = gather_kept(indices, boxes, 0.0)
    return ops.stop_gradient(proposals), gather_kept(indices, logits, _DROPPED), indices >= 0
