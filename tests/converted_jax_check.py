"""A converted torchvision RetinaNet under KERAS_BACKEND=jax, TensorFlow unimportable:
tests/test_torchvision_photos.py runs this in a subprocess (the backend is fixed at import).

Converts the seeded checkpoint (numpy only), runs `predict_images` on the two photographs and
prints one JSON line: the share of torchvision's detections matched (and of ours), the rule of
tests/test_torchvision_photos.py.
"""

import sys

sys.modules["tensorflow"] = None  # as on the GPU machine: `import tensorflow` raises

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

os.environ["KERAS_BACKEND"] = "jax"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import test_torchvision_photos as photos_test  # noqa: E402


def main():
    model = "retinanet_resnet50_fpn"
    reference = dict(np.load(os.path.join(photos_test.DATA, "torchvision_photos_reference.npz")))
    photos = [photos_test.read_image(os.path.join(photos_test.DATA, "photos", f"{name}.png"))
              for name in reference["photos"]]
    detector = photos_test._converted(model, reference, pathlib.Path(tempfile.mkdtemp()))
    ids = np.array(detector.category_ids)
    row = {"backend": keras.backend.backend(), "tensorflow_loaded": "tensorflow" in sys.modules
           and sys.modules["tensorflow"] is not None, "theirs_matched": [], "ours_matched": []}
    for name, result in zip(reference["photos"], detector.predict_images(photos, batch_size=2)):
        theirs = {k: reference[f"{model}/{name}/{k}"] for k in ("boxes", "scores", "labels")}
        ours = {"boxes": result["boxes"], "scores": result["scores"], "labels": ids[result["labels"]]}
        row["theirs_matched"].append(float(photos_test._matches(ours, theirs).mean()))
        row["ours_matched"].append(float(photos_test._matches(theirs, ours).mean()))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
