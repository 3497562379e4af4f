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
