"""Each workaround in fpn_keras.keras_workarounds, checked against the upstream
behaviour it works around: these tests fail when Keras / TensorFlow fix it (then
delete the workaround and its test)."""

import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "keras_upstream.py")


def _result(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return lines[-1][len("RESULT "):]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _two_workers(workarounds):
    """Runs the tiny MultiWorkerMirroredStrategy fit in 2 local workers -> worker 0's result."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen([sys.executable, SCRIPT, "fit", workarounds or "none"], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    return _result(outputs[0])


def test_mirrored_predict_on_batch_still_returns_every_replicas_copy():
    """trim_replicated_predictions: predict_on_batch under a 2-replica MirroredStrategy
    returns 2 x B rows (Keras 3.15)."""
    result = subprocess.run([sys.executable, SCRIPT, "predict_on_batch"], capture_output=True, text=True,
                            timeout=300)
    assert _result(result.stdout) == "rows=6 trimmed=3", result.stderr[-2000:]


def test_multi_worker_fit_still_needs_both_workarounds():
    """skip_data_build: without it, fit's symbolic build converts a PerReplica batch and
    fails. rank1_logs: with only that, the scalar logs' reduction along axis 0 fails
    (tensorflow#72388). With both, fit runs."""
    assert "PerReplica" in _two_workers("")
    assert "Invalid reduction dimension 0" in _two_workers("skip_data_build")
    assert _two_workers("skip_data_build,rank1_logs") == "ok"


def test_random_access_lookups_still_need_warm_and_the_tf_data_class_names_still_match():
    """fpn_keras.data.epochs looks elements up with tf.data.experimental.at: in TF 2.21 a
    second iterator's lookup segfaults unless `epochs.warm` looked one up eagerly first
    (when this starts passing without warm, delete `warm`). And the tf.data class names
    it recognises must be this TensorFlow's (a rename would silently switch resumes to
    the slow shuffle-buffer path: `unknown_class_names` also warns at run time)."""
    from fpn_keras.data import epochs

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    bare = subprocess.run([sys.executable, SCRIPT, "at_lookup", "none"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert bare.returncode == -11 and "RESULT" not in bare.stdout, (bare.returncode, bare.stdout[-500:])
    warmed = subprocess.run([sys.executable, SCRIPT, "at_lookup", "warm"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert warmed.returncode == 0 and _result(warmed.stdout) == "runs=[[0, 2, 4], [0, 2, 4]]", warmed.stderr[-2000:]
    assert epochs.unknown_class_names() == frozenset()
