"""SavedModel export for TF Serving, with the whole inference path inside.

`keras.Model.export` traces `call()` only, which would drop anchor decoding and
NMS; we build the serving endpoints ourselves around `head.detect`.

Layout: `<out>/saved_model.pb`, `<out>/variables/`, `<out>/assets/labels.txt`
and a copy of `labels.txt` beside the model; point TF Serving's
`--model_base_path` at the folder that holds the numbered version folders.

Signatures (`outputs="pixels"`, the default):
  serving_default:   images uint8 [N, H, W, 3], any H and W (another shape: an
                     InvalidArgument error naming the expected and received shapes)
  serve_image_bytes: image_bytes string [N] (encoded JPEG/PNG/BMP/GIF)
Outputs (`fpn_keras.export.outputs.OUTPUT_NAMES`): boxes float32 [N, D, 4] (the model's
bounding_box_format, in the input image's pixels, -1 padding), scores float32 [N, D],
labels int32 [N, D] (0-based, -1 padding), num_detections int32 [N]: the names and
meanings of `FPNDetector.predict`.

`outputs="od_api"`: the TF Object Detection API's contract instead, for clients written
for its SavedModels: both signatures take `input_tensor` (the OD API exporter's input
name; uint8 [N, H, W, 3] or string [N]) and return detection_boxes (normalised [ymin,
xmin, ymax, xmax] of the input image), detection_scores, detection_classes (float32,
1-based) and num_detections (float32): see `fpn_keras.export.outputs`.
"""

import os

import keras
import tensorflow as tf

from fpn_keras.data.pipeline import resize_and_pad
from fpn_keras.export.outputs import INPUT, OD_API_INPUT, check_outputs, od_api_outputs, serving_outputs
from fpn_keras.postprocess import finalize_detections


def check_serving_images(images, name=INPUT):
    """images of any shape -> uint8 [N, H, W, 3], or an InvalidArgument error that names
    the input, the expected and the received shape (what a TF Serving client sees)."""
    message = f"serving_default: `{name}` must be uint8 [batch, height, width, 3] RGB; received shape"
    shape = tf.shape(images)
    rank_ok = tf.debugging.Assert(tf.equal(tf.rank(images), 4), [message, shape], name="check_rank")
    with tf.control_dependencies([rank_ok]):
        channels_ok = tf.debugging.Assert(tf.equal(shape[-1], 3), [message, shape], name="check_channels")
    with tf.control_dependencies([channels_ok]):
        images = tf.identity(images)
    images.set_shape([None, None, None, 3])  # static only: the checks above run first
    return images


def serving_functions(model, image_size, outputs="pixels"):
    """Builds the two tf.functions that a SavedModel exports; outputs: "pixels" or "od_api"."""
    size = (int(image_size[0]), int(image_size[1]))
    od_api = check_outputs(outputs) == "od_api"

    def detect(images, scales, original_sizes):
        raw = model(images, training=False)
        # Back to the input image's pixels: undo the resize, clip to the original size
        # (OD API: normalised yxyx, relative to that size).
        box_format = "rel_yxyx" if od_api else model.bounding_box_format
        detections = finalize_detections(model.head.detect(raw, size), box_format, size,
                                         scales, original_sizes)
        return od_api_outputs(detections) if od_api else serving_outputs(detections)

    def prepare(image):
        # The preprocessing contract (fpn_keras.preprocessing) in TF ops: sizes are dynamic here.
        # A converted model: torchvision's scale and size rule, capped to fit the canvas.
        canvas, _, scale = resize_and_pad(image, tf.zeros([0, 4]), size, stride=1, pad_value=model.pad_value,
                                          resize=model.short_side_resize)
        return canvas, scale, tf.cast(tf.shape(image)[:2], tf.float32)

    signature = (tf.TensorSpec([size[0], size[1], 3], tf.float32), tf.TensorSpec([], tf.float32),
                 tf.TensorSpec([2], tf.float32))

    def from_images(images):
        images = check_serving_images(images, OD_API_INPUT if od_api else INPUT)
        padded, scales, sizes = tf.map_fn(prepare, images, fn_output_signature=signature)
        return detect(padded, scales, sizes)

    def from_bytes(image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return prepare(image)

        padded, scales, sizes = tf.map_fn(decode, image_bytes, fn_output_signature=signature)
        return detect(padded, scales, sizes)

    return from_images, from_bytes


def saved_model(model, path, image_size=None, outputs="pixels"):
    """Writes `model` as a SavedModel at `path` (e.g. saved_models/<name>/<version>).

    image_size: (height, width) the model runs at (default: `model.image_size`);
    inputs of any size are resized (keeping aspect ratio) and padded to it inside
    the graph (the contract of `fpn_keras.preprocessing`).
    outputs: "pixels" (default: boxes in the model's format and input pixels, 0-based
    int32 labels) or "od_api" (the TF Object Detection API's names, meanings and input
    name); see the module docstring.
    """
    from_images, from_bytes = serving_functions(model, model._require_image_size("export", image_size),
                                                outputs)
    images_name, bytes_name = (OD_API_INPUT, OD_API_INPUT) if outputs == "od_api" else (INPUT, "image_bytes")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", from_images,
                         # Any shape, so a wrong one gets check_serving_images' message, not TF's.
                         input_signature=[tf.TensorSpec(None, tf.uint8, name=images_name)])
    archive.add_endpoint("serve_image_bytes", from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=bytes_name)])
    os.makedirs(path, exist_ok=True)
    labels_path = os.path.join(path, "labels.txt")
    with open(labels_path, "w") as f:
        f.write("\n".join(model.class_names) + "\n")
    archive.labels = tf.saved_model.Asset(labels_path)
    archive.write_out(path, verbose=False)
    return path
