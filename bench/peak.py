"""What this machine can do: the best measured throughput per precision, and a model's FLOPs.

    python bench/peak.py [--threads 2]            # prints GFLOP/s per kernel and precision

`measure_peaks(threads)` times, with `threads` threads, in this process:
  - TF matmul 2048 x 2048 x 2048 (fp32, bf16),
  - one TF 3x3 convolution 80x80x256 -> 256, batch 1 (fp32, bf16),
  - the same convolution as a TFLite file run by XNNPACK (fp32, and int8: full-integer,
    the VNNI path),
and returns {precision: {kernel: GFLOP/s}}; `bench/speed.py` divides a model's FLOPs per
second by the best of its precision ("share of peak"). `count_flops(model, size)` counts
the float operations of the model's forward pass (`call`, frozen graph) with TF's profiler.
"""

import argparse
import json
import statistics
import time


def _best_ms(fn, runs=10, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _tf_kernels(threads):
    import tensorflow as tf

    out = {"fp32": {}, "bf16": {}}
    n = 2048
    for precision, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        a = tf.cast(tf.random.uniform([n, n]), dtype)
        b = tf.cast(tf.random.uniform([n, n]), dtype)
        matmul = tf.function(lambda: tf.matmul(a, b))
        ms = _best_ms(lambda: matmul().numpy())
        out[precision]["tf_matmul_2048"] = 2 * n ** 3 / (ms / 1000) / 1e9
        x = tf.cast(tf.random.uniform([1, 80, 80, 256]), dtype)
        w = tf.cast(tf.random.uniform([3, 3, 256, 256]), dtype)
        conv = tf.function(lambda: tf.nn.conv2d(x, w, 1, "SAME"))
        ms = _best_ms(lambda: conv().numpy())
        out[precision]["tf_conv3x3_80x80x256"] = 2 * 80 * 80 * 256 * 256 * 9 / (ms / 1000) / 1e9
    return out


def _tflite_conv(threads):
    """fp32 and int8 TFLite (XNNPACK) of 4 stacked 3x3 convolutions 80x80x256 -> 256."""
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    layers = [tf.keras.layers.Conv2D(256, 3, padding="same") for _ in range(4)]
    spec = tf.TensorSpec([1, 80, 80, 256], tf.float32)

    @tf.function(input_signature=[spec])
    def net(x):
        for layer in layers:
            x = layer(x)
        return x

    net.get_concrete_function()
    flops = 4 * 2 * 80 * 80 * 256 * 256 * 9
    rng = np.random.default_rng(0)
    out = {}
    for precision in ("fp32", "int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
        if precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 80, 80, 256)).astype("float32")]
                                                        for _ in range(4))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        interpreter = Interpreter(model_content=converter.convert(), num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        x = rng.uniform(-1, 1, (1, 80, 80, 256)).astype("float32")

        def run():
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()

        out[precision] = flops / (_best_ms(run) / 1000) / 1e9
    return {"fp32": {"tflite_conv3x3_80x80x256": out["fp32"]}, "int8": {"tflite_conv3x3_80x80x256": out["int8"]}}


def measure_peaks(threads=2):
    """{precision: {kernel: GFLOP/s}} for fp32, bf16 and int8 on this machine, now."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    peaks = _tf_kernels(threads)
    for precision, kernels in _tflite_conv(threads).items():
        peaks.setdefault(precision, {}).update(kernels)
    return peaks


def count_flops(model, size):
    """Float operations of `model(images)` on one size x size image (TF profiler, frozen graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure_peaks(args.threads), indent=2))
