"""Datasets and tf.data input pipelines.

Every loader yields unbatched elements {"image": uint8 [H, W, 3], "image_id": int64,
"boxes": float32 [n, 4] xyxy pixels, "labels": int32 [n]}; `pipeline.prepare`
turns them into the batches `FPNDetector.fit` takes.
"""

from fpn_keras.data import pipeline, synthetic

SPECS = ("synthetic",)


def load(spec, split, **kwargs):
    """Loads a dataset by spec -> (tf.data.Dataset of elements, class_names).

    Specs: "synthetic" (built in; kwargs go to `synthetic.load`).
    """
    if spec == "synthetic":
        return synthetic.load(split, **kwargs), list(synthetic.CLASS_NAMES)
    raise ValueError(f"unknown dataset spec {spec!r}; supported: {list(SPECS)}")


__all__ = ["load", "pipeline", "synthetic"]
