"""Cost of the non-finite input check (issue 15) on the R50-FPN RetinaNet predict path.

    python bench/input_check.py [--runs 10] [--size 640]

Times `predict_on_batch` of one float32 image with the check and with it replaced by
the identity, interleaved (A B A B ...) in one process so drift affects both; prints
the medians and their ratio.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args()
    import numpy as np

    from fpn_keras.models import detector
    from fpn_keras.models.detector import FPNDetector

    model = FPNDetector(num_classes=80, backbone="resnet50", backbone_weights=None, head="retinanet")
    images = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    checked = detector.check_finite_images

    def timed(check):
        detector.check_finite_images = check
        model.make_predict_function(force=True)
        model.predict_on_batch(images)  # trace + warm up
        model.predict_on_batch(images)
        start = time.perf_counter()
        model.predict_on_batch(images)
        return (time.perf_counter() - start) * 1000

    with_check, without = [], []
    for _ in range(args.runs):
        with_check.append(timed(checked))
        without.append(timed(lambda images, names=None: images))
    a, b = statistics.median(with_check), statistics.median(without)
    print(f"predict_on_batch {args.size}x{args.size}, R50-FPN RetinaNet, {args.runs} runs each, interleaved")
    print(f"  with the check    median {a:8.1f} ms  (min {min(with_check):.1f})")
    print(f"  without the check median {b:8.1f} ms  (min {min(without):.1f})")
    print(f"  ratio {a / b:.4f} (cost {100 * (a / b - 1):+.2f}%)")


if __name__ == "__main__":
    main()
