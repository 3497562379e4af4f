"""Damage inside a JPEG's entropy-coded data, as libjpeg reports it.

A JPEG damaged in the middle (its header and end marker intact) decodes without an
error: libjpeg fills what it cannot read with flat blocks or garbage and prints a
warning ("Corrupt JPEG data: premature end of data segment", "Corrupt JPEG data: 461
extraneous bytes before marker 0xd9") on the process's stderr, the only trace. PIL
decodes such files silently. `jpeg_damage` decodes the file with TensorFlow's
libjpeg (at 1/8 scale: the whole entropy-coded stream is read, the inverse DCT is
mostly skipped; ~1.8 ms for a 640x480 JPEG on one core) with file descriptor 2
redirected, so the warnings become a return value that the loaders count and name.
It runs before the input pipeline starts: text another thread writes to stderr during
the decode would land in the capture (and be reported as libjpeg's).
"""

import os
import re
import sys
import tempfile

import tensorflow as tf

# TensorFlow's own log lines (absl / C++ logging), which may land in the capture too.
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


def jpeg_damage(path):
    """-> None if libjpeg decodes the JPEG `path` cleanly, else what it said, e.g.
    "Corrupt JPEG data: premature end of data segment" (a warning: the image decodes,
    damaged) or "undecodable: Invalid JPEG data or crop window" (an error)."""
    data = tf.io.read_file(path)
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            tf.io.decode_jpeg(data, channels=3, ratio=8)
            error = None
        except tf.errors.InvalidArgumentError as exception:
            error = exception
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", "replace").splitlines()
    said = [line.strip() for line in lines if line.strip() and not _TF_LOG_LINE.match(line)]
    if error is not None:
        detail = re.sub(r"\{\{.*?\}\}|\[Op:.*?\]", "", str(error.message)).strip() or type(error).__name__
        return "; ".join([f"undecodable: {detail}", *said])
    return "; ".join(said) or None


__all__ = ["jpeg_damage"]
