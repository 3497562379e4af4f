"""The output contracts of the exported models, and a reader for either.

Shapes: N images, D = the head's `max_detections`.

`OUTPUT_NAMES` (default; SavedModel, TFLite and ONNX): the names of
`FPNDetector.predict`'s dict, with its meanings. They do not pretend to be the TF
Object Detection API's:
  boxes           float32 [N, D, 4]  the model's bounding_box_format, input pixels; -1 padding
  scores          float32 [N, D]     descending; 0 padding
  labels          int32   [N, D]     0-based class id (line of labels.txt); -1 padding
  num_detections  int32   [N]        valid rows of each image

`OD_API_NAMES` (`saved_model(..., outputs="od_api")`): exactly what a SavedModel written by
the TF Object Detection API's exporter (research/object_detection/exporter_lib_v2.py) returns
for these four keys:
  detection_boxes    float32 [N, D, 4]  [ymin, xmin, ymax, xmax] normalised by the input
                                        image's height and width, in [0, 1]; 0 padding
  detection_scores   float32 [N, D]     0 padding
  detection_classes  float32 [N, D]     1-based class id (label maps start at 1: label + 1);
                                        padding 1.0 (the OD API pads with zeros, then adds its
                                        label_id_offset 1 to every entry)
  num_detections     float32 [N]
The OD API's other outputs (detection_multiclass_scores, raw_detection_boxes, ...) are not
written.

`pixel_outputs` reads a loaded `serving_default` signature of any of: this contract, the
OD API's, or the older fpn_keras one (the OD API's names with this contract's meanings and
int32 classes), and returns this contract.
"""

from keras import ops

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
OD_API_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
OUTPUTS = ("pixels", "od_api")
OD_API_INPUT = "input_tensor"  # the OD API exporter's input name
INPUT = "images"


def check_outputs(outputs):
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {list(OUTPUTS)}, received {outputs!r}")
    return outputs


def serving_outputs(detections):
    """`finalize_detections`' dict -> `OUTPUT_NAMES` (the default contract)."""
    return {name: detections[name] for name in OUTPUT_NAMES}


def od_api_outputs(detections):
    """`finalize_detections(..., "rel_yxyx", ...)`'s dict (boxes normalised by each input
    image's size) -> the OD API's outputs `OD_API_NAMES` (see the module docstring)."""
    valid = detections["labels"] >= 0  # [N, D]
    boxes = ops.where(valid[..., None], ops.cast(detections["boxes"], "float32"), 0.0)
    classes = ops.where(valid, ops.cast(detections["labels"], "float32"), 0.0) + 1.0
    return {"detection_boxes": boxes,
            "detection_scores": ops.where(valid, ops.cast(detections["scores"], "float32"), 0.0),
            "detection_classes": classes,
            "num_detections": ops.cast(detections["num_detections"], "float32")}


def contract(output_specs):
    """{name: TensorSpec} of a signature's outputs -> "pixels", "od_api" or "legacy"
    (fpn_keras before the rename: OD API names, int32 classes); ValueError otherwise."""
    names = set(output_specs)
    if set(OUTPUT_NAMES) <= names:
        return "pixels"
    if set(OD_API_NAMES) <= names:
        return "legacy" if output_specs["detection_classes"].dtype.is_integer else "od_api"
    raise ValueError(f"the signature's outputs {sorted(names)} are neither fpn_keras' "
                     f"{list(OUTPUT_NAMES)} nor the TF OD API's {list(OD_API_NAMES)}")


def pixel_outputs(signature):
    """A loaded SavedModel signature (`loaded.signatures["serving_default"]`) ->
    (fn(uint8 images [N, H, W, 3]) -> {`OUTPUT_NAMES`: numpy}, contract name).

    "od_api": boxes back to xyxy input pixels, labels 0-based (-1 padding), counts int32,
    so the caller reads boxes as "xyxy". "legacy": the old names renamed.
    """
    import numpy as np

    kind = contract(signature.structured_outputs)
    (input_name,) = signature.structured_input_signature[1]

    def run(images):
        out = {k: np.asarray(v) for k, v in signature(**{input_name: images}).items()}
        if kind == "pixels":
            return {name: out[name] for name in OUTPUT_NAMES}
        num = out["num_detections"].astype(np.int32)
        valid = np.arange(out["detection_scores"].shape[1])[None] < num[:, None]
        if kind == "legacy":
            boxes, labels = out["detection_boxes"], out["detection_classes"]
        else:
            height, width = np.shape(images)[1:3]
            boxes = out["detection_boxes"][..., [1, 0, 3, 2]] * np.array([width, height] * 2, np.float32)
            labels = np.where(valid, np.rint(out["detection_classes"]) - 1, -1).astype(np.int32)
            boxes = np.where(valid[..., None], boxes, -1.0).astype(np.float32)
        return {"boxes": boxes, "scores": out["detection_scores"], "labels": labels, "num_detections": num}

    return run, kind
